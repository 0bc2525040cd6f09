//! The panel's API as data: every endpoint is one [`Endpoint`] in a table
//! (`routes::ENDPOINTS`), with its method, path, typed parameters, whether it runs a
//! command the user typed, and its handler. The router, the parameter validation and
//! `/api/openapi.json` all read the same table, so an endpoint cannot exist without
//! being described, and a parameter cannot reach a handler without being validated
//! against the type the description states.
//!
//! Parameters are *data*: each [`Kind`] says exactly which strings are allowed, and
//! the ones that may end up in an argv ([`Kind::Vm`], [`Kind::Arg`], [`Kind::Prop`], …)
//! can never start with `-`, so no value can become an option of the program it is
//! passed to. Only [`Kind::Argv`] carries a command, and only on endpoints marked
//! `runs_command` (`x-runs-command` in the OpenAPI document).

use std::sync::Arc;

use super::auth::Session;
use super::http::{self, Head, HttpError};
use super::runner::{self, Output};
use super::tasks::{self, Task};
use crate::config;
use crate::json::{Object, Value};

/// Longest single-word or one-line parameter unless a kind says otherwise.
pub const MAX_WORD: usize = 256;
/// Most words in an [`Kind::Argv`].
pub const MAX_ARGV_WORDS: usize = 256;
/// Longest word in an [`Kind::Argv`].
pub const MAX_ARGV_WORD: usize = 16 * 1024;
/// Most names in a [`Kind::VmList`].
pub const MAX_VM_LIST: usize = config::MAX_VMS;
/// Longest path parameter.
pub const MAX_PATH: usize = 4096;

/// HTTP method of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Reads only.
    Get,
    /// Changes state; needs CSRF token, same Origin and a JSON body.
    Post,
}

impl Method {
    /// `GET` or `POST`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// The type of one parameter: which values are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A VM name Qubes accepts, not `dom0`.
    Vm,
    /// A VM name Qubes accepts, or `dom0`.
    VmOrDom0,
    /// Several [`Kind::Vm`] names (a JSON array).
    VmList,
    /// One word of `[A-Za-z0-9_.:+@=,%/-]`, not starting with `-`, at most this long
    /// (a template name, a firewall rule's value).
    Word(usize),
    /// One line of text (no control characters), at most this many bytes; a filter or
    /// a label, never an argument.
    Line(usize),
    /// One line that becomes a program argument: no control characters, not starting
    /// with `-`, at most this many bytes.
    Arg(usize),
    /// Text with newlines and tabs (a policy file), at most this many bytes.
    Text(usize),
    /// A secret typed by the user (a backup passphrase): never logged, never echoed.
    Secret(usize),
    /// A whole number in this range.
    Uint(u64, u64),
    /// `true` or `false`.
    Bool,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// The words of a command the user typed (a JSON array of strings). Only on
    /// endpoints marked `runs_command`.
    Argv,
    /// A key: 64 hex characters. Logged as its fingerprint only.
    Key,
    /// A Qubes property name: `[a-z_][a-z0-9_]*`, at most 64.
    Prop,
    /// A feature or service name: `[A-Za-z0-9_][A-Za-z0-9_.-]*`, at most 64.
    Feature,
    /// A tag: `[A-Za-z0-9_][A-Za-z0-9_-]*`, at most 64.
    Tag,
    /// A relative path inside the panel's files directory: no `..`, no absolute path,
    /// no empty or `.` component.
    RelPath,
    /// An absolute path inside a VM, without `..` components.
    VmPath,
    /// A task id.
    TaskId,
    /// A command id (DESIGN §3).
    JobId,
    /// A device id `BACKEND:IDENT` (`sys-usb:2-1`, `dom0:00_1f.3`).
    Device,
    /// A plain file name (one path component, not hidden).
    FileName,
}

impl Kind {
    /// Whether the JSON type is a string.
    fn is_string(self) -> bool {
        !matches!(
            self,
            Kind::Uint(..) | Kind::Bool | Kind::Argv | Kind::VmList
        )
    }

    /// Whether values of this kind are written to the audit log as they are.
    pub fn loggable(self) -> bool {
        !matches!(self, Kind::Secret(_) | Kind::Key)
    }
}

