//! Optional OpenTelemetry trace export: the broker's `tracing` spans are
//! sent to an OTLP collector over gRPC. Every incoming RPC gets a SERVER
//! span ([`RpcSpanLayer`]) that continues the caller's W3C trace context;
//! a lookup's span, its CLIENT span towards the source (`source.fetch`,
//! whose context the source receives in `traceparent`) and the audit append
//! sit inside it, so a trace follows a lookup from the consumer through the
//! broker to the authentic source.
//!
//! Spans carry request ids, enterprise numbers, dataset names, method names
//! and reason codes: never a national number, like the logs. A refusal or a
//! failure sets the span's status to Error with its reason code.
//!
//! When no collector is configured the spans' callsites stay disabled: the
//! layer checks that once per call and then does nothing else.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tonic::codegen::http;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use semel_config::settings::TelemetrySettings;

/// Marks `span` (a lookup's, a source call's) as a refusal or a failure:
/// status Error, with the reason code as its description.
pub(crate) fn set_error(span: &tracing::Span, reason: &str) {
    span.set_status(opentelemetry::trace::Status::error(reason.to_owned()));
}

/// Flushes and stops the exporter when dropped (at the end of `main`).
pub struct TelemetryGuard(SdkTracerProvider);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("warning: flush traces to the collector: {e}");
        }
    }
}

/// A `tracing` layer exporting spans to the collector, and the guard that
/// flushes them. Call from within the tokio runtime.
pub fn otlp_layer<S>(
    settings: &TelemetrySettings,
) -> anyhow::Result<(
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
    TelemetryGuard,
)>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.otlp_endpoint.clone())
        .build()
        .with_context(|| format!("OTLP exporter for {}", settings.otlp_endpoint))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("semel");
    // Only the attributes Semel sets are exported: the time a span was
    // entered or idle, the source file and line, the thread and the module
    // say nothing to whoever reads a trace, and cost bytes on every span.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false);
    Ok((layer, TelemetryGuard(provider)))
}

/// What is exported: Semel's own spans (at debug level, so that they stay
/// out of the logs), not those of the libraries under it (h2, hyper,
/// tonic), which would be many and say little. Put on the layer of
/// [`otlp_layer`].
pub fn export_filter() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new().with_target("semel_server", tracing::Level::DEBUG)
}

/// The W3C trace context of the current span, as metadata to send on.
/// Empty when no trace is exported.
pub fn trace_headers() -> HashMap<String, String> {
    let mut headers = HashMap::new();
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut headers);
    headers
}

/// Reads W3C trace context from an incoming request's headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The tower layer that makes one SERVER span per incoming RPC, named
/// `package.Service/Method` with the `rpc.*` attributes of the OpenTelemetry
/// semantic conventions, as the child of the caller's span when the request
/// carries `traceparent`. The span lasts until the response's last frame
/// (a stream's too), then records the gRPC status; any status but OK sets
/// the span's status to Error with the reason code of the `ErrorInfo` (or,
/// for errors without one, the gRPC code's name).
#[derive(Clone)]
pub struct RpcSpanLayer {
    /// The methods served, as `package.Service/Method`: only these names
    /// reach a span, whatever path a client sent.
    methods: Arc<HashSet<&'static str>>,
}

impl RpcSpanLayer {
    pub fn new(methods: impl IntoIterator<Item = &'static str>) -> Self {
        RpcSpanLayer {
            methods: Arc::new(methods.into_iter().collect()),
        }
    }
}

