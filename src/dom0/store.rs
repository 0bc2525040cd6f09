//! dom0's durable per-VM state (DESIGN §3 "replay store", §4 "at most once"):
//! `<state_dir>/vms/<vm>/{seen,journal,held}/`.
//!
//! - `seen/<id>`: every authenticated id ever accepted for this VM, created with
//!   `create_new` before the job can run, so a replayed job is refused even across
//!   crashes. Entries older than twice the replay window are pruned: a job that old is
//!   refused by the window check anyway.
//! - `journal/<id>`: the job was accepted and may be running. Written first, and made
//!   durable (file and directory fsynced) before the job can run. Cleared when the
//!   agent ACKs the result. After a crash, an entry without a held result becomes an
//!   `interrupted` result and is never run again.
//! - `held/<id>.result`: a result not yet ACKed, sent again at the VM's next session.
//!
//! Durability of an accepted id. From acceptance on, the id is durable in the journal
//! or in `seen/` or in both: the `seen/` entry is only fsynced ([`VmStore::seal_seen`])
//! when the ACK is about to remove the journal entry, or at recovery for every
//! journalled id. Until then the durable journal entry stands for it (a crash that loses
//! the `seen/` entry keeps the journal entry, and recovery seals it). That takes two of
//! the four fsyncs off the path between a job's arrival and its execution.
//!
//! Order on ACK: journal first, then the held result, so a crash in between leaves a
//! held result (sent again, harmless) and never a journal entry whose real result is
//! gone (which would turn a finished job into `interrupted`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::atomic::{self, Durability};
use crate::id::CommandId;
use crate::proto::result::MAX_RESULT_FILE;

/// Most results one VM may leave unacknowledged before its new jobs are refused.
pub const MAX_HELD_PER_VM: usize = 256;
/// Most directory entries examined in one listing, so a flooded directory cannot make
/// a scan unbounded.
pub const MAX_LISTING: usize = 100_000;

/// The state of one VM.
#[derive(Debug)]
pub struct VmStore {
    seen: PathBuf,
    journal: PathBuf,
    held: PathBuf,
}

