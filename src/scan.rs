//! Word-at-a-time byte search for the per-request paths (a token, an audit record's strings).

#![forbid(unsafe_code)]

const ONES: u64 = u64::from_le_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);

/// Whether some byte of `w` is below `n` (`n` at most 0x80): `(w - n * 0x01..01) & !w & 0x80..80`
/// is not zero exactly then (a byte's high bit survives only where the byte borrowed, and the
/// lowest such byte is a real one).
fn has_less(w: u64, n: u8) -> bool {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS != 0
}

/// Whether `bytes` hold one of `targets` or a byte below `below` (0: none is), eight bytes at a
/// time: a byte of `w ^ t * 0x01..01` is zero exactly where `w` holds `t`.
#[inline]
pub(crate) fn contains_any<const N: usize>(bytes: &[u8], targets: [u8; N], below: u8) -> bool {
    // Fixed-size words (`as_chunks`): copying out a run-time-sized slice would compile to
    // `memory.copy`, which V8 runs as a call into the host for every word.
    let (words, rest) = bytes.as_chunks::<8>();
    for word in words {
        let w = u64::from_le_bytes(*word);
        if (below > 0 && has_less(w, below))
            || targets.iter().any(|&t| has_less(w ^ (ONES * u64::from(t)), 1))
        {
            return true;
        }
    }
    rest.iter().any(|b| *b < below || targets.contains(b))
}

#[cfg(test)]
mod tests {
    use super::contains_any;

    #[test]
    fn the_word_search_finds_exactly_what_a_byte_search_finds() {
        // Every byte value at every position of strings of 0 to 24 bytes (both sides of a word
        // boundary and the remainder), over backgrounds of ordinary, high and low bytes.
        let searches: [([u8; 2], u8); 3] = [(*b" \t", 0), (*b"\"\\", 0x20), ([0x80, 0x80], 0x80)];
        for (targets, below) in searches {
            for background in [b'a', b'.', 0x80, 0xff, 0x00, 0x21, 0x08, 0x0a, 0x1f, 0x20, 0x7f] {
                for len in 0..=24 {
                    for at in 0..len {
                        for byte in 0..=255u8 {
                            let mut bytes = vec![background; len];
                            bytes[at] = byte;
                            let expected = bytes.iter().any(|b| *b < below || targets.contains(b));
                            assert_eq!(
                                contains_any(&bytes, targets, below),
                                expected,
                                "{targets:?} {below} {bytes:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}
