//! The panel's HTTP server (shared/DESIGN.md §8): one acceptor thread, a fixed pool of
//! [`WORKERS`] worker threads, and a bounded queue of [`QUEUE_DEPTH`] requests between
//! them. When the queue is full the acceptor answers 503 itself; the pool never grows.
//!
//! The acceptor owns every connection that is not being served: it accepts, reads
//! request heads (non-blocking, all connections watched with one `poll`), enforces the
//! head limits and deadlines of `http.rs`, and hands a connection to the queue only
//! once a complete head has arrived. So an idle keep-alive connection, or a client
//! trickling its head byte by byte, costs a file descriptor and a buffer, never a
//! worker. A worker reads the body (after the application has checked the head, so an
//! unauthenticated client cannot make a worker wait for a body), answers, and gives a
//! keep-alive connection back to the acceptor.
//!
//! Closing: a connection is never closed with unread input in its socket, because the
//! kernel would then reset it and the client could lose the reply that explains the
//! refusal. It is half-closed after the reply and drained for up to [`LINGER`] instead.
//!
//! Architecture invariant: the number of threads is `1 + WORKERS` whatever clients do;
//! memory per connection is bounded by `http::MAX_HEAD` plus one read chunk.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::http::{self, Head, HeadScanner, HttpError, Response, Scan};
use crate::sys;

/// Worker threads: the most requests served at once.
pub const WORKERS: usize = 8;
/// Requests with a complete head waiting for a worker; one more gets 503.
pub const QUEUE_DEPTH: usize = 128;
/// Open connections; one more is answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 256;
/// How often the acceptor looks at the stop flag and the deadlines when nothing happens.
pub const TICK: Duration = Duration::from_millis(100);
/// Bytes read from a socket at once.
pub const READ_CHUNK: usize = 16 * 1024;
/// How long a connection being closed is drained before it is dropped.
pub const LINGER: Duration = Duration::from_secs(1);
/// Pause after `accept` fails for a reason other than "no connection waiting".
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long, after a stop was asked for, the server waits for busy workers.
pub const STOP_GRACE: Duration = Duration::from_millis(1200);

/// What the application wants done with the connection after its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Serve the next request on it, if HTTP allows.
    KeepAlive,
    /// Close it.
    Close,
}

/// The application: answers one request.
pub trait App: Send + Sync + 'static {
    /// Serves the request in `ex`. It must call [`Exchange::respond`] or
    /// [`Exchange::start_events`] exactly once.
    fn serve(&self, ex: &mut Exchange<'_>) -> After;
}

/// One request being served: its head, the body still to read, and the socket.
pub struct Exchange<'a> {
    head: Head,
    stream: &'a mut TcpStream,
    /// Bytes received after the head: the body's start, maybe a pipelined request.
    pending: Vec<u8>,
    body_read: bool,
    answered: bool,
    keep: bool,
    stop: &'a AtomicBool,
}

impl Exchange<'_> {
    /// The request head.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Reads the body (exactly `Content-Length` bytes) within `http::BODY_DEADLINE`.
    /// Call it only after the head has been checked.
    pub fn read_body(&mut self) -> Result<Vec<u8>, HttpError> {
        let want = self.head.content_length;
        let deadline = Instant::now() + http::BODY_DEADLINE;
        let timeout = HttpError::new(408, "request body not received in time");
        let mut chunk = [0u8; READ_CHUNK];
        while self.pending.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timeout);
            }
            // set_read_timeout refuses a zero duration; `left` is not zero here.
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|_| timeout.clone())?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(HttpError::new(400, "body ended early")),
                Ok(n) => self
                    .pending
                    .extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(timeout),
            }
        }
        let rest = self.pending.split_off(want);
        let body = std::mem::replace(&mut self.pending, rest);
        self.body_read = true;
        Ok(body)
    }

    /// Whether the server is shutting down (long answers such as event streams end).
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Writes the reply. The connection stays open only if the client wants that, the
    /// body was read (or there was none) and `keep_alive` is true.
    pub fn respond(&mut self, resp: &Response, keep_alive: bool) -> io::Result<()> {
        self.answered = true;
        self.keep = keep_alive
            && self.head.wants_keep_alive()
            && (self.head.content_length == 0 || self.body_read)
            && !self.stopping();
        self.stream.write_all(&http::serialise(resp, self.keep))?;
        self.stream.flush()
    }

    /// Starts an event stream and returns the socket to write events to. The
    /// connection is closed when the application returns.
    pub fn start_events(&mut self) -> io::Result<&mut TcpStream> {
        self.answered = true;
        self.keep = false;
        http::write_event_stream_head(self.stream)?;
        Ok(self.stream)
    }
}