impl VmStore {
    /// Opens (creating, mode 0700) the state of `vm` under `state_dir`.
    pub fn open(state_dir: &Path, vm: &str) -> io::Result<VmStore> {
        let base = state_dir.join("vms").join(vm);
        let s = VmStore {
            seen: base.join("seen"),
            journal: base.join("journal"),
            held: base.join("held"),
        };
        for d in [&s.seen, &s.journal, &s.held] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)?;
        }
        Ok(s)
    }

    /// Journals `id` as accepted. `Ok(false)` if it was journalled already.
    pub fn journal_start(&self, id: &CommandId) -> io::Result<bool> {
        if !created(atomic::create_new(
            &self.journal.join(id.as_str()),
            b"started\n",
            Durability::Synced,
        ))? {
            return Ok(false);
        }
        atomic::sync_dir(&self.journal)?;
        Ok(true)
    }

    /// Notes in `id`'s journal entry the pid and start time of its running process, so
    /// that after a crash the leftovers can be killed (`exec::kill_leftovers`).
    ///
    /// Written in place over the entry's `started` line, not fsynced and not renamed:
    /// the note matters only after a daemon crash, which leaves the page cache intact,
    /// and after an OS crash there is no process left to kill. One small write at
    /// offset 0 is never seen half done by a reader after a daemon crash; a torn entry
    /// after an OS crash just parses as "no pid". Updating in place spares a file
    /// creation and a deletion per job.
    pub fn journal_pid(&self, id: &CommandId, pid: u32, start_time: u64) -> io::Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(crate::sys::O_NOFOLLOW)
            .open(self.journal.join(id.as_str()))?;
        f.write_all_at(
            format!("running pid={pid} start={start_time}\n").as_bytes(),
            0,
        )
    }

    /// The pid and start time journalled for `id`, if its process was started.
    pub fn journalled_pid(&self, id: &CommandId) -> Option<(u32, u64)> {
        let mut text = String::new();
        File::open(self.journal.join(id.as_str()))
            .ok()?
            .take(256)
            .read_to_string(&mut text)
            .ok()?;
        let mut pid = None;
        let mut start = None;
        for field in text.split_whitespace() {
            if let Some(v) = field.strip_prefix("pid=") {
                pid = v.parse().ok();
            } else if let Some(v) = field.strip_prefix("start=") {
                start = v.parse().ok();
            }
        }
        Some((pid?, start?))
    }

    /// Records `id` in the replay store. `Ok(false)` if it was seen before. The entry
    /// is not fsynced: `id` must be journalled first, which keeps it durable until
    /// [`VmStore::seal_seen`] (see the module notes).
    pub fn mark_seen(&self, id: &CommandId) -> io::Result<bool> {
        created(atomic::create_new(
            &self.seen.join(id.as_str()),
            b"",
            Durability::Buffered,
        ))
    }

    /// Makes `id`'s replay entry durable, creating it if it is missing (after a crash
    /// that lost it). Called before its journal entry goes, and at recovery.
    pub fn seal_seen(&self, id: &CommandId) -> io::Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(atomic::FILE_MODE)
            .custom_flags(crate::sys::O_NOFOLLOW)
            .open(self.seen.join(id.as_str()))?;
        f.sync_all()?;
        atomic::sync_dir(&self.seen)
    }

    /// True if `id` is journalled.
    pub fn is_journalled(&self, id: &CommandId) -> bool {
        self.journal.join(id.as_str()).exists()
    }

    /// Stores a result durably until it is ACKed.
    pub fn hold(&self, id: &CommandId, bytes: &[u8]) -> io::Result<()> {
        let name = format!("{id}.result");
        atomic::write_atomic(
            &self.held,
            &format!(".{name}.tmp"),
            &name,
            bytes,
            Durability::Synced,
        )
    }

    /// The held result for `id`, if any.
    pub fn held(&self, id: &CommandId) -> io::Result<Option<Vec<u8>>> {
        let path = self.held.join(format!("{id}.result"));
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        f.take(MAX_RESULT_FILE as u64).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    /// Ids of every held result, oldest id first.
    pub fn held_ids(&self) -> io::Result<Vec<CommandId>> {
        list_ids(&self.held, ".result")
    }

    /// Ids of every journal entry.
    pub fn journal_ids(&self) -> io::Result<Vec<CommandId>> {
        list_ids(&self.journal, "")
    }

    /// The agent stored the result: forget it. `Ok(false)` if nothing was held.
    pub fn ack(&self, id: &CommandId) -> io::Result<bool> {
        let held = self.held.join(format!("{id}.result"));
        if !held.exists() {
            return Ok(false);
        }
        // The journal entry is what kept the id durable so far (see the module notes).
        self.seal_seen(id)?;
        atomic::remove_if_present(&self.journal.join(id.as_str()))?;
        atomic::sync_dir(&self.journal)?;
        atomic::remove_if_present(&held)?;
        atomic::sync_dir(&self.held)?;
        Ok(true)
    }

    /// Removes a journal entry that never became a job (a replay caught after it was
    /// journalled).
    pub fn unjournal(&self, id: &CommandId) -> io::Result<()> {
        atomic::remove_if_present(&self.journal.join(id.as_str()))?;
        atomic::sync_dir(&self.journal)
    }

    /// Drops replay entries older than `age`; returns how many.
    pub fn prune_seen(&self, age: Duration) -> usize {
        let Ok(entries) = fs::read_dir(&self.seen) else {
            return 0;
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for e in entries.take(MAX_LISTING).flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|d| d > age);
            if old && fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// `Ok(true)` for a file [`atomic::create_new`] made, `Ok(false)` if one was there.
fn created(made: io::Result<()>) -> io::Result<bool> {
    match made {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

fn list_ids(dir: &Path, suffix: &str) -> io::Result<Vec<CommandId>> {
    let mut ids = Vec::new();
    for e in fs::read_dir(dir)?.take(MAX_LISTING).flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name
            .strip_suffix(suffix)
            .and_then(|n| CommandId::parse(n).ok())
        {
            ids.push(id);
        }
    }
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        crate::testutil::temp_dir("store")
    }

    #[test]
    fn seen_and_journal_are_create_once() {
        let dir = tmp();
        let s = VmStore::open(&dir, "work").unwrap();
        let id = CommandId::parse("20261204-153000-1-0123456789abcdef").unwrap();
        assert!(s.journal_start(&id).unwrap());
        assert!(!s.journal_start(&id).unwrap());
        assert_eq!(s.journalled_pid(&id), None);
        s.journal_pid(&id, 4242, 99).unwrap();
        assert_eq!(s.journalled_pid(&id), Some((4242, 99)));
        assert!(!s.journal_start(&id).unwrap());
        assert!(s.mark_seen(&id).unwrap());
        assert!(!s.mark_seen(&id).unwrap());
        // Reopening (a restart) keeps both.
        let s = VmStore::open(&dir, "work").unwrap();
        assert!(!s.mark_seen(&id).unwrap());
        assert_eq!(s.journal_ids().unwrap(), vec![id.clone()]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ack_clears_journal_and_held_and_ignores_unknown_ids() {
        let dir = tmp();
        let s = VmStore::open(&dir, "work").unwrap();
        let id = CommandId::parse("20261204-153000-1-0123456789abcdef").unwrap();
        let other = CommandId::parse("20261204-153000-1-0123456789abcdee").unwrap();
        s.journal_start(&id).unwrap();
        s.hold(&id, b"result bytes").unwrap();
        assert_eq!(s.held(&id).unwrap().unwrap(), b"result bytes");
        assert_eq!(s.held_ids().unwrap(), vec![id.clone()]);
        assert!(!s.ack(&other).unwrap());
        assert!(s.ack(&id).unwrap());
        assert!(s.held(&id).unwrap().is_none());
        assert!(s.journal_ids().unwrap().is_empty());
        assert!(!s.ack(&id).unwrap());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ack_seals_the_replay_entry_and_sealing_restores_a_lost_one() {
        let dir = tmp();
        let s = VmStore::open(&dir, "work").unwrap();
        let id = CommandId::parse("20261204-153000-1-0123456789abcdef").unwrap();
        assert!(s.journal_start(&id).unwrap());
        assert!(s.mark_seen(&id).unwrap());
        // An OS crash before the ACK may lose the unsynced entry; recovery seals it
        // again from the journal, and the id is refused as a replay from then on.
        fs::remove_file(dir.join("vms/work/seen").join(id.as_str())).unwrap();
        s.seal_seen(&id).unwrap();
        assert!(!s.mark_seen(&id).unwrap());
        s.hold(&id, b"result").unwrap();
        assert!(s.ack(&id).unwrap());
        assert!(s.journal_ids().unwrap().is_empty());
        assert!(!s.mark_seen(&id).unwrap());
        fs::remove_dir_all(dir).unwrap();
    }
}
