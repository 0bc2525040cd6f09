//! The dom0 daemon (DESIGN §3–§5): one thread per authorised VM opens the channel
//! (`qvm-run --pass-io … VM 'qvm-remote agent'`), a fixed worker pool runs jobs.
//!
//! The daemon's promises, each enforced here:
//! - dom0 initiates every channel; the command string sent to the VM is the config
//!   constant `QVM_REMOTE_AGENT`, never built from VM data.
//! - Every read from a VM is bounded by the frame limits, and what a session keeps in
//!   memory is bounded by the queue limits; a violation ends that session only.
//! - A job is journalled and recorded in the replay store before it can run, and
//!   every job gets a result, refusals included.
//! - A crash never runs a job twice: journalled jobs without a result become
//!   `interrupted` at the next start.
//! - Every authenticated job is decided by the policy gate (DESIGN §7) before it can
//!   be queued: `deny` answers `denied`; `ask` parks the job outside the worker pool
//!   until dom0 approves or denies it or its timeout passes; a simple command runs as
//!   exactly the argv that was decided (the shell execs it, expanding nothing).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::approval::{self, Verdict as Approval};
use super::devmode;
use super::gate::{Gate, Verdict};
use super::sched::{QueueError, Scheduler};
use super::store::{VmStore, MAX_HELD_PER_VM};
use crate::atomic::{self, Durability};
use crate::audit::{AuditLog, Echo};
use crate::cgroup::JobCgroups;
use crate::config::{Config, Mode};
use crate::exec::{self, Ending, ExecSpec, Stream, Termination};
use crate::id::CommandId;
use crate::keys::{Key, KeyError};
use crate::policy::{Action, Classified};
use crate::proto::frame::{write_frame, MAX_CHUNK};
use crate::proto::job::{self, JobError, JobLimits};
use crate::proto::{self as p, Frame, FrameReader, FrameType, Job, JobResult, Status, Truncated};
use crate::time;

/// How long a new session may take to say `HELLO`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames waiting for the session thread; the reader stops reading past this.
pub const EVENT_QUEUE: usize = 16;
/// Frames waiting to be written to one VM. Live output past this is dropped from the
/// stream (the result still holds it); a result that does not fit ends the session so
/// the next one resends it from the held store.
pub const OUTBOX: usize = 256;
/// How often a session thread wakes to check the clock and the stop flag.
pub const TICK: Duration = Duration::from_millis(20);
/// After a session ended abnormally, the wait before the next one doubles up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A VM that is not running is retried with a backoff that doubles up to this, so a
/// VM that starts later is noticed within it.
pub const MAX_DOWN_BACKOFF: Duration = Duration::from_secs(10);
/// A stream session shorter than this that the agent ended counts as a failure for
/// the reconnect backoff.
pub const MIN_HEALTHY_SESSION: Duration = Duration::from_secs(10);
/// How long a session's `qvm-run` gets to exit after `BYE` before it is killed.
pub const SESSION_EXIT_GRACE: Duration = Duration::from_secs(2);
/// On SIGTERM, running jobs get this long to finish before they are killed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Live output bytes that may wait for one VM's writer; past it, chunks are dropped
/// from the live stream (the result still carries them).
pub const MAX_LIVE_BYTES: usize = 1 << 20;
/// Shortest gap between two status file writes when things change quickly.
pub const STATUS_MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Status file refresh interval.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Longest command text written to the audit log.
pub const MAX_LOGGED_COMMAND: usize = 4096;
/// How often the replay store is pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Most jobs of one VM that may wait for approval at once; past it, new `ask` jobs are
/// denied, so a VM cannot grow dom0's list of parked jobs without bound.
pub const MAX_PARKED_PER_VM: usize = 32;
/// The exit code of a job refused by policy or by a human (DESIGN §5).
pub const EXIT_DENIED: u8 = 126;

/// Daemon options from the command line.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve only this VM.
    pub only_vm: Option<String>,
    /// One session per VM, wait for its jobs, then exit.
    pub once: bool,
    /// Verify and log, never execute.
    pub dry_run: bool,
    /// Echo the log on stderr.
    pub verbose: bool,
}

/// Why the daemon could not start.
#[derive(Debug)]
pub enum DaemonError {
    /// No VM to serve.
    NoVms,
    /// `--vm` names a VM the config does not list.
    UnknownVm(String),
    /// A directory or file the daemon needs could not be set up.
    Setup {
        /// What it was doing.
        what: String,
        /// The error.
        source: io::Error,
    },
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonError::NoVms => f.write_str("QVM_REMOTE_VMS is empty: no VM to serve"),
            DaemonError::UnknownVm(v) => write!(f, "--vm {v}: not in QVM_REMOTE_VMS"),
            DaemonError::Setup { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for DaemonError {}

struct Shared {
    cfg: Config,
    opts: Options,
    log: AuditLog,
    sched: Arc<Scheduler>,
    stop: &'static AtomicBool,
    gate: Gate,
    /// Jobs waiting for approval. They hold no worker slot; the approval thread
    /// watches their decisions, deadlines and cancels.
    parked: Mutex<Vec<Parked>>,
    /// Something `status` shows has changed: the main loop rewrites the status file
    /// soon, instead of at its next periodic refresh.
    status_dirty: AtomicBool,
    /// Where jobs get a cgroup of their own, when this system allows it.
    cgroups: Option<JobCgroups>,
}

/// A job waiting for `qvm-remote-dom0 approve|deny ID`.
struct Parked {
    vm: Arc<Vm>,
    key: Key,
    job: Job,
    argv: Option<Vec<String>>,
    ctl: Arc<JobCtl>,
    accepted: Instant,
    /// The job's timeout, counted from `accepted` like any job's.
    timeout: Duration,
}

/// How a parked job leaves the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Approved,
    Denied,
    TimedOut,
    Cancelled,
}

/// Control of one accepted job.
struct JobCtl {
    cancel: AtomicBool,
    /// Set with `cancel` when the daemon itself is stopping: the job is then
    /// `interrupted`, not `cancelled`.
    shutdown: AtomicBool,
}

/// Counters shown by `qvm-remote-dom0 status`.
#[derive(Default)]
struct Stats {
    connected: bool,
    /// When dom0 last opened a channel to the VM (a poll, in poll mode), in Unix ms.
    last_poll_ms: u64,
    /// When the VM's agent last answered (its HELLO), in Unix ms.
    last_session_ms: u64,
    done: u64,
    refused: u64,
    sessions: u64,
}

enum Out {
    Frame(FrameType, Vec<u8>),
    /// A live output chunk, counted in `Vm::live_bytes` until written.
    Live(FrameType, Vec<u8>),
    Held(CommandId),
}

struct Vm {
    name: String,
    store: VmStore,
    jobs: Mutex<HashMap<CommandId, Arc<JobCtl>>>,
    link: Mutex<Option<SyncSender<Out>>>,
    /// Set when a result could not be queued to the live session: the session ends
    /// and the next one sends it from the held store.
    resync: AtomicBool,
    stats: Mutex<Stats>,
    /// Conditions already logged, so a VM stuck in one state logs it once.
    noted: Mutex<HashSet<String>>,
    running_jobs: AtomicU64,
    /// Bytes of live output queued for this VM's writer.
    live_bytes: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Vm {
    /// Logs `category` for this VM only the first time `key` is noted since it was last
    /// cleared; returns whether it logged.
    fn note_once(&self, shared: &Shared, key: &str, category: &str, fields: &[(&str, &str)]) {
        if lock(&self.noted).insert(key.to_string()) {
            let mut all = vec![("vm", self.name.as_str())];
            all.extend_from_slice(fields);
            shared.log.event(category, &all);
        }
    }

    fn clear_note(&self, key: &str) -> bool {
        lock(&self.noted).remove(key)
    }

    /// Queues a live output chunk unless this VM already has `MAX_LIVE_BYTES` of them
    /// waiting to be written: a VM that does not read cannot make dom0 buffer more.
    fn send_live(&self, kind: FrameType, payload: Vec<u8>) -> bool {
        let n = payload.len();
        if self.live_bytes.fetch_add(n, Ordering::SeqCst) + n > MAX_LIVE_BYTES {
            self.live_bytes.fetch_sub(n, Ordering::SeqCst);
            return false;
        }
        if self.send(Out::Live(kind, payload)) {
            true
        } else {
            self.live_bytes.fetch_sub(n, Ordering::SeqCst);
            false
        }
    }

    fn send(&self, out: Out) -> bool {
        let link = lock(&self.link);
        match link.as_ref().map(|tx| tx.try_send(out)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(Out::Held(_)))) => {
                self.resync.store(true, Ordering::SeqCst);
                false
            }
            _ => false,
        }
    }

