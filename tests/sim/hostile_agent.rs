//! A hostile VM agent for the attack campaign (`make attack`). The simulator runs it in
//! place of `qvm-remote agent` for a VM whose `agent` hook names it (tests/sim/README.md).
//! It reads its behaviour from `$HOME/.hostile-mode`: the first line names the
//! behaviour, the second the path of a side-effect file that every job it sends appends
//! to, so the campaign can count what dom0 actually executed.
//!
//! It holds the VM's real key, as a compromised VM would: it can sign jobs, and dom0
//! must still refuse replays, stale jobs, malformed frames and ids, and must stay within
//! its memory and thread bounds whatever arrives.

use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use qvm_remote::id::CommandId;
use qvm_remote::keys::Key;
use qvm_remote::proto::frame::{write_frame, FrameReader, FrameType};
use qvm_remote::proto::{self, Job};
use qvm_remote::time::unix_now;

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
}

fn key() -> Key {
    let text = fs::read_to_string(home().join(".qvm-remote/auth.key")).unwrap_or_default();
    Key::parse(&text).unwrap_or_else(|| Key::parse(&"00".repeat(32)).expect("constant key"))
}

fn job(body: &str, created: u64) -> Job {
    Job {
        id: CommandId::generate(std::process::id()).expect("urandom"),
        created,
        timeout: 30,
        body: body.as_bytes().to_vec(),
        stdin: Vec::new(),
    }
}

fn raw(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(bytes)?;
    out.flush()
}

/// Reads frames from dom0 until the stream ends, ACKing results if asked, so a session
/// lasts as long as dom0 keeps it.
fn drain(ack: bool) {
    let mut r = FrameReader::new(io::stdin());
    let mut out = io::stdout();
    while let Ok(Some(f)) = r.read() {
        if ack && f.kind == FrameType::Result {
            if let Some(id) = proto::result::peek_id(&f.payload) {
                let _ = write_frame(&mut out, FrameType::Ack, id.as_str().as_bytes());
            }
        }
    }
}

