//! The client: submit a job, wait for its result, show it, archive it (DESIGN §2, §3,
//! §4 stream mode, §5).
//!
//! If a stream-mode agent listens on `agent.sock`, the client first watches its job
//! there (`WATCH`, answered `WATCHING`; the protocol is in [`super::sock`]), so the
//! agent relays the job's output from its first byte. It then writes the job as
//! `queue/pending/.<id>.tmp` (0600, `create_new`), renames it to
//! `queue/pending/<id>.job` and sends `WAKE`. Live `OUT`/`ERR` chunks are printed at
//! once, stdout and stderr apart, stdout flushed per chunk; `DONE` says the result file
//! is there. Without a socket (poll mode, no agent yet) or once the agent closes the
//! connection, the client polls for `queue/results/<id>.result`: every [`FAST_POLL`] for
//! the first [`FAST_POLL_FOR`], then every [`SLOW_POLL`]. It gives up after the job's
//! timeout plus [`WAIT_MARGIN`], noting `waiting… Ns` every [`PROGRESS_EVERY`] in which
//! nothing was shown (unless `-q`).
//!
//! A result is shown only if its MAC verifies with `auth.key` and it names our job; a
//! result that fails is left in place for inspection and none of its bytes reach the
//! terminal. What was streamed must be a prefix of each of the result's stdout and
//! stderr; the client then prints the rest from the result (normally nothing). If it is
//! not a prefix, the client says so and exits 125: the live bytes were not what dom0
//! signed. `--json` and `ping` print nothing live.
//!
//! Ctrl-C (or SIGTERM) while waiting withdraws a job the agent has not claimed yet;
//! otherwise it writes `queue/pending/<id>.cancel` holding the cancel token, wakes the
//! agent so the `CANCEL` goes out at once, and waits up to [`CANCEL_GRACE`] for dom0's
//! `cancelled` result. Either way the client exits 130; a second Ctrl-C exits at once.
//! A client killed outright leaves its job to run on: the agent stores the result
//! whether or not anyone watches, for `qvm-remote result ID`.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::cli::{RunOptions, ShowOptions};
use super::datadir::{self, DataDir, QueueDir};
use super::files::{self, Durability, ReadError};
use super::history::{self, Record};
use super::sock::{self, ReplyKind, Request};
use super::{Console, Error, VerifyError};
use crate::id::CommandId;
use crate::json;
use crate::keys::Key;
use crate::proto::job::{self, JobLimits, MAX_JOB_FILE, PROTOCOL_MAX_COMMAND};
use crate::proto::result::MAX_RESULT_FILE;
use crate::proto::{cancel_token, Job, JobResult, Status, Truncated};
use crate::sys::Readiness;
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
/// How long the agent may take to answer `WATCH` (or to take a `WAKE`) before the
/// client does without it and polls the result file.
pub const LINK_ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a client that found its result file keeps reading live output the agent
/// sent before it (normally none is left, and `DONE` is already there).
pub const LINK_DRAIN: Duration = Duration::from_secs(1);
/// Bytes read from the agent's socket at a time.
pub const LINK_READ: usize = 16 * 1024;
/// Most live output kept per stream: no result can hold more, so past it the stream
/// cannot be a prefix of the result.
pub const MAX_STREAMED: usize = MAX_RESULT_FILE;
/// Exit code of a cancelled command (DESIGN §5).
pub const EXIT_CANCELLED: u8 = 130;
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
    let link = Link::watch(dd, &job.id);
    submit(dd, &key, &job)?;
    let started = Instant::now();
    if let Some(link) = &link {
        link.wake();
    }
    if opts.verbose {
        let how = if link.is_some() {
            "live through agent.sock"
        } else {
            "no agent socket: polling for the result"
        };
        note(
            console,
            &format!("job {} queued (timeout {}s, {how})", job.id, job.timeout),
        );
    }
    let limit = Duration::from_secs(job.timeout).saturating_add(WAIT_MARGIN);
    let mut streamed = Streamed::new(!opts.json);
    let waiting = Waiting {
        dd,
        key: &key,
        id: &job.id,
        limit,
        quiet: opts.quiet,
        flag,
    };
    let arrival = waiting.wait(link, &mut streamed, console)?;
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
            show_rest(dd, &res, &job, &streamed, &show, code, console)?;
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
            show_rest(dd, &res, &job, &streamed, &show, EXIT_CANCELLED, console)?;
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
                EXIT_CANCELLED,
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

