//! Command ids (DESIGN §3): `YYYYMMDD-HHMMSS-<pid>-<16 lowercase hex>`.
//!
//! An id names files on both sides, travels in frames and is written to logs, so it is
//! validated against `^[0-9]{8}-[0-9]{6}-[0-9]{1,10}-[0-9a-f]{16}$` before any of that.
//! [`CommandId`] can only be built through that validation, so holding one is proof.

use std::fmt;
use std::io;

use crate::rand;
use crate::time;

/// The longest valid id: 8 + 1 + 6 + 1 + 10 + 1 + 16 characters.
pub const MAX_ID_LEN: usize = 43;

/// A validated command id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId(String);

/// Why a string is not a command id. Deliberately carries no copy of the input: ids
/// come from VMs and may hold anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidId;

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid command id")
    }
}

impl std::error::Error for InvalidId {}

impl CommandId {
    /// Validates `s` as an id.
    pub fn parse(s: &str) -> Result<CommandId, InvalidId> {
        if is_valid(s.as_bytes()) {
            Ok(CommandId(s.to_string()))
        } else {
            Err(InvalidId)
        }
    }

    /// Validates raw bytes (from a frame or a file name) as an id.
    pub fn from_bytes(b: &[u8]) -> Result<CommandId, InvalidId> {
        match std::str::from_utf8(b) {
            Ok(s) => CommandId::parse(s),
            Err(_) => Err(InvalidId),
        }
    }

    /// A fresh id for a job created now by process `pid`, with 64 bits from
    /// `/dev/urandom`.
    pub fn generate(pid: u32) -> io::Result<CommandId> {
        let mut r = [0u8; 8];
        rand::fill(&mut r)?;
        let (date, clock) = time::utc_stamp(time::unix_now());
        let s = format!("{date}-{clock}-{pid}-{}", qvm_remote_hmac::hex::encode(&r));
        CommandId::parse(&s).map_err(|_| io::Error::other("generated id failed validation"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `YYYY-MM-DD` day this id was created, for the history layout.
    pub fn day(&self) -> String {
        let d = &self.0.as_bytes()[..8];
        let d = String::from_utf8_lossy(d);
        format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..8])
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandId({})", self.0)
    }
}

/// The regular expression of DESIGN §3, by hand: four dash-separated groups.
fn is_valid(b: &[u8]) -> bool {
    if b.len() > MAX_ID_LEN {
        return false;
    }
    let mut parts = b.split(|&c| c == b'-');
    let (Some(date), Some(clock), Some(pid), Some(rand), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let digits = |p: &[u8]| p.iter().all(u8::is_ascii_digit);
    date.len() == 8
        && digits(date)
        && clock.len() == 6
        && digits(clock)
        && (1..=10).contains(&pid.len())
        && digits(pid)
        && rand.len() == 16
        && rand.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_exactly_the_design_pattern() {
        let good = [
            "20261204-153000-4242-0123456789abcdef",
            "20261204-153000-1-0123456789abcdef",
            "20261204-153000-4294967295-ffffffffffffffff",
        ];
        for s in good {
            assert!(CommandId::parse(s).is_ok(), "{s}");
        }
        let bad = [
            "",
            "20261204-153000-4242-0123456789ABCDEF",
            "20261204-153000-4242-0123456789abcde",
            "20261204-153000-4242-0123456789abcdef0",
            "20261204-153000--0123456789abcdef",
            "20261204-153000-12345678901-0123456789abcdef",
            "2026120-153000-4242-0123456789abcdef",
            "20261204-15300-4242-0123456789abcdef",
            "20261204-153000-4242-0123456789abcdef-",
            "../20261204-153000-4242-0123456789abcdef",
            "20261204-153000-4242-0123456789abcdef\n",
            "20261204-153000-4242-0123456789abcde/",
            "20261204_153000-4242-0123456789abcdef",
            "2026120a-153000-4242-0123456789abcdef",
        ];
        for s in bad {
            assert_eq!(CommandId::parse(s), Err(InvalidId), "{s:?}");
        }
        assert!(CommandId::from_bytes(b"\xff\xfe").is_err());
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = CommandId::generate(4242).unwrap();
        let b = CommandId::generate(4242).unwrap();
        assert_ne!(a, b);
        assert!(a.as_str().contains("-4242-"));
        assert_eq!(a.day().len(), 10);
    }
}
