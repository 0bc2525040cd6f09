//! dom0 configuration (DESIGN §6): `/etc/qubes/remote.conf`, `KEY=value` lines that
//! bash and systemd's `EnvironmentFile` both read the same way.
//!
//! The file is read first; then any of the same keys set in the environment override
//! it, because that is what a unit with `EnvironmentFile=` hands the daemon. Every
//! error names the file and line (or the environment variable). Unknown keys are
//! errors, not warnings: a misspelt limit must not silently fall back to a default.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::keys;
use crate::proto::job::PROTOCOL_MAX_COMMAND;
use crate::proto::result::PROTOCOL_MAX_OUTPUT;

/// Where the config lives unless `QVM_REMOTE_CONF` or `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/qubes/remote.conf";
/// Largest config file read.
pub const MAX_CONFIG_FILE: u64 = 64 * 1024;
/// Most VMs one daemon serves.
pub const MAX_VMS: usize = 256;
/// Most jobs that may run at once, whatever the config says.
pub const MAX_CONCURRENT_LIMIT: u64 = 64;
/// Longest job timeout the config may allow: one day.
pub const MAX_TIMEOUT: u64 = 86_400;
/// Shortest poll interval, so a typo cannot make dom0 spin.
pub const MIN_POLL_INTERVAL_MS: u64 = 50;
/// Longest poll interval.
pub const MAX_POLL_INTERVAL_MS: u64 = 3_600_000;

/// How dom0 talks to VMs (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One long-lived session per VM.
    Stream,
    /// A short session every poll interval.
    Poll,
}

/// The daemon's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `QVM_REMOTE_VMS`.
    pub vms: Vec<String>,
    /// `QVM_REMOTE_VM_USER`.
    pub vm_user: String,
    /// `QVM_REMOTE_MODE`.
    pub mode: Mode,
    /// `QVM_REMOTE_POLL_INTERVAL`.
    pub poll_interval: Duration,
    /// `QVM_REMOTE_MAX_CONCURRENT`.
    pub max_concurrent: usize,
    /// `QVM_REMOTE_TIMEOUT`, seconds.
    pub timeout: u64,
    /// `QVM_REMOTE_MAX_COMMAND`, bytes.
    pub max_command: usize,
    /// `QVM_REMOTE_MAX_OUTPUT`, bytes per stream.
    pub max_output: usize,
    /// `QVM_REMOTE_REPLAY_WINDOW`, seconds.
    pub replay_window: u64,
    /// `QVM_REMOTE_QVM_RUN`.
    pub qvm_run: String,
    /// `QVM_REMOTE_AGENT`.
    pub agent: String,
    /// `QVM_REMOTE_SHELL`.
    pub shell: PathBuf,
    /// `QVM_REMOTE_KEYS_DIR`.
    pub keys_dir: PathBuf,
    /// `QVM_REMOTE_POLICY`.
    pub policy: PathBuf,
    /// `QVM_REMOTE_STATE_DIR`.
    pub state_dir: PathBuf,
    /// `QVM_REMOTE_RUN_DIR`.
    pub run_dir: PathBuf,
    /// `QVM_REMOTE_LOG`.
    pub log: PathBuf,
    /// `QVM_REMOTE_PANEL_ADDR`.
    pub panel_addr: SocketAddr,
    /// `QVM_REMOTE_JOB_CGROUP` (not in DESIGN §6): run each job in a cgroup of its own.
    pub job_cgroup: bool,
}

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of a file.
    Line(PathBuf, usize),
    /// An environment variable.
    Env(String),
    /// The file as a whole.
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line(p, n) => write!(f, "{}:{n}", p.display()),
            Origin::Env(k) => write!(f, "environment {k}"),
            Origin::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A config error, with where it is.
