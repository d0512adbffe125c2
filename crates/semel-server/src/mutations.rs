//! `MutationService`: sources publish changes of their data; the broker
//! routes each to the consumers concerned and holds it in their durable
//! queues until they acknowledge it.
//!
//! Publishing: every change of a request is checked first (the caller is
//! the dataset's source, the number is valid, the fields are the dataset's)
//! and the request is refused whole if one is not. Then each change, in
//! order, is routed (`semel_core::mutation::route`: the lookup's rules,
//! asked on each consumer's behalf), stored with its queue entries, and
//! recorded in the audit log; the answer leaves once all are durable.
//!
//! Delivering: a change is recorded in the audit log (who received which
//! fields about whom, under which authorisation) before it is sent, and the
//! authorisation is checked again at that moment: one suspended or ended
//! since the change was routed delivers nothing.
//!
//! By duty: `publish` (checks, routing, the queue entries and their audit
//! entries), `streams` (subscriptions and pulls, their caps and rechecks),
//! `delivery` (a change recorded and sent as allowed now), `acknowledge`,
//! `retention` (what a consumer did not acknowledge in time). The service's
//! RPCs below only name where each is done.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use semel_core::mutation::{MutationFacts, MutationKind, route};
use semel_core::{
    AuditDecision, AuditRecord, DatasetName, FieldName, Kbo, Niss, Outcome, ReasonCode,
    RefusalReason, brussels_today,
};
use semel_storage::{Accepted, QueueState, Queued, Routed, StorageError};
use time::OffsetDateTime;
use tonic::{Code, Request, Response, Status};

use crate::audited::{Change, Undo};
use crate::convert::{format_date, parse_date, timestamp_micros};
use crate::error::ApiError;
use crate::proto;
use crate::state::{Broker, Caller, Credentials};

/// The most changes in one publication.
pub use semel_config::settings::MAX_PUBLISH;
/// The largest change (protobuf encoding), values included.
const MAX_CHANGE_BYTES: usize = 64 * 1024;
/// The longest source event id.
const MAX_EVENT_ID: usize = 64;
/// Changes read from a queue at once.
const PAGE: usize = 100;
/// The most changes one pull answers.
const MAX_PULL: usize = 1000;
/// The longest a pull waits for a first change.
use semel_config::settings::MAX_WAIT_S;
/// How long a source's event ids are remembered (a retry within it is a
/// duplicate), at least: longer than any queue keeps the change itself.
const EVENT_IDS_KEPT: Duration = Duration::from_secs(400 * 24 * 3600);
/// The most subscriptions one organisation holds open on one broker.
const MAX_SUBSCRIPTIONS: usize = 4;
/// Pulls of changes one organisation may have in progress on one broker:
/// each may wait 30 seconds and reads the queue at every change, so more
/// would only hold the broker's connections and store for the same changes.
const MAX_PULLS: usize = 4;
/// How often a waiting subscription or pull checks its caller again (a
/// suspension, a revoked certificate, an expired token end it), in memory,
/// without reading its queue.
const RECHECK: Duration = Duration::from_millis(250);

mod acknowledge;
mod delivery;
mod publish;
mod retention;
mod streams;

use streams::EventStream;

pub struct MutationService {
    broker: Arc<Broker>,
}

impl MutationService {
    pub fn new(broker: Arc<Broker>) -> Self {
        MutationService { broker }
    }
}

fn kind_from_proto(k: i32) -> Option<MutationKind> {
    match proto::MutationKind::try_from(k) {
        Ok(proto::MutationKind::Created) => Some(MutationKind::Created),
        Ok(proto::MutationKind::Changed) => Some(MutationKind::Changed),
        Ok(proto::MutationKind::Ended) => Some(MutationKind::Ended),
        _ => None,
    }
}

#[tonic::async_trait]
impl proto::mutation_service_server::MutationService for MutationService {
    async fn publish_mutations(
        &self,
        req: Request<proto::PublishMutationsRequest>,
    ) -> Result<Response<proto::PublishMutationsResponse>, Status> {
        self.publish_mutations(req).await
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        req: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.subscribe(req).await
    }

    async fn pull_mutations(
        &self,
        req: Request<proto::PullMutationsRequest>,
    ) -> Result<Response<proto::PullMutationsResponse>, Status> {
        self.pull_mutations(req).await
    }

    async fn acknowledge_mutations(
        &self,
        req: Request<proto::AcknowledgeMutationsRequest>,
    ) -> Result<Response<proto::AcknowledgeMutationsResponse>, Status> {
        self.acknowledge_mutations(req).await
    }
}