/// Shows what the live stream has not shown yet, archives the run and cleans the
/// queue. The streamed bytes must be a prefix of the verified result's; if they are
/// not, nothing more is shown and the run fails, since what the user saw was not what
/// dom0 signed.
fn show_rest(
    dd: &DataDir,
    res: &JobResult,
    job: &Job,
    streamed: &Streamed,
    show: &ShowOptions,
    code: u8,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    if !streamed.is_prefix_of(res) {
        finish(dd, res, &job.body, Some(job.created), code, console);
        return Err(Error::StreamMismatch { id: res.id.clone() });
    }
    present(
        &View::from_result(res),
        show,
        (streamed.out.len(), streamed.err.len()),
        console,
    )?;
    finish(dd, res, &job.body, Some(job.created), code, console);
    Ok(())
}

/// `qvm-remote ping`: any result that verifies proves dom0 answers.
pub fn ping(dd: &DataDir, show: &ShowOptions, console: &mut Console<'_>) -> Result<u8, Error> {
    let key = load_key(dd)?;
    let flag = crate::sys::install_termination_flag().map_err(Error::Signals)?;
    let job = new_job(PING_TIMEOUT, PING_BODY.to_vec(), Vec::new())?;
    let link = Link::watch(dd, &job.id);
    submit(dd, &key, &job)?;
    let started = Instant::now();
    if let Some(link) = &link {
        link.wake();
    }
    if show.verbose {
        note(console, &format!("job {} queued", job.id));
    }
    let waiting = Waiting {
        dd,
        key: &key,
        id: &job.id,
        limit: PING_WAIT,
        quiet: show.quiet,
        flag,
    };
    match waiting.wait(link, &mut Streamed::new(false), console)? {
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
        present(&View::from_result(&res), show, (0, 0), console)?;
        let (body, created) = job_text(dd, &key, id);
        finish(dd, &res, &body, created, code, console);
        return Ok(code);
    }
    match history::load(dd, id)? {
        Some(a) => {
            present(&View::from_archive(id, &a), show, (0, 0), console)?;
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

/// What a client waits for, and how.
struct Waiting<'a> {
    dd: &'a DataDir,
    key: &'a Key,
    id: &'a CommandId,
    /// Give up after this long.
    limit: Duration,
    /// No progress notes.
    quiet: bool,
    /// Set by SIGINT/SIGTERM.
    flag: &'a AtomicBool,
}

impl Waiting<'_> {
    /// Waits for the result, showing live output from `link` as it comes. Without a
    /// link (or once it closes) the result file is polled: every [`FAST_POLL`] for the
    /// first [`FAST_POLL_FOR`], then every [`SLOW_POLL`]; with one, `DONE` says when to
    /// read it, and the file is still looked at every [`SLOW_POLL`] in case the agent
    /// dropped this watcher.
    fn wait(
        &self,
        mut link: Option<Link>,
        streamed: &mut Streamed,
        console: &mut Console<'_>,
    ) -> Result<Arrival, Error> {
        let start = Instant::now();
        let mut next_progress = PROGRESS_EVERY;
        let mut cancel_by: Option<Instant> = None;
        let mut last_look: Option<Instant> = None;
        loop {
            let look = link.is_none() || last_look.is_none_or(|t| t.elapsed() >= SLOW_POLL);
            if look {
                last_look = Some(Instant::now());
                if let Some(bytes) = read_result(self.dd, self.id)? {
                    let res = verify(&bytes, self.key, self.id)?;
                    // Every chunk the agent relayed precedes its DONE: take them all,
                    // so what is shown and checked is the whole stream.
                    if let Some(link) = link.take() {
                        link.drain(streamed, console)?;
                    }
                    return Ok(match cancel_by {
                        Some(_) => Arrival::Cancelled(Some(res)),
                        None => Arrival::Answered(res),
                    });
                }
            }
            if self.flag.swap(false, Ordering::SeqCst) {
                // A second Ctrl-C does not wait for dom0's answer.
                if cancel_by.is_some() || self.withdraw() {
                    return Ok(Arrival::Cancelled(None));
                }
                self.request_cancel(link.as_ref())?;
                cancel_by = Some(Instant::now() + CANCEL_GRACE);
            }
            let elapsed = start.elapsed();
            match cancel_by {
                Some(by) if Instant::now() >= by => return Ok(Arrival::Cancelled(None)),
                Some(_) => {}
                None if elapsed >= self.limit => return Ok(Arrival::NoAnswer),
                None => {}
            }
            if elapsed >= next_progress {
                // Only while nothing is shown: a note in the middle of live stderr
                // would corrupt it.
                if !self.quiet && streamed.quiet_for(PROGRESS_EVERY) {
                    note(console, &format!("waiting… {}s", elapsed.as_secs()));
                }
                next_progress = next_progress.saturating_add(PROGRESS_EVERY);
            }
            let step = if link.is_some() || elapsed >= FAST_POLL_FOR {
                SLOW_POLL
            } else {
                FAST_POLL
            };
            let step = step.min(self.limit.saturating_sub(elapsed).max(FAST_POLL));
            let Some(l) = link.as_mut() else {
                std::thread::sleep(step);
                continue;
            };
            match l.next(step) {
                Some(LinkEvent::Chunk(kind, bytes)) => streamed.take(kind, &bytes, console)?,
                Some(LinkEvent::Done) => {
                    // The result is stored: read it now, and poll from here on.
                    link = None;
                    last_look = None;
                }
                Some(LinkEvent::Closed) => link = None,
                None => {}
            }
        }
    }

    /// Withdraws a job still in pending/: it has not reached dom0, so removing it is
    /// the surest cancel. The agent claims by rename, so exactly one of the two wins.
    fn withdraw(&self) -> bool {
        files::remove_if_present(&self.dd.job_path(QueueDir::Pending, self.id)).unwrap_or(false)
    }

    /// Writes the signed `<id>.cancel` and wakes the agent so it sends it at once.
    fn request_cancel(&self, link: Option<&Link>) -> Result<(), Error> {
        let dir = self.dd.queue(QueueDir::Pending);
        let name = datadir::cancel_name(self.id);
        let token = format!("{}\n", cancel_token(self.key, self.id));
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
        match link {
            Some(l) => l.wake(),
            None => wake_agent(self.dd),
        }
        Ok(())
    }
}

/// Knocks once on `agent.sock`, if an agent listens there.
fn wake_agent(dd: &DataDir) {
    if let Some(mut s) = sock::connect(&dd.agent_socket()) {
        let _ = s.set_write_timeout(Some(LINK_ANSWER_TIMEOUT));
        let _ = s.write_all(&Request::Wake.encode());
    }
}

/// What the agent said on a [`Link`].
enum LinkEvent {
    /// A chunk of live output.
    Chunk(ReplyKind, Vec<u8>),
    /// The result file is stored.
    Done,
    /// The agent closed the connection (or broke the protocol): poll the file.
    Closed,
}

/// One step of reading a [`Link`].
enum Got {
    /// A whole reply.
    Reply(ReplyKind, Vec<u8>),
    /// Nothing whole yet.
    Nothing,
    /// The connection ended or broke the protocol.
    Ended,
}

/// A connection to a stream-mode agent that watches our job. It is read by the
/// waiting thread itself, with `poll`, so a signal or the clock is noticed while
/// waiting and the agent's output is read only as fast as we can show it.
struct Link {
    stream: UnixStream,
    /// Bytes read but not yet a whole reply: at most a header and a chunk, plus one
    /// read.
    pending: Vec<u8>,
}

impl Link {
    /// Connects to `agent.sock` and watches `id`, before the job is written, so the
    /// agent relays its output from the first byte. `None` when there is no agent to
    /// talk to; the client then polls the result file as in poll mode.
    fn watch(dd: &DataDir, id: &CommandId) -> Option<Link> {
        let mut stream = sock::connect(&dd.agent_socket())?;
        stream
            .set_write_timeout(Some(LINK_ANSWER_TIMEOUT))
            .and_then(|()| stream.write_all(&Request::Watch(id.clone()).encode()))
            .ok()?;
        let mut link = Link {
            stream,
            pending: Vec::new(),
        };
        let deadline = Instant::now() + LINK_ANSWER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match link.poll(left) {
                Got::Reply(ReplyKind::Watching, _) => return Some(link),
                Got::Nothing if !left.is_zero() => {}
                _ => return None,
            }
        }
    }

    /// The next thing the agent says within `limit`; `None` when it said nothing.
    fn next(&mut self, limit: Duration) -> Option<LinkEvent> {
        Some(match self.poll(limit) {
            Got::Nothing => return None,
            Got::Reply(kind @ (ReplyKind::Out | ReplyKind::Err), bytes) => {
                LinkEvent::Chunk(kind, bytes)
            }
            Got::Reply(ReplyKind::Done, _) => LinkEvent::Done,
            Got::Reply(ReplyKind::Watching, _) | Got::Ended => LinkEvent::Closed,
        })
    }

    /// A whole reply already read, or else what one read within `limit` brings.
    fn poll(&mut self, limit: Duration) -> Got {
        if let Some(got) = self.take() {
            return got;
        }
        match crate::sys::wait_ready(self.stream.as_fd(), Readiness::Readable, limit) {
            Ok(true) => {}
            // Nothing yet, or a signal: the caller looks at its flag and the clock.
            Ok(false) => return Got::Nothing,
            Err(_) => return Got::Ended,
        }
        let mut bytes = [0u8; LINK_READ];
        match (&self.stream).read(&mut bytes) {
            Ok(0) => return Got::Ended,
            Ok(n) => self
                .pending
                .extend_from_slice(bytes.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Got::Nothing,
            Err(_) => return Got::Ended,
        }
        self.take().unwrap_or(Got::Nothing)
    }

    /// A whole reply from the bytes already read; `None` while there is none.
    fn take(&mut self) -> Option<Got> {
        match sock::take_reply(&mut self.pending) {
            Ok(Some((kind, bytes))) => Some(Got::Reply(kind, bytes)),
            Ok(None) => None,
            // A broken reply ends the link; the result file is still the authority.
            Err(_) => Some(Got::Ended),
        }
    }

    /// Takes the chunks still coming, up to `DONE` or the connection's end, for at
    /// most [`LINK_DRAIN`]: the result file is there, so an agent that says nothing
    /// more only delays the end.
    fn drain(mut self, streamed: &mut Streamed, console: &mut Console<'_>) -> Result<(), Error> {
        let deadline = Instant::now() + LINK_DRAIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(LinkEvent::Chunk(kind, bytes)) => streamed.take(kind, &bytes, console)?,
                Some(LinkEvent::Done | LinkEvent::Closed) => return Ok(()),
                None if left.is_zero() => return Ok(()),
                None => {}
            }
        }
    }

    /// Asks the agent to rescan the queue now. A failure only costs latency: the
    /// agent rescans on its own every few hundred milliseconds.
    fn wake(&self) {
        let _ = (&self.stream).write_all(&Request::Wake.encode());
    }
}

