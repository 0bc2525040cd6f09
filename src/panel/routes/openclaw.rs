//! Tab 6, OpenClaw: the qubes-claw agent VMs, i.e. the VMs tagged `openclaw` (the tag
//! is configurable): their state, start and shutdown, and the agent's status and logs
//! inside each VM.
//!
//! The commands run inside the VMs come from `/etc/qubes/openclaw.conf`
//! (`panel --openclaw-conf`), `KEY=value` lines read with the same owner and mode checks
//! as the main config; each command is split on whitespace into an argv and run with
//! `qvm-run --no-shell`, never through a shell. Only VMs that carry the tag are acted on.

use std::path::Path;

use super::super::api::{
    clip, opt, req, run_any, run_ok, tool_answer, Access, Answer, ApiError, Call, Endpoint, Kind,
    Method, Reply,
};
use super::super::{runner, Ctx};
use super::qubes;
use crate::json::{Array, Object};

/// Most words in a configured command.
pub const MAX_WORDS: usize = 32;
/// Output kept from an agent command.
pub const MAX_AGENT_OUTPUT: usize = 512 * 1024;

/// The settings, with their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClawConf {
    /// `OPENCLAW_TAG`: the tag that marks an agent VM.
    pub tag: String,
    /// `OPENCLAW_USER`: the VM user the commands run as.
    pub user: String,
    /// `OPENCLAW_STATUS`: the agent's status.
    pub status: Vec<String>,
    /// `OPENCLAW_LOGS`: the agent's recent log.
    pub logs: Vec<String>,
    /// `OPENCLAW_RESTART`: restarts the agent.
    pub restart: Vec<String>,
}

impl Default for ClawConf {
    fn default() -> ClawConf {
        let w = |s: &str| s.split_whitespace().map(str::to_string).collect();
        ClawConf {
            tag: "openclaw".into(),
            user: "user".into(),
            status: w("systemctl --user --no-pager status openclaw"),
            logs: w("journalctl --user --no-pager -n 200 -u openclaw"),
            restart: w("systemctl --user restart openclaw"),
        }
    }
}

/// Reads the settings file; a missing file means the defaults.
pub fn load(path: &Path) -> Result<ClawConf, String> {
    let mut c = ClawConf::default();
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(c);
    }
    let text = crate::config::read_config_file(path).map_err(|e| e.to_string())?;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("{at}: expected KEY=value"))?;
        let v = v.trim().trim_matches('"');
        let argv = || -> Result<Vec<String>, String> {
            let words: Vec<String> = v.split_whitespace().map(str::to_string).collect();
            if words.is_empty()
                || words.len() > MAX_WORDS
                || words.first().is_some_and(|w| w.starts_with('-'))
                || words.iter().any(|w| w.chars().any(char::is_control))
            {
                return Err(format!("{at}: want a command of 1 to {MAX_WORDS} words"));
            }
            Ok(words)
        };
        match k.trim() {
            "OPENCLAW_TAG" => {
                super::super::api::check_string(Kind::Tag, v)
                    .map_err(|why| format!("{at}: {why}"))?;
                c.tag = v.to_string();
            }
            "OPENCLAW_USER" => {
                if v.is_empty()
                    || !v.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    })
                    || v.starts_with('-')
                {
                    return Err(format!("{at}: not a user name"));
                }
                c.user = v.to_string();
            }
            "OPENCLAW_STATUS" => c.status = argv()?,
            "OPENCLAW_LOGS" => c.logs = argv()?,
            "OPENCLAW_RESTART" => c.restart = argv()?,
            other => {
                return Err(format!(
                    "{at}: unknown key {}",
                    crate::proto::escape_line(other.as_bytes(), 40)
                ))
            }
        }
    }
    Ok(c)
}

/// This file's endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::Get,
        path: "/api/openclaw",
        tag: "openclaw",
        summary: "The agent VMs (tagged per openclaw.conf) with their state, and the settings in use",
        fields: &[],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: overview,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/openclaw/power",
        tag: "openclaw",
        summary: "Start or shut down an agent VM, or restart the agent inside it",
        fields: &[
            req("vm", Kind::Vm, "an agent VM", "\"claw1\""),
            req("action", Kind::OneOf(&["start", "shutdown", "restart-agent"]), "what to do", "\"restart-agent\""),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: power,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/openclaw/agent",
        tag: "openclaw",
        summary: "The agent's status or logs inside an agent VM (the configured argv, via qvm-run --no-shell)",
        fields: &[
            req("vm", Kind::Vm, "an agent VM", "\"claw1\""),
            opt("what", Kind::OneOf(&["status", "logs"]), "status (default) or logs", "\"status\""),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: agent,
    },
];

