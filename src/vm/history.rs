//! The client's archive and log (DESIGN §2): `history/YYYY-MM-DD/<id>/` and
//! `audit.log`.
//!
//! Each archived run is a directory (0700) holding, each 0600:
//!
//! ```text
//! command   the command text, as sent
//! out       its stdout bytes
//! err       its stderr bytes
//! exit      the client's exit code and a newline
//! meta      key=value lines: id, status, exit, signal, started_ms, duration_ms,
//!           truncated, reason, created (exit is the command's own exit field)
//! ```
//!
//! `audit.log` gets one line per run (and the agent's events), each
//! `<ISO 8601 time> key=value…`, with the command text escaped by
//! [`escape_line`] so no byte of it can start a new line or a terminal escape.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use super::datadir::{self, DataDir};
use super::files::{self, ReadError};
use super::{Console, Error};
use crate::atomic::{self, Durability};
use crate::id::CommandId;
use crate::proto::escape_line;
use crate::proto::result::PROTOCOL_MAX_OUTPUT;
use crate::proto::JobResult;
use crate::time;

/// How much of the command text an audit line carries.
pub const AUDIT_COMMAND_MAX: usize = 200;
/// How much of a command's first line `history` shows.
pub const HISTORY_COMMAND_MAX: usize = 80;
/// How much of the end of `audit.log` `log` reads.
pub const MAX_LOG_TAIL: u64 = 1 << 20;
/// Largest `exit` or `meta` file read back.
pub const MAX_SMALL_FILE: usize = 4096;
/// Largest `command` file read back (the protocol's largest body).
pub const MAX_COMMAND_FILE: usize = crate::proto::job::PROTOCOL_MAX_COMMAND;

/// One finished run, as archived.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// dom0's verified answer.
    pub result: &'a JobResult,
    /// The command text (empty if unknown, for a result fetched without its job).
    pub body: &'a [u8],
    /// When the job was created, unix seconds, if known.
    pub created: Option<u64>,
    /// The exit code the client ended with.
    pub client_exit: u8,
}

