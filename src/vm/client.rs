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
//!
//! The submit-and-wait core prints nothing: [`start`] queues a job and
//! [`Running::wait`] hands live chunks and waiting ticks to a [`Live`] sink and
//! returns the verified result, with cancel driven by an `AtomicBool`. The terminal is
//! one sink (here); the MCP server's progress notifications are another
//! (`super::mcp`), so both share one wait loop, one cancel path and one prefix check.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::cli::{RunOptions, ShowOptions};
use super::datadir::{self, DataDir, QueueDir};
use super::files::{self, ReadError};
use super::history::{self, Record};
use super::sock::{self, ReplyKind, Request};
use super::{Console, Error, VerifyError};
use crate::atomic::{self, Durability};
use crate::id::CommandId;
use crate::json;
use crate::keys::Key;
use crate::proto::job::{self, JobLimits, MAX_JOB_FILE, PROTOCOL_MAX_COMMAND};
use crate::proto::result::MAX_RESULT_FILE;
use crate::proto::{cancel_token, Job, JobResult, Status, Truncated};
use crate::sys::Readiness;
use crate::time;

/// Poll interval right after submitting, when a fast dom0 answers. A look is one failed
/// `open`, so polling this often costs well under 1% of a core while it saves the
/// waiting user most of a tick on every command.
pub const FAST_POLL: Duration = Duration::from_millis(2);
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
    let running = start(dd, &key, &job)?;
    let started = running.started();
    if opts.verbose {
        let how = if running.is_live() {
            "live through agent.sock"
        } else {
            "no agent socket: polling for the result"
        };
        note(
            console,
            &format!("job {} queued (timeout {}s, {how})", job.id, job.timeout),
        );
    }
    let limit = wait_limit(job.timeout);
    let mut terminal = Terminal::new(console, !opts.json, opts.quiet);
    let (arrival, streamed) = running.wait(limit, flag, &mut terminal)?;
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
            log_unanswered(dd, &job, "no-answer", 125, started, console);
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
            log_unanswered(dd, &job, "cancelled", EXIT_CANCELLED, started, console);
            Err(Error::Cancelled {
                id: job.id.clone(),
                result_shown: false,
            })
        }
    }
}

/// How long a client waits for a job with this timeout: dom0 needs time to kill the
/// job, and the agent to bring the result.
pub fn wait_limit(timeout: u64) -> Duration {
    Duration::from_secs(timeout).saturating_add(WAIT_MARGIN)
}

/// Writes the `audit.log` line of a run that ended without a result to show
/// (`no-answer`, `cancelled`).
pub fn log_unanswered(
    dd: &DataDir,
    job: &Job,
    what: &str,
    code: u8,
    started: Instant,
    console: &mut Console<'_>,
) {
    let line = history::audit_line(
        time::unix_now(),
        &job.id,
        what,
        code,
        elapsed_ms(started),
        &job.body,
    );
    warn_on_err(console, history::append_audit(dd, &line));
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
    present(&View::from_result(res), show, streamed.shown(), console)?;
    finish(dd, res, &job.body, Some(job.created), code, console);
    Ok(())
}

/// `qvm-remote ping`: any result that verifies proves dom0 answers.
pub fn ping(dd: &DataDir, show: &ShowOptions, console: &mut Console<'_>) -> Result<u8, Error> {
    let key = load_key(dd)?;
    let flag = crate::sys::install_termination_flag().map_err(Error::Signals)?;
    let job = ping_job()?;
    let running = start(dd, &key, &job)?;
    let started = running.started();
    if show.verbose {
        note(console, &format!("job {} queued", job.id));
    }
    let mut terminal = Terminal::new(console, false, show.quiet);
    let (arrival, _) = running.wait(PING_WAIT, flag, &mut terminal)?;
    match settle_ping(dd, &job, arrival, started, console) {
        Pong::Answered { ms, result } => {
            let mut text = format!("pong from dom0 in {ms} ms");
            if result.status != Status::Done {
                text.push_str(&format!(" (status {}: {})", result.status, result.reason));
            }
            writeln!(console.out, "{text}").map_err(Error::Output)?;
            Ok(0)
        }
        Pong::NoAnswer { left_queued } => Err(Error::NoAnswer {
            id: job.id.clone(),
            secs: PING_WAIT.as_secs(),
            left_queued,
        }),
        Pong::Cancelled => Err(Error::Cancelled {
            id: job.id.clone(),
            result_shown: false,
        }),
    }
}

