//! Sandboxed execution of one job in dom0: shared/DESIGN.md §5.
//!
//! [`run`] turns an [`ExecSpec`] into an [`ExecOutcome`]. Every job gets:
//! - a fresh work dir `<run dir>/jobs/<id>/` (0700, created new: an existing one is an
//!   error and is never reused or removed), holding the script (`script`, 0600) and the
//!   job's working directory (`cwd/`, 0700); the whole dir is removed after the job;
//! - its own session and process group (setsid), umask 077, RLIMIT_CORE 0, every signal
//!   at its default action and none blocked, and none of the daemon's descriptors beyond
//!   stdin, stdout and stderr ([`sys::sandbox_command`]);
//! - exactly six environment variables: `PATH` ([`DEFAULT_PATH`]), `HOME=/root`,
//!   `LANG=C.UTF-8`, `TERM=dumb`, `QVM_REMOTE_VM` and `QVM_REMOTE_ID`;
//! - stdin fed from the job's bytes through a pipe, or `/dev/null` when there are none;
//! - the body run as `<QVM_REMOTE_SHELL> --noprofile --norc <script>`; when the spec
//!   carries an argv (a simple command the policy decided on), the script is
//!   `exec -- 'argv0' 'argv1' …`, every word quoted, so the shell starts every job and
//!   then becomes exactly that argv, expanding nothing (a bare program name is looked
//!   up in [`DEFAULT_PATH`], not in the daemon's own `PATH`).
//!
//! stdout and stderr are read concurrently, each by its own thread, in chunks of up to
//! [`CHUNK_SIZE`]; each is kept up to `max_output` bytes and drained (read and dropped)
//! past it, so a chatty job never blocks on a full pipe and never grows our memory past
//! the cap. `on_chunk` sees exactly the bytes that are kept, in order.
//!
//! Ending a job. On timeout or cancel the job's process group gets SIGTERM, then SIGKILL
//! `kill_grace` later. Whatever the ending, once the job's main process has exited the
//! whole group gets SIGKILL: no background process of a job outlives it (persistent
//! services belong in systemd units, not in jobs). Then a best-effort sweep of `/proc`
//! SIGKILLs every process still in the job's session, which catches processes that moved
//! to another process group with `setpgid` (bash's `set -m` does that for every
//! background job). The sweep reads at most [`MAX_PROC_ENTRIES`] entries of at most
//! [`PROC_STAT_MAX`] bytes each, and runs at most [`SWEEP_ROUNDS`] rounds.
//!
//! Pid reuse. The main process is left unreaped (a zombie) until the group kill and the
//! sweep are done: its pid, which is also the job's process group id and session id,
//! cannot be given to a new process while the zombie exists, so signalling by that number
//! cannot reach a stranger. The sweep signals through a pidfd opened before re-checking
//! the session, for the same reason. Only then is the main process reaped.
//!
//! A process that calls `setsid()` itself leaves both the job's group and its session.
//! When the spec carries [`ExecSpec::cgroups`], the job runs in a cgroup of its own
//! ([`crate::cgroup`]), which no process leaves by changing its session: once the group
//! kill and the sweep are done, `cgroup.kill` ends whatever is left. Without a cgroup
//! (not root, no cgroup v2) such an escape survives the job, but it cannot hold `run`
//! hostage: the pipe threads stop [`OUTPUT_DRAIN_LIMIT`] after the job was killed, flag
//! the stream as truncated (its end was never seen) and close their pipe ends.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, Scope, ScopedJoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cgroup::{JobCgroup, JobCgroups};
use crate::sys::{self, PidFd, Readiness, Signal};

/// `PATH` of every job (DESIGN §5).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `HOME` of every job (DESIGN §5).
pub const JOB_HOME: &str = "/root";
/// `LANG` of every job (DESIGN §5).
pub const JOB_LANG: &str = "C.UTF-8";
/// `TERM` of every job (DESIGN §5).
pub const JOB_TERM: &str = "dumb";
/// Time between SIGTERM and SIGKILL on timeout or cancel (DESIGN §5: "SIGKILL 5 s later").
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// The umask of every job (DESIGN §5).
pub const JOB_UMASK: u32 = 0o077;
/// Default per-stream output cap, `QVM_REMOTE_MAX_OUTPUT` (DESIGN §6).
pub const DEFAULT_MAX_OUTPUT: usize = 10 * 1024 * 1024;
/// Largest chunk read from a job's stdout or stderr at once, and so the largest chunk
/// handed to `on_chunk` (DESIGN §4: `OUT`/`ERR` chunks are at most 64 KiB).
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Flags that keep bash from reading any startup file (DESIGN §5).
pub const SHELL_FLAGS: [&str; 2] = ["--noprofile", "--norc"];
/// The directory under the run dir that holds one work dir per running job.
pub const JOBS_DIR: &str = "jobs";
/// The script file inside a job's work dir.
pub const SCRIPT_FILE: &str = "script";
/// The job's working directory inside its work dir.
pub const CWD_DIR: &str = "cwd";
/// How long, after the job has been killed, its pipes may stay open before the reader
/// and writer threads give up on them. Only a process that escaped with `setsid` (or one
/// stuck in the kernel) can hold a pipe that long; whatever it writes later is lost.
pub const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// The most `/proc` directory entries one sweep round looks at.
pub const MAX_PROC_ENTRIES: usize = 65_536;
/// The most bytes read from one `/proc/<pid>/stat` file (the real size is a few hundred).
pub const PROC_STAT_MAX: u64 = 4096;
/// The most rounds of the session sweep; a round that finds nothing ends it early.
pub const SWEEP_ROUNDS: usize = 4;

