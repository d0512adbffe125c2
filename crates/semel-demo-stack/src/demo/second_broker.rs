//! The configuration of a second broker on the demo's PostgreSQL database.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use semel_demo::issuer::{DEV_AUDIENCE, DevIssuer};
use semel_demo::pki::DevPki;
use semel_demo::seed::DemoOrg;

use super::DEMO_ORIGIN;

/// Writes the configuration of a second broker on the demo's PostgreSQL
/// database: the same certificates, issuer and checkpoint key (one log,
/// one identity), its own ports and data directory.
pub(super) fn write_second_broker_config(
    data_dir: &Path,
    url: &str,
    first: SocketAddr,
    taken: &[Option<SocketAddr>],
    pki: &DevPki,
    issuer: &DevIssuer,
    operator: &DemoOrg,
) -> anyhow::Result<(PathBuf, SocketAddr)> {
    let listen = second_broker_port(first, taken)?;
    let broker = pki.files("broker");
    let quoted = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let text = format!(
        "# A second broker on the demo's PostgreSQL database, written by `semel demo --store`.\n\
         # Start it with: semel serve --config {config}\n\
         listen = \"{listen}\"\n\
         data_dir = {dir}\n\
         \n[store]\nurl = {url}\n\
         \n[tls]\ncert = {cert}\nkey = {key}\nclient_ca = {ca}\nclient_crls = [{crl}]\n\
         \n[sources]\nca = {ca}\ncrls = [{crl}]\nregister_dataset = \"{register}\"\nallowed_endpoints = [\"127.0.0.1\"]\n\
         \n[operator]\nkbo = \"{kbo}\"\nname = {name}\n\
         \n[audit]\nsigning_key = {signing}\norigin = \"{origin}\"\ncheckpoint_every_ms = 1000\n\
         \n[tokens]\naudience = \"{audience}\"\n\
         \n[[tokens.issuers]]\nissuer = {iss}\njwks = {jwks}\n",
        config = data_dir.join("second-broker.toml").display(),
        dir = quoted(&data_dir.join("second-broker")),
        url = toml::Value::String(url.to_owned()),
        cert = quoted(&broker.cert),
        key = quoted(&broker.key),
        ca = quoted(&pki.ca_cert()),
        crl = quoted(&pki.crl()),
        register = semel_demo::seed::datasets::IDENTITY,
        kbo = operator.kbo.as_str(),
        name = toml::Value::String(operator.name.to_owned()),
        signing = quoted(&pki.dir.join("audit-signing.key")),
        origin = DEMO_ORIGIN,
        audience = DEV_AUDIENCE,
        iss = toml::Value::String(issuer.issuer.clone()),
        jwks = quoted(&issuer.jwks_file()),
    );
    let path = data_dir.join("second-broker.toml");
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok((path, listen))
}

/// The second broker's address: the first free port after the first
/// broker's (easy to remember) that none of the demo's listeners holds,
/// else any free port. Free when the demo starts: the printed command
/// works unless another program takes it meanwhile.
fn second_broker_port(
    first: SocketAddr,
    taken: &[Option<SocketAddr>],
) -> anyhow::Result<SocketAddr> {
    let held = |port: u16| port == first.port() || taken.iter().flatten().any(|a| a.port() == port);
    let free = |addr: SocketAddr| std::net::TcpListener::bind(addr).is_ok();
    for offset in 1..=20u16 {
        let Some(port) = first.port().checked_add(offset) else {
            break;
        };
        let addr = SocketAddr::new(first.ip(), port);
        if !held(port) && free(addr) {
            return Ok(addr);
        }
    }
    let any = std::net::TcpListener::bind(SocketAddr::new(first.ip(), 0))
        .context("find a free port for the second broker")?;
    Ok(any.local_addr()?)
}
