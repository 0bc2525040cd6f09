//! Tab 2, Logs: the audit log with filters and a live tail, and the journal of our
//! systemd units.
//!
//! The audit log is read from its end, at most [`TAIL_READ`] bytes, and each line is
//! split into time, category and `key=value` fields the way `audit.rs` writes them.
//! Lines are sent as they are in the file: already escaped, printable ASCII.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::super::api::{
    opt, run_any, Access, Answer, ApiError, Call, Endpoint, Kind, Method, Reply,
};
use super::super::{http, tasks, Ctx};
use crate::json::{Array, Object};

/// Most bytes read from the end of the log for one listing.
pub const TAIL_READ: u64 = 4 * 1024 * 1024;
/// Most lines in one listing.
pub const MAX_LINES: u64 = 2000;
/// Most bytes sent per live-tail step.
pub const TAIL_STEP: u64 = 256 * 1024;
/// How often the live tail looks at the file.
pub const TAIL_POLL: Duration = Duration::from_millis(400);
/// Most journal lines.
pub const MAX_JOURNAL_LINES: u64 = 5000;
/// The systemd units the journal view may show, by the name the page uses.
pub const UNITS: &[(&str, &str)] = &[
    ("daemon", "qvm-remote-dom0.service"),
    ("panel", "qvm-remote-panel.service"),
];

/// This file's endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::Get,
        path: "/api/logs",
        tag: "logs",
        summary: "The end of the audit log, filtered; newest last",
        fields: &[
            opt(
                "vm",
                Kind::Line(64),
                "only lines whose vm field is this",
                "\"work\"",
            ),
            opt(
                "category",
                Kind::Line(32),
                "only this category (EXEC, DONE, PANEL, …)",
                "\"PANEL\"",
            ),
            opt(
                "text",
                Kind::Line(256),
                "only lines containing this text (case-insensitive)",
                "\"qvm\"",
            ),
            opt("limit", Kind::Uint(1, MAX_LINES), "most lines", "200"),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: list,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/logs/events",
        tag: "logs",
        summary: "Live tail of the audit log as server-sent `line` events (id = byte offset)",
        fields: &[opt(
            "from",
            Kind::Uint(0, u64::MAX >> 12),
            "byte offset to start at (default: the end)",
            "0",
        )],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Events,
        handler: events,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/journal",
        tag: "logs",
        summary: "The systemd journal of the daemon or the panel unit (journalctl)",
        fields: &[
            opt(
                "unit",
                Kind::OneOf(&["daemon", "panel"]),
                "which unit",
                "\"daemon\"",
            ),
            opt(
                "lines",
                Kind::Uint(1, MAX_JOURNAL_LINES),
                "how many lines",
                "200",
            ),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: journal,
    },
];

/// One audit line split into its parts.
pub fn line_json(line: &str) -> Object {
    let mut parts = line.splitn(3, ' ');
    let time = parts.next().unwrap_or_default();
    let category = parts.next().unwrap_or_default();
    let rest = parts.next().unwrap_or_default();
    let mut fields = Object::new();
    let mut vm = String::new();
    for (k, v) in split_fields(rest) {
        if k == "chain" {
            continue;
        }
        if k == "vm" {
            vm = v.clone();
        }
        fields = fields.str(&k, &v);
    }
    Object::new()
        .str("time", time)
        .str("category", category)
        .str("vm", &vm)
        .object("fields", fields)
        .str("line", line)
}

