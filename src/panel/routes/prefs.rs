//! Tab 8, Global Config: `qubes-prefs` and per-VM `qvm-prefs`, read and set one
//! property at a time (the page stages edits, shows a diff, and applies them in order
//! through [`set`], keeping the failed ones staged); templates, template install as a
//! task; the dom0 update check and apply as tasks.

use std::time::Duration;

use super::super::api::{
    opt, req, run_ok, tool_answer, Access, Answer, ApiError, Call, Endpoint, Kind, Method, Reply,
};
use super::super::tasks::TaskSpec;
use super::super::Ctx;
use super::qubes;
use crate::json::{Array, Object};

/// Longest property value accepted.
pub const MAX_VALUE: usize = 1024;
/// Time limit of a dom0 update or a template install.
pub const LONG_TASK: Duration = Duration::from_secs(4 * 3600);

/// This file's endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::Get,
        path: "/api/prefs",
        tag: "config",
        summary: "Global properties (qubes-prefs), or one VM's (qvm-prefs VM)",
        fields: &[opt(
            "vm",
            Kind::VmOrDom0,
            "a VM; absent for the global properties",
            "\"work\"",
        )],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: list,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/prefs/set",
        tag: "config",
        summary: "Set (or reset to default) one global or per-VM property",
        fields: &[
            req(
                "scope",
                Kind::OneOf(&["global", "vm"]),
                "global (qubes-prefs) or vm (qvm-prefs)",
                "\"vm\"",
            ),
            opt("vm", Kind::Vm, "the VM, for scope vm", "\"work\""),
            req("name", Kind::Prop, "the property", "\"memory\""),
            opt(
                "value",
                Kind::Arg(MAX_VALUE),
                "the new value (absent with reset)",
                "\"600\"",
            ),
            opt(
                "reset",
                Kind::Bool,
                "reset to the default instead of setting",
                "false",
            ),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: set,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/templates",
        tag: "config",
        summary: "Installed TemplateVMs (qvm-ls) and what qvm-template lists",
        fields: &[],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: templates,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/templates/install",
        tag: "config",
        summary: "qvm-template install NAME, as a background task",
        fields: &[req(
            "name",
            Kind::Word(64),
            "the template",
            "\"fedora-41-xfce\"",
        )],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: template_install,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/dom0/update",
        tag: "config",
        summary: "qubes-dom0-update: check for updates, or apply them (needs confirm), as a task",
        fields: &[
            req(
                "action",
                Kind::OneOf(&["check", "apply"]),
                "check only, or install",
                "\"check\"",
            ),
            opt(
                "confirm",
                Kind::Bool,
                "true to confirm applying updates",
                "false",
            ),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: dom0_update,
    },
];

fn list(_: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let out = match call.str("vm") {
        Some(vm) => run_ok(&["qvm-prefs", "--", vm])?,
        None => run_ok(&["qubes-prefs"])?,
    };
    Reply::ok(
        Object::new()
            .str(
                "scope",
                if call.str("vm").is_some() {
                    "vm"
                } else {
                    "global"
                },
            )
            .str("vm", call.str("vm").unwrap_or_default())
            .array("prefs", qubes::prefs_rows(&out.stdout_text()))
            .finish(),
    )
}

fn set(_: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let name = call.text("name");
    let reset = call.flag("reset");
    let value = call.str("value");
    if !reset && value.is_none() {
        return Err(ApiError::bad("value", "required unless reset is true"));
    }
    let mut argv: Vec<&str> = match call.text("scope") {
        "global" => {
            if call.str("vm").is_some() {
                return Err(ApiError::bad("vm", "not used with scope global"));
            }
            vec!["qubes-prefs"]
        }
        _ => vec!["qvm-prefs"],
    };
    if reset {
        argv.push("--default");
    }
    argv.push("--");
    if argv[0] == "qvm-prefs" {
        argv.push(
            call.str("vm")
                .ok_or_else(|| ApiError::bad("vm", "required for scope vm"))?,
        );
    }
    argv.push(name);
    if !reset {
        argv.push(value.unwrap_or_default());
    }
    tool_answer(&run_ok(&argv)?)
}

fn templates(_: &Ctx, _: &Call) -> Result<Reply, ApiError> {
    let rows = qubes::qvm_ls(&["NAME", "CLASS", "STATE"], &[])?;
    let mut installed = Array::new();
    for r in rows
        .iter()
        .filter(|r| r.get(1).is_some_and(|c| c == "TemplateVM"))
    {
        installed = installed.object(
            Object::new()
                .str("name", r.first().map_or("", String::as_str))
                .str("state", r.get(2).map_or("", String::as_str)),
        );
    }
    let listing = super::super::api::run_any(&["qvm-template", "list"]);
    let (ok, text) = match &listing {
        Ok(out) => (out.success(), out.stdout_text() + &out.stderr_text()),
        Err(e) => (false, e.message.clone()),
    };
    Reply::ok(
        Object::new()
            .array("installed", installed)
            .bool("listing_ok", ok)
            .str("listing", &super::super::api::clip(&text))
            .finish(),
    )
}

fn task_reply(task: &super::super::tasks::Task) -> Result<Reply, ApiError> {
    Ok(Reply::Json(
        202,
        Object::new()
            .str("task", &task.id)
            .str("events", &format!("/api/tasks/{}/events", task.id))
            .finish(),
    ))
}

fn template_install(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let name = call.text("name");
    let task = ctx.tasks.start(TaskSpec {
        kind: "template",
        title: format!("install template {name}"),
        argv: qubes::words(&["qvm-template", "install", "--", name]),
        stdin: Vec::new(),
        timeout: LONG_TASK,
        watched: false,
    })?;
    task_reply(&task)
}

fn dom0_update(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let apply = call.text("action") == "apply";
    if apply && !call.flag("confirm") {
        return Err(ApiError::needs_confirmation(
            "Applying dom0 updates installs packages in dom0 and may need a reboot; confirm to continue",
        ));
    }
    let argv = if apply {
        qubes::words(&["qubes-dom0-update", "-y"])
    } else {
        qubes::words(&["qubes-dom0-update", "--check-only"])
    };
    let task = ctx.tasks.start(TaskSpec {
        kind: "update",
        title: if apply {
            "dom0 update".into()
        } else {
            "dom0 update check".into()
        },
        argv,
        stdin: Vec::new(),
        timeout: LONG_TASK,
        watched: false,
    })?;
    task_reply(&task)
}
