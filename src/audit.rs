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
//!
//! Rotation keeps the chain. The first line of a new file is
//! `ISO-time ROTATE prev=<hex> chain=<hex>`, where `prev` is the last chain value of the
//! file before it and `chain` continues from `prev` as usual; [`verify_log`] starts a file
//! whose first line is a `ROTATE` from its `prev` (a `ROTATE` anywhere else is an ordinary
//! line), and [`verify_files`] checks that each file's `prev` is the end of the one
//! before. The daemon writes that line when the log it holds open was renamed away or
//! truncated (logrotate's `create` and `copytruncate`), and when it starts on an empty
//! log while its anchor remembers an older chain.
//!
//! The anchor (`<state_dir>/audit-chain`, [`ANCHOR_FILE`]) holds the last chain value the
//! daemon wrote, rewritten after every line. It is what makes lines cut from the *end*
//! of the log visible, which the file alone cannot show: `audit verify` fails when the
//! anchored value is not in the log, and the daemon logs an `AUDIT` warning when it
//! opens a log that does not contain it. Whoever can rewrite both the log and the anchor
//! (root in dom0) can rewrite history; the chain makes that a whole-file rewrite rather
//! than a quiet edit, and copying the last chain value elsewhere pins it.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

use qvm_remote_hmac::{hex, sha256};

use crate::atomic::{self, Durability};
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
/// The anchor's file name in the daemon's state dir.
pub const ANCHOR_FILE: &str = "audit-chain";
/// The category of the first line of a rotated log.
pub const ROTATE: &str = "ROTATE";
/// Largest anchor file read.
const MAX_ANCHOR: u64 = 128;

/// The append-only, hash-chained log.
pub struct AuditLog {
    inner: Mutex<Inner>,
    echo: Echo,
}