    /// Stores a job's result durably, forgets the job, and sends the result if a
    /// session is open.
    fn finish(&self, shared: &Shared, key: &Key, result: JobResult) {
        let id = result.id.clone();
        if let Err(e) = self.store.hold(&id, &result.encode(key)) {
            shared.log.event(
                "ERROR",
                &[
                    ("vm", &self.name),
                    ("id", id.as_str()),
                    ("hold", &e.to_string()),
                ],
            );
        }
        lock(&self.jobs).remove(&id);
        {
            let mut st = lock(&self.stats);
            if result.status == Status::Done {
                st.done += 1;
            } else {
                st.refused += 1;
            }
        }
        shared.status_dirty.store(true, Ordering::SeqCst);
        self.send(Out::Held(id));
    }
}

/// Runs the daemon until SIGTERM/SIGINT (or, with `--once`, one session per VM).
pub fn run(cfg: Config, opts: Options) -> Result<(), DaemonError> {
    let setup = |what: &str| {
        let what = what.to_string();
        move |source| DaemonError::Setup { what, source }
    };
    let names: Vec<String> = match &opts.only_vm {
        Some(v) if cfg.vms.contains(v) => vec![v.clone()],
        Some(v) => return Err(DaemonError::UnknownVm(v.clone())),
        None => cfg.vms.clone(),
    };
    if names.is_empty() {
        return Err(DaemonError::NoVms);
    }
    crate::sys::set_process_umask(0o077);
    let stop = crate::sys::install_termination_flag().map_err(setup("signal handlers"))?;
    let echo = if !opts.verbose {
        Echo::Quiet
    } else if crate::sys::isatty(2) {
        Echo::StderrColour
    } else {
        Echo::Stderr
    };
    for dir in [&cfg.state_dir, &cfg.run_dir] {
        make_private_dir(dir).map_err(setup(&format!("{}", dir.display())))?;
    }
    // The anchor keeps the last chain value in the state dir, so a log rotated while
    // the daemon was down continues the chain and a cut tail is noticed.
    let anchor = cfg.state_dir.join(crate::audit::ANCHOR_FILE);
    let log = AuditLog::open_anchored(&cfg.log, &anchor, echo)
        .map_err(setup(&format!("audit log {}", cfg.log.display())))?;
    clear_stale_job_dirs(&cfg.run_dir);
    // Jobs parked by a previous daemon are `interrupted` now; their records are stale.
    approval::clear(&cfg.run_dir);
    let sched = Scheduler::start(cfg.max_concurrent).map_err(setup("worker pool"))?;
    let gate = Gate::new(&cfg.policy, &cfg.run_dir);
    // Job cgroups are asked for (they cost each job one cgroup migration, which waits
    // for an RCU grace period: see ARCHITECTURE.md) and then used where possible.
    let cgroups = cfg.job_cgroup.then(crate::cgroup::discover);
    let (containment, no_cgroup) = match &cgroups {
        Some(Ok(found)) => (format!("cgroup:{}", found.base().display()), None),
        Some(Err(why)) => ("session".to_string(), Some(why.to_string())),
        None => ("session".to_string(), None),
    };
    let shared = Arc::new(Shared {
        cfg,
        opts,
        log,
        sched,
        stop,
        gate,
        parked: Mutex::new(Vec::new()),
        status_dirty: AtomicBool::new(false),
        cgroups: cgroups.and_then(Result::ok),
    });
    let mode = match (shared.cfg.mode, shared.opts.once) {
        (_, true) => "once",
        (Mode::Poll, _) => "poll",
        (Mode::Stream, _) => "stream",
    };
    let vm_list = names.join(",");
    let mut start = vec![
        ("version", crate::version::VERSION),
        ("mode", mode),
        ("vms", &vm_list),
        ("dry_run", if shared.opts.dry_run { "yes" } else { "no" }),
        ("containment", &containment),
    ];
    if let Some(why) = &no_cgroup {
        start.push(("no_cgroup", why));
    }
    shared.log.event("START", &start);
    let mut vms = Vec::new();
    for name in &names {
        let store = VmStore::open(&shared.cfg.state_dir, name)
            .map_err(setup(&format!("state of {name}")))?;
        let vm = Arc::new(Vm {
            name: name.clone(),
            store,
            jobs: Mutex::new(HashMap::new()),
            link: Mutex::new(None),
            resync: AtomicBool::new(false),
            stats: Mutex::new(Stats::default()),
            noted: Mutex::new(HashSet::new()),
            running_jobs: AtomicU64::new(0),
            live_bytes: AtomicUsize::new(0),
        });
        recover(&shared, &vm);
        vms.push(vm);
    }
    // Load (and log) the policy now, so a broken file shows in the log at start.
    shared.gate.current(&shared.log);
    let approvals = {
        let s = Arc::clone(&shared);
        thread::Builder::new()
            .name("approvals".into())
            .spawn(move || approval_loop(&s))
            .map_err(setup("approval thread"))?
    };
    let mut threads = Vec::new();
    for (i, vm) in vms.iter().enumerate() {
        let (s, v) = (Arc::clone(&shared), Arc::clone(vm));
        let phase = poll_phase(&shared, i, vms.len());
        let t = thread::Builder::new()
            .name(format!("vm-{}", vm.name))
            .spawn(move || vm_loop(&s, &v, phase))
            .map_err(setup("VM thread"))?;
        threads.push(t);
    }
    let mut last_prune = Instant::now();
    let mut last_status = Instant::now() - STATUS_INTERVAL;
    while !stop.load(Ordering::SeqCst) && !threads.iter().all(|t| t.is_finished()) {
        let dirty = shared.status_dirty.load(Ordering::SeqCst)
            && last_status.elapsed() >= STATUS_MIN_INTERVAL;
        if dirty || last_status.elapsed() >= STATUS_INTERVAL {
            shared.status_dirty.store(false, Ordering::SeqCst);
            write_status(&shared, &vms);
            last_status = Instant::now();
        }
        if last_prune.elapsed() >= PRUNE_INTERVAL {
            prune(&shared, &vms);
            last_prune = Instant::now();
        }
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    let _ = approvals.join();
    shutdown_jobs(&shared, &vms);
    approval::clear(&shared.cfg.run_dir);
    write_status(&shared, &vms);
    shared
        .log
        .event("STOP", &[("version", crate::version::VERSION)]);
    Ok(())
}

fn make_private_dir(dir: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Work dirs left by a previous daemon belong to jobs that are now `interrupted`.
fn clear_stale_job_dirs(run_dir: &std::path::Path) {
    if let Ok(entries) = fs::read_dir(run_dir.join(exec::JOBS_DIR)) {
        for e in entries.take(super::store::MAX_LISTING).flatten() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Turns journal entries without a result into `interrupted` results (DESIGN §4).
fn recover(shared: &Shared, vm: &Vm) {
    let Ok(ids) = vm.store.journal_ids() else {
        return;
    };
    let key = match load_key(shared, vm) {
        Some(k) => k,
        None => return,
    };
    for id in ids {
        // The crash may have lost the id's unsynced replay entry; the journal entry
        // still names it, so it is sealed now, before anything else can happen.
        if let Err(e) = vm.store.seal_seen(&id) {
            shared.log.event(
                "ERROR",
                &[
                    ("vm", &vm.name),
                    ("id", id.as_str()),
                    ("replay-store", &e.to_string()),
                ],
            );
        }
        if matches!(vm.store.held(&id), Ok(Some(_))) {
            continue;
        }
        // A job that was running when the daemon died is still running: kill what is
        // left of it before reporting it interrupted, so no root process outlives its
        // daemon.
        // The job's cgroup first: it names no pid, and holds what left the session. It
        // may exist even when the daemon died before it could note the job's pid.
        let mut killed = shared.cgroups.as_ref().map_or(0, |cgroups| {
            crate::cgroup::kill_leftover(cgroups, id.as_str())
        });
        if let Some((pid, start)) = vm.store.journalled_pid(&id) {
            killed += exec::kill_leftovers(pid, start);
        }
        if killed > 0 {
            shared.log.event(
                "KILLED",
                &[
                    ("vm", &vm.name),
                    ("id", id.as_str()),
                    ("processes", &killed.to_string()),
                ],
            );
        }
        let r = JobResult::refusal(
            id.clone(),
            Status::Interrupted,
            "job interrupted: the dom0 daemon stopped while it was queued or running; it is never run again",
        );
        shared
            .log
            .event("INTERRUPTED", &[("vm", &vm.name), ("id", id.as_str())]);
        if let Err(e) = vm.store.hold(&id, &r.encode(&key)) {
            shared.log.event(
                "ERROR",
                &[
                    ("vm", &vm.name),
                    ("id", id.as_str()),
                    ("hold", &e.to_string()),
                ],
            );
        }
    }
}

fn load_key(shared: &Shared, vm: &Vm) -> Option<Key> {
    let path = shared.cfg.key_path(&vm.name);
    match Key::load(&path) {
        Ok(k) => {
            if vm.clear_note("nokey") {
                shared
                    .log
                    .event("KEY", &[("vm", &vm.name), ("state", "loaded")]);
            }
            Some(k)
        }
        Err(e) => {
            let why = match &e {
                KeyError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                    "no key: never polled (fail closed)".to_string()
                }
                other => format!("{other}: never polled (fail closed)"),
            };
            vm.note_once(shared, "nokey", "NOKEY", &[("reason", &why)]);
            None
        }
    }
}

/// How a session ended, which decides the wait before the next.
#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    /// Normal end (BYE sent, or the agent closed after IDLE).
    Normal,
    /// No key: nothing was started.
    NoKey,
    /// qvm-run gave no HELLO: the VM is not running (or has no agent).
    Down,
    /// The VM broke the protocol or the channel failed.
    Violation,
}

/// Where in the poll cycle the `i`th of `n` VMs is polled. Poll mode spreads the VMs
/// evenly over the interval instead of spawning every `qvm-run` at the same instant:
/// a burst of spawns contends for dom0's CPU (and qubesd) and delays every VM's answer,
/// while spread out each finds dom0 idle. Stream mode and `--once` start at once.
fn poll_phase(shared: &Shared, i: usize, n: usize) -> Duration {
    if shared.cfg.mode != Mode::Poll || shared.opts.once {
        return Duration::ZERO;
    }
    spread(shared.cfg.poll_interval, i, n)
}

/// The `i`th of `n` evenly spaced offsets in `interval`, always below `interval`.
fn spread(interval: Duration, i: usize, n: usize) -> Duration {
    let (Ok(i), Ok(n)) = (u32::try_from(i), u32::try_from(n)) else {
        return Duration::ZERO;
    };
    if n == 0 || i >= n {
        return Duration::ZERO;
    }
    interval / n * i
}

fn vm_loop(shared: &Arc<Shared>, vm: &Arc<Vm>, phase: Duration) {
    sleep_unless_stopped(shared, phase);
    let mut backoff = Duration::ZERO;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let started = Instant::now();
        let end = session(shared, vm);
        if shared.opts.once {
            return;
        }
        backoff = match end {
            // In stream mode a session is meant to last: one the agent ends quickly is
            // treated like a failure, so an agent that exits at once cannot make dom0
            // spawn qvm-run in a tight loop.
            SessionEnd::Normal
                if shared.cfg.mode == Mode::Stream && started.elapsed() < MIN_HEALTHY_SESSION =>
            {
                grow(backoff, MAX_BACKOFF)
            }
            SessionEnd::Normal => Duration::ZERO,
            SessionEnd::NoKey => Duration::from_secs(5),
            SessionEnd::Down => grow(backoff, MAX_DOWN_BACKOFF),
            SessionEnd::Violation => grow(backoff, MAX_BACKOFF),
        };
        let pause = match shared.cfg.mode {
            Mode::Poll => shared
                .cfg
                .poll_interval
                .saturating_sub(started.elapsed())
                .max(backoff),
            Mode::Stream => backoff.max(Duration::from_millis(200)),
        };
        sleep_unless_stopped(shared, pause);
    }
}

fn grow(prev: Duration, cap: Duration) -> Duration {
    if prev.is_zero() {
        Duration::from_millis(500)
    } else {
        (prev * 2).min(cap)
    }
}

fn sleep_unless_stopped(shared: &Shared, d: Duration) {
    let until = Instant::now() + d;
    while !shared.stop.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

enum Event {
    Frame(Frame),
    End(Option<p::FrameError>),
}

struct Session<'a> {
    shared: &'a Arc<Shared>,
    vm: &'a Arc<Vm>,
    key: Key,
    /// Refusal kinds already logged in this session, with how many were suppressed.
    refusals: HashMap<String, u64>,
    idle: bool,
}

fn spawn_agent(shared: &Shared, vm: &Vm) -> io::Result<Child> {
    let mut agent = shared.cfg.agent.clone();
    if shared.cfg.mode == Mode::Poll || shared.opts.once {
        agent.push_str(" --once");
    }
    Command::new(&shared.cfg.qvm_run)
        .args([
            "--pass-io",
            "--no-gui",
            "--no-autostart",
            "--no-filter-escape-chars",
            "--user",
            &shared.cfg.vm_user,
            &vm.name,
            &agent,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
}

fn session(shared: &Arc<Shared>, vm: &Arc<Vm>) -> SessionEnd {
    let Some(key) = load_key(shared, vm) else {
        return SessionEnd::NoKey;
    };
    lock(&vm.stats).last_poll_ms = time::unix_now_ms();
    shared.status_dirty.store(true, Ordering::SeqCst);
    let mut child = match spawn_agent(shared, vm) {
        Ok(c) => c,
        Err(e) => {
            vm.note_once(
                shared,
                "spawn",
                "ERROR",
                &[("qvm_run", &shared.cfg.qvm_run), ("error", &e.to_string())],
            );
            return SessionEnd::Down;
        }
    };
    vm.clear_note("spawn");
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        reap(&mut child);
        return SessionEnd::Violation;
    };
    let (ev_tx, ev_rx) = mpsc::sync_channel::<Event>(EVENT_QUEUE);
    let reader = thread::Builder::new()
        .name(format!("rd-{}", vm.name))
        .spawn(move || {
            let mut r = FrameReader::new(stdout);
            loop {
                match r.read() {
                    Ok(Some(f)) => {
                        if ev_tx.send(Event::Frame(f)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = ev_tx.send(Event::End(None));
                        return;
                    }
                    Err(e) => {
                        let _ = ev_tx.send(Event::End(Some(e)));
                        return;
                    }
                }
            }
        });
    let (out_tx, out_rx) = mpsc::sync_channel::<Out>(OUTBOX);
    let writer = {
        let vm = Arc::clone(vm);
        thread::Builder::new()
            .name(format!("wr-{}", vm.name))
            .spawn(move || writer_loop(stdin, out_rx, &vm))
    };
    let (Ok(reader), Ok(writer)) = (reader, writer) else {
        let _ = child.kill();
        reap(&mut child);
        return SessionEnd::Violation;
    };
    let mut s = Session {
        shared,
        vm,
        key,
        refusals: HashMap::new(),
        idle: false,
    };
    let end = s.run(&ev_rx, &out_tx);
    *lock(&vm.link) = None;
    if end == SessionEnd::Normal {
        let _ = out_tx.try_send(Out::Frame(FrameType::Bye, Vec::new()));
    }
    drop(out_tx);
    lock(&vm.stats).connected = false;
    shared.status_dirty.store(true, Ordering::SeqCst);
    s.flush_refusals();
    // Give the agent a moment to exit on its own, then make sure it is gone: a hostile
    // agent must not keep a session (or a writer blocked on its pipe) alive.
    let deadline = Instant::now() + SESSION_EXIT_GRACE;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    reap(&mut child);
    drop(ev_rx);
    let _ = writer.join();
    let _ = reader.join();
    // Chunks still queued when the writer stopped were dropped with the channel.
    vm.live_bytes.store(0, Ordering::SeqCst);
    if vm.resync.swap(false, Ordering::SeqCst) && end == SessionEnd::Normal {
        return SessionEnd::Normal;
    }
    end
}

fn reap(child: &mut Child) {
    let _ = child.wait();
}

/// Writes queued frames to the VM. Only this thread ever blocks on the VM's pipe, so
/// a VM that stops reading stalls nothing but its own session.
fn writer_loop(mut stdin: ChildStdin, rx: Receiver<Out>, vm: &Vm) {
    for out in rx {
        let res = match out {
            Out::Frame(kind, payload) => write_frame(&mut stdin, kind, &payload),
            Out::Live(kind, payload) => {
                let r = write_frame(&mut stdin, kind, &payload);
                vm.live_bytes.fetch_sub(payload.len(), Ordering::SeqCst);
                r
            }
            // Read from the held store when it is time to send, so a backlog of
            // results costs disk, not memory.
            Out::Held(id) => match vm.store.held(&id) {
                Ok(Some(bytes)) => write_frame(&mut stdin, FrameType::Result, &bytes),
                _ => Ok(()),
            },
        };
        if res.is_err() {
            return;
        }
    }
    let _ = stdin.flush();
}

impl Session<'_> {
    fn run(&mut self, ev: &Receiver<Event>, out: &SyncSender<Out>) -> SessionEnd {
        let (shared, vm) = (self.shared, self.vm);
        // HELLO first: a VM that is not running gives nothing and qvm-run exits.
        match ev.recv_timeout(HELLO_TIMEOUT) {
            Ok(Event::Frame(f)) if f.kind == FrameType::Hello => {
                let ok = f.payload.split(|&b| b == b' ').next() == Some(b"2");
                if !ok {
                    self.violation("HELLO with an unsupported protocol");
                    return SessionEnd::Violation;
                }
            }
            Ok(Event::Frame(f)) => {
                self.violation(&format!("{} before HELLO", f.kind.name()));
                return SessionEnd::Violation;
            }
            Ok(Event::End(None)) | Err(_) => {
                vm.note_once(
                    shared,
                    "down",
                    "DOWN",
                    &[("reason", "no session (VM not running?)")],
                );
                return SessionEnd::Down;
            }
            Ok(Event::End(Some(e))) => {
                self.violation(&e.to_string());
                return SessionEnd::Violation;
            }
        }
        if vm.clear_note("down") {
            shared.log.event("UP", &[("vm", &vm.name)]);
        }
        {
            let mut st = lock(&vm.stats);
            st.connected = true;
            shared.status_dirty.store(true, Ordering::SeqCst);
            st.last_session_ms = time::unix_now_ms();
            st.sessions += 1;
        }
        *lock(&vm.link) = Some(out.clone());
        if let Ok(ids) = vm.store.held_ids() {
            for id in ids {
                if !vm.send(Out::Held(id)) {
                    break;
                }
            }
        }
        let poll = shared.cfg.mode == Mode::Poll || shared.opts.once;
        let deadline = Instant::now() + shared.cfg.poll_interval;
        loop {
            if shared.stop.load(Ordering::SeqCst) {
                return SessionEnd::Normal;
            }
            if vm.resync.load(Ordering::SeqCst) {
                return SessionEnd::Normal;
            }
            if poll && self.idle {
                // Poll mode: end once this VM's jobs are answered and every result sent
                // is ACKed (ending before the ACK would lose it, and the result would
                // be sent again at every poll), or at the end of the poll interval so a
                // long job does not hold back the next poll (its result goes out with
                // a later session). --once waits for them all.
                let busy = !lock(&vm.jobs).is_empty()
                    || vm.store.held_ids().map_or(true, |ids| !ids.is_empty());
                if !busy || (!shared.opts.once && Instant::now() >= deadline) {
                    return SessionEnd::Normal;
                }
            }
            match ev.recv_timeout(TICK) {
                Ok(Event::Frame(f)) => {
                    if let Err(why) = self.frame(f) {
                        self.violation(&why);
                        return SessionEnd::Violation;
                    }
                }
                Ok(Event::End(None)) => return SessionEnd::Normal,
                Ok(Event::End(Some(e))) => {
                    self.violation(&e.to_string());
                    return SessionEnd::Violation;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return SessionEnd::Normal,
            }
        }
    }

    fn violation(&self, why: &str) {
        self.shared
            .log
            .event("PROTO", &[("vm", &self.vm.name), ("error", why)]);
    }

    fn frame(&mut self, f: Frame) -> Result<(), String> {
        match f.kind {
            FrameType::Job => {
                self.idle = false;
                self.job(&f.payload)
            }
            FrameType::Idle => {
                self.idle = true;
                Ok(())
            }
            FrameType::Ack => {
                let id = CommandId::from_bytes(&f.payload).map_err(|_| "ACK with a bad id")?;
                // ACKs for ids dom0 does not hold are ignored: they change nothing.
                let _ = self.vm.store.ack(&id);
                Ok(())
            }
            FrameType::Cancel => {
                self.cancel(&f.payload);
                Ok(())
            }
            other => Err(format!("{} frame from the VM", other.name())),
        }
    }

    fn cancel(&mut self, payload: &[u8]) {
        let Some((id, token)) = p::parse_cancel_payload(payload) else {
            self.refused("CANCEL", "malformed cancel", None);
            return;
        };
        if !p::verify_cancel(&self.key, &id, token) {
            self.refused("AUTH-FAIL", "cancel token does not verify", Some(&id));
            return;
        }
        // Only this VM's own jobs are looked up, so a VM cannot cancel another's.
        if let Some(ctl) = lock(&self.vm.jobs).get(&id) {
            ctl.cancel.store(true, Ordering::SeqCst);
            self.shared
                .log
                .event("CANCEL", &[("vm", &self.vm.name), ("id", id.as_str())]);
        }
    }

    /// Logs a refusal kind once per session; repeats are counted and summarised when
    /// the session ends, so a hostile VM cannot flood the log.
    fn refused(&mut self, category: &str, reason: &str, id: Option<&CommandId>) {
        let key = format!("{category} {reason}");
        let n = self.refusals.entry(key).or_insert(0);
        *n += 1;
        if *n == 1 {
            let mut fields = vec![("vm", self.vm.name.as_str())];
            if let Some(id) = id {
                fields.push(("id", id.as_str()));
            }
            fields.push(("reason", reason));
            self.shared.log.event(category, &fields);
        }
        lock(&self.vm.stats).refused += 1;
    }

    fn flush_refusals(&mut self) {
        for (key, n) in self.refusals.drain() {
            if n > 1 {
                let (category, reason) = key.split_once(' ').unwrap_or((&key, ""));
                let more = (n - 1).to_string();
                self.shared.log.event(
                    category,
                    &[
                        ("vm", &self.vm.name),
                        ("reason", reason),
                        ("repeated", &more),
                    ],
                );
            }
        }
    }

    /// Sends a refusal that is not kept durably: for jobs that never authenticated or
    /// that replay an id already answered.
    fn answer_unheld(&self, id: CommandId, status: Status, reason: &str) {
        let r = JobResult::refusal(id, status, reason);
        self.vm
            .send(Out::Frame(FrameType::Result, r.encode(&self.key)));
    }

    /// Handles one `JOB` frame. A job whose header cannot be parsed is answered (when
    /// it names an id) and then ends the session as a protocol violation (DESIGN §4): an
    /// honest agent never sends one, since it parses each header before sending.
    fn job(&mut self, payload: &[u8]) -> Result<(), String> {
        let (shared, vm) = (self.shared, self.vm);
        let limits = JobLimits {
            max_command: shared.cfg.max_command,
            replay_window: shared.cfg.replay_window,
            now: time::unix_now(),
        };
        let job = match job::verify(payload, &self.key, &limits) {
            Ok(j) => j,
            Err(refusal) => {
                let category = match refusal.error {
                    JobError::BadMac => "AUTH-FAIL",
                    JobError::Stale { .. } => "REPLAY",
                    _ => "REJECT",
                };
                let reason = refusal.error.to_string();
                self.refused(category, &reason, refusal.id.as_ref());
                if let Some(id) = refusal.id {
                    let known = lock(&vm.jobs).contains_key(&id)
                        || matches!(vm.store.held(&id), Ok(Some(_)));
                    if !known {
                        self.answer_unheld(id, Status::Rejected, &reason);
                    }
                }
                if matches!(refusal.error, JobError::Malformed(_)) {
                    return Err(format!("JOB frame: {reason}"));
                }
                return Ok(());
            }
        };
        self.accept(job);
        Ok(())
    }

    /// Takes a verified job: a duplicate of one running or answered, or a new one for
    /// the journal, the policy and the worker pool.
    fn accept(&mut self, job: Job) {
        let (shared, vm) = (self.shared, self.vm);
        let id = job.id.clone();
        if lock(&vm.jobs).contains_key(&id) {
            // Still running: its result goes out when it ends (DESIGN §4).
            return;
        }
        if matches!(vm.store.held(&id), Ok(Some(_))) {
            vm.send(Out::Held(id));
            return;
        }
        if vm.store.held_ids().map_or(0, |v| v.len()) >= MAX_HELD_PER_VM {
            self.refused("REJECT", "too many unacknowledged results", Some(&id));
            self.answer_unheld(
                id,
                Status::Failed,
                "dom0 holds too many unacknowledged results for this VM",
            );
            return;
        }
        match vm.store.journal_start(&id) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                self.answer_unheld(id, Status::Failed, &format!("dom0 journal: {e}"));
                return;
            }
        }
        match vm.store.mark_seen(&id) {
            Ok(true) => {}
            Ok(false) => {
                let _ = vm.store.unjournal(&id);
                self.refused("REPLAY", "job id already used", Some(&id));
                self.answer_unheld(
                    id,
                    Status::Rejected,
                    "replayed job: this id was already used",
                );
                return;
            }
            Err(e) => {
                let _ = vm.store.unjournal(&id);
                self.answer_unheld(id, Status::Failed, &format!("dom0 replay store: {e}"));
                return;
            }
        }
        let cmd = p::escape_line(&job.body, MAX_LOGGED_COMMAND);
        shared.log.event(
            "AUTH-OK",
            &[
                ("vm", &vm.name),
                ("id", id.as_str()),
                ("bytes", &job.body.len().to_string()),
            ],
        );
        let verdict = shared
            .gate
            .decide(&vm.name, &job.body, time::unix_now(), &shared.log);
        log_verdict(shared, vm, &id, &verdict, &cmd);
        if verdict.action == Action::Deny {
            let r = denied(id, &format!("denied by policy: {}", verdict.rule));
            vm.finish(shared, &self.key, r);
            return;
        }
        if shared.opts.dry_run {
            shared.log.event(
                "DRY",
                &[("vm", &vm.name), ("id", id.as_str()), ("cmd", &cmd)],
            );
            let r = JobResult::refusal(
                id,
                Status::Rejected,
                "dry-run: job verified but not executed",
            );
            vm.finish(shared, &self.key, r);
            return;
        }
        let argv = verdict.classified.argv();
        if verdict.action == Action::Ask {
            self.park(job, argv, &verdict.rule);
        } else {
            let ctl = new_ctl();
            lock(&vm.jobs).insert(id, Arc::clone(&ctl));
            submit(shared, vm, self.key.clone(), job, argv, ctl, Instant::now());
        }
    }

    /// Parks an `ask` job: it is recorded for `pending`, holds no worker slot, and its
    /// timeout runs from now.
    fn park(&mut self, job: Job, argv: Option<Vec<String>>, rule: &str) {
        let (shared, vm) = (self.shared, self.vm);
        let id = job.id.clone();
        let waiting = lock(&shared.parked)
            .iter()
            .filter(|p| p.vm.name == vm.name)
            .count();
        if waiting >= MAX_PARKED_PER_VM {
            let reason =
                format!("denied: {MAX_PARKED_PER_VM} jobs of this VM already wait for approval");
            shared.log.event(
                "APPROVAL",
                &[
                    ("vm", &vm.name),
                    ("id", id.as_str()),
                    ("decision", "refused"),
                    ("reason", &reason),
                ],
            );
            vm.finish(shared, &self.key, denied(id, &reason));
            return;
        }
        let timeout = job_timeout(shared.cfg.timeout, job.timeout);
        let now = time::unix_now();
        let rec = approval::Record::new(
            &vm.name,
            &id,
            (now, now.saturating_add(timeout.as_secs())),
            rule,
            &job.body,
            &job.stdin,
        );
        if let Err(e) = approval::write_pending(&shared.cfg.run_dir, &rec) {
            let reason = format!("dom0 could not park the job for approval: {e}");
            shared.log.event(
                "ERROR",
                &[("vm", &vm.name), ("id", id.as_str()), ("error", &reason)],
            );
            vm.finish(
                shared,
                &self.key,
                JobResult::refusal(id, Status::Failed, &reason),
            );
            return;
        }
        let ctl = new_ctl();
        lock(&vm.jobs).insert(id, Arc::clone(&ctl));
        lock(&shared.parked).push(Parked {
            vm: Arc::clone(vm),
            key: self.key.clone(),
            job,
            argv,
            ctl,
            accepted: Instant::now(),
            timeout,
        });
    }
}

fn new_ctl() -> Arc<JobCtl> {
    Arc::new(JobCtl {
        cancel: AtomicBool::new(false),
        shutdown: AtomicBool::new(false),
    })
}

/// A `denied` result: exit 126 (DESIGN §5), the reason says who refused and why.
fn denied(id: CommandId, reason: &str) -> JobResult {
    let mut r = JobResult::refusal(id, Status::Denied, reason);
    r.exit = EXIT_DENIED;
    r
}

/// A job's timeout: its own, capped by `QVM_REMOTE_TIMEOUT`; 0 means the cap.
fn job_timeout(cap: u64, asked: u64) -> Duration {
    Duration::from_secs(if asked == 0 { cap } else { asked.min(cap) })
}

/// One audit line per policy decision: the rule that decided, how the body would run
/// and the command text (escaped, up to `MAX_LOGGED_COMMAND`).
fn log_verdict(shared: &Shared, vm: &Vm, id: &CommandId, v: &Verdict, cmd: &str) {
    let category = match v.action {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Ask => "ASK",
    };
    let run = match &v.classified {
        Classified::Simple { program, .. } => format!("argv {}", program.display()),
        Classified::Script(why) => format!("script ({why})"),
    };
    shared.log.event(
        category,
        &[
            ("vm", &vm.name),
            ("id", id.as_str()),
            ("rule", &v.rule),
            ("run", &run),
            ("cmd", cmd),
        ],
    );
}

/// Queues an accepted job (already in `vm.jobs` under `ctl`) for the worker pool.
fn submit(
    shared: &Arc<Shared>,
    vm: &Arc<Vm>,
    key: Key,
    job: Job,
    argv: Option<Vec<String>>,
    ctl: Arc<JobCtl>,
    accepted: Instant,
) {
    let id = job.id.clone();
    let (task_shared, task_vm, task_key) = (Arc::clone(shared), Arc::clone(vm), key.clone());
    let r = shared.sched.submit(
        &vm.name,
        Box::new(move || {
            let result = execute(
                &task_shared,
                &task_vm,
                &job,
                argv.as_deref(),
                &ctl,
                accepted,
            );
            task_vm.finish(&task_shared, &task_key, result);
        }),
    );
    match r {
        Ok(()) => {}
        Err(QueueError::Full) => {
            shared.log.event(
                "REJECT",
                &[
                    ("vm", &vm.name),
                    ("id", id.as_str()),
                    ("reason", "too many queued jobs"),
                ],
            );
            let r = JobResult::refusal(
                id,
                Status::Failed,
                "dom0 busy: too many jobs queued for this VM",
            );
            vm.finish(shared, &key, r);
        }
        // Shutting down: the job stays journalled and is reported interrupted.
        Err(QueueError::Closed) => {
            lock(&vm.jobs).remove(&id);
        }
    }
}

/// The approval thread: every `approval::POLL` it settles parked jobs that were
/// decided, timed out or cancelled, and logs dev-mode overlays that changed.
fn approval_loop(shared: &Arc<Shared>) {
    let mut overlays: HashMap<String, devmode::State> = HashMap::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let due: Vec<(Parked, Outcome)> = {
            let mut parked = lock(&shared.parked);
            let mut due = Vec::new();
            let mut keep = Vec::with_capacity(parked.len());
            for p in parked.drain(..) {
                match outcome(shared, &p) {
                    Some(o) => due.push((p, o)),
                    None => keep.push(p),
                }
            }
            *parked = keep;
            due
        };
        for (p, o) in due {
            settle(shared, p, o);
        }
        watch_devmode(shared, &mut overlays);
        sleep_unless_stopped(shared, approval::POLL);
    }
    // A change made just before the stop is still logged.
    watch_devmode(shared, &mut overlays);
}

