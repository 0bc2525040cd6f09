//! Runs dom0 programs for the panel: always an argv, never a shell (shared/DESIGN.md §8).
//!
//! Each program gets its own session and process group ([`sys::sandbox_command`]), so
//! a timeout, a cancel or the end of the run kills everything it started; none of the
//! panel's descriptors but stdin, stdout and stderr; stdin from the given bytes or
//! `/dev/null`; and at most `max_output` bytes kept per stream (the rest drained and
//! dropped). The environment is the panel's own: these are the administrator's tools,
//! run on the administrator's behalf, found through the `PATH` the administrator
//! started the panel with (a job from a VM, by contrast, gets the fixed environment of
//! DESIGN §5).
//!
//! Callers validate every word that comes from a request before it reaches an argv;
//! [`check_argv`] is the last line: no empty argv, no option-looking program, no NUL.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::exec::Stream;
use crate::sys::{self, Readiness, Signal};

/// Default time limit for a quick tool (`qvm-ls`, `qvm-prefs`, …) run inside a request.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// Default output kept per stream of a quick tool.
pub const MAX_TOOL_OUTPUT: usize = 4 * 1024 * 1024;
/// Time between SIGTERM and SIGKILL when a run is stopped.
pub const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long the pipes may stay open after the program ended (a descendant that left
/// the process group can hold them); then they are abandoned.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// Umask of every program the panel starts.
pub const TOOL_UMASK: u32 = 0o077;
/// Longest word in an argv.
pub const MAX_ARG: usize = 64 * 1024;
/// Most words in an argv.
pub const MAX_ARGS: usize = 1024;
/// How often a run looks at its program, its deadline and its stop check.
const POLL: Duration = Duration::from_millis(20);
/// How long a pipe thread waits before looking at the stop flag again.
const PIPE_POLL: Duration = Duration::from_millis(100);
/// Bytes read from a pipe at once.
const CHUNK: usize = 64 * 1024;

/// What a run's stop check asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// Keep running.
    Continue,
    /// SIGTERM to the group, SIGKILL [`KILL_GRACE`] later (cancel, page closed).
    Terminate,
    /// SIGKILL to the group now (the panel is shutting down and cannot wait).
    Kill,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The program exited by itself.
    Finished,
    /// The deadline passed; the group was killed.
    TimedOut,
    /// The stop check asked for it; the group was killed.
    Cancelled,
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit status, when the program exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Why it ended.
    pub ending: Ending,
    /// stdout bytes kept.
    pub stdout: Vec<u8>,
    /// stderr bytes kept.
    pub stderr: Vec<u8>,
    /// Whether output past `max_output` was dropped.
    pub truncated: bool,
    /// How long it ran.
    pub duration: Duration,
}

impl Output {
    /// Exited 0 by itself.
    pub fn success(&self) -> bool {
        self.ending == Ending::Finished && self.code == Some(0)
    }

    /// stdout as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// A short description of how it ended: `exit 0`, `signal 9`, `timed out`, …
    pub fn describe(&self) -> String {
        match (self.ending, self.code, self.signal) {
            (Ending::TimedOut, _, _) => "timed out".into(),
            (Ending::Cancelled, _, _) => "cancelled".into(),
            (_, Some(c), _) => format!("exit {c}"),
            (_, _, Some(s)) => format!("signal {s}"),
            _ => "ended".into(),
        }
    }
}