fn main() {
    let mode_text = fs::read_to_string(home().join(".hostile-mode")).unwrap_or_default();
    let mut lines = mode_text.lines();
    let mode = lines.next().unwrap_or("").to_string();
    let marker = lines.next().unwrap_or("/dev/null").to_string();
    let effect = format!("echo {mode} >> {marker}");
    let key = key();
    let mut out = io::stdout();
    let hello = || {
        let mut o = io::stdout();
        let _ = write_frame(&mut o, FrameType::Hello, b"2 hostile");
    };
    let now = unix_now();
    let result = (|| -> io::Result<()> {
        match mode.as_str() {
            // A length past every limit, then a stream of bytes behind it.
            "oversize" => {
                hello();
                raw(&mut out, b"JOB 629145600\n")?;
                let chunk = vec![b'A'; 1 << 16];
                for _ in 0..2000 {
                    out.write_all(&chunk)?;
                }
            }
            // A header line that never ends.
            "no-newline" => {
                hello();
                let chunk = vec![b'J'; 1 << 16];
                for _ in 0..2000 {
                    out.write_all(&chunk)?;
                }
            }
            // Valid frames forever, as fast as the pipe takes them.
            "endless" => {
                hello();
                loop {
                    raw(&mut out, b"IDLE 0\n")?;
                }
            }
            // One byte a second.
            "slow" => {
                for b in b"HELLO 1\n2IDLE 0\n" {
                    raw(&mut out, &[*b])?;
                    thread::sleep(Duration::from_secs(1));
                }
                drain(false);
            }
            // Invalid UTF-8 and terminal escapes in every field.
            "garbage" => {
                hello();
                let id = "20261204-153000-1-\x1b[31m\u{fffd}\u{202e}";
                let text = format!(
                    "qvm-remote-job 2\nid {id}\ncreated {now}\ntimeout 1\nbody-len 3\n\n\x1b]0;pwned\x07"
                );
                raw(&mut out, format!("JOB {}\n", text.len()).as_bytes())?;
                raw(&mut out, text.as_bytes())?;
                raw(&mut out, b"\x1b[2J\xff\xfe 1\n")?;
            }
            // Signed jobs whose ids would escape paths or forge log lines.
            "bad-ids" => {
                hello();
                let long = "9".repeat(10_000);
                for bad in ["../../../etc/passwd", "/", "a\"b'c", "x\ny", long.as_str()] {
                    let mut forged = Vec::new();
                    forged.extend_from_slice(b"qvm-remote-job 2\nid ");
                    forged.extend_from_slice(bad.as_bytes());
                    forged.extend_from_slice(
                        format!(
                            "\ncreated {now}\ntimeout 1\nbody-len {}\nbody-sha256 {}\nstdin-len 0\nstdin-sha256 {}\n",
                            effect.len(),
                            qvm_remote_hmac::hex::encode(&qvm_remote_hmac::sha256(effect.as_bytes())),
                            qvm_remote_hmac::hex::encode(&qvm_remote_hmac::sha256(b"")),
                        )
                        .as_bytes(),
                    );
                    let mac = qvm_remote_hmac::hmac_sha256(key.bytes(), &forged);
                    forged.extend_from_slice(
                        format!("mac {}\n\n{effect}", qvm_remote_hmac::hex::encode(&mac))
                            .as_bytes(),
                    );
                    let _ = write_frame(&mut out, FrameType::Job, &forged);
                }
                write_frame(&mut out, FrameType::Idle, b"")?;
                drain(true);
            }
            // Ten thousand signed jobs at once.
            "flood" => {
                hello();
                for _ in 0..10_000 {
                    write_frame(&mut out, FrameType::Job, &job("true", now).encode(&key))?;
                }
                write_frame(&mut out, FrameType::Idle, b"")?;
                drain(true);
            }
            // The same job twice, then again after its result was ACKed (a replay).
            "duplicate" | "replay" => {
                hello();
                let j = job(&effect, now).encode(&key);
                write_frame(&mut out, FrameType::Job, &j)?;
                write_frame(&mut out, FrameType::Job, &j)?;
                let mut r = FrameReader::new(io::stdin());
                while let Ok(Some(f)) = r.read() {
                    if f.kind == FrameType::Result {
                        if let Some(id) = proto::result::peek_id(&f.payload) {
                            write_frame(&mut out, FrameType::Ack, id.as_str().as_bytes())?;
                            thread::sleep(Duration::from_millis(200));
                            write_frame(&mut out, FrameType::Job, &j)?;
                            write_frame(&mut out, FrameType::Idle, b"")?;
                        }
                    }
                }
            }
            // Jobs created a day ago and a day ahead.
            "stale" => {
                hello();
                for created in [now - 86_400, now + 86_400, 0] {
                    write_frame(
                        &mut out,
                        FrameType::Job,
                        &job(&effect, created).encode(&key),
                    )?;
                }
                write_frame(&mut out, FrameType::Idle, b"")?;
                drain(true);
            }
            // ACKs for ids it never received, and CANCELs for ids that are not its own.
            "fake-ack" => {
                hello();
                for _ in 0..1000 {
                    let id = job("", now).id;
                    write_frame(&mut out, FrameType::Ack, id.as_str().as_bytes())?;
                    write_frame(
                        &mut out,
                        FrameType::Cancel,
                        &proto::cancel_payload(&key, &id),
                    )?;
                }
                write_frame(&mut out, FrameType::Idle, b"")?;
                drain(true);
            }
            // A session that ends at once: dom0 must back off, not spin.
            "reconnect" => {
                hello();
            }
            // Jobs signed with the wrong key.
            "forged" => {
                hello();
                let wrong = Key::generate()?;
                for _ in 0..100 {
                    write_frame(&mut out, FrameType::Job, &job(&effect, now).encode(&wrong))?;
                }
                write_frame(&mut out, FrameType::Idle, b"")?;
                drain(true);
            }
            _ => {
                let mut sink = Vec::new();
                let _ = io::stdin().take(1).read_to_end(&mut sink);
            }
        }
        Ok(())
    })();
    let _ = result;
}
