//! Tab 1, Dashboard: the daemon's state and its systemd unit (start, stop, restart,
//! enable with the same risk prompt as `qvm-remote-dom0 enable`, disable), each VM's
//! connection and queue, pending approvals, and whether the audit chain verifies.

use super::super::api::{
    opt, req, run_any, run_ok, tool_answer, Access, Answer, ApiError, Call, Endpoint, Kind, Method,
    Reply,
};
use super::super::Ctx;
use super::qubes;
use crate::dom0::cli::UNIT;
use crate::json::Object;

/// A log larger than this is not verified on every dashboard load (`qvm-remote-dom0
/// audit verify` does it); the dashboard says so.
pub const MAX_VERIFY_BYTES: u64 = 32 * 1024 * 1024;

/// What enabling the service means; the page shows it and needs `confirm: true`.
pub const ENABLE_RISK: &str = "Enabling qvm-remote-dom0.service starts it at every boot. While it runs, the VMs in QVM_REMOTE_VMS can run commands in dom0 as root, limited only by the policy. A compromised VM with a key can then act on your whole system.";

/// This file's endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::Get,
        path: "/api/dashboard",
        tag: "dashboard",
        summary:
            "Daemon and unit state, per-VM connection and queue, pending approvals, audit chain",
        fields: &[],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: dashboard,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/daemon",
        tag: "dashboard",
        summary: "Start, stop, restart, enable or disable the daemon's systemd unit",
        fields: &[
            req(
                "action",
                Kind::OneOf(&["start", "stop", "restart", "enable", "disable"]),
                "what to do",
                "\"restart\"",
            ),
            opt(
                "confirm",
                Kind::Bool,
                "true after the user has read the risk of `enable`",
                "false",
            ),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: daemon_action,
    },
];

fn unit_state(verb: &str) -> String {
    match run_any(&["systemctl", verb, UNIT]) {
        Ok(out) => out.stdout_text().trim().to_string(),
        Err(_) => "unknown".into(),
    }
}

fn audit_json(ctx: &Ctx) -> Object {
    let size = std::fs::metadata(&ctx.cfg.log).map_or(0, |m| m.len());
    if size > MAX_VERIFY_BYTES {
        return Object::new().null("ok").uint("size", size).str(
            "detail",
            "too large to verify here; run `qvm-remote-dom0 audit verify`",
        );
    }
    match crate::audit::verify(&ctx.cfg.log, crate::audit::GENESIS) {
        Ok((lines, _)) => Object::new()
            .bool("ok", true)
            .uint("lines", lines as u64)
            .uint("size", size)
            .str("detail", &format!("{lines} lines, chain intact")),
        Err(crate::audit::VerifyError::Io(e)) if size == 0 => Object::new()
            .bool("ok", true)
            .uint("lines", 0)
            .uint("size", 0)
            .str("detail", &format!("no log yet ({e})")),
        Err(e) => Object::new()
            .bool("ok", false)
            .uint("size", size)
            .str("detail", &e.to_string()),
    }
}

fn dashboard(ctx: &Ctx, _: &Call) -> Result<Reply, ApiError> {
    let pending = crate::dom0::approval::list(&ctx.cfg.run_dir).map_or(0, |l| l.len());
    Reply::ok(
        Object::new()
            .object("daemon", qubes::daemon_json(&ctx.cfg))
            .object(
                "unit",
                Object::new()
                    .str("name", UNIT)
                    .str("active", &unit_state("is-active"))
                    .str("enabled", &unit_state("is-enabled")),
            )
            .array("vms", qubes::remote_vms(&ctx.cfg))
            .uint("approvals_pending", pending as u64)
            .object("audit", audit_json(ctx))
            .str("config", &ctx.config_path.display().to_string())
            .str("policy", &ctx.cfg.policy.display().to_string())
            .bool("policy_exists", ctx.cfg.policy.exists())
            .uint("tasks_running", ctx.tasks.running())
            .uint("sessions", ctx.sessions.count() as u64)
            .str("enable_risk", ENABLE_RISK)
            .finish(),
    )
}

fn daemon_action(_: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let action = call.text("action");
    let argv: Vec<&str> = match action {
        "enable" => {
            if !call.flag("confirm") {
                return Err(ApiError::needs_confirmation(ENABLE_RISK));
            }
            vec!["systemctl", "enable", "--now", UNIT]
        }
        "disable" => vec!["systemctl", "disable", "--now", UNIT],
        "start" => vec!["systemctl", "start", UNIT],
        "stop" => vec!["systemctl", "stop", UNIT],
        _ => vec!["systemctl", "restart", UNIT],
    };
    tool_answer(&run_ok(&argv)?)
}
