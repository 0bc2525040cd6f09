//! Integration tests of the job sandbox (shared/DESIGN.md §5) through `exec::run`.
//!
//! Every test runs real processes in a temporary run dir of its own. None needs root,
//! except the one test that says so and skips otherwise.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qvm_remote::cgroup::{self, JobCgroup, JobCgroups};
use qvm_remote::exec::{
    self, Ending, ExecError, ExecOutcome, ExecSpec, Stream, Termination, DEFAULT_MAX_OUTPUT,
    DEFAULT_PATH, OUTPUT_DRAIN_LIMIT,
};
use qvm_remote::sys;

const SHELL: &str = "/bin/bash";
const VM: &str = "work";
const MIB: usize = 1024 * 1024;

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn next() -> u64 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A directory under the system temp dir, removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "qvm-remote-exec-{tag}-{}-{}",
            std::process::id(),
            next()
        ));
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        TempDir { path }
    }

    /// A directory any user may write, for side-effect files that must outlive the job's
    /// own work dir (which is removed after the job).
    fn shared(tag: &str) -> TempDir {
        let dir = TempDir::new(tag);
        fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o777)).unwrap();
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A fresh, valid command id.
fn new_id() -> String {
    format!("20261204-153000-{}-{:016x}", std::process::id(), next())
}

/// A job to run, with test-friendly defaults.
struct Job {
    body: Vec<u8>,
    stdin: Vec<u8>,
    timeout: Duration,
    max_output: usize,
    kill_grace: Duration,
    argv: Option<Vec<String>>,
    shell: PathBuf,
    cgroups: Option<JobCgroups>,
}

fn script(body: &str) -> Job {
    Job {
        body: body.as_bytes().to_vec(),
        stdin: Vec::new(),
        timeout: Duration::from_secs(8),
        max_output: DEFAULT_MAX_OUTPUT,
        kill_grace: Duration::from_secs(1),
        argv: None,
        shell: PathBuf::from(SHELL),
        cgroups: None,
    }
}

fn argv(words: &[&str]) -> Job {
    let mut job = script("");
    job.argv = Some(words.iter().map(|w| w.to_string()).collect());
    job
}

/// One finished run: the outcome, how long `run` took, and the run dir and id it used.
struct Ran {
    outcome: ExecOutcome,
    elapsed: Duration,
    run_dir: TempDir,
    id: String,
}

impl Job {
    fn spec<'a>(&'a self, run_dir: &'a Path, id: &'a str) -> ExecSpec<'a> {
        ExecSpec {
            shell: &self.shell,
            run_dir,
            vm: VM,
            id,
            body: &self.body,
            stdin: &self.stdin,
            timeout: self.timeout,
            max_output: self.max_output,
            kill_grace: self.kill_grace,
            argv: self.argv.as_deref(),
            cgroups: self.cgroups.as_ref(),
        }
    }

    fn try_run_in(
        &self,
        run_dir: &Path,
        id: &str,
        cancel: &AtomicBool,
        on_chunk: &(dyn Fn(Stream, &[u8]) + Sync),
    ) -> Result<ExecOutcome, ExecError> {
        exec::run(&self.spec(run_dir, id), cancel, on_chunk)
    }

    fn run_with(&self, cancel: &AtomicBool, on_chunk: &(dyn Fn(Stream, &[u8]) + Sync)) -> Ran {
        let run_dir = TempDir::new("run");
        let id = new_id();
        let start = Instant::now();
        let outcome = self
            .try_run_in(&run_dir.path, &id, cancel, on_chunk)
            .unwrap();
        Ran {
            outcome,
            elapsed: start.elapsed(),
            run_dir,
            id,
        }
    }

    fn run(&self) -> Ran {
        self.run_with(&AtomicBool::new(false), &|_, _| {})
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Numbers printed one per line by the job, e.g. `echo $$ $!`.
fn pids_in(bytes: &[u8]) -> Vec<i32> {
    text(bytes)
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect()
}

/// (state, pgrp, session) of a process, from /proc, parsed independently of the library.
fn proc_stat(pid: i32) -> Option<(char, i32, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    Some((
        state,
        fields.get(2)?.parse().ok()?,
        fields.get(3)?.parse().ok()?,
    ))
}

fn is_live(state: char) -> bool {
    state != 'Z' && state != 'X'
}

/// Live processes whose session id is `sid`.
fn live_session_members(sid: i32) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| matches!(proc_stat(pid), Some((s, _, sess)) if sess == sid && is_live(s)))
        .collect()
}

