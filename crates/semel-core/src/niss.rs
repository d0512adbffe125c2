//! The national number (NISS/INSZ) and the BIS number: a type that can only hold a valid one.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use time::{Date, Month};

/// Why a string is not a valid national or BIS number. Each variant names the
/// problem precisely, so a consumer's developer knows what to fix. None of the
/// messages repeats the number itself: it may be personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NissError {
    #[error(
        "a national number has 11 digits, bare (YYMMDDSSSCC) or formatted (YY.MM.DD-SSS.CC); got {0} characters"
    )]
    Length(usize),
    #[error("a national number has only digits, or the formatted form YY.MM.DD-SSS.CC")]
    Format,
    #[error("the check digits do not match the first nine digits for a birth in 19xx or in 20xx")]
    CheckDigits,
    #[error(
        "the month {0:02} is not a month (01-12), a BIS month (21-32, 41-52) or unknown (00, 20, 40)"
    )]
    Month(u8),
    #[error("the day {0:02} does not exist in that month")]
    Day(u8),
    #[error("the day counter must lie between 001 and 998")]
    Counter,
}

/// Which register a number belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NissKind {
    /// A National Register number.
    Register,
    /// A BIS number (person not in the National Register), sex known (month + 40).
    BisSexKnown,
    /// A BIS number, sex unknown (month + 20).
    BisSexUnknown,
}

/// Sex as encoded by the day counter (odd: male, even: female). Only
/// meaningful for register numbers and BIS numbers with the sex known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sex {
    Male,
    Female,
}

/// A valid national number (NISS/INSZ) or BIS number.
///
/// It can only be built through [`Niss::parse`], which checks the format, the
/// mod-97 check digits (with the rule for births from 2000), the month (with
/// the BIS offsets), the day and the counter. It is stored as 11 ASCII digits.
///
/// `Debug` does not print the number, so a stray `{:?}` in a log line cannot
/// leak it; `Display` gives the formatted number and is for the citizen's own
/// screens and for tests only.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Niss([u8; 11]);

impl Niss {
    /// Parses a bare (`93051822361`) or formatted (`93.05.18-223.61`) number.
    /// Whitespace around it (spaces, tabs, line ends, no-break and zero-width
    /// spaces, a byte-order mark), which forms and spreadsheets add, is
    /// ignored: it cannot change which number is meant. Anything else that
    /// is not one of the two layouts is refused with the reason.
    pub fn parse(input: &str) -> Result<Self, NissError> {
        let input =
            input.trim_matches(|c: char| c.is_whitespace() || matches!(c, '\u{200b}' | '\u{feff}'));
        let bytes = input.as_bytes();
        let digits: [u8; 11] = match bytes.len() {
            11 => {
                if !bytes.iter().all(u8::is_ascii_digit) {
                    return Err(NissError::Format);
                }
                let mut d = [0u8; 11];
                d.copy_from_slice(bytes);
                d
            }
            15 => {
                // YY.MM.DD-SSS.CC
                const SEP: [(usize, u8); 4] = [(2, b'.'), (5, b'.'), (8, b'-'), (12, b'.')];
                if SEP.iter().any(|&(i, c)| bytes[i] != c) {
                    return Err(NissError::Format);
                }
                let mut d = [0u8; 11];
                let mut n = 0;
                for (i, &b) in bytes.iter().enumerate() {
                    if SEP.iter().any(|&(j, _)| j == i) {
                        continue;
                    }
                    if !b.is_ascii_digit() {
                        return Err(NissError::Format);
                    }
                    d[n] = b;
                    n += 1;
                }
                d
            }
            n => return Err(NissError::Length(n)),
        };
        Self::from_digits(digits)
    }

