//! Background tasks (shared/DESIGN.md §8; issue 6): long operations such as a backup, a
//! dom0 update, a template install or a command typed in Execute run here, each as one
//! argv through [`runner`]. A call returns the task's id at once; `GET /api/tasks/ID`
//! and the event stream `GET /api/tasks/ID/events` report its progress and output,
//! and `POST /api/tasks/ID/cancel` kills its process group.
//!
//! Bounds: at most [`MAX_RUNNING`] tasks run at once (one more is refused, never
//! queued), at most [`MAX_KEPT`] are remembered, each keeps its last
//! [`MAX_TASK_OUTPUT`] bytes of output (older chunks are dropped and counted). A task
//! started from Execute is *watched*: when no page has looked at it for
//! [`UNWATCHED_LIMIT`] (the page was closed), it is cancelled, so closing the page kills
//! the command; a backup keeps running without a page.
//!
//! Progress is the last `NN%` (or `NN.N%`) a task printed, which is what `qvm-backup`,
//! `dnf` and `qvm-template` print.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::http;
use super::runner::{self, Ending, Spec, StopRequest};
use crate::exec::Stream;
use crate::json::{Array, Object};

/// Most tasks running at once.
pub const MAX_RUNNING: usize = 4;
/// Most tasks remembered (running and finished); the oldest finished ones go first.
pub const MAX_KEPT: usize = 32;
/// Output bytes kept per task; older chunks are dropped.
pub const MAX_TASK_OUTPUT: usize = 2 * 1024 * 1024;
/// A watched task nobody has looked at for this long is cancelled.
pub const UNWATCHED_LIMIT: Duration = Duration::from_secs(15);
/// Longest one event stream stays open; the browser's EventSource then reconnects
/// with `Last-Event-ID` and misses nothing. Bounded so a stream never holds one of
/// the panel's few workers for long.
pub const MAX_EVENT_STREAM: Duration = Duration::from_secs(25);
/// A comment line is sent this often on a quiet stream, so a closed page is noticed.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Longest time limit a task may be given.
pub const MAX_TASK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How often a waiting event stream looks at the stop flag.
const EVENT_WAIT: Duration = Duration::from_millis(250);

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Still running.
    Running,
    /// Exited 0.
    Done,
    /// Exited non-zero or was killed by a signal.
    Failed,
    /// Cancelled (by the user, or because its page went away).
    Cancelled,
    /// Hit its time limit.
    TimedOut,
    /// Could not be started.
    Error,
}

impl Status {
    /// The name used in the API.
    pub fn name(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::TimedOut => "timeout",
            Status::Error => "error",
        }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// A short machine name: `exec`, `backup`, `update`, …
    pub kind: &'static str,
    /// A one-line human title.
    pub title: String,
    /// The argv.
    pub argv: Vec<String>,
    /// stdin bytes (a backup passphrase, a file being pushed).
    pub stdin: Vec<u8>,
    /// Time limit.
    pub timeout: Duration,
    /// Cancel when no page has looked at it for [`UNWATCHED_LIMIT`].
    pub watched: bool,
}

/// One task.
pub struct Task {
    /// `t` + 16 hex.
    pub id: String,
    /// See [`TaskSpec::kind`].
    pub kind: &'static str,
    /// See [`TaskSpec::title`].
    pub title: String,
    /// See [`TaskSpec::argv`].
    pub argv: Vec<String>,
    /// Unix ms when it started.
    pub started_ms: u64,
    watched: bool,
    cancel: AtomicBool,
    kill_now: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    status: Status,
    code: Option<i32>,
    signal: Option<i32>,
    progress: Option<u64>,
    chunks: VecDeque<Chunk>,
    next_seq: u64,
    kept_bytes: usize,
    dropped_bytes: u64,
    last_watched: Instant,
    finished_ms: Option<u64>,
    message: String,
}

struct Chunk {
    seq: u64,
    stream: Stream,
    bytes: Vec<u8>,
}

