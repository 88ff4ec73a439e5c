//! The internal services' gRPC on the gateway's operator port: every call to `/pension.<service>.v1.<Service>/…`
//! is forwarded as it is to that service over NATS RPC, so `grpcurl` against one port reaches every service
//! without the gateway knowing their methods.

use kit::grpc::GrpcServer;
use kit::service::Platform;
use proto::names::Service;
use tower::ServiceExt;

/// The operator gRPC server: the four services, health and reflection.
pub fn server(platform: &Platform) -> GrpcServer {
    let mut router = axum::Router::new();
    for service in Service::ALL {
        let channel = platform
            .channel(service)
            .map_request(|request: http::Request<axum::body::Body>| request.map(tonic::body::Body::new));
        router = router.route_service(&format!("/{}/{{*method}}", service.grpc_name()), channel);
    }
    GrpcServer {
        routes: tonic::service::Routes::from(router),
        service_names: Service::ALL.iter().map(|service| service.grpc_name().to_owned()).collect(),
        descriptor_sets: vec![proto::FILE_DESCRIPTOR_SET],
    }
}
