//! Result files (DESIGN §3): what dom0 answers, MAC'd with the same key as the job.
//!
//! ```text
//! qvm-remote-result 2
//! id <id>
//! status done|rejected|denied|timeout|cancelled|interrupted|failed
//! exit <0..255>
//! signal <0 or N>
//! started <unix ms>
//! duration-ms <n>
//! stdout-len <n>
//! stdout-sha256 <hex>
//! stderr-len <n>
//! stderr-sha256 <hex>
//! truncated none|stdout|stderr|both
//! reason <one line, printable ASCII, only for non-done statuses>
//! mac <64 hex>
//!
//! <stdout bytes><stderr bytes>
//! ```
//!
//! The first line differs from a job's, which separates the two MAC domains: a job can
//! never be passed off as a result or the other way round.

use std::fmt;

use qvm_remote_hmac::{hex, sha256, HmacSha256};

use super::escape_line;
use super::header::{self, Lines};
use crate::id::CommandId;
use crate::keys::Key;

/// First line of every result file.
pub const RESULT_MAGIC: &[u8] = b"qvm-remote-result 2";
/// Largest result header, blank line included.
pub const MAX_RESULT_HEADER: usize = 4096;
/// Longest `reason` text; longer reasons are cut.
pub const MAX_REASON: usize = 400;
/// The protocol's largest stdout or stderr in a result; `QVM_REMOTE_MAX_OUTPUT` may
/// only lower it.
pub const PROTOCOL_MAX_OUTPUT: usize = 64 << 20;
/// The largest result file the protocol allows.
pub const MAX_RESULT_FILE: usize = MAX_RESULT_HEADER + 2 * PROTOCOL_MAX_OUTPUT;

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It ran to completion; `exit`/`signal` say how.
    Done,
    /// Refused before running: authentication, validation, replay.
    Rejected,
    /// Refused by policy or by a human.
    Denied,
    /// Killed at its timeout.
    Timeout,
    /// Cancelled by the client.
    Cancelled,
    /// dom0 stopped or crashed while it ran; never run again.
    Interrupted,
    /// dom0 could not run it (a local error).
    Failed,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Rejected => "rejected",
            Status::Denied => "denied",
            Status::Timeout => "timeout",
            Status::Cancelled => "cancelled",
            Status::Interrupted => "interrupted",
            Status::Failed => "failed",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "done" => Status::Done,
            "rejected" => Status::Rejected,
            "denied" => Status::Denied,
            "timeout" => Status::Timeout,
            "cancelled" => Status::Cancelled,
            "interrupted" => Status::Interrupted,
            "failed" => Status::Failed,
            _ => return None,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which outputs were cut at the output cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncated {
    /// Neither.
    None,
    /// stdout only.
    Stdout,
    /// stderr only.
    Stderr,
    /// Both.
    Both,
}

impl Truncated {
    /// From the two flags.
    pub fn from_flags(stdout: bool, stderr: bool) -> Truncated {
        match (stdout, stderr) {
            (false, false) => Truncated::None,
            (true, false) => Truncated::Stdout,
            (false, true) => Truncated::Stderr,
            (true, true) => Truncated::Both,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Truncated::None => "none",
            Truncated::Stdout => "stdout",
            Truncated::Stderr => "stderr",
            Truncated::Both => "both",
        }
    }

    fn parse(s: &str) -> Option<Truncated> {
        Some(match s {
            "none" => Truncated::None,
            "stdout" => Truncated::Stdout,
            "stderr" => Truncated::Stderr,
            "both" => Truncated::Both,
            _ => return None,
        })
    }
}

/// A job's result.
#[derive(Clone, PartialEq, Eq)]
pub struct JobResult {
    /// The job's id.
    pub id: CommandId,
    /// How it ended.
    pub status: Status,
    /// Exit status (0 unless it exited with one).
    pub exit: u8,
    /// Killing signal, 0 if none.
    pub signal: u8,
    /// When it started, unix ms (0 if it never did).
    pub started_ms: u64,
    /// How long it ran.
    pub duration_ms: u64,
    /// Its stdout, up to the cap.
    pub stdout: Vec<u8>,
    /// Its stderr, up to the cap.
    pub stderr: Vec<u8>,
    /// Which streams were cut.
    pub truncated: Truncated,
    /// Why, for every status but `done`; printable ASCII on one line.
    pub reason: String,
}

impl fmt::Debug for JobResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobResult")
            .field("id", &self.id)
            .field("status", &self.status)
            .field("exit", &self.exit)
            .field("signal", &self.signal)
            .field("stdout_len", &self.stdout.len())
            .field("stderr_len", &self.stderr.len())
            .field("truncated", &self.truncated)
            .field("reason", &self.reason)
            .finish()
    }
}

