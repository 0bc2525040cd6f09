//! A small JSON writer (RFC 8259): string escaping and object/array builders.
//!
//! Used for `qvm-remote --json` (DESIGN §5 exit codes, carried in the object) and the
//! admin panel's API (DESIGN §8). The panel also reads JSON request bodies, so a bounded
//! parser ([`parse`], [`Value`]) lives beside the writer; the writer does not depend on
//! it.
//!
//! Architecture invariant: the text this module produces is always printable ASCII.
//! Every control character, `"` and `\`, DEL, and every non-ASCII character is escaped
//! (`\uXXXX`, as a UTF-16 surrogate pair above U+FFFF). Command output can therefore be
//! shown in a terminal, a log or an HTML page inside a JSON value without carrying
//! escape sequences, bidirectional overrides or invisible characters with it; a JSON
//! parser still gets back exactly the original string.

use std::fmt;
use std::fmt::Write as _;

/// Appends `s` to `out` as a JSON string literal, quotes included.
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// `s` as a JSON string literal, quotes included.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_string(&mut out, s);
    out
}

/// Builds one JSON object. Members appear in the order they are added; the caller
/// does not add a key twice (RFC 8259 leaves duplicates undefined).
#[derive(Debug, Clone)]
pub struct Object {
    buf: String,
    empty: bool,
}

impl Default for Object {
    fn default() -> Object {
        Object::new()
    }
}

impl Object {
    /// An empty object.
    pub fn new() -> Object {
        Object {
            buf: String::from("{"),
            empty: true,
        }
    }

    fn key(&mut self, key: &str) {
        if !self.empty {
            self.buf.push_str(", ");
        }
        self.empty = false;
        write_string(&mut self.buf, key);
        self.buf.push_str(": ");
    }

    /// Adds a string member.
    pub fn str(mut self, key: &str, value: &str) -> Object {
        self.key(key);
        write_string(&mut self.buf, value);
        self
    }

    /// Adds an unsigned number member.
    pub fn uint(mut self, key: &str, value: u64) -> Object {
        self.key(key);
        let _ = write!(self.buf, "{value}");
        self
    }

    /// Adds a signed number member.
    pub fn int(mut self, key: &str, value: i64) -> Object {
        self.key(key);
        let _ = write!(self.buf, "{value}");
        self
    }

    /// Adds a boolean member.
    pub fn bool(mut self, key: &str, value: bool) -> Object {
        self.key(key);
        self.buf.push_str(if value { "true" } else { "false" });
        self
    }

    /// Adds a `null` member.
    pub fn null(mut self, key: &str) -> Object {
        self.key(key);
        self.buf.push_str("null");
        self
    }

    /// Adds a nested object.
    pub fn object(mut self, key: &str, value: Object) -> Object {
        self.key(key);
        self.buf.push_str(&value.finish());
        self
    }

    /// Adds a nested array.
    pub fn array(mut self, key: &str, value: Array) -> Object {
        self.key(key);
        self.buf.push_str(&value.finish());
        self
    }

    /// The object's text.
    pub fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }
}

/// Builds one JSON array.
#[derive(Debug, Clone)]
pub struct Array {
    buf: String,
    empty: bool,
}

impl Default for Array {
    fn default() -> Array {
        Array::new()
    }
}

impl Array {
    /// An empty array.
    pub fn new() -> Array {
        Array {
            buf: String::from("["),
            empty: true,
        }
    }

    fn sep(&mut self) {
        if !self.empty {
            self.buf.push_str(", ");
        }
        self.empty = false;
    }

    /// Appends a string.
    pub fn str(mut self, value: &str) -> Array {
        self.sep();
        write_string(&mut self.buf, value);
        self
    }

    /// Appends an unsigned number.
    pub fn uint(mut self, value: u64) -> Array {
        self.sep();
        let _ = write!(self.buf, "{value}");
        self
    }

    /// Appends a signed number.
    pub fn int(mut self, value: i64) -> Array {
        self.sep();
        let _ = write!(self.buf, "{value}");
        self
    }

    /// Appends a boolean.
    pub fn bool(mut self, value: bool) -> Array {
        self.sep();
        self.buf.push_str(if value { "true" } else { "false" });
        self
    }