/// Whether `pid` no longer runs as a member of session `sid` (gone, a zombie, or the
/// number reused by an unrelated process).
fn gone_from_session(pid: i32, sid: i32) -> bool {
    match proc_stat(pid) {
        None => true,
        Some((state, _, session)) => session != sid || !is_live(state),
    }
}

/// A SIGKILLed process may need a moment to finish dying; polls `check` for up to 2 s.
fn eventually(check: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn exit_statuses_and_signals() {
    let cases: &[(&str, Termination)] = &[
        ("exit 0", Termination::Exited(0)),
        ("exit 3", Termination::Exited(3)),
        ("true; false", Termination::Exited(1)),
        ("nonexistent-cmd-xyz", Termination::Exited(127)),
        ("kill -9 $$", Termination::Signaled(9)),
        ("kill -TERM $$", Termination::Signaled(15)),
    ];
    for (body, expected) in cases {
        let ran = script(body).run();
        assert_eq!(ran.outcome.termination, *expected, "{body}");
        assert_eq!(ran.outcome.ending, Ending::Finished, "{body}");
    }
}

#[test]
fn stdout_and_stderr_are_separate() {
    let ran = script("echo out; echo err >&2; printf more; printf less >&2").run();
    assert_eq!(text(&ran.outcome.stdout), "out\nmore");
    assert_eq!(text(&ran.outcome.stderr), "err\nless");
    assert!(!ran.outcome.stdout_truncated && !ran.outcome.stderr_truncated);
    assert_eq!(ran.outcome.termination, Termination::Exited(0));
}

fn environment_of(output: &[u8]) -> BTreeSet<String> {
    text(output).lines().map(str::to_string).collect()
}

#[test]
fn environment_is_exactly_the_six_variables() {
    let run_dir = TempDir::new("env");
    let id = new_id();
    let outcome = argv(&["env"])
        .try_run_in(&run_dir.path, &id, &AtomicBool::new(false), &|_, _| {})
        .unwrap();
    let expected: BTreeSet<String> = [
        format!("PATH={DEFAULT_PATH}"),
        "HOME=/root".to_string(),
        "LANG=C.UTF-8".to_string(),
        "TERM=dumb".to_string(),
        format!("QVM_REMOTE_VM={VM}"),
        format!("QVM_REMOTE_ID={id}"),
    ]
    .into_iter()
    .collect();
    // The shell execs the program: it sees what the daemon set, plus only the two
    // variables bash exports to every command it starts (PWD, SHLVL).
    let seen = environment_of(&outcome.stdout);
    let added: BTreeSet<&str> = seen
        .difference(&expected)
        .map(|line| line.split('=').next().unwrap())
        .collect();
    assert!(seen.is_superset(&expected), "{seen:?}");
    assert_eq!(added, BTreeSet::from(["PWD", "SHLVL"]), "{seen:?}");

    // Through bash, the only additions are the ones bash itself makes for its children.
    let ran = script("env").run();
    let names: BTreeSet<String> = environment_of(&ran.outcome.stdout)
        .iter()
        .map(|line| line.split('=').next().unwrap().to_string())
        .collect();
    let expected_names: BTreeSet<String> = [
        "PATH",
        "HOME",
        "LANG",
        "TERM",
        "QVM_REMOTE_VM",
        "QVM_REMOTE_ID",
        "PWD",
        "SHLVL",
        "_",
    ]
    .iter()
    .map(|n| n.to_string())
    .collect();
    assert_eq!(names, expected_names);
}

#[test]
fn job_runs_in_a_fresh_private_cwd_with_umask_077_and_no_core_dumps() {
    let body = "pwd; stat -c %a . .. ../script ../..; umask; ulimit -c; ulimit -Hc; ls -A | wc -l";
    let ran = script(body).run();
    let job_dir = ran.run_dir.path.join("jobs").join(&ran.id);
    let expected = format!(
        "{}\n700\n700\n600\n700\n0077\n0\n0\n0\n",
        job_dir.join("cwd").display()
    );
    assert_eq!(text(&ran.outcome.stdout), expected);
    assert_eq!(text(&ran.outcome.stderr), "");
}

#[test]
fn job_leads_its_own_session_and_process_group() {
    let ran = argv(&["cat", "/proc/self/stat"]).run();
    let stat = text(&ran.outcome.stdout);
    let pid: i32 = stat.split_whitespace().next().unwrap().parse().unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    assert_eq!(fields[2], pid.to_string(), "process group");
    assert_eq!(fields[3], pid.to_string(), "session");
    // No controlling terminal (tty_nr is 0).
    assert_eq!(fields[4], "0");
}

const INNER_ENV: &str = "QVM_REMOTE_EXEC_TEST_INNER";

/// Signals 32 and 33 (bits 31 and 32 of a /proc mask): glibc keeps them for itself,
/// refuses to change them, and glibc's posix_spawn leaves them ignored in every child it
/// starts, so the test process may well have inherited them ignored. No program can use
/// them through glibc, so they are left out of the comparison.
const GLIBC_INTERNAL_SIGNALS: u64 = 0b11 << 31;

fn signal_masks(status: &str) -> Vec<(String, u64)> {
    status
        .lines()
        .filter(|l| l.starts_with("SigBlk:") || l.starts_with("SigIgn:"))
        .map(|l| {
            let (name, value) = l.split_once(':').unwrap();
            (
                name.to_string(),
                u64::from_str_radix(value.trim(), 16).unwrap(),
            )
        })
        .collect()
}

/// A descriptor the inner test process inherits without close-on-exec, as a daemon might
/// from whatever started it.
const STRAY_FD: &str = "7";

/// Checks what a job inherits from the process that runs it: no ignored or blocked
/// signal, no descriptor but 0, 1 and 2 (`ls` itself opens 3 to list the directory).
fn assert_job_inherits_nothing() {
    let ran = argv(&["cat", "/proc/self/status"]).run();
    let masks: Vec<(String, u64)> = signal_masks(&text(&ran.outcome.stdout))
        .into_iter()
        .map(|(name, mask)| (name, mask & !GLIBC_INTERNAL_SIGNALS))
        .collect();
    assert_eq!(
        masks,
        vec![("SigBlk".to_string(), 0), ("SigIgn".to_string(), 0)]
    );
    let ran = argv(&["ls", "/proc/self/fd"]).run();
    assert_eq!(text(&ran.outcome.stdout), "0\n1\n2\n3\n");
}

#[test]
fn inherited_process_state_does_not_reach_the_job() {
    if std::env::var_os(INNER_ENV).is_some() {
        // Started by the outer half below: this process ignores SIGHUP (nohup) and holds a
        // stray descriptor, as a carelessly started daemon might.
        let own = fs::read_to_string("/proc/self/status").unwrap();
        let ignored = signal_masks(&own)
            .into_iter()
            .find(|(n, _)| n == "SigIgn")
            .unwrap()
            .1;
        assert_ne!(ignored & 1, 0, "nohup did not ignore SIGHUP");
        assert!(Path::new("/proc/self/fd").join(STRAY_FD).exists());
        assert_job_inherits_nothing();
        println!("inner-ok");
        return;
    }
    assert_job_inherits_nothing();
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec {STRAY_FD}</dev/null; exec nohup \"$0\" \"$@\""
        ))
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "inherited_process_state_does_not_reach_the_job",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER_ENV, "1")
        .output()
        .unwrap();
    let stdout = text(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("inner-ok"),
        "inner run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn binary_bytes(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8)
        .collect()
}

