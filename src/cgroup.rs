//! One cgroup per job: the net under the process-group kill and the session sweep.
//!
//! A job's processes share its process group and session, and `exec` kills both when
//! the job ends. A process that calls `setsid()` itself leaves both, and only a cgroup
//! still holds it: a child cannot leave its cgroup without write access to a cgroup
//! file, which the kernel checks against the cgroup tree, not the session. So with
//! `QVM_REMOTE_JOB_CGROUP=yes`, when the daemon may create cgroups below its own (root
//! on a cgroup v2 system, and under systemd with `Delegate=yes`), each job is started
//! inside a fresh
//! `<daemon's cgroup>/qvm-remote-<id>/`, and when the job ends `cgroup.kill` SIGKILLs
//! everything still in it. Signalling through the cgroup names no pid, so it cannot
//! reach a stranger that reused one.
//!
//! The price is the move: the child's write to `cgroup.procs` takes the kernel's
//! cgroup-threadgroup lock for writing, which waits for an RCU grace period (a few
//! milliseconds, up to about 20 ms, unless another move happened just before). That is
//! why the key is off by default.
//!
//! Only the core cgroup v2 files are used (`cgroup.procs`, `cgroup.kill`,
//! `cgroup.events`): no controller is enabled, so the daemon may stay in its own cgroup
//! beside the job cgroups. Where cgroups are unavailable (cgroup v1 only, a read-only
//! mount in a container, a daemon that is not root, a kernel before 5.14 without
//! `cgroup.kill`), [`discover`] says why and jobs run with the group kill and the
//! session sweep alone, as before.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Prefix of every job cgroup's name; the command id follows.
pub const JOB_PREFIX: &str = "qvm-remote-";
/// Name of the directory [`discover`] creates and removes again to prove it may; the
/// pid and a per-process count follow, so two discoveries at once never share one.
const PROBE_PREFIX: &str = "qvm-remote-probe-";
/// What [`discover`] starts inside the probe cgroup (as `sh -c :`).
const PROBE_PROGRAM: &str = "/bin/sh";
/// Where the kernel describes this process's mounts.
const MOUNTINFO: &str = "/proc/self/mountinfo";
/// Where the kernel names this process's cgroups.
const SELF_CGROUP: &str = "/proc/self/cgroup";
/// Largest `/proc/self/mountinfo` read; a system with more mounts than fit is refused.
pub const MAX_MOUNTINFO: u64 = 1024 * 1024;
/// Largest `/proc/self/cgroup` read.
pub const MAX_SELF_CGROUP: u64 = 64 * 1024;
/// Largest `cgroup.events` or `cgroup.procs` read.
const MAX_CGROUP_FILE: u64 = 64 * 1024;
/// How long ending a job waits for its cgroup to empty after `cgroup.kill`. SIGKILLed
/// processes are gone within milliseconds unless stuck in the kernel; past this the
/// cgroup is left for the next daemon start to remove.
pub const EMPTY_WAIT: Duration = Duration::from_secs(2);
/// Time between two looks at `cgroup.events` while waiting.
const EMPTY_POLL: Duration = Duration::from_millis(1);

/// Why job cgroups cannot be used here.
#[derive(Debug)]
pub enum Unavailable {
    /// No cgroup v2 hierarchy is mounted (or it is mounted at a path we do not read).
    NoV2Mount,
    /// `/proc/self/cgroup` names no cgroup v2 path for us.
    NoV2Membership,
    /// Creating, using or removing the probe cgroup failed.
    Probe {
        /// The probe directory.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The kernel has no `cgroup.kill` (before Linux 5.14).
    NoKillFile(PathBuf),
    /// A `/proc` file could not be read.
    Proc {
        /// Which.
        path: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NoV2Mount => write!(f, "no cgroup v2 hierarchy is mounted"),
            Unavailable::NoV2Membership => write!(f, "{SELF_CGROUP} names no cgroup v2 path"),
            Unavailable::Probe { path, source } => write!(f, "{}: {source}", path.display()),
            Unavailable::NoKillFile(path) => {
                write!(f, "{}: missing (kernel before 5.14)", path.display())
            }
            Unavailable::Proc { path, source } => write!(f, "{path}: {source}"),
        }
    }
}

/// The cgroup under which job cgroups are created: the daemon's own. Found once at
/// daemon start by [`discover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCgroups {
    base: PathBuf,
}

impl JobCgroups {
    /// The directory job cgroups are created in.
    pub fn base(&self) -> &Path {
        &self.base
    }
}

