//! The HTTP/JSON face: HTTP/1.1 over the broker's mutual TLS, for back
//! offices that do not speak gRPC. A call is transcoded (`transcode`) into
//! the RPC's protobuf message and made in process on the very services and
//! layers the gRPC server runs (`server::with_layers`): the same identity
//! (the connection's certificate as the `Arc<PeerIdentity>` extension, the
//! `Authorization: Bearer` token), the same permission rule, decision,
//! audit entry, metrics and span (`traceparent` is passed on). The answer
//! is transcoded back to JSON; an error becomes the JSON of its
//! `google.rpc.Status`, with the same `ErrorInfo`, under the HTTP status of
//! its gRPC code. `GET /openapi.json` serves the OpenAPI document of the
//! same routes.
//!
//! Anyone who reaches the port may connect, with or without a certificate,
//! so what one peer holds is bounded (`HttpSettings`): connections per
//! address and without a certificate (`connection_slots`), the time a
//! request's headers and body may take, and the body read (none for the
//! console's files, a little for paths no operation is served on).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{ALLOW, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::transport::server::Connected;
use tower::ServiceExt;

use crate::transcode::{HttpApi, Route, Routed};
use semel_server::error::ApiError;
pub use semel_server::http_settings::HttpSettings;
use semel_server::server::{Face, FaceParts, FaceServing, FaceShutdown, Layered};
use semel_server::state::Broker;
use semel_server::tls::PeerIdentity;

/// The largest body the face reads for one message (JSON is larger than
/// the protobuf the gRPC face limits to 64 KiB), and for a batch (a
/// thousand lookups of a few hundred bytes each, with room to spare).
pub const MAX_BODY: usize = 256 * 1024;
pub const MAX_BATCH_BODY: usize = 4 * 1024 * 1024;

/// The largest body read (and dropped) for a request no operation is
/// served for: enough for any request a client meant for an operation,
/// so that its connection stays usable; a larger one is left unread and
/// the connection closed.
pub const UNSERVED_BODY: usize = 16 * 1024;

/// The header that carries the request id, as the body's `requestId` or
/// the error's `ErrorInfo` does.
pub const REQUEST_ID: &str = "x-request-id";

/// Everything a call needs: the routes, the layered services, the document.
pub struct HttpFace {
    api: HttpApi,
    service: Layered<tonic::service::Routes>,
    broker: Arc<Broker>,
    openapi: Bytes,
    settings: HttpSettings,
}

impl HttpFace {
    pub fn new(
        broker: Arc<Broker>,
        service: Layered<tonic::service::Routes>,
        settings: HttpSettings,
    ) -> anyhow::Result<Arc<HttpFace>> {
        let api = HttpApi::load().context("read the contract's HTTP rules")?;
        let openapi = Bytes::from(crate::openapi::render(&api));
        Ok(Arc::new(HttpFace {
            api,
            service,
            broker,
            openapi,
            settings,
        }))
    }

