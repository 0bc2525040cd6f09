//! `ct_eq` must notice a difference in any single bit at any position, for every
//! length up to 256 bytes, whichever argument comes first (in the style of ring's
//! constant-time comparison tests).

use qvm_remote_hmac::ct_eq;

/// A 256-byte buffer with no repeating structure.
fn buffer() -> Vec<u8> {
    (0..256u32)
        .map(|i| (i.wrapping_mul(167) ^ 0x5a) as u8)
        .collect()
}

/// `a` and `b` have the same length; their equality must be reported both ways round.
fn check(a: &[u8], b: &[u8], equal: bool) {
    assert_eq!(ct_eq(a, b), equal, "ct_eq(a, b), len {}", a.len());
    assert_eq!(ct_eq(b, a), equal, "ct_eq(b, a), len {}", a.len());
}

#[test]
fn every_single_bit_flip_in_every_prefix_is_detected() {
    let buf = buffer();
    let mut flips = 0usize;
    for len in 0..=buf.len() {
        let a = &buf[..len];
        // A separate copy, so equality is not decided by comparing a slice to itself.
        let mut b = a.to_vec();
        check(a, &b, true);
        for bit in 0..len * 8 {
            b[bit / 8] ^= 1 << (bit % 8);
            check(a, &b, false);
            b[bit / 8] ^= 1 << (bit % 8);
            flips += 1;
        }
        check(a, &b, true);
    }
    // 8 * (0 + 1 + ... + 256) flips: proves the loops really ran.
    assert_eq!(flips, 8 * 256 * 257 / 2);
}

#[test]
fn different_lengths_are_never_equal() {
    let buf = buffer();
    for len in 0..buf.len() {
        // A proper prefix is the case a naive "compare the common part" would get wrong.
        assert!(
            !ct_eq(&buf[..len], &buf[..len + 1]),
            "len {len} vs {}",
            len + 1
        );
        assert!(
            !ct_eq(&buf[..len + 1], &buf[..len]),
            "len {} vs {len}",
            len + 1
        );
    }
    assert!(!ct_eq(&[], &[0]));
    assert!(ct_eq(&[], &[]));
}