/// Mode of the jobs dir, each job's work dir and its `cwd/`.
const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the script file.
const SCRIPT_MODE: u32 = 0o600;
/// Permission bits that must be clear on a directory we trust: group or other write.
const UNTRUSTED_WRITE_BITS: u32 = 0o022;
/// The longest command id the protocol allows: `8 + 1 + 6 + 1 + 10 + 1 + 16` characters.
pub(crate) const MAX_ID_LEN: usize = 43;
/// How often the main thread looks at the child, the deadline and the cancel flag.
const WAIT_POLL: Duration = Duration::from_millis(10);
/// How long a pipe thread waits for its pipe before looking at the stop flag again.
const PIPE_POLL: Duration = Duration::from_millis(50);
/// Pause between sweep rounds, so processes killed in one round have died by the next.
const SWEEP_PAUSE: Duration = Duration::from_millis(5);
/// Where the sweep looks for processes.
const PROC_ROOT: &str = "/proc";

/// One of a job's two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The job's standard output.
    Stdout,
    /// The job's standard error.
    Stderr,
}

impl Stream {
    /// `"stdout"` or `"stderr"`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything [`run`] needs to run one job. The caller has validated the VM name and the
/// command id; `run` still refuses an id that is not a safe single path component.
#[derive(Debug, Clone, Copy)]
pub struct ExecSpec<'a> {
    /// `QVM_REMOTE_SHELL`, for example `/bin/bash`.
    pub shell: &'a Path,
    /// `QVM_REMOTE_RUN_DIR`; must be absolute, owned by us and not group- or
    /// world-writable. The job's work dir is created under `run_dir/jobs/`.
    pub run_dir: &'a Path,
    /// The VM the job came from (already validated); becomes `QVM_REMOTE_VM`.
    pub vm: &'a str,
    /// The command id (already validated); becomes `QVM_REMOTE_ID` and the work dir name.
    pub id: &'a str,
    /// The script (ignored when `argv` is given).
    pub body: &'a [u8],
    /// The job's stdin bytes; empty means `/dev/null`.
    pub stdin: &'a [u8],
    /// After this long the job is terminated ([`Ending::TimedOut`]).
    pub timeout: Duration,
    /// Per-stream cap on the output kept.
    pub max_output: usize,
    /// Time between SIGTERM and SIGKILL; normally [`KILL_GRACE`].
    pub kill_grace: Duration,
    /// `Some(argv)`: the shell execs `argv[0]` with the remaining words as arguments,
    /// each word taken literally (`body` is ignored). `None`: the shell runs `body`.
    pub argv: Option<&'a [String]>,
    /// `Some`: start the job in a cgroup of its own below this one and kill everything
    /// in it when the job ends ([`cgroup`]); a cgroup that cannot be made or entered
    /// fails the job before anything runs. `None`: the group kill and the session sweep
    /// alone.
    pub cgroups: Option<&'a JobCgroups>,
}

/// How the job's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// It exited with this status.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
}

/// Why the job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The main process exited by itself.
    Finished,
    /// The timeout passed and the job was terminated.
    TimedOut,
    /// The cancel flag was set and the job was terminated.
    Cancelled,
}

/// The result of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// How the main process ended.
    pub termination: Termination,
    /// Why it ended.
    pub ending: Ending,
    /// The stdout bytes kept (at most `max_output`).
    pub stdout: Vec<u8>,
    /// The stderr bytes kept (at most `max_output`).
    pub stderr: Vec<u8>,
    /// Whether stdout holds less than the job wrote: bytes past the cap were dropped, or
    /// the stream's end was never seen because a process that escaped the job kept it open.
    pub stdout_truncated: bool,
    /// The same for stderr.
    pub stderr_truncated: bool,
    /// When the job was started, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// From the start until the main process was seen to exit.
    pub duration: Duration,
}

