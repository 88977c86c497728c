//! A plain compressor's rate on a text, the yardstick a language model must beat: a model that compresses unseen
//! text worse than gzip has learned little beyond letter and word frequencies.

use std::io::Write;

/// Bits per byte that gzip at its best level (9, the DEFLATE of `flate2`) needs for `bytes`: `8 · compressed /
/// original`, header and trailer included (18 bytes, negligible beyond a few KB). Returns `None` for empty input.
pub fn gzip_bits_per_byte(bytes: &[u8]) -> Option<f64> {
    if bytes.is_empty() {
        return None;
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).ok()?;
    let out = enc.finish().ok()?;
    Some(8.0 * out.len() as f64 / bytes.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetitive_text_compresses_and_noise_does_not() {
        let text = "le paquet est installé. ".repeat(400);
        let r = gzip_bits_per_byte(text.as_bytes()).unwrap();
        assert!(r < 0.3, "{r}");
        // Seeded pseudo-random bytes: DEFLATE cannot go below 8 bits per byte (plus its framing).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let r = gzip_bits_per_byte(&noise).unwrap();
        assert!((8.0..8.1).contains(&r), "{r}");
        assert_eq!(gzip_bits_per_byte(b""), None);
    }
}