    /// Answers one HTTP request from a peer.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: Arc<PeerIdentity>,
    ) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let routed = self.api.route(&parts.method, &path);
        // The console's files hold no data: served to anyone, as a web
        // server serves a page; the calls they make are identified. No body
        // is read for them (a browser sends none, and anyone could send one
        // as slowly as they like): one announced is left unread, and the
        // connection closed after the answer, since what is left of it
        // would be taken for the next request.
        if path == crate::console::PREFIX || path.starts_with("/console/") {
            let mut resp = crate::console::serve(&parts.method, &path);
            if announces_body(&body) {
                close_after(&mut resp);
            }
            return resp;
        }
        // Without a certificate nothing is served: refused before the body
        // is read or parsed (an unidentified client costs the broker no
        // memory), and the connection is closed.
        if peer.certificate.is_none() {
            let mut resp = self.error(
                ApiError::unauthenticated(
                    "CLIENT_CERTIFICATE_REQUIRED",
                    "present your organisation's client certificate (mutual TLS)",
                )
                .into_status(),
            );
            resp.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        let (route, params) = match routed {
            Routed::Found(route, params) => (route, params),
            other => {
                // The answer needs no body. A small one is read and dropped
                // (for the body's time at most), so that the client's
                // connection stays usable for its next request; a larger or
                // slower one is left, and the connection closed after the
                // answer.
                let drained = !announces_body(&body) || self.drop_small_body(body).await;
                let mut resp = self.unrouted(other, &parts.method, &path, &peer);
                if !drained {
                    close_after(&mut resp);
                }
                return resp;
            }
        };
        let authorization = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let limit = if route.streams_in() {
            MAX_BATCH_BODY
        } else {
            MAX_BODY
        };
        let refuse = async |error: ApiError| {
            let error = semel_server::codec::refuse_unreadable(
                &self.broker,
                Some(&peer),
                authorization.as_deref(),
                Some(route.rule),
                error,
            )
            .await;
            self.error(error.into_status())
        };
        // A body sent too slowly holds a connection and a task: it has a
        // time to arrive in, after which the rest is not read and the
        // connection is closed.
        let read =
            tokio::time::timeout(self.settings.body_timeout, read_body(body, limit, DRAIN)).await;
        let Ok(read) = read else {
            let mut resp = refuse(ApiError::new(
                tonic::Code::DeadlineExceeded,
                "REQUEST_TIMEOUT",
                format!(
                    "the request body did not arrive within {} s; send it at once",
                    self.settings.body_timeout.as_secs_f64()
                ),
            ))
            .await;
            close_after(&mut resp);
            return resp;
        };
        let bytes = match read {
            Ok(Some(b)) => b,
            Ok(None) => {
                return refuse(ApiError::new(
                    tonic::Code::OutOfRange,
                    "REQUEST_TOO_LARGE",
                    format!(
                        "the request is larger than the broker accepts ({} KiB); send a smaller one",
                        limit / 1024
                    ),
                ))
                .await;
            }
            Err(()) => {
                let mut resp = refuse(ApiError::invalid(
                    "request",
                    "MALFORMED_REQUEST",
                    "the request body could not be read",
                ))
                .await;
                close_after(&mut resp);
                return resp;
            }
        };
        if !bytes.is_empty() && !is_json(parts.headers.get(CONTENT_TYPE)) {
            return refuse(ApiError::new(
                tonic::Code::InvalidArgument,
                "UNSUPPORTED_MEDIA_TYPE",
                "send the body as Content-Type: application/json",
            ))
            .await;
        }
        let frames = match self.api.request(route, params, parts.uri.query(), &bytes) {
            Ok(f) => f,
            Err(crate::transcode::Unreadable::TooLarge(why)) => {
                return refuse(ApiError::new(
                    tonic::Code::OutOfRange,
                    "REQUEST_TOO_LARGE",
                    why,
                ))
                .await;
            }
            Err(crate::transcode::Unreadable::Malformed(why)) => {
                // Whatever the client put where a name goes, no national
                // number goes back or into a log.
                let why = semel_core::redact_national_numbers(&why).into_owned();
                return refuse(ApiError::invalid("request", "MALFORMED_JSON", why)).await;
            }
        };
        self.call(
            route,
            &parts.headers,
            authorization.as_deref(),
            peer.clone(),
            frames,
        )
        .await
    }

    /// Reads and drops a body no answer needs, if it is small
    /// ([`UNSERVED_BODY`]) and arrives within the body timeout: whether it
    /// was read whole.
    async fn drop_small_body(&self, body: Incoming) -> bool {
        if body.size_hint().lower() > UNSERVED_BODY as u64 {
            return false;
        }
        let read = read_body(body, UNSERVED_BODY, UNSERVED_BODY);
        matches!(
            tokio::time::timeout(self.settings.body_timeout, read).await,
            Ok(Ok(Some(_)))
        )
    }

    /// The answer to a request no operation is served for: without a
    /// certificate, 401 whatever the path; `/openapi.json`; else 405 or 404.
    fn unrouted(
        &self,
        routed: Routed<'_>,
        method: &Method,
        path: &str,
        peer: &Arc<PeerIdentity>,
    ) -> Response<Full<Bytes>> {
        // Nothing but the RPCs (which check and record callers
        // themselves) answers a certificate that identifies no registered
        // organisation in good standing: missing, revoked, expired,
        // unregistered or suspended.
        if let Err(denied) = self.broker.certified(Some(peer), "http") {
            return self.error(denied.error.into_status());
        }
        let allowed = match routed {
            _ if *method == Method::GET && path == "/openapi.json" => {
                return Response::builder()
                    .header(CONTENT_TYPE, "application/json")
                    .body(Full::new(self.openapi.clone()))
                    .unwrap_or_else(|_| failed());
            }
            Routed::WrongMethod(allowed) => allowed,
            Routed::Found(..) | Routed::NotFound => {
                return self.error(
                    ApiError::not_found(
                        "NO_SUCH_ROUTE",
                        "no operation is served on this path; /openapi.json lists them",
                    )
                    .into_status(),
                );
            }
        };
        let allow = allowed
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let mut resp = self.error(
            ApiError::new(
                tonic::Code::Unimplemented,
                "METHOD_NOT_ALLOWED",
                format!("{method} is not served on this path; it takes {allow}"),
            )
            .into_status(),
        );
        if let Ok(v) = HeaderValue::from_str(&allow) {
            resp.headers_mut().insert(ALLOW, v);
        }
        resp
    }

    /// Makes the call on the layered services, as the gRPC server would.
    async fn call(
        &self,
        route: &Route,
        headers: &hyper::HeaderMap,
        authorization: Option<&str>,
        peer: Arc<PeerIdentity>,
        frames: Bytes,
    ) -> Response<Full<Bytes>> {
        // The authority the client named, as a gRPC call carries it (the
        // span's server.address).
        let uri = headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<hyper::http::uri::Authority>().ok())
            .and_then(|a| {
                format!("https://{a}{}", route.grpc_path)
                    .parse::<hyper::Uri>()
                    .ok()
            })
            .unwrap_or_else(|| hyper::Uri::from_static("/"));
        let uri = if uri.path() == "/" {
            route.grpc_path.parse().unwrap_or(uri)
        } else {
            uri
        };
        let mut req = tonic::codegen::http::Request::post(uri)
            .header(CONTENT_TYPE, "application/grpc")
            .header("te", "trailers");
        if let Some(a) = authorization {
            req = req.header(AUTHORIZATION, a);
        }
        for name in ["traceparent", "tracestate"] {
            if let Some(v) = headers.get(name) {
                req = req.header(name, v);
            }
        }
        let Ok(mut req) = req.body(tonic::body::Body::new(Full::new(frames))) else {
            return self.error(ApiError::internal("the call could not be built").into_status());
        };
        req.extensions_mut().insert(peer);
        let Ok(resp) = self.service.clone().oneshot(req).await;
        let (parts, body) = resp.into_parts();
        if let Some(status) = tonic::Status::from_header_map(&parts.headers)
            && status.code() != tonic::Code::Ok
        {
            return self.error(status);
        }
        let collected = match body.collect().await {
            Ok(c) => c,
            Err(e) => return self.error(e),
        };
        if let Some(status) = collected
            .trailers()
            .and_then(tonic::Status::from_header_map)
            && status.code() != tonic::Code::Ok
        {
            return self.error(status);
        }
        match self.api.response(route, collected.to_bytes()) {
            Ok((json, request_id)) => {
                let mut resp = Response::builder()
                    .status(StatusCode::OK)
                    .header(CONTENT_TYPE, "application/json");
                if let Some(id) = request_id {
                    resp = resp.header(REQUEST_ID, id);
                }
                resp.body(Full::new(Bytes::from(json)))
                    .unwrap_or_else(|_| failed())
            }
            Err(why) => {
                tracing::error!(rpc = route.rule.method, error = %why, "an answer could not be transcoded to JSON");
                self.error(
                    ApiError::internal("the answer could not be transcoded to JSON").into_status(),
                )
            }
        }
    }

    /// An error as HTTP: the status of its code (or reason), the JSON of
    /// its `google.rpc.Status`, the request id in a header.
    fn error(&self, status: tonic::Status) -> Response<Full<Bytes>> {
        use tonic_types::StatusExt;
        let info = status.get_details_error_info();
        let code =
            crate::transcode::http_status(status.code(), info.as_ref().map(|i| i.reason.as_str()));
        let mut resp = Response::builder()
            .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header(CONTENT_TYPE, "application/json");
        if let Some(id) = info.as_ref().and_then(|i| i.metadata.get("request_id")) {
            resp = resp.header(REQUEST_ID, id.as_str());
        }
        resp.body(Full::new(Bytes::from(self.api.status_json(&status))))
            .unwrap_or_else(|_| failed())
    }
}

