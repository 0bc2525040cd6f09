//! `qvm-remote-dom0` subcommands: the daemon itself, key management (`authorize`,
//! `revoke`, `keys`), the service switch (`enable`, `disable`), `check-config` and
//! `status`; the policy subcommands live in `admin.rs`. Each returns a [`CliError`];
//! `main` prints it and picks the exit code.

use std::fmt;
use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::approval::Verdict;
use super::daemon::{self, Options};
use super::{admin, devmode};
use crate::config::{self, Config, ConfigError};
use crate::keys::{self, Key};

/// The usage text.
pub const USAGE: &str = "\
usage: qvm-remote-dom0 [--config FILE] [--vm VM] [--once] [--dry-run] [-v]
       qvm-remote-dom0 [--config FILE] authorize VM [KEY]   (KEY read from stdin when absent)
       qvm-remote-dom0 [--config FILE] revoke VM
       qvm-remote-dom0 [--config FILE] keys
       qvm-remote-dom0 [--config FILE] check-config
       qvm-remote-dom0 [--config FILE] status
       qvm-remote-dom0 [--config FILE] policy lint [FILE] | policy levels
       qvm-remote-dom0 [--config FILE] policy check VM [--] CMD...  (exit 0 allow, 1 deny, 2 ask)
       qvm-remote-dom0 [--config FILE] pending | approve ID | deny ID
       qvm-remote-dom0 [--config FILE] dev-mode on VM --minutes N | dev-mode off [VM] | dev-mode status
       qvm-remote-dom0 [--config FILE] audit verify [FILE...]
       qvm-remote-dom0 [--config FILE] panel                 (admin panel on QVM_REMOTE_PANEL_ADDR)
       qvm-remote-dom0 [--config FILE] panel url [--open]    (one-time login URL)
       qvm-remote-dom0 enable | disable
       qvm-remote-dom0 --version | -h | --help

Without a subcommand, runs the daemon: it opens a channel to each authorised VM in
QVM_REMOTE_VMS, verifies their jobs and runs them in dom0.

  --config FILE  config file (default: $QVM_REMOTE_CONF, else /etc/qubes/remote.conf)
  --vm VM        serve only this VM
  --once         one session per VM, wait for its jobs, then exit
  --dry-run      verify and log jobs, never execute them
  -v             echo the audit log on stderr

Exit status: 0 success, 1 failure, 2 usage error.
";

/// The systemd unit that `enable` and `disable` switch.
pub const UNIT: &str = "qvm-remote-dom0.service";
/// Longest key text read from stdin.
const MAX_KEY_INPUT: u64 = 1024;

/// A failed subcommand.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments; the text says what.
    Usage(String),
    /// The config is unusable.
    Config(ConfigError),
    /// The daemon could not start.
    Daemon(daemon::DaemonError),
    /// Anything else, with context.
    Failed(String),
    /// A result that is not success, with its own exit code (`policy check` exits 1 for
    /// deny and 2 for ask; `audit verify` 1 for a broken chain).
    Status {
        /// The exit code.
        code: u8,
        /// What `main` prints.
        message: String,
    },
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) => write!(f, "{m}\n\n{USAGE}"),
            CliError::Config(e) => write!(f, "{e}"),
            CliError::Daemon(e) => write!(f, "{e}"),
            CliError::Failed(m) => f.write_str(m),
            CliError::Status { message, .. } => f.write_str(message),
        }
    }
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Status { code, .. } => *code,
            _ => 1,
        }
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> CliError {
        CliError::Config(e)
    }
}

