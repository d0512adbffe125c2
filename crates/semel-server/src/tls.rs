//! TLS for the broker and the demo sources: server configs that ask for a
//! client certificate, an accept loop that identifies the peer once per
//! connection, and client configs for calling sources.
//!
//! The peer's identity is read from its verified certificate in exactly one
//! place, [`PeerIdentity::from_certificate`], at the end of the handshake.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use semel_core::{CertificateId, Kbo};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// What the broker knows of a peer after the handshake.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// The verified client certificate, when the peer presented one.
    pub certificate: Option<PeerCertificate>,
}

/// A verified client certificate.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// The enterprise number from the certificate's organizationIdentifier
    /// (`NTRBE-<KBO>`), or why it has none.
    pub kbo: Result<Kbo, String>,
    /// SHA-256 of the DER encoding, as revocations name it.
    pub fingerprint: CertificateId,
    /// The serial number with its issuer, as revocations name it.
    pub serial: Option<CertificateId>,
    /// The serial number alone, as revocations recorded before issuers were
    /// named it.
    pub legacy_serial: Option<CertificateId>,
    /// SHA-256 of the DER encoding, as bytes (a token bound to the
    /// certificate names it in `cnf.x5t#S256`).
    pub sha256: [u8; 32],
    /// The end of its validity, in seconds since the Unix epoch: a
    /// connection may outlive its certificate, calls may not.
    pub not_after: i64,
    /// SHA-256 fingerprints of the certificates above it that the client
    /// presented (intermediate CAs): revoking one refuses every certificate
    /// it issued.
    pub issuers: Vec<CertificateId>,
}

impl PeerCertificate {
    /// Whether the certificate has expired at `now`.
    pub fn expired_at(&self, now: std::time::SystemTime) -> bool {
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        now > self.not_after
    }
}

impl PeerIdentity {
    /// Reads the identity from the chain rustls verified: the end-entity
    /// certificate first, then the intermediates the client sent.
    pub fn from_chain(chain: Option<&[CertificateDer<'_>]>) -> Self {
        let mut peer = Self::from_certificate(chain.and_then(|c| c.first()));
        if let (Some(cert), Some(chain)) = (peer.certificate.as_mut(), chain) {
            cert.issuers = chain
                .iter()
                .skip(1)
                .map(|der| {
                    let digest: [u8; 32] = sha2::Sha256::digest(der.as_ref()).into();
                    CertificateId::sha256_of(&digest)
                })
                .collect();
        }
        peer
    }

    /// Reads the identity from the end-entity certificate rustls verified.
    pub fn from_certificate(der: Option<&CertificateDer<'_>>) -> Self {
        let certificate = der.map(|der| {
            let digest: [u8; 32] = sha2::Sha256::digest(der.as_ref()).into();
            // Parsed once, for both the organisation and the serial.
            let parsed = x509_parser::parse_x509_certificate(der.as_ref()).map(|(_, c)| c);
            PeerCertificate {
                kbo: parsed
                    .as_ref()
                    .map_err(|_| "the certificate cannot be parsed".to_owned())
                    .and_then(kbo_from_certificate),
                fingerprint: CertificateId::sha256_of(&digest),
                serial: parsed.as_ref().ok().map(|c| {
                    let issuer: [u8; 32] = sha2::Sha256::digest(c.issuer().as_raw()).into();
                    CertificateId::issued_serial_from(&issuer, c.raw_serial())
                }),
                legacy_serial: parsed
                    .as_ref()
                    .ok()
                    .map(|c| CertificateId::serial_from_bytes(c.raw_serial())),
                sha256: digest,
                // Unparseable (rustls verified it, so this does not happen):
                // treat as expired, the safe side.
                not_after: parsed
                    .as_ref()
                    .map_or(i64::MIN, |c| c.validity().not_after.timestamp()),
                issuers: Vec::new(),
            }
        });
        PeerIdentity { certificate }
    }
}

/// How revocations name a certificate: its SHA-256 fingerprint, its serial
/// number and the SHA-256 of its issuer's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateIds {
    pub fingerprint: String,
    pub serial: String,
    pub issuer_name_sha256: String,
}

