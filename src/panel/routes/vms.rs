//! Tab 3, Virtual Machines: every VM with its state, and qvm-remote's view of it (key
//! fingerprint, served or not); authorize (the key is pasted into the page and sent
//! once, never fetched back), revoke, start/shutdown/kill/pause/unpause, check, and a
//! quick setup that reads the key the VM generated through `qvm-run` and authorises it.

use std::fs;
use std::os::unix::fs::DirBuilderExt;

use super::super::api::{
    clip, opt, req, run_any, run_ok, tool_answer, Access, Answer, ApiError, Call, Endpoint, Kind,
    Method, Reply,
};
use super::super::{runner, Ctx};
use super::qubes;
use crate::json::{Array, Object};
use crate::keys::Key;

/// Largest answer read from a VM during quick setup (a key is 65 bytes).
pub const MAX_SETUP_OUTPUT: usize = 1024;

/// This file's endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::Get,
        path: "/api/vms",
        tag: "vms",
        summary: "Every VM (qvm-ls) with its qvm-remote key fingerprint and whether the daemon serves it",
        fields: &[],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: list,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/vms/authorize",
        tag: "vms",
        summary: "Store a VM's key (64 hex); answers with its fingerprint only",
        fields: &[
            req("vm", Kind::Vm, "the VM", "\"work\""),
            req("key", Kind::Key, "the key from `qvm-remote key show --full` in the VM", "\"4242424242424242424242424242424242424242424242424242424242424242\""),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: authorize,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/vms/revoke",
        tag: "vms",
        summary: "Remove a VM's key: the daemon stops serving it",
        fields: &[req("vm", Kind::Vm, "the VM", "\"dev\"")],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: revoke,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/vms/power",
        tag: "vms",
        summary: "qvm-start, qvm-shutdown, qvm-kill, qvm-pause or qvm-unpause a VM",
        fields: &[
            req("vm", Kind::Vm, "the VM", "\"vault\""),
            req("action", Kind::OneOf(&["start", "shutdown", "kill", "pause", "unpause"]), "what to do", "\"start\""),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: power,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/vms/check",
        tag: "vms",
        summary: "qvm-check: whether the VM exists and whether it runs",
        fields: &[req("vm", Kind::Vm, "the VM", "\"work\"")],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: check,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/vms/setup",
        tag: "vms",
        summary: "Quick setup: generate the key in the VM if it has none, read it through qvm-run and authorize it",
        fields: &[
            req("vm", Kind::Vm, "the VM", "\"work\""),
            opt("generate", Kind::Bool, "run `qvm-remote key gen` in the VM first if it has no key", "true"),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: setup,
    },
];

fn list(ctx: &Ctx, _: &Call) -> Result<Reply, ApiError> {
    let rows = qubes::qvm_ls(
        &["NAME", "CLASS", "STATE", "LABEL", "TEMPLATE", "NETVM"],
        &[],
    )?;
    let mut a = Array::new();
    for r in &rows {
        let get = |i: usize| r.get(i).map_or("", String::as_str);
        let name = get(0);
        let (has_key, fingerprint) = if name == "dom0" {
            (false, String::new())
        } else {
            qubes::key_state(&ctx.cfg, name)
        };
        a = a.object(
            Object::new()
                .str("name", name)
                .str("class", get(1))
                .str("state", get(2))
                .str("label", get(3))
                .str("template", get(4))
                .str("netvm", get(5))
                .bool("has_key", has_key)
                .str("fingerprint", &fingerprint)
                .bool("served", ctx.cfg.vms.iter().any(|v| v == name)),
        );
    }
    Reply::ok(
        Object::new()
            .array("vms", a)
            .array("remote", qubes::remote_vms(&ctx.cfg))
            .finish(),
    )
}

fn store_key(ctx: &Ctx, vm: &str, key: &Key) -> Result<(), ApiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&ctx.cfg.keys_dir)
        .map_err(|e| ApiError::new(500, format!("{}: {e}", ctx.cfg.keys_dir.display())))?;
    let path = ctx.cfg.key_path(vm);
    key.store_replace(&path)
        .map_err(|e| ApiError::new(500, format!("{}: {e}", path.display())))
}

