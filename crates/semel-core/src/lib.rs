//! Semel's domain, with no I/O: identifiers that can only hold valid numbers,
//! the registry's objects, the lookup decision and the audit entry encoding.
//!
//! Nothing here knows about tokio, tonic, prost or sled; the layering check
//! in `.ci/run` holds that absence.

mod audit;
pub mod catalogue;
mod check;
pub mod checkpoint;
mod clock;
mod decision;
pub mod epoch;
mod identity;
mod kbo;
pub mod keyfile;
pub mod merkle;
pub mod mutation;
mod names;
mod niss;
pub mod persons;
mod registry;
pub mod seal;

pub use audit::{
    AuditDecision, AuditEntry, AuditRecord, DecodeError, FORMAT, Hash, LOOKUP_OPERATION,
    MAX_DETAIL, MAX_QUOTED, MAX_TEXT, Outcome, ReasonCode, ZERO_HASH, entry_hash, quote_free_text,
};
pub use check::{CheckOp, CheckRule, ElementPath, Operand, Question};
pub use clock::{brussels_today, until_brussels_midnight};
pub use decision::{Allowance, Decision, LookupQuestion, Refusal, RefusalReason, decide};
pub use identity::{RoleSet, UserRole};
pub use kbo::{Kbo, KboError};
pub use names::{AuthorisationRef, CapacityCode, DatasetName, FieldName, NameError, PurposeCode};
pub use niss::{Niss, NissError, NissKind, Sex, redact_national_numbers};
pub use persons::{
    Consent, ConsentChannel, ConsentState, FilePhase, NumberReplacement, PersonFile,
};
pub use registry::{
    ApplicationState, Authorisation, AuthorisationApplication, AuthorisationStatus, CertificateId,
    Dataset, FieldDefinition, FieldType, MembershipApplication, Organisation, OrganisationStatus,
    Purpose, RevokedCertificate, Role,
};

#[cfg(test)]
mod robustness {
    //! Whatever a client sends, parsing answers with a value or an error and
    //! never panics: a deterministic sweep of random and near-valid inputs.

    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn parsers_never_panic() {
        let mut rng = Rng(0x5EED);
        let alphabet = b"0123456789.- /abcXYZ\xc3\xa9\x00";
        for _ in 0..200_000 {
            let len = (rng.next() % 20) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                .collect();
            let s = String::from_utf8_lossy(&bytes);
            let _ = Niss::parse(&s);
            let _ = Kbo::parse(&s);
            let _ = DatasetName::new(s.to_string());
            let _ = FieldName::new(s.to_string());
            let _ = PurposeCode::new(s.to_string());
            let _ = AuthorisationRef::new(s.to_string());
            let _ = ReasonCode::parse(&s);
        }
    }

    #[test]
    fn audit_decoding_never_panics_on_damaged_bytes() {
        let mut rng = Rng(0xA0D1);
        let entry = AuditEntry {
            format: crate::FORMAT,
            sequence: 3,
            previous_hash: ZERO_HASH,
            record: AuditRecord {
                request_id: [9; 16],
                time_micros: 1,
                operation: crate::LOOKUP_OPERATION.into(),
                consumer: Kbo::parse("0566988259").expect("kbo"),
                end_user: None,
                citizen: Niss::parse("85073003328").ok(),
                dataset: "d".into(),
                fields_requested: vec!["a".into()],
                fields_returned: vec![],
                purpose: "P".into(),
                authorisation: None,
                authorisation_version: None,
                decision: AuditDecision::Refused,
                reason: None,
                outcome: Outcome::NotForwarded,
                source: None,
                consumer_reference: String::new(),
                reference_date: None,
                citizen_as_given: Niss::parse("98472899765").ok(),
                checks: vec!["nis_code".into()],
                detail: "file f".into(),
            },
        };
        let good = entry.to_bytes();
        for _ in 0..50_000 {
            let mut b = good.clone();
            for _ in 0..(1 + rng.next() % 4) {
                let i = (rng.next() as usize) % b.len();
                b[i] = rng.next() as u8;
            }
            b.truncate((rng.next() as usize) % (good.len() + 1));
            let _ = AuditEntry::decode(&b);
        }
    }
}
