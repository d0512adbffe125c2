//! The demo's credentials: its development PKI, the client files of a demo
//! organisation, and the tokens it writes.

use std::path::Path;

use anyhow::Context;
use semel_client::ClientConfig;
use semel_demo::issuer::{DevIssuer, TokenRequest};
use semel_demo::pki::{DevPki, Subject};
use semel_demo::seed::DemoOrg;

use super::{DemoManifest, MANIFEST};

/// The client files of a demo organisation, from a demo data directory.
pub fn client_config(data_dir: &Path, who: &str) -> anyhow::Result<ClientConfig> {
    let path = data_dir.join(MANIFEST);
    let manifest: DemoManifest = serde_json::from_slice(
        &std::fs::read(&path)
            .with_context(|| format!("read {} (start `semel demo` first)", path.display()))?,
    )
    .with_context(|| format!("parse {}", path.display()))?;
    let digits: String = who.chars().filter(char::is_ascii_digit).collect();
    let org = manifest
        .organisations
        .iter()
        .find(|o| o.slug == who || (!digits.is_empty() && o.kbo == digits))
        .with_context(|| {
            let known: Vec<&str> = manifest
                .organisations
                .iter()
                .map(|o| o.slug.as_str())
                .collect();
            format!(
                "no demo organisation {who}; use one of: {}",
                known.join(", ")
            )
        })?;
    // A fresh token each time, so a demo left running for days still works.
    let issuer = DevIssuer::at(manifest.issuer_key.parent().unwrap_or(Path::new(".")));
    let roles: Vec<semel_core::UserRole> = org
        .roles
        .iter()
        .filter_map(|r| semel_core::UserRole::parse(r))
        .collect();
    let kbo = semel_core::Kbo::parse(&org.kbo).context("demo manifest: enterprise number")?;
    let token = issuer.mint(&TokenRequest {
        subject: &format!("demo-user@{}", org.slug),
        organisation: kbo,
        roles: &roles,
        audience: &manifest.audience,
        expires_in: 3600,
        not_before: None,
        bound_to: None,
    })?;
    Ok(ClientConfig {
        broker: manifest.broker,
        ca: manifest.ca,
        cert: org.cert.clone(),
        key: org.key.clone(),
        token: Some(token),
    })
}

pub(super) fn dev_pki(dir: &Path, orgs: &[DemoOrg], operator: &DemoOrg) -> anyhow::Result<DevPki> {
    let stems: Vec<String> = orgs.iter().map(|o| o.kbo.as_str().to_owned()).collect();
    let mut subjects: Vec<Subject<'_>> = orgs
        .iter()
        .zip(&stems)
        .map(|(o, stem)| Subject {
            file_stem: stem,
            kbo: o.kbo,
            name: o.name,
        })
        .collect();
    subjects.push(Subject {
        file_stem: "broker",
        kbo: operator.kbo,
        name: "Semel broker (demo)",
    });
    DevPki::ensure(dir, &subjects).context("create the development PKI")
}

/// Writes a demo token, and beside it (`.header`) the HTTP header that
/// carries it, so that `curl -H @FILE` sends it without the token ever
/// appearing in a command line (`ps`, the shell's history).
pub(super) fn write_token(path: &std::path::Path, jwt: &str) -> anyhow::Result<()> {
    std::fs::write(path, jwt).with_context(|| format!("write {}", path.display()))?;
    let header = path.with_extension("header");
    std::fs::write(&header, format!("Authorization: Bearer {jwt}\n"))
        .with_context(|| format!("write {}", header.display()))
}
