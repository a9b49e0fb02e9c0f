//! Wall-clock time as the wire carries it: milliseconds since the Unix epoch.

/// Milliseconds since the Unix epoch, the unit of every `Time` field on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