#[derive(Debug)]
pub struct ConfigError {
    /// Where.
    pub origin: Origin,
    /// What.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every key the config knows, in the order DESIGN §6 lists them, then our own.
pub const KEYS: &[&str] = &[
    "QVM_REMOTE_VMS",
    "QVM_REMOTE_VM_USER",
    "QVM_REMOTE_MODE",
    "QVM_REMOTE_POLL_INTERVAL",
    "QVM_REMOTE_MAX_CONCURRENT",
    "QVM_REMOTE_TIMEOUT",
    "QVM_REMOTE_MAX_COMMAND",
    "QVM_REMOTE_MAX_OUTPUT",
    "QVM_REMOTE_REPLAY_WINDOW",
    "QVM_REMOTE_QVM_RUN",
    "QVM_REMOTE_AGENT",
    "QVM_REMOTE_SHELL",
    "QVM_REMOTE_KEYS_DIR",
    "QVM_REMOTE_POLICY",
    "QVM_REMOTE_STATE_DIR",
    "QVM_REMOTE_RUN_DIR",
    "QVM_REMOTE_LOG",
    "QVM_REMOTE_PANEL_ADDR",
    "QVM_REMOTE_JOB_CGROUP",
];

impl Default for Config {
    fn default() -> Config {
        Config {
            vms: Vec::new(),
            vm_user: "user".into(),
            mode: Mode::Stream,
            poll_interval: Duration::from_secs(1),
            max_concurrent: 8,
            timeout: 300,
            max_command: PROTOCOL_MAX_COMMAND,
            max_output: 10 * 1024 * 1024,
            replay_window: 600,
            qvm_run: "qvm-run".into(),
            agent: "qvm-remote agent".into(),
            shell: "/bin/bash".into(),
            keys_dir: "/etc/qubes/remote.d".into(),
            policy: "/etc/qubes/remote-policy".into(),
            state_dir: "/var/lib/qvm-remote".into(),
            run_dir: "/run/qvm-remote".into(),
            log: "/var/log/qubes/qvm-remote.log".into(),
            panel_addr: SocketAddr::from(([127, 0, 0, 1], 9876)),
            job_cgroup: false,
        }
    }
}

impl Config {
    /// Reads `path` (which must exist and be safe) and applies environment overrides.
    /// A missing file is an error: the daemon needs at least `QVM_REMOTE_VMS`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_config_file(path)?;
        let mut cfg = Config::default();
        cfg.apply_text(path, &text)?;
        cfg.apply_env(|k| std::env::var(k).ok())?;
        Ok(cfg)
    }

    /// Applies the `KEY=value` lines of `text`.
    pub fn apply_text(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        for (i, raw) in text.lines().enumerate() {
            let origin = Origin::Line(path.to_path_buf(), i + 1);
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| ConfigError {
                origin: origin.clone(),
                message,
            };
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| err("expected KEY=value".into()))?;
            let value = unquote(value).ok_or_else(|| err("unbalanced quotes".into()))?;
            self.set(key, value).map_err(err)?;
        }
        Ok(())
    }

    /// Applies overrides from the environment (`get` looks a variable up).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for key in KEYS {
            if let Some(value) = get(key) {
                self.set(key, &value).map_err(|message| ConfigError {
                    origin: Origin::Env((*key).to_string()),
                    message,
                })?;
            }
        }
        Ok(())
    }

    /// Sets one key from its text value, validating it.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "QVM_REMOTE_VMS" => {
                let vms: Vec<String> = value.split_whitespace().map(str::to_string).collect();
                if vms.len() > MAX_VMS {
                    return Err(format!("more than {MAX_VMS} VMs"));
                }
                for vm in &vms {
                    if !is_valid_vm_name(vm) || vm == "dom0" {
                        return Err(format!("invalid VM name {:?}", escape(vm)));
                    }
                }
                let mut unique = vms.clone();
                unique.sort();
                unique.dedup();
                if unique.len() != vms.len() {
                    return Err("a VM is listed twice".into());
                }
                self.vms = vms;
            }
            "QVM_REMOTE_VM_USER" => {
                if !is_valid_user(value) {
                    return Err(format!("invalid user name {:?}", escape(value)));
                }
                self.vm_user = value.into();
            }
            "QVM_REMOTE_MODE" => {
                self.mode = match value {
                    "stream" => Mode::Stream,
                    "poll" => Mode::Poll,
                    _ => return Err("mode must be stream or poll".into()),
                }
            }
            "QVM_REMOTE_POLL_INTERVAL" => {
                let ms = parse_decimal_ms(value)
                    .filter(|ms| (MIN_POLL_INTERVAL_MS..=MAX_POLL_INTERVAL_MS).contains(ms))
                    .ok_or("poll interval must be seconds between 0.05 and 3600")?;
                self.poll_interval = Duration::from_millis(ms);
            }
            "QVM_REMOTE_MAX_CONCURRENT" => {
                self.max_concurrent = ranged(value, 1, MAX_CONCURRENT_LIMIT)? as usize;
            }
            "QVM_REMOTE_TIMEOUT" => self.timeout = ranged(value, 1, MAX_TIMEOUT)?,
            "QVM_REMOTE_MAX_COMMAND" => {
                self.max_command = ranged(value, 1, PROTOCOL_MAX_COMMAND as u64)? as usize;
            }
            "QVM_REMOTE_MAX_OUTPUT" => {
                self.max_output = ranged(value, 0, PROTOCOL_MAX_OUTPUT as u64)? as usize;
            }
            "QVM_REMOTE_REPLAY_WINDOW" => self.replay_window = ranged(value, 1, MAX_TIMEOUT)?,
            "QVM_REMOTE_QVM_RUN" => {
                if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err("must be one program name or path".into());
                }
                self.qvm_run = value.into();
            }
            "QVM_REMOTE_AGENT" => {
                // This string is handed to the VM's shell, so it is held to a plain
                // alphabet: it is configuration, never data.
                let plain = |c: char| c.is_ascii_alphanumeric() || " _./-=".contains(c);
                if value.trim().is_empty() || !value.chars().all(plain) {
                    return Err(
                        "agent command may hold only letters, digits, space and _./-=".into(),
                    );
                }
                self.agent = value.into();
            }
            "QVM_REMOTE_SHELL" => self.shell = absolute(value)?,
            "QVM_REMOTE_KEYS_DIR" => self.keys_dir = absolute(value)?,
            "QVM_REMOTE_POLICY" => self.policy = absolute(value)?,
            "QVM_REMOTE_STATE_DIR" => self.state_dir = absolute(value)?,
            "QVM_REMOTE_RUN_DIR" => self.run_dir = absolute(value)?,
            "QVM_REMOTE_LOG" => self.log = absolute(value)?,
            "QVM_REMOTE_PANEL_ADDR" => {
                let addr: SocketAddr = value
                    .parse()
                    .map_err(|_| "panel address must be IP:PORT".to_string())?;
                if !addr.ip().is_loopback() {
                    return Err("the panel binds loopback only (127.0.0.1 or ::1)".into());
                }
                self.panel_addr = addr;
            }
            "QVM_REMOTE_JOB_CGROUP" => {
                self.job_cgroup = match value {
                    "yes" => true,
                    "no" => false,
                    _ => return Err("must be yes or no".into()),
                }
            }
            _ => return Err(format!("unknown key {:?}", escape(key))),
        }
        Ok(())
    }

    /// The key file of `vm`.
    pub fn key_path(&self, vm: &str) -> PathBuf {
        self.keys_dir.join(format!("{vm}.key"))
    }
}