/// The answer when an answer could not be built: never an empty success.
fn failed() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(
        br#"{"code":13,"message":"the broker could not build its answer","details":[]}"#,
    )));
    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Whether a request announced a body (a length above zero, or chunks).
fn announces_body(body: &Incoming) -> bool {
    !body.is_end_stream()
}

/// Tells the client that the connection closes after this answer (hyper
/// then closes it): what is left of a body not read would otherwise be
/// taken for the next request.
fn close_after(resp: &mut Response<Full<Bytes>>) {
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
}

/// The body, or `None` when it is larger than `limit`. A body too large is
/// still read (and dropped) up to `drain`, so that the client, which may
/// still be sending, reads the refusal rather than a reset connection.
/// Callers bound the time it takes.
async fn read_body(mut body: Incoming, limit: usize, drain: usize) -> Result<Option<Bytes>, ()> {
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ())?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            kept.extend_from_slice(&data);
        } else if seen > drain {
            break;
        }
    }
    Ok((seen <= limit).then(|| Bytes::from(kept)))
}

/// How much of an operation's body too large is read before the
/// connection is closed.
const DRAIN: usize = 16 * 1024 * 1024;

fn is_json(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("application/json") || v.to_ascii_lowercase().ends_with("+json")
        })
}

/// The face on its listener, not serving yet: what the binary and the demo
/// hand the broker ([`semel_server::server::serve_broker_with_face`]), which
/// starts it with its layered services once they are built.
pub struct HttpListener {
    listener: TcpListener,
    settings: HttpSettings,
}

