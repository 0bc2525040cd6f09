//! The client: submit a job, wait for its result, show it, archive it (DESIGN §2, §3,
//! §5).
//!
//! A job is written as `queue/pending/.<id>.tmp` (0600, `create_new`) and renamed to
//! `queue/pending/<id>.job`. The client then polls for `queue/results/<id>.result`:
//! every [`FAST_POLL`] for the first [`FAST_POLL_FOR`], then every [`SLOW_POLL`],
//! giving up after the job's timeout plus [`WAIT_MARGIN`]. A result is shown only if
//! its MAC verifies with `auth.key` and it names our job; a result that fails is left
//! in place for inspection and none of its bytes reach the terminal.
//!
//! Ctrl-C (or SIGTERM) while waiting withdraws a job the agent has not claimed yet;
//! otherwise it writes `queue/pending/<id>.cancel` holding the cancel token and waits up
//! to [`CANCEL_GRACE`] for dom0's `cancelled` result. Either way the client exits 130;
//! a second Ctrl-C exits at once.

use std::borrow::Cow;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::cli::{RunOptions, ShowOptions};
use super::datadir::{self, DataDir, QueueDir};
use super::files::{self, Durability, ReadError};
use super::history::{self, Record};
use super::{Console, Error, VerifyError};
use crate::id::CommandId;
use crate::json;
use crate::keys::Key;
use crate::proto::job::{self, JobLimits, MAX_JOB_FILE, PROTOCOL_MAX_COMMAND};
use crate::proto::result::MAX_RESULT_FILE;
use crate::proto::{cancel_token, Job, JobResult, Status, Truncated};
use crate::time;

/// Poll interval right after submitting, when a fast dom0 answers.
pub const FAST_POLL: Duration = Duration::from_millis(10);
/// How long to poll at [`FAST_POLL`].
pub const FAST_POLL_FOR: Duration = Duration::from_secs(2);
/// Poll interval after that.
pub const SLOW_POLL: Duration = Duration::from_millis(50);
/// How much longer than the job's timeout the client waits: dom0 needs time to kill the
/// job, and the agent to bring the result.
pub const WAIT_MARGIN: Duration = Duration::from_secs(30);
/// How often `qvm-remote: waiting… Ns` is printed.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// How long to wait for dom0's answer to a cancel.
pub const CANCEL_GRACE: Duration = Duration::from_secs(10);
/// `ping`'s command text.
pub const PING_BODY: &[u8] = b"true";
/// `ping`'s job timeout, seconds.
pub const PING_TIMEOUT: u64 = 10;
/// How long `ping` waits.
pub const PING_WAIT: Duration = Duration::from_secs(20);

/// `qvm-remote [options] COMMAND…`: returns the exit code of DESIGN §5.
pub fn run_command(
    dd: &DataDir,
    opts: &RunOptions,
    console: &mut Console<'_>,
) -> Result<u8, Error> {
    let key = load_key(dd)?;
    let (body, stdin) = read_inputs(opts, console)?;
    let flag = crate::sys::install_termination_flag().map_err(Error::Signals)?;
    let job = new_job(opts.timeout, body, stdin)?;
    submit(dd, &key, &job)?;
    let started = Instant::now();
    if opts.verbose {
        note(
            console,
            &format!("job {} queued (timeout {}s)", job.id, job.timeout),
        );
    }
    let limit = Duration::from_secs(job.timeout).saturating_add(WAIT_MARGIN);
    let arrival = wait(dd, &key, &job.id, limit, opts.quiet, flag, console)?;
    let show = ShowOptions {
        verbose: opts.verbose,
        quiet: opts.quiet,
        json: opts.json,
    };
    match arrival {
        Arrival::Answered(res) => {
            if opts.verbose {
                note(console, &timing(&res, started));
            }
            let code = res.client_exit_code();
            present(&View::from_result(&res), &show, console)?;
            finish(dd, &res, &job.body, Some(job.created), code, console);
            Ok(code)
        }
        Arrival::NoAnswer => {
            let line = history::audit_line(
                time::unix_now(),
                &job.id,
                "no-answer",
                125,
                elapsed_ms(started),
                &job.body,
            );
            warn_on_err(console, history::append_audit(dd, &line));
            Err(Error::NoAnswer {
                id: job.id.clone(),
                secs: limit.as_secs(),
                left_queued: true,
            })
        }
        Arrival::Cancelled(Some(res)) => {
            present(&View::from_result(&res), &show, console)?;
            finish(dd, &res, &job.body, Some(job.created), 130, console);
            Err(Error::Cancelled {
                id: job.id.clone(),
                result_shown: true,
            })
        }
        Arrival::Cancelled(None) => {
            let line = history::audit_line(
                time::unix_now(),
                &job.id,
                "cancelled",
                130,
                elapsed_ms(started),
                &job.body,
            );
            warn_on_err(console, history::append_audit(dd, &line));
            Err(Error::Cancelled {
                id: job.id.clone(),
                result_shown: false,
            })
        }
    }
}