    /// Appends `null`.
    pub fn null(mut self) -> Array {
        self.sep();
        self.buf.push_str("null");
        self
    }

    /// Appends an object.
    pub fn object(mut self, value: Object) -> Array {
        self.sep();
        self.buf.push_str(&value.finish());
        self
    }

    /// Appends an array.
    pub fn array(mut self, value: Array) -> Array {
        self.sep();
        self.buf.push_str(&value.finish());
        self
    }

    /// The array's text.
    pub fn finish(mut self) -> String {
        self.buf.push(']');
        self.buf
    }
}

// ---------------------------------------------------------------------------------
// The parser (RFC 8259), for the admin panel's request bodies (DESIGN §8).
//
// Every input it sees comes from a browser request, so it is bounded on every axis by
// a named limit, never recurses deeper than MAX_DEPTH (checked before descending, so
// hostile nesting cannot overflow the stack), never indexes without a bounds check,
// and reports the byte offset of the first problem. It is stricter than the RFC
// allows in two places that only matter to hostile input: duplicate object keys are
// an error (RFC 8259 leaves their meaning open, and two layers reading "the" value
// differently is how request smuggling starts), and so are unpaired UTF-16 surrogates
// in `\u` escapes (they cannot become a Rust `String`).

/// Largest input [`parse`] accepts, in bytes: the panel's body limit.
pub const MAX_PARSE_INPUT: usize = 1024 * 1024;
/// Deepest nesting of arrays and objects [`parse`] accepts.
pub const MAX_DEPTH: usize = 64;
/// Most values (of any kind, nested ones included) in one document.
pub const MAX_VALUES: usize = 100_000;
/// Longest number literal, in bytes. Longer ones carry no more precision in an f64.
pub const MAX_NUMBER_LEN: usize = 64;

/// A parsed JSON value. Objects keep their members in document order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number; always finite.
    Number(f64),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object: members in document order, keys unique.
    Object(Vec<(String, Value)>),
}

