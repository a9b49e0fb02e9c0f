//! The digest of the schema sources that the committed generated code was made from.

/// BLAKE3 over every `schema/*.capnp` file, in file-name order, each as its name, a NUL, its
/// length (8 bytes little-endian) and its bytes.
pub fn schema_digest(dir: &std::path::Path) -> std::io::Result<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "capnp"))
        .collect();
    names.sort();
    let mut hasher = blake3::Hasher::new();
    for path in names {
        let bytes = std::fs::read(&path)?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        hasher.update(name.as_bytes());
        hasher.update(&[0]);
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_code_matches_schemas() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let recorded = std::fs::read_to_string(dir.join("src/generated/SCHEMA_DIGEST"))
            .expect("schema/src/generated/SCHEMA_DIGEST is missing: run scripts/regen-schema");
        let actual = super::schema_digest(dir).expect("read schema/*.capnp");
        assert_eq!(
            recorded.trim(),
            actual,
            "schema/*.capnp changed since the Rust code was generated: run scripts/regen-schema"
        );
    }
}