/// The identifiers of the first certificate in a PEM file.
pub fn certificate_ids(path: &Path) -> anyhow::Result<CertificateIds> {
    let certs = load_certs(path)?;
    let peer = PeerIdentity::from_certificate(certs.first());
    let cert = peer.certificate.context("no certificate")?;
    let (serial, issuer_name_sha256) = match cert.serial {
        Some(CertificateId::IssuedSerial { issuer, serial }) => (serial, issuer),
        _ => anyhow::bail!("the certificate cannot be parsed"),
    };
    let CertificateId::Sha256(fingerprint) = cert.fingerprint else {
        anyhow::bail!("no fingerprint");
    };
    Ok(CertificateIds {
        fingerprint,
        serial,
        issuer_name_sha256,
    })
}

/// The serial number of the first certificate in a PEM file, as its DER
/// encoding holds it (what a CRL lists).
pub fn certificate_serial(path: &Path) -> anyhow::Result<Vec<u8>> {
    let certs = load_certs(path)?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs[0].as_ref()).map_err(|e| {
        anyhow::anyhow!("{}: the certificate cannot be parsed: {e}", path.display())
    })?;
    Ok(cert.raw_serial().to_vec())
}

/// OID of organizationIdentifier (ETSI EN 319 412-1).
const ORGANIZATION_IDENTIFIER: &str = "2.5.4.97";

fn kbo_from_certificate(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<Kbo, String> {
    kbo_from_subject(
        cert.subject()
            .iter_attributes()
            .filter(|a| a.attr_type().to_id_string() == ORGANIZATION_IDENTIFIER)
            .map(|a| a.as_str().ok()),
    )
}

/// The enterprise number of a subject's organizationIdentifier values
/// (`None`: one that is not a string). A subject naming several is refused:
/// which one a relying party reads first is not something an identity may
/// depend on.
fn kbo_from_subject<'a>(mut values: impl Iterator<Item = Option<&'a str>>) -> Result<Kbo, String> {
    let value = values
        .next()
        .ok_or_else(|| "the certificate has no organizationIdentifier".to_owned())?
        .ok_or_else(|| "the certificate's organizationIdentifier is not a string".to_owned())?;
    if values.next().is_some() {
        return Err(
            "the certificate names several organizationIdentifiers; an organisation's certificate names one"
                .to_owned(),
        );
    }
    let digits = value
        .strip_prefix("NTRBE-")
        .ok_or_else(|| "the organizationIdentifier is not NTRBE-<enterprise number>".to_owned())?;
    Kbo::parse(digits)
        .map_err(|e| format!("the organizationIdentifier's enterprise number is invalid: {e}"))
}

/// A TLS connection with the peer's identity, as tonic sees it.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    peer: Arc<PeerIdentity>,
    /// What the accept loop's [`Admission`] gave the connection to hold
    /// while it is open: released when it is dropped.
    _slot: Option<Box<dyn AdmittedSlot>>,
}

/// Who may hold a connection, asked by the accept loop twice: when the
/// TCP connection is accepted, by the peer's address (before the handshake
/// costs anything), and when the handshake is done, by what it showed. A
/// connection refused either time is closed at once.
pub trait Admission: Send + Sync + 'static {
    /// A connection from `addr` was accepted: the slot it holds while open,
    /// or `None` to close it now.
    fn admit(&self, addr: SocketAddr) -> Option<Box<dyn AdmittedSlot>>;
}

/// A connection's slot, held from its acceptance until it is dropped.
pub trait AdmittedSlot: Send + Sync {
    /// The handshake is done: whether the connection may go on as `peer`.
    fn identified(&mut self, peer: &PeerIdentity) -> bool;
}