/// One parameter of an endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Its name (query parameter, JSON member, or `{name}` path segment).
    pub name: &'static str,
    /// Which values it accepts.
    pub kind: Kind,
    /// Whether it must be given.
    pub required: bool,
    /// What it means.
    pub doc: &'static str,
    /// A valid example, as JSON text; the OpenAPI walk test sends it.
    pub example: &'static str,
}

/// Shorthand for a required field.
pub const fn req(
    name: &'static str,
    kind: Kind,
    doc: &'static str,
    example: &'static str,
) -> Field {
    Field {
        name,
        kind,
        required: true,
        doc,
        example,
    }
}

/// Shorthand for an optional field.
pub const fn opt(
    name: &'static str,
    kind: Kind,
    doc: &'static str,
    example: &'static str,
) -> Field {
    Field {
        name,
        kind,
        required: false,
        doc,
        example,
    }
}

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who names the right Host (`/health`; never an `/api/` path, since DESIGN
    /// §8 gives every API call without a session 401).
    Public,
    /// A logged-in session.
    Session,
}

/// What an endpoint answers with, for the OpenAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `application/json`.
    Json,
    /// `text/event-stream`.
    Events,
}

/// One API endpoint.
pub struct Endpoint {
    /// GET or POST.
    pub method: Method,
    /// The path; a `{name}` segment is the path parameter `name`.
    pub path: &'static str,
    /// The tab it belongs to (the OpenAPI tag).
    pub tag: &'static str,
    /// One line saying what it does.
    pub summary: &'static str,
    /// Its parameters: path segments, query (GET) or JSON body members (POST).
    pub fields: &'static [Field],
    /// Who may call it.
    pub access: Access,
    /// Whether its purpose is to run a command the user typed (`x-runs-command`).
    pub runs_command: bool,
    /// What it answers with.
    pub answer: Answer,
    /// The code.
    pub handler: Handler,
}

/// An endpoint's code.
pub type Handler = fn(&super::Ctx, &Call) -> Result<Reply, ApiError>;

/// A validated parameter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// A string kind.
    Str(String),
    /// [`Kind::Uint`].
    Uint(u64),
    /// [`Kind::Bool`].
    Bool(bool),
    /// [`Kind::Argv`] or [`Kind::VmList`].
    List(Vec<String>),
}

/// A request that passed every check, with its validated parameters.
pub struct Call<'a> {
    /// The parameters given, validated.
    pub params: Vec<(&'static str, Param)>,
    /// The caller's session (`None` only for public endpoints).
    pub session: Option<Session>,
    /// The request head (for `Last-Event-ID`).
    pub head: &'a Head,
}

impl Call<'_> {
    fn get(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// A string parameter, if given.
    pub fn str(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Some(Param::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// A string parameter, or "" when absent (use for required ones).
    pub fn text(&self, name: &str) -> &str {
        self.str(name).unwrap_or_default()
    }

    /// A number parameter, if given.
    pub fn uint(&self, name: &str) -> Option<u64> {
        match self.get(name) {
            Some(Param::Uint(n)) => Some(*n),
            _ => None,
        }
    }

    /// A boolean parameter; false when absent.
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some(Param::Bool(true)))
    }

    /// A list parameter; empty when absent.
    pub fn list(&self, name: &str) -> &[String] {
        match self.get(name) {
            Some(Param::List(v)) => v,
            _ => &[],
        }
    }
}

/// What a handler answers.
pub enum Reply {
    /// A JSON body with this status.
    Json(u16, String),
    /// A complete response (cookies, redirects).
    Raw(http::Response),
    /// The event stream of a task, after the chunk with this sequence number.
    TaskEvents(Arc<Task>, u64),
    /// The live tail of the audit log, from this byte offset.
    LogEvents(u64),
}

impl Reply {
    /// `200` with this JSON.
    pub fn ok(body: String) -> Result<Reply, ApiError> {
        Ok(Reply::Json(200, body))
    }
}

/// A refusal or failure, as a JSON body `{"error": …, …}` with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// The full JSON body.
    pub body: String,
    /// The message alone, for the audit log.
    pub message: String,
}