impl<S> tower::Layer<S> for RpcSpanLayer {
    type Service = RpcSpans<S>;
    fn layer(&self, inner: S) -> RpcSpans<S> {
        RpcSpans {
            inner,
            methods: self.methods.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcSpans<S> {
    inner: S,
    methods: Arc<HashSet<&'static str>>,
}

type TracedFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for RpcSpans<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::Either<S::Future, TracedFuture<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let span = tracing::debug_span!(
            "rpc",
            otel.name = tracing::field::Empty,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = tracing::field::Empty,
            rpc.method = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
            server.address = tracing::field::Empty,
            server.port = tracing::field::Empty,
        );
        // No collector (nor debug logs): nothing more is done, not even an
        // allocation.
        if span.is_disabled() {
            return futures::future::Either::Left(self.inner.call(req));
        }
        let path = req.uri().path().trim_start_matches('/');
        match self
            .methods
            .get(path)
            .and_then(|m| Some((m, m.split_once('/')?)))
        {
            Some((name, (service, method))) => {
                span.record("otel.name", *name);
                span.record("rpc.service", service);
                span.record("rpc.method", method);
            }
            None => {
                span.record("otel.name", "grpc");
                span.record("rpc.method", "_OTHER");
            }
        }
        // The name the client called the broker by: a host name or an
        // address, never free text (the header is the client's to fill).
        if let Some(authority) = req.uri().authority() {
            let host = authority.host();
            if host.len() <= 253
                && matches!(
                    semel_core::redact_national_numbers(host),
                    std::borrow::Cow::Borrowed(_)
                )
            {
                span.record("server.address", host);
                if let Some(port) = authority.port_u16() {
                    span.record("server.port", i64::from(port));
                }
            }
        }
        // The consumer's trace continues here. Without (valid) trace
        // context the span starts a trace of its own.
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        let fut = span.in_scope(|| self.inner.call(req));
        let traced = span.clone();
        futures::future::Either::Right(Box::pin(
            async move {
                let resp = fut.await?;
                // An error is usually trailers-only: its status is in the
                // headers. Otherwise it comes in the body's trailers.
                if resp.headers().contains_key("grpc-status") {
                    finish(&traced, resp.headers());
                    return Ok(resp);
                }
                Ok(resp.map(|body| {
                    tonic::body::Body::new(TracedBody {
                        inner: body,
                        span: Some(traced),
                    })
                }))
            }
            .instrument(span),
        ))
    }
}

/// Records the gRPC status in `headers` (or trailers) on the server span.
fn finish(span: &tracing::Span, headers: &http::HeaderMap) {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Unknown, tonic::Code::from_i32);
    if code == tonic::Code::Ok {
        span.record("rpc.grpc.status_code", 0_i64);
        return;
    }
    let reason = tonic::Status::from_header_map(headers)
        .and_then(|s| tonic_types::StatusExt::get_details_error_info(&s))
        .map(|info| info.reason)
        .filter(|r| crate::reasons::is_listed(r));
    fail(span, code, reason.as_deref());
}

/// Marks `span` failed with gRPC `code`: the span's status is Error, its
/// description the reason code (one of `reasons::REASONS`, never caller
/// text) or else the code's name.
pub(crate) fn fail(span: &tracing::Span, code: tonic::Code, reason: Option<&str>) {
    span.record("rpc.grpc.status_code", code as i64);
    set_error(span, reason.unwrap_or_else(|| code_name(code)));
}

/// The canonical name of a gRPC code, as in `google.rpc.Code`.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A response body that records the call's status on its server span when
/// the trailers pass, and keeps the span open until then.
struct TracedBody {
    inner: tonic::body::Body,
    span: Option<tracing::Span>,
}

impl Drop for TracedBody {
    fn drop(&mut self) {
        // Dropped before its trailers: the client went away.
        if let Some(span) = self.span.take() {
            fail(&span, tonic::Code::Cancelled, None);
        }
    }
}

impl http_body::Body for TracedBody {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(span) = self.span.take()
                {
                    finish(&span, trailers);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(span) = self.span.take() {
                    fail(&span, tonic::Code::Internal, None);
                }
            }
            Poll::Ready(None) => {
                if let Some(span) = self.span.take() {
                    fail(&span, tonic::Code::Unknown, None);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer as _, Service as _};

    fn service() -> RpcSpans<
        impl tower::Service<
            http::Request<()>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        >,
    > {
        RpcSpanLayer::new(["semel.v1.LookupService/Lookup"]).layer(tower::service_fn(
            |_: http::Request<()>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
            },
        ))
    }

    #[test]
    fn without_a_collector_the_layer_only_passes_the_call_on() {
        // No subscriber: the span's callsite is disabled, the call is the
        // inner service's own future (no span, no box).
        let call = service().call(http::Request::new(()));
        assert!(matches!(call, futures::future::Either::Left(_)));
        // With a subscriber that wants the span, the call is traced.
        tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            let call = service().call(http::Request::new(()));
            assert!(matches!(call, futures::future::Either::Right(_)));
        });
    }
}