#[test]
fn stdin_bytes_round_trip() {
    let stdin = binary_bytes(MIB);
    assert!(stdin.contains(&0) && stdin.contains(&0xff));
    for mut job in [argv(&["cat"]), script("cat")] {
        job.stdin = stdin.clone();
        let ran = job.run();
        assert_eq!(ran.outcome.termination, Termination::Exited(0));
        assert!(ran.outcome.stdout == stdin, "stdin did not round-trip");
    }
}

#[test]
fn empty_stdin_is_dev_null() {
    let ran = script("cat; readlink /proc/self/fd/0").run();
    assert_eq!(text(&ran.outcome.stdout), "/dev/null\n");
    assert_eq!(ran.outcome.ending, Ending::Finished);
    assert!(ran.elapsed < Duration::from_secs(3));
}

#[test]
fn stdin_the_job_does_not_read_is_not_an_error() {
    let mut job = script("exit 0");
    job.stdin = binary_bytes(MIB);
    let ran = job.run();
    assert_eq!(ran.outcome.termination, Termination::Exited(0));
    assert_eq!(ran.outcome.ending, Ending::Finished);
    assert!(ran.elapsed < Duration::from_secs(3));
}

#[test]
fn five_mib_on_both_streams_concurrently_byte_exact() {
    // 80 interleaved pieces of 64 KiB per stream: if the streams were not read at the
    // same time, the job would block on a full pipe and time out.
    let body = "for i in $(seq 80); do \
                head -c 65536 /dev/zero | tr '\\0' x; \
                head -c 65536 /dev/zero | tr '\\0' y >&2; done";
    let ran = script(body).run();
    assert_eq!(ran.outcome.ending, Ending::Finished);
    assert_eq!(ran.outcome.termination, Termination::Exited(0));
    assert!(ran.outcome.stdout == vec![b'x'; 5 * MIB], "stdout differs");
    assert!(ran.outcome.stderr == vec![b'y'; 5 * MIB], "stderr differs");
    assert!(!ran.outcome.stdout_truncated && !ran.outcome.stderr_truncated);
}

