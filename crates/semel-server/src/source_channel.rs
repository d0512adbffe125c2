//! The broker's channels to sources: where they may go, and whom they may
//! reach.
//!
//! Two rules, both checked on every connection before a request is sent:
//!
//! - The source's server certificate must name the dataset's owner
//!   (organizationIdentifier `NTRBE-<KBO>`). A chain to a trusted CA and a
//!   matching host name only say that *some* organisation holds the name;
//!   another member with a certificate from the same CA and a position on
//!   the network could otherwise answer, and receive citizens' numbers and
//!   purposes.
//! - The address the endpoint resolves to must not be loopback, link-local,
//!   private, unspecified or the broker's own listener, unless the operator
//!   allow-listed it (`sources.allowed_endpoints`). It is checked when a
//!   dataset is registered or amended, and again at every dial, since a
//!   name may resolve elsewhere later.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use semel_core::Kbo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::Uri;

/// Where the broker may dial sources.
#[derive(Debug, Default)]
pub struct EndpointPolicy {
    /// Networks allowed although they would be refused (CIDR).
    allowed: Vec<Cidr>,
    /// The broker's own listening addresses: never a source's, allow-listed
    /// or not (the broker would call itself with its own certificate).
    own: Mutex<Vec<SocketAddr>>,
}

/// A network: an address and the length of its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// `10.0.0.0/8`, `fd00::/8`, or one address (`127.0.0.1`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Why an address is no place for a source, if it is not.
pub fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            if v4.is_unspecified() {
                Some("unspecified")
            } else if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_broadcast() || v4.is_multicast() {
                Some("broadcast or multicast")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if v6.is_multicast() {
                Some("broadcast or multicast")
            } else {
                None
            }
        }
    }
}

impl EndpointPolicy {
    /// A policy allowing `allowed` (CIDR networks or single addresses).
    pub fn new(allowed: &[String]) -> anyhow::Result<Self> {
        let allowed = allowed
            .iter()
            .map(|s| s.parse::<Cidr>().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("sources.allowed_endpoints")?;
        Ok(EndpointPolicy {
            allowed,
            own: Mutex::default(),
        })
    }

    /// Records an address the broker listens on.
    pub fn add_own(&self, addr: SocketAddr) {
        self.own
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(addr);
    }

    /// Whether a source may be dialled at `addr`; if not, why (a sentence
    /// saying how to allow it when it may be allowed).
    pub fn check(&self, addr: SocketAddr) -> Result<(), String> {
        let ip = addr.ip().to_canonical();
        let own = self.own.lock().unwrap_or_else(|p| p.into_inner());
        let is_own = own.iter().any(|o| {
            o.port() == addr.port()
                && (o.ip().to_canonical() == ip
                    || (o.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified())))
        });
        if is_own {
            return Err(format!(
                "{addr} is this broker's own address; a source must be another server"
            ));
        }
        match forbidden_kind(ip) {
            Some(kind) if !self.allowed.iter().any(|n| n.contains(ip)) => Err(format!(
                "{addr} is a {kind} address; sources are refused there unless the operator lists the address or its network in sources.allowed_endpoints"
            )),
            _ => Ok(()),
        }
    }

    /// Checks every address an endpoint resolves to now. A name that does
    /// not resolve passes: the check is made again when it is dialled.
    pub async fn check_endpoint(&self, endpoint: &str) -> Result<(), String> {
        let Some((host, port)) = host_port(endpoint) else {
            return Ok(());
        };
        let Ok(addrs) = tokio::net::lookup_host((host.as_str(), port)).await else {
            return Ok(());
        };
        for addr in addrs {
            self.check(addr)?;
        }
        Ok(())
    }
}

/// The host (without brackets) and port of an `https://` endpoint.
fn host_port(endpoint: &str) -> Option<(String, u16)> {
    let uri: Uri = endpoint.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), uri.port_u16().unwrap_or(443)))
}

/// The source's certificate names another organisation than the dataset's
/// owner (or none): the connection is closed before anything is sent.
#[derive(Debug)]
pub struct NotAuthentic {
    pub expected: Kbo,
    pub found: Result<Kbo, String>,
}

impl std::fmt::Display for NotAuthentic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.found {
            Ok(kbo) => write!(
                f,
                "the source's certificate names organisation {kbo}, not the dataset's owner {}",
                self.expected
            ),
            Err(why) => write!(
                f,
                "the source's certificate does not name the dataset's owner {}: {why}",
                self.expected
            ),
        }
    }
}

impl std::error::Error for NotAuthentic {}

/// The endpoint resolved to an address sources may not use.
#[derive(Debug)]
pub struct ForbiddenAddress(pub String);

impl std::fmt::Display for ForbiddenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ForbiddenAddress {}

