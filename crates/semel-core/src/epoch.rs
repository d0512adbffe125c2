//! A new epoch of the audit log: when entries its witnesses cosigned are
//! lost for good (no copy, no standby, no export holds them), the log
//! cannot go on under its origin (its next checkpoint would be a fork of a
//! size its key signed before). A new log starts under a new origin, and
//! its first entry is a statement, signed with the rest of the log: the
//! old origin's newest cosigned checkpoint, whole, and the range of
//! entries lost (from what the kept store held up to that checkpoint's
//! size). Auditors see the gap rather than a silent fork; `semel audit
//! verify` checks the statement where the log begins.
//!
//! ```text
//! semel new epoch
//! previous origin: semel.brussels/audit/0248015813
//! previous size: 1042
//! previous root: 3q2+7w...=
//! held: 1030
//!
//! <the previous checkpoint's note, with its cosignatures>
//! ```

use crate::checkpoint::{Checkpoint, NoteVerifier, b64};

/// The operation of the entry that opens a new epoch.
pub const NEW_EPOCH_OPERATION: &str = "semel.audit/NewEpoch";

const HEADER: &str = "semel new epoch";

/// Why a new-epoch statement cannot be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("new-epoch statement: {0}")]
pub struct EpochError(pub String);

/// What the first entry of a new epoch states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochStatement {
    /// The previous log's newest checkpoint its witnesses cosigned.
    pub previous: Checkpoint,
    /// How many of its entries the kept store still holds: entries
    /// `held..previous.size` are lost.
    pub held: u64,
    /// That checkpoint's signed note, as the witnesses cosigned it.
    pub note: String,
}

impl EpochStatement {
    /// The statement for a new log after `note` (the previous origin's
    /// newest cosigned checkpoint), of which `held` entries are kept.
    pub fn new(note: &str, held: u64) -> Result<EpochStatement, EpochError> {
        let previous = Checkpoint::of_note(note)
            .map_err(|e| EpochError(format!("the previous checkpoint: {e}")))?;
        if held > previous.size {
            return Err(EpochError(format!(
                "{held} entries held, more than the {} the previous checkpoint covers: \
                 nothing is lost, and the log goes on under its origin",
                previous.size
            )));
        }
        if held == previous.size {
            return Err(EpochError(format!(
                "the kept store holds all {held} entries the previous checkpoint covers: \
                 nothing is lost; restore it and go on under the same origin"
            )));
        }
        let note = if note.ends_with('\n') {
            note.to_owned()
        } else {
            format!("{note}\n")
        };
        Ok(EpochStatement {
            previous,
            held,
            note,
        })
    }

    /// The entries lost: from what was held up to the previous checkpoint.
    pub fn lost(&self) -> std::ops::Range<u64> {
        self.held..self.previous.size
    }

    /// The statement as the entry's detail.
    pub fn to_detail(&self) -> String {
        format!(
            "{HEADER}\nprevious origin: {}\nprevious size: {}\nprevious root: {}\nheld: {}\n\n{}",
            self.previous.origin,
            self.previous.size,
            b64::encode(&self.previous.root),
            self.held,
            self.note
        )
    }

    /// Reads a statement from an entry's detail, and checks that it holds
    /// together: the note carries the checkpoint the lines state, and
    /// entries were lost.
    pub fn parse(detail: &str) -> Result<EpochStatement, EpochError> {
        let (head, note) = detail
            .split_once("\n\n")
            .ok_or_else(|| EpochError("no previous checkpoint note".into()))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(HEADER) {
            return Err(EpochError(format!("does not begin with \"{HEADER}\"")));
        }
        let mut field = |name: &str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(": "))
                .map(str::to_owned)
                .ok_or_else(|| EpochError(format!("no \"{name}\" line")))
        };
        let origin = field("previous origin")?;
        let size = field("previous size")?;
        let root = field("previous root")?;
        let held = field("held")?;
        let held: u64 = held
            .parse()
            .map_err(|_| EpochError("\"held\" is not a number".into()))?;
        let statement = EpochStatement::new(note, held)?;
        let p = &statement.previous;
        if p.origin != origin || p.size.to_string() != size || b64::encode(&p.root) != root {
            return Err(EpochError(
                "the previous checkpoint's note does not carry the origin, size and root stated"
                    .into(),
            ));
        }
        Ok(statement)
    }

    /// Checks the previous note's signature with this log's public key
    /// under the previous origin (the usual case: the same signing key,
    /// a new origin). `Ok(false)`: not signed by this key (a new key was
    /// taken; check it with the previous verifier key); an error: signed
    /// by it, but the signature does not verify.
    pub fn signed_by_same_key(&self, key: &NoteVerifier) -> Result<bool, EpochError> {
        let previous = key.renamed(&self.previous.origin);
        match previous.verify(&self.note) {
            Ok(c) if c == self.previous => Ok(true),
            Ok(_) => Err(EpochError(
                "the previous checkpoint's signature covers another checkpoint".into(),
            )),
            Err(crate::checkpoint::CheckpointError::NotSigned(_)) => Ok(false),
            Err(e) => Err(EpochError(format!("the previous checkpoint: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::NoteSigner;
    use ed25519_dalek::SigningKey;

    fn signer(origin: &str) -> NoteSigner {
        NoteSigner::new(origin, SigningKey::from_bytes(&[7; 32]))
    }

    fn note(size: u64) -> String {
        signer("semel.test/audit").sign(&Checkpoint {
            origin: "semel.test/audit".into(),
            size,
            root: [9; 32],
        })
    }

    #[test]
    fn a_statement_round_trips_and_names_the_lost_range() {
        let s = EpochStatement::new(&note(1042), 1030).expect("statement");
        assert_eq!(s.lost(), 1030..1042);
        let again = EpochStatement::parse(&s.to_detail()).expect("parse");
        assert_eq!(again, s);
        let key =
            NoteVerifier::parse(&signer("semel.test/audit/epoch-2").verifier_key()).expect("key");
        assert_eq!(again.signed_by_same_key(&key), Ok(true));
        let other = NoteVerifier::parse(
            &NoteSigner::new("semel.test/audit/epoch-2", SigningKey::from_bytes(&[8; 32]))
                .verifier_key(),
        )
        .expect("key");
        assert_eq!(again.signed_by_same_key(&other), Ok(false));
    }

    #[test]
    fn a_statement_that_loses_nothing_or_disagrees_with_its_note_is_refused() {
        assert!(EpochStatement::new(&note(10), 10).is_err());
        assert!(EpochStatement::new(&note(10), 11).is_err());
        let s = EpochStatement::new(&note(10), 4).expect("statement");
        let altered = s
            .to_detail()
            .replace("previous size: 10", "previous size: 12");
        assert!(EpochStatement::parse(&altered).is_err());
        let altered = s.to_detail().replace("held: 4", "held: x");
        assert!(EpochStatement::parse(&altered).is_err());
        assert!(EpochStatement::parse("semel new epoch\n").is_err());
    }
}