/// Why a job could not be run, or could not be run to a proper end.
#[derive(Debug)]
pub enum ExecError {
    /// The command id could contain a path separator or a dot component.
    UnsafeId,
    /// The run dir or the jobs dir is not one we may trust.
    UntrustedDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The job's work dir could not be created; `AlreadyExists` means the id was used.
    JobDir {
        /// The directory that could not be created or inspected.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The script could not be written into the work dir.
    Script {
        /// The script file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `argv` was given but empty.
    EmptyArgv,
    /// The cancel flag was already set before the job started; nothing ran.
    CancelledBeforeStart,
    /// The program could not be started.
    Spawn {
        /// The program (the shell, or `argv[0]`).
        program: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The job's cgroup could not be created; nothing ran.
    Cgroup {
        /// The cgroup under which it was to be made.
        base: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A thread to feed or read the job's pipes could not be started; the job was killed.
    Thread(io::Error),
    /// Waiting for the job's main process failed.
    Wait(io::Error),
    /// Reading one of the job's output streams failed.
    Output {
        /// The stream.
        stream: Stream,
        /// The underlying error.
        source: io::Error,
    },
    /// Feeding the job's stdin failed (other than the job not reading it, which is fine).
    Stdin(io::Error),
    /// A pipe thread panicked (for instance inside `on_chunk`).
    ThreadPanicked {
        /// Which thread.
        role: &'static str,
    },
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecError::UnsafeId => {
                write!(
                    f,
                    "command id is not a safe path component; not running the job"
                )
            }
            ExecError::UntrustedDir { path, reason } => {
                write!(f, "refusing to run jobs in {}: {reason}", path.display())
            }
            ExecError::JobDir { path, source } if source.kind() == io::ErrorKind::AlreadyExists => {
                write!(
                    f,
                    "job dir {} already exists: a job id is never run twice",
                    path.display()
                )
            }
            ExecError::JobDir { path, source } => {
                write!(f, "cannot create job dir {}: {source}", path.display())
            }
            ExecError::Script { path, source } => {
                write!(f, "cannot write job script {}: {source}", path.display())
            }
            ExecError::EmptyArgv => write!(f, "empty argv: nothing to run"),
            ExecError::CancelledBeforeStart => {
                write!(f, "cancelled before it started; nothing ran")
            }
            ExecError::Spawn { program, source } => {
                write!(f, "cannot start {}: {source}", program.display())
            }
            ExecError::Cgroup { base, source } => {
                write!(
                    f,
                    "cannot create the job's cgroup in {}: {source}",
                    base.display()
                )
            }
            ExecError::Thread(source) => {
                write!(
                    f,
                    "cannot start a thread for the job's pipes (job killed): {source}"
                )
            }
            ExecError::Wait(source) => write!(f, "cannot wait for the job: {source}"),
            ExecError::Output { stream, source } => {
                write!(f, "cannot read the job's {stream}: {source}")
            }
            ExecError::Stdin(source) => write!(f, "cannot feed the job's stdin: {source}"),
            ExecError::ThreadPanicked { role } => write!(f, "the job's {role} thread panicked"),
        }
    }
}

impl std::error::Error for ExecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExecError::JobDir { source, .. }
            | ExecError::Script { source, .. }
            | ExecError::Spawn { source, .. }
            | ExecError::Cgroup { source, .. }
            | ExecError::Output { source, .. } => Some(source),
            ExecError::Thread(source) | ExecError::Wait(source) | ExecError::Stdin(source) => {
                Some(source)
            }
            _ => None,
        }
    }
}

/// Runs one job as DESIGN §5 says and returns its outcome once the job and everything it
/// started in its session are gone and its work dir is removed.
///
/// `cancel`: set it to true from another thread to cancel the job (SIGTERM to the group,
/// SIGKILL `kill_grace` later) → [`Ending::Cancelled`]. If it is already set when the job
/// is about to start, nothing runs and the result is [`ExecError::CancelledBeforeStart`].
///
/// `on_chunk`: called from the pipe threads with each chunk (at most [`CHUNK_SIZE`] bytes)
/// of the bytes that are kept in the result, in order per stream, so a live stream equals
/// the result's bytes. It should return promptly: the pipe threads are stopped
/// [`OUTPUT_DRAIN_LIMIT`] after the job was killed.
pub fn run(
    spec: &ExecSpec,
    cancel: &AtomicBool,
    on_chunk: &(dyn Fn(Stream, &[u8]) + Sync),
) -> Result<ExecOutcome, ExecError> {
    run_observed(spec, cancel, on_chunk, &|_| {})
}

/// [`run`], calling `on_spawn(pid)` as soon as the job's process exists. The pid is also
/// the job's process group and session id: the daemon journals it, so that after a
/// crash the next daemon can kill what the job left running ([`kill_leftovers`]).
pub fn run_observed(
    spec: &ExecSpec,
    cancel: &AtomicBool,
    on_chunk: &(dyn Fn(Stream, &[u8]) + Sync),
    on_spawn: &dyn Fn(u32),
) -> Result<ExecOutcome, ExecError> {
    if !is_safe_id(spec.id) {
        return Err(ExecError::UnsafeId);
    }
    // The guard removes the work dir on every path out of this function, errors included.
    let job_dir = JobDir::create(spec.run_dir, spec.id)?;
    let (mut command, program) = build_command(spec, &job_dir)?;
    if cancel.load(Ordering::SeqCst) {
        return Err(ExecError::CancelledBeforeStart);
    }
    // Dropped after the main process is reaped: it kills what is left in the cgroup
    // and removes it, on every path out of this function.
    let cgroup = match spec.cgroups {
        Some(cgroups) => {
            let cgroup_error = |source| ExecError::Cgroup {
                base: cgroups.base().to_path_buf(),
                source,
            };
            let cgroup = JobCgroup::create(cgroups, spec.id).map_err(cgroup_error)?;
            sys::enter_cgroup_on_exec(&mut command, cgroup.procs_fd().map_err(cgroup_error)?);
            Some(cgroup)
        }
        None => None,
    };
    let started_unix_ms = unix_millis_now();
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|source| ExecError::Spawn { program, source })?;
    on_spawn(child.id());
    let supervised = supervise(&mut child, spec, cancel, on_chunk, started, cgroup.as_ref());
    let status = child.wait();
    drop(cgroup);
    let supervised = supervised?;
    let status = status.map_err(ExecError::Wait)?;
    drop(job_dir);
    Ok(ExecOutcome {
        termination: termination_of(status)?,
        ending: supervised.ending,
        stdout: supervised.stdout.bytes,
        stderr: supervised.stderr.bytes,
        stdout_truncated: supervised.stdout.truncated,
        stderr_truncated: supervised.stderr.truncated,
        started_unix_ms,
        duration: supervised.exited_at.saturating_duration_since(started),
    })
}

