//! The connection to the broker: where it is, the TLS files and the person's
//! token, the health probe, and the [`Client`] every call goes through.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use semel_proto as proto;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::CallError;

/// Where the broker is and which files identify the caller.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// e.g. `https://127.0.0.1:50051`
    pub broker: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The person's token (JWT), sent as `authorization: Bearer ...`.
    pub token: Option<String>,
}

/// Adds the person's token to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl Bearer {
    pub fn new(token: Option<&str>) -> anyhow::Result<Bearer> {
        token
            .map(|t| {
                format!("Bearer {}", t.trim())
                    .parse()
                    .context("the token is not valid metadata (stray characters?)")
            })
            .transpose()
            .map(Bearer)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel to the broker that carries a person's token.
pub type AuthChannel = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// Wraps a channel so every call carries `token`.
pub fn with_token(channel: Channel, token: Option<&str>) -> anyhow::Result<AuthChannel> {
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        Bearer::new(token)?,
    ))
}

/// Asks a broker's `grpc.health.v1` for `service` ("" is the whole broker)
/// over TLS, without a client certificate, as probes do. `server_name` is
/// the name the certificate must carry when it is not the host in `broker`
/// (a probe connects to 127.0.0.1, a production certificate names the
/// broker's DNS name only). Returns the status name, e.g. `SERVING`.
pub async fn check_health(
    broker: &str,
    ca: &std::path::Path,
    server_name: Option<&str>,
    service: &str,
) -> anyhow::Result<String> {
    let ca = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    if let Some(name) = server_name {
        tls = tls.domain_name(name);
    }
    let channel = Endpoint::from_shared(broker.to_owned())
        .with_context(|| format!("broker address {broker}"))?
        .tls_config(tls)
        .context("configure TLS")?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("connect to the broker at {broker}"))?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", CallError::from(s)))?
        .into_inner()
        .status();
    Ok(status.as_str_name().to_owned())
}

/// A connected client.
#[derive(Clone)]
pub struct Client {
    pub(crate) channel: AuthChannel,
}

impl Client {
    pub async fn connect(config: &ClientConfig) -> anyhow::Result<Client> {
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&config.ca)?))
            .identity(Identity::from_pem(read(&config.cert)?, read(&config.key)?));
        let channel = Endpoint::from_shared(config.broker.clone())
            .with_context(|| format!("broker address {}", config.broker))?
            .tls_config(tls)
            .context("configure TLS")?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .with_context(|| format!("connect to the broker at {}", config.broker))?;
        Ok(Client {
            channel: with_token(channel, config.token.as_deref())?,
        })
    }

    pub(crate) fn registry(
        &self,
    ) -> proto::registry_service_client::RegistryServiceClient<AuthChannel> {
        proto::registry_service_client::RegistryServiceClient::new(self.channel.clone())
    }

    pub(crate) fn persons(
        &self,
    ) -> proto::persons_service_client::PersonsServiceClient<AuthChannel> {
        proto::persons_service_client::PersonsServiceClient::new(self.channel.clone())
    }

    pub(crate) fn consents(
        &self,
    ) -> proto::consent_service_client::ConsentServiceClient<AuthChannel> {
        proto::consent_service_client::ConsentServiceClient::new(self.channel.clone())
    }

    pub(crate) fn mutations(
        &self,
    ) -> proto::mutation_service_client::MutationServiceClient<AuthChannel> {
        proto::mutation_service_client::MutationServiceClient::new(self.channel.clone())
    }
}
