//! `qvm-remote status` and `qvm-remote queue [status|debug|clean]`: looking at and
//! tidying the queue of DESIGN §2.
//!
//! `queue clean` removes exactly three kinds of entry, and prints each one:
//! temporary files (`.*.tmp`) older than [`STALE_TMP`] in any queue directory (a
//! writer that died mid-write), everything in `queue/rejected/` (the agent already
//! logged why it is there), and results older than [`STALE_RESULT`] whose job is no
//! longer in `queue/running/` (nobody is waiting for them). Everything else is left
//! alone: a pending job, a running job and a fresh result are someone's work.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::cli::QueueAction;
use super::datadir::{self, DataDir, QueueDir};
use super::files::{self, ReadError};
use super::history;
use super::{Console, Error};
use crate::id::CommandId;
use crate::keys::Key;
use crate::proto::escape_line;
use crate::proto::job::{self, MAX_JOB_HEADER};
use crate::proto::result::{self, MAX_RESULT_HEADER};
use crate::time;

/// A temporary file older than this belongs to a writer that died.
pub const STALE_TMP: Duration = Duration::from_secs(3600);
/// A result nobody waits for is kept this long, for `qvm-remote result ID`.
pub const STALE_RESULT: Duration = Duration::from_secs(24 * 3600);
/// How much of an entry's name is shown.
pub const MAX_NAME_SHOWN: usize = 120;

/// Runs a `queue` action.
pub fn run(dd: &DataDir, action: QueueAction, console: &mut Console<'_>) -> Result<(), Error> {
    match action {
        QueueAction::Status => {
            for (q, n) in counts(dd)? {
                writeln!(console.out, "{} {n}", q.name()).map_err(Error::Output)?;
            }
            Ok(())
        }
        QueueAction::Debug => debug(dd, console),
        QueueAction::Clean => clean(dd, console),
    }
}

/// `qvm-remote status`.
pub fn status(dd: &DataDir, console: &mut Console<'_>) -> Result<(), Error> {
    let key = match Key::load(&dd.key_path()) {
        Ok(k) => format!("fingerprint {}", k.fingerprint()),
        Err(_) if !files::exists(&dd.key_path()) => {
            "none (run `qvm-remote key gen` and authorise it in dom0)".to_string()
        }
        Err(e) => format!("unusable: {e}"),
    };
    let queue = counts(dd)?
        .iter()
        .map(|(q, n)| format!("{} {n}", q.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let agent = if super::sock::connect(&dd.agent_socket()).is_some() {
        "listening on agent.sock (stream mode)"
    } else if files::exists(&dd.agent_socket()) {
        "agent.sock present but nobody answers (a stale socket; the next agent replaces it)"
    } else {
        "no socket (poll mode, or no stream-mode agent running)"
    };
    let last = history::recent(dd, 1)?
        .first()
        .map(history::Entry::line)
        .unwrap_or_else(|| "none".to_string());
    writeln!(
        console.out,
        "data dir: {}\nkey: {key}\nqueue: {queue}\nagent: {agent}\nlast: {last}",
        dd.root().display()
    )
    .map_err(Error::Output)
}

/// The number of entries in each queue directory (temporary files included).
pub fn counts(dd: &DataDir) -> Result<Vec<(QueueDir, usize)>, Error> {
    QueueDir::ALL
        .iter()
        .map(|&q| Ok((q, list(&dd.queue(q))?.len())))
        .collect()
}

/// The names in a directory, sorted by bytes.
pub fn list(dir: &Path) -> Result<Vec<std::ffi::OsString>, Error> {
    let entries = fs::read_dir(dir).map_err(|source| {
        Error::Read(ReadError::Io {
            path: dir.to_path_buf(),
            source,
        })
    })?;
    let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn debug(dd: &DataDir, console: &mut Console<'_>) -> Result<(), Error> {
    for q in QueueDir::ALL {
        let dir = dd.queue(q);
        for name in list(&dir)? {
            let path = dir.join(&name);
            let shown = escape_line(name.as_bytes(), MAX_NAME_SHOWN);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| time::iso8601(d.as_secs()))
                .unwrap_or_else(|| "?".to_string());
            let mut line = format!(
                "{} {shown} {} {} bytes {mtime}",
                q.name(),
                files::kind_of(&meta),
                meta.len()
            );
            if meta.is_file() {
                line.push_str(&header_note(&path, name.as_bytes()));
            }
            writeln!(console.out, "{line}").map_err(Error::Output)?;
        }
    }
    Ok(())
}

/// Reads the id from a job or result header.
type PeekId = fn(&[u8]) -> Option<CommandId>;

/// For a job or result file: the id in its header and whether it matches the name.
fn header_note(path: &Path, name: &[u8]) -> String {
    let (stem, max, peek): (&[u8], usize, PeekId) = if let Some(s) = name.strip_suffix(b".job") {
        (s, MAX_JOB_HEADER, job::peek_id)
    } else if let Some(s) = name.strip_suffix(b".result") {
        (s, MAX_RESULT_HEADER, result::peek_id)
    } else {
        return String::new();
    };
    let Ok(head) = files::read_prefix(path, max) else {
        return " unreadable".to_string();
    };
    match peek(&head) {
        Some(id) => {
            let matches = CommandId::from_bytes(stem).is_ok_and(|n| n == id);
            format!(
                " id={id} name-matches={}",
                if matches { "yes" } else { "no" }
            )
        }
        None => " id=none".to_string(),
    }
}

fn clean(dd: &DataDir, console: &mut Console<'_>) -> Result<(), Error> {
    let now = SystemTime::now();
    let older_than = |meta: &fs::Metadata, age: Duration| {
        meta.modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|a| a > age)
    };
    let mut removed = 0usize;
    for q in QueueDir::ALL {
        let dir = dd.queue(q);
        for name in list(&dir)? {
            let path = dir.join(&name);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let bytes = name.as_bytes();
            let remove = if q == QueueDir::Rejected {
                true
            } else if datadir::is_tmp_name(bytes) {
                older_than(&meta, STALE_TMP)
            } else if q == QueueDir::Results {
                let waited_for = bytes
                    .strip_suffix(b".result")
                    .and_then(|s| CommandId::from_bytes(s).ok())
                    .is_some_and(|id| files::exists(&dd.job_path(QueueDir::Running, &id)));
                let orphan = !waited_for;
                orphan && older_than(&meta, STALE_RESULT)
            } else {
                false
            };
            if !remove {
                continue;
            }
            // remove_dir_all does not follow symlinks inside what it removes.
            let r = if meta.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            r.map_err(|source| Error::Write {
                path: path.clone(),
                source,
            })?;
            removed += 1;
            writeln!(
                console.out,
                "removed queue/{}/{}",
                q.name(),
                escape_line(bytes, MAX_NAME_SHOWN)
            )
            .map_err(Error::Output)?;
        }
    }
    writeln!(console.out, "{removed} removed").map_err(Error::Output)
}
