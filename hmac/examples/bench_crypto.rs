//! `bench-crypto`: SHA-256 throughput of the portable and SHA-NI backends, beside
//! `openssl speed` on the same machine, as a markdown table.
//!
//! Run with `cargo run --release -p qvm-remote-hmac --example bench-crypto`.
//!
//! Each Rust cell hashes one buffer of the given size repeatedly (one-shot
//! `sha256`, including padding and finalisation, like `openssl speed -evp`) for about
//! 0.3 s, five times, and reports the median. OpenSSL runs once with its defaults and
//! once with `OPENSSL_ia32cap=":~0x20000000"`, which masks SHA-NI so OpenSSL falls back
//! to its best non-SHA code (AVX2 assembly on current CPUs). MB means 10^6 bytes.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use qvm_remote_hmac::{active_backend, sha256_with, shani_available, Backend};

/// Buffer sizes measured, with their labels.
const SIZES: [(usize, &str); 4] = [
    (64, "64 B"),
    (1024, "1 KiB"),
    (16 * 1024, "16 KiB"),
    (1024 * 1024, "1 MiB"),
];

/// The size the pass/fail targets are judged at.
const TARGET_SIZE: usize = 16 * 1024;

/// Repetitions per cell; the median is reported so one disturbed run does not count.
const REPETITIONS: usize = 5;

/// Wall-clock time each repetition aims for.
const REPETITION_TIME: Duration = Duration::from_millis(300);

/// The environment setting that hides SHA-NI from OpenSSL: bit 29 of the second
/// capability word is the SHA extensions flag.
const OPENSSL_NO_SHANI: (&str, &str) = ("OPENSSL_ia32cap", ":~0x20000000");

/// One row of results, all in MB/s.
struct Row {
    label: &'static str,
    size: usize,
    portable: f64,
    shani: Option<f64>,
    openssl: Option<f64>,
    openssl_no_shani: Option<f64>,
}

fn main() {
    println!("# SHA-256 throughput (MB/s, MB = 10^6 bytes; higher is better)");
    println!();
    println!(
        "SHA-NI available: {}; process default backend: {:?}; median of {REPETITIONS} runs of ~{} ms per Rust cell.",
        shani_available(),
        active_backend(),
        REPETITION_TIME.as_millis()
    );
    let openssl_version = openssl_version();
    match &openssl_version {
        Some(version) => {
            println!("OpenSSL: {version} (`openssl speed -evp sha256 -bytes N -seconds 1`).")
        }
        None => println!("OpenSSL: not found, so the OpenSSL columns are skipped."),
    }
    println!();

    let mut rows = Vec::new();
    for (size, label) in SIZES {
        let portable = measure(Backend::Portable, size);
        let shani = shani_available().then(|| measure(Backend::ShaNi, size));
        let (openssl, openssl_no_shani) = if openssl_version.is_some() {
            (
                openssl_speed(size, None),
                openssl_speed(size, Some(OPENSSL_NO_SHANI)),
            )
        } else {
            (None, None)
        };
        rows.push(Row {
            label,
            size,
            portable,
            shani,
            openssl,
            openssl_no_shani,
        });
    }

    if openssl_version.is_some() {
        println!("| size | portable MB/s | SHA-NI MB/s | openssl MB/s | openssl (no SHA-NI) MB/s | SHA-NI/openssl | portable/openssl-noSHANI |");
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        for row in &rows {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                row.label,
                fmt_rate(Some(row.portable)),
                fmt_rate(row.shani),
                fmt_rate(row.openssl),
                fmt_rate(row.openssl_no_shani),
                fmt_ratio(ratio(row.shani, row.openssl)),
                fmt_ratio(ratio(Some(row.portable), row.openssl_no_shani)),
            );
        }
    } else {
        println!("| size | portable MB/s | SHA-NI MB/s |");
        println!("|---:|---:|---:|");
        for row in &rows {
            println!(
                "| {} | {} | {} |",
                row.label,
                fmt_rate(Some(row.portable)),
                fmt_rate(row.shani),
            );
        }
        println!();
        println!("(`openssl` was not found: the OpenSSL columns and ratios are skipped.)");
    }
    println!();

    let Some(target) = rows.iter().find(|row| row.size == TARGET_SIZE) else {
        return;
    };
    print_target(
        "SHA-NI ≥ 0.9× OpenSSL at 16 KiB",
        ratio(target.shani, target.openssl),
        0.9,
        if target.shani.is_none() {
            "no SHA-NI on this CPU"
        } else {
            "OpenSSL not measured"
        },
    );
    print_target(
        "portable ≥ 0.5× OpenSSL-without-SHA-NI at 16 KiB",
        ratio(Some(target.portable), target.openssl_no_shani),
        0.5,
        "OpenSSL not measured",
    );
}

