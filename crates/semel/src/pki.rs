//! `semel pki`: the development PKI (a CA, organisation certificates, the
//! token issuer) and certificate fingerprints. Never for production.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value as Json;

use crate::output::{Exit, outln};

#[derive(Subcommand)]
pub enum PkiCommand {
    /// Create a development CA in DIR (ca.crt, ca.key) if there is none.
    Init {
        /// The development PKI directory.
        #[arg(long, default_value = "semel-data/pki")]
        dir: PathBuf,
    },
    /// Issue a certificate for an organisation, signed by the CA in DIR:
    /// writes <stem>.crt and <stem>.key, with organizationIdentifier NTRBE-<KBO>.
    Issue {
        /// The development PKI directory.
        #[arg(long, default_value = "semel-data/pki")]
        dir: PathBuf,
        /// Enterprise number of the organisation.
        #[arg(long)]
        kbo: String,
        /// Organisation name, for the subject.
        #[arg(long)]
        name: String,
        /// File name stem; the enterprise number by default.
        #[arg(long)]
        stem: Option<String>,
        /// A DNS name the certificate names (repeatable); then it names only
        /// these, like a production certificate (no localhost, no 127.0.0.1).
        #[arg(long = "dns-name")]
        dns_names: Vec<String>,
    },
    /// Create the development token issuer in DIR (issuer.key, issuer.jwks.json) if there is none.
    Issuer {
        /// The development PKI directory.
        #[arg(long, default_value = "semel-data/pki")]
        dir: PathBuf,
    },
    /// Revoke a certificate the CA in DIR issued: its serial joins DIR/ca.crl, signed again.
    /// A broker whose tls.client_crls (or sources.crls) names that file refuses the
    /// certificate at the handshake once it reloads (SIGHUP). This is the CA's revocation;
    /// `semel admin cert revoke` is the operator's own.
    Revoke {
        /// The development PKI directory.
        #[arg(long, default_value = "semel-data/pki")]
        dir: PathBuf,
        /// The certificate to revoke (PEM).
        #[arg(long)]
        cert: PathBuf,
    },
    /// Print a certificate's SHA-256 fingerprint and serial, as revocations name them.
    Fingerprint {
        /// The certificate (PEM).
        cert: PathBuf,
    },
}

pub fn run(command: PkiCommand, json: bool) -> anyhow::Result<ExitCode> {
    use semel_demo::pki::{DevPki, Subject};
    let path = |p: &Path| p.display().to_string();
    // Each subcommand's result, as (JSON key, text label, value).
    let fields: Vec<(&str, &str, String)> = match command {
        PkiCommand::Init { dir } => {
            let pki = DevPki::ensure(&dir, &[])?;
            vec![("ca", "CA", path(&pki.ca_cert()))]
        }
        PkiCommand::Issue {
            dir,
            kbo,
            name,
            stem,
            dns_names,
        } => {
            let kbo = semel_core::Kbo::parse(&kbo).map_err(|e| anyhow::anyhow!("--kbo: {e}"))?;
            let pki = DevPki::ensure(&dir, &[])?;
            let stem = stem.unwrap_or_else(|| kbo.as_str().to_owned());
            let subject = Subject {
                file_stem: &stem,
                kbo,
                name: &name,
            };
            let files = if dns_names.is_empty() {
                pki.issue(&subject)?
            } else {
                pki.issue_for_names(&subject, &dns_names)?
            };
            vec![
                ("certificate", "certificate", path(&files.cert)),
                ("key", "key", path(&files.key)),
            ]
        }
        PkiCommand::Issuer { dir } => {
            let issuer = semel_demo::issuer::DevIssuer::ensure(&dir)?;
            vec![
                ("issuer", "issuer", issuer.issuer.clone()),
                ("private_key", "private key", path(&issuer.key_file())),
                (
                    "jwks",
                    "public keys (JWKS, for [[tokens.issuers]])",
                    path(&issuer.jwks_file()),
                ),
            ]
        }
        PkiCommand::Revoke { dir, cert } => {
            anyhow::ensure!(
                dir.join("ca.key").is_file(),
                "{} holds no development CA (ca.key)",
                dir.display()
            );
            let pki = DevPki { dir };
            let serial = semel_server::tls::certificate_serial(&cert)?;
            let crl = pki.revoke(&serial)?;
            let hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
            vec![
                ("revoked_serial", "revoked serial", hex),
                ("crl", "revocation list", path(&crl)),
            ]
        }
        PkiCommand::Fingerprint { cert } => {
            let ids = semel_server::tls::certificate_ids(&cert)?;
            vec![
                ("sha256_fingerprint", "sha256 fingerprint", ids.fingerprint),
                ("serial", "serial number", ids.serial),
                (
                    "issuer_name_sha256",
                    "issuer name sha256",
                    ids.issuer_name_sha256,
                ),
            ]
        }
    };
    if json {
        let v: serde_json::Map<String, Json> = fields
            .into_iter()
            .map(|(k, _, v)| (k.to_owned(), Json::String(v)))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (_, label, value) in fields {
            outln!("{label}: {value}");
        }
    }
    Ok(Exit::Done.into())
}
