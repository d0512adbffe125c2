//! The mutation queues in sled, next to the registry:
//!
//! ```text
//! mutation_event_keys  source KBO (10) | event key (32) → accepted µs (8) | digest (32)  (kept longer than the queue: ids are remembered, as keys)
//! mutation_queue    consumer KBO (10) | position (8)  → accepted µs (8) | payload
//! mutation_cursors  consumer KBO (10)                 → head | delivered | acknowledged | lost_through (8 each)
//! ```
//!
//! A change and its queue entries are written in one sled transaction
//! across the three trees, then made durable (flush and fsync) before
//! `accept` returns. Acknowledged entries are removed: a payload of citizen
//! data stays only until its consumer has it.
//!
//! An event id is remembered by its key
//! ([`semel_core::mutation::event_key`]), never as given: a source's id may
//! carry a national number. Stores made before kept the ids themselves, in
//! the tree `mutation_events`; opening one moves them to their keys, once.

use async_trait::async_trait;
use semel_core::Kbo;
use semel_storage::{
    Accepted, Acknowledged, Expired, MutationStore, QueueState, Queued, Routed, StorageError,
};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::{Registry, StoreError, blocking, sled_err};

/// The mutation queues.
#[derive(Clone)]
pub struct Mutations {
    registry: Registry,
    events: sled::Tree,
    queue: sled::Tree,
    cursors: sled::Tree,
}

fn event_key(source: &Kbo, key: &[u8; 32]) -> [u8; 42] {
    let mut k = [0u8; 42];
    k[..10].copy_from_slice(source.as_bytes());
    k[10..].copy_from_slice(key);
    k
}

fn queue_key(consumer: &Kbo, position: u64) -> [u8; 18] {
    let mut k = [0u8; 18];
    k[..10].copy_from_slice(consumer.as_bytes());
    k[10..].copy_from_slice(&position.to_be_bytes());
    k
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_be_bytes(a)
}

fn decode_state(b: Option<&[u8]>) -> Result<QueueState, StoreError> {
    match b {
        None => Ok(QueueState::default()),
        Some(b) if b.len() == 32 => Ok(QueueState {
            head: u64_at(b, 0),
            delivered: u64_at(b, 8),
            acknowledged: u64_at(b, 16),
            lost_through: u64_at(b, 24),
        }),
        Some(_) => Err(StoreError::Corrupt(
            "a mutation queue cursor has the wrong length".into(),
        )),
    }
}

fn encode_state(s: &QueueState) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&s.head.to_be_bytes());
    b[8..16].copy_from_slice(&s.delivered.to_be_bytes());
    b[16..24].copy_from_slice(&s.acknowledged.to_be_bytes());
    b[24..].copy_from_slice(&s.lost_through.to_be_bytes());
    b
}

fn tx_err(context: &'static str) -> impl Fn(TransactionError<StoreError>) -> StoreError {
    move |e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => sled_err(context)(e),
    }
}