    fn from_digits(d: [u8; 11]) -> Result<Self, NissError> {
        let num = |range: std::ops::Range<usize>| {
            d[range]
                .iter()
                .fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0'))
        };
        let first9 = num(0..9);
        let check = num(9..11);
        let century_1900 = 97 - first9 % 97 == check;
        let century_2000 = 97 - (2_000_000_000 + first9) % 97 == check;
        let year_base = match (century_1900, century_2000) {
            (true, _) => 1900,
            (false, true) => 2000,
            (false, false) => return Err(NissError::CheckDigits),
        };
        let yy = num(0..2) as i32;
        let mm = num(2..4) as u8;
        let dd = num(4..6) as u8;
        let counter = num(6..9);
        if counter == 0 || counter == 999 {
            return Err(NissError::Counter);
        }
        let month = match mm {
            0..=12 => mm,
            20..=32 => mm - 20,
            40..=52 => mm - 40,
            _ => return Err(NissError::Month(mm)),
        };
        if month == 0 {
            // The birth date is unknown: the day cannot be known either.
            if dd != 0 {
                return Err(NissError::Day(dd));
            }
        } else if dd != 0 {
            let m = Month::try_from(month).map_err(|_| NissError::Month(mm))?;
            if Date::from_calendar_date(year_base + yy, m, dd).is_err() {
                return Err(NissError::Day(dd));
            }
        }
        Ok(Niss(d))
    }

    /// The 11 digits, as text.
    pub fn as_str(&self) -> &str {
        // The constructor only ever stores ASCII digits.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// The 11 digits, as bytes (for keys and encodings).
    pub fn as_bytes(&self) -> &[u8; 11] {
        &self.0
    }

    /// Which register the number belongs to.
    pub fn kind(&self) -> NissKind {
        match (self.0[2] - b'0') * 10 + (self.0[3] - b'0') {
            20..=32 => NissKind::BisSexUnknown,
            40..=52 => NissKind::BisSexKnown,
            _ => NissKind::Register,
        }
    }

    /// The sex encoded by the counter, when the number encodes one.
    pub fn sex(&self) -> Option<Sex> {
        if self.kind() == NissKind::BisSexUnknown {
            return None;
        }
        if (self.0[8] - b'0') % 2 == 1 {
            Some(Sex::Male)
        } else {
            Some(Sex::Female)
        }
    }

    /// The century of birth given by the check digits: 1900 or 2000.
    pub fn century(&self) -> i32 {
        let first9: u64 = self.0[..9]
            .iter()
            .fold(0, |acc, &b| acc * 10 + u64::from(b - b'0'));
        let check = u64::from((self.0[9] - b'0') * 10 + (self.0[10] - b'0'));
        if 97 - first9 % 97 == check {
            1900
        } else {
            2000
        }
    }

    /// The full birth date, when month and day are both known.
    pub fn birth_date(&self) -> Option<Date> {
        let yy = i32::from((self.0[0] - b'0') * 10 + (self.0[1] - b'0'));
        let mm = (self.0[2] - b'0') * 10 + (self.0[3] - b'0');
        let dd = (self.0[4] - b'0') * 10 + (self.0[5] - b'0');
        let month = mm % 20;
        if month == 0 || dd == 0 {
            return None;
        }
        let month = Month::try_from(month).ok()?;
        Date::from_calendar_date(self.century() + yy, month, dd).ok()
    }

    /// Builds the register number for a birth date and day counter,
    /// computing the check digits (with the rule for births from 2000). For
    /// the synthetic population and tests.
    pub fn for_birth(birth: Date, counter: u16) -> Option<Self> {
        Self::build(birth, counter, 0)
    }

    /// Builds a BIS number: the month carries 40 when the sex is known, 20
    /// when it is not.
    pub fn for_bis(birth: Date, counter: u16, sex_known: bool) -> Option<Self> {
        Self::build(birth, counter, if sex_known { 40 } else { 20 })
    }

    fn build(birth: Date, counter: u16, month_offset: u8) -> Option<Self> {
        if counter == 0 || counter >= 999 {
            return None;
        }
        let yy = u64::try_from(birth.year().rem_euclid(100)).ok()?;
        let first9 = yy * 10_000_000
            + u64::from(u8::from(birth.month()) + month_offset) * 100_000
            + u64::from(birth.day()) * 1000
            + u64::from(counter);
        let n = if birth.year() >= 2000 {
            2_000_000_000 + first9
        } else {
            first9
        };
        Self::parse(&format!("{first9:09}{:02}", 97 - n % 97)).ok()
    }
}

/// Replaces everything in `text` shaped like a national or BIS number
/// (11 digits standing alone, or `YY.MM.DD-SSS.CC`) with
/// `<national number>`, valid or not: a mistyped number is personal data
/// too. Enterprise numbers (10 digits) and request ids are left alone.
/// For texts that came from outside and are about to be shown or logged.
pub fn redact_national_numbers(text: &str) -> Cow<'_, str> {
    const MASK: &str = "<national number>";
    let b = text.as_bytes();
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let formatted_at = |i: usize| {
        b.len() >= i + 15
            && (0..15).all(|k| match k {
                2 | 5 => b[i + k] == b'.',
                8 => b[i + k] == b'-',
                12 => b[i + k] == b'.',
                _ => b[i + k].is_ascii_digit(),
            })
            && !digit(i + 15)
    };
    let mut out: Option<String> = None;
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        if !digit(i) || (i > 0 && digit(i - 1)) {
            i += 1;
            continue;
        }
        let run = (i..b.len()).take_while(|&j| digit(j)).count();
        let len = if formatted_at(i) {
            15
        } else if run == 11 {
            11
        } else {
            i += run;
            continue;
        };
        let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
        o.push_str(&text[copied..i]);
        o.push_str(MASK);
        i += len;
        copied = i;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
    }
}

