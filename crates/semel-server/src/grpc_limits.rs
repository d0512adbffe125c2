//! What one peer may hold of the gRPC port (`[grpc]` in the
//! configuration): connections (per address, without a certificate, in
//! all, handshakes in progress: [`crate::connection_slots`]), HTTP/2 streams
//! per connection, and calls held open, each bounded, so that an outsider
//! who reaches the port cannot exhaust the broker's memory before any
//! authentication.
//!
//! Health and reflection answer without a client certificate (probes and
//! tools call them), and a `grpc.health.v1.Health/Watch` stream or a
//! reflection stream stays open as long as its client likes: [`CallSlots`]
//! counts the calls open on connections without a certificate, and the
//! Watch streams of everyone, and refuses one over a cap at once with
//! RESOURCE_EXHAUSTED (`STREAMS_EXCEEDED`), counted in
//! `semel_grpc_calls_refused_total`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tonic::codegen::http;

use crate::error::ApiError;
use crate::metrics::{Metrics, RefusedConnectionLabels};
use crate::tls::PeerIdentity;

pub use semel_config::settings::GrpcSettings;

/// The method whose streams anyone may hold open for as long as they like.
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";

/// The calls held open on the gRPC port, and their caps.
#[derive(Clone)]
pub struct CallSlots(Arc<Calls>);

struct Calls {
    per_connection_without_certificate: usize,
    without_certificate: usize,
    watches_per_connection: usize,
    watches: usize,
    held: Mutex<HeldCalls>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct HeldCalls {
    without_certificate: usize,
    watches: usize,
    /// By connection: the address of the connection's `PeerIdentity`, which
    /// every call on it shares and each held call keeps alive (so the
    /// address names no other connection while it is counted here).
    by_connection: HashMap<usize, ByConnection>,
}

#[derive(Default)]
struct ByConnection {
    without_certificate: usize,
    watches: usize,
}

/// What a call holds until its answer ends.
pub struct CallSlot {
    calls: Arc<Calls>,
    /// Keeps the connection's key its own while the slot is held.
    connection: Option<Arc<PeerIdentity>>,
    without_certificate: bool,
    watch: bool,
}

impl CallSlots {
    pub fn new(settings: &GrpcSettings, metrics: Arc<Metrics>) -> CallSlots {
        CallSlots(Arc::new(Calls {
            per_connection_without_certificate: settings
                .max_calls_per_connection_without_certificate,
            without_certificate: settings.max_calls_without_certificate,
            watches_per_connection: settings.max_health_watches_per_connection,
            watches: settings.max_health_watches,
            held: Mutex::default(),
            metrics,
        }))
    }

    /// A call to `path` on the connection of `peer`: its slot, or the cap it
    /// would go over.
    pub fn take(
        &self,
        peer: Option<&Arc<PeerIdentity>>,
        path: &str,
    ) -> Result<Option<CallSlot>, &'static str> {
        let calls = &self.0;
        let without_certificate = peer.is_none_or(|p| p.certificate.is_none());
        let watch = path == HEALTH_WATCH;
        if !without_certificate && !watch {
            // An organisation's calls: bounded by the streams per
            // connection and the connections per address.
            return Ok(None);
        }
        let key = peer.map_or(0, |p| Arc::as_ptr(p) as usize);
        let mut held = calls.held();
        let all_without = held.without_certificate;
        let all_watches = held.watches;
        let mine = held.by_connection.entry(key).or_default();
        let refused = if without_certificate
            && mine.without_certificate >= calls.per_connection_without_certificate
        {
            Some("per_connection_without_certificate")
        } else if without_certificate && all_without >= calls.without_certificate {
            Some("without_certificate")
        } else if watch && mine.watches >= calls.watches_per_connection {
            Some("health_watches_per_connection")
        } else if watch && all_watches >= calls.watches {
            Some("health_watches")
        } else {
            None
        };
        if let Some(reason) = refused {
            if mine.without_certificate == 0 && mine.watches == 0 {
                held.by_connection.remove(&key);
            }
            drop(held);
            calls
                .metrics
                .grpc_calls_refused
                .get_or_create(&RefusedConnectionLabels { reason })
                .inc();
            return Err(reason);
        }
        if without_certificate {
            mine.without_certificate += 1;
        }
        if watch {
            mine.watches += 1;
        }
        if without_certificate {
            held.without_certificate += 1;
        }
        if watch {
            held.watches += 1;
            calls.metrics.grpc_health_watches.inc();
        }
        Ok(Some(CallSlot {
            calls: self.0.clone(),
            connection: peer.cloned(),
            without_certificate,
            watch,
        }))
    }
}

