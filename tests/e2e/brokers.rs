//! Two brokers on one PostgreSQL database (issue 30, points 6 and 7): a
//! change published through one is delivered through the other at once
//! (NOTIFY, not a poll), and an organisation's limits hold across both
//! (each broker holds its share), not once per broker. The second broker
//! is a broker of its own, from the `second-broker.toml` the demo writes,
//! on a port of its own, in this process. On the embedded store there is
//! one broker: these tests say so and end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use semel_client::AuthChannel;
use semel_server::limits::LimitSettings;
use semel_server::proto::{self, mutation_service_client::MutationServiceClient};

use crate::harness::*;

/// A second broker, serving until dropped or stopped.
struct Second {
    addr: std::net::SocketAddr,
    broker: Arc<semel_server::state::Broker>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Second {
    /// Starts the demo's second broker, its configuration changed first.
    async fn start(t: &TestDemo, tweak: impl FnOnce(&mut semel_server::Config)) -> Second {
        let (path, _) = t
            .demo()
            .second_broker
            .clone()
            .expect("the demo on PostgreSQL writes a second broker's configuration");
        let mut config = semel_server::Config::load(&path).expect("second-broker.toml loads");
        tweak(&mut config);
        let prepared = semel_server::server::prepare(&config)
            .await
            .expect("prepare the second broker");
        let broker = prepared.broker.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(semel_server::server::serve_broker(
            listener,
            prepared,
            async {
                let _ = stopped.await;
            },
        ));
        Second {
            addr,
            broker,
            stop: Some(stop),
            task,
        }
    }

    /// A channel to this broker as a demo organisation, with every role
    /// its registration allows.
    async fn channel(&self, t: &TestDemo, slug: &str) -> AuthChannel {
        let org = semel_demo::seed::org(slug).expect("demo org");
        let files = t.demo().client(slug).expect("client files");
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(
                std::fs::read(t.pki().ca_cert()).expect("ca"),
            ))
            .identity(tonic::transport::Identity::from_pem(
                std::fs::read(&files.cert).expect("cert"),
                std::fs::read(&files.key).expect("key"),
            ));
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", self.addr))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect to the second broker");
        semel_client::with_token(channel, Some(&t.token(slug, &org.user_roles()))).expect("token")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task
            .await
            .expect("the second broker's task")
            .expect("the second broker stops cleanly");
    }
}

