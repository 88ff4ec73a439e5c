//! Errors that every service maps the same way.

/// A dependency (PostgreSQL, NATS, Redis or another service) cannot be reached right now. Callers get
/// `UNAVAILABLE` over gRPC and 503 over HTTP, both meaning "try again later"; never a 500.
#[derive(Debug, thiserror::Error)]
#[error("{dependency} is unavailable: {reason}")]
pub struct Unavailable {
    /// The dependency's name as readiness reports it: "postgres", "nats", "redis" or a service name.
    pub dependency: &'static str,
    pub reason: String,
}

impl From<Unavailable> for tonic::Status {
    fn from(error: Unavailable) -> Self {
        tonic::Status::unavailable(error.to_string())
    }
}
