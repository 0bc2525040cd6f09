//! Human approval of `ask` jobs across processes (shared/DESIGN.md §7): the daemon
//! parks a job and describes it in `<run_dir>/pending/<vm>/<id>`; an administrator's
//! `qvm-remote-dom0 approve|deny ID` writes `<run_dir>/approvals/<id>`; the daemon looks
//! for decisions every [`POLL`] and removes both files when the job leaves the queue.
//!
//! Both directories are 0700 and must be owned by root (or by us, in tests), so only
//! dom0's administrator can approve. A decision file is created with `create_new`, so a
//! job is decided once; ids and VM names are validated before they name any path. The
//! pending record holds the command text escaped (control characters as `\xNN`), so
//! listing it cannot put escape sequences on the administrator's terminal.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::atomic::{self, Durability};
use crate::config::is_valid_vm_name;
use crate::id::CommandId;
use crate::keys;
use crate::proto::escape_line;

/// Directory of pending records under the run dir.
pub const PENDING_DIR: &str = "pending";
/// Directory of decisions under the run dir.
pub const APPROVALS_DIR: &str = "approvals";
/// How often the daemon looks for decisions, deadlines and cancels.
pub const POLL: Duration = Duration::from_millis(200);
/// How much of a job's stdin the pending record shows, escaped.
pub const MAX_STDIN_SHOWN: usize = 4096;
/// Largest pending record read: an escaped 1 MiB body is at most 4 MiB, plus the rest.
pub const MAX_RECORD: u64 = 4 * 1024 * 1024 + 64 * 1024;
/// Largest decision file read.
const MAX_DECISION: u64 = 16;
/// Most pending records listed.
const MAX_LISTED: usize = 10_000;

/// A decision on a parked job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Run it.
    Approve,
    /// Refuse it.
    Deny,
}

impl Verdict {
    /// The word in the decision file.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        }
    }
}

/// What `pending` shows about a parked job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The VM.
    pub vm: String,
    /// The job.
    pub id: CommandId,
    /// When it was parked, unix seconds.
    pub received: u64,
    /// When it is refused if nobody decides, unix seconds.
    pub deadline: u64,
    /// The rule that asked.
    pub rule: String,
    /// The command text, escaped.
    pub command: String,
    /// The stdin size in bytes.
    pub stdin_len: usize,
    /// The first [`MAX_STDIN_SHOWN`] bytes of stdin, escaped.
    pub stdin: String,
}

impl Record {
    /// A record for a job body and stdin, escaping both.
    pub fn new(
        vm: &str,
        id: &CommandId,
        times: (u64, u64),
        rule: &str,
        body: &[u8],
        stdin: &[u8],
    ) -> Record {
        Record {
            vm: vm.to_string(),
            id: id.clone(),
            received: times.0,
            deadline: times.1,
            rule: escape_line(rule.as_bytes(), usize::MAX),
            command: escape_line(body, usize::MAX),
            stdin_len: stdin.len(),
            stdin: escape_line(stdin, MAX_STDIN_SHOWN),
        }
    }

    fn encode(&self) -> String {
        format!(
            "vm={}\nid={}\nreceived={}\ndeadline={}\nrule={}\nstdin-bytes={}\nstdin={}\ncommand={}\n",
            self.vm,
            self.id,
            self.received,
            self.deadline,
            self.rule,
            self.stdin_len,
            self.stdin,
            self.command
        )
    }

    fn decode(text: &str) -> Option<Record> {
        let mut lines = text.lines();
        let mut field = |name: &str| -> Option<String> {
            let v = lines.next()?.strip_prefix(name)?.strip_prefix('=')?;
            // Everything was escaped when written; anything else is not our record.
            v.bytes()
                .all(|b| (0x20..=0x7e).contains(&b))
                .then(|| v.to_string())
        };
        let vm = field("vm").filter(|v| is_valid_vm_name(v))?;
        let id = CommandId::parse(&field("id")?).ok()?;
        let received = field("received")?.parse().ok()?;
        let deadline = field("deadline")?.parse().ok()?;
        let rule = field("rule")?;
        let stdin_len = field("stdin-bytes")?.parse().ok()?;
        let stdin = field("stdin")?;
        let command = field("command")?;
        Some(Record {
            vm,
            id,
            received,
            deadline,
            rule,
            command,
            stdin_len,
            stdin,
        })
    }
}