/// A job's work dir; removes itself (and everything in it) when dropped. It exists only
/// for a directory this job created, so dropping it never removes another job's dir.
struct JobDir {
    path: PathBuf,
}

impl JobDir {
    /// Creates `run_dir/jobs/<id>/` and its `cwd/`, both new and 0700, after checking
    /// that `run_dir` and `run_dir/jobs` may be trusted.
    fn create(run_dir: &Path, id: &str) -> Result<JobDir, ExecError> {
        if !run_dir.is_absolute() {
            return Err(ExecError::UntrustedDir {
                path: run_dir.to_path_buf(),
                reason: "not an absolute path",
            });
        }
        check_trusted_dir(run_dir)?;
        let jobs = run_dir.join(JOBS_DIR);
        match DirBuilder::new().mode(PRIVATE_DIR_MODE).create(&jobs) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(ExecError::JobDir { path: jobs, source }),
        }
        check_trusted_dir(&jobs)?;
        let path = jobs.join(id);
        // `create`, not `create_all`: the dir must be new, so a second job with the same
        // id fails here instead of sharing (or later deleting) the first one's dir.
        DirBuilder::new()
            .mode(PRIVATE_DIR_MODE)
            .create(&path)
            .map_err(|source| ExecError::JobDir {
                path: path.clone(),
                source,
            })?;
        let job_dir = JobDir { path };
        let cwd = job_dir.cwd();
        DirBuilder::new()
            .mode(PRIVATE_DIR_MODE)
            .create(&cwd)
            .map_err(|source| ExecError::JobDir { path: cwd, source })?;
        Ok(job_dir)
    }

    fn cwd(&self) -> PathBuf {
        self.path.join(CWD_DIR)
    }

    /// Writes the script with its final mode in one step; `create_new` also refuses to
    /// follow a symlink planted at that name.
    fn write_script(&self, body: &[u8]) -> Result<PathBuf, ExecError> {
        let path = self.path.join(SCRIPT_FILE);
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(SCRIPT_MODE)
            .open(&path)
            .and_then(|mut file| file.write_all(body));
        match written {
            Ok(()) => Ok(path),
            Err(source) => Err(ExecError::Script { path, source }),
        }
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        // Nothing useful can be done about a failure here (the job may have left a file
        // we cannot remove); the next boot clears the run dir, which lives in /run.
        // std's remove_dir_all does not follow symlinks the job may have planted.
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A directory we put job files in must be a real directory (not a symlink), owned by the
/// user we run as, and writable by nobody else, or another user could swap its contents.
fn check_trusted_dir(path: &Path) -> Result<(), ExecError> {
    let untrusted = |reason| ExecError::UntrustedDir {
        path: path.to_path_buf(),
        reason,
    };
    let meta = fs::symlink_metadata(path).map_err(|source| ExecError::JobDir {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_dir() {
        return Err(untrusted("not a directory"));
    }
    if meta.uid() != sys::geteuid() {
        return Err(untrusted("not owned by the user the daemon runs as"));
    }
    if meta.mode() & UNTRUSTED_WRITE_BITS != 0 {
        return Err(untrusted("writable by group or others"));
    }
    Ok(())
}

/// A command id must be usable as one path component: non-empty, short, and made only of
/// digits, lowercase hex letters and dashes, so it can hold neither `/` nor `.`. This is
/// a guard against path tricks, not the protocol's validation, which the caller has done.
pub(crate) fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
}

/// The command for the job, set up as DESIGN §5 says, and the program name for errors.
fn build_command(spec: &ExecSpec, job_dir: &JobDir) -> Result<(Command, PathBuf), ExecError> {
    let script = match spec.argv {
        Some([]) => return Err(ExecError::EmptyArgv),
        Some(argv) => job_dir.write_script(&exec_line(argv))?,
        None => job_dir.write_script(spec.body)?,
    };
    let mut command = Command::new(spec.shell);
    command.args(SHELL_FLAGS).arg(script);
    let program = spec.shell.to_path_buf();
    // With PATH set here, std looks the program up in this PATH, not the daemon's.
    command
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", JOB_HOME)
        .env("LANG", JOB_LANG)
        .env("TERM", JOB_TERM)
        .env("QVM_REMOTE_VM", spec.vm)
        .env("QVM_REMOTE_ID", spec.id)
        .current_dir(job_dir.cwd())
        .stdin(if spec.stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sys::sandbox_command(&mut command, JOB_UMASK);
    Ok((command, program))
}

/// The script that makes the shell replace itself with exactly `argv`: every word in
/// single quotes (a quote inside one becomes `'\''`), so bash expands nothing in it.
fn exec_line(argv: &[String]) -> Vec<u8> {
    let mut line = b"exec --".to_vec();
    for word in argv {
        line.extend_from_slice(b" '");
        line.extend_from_slice(word.replace('\'', "'\\''").as_bytes());
        line.push(b'\'');
    }
    line.push(b'\n');
    line
}

/// What one output stream produced.
#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

/// What supervising the job produced, before the main process is reaped.
struct Supervised {
    ending: Ending,
    exited_at: Instant,
    stdout: Captured,
    stderr: Captured,
}

/// Drives a started job to its end: pipe threads, deadline and cancel, the final group
/// kill and session sweep, and the draining of the pipes. Leaves the main process for the
/// caller to reap, whatever happens.
fn supervise(
    child: &mut Child,
    spec: &ExecSpec,
    cancel: &AtomicBool,
    on_chunk: &(dyn Fn(Stream, &[u8]) + Sync),
    started: Instant,
    cgroup: Option<&JobCgroup>,
) -> Result<Supervised, ExecError> {
    let Ok(pid) = i32::try_from(child.id()) else {
        // Cannot happen (pids are positive i32s); if it did, the group could not be
        // named, so end the main process the only way left and report it.
        let _ = child.kill();
        return Err(ExecError::Wait(io::Error::other("child pid out of range")));
    };
    let stdin_pipe = child.stdin.take();
    let stdout_pipe = child.stdout.take();
    let stderr_pipe = child.stderr.take();
    let stop = AtomicBool::new(false);
    // Each pipe thread says on this channel when it ends, so the drain below wakes the
    // moment the last one is done instead of on a timer tick.
    let (finished_tx, finished_rx) = mpsc::channel::<()>();
    thread::scope(|scope| {
        let stop = &stop;
        let mut spawn_error = None;
        let writer = stdin_pipe.and_then(|pipe| {
            let job_stdin = spec.stdin;
            spawn_pipe_thread(scope, "stdin", &mut spawn_error, &finished_tx, move || {
                feed_stdin(pipe, job_stdin, stop)
            })
        });
        let readers = [
            (Stream::Stdout, stdout_pipe.map(OwnedFd::from)),
            (Stream::Stderr, stderr_pipe.map(OwnedFd::from)),
        ]
        .map(|(stream, pipe)| {
            pipe.and_then(|pipe| {
                let cap = spec.max_output;
                spawn_pipe_thread(
                    scope,
                    stream.name(),
                    &mut spawn_error,
                    &finished_tx,
                    move || capture(pipe, stream, cap, on_chunk, stop),
                )
            })
        });
        // A missing pipe thread would leave the job blocked on a full pipe (or fed
        // nothing), so the job is killed at once and the error reported.
        let abort = spawn_error.is_some();
        let watched = watch(pid, spec, cancel, started, abort);
        if watched.is_ok() {
            // The main process is a zombie now, so `pid` still names this job's group
            // and session. If waiting failed, the child may already have been reaped by
            // someone else and the number may be reused: then nothing is signalled.
            end_job(pid);
        }
        // The cgroup names no pid, so it is safe to kill whatever the watch ended with;
        // this catches what left the session and would otherwise hold the pipes open.
        if let Some(cgroup) = cgroup {
            cgroup.kill();
        }
        let drain_deadline = Instant::now() + OUTPUT_DRAIN_LIMIT;
        let mut running = usize::from(writer.is_some()) + readers.iter().flatten().count();
        while running > 0 {
            let left = drain_deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || finished_rx.recv_timeout(left).is_err() {
                break;
            }
            running -= 1;
        }
        stop.store(true, Ordering::SeqCst);
        let fed = writer.map(|handle| join_pipe_thread(handle, "stdin"));
        let [stdout, stderr] = readers;
        let stdout = stdout.map(|handle| join_pipe_thread(handle, "stdout"));
        let stderr = stderr.map(|handle| join_pipe_thread(handle, "stderr"));
        if let Some(error) = spawn_error {
            return Err(ExecError::Thread(error));
        }
        let (ending, exited_at) = watched.map_err(ExecError::Wait)?;
        let stdout = collect(stdout, Stream::Stdout)?;
        let stderr = collect(stderr, Stream::Stderr)?;
        if let Some(fed) = fed {
            fed?.map_err(ExecError::Stdin)?;
        }
        Ok(Supervised {
            ending,
            exited_at,
            stdout,
            stderr,
        })
    })
}

/// Starts a pipe thread named `job-<name>` (Linux keeps 15 bytes of a thread name). On
/// failure it records the first error and returns `None`; the closure, and the pipe end
/// it owns, is dropped, so the job sees that pipe close.
fn spawn_pipe_thread<'scope, 'env, T, F>(
    scope: &'scope Scope<'scope, 'env>,
    name: &str,
    spawn_error: &mut Option<io::Error>,
    finished: &mpsc::Sender<()>,
    body: F,
) -> Option<ScopedJoinHandle<'scope, T>>
where
    F: FnOnce() -> T + Send + 'scope,
    T: Send + 'scope,
{
    // The guard is made inside the thread, so only a thread that runs ever signals:
    // the drain counts exactly the threads it started.
    let finished = finished.clone();
    match thread::Builder::new()
        .name(format!("job-{name}"))
        .spawn_scoped(scope, move || {
            let _signal = Finished(finished);
            body()
        }) {
        Ok(handle) => Some(handle),
        Err(error) => {
            spawn_error.get_or_insert(error);
            None
        }
    }
}

/// Sends on its channel when dropped: at the end of a pipe thread, however it ends.
struct Finished(mpsc::Sender<()>);

impl Drop for Finished {
    fn drop(&mut self) {
        // The receiver outlives every pipe thread (they are scoped), so this only fails
        // if the supervisor already stopped waiting, when nobody needs the news.
        let _ = self.0.send(());
    }
}

fn join_pipe_thread<T>(
    handle: ScopedJoinHandle<'_, T>,
    role: &'static str,
) -> Result<T, ExecError> {
    handle
        .join()
        .map_err(|_| ExecError::ThreadPanicked { role })
}

fn collect(
    joined: Option<Result<io::Result<Captured>, ExecError>>,
    stream: Stream,
) -> Result<Captured, ExecError> {
    match joined {
        None => Ok(Captured::default()),
        Some(joined) => joined?.map_err(|source| ExecError::Output { stream, source }),
    }
}

/// Where the main thread is in ending the job.
enum Phase {
    Running,
    Terminating { since: Instant },
    Killed,
}

/// Waits for the main process to exit (without reaping it), sending SIGTERM to the group
/// on timeout or cancel and SIGKILL after the grace period. With `abort`, kills at once.
/// Returns why the job ended and when its main process was seen to exit.
fn watch(
    pid: i32,
    spec: &ExecSpec,
    cancel: &AtomicBool,
    started: Instant,
    abort: bool,
) -> io::Result<(Ending, Instant)> {
    // A timeout too large to add to an Instant means no deadline at all.
    let deadline = started.checked_add(spec.timeout);
    let mut ending = Ending::Finished;
    let mut phase = Phase::Running;
    if abort {
        signal_group(pid, Signal::Kill);
        phase = Phase::Killed;
    }
    // The child is not reaped yet, so its pid still names it. Waiting on its pidfd
    // wakes the moment it exits instead of at the next tick; the tick stays for the
    // cancel flag and the deadline. Without a pidfd (old kernel) the tick alone works.
    let exit_handle = PidFd::open(pid).ok();
    loop {
        if sys::child_has_exited(pid)? {
            return Ok((ending, Instant::now()));
        }
        let now = Instant::now();
        match phase {
            Phase::Running => {
                // A cancel is the user's explicit wish, so it wins over a timeout that
                // happens to fall due in the same tick.
                let cause = if cancel.load(Ordering::SeqCst) {
                    Some(Ending::Cancelled)
                } else if deadline.is_some_and(|d| now >= d) {
                    Some(Ending::TimedOut)
                } else {
                    None
                };
                if let Some(cause) = cause {
                    ending = cause;
                    signal_group(pid, Signal::Term);
                    phase = Phase::Terminating { since: now };
                }
            }
            Phase::Terminating { since } => {
                if now.saturating_duration_since(since) >= spec.kill_grace {
                    signal_group(pid, Signal::Kill);
                    phase = Phase::Killed;
                }
            }
            Phase::Killed => {}
        }
        match &exit_handle {
            Some(h) => {
                sys::wait_ready(h.as_fd(), Readiness::Readable, WAIT_POLL)?;
            }
            None => thread::sleep(WAIT_POLL),
        }
    }
}

/// Signals the job's group while its main process has not been reaped. A failure is not
/// acted on: ESRCH is already success, and any other error leaves nothing better to do
/// than the SIGKILL and the session sweep that always follow.
fn signal_group(pgid: i32, sig: Signal) {
    let _ = sys::kill_group(pgid, sig);
}

/// The start time of `pid` (field 22 of `/proc/<pid>/stat`, in clock ticks since boot),
/// which tells a process from a later one that reuses its pid.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let pid = i32::try_from(pid).ok()?;
    let file = File::open(Path::new(PROC_ROOT).join(pid.to_string()).join("stat")).ok()?;
    let mut text = Vec::new();
    file.take(PROC_STAT_MAX).read_to_end(&mut text).ok()?;
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    // After the command name come fields 3 onwards; the start time is field 22.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// After a daemon crash: kills every process still in the session of a job whose main
/// process had `pid` and `start_time`. A live process with that pid but another start
/// time is a stranger that reused the pid, and nothing is killed. If the main process
/// is gone, the kernel has not reused its pid while anything remains in its session, so
/// the remaining members are the job's own. Returns how many processes were signalled.
pub fn kill_leftovers(pid: u32, start_time: u64) -> usize {
    let Ok(sid) = i32::try_from(pid) else {
        return 0;
    };
    if sid <= 1 {
        return 0;
    }
    if let Some(now) = process_start_time(pid) {
        if now != start_time {
            return 0;
        }
    }
    let mut killed = 0;
    for _ in 0..SWEEP_ROUNDS {
        let members = session_members(sid);
        if members.is_empty() {
            break;
        }
        for member in members {
            kill_session_member(member, sid);
            killed += 1;
        }
        thread::sleep(SWEEP_PAUSE);
    }
    killed
}

/// Kills whatever is left of the job once its main process has exited (unreaped): the
/// whole process group, then every live process still in the job's session.
fn end_job(pid: i32) {
    signal_group(pid, Signal::Kill);
    for _ in 0..SWEEP_ROUNDS {
        let members = session_members(pid);
        if members.is_empty() {
            return;
        }
        for member in members {
            kill_session_member(member, pid);
        }
        thread::sleep(SWEEP_PAUSE);
    }
}

/// SIGKILLs `pid` if it is still a live member of session `sid`. The pidfd is opened
/// first and the session checked afterwards: from the open on, the handle names this
/// one process even if the pid is reused, so the signal cannot reach a stranger.
fn kill_session_member(pid: i32, sid: i32) {
    let Ok(handle) = PidFd::open(pid) else {
        return;
    };
    if read_proc_stat(pid).is_some_and(|stat| stat.is_live_member_of(sid)) {
        // ESRCH is Ok; any other failure leaves the process to the next round.
        let _ = handle.send(Signal::Kill);
    }
}

/// The pids of live (not zombie) processes in session `sid`, from a bounded /proc scan.
fn session_members(sid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir(PROC_ROOT) else {
        return Vec::new();
    };
    entries
        .take(MAX_PROC_ENTRIES)
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| parse_pid(&entry.file_name().to_string_lossy()))
        // One getsid call rules out nearly every process; only the few in the session
        // have their stat file read, to leave out zombies (and to re-check the session).
        .filter(|&pid| sys::getsid(pid) == Some(sid))
        .filter(|&pid| read_proc_stat(pid).is_some_and(|stat| stat.is_live_member_of(sid)))
        .collect()
}

fn parse_pid(name: &str) -> Option<i32> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok().filter(|&pid| pid > 0)
}

/// The fields of `/proc/<pid>/stat` the sweep needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: u8,
    pgrp: i32,
    session: i32,
}

