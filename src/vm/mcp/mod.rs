//! `qvm-remote mcp [--read-only]`: a Model Context Protocol server on stdin and stdout
//! (MCP revisions 2025-03-26, 2025-06-18 and 2025-11-25: "Lifecycle", "Transports"
//! (stdio), "Tools", "Progress", "Cancellation"; JSON-RPC 2.0).
//!
//! It is one more front end of the VM client, not a new path into dom0: every tool
//! call becomes an ordinary job, MAC'd with `auth.key`, queued and waited for through
//! [`crate::vm::client`], so dom0's policy, `ask` approval, sandbox and audit log apply
//! exactly as they do to `qvm-remote CMD`. See the module docs of [`rpc`] (framing),
//! [`tools`] (the tools and their arguments), [`schema`] (their JSON Schemas) and
//! [`progress`] (progress notifications).
//!
//! Threads: the main thread only watches for SIGTERM/SIGINT and for the reader's end;
//! one reader thread reads stdin and answers everything but `tools/call` itself; each
//! `tools/call` runs on its own thread, at most [`MAX_CALLS_IN_FLIGHT`] at once (one
//! more is answered `-32000` at once). Every message goes out through one [`Outbox`]:
//! a mutex around stdout, one whole line per lock, so concurrent answers never
//! interleave. Diagnostics go to stderr, never to stdout.
//!
//! Cancellation: `notifications/cancelled` takes the call out of the in-flight table
//! and sets its cancel flag; the client's wait loop then withdraws the job if it is
//! still pending, or writes the signed `<id>.cancel` and wakes the agent. The call's
//! thread sends no response: whichever of the thread (done) and the cancel takes the
//! table entry first decides whether a response goes out, so never both and never
//! neither.
//!
//! End: at the end of stdin the calls in flight still finish and answer, then the
//! server exits. SIGTERM or SIGINT cancels every call in flight (the jobs are
//! cancelled in dom0), waits up to [`SHUTDOWN_GRACE`] for their threads, and exits.
//!
//! Architecture invariants: nothing is written to stdout but whole JSON-RPC messages;
//! no line is read past [`rpc::MAX_LINE`]; no client input ends the server but the end
//! of stdin (every malformed message gets an error answer, and no answer waits on
//! another call); no thread count depends on the client beyond
//! [`MAX_CALLS_IN_FLIGHT`].

pub mod progress;
pub mod rpc;
pub mod schema;
pub mod tools;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use self::progress::Progress;
use self::rpc::{ErrorCode, Incoming, Line, LineReader, RequestId, RpcError};
use super::client::CANCEL_GRACE;
use super::datadir::DataDir;
use super::{Console, Error};
use crate::json::{self, ParseError, Value};
use crate::version::VERSION;

/// The protocol revisions we speak, newest first. An `initialize` naming one of them
/// gets it back; any other (or none) gets the newest.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];
/// What `initialize` answers when the client's revision is not one we speak.
pub const LATEST_VERSION: &str = SUPPORTED_VERSIONS[0];
/// `serverInfo.name`.
pub const SERVER_NAME: &str = "qvm-remote";
/// Most `tools/call` requests running at once (each holds a thread). At least 4 must
/// fit; 16 leaves room for an agent that runs a few slow jobs while it pings.
pub const MAX_CALLS_IN_FLIGHT: usize = 16;
const _: () = assert!(
    MAX_CALLS_IN_FLIGHT >= 4,
    "MCP must serve at least 4 calls at once"
);
/// How long a signal waits for cancelled calls to get dom0's `cancelled` result.
pub const SHUTDOWN_GRACE: Duration = CANCEL_GRACE.saturating_add(Duration::from_secs(2));
/// How often the main thread looks at the termination flag and the reader.
pub const WATCH_EVERY: Duration = Duration::from_millis(100);
/// Longest method or tool name quoted back in an error.
pub const MAX_QUOTED_NAME: usize = 64;

/// The `instructions` of `initialize`: what an agent should know before its first call.
pub const INSTRUCTIONS: &str = "These tools run commands in Qubes OS dom0 (the admin domain) \
for this VM, through qvm-remote. dom0 decides every job by its own policy: a job may be denied, \
or held until a human approves it in dom0; this VM cannot tell which while it waits, so progress \
notes say \"waiting for dom0\". Every job is logged in dom0's audit log. Use dom0_ping to check \
the connection, dom0_history and dom0_result to look back, and dom0_run only for what the user \
asked for.";

