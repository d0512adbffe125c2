//! Who makes a call: the connection's certificate and the end user's token
//! identified, checked against the registry snapshot and the permission
//! matrix, and admitted under the organisation's limits.

use super::*;

impl Broker {
    /// Identifies and authorises the caller: the connection's verified
    /// certificate names the organisation, the token names the person, and
    /// the permission matrix says whether their roles may call this RPC.
    /// This is the only place a caller's identity is made.
    pub fn authorize<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Box<Denied>> {
        self.authorize_parts(&Credentials::of(request))
    }

    /// [`Broker::authorize`] from the parts of a call kept aside: a stream
    /// re-checks them for every item, so a certificate revoked, a key
    /// withdrawn, a token expired or an organisation suspended during the
    /// stream stops covering the items that follow.
    /// The organisation a connection's certificate identifies: present,
    /// naming an organisation, not revoked, registered, not expired and
    /// the organisation not suspended. What every call checks first (and
    /// the HTTP/JSON face's own answers, which call no RPC).
    pub fn certified<'p>(
        &self,
        peer: Option<&'p Arc<PeerIdentity>>,
        operation: &'static str,
    ) -> Result<(Arc<Organisation>, &'p crate::tls::PeerCertificate), Box<Denied>> {
        let deny = |error: ApiError,
                    reason,
                    org: Option<&Arc<Organisation>>,
                    user: Option<&Arc<EndUser>>| {
            denied(error, reason, org, user, operation)
        };
        let Some(cert) = peer.and_then(|p| p.certificate.as_ref()) else {
            return Err(deny(
                ApiError::unauthenticated(
                    "CLIENT_CERTIFICATE_REQUIRED",
                    "present the client certificate issued to your organisation (mutual TLS)",
                ),
                ReasonCode::InvalidArgument,
                None,
                None,
            ));
        };
        let kbo = cert.kbo.as_ref().map_err(|why| {
            deny(
                ApiError::unauthenticated(
                    "CERTIFICATE_WITHOUT_ORGANISATION",
                    format!("{why}; use a certificate whose subject carries organizationIdentifier NTRBE-<enterprise number>"),
                ),
                ReasonCode::InvalidArgument,
                None,
                None,
            )
        })?;
        let snapshot = self.snapshot();
        let org = snapshot.organisations.get(kbo);
        // A snapshot not confirmed current decides nothing: a suspension
        // or a revocation made through another broker may be missing.
        if !self.registry_fresh() {
            return Err(deny(
                ApiError::retryable(
                    tonic::Code::Unavailable,
                    "REGISTRY_STALE",
                    "this broker cannot confirm that its copy of the registry is current (its database is not answering it), so it decides nothing; try again later or through another broker",
                ),
                ReasonCode::RegistryStale,
                org,
                None,
            ));
        }
        if snapshot.is_revoked(cert) {
            return Err(deny(
                ApiError::unauthenticated(
                    "CERTIFICATE_REVOKED",
                    "this certificate has been revoked; ask your organisation for its new certificate",
                ),
                ReasonCode::CertificateRevoked,
                org,
                None,
            ));
        }
        let Some(org) = org else {
            return Err(deny(
                ApiError::unauthenticated(
                    "ORGANISATION_NOT_REGISTERED",
                    "your organisation is not registered with this broker; ask the operator to register it",
                ),
                ReasonCode::InvalidArgument,
                None,
                None,
            ));
        };
        if cert.expired_at(std::time::SystemTime::now()) {
            return Err(deny(
                ApiError::unauthenticated(
                    "CERTIFICATE_EXPIRED",
                    "this certificate has expired; connect again with your organisation's new certificate",
                ),
                ReasonCode::CertificateExpired,
                Some(org),
                None,
            ));
        }
        if org.status == OrganisationStatus::Suspended {
            return Err(deny(
                ApiError::denied(
                    "ORGANISATION_SUSPENDED",
                    "your organisation is suspended on this broker; contact the operator",
                ),
                ReasonCode::OrganisationSuspended,
                Some(org),
                None,
            ));
        }
        Ok((org.clone(), cert))
    }

    pub fn authorize_parts(&self, credentials: &Credentials<'_>) -> Result<Caller, Box<Denied>> {
        let rule = credentials.rule;
        let operation = rule.map_or("unknown", |r| r.method);
        let deny = |error: ApiError,
                    reason,
                    org: Option<&Arc<Organisation>>,
                    user: Option<&Arc<EndUser>>| {
            denied(error, reason, org, user, operation)
        };
        let (org, cert) = self.certified(credentials.peer, operation)?;
        let org = &org;
        let tokens = self.tokens.load();
        let user = credentials
            .token
            .ok_or(TokenError::Missing)
            .and_then(|t| tokens.verify(t, cert.sha256))
            .map_err(|e| {
                deny(
                    ApiError::unauthenticated(e.reason().as_str(), e.message(tokens.audience())),
                    e.reason(),
                    Some(org),
                    None,
                )
            })?;
        if user.organisation != org.kbo {
            return Err(deny(
                ApiError::unauthenticated(
                    "TOKEN_ORGANISATION_MISMATCH",
                    "the token was issued for another organisation than the one your certificate names; one administration cannot act for another",
                ),
                ReasonCode::TokenOrganisationMismatch,
                Some(org),
                None,
            ));
        }
        let Some(rule) = rule else {
            return Err(deny(
                ApiError::denied("ROLE_NOT_PERMITTED", "this RPC is open to no role"),
                ReasonCode::RoleNotPermitted,
                Some(org),
                Some(&user),
            ));
        };
        let needed: RoleSet = rule.roles.iter().copied().collect();
        let roles = user.roles.allowed_for(&org.roles);
        if !roles.intersects(needed) {
            let (reason, code, message) = if user.roles.intersects(needed) {
                (
                    "ORGANISATION_ROLE_MISSING",
                    ReasonCode::OrganisationRoleMissing,
                    format!(
                        "this call needs one of the roles {needed}; your token grants one, but your organisation is not registered for it; ask the operator"
                    ),
                )
            } else {
                (
                    "ROLE_NOT_PERMITTED",
                    ReasonCode::RoleNotPermitted,
                    format!(
                        "this call needs one of the roles {needed}; your token grants {}",
                        if user.roles.is_empty() {
                            "none".to_owned()
                        } else {
                            user.roles.to_string()
                        }
                    ),
                )
            };
            return Err(deny(
                ApiError::denied(reason, message).with("required_roles", needed.to_string()),
                code,
                Some(org),
                Some(&user),
            ));
        }
        Ok(Caller {
            org: org.clone(),
            user,
            roles,
            rule,
            slot: None,
        })
    }

    /// Like [`Broker::authorize`], for RPCs other than lookups: a refusal
    /// whose organisation is known is recorded in the audit log. The call
    /// then counts against its organisation's budget of calls and takes one
    /// of its slots in flight (held by the caller returned), on both faces:
    /// a script that loops on ListFiles, GiveConsent or PullMutations is
    /// held to its own budget and leaves the store to the others. Lookups
    /// (LookupBatch's stream too) have their own rate and quota per item.
    pub async fn admit<T>(&self, request: &tonic::Request<T>) -> Result<Caller, ApiError> {
        let mut caller = match self.authorize(request) {
            Ok(caller) => caller,
            Err(denied) => return Err(self.record_refusal(*denied, None).await),
        };
        if caller.rule.method.starts_with("semel.v1.LookupService/") {
            return Ok(caller);
        }
        match self.calls.enter(caller.org.kbo, std::time::Instant::now()) {
            Ok(slot) => {
                caller.slot = Some(Arc::new(slot));
                Ok(caller)
            }
            Err(CallRefusal::Rate(wait)) => {
                let error = ApiError {
                    retry_after: Some(wait),
                    ..ApiError::new(
                        tonic::Code::ResourceExhausted,
                        "RATE_LIMITED",
                        format!(
                            "your organisation exceeded its rate of calls ({} per second); retry in {} ms",
                            self.sources.limits.calls_per_second,
                            wait.as_millis().max(1)
                        ),
                    )
                };
                Err(self
                    .refuse(&caller, error, ReasonCode::RateLimited, None)
                    .await)
            }
            Err(CallRefusal::InFlight(cap)) => {
                let error = ApiError {
                    retry_after: Some(Duration::from_millis(100)),
                    ..ApiError::new(
                        tonic::Code::ResourceExhausted,
                        "RATE_LIMITED",
                        format!(
                            "your organisation has {cap} calls in progress on this broker already; wait for their answers, then retry"
                        ),
                    )
                };
                Err(self
                    .refuse(&caller, error, ReasonCode::RateLimited, None)
                    .await)
            }
        }
    }
}

