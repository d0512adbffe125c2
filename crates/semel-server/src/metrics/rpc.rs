//! The tower layer that counts every gRPC call by method and final status code.

use std::sync::Arc;

use tonic::codegen::http;

use super::{Metrics, RpcLabels};

/// The gRPC status code's name for `grpc-status`.
fn code_name(status: Option<&http::HeaderValue>) -> &'static str {
    status
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or("UNKNOWN", |c| {
            crate::telemetry::code_name(tonic::Code::from_i32(c))
        })
}

/// Counts every gRPC call by method and final status code: the code comes
/// from the response headers (an error before any message) or from the
/// trailers, read as the body ends; a call whose body is dropped before it
/// ends counts as `CANCELLED`.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
    /// The methods served, as `package.Service/Method`.
    methods: Arc<std::collections::HashSet<&'static str>>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>, methods: impl IntoIterator<Item = &'static str>) -> Self {
        RpcMetricsLayer {
            metrics,
            methods: Arc::new(methods.into_iter().collect()),
        }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

impl<S, B> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().trim_start_matches('/');
        let method = self.layer.methods.get(path).copied().unwrap_or("unknown");
        let metrics = self.layer.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            if let Some(status) = resp.headers().get("grpc-status") {
                let code = code_name(Some(status));
                metrics
                    .rpcs
                    .get_or_create(&RpcLabels { method, code })
                    .inc();
                return Ok(resp);
            }
            Ok(resp.map(|body| {
                tonic::body::Body::new(CountedBody {
                    inner: body,
                    count: Some((metrics, method)),
                })
            }))
        })
    }
}

/// A response body that counts its call when its trailers pass.
struct CountedBody {
    inner: tonic::body::Body,
    count: Option<(Arc<Metrics>, &'static str)>,
}

impl CountedBody {
    fn count(&mut self, code: &'static str) {
        if let Some((metrics, method)) = self.count.take() {
            metrics
                .rpcs
                .get_or_create(&RpcLabels { method, code })
                .inc();
        }
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        self.count("CANCELLED");
    }
}

impl http_body::Body for CountedBody {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = code_name(trailers.get("grpc-status"));
                    self.count(code);
                }
            }
            std::task::Poll::Ready(Some(Err(_))) => self.count("INTERNAL"),
            std::task::Poll::Ready(None) => self.count("UNKNOWN"),
            std::task::Poll::Pending => {}
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
