//! Deterministic randomised tests of every parser that reads bytes from a VM, a file, the
//! environment or the panel's clients: the frame decoder, the job and result parsers, the
//! config parser, the policy parser and the panel's HTTP head parser. Each runs a few seconds inside `cargo test` from a fixed seed; `make fuzz`
//! runs them far longer (`QVM_FUZZ_ITERS`) and with a seed from the clock
//! (`QVM_FUZZ_SEED`, printed so a failure can be replayed).
//!
//! Properties: no parser panics; nothing it returns is larger than the limit it
//! enforces; what a writer produces parses back to the same value; and mutations of
//! valid inputs (bit flips, truncation, splices, length fields pushed past their limits)
//! are either refused or, where they still verify, unchanged in meaning.

use std::path::Path;

use qvm_remote::config::Config;
use qvm_remote::id::CommandId;
use qvm_remote::keys::Key;
use qvm_remote::proto::frame::{write_frame, FrameReader, FrameType};
use qvm_remote::proto::job::{self, JobLimits, MAX_JOB_FILE};
use qvm_remote::proto::{Job, JobResult, Status, Truncated};

/// A small xorshift PRNG: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Random bytes of a random length below `max`.
    fn bytes_below(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn iterations(default: usize) -> usize {
    std::env::var("QVM_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn rng(salt: u64) -> Rng {
    let seed = std::env::var("QVM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0000_0000_0001u64);
    eprintln!("fuzz seed {seed} (salt {salt})");
    Rng((seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
}

/// Applies one random mutation.
fn mutate(r: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    match r.below(7) {
        0 if !v.is_empty() => {
            let i = r.below(v.len());
            v[i] ^= 1 << r.below(8);
        }
        1 => v.truncate(r.below(v.len() + 1)),
        2 => {
            let i = r.below(v.len() + 1);
            let extra = r.bytes_below(16);
            v.splice(i..i, extra);
        }
        3 if !v.is_empty() => {
            let i = r.below(v.len());
            let j = (i + r.below(32)).min(v.len());
            v.drain(i..j);
        }
        4 => {
            // Replace a run of digits with a huge or odd number, to push length fields.
            let text = String::from_utf8_lossy(&v).into_owned();
            let numbers = [
                "0",
                "1",
                "4294967296",
                "18446744073709551615",
                "99999999999999999999",
                "-1",
                "01",
            ];
            if let Some(pos) = text.find(|c: char| c.is_ascii_digit()) {
                let end = text[pos..]
                    .find(|c: char| !c.is_ascii_digit())
                    .map_or(text.len(), |e| pos + e);
                let mut s = text.clone();
                let n: &&str = r.pick(&numbers[..]);
                s.replace_range(pos..end, n);
                v = s.into_bytes();
            }
        }
        5 => {
            let i = r.below(v.len() + 1);
            let junk: &[&[u8]] = &[
                b"\n",
                b"\n\n",
                b" ",
                b"\x00",
                b"\x1b[2J",
                b"\xff\xfe",
                b"mac ",
                b"JOB 5\n",
            ];
            let j = r.pick(junk).to_vec();
            v.splice(i..i, j);
        }
        _ => {
            let n = r.below(64);
            v = r.bytes(n);
        }
    }
    v
}

fn key() -> Key {
    Key::parse(&"5a".repeat(32)).unwrap()
}

fn sample_job(r: &mut Rng) -> Job {
    let body_len = r.below(200) + 1;
    let body: Vec<u8> = (0..body_len)
        .map(|_| *r.pick(b"abc xyz;|$()'\"\\\n\t0123456789"))
        .collect();
    let stdin = r.bytes_below(100);
    Job {
        id: CommandId::generate(r.below(100_000) as u32).unwrap(),
        created: 1_796_398_200,
        timeout: r.below(1000) as u64,
        body,
        stdin,
    }
}

fn limits() -> JobLimits {
    JobLimits {
        max_command: 1 << 20,
        replay_window: 600,
        now: 1_796_398_200,
    }
}

#[test]
fn job_parser_holds_under_mutation() {
    let mut r = rng(1);
    let k = key();
    for _ in 0..iterations(3000) {
        let j = sample_job(&mut r);
        let bytes = j.encode(&k);
        assert_eq!(job::verify(&bytes, &k, &limits()).unwrap(), j);
        let m = mutate(&mut r, &bytes);
        match job::verify(&m, &k, &limits()) {
            // A mutation that still verifies must not have changed the job: the MAC
            // covers every byte that matters.
            Ok(got) => assert_eq!(got, j, "a mutated job verified with new content"),
            Err(refusal) => {
                if let Some(id) = refusal.id {
                    assert!(id.as_str().len() <= qvm_remote::id::MAX_ID_LEN);
                }
            }
        }
        let _ = job::peek_id(&m);
        let _ = qvm_remote::proto::JobHeader::parse(&m);
    }
}

#[test]
fn result_parser_holds_under_mutation() {
    let mut r = rng(2);
    let k = key();
    let statuses = [
        Status::Done,
        Status::Rejected,
        Status::Denied,
        Status::Timeout,
        Status::Cancelled,
        Status::Interrupted,
        Status::Failed,
    ];
    for _ in 0..iterations(3000) {
        let status = *r.pick(&statuses);
        let res = JobResult {
            id: CommandId::generate(7).unwrap(),
            status,
            exit: r.next() as u8,
            signal: r.next() as u8,
            started_ms: r.next() >> 20,
            duration_ms: r.next() >> 40,
            stdout: r.bytes_below(300),
            stderr: r.bytes_below(300),
            truncated: *r.pick(&[Truncated::None, Truncated::Stdout, Truncated::Both]),
            reason: if status == Status::Done {
                String::new()
            } else {
                "why".to_string()
            },
        };
        let bytes = res.encode(&k);
        assert_eq!(JobResult::verify(&bytes, &k).unwrap(), res);
        let m = mutate(&mut r, &bytes);
        if let Ok(got) = JobResult::verify(&m, &k) {
            assert_eq!(got, res, "a mutated result verified with new content");
        }
        let _ = qvm_remote::proto::result::peek_id(&m);
    }
}

#[test]
fn frame_decoder_holds_under_mutation_and_never_exceeds_limits() {
    let mut r = rng(3);
    let kinds = [
        FrameType::Hello,
        FrameType::Job,
        FrameType::Idle,
        FrameType::Cancel,
        FrameType::Ack,
        FrameType::Out,
        FrameType::Err,
        FrameType::Result,
        FrameType::Bye,
    ];
    for _ in 0..iterations(3000) {
        let mut stream = Vec::new();
        let mut sent = Vec::new();
        for _ in 0..r.below(5) + 1 {
            let kind = *r.pick(&kinds);
            let len = r.below(kind.max_len().min(200) + 1);
            let payload = r.bytes(len);
            write_frame(&mut stream, kind, &payload).unwrap();
            sent.push((kind, payload));
        }
        let mut reader = FrameReader::new(&stream[..]);
        for (kind, payload) in &sent {
            let f = reader.read().unwrap().unwrap();
            assert_eq!((f.kind, &f.payload), (*kind, payload));
        }
        assert!(reader.read().unwrap().is_none());

        let m = mutate(&mut r, &stream);
        let mut reader = FrameReader::new(&m[..]);
        for _ in 0..64 {
            match reader.read() {
                Ok(Some(f)) => assert!(f.payload.len() <= f.kind.max_len()),
                Ok(None) | Err(_) => break,
            }
        }
    }
    // Announced lengths far past every limit are refused before any payload is read.
    for kind in kinds {
        let header = format!(
            "{} {}\n",
            kind.name(),
            kind.max_len() as u64 + 1 + r.below(1 << 30) as u64
        );
        let mut reader = FrameReader::new(header.as_bytes());
        assert!(reader.read().is_err());
    }
    let huge = format!("JOB {}\n", MAX_JOB_FILE * 300);
    assert!(FrameReader::new(huge.as_bytes()).read().is_err());
}

#[test]
fn config_parser_never_panics_and_names_lines() {
    let mut r = rng(4);
    let base = "QVM_REMOTE_VMS=\"work dev\"\nQVM_REMOTE_MODE=poll\nQVM_REMOTE_POLL_INTERVAL=0.5\n\
                QVM_REMOTE_TIMEOUT=60\nQVM_REMOTE_MAX_OUTPUT=1000\n# comment\n";
    for _ in 0..iterations(3000) {
        let m = mutate(&mut r, base.as_bytes());
        let text = String::from_utf8_lossy(&m);
        let mut c = Config::default();
        match c.apply_text(Path::new("/etc/qubes/remote.conf"), &text) {
            Ok(()) => {
                // Whatever parsed is within the documented ranges.
                assert!(c.max_command <= job::PROTOCOL_MAX_COMMAND);
                assert!(c.max_output <= qvm_remote::proto::result::PROTOCOL_MAX_OUTPUT);
                assert!((1..=qvm_remote::config::MAX_TIMEOUT).contains(&c.timeout));
                assert!(c
                    .vms
                    .iter()
                    .all(|v| qvm_remote::config::is_valid_vm_name(v)));
            }
            Err(e) => {
                let lines = text.lines().count();
                match e.origin {
                    qvm_remote::config::Origin::Line(_, n) => assert!(n >= 1 && n <= lines),
                    other => panic!("config error without a line: {other:?}"),
                }
            }
        }
    }
}

#[test]
fn policy_parser_never_panics_and_decides_within_its_rules() {
    use qvm_remote::policy::{Command as PolicyCommand, Policy};
    let mut r = rng(5);
    let base = "# vm action pattern\nwork allow qvm-ls *\nwork ask qvm-shutdown *\n\
                @anyvm deny qvm-remove *\ndev allow @script\n@tag:ops level monitor\n\
                other level manage\n";
    let path = Path::new("/etc/qubes/remote-policy");
    let commands = [
        PolicyCommand::Simple(vec!["qvm-ls".into(), "--raw-list".into()]),
        PolicyCommand::Simple(vec!["qvm-remove".into(), "work".into()]),
        PolicyCommand::Script,
    ];
    for _ in 0..iterations(3000) {
        let m = mutate(&mut r, base.as_bytes());
        let text = String::from_utf8_lossy(&m);
        let parsed = Policy::parse(path, &text);
        let (all, errors) = Policy::parse_all(path, &text);
        // The two entry points agree on whether the text is valid.
        assert_eq!(parsed.is_ok(), errors.is_empty());
        for cmd in &commands {
            let _ = all.decide("work", cmd, &mut || Ok(vec!["ops".to_string()]));
            let _ = all.decide("x", cmd, &mut || Err("no tags".to_string()));
        }
        let _ = all.shadowed();
    }
}

#[test]
fn http_head_parser_holds_its_limits_under_mutation() {
    use qvm_remote::panel::http::{self, HeadScanner, Scan};
    let mut r = rng(6);
    let base = b"POST /api/exec?vm=work&x=%41 HTTP/1.1\r\nHost: 127.0.0.1:9876\r\n\
                 Content-Type: application/json\r\nContent-Length: 12\r\nCookie: s=abc\r\n\r\n";
    for _ in 0..iterations(3000) {
        let m = mutate(&mut r, base);
        if let Ok(head) = http::parse_head(&m) {
            assert!(head.headers.len() <= http::MAX_HEADERS);
            assert!(head.content_length <= http::MAX_BODY);
            assert!(head.path.starts_with('/'));
            if let Ok(params) = http::parse_query(&head.query) {
                assert!(params.len() <= http::MAX_QUERY_PARAMS);
            }
        }
        // Fed in random slices, the scanner finds the same end as one call does.
        let mut whole = HeadScanner::new();
        let once = whole.scan(&m);
        let mut parts = HeadScanner::new();
        let mut cut = 0;
        let mut got = Scan::Incomplete;
        while cut < m.len() {
            cut = (cut + 1 + r.below(16)).min(m.len());
            got = parts.scan(&m[..cut]);
            if got != Scan::Incomplete {
                break;
            }
        }
        assert_eq!(once, got);
        let _ = http::percent_decode(&String::from_utf8_lossy(&m));
    }
    // A head that never ends is refused once it passes the limit, not buffered.
    let mut s = HeadScanner::new();
    let endless = vec![b'a'; http::MAX_HEAD + http::MAX_LINE + 10];
    assert!(matches!(s.scan(&endless), Scan::Refused(_)));
}