fn conf(ctx: &Ctx) -> Result<ClawConf, ApiError> {
    load(&ctx.opts.openclaw_conf).map_err(|e| ApiError::new(500, e))
}

fn has_tag(vm: &str, tag: &str) -> Result<bool, ApiError> {
    Ok(run_any(&["qvm-tags", vm, "list", tag])?.success())
}

fn require_agent_vm(vm: &str, c: &ClawConf) -> Result<(), ApiError> {
    if has_tag(vm, &c.tag)? {
        Ok(())
    } else {
        Err(ApiError::new(
            403,
            format!("{vm} is not tagged {}: not an agent VM", c.tag),
        ))
    }
}

fn overview(ctx: &Ctx, _: &Call) -> Result<Reply, ApiError> {
    let (c, conf_error) = match load(&ctx.opts.openclaw_conf) {
        Ok(c) => (c, String::new()),
        Err(e) => (ClawConf::default(), e),
    };
    let rows = qubes::qvm_ls(&["NAME", "CLASS", "STATE", "LABEL"], &[])?;
    let mut vms = Array::new();
    for r in rows
        .iter()
        .filter(|r| r.first().is_some_and(|n| n != "dom0"))
    {
        let name = r.first().map_or("", String::as_str);
        if !has_tag(name, &c.tag)? {
            continue;
        }
        vms = vms.object(
            Object::new()
                .str("name", name)
                .str("class", r.get(1).map_or("", String::as_str))
                .str("state", r.get(2).map_or("", String::as_str))
                .str("label", r.get(3).map_or("", String::as_str)),
        );
    }
    let join = |v: &[String]| v.join(" ");
    Reply::ok(
        Object::new()
            .str("tag", &c.tag)
            .array("vms", vms)
            .str("conf_path", &ctx.opts.openclaw_conf.display().to_string())
            .str("conf_error", &conf_error)
            .object(
                "commands",
                Object::new()
                    .str("user", &c.user)
                    .str("status", &join(&c.status))
                    .str("logs", &join(&c.logs))
                    .str("restart", &join(&c.restart)),
            )
            .finish(),
    )
}

fn in_vm(ctx: &Ctx, vm: &str, c: &ClawConf, cmd: &[String]) -> Result<runner::Output, ApiError> {
    let argv = qubes::qvm_run_argv(ctx, vm, Some(&c.user), false, cmd);
    let spec = runner::Spec {
        max_output: MAX_AGENT_OUTPUT,
        ..runner::Spec::tool(&argv)
    };
    runner::run(&spec, &runner::stop_on_termination, &|_, _| {})
        .map_err(|e| ApiError::run_error(&e))
}

fn power(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let c = conf(ctx)?;
    let vm = call.text("vm");
    require_agent_vm(vm, &c)?;
    match call.text("action") {
        "start" => tool_answer(&run_ok(&["qvm-start", "--skip-if-running", "--", vm])?),
        "shutdown" => tool_answer(&run_ok(&["qvm-shutdown", "--wait", "--", vm])?),
        _ => {
            let out = in_vm(ctx, vm, &c, &c.restart)?;
            tool_answer(&out)
        }
    }
}

fn agent(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let c = conf(ctx)?;
    let vm = call.text("vm");
    require_agent_vm(vm, &c)?;
    let what = call.str("what").unwrap_or("status");
    let cmd = if what == "logs" { &c.logs } else { &c.status };
    let out = in_vm(ctx, vm, &c, cmd)?;
    Reply::ok(
        Object::new()
            .str("vm", vm)
            .str("what", what)
            .str("command", &cmd.join(" "))
            .bool("ok", out.success())
            .str("how", &out.describe())
            .str("stdout", &clip(&out.stdout_text()))
            .str("stderr", &clip(&out.stderr_text()))
            .finish(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_refuse() {
        let dir = std::env::temp_dir().join(format!("qvm-claw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("openclaw.conf");
        assert_eq!(load(&path).unwrap(), ClawConf::default());
        std::fs::write(
            &path,
            "# agent\nOPENCLAW_TAG=claw\nOPENCLAW_STATUS=echo ok $(x)\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = load(&path).unwrap();
        assert_eq!(c.tag, "claw");
        // Words, not a shell line: `$(x)` is one argument to echo.
        assert_eq!(c.status, vec!["echo", "ok", "$(x)"]);
        for bad in [
            "OPENCLAW_TAG=-x",
            "OPENCLAW_STATUS=-rf /",
            "NOPE=1",
            "garbage",
            "OPENCLAW_STATUS=",
        ] {
            std::fs::write(&path, format!("{bad}\n")).unwrap();
            assert!(load(&path).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