impl Calls {
    fn held(&self) -> MutexGuard<'_, HeldCalls> {
        // Each change is made whole under the lock.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let key = self
            .connection
            .as_ref()
            .map_or(0, |p| Arc::as_ptr(p) as usize);
        let mut held = self.calls.held();
        if self.without_certificate {
            held.without_certificate = held.without_certificate.saturating_sub(1);
        }
        if self.watch {
            held.watches = held.watches.saturating_sub(1);
            self.calls.metrics.grpc_health_watches.dec();
        }
        if let Some(mine) = held.by_connection.get_mut(&key) {
            if self.without_certificate {
                mine.without_certificate = mine.without_certificate.saturating_sub(1);
            }
            if self.watch {
                mine.watches = mine.watches.saturating_sub(1);
            }
            if mine.without_certificate == 0 && mine.watches == 0 {
                held.by_connection.remove(&key);
            }
        }
    }
}

/// [`CallSlots`] and the unary calls' timeout as a tower layer, outside
/// every other layer of the gRPC port: a call over a cap costs no more than
/// its refusal.
#[derive(Clone)]
pub struct CallSlotsLayer {
    slots: CallSlots,
    timeout: Duration,
}

impl CallSlotsLayer {
    pub fn new(settings: &GrpcSettings, metrics: Arc<Metrics>) -> CallSlotsLayer {
        CallSlotsLayer {
            slots: CallSlots::new(settings, metrics),
            timeout: settings.request_timeout,
        }
    }
}

impl<S> tower::Layer<S> for CallSlotsLayer {
    type Service = HoldingCalls<S>;
    fn layer(&self, inner: S) -> HoldingCalls<S> {
        HoldingCalls {
            inner,
            slots: self.slots.clone(),
            timeout: self.timeout,
        }
    }
}

#[derive(Clone)]
pub struct HoldingCalls<S> {
    inner: S,
    slots: CallSlots,
    timeout: Duration,
}

type Answer = http::Response<tonic::body::Body>;

/// The most of a refused call's request read before its refusal is sent.
const REFUSED_REQUEST: usize = 64 * 1024;

/// Reads a refused call's request to its end (up to [`REFUSED_REQUEST`]):
/// a stream answered before its request ended is reset, and HTTP/2 closes
/// a connection after a thousand such resets, so that a client refused
/// often (a probe, an organisation's pool) would lose its calls in flight
/// with it. The timeout of calls bounds the wait.
async fn refuse_after_request<B>(body: B)
where
    B: Body + Send,
{
    let mut body = std::pin::pin!(body);
    let mut read = 0usize;
    while read <= REFUSED_REQUEST {
        match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            Some(Ok(frame)) => {
                read += frame.data_ref().map_or(0, hyper::body::Buf::remaining);
            }
            Some(Err(_)) | None => return,
        }
    }
}

