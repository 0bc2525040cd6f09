//! Tab 7, This Device: dom0's host name, kernel, OS, uptime and memory (from /proc and
//! /etc/os-release), Xen (`xl info`), and the running VMs with their memory.

use std::fs;
use std::io::Read;

use super::super::api::{run_any, Access, Answer, ApiError, Call, Endpoint, Method, Reply};
use super::super::Ctx;
use super::qubes;
use crate::json::{Array, Object};

/// Largest /proc or /etc file read here.
const MAX_SMALL_FILE: u64 = 64 * 1024;

/// This file's endpoints.
pub const ENDPOINTS: &[Endpoint] = &[Endpoint {
    method: Method::Get,
    path: "/api/device",
    tag: "device",
    summary: "Host, kernel, OS, uptime, memory, Xen (xl info) and the running VMs' memory",
    fields: &[],
    access: Access::Session,
    runs_command: false,
    answer: Answer::Json,
    handler: device,
}];

fn small_file(path: &str) -> String {
    let mut s = String::new();
    if let Ok(f) = fs::File::open(path) {
        let _ = f.take(MAX_SMALL_FILE).read_to_string(&mut s);
    }
    s
}

fn meminfo(key: &str, text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn device(_: &Ctx, _: &Call) -> Result<Reply, ApiError> {
    let mem = small_file("/proc/meminfo");
    let uptime: f64 = small_file("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let os = small_file("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    let mut xl = Array::new();
    let (xl_ok, xl_error) = match run_any(&["xl", "info"]) {
        Ok(out) if out.success() => {
            for line in out.stdout_text().lines() {
                if let Some((k, v)) = line.split_once(':') {
                    xl = xl.object(Object::new().str("key", k.trim()).str("value", v.trim()));
                }
            }
            (true, String::new())
        }
        Ok(out) => (
            false,
            format!("xl info: {} {}", out.describe(), out.stderr_text().trim()),
        ),
        Err(e) => (false, e.message),
    };
    let mut running = Array::new();
    let mut vm_error = String::new();
    match qubes::qvm_ls(
        &["NAME", "CLASS", "STATE", "MEMORY", "MAXMEM", "VCPUS"],
        &["--running"],
    ) {
        Ok(rows) => {
            for r in rows {
                let get = |i: usize| r.get(i).map_or("", String::as_str);
                running = running.object(
                    Object::new()
                        .str("name", get(0))
                        .str("class", get(1))
                        .str("state", get(2))
                        .str("memory", get(3))
                        .str("maxmem", get(4))
                        .str("vcpus", get(5)),
                );
            }
        }
        Err(e) => vm_error = e.message,
    }
    Reply::ok(
        Object::new()
            .str("hostname", small_file("/proc/sys/kernel/hostname").trim())
            .str("kernel", small_file("/proc/sys/kernel/osrelease").trim())
            .str("os", &os)
            .uint("uptime_s", uptime as u64)
            .str("loadavg", small_file("/proc/loadavg").trim())
            .uint("mem_total_kb", meminfo("MemTotal", &mem))
            .uint("mem_available_kb", meminfo("MemAvailable", &mem))
            .bool("xl_ok", xl_ok)
            .str("xl_error", &xl_error)
            .array("xl", xl)
            .array("running", running)
            .str("vm_error", &vm_error)
            .finish(),
    )
}