/// Runs `qvm-remote-dom0` with `args` (without the program name).
pub fn main(args: &[String]) -> Result<(), CliError> {
    let mut config_path: Option<PathBuf> = None;
    let mut opts = Options::default();
    let mut rest: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        // Options come before the subcommand; everything after its first word belongs
        // to it (a command for `policy check` may hold `-v` or `--help`).
        if !rest.is_empty() {
            rest.push(a);
            continue;
        }
        match a.as_str() {
            "--config" => {
                let v = it
                    .next()
                    .ok_or_else(|| CliError::Usage("--config needs a FILE".into()))?;
                config_path = Some(PathBuf::from(v));
            }
            "--vm" => {
                let v = it
                    .next()
                    .ok_or_else(|| CliError::Usage("--vm needs a VM name".into()))?;
                if !config::is_valid_vm_name(v) {
                    return Err(CliError::Usage("--vm: invalid VM name".into()));
                }
                opts.only_vm = Some(v.clone());
            }
            "--once" => opts.once = true,
            "--dry-run" => opts.dry_run = true,
            "-v" | "--verbose" => opts.verbose = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            "--version" => {
                println!("qvm-remote-dom0 {}", crate::version::VERSION);
                return Ok(());
            }
            s if s.starts_with('-') && rest.is_empty() => {
                return Err(CliError::Usage(format!(
                    "unknown option {}",
                    crate::proto::escape_line(s.as_bytes(), 40)
                )))
            }
            s => rest.push(s),
        }
    }
    let path = config_path.unwrap_or_else(default_config_path);
    match rest.as_slice() {
        [] => {
            let cfg = load_config(&path)?;
            daemon::run(cfg, opts).map_err(CliError::Daemon)
        }
        ["authorize", vm] => authorize(&load_config(&path)?, vm, None),
        ["authorize", vm, key] => authorize(&load_config(&path)?, vm, Some(key)),
        ["revoke", vm] => revoke(&load_config(&path)?, vm),
        ["keys"] => list_keys(&load_config(&path)?),
        ["check-config"] => check_config(&path),
        ["status"] => status(&load_config(&path)?),
        ["policy", sub @ ..] => admin::policy(&load_config(&path)?, sub),
        ["pending"] => admin::pending(&load_config(&path)?),
        ["approve", id] => admin::decide(&load_config(&path)?, id, Verdict::Approve),
        ["deny", id] => admin::decide(&load_config(&path)?, id, Verdict::Deny),
        ["dev-mode", sub @ ..] => admin::dev_mode(&load_config(&path)?, sub),
        ["audit", sub @ ..] => admin::audit(&load_config(&path)?, sub),
        ["panel", sub @ ..] => {
            crate::panel::cli(&load_config(&path)?, &path, sub).map_err(|e| match e.is_usage() {
                true => CliError::Usage(e.to_string()),
                false => CliError::Failed(e.to_string()),
            })
        }
        ["enable"] => enable(),
        ["disable"] => systemctl(&["disable", "--now", UNIT]),
        [cmd, ..] => Err(CliError::Usage(format!(
            "unknown subcommand or wrong arguments: {}",
            crate::proto::escape_line(cmd.as_bytes(), 40)
        ))),
    }
}

/// `$QVM_REMOTE_CONF`, else `/etc/qubes/remote.conf`.
pub fn default_config_path() -> PathBuf {
    std::env::var_os("QVM_REMOTE_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG))
}

/// Loads the config. A missing file is allowed for the admin subcommands (defaults
/// plus environment, so `authorize` works before the first config is written), and
/// for the daemon too, which then needs `QVM_REMOTE_VMS` from the environment.
fn load_config(path: &Path) -> Result<Config, CliError> {
    if path.exists() || fs::symlink_metadata(path).is_ok() {
        return Ok(Config::load(path)?);
    }
    let mut cfg = Config::default();
    cfg.apply_env(|k| std::env::var(k).ok())?;
    Ok(cfg)
}

fn checked_vm(vm: &str) -> Result<&str, CliError> {
    if config::is_valid_vm_name(vm) && vm != "dom0" {
        Ok(vm)
    } else {
        Err(CliError::Usage(format!(
            "invalid VM name {}",
            crate::proto::escape_line(vm.as_bytes(), 40)
        )))
    }
}

fn ensure_keys_dir(cfg: &Config) -> Result<(), CliError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.keys_dir)
        .map_err(|e| CliError::Failed(format!("{}: {e}", cfg.keys_dir.display())))?;
    let meta = fs::symlink_metadata(&cfg.keys_dir)
        .map_err(|e| CliError::Failed(format!("{}: {e}", cfg.keys_dir.display())))?;
    check_private_dir(&cfg.keys_dir, &meta).map_err(CliError::Failed)
}