#[test]
fn varied_output_is_byte_exact() {
    let ran = script("seq 1 500000").run();
    let expected: String = (1..=500_000).map(|n| format!("{n}\n")).collect();
    assert!(
        ran.outcome.stdout == expected.as_bytes(),
        "seq output differs"
    );
}

#[test]
fn output_past_the_cap_is_dropped_and_flagged() {
    // (bytes written, cap) → the job still completes (the rest is drained).
    let cases: &[(usize, usize)] = &[
        (0, 0),
        (1, 0),
        (999, 1000),
        (1000, 1000),
        (1001, 1000),
        (200_000, 1000),
        (3 * MIB, MIB),
    ];
    for &(written, cap) in cases {
        let mut job = script(&format!(
            "head -c {written} /dev/zero | tr '\\0' a; echo done >&2; exit 7"
        ));
        job.max_output = cap;
        let ran = job.run();
        let label = format!("written {written}, cap {cap}");
        assert_eq!(ran.outcome.termination, Termination::Exited(7), "{label}");
        assert_eq!(ran.outcome.stdout, vec![b'a'; written.min(cap)], "{label}");
        assert_eq!(ran.outcome.stdout_truncated, written > cap, "{label}");
        let stderr_kept = "done\n".len().min(cap);
        assert_eq!(ran.outcome.stderr, &b"done\n"[..stderr_kept], "{label}");
        assert_eq!(ran.outcome.stderr_truncated, cap < 5, "{label}");
    }
}

#[test]
fn on_chunk_sees_exactly_the_kept_bytes_in_order() {
    let streamed_out = Mutex::new(Vec::new());
    let streamed_err = Mutex::new(Vec::new());
    let biggest = AtomicU64::new(0);
    let on_chunk = |stream: Stream, chunk: &[u8]| {
        assert!(!chunk.is_empty());
        biggest.fetch_max(chunk.len() as u64, Ordering::SeqCst);
        match stream {
            Stream::Stdout => streamed_out.lock().unwrap().extend_from_slice(chunk),
            Stream::Stderr => streamed_err.lock().unwrap().extend_from_slice(chunk),
        }
    };
    let mut job = script("seq 1 200000; seq 1 1000 >&2");
    job.max_output = 500_001;
    let ran = job.run_with(&AtomicBool::new(false), &on_chunk);
    let expected: String = (1..=200_000).map(|n| format!("{n}\n")).collect();
    assert_eq!(ran.outcome.stdout.len(), 500_001);
    assert!(ran.outcome.stdout_truncated);
    assert!(ran.outcome.stdout == expected.as_bytes()[..500_001]);
    assert!(*streamed_out.lock().unwrap() == ran.outcome.stdout);
    assert!(*streamed_err.lock().unwrap() == ran.outcome.stderr);
    let expected_err: String = (1..=1000).map(|n| format!("{n}\n")).collect();
    assert_eq!(text(&ran.outcome.stderr), expected_err);
    assert!(biggest.load(Ordering::SeqCst) <= exec::CHUNK_SIZE as u64);
}

#[test]
fn timeout_terminates_the_job_and_its_children() {
    let mut job = script("sleep 30 & echo $! $$; wait");
    job.timeout = Duration::from_secs(1);
    let ran = job.run();
    assert_eq!(ran.outcome.ending, Ending::TimedOut);
    assert_eq!(ran.outcome.termination, Termination::Signaled(15));
    assert!(
        ran.elapsed < job.kill_grace + Duration::from_secs(3),
        "{:?}",
        ran.elapsed
    );
    assert!(ran.outcome.duration >= Duration::from_secs(1));
    let pids = pids_in(&ran.outcome.stdout);
    let (sleeper, sid) = (pids[0], pids[1]);
    assert!(eventually(|| gone_from_session(sleeper, sid)));
    assert!(eventually(|| gone_from_session(sid, sid)));
}