/// Why a result file was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultError {
    /// Not a protocol 2 result.
    Malformed(&'static str),
    /// Lengths do not add up or exceed the protocol limit.
    LengthMismatch,
    /// The MAC does not verify: not from dom0, or altered.
    BadMac,
    /// An output does not match its hash.
    HashMismatch(&'static str),
}

impl fmt::Display for ResultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResultError::Malformed(w) => write!(f, "malformed result: {w}"),
            ResultError::LengthMismatch => f.write_str("result length does not match its header"),
            ResultError::BadMac => f.write_str("result MAC does not verify (not from dom0?)"),
            ResultError::HashMismatch(w) => write!(f, "result {w} does not match its hash"),
        }
    }
}

impl std::error::Error for ResultError {}

impl JobResult {
    /// A result for a job that never ran, with the reason the client is told.
    pub fn refusal(id: CommandId, status: Status, reason: &str) -> JobResult {
        JobResult {
            id,
            status,
            exit: 0,
            signal: 0,
            started_ms: 0,
            duration_ms: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
            truncated: Truncated::None,
            reason: reason.to_string(),
        }
    }

    /// Serialises and MACs the result. A `done` result carries no reason line; any
    /// other status always does (an empty reason becomes the status name).
    pub fn encode(&self, key: &Key) -> Vec<u8> {
        let mut head = Vec::with_capacity(768);
        head.extend_from_slice(RESULT_MAGIC);
        head.push(b'\n');
        let mut lines = vec![
            ("id", self.id.to_string()),
            ("status", self.status.as_str().to_string()),
            ("exit", self.exit.to_string()),
            ("signal", self.signal.to_string()),
            ("started", self.started_ms.to_string()),
            ("duration-ms", self.duration_ms.to_string()),
            ("stdout-len", self.stdout.len().to_string()),
            ("stdout-sha256", hex::encode(&sha256(&self.stdout))),
            ("stderr-len", self.stderr.len().to_string()),
            ("stderr-sha256", hex::encode(&sha256(&self.stderr))),
            ("truncated", self.truncated.as_str().to_string()),
        ];
        if self.status != Status::Done {
            let mut reason = escape_line(self.reason.as_bytes(), MAX_REASON);
            if reason.is_empty() || reason.starts_with(' ') {
                reason = format!("{}{}", self.status, reason);
            }
            lines.push(("reason", reason));
        }
        for (name, value) in lines {
            head.extend_from_slice(format!("{name} {value}\n").as_bytes());
        }
        let mac = qvm_remote_hmac::hmac_sha256(key.bytes(), &head);
        head.extend_from_slice(format!("mac {}\n\n", hex::encode(&mac)).as_bytes());
        head.extend_from_slice(&self.stdout);
        head.extend_from_slice(&self.stderr);
        head
    }

    /// Parses and verifies a result file.
    pub fn verify(bytes: &[u8], key: &Key) -> Result<JobResult, ResultError> {
        let bad = ResultError::Malformed;
        let (head, payload) =
            header::split(bytes, MAX_RESULT_HEADER).ok_or(bad("no header end within 4 KiB"))?;
        let mut l = Lines::new(head);
        if l.line() != Some(RESULT_MAGIC) {
            return Err(bad("not a protocol 2 result"));
        }
        let id = l
            .field("id")
            .and_then(|s| CommandId::parse(s).ok())
            .ok_or(bad("id"))?;
        let status = l
            .field("status")
            .and_then(Status::parse)
            .ok_or(bad("status"))?;
        let small = |l: &mut Lines, name: &'static str| {
            l.field(name)
                .and_then(header::number)
                .and_then(|n| u8::try_from(n).ok())
                .ok_or(ResultError::Malformed(name))
        };
        let num = |l: &mut Lines, name: &'static str| {
            l.field(name)
                .and_then(header::number)
                .ok_or(ResultError::Malformed(name))
        };
        let dig = |l: &mut Lines, name: &'static str| {
            l.field(name)
                .and_then(header::digest)
                .ok_or(ResultError::Malformed(name))
        };
        let exit = small(&mut l, "exit")?;
        let signal = small(&mut l, "signal")?;
        let started_ms = num(&mut l, "started")?;
        let duration_ms = num(&mut l, "duration-ms")?;
        let stdout_len = num(&mut l, "stdout-len")?;
        let stdout_sha = dig(&mut l, "stdout-sha256")?;
        let stderr_len = num(&mut l, "stderr-len")?;
        let stderr_sha = dig(&mut l, "stderr-sha256")?;
        let truncated = l
            .field("truncated")
            .and_then(Truncated::parse)
            .ok_or(bad("truncated"))?;
        let reason = if l.peek_name() == Some(b"reason") {
            l.field("reason").ok_or(bad("reason"))?.to_string()
        } else {
            String::new()
        };
        if (status == Status::Done) != reason.is_empty() {
            return Err(bad("reason belongs to every status but done"));
        }
        let signed_len = l.offset;
        let mac = dig(&mut l, "mac")?;
        if !l.is_empty() {
            return Err(bad("unexpected header line after mac"));
        }
        let max = PROTOCOL_MAX_OUTPUT as u64;
        if stdout_len > max || stderr_len > max {
            return Err(ResultError::LengthMismatch);
        }
        let (out_len, err_len) = (stdout_len as usize, stderr_len as usize);
        if payload.len() != out_len + err_len {
            return Err(ResultError::LengthMismatch);
        }
        let mut h = HmacSha256::new(key.bytes());
        h.update(bytes.get(..signed_len).unwrap_or_default());
        h.verify(&mac).map_err(|_| ResultError::BadMac)?;
        let (stdout, stderr) = payload.split_at(out_len);
        if sha256(stdout) != stdout_sha {
            return Err(ResultError::HashMismatch("stdout"));
        }
        if sha256(stderr) != stderr_sha {
            return Err(ResultError::HashMismatch("stderr"));
        }
        Ok(JobResult {
            id,
            status,
            exit,
            signal,
            started_ms,
            duration_ms,
            stdout: stdout.to_vec(),
            stderr: stderr.to_vec(),
            truncated,
            reason,
        })
    }

    /// The exit code `qvm-remote CMD` ends with for this result (DESIGN §5).
    pub fn client_exit_code(&self) -> u8 {
        match self.status {
            Status::Done if self.signal != 0 => 128u8.saturating_add(self.signal),
            Status::Done => self.exit,
            Status::Timeout => 124,
            Status::Rejected | Status::Denied => 126,
            Status::Cancelled => 130,
            Status::Interrupted | Status::Failed => 125,
        }
    }
}

