//! `qvm-remote agent [--once]`: the VM end of dom0's channel (DESIGN §4).
//!
//! dom0 starts it through `qvm-run --pass-io`; stdin and stdout carry frames and
//! stderr is discarded, so diagnostics go to `audit.log`. The session:
//!
//! 1. In stream mode (no `--once`) the agent binds `agent.sock` (see [`super::relay`]
//!    and, for the protocol, [`super::sock`]).
//! 2. The agent sends `HELLO 2 qvm-remote <version>`.
//! 3. A reader thread takes dom0's frames: each `RESULT` is stored as
//!    `queue/results/<id>.result` (tmp + rename, fsynced), announced to the job's
//!    watcher on the socket (`DONE`) and then `ACK`ed; `OUT`/`ERR` chunks go to the
//!    job's watcher, if it has one that may see them; `BYE` or end of input ends the
//!    session cleanly; anything else ends it with an error. Relaying never blocks
//!    this thread.
//! 4. The agent re-sends each `queue/running/<id>.job` that has no result yet (a
//!    previous session claimed it and ended before the answer), then claims pending
//!    jobs in name order (rename into `queue/running/`) and sends each as a `JOB` frame,
//!    then each pending `<id>.cancel` as a `CANCEL` frame, then `IDLE`.
//! 5. With `--once` (poll mode) it sends nothing more and waits for the session to end.
//!    Otherwise (stream mode) it rescans whenever a client knocks on the socket
//!    (`WATCH` or `WAKE`) and at least every [`AGENT_RESCAN`], and sends `IDLE` after
//!    every batch that sent something. When the session ends it removes the socket.
//!
//! A queue entry that cannot be a valid job never goes out: a name that is not
//! `<id>.job` or `<id>.cancel`, anything but a regular file, a second copy of an id
//! already sent, or a file whose header names another id is moved to `queue/rejected/`
//! and logged. An oversized or unreadable job file named for a valid id is the client's
//! job, so it also gets a local `rejected` result (signed with `auth.key` when it loads)
//! and its client an answer. The agent never verifies a result's MAC (the client does)
//! and needs no key otherwise.
//!
//! All writes to stdout go through one mutex, one whole frame at a time, so the reader
//! thread's `ACK`s never land inside a `JOB`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::datadir::{self, DataDir, QueueDir};
use super::files::{self, ReadError};
use super::queue;
use super::relay::{self, Bound, Relay};
use super::sock::ReplyKind;
use crate::atomic::{self, Durability};
use crate::id::CommandId;
use crate::keys::Key;
use crate::proto::frame::write_frame;
use crate::proto::job::{self, JobHeader, MAX_JOB_FILE};
use crate::proto::{self, escape_line, FrameError, FrameReader, FrameType, JobResult, Status};
use crate::time;
use crate::version::VERSION;

/// How often a stream-mode agent looks for new jobs without being woken: clients wake
/// it through `agent.sock`, so this only matters for jobs queued by other means (an
/// older client, a copied file, a client that found no socket).
pub const AGENT_RESCAN: Duration = Duration::from_millis(500);
/// Largest cancel file: a 64-hex token, a newline, and room for nothing else much.
pub const MAX_CANCEL_FILE: usize = 200;
/// Length of a cancel token in hex.
pub const TOKEN_HEX: usize = 64;
/// After a write to dom0 fails, how long to wait for the reader's verdict: dom0 may
/// have said `BYE` and closed the pipe, which is a clean end, not an error.
pub const CHANNEL_GRACE: Duration = Duration::from_secs(1);
/// How much of a file name a log line carries.
pub const MAX_NAME_LOGGED: usize = 120;

/// Poll or stream mode (DESIGN §4, `QVM_REMOTE_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `--once`: one batch, then wait for `BYE`.
    Once,
    /// Keep sending jobs as they appear.
    Stream,
}

