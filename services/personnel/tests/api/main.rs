//! The personnel service's API tests: the real service on a database of its own, with the development population
//! registry on another, called over NATS RPC exactly as the gateway calls it.

mod conflicts;
mod helpers;
mod idempotency;
mod imports;
mod isolation;
mod people;
mod rosters;
mod rotation;