/// `key=value` fields, values possibly in double quotes (audit.rs's `quote`).
pub fn split_fields(rest: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = rest.char_indices().peekable();
    while let Some(&(start, _)) = chars.peek() {
        // key
        let mut key_end = start;
        while let Some(&(i, c)) = chars.peek() {
            if c == '=' || c == ' ' {
                key_end = i;
                break;
            }
            key_end = i + c.len_utf8();
            chars.next();
        }
        let key = rest.get(start..key_end).unwrap_or_default().to_string();
        let mut value = String::new();
        if matches!(chars.peek(), Some(&(_, '='))) {
            chars.next();
            if matches!(chars.peek(), Some(&(_, '"'))) {
                chars.next();
                for (_, c) in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    value.push(c);
                }
            } else {
                while let Some(&(_, c)) = chars.peek() {
                    if c == ' ' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        while matches!(chars.peek(), Some(&(_, ' '))) {
            chars.next();
        }
        if !key.is_empty() && out.len() < 64 {
            out.push((key, value));
        }
    }
    out
}

/// The last lines of the log (complete lines only) and the file's length.
pub fn tail_lines(path: &std::path::Path) -> io::Result<(Vec<String>, u64)> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.seek(SeekFrom::End(0))?;
    let start = len.saturating_sub(TAIL_READ);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(TAIL_READ).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    if !text.ends_with('\n') {
        lines.pop();
    }
    Ok((lines, len))
}

fn list(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let (lines, size) = tail_lines(&ctx.cfg.log)
        .map_err(|e| ApiError::new(500, format!("{}: {e}", ctx.cfg.log.display())))?;
    let vm = call.str("vm").filter(|s| !s.is_empty());
    let category = call.str("category").filter(|s| !s.is_empty());
    let text = call
        .str("text")
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_lowercase);
    let limit = call.uint("limit").unwrap_or(200) as usize;
    let matching: Vec<&String> = lines
        .iter()
        .filter(|l| {
            let mut parts = l.splitn(3, ' ');
            let _time = parts.next();
            let cat = parts.next().unwrap_or_default();
            let rest = parts.next().unwrap_or_default();
            category.is_none_or(|c| c == cat)
                && vm.is_none_or(|v| {
                    split_fields(rest)
                        .iter()
                        .any(|(k, val)| k == "vm" && val == v)
                })
                && text
                    .as_ref()
                    .is_none_or(|t| l.to_ascii_lowercase().contains(t.as_str()))
        })
        .collect();
    let skip = matching.len().saturating_sub(limit);
    let mut a = Array::new();
    for l in matching.iter().skip(skip) {
        a = a.object(line_json(l));
    }
    Reply::ok(
        Object::new()
            .array("lines", a)
            .uint("matched", matching.len() as u64)
            .uint("size", size)
            .str("path", &ctx.cfg.log.display().to_string())
            .finish(),
    )
}

fn events(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let resume = call
        .head
        .header("last-event-id")
        .and_then(|v| v.parse::<u64>().ok());
    let from = match resume.or(call.uint("from")) {
        Some(n) => n,
        None => std::fs::metadata(&ctx.cfg.log).map_or(0, |m| m.len()),
    };
    Ok(Reply::LogEvents(from))
}

/// Streams lines appended to the audit log after byte `from`.
pub fn stream_tail(ctx: &Ctx, w: &mut dyn Write, from: u64, stop: &AtomicBool) -> io::Result<()> {
    let opened = Instant::now();
    let mut offset = from;
    let mut last_write = Instant::now();
    http::write_event(w, Some(offset), "hello", "{}")?;
    while !stop.load(Ordering::SeqCst) && opened.elapsed() < tasks::MAX_EVENT_STREAM {
        let len = std::fs::metadata(&ctx.cfg.log).map_or(0, |m| m.len());
        if len < offset {
            // The log was rotated or truncated: start over at its beginning.
            offset = 0;
        }
        if len > offset {
            let mut f = File::open(&ctx.cfg.log)?;
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            f.take(TAIL_STEP).read_to_end(&mut buf)?;
            // Only whole lines; a partial last line waits for its newline.
            let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let text = String::from_utf8_lossy(buf.get(..whole).unwrap_or_default()).into_owned();
            for line in text.lines() {
                offset += line.len() as u64 + 1;
                http::write_event(w, Some(offset), "line", &line_json(line).finish())?;
            }
            if whole == 0 && buf.len() as u64 >= TAIL_STEP {
                // A line longer than a step is not a log line; skip past it.
                offset += buf.len() as u64;
            }
            last_write = Instant::now();
        }
        if last_write.elapsed() > tasks::HEARTBEAT {
            w.write_all(b": ping\n\n")?;
            w.flush()?;
            last_write = Instant::now();
        }
        std::thread::sleep(TAIL_POLL);
    }
    Ok(())
}

fn journal(_: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let unit_name = call.str("unit").unwrap_or("daemon");
    let unit = UNITS
        .iter()
        .find(|(n, _)| *n == unit_name)
        .map_or(UNITS[0].1, |(_, u)| *u);
    let lines = call.uint("lines").unwrap_or(200).to_string();
    let out = run_any(&[
        "journalctl",
        "--no-pager",
        "-o",
        "short-iso",
        "-n",
        &lines,
        "-u",
        unit,
    ])?;
    Reply::ok(
        Object::new()
            .str("unit", unit)
            .bool("ok", out.success())
            .str("text", &super::super::api::clip(&out.stdout_text()))
            .str("stderr", &super::super::api::clip(&out.stderr_text()))
            .finish(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_like_audit_writes_them() {
        let f = split_fields("vm=work id=x cmd=\"echo hi\" empty=\"\" chain=ab");
        assert_eq!(
            f,
            vec![
                ("vm".to_string(), "work".to_string()),
                ("id".into(), "x".into()),
                ("cmd".into(), "echo hi".into()),
                ("empty".into(), String::new()),
                ("chain".into(), "ab".into())
            ]
        );
        let j = line_json("2026-01-01T00:00:00.000Z EXEC vm=work chain=00").finish();
        assert!(j.contains("\"category\": \"EXEC\""));
        assert!(j.contains("\"vm\": \"work\""));
    }
}