/// The `meta` file of a record.
pub fn meta_text(r: &Record<'_>) -> String {
    let res = r.result;
    let created = r.created.map(|c| c.to_string()).unwrap_or_default();
    let fields = [
        ("id", res.id.to_string()),
        ("status", res.status.as_str().to_string()),
        ("exit", res.exit.to_string()),
        ("signal", res.signal.to_string()),
        ("started_ms", res.started_ms.to_string()),
        ("duration_ms", res.duration_ms.to_string()),
        ("truncated", res.truncated.as_str().to_string()),
        (
            "reason",
            escape_line(res.reason.as_bytes(), MAX_SMALL_FILE / 4),
        ),
        ("created", created),
    ];
    fields.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// Parses a `meta` file into its `key=value` pairs, in order; malformed lines are
/// skipped.
pub fn parse_meta(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Archives a run under `history/<day>/<id>/`; returns that directory.
pub fn archive(dd: &DataDir, r: &Record<'_>) -> Result<PathBuf, Error> {
    let day_dir = dd.history().join(r.result.id.day());
    datadir::ensure_dir(&day_dir)?;
    let dir = dd.history_entry(&r.result.id);
    datadir::ensure_dir(&dir)?;
    let exit = format!("{}\n", r.client_exit);
    let meta = meta_text(r);
    let parts: [(&str, &[u8]); 5] = [
        ("command", r.body),
        ("out", &r.result.stdout),
        ("err", &r.result.stderr),
        ("exit", exit.as_bytes()),
        ("meta", meta.as_bytes()),
    ];
    for (name, bytes) in parts {
        atomic::write_atomic(
            &dir,
            &format!(".{name}.tmp"),
            name,
            bytes,
            Durability::Buffered,
        )
        .map_err(|source| Error::Write {
            path: dir.join(name),
            source,
        })?;
    }
    Ok(dir)
}

/// An audit line for a finished (or abandoned) run.
pub fn audit_line(
    now: u64,
    id: &CommandId,
    status: &str,
    exit: u8,
    duration_ms: u64,
    body: &[u8],
) -> String {
    format!(
        "{} id={id} status={status} exit={exit} duration_ms={duration_ms} cmd={}",
        time::iso8601(now),
        escape_line(body, AUDIT_COMMAND_MAX)
    )
}

/// Appends a line to `audit.log`.
pub fn append_audit(dd: &DataDir, line: &str) -> Result<(), Error> {
    let path = dd.audit_log();
    files::append_line(&path, line).map_err(|source| Error::Write { path, source })
}

/// An archived run, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// stdout.
    pub out: Vec<u8>,
    /// stderr.
    pub err: Vec<u8>,
    /// The client's exit code.
    pub exit: u8,
    /// The `meta` pairs.
    pub meta: Vec<(String, String)>,
}

impl Archived {
    /// A `meta` value, or "" when absent.
    pub fn meta(&self, key: &str) -> &str {
        self.meta
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// Reads back the archive of `id`, if there is one.
pub fn load(dd: &DataDir, id: &CommandId) -> Result<Option<Archived>, Error> {
    let dir = dd.history_entry(id);
    match fs::symlink_metadata(&dir) {
        Ok(m) => datadir::check_dir(&dir, &m)?,
        Err(_) => return Ok(None),
    }
    let out = files::read_regular(&dir.join("out"), PROTOCOL_MAX_OUTPUT)?;
    let err = files::read_regular(&dir.join("err"), PROTOCOL_MAX_OUTPUT)?;
    let exit = read_exit(&dir.join("exit"))?;
    let meta_bytes = files::read_regular(&dir.join("meta"), MAX_SMALL_FILE)?;
    let meta = parse_meta(&String::from_utf8_lossy(&meta_bytes));
    Ok(Some(Archived {
        out,
        err,
        exit,
        meta,
    }))
}

/// Reads an `exit` file: a number 0..=255 and a newline.
fn read_exit(path: &std::path::Path) -> Result<u8, Error> {
    let bytes = files::read_regular(path, MAX_SMALL_FILE)?;
    String::from_utf8_lossy(&bytes)
        .trim()
        .parse::<u8>()
        .map_err(|_| {
            Error::Read(ReadError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not an exit code"),
            })
        })
}

/// One line of `history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// The run's id.
    pub id: CommandId,
    /// The client's exit code, if the `exit` file is readable.
    pub exit: Option<u8>,
    /// The command's first line, escaped and cut.
    pub command: String,
}

impl Entry {
    /// `<day> <id> exit=<code> <command>`.
    pub fn line(&self) -> String {
        let exit = self
            .exit
            .map(|e| e.to_string())
            .unwrap_or_else(|| "?".to_string());
        format!("{} {} exit={exit} {}", self.day, self.id, self.command)
    }
}

/// The last `n` archived runs, oldest first. Directories whose names are not a day
/// or an id, and anything that is not a directory, are skipped.
pub fn recent(dd: &DataDir, n: usize) -> Result<Vec<Entry>, Error> {
    let mut runs: Vec<(String, CommandId)> = Vec::new();
    for day in dir_names(&dd.history())? {
        if !is_day(&day) {
            continue;
        }
        for name in dir_names(&dd.history().join(&day))? {
            if let Ok(id) = CommandId::parse(&name) {
                if id.day() == day {
                    runs.push((day.clone(), id));
                }
            }
        }
    }
    runs.sort();
    let skip = runs.len().saturating_sub(n);
    Ok(runs
        .into_iter()
        .skip(skip)
        .map(|(day, id)| {
            let dir = dd.history_entry(&id);
            let exit = read_exit(&dir.join("exit")).ok();
            let command = files::read_prefix(&dir.join("command"), MAX_SMALL_FILE)
                .map(|b| first_line(&b))
                .unwrap_or_default();
            Entry {
                day,
                id,
                exit,
                command,
            }
        })
        .collect())
}

/// The first line of a command, escaped and cut to [`HISTORY_COMMAND_MAX`].
pub fn first_line(body: &[u8]) -> String {
    let line = body.split(|&b| b == b'\n').next().unwrap_or_default();
    escape_line(line, HISTORY_COMMAND_MAX)
}

/// The names of the subdirectories of `dir` (real directories only, UTF-8 names only).
fn dir_names(dir: &std::path::Path) -> Result<Vec<String>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Read(ReadError::Io {
                path: dir.to_path_buf(),
                source,
            }))
        }
    };
    Ok(entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

/// `YYYY-MM-DD` with digits.
fn is_day(s: &str) -> bool {
    s.len() == 10
        && s.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        })
}

