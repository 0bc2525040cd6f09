//! The four tools (MCP "Tools"): their definitions for `tools/list`, the checking of
//! `tools/call` arguments, and running them through the client's own API.
//!
//! Arguments are checked completely before anything runs, against exactly what the
//! schemas in [`super::schema`] declare; anything else (a missing or unknown argument, a
//! wrong type, a value out of range) is refused with `InvalidParams`, as is an unknown
//! tool, and a tool `--read-only` hides counts as unknown. A tool that ran answers a
//! result whose `isError` says whether the job failed; failures of qvm-remote itself
//! (no key, queue not writable, no answer) are results with `isError` too, without
//! structured content, so an agent can read and relay them.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::progress::Progress;
use super::rpc::{self, RpcError};
use super::{quote, schema};
use crate::id::CommandId;
use crate::json::{self, Value};
use crate::proto::job::PROTOCOL_MAX_COMMAND;
use crate::proto::{Status, Truncated};
use crate::vm::client::{self, Arrival, Pong, View, EXIT_CANCELLED, PING_WAIT};
use crate::vm::datadir::DataDir;
use crate::vm::{history, Console, Error};

/// `dom0_run`'s default timeout, seconds (the CLI's `-t` default).
pub const DEFAULT_TIMEOUT: u64 = crate::vm::cli::DEFAULT_TIMEOUT;
/// `dom0_run`'s largest timeout: the protocol's one day.
pub const MAX_TIMEOUT: u64 = crate::vm::cli::MAX_TIMEOUT;
/// `dom0_history`'s default number of entries.
pub const DEFAULT_HISTORY: u64 = 20;
/// `dom0_history`'s largest number of entries: a long history belongs in a file,
/// not in an agent's context.
pub const MAX_HISTORY: u64 = 1000;

/// A tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `dom0_run`.
    Run,
    /// `dom0_ping`.
    Ping,
    /// `dom0_history`.
    History,
    /// `dom0_result`.
    Result,
}

impl Tool {
    /// Every tool, in `tools/list` order.
    pub const ALL: [Tool; 4] = [Tool::Run, Tool::Ping, Tool::History, Tool::Result];

    /// The tool's name.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Run => "dom0_run",
            Tool::Ping => "dom0_ping",
            Tool::History => "dom0_history",
            Tool::Result => "dom0_result",
        }
    }

    /// Whether the tool changes nothing in dom0 (all `--read-only` serves).
    pub fn read_only(self) -> bool {
        !matches!(self, Tool::Run)
    }

    /// `(title, description, inputSchema, outputSchema, annotations)`.
    fn parts(
        self,
    ) -> (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    ) {
        match self {
            Tool::Run => (
                "Run a command in dom0",
                schema::RUN_DESCRIPTION,
                schema::RUN_INPUT,
                schema::RESULT_OUTPUT,
                schema::RUN_ANNOTATIONS,
            ),
            Tool::Ping => (
                "Check that dom0 answers",
                schema::PING_DESCRIPTION,
                schema::NO_INPUT,
                schema::PING_OUTPUT,
                schema::READ_ONLY_ANNOTATIONS,
            ),
            Tool::History => (
                "Recent dom0 commands of this VM",
                schema::HISTORY_DESCRIPTION,
                schema::HISTORY_INPUT,
                schema::HISTORY_OUTPUT,
                schema::READ_ONLY_ANNOTATIONS,
            ),
            Tool::Result => (
                "Result of an earlier dom0 job",
                schema::RESULT_DESCRIPTION,
                schema::RESULT_INPUT,
                schema::RESULT_OUTPUT,
                schema::READ_ONLY_ANNOTATIONS,
            ),
        }
    }

    /// The tool's `tools/list` entry, on one line.
    pub fn definition(self) -> String {
        let (title, description, input, output, annotations) = self.parts();
        rpc::raw_object(&[
            ("name", &json::string(self.name())),
            ("title", &json::string(title)),
            ("description", &json::string(description)),
            ("inputSchema", &one_line(input)),
            ("outputSchema", &one_line(output)),
            ("annotations", &one_line(annotations)),
        ])
    }

    /// The tools served (all, or the read-only ones).
    pub fn served(read_only: bool) -> impl Iterator<Item = Tool> {
        Tool::ALL
            .into_iter()
            .filter(move |t| !read_only || t.read_only())
    }
}