fn check_private_dir(path: &Path, meta: &fs::Metadata) -> Result<(), String> {
    keys::check_private_dir(path, meta).map_err(|e| e.to_string())
}

fn authorize(cfg: &Config, vm: &str, key_arg: Option<&str>) -> Result<(), CliError> {
    let vm = checked_vm(vm)?;
    let text = match key_arg {
        Some(k) => k.to_string(),
        None => {
            let mut s = String::new();
            io::stdin()
                .lock()
                .take(MAX_KEY_INPUT)
                .read_to_string(&mut s)
                .map_err(|e| CliError::Failed(format!("reading the key from stdin: {e}")))?;
            s
        }
    };
    let key = Key::parse(&text)
        .ok_or_else(|| CliError::Failed("not a key: want 64 hex characters (256 bits)".into()))?;
    ensure_keys_dir(cfg)?;
    let path = cfg.key_path(vm);
    key.store_replace(&path)
        .map_err(|e| CliError::Failed(format!("{}: {e}", path.display())))?;
    println!("authorized {vm}: key fingerprint {}", key.fingerprint());
    if !cfg.vms.iter().any(|v| v == vm) {
        println!(
            "note: {vm} is not in QVM_REMOTE_VMS; add it to the config so the daemon serves it"
        );
    }
    Ok(())
}

fn revoke(cfg: &Config, vm: &str) -> Result<(), CliError> {
    let vm = checked_vm(vm)?;
    let path = cfg.key_path(vm);
    match fs::remove_file(&path) {
        Ok(()) => {
            println!("revoked {vm}: key removed; the daemon stops serving it at its next session");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CliError::Failed(format!(
            "{vm} has no key ({})",
            path.display()
        ))),
        Err(e) => Err(CliError::Failed(format!("{}: {e}", path.display()))),
    }
}

fn list_keys(cfg: &Config) -> Result<(), CliError> {
    let entries = match fs::read_dir(&cfg.keys_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            println!("no keys ({} does not exist)", cfg.keys_dir.display());
            return Ok(());
        }
        Err(e) => return Err(CliError::Failed(format!("{}: {e}", cfg.keys_dir.display()))),
    };
    let mut rows = Vec::new();
    for e in entries.take(super::store::MAX_LISTING).flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(vm) = name.strip_suffix(".key") else {
            continue;
        };
        if !config::is_valid_vm_name(vm) {
            continue;
        }
        let state = match Key::load(&e.path()) {
            Ok(k) => k.fingerprint(),
            Err(err) => format!("unusable: {err}"),
        };
        let served = if cfg.vms.iter().any(|v| v == vm) {
            "served"
        } else {
            "not in QVM_REMOTE_VMS"
        };
        rows.push(format!("{vm:<32} {state}  ({served})"));
    }
    rows.sort();
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

/// `check-config`: the config parses, the keys dir and every VM's key are safe, the
/// panel address is loopback. Prints every problem, not just the first.
fn check_config(path: &Path) -> Result<(), CliError> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let cfg = match load_config(path) {
        Ok(c) => c,
        Err(e) => return Err(CliError::Failed(format!("config: {e}"))),
    };
    if !path.exists() {
        warnings.push(format!(
            "{}: no config file (defaults and environment used)",
            path.display()
        ));
    }
    if cfg.vms.is_empty() {
        problems.push("QVM_REMOTE_VMS is empty: the daemon would refuse to start".to_string());
    }
    match fs::symlink_metadata(&cfg.keys_dir) {
        Ok(meta) => {
            if let Err(e) = check_private_dir(&cfg.keys_dir, &meta) {
                problems.push(e);
            }
        }
        Err(e) => problems.push(format!("{}: {e}", cfg.keys_dir.display())),
    }
    for vm in &cfg.vms {
        match Key::load(&cfg.key_path(vm)) {
            Ok(k) => println!("ok: {vm} key {}", k.fingerprint()),
            Err(e) => problems.push(format!("{vm}: {e} (this VM is never polled)")),
        }
    }
    match crate::policy::load(&cfg.policy) {
        crate::policy::Loaded::Missing => warnings.push(format!(
            "{}: no policy file: every authorised VM may run anything (full)",
            cfg.policy.display()
        )),
        crate::policy::Loaded::Broken(e) => problems.push(format!(
            "policy: {e} (the daemon denies every job until it is fixed; see policy lint)"
        )),
        crate::policy::Loaded::Ready(p) => {
            println!("ok: policy {} rule(s)", p.rules.len());
        }
    }
    for (vm, st) in devmode::list(&cfg.run_dir, crate::time::unix_now()) {
        if let devmode::State::Active(until) = st {
            warnings.push(format!(
                "dev mode is on for {vm} until {}: it may run anything",
                crate::time::iso8601(until)
            ));
        }
    }
    if !cfg.shell.is_absolute() || !cfg.shell.exists() {
        problems.push(format!(
            "QVM_REMOTE_SHELL {}: not found",
            cfg.shell.display()
        ));
    }
    for w in &warnings {
        println!("warning: {w}");
    }
    for p in &problems {
        println!("error: {p}");
    }
    if problems.is_empty() {
        println!("config ok: {} VM(s), mode {:?}", cfg.vms.len(), cfg.mode);
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "{} problem(s) found",
            problems.len()
        )))
    }
}

