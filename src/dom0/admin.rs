//! The administrator's policy subcommands of `qvm-remote-dom0` (shared/DESIGN.md §7):
//! `policy lint|check|levels`, `pending`, `approve`, `deny`, `dev-mode` and
//! `audit verify`. They read the daemon's files and write only decisions and dev-mode
//! overlays in the run dir; the audit log has one writer, the daemon, which logs what
//! these commands change when it picks the change up.

use std::io::{self, Read};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::approval::{self, Verdict as Approval};
use super::cli::CliError;
use super::devmode::{self, State};
use super::gate::{self, Gate};
use crate::audit::{self, AuditLog, Echo, VerifyError};
use crate::config::{self, Config};
use crate::id::CommandId;
use crate::policy::{self, Action, Classified, Policy};
use crate::proto::escape_line;
use crate::time;

/// How long `approve`/`deny` wait to see the daemon act on the decision.
pub const APPROVAL_ACK_WAIT: Duration = Duration::from_secs(3);
/// How much of a log line `audit verify` quotes when it names a bad line.
const QUOTED_LINE: usize = 200;
/// The exit code of `policy check` for `ask`.
pub const EXIT_ASK: u8 = 2;

fn failed(msg: impl Into<String>) -> CliError {
    CliError::Failed(msg.into())
}

fn usage(msg: &str) -> CliError {
    CliError::Usage(msg.to_string())
}

fn checked_vm(vm: &str) -> Result<&str, CliError> {
    if config::is_valid_vm_name(vm) && vm != "dom0" {
        Ok(vm)
    } else {
        Err(usage(&format!(
            "invalid VM name {}",
            escape_line(vm.as_bytes(), 40)
        )))
    }
}

/// `policy lint [FILE] | check VM [--] [CMD...] | levels`.
pub fn policy(cfg: &Config, args: &[&str]) -> Result<(), CliError> {
    match args {
        ["lint"] => lint(cfg, None),
        ["lint", file] => lint(cfg, Some(Path::new(file))),
        ["check", vm, rest @ ..] => check(cfg, checked_vm(vm)?, rest),
        ["levels"] => {
            print!("{}", policy::describe_levels());
            Ok(())
        }
        _ => Err(usage(
            "policy: want lint [FILE], check VM [--] [CMD...] or levels",
        )),
    }
}

/// `policy lint`: syntax errors, unknown VMs and unreachable rules are errors (exit 1);
/// a rule for a VM that exists but is not served is a warning.
fn lint(cfg: &Config, file: Option<&Path>) -> Result<(), CliError> {
    let path = file.unwrap_or(&cfg.policy);
    let text = match policy::read_policy_file(path) {
        Ok(Some(t)) => t,
        Ok(None) if file.is_none() => {
            println!(
                "warning: {}: no policy file: every authorised VM is full (the upstream behaviour)",
                path.display()
            );
            return Ok(());
        }
        Ok(None) => return Err(failed(format!("{}: no such file", path.display()))),
        Err(e) => {
            println!("error: {e}");
            return Err(failed("policy lint: 1 error (the daemon denies every job)"));
        }
    };
    let (pol, mut errors): (Policy, Vec<String>) = {
        let (p, errs) = Policy::parse_all(path, &text);
        (p, errs.iter().map(ToString::to_string).collect())
    };
    let mut warnings = Vec::new();
    let real_vms: Option<Vec<String>> = gate::run_tool("qvm-ls", &["--raw-list"])
        .ok()
        .map(|t| t.lines().map(|l| l.trim().to_string()).collect());
    if real_vms.is_none() {
        warnings.push(
            "qvm-ls --raw-list is not available: VM names are checked against QVM_REMOTE_VMS only"
                .to_string(),
        );
    }
    for (line, vm) in pol.vm_names() {
        let served = cfg.vms.iter().any(|v| v == vm);
        let exists = real_vms.as_ref().is_some_and(|l| l.iter().any(|v| v == vm));
        let at = format!("{}:{line}", path.display());
        if !served && exists {
            warnings.push(format!(
                "{at}: VM {vm} is not in QVM_REMOTE_VMS: this rule never applies"
            ));
        } else if !served {
            errors.push(format!("{at}: unknown VM {vm}"));
        }
    }
    for (rule, why) in pol.dead_rules() {
        // `why` names the word and says that it can never match.
        errors.push(format!("{}:{}: {why}", path.display(), rule.line));
    }
    for (rule, by) in pol.shadowed() {
        errors.push(format!(
            "{}:{}: unreachable: `{rule}` is shadowed by line {} (`{by}`)",
            path.display(),
            rule.line,
            by.line
        ));
    }
    for w in &warnings {
        println!("warning: {w}");
    }
    for e in &errors {
        println!("error: {e}");
    }
    if errors.is_empty() {
        println!(
            "policy ok: {}: {} rule(s) after levels are expanded",
            path.display(),
            pol.rules.len()
        );
        Ok(())
    } else {
        Err(failed(format!("policy lint: {} error(s)", errors.len())))
    }
}

