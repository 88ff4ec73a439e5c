//! Every NATS subject, JetStream stream and consumer name of the platform, derived from one configured namespace.
//!
//! Production uses the namespace `pension`; each test picks its own, so tests sharing one nats-server never see
//! each other's messages. Nothing else in the code base builds a subject by hand.

use std::fmt;

/// The prefix of every subject, stream and consumer name: lower-case ASCII letters, digits and `_`, starting with a
/// letter, at most 32 characters (so derived stream names stay short and valid).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

/// Why a namespace was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid NATS namespace {0:?}: use 1 to 32 lower-case letters, digits or '_', starting with a letter")]
pub struct InvalidNamespace(pub String);

impl Namespace {
    /// Parses a namespace, refusing characters that have a meaning in NATS subjects or stream names.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidNamespace> {
        let value = value.into();
        let valid = !value.is_empty()
            && value.len() <= 32
            && value.starts_with(|c: char| c.is_ascii_lowercase())
            && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid { Ok(Self(value)) } else { Err(InvalidNamespace(value)) }
    }

    /// The namespace itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject prefix under which a service's RPC methods are served: `<ns>.rpc.<service>.v1`. A method is the
    /// next token: `<ns>.rpc.units.v1.GetStatus`.
    pub fn rpc_prefix(&self, service: &str) -> String {
        format!("{}.rpc.{service}.v1", self.0)
    }

    /// The subject of one RPC method.
    pub fn rpc_subject(&self, service: &str, method: &str) -> String {
        format!("{}.{method}", self.rpc_prefix(service))
    }

    /// The subject one event type of a producing service is published on: `<ns>.events.<service>.<event>`.
    pub fn event_subject(&self, service: &str, event: &str) -> String {
        format!("{}.events.{service}.{event}", self.0)
    }

    /// The wildcard covering every event of a producing service; the subject filter of its stream.
    pub fn events_filter(&self, service: &str) -> String {
        format!("{}.events.{service}.>", self.0)
    }

    /// The JetStream stream holding a producing service's events: `PENSION_UNITS` in the namespace `pension`.
    pub fn events_stream(&self, service: &str) -> String {
        format!("{}_{}", self.0, service).to_ascii_uppercase()
    }

    /// The subject of one kind of work item a service queues for its own replicas: `<ns>.work.<service>.<queue>`.
    pub fn work_subject(&self, service: &str, queue: &str) -> String {
        format!("{}.work.{service}.{queue}", self.0)
    }

    /// The wildcard covering a service's work items; the subject filter of its work stream.
    pub fn work_filter(&self, service: &str) -> String {
        format!("{}.work.{service}.>", self.0)
    }

    /// The JetStream stream holding a service's work items: `PENSION_PERSONNEL_WORK` in the namespace `pension`.
    pub fn work_stream(&self, service: &str) -> String {
        format!("{}_{}_work", self.0, service).to_ascii_uppercase()
    }

    /// The JetStream stream the agency API's event stream reads: the producing services' event streams sourced into
    /// one, so that every event has one position (its sequence here) the same for every reader and every resume.
    pub fn agency_feed_stream(&self) -> String {
        format!("{}_agency_feed", self.0).to_ascii_uppercase()
    }

    /// The durable consumer name for one handler of a consuming service, e.g. `printing_declared`. Durable names
    /// are per stream, and each namespace has its own streams, so the namespace need not repeat here.
    pub fn consumer(&self, consuming_service: &str, handler: &str) -> String {
        format!("{consuming_service}_{handler}")
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The platform's internal services: each owns a database, an RPC subject tree, an event stream and a queue group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Identity,
    Units,
    Personnel,
    Printing,
}

impl Service {
    /// Every internal service, in the order of the journey.
    pub const ALL: [Service; 4] = [Service::Identity, Service::Units, Service::Personnel, Service::Printing];

    /// The short name used in subjects, queue groups, database names and configuration sections.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Identity => "identity",
            Service::Units => "units",
            Service::Personnel => "personnel",
            Service::Printing => "printing",
        }
    }
}

impl Service {
    /// The full gRPC name of the service's API, e.g. `pension.units.v1.Units`.
    pub fn grpc_name(self) -> &'static str {
        match self {
            Service::Identity => crate::identity::identity_server::SERVICE_NAME,
            Service::Units => crate::units::units_server::SERVICE_NAME,
            Service::Personnel => crate::personnel::personnel_server::SERVICE_NAME,
            Service::Printing => crate::printing::printing_server::SERVICE_NAME,
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_namespace() {
        let ns = Namespace::new("pension").expect("valid");
        assert_eq!(ns.rpc_subject("units", "GetStatus"), "pension.rpc.units.v1.GetStatus");
        assert_eq!(ns.events_filter("units"), "pension.events.units.>");
        assert_eq!(ns.event_subject("units", "declared"), "pension.events.units.declared");
        assert_eq!(ns.events_stream("units"), "PENSION_UNITS");
        assert_eq!(ns.consumer("printing", "declared"), "printing_declared");
        assert_eq!(ns.agency_feed_stream(), "PENSION_AGENCY_FEED");
    }

    #[test]
    fn namespaces_with_subject_syntax_are_refused() {
        for bad in ["", "a.b", "a>", "A", "1abc", "a b", "a*", &"a".repeat(33)] {
            assert!(Namespace::new(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Namespace::new("t_0123abc").is_ok());
    }
}