fn outcome(shared: &Shared, p: &Parked) -> Option<Outcome> {
    if p.ctl.cancel.load(Ordering::SeqCst) {
        return Some(Outcome::Cancelled);
    }
    match approval::take_decision(&shared.cfg.run_dir, &p.job.id) {
        Some(Approval::Approve) => return Some(Outcome::Approved),
        Some(Approval::Deny) => return Some(Outcome::Denied),
        None => {}
    }
    (p.accepted.elapsed() >= p.timeout).then_some(Outcome::TimedOut)
}

fn settle(shared: &Arc<Shared>, p: Parked, o: Outcome) {
    let Parked {
        vm,
        key,
        job,
        argv,
        ctl,
        accepted,
        timeout,
    } = p;
    let id = job.id.clone();
    approval::remove(&shared.cfg.run_dir, &vm.name, &id);
    let word = match o {
        Outcome::Approved => "approve",
        Outcome::Denied => "deny",
        Outcome::TimedOut => "timeout",
        Outcome::Cancelled => "cancelled",
    };
    let waited = accepted.elapsed().as_millis().to_string();
    shared.log.event(
        "APPROVAL",
        &[
            ("vm", &vm.name),
            ("id", id.as_str()),
            ("decision", word),
            ("waited_ms", &waited),
        ],
    );
    let result = match o {
        Outcome::Approved => {
            submit(shared, &vm, key, job, argv, ctl, accepted);
            return;
        }
        Outcome::Denied => denied(id, "denied by the dom0 administrator (approval refused)"),
        Outcome::TimedOut => denied(
            id,
            &format!("approval timed out after {} s: not run", timeout.as_secs()),
        ),
        Outcome::Cancelled if ctl.shutdown.load(Ordering::SeqCst) => JobResult::refusal(
            id,
            Status::Interrupted,
            "job interrupted: the dom0 daemon stopped while it waited for approval",
        ),
        Outcome::Cancelled => JobResult::refusal(
            id,
            Status::Cancelled,
            "cancelled while waiting for approval",
        ),
    };
    vm.finish(shared, &key, result);
}

