//! Validated names: datasets, fields, purposes and authorisation references.
//!
//! Each is a small string newtype that can only hold a well-formed value, so
//! code further in never has to re-check what came over the wire.

use std::fmt;

/// Why a name is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be 1 to 64 characters of {allowed}")]
pub struct NameError {
    pub what: &'static str,
    pub allowed: &'static str,
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $allowed:literal, $valid:expr) => {
        name_type!($(#[$doc])* $name, $what, $allowed, $valid, |_| true);
    };
    ($(#[$doc:meta])* $name:ident, $what:literal, $allowed:literal, $valid:expr, $whole:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks and wraps a name.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                let valid: fn(u8) -> bool = $valid;
                let whole: fn(&str) -> bool = $whole;
                if s.is_empty() || s.len() > 64 || !s.bytes().all(valid) || !whole(&s) {
                    return Err(NameError { what: $what, allowed: $allowed });
                }
                Ok(Self(s))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A dataset name such as `national_register.residence`.
    DatasetName,
    "a dataset name",
    "lower-case letters, digits, '_', '-' and '.'",
    |b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
);
name_type!(
    /// A field name such as `postal_code`.
    FieldName,
    "a field name",
    "lower-case letters, digits and '_'",
    |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
);
name_type!(
    /// A purpose code such as `RIS_ELIGIBILITY`.
    PurposeCode,
    "a purpose code",
    "upper-case letters, digits and '_'",
    |b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
);
name_type!(
    /// A capacity code of the persons directory, such as `RIS_APPLICANT`:
    /// why an institution holds a file on a person.
    CapacityCode,
    "a capacity code",
    "upper-case letters, digits and '_'",
    |b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
);
name_type!(
    /// An authorisation reference such as `BSC/2024/017`. Its `/`-separated
    /// parts are never `.` or `..`: a reference is put in request paths
    /// (`/v1/authorisationVersions/BSC/2024/017`), where a dot segment would
    /// lead a browser or a proxy to another resource than the one named.
    AuthorisationRef,
    "an authorisation reference",
    "letters, digits, '/', '.', '_' and '-', no part of it '.' or '..'",
    |b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'),
    |s| s.split('/').all(|part| part != "." && part != "..")
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hold_their_invariants() {
        assert!(DatasetName::new("national_register.residence").is_ok());
        assert!(DatasetName::new("National").is_err());
        assert!(DatasetName::new("").is_err());
        assert!(DatasetName::new("a".repeat(65)).is_err());
        assert!(FieldName::new("postal_code").is_ok());
        assert!(FieldName::new("postal code").is_err());
        assert!(PurposeCode::new("RIS_ELIGIBILITY").is_ok());
        assert!(PurposeCode::new("ris").is_err());
        assert!(AuthorisationRef::new("BSC/2024/017").is_ok());
        assert!(AuthorisationRef::new("BSC 2024").is_err());
    }

    #[test]
    fn an_authorisation_reference_has_no_dot_segment() {
        for ok in [
            "BSC/2024/017",
            "CSSS.2024.017",
            "a..b/c",
            ".hidden/x",
            "x/..y",
            "v1.2",
        ] {
            assert!(AuthorisationRef::new(ok).is_ok(), "{ok} is a reference");
        }
        for bad in [
            ".",
            "..",
            "../../v1/organisations",
            "BSC/../admin",
            "BSC/2024/..",
            "./BSC",
            "BSC/./017",
            "BSC/2024/.",
        ] {
            assert!(AuthorisationRef::new(bad).is_err(), "{bad} is refused");
        }
    }
}
