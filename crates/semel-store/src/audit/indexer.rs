//! The indexer: a second thread, off the answer's path, writes the end
//! offsets, the tree's leaves and the postings of what the writer made
//! durable, and has the checkpointer sign when due.

use super::*;

pub(super) struct Indexer {
    pub(super) ends: Arc<File>,
    pub(super) index: Arc<PostingIndex>,
    pub(super) tree: Arc<RwLock<Tree>>,
    pub(super) shared: Arc<Shared>,
    pub(super) checkpoints: Option<Checkpointer>,
}

impl Indexer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<IndexJob>) {
        let mut ends = Vec::with_capacity(1 << 15);
        loop {
            let tick = self
                .checkpoints
                .as_ref()
                .map_or(std::time::Duration::from_secs(3600), Checkpointer::wait);
            let first = match rx.recv_timeout(tick) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.checkpoint_if_due(false);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut jobs = vec![first];
            while let Ok(j) = rx.try_recv() {
                jobs.push(j);
            }
            let Some(head) = jobs.last().map(|j| j.head) else {
                continue;
            };
            ends.clear();
            let first_seq = jobs[0]
                .items
                .first()
                .map_or(head.next_sequence, |i| i.sequence);
            let mut done = Ok(());
            {
                let mut tree = self.tree.write().unwrap_or_else(|p| p.into_inner());
                for item in jobs.iter().flat_map(|j| &j.items) {
                    ends.extend_from_slice(&item.end.to_be_bytes());
                    if done.is_ok() {
                        done = self
                            .index
                            .add(
                                item.sequence,
                                &keys(
                                    [item.citizen.as_ref(), item.citizen_as_given.as_ref()],
                                    &item.consumer,
                                    item.end_user.as_deref(),
                                    item.authorisation.as_deref(),
                                    &item.dataset,
                                ),
                            )
                            .and_then(|()| tree.push(item.hash))
                            .map_err(|e| e.to_string());
                    }
                }
                if done.is_ok() {
                    done = tree.flush().map_err(|e| e.to_string());
                }
            }
            let done = done.and_then(|()| {
                self.ends
                    .write_all_at(&ends, first_seq * 8)
                    .map_err(|e| format!("write audit ends: {e}"))
            });
            self.index.compact_in_background();
            let mut p = lock(&self.shared.progress);
            match done {
                Ok(()) => p.indexed = head.next_sequence,
                Err(why) => {
                    tracing::error!(error = %why, "audit entries not indexed; they will be at restart");
                    p.failed = Some(why);
                }
            }
            drop(p);
            self.shared.indexed_changed.notify_all();
            self.checkpoint_if_due(false);
        }
        // Closing: a last checkpoint covers every entry.
        self.checkpoint_if_due(true);
    }

    fn checkpoint_if_due(&mut self, closing: bool) {
        let Some(c) = self.checkpoints.as_mut() else {
            return;
        };
        let mut tree = self.tree.write().unwrap_or_else(|p| p.into_inner());
        if c.due(tree.size(), closing)
            && let Err(e) = c.sign(&mut tree, &self.shared)
        {
            if let StoreError::Corrupt(why) = &e {
                // The log no longer agrees with what it signed: fail closed,
                // as after a failed write; no lookup is answered until the
                // operator has looked.
                tracing::error!(error = %why, "audit log inconsistent with its signed checkpoints; refusing lookups");
                self.shared
                    .stats
                    .integrity_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                lock(&self.shared.progress).failed = Some(why.clone());
            } else {
                tracing::error!(error = %e, "audit checkpoint not signed; retrying with the next entries");
            }
        }
    }
}

/// Tags of the text keys.
pub(super) const USER: u8 = b'u';

pub(super) const AUTHORISATION: u8 = b'a';

pub(super) const DATASET: u8 = b'd';

/// The keys an entry is indexed by: citizen, consumer, person,
/// authorisation and dataset.
fn keys(
    citizens: [Option<&Niss>; 2],
    consumer: &Kbo,
    end_user: Option<&str>,
    authorisation: Option<&str>,
    dataset: &str,
) -> Vec<Key> {
    let mut k = Vec::with_capacity(6);
    for n in citizens.into_iter().flatten() {
        k.push(citizen_key(n));
    }
    k.push(consumer_key(consumer));
    if let Some(u) = end_user {
        k.push(text_key(USER, u));
    }
    if let Some(a) = authorisation {
        k.push(text_key(AUTHORISATION, a));
    }
    if !dataset.is_empty() {
        k.push(text_key(DATASET, dataset));
    }
    k
}

pub(super) fn record_keys(r: &AuditRecord) -> Vec<Key> {
    keys(
        [r.citizen.as_ref(), r.citizen_as_given.as_ref()],
        &r.consumer,
        r.end_user.as_deref(),
        r.authorisation.as_deref(),
        &r.dataset,
    )
}
