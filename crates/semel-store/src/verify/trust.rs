//! What an auditor brings to a verification: checkpoints seen before and
//! the witnesses whose cosignatures they must carry.

use semel_core::checkpoint::{Checkpoint, NoteVerifier};

use super::VerifyFailure;

/// What an auditor brings to a verification: checkpoints seen before (from
/// the API, a witness, a previous audit) and the witnesses whose
/// cosignatures they must carry.
#[derive(Debug, Default)]
pub struct TrustPolicy {
    /// Signed notes, cosignature lines included.
    pub trusted: Vec<String>,
    pub witnesses: Vec<semel_core::checkpoint::CosignatureVerifier>,
    /// How many of `witnesses` must have cosigned each trusted checkpoint.
    pub quorum: usize,
}

impl TrustPolicy {
    /// The trusted checkpoints, each checked: signed by the log's key and
    /// cosigned by at least `quorum` of the witnesses.
    pub(super) fn checkpoints(&self, key: &NoteVerifier) -> Result<Vec<Checkpoint>, VerifyFailure> {
        self.trusted
            .iter()
            .map(|note| {
                let size = first_number(note);
                let c = key.verify(note).map_err(|e| VerifyFailure::Checkpoint {
                    size,
                    why: format!("the trusted checkpoint is not the log's: {e}"),
                })?;
                self.cosigned(note, size, "the trusted checkpoint")?;
                Ok(c)
            })
            .collect()
    }

    /// Whether a note carries the cosignatures of `quorum` witnesses.
    pub(super) fn cosigned(&self, note: &str, size: u64, what: &str) -> Result<(), VerifyFailure> {
        // One witness counts once, however often its key was given (under
        // one name or several).
        let cosigned = self
            .witnesses
            .iter()
            .filter(|w| w.verify(note).is_ok())
            .map(|w| w.public_key())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if cosigned < self.quorum {
            return Err(VerifyFailure::Checkpoint {
                size,
                why: format!(
                    "{what} carries {cosigned} valid cosignatures of the {} witnesses required",
                    self.quorum
                ),
            });
        }
        Ok(())
    }
}

/// The size a signed note states (its second line; 0 when it states none).
pub(super) fn first_number(note: &str) -> u64 {
    note.lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
}
