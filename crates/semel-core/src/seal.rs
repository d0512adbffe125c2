//! Seals on rows that decide lookups: no rule without its entry.
//!
//! A row written by a broker into a store that others administer (a
//! person's file, a consent on PostgreSQL) carries the sequence and hash of
//! the audit entry that recorded its change, and a seal: an HMAC-SHA256,
//! under a key derived from the log's signing key, over what the row says,
//! which table it is in, and that entry. A row inserted or edited by SQL
//! has no seal that verifies (the key never reaches the database), and a
//! row whose entry was deleted or rewritten no longer matches it; either
//! way the row is not honoured. The seal proves a broker wrote the row
//! after recording its entry; the log's own proofs (chain, tree,
//! checkpoints, witnesses) keep the entry.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Hash;

type HmacSha256 = Hmac<Sha256>;

/// The key that seals rows; the same on every broker of one log.
#[derive(Clone)]
pub struct RowSealer {
    key: [u8; 32],
}

impl std::fmt::Debug for RowSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowSealer").finish_non_exhaustive()
    }
}

/// The audit entry a row names as the one that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef {
    pub sequence: u64,
    pub hash: Hash,
}

impl RowSealer {
    /// Derives the sealing key from a signing key's secret (domain
    /// separated, so a seal is never a signature of anything else).
    pub fn derive(secret: &[u8; 32]) -> RowSealer {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(b"semel row seal v1");
        RowSealer {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self, table: &str, row: &[u8], entry: &EntryRef) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        // Lengths first: no two (table, row) pairs give the same input.
        mac.update(&(table.len() as u64).to_be_bytes());
        mac.update(table.as_bytes());
        mac.update(&(row.len() as u64).to_be_bytes());
        mac.update(row);
        mac.update(&entry.sequence.to_be_bytes());
        mac.update(&entry.hash);
        mac
    }

    /// The seal of `row` (its canonical bytes) in `table`, made by `entry`.
    pub fn seal(&self, table: &str, row: &[u8], entry: &EntryRef) -> [u8; 32] {
        self.mac(table, row, entry).finalize().into_bytes().into()
    }

    /// Whether `seal` is the seal of `row` in `table` made by `entry`
    /// (compared in constant time).
    pub fn verifies(&self, table: &str, row: &[u8], entry: &EntryRef, seal: &[u8]) -> bool {
        self.mac(table, row, entry).verify_slice(seal).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_binds_the_row_its_table_and_its_entry() {
        let sealer = RowSealer::derive(&[7; 32]);
        let entry = EntryRef {
            sequence: 42,
            hash: [1; 32],
        };
        let seal = sealer.seal("person_files", b"{\"id\":\"a\"}", &entry);
        assert!(sealer.verifies("person_files", b"{\"id\":\"a\"}", &entry, &seal));
        assert!(!sealer.verifies("person_files", b"{\"id\":\"b\"}", &entry, &seal));
        assert!(!sealer.verifies("consents", b"{\"id\":\"a\"}", &entry, &seal));
        let other = EntryRef {
            sequence: 43,
            ..entry
        };
        assert!(!sealer.verifies("person_files", b"{\"id\":\"a\"}", &other, &seal));
        let rewritten = EntryRef {
            hash: [2; 32],
            ..entry
        };
        assert!(!sealer.verifies("person_files", b"{\"id\":\"a\"}", &rewritten, &seal));
        // Another log's key seals differently.
        let stranger = RowSealer::derive(&[8; 32]);
        assert!(!stranger.verifies("person_files", b"{\"id\":\"a\"}", &entry, &seal));
        assert!(!sealer.verifies("person_files", b"{\"id\":\"a\"}", &entry, &seal[..31]));
    }
}