/// A VM name Qubes accepts: `^[A-Za-z][A-Za-z0-9_.-]{0,30}$`, not `none` or `default`.
pub fn is_valid_vm_name(name: &str) -> bool {
    let b = name.as_bytes();
    match b.split_first() {
        Some((first, rest)) => {
            first.is_ascii_alphabetic()
                && rest.len() <= 30
                && rest
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
                && name != "none"
                && name != "default"
        }
        None => false,
    }
}

fn is_valid_user(name: &str) -> bool {
    let b = name.as_bytes();
    match b.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_lowercase() || *first == b'_')
                && rest.len() <= 31
                && rest.iter().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-')
                })
        }
        None => false,
    }
}

/// Reads a config-like file: bounded, no symlinks, and refused when others could
/// write it.
pub fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    let err = |message: String| ConfigError {
        origin: Origin::File(path.to_path_buf()),
        message,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(path)
        .map_err(|e| err(e.to_string()))?;
    let meta = file.metadata().map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    keys::check_not_writable_by_others(path, &meta).map_err(|e| err(strip_path(&e)))?;
    read_bounded(file, MAX_CONFIG_FILE).map_err(|e| err(e.to_string()))
}

fn read_bounded(file: File, max: u64) -> io::Result<String> {
    let mut text = String::new();
    let n = file.take(max + 1).read_to_string(&mut text)?;
    if n as u64 > max {
        return Err(io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(text)
}

fn strip_path(e: &keys::KeyError) -> String {
    match e {
        keys::KeyError::Insecure { why, .. } => format!("refused: {why}"),
        other => other.to_string(),
    }
}

/// Removes one level of matching single or double quotes, as bash would for a plain
/// assignment. `None` when a quote is left open.
fn unquote(v: &str) -> Option<&str> {
    let v = v.trim();
    for q in ['"', '\''] {
        if let Some(rest) = v.strip_prefix(q) {
            return rest.strip_suffix(q).filter(|inner| !inner.contains(q));
        }
    }
    if v.contains(['"', '\'']) {
        return None;
    }
    Some(v)
}

fn ranged(value: &str, min: u64, max: u64) -> Result<u64, String> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("want a whole number from {min} to {max}"))
}

fn absolute(value: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(value);
    if !p.is_absolute() || value.chars().any(char::is_control) {
        return Err("want an absolute path".into());
    }
    Ok(p)
}

/// `1`, `0.5`, `2.250` seconds → milliseconds; at most 3 decimals.
fn parse_decimal_ms(value: &str) -> Option<u64> {
    let (int, frac) = value.split_once('.').unwrap_or((value, ""));
    if int.is_empty() || frac.len() > 3 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || (value.contains('.') && frac.is_empty()) {
        return None;
    }
    let int: u64 = int.parse().ok()?;
    let frac_ms: u64 = format!("{frac:0<3}").parse().ok()?;
    int.checked_mul(1000)?.checked_add(frac_ms)
}

