//! Dev mode (shared/DESIGN.md §7): a time-limited `full` overlay for one VM, kept in
//! the run dir as `<run_dir>/devmode/<vm>` holding `expires=<unix seconds>`.
//!
//! Upstream's dev mode wrote `full` into the policy file, where it outlived its expiry
//! and survived reboots. Here the policy file is never touched: the overlay carries an
//! absolute expiry that the daemon compares with the clock at every decision, `off`
//! removes it, and the run dir is a tmpfs that a reboot empties. An overlay that claims
//! to last longer than [`MAX_MINUTES`] from now (written by hand, or left behind by a
//! clock set back) is refused, so no file can grant more than the longest elevation the
//! command allows.
//!
//! Tests make a short-lived overlay by writing the file themselves with an expiry a few
//! seconds ahead: the format above is the whole interface, so no test hook is needed.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::atomic::{self, Durability};
use crate::config::is_valid_vm_name;
use crate::keys;

/// The overlay directory under the run dir.
pub const DEVMODE_DIR: &str = "devmode";
/// Shortest elevation `dev-mode on` grants.
pub const MIN_MINUTES: u64 = 1;
/// Longest elevation `dev-mode on` grants, and the longest any overlay file is honoured.
pub const MAX_MINUTES: u64 = 120;
/// Largest overlay file read.
const MAX_OVERLAY_FILE: u64 = 64;
/// Most overlay files listed.
const MAX_OVERLAYS: usize = 1024;

/// Why an overlay could not be changed or read.
#[derive(Debug)]
pub enum DevModeError {
    /// Not a VM name Qubes accepts.
    BadVm(String),
    /// `--minutes` outside [`MIN_MINUTES`]..=[`MAX_MINUTES`].
    BadMinutes(u64),
    /// A file or directory could not be used.
    Io {
        /// Which.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The overlay directory could be changed by others.
    Untrusted {
        /// Which.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl fmt::Display for DevModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevModeError::BadVm(v) => write!(f, "invalid VM name {v:?}"),
            DevModeError::BadMinutes(n) => {
                write!(f, "--minutes {n}: want {MIN_MINUTES} to {MAX_MINUTES}")
            }
            DevModeError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            DevModeError::Untrusted { path, why } => {
                write!(f, "{}: refused: {why}", path.display())
            }
        }
    }
}

impl std::error::Error for DevModeError {}

/// The state of one overlay file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Elevated until this unix time.
    Active(u64),
    /// Its expiry has passed; it grants nothing.
    Expired(u64),
    /// It is not a valid overlay (bad content or mode, or too long an expiry); it grants
    /// nothing.
    Invalid(String),
}

/// `<run_dir>/devmode`.
pub fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join(DEVMODE_DIR)
}

fn overlay_path(run_dir: &Path, vm: &str) -> Result<PathBuf, DevModeError> {
    if !is_valid_vm_name(vm) || vm == "dom0" {
        return Err(DevModeError::BadVm(crate::proto::escape_line(
            vm.as_bytes(),
            40,
        )));
    }
    Ok(dir(run_dir).join(vm))
}

/// The expiry of `vm`'s overlay if it grants `full` at `now`; `None` otherwise (no
/// overlay, expired, or not trustworthy).
pub fn active(run_dir: &Path, vm: &str, now: u64) -> Option<u64> {
    match state(run_dir, vm, now) {
        Some(State::Active(until)) => Some(until),
        _ => None,
    }
}

/// The state of `vm`'s overlay at `now`, `None` if there is none.
pub fn state(run_dir: &Path, vm: &str, now: u64) -> Option<State> {
    let path = overlay_path(run_dir, vm).ok()?;
    if let Err(e) = check_dir(&dir(run_dir)) {
        return Some(State::Invalid(e.to_string()));
    }
    match read_expiry(&path) {
        Ok(None) => None,
        Ok(Some(expires)) => Some(judge(expires, now)),
        Err(why) => Some(State::Invalid(why)),
    }
}

/// What an expiry means at `now`.
pub fn judge(expires: u64, now: u64) -> State {
    if expires <= now {
        State::Expired(expires)
    } else if expires > now.saturating_add(MAX_MINUTES * 60) {
        State::Invalid(format!(
            "expiry {expires} is more than {MAX_MINUTES} minutes ahead"
        ))
    } else {
        State::Active(expires)
    }
}

/// Turns dev mode on for `vm` for `minutes` from `now`. A second `on` extends to the
/// later of the two expiries and never adds them up. Returns the expiry in force.
pub fn turn_on(run_dir: &Path, vm: &str, minutes: u64, now: u64) -> Result<u64, DevModeError> {
    if !(MIN_MINUTES..=MAX_MINUTES).contains(&minutes) {
        return Err(DevModeError::BadMinutes(minutes));
    }
    let path = overlay_path(run_dir, vm)?;
    let d = dir(run_dir);
    ensure_dir(&d)?;
    let wanted = now.saturating_add(minutes * 60);
    let expires = match active(run_dir, vm, now) {
        Some(current) => current.max(wanted),
        None => wanted,
    };
    atomic::replace(
        &path,
        format!("expires={expires}\n").as_bytes(),
        Durability::Buffered,
    )
    .map_err(|source| DevModeError::Io { path, source })?;
    Ok(expires)
}

