//! Reading the file: TOML, relative paths resolved against it, and the
//! environment's `SEMEL_…` overrides.

use std::path::Path;

use anyhow::Context;

use super::{COMMAND_LINE_VARIABLES, Config};

impl Config {
    /// Reads, resolves (relative paths are relative to the file) and checks.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Reads and resolves, without [`Config::check`]: for
    /// `semel serve --check-config`, which reports every problem at once.
    pub fn read(path: &Path) -> anyhow::Result<Config> {
        Self::read_with_env(path, std::env::vars())
    }

    /// [`Config::read_with_env`], then [`Config::check`].
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let config = Self::read_with_env(path, env)?;
        config.check()?;
        Ok(config)
    }

    /// Like [`Config::load`], with the environment given: each
    /// `SEMEL_<KEY>` or `SEMEL_<SECTION>__<KEY>` (e.g. `SEMEL_LISTEN`,
    /// `SEMEL_SOURCES__DEADLINE_MS`) replaces that key of the file, before
    /// any check. A value is read as TOML if it parses as a number or a
    /// boolean, as text otherwise. The command line's own variables
    /// ([`COMMAND_LINE_VARIABLES`]) are not overrides and are skipped.
    pub fn read_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config {}", path.display()))?;
        let mut table: toml::Table =
            toml::from_str(&text).with_context(|| format!("parse config {}", path.display()))?;
        let mut applied = Vec::new();
        for (name, value) in env {
            let Some(key) = name.strip_prefix("SEMEL_") else {
                continue;
            };
            if COMMAND_LINE_VARIABLES.contains(&name.as_str()) {
                continue;
            }
            let path: Vec<String> = key.split("__").map(str::to_lowercase).collect();
            let parsed = value
                .parse::<i64>()
                .map(toml::Value::Integer)
                .or_else(|_| value.parse::<f64>().map(toml::Value::Float))
                .or_else(|_| value.parse::<bool>().map(toml::Value::Boolean))
                .unwrap_or_else(|_| toml::Value::String(value.clone()));
            let (last, sections) = path.split_last().context("empty variable name")?;
            let mut t = &mut table;
            for section in sections {
                t = t
                    .entry(section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .with_context(|| format!("{name}: {section} is not a section"))?;
            }
            t.insert(last.clone(), parsed);
            applied.push(name);
        }
        let mut config: Config = toml::Value::Table(table).try_into().with_context(|| {
            if applied.is_empty() {
                format!("parse config {}", path.display())
            } else {
                format!(
                    "parse config {} with {}",
                    path.display(),
                    applied.join(", ")
                )
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.data_dir,
            &mut config.tls.cert,
            &mut config.tls.key,
            &mut config.tls.client_ca,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(ca) = config.sources.ca.as_mut().filter(|p| p.is_relative()) {
            *ca = base.join(&*ca);
        }
        for p in config
            .tls
            .client_crls
            .iter_mut()
            .chain(config.sources.crls.iter_mut())
            .filter(|p| p.is_relative())
        {
            *p = base.join(&*p);
        }
        if let Some(mut file) = config.store.url_file.take() {
            if file.is_relative() {
                file = base.join(&file);
            }
            anyhow::ensure!(
                config.store.postgresql().is_none(),
                "store.url and store.url_file both name the database: give one"
            );
            // Read once, here: the URL (and its password) then lives in
            // memory only, never in the process's arguments or environment.
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("store.url_file: read {}", file.display()))?;
            let url = text.lines().next().unwrap_or_default().trim().to_owned();
            anyhow::ensure!(
                !url.is_empty(),
                "store.url_file: {} holds no URL on its first line",
                file.display()
            );
            config.store.url = Some(url);
            config.store.url_file = Some(file);
        }
        if let Some(k) = config
            .audit
            .signing_key
            .as_mut()
            .filter(|p| p.is_relative())
        {
            *k = base.join(&*k);
        }
        for issuer in &mut config.tokens.issuers {
            if issuer.jwks.is_relative() {
                issuer.jwks = base.join(&issuer.jwks);
            }
        }
        Ok(config)
    }
}
