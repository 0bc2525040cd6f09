//! The policy gate: the one place that decides a job (shared/DESIGN.md §7), for the
//! daemon and for `policy check` alike, so the dry evaluation is the real one.
//!
//! Order of a decision:
//! 1. The body is classified: a simple command (its program resolved in the job's fixed
//!    PATH, [`exec::DEFAULT_PATH`]) or `@script`.
//! 2. The policy file is stat'ed and re-read if its device, inode, size or times
//!    changed, so an edit takes effect for the next job.
//! 3. A policy that cannot be read or parsed denies everything — dev mode included,
//!    since a broken file is a fault the administrator must see, not an elevation.
//! 4. An active dev-mode overlay for the VM allows everything (`full`).
//! 5. No policy file: every authorised VM is `full` (the upstream behaviour).
//! 6. Otherwise the rules decide: first match wins, no match denies. `@tag:T` rules ask
//!    `qvm-tags VM list` (argv, no shell, found through the daemon's own PATH), cached
//!    for [`TAG_CACHE_TTL`].

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::devmode;
use crate::audit::AuditLog;
use crate::exec;
use crate::policy::{self, Action, Classified, Loaded, Stamp};
use crate::time;

/// How long a VM's tags are trusted before `qvm-tags` is asked again.
pub const TAG_CACHE_TTL: Duration = Duration::from_secs(5);
/// How long `qvm-tags` may take before the lookup fails (and the job is denied).
pub const TAG_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of `qvm-tags` output read.
pub const MAX_TAG_OUTPUT: u64 = 64 * 1024;
/// The program asked for a VM's tags.
pub const QVM_TAGS: &str = "qvm-tags";
/// How often a running `qvm-tags` is checked for its end.
const TAG_POLL: Duration = Duration::from_millis(5);

/// A decision with everything the daemon needs to act on it and log it.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// What to do.
    pub action: Action,
    /// The rule, or why no rule decided.
    pub rule: String,
    /// How the body runs if allowed.
    pub classified: Classified,
}

struct PolicyState {
    /// The stamp of the version loaded; `None` before the first load and after a stat
    /// error (so the next decision tries again).
    stamp: Option<Option<Stamp>>,
    loaded: Loaded,
    /// What was last logged about the file, so each state is logged once.
    logged: String,
}

/// The daemon's view of the policy file, the dev-mode overlays and VM tags.
pub struct Gate {
    policy_path: PathBuf,
    run_dir: PathBuf,
    state: Mutex<PolicyState>,
    tags: Mutex<HashMap<String, (Instant, Vec<String>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Gate {
    /// A gate over the policy at `policy_path` and the overlays in `run_dir`. Nothing
    /// is read until the first decision.
    pub fn new(policy_path: &Path, run_dir: &Path) -> Gate {
        Gate {
            policy_path: policy_path.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
            state: Mutex::new(PolicyState {
                stamp: None,
                loaded: Loaded::Missing,
                logged: String::new(),
            }),
            tags: Mutex::new(HashMap::new()),
        }
    }

    /// The policy in force, re-read if the file changed. A change is logged once (a
    /// broken file with the reason), so the log says which policy decided what.
    pub fn current(&self, log: &AuditLog) -> Loaded {
        let now = policy::stamp(&self.policy_path);
        let mut st = lock(&self.state);
        let fresh = match &now {
            Ok(s) => st.stamp != Some(*s),
            // A stat error (not "missing") is reported by load() as a broken policy.
            Err(_) => true,
        };
        if fresh {
            st.loaded = policy::load(&self.policy_path);
            st.stamp = now.as_ref().ok().copied();
            let key = match &st.loaded {
                Loaded::Broken(e) => format!("broken {e}"),
                _ => format!("{:?}", st.stamp),
            };
            if key != st.logged {
                log_loaded(log, &self.policy_path, &st.loaded);
                st.logged = key;
            }
        }
        st.loaded.clone()
    }

    /// Decides a job of `vm` with `body` at unix time `now`.
    pub fn decide(&self, vm: &str, body: &[u8], now: u64, log: &AuditLog) -> Verdict {
        let classified = policy::classify(body, &find_program);
        let verdict = |action, rule: String| Verdict {
            action,
            rule,
            classified: classified.clone(),
        };
        let loaded = self.current(log);
        if let Loaded::Broken(e) = &loaded {
            return verdict(Action::Deny, format!("policy unusable, denying all: {e}"));
        }
        if let Some(until) = devmode::active(&self.run_dir, vm, now) {
            return verdict(
                Action::Allow,
                format!("dev mode (full) until {}", time::iso8601(until)),
            );
        }
        match loaded {
            Loaded::Ready(p) => {
                let d = p.decide(vm, &classified.command(), &mut || self.tags_of(vm));
                verdict(d.action, d.rule)
            }
            _ => verdict(
                Action::Allow,
                format!(
                    "no policy file {}: every authorised VM is full",
                    self.policy_path.display()
                ),
            ),
        }
    }

    fn tags_of(&self, vm: &str) -> Result<Vec<String>, String> {
        if let Some((at, tags)) = lock(&self.tags).get(vm) {
            if at.elapsed() < TAG_CACHE_TTL {
                return Ok(tags.clone());
            }
        }
        // Failures are not cached: the next job asks again.
        let tags = vm_tags(vm)?;
        lock(&self.tags).insert(vm.to_string(), (Instant::now(), tags.clone()));
        Ok(tags)
    }
}

fn log_loaded(log: &AuditLog, path: &Path, loaded: &Loaded) {
    let p = path.display().to_string();
    match loaded {
        Loaded::Missing => log.event(
            "POLICY",
            &[
                ("state", "missing"),
                ("path", &p),
                ("effect", "every authorised VM is full"),
            ],
        ),
        Loaded::Ready(pol) => log.event(
            "POLICY",
            &[
                ("state", "loaded"),
                ("path", &p),
                ("rules", &pol.rules.len().to_string()),
            ],
        ),
        Loaded::Broken(e) => log.event(
            "POLICY",
            &[
                ("state", "broken"),
                ("path", &p),
                ("effect", "every job is denied"),
                ("error", &e.to_string()),
            ],
        ),
    }
}

/// Resolves a program word as bash would in the job's fixed PATH: a word with no `/`
/// is looked up in each [`exec::DEFAULT_PATH`] directory in turn; an absolute path is
/// taken as is. Either way it must be a regular file with an execute bit.
pub fn find_program(word: &str) -> Option<PathBuf> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if word.starts_with('/') {
        let p = PathBuf::from(word);
        return executable(&p).then_some(p);
    }
    if word.is_empty() || word.contains('/') || word == "." || word == ".." {
        return None;
    }
    exec::DEFAULT_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(word))
        .find(|p| executable(p))
}

