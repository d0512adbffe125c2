//! The Merkle tree and checkpoints, checked against independent
//! implementations: `ct-merkle` (RFC 6962) and `signed_note` (C2SP).

use super::*;
use crate::{CheckpointSettings, Store};
use ct_merkle::mem_backed_tree::MemoryBackedTree;
use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
use semel_core::checkpoint::NoteSigner;
use sha2_oracle::Sha256;

fn settings() -> CheckpointSettings {
    CheckpointSettings {
        signer: NoteSigner::new(
            "semel.test/audit",
            ed25519_dalek::SigningKey::from_bytes(&[5; 32]),
        ),
        every_entries: 10,
        every: std::time::Duration::from_secs(3600),
    }
}

fn record(i: u64) -> AuditRecord {
    super::tests::record(i as u8, None)
}

#[tokio::test(flavor = "current_thread")]
async fn proofs_and_checkpoints_agree_with_independent_implementations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_with(dir.path(), Some(settings())).expect("open");
    for i in 0..23 {
        store.audit().append(record(i)).await.expect("append");
    }
    store.audit().close().expect("close");
    drop(store);
    // Reopen: the tree is read, not rebuilt; then grow it.
    let store = Store::open_with(dir.path(), Some(settings())).expect("reopen");
    for i in 23..57 {
        store.audit().append(record(i)).await.expect("append");
    }
    let log = store.audit();
    let size = log.head().0;
    assert_eq!(size, 57);

    let mut oracle: MemoryBackedTree<Sha256, Vec<u8>> = MemoryBackedTree::new();
    let mut roots = Vec::new();
    for seq in 0..size {
        oracle.push(log.read_sequence(seq).expect("entry").entry.to_bytes());
        let root = log.root(seq + 1).expect("root");
        assert_eq!(
            oracle.root().as_bytes().as_slice(),
            root.as_slice(),
            "root of {}",
            seq + 1
        );
        roots.push(RootHash::<Sha256>::new(root.into(), seq + 1));
    }
    for (seq, n) in [
        (0, 1),
        (0, 57),
        (13, 14),
        (31, 32),
        (32, 57),
        (56, 57),
        (40, 50),
    ] {
        let (stored, proof) = log.inclusion_proof(seq, n).expect("proof");
        let flat: Vec<u8> = proof.iter().flatten().copied().collect();
        roots[n as usize - 1]
            .verify_inclusion(
                &stored.entry.to_bytes(),
                seq,
                &InclusionProof::<Sha256>::from_bytes(flat),
            )
            .unwrap_or_else(|e| panic!("inclusion {seq} in {n}: {e:?}"));
    }
    for (old, new) in [(1, 57), (7, 8), (16, 57), (23, 57), (30, 31), (57, 57)] {
        let proof = log.consistency_proof(old, new).expect("proof");
        let flat: Vec<u8> = proof.iter().flatten().copied().collect();
        roots[new as usize - 1]
            .verify_consistency(
                &roots[old as usize - 1],
                &ConsistencyProof::<Sha256>::try_from_bytes(flat).expect("proof bytes"),
            )
            .unwrap_or_else(|e| panic!("consistency {old} to {new}: {e:?}"));
    }
    assert!(matches!(
        log.inclusion_proof(57, 57),
        Err(StoreError::OutOfRange(_))
    ));
    assert!(matches!(log.root(58), Err(StoreError::OutOfRange(_))));

    // Checkpoints: signed notes any C2SP tool can check.
    log.close().expect("close");
    let checkpoints = log.checkpoints().expect("checkpoints");
    assert!(checkpoints.len() >= 4, "{}", checkpoints.len());
    assert_eq!(
        checkpoints.last().map(|c| c.checkpoint.size),
        Some(57),
        "a final checkpoint at close"
    );
    let verifier =
        signed_note::StandardVerifier::new(log.verifier_key().expect("key")).expect("verifier key");
    let known = signed_note::VerifierList::new(vec![Box::new(verifier)]);
    let mut previous = 0;
    for c in &checkpoints {
        let note = signed_note::Note::from_bytes(c.note.as_bytes()).expect("a signed note");
        note.verify(&known).expect("signature verifies");
        assert!(c.checkpoint.size > previous, "checkpoints grow");
        previous = c.checkpoint.size;
        assert_eq!(
            roots[c.checkpoint.size as usize - 1].as_bytes().as_slice(),
            c.checkpoint.root.as_slice()
        );
    }
}
