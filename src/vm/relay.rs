//! The stream-mode agent's end of `agent.sock` (the protocol is in [`super::sock`]):
//! binding the socket, taking clients' wake-ups, and relaying each watched job's
//! output to its client.
//!
//! Threads: one acceptor, and per connection one request reader plus, once it
//! watches a job, one writer. At most [`MAX_CONNECTIONS`] connections are served at a
//! time; past that a connection is closed at once and its client falls back to the
//! result file. Nothing here ever blocks the agent's frame reader: dom0's chunks go
//! into a watcher's queue under a short lock, the queue holds at most
//! [`MAX_WATCHER_BACKLOG`] bytes, and a watcher past it gets no more live output (only
//! `DONE`), so a client that stops reading costs the agent at most that much memory
//! and dom0 nothing.
//!
//! Architecture invariants: the socket is only ever created by `bind` under umask 077
//! and then set to 0600; a path at `agent.sock` that is not a socket (a symlink, a
//! file, a directory) is never followed, replaced or removed; the socket file is
//! removed on exit only while it is still the one this agent bound.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs;
use std::io::{self, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use super::datadir::{DataDir, FILE_MODE};
use super::files;
use super::sock::{self, ReplyKind, Request, MAX_REQUEST_LINE};
use crate::atomic;
use crate::id::CommandId;

/// Connections served at once (each costs one or two threads).
pub const MAX_CONNECTIONS: usize = 64;
/// Live output bytes queued for one watcher; past this the watcher gets no more live
/// output and reads the rest from the result file.
pub const MAX_WATCHER_BACKLOG: usize = 1 << 20;
/// How long a connection may stay silent before its first request, and between
/// requests until it watches a job.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write to a watcher may block; a client that does not read for this
/// long loses its connection (and reads the result file instead).
pub const WATCHER_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// The pause after a failed `accept` (out of descriptors, say), so the acceptor does
/// not spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The umask the socket is bound under, so it never exists with wider permissions.
const BIND_UMASK: u32 = 0o077;

/// Why the socket could not be set up (the agent then runs without it: clients fall
/// back to polling the result file, and the periodic rescan picks their jobs up).
#[derive(Debug)]
pub enum BindError {
    /// Something that is not a socket is at the path.
    NotASocket {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A system call failed.
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::NotASocket { path, kind } => write!(
                f,
                "{}: a {kind}, not a socket; left alone, running without the wake-up socket",
                path.display()
            ),
            BindError::Io { what, path, source } => {
                write!(f, "{what} {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for BindError {}

/// The bound socket. Dropping it removes the socket file if it is still ours.
#[derive(Debug)]
pub struct Bound {
    path: PathBuf,
    /// Device and inode of the socket we bound, to tell it from a successor's. The
    /// number cannot be reused while we live: a bound socket holds its inode, and the
    /// listener stays open until the process ends.
    identity: (u64, u64),
    listener: Option<UnixListener>,
    /// Whether a live agent answered on the old socket (we took over from it).
    pub took_over: bool,
    /// Whether a stale socket file was replaced.
    pub replaced: bool,
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if meta.file_type().is_socket() && (meta.dev(), meta.ino()) == self.identity {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds `agent.sock` (mode 0600). A socket already there is replaced, whether an
/// agent answers on it or not: dom0 runs one session per VM, so an older agent is on
/// its way out (it exits when dom0 closes its channel).
pub fn bind(dd: &DataDir) -> Result<Bound, BindError> {
    let path = dd.agent_socket();
    let io_err = |what, source| BindError::Io {
        what,
        path: dd.agent_socket(),
        source,
    };
    let (mut took_over, mut replaced) = (false, false);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_socket() => {
            took_over = UnixStream::connect(&path).is_ok();
            replaced = true;
            atomic::remove_if_present(&path).map_err(|e| io_err("removing", e))?;
        }
        Ok(meta) => {
            return Err(BindError::NotASocket {
                path,
                kind: files::kind_of(&meta),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspecting", e)),
    }
    let previous = crate::sys::set_process_umask(BIND_UMASK);
    let bound = UnixListener::bind(&path);
    crate::sys::set_process_umask(previous);
    let listener = bound.map_err(|e| io_err("binding", e))?;
    // Look before the chmod, which follows symlinks: only the data dir's owner could
    // have swapped something in since the bind, but then we refuse rather than chmod it.
    let meta = fs::symlink_metadata(&path).map_err(|e| io_err("inspecting", e))?;
    if !meta.file_type().is_socket() || meta.uid() != crate::sys::geteuid() {
        return Err(BindError::NotASocket {
            path,
            kind: files::kind_of(&meta),
        });
    }
    let bound = Bound {
        path,
        identity: (meta.dev(), meta.ino()),
        listener: Some(listener),
        took_over,
        replaced,
    };
    fs::set_permissions(&bound.path, fs::Permissions::from_mode(FILE_MODE))
        .map_err(|e| io_err("setting the mode of", e))?;
    Ok(bound)
}

/// The watchers and the wake-up callback, shared by the agent's threads.
pub struct Relay {
    dd: DataDir,
    watchers: Mutex<HashMap<CommandId, Arc<Watcher>>>,
    wake: Box<dyn Fn() + Send + Sync>,
    connections: AtomicUsize,
    /// A bad request is logged once per agent, not once per connection.
    bad_request_logged: AtomicBool,
    log: fn(&DataDir, &str),
}

impl Relay {
    /// A relay that calls `wake` when a client asks for a rescan and `log` for the
    /// agent's log.
    pub fn new(dd: DataDir, wake: Box<dyn Fn() + Send + Sync>, log: fn(&DataDir, &str)) -> Relay {
        Relay {
            dd,
            watchers: Mutex::new(HashMap::new()),
            wake,
            connections: AtomicUsize::new(0),
            bad_request_logged: AtomicBool::new(false),
            log,
        }
    }

    /// Starts the acceptor thread on a bound socket.
    pub fn serve(self: &Arc<Relay>, bound: &mut Bound) -> io::Result<()> {
        let Some(listener) = bound.listener.take() else {
            return Ok(());
        };
        let relay = Arc::clone(self);
        thread::Builder::new()
            .name("sock-accept".into())
            .spawn(move || relay.accept_loop(&listener))
            .map(|_| ())
    }

    /// The agent has claimed job `id` and is about to send it: a watcher registered
    /// now sees its output from the first byte, so it gets it live.
    pub fn job_claimed(&self, id: &CommandId) {
        if let Some(w) = self.watcher(id) {
            w.set_live(Live::On);
        }
    }

    /// The agent re-sends job `id` from an earlier session, whose output may have
    /// gone elsewhere already: its watcher gets no live output, only `DONE`.
    pub fn job_resent(&self, id: &CommandId) {
        if let Some(w) = self.watcher(id) {
            w.set_live(Live::Off);
        }
    }

    /// A chunk of job `id`'s output from dom0. Never blocks beyond a short lock.
    pub fn chunk(&self, id: &CommandId, kind: ReplyKind, bytes: &[u8]) {
        if let Some(w) = self.watcher(id) {
            w.push_chunk(kind, bytes);
        }
    }

    /// Job `id`'s result file is stored: its watcher gets `DONE`.
    pub fn result_stored(&self, id: &CommandId) {
        let w = lock(&self.watchers).remove(id);
        if let Some(w) = w {
            w.finish();
        }
    }

    fn watcher(&self, id: &CommandId) -> Option<Arc<Watcher>> {
        lock(&self.watchers).get(id).cloned()
    }

    /// Registers `w` for `id`, replacing (and closing) an older watcher of it.
    fn register(&self, id: &CommandId, w: &Arc<Watcher>) {
        let old = lock(&self.watchers).insert(id.clone(), Arc::clone(w));
        if let Some(old) = old {
            old.close();
        }
        // A result stored before the registration would never be announced.
        if files::exists(&self.dd.result_path(id)) {
            w.finish();
        }
    }

    /// Removes `w` if it is still the watcher of `id`.
    fn forget(&self, id: &CommandId, w: &Arc<Watcher>) {
        let mut map = lock(&self.watchers);
        if map.get(id).is_some_and(|cur| Arc::ptr_eq(cur, w)) {
            map.remove(id);
        }
    }

    fn accept_loop(self: &Arc<Relay>, listener: &UnixListener) {
        let mut accept_failed = false;
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if !accept_failed {
                        accept_failed = true;
                        (self.log)(&self.dd, &format!("socket: accept failed: {e}"));
                    }
                    thread::sleep(ACCEPT_BACKOFF);
                    continue;
                }
            };
            // Over the limit the connection is closed at once; its client reads the
            // result file instead.
            if self.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                self.connections.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let relay = Arc::clone(self);
            let spawned = thread::Builder::new()
                .name("sock-conn".into())
                .spawn(move || {
                    relay.connection(stream);
                    relay.connections.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                self.connections.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Serves one connection: requests until it ends; a `WATCH` also starts a writer.
    fn connection(self: &Arc<Relay>, stream: UnixStream) {
        let Ok(read_half) = stream.try_clone() else {
            return;
        };
        if read_half.set_read_timeout(Some(REQUEST_TIMEOUT)).is_err() {
            return;
        }
        let mut reader = BufReader::with_capacity(MAX_REQUEST_LINE, read_half);
        let mut watching: Option<(CommandId, Arc<Watcher>)> = None;
        // End of stream, timeout, error: the client is done with us.
        while let Ok(Some(line)) = sock::read_line(&mut reader, MAX_REQUEST_LINE) {
            match Request::parse(&line) {
                Some(Request::Wake) => (self.wake)(),
                Some(Request::Watch(id)) if watching.is_none() => {
                    let Some(w) = self.start_watch(&id, &stream) else {
                        break;
                    };
                    // Watching: the connection stays open until the job is done, so
                    // the silence limit no longer applies.
                    if reader.get_ref().set_read_timeout(None).is_err() {
                        w.close();
                        break;
                    }
                    watching = Some((id, w));
                    (self.wake)();
                }
                Some(Request::Watch(_)) | None => {
                    if !self.bad_request_logged.swap(true, Ordering::SeqCst) {
                        (self.log)(
                            &self.dd,
                            "socket: closed a connection that sent a bad request (logged once)",
                        );
                    }
                    break;
                }
            }
        }
        if let Some((id, w)) = watching {
            w.close();
            self.forget(&id, &w);
        }
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }

    /// Registers a watcher for `id`, answers `WATCHING`, and starts its writer.
    fn start_watch(self: &Arc<Relay>, id: &CommandId, stream: &UnixStream) -> Option<Arc<Watcher>> {
        let mut writer = stream.try_clone().ok()?;
        writer.set_write_timeout(Some(WATCHER_WRITE_TIMEOUT)).ok()?;
        let w = Arc::new(Watcher::default());
        // Registered before WATCHING goes out: the client writes its job only after
        // that answer, so no claim of it can come before the registration. WATCHING
        // still is the first reply, since the writer starts after it.
        self.register(id, &w);
        if sock::write_reply(&mut writer, ReplyKind::Watching, b"").is_err() {
            w.close();
            self.forget(id, &w);
            return None;
        }
        let (relay, id2, w2) = (Arc::clone(self), id.clone(), Arc::clone(&w));
        let spawned = thread::Builder::new()
            .name("sock-write".into())
            .spawn(move || {
                w2.drain_into(&mut writer);
                relay.forget(&id2, &w2);
                let _ = writer.shutdown(std::net::Shutdown::Both);
            });
        if spawned.is_err() {
            w.close();
            self.forget(id, &w);
            return None;
        }
        Some(w)
    }
}

/// Whether a watcher gets its job's output live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    /// Registered; the job has not been claimed yet.
    Waiting,
    /// Claimed after the registration: every chunk is relayed, in order.
    On,
    /// No (more) live output: registered too late, or over its backlog.
    Off,
}

/// One client watching one job.
struct Watcher {
    state: Mutex<WatchState>,
    changed: Condvar,
}

struct WatchState {
    live: Live,
    queue: VecDeque<(ReplyKind, Vec<u8>)>,
    queued_bytes: usize,
    /// The result is stored: `DONE` follows the queue.
    done: bool,
    /// The watch is over without a `DONE` (client gone, replaced, or agent ending).
    closed: bool,
}

impl Default for Watcher {
    fn default() -> Watcher {
        Watcher {
            state: Mutex::new(WatchState {
                live: Live::Waiting,
                queue: VecDeque::new(),
                queued_bytes: 0,
                done: false,
                closed: false,
            }),
            changed: Condvar::new(),
        }
    }
}

/// What the writer does next.
enum Next {
    Send(ReplyKind, Vec<u8>),
    Done,
    Stop,
}

impl Watcher {
    fn set_live(&self, live: Live) {
        let mut st = lock(&self.state);
        if st.live == Live::Waiting || live == Live::Off {
            st.live = live;
        }
    }

    fn push_chunk(&self, kind: ReplyKind, bytes: &[u8]) {
        let mut st = lock(&self.state);
        match st.live {
            Live::On if st.queued_bytes.saturating_add(bytes.len()) <= MAX_WATCHER_BACKLOG => {
                st.queued_bytes += bytes.len();
                st.queue.push_back((kind, bytes.to_vec()));
                self.changed.notify_one();
            }
            // Over the backlog: what is queued still goes out (it continues the
            // prefix), nothing after it does.
            Live::On => st.live = Live::Off,
            // Output of a job this agent did not claim after the watch began: the
            // client may have missed its start, so it gets none of it.
            Live::Waiting => st.live = Live::Off,
            Live::Off => {}
        }
    }

    fn finish(&self) {
        lock(&self.state).done = true;
        self.changed.notify_one();
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_one();
    }

    fn next(&self) -> Next {
        let mut st = lock(&self.state);
        loop {
            if st.closed {
                return Next::Stop;
            }
            if let Some((kind, bytes)) = st.queue.pop_front() {
                st.queued_bytes = st.queued_bytes.saturating_sub(bytes.len());
                return Next::Send(kind, bytes);
            }
            if st.done {
                return Next::Done;
            }
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The writer thread's work: the queue, then `DONE`, until closed or a write fails.
    fn drain_into(&self, out: &mut impl Write) {
        loop {
            let (kind, payload) = match self.next() {
                Next::Send(kind, bytes) => (kind, bytes),
                Next::Done => (ReplyKind::Done, Vec::new()),
                Next::Stop => return,
            };
            if sock::write_reply(out, kind, &payload).is_err() {
                self.close();
                return;
            }
            if kind == ReplyKind::Done {
                return;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(w: &Watcher) -> Vec<(ReplyKind, Vec<u8>)> {
        let mut wire = Vec::new();
        w.drain_into(&mut wire);
        let mut r = sock::ReplyReader::new(&wire[..]);
        let mut out = Vec::new();
        while let Some(f) = r.read().unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn a_watcher_gets_chunks_only_after_the_claim_then_done() {
        let w = Watcher::default();
        w.set_live(Live::On);
        w.push_chunk(ReplyKind::Out, b"a");
        w.push_chunk(ReplyKind::Err, b"b");
        w.finish();
        assert_eq!(
            drained(&w),
            vec![
                (ReplyKind::Out, b"a".to_vec()),
                (ReplyKind::Err, b"b".to_vec()),
                (ReplyKind::Done, vec![]),
            ]
        );
        // A chunk before the claim means the start was missed: nothing live, ever.
        let w = Watcher::default();
        w.push_chunk(ReplyKind::Out, b"x");
        w.set_live(Live::On);
        w.push_chunk(ReplyKind::Out, b"y");
        w.finish();
        assert_eq!(drained(&w), vec![(ReplyKind::Done, vec![])]);
    }

    #[test]
    fn the_backlog_holds_its_limit_and_keeps_a_prefix() {
        let w = Watcher::default();
        w.set_live(Live::On);
        let chunk = vec![1u8; sock::MAX_CHUNK];
        let fit = MAX_WATCHER_BACKLOG / sock::MAX_CHUNK;
        for _ in 0..fit {
            w.push_chunk(ReplyKind::Out, &chunk);
        }
        // One byte past the limit: it and everything after it stay off the stream.
        w.push_chunk(ReplyKind::Out, b"!");
        w.push_chunk(ReplyKind::Out, b"later");
        w.finish();
        let got = drained(&w);
        assert_eq!(got.len(), fit + 1);
        assert!(got[..fit]
            .iter()
            .all(|(k, b)| *k == ReplyKind::Out && *b == chunk));
        assert_eq!(got[fit], (ReplyKind::Done, vec![]));
    }

    #[test]
    fn a_closed_watcher_stops_without_done() {
        let w = Watcher::default();
        w.set_live(Live::On);
        w.push_chunk(ReplyKind::Out, b"a");
        w.close();
        assert!(drained(&w).is_empty());
    }
}
