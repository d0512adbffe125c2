//! End-user tokens: a JWT on every call (`authorization: Bearer ...`) names
//! the person, their organisation and their roles. It is verified against
//! the trusted issuers' public keys (a JWKS file per issuer), with the
//! algorithm pinned by the key: EdDSA (Ed25519) or ES256 (P-256), never
//! `none`, never HMAC.
//!
//! Each issuer is bound by rules of its own: the roles it may grant (the
//! citizen role only when listed, and then only with a required
//! authentication level, `acr`), the organisations it may speak for, and
//! how long its tokens may live. A token that breaks one is refused whole,
//! never trimmed to what its issuer may say: a token claiming more than its
//! issuer may grant is a misconfigured or compromised identity provider.
//!
//! A verified token is cached until it expires, so a back office that sends
//! the same token on every call pays for one signature check, not one per
//! lookup. Reloading the keys builds a new verifier with an empty cache.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use semel_core::{Kbo, MAX_TEXT, Niss, ReasonCode, RoleSet, UserRole};
use serde::Deserialize;

pub use semel_config::settings::{
    DEFAULT_CITIZEN_MAX_LIFETIME_S, DEFAULT_MAX_LIFETIME_S, IssuerSettings, TokenSettings,
    default_issuer_roles,
};

/// The person a verified token names.
#[derive(Clone, PartialEq, Eq)]
pub struct EndUser {
    /// The token's `sub`: a person identifier at the organisation, or a
    /// citizen's national number.
    pub subject: String,
    pub organisation: Kbo,
    /// Every role the token grants (the organisation's registration bounds
    /// what it may exercise).
    pub roles: RoleSet,
    pub issuer: String,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
    /// The certificate the token is bound to (`cnf.x5t#S256`, RFC 8705),
    /// when it is.
    pub bound_to: Option<[u8; 32]>,
}

/// A citizen's `sub` is their national number: `Debug` masks it, like
/// `Niss` does, so no log of a caller can carry one.
impl std::fmt::Debug for EndUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndUser")
            .field(
                "subject",
                &semel_core::redact_national_numbers(&self.subject),
            )
            .field("organisation", &self.organisation)
            .field("roles", &self.roles)
            .field("issuer", &self.issuer)
            .field("expires_at", &self.expires_at)
            .field("bound", &self.bound_to.is_some())
            .finish()
    }
}

impl EndUser {
    /// The citizen the token speaks for, when it carries the citizen role.
    pub fn citizen(&self) -> Option<Niss> {
        if self.roles.contains(UserRole::Citizen) {
            Niss::parse(&self.subject).ok()
        } else {
            None
        }
    }
}

/// Why a token was refused. Messages say what to do and reveal neither
/// keys nor which part of a signature failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed(&'static str),
    Expired,
    NotYetValid,
    Audience,
    UntrustedIssuer,
    IssuerNotForOrganisation,
    /// The token claims a role its issuer may not grant.
    RoleNotGranted(UserRole),
    /// The token carries none of the authentication levels its issuer's
    /// tokens must carry.
    Assurance,
    /// The token lives longer than its issuer's tokens may (the maximum,
    /// in seconds).
    LifetimeTooLong(u64),
    Signature,
    /// Bound to another certificate than the call's.
    WrongCertificate,
}

impl TokenError {
    pub fn reason(self) -> ReasonCode {
        match self {
            TokenError::Missing => ReasonCode::TokenMissing,
            TokenError::Malformed(_) => ReasonCode::TokenMalformed,
            TokenError::Expired => ReasonCode::TokenExpired,
            TokenError::NotYetValid => ReasonCode::TokenNotYetValid,
            TokenError::Audience => ReasonCode::TokenAudience,
            // The issuer is not trusted for this token: not for its
            // organisation, its roles, its authentication level or its
            // lifetime. The message says which.
            TokenError::UntrustedIssuer
            | TokenError::IssuerNotForOrganisation
            | TokenError::RoleNotGranted(_)
            | TokenError::Assurance
            | TokenError::LifetimeTooLong(_) => ReasonCode::TokenUntrustedIssuer,
            TokenError::Signature => ReasonCode::TokenSignature,
            TokenError::WrongCertificate => ReasonCode::TokenCertificateMismatch,
        }
    }