/// Finds the daemon's own cgroup v2 directory and proves that a job cgroup can be
/// created, entered (by a short-lived `sh -c :`) and removed there, and that the kernel
/// has `cgroup.kill`.
pub fn discover() -> Result<JobCgroups, Unavailable> {
    let mountinfo = read_proc(MOUNTINFO, MAX_MOUNTINFO)?;
    let own = read_proc(SELF_CGROUP, MAX_SELF_CGROUP)?;
    let mount = v2_mount_point(&mountinfo).ok_or(Unavailable::NoV2Mount)?;
    let path = v2_path(&own).ok_or(Unavailable::NoV2Membership)?;
    let base = mount.join(path.trim_start_matches('/'));
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let probe = base.join(format!(
        "{PROBE_PREFIX}{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    let probe_error = |source| Unavailable::Probe {
        path: probe.clone(),
        source,
    };
    match fs::create_dir(&probe) {
        Ok(()) => {}
        // A probe left by a process that had our pid and died between the two calls.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(probe_error(error)),
    }
    let kill_file = probe.join("cgroup.kill");
    let has_kill = kill_file.exists();
    // A process must really be able to enter it: a container's cgroup mount may allow
    // mkdir but not the move (delegation boundaries), and a job must never fail to
    // start because of that.
    let entered = OpenOptions::new()
        .write(true)
        .open(probe.join("cgroup.procs"))
        .and_then(|procs| {
            let mut command = Command::new(PROBE_PROGRAM);
            command
                .args(["-c", ":"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            crate::sys::enter_cgroup_on_exec(&mut command, OwnedFd::from(procs));
            command.status()
        })
        .and_then(|status| match status.success() {
            true => Ok(()),
            false => Err(io::Error::other(format!("{PROBE_PROGRAM} said {status}"))),
        });
    // The probe process has been reaped, so the probe is empty again.
    let removed = fs::remove_dir(&probe);
    entered.map_err(probe_error)?;
    removed.map_err(probe_error)?;
    if !has_kill {
        return Err(Unavailable::NoKillFile(kill_file));
    }
    Ok(JobCgroups { base })
}

/// One job's cgroup. Dropping it kills whatever is still inside and removes it.
#[derive(Debug)]
pub struct JobCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, open for writing: the child writes `0` to it before exec.
    procs: OwnedFd,
    /// [`JobCgroup::kill`] saw it empty, so dropping it need not kill again.
    emptied: AtomicBool,
}

impl JobCgroup {
    /// Creates `<base>/qvm-remote-<id>/`. The directory must be new: a job never shares
    /// (or later removes) another job's cgroup.
    pub fn create(cgroups: &JobCgroups, id: &str) -> io::Result<JobCgroup> {
        let dir = job_dir(cgroups, id)?;
        fs::create_dir(&dir)?;
        match OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
        {
            Ok(file) => Ok(JobCgroup {
                dir,
                procs: OwnedFd::from(file),
                emptied: AtomicBool::new(false),
            }),
            Err(error) => {
                let _ = fs::remove_dir(&dir);
                Err(error)
            }
        }
    }

    /// A duplicate of the `cgroup.procs` descriptor, for the child's pre-exec hook
    /// ([`crate::sys::enter_cgroup_on_exec`]), which owns it for as long as the command.
    pub fn procs_fd(&self) -> io::Result<OwnedFd> {
        self.procs.try_clone()
    }

    /// SIGKILLs every process in the cgroup (descendants that left the job's session
    /// included) and waits up to [`EMPTY_WAIT`] until none is left.
    pub fn kill(&self) {
        if kill_and_wait(&self.dir) {
            self.emptied.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        // Nothing can enter an emptied job cgroup: the job's processes are all gone.
        if !self.emptied.load(Ordering::Relaxed) {
            kill_and_wait(&self.dir);
        }
        // A cgroup still populated after the wait cannot be removed (EBUSY); the next
        // daemon start removes it with the journalled job.
        let _ = fs::remove_dir(&self.dir);
    }
}

/// After a daemon crash: kills what is left in the job cgroup of `id`, if there is
/// one, and removes it. Returns how many processes it held.
pub fn kill_leftover(cgroups: &JobCgroups, id: &str) -> usize {
    let Ok(dir) = job_dir(cgroups, id) else {
        return 0;
    };
    if !dir.is_dir() {
        return 0;
    }
    let held = read_bounded(&dir.join("cgroup.procs"), MAX_CGROUP_FILE)
        .map(|text| {
            text.split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count()
        })
        .unwrap_or(0);
    kill_and_wait(&dir);
    let _ = fs::remove_dir(&dir);
    held
}

/// The job cgroup's directory; the id must be one safe path component.
fn job_dir(cgroups: &JobCgroups, id: &str) -> io::Result<PathBuf> {
    if !crate::exec::is_safe_id(id) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a command id",
        ));
    }
    Ok(cgroups.base.join(format!("{JOB_PREFIX}{id}")))
}

/// Writes `1` to `cgroup.kill`, then waits until `cgroup.events` says the cgroup is no
/// longer populated (zombies do not count), or [`EMPTY_WAIT`] has passed. True when it
/// was seen empty.
fn kill_and_wait(dir: &Path) -> bool {
    let killed = OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))
        .and_then(|mut file| file.write_all(b"1"));
    if killed.is_err() {
        // Gone already, or not a cgroup: nothing to wait for.
        return false;
    }
    let deadline = Instant::now() + EMPTY_WAIT;
    let events = dir.join("cgroup.events");
    while Instant::now() < deadline {
        match read_bounded(&events, MAX_CGROUP_FILE) {
            Ok(text) if !is_populated(&text) => return true,
            Ok(_) => thread::sleep(EMPTY_POLL),
            Err(_) => return false,
        }
    }
    false
}