impl ApiError {
    /// An error with a message.
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError {
            status,
            body: Object::new().str("error", &message).finish(),
            message,
        }
    }

    /// 400 naming the parameter.
    pub fn bad(field: &str, why: &str) -> ApiError {
        let message = format!("{field}: {why}");
        ApiError {
            status: 400,
            body: Object::new()
                .str("error", &message)
                .str("field", field)
                .finish(),
            message,
        }
    }

    /// 409 asking the user to confirm (the page shows `why` and sends `confirm: true`).
    pub fn needs_confirmation(why: &str) -> ApiError {
        ApiError {
            status: 409,
            body: Object::new()
                .str("error", why)
                .bool("needs_confirmation", true)
                .finish(),
            message: why.to_string(),
        }
    }

    /// 502: a dom0 program ran and failed; its exit and output go to the page.
    pub fn tool_failed(program: &str, out: &Output) -> ApiError {
        let message = format!("{program}: {}", out.describe());
        let mut o = Object::new()
            .str("error", &message)
            .str("stdout", &clip(&out.stdout_text()))
            .str("stderr", &clip(&out.stderr_text()));
        o = match out.code {
            Some(c) => o.int("exit", i64::from(c)),
            None => o.null("exit"),
        };
        ApiError {
            status: 502,
            body: o.finish(),
            message,
        }
    }

    /// 502: a dom0 program could not be started.
    pub fn run_error(e: &runner::RunError) -> ApiError {
        ApiError::new(502, e.to_string())
    }
}

impl From<HttpError> for ApiError {
    fn from(e: HttpError) -> ApiError {
        ApiError::new(e.status, e.message)
    }
}

impl From<tasks::TaskError> for ApiError {
    fn from(e: tasks::TaskError) -> ApiError {
        match e {
            tasks::TaskError::Busy => ApiError::new(429, e.to_string()),
            tasks::TaskError::Refused(_) => ApiError::new(400, e.to_string()),
            tasks::TaskError::Io(_) => ApiError::new(500, e.to_string()),
        }
    }
}

/// Longest program output put into one JSON answer.
pub const MAX_OUTPUT_IN_ANSWER: usize = 256 * 1024;

/// Text cut to [`MAX_OUTPUT_IN_ANSWER`] bytes (at a character boundary).
pub fn clip(s: &str) -> String {
    if s.len() <= MAX_OUTPUT_IN_ANSWER {
        return s.to_string();
    }
    let mut end = MAX_OUTPUT_IN_ANSWER;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n[… cut at {MAX_OUTPUT_IN_ANSWER} bytes]",
        s.get(..end).unwrap_or_default()
    )
}

/// Runs a quick dom0 tool; a failure to start or a non-zero exit is an [`ApiError`].
pub fn run_ok(argv: &[&str]) -> Result<Output, ApiError> {
    let out = runner::tool(argv).map_err(|e| ApiError::run_error(&e))?;
    if out.success() {
        Ok(out)
    } else {
        Err(ApiError::tool_failed(
            argv.first().copied().unwrap_or(""),
            &out,
        ))
    }
}

/// Runs a quick dom0 tool and returns its outcome whatever the exit status.
pub fn run_any(argv: &[&str]) -> Result<Output, ApiError> {
    runner::tool(argv).map_err(|e| ApiError::run_error(&e))
}

/// The usual answer to an action that ran one tool: `{"ok": true, "exit", "stdout",
/// "stderr"}`.
pub fn tool_answer(out: &Output) -> Result<Reply, ApiError> {
    let mut o = Object::new()
        .bool("ok", out.success())
        .str("stdout", &clip(&out.stdout_text()))
        .str("stderr", &clip(&out.stderr_text()));
    o = match out.code {
        Some(c) => o.int("exit", i64::from(c)),
        None => o.null("exit"),
    };
    Reply::ok(o.finish())
}