/// Why a session ended abnormally (the agent then exits 1).
#[derive(Debug)]
pub enum AgentError {
    /// Writing to dom0 failed.
    Channel(io::Error),
    /// dom0 sent a frame that could not be read.
    Frame(FrameError),
    /// dom0 sent a frame type it must not send.
    Unexpected(FrameType),
    /// A result could not be stored.
    Store {
        /// The result file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// A queue directory could not be listed.
    Scan {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        source: String,
    },
    /// The reader thread ended without a verdict.
    ReaderGone,
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Channel(e) => write!(f, "writing to dom0: {e}"),
            AgentError::Frame(e) => write!(f, "from dom0: {e}"),
            AgentError::Unexpected(k) => {
                write!(f, "dom0 sent a {} frame, which it must not send", k.name())
            }
            AgentError::Store { path, source } => {
                write!(f, "storing {}: {source}", path.display())
            }
            AgentError::Scan { path, source } => write!(f, "{}: {source}", path.display()),
            AgentError::ReaderGone => f.write_str("the channel reader stopped unexpectedly"),
        }
    }
}

impl std::error::Error for AgentError {}

/// The `HELLO` payload: protocol, then our version.
pub fn hello_payload() -> Vec<u8> {
    format!("{} qvm-remote {VERSION}", proto::PROTOCOL_VERSION).into_bytes()
}

/// Runs one session over `input` (frames from dom0) and `output` (frames to dom0).
/// Returns when the session ends: `Ok` for `BYE` or end of input.
pub fn serve<R, W>(dd: &DataDir, input: R, output: W, mode: Mode) -> Result<(), AgentError>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let out = Arc::new(Mutex::new(output));
    let (tx, rx) = mpsc::channel();
    let wake_pending = Arc::new(AtomicBool::new(false));
    // Bound before anything else, so a client started with the session finds it; kept
    // until the session ends, when dropping it removes the socket file.
    let (relay, _bound) = match mode {
        Mode::Once => (None, None),
        Mode::Stream => {
            let relay = Arc::new(Relay::new(
                dd.clone(),
                waker(tx.clone(), Arc::clone(&wake_pending)),
                log,
            ));
            let bound = open_socket(dd, &relay);
            (Some(relay), bound)
        }
    };
    let reader_dd = dd.clone();
    let reader_out = Arc::clone(&out);
    let reader_relay = relay.clone();
    let sent = send(&out, FrameType::Hello, &hello_payload());
    let mut verdict_tx = VerdictSender { tx: Some(tx) };
    thread::spawn(move || {
        let end = read_loop(&reader_dd, input, &reader_out, reader_relay.as_deref());
        if let Err(e) = &end {
            log(&reader_dd, &format!("session error: {e}"));
        }
        verdict_tx.send(end);
    });
    let events = Events {
        rx,
        wake_pending: &wake_pending,
    };
    match sent.and_then(|()| send_loop(dd, &out, mode, &events, relay.as_deref())) {
        // The reader ended the session, and logged why if it was an error.
        Ok(verdict) => verdict,
        Err(e) => {
            if matches!(e, AgentError::Channel(_)) {
                if let Some(verdict) = events.verdict_within(CHANNEL_GRACE) {
                    return verdict;
                }
            }
            log(dd, &format!("session error: {e}"));
            Err(e)
        }
    }
}

/// How the reader thread ended the session (its errors are logged already).
type Verdict = Result<(), AgentError>;

/// What wakes the sending side.
enum Event {
    /// The reader thread ended the session.
    Ended(Verdict),
    /// A client asked for a rescan through `agent.sock`.
    Wake,
}

/// The reader thread's way to hand over its verdict; a reader that unwinds without
/// one still ends the session instead of leaving the sender waiting forever.
struct VerdictSender {
    tx: Option<mpsc::Sender<Event>>,
}

impl VerdictSender {
    fn send(&mut self, verdict: Verdict) {
        if let Some(tx) = self.tx.take() {
            // The receiver is gone only if the session already ended.
            let _ = tx.send(Event::Ended(verdict));
        }
    }
}

impl Drop for VerdictSender {
    fn drop(&mut self) {
        self.send(Err(AgentError::ReaderGone));
    }
}

/// The wake-up callback for the socket: at most one `Wake` waits in the channel at a
/// time, however many clients knock, so a flood of `WAKE` lines costs one rescan.
fn waker(tx: mpsc::Sender<Event>, pending: Arc<AtomicBool>) -> Box<dyn Fn() + Send + Sync> {
    Box::new(move || {
        if !pending.swap(true, Ordering::SeqCst) {
            let _ = tx.send(Event::Wake);
        }
    })
}

