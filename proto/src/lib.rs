//! The platform's contract: the generated protobuf and gRPC code of every internal service and event, the codec
//! they share, and the names of every NATS subject, stream and consumer.
//!
//! Every message that crosses a process boundary is a type from this crate. Services never depend on each other's
//! crates; they depend on this one.

pub mod codec;
pub mod names;

/// The encoded `FileDescriptorSet` of every .proto in this crate, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// The encoded `FileDescriptorSet` of the public `pension.agency.v1` package alone, for reflection on the agencies'
/// port.
pub const AGENCY_FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/agency_descriptor.bin"));

/// Generated code, one module per protobuf package.
pub mod pension {
    pub mod agency {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/pension.agency.v1.rs"));
        }
    }
    pub mod common {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/pension.common.v1.rs"));
        }
    }
    pub mod identity {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/pension.identity.v1.rs"));
        }
    }
    pub mod units {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/pension.units.v1.rs"));
        }
    }
    pub mod personnel {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/pension.personnel.v1.rs"));
        }
    }
    pub mod population {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/pension.population.v1.rs"));
        }
    }
    pub mod printing {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/pension.printing.v1.rs"));
        }
    }
    pub mod events {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/pension.events.v1.rs"));
        }
    }
    pub mod testing {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/pension.testing.v1.rs"));
        }
    }
}

pub use pension::agency::v1 as agency;
pub use pension::common::v1 as common;
pub use pension::events::v1 as events;
pub use pension::identity::v1 as identity;
pub use pension::personnel::v1 as personnel;
pub use pension::population::v1 as population;
pub use pension::printing::v1 as printing;
pub use pension::testing::v1 as testing;
pub use pension::units::v1 as units;
