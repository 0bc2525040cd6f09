//! `qvm-remote mcp` end to end: a small MCP client (newline-delimited JSON-RPC over
//! the server's stdin and stdout) drives the real binary inside a simulated VM, whose
//! jobs go through the real dom0 daemon in stream mode. Covers the handshake and
//! version negotiation, the tool list, every tool, policy denial and `ask` approval,
//! timeouts, progress, cancellation, error codes, concurrency and `--read-only`.

mod common;

use common::*;
use qvm_remote::json::{self, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any single expected message may take.
const PATIENCE: Duration = Duration::from_secs(30);

/// A message from the server, or why a line was not one.
type Received = Result<Value, String>;

/// The test's MCP client: one `qvm-remote mcp` process in VM `work`.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Received>,
    /// Every message received, in order, and whether a test step took it already.
    seen: Vec<(Value, bool, Instant)>,
    stderr: Arc<Mutex<String>>,
}

impl Client {
    fn start(sim: &Sim, extra: &[&str]) -> Client {
        let mut argv = vec!["qvm-remote", "mcp"];
        argv.extend_from_slice(extra);
        let mut child = sim
            .vm_command("work", &argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                // stdout carries protocol messages only: anything else fails the test.
                let msg = json::parse(line.as_bytes()).map_err(|e| format!("{e}: {line}"));
                if tx.send(msg).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Client {
            stdin: child.stdin.take(),
            child,
            rx,
            seen: Vec::new(),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    fn send(&mut self, text: &str) {
        assert!(!text.contains('\n'));
        self.send_bytes(format!("{text}\n").as_bytes());
    }

    /// Sends a request; `id` and `params` are JSON text.
    fn request(&mut self, id: &str, method: &str, params: &str) {
        self.send(&format!(
            r#"{{"jsonrpc": "2.0", "id": {id}, "method": "{method}", "params": {params}}}"#
        ));
    }

    fn notify(&mut self, method: &str, params: &str) {
        self.send(&format!(
            r#"{{"jsonrpc": "2.0", "method": "{method}", "params": {params}}}"#
        ));
    }

    /// Takes in whatever arrived, waiting at most `limit` for one more message.
    fn pump(&mut self, limit: Duration) -> bool {
        match self.rx.recv_timeout(limit) {
            Ok(msg) => {
                let v = msg.unwrap_or_else(|e| panic!("not JSON on stdout: {e}"));
                self.seen.push((v, false, Instant::now()));
                while let Ok(msg) = self.rx.try_recv() {
                    let v = msg.unwrap_or_else(|e| panic!("not JSON on stdout: {e}"));
                    self.seen.push((v, false, Instant::now()));
                }
                true
            }
            Err(_) => false,
        }
    }

    /// The first message not yet taken that `want` accepts, waiting up to `limit`.
    fn take(&mut self, limit: Duration, want: impl Fn(&Value) -> bool) -> Option<(Value, Instant)> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(entry) = self
                .seen
                .iter_mut()
                .find(|(v, taken, _)| !*taken && want(v))
            {
                entry.1 = true;
                return Some((entry.0.clone(), entry.2));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.pump(left);
        }
    }

    /// The response to request `id` (JSON text).
    fn response(&mut self, id: &str) -> Value {
        let want = json::parse(id.as_bytes()).unwrap();
        let found = self.take(PATIENCE, |v| {
            v.get("id") == Some(&want) && (v.get("result").is_some() || v.get("error").is_some())
        });
        match found {
            Some((v, _)) => v,
            None => panic!("no response to {id}; stderr:\n{}", self.stderr()),
        }
    }

    fn call(&mut self, id: &str, method: &str, params: &str) -> Value {
        self.request(id, method, params);
        self.response(id)
    }

    /// `tools/call`; `args` is JSON text.
    fn tool(&mut self, id: &str, name: &str, args: &str) -> Value {
        self.call(
            id,
            "tools/call",
            &format!(r#"{{"name": "{name}", "arguments": {args}}}"#),
        )
    }

    fn initialize(&mut self) {
        let r = self.call(
            "0",
            "initialize",
            r#"{"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}"#,
        );
        assert!(r.get("result").is_some(), "{}", r.to_json());
        self.notify("notifications/initialized", "{}");
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_progress(v: &Value, token: &str) -> bool {
    v.get("method").and_then(Value::as_str) == Some("notifications/progress")
        && at(v, "params.progressToken").and_then(Value::as_str) == Some(token)
}

/// The value at a dotted path (`result.content.0.text`).
fn at<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) => v.as_array().and_then(|a| a.get(i)),
            Err(_) => v.get(key),
        })
}

fn str_at<'v>(v: &'v Value, path: &str) -> &'v str {
    at(v, path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {path} in {}", v.to_json()))
}