/// The tags of `vm` from `qvm-tags VM list` (the VM name validated first); lines that
/// are not tag names are ignored.
pub fn vm_tags(vm: &str) -> Result<Vec<String>, String> {
    if !crate::config::is_valid_vm_name(vm) {
        return Err("invalid VM name".into());
    }
    let text = run_tool(QVM_TAGS, &[vm, "list"])?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|t| policy::is_valid_tag(t))
        .map(str::to_string)
        .collect())
}

/// Runs a dom0 tool (found through our own PATH) with an argv, no shell, stdin from
/// /dev/null, stderr dropped; its output is capped at [`MAX_TAG_OUTPUT`] and its run at
/// [`TAG_LOOKUP_TIMEOUT`]. A non-zero exit is an error.
pub fn run_tool(program: &str, args: &[&str]) -> Result<String, String> {
    let mut child = Process::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let reader = child.stdout.take().map(|out| {
        thread::spawn(move || {
            let mut text = Vec::new();
            let _ = out.take(MAX_TAG_OUTPUT).read_to_end(&mut text);
            text
        })
    });
    let deadline = Instant::now() + TAG_LOOKUP_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => thread::sleep(TAG_POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} timed out"));
            }
            Err(e) => return Err(format!("{program}: {e}")),
        }
    };
    // A process the tool left behind could hold the pipe open; its output is not
    // waited for past the deadline (the reader thread then ends with that process).
    while reader.as_ref().is_some_and(|r| !r.is_finished()) && Instant::now() < deadline {
        thread::sleep(TAG_POLL);
    }
    let text = reader
        .filter(|r| r.is_finished())
        .and_then(|r| r.join().ok())
        .unwrap_or_default();
    if !status.success() {
        return Err(format!("{program} {}: {status}", args.join(" ")));
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_in_the_fixed_path_only() {
        let sh = find_program("sh").unwrap();
        assert!(sh.is_absolute());
        assert!(exec::DEFAULT_PATH
            .split(':')
            .any(|d| sh.parent() == Some(Path::new(d))));
        assert_eq!(find_program("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        for bad in [
            "",
            ".",
            "..",
            "bin/sh",
            "./sh",
            "no-such-program-xyz",
            "/etc/passwd",
            "/tmp",
        ] {
            assert_eq!(find_program(bad), None, "{bad}");
        }
    }
}
