//! The broker's services as one router, the layers every call goes through, and the sizes of request each reads.

use std::sync::Arc;

use crate::audit::AuditService;
use crate::lookup::LookupService;
use crate::proto::{
    audit_service_server::AuditServiceServer, consent_service_server::ConsentServiceServer,
    lookup_service_server::LookupServiceServer, persons_service_server::PersonsServiceServer,
    registry_service_server::RegistryServiceServer,
};
use crate::registry::RegistryService;
use crate::state::Broker;

/// The methods served: the only method names metrics and spans show.
fn served_methods() -> impl Iterator<Item = &'static str> + Clone {
    crate::permissions::RULES.iter().map(|r| r.method).chain([
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ])
}

/// The broker's own services (not health nor reflection), as one router:
/// the gRPC server serves them, and the HTTP/JSON face calls them.
pub fn broker_routes(broker: &Arc<Broker>) -> tonic::service::Routes {
    tonic::service::Routes::new(
        LookupServiceServer::new(LookupService::new(broker.clone()))
            .max_decoding_message_size(MAX_REQUEST),
    )
    .add_service(
        RegistryServiceServer::new(RegistryService::new(broker.clone()))
            .max_decoding_message_size(MAX_REGISTRY_REQUEST),
    )
    .add_service(
        AuditServiceServer::new(AuditService::new(broker.clone()))
            .max_decoding_message_size(MAX_REQUEST),
    )
    .add_service(
        PersonsServiceServer::new(crate::persons::PersonsService::new(broker.clone()))
            .max_decoding_message_size(MAX_REQUEST),
    )
    .add_service(
        ConsentServiceServer::new(crate::persons::ConsentService::new(broker.clone()))
            .max_decoding_message_size(MAX_REQUEST),
    )
    .add_service(
        crate::proto::mutation_service_server::MutationServiceServer::new(
            crate::mutations::MutationService::new(broker.clone()),
        )
        .max_decoding_message_size(MAX_PUBLISH_REQUEST),
    )
}

type Tagging = fn(
    tonic::codegen::http::Request<tonic::body::Body>,
) -> tonic::codegen::http::Request<tonic::body::Body>;

/// A service with the layers every call to the broker goes through,
/// whichever face it came in by.
pub type Layered<S> = crate::telemetry::RpcSpans<
    crate::metrics::RpcMetrics<tower::util::MapRequest<crate::codec::CodecErrors<S>, Tagging>>,
>;

/// Wraps `routes` in the layers, outermost first: the server span covers
/// everything else, refusals by the permission layer and the codec
/// included; metrics; the permission rule's tag; codec refusals.
pub fn with_layers<S>(broker: &Arc<Broker>, routes: S) -> Layered<S> {
    use tower::Layer;
    let tagged = crate::permissions::layer::<tonic::body::Body>().layer(
        crate::codec::CodecErrorsLayer {
            broker: broker.clone(),
        }
        .layer(routes),
    );
    let metered = crate::metrics::RpcMetricsLayer::new(broker.metrics.clone(), served_methods())
        .layer(tagged);
    crate::telemetry::RpcSpanLayer::new(served_methods()).layer(metered)
}

/// The largest lookup or audit request the broker reads.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The services the broker serves, as reflection lists them
/// (`semel.v1.SourceService` is the sources' to serve, not the broker's).
pub const SERVED_SERVICES: [&str; 9] = {
    use tonic::server::NamedService as N;
    [
        <LookupServiceServer<LookupService> as N>::NAME,
        <RegistryServiceServer<RegistryService> as N>::NAME,
        <AuditServiceServer<AuditService> as N>::NAME,
        <PersonsServiceServer<crate::persons::PersonsService> as N>::NAME,
        <ConsentServiceServer<crate::persons::ConsentService> as N>::NAME,
        <crate::proto::mutation_service_server::MutationServiceServer<
            crate::mutations::MutationService,
        > as N>::NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
};

/// The largest publication of changes (up to a thousand, with values).
pub(crate) const MAX_PUBLISH_REQUEST: usize = 4 * 1024 * 1024;

/// The largest registry request (a dataset with many described fields).
pub(crate) const MAX_REGISTRY_REQUEST: usize = 1024 * 1024;