/// The live output shown so far, kept to check it against the signed result.
struct Streamed {
    /// Whether chunks are printed (not with `--json`, not for `ping`).
    show: bool,
    out: Vec<u8>,
    err: Vec<u8>,
    /// More arrived than any result can hold: it cannot be a prefix.
    overflow: bool,
    /// Our stdout's reader has gone (`| head`): stop writing to it.
    out_closed: bool,
    last_shown: Option<Instant>,
}

impl Streamed {
    fn new(show: bool) -> Streamed {
        Streamed {
            show,
            out: Vec::new(),
            err: Vec::new(),
            overflow: false,
            out_closed: false,
            last_shown: None,
        }
    }

    /// Shows a chunk at once (stdout flushed, as ssh does) and remembers it.
    fn take(
        &mut self,
        kind: ReplyKind,
        bytes: &[u8],
        console: &mut Console<'_>,
    ) -> Result<(), Error> {
        let kept = match kind {
            ReplyKind::Err => &mut self.err,
            _ => &mut self.out,
        };
        if kept.len().saturating_add(bytes.len()) > MAX_STREAMED {
            self.overflow = true;
            return Ok(());
        }
        kept.extend_from_slice(bytes);
        if !self.show {
            return Ok(());
        }
        self.last_shown = Some(Instant::now());
        if kind == ReplyKind::Err {
            return ignore_broken_pipe(console.err.write_all(bytes)).map_err(Error::Output);
        }
        if self.out_closed {
            return Ok(());
        }
        match console
            .out
            .write_all(bytes)
            .and_then(|()| console.out.flush())
        {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.out_closed = true;
                Ok(())
            }
            other => other.map_err(Error::Output),
        }
    }

    /// True if nothing was shown during the last `d`.
    fn quiet_for(&self, d: Duration) -> bool {
        self.last_shown.is_none_or(|t| t.elapsed() >= d)
    }

    /// Whether what was streamed is a prefix of each of the result's outputs.
    fn is_prefix_of(&self, res: &JobResult) -> bool {
        !self.overflow && res.stdout.starts_with(&self.out) && res.stderr.starts_with(&self.err)
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

/// Shows a result: its stdout and stderr bytes on ours, or one JSON object. `shown`
/// is how many bytes of stdout and stderr the live stream has shown already (a prefix
/// of each, checked by the caller); only the rest is written.
fn present(
    view: &View,
    show: &ShowOptions,
    shown: (usize, usize),
    console: &mut Console<'_>,
) -> Result<(), Error> {
    if show.json {
        let text = format!("{}\n", view.json());
        return ignore_broken_pipe(console.out.write_all(text.as_bytes()))
            .and_then(|()| ignore_broken_pipe(console.out.flush()))
            .map_err(Error::Output);
    }
    let rest_out = view.stdout.get(shown.0..).unwrap_or_default();
    let rest_err = view.stderr.get(shown.1..).unwrap_or_default();
    ignore_broken_pipe(
        console
            .out
            .write_all(rest_out)
            .and_then(|()| console.out.flush()),
    )
    .map_err(Error::Output)?;
    ignore_broken_pipe(console.err.write_all(rest_err)).map_err(Error::Output)?;
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
