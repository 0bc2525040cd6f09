//! SHA-256 compression function (FIPS 180-4 section 6.2.2) on the x86-64 SHA
//! extensions (SHA-NI: `sha256rnds2`, `sha256msg1`, `sha256msg2`).
//!
//! The structure follows Intel's reference code and the Linux kernel's
//! `sha256_ni_asm`: the eight state words are kept in two vector registers in the
//! order the instructions want (ABEF and CDGH) for every block of one call, and the
//! message schedule is extended four words at a time with `sha256msg1`, `palignr` and
//! `sha256msg2`. Converting to and from the spec's A..H order happens once per call.
//!
//! This is the only module of the crate that contains `unsafe` code. The unsafe parts
//! are the call into the `#[target_feature]` function (sound only after run-time
//! detection, which [`compress`] performs itself) and the unaligned 16-byte loads of a
//! message block (in bounds by construction). Everything else is safe intrinsics.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m128i, _mm_add_epi32, _mm_alignr_epi8, _mm_blend_epi16, _mm_extract_epi32, _mm_loadu_si128,
    _mm_set_epi32, _mm_set_epi64x, _mm_sha256msg1_epu32, _mm_sha256msg2_epu32,
    _mm_sha256rnds2_epu32, _mm_shuffle_epi32, _mm_shuffle_epi8,
};
use std::sync::OnceLock;

use crate::consts::K;

/// Whether this CPU has every instruction set extension the backend uses. The answer
/// is computed once and cached, because it cannot change while the process runs.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::is_x86_feature_detected!("sha")
            && std::is_x86_feature_detected!("sse2")
            && std::is_x86_feature_detected!("ssse3")
            && std::is_x86_feature_detected!("sse4.1")
    })
}

/// Applies the SHA-256 compression function to `state` once per block, in order.
///
/// This is a safe function: it checks [`available`] itself and falls back to the
/// portable backend when the CPU lacks the extensions, so no caller can reach the
/// SHA-NI instructions on a CPU that does not have them.
pub(crate) fn compress(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    if available() {
        // Checklist:
        // - `compress_blocks` is only unsafe to call because of its
        //   `#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]` attribute;
        // - its arguments are ordinary safe references, so there is no other contract.
        // SAFETY: `available()` has just confirmed through `is_x86_feature_detected!`
        // that the running CPU supports all four features, as the checklist requires.
        unsafe { compress_blocks(state, blocks) }
    } else {
        crate::soft::compress(state, blocks);
    }
}

/// Four consecutive round constants K[4i..4i+4] as one vector, lowest lane first, so
/// they can be added to four message words at once. A macro rather than a function
/// because intrinsics are only callable inside the `#[target_feature]` function.
macro_rules! k4 {
    ($i:literal) => {
        _mm_set_epi32(
            K[4 * $i + 3] as i32,
            K[4 * $i + 2] as i32,
            K[4 * $i + 1] as i32,
            K[4 * $i] as i32,
        )
    };
}

/// Four rounds with message words `w` (W[4i..4i+4]). Each `sha256rnds2` does two
/// rounds using the low two lanes of its third operand, so the upper two lanes of
/// W+K are moved down for the second call.
macro_rules! rounds4 {
    ($abef:ident, $cdgh:ident, $w:expr, $i:literal) => {{
        let wk = _mm_add_epi32($w, k4!($i));
        $cdgh = _mm_sha256rnds2_epu32($cdgh, $abef, wk);
        let wk_high = _mm_shuffle_epi32(wk, 0x0e);
        $abef = _mm_sha256rnds2_epu32($abef, $cdgh, wk_high);
    }};
}

/// Extends the message schedule by four words (FIPS 180-4 section 6.2.2 step 1):
/// with `w0..w3` holding W[t-16..t], this returns W[t..t+4]. `sha256msg1` adds the
/// σ0 terms, `palignr` supplies the W[t-7] terms and `sha256msg2` adds the σ1 terms,
/// which depend on words produced in the same step and so need their own instruction.
macro_rules! schedule {
    ($w0:expr, $w1:expr, $w2:expr, $w3:expr) => {{
        let with_sigma0 = _mm_sha256msg1_epu32($w0, $w1);
        let with_w7 = _mm_add_epi32(with_sigma0, _mm_alignr_epi8($w3, $w2, 4));
        _mm_sha256msg2_epu32(with_w7, $w3)
    }};
}

