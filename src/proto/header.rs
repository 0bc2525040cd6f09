//! The shared shape of job and result files: `name value\n` header lines, a blank
//! line, then payload bytes. Lines come in one fixed order; anything else is refused.

/// Splits `bytes` at the end of the header (`\n\n`), searching only the first `max`
/// bytes. Returns `(header, payload)` where `header` includes its final newline but
/// not the blank line.
pub(crate) fn split(bytes: &[u8], max: usize) -> Option<(&[u8], &[u8])> {
    let window = bytes.get(..max.min(bytes.len()))?;
    let end = window.windows(2).position(|w| w == b"\n\n")?;
    Some((bytes.get(..end + 1)?, bytes.get(end + 2..)?))
}

/// Walks header lines in order.
pub(crate) struct Lines<'a> {
    rest: &'a [u8],
    /// Bytes consumed so far, so a caller can find where a line starts.
    pub(crate) offset: usize,
}

impl<'a> Lines<'a> {
    pub(crate) fn new(header: &'a [u8]) -> Lines<'a> {
        Lines {
            rest: header,
            offset: 0,
        }
    }

    /// The next whole line, without its newline.
    pub(crate) fn line(&mut self) -> Option<&'a [u8]> {
        let nl = self.rest.iter().position(|&b| b == b'\n')?;
        let line = self.rest.get(..nl)?;
        self.rest = self.rest.get(nl + 1..)?;
        self.offset += nl + 1;
        Some(line)
    }

    /// The next line, which must be `name value` with exactly this name and one space.
    pub(crate) fn field(&mut self, name: &str) -> Option<&'a str> {
        let line = self.line()?;
        let value = line.strip_prefix(name.as_bytes())?.strip_prefix(b" ")?;
        let value = std::str::from_utf8(value).ok()?;
        if value.is_empty()
            || value.starts_with(' ')
            || value.bytes().any(|b| !(0x20..=0x7e).contains(&b))
        {
            return None;
        }
        Some(value)
    }

    /// The name of the next line without consuming it.
    pub(crate) fn peek_name(&self) -> Option<&'a [u8]> {
        let nl = self.rest.iter().position(|&b| b == b'\n')?;
        let line = self.rest.get(..nl)?;
        let sp = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
        line.get(..sp)
    }

    /// True when every line has been consumed.
    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// A decimal number with no sign, no leading zeros (except `0` itself) and at most 20
/// digits, so `u64` cannot overflow silently.
pub(crate) fn number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// Exactly 64 lowercase hex characters, decoded.
pub(crate) fn digest(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    qvm_remote_hmac::hex::decode(s).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_finds_the_blank_line_within_the_limit() {
        assert_eq!(split(b"a 1\n\nxy", 100), Some((&b"a 1\n"[..], &b"xy"[..])));
        assert_eq!(split(b"a 1\n\n", 100), Some((&b"a 1\n"[..], &b""[..])));
        assert_eq!(split(b"a 1\nb 2", 100), None);
        assert_eq!(split(b"a 1\n\nxy", 4), None);
        assert_eq!(split(b"a 1\n\nxy", 5), Some((&b"a 1\n"[..], &b"xy"[..])));
    }

    #[test]
    fn numbers_are_strict() {
        assert_eq!(number("0"), Some(0));
        assert_eq!(number("300"), Some(300));
        assert_eq!(number("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "-1",
            "+1",
            "01",
            "1 ",
            " 1",
            "18446744073709551616",
            "1e3",
        ] {
            assert_eq!(number(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fields_need_the_exact_name_and_one_space() {
        let mut l = Lines::new(b"id x\nid  y\nidz\nname \x01\n");
        assert_eq!(l.field("id"), Some("x"));
        assert_eq!(l.field("id"), None);
        assert_eq!(l.field("id"), None);
        assert_eq!(l.field("name"), None);
        assert!(l.is_empty());
    }
}
