//! Tab 4, Execute: run a command the administrator typed, in dom0 or in a VM. These are
//! the two operations marked `x-runs-command`: their `argv` is run as an argv (the page
//! splits the typed line into words and shows them before running), never through a
//! shell. In a VM it goes through `qvm-run --no-shell`, so the VM's shell never parses
//! it either. Each run is a watched background task: its output streams to the page,
//! and closing the page (nobody watching for `tasks::UNWATCHED_LIMIT`) or the timeout
//! kills its process group. Programs in [`DANGEROUS`] need `confirm: true`, in dom0 and
//! in a VM alike.

use std::time::Duration;

use super::super::api::{opt, req, Access, Answer, ApiError, Call, Endpoint, Kind, Method, Reply};
use super::super::tasks::TaskSpec;
use super::super::Ctx;
use super::qubes;
use crate::json::Object;

/// Default time limit of a command, seconds.
pub const DEFAULT_TIMEOUT: u64 = 300;
/// Longest time limit a command may be given, seconds.
pub const MAX_TIMEOUT: u64 = 3600;

/// Programs that destroy data, stop VMs or the system, or change a qube's setup: the page
/// asks the administrator to confirm before running them, in dom0 or in a VM.
pub const DANGEROUS: &[&str] = &[
    "qvm-remove",
    "qvm-kill",
    "qvm-shutdown",
    "qvm-pause",
    "qvm-backup-restore",
    "qvm-pool",
    "qvm-volume",
    "qvm-block",
    "qvm-device",
    "qvm-firewall",
    "qvm-prefs",
    "qubes-prefs",
    "qubes-dom0-update",
    "qvm-template",
    "rm",
    "rmdir",
    "dd",
    "mv",
    "shred",
    "wipefs",
    "mkfs",
    "fdisk",
    "parted",
    "sgdisk",
    "lvremove",
    "lvcreate",
    "vgremove",
    "cryptsetup",
    "shutdown",
    "reboot",
    "poweroff",
    "halt",
    "systemctl",
    "dnf",
    "rpm",
    "chmod",
    "chown",
    "kill",
    "pkill",
    "killall",
    "xl",
    "truncate",
];

/// Why `argv` needs confirmation, if it does.
pub fn danger(argv: &[String]) -> Option<String> {
    let program = argv.first()?;
    let base = program.rsplit('/').next().unwrap_or(program);
    let base = base.split('.').next().unwrap_or(base);
    if DANGEROUS.contains(&base) || base.starts_with("mkfs") {
        return Some(format!(
            "{base} can destroy data or stop VMs or the system; confirm to run it"
        ));
    }
    if argv.iter().any(|a| a == "--all") {
        return Some("--all acts on every VM; confirm to run it".into());
    }
    None
}

/// This file's endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::Post,
        path: "/api/exec/dom0",
        tag: "execute",
        summary: "Run a command in dom0 as an argv (no shell); returns a task id whose events stream the output",
        fields: &[
            req("argv", Kind::Argv, "program and arguments", "[\"echo\", \"hello\"]"),
            opt("timeout", Kind::Uint(1, MAX_TIMEOUT), "seconds before its process group is killed (default 300)", "30"),
            opt("confirm", Kind::Bool, "true after the user confirmed a dangerous program", "false"),
        ],
        access: Access::Session,
        runs_command: true,
        answer: Answer::Json,
        handler: dom0,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/exec/vm",
        tag: "execute",
        summary: "Run a command in a VM through qvm-run --no-shell; returns a task id",
        fields: &[
            req("vm", Kind::Vm, "the VM", "\"work\""),
            req("argv", Kind::Argv, "program and arguments, run in the VM without its shell", "[\"echo\", \"hello\"]"),
            opt("user", Kind::OneOf(&["user", "root"]), "VM user (default: QVM_REMOTE_VM_USER)", "\"user\""),
            opt("timeout", Kind::Uint(1, MAX_TIMEOUT), "seconds before it is killed (default 300)", "30"),
            opt("autostart", Kind::Bool, "start the VM if it is not running", "false"),
            opt("confirm", Kind::Bool, "true after the user confirmed a dangerous program", "false"),
        ],
        access: Access::Session,
        runs_command: true,
        answer: Answer::Json,
        handler: vm,
    },
];

fn started(task: &super::super::tasks::Task) -> Result<Reply, ApiError> {
    Ok(Reply::Json(
        202,
        Object::new()
            .str("task", &task.id)
            .str("events", &format!("/api/tasks/{}/events", task.id))
            .finish(),
    ))
}

fn dom0(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let argv = call.list("argv").to_vec();
    require_confirmation(call, &argv)?;
    let title = format!("dom0: {}", argv.join(" "));
    start_exec(ctx, call, title, argv)
}

fn vm(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let vm = call.text("vm");
    let cmd = call.list("argv").to_vec();
    require_confirmation(call, &cmd)?;
    let user = call.str("user").unwrap_or(&ctx.cfg.vm_user).to_string();
    let argv = qubes::qvm_run_argv(ctx, vm, Some(&user), call.flag("autostart"), &cmd);
    start_exec(ctx, call, format!("{vm}: {}", cmd.join(" ")), argv)
}

/// A dangerous program runs only with `confirm` set, wherever it runs.
fn require_confirmation(call: &Call, cmd: &[String]) -> Result<(), ApiError> {
    match danger(cmd) {
        Some(why) if !call.flag("confirm") => Err(ApiError::needs_confirmation(&why)),
        _ => Ok(()),
    }
}

/// Starts `argv` as a watched background task with the call's timeout.
fn start_exec(ctx: &Ctx, call: &Call, title: String, argv: Vec<String>) -> Result<Reply, ApiError> {
    let task = ctx.tasks.start(TaskSpec {
        kind: "exec",
        title,
        argv,
        stdin: Vec::new(),
        timeout: Duration::from_secs(call.uint("timeout").unwrap_or(DEFAULT_TIMEOUT)),
        watched: true,
    })?;
    started(&task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn dangerous_programs_need_confirmation() {
        assert!(danger(&w(&["qvm-remove", "work"])).is_some());
        assert!(danger(&w(&["/usr/bin/rm", "-rf", "/"])).is_some());
        assert!(danger(&w(&["mkfs.ext4", "/dev/x"])).is_some());
        assert!(danger(&w(&["qvm-ls", "--all"])).is_some());
        assert!(danger(&w(&["qvm-ls", "--raw-list"])).is_none());
        assert!(danger(&w(&["echo", "rm"])).is_none());
    }
}
