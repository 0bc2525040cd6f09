//! HTTP/1.1 framing for the admin panel (RFC 9112, the subset a browser and our tests
//! use; shared/DESIGN.md §8 for the limits).
//!
//! Every limit is a named constant here, checked while bytes arrive, so no request can
//! make the panel buffer more than [`MAX_HEAD`] bytes of head or [`MAX_BODY`] of body.
//! The parser is strict where leniency has caused smuggling bugs elsewhere: CRLF line
//! ends only, no obs-fold, no whitespace before a header's colon, one `Host`, one
//! `Content-Length` of plain digits, and no `Transfer-Encoding` at all (a request body
//! is always delimited by `Content-Length`).
//!
//! Architecture invariant: nothing in this file panics on any input, and every reply
//! it serialises carries `Content-Length` and the security headers of DESIGN §8. The
//! one reply without a length is an event stream, which is delimited by closing the
//! connection ([`write_event_stream_head`]).

use std::fmt;
use std::io::{self, Write};
use std::time::Duration;

/// Longest request line, and longest header line, in bytes without the CRLF.
pub const MAX_LINE: usize = 8 * 1024;
/// Most header lines in one request.
pub const MAX_HEADERS: usize = 100;
/// Longest head (request line, headers and the blank line), in bytes. Smaller than
/// `MAX_LINE * MAX_HEADERS` on purpose: each of up to `server::MAX_CONNECTIONS`
/// connections may hold a partial head, and this bounds their sum.
pub const MAX_HEAD: usize = 128 * 1024;
/// Largest request body, in bytes.
pub const MAX_BODY: usize = 1024 * 1024;
/// Most parameters in one query string.
pub const MAX_QUERY_PARAMS: usize = 32;
/// Longest method token.
pub const MAX_METHOD: usize = 16;
/// From the first byte of a request to the end of its head. A client that trickles a
/// head slower than this gets 408 and is disconnected (slowloris).
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// How long a keep-alive connection may sit with no request before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// From the end of the head to the end of the body.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);
/// Longest time one write of a reply may block.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Headers sent with every reply (DESIGN §8). `Referrer-Policy` keeps the one-time login
/// URL out of any `Referer`; `Cache-Control` keeps API answers out of caches.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "Content-Security-Policy",
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
];

/// A refusal with its HTTP status. The message is sent to the client (it never holds
/// secrets) and is short, plain ASCII.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// The status code to answer with.
    pub status: u16,
    /// Why, for the client and the log.
    pub message: &'static str,
}

impl HttpError {
    /// A refusal with this status and message.
    pub const fn new(status: u16, message: &'static str) -> HttpError {
        HttpError { status, message }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status,
            reason(self.status),
            self.message
        )
    }
}

impl std::error::Error for HttpError {}

/// The protocol version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: the connection closes after the reply.
    Http10,
    /// HTTP/1.1: keep-alive unless `Connection: close`.
    Http11,
}

/// A parsed request head. Header names are lowercased; values are trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The method token, as sent (`GET`, `POST`, …).
    pub method: String,
    /// The path part of the target, starting with `/`, not decoded.
    pub path: String,
    /// The query part of the target (after `?`), not decoded; empty when absent.
    pub query: String,
    /// The protocol version.
    pub version: Version,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body length from `Content-Length` (0 when absent).
    pub content_length: usize,
}

impl Head {
    /// The value of the first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection may stay open after the reply.
    pub fn wants_keep_alive(&self) -> bool {
        let close = self
            .header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        self.version == Version::Http11 && !close
    }
}

/// What [`HeadScanner::scan`] found so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// No complete head yet, and no limit broken.
    Incomplete,
    /// The head is the first `n` bytes of the buffer (blank line included).
    Complete(usize),
    /// A limit is broken or the framing is wrong; answer this and close.
    Refused(HttpError),
}

/// Finds the end of a head in a growing buffer, checking the line limits as bytes
/// arrive. It remembers how far it has looked, so trickled bytes cost linear time.
#[derive(Debug, Default, Clone)]
pub struct HeadScanner {
    pos: usize,
    line_start: usize,
    lines: usize,
}

impl HeadScanner {
    /// A scanner for a new head.
    pub fn new() -> HeadScanner {
        HeadScanner::default()
    }

