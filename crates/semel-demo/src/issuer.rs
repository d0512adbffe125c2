//! Development identity providers: an Ed25519 key pair each, its public
//! JWKS, and tokens minted with it for any person, organisation and roles.
//! Two of them, as in production: the organisations' staff sign in with
//! one (`DevIssuer::at`), citizens with the other (`DevIssuer::citizen_at`),
//! whose tokens carry an authentication level (`acr`). The demo broker
//! trusts the first for every role but the citizen's, the second for the
//! citizen's alone.
//!
//! For development and tests only: the private key is written unencrypted.

use std::fs;
use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use semel_core::{Kbo, UserRole};
use serde::Serialize;

/// The development issuer's `iss`.
pub const DEV_ISSUER: &str = "https://idp.semel-demo.invalid";
/// The audience the demo broker expects.
pub const DEV_AUDIENCE: &str = "semel";
/// The key id of the development issuer's key.
pub const DEV_KID: &str = "semel-demo-1";
/// The development citizen identity provider's `iss`.
pub const DEV_CITIZEN_ISSUER: &str = "https://citizen-idp.semel-demo.invalid";
/// The key id of the development citizen identity provider's key.
pub const DEV_CITIZEN_KID: &str = "semel-demo-citizen-1";
/// The authentication level the development citizen identity provider
/// vouches for, and the demo broker requires of citizens' tokens: eIDAS
/// high (an eID card or itsme).
pub const DEV_CITIZEN_ACR: &str = "http://eidas.europa.eu/LoA/high";

/// Why the issuer could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generate the issuer key: {0}")]
    Key(String),
    #[error("sign a token: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

/// A development issuer whose files are in a directory: `issuer.key`
/// (PKCS#8 PEM, RFC 8410: `openssl pkey` reads it) and `issuer.jwks.json`
/// (the public key); the citizen identity provider's are
/// `citizen-idp.key` and `citizen-idp.jwks.json`.
#[derive(Debug, Clone)]
pub struct DevIssuer {
    pub dir: PathBuf,
    pub issuer: String,
    pub kid: String,
    /// The `acr` its tokens carry, when any.
    pub acr: Option<String>,
    /// Its files' name: `<stem>.key`, `<stem>.jwks.json`.
    pub stem: &'static str,
}

/// What a minted token says.
#[derive(Debug, Clone)]
pub struct TokenRequest<'a> {
    /// The person: an identifier at the organisation, or a citizen's
    /// national number.
    pub subject: &'a str,
    pub organisation: Kbo,
    pub roles: &'a [UserRole],
    pub audience: &'a str,
    /// Seconds from now until it expires (negative: already expired).
    pub expires_in: i64,
    /// Seconds from now until it becomes valid, when set.
    pub not_before: Option<i64>,
    /// The SHA-256 of the certificate the token is bound to (RFC 8705
    /// `cnf.x5t#S256`), when it is.
    pub bound_to: Option<[u8; 32]>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    org: &'a str,
    roles: Vec<&'static str>,
    iat: i64,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    acr: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<Confirmation>,
}

impl DevIssuer {
    pub fn key_file(&self) -> PathBuf {
        self.dir.join(format!("{}.key", self.stem))
    }

    pub fn jwks_file(&self) -> PathBuf {
        self.dir.join(format!("{}.jwks.json", self.stem))
    }

    /// The development issuer of organisations' staff whose key is in
    /// `dir` (not created).
    pub fn at(dir: &Path) -> DevIssuer {
        DevIssuer {
            dir: dir.to_path_buf(),
            issuer: DEV_ISSUER.to_owned(),
            kid: DEV_KID.to_owned(),
            acr: None,
            stem: "issuer",
        }
    }

    /// The development citizen identity provider whose key is in `dir`
    /// (not created): its tokens carry `DEV_CITIZEN_ACR`.
    pub fn citizen_at(dir: &Path) -> DevIssuer {
        DevIssuer {
            dir: dir.to_path_buf(),
            issuer: DEV_CITIZEN_ISSUER.to_owned(),
            kid: DEV_CITIZEN_KID.to_owned(),
            acr: Some(DEV_CITIZEN_ACR.to_owned()),
            stem: "citizen-idp",
        }
    }