#[test]
fn timeout_leaves_none_of_fifty_background_sleepers() {
    let mut job = script("for i in $(seq 50); do sleep 300 & done; echo $$; wait");
    job.timeout = Duration::from_secs(1);
    let ran = job.run();
    assert_eq!(ran.outcome.ending, Ending::TimedOut);
    let sid = pids_in(&ran.outcome.stdout)[0];
    assert!(
        eventually(|| live_session_members(sid).is_empty()),
        "left in session {sid}: {:?}",
        live_session_members(sid)
    );
}

#[test]
fn background_processes_die_when_the_job_exits() {
    let cases = [
        // Holds the output pipes open.
        "sleep 300 & echo $! $$",
        // Holds nothing open: only the group kill ends it.
        "sleep 300 >/dev/null 2>&1 & echo $! $$",
        // Job control gives the sleeper its own process group: only the session sweep
        // ends it.
        "set -m; sleep 300 >/dev/null 2>&1 & echo $! $$",
        // A grandchild that moved to its own group, plus a child still in the job's group.
        "set -m; (sleep 300 & echo $!; wait) >/dev/null 2>&1 & sleep 300 & echo $! $$",
    ];
    for body in cases {
        let ran = script(body).run();
        assert_eq!(ran.outcome.termination, Termination::Exited(0), "{body}");
        assert_eq!(ran.outcome.ending, Ending::Finished, "{body}");
        assert!(
            ran.elapsed < Duration::from_secs(3),
            "{body}: {:?}",
            ran.elapsed
        );
        let pids = pids_in(&ran.outcome.stdout);
        let sid = *pids.last().unwrap();
        for &pid in &pids[..pids.len() - 1] {
            assert!(
                eventually(|| gone_from_session(pid, sid)),
                "{body}: {pid} lives"
            );
        }
        assert!(
            eventually(|| live_session_members(sid).is_empty()),
            "{body}: left {:?}",
            live_session_members(sid)
        );
    }
}

#[test]
fn a_setsid_escape_does_not_hold_run_hostage() {
    // Documented limitation: a process that leaves the session is not killed. What the
    // job sandbox does promise is that it cannot keep `run` from returning.
    // The job waits until the escape has happened (the escaped shell writes its pid only
    // after setsid), or its own exit could kill the child before it escapes.
    let ran = script(
        "setsid sh -c 'echo $$ > \"$0\"; exec sleep 300' \"$PWD/pid\" &
         while [ ! -s pid ]; do sleep 0.01; done; cat pid",
    )
    .run();
    let escaped = pids_in(&ran.outcome.stdout)[0];
    assert_eq!(ran.outcome.termination, Termination::Exited(0));
    assert!(
        ran.elapsed < OUTPUT_DRAIN_LIMIT + Duration::from_secs(2),
        "{:?}",
        ran.elapsed
    );
    assert!(
        ran.outcome.stdout_truncated,
        "the end of stdout was never seen"
    );
    // Clean up the escaped process; after setsid it leads its own group.
    if matches!(proc_stat(escaped), Some((_, pgrp, _)) if pgrp == escaped) {
        sys::kill_group(escaped, sys::Signal::Kill).unwrap();
    }
    assert!(eventually(
        || !matches!(proc_stat(escaped), Some((s, _, sid)) if sid == escaped && is_live(s))
    ));
}

/// Job cgroups where this system allows them (root on cgroup v2); otherwise the test
/// that needs them says why it is skipped.
fn job_cgroups(test: &str) -> Option<JobCgroups> {
    match cgroup::discover() {
        Ok(found) => Some(found),
        Err(why) => {
            eprintln!("{test}: skipped: no job cgroups here: {why}");
            None
        }
    }
}

/// The job that escapes its session and group: it prints the escaped process's pid.
const SETSID_ESCAPE: &str = "setsid sh -c 'echo $$ > \"$0\"; exec sleep 300' \"$PWD/pid\" &
     while [ ! -s pid ]; do sleep 0.01; done; cat pid";

