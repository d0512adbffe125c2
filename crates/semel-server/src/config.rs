//! The broker's configuration file, read by `semel-config`
//! ([`semel_config`], re-exported here), and what of it needs the broker's
//! own machinery: the audit signing key and its store, the PostgreSQL
//! store's settings, and the files' contents loaded as `serve` loads them.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

pub use semel_config::*;

/// What the broker makes of a [`Config`] with its stores and TLS: the
/// signing key loaded (or created), the PostgreSQL store's settings, and
/// the checks of the files' contents.
pub trait ConfigExt {
    /// Checkpoint settings, with the signing key loaded (or created).
    fn checkpoint_settings(&self) -> anyhow::Result<semel_store::CheckpointSettings>;

    /// The key that signs the log's checkpoints, created at its path if
    /// missing. Brokers sharing a PostgreSQL store share this key (one log,
    /// one identity).
    fn checkpoint_signer(&self) -> anyhow::Result<semel_core::checkpoint::NoteSigner>;

    /// Every problem with the files' contents: each certificate, key, CA
    /// bundle and JWKS is loaded as `serve` will load it (a key file that
    /// holds a certificate fails here), and the audit signing key is read
    /// if it exists. `semel serve --check-config` reports these with
    /// [`Config::problems`].
    fn file_problems(&self) -> Vec<String>;

    /// How a broker runs on PostgreSQL, from `[store]` and `[audit]`.
    fn pg_settings(&self) -> crate::stores::PgSettings;
}

impl ConfigExt for Config {
    fn checkpoint_settings(&self) -> anyhow::Result<semel_store::CheckpointSettings> {
        Ok(semel_store::CheckpointSettings {
            signer: self.checkpoint_signer()?,
            every_entries: self.audit.checkpoint_every_entries,
            every: Duration::from_millis(self.audit.checkpoint_every_ms),
        })
    }

    fn checkpoint_signer(&self) -> anyhow::Result<semel_core::checkpoint::NoteSigner> {
        let path = self.audit_signing_key();
        let key = semel_store::load_or_create_signing_key(&path)
            .with_context(|| format!("audit.signing_key {}", path.display()))?;
        Ok(semel_core::checkpoint::NoteSigner::new(
            &self.audit_origin()?,
            key,
        ))
    }

    fn file_problems(&self) -> Vec<String> {
        use crate::tls;
        let mut problems = Vec::new();
        let certs = |key: &str, p: &Path, problems: &mut Vec<String>| {
            tls::load_certs(p)
                .map_err(|e| problems.push(format!("{key}: {e:#}")))
                .is_ok()
        };
        let cert_ok = certs("tls.cert", &self.tls.cert, &mut problems);
        let key_ok = tls::load_private_key(&self.tls.key)
            .map_err(|e| problems.push(format!("tls.key: {e:#}")))
            .is_ok();
        let ca_ok = certs("tls.client_ca", &self.tls.client_ca, &mut problems);
        if let Some(ca) = &self.sources.ca {
            certs("sources.ca", ca, &mut problems);
        }
        if let Err(e) = crate::source_channel::EndpointPolicy::new(&self.sources.allowed_endpoints)
        {
            problems.push(format!("{e:#}"));
        }
        for (key, crls) in [
            ("tls.client_crls", &self.tls.client_crls),
            ("sources.crls", &self.sources.crls),
        ] {
            for (i, p) in crls.iter().enumerate() {
                if let Err(e) = tls::load_crls(std::slice::from_ref(p)) {
                    problems.push(format!("{key}[{i}]: {e:#}"));
                }
            }
        }
        if cert_ok && key_ok && ca_ok {
            // The key must be the certificate's.
            if let Err(e) = tls::server_config(&tls::TlsFiles {
                cert: &self.tls.cert,
                key: &self.tls.key,
                client_ca: &self.tls.client_ca,
                client_crls: &[],
            }) {
                problems.push(format!("tls: {e:#}"));
            }
        }
        if let Ok(settings) = self.token_settings() {
            for (i, issuer) in settings.issuers.iter().enumerate() {
                let one = crate::tokens::TokenSettings {
                    issuers: vec![issuer.clone()],
                    ..settings.clone()
                };
                if let Err(e) = crate::tokens::TokenVerifier::load(&one) {
                    problems.push(format!("tokens.issuers[{i}]: {e:#}"));
                }
            }
        }
        let key = self.audit_signing_key();
        if let Err(e) = semel_store::read_signing_key(&key) {
            problems.push(format!("audit.signing_key: {e}"));
        }
        problems
    }

    fn pg_settings(&self) -> crate::stores::PgSettings {
        crate::stores::PgSettings {
            checkpoint_every: Duration::from_millis(self.audit.checkpoint_every_ms),
            registry_poll: self.store.registry_poll(),
            persons_poll: self.store.persons_poll(),
            scrub: semel_postgres::ScrubSettings {
                entries_per_second: self.audit.scrub_entries_per_second,
            },
            max_durability_wait: self.store.max_durability_wait(),
        }
    }
}