impl<S, B> tower::Service<http::Request<B>> for HoldingCalls<S>
where
    B: Body + Send + 'static,
    S: tower::Service<http::Request<B>, Response = Answer>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Answer;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Answer, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let peer = req.extensions().get::<Arc<PeerIdentity>>();
        let slot = match self.slots.take(peer, req.uri().path()) {
            Ok(slot) => slot,
            Err(_) => {
                let refusal = ApiError::new(
                    Code::ResourceExhausted,
                    "STREAMS_EXCEEDED",
                    "too many calls are open: on this connection, or without a client \
                     certificate, or grpc.health.v1.Health/Watch streams; close one first",
                )
                .into_status()
                .into_http();
                let timeout = self.timeout;
                return Box::pin(async move {
                    let _ =
                        tokio::time::timeout(timeout, refuse_after_request(req.into_body())).await;
                    Ok(refusal)
                });
            }
        };
        let answer = self.inner.call(req);
        let timeout = self.timeout;
        Box::pin(async move {
            // Until the answer starts: a unary call whole, a stream's
            // request only (its answer starts once the handler returns the
            // stream), so that Subscribe, LookupBatch and Health/Watch are
            // never cut. A client's own shorter deadline is tonic's to keep.
            let Ok(answer) = tokio::time::timeout(timeout, answer).await else {
                return Ok(ApiError::new(
                    Code::DeadlineExceeded,
                    "CALL_TIMEOUT",
                    format!(
                        "the call took longer than the broker allows a call ({} s)",
                        timeout.as_secs()
                    ),
                )
                .into_status()
                .into_http());
            };
            let answer = answer?;
            Ok(match slot {
                None => answer,
                // Held until the answer's last frame is sent, or the stream
                // is reset.
                Some(slot) => answer.map(|body| {
                    tonic::body::Body::new(Holding {
                        inner: body,
                        _slot: slot,
                    })
                }),
            })
        })
    }
}

/// An answer's body that holds its call's slot until it is dropped.
struct Holding {
    inner: tonic::body::Body,
    _slot: CallSlot,
}

impl Body for Holding {
    type Data = <tonic::body::Body as Body>::Data;
    type Error = <tonic::body::Body as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::PeerIdentity;

    fn slots() -> (CallSlots, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let settings = GrpcSettings {
            max_calls_per_connection_without_certificate: 3,
            max_calls_without_certificate: 5,
            max_health_watches_per_connection: 2,
            max_health_watches: 3,
            ..GrpcSettings::default()
        };
        (CallSlots::new(&settings, metrics.clone()), metrics)
    }

    fn anonymous() -> Arc<PeerIdentity> {
        Arc::new(PeerIdentity { certificate: None })
    }

    fn refused(metrics: &Metrics, reason: &'static str) -> u64 {
        metrics
            .grpc_calls_refused
            .get_or_create(&RefusedConnectionLabels { reason })
            .get()
    }

    const CHECK: &str = "/grpc.health.v1.Health/Check";

    #[test]
    fn calls_without_a_certificate_are_capped_per_connection_and_in_all() {
        let (slots, metrics) = slots();
        let (a, b) = (anonymous(), anonymous());
        let mut held: Vec<_> = (0..3)
            .map(|_| slots.take(Some(&a), CHECK).expect("within the cap"))
            .collect();
        assert_eq!(
            slots.take(Some(&a), CHECK).err(),
            Some("per_connection_without_certificate")
        );
        held.push(slots.take(Some(&b), CHECK).expect("another connection"));
        held.push(slots.take(Some(&b), CHECK).expect("its second"));
        assert_eq!(
            slots.take(Some(&b), CHECK).err(),
            Some("without_certificate")
        );
        assert_eq!(refused(&metrics, "without_certificate"), 1);
        // A call that ends gives its place back.
        held.truncate(4);
        assert!(slots.take(Some(&b), CHECK).is_ok());
        drop(held);
        assert!(slots.0.held().by_connection.is_empty());
        assert_eq!(slots.0.held().without_certificate, 0);
    }

    #[test]
    fn health_watches_are_capped_per_connection_and_in_all() {
        let (slots, metrics) = slots();
        let (a, b) = (anonymous(), anonymous());
        let first = slots.take(Some(&a), HEALTH_WATCH).expect("first");
        let _second = slots.take(Some(&a), HEALTH_WATCH).expect("second");
        assert_eq!(
            slots.take(Some(&a), HEALTH_WATCH).err(),
            Some("health_watches_per_connection")
        );
        let _third = slots.take(Some(&b), HEALTH_WATCH).expect("third");
        assert_eq!(
            slots.take(Some(&b), HEALTH_WATCH).err(),
            Some("health_watches")
        );
        assert_eq!(metrics.grpc_health_watches.get(), 3);
        drop(first);
        assert!(slots.take(Some(&b), HEALTH_WATCH).is_ok());
        assert_eq!(refused(&metrics, "health_watches"), 1);
    }
}
