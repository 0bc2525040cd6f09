//! Tab 5, Files: push a file from dom0 into a VM, or pull one from a VM into dom0.
//!
//! The dom0 side is confined to one directory (`panel --files-dir`): paths are
//! relative ([`Kind::RelPath`]: no `..`, no absolute path), and every component is
//! opened without following symlinks, so nothing outside the directory is read or
//! written. Nothing is overwritten without `overwrite: true` (the page asks first): in
//! dom0 a new file is created with `create_new`; in the VM, `dd conv=excl` refuses an
//! existing file. Sizes are shown on both sides. The VM side runs `cat`, `dd`, `stat`
//! and `test` through `qvm-run --no-shell`, so a VM path is one argv word and never
//! parsed by a shell; it is absolute, so it cannot become an option.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::api::{opt, req, Access, Answer, ApiError, Call, Endpoint, Kind, Method, Reply};
use super::super::{runner, Ctx};
use super::qubes;
use crate::json::{Array, Object};

/// Largest file moved either way.
pub const MAX_TRANSFER: usize = 64 * 1024 * 1024;
/// Most entries listed in one directory.
pub const MAX_LIST: usize = 10_000;
/// Time limit of one transfer.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);

/// This file's endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::Get,
        path: "/api/files",
        tag: "files",
        summary: "List a directory inside the panel's dom0 files directory",
        fields: &[opt(
            "path",
            Kind::RelPath,
            "a directory relative to the files directory (absent: its top)",
            "\"sub\"",
        )],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: list,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/files/vm-size",
        tag: "files",
        summary: "The size of a file in a VM (stat through qvm-run), to show before a pull",
        fields: &[
            req("vm", Kind::Vm, "the VM", "\"work\""),
            req(
                "path",
                Kind::VmPath,
                "absolute path in the VM",
                "\"/etc/hostname\"",
            ),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: vm_size,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/files/push",
        tag: "files",
        summary: "Copy a file from the dom0 files directory into a VM",
        fields: &[
            req(
                "file",
                Kind::RelPath,
                "the file, relative to the files directory",
                "\"hello.txt\"",
            ),
            req("vm", Kind::Vm, "the VM", "\"work\""),
            req(
                "dest",
                Kind::VmPath,
                "absolute destination path in the VM",
                "\"/tmp/hello-from-dom0.txt\"",
            ),
            opt("overwrite", Kind::Bool, "replace an existing file", "true"),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: push,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/files/pull",
        tag: "files",
        summary: "Copy a file from a VM into the dom0 files directory",
        fields: &[
            req("vm", Kind::Vm, "the VM", "\"work\""),
            req(
                "src",
                Kind::VmPath,
                "absolute path in the VM",
                "\"/etc/hostname\"",
            ),
            req(
                "dest",
                Kind::RelPath,
                "destination, relative to the files directory",
                "\"pulled-hostname\"",
            ),
            opt("overwrite", Kind::Bool, "replace an existing file", "true"),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: pull,
    },
];

fn io_err(path: &Path, e: &io::Error) -> ApiError {
    let status = match e.kind() {
        io::ErrorKind::NotFound => 404,
        io::ErrorKind::AlreadyExists => 409,
        _ => 500,
    };
    ApiError::new(status, format!("{}: {e}", path.display()))
}

/// Walks `rel` below `root` one component at a time, refusing symlinks, and returns
/// the full path. With `parent_only`, the last component need not exist.
fn confined(root: &Path, rel: &str, parent_only: bool) -> Result<PathBuf, ApiError> {
    let mut path = root.to_path_buf();
    let comps: Vec<&str> = rel.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        path.push(c);
        let last = i + 1 == comps.len();
        if last && parent_only {
            break;
        }
        let meta = fs::symlink_metadata(&path).map_err(|e| io_err(&path, &e))?;
        if meta.file_type().is_symlink() {
            return Err(ApiError::new(
                403,
                format!("{rel}: a symlink is never followed"),
            ));
        }
        if !last && !meta.is_dir() {
            return Err(ApiError::new(400, format!("{rel}: not a directory")));
        }
    }
    Ok(path)
}

fn list(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let root = &ctx.opts.files_dir;
    let dir = match call.str("path") {
        Some(rel) => confined(root, rel, false)?,
        None => root.clone(),
    };
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound && call.str("path").is_none() => {
            return Reply::ok(
                Object::new()
                    .str("root", &root.display().to_string())
                    .bool("exists", false)
                    .array("entries", Array::new())
                    .finish(),
            )
        }
        Err(e) => return Err(io_err(&dir, &e)),
    };
    let mut rows: Vec<(String, &'static str, u64, u64)> = Vec::new();
    for e in entries.take(MAX_LIST).flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(meta) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        let kind = if meta.file_type().is_symlink() {
            "symlink"
        } else if meta.is_dir() {
            "dir"
        } else if meta.is_file() {
            "file"
        } else {
            "other"
        };
        rows.push((name, kind, meta.len(), meta.mtime().max(0) as u64));
    }
    rows.sort();
    let mut a = Array::new();
    for (name, kind, size, mtime) in rows {
        a = a.object(
            Object::new()
                .str("name", &name)
                .str("type", kind)
                .uint("size", size)
                .uint("mtime", mtime),
        );
    }
    Reply::ok(
        Object::new()
            .str("root", &root.display().to_string())
            .str("path", call.str("path").unwrap_or_default())
            .bool("exists", true)
            .array("entries", a)
            .finish(),
    )
}

