//! The checksum of every hs format (records, frames, segment headers, meta,
//! snapshots): CRC32C (Castagnoli), which x86-64 computes with the SSE4.2
//! `crc32` instruction (and aarch64 with its CRC extension), several times
//! faster than a table-driven CRC32: it was ~40% of `publish`'s CPU at 64 B.
//! The `crc32c` crate picks the instruction at run time and falls back to
//! software elsewhere, with the same result.
//!
//! Format 1 of the wire and of the log used CRC32 (IEEE). `legacy` computes it
//! only to recognise an old peer's frames and tell the operator what to do.

/// CRC32C of `bytes`.
#[inline]
pub fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// CRC32C of the bytes before (whose CRC32C is `crc`) followed by `bytes`.
#[inline]
pub fn crc_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// CRC32 (IEEE), the checksum of format 1: recognising old peers only.
pub fn legacy(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The standard check values: CRC32C and CRC32 of "123456789".
    #[test]
    fn check_values() {
        assert_eq!(crc(b"123456789"), 0xE306_9283);
        assert_eq!(legacy(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc_append(crc(b"1234"), b"56789"), crc(b"123456789"));
        assert_eq!(crc(b""), 0);
    }
}