/// JSON text with its newlines made spaces: the schemas are written over several
/// lines for reading, and a message must be one line. Valid JSON has newlines only
/// between tokens (a string holds `\n` escaped), so this changes no value.
fn one_line(json_text: &str) -> String {
    json_text.replace(['\n', '\r'], " ")
}

/// The `tools/list` result.
pub fn list(read_only: bool) -> String {
    let tools: Vec<String> = Tool::served(read_only).map(Tool::definition).collect();
    rpc::raw_object(&[("tools", &rpc::raw_array(&tools))])
}

/// A checked tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `dom0_run`.
    Run {
        /// The command text.
        command: Vec<u8>,
        /// Seconds.
        timeout: u64,
        /// stdin bytes.
        stdin: Vec<u8>,
    },
    /// `dom0_ping`.
    Ping,
    /// `dom0_history`.
    History {
        /// Entries.
        limit: usize,
    },
    /// `dom0_result`.
    Result {
        /// The job.
        id: CommandId,
    },
}

/// A `tools/call` request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to run.
    pub call: Call,
    /// `params._meta.progressToken` as JSON text, if the client wants progress.
    pub progress_token: Option<String>,
}

/// Checks `tools/call` params: the tool exists (and is served), the arguments match
/// its schema.
pub fn parse_request(params: Option<&Value>, read_only: bool) -> Result<Request, RpcError> {
    let params = params.ok_or_else(|| RpcError::params("tools/call needs params"))?;
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::params("tools/call needs a string `name`"))?;
    let tool = Tool::served(read_only)
        .find(|t| t.name() == name)
        .ok_or_else(|| {
            let hint = if read_only && Tool::ALL.iter().any(|t| t.name() == name) {
                " (this server is --read-only)"
            } else {
                ""
            };
            RpcError::params(format!("unknown tool `{}`{hint}", quote(name)))
        })?;
    let members: &[(String, Value)] = match params.get("arguments") {
        None | Some(Value::Null) => &[],
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(RpcError::params(format!(
                "{name}: `arguments` must be an object, not {}",
                other.kind()
            )))
        }
    };
    let args = Arguments { tool, members };
    let call = match tool {
        Tool::Run => {
            args.only(&["command", "timeout_s", "stdin"])?;
            let command = args
                .string("command")?
                .ok_or_else(|| args.error("`command` is required"))?;
            let command = command.as_bytes().to_vec();
            client::check_body(&command).map_err(|e| args.error(&format!("`command`: {e}")))?;
            if command.len() > PROTOCOL_MAX_COMMAND {
                return Err(args.error(&format!(
                    "`command` is over the limit of {PROTOCOL_MAX_COMMAND} bytes"
                )));
            }
            let stdin = args
                .string("stdin")?
                .unwrap_or_default()
                .as_bytes()
                .to_vec();
            if stdin.len() > PROTOCOL_MAX_COMMAND {
                return Err(args.error(&format!(
                    "`stdin` is over the limit of {PROTOCOL_MAX_COMMAND} bytes"
                )));
            }
            let timeout = args
                .integer("timeout_s", 1, MAX_TIMEOUT)?
                .unwrap_or(DEFAULT_TIMEOUT);
            Call::Run {
                command,
                timeout,
                stdin,
            }
        }
        Tool::Ping => {
            args.only(&[])?;
            Call::Ping
        }
        Tool::History => {
            args.only(&["limit"])?;
            let limit = args
                .integer("limit", 1, MAX_HISTORY)?
                .unwrap_or(DEFAULT_HISTORY);
            Call::History {
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            }
        }
        Tool::Result => {
            args.only(&["id"])?;
            let text = args
                .string("id")?
                .ok_or_else(|| args.error("`id` is required"))?;
            let id = CommandId::parse(text)
                .map_err(|_| args.error("`id` must be a job id (YYYYMMDD-HHMMSS-PID-16 hex)"))?;
            Call::Result { id }
        }
    };
    let progress_token = params
        .get("_meta")
        .and_then(|m| m.get("progressToken"))
        .filter(|t| matches!(t, Value::String(_) | Value::Number(_)))
        .map(Value::to_json);
    Ok(Request {
        call,
        progress_token,
    })
}