/// Whether a `cgroup.events` text says `populated 1`.
fn is_populated(events: &[u8]) -> bool {
    events
        .split(|&b| b == b'\n')
        .any(|line| line == b"populated 1")
}

/// The mount point of the first cgroup v2 hierarchy in a `/proc/self/mountinfo` text
/// whose root is the hierarchy's root. Mount points with escaped characters (`\040`
/// for a space, …) are not used.
fn v2_mount_point(mountinfo: &[u8]) -> Option<PathBuf> {
    let text = std::str::from_utf8(mountinfo).ok()?;
    text.lines().find_map(|line| {
        // Fields: id parent major:minor root mount-point options [optional…] - fstype …
        let (before, after) = line.split_once(" - ")?;
        if after.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut fields = before.split(' ');
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        let usable = root == "/" && mount_point.starts_with('/') && !mount_point.contains('\\');
        usable.then(|| PathBuf::from(mount_point))
    })
}

/// The cgroup v2 path in a `/proc/self/cgroup` text (the `0::/path` line). A path that
/// could climb out of the mount (`..`) or that the kernel marks as deleted is refused.
fn v2_path(self_cgroup: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(self_cgroup).ok()?;
    let path = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    let usable = path.starts_with('/')
        && !path.ends_with(" (deleted)")
        && !path.split('/').any(|part| part == ".." || part == ".");
    usable.then(|| path.to_string())
}

/// Reads a `/proc` file through a bound.
fn read_proc(path: &'static str, max: u64) -> Result<Vec<u8>, Unavailable> {
    read_bounded(Path::new(path), max).map_err(|source| Unavailable::Proc { path, source })
}

/// Reads at most `max` bytes; a longer file is an error rather than a silent cut.
fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if u64::try_from(bytes.len()).map_or(true, |len| len > max) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("longer than {max} bytes"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_gives_the_first_usable_cgroup2_mount() {
        let table: &[(&str, Option<&str>)] = &[
            // A hybrid system (cgroup v1 controllers, v2 at unified/).
            (
                "25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                 26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:4 - cgroup2 cgroup2 rw\n\
                 27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
                Some("/sys/fs/cgroup/unified"),
            ),
            // A unified system, optional fields present.
            (
                "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev shared:9 master:2 - cgroup2 cgroup2 rw,nsdelegate\n",
                Some("/sys/fs/cgroup"),
            ),
            // A bind of a sub-cgroup (root not "/") is skipped for a later full mount.
            (
                "40 24 0:30 /system.slice /mnt/cg rw - cgroup2 cgroup2 rw\n\
                 41 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
                Some("/sys/fs/cgroup"),
            ),
            // Escaped characters in the mount point are not decoded, so not used.
            ("41 24 0:30 / /mnt/a\\040b rw - cgroup2 cgroup2 rw\n", None),
            // cgroup v1 only.
            ("27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", None),
            // Truncated lines.
            ("41 24 0:30 / - cgroup2\n", None),
            ("41 24 0:30\n", None),
            ("", None),
        ];
        for (text, want) in table {
            assert_eq!(
                v2_mount_point(text.as_bytes()),
                want.map(PathBuf::from),
                "{text:?}"
            );
        }
        assert_eq!(v2_mount_point(b"\xff\xfe - cgroup2"), None);
    }

    #[test]
    fn self_cgroup_gives_the_v2_path_and_refuses_odd_ones() {
        let table: &[(&str, Option<&str>)] = &[
            (
                "0::/system.slice/qvm-remote-dom0.service\n",
                Some("/system.slice/qvm-remote-dom0.service"),
            ),
            ("12:memory:/x\n1:name=systemd:/y\n0::/\n", Some("/")),
            ("4:memory:/x\n", None),
            ("0::relative\n", None),
            ("0::/a/../b\n", None),
            ("0::/gone (deleted)\n", None),
            ("", None),
        ];
        for (text, want) in table {
            assert_eq!(v2_path(text.as_bytes()).as_deref(), *want, "{text:?}");
        }
    }

    #[test]
    fn events_say_populated_only_with_a_whole_line() {
        assert!(is_populated(b"populated 1\nfrozen 0\n"));
        assert!(!is_populated(b"populated 0\nfrozen 0\n"));
        assert!(!is_populated(b"populated 10\n"));
        assert!(!is_populated(b""));
    }

    #[test]
    fn job_cgroups_are_named_only_by_safe_ids() {
        let cgroups = JobCgroups {
            base: PathBuf::from("/sys/fs/cgroup/x"),
        };
        assert_eq!(
            job_dir(&cgroups, "20261204-120000-1-00ff").unwrap(),
            PathBuf::from("/sys/fs/cgroup/x/qvm-remote-20261204-120000-1-00ff")
        );
        for bad in [
            "",
            "..",
            "a/b",
            "ABC",
            "x",
            &"1".repeat(crate::exec::MAX_ID_LEN + 1),
        ] {
            assert!(job_dir(&cgroups, bad).is_err(), "{bad:?}");
        }
        assert_eq!(kill_leftover(&cgroups, "../.."), 0);
    }
}
