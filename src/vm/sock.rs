//! The `agent.sock` protocol: how a client wakes a stream-mode agent and watches its
//! job's output live (DESIGN §2 `agent.sock`, §4 stream mode).
//!
//! The socket is a Unix stream socket in the data dir, mode 0600 in a 0700 directory,
//! so only the data dir's owner can connect; the agent still treats every byte from it
//! as untrusted (bounded lines, validated ids), and the client bounds every reply.
//!
//! Client → agent: lines of at most [`MAX_REQUEST_LINE`] bytes, newline included.
//!
//! | line | meaning |
//! |---|---|
//! | `WATCH <id>` | make this connection the watcher of job `<id>` and rescan the queue; at most once per connection |
//! | `WAKE` | rescan the queue now (after writing a job or a `.cancel` file) |
//!
//! Agent → client: frames `<TYPE> <decimal length>\n<length bytes>`, as on dom0's
//! channel, with a header of at most [`MAX_REPLY_HEADER`] bytes.
//!
//! | type | payload |
//! |---|---|
//! | `WATCHING` | empty: the watch is registered (the answer to `WATCH`) |
//! | `OUT` / `ERR` | a chunk of the job's stdout / stderr (at most [`MAX_CHUNK`]) |
//! | `DONE` | empty: `queue/results/<id>.result` is stored; the agent then closes |
//!
//! A client sends `WATCH` and waits for `WATCHING` *before* it writes its job, then
//! writes the job and sends `WAKE`. The agent relays a job's output only to a watcher
//! that was registered when it claimed the job, so a watcher either gets the output
//! from its first byte or none of it. What it gets is always a prefix of each of stdout
//! and stderr: dom0 stops streaming a job at its first dropped chunk, and the agent
//! stops relaying to a watcher whose backlog is over its limit (then only `DONE`
//! follows). The result file stays the authority: the client checks that the streamed
//! bytes are a prefix of the MAC'd result and prints the rest from it. A connection
//! that closes without `DONE` means "read the result file"; nothing is lost.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::id::CommandId;
pub use crate::proto::frame::MAX_CHUNK;

/// Longest request line, newline included: `WATCH ` and the longest id fit with room.
pub const MAX_REQUEST_LINE: usize = 64;
/// Longest reply frame header, newline included.
pub const MAX_REPLY_HEADER: usize = 32;
/// Most decimal digits in a reply length: [`MAX_CHUNK`] has six.
const MAX_LEN_DIGITS: usize = 7;

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `WATCH <id>`.
    Watch(CommandId),
    /// `WAKE`.
    Wake,
}

impl Request {
    /// Parses one line (without its newline). Anything but the two forms is `None`.
    pub fn parse(line: &[u8]) -> Option<Request> {
        if line == b"WAKE" {
            return Some(Request::Wake);
        }
        let id = line.strip_prefix(b"WATCH ")?;
        CommandId::from_bytes(id).ok().map(Request::Watch)
    }

    /// The line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Watch(id) => format!("WATCH {id}\n").into_bytes(),
            Request::Wake => b"WAKE\n".to_vec(),
        }
    }
}

/// The types of the agent's replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// The watch is registered.
    Watching,
    /// A stdout chunk.
    Out,
    /// A stderr chunk.
    Err,
    /// The result is stored.
    Done,
}

impl ReplyKind {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            ReplyKind::Watching => "WATCHING",
            ReplyKind::Out => "OUT",
            ReplyKind::Err => "ERR",
            ReplyKind::Done => "DONE",
        }
    }

    fn parse(name: &[u8]) -> Option<ReplyKind> {
        Some(match name {
            b"WATCHING" => ReplyKind::Watching,
            b"OUT" => ReplyKind::Out,
            b"ERR" => ReplyKind::Err,
            b"DONE" => ReplyKind::Done,
            _ => return None,
        })
    }

    /// The largest payload of this type.
    pub fn max_len(self) -> usize {
        match self {
            ReplyKind::Watching | ReplyKind::Done => 0,
            ReplyKind::Out | ReplyKind::Err => MAX_CHUNK,
        }
    }
}

/// Why a reply or request could not be read. None of these carry the peer's bytes.
#[derive(Debug)]
pub enum SockError {
    /// The socket failed (a read timeout included).
    Io(io::Error),
    /// A line or header did not end within its limit.
    TooLong,
    /// A reply header is not `TYPE LENGTH` with a known type and a length in range.
    BadHeader,
    /// The stream ended inside a line or frame.
    Truncated,
}

impl fmt::Display for SockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SockError::Io(e) => write!(f, "agent socket: {e}"),
            SockError::TooLong => f.write_str("agent socket: line over its limit"),
            SockError::BadHeader => f.write_str("agent socket: malformed frame header"),
            SockError::Truncated => f.write_str("agent socket: ended inside a message"),
        }
    }
}

