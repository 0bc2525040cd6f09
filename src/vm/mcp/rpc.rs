//! JSON-RPC 2.0 as the MCP stdio transport carries it: one message per line, UTF-8,
//! no embedded newlines (JSON-RPC 2.0 specification; MCP "Transports", stdio).
//!
//! This module only frames and classifies: bounded line reading, telling requests,
//! notifications and responses apart, the error codes, and the text of what we send.
//! It knows no method. Everything it writes is built from our own JSON writer or from
//! JSON text this crate produced, so every line it returns is valid JSON and
//! printable ASCII.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};

use crate::json::{self, Value};

/// Longest message line, newline excluded. A longer line is refused with an
/// `InvalidRequest` error and skipped; it is never held in memory whole.
pub const MAX_LINE: usize = 2 << 20;
/// The `jsonrpc` member every message must carry.
pub const JSONRPC_VERSION: &str = "2.0";

/// JSON-RPC error codes (the specification's, and one of the range it leaves to the
/// server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The line is not JSON.
    Parse,
    /// The JSON is not a request object (or the line is too long to be read).
    InvalidRequest,
    /// No such method.
    MethodNotFound,
    /// The method exists, its parameters do not fit (unknown tool, bad arguments).
    InvalidParams,
    /// We failed in a way the request did not cause.
    Internal,
    /// Too many tool calls in flight: try again when one has ended.
    Busy,
}

impl ErrorCode {
    /// The number on the wire.
    pub fn code(self) -> i64 {
        match self {
            ErrorCode::Parse => -32700,
            ErrorCode::InvalidRequest => -32600,
            ErrorCode::MethodNotFound => -32601,
            ErrorCode::InvalidParams => -32602,
            ErrorCode::Internal => -32603,
            ErrorCode::Busy => -32000,
        }
    }
}

/// An error answer: a code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The code.
    pub code: ErrorCode,
    /// One line saying what was wrong.
    pub message: String,
}

impl RpcError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    /// `InvalidParams` with this message.
    pub fn params(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorCode::InvalidParams, message)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code.code())
    }
}

impl std::error::Error for RpcError {}

/// A request id as its JSON text (`7`, `"abc"`): echoed byte for byte, and the key
/// under which an in-flight call is found again for `notifications/cancelled`. A
/// string id and a number id with the same digits are different ids, as they are in
/// JSON-RPC.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// The id of `v`, if it can be one: a string or a number (MCP forbids `null`).
    pub fn from_value(v: &Value) -> Option<RequestId> {
        match v {
            Value::String(_) | Value::Number(_) => Some(RequestId(v.to_json())),
            _ => None,
        }
    }

    /// The id's JSON text.
    pub fn json(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One line read from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line within [`MAX_LINE`], without its newline.
    Message(Vec<u8>),
    /// A line over [`MAX_LINE`]; its bytes were skipped.
    TooLong {
        /// How long it was.
        len: usize,
    },
}

/// Reads newline-delimited messages, holding at most [`MAX_LINE`] bytes of one line
/// (plus the reader's buffer), so a client cannot make us buffer a giant line.
pub struct LineReader<R: Read> {
    inner: BufReader<R>,
}

impl<R: Read> LineReader<R> {
    /// Reads lines from `inner`.
    pub fn new(inner: R) -> LineReader<R> {
        LineReader {
            inner: BufReader::new(inner),
        }
    }

    /// The next line; `None` at the end of input. A last line without a newline is
    /// still a line.
    pub fn next_line(&mut self) -> io::Result<Option<Line>> {
        let mut line = Vec::new();
        let mut len = 0usize;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                return Ok((len > 0).then(|| finished(line, len)));
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let part = match newline {
                Some(i) => available.get(..i).unwrap_or_default(),
                None => available,
            };
            len = len.saturating_add(part.len());
            if len <= MAX_LINE {
                line.extend_from_slice(part);
            } else {
                // Past the limit nothing more is kept; what was kept is freed.
                line = Vec::new();
            }
            let used = part.len() + usize::from(newline.is_some());
            self.inner.consume(used);
            if newline.is_some() {
                return Ok(Some(finished(line, len)));
            }
        }
    }
}

