//! Insider review (issue 29), the HTTP/JSON face's connections: whoever
//! reaches the port, with or without a certificate, holds a connection
//! only for a bounded time and only a few of them, so that slow or
//! withheld requests cannot take the face, the console and the citizen's
//! page down. The clients here speak raw HTTP/1.1 over TLS, to send what
//! no well-behaved client library sends: a body announced and trickled, or
//! never sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use semel_server::http_settings::HttpSettings;
use semel_server::metrics::RefusedConnectionLabels;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::harness::*;

/// A demo whose HTTP/JSON face has these settings.
async fn start_with(settings: HttpSettings) -> TestDemo {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut opts, db) = demo_options(dir.path()).await;
    opts.http = settings;
    TestDemo {
        demo: Some(
            semel_demo_stack::Demo::start(opts)
                .await
                .expect("start the demo"),
        ),
        dir,
        db,
    }
}

/// Short timeouts, so that a test waits seconds, not the defaults' minutes.
fn short_timeouts() -> HttpSettings {
    HttpSettings {
        body_timeout: Duration::from_millis(500),
        header_timeout: Duration::from_secs(2),
        ..HttpSettings::default()
    }
}

type Conn = TlsStream<TcpStream>;

/// A TLS connection to the face from `from` (127.0.0.1 when none), with a
/// demo organisation's certificate or none. `None` when the broker closed
/// it during the handshake.
async fn connect_from(t: &TestDemo, slug: Option<&str>, from: Option<&str>) -> Option<Conn> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let addr = t.demo().http_addr.expect("HTTP/JSON served");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(t.pki().ca_cert()).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
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
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(from) = from {
        socket
            .bind(SocketAddr::new(from.parse().expect("address"), 0))
            .expect("bind the client's address");
    }
    let tcp = socket.connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .ok()
}

async fn connect(t: &TestDemo, slug: Option<&str>) -> Conn {
    connect_from(t, slug, None)
        .await
        .expect("the TLS handshake completes")
}