/// Why a program could not be run.
#[derive(Debug)]
pub enum RunError {
    /// The argv was refused before anything ran.
    BadArgv(&'static str),
    /// The program could not be started.
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: io::Error,
    },
    /// A pipe thread could not be started (the program was killed).
    Thread(io::Error),
    /// Waiting for the program failed.
    Wait(io::Error),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::BadArgv(why) => write!(f, "refused: {why}"),
            RunError::Spawn { program, source } => {
                write!(
                    f,
                    "cannot start {}: {source}",
                    crate::proto::escape_line(program.as_bytes(), 200)
                )
            }
            RunError::Thread(e) => write!(f, "cannot start a pipe thread: {e}"),
            RunError::Wait(e) => write!(f, "cannot wait for the program: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    /// Program and arguments.
    pub argv: &'a [String],
    /// stdin bytes; empty means `/dev/null`.
    pub stdin: &'a [u8],
    /// Kill the group after this long.
    pub timeout: Duration,
    /// Bytes kept per stream.
    pub max_output: usize,
    /// Keep output in [`Output`] (up to `max_output`). When false, every chunk goes
    /// only to `on_chunk` and nothing is kept: the caller bounds what it stores.
    pub keep_output: bool,
}

impl<'a> Spec<'a> {
    /// A quick tool: no stdin, [`TOOL_TIMEOUT`], [`MAX_TOOL_OUTPUT`].
    pub fn tool(argv: &'a [String]) -> Spec<'a> {
        Spec {
            argv,
            stdin: &[],
            timeout: TOOL_TIMEOUT,
            max_output: MAX_TOOL_OUTPUT,
            keep_output: true,
        }
    }
}

/// The last check on an argv before it runs.
pub fn check_argv(argv: &[String]) -> Result<(), RunError> {
    let program = argv.first().ok_or(RunError::BadArgv("empty argv"))?;
    if program.is_empty() || program.starts_with('-') {
        return Err(RunError::BadArgv(
            "the program name is empty or starts with -",
        ));
    }
    if argv.len() > MAX_ARGS {
        return Err(RunError::BadArgv("too many arguments"));
    }
    if argv.iter().any(|a| a.len() > MAX_ARG || a.contains('\0')) {
        return Err(RunError::BadArgv("an argument is too long or holds a NUL"));
    }
    Ok(())
}

/// Runs a quick tool with no live output. It is killed at its timeout, or at once
/// when this process has received SIGTERM or SIGINT (the panel is stopping and must
/// not leave programs behind).
pub fn run_tool(argv: &[String]) -> Result<Output, RunError> {
    run(&Spec::tool(argv), &stop_on_termination, &|_, _| {})
}

/// The stop check of quick tools: SIGKILL once a termination signal has arrived.
pub fn stop_on_termination() -> StopRequest {
    if sys::termination_signal().is_some() {
        StopRequest::Kill
    } else {
        StopRequest::Continue
    }
}

/// `run_tool` over string slices.
pub fn tool(argv: &[&str]) -> Result<Output, RunError> {
    let owned: Vec<String> = argv.iter().map(|s| (*s).to_string()).collect();
    run_tool(&owned)
}

/// Runs `spec`. `stop` is polled every few milliseconds (see [`StopRequest`]).
/// `on_chunk` sees each kept chunk of output as it arrives, in order per stream.
pub fn run(
    spec: &Spec,
    stop: &(dyn Fn() -> StopRequest + Sync),
    on_chunk: &(dyn Fn(Stream, &[u8]) + Sync),
) -> Result<Output, RunError> {
    check_argv(spec.argv)?;
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or(RunError::BadArgv("empty argv"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if spec.stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sys::sandbox_command(&mut cmd, TOOL_UMASK);
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
        program: program.clone(),
        source,
    })?;
    let result = supervise(&mut child, spec, stop, on_chunk, started);
    // Reap last: until then the zombie keeps the group id from being reused.
    let status = child.wait().map_err(RunError::Wait);
    let (ending, stdout, stderr, truncated) = result?;
    let status = status?;
    use std::os::unix::process::ExitStatusExt;
    Ok(Output {
        code: status.code(),
        signal: status.signal(),
        ending,
        stdout,
        stderr,
        truncated,
        duration: started.elapsed(),
    })
}

type Supervised = (Ending, Vec<u8>, Vec<u8>, bool);

fn supervise(
    child: &mut Child,
    spec: &Spec,
    stop: &(dyn Fn() -> StopRequest + Sync),
    on_chunk: &(dyn Fn(Stream, &[u8]) + Sync),
    started: Instant,
) -> Result<Supervised, RunError> {
    let pid = i32::try_from(child.id()).unwrap_or(0);
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let pipes_done = AtomicBool::new(false);
    thread::scope(|scope| {
        let feeder = stdin.map(|pipe| {
            let bytes = spec.stdin;
            let done = &pipes_done;
            thread::Builder::new()
                .name("panel-stdin".into())
                .spawn_scoped(scope, move || feed(pipe, bytes, done))
        });
        let out_reader = stdout.map(|pipe| {
            let done = &pipes_done;
            thread::Builder::new()
                .name("panel-stdout".into())
                .spawn_scoped(scope, move || {
                    drain(PipeOut::Out(pipe), Stream::Stdout, spec, done, on_chunk)
                })
        });
        let err_reader = stderr.map(|pipe| {
            let done = &pipes_done;
            thread::Builder::new()
                .name("panel-stderr".into())
                .spawn_scoped(scope, move || {
                    drain(PipeOut::Err(pipe), Stream::Stderr, spec, done, on_chunk)
                })
        });
        let spawn_failed = matches!(feeder, Some(Err(_)))
            || matches!(out_reader, Some(Err(_)))
            || matches!(err_reader, Some(Err(_)));
        let ending = if spawn_failed {
            let _ = sys::kill_group(pid, Signal::Kill);
            Ending::Cancelled
        } else {
            wait_for_end(pid, spec.timeout, stop, started)
        };
        // Whatever the ending, nothing the program started outlives it.
        let _ = sys::kill_group(pid, Signal::Kill);
        let drain_until = Instant::now() + DRAIN_LIMIT;
        let mut results = Vec::new();
        for reader in [out_reader, err_reader] {
            let got = match reader {
                Some(Ok(h)) => {
                    while !h.is_finished() && Instant::now() < drain_until {
                        thread::sleep(POLL);
                    }
                    pipes_done.store(true, Ordering::SeqCst);
                    h.join().unwrap_or_default()
                }
                _ => (Vec::new(), false),
            };
            results.push(got);
        }
        pipes_done.store(true, Ordering::SeqCst);
        if let Some(Ok(h)) = feeder {
            let _ = h.join();
        }
        if spawn_failed {
            return Err(RunError::Thread(io::Error::other("thread spawn failed")));
        }
        let mut it = results.into_iter();
        let (out, out_trunc) = it.next().unwrap_or_default();
        let (err, err_trunc) = it.next().unwrap_or_default();
        Ok((ending, out, err, out_trunc || err_trunc))
    })
}

/// Polls until the program exits, the deadline passes or `stop` says so. Signals go
/// to the group only while the program is unreaped, so its id cannot name a stranger.
fn wait_for_end(
    pid: i32,
    timeout: Duration,
    stop: &(dyn Fn() -> StopRequest + Sync),
    started: Instant,
) -> Ending {
    let mut ending = Ending::Finished;
    let mut term_sent: Option<Instant> = None;
    loop {
        if sys::child_has_exited(pid).unwrap_or(true) {
            return ending;
        }
        let request = stop();
        if request == StopRequest::Kill {
            if ending == Ending::Finished {
                ending = Ending::Cancelled;
            }
            let _ = sys::kill_group(pid, Signal::Kill);
        } else if term_sent.is_none() {
            if started.elapsed() >= timeout {
                ending = Ending::TimedOut;
            } else if request == StopRequest::Terminate {
                ending = Ending::Cancelled;
            }
            if ending != Ending::Finished {
                let _ = sys::kill_group(pid, Signal::Term);
                term_sent = Some(Instant::now());
            }
        } else if term_sent.is_some_and(|t| t.elapsed() >= KILL_GRACE) {
            let _ = sys::kill_group(pid, Signal::Kill);
        }
        thread::sleep(POLL);
    }
}

fn feed(mut pipe: ChildStdin, bytes: &[u8], done: &AtomicBool) {
    // A program that does not read its stdin must not kill the panel with SIGPIPE.
    let _ = sys::block_sigpipe_in_current_thread();
    if sys::set_nonblocking(pipe.as_fd()).is_err() {
        return;
    }
    let mut rest = bytes;
    while !rest.is_empty() && !done.load(Ordering::SeqCst) {
        if !matches!(
            sys::wait_ready(pipe.as_fd(), Readiness::Writable, PIPE_POLL),
            Ok(true)
        ) {
            continue;
        }
        match pipe.write(rest) {
            Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

enum PipeOut {
    Out(ChildStdout),
    Err(ChildStderr),
}

impl PipeOut {
    fn ready(&self) -> bool {
        let fd = match self {
            PipeOut::Out(p) => p.as_fd(),
            PipeOut::Err(p) => p.as_fd(),
        };
        matches!(
            sys::wait_ready(fd, Readiness::Readable, PIPE_POLL),
            Ok(true)
        )
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            PipeOut::Out(p) => p.read(buf),
            PipeOut::Err(p) => p.read(buf),
        }
    }
}

fn drain(
    mut pipe: PipeOut,
    stream: Stream,
    spec: &Spec,
    done: &AtomicBool,
    on_chunk: &(dyn Fn(Stream, &[u8]) + Sync),
) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut chunk = vec![0u8; CHUNK];
    while !done.load(Ordering::SeqCst) {
        if !pipe.ready() {
            continue;
        }
        match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                let got = chunk.get(..n).unwrap_or_default();
                if !spec.keep_output {
                    on_chunk(stream, got);
                    continue;
                }
                let room = spec.max_output.saturating_sub(kept.len());
                let keep = got.get(..room.min(n)).unwrap_or_default();
                if keep.len() < n {
                    truncated = true;
                }
                if !keep.is_empty() {
                    kept.extend_from_slice(keep);
                    on_chunk(stream, keep);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (kept, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn runs_an_argv_and_keeps_output() {
        let out = tool(&["sh", "-c", "echo out; echo err >&2; exit 3"]).unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert!(!out.success());
        assert_eq!(out.describe(), "exit 3");
        // Words are data: nothing here is a shell.
        let out = tool(&["echo", "$(touch /nonexistent/x)", ";", "`id`"]).unwrap();
        assert_eq!(out.stdout, b"$(touch /nonexistent/x) ; `id`\n");
    }

    #[test]
    fn refuses_bad_argvs() {
        for bad in [vec![], argv(&["-rf"]), argv(&[""]), argv(&["echo", "a\0b"])] {
            assert!(
                matches!(run_tool(&bad), Err(RunError::BadArgv(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            tool(&["/nonexistent/program"]),
            Err(RunError::Spawn { .. })
        ));
    }

    #[test]
    fn stdin_timeout_cancel_and_cap() {
        let words = argv(&["cat"]);
        let spec = Spec {
            argv: &words,
            stdin: b"hello",
            timeout: Duration::from_secs(10),
            max_output: 3,
            keep_output: true,
        };
        let out = run(&spec, &|| StopRequest::Continue, &|_, _| {}).unwrap();
        assert_eq!(out.stdout, b"hel");
        assert!(out.truncated);

        let words = argv(&["sh", "-c", "sleep 30 & sleep 30"]);
        let spec = Spec {
            argv: &words,
            stdin: &[],
            timeout: Duration::from_millis(200),
            max_output: 10,
            keep_output: true,
        };
        let t = Instant::now();
        let out = run(&spec, &|| StopRequest::Continue, &|_, _| {}).unwrap();
        assert_eq!(out.ending, Ending::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(5));

        let flag = AtomicBool::new(false);
        let spec = Spec {
            timeout: Duration::from_secs(30),
            ..spec
        };
        let seen = std::sync::Mutex::new(Vec::new());
        let words2 = argv(&["sh", "-c", "echo started; sleep 30"]);
        let spec = Spec {
            argv: &words2,
            ..spec
        };
        let out = run(
            &spec,
            &|| {
                let started = seen.lock().unwrap().ends_with(b"started\n");
                if started {
                    flag.store(true, Ordering::SeqCst);
                }
                if flag.load(Ordering::SeqCst) {
                    StopRequest::Terminate
                } else {
                    StopRequest::Continue
                }
            },
            &|_, chunk| seen.lock().unwrap().extend_from_slice(chunk),
        )
        .unwrap();
        assert_eq!(out.ending, Ending::Cancelled);
        assert_eq!(out.stdout, b"started\n");

        // A program that ignores SIGTERM still ends at once on Kill.
        let words3 = argv(&["sh", "-c", "trap '' TERM; sleep 30"]);
        let spec = Spec {
            argv: &words3,
            ..spec
        };
        let t = Instant::now();
        let out = run(&spec, &|| StopRequest::Kill, &|_, _| {}).unwrap();
        assert_eq!(out.ending, Ending::Cancelled);
        assert!(t.elapsed() < KILL_GRACE, "{:?}", t.elapsed());
    }
}
