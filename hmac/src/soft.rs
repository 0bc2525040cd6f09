//! Portable SHA-256 compression function, written from FIPS 180-4 section 6.2.2.
//!
//! This backend runs everywhere and is the reference the SHA-NI backend is compared
//! against in the tests. It is written for speed on ordinary 64-bit CPUs without any
//! target-specific flags: the 64 rounds are fully unrolled by macros so that every
//! round constant and schedule index is a compile-time constant, the eight working
//! variables are renamed instead of shuffled between rounds, and the message schedule
//! lives in a rolling window of 16 words instead of the 64-word array of the spec.
//!
//! All operations are fixed-time integer arithmetic (add, rotate, xor, and); there is no
//! table lookup indexed by data and no data-dependent branch.

use crate::consts::K;

/// Applies the SHA-256 compression function to `state` once per 64-byte block, in
/// order (FIPS 180-4 section 6.2.2, steps 1 to 4).
pub(crate) fn compress(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    for block in blocks {
        compress_block(state, block);
    }
}

/// Σ0 of FIPS 180-4 section 4.1.2 (4.4), ROTR2 ^ ROTR13 ^ ROTR22, factored as
/// ROTR2(x ^ ROTR11(x ^ ROTR9(x))). The nested form rotates a running value instead
/// of three copies of `x`, which saves register copies on x86's two-operand `ror`.
#[inline(always)]
fn big_sigma0(x: u32) -> u32 {
    (x ^ (x ^ x.rotate_right(9)).rotate_right(11)).rotate_right(2)
}

/// Σ1 of FIPS 180-4 section 4.1.2 (4.5), ROTR6 ^ ROTR11 ^ ROTR25, factored as
/// ROTR6(x ^ ROTR5(x ^ ROTR14(x))) for the same reason as [`big_sigma0`].
#[inline(always)]
fn big_sigma1(x: u32) -> u32 {
    (x ^ (x ^ x.rotate_right(14)).rotate_right(5)).rotate_right(6)
}

/// σ0 of FIPS 180-4 section 4.1.2 (4.6), ROTR7 ^ ROTR18 ^ SHR3, with the two
/// rotations nested as ROTR7(x ^ ROTR11(x)) like [`big_sigma0`].
#[inline(always)]
fn small_sigma0(x: u32) -> u32 {
    (x ^ x.rotate_right(11)).rotate_right(7) ^ (x >> 3)
}

/// σ1 of FIPS 180-4 section 4.1.2 (4.7), ROTR17 ^ ROTR19 ^ SHR10, with the two
/// rotations nested as ROTR17(x ^ ROTR2(x)) like [`big_sigma0`].
#[inline(always)]
fn small_sigma1(x: u32) -> u32 {
    (x ^ x.rotate_right(2)).rotate_right(17) ^ (x >> 10)
}

/// Ch of FIPS 180-4 (4.2), in the equivalent form `g ^ (e & (f ^ g))`, which needs one
/// operation fewer than `(e & f) ^ (!e & g)`.
#[inline(always)]
fn ch(e: u32, f: u32, g: u32) -> u32 {
    g ^ (e & (f ^ g))
}

/// Maj of FIPS 180-4 (4.3), in the equivalent form `b ^ ((a ^ b) & (b ^ c))`, which
/// needs one operation fewer than the textbook form.
#[inline(always)]
fn maj(a: u32, b: u32, c: u32) -> u32 {
    b ^ ((a ^ b) & (b ^ c))
}

/// One round of FIPS 180-4 section 6.2.2 step 3. Instead of moving every working
/// variable one place down, the caller rotates the names it passes in, so only `d` and
/// `h` are written: `d` becomes the new `e` and `h` the new `a`.
macro_rules! round {
    ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident, $k:expr, $w:expr) => {
        let t1 = $h
            .wrapping_add(big_sigma1($e))
            .wrapping_add(ch($e, $f, $g))
            .wrapping_add($k)
            .wrapping_add($w);
        let t2 = big_sigma0($a).wrapping_add(maj($a, $b, $c));
        $d = $d.wrapping_add(t1);
        $h = t1.wrapping_add(t2);
    };
}

