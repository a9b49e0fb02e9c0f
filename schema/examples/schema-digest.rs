//! Prints the digest of `schema/*.capnp`; `scripts/regen-schema` records it beside the
//! generated code.
fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    println!("{}", netmachine_schema::digest::schema_digest(dir)?);
    Ok(())
}