/// `qvm-remote ping`: any result that verifies proves dom0 answers.
pub fn ping(dd: &DataDir, show: &ShowOptions, console: &mut Console<'_>) -> Result<u8, Error> {
    let key = load_key(dd)?;
    let flag = crate::sys::install_termination_flag().map_err(Error::Signals)?;
    let job = new_job(PING_TIMEOUT, PING_BODY.to_vec(), Vec::new())?;
    submit(dd, &key, &job)?;
    let started = Instant::now();
    if show.verbose {
        note(console, &format!("job {} queued", job.id));
    }
    match wait(dd, &key, &job.id, PING_WAIT, show.quiet, flag, console)? {
        Arrival::Answered(res) => {
            let ms = elapsed_ms(started);
            // A ping is not a command the user ran: it leaves no history, only a log line.
            clean_queue(dd, &job.id, console);
            let line = history::audit_line(
                time::unix_now(),
                &job.id,
                res.status.as_str(),
                res.client_exit_code(),
                ms,
                &job.body,
            );
            warn_on_err(console, history::append_audit(dd, &line));
            let mut text = format!("pong from dom0 in {ms} ms");
            if res.status != Status::Done {
                text.push_str(&format!(" (status {}: {})", res.status, res.reason));
            }
            writeln!(console.out, "{text}").map_err(Error::Output)?;
            Ok(0)
        }
        Arrival::NoAnswer => {
            // Nothing should run `true` in dom0 long after the ping gave up.
            let withdrawn =
                files::remove_if_present(&dd.job_path(QueueDir::Pending, &job.id)).unwrap_or(false);
            Err(Error::NoAnswer {
                id: job.id.clone(),
                secs: PING_WAIT.as_secs(),
                left_queued: !withdrawn,
            })
        }
        Arrival::Cancelled(res) => {
            if res.is_some() {
                clean_queue(dd, &job.id, console);
            }
            Err(Error::Cancelled {
                id: job.id.clone(),
                result_shown: false,
            })
        }
    }
}

/// `qvm-remote result ID`: shows a result that arrived after its client stopped
/// waiting, or one already archived.
pub fn fetch_result(
    dd: &DataDir,
    id: &CommandId,
    show: &ShowOptions,
    console: &mut Console<'_>,
) -> Result<u8, Error> {
    if let Some(bytes) = read_result(dd, id)? {
        let key = load_key(dd)?;
        let res = verify(&bytes, &key, id)?;
        let code = res.client_exit_code();
        present(&View::from_result(&res), show, console)?;
        let (body, created) = job_text(dd, &key, id);
        finish(dd, &res, &body, created, code, console);
        return Ok(code);
    }
    match history::load(dd, id)? {
        Some(a) => {
            present(&View::from_archive(id, &a), show, console)?;
            Ok(a.exit)
        }
        None => Err(Error::NoResult { id: id.clone() }),
    }
}