/// Serves MCP on `input` and `output` until the end of `input` (or a signal).
/// `diag` gets diagnostics. Returns when every call has ended.
pub fn serve(
    dd: DataDir,
    read_only: bool,
    input: impl Read + Send + 'static,
    output: impl Write + Send + 'static,
    diag: impl Write + Send + 'static,
) -> Result<(), Error> {
    let flag = crate::sys::install_termination_flag().map_err(Error::Signals)?;
    let server = Arc::new(Server {
        dd,
        read_only,
        outbox: Outbox::new(Box::new(output), Box::new(diag)),
        calls: Mutex::new(HashMap::new()),
        active: AtomicUsize::new(0),
    });
    let mode = if read_only { ", read-only" } else { "" };
    server.outbox.diag(&format!(
        "MCP server on stdio (protocol {}{mode})",
        SUPPORTED_VERSIONS.join(", ")
    ));
    let reader = {
        let server = Arc::clone(&server);
        thread::Builder::new()
            .name("mcp-reader".into())
            .spawn(move || server.read_all(input))
            .map_err(Error::Spawn)?
    };
    loop {
        if flag.load(Ordering::SeqCst) {
            server.shut_down();
            return Ok(());
        }
        if reader.is_finished() {
            break;
        }
        thread::sleep(WATCH_EVERY);
    }
    let read = reader
        .join()
        .unwrap_or_else(|_| Err(Error::Stdin(io::Error::other("the reader thread panicked"))));
    // The client closed its end; the calls in flight still answer (it may still read).
    while server.active.load(Ordering::SeqCst) > 0 {
        if flag.load(Ordering::SeqCst) {
            server.shut_down();
            break;
        }
        thread::sleep(WATCH_EVERY);
    }
    read
}

/// Where every message goes: stdout behind one lock, one whole line per message;
/// and stderr for diagnostics.
pub struct Outbox {
    out: Mutex<Box<dyn Write + Send>>,
    /// stdout failed once (the client has gone): nothing more is written.
    broken: AtomicBool,
    diag: Mutex<Box<dyn Write + Send>>,
}

impl Outbox {
    /// An outbox over these writers.
    pub fn new(out: Box<dyn Write + Send>, diag: Box<dyn Write + Send>) -> Outbox {
        Outbox {
            out: Mutex::new(out),
            broken: AtomicBool::new(false),
            diag: Mutex::new(diag),
        }
    }

    /// Writes one message (JSON text without newlines) as one line.
    pub fn send(&self, message: &str) {
        debug_assert!(!message.contains('\n'), "a message must be one line");
        if self.broken.load(Ordering::SeqCst) {
            return;
        }
        let mut line = String::with_capacity(message.len() + 1);
        line.push_str(message);
        line.push('\n');
        let written = {
            let mut out = lock(&self.out);
            out.write_all(line.as_bytes()).and_then(|()| out.flush())
        };
        if let Err(e) = written {
            if !self.broken.swap(true, Ordering::SeqCst) {
                self.diag(&format!(
                    "writing to stdout: {e}; nothing more will be sent"
                ));
            }
        }
    }

    /// `qvm-remote mcp: <text>` on stderr. A failed write there has nowhere to go.
    pub fn diag(&self, text: &str) {
        let _ = writeln!(lock(&self.diag), "qvm-remote mcp: {text}");
    }
}

/// The diagnostics stream as a `Write`, for the client functions that warn through a
/// [`Console`].
struct DiagWriter<'a>(&'a Outbox);

impl Write for DiagWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0.diag).write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        lock(&self.0.diag).flush()
    }
}

/// A lock that a panicked holder cannot make unusable: the data behind these locks
/// (writers, the call table) stays consistent between statements.
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A call in flight, as the cancel path sees it.
#[derive(Clone, Default)]
struct InFlight {
    /// Cancels the job (the wait loop consumes it).
    cancel: Arc<AtomicBool>,
    /// Stays set once cancelled: progress stops.
    abandoned: Arc<AtomicBool>,
}

