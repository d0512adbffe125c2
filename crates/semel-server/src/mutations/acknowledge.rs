//! Acknowledgement: a consumer drops what it received from its queue, in
//! the audit log's sight.

use super::*;

impl MutationService {
    pub(super) async fn acknowledge_mutations(
        &self,
        req: Request<proto::AcknowledgeMutationsRequest>,
    ) -> Result<Response<proto::AcknowledgeMutationsResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let position = req.into_inner().position;
        let broker = &self.broker;
        // Recorded, allowed or refused: an acknowledgement drops changes
        // from the organisation's queue for good, so the log says who
        // dropped which. It stands if its entry cannot be written (the
        // changes are gone, and the consumer has them); the call fails.
        let (acked, _) = broker
            .audited(&caller, async |change: &mut Change| {
                let a = match broker
                    .storage()
                    .mutations
                    .acknowledge(&caller.org.kbo, position)
                    .await
                {
                    Ok(a) => a,
                    Err(StorageError::OutOfRange(m)) => {
                        return Err(ApiError::new(
                            Code::OutOfRange,
                            "NOT_DELIVERED",
                            format!("{m}: acknowledge only positions you received"),
                        ));
                    }
                    Err(e) => return Err(ApiError::from(e)),
                };
                change.detail = if a.state.acknowledged > a.previous {
                    format!(
                        "changes acknowledged through position {}: {} dropped from the queue (positions {} to {})",
                        a.state.acknowledged,
                        a.dropped,
                        a.previous + 1,
                        a.state.acknowledged
                    )
                } else {
                    format!(
                        "position {position} acknowledged again: nothing dropped (acknowledged through {})",
                        a.state.acknowledged
                    )
                };
                Ok((a.state, crate::audited::nothing_to_undo()))
            })
            .await?;
        Ok(Response::new(proto::AcknowledgeMutationsResponse {
            acknowledged: acked.acknowledged,
            pending: acked.head.saturating_sub(acked.acknowledged),
        }))
    }
}
