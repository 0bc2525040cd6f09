//! A tiny command-line parser in the manner of pico-args: one file, no dependencies,
//! an error enum with a hand-written `Display`.
//!
//! It is a cursor over the words, not a declarative spec, because the client's grammar
//! (DESIGN §5) puts options only before the command and treats every word after it as
//! data: the caller asks for options while they come, then takes the rest verbatim.
//! Unlike pico-args it never indexes into argv, so an empty argv (a program started
//! with no argv[0] at all) is just "no arguments". Words are kept as `OsString` so a
//! command's bytes reach dom0 exactly as typed, UTF-8 or not; words that name things
//! (options, subcommands, numbers) must be UTF-8.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::ops::RangeInclusive;
use std::os::unix::ffi::OsStrExt;
use std::str::FromStr;

/// How much of a user-supplied word an error message quotes.
pub const MAX_QUOTED: usize = 80;

/// Why a command line was refused. Quoted words are escaped and cut to
/// [`MAX_QUOTED`] bytes, so an error message cannot carry terminal escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    /// An option this command does not have.
    UnknownOption(String),
    /// An option that takes a value came last.
    MissingValue(&'static str),
    /// An option's value, or a numeric argument, is not acceptable.
    BadValue {
        /// The option or argument name.
        option: &'static str,
        /// The value given, escaped.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// A required argument is absent.
    MissingArgument(&'static str),
    /// Words were left over.
    Unexpected(String),
    /// A word that must be text is not UTF-8.
    NotUnicode(String),
    /// An option was given to a subcommand that does not use it.
    NotApplicable {
        /// The option.
        option: &'static str,
        /// The subcommand.
        subcommand: &'static str,
    },
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::UnknownOption(o) => write!(f, "unknown option {o}"),
            ArgError::MissingValue(o) => write!(f, "option {o} needs a value"),
            ArgError::BadValue {
                option,
                value,
                expected,
            } => write!(f, "bad value {value:?} for {option}: expected {expected}"),
            ArgError::MissingArgument(what) => write!(f, "missing {what}"),
            ArgError::Unexpected(w) => write!(f, "unexpected argument {w:?}"),
            ArgError::NotUnicode(w) => write!(f, "argument {w:?} is not valid UTF-8"),
            ArgError::NotApplicable { option, subcommand } => {
                write!(f, "option {option} does not apply to `{subcommand}`")
            }
        }
    }
}

impl std::error::Error for ArgError {}

/// The words of a command line, consumed front to back.
#[derive(Debug, Clone)]
pub struct Args {
    words: Vec<OsString>,
    next: usize,
}

impl Args {
    /// The process's arguments, without the program name. An empty argv is fine.
    pub fn from_env() -> Args {
        Args::new(std::env::args_os().skip(1).collect())
    }

    /// Wraps words (without the program name).
    pub fn new(words: Vec<OsString>) -> Args {
        Args { words, next: 0 }
    }

    /// The next word, if any, without consuming it.
    pub fn peek(&self) -> Option<&OsStr> {
        self.words.get(self.next).map(OsString::as_os_str)
    }

    /// The next word if it is UTF-8.
    pub fn peek_str(&self) -> Option<&str> {
        self.peek().and_then(OsStr::to_str)
    }

    /// True when every word has been consumed.
    pub fn is_empty(&self) -> bool {
        self.next >= self.words.len()
    }

    /// True when the next word looks like an option: `-` followed by something.
    pub fn at_option(&self) -> bool {
        self.peek()
            .is_some_and(|w| w.len() > 1 && w.as_bytes().first() == Some(&b'-'))
    }