fn num_at(v: &Value, path: &str) -> u64 {
    at(v, path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {path} in {}", v.to_json()))
}

fn is_error(v: &Value) -> bool {
    at(v, "result.isError").and_then(Value::as_bool) == Some(true)
}

fn error_code(v: &Value) -> Option<f64> {
    match at(v, "error.code") {
        Some(Value::Number(n)) => Some(*n),
        _ => None,
    }
}

/// A stream-mode simulator with VM `work` and this policy, agent listening.
fn streaming_with_policy(policy: &str) -> Sim {
    let mut sim = Sim::new(&["work"]);
    sim.set("QVM_REMOTE_MODE", "stream");
    sim.write_policy(policy);
    sim.start_daemon();
    let sock = sim.vm_data("work").join("agent.sock");
    assert!(
        wait_for(Duration::from_secs(20), || sock.exists()),
        "no agent.sock: {}",
        sim.log_text()
    );
    sim
}

/// A sleep duration no other test or process uses, to find the job's process by.
fn unique_sleep() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}.{nanos:09}", 500 + std::process::id() % 200)
}

#[test]
fn handshake_answers_the_clients_version_or_our_latest() {
    let sim = Sim::new(&["work"]);
    let mut c = Client::start(&sim, &[]);
    let cases = [
        (Some("2025-03-26"), "2025-03-26"),
        (Some("2025-06-18"), "2025-06-18"),
        (Some("2025-11-25"), "2025-11-25"),
        (Some("1999-01-01"), "2025-11-25"),
        (None, "2025-11-25"),
    ];
    for (i, (asked, answered)) in cases.iter().enumerate() {
        let params = match asked {
            Some(v) => format!(r#"{{"protocolVersion": "{v}", "capabilities": {{}}}}"#),
            None => r#"{"capabilities": {}}"#.to_string(),
        };
        let r = c.call(&i.to_string(), "initialize", &params);
        assert_eq!(str_at(&r, "result.protocolVersion"), *answered, "{asked:?}");
        assert_eq!(
            at(&r, "result.capabilities").unwrap().to_json(),
            r#"{"tools": {"listChanged": false}}"#
        );
        assert_eq!(str_at(&r, "result.serverInfo.name"), "qvm-remote");
        assert_eq!(
            str_at(&r, "result.serverInfo.version"),
            env!("CARGO_PKG_VERSION")
        );
    }
    c.notify("notifications/initialized", "{}");
    let r = c.call("\"p\"", "ping", "{}");
    assert_eq!(r.get("result").unwrap().to_json(), "{}");
    // The notification got no answer: nothing is left over.
    assert!(!c.pump(Duration::from_millis(300)), "{:?}", c.seen);
    assert!(c.seen.iter().all(|(_, taken, _)| *taken));
}

#[test]
fn tools_list_carries_schemas_and_annotations_and_read_only_hides_dom0_run() {
    let sim = Sim::new(&["work"]);
    let mut c = Client::start(&sim, &[]);
    c.initialize();
    let r = c.call("1", "tools/list", "{}");
    let tools = at(&r, "result.tools").and_then(Value::as_array).unwrap();
    let names: Vec<&str> = tools.iter().map(|t| str_at(t, "name")).collect();
    assert_eq!(
        names,
        ["dom0_run", "dom0_ping", "dom0_history", "dom0_result"]
    );
    for t in tools {
        let name = str_at(t, "name");
        assert!(!str_at(t, "description").is_empty());
        assert_eq!(str_at(t, "inputSchema.type"), "object", "{name}");
        assert_eq!(str_at(t, "outputSchema.type"), "object", "{name}");
        let hint = |k: &str| at(t, &format!("annotations.{k}")).and_then(Value::as_bool);
        assert_eq!(hint("readOnlyHint"), Some(name != "dom0_run"), "{name}");
        assert_eq!(hint("openWorldHint"), Some(false), "{name}");
    }
    let run = &tools[0];
    assert_eq!(str_at(run, "inputSchema.required.0"), "command");
    assert_eq!(str_at(run, "inputSchema.properties.command.type"), "string");
    assert_eq!(
        str_at(run, "inputSchema.properties.timeout_s.type"),
        "integer"
    );
    assert_eq!(
        num_at(run, "inputSchema.properties.timeout_s.maximum"),
        86400
    );
    assert_eq!(str_at(run, "inputSchema.properties.stdin.type"), "string");
    assert_eq!(
        at(run, "annotations.destructiveHint").and_then(Value::as_bool),
        Some(true)
    );
    let required: Vec<&str> = at(run, "outputSchema.required")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        required,
        [
            "id",
            "status",
            "exit",
            "signal",
            "stdout",
            "stderr",
            "truncated",
            "duration_ms"
        ]
    );
    drop(c);

    let mut ro = Client::start(&sim, &["--read-only"]);
    ro.initialize();
    let r = ro.call("1", "tools/list", "{}");
    let names: Vec<&str> = at(&r, "result.tools")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|t| str_at(t, "name"))
        .collect();
    assert_eq!(names, ["dom0_ping", "dom0_history", "dom0_result"]);
    let marker = sim.marker("read-only");
    let r = ro.tool(
        "2",
        "dom0_run",
        &format!(r#"{{"command": "touch {}"}}"#, marker.display()),
    );
    assert_eq!(error_code(&r), Some(-32602.0), "{}", r.to_json());
    assert!(str_at(&r, "error.message").contains("--read-only"));
    let r = ro.tool("3", "dom0_history", "{}");
    assert!(!is_error(&r), "{}", r.to_json());
    let pending = sim.vm_data("work").join("queue/pending");
    assert_eq!(std::fs::read_dir(pending).unwrap().count(), 0);
    assert!(!marker.exists());
}