/// `policy check VM [--] CMD...`: the daemon's own decision, dev mode and tags
/// included, without running anything. The command words are joined with single
/// spaces as the VM client joins them; with no words the body is read from stdin.
/// Exit 0 allow, 1 deny, 2 ask.
fn check(cfg: &Config, vm: &str, rest: &[&str]) -> Result<(), CliError> {
    let words = match rest {
        ["--", w @ ..] => w,
        w => w,
    };
    let body = if words.is_empty() {
        let mut b = Vec::new();
        io::stdin()
            .lock()
            .take(cfg.max_command as u64 + 1)
            .read_to_end(&mut b)
            .map_err(|e| failed(format!("reading the command from stdin: {e}")))?;
        if b.len() > cfg.max_command {
            return Err(failed("the command is larger than QVM_REMOTE_MAX_COMMAND"));
        }
        b
    } else {
        words.join(" ").into_bytes()
    };
    if body.is_empty() {
        return Err(usage("policy check: no command"));
    }
    if !cfg.vms.iter().any(|v| v == vm) {
        eprintln!("warning: {vm} is not in QVM_REMOTE_VMS: the daemon never runs its jobs");
    }
    let log = AuditLog::memory(Echo::Quiet);
    let v = Gate::new(&cfg.policy, &cfg.run_dir).decide(vm, &body, time::unix_now(), &log);
    match &v.classified {
        Classified::Simple { .. } => {
            let argv = v.classified.argv().unwrap_or_default().join(" ");
            println!("command: argv {}", escape_line(argv.as_bytes(), usize::MAX));
        }
        Classified::Script(why) => println!("command: script ({why})"),
    }
    println!("rule: {}", escape_line(v.rule.as_bytes(), usize::MAX));
    println!("decision: {}", v.action);
    match v.action {
        Action::Allow => Ok(()),
        Action::Deny => Err(CliError::Status {
            code: 1,
            message: "policy check: deny".into(),
        }),
        Action::Ask => Err(CliError::Status {
            code: EXIT_ASK,
            message: "policy check: ask".into(),
        }),
    }
}

/// `pending`: every job waiting for approval, oldest first, with its exact command
/// text (escaped) and stdin.
pub fn pending(cfg: &Config) -> Result<(), CliError> {
    let list = approval::list(&cfg.run_dir).map_err(|e| failed(e.to_string()))?;
    if list.is_empty() {
        println!("no jobs are waiting for approval");
        return Ok(());
    }
    let now = time::unix_now();
    for r in list {
        println!(
            "{} vm={} waited={}s left={}s",
            r.id,
            r.vm,
            now.saturating_sub(r.received),
            r.deadline.saturating_sub(now)
        );
        println!("    command: {}", r.command);
        if r.stdin_len == 0 {
            println!("    stdin: none");
        } else {
            println!("    stdin: {} bytes: {}", r.stdin_len, r.stdin);
        }
        println!("    rule: {}", r.rule);
    }
    Ok(())
}

/// `approve ID` / `deny ID`.
pub fn decide(cfg: &Config, id: &str, verdict: Approval) -> Result<(), CliError> {
    let id = CommandId::parse(id).map_err(|_| usage("invalid command id"))?;
    let rec = approval::decide(&cfg.run_dir, &id, verdict).map_err(|e| failed(e.to_string()))?;
    let word = match verdict {
        Approval::Approve => "approved",
        Approval::Deny => "denied",
    };
    println!("{word} {id} from {}: {}", rec.vm, rec.command);
    let deadline = Instant::now() + APPROVAL_ACK_WAIT;
    while approval::is_pending(&cfg.run_dir, &rec.vm, &id) {
        if Instant::now() >= deadline {
            println!(
                "the daemon has not acted on it yet (is it running?); it will at its next look"
            );
            return Ok(());
        }
        thread::sleep(approval::POLL / 4);
    }
    Ok(())
}