#[test]
fn a_setsid_escape_dies_with_the_job_cgroup() {
    let Some(cgroups) = job_cgroups("a_setsid_escape_dies_with_the_job_cgroup") else {
        return;
    };
    let mut job = script(SETSID_ESCAPE);
    job.cgroups = Some(cgroups.clone());
    let ran = job.run();
    let escaped = pids_in(&ran.outcome.stdout)[0];
    assert_eq!(ran.outcome.termination, Termination::Exited(0));
    // The escape held stdout open; killed with the cgroup, it no longer does, so the
    // end of stdout is seen and the drain does not wait out its limit.
    assert!(
        !ran.outcome.stdout_truncated,
        "the escape still held stdout open"
    );
    assert!(ran.elapsed < OUTPUT_DRAIN_LIMIT, "{:?}", ran.elapsed);
    assert!(
        !matches!(proc_stat(escaped), Some((s, _, _)) if is_live(s)),
        "the escaped process {escaped} outlived its job"
    );
    let dir = cgroups
        .base()
        .join(format!("{}{}", cgroup::JOB_PREFIX, ran.id));
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

#[test]
fn a_setsid_escape_dies_with_a_timed_out_job_cgroup() {
    let Some(cgroups) = job_cgroups("a_setsid_escape_dies_with_a_timed_out_job_cgroup") else {
        return;
    };
    let mut job = script(&format!("{SETSID_ESCAPE}; sleep 30"));
    job.cgroups = Some(cgroups);
    job.timeout = Duration::from_secs(1);
    let ran = job.run();
    assert_eq!(ran.outcome.ending, Ending::TimedOut);
    let escaped = pids_in(&ran.outcome.stdout)[0];
    assert!(
        !matches!(proc_stat(escaped), Some((s, _, _)) if is_live(s)),
        "the escaped process {escaped} outlived its job"
    );
}

#[test]
fn a_job_cgroup_left_by_a_crash_is_emptied_and_removed() {
    let Some(cgroups) = job_cgroups("a_job_cgroup_left_by_a_crash_is_emptied_and_removed") else {
        return;
    };
    let id = new_id();
    let cgroup = JobCgroup::create(&cgroups, &id).unwrap();
    // A process in its own session, as a job's escape would be.
    let mut command = Command::new("sleep");
    command.arg("300");
    sys::sandbox_command(&mut command, 0o077);
    sys::enter_cgroup_on_exec(&mut command, cgroup.procs_fd().unwrap());
    let mut child = command.spawn().unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    // The daemon dies here: nobody drops the cgroup.
    std::mem::forget(cgroup);
    let dir = cgroups.base().join(format!("{}{id}", cgroup::JOB_PREFIX));
    assert!(dir.is_dir());
    assert_eq!(cgroup::kill_leftover(&cgroups, &id), 1);
    assert_eq!(child.wait().unwrap().signal(), Some(9), "pid {pid}");
    assert!(!dir.exists(), "{} was left behind", dir.display());
    // Nothing is left to find a second time.
    assert_eq!(cgroup::kill_leftover(&cgroups, &id), 0);
}

#[test]
fn a_job_ignoring_sigterm_is_killed_after_the_grace() {
    let mut job = script("trap '' TERM; sleep 30");
    job.timeout = Duration::from_secs(1);
    job.kill_grace = Duration::from_millis(500);
    let ran = job.run();
    assert_eq!(ran.outcome.ending, Ending::TimedOut);
    assert_eq!(ran.outcome.termination, Termination::Signaled(9));
    assert!(ran.outcome.duration >= Duration::from_millis(1500));
    assert!(ran.elapsed < Duration::from_secs(4), "{:?}", ran.elapsed);
}

#[test]
fn cancel_from_another_thread() {
    let cancel = AtomicBool::new(false);
    let ran = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            cancel.store(true, Ordering::SeqCst);
        });
        script("echo started; sleep 30").run_with(&cancel, &|_, _| {})
    });
    assert_eq!(ran.outcome.ending, Ending::Cancelled);
    assert_eq!(ran.outcome.termination, Termination::Signaled(15));
    assert_eq!(text(&ran.outcome.stdout), "started\n");
    assert!(ran.elapsed < Duration::from_secs(2), "{:?}", ran.elapsed);
    assert!(!ran.run_dir.path.join("jobs").join(&ran.id).exists());
}

#[test]
fn cancel_before_start_runs_nothing() {
    let side = TempDir::shared("side");
    let marker = side.path.join("ran");
    let job = script(&format!("touch {}", marker.display()));
    let run_dir = TempDir::new("run");
    let id = new_id();
    let result = job.try_run_in(&run_dir.path, &id, &AtomicBool::new(true), &|_, _| {});
    assert!(
        matches!(result, Err(ExecError::CancelledBeforeStart)),
        "{result:?}"
    );
    assert!(!marker.exists());
    assert!(!run_dir.path.join("jobs").join(&id).exists());
}