/// Why an approval operation failed.
#[derive(Debug)]
pub enum ApprovalError {
    /// No job with this id is waiting.
    NotPending(CommandId),
    /// The job was decided already (a decision file exists).
    AlreadyDecided(CommandId),
    /// A file or directory could not be used.
    Io {
        /// Which.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A directory could be changed by others.
    Untrusted {
        /// Which.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl fmt::Display for ApprovalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApprovalError::NotPending(id) => write!(f, "no job {id} is waiting for approval"),
            ApprovalError::AlreadyDecided(id) => write!(f, "job {id} was already decided"),
            ApprovalError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            ApprovalError::Untrusted { path, why } => {
                write!(f, "{}: refused: {why}", path.display())
            }
        }
    }
}

impl std::error::Error for ApprovalError {}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ApprovalError + '_ {
    move |source| ApprovalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates (0700) and checks a directory under the run dir.
fn private_dir(path: &Path) -> Result<(), ApprovalError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err(path))?;
    check_dir(path)
}

fn check_dir(path: &Path) -> Result<(), ApprovalError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    let untrusted = |why: String| ApprovalError::Untrusted {
        path: path.to_path_buf(),
        why,
    };
    keys::check_private_dir(path, &meta).map_err(|e| untrusted(e.to_string()))
}

fn vm_dir(run_dir: &Path, vm: &str) -> PathBuf {
    run_dir.join(PENDING_DIR).join(vm)
}

/// Daemon: writes the pending record of a parked job (0600, tmp + rename).
pub fn write_pending(run_dir: &Path, rec: &Record) -> Result<(), ApprovalError> {
    if !is_valid_vm_name(&rec.vm) {
        return Err(ApprovalError::Untrusted {
            path: run_dir.join(PENDING_DIR),
            why: "invalid VM name".into(),
        });
    }
    private_dir(&run_dir.join(PENDING_DIR))?;
    let dir = vm_dir(run_dir, &rec.vm);
    private_dir(&dir)?;
    let path = dir.join(rec.id.as_str());
    atomic::replace(&path, rec.encode().as_bytes(), Durability::Buffered).map_err(io_err(&path))
}

/// Daemon: the job left the queue; forget its record and any decision.
pub fn remove(run_dir: &Path, vm: &str, id: &CommandId) {
    if is_valid_vm_name(vm) {
        let _ = fs::remove_file(vm_dir(run_dir, vm).join(id.as_str()));
    }
    let _ = fs::remove_file(run_dir.join(APPROVALS_DIR).join(id.as_str()));
}

/// Daemon: the decision on `id`, if one was made. The decision file is consumed.
pub fn take_decision(run_dir: &Path, id: &CommandId) -> Option<Verdict> {
    let dir = run_dir.join(APPROVALS_DIR);
    let path = dir.join(id.as_str());
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(&path)
        .ok()?;
    // Only a decision in a directory that nobody else can write is honoured.
    if check_dir(&dir).is_err() {
        return None;
    }
    let meta = file.metadata().ok()?;
    if !meta.is_file() || keys::check_not_writable_by_others(&path, &meta).is_err() {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_DECISION).read_to_string(&mut text).ok()?;
    let verdict = match text.trim_end() {
        "approve" => Verdict::Approve,
        // Anything that is not a clear approval refuses the job.
        _ => Verdict::Deny,
    };
    let _ = fs::remove_file(&path);
    Some(verdict)
}

/// Daemon, at start and stop: records and decisions of a previous run are stale (its
/// parked jobs are `interrupted`).
pub fn clear(run_dir: &Path) {
    let _ = fs::remove_dir_all(run_dir.join(PENDING_DIR));
    let _ = fs::remove_dir_all(run_dir.join(APPROVALS_DIR));
}

