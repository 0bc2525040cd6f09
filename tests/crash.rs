//! Crash safety (DESIGN §4 "at most once"): submit a job with a side effect, SIGKILL the
//! daemon at a random moment (before the job is read, after it is verified, while it
//! runs, before its result is written, before the ACK), restart it, and check that the
//! job ran at most once and has a result (`done` or `interrupted`). `make test` runs a
//! few iterations; `make crash` runs 200 and prints the counts.

mod common;

use common::*;
use std::fs;
use std::process::Command;
use std::time::Duration;

struct Counts {
    done: usize,
    interrupted: usize,
    other: Vec<String>,
    ran_twice: usize,
    ran_but_interrupted: usize,
}

fn crash_iterations(n: usize, seed: u64) -> Counts {
    let mut sim = Sim::new(&["work"]);
    sim.set("QVM_REMOTE_MODE", "stream");
    let mut rng = seed | 1;
    let mut counts = Counts {
        done: 0,
        interrupted: 0,
        other: Vec::new(),
        ran_twice: 0,
        ran_but_interrupted: 0,
    };
    sim.start_daemon();
    for i in 0..n {
        let marker = sim.marker(&format!("crash-{i}"));
        // Jobs of different lengths, so the kill lands in every phase.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let work_ms = rng % 200;
        let kill_after_ms = (rng >> 16) % 400;
        let cmd = format!("echo ran >> {}; sleep 0.{work_ms:03}", marker.display());
        let mut c = Command::new(sim_tools().join("simctl"));
        c.args(["exec", "work", "qvm-remote", "-q", "-t", "60", &cmd])
            .env("QVM_SIM_DIR", &sim.sim_dir);
        let client = std::thread::spawn(move || run_with_stdin(c, b""));
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        sim.kill_daemon();
        sim.start_daemon();
        let out = client.join().unwrap();
        let runs = fs::read_to_string(&marker)
            .unwrap_or_default()
            .lines()
            .count();
        if runs > 1 {
            counts.ran_twice += 1;
        }
        match code(&out) {
            0 => {
                counts.done += 1;
                assert_eq!(runs, 1, "iteration {i}: done but ran {runs} times");
            }
            125 if stderr(&out).contains("interrupted") => {
                counts.interrupted += 1;
                if runs == 1 {
                    counts.ran_but_interrupted += 1;
                }
            }
            c => counts
                .other
                .push(format!("iteration {i}: exit {c}: {}", stderr(&out))),
        }
    }
    sim.stop_daemon();
    counts
}

fn check(c: &Counts) {
    assert_eq!(c.ran_twice, 0, "a job ran twice");
    assert!(
        c.other.is_empty(),
        "jobs without done/interrupted: {:?}",
        c.other
    );
}

#[test]
fn short_crash_campaign() {
    let c = crash_iterations(6, 0x1234_5678);
    check(&c);
}

#[test]
#[ignore = "200 iterations: run with make crash"]
fn crash_campaign() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let c = crash_iterations(200, seed);
    println!();
    println!("| iterations | done | interrupted (ran once) | interrupted (never ran) | ran twice | without result |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| 200 | {} | {} | {} | {} | {} |",
        c.done,
        c.ran_but_interrupted,
        c.interrupted - c.ran_but_interrupted,
        c.ran_twice,
        c.other.len()
    );
    println!("seed {seed}");
    check(&c);
}