/// What identifies a call: the connection's certificate, the end user's
/// token and the RPC. Kept by a stream to re-check every item.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    pub peer: Option<&'a Arc<PeerIdentity>>,
    pub token: Option<&'a str>,
    pub rule: Option<&'static Rule>,
}

impl<'a> Credentials<'a> {
    pub fn of<T>(request: &'a tonic::Request<T>) -> Self {
        Credentials {
            peer: request.extensions().get::<Arc<PeerIdentity>>(),
            token: bearer(request),
            rule: request.extensions().get::<Rpc>().and_then(|r| r.0),
        }
    }
}

/// The token of a request's `authorization: Bearer ...` metadata.
fn bearer<T>(request: &tonic::Request<T>) -> Option<&str> {
    bearer_token(request.metadata().get("authorization")?.to_str().ok()?)
}

/// The token of an `authorization: Bearer ...` value.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A refusal for who made a call. A caller nobody can be attributed to
/// gets no audit entry, but its refusal still carries a request id, so that
/// an operator can find the log line the caller quotes.
fn denied(
    error: ApiError,
    reason: ReasonCode,
    org: Option<&Arc<Organisation>>,
    user: Option<&Arc<EndUser>>,
    operation: &'static str,
) -> Box<Denied> {
    let error = match org {
        None => error.with("request_id", new_id().to_string()),
        Some(_) => error,
    };
    Box::new(Denied {
        error,
        reason,
        org: org.cloned(),
        user: user.cloned(),
        operation,
    })
}