impl fmt::Display for Niss {
    /// The formatted number, `YY.MM.DD-SSS.CC`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.as_str();
        write!(
            f,
            "{}.{}.{}-{}.{}",
            &s[0..2],
            &s[2..4],
            &s[4..6],
            &s[6..9],
            &s[9..11]
        )
    }
}

impl fmt::Debug for Niss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Niss(<redacted>)")
    }
}

/// Stored as its 11 digits (the persons directory, consents); never
/// written to a log.
impl serde::Serialize for Niss {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Niss {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Niss::parse(&s).map_err(|_| serde::de::Error::custom("not a valid national number"))
    }
}

impl FromStr for Niss {
    type Err = NissError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn domain_test_vectors_parse() {
        let cases: &[(&str, NissKind, Option<Date>, Option<Sex>)] = &[
            (
                "93051822361",
                NissKind::Register,
                Some(date!(1993 - 05 - 18)),
                Some(Sex::Male),
            ),
            (
                "85073003328",
                NissKind::Register,
                Some(date!(1985 - 07 - 30)),
                Some(Sex::Male),
            ),
            (
                "17073003384",
                NissKind::Register,
                Some(date!(2017 - 07 - 30)),
                Some(Sex::Male),
            ),
            (
                "00012556777",
                NissKind::Register,
                Some(date!(2000 - 01 - 25)),
                Some(Sex::Male),
            ),
            (
                "05110200252",
                NissKind::Register,
                Some(date!(2005 - 11 - 02)),
                Some(Sex::Female),
            ),
            (
                "98472899765",
                NissKind::BisSexKnown,
                Some(date!(1998 - 07 - 28)),
                Some(Sex::Male),
            ),
            (
                "90231500148",
                NissKind::BisSexUnknown,
                Some(date!(1990 - 03 - 15)),
                None,
            ),
            (
                "01490700185",
                NissKind::BisSexKnown,
                Some(date!(2001 - 09 - 07)),
                Some(Sex::Male),
            ),
        ];
        for (input, kind, birth, sex) in cases {
            let n = Niss::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(n.as_str(), *input);
            assert_eq!(n.kind(), *kind, "{input}");
            assert_eq!(n.birth_date(), *birth, "{input}");
            assert_eq!(n.sex(), *sex, "{input}");
        }
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        for input in [
            " 93051822361",
            "93051822361 ",
            "\t93.05.18-223.61\r\n",
            "\u{a0}93051822361\u{a0}",
            "\u{feff}93051822361",
            "93051822361\u{200b}",
        ] {
            assert_eq!(
                Niss::parse(input).map(|n| n.as_str().to_owned()),
                Ok("93051822361".to_owned()),
                "{input:?}"
            );
        }
    }

    #[test]
    fn formatted_input_is_accepted_and_displayed() {
        let n = Niss::parse("93.05.18-223.61").expect("formatted");
        assert_eq!(n.as_str(), "93051822361");
        assert_eq!(n.to_string(), "93.05.18-223.61");
        assert_eq!(format!("{n:?}"), "Niss(<redacted>)");
    }