/// `dev-mode on VM --minutes N | off VM | status`.
pub fn dev_mode(cfg: &Config, args: &[&str]) -> Result<(), CliError> {
    let now = time::unix_now();
    match args {
        ["on", vm, "--minutes", n] | ["on", "--minutes", n, vm] => {
            let vm = served_vm(cfg, vm)?;
            let minutes: u64 = n
                .parse()
                .map_err(|_| usage("--minutes: want a whole number"))?;
            let until = devmode::turn_on(&cfg.run_dir, vm, minutes, now).map_err(|e| match e {
                devmode::DevModeError::BadMinutes(_) => usage(&e.to_string()),
                other => failed(other.to_string()),
            })?;
            println!(
                "dev mode on for {vm}: full until {} ({} min left); the policy file is unchanged",
                time::iso8601(until),
                until.saturating_sub(now).div_ceil(60)
            );
            Ok(())
        }
        ["off", vm] => {
            let vm = checked_vm(vm)?;
            let was = devmode::turn_off(&cfg.run_dir, vm).map_err(|e| failed(e.to_string()))?;
            if was {
                println!("dev mode off for {vm}");
            } else {
                println!("dev mode was not on for {vm}");
            }
            Ok(())
        }
        // DESIGN §7 says the elevation ends "on `dev-mode off`": with no VM, for all.
        ["off"] => {
            let mut ended = 0;
            for (vm, _) in devmode::list(&cfg.run_dir, now) {
                if devmode::turn_off(&cfg.run_dir, &vm).map_err(|e| failed(e.to_string()))? {
                    println!("dev mode off for {vm}");
                    ended += 1;
                }
            }
            if ended == 0 {
                println!("dev mode was not on for any VM");
            }
            Ok(())
        }
        ["status"] => {
            let list = devmode::list(&cfg.run_dir, now);
            if list.is_empty() {
                println!("dev mode is off for every VM");
            }
            for (vm, st) in list {
                match st {
                    State::Active(until) => println!(
                        "{vm}: on, full until {} ({} s left)",
                        time::iso8601(until),
                        until.saturating_sub(now)
                    ),
                    State::Expired(at) => {
                        println!("{vm}: expired at {} (grants nothing)", time::iso8601(at))
                    }
                    State::Invalid(why) => println!("{vm}: invalid overlay, grants nothing: {why}"),
                }
            }
            Ok(())
        }
        _ => Err(usage(&format!(
            "dev-mode: want on VM --minutes N ({}-{}), off [VM] or status",
            devmode::MIN_MINUTES,
            devmode::MAX_MINUTES
        ))),
    }
}

fn served_vm<'a>(cfg: &Config, vm: &'a str) -> Result<&'a str, CliError> {
    let vm = checked_vm(vm)?;
    if cfg.vms.iter().any(|v| v == vm) {
        Ok(vm)
    } else {
        Err(failed(format!("{vm} is not in QVM_REMOTE_VMS")))
    }
}

/// `audit verify [FILE...]`: with no FILE, the configured log, checked against the
/// daemon's anchor too; with files, each verified and, given oldest first, each
/// checked to continue the one before.
pub fn audit(cfg: &Config, args: &[&str]) -> Result<(), CliError> {
    let files: Vec<&Path> = match args {
        ["verify"] => Vec::new(),
        ["verify", files @ ..] => files.iter().map(Path::new).collect(),
        _ => return Err(usage("audit: want verify [FILE...]")),
    };
    if files.is_empty() {
        return verify_configured(cfg);
    }
    match audit::verify_files(&files) {
        Ok(all) => {
            for (p, v) in files.iter().zip(&all) {
                println!("{}", summary(p, v));
            }
            if files.len() > 1 {
                println!("ok: the {} files form one chain", files.len());
            }
            Ok(())
        }
        Err((i, e)) => Err(report(files.get(i).copied().unwrap_or(Path::new("?")), &e)),
    }
}

fn verify_configured(cfg: &Config) -> Result<(), CliError> {
    // The anchor is read before the log: the daemon writes the log first, so whatever
    // the anchor names is already in the log we then read.
    let anchor = audit::read_anchor(&cfg.state_dir.join(audit::ANCHOR_FILE));
    let path = cfg.log.as_path();
    let file = std::fs::File::open(path).map_err(|e| failed(format!("{}: {e}", path.display())))?;
    let v = audit::verify_log(io::BufReader::new(file), anchor.as_deref())
        .map_err(|e| report(path, &e))?;
    if let (Some(a), None) = (&anchor, v.found) {
        return Err(report(
            path,
            &VerifyError::MissingEnd {
                lines: v.lines,
                expected: a.clone(),
            },
        ));
    }
    println!("{}", summary(path, &v));
    Ok(())
}

fn summary(path: &Path, v: &audit::Verified) -> String {
    let from = if v.first_prev == audit::GENESIS {
        "from the start".to_string()
    } else {
        format!("continuing {}", v.first_prev)
    };
    format!(
        "ok: {}: {} lines, chain intact {from}, last chain {}",
        path.display(),
        v.lines,
        v.last
    )
}

/// The error for a bad log, naming the file and the first bad line, and quoting it.
fn report(path: &Path, e: &VerifyError) -> CliError {
    let line = match e {
        VerifyError::Broken { line }
        | VerifyError::Malformed { line }
        | VerifyError::TruncatedTail { line } => Some(*line),
        VerifyError::Discontinuity { .. } => Some(1),
        _ => None,
    };
    let quoted = line
        .and_then(|n| nth_line(path, n))
        .map(|t| format!("\n    {}", escape_line(&t, QUOTED_LINE)))
        .unwrap_or_default();
    CliError::Status {
        code: 1,
        message: format!("audit verify: {}: {e}{quoted}", path.display()),
    }
}

fn nth_line(path: &Path, n: usize) -> Option<Vec<u8>> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).ok()?;
    let mut r = io::BufReader::new(f);
    let mut buf = Vec::new();
    for _ in 0..n {
        buf.clear();
        let got = r
            .by_ref()
            .take(audit::MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .ok()?;
        if got == 0 {
            return None;
        }
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Some(buf)
}