fn status(cfg: &Config) -> Result<(), CliError> {
    let path = daemon::status_path(&cfg.run_dir);
    let mut text = String::new();
    fs::File::open(&path)
        .and_then(|f| f.take(daemon::MAX_STATUS_FILE).read_to_string(&mut text))
        .map_err(|e| {
            CliError::Failed(format!("{}: {e} (is the daemon running?)", path.display()))
        })?;
    let mut alive = false;
    for line in text.lines().take(1 + config::MAX_VMS) {
        let fields: Vec<(&str, &str)> = line
            .split(' ')
            .skip(1)
            .filter_map(|f| f.split_once('='))
            .collect();
        let get = |k: &str| {
            fields
                .iter()
                .find(|(n, _)| *n == k)
                .map_or("?", |(_, v)| *v)
        };
        if line.starts_with("daemon ") {
            alive = get("pid")
                .parse::<i32>()
                .is_ok_and(crate::sys::process_alive);
            println!(
                "daemon: {} (pid {}, mode {})",
                if alive { "running" } else { "not running" },
                get("pid"),
                get("mode")
            );
            println!(
                "{:<20} {:<10} {:>8} {:>8} {:>7} {:>7} {:>8}  last session",
                "VM", "connected", "done", "refused", "queued", "running", "unacked"
            );
        } else if line.starts_with("vm ") {
            let last = get("last_session_ms")
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms > 0)
                .map_or("never".to_string(), crate::time::iso8601_ms);
            let connected = if get("key") == "false" {
                "no key"
            } else {
                get("connected")
            };
            println!(
                "{:<20} {:<10} {:>8} {:>8} {:>7} {:>7} {:>8}  {last}",
                get("name"),
                connected,
                get("done"),
                get("refused"),
                get("queued"),
                get("running"),
                get("unacked")
            );
        }
    }
    if alive {
        Ok(())
    } else {
        Err(CliError::Failed("the daemon is not running".into()))
    }
}

fn enable() -> Result<(), CliError> {
    let mut out = io::stdout();
    let _ = writeln!(
        out,
        "Enabling {UNIT} starts it at every boot. While it runs, the VMs in\n\
         QVM_REMOTE_VMS can run commands in dom0 as root, limited only by the policy.\n\
         A compromised VM with a key can then act on your whole system.\n\
         Type yes to continue:"
    );
    let _ = out.flush();
    let mut answer = String::new();
    io::stdin()
        .lock()
        .take(64)
        .read_line(&mut answer)
        .map_err(|e| CliError::Failed(format!("reading the answer: {e}")))?;
    if answer.trim() != "yes" {
        return Err(CliError::Failed(
            "not enabled (you did not type yes)".into(),
        ));
    }
    systemctl(&["enable", "--now", UNIT])
}

fn systemctl(args: &[&str]) -> Result<(), CliError> {
    let status = Command::new("systemctl")
        .args(args)
        .status()
        .map_err(|e| CliError::Failed(format!("systemctl: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "systemctl {} failed ({status})",
            args.join(" ")
        )))
    }
}