impl std::error::Error for SockError {}

/// Reads one line of at most `max` bytes (newline included) and returns it without
/// the newline; `Ok(None)` at a clean end of stream before the line's first byte.
pub fn read_line<R: BufRead>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, SockError> {
    let mut line = Vec::new();
    loop {
        let buf = match r.fill_buf() {
            Ok(buf) => buf,
            // A signal (the client's Ctrl-C handler) is not the end of the stream.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SockError::Io(e)),
        };
        if buf.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(SockError::Truncated)
            };
        }
        let room = max.saturating_sub(line.len());
        let window = buf.get(..room.min(buf.len())).unwrap_or_default();
        if let Some(nl) = window.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(window.get(..nl).unwrap_or_default());
            r.consume(nl + 1);
            return Ok(Some(line));
        }
        let n = window.len();
        line.extend_from_slice(window);
        r.consume(n);
        if line.len() >= max {
            return Err(SockError::TooLong);
        }
    }
}

/// Writes one reply frame in a single `write_all`, so a frame is never interleaved.
pub fn write_reply(w: &mut impl Write, kind: ReplyKind, payload: &[u8]) -> io::Result<()> {
    debug_assert!(payload.len() <= kind.max_len());
    let mut frame = format!("{} {}\n", kind.name(), payload.len()).into_bytes();
    frame.extend_from_slice(payload);
    w.write_all(&frame)?;
    w.flush()
}

/// Reads the agent's replies from a stream.
pub struct ReplyReader<R: Read> {
    inner: BufReader<R>,
}

impl<R: Read> ReplyReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> ReplyReader<R> {
        ReplyReader {
            inner: BufReader::with_capacity(MAX_CHUNK, inner),
        }
    }

    /// The next reply; `Ok(None)` at a clean end of stream between frames.
    pub fn read(&mut self) -> Result<Option<(ReplyKind, Vec<u8>)>, SockError> {
        let Some(header) = read_line(&mut self.inner, MAX_REPLY_HEADER)? else {
            return Ok(None);
        };
        let (kind, len) = parse_reply_header(&header).ok_or(SockError::BadHeader)?;
        let mut payload = vec![0; len];
        self.inner.read_exact(&mut payload).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                SockError::Truncated
            } else {
                SockError::Io(e)
            }
        })?;
        Ok(Some((kind, payload)))
    }
}

/// Takes the first whole reply off the front of `buf`, which holds bytes as they came
/// from the socket: `Ok(None)` while it is incomplete. For readers that cannot block
/// (the client waits on the socket, its signal flag and the clock at once). `buf`
/// never needs to hold more than one header and one chunk.
pub fn take_reply(buf: &mut Vec<u8>) -> Result<Option<(ReplyKind, Vec<u8>)>, SockError> {
    let window = buf
        .get(..MAX_REPLY_HEADER.min(buf.len()))
        .unwrap_or_default();
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_REPLY_HEADER {
            Err(SockError::TooLong)
        } else {
            Ok(None)
        };
    };
    let header = buf.get(..nl).unwrap_or_default();
    let (kind, len) = parse_reply_header(header).ok_or(SockError::BadHeader)?;
    let end = nl + 1 + len;
    let Some(payload) = buf.get(nl + 1..end) else {
        return Ok(None);
    };
    let payload = payload.to_vec();
    buf.drain(..end);
    Ok(Some((kind, payload)))
}

/// `TYPE LENGTH` → the type and a length within its limit.
fn parse_reply_header(header: &[u8]) -> Option<(ReplyKind, usize)> {
    let sp = header.iter().position(|&b| b == b' ')?;
    let kind = ReplyKind::parse(header.get(..sp)?)?;
    let digits = header.get(sp + 1..)?;
    if digits.is_empty() || digits.len() > MAX_LEN_DIGITS || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let len: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (len <= kind.max_len()).then_some((kind, len))
}

