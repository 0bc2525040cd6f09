//! A small JSON writer (RFC 8259): string escaping and object/array builders.
//!
//! Used for `qvm-remote --json` (DESIGN §5 exit codes, carried in the object) and,
//! later, the admin panel's API (DESIGN §8). Writing only: a parser will live beside
//! this, and nothing here depends on it.
//!
//! Architecture invariant: the text this module produces is always printable ASCII.
//! Every control character, `"` and `\`, DEL, and every non-ASCII character is escaped
//! (`\uXXXX`, as a UTF-16 surrogate pair above U+FFFF). Command output can therefore be
//! shown in a terminal, a log or an HTML page inside a JSON value without carrying
//! escape sequences, bidirectional overrides or invisible characters with it; a JSON
//! parser still gets back exactly the original string.

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
