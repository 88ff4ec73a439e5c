//! The units service's API tests: the real service on a database of its own, called over NATS RPC exactly as the
//! gateway calls it.

mod changes;
mod declarations;
mod helpers;
mod records;