/// The HTTP/JSON face on `listener`, with `settings`, for the broker to start.
pub fn face(listener: TcpListener, settings: HttpSettings) -> Box<dyn Face> {
    Box::new(HttpListener { listener, settings })
}

impl Face for HttpListener {
    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.local_addr().ok()
    }

    fn start(
        self: Box<Self>,
        parts: FaceParts,
        shutdown: FaceShutdown,
    ) -> anyhow::Result<FaceServing> {
        let FaceParts {
            broker,
            service,
            tls,
        } = parts;
        let face = HttpFace::new(broker, service, self.settings)?;
        Ok(Box::pin(serve(self.listener, tls, face, shutdown)))
    }
}

/// Serves the face on `listener` (mutual TLS with the broker's reloadable
/// config, HTTP/1.1) until `shutdown`, then lets calls in flight finish.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    face: Arc<HttpFace>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(addr = %addr, "HTTP/JSON face listening (mutual TLS)");
    }
    // Each connection holds a slot from its acceptance to its end; one over
    // a cap (in all, per address, without a certificate) is closed at once
    // rather than left waiting, so that waiting connections cannot pile up
    // either.
    let metrics = &face.broker.metrics;
    let slots = semel_server::connection_slots::ConnectionSlots::new(
        face.settings.caps(),
        semel_server::connection_slots::ConnectionMetrics {
            face: "http",
            open: metrics.http_connections.clone(),
            refused: metrics.http_connections_refused.clone(),
        },
    );
    let mut incoming = semel_server::tls::incoming_admitted(
        listener,
        tls,
        Some(vec![b"http/1.1".to_vec()]),
        Some(Arc::new(slots)),
    );
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let conn = tokio::select! {
            conn = incoming.next() => conn,
            () = &mut shutdown => break,
        };
        let Some(Ok(conn)) = conn else {
            break;
        };
        let peer = conn.connect_info();
        let header_timeout = face.settings.header_timeout;
        let write_timeout = face.settings.body_timeout;
        let face = face.clone();
        let service = hyper::service::service_fn(move |req| {
            let face = face.clone();
            let peer = peer.clone();
            async move { Ok::<_, Infallible>(face.handle(req, peer).await) }
        });
        // hyper starts the header timeout whenever it waits for a
        // request's head: at the start, and after each answer on a
        // kept-alive connection, so that it closes idle connections too.
        let served = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(
                hyper_util::rt::TokioIo::new(Closing {
                    inner: Some(conn),
                    shut: false,
                    write_timeout,
                    stalled: None,
                }),
                service,
            );
        let served = graceful.watch(served);
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::debug!(error = %e, "HTTP/JSON connection ended");
            }
        });
    }
    drop(incoming);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(30)) => {
            tracing::warn!("HTTP/JSON calls still in flight after 30 s; closing their connections");
        }
    }
    Ok(())
}