/// Runs `cmd` in `vm` with `stdin`, keeping up to `max` bytes of output.
fn in_vm(
    ctx: &Ctx,
    vm: &str,
    cmd: &[&str],
    stdin: &[u8],
    max: usize,
) -> Result<runner::Output, ApiError> {
    let argv = qubes::qvm_run_argv(ctx, vm, Some(&ctx.cfg.vm_user), false, &qubes::words(cmd));
    let spec = runner::Spec {
        argv: &argv,
        stdin,
        timeout: TRANSFER_TIMEOUT,
        max_output: max,
        keep_output: true,
    };
    runner::run(&spec, &runner::stop_on_termination, &|_, _| {})
        .map_err(|e| ApiError::run_error(&e))
}

fn vm_size(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let vm = call.text("vm");
    let path = call.text("path");
    let out = in_vm(ctx, vm, &["stat", "-L", "-c", "%s", "--", path], &[], 256)?;
    if !out.success() {
        return Err(ApiError::tool_failed("stat (in the VM)", &out));
    }
    let size: u64 = out
        .stdout_text()
        .trim()
        .parse()
        .map_err(|_| ApiError::new(502, "the VM answered something that is not a size"))?;
    Reply::ok(
        Object::new()
            .str("vm", vm)
            .str("path", path)
            .uint("size", size)
            .finish(),
    )
}

fn push(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let vm = call.text("vm");
    let dest = call.text("dest");
    let path = confined(&ctx.opts.files_dir, call.text("file"), false)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| io_err(&path, &e))?;
    let meta = file.metadata().map_err(|e| io_err(&path, &e))?;
    if !meta.is_file() {
        return Err(ApiError::new(400, "not a regular file"));
    }
    if meta.len() > MAX_TRANSFER as u64 {
        return Err(ApiError::new(
            413,
            format!("larger than {MAX_TRANSFER} bytes"),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_TRANSFER as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_err(&path, &e))?;
    let overwrite = call.flag("overwrite");
    if !overwrite {
        let exists = in_vm(ctx, vm, &["test", "-e", dest], &[], 256)?;
        if exists.success() {
            return Err(ApiError::needs_confirmation(&format!(
                "{dest} already exists in {vm}; confirm to overwrite it"
            )));
        }
    }
    let of = format!("of={dest}");
    let mut cmd = vec!["dd", of.as_str(), "bs=65536", "status=none"];
    if !overwrite {
        cmd.push("conv=excl");
    }
    let out = in_vm(ctx, vm, &cmd, &bytes, 64 * 1024)?;
    if !out.success() {
        return Err(ApiError::tool_failed("dd (in the VM)", &out));
    }
    Reply::ok(
        Object::new()
            .bool("ok", true)
            .str("vm", vm)
            .str("dest", dest)
            .uint("bytes", bytes.len() as u64)
            .finish(),
    )
}

fn pull(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let vm = call.text("vm");
    let src = call.text("src");
    let rel = call.text("dest");
    let path = confined(&ctx.opts.files_dir, rel, true)?;
    let overwrite = call.flag("overwrite");
    if !overwrite && fs::symlink_metadata(&path).is_ok() {
        return Err(ApiError::needs_confirmation(&format!(
            "{rel} already exists in dom0; confirm to overwrite it"
        )));
    }
    let out = in_vm(ctx, vm, &["cat", "--", src], &[], MAX_TRANSFER)?;
    if !out.success() {
        return Err(ApiError::tool_failed("cat (in the VM)", &out));
    }
    if out.truncated {
        return Err(ApiError::new(
            413,
            format!("the file is larger than {MAX_TRANSFER} bytes"),
        ));
    }
    write_confined(&path, &out.stdout, overwrite)?;
    Reply::ok(
        Object::new()
            .bool("ok", true)
            .str("dest", rel)
            .uint("bytes", out.stdout.len() as u64)
            .finish(),
    )
}

/// Writes a new file (0600) next to `path` and renames it into place; without
/// `overwrite` the final name must not exist (checked again at the rename by linking
/// rather than renaming, so a file created meanwhile is not replaced).
fn write_confined(path: &Path, bytes: &[u8], overwrite: bool) -> Result<(), ApiError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.panel-{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, &e))?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp, &e));
    }
    let placed = if overwrite {
        fs::rename(&tmp, path)
    } else {
        fs::hard_link(&tmp, path).and_then(|()| fs::remove_file(&tmp))
    };
    if let Err(e) = placed {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path, &e));
    }
    Ok(())
}