/// A `ping` job: `true`, with [`PING_TIMEOUT`].
pub fn ping_job() -> Result<Job, Error> {
    new_job(PING_TIMEOUT, PING_BODY.to_vec(), Vec::new())
}

/// How a ping ended, once the queue is tidied.
#[derive(Debug)]
pub enum Pong {
    /// dom0 answered (any verified result proves that) after `ms` milliseconds.
    Answered {
        /// Milliseconds from queueing to the verified result.
        ms: u64,
        /// The result (its status need not be `done`: a policy may deny `true`).
        result: JobResult,
    },
    /// No answer within [`PING_WAIT`].
    NoAnswer {
        /// The job could not be withdrawn: the agent has sent it.
        left_queued: bool,
    },
    /// Cancelled while waiting.
    Cancelled,
}

/// Tidies up after a ping: a ping is not a command the user ran, so it leaves no
/// history, only a log line; one that got no answer is withdrawn, since nothing should
/// run `true` in dom0 long after the ping gave up.
pub fn settle_ping(
    dd: &DataDir,
    job: &Job,
    arrival: Arrival,
    started: Instant,
    console: &mut Console<'_>,
) -> Pong {
    match arrival {
        Arrival::Answered(result) => {
            let ms = elapsed_ms(started);
            clean_queue(dd, &job.id, console);
            let line = history::audit_line(
                time::unix_now(),
                &job.id,
                result.status.as_str(),
                result.client_exit_code(),
                ms,
                &job.body,
            );
            warn_on_err(console, history::append_audit(dd, &line));
            Pong::Answered { ms, result }
        }
        Arrival::NoAnswer => Pong::NoAnswer {
            left_queued: !withdraw(dd, &job.id),
        },
        Arrival::Cancelled(res) => {
            if res.is_some() {
                clean_queue(dd, &job.id, console);
            }
            Pong::Cancelled
        }
    }
}