/// Why a task could not be started.
#[derive(Debug)]
pub enum TaskError {
    /// [`MAX_RUNNING`] tasks are running.
    Busy,
    /// The argv was refused.
    Refused(runner::RunError),
    /// No id or thread could be made.
    Io(io::Error),
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskError::Busy => write!(f, "{MAX_RUNNING} tasks are already running"),
            TaskError::Refused(e) => write!(f, "{e}"),
            TaskError::Io(e) => write!(f, "cannot start the task: {e}"),
        }
    }
}

impl std::error::Error for TaskError {}

/// Called once when a task ends (the panel writes it to the audit log).
pub type OnEnd = dyn Fn(&Task, &str) + Send + Sync;

/// All tasks.
pub struct Tasks {
    list: Mutex<Vec<Arc<Task>>>,
    running: Arc<AtomicU64>,
    on_end: Arc<OnEnd>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Whether `s` looks like a task id.
pub fn is_task_id(s: &str) -> bool {
    s.len() == 17
        && s.starts_with('t')
        && s.bytes()
            .skip(1)
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Tasks {
    /// No tasks; `on_end` is told about each task's end.
    pub fn new(on_end: Arc<OnEnd>) -> Tasks {
        Tasks {
            list: Mutex::new(Vec::new()),
            running: Arc::new(AtomicU64::new(0)),
            on_end,
        }
    }

    /// Starts a task.
    pub fn start(&self, spec: TaskSpec) -> Result<Arc<Task>, TaskError> {
        runner::check_argv(&spec.argv).map_err(TaskError::Refused)?;
        let mut rnd = [0u8; 8];
        crate::rand::fill(&mut rnd).map_err(TaskError::Io)?;
        let task = Arc::new(Task {
            id: format!("t{}", qvm_remote_hmac::hex::encode(&rnd)),
            kind: spec.kind,
            title: spec.title.clone(),
            argv: spec.argv.clone(),
            started_ms: crate::time::unix_now_ms(),
            watched: spec.watched,
            cancel: AtomicBool::new(false),
            kill_now: AtomicBool::new(false),
            state: Mutex::new(State {
                status: Status::Running,
                code: None,
                signal: None,
                progress: None,
                chunks: VecDeque::new(),
                next_seq: 1,
                kept_bytes: 0,
                dropped_bytes: 0,
                last_watched: Instant::now(),
                finished_ms: None,
                message: String::new(),
            }),
            changed: Condvar::new(),
        });
        {
            let mut list = lock(&self.list);
            if self.running.load(Ordering::SeqCst) >= MAX_RUNNING as u64 {
                return Err(TaskError::Busy);
            }
            self.running.fetch_add(1, Ordering::SeqCst);
            while list.len() >= MAX_KEPT {
                match list.iter().position(|t| !t.is_running()) {
                    Some(i) => {
                        list.remove(i);
                    }
                    None => break,
                }
            }
            list.push(Arc::clone(&task));
        }
        let t = Arc::clone(&task);
        let on_end = Arc::clone(&self.on_end);
        let running = Arc::clone(&self.running);
        let spawned = thread::Builder::new()
            .name("panel-task".into())
            .spawn(move || {
                supervise(&t, &spec);
                running.fetch_sub(1, Ordering::SeqCst);
                let summary = t.summary();
                on_end(&t, &summary);
            });
        if let Err(e) = spawned {
            self.running.fetch_sub(1, Ordering::SeqCst);
            task.finish(
                Status::Error,
                None,
                None,
                format!("cannot start a thread: {e}"),
            );
            return Err(TaskError::Io(e));
        }
        Ok(task)
    }

    /// The task with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Task>> {
        lock(&self.list).iter().find(|t| t.id == id).cloned()
    }

    /// Every remembered task, newest first.
    pub fn list(&self) -> Vec<Arc<Task>> {
        let mut v: Vec<Arc<Task>> = lock(&self.list).clone();
        v.reverse();
        v
    }

    /// The panel is shutting down: every running task's process group gets SIGKILL
    /// now, and this waits up to `limit` for their supervisors to see them end.
    pub fn kill_all(&self, limit: Duration) {
        for t in lock(&self.list).iter() {
            t.kill_now.store(true, Ordering::SeqCst);
        }
        let deadline = Instant::now() + limit;
        while self.running() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many tasks are running.
    pub fn running(&self) -> u64 {
        self.running.load(Ordering::SeqCst)
    }
}

fn supervise(task: &Task, spec: &TaskSpec) {
    let run_spec = Spec {
        argv: &spec.argv,
        stdin: &spec.stdin,
        timeout: spec.timeout.min(MAX_TASK_TIMEOUT),
        max_output: 0,
        keep_output: false,
    };
    let stop = || {
        if task.kill_now.load(Ordering::SeqCst) {
            return StopRequest::Kill;
        }
        if task.cancel.load(Ordering::SeqCst) {
            return StopRequest::Terminate;
        }
        if task.watched && lock(&task.state).last_watched.elapsed() > UNWATCHED_LIMIT {
            task.cancel.store(true, Ordering::SeqCst);
            lock(&task.state).message = "nobody was watching (the page was closed)".into();
            return StopRequest::Terminate;
        }
        StopRequest::Continue
    };
    // Output is kept by the task, bounded there, not by the runner.
    let result = runner::run(&run_spec, &stop, &|stream, bytes| task.push(stream, bytes));
    match result {
        Ok(out) => {
            let status = match out.ending {
                Ending::TimedOut => Status::TimedOut,
                Ending::Cancelled => Status::Cancelled,
                Ending::Finished if out.code == Some(0) => Status::Done,
                Ending::Finished => Status::Failed,
            };
            task.finish(status, out.code, out.signal, out.describe());
        }
        Err(e) => task.finish(Status::Error, None, None, e.to_string()),
    }
}

impl Task {
    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        lock(&self.state).status == Status::Running
    }

    /// The current status.
    pub fn status(&self) -> Status {
        lock(&self.state).status
    }

    /// Asks it to stop: SIGTERM to its group, SIGKILL a few seconds later.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Notes that a page is looking at it.
    pub fn touch(&self) {
        lock(&self.state).last_watched = Instant::now();
    }

    fn push(&self, stream: Stream, bytes: &[u8]) {
        let mut st = lock(&self.state);
        if let Some(p) = last_percent(bytes) {
            st.progress = Some(p);
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.kept_bytes += bytes.len();
        st.chunks.push_back(Chunk {
            seq,
            stream,
            bytes: bytes.to_vec(),
        });
        while st.kept_bytes > MAX_TASK_OUTPUT {
            match st.chunks.pop_front() {
                Some(old) => {
                    st.kept_bytes -= old.bytes.len();
                    st.dropped_bytes += old.bytes.len() as u64;
                }
                None => break,
            }
        }
        drop(st);
        self.changed.notify_all();
    }

    fn finish(&self, status: Status, code: Option<i32>, signal: Option<i32>, how: String) {
        let mut st = lock(&self.state);
        st.status = status;
        st.code = code;
        st.signal = signal;
        st.finished_ms = Some(crate::time::unix_now_ms());
        if status == Status::Done {
            st.progress = Some(100);
        }
        if st.message.is_empty() {
            st.message = how;
        } else {
            st.message = format!("{how}: {}", st.message);
        }
        drop(st);
        self.changed.notify_all();
    }

    /// One line for the audit log: status and how it ended.
    pub fn summary(&self) -> String {
        let st = lock(&self.state);
        format!("{} ({})", st.status.name(), st.message)
    }

    /// The task as JSON, with the output chunks after `since` (a sequence number).
    pub fn to_json(&self, since: u64) -> String {
        let st = lock(&self.state);
        let mut argv = Array::new();
        for a in &self.argv {
            argv = argv.str(a);
        }
        let mut chunks = Array::new();
        for c in st.chunks.iter().filter(|c| c.seq > since) {
            chunks = chunks.object(chunk_json(c));
        }
        let mut o = Object::new()
            .str("id", &self.id)
            .str("kind", self.kind)
            .str("title", &self.title)
            .array("argv", argv)
            .str("status", st.status.name())
            .uint("started_ms", self.started_ms)
            .str("message", &st.message)
            .uint("dropped_bytes", st.dropped_bytes)
            .uint("last_seq", st.next_seq - 1);
        o = match st.code {
            Some(c) => o.int("exit", i64::from(c)),
            None => o.null("exit"),
        };
        o = match st.signal {
            Some(s) => o.int("signal", i64::from(s)),
            None => o.null("signal"),
        };
        o = match st.progress {
            Some(p) => o.uint("progress", p),
            None => o.null("progress"),
        };
        o = match st.finished_ms {
            Some(ms) => o.uint("finished_ms", ms),
            None => o.null("finished_ms"),
        };
        o.array("output", chunks).finish()
    }

    /// Writes the task as server-sent events until it ends (then an `end` event), the
    /// stream has lasted [`MAX_EVENT_STREAM`], `stop` is set, or the page goes away.
    /// `after` is the last chunk the page already has (`Last-Event-ID`).
    pub fn stream_events(
        &self,
        w: &mut dyn Write,
        after: u64,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        let opened = Instant::now();
        let mut sent = after;
        let mut last_write = Instant::now();
        let mut last_state = String::new();
        http::write_event(w, None, "state", &self.state_json())?;
        loop {
            let (chunks, finished) = {
                let mut st = lock(&self.state);
                st.last_watched = Instant::now();
                if st.status == Status::Running && st.chunks.back().is_none_or(|c| c.seq <= sent) {
                    st = match self.changed.wait_timeout(st, EVENT_WAIT) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
                let chunks: Vec<(u64, String)> = st
                    .chunks
                    .iter()
                    .filter(|c| c.seq > sent)
                    .map(|c| (c.seq, chunk_json(c).finish()))
                    .collect();
                (chunks, st.status != Status::Running)
            };
            for (seq, data) in chunks {
                http::write_event(w, Some(seq), "output", &data)?;
                sent = seq;
                last_write = Instant::now();
            }
            let now_state = self.state_json();
            if now_state != last_state {
                http::write_event(w, None, "state", &now_state)?;
                last_state = now_state;
                last_write = Instant::now();
            }
            if finished {
                return http::write_event(w, None, "end", &self.state_json());
            }
            if stop.load(Ordering::SeqCst) || opened.elapsed() > MAX_EVENT_STREAM {
                return Ok(());
            }
            if last_write.elapsed() > HEARTBEAT {
                w.write_all(b": ping\n\n")?;
                w.flush()?;
                last_write = Instant::now();
            }
        }
    }

    /// Status, progress and exit as JSON (no output).
    pub fn state_json(&self) -> String {
        let st = lock(&self.state);
        let mut o = Object::new()
            .str("id", &self.id)
            .str("status", st.status.name())
            .str("message", &st.message);
        o = match st.progress {
            Some(p) => o.uint("progress", p),
            None => o.null("progress"),
        };
        o = match st.code {
            Some(c) => o.int("exit", i64::from(c)),
            None => o.null("exit"),
        };
        o.finish()
    }
}

fn chunk_json(c: &Chunk) -> Object {
    Object::new()
        .uint("seq", c.seq)
        .str("stream", c.stream.name())
        .str("text", &String::from_utf8_lossy(&c.bytes))
}

/// The last whole-number percentage in `bytes` (`45%` or `45.5%` → 45), if any ≤ 100.
pub fn last_percent(bytes: &[u8]) -> Option<u64> {
    let mut found = None;
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'%' {
            continue;
        }
        let before = bytes.get(..i).unwrap_or_default();
        // Skip an optional fraction, then take the whole digits before it.
        let mut end = before.len();
        let mut start = end;
        while start > 0 && before.get(start - 1).is_some_and(u8::is_ascii_digit) {
            start -= 1;
        }
        if before.get(start.wrapping_sub(1)) == Some(&b'.') && start < end && start >= 2 {
            end = start - 1;
            start = end;
            while start > 0 && before.get(start - 1).is_some_and(u8::is_ascii_digit) {
                start -= 1;
            }
        }
        let digits = before.get(start..end).unwrap_or_default();
        if digits.is_empty() || digits.len() > 3 {
            continue;
        }
        let n = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if n <= 100 {
            found = Some(n);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages() {
        assert_eq!(last_percent(b"Backup: 12% ... 45.5%\n"), Some(45));
        assert_eq!(last_percent(b"100%"), Some(100));
        assert_eq!(last_percent(b"no progress"), None);
        assert_eq!(last_percent(b"%"), None);
        assert_eq!(last_percent(b"1234%"), None);
        assert_eq!(last_percent(b"150%"), None);
        assert_eq!(last_percent(b"x.5%"), None);
    }

    fn tasks() -> Tasks {
        Tasks::new(Arc::new(|_: &Task, _: &str| {}))
    }

    fn spec(argv: &[&str], watched: bool) -> TaskSpec {
        TaskSpec {
            kind: "test",
            title: "t".into(),
            argv: argv.iter().map(|s| (*s).to_string()).collect(),
            stdin: Vec::new(),
            timeout: Duration::from_secs(30),
            watched,
        }
    }

    fn wait_end(t: &Task) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while t.is_running() {
            assert!(Instant::now() < deadline, "task did not end");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_task_runs_reports_and_streams() {
        let tasks = tasks();
        let t = tasks
            .start(spec(
                &["sh", "-c", "echo 10%; echo done 100%; echo oops >&2"],
                false,
            ))
            .unwrap();
        assert!(is_task_id(&t.id));
        wait_end(&t);
        assert_eq!(t.status(), Status::Done);
        let json = crate::json::parse(t.to_json(0).as_bytes()).unwrap();
        assert_eq!(
            json.get("progress").and_then(crate::json::Value::as_u64),
            Some(100)
        );
        let mut sse = Vec::new();
        t.stream_events(&mut sse, 0, &AtomicBool::new(false))
            .unwrap();
        let text = String::from_utf8(sse).unwrap();
        assert!(text.contains("event: output"), "{text}");
        assert!(text.contains("oops"), "{text}");
        assert!(
            text.ends_with("\n\n") && text.contains("event: end"),
            "{text}"
        );
        assert!(tasks.get(&t.id).is_some());
        assert!(tasks.get("t0000000000000000").is_none());
    }

    #[test]
    fn cancel_and_the_running_limit() {
        let tasks = tasks();
        let mut running = Vec::new();
        for _ in 0..MAX_RUNNING {
            running.push(tasks.start(spec(&["sleep", "30"], false)).unwrap());
        }
        assert!(matches!(
            tasks.start(spec(&["true"], false)),
            Err(TaskError::Busy)
        ));
        for t in &running {
            t.cancel();
        }
        for t in &running {
            wait_end(t);
            assert_eq!(t.status(), Status::Cancelled);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while tasks.running() > 0 {
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(10));
        }
        assert!(tasks.start(spec(&["true"], false)).is_ok());
        assert!(matches!(
            tasks.start(spec(&["-x"], false)),
            Err(TaskError::Refused(_))
        ));
    }

    #[test]
    fn output_is_bounded() {
        let tasks = tasks();
        let t = tasks
            .start(spec(&["head", "-c", "5000000", "/dev/zero"], false))
            .unwrap();
        wait_end(&t);
        let st = lock(&t.state);
        assert!(st.kept_bytes <= MAX_TASK_OUTPUT);
        assert_eq!(st.kept_bytes as u64 + st.dropped_bytes, 5_000_000);
    }
}
