//! The identity service's API tests: the real service on a database of its own, called over NATS RPC exactly as
//! the gateway calls it.

mod certificates;
mod helpers;
mod key_applications;
mod login;
mod registry;
