//! `notifications/progress` for a tool call that asked for it (MCP "Progress"): the
//! job's live output as it streams in, and a note while nothing comes.
//!
//! A job's live output arrives through the client's wait loop, which hands it to this
//! [`Live`] sink. Chunks are coalesced: at most one notification per
//! [`MIN_PROGRESS_GAP`], each carrying at most [`MAX_PROGRESS_TEXT`] bytes of output
//! (the rest is counted and said to be in the result, which holds all of it). While
//! nothing arrives a note goes out every [`IDLE_NOTE_EVERY`]. The VM cannot see why
//! dom0 is quiet: protocol 2 has no frame saying that a job waits for approval, so the
//! note says what we know — we wait for dom0, and a job may be awaiting approval there.
//!
//! Progress values are a count of notifications, so they increase with each one as
//! the specification requires; no total is given. Nothing is sent once the call has
//! been cancelled: a notification must only name the token of a request in progress.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::rpc;
use super::Outbox;
use crate::json;
use crate::vm::client::{Live, Stream};
use crate::vm::Error;

/// Shortest time between two output notifications of one call: a command printing
/// line by line must not become a notification per line.
pub const MIN_PROGRESS_GAP: Duration = Duration::from_millis(200);
/// Most output text in one notification, in bytes.
pub const MAX_PROGRESS_TEXT: usize = 8 * 1024;
/// How often a call waiting with no output says so.
pub const IDLE_NOTE_EVERY: Duration = Duration::from_secs(3);
/// What an idle note says: all the VM can know about a silent dom0.
pub const WAITING_NOTE: &str = "waiting for dom0 (a job may be awaiting approval in dom0)";

/// The progress sink of one tool call.
pub struct Progress<'a> {
    outbox: &'a Outbox,
    /// The client's `progressToken` as JSON text; `None`: the call asked for no
    /// progress, and nothing is sent.
    token: Option<String>,
    /// Set when the call is cancelled: from then on nothing is sent.
    abandoned: &'a AtomicBool,
    /// Notifications sent so far: the progress value.
    sent: u64,
    /// Output not yet sent, labelled by stream.
    pending: String,
    /// The stream the last text in `pending` came from.
    pending_stream: Option<Stream>,
    /// Output bytes left out of notifications (they are in the result).
    dropped: usize,
    last_sent: Instant,
}

impl<'a> Progress<'a> {
    /// A sink sending on `outbox` under `token`, quiet once `abandoned` is set.
    pub fn new(outbox: &'a Outbox, token: Option<String>, abandoned: &'a AtomicBool) -> Self {
        Progress {
            outbox,
            token,
            abandoned,
            sent: 0,
            pending: String::new(),
            pending_stream: None,
            dropped: 0,
            last_sent: Instant::now(),
        }
    }

    /// Sends `message` now (if the call asked for progress and is still in flight).
    pub fn note(&mut self, message: &str) {
        let Some(token) = &self.token else { return };
        if self.abandoned.load(Ordering::SeqCst) {
            return;
        }
        self.sent += 1;
        let params = rpc::raw_object(&[
            ("progressToken", token),
            ("progress", &self.sent.to_string()),
            ("message", &json::string(message)),
        ]);
        self.outbox
            .send(&rpc::notification("notifications/progress", &params));
        self.last_sent = Instant::now();
    }

    /// Sends the output not sent yet. Called before the response, so that no
    /// notification follows it.
    pub fn flush(&mut self) {
        if self.pending.is_empty() && self.dropped == 0 {
            return;
        }
        let mut message = std::mem::take(&mut self.pending);
        if self.dropped > 0 {
            message.push_str(&format!(
                "\n[{} more bytes of output: the result holds them]",
                self.dropped
            ));
        }
        self.dropped = 0;
        self.pending_stream = None;
        self.note(&message);
    }
}