/// Logs each dev-mode overlay that appeared, changed, expired or went away. The daemon
/// is the only writer of the audit log, so changes made by `dev-mode on|off` are logged
/// here, within one poll.
fn watch_devmode(shared: &Shared, seen: &mut HashMap<String, devmode::State>) {
    let now = time::unix_now();
    let current: HashMap<String, devmode::State> = devmode::list(&shared.cfg.run_dir, now)
        .into_iter()
        .collect();
    for (vm, st) in &current {
        if seen.get(vm) == Some(st) {
            continue;
        }
        let (state, detail) = match st {
            devmode::State::Active(until) => {
                ("on", format!("full until {}", time::iso8601(*until)))
            }
            devmode::State::Expired(at) => ("expired", format!("at {}", time::iso8601(*at))),
            devmode::State::Invalid(why) => ("invalid", why.clone()),
        };
        shared.log.event(
            "DEVMODE",
            &[("vm", vm), ("state", state), ("detail", &detail)],
        );
    }
    for vm in seen.keys() {
        if !current.contains_key(vm) {
            shared.log.event("DEVMODE", &[("vm", vm), ("state", "off")]);
        }
    }
    *seen = current;
}

/// Runs one accepted job in the sandbox and turns the outcome into its result.
fn execute(
    shared: &Shared,
    vm: &Vm,
    job: &Job,
    argv: Option<&[String]>,
    ctl: &JobCtl,
    accepted: Instant,
) -> JobResult {
    let id = &job.id;
    let timeout = job_timeout(shared.cfg.timeout, job.timeout);
    // The timeout runs from acceptance, so time spent queued counts against it.
    let left = timeout.saturating_sub(accepted.elapsed());
    if ctl.cancel.load(Ordering::SeqCst) {
        let status = if ctl.shutdown.load(Ordering::SeqCst) {
            Status::Interrupted
        } else {
            Status::Cancelled
        };
        return JobResult::refusal(id.clone(), status, "cancelled before it started");
    }
    if left.is_zero() {
        return JobResult::refusal(id.clone(), Status::Timeout, "timed out while queued");
    }
    let cmd = p::escape_line(&job.body, MAX_LOGGED_COMMAND);
    shared.log.event(
        "EXEC",
        &[
            ("vm", &vm.name),
            ("id", id.as_str()),
            ("timeout", &timeout.as_secs().to_string()),
            ("stdin", &job.stdin.len().to_string()),
            ("cmd", &cmd),
        ],
    );
    let spec = ExecSpec {
        shell: &shared.cfg.shell,
        run_dir: &shared.cfg.run_dir,
        vm: &vm.name,
        id: id.as_str(),
        body: &job.body,
        stdin: &job.stdin,
        timeout: left,
        max_output: shared.cfg.max_output,
        kill_grace: exec::KILL_GRACE,
        argv,
        cgroups: shared.cgroups.as_ref(),
    };
    // Live output (stream mode). Once one chunk of this job cannot be queued, the job
    // streams nothing more: what the client saw is then a prefix of each output, and
    // it takes the rest from the result, which always holds every byte.
    let live = AtomicBool::new(shared.cfg.mode == Mode::Stream && !shared.opts.once);
    let on_chunk = |stream: Stream, bytes: &[u8]| {
        if !live.load(Ordering::Relaxed) {
            return;
        }
        let kind = match stream {
            Stream::Stdout => FrameType::Out,
            Stream::Stderr => FrameType::Err,
        };
        for part in bytes.chunks(MAX_CHUNK) {
            let mut payload = Vec::with_capacity(id.as_str().len() + 1 + part.len());
            payload.extend_from_slice(id.as_str().as_bytes());
            payload.push(b'\n');
            payload.extend_from_slice(part);
            if !vm.send_live(kind, payload) {
                live.store(false, Ordering::Relaxed);
                return;
            }
        }
    };
    vm.running_jobs.fetch_add(1, Ordering::SeqCst);
    // The pid and start time go into the journal, so that a daemon restarted after a
    // crash can kill what this job left running.
    let journal_pid = |pid: u32| {
        if let Some(start) = exec::process_start_time(pid) {
            let _ = vm.store.journal_pid(id, pid, start);
        }
    };
    let outcome = exec::run_observed(&spec, &ctl.cancel, &on_chunk, &journal_pid);
    vm.running_jobs.fetch_sub(1, Ordering::SeqCst);
    let out = match outcome {
        Ok(o) => o,
        Err(exec::ExecError::CancelledBeforeStart) => {
            let status = if ctl.shutdown.load(Ordering::SeqCst) {
                Status::Interrupted
            } else {
                Status::Cancelled
            };
            return JobResult::refusal(id.clone(), status, "cancelled before it started");
        }
        Err(e) => {
            let reason = format!("dom0 could not run the job: {e}");
            shared.log.event(
                "DONE-FAIL",
                &[("vm", &vm.name), ("id", id.as_str()), ("error", &reason)],
            );
            return JobResult::refusal(id.clone(), Status::Failed, &reason);
        }
    };
    let (exit, signal) = match out.termination {
        Termination::Exited(c) => (u8::try_from(c).unwrap_or(255), 0),
        Termination::Signaled(s) => (0, u8::try_from(s).unwrap_or(255)),
    };
    let (status, reason) = match out.ending {
        Ending::Finished => (Status::Done, String::new()),
        Ending::TimedOut => (
            Status::Timeout,
            format!("timed out after {} s", timeout.as_secs()),
        ),
        Ending::Cancelled if ctl.shutdown.load(Ordering::SeqCst) => (
            Status::Interrupted,
            "job interrupted: the dom0 daemon stopped while it ran".to_string(),
        ),
        Ending::Cancelled => (Status::Cancelled, "cancelled by the client".to_string()),
    };
    let truncated = Truncated::from_flags(out.stdout_truncated, out.stderr_truncated);
    let result = JobResult {
        id: id.clone(),
        status,
        exit,
        signal,
        started_ms: out.started_unix_ms,
        duration_ms: u64::try_from(out.duration.as_millis()).unwrap_or(u64::MAX),
        stdout: out.stdout,
        stderr: out.stderr,
        truncated,
        reason,
    };
    let category = match (status, exit, signal) {
        (Status::Done, 0, 0) => "DONE",
        (Status::Done, _, _) => "DONE-FAIL",
        (Status::Timeout, _, _) => "TIMEOUT",
        (Status::Cancelled, _, _) => "CANCELLED",
        _ => "INTERRUPTED",
    };
    shared.log.event(
        category,
        &[
            ("vm", &vm.name),
            ("id", id.as_str()),
            ("exit", &exit.to_string()),
            ("signal", &signal.to_string()),
            ("duration_ms", &result.duration_ms.to_string()),
            ("stdout_bytes", &result.stdout.len().to_string()),
            ("stderr_bytes", &result.stderr.len().to_string()),
        ],
    );
    if truncated != Truncated::None {
        shared.log.event(
            "TRUNC",
            &[
                ("vm", &vm.name),
                ("id", id.as_str()),
                ("truncated", truncated.as_str()),
                ("cap", &shared.cfg.max_output.to_string()),
            ],
        );
    }
    result
}

