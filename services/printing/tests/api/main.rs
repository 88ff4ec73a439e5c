//! The printing service's API tests: units, personnel and printing on databases of their own and one NATS
//! namespace; a unit declares, and the forms are read back as the gateway reads them.

mod documents;
mod helpers;