impl Mutations {
    pub(crate) fn open(db: &sled::Db, registry: Registry) -> Result<Self, StoreError> {
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(sled_err(format!("open tree {name}")))
        };
        let events = tree("mutation_event_keys")?;
        Self::forget_raw_ids(db, &events)?;
        Ok(Mutations {
            events,
            queue: tree("mutation_queue")?,
            cursors: tree("mutation_cursors")?,
            registry,
        })
    }

    /// Moves the event ids a store made before kept as given (source KBO |
    /// id → accepted µs | digest) to their keys, then drops them: a retry
    /// of an id published before the upgrade is still a duplicate, and no
    /// id is kept as given.
    fn forget_raw_ids(db: &sled::Db, events: &sled::Tree) -> Result<(), StoreError> {
        const OLD: &[u8] = b"mutation_events";
        if !db.tree_names().iter().any(|n| n.as_ref() == OLD) {
            return Ok(());
        }
        let old = db
            .open_tree(OLD)
            .map_err(sled_err("open tree mutation_events"))?;
        let mut batch = sled::Batch::default();
        for item in old.iter() {
            let (k, v) = item.map_err(sled_err("read published changes"))?;
            let source = std::str::from_utf8(&k[..k.len().min(10)])
                .ok()
                .and_then(|s| Kbo::parse(s).ok())
                .ok_or_else(|| StoreError::Corrupt("a published change names no source".into()))?;
            let id = String::from_utf8_lossy(&k[10..]);
            let key = semel_core::mutation::event_key(&source, &id);
            batch.insert(&event_key(&source, &key)[..], v);
        }
        events
            .apply_batch(batch)
            .map_err(sled_err("remember event ids by their keys"))?;
        events
            .flush()
            .map_err(sled_err("remember event ids by their keys"))?;
        db.drop_tree(OLD)
            .map_err(sled_err("drop tree mutation_events"))?;
        db.flush().map_err(sled_err("drop tree mutation_events"))?;
        Ok(())
    }

    fn accept_now(
        &self,
        source: &Kbo,
        id_key: &[u8; 32],
        digest: &[u8; 32],
        accepted_micros: i64,
        routed: &[Routed],
    ) -> Result<Accepted, StoreError> {
        let key = event_key(source, id_key);
        let accepted = (&self.events, &self.queue, &self.cursors)
            .transaction(|(events, queue, cursors)| {
                if events.get(key)?.is_some() {
                    return Ok(Accepted::Duplicate);
                }
                let mut record = accepted_micros.to_be_bytes().to_vec();
                record.extend_from_slice(digest);
                for r in routed {
                    let mut state = decode_state(cursors.get(r.consumer.as_bytes())?.as_deref())
                        .map_err(ConflictableTransactionError::Abort)?;
                    state.head += 1;
                    let mut value = Vec::with_capacity(8 + r.payload.len());
                    value.extend_from_slice(&accepted_micros.to_be_bytes());
                    value.extend_from_slice(&r.payload);
                    queue.insert(&queue_key(&r.consumer, state.head)[..], value)?;
                    cursors.insert(r.consumer.as_bytes(), &encode_state(&state)[..])?;
                }
                events.insert(key.as_slice(), record)?;
                Ok(Accepted::New)
            })
            .map_err(tx_err("store a published change"))?;
        if accepted == Accepted::New {
            self.registry.sync()?;
        }
        Ok(accepted)
    }

    fn withhold_now(&self, consumer: &Kbo, position: u64) -> Result<(), StoreError> {
        self.queue
            .remove(&queue_key(consumer, position)[..])
            .map_err(sled_err("drop a withheld change"))?;
        self.registry.sync()
    }

    fn pending_now(
        &self,
        consumer: &Kbo,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Queued>, StoreError> {
        let from = queue_key(consumer, after.saturating_add(1));
        let to = queue_key(consumer, u64::MAX);
        let mut out = Vec::new();
        for item in self.queue.range(from..=to).take(limit) {
            let (k, v) = item.map_err(sled_err("read a mutation queue"))?;
            if v.len() < 8 {
                return Err(StoreError::Corrupt("a queued change is truncated".into()));
            }
            out.push(Queued {
                position: u64_at(&k, 10),
                accepted_micros: u64_at(&v, 0) as i64,
                payload: v[8..].to_vec(),
            });
        }
        Ok(out)
    }

    fn update_cursor(
        &self,
        consumer: &Kbo,
        change: impl Fn(&mut QueueState) -> Result<(), StoreError>,
    ) -> Result<QueueState, StoreError> {
        let state = self
            .cursors
            .transaction(|cursors| {
                let mut state = decode_state(cursors.get(consumer.as_bytes())?.as_deref())
                    .map_err(ConflictableTransactionError::Abort)?;
                change(&mut state).map_err(ConflictableTransactionError::Abort)?;
                cursors.insert(consumer.as_bytes(), &encode_state(&state)[..])?;
                Ok(state)
            })
            .map_err(tx_err("update a mutation queue cursor"))?;
        Ok(state)
    }

    fn acknowledge_now(&self, consumer: &Kbo, position: u64) -> Result<Acknowledged, StoreError> {
        let previous = std::sync::atomic::AtomicU64::new(0);
        let state = self.update_cursor(consumer, |s| {
            previous.store(s.acknowledged, std::sync::atomic::Ordering::Relaxed);
            if position > s.delivered {
                return Err(StoreError::OutOfRange(format!(
                    "position {position} was not delivered yet (delivered up to {})",
                    s.delivered
                )));
            }
            s.acknowledged = s.acknowledged.max(position);
            Ok(())
        })?;
        let previous = previous.into_inner();
        // Changes between the last acknowledgement and this one (those up
        // to it are gone already, unless a crash came between the cursor
        // and the deletion: they go now too, and are counted by the call
        // that acknowledged them).
        let mut batch = sled::Batch::default();
        let mut dropped = 0u64;
        for k in self
            .queue
            .range(queue_key(consumer, 0)..=queue_key(consumer, state.acknowledged))
            .keys()
        {
            let k = k.map_err(sled_err("read a mutation queue"))?;
            if u64_at(&k, 10) > previous {
                dropped += 1;
            }
            batch.remove(k);
        }
        self.queue
            .apply_batch(batch)
            .map_err(sled_err("drop acknowledged changes"))?;
        self.registry.sync()?;
        Ok(Acknowledged {
            state,
            previous,
            dropped,
        })
    }

    fn expire_now(
        &self,
        before_micros: i64,
        ids_before_micros: i64,
    ) -> Result<Vec<Expired>, StoreError> {
        // Per consumer, the last position accepted before the horizon: the
        // prefix up to it goes (a later position accepted earlier, by a
        // publication racing another, goes with it).
        let mut through: std::collections::BTreeMap<Kbo, u64> = Default::default();
        for item in self.queue.iter() {
            let (k, v) = item.map_err(sled_err("read a mutation queue"))?;
            if v.len() >= 8 && (u64_at(&v, 0) as i64) < before_micros {
                let consumer = Kbo::parse(std::str::from_utf8(&k[..10]).unwrap_or(""))
                    .map_err(|_| StoreError::Corrupt("a queue key names no consumer".into()))?;
                let e = through.entry(consumer).or_default();
                *e = (*e).max(u64_at(&k, 10));
            }
        }
        let mut expired = Vec::new();
        for (consumer, last) in through {
            let keys: Vec<sled::IVec> = self
                .queue
                .range(queue_key(&consumer, 0)..=queue_key(&consumer, last))
                .keys()
                .collect::<Result<_, _>>()
                .map_err(sled_err("read a mutation queue"))?;
            // The entries and what the consumer lost, in one write.
            (&self.queue, &self.cursors)
                .transaction(|(queue, cursors)| {
                    for k in &keys {
                        queue.remove(k)?;
                    }
                    let mut state = decode_state(cursors.get(consumer.as_bytes())?.as_deref())
                        .map_err(ConflictableTransactionError::Abort)?;
                    if last > state.acknowledged {
                        state.lost_through = state.lost_through.max(last);
                        state.delivered = state.delivered.max(last);
                    }
                    cursors.insert(consumer.as_bytes(), &encode_state(&state)[..])?;
                    Ok(())
                })
                .map_err(tx_err("drop expired changes"))?;
            if let Some(first) = keys.first() {
                expired.push(Expired {
                    consumer,
                    first: u64_at(first, 10),
                    last,
                    dropped: keys.len() as u64,
                });
            }
        }
        let mut batch = sled::Batch::default();
        for item in self.events.iter() {
            let (k, v) = item.map_err(sled_err("read published changes"))?;
            if v.len() >= 8 && (u64_at(&v, 0) as i64) < ids_before_micros {
                batch.remove(k);
            }
        }
        self.events
            .apply_batch(batch)
            .map_err(sled_err("forget old event ids"))?;
        self.registry.sync()?;
        Ok(expired)
    }
}