impl Connected for TlsConn {
    type ConnectInfo = Arc<PeerIdentity>;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Files of a certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    /// CA bundle that client certificates must chain to.
    pub client_ca: &'a Path,
    /// Revocation lists of those CAs (and their intermediates).
    pub client_crls: &'a [PathBuf],
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config: our certificate, and client certificates verified
/// against the CA bundle and its revocation lists. A client without a
/// certificate completes the handshake, so it can be told clearly
/// (UNAUTHENTICATED) what is missing; a certificate that does not verify, or
/// that its CA revoked, fails the handshake.
pub fn server_config(files: &TlsFiles<'_>) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = load_certs(files.cert)?;
    let key = load_private_key(files.key)?;
    let roots = load_roots(files.client_ca)?;
    let crls = load_crls(files.client_crls)?;
    // The revocation policy (see `load_crls`): a certificate whose issuer
    // has no configured CRL is checked as before CRLs existed, one whose
    // issuer's CRL has passed its nextUpdate is refused.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .with_crls(crls)
        .allow_unknown_revocation_status()
        .enforce_revocation_expiration()
        .allow_unauthenticated()
        .build()
        .context("build the client certificate verifier")?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("choose TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .with_context(|| format!("use certificate {}", files.cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The CA certificates of a PEM bundle, as trust anchors.
fn load_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for ca in load_certs(path)? {
        roots
            .add(ca)
            .with_context(|| format!("add CA from {}", path.display()))?;
    }
    Ok(roots)
}

/// The certificate revocation lists in these files: each PEM (one or more
/// `X509 CRL` blocks) or DER (one CRL), and each must hold at least one, so
/// a truncated or misnamed file fails the load (and a reload keeps the
/// running configuration) rather than silently checking nothing.
///
/// The policy the verifiers apply with them: a certificate is refused if a
/// CRL of its issuer lists it (the whole chain is checked, so a revoked
/// intermediate refuses what it issued); an issuer without a configured
/// CRL is not checked (a bundle may hold CAs whose CRLs the operator does
/// not fetch, and refusing them all would be an outage, not a policy); and
/// a configured CRL past its nextUpdate refuses every certificate of its
/// issuer: a stale list may miss the revocation that matters, and the
/// operator's CRL refresh job failing must show, not pass silently.
pub(crate) fn load_crls(
    paths: &[PathBuf],
) -> anyhow::Result<Vec<CertificateRevocationListDer<'static>>> {
    let mut crls = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).with_context(|| format!("read CRL {}", path.display()))?;
        let found = if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parse CRL {}", path.display()))?
        } else {
            vec![CertificateRevocationListDer::from(bytes)]
        };
        anyhow::ensure!(
            !found.is_empty(),
            "{} holds no certificate revocation list (PEM \"X509 CRL\" or DER)",
            path.display()
        );
        // Parsed here, so a damaged file names itself rather than the
        // verifier it would have failed to build.
        for crl in &found {
            x509_parser::parse_x509_crl(crl.as_ref())
                .map_err(|e| anyhow::anyhow!("{}: not a usable CRL: {e}", path.display()))?;
        }
        crls.extend(found);
    }
    Ok(crls)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn load_private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow::anyhow!(
            "{} holds no private key (PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")",
            path.display()
        ),
        e => anyhow::Error::new(e).context(format!("read private key {}", path.display())),
    })
}

/// The certificates in a PEM file; at least one.
pub(crate) fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("read certificates {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse certificates {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections, completes TLS handshakes concurrently (a slow
/// client cannot hold up others) and yields identified connections.
///
/// Each handshake uses the config `config` holds at that moment, so a
/// reloaded certificate or CA bundle applies to the next connection while
/// open connections carry on.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ArcSwap<ServerConfig>>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    incoming_admitted(listener, config, None, None)
}

