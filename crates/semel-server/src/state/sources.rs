//! The channels to sources: the broker's client certificate towards them,
//! and where they may be dialled.

use super::*;

impl Broker {
    /// Uses a new client certificate towards sources: channels are made
    /// anew; lookups in flight finish on the old ones. The registry is the
    /// snapshot's: only the channels change.
    pub fn set_source_tls(&self, tls: Arc<rustls::ClientConfig>) -> Result<(), ApiError> {
        let before = std::mem::replace(
            &mut *self.source_tls.lock().unwrap_or_else(|p| p.into_inner()),
            tls,
        );
        let _installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
        let channels =
            std::mem::take(&mut *self.channels.lock().unwrap_or_else(|p| p.into_inner()));
        let current = self.snapshot.load_full();
        let installed = self.install(RegistryData {
            organisations: current
                .organisations
                .values()
                .map(|o| (**o).clone())
                .collect(),
            datasets: current.routes.values().map(|r| r.dataset.clone()).collect(),
            authorisations: current.authorisations.values().cloned().collect(),
            purposes: current.purposes.values().cloned().collect(),
            revoked: current.revoked.iter().cloned().collect(),
        });
        // A configuration that cannot reach a source is not half taken:
        // the previous one and its channels stay (the snapshot was not
        // swapped).
        if installed.is_err() {
            *self.source_tls.lock().unwrap_or_else(|p| p.into_inner()) = before;
            *self.channels.lock().unwrap_or_else(|p| p.into_inner()) = channels;
        }
        installed
    }

    /// A lazy channel to the source at `endpoint`, which must prove to be
    /// `owner` before any request is sent over it.
    pub(super) fn channel(&self, endpoint: &str, owner: Kbo) -> Result<Channel, ApiError> {
        let tls = self
            .source_tls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        crate::source_channel::channel(endpoint, owner, tls, self.sources.endpoints.clone())
            .map_err(|m| ApiError::invalid("dataset.endpoint", "INVALID_ENDPOINT", m))
    }

    /// Where sources may be dialled.
    pub fn endpoint_policy(&self) -> &crate::source_channel::EndpointPolicy {
        &self.sources.endpoints
    }

    /// Refuses an endpoint that resolves to an address sources may not use
    /// (loopback, link-local, private, unspecified, the broker's own) and
    /// the operator did not allow.
    pub async fn check_endpoint(&self, endpoint: &str) -> Result<(), ApiError> {
        self.sources
            .endpoints
            .check_endpoint(endpoint)
            .await
            .map_err(|why| {
                ApiError::invalid(
                    "dataset.endpoint",
                    "INVALID_ENDPOINT",
                    format!("the source endpoint {endpoint} is refused: {why}"),
                )
            })
    }
}