impl ProcStat {
    /// Zombies (`Z`) and dead tasks (`X`) run nothing and cannot be killed again.
    fn is_live_member_of(&self, sid: i32) -> bool {
        self.session == sid && self.state != b'Z' && self.state != b'X'
    }
}

fn read_proc_stat(pid: i32) -> Option<ProcStat> {
    let file = File::open(Path::new(PROC_ROOT).join(pid.to_string()).join("stat")).ok()?;
    let mut text = Vec::new();
    file.take(PROC_STAT_MAX).read_to_end(&mut text).ok()?;
    parse_proc_stat(&text)
}

/// Parses `pid (comm) state ppid pgrp session ...`. The command name may hold spaces and
/// `)`, so the fields are taken after the last `)` in the text.
fn parse_proc_stat(text: &[u8]) -> Option<ProcStat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = match fields.next()?.as_bytes() {
        [state] => *state,
        _ => return None,
    };
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some(ProcStat {
        state,
        pgrp,
        session,
    })
}

/// Reads one output stream until its end (or until told to stop), keeping at most `cap`
/// bytes and draining the rest.
fn capture(
    pipe: OwnedFd,
    stream: Stream,
    cap: usize,
    on_chunk: &(dyn Fn(Stream, &[u8]) + Sync),
    stop: &AtomicBool,
) -> io::Result<Captured> {
    let mut file = File::from(pipe);
    let mut chunk = vec![0u8; CHUNK_SIZE];
    let mut captured = Captured::default();
    loop {
        if stop.load(Ordering::SeqCst) {
            // The end of the stream was never seen: a process outside the job still holds
            // the pipe, and what it might write is lost.
            captured.truncated = true;
            return Ok(captured);
        }
        if !sys::wait_ready(file.as_fd(), Readiness::Readable, PIPE_POLL)? {
            continue;
        }
        let read = match file.read(&mut chunk) {
            Ok(0) => return Ok(captured),
            Ok(read) => read,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                continue
            }
            Err(error) => return Err(error),
        };
        let data = chunk.get(..read).unwrap_or_default();
        let room = cap.saturating_sub(captured.bytes.len());
        let kept = data.get(..room.min(data.len())).unwrap_or_default();
        if !kept.is_empty() {
            append_capped(&mut captured.bytes, kept, cap);
            on_chunk(stream, kept);
        }
        if kept.len() < data.len() {
            captured.truncated = true;
        }
    }
}