/// Binds the panel's listener. The caller has already checked that `addr` is loopback.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A connection the acceptor watches.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    scanner: HeadScanner,
    /// When the current state began: idle since, head started at, or closing since.
    since: Instant,
    state: ConnState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Waiting for the first byte of a request.
    Idle,
    /// Part of a head has arrived.
    Head,
    /// Replied and half-closed; input is read and dropped until EOF or [`LINGER`].
    Closing,
}

impl Conn {
    fn new(stream: TcpStream, buf: Vec<u8>, now: Instant) -> Conn {
        let state = if buf.is_empty() {
            ConnState::Idle
        } else {
            ConnState::Head
        };
        Conn {
            stream,
            buf,
            scanner: HeadScanner::new(),
            since: now,
            state,
        }
    }

    fn closing(stream: TcpStream, now: Instant) -> Conn {
        let _ = stream.shutdown(Shutdown::Write);
        Conn {
            stream,
            buf: Vec::new(),
            scanner: HeadScanner::new(),
            since: now,
            state: ConnState::Closing,
        }
    }

    /// When this connection's current state times out.
    fn deadline(&self) -> Instant {
        self.since
            + match self.state {
                ConnState::Idle => http::IDLE_TIMEOUT,
                ConnState::Head => http::HEAD_DEADLINE,
                ConnState::Closing => LINGER,
            }
    }
}

/// A request with a complete head, on its way to a worker.
struct Job {
    stream: TcpStream,
    head: Head,
    pending: Vec<u8>,
}

/// What a worker gives back: a connection to keep serving, or to close gracefully.
struct Returned {
    stream: TcpStream,
    leftover: Vec<u8>,
    keep: bool,
}

/// Runs the server on `listener` until `stop` is set, then stops within
/// [`STOP_GRACE`] plus one [`TICK`]. Fails only if the threads or the wake-up socket
/// cannot be created.
pub fn serve(
    listener: TcpListener,
    app: Arc<dyn App>,
    stop: &'static AtomicBool,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let (wake_rx, wake_tx) = UnixStream::pair()?;
    wake_rx.set_nonblocking(true)?;
    wake_tx.set_nonblocking(true)?;
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(QUEUE_DEPTH);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (ret_tx, ret_rx) = mpsc::channel::<Returned>();
    let mut workers = Vec::with_capacity(WORKERS);
    for i in 0..WORKERS {
        let rx = Arc::clone(&job_rx);
        let ret = ret_tx.clone();
        let wake = wake_tx.try_clone()?;
        let app = Arc::clone(&app);
        workers.push(
            thread::Builder::new()
                .name(format!("panel-worker-{i}"))
                .spawn(move || worker(&rx, &ret, &wake, app.as_ref(), stop))?,
        );
    }
    drop(ret_tx);
    accept_loop(&listener, &wake_rx, &job_tx, &ret_rx, stop);
    // Closing the queue ends each worker after its current request.
    drop(job_tx);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && workers.iter().any(|w| !w.is_finished()) {
        thread::sleep(Duration::from_millis(10));
    }
    for w in workers {
        if w.is_finished() {
            let _ = w.join();
        }
    }
    Ok(())
}

fn accept_loop(
    listener: &TcpListener,
    wake_rx: &UnixStream,
    job_tx: &SyncSender<Job>,
    ret_rx: &Receiver<Returned>,
    stop: &AtomicBool,
) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut ready: Vec<bool> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        let next_deadline = conns.iter().map(Conn::deadline).min();
        let timeout = next_deadline
            .map_or(TICK, |d| d.saturating_duration_since(now))
            .min(TICK);
        ready.clear();
        ready.resize(2 + conns.len(), false);
        {
            let mut fds = Vec::with_capacity(2 + conns.len());
            fds.push(listener.as_fd());
            fds.push(wake_rx.as_fd());
            fds.extend(conns.iter().map(|c| c.stream.as_fd()));
            if sys::poll_readable(&fds, &mut ready, timeout).is_err() {
                // poll fails only for resource exhaustion; back off instead of spinning.
                thread::sleep(TICK);
                continue;
            }
        }
        let now = Instant::now();
        let flags: Vec<bool> = ready.iter().skip(2).copied().collect();
        let mut kept = Vec::with_capacity(conns.len());
        for (conn, readable) in conns.drain(..).zip(flags) {
            if let Some(c) = step(conn, readable, now, job_tx) {
                kept.push(c);
            }
        }
        conns = kept;
        if ready.get(1).copied().unwrap_or(false) {
            let mut sink = [0u8; 64];
            while matches!((&*wake_rx).read(&mut sink), Ok(n) if n > 0) {}
        }
        while let Ok(r) = ret_rx.try_recv() {
            let conn = if r.keep {
                Conn::new(r.stream, r.leftover, now)
            } else {
                Conn::closing(r.stream, now)
            };
            // A returned connection may already hold a pipelined request.
            if let Some(c) = step(conn, false, now, job_tx) {
                conns.push(c);
            }
        }
        if ready.first().copied().unwrap_or(false) {
            accept_all(listener, &mut conns, now);
        }
    }
}