/// A tool's arguments while they are checked.
struct Arguments<'a> {
    tool: Tool,
    members: &'a [(String, Value)],
}

impl Arguments<'_> {
    fn error(&self, what: &str) -> RpcError {
        RpcError::params(format!("{}: {what}", self.tool.name()))
    }

    /// Refuses arguments the schema does not declare (`additionalProperties: false`).
    fn only(&self, known: &[&str]) -> Result<(), RpcError> {
        match self
            .members
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            Some((k, _)) => Err(self.error(&format!("unknown argument `{}`", quote(k)))),
            None => Ok(()),
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn string(&self, key: &str) -> Result<Option<&str>, RpcError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.error(&format!("`{key}` must be a string, not {}", v.kind()))),
        }
    }

    fn integer(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, RpcError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64().filter(|n| (min..=max).contains(n)) {
                Some(n) => Ok(Some(n)),
                None => Err(self.error(&format!("`{key}` must be an integer from {min} to {max}"))),
            },
        }
    }
}

/// What a tool call answers: the `result` of its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    /// The text content block.
    pub text: String,
    /// `structuredContent`, JSON text matching the tool's output schema.
    pub structured: Option<String>,
    /// `isError`.
    pub is_error: bool,
}

impl ToolResult {
    /// A failure of qvm-remote itself: text only.
    fn failure(text: String) -> ToolResult {
        ToolResult {
            text,
            structured: None,
            is_error: true,
        }
    }

    /// The `CallToolResult` object.
    pub fn json(&self) -> String {
        let text = json::Object::new()
            .str("type", "text")
            .str("text", &self.text)
            .finish();
        let content = rpc::raw_array(&[text]);
        let is_error = if self.is_error { "true" } else { "false" };
        let mut members = vec![("content", content.as_str())];
        if let Some(s) = &self.structured {
            members.push(("structuredContent", s));
        }
        members.push(("isError", is_error));
        rpc::raw_object(&members)
    }
}

/// What a call needs from the server.
pub struct Context<'a, 'c> {
    /// The data dir.
    pub dd: &'a DataDir,
    /// Set to cancel the call's job (the client's wait loop consumes it).
    pub cancel: &'a AtomicBool,
    /// Where warnings about archiving go (stderr).
    pub console: &'a mut Console<'c>,
}

/// Runs a checked call. `None`: it was cancelled, and no response may be sent.
pub fn execute(
    call: Call,
    ctx: &mut Context<'_, '_>,
    progress: &mut Progress<'_>,
) -> Option<ToolResult> {
    let outcome = match call {
        Call::Run {
            command,
            timeout,
            stdin,
        } => run(command, timeout, stdin, ctx, progress),
        Call::Ping => ping(ctx, progress),
        Call::History { limit } => history(ctx.dd, limit).map(Some),
        Call::Result { id } => result(ctx.dd, &id).map(Some),
    };
    progress.flush();
    match outcome {
        Ok(r) => r,
        Err(e) => Some(ToolResult::failure(format!("qvm-remote: {e}"))),
    }
}

fn run(
    command: Vec<u8>,
    timeout: u64,
    stdin: Vec<u8>,
    ctx: &mut Context<'_, '_>,
    progress: &mut Progress<'_>,
) -> Result<Option<ToolResult>, Error> {
    let dd = ctx.dd;
    let key = client::load_key(dd)?;
    let job = client::new_job(timeout, command, stdin)?;
    let running = client::start(dd, &key, &job)?;
    let started = running.started();
    let how = if running.is_live() {
        ""
    } else {
        " (no agent socket: no live output)"
    };
    progress.note(&format!("job {} queued{how}", job.id));
    let limit = client::wait_limit(timeout);
    let (arrival, streamed) = running.wait(limit, ctx.cancel, progress)?;
    match arrival {
        Arrival::Answered(res) => {
            let code = res.client_exit_code();
            let stream_ok = streamed.is_prefix_of(&res);
            client::finish(dd, &res, &job.body, Some(job.created), code, ctx.console);
            let mut r = from_view(&View::from_result(&res));
            if !stream_ok {
                r.is_error = true;
                r.text.push_str(
                    "\n[the live output differed from dom0's signed result; shown is the signed result]",
                );
            }
            Ok(Some(r))
        }
        Arrival::NoAnswer => {
            client::log_unanswered(dd, &job, "no-answer", 125, started, ctx.console);
            Ok(Some(ToolResult::failure(format!(
                "qvm-remote: no answer from dom0 after {}s (job {} left queued; fetch it later with dom0_result)",
                limit.as_secs(),
                job.id
            ))))
        }
        Arrival::Cancelled(Some(res)) => {
            client::finish(
                dd,
                &res,
                &job.body,
                Some(job.created),
                EXIT_CANCELLED,
                ctx.console,
            );
            Ok(None)
        }
        Arrival::Cancelled(None) => {
            client::log_unanswered(dd, &job, "cancelled", EXIT_CANCELLED, started, ctx.console);
            Ok(None)
        }
    }
}