/// Turns dev mode off for `vm`; `Ok(false)` if it was not on.
pub fn turn_off(run_dir: &Path, vm: &str) -> Result<bool, DevModeError> {
    let path = overlay_path(run_dir, vm)?;
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(DevModeError::Io { path, source }),
    }
}

/// Every overlay file and its state at `now`, sorted by VM.
pub fn list(run_dir: &Path, now: u64) -> Vec<(String, State)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir(run_dir)) else {
        return out;
    };
    for e in entries.take(MAX_OVERLAYS).flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_valid_vm_name(&name) {
            continue;
        }
        if let Some(s) = state(run_dir, &name, now) {
            out.push((name, s));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn ensure_dir(d: &Path) -> Result<(), DevModeError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)
        .map_err(|source| DevModeError::Io {
            path: d.to_path_buf(),
            source,
        })?;
    check_dir(d)
}

/// The overlay dir must be a directory only root or we can change.
fn check_dir(d: &Path) -> Result<(), DevModeError> {
    let meta = match fs::symlink_metadata(d) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(DevModeError::Io {
                path: d.to_path_buf(),
                source,
            })
        }
    };
    if !meta.is_dir() {
        return Err(DevModeError::Untrusted {
            path: d.to_path_buf(),
            why: "not a directory".into(),
        });
    }
    keys::check_not_writable_by_others(d, &meta).map_err(|e| DevModeError::Untrusted {
        path: d.to_path_buf(),
        why: e.to_string(),
    })
}

/// `Ok(None)` when there is no overlay; `Err` says why a present file is not valid.
fn read_expiry(path: &Path) -> Result<Option<u64>, String> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    keys::check_not_writable_by_others(path, &meta).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(MAX_OVERLAY_FILE)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    text.strip_prefix("expires=")
        .and_then(|v| v.strip_suffix('\n'))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| "not `expires=<unix seconds>`".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn run_dir() -> PathBuf {
        crate::testutil::temp_dir("devmode")
    }

    #[test]
    fn on_extends_never_stacks_and_expiry_is_absolute() {
        let d = run_dir();
        let now = 1_000_000;
        assert_eq!(turn_on(&d, "work", 10, now).unwrap(), now + 600);
        // A shorter second `on` keeps the later expiry; a longer one extends to it.
        assert_eq!(turn_on(&d, "work", 5, now + 60).unwrap(), now + 600);
        assert_eq!(turn_on(&d, "work", 30, now + 60).unwrap(), now + 60 + 1800);
        assert_eq!(active(&d, "work", now + 61), Some(now + 1860));
        assert_eq!(active(&d, "work", now + 1860), None, "expiry is exclusive");
        assert_eq!(
            state(&d, "work", now + 2000),
            Some(State::Expired(now + 1860))
        );
        // After expiry, `on` starts afresh instead of extending a dead overlay.
        assert_eq!(turn_on(&d, "work", 1, now + 5000).unwrap(), now + 5060);
        assert_eq!(active(&d, "dev", now), None);
        assert!(turn_off(&d, "work").unwrap());
        assert!(!turn_off(&d, "work").unwrap());
        assert_eq!(active(&d, "work", now + 5001), None);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn limits_and_bad_files_grant_nothing() {
        let d = run_dir();
        let now = 2_000_000;
        for bad in [0, MAX_MINUTES + 1] {
            assert!(matches!(
                turn_on(&d, "work", bad, now),
                Err(DevModeError::BadMinutes(_))
            ));
        }
        turn_on(&d, "work", MIN_MINUTES, now).unwrap();
        turn_on(&d, "dev", MAX_MINUTES, now).unwrap();
        assert!(matches!(
            turn_on(&d, "../x", 5, now),
            Err(DevModeError::BadVm(_))
        ));
        // Hand-written overlays: too far ahead, garbage, or writable by others.
        let write = |vm: &str, text: &str, mode: u32| {
            let p = dir(&d).join(vm);
            fs::write(&p, text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        };
        let far = now + MAX_MINUTES * 60 + 1;
        write("far", &format!("expires={far}\n"), 0o600);
        write("junk", "expires=soon\n", 0o600);
        write("open", &format!("expires={}\n", now + 10), 0o666);
        write("ok", &format!("expires={}\n", now + 2), 0o600);
        for vm in ["far", "junk", "open"] {
            assert!(
                matches!(state(&d, vm, now), Some(State::Invalid(_))),
                "{vm}"
            );
            assert_eq!(active(&d, vm, now), None, "{vm}");
        }
        assert_eq!(active(&d, "ok", now + 1), Some(now + 2));
        assert_eq!(active(&d, "ok", now + 2), None);
        let names: Vec<String> = list(&d, now).into_iter().map(|(v, _)| v).collect();
        assert_eq!(names, ["dev", "far", "junk", "ok", "open", "work"]);
        fs::remove_dir_all(d).unwrap();
    }
}