/// Why [`parse`] refused its input. Offsets are in bytes from the start of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The input is longer than the limit ([`MAX_PARSE_INPUT`] for [`parse`]).
    TooLarge {
        /// The input's length.
        len: usize,
        /// The limit it broke.
        max: usize,
    },
    /// The input is not UTF-8.
    NotUtf8 {
        /// Where the first bad byte is.
        offset: usize,
    },
    /// Arrays and objects nest deeper than [`MAX_DEPTH`].
    TooDeep {
        /// Where the level past the limit opens.
        offset: usize,
    },
    /// The document holds more than [`MAX_VALUES`] values.
    TooManyValues,
    /// The input ended inside a value.
    UnexpectedEnd,
    /// A character that cannot start or continue a value here.
    Unexpected {
        /// Where.
        offset: usize,
        /// What was expected instead.
        expected: &'static str,
    },
    /// A bad `\` escape or an unpaired surrogate in a string.
    BadEscape {
        /// Where the escape starts.
        offset: usize,
    },
    /// A raw control character (below U+0020) inside a string.
    ControlInString {
        /// Where.
        offset: usize,
    },
    /// A number that does not follow the grammar, is too long, or is not finite.
    BadNumber {
        /// Where it starts.
        offset: usize,
    },
    /// An object names the same key twice.
    DuplicateKey {
        /// Where the second one starts.
        offset: usize,
    },
    /// Something other than whitespace follows the value.
    TrailingData {
        /// Where.
        offset: usize,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TooLarge { len, max } => {
                write!(f, "JSON input of {len} bytes is over {max}")
            }
            ParseError::NotUtf8 { offset } => write!(f, "byte {offset}: not UTF-8"),
            ParseError::TooDeep { offset } => {
                write!(f, "byte {offset}: nested deeper than {MAX_DEPTH}")
            }
            ParseError::TooManyValues => write!(f, "more than {MAX_VALUES} values"),
            ParseError::UnexpectedEnd => write!(f, "unexpected end of input"),
            ParseError::Unexpected { offset, expected } => {
                write!(f, "byte {offset}: expected {expected}")
            }
            ParseError::BadEscape { offset } => write!(f, "byte {offset}: bad escape"),
            ParseError::ControlInString { offset } => {
                write!(f, "byte {offset}: control character in a string")
            }
            ParseError::BadNumber { offset } => write!(f, "byte {offset}: bad number"),
            ParseError::DuplicateKey { offset } => write!(f, "byte {offset}: duplicate key"),
            ParseError::TrailingData { offset } => {
                write!(f, "byte {offset}: data after the value")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses one JSON document from bytes (which must be UTF-8), surrounding whitespace
/// allowed.
pub fn parse(input: &[u8]) -> Result<Value, ParseError> {
    parse_limited(input, MAX_PARSE_INPUT)
}

/// [`parse`] with a caller's own size limit, for a protocol whose messages may be larger
/// (the MCP server takes lines of up to 2 MiB: a command and its stdin of up to 1 MiB
/// each). The depth and value-count limits stay.
pub fn parse_limited(input: &[u8], max: usize) -> Result<Value, ParseError> {
    if input.len() > max {
        return Err(ParseError::TooLarge {
            len: input.len(),
            max,
        });
    }
    let text = std::str::from_utf8(input).map_err(|e| ParseError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let mut p = Parser {
        s: text.as_bytes(),
        text,
        pos: 0,
        values: 0,
    };
    p.skip_ws();
    let v = p.value(0)?;
    p.skip_ws();
    if p.pos < p.s.len() {
        return Err(ParseError::TrailingData { offset: p.pos });
    }
    Ok(v)
}

impl Value {
    /// The member `key` of an object; `None` for a missing key or a non-object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The number as a whole number, if it is one from 0 to 2^53 (the range an f64
    /// holds exactly).
    pub fn as_u64(&self) -> Option<u64> {
        const EXACT: f64 = 9_007_199_254_740_992.0;
        match self {
            Value::Number(n) if n.fract() == 0.0 && (0.0..=EXACT).contains(n) => Some(*n as u64),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The members, if this is an object.
    pub fn as_object(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The JSON kind's name, for error messages: `null`, `boolean`, `number`, `string`,
    /// `array` or `object`.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// The value as JSON text (printable ASCII, like everything this module writes).
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    fn write_json(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => {
                // Both forms of a finite f64 are valid JSON and read back to the same
                // number; plain digits are kept for ordinary sizes, the exponent form
                // for very large or small ones, which stays under MAX_NUMBER_LEN.
                let plain = format!("{n}");
                if plain.len() <= 24 {
                    out.push_str(&plain);
                } else {
                    let _ = write!(out, "{n:e}");
                }
            }
            Value::String(s) => write_string(out, s),
            Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    v.write_json(out);
                }
                out.push(']');
            }
            Value::Object(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_string(out, k);
                    out.push_str(": ");
                    v.write_json(out);
                }
                out.push('}');
            }
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
    values: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect_byte(&mut self, b: u8, expected: &'static str) -> Result<(), ParseError> {
        match self.peek() {
            Some(c) if c == b => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(ParseError::Unexpected {
                offset: self.pos,
                expected,
            }),
            None => Err(ParseError::UnexpectedEnd),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(ParseError::TooManyValues);
        }
        match self.peek() {
            None => Err(ParseError::UnexpectedEnd),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(ParseError::Unexpected {
                offset: self.pos,
                expected: "a value",
            }),
        }
    }

    fn literal(&mut self, word: &'static str, v: Value) -> Result<Value, ParseError> {
        let end = self.pos + word.len();
        match self.s.get(self.pos..end) {
            Some(got) if got == word.as_bytes() => {
                self.pos = end;
                Ok(v)
            }
            Some(_) => Err(ParseError::Unexpected {
                offset: self.pos,
                expected: "a value",
            }),
            None => Err(ParseError::UnexpectedEnd),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return Err(ParseError::TooDeep { offset: self.pos });
        }
        self.pos += 1;
        let mut members: Vec<(String, Value)> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_ws();
            let key_at = self.pos;
            if self.peek() != Some(b'"') {
                return match self.peek() {
                    None => Err(ParseError::UnexpectedEnd),
                    Some(_) => Err(ParseError::Unexpected {
                        offset: self.pos,
                        expected: "a string key",
                    }),
                };
            }
            let key = self.string()?;
            if members.iter().any(|(k, _)| *k == key) {
                return Err(ParseError::DuplicateKey { offset: key_at });
            }
            self.skip_ws();
            self.expect_byte(b':', "':'")?;
            self.skip_ws();
            let v = self.value(depth)?;
            members.push((key, v));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(members));
                }
                Some(_) => {
                    return Err(ParseError::Unexpected {
                        offset: self.pos,
                        expected: "',' or '}'",
                    })
                }
                None => return Err(ParseError::UnexpectedEnd),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return Err(ParseError::TooDeep { offset: self.pos });
        }
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                Some(_) => {
                    return Err(ParseError::Unexpected {
                        offset: self.pos,
                        expected: "',' or ']'",
                    })
                }
                None => return Err(ParseError::UnexpectedEnd),
            }
        }
    }

    /// A string starting at the opening quote.
    fn string(&mut self) -> Result<String, ParseError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            // Copy the longest run without a quote, backslash or control character in
            // one step; the run is valid UTF-8 because the whole input is and it stops
            // only at ASCII bytes.
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            if let Some(run) = self.text.get(run_start..self.pos) {
                out.push_str(run);
            }
            match self.peek() {
                None => return Err(ParseError::UnexpectedEnd),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    let at = self.pos;
                    self.pos += 1;
                    let c = match self.peek() {
                        None => return Err(ParseError::UnexpectedEnd),
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.pos += 1;
                            let c = self.unicode_escape(at)?;
                            out.push(c);
                            continue;
                        }
                        Some(_) => return Err(ParseError::BadEscape { offset: at }),
                    };
                    self.pos += 1;
                    out.push(c);
                }
                Some(_) => return Err(ParseError::ControlInString { offset: self.pos }),
            }
        }
    }

    /// The code point of `\uXXXX` (and a following `\uXXXX` low surrogate when the
    /// first is a high one); `pos` is just past the first `u`.
    fn unicode_escape(&mut self, at: usize) -> Result<char, ParseError> {
        let first = self.hex4(at)?;
        let code = match first {
            0xD800..=0xDBFF => {
                if self.s.get(self.pos..self.pos + 2) != Some(b"\\u".as_slice()) {
                    return Err(ParseError::BadEscape { offset: at });
                }
                self.pos += 2;
                let second = self.hex4(at)?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(ParseError::BadEscape { offset: at });
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(ParseError::BadEscape { offset: at }),
            c => c,
        };
        char::from_u32(code).ok_or(ParseError::BadEscape { offset: at })
    }

    fn hex4(&mut self, at: usize) -> Result<u32, ParseError> {
        let digits = self
            .s
            .get(self.pos..self.pos + 4)
            .ok_or(ParseError::UnexpectedEnd)?;
        let mut v = 0u32;
        for &d in digits {
            let n = char::from(d)
                .to_digit(16)
                .ok_or(ParseError::BadEscape { offset: at })?;
            v = v * 16 + n;
        }
        self.pos += 4;
        Ok(v)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        let bad = ParseError::BadNumber { offset: start };
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(bad),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(bad);
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(bad);
            }
            self.digits();
        }
        if self.pos - start > MAX_NUMBER_LEN {
            return Err(bad);
        }
        let n: f64 = self
            .text
            .get(start..self.pos)
            .and_then(|t| t.parse().ok())
            .ok_or(ParseError::BadNumber { offset: start })?;
        if !n.is_finite() {
            return Err(ParseError::BadNumber { offset: start });
        }
        Ok(Value::Number(n))
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_per_rfc_8259() {
        let table: &[(&str, &str)] = &[
            ("", r#""""#),
            ("plain text", r#""plain text""#),
            ("say \"hi\"", r#""say \"hi\"""#),
            ("back\\slash", r#""back\\slash""#),
            ("a/b", r#""a/b""#),
            ("\n\r\t\u{8}\u{c}", r#""\n\r\t\b\f""#),
            ("\u{0}\u{1}\u{1f}", r#""\u0000\u0001\u001f""#),
            ("\u{1b}[31m", r#""\u001b[31m""#),
            ("\u{7f}", r#""\u007f""#),
            ("é", r#""\u00e9""#),
            ("\u{2028}\u{202e}", r#""\u2028\u202e""#),
            ("\u{ffff}", r#""\uffff""#),
            // Above the BMP: a UTF-16 surrogate pair.
            ("😀", r#""\ud83d\ude00""#),
            ("\u{10000}", r#""\ud800\udc00""#),
            ("\u{10ffff}", r#""\udbff\udfff""#),
            ("\u{fffd}", r#""\ufffd""#),
        ];
        for (input, want) in table {
            assert_eq!(string(input), *want, "{input:?}");
        }
    }

    #[test]
    fn output_is_always_printable_ascii() {
        let mut all = String::new();
        for c in (0u32..0x3000)
            .chain(0x1_0000..0x1_0100)
            .filter_map(char::from_u32)
        {
            all.push(c);
        }
        let s = string(&all);
        assert!(s.bytes().all(|b| (0x20..=0x7e).contains(&b)));
    }

    #[test]
    fn builders_nest_and_separate() {
        assert_eq!(Object::new().finish(), "{}");
        assert_eq!(Array::new().finish(), "[]");
        let o = Object::new()
            .str("id", "x")
            .uint("exit", 3)
            .int("delta", -4)
            .bool("ok", false)
            .null("none")
            .array(
                "list",
                Array::new()
                    .str("a")
                    .uint(1)
                    .int(-1)
                    .bool(true)
                    .null()
                    .object(Object::new())
                    .array(Array::new()),
            )
            .object("inner", Object::new().str("k\"", "v\n"))
            .finish();
        assert_eq!(
            o,
            r#"{"id": "x", "exit": 3, "delta": -4, "ok": false, "none": null, "list": ["a", 1, -1, true, null, {}, []], "inner": {"k\"": "v\n"}}"#
        );
        assert_eq!(Object::default().finish(), "{}");
        assert_eq!(Array::default().finish(), "[]");
        assert_eq!(
            Object::new()
                .uint("max", u64::MAX)
                .int("min", i64::MIN)
                .finish(),
            r#"{"max": 18446744073709551615, "min": -9223372036854775808}"#
        );
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    fn obj(members: &[(&str, Value)]) -> Value {
        Value::Object(
            members
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn accepts_the_grammar() {
        let table: &[(&str, Value)] = &[
            ("null", Value::Null),
            (" true ", Value::Bool(true)),
            ("false", Value::Bool(false)),
            ("0", Value::Number(0.0)),
            ("-0", Value::Number(0.0)),
            ("12", Value::Number(12.0)),
            ("-1.5e2", Value::Number(-150.0)),
            ("1E+2", Value::Number(100.0)),
            ("2.5e-1", Value::Number(0.25)),
            (r#""""#, Value::String(String::new())),
            (
                r#""a\"\\\/\b\f\n\r\t""#,
                Value::String("a\"\\/\u{8}\u{c}\n\r\t".into()),
            ),
            (r#""\u00e9\ud83d\ude00""#, Value::String("é😀".into())),
            ("\"é😀\"", Value::String("é😀".into())),
            ("[]", Value::Array(vec![])),
            (
                "[1, [2], {}]",
                Value::Array(vec![
                    Value::Number(1.0),
                    Value::Array(vec![Value::Number(2.0)]),
                    obj(&[]),
                ]),
            ),
            (
                "{\"a\": 1, \"b\": [true, null]}",
                obj(&[
                    ("a", Value::Number(1.0)),
                    ("b", Value::Array(vec![Value::Bool(true), Value::Null])),
                ]),
            ),
            ("\n\t{ }\r\n", obj(&[])),
        ];
        for (text, want) in table {
            assert_eq!(parse(text.as_bytes()).as_ref(), Ok(want), "{text}");
        }
    }

    #[test]
    fn refuses_what_the_grammar_does_not_allow() {
        let table: &[(&[u8], ParseError)] = &[
            (b"", ParseError::UnexpectedEnd),
            (b"   ", ParseError::UnexpectedEnd),
            (b"nul", ParseError::UnexpectedEnd),
            (
                b"nulx",
                ParseError::Unexpected {
                    offset: 0,
                    expected: "a value",
                },
            ),
            (b"01", ParseError::TrailingData { offset: 1 }),
            (b"1.", ParseError::BadNumber { offset: 0 }),
            (
                b".5",
                ParseError::Unexpected {
                    offset: 0,
                    expected: "a value",
                },
            ),
            (b"-", ParseError::BadNumber { offset: 0 }),
            (b"1e", ParseError::BadNumber { offset: 0 }),
            (
                b"+1",
                ParseError::Unexpected {
                    offset: 0,
                    expected: "a value",
                },
            ),
            (b"1e400", ParseError::BadNumber { offset: 0 }),
            (
                b"NaN",
                ParseError::Unexpected {
                    offset: 0,
                    expected: "a value",
                },
            ),
            (
                b"[1,]",
                ParseError::Unexpected {
                    offset: 3,
                    expected: "a value",
                },
            ),
            (
                b"[1 2]",
                ParseError::Unexpected {
                    offset: 3,
                    expected: "',' or ']'",
                },
            ),
            (
                b"{\"a\" 1}",
                ParseError::Unexpected {
                    offset: 5,
                    expected: "':'",
                },
            ),
            (
                b"{a: 1}",
                ParseError::Unexpected {
                    offset: 1,
                    expected: "a string key",
                },
            ),
            (
                b"{\"a\": 1,}",
                ParseError::Unexpected {
                    offset: 8,
                    expected: "a string key",
                },
            ),
            (
                b"{\"a\": 1, \"a\": 2}",
                ParseError::DuplicateKey { offset: 9 },
            ),
            (b"\"abc", ParseError::UnexpectedEnd),
            (b"\"a\nb\"", ParseError::ControlInString { offset: 2 }),
            (b"\"\\x\"", ParseError::BadEscape { offset: 1 }),
            (b"\"\\u12zz\"", ParseError::BadEscape { offset: 1 }),
            (b"\"\\u12\"", ParseError::UnexpectedEnd),
            (b"\"\\ud800\"", ParseError::BadEscape { offset: 1 }),
            (b"\"\\udc00\"", ParseError::BadEscape { offset: 1 }),
            (b"\"\\ud800\\u0041\"", ParseError::BadEscape { offset: 1 }),
            (b"\"\xff\"", ParseError::NotUtf8 { offset: 1 }),
            (b"[] []", ParseError::TrailingData { offset: 3 }),
            (
                b"\x00",
                ParseError::Unexpected {
                    offset: 0,
                    expected: "a value",
                },
            ),
        ];
        for (text, want) in table {
            assert_eq!(
                parse(text).as_ref(),
                Err(want),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn every_limit_is_enforced_one_past_it() {
        // Depth: MAX_DEPTH levels parse, one more does not.
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(ok.as_bytes()).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(
            parse(deep.as_bytes()),
            Err(ParseError::TooDeep { offset: MAX_DEPTH })
        );
        // Far deeper than any stack could take: refused, not a crash.
        let hostile = "[{\"a\":".repeat(200_000);
        assert!(matches!(
            parse(&hostile.as_bytes()[..MAX_PARSE_INPUT]),
            Err(ParseError::TooDeep { .. })
        ));
        // Size.
        let mut big = vec![b' '; MAX_PARSE_INPUT];
        big[0] = b'1';
        assert_eq!(parse(&big), Ok(Value::Number(1.0)));
        big.push(b' ');
        assert_eq!(
            parse(&big),
            Err(ParseError::TooLarge {
                len: MAX_PARSE_INPUT + 1,
                max: MAX_PARSE_INPUT
            })
        );
        // Values.
        let many = format!("[{}0]", "0,".repeat(MAX_VALUES - 2));
        assert!(parse(many.as_bytes()).is_ok());
        let too_many = format!("[{}0]", "0,".repeat(MAX_VALUES - 1));
        assert_eq!(parse(too_many.as_bytes()), Err(ParseError::TooManyValues));
        // Number length.
        let long = format!("1.{}", "0".repeat(MAX_NUMBER_LEN - 2));
        assert!(parse(long.as_bytes()).is_ok());
        let longer = format!("1.{}", "0".repeat(MAX_NUMBER_LEN - 1));
        assert_eq!(
            parse(longer.as_bytes()),
            Err(ParseError::BadNumber { offset: 0 })
        );
    }

    #[test]
    fn accessors_answer_only_for_their_kind() {
        let v = parse(br#"{"s": "x", "n": 3, "f": 1.5, "b": true, "a": [1], "neg": -1}"#).unwrap();
        assert_eq!(v.get("s").and_then(Value::as_str), Some("x"));
        assert_eq!(v.get("n").and_then(Value::as_u64), Some(3));
        assert_eq!(v.get("f").and_then(Value::as_u64), None);
        assert_eq!(v.get("neg").and_then(Value::as_u64), None);
        assert_eq!(v.get("b").and_then(Value::as_bool), Some(true));
        assert_eq!(
            v.get("a").and_then(Value::as_array).map(<[Value]>::len),
            Some(1)
        );
        assert_eq!(v.get("missing"), None);
        assert_eq!(v.get("s").and_then(Value::as_bool), None);
        assert_eq!(Value::Null.get("x"), None);
        assert_eq!(v.as_object().map(<[(String, Value)]>::len), Some(6));
        assert_eq!(v.kind(), "object");
        assert_eq!(
            parse(b"9007199254740993").unwrap().as_u64(),
            Some(9_007_199_254_740_992)
        );
        assert_eq!(parse(b"1e300").unwrap().as_u64(), None);
    }

    /// xorshift64*: a seeded generator, so a failure names a seed that reproduces it.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn seed() -> u64 {
        std::env::var("QVM_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_1234_abcd_0042)
    }

    fn iterations() -> usize {
        std::env::var("QVM_FUZZ_ITERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3000)
    }

    fn random_string(rng: &mut Rng) -> String {
        const PIECES: &[&str] = &[
            "a", "Z", " ", "\"", "\\", "/", "\n", "\u{0}", "\u{1f}", "\u{7f}", "é", "😀",
            "\u{2028}", "\u{fffd}", "$(x)", "`", "'", ";", "-",
        ];
        let n = rng.below(8);
        (0..n)
            .map(|_| PIECES[rng.below(PIECES.len() as u64) as usize])
            .collect()
    }

    fn random_value(rng: &mut Rng, depth: usize) -> Value {
        let kinds = if depth >= 6 { 4 } else { 6 };
        match rng.below(kinds) {
            0 => Value::Null,
            1 => Value::Bool(rng.below(2) == 1),
            2 => {
                let whole = (rng.next() >> 12) as f64 * if rng.below(2) == 1 { -1.0 } else { 1.0 };
                let frac = [0.0, 0.5, 0.25, 0.1, 1e-7][rng.below(5) as usize];
                Value::Number(whole + frac)
            }
            3 => Value::String(random_string(rng)),
            4 => Value::Array(
                (0..rng.below(5))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
            _ => {
                let mut members: Vec<(String, Value)> = Vec::new();
                for i in 0..rng.below(5) {
                    let key = format!("{}{i}", random_string(rng));
                    members.push((key, random_value(rng, depth + 1)));
                }
                Value::Object(members)
            }
        }
    }

    #[test]
    fn fuzz_round_trip_and_mutations_never_panic() {
        let seed = seed();
        let mut rng = Rng(seed | 1);
        for i in 0..iterations() {
            let v = random_value(&mut rng, 0);
            let text = v.to_json();
            assert!(text.bytes().all(|b| (0x20..=0x7e).contains(&b)));
            assert_eq!(
                parse(text.as_bytes()).as_ref(),
                Ok(&v),
                "seed {seed} iter {i}: {text}"
            );
            // Mutate: flip, insert, delete or truncate, a few times; the parser must
            // answer (either way) without panicking, and anything it accepts must
            // round-trip through the writer.
            let mut bytes = text.into_bytes();
            for _ in 0..=rng.below(4) {
                let at = rng.below(bytes.len() as u64 + 1) as usize;
                match rng.below(4) {
                    0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
                    1 => {
                        let alphabet = b"{}[]\",:\\u0-1e.tfn \x00\xff";
                        bytes.insert(at, alphabet[rng.below(alphabet.len() as u64) as usize]);
                    }
                    2 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.truncate(at),
                }
            }
            if let Ok(parsed) = parse(&bytes) {
                assert_eq!(
                    parse(parsed.to_json().as_bytes()).as_ref(),
                    Ok(&parsed),
                    "seed {seed} iter {i}"
                );
            }
        }
        // Pure noise too.
        for _ in 0..iterations() {
            let len = rng.below(64) as usize;
            let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = parse(&noise);
        }
    }
}
