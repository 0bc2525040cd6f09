//! Protocol 2 (DESIGN §3 and §4): job files, result files, cancel tokens and frames.
//!
//! Everything here is pure: bytes in, values or errors out, no I/O except the frame
//! reader and writer over a caller's stream. Every length is checked against a named
//! limit before anything is allocated for it.

pub mod frame;
mod header;
pub mod job;
pub mod result;

pub use frame::{Frame, FrameError, FrameReader, FrameType};
pub use job::{Job, JobError, JobHeader, JobLimits};
pub use result::{JobResult, ResultError, Status, Truncated};

use crate::id::CommandId;
use crate::keys::Key;
use qvm_remote_hmac::{hex, HmacSha256};

/// Protocol version carried in `HELLO` and in the first line of every file.
pub const PROTOCOL_VERSION: &str = "2";

/// Domain separation prefix of a cancel token.
pub const CANCEL_DOMAIN: &str = "qvm-remote-cancel 2\n";

/// The cancel token for `id`: lowercase hex of HMAC(key, "qvm-remote-cancel 2\n" + id).
pub fn cancel_token(key: &Key, id: &CommandId) -> String {
    let mut h = HmacSha256::new(key.bytes());
    h.update(CANCEL_DOMAIN.as_bytes());
    h.update(id.as_str().as_bytes());
    hex::encode(&h.finalize())
}

/// Checks a cancel token in constant time. `token` is the hex text as received.
pub fn verify_cancel(key: &Key, id: &CommandId, token: &[u8]) -> bool {
    let token = match std::str::from_utf8(token) {
        Ok(t) => t.trim_end_matches('\n'),
        Err(_) => return false,
    };
    let Ok(tag) = hex::decode(token) else {
        return false;
    };
    let mut h = HmacSha256::new(key.bytes());
    h.update(CANCEL_DOMAIN.as_bytes());
    h.update(id.as_str().as_bytes());
    h.verify(&tag).is_ok()
}

/// Builds a `CANCEL` frame payload: `<id>\n<token>`.
pub fn cancel_payload(key: &Key, id: &CommandId) -> Vec<u8> {
    format!("{id}\n{}", cancel_token(key, id)).into_bytes()
}

/// Splits a `CANCEL` payload into its id and token bytes.
pub fn parse_cancel_payload(p: &[u8]) -> Option<(CommandId, &[u8])> {
    let nl = p.iter().position(|&b| b == b'\n')?;
    let id = CommandId::from_bytes(p.get(..nl)?).ok()?;
    Some((id, p.get(nl + 1..)?))
}

/// Makes text safe for a single log or reason line: printable ASCII is kept, every
/// other byte (newlines, escapes, non-ASCII) becomes `\xNN`, and the result is capped at
/// `max` bytes with a trailing `...` when cut. A VM cannot forge or split lines with it.
pub fn escape_line(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(max));
    for &b in bytes {
        if out.len() >= max {
            out.push_str("...");
            break;
        }
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::parse(&"42".repeat(32)).unwrap()
    }

    #[test]
    fn cancel_tokens_verify_only_for_their_id_and_key() {
        let id = CommandId::parse("20261204-153000-4242-0123456789abcdef").unwrap();
        let other = CommandId::parse("20261204-153000-4242-0123456789abcdee").unwrap();
        let t = cancel_token(&key(), &id);
        assert!(verify_cancel(&key(), &id, t.as_bytes()));
        assert!(!verify_cancel(&key(), &other, t.as_bytes()));
        let k2 = Key::parse(&"43".repeat(32)).unwrap();
        assert!(!verify_cancel(&k2, &id, t.as_bytes()));
        assert!(!verify_cancel(&key(), &id, &t.as_bytes()[..32]));
        assert!(!verify_cancel(&key(), &id, b"zz"));
        let p = cancel_payload(&key(), &id);
        let (pid, tok) = parse_cancel_payload(&p).unwrap();
        assert_eq!(pid, id);
        assert!(verify_cancel(&key(), &pid, tok));
        assert!(parse_cancel_payload(b"../x\nabc").is_none());
    }

    #[test]
    fn escape_line_neutralises_control_bytes() {
        assert_eq!(escape_line(b"ok", 10), "ok");
        assert_eq!(escape_line(b"a\nb\x1b[31m", 100), "a\\x0ab\\x1b[31m");
        assert_eq!(escape_line(b"\\", 10), "\\\\");
        assert_eq!(escape_line(&[0xff], 10), "\\xff");
        assert_eq!(escape_line(b"abcdefgh", 4), "abcd...");
    }
}
