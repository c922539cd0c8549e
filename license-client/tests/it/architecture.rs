//! The client speaks HTTP to the server; it never links the server's code.

#[test]
fn the_library_depends_on_neither_billing_core_nor_billing_server() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let dependencies = manifest.split("[dependencies]").nth(1).unwrap().split("\n[").next().unwrap();
    for forbidden in ["billing-core", "billing-server", "tokio-postgres"] {
        assert!(!dependencies.contains(forbidden), "license-client must not depend on {forbidden}");
    }
}