/// [`incoming`], offering `alpn` instead of the config's protocols (the
/// HTTP/JSON face speaks HTTP/1.1 with the same certificates and CAs), and
/// letting in only the connections `admission` admits.
pub fn incoming_admitted(
    listener: TcpListener,
    config: Arc<ArcSwap<ServerConfig>>,
    alpn: Option<Vec<Vec<u8>>>,
    admission: Option<Arc<dyn Admission>>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let mut slot = match &admission {
                None => None,
                Some(admission) => match admission.admit(addr) {
                    Some(slot) => Some(slot),
                    // Closed before the handshake: it costs a refused
                    // peer no more than the accept.
                    None => continue,
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(match &alpn {
                None => config.load_full(),
                Some(alpn) => {
                    let mut c = ServerConfig::clone(&config.load_full());
                    c.alpn_protocols = alpn.clone();
                    Arc::new(c)
                }
            });
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let peer = PeerIdentity::from_chain(tls.get_ref().1.peer_certificates());
                        if let Some(s) = slot.as_mut()
                            && !s.identified(&peer)
                        {
                            // The slot first, then the connection: the
                            // peer that sees it closed may connect again.
                            drop(slot);
                            drop(tls);
                            return;
                        }
                        let _ = tx
                            .send(Ok(TlsConn {
                                inner: tls,
                                peer: Arc::new(peer),
                                _slot: slot,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => tracing::info!(peer = %addr, error = %e, "tls handshake failed"),
                    Err(_) => tracing::info!(peer = %addr, "tls handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A client TLS config for tonic: trust `ca`, present `cert`/`key`.
pub fn client_tls(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?))
        .identity(tonic::transport::Identity::from_pem(
            read(cert)?,
            read(key)?,
        )))
}

/// The organisation a source's server certificate names (its
/// organizationIdentifier), read as clients' certificates are.
pub fn kbo_of(der: Option<&CertificateDer<'_>>) -> Result<Kbo, String> {
    PeerIdentity::from_certificate(der).certificate.map_or_else(
        || Err("the source presented no certificate".to_owned()),
        |c| c.kbo,
    )
}

/// The rustls client config for calling sources: trust `ca` (the CA of the
/// sources' server certificates) minus what `crls` revoke (with the policy
/// of [`load_crls`]), present the broker's `cert`/`key`, speak HTTP/2.
/// Which organisation the source must be is checked per dataset, after the
/// handshake (`source_channel`).
pub fn source_client_config(
    ca: &Path,
    crls: &[PathBuf],
    cert: &Path,
    key: &Path,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(load_roots(ca)?),
        provider(),
    )
    .with_crls(load_crls(crls)?)
    .allow_unknown_revocation_status()
    .enforce_revocation_expiration()
    .build()
    .context("build the source certificate verifier")?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("choose TLS versions")?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(load_certs(cert)?, load_private_key(key)?)
        .with_context(|| format!("use certificate {}", cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A rustls client config for HTTPS with a client certificate (the HTTP/JSON
/// face's clients: the load generator, tests): trust `ca`, present
/// `cert`/`key`, speak HTTP/1.1.
pub fn https_client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let roots = load_roots(ca)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("choose TLS versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(cert)?, load_private_key(key)?)
        .with_context(|| format!("use certificate {}", cert.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::kbo_from_subject;

    #[test]
    fn a_subject_names_one_organisation_or_none() {
        assert_eq!(
            kbo_from_subject([Some("NTRBE-0212345668")].into_iter()).map(|k| k.as_str().to_owned()),
            Ok("0212345668".to_owned())
        );
        // Several organizationIdentifiers: refused, whichever comes first.
        let err =
            kbo_from_subject([Some("NTRBE-0212345668"), Some("NTRBE-0207300183")].into_iter())
                .expect_err("several");
        assert!(err.contains("several"), "{err}");
        assert!(kbo_from_subject(std::iter::empty()).is_err());
        assert!(kbo_from_subject([None].into_iter()).is_err());
        assert!(kbo_from_subject([Some("BE-0212345668")].into_iter()).is_err());
    }
}