/// Opens connections to one dataset's source: resolves and checks the
/// address, completes the TLS handshake, and hands the connection over only
/// if the certificate names the dataset's owner.
#[derive(Clone)]
pub struct SourceConnector {
    host: String,
    port: u16,
    owner: Kbo,
    tls: Arc<rustls::ClientConfig>,
    policy: Arc<EndpointPolicy>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl SourceConnector {
    fn new(
        endpoint: &str,
        owner: Kbo,
        tls: Arc<rustls::ClientConfig>,
        policy: Arc<EndpointPolicy>,
    ) -> Option<Self> {
        let (host, port) = host_port(endpoint)?;
        Some(SourceConnector {
            host,
            port,
            owner,
            tls,
            policy,
        })
    }

    async fn connect(self) -> Result<TokioIo<TlsStream<TcpStream>>, BoxError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect();
        // Every address is checked, not only the one dialled: a name that
        // resolves to a forbidden address among others is refused.
        for addr in &addrs {
            self.policy.check(*addr).map_err(ForbiddenAddress)?;
        }
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = match (tcp, last) {
            (Some(tcp), _) => tcp,
            (None, Some(e)) => return Err(e.into()),
            (None, None) => return Err(format!("{} resolves to no address", self.host).into()),
        };
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.host.clone())?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        // The chain and the name are verified by now; the organisation is
        // checked before the connection is handed to HTTP/2, so nothing of
        // the citizen is sent to an impostor.
        let found = crate::tls::kbo_of(tls.get_ref().1.peer_certificates().and_then(|c| c.first()));
        if found.as_ref().ok() != Some(&self.owner) {
            let e = NotAuthentic {
                expected: self.owner,
                found,
            };
            tracing::error!(host = %self.host, port = self.port, error = %e, "source not authentic: connection closed before any request");
            return Err(e.into());
        }
        Ok(TokioIo::new(tls))
    }
}

impl tower::Service<Uri> for SourceConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        Box::pin(self.clone().connect())
    }
}

/// A lazy channel to a dataset's source at `endpoint`, owned by `owner`.
/// The channel is given the endpoint as plain `http://` so that tonic does
/// not add its own TLS: the connector makes the TLS connection, and the
/// requests still name the `https://` origin.
pub fn channel(
    endpoint: &str,
    owner: Kbo,
    tls: Arc<rustls::ClientConfig>,
    policy: Arc<EndpointPolicy>,
) -> Result<tonic::transport::Channel, String> {
    let connector = SourceConnector::new(endpoint, owner, tls, policy).ok_or_else(|| {
        format!("the source endpoint {endpoint} is not usable: write https://host:port")
    })?;
    let plain = endpoint
        .strip_prefix("https://")
        .map(|rest| format!("http://{rest}"))
        .ok_or_else(|| format!("the source endpoint {endpoint} is not an https:// address"))?;
    let origin: Uri = endpoint
        .parse()
        .map_err(|e| format!("the source endpoint {endpoint} is not usable: {e}"))?;
    Ok(tonic::transport::Endpoint::from_shared(plain)
        .map_err(|e| format!("the source endpoint {endpoint} is not usable: {e}"))?
        .origin(origin)
        .connect_timeout(std::time::Duration::from_secs(2))
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(connector))
}

/// Why the broker itself refused a connection to a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The certificate names another organisation (or none).
    NotAuthentic(String),
    /// The endpoint resolved to an address sources may not use.
    Forbidden(String),
}

/// Finds, in the chain of causes of a failed call, why the broker itself
/// refused the connection, if it did.
pub fn refusal(status: &tonic::Status) -> Option<Refusal> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        if let Some(n) = e.downcast_ref::<NotAuthentic>() {
            return Some(Refusal::NotAuthentic(n.to_string()));
        }
        if let Some(f) = e.downcast_ref::<ForbiddenAddress>() {
            return Some(Refusal::Forbidden(f.0.clone()));
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_and_link_local_addresses_are_refused_unless_allowed() {
        let none = EndpointPolicy::new(&[]).expect("policy");
        for a in [
            "127.0.0.1:443",
            "10.1.2.3:443",
            "172.16.0.1:443",
            "192.168.1.1:443",
            "169.254.169.254:80",
            "0.0.0.0:443",
            "[::1]:443",
            "[fe80::1]:443",
            "[fd00::1]:443",
            "[::ffff:127.0.0.1]:443",
        ] {
            assert!(none.check(a.parse().expect("addr")).is_err(), "{a}");
        }
        assert!(none.check("8.8.8.8:443".parse().expect("addr")).is_ok());
        let loopback = EndpointPolicy::new(&["127.0.0.0/8".into(), "::1".into()]).expect("policy");
        assert!(
            loopback
                .check("127.0.0.1:443".parse().expect("addr"))
                .is_ok()
        );
        assert!(loopback.check("[::1]:443".parse().expect("addr")).is_ok());
        assert!(
            loopback
                .check("10.0.0.1:443".parse().expect("addr"))
                .is_err()
        );
        // The broker's own address, even allow-listed.
        loopback.add_own("0.0.0.0:8443".parse().expect("addr"));
        assert!(
            loopback
                .check("127.0.0.1:8443".parse().expect("addr"))
                .is_err()
        );
        assert!(EndpointPolicy::new(&["10.0.0.0/33".into()]).is_err());
    }
}
