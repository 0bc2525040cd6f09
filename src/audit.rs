//! The dom0 audit log (DESIGN §2, `QVM_REMOTE_LOG`): one line per event,
//! `ISO-time CATEGORY key=value… chain=<hex>`.
//!
//! Each line's chain value is SHA-256 over the previous line's chain value (64 hex
//! characters; 64 zeros before the first line), a newline, and this line's text up to
//! the ` chain=` field. Editing, deleting, reordering or truncating lines therefore
//! breaks the chain at the first damaged line, which [`verify`] names.
//!
//! Every value is escaped so that nothing a VM sends can add a line, a field or a
//! terminal escape: printable ASCII stays, everything else becomes `\xNN`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use qvm_remote_hmac::{hex, sha256};

use crate::proto::escape_line;
use crate::time;

/// Chain value before the first line of a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest value written for one field (command text is logged up to this, escaped).
pub const MAX_FIELD: usize = 4096;
/// Longest line `verify` accepts.
pub const MAX_LINE: usize = 64 * 1024;
/// How much of the file's end is read to find the last chain value when opening.
const TAIL_READ: u64 = MAX_LINE as u64 + 1;

/// The append-only, hash-chained log.
pub struct AuditLog {
    inner: Mutex<Inner>,
    echo: Echo,
}

struct Inner {
    file: Option<File>,
    last: String,
}

/// Where log lines are also shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Nowhere.
    Quiet,
    /// On stderr, plain.
    Stderr,
    /// On stderr, with the category coloured (stderr is a terminal).
    StderrColour,
}

impl AuditLog {
    /// Opens (creating, mode 0600) the log at `path` and picks up its chain.
    pub fn open(path: &Path, echo: Echo) -> io::Result<AuditLog> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .custom_flags(crate::sys::O_NOFOLLOW)
            .open(path)?;
        let last = last_chain(&mut file)?;
        Ok(AuditLog {
            inner: Mutex::new(Inner {
                file: Some(file),
                last,
            }),
            echo,
        })
    }

    /// A log that only echoes (for `--dry-run` tools and tests).
    pub fn memory(echo: Echo) -> AuditLog {
        AuditLog {
            inner: Mutex::new(Inner {
                file: None,
                last: GENESIS.to_string(),
            }),
            echo,
        }
    }

    /// Appends one event. Fields are `(key, value)`; values are escaped here.
    pub fn event(&self, category: &str, fields: &[(&str, &str)]) {
        let mut text = format!("{} {category}", time::iso8601_ms(time::unix_now_ms()));
        for (k, v) in fields {
            text.push(' ');
            text.push_str(k);
            text.push('=');
            text.push_str(&quote(v.as_bytes()));
        }
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let chain = next_chain(&inner.last, &text);
        let line = format!("{text} chain={chain}\n");
        if let Some(f) = inner.file.as_mut() {
            // A failed audit write must not stop dom0 from answering; it is reported
            // on stderr, which the journal keeps.
            if let Err(e) = f.write_all(line.as_bytes()) {
                eprintln!("qvm-remote-dom0: audit log write failed: {e}");
            }
        }
        inner.last = chain;
        drop(inner);
        match self.echo {
            Echo::Quiet => {}
            Echo::Stderr => eprintln!("{text}"),
            Echo::StderrColour => eprintln!("{}", colour(&text, category)),
        }
    }

    /// Appends an event whose fields include raw bytes (command text, reasons).
    pub fn event_bytes(&self, category: &str, fields: &[(&str, &[u8])]) {
        let owned: Vec<(&str, String)> = fields
            .iter()
            .map(|(k, v)| (*k, String::from_utf8_lossy(v).into_owned()))
            .collect();
        let refs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.event(category, &refs);
    }
}

/// A value as written: escaped, and in double quotes when it holds a space, a quote or
/// is empty, so a reader can always split fields on spaces outside quotes.
pub fn quote(v: &[u8]) -> String {
    let esc = escape_line(v, MAX_FIELD);
    if esc.is_empty() || esc.contains([' ', '"', '=']) {
        format!("\"{}\"", esc.replace('"', "\\x22"))
    } else {
        esc
    }
}

/// The chain value of a line with text `text` after a line whose chain was `prev`.
pub fn next_chain(prev: &str, text: &str) -> String {
    let mut input = Vec::with_capacity(prev.len() + 1 + text.len());
    input.extend_from_slice(prev.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(text.as_bytes());
    hex::encode(&sha256(&input))
}

fn colour(text: &str, category: &str) -> String {
    let code = match category {
        "AUTH-FAIL" | "REJECT" | "DENY" | "DONE-FAIL" | "TIMEOUT" | "PROTO" => "31",
        "DONE" | "AUTH-OK" => "32",
        "EXEC" | "ASK" => "33",
        _ => return text.to_string(),
    };
    text.replacen(category, &format!("\x1b[{code}m{category}\x1b[0m"), 1)
}

/// Finds the chain value of the last line, reading only the file's tail.
fn last_chain(file: &mut File) -> io::Result<String> {
    let len = file.seek(SeekFrom::End(0))?;
    let start = len.saturating_sub(TAIL_READ);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    Read::by_ref(file).take(TAIL_READ).read_to_end(&mut tail)?;
    let text = String::from_utf8_lossy(&tail);
    let last = text.lines().rev().find(|l| !l.is_empty());
    Ok(
        match last.and_then(|l| split_chain(l).map(|(_, c)| c.to_string())) {
            Some(c) => c,
            None if len == 0 => GENESIS.to_string(),
            // A log whose end we cannot read a chain from is continued from a marker the
            // verifier reports, rather than silently restarting the chain.
            None => "unreadable-tail".to_string(),
        },
    )
}

fn split_chain(line: &str) -> Option<(&str, &str)> {
    let i = line.rfind(" chain=")?;
    let chain = line.get(i + 7..)?;
    if chain.len() != 64
        || !chain
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    Some((line.get(..i)?, chain))
}

/// What `audit verify` found wrong.
#[derive(Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// The file could not be read.
    Io(String),
    /// Line `line` does not chain from the one before it (edited, deleted, reordered).
    Broken {
        /// 1-based line number.
        line: usize,
    },
    /// Line `line` has no chain field or is not a log line.
    Malformed {
        /// 1-based line number.
        line: usize,
    },
    /// The file does not end with a newline: the last line was cut.
    TruncatedTail {
        /// 1-based number of the cut line.
        line: usize,
    },
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::Io(e) => write!(f, "{e}"),
            VerifyError::Broken { line } => {
                write!(
                    f,
                    "line {line}: chain broken (edited, deleted or reordered)"
                )
            }
            VerifyError::Malformed { line } => write!(f, "line {line}: not a chained log line"),
            VerifyError::TruncatedTail { line } => {
                write!(f, "line {line}: truncated (no final newline)")
            }
        }
    }
}

