//! Signed checkpoints of the audit log, in the C2SP formats
//! (c2sp.org/tlog-checkpoint and c2sp.org/signed-note), so any tool that
//! speaks them can check Semel's log.
//!
//! ```text
//! semel.brussels/audit        origin
//! 1042                        tree size
//! 3q2+7w...=                  root hash, base64
//!                             (empty line)
//! — semel.brussels/audit Ab12...   key hash (4 bytes) and Ed25519 signature, base64
//! ```
//!
//! The signature covers the text above the empty line, newline included.
//! The key hash is the first four bytes of `SHA-256(name || "\n" || 0x01 ||
//! public key)`; a verifier key is written `name+hash(hex)+base64(0x01 ||
//! public key)`.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::Hash;

/// The signature type byte of Ed25519 in signed notes.
const ED25519: u8 = 0x01;
/// The signature type byte of Ed25519 cosignatures (c2sp.org/tlog-cosignature).
const COSIGNATURE_V1: u8 = 0x04;

/// A checkpoint's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// Why a note is not a valid checkpoint signed by the expected key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("the note is malformed: {0}")]
    Malformed(&'static str),
    #[error("no signature by key {0}")]
    NotSigned(String),
    #[error("the signature by key {0} does not verify")]
    BadSignature(String),
    #[error("the verifier key is malformed: {0}")]
    BadKey(&'static str),
}

impl Checkpoint {
    /// The checkpoint body: origin, size and root, one per line.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            b64::encode(&self.root)
        )
    }

    /// The checkpoint a signed note carries, read from its body; the
    /// signatures are not checked (a verifier does that).
    pub fn of_note(note: &str) -> Result<Checkpoint, CheckpointError> {
        let (body, _) = split_note(note)?;
        Checkpoint::parse_body(&body)
    }

    /// Parses a body.
    pub fn parse_body(body: &str) -> Result<Checkpoint, CheckpointError> {
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(CheckpointError::Malformed("no origin"))?;
        let size = lines
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(CheckpointError::Malformed("the tree size is not a number"))?;
        let root = lines
            .next()
            .and_then(b64::decode)
            .and_then(|b| <Hash>::try_from(b.as_slice()).ok())
            .ok_or(CheckpointError::Malformed(
                "the root is not 32 base64 bytes",
            ))?;
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

/// The key that signs checkpoints, and its name (the log's origin).
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    pub fn new(name: &str, key: SigningKey) -> Self {
        NoteSigner {
            name: name.to_owned(),
            key,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key, `name+hash+base64(0x01 || public key)`, to give to
    /// auditors.
    pub fn verifier_key(&self) -> String {
        let public = self.key.verifying_key().to_bytes();
        let mut typed = vec![ED25519];
        typed.extend_from_slice(&public);
        format!(
            "{}+{}+{}",
            self.name,
            hex(&key_hash(&self.name, &public)),
            b64::encode(&typed)
        )
    }

    /// The key that seals rows written by the brokers of this log (see
    /// [`crate::seal`]): derived from the signing key, so every broker of
    /// one log holds it and nobody without the signing key does.
    pub fn row_sealer(&self) -> crate::seal::RowSealer {
        crate::seal::RowSealer::derive(&self.key.to_bytes())
    }

    /// The signed note of a checkpoint.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let body = checkpoint.body();
        let signature = self.key.sign(body.as_bytes()).to_bytes();
        let mut blob = key_hash(&self.name, &self.key.verifying_key().to_bytes()).to_vec();
        blob.extend_from_slice(&signature);
        format!("{body}\n\u{2014} {} {}\n", self.name, b64::encode(&blob))
    }
}

/// A verifier key, parsed.
#[derive(Debug, Clone)]
pub struct NoteVerifier {
    name: String,
    hash: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses `name+hash+base64(0x01 || public key)`.
    pub fn parse(text: &str) -> Result<NoteVerifier, CheckpointError> {
        let (name, hash, key) = parse_vkey(text, ED25519)?;
        Ok(NoteVerifier { name, hash, key })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same public key under another name (another origin signed with
    /// the same key: a log's earlier epoch).
    pub fn renamed(&self, name: &str) -> NoteVerifier {
        NoteVerifier {
            name: name.to_owned(),
            hash: key_hash(name, &self.key.to_bytes()),
            key: self.key,
        }
    }

    /// Checks a signed note and returns its checkpoint. Signatures by other
    /// keys are ignored, as the signed-note format intends.
    pub fn verify(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        let (body, lines) = split_note(note)?;
        for (name, blob) in lines {
            if name != self.name {
                continue;
            }
            if blob.len() != 4 + 64 || blob[..4] != self.hash {
                continue;
            }
            let signature = Signature::from_slice(&blob[4..])
                .map_err(|_| CheckpointError::Malformed("the signature has the wrong length"))?;
            return match self.key.verify(body.as_bytes(), &signature) {
                Ok(()) => Checkpoint::parse_body(&body),
                Err(_) => Err(CheckpointError::BadSignature(self.name.clone())),
            };
        }
        Err(CheckpointError::NotSigned(self.name.clone()))
    }
}

fn key_hash(name: &str, public: &[u8; 32]) -> [u8; 4] {
    typed_key_hash(name, ED25519, public)
}

fn typed_key_hash(name: &str, kind: u8, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([kind]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// Parses a verifier key `name+hash+base64(kind || Ed25519 public key)`.
fn parse_vkey(text: &str, kind: u8) -> Result<(String, [u8; 4], VerifyingKey), CheckpointError> {
    let mut parts = text.trim().splitn(3, '+');
    let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(CheckpointError::BadKey("expected name+hash+key"));
    };
    let typed = b64::decode(key).ok_or(CheckpointError::BadKey("the key is not base64"))?;
    let (&found, public) = typed
        .split_first()
        .ok_or(CheckpointError::BadKey("the key is empty"))?;
    if found != kind {
        return Err(CheckpointError::BadKey(if kind == COSIGNATURE_V1 {
            "not a cosignature/v1 (Ed25519) witness key"
        } else {
            "only Ed25519 keys are supported"
        }));
    }
    let public: [u8; 32] = public
        .try_into()
        .map_err(|_| CheckpointError::BadKey("an Ed25519 key has 32 bytes"))?;
    let key = VerifyingKey::from_bytes(&public)
        .map_err(|_| CheckpointError::BadKey("not an Ed25519 point"))?;
    let expected = typed_key_hash(name, kind, &public);
    if hex(&expected) != hash.to_ascii_lowercase() {
        return Err(CheckpointError::BadKey(
            "the key hash does not match the key",
        ));
    }
    Ok((name.to_owned(), expected, key))
}

/// A signature line: the key's name and the decoded signature blob.
type SignatureLine<'a> = (&'a str, Vec<u8>);

/// The body of a note (newline included) and its signature lines.
fn split_note(note: &str) -> Result<(String, Vec<SignatureLine<'_>>), CheckpointError> {
    let (body, signatures) = note.split_once("\n\n").ok_or(CheckpointError::Malformed(
        "no empty line before the signatures",
    ))?;
    let mut lines = Vec::new();
    for line in signatures.lines() {
        let rest = line
            .strip_prefix("\u{2014} ")
            .ok_or(CheckpointError::Malformed(
                "a signature line does not start with an em dash",
            ))?;
        let (name, blob) = rest.rsplit_once(' ').ok_or(CheckpointError::Malformed(
            "a signature line has no signature",
        ))?;
        let blob =
            b64::decode(blob).ok_or(CheckpointError::Malformed("the signature is not base64"))?;
        lines.push((name, blob));
    }
    Ok((format!("{body}\n"), lines))
}

/// A witness's key: it cosigns checkpoints it has checked are consistent
/// with every one it cosigned before (c2sp.org/tlog-cosignature, Ed25519).
pub struct Cosigner {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cosigner")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Cosigner {
    pub fn new(name: &str, key: SigningKey) -> Self {
        Cosigner {
            name: name.to_owned(),
            key,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The witness's verifier key, `name+hash+base64(0x04 || public key)`.
    pub fn verifier_key(&self) -> String {
        let public = self.key.verifying_key().to_bytes();
        let mut typed = vec![COSIGNATURE_V1];
        typed.extend_from_slice(&public);
        format!(
            "{}+{}+{}",
            self.name,
            hex(&typed_key_hash(&self.name, COSIGNATURE_V1, &public)),
            b64::encode(&typed)
        )
    }

    /// The cosignature line of a checkpoint, made at `time` (seconds since
    /// the epoch), newline included.
    pub fn cosign(&self, checkpoint: &Checkpoint, time: u64) -> String {
        let message = cosigned_message(&checkpoint.body(), time);
        let signature = self.key.sign(message.as_bytes()).to_bytes();
        let mut blob = typed_key_hash(
            &self.name,
            COSIGNATURE_V1,
            &self.key.verifying_key().to_bytes(),
        )
        .to_vec();
        blob.extend_from_slice(&time.to_be_bytes());
        blob.extend_from_slice(&signature);
        format!("\u{2014} {} {}\n", self.name, b64::encode(&blob))
    }
}

fn cosigned_message(body: &str, time: u64) -> String {
    format!("cosignature/v1\ntime {time}\n{body}")
}

/// A witness's verifier key, parsed: checks its cosignatures.
#[derive(Debug, Clone)]
pub struct CosignatureVerifier {
    name: String,
    hash: [u8; 4],
    key: VerifyingKey,
}

impl CosignatureVerifier {
    /// Parses `name+hash+base64(0x04 || public key)`.
    pub fn parse(text: &str) -> Result<CosignatureVerifier, CheckpointError> {
        let (name, hash, key) = parse_vkey(text, COSIGNATURE_V1)?;
        Ok(CosignatureVerifier { name, hash, key })
    }

    /// The witness's Ed25519 public key: the witness itself, whatever name
    /// it was given under.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The time of this witness's cosignature on the note, once checked.
    /// Other signature lines are ignored.
    pub fn verify(&self, note: &str) -> Result<u64, CheckpointError> {
        let (body, lines) = split_note(note)?;
        for (name, blob) in lines {
            if name != self.name || blob.len() != 4 + 8 + 64 || blob[..4] != self.hash {
                continue;
            }
            let mut time = [0u8; 8];
            time.copy_from_slice(&blob[4..12]);
            let time = u64::from_be_bytes(time);
            let signature = Signature::from_slice(&blob[12..])
                .map_err(|_| CheckpointError::Malformed("the signature has the wrong length"))?;
            return match self
                .key
                .verify(cosigned_message(&body, time).as_bytes(), &signature)
            {
                Ok(()) => Ok(time),
                Err(_) => Err(CheckpointError::BadSignature(self.name.clone())),
            };
        }
        Err(CheckpointError::NotSigned(self.name.clone()))
    }
}

/// What a witness answers to `add-checkpoint` (c2sp.org/tlog-witness),
/// short of cosigning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WitnessRefusal {
    /// 400: malformed, or the old size exceeds the checkpoint's.
    BadRequest(String),
    /// 404: the witness does not follow this log.
    UnknownLog,
    /// 403: no signature by the log's key verifies.
    Forbidden,
    /// 409: the old size is not the last one the witness cosigned (given),
    /// or the same size with another root (a fork).
    Conflict(u64),
    /// 422: the consistency proof does not verify.
    BadProof,
}

/// An `add-checkpoint` request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    pub old: u64,
    pub proof: Vec<Hash>,
    /// The signed note, as sent.
    pub note: String,
}

impl AddCheckpoint {
    /// The request body: `old N`, proof lines, an empty line, the note.
    pub fn body(&self) -> String {
        let mut out = format!("old {}\n", self.old);
        for h in &self.proof {
            out.push_str(&b64::encode(h));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.note);
        out
    }

    pub fn parse(text: &str) -> Result<AddCheckpoint, WitnessRefusal> {
        let bad = |m: &str| WitnessRefusal::BadRequest(m.to_owned());
        let (head, note) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no empty line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .filter(|n| *n == "0" || !n.starts_with('0'))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| bad("the first line is not `old <size>`"))?;
        let proof = lines
            .map(|l| {
                b64::decode(l)
                    .and_then(|b| <Hash>::try_from(b.as_slice()).ok())
                    .ok_or_else(|| bad("a proof line is not a base64 hash"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if proof.len() > 63 {
            return Err(bad("more than 63 proof lines"));
        }
        Ok(AddCheckpoint {
            old,
            proof,
            note: note.to_owned(),
        })
    }
}

/// A witness's decision on a checkpoint it has verified the log's signature
/// of, given the last one it cosigned for that log: cosign only a checkpoint
/// proven consistent with it (never a rollback, never a fork).
pub fn witness_decide(
    last: Option<&Checkpoint>,
    old: u64,
    proof: &[Hash],
    new: &Checkpoint,
) -> Result<(), WitnessRefusal> {
    if old > new.size {
        return Err(WitnessRefusal::BadRequest(format!(
            "old size {old} exceeds the checkpoint's size {}",
            new.size
        )));
    }
    let current = last.map_or(0, |c| c.size);
    if old != current {
        return Err(WitnessRefusal::Conflict(current));
    }
    match last {
        None => {
            if !proof.is_empty() {
                return Err(WitnessRefusal::BadProof);
            }
        }
        Some(last) if last.size == new.size => {
            if last.root != new.root || !proof.is_empty() {
                return Err(WitnessRefusal::Conflict(current));
            }
        }
        Some(last) => {
            if !crate::merkle::verify_consistency(last.size, new.size, &last.root, &new.root, proof)
            {
                return Err(WitnessRefusal::BadProof);
            }
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard base64 with padding, as signed notes use.
pub mod b64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const URL_ALPHABET: &[u8; 64] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    /// Standard base64 with padding, as signed notes use.
    pub fn encode(bytes: &[u8]) -> String {
        encode_with(bytes, ALPHABET, true)
    }

    /// Unpadded base64url (RFC 4648 §5), as JOSE uses.
    pub fn encode_url(bytes: &[u8]) -> String {
        encode_with(bytes, URL_ALPHABET, false)
    }

    fn encode_with(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(alphabet[(n >> (18 - 6 * i)) as usize & 63]));
                } else if pad {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(text: &str) -> Option<Vec<u8>> {
        decode_with(text, ALPHABET)
    }

    /// Unpadded (or padded) base64url, as JOSE uses.
    pub fn decode_url(text: &str) -> Option<Vec<u8>> {
        decode_with(text, URL_ALPHABET)
    }

    fn decode_with(text: &str, alphabet: &[u8; 64]) -> Option<Vec<u8>> {
        let text = text.trim_end_matches('=');
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        let mut acc = 0u32;
        let mut bits = 0;
        for c in text.bytes() {
            let v = alphabet.iter().position(|a| *a == c)? as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        (bits < 6 && acc == 0).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> NoteSigner {
        NoteSigner::new("semel.test/audit", SigningKey::from_bytes(&[7; 32]))
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_a_changed_one_does_not() {
        let s = signer();
        let c = Checkpoint {
            origin: "semel.test/audit".into(),
            size: 1042,
            root: [9; 32],
        };
        let note = s.sign(&c);
        let v = NoteVerifier::parse(&s.verifier_key()).expect("key");
        assert_eq!(v.verify(&note), Ok(c));
        let changed = note.replacen("1042", "1043", 1);
        assert_eq!(
            v.verify(&changed),
            Err(CheckpointError::BadSignature("semel.test/audit".into()))
        );
        let other = NoteSigner::new("semel.test/audit", SigningKey::from_bytes(&[8; 32]));
        let v2 = NoteVerifier::parse(&other.verifier_key()).expect("key");
        assert!(v2.verify(&note).is_err());
    }

    #[test]
    fn base64_round_trips() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).collect();
            assert_eq!(b64::decode(&b64::encode(&bytes)), Some(bytes));
        }
        assert_eq!(b64::encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64::encode(b"fo"), "Zm8=");
        assert_eq!(b64::decode("Zm8="), Some(b"fo".to_vec()));
        assert_eq!(b64::decode("Zm*="), None);
    }

    fn witness() -> Cosigner {
        Cosigner::new("witness.test/w1", SigningKey::from_bytes(&[9; 32]))
    }

    fn tree(leaves: u64) -> (Checkpoint, Vec<Hash>) {
        let hashes: Vec<Hash> = (0..leaves).map(|i| [i as u8; 32]).collect();
        let mut range = crate::merkle::CompactRange::new();
        for h in &hashes {
            range.push(*h);
        }
        (
            Checkpoint {
                origin: "semel.test/audit".into(),
                size: leaves,
                root: range.root(),
            },
            hashes,
        )
    }

    #[test]
    fn a_cosignature_verifies_with_its_witness_key_only() {
        let (c, _) = tree(5);
        let note = signer().sign(&c);
        let w = witness();
        let cosigned = format!("{note}{}", w.cosign(&c, 1_700_000_000));
        let v = CosignatureVerifier::parse(&w.verifier_key()).expect("vkey");
        assert_eq!(v.verify(&cosigned), Ok(1_700_000_000));
        // The log's own signature still verifies on the cosigned note.
        let log = NoteVerifier::parse(&signer().verifier_key()).expect("log key");
        assert_eq!(log.verify(&cosigned), Ok(c.clone()));
        // Not cosigned; cosigned by another witness; a changed checkpoint.
        assert!(matches!(
            v.verify(&note),
            Err(CheckpointError::NotSigned(_))
        ));
        let other = Cosigner::new("witness.test/w1", SigningKey::from_bytes(&[8; 32]));
        assert!(v.verify(&format!("{note}{}", other.cosign(&c, 1))).is_err());
        let forged = cosigned.replacen("\n5\n", "\n6\n", 1);
        assert!(v.verify(&forged).is_err());
        // A log key is not a witness key, and the other way round.
        assert!(CosignatureVerifier::parse(&signer().verifier_key()).is_err());
        assert!(NoteVerifier::parse(&w.verifier_key()).is_err());
    }

    #[test]
    fn an_add_checkpoint_body_round_trips() {
        let req = AddCheckpoint {
            old: 3,
            proof: vec![[1; 32], [2; 32]],
            note: signer().sign(&tree(5).0),
        };
        assert_eq!(AddCheckpoint::parse(&req.body()), Ok(req.clone()));
        assert!(AddCheckpoint::parse("old 03\n\nx").is_err());
        assert!(AddCheckpoint::parse("new 3\n\nx").is_err());
        assert!(AddCheckpoint::parse("old 3\nnot a hash\n\nx").is_err());
    }

    #[test]
    fn a_witness_cosigns_growth_and_refuses_rollback_forks_and_bad_proofs() {
        struct Leaves(Vec<Hash>);
        impl crate::merkle::Subtrees for Leaves {
            type Error = std::convert::Infallible;
            fn subtree(&self, start: u64, end: u64) -> Result<Hash, Self::Error> {
                let mut range = crate::merkle::CompactRange::new();
                for h in &self.0[start as usize..end as usize] {
                    range.push(*h);
                }
                Ok(range.root())
            }
        }
        let (c3, _) = tree(3);
        let (c7, leaves) = tree(7);
        let proof = crate::merkle::consistency_proof(&Leaves(leaves), 3, 7).expect("proof");
        // First sight: old 0, no proof.
        assert_eq!(witness_decide(None, 0, &[], &c3), Ok(()));
        assert_eq!(
            witness_decide(None, 3, &proof, &c7),
            Err(WitnessRefusal::Conflict(0)),
            "the client must learn the witness's size"
        );
        // Growth with a valid proof.
        assert_eq!(witness_decide(Some(&c3), 3, &proof, &c7), Ok(()));
        assert_eq!(
            witness_decide(Some(&c3), 3, &proof[1..], &c7),
            Err(WitnessRefusal::BadProof)
        );
        // Rollback: a smaller checkpoint after a larger one.
        assert_eq!(
            witness_decide(Some(&c7), 3, &[], &c3),
            Err(WitnessRefusal::Conflict(7))
        );
        assert!(matches!(
            witness_decide(Some(&c7), 7, &[], &c3),
            Err(WitnessRefusal::BadRequest(_))
        ));
        // A fork: the same size, another root.
        let mut fork = c7.clone();
        fork.root = [0xee; 32];
        assert_eq!(
            witness_decide(Some(&c7), 7, &[], &fork),
            Err(WitnessRefusal::Conflict(7))
        );
        assert_eq!(witness_decide(Some(&c7), 7, &[], &c7), Ok(()));
        // A checkpoint inconsistent with the one cosigned (entries rewritten).
        assert_eq!(
            witness_decide(Some(&c3), 3, &proof, &fork),
            Err(WitnessRefusal::BadProof)
        );
    }
}
