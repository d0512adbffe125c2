//! The registry snapshot every call reads: how it is rebuilt from storage
//! and swapped in, and how long it may decide (its freshness).

use super::*;

/// Until when the registry snapshot may decide: one atomic, read by every
/// call. A broker alone on its store (the embedded store: every change
/// passes through it) is always fresh; a broker sharing a database is fresh
/// only within its bound after the last read that confirmed the snapshot.
pub(crate) struct RegistryFreshness {
    base: std::time::Instant,
    /// Microseconds after `base`; `u64::MAX`: always fresh.
    until: std::sync::atomic::AtomicU64,
    /// `None`: always fresh.
    bound: Mutex<Option<Duration>>,
}

impl RegistryFreshness {
    pub(super) fn always() -> Self {
        RegistryFreshness {
            base: std::time::Instant::now(),
            until: std::sync::atomic::AtomicU64::new(u64::MAX),
            bound: Mutex::new(None),
        }
    }

    fn micros(&self, at: std::time::Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_micros()).unwrap_or(u64::MAX)
    }
}

impl Broker {
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Binds the registry snapshot's freshness to `max_staleness` after a
    /// read of the database confirmed it ([`Broker::confirm_registry`]):
    /// for a broker that shares its database with others. Until the first
    /// confirmation, the snapshot is fresh for `max_staleness` from now
    /// (it was read from the database just before).
    pub fn bound_registry_freshness(&self, max_staleness: Duration) {
        let f = &self.registry_freshness;
        *f.bound.lock().unwrap_or_else(|p| p.into_inner()) = Some(max_staleness);
        let until = f.micros(std::time::Instant::now() + max_staleness);
        f.until.store(until, std::sync::atomic::Ordering::Release);
    }

    /// A read of the database that began at `read_at` found the snapshot
    /// current: it may decide until `read_at` plus the bound.
    pub fn confirm_registry(&self, read_at: std::time::Instant) {
        let f = &self.registry_freshness;
        let Some(bound) = *f.bound.lock().unwrap_or_else(|p| p.into_inner()) else {
            return;
        };
        let until = f.micros(read_at + bound);
        f.until
            .fetch_max(until, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether the registry snapshot may decide now (one atomic load and
    /// a clock read: on every call's path).
    pub fn registry_fresh(&self) -> bool {
        let f = &self.registry_freshness;
        let until = f.until.load(std::sync::atomic::Ordering::Acquire);
        until == u64::MAX || f.micros(std::time::Instant::now()) < until
    }

    /// How long the snapshot has gone unconfirmed past its bound, when it
    /// has (for health and the log).
    pub fn registry_stale_for(&self) -> Option<Duration> {
        let f = &self.registry_freshness;
        let until = f.until.load(std::sync::atomic::Ordering::Acquire);
        let now = f.micros(std::time::Instant::now());
        (until != u64::MAX && now >= until).then(|| Duration::from_micros(now - until))
    }

    /// Rebuilds the snapshot from storage. Channels to sources are kept
    /// across reloads when their endpoint did not change.
    pub async fn reload(&self) -> Result<(), ApiError> {
        let ticket = self
            .readings
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let reg = &self.storage.registry;
        let data = RegistryData {
            organisations: reg.organisations().await?,
            datasets: reg.datasets().await?,
            authorisations: reg.authorisations().await?,
            purposes: reg.purposes().await?,
            revoked: reg
                .revoked_certificates()
                .await?
                .into_iter()
                .map(|r| r.id)
                .collect(),
        };
        #[cfg(test)]
        rebuild_tests::after_reading().await;
        let mut installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
        if ticket < *installed {
            // A later reading is in place already.
            return Ok(());
        }
        self.install(data)?;
        *installed = ticket;
        Ok(())
    }

    /// Builds a snapshot from a reading and swaps it in; the caller holds
    /// `installed`.
    pub(super) fn install(&self, data: RegistryData) -> Result<(), ApiError> {
        let organisations = data
            .organisations
            .into_iter()
            .map(|o| (o.kbo, Arc::new(o)))
            .collect();
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let mut routes = BTreeMap::new();
        for dataset in data.datasets {
            let key = (dataset.endpoint.clone(), dataset.source);
            let channel = match channels.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let c = self.channel(&dataset.endpoint, dataset.source)?;
                    channels.insert(key, c.clone());
                    c
                }
            };
            let client = SourceServiceClient::new(channel);
            let guard = self
                .guards
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(dataset.endpoint.clone())
                .or_insert_with(|| Arc::new(SourceGuard::new(&self.sources.limits)))
                .clone();
            routes.insert(
                dataset.name.clone(),
                Arc::new(Route {
                    dataset,
                    client,
                    guard,
                }),
            );
        }
        let mut authorisations = BTreeMap::new();
        let mut capacities = std::collections::BTreeSet::new();
        let mut by_dataset_consumer: HashMap<DatasetName, HashMap<Kbo, Vec<Authorisation>>> =
            HashMap::new();
        for a in data.authorisations {
            by_dataset_consumer
                .entry(a.dataset.clone())
                .or_default()
                .entry(a.consumer)
                .or_default()
                .push(a.clone());
            capacities.extend(a.capacities.iter().cloned());
            authorisations.insert(a.reference.as_str().to_owned(), a);
        }
        let purposes = data
            .purposes
            .into_iter()
            .map(|p| (p.code.as_str().to_owned(), p))
            .collect();
        self.snapshot.store(Arc::new(Snapshot {
            organisations,
            routes,
            authorisations,
            by_dataset_consumer,
            revoked: data.revoked.into_iter().collect(),
            purposes,
            capacities,
        }));
        Ok(())
    }
}

#[cfg(test)]
mod rebuild_tests {
    //! Two snapshot rebuilds at once (a registry change here and one
    //! announced by another broker) must not store the older reading last.

