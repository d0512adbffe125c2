//! Starting a demo, connecting as an organisation, and reading errors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use semel_client::{AuthChannel, with_token};
use semel_core::UserRole;
use semel_demo::issuer::{DEV_AUDIENCE, DevIssuer, TokenRequest};
use semel_demo::pki::{DevPki, Subject};
use semel_demo_stack::{Demo, DemoOptions};
use semel_server::proto::{
    self, audit_service_client::AuditServiceClient, lookup_service_client::LookupServiceClient,
    registry_service_client::RegistryServiceClient,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt;

pub const ANDERLECHT: &str = "cpas-anderlecht";
pub const BRUXELLES_CPAS: &str = "cpas-bruxelles";
pub const SCHAERBEEK: &str = "commune-schaerbeek";
pub const VILLE: &str = "ville-bruxelles";
pub const OPERATOR: &str = "operator";
/// Karim, of the primer's test vectors, in the demo population.
pub const KARIM: &str = "93051822361";
pub const JAN: &str = "85073003328";

pub struct TestDemo {
    pub demo: Option<Demo>,
    pub dir: tempfile::TempDir,
    /// The demo's PostgreSQL database, when the suite runs on PostgreSQL
    /// (dropped after the demo, which is declared first).
    pub db: Option<semel_postgres::testing::TestDatabase>,
}

/// Whether this run of the suite is on PostgreSQL: the same tests are
/// built twice, as `e2e` (the embedded store) and `e2e_postgresql`.
pub fn on_postgresql() -> bool {
    env!("CARGO_CRATE_NAME") == "e2e_postgresql"
}

/// The demo's options for a test: port 0, a small population, and on
/// PostgreSQL a fresh database of the test's own.
pub async fn demo_options(
    dir: &std::path::Path,
) -> (DemoOptions, Option<semel_postgres::testing::TestDatabase>) {
    let mut opts = DemoOptions::new(dir);
    opts.listen = ([127, 0, 0, 1], 0).into();
    opts.http_listen = Some(([127, 0, 0, 1], 0).into());
    opts.population = 2_000;
    // The suite calls the broker hundreds of times a second from a few
    // organisations (every RPC with every role); the budgets per
    // organisation are tested where a test sets them (limits.rs,
    // rpc_limits.rs).
    opts.limits = opts.limits.without_organisation_budgets();
    let mut db = None;
    if on_postgresql() {
        let found = semel_postgres::testing::TestDatabase::start("e2e").await;
        // Without PostgreSQL (and without SEMEL_REQUIRE_POSTGRES) the
        // suite cannot run on it: say so once per test, loudly.
        let found = found.unwrap_or_else(|| {
            panic!("the e2e_postgresql suite needs PostgreSQL; see the skip message above")
        });
        opts.postgresql = Some(found.url.clone());
        db = Some(found);
    }
    (opts, db)
}

/// Ends a test that holds only on the embedded store (a fault injected
/// into its file, a restart on the same data directory): on PostgreSQL it
/// says so and returns true.
pub fn embedded_only(what: &str) -> bool {
    if on_postgresql() {
        eprintln!("embedded store only, not run on PostgreSQL: {what}");
        return true;
    }
    false
}

impl TestDemo {
    pub async fn start() -> TestDemo {
        Self::start_in(
            tempfile::tempdir().expect("tempdir"),
            Duration::from_millis(400),
        )
        .await
    }

    pub async fn start_in(dir: tempfile::TempDir, source_deadline: Duration) -> TestDemo {
        let (mut opts, db) = demo_options(dir.path()).await;
        opts.source_deadline = source_deadline;
        let demo = Demo::start(opts).await.expect("start the demo");
        TestDemo {
            demo: Some(demo),
            dir,
            db,
        }
    }

    pub fn demo(&self) -> &Demo {
        self.demo.as_ref().expect("running")
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(d) = self.demo.take() {
            d.stop().await.expect("stop the demo");
        }
        // The database goes once the broker on it has stopped.
        if let Some(db) = self.db.take() {
            assert!(on_postgresql(), "a database is made only on PostgreSQL");
            assert!(
                self.dir.path().join("second-broker.toml").exists(),
                "the demo ran on {}",
                db.url
            );
        }
        self.dir
    }

    pub fn pki(&self) -> &DevPki {
        &self.demo().pki
    }

    /// A channel to the broker as a person of a demo organisation, with
    /// every role the organisation's registration allows.
    pub async fn channel(&self, slug: &str) -> AuthChannel {
        let org = semel_demo::seed::org(slug).expect("demo org");
        let token = self.token(slug, &org.user_roles());
        self.channel_as(slug, &token).await
    }

    /// A channel with a demo organisation's certificate and this token.
    pub async fn channel_as(&self, slug: &str, token: &str) -> AuthChannel {
        with_token(self.raw_channel(slug).await, Some(token)).expect("token")
    }

    /// A channel with a demo organisation's certificate and no token.
    pub async fn raw_channel(&self, slug: &str) -> Channel {
        let c = self.demo().client(slug).expect("client files");
        self.channel_with(Some((&c.cert, &c.key)), &self.pki().ca_cert())
            .await
            .expect("connect")
    }

    /// The demo's development issuer (of the organisations' staff).
    pub fn issuer(&self) -> DevIssuer {
        DevIssuer::ensure(&self.pki().dir).expect("issuer")
    }

    /// The demo's development citizen identity provider: the one issuer
    /// the demo broker trusts with the citizen role.
    pub fn citizen_issuer(&self) -> DevIssuer {
        DevIssuer::ensure_citizen(&self.pki().dir).expect("citizen issuer")
    }

    /// A valid token for `demo-user@<slug>` with these roles.
    pub fn token(&self, slug: &str, roles: &[UserRole]) -> String {
        let org = semel_demo::seed::org(slug).expect("demo org");
        self.mint(&TokenRequest {
            subject: &format!("demo-user@{slug}"),
            organisation: org.kbo,
            roles,
            audience: DEV_AUDIENCE,
            expires_in: 600,
            not_before: None,
            bound_to: None,
        })
    }

    /// A citizen's token, issued for the IRISbox portal: `sub` is their
    /// national number.
    pub fn citizen_token(&self, niss: &str) -> String {
        self.mint(&TokenRequest {
            subject: niss,
            organisation: semel_demo::seed::org("irisbox").expect("portal").kbo,
            roles: &[UserRole::Citizen],
            audience: DEV_AUDIENCE,
            expires_in: 600,
            not_before: None,
            bound_to: None,
        })
    }

    /// A citizen's own channel, through the IRISbox portal.
    pub async fn citizen_channel(&self, niss: &str) -> AuthChannel {
        let token = self.citizen_token(niss);
        self.channel_as("irisbox", &token).await
    }

    /// A LookupBatch of CPAS Anderlecht: Karim's residence, answered; then
    /// `between` runs; then Jan's, whose result is returned.
    pub async fn batch_second_item_after(
        &self,
        between: impl AsyncFnOnce(),
    ) -> proto::LookupBatchResponse {
        let (tx, rx) = tokio::sync::mpsc::channel::<proto::LookupBatchRequest>(4);
        let item = |n: &str| proto::LookupBatchRequest {
            item: Some(lookup(
                n,
                semel_demo::seed::datasets::RESIDENCE,
                &["street"],
                "RIS_ELIGIBILITY",
            )),
        };
        let mut results = self
            .lookup_client(ANDERLECHT)
            .await
            .lookup_batch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("batch")
            .into_inner();
        tx.send(item(KARIM)).await.expect("send");
        let first = results.message().await.expect("stream").expect("first");
        assert!(matches!(
            first.result,
            Some(proto::lookup_batch_response::Result::Response(_))
        ));
        between().await;
        tx.send(item(JAN)).await.expect("send");
        drop(tx);
        let second = results.message().await.expect("stream").expect("second");
        assert!(results.message().await.expect("end").is_none());
        second
    }

    /// A token of the issuer the demo trusts with its roles: the citizen
    /// identity provider for the citizen role, the staff's otherwise.
    pub fn mint(&self, req: &TokenRequest<'_>) -> String {
        let issuer = if req.roles.contains(&UserRole::Citizen) {
            self.citizen_issuer()
        } else {
            self.issuer()
        };
        issuer.mint(req).expect("mint")
    }

    pub async fn channel_with(
        &self,
        identity: Option<(&std::path::Path, &std::path::Path)>,
        ca: &std::path::Path,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("ca")));
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(cert).expect("cert"),
                std::fs::read(key).expect("key"),
            ));
        }
        Endpoint::from_shared(format!("https://{}", self.demo().broker_addr))
            .expect("uri")
            .tls_config(tls)?
            .connect()
            .await
    }

    pub async fn lookup_client(&self, slug: &str) -> LookupServiceClient<AuthChannel> {
        LookupServiceClient::new(self.channel(slug).await)
    }

    pub async fn persons_client(
        &self,
        slug: &str,
    ) -> proto::persons_service_client::PersonsServiceClient<AuthChannel> {
        proto::persons_service_client::PersonsServiceClient::new(self.channel(slug).await)
    }

    pub async fn consent_client(
        &self,
        slug: &str,
    ) -> proto::consent_service_client::ConsentServiceClient<AuthChannel> {
        proto::consent_service_client::ConsentServiceClient::new(self.channel(slug).await)
    }

    /// Opens a provisional file of `slug` on `citizen` in `capacity`, from
    /// the first of last month (so reference dates of this month are covered).
    pub async fn open_file(&self, slug: &str, citizen: &str, capacity: &str) -> proto::PersonFile {
        let today = time::OffsetDateTime::now_utc().date();
        let begins = today.replace_day(1).expect("day") - time::Duration::days(31);
        self.persons_client(slug)
            .await
            .register_file(proto::RegisterFileRequest {
                file: Some(proto::PersonFile {
                    citizen: citizen.into(),
                    capacity: capacity.into(),
                    phase: proto::FilePhase::Provisional as i32,
                    begin_date: begins.to_string(),
                    ..Default::default()
                }),
            })
            .await
            .expect("register the file")
            .into_inner()
            .file
            .expect("file")
    }

    pub async fn registry(&self) -> RegistryServiceClient<AuthChannel> {
        RegistryServiceClient::new(self.channel(OPERATOR).await)
    }

    pub async fn audit(&self) -> AuditServiceClient<AuthChannel> {
        AuditServiceClient::new(self.channel(OPERATOR).await)
    }

    pub async fn audit_size(&self) -> u64 {
        self.audit()
            .await
            .get_audit_head(proto::GetAuditHeadRequest {})
            .await
            .expect("head")
            .into_inner()
            .size
    }

    /// Every audit entry but the auditors' own reads of the log (each
    /// query is recorded too, after it ran) and the demo's seed, oldest
    /// first.
    pub async fn audit_entries(&self) -> Vec<proto::AuditEntry> {
        let mut all = self.all_audit_entries().await;
        all.retain(|e| !is_audit_read(e) && !is_seed(e));
        all
    }

    /// Every audit entry, oldest first (this query's own entry is appended
    /// after it ran, so it is not among them).
    pub async fn all_audit_entries(&self) -> Vec<proto::AuditEntry> {
        let mut client = self.audit().await;
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = client
                .list_audit_entries(proto::ListAuditEntriesRequest {
                    page_size: 1000,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .expect("list")
                .into_inner();
            out.extend(r.entries);
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
        out.reverse();
        out
    }

    /// Issues a certificate from the demo CA for an organisation.
    pub fn issue(&self, stem: &str, kbo: &str, name: &str) -> semel_demo::pki::CertFiles {
        let kbo = semel_core::Kbo::parse(kbo).expect("kbo");
        self.pki()
            .issue(&Subject {
                file_stem: stem,
                kbo,
                name,
            })
            .expect("issue")
    }
}

/// Whether an entry records an auditor's or a citizen's read of the log.
pub fn is_audit_read(e: &proto::AuditEntry) -> bool {
    e.operation.starts_with("semel.v1.AuditService/")
}

/// The entries under which the demo stored (and sealed) its registry and
/// its persons directory's files, before any test ran.
pub fn is_seed(e: &proto::AuditEntry) -> bool {
    e.operation.starts_with("semel.seed/")
}

pub fn lookup(
    citizen: &str,
    dataset: &str,
    fields: &[&str],
    purpose: &str,
) -> proto::LookupRequest {
    proto::LookupRequest {
        citizen: citizen.into(),
        dataset: dataset.into(),
        fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        purpose: purpose.into(),
        ..Default::default()
    }
}

/// A check `field OP value` (see `semel lookup --check`).
pub fn check(text: &str) -> proto::Check {
    semel_client::parse_check(text).expect("check")
}

/// The ErrorInfo of a status: (reason, domain, metadata).
pub fn error_info(s: &tonic::Status) -> (String, String, HashMap<String, String>) {
    let d = s.get_error_details();
    let info = d
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {s:?}"));
    (
        info.reason.clone(),
        info.domain.clone(),
        info.metadata.clone(),
    )
}

/// Asserts a status's code and ErrorInfo reason, and that its message
/// never repeats a national number.
#[track_caller]
pub fn assert_error(s: &tonic::Status, code: tonic::Code, reason: &str) {
    assert_eq!(s.code(), code, "{s:?}");
    let (r, domain, _) = error_info(s);
    assert_eq!(r, reason, "{s:?}");
    assert_eq!(domain, "semel.brussels");
    assert!(!s.message().is_empty());
    for n in [KARIM, JAN, "93.05.18-223.61"] {
        assert!(
            !s.message().contains(n),
            "message leaks a national number: {}",
            s.message()
        );
    }
}

/// A test source: answers every field it is asked for plus `extra`, after
/// `delay`.
#[derive(Clone)]
pub struct TestSource {
    pub delay: Duration,
    pub extra: bool,
    pub calls: Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl proto::source_service_server::SourceService for TestSource {
    async fn fetch(
        &self,
        request: tonic::Request<proto::FetchRequest>,
    ) -> Result<tonic::Response<proto::FetchResponse>, tonic::Status> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        let req = request.into_inner();
        let mut fields: HashMap<String, proto::Value> = req
            .fields
            .iter()
            .map(|f| {
                (
                    f.clone(),
                    proto::Value {
                        kind: Some(proto::value::Kind::StringValue(format!("value of {f}"))),
                    },
                )
            })
            .collect();
        if self.extra {
            fields.insert(
                "secret".into(),
                proto::Value {
                    kind: Some(proto::value::Kind::StringValue(
                        "must never reach the consumer".into(),
                    )),
                },
            );
        }
        Ok(tonic::Response::new(proto::FetchResponse { fields }))
    }
}

/// The enterprise number of the test source [`register_test_dataset`]
/// registers.
pub const TEST_SOURCE_KBO: &str = "0999999922";

/// Starts a test source with a certificate of the test source organisation
/// ([`TEST_SOURCE_KBO`], the owner of the datasets [`register_test_dataset`]
/// registers: the broker requires the source's certificate to name the
/// dataset's owner); returns its https address.
pub async fn start_test_source(
    t: &TestDemo,
    source: impl proto::source_service_server::SourceService,
) -> String {
    start_test_source_as(t, TEST_SOURCE_KBO, source).await
}

/// Starts a test source whose server certificate names organisation `kbo`.
pub async fn start_test_source_as(
    t: &TestDemo,
    kbo: &str,
    source: impl proto::source_service_server::SourceService,
) -> String {
    let stem = format!("test-source-{kbo}");
    let files = t
        .pki()
        .issue(&semel_demo::pki::Subject {
            file_stem: &stem,
            kbo: semel_core::Kbo::parse(kbo).expect("kbo"),
            name: "Test source",
        })
        .expect("issue the test source's certificate");
    let tls = semel_server::tls::server_config(&semel_server::tls::TlsFiles {
        cert: &files.cert,
        key: &files.key,
        client_ca: &t.pki().ca_cert(),
        client_crls: &[],
    })
    .expect("tls");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(semel_server::server::serve_source(
        listener,
        tls,
        proto::source_service_server::SourceServiceServer::new(source),
        std::future::pending(),
    ));
    format!("https://{addr}")
}

/// Registers a test source organisation, one dataset `name` with fields
/// `a`, `b` and `c` at `endpoint`, and an authorisation for CPAS Anderlecht
/// to get `a` and `b` for purpose TEST.
pub async fn register_test_dataset(t: &TestDemo, name: &str, endpoint: &str) {
    let mut reg = t.registry().await;
    let source_kbo = TEST_SOURCE_KBO;
    let _ = reg
        .create_organisation(proto::CreateOrganisationRequest {
            organisation: Some(proto::Organisation {
                kbo: source_kbo.into(),
                name: "Test source".into(),
                roles: vec![proto::OrganisationRole::Source as i32],
                ..Default::default()
            }),
        })
        .await;
    let field = |n: &str| proto::FieldDefinition {
        name: n.into(),
        description: format!("field {n}"),
        r#type: proto::FieldType::String as i32,
    };
    reg.create_dataset(proto::CreateDatasetRequest {
        dataset: Some(proto::Dataset {
            name: name.into(),
            source_kbo: source_kbo.into(),
            description: "A test dataset".into(),
            fields: vec![field("a"), field("b"), field("c")],
            endpoint: endpoint.into(),
            keeps_history: false,
            withdrawn: false,
        }),
    })
    .await
    .expect("create dataset");
    let _ = reg
        .create_purpose(proto::CreatePurposeRequest {
            purpose: Some(proto::Purpose {
                code: "TEST".into(),
                description: "Testing".into(),
                legal_basis: "none: tests only".into(),
            }),
        })
        .await;
    let anderlecht = semel_demo::seed::org(ANDERLECHT).expect("org").kbo;
    reg.create_authorisation(proto::CreateAuthorisationRequest {
        authorisation: Some(proto::Authorisation {
            reference: format!("TEST/{name}"),
            consumer_kbo: anderlecht.as_str().into(),
            dataset: name.into(),
            fields: vec!["a".into(), "b".into()],
            purpose: "TEST".into(),
            legal_basis: "test".into(),
            issuing_body: "test".into(),
            valid_from: "2020-01-01".into(),
            ..Default::default()
        }),
    })
    .await
    .expect("create authorisation");
}

/// A port that was free a moment ago and has nobody listening on it now:
/// the address of a source that is down.
pub fn unused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl TestDemo {
    /// A demo with these limits and source deadline.
    pub async fn start_with(
        limits: semel_server::limits::LimitSettings,
        source_deadline: Duration,
    ) -> TestDemo {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut opts, db) = demo_options(dir.path()).await;
        opts.source_deadline = source_deadline;
        opts.limits = limits;
        TestDemo {
            demo: Some(Demo::start(opts).await.expect("start the demo")),
            dir,
            db,
        }
    }
}

