//! Kit's integration tests, against real nats-server and PostgreSQL instances: the shared ones (each test in its
//! own namespace and database) or private ones for tests that stop a server.

mod consumer;
mod helpers;
mod outbox;
mod rpc;
