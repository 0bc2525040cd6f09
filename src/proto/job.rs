//! Job files (DESIGN §3): what a VM asks dom0 to run.
//!
//! ```text
//! qvm-remote-job 2
//! id <id>
//! created <unix seconds>
//! timeout <seconds>
//! body-len <n>
//! body-sha256 <64 hex>
//! stdin-len <n>
//! stdin-sha256 <64 hex>
//! mac <64 hex>
//!
//! <body bytes><stdin bytes>
//! ```
//!
//! The MAC is HMAC-SHA256 over every header byte before the `mac` line; the two hashes
//! bind the body and stdin to it, so the MAC covers the whole job. Verification is
//! [`verify`]; it returns the id whenever one could be read, so that even a refused job
//! gets a result the client can wait for.

use std::fmt;

use qvm_remote_hmac::{hex, sha256, HmacSha256};

use super::header::{self, Lines};
use crate::id::CommandId;
use crate::keys::Key;

/// First line of every job file.
pub const JOB_MAGIC: &[u8] = b"qvm-remote-job 2";
/// Largest header, blank line included.
pub const MAX_JOB_HEADER: usize = 4096;
/// The protocol's largest body (and largest stdin); `QVM_REMOTE_MAX_COMMAND` may only
/// lower it.
pub const PROTOCOL_MAX_COMMAND: usize = 1 << 20;
/// The largest job file the protocol allows: header, body and stdin at their limits.
pub const MAX_JOB_FILE: usize = MAX_JOB_HEADER + 2 * PROTOCOL_MAX_COMMAND;

/// A job as the client builds it and as dom0 accepts it.
#[derive(Clone, PartialEq, Eq)]
pub struct Job {
    /// The command id.
    pub id: CommandId,
    /// When the client created the job, unix seconds.
    pub created: u64,
    /// The timeout the client asks for, seconds (dom0 caps it).
    pub timeout: u64,
    /// The command text.
    pub body: Vec<u8>,
    /// Bytes for the command's stdin (empty: /dev/null).
    pub stdin: Vec<u8>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("created", &self.created)
            .field("timeout", &self.timeout)
            .field("body_len", &self.body.len())
            .field("stdin_len", &self.stdin.len())
            .finish()
    }
}

/// The header fields of a job file, before verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobHeader {
    /// The command id.
    pub id: CommandId,
    /// `created`, unix seconds.
    pub created: u64,
    /// `timeout`, seconds.
    pub timeout: u64,
    /// `body-len`.
    pub body_len: u64,
    /// `body-sha256`.
    pub body_sha256: [u8; 32],
    /// `stdin-len`.
    pub stdin_len: u64,
    /// `stdin-sha256`.
    pub stdin_sha256: [u8; 32],
    /// `mac`.
    pub mac: [u8; 32],
    /// How many header bytes the MAC covers.
    pub signed_len: usize,
    /// Where the payload starts (after the blank line).
    pub payload_offset: usize,
}

/// What dom0 enforces beyond the protocol limits, from its config.
#[derive(Debug, Clone, Copy)]
pub struct JobLimits {
    /// `QVM_REMOTE_MAX_COMMAND`: largest body, and largest stdin.
    pub max_command: usize,
    /// `QVM_REMOTE_REPLAY_WINDOW`: how far `created` may be from now, seconds.
    pub replay_window: u64,
    /// dom0's clock, unix seconds.
    pub now: u64,
}

/// Why a job was refused. The text is what the client is told, so it names the rule
/// broken but never echoes VM-supplied bytes or says which MAC byte differed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// The file does not have the protocol 2 header shape.
    Malformed(&'static str),
    /// `body-len` is 0.
    EmptyBody,
    /// The body or stdin is longer than allowed.
    TooLarge {
        /// `body` or `stdin`.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The file length does not match the header's lengths.
    LengthMismatch,
    /// The MAC does not verify.
    BadMac,
    /// A hash does not match its bytes.
    HashMismatch(&'static str),
    /// The body holds a control byte the protocol forbids.
    ControlBytes,
    /// `created` is outside the replay window.
    Stale {
        /// How far `created` is from dom0's clock, seconds.
        skew: u64,
        /// The allowed window.
        window: u64,
    },
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Malformed(what) => write!(f, "malformed job: {what}"),
            JobError::EmptyBody => f.write_str("empty command"),
            JobError::TooLarge { what, len, max } => {
                write!(f, "{what} too large: {len} bytes (limit {max})")
            }
            JobError::LengthMismatch => f.write_str("job length does not match its header"),
            JobError::BadMac => f.write_str("authentication failed"),
            JobError::HashMismatch(what) => write!(f, "{what} does not match its hash"),
            JobError::ControlBytes => f.write_str("command contains forbidden control bytes"),
            JobError::Stale { skew, window } => write!(
                f,
                "job created {skew} s from dom0's clock (replay window {window} s)"
            ),
        }
    }
}

