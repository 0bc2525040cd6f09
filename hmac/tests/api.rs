//! Public API behaviour that the known-answer tests do not cover: what `Debug` may
//! print, hex encoding and its errors, `Default`, `Clone` and the error types.

use std::error::Error;

use qvm_remote_hmac::hex::{self, HexError};
use qvm_remote_hmac::{hmac_sha256, sha256, HmacSha256, Sha256};

/// A key nobody would print by accident, so finding any rendering of it in output
/// means the output leaks it.
const KEY: &[u8] = b"\xde\xad\xbe\xef qvm-remote distinctive key \x01\x02\x03\xfe";

#[test]
fn debug_of_hmac_reveals_no_key_material() {
    let mut mac = HmacSha256::new(KEY);
    mac.update(b"some message");
    let debug = format!("{mac:?}");
    let pretty = format!("{mac:#?}");
    assert_eq!(debug, "HmacSha256 { .. }");
    assert_eq!(pretty, "HmacSha256 { .. }");

    let key_hex = hex::encode(KEY);
    let key_debug = format!("{KEY:?}");
    // The list of decimal byte values as `Debug` of a slice shows them, without the
    // brackets, also catches a partial dump.
    let key_bytes = key_debug.trim_matches(|c| c == '[' || c == ']');
    for shown in [&debug, &pretty] {
        assert!(!shown.contains(&key_hex), "hex of the key in {shown:?}");
        assert!(!shown.contains(key_bytes), "key bytes in {shown:?}");
        assert!(!shown.contains("distinctive"), "key text in {shown:?}");
    }

    // The hasher inside an HMAC holds key-derived state, so its Debug is terse too.
    let mut hasher = Sha256::new();
    hasher.update(KEY);
    let debug = format!("{hasher:?}");
    assert!(
        debug.starts_with("Sha256 {") && debug.ends_with(".. }"),
        "{debug}"
    );
    assert!(
        !debug.contains(&key_hex) && !debug.contains(key_bytes),
        "{debug}"
    );
}

#[test]
fn hex_round_trips_every_byte_value() {
    let all: Vec<u8> = (0..=255).collect();
    let encoded = hex::encode(&all);
    assert_eq!(encoded.len(), 512);
    assert!(encoded.starts_with("000102030405060708090a0b0c0d0e0f10"));
    assert!(encoded.ends_with("f9fafbfcfdfeff"));
    assert_eq!(hex::decode(&encoded), Ok(all.clone()));
    assert_eq!(hex::decode(&encoded.to_uppercase()), Ok(all));
    assert_eq!(hex::encode(&[]), "");
    assert_eq!(hex::decode(""), Ok(Vec::new()));
}

#[test]
fn hex_digit_decoding_matches_a_simple_reference_for_every_byte() {
    // The decoder avoids branches and tables; compare it against the obvious version
    // for every possible character in both positions of a pair.
    for c in 0..=255u8 {
        let reference = (c as char).to_digit(16).filter(|_| c.is_ascii());
        for (text, index) in [(vec![c, b'0'], 0), (vec![b'0', c], 1)] {
            let Ok(s) = String::from_utf8(text.clone()) else {
                continue; // Lone non-ASCII bytes are not valid strings at all.
            };
            match reference {
                Some(v) => {
                    let expected = if index == 0 { v << 4 } else { v } as u8;
                    assert_eq!(hex::decode(&s), Ok(vec![expected]), "{s:?}");
                }
                None => assert_eq!(
                    hex::decode(&s),
                    Err(HexError::InvalidChar { index }),
                    "{s:?}"
                ),
            }
        }
    }
}

#[test]
fn hex_errors() {
    let cases: [(&str, HexError); 9] = [
        ("abc", HexError::OddLength { len: 3 }),
        ("0", HexError::OddLength { len: 1 }),
        ("zz", HexError::InvalidChar { index: 0 }),
        ("0g", HexError::InvalidChar { index: 1 }),
        ("00 1", HexError::InvalidChar { index: 2 }),
        ("0x00", HexError::InvalidChar { index: 1 }),
        // "é" is two bytes in UTF-8 (c3 a9): even length, but not hex.
        ("é", HexError::InvalidChar { index: 0 }),
        ("00é", HexError::InvalidChar { index: 2 }),
        // Length is checked first, in bytes: "0é" is three bytes.
        ("0é", HexError::OddLength { len: 3 }),
    ];
    for (input, expected) in cases {
        let err = hex::decode(input).expect_err(input);
        assert_eq!(err, expected, "{input:?}");
        // The message names a position or a length but never repeats the input.
        let message = err.to_string();
        assert!(!message.is_empty());
        if input.len() > 1 {
            assert!(!message.contains(input), "{message:?} echoes {input:?}");
        }
        let boxed: Box<dyn Error> = Box::new(err);
        assert_eq!(boxed.to_string(), message);
    }
}

#[test]
fn sha256_default_is_new() {
    assert_eq!(Sha256::default().finalize(), Sha256::new().finalize());
    assert_eq!(Sha256::default().finalize(), sha256(b""));
    let mut a = Sha256::default();
    let mut b = Sha256::new();
    a.update(b"abc");
    b.update(b"abc");
    assert_eq!(a.finalize(), b.finalize());
}

#[test]
fn clone_mid_stream_continues_identically() {
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    for split in [0, 1, 55, 56, 63, 64, 65, 500, 1000] {
        let (head, tail) = data.split_at(split);

        let mut hasher = Sha256::new();
        hasher.update(head);
        let mut copy = hasher.clone();
        hasher.update(tail);
        copy.update(tail);
        let digest = hasher.finalize();
        assert_eq!(copy.finalize(), digest, "Sha256 split {split}");
        assert_eq!(digest, sha256(&data));

        let mut mac = HmacSha256::new(KEY);
        mac.update(head);
        let mut copy = mac.clone();
        let mut diverged = mac.clone();
        mac.update(tail);
        let tag = mac.finalize();
        copy.update(tail);
        assert_eq!(copy.finalize(), tag, "HmacSha256 split {split}");
        assert_eq!(tag, hmac_sha256(KEY, &data));
        // A clone is independent: feeding it something else changes only its tag.
        diverged.update(b"something else");
        assert_ne!(diverged.finalize(), tag, "HmacSha256 split {split}");
    }
}

#[test]
fn verify_error_is_opaque_and_a_std_error() {
    let mac = HmacSha256::new(KEY);
    let err = mac.verify(&[0; 32]).expect_err("wrong tag must fail");
    assert_eq!(err.to_string(), "MAC verification failed");
    let boxed: Box<dyn Error> = Box::new(err);
    assert_eq!(boxed.to_string(), "MAC verification failed");
    assert!(!format!("{err:?}").is_empty());
}

#[test]
fn long_keys_are_hashed_first() {
    // RFC 2104 section 2: a key longer than the 64-byte block is replaced by its hash,
    // so the two keys below must give the same MAC; a 64-byte key is used as is.
    let long_key = [0x42u8; 65];
    let msg = b"message";
    assert_eq!(
        hmac_sha256(&long_key, msg),
        hmac_sha256(&sha256(&long_key), msg)
    );
    let block_key = [0x42u8; 64];
    assert_ne!(
        hmac_sha256(&block_key, msg),
        hmac_sha256(&sha256(&block_key), msg)
    );
}
