//! Ed25519 private keys as files: PKCS#8 `PRIVATE KEY` PEM in the form of
//! RFC 8410 (version 1, the 32-byte seed, no public key), which OpenSSL 3
//! (`openssl pkey`), Python `cryptography` and HSM import tools read.
//!
//! Files written by earlier versions (PKCS#8 version 2, with the public key)
//! are still read.

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, KeypairBytes};

/// The DER encoding of an RFC 8410 private key before its 32-byte seed:
/// `SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING {
/// OCTET STRING (32) } }`.
pub const RFC8410_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// `key` as a PEM `PRIVATE KEY` (RFC 8410).
pub fn ed25519_to_pem(key: &SigningKey) -> String {
    let bytes = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    // Encoding 32 bytes into a fixed structure cannot fail.
    bytes
        .to_pkcs8_pem(LineEnding::LF)
        .map(|pem| String::clone(&pem))
        .unwrap_or_default()
}

/// Reads an Ed25519 key from a PEM `PRIVATE KEY`, version 1 or 2.
pub fn ed25519_from_pem(pem: &str) -> Result<SigningKey, String> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::spki::der::pem::PemLabel;

    #[test]
    fn keys_are_written_as_rfc_8410_and_read_back() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let pem = ed25519_to_pem(&key);
        let (label, der) =
            ed25519_dalek::pkcs8::spki::der::pem::decode_vec(pem.as_bytes()).expect("pem");
        assert_eq!(label, ed25519_dalek::pkcs8::PrivateKeyInfo::PEM_LABEL);
        // Byte for byte what RFC 8410 section 10.3 shows: version 0, the
        // algorithm without parameters, the seed, and nothing else.
        assert_eq!(der.len(), 48);
        assert_eq!(der[..16], RFC8410_PREFIX);
        assert_eq!(der[16..], [7; 32]);
        assert_eq!(
            ed25519_from_pem(&pem).expect("read").to_bytes(),
            key.to_bytes()
        );
    }

    #[test]
    fn version_2_files_of_earlier_releases_are_read() {
        // What earlier releases wrote (ed25519-dalek's default: version 2,
        // with the public key).
        let key = SigningKey::from_bytes(&[9; 32]);
        let old = key.to_pkcs8_pem(LineEnding::LF).expect("v2");
        let (_, der) =
            ed25519_dalek::pkcs8::spki::der::pem::decode_vec(old.as_bytes()).expect("pem");
        assert_eq!(der[4], 0x01, "version 2 (v2 = 1)");
        assert_eq!(
            ed25519_from_pem(&old).expect("read").to_bytes(),
            key.to_bytes()
        );
        // RFC 8410's example key (section 10.3).
        let rfc = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        assert!(ed25519_from_pem(rfc).is_ok());
    }
}
