//! Requests tonic refuses itself, before any handler runs: a body larger
//! than the service's limit (the codec answers a bare `OUT_OF_RANGE`) or one
//! that does not decode as the RPC's message (a bare `INTERNAL`). Both are
//! bad client input. This layer gives them what every other refusal has: a
//! stable reason in an `ErrorInfo` with a request id, the right code, and an
//! audit entry attributed to the caller (or the identity refusal, when the
//! caller was not established) — a lookup that reached the broker is
//! recorded, even one that could not be read.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use semel_core::ReasonCode;
use tonic::Code;
use tonic::codegen::http;

use crate::error::ApiError;
use crate::state::{Broker, Credentials};
use crate::tls::PeerIdentity;

/// The layer, around every service of the broker (inside the permission
/// tagging, so it knows the RPC).
#[derive(Clone)]
pub struct CodecErrorsLayer {
    pub broker: Arc<Broker>,
}

impl<S> tower::Layer<S> for CodecErrorsLayer {
    type Service = CodecErrors<S>;
    fn layer(&self, inner: S) -> CodecErrors<S> {
        CodecErrors {
            inner,
            broker: self.broker.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CodecErrors<S> {
    inner: S,
    broker: Arc<Broker>,
}

type Response = http::Response<tonic::body::Body>;

impl<S, B> tower::Service<http::Request<B>> for CodecErrors<S>
where
    S: tower::Service<http::Request<B>, Response = Response>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // What identifies the call, kept for the rare refusal: reference
        // counts, no allocation.
        let peer = req.extensions().get::<Arc<PeerIdentity>>().cloned();
        let rule = req
            .extensions()
            .get::<crate::permissions::Rpc>()
            .and_then(|r| r.0);
        let authorization = req.headers().get(http::header::AUTHORIZATION).cloned();
        let broker = self.broker.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let resp = answer.await?;
            let Some(refusal) = refused_by_the_codec(&resp) else {
                return Ok(resp);
            };
            let token = authorization.as_ref().and_then(|v| v.to_str().ok());
            let error = refuse_unreadable(&broker, peer.as_ref(), token, rule, refusal).await;
            Ok(error.into_status().into_http())
        })
    }
}

/// Refuses a request that could not be read (too large, or not the RPC's
/// message, in protobuf or in JSON): attributed to the caller and audited
/// like any refusal when the caller is established, else recorded as the
/// identity refusal it is. `authorization` is the header's value.
pub async fn refuse_unreadable(
    broker: &Broker,
    peer: Option<&Arc<PeerIdentity>>,
    authorization: Option<&str>,
    rule: Option<&'static crate::permissions::Rule>,
    refusal: ApiError,
) -> ApiError {
    let credentials = Credentials {
        peer,
        token: authorization.and_then(crate::state::bearer_token),
        rule,
    };
    match broker.authorize_parts(&credentials) {
        Ok(caller) => {
            broker
                .refuse(&caller, refusal, ReasonCode::InvalidArgument, None)
                .await
        }
        Err(denied) => broker.record_refusal(*denied, None).await,
    }
}

/// The refusal a response from tonic's codec stands for, if it is one: a
/// status in the headers (trailers-only) without the details every
/// handler's error carries.
fn refused_by_the_codec(resp: &Response) -> Option<ApiError> {
    let headers = resp.headers();
    if headers.contains_key("grpc-status-details-bin") {
        return None;
    }
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)?;
    match code {
        Code::OutOfRange => Some(ApiError::new(
            Code::OutOfRange,
            "REQUEST_TOO_LARGE",
            "the request is larger than the broker accepts (64 KiB; 1 MiB for the registry); send a smaller one",
        )),
        Code::Internal => Some(ApiError::invalid(
            "request",
            "MALFORMED_REQUEST",
            "the request body is not a valid protobuf message of this RPC; check the client's generated code against the published contract",
        )),
        _ => None,
    }
}