/// One HTTP/1.1 call over mutual TLS: (status, headers, body).
pub struct Answer {
    pub status: u16,
    pub request_id: Option<String>,
    pub body: serde_json::Value,
    pub raw: hyper::body::Bytes,
}

/// Calls the face with an organisation's certificate (or none) and a
/// token (or none).
pub async fn http_call(
    t: &TestDemo,
    slug: Option<&str>,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Answer {
    http_call_with(t, slug, token, method, path, body, &[]).await
}

/// [`http_call`] with more headers.
pub async fn http_call_with(
    t: &TestDemo,
    slug: Option<&str>,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut sender = http_connect(t, slug).await;
    http_send(&mut sender, token, method, path, body, headers).await
}

/// An HTTP/1.1 connection to the face with a demo organisation's
/// certificate (or none).
pub async fn http_connect(
    t: &TestDemo,
    slug: Option<&str>,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let addr = t.demo().http_addr.expect("HTTP/JSON served");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(t.pki().ca_cert()).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match slug {
        Some(slug) => {
            let c = t.demo().client(slug).expect("client files");
            let chain = CertificateDer::pem_file_iter(&c.cert)
                .expect("cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("certs");
            let key = PrivateKeyDer::from_pem_file(&c.key).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .expect("tls handshake");
    let (sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("http handshake");
    tokio::spawn(conn);
    sender
}

/// One request on a connection.
pub async fn http_send(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Answer {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    sender.ready().await.expect("the connection stays usable");
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
        .expect("request");
    let resp = sender.send_request(req).await.expect("answer");
    let status = resp.status().as_u16();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let raw = resp.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        request_id,
        body,
        raw,
    }
}

/// The demo's registry exported as reviewed files (`semel registry
/// export`), into a temporary directory, as an operator starts an edit.
pub async fn export_registry(t: &TestDemo) -> tempfile::TempDir {
    let mut reg = t.registry().await;
    let organisations = reg
        .list_organisations(proto::ListOrganisationsRequest {})
        .await
        .expect("orgs")
        .into_inner()
        .organisations;
    let purposes = reg
        .list_purposes(proto::ListPurposesRequest {})
        .await
        .expect("purposes")
        .into_inner()
        .purposes;
    let datasets = reg
        .list_datasets(proto::ListDatasetsRequest {})
        .await
        .expect("datasets")
        .into_inner()
        .datasets;
    let authorisations = reg
        .list_authorisations(proto::ListAuthorisationsRequest::default())
        .await
        .expect("auths")
        .into_inner()
        .authorisations;
    let dir = tempfile::tempdir().expect("dir");
    for (name, text) in
        semel_client::registry_files::export(&organisations, &purposes, &datasets, &authorisations)
            .expect("export")
    {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    dir
}