#[test]
fn job_dir_is_removed_afterwards() {
    let ran = script("touch file; mkdir sub; echo x > sub/y; ln -s / root-link").run();
    assert_eq!(ran.outcome.termination, Termination::Exited(0));
    let jobs = ran.run_dir.path.join("jobs");
    assert!(!jobs.join(&ran.id).exists());
    let jobs_meta = fs::metadata(&jobs).unwrap();
    assert_eq!(jobs_meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(fs::read_dir(&jobs).unwrap().count(), 0);
    // The symlink to / was removed, not followed.
    assert!(Path::new("/bin").exists());
}

#[test]
fn an_existing_job_dir_is_refused_and_left_alone() {
    let side = TempDir::shared("side");
    let marker = side.path.join("ran");
    let run_dir = TempDir::new("run");
    let id = new_id();
    let existing = run_dir.path.join("jobs").join(&id);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&existing)
        .unwrap();
    fs::write(existing.join("keep"), b"other job").unwrap();
    let job = script(&format!("touch {}", marker.display()));
    let result = job.try_run_in(&run_dir.path, &id, &AtomicBool::new(false), &|_, _| {});
    match result {
        Err(ExecError::JobDir { path, source }) => {
            assert_eq!(path, existing);
            assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists);
        }
        other => panic!("expected a JobDir error, got {other:?}"),
    }
    assert!(!marker.exists(), "the job ran");
    assert_eq!(fs::read(existing.join("keep")).unwrap(), b"other job");
}

#[test]
fn argv_mode_runs_exactly_the_argv_through_the_shell() {
    // DESIGN §5: every job is started by QVM_REMOTE_SHELL. A wrapper standing in for it
    // records that it ran, then hands over to bash.
    let side = TempDir::shared("shell");
    let wrapper = side.path.join("shell");
    let record = side.path.join("ran");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\necho \"$@\" >> {}\nexec /bin/bash \"$@\"\n",
            record.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["/bin/echo", "$(id)", "a b", ";", "*", "`x`"],
            "$(id) a b ; * `x`\n",
        ),
        // A bare program name is looked up in the job's PATH.
        (&["echo", "$HOME"], "$HOME\n"),
        (
            &["printf", "%s|", "x", "y z", "it's", "", "a'b"],
            "x|y z|it's||a'b|",
        ),
    ];
    for (i, (words, expected)) in cases.iter().enumerate() {
        let mut job = argv(words);
        job.shell = wrapper.clone();
        let ran = job.run();
        assert_eq!(text(&ran.outcome.stdout), *expected, "{words:?}");
        assert_eq!(ran.outcome.termination, Termination::Exited(0));
        let runs = fs::read_to_string(&record).unwrap();
        assert_eq!(runs.lines().count(), i + 1, "{runs}");
        assert!(runs.starts_with("--noprofile --norc /"), "{runs}");
    }
    // The shell became the program: the job's main process is the program itself.
    let ran = argv(&["sh", "-c", "cat /proc/$PPID/comm"]).run();
    assert_eq!(ran.outcome.termination, Termination::Exited(0));
    assert_ne!(text(&ran.outcome.stdout), "bash\n");
    // A program that does not exist is the shell's 127, as for any command.
    let ran = argv(&["nonexistent-cmd-xyz"]).run();
    assert_eq!(ran.outcome.termination, Termination::Exited(127));
    assert!(
        text(&ran.outcome.stderr).contains("not found"),
        "{:?}",
        ran.outcome
    );
}

#[test]
fn empty_argv_is_refused() {
    let job = argv(&[]);
    let run_dir = TempDir::new("run");
    let id = new_id();
    let result = job.try_run_in(&run_dir.path, &id, &AtomicBool::new(false), &|_, _| {});
    assert!(matches!(result, Err(ExecError::EmptyArgv)), "{result:?}");
    assert!(!run_dir.path.join("jobs").join(&id).exists());
}

