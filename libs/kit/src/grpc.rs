//! The gRPC server every service (and the gateway) uses: the service's routes plus gRPC health and reflection
//! (v1 and v1alpha, since grpcurl 1.8 speaks only v1alpha), with the trace layer around every call.

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::Connected;

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// What to serve: routes, the names health reports as serving, and the descriptor sets reflection lists.
pub struct GrpcServer {
    pub routes: Routes,
    /// Full gRPC service names (`pension.units.v1.Units`) reported SERVING by the health service.
    pub service_names: Vec<String>,
    /// Encoded `FileDescriptorSet`s for reflection, e.g. `proto::FILE_DESCRIPTOR_SET`.
    pub descriptor_sets: Vec<&'static [u8]>,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer").field("service_names", &self.service_names).finish_non_exhaustive()
    }
}

/// Why the gRPC server could not start.
#[derive(Debug, thiserror::Error)]
pub enum GrpcServeError {
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl GrpcServer {
    /// Serves until `shutdown` is cancelled; then health turns NOT_SERVING and in-flight calls finish.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> Result<(), GrpcServeError> {
        self.serve_incoming(TcpListenerStream::new(listener), shutdown).await
    }

    /// As [`GrpcServer::serve`], on connections the caller accepts itself (after a TLS handshake, say); what a
    /// connection's [`Connected`] info holds reaches every call as a request extension.
    pub async fn serve_incoming<I, IO, IE>(self, incoming: I, shutdown: CancellationToken) -> Result<(), GrpcServeError>
    where
        I: futures::Stream<Item = Result<IO, IE>>,
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        for name in &self.service_names {
            health_reporter.set_service_status(name, tonic_health::ServingStatus::Serving).await;
        }
        let mut v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        let mut v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for set in &self.descriptor_sets {
            v1 = v1.register_encoded_file_descriptor_set(set);
            v1alpha = v1alpha.register_encoded_file_descriptor_set(set);
        }
        // List only what this server serves, although the descriptor sets describe every service.
        for name in self.service_names.iter().map(String::as_str).chain([HEALTH_SERVICE]) {
            v1 = v1.with_service_name(name);
            v1alpha = v1alpha.with_service_name(name);
        }
        let routes =
            self.routes.add_service(health_service).add_service(v1.build_v1()?).add_service(v1alpha.build_v1alpha()?);
        let service_names = self.service_names.clone();
        let shutdown_signal = async move {
            shutdown.cancelled().await;
            for name in &service_names {
                health_reporter.set_service_status(name, tonic_health::ServingStatus::NotServing).await;
            }
        };
        tonic::transport::Server::builder()
            .layer(crate::trace::TraceLayer)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown_signal)
            .await?;
        Ok(())
    }
}
