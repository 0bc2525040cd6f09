//! Tab 10, qvm-remote: the connection map (each VM's key, connection, sessions and
//! queue from the daemon's status file), the command history (the daemon's audit
//! lines), and the jobs parked by an `ask` rule, with approve and deny
//! (`dom0::approval`, the same files `qvm-remote-dom0 approve|deny` writes).

use super::super::api::{opt, req, Access, Answer, ApiError, Call, Endpoint, Kind, Method, Reply};
use super::super::Ctx;
use super::{logs, qubes};
use crate::dom0::approval::{self, ApprovalError, Verdict};
use crate::id::CommandId;
use crate::json::{Array, Object};

/// Audit categories that make up the command history.
pub const HISTORY_CATEGORIES: &[&str] = &[
    "EXEC",
    "DONE",
    "DONE-FAIL",
    "REJECT",
    "DENY",
    "ASK",
    "TIMEOUT",
    "CANCEL",
    "APPROVE",
];
/// Most history lines.
pub const MAX_HISTORY: u64 = 1000;

/// This file's endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::Get,
        path: "/api/remote",
        tag: "remote",
        summary: "Connection map and queue per VM, and the command history from the audit log",
        fields: &[opt(
            "limit",
            Kind::Uint(1, MAX_HISTORY),
            "most history lines",
            "100",
        )],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: overview,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/approvals",
        tag: "remote",
        summary: "Jobs waiting for approval (ask rules), oldest first, with their exact command",
        fields: &[],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: pending,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/approvals/decide",
        tag: "remote",
        summary: "Approve or deny a waiting job",
        fields: &[
            req(
                "id",
                Kind::JobId,
                "the job's command id",
                "\"20261204-153000-4242-0123456789abcdef\"",
            ),
            req(
                "decision",
                Kind::OneOf(&["approve", "deny"]),
                "approve or deny",
                "\"deny\"",
            ),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: decide,
    },
];

fn overview(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let limit = call.uint("limit").unwrap_or(100) as usize;
    let (lines, _) = logs::tail_lines(&ctx.cfg.log)
        .map_err(|e| ApiError::new(500, format!("{}: {e}", ctx.cfg.log.display())))?;
    let history: Vec<&String> = lines
        .iter()
        .filter(|l| {
            l.split(' ')
                .nth(1)
                .is_some_and(|c| HISTORY_CATEGORIES.contains(&c))
        })
        .collect();
    let mut h = Array::new();
    for l in history.iter().skip(history.len().saturating_sub(limit)) {
        h = h.object(logs::line_json(l));
    }
    Reply::ok(
        Object::new()
            .object("daemon", qubes::daemon_json(&ctx.cfg))
            .str(
                "mode",
                match ctx.cfg.mode {
                    crate::config::Mode::Stream => "stream",
                    crate::config::Mode::Poll => "poll",
                },
            )
            .array("vms", qubes::remote_vms(&ctx.cfg))
            .array("history", h)
            .finish(),
    )
}

fn pending(ctx: &Ctx, _: &Call) -> Result<Reply, ApiError> {
    let list = approval::list(&ctx.cfg.run_dir).map_err(|e| ApiError::new(500, e.to_string()))?;
    let now = crate::time::unix_now();
    let mut a = Array::new();
    for r in list {
        a = a.object(
            Object::new()
                .str("id", r.id.as_str())
                .str("vm", &r.vm)
                .uint("received", r.received)
                .uint("deadline", r.deadline)
                .uint("seconds_left", r.deadline.saturating_sub(now))
                .str("rule", &r.rule)
                .str("command", &r.command)
                .uint("stdin_bytes", r.stdin_len as u64)
                .str("stdin", &r.stdin),
        );
    }
    Reply::ok(Object::new().array("pending", a).uint("now", now).finish())
}

fn decide(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let id =
        CommandId::parse(call.text("id")).map_err(|_| ApiError::bad("id", "not a command id"))?;
    let verdict = if call.text("decision") == "approve" {
        Verdict::Approve
    } else {
        Verdict::Deny
    };
    match approval::decide(&ctx.cfg.run_dir, &id, verdict) {
        Ok(rec) => Reply::ok(
            Object::new()
                .bool("ok", true)
                .str("id", id.as_str())
                .str("vm", &rec.vm)
                .str("decision", verdict.word())
                .str("command", &rec.command)
                .finish(),
        ),
        Err(e @ ApprovalError::NotPending(_)) => Err(ApiError::new(404, e.to_string())),
        Err(e @ ApprovalError::AlreadyDecided(_)) => Err(ApiError::new(409, e.to_string())),
        Err(e) => Err(ApiError::new(500, e.to_string())),
    }
}
