//! Constant-time comparison for verifying HMAC tags (RFC 2104 defines the MAC; how
//! to compare a received tag is left to the implementation, and a comparison that
//! stops at the first differing byte would let an attacker find a valid tag byte by
//! byte), plus best-effort wiping of key-derived buffers.
//!
//! Both are best effort: Rust gives no guarantee about the machine code it emits.
//! [`std::hint::black_box`] is used as an optimisation barrier so the compiler cannot
//! see through the accumulator or the wiped memory, which in practice prevents the
//! early-exit comparison and the dead-store elimination these functions exist to avoid.

use std::hint::black_box;

/// Whether `a` and `b` hold the same bytes, taking time that depends only on their
/// lengths, not on their contents.
///
/// Lengths are treated as public: slices of different lengths return `false` at once.
/// For equal lengths every byte pair is XORed and OR-ed into an accumulator that
/// passes through [`black_box`] each time, so the loop cannot be turned into one that
/// stops at the first difference. This is best effort, not a guarantee.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff = black_box(diff | (x ^ y));
    }
    black_box(diff) == 0
}

/// Overwrites `buf` with zeros in a way the compiler should not remove even if `buf`
/// is never read again. Best effort: copies the compiler made earlier (in registers or
/// spilled to the stack) are out of reach.
pub(crate) fn wipe<T: Copy + Default>(buf: &mut [T]) {
    buf.fill(T::default());
    black_box(buf);
}