impl std::error::Error for JobError {}

impl Job {
    /// Serialises and MACs the job.
    pub fn encode(&self, key: &Key) -> Vec<u8> {
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(JOB_MAGIC);
        head.push(b'\n');
        let lines = [
            ("id", self.id.to_string()),
            ("created", self.created.to_string()),
            ("timeout", self.timeout.to_string()),
            ("body-len", self.body.len().to_string()),
            ("body-sha256", hex::encode(&sha256(&self.body))),
            ("stdin-len", self.stdin.len().to_string()),
            ("stdin-sha256", hex::encode(&sha256(&self.stdin))),
        ];
        for (name, value) in lines {
            head.extend_from_slice(format!("{name} {value}\n").as_bytes());
        }
        let mac = qvm_remote_hmac::hmac_sha256(key.bytes(), &head);
        head.extend_from_slice(format!("mac {}\n\n", hex::encode(&mac)).as_bytes());
        head.extend_from_slice(&self.body);
        head.extend_from_slice(&self.stdin);
        head
    }
}

impl JobHeader {
    /// Parses the header of a job file. Nothing is verified yet except its shape.
    pub fn parse(bytes: &[u8]) -> Result<JobHeader, JobError> {
        let (head, _) = header::split(bytes, MAX_JOB_HEADER)
            .ok_or(JobError::Malformed("no header end within 4 KiB"))?;
        let mut l = Lines::new(head);
        if l.line() != Some(JOB_MAGIC) {
            return Err(JobError::Malformed("not a protocol 2 job"));
        }
        let bad = JobError::Malformed;
        let id = l
            .field("id")
            .and_then(|s| CommandId::parse(s).ok())
            .ok_or(bad("bad id line"))?;
        let num = |l: &mut Lines, name: &'static str| {
            l.field(name)
                .and_then(header::number)
                .ok_or(JobError::Malformed(name))
        };
        let dig = |l: &mut Lines, name: &'static str| {
            l.field(name)
                .and_then(header::digest)
                .ok_or(JobError::Malformed(name))
        };
        let created = num(&mut l, "created")?;
        let timeout = num(&mut l, "timeout")?;
        let body_len = num(&mut l, "body-len")?;
        let body_sha256 = dig(&mut l, "body-sha256")?;
        let stdin_len = num(&mut l, "stdin-len")?;
        let stdin_sha256 = dig(&mut l, "stdin-sha256")?;
        let signed_len = l.offset;
        let mac = dig(&mut l, "mac")?;
        if !l.is_empty() {
            return Err(bad("unexpected header line after mac"));
        }
        Ok(JobHeader {
            id,
            created,
            timeout,
            body_len,
            body_sha256,
            stdin_len,
            stdin_sha256,
            mac,
            signed_len,
            payload_offset: head.len() + 1,
        })
    }
}

/// A refusal, with the id when the header was readable enough to name one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The job's id, if it could be read.
    pub id: Option<CommandId>,
    /// Why it was refused.
    pub error: JobError,
}

/// Reads the id of a job file, if it has a readable one, without verifying anything.
pub fn peek_id(bytes: &[u8]) -> Option<CommandId> {
    let (head, _) = header::split(bytes, MAX_JOB_HEADER)?;
    let mut l = Lines::new(head);
    if l.line() != Some(JOB_MAGIC) {
        return None;
    }
    CommandId::parse(l.field("id")?).ok()
}