#[test]
fn spawn_failures_are_reported_and_cleaned_up() {
    let cases = [
        (script("exit 0"), "/nonexistent/bash"),
        (argv(&["true"]), "/nonexistent/bash"),
    ];
    for (mut job, program) in cases {
        job.shell = PathBuf::from(program);
        let run_dir = TempDir::new("run");
        let id = new_id();
        let result = job.try_run_in(&run_dir.path, &id, &AtomicBool::new(false), &|_, _| {});
        match result {
            Err(ExecError::Spawn { program: p, source }) => {
                assert_eq!(p, PathBuf::from(program));
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{program}: expected a Spawn error, got {other:?}"),
        }
        assert!(!run_dir.path.join("jobs").join(&id).exists());
    }
}

/// A predicate on the result of a run that must be refused.
type Check = Box<dyn Fn(&Result<ExecOutcome, ExecError>) -> bool>;

#[test]
fn untrusted_run_dirs_and_unsafe_ids_are_refused() {
    let side = TempDir::shared("side");
    let marker = side.path.join("ran");
    let job = script(&format!("touch {}", marker.display()));
    let good = TempDir::new("good");
    let world_writable = TempDir::new("ww");
    fs::set_permissions(&world_writable.path, fs::Permissions::from_mode(0o777)).unwrap();
    let group_writable_jobs = TempDir::new("gwj");
    let jobs = group_writable_jobs.path.join("jobs");
    fs::create_dir(&jobs).unwrap();
    fs::set_permissions(&jobs, fs::Permissions::from_mode(0o770)).unwrap();
    let links = TempDir::new("links");
    let link = links.path.join("run");
    std::os::unix::fs::symlink(&good.path, &link).unwrap();
    let jobs_link = TempDir::new("jobslink");
    std::os::unix::fs::symlink(&good.path, jobs_link.path.join("jobs")).unwrap();
    let missing = good.path.join("missing");

    let untrusted =
        |e: &Result<ExecOutcome, ExecError>| matches!(e, Err(ExecError::UntrustedDir { .. }));
    let cases: Vec<(PathBuf, String, Check)> = vec![
        (PathBuf::from("relative/run"), new_id(), Box::new(untrusted)),
        (world_writable.path.clone(), new_id(), Box::new(untrusted)),
        (
            group_writable_jobs.path.clone(),
            new_id(),
            Box::new(untrusted),
        ),
        (link, new_id(), Box::new(untrusted)),
        (jobs_link.path.clone(), new_id(), Box::new(untrusted)),
        (
            missing,
            new_id(),
            Box::new(
                |e| matches!(e, Err(ExecError::JobDir { source, .. }) if source.kind() == std::io::ErrorKind::NotFound),
            ),
        ),
        (
            good.path.clone(),
            "../escape".to_string(),
            Box::new(|e| matches!(e, Err(ExecError::UnsafeId))),
        ),
        (
            good.path.clone(),
            "a/b".to_string(),
            Box::new(|e| matches!(e, Err(ExecError::UnsafeId))),
        ),
        (
            good.path.clone(),
            String::new(),
            Box::new(|e| matches!(e, Err(ExecError::UnsafeId))),
        ),
    ];
    for (run_dir, id, expected) in cases {
        let result = job.try_run_in(&run_dir, &id, &AtomicBool::new(false), &|_, _| {});
        assert!(
            expected(&result),
            "{} / {id:?}: {result:?}",
            run_dir.display()
        );
        if let Err(error) = &result {
            assert!(!error.to_string().is_empty());
        }
    }
    assert!(!marker.exists(), "a job ran");
    assert!(!good.path.join("escape").exists());
}

#[test]
fn a_run_dir_owned_by_someone_else_is_refused_as_root() {
    if sys::geteuid() != 0 {
        eprintln!("skipping: needs root to give a directory away");
        return;
    }
    let run_dir = TempDir::new("owner");
    std::os::unix::fs::chown(&run_dir.path, Some(65534), Some(65534)).unwrap();
    let result = script("exit 0").try_run_in(
        &run_dir.path,
        &new_id(),
        &AtomicBool::new(false),
        &|_, _| {},
    );
    assert!(
        matches!(result, Err(ExecError::UntrustedDir { reason, .. }) if reason.contains("owned")),
        "{result:?}"
    );
}

#[test]
fn start_time_and_duration_are_plausible() {
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ran = script("sleep 0.2").run();
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!((before..=after).contains(&ran.outcome.started_unix_ms));
    assert!(ran.outcome.duration >= Duration::from_millis(200));
    assert!(ran.outcome.duration <= ran.elapsed);
}

/// After a daemon crash the next daemon kills what a journalled job left running, but
/// only if the journalled start time proves the pid is still that job's.
#[test]
fn kill_leftovers_kills_the_journalled_session_and_spares_strangers() {
    use qvm_remote::exec::{kill_leftovers, process_start_time};
    use std::process::{Command, Stdio};
    // The child is not a group leader, so setsid(1) calls setsid() without forking and
    // execs sleep: the child's pid is the new session's id, like a job's.
    let mut stranger = Command::new("setsid")
        .args(["sleep", "300"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = stranger.id();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let start = process_start_time(pid).expect("start time");
    // A wrong start time means the pid belongs to someone else: nothing is killed.
    assert_eq!(kill_leftovers(pid, start + 1), 0);
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "a stranger was killed"
    );
    // The right one kills the whole session.
    assert!(kill_leftovers(pid, start) >= 1);
    let status = stranger.wait().unwrap();
    assert!(!status.success());
}
