//! The enterprise number (KBO/BCE) that identifies an administration.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a valid enterprise number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KboError {
    #[error("an enterprise number has 10 digits, bare (0566988259) or formatted (0566.988.259)")]
    Format,
    #[error("an enterprise number starts with 0 or 1")]
    FirstDigit,
    #[error("the check digits do not match the first eight digits")]
    CheckDigits,
}

/// A valid enterprise number (KBO/BCE), stored as 10 ASCII digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kbo([u8; 10]);

impl Kbo {
    /// Parses `0566988259`, `0566.988.259` or `BE0566988259`.
    pub fn parse(input: &str) -> Result<Self, KboError> {
        let s = input.strip_prefix("BE").unwrap_or(input).as_bytes();
        let mut d = [0u8; 10];
        match s.len() {
            10 if s.iter().all(u8::is_ascii_digit) => d.copy_from_slice(s),
            12 if s[4] == b'.' && s[8] == b'.' => {
                let mut n = 0;
                for (i, &b) in s.iter().enumerate() {
                    if i == 4 || i == 8 {
                        continue;
                    }
                    if !b.is_ascii_digit() {
                        return Err(KboError::Format);
                    }
                    d[n] = b;
                    n += 1;
                }
            }
            _ => return Err(KboError::Format),
        }
        if d[0] != b'0' && d[0] != b'1' {
            return Err(KboError::FirstDigit);
        }
        let first8 = d[..8]
            .iter()
            .fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0'));
        let check = u64::from((d[8] - b'0') * 10 + (d[9] - b'0'));
        if 97 - first8 % 97 != check {
            return Err(KboError::CheckDigits);
        }
        Ok(Kbo(d))
    }

    /// Builds the valid number for eight leading digits (first digit 0 or 1).
    pub fn from_prefix(first8: u32) -> Option<Self> {
        let check = 97 - u64::from(first8) % 97;
        Self::parse(&format!("{first8:08}{check:02}")).ok()
    }

    /// The 10 digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// The 10 digits, as bytes (for keys and encodings).
    pub fn as_bytes(&self) -> &[u8; 10] {
        &self.0
    }
}

impl fmt::Display for Kbo {
    /// The formatted number, `0566.988.259`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.as_str();
        write!(f, "{}.{}.{}", &s[0..4], &s[4..7], &s[7..10])
    }
}

impl fmt::Debug for Kbo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kbo({})", self.as_str())
    }
}

impl FromStr for Kbo {
    type Err = KboError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Kbo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Kbo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Kbo::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_examples_parse() {
        for (input, bare) in [
            ("0566.988.259", "0566988259"),
            ("0314.595.348", "0314595348"),
            ("1006.872.569", "1006872569"),
            ("0566988259", "0566988259"),
            ("BE0566988259", "0566988259"),
        ] {
            let k = Kbo::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(k.as_str(), bare);
        }
        assert_eq!(
            Kbo::parse("0566988259").map(|k| k.to_string()),
            Ok("0566.988.259".to_owned())
        );
    }

    #[test]
    fn wrong_numbers_fail_with_a_precise_reason() {
        for (input, want) in [
            ("0566988258", KboError::CheckDigits),
            ("2566988259", KboError::FirstDigit),
            ("056698825", KboError::Format),
            ("0566-988-259", KboError::Format),
            ("05669882a9", KboError::Format),
            ("", KboError::Format),
        ] {
            assert_eq!(Kbo::parse(input), Err(want), "{input}");
        }
    }

    #[test]
    fn from_prefix_computes_check_digits() {
        assert_eq!(
            Kbo::from_prefix(5_669_882).map(|k| k.as_str().to_owned()),
            Some("0566988259".to_owned())
        );
    }
}