    pub fn message(self, audience: &str) -> String {
        match self {
            TokenError::Missing => "send the person's token as `authorization: Bearer <JWT>` metadata on every call".into(),
            TokenError::Malformed(what) => format!("the token is not usable: {what}"),
            TokenError::Expired => "the token has expired; get a fresh one from your identity provider".into(),
            TokenError::NotYetValid => "the token is not valid yet (nbf); check the clocks of your identity provider and your server".into(),
            TokenError::Audience => format!("the token is not meant for this broker; its aud must include \"{audience}\""),
            TokenError::UntrustedIssuer => "the token's issuer is not one this broker trusts; ask the operator to register your identity provider".into(),
            TokenError::IssuerNotForOrganisation => "the token's issuer is not trusted to speak for the organisation it names".into(),
            TokenError::RoleNotGranted(UserRole::Citizen) => "the token's issuer is not trusted to grant the role citizen; a citizen's token comes only from the citizen identity provider the operator names for it".into(),
            TokenError::RoleNotGranted(role) => format!("the token's issuer is not trusted to grant the role {role}; ask the operator which roles your identity provider may grant"),
            TokenError::Assurance => "the token does not carry the authentication level (acr) its issuer's tokens must carry; sign in again at the required level".into(),
            TokenError::LifetimeTooLong(max) => format!("the token lives longer than its issuer's tokens may ({max} s from issue); get a shorter-lived token from your identity provider"),
            TokenError::Signature => "the token's signature does not verify with its issuer's published keys".into(),
            TokenError::WrongCertificate => "the token is bound to another certificate than the one this connection presents (cnf x5t#S256); send it over the connection it was issued for".into(),
        }
    }
}

/// One trusted public key.
struct IssuerKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

struct Issuer {
    organisations: Vec<Kbo>,
    roles: RoleSet,
    required_acr: Vec<String>,
    max_lifetime_s: u64,
    keys: Vec<IssuerKey>,
}

/// Verified tokens kept at most; beyond, expired ones are dropped, then all.
const CACHE_CAPACITY: usize = 16_384;

/// Verifies tokens against the issuers' keys.
pub struct TokenVerifier {
    audience: String,
    leeway: u64,
    issuers: HashMap<String, Issuer>,
    /// Read on every call, written once per new token: a read-write lock,
    /// so concurrent lookups do not queue behind one another.
    /// Keyed by the token and the certificate it came with: a token proven
    /// over one connection is not taken on trust over another.
    cache: RwLock<Cache>,
}

/// Verified tokens, by the SHA-256 of the certificate they came with, then
/// by the token (looked up with a borrowed `&str`: no allocation per call).
#[derive(Default)]
struct Cache {
    by_certificate: HashMap<[u8; 32], HashMap<Box<str>, Arc<EndUser>>>,
    len: usize,
}

/// The claims Semel reads. `exp`, `iss`, `aud` and `sub` are required and
/// checked by `jsonwebtoken`; `nbf` is checked when present.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// The organisation's enterprise number.
    org: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    iss: String,
    exp: u64,
    /// When it was issued: bounds its lifetime with `exp`.
    iat: Option<u64>,
    /// The authentication context class (OpenID Connect): the level of
    /// assurance the person signed in with.
    acr: Option<String>,
    /// Confirmation of a certificate-bound token (RFC 8705).
    cnf: Option<Confirmation>,
}

