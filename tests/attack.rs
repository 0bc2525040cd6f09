//! The hostile-VM campaign: each behaviour of `tests/sim/hostile_agent.rs` runs against
//! a daemon that also serves a well-behaved VM. `make test` runs a short form that
//! asserts what is not a timing (no unauthorised execution, memory and threads bounded,
//! no log storm); `make attack` runs it longer and prints the table, with the good VM's
//! `echo ok` p99 during each attack beside its quiet value.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Daemon memory ceiling under attack (issue: ≤ 32 MiB).
const MAX_RSS_MIB: f64 = 32.0;
/// Thread ceiling: per VM a session, a reader and a writer, the worker pool, the main
/// thread, and per running job up to three pipe threads.
const MAX_THREADS: u64 = 2 * 3 + 8 + 1 + 8 * 3 + 4;

/// (behaviour, how many of its side effects are legitimate)
const BEHAVIOURS: &[(&str, usize)] = &[
    ("oversize", 0),
    ("no-newline", 0),
    ("endless", 0),
    ("slow", 0),
    ("garbage", 0),
    ("bad-ids", 0),
    ("flood", 0),
    ("duplicate", 1),
    ("stale", 0),
    ("fake-ack", 0),
    ("reconnect", 0),
    ("forged", 0),
];

fn hostile_binary() -> PathBuf {
    // Examples are built next to the test binary's deps directory.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples/hostile-agent")
}

struct Outcome {
    name: String,
    unauthorised: usize,
    peak_rss_mib: f64,
    max_threads: u64,
    quiet_p99_ms: f64,
    attack_p99_ms: f64,
    refusal_lines: usize,
    sessions: usize,
    good_ok: bool,
}

fn status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn p99(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * 0.99).round() as usize]
}

fn write_owned(path: &std::path::Path, text: &str, like: &std::path::Path) {
    fs::write(path, text).unwrap();
    let meta = fs::metadata(like).unwrap();
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid())).unwrap();
}

fn attack(name: &str, allowed: usize, attack_for: Duration, quiet_runs: usize) -> Outcome {
    let mut sim = Sim::new(&["good", "evil"]);
    sim.set("QVM_REMOTE_MODE", "stream");
    let agent = sim.sim_dir.join("bin/hostile-agent");
    fs::copy(hostile_binary(), &agent).unwrap();
    fs::set_permissions(&agent, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        sim.sim_dir.join("vms/evil/agent"),
        format!("{}\n", agent.display()),
    )
    .unwrap();
    let home = sim.vm_home("evil");
    let marker = sim.marker(&format!("effect-{name}"));
    let mode_file = home.join(".hostile-mode");
    write_owned(&mode_file, &format!("quiet\n{}\n", marker.display()), &home);
    sim.start_daemon();
    let pid = sim.daemon_pid().unwrap();

    let mut quiet = Vec::new();
    for _ in 0..quiet_runs {
        let t = Instant::now();
        let out = sim.client("good", &["echo", "ok"]);
        assert_eq!(stdout(&out), "ok\n", "{}", stderr(&out));
        quiet.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let spawns_before = sim.spawns("evil");
    // Switch the evil VM to its behaviour: end the quiet session; dom0 reconnects.
    write_owned(
        &mode_file,
        &format!("{name}\n{}\n", marker.display()),
        &home,
    );
    for p in processes_matching("hostile-agent") {
        let env = fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
        if String::from_utf8_lossy(&env).contains(&sim.sim_dir.display().to_string()) {
            let _ = Command::new("kill").arg(p.to_string()).status();
        }
    }
    let start = Instant::now();
    let mut during = Vec::new();
    let mut good_ok = true;
    let mut peak_threads = 0;
    while start.elapsed() < attack_for {
        let t = Instant::now();
        let out = sim.client("good", &["echo", "ok"]);
        good_ok &= stdout(&out) == "ok\n";
        during.push(t.elapsed().as_secs_f64() * 1000.0);
        peak_threads = peak_threads.max(status_kib(pid, "Threads:"));
    }
    let peak_rss = status_kib(pid, "VmHWM:") as f64 / 1024.0;
    let sessions = sim.spawns("evil") - spawns_before;
    sim.stop_daemon();
    let effects = fs::read_to_string(&marker)
        .unwrap_or_default()
        .lines()
        .count();
    let refusal_lines = sim
        .log_text()
        .lines()
        .filter(|l| l.contains("vm=evil"))
        .filter(|l| {
            [
                " AUTH-FAIL ",
                " REJECT ",
                " REPLAY ",
                " PROTO ",
                " DOWN ",
                " CANCEL ",
            ]
            .iter()
            .any(|c| l.contains(c))
        })
        .count();
    Outcome {
        name: name.to_string(),
        unauthorised: effects.saturating_sub(allowed),
        peak_rss_mib: peak_rss,
        max_threads: peak_threads,
        quiet_p99_ms: p99(quiet),
        attack_p99_ms: p99(during),
        refusal_lines,
        sessions,
        good_ok,
    }
}

fn check(o: &Outcome) {
    assert_eq!(o.unauthorised, 0, "{}: unauthorised executions", o.name);
    assert!(o.good_ok, "{}: the good VM got a wrong answer", o.name);
    assert!(
        o.peak_rss_mib <= MAX_RSS_MIB,
        "{}: daemon peak RSS {:.1} MiB",
        o.name,
        o.peak_rss_mib
    );
    assert!(
        o.max_threads <= MAX_THREADS,
        "{}: {} daemon threads",
        o.name,
        o.max_threads
    );
    // Each refusal kind is logged once per session, plus a repeat summary when the
    // session ends: a handful of lines per session, never one per bad frame.
    assert!(
        o.refusal_lines <= 6 * (o.sessions + 1),
        "{}: {} refusal lines over {} sessions",
        o.name,
        o.refusal_lines,
        o.sessions
    );
}

#[test]
fn short_attack_campaign() {
    for (name, allowed) in BEHAVIOURS {
        let o = attack(name, *allowed, Duration::from_millis(1500), 3);
        check(&o);
    }
}

#[test]
#[ignore = "the full campaign: run with make attack"]
fn attack_campaign() {
    let mut rows = Vec::new();
    for (name, allowed) in BEHAVIOURS {
        let o = attack(name, *allowed, Duration::from_secs(10), 30);
        rows.push(o);
    }
    println!();
    println!(
        "| behaviour | unauthorised runs | daemon peak RSS (MiB) | daemon threads | good p99 quiet (ms) | good p99 under attack (ms) | ratio (≤ 2) | refusal log lines / sessions |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for o in &rows {
        let ratio = o.attack_p99_ms / o.quiet_p99_ms;
        println!(
            "| {} | {} | {:.1} | {} | {:.1} | {:.1} | {:.2} {} | {} / {} |",
            o.name,
            o.unauthorised,
            o.peak_rss_mib,
            o.max_threads,
            o.quiet_p99_ms,
            o.attack_p99_ms,
            ratio,
            if ratio <= 2.0 { "PASS" } else { "FAIL" },
            o.refusal_lines,
            o.sessions
        );
    }
    println!();
    for o in &rows {
        check(o);
    }
}