#[async_trait]
impl MutationStore for Mutations {
    async fn accept(
        &self,
        source: &Kbo,
        event_key: &[u8; 32],
        digest: &[u8; 32],
        accepted_micros: i64,
        routed: &[Routed],
    ) -> Result<Accepted, StorageError> {
        let (m, source, id, digest, routed) =
            (self.clone(), *source, *event_key, *digest, routed.to_vec());
        blocking(move || m.accept_now(&source, &id, &digest, accepted_micros, &routed)).await
    }

    async fn known(&self, source: &Kbo, key: &[u8; 32]) -> Result<Option<[u8; 32]>, StorageError> {
        let value = self
            .events
            .get(event_key(source, key))
            .map_err(|e| StorageError::Unavailable(format!("read published changes: {e}")))?;
        match value {
            None => Ok(None),
            Some(v) if v.len() >= 40 => {
                let mut d = [0u8; 32];
                d.copy_from_slice(&v[8..40]);
                Ok(Some(d))
            }
            Some(_) => Err(StorageError::Corrupt(
                "a published change's record is truncated".into(),
            )),
        }
    }

    async fn withhold(&self, consumer: &Kbo, position: u64) -> Result<(), StorageError> {
        let (m, consumer) = (self.clone(), *consumer);
        blocking(move || m.withhold_now(&consumer, position)).await
    }

