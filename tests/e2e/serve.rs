//! `semel serve --config`: the broker alone, from a configuration file.

use semel_server::proto;
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn the_broker_runs_from_a_config_file_and_registers_its_operator() {
    // Borrow the demo's PKI, then run a separate, empty broker with it.
    let t = TestDemo::start().await;
    let pki = t.pki().clone();
    let operator = semel_demo::seed::org(OPERATOR).expect("operator");
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("semel.toml");
    let broker = pki.files("broker");
    std::fs::write(
        &config_path,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n[operator]\nkbo = \"{}\"\nname = \"Test operator\"\n[sources]\ndeadline_ms = 1000\n[tokens]\n[[tokens.issuers]]\nissuer = \"{}\"\njwks = {:?}\n",
            broker.cert,
            broker.key,
            pki.ca_cert(),
            operator.kbo.as_str(),
            semel_demo::issuer::DEV_ISSUER,
            t.issuer().jwks_file(),
        ),
    )
    .expect("write config");
    let config = semel_server::Config::load(&config_path).expect("config loads");
    assert_eq!(
        config.data_dir,
        dir.path().join("data"),
        "relative paths follow the file"
    );
    let prepared = semel_server::server::prepare(&config)
        .await
        .expect("prepare");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(semel_server::server::serve_broker(
        listener,
        prepared,
        async {
            let _ = stopped.await;
        },
    ));

    let connect = |slug: &'static str| {
        let org = semel_demo::seed::org(slug).expect("org");
        let files = pki.files(org.kbo.as_str());
        let ca = pki.ca_cert();
        let token = t.token(slug, &org.user_roles());
        async move {
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(
                    std::fs::read(ca).expect("ca"),
                ))
                .identity(tonic::transport::Identity::from_pem(
                    std::fs::read(files.cert).expect("cert"),
                    std::fs::read(files.key).expect("key"),
                ));
            let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                .expect("uri")
                .tls_config(tls)
                .expect("tls")
                .connect()
                .await
                .expect("connect");
            semel_client::with_token(channel, Some(&token)).expect("token")
        }
    };
    let mut reg =
        proto::registry_service_client::RegistryServiceClient::new(connect(OPERATOR).await);
    let orgs = reg
        .list_organisations(proto::ListOrganisationsRequest {})
        .await
        .expect("operator may list")
        .into_inner()
        .organisations;
    assert_eq!(
        orgs.len(),
        1,
        "only the operator is registered in a new store"
    );
    assert_eq!(orgs[0].kbo, operator.kbo.as_str());

    // Nobody else is registered yet.
    let mut c = proto::lookup_service_client::LookupServiceClient::new(connect(ANDERLECHT).await);
    let err = c
        .lookup(lookup(
            KARIM,
            "national_register.residence",
            &["street"],
            "RIS_ELIGIBILITY",
        ))
        .await
        .expect_err("unregistered");
    assert_error(&err, Code::Unauthenticated, "ORGANISATION_NOT_REGISTERED");

    let _ = stop.send(());
    server.await.expect("join").expect("clean stop");
    t.stop().await;
}