    #[test]
    fn wrong_numbers_fail_with_a_precise_reason() {
        let cases: &[(&str, NissError)] = &[
            ("", NissError::Length(0)),
            ("9305182236", NissError::Length(10)),
            ("930518223612", NissError::Length(12)),
            ("9305182236a", NissError::Format),
            ("93 05 18 223 61", NissError::Format),
            ("93-05-18.223.61", NissError::Format),
            ("93051822362", NissError::CheckDigits),
            // Whitespace inside the number is not surrounding whitespace.
            ("930518 22361", NissError::Length(12)),
            (" 93051822362 ", NissError::CheckDigits),
            ("93051822360", NissError::CheckDigits),
            // 2017 number checked with the 19xx rule only would fail; with 1900 digits it must fail.
            ("17073003331", NissError::CheckDigits),
        ];
        for (input, want) in cases {
            assert_eq!(Niss::parse(input), Err(*want), "{input:?}");
        }
    }

    /// Builds a number with correct check digits around a bad field, so the
    /// failure is attributed to the field and not to the check digits.
    fn with_check(first9: &str) -> String {
        let n: u64 = first9.parse().expect("digits");
        format!("{first9}{:02}", 97 - n % 97)
    }

    #[test]
    fn bad_fields_are_named() {
        assert_eq!(
            Niss::parse(&with_check("931318223")),
            Err(NissError::Month(13))
        );
        assert_eq!(
            Niss::parse(&with_check("936018223")),
            Err(NissError::Month(60))
        );
        assert_eq!(
            Niss::parse(&with_check("930532223")),
            Err(NissError::Day(32))
        );
        assert_eq!(
            Niss::parse(&with_check("930229223")),
            Err(NissError::Day(29))
        );
        assert_eq!(
            Niss::parse(&with_check("930518000")),
            Err(NissError::Counter)
        );
        assert_eq!(
            Niss::parse(&with_check("930518999")),
            Err(NissError::Counter)
        );
        assert_eq!(
            Niss::parse(&with_check("930015223")),
            Err(NissError::Day(15))
        );
        // Leap day in a leap year of the 1900s, and unknown date.
        assert!(Niss::parse(&with_check("960229223")).is_ok());
        assert!(Niss::parse(&with_check("930000223")).is_ok());
        assert!(Niss::parse(&with_check("932000223")).is_ok());
        assert!(Niss::parse(&with_check("930500223")).is_ok());
    }

    #[test]
    fn national_numbers_are_redacted_from_text() {
        let cases = [
            (
                "no dataset named a93051822361 here",
                "no dataset named a<national number> here",
            ),
            (
                "93.05.18-223.61 and 93051822362",
                "<national number> and <national number>",
            ),
            (
                "organisation 0212345668, request 01a2043b-6774-7429-9e4c-0112b86e1846",
                "organisation 0212345668, request 01a2043b-6774-7429-9e4c-0112b86e1846",
            ),
            (
                "930518223610 is twelve digits",
                "930518223610 is twelve digits",
            ),
            ("nothing here", "nothing here"),
            ("é85073003328", "é<national number>"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_national_numbers(input), want, "{input}");
        }
        assert!(matches!(redact_national_numbers("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn for_birth_round_trips_across_centuries() {
        for (birth, counter) in [
            (date!(1993 - 05 - 18), 223),
            (date!(2017 - 07 - 30), 33),
            (date!(2000 - 01 - 25), 567),
            (date!(1950 - 12 - 31), 2),
        ] {
            let n = Niss::for_birth(birth, counter).expect("valid");
            assert_eq!(n.birth_date(), Some(birth));
        }
        assert_eq!(
            Niss::for_birth(date!(1993 - 05 - 18), 223).map(|n| n.to_string()),
            Some("93.05.18-223.61".to_owned())
        );
        assert_eq!(
            Niss::for_bis(date!(1998 - 07 - 28), 997, true).map(|n| n.as_str().to_owned()),
            Some("98472899765".to_owned())
        );
        assert_eq!(
            Niss::for_bis(date!(1990 - 03 - 15), 1, false).map(|n| n.as_str().to_owned()),
            Some("90231500148".to_owned())
        );
        assert_eq!(
            Niss::for_bis(date!(2001 - 09 - 07), 1, true).map(|n| n.as_str().to_owned()),
            Some("01490700185".to_owned())
        );
    }
}