/// SIGTERM: no new jobs; running ones get `SHUTDOWN_GRACE`, then their groups are
/// killed and they are reported `interrupted`.
fn shutdown_jobs(shared: &Shared, vms: &[Arc<Vm>]) {
    shared.sched.close();
    if shared.sched.wait_idle(SHUTDOWN_GRACE) {
        return;
    }
    for vm in vms {
        for ctl in lock(&vm.jobs).values() {
            ctl.shutdown.store(true, Ordering::SeqCst);
            ctl.cancel.store(true, Ordering::SeqCst);
        }
    }
    // The kill grace of exec plus a margin: after it, every job thread has returned.
    shared
        .sched
        .wait_idle(exec::KILL_GRACE + Duration::from_secs(2));
}

fn prune(shared: &Shared, vms: &[Arc<Vm>]) {
    let age = Duration::from_secs(shared.cfg.replay_window.saturating_mul(2) + 60);
    for vm in vms {
        vm.store.prune_seen(age);
    }
}

/// Writes `<run_dir>/status`, read by `qvm-remote-dom0 status`: one `key=value` line
/// for the daemon, then one per VM.
fn write_status(shared: &Shared, vms: &[Arc<Vm>]) {
    let mut text = format!(
        "daemon pid={} updated_ms={} mode={} stopping={}\n",
        crate::sys::getpid(),
        time::unix_now_ms(),
        match shared.cfg.mode {
            Mode::Stream => "stream",
            Mode::Poll => "poll",
        },
        shared.stop.load(Ordering::SeqCst)
    );
    for vm in vms {
        let st = lock(&vm.stats);
        let held = vm.store.held_ids().map_or(0, |v| v.len());
        text.push_str(&format!(
            "vm name={} connected={} last_poll_ms={} last_session_ms={} sessions={} done={} refused={} queued={} running={} unacked={} key={}\n",
            vm.name,
            st.connected,
            st.last_poll_ms,
            st.last_session_ms,
            st.sessions,
            st.done,
            st.refused,
            shared.sched.queued(&vm.name),
            vm.running_jobs.load(Ordering::SeqCst),
            held,
            !lock(&vm.noted).contains("nokey"),
        ));
    }
    // The status file is a convenience for `status`; failing to write it must not
    // disturb the daemon, and the run dir was already checked at start.
    let _ = atomic::replace(
        &status_path(&shared.cfg.run_dir),
        text.as_bytes(),
        Durability::Buffered,
    );
}

/// Most bytes `status` reads of the status file: a daemon line and one line (well under
/// 1 KiB) per VM, for up to `config::MAX_VMS` VMs.
pub const MAX_STATUS_FILE: u64 = 1024 * (1 + crate::config::MAX_VMS as u64);

/// The status file's path for `run_dir`.
pub fn status_path(run_dir: &std::path::Path) -> PathBuf {
    run_dir.join("status")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_phases_spread_the_vms_over_the_interval() {
        let second = Duration::from_secs(1);
        let phases: Vec<_> = (0..4).map(|i| spread(second, i, 4)).collect();
        assert_eq!(
            phases,
            [0, 250, 500, 750].map(Duration::from_millis).to_vec()
        );
        assert_eq!(spread(second, 0, 1), Duration::ZERO);
        // Out-of-range input gives no delay rather than one past the interval.
        assert_eq!(spread(second, 5, 4), Duration::ZERO);
        assert_eq!(spread(second, 0, 0), Duration::ZERO);
        assert!((0..50).all(|i| spread(second, i, 50) < second));
    }
}