/// Loads `auth.key`, telling a missing key apart from a refused one.
pub fn load_key(dd: &DataDir) -> Result<Key, Error> {
    let path = dd.key_path();
    if !files::exists(&path) {
        return Err(Error::NoKey { path });
    }
    Key::load(&path).map_err(Error::Key)
}

/// The command text and the command's stdin, from the words and stdin, each bounded.
fn read_inputs(opts: &RunOptions, console: &mut Console<'_>) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let (body, stdin) = if opts.words.is_empty() {
        if console.input_is_terminal {
            return Err(Error::NoCommand);
        }
        let body = read_bounded(console.input, "command text from stdin")?;
        (body, Vec::new())
    } else {
        let body = join_words(&opts.words);
        if body.len() > PROTOCOL_MAX_COMMAND {
            return Err(Error::TooLarge {
                what: "command text",
                max: PROTOCOL_MAX_COMMAND,
            });
        }
        let stdin = if opts.stdin_input {
            read_bounded(console.input, "stdin")?
        } else {
            Vec::new()
        };
        (body, stdin)
    };
    check_body(&body)?;
    Ok((body, stdin))
}

/// The words joined with single spaces, as ssh joins its command arguments.
pub fn join_words(words: &[std::ffi::OsString]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            body.push(b' ');
        }
        body.extend_from_slice(w.as_bytes());
    }
    body
}

/// Refuses command text dom0 would refuse anyway, before anything is queued.
pub fn check_body(body: &[u8]) -> Result<(), Error> {
    if body.is_empty() {
        return Err(Error::EmptyCommand);
    }
    if body.iter().any(|&b| job::is_forbidden_control(b)) {
        return Err(Error::ControlBytes);
    }
    Ok(())
}