struct Server {
    dd: DataDir,
    read_only: bool,
    outbox: Outbox,
    /// The `tools/call` requests still to be answered.
    calls: Mutex<HashMap<RequestId, InFlight>>,
    /// Call threads alive (cancelled ones included, until they end).
    active: AtomicUsize,
}

/// A call thread's place under [`MAX_CALLS_IN_FLIGHT`], given back when dropped.
struct Slot(Arc<Server>);

impl Slot {
    fn take(server: &Arc<Server>) -> Option<Slot> {
        let before = server.active.fetch_add(1, Ordering::SeqCst);
        if before >= MAX_CALLS_IN_FLIGHT {
            server.active.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(Arc::clone(server)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Server {
    fn read_all(self: &Arc<Self>, input: impl Read) -> Result<(), Error> {
        let mut lines = LineReader::new(input);
        while let Some(line) = lines.next_line().map_err(Error::Stdin)? {
            self.handle(line);
        }
        Ok(())
    }

    fn reply(&self, id: &RequestId, result: &str) {
        self.outbox.send(&rpc::response(id, result));
    }

    fn refuse(&self, id: Option<&RequestId>, error: &RpcError) {
        self.outbox.send(&rpc::error_response(id, error));
    }

    fn handle(self: &Arc<Self>, line: Line) {
        let bytes = match line {
            Line::Message(bytes) => bytes,
            Line::TooLong { len } => {
                let e = RpcError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "message of {len} bytes is over the limit of {} bytes; skipped",
                        rpc::MAX_LINE
                    ),
                );
                self.outbox.diag(&e.message);
                return self.refuse(None, &e);
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let value = match json::parse_limited(&bytes, rpc::MAX_LINE) {
            Ok(v) => v,
            Err(ParseError::TooLarge { len, max }) => {
                let e = RpcError::new(
                    ErrorCode::InvalidRequest,
                    format!("message of {len} bytes is over the limit of {max} bytes"),
                );
                return self.refuse(None, &e);
            }
            Err(e) => {
                return self.refuse(
                    None,
                    &RpcError::new(ErrorCode::Parse, format!("parse error: {e}")),
                )
            }
        };
        match rpc::classify(value) {
            Err(refused) => self.refuse(refused.id.as_ref(), &refused.error),
            Ok(Incoming::Request { id, method, params }) => self.request(id, &method, params),
            Ok(Incoming::Notification { method, params }) => {
                self.notification(&method, params.as_ref())
            }
            Ok(Incoming::Response) => self
                .outbox
                .diag("ignored a response: this server sends no requests"),
        }
    }

    fn request(self: &Arc<Self>, id: RequestId, method: &str, params: Option<Value>) {
        let answer = match method {
            "initialize" => Ok(self.initialize(params.as_ref())),
            "ping" => Ok("{}".to_string()),
            "tools/list" => Ok(tools::list(self.read_only)),
            "tools/call" => match tools::parse_request(params.as_ref(), self.read_only) {
                Ok(call) => return self.start_call(id, call),
                Err(e) => Err(e),
            },
            other => Err(RpcError::new(
                ErrorCode::MethodNotFound,
                format!("unknown method `{}`", quote(other)),
            )),
        };
        match answer {
            Ok(result) => self.reply(&id, &result),
            Err(e) => self.refuse(Some(&id), &e),
        }
    }

    /// The `initialize` result: the client's revision if we speak it, else our newest.
    fn initialize(&self, params: Option<&Value>) -> String {
        let asked = params
            .and_then(|p| p.get("protocolVersion"))
            .and_then(Value::as_str);
        let version = match asked {
            Some(v) if SUPPORTED_VERSIONS.contains(&v) => v,
            _ => {
                let asked = asked.map_or_else(|| "none".to_string(), |v| format!("`{}`", quote(v)));
                self.outbox.diag(&format!(
                    "client asked for protocol {asked}; answering {LATEST_VERSION}"
                ));
                LATEST_VERSION
            }
        };
        let info = json::Object::new()
            .str("name", SERVER_NAME)
            .str("title", "qvm-remote: commands in Qubes OS dom0")
            .str("version", VERSION)
            .finish();
        rpc::raw_object(&[
            ("protocolVersion", &json::string(version)),
            ("capabilities", r#"{"tools": {"listChanged": false}}"#),
            ("serverInfo", &info),
            ("instructions", &json::string(INSTRUCTIONS)),
        ])
    }

    /// Notifications are never answered; unknown ones are ignored, as JSON-RPC asks.
    fn notification(&self, method: &str, params: Option<&Value>) {
        if method == "notifications/cancelled" {
            let id = params
                .and_then(|p| p.get("requestId"))
                .and_then(RequestId::from_value);
            if let Some(id) = id {
                self.cancel(&id);
            }
        }
    }

    /// Cancels a call in flight; a call that already answered (or never was) is left
    /// alone, as the specification allows.
    fn cancel(&self, id: &RequestId) {
        let Some(call) = lock(&self.calls).remove(id) else {
            return;
        };
        // Progress stops before the job is cancelled, so nothing follows the cancel.
        call.abandoned.store(true, Ordering::SeqCst);
        call.cancel.store(true, Ordering::SeqCst);
        self.outbox
            .diag(&format!("request {id} cancelled: its job is cancelled too"));
    }

    /// Cancels every call in flight and waits up to [`SHUTDOWN_GRACE`] for them.
    fn shut_down(&self) {
        let ids: Vec<RequestId> = lock(&self.calls).keys().cloned().collect();
        for id in &ids {
            self.cancel(id);
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(WATCH_EVERY);
        }
    }

    fn start_call(self: &Arc<Self>, id: RequestId, request: tools::Request) {
        let Some(slot) = Slot::take(self) else {
            let e = RpcError::new(
                ErrorCode::Busy,
                format!(
                    "{MAX_CALLS_IN_FLIGHT} tool calls are in flight; try again when one has ended"
                ),
            );
            return self.refuse(Some(&id), &e);
        };
        let call = InFlight::default();
        {
            let mut calls = lock(&self.calls);
            if calls.contains_key(&id) {
                drop(calls);
                let e = RpcError::new(
                    ErrorCode::InvalidRequest,
                    format!("request id {id} is already in flight"),
                );
                return self.refuse(Some(&id), &e);
            }
            calls.insert(id.clone(), call.clone());
        }
        let server = Arc::clone(self);
        let thread_id = id.clone();
        let spawned = thread::Builder::new()
            .name("mcp-call".into())
            .spawn(move || {
                let _slot = slot;
                server.run_call(&thread_id, request, &call);
            });
        if let Err(e) = spawned {
            lock(&self.calls).remove(&id);
            let e = RpcError::new(ErrorCode::Internal, format!("starting a thread: {e}"));
            self.refuse(Some(&id), &e);
        }
    }

    fn run_call(&self, id: &RequestId, request: tools::Request, call: &InFlight) {
        let mut input = io::empty();
        let mut out = io::sink();
        let mut err = DiagWriter(&self.outbox);
        let mut console = Console {
            input: &mut input,
            input_is_terminal: false,
            out: &mut out,
            err: &mut err,
        };
        let mut progress = Progress::new(&self.outbox, request.progress_token, &call.abandoned);
        let mut ctx = tools::Context {
            dd: &self.dd,
            cancel: &call.cancel,
            console: &mut console,
        };
        let outcome = tools::execute(request.call, &mut ctx, &mut progress);
        // The response and a cancel race for the table entry: exactly one takes it.
        let still_ours = lock(&self.calls).remove(id).is_some();
        match (still_ours, outcome) {
            (true, Some(result)) => self.reply(id, &result.json()),
            // Only a cancel makes a call end unanswered, and a cancel takes the entry.
            (true, None) => self.refuse(
                Some(id),
                &RpcError::new(ErrorCode::Internal, "the call ended without a result"),
            ),
            (false, _) => {}
        }
    }
}

/// A client-given name, cut short for an error message (the JSON writer escapes it).
pub(crate) fn quote(name: &str) -> String {
    name.chars().take(MAX_QUOTED_NAME).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_version_is_supported_and_at_least_the_three_required() {
        for v in ["2025-03-26", "2025-06-18", "2025-11-25"] {
            assert!(SUPPORTED_VERSIONS.contains(&v));
        }
        assert_eq!(LATEST_VERSION, "2025-11-25");
    }
}
