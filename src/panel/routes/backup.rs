//! Tab 11, Backup: `qvm-backup` as a background task (the passphrase goes to its stdin
//! through `--passphrase-file -`, never into an argv or a log), and a backup of
//! qvm-remote's own files (config, policy, keys) as a tar archive in the Files
//! directory, with a restore that refuses absolute paths, `..` and any name it does
//! not know, and checks each file (config parses, policy parses, keys are keys)
//! before anything is written.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::api::{opt, req, Access, Answer, ApiError, Call, Endpoint, Kind, Method, Reply};
use super::super::tar::{self, Entry};
use super::super::tasks::TaskSpec;
use super::super::Ctx;
use super::qubes;
use crate::atomic::{self, Durability};
use crate::json::{Array, Object};
use crate::keys::Key;

/// Time limit of a qvm-backup run.
pub const BACKUP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// File name prefix of config backups.
pub const ARCHIVE_PREFIX: &str = "qvm-remote-config-";
/// The archive names of the config file and the policy.
pub const CONFIG_NAME: &str = "remote.conf";
/// See [`CONFIG_NAME`].
pub const POLICY_NAME: &str = "remote-policy";
/// Keys are `remote.d/<vm>.key` in the archive.
pub const KEYS_PREFIX: &str = "remote.d/";

/// This file's endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::Post,
        path: "/api/backup/start",
        tag: "backup",
        summary: "qvm-backup as a background task with progress",
        fields: &[
            req(
                "dest",
                Kind::Arg(4096),
                "backup location: a path in dom0, or in dest_vm",
                "\"/home/user/backups\"",
            ),
            opt(
                "dest_vm",
                Kind::Vm,
                "the VM that receives the backup",
                "\"work\"",
            ),
            opt(
                "vms",
                Kind::VmList,
                "VMs to back up (empty: those with include_in_backups)",
                "[\"work\"]",
            ),
            req(
                "passphrase",
                Kind::Secret(1024),
                "encryption passphrase (never logged)",
                "\"correct horse\"",
            ),
            opt("compress", Kind::Bool, "compress the backup", "true"),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: start,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/backup/config",
        tag: "backup",
        summary: "Config backups present in the files directory",
        fields: &[],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: list,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/backup/config/create",
        tag: "backup",
        summary: "Archive the config, the policy and the keys into the files directory (mode 0600)",
        fields: &[],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: create,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/backup/config/restore",
        tag: "backup",
        summary:
            "Restore a config backup; without confirm it only checks and lists what would change",
        fields: &[
            req(
                "name",
                Kind::FileName,
                "the archive, in the files directory",
                "\"qvm-remote-config-example.tar\"",
            ),
            opt("confirm", Kind::Bool, "write the files", "false"),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: restore,
    },
];

fn start(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let dest = call.text("dest");
    let mut argv = qubes::words(&["qvm-backup", "--yes", "--passphrase-file", "-"]);
    if let Some(vm) = call.str("dest_vm") {
        argv.push("--dest-vm".into());
        argv.push(vm.into());
    }
    if call.flag("compress") {
        argv.push("--compress".into());
    }
    argv.push("--".into());
    argv.push(dest.into());
    argv.extend(call.list("vms").iter().cloned());
    let mut stdin = call.text("passphrase").as_bytes().to_vec();
    stdin.push(b'\n');
    let task = ctx.tasks.start(TaskSpec {
        kind: "backup",
        title: format!(
            "qvm-backup to {}{dest}",
            call.str("dest_vm")
                .map(|v| format!("{v}:"))
                .unwrap_or_default()
        ),
        argv,
        stdin,
        timeout: BACKUP_TIMEOUT,
        watched: false,
    })?;
    Ok(Reply::Json(
        202,
        Object::new()
            .str("task", &task.id)
            .str("events", &format!("/api/tasks/{}/events", task.id))
            .finish(),
    ))
}

fn list(ctx: &Ctx, _: &Call) -> Result<Reply, ApiError> {
    let mut rows: Vec<(String, u64)> = Vec::new();
    if let Ok(entries) = fs::read_dir(&ctx.opts.files_dir) {
        for e in entries.take(10_000).flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(ARCHIVE_PREFIX) && name.ends_with(".tar") {
                if let Ok(m) = fs::symlink_metadata(e.path()) {
                    if m.is_file() {
                        rows.push((name, m.len()));
                    }
                }
            }
        }
    }
    rows.sort();
    let mut a = Array::new();
    for (name, size) in rows.into_iter().rev() {
        a = a.object(Object::new().str("name", &name).uint("size", size));
    }
    Reply::ok(
        Object::new()
            .str("dir", &ctx.opts.files_dir.display().to_string())
            .array("archives", a)
            .finish(),
    )
}

fn read_limited(path: &Path, max: u64) -> Result<Option<Vec<u8>>, ApiError> {
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ApiError::new(500, format!("{}: {e}", path.display()))),
    };
    let mut bytes = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ApiError::new(500, format!("{}: {e}", path.display())))?;
    if bytes.len() as u64 > max {
        return Err(ApiError::new(413, format!("{}: too large", path.display())));
    }
    Ok(Some(bytes))
}