/// Binds `agent.sock` and starts serving it; without it the agent still works (the
/// periodic rescan finds jobs and clients poll their result files), so a failure is
/// logged, not fatal.
fn open_socket(dd: &DataDir, relay: &Arc<Relay>) -> Option<Bound> {
    let mut bound = match relay::bind(dd) {
        Ok(b) => b,
        Err(e) => {
            log(dd, &format!("socket: {e}"));
            return None;
        }
    };
    if bound.took_over {
        log(dd, "socket: took agent.sock over from another agent");
    } else if bound.replaced {
        log(dd, "socket: replaced a stale agent.sock");
    }
    if let Err(e) = relay.serve(&mut bound) {
        log(dd, &format!("socket: cannot start its thread: {e}"));
        return None;
    }
    Some(bound)
}

/// The sending side's view of the events.
struct Events<'a> {
    rx: mpsc::Receiver<Event>,
    wake_pending: &'a AtomicBool,
}

impl Events<'_> {
    /// Waits up to `limit` for the next event; `Ok(None)` when the time is up.
    fn next(&self, limit: Duration) -> Result<Option<Event>, AgentError> {
        match self.rx.recv_timeout(limit) {
            Ok(Event::Wake) => {
                // Cleared before the rescan, so a knock during the rescan makes another.
                self.wake_pending.store(false, Ordering::SeqCst);
                Ok(Some(Event::Wake))
            }
            Ok(ended) => Ok(Some(ended)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(AgentError::ReaderGone),
        }
    }

    /// The reader's verdict, skipping wake-ups, if it comes within `limit`.
    fn verdict_within(&self, limit: Duration) -> Option<Verdict> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Ok(Some(Event::Ended(v))) => return Some(v),
                Ok(Some(Event::Wake)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

/// Sends the queue; returns the reader's verdict when the session ends, or the
/// sender's own error.
fn send_loop<W: Write>(
    dd: &DataDir,
    out: &Mutex<W>,
    mode: Mode,
    events: &Events<'_>,
    relay: Option<&Relay>,
) -> Result<Verdict, AgentError> {
    let mut scanner = Scanner {
        dd,
        relay,
        reported: HashSet::new(),
    };
    scanner.resend_running(out)?;
    scanner.send_pending(out)?;
    send(out, FrameType::Idle, b"")?;
    let rescan = match mode {
        // Poll mode: one batch, then only the reader's verdict matters.
        Mode::Once => None,
        Mode::Stream => Some(AGENT_RESCAN),
    };
    loop {
        match events.next(rescan.unwrap_or(Duration::MAX))? {
            Some(Event::Ended(verdict)) => return Ok(verdict),
            Some(Event::Wake) | None if rescan.is_some() => {
                if scanner.send_pending(out)? > 0 {
                    send(out, FrameType::Idle, b"")?;
                }
            }
            Some(Event::Wake) | None => {}
        }
    }
}

/// Writes one frame under the output lock. A poisoned lock only means another thread
/// panicked mid-frame; the session is over then anyway, and the write will say so.
fn send<W: Write>(out: &Mutex<W>, kind: FrameType, payload: &[u8]) -> Result<(), AgentError> {
    let mut w = out.lock().unwrap_or_else(PoisonError::into_inner);
    write_frame(&mut *w, kind, payload).map_err(AgentError::Channel)
}

/// Appends `<time> agent <text>` to `audit.log`. There is nowhere to report a failure:
/// dom0 discards stderr.
fn log(dd: &DataDir, text: &str) {
    let line = format!("{} agent {text}", time::iso8601(time::unix_now()));
    let _ = files::append_line(&dd.audit_log(), &line);
}

/// The reader thread's work: dom0's frames until the session ends.
fn read_loop<R: Read, W: Write>(
    dd: &DataDir,
    input: R,
    out: &Mutex<W>,
    relay: Option<&Relay>,
) -> Verdict {
    let mut reader = FrameReader::new(input);
    loop {
        let frame = match reader.read() {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => return Err(AgentError::Frame(e)),
        };
        match frame.kind {
            FrameType::Bye => return Ok(()),
            FrameType::Result => store_result(dd, &frame.payload, out, relay)?,
            FrameType::Out | FrameType::Err => {
                let kind = if frame.kind == FrameType::Out {
                    ReplyKind::Out
                } else {
                    ReplyKind::Err
                };
                match split_chunk(&frame.payload) {
                    Some((id, chunk)) => {
                        if let Some(relay) = relay {
                            relay.chunk(&id, kind, chunk);
                        }
                    }
                    None => log(
                        dd,
                        &format!("ignored an {} frame without a valid id", frame.kind.name()),
                    ),
                }
            }
            other => return Err(AgentError::Unexpected(other)),
        }
    }
}

/// Splits an `OUT`/`ERR` payload into its validated id and the chunk bytes.
fn split_chunk(payload: &[u8]) -> Option<(CommandId, &[u8])> {
    let nl = payload.iter().position(|&b| b == b'\n')?;
    let id = CommandId::from_bytes(payload.get(..nl)?).ok()?;
    Some((id, payload.get(nl + 1..)?))
}

/// Stores a `RESULT` and acknowledges it. The MAC is not checked here: the client does
/// that, with the key the agent may not even be able to read.
fn store_result<W: Write>(
    dd: &DataDir,
    payload: &[u8],
    out: &Mutex<W>,
    relay: Option<&Relay>,
) -> Verdict {
    let Some(id) = proto::result::peek_id(payload) else {
        log(
            dd,
            &format!(
                "ignored a RESULT of {} bytes without a readable id",
                payload.len()
            ),
        );
        return Ok(());
    };
    if files::exists(&dd.history_entry(&id)) {
        // Its client has archived it already: dom0 is re-sending an answer whose ACK it
        // missed. Storing it again would leave an orphan in results/.
        return send(out, FrameType::Ack, id.as_str().as_bytes());
    }
    let dir = dd.queue(QueueDir::Results);
    let name = datadir::result_name(&id);
    // The watcher hears of the result as soon as it can be read; the ACK waits until
    // it is on disk, since dom0 forgets it then.
    atomic::write_atomic_visible_early(&dir, &datadir::tmp_name(&id), &name, payload, || {
        if let Some(relay) = relay {
            relay.result_stored(&id);
        }
    })
    .map_err(|source| AgentError::Store {
        path: dir.join(&name),
        source,
    })?;
    send(out, FrameType::Ack, id.as_str().as_bytes())?;
    log(dd, &format!("stored result id={id}"));
    Ok(())
}

/// What a queue entry's name says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// `.*.tmp`: being written.
    Tmp,
    /// `<id>.job`.
    Job(CommandId),
    /// `<id>.cancel`.
    Cancel(CommandId),
    /// Anything else.
    Other,
}

fn classify(name: &[u8]) -> Entry {
    if datadir::is_tmp_name(name) {
        Entry::Tmp
    } else if let Some(stem) = name.strip_suffix(b".job") {
        CommandId::from_bytes(stem).map_or(Entry::Other, Entry::Job)
    } else if let Some(stem) = name.strip_suffix(b".cancel") {
        CommandId::from_bytes(stem).map_or(Entry::Other, Entry::Cancel)
    } else {
        Entry::Other
    }
}

/// Walks the queue and sends what may go out.
struct Scanner<'a> {
    dd: &'a DataDir,
    /// Stream mode's watchers, told which jobs go out fresh and which again.
    relay: Option<&'a Relay>,
    /// Entries whose move to rejected/ failed: logged once, not at every rescan.
    reported: HashSet<(&'static str, OsString)>,
}

impl Scanner<'_> {
    fn list(&self, q: QueueDir) -> Result<Vec<OsString>, AgentError> {
        queue::list(&self.dd.queue(q)).map_err(|e| AgentError::Scan {
            path: self.dd.queue(q),
            source: e.to_string(),
        })
    }

    /// Re-sends claimed jobs that have no result yet. dom0 runs an id at most once, so
    /// a job it already has is not run again.
    fn resend_running<W: Write>(&mut self, out: &Mutex<W>) -> Result<usize, AgentError> {
        let mut sent = 0;
        for name in self.list(QueueDir::Running)? {
            match classify(name.as_bytes()) {
                Entry::Tmp => {}
                Entry::Job(id) => {
                    if files::exists(&self.dd.result_path(&id)) {
                        continue;
                    }
                    if let Some(bytes) = self.load_job(QueueDir::Running, &name, &id) {
                        if let Some(relay) = self.relay {
                            relay.job_resent(&id);
                        }
                        send(out, FrameType::Job, &bytes)?;
                        sent += 1;
                    }
                }
                Entry::Cancel(_) | Entry::Other => {
                    self.reject(QueueDir::Running, &name, "not a job name");
                }
            }
        }
        Ok(sent)
    }

    /// Claims and sends pending jobs, then pending cancels; returns how many frames
    /// went out.
    fn send_pending<W: Write>(&mut self, out: &Mutex<W>) -> Result<usize, AgentError> {
        let mut sent = 0;
        let mut cancels = Vec::new();
        for name in self.list(QueueDir::Pending)? {
            match classify(name.as_bytes()) {
                Entry::Tmp => {}
                Entry::Job(id) => {
                    if self.claim(&name, &id, out)? {
                        sent += 1;
                    }
                }
                // After the jobs, so a cancel never overtakes the job it cancels.
                Entry::Cancel(id) => cancels.push((name, id)),
                Entry::Other => {
                    self.reject(
                        QueueDir::Pending,
                        &name,
                        "not a <id>.job or <id>.cancel name",
                    );
                }
            }
        }
        for (name, id) in cancels {
            if self.send_cancel(&name, &id, out)? {
                sent += 1;
            }
        }
        Ok(sent)
    }

    fn claim<W: Write>(
        &mut self,
        name: &OsString,
        id: &CommandId,
        out: &Mutex<W>,
    ) -> Result<bool, AgentError> {
        let dd = self.dd;
        if files::exists(&dd.result_path(id)) || files::exists(&dd.job_path(QueueDir::Running, id))
        {
            self.reject(
                QueueDir::Pending,
                name,
                "duplicate: this id was already sent (it is in running/ or results/)",
            );
            return Ok(false);
        }
        let Some(bytes) = self.load_job(QueueDir::Pending, name, id) else {
            return Ok(false);
        };
        // The bytes checked are the bytes sent: they were read once, before the rename.
        match fs::rename(
            dd.queue(QueueDir::Pending).join(name),
            dd.job_path(QueueDir::Running, id),
        ) {
            Ok(()) => {}
            // Its client withdrew it (Ctrl-C) first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                self.report_once(QueueDir::Pending, name, &format!("cannot claim: {e}"));
                return Ok(false);
            }
        }
        if let Some(relay) = self.relay {
            relay.job_claimed(id);
        }
        send(out, FrameType::Job, &bytes)?;
        log(dd, &format!("sent job id={id} bytes={}", bytes.len()));
        Ok(true)
    }

    /// Reads a job file named for `id`, or rejects it and returns `None`.
    fn load_job(&mut self, q: QueueDir, name: &OsString, id: &CommandId) -> Option<Vec<u8>> {
        let path = self.dd.queue(q).join(name);
        let read = files::open_regular(&path)
            .and_then(|(file, meta)| files::read_open(&path, file, &meta, MAX_JOB_FILE));
        let bytes = match read {
            Ok(b) => b,
            Err(ReadError::NotFound { .. }) => return None,
            Err(ReadError::NotRegular { kind, .. }) => {
                let why = format!("job entry is a {kind}, not a regular file");
                self.reject(q, name, &why);
                self.local_result(id, &why);
                return None;
            }
            Err(ReadError::TooLarge { size, .. }) => {
                let why = format!("job file too large ({size} bytes)");
                self.reject(q, name, &why);
                self.local_result(id, &why);
                return None;
            }
            Err(e @ ReadError::Io { .. }) => {
                let why = format!("job file unreadable ({e})");
                self.reject(q, name, &why);
                self.local_result(id, "job file unreadable");
                return None;
            }
        };
        if job::peek_id(&bytes).as_ref() != Some(id) {
            // No local result: the header may name someone else's job.
            self.reject(q, name, "its header does not name the id in its file name");
            return None;
        }
        // dom0 ends the session on a job whose header cannot be parsed (DESIGN §4), and
        // this entry would be sent again at every new session: it never leaves here.
        if let Err(e) = JobHeader::parse(&bytes) {
            let why = e.to_string();
            self.reject(q, name, &why);
            self.local_result(id, &why);
            return None;
        }
        Some(bytes)
    }

    fn send_cancel<W: Write>(
        &mut self,
        name: &OsString,
        id: &CommandId,
        out: &Mutex<W>,
    ) -> Result<bool, AgentError> {
        let path = self.dd.queue(QueueDir::Pending).join(name);
        let bytes = match files::read_regular(&path, MAX_CANCEL_FILE) {
            Ok(b) => b,
            Err(ReadError::NotFound { .. }) => return Ok(false),
            Err(e) => {
                self.reject(QueueDir::Pending, name, &format!("bad cancel file: {e}"));
                return Ok(false);
            }
        };
        let token = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
        let is_token = token.len() == TOKEN_HEX
            && token.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !is_token {
            self.reject(QueueDir::Pending, name, "not a cancel token");
            return Ok(false);
        }
        let mut payload = Vec::with_capacity(id.as_str().len() + 1 + TOKEN_HEX);
        payload.extend_from_slice(id.as_str().as_bytes());
        payload.push(b'\n');
        payload.extend_from_slice(token);
        send(out, FrameType::Cancel, &payload)?;
        if let Err(e) = fs::remove_file(&path) {
            self.report_once(QueueDir::Pending, name, &format!("cannot remove: {e}"));
        }
        log(self.dd, &format!("sent cancel id={id}"));
        Ok(true)
    }

    /// Moves an entry to `queue/rejected/` (same name, replacing an older one) and logs
    /// why.
    fn reject(&mut self, q: QueueDir, name: &OsString, why: &str) {
        let from = self.dd.queue(q).join(name);
        let to = self.dd.queue(QueueDir::Rejected).join(name);
        match fs::rename(&from, &to) {
            Ok(()) => log(
                self.dd,
                &format!(
                    "rejected queue/{}/{}: {why}",
                    q.name(),
                    escape_line(name.as_bytes(), MAX_NAME_LOGGED)
                ),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                self.report_once(q, name, &format!("{why}; cannot move it to rejected/: {e}"))
            }
        }
    }

    /// Logs a problem with an entry that stays where it is, once per session.
    fn report_once(&mut self, q: QueueDir, name: &OsString, why: &str) {
        if self.reported.insert((q.name(), name.clone())) {
            log(
                self.dd,
                &format!(
                    "left queue/{}/{}: {why}",
                    q.name(),
                    escape_line(name.as_bytes(), MAX_NAME_LOGGED)
                ),
            );
        }
    }

    /// Answers a job that cannot be sent, so its client is not left waiting.
    fn local_result(&mut self, id: &CommandId, reason: &str) {
        let key = match Key::load(&self.dd.key_path()) {
            Ok(k) => k,
            Err(e) => {
                log(self.dd, &format!("no local result for id={id}: {e}"));
                return;
            }
        };
        let bytes = JobResult::refusal(id.clone(), Status::Rejected, reason).encode(&key);
        let dir = self.dd.queue(QueueDir::Results);
        let name = datadir::result_name(id);
        match atomic::write_atomic(
            &dir,
            &datadir::tmp_name(id),
            &name,
            &bytes,
            Durability::Buffered,
        ) {
            Ok(()) => {
                if let Some(relay) = self.relay {
                    relay.result_stored(id);
                }
                log(self.dd, &format!("local result id={id}: {reason}"));
            }
            Err(e) => log(self.dd, &format!("no local result for id={id}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified_only_with_valid_ids() {
        let id = "20261204-153000-4242-0123456789abcdef";
        let parsed = CommandId::parse(id).unwrap();
        let table: Vec<(String, Entry)> = vec![
            (format!("{id}.job"), Entry::Job(parsed.clone())),
            (format!("{id}.cancel"), Entry::Cancel(parsed)),
            (format!(".{id}.tmp"), Entry::Tmp),
            ("bad.job".into(), Entry::Other),
            ("20261204-153000-1-ZZZZ.job".into(), Entry::Other),
            (format!("{id}.job.bak"), Entry::Other),
            (format!("{id}.result"), Entry::Other),
            (format!("x{id}.job"), Entry::Other),
            (".job".into(), Entry::Other),
            ("".into(), Entry::Other),
        ];
        for (name, want) in table {
            assert_eq!(classify(name.as_bytes()), want, "{name}");
        }
    }

    #[test]
    fn hello_names_protocol_2() {
        let h = String::from_utf8(hello_payload()).unwrap();
        assert!(h.starts_with("2 qvm-remote "), "{h}");
        assert!(h.len() <= crate::proto::frame::MAX_HELLO);
    }
}