/// Eight rounds on the 16 message words as loaded (rounds 0 to 15 of the spec). After
/// eight renamings every variable is back in its own name, so the macro can be
/// invoked again with the same names.
macro_rules! rounds8_load {
    ($w:ident, $a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident;
     $i0:literal, $i1:literal, $i2:literal, $i3:literal, $i4:literal, $i5:literal, $i6:literal, $i7:literal) => {
        round!($a, $b, $c, $d, $e, $f, $g, $h, K[$i0], $w[$i0]);
        round!($h, $a, $b, $c, $d, $e, $f, $g, K[$i1], $w[$i1]);
        round!($g, $h, $a, $b, $c, $d, $e, $f, K[$i2], $w[$i2]);
        round!($f, $g, $h, $a, $b, $c, $d, $e, K[$i3], $w[$i3]);
        round!($e, $f, $g, $h, $a, $b, $c, $d, K[$i4], $w[$i4]);
        round!($d, $e, $f, $g, $h, $a, $b, $c, K[$i5], $w[$i5]);
        round!($c, $d, $e, $f, $g, $h, $a, $b, K[$i6], $w[$i6]);
        round!($b, $c, $d, $e, $f, $g, $h, $a, K[$i7], $w[$i7]);
    };
}

/// Computes schedule word `W[i]` (FIPS 180-4 section 6.2.2 step 1, i >= 16) in place in
/// the 16-word window, where slot `i % 16` still holds W[i-16]. The offsets +14, +9
/// and +1 modulo 16 are i-2, i-7 and i-15.
macro_rules! schedule {
    ($w:ident, $i:literal) => {{
        let next = small_sigma1($w[($i + 14) % 16])
            .wrapping_add($w[($i + 9) % 16])
            .wrapping_add(small_sigma0($w[($i + 1) % 16]))
            .wrapping_add($w[$i % 16]);
        $w[$i % 16] = next;
        next
    }};
}

/// Eight rounds that each first extend the message schedule (rounds 16 to 63).
macro_rules! rounds8_schedule {
    ($w:ident, $a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident;
     $i0:literal, $i1:literal, $i2:literal, $i3:literal, $i4:literal, $i5:literal, $i6:literal, $i7:literal) => {
        round!($a, $b, $c, $d, $e, $f, $g, $h, K[$i0], schedule!($w, $i0));
        round!($h, $a, $b, $c, $d, $e, $f, $g, K[$i1], schedule!($w, $i1));
        round!($g, $h, $a, $b, $c, $d, $e, $f, K[$i2], schedule!($w, $i2));
        round!($f, $g, $h, $a, $b, $c, $d, $e, K[$i3], schedule!($w, $i3));
        round!($e, $f, $g, $h, $a, $b, $c, $d, K[$i4], schedule!($w, $i4));
        round!($d, $e, $f, $g, $h, $a, $b, $c, K[$i5], schedule!($w, $i5));
        round!($c, $d, $e, $f, $g, $h, $a, $b, K[$i6], schedule!($w, $i6));
        round!($b, $c, $d, $e, $f, $g, $h, $a, K[$i7], schedule!($w, $i7));
    };
}

/// Processes one 64-byte block. Kept inlined into [`compress`] so the loop over blocks
/// keeps the state in registers.
// The schedule macro stores every new word back into the window, including the last
// few that no later round reads; the compiler drops those stores, so the uniform macro
// costs nothing and the warning about them is silenced here.
#[allow(unused_assignments)]
#[inline(always)]
fn compress_block(state: &mut [u32; 8], block: &[u8; 64]) {
    // Step 1 for t = 0..15: the message words are the block read as big-endian u32s.
    let mut w = [0u32; 16];
    for (word, bytes) in w.iter_mut().zip(block.chunks_exact(4)) {
        *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }

    // Step 2: initialise the working variables from the previous hash value.
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;

    // Step 3: 64 rounds.
    rounds8_load!(w, a, b, c, d, e, f, g, h; 0, 1, 2, 3, 4, 5, 6, 7);
    rounds8_load!(w, a, b, c, d, e, f, g, h; 8, 9, 10, 11, 12, 13, 14, 15);
    rounds8_schedule!(w, a, b, c, d, e, f, g, h; 16, 17, 18, 19, 20, 21, 22, 23);
    rounds8_schedule!(w, a, b, c, d, e, f, g, h; 24, 25, 26, 27, 28, 29, 30, 31);
    rounds8_schedule!(w, a, b, c, d, e, f, g, h; 32, 33, 34, 35, 36, 37, 38, 39);
    rounds8_schedule!(w, a, b, c, d, e, f, g, h; 40, 41, 42, 43, 44, 45, 46, 47);
    rounds8_schedule!(w, a, b, c, d, e, f, g, h; 48, 49, 50, 51, 52, 53, 54, 55);
    rounds8_schedule!(w, a, b, c, d, e, f, g, h; 56, 57, 58, 59, 60, 61, 62, 63);

    // Step 4: add the compressed chunk to the current hash value.
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = s.wrapping_add(v);
    }
}