/// Verifies a job file completely (DESIGN §3, every rule but the replay store, which
/// the caller holds). The checks run from cheapest to dearest, the MAC before anything
/// that would act on the contents.
pub fn verify(bytes: &[u8], key: &Key, limits: &JobLimits) -> Result<Job, Refusal> {
    let h = JobHeader::parse(bytes).map_err(|error| Refusal {
        id: peek_id(bytes),
        error,
    })?;
    let refuse = |error| Refusal {
        id: Some(h.id.clone()),
        error,
    };
    let max = limits.max_command.min(PROTOCOL_MAX_COMMAND);
    if h.body_len == 0 {
        return Err(refuse(JobError::EmptyBody));
    }
    for (what, len) in [("body", h.body_len), ("stdin", h.stdin_len)] {
        if len > max as u64 {
            return Err(refuse(JobError::TooLarge { what, len, max }));
        }
    }
    // Both lengths are at most 1 MiB here, so the sum cannot overflow.
    let (body_len, stdin_len) = (h.body_len as usize, h.stdin_len as usize);
    let payload = bytes.get(h.payload_offset..).unwrap_or_default();
    if payload.len() != body_len + stdin_len {
        return Err(refuse(JobError::LengthMismatch));
    }
    let signed = bytes.get(..h.signed_len).unwrap_or_default();
    let mut mac = HmacSha256::new(key.bytes());
    mac.update(signed);
    if mac.verify(&h.mac).is_err() {
        return Err(refuse(JobError::BadMac));
    }
    let (body, stdin) = payload.split_at(body_len);
    if sha256(body) != h.body_sha256 {
        return Err(refuse(JobError::HashMismatch("body")));
    }
    if sha256(stdin) != h.stdin_sha256 {
        return Err(refuse(JobError::HashMismatch("stdin")));
    }
    if body.iter().any(|&b| is_forbidden_control(b)) {
        return Err(refuse(JobError::ControlBytes));
    }
    let skew = h.created.abs_diff(limits.now);
    if skew > limits.replay_window {
        return Err(refuse(JobError::Stale {
            skew,
            window: limits.replay_window,
        }));
    }
    Ok(Job {
        id: h.id,
        created: h.created,
        timeout: h.timeout,
        body: body.to_vec(),
        stdin: stdin.to_vec(),
    })
}