/// Reads all of `input` up to the protocol's limit; one byte more is an error.
fn read_bounded(input: &mut dyn Read, what: &'static str) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    input
        .take(PROTOCOL_MAX_COMMAND as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(Error::Stdin)?;
    if buf.len() > PROTOCOL_MAX_COMMAND {
        return Err(Error::TooLarge {
            what,
            max: PROTOCOL_MAX_COMMAND,
        });
    }
    Ok(buf)
}

fn new_job(timeout: u64, body: Vec<u8>, stdin: Vec<u8>) -> Result<Job, Error> {
    Ok(Job {
        id: CommandId::generate(crate::sys::getpid()).map_err(Error::Id)?,
        created: time::unix_now(),
        timeout,
        body,
        stdin,
    })
}

/// Queues a job: `.<id>.tmp`, then the rename that makes it visible to the agent.
pub fn submit(dd: &DataDir, key: &Key, job: &Job) -> Result<(), Error> {
    let dir = dd.queue(QueueDir::Pending);
    let name = datadir::job_name(&job.id);
    files::write_atomic(
        &dir,
        &datadir::tmp_name(&job.id),
        &name,
        &job.encode(key),
        Durability::Buffered,
    )
    .map_err(|source| Error::Write {
        path: dir.join(name),
        source,
    })
}

/// How a wait ended.
enum Arrival {
    /// A verified result.
    Answered(JobResult),
    /// Nothing within the limit.
    NoAnswer,
    /// Interrupted; with the result if one came during the grace period.
    Cancelled(Option<JobResult>),
}

fn wait(
    dd: &DataDir,
    key: &Key,
    id: &CommandId,
    limit: Duration,
    quiet: bool,
    flag: &AtomicBool,
    console: &mut Console<'_>,
) -> Result<Arrival, Error> {
    let start = Instant::now();
    let mut next_progress = PROGRESS_EVERY;
    loop {
        if let Some(bytes) = read_result(dd, id)? {
            return verify(&bytes, key, id).map(Arrival::Answered);
        }
        if flag.swap(false, Ordering::SeqCst) {
            return cancel(dd, key, id, flag);
        }
        let elapsed = start.elapsed();
        if elapsed >= limit {
            return Ok(Arrival::NoAnswer);
        }
        if !quiet && elapsed >= next_progress {
            note(console, &format!("waiting… {}s", elapsed.as_secs()));
            next_progress = next_progress.saturating_add(PROGRESS_EVERY);
        }
        let step = if elapsed < FAST_POLL_FOR {
            FAST_POLL
        } else {
            SLOW_POLL
        };
        std::thread::sleep(step.min(limit.saturating_sub(elapsed)));
    }
}

fn cancel(dd: &DataDir, key: &Key, id: &CommandId, flag: &AtomicBool) -> Result<Arrival, Error> {
    // A job still in pending/ has not reached dom0: removing it is the surest cancel.
    // The agent claims by rename, so exactly one of the two wins.
    if files::remove_if_present(&dd.job_path(QueueDir::Pending, id)).unwrap_or(false) {
        return Ok(Arrival::Cancelled(None));
    }
    let dir = dd.queue(QueueDir::Pending);
    let name = datadir::cancel_name(id);
    let token = format!("{}\n", cancel_token(key, id));
    files::write_atomic(
        &dir,
        &format!(".{name}.tmp"),
        &name,
        token.as_bytes(),
        Durability::Buffered,
    )
    .map_err(|source| Error::Write {
        path: dir.join(&name),
        source,
    })?;
    let start = Instant::now();
    loop {
        if let Some(bytes) = read_result(dd, id)? {
            return verify(&bytes, key, id).map(|r| Arrival::Cancelled(Some(r)));
        }
        if flag.load(Ordering::SeqCst) || start.elapsed() >= CANCEL_GRACE {
            return Ok(Arrival::Cancelled(None));
        }
        std::thread::sleep(FAST_POLL);
    }
}

/// The result file's bytes, or `None` while there is none.
fn read_result(dd: &DataDir, id: &CommandId) -> Result<Option<Vec<u8>>, Error> {
    match files::read_regular(&dd.result_path(id), MAX_RESULT_FILE) {
        Ok(b) => Ok(Some(b)),
        Err(ReadError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Verifies a result's MAC and that it answers `id`.
pub fn verify(bytes: &[u8], key: &Key, id: &CommandId) -> Result<JobResult, Error> {
    let unverified = |why| Error::Unverified {
        id: id.clone(),
        why,
    };
    let res = JobResult::verify(bytes, key).map_err(|e| unverified(VerifyError::Result(e)))?;
    if res.id != *id {
        return Err(unverified(VerifyError::OtherJob(res.id)));
    }
    Ok(res)
}

/// The command text and creation time of `id`, from its job file if it is still there
/// and verifies; empty and unknown otherwise.
fn job_text(dd: &DataDir, key: &Key, id: &CommandId) -> (Vec<u8>, Option<u64>) {
    // Only the MAC matters here, not freshness: the job is ours and already answered.
    let limits = JobLimits {
        max_command: PROTOCOL_MAX_COMMAND,
        replay_window: u64::MAX,
        now: 0,
    };
    for q in [QueueDir::Running, QueueDir::Rejected, QueueDir::Pending] {
        if let Ok(bytes) = files::read_regular(&dd.job_path(q, id), MAX_JOB_FILE) {
            if let Ok(j) = job::verify(&bytes, key, &limits) {
                if j.id == *id {
                    return (j.body, Some(j.created));
                }
            }
        }
    }
    (Vec::new(), None)
}

/// A result as shown: from a verified result file or from the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The job.
    pub id: String,
    /// Its status word.
    pub status: String,
    /// The command's exit field.
    pub exit: u8,
    /// The killing signal, 0 if none.
    pub signal: u8,
    /// How long it ran.
    pub duration_ms: u64,
    /// stdout.
    pub stdout: Vec<u8>,
    /// stderr.
    pub stderr: Vec<u8>,
    /// `none`, `stdout`, `stderr` or `both`.
    pub truncated: String,
    /// Why, for statuses other than `done`.
    pub reason: String,
}

impl View {
    /// From a verified result.
    pub fn from_result(r: &JobResult) -> View {
        View {
            id: r.id.to_string(),
            status: r.status.as_str().to_string(),
            exit: r.exit,
            signal: r.signal,
            duration_ms: r.duration_ms,
            stdout: r.stdout.clone(),
            stderr: r.stderr.clone(),
            truncated: r.truncated.as_str().to_string(),
            reason: r.reason.clone(),
        }
    }

    /// From an archived run.
    pub fn from_archive(id: &CommandId, a: &history::Archived) -> View {
        let number = |k: &str| a.meta(k).parse::<u64>().unwrap_or(0);
        let small = |k: &str| a.meta(k).parse::<u8>().unwrap_or(0);
        let truncated = match a.meta("truncated") {
            "" => Truncated::None.as_str().to_string(),
            t => t.to_string(),
        };
        View {
            id: id.to_string(),
            status: a.meta("status").to_string(),
            exit: small("exit"),
            signal: small("signal"),
            duration_ms: number("duration_ms"),
            stdout: a.out.clone(),
            stderr: a.err.clone(),
            truncated,
            reason: a.meta("reason").to_string(),
        }
    }

    /// The `--json` object.
    pub fn json(&self) -> String {
        let (out, out_exact) = lossy(&self.stdout);
        let (err, err_exact) = lossy(&self.stderr);
        let mut o = json::Object::new()
            .str("id", &self.id)
            .str("status", &self.status)
            .uint("exit", u64::from(self.exit))
            .uint("signal", u64::from(self.signal))
            .uint("duration_ms", self.duration_ms)
            .str("stdout", &out)
            .str("stderr", &err)
            .str("truncated", &self.truncated);
        if !out_exact {
            o = o.bool("stdout_utf8", false);
        }
        if !err_exact {
            o = o.bool("stderr_utf8", false);
        }
        if !self.reason.is_empty() {
            o = o.str("reason", &self.reason);
        }
        o.finish()
    }
}

/// Bytes as text, and whether that was exact (valid UTF-8).
fn lossy(bytes: &[u8]) -> (Cow<'_, str>, bool) {
    let text = String::from_utf8_lossy(bytes);
    let exact = matches!(text, Cow::Borrowed(_));
    (text, exact)
}

/// Shows a result: its stdout and stderr bytes on ours, or one JSON object.
fn present(view: &View, show: &ShowOptions, console: &mut Console<'_>) -> Result<(), Error> {
    if show.json {
        let text = format!("{}\n", view.json());
        return ignore_broken_pipe(console.out.write_all(text.as_bytes()))
            .and_then(|()| ignore_broken_pipe(console.out.flush()))
            .map_err(Error::Output);
    }
    ignore_broken_pipe(
        console
            .out
            .write_all(&view.stdout)
            .and_then(|()| console.out.flush()),
    )
    .map_err(Error::Output)?;
    ignore_broken_pipe(console.err.write_all(&view.stderr)).map_err(Error::Output)?;
    if view.status != Status::Done.as_str() {
        note(console, &format!("{}: {}", view.status, view.reason));
    }
    if view.truncated != Truncated::None.as_str() && !view.truncated.is_empty() {
        note(
            console,
            &format!("output truncated ({}) at dom0's cap", view.truncated),
        );
    }
    Ok(())
}

/// A reader that went away (`qvm-remote cmd | head`) is not our failure: the run is
/// still archived and the exit code still the command's.
fn ignore_broken_pipe(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// After showing: archive, remove the queue files, log. Failures here cannot change
/// what the command did, so they are warnings, not errors.
fn finish(
    dd: &DataDir,
    res: &JobResult,
    body: &[u8],
    created: Option<u64>,
    code: u8,
    console: &mut Console<'_>,
) {
    let rec = Record {
        result: res,
        body,
        created,
        client_exit: code,
    };
    if let Err(e) = history::archive(dd, &rec) {
        // Without an archive the result file is the only copy: keep it.
        warn(
            console,
            &format!("not archived, result kept in the queue: {e}"),
        );
        return;
    }
    clean_queue(dd, &res.id, console);
    let line = history::audit_line(
        time::unix_now(),
        &res.id,
        res.status.as_str(),
        code,
        res.duration_ms,
        body,
    );
    warn_on_err(console, history::append_audit(dd, &line));
}

/// Removes a finished job's running entry, result and any leftover cancel request.
fn clean_queue(dd: &DataDir, id: &CommandId, console: &mut Console<'_>) {
    for path in [
        dd.job_path(QueueDir::Running, id),
        dd.result_path(id),
        dd.cancel_path(id),
    ] {
        if let Err(e) = files::remove_if_present(&path) {
            warn(console, &format!("{}: {e}", path.display()));
        }
    }
}

fn timing(res: &JobResult, started: Instant) -> String {
    format!(
        "job {} answered in {} ms (status {}, ran {} ms)",
        res.id,
        elapsed_ms(started),
        res.status,
        res.duration_ms
    )
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// `qvm-remote: <text>` on stderr. A failed write to stderr has nowhere to be reported.
fn note(console: &mut Console<'_>, text: &str) {
    let _ = writeln!(console.err, "qvm-remote: {text}");
}

fn warn(console: &mut Console<'_>, text: &str) {
    note(console, &format!("warning: {text}"));
}

fn warn_on_err(console: &mut Console<'_>, r: Result<(), Error>) {
    if let Err(e) = r {
        warn(console, &e.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn words_join_with_single_spaces() {
        let w = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(join_words(&w(&["ls"])), b"ls");
        assert_eq!(join_words(&w(&["echo", "a  b", "c"])), b"echo a  b c");
        assert_eq!(join_words(&w(&["", ""])), b" ");
        assert_eq!(join_words(&[]), b"");
    }

    #[test]
    fn bodies_dom0_would_refuse_are_refused_here() {
        assert!(check_body(b"ls\n\tx\r").is_ok());
        assert!(matches!(check_body(b""), Err(Error::EmptyCommand)));
        for b in [0u8, 7, 0x0b, 0x1b] {
            assert!(matches!(check_body(&[b'a', b]), Err(Error::ControlBytes)));
        }
    }

    #[test]
    fn bounded_input_holds_one_byte_past() {
        let at = vec![b'a'; PROTOCOL_MAX_COMMAND];
        assert_eq!(read_bounded(&mut &at[..], "stdin").unwrap().len(), at.len());
        let over = vec![b'a'; PROTOCOL_MAX_COMMAND + 1];
        assert!(matches!(
            read_bounded(&mut &over[..], "stdin"),
            Err(Error::TooLarge { what: "stdin", .. })
        ));
    }

    #[test]
    fn json_marks_lossy_output_and_adds_reason_only_when_set() {
        let mut v = View {
            id: "20261204-153000-4242-0123456789abcdef".into(),
            status: "done".into(),
            exit: 3,
            signal: 0,
            duration_ms: 5,
            stdout: b"hi\n".to_vec(),
            stderr: b"\xff".to_vec(),
            truncated: "none".into(),
            reason: String::new(),
        };
        assert_eq!(
            v.json(),
            r#"{"id": "20261204-153000-4242-0123456789abcdef", "status": "done", "exit": 3, "signal": 0, "duration_ms": 5, "stdout": "hi\n", "stderr": "\ufffd", "truncated": "none", "stderr_utf8": false}"#
        );
        v.reason = "policy".into();
        v.stderr.clear();
        assert!(v
            .json()
            .ends_with(r#""truncated": "none", "reason": "policy"}"#));
    }
}
