//! The agencies' package is their documentation: every service, method, message, field, enum and enum value of
//! `pension.agency.v1` must say what it is in a comment, or reflection and the generated clients show a bare name.

use prost_types::source_code_info::Location;

/// The descriptor's field numbers that lead to each kind of definition (descriptor.proto).
const MESSAGE: i32 = 4;
const ENUM: i32 = 5;
const SERVICE: i32 = 6;
const MESSAGE_FIELD: i32 = 2;
const ENUM_VALUE: i32 = 2;
const SERVICE_METHOD: i32 = 2;

#[test]
fn every_definition_of_the_agency_package_is_commented() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"));
    let mut compiler = protox::Compiler::new([root]).expect("compiler");
    compiler.include_source_info(true);
    compiler.open_file("pension/agency/v1/agency.proto").expect("agency.proto compiles");
    let set = compiler.file_descriptor_set();
    let file = set.file.iter().find(|file| file.package() == "pension.agency.v1").expect("the agency file");
    let locations = &file.source_code_info.as_ref().expect("source info").location;
    let commented = |path: &[i32]| {
        locations.iter().any(|location: &Location| {
            location.path == path
                && location
                    .leading_comments
                    .as_deref()
                    .or(location.trailing_comments.as_deref())
                    .is_some_and(|comment| !comment.trim().is_empty())
        })
    };
    let mut bare = Vec::new();
    for (s, service) in file.service.iter().enumerate() {
        let s = s as i32;
        if !commented(&[SERVICE, s]) {
            bare.push(format!("service {}", service.name()));
        }
        for (m, method) in service.method.iter().enumerate() {
            if !commented(&[SERVICE, s, SERVICE_METHOD, m as i32]) {
                bare.push(format!("rpc {}", method.name()));
            }
        }
    }
    for (i, message) in file.message_type.iter().enumerate() {
        let i = i as i32;
        if !commented(&[MESSAGE, i]) {
            bare.push(format!("message {}", message.name()));
        }
        for (f, field) in message.field.iter().enumerate() {
            if !commented(&[MESSAGE, i, MESSAGE_FIELD, f as i32]) {
                bare.push(format!("field {}.{}", message.name(), field.name()));
            }
        }
        assert!(
            message.enum_type.is_empty(),
            "nested enums are not checked: declare {} at the top level",
            message.name()
        );
    }
    for (e, enumeration) in file.enum_type.iter().enumerate() {
        let e = e as i32;
        if !commented(&[ENUM, e]) {
            bare.push(format!("enum {}", enumeration.name()));
        }
        for (v, value) in enumeration.value.iter().enumerate() {
            // The zero value of every enum means "not set" and says so by its name.
            if !value.name().ends_with("_UNSPECIFIED") && !commented(&[ENUM, e, ENUM_VALUE, v as i32]) {
                bare.push(format!("enum value {}", value.name()));
            }
        }
    }
    assert!(bare.is_empty(), "uncommented in agency.proto: {bare:#?}");
}

#[test]
fn the_agency_descriptor_set_holds_no_internal_package() {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(proto::AGENCY_FILE_DESCRIPTOR_SET).expect("a descriptor set");
    let packages: Vec<&str> = set.file.iter().map(|file| file.package()).collect();
    assert!(packages.contains(&"pension.agency.v1"), "{packages:?}");
    assert!(packages.contains(&"google.protobuf"), "the imported Timestamp is described: {packages:?}");
    assert!(
        packages.iter().all(|package| package == &"pension.agency.v1" || !package.starts_with("pension.")),
        "{packages:?}"
    );
}