impl Live for Progress<'_> {
    fn output(&mut self, stream: Stream, bytes: &[u8]) -> Result<(), Error> {
        if self.token.is_none() {
            return Ok(());
        }
        if self.pending_stream != Some(stream) {
            let label = match stream {
                Stream::Stdout => "stdout: ",
                Stream::Stderr => "stderr: ",
            };
            if !self.pending.is_empty() && !self.pending.ends_with('\n') {
                self.pending.push('\n');
            }
            self.pending.push_str(label);
            self.pending_stream = Some(stream);
        }
        let text = String::from_utf8_lossy(bytes);
        let room = MAX_PROGRESS_TEXT.saturating_sub(self.pending.len());
        let cut = floor_char_boundary(&text, room);
        self.pending.push_str(text.get(..cut).unwrap_or_default());
        self.dropped = self.dropped.saturating_add(text.len() - cut);
        if self.last_sent.elapsed() >= MIN_PROGRESS_GAP {
            self.flush();
        }
        Ok(())
    }

    fn tick(&mut self, elapsed: Duration) {
        let quiet_for = self.last_sent.elapsed();
        if !self.pending.is_empty() || self.dropped > 0 {
            if quiet_for >= MIN_PROGRESS_GAP {
                self.flush();
            }
        } else if quiet_for >= IDLE_NOTE_EVERY {
            self.note(&format!("{WAITING_NOTE}: {} s", elapsed.as_secs()));
        }
    }
}

/// The largest index ≤ `at` that is a char boundary of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut i = at.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn messages(out: &Shared) -> Vec<json::Value> {
        let bytes = out.0.lock().unwrap().clone();
        bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| json::parse(l).unwrap())
            .collect()
    }

    #[test]
    fn output_is_coalesced_capped_and_counted() {
        let out = Shared::default();
        let outbox = Outbox::new(Box::new(out.clone()), Box::new(std::io::sink()));
        let abandoned = AtomicBool::new(false);
        let mut p = Progress::new(&outbox, Some("\"t\"".into()), &abandoned);
        // Just created: within the gap, so these are held.
        p.output(Stream::Stdout, b"one\n").unwrap();
        p.output(Stream::Stderr, b"two\n").unwrap();
        p.output(Stream::Stdout, &vec![b'x'; MAX_PROGRESS_TEXT])
            .unwrap();
        assert!(messages(&out).is_empty());
        p.flush();
        let m = messages(&out);
        assert_eq!(m.len(), 1);
        let params = m[0].get("params").unwrap();
        assert_eq!(params.get("progressToken").unwrap().as_str(), Some("t"));
        assert_eq!(params.get("progress").unwrap().as_u64(), Some(1));
        let text = params.get("message").unwrap().as_str().unwrap();
        assert!(
            text.starts_with("stdout: one\nstderr: two\nstdout: xx"),
            "{text}"
        );
        assert!(text.len() < MAX_PROGRESS_TEXT + 100);
        assert!(text.ends_with("more bytes of output: the result holds them]"));
        // Once abandoned, nothing more goes out.
        abandoned.store(true, Ordering::SeqCst);
        p.note("late");
        assert_eq!(messages(&out).len(), 1);
    }

    #[test]
    fn without_a_token_nothing_is_sent() {
        let out = Shared::default();
        let outbox = Outbox::new(Box::new(out.clone()), Box::new(std::io::sink()));
        let abandoned = AtomicBool::new(false);
        let mut p = Progress::new(&outbox, None, &abandoned);
        p.output(Stream::Stdout, b"x").unwrap();
        p.note("queued");
        p.flush();
        p.tick(Duration::from_secs(100));
        assert!(messages(&out).is_empty());
    }

    #[test]
    fn cutting_never_splits_a_character() {
        assert_eq!(floor_char_boundary("aé", 2), 1);
        assert_eq!(floor_char_boundary("aé", 3), 3);
        assert_eq!(floor_char_boundary("a", 9), 1);
    }
}