/// Appends `kept` (which fits under `cap`) while never reserving more than `cap` bytes,
/// so a stream's buffer stays within its cap instead of doubling past it.
fn append_capped(bytes: &mut Vec<u8>, kept: &[u8], cap: usize) {
    let needed = bytes.len().saturating_add(kept.len());
    if needed > bytes.capacity() {
        let target = needed
            .max(bytes.capacity().saturating_mul(2))
            .min(cap.max(needed));
        bytes.reserve_exact(target.saturating_sub(bytes.len()));
    }
    bytes.extend_from_slice(kept);
}

/// Writes the job's stdin bytes, then closes the pipe. A job that exits (or closes its
/// stdin) without reading everything is normal: EPIPE ends the feeding without an error.
/// The pipe end is non-blocking so the thread can notice the stop flag even when a process
/// that escaped the job holds the other end and reads nothing.
fn feed_stdin(pipe: ChildStdin, bytes: &[u8], stop: &AtomicBool) -> io::Result<()> {
    sys::block_sigpipe_in_current_thread()?;
    let pipe = OwnedFd::from(pipe);
    sys::set_nonblocking(pipe.as_fd())?;
    let mut file = File::from(pipe);
    let mut rest = bytes;
    while !rest.is_empty() {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        match file.write(rest) {
            Ok(0) => return Ok(()),
            Ok(written) => rest = rest.get(written..).unwrap_or_default(),
            Err(error) => match error.kind() {
                io::ErrorKind::BrokenPipe => return Ok(()),
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    sys::wait_ready(file.as_fd(), Readiness::Writable, PIPE_POLL)?;
                }
                _ => return Err(error),
            },
        }
    }
    Ok(())
}