    use super::*;
    use tokio::sync::oneshot;

    type Hook = Box<dyn FnOnce() -> oneshot::Receiver<()> + Send>;
    static HOOK: Mutex<Option<Hook>> = Mutex::new(None);

    /// Called by `reload` between reading the registry and storing it.
    pub(super) async fn after_reading() {
        let hook = HOOK.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(hook) = hook {
            let _ = tokio::time::timeout(Duration::from_millis(500), hook()).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebuild_never_stores_an_older_reading_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(semel_store::Store::open(dir.path()).expect("store"));
        let kbo = Kbo::parse("0566988259").expect("kbo");
        let org = |status| Organisation {
            kbo,
            name: "CPAS".into(),
            roles: [Role::Consumer].into(),
            status,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        store
            .registry()
            .put_organisation(&org(OrganisationStatus::Active))
            .expect("org");
        let tokens = TokenVerifier::load(&crate::tokens::TokenSettings {
            audience: "semel".into(),
            leeway_s: 30,
            issuers: Vec::new(),
        })
        .expect("tokens");
        let broker = Broker::new(
            semel_store::storage(store.clone()),
            SourceSettings {
                tls: Arc::new(
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .expect("versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                ),
                endpoints: Arc::default(),
                deadline: Duration::from_secs(1),
                limits: LimitSettings::default(),
                register_dataset: DatasetName::new("x.register").expect("name"),
                persons: PersonsSettings::default(),
                mutations: Default::default(),
            },
            tokens,
        )
        .await
        .expect("broker");
        // Rebuild A reads the registry (organisation active), then waits
        // until B, which reads after the suspension, has finished.
        let (read_tx, read_rx) = oneshot::channel::<()>();
        let (go_tx, go_rx) = oneshot::channel::<()>();
        *HOOK.lock().expect("hook") = Some(Box::new(move || {
            let _ = read_tx.send(());
            go_rx
        }));
        let a = {
            let broker = broker.clone();
            tokio::spawn(async move { broker.reload().await.map_err(|e| e.message) })
        };
        read_rx.await.expect("A has read");
        store
            .registry()
            .put_organisation(&org(OrganisationStatus::Suspended))
            .expect("suspend");
        broker.reload().await.expect("B reloads");
        let _ = go_tx.send(());
        a.await.expect("A").expect("A reloads");
        assert_eq!(
            broker.snapshot().organisations[&kbo].status,
            OrganisationStatus::Suspended,
            "the suspension the API confirmed was undone by an older rebuild"
        );
    }
}

#[cfg(test)]
mod revocation_tests {
    use super::*;

    fn cert(issuers: Vec<CertificateId>) -> PeerCertificate {
        PeerCertificate {
            kbo: Kbo::parse("0212345668").map_err(|e| e.to_string()),
            fingerprint: CertificateId::sha256_of(&[1; 32]),
            serial: Some(CertificateId::issued_serial_from(&[7; 32], &[0x1f, 0xab])),
            legacy_serial: Some(CertificateId::serial_from_bytes(&[0x1f, 0xab])),
            sha256: [1; 32],
            not_after: i64::MAX,
            issuers,
        }
    }

    fn revoking(ids: &[CertificateId]) -> Snapshot {
        Snapshot {
            revoked: ids.iter().cloned().collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn revocations_reach_intermediates_and_serials_stay_with_their_issuer() {
        let intermediate = CertificateId::sha256_of(&[9; 32]);
        let leaf = cert(vec![intermediate.clone()]);
        assert!(!revoking(&[]).is_revoked(&leaf));
        assert!(revoking(&[CertificateId::sha256_of(&[1; 32])]).is_revoked(&leaf));
        // An intermediate CA revoked by fingerprint: every certificate
        // presented with it is refused.
        assert!(revoking(&[intermediate]).is_revoked(&leaf));
        // A serial from its issuer; the same serial from another issuer is
        // another certificate.
        let own = CertificateId::issued_serial(&"07".repeat(32), "1f:ab").expect("id");
        let other = CertificateId::issued_serial(&"08".repeat(32), "1fab").expect("id");
        assert!(revoking(&[own]).is_revoked(&leaf));
        assert!(!revoking(&[other]).is_revoked(&leaf));
        // A serial recorded without its issuer (older versions) still holds.
        assert!(revoking(&[CertificateId::serial("1fab").expect("id")]).is_revoked(&leaf));
    }
}
