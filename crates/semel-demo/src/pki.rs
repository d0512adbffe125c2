//! A development PKI: a CA, a certificate for the broker, and one for each
//! demo organisation, carrying its enterprise number the way European
//! organisation certificates do (ETSI EN 319 412-1 organizationIdentifier
//! `NTRBE-<KBO>`, OID 2.5.4.97).
//!
//! For development and tests only: keys are written unencrypted.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use semel_core::Kbo;
use time::{Duration, OffsetDateTime};

/// OID of organizationIdentifier (ETSI EN 319 412-1).
pub const ORGANIZATION_IDENTIFIER_OID: [u64; 4] = [2, 5, 4, 97];

/// Why the PKI could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generate a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// How long the development CA's revocation list is valid: the broker
/// refuses the CA's certificates once it has expired, and
/// [`DevPki::ensure`] signs it again well before.
pub const CRL_VALIDITY: Duration = Duration::days(90);

/// File names of one certificate and its key.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The development PKI in `<dir>`.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub dir: PathBuf,
}

/// Someone to issue a certificate to.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    /// File stem, e.g. the enterprise number or "broker".
    pub file_stem: &'a str,
    pub kbo: Kbo,
    pub name: &'a str,
}

impl DevPki {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The CA's certificate revocation list (PEM), which `tls.client_crls`
    /// and `sources.crls` may name.
    pub fn crl(&self) -> PathBuf {
        self.dir.join("ca.crl")
    }

    /// The serial numbers the CA has revoked (hex, one a line): the CRL is
    /// signed again from this list.
    fn revoked_serials(&self) -> PathBuf {
        self.dir.join("ca.revoked")
    }

    /// Revokes the certificate of this CA with this serial number (its
    /// DER bytes): the serial joins the CRL, which is signed again. Returns
    /// the CRL's path; a broker that loads it refuses the certificate once
    /// it reloads.
    pub fn revoke(&self, serial: &[u8]) -> Result<PathBuf, PkiError> {
        let hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
        let mut serials = self.read_revoked()?;
        if !serials.contains(&hex) {
            serials.push(hex);
            write(&self.revoked_serials(), &(serials.join("\n") + "\n"))?;
        }
        self.sign_crl(OffsetDateTime::now_utc() + CRL_VALIDITY)
    }

    fn read_revoked(&self) -> Result<Vec<String>, PkiError> {
        match fs::read_to_string(self.revoked_serials()) {
            Ok(text) => Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(PkiError::Io {
                path: self.revoked_serials(),
                source,
            }),
        }
    }

    /// Signs the CRL again, listing every revoked serial, valid until
    /// `next_update` (tests of an expired CRL pass a time in the past).
    pub fn sign_crl(&self, next_update: OffsetDateTime) -> Result<PathBuf, PkiError> {
        let read =
            |p: PathBuf| fs::read_to_string(&p).map_err(|source| PkiError::Io { path: p, source });
        let key = KeyPair::from_pem(&read(self.dir.join("ca.key"))?)?;
        let issuer = Issuer::from_ca_cert_pem(&read(self.ca_cert())?, key)?;
        let now = OffsetDateTime::now_utc();
        let revoked_certs = self
            .read_revoked()?
            .iter()
            .map(|hex| {
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| {
                        PkiError::Invalid(format!(
                            "{}: {hex:?} is not a hex serial number",
                            self.revoked_serials().display()
                        ))
                    })?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        // The CRL number must grow with each list: the time does.
        let number = (now.unix_timestamp_nanos() as u64).to_be_bytes();
        let this_update = (now - Duration::minutes(5)).min(next_update - Duration::seconds(1));
        let crl = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)?;
        write(&self.crl(), &crl.pem()?)?;
        Ok(self.crl())
    }