fn escape(s: &str) -> String {
    crate::proto::escape_line(s.as_bytes(), 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        c.apply_text(Path::new("/etc/qubes/remote.conf"), text)?;
        Ok(c)
    }

    #[test]
    fn defaults_match_the_design_table() {
        let c = Config::default();
        assert_eq!(c.mode, Mode::Stream);
        assert_eq!(c.poll_interval, Duration::from_secs(1));
        assert_eq!(c.max_concurrent, 8);
        assert_eq!(c.timeout, 300);
        assert_eq!(c.max_command, 1_048_576);
        assert_eq!(c.max_output, 10_485_760);
        assert_eq!(c.replay_window, 600);
        assert_eq!(c.agent, "qvm-remote agent");
        assert_eq!(c.panel_addr.to_string(), "127.0.0.1:9876");
        assert!(!c.job_cgroup);
        assert!(parse("QVM_REMOTE_JOB_CGROUP=yes\n").unwrap().job_cgroup);
        assert!(!parse("QVM_REMOTE_JOB_CGROUP=no\n").unwrap().job_cgroup);
    }

    #[test]
    fn reads_bash_style_lines() {
        let c = parse(
            "# comment\n\nQVM_REMOTE_VMS=\"work dev\"\nQVM_REMOTE_MODE=poll\n\
             QVM_REMOTE_POLL_INTERVAL=0.25\nQVM_REMOTE_TIMEOUT='60'\n",
        )
        .unwrap();
        assert_eq!(c.vms, ["work", "dev"]);
        assert_eq!(c.mode, Mode::Poll);
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert_eq!(c.timeout, 60);
    }

    #[test]
    fn errors_name_the_line() {
        let table = [
            ("QVM_REMOTE_VMS=work\nQVM_REMOTE_TYPO=1\n", 2, "unknown key"),
            ("QVM_REMOTE_VMS=../etc\n", 1, "invalid VM name"),
            ("\n\nQVM_REMOTE_VMS=dom0\n", 3, "invalid VM name"),
            ("QVM_REMOTE_VMS=a a\n", 1, "twice"),
            ("QVM_REMOTE_MODE=push\n", 1, "stream or poll"),
            ("QVM_REMOTE_TIMEOUT=0\n", 1, "whole number"),
            ("QVM_REMOTE_TIMEOUT=86401\n", 1, "whole number"),
            ("QVM_REMOTE_MAX_COMMAND=1048577\n", 1, "whole number"),
            ("QVM_REMOTE_MAX_OUTPUT=67108865\n", 1, "whole number"),
            ("QVM_REMOTE_POLL_INTERVAL=0.01\n", 1, "poll interval"),
            ("QVM_REMOTE_POLL_INTERVAL=1.\n", 1, "poll interval"),
            ("QVM_REMOTE_AGENT=qvm-remote agent; rm -rf /\n", 1, "agent"),
            ("QVM_REMOTE_PANEL_ADDR=0.0.0.0:9876\n", 1, "loopback"),
            ("QVM_REMOTE_KEYS_DIR=relative/dir\n", 1, "absolute"),
            ("QVM_REMOTE_VMS=\"work\n", 1, "quotes"),
            ("just words\n", 1, "KEY=value"),
            ("QVM_REMOTE_VM_USER=Root\n", 1, "user name"),
            ("QVM_REMOTE_JOB_CGROUP=1\n", 1, "yes or no"),
        ];
        for (text, line, what) in table {
            let e = parse(text).unwrap_err();
            assert_eq!(
                e.origin,
                Origin::Line("/etc/qubes/remote.conf".into(), line),
                "{text:?}"
            );
            assert!(e.message.contains(what), "{text:?}: {e}");
            assert!(e
                .to_string()
                .starts_with(&format!("/etc/qubes/remote.conf:{line}: ")));
        }
    }

    #[test]
    fn vm_names_follow_qubes() {
        let good = [
            "work",
            "a",
            "sys-net",
            "A1_b.c-d",
            &format!("a{}", "b".repeat(30)),
        ];
        for n in good {
            assert!(is_valid_vm_name(n), "{n}");
        }
        let long = format!("a{}", "b".repeat(31));
        let bad = ["", "1vm", "-x", "a b", "a/b", "none", "default", &long, "é"];
        for n in bad {
            assert!(!is_valid_vm_name(n), "{n}");
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c = parse("QVM_REMOTE_VMS=work\nQVM_REMOTE_TIMEOUT=60\n").unwrap();
        c.apply_env(|k| (k == "QVM_REMOTE_TIMEOUT").then(|| "30".to_string()))
            .unwrap();
        assert_eq!(c.timeout, 30);
        let e = c
            .apply_env(|k| (k == "QVM_REMOTE_MODE").then(|| "x".to_string()))
            .unwrap_err();
        assert_eq!(e.origin, Origin::Env("QVM_REMOTE_MODE".into()));
    }
}