/// A connection hyper may drop without shutting it down: after a request it
/// cannot parse, it writes its 400 and lets go. Closed then, with the rest
/// of the request unread, the socket would send a reset, and the client
/// would lose the 400. So a connection dropped that way is closed cleanly
/// (TLS close_notify) and what the client still sends is read and
/// discarded, for a second at most.
///
/// It also bounds how long an answer waits for the client to take it: a
/// client that sends requests and reads no answer would otherwise hold the
/// connection for ever, hyper waiting on a full socket. A write that makes
/// no progress for `write_timeout` fails, and the connection with it.
struct Closing {
    inner: Option<semel_server::tls::TlsConn>,
    shut: bool,
    write_timeout: Duration,
    /// Since when a write has been waiting, if one is.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Closing {
    /// A write's outcome, with the time it may wait without progress.
    fn unless_stalled<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        polled: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took no part of the answer in time",
            )));
        }
        std::task::Poll::Pending
    }
}

impl tokio::io::AsyncRead for Closing {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.inner.as_mut() {
            Some(c) => std::pin::Pin::new(c).poll_read(cx, buf),
            None => std::task::Poll::Ready(Ok(())),
        }
    }
}

impl tokio::io::AsyncWrite for Closing {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = match self.inner.as_mut() {
            Some(c) => std::pin::Pin::new(c).poll_write(cx, buf),
            None => std::task::Poll::Ready(Ok(0)),
        };
        self.unless_stalled(cx, polled)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = match self.inner.as_mut() {
            Some(c) => std::pin::Pin::new(c).poll_flush(cx),
            None => std::task::Poll::Ready(Ok(())),
        };
        self.unless_stalled(cx, polled)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = match self.inner.as_mut() {
            Some(c) => std::pin::Pin::new(c).poll_shutdown(cx),
            None => std::task::Poll::Ready(Ok(())),
        };
        let done = self.unless_stalled(cx, polled);
        if done.is_ready() {
            self.shut = true;
        }
        done
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        if self.shut {
            return;
        }
        let (Some(mut conn), Ok(runtime)) =
            (self.inner.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = conn.shutdown().await;
                let mut buf = [0u8; 8192];
                let mut read = 0usize;
                while read < DRAIN {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
            })
            .await;
        });
    }
}
