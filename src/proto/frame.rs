//! Frames on the channel (DESIGN §4): `<TYPE> <decimal length>\n<length bytes>`.
//!
//! The header line is read with a 64-byte cap and the length is checked against the
//! protocol's fixed limit for that type before a single payload byte is read, so a peer
//! cannot make the reader allocate more than the largest legal frame. Payload memory
//! grows as bytes arrive, not up front, so a peer that announces a large frame and then
//! stalls holds no more memory than it has actually sent.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};

use super::job::MAX_JOB_FILE;
use super::result::MAX_RESULT_FILE;
use crate::id::MAX_ID_LEN;

/// Longest frame header line, newline included.
pub const MAX_FRAME_HEADER: usize = 64;
/// Largest `OUT`/`ERR` chunk of command output.
pub const MAX_CHUNK: usize = 64 * 1024;
/// Largest `HELLO` payload: the protocol number and a version text.
pub const MAX_HELLO: usize = 256;

/// The frame types of protocol 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    /// agent → dom0: protocol and version.
    Hello,
    /// agent → dom0: a job file.
    Job,
    /// agent → dom0: no more pending jobs for now.
    Idle,
    /// agent → dom0: a signed cancel.
    Cancel,
    /// agent → dom0: a result was stored.
    Ack,
    /// dom0 → agent: a chunk of stdout.
    Out,
    /// dom0 → agent: a chunk of stderr.
    Err,
    /// dom0 → agent: a result file.
    Result,
    /// dom0 → agent: the session ends.
    Bye,
}

impl FrameType {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            FrameType::Hello => "HELLO",
            FrameType::Job => "JOB",
            FrameType::Idle => "IDLE",
            FrameType::Cancel => "CANCEL",
            FrameType::Ack => "ACK",
            FrameType::Out => "OUT",
            FrameType::Err => "ERR",
            FrameType::Result => "RESULT",
            FrameType::Bye => "BYE",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &[u8]) -> Option<FrameType> {
        Some(match name {
            b"HELLO" => FrameType::Hello,
            b"JOB" => FrameType::Job,
            b"IDLE" => FrameType::Idle,
            b"CANCEL" => FrameType::Cancel,
            b"ACK" => FrameType::Ack,
            b"OUT" => FrameType::Out,
            b"ERR" => FrameType::Err,
            b"RESULT" => FrameType::Result,
            b"BYE" => FrameType::Bye,
            _ => return None,
        })
    }

    /// The largest payload the protocol allows for this type.
    pub fn max_len(self) -> usize {
        match self {
            FrameType::Hello => MAX_HELLO,
            FrameType::Job => MAX_JOB_FILE,
            FrameType::Idle | FrameType::Bye => 0,
            FrameType::Cancel => MAX_ID_LEN + 1 + 64,
            FrameType::Ack => MAX_ID_LEN,
            FrameType::Out | FrameType::Err => MAX_ID_LEN + 1 + MAX_CHUNK,
            FrameType::Result => MAX_RESULT_FILE,
        }
    }
}

/// One frame.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its type.
    pub kind: FrameType,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame({} {})", self.kind.name(), self.payload.len())
    }
}