/// Bytes 0x00–0x08, 0x0B, 0x0C and 0x0E–0x1F: control bytes that have no business in a
/// command text (tab, newline and carriage return are allowed).
pub fn is_forbidden_control(b: u8) -> bool {
    matches!(b, 0x00..=0x08 | 0x0b | 0x0c | 0x0e..=0x1f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_796_398_200;

    fn key() -> Key {
        Key::parse(&"11".repeat(32)).unwrap()
    }

    fn job(body: &[u8], stdin: &[u8]) -> Job {
        Job {
            id: CommandId::parse("20261204-153000-4242-0123456789abcdef").unwrap(),
            created: NOW,
            timeout: 300,
            body: body.to_vec(),
            stdin: stdin.to_vec(),
        }
    }

    fn limits() -> JobLimits {
        JobLimits {
            max_command: PROTOCOL_MAX_COMMAND,
            replay_window: 600,
            now: NOW,
        }
    }

    fn check(bytes: &[u8], want: Result<(), JobError>) {
        let got = verify(bytes, &key(), &limits())
            .map(|_| ())
            .map_err(|r| r.error);
        assert_eq!(got, want);
    }

    #[test]
    fn encodes_the_documented_layout() {
        let bytes = job(b"echo hi", b"").encode(&key());
        let text = String::from_utf8(bytes).unwrap();
        let names: Vec<&str> = text
            .lines()
            .take_while(|l| !l.is_empty())
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "qvm-remote-job",
                "id",
                "created",
                "timeout",
                "body-len",
                "body-sha256",
                "stdin-len",
                "stdin-sha256",
                "mac"
            ]
        );
        assert!(text.ends_with("\n\necho hi"));
        assert!(text.contains(&format!("stdin-sha256 {}\n", hex::encode(&sha256(b"")))));
    }

    #[test]
    fn round_trip_with_and_without_stdin() {
        for (body, stdin) in [(&b"echo hi"[..], &b""[..]), (b"cat", b"\x00\xff data\n")] {
            let j = job(body, stdin);
            let got = verify(&j.encode(&key()), &key(), &limits()).unwrap();
            assert_eq!(got, j);
        }
    }

    #[test]
    fn the_mac_covers_the_whole_job() {
        let good = job(b"echo hi", b"in").encode(&key());
        check(&good, Ok(()));
        // Flip one bit anywhere: header, blank line, body or stdin. Every flip must be
        // refused; which rule refuses it depends on where it lands.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 1;
            assert!(verify(&bad, &key(), &limits()).is_err(), "flip at {i}");
        }
        let other = Key::parse(&"12".repeat(32)).unwrap();
        let r = verify(&good, &other, &limits()).unwrap_err();
        assert_eq!(r.error, JobError::BadMac);
        assert_eq!(r.id, Some(job(b"", b"").id));
    }

    #[test]
    fn limits_are_enforced_one_byte_past() {
        let small = JobLimits {
            max_command: 16,
            ..limits()
        };
        let at = job(&[b'x'; 16], &[0u8; 16]).encode(&key());
        assert!(verify(&at, &key(), &small).is_ok());
        let over = job(&[b'x'; 17], b"").encode(&key());
        assert_eq!(
            verify(&over, &key(), &small).unwrap_err().error,
            JobError::TooLarge {
                what: "body",
                len: 17,
                max: 16
            }
        );
        let over_in = job(b"x", &[0u8; 17]).encode(&key());
        assert!(matches!(
            verify(&over_in, &key(), &small).unwrap_err().error,
            JobError::TooLarge { what: "stdin", .. }
        ));
        check(&job(b"", b"").encode(&key()), Err(JobError::EmptyBody));
    }

    #[test]
    fn control_bytes_and_stale_jobs_are_refused() {
        for b in [0u8, 8, 0x0b, 0x0c, 0x0e, 0x1f] {
            check(
                &job(&[b'a', b, b'b'], b"").encode(&key()),
                Err(JobError::ControlBytes),
            );
        }
        check(&job(b"a\tb\r\nc", b"").encode(&key()), Ok(()));
        for created in [NOW - 601, NOW + 601, 0] {
            let mut j = job(b"true", b"");
            j.created = created;
            assert!(matches!(
                verify(&j.encode(&key()), &key(), &limits())
                    .unwrap_err()
                    .error,
                JobError::Stale { .. }
            ));
        }
        let mut j = job(b"true", b"");
        j.created = NOW - 600;
        check(&j.encode(&key()), Ok(()));
    }

    #[test]
    fn malformed_headers_are_refused_with_the_id_when_readable() {
        let good = String::from_utf8(job(b"x", b"").encode(&key())).unwrap();
        let cases = [
            good.replace("qvm-remote-job 2", "qvm-remote-job 1"),
            good.replace("created ", "created  "),
            good.replace("timeout 300\n", "timeout 300\nextra 1\n"),
            good.replace("timeout 300\n", ""),
            good.replace("\n\nx", "\nx"),
            good.replace("timeout 300", "timeout -1"),
            good.replace("body-len 1", "body-len 01"),
            good.replacen("mac ", "mac  ", 1),
        ];
        for c in &cases {
            let r = verify(c.as_bytes(), &key(), &limits()).unwrap_err();
            assert!(matches!(r.error, JobError::Malformed(_)), "{c:?} → {r:?}");
        }
        let r = verify(cases[2].as_bytes(), &key(), &limits()).unwrap_err();
        assert_eq!(r.id, Some(job(b"", b"").id));
        let r = verify(b"garbage", &key(), &limits()).unwrap_err();
        assert_eq!(r.id, None);
        let long = format!("qvm-remote-job 2\n{}", "a".repeat(MAX_JOB_HEADER));
        assert!(verify(long.as_bytes(), &key(), &limits()).is_err());
    }

    #[test]
    fn truncated_and_overlong_files_are_refused() {
        let good = job(b"echo hi", b"data").encode(&key());
        for cut in 0..good.len() {
            assert!(
                verify(&good[..cut], &key(), &limits()).is_err(),
                "cut {cut}"
            );
        }
        let mut long = good.clone();
        long.push(b'!');
        check(&long, Err(JobError::LengthMismatch));
    }
}