#[derive(Deserialize)]
struct Confirmation {
    #[serde(rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

#[derive(Deserialize)]
struct Peek {
    iss: Option<String>,
}

impl TokenVerifier {
    /// Reads every issuer's JWKS. A key that is not Ed25519 or P-256, or
    /// that says it is for another algorithm, fails the load by name.
    pub fn load(settings: &TokenSettings) -> anyhow::Result<TokenVerifier> {
        let mut issuers = HashMap::new();
        for s in &settings.issuers {
            let keys = load_jwks(&s.jwks, &s.issuer, &settings.audience, settings.leeway_s)
                .with_context(|| format!("issuer {}: keys {}", s.issuer, s.jwks.display()))?;
            anyhow::ensure!(
                issuers
                    .insert(
                        s.issuer.clone(),
                        Issuer {
                            organisations: s.organisations.clone(),
                            roles: s.roles,
                            required_acr: s.required_acr.clone(),
                            max_lifetime_s: s.max_lifetime_s,
                            keys,
                        },
                    )
                    .is_none(),
                "issuer {} is configured twice",
                s.issuer
            );
        }
        Ok(TokenVerifier {
            audience: settings.audience.clone(),
            leeway: settings.leeway_s,
            issuers,
            cache: RwLock::new(Cache::default()),
        })
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Verifies a token (without the `Bearer ` prefix) that came with the
    /// certificate whose SHA-256 is `certificate`.
    pub fn verify(&self, token: &str, certificate: [u8; 32]) -> Result<Arc<EndUser>, TokenError> {
        let now = jsonwebtoken::get_current_timestamp();
        let cached = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_certificate
            .get(&certificate)
            .and_then(|tokens| tokens.get(token))
            .cloned();
        if let Some(user) = cached {
            if now <= user.expires_at.saturating_add(self.leeway) {
                return Ok(user);
            }
            let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
            if let Some(tokens) = cache.by_certificate.get_mut(&certificate)
                && tokens.remove(token).is_some()
            {
                cache.len -= 1;
            }
            return Err(TokenError::Expired);
        }
        let user = Arc::new(self.verify_uncached(token)?);
        if user.bound_to.is_some_and(|b| b != certificate) {
            return Err(TokenError::WrongCertificate);
        }
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        if cache.len >= CACHE_CAPACITY {
            let live = |u: &Arc<EndUser>| now <= u.expires_at.saturating_add(self.leeway);
            for tokens in cache.by_certificate.values_mut() {
                tokens.retain(|_, u| live(u));
            }
            cache.by_certificate.retain(|_, tokens| !tokens.is_empty());
            cache.len = cache.by_certificate.values().map(HashMap::len).sum();
            if cache.len >= CACHE_CAPACITY {
                *cache = Cache::default();
            }
        }
        if cache
            .by_certificate
            .entry(certificate)
            .or_default()
            .insert(token.into(), user.clone())
            .is_none()
        {
            cache.len += 1;
        }
        Ok(user)
    }

    fn verify_uncached(&self, token: &str) -> Result<EndUser, TokenError> {
        const NOT_A_JWT: TokenError =
            TokenError::Malformed("it is not a JWT signed with EdDSA or ES256");
        let header = jsonwebtoken::decode_header(token).map_err(|_| NOT_A_JWT)?;
        // The issuer is read before the signature is checked only to pick
        // its keys; nothing else of the payload is trusted before `decode`.
        let peek: Peek =
            jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| NOT_A_JWT)?;
        let iss = peek
            .iss
            .ok_or(TokenError::Malformed("it has no iss claim"))?;
        let issuer = self.issuers.get(&iss).ok_or(TokenError::UntrustedIssuer)?;
        let key = match &header.kid {
            Some(kid) => issuer
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                .ok_or(TokenError::Signature)?,
            None if issuer.keys.len() == 1 => &issuer.keys[0],
            None => return Err(TokenError::Malformed("its header has no kid")),
        };
        if header.alg != key.algorithm {
            return Err(TokenError::Signature);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAudience => TokenError::Audience,
                ErrorKind::InvalidIssuer => TokenError::UntrustedIssuer,
                ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
                    "sub" => TokenError::Malformed("it has no sub claim"),
                    "aud" => TokenError::Malformed("it has no aud claim"),
                    "exp" => TokenError::Malformed("it has no exp claim"),
                    _ => TokenError::Malformed("a required claim is missing"),
                },
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidEddsaKey
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidKeyFormat => TokenError::Signature,
                _ => TokenError::Malformed(
                    "its claims are not sub, org, roles, iss, aud and exp as expected",
                ),
            },
        )?;
        let claims = data.claims;
        if claims.sub.is_empty()
            || claims.sub.len() > MAX_TEXT
            || claims.sub.chars().any(char::is_control)
        {
            return Err(TokenError::Malformed(
                "its sub must be 1 to 256 printable characters",
            ));
        }
        let organisation = claims
            .org
            .as_deref()
            .ok_or(TokenError::Malformed(
                "it has no org claim (the enterprise number)",
            ))
            .and_then(|o| {
                Kbo::parse(o).map_err(|_| {
                    TokenError::Malformed("its org claim is not a valid enterprise number")
                })
            })?;
        if !issuer.organisations.is_empty() && !issuer.organisations.contains(&organisation) {
            return Err(TokenError::IssuerNotForOrganisation);
        }
        // Unknown role names are ignored: an identity provider may carry
        // roles of other applications.
        let roles: RoleSet = claims
            .roles
            .iter()
            .filter_map(|r| UserRole::parse(r))
            .collect();
        if let Some(role) = roles.iter().find(|r| !issuer.roles.contains(*r)) {
            return Err(TokenError::RoleNotGranted(role));
        }
        if !issuer.required_acr.is_empty()
            && !claims
                .acr
                .as_ref()
                .is_some_and(|a| issuer.required_acr.contains(a))
        {
            return Err(TokenError::Assurance);
        }
        // Both from its issue and from now: a token without `iat`, or with
        // one set late, lives no longer than the maximum from now on.
        let now = jsonwebtoken::get_current_timestamp();
        let max = issuer.max_lifetime_s;
        if claims
            .iat
            .is_some_and(|iat| claims.exp.saturating_sub(iat) > max)
            || claims.exp.saturating_sub(now) > max.saturating_add(self.leeway)
        {
            return Err(TokenError::LifetimeTooLong(max));
        }
        if roles.contains(UserRole::Citizen) && Niss::parse(&claims.sub).is_err() {
            return Err(TokenError::Malformed(
                "a citizen's sub must be their national number",
            ));
        }
        let bound_to = match claims.cnf.and_then(|c| c.x5t_s256) {
            None => None,
            Some(t) => Some(
                semel_core::checkpoint::b64::decode_url(&t)
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or(TokenError::Malformed(
                        "its cnf x5t#S256 is not the base64url SHA-256 of a certificate",
                    ))?,
            ),
        };
        Ok(EndUser {
            subject: claims.sub,
            organisation,
            roles,
            issuer: claims.iss,
            expires_at: claims.exp,
            bound_to,
        })
    }
}