    /// Signs an empty CRL if there is none, and signs it again when it
    /// is older than a third of its validity, so a demo that runs now and
    /// then never meets an expired list.
    fn ensure_crl(&self) -> Result<(), PkiError> {
        let fresh = fs::metadata(self.crl())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < CRL_VALIDITY.unsigned_abs() / 3);
        if !fresh {
            self.sign_crl(OffsetDateTime::now_utc() + CRL_VALIDITY)?;
        }
        Ok(())
    }

    /// The files of the certificate issued to `file_stem`.
    pub fn files(&self, file_stem: &str) -> CertFiles {
        CertFiles {
            cert: self.dir.join(format!("{file_stem}.crt")),
            key: self.dir.join(format!("{file_stem}.key")),
        }
    }

    /// Creates the CA and every missing certificate in `dir`. An existing CA
    /// is kept only if every requested certificate exists too; otherwise
    /// everything is issued again, so the files always belong together.
    pub fn ensure(dir: &Path, subjects: &[Subject<'_>]) -> Result<DevPki, PkiError> {
        let pki = DevPki {
            dir: dir.to_path_buf(),
        };
        let complete = pki.ca_cert().exists()
            && subjects.iter().all(|s| {
                let f = pki.files(s.file_stem);
                f.cert.exists() && f.key.exists()
            });
        if complete {
            pki.ensure_crl()?;
            return Ok(pki);
        }
        fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let now = OffsetDateTime::now_utc();
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        // Each CA its own name: CRLs are matched to their CA by name, so two
        // development CAs in one bundle (a CA rotation) must not share one.
        let tag: String = ca_key
            .public_key_raw()
            .iter()
            .skip(1)
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        ca.distinguished_name = dn(&format!("Semel development CA {tag}"), None);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.not_before = now - Duration::days(1);
        ca.not_after = now + Duration::days(3650);
        let ca_cert = ca.self_signed(&ca_key)?;
        write(&pki.ca_cert(), &ca_cert.pem())?;
        write(&dir.join("ca.key"), &ca_key.serialize_pem())?;
        let issuer = Issuer::new(ca, ca_key);
        for s in subjects {
            issue(
                &pki,
                &issuer,
                s,
                now,
                now + Duration::days(825),
                local_names()?,
            )?;
        }
        // A new CA revokes nothing yet: the old CA's list goes with it.
        let _ = fs::remove_file(pki.revoked_serials());
        pki.sign_crl(now + CRL_VALIDITY)?;
        Ok(pki)
    }

    /// Issues one more certificate with the existing CA (`ca.crt`, `ca.key`).
    pub fn issue(&self, subject: &Subject<'_>) -> Result<CertFiles, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.issue_until(subject, now + Duration::days(825))
    }

    /// Issues a certificate valid until `not_after` (tests of expiry).
    pub fn issue_until(
        &self,
        subject: &Subject<'_>,
        not_after: OffsetDateTime,
    ) -> Result<CertFiles, PkiError> {
        self.issue_with(subject, not_after, None)
    }

    /// Issues a certificate that names only these DNS names, as a
    /// production certificate does: no `localhost`, no IP address. Probes
    /// of such a broker must say which name they expect.
    pub fn issue_for_names(
        &self,
        subject: &Subject<'_>,
        dns_names: &[String],
    ) -> Result<CertFiles, PkiError> {
        let not_after = OffsetDateTime::now_utc() + Duration::days(825);
        self.issue_with(subject, not_after, Some(dns_names))
    }

    fn issue_with(
        &self,
        subject: &Subject<'_>,
        not_after: OffsetDateTime,
        dns_names: Option<&[String]>,
    ) -> Result<CertFiles, PkiError> {
        let read =
            |p: PathBuf| fs::read_to_string(&p).map_err(|source| PkiError::Io { path: p, source });
        let key = KeyPair::from_pem(&read(self.dir.join("ca.key"))?)?;
        let issuer = Issuer::from_ca_cert_pem(&read(self.ca_cert())?, key)?;
        let names = match dns_names {
            Some(names) => names
                .iter()
                .map(|n| Ok(SanType::DnsName(n.clone().try_into()?)))
                .collect::<Result<Vec<_>, rcgen::Error>>()?,
            None => local_names()?,
        };
        issue(
            self,
            &issuer,
            subject,
            OffsetDateTime::now_utc(),
            not_after,
            names,
        )
    }
}

/// The names of a development certificate: `localhost` and 127.0.0.1.
fn local_names() -> Result<Vec<SanType>, rcgen::Error> {
    Ok(vec![
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress([127, 0, 0, 1].into()),
    ])
}

fn issue(
    pki: &DevPki,
    issuer: &Issuer<'_, KeyPair>,
    s: &Subject<'_>,
    now: OffsetDateTime,
    not_after: OffsetDateTime,
    names: Vec<SanType>,
) -> Result<CertFiles, PkiError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(s.name, Some(s.kbo));
    p.subject_alt_names = names;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    // A random serial: certificates issued in the same second must differ.
    let serial = KeyPair::generate()?
        .public_key_raw()
        .iter()
        .skip(1)
        .take(16)
        .copied()
        .collect::<Vec<u8>>();
    let mut serial = serial;
    serial[0] &= 0x7f;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    p.not_before = now - Duration::days(1);
    p.not_after = not_after;
    let cert = p.signed_by(&key, issuer)?;
    let files = pki.files(s.file_stem);
    write(&files.cert, &cert.pem())?;
    write(&files.key, &key.serialize_pem())?;
    Ok(files)
}

fn dn(name: &str, kbo: Option<Kbo>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "BE");
    dn.push(DnType::OrganizationName, name);
    dn.push(DnType::CommonName, name);
    if let Some(kbo) = kbo {
        dn.push(
            DnType::CustomDnType(ORGANIZATION_IDENTIFIER_OID.to_vec()),
            DnValue::Utf8String(format!("NTRBE-{}", kbo.as_str())),
        );
    }
    dn
}

fn write(path: &Path, contents: &str) -> Result<(), PkiError> {
    fs::write(path, contents).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    #[cfg(unix)]
    if path.extension().is_some_and(|e| e == "key") {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
            PkiError::Io {
                path: path.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(())
}