/// The last `n` lines of `audit.log` (reading at most [`MAX_LOG_TAIL`] bytes of its
/// end). A line holding anything but printable ASCII is shown escaped.
pub fn log_tail(dd: &DataDir, n: usize) -> Result<Vec<String>, Error> {
    let path = dd.audit_log();
    let (mut file, meta) = match files::open_regular(&path) {
        Ok(f) => f,
        Err(ReadError::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let start = meta.len().saturating_sub(MAX_LOG_TAIL);
    let io_err = |source| {
        Error::Read(ReadError::Io {
            path: path.clone(),
            source,
        })
    };
    file.seek(SeekFrom::Start(start)).map_err(io_err)?;
    let mut buf = Vec::new();
    file.take(MAX_LOG_TAIL)
        .read_to_end(&mut buf)
        .map_err(io_err)?;
    let mut lines: Vec<&[u8]> = buf.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    if start > 0 && !lines.is_empty() {
        // The first line was cut by the seek.
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines
        .into_iter()
        .skip(skip)
        .map(|l| {
            if l.iter().all(|b| (0x20..=0x7e).contains(b)) {
                String::from_utf8_lossy(l).into_owned()
            } else {
                escape_line(l, l.len().saturating_mul(4))
            }
        })
        .collect())
}

/// `qvm-remote log [N]`.
pub fn print_log(dd: &DataDir, n: usize, console: &mut Console<'_>) -> Result<(), Error> {
    for line in log_tail(dd, n)? {
        writeln!(console.out, "{line}").map_err(Error::Output)?;
    }
    Ok(())
}

/// `qvm-remote history [N]`.
pub fn print_history(dd: &DataDir, n: usize, console: &mut Console<'_>) -> Result<(), Error> {
    for e in recent(dd, n)? {
        writeln!(console.out, "{}", e.line()).map_err(Error::Output)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Status, Truncated};

    fn result() -> JobResult {
        JobResult {
            id: CommandId::parse("20261204-153000-4242-0123456789abcdef").unwrap(),
            status: Status::Denied,
            exit: 0,
            signal: 0,
            started_ms: 1_796_398_200_000,
            duration_ms: 7,
            stdout: b"o".to_vec(),
            stderr: b"e".to_vec(),
            truncated: Truncated::Stderr,
            reason: "policy: no rule\nmatches".to_string(),
        }
    }

    #[test]
    fn meta_has_the_documented_keys_in_order() {
        let r = result();
        let rec = Record {
            result: &r,
            body: b"qvm-ls",
            created: Some(1_796_398_200),
            client_exit: 126,
        };
        assert_eq!(
            meta_text(&rec),
            "id=20261204-153000-4242-0123456789abcdef\n\
             status=denied\n\
             exit=0\n\
             signal=0\n\
             started_ms=1796398200000\n\
             duration_ms=7\n\
             truncated=stderr\n\
             reason=policy: no rule\\x0amatches\n\
             created=1796398200\n"
        );
        let parsed = parse_meta(&meta_text(&rec));
        assert_eq!(parsed.len(), 9);
        assert_eq!(parsed[1], ("status".into(), "denied".into()));
        let unknown = Record {
            created: None,
            ..rec
        };
        assert!(meta_text(&unknown).ends_with("created=\n"));
    }

    #[test]
    fn audit_lines_cannot_be_split_or_coloured() {
        let id = result().id;
        let line = audit_line(
            1_796_398_200,
            &id,
            "done",
            0,
            12,
            b"echo hi\n\x1b[31mfake line",
        );
        assert_eq!(
            line,
            "2026-12-04T15:30:00Z id=20261204-153000-4242-0123456789abcdef status=done exit=0 duration_ms=12 cmd=echo hi\\x0a\\x1b[31mfake line"
        );
        let long = audit_line(0, &id, "done", 0, 0, &[b'x'; 500]);
        assert!(long.ends_with("..."));
        assert!(long.len() < 200 + 150);
    }

    #[test]
    fn history_lines_show_the_first_line_cut() {
        assert_eq!(first_line(b"qvm-ls\nsecond"), "qvm-ls");
        assert_eq!(first_line(b""), "");
        assert_eq!(first_line(&[b'a'; 100]).len(), HISTORY_COMMAND_MAX + 3);
        let e = Entry {
            day: "2026-12-04".into(),
            id: result().id,
            exit: Some(3),
            command: "ls".into(),
        };
        assert_eq!(
            e.line(),
            "2026-12-04 20261204-153000-4242-0123456789abcdef exit=3 ls"
        );
        assert!(is_day("2026-12-04"));
        for bad in ["2026-12-4", "2026_12_04", "20261204xx", "../../etc"] {
            assert!(!is_day(bad), "{bad}");
        }
    }
}
