//! Tab 12, Policy: the policy file with `policy lint`'s verdict, the level of each VM,
//! an editor whose text is linted before it is saved (atomically, mode 0600), a
//! `policy check` preview of what the daemon would decide for a command, and dev mode
//! with its server-side expiry (so the page's countdown matches the daemon's).
//!
//! Lint and check run this program's own subcommands by argv (`policy lint FILE`,
//! `policy check VM -- COMMAND`), so the panel's verdict is exactly the CLI's and the
//! daemon's. The command in a check is one argv word: it is matched, never run.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::super::api::{opt, req, Access, Answer, ApiError, Call, Endpoint, Kind, Method, Reply};
use super::super::{runner, Ctx};
use crate::dom0::devmode::{self, State};
use crate::json::{Array, Object};

/// Largest policy text accepted (the policy module's own limit).
pub const MAX_POLICY_TEXT: usize = crate::policy::MAX_POLICY_FILE as usize;
/// Longest command in a check.
pub const MAX_CHECK_COMMAND: usize = 4096;

/// Makes temp file names unique within this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// This file's endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::Get,
        path: "/api/policy",
        tag: "policy",
        summary: "The policy file, its lint result, each VM's level, and dev mode",
        fields: &[],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: show,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/policy/lint",
        tag: "policy",
        summary: "Lint a policy text without saving it",
        fields: &[req(
            "text",
            Kind::Text(MAX_POLICY_TEXT),
            "the policy text",
            "\"work allow qvm-ls *\\n\"",
        )],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: lint_text,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/policy/save",
        tag: "policy",
        summary: "Save a policy text if it lints clean (atomic replace, mode 0600)",
        fields: &[req(
            "text",
            Kind::Text(MAX_POLICY_TEXT),
            "the policy text",
            "\"work allow qvm-ls *\\n\"",
        )],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: save,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/policy/check",
        tag: "policy",
        summary: "What the daemon would decide for this VM and command (nothing is run)",
        fields: &[
            req("vm", Kind::Vm, "the VM", "\"work\""),
            req(
                "command",
                Kind::Line(MAX_CHECK_COMMAND),
                "the command text, as the VM would send it",
                "\"qvm-ls --running\"",
            ),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: check,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/devmode",
        tag: "policy",
        summary: "Dev mode: a time-limited full overlay for a served VM (on with minutes, or off)",
        fields: &[
            req("vm", Kind::Vm, "a VM in QVM_REMOTE_VMS", "\"work\""),
            req(
                "action",
                Kind::OneOf(&["on", "off"]),
                "on or off",
                "\"off\"",
            ),
            opt(
                "minutes",
                Kind::Uint(devmode::MIN_MINUTES, devmode::MAX_MINUTES),
                "for on",
                "30",
            ),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: dev_mode,
    },
];

/// `(ok, errors, warnings, output)` of `policy lint FILE`.
fn lint_file(ctx: &Ctx, path: &Path) -> Result<(bool, Array, Array, String), ApiError> {
    let file = path.display().to_string();
    let argv = ctx.self_argv(&["policy", "lint", &file]);
    let out = runner::run_tool(&argv).map_err(|e| ApiError::run_error(&e))?;
    let text = out.stdout_text() + &out.stderr_text();
    let mut errors = Array::new();
    let mut warnings = Array::new();
    for line in text.lines() {
        if let Some(e) = line.strip_prefix("error: ") {
            errors = errors.str(e);
        } else if let Some(w) = line.strip_prefix("warning: ") {
            warnings = warnings.str(w);
        }
    }
    Ok((out.success(), errors, warnings, text))
}

fn lint_json(ctx: &Ctx, path: &Path) -> Result<Object, ApiError> {
    let (ok, errors, warnings, output) = lint_file(ctx, path)?;
    Ok(Object::new()
        .bool("ok", ok)
        .array("errors", errors)
        .array("warnings", warnings)
        .str("output", &output))
}

/// `VM level NAME` lines of the policy text.
fn levels(text: &str) -> Array {
    let mut a = Array::new();
    for (i, line) in text.lines().enumerate() {
        let words: Vec<&str> = line
            .split_ascii_whitespace()
            .take_while(|w| !w.starts_with('#'))
            .collect();
        if let [vm, "level", level] = words.as_slice() {
            a = a.object(
                Object::new()
                    .str("vm", vm)
                    .str("level", level)
                    .uint("line", i as u64 + 1),
            );
        }
    }
    a
}

fn devmode_json(ctx: &Ctx) -> Array {
    let now = crate::time::unix_now();
    let mut a = Array::new();
    for (vm, st) in devmode::list(&ctx.cfg.run_dir, now) {
        let o = Object::new().str("vm", &vm);
        a = a.object(match st {
            State::Active(until) => o
                .str("state", "active")
                .uint("expires", until)
                .uint("seconds_left", until.saturating_sub(now)),
            State::Expired(at) => o
                .str("state", "expired")
                .uint("expires", at)
                .uint("seconds_left", 0),
            State::Invalid(why) => o
                .str("state", "invalid")
                .str("why", &why)
                .uint("seconds_left", 0),
        });
    }
    a
}