/// Withdraws a job still in `pending/`: it has not reached dom0, so removing it is the
/// surest cancel. The agent claims by rename, so exactly one of the two wins.
pub fn withdraw(dd: &DataDir, id: &CommandId) -> bool {
    atomic::remove_if_present(&dd.job_path(QueueDir::Pending, id)).unwrap_or(false)
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

/// A result as it can be shown without changing any file: the verified result file
/// if it is still in the queue, else the archive; `None` when neither exists.
/// (`qvm-remote result ID` also archives a result it finds in the queue.)
pub fn lookup_result(dd: &DataDir, id: &CommandId) -> Result<Option<View>, Error> {
    if let Some(bytes) = read_result(dd, id)? {
        let key = load_key(dd)?;
        return Ok(Some(View::from_result(&verify(&bytes, &key, id)?)));
    }
    Ok(history::load(dd, id)?.map(|a| View::from_archive(id, &a)))
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

/// A new job with a fresh id, created now.
pub fn new_job(timeout: u64, body: Vec<u8>, stdin: Vec<u8>) -> Result<Job, Error> {
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
    atomic::write_atomic(
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
#[derive(Debug)]
pub enum Arrival {
    /// A verified result.
    Answered(JobResult),
    /// Nothing within the limit.
    NoAnswer,
    /// Interrupted; with the result if one came during the grace period.
    Cancelled(Option<JobResult>),
}

/// Which of a job's output streams a live chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The command's stdout.
    Stdout,
    /// The command's stderr.
    Stderr,
}

/// Where a waiting client's live events go: the terminal for `qvm-remote CMD` and
/// `ping`, progress notifications for `qvm-remote mcp`. The wait itself shows nothing,
/// so every front end shares one wait loop, one cancel path and one prefix check.
pub trait Live {
    /// A chunk of the job's live output, in order. What arrives is a prefix of each
    /// stream; the signed result, checked afterwards, is the authority.
    fn output(&mut self, stream: Stream, bytes: &[u8]) -> Result<(), Error>;
    /// Called at least every [`SLOW_POLL`] while waiting, with the time since the job
    /// was queued, so the sink can say that it still waits.
    fn tick(&mut self, elapsed: Duration);
}

/// Queues `job` and wakes the agent. If a stream-mode agent listens on `agent.sock`,
/// the job is watched there first, so its live output is relayed from the first byte.
pub fn start<'a>(dd: &'a DataDir, key: &'a Key, job: &Job) -> Result<Running<'a>, Error> {
    let link = Link::watch(dd, &job.id);
    submit(dd, key, job)?;
    let started = Instant::now();
    if let Some(link) = &link {
        link.wake();
    }
    Ok(Running {
        dd,
        key,
        id: job.id.clone(),
        link,
        started,
    })
}

/// A job [`start`] queued, to be waited for.
pub struct Running<'a> {
    dd: &'a DataDir,
    key: &'a Key,
    id: CommandId,
    /// The agent's connection watching the job, if an agent listens.
    link: Option<Link>,
    started: Instant,
}

impl Running<'_> {
    /// Whether live output can come (an agent watches the job on `agent.sock`).
    pub fn is_live(&self) -> bool {
        self.link.is_some()
    }

    /// When the job was queued.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits for the verified result, handing live output to `live` as it comes, for
    /// at most `limit`. Setting `cancel` cancels the job: one still in `pending/` is
    /// withdrawn; otherwise the signed `<id>.cancel` is written and the agent woken,
    /// and the wait goes on up to [`CANCEL_GRACE`] for dom0's `cancelled` result.
    /// Setting it again while that grace runs stops waiting at once.
    ///
    /// Without a link (or once it closes) the result file is polled: every
    /// [`FAST_POLL`] for the first [`FAST_POLL_FOR`], then every [`SLOW_POLL`]; with
    /// one, `DONE` says when to read it, and the file is still looked at every
    /// [`SLOW_POLL`] in case the agent dropped this watcher.
    pub fn wait(
        self,
        limit: Duration,
        cancel: &AtomicBool,
        live: &mut dyn Live,
    ) -> Result<(Arrival, Streamed), Error> {
        let mut streamed = Streamed::default();
        let mut link = self.link;
        let start = self.started;
        let mut cancel_by: Option<Instant> = None;
        let mut last_look: Option<Instant> = None;
        loop {
            let look = link.is_none() || last_look.is_none_or(|t| t.elapsed() >= SLOW_POLL);
            if look {
                last_look = Some(Instant::now());
                if let Some(bytes) = read_result(self.dd, &self.id)? {
                    let res = verify(&bytes, self.key, &self.id)?;
                    // Every chunk the agent relayed precedes its DONE: take them all,
                    // so what is shown and checked is the whole stream.
                    if let Some(link) = link.take() {
                        link.drain(&mut streamed, live)?;
                    }
                    let arrival = match cancel_by {
                        Some(_) => Arrival::Cancelled(Some(res)),
                        None => Arrival::Answered(res),
                    };
                    return Ok((arrival, streamed));
                }
            }
            if cancel.swap(false, Ordering::SeqCst) {
                // A second cancel does not wait for dom0's answer.
                if cancel_by.is_some() || withdraw(self.dd, &self.id) {
                    return Ok((Arrival::Cancelled(None), streamed));
                }
                request_cancel(self.dd, self.key, &self.id, link.as_ref())?;
                cancel_by = Some(Instant::now() + CANCEL_GRACE);
            }
            let elapsed = start.elapsed();
            match cancel_by {
                Some(by) if Instant::now() >= by => {
                    return Ok((Arrival::Cancelled(None), streamed))
                }
                Some(_) => {}
                None if elapsed >= limit => return Ok((Arrival::NoAnswer, streamed)),
                None => {}
            }
            live.tick(elapsed);
            let step = if link.is_some() || elapsed >= FAST_POLL_FOR {
                SLOW_POLL
            } else {
                FAST_POLL
            };
            let step = step.min(limit.saturating_sub(elapsed).max(FAST_POLL));
            let Some(l) = link.as_mut() else {
                std::thread::sleep(step);
                continue;
            };
            match l.next(step) {
                Some(LinkEvent::Chunk(kind, bytes)) => streamed.take(kind, &bytes, live)?,
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
}

/// Writes the signed `<id>.cancel` and wakes the agent so it sends it at once.
fn request_cancel(
    dd: &DataDir,
    key: &Key,
    id: &CommandId,
    link: Option<&Link>,
) -> Result<(), Error> {
    let dir = dd.queue(QueueDir::Pending);
    let name = datadir::cancel_name(id);
    let token = format!("{}\n", cancel_token(key, id));
    atomic::write_atomic(
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
        None => wake_agent(dd),
    }
    Ok(())
}

/// The terminal as a [`Live`] sink: chunks printed at once, stdout flushed per chunk
/// as ssh does, and `waiting… Ns` after each [`PROGRESS_EVERY`] in which nothing was
/// shown (unless `-q`).
struct Terminal<'c, 'a> {
    console: &'c mut Console<'a>,
    /// Whether chunks are printed (not with `--json`, not for `ping`).
    show: bool,
    /// `-q`: no waiting notes.
    quiet: bool,
    /// Our stdout's reader has gone (`| head`): stop writing to it.
    out_closed: bool,
    last_shown: Option<Instant>,
    next_note: Duration,
}

impl<'c, 'a> Terminal<'c, 'a> {
    fn new(console: &'c mut Console<'a>, show: bool, quiet: bool) -> Terminal<'c, 'a> {
        Terminal {
            console,
            show,
            quiet,
            out_closed: false,
            last_shown: None,
            next_note: PROGRESS_EVERY,
        }
    }
}

impl Live for Terminal<'_, '_> {
    fn output(&mut self, stream: Stream, bytes: &[u8]) -> Result<(), Error> {
        if !self.show {
            return Ok(());
        }
        self.last_shown = Some(Instant::now());
        if stream == Stream::Stderr {
            return ignore_broken_pipe(self.console.err.write_all(bytes)).map_err(Error::Output);
        }
        if self.out_closed {
            return Ok(());
        }
        match self
            .console
            .out
            .write_all(bytes)
            .and_then(|()| self.console.out.flush())
        {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.out_closed = true;
                Ok(())
            }
            other => other.map_err(Error::Output),
        }
    }

    fn tick(&mut self, elapsed: Duration) {
        if elapsed < self.next_note {
            return;
        }
        // Only while nothing is shown: a note in the middle of live stderr would
        // corrupt it.
        let silent = self
            .last_shown
            .is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
        if !self.quiet && silent {
            note(self.console, &format!("waiting… {}s", elapsed.as_secs()));
        }
        self.next_note = self.next_note.saturating_add(PROGRESS_EVERY);
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
    fn drain(mut self, streamed: &mut Streamed, live: &mut dyn Live) -> Result<(), Error> {
        let deadline = Instant::now() + LINK_DRAIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(LinkEvent::Chunk(kind, bytes)) => streamed.take(kind, &bytes, live)?,
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

/// The live output received so far, kept to check it against the signed result.
#[derive(Debug, Default)]
pub struct Streamed {
    out: Vec<u8>,
    err: Vec<u8>,
    /// More arrived than any result can hold: it cannot be a prefix.
    overflow: bool,
}

impl Streamed {
    /// Remembers a chunk and hands it to `live`; past [`MAX_STREAMED`] nothing more is
    /// kept or shown.
    fn take(&mut self, kind: ReplyKind, bytes: &[u8], live: &mut dyn Live) -> Result<(), Error> {
        let (kept, stream) = match kind {
            ReplyKind::Err => (&mut self.err, Stream::Stderr),
            _ => (&mut self.out, Stream::Stdout),
        };
        if kept.len().saturating_add(bytes.len()) > MAX_STREAMED {
            self.overflow = true;
            return Ok(());
        }
        kept.extend_from_slice(bytes);
        live.output(stream, bytes)
    }

    /// Whether what was streamed is a prefix of each of the result's outputs.
    pub fn is_prefix_of(&self, res: &JobResult) -> bool {
        !self.overflow && res.stdout.starts_with(&self.out) && res.stderr.starts_with(&self.err)
    }

    /// How many bytes of stdout and stderr arrived live.
    pub fn shown(&self) -> (usize, usize) {
        (self.out.len(), self.err.len())
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
        self.object().finish()
    }

    /// The `--json` object, to finish or to nest (the MCP server's
    /// `structuredContent`). Output that is not UTF-8 is shown lossily and flagged
    /// with `stdout_utf8: false` / `stderr_utf8: false`.
    pub fn object(&self) -> json::Object {
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
        o
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
        // DESIGN §5: the reason alone, as `qvm-remote: <reason>`; the status word
        // stands in only when dom0 gave no reason.
        let reason = if view.reason.is_empty() {
            view.status.as_str()
        } else {
            view.reason.as_str()
        };
        note(console, reason);
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
pub fn finish(
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
pub fn clean_queue(dd: &DataDir, id: &CommandId, console: &mut Console<'_>) {
    for path in [
        dd.job_path(QueueDir::Running, id),
        dd.result_path(id),
        dd.cancel_path(id),
    ] {
        if let Err(e) = atomic::remove_if_present(&path) {
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
