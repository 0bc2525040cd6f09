//! Endpoints every tab uses: health, session, logout, the OpenAPI document, and tasks.

use super::super::api::{opt, req, Access, Answer, ApiError, Call, Endpoint, Kind, Method, Reply};
use super::super::{auth, http, openapi, session_json, Ctx};
use crate::json::{Array, Object};

/// This file's endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::Get,
        path: "/health",
        tag: "session",
        summary: "Liveness check; outside /api/ because it needs no session (every API call does)",
        fields: &[],
        access: Access::Public,
        runs_command: false,
        answer: Answer::Json,
        handler: health,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/session",
        tag: "session",
        summary: "The session's CSRF token (send it as X-CSRF-Token on every POST) and expiry",
        fields: &[],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: session,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/logout",
        tag: "session",
        summary: "End this session",
        fields: &[],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: logout,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/openapi.json",
        tag: "session",
        summary: "This description",
        fields: &[],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: openapi_doc,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/tasks",
        tag: "tasks",
        summary: "Background tasks, newest first",
        fields: &[],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: task_list,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/tasks/{id}",
        tag: "tasks",
        summary: "One task: status, progress, exit and the output after `since`",
        fields: &[
            req("id", Kind::TaskId, "the task id", "\"t0123456789abcdef\""),
            opt(
                "since",
                Kind::Uint(0, u64::MAX >> 12),
                "only output chunks after this sequence number",
                "0",
            ),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: task_get,
    },
    Endpoint {
        method: Method::Get,
        path: "/api/tasks/{id}/events",
        tag: "tasks",
        summary: "Server-sent events of a task: `output` chunks (id = sequence), `state`, `end`",
        fields: &[
            req("id", Kind::TaskId, "the task id", "\"t0123456789abcdef\""),
            opt(
                "after",
                Kind::Uint(0, u64::MAX >> 12),
                "resume after this chunk (or send Last-Event-ID)",
                "0",
            ),
        ],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Events,
        handler: task_events,
    },
    Endpoint {
        method: Method::Post,
        path: "/api/tasks/{id}/cancel",
        tag: "tasks",
        summary: "Cancel a task: SIGTERM to its process group, SIGKILL 3 s later",
        fields: &[req(
            "id",
            Kind::TaskId,
            "the task id",
            "\"t0123456789abcdef\"",
        )],
        access: Access::Session,
        runs_command: false,
        answer: Answer::Json,
        handler: task_cancel,
    },
];

fn health(_: &Ctx, _: &Call) -> Result<Reply, ApiError> {
    Reply::ok(Object::new().bool("ok", true).finish())
}

fn session(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let s = call
        .session
        .as_ref()
        .ok_or_else(|| ApiError::new(401, "no session"))?;
    Reply::ok(session_json(ctx, s))
}

fn logout(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    ctx.sessions.remove(call.head);
    Ok(Reply::Raw(
        http::Response::json(200, Object::new().bool("ok", true).finish())
            .with_header("Set-Cookie", auth::clear_cookie_header()),
    ))
}

fn openapi_doc(_: &Ctx, _: &Call) -> Result<Reply, ApiError> {
    Reply::ok(openapi::document().to_json())
}

fn task_list(ctx: &Ctx, _: &Call) -> Result<Reply, ApiError> {
    let mut a = Array::new();
    for t in ctx.tasks.list() {
        a = a.object(
            Object::new()
                .str("id", &t.id)
                .str("kind", t.kind)
                .str("title", &t.title)
                .str("status", t.status().name())
                .uint("started_ms", t.started_ms),
        );
    }
    Reply::ok(
        Object::new()
            .array("tasks", a)
            .uint("running", ctx.tasks.running())
            .finish(),
    )
}

fn find_task(
    ctx: &Ctx,
    call: &Call,
) -> Result<std::sync::Arc<super::super::tasks::Task>, ApiError> {
    ctx.tasks
        .get(call.text("id"))
        .ok_or_else(|| ApiError::new(404, "no such task"))
}

fn task_get(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let t = find_task(ctx, call)?;
    t.touch();
    Reply::ok(t.to_json(call.uint("since").unwrap_or(0)))
}

fn task_events(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let t = find_task(ctx, call)?;
    let resume = call
        .head
        .header("last-event-id")
        .and_then(|v| v.parse::<u64>().ok());
    Ok(Reply::TaskEvents(
        t,
        resume.or(call.uint("after")).unwrap_or(0),
    ))
}

fn task_cancel(ctx: &Ctx, call: &Call) -> Result<Reply, ApiError> {
    let t = find_task(ctx, call)?;
    t.cancel();
    Reply::ok(Object::new().bool("ok", true).str("id", &t.id).finish())
}