/// Matches `path` against a template with `{name}` segments; returns the captures.
pub fn match_path(template: &str, path: &str) -> Option<Vec<(String, String)>> {
    let mut t = template.split('/');
    let mut p = path.split('/');
    let mut caps = Vec::new();
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(caps),
            (Some(ts), Some(ps)) => {
                if let Some(name) = ts.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
                    if ps.is_empty() {
                        return None;
                    }
                    caps.push((name.to_string(), http::percent_decode(ps).ok()?));
                } else if ts != ps {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// Validates raw parameters against `fields`. `raw` holds strings from the path and
/// the query, or JSON values from the body. Unknown parameters are refused, so a
/// misspelt one is never silently ignored.
pub fn validate(
    fields: &[Field],
    raw: Vec<(String, Value)>,
) -> Result<Vec<(&'static str, Param)>, ApiError> {
    for (name, _) in &raw {
        if !fields.iter().any(|f| f.name == name) {
            return Err(ApiError::bad(
                &crate::proto::escape_line(name.as_bytes(), 64),
                "unknown parameter",
            ));
        }
    }
    let mut out = Vec::new();
    for f in fields {
        let given = raw.iter().find(|(n, _)| n == f.name).map(|(_, v)| v);
        match given {
            None | Some(Value::Null) => {
                if f.required {
                    return Err(ApiError::bad(f.name, "required"));
                }
            }
            Some(v) => out.push((f.name, check(f, v)?)),
        }
    }
    Ok(out)
}

/// Turns query strings into JSON values of the type each field wants, so the query
/// and the body are validated by one function.
pub fn query_values(
    fields: &[Field],
    raw: Vec<(String, String)>,
) -> Result<Vec<(String, Value)>, ApiError> {
    let mut out = Vec::new();
    for (name, text) in raw {
        let kind = fields.iter().find(|f| f.name == name).map(|f| f.kind);
        let v = match kind {
            Some(Kind::Uint(..)) => {
                if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ApiError::bad(&name, "want a whole number"));
                }
                Value::Number(
                    text.parse::<u64>()
                        .map_err(|_| ApiError::bad(&name, "want a whole number"))?
                        as f64,
                )
            }
            Some(Kind::Bool) => match text.as_str() {
                "true" | "1" => Value::Bool(true),
                "false" | "0" => Value::Bool(false),
                _ => return Err(ApiError::bad(&name, "want true or false")),
            },
            Some(Kind::Argv | Kind::VmList) => {
                return Err(ApiError::bad(&name, "lists are sent in a JSON body"))
            }
            _ => Value::String(text),
        };
        out.push((name, v));
    }
    Ok(out)
}

fn check(f: &Field, v: &Value) -> Result<Param, ApiError> {
    let bad = |why: &str| ApiError::bad(f.name, why);
    if f.kind.is_string() {
        let s = v.as_str().ok_or_else(|| bad("want a string"))?;
        check_string(f.kind, s).map_err(&bad)?;
        return Ok(Param::Str(s.to_string()));
    }
    match f.kind {
        Kind::Uint(min, max) => {
            let n = v.as_u64().ok_or_else(|| bad("want a whole number"))?;
            if !(min..=max).contains(&n) {
                return Err(bad("out of range"));
            }
            Ok(Param::Uint(n))
        }
        Kind::Bool => Ok(Param::Bool(
            v.as_bool().ok_or_else(|| bad("want true or false"))?,
        )),
        Kind::Argv => {
            let words = strings(v).ok_or_else(|| bad("want an array of strings"))?;
            if words.is_empty() || words.len() > MAX_ARGV_WORDS {
                return Err(bad("want 1 to 256 words"));
            }
            if words
                .iter()
                .any(|w| w.len() > MAX_ARGV_WORD || w.contains('\0'))
            {
                return Err(bad("a word is too long or holds a NUL"));
            }
            if words
                .first()
                .is_some_and(|w| w.is_empty() || w.starts_with('-'))
            {
                return Err(bad("the program must not be empty or start with -"));
            }
            Ok(Param::List(words))
        }
        Kind::VmList => {
            let names = strings(v).ok_or_else(|| bad("want an array of VM names"))?;
            if names.len() > MAX_VM_LIST {
                return Err(bad("too many VMs"));
            }
            if !names.iter().all(|n| is_vm(n)) {
                return Err(bad("not a valid VM name"));
            }
            Ok(Param::List(names))
        }
        _ => Err(bad("unsupported parameter type")),
    }
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|w| w.as_str().map(str::to_string))
        .collect()
}

/// A VM name that may be used (not dom0).
pub fn is_vm(s: &str) -> bool {
    config::is_valid_vm_name(s) && s != "dom0"
}

