//! The tools' descriptions, input and output JSON Schemas and annotations, as JSON
//! text (MCP "Tools": `inputSchema`, `outputSchema`, `annotations`), written over
//! several lines for reading and sent on one. A test parses every one of them and
//! checks that the arguments `tools.rs` accepts are exactly the properties declared
//! here.

/// `dom0_run`: what an agent reads to decide how to use it.
pub const RUN_DESCRIPTION: &str =
    "Run a command in Qubes OS dom0 (the admin domain) from this VM. \
The text runs under bash in dom0 (a single line of plain words runs as that program without a \
shell). dom0's policy decides first: the job may be denied, or held until a human approves it in \
dom0 (the wait counts against timeout_s). Every job is authenticated, sandboxed and written to \
dom0's audit log. Returns stdout, stderr, the exit status and the job id; isError is true when \
the job did not finish with exit 0 (denied by policy, approval refused or timed out, timeout, \
non-zero exit).";

/// `dom0_run`'s arguments.
pub const RUN_INPUT: &str = r#"{"type": "object", "properties": {
"command": {"type": "string", "minLength": 1, "description": "Command text run in dom0 by bash, at most 1 MiB (UTF-8 bytes). Control characters other than tab, newline and carriage return are refused."},
"timeout_s": {"type": "integer", "minimum": 1, "maximum": 86400, "default": 300, "description": "Seconds the job may take in dom0, approval wait included; dom0 may cap it lower."},
"stdin": {"type": "string", "description": "Text given to the command's stdin, at most 1 MiB (UTF-8 bytes). Without it stdin is empty."}
}, "required": ["command"], "additionalProperties": false}"#;

/// A job's result: `dom0_run`'s and `dom0_result`'s structured content (the same
/// object as `qvm-remote --json`).
pub const RESULT_OUTPUT: &str = r#"{"type": "object", "properties": {
"id": {"type": "string", "description": "The job id (YYYYMMDD-HHMMSS-PID-16 hex), for dom0_result."},
"status": {"type": "string", "enum": ["done", "rejected", "denied", "timeout", "cancelled", "interrupted", "failed"], "description": "done: the command ran to its end; rejected: refused before policy (authentication, validation); denied: by policy or by the human asked to approve; timeout; cancelled; interrupted: dom0's daemon stopped; failed: dom0 could not run it."},
"exit": {"type": "integer", "minimum": 0, "maximum": 255, "description": "The command's exit status (126 for a denied job)."},
"signal": {"type": "integer", "minimum": 0, "description": "The signal that killed the command, 0 if none."},
"stdout": {"type": "string"},
"stderr": {"type": "string"},
"truncated": {"type": "string", "enum": ["none", "stdout", "stderr", "both"], "description": "Which output was cut at dom0's output cap."},
"duration_ms": {"type": "integer", "minimum": 0},
"reason": {"type": "string", "description": "Why, for any status but done."},
"stdout_utf8": {"type": "boolean", "description": "false when stdout was not UTF-8 and is shown with replacement characters."},
"stderr_utf8": {"type": "boolean", "description": "false when stderr was not UTF-8 and is shown with replacement characters."}
}, "required": ["id", "status", "exit", "signal", "stdout", "stderr", "truncated", "duration_ms"]}"#;

/// `dom0_run`'s annotations: it can change anything in dom0, and reaches nothing
/// outside this Qubes system.
pub const RUN_ANNOTATIONS: &str = r#"{"title": "Run a command in dom0", "readOnlyHint": false, "destructiveHint": true, "idempotentHint": false, "openWorldHint": false}"#;

/// `dom0_ping`.
pub const PING_DESCRIPTION: &str = "Check that dom0 answers this VM's jobs, and how fast: \
queues the job `true` and waits up to 20 s for dom0's signed answer. Any answer counts, \
a denial by policy included (its status says so).";

/// `dom0_ping`'s arguments: none.
pub const NO_INPUT: &str = r#"{"type": "object", "properties": {}, "additionalProperties": false}"#;

/// `dom0_ping`'s structured content.
pub const PING_OUTPUT: &str = r#"{"type": "object", "properties": {
"answered": {"type": "boolean"},
"latency_ms": {"type": "integer", "minimum": 0, "description": "From queueing the job to dom0's verified answer (or to giving up)."},
"status": {"type": "string", "description": "The answer's status (done, denied, ...), or no-answer."},
"reason": {"type": "string"},
"id": {"type": "string"}
}, "required": ["answered", "latency_ms", "status", "id"]}"#;

/// The annotations of the tools that change nothing in dom0.
pub const READ_ONLY_ANNOTATIONS: &str = r#"{"readOnlyHint": true, "destructiveHint": false, "idempotentHint": true, "openWorldHint": false}"#;

/// `dom0_history`.
pub const HISTORY_DESCRIPTION: &str = "This VM's recent dom0 commands, oldest first (to the \
second): job id, day, exit code and the command's first line (escaped, cut to 80 characters). \
Read from this VM's own archive; nothing is sent to dom0.";

/// `dom0_history`'s arguments.
pub const HISTORY_INPUT: &str = r#"{"type": "object", "properties": {
"limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20, "description": "How many of the most recent commands."}
}, "additionalProperties": false}"#;

/// `dom0_history`'s structured content.
pub const HISTORY_OUTPUT: &str = r#"{"type": "object", "properties": {
"entries": {"type": "array", "items": {"type": "object", "properties": {
"id": {"type": "string"},
"day": {"type": "string"},
"exit": {"type": ["integer", "null"], "description": "The exit code qvm-remote gave (124 timeout, 126 refused, 130 cancelled, ...); null if unreadable."},
"command": {"type": "string"}
}, "required": ["id", "day", "exit", "command"]}}
}, "required": ["entries"]}"#;

/// `dom0_result`.
pub const RESULT_DESCRIPTION: &str = "The result of an earlier job of this VM, by id (from \
dom0_run or dom0_history): from the queue if it arrived after its caller stopped waiting, else \
from the archive. Changes no file. isError is true only when there is no such result (yet); the \
job's own outcome is in status and exit.";

/// `dom0_result`'s arguments.
pub const RESULT_INPUT: &str = r#"{"type": "object", "properties": {
"id": {"type": "string", "pattern": "^[0-9]{8}-[0-9]{6}-[0-9]{1,10}-[0-9a-f]{16}$", "description": "The job id."}
}, "required": ["id"], "additionalProperties": false}"#;