/// Reads the id of a result file without verifying anything.
pub fn peek_id(bytes: &[u8]) -> Option<CommandId> {
    let (head, _) = header::split(bytes, MAX_RESULT_HEADER)?;
    let mut l = Lines::new(head);
    if l.line() != Some(RESULT_MAGIC) {
        return None;
    }
    CommandId::parse(l.field("id")?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::parse(&"22".repeat(32)).unwrap()
    }

    fn done(out: &[u8], err: &[u8]) -> JobResult {
        JobResult {
            id: CommandId::parse("20261204-153000-4242-0123456789abcdef").unwrap(),
            status: Status::Done,
            exit: 3,
            signal: 0,
            started_ms: 1_796_398_200_000,
            duration_ms: 12,
            stdout: out.to_vec(),
            stderr: err.to_vec(),
            truncated: Truncated::None,
            reason: String::new(),
        }
    }

    #[test]
    fn round_trips() {
        let r = done(b"out\n", b"\x00err");
        assert_eq!(JobResult::verify(&r.encode(&key()), &key()).unwrap(), r);
        let mut refused = JobResult::refusal(r.id.clone(), Status::Rejected, "bad mac");
        let back = JobResult::verify(&refused.encode(&key()), &key()).unwrap();
        assert_eq!(back, refused);
        refused.reason = "line\nbreak".into();
        let back = JobResult::verify(&refused.encode(&key()), &key()).unwrap();
        assert_eq!(back.reason, "line\\x0abreak");
    }

    #[test]
    fn every_bit_flip_is_refused_and_other_keys_fail() {
        let good = done(b"hello", b"world").encode(&key());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(JobResult::verify(&bad, &key()).is_err(), "flip at {i}");
        }
        let other = Key::parse(&"23".repeat(32)).unwrap();
        assert_eq!(JobResult::verify(&good, &other), Err(ResultError::BadMac));
        for cut in 0..good.len() {
            assert!(JobResult::verify(&good[..cut], &key()).is_err());
        }
    }

    #[test]
    fn a_job_file_is_not_a_result() {
        let job = crate::proto::Job {
            id: done(b"", b"").id,
            created: 1,
            timeout: 1,
            body: b"x".to_vec(),
            stdin: vec![],
        };
        assert!(JobResult::verify(&job.encode(&key()), &key()).is_err());
    }

    #[test]
    fn exit_codes_follow_the_design_table() {
        let mut r = done(b"", b"");
        let table = [
            (Status::Done, 0, 0, 0),
            (Status::Done, 3, 0, 3),
            (Status::Done, 0, 9, 137),
            (Status::Timeout, 0, 0, 124),
            (Status::Rejected, 0, 0, 126),
            (Status::Denied, 0, 0, 126),
            (Status::Cancelled, 0, 0, 130),
            (Status::Interrupted, 0, 0, 125),
            (Status::Failed, 0, 0, 125),
        ];
        for (status, exit, signal, want) in table {
            r.status = status;
            r.exit = exit;
            r.signal = signal;
            assert_eq!(r.client_exit_code(), want, "{status:?} {exit} {signal}");
        }
    }
}
