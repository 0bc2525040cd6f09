//! Tab 9, VM Tools: firewall (qvm-firewall), devices (qvm-device usb|pci|block|mic,
//! attach and detach with the class of the device being acted on), features
//! (qvm-features), tags (qvm-tags), services (qvm-service), and the qrexec policy
//! files, read-only. Each edit is one argv built from validated values.

use std::fs;
use std::io::Read;

use super::super::api::{
    clip, opt, req, run_ok, tool_answer, Access, Answer, ApiError, Call, Endpoint, Kind, Method,
    Reply,
};
use super::super::Ctx;
use super::qubes;
use crate::json::{Array, Object};

/// Largest qrexec policy file shown.
pub const MAX_POLICY_SHOWN: u64 = 256 * 1024;
/// Most qrexec policy files listed.
pub const MAX_POLICY_FILES: usize = 1000;
/// Device classes.
pub const CLASSES: &[&str] = &["usb", "pci", "block", "mic"];

/// This file's endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::Get,
        path: "/api/tools/firewall",
        tag: "vmtools",
        summary: "A VM's firewall rules (qvm-firewall VM list)",
        fields: &[req("vm", Kind::Vm, "the VM", "\"work\"")],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: firewall_list,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/tools/firewall",
        tag: "vmtools",
        summary: "Add a firewall rule, or delete one by number",
        fields: &[
            req("vm", Kind::Vm, "the VM", "\"work\""),
            req("op", Kind::OneOf(&["add", "del"]), "add or del", "\"add\""),
            opt(
                "action",
                Kind::OneOf(&["accept", "drop"]),
                "for add",
                "\"accept\"",
            ),
            opt(
                "dsthost",
                Kind::Word(255),
                "for add: host, IP or network",
                "\"qubes-os.org\"",
            ),
            opt(
                "proto",
                Kind::OneOf(&["tcp", "udp", "icmp"]),
                "for add",
                "\"tcp\"",
            ),
            opt(
                "dstports",
                Kind::Word(16),
                "for add: port or range",
                "\"443\"",
            ),
            opt("rule", Kind::Uint(0, 9999), "for del: the rule number", "1"),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: firewall_edit,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/tools/devices",
        tag: "vmtools",
        summary: "Devices of one class (qvm-device CLASS list)",
        fields: &[req(
            "class",
            Kind::OneOf(CLASSES),
            "usb, pci, block or mic",
            "\"usb\"",
        )],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: devices_list,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/tools/devices",
        tag: "vmtools",
        summary: "Attach a device to a VM or detach it (qvm-device CLASS attach|detach VM DEVICE)",
        fields: &[
            req(
                "class",
                Kind::OneOf(CLASSES),
                "the device's class",
                "\"usb\"",
            ),
            req(
                "action",
                Kind::OneOf(&["attach", "detach"]),
                "attach or detach",
                "\"attach\"",
            ),
            req("vm", Kind::Vm, "the VM", "\"work\""),
            req("device", Kind::Device, "BACKEND:DEVICE", "\"sys-usb:2-1\""),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: devices_edit,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/tools/features",
        tag: "vmtools",
        summary: "A VM's features (qvm-features VM)",
        fields: &[req("vm", Kind::Vm, "the VM", "\"work\"")],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: features_list,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/tools/features",
        tag: "vmtools",
        summary: "Set or unset one feature",
        fields: &[
            req("vm", Kind::Vm, "the VM", "\"work\""),
            req(
                "name",
                Kind::Feature,
                "the feature",
                "\"gui-allow-fullscreen\"",
            ),
            opt(
                "value",
                Kind::Arg(1024),
                "the value (absent with unset)",
                "\"1\"",
            ),
            opt("unset", Kind::Bool, "remove the feature", "false"),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: features_edit,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/tools/tags",
        tag: "vmtools",
        summary: "A VM's tags (qvm-tags VM list)",
        fields: &[req("vm", Kind::Vm, "the VM", "\"work\"")],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: tags_list,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/tools/tags",
        tag: "vmtools",
        summary: "Add or remove a tag",
        fields: &[
            req("vm", Kind::Vm, "the VM", "\"work\""),
            req(
                "action",
                Kind::OneOf(&["add", "del"]),
                "add or del",
                "\"add\"",
            ),
            req("tag", Kind::Tag, "the tag", "\"project-x\""),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: tags_edit,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/tools/services",
        tag: "vmtools",
        summary: "A VM's services (qvm-service VM)",
        fields: &[req("vm", Kind::Vm, "the VM", "\"work\"")],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: services_list,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/tools/services",
        tag: "vmtools",
        summary: "Enable, disable or reset one service",
        fields: &[
            req("vm", Kind::Vm, "the VM", "\"work\""),
            req("name", Kind::Feature, "the service", "\"cups\""),
            req(
                "state",
                Kind::OneOf(&["on", "off", "default"]),
                "on, off or default",
                "\"on\"",
            ),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: services_edit,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/tools/qrexec",
        tag: "vmtools",
        summary: "The qrexec policy files (read-only)",
        fields: &[],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: qrexec_list,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/tools/qrexec/file",
        tag: "vmtools",
        summary: "One qrexec policy file's text (read-only)",
        fields: &[req(
            "name",
            Kind::FileName,
            "the file name",
            "\"30-user.policy\"",
        )],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: qrexec_file,
    },
];

fn text_answer(
    out: &super::super::runner::Output,
    key: &str,
    rows: Array,
) -> Result<Reply, ApiError> {
    Reply::ok(
        Object::new()
            .str("text", &clip(&out.stdout_text()))
            .array(key, rows)
            .finish(),
    )
}

fn firewall_list(_: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let out = run_ok(&["qvm-firewall", call.text("vm"), "list"])?;
    text_answer(&out, "rules", Array::new())
}

fn firewall_edit(_: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let vm = call.text("vm");
    if call.text("op") == "del" {
        let n = call
            .uint("rule")
            .ok_or_else(|| ApiError::bad("rule", "required for del"))?
            .to_string();
        return tool_answer(&run_ok(&["qvm-firewall", vm, "del", "--rule-no", &n])?);
    }
    let action = call
        .str("action")
        .ok_or_else(|| ApiError::bad("action", "required for add"))?;
    // Each rule word is `key=value` with a validated value, one argv word each.
    let mut words = vec![format!("action={action}")];
    for key in ["dsthost", "proto", "dstports"] {
        if let Some(v) = call.str(key) {
            words.push(format!("{key}={v}"));
        }
    }
    let mut argv = vec!["qvm-firewall", vm, "add"];
    argv.extend(words.iter().map(String::as_str));
    tool_answer(&run_ok(&argv)?)
}

fn devices_list(_: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let class = call.text("class");
    let out = run_ok(&["qvm-device", class, "list"])?;
    let mut rows = Array::new();
    for line in out.stdout_text().lines() {
        let mut it = line.split_whitespace();
        let Some(id) = it.next() else { continue };
        let rest: Vec<&str> = it.collect();
        rows = rows.object(
            Object::new()
                .str("id", id)
                .str("class", class)
                .str("description", &rest.join(" ")),
        );
    }
    text_answer(&out, "devices", rows)
}

fn devices_edit(_: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let argv = [
        "qvm-device",
        call.text("class"),
        call.text("action"),
        call.text("vm"),
        call.text("device"),
    ];
    tool_answer(&run_ok(&argv)?)
}

fn features_list(_: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let out = run_ok(&["qvm-features", "--", call.text("vm")])?;
    text_answer(&out, "features", qubes::pairs(&out.stdout_text()))
}

fn features_edit(_: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let vm = call.text("vm");
    let name = call.text("name");
    if call.flag("unset") {
        return tool_answer(&run_ok(&["qvm-features", "--unset", "--", vm, name])?);
    }
    let value = call
        .str("value")
        .ok_or_else(|| ApiError::bad("value", "required unless unset is true"))?;
    tool_answer(&run_ok(&["qvm-features", "--", vm, name, value])?)
}

fn tags_list(_: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let out = run_ok(&["qvm-tags", call.text("vm"), "list"])?;
    let mut rows = Array::new();
    for t in out
        .stdout_text()
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        rows = rows.str(t);
    }
    text_answer(&out, "tags", rows)
}

fn tags_edit(_: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let verb = if call.text("action") == "add" {
        "add"
    } else {
        "del"
    };
    tool_answer(&run_ok(&[
        "qvm-tags",
        call.text("vm"),
        verb,
        call.text("tag"),
    ])?)
}

fn services_list(_: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let out = run_ok(&["qvm-service", "--", call.text("vm")])?;
    text_answer(&out, "services", qubes::pairs(&out.stdout_text()))
}

fn services_edit(_: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let vm = call.text("vm");
    let name = call.text("name");
    let argv = match call.text("state") {
        "on" => vec!["qvm-service", "--", vm, name, "on"],
        "off" => vec!["qvm-service", "--", vm, name, "off"],
        _ => vec!["qvm-service", "--unset", "--", vm, name],
    };
    tool_answer(&run_ok(&argv)?)
}

fn qrexec_list(ctx: &Ctx, _: &Call) -> Result<Reply, ApiError> {
    let dir = &ctx.opts.qrexec_dir;
    let mut rows: Vec<(String, u64)> = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.take(MAX_POLICY_FILES).flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(meta) = fs::symlink_metadata(e.path()) {
                if meta.is_file() && !name.starts_with('.') {
                    rows.push((name, meta.len()));
                }
            }
        }
    }
    rows.sort();
    let mut a = Array::new();
    for (name, size) in rows {
        a = a.object(Object::new().str("name", &name).uint("size", size));
    }
    Reply::ok(
        Object::new()
            .str("dir", &dir.display().to_string())
            .array("files", a)
            .finish(),
    )
}

fn qrexec_file(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let path = ctx.opts.qrexec_dir.join(call.text("name"));
    let meta = fs::symlink_metadata(&path)
        .map_err(|e| ApiError::new(404, format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(ApiError::new(400, "not a regular file"));
    }
    let mut text = String::new();
    fs::File::open(&path)
        .and_then(|f| f.take(MAX_POLICY_SHOWN).read_to_string(&mut text))
        .map_err(|e| ApiError::new(500, format!("{}: {e}", path.display())))?;
    Reply::ok(
        Object::new()
            .str("name", call.text("name"))
            .str("text", &text)
            .bool("cut", meta.len() > MAX_POLICY_SHOWN)
            .finish(),
    )
}