fn create(ctx: &Ctx, _: &Call) -> Result<Reply, ApiError> {
    let mut entries = Vec::new();
    if let Some(data) = read_limited(&ctx.config_path, crate::config::MAX_CONFIG_FILE)? {
        entries.push(Entry {
            name: CONFIG_NAME.into(),
            mode: 0o600,
            data,
        });
    }
    if let Some(data) = read_limited(&ctx.cfg.policy, crate::policy::MAX_POLICY_FILE)? {
        entries.push(Entry {
            name: POLICY_NAME.into(),
            mode: 0o600,
            data,
        });
    }
    for vm in qubes::keyed_vms(&ctx.cfg) {
        if let Some(data) = read_limited(&ctx.cfg.key_path(&vm), crate::keys::MAX_KEY_FILE)? {
            entries.push(Entry {
                name: format!("{KEYS_PREFIX}{vm}.key"),
                mode: 0o600,
                data,
            });
        }
    }
    let now = crate::time::unix_now();
    let bytes = tar::write(&entries, now).map_err(|e| ApiError::new(500, e.to_string()))?;
    let (day, time) = crate::time::utc_stamp(now);
    let name = format!("{ARCHIVE_PREFIX}{day}-{time}.tar");
    fs::create_dir_all(&ctx.opts.files_dir)
        .map_err(|e| ApiError::new(500, format!("{}: {e}", ctx.opts.files_dir.display())))?;
    let path = ctx.opts.files_dir.join(&name);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| ApiError::new(409, format!("{}: {e}", path.display())))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ApiError::new(500, format!("{}: {e}", path.display())))?;
    let mut names = Array::new();
    for e in &entries {
        names = names.str(&e.name);
    }
    Reply::ok(
        Object::new()
            .bool("ok", true)
            .str("name", &name)
            .uint("bytes", bytes.len() as u64)
            .array("entries", names)
            .finish(),
    )
}

/// Where an archive entry goes, after checking its content; an unknown name refuses
/// the whole archive.
fn target(ctx: &Ctx, e: &Entry) -> Result<PathBuf, ApiError> {
    let refuse = |why: String| ApiError::new(422, format!("{}: {why}", e.name));
    let text = || std::str::from_utf8(&e.data).map_err(|_| refuse("not text".into()));
    if e.name == CONFIG_NAME {
        let mut c = crate::config::Config::default();
        c.apply_text(&ctx.config_path, text()?)
            .map_err(|err| refuse(err.to_string()))?;
        return Ok(ctx.config_path.clone());
    }
    if e.name == POLICY_NAME {
        let (_, errors) = crate::policy::Policy::parse_all(&ctx.cfg.policy, text()?);
        if let Some(err) = errors.first() {
            return Err(refuse(err.to_string()));
        }
        return Ok(ctx.cfg.policy.clone());
    }
    if let Some(vm) = e
        .name
        .strip_prefix(KEYS_PREFIX)
        .and_then(|n| n.strip_suffix(".key"))
    {
        if !super::super::api::is_vm(vm) {
            return Err(refuse("not a VM name".into()));
        }
        Key::parse(text()?).ok_or_else(|| refuse("not a key".into()))?;
        return Ok(ctx.cfg.key_path(vm));
    }
    Err(refuse("not a file a config backup holds (refused)".into()))
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ApiError> {
    let err = |e: std::io::Error| ApiError::new(500, format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
    }
    atomic::replace(path, data, Durability::Synced).map_err(err)
}

fn restore(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let path = ctx.opts.files_dir.join(call.text("name"));
    let bytes = read_limited(&path, tar::MAX_ARCHIVE as u64)?
        .ok_or_else(|| ApiError::new(404, format!("{}: no such archive", path.display())))?;
    let entries = tar::read(&bytes).map_err(|e| ApiError::new(422, e.to_string()))?;
    let mut plan = Vec::new();
    for e in &entries {
        plan.push((target(ctx, e)?, e));
    }
    let mut files = Array::new();
    for (dest, e) in &plan {
        files = files.object(
            Object::new()
                .str("entry", &e.name)
                .str("dest", &dest.display().to_string())
                .uint("bytes", e.data.len() as u64),
        );
    }
    if !call.flag("confirm") {
        return Reply::ok(
            Object::new()
                .bool("ok", true)
                .bool("written", false)
                .array("files", files)
                .str("note", "checked; send confirm: true to write these files")
                .finish(),
        );
    }
    for (dest, e) in &plan {
        if dest.starts_with(&ctx.cfg.keys_dir) {
            fs::create_dir_all(&ctx.cfg.keys_dir).map_err(|err| {
                ApiError::new(500, format!("{}: {err}", ctx.cfg.keys_dir.display()))
            })?;
            let key = std::str::from_utf8(&e.data).ok().and_then(Key::parse);
            let key = key.ok_or_else(|| ApiError::new(422, format!("{}: not a key", e.name)))?;
            key.store_replace(dest)
                .map_err(|err| ApiError::new(500, format!("{}: {err}", dest.display())))?;
        } else {
            write_atomic(dest, &e.data)?;
        }
    }
    Reply::ok(
        Object::new()
            .bool("ok", true)
            .bool("written", true)
            .array("files", files)
            .str(
                "note",
                "restored; restart the daemon to use the restored config",
            )
            .finish(),
    )
}
