//! `[tokens]`: end-user tokens, their audience and the trusted issuers.

use std::path::PathBuf;

use semel_core::Kbo;
use serde::Deserialize;

use super::Config;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensSection {
    /// The `aud` every token must carry (default "semel").
    #[serde(default = "default_audience")]
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (default 30, at most 300).
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
    /// The identity providers whose tokens are accepted.
    pub issuers: Vec<IssuerSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSection {
    /// The issuer's `iss`, exactly.
    pub issuer: String,
    /// Its public keys, a JWKS file.
    pub jwks: PathBuf,
    /// The enterprise numbers it may speak for; any when absent.
    #[serde(default)]
    pub organisations: Vec<String>,
    /// The roles it may grant; absent: admin, consumer, source and auditor,
    /// never citizen. A token claiming another role is refused.
    pub roles: Option<Vec<String>>,
    /// The authentication levels (`acr`) its tokens must carry one of;
    /// required when `roles` lists citizen.
    #[serde(default)]
    pub required_acr: Vec<String>,
    /// The longest its tokens may live, in seconds (default 43200, 12 h,
    /// when it grants the citizen role; 86400 otherwise).
    pub max_lifetime_s: Option<u64>,
}

fn default_audience() -> String {
    "semel".into()
}

fn default_leeway_s() -> u64 {
    30
}

impl Config {
    /// The token settings, with enterprise numbers parsed.
    pub fn token_settings(&self) -> anyhow::Result<crate::settings::TokenSettings> {
        let mut issuers = Vec::new();
        for (i, s) in self.tokens.issuers.iter().enumerate() {
            let organisations = s
                .organisations
                .iter()
                .map(|k| {
                    Kbo::parse(k)
                        .map_err(|e| anyhow::anyhow!("tokens.issuers[{i}].organisations: {k}: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let roles = match &s.roles {
                None => crate::settings::default_issuer_roles(),
                Some(names) => names
                    .iter()
                    .map(|r| {
                        semel_core::UserRole::parse(r).ok_or_else(|| {
                            anyhow::anyhow!(
                                "tokens.issuers[{i}].roles: {r:?} is not one of admin, consumer, source, auditor, citizen"
                            )
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
            };
            // A citizen's token names a person by national number alone:
            // only with a checked authentication level.
            anyhow::ensure!(
                !roles.contains(semel_core::UserRole::Citizen) || !s.required_acr.is_empty(),
                "tokens.issuers[{i}]: an issuer that grants the citizen role needs required_acr, the authentication levels its citizens' tokens must carry (e.g. [\"http://eidas.europa.eu/LoA/high\"])"
            );
            anyhow::ensure!(
                s.required_acr.iter().all(|a| !a.trim().is_empty()),
                "tokens.issuers[{i}].required_acr: an empty level"
            );
            let max_lifetime_s = s
                .max_lifetime_s
                .unwrap_or_else(|| crate::settings::IssuerSettings::default_max_lifetime_s(roles));
            anyhow::ensure!(
                (60..=7 * 24 * 3600).contains(&max_lifetime_s),
                "tokens.issuers[{i}].max_lifetime_s: from 60 seconds to 7 days (604800), got {max_lifetime_s}"
            );
            issuers.push(crate::settings::IssuerSettings {
                issuer: s.issuer.clone(),
                jwks: s.jwks.clone(),
                organisations,
                roles,
                required_acr: s.required_acr.clone(),
                max_lifetime_s,
            });
        }
        Ok(crate::settings::TokenSettings {
            audience: self.tokens.audience.clone(),
            leeway_s: self.tokens.leeway_s,
            issuers,
        })
    }
}