fn finished(line: Vec<u8>, len: usize) -> Line {
    if len > MAX_LINE {
        Line::TooLong { len }
    } else {
        Line::Message(line)
    }
}

/// What a well-formed message is.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// A request: it gets exactly one response (unless it is cancelled).
    Request {
        /// Its id.
        id: RequestId,
        /// The method.
        method: String,
        /// The params, if any (always an object).
        params: Option<Value>,
    },
    /// A notification: it never gets a response.
    Notification {
        /// The method.
        method: String,
        /// The params, if any.
        params: Option<Value>,
    },
    /// A response from the client. We send no requests, so it answers nothing.
    Response,
}

/// A message refused before its method was looked at, with the id to answer (when
/// the message had a usable one).
#[derive(Debug, PartialEq)]
pub struct Refused {
    /// The id, if one could be read.
    pub id: Option<RequestId>,
    /// Why.
    pub error: RpcError,
}

/// Classifies one parsed message.
pub fn classify(v: Value) -> Result<Incoming, Refused> {
    let invalid = |id: Option<RequestId>, message: &str| Refused {
        id,
        error: RpcError::new(ErrorCode::InvalidRequest, message),
    };
    let members = match &v {
        Value::Object(m) => m,
        Value::Array(_) => {
            return Err(invalid(
                None,
                "batches are not supported: send one message per line",
            ))
        }
        _ => return Err(invalid(None, "a message must be a JSON object")),
    };
    let has = |k: &str| members.iter().any(|(name, _)| name == k);
    let id = match v.get("id") {
        None => None,
        Some(raw) => match RequestId::from_value(raw) {
            Some(id) => Some(id),
            None => return Err(invalid(None, "`id` must be a string or a number")),
        },
    };
    if v.get("jsonrpc").and_then(Value::as_str) != Some(JSONRPC_VERSION) {
        return Err(invalid(id, "`jsonrpc` must be \"2.0\""));
    }
    let method = match v.get("method") {
        Some(Value::String(m)) => m.clone(),
        Some(_) => return Err(invalid(id, "`method` must be a string")),
        None if id.is_some() && (has("result") || has("error")) => return Ok(Incoming::Response),
        None => return Err(invalid(id, "`method` is missing")),
    };
    let params = match v.get("params") {
        None => None,
        Some(p @ Value::Object(_)) => Some(p.clone()),
        Some(_) => {
            return Err(Refused {
                id,
                error: RpcError::params("`params` must be an object"),
            })
        }
    };
    Ok(match id {
        Some(id) => Incoming::Request { id, method, params },
        None => Incoming::Notification { method, params },
    })
}

/// A success response; `result` is JSON text.
pub fn response(id: &RequestId, result: &str) -> String {
    format!(
        "{{\"jsonrpc\": \"2.0\", \"id\": {}, \"result\": {result}}}",
        id.json()
    )
}

/// An error response; `null` id when the request's id could not be read.
pub fn error_response(id: Option<&RequestId>, error: &RpcError) -> String {
    let body = json::Object::new()
        .int("code", error.code.code())
        .str("message", &error.message)
        .finish();
    format!(
        "{{\"jsonrpc\": \"2.0\", \"id\": {}, \"error\": {body}}}",
        id.map_or("null", RequestId::json)
    )
}

/// A notification; `params` is JSON text.
pub fn notification(method: &str, params: &str) -> String {
    format!(
        "{{\"jsonrpc\": \"2.0\", \"method\": {}, \"params\": {params}}}",
        json::string(method)
    )
}

/// An object from members whose values are JSON text already (ours: from the writer
/// or from constants checked by tests).
pub fn raw_object(members: &[(&str, &str)]) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        json::write_string(&mut out, k);
        out.push_str(": ");
        out.push_str(v);
    }
    out.push('}');
    out
}

