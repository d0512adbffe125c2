//! The trusted issuers of end-users' tokens and the rules each is bound
//! by (`[tokens]`).

use std::path::PathBuf;

use semel_core::{Kbo, RoleSet, UserRole};

/// The trusted issuers, as configured.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// The `aud` every token must carry.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    pub issuers: Vec<IssuerSettings>,
}

#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// The issuer's `iss`, exactly.
    pub issuer: String,
    /// Its public keys (JWKS).
    pub jwks: PathBuf,
    /// The organisations it may speak for; any when empty.
    pub organisations: Vec<Kbo>,
    /// The roles it may grant. A token claiming another is refused.
    pub roles: RoleSet,
    /// The authentication levels (`acr`) its tokens must carry one of;
    /// none required when empty. Required whenever `roles` holds the
    /// citizen role (`semel --check-config` says so).
    pub required_acr: Vec<String>,
    /// The longest a token of it may live, in seconds: `exp - iat`, and
    /// `exp` from now.
    pub max_lifetime_s: u64,
}

/// The roles an issuer configured without `roles` may grant: every role of
/// an organisation's staff, not the citizen's. A citizen's token names a
/// person by national number alone, so only an identity provider the
/// operator names for it (and whose authentication level is checked) may
/// issue one.
pub fn default_issuer_roles() -> RoleSet {
    RoleSet::of(&[
        UserRole::Admin,
        UserRole::Consumer,
        UserRole::Source,
        UserRole::Auditor,
    ])
}

/// The longest a token may live by default, in seconds, when its issuer
/// may grant the citizen role: 12 hours, a long portal session. A citizen's
/// token opens that citizen's data and history to whoever holds it.
pub const DEFAULT_CITIZEN_MAX_LIFETIME_S: u64 = 12 * 3600;
/// The longest a token may live by default otherwise, in seconds: 24 hours,
/// a working day with its margins (a back office's session).
pub const DEFAULT_MAX_LIFETIME_S: u64 = 24 * 3600;

impl IssuerSettings {
    /// An issuer with the default rules: any organisation, the staff roles
    /// (`default_issuer_roles`), no `acr` required, 24-hour tokens at most.
    pub fn new(issuer: impl Into<String>, jwks: impl Into<PathBuf>) -> IssuerSettings {
        IssuerSettings {
            issuer: issuer.into(),
            jwks: jwks.into(),
            organisations: Vec::new(),
            roles: default_issuer_roles(),
            required_acr: Vec::new(),
            max_lifetime_s: DEFAULT_MAX_LIFETIME_S,
        }
    }

    /// The longest a token of an issuer granting `roles` may live, unless
    /// configured.
    pub fn default_max_lifetime_s(roles: RoleSet) -> u64 {
        if roles.contains(UserRole::Citizen) {
            DEFAULT_CITIZEN_MAX_LIFETIME_S
        } else {
            DEFAULT_MAX_LIFETIME_S
        }
    }
}