/// Waits until both brokers count each other alive (each holds half of
/// every limit from then on).
async fn until_both_alive(t: &TestDemo, second: &Second) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while t.demo().broker.limit_share.brokers() != 2 || second.broker.limit_share.brokers() != 2 {
        assert!(
            Instant::now() < deadline,
            "the brokers did not count each other alive within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Karim moves, within Anderlecht.
fn a_move(id: &str) -> proto::Mutation {
    let text = |s: &str| proto::Value {
        kind: Some(proto::value::Kind::StringValue(s.into())),
    };
    proto::Mutation {
        source_event_id: id.into(),
        dataset: semel_demo::seed::datasets::RESIDENCE.into(),
        citizen: KARIM.into(),
        kind: proto::MutationKind::Changed as i32,
        effective_date: time::OffsetDateTime::now_utc().date().to_string(),
        fields: std::collections::HashMap::from([
            ("street".to_owned(), text("Rue Wayez")),
            ("house_number".to_owned(), text("12")),
            ("nis_code".to_owned(), text("21001")),
        ]),
    }
}

/// A change published through broker A reaches a subscriber on broker B
/// at once: B's fallback poll is set to ten minutes, so only a
/// notification can bring it within seconds; and a pull waiting on B
/// returns with it as soon.
#[tokio::test]
async fn a_change_published_through_one_broker_is_delivered_through_another_at_once() {
    if !on_postgresql() {
        eprintln!("PostgreSQL only: the embedded store has one broker");
        return;
    }
    let t = TestDemo::start().await;
    let second = Second::start(&t, |c| {
        c.mutations.fallback_poll_ms = Some(600_000);
    })
    .await;
    let mut on_b = MutationServiceClient::new(second.channel(&t, ANDERLECHT).await);
    let mut stream = on_b
        .subscribe(proto::SubscribeRequest { after: 0 })
        .await
        .expect("subscribe on B")
        .into_inner();
    // The subscription has read its (empty) queue and waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut on_a = MutationServiceClient::new(t.channel("national-register").await);
    let mut latencies = Vec::new();
    for i in 0..5 {
        let sent = Instant::now();
        on_a.publish_mutations(proto::PublishMutationsRequest {
            mutations: vec![a_move(&format!("cross-{i}"))],
        })
        .await
        .expect("published through A");
        let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("delivered through B long before its ten-minute poll")
            .expect("stream")
            .expect("an item");
        let Some(proto::subscribe_response::Item::Event(e)) = item.item else {
            panic!("an event, got {item:?}");
        };
        assert_eq!(e.source_event_id, format!("cross-{i}"));
        latencies.push(sent.elapsed());
    }
    eprintln!("publish through A → delivery through B: {latencies:?}");

    // A pull on B, waiting, is woken by a change published through A.
    let mut pull_b = MutationServiceClient::new(second.channel(&t, ANDERLECHT).await);
    let pulling = tokio::spawn(async move {
        let started = Instant::now();
        let r = pull_b
            .pull_mutations(proto::PullMutationsRequest {
                after: 5,
                max_events: 0,
                wait_seconds: 30,
            })
            .await
            .expect("pull on B")
            .into_inner();
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    on_a.publish_mutations(proto::PublishMutationsRequest {
        mutations: vec![a_move("cross-pull")],
    })
    .await
    .expect("published through A");
    let (pulled, waited) = pulling.await.expect("pull task");
    assert_eq!(pulled.events.len(), 1, "{pulled:?}");
    assert_eq!(pulled.events[0].source_event_id, "cross-pull");
    assert!(
        waited < Duration::from_secs(20),
        "the pull returned when the change came, not at its 30 s deadline: {waited:?}"
    );
    assert_eq!(
        second.broker.metrics.mutations_listener_up.get(),
        1,
        "B says it hears other brokers' changes"
    );
    drop((stream, on_b));
    second.stop().await;
    t.stop().await;
}

/// An organisation's lookup rate holds across two brokers: a consumer
/// hammering both at once gets about its limit in all, not twice it; and
/// its distinct yes/no questions about a citizen likewise.
#[tokio::test]
async fn a_consumer_hammering_two_brokers_gets_its_limit_in_all_not_twice() {
    if !on_postgresql() {
        eprintln!("PostgreSQL only: the embedded store has one broker");
        return;
    }
    const RATE: f64 = 10.0;
    const BURST: f64 = 10.0;
    let limits = LimitSettings {
        consumer_rate: Some(RATE),
        consumer_burst: BURST,
        distinct_checks_per_citizen: 4,
        ..LimitSettings::default().without_organisation_budgets()
    };
    let t = TestDemo::start_with(limits, Duration::from_secs(2)).await;
    let second = Second::start(&t, |c| {
        c.limits.consumer_lookups_per_second = Some(RATE);
        c.limits.consumer_burst = Some(BURST);
        c.limits.distinct_checks_per_citizen = Some(4);
    })
    .await;
    until_both_alive(&t, &second).await;

    // Distinct checks: Ville de Bruxelles guesses Jan's commune, in turn
    // on each broker; four different guesses in all, not four per broker.
    t.open_file(VILLE, JAN, "PUPIL").await;
    let mut ville_a = t.lookup_client(VILLE).await;
    let mut ville_b = semel_server::proto::lookup_service_client::LookupServiceClient::new(
        second.channel(&t, VILLE).await,
    );
    let guess = |nis: &str| proto::LookupRequest {
        checks: vec![check(&format!("nis_code={nis}"))],
        ..lookup(
            JAN,
            semel_demo::seed::datasets::RESIDENCE,
            &[],
            "SCHOOL_ENROLMENT",
        )
    };
    let mut answered = 0;
    for (i, nis) in [
        "21001", "21004", "21009", "21015", "21016", "21017", "21018", "21019",
    ]
    .iter()
    .enumerate()
    {
        let r = if i % 2 == 0 {
            ville_a.lookup(guess(nis)).await
        } else {
            ville_b.lookup(guess(nis)).await
        };
        match r {
            Ok(_) => answered += 1,
            Err(e) => assert_error(&e, tonic::Code::ResourceExhausted, "CHECK_LIMIT_REACHED"),
        }
    }
    assert_eq!(
        answered, 4,
        "four different questions in all across both brokers"
    );

    // The rate: four callers on each broker for three seconds.
    let seconds = 3.0;
    let ok = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut callers = Vec::new();
    for b in 0..2 {
        for _ in 0..4 {
            let mut client = if b == 0 {
                t.lookup_client(ANDERLECHT).await
            } else {
                semel_server::proto::lookup_service_client::LookupServiceClient::new(
                    second.channel(&t, ANDERLECHT).await,
                )
            };
            let ok = ok.clone();
            callers.push(tokio::spawn(async move {
                let req = lookup(
                    KARIM,
                    semel_demo::seed::datasets::RESIDENCE,
                    &["street"],
                    "RIS_ELIGIBILITY",
                );
                while Instant::now() < until {
                    match client.lookup(req.clone()).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert_error(&e, tonic::Code::ResourceExhausted, "RATE_LIMITED");
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            }));
        }
    }
    for c in callers {
        c.await.expect("caller");
    }
    let got = ok.load(Ordering::Relaxed) as f64;
    let limit = BURST + RATE * seconds;
    eprintln!("answered {got} lookups across two brokers; the limit is {limit}");
    assert!(
        got <= limit * 1.25,
        "{got} lookups answered across two brokers: the organisation's limit ({limit}) is held per broker"
    );
    assert!(
        got >= limit * 0.6,
        "{got} lookups answered: far below the organisation's limit ({limit})"
    );
    second.stop().await;
    t.stop().await;
}