struct Inner {
    file: Option<File>,
    last: String,
    /// The log's path, to notice rotation; `None` for a memory log.
    path: Option<std::path::PathBuf>,
    /// Where the last chain value is kept, if anywhere.
    anchor: Option<std::path::PathBuf>,
    /// Device and inode of the open file.
    identity: (u64, u64),
    /// The file's length after our last write; a shorter file was truncated.
    expected_len: u64,
    /// The next line written must be a `ROTATE` line (a new, empty file).
    rotate_next: bool,
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
        AuditLog::open_with(path, None, echo)
    }

    /// [`AuditLog::open`] with an anchor file that keeps the last chain value (see the
    /// module doc): an empty log continues the anchored chain with a `ROTATE` line, and a
    /// log that does not contain the anchored value gets an `AUDIT` warning line.
    pub fn open_anchored(path: &Path, anchor: &Path, echo: Echo) -> io::Result<AuditLog> {
        AuditLog::open_with(path, Some(anchor), echo)
    }

    fn open_with(path: &Path, anchor: Option<&Path>, echo: Echo) -> io::Result<AuditLog> {
        let (mut file, identity, len) = open_file(path)?;
        let tail = read_tail(&mut file, len)?;
        let mut last = last_chain_of(&tail, len);
        let anchored = anchor.and_then(read_anchor);
        let mut rotate_next = false;
        let mut missing_anchor = None;
        if let Some(a) = anchored {
            if len == 0 {
                last = a;
                rotate_next = true;
            } else if !chains_in(&tail).any(|c| c == a) {
                missing_anchor = Some(a);
            }
        }
        let log = AuditLog {
            inner: Mutex::new(Inner {
                file: Some(file),
                last,
                path: Some(path.to_path_buf()),
                anchor: anchor.map(Path::to_path_buf),
                identity,
                expected_len: len,
                rotate_next,
            }),
            echo,
        };
        if let Some(a) = missing_anchor {
            log.event(
                "AUDIT",
                &[
                    (
                        "warning",
                        "the log does not contain the last chain value the daemon recorded: lines were cut from its end, or it was replaced",
                    ),
                    ("expected", &a),
                ],
            );
        }
        Ok(log)
    }

    /// A log that only echoes (for `--dry-run` tools and tests).
    pub fn memory(echo: Echo) -> AuditLog {
        AuditLog {
            inner: Mutex::new(Inner {
                file: None,
                last: GENESIS.to_string(),
                path: None,
                anchor: None,
                identity: (0, 0),
                expected_len: 0,
                rotate_next: false,
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
        inner.follow_rotation();
        // Another process (the panel, or a second daemon tool) may append to the same
        // file: hold the file lock from reading its end to writing ours.
        let file = inner.file.as_ref().and_then(|f| f.try_clone().ok());
        let _lock = file
            .as_ref()
            .and_then(|f| crate::sys::lock_exclusive(f).ok());
        inner.catch_up();
        let mut lines = String::new();
        if inner.rotate_next {
            let rot = format!(
                "{} {ROTATE} prev={}",
                time::iso8601_ms(time::unix_now_ms()),
                inner.last
            );
            let chain = next_chain(&inner.last, &rot);
            lines.push_str(&format!("{rot} chain={chain}\n"));
            inner.last = chain;
            inner.rotate_next = false;
        }
        let chain = next_chain(&inner.last, &text);
        lines.push_str(&format!("{text} chain={chain}\n"));
        inner.last = chain;
        inner.append(lines.as_bytes());
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

impl Inner {
    /// Notices that the file at `path` is no longer the one we hold open (renamed away
    /// or removed: logrotate `create`) or was cut shorter than we wrote it
    /// (`copytruncate`), and continues in the new file with a `ROTATE` line.
    fn follow_rotation(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let on_disk = fs::symlink_metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        if on_disk != Some(self.identity) {
            match open_file(&path) {
                Ok((file, identity, len)) => {
                    self.file = Some(file);
                    self.identity = identity;
                    self.expected_len = len;
                    // A non-empty file that is not ours breaks the chain at this line,
                    // which `verify` then shows: a discontinuity must not be hidden.
                    self.rotate_next = true;
                }
                Err(e) => eprintln!("qvm-remote-dom0: audit log reopen failed: {e}"),
            }
            return;
        }
        let len = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len());
        if len.is_some_and(|l| l < self.expected_len) {
            self.expected_len = len.unwrap_or(0);
            self.rotate_next = true;
        }
    }

    /// If the file grew by lines another writer appended, continues the chain from the
    /// file's last line instead of from our own last value.
    fn catch_up(&mut self) {
        let Some(f) = self.file.as_mut() else {
            return;
        };
        let Ok(len) = f.metadata().map(|m| m.len()) else {
            return;
        };
        if len > self.expected_len {
            if let Ok(tail) = read_tail(f, len) {
                self.last = last_chain_of(&tail, len);
            }
            self.expected_len = len;
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        if let Some(f) = self.file.as_mut() {
            // A failed audit write must not stop dom0 from answering; it is reported
            // on stderr, which the journal keeps.
            match f.write_all(bytes) {
                Ok(()) => self.expected_len += bytes.len() as u64,
                Err(e) => eprintln!("qvm-remote-dom0: audit log write failed: {e}"),
            }
        }
        if let Some(anchor) = &self.anchor {
            if let Err(e) = write_anchor(anchor, &self.last) {
                eprintln!("qvm-remote-dom0: audit anchor write failed: {e}");
            }
        }
    }
}

fn open_file(path: &Path) -> io::Result<(File, (u64, u64), u64)> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    Ok((file, (meta.dev(), meta.ino()), meta.len()))
}

/// The anchored chain value, if the file holds one.
pub fn read_anchor(path: &Path) -> Option<String> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let mut text = String::new();
    f.take(MAX_ANCHOR).read_to_string(&mut text).ok()?;
    let v = text.trim_end();
    is_chain_value(v).then(|| v.to_string())
}

/// Records the last chain value. The value always has the same length, so an existing
/// anchor is overwritten in place (one write within one block, no directory change:
/// this runs for every audit line); a missing or odd-sized one is replaced atomically.
fn write_anchor(path: &Path, chain: &str) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let text = format!("{chain}\n");
    if let Ok(f) = OpenOptions::new()
        .write(true)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(path)
    {
        if f.metadata()
            .is_ok_and(|m| m.is_file() && m.len() == text.len() as u64)
        {
            return f.write_all_at(text.as_bytes(), 0);
        }
    }
    atomic::replace(path, text.as_bytes(), Durability::Buffered)
}

fn is_chain_value(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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

/// The last `TAIL_READ` bytes of the file, as text.
fn read_tail(file: &mut File, len: u64) -> io::Result<String> {
    let start = len.saturating_sub(TAIL_READ);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    Read::by_ref(file).take(TAIL_READ).read_to_end(&mut tail)?;
    Ok(String::from_utf8_lossy(&tail).into_owned())
}

/// The chain values of the complete lines in a tail, last first.
fn chains_in(tail: &str) -> impl Iterator<Item = &str> {
    tail.lines()
        .rev()
        .filter_map(|l| split_chain(l).map(|(_, c)| c))
}

/// The chain value of the last line of a file of `len` bytes whose end is `tail`.
fn last_chain_of(tail: &str, len: u64) -> String {
    let last = tail.lines().rev().find(|l| !l.is_empty());
    match last.and_then(|l| split_chain(l).map(|(_, c)| c.to_string())) {
        Some(c) => c,
        None if len == 0 => GENESIS.to_string(),
        // A log whose end we cannot read a chain from is continued from a marker the
        // verifier reports, rather than silently restarting the chain.
        None => "unreadable-tail".to_string(),
    }
}

fn split_chain(line: &str) -> Option<(&str, &str)> {
    let i = line.rfind(" chain=")?;
    let chain = line.get(i + 7..)?;
    if !is_chain_value(chain) {
        return None;
    }
    Some((line.get(..i)?, chain))
}

/// The `prev` value of a `ROTATE` line's text (`TIME ROTATE prev=<hex>`).
fn rotate_prev(text: &str) -> Option<&str> {
    let mut words = text.split(' ');
    let _time = words.next()?;
    if words.next()? != ROTATE {
        return None;
    }
    let prev = words.next()?.strip_prefix("prev=")?;
    (words.next().is_none() && is_chain_value(prev)).then_some(prev)
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
    /// A rotated file does not continue the file before it: its first line is not a
    /// `ROTATE` line whose `prev` is that file's last chain value.
    Discontinuity {
        /// The previous file's last chain value.
        expected: String,
    },
    /// The log does not contain the chain value the daemon recorded last: lines were
    /// removed from its end (or the file was replaced).
    MissingEnd {
        /// Lines the log has.
        lines: usize,
        /// The anchored value.
        expected: String,
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
            VerifyError::Discontinuity { expected } => write!(
                f,
                "line 1: does not continue the previous file (want a ROTATE line with prev={expected})"
            ),
            VerifyError::MissingEnd { lines, expected } => write!(
                f,
                "line {}: missing: the daemon last wrote chain {expected}, which is not in the log (lines cut from its end, or the file replaced)",
                lines + 1
            ),
        }
    }
}

/// What a verified log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Number of lines.
    pub lines: usize,
    /// The value the first line continues: [`GENESIS`], or a `ROTATE` line's `prev`.
    pub first_prev: String,
    /// The last chain value (`first_prev` for an empty file).
    pub last: String,
    /// 1-based line whose chain equals the value looked for, if it was found.
    pub found: Option<usize>,
}

