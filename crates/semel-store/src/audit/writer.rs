//! The writer: one thread takes the queued entries, chains, frames and
//! writes them with one `fdatasync` for the batch (group commit), answers
//! their appenders and hands them to the indexer.

use super::*;

pub(super) struct Writer {
    pub(super) log: Arc<File>,
    pub(super) shared: Arc<Shared>,
    pub(super) head: Head,
    pub(super) index_tx: mpsc::Sender<IndexJob>,
}

/// The entries waiting for the writer.
///
/// Appenders only push; the writer takes the whole queue at once. An
/// appender wakes the writer only when the writer waits for it: for a first
/// entry when idle, or for the `LINGER_ENOUGH`th while lingering. Entries
/// that arrive while the writer writes and syncs wake nobody. (A channel
/// would wake the writer for every entry during its linger, a futex call
/// and a context switch each.)
#[derive(Default)]
pub(super) struct Queue {
    state: Mutex<QueueState>,
    writer: Condvar,
}

#[derive(Default)]
struct QueueState {
    entries: Vec<Pending>,
    closed: bool,
    /// What the writer is waiting for, if it waits.
    waiting: WriterWait,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum WriterWait {
    /// Writing or syncing: it takes the queue when done.
    #[default]
    No,
    /// Any entry.
    First,
    /// `LINGER_ENOUGH` entries, or the end of its linger.
    Company,
}

impl Queue {
    /// Queues an entry; false once the log is closed.
    pub(super) fn push(&self, entry: Pending) -> bool {
        let mut q = lock(&self.state);
        if q.closed {
            return false;
        }
        q.entries.push(entry);
        let wake = match q.waiting {
            WriterWait::No => false,
            WriterWait::First => true,
            WriterWait::Company => q.entries.len() == LINGER_ENOUGH,
        };
        if wake {
            q.waiting = WriterWait::No;
            drop(q);
            self.writer.notify_one();
        }
        true
    }

    pub(super) fn close(&self) {
        lock(&self.state).closed = true;
        self.writer.notify_one();
    }

    /// The next batch (swapped into `batch`, which must be empty): waits for
    /// a first entry, then up to `LINGER` for company. `false` once the log
    /// is closed and everything queued has been taken.
    fn next_batch(&self, batch: &mut Vec<Pending>) -> bool {
        let mut q = lock(&self.state);
        while q.entries.is_empty() {
            if q.closed {
                return false;
            }
            q.waiting = WriterWait::First;
            q = self.writer.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        let deadline = std::time::Instant::now() + LINGER;
        while q.entries.len() < LINGER_ENOUGH && !q.closed {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            q.waiting = WriterWait::Company;
            q = self
                .writer
                .wait_timeout(q, deadline - now)
                .map_or_else(|p| p.into_inner().0, |(q, _)| q);
        }
        q.waiting = WriterWait::No;
        std::mem::swap(&mut q.entries, batch);
        true
    }
}

impl Writer {
    pub(super) fn run(mut self, queue: &Queue) {
        let mut frames = Vec::with_capacity(1 << 16);
        let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
        while queue.next_batch(&mut batch) {
            // A batch larger than the writer takes at once (a burst after a
            // slow sync) is written in parts, each under its own sync.
            while batch.len() > MAX_BATCH {
                let mut part: Vec<Pending> = batch.drain(..MAX_BATCH).collect();
                self.write_batch(&mut part, &mut frames);
            }
            self.write_batch(&mut batch, &mut frames);
        }
    }

    /// Fails the log closed: every later append is refused until restart.
    fn fail(&self, why: String) {
        lock(&self.shared.progress).failed = Some(why);
        self.shared.indexed_changed.notify_all();
    }

    fn write_batch(&mut self, batch: &mut Vec<Pending>, frames: &mut Vec<u8>) {
        let failed = lock(&self.shared.progress).failed.clone();
        if let Some(why) = failed {
            self.shared
                .stats
                .answered
                .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(AuditError::Unavailable(why.clone())));
            }
            return;
        }
        frames.clear();
        let start = self.head;
        let mut head = self.head;
        let mut replies = Vec::with_capacity(batch.len());
        let mut items = Vec::with_capacity(batch.len());
        let mut encoding = Vec::with_capacity(512);
        for p in batch.drain(..) {
            let entry = AuditEntry {
                format: semel_core::FORMAT,
                sequence: head.next_sequence,
                previous_hash: head.hash,
                record: p.record,
            };
            encoding.clear();
            entry.encode(&mut encoding);
            let hash = entry_hash(&encoding);
            frames.extend_from_slice(&(encoding.len() as u32).to_be_bytes());
            frames.extend_from_slice(&crc32fast::hash(&encoding).to_be_bytes());
            frames.extend_from_slice(&encoding);
            let end = head.offset + (HEADER + encoding.len()) as u64;
            // The record is encoded: its texts move to the indexer as they are.
            let r = entry.record;
            items.push(IndexItem {
                sequence: entry.sequence,
                end,
                hash,
                citizen: r.citizen,
                citizen_as_given: r.citizen_as_given,
                consumer: r.consumer,
                end_user: r.end_user,
                authorisation: r.authorisation,
                dataset: r.dataset,
            });
            replies.push((
                p.reply,
                Appended {
                    sequence: entry.sequence,
                    hash,
                },
            ));
            head = Head {
                next_sequence: head.next_sequence + 1,
                offset: end,
                hash,
            };
        }
        let started = std::time::Instant::now();
        let written = if self
            .shared
            .inject_failure
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
        } else {
            self.log
                .write_all_at(frames, start.offset)
                .and_then(|()| self.log.sync_data())
        };
        let stats = &self.shared.stats;
        stats
            .syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats.sync_micros.fetch_add(
            started.elapsed().as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        stats
            .answered
            .fetch_add(replies.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = written {
            // Fail closed: nobody is told an entry is safe, the partial write
            // is zeroed, and later appends are refused until an operator
            // restarts the broker (after a failed fsync the page cache cannot
            // be trusted to reflect the disk).
            tracing::error!(error = %e, "audit log write failed; refusing lookups until restart");
            let _ = self
                .log
                .write_all_at(&vec![0u8; frames.len()], start.offset);
            let why = format!("write or sync the audit log: {e}");
            self.fail(why.clone());
            for (reply, _) in replies {
                let _ = reply.send(Err(AuditError::Unavailable(why.clone())));
            }
            return;
        }
        self.head = head;
        lock(&self.shared.progress).durable = head;
        for (reply, appended) in replies {
            let _ = reply.send(Ok(appended));
        }
        // The index follows the log on its own thread.
        let _ = self.index_tx.send(IndexJob { items, head });
    }
}