/// A job's result as a tool result: text with stdout, then stderr under a label, then
/// a line with id, status and exit; `isError` unless it ran to exit 0.
fn from_view(v: &View) -> ToolResult {
    let mut text = String::new();
    let mut block = |label: Option<&str>, bytes: &[u8]| {
        if bytes.is_empty() {
            return;
        }
        if let Some(l) = label {
            text.push_str(l);
        }
        text.push_str(&String::from_utf8_lossy(bytes));
        if !text.ends_with('\n') {
            text.push('\n');
        }
    };
    block(None, &v.stdout);
    block(Some("[stderr]\n"), &v.stderr);
    text.push_str(&format!("[job {}: {}, exit {}", v.id, v.status, v.exit));
    if v.signal != 0 {
        text.push_str(&format!(", signal {}", v.signal));
    }
    text.push_str(&format!(", {} ms", v.duration_ms));
    if !v.reason.is_empty() {
        text.push_str(&format!(": {}", v.reason));
    }
    text.push(']');
    if !v.truncated.is_empty() && v.truncated != Truncated::None.as_str() {
        text.push_str(&format!(
            "\n[output truncated at dom0's cap: {}]",
            v.truncated
        ));
    }
    ToolResult {
        text,
        structured: Some(v.object().finish()),
        is_error: v.status != Status::Done.as_str() || v.exit != 0 || v.signal != 0,
    }
}

