//! The mutation queues: changes published by sources, held per consumer
//! until acknowledged.

use async_trait::async_trait;
use semel_core::Kbo;

use crate::StorageError;

/// A change routed to one consumer: the consumer and what it receives, an
/// encoding the broker makes (the fields it may read, with their values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub consumer: Kbo,
    pub payload: Vec<u8>,
}

/// What storing a published change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored, and queued for each consumer routed.
    New,
    /// The source had published this event id before: nothing was stored.
    Duplicate,
}

/// A change in a consumer's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Its position in the queue: dense, from 1, in the order changes were
    /// accepted.
    pub position: u64,
    /// When it was accepted (microseconds since the Unix epoch).
    pub accepted_micros: i64,
    pub payload: Vec<u8>,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Acknowledged {
    /// The queue after it.
    pub state: QueueState,
    /// The last position acknowledged before it.
    pub previous: u64,
    /// How many changes it dropped from the queue (a withheld change, or
    /// one acknowledged before, is not among them).
    pub dropped: u64,
}

/// The changes of one consumer dropped unacknowledged when the retention
/// period ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub consumer: Kbo,
    /// The first and last positions dropped.
    pub first: u64,
    pub last: u64,
    /// How many changes were dropped (positions withheld before are holes).
    pub dropped: u64,
}

/// Where a consumer's queue stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueState {
    /// The last position queued (0: none yet).
    pub head: u64,
    /// The last position delivered at least once.
    pub delivered: u64,
    /// The last position acknowledged.
    pub acknowledged: u64,
    /// The last position dropped unacknowledged because it outlived the
    /// retention period (0: none). Positions up to it are gone.
    pub lost_through: u64,
}

/// Changes published by sources and the consumers' queues. A payload of
/// citizen data stays only until its consumer acknowledges it or the
/// retention period ends. Every write is durable when it returns.
#[async_trait]
pub trait MutationStore: Send + Sync {
    /// Stores a change published by `source` under the key of its event id
    /// ([`semel_core::mutation::event_key`]: the id itself is not kept)
    /// with the digest of its content, and queues it for each consumer
    /// routed, all at once; a change with an event id the source used
    /// before stores nothing ([`Accepted::Duplicate`]).
    async fn accept(
        &self,
        source: &Kbo,
        event_key: &[u8; 32],
        digest: &[u8; 32],
        accepted_micros: i64,
        routed: &[Routed],
    ) -> Result<Accepted, StorageError>;

    /// The digest of the change the source published under this event
    /// id's key (within the ids' retention), if it did: a second
    /// publication of the same id is the same change only if its digest is
    /// the same.
    async fn known(
        &self,
        source: &Kbo,
        event_key: &[u8; 32],
    ) -> Result<Option<[u8; 32]>, StorageError>;

    /// Drops one change from a consumer's queue without delivering it (its
    /// authorisation no longer allows it); the position stays a hole.
    async fn withhold(&self, consumer: &Kbo, position: u64) -> Result<(), StorageError>;

    /// Up to `limit` changes of a consumer's queue after `after`, in order.
    async fn pending(
        &self,
        consumer: &Kbo,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Queued>, StorageError>;

    /// Records that the consumer was sent every change after `after` up to
    /// `through` (a page read after `after`). Delivery advances only
    /// contiguously: a page read after a position beyond the last one
    /// delivered (the consumer skipped ahead with `after`) moves nothing,
    /// so that it can never acknowledge changes it was not sent.
    async fn delivered(&self, consumer: &Kbo, after: u64, through: u64)
    -> Result<(), StorageError>;

    /// Acknowledges every change up to `position`: they are dropped.
    /// [`StorageError::OutOfRange`] beyond what was delivered. An
    /// acknowledgement below the last one changes nothing.
    async fn acknowledge(
        &self,
        consumer: &Kbo,
        position: u64,
    ) -> Result<Acknowledged, StorageError>;

    /// Where a consumer's queue stands.
    async fn queue_state(&self, consumer: &Kbo) -> Result<QueueState, StorageError>;

    /// Drops, per consumer, the changes up to the last one accepted before
    /// `before_micros` (a prefix of its queue: a reader is never told it
    /// lost a position while an earlier one is still there), recording
    /// what it lost in the same write; and forgets event ids accepted
    /// before `ids_before_micros`. Returns, per consumer that lost
    /// changes, which.
    async fn expire(
        &self,
        before_micros: i64,
        ids_before_micros: i64,
    ) -> Result<Vec<Expired>, StorageError>;
}
