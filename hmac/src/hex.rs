//! Hexadecimal (base 16, RFC 4648 section 8) encoding and decoding, for keys and tags.
//!
//! Both directions use arithmetic instead of table lookups or per-character branches
//! on valid input, so the time taken depends on the length but not on the value of
//! the (possibly secret) bytes. Errors never echo the input, only a position.

use std::error::Error;
use std::fmt;

/// Lowercase hex of `bytes`, two characters per byte.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(hex_digit(byte >> 4)));
        out.push(char::from(hex_digit(byte & 0x0f)));
    }
    out
}

/// Bytes of the hex string `s`. Upper- and lowercase digits are accepted; an odd
/// length, or any character that is not a hex digit, is an error.
pub fn decode(s: &str) -> Result<Vec<u8>, HexError> {
    let digits = s.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return Err(HexError::OddLength { len: digits.len() });
    }
    let mut out = Vec::with_capacity(digits.len() / 2);
    for (pair_index, pair) in digits.chunks_exact(2).enumerate() {
        let high = digit_value(pair[0]);
        let low = digit_value(pair[1]);
        match (high, low) {
            (Some(high), Some(low)) => out.push((high << 4) | low),
            (None, _) => {
                return Err(HexError::InvalidChar {
                    index: pair_index * 2,
                })
            }
            (Some(_), None) => {
                return Err(HexError::InvalidChar {
                    index: pair_index * 2 + 1,
                })
            }
        }
    }
    Ok(out)
}

/// Why a string is not valid hex. Positions are byte offsets into the string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HexError {
    /// The string has an odd number of bytes, so it cannot encode whole bytes.
    OddLength {
        /// Length of the string in bytes.
        len: usize,
    },
    /// The byte at `index` is not `0-9`, `a-f` or `A-F` (for non-ASCII text, this is
    /// the offset of a byte inside a multi-byte character).
    InvalidChar {
        /// Byte offset of the first offending byte.
        index: usize,
    },
}

impl fmt::Display for HexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HexError::OddLength { len } => {
                write!(f, "hex string has odd length {len}")
            }
            HexError::InvalidChar { index } => {
                write!(f, "invalid hex digit at byte offset {index}")
            }
        }
    }
}

impl Error for HexError {}

/// The lowercase hex digit for a nibble (0..=15): `'0' + n`, plus the distance from
/// `'9' + 1` to `'a'` when `n > 9`. The mask is derived arithmetically so there is no
/// branch on the nibble.
fn hex_digit(nibble: u8) -> u8 {
    let n = u32::from(nibble);
    // 9 - n wraps to a value with the high bits set exactly when n > 9.
    let letter_mask = 9u32.wrapping_sub(n) >> 8;
    (n + u32::from(b'0') + (letter_mask & 39)) as u8
}

/// The value of one hex digit, or `None`. Computed with masks rather than a table or
/// a chain of comparisons (after libsodium's `sodium_hex2bin`), so valid digits take
/// the same path whatever their value.
fn digit_value(c: u8) -> Option<u8> {
    let c = u32::from(c);
    // Decimal digits: c ^ 0x30 is 0..=9 exactly for '0'..='9'.
    let num = c ^ 0x30;
    let num_mask = (num.wrapping_sub(10) >> 8) & 0xff;
    // Letters: clearing bit 5 folds 'a'..='f' onto 'A'..='F'; minus 55 maps them to
    // 10..=15, and the mask is set only when the result lies in 10..=15.
    let alpha = (c & !32).wrapping_sub(55);
    let alpha_mask = ((alpha.wrapping_sub(10) ^ alpha.wrapping_sub(16)) >> 8) & 0xff;
    if (num_mask | alpha_mask) == 0 {
        return None;
    }
    Some(((num_mask & num) | (alpha_mask & alpha)) as u8)
}