fn ping(
    ctx: &mut Context<'_, '_>,
    progress: &mut Progress<'_>,
) -> Result<Option<ToolResult>, Error> {
    let dd = ctx.dd;
    let key = client::load_key(dd)?;
    let job = client::ping_job()?;
    let running = client::start(dd, &key, &job)?;
    let started = running.started();
    progress.note(&format!("job {} queued", job.id));
    let (arrival, _) = running.wait(PING_WAIT, ctx.cancel, progress)?;
    let pong = client::settle_ping(dd, &job, arrival, started, ctx.console);
    let structured = |answered: bool, ms: u64, status: &str, reason: &str| {
        let mut o = json::Object::new()
            .bool("answered", answered)
            .uint("latency_ms", ms)
            .str("status", status);
        if !reason.is_empty() {
            o = o.str("reason", reason);
        }
        Some(o.str("id", job.id.as_str()).finish())
    };
    Ok(match pong {
        Pong::Answered { ms, result } => {
            let mut text = format!("pong from dom0 in {ms} ms");
            if result.status != Status::Done {
                text.push_str(&format!(" (status {}: {})", result.status, result.reason));
            }
            Some(ToolResult {
                text,
                structured: structured(true, ms, result.status.as_str(), &result.reason),
                is_error: false,
            })
        }
        Pong::NoAnswer { left_queued } => {
            let waited = PING_WAIT.as_secs();
            let fate = if left_queued {
                "the agent had taken it"
            } else {
                "withdrawn"
            };
            Some(ToolResult {
                text: format!(
                    "no answer from dom0 within {waited} s (job {}: {fate})",
                    job.id
                ),
                structured: structured(false, duration_ms(PING_WAIT), "no-answer", ""),
                is_error: true,
            })
        }
        Pong::Cancelled => None,
    })
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn history(dd: &DataDir, limit: usize) -> Result<ToolResult, Error> {
    let entries = history::recent(dd, limit)?;
    let mut text = String::new();
    let mut items = Vec::new();
    for e in &entries {
        text.push_str(&e.line());
        text.push('\n');
        let mut o = json::Object::new()
            .str("id", e.id.as_str())
            .str("day", &e.day);
        o = match e.exit {
            Some(code) => o.uint("exit", u64::from(code)),
            None => o.null("exit"),
        };
        items.push(o.str("command", &e.command).finish());
    }
    if entries.is_empty() {
        text.push_str("no commands archived yet\n");
    }
    Ok(ToolResult {
        text,
        structured: Some(rpc::raw_object(&[("entries", &rpc::raw_array(&items))])),
        is_error: false,
    })
}

fn result(dd: &DataDir, id: &CommandId) -> Result<ToolResult, Error> {
    Ok(match client::lookup_result(dd, id)? {
        Some(view) => ToolResult {
            // Found is success: the job's own outcome is in status and exit.
            is_error: false,
            ..from_view(&view)
        },
        None => ToolResult::failure(format!(
            "no result for {id}: it is still running, was never sent, or is not this VM's"
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(text: &str) -> Value {
        json::parse(text.as_bytes()).unwrap()
    }

    fn check(text: &str, read_only: bool) -> Result<Request, RpcError> {
        parse_request(Some(&params(text)), read_only)
    }

    #[test]
    fn every_schema_is_json_and_declares_what_is_accepted() {
        for read_only in [false, true] {
            assert!(!list(read_only).contains(['\n', '\r']));
        }
        let all = json::parse(list(false).as_bytes()).unwrap();
        let tools = all.get("tools").and_then(Value::as_array).unwrap();
        assert_eq!(tools.len(), 4);
        let accepted: [(&str, &[&str]); 4] = [
            ("dom0_run", &["command", "timeout_s", "stdin"]),
            ("dom0_ping", &[]),
            ("dom0_history", &["limit"]),
            ("dom0_result", &["id"]),
        ];
        for (t, (name, args)) in tools.iter().zip(accepted) {
            assert_eq!(t.get("name").and_then(Value::as_str), Some(name));
            let input = t.get("inputSchema").unwrap();
            assert_eq!(input.get("type").and_then(Value::as_str), Some("object"));
            assert_eq!(input.get("additionalProperties"), Some(&Value::Bool(false)));
            let props: Vec<&str> = input
                .get("properties")
                .and_then(Value::as_object)
                .unwrap()
                .iter()
                .map(|(k, _)| k.as_str())
                .collect();
            assert_eq!(props, args, "{name}");
            let output = t.get("outputSchema").unwrap();
            assert_eq!(output.get("type").and_then(Value::as_str), Some("object"));
            let ro = t
                .get("annotations")
                .and_then(|a| a.get("readOnlyHint"))
                .and_then(Value::as_bool);
            assert_eq!(ro, Some(name != "dom0_run"), "{name}");
        }
        let ro = json::parse(list(true).as_bytes()).unwrap();
        let names: Vec<&str> = ro
            .get("tools")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .filter_map(|t| t.get("name").and_then(Value::as_str))
            .collect();
        assert_eq!(names, ["dom0_ping", "dom0_history", "dom0_result"]);
    }

    #[test]
    fn arguments_table() {
        let ok = check(
            r#"{"name": "dom0_run", "arguments": {"command": "ls", "timeout_s": 86400, "stdin": "x"}, "_meta": {"progressToken": 5}}"#,
            false,
        )
        .unwrap();
        assert_eq!(
            ok.call,
            Call::Run {
                command: b"ls".to_vec(),
                timeout: 86400,
                stdin: b"x".to_vec()
            }
        );
        assert_eq!(ok.progress_token.as_deref(), Some("5"));
        let dflt = check(
            r#"{"name": "dom0_run", "arguments": {"command": "ls"}}"#,
            false,
        );
        assert!(matches!(
            dflt.unwrap().call,
            Call::Run {
                timeout: DEFAULT_TIMEOUT,
                ..
            }
        ));
        assert_eq!(
            check(r#"{"name": "dom0_ping"}"#, true).unwrap().call,
            Call::Ping
        );
        assert_eq!(
            check(r#"{"name": "dom0_history", "arguments": {}}"#, true)
                .unwrap()
                .call,
            Call::History { limit: 20 }
        );
        let refused = [
            (r#"{"arguments": {}}"#, false),
            (r#"{"name": "nope"}"#, false),
            (
                r#"{"name": "dom0_run", "arguments": {"command": "ls"}}"#,
                true,
            ),
            (r#"{"name": "dom0_run", "arguments": {}}"#, false),
            (r#"{"name": "dom0_run", "arguments": "ls"}"#, false),
            (
                r#"{"name": "dom0_run", "arguments": {"command": ""}}"#,
                false,
            ),
            (
                r#"{"name": "dom0_run", "arguments": {"command": 5}}"#,
                false,
            ),
            (
                r#"{"name": "dom0_run", "arguments": {"command": "a\u0007"}}"#,
                false,
            ),
            (
                r#"{"name": "dom0_run", "arguments": {"command": "ls", "timeout_s": 0}}"#,
                false,
            ),
            (
                r#"{"name": "dom0_run", "arguments": {"command": "ls", "timeout_s": 86401}}"#,
                false,
            ),
            (
                r#"{"name": "dom0_run", "arguments": {"command": "ls", "timeout_s": 1.5}}"#,
                false,
            ),
            (
                r#"{"name": "dom0_run", "arguments": {"command": "ls", "timeout_s": "9"}}"#,
                false,
            ),
            (
                r#"{"name": "dom0_run", "arguments": {"command": "ls", "cwd": "/"}}"#,
                false,
            ),
            (r#"{"name": "dom0_ping", "arguments": {"x": 1}}"#, false),
            (
                r#"{"name": "dom0_history", "arguments": {"limit": 1001}}"#,
                false,
            ),
            (
                r#"{"name": "dom0_result", "arguments": {"id": "../x"}}"#,
                false,
            ),
            (r#"{"name": "dom0_result"}"#, false),
        ];
        for (text, read_only) in refused {
            let e = check(text, read_only).unwrap_err();
            assert_eq!(e.code, rpc::ErrorCode::InvalidParams, "{text}: {e}");
        }
        assert!(parse_request(None, false).is_err());
        let e = check(
            r#"{"name": "dom0_run", "arguments": {"command": "ls"}}"#,
            true,
        );
        assert!(e.unwrap_err().message.contains("--read-only"));
    }

    #[test]
    fn limits_hold_one_byte_past() {
        let at = "a".repeat(PROTOCOL_MAX_COMMAND);
        let over = "a".repeat(PROTOCOL_MAX_COMMAND + 1);
        let call = |command: &str, stdin: &str| {
            let p = Value::Object(vec![
                ("name".into(), Value::String("dom0_run".into())),
                (
                    "arguments".into(),
                    Value::Object(vec![
                        ("command".into(), Value::String(command.into())),
                        ("stdin".into(), Value::String(stdin.into())),
                    ]),
                ),
            ]);
            parse_request(Some(&p), false)
        };
        assert!(call(&at, &at).is_ok());
        assert!(call(&over, "").is_err());
        assert!(call("ls", &over).is_err());
    }

    #[test]
    fn results_say_error_unless_exit_zero_and_read_back() {
        let mut v = View {
            id: "20261204-153000-4242-0123456789abcdef".into(),
            status: "done".into(),
            exit: 0,
            signal: 0,
            duration_ms: 5,
            stdout: b"out".to_vec(),
            stderr: b"err\n".to_vec(),
            truncated: "none".into(),
            reason: String::new(),
        };
        let r = from_view(&v);
        assert!(!r.is_error);
        assert_eq!(
            r.text,
            "out\n[stderr]\nerr\n[job 20261204-153000-4242-0123456789abcdef: done, exit 0, 5 ms]"
        );
        let parsed = json::parse(r.json().as_bytes()).unwrap();
        assert_eq!(parsed.get("isError"), Some(&Value::Bool(false)));
        let s = parsed.get("structuredContent").unwrap();
        assert_eq!(s.get("stdout").and_then(Value::as_str), Some("out"));
        v.exit = 3;
        assert!(from_view(&v).is_error);
        v.exit = 126;
        v.status = "denied".into();
        v.reason = "denied by policy".into();
        let r = from_view(&v);
        assert!(r.is_error && r.text.ends_with("exit 126, 5 ms: denied by policy]"));
        let f = ToolResult::failure("qvm-remote: no key".into());
        let parsed = json::parse(f.json().as_bytes()).unwrap();
        assert_eq!(parsed.get("structuredContent"), None);
        assert_eq!(parsed.get("isError"), Some(&Value::Bool(true)));
    }
}
