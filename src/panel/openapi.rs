//! `GET /api/openapi.json`: the OpenAPI 3 description of every endpoint (shared/DESIGN.md
//! §8), generated from the same table the router and the validator use, so it cannot
//! drift from what the panel does. POST bodies are `requestBody` JSON schemas with
//! `additionalProperties: false` (the validator refuses unknown members); operations
//! that run a command the user typed carry `"x-runs-command": true`.

use super::api::{Access, Answer, Endpoint, Field, Kind, Method};
use super::auth::COOKIE_NAME;
use crate::json::Value;

fn s(text: &str) -> Value {
    Value::String(text.to_string())
}

fn obj(members: Vec<(&str, Value)>) -> Value {
    Value::Object(
        members
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn num(n: u64) -> Value {
    Value::Number(n as f64)
}

/// The JSON Schema of one parameter kind.
pub fn schema(kind: Kind) -> Value {
    let string = |pattern: &str, max: u64| {
        obj(vec![
            ("type", s("string")),
            ("pattern", s(pattern)),
            ("maxLength", num(max)),
        ])
    };
    let text = |max: usize, note: &str| {
        obj(vec![
            ("type", s("string")),
            ("maxLength", num(max as u64)),
            ("description", s(note)),
        ])
    };
    match kind {
        Kind::Vm => string("^[A-Za-z][A-Za-z0-9_.-]{0,30}$", 31),
        Kind::VmOrDom0 => string("^[A-Za-z][A-Za-z0-9_.-]{0,30}$", 31),
        Kind::VmList => obj(vec![
            ("type", s("array")),
            ("items", string("^[A-Za-z][A-Za-z0-9_.-]{0,30}$", 31)),
        ]),
        Kind::Word(max) => string("^[A-Za-z0-9_.:+@=,%/][A-Za-z0-9_.:+@=,%/-]*$", max as u64),
        Kind::Line(max) => text(max, "one line, no control characters"),
        Kind::Arg(max) => obj(vec![
            ("type", s("string")),
            ("pattern", s("^[^-]")),
            ("maxLength", num(max as u64)),
            ("description", s("one line, no control characters, not starting with -")),
        ]),
        Kind::Text(max) => text(max, "text; newlines and tabs allowed"),
        Kind::Secret(max) => obj(vec![
            ("type", s("string")),
            ("format", s("password")),
            ("maxLength", num(max as u64)),
        ]),
        Kind::Uint(min, max) => obj(vec![
            ("type", s("integer")),
            ("minimum", num(min)),
            ("maximum", num(max)),
        ]),
        Kind::Bool => obj(vec![("type", s("boolean"))]),
        Kind::OneOf(words) => obj(vec![
            ("type", s("string")),
            ("enum", Value::Array(words.iter().map(|w| s(w)).collect())),
        ]),
        Kind::Argv => obj(vec![
            ("type", s("array")),
            ("minItems", num(1)),
            ("maxItems", num(super::api::MAX_ARGV_WORDS as u64)),
            ("items", obj(vec![("type", s("string"))])),
            (
                "description",
                s("program and arguments, run as an argv with no shell; the program must not start with -"),
            ),
        ]),
        Kind::Key => string("^[0-9a-fA-F]{64}$", 64),
        Kind::Prop => string("^[a-z_][a-z0-9_]{0,63}$", 64),
        Kind::Feature => string("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$", 64),
        Kind::Tag => string("^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$", 64),
        Kind::RelPath => text(
            super::api::MAX_PATH,
            "relative path inside the files directory; no .., no leading /",
        ),
        Kind::VmPath => text(super::api::MAX_PATH, "absolute path in the VM; no .."),
        Kind::TaskId => string("^t[0-9a-f]{16}$", 17),
        Kind::JobId => string("^[0-9]{8}-[0-9]{6}-[0-9]{1,10}-[0-9a-f]{16}$", 43),
        Kind::Device => string(
            "^[A-Za-z][A-Za-z0-9_.-]{0,30}:[A-Za-z0-9_.:][A-Za-z0-9_.:-]{0,127}$",
            160,
        ),
        Kind::FileName => text(255, "a plain file name: no /, not starting with . or -"),
    }
}

fn with_doc(mut schema: Value, f: &Field) -> Value {
    if let Value::Object(members) = &mut schema {
        if !f.doc.is_empty() {
            members.retain(|(k, _)| k != "description");
            members.push(("description".into(), s(f.doc)));
        }
        if let Ok(example) = crate::json::parse(f.example.as_bytes()) {
            members.push(("example".into(), example));
        }
    }
    schema
}

fn operation(e: &Endpoint) -> Value {
    let in_path = |f: &Field| e.path.contains(&format!("{{{}}}", f.name));
    let mut params = Vec::new();
    for f in e.fields {
        if in_path(f) || e.method == Method::Get {
            params.push(obj(vec![
                ("name", s(f.name)),
                ("in", s(if in_path(f) { "path" } else { "query" })),
                ("required", Value::Bool(f.required || in_path(f))),
                ("schema", with_doc(schema(f.kind), f)),
            ]));
        }
    }
    let mut op = vec![
        ("tags", Value::Array(vec![s(e.tag)])),
        ("summary", s(e.summary)),
        (
            "operationId",
            s(&format!(
                "{}{}",
                e.method.name().to_ascii_lowercase(),
                e.path.replace(['/', '{', '}', '.', '-'], "_")
            )),
        ),
        ("parameters", Value::Array(params)),
    ];
    if e.method == Method::Post {
        let body_fields: Vec<&Field> = e.fields.iter().filter(|f| !in_path(f)).collect();
        let props: Vec<(String, Value)> = body_fields
            .iter()
            .map(|f| (f.name.to_string(), with_doc(schema(f.kind), f)))
            .collect();
        let required: Vec<Value> = body_fields
            .iter()
            .filter(|f| f.required)
            .map(|f| s(f.name))
            .collect();
        let mut body_schema = vec![
            ("type", s("object")),
            ("properties", Value::Object(props)),
            ("additionalProperties", Value::Bool(false)),
        ];
        if !required.is_empty() {
            body_schema.push(("required", Value::Array(required)));
        }
        op.push((
            "requestBody",
            obj(vec![
                ("required", Value::Bool(true)),
                (
                    "content",
                    obj(vec![(
                        "application/json",
                        obj(vec![("schema", obj(body_schema))]),
                    )]),
                ),
            ]),
        ));
    }
    let ok_type = match e.answer {
        Answer::Json => "application/json",
        Answer::Events => "text/event-stream",
    };
    let mut responses = vec![(
        "200",
        obj(vec![
            ("description", s("success")),
            ("content", obj(vec![(ok_type, obj(vec![]))])),
        ]),
    )];
    responses.push((
        "400",
        obj(vec![(
            "description",
            s("a parameter is invalid; `field` names it"),
        )]),
    ));
    if e.access == Access::Session {
        responses.push(("401", obj(vec![("description", s("no valid session"))])));
    }
    if e.method == Method::Post {
        responses.push((
            "403",
            obj(vec![(
                "description",
                s("missing or wrong X-CSRF-Token, or a cross-origin Origin"),
            )]),
        ));
        responses.push((
            "415",
            obj(vec![("description", s("the body is not application/json"))]),
        ));
    }
    responses.push((
        "421",
        obj(vec![(
            "description",
            s("the Host header does not name the panel"),
        )]),
    ));
    op.push(("responses", obj(responses)));
    if e.access == Access::Session {
        let mut sec = vec![("session", Value::Array(vec![]))];
        if e.method == Method::Post {
            sec.push(("csrf", Value::Array(vec![])));
        }
        op.push(("security", Value::Array(vec![obj(sec)])));
    } else {
        op.push(("security", Value::Array(vec![])));
    }
    if e.runs_command {
        op.push(("x-runs-command", Value::Bool(true)));
    }
    obj(op)
}

/// The whole document.
pub fn document() -> Value {
    let mut paths: Vec<(String, Value)> = Vec::new();
    for e in super::routes::endpoints() {
        let method = e.method.name().to_ascii_lowercase();
        match paths.iter_mut().find(|(p, _)| p == e.path) {
            Some((_, Value::Object(ops))) => ops.push((method, operation(e))),
            _ => paths.push((e.path.to_string(), obj(vec![(&method, operation(e))]))),
        }
    }
    paths.push((
        "/login".into(),
        obj(vec![(
            "get",
            obj(vec![
                ("tags", Value::Array(vec![s("session")])),
                ("summary", s("Redeem the one-time token of `qvm-remote-dom0 panel url`; sets the session cookie")),
                ("operationId", s("get_login")),
                (
                    "parameters",
                    Value::Array(vec![obj(vec![
                        ("name", s("token")),
                        ("in", s("query")),
                        ("required", Value::Bool(true)),
                        ("schema", obj(vec![("type", s("string")), ("pattern", s("^[0-9a-f]{64}$"))])),
                    ])]),
                ),
                (
                    "responses",
                    obj(vec![
                        ("303", obj(vec![("description", s("logged in; Set-Cookie and Location: /"))])),
                        ("403", obj(vec![("description", s("token invalid, used or expired"))])),
                    ]),
                ),
                ("security", Value::Array(vec![])),
            ]),
        )]),
    ));
    obj(vec![
        ("openapi", s("3.0.3")),
        (
            "info",
            obj(vec![
                ("title", s("qvm-remote admin panel")),
                ("version", s(crate::version::VERSION)),
                (
                    "description",
                    s("Loopback-only administration of qvm-remote in dom0. Every parameter is data and is never executed, except on operations marked x-runs-command, whose argv is run without a shell."),
                ),
            ]),
        ),
        ("paths", Value::Object(paths)),
        (
            "components",
            obj(vec![(
                "securitySchemes",
                obj(vec![
                    (
                        "session",
                        obj(vec![("type", s("apiKey")), ("in", s("cookie")), ("name", s(COOKIE_NAME))]),
                    ),
                    (
                        "csrf",
                        obj(vec![("type", s("apiKey")), ("in", s("header")), ("name", s("X-CSRF-Token"))]),
                    ),
                ]),
            )]),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_described_and_examples_validate() {
        let doc = document();
        let paths = doc.get("paths").unwrap();
        for e in super::super::routes::endpoints() {
            let op = paths
                .get(e.path)
                .and_then(|p| p.get(&e.method.name().to_ascii_lowercase()))
                .unwrap_or_else(|| panic!("{} {} missing", e.method.name(), e.path));
            assert_eq!(
                op.get("x-runs-command")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                e.runs_command,
                "{}",
                e.path
            );
            if e.method == Method::Post {
                assert!(op.get("requestBody").is_some(), "{}", e.path);
            }
            // Every example must pass its own field's validation.
            let raw: Vec<(String, Value)> = e
                .fields
                .iter()
                .map(|f| {
                    (
                        f.name.to_string(),
                        crate::json::parse(f.example.as_bytes())
                            .unwrap_or_else(|err| panic!("{} {}: {err}", e.path, f.name)),
                    )
                })
                .collect();
            if let Err(err) = super::super::api::validate(e.fields, raw) {
                panic!(
                    "{} {}: example invalid: {}",
                    e.method.name(),
                    e.path,
                    err.message
                );
            }
        }
        let text = doc.to_json();
        assert!(crate::json::parse(text.as_bytes()).is_ok());
    }
}
