//! End users: the roles a person can hold in a token, and how they relate to
//! the roles an organisation is registered for.
//!
//! A person acts for an organisation. The token names the person's roles,
//! the registry names what the organisation may do, and the broker grants
//! only what both allow: a commune's identity provider cannot make its clerk
//! an administrator of the broker.

use std::fmt;

use crate::Role;

/// A role a person holds, as named in the token's `roles` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UserRole {
    /// Manages the registry: organisations, datasets, authorisations, certificates.
    Admin,
    /// Makes lookups for their organisation.
    Consumer,
    /// Manages their organisation's datasets.
    Source,
    /// Reads and verifies the audit log.
    Auditor,
    /// A citizen, for their own access report and consents (`sub` is their
    /// national number).
    Citizen,
}

impl UserRole {
    pub const ALL: [UserRole; 5] = [
        UserRole::Admin,
        UserRole::Consumer,
        UserRole::Source,
        UserRole::Auditor,
        UserRole::Citizen,
    ];

    /// The name used in tokens and documents, e.g. `consumer`.
    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Admin => "admin",
            UserRole::Consumer => "consumer",
            UserRole::Source => "source",
            UserRole::Auditor => "auditor",
            UserRole::Citizen => "citizen",
        }
    }

    pub fn parse(s: &str) -> Option<UserRole> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The organisation role that a person in this role needs their
    /// organisation to be registered with; `None` when any registered
    /// organisation will do (an auditor of a consumer reads that consumer's
    /// own entries).
    pub fn organisation_role(self) -> Option<Role> {
        match self {
            UserRole::Admin => Some(Role::Operator),
            UserRole::Consumer => Some(Role::Consumer),
            UserRole::Source => Some(Role::Source),
            UserRole::Auditor => None,
            UserRole::Citizen => Some(Role::CitizenPortal),
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for UserRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`UserRole`]s, copied freely.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RoleSet(u8);

impl RoleSet {
    pub const EMPTY: RoleSet = RoleSet(0);

    pub fn of(roles: &[UserRole]) -> RoleSet {
        roles.iter().copied().collect()
    }

    pub fn contains(self, role: UserRole) -> bool {
        self.0 & role.bit() != 0
    }

    pub fn insert(&mut self, role: UserRole) {
        self.0 |= role.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether the two sets share a role.
    pub fn intersects(self, other: RoleSet) -> bool {
        self.0 & other.0 != 0
    }

    pub fn iter(self) -> impl Iterator<Item = UserRole> {
        UserRole::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// The roles of `self` that an organisation registered with
    /// `organisation_roles` may exercise.
    pub fn allowed_for(self, organisation_roles: &std::collections::BTreeSet<Role>) -> RoleSet {
        self.iter()
            .filter(|r| {
                r.organisation_role()
                    .is_none_or(|needed| organisation_roles.contains(&needed))
            })
            .collect()
    }
}

impl FromIterator<UserRole> for RoleSet {
    fn from_iter<I: IntoIterator<Item = UserRole>>(iter: I) -> Self {
        let mut set = RoleSet::EMPTY;
        for r in iter {
            set.insert(r);
        }
        set
    }
}

impl fmt::Debug for RoleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for RoleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(UserRole::as_str).collect();
        f.write_str(&names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in UserRole::ALL {
            assert_eq!(UserRole::parse(r.as_str()), Some(r));
        }
        assert_eq!(UserRole::parse("root"), None);
    }

    #[test]
    fn an_organisation_bounds_what_its_people_may_do() {
        let all = RoleSet::of(&UserRole::ALL);
        let commune = [Role::Consumer].into_iter().collect();
        assert_eq!(
            all.allowed_for(&commune),
            RoleSet::of(&[UserRole::Consumer, UserRole::Auditor])
        );
        let operator = [Role::Operator].into_iter().collect();
        assert_eq!(
            all.allowed_for(&operator),
            RoleSet::of(&[UserRole::Admin, UserRole::Auditor])
        );
        let portal = [Role::CitizenPortal].into_iter().collect();
        assert!(all.allowed_for(&portal).contains(UserRole::Citizen));
        assert!(RoleSet::EMPTY.allowed_for(&operator).is_empty());
    }
}
