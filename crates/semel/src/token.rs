//! `semel token`: a test token minted with a development issuer's key: the
//! staff's issuer, or for the citizen role the citizen identity provider
//! (whose tokens carry an authentication level, `acr`). Never for
//! production.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::output::{Exit, outln};

#[derive(Args)]
pub struct TokenArgs {
    /// The development PKI directory holding issuer.key, and citizen-idp.key
    /// for citizens' tokens (created if missing).
    #[arg(long, default_value = "semel-data/pki")]
    pub dir: PathBuf,
    /// The person: an identifier, or a citizen's national number.
    #[arg(long)]
    pub sub: String,
    /// The enterprise number of the person's organisation.
    #[arg(long)]
    pub org: String,
    /// Comma-separated: admin, consumer, source, auditor; or citizen alone
    /// (minted by the citizen identity provider).
    #[arg(long, value_delimiter = ',', required = true)]
    pub roles: Vec<String>,
    /// The token's `acr` (authentication level). Default: none for staff,
    /// http://eidas.europa.eu/LoA/high for a citizen (what the demo broker
    /// requires of citizens' tokens).
    #[arg(long)]
    pub acr: Option<String>,
    /// Seconds until it expires.
    #[arg(long, default_value_t = 3600)]
    pub ttl: i64,
    /// The token's `aud`: the broker's tokens.audience.
    #[arg(long, default_value = "semel")]
    pub audience: String,
    /// Print JSON (the token with its claims) instead of the token alone.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let TokenArgs {
        dir,
        sub,
        org,
        roles,
        ttl,
        audience,
        acr,
        json,
    } = args;
    let org = semel_core::Kbo::parse(&org).map_err(|e| anyhow::anyhow!("--org: {e}"))?;
    let roles = roles
        .iter()
        .map(|r| {
            semel_core::UserRole::parse(r).with_context(|| {
                format!("--roles: {r:?} is not one of admin, consumer, source, auditor, citizen")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let citizen = roles.contains(&semel_core::UserRole::Citizen);
    anyhow::ensure!(
        !citizen || roles.len() == 1,
        "--roles: the citizen role comes from the citizen identity provider alone; mint it without other roles"
    );
    let mut issuer = if citizen {
        semel_demo::issuer::DevIssuer::ensure_citizen(&dir)?
    } else {
        semel_demo::issuer::DevIssuer::ensure(&dir)?
    };
    if acr.is_some() {
        issuer.acr = acr;
    }
    let token = issuer.mint(&semel_demo::issuer::TokenRequest {
        subject: &sub,
        organisation: org,
        roles: &roles,
        audience: &audience,
        expires_in: ttl,
        not_before: None,
        bound_to: None,
    })?;
    if json {
        let v = serde_json::json!({
            "token": token,
            "issuer": issuer.issuer,
            "sub": sub,
            "org": org.as_str(),
            "roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            "audience": audience,
            "acr": issuer.acr,
            "expires_in_s": ttl,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        outln!("{token}");
    }
    Ok(Exit::Done.into())
}