/// An array from elements that are JSON text already.
pub fn raw_array(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<Line> {
        let mut r = LineReader::new(input);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn lines_split_on_newline_and_a_last_line_needs_none() {
        assert_eq!(
            lines(b"a\n\nbc\nd"),
            vec![
                Line::Message(b"a".to_vec()),
                Line::Message(Vec::new()),
                Line::Message(b"bc".to_vec()),
                Line::Message(b"d".to_vec()),
            ]
        );
        assert!(lines(b"").is_empty());
    }

    #[test]
    fn a_line_at_the_limit_is_kept_and_one_byte_more_is_refused() {
        let mut input = vec![b'x'; MAX_LINE];
        input.push(b'\n');
        input.extend(vec![b'y'; MAX_LINE + 1]);
        input.extend_from_slice(b"\nok\n");
        let got = lines(&input);
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[0], Line::Message(m) if m.len() == MAX_LINE));
        assert_eq!(got[1], Line::TooLong { len: MAX_LINE + 1 });
        assert_eq!(got[2], Line::Message(b"ok".to_vec()));
    }

    fn parse(text: &str) -> Value {
        json::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn messages_are_classified_like_the_specification_says() {
        let req = classify(parse(r#"{"jsonrpc": "2.0", "id": 7, "method": "ping"}"#)).unwrap();
        assert_eq!(
            req,
            Incoming::Request {
                id: RequestId("7".into()),
                method: "ping".into(),
                params: None
            }
        );
        let note = classify(parse(
            r#"{"jsonrpc": "2.0", "method": "notifications/initialized"}"#,
        ))
        .unwrap();
        assert!(matches!(note, Incoming::Notification { .. }));
        let resp = classify(parse(r#"{"jsonrpc": "2.0", "id": "a", "result": {}}"#)).unwrap();
        assert_eq!(resp, Incoming::Response);
        let table: &[(&str, Option<&str>, ErrorCode)] = &[
            ("[]", None, ErrorCode::InvalidRequest),
            ("3", None, ErrorCode::InvalidRequest),
            (
                r#"{"jsonrpc": "2.0", "id": null, "method": "x"}"#,
                None,
                ErrorCode::InvalidRequest,
            ),
            (
                r#"{"jsonrpc": "2.0", "id": true, "method": "x"}"#,
                None,
                ErrorCode::InvalidRequest,
            ),
            (
                r#"{"id": 1, "method": "ping"}"#,
                Some("1"),
                ErrorCode::InvalidRequest,
            ),
            (
                r#"{"jsonrpc": "1.0", "id": "q", "method": "ping"}"#,
                Some("\"q\""),
                ErrorCode::InvalidRequest,
            ),
            (
                r#"{"jsonrpc": "2.0", "id": 2}"#,
                Some("2"),
                ErrorCode::InvalidRequest,
            ),
            (
                r#"{"jsonrpc": "2.0", "id": 2, "method": 5}"#,
                Some("2"),
                ErrorCode::InvalidRequest,
            ),
            (
                r#"{"jsonrpc": "2.0", "id": 2, "method": "x", "params": [1]}"#,
                Some("2"),
                ErrorCode::InvalidParams,
            ),
        ];
        for (text, id, code) in table {
            let refused = classify(parse(text)).unwrap_err();
            assert_eq!(refused.id.as_ref().map(RequestId::json), *id, "{text}");
            assert_eq!(refused.error.code, *code, "{text}");
        }
    }

    #[test]
    fn what_we_send_is_json_that_reads_back() {
        let id = RequestId::from_value(&Value::String("a\"b".into())).unwrap();
        for text in [
            response(&id, "{}"),
            error_response(Some(&id), &RpcError::params("bad \u{7}")),
            error_response(None, &RpcError::new(ErrorCode::Parse, "x")),
            notification("notifications/progress", &raw_object(&[("a", "1")])),
            raw_array(&["1".into(), "\"x\"".into()]),
        ] {
            let v = json::parse(text.as_bytes()).unwrap();
            assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)), "{text}");
            assert!(v.kind() == "object" || v.kind() == "array");
        }
        let v = json::parse(error_response(None, &RpcError::params("m")).as_bytes()).unwrap();
        assert_eq!(v.get("id"), Some(&Value::Null));
        assert_eq!(
            v.get("error").and_then(|e| e.get("code")),
            Some(&Value::Number(-32602.0))
        );
    }
}