/// The SHA-NI compression loop. Must only be called on a CPU with the SHA, SSE2, SSSE3
/// and SSE4.1 extensions; [`compress`] is the checked entry point.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn compress_blocks(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    // `pshufb` mask that byte-swaps each 32-bit lane: message words are big-endian.
    let bswap = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);

    // The instructions keep the state as ABEF and CDGH (A in the highest lane).
    // Build those from the spec's A..H order once, outside the block loop. Variable
    // names list the lanes from highest to lowest, so `dcba` has A in lane 0.
    let dcba = _mm_set_epi32(
        state[3] as i32,
        state[2] as i32,
        state[1] as i32,
        state[0] as i32,
    );
    let hgfe = _mm_set_epi32(
        state[7] as i32,
        state[6] as i32,
        state[5] as i32,
        state[4] as i32,
    );
    let cdab = _mm_shuffle_epi32(dcba, 0xb1);
    let efgh = _mm_shuffle_epi32(hgfe, 0x1b);
    let mut abef = _mm_alignr_epi8(cdab, efgh, 8);
    let mut cdgh = _mm_blend_epi16(efgh, cdab, 0xf0);

    for block in blocks {
        let abef_saved = abef;
        let cdgh_saved = cdgh;

        let ptr = block.as_ptr().cast::<__m128i>();
        // Checklist:
        // - `ptr` comes from a `&[u8; 64]`: 64 initialised bytes, immutable while borrowed;
        // - the four loads read bytes 0..16, 16..32, 32..48, 48..64: all in bounds;
        // - `_mm_loadu_si128` needs no alignment; any 16 bytes are a valid `__m128i`.
        // SAFETY: the checklist above holds, and SSE2 is enabled on this function, whose
        // only caller detected it.
        let (raw0, raw1, raw2, raw3) = unsafe {
            (
                _mm_loadu_si128(ptr),
                _mm_loadu_si128(ptr.add(1)),
                _mm_loadu_si128(ptr.add(2)),
                _mm_loadu_si128(ptr.add(3)),
            )
        };
        let mut w0 = _mm_shuffle_epi8(raw0, bswap);
        let mut w1 = _mm_shuffle_epi8(raw1, bswap);
        let mut w2 = _mm_shuffle_epi8(raw2, bswap);
        let mut w3 = _mm_shuffle_epi8(raw3, bswap);

        // Rounds 0-15 use the message words as loaded.
        rounds4!(abef, cdgh, w0, 0);
        rounds4!(abef, cdgh, w1, 1);
        rounds4!(abef, cdgh, w2, 2);
        rounds4!(abef, cdgh, w3, 3);

        // Rounds 16-63: each group of four first extends the schedule into the
        // register that held the words sixteen positions back.
        w0 = schedule!(w0, w1, w2, w3);
        rounds4!(abef, cdgh, w0, 4);
        w1 = schedule!(w1, w2, w3, w0);
        rounds4!(abef, cdgh, w1, 5);
        w2 = schedule!(w2, w3, w0, w1);
        rounds4!(abef, cdgh, w2, 6);
        w3 = schedule!(w3, w0, w1, w2);
        rounds4!(abef, cdgh, w3, 7);
        w0 = schedule!(w0, w1, w2, w3);
        rounds4!(abef, cdgh, w0, 8);
        w1 = schedule!(w1, w2, w3, w0);
        rounds4!(abef, cdgh, w1, 9);
        w2 = schedule!(w2, w3, w0, w1);
        rounds4!(abef, cdgh, w2, 10);
        w3 = schedule!(w3, w0, w1, w2);
        rounds4!(abef, cdgh, w3, 11);
        w0 = schedule!(w0, w1, w2, w3);
        rounds4!(abef, cdgh, w0, 12);
        w1 = schedule!(w1, w2, w3, w0);
        rounds4!(abef, cdgh, w1, 13);
        w2 = schedule!(w2, w3, w0, w1);
        rounds4!(abef, cdgh, w2, 14);
        w3 = schedule!(w3, w0, w1, w2);
        rounds4!(abef, cdgh, w3, 15);

        // Step 4 of the spec: add this block's result to the previous hash value.
        abef = _mm_add_epi32(abef, abef_saved);
        cdgh = _mm_add_epi32(cdgh, cdgh_saved);
    }

    // Back from ABEF/CDGH to the spec's A..H order.
    let feba = _mm_shuffle_epi32(abef, 0x1b);
    let dchg = _mm_shuffle_epi32(cdgh, 0xb1);
    let dcba = _mm_blend_epi16(feba, dchg, 0xf0);
    let hgfe = _mm_alignr_epi8(dchg, feba, 8);
    *state = [
        _mm_extract_epi32(dcba, 0) as u32,
        _mm_extract_epi32(dcba, 1) as u32,
        _mm_extract_epi32(dcba, 2) as u32,
        _mm_extract_epi32(dcba, 3) as u32,
        _mm_extract_epi32(hgfe, 0) as u32,
        _mm_extract_epi32(hgfe, 1) as u32,
        _mm_extract_epi32(hgfe, 2) as u32,
        _mm_extract_epi32(hgfe, 3) as u32,
    ];
}
