//! The check every sealed row passes before it is honoured (no rule
//! without its entry; see [`semel_core::seal`]): files and consents
//! (`persons.rs`) and the registry's rules (`registry.rs`).

use semel_core::entry_hash;
use semel_core::seal::{EntryRef, RowSealer};
use semel_storage::Appended;

/// The columns read beside a sealed row's value, in this order: the entry
/// it names, its hash, the seal, and that entry's encoding as the log
/// holds it (joined as `e`, from `audit_entries`).
pub(crate) const COLUMNS: &str = "r.audit_sequence, r.audit_hash, r.seal, e.encoding";

/// What a sealed row carries, as read (starting at column `first`).
pub(crate) struct Sealed {
    pub sequence: Option<i64>,
    hash: Option<Vec<u8>>,
    seal: Option<Vec<u8>>,
    encoding: Option<Vec<u8>>,
}

impl Sealed {
    /// The columns as read one by one (from arrays, say).
    pub(crate) fn of(
        sequence: Option<i64>,
        hash: Option<Vec<u8>>,
        seal: Option<Vec<u8>>,
        encoding: Option<Vec<u8>>,
    ) -> Sealed {
        Sealed {
            sequence,
            hash,
            seal,
            encoding,
        }
    }

    pub(crate) fn read(row: &tokio_postgres::Row, first: usize) -> Sealed {
        Sealed {
            sequence: row.get(first),
            hash: row.get(first + 1),
            seal: row.get(first + 2),
            encoding: row.get(first + 3),
        }
    }

    /// Why the row (`row`, its canonical bytes, in `table`) is not
    /// honoured, or `None` when its seal verifies over it and the entry
    /// it names, and that entry is in the log as sealed.
    pub(crate) fn refusal(
        &self,
        sealer: &RowSealer,
        table: &str,
        row: &[u8],
    ) -> Option<&'static str> {
        let (Some(sequence), Some(hash), Some(seal)) = (self.sequence, &self.hash, &self.seal)
        else {
            return Some("it carries no seal (written outside a broker, or its entry failed)");
        };
        let Some(encoding) = &self.encoding else {
            return Some("the audit entry it names is missing");
        };
        let Some(entry) = <[u8; 32]>::try_from(hash.as_slice())
            .ok()
            .zip(u64::try_from(sequence).ok())
            .map(|(hash, sequence)| EntryRef { sequence, hash })
        else {
            return Some("the audit entry it names is malformed");
        };
        if entry_hash(encoding) != entry.hash {
            return Some("the audit entry it names differs from the one it was sealed with");
        }
        (!sealer.verifies(table, row, &entry, seal)).then_some("its seal does not verify")
    }
}

/// Says, at ERROR, that a row was not honoured (never its value: it may
/// name a citizen).
pub(crate) fn report(table: &str, sequence: Option<i64>, why: &str) {
    tracing::error!(
        table,
        audit_sequence = ?sequence,
        "a row was not honoured: {why}; the database holds a row no broker made as it stands (docs/storage-postgresql.md, \"No rule without its entry\")"
    );
}

/// The entry a row is sealed with.
pub(crate) fn entry(at: Appended) -> EntryRef {
    EntryRef {
        sequence: at.sequence,
        hash: at.hash,
    }
}
