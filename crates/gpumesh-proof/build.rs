//! The OpenAPI schemas' names for foreign types: Ethereum addresses and hashes are
//! 0x-prefixed hex strings on the wire.
fn main() {
    utoipa_config::Config::new()
        .alias_for("Address", "String")
        .alias_for("B256", "String")
        .write_to_file();
}
