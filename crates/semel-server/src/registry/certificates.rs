//! Revoked certificates: the operator revokes a certificate, by fingerprint
//! or serial number, and lists those revoked.

use super::*;

/// `sha256:abcd…` as `sha256:ab:cd:…`.
fn colon_pairs(key: &str) -> String {
    let (kind, hex) = key.split_once(':').unwrap_or(("", key));
    let pairs: Vec<String> = hex
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!("{kind}:{}", pairs.join(":"))
}

fn revocation_from_proto(
    r: proto::RevokeCertificateRequest,
) -> Result<RevokedCertificate, ApiError> {
    let proto::RevokeCertificateRequest {
        sha256_fingerprint,
        serial_number,
        reason,
        issuer_name_sha256,
    } = r;
    let id = match (sha256_fingerprint.is_empty(), serial_number.is_empty()) {
        (false, true) => CertificateId::sha256(&sha256_fingerprint).map_err(|e| {
            ApiError::invalid(
                "sha256_fingerprint",
                "INVALID_ARGUMENT",
                format!("sha256_fingerprint: {e}"),
            )
        })?,
        (true, false) if issuer_name_sha256.trim().is_empty() => {
            return Err(ApiError::invalid(
                "issuer_name_sha256",
                "INVALID_ARGUMENT",
                "a serial number is unique per issuer only: give issuer_name_sha256 too (semel pki fingerprint prints it)",
            ));
        }
        (true, false) => CertificateId::issued_serial(&issuer_name_sha256, &serial_number)
            .map_err(|e| {
                ApiError::invalid(
                    "serial_number",
                    "INVALID_ARGUMENT",
                    format!("serial_number: {e}"),
                )
            })?,
        _ => {
            return Err(ApiError::invalid(
                "sha256_fingerprint",
                "INVALID_ARGUMENT",
                "give exactly one of sha256_fingerprint and serial_number",
            ));
        }
    };
    let reason = reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > 256 {
        return Err(ApiError::invalid(
            "reason",
            "INVALID_ARGUMENT",
            "reason is required, at most 256 characters",
        ));
    }
    Ok(RevokedCertificate {
        id,
        reason: semel_core::redact_national_numbers(&reason).into_owned(),
        revoked_at: OffsetDateTime::now_utc(),
    })
}

fn revoked_to_proto(r: &RevokedCertificate) -> proto::RevokedCertificate {
    let (sha256_fingerprint, serial_number, issuer_name_sha256) = match &r.id {
        CertificateId::Sha256(h) => (h.clone(), String::new(), String::new()),
        CertificateId::Serial(h) => (String::new(), h.clone(), String::new()),
        CertificateId::IssuedSerial { issuer, serial } => {
            (String::new(), serial.clone(), issuer.clone())
        }
    };
    proto::RevokedCertificate {
        sha256_fingerprint,
        serial_number,
        issuer_name_sha256,
        reason: r.reason.clone(),
        revoked_at: Some(timestamp_micros(
            (r.revoked_at.unix_timestamp_nanos() / 1000) as i64,
        )),
    }
}

impl RegistryService {
    pub(super) async fn revoke_certificate(
        &self,
        req: Request<proto::RevokeCertificateRequest>,
    ) -> Result<Response<proto::RevokeCertificateResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let _guard = self.broker.admin.lock().await;
        let (stored, _) = self
            .broker
            .audited(&caller, async |c: &mut Change| {
                let revoked = revocation_from_proto(req.into_inner())?;
                // Hex in pairs: a long run of digits in a fingerprint would
                // be masked as a national number.
                c.detail = format!(
                    "certificate {} revoked{}",
                    colon_pairs(&revoked.id.key()),
                    because(&revoked.reason)
                );
                self.apply(c, move |reg| async move {
                    // Revoking again keeps the first record, and writes
                    // nothing.
                    let first = async |reg: &dyn RegistryStore| -> Result<_, ApiError> {
                        Ok(reg
                            .revoked_certificates()
                            .await?
                            .into_iter()
                            .find(|r| r.id == revoked.id))
                    };
                    if let Some(stored) = first(&*reg).await? {
                        return Ok((stored, None));
                    }
                    // Staged like any rule: in force once its entry is
                    // durable, sealed with it where the store seals.
                    match reg
                        .stage(&[RegistryWrite::Revocation {
                            after: Box::new(revoked.clone()),
                        }])
                        .await
                    {
                        Ok(staged) => Ok((revoked, Some(staged))),
                        // Revoked meanwhile through another broker: that
                        // first record stands.
                        Err(semel_storage::StorageError::Conflict(m)) => {
                            match first(&*reg).await? {
                                Some(stored) => Ok((stored, None)),
                                None => Err(semel_storage::StorageError::Conflict(m).into()),
                            }
                        }
                        Err(e) => Err(e.into()),
                    }
                })
                .await
            })
            .await?;
        tracing::warn!(certificate = %stored.id.key(), by = caller.org.kbo.as_str(), "certificate revoked");
        Ok(Response::new(proto::RevokeCertificateResponse {
            revoked: Some(revoked_to_proto(&stored)),
        }))
    }

    pub(super) async fn list_revoked_certificates(
        &self,
        req: Request<proto::ListRevokedCertificatesRequest>,
    ) -> Result<Response<proto::ListRevokedCertificatesResponse>, Status> {
        self.broker.admit(&req).await?;
        let mut revoked = self
            .broker
            .storage()
            .registry
            .revoked_certificates()
            .await
            .map_err(ApiError::from)?;
        revoked.sort_by_key(|r| std::cmp::Reverse(r.revoked_at));
        Ok(Response::new(proto::ListRevokedCertificatesResponse {
            revoked: revoked.iter().map(revoked_to_proto).collect(),
        }))
    }
}