fn load_jwks(
    path: &Path,
    issuer: &str,
    audience: &str,
    leeway: u64,
) -> anyhow::Result<Vec<IssuerKey>> {
    let text = std::fs::read(path).context("read")?;
    let set: JwkSet = serde_json::from_slice(&text).context("parse as a JWKS")?;
    anyhow::ensure!(!set.keys.is_empty(), "the JWKS holds no key");
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        let name = kid.as_deref().unwrap_or("(no kid)");
        anyhow::ensure!(
            jwk.common.public_key_use != Some(PublicKeyUse::Encryption),
            "key {name} is for encryption, not signatures"
        );
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                let x = base64_url_len(&p.x);
                anyhow::ensure!(x == Some(32), "key {name}: an Ed25519 x has 32 bytes");
                Algorithm::EdDSA
            }
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => anyhow::bail!(
                "key {name}: only Ed25519 (EdDSA) and P-256 (ES256) public keys are accepted"
            ),
        };
        if let Some(alg) = jwk.common.key_algorithm {
            let matches = matches!(
                (alg, algorithm),
                (KeyAlgorithm::EdDSA, Algorithm::EdDSA) | (KeyAlgorithm::ES256, Algorithm::ES256)
            );
            anyhow::ensure!(matches, "key {name}: its alg does not fit its key type");
        }
        let key = DecodingKey::from_jwk(jwk).with_context(|| format!("key {name}"))?;
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.validate_nbf = true;
        validation.leeway = leeway;
        keys.push(IssuerKey {
            kid,
            algorithm,
            key,
            validation,
        });
    }
    if keys.len() > 1 {
        anyhow::ensure!(
            keys.iter().all(|k| k.kid.is_some()),
            "with several keys, every key needs a kid"
        );
    }
    Ok(keys)
}