fn show(ctx: &Ctx, _: &Call) -> Result<Reply, ApiError> {
    let path = &ctx.cfg.policy;
    let (exists, text, read_error) = match crate::policy::read_policy_file(path) {
        Ok(Some(t)) => (true, t, String::new()),
        Ok(None) => (false, String::new(), String::new()),
        Err(e) => (true, String::new(), e.to_string()),
    };
    let mut served = Array::new();
    for vm in &ctx.cfg.vms {
        served = served.str(vm);
    }
    Reply::ok(
        Object::new()
            .str("path", &path.display().to_string())
            .bool("exists", exists)
            .str("text", &text)
            .str("read_error", &read_error)
            .object("lint", lint_json(ctx, path)?)
            .array("levels", levels(&text))
            .array("served", served)
            .array("devmode", devmode_json(ctx))
            .uint("now", crate::time::unix_now())
            .str("level_help", &crate::policy::describe_levels())
            .finish(),
    )
}

/// Writes `text` to a new 0600 file at `path`.
fn write_new(path: &Path, text: &str) -> Result<(), ApiError> {
    let err = |e: std::io::Error| ApiError::new(500, format!("{}: {e}", path.display()));
    let _ = fs::remove_file(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(err)
}

fn temp_path(dir: &Path, stem: &str) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::SeqCst);
    dir.join(format!(".{stem}.panel-{}-{n}.tmp", std::process::id()))
}

fn lint_text(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let tmp = temp_path(&ctx.cfg.run_dir, "policy-lint");
    write_new(&tmp, call.text("text"))?;
    let result = lint_json(ctx, &tmp);
    let _ = fs::remove_file(&tmp);
    Reply::ok(result?.array("levels", levels(call.text("text"))).finish())
}

fn save(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let path = &ctx.cfg.policy;
    let dir = path
        .parent()
        .ok_or_else(|| ApiError::new(500, "the policy path has no directory"))?;
    fs::create_dir_all(dir).map_err(|e| ApiError::new(500, format!("{}: {e}", dir.display())))?;
    // Written next to the policy so the rename is atomic; linted as the file it becomes.
    let tmp = temp_path(dir, "remote-policy");
    write_new(&tmp, call.text("text"))?;
    let (ok, errors, warnings, output) = match lint_file(ctx, &tmp) {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if !ok {
        let _ = fs::remove_file(&tmp);
        return Ok(Reply::Json(
            422,
            Object::new()
                .str("error", "the policy does not lint clean; nothing was saved")
                .array("errors", errors)
                .array("warnings", warnings)
                .str("output", &output)
                .finish(),
        ));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(ApiError::new(500, format!("{}: {e}", path.display())));
    }
    let digest =
        qvm_remote_hmac::hex::encode(&qvm_remote_hmac::sha256(call.text("text").as_bytes()));
    Reply::ok(
        Object::new()
            .bool("ok", true)
            .str("path", &path.display().to_string())
            .str("sha256", &digest)
            .array("warnings", warnings)
            .finish(),
    )
}

fn check(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let vm = call.text("vm");
    let command = call.text("command");
    if command.trim().is_empty() {
        return Err(ApiError::bad("command", "empty"));
    }
    let argv = ctx.self_argv(&["policy", "check", vm, "--", command]);
    let out = runner::run_tool(&argv).map_err(|e| ApiError::run_error(&e))?;
    let text = out.stdout_text();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    let decision = match out.code {
        Some(0) => "allow",
        Some(1) => "deny",
        Some(2) => "ask",
        _ => "error",
    };
    Reply::ok(
        Object::new()
            .str("vm", vm)
            .str("decision", decision)
            .str("rule", &field("rule:"))
            .str("command", &field("command:"))
            .str("output", &(text.clone() + &out.stderr_text()))
            .finish(),
    )
}

fn dev_mode(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let vm = call.text("vm");
    let now = crate::time::unix_now();
    if call.text("action") == "off" {
        let was = devmode::turn_off(&ctx.cfg.run_dir, vm)
            .map_err(|e| ApiError::new(500, e.to_string()))?;
        return Reply::ok(
            Object::new()
                .bool("ok", true)
                .str("vm", vm)
                .bool("was_on", was)
                .finish(),
        );
    }
    if !ctx.cfg.vms.iter().any(|v| v == vm) {
        return Err(ApiError::new(409, format!("{vm} is not in QVM_REMOTE_VMS")));
    }
    let minutes = call
        .uint("minutes")
        .ok_or_else(|| ApiError::bad("minutes", "required for on"))?;
    let until = devmode::turn_on(&ctx.cfg.run_dir, vm, minutes, now)
        .map_err(|e| ApiError::new(500, e.to_string()))?;
    Reply::ok(
        Object::new()
            .bool("ok", true)
            .str("vm", vm)
            .uint("expires", until)
            .uint("seconds_left", until.saturating_sub(now))
            .uint("now", now)
            .finish(),
    )
}
