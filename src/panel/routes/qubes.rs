//! Helpers several tabs share: `qvm-ls` rows, `qvm-run` argvs into a VM, the daemon's
//! status file, key fingerprints, `NAME - value` listings. Every argv here is built
//! from fixed words and values a [`super::super::api::Kind`] has already checked.

use std::collections::BTreeMap;
use std::fs;

use super::super::api::{run_ok, ApiError};
use super::super::Ctx;
use crate::config::Config;
use crate::json::{Array, Object};
use crate::keys::Key;

/// Largest status file read.
const MAX_STATUS: u64 = 256 * 1024;

/// `qvm-ls --raw-data --fields F,… [extra…]`, one row per VM, fields in order.
pub fn qvm_ls(fields: &[&str], extra: &[&str]) -> Result<Vec<Vec<String>>, ApiError> {
    let joined = fields.join(",");
    let mut argv = vec!["qvm-ls", "--raw-data", "--fields", joined.as_str()];
    argv.extend_from_slice(extra);
    let out = run_ok(&argv)?;
    Ok(out
        .stdout_text()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('|').map(|f| f.trim().to_string()).collect())
        .collect())
}

/// The argv that runs `cmd` in `vm` without a shell: `qvm-run --pass-io --no-gui
/// [--no-autostart] --no-shell [-u USER] -- VM CMD…` (QUBES-FACTS.md: extra arguments
/// or `--no-shell` make qvm-run use qubes.VMExec, so the VM's shell never sees them).
pub fn qvm_run_argv(
    ctx: &Ctx,
    vm: &str,
    user: Option<&str>,
    autostart: bool,
    cmd: &[String],
) -> Vec<String> {
    let mut argv = vec![
        ctx.cfg.qvm_run.clone(),
        "--pass-io".to_string(),
        "--no-gui".to_string(),
    ];
    if !autostart {
        argv.push("--no-autostart".to_string());
    }
    argv.push("--no-shell".to_string());
    if let Some(u) = user {
        argv.push("--user".to_string());
        argv.push(u.to_string());
    }
    argv.push("--".to_string());
    argv.push(vm.to_string());
    argv.extend(cmd.iter().cloned());
    argv
}

/// Words as owned strings.
pub fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| (*s).to_string()).collect()
}

/// One line of the daemon's status file, as `key=value` pairs.
pub type StatusLine = BTreeMap<String, String>;