    /// Consumes the next word if it is one of `names`, and says which it was.
    pub fn eat(&mut self, names: &[&'static str]) -> Option<&'static str> {
        let word = self.peek_str()?;
        let hit = names.iter().copied().find(|&n| n == word)?;
        self.next += 1;
        Some(hit)
    }

    /// Consumes the next word as the value of `option` (which the caller has just
    /// eaten). A value may start with `-`: `-t -1` is a bad number, not a missing one.
    pub fn value(&mut self, option: &'static str) -> Result<String, ArgError> {
        let word = self.peek().ok_or(ArgError::MissingValue(option))?;
        let text = word
            .to_str()
            .ok_or_else(|| ArgError::NotUnicode(quote(word)))?
            .to_string();
        self.next += 1;
        Ok(text)
    }

    /// Consumes the next word, which must be text; `None` when there is none.
    pub fn word(&mut self) -> Result<Option<String>, ArgError> {
        let Some(word) = self.peek() else {
            return Ok(None);
        };
        let text = word
            .to_str()
            .ok_or_else(|| ArgError::NotUnicode(quote(word)))?
            .to_string();
        self.next += 1;
        Ok(Some(text))
    }

    /// Consumes the next word, which must exist and be text.
    pub fn required(&mut self, what: &'static str) -> Result<String, ArgError> {
        self.word()?.ok_or(ArgError::MissingArgument(what))
    }

    /// Takes every remaining word, verbatim.
    pub fn rest(&mut self) -> Vec<OsString> {
        let rest = self.words.get(self.next..).unwrap_or_default().to_vec();
        self.next = self.words.len();
        rest
    }

    /// Succeeds only if every word has been consumed.
    pub fn finish(&self) -> Result<(), ArgError> {
        match self.peek() {
            None => Ok(()),
            Some(w) if self.at_option() => Err(ArgError::UnknownOption(quote(w))),
            Some(w) => Err(ArgError::Unexpected(quote(w))),
        }
    }

    /// An error for the next word as an unknown option.
    pub fn unknown_option(&self) -> ArgError {
        ArgError::UnknownOption(self.peek().map(quote).unwrap_or_default())
    }
}

/// Parses a decimal number for `option` and checks it against `range`.
pub fn number<T>(option: &'static str, text: &str, range: RangeInclusive<T>) -> Result<T, ArgError>
where
    T: FromStr + PartialOrd + fmt::Display,
{
    let bad = || ArgError::BadValue {
        option,
        value: quote(OsStr::new(text)),
        expected: format!("a whole number from {} to {}", range.start(), range.end()),
    };
    // FromStr for integers accepts a leading `+`; a plain digit string is stricter.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: T = text.parse().map_err(|_| bad())?;
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(bad())
    }
}

/// A word made safe to quote in a message.
pub fn quote(word: &OsStr) -> String {
    crate::proto::escape_line(word.as_bytes(), MAX_QUOTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Args {
        Args::new(words.iter().map(OsString::from).collect())
    }

    #[test]
    fn empty_argv_is_no_arguments() {
        let mut a = Args::new(Vec::new());
        assert!(a.is_empty());
        assert_eq!(a.peek(), None);
        assert!(!a.at_option());
        assert_eq!(a.eat(&["-v"]), None);
        assert_eq!(a.word(), Ok(None));
        assert_eq!(a.value("-t"), Err(ArgError::MissingValue("-t")));
        assert_eq!(a.required("ID"), Err(ArgError::MissingArgument("ID")));
        assert!(a.rest().is_empty());
        assert_eq!(a.finish(), Ok(()));
        assert_eq!(a.unknown_option(), ArgError::UnknownOption(String::new()));
    }

    #[test]
    fn options_then_verbatim_rest() {
        let mut a = args(&["-v", "-t", "5", "--", "ls", "-l"]);
        assert!(a.at_option());
        assert_eq!(a.eat(&["-q", "-v"]), Some("-v"));
        assert_eq!(a.eat(&["-t"]), Some("-t"));
        assert_eq!(a.value("-t"), Ok("5".to_string()));
        assert_eq!(a.eat(&["--"]), Some("--"));
        assert!(!a.at_option());
        assert_eq!(a.rest(), vec![OsString::from("ls"), OsString::from("-l")]);
        assert!(a.is_empty());
    }

    #[test]
    fn lone_dash_is_a_word_and_values_may_start_with_dash() {
        let a = args(&["-"]);
        assert!(!a.at_option());
        let mut a = args(&["-t", "-1"]);
        a.eat(&["-t"]);
        assert_eq!(a.value("-t"), Ok("-1".to_string()));
    }

    #[test]
    fn leftovers_are_reported() {
        let mut a = args(&["ping", "extra"]);
        assert_eq!(a.word(), Ok(Some("ping".to_string())));
        assert_eq!(a.finish(), Err(ArgError::Unexpected("extra".into())));
        let a = args(&["--nope"]);
        assert_eq!(a.finish(), Err(ArgError::UnknownOption("--nope".into())));
    }

    #[test]
    fn non_utf8_words_pass_through_rest_but_not_as_text() {
        let bad = OsString::from(OsStr::from_bytes(b"\xffx"));
        let mut a = Args::new(vec![bad.clone()]);
        assert!(matches!(a.word(), Err(ArgError::NotUnicode(_))));
        assert_eq!(a.rest(), vec![bad]);
    }

    #[test]
    fn numbers_are_strict_and_ranged() {
        let table: &[(&str, Option<u64>)] = &[
            ("1", Some(1)),
            ("300", Some(300)),
            ("86400", Some(86_400)),
            ("0", None),
            ("86401", None),
            ("", None),
            ("+5", None),
            ("-5", None),
            (" 5", None),
            ("5s", None),
            ("99999999999999999999999", None),
        ];
        for (text, want) in table {
            assert_eq!(number("-t", text, 1..=86_400u64).ok(), *want, "{text:?}");
        }
    }

    #[test]
    fn messages_quote_escaped_words() {
        let e = ArgError::UnknownOption(quote(OsStr::new("-\u{1b}[2J")));
        assert_eq!(e.to_string(), "unknown option -\\x1b[2J");
        let e = number("-t", "x", 1..=9u64).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad value \"x\" for -t: expected a whole number from 1 to 9"
        );
        assert_eq!(
            ArgError::NotApplicable {
                option: "-t",
                subcommand: "status"
            }
            .to_string(),
            "option -t does not apply to `status`"
        );
    }
}