fn no_controls(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

fn name_chars(s: &str, max: usize, extra: &[u8], first_lower_only: bool) -> bool {
    let b = s.as_bytes();
    match b.split_first() {
        Some((first, rest)) => {
            let first_ok = if first_lower_only {
                first.is_ascii_lowercase() || *first == b'_'
            } else {
                first.is_ascii_alphanumeric() || *first == b'_'
            };
            first_ok
                && b.len() <= max
                && rest.iter().all(|c| {
                    (if first_lower_only {
                        c.is_ascii_lowercase() || c.is_ascii_digit()
                    } else {
                        c.is_ascii_alphanumeric()
                    }) || *c == b'_'
                        || extra.contains(c)
                })
        }
        None => false,
    }
}

/// Checks one string against its kind; the error says why in a few words.
pub fn check_string(kind: Kind, s: &str) -> Result<(), &'static str> {
    let ok = match kind {
        Kind::Vm => is_vm(s),
        Kind::VmOrDom0 => config::is_valid_vm_name(s),
        Kind::Word(max) => {
            !s.is_empty()
                && s.len() <= max
                && !s.starts_with('-')
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:+@=,%/-".contains(&b))
        }
        Kind::Line(max) => s.len() <= max && no_controls(s),
        Kind::Arg(max) => !s.is_empty() && s.len() <= max && no_controls(s) && !s.starts_with('-'),
        Kind::Text(max) => {
            s.len() <= max && !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
        }
        Kind::Secret(max) => !s.is_empty() && s.len() <= max && no_controls(s),
        Kind::OneOf(words) => words.contains(&s),
        Kind::Key => s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()),
        Kind::Prop => name_chars(s, 64, b"", true),
        Kind::Feature => name_chars(s, 64, b".-", false),
        Kind::Tag => name_chars(s, 64, b"-", false),
        Kind::RelPath => is_rel_path(s),
        Kind::VmPath => {
            s.starts_with('/')
                && s.len() <= MAX_PATH
                && no_controls(s)
                && !s.split('/').any(|c| c == "..")
        }
        Kind::TaskId => tasks::is_task_id(s),
        Kind::JobId => crate::id::CommandId::parse(s).is_ok(),
        Kind::Device => is_device(s),
        Kind::FileName => {
            !s.is_empty()
                && s.len() <= 255
                && !s.starts_with('.')
                && !s.starts_with('-')
                && !s.contains('/')
                && no_controls(s)
        }
        Kind::Uint(..) | Kind::Bool | Kind::Argv | Kind::VmList => false,
    };
    if ok {
        Ok(())
    } else {
        Err(match kind {
            Kind::Vm => "not a valid VM name (or dom0)",
            Kind::VmOrDom0 => "not a valid VM name",
            Kind::Word(_) => "want one word of letters, digits and _.:+@=,%/-, not starting with -",
            Kind::Line(_) => "too long or holds a control character",
            Kind::Arg(_) => "empty, too long, holds a control character or starts with -",
            Kind::Text(_) => "too long or holds a control character",
            Kind::Secret(_) => "empty, too long or holds a control character",
            Kind::OneOf(_) => "not one of the allowed values",
            Kind::Key => "want 64 hex characters",
            Kind::Prop => "not a property name",
            Kind::Feature => "not a feature or service name",
            Kind::Tag => "not a tag",
            Kind::RelPath => "want a relative path without .. inside the files directory",
            Kind::VmPath => "want an absolute path without ..",
            Kind::TaskId => "not a task id",
            Kind::JobId => "not a command id",
            Kind::Device => "want BACKEND:DEVICE",
            Kind::FileName => "want a plain file name",
            Kind::Uint(..) | Kind::Bool | Kind::Argv | Kind::VmList => "wrong type",
        })
    }
}