/// The decoded length of unpadded base64url text, if it is valid.
fn base64_url_len(s: &str) -> Option<usize> {
    let valid = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match (valid, s.len() % 4) {
        (false, _) | (true, 1) => None,
        (true, r) => Some(s.len() / 4 * 3 + r.saturating_sub(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(jwks: &str) -> anyhow::Result<TokenVerifier> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("keys.json");
        std::fs::write(&path, jwks)?;
        TokenVerifier::load(&TokenSettings {
            audience: "semel".into(),
            leeway_s: 30,
            issuers: vec![IssuerSettings::new("https://idp.example", path)],
        })
    }

    #[test]
    fn only_signature_keys_of_the_two_curves_are_trusted() {
        let ed = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        assert!(load(ed).is_ok());
        for (bad, why) in [
            (
                r#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#,
                "only Ed25519",
            ),
            (
                r#"{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}"#,
                "only Ed25519",
            ),
            (
                r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"s","x":"AAAA"}]}"#,
                "32 bytes",
            ),
            (
                r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"e","alg":"ES256","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
                "alg does not fit",
            ),
            (r#"{"keys":[]}"#, "no key"),
        ] {
            let err = format!("{:#}", load(bad).err().expect("refused"));
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_token_is_taken_only_with_the_certificate_it_is_bound_to() {
        use semel_demo::issuer::{DEV_AUDIENCE, DevIssuer, TokenRequest};
        let dir = tempfile::tempdir().expect("tempdir");
        let issuer = DevIssuer::ensure(dir.path()).expect("issuer");
        let v = TokenVerifier::load(&TokenSettings {
            audience: DEV_AUDIENCE.into(),
            leeway_s: 30,
            issuers: vec![IssuerSettings::new(
                issuer.issuer.clone(),
                issuer.jwks_file(),
            )],
        })
        .expect("verifier");
        let mint = |bound_to| {
            issuer
                .mint(&TokenRequest {
                    subject: "clerk-1",
                    organisation: Kbo::parse("0212345668").expect("kbo"),
                    roles: &[UserRole::Consumer],
                    audience: DEV_AUDIENCE,
                    expires_in: 600,
                    not_before: None,
                    bound_to,
                })
                .expect("mint")
        };
        let (mine, other) = ([1u8; 32], [2u8; 32]);
        let bound = mint(Some(mine));
        assert_eq!(v.verify(&bound, other), Err(TokenError::WrongCertificate));
        assert!(v.verify(&bound, mine).is_ok());
        // Cached for its certificate only: over another, it is checked again.
        assert_eq!(v.verify(&bound, other), Err(TokenError::WrongCertificate));
        assert!(v.verify(&bound, mine).is_ok());
        // An unbound token is verified per certificate too, and accepted.
        let free = mint(None);
        assert!(v.verify(&free, mine).is_ok());
        assert!(v.verify(&free, other).is_ok());
    }

    #[test]
    fn an_issuers_rules_bind_its_tokens() {
        use semel_demo::issuer::{DEV_AUDIENCE, DevIssuer, TokenRequest};
        let dir = tempfile::tempdir().expect("tempdir");
        let staff = DevIssuer::ensure(dir.path()).expect("issuer");
        let citizens = DevIssuer::ensure_citizen(dir.path()).expect("citizen issuer");
        let v = TokenVerifier::load(&TokenSettings {
            audience: DEV_AUDIENCE.into(),
            leeway_s: 30,
            issuers: vec![
                IssuerSettings::new(staff.issuer.clone(), staff.jwks_file()),
                IssuerSettings {
                    roles: RoleSet::of(&[UserRole::Citizen]),
                    required_acr: vec!["high".into()],
                    max_lifetime_s: 3600,
                    ..IssuerSettings::new(citizens.issuer.clone(), citizens.jwks_file())
                },
            ],
        })
        .expect("verifier");
        let org = Kbo::parse("0212345668").expect("kbo");
        let request = |roles, expires_in| TokenRequest {
            subject: "93051822361",
            organisation: org,
            roles,
            audience: DEV_AUDIENCE,
            expires_in,
            not_before: None,
            bound_to: None,
        };
        let high = DevIssuer {
            acr: Some("high".into()),
            ..citizens.clone()
        };
        let low = DevIssuer {
            acr: Some("low".into()),
            ..citizens.clone()
        };
        let none = DevIssuer {
            acr: None,
            ..citizens.clone()
        };
        let verify = |issuer: &DevIssuer, roles, expires_in| {
            v.verify(
                &issuer.mint(&request(roles, expires_in)).expect("mint"),
                [0; 32],
            )
            .map(|u| u.citizen().is_some())
        };
        let citizen: &[UserRole] = &[UserRole::Citizen];
        let consumer: &[UserRole] = &[UserRole::Consumer];
        // Roles: the default issuer grants no citizen role; the citizens'
        // grants nothing else.
        assert_eq!(
            verify(&staff, citizen, 600),
            Err(TokenError::RoleNotGranted(UserRole::Citizen))
        );
        assert_eq!(
            verify(&high, consumer, 600),
            Err(TokenError::RoleNotGranted(UserRole::Consumer))
        );
        assert_eq!(verify(&staff, consumer, 600), Ok(false));
        // The level of assurance.
        assert_eq!(verify(&none, citizen, 600), Err(TokenError::Assurance));
        assert_eq!(verify(&low, citizen, 600), Err(TokenError::Assurance));
        assert_eq!(verify(&high, citizen, 600), Ok(true));
        // The lifetime: the issuer's maximum, the default one for staff.
        assert_eq!(
            verify(&high, citizen, 3601),
            Err(TokenError::LifetimeTooLong(3600))
        );
        assert_eq!(verify(&high, citizen, 3600), Ok(true));
        assert_eq!(
            verify(&staff, consumer, DEFAULT_MAX_LIFETIME_S as i64 + 1),
            Err(TokenError::LifetimeTooLong(DEFAULT_MAX_LIFETIME_S))
        );
        for e in [
            TokenError::RoleNotGranted(UserRole::Citizen),
            TokenError::Assurance,
            TokenError::LifetimeTooLong(3600),
        ] {
            assert_eq!(e.reason(), ReasonCode::TokenUntrustedIssuer);
        }
    }

    #[test]
    fn garbage_is_refused_without_a_panic() {
        let ed = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        let v = load(ed).expect("load");
        for token in [
            "",
            ".",
            "..",
            "a.b.c",
            "eyJhbGciOiJFZERTQSJ9.e30.",
            "Bearer x",
        ] {
            assert!(v.verify(token, [0; 32]).is_err(), "{token:?}");
        }
    }
}