/// Checks a whole log. `start` is the chain value the first line continues from:
/// [`GENESIS`] for a first log, or the last value of the previous file after rotation.
/// Returns the number of lines and the last chain value.
pub fn verify(path: &Path, start: &str) -> Result<(usize, String), VerifyError> {
    let file = File::open(path).map_err(|e| VerifyError::Io(format!("{}: {e}", path.display())))?;
    verify_reader(BufReader::new(file), start)
}

/// [`verify`] over any reader.
pub fn verify_reader(mut r: impl BufRead, start: &str) -> Result<(usize, String), VerifyError> {
    let mut prev = start.to_string();
    let mut n = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let got = r
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| VerifyError::Io(e.to_string()))?;
        if got == 0 {
            return Ok((n, prev));
        }
        n += 1;
        if buf.last() != Some(&b'\n') {
            return Err(if got > MAX_LINE {
                VerifyError::Malformed { line: n }
            } else {
                VerifyError::TruncatedTail { line: n }
            });
        }
        buf.pop();
        let line = std::str::from_utf8(&buf).map_err(|_| VerifyError::Malformed { line: n })?;
        let (text, chain) = split_chain(line).ok_or(VerifyError::Malformed { line: n })?;
        if next_chain(&prev, text) != chain {
            return Err(VerifyError::Broken { line: n });
        }
        prev = chain.to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        let mut prev = GENESIS.to_string();
        let mut out = String::new();
        for i in 0..5 {
            let text = format!("2026-12-04T15:30:0{i}.000Z EXEC vm=work id=x{i}");
            prev = next_chain(&prev, &text);
            out.push_str(&format!("{text} chain={prev}\n"));
        }
        out
    }

    fn check(text: &str) -> Result<(usize, String), VerifyError> {
        verify_reader(text.as_bytes(), GENESIS)
    }

    #[test]
    fn a_real_chain_verifies() {
        assert_eq!(check(&sample()).unwrap().0, 5);
        assert_eq!(check("").unwrap().0, 0);
    }

    #[test]
    fn every_kind_of_tampering_is_named() {
        let good = sample();
        let lines: Vec<&str> = good.lines().collect();
        let edited = good.replacen("id=x2", "id=x9", 1);
        assert_eq!(check(&edited), Err(VerifyError::Broken { line: 3 }));
        let mut deleted = lines.clone();
        deleted.remove(1);
        let deleted = deleted.join("\n") + "\n";
        assert_eq!(check(&deleted), Err(VerifyError::Broken { line: 2 }));
        let mut swapped = lines.clone();
        swapped.swap(2, 3);
        let swapped = swapped.join("\n") + "\n";
        assert_eq!(check(&swapped), Err(VerifyError::Broken { line: 3 }));
        let cut = &good[..good.len() - 10];
        assert!(matches!(
            check(cut),
            Err(VerifyError::TruncatedTail { line: 5 }) | Err(VerifyError::Malformed { line: 5 })
        ));
        // Dropping whole lines from the end cannot be seen from the file alone; the
        // daemon's state keeps the last chain value for that (see ARCHITECTURE.md).
        for i in 0..good.len() {
            let mut b = good.clone().into_bytes();
            if b[i] == b'\n' {
                continue;
            }
            b[i] ^= 0x04;
            let text = String::from_utf8_lossy(&b).into_owned();
            assert!(check(&text).is_err(), "byte {i}");
        }
    }

    #[test]
    fn values_cannot_forge_lines_or_fields() {
        assert_eq!(quote(b"plain"), "plain");
        assert_eq!(quote(b"two words"), "\"two words\"");
        assert_eq!(quote(b"x\nEXEC vm=dom0"), "\"x\\x0aEXEC vm=dom0\"");
        assert_eq!(quote(b""), "\"\"");
        assert_eq!(quote(b"a\"b"), "\"a\\x22b\"");
        assert_eq!(quote(b"\x1b[31m"), "\\x1b[31m");
    }

    #[test]
    fn the_file_log_continues_its_chain_across_opens() {
        let dir = std::env::temp_dir().join(format!("qvm-audit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        {
            let log = AuditLog::open(&path, Echo::Quiet).unwrap();
            log.event("EXEC", &[("vm", "work"), ("cmd", "echo hi")]);
        }
        {
            let log = AuditLog::open(&path, Echo::Quiet).unwrap();
            log.event_bytes("DONE", &[("vm", b"work"), ("out", b"\x00\n")]);
        }
        let (n, _) = verify(&path, GENESIS).unwrap();
        assert_eq!(n, 2);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("cmd=\"echo hi\""), "{text}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