fn is_rel_path(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PATH
        && !s.starts_with('/')
        && no_controls(s)
        && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

fn is_device(s: &str) -> bool {
    let Some((backend, ident)) = s.split_once(':') else {
        return false;
    };
    config::is_valid_vm_name(backend)
        && !ident.is_empty()
        && ident.len() <= 128
        && !ident.starts_with('-')
        && ident
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INJECTIONS: &[&str] = &[
        "'",
        ";",
        "$(touch /tmp/x)",
        "`id`",
        "../etc",
        "-rf",
        "a\nb",
        "",
        "dom0 work",
    ];

    #[test]
    fn argument_kinds_refuse_every_injection() {
        for s in INJECTIONS.iter().filter(|s| **s != "../etc") {
            assert!(check_string(Kind::Word(64), s).is_err(), "Word took {s:?}");
        }
        for kind in [
            Kind::Vm,
            Kind::Prop,
            Kind::Feature,
            Kind::Tag,
            Kind::TaskId,
            Kind::JobId,
            Kind::Device,
            Kind::Key,
        ] {
            for s in INJECTIONS {
                assert!(check_string(kind, s).is_err(), "{kind:?} took {s:?}");
            }
        }
        // Arg and FileName take spaces and punctuation as data, but never an option.
        assert!(check_string(Kind::Arg(64), "-rf").is_err());
        assert!(check_string(Kind::Arg(64), "a\nb").is_err());
        assert!(check_string(Kind::Arg(64), "$(x) ; `y`").is_ok());
        assert!(check_string(Kind::RelPath, "../etc").is_err());
        assert!(check_string(Kind::RelPath, "/etc").is_err());
        assert!(check_string(Kind::RelPath, "a/./b").is_err());
        assert!(check_string(Kind::RelPath, "a/b.txt").is_ok());
        assert!(check_string(Kind::VmPath, "/home/user/../x").is_err());
        assert!(check_string(Kind::VmPath, "relative").is_err());
        assert!(check_string(Kind::FileName, "../x").is_err());
        assert!(check_string(Kind::FileName, ".hidden").is_err());
    }

    #[test]
    fn valid_values() {
        assert!(check_string(Kind::Vm, "work").is_ok());
        assert!(check_string(Kind::Vm, "dom0").is_err());
        assert!(check_string(Kind::VmOrDom0, "dom0").is_ok());
        assert!(check_string(Kind::Prop, "default_netvm").is_ok());
        assert!(check_string(Kind::Prop, "Default").is_err());
        assert!(check_string(Kind::Feature, "service.cups").is_ok());
        assert!(check_string(Kind::Device, "sys-usb:2-1").is_ok());
        assert!(check_string(Kind::Device, "dom0:00_1f.3").is_ok());
        assert!(check_string(Kind::OneOf(&["a", "b"]), "b").is_ok());
        assert!(check_string(Kind::OneOf(&["a", "b"]), "c").is_err());
    }

    #[test]
    fn validation_of_a_body() {
        const FIELDS: &[Field] = &[
            req("vm", Kind::Vm, "", "\"work\""),
            opt("n", Kind::Uint(1, 10), "", "3"),
            opt("argv", Kind::Argv, "", "[\"echo\"]"),
        ];
        let body = |t: &str| match crate::json::parse(t.as_bytes()).unwrap() {
            Value::Object(m) => m,
            _ => panic!(),
        };
        let ok = validate(
            FIELDS,
            body(r#"{"vm": "work", "n": 3, "argv": ["echo", "-n"]}"#),
        )
        .unwrap();
        assert_eq!(ok.len(), 3);
        for bad in [
            r#"{}"#,
            r#"{"vm": 1}"#,
            r#"{"vm": "work", "n": 11}"#,
            r#"{"vm": "work", "n": 1.5}"#,
            r#"{"vm": "work", "argv": []}"#,
            r#"{"vm": "work", "argv": ["-x"]}"#,
            r#"{"vm": "work", "argv": [1]}"#,
            r#"{"vm": "work", "extra": 1}"#,
        ] {
            assert_eq!(
                validate(FIELDS, body(bad)).unwrap_err().status,
                400,
                "{bad}"
            );
        }
    }

    #[test]
    fn path_templates() {
        assert_eq!(
            match_path("/api/tasks/{id}", "/api/tasks/t01"),
            Some(vec![("id".into(), "t01".into())])
        );
        assert_eq!(match_path("/api/tasks/{id}", "/api/tasks/"), None);
        assert_eq!(match_path("/api/tasks/{id}", "/api/tasks/a/b"), None);
        assert_eq!(match_path("/api/health", "/api/health"), Some(vec![]));
        assert_eq!(match_path("/api/health", "/api/healthz"), None);
    }
}
