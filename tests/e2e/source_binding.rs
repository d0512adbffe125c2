//! The broker's channels to sources: a source's certificate must name the
//! dataset's owner, endpoints may not point at loopback, link-local or
//! private addresses (nor the broker) unless allow-listed, and moving an
//! endpoint is the operator's to approve.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use semel_demo::seed::datasets::*;
use semel_server::proto;
use semel_server::proto::registry_service_client::RegistryServiceClient;
use tonic::Code;

use crate::harness::*;

fn counting() -> (TestSource, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    (
        TestSource {
            delay: Duration::ZERO,
            extra: false,
            calls: calls.clone(),
        },
        calls,
    )
}

/// Another member with a certificate from the same CA answers at a
/// dataset's endpoint: the broker closes the connection after the
/// handshake, before the request (the citizen's number, the purpose) is
/// sent, and the lookup fails with SOURCE_NOT_AUTHENTIC.
#[tokio::test]
async fn a_source_whose_certificate_names_another_organisation_is_sent_nothing() {
    let t = TestDemo::start().await;
    let impostor_kbo = semel_demo::seed::org("spf-finances").expect("org").kbo;
    let (impostor, impostor_calls) = counting();
    let endpoint = start_test_source_as(&t, impostor_kbo.as_str(), impostor).await;
    register_test_dataset(&t, "test.impostor", &endpoint).await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let err = c
        .lookup(lookup(KARIM, "test.impostor", &["a"], "TEST"))
        .await
        .expect_err("the server at the endpoint is not the dataset's owner");
    assert_error(&err, Code::Unavailable, "SOURCE_NOT_AUTHENTIC");
    assert!(
        err.message().contains(&impostor_kbo.to_string())
            && err.message().contains(
                &semel_core::Kbo::parse(TEST_SOURCE_KBO)
                    .expect("kbo")
                    .to_string()
            ),
        "{}",
        err.message()
    );
    assert!(!err.message().contains(KARIM), "{}", err.message());
    assert_eq!(
        impostor_calls.load(Ordering::SeqCst),
        0,
        "the impostor received no request"
    );
    let entry = t
        .audit_entries()
        .await
        .into_iter()
        .rev()
        .find(|e| e.dataset == "test.impostor")
        .expect("the lookup is audited");
    assert_eq!(entry.reason, "SOURCE_NOT_AUTHENTIC");

    // The dataset's owner itself, at its own endpoint, is called.
    let (genuine, genuine_calls) = counting();
    let endpoint = start_test_source(&t, genuine).await;
    let mut operator = t.registry().await;
    let mut dataset = operator
        .get_dataset(proto::GetDatasetRequest {
            name: "test.impostor".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .dataset
        .expect("dataset");
    dataset.endpoint = endpoint;
    operator
        .amend_dataset(proto::AmendDatasetRequest {
            dataset: Some(dataset),
            reason: "the owner's own server".into(),
        })
        .await
        .expect("the operator moves the endpoint");
    c.lookup(lookup(KARIM, "test.impostor", &["a"], "TEST"))
        .await
        .expect("the owner answers");
    assert_eq!(genuine_calls.load(Ordering::SeqCst), 1);
    assert_eq!(impostor_calls.load(Ordering::SeqCst), 0);
}

fn dataset(name: &str, endpoint: &str) -> proto::Dataset {
    proto::Dataset {
        name: name.into(),
        source_kbo: semel_demo::seed::org("national-register")
            .expect("org")
            .kbo
            .as_str()
            .into(),
        description: "A test dataset".into(),
        fields: vec![proto::FieldDefinition {
            name: "a".into(),
            description: "field a".into(),
            r#type: proto::FieldType::String as i32,
        }],
        endpoint: endpoint.into(),
        keeps_history: false,
        withdrawn: false,
    }
}

/// Loopback, link-local (the cloud metadata address), private, unspecified
/// addresses and the broker's own are refused at registration; the demo
/// allow-lists 127.0.0.1 alone, and an allow-listed address is accepted.
#[tokio::test]
async fn an_endpoint_on_a_private_or_loopback_address_is_refused_unless_allow_listed() {
    let t = TestDemo::start().await;
    let mut operator = t.registry().await;
    let own = t.demo().broker_addr;
    let refused = [
        "https://10.0.0.5:7001".to_owned(),
        "https://172.16.3.4:7001".to_owned(),
        "https://192.168.1.10:7001".to_owned(),
        "https://169.254.169.254:443".to_owned(),
        "https://127.0.0.2:7001".to_owned(),
        "https://[::1]:7001".to_owned(),
        "https://[fd00::1]:7001".to_owned(),
        "https://0.0.0.0:7001".to_owned(),
        format!("https://127.0.0.1:{}", own.port()),
    ];
    for (i, endpoint) in refused.iter().enumerate() {
        let err = operator
            .create_dataset(proto::CreateDatasetRequest {
                dataset: Some(dataset(&format!("test.refused{i}"), endpoint)),
            })
            .await
            .expect_err(endpoint);
        assert_error(&err, Code::InvalidArgument, "INVALID_ENDPOINT");
        assert!(
            err.message().contains("sources.allowed_endpoints")
                || err.message().contains("broker's own address"),
            "{endpoint}: {}",
            err.message()
        );
    }
    // A registry file is held to the same rule.
    let err = operator
        .apply_registry(proto::ApplyRegistryRequest {
            datasets: vec![dataset("test.filed", "https://10.9.9.9:7001")],
            reason: "a file".into(),
            ..Default::default()
        })
        .await
        .expect_err("a file's dataset on a private address");
    assert_error(&err, Code::InvalidArgument, "INVALID_ENDPOINT");
    assert!(err.message().contains("test.filed"), "{}", err.message());
    operator
        .create_dataset(proto::CreateDatasetRequest {
            dataset: Some(dataset(
                "test.allowed",
                &format!("https://127.0.0.1:{}", unused_port()),
            )),
        })
        .await
        .expect("127.0.0.1 is allow-listed in the demo");
}

/// A source may amend its dataset, but moving its endpoint (where citizens'
/// numbers go) is the operator's to approve; the refusal is audited.
#[tokio::test]
async fn a_source_changing_its_own_endpoint_is_refused_and_the_operators_change_accepted() {
    let t = TestDemo::start().await;
    let mut source = RegistryServiceClient::new(t.channel("national-register").await);
    let mut operator = t.registry().await;
    let residence = operator
        .get_dataset(proto::GetDatasetRequest {
            name: RESIDENCE.into(),
        })
        .await
        .expect("get")
        .into_inner()
        .dataset
        .expect("dataset");
    let amend = |d: proto::Dataset| proto::AmendDatasetRequest {
        dataset: Some(d),
        reason: "new data centre".into(),
    };
    let mut moved = residence.clone();
    moved.endpoint = format!("https://127.0.0.1:{}", unused_port());
    let err = source
        .amend_dataset(amend(moved.clone()))
        .await
        .expect_err("a source does not move its endpoint alone");
    assert_error(&err, Code::PermissionDenied, "ROLE_NOT_PERMITTED");
    assert!(err.message().contains("operator"), "{}", err.message());
    let entry = t
        .audit_entries()
        .await
        .into_iter()
        .rev()
        .find(|e| e.operation == "semel.v1.RegistryService/AmendDataset")
        .expect("the refusal is audited");
    assert_eq!(entry.reason, "ROLE_NOT_PERMITTED");
    let unchanged = operator
        .get_dataset(proto::GetDatasetRequest {
            name: RESIDENCE.into(),
        })
        .await
        .expect("get")
        .into_inner()
        .dataset
        .expect("dataset");
    assert_eq!(unchanged.endpoint, residence.endpoint);

    // The same change, by the operator, takes effect.
    let r = operator
        .amend_dataset(amend(moved.clone()))
        .await
        .expect("the operator approves the move")
        .into_inner();
    assert_eq!(r.dataset.expect("dataset").endpoint, moved.endpoint);
    // Not to a forbidden address, even by the operator.
    let mut private = residence.clone();
    private.endpoint = "https://10.1.2.3:7001".into();
    assert_error(
        &operator
            .amend_dataset(amend(private))
            .await
            .expect_err("private address"),
        Code::InvalidArgument,
        "INVALID_ENDPOINT",
    );
}