#[test]
fn dom0_run_answers_output_exit_and_stdin_and_the_read_tools_find_it() {
    let sim = Sim::streaming(&["work"]);
    let mut c = Client::start(&sim, &[]);
    c.initialize();
    let r = c.tool("1", "dom0_run", r#"{"command": "echo out; echo err >&2"}"#);
    assert!(!is_error(&r), "{}", r.to_json());
    let s = at(&r, "result.structuredContent").unwrap();
    assert_eq!(str_at(s, "status"), "done");
    assert_eq!(num_at(s, "exit"), 0);
    assert_eq!(num_at(s, "signal"), 0);
    assert_eq!(str_at(s, "stdout"), "out\n");
    assert_eq!(str_at(s, "stderr"), "err\n");
    assert_eq!(str_at(s, "truncated"), "none");
    let _ = num_at(s, "duration_ms");
    let id = str_at(s, "id").to_string();
    assert_eq!(str_at(&r, "result.content.0.type"), "text");
    let text = str_at(&r, "result.content.0.text");
    assert!(
        text.starts_with("out\n[stderr]\nerr\n[job ") && text.contains("done, exit 0"),
        "{text}"
    );

    let r = c.tool("2", "dom0_run", r#"{"command": "echo failing; exit 3"}"#);
    assert!(is_error(&r), "{}", r.to_json());
    assert_eq!(str_at(&r, "result.structuredContent.status"), "done");
    assert_eq!(num_at(&r, "result.structuredContent.exit"), 3);

    let r = c.tool(
        "3",
        "dom0_run",
        r#"{"command": "cat", "stdin": "fed \u00e9\n", "timeout_s": 20}"#,
    );
    assert!(!is_error(&r), "{}", r.to_json());
    assert_eq!(
        str_at(&r, "result.structuredContent.stdout"),
        "fed \u{e9}\n"
    );

    // A command and a stdin near their 1 MiB limits travel in one message over 1 MiB.
    let comment = "x".repeat(200_000);
    let stdin = "y".repeat(1_000_000);
    let args = format!(r#"{{"command": "wc -c #{comment}", "stdin": "{stdin}"}}"#);
    assert!(args.len() > 1 << 20);
    let big = c.tool("30", "dom0_run", &args);
    assert!(!is_error(&big), "{}", str_at(&big, "result.content.0.text"));
    assert_eq!(
        str_at(&big, "result.structuredContent.stdout").trim(),
        "1000000"
    );

    let r = c.tool("4", "dom0_history", r#"{"limit": 5}"#);
    assert!(!is_error(&r), "{}", r.to_json());
    let entries = at(&r, "result.structuredContent.entries")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(entries.len(), 4);
    // Oldest first to the second; within one second the order is the ids'.
    let first = entries.iter().find(|e| str_at(e, "id") == id).unwrap();
    assert_eq!(num_at(first, "exit"), 0);
    assert_eq!(str_at(first, "command"), "echo out; echo err >&2");
    let failing = entries
        .iter()
        .find(|e| str_at(e, "command") == "echo failing; exit 3")
        .unwrap();
    assert_eq!(num_at(failing, "exit"), 3);

    let r = c.tool("5", "dom0_result", &format!(r#"{{"id": "{id}"}}"#));
    assert!(!is_error(&r), "{}", r.to_json());
    assert_eq!(str_at(&r, "result.structuredContent.stdout"), "out\n");
    let r = c.tool(
        "6",
        "dom0_result",
        r#"{"id": "20200101-000000-1-0000000000000000"}"#,
    );
    assert!(is_error(&r), "{}", r.to_json());
    assert!(at(&r, "result.structuredContent").is_none());

    let r = c.tool("7", "dom0_ping", "{}");
    assert!(!is_error(&r), "{}", r.to_json());
    assert_eq!(
        at(&r, "result.structuredContent.answered").and_then(Value::as_bool),
        Some(true)
    );
    assert_eq!(str_at(&r, "result.structuredContent.status"), "done");
    assert!(str_at(&r, "result.content.0.text").starts_with("pong from dom0 in "));
}

#[test]
fn a_job_denied_by_policy_is_a_tool_error_with_the_reason() {
    let sim = streaming_with_policy("work allow id *\n");
    let mut c = Client::start(&sim, &[]);
    c.initialize();
    let r = c.tool("1", "dom0_run", r#"{"command": "uname -a"}"#);
    assert!(is_error(&r), "{}", r.to_json());
    let s = at(&r, "result.structuredContent").unwrap();
    assert_eq!(str_at(s, "status"), "denied");
    assert_eq!(num_at(s, "exit"), 126);
    assert!(
        str_at(s, "reason").contains("denied by policy"),
        "{}",
        s.to_json()
    );
    assert!(str_at(&r, "result.content.0.text").contains("denied by policy"));
    let r = c.tool("2", "dom0_run", r#"{"command": "id -u"}"#);
    assert!(!is_error(&r), "{}", r.to_json());
}

#[test]
fn ask_waits_with_an_honest_progress_note_until_approved() {
    let sim = streaming_with_policy("work ask touch *\n");
    let marker = sim.marker("approved-over-mcp");
    let mut c = Client::start(&sim, &[]);
    c.initialize();
    c.request(
        "\"ask\"",
        "tools/call",
        &format!(
            r#"{{"name": "dom0_run", "arguments": {{"command": "touch {}", "timeout_s": 60}}, "_meta": {{"progressToken": "t-ask"}}}}"#,
            marker.display()
        ),
    );
    let mut id = None;
    assert!(
        wait_for(Duration::from_secs(20), || {
            id = sim.pending_ids().into_iter().next();
            id.is_some()
        }),
        "the job never showed in pending: {}",
        sim.log_text()
    );
    let note = c.take(PATIENCE, |v| {
        is_progress(v, "t-ask") && str_at(v, "params.message").contains("awaiting approval in dom0")
    });
    let (note, _) = note.unwrap_or_else(|| panic!("no waiting note: {:?}", c.seen));
    assert!(
        str_at(&note, "params.message")
            .starts_with("waiting for dom0 (a job may be awaiting approval in dom0)"),
        "{}",
        note.to_json()
    );
    assert!(!marker.exists(), "ran before approval");
    let out = sim.dom0_cmd(&["approve", &id.unwrap()], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let r = c.response("\"ask\"");
    assert!(!is_error(&r), "{}", r.to_json());
    assert_eq!(str_at(&r, "result.structuredContent.status"), "done");
    assert!(marker.exists());
    // Progress values only grow.
    let values: Vec<u64> = c
        .seen
        .iter()
        .filter(|(v, _, _)| is_progress(v, "t-ask"))
        .map(|(v, _, _)| num_at(v, "params.progress"))
        .collect();
    assert!(values.len() >= 2, "{values:?}");
    assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
}

#[test]
fn a_timeout_is_a_tool_error() {
    let sim = Sim::streaming(&["work"]);
    let mut c = Client::start(&sim, &[]);
    c.initialize();
    let started = Instant::now();
    let r = c.tool(
        "1",
        "dom0_run",
        r#"{"command": "echo begun; sleep 30", "timeout_s": 1}"#,
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(is_error(&r), "{}", r.to_json());
    assert_eq!(str_at(&r, "result.structuredContent.status"), "timeout");
    assert_eq!(str_at(&r, "result.structuredContent.stdout"), "begun\n");
}

#[test]
fn progress_carries_live_output_before_the_result() {
    let sim = Sim::streaming(&["work"]);
    let mut c = Client::start(&sim, &[]);
    c.initialize();
    c.request(
        "9",
        "tools/call",
        r#"{"name": "dom0_run", "arguments": {"command": "echo first; sleep 2; echo second >&2"}, "_meta": {"progressToken": 42}}"#,
    );
    let (_, result_at) = {
        let want = Value::Number(9.0);
        c.take(PATIENCE, |v| v.get("id") == Some(&want)).unwrap()
    };
    let notes: Vec<(String, Instant)> = {
        let mut v = Vec::new();
        while let Some((m, t)) = c.take(Duration::ZERO, |m| {
            m.get("method").and_then(Value::as_str) == Some("notifications/progress")
                && at(m, "params.progressToken") == Some(&Value::Number(42.0))
        }) {
            v.push((str_at(&m, "params.message").to_string(), t));
        }
        v
    };
    let first = notes
        .iter()
        .find(|(m, _)| m.contains("stdout: first"))
        .unwrap_or_else(|| panic!("{notes:?}"));
    let second = notes
        .iter()
        .find(|(m, _)| m.contains("stderr: second"))
        .unwrap_or_else(|| panic!("{notes:?}"));
    assert!(notes[0].0.starts_with("job ") && notes[0].0.contains(" queued"));
    assert!(
        first.1 + Duration::from_millis(1500) < result_at,
        "first output at {:?}, result at {:?}: not live",
        first.1,
        result_at
    );
    assert!(second.1 <= result_at);
    // Nothing about this call comes after its response.
    let result_index = c
        .seen
        .iter()
        .position(|(v, _, _)| v.get("id") == Some(&Value::Number(9.0)))
        .unwrap();
    assert!(!c.seen[result_index..]
        .iter()
        .any(|(v, _, _)| v.get("method").is_some()));
}

#[test]
fn cancellation_kills_the_dom0_job_and_sends_no_response() {
    let sim = Sim::streaming(&["work"]);
    let mut c = Client::start(&sim, &[]);
    c.initialize();
    let duration = unique_sleep();
    c.request(
        "\"doomed\"",
        "tools/call",
        &format!(
            r#"{{"name": "dom0_run", "arguments": {{"command": "echo started; sleep {duration}; echo never"}}, "_meta": {{"progressToken": "t-cancel"}}}}"#
        ),
    );
    let queued = c
        .take(PATIENCE, |v| {
            is_progress(v, "t-cancel") && str_at(v, "params.message").starts_with("job ")
        })
        .unwrap()
        .0;
    let job = str_at(&queued, "params.message")
        .split(' ')
        .nth(1)
        .unwrap()
        .to_string();
    c.take(PATIENCE, |v| {
        is_progress(v, "t-cancel") && str_at(v, "params.message").contains("started")
    })
    .unwrap_or_else(|| panic!("no live output: {:?}", c.seen));
    let needle = format!("sleep {duration}");
    assert!(
        wait_for(Duration::from_secs(10), || !processes_matching(&needle)
            .is_empty()),
        "the job is not running"
    );
    c.notify(
        "notifications/cancelled",
        r#"{"requestId": "doomed", "reason": "test"}"#,
    );
    assert!(
        wait_for(Duration::from_secs(10), || processes_matching(&needle)
            .is_empty()),
        "the cancelled job's process survived"
    );
    // The server still answers, and never answers the cancelled request.
    let r = c.call("1", "ping", "{}");
    assert!(r.get("result").is_some());
    c.pump(Duration::from_secs(2));
    let doomed = Value::String("doomed".into());
    assert!(
        !c.seen.iter().any(|(v, _, _)| v.get("id") == Some(&doomed)),
        "{:?}",
        c.seen
    );
    // The client archived dom0's `cancelled` result, as Ctrl-C would.
    let shown = sim.client("work", &["--json", "result", &job]);
    assert!(
        stdout(&shown).contains("\"status\": \"cancelled\""),
        "{}",
        stdout(&shown)
    );
}

#[test]
fn bad_messages_get_their_error_codes_and_the_server_keeps_serving() {
    let sim = Sim::new(&["work"]);
    let mut c = Client::start(&sim, &[]);
    c.initialize();
    let null = Value::Null;
    let table: &[(&[u8], Option<&str>, f64)] = &[
        (b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": ", None, -32700.0),
        (b"not json at all", None, -32700.0),
        (b"{\"jsonrpc\": \"2.0\", \"id\": 2, \"method\": \"x\xff\"}", None, -32700.0),
        (b"[{\"jsonrpc\": \"2.0\", \"id\": 3, \"method\": \"ping\"}]", None, -32600.0),
        (b"{\"id\": 4, \"method\": \"ping\"}", Some("4"), -32600.0),
        (b"{\"jsonrpc\": \"2.0\", \"id\": 5, \"method\": \"resources/list\"}", Some("5"), -32601.0),
        (b"{\"jsonrpc\": \"2.0\", \"id\": 6, \"method\": \"tools/call\"}", Some("6"), -32602.0),
        (
            b"{\"jsonrpc\": \"2.0\", \"id\": 7, \"method\": \"tools/call\", \"params\": {\"name\": \"rm_rf\"}}",
            Some("7"),
            -32602.0,
        ),
        (
            b"{\"jsonrpc\": \"2.0\", \"id\": 8, \"method\": \"tools/call\", \"params\": {\"name\": \"dom0_run\", \"arguments\": {}}}",
            Some("8"),
            -32602.0,
        ),
        (
            b"{\"jsonrpc\": \"2.0\", \"id\": 9, \"method\": \"tools/call\", \"params\": {\"name\": \"dom0_run\", \"arguments\": {\"command\": \"ls\", \"timeout_s\": 0}}}",
            Some("9"),
            -32602.0,
        ),
        (
            b"{\"jsonrpc\": \"2.0\", \"id\": 10, \"method\": \"tools/call\", \"params\": {\"name\": \"dom0_run\", \"arguments\": {\"command\": \"ls\", \"sudo\": true}}}",
            Some("10"),
            -32602.0,
        ),
        (
            b"{\"jsonrpc\": \"2.0\", \"id\": 11, \"method\": \"tools/call\", \"params\": {\"name\": \"dom0_result\", \"arguments\": {\"id\": \"../../etc/passwd\"}}}",
            Some("11"),
            -32602.0,
        ),
    ];
    for (line, id, want) in table {
        let mut bytes = line.to_vec();
        bytes.push(b'\n');
        c.send_bytes(&bytes);
        let id_value = id.map(|i| json::parse(i.as_bytes()).unwrap());
        let (r, _) = c
            .take(PATIENCE, |v| v.get("error").is_some())
            .unwrap_or_else(|| panic!("no error for {}", String::from_utf8_lossy(line)));
        assert_eq!(
            error_code(&r),
            Some(*want),
            "{}: {}",
            String::from_utf8_lossy(line),
            r.to_json()
        );
        assert_eq!(r.get("id"), Some(id_value.as_ref().unwrap_or(&null)));
        let r = c.call("\"alive\"", "ping", "{}");
        assert!(r.get("result").is_some());
    }
    // One byte over the 2 MiB line limit: refused, skipped, and the server goes on.
    let mut huge =
        br#"{"jsonrpc": "2.0", "id": 12, "method": "ping", "params": {"pad": ""#.to_vec();
    let head = huge.len();
    huge.resize((2 << 20) + 1 - 3, b'a');
    huge.extend_from_slice(b"\"}}");
    assert_eq!(huge.len(), (2 << 20) + 1);
    assert!(head < huge.len());
    huge.push(b'\n');
    c.send_bytes(&huge);
    let (r, _) = c.take(PATIENCE, |v| v.get("error").is_some()).unwrap();
    assert_eq!(error_code(&r), Some(-32600.0), "{}", r.to_json());
    assert_eq!(r.get("id"), Some(&Value::Null));
    assert!(str_at(&r, "error.message").contains("over the limit"));
    let r = c.call("13", "ping", "{}");
    assert!(r.get("result").is_some());
    // Notifications, even unknown or malformed ones, get no answer; nor do responses.
    c.notify("notifications/unknown", "{}");
    c.notify("notifications/cancelled", r#"{"requestId": 424242}"#);
    c.send(r#"{"jsonrpc": "2.0", "id": 77, "result": {}}"#);
    assert!(!c.pump(Duration::from_millis(500)), "{:?}", c.seen.last());
    assert!(c.child.try_wait().unwrap().is_none(), "the server exited");
}

#[test]
fn four_calls_in_flight_are_answered_each_under_its_own_id() {
    let sim = Sim::streaming(&["work"]);
    let mut c = Client::start(&sim, &[]);
    c.initialize();
    let ids = ["101", "\"b\"", "103", "\"d-4\""];
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        c.request(
            id,
            "tools/call",
            &format!(
                r#"{{"name": "dom0_run", "arguments": {{"command": "sleep 1.5; echo call-{i}; exit {i}"}}}}"#
            ),
        );
    }
    // A ping is answered while they run: before any of them.
    let r = c.call("\"meanwhile\"", "ping", "{}");
    assert!(r.get("result").is_some());
    for (i, id) in ids.iter().enumerate() {
        let r = c.response(id);
        assert_eq!(
            str_at(&r, "result.structuredContent.stdout"),
            format!("call-{i}\n"),
            "{id}"
        );
        assert_eq!(num_at(&r, "result.structuredContent.exit"), i as u64);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "one after another: {took:?}");
    let position = |id: &Value| c.seen.iter().position(|(v, _, _)| v.get("id") == Some(id));
    let ping_at = position(&Value::String("meanwhile".into())).unwrap();
    for id in ids {
        let call_at = position(&json::parse(id.as_bytes()).unwrap()).unwrap();
        assert!(ping_at < call_at, "{id} answered before the ping");
    }
    // At the end of stdin a call in flight still answers, then the server exits.
    c.request(
        "\"last\"",
        "tools/call",
        r#"{"name": "dom0_run", "arguments": {"command": "sleep 1; echo last"}}"#,
    );
    c.stdin = None;
    let r = c.response("\"last\"");
    assert_eq!(str_at(&r, "result.structuredContent.stdout"), "last\n");
    assert!(wait_for(Duration::from_secs(10), || c
        .child
        .try_wait()
        .unwrap()
        .is_some()));
    assert_eq!(c.child.wait().unwrap().code(), Some(0), "{}", c.stderr());
}

#[test]
fn past_the_call_limit_a_call_is_refused_at_once_and_cancels_withdraw_jobs() {
    // No daemon: every job stays queued, so each call stays in flight.
    let sim = Sim::new(&["work"]);
    let mut c = Client::start(&sim, &[]);
    c.initialize();
    let limit = 16;
    let ids = 1000..1000 + limit as u32;
    for i in ids.clone() {
        c.request(
            &i.to_string(),
            "tools/call",
            r#"{"name": "dom0_run", "arguments": {"command": "true"}}"#,
        );
    }
    let pending = sim.vm_data("work").join("queue/pending");
    let count = || std::fs::read_dir(&pending).unwrap().count();
    assert!(
        wait_for(Duration::from_secs(10), || count() == limit),
        "{} jobs queued",
        count()
    );
    let r = c.tool("99", "dom0_ping", "{}");
    assert_eq!(error_code(&r), Some(-32000.0), "{}", r.to_json());
    for i in ids.clone() {
        c.notify(
            "notifications/cancelled",
            &format!(r#"{{"requestId": {i}}}"#),
        );
    }
    assert!(
        wait_for(Duration::from_secs(10), || count() == 0),
        "{} jobs left queued",
        count()
    );
    // Slots come back; none of the cancelled calls is answered.
    assert!(wait_for(Duration::from_secs(10), || {
        let r = c.call("\"again\"", "tools/call", r#"{"name": "dom0_history"}"#);
        error_code(&r).is_none()
    }));
    c.pump(Duration::from_millis(500));
    for i in ids {
        let id = Value::Number(f64::from(i));
        assert!(
            !c.seen.iter().any(|(v, _, _)| v.get("id") == Some(&id)),
            "{i}"
        );
    }
}

#[test]
fn sigterm_cancels_the_calls_in_flight_and_exits() {
    let sim = Sim::streaming(&["work"]);
    let mut c = Client::start(&sim, &[]);
    c.initialize();
    let duration = unique_sleep();
    c.request(
        "1",
        "tools/call",
        &format!(
            r#"{{"name": "dom0_run", "arguments": {{"command": "echo started; sleep {duration}"}}, "_meta": {{"progressToken": "t"}}}}"#
        ),
    );
    c.take(PATIENCE, |v| {
        is_progress(v, "t") && str_at(v, "params.message").contains("started")
    })
    .unwrap_or_else(|| panic!("no live output: {:?}", c.seen));
    let needle = format!("sleep {duration}");
    assert!(
        wait_for(Duration::from_secs(10), || !processes_matching(&needle)
            .is_empty()),
        "the job is not running"
    );
    let t = Instant::now();
    signal(c.child.id(), "TERM");
    assert!(
        wait_for(Duration::from_secs(15), || c
            .child
            .try_wait()
            .unwrap()
            .is_some()),
        "the server did not exit"
    );
    assert_eq!(c.child.wait().unwrap().code(), Some(0), "{}", c.stderr());
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
    assert!(
        wait_for(Duration::from_secs(10), || processes_matching(&needle)
            .is_empty()),
        "the job outlived the server"
    );
    c.pump(Duration::from_millis(200));
    assert!(!c
        .seen
        .iter()
        .any(|(v, _, _)| v.get("id") == Some(&Value::Number(1.0))));
}