/// Verifies one log from its own start: from a first `ROTATE` line's `prev`, else from
/// [`GENESIS`]. `look_for` (the anchor) is reported in [`Verified::found`].
pub fn verify_log(r: impl BufRead, look_for: Option<&str>) -> Result<Verified, VerifyError> {
    walk(r, None, look_for)
}

/// Verifies rotated logs given oldest first: each must verify, and each after the first
/// must start with a `ROTATE` line whose `prev` is the end of the one before. On failure,
/// returns the index of the bad file with the error.
pub fn verify_files(paths: &[&Path]) -> Result<Vec<Verified>, (usize, VerifyError)> {
    let mut out: Vec<Verified> = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let file = File::open(path)
            .map_err(|e| (i, VerifyError::Io(format!("{}: {e}", path.display()))))?;
        let v = verify_log(BufReader::new(file), None).map_err(|e| (i, e))?;
        if let Some(prev) = out.last() {
            if v.first_prev != prev.last {
                return Err((
                    i,
                    VerifyError::Discontinuity {
                        expected: prev.last.clone(),
                    },
                ));
            }
        }
        out.push(v);
    }
    Ok(out)
}

/// Checks a whole log. `start` is the chain value the first line continues from:
/// [`GENESIS`] for a first log, or the last value of the previous file after rotation.
/// Returns the number of lines and the last chain value.
pub fn verify(path: &Path, start: &str) -> Result<(usize, String), VerifyError> {
    let file = File::open(path).map_err(|e| VerifyError::Io(format!("{}: {e}", path.display())))?;
    verify_reader(BufReader::new(file), start)
}