/// An answer read off the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    /// The head, lowercased.
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    fn closes(&self) -> bool {
        self.head.contains("\r\nconnection: close\r\n")
    }

    #[track_caller]
    fn assert_refused(&self, status: u16, reason: &str) {
        assert_eq!(self.status, status, "{self:?}");
        let body = self.json();
        let info = body["details"]
            .as_array()
            .and_then(|d| {
                d.iter()
                    .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
            })
            .unwrap_or_else(|| panic!("no ErrorInfo in {self:?}"));
        assert_eq!(info["reason"], reason, "{self:?}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

/// Reads one answer (its head, then as many bytes as its Content-Length
/// says); `None` when the connection ends first.
async fn read_answer(conn: &mut (impl AsyncReadExt + Unpin)) -> Option<Raw> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head.get(9..12)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < length {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(Raw { status, head, body })
}

/// Whether the broker closes the connection within `within` (the end of
/// the stream, or an error: a connection it dropped without TLS's
/// close_notify), reading and dropping whatever it still sends.
async fn closed_within(conn: &mut (impl AsyncReadExt + Unpin), within: Duration) -> bool {
    tokio::time::timeout(within, async {
        let mut chunk = [0u8; 8192];
        loop {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Sends `head`, then trickles `x`, a byte every 100 ms, until the broker
/// stops reading or closes; returns the reading half.
async fn trickle(conn: Conn, head: String) -> ReadHalf<Conn> {
    let (read, mut write) = tokio::io::split(conn);
    write.write_all(head.as_bytes()).await.expect("send head");
    write.flush().await.expect("flush");
    tokio::spawn(async move {
        let mut write: WriteHalf<Conn> = write;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write.write_all(b"x").await.is_err() || write.flush().await.is_err() {
                return;
            }
        }
    });
    read
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
}

/// One request on a kept-alive connection, and its answer.
async fn ask(conn: &mut Conn, request: &str) -> Option<Raw> {
    conn.write_all(request.as_bytes()).await.ok()?;
    conn.flush().await.ok()?;
    read_answer(conn).await
}

fn lookup_request(t: &TestDemo) -> String {
    let org = semel_demo::seed::org(ANDERLECHT).expect("demo org");
    let token = t.token(ANDERLECHT, &org.user_roles());
    let body = serde_json::json!({
        "citizen": KARIM,
        "dataset": "national_register.residence",
        "fields": ["street", "municipality"],
        "purpose": "RIS_ELIGIBILITY",
    })
    .to_string();
    format!(
        "POST /v1/lookups HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Generous against a loaded machine, and well under what a hung
/// connection would take (the defaults' 30 s and 75 s, or never).
const PROMPTLY: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_body_announced_and_trickled_or_withheld_holds_no_connection() {
    let t = start_with(short_timeouts()).await;

    // The console's files, without a certificate, with 1 MiB announced and
    // a byte sent now and then: answered without reading the body, and the
    // connection closed (the body left unread would be taken for the next
    // request).
    let started = Instant::now();
    let mut read = trickle(
        connect(&t, None).await,
        "GET /console/ HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 1048576\r\n\r\n".into(),
    )
    .await;
    let answer = tokio::time::timeout(PROMPTLY, read_answer(&mut read))
        .await
        .expect("the console answers without waiting for the body")
        .expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.closes(), "{answer:?}");
    assert!(closed_within(&mut read, PROMPTLY).await);
    // The same with no byte of the body ever sent.
    let mut conn = connect(&t, None).await;
    let answer = tokio::time::timeout(
        PROMPTLY,
        ask(
            &mut conn,
            "GET /console/index.html HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 1048576\r\n\r\n",
        ),
    )
    .await
    .expect("answered at once")
    .expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(closed_within(&mut conn, PROMPTLY).await);

    // An operation without a certificate: refused at once, body unread.
    let mut read = trickle(
        connect(&t, None).await,
        "POST /v1/lookups HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n".into(),
    )
    .await;
    let answer = tokio::time::timeout(PROMPTLY, read_answer(&mut read))
        .await
        .expect("refused at once")
        .expect("an answer");
    answer.assert_refused(401, "CLIENT_CERTIFICATE_REQUIRED");
    assert!(closed_within(&mut read, PROMPTLY).await);

    // A path no operation is served on, with a certificate and a large
    // body trickled: answered without reading it.
    let mut read = trickle(
        connect(&t, Some(ANDERLECHT)).await,
        "POST /v1/nothing HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 1048576\r\n\r\n".into(),
    )
    .await;
    let answer = tokio::time::timeout(PROMPTLY, read_answer(&mut read))
        .await
        .expect("an unrouted path answers without waiting for a large body")
        .expect("an answer");
    answer.assert_refused(404, "NO_SUCH_ROUTE");
    assert!(answer.closes(), "{answer:?}");
    assert!(closed_within(&mut read, PROMPTLY).await);
    // A body of unknown length (chunks, here one of 1 MiB) sent slowly:
    // read only for the body's time, then the answer, and the connection
    // closed.
    let mut read = trickle(
        connect(&t, Some(ANDERLECHT)).await,
        "PUT /v1/lookups HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n100000\r\n".into(),
    )
    .await;
    let answer = tokio::time::timeout(PROMPTLY, read_answer(&mut read))
        .await
        .expect("a slow chunked body is cut off")
        .expect("an answer");
    answer.assert_refused(405, "METHOD_NOT_ALLOWED");
    assert!(answer.closes(), "{answer:?}");
    assert!(closed_within(&mut read, PROMPTLY).await);

    // An operation's body trickled: cut off after the body timeout, with a
    // 408 in the face's error JSON, and the connection closed.
    let started_lookup = Instant::now();
    let org = semel_demo::seed::org(ANDERLECHT).expect("demo org");
    let token = t.token(ANDERLECHT, &org.user_roles());
    let mut read = trickle(
        connect(&t, Some(ANDERLECHT)).await,
        format!("POST /v1/lookups HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"),
    )
    .await;
    let answer = tokio::time::timeout(PROMPTLY, read_answer(&mut read))
        .await
        .expect("a trickled body is cut off within the body timeout")
        .expect("an answer");
    answer.assert_refused(408, "REQUEST_TIMEOUT");
    assert!(answer.closes(), "{answer:?}");
    assert!(started_lookup.elapsed() >= Duration::from_millis(500));
    assert!(closed_within(&mut read, PROMPTLY).await);

    // Headers trickled: the connection is closed after the header timeout.
    let mut read = trickle(
        connect(&t, Some(ANDERLECHT)).await,
        "POST /v1/lookups HTTP/1.1\r\nx-slow: ".into(),
    )
    .await;
    assert!(
        closed_within(&mut read, PROMPTLY).await,
        "headers sent a byte at a time hold a connection"
    );

    // An idle kept-alive connection is closed after the header timeout too,
    // once its answer is sent.
    let mut conn = connect(&t, Some(ANDERLECHT)).await;
    let answer = ask(&mut conn, &get("/openapi.json"))
        .await
        .expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(!answer.closes(), "{answer:?}");
    assert!(
        closed_within(&mut conn, PROMPTLY).await,
        "an idle connection is kept open"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    t.stop().await;
}

#[tokio::test]
async fn connections_over_the_per_address_caps_are_closed_and_organisations_still_served() {
    let t = start_with(HttpSettings {
        max_connections_per_address: 6,
        max_connections_per_address_without_certificate: 3,
        max_connections_without_certificate: 4,
        ..HttpSettings::default()
    })
    .await;
    let refused = |reason: &'static str| {
        t.demo()
            .broker
            .metrics
            .http_connections_refused
            .get_or_create(&RefusedConnectionLabels { reason })
            .get()
    };

    // Three connections without a certificate from one address: each is
    // served (the console's files) and kept.
    let mut anonymous = Vec::new();
    for _ in 0..3 {
        let mut conn = connect(&t, None).await;
        let answer = ask(&mut conn, &get("/console/")).await.expect("served");
        assert_eq!(answer.status, 200, "{answer:?}");
        anonymous.push(conn);
    }
    // A fourth is closed at once, whatever it sends.
    match connect_from(&t, None, None).await {
        None => {}
        Some(mut conn) => {
            let _ = conn.write_all(get("/console/").as_bytes()).await;
            assert!(
                closed_within(&mut conn, PROMPTLY).await,
                "a fourth connection without a certificate from one address is kept"
            );
        }
    }
    assert_eq!(refused("per_address_without_certificate"), 1);

    // Another address has slots of its own, up to the cap on connections
    // without a certificate in all (4). Linux routes all of 127/8 to the
    // loopback interface; other systems may not.
    let mut elsewhere = None;
    if std::net::TcpListener::bind("127.0.0.2:0").is_ok() {
        let mut conn = connect_from(&t, None, Some("127.0.0.2"))
            .await
            .expect("handshake");
        let answer = ask(&mut conn, &get("/console/"))
            .await
            .expect("another address is served");
        assert_eq!(answer.status, 200, "{answer:?}");
        elsewhere = Some(conn);
        if let Some(mut conn) = connect_from(&t, None, Some("127.0.0.2")).await {
            let _ = conn.write_all(get("/console/").as_bytes()).await;
            assert!(
                closed_within(&mut conn, PROMPTLY).await,
                "a fifth connection without a certificate is kept"
            );
        }
        assert_eq!(refused("without_certificate"), 1);
    } else {
        eprintln!("127.0.0.2 is not a local address here: the cap in all is not tried");
    }

    // An organisation from the first address is still served: a lookup and
    // the console, on connections of their own.
    let mut organisation = Vec::new();
    for _ in 0..3 {
        let mut conn = connect(&t, Some(ANDERLECHT)).await;
        let answer = ask(&mut conn, &get("/console/")).await.expect("served");
        assert_eq!(answer.status, 200, "{answer:?}");
        organisation.push(conn);
    }
    let answer = ask(&mut organisation[0], &lookup_request(&t))
        .await
        .expect("a lookup is answered");
    assert_eq!(answer.status, 200, "{answer:?}");
    // The address's seventh connection, certificate or not, is closed.
    if let Some(mut conn) = connect_from(&t, Some(ANDERLECHT), None).await {
        let _ = conn.write_all(get("/console/").as_bytes()).await;
        assert!(
            closed_within(&mut conn, PROMPTLY).await,
            "a seventh connection from one address is kept"
        );
    }
    assert_eq!(refused("per_address"), 1);
    // The connections kept are still served.
    for conn in anonymous.iter_mut().chain(&mut organisation) {
        let answer = ask(conn, &get("/console/")).await.expect("still served");
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    // One closed frees its slot for the next connection.
    drop(anonymous.pop());
    let mut freed = None;
    for _ in 0..50 {
        // The broker notices the close when it reads the connection's end:
        // tried again until it has.
        if let Some(mut conn) = connect_from(&t, None, None).await
            && let Some(answer) = ask(&mut conn, &get("/console/")).await
        {
            freed = Some((answer, conn));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (answer, _conn) = freed.expect("a closed connection's slot is freed");
    assert_eq!(answer.status, 200, "{answer:?}");
    drop(elsewhere);
    t.stop().await;
}

#[tokio::test]
async fn a_peer_that_leaves_its_answers_unread_holds_no_connection() {
    let t = start_with(short_timeouts()).await;
    // A thousand requests for a 32 KiB file at once, and no answer read:
    // far more than the sockets' buffers hold, so the broker's writes
    // wait. Once they have waited for the body timeout without the client
    // taking anything, the connection is closed.
    let mut conn = connect(&t, None).await;
    let requests = get("/console/console.js").repeat(1000);
    conn.write_all(requests.as_bytes())
        .await
        .expect("send the requests");
    conn.flush().await.expect("flush");
    // The client that does not read: longer than the body timeout (0.5 s)
    // and shorter than the header timeout (2 s), which would close the
    // connection once every answer was sent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut taken = 0usize;
    let closed = tokio::time::timeout(PROMPTLY, async {
        let mut chunk = [0u8; 65536];
        loop {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => taken += n,
            }
        }
    })
    .await
    .is_ok();
    assert!(closed, "the connection stays open");
    assert!(
        taken < 1000 * 32 * 1024 / 2,
        "every answer was sent ({taken} bytes): the broker waited for the client"
    );
    t.stop().await;
}
