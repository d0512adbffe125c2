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
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CheckpointError::BadKey("expected name+hash+key"));
        };
        let typed = b64::decode(key).ok_or(CheckpointError::BadKey("the key is not base64"))?;
        let (&kind, public) = typed
            .split_first()
            .ok_or(CheckpointError::BadKey("the key is empty"))?;
        if kind != ED25519 {
            return Err(CheckpointError::BadKey("only Ed25519 keys are supported"));
        }
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| CheckpointError::BadKey("an Ed25519 key has 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|_| CheckpointError::BadKey("not an Ed25519 point"))?;
        let expected = key_hash(name, &public);
        if hex(&expected) != hash.to_ascii_lowercase() {
            return Err(CheckpointError::BadKey(
                "the key hash does not match the key",
            ));
        }
        Ok(NoteVerifier {
            name: name.to_owned(),
            hash: expected,
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks a signed note and returns its checkpoint. Signatures by other
    /// keys are ignored, as the signed-note format intends.
    pub fn verify(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        let (body, signatures) = note.split_once("\n\n").ok_or(CheckpointError::Malformed(
            "no empty line before the signatures",
        ))?;
        let body = format!("{body}\n");
        for line in signatures.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(CheckpointError::Malformed(
                    "a signature line does not start with an em dash",
                ));
            };
            let Some((name, blob)) = rest.rsplit_once(' ') else {
                return Err(CheckpointError::Malformed(
                    "a signature line has no signature",
                ));
            };
            if name != self.name {
                continue;
            }
            let blob = b64::decode(blob)
                .ok_or(CheckpointError::Malformed("the signature is not base64"))?;
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
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
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
}