    /// Looks at the bytes of `buf` not seen before (`buf` only ever grows between calls).
    pub fn scan(&mut self, buf: &[u8]) -> Scan {
        while let Some(&b) = buf.get(self.pos) {
            self.pos += 1;
            if b != b'\n' {
                continue;
            }
            let line = buf.get(self.line_start..self.pos - 1).unwrap_or_default();
            let Some(line) = line.strip_suffix(b"\r") else {
                return Scan::Refused(HttpError::new(400, "lines must end with CRLF"));
            };
            if line.len() > MAX_LINE {
                return Scan::Refused(self.line_too_long());
            }
            self.line_start = self.pos;
            if line.is_empty() {
                if self.lines == 0 {
                    return Scan::Refused(HttpError::new(400, "empty request line"));
                }
                return Scan::Complete(self.pos);
            }
            self.lines += 1;
            if self.lines > 1 + MAX_HEADERS {
                return Scan::Refused(HttpError::new(431, "too many header fields"));
            }
            if self.pos > MAX_HEAD {
                return Scan::Refused(HttpError::new(431, "request head too large"));
            }
        }
        // The line still open counts too, so an endless line is refused as soon as it
        // is longer than any line may be (+1 for the CR that may end it).
        if buf.len().saturating_sub(self.line_start) > MAX_LINE + 1 {
            return Scan::Refused(self.line_too_long());
        }
        if buf.len() > MAX_HEAD {
            return Scan::Refused(HttpError::new(431, "request head too large"));
        }
        Scan::Incomplete
    }

    fn line_too_long(&self) -> HttpError {
        if self.lines == 0 {
            HttpError::new(414, "request line too long")
        } else {
            HttpError::new(431, "header line too long")
        }
    }
}

/// Parses a complete head (as delimited by [`HeadScanner`]).
pub fn parse_head(bytes: &[u8]) -> Result<Head, HttpError> {
    let text = std::str::from_utf8(bytes).map_err(|_| HttpError::new(400, "head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let (method, target, version) = parse_request_line(request_line)?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        headers.push(parse_header_line(line)?);
    }
    if headers.len() > MAX_HEADERS {
        return Err(HttpError::new(431, "too many header fields"));
    }
    let count = |name: &str| headers.iter().filter(|(n, _)| n == name).count();
    // DESIGN §8: a request that does not name the panel in Host gets 421, so one with
    // no Host at all does too; two Host headers are a malformed request.
    match count("host") {
        0 => {
            return Err(HttpError::new(
                421,
                "a Host header naming the panel is required",
            ))
        }
        1 => {}
        _ => return Err(HttpError::new(400, "exactly one Host header is allowed")),
    }
    if count("transfer-encoding") > 0 {
        return Err(HttpError::new(
            501,
            "Transfer-Encoding is not supported; send Content-Length",
        ));
    }
    let content_length = match count("content-length") {
        0 => 0,
        1 => {
            let v = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map_or("", |(_, v)| v.as_str());
            parse_length(v)?
        }
        _ => return Err(HttpError::new(400, "more than one Content-Length")),
    };
    Ok(Head {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        version,
        headers,
        content_length,
    })
}

fn parse_request_line(line: &str) -> Result<(&str, &str, Version), HttpError> {
    let bad = HttpError::new(400, "malformed request line");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad);
    };
    if method.is_empty()
        || method.len() > MAX_METHOD
        || !method.bytes().all(|b| b.is_ascii_uppercase())
    {
        return Err(bad);
    }
    if !target.starts_with('/')
        || target.starts_with("//")
        || !target
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'#')
    {
        return Err(HttpError::new(400, "malformed request target"));
    }
    let version = match version {
        "HTTP/1.1" => Version::Http11,
        "HTTP/1.0" => Version::Http10,
        v if v.starts_with("HTTP/")
            && v.len() == 8
            && v.bytes().skip(5).all(|b| b.is_ascii_digit() || b == b'.') =>
        {
            return Err(HttpError::new(505, "only HTTP/1.1 and HTTP/1.0"));
        }
        _ => return Err(bad),
    };
    Ok((method, target, version))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_header_line(line: &str) -> Result<(String, String), HttpError> {
    let bad = HttpError::new(400, "malformed header line");
    let (name, value) = line.split_once(':').ok_or(bad.clone())?;
    // Leading whitespace is obs-fold; whitespace before the colon is forbidden.
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(bad);
    }
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    if !value
        .bytes()
        .all(|b| b == b'\t' || (0x20..=0x7e).contains(&b))
    {
        return Err(HttpError::new(
            400,
            "header value holds a control or non-ASCII byte",
        ));
    }
    Ok((name.to_ascii_lowercase(), value.to_string()))
}

fn parse_length(v: &str) -> Result<usize, HttpError> {
    if v.is_empty() || v.len() > 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::new(400, "malformed Content-Length"));
    }
    let n: usize = v
        .parse()
        .map_err(|_| HttpError::new(400, "malformed Content-Length"))?;
    if n > MAX_BODY {
        return Err(HttpError::new(413, "request body too large"));
    }
    Ok(n)
}

