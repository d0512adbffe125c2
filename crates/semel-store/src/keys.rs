//! The broker's checkpoint signing key (and a witness's key): an Ed25519
//! key in a PKCS#8 PEM file as RFC 8410 specifies it (OpenSSL 3 and Python
//! `cryptography` read it), created on first start if it does not exist
//! (readable by the broker's user only).

use std::path::Path;

use ed25519_dalek::SigningKey;
use semel_core::keyfile;

use crate::{StoreError, io_err};

/// Reads the key at `path`, or creates it there.
pub fn load_or_create_signing_key(path: &Path) -> Result<SigningKey, StoreError> {
    if let Some(key) = read_signing_key(path)? {
        return Ok(key);
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| StoreError::Corrupt(format!("no randomness for a signing key: {e}")))?;
    let key = SigningKey::from_bytes(&seed);
    let pem = keyfile::ed25519_to_pem(&key);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    write_private(path, pem.as_bytes())?;
    tracing::info!(path = %path.display(), "created the audit checkpoint signing key");
    Ok(key)
}

/// Reads the key at `path`; `None` when there is no file (it would be
/// created at start).
pub fn read_signing_key(path: &Path) -> Result<Option<SigningKey>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let pem = std::fs::read_to_string(path)
        .map_err(io_err(format!("read the signing key {}", path.display())))?;
    keyfile::ed25519_from_pem(&pem).map(Some).map_err(|e| {
        StoreError::Corrupt(format!(
            "{} is not an Ed25519 private key in PKCS#8 PEM: {e}",
            path.display()
        ))
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("create {}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("write {}", path.display())))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_created_key_is_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k/signing.key");
        let a = super::load_or_create_signing_key(&path).expect("create");
        let b = super::load_or_create_signing_key(&path).expect("read");
        assert_eq!(a.to_bytes(), b.to_bytes());
        std::fs::write(&path, "nonsense").expect("write");
        assert!(super::load_or_create_signing_key(&path).is_err());
    }
}