/// Every pending record, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<Record>, ApprovalError> {
    let base = run_dir.join(PENDING_DIR);
    let mut out = Vec::new();
    let vms = match fs::read_dir(&base) {
        Ok(v) => v,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(&base)(e)),
    };
    check_dir(&base)?;
    for vm in vms.take(MAX_LISTED).flatten() {
        let name = vm.file_name().to_string_lossy().into_owned();
        if !is_valid_vm_name(&name) {
            continue;
        }
        let dir = vm.path();
        check_dir(&dir)?;
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.take(MAX_LISTED).flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if CommandId::parse(&file).is_err() {
                continue;
            }
            if let Some(rec) =
                read_record(&e.path()).filter(|r| r.vm == name && r.id.as_str() == file)
            {
                out.push(rec);
            }
        }
    }
    out.sort_by(|a, b| (a.received, &a.id).cmp(&(b.received, &b.id)));
    Ok(out)
}

fn read_record(path: &Path) -> Option<Record> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_RECORD).read_to_string(&mut text).ok()?;
    Record::decode(&text)
}

/// Administrator: decides the parked job `id`. Fails if it is not waiting, or if it was
/// decided already.
pub fn decide(run_dir: &Path, id: &CommandId, verdict: Verdict) -> Result<Record, ApprovalError> {
    let rec = list(run_dir)?
        .into_iter()
        .find(|r| &r.id == id)
        .ok_or_else(|| ApprovalError::NotPending(id.clone()))?;
    let dir = run_dir.join(APPROVALS_DIR);
    private_dir(&dir)?;
    let path = dir.join(id.as_str());
    let text = format!("{}\n", verdict.word());
    match atomic::create_new(&path, text.as_bytes(), Durability::Buffered) {
        Ok(()) => Ok(rec),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(ApprovalError::AlreadyDecided(id.clone()))
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Whether the pending record of `id` still exists (the daemon has not acted yet).
pub fn is_pending(run_dir: &Path, vm: &str, id: &CommandId) -> bool {
    is_valid_vm_name(vm) && vm_dir(run_dir, vm).join(id.as_str()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_dir() -> PathBuf {
        crate::testutil::temp_dir("approval")
    }

    #[test]
    fn a_parked_job_is_decided_once_and_escaped() {
        let d = run_dir();
        let id = CommandId::parse("20261204-153000-1-0123456789abcdef").unwrap();
        let rec = Record::new(
            "work",
            &id,
            (100, 400),
            "/p:1: work ask @script",
            b"rm -rf /\n\x1b[2J\\ fake",
            b"\x07",
        );
        assert_eq!(rec.command, "rm -rf /\\x0a\\x1b[2J\\\\ fake");
        write_pending(&d, &rec).unwrap();
        let listed = list(&d).unwrap();
        assert_eq!(listed, vec![rec.clone()]);
        assert!(is_pending(&d, "work", &id));
        assert_eq!(take_decision(&d, &id), None);
        let other = CommandId::parse("20261204-153000-1-0123456789abcdee").unwrap();
        assert!(matches!(
            decide(&d, &other, Verdict::Approve),
            Err(ApprovalError::NotPending(_))
        ));
        decide(&d, &id, Verdict::Approve).unwrap();
        assert!(matches!(
            decide(&d, &id, Verdict::Deny),
            Err(ApprovalError::AlreadyDecided(_))
        ));
        assert_eq!(take_decision(&d, &id), Some(Verdict::Approve));
        assert_eq!(take_decision(&d, &id), None, "a decision is consumed");
        remove(&d, "work", &id);
        assert!(list(&d).unwrap().is_empty());
        clear(&d);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn records_that_are_not_ours_are_ignored() {
        let d = run_dir();
        let id = CommandId::parse("20261204-153000-1-0123456789abcdef").unwrap();
        let rec = Record::new("work", &id, (1, 2), "r", b"ls", b"");
        write_pending(&d, &rec).unwrap();
        // A record whose content names another VM or id than its path is skipped.
        let other = CommandId::parse("20261204-153000-1-0123456789abcdee").unwrap();
        fs::write(
            vm_dir(&d, "work").join(other.as_str()),
            rec.encode().as_bytes(),
        )
        .unwrap();
        fs::write(vm_dir(&d, "work").join("../../x"), b"junk").ok();
        assert_eq!(list(&d).unwrap().len(), 1);
        assert!(Record::decode("vm=work\nid=bad\n").is_none());
        fs::remove_dir_all(d).unwrap();
    }
}