/// Decodes a query string (`a=1&b=x%20y+z`) into name/value pairs: percent escapes,
/// `+` as space, UTF-8 required, at most [`MAX_QUERY_PARAMS`], no name twice.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, HttpError> {
    let mut out: Vec<(String, String)> = Vec::new();
    if query.is_empty() {
        return Ok(out);
    }
    for pair in query.split('&') {
        if pair.is_empty() {
            continue;
        }
        if out.len() == MAX_QUERY_PARAMS {
            return Err(HttpError::new(400, "too many query parameters"));
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name)?;
        let value = percent_decode(value)?;
        if out.iter().any(|(n, _)| *n == name) {
            return Err(HttpError::new(400, "a query parameter is given twice"));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// `%XX` and `+` decoding of one query component; the result must be UTF-8.
pub fn percent_decode(s: &str) -> Result<String, HttpError> {
    let bad = HttpError::new(400, "malformed percent escape");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = b.get(i + 1).and_then(|h| char::from(*h).to_digit(16));
                let lo = b.get(i + 2).and_then(|h| char::from(*h).to_digit(16));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(bad);
                };
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            _ => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| HttpError::new(400, "query is not UTF-8"))
}

/// A reply: status, body and the headers particular to it. The security headers,
/// `Content-Length` and `Connection` are added when it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// Extra headers (`Set-Cookie`, `Location`, `Allow`, `Retry-After`).
    pub headers: Vec<(&'static str, String)>,
}

/// `Content-Type` of JSON replies.
pub const JSON: &str = "application/json";

impl Response {
    /// A JSON reply.
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: JSON,
            body: body.into_bytes(),
            headers: Vec::new(),
        }
    }

    /// A JSON error reply: `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(
            status,
            crate::json::Object::new().str("error", message).finish(),
        )
    }

    /// A reply with any body.
    pub fn bytes(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            body,
            headers: Vec::new(),
        }
    }

    /// The same reply with one more header.
    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}

impl From<HttpError> for Response {
    fn from(e: HttpError) -> Response {
        Response::error(e.status, e.message)
    }
}

/// The reason phrase of the statuses the panel sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Serialises `resp` (head and body, in one buffer so it leaves in as few packets as
/// possible). `keep_alive` picks the `Connection` header.
pub fn serialise(resp: &Response, keep_alive: bool) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    push_common_headers(&mut head, resp.content_type);
    for (name, value) in &resp.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut out = head.into_bytes();
    out.extend_from_slice(&resp.body);
    out
}