/// [`verify`] over any reader.
pub fn verify_reader(r: impl BufRead, start: &str) -> Result<(usize, String), VerifyError> {
    walk(r, Some(start), None).map(|v| (v.lines, v.last))
}

/// Checks every line's chain. `start` `None` means: from a first `ROTATE` line's `prev`,
/// else from [`GENESIS`].
fn walk(
    mut r: impl BufRead,
    start: Option<&str>,
    look_for: Option<&str>,
) -> Result<Verified, VerifyError> {
    let mut prev = start.unwrap_or(GENESIS).to_string();
    let mut first_prev = prev.clone();
    let mut found = None;
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
            return Ok(Verified {
                lines: n,
                first_prev,
                last: prev,
                found,
            });
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
        if n == 1 && start.is_none() {
            if let Some(p) = rotate_prev(text) {
                prev = p.to_string();
                first_prev = prev.clone();
            }
        }
        if next_chain(&prev, text) != chain {
            return Err(VerifyError::Broken { line: n });
        }
        if look_for == Some(chain) {
            found = Some(n);
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
        // anchor catches that (`rotation_and_the_anchor_keep_the_chain` below).
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
    fn two_writers_of_one_file_keep_one_chain() {
        // The daemon and the panel each hold the log open and append in turns.
        let dir = std::env::temp_dir().join(format!("qvm-audit2-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let daemon = AuditLog::open(&path, Echo::Quiet).unwrap();
        let panel = AuditLog::open(&path, Echo::Quiet).unwrap();
        for i in 0..5 {
            daemon.event("EXEC", &[("n", &i.to_string())]);
            panel.event("PANEL", &[("n", &i.to_string())]);
            panel.event("PANEL", &[("n", "again")]);
        }
        let (n, _) = verify(&path, GENESIS).unwrap();
        assert_eq!(n, 15);
        fs::remove_dir_all(dir).unwrap();
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

    fn temp(tag: &str) -> std::path::PathBuf {
        crate::testutil::temp_dir(&format!("audit-{tag}"))
    }

    fn verify_path(p: &Path, look_for: Option<&str>) -> Result<Verified, VerifyError> {
        verify_log(BufReader::new(File::open(p).unwrap()), look_for)
    }

    #[test]
    fn rotation_and_the_anchor_keep_the_chain() {
        let dir = temp("rotate");
        let (path, anchor) = (dir.join("log"), dir.join(ANCHOR_FILE));
        let old = dir.join("log.1");
        let log = AuditLog::open_anchored(&path, &anchor, Echo::Quiet).unwrap();
        log.event("START", &[("n", "1")]);
        log.event("EXEC", &[("n", "2")]);
        let first = verify_path(&path, None).unwrap();
        assert_eq!(read_anchor(&anchor).as_deref(), Some(first.last.as_str()));
        // logrotate `create`: the file is renamed away while the daemon holds it open.
        fs::rename(&path, &old).unwrap();
        log.event("DONE", &[("n", "3")]);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.lines()
                .next()
                .unwrap()
                .contains(&format!(" ROTATE prev={}", first.last)),
            "{text}"
        );
        let second = verify_path(&path, None).unwrap();
        assert_eq!(
            (second.lines, second.first_prev.as_str()),
            (2, first.last.as_str())
        );
        let both = verify_files(&[&old, &path]).unwrap();
        assert_eq!(both.len(), 2);
        // Out of order, or with the old file missing its last line, they do not link.
        assert!(matches!(
            verify_files(&[&path, &old]),
            Err((1, VerifyError::Discontinuity { .. }))
        ));
        let old_text = fs::read_to_string(&old).unwrap();
        let cut_old = dir.join("log.1.cut");
        fs::write(
            &cut_old,
            old_text.lines().next().unwrap().to_string() + "\n",
        )
        .unwrap();
        assert!(matches!(
            verify_files(&[&cut_old, &path]),
            Err((1, VerifyError::Discontinuity { .. }))
        ));
        // `copytruncate`: the file is emptied under the daemon.
        let before = verify_path(&path, None).unwrap().last;
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        log.event("DONE", &[("n", "4")]);
        let v = verify_path(&path, None).unwrap();
        assert_eq!((v.lines, v.first_prev.as_str()), (2, before.as_str()));
        drop(log);
        // Rotation while the daemon was down: it starts the empty log from the anchor.
        let end = read_anchor(&anchor).unwrap();
        fs::remove_file(&path).unwrap();
        let log = AuditLog::open_anchored(&path, &anchor, Echo::Quiet).unwrap();
        log.event("START", &[("n", "5")]);
        let v = verify_path(&path, Some(&end)).unwrap();
        assert_eq!(v.first_prev, end);
        drop(log);
        // Whole lines cut from the end: the file verifies alone, the anchor does not
        // match, and the daemon says so when it opens the log.
        let full = fs::read_to_string(&path).unwrap();
        let anchored = read_anchor(&anchor).unwrap();
        assert_eq!(verify_path(&path, Some(&anchored)).unwrap().found, Some(2));
        let first_line = full.lines().next().unwrap().to_string() + "\n";
        fs::write(&path, &first_line).unwrap();
        let v = verify_path(&path, Some(&anchored)).unwrap();
        assert_eq!((v.lines, v.found), (1, None));
        let log = AuditLog::open_anchored(&path, &anchor, Echo::Quiet).unwrap();
        drop(log);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.lines().nth(1).unwrap().contains(" AUDIT warning="),
            "{text}"
        );
        assert_eq!(verify_path(&path, None).unwrap().lines, 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_rotate_line_counts_only_as_the_first_line() {
        let start = "ab".repeat(32);
        let rot = format!("2026-12-04T15:30:00.000Z ROTATE prev={start}");
        let c1 = next_chain(&start, &rot);
        let text = format!("{rot} chain={c1}\n");
        let v = verify_log(text.as_bytes(), None).unwrap();
        assert_eq!(
            (v.lines, v.first_prev.as_str(), v.last.as_str()),
            (1, start.as_str(), c1.as_str())
        );
        // In the middle of a file it is an ordinary line and cannot restart the chain.
        let t0 = "2026-12-04T15:29:00.000Z START";
        let c0 = next_chain(GENESIS, t0);
        let mid = format!("{t0} chain={c0}\n{rot} chain={c1}\n");
        assert_eq!(check(&mid), Err(VerifyError::Broken { line: 2 }));
        assert_eq!(rotate_prev(&format!("{rot} extra=1")), None);
        assert_eq!(rotate_prev("t ROTATE prev=xyz"), None);
    }
}