    async fn pending(
        &self,
        consumer: &Kbo,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Queued>, StorageError> {
        let (m, consumer) = (self.clone(), *consumer);
        blocking(move || m.pending_now(&consumer, after, limit)).await
    }

    async fn delivered(
        &self,
        consumer: &Kbo,
        after: u64,
        through: u64,
    ) -> Result<(), StorageError> {
        let (m, consumer) = (self.clone(), *consumer);
        blocking(move || {
            m.update_cursor(&consumer, |s| {
                if after <= s.delivered {
                    s.delivered = s.delivered.max(through.min(s.head));
                }
                Ok(())
            })?;
            m.registry.sync()
        })
        .await
    }

    async fn acknowledge(
        &self,
        consumer: &Kbo,
        position: u64,
    ) -> Result<Acknowledged, StorageError> {
        let (m, consumer) = (self.clone(), *consumer);
        blocking(move || m.acknowledge_now(&consumer, position)).await
    }

    async fn queue_state(&self, consumer: &Kbo) -> Result<QueueState, StorageError> {
        let raw = self
            .cursors
            .get(consumer.as_bytes())
            .map_err(|e| StorageError::Unavailable(format!("read a mutation queue cursor: {e}")))?;
        Ok(decode_state(raw.as_deref())?)
    }

    async fn expire(
        &self,
        before_micros: i64,
        ids_before_micros: i64,
    ) -> Result<Vec<Expired>, StorageError> {
        let m = self.clone();
        blocking(move || m.expire_now(before_micros, ids_before_micros)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store made before event ids were remembered by their keys: the
    /// ids kept as given (one carries a national number) are moved to their
    /// keys when it is opened, so a retry is still a duplicate, and no tree
    /// holds an id as given any more.
    #[test]
    fn event_ids_kept_as_given_are_moved_to_their_keys_on_opening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let source = Kbo::parse("0314595348").expect("kbo");
        let id = "nr-93051822361-move";
        let digest = [9u8; 32];
        let mut old_key = source.as_bytes().to_vec();
        old_key.extend_from_slice(id.as_bytes());
        let mut value = 1_000i64.to_be_bytes().to_vec();
        value.extend_from_slice(&digest);
        db.open_tree("mutation_events")
            .expect("tree")
            .insert(old_key, value)
            .expect("insert");
        let registry = Registry::open(db.clone(), dir.path().join("db")).expect("registry");
        let m = Mutations::open(&db, registry).expect("open");
        let key = semel_core::mutation::event_key(&source, id);
        let kept = m
            .events
            .get(event_key(&source, &key))
            .expect("read")
            .expect("remembered by its key");
        assert_eq!(&kept[8..40], &digest[..]);
        assert!(
            !db.tree_names()
                .iter()
                .any(|n| n.as_ref() == b"mutation_events"),
            "the tree of ids as given is dropped"
        );
        let number = b"93051822361";
        for name in db.tree_names() {
            let tree = db.open_tree(&name).expect("tree");
            for item in tree.iter() {
                let (k, v) = item.expect("read");
                for bytes in [&k[..], &v[..]] {
                    assert!(
                        !bytes.windows(number.len()).any(|w| w == number),
                        "tree {:?} holds the id as given",
                        String::from_utf8_lossy(&name)
                    );
                }
            }
        }
        // Opening again finds nothing more to move.
        let registry = Registry::open(db.clone(), dir.path().join("db")).expect("registry");
        Mutations::open(&db, registry).expect("open again");
    }
}