/// Median throughput in MB/s of one-shot SHA-256 over `size` bytes on `backend`.
fn measure(backend: Backend, size: usize) -> f64 {
    // Varied contents, so nothing about the input is special.
    let data: Vec<u8> = (0..size).map(|i| (i * 131 + 7) as u8).collect();

    // Calibrate: double the iteration count until a run takes a measurable time,
    // then scale it to the target repetition time.
    let mut iterations = 1u64;
    let per_iteration = loop {
        let elapsed = time_iterations(backend, &data, iterations);
        if elapsed >= Duration::from_millis(20) {
            break elapsed.as_secs_f64() / iterations as f64;
        }
        iterations *= 2;
    };
    let iterations = ((REPETITION_TIME.as_secs_f64() / per_iteration) as u64).max(1);

    let mut rates: Vec<f64> = (0..REPETITIONS)
        .map(|_| {
            let elapsed = time_iterations(backend, &data, iterations);
            (size as f64 * iterations as f64) / elapsed.as_secs_f64() / 1e6
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[REPETITIONS / 2]
}

/// Time taken to hash `data` `iterations` times. `black_box` keeps the compiler from
/// hoisting the hash out of the loop or discarding its result.
fn time_iterations(backend: Backend, data: &[u8], iterations: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iterations {
        black_box(sha256_with(black_box(backend), black_box(data)));
    }
    start.elapsed()
}

/// `openssl version`, or `None` when the command is missing or fails.
fn openssl_version() -> Option<String> {
    let output = Command::new("openssl").arg("version").output().ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// OpenSSL's SHA-256 throughput in MB/s at `size` bytes, optionally with one extra
/// environment variable. `None` if it cannot be run or its output is not understood.
fn openssl_speed(size: usize, env: Option<(&str, &str)>) -> Option<f64> {
    let size_arg = size.to_string();
    let mut command = Command::new("openssl");
    command.args([
        "speed", "-evp", "sha256", "-bytes", &size_arg, "-seconds", "1",
    ]);
    if let Some((name, value)) = env {
        command.env(name, value);
    }
    let output = command.output().ok()?;
    if !output.status.success() {
        return None;
    }
    parse_openssl_speed(&String::from_utf8_lossy(&output.stdout)).map(|bytes| bytes / 1e6)
}

/// Bytes per second from the result line of `openssl speed -evp sha256 -bytes N`,
/// which looks like `sha256   1202946.05k`. OpenSSL prints the number in units of
/// 1000 bytes per second with a `k` suffix, or in plain bytes per second without one
/// when the value is small.
fn parse_openssl_speed(stdout: &str) -> Option<f64> {
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with("sha256"))?;
    let last = line.split_whitespace().last()?;
    match last.strip_suffix('k') {
        Some(thousands) => thousands.parse::<f64>().ok().map(|v| v * 1e3),
        None => last.parse::<f64>().ok(),
    }
}

fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

fn fmt_rate(rate: Option<f64>) -> String {
    rate.map_or_else(|| "n/a".to_string(), |r| format!("{r:.1}"))
}

fn fmt_ratio(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}×"))
}

fn print_target(name: &str, ratio: Option<f64>, threshold: f64, why_missing: &str) {
    match ratio {
        Some(r) if r >= threshold => println!("{name}: PASS ({r:.2}×)"),
        Some(r) => println!("{name}: FAIL ({r:.2}×)"),
        None => println!("{name}: not measured ({why_missing})"),
    }
}