fn push_common_headers(head: &mut String, content_type: &str) {
    head.push_str(&format!("Content-Type: {content_type}\r\n"));
    for (name, value) in SECURITY_HEADERS {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
}

/// Writes the head of a `text/event-stream` reply. An event stream has no length; it
/// ends when the panel closes the connection, which it always does after one.
pub fn write_event_stream_head(w: &mut dyn Write) -> io::Result<()> {
    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    push_common_headers(&mut head, "text/event-stream");
    head.push_str("Connection: close\r\n\r\n");
    w.write_all(head.as_bytes())?;
    w.flush()
}

/// Writes one server-sent event. `data` must not hold a newline (JSON from this crate
/// never does: the writer escapes them).
pub fn write_event(w: &mut dyn Write, id: Option<u64>, event: &str, data: &str) -> io::Result<()> {
    let mut text = String::new();
    if let Some(id) = id {
        text.push_str(&format!("id: {id}\n"));
    }
    text.push_str(&format!(
        "event: {event}\ndata: {}\n\n",
        data.replace('\n', " ")
    ));
    w.write_all(text.as_bytes())?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(bytes: &[u8]) -> Scan {
        HeadScanner::new().scan(bytes)
    }

    fn scan_trickled(bytes: &[u8]) -> Scan {
        let mut s = HeadScanner::new();
        for n in 1..=bytes.len() {
            match s.scan(&bytes[..n]) {
                Scan::Incomplete => {}
                other => return other,
            }
        }
        Scan::Incomplete
    }

    #[test]
    fn scanner_finds_the_head_whole_or_trickled() {
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        assert_eq!(scan_all(req), Scan::Complete(27));
        assert_eq!(scan_trickled(req), Scan::Complete(27));
        assert_eq!(scan_all(b"GET / HTTP/1.1\r\nHost: a\r\n"), Scan::Incomplete);
    }

    #[test]
    fn scanner_limits_one_past_each() {
        let line_ok = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_LINE - 14));
        assert_eq!(line_ok.len(), MAX_LINE + 2);
        assert_eq!(scan_all(line_ok.as_bytes()), Scan::Incomplete);
        let line_long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_LINE - 13));
        assert_eq!(
            scan_all(line_long.as_bytes()),
            Scan::Refused(HttpError::new(414, "request line too long"))
        );
        // An endless line is refused before its end arrives.
        let endless = vec![b'a'; MAX_LINE + 2];
        assert!(matches!(scan_all(&endless), Scan::Refused(e) if e.status == 414));
        let header_long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "b".repeat(MAX_LINE - 2));
        assert!(matches!(scan_all(header_long.as_bytes()), Scan::Refused(e) if e.status == 431));
        let header_ok = format!("GET / HTTP/1.1\r\nX: {}\r\n", "b".repeat(MAX_LINE - 3));
        assert_eq!(scan_all(header_ok.as_bytes()), Scan::Incomplete);
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..MAX_HEADERS {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        let mut ok = many.clone();
        ok.push_str("\r\n");
        assert!(matches!(scan_all(ok.as_bytes()), Scan::Complete(_)));
        many.push_str("X-last: v\r\n\r\n");
        assert!(matches!(scan_all(many.as_bytes()), Scan::Refused(e) if e.status == 431));
        let mut big = String::from("GET / HTTP/1.1\r\n");
        while big.len() <= MAX_HEAD {
            big.push_str(&format!("X: {}\r\n", "c".repeat(4000)));
        }
        assert!(matches!(scan_all(big.as_bytes()), Scan::Refused(e) if e.status == 431));
    }

    #[test]
    fn scanner_refuses_bare_lf_and_empty_request_line() {
        assert!(
            matches!(scan_all(b"GET / HTTP/1.1\nHost: a\n\n"), Scan::Refused(e) if e.status == 400)
        );
        assert!(matches!(scan_all(b"\r\nGET / HTTP/1.1\r\n"), Scan::Refused(e) if e.status == 400));
    }

    fn parse(text: &str) -> Result<Head, HttpError> {
        parse_head(text.as_bytes())
    }

    #[test]
    fn parses_a_request() {
        let h = parse("POST /api/x?a=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Length: 12\r\nX-CSRF-Token:  t \r\n\r\n").unwrap();
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, "/api/x");
        assert_eq!(h.query, "a=1");
        assert_eq!(h.content_length, 12);
        assert_eq!(h.header("x-csrf-token"), Some("t"));
        assert!(h.wants_keep_alive());
        let h = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n").unwrap();
        assert!(!h.wants_keep_alive());
        let h = parse("GET / HTTP/1.0\r\nHost: a\r\n\r\n").unwrap();
        assert!(!h.wants_keep_alive());
    }

    #[test]
    fn refuses_malformed_heads() {
        let table: &[(&str, u16)] = &[
            ("GET / HTTP/1.1\r\n\r\n", 421),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", 400),
            ("get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET //evil HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            ("GET / FOO\r\nHost: a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n", 400),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                501,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n",
                413,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999\r\n\r\n",
                400,
            ),
        ];
        for (text, status) in table {
            assert_eq!(parse(text).map_err(|e| e.status), Err(*status), "{text:?}");
        }
        assert!(parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n").is_ok());
        assert!(parse_head(b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n").is_err());
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            parse_query("a=1&b=x%20y+z&&c").unwrap(),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y z".into()),
                ("c".into(), String::new())
            ]
        );
        assert!(parse_query("a=%zz").is_err());
        assert!(parse_query("a=%4").is_err());
        assert!(parse_query("a=%ff").is_err());
        assert!(parse_query("a=1&a=2").is_err());
        let many: Vec<String> = (0..=MAX_QUERY_PARAMS).map(|i| format!("p{i}=1")).collect();
        assert!(parse_query(&many.join("&")).is_err());
        assert!(parse_query(&many[1..].join("&")).is_ok());
    }

    #[test]
    fn replies_carry_length_and_security_headers() {
        let r = Response::json(200, "{}".into()).with_header("Set-Cookie", "a=b".into());
        let text = String::from_utf8(serialise(&r, true)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.contains("Content-Security-Policy: default-src 'self'"));
        assert!(text.contains("X-Frame-Options: DENY\r\n"));
        assert!(text.contains("X-Content-Type-Options: nosniff\r\n"));
        assert!(text.contains("Set-Cookie: a=b\r\n"));
        assert!(text.ends_with("keep-alive\r\n\r\n{}"));
    }
}