/// The daemon's status file (`write_status` in daemon.rs): the `daemon` line and one
/// `vm` line per VM. `None` if there is no file.
pub fn read_status(cfg: &Config) -> Option<(StatusLine, Vec<StatusLine>)> {
    use std::io::Read;
    let mut text = String::new();
    fs::File::open(crate::dom0::daemon::status_path(&cfg.run_dir))
        .ok()?
        .take(MAX_STATUS)
        .read_to_string(&mut text)
        .ok()?;
    let parse = |line: &str| -> StatusLine {
        line.split(' ')
            .skip(1)
            .filter_map(|f| f.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let mut daemon = StatusLine::new();
    let mut vms = Vec::new();
    for line in text.lines().take(1 + crate::config::MAX_VMS) {
        if line.starts_with("daemon ") {
            daemon = parse(line);
        } else if line.starts_with("vm ") {
            vms.push(parse(line));
        }
    }
    Some((daemon, vms))
}

/// The daemon part of the dashboard: whether the pid in the status file is alive.
pub fn daemon_json(cfg: &Config) -> Object {
    match read_status(cfg) {
        Some((d, _)) => {
            let pid = d
                .get("pid")
                .and_then(|p| p.parse::<i32>().ok())
                .unwrap_or(0);
            let alive = crate::sys::process_alive(pid);
            let updated = d
                .get("updated_ms")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            Object::new()
                .bool("running", alive)
                .int("pid", i64::from(pid))
                .str("mode", d.get("mode").map_or("?", String::as_str))
                .uint("updated_ms", updated)
                .bool("stopping", d.get("stopping").is_some_and(|v| v == "true"))
        }
        None => Object::new()
            .bool("running", false)
            .null("pid")
            .str(
                "mode",
                match cfg.mode {
                    crate::config::Mode::Stream => "stream",
                    crate::config::Mode::Poll => "poll",
                },
            )
            .uint("updated_ms", 0)
            .bool("stopping", false),
    }
}

/// `(has a key file, fingerprint or the reason it is unusable)`.
pub fn key_state(cfg: &Config, vm: &str) -> (bool, String) {
    let path = cfg.key_path(vm);
    if fs::symlink_metadata(&path).is_err() {
        return (false, String::new());
    }
    match Key::load(&path) {
        Ok(k) => (true, k.fingerprint()),
        Err(e) => (true, format!("unusable: {e}")),
    }
}

/// VMs with a key file in the keys dir.
pub fn keyed_vms(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(&cfg.keys_dir) {
        for e in entries.take(crate::config::MAX_VMS * 4).flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(vm) = name.strip_suffix(".key") {
                if super::super::api::is_vm(vm) {
                    out.push(vm.to_string());
                }
            }
        }
    }
    out.sort();
    out
}

/// Every VM qvm-remote knows about (served or keyed), with key, status-file counters
/// and connection.
pub fn remote_vms(cfg: &Config) -> Array {
    let status = read_status(cfg).map(|(_, v)| v).unwrap_or_default();
    let mut names: Vec<String> = cfg.vms.clone();
    for k in keyed_vms(cfg) {
        if !names.contains(&k) {
            names.push(k);
        }
    }
    let mut a = Array::new();
    for vm in names {
        let (has_key, fingerprint) = key_state(cfg, &vm);
        let st = status.iter().find(|s| s.get("name") == Some(&vm));
        let num = |k: &str| {
            st.and_then(|s| s.get(k))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        a = a.object(
            Object::new()
                .str("name", &vm)
                .bool("served", cfg.vms.contains(&vm))
                .bool("has_key", has_key)
                .str("fingerprint", &fingerprint)
                .bool(
                    "connected",
                    st.and_then(|s| s.get("connected"))
                        .is_some_and(|v| v == "true"),
                )
                .uint("last_session_ms", num("last_session_ms"))
                .uint("sessions", num("sessions"))
                .uint("done", num("done"))
                .uint("refused", num("refused"))
                .uint("queued", num("queued"))
                .uint("running", num("running"))
                .uint("unacked", num("unacked")),
        );
    }
    a
}

/// `NAME  -  value` / `NAME  D  value` lines (qvm-prefs, qubes-prefs) as objects.
pub fn prefs_rows(text: &str) -> Array {
    let mut a = Array::new();
    for line in text.lines() {
        let mut it = line.splitn(2, char::is_whitespace);
        let name = it.next().unwrap_or_default();
        let rest = it.next().unwrap_or_default().trim_start();
        if name.is_empty() {
            continue;
        }
        let (marker, value) = match rest.split_once(char::is_whitespace) {
            Some((m, v)) if m == "-" || m == "D" => (m, v.trim()),
            _ if rest == "-" || rest == "D" => (rest, ""),
            _ => ("-", rest),
        };
        a = a.object(
            Object::new()
                .str("name", name)
                .str("value", value)
                .bool("default", marker == "D"),
        );
    }
    a
}

/// `name value` lines (qvm-features, qvm-service) as objects.
pub fn pairs(text: &str) -> Array {
    let mut a = Array::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        a = a.object(Object::new().str("name", name).str("value", value.trim()));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefs_lines_parse() {
        let a = prefs_rows("label  -  red\nmemory  D  400\nnetvm  -  \n").finish();
        assert!(
            a.contains("\"name\": \"label\", \"value\": \"red\", \"default\": false"),
            "{a}"
        );
        assert!(
            a.contains("\"name\": \"memory\", \"value\": \"400\", \"default\": true"),
            "{a}"
        );
        assert!(a.contains("\"name\": \"netvm\", \"value\": \"\""), "{a}");
    }
}