    /// Creates the staff issuer's key pair in `dir` if it is missing.
    pub fn ensure(dir: &Path) -> Result<DevIssuer, IssuerError> {
        DevIssuer::at(dir).created()
    }

    /// Creates the citizen identity provider's key pair in `dir` if it is
    /// missing.
    pub fn ensure_citizen(dir: &Path) -> Result<DevIssuer, IssuerError> {
        DevIssuer::citizen_at(dir).created()
    }

    /// This issuer, its key pair created if it is missing.
    fn created(self) -> Result<DevIssuer, IssuerError> {
        let issuer = self;
        let dir = issuer.dir.clone();
        let dir = dir.as_path();
        if issuer.key_file().exists() && issuer.jwks_file().exists() {
            return Ok(issuer);
        }
        fs::create_dir_all(dir).map_err(|source| IssuerError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| IssuerError::Key(e.to_string()))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        write(
            &issuer.key_file(),
            &semel_core::keyfile::ed25519_to_pem(&key),
            true,
        )?;
        write(
            &issuer.jwks_file(),
            &jwks(&issuer.kid, key.verifying_key().as_bytes()),
            false,
        )?;
        Ok(issuer)
    }

    /// Signs a token.
    pub fn mint(&self, req: &TokenRequest<'_>) -> Result<String, IssuerError> {
        let pem = fs::read(self.key_file()).map_err(|source| IssuerError::Io {
            path: self.key_file(),
            source,
        })?;
        let key = EncodingKey::from_ed_pem(&pem)?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(
            &header,
            &claims(&self.issuer, self.acr.as_deref(), req),
            &key,
        )?)
    }
}

#[derive(Serialize)]
struct Confirmation {
    #[serde(rename = "x5t#S256")]
    x5t_s256: String,
}

fn claims<'a>(issuer: &'a str, acr: Option<&'a str>, req: &'a TokenRequest<'a>) -> Claims<'a> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Claims {
        iss: issuer,
        sub: req.subject,
        aud: req.audience,
        org: req.organisation.as_str(),
        roles: req.roles.iter().map(|r| r.as_str()).collect(),
        iat: now,
        exp: now + req.expires_in,
        acr,
        nbf: req.not_before.map(|s| now + s),
        cnf: req.bound_to.map(|b| Confirmation {
            x5t_s256: semel_core::checkpoint::b64::encode_url(&b),
        }),
    }
}

/// A JWKS with one Ed25519 public key.
pub fn jwks(kid: &str, public_key: &[u8]) -> String {
    format!(
        r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","use":"sig","alg":"EdDSA","kid":"{kid}","x":"{}"}}]}}"#,
        base64_url(public_key)
    )
}

/// Unpadded base64url (RFC 4648 §5), as JOSE uses it.
pub fn base64_url(bytes: &[u8]) -> String {
    semel_core::checkpoint::b64::encode_url(bytes)
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), IssuerError> {
    let io = |source| IssuerError::Io {
        path: path.to_path_buf(),
        source,
    };
    fs::write(path, contents).map_err(io)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_url_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_url(input.as_bytes()), expected);
        }
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn minted_tokens_carry_the_claims() {
        let dir = tempfile::tempdir().expect("tempdir");
        let issuer = DevIssuer::ensure(dir.path()).expect("issuer");
        let token = issuer
            .mint(&TokenRequest {
                subject: "clerk-1",
                organisation: Kbo::parse("0212345668").expect("kbo"),
                roles: &[UserRole::Consumer],
                audience: DEV_AUDIENCE,
                expires_in: 60,
                not_before: None,
                bound_to: None,
            })
            .expect("mint");
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(DEV_KID));
        let jwks: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(&fs::read(issuer.jwks_file()).expect("jwks")).expect("parse");
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).expect("key");
        let mut v = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        v.set_audience(&[DEV_AUDIENCE]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).expect("verifies");
        assert_eq!(data.claims["org"], "0212345668");
        assert_eq!(data.claims["roles"][0], "consumer");
    }
}
