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
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks and wraps a name.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                let valid: fn(u8) -> bool = $valid;
                if s.is_empty() || s.len() > 64 || !s.bytes().all(valid) {
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
    /// An authorisation reference such as `BSC/2024/017`.
    AuthorisationRef,
    "an authorisation reference",
    "letters, digits, '/', '.', '_' and '-'",
    |b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-')
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
}
