//! The backend is chosen once per process, and `QVM_REMOTE_SHA256=portable` forces the
//! portable one. Because the choice is cached, each setting needs its own process:
//! the parent test re-runs this test binary as a child with a chosen environment and
//! an exact test filter, and the child checks the backend it got.

use std::process::Command;

use qvm_remote_hmac::{active_backend, sha256, shani_available, Backend, Sha256, BACKEND_ENV};

/// Name of the test the parent runs in the child process.
const CHILD_TEST: &str = "active_backend_matches_environment";

/// Line the child prints so the parent can tell that the check really ran there.
const MARKER: &str = "qvm-remote-hmac child backend:";

/// Runs in every process (the normal run and each child): the active backend must be
/// what the environment of this process asks for.
#[test]
fn active_backend_matches_environment() {
    let requested = std::env::var(BACKEND_ENV).ok();
    let expected = match requested.as_deref() {
        Some(value) if value.eq_ignore_ascii_case("portable") => Backend::Portable,
        _ if shani_available() => Backend::ShaNi,
        _ => Backend::Portable,
    };
    let active = active_backend();
    println!("{MARKER} {active:?} ({BACKEND_ENV}={requested:?})");
    assert_eq!(active, expected, "{BACKEND_ENV}={requested:?}");
    assert_eq!(
        Sha256::new().backend(),
        expected,
        "Sha256::new follows the choice"
    );
    // Whatever the backend, the answer is the same.
    assert_eq!(
        qvm_remote_hmac::hex::encode(&sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

/// Runs [`CHILD_TEST`] alone in a fresh copy of this test binary with `env` set (or
/// the variable removed) and returns the backend the child reported.
fn child_backend(env: Option<&str>) -> String {
    let exe = std::env::current_exe().expect("path of the running test binary");
    let mut command = Command::new(exe);
    command.args([CHILD_TEST, "--exact", "--nocapture", "--test-threads", "1"]);
    match env {
        Some(value) => command.env(BACKEND_ENV, value),
        None => command.env_remove(BACKEND_ENV),
    };
    let output = command.output().expect("child test process runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "child with {BACKEND_ENV}={env:?} failed:\n{stdout}\n{stderr}"
    );
    // A filter that matched nothing would also "succeed"; insist the test ran.
    assert!(
        stdout.contains("1 passed"),
        "child did not run {CHILD_TEST}:\n{stdout}"
    );
    // With --nocapture the harness's "test ... " prefix shares the marker's line.
    let (_, reported) = stdout
        .split_once(MARKER)
        .unwrap_or_else(|| panic!("no marker in child output:\n{stdout}"));
    reported
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn env_override_forces_portable_in_a_fresh_process() {
    assert_eq!(child_backend(Some("portable")), "Portable");
    assert_eq!(child_backend(Some("PORTABLE")), "Portable");
}

#[test]
fn without_override_a_fresh_process_uses_sha_ni_when_available() {
    let expected = if shani_available() {
        "ShaNi"
    } else {
        "Portable"
    };
    assert_eq!(child_backend(None), expected);
    // Unknown values are ignored rather than half-understood.
    assert_eq!(child_backend(Some("bogus")), expected);
}

#[test]
fn sha_ni_is_detected_on_cpus_that_report_it() {
    // On Linux the kernel lists the SHA extensions as `sha_ni` in /proc/cpuinfo; when
    // it does, detection must agree, or the fast path would silently never run.
    let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
        return;
    };
    let flags_have_sha_ni = cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| line.split_whitespace().any(|flag| flag == "sha_ni"));
    if cfg!(target_arch = "x86_64") && flags_have_sha_ni {
        assert!(shani_available(), "/proc/cpuinfo lists sha_ni");
        if std::env::var(BACKEND_ENV).is_err() {
            assert_eq!(active_backend(), Backend::ShaNi);
        }
    }
    // Requesting SHA-NI must always be safe: on a CPU without it, it falls back.
    let hasher = Sha256::with_backend(Backend::ShaNi);
    let expected = if shani_available() {
        Backend::ShaNi
    } else {
        Backend::Portable
    };
    assert_eq!(hasher.backend(), expected);
}