/// Why a frame could not be read. None of these carry the peer's bytes.
#[derive(Debug)]
pub enum FrameError {
    /// The stream failed.
    Io(io::Error),
    /// The header line did not end within 64 bytes.
    HeaderTooLong,
    /// The header line is not `TYPE LENGTH`.
    BadHeader,
    /// The type is not one of protocol 2's.
    UnknownType,
    /// The length is over the limit for the type.
    TooLong {
        /// The type.
        kind: FrameType,
        /// The announced length.
        len: u64,
    },
    /// The stream ended inside a frame.
    Truncated,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "channel error: {e}"),
            FrameError::HeaderTooLong => {
                write!(f, "frame header longer than {MAX_FRAME_HEADER} bytes")
            }
            FrameError::BadHeader => f.write_str("malformed frame header"),
            FrameError::UnknownType => f.write_str("unknown frame type"),
            FrameError::TooLong { kind, len } => write!(
                f,
                "{} frame of {len} bytes is over its limit of {}",
                kind.name(),
                kind.max_len()
            ),
            FrameError::Truncated => f.write_str("channel ended inside a frame"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Writes one frame and flushes, so the peer sees it at once.
pub fn write_frame(w: &mut impl Write, kind: FrameType, payload: &[u8]) -> io::Result<()> {
    let mut head = format!("{} {}\n", kind.name(), payload.len()).into_bytes();
    if payload.len() <= 4096 {
        // One write for small frames keeps them whole on pipes.
        head.extend_from_slice(payload);
        w.write_all(&head)?;
    } else {
        w.write_all(&head)?;
        w.write_all(payload)?;
    }
    w.flush()
}

/// Reads frames from a stream.
pub struct FrameReader<R: Read> {
    inner: BufReader<R>,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader {
            inner: BufReader::with_capacity(64 * 1024, inner),
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream between frames.
    pub fn read(&mut self) -> Result<Option<Frame>, FrameError> {
        let mut line = Vec::with_capacity(MAX_FRAME_HEADER);
        loop {
            let buf = self.inner.fill_buf().map_err(FrameError::Io)?;
            if buf.is_empty() {
                return if line.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            let room = MAX_FRAME_HEADER - line.len();
            let window = buf.get(..room.min(buf.len())).unwrap_or_default();
            if let Some(nl) = window.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(window.get(..nl).unwrap_or_default());
                self.inner.consume(nl + 1);
                break;
            }
            let n = window.len();
            line.extend_from_slice(window);
            self.inner.consume(n);
            if line.len() >= MAX_FRAME_HEADER {
                return Err(FrameError::HeaderTooLong);
            }
        }
        let (kind, len) = parse_header(&line)?;
        let mut payload = Vec::with_capacity(len.min(64 * 1024));
        let got = (&mut self.inner)
            .take(len as u64)
            .read_to_end(&mut payload)
            .map_err(FrameError::Io)?;
        if got != len {
            return Err(FrameError::Truncated);
        }
        Ok(Some(Frame { kind, payload }))
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut R {
        self.inner.get_mut()
    }
}

fn parse_header(line: &[u8]) -> Result<(FrameType, usize), FrameError> {
    let sp = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or(FrameError::BadHeader)?;
    let (name, rest) = line.split_at(sp);
    let digits = rest.get(1..).ok_or(FrameError::BadHeader)?;
    if name.is_empty() || name.len() > 8 || !name.iter().all(u8::is_ascii_uppercase) {
        return Err(FrameError::BadHeader);
    }
    let kind = FrameType::parse(name).ok_or(FrameError::UnknownType)?;
    let len = std::str::from_utf8(digits)
        .ok()
        .and_then(super::header::number)
        .ok_or(FrameError::BadHeader)?;
    if len > kind.max_len() as u64 {
        return Err(FrameError::TooLong { kind, len });
    }
    Ok((kind, len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut r = FrameReader::new(bytes);
        let mut out = Vec::new();
        while let Some(f) = r.read()? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn round_trip_every_type() {
        let mut buf = Vec::new();
        let frames = [
            (FrameType::Hello, b"2 qvm-remote 0.1.0".to_vec()),
            (FrameType::Job, vec![7u8; 10_000]),
            (FrameType::Idle, vec![]),
            (
                FrameType::Ack,
                b"20261204-153000-4242-0123456789abcdef".to_vec(),
            ),
            (FrameType::Out, b"id\n\x00\xffbinary".to_vec()),
            (FrameType::Bye, vec![]),
        ];
        for (k, p) in &frames {
            write_frame(&mut buf, *k, p).unwrap();
        }
        let got = read_all(&buf).unwrap();
        assert_eq!(got.len(), frames.len());
        for (f, (k, p)) in got.iter().zip(&frames) {
            assert_eq!(f.kind, *k);
            assert_eq!(&f.payload, p);
        }
    }

    #[test]
    fn limits_hold_one_byte_past() {
        for kind in [
            FrameType::Hello,
            FrameType::Job,
            FrameType::Idle,
            FrameType::Cancel,
            FrameType::Ack,
            FrameType::Out,
            FrameType::Bye,
        ] {
            let at = format!("{} {}\n", kind.name(), kind.max_len());
            assert!(parse_header(&at.as_bytes()[..at.len() - 1]).is_ok(), "{at}");
            let over = format!("{} {}\n", kind.name(), kind.max_len() + 1);
            assert!(
                matches!(read_all(over.as_bytes()), Err(FrameError::TooLong { .. })),
                "{over}"
            );
        }
        assert!(matches!(
            read_all(b"JOB 600000000\n"),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let long = format!("{}\n", "A".repeat(100));
        let no_newline = "A".repeat(100);
        let cases: [(&[u8], &str); 12] = [
            (long.as_bytes(), "too long"),
            (no_newline.as_bytes(), "too long"),
            (b"JOB\n", "bad"),
            (b"JOB -1\n", "bad"),
            (b"JOB 01\n", "bad"),
            (b"JOB  1\n", "bad"),
            (b"job 1\n", "bad"),
            (b"NOPE 1\n", "unknown"),
            (b"JOB 1", "truncated"),
            (b"JOB 5\nabc", "truncated"),
            (b"JOB 99999999999999999999999\n", "bad"),
            (b"ABCDEFGHI 1\n", "bad"),
        ];
        for (input, want) in cases {
            let got = read_all(input);
            let ok = matches!(
                (want, &got),
                ("too long", Err(FrameError::HeaderTooLong))
                    | ("bad", Err(FrameError::BadHeader))
                    | ("unknown", Err(FrameError::UnknownType))
                    | ("truncated", Err(FrameError::Truncated))
            );
            assert!(ok, "{:?} gave {got:?}", String::from_utf8_lossy(input));
        }
        assert!(read_all(b"").unwrap().is_empty());
    }

    #[test]
    fn a_header_split_across_reads_is_whole() {
        // A reader that hands out one byte at a time, like a slow peer.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                match (self.0.split_first(), buf.first_mut()) {
                    (Some((b, rest)), Some(slot)) => {
                        *slot = *b;
                        self.0 = rest;
                        Ok(1)
                    }
                    _ => Ok(0),
                }
            }
        }
        let mut r = FrameReader::new(Trickle(b"ACK 3\nabcIDLE 0\n"));
        assert_eq!(r.read().unwrap().unwrap().payload, b"abc");
        assert_eq!(r.read().unwrap().unwrap().kind, FrameType::Idle);
        assert!(r.read().unwrap().is_none());
    }
}