fn accept_all(listener: &TcpListener, conns: &mut Vec<Conn>, now: Instant) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let _ = stream.set_nodelay(true);
                if conns.len() >= MAX_CONNECTIONS {
                    refuse(
                        &stream,
                        HttpError::new(503, "too many connections; try again"),
                    );
                    continue;
                }
                conns.push(Conn::new(stream, Vec::new(), now));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                // Out of descriptors or memory: the listener stays readable, so pause
                // rather than spin until connections close.
                thread::sleep(ACCEPT_BACKOFF);
                return;
            }
        }
    }
}

/// Best-effort error reply from the acceptor, whose sockets are non-blocking: the reply
/// is small and goes out in one write, or the client did not read and loses it.
fn refuse(mut stream: &TcpStream, e: HttpError) {
    let mut resp = Response::from(e.clone());
    if e.status == 503 {
        resp = resp.with_header("Retry-After", "1".into());
    }
    let _ = stream.write(&http::serialise(&resp, false));
}

/// Advances one connection; `None` when it is finished (handed to a worker or closed).
fn step(mut conn: Conn, readable: bool, now: Instant, job_tx: &SyncSender<Job>) -> Option<Conn> {
    if readable {
        let mut chunk = [0u8; READ_CHUNK];
        match (&conn.stream).read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => {
                if conn.state != ConnState::Closing {
                    conn.buf
                        .extend_from_slice(chunk.get(..n).unwrap_or_default());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return None,
        }
    }
    if conn.state == ConnState::Closing {
        return (now < conn.deadline()).then_some(conn);
    }
    if conn.state == ConnState::Idle && !conn.buf.is_empty() {
        conn.state = ConnState::Head;
        conn.since = now;
    }
    match conn.scanner.scan(&conn.buf) {
        Scan::Complete(n) => {
            let rest = conn.buf.split_off(n.min(conn.buf.len()));
            let head = match http::parse_head(&conn.buf) {
                Ok(h) => h,
                Err(e) => {
                    refuse(&conn.stream, e);
                    return Some(Conn::closing(conn.stream, now));
                }
            };
            let job = Job {
                stream: conn.stream,
                head,
                pending: rest,
            };
            match job_tx.try_send(job) {
                Ok(()) => None,
                Err(TrySendError::Full(job)) => {
                    refuse(
                        &job.stream,
                        HttpError::new(503, "the panel is busy; try again"),
                    );
                    Some(Conn::closing(job.stream, now))
                }
                Err(TrySendError::Disconnected(_)) => None,
            }
        }
        Scan::Refused(e) => {
            refuse(&conn.stream, e);
            Some(Conn::closing(conn.stream, now))
        }
        Scan::Incomplete => {
            if now < conn.deadline() {
                return Some(conn);
            }
            if conn.state == ConnState::Head {
                refuse(
                    &conn.stream,
                    HttpError::new(408, "request head not received in time"),
                );
                return Some(Conn::closing(conn.stream, now));
            }
            None
        }
    }
}

fn worker(
    jobs: &Mutex<Receiver<Job>>,
    ret: &Sender<Returned>,
    wake: &UnixStream,
    app: &dyn App,
    stop: &AtomicBool,
) {
    loop {
        let job = {
            let rx = match jobs.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            rx.recv()
        };
        let Ok(job) = job else {
            return;
        };
        if let Some(r) = serve_one(job, app, stop) {
            if ret.send(r).is_err() {
                return;
            }
            let _ = (&*wake).write(&[1]);
        }
    }
}

fn serve_one(job: Job, app: &dyn App, stop: &AtomicBool) -> Option<Returned> {
    let Job {
        mut stream,
        head,
        pending,
    } = job;
    if stream.set_nonblocking(false).is_err()
        || stream.set_write_timeout(Some(http::WRITE_TIMEOUT)).is_err()
    {
        return None;
    }
    let mut ex = Exchange {
        head,
        stream: &mut stream,
        pending,
        body_read: false,
        answered: false,
        keep: false,
        stop,
    };
    let after = app.serve(&mut ex);
    if !ex.answered {
        let resp = Response::error(500, "no answer");
        let _ = ex.respond(&resp, false);
    }
    let keep = ex.keep && after == After::KeepAlive;
    let leftover = std::mem::take(&mut ex.pending);
    if stream.set_nonblocking(true).is_err() {
        return None;
    }
    Some(Returned {
        stream,
        leftover: if keep { leftover } else { Vec::new() },
        keep,
    })
}