fn termination_of(status: ExitStatus) -> Result<Termination, ExecError> {
    match (status.code(), status.signal()) {
        (Some(code), _) => Ok(Termination::Exited(code)),
        (None, Some(signal)) => Ok(Termination::Signaled(signal)),
        (None, None) => Err(ExecError::Wait(io::Error::other(format!(
            "job ended with an unexpected wait status {status}"
        )))),
    }
}

fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (state, process group, session) as parsed from a stat line.
    type Fields = Option<(u8, i32, i32)>;

    #[test]
    fn proc_stat_parsing_takes_fields_after_the_last_paren() {
        let cases: &[(&[u8], Fields)] = &[
            (b"42 (bash) S 1 42 42 0 -1", Some((b'S', 42, 42))),
            (b"7 (a b) c) R 1 8 9 0", Some((b'R', 8, 9))),
            (b"7 ()) ) Z 1 3 4", Some((b'Z', 3, 4))),
            (b"7 (x\n) S 1 3 4", Some((b'S', 3, 4))),
            (b"7 (bash S 1 3 4", None),
            (b"7 (bash) S 1 3", None),
            (b"7 (bash) SS 1 3 4", None),
            (b"7 (bash) S 1 x 4", None),
            (b"", None),
        ];
        for (text, expected) in cases {
            let parsed = parse_proc_stat(text).map(|s| (s.state, s.pgrp, s.session));
            assert_eq!(parsed, *expected, "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn live_member_excludes_zombies_and_other_sessions() {
        let stat = |state, session| ProcStat {
            state,
            pgrp: 1,
            session,
        };
        assert!(stat(b'S', 5).is_live_member_of(5));
        assert!(stat(b'D', 5).is_live_member_of(5));
        assert!(!stat(b'Z', 5).is_live_member_of(5));
        assert!(!stat(b'X', 5).is_live_member_of(5));
        assert!(!stat(b'S', 6).is_live_member_of(5));
    }

    #[test]
    fn exec_lines_quote_every_word() {
        let words = |w: &[&str]| w.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(
            exec_line(&words(&["/usr/bin/qvm-ls", "--raw-data"])),
            b"exec -- '/usr/bin/qvm-ls' '--raw-data'\n"
        );
        assert_eq!(
            exec_line(&words(&["printf", "it's", "", "$x"])),
            b"exec -- 'printf' 'it'\\''s' '' '$x'\n"
        );
    }

    #[test]
    fn pid_names() {
        let cases = [
            ("1", Some(1)),
            ("4242", Some(4242)),
            ("0", None),
            ("self", None),
            ("-1", None),
            ("+1", None),
            ("", None),
            ("99999999999", None),
        ];
        for (name, expected) in cases {
            assert_eq!(parse_pid(name), expected, "{name}");
        }
    }

    #[test]
    fn safe_ids() {
        let good = "20261204-153000-4242-0123456789abcdef";
        assert!(is_safe_id(good));
        assert!(is_safe_id("20261204-153000-4294967295-0123456789abcdef"));
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "../20261204",
            "20261204-153000-4242-0123456789ABCDEF",
            "20261204-153000-42949672950-0123456789abcdef",
            "x y",
        ] {
            assert!(!is_safe_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn append_capped_never_reserves_past_the_cap() {
        let mut bytes = Vec::new();
        for _ in 0..100 {
            append_capped(&mut bytes, &[1; 10], 1000);
        }
        assert_eq!(bytes.len(), 1000);
        assert!(bytes.capacity() <= 1000, "capacity {}", bytes.capacity());
    }

    #[test]
    fn errors_say_what_and_where() {
        let exists = ExecError::JobDir {
            path: PathBuf::from("/run/qvm-remote/jobs/x"),
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        };
        assert!(exists.to_string().contains("/run/qvm-remote/jobs/x"));
        assert!(exists.to_string().contains("already exists"));
        let spawn = ExecError::Spawn {
            program: PathBuf::from("/bin/nope"),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(spawn.to_string().starts_with("cannot start /bin/nope"));
        assert!(std::error::Error::source(&spawn).is_some());
    }
}