fn authorized(ctx: &Ctx, vm: &str, key: &Key) -> Result<Reply, ApiError> {
    store_key(ctx, vm, key)?;
    let served = ctx.cfg.vms.iter().any(|v| v == vm);
    Reply::ok(
        Object::new()
            .bool("ok", true)
            .str("vm", vm)
            .str("fingerprint", &key.fingerprint())
            .bool("served", served)
            .str(
                "note",
                if served {
                    ""
                } else {
                    "this VM is not in QVM_REMOTE_VMS: add it to the config so the daemon serves it"
                },
            )
            .finish(),
    )
}

fn authorize(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let vm = call.text("vm");
    let key = Key::parse(call.text("key")).ok_or_else(|| ApiError::bad("key", "not a key"))?;
    authorized(ctx, vm, &key)
}

fn revoke(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let vm = call.text("vm");
    let path = ctx.cfg.key_path(vm);
    match fs::remove_file(&path) {
        Ok(()) => Reply::ok(Object::new().bool("ok", true).str("vm", vm).finish()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ApiError::new(404, format!("{vm} has no key")))
        }
        Err(e) => Err(ApiError::new(500, format!("{}: {e}", path.display()))),
    }
}

fn power(_: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let vm = call.text("vm");
    let program = match call.text("action") {
        "start" => "qvm-start",
        "shutdown" => "qvm-shutdown",
        "kill" => "qvm-kill",
        "pause" => "qvm-pause",
        _ => "qvm-unpause",
    };
    let argv: Vec<&str> = if program == "qvm-shutdown" {
        vec![program, "--wait", "--", vm]
    } else {
        vec![program, "--", vm]
    };
    tool_answer(&run_ok(&argv)?)
}

fn check(_: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let vm = call.text("vm");
    let exists = run_any(&["qvm-check", "--quiet", "--", vm])?;
    let running = run_any(&["qvm-check", "--quiet", "--running", "--", vm])?;
    Reply::ok(
        Object::new()
            .str("vm", vm)
            .bool("exists", exists.success())
            .bool("running", running.success())
            .finish(),
    )
}

/// Runs `qvm-remote key …` in the VM as the configured user; keeps a small output.
fn in_vm(ctx: &Ctx, vm: &str, args: &[&str]) -> Result<runner::Output, ApiError> {
    let mut cmd = vec!["qvm-remote".to_string()];
    cmd.extend(args.iter().map(|s| (*s).to_string()));
    let argv = qubes::qvm_run_argv(ctx, vm, Some(&ctx.cfg.vm_user), false, &cmd);
    let spec = runner::Spec {
        max_output: MAX_SETUP_OUTPUT,
        ..runner::Spec::tool(&argv)
    };
    runner::run(&spec, &runner::stop_on_termination, &|_, _| {})
        .map_err(|e| ApiError::run_error(&e))
}

fn setup(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let vm = call.text("vm");
    let mut steps = Array::new();
    let mut shown = in_vm(ctx, vm, &["key", "show", "--full"])?;
    steps = steps.str(&format!("key show: {}", shown.describe()));
    if !shown.success() && call.flag("generate") {
        let gen = in_vm(ctx, vm, &["key", "gen"])?;
        steps = steps.str(&format!("key gen: {}", gen.describe()));
        shown = in_vm(ctx, vm, &["key", "show", "--full"])?;
        steps = steps.str(&format!("key show: {}", shown.describe()));
    }
    if !shown.success() {
        return Err(ApiError::tool_failed(
            "qvm-remote key show --full (in the VM)",
            &shown,
        ));
    }
    // The VM's answer is untrusted: it must be exactly one key and nothing else.
    let key = Key::parse(&shown.stdout_text()).ok_or_else(|| {
        ApiError::new(
            502,
            format!(
                "the VM did not answer with a key ({} bytes of other output)",
                clip(&shown.stdout_text()).len()
            ),
        )
    })?;
    store_key(ctx, vm, &key)?;
    let served = ctx.cfg.vms.iter().any(|v| v == vm);
    Reply::ok(
        Object::new()
            .bool("ok", true)
            .str("vm", vm)
            .str("fingerprint", &key.fingerprint())
            .bool("served", served)
            .array("steps", steps)
            .str(
                "note",
                if served {
                    "authorized; the daemon serves this VM"
                } else {
                    "authorized; add this VM to QVM_REMOTE_VMS in the config and restart the daemon"
                },
            )
            .finish(),
    )
}