/// Connects to `agent.sock` if it is a socket (never through a symlink); `None` when
/// there is no socket or nobody answers, which callers treat as "no agent to wake".
pub fn connect(path: &Path) -> Option<UnixStream> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_socket() {
        return None;
    }
    UnixStream::connect(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "20261204-153000-4242-0123456789abcdef";

    #[test]
    fn requests_table() {
        let id = CommandId::parse(ID).unwrap();
        let table: Vec<(Vec<u8>, Option<Request>)> = vec![
            (b"WAKE".to_vec(), Some(Request::Wake)),
            (
                format!("WATCH {ID}").into_bytes(),
                Some(Request::Watch(id.clone())),
            ),
            (b"WAKE ".to_vec(), None),
            (b"wake".to_vec(), None),
            (b"WATCH".to_vec(), None),
            (b"WATCH ".to_vec(), None),
            (format!("WATCH  {ID}").into_bytes(), None),
            (format!("WATCH {ID} ").into_bytes(), None),
            (b"WATCH ../../etc/passwd".to_vec(), None),
            (b"".to_vec(), None),
        ];
        for (line, want) in table {
            assert_eq!(
                Request::parse(&line),
                want,
                "{:?}",
                String::from_utf8_lossy(&line)
            );
        }
        let line = Request::Watch(id).encode();
        assert!(line.len() <= MAX_REQUEST_LINE);
        assert_eq!(line, format!("WATCH {ID}\n").into_bytes());
    }

    #[test]
    fn lines_are_bounded_one_byte_past() {
        let at = [vec![b'a'; MAX_REQUEST_LINE - 1], b"\n".to_vec()].concat();
        let mut r = &at[..];
        assert_eq!(
            read_line(&mut r, MAX_REQUEST_LINE).unwrap().unwrap().len(),
            MAX_REQUEST_LINE - 1
        );
        let over = [vec![b'a'; MAX_REQUEST_LINE], b"\n".to_vec()].concat();
        let mut r = &over[..];
        assert!(matches!(
            read_line(&mut r, MAX_REQUEST_LINE),
            Err(SockError::TooLong)
        ));
        let mut r = &b"WA"[..];
        assert!(matches!(
            read_line(&mut r, MAX_REQUEST_LINE),
            Err(SockError::Truncated)
        ));
        let mut r = &b""[..];
        assert!(read_line(&mut r, MAX_REQUEST_LINE).unwrap().is_none());
    }

    #[test]
    fn replies_round_trip_and_bad_headers_are_refused() {
        let mut wire = Vec::new();
        write_reply(&mut wire, ReplyKind::Watching, b"").unwrap();
        write_reply(&mut wire, ReplyKind::Out, b"hello\n").unwrap();
        write_reply(&mut wire, ReplyKind::Err, &vec![7; MAX_CHUNK]).unwrap();
        write_reply(&mut wire, ReplyKind::Done, b"").unwrap();
        let mut r = ReplyReader::new(&wire[..]);
        assert_eq!(r.read().unwrap(), Some((ReplyKind::Watching, vec![])));
        assert_eq!(
            r.read().unwrap(),
            Some((ReplyKind::Out, b"hello\n".to_vec()))
        );
        assert_eq!(
            r.read().unwrap(),
            Some((ReplyKind::Err, vec![7; MAX_CHUNK]))
        );
        assert_eq!(r.read().unwrap(), Some((ReplyKind::Done, vec![])));
        assert_eq!(r.read().unwrap(), None);

        let one_past = format!("OUT {}\n", MAX_CHUNK + 1);
        let bad: &[&[u8]] = &[
            one_past.as_bytes(),
            b"DONE 1\nx",
            b"NOPE 0\n",
            b"OUT -1\n",
            b"OUT +1\nx",
            b"OUT 1 \nx",
            b"OUT\n",
            b"OUT 00000001\nx",
            &[b'O'; MAX_REPLY_HEADER + 1],
        ];
        for case in bad {
            let mut r = ReplyReader::new(*case);
            assert!(r.read().is_err(), "{:?}", String::from_utf8_lossy(case));
        }
        let mut r = ReplyReader::new(&b"OUT 5\nabc"[..]);
        assert!(matches!(r.read(), Err(SockError::Truncated)));
    }

    #[test]
    fn replies_are_taken_whole_from_bytes_as_they_come() {
        let mut wire = Vec::new();
        write_reply(&mut wire, ReplyKind::Watching, b"").unwrap();
        write_reply(&mut wire, ReplyKind::Out, b"hello").unwrap();
        write_reply(&mut wire, ReplyKind::Done, b"").unwrap();
        // Fed one byte at a time, every reply comes out once, whole, in order.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for &b in &wire {
            buf.push(b);
            while let Some(r) = take_reply(&mut buf).unwrap() {
                got.push(r);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(
            got,
            vec![
                (ReplyKind::Watching, vec![]),
                (ReplyKind::Out, b"hello".to_vec()),
                (ReplyKind::Done, vec![]),
            ]
        );
        // A header that does not end within its limit, or does not parse, is refused.
        let mut buf = vec![b'O'; MAX_REPLY_HEADER];
        assert!(matches!(take_reply(&mut buf), Err(SockError::TooLong)));
        let mut buf = vec![b'O'; MAX_REPLY_HEADER - 1];
        assert!(take_reply(&mut buf).unwrap().is_none());
        let mut buf = format!("OUT {}\n", MAX_CHUNK + 1).into_bytes();
        assert!(matches!(take_reply(&mut buf), Err(SockError::BadHeader)));
    }
}
