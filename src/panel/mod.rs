//! The admin panel, `qvm-remote-dom0 panel` (shared/DESIGN.md §8; issue 6).
//!
//! A loopback-only web UI for dom0's administrator: twelve tabs over the daemon, the
//! audit log, the VMs, and the policy. The files:
//! - `http.rs` — HTTP/1.1 framing and its limits;
//! - `server.rs` — one acceptor thread, a fixed pool of workers, a bounded queue;
//! - `auth.rs` — Host check, one-time login token, sessions, CSRF and Origin checks;
//! - `api.rs` — the endpoint table's types and parameter validation;
//! - `routes/` — the endpoints, one file per tab, and the table itself;
//! - `openapi.rs` — `GET /api/openapi.json`, generated from the table;
//! - `tasks.rs` — background tasks with progress, output, events and cancel;
//! - `runner.rs` — how every dom0 program is run: an argv, never a shell;
//! - `tar.rs` — the ustar reader and writer of config backups;
//! - `assets.rs` — `web/` compiled in.
//!
//! This file holds the shared context and the router: the order of the checks every
//! request goes through is here and nowhere else.
//!
//! Architecture invariants: the panel binds loopback only (the config refuses any
//! other address, and [`serve`] checks again); no request parameter reaches a shell,
//! and none reaches an argv without passing its [`api::Kind`]; every POST is written
//! to the audit log with its parameters (secrets as fingerprints or not at all).

pub mod api;
pub mod assets;
pub mod auth;
pub mod http;
pub mod openapi;
pub mod routes;
pub mod runner;
pub mod server;
pub mod tar;
pub mod tasks;

use std::fmt;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use api::{Access, ApiError, Call, Endpoint, Method, Reply};
use http::{HttpError, Response};
use server::{After, App, Exchange};

use crate::audit::{AuditLog, Echo};
use crate::config::Config;
use crate::json::{Object, Value};

/// Most event streams open at once: each holds a worker, and the others must stay
/// free for ordinary requests.
pub const MAX_EVENT_STREAMS: usize = 3;
/// The file in the run dir where a running panel records `pid port`, so that
/// `panel url` prints the port actually bound.
pub const ADDR_FILE: &str = "panel-addr";
/// Most bytes read of the address file (`<pid> <port>` and a newline).
const MAX_ADDR_FILE: u64 = 64;
/// How long shutdown waits for killed tasks to be reaped.
pub const TASK_KILL_WAIT: std::time::Duration = std::time::Duration::from_millis(300);
/// Default directory of the Files tab's dom0 side.
pub const DEFAULT_FILES_DIR: &str = "/var/lib/qvm-remote/files";
/// Default OpenClaw settings file (issue 6, tab 6).
pub const DEFAULT_OPENCLAW_CONF: &str = "/etc/qubes/openclaw.conf";
/// Default qrexec policy directory shown read-only in VM Tools.
pub const DEFAULT_QREXEC_DIR: &str = "/etc/qubes/policy.d";

/// Usage of `qvm-remote-dom0 panel`.
pub const USAGE: &str = "\
usage: qvm-remote-dom0 [--config FILE] panel [--files-dir DIR] [--openclaw-conf FILE] [--qrexec-dir DIR]
       qvm-remote-dom0 [--config FILE] panel url [--open]

`panel` serves the admin panel on QVM_REMOTE_PANEL_ADDR (loopback only).
`panel url` prints a one-time login URL for it; --open also opens it with xdg-open
(as $SUDO_USER when run through sudo).
";

/// Settings of the panel beyond the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The Files tab's dom0 directory: nothing outside it is read or written.
    pub files_dir: PathBuf,
    /// The OpenClaw settings file.
    pub openclaw_conf: PathBuf,
    /// The qrexec policy directory (read-only view).
    pub qrexec_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            files_dir: DEFAULT_FILES_DIR.into(),
            openclaw_conf: DEFAULT_OPENCLAW_CONF.into(),
            qrexec_dir: DEFAULT_QREXEC_DIR.into(),
        }
    }
}

/// Why the panel could not run.
#[derive(Debug)]
pub enum PanelError {
    /// Bad arguments.
    Usage(String),
    /// The address is not loopback.
    NotLoopback(SocketAddr),
    /// Binding, the run dir, the token file, …
    Io(String, io::Error),
    /// `xdg-open` failed.
    Open(String),
}

impl PanelError {
    /// Whether this is a usage error (exit 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, PanelError::Usage(_))
    }
}

impl fmt::Display for PanelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PanelError::Usage(m) => write!(f, "{m}\n\n{USAGE}"),
            PanelError::NotLoopback(a) => write!(f, "panel address {a} is not loopback; refused"),
            PanelError::Io(what, e) => write!(f, "{what}: {e}"),
            PanelError::Open(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for PanelError {}

/// `qvm-remote-dom0 panel …` (without the word `panel`).
pub fn cli(cfg: &Config, config_path: &Path, args: &[&str]) -> Result<(), PanelError> {
    match args {
        ["url"] => print_url(cfg, false),
        ["url", "--open"] => print_url(cfg, true),
        ["url", ..] => Err(PanelError::Usage("panel url takes only --open".into())),
        _ => {
            let mut opts = Options::default();
            let mut it = args.iter();
            while let Some(a) = it.next() {
                let mut value = |what: &str| {
                    it.next()
                        .map(PathBuf::from)
                        .filter(|p| p.is_absolute())
                        .ok_or_else(|| PanelError::Usage(format!("{what} needs an absolute path")))
                };
                match *a {
                    "--files-dir" => opts.files_dir = value("--files-dir")?,
                    "--openclaw-conf" => opts.openclaw_conf = value("--openclaw-conf")?,
                    "--qrexec-dir" => opts.qrexec_dir = value("--qrexec-dir")?,
                    "-h" | "--help" => {
                        print!("{USAGE}");
                        return Ok(());
                    }
                    other => {
                        return Err(PanelError::Usage(format!(
                            "unknown panel argument {}",
                            crate::proto::escape_line(other.as_bytes(), 40)
                        )))
                    }
                }
            }
            serve(cfg.clone(), config_path.to_path_buf(), opts)
        }
    }
}

/// The panel's shared state, handed to every handler.
pub struct Ctx {
    /// The daemon's config (paths, VMs).
    pub cfg: Config,
    /// Where the config was read from (the Dashboard shows it).
    pub config_path: PathBuf,
    /// Panel settings.
    pub opts: Options,
    /// The bound port.
    pub port: u16,
    /// Host values accepted.
    pub hosts: Vec<String>,
    /// Logged-in sessions.
    pub sessions: auth::Sessions,
    /// Background tasks.
    pub tasks: tasks::Tasks,
    /// Set by SIGTERM/SIGINT.
    pub stop: &'static AtomicBool,
    /// This program, for running its own subcommands by argv.
    pub self_exe: PathBuf,
    /// Event streams open now.
    pub event_streams: AtomicUsize,
}

impl Ctx {
    /// Appends one event to the audit log. The log is opened for each event so the
    /// line chains from whatever the file's last line is (the daemon writes it too).
    pub fn audit(&self, category: &str, fields: &[(&str, &str)]) {
        audit_to(&self.cfg.log, category, fields);
    }

    /// Runs this program's own subcommand (`policy lint`, `approve ID`, …) by argv,
    /// with the same config file.
    pub fn self_argv(&self, args: &[&str]) -> Vec<String> {
        let mut v = vec![
            self.self_exe.display().to_string(),
            "--config".to_string(),
            self.config_path.display().to_string(),
        ];
        v.extend(args.iter().map(|s| (*s).to_string()));
        v
    }
}

/// Serialises the panel's own audit writes: each opens the log, reads the last chain
/// value and appends, and two workers doing that at once would both chain from the
/// same line.
static AUDIT_WRITE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn audit_to(log: &Path, category: &str, fields: &[(&str, &str)]) {
    let _guard = match AUDIT_WRITE.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    match AuditLog::open(log, Echo::Quiet) {
        Ok(l) => l.event(category, fields),
        Err(e) => eprintln!("qvm-remote-dom0 panel: audit log {}: {e}", log.display()),
    }
}

/// Binds, records the port, serves until SIGTERM/SIGINT, cleans up.
pub fn serve(cfg: Config, config_path: PathBuf, opts: Options) -> Result<(), PanelError> {
    let addr = cfg.panel_addr;
    if !addr.ip().is_loopback() {
        return Err(PanelError::NotLoopback(addr));
    }
    auth::ensure_run_dir(&cfg.run_dir)
        .map_err(|e| PanelError::Io(cfg.run_dir.display().to_string(), e))?;
    // The Files tab's directory: created private if missing, so a pull has somewhere
    // to land; a failure only disables that tab's writes, so it is reported, not fatal.
    if let Err(e) = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&opts.files_dir)
    {
        eprintln!(
            "qvm-remote-dom0 panel: files directory {}: {e}",
            opts.files_dir.display()
        );
    }
    let stop = crate::sys::install_termination_flag()
        .map_err(|e| PanelError::Io("signal handlers".into(), e))?;
    let _ = crate::sys::ignore_sigpipe();
    let listener = server::bind(addr).map_err(|e| PanelError::Io(format!("bind {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| PanelError::Io("local address".into(), e))?;
    let addr_file = cfg.run_dir.join(ADDR_FILE);
    write_private(
        &addr_file,
        &format!("{} {}\n", std::process::id(), bound.port()),
    )
    .map_err(|e| PanelError::Io(addr_file.display().to_string(), e))?;
    let log = cfg.log.clone();
    let on_end: Arc<tasks::OnEnd> = Arc::new(move |t: &tasks::Task, summary: &str| {
        audit_to(
            &log,
            "PANEL-TASK",
            &[
                ("task", &t.id),
                ("kind", t.kind),
                ("title", &t.title),
                ("end", summary),
            ],
        );
    });
    let self_exe =
        std::env::current_exe().map_err(|e| PanelError::Io("current executable".into(), e))?;
    let ctx = Ctx {
        hosts: auth::allowed_hosts(bound.port(), bound.is_ipv6()),
        port: bound.port(),
        cfg,
        config_path,
        opts,
        sessions: auth::Sessions::new(),
        tasks: tasks::Tasks::new(on_end),
        stop,
        self_exe,
        event_streams: AtomicUsize::new(0),
    };
    ctx.audit(
        "PANEL-START",
        &[
            ("addr", &bound.to_string()),
            ("pid", &std::process::id().to_string()),
        ],
    );
    eprintln!("qvm-remote-dom0 panel: listening on http://{bound}/ (log in with `qvm-remote-dom0 panel url`)");
    let panel = Arc::new(Panel { ctx });
    let result = server::serve(listener, Arc::clone(&panel) as Arc<dyn App>, stop);
    panel.ctx.tasks.kill_all(TASK_KILL_WAIT);
    let _ = fs::remove_file(&addr_file);
    panel
        .ctx
        .audit("PANEL-STOP", &[("pid", &std::process::id().to_string())]);
    result.map_err(|e| PanelError::Io("server".into(), e))
}

fn write_private(path: &Path, text: &str) -> io::Result<()> {
    crate::atomic::replace(path, text.as_bytes(), crate::atomic::Durability::Buffered)
}

/// The port of the running panel (from its address file), else the configured one.
fn running_port(cfg: &Config) -> u16 {
    use std::io::Read;
    let mut text = String::new();
    let from_file = fs::File::open(cfg.run_dir.join(ADDR_FILE))
        .and_then(|f| f.take(MAX_ADDR_FILE).read_to_string(&mut text))
        .ok()
        .and_then(|_| {
            let mut it = text.split_whitespace();
            let pid: i32 = it.next()?.parse().ok()?;
            let port: u16 = it.next()?.parse().ok()?;
            crate::sys::process_alive(pid).then_some(port)
        });
    from_file.unwrap_or(cfg.panel_addr.port())
}

/// `panel url [--open]`.
fn print_url(cfg: &Config, open: bool) -> Result<(), PanelError> {
    let token = auth::issue_login_token(&cfg.run_dir)
        .map_err(|e| PanelError::Io(cfg.run_dir.display().to_string(), e))?;
    let port = running_port(cfg);
    let host = if cfg.panel_addr.is_ipv6() {
        format!("[::1]:{port}")
    } else {
        format!("127.0.0.1:{port}")
    };
    let url = format!("http://{host}/login?token={token}");
    println!("{url}");
    if open {
        open_url(&url)?;
    }
    Ok(())
}

/// Opens the URL in the desktop user's browser: `xdg-open URL`, through
/// `runuser -u $SUDO_USER --` when root got here by sudo (root's own browser profile
/// is not the one on the screen).
fn open_url(url: &str) -> Result<(), PanelError> {
    let sudo_user = std::env::var("SUDO_USER").ok().filter(|u| {
        !u.is_empty()
            && u != "root"
            && u.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
            && !u.starts_with('-')
    });
    let argv: Vec<String> = match (crate::sys::geteuid(), sudo_user) {
        (0, Some(user)) => vec![
            "runuser".into(),
            "-u".into(),
            user,
            "--".into(),
            "xdg-open".into(),
            url.into(),
        ],
        _ => vec!["xdg-open".into(), url.into()],
    };
    let out = runner::run_tool(&argv).map_err(|e| PanelError::Open(e.to_string()))?;
    if out.success() {
        Ok(())
    } else {
        Err(PanelError::Open(format!("xdg-open: {}", out.describe())))
    }
}

/// The application: routes a request through the checks to its handler.
struct Panel {
    ctx: Ctx,
}

impl App for Panel {
    fn serve(&self, ex: &mut Exchange<'_>) -> After {
        let ctx = &self.ctx;
        if let Err(e) = auth::check_host(ex.head(), &ctx.hosts) {
            let _ = ex.respond(&Response::from(e), false);
            return After::Close;
        }
        let path = ex.head().path.clone();
        let method = ex.head().method.clone();
        if let Some(asset) = assets::find(&path) {
            let resp = if method == "GET" {
                Response::bytes(200, asset.content_type, asset.body.to_vec())
            } else {
                Response::from(HttpError::new(405, "method not allowed"))
                    .with_header("Allow", "GET".into())
            };
            return finish(ex, &resp);
        }
        if path == "/login" {
            let resp = if method == "GET" {
                login(ctx, ex.head())
            } else {
                Response::from(HttpError::new(405, "method not allowed"))
                    .with_header("Allow", "GET".into())
            };
            return finish(ex, &resp);
        }
        let resp = match api_call(ctx, ex) {
            Ok(Some(resp)) => resp,
            Ok(None) => return After::Close,
            Err(resp) => resp,
        };
        finish(ex, &resp)
    }
}

fn finish(ex: &mut Exchange<'_>, resp: &Response) -> After {
    match ex.respond(resp, true) {
        Ok(()) => After::KeepAlive,
        Err(_) => After::Close,
    }
}

/// `GET /login?token=…`: a valid one-time token starts a session and sends the browser
/// to the page; anything else is 403 and logged.
fn login(ctx: &Ctx, head: &http::Head) -> Response {
    let token = http::parse_query(&head.query)
        .ok()
        .and_then(|q| q.into_iter().find(|(n, _)| n == "token").map(|(_, v)| v))
        .unwrap_or_default();
    if !auth::redeem_login_token(&ctx.cfg.run_dir, &token) {
        ctx.audit("PANEL-LOGIN", &[("result", "refused")]);
        return Response::bytes(
            403,
            "text/plain; charset=utf-8",
            b"This login link is not valid (used, expired or mistyped).\nRun `qvm-remote-dom0 panel url` in dom0 for a new one.\n".to_vec(),
        );
    }
    match ctx.sessions.create() {
        Ok(id) => {
            ctx.audit("PANEL-LOGIN", &[("result", "ok")]);
            Response::bytes(303, "text/plain; charset=utf-8", b"Logged in.\n".to_vec())
                .with_header("Set-Cookie", auth::session_cookie_header(&id))
                .with_header("Location", "/".into())
        }
        Err(e) => Response::error(500, &format!("cannot create a session: {e}")),
    }
}

/// Finds the endpoint, runs the checks in order, validates, calls the handler, logs.
/// `Ok(None)` means an event stream was served and the connection must close.
fn api_call(ctx: &Ctx, ex: &mut Exchange<'_>) -> Result<Option<Response>, Response> {
    let head = ex.head().clone();
    let candidates: Vec<(&'static Endpoint, Vec<(String, String)>)> = routes::endpoints()
        .filter_map(|e| api::match_path(e.path, &head.path).map(|caps| (e, caps)))
        .collect();
    if candidates.is_empty() {
        return Err(Response::from(HttpError::new(404, "no such endpoint")));
    }
    let Some((endpoint, captures)) = candidates
        .iter()
        .find(|(e, _)| e.method.name() == head.method)
        .cloned()
    else {
        let allow: Vec<&str> = candidates.iter().map(|(e, _)| e.method.name()).collect();
        return Err(Response::from(HttpError::new(405, "method not allowed"))
            .with_header("Allow", allow.join(", ")));
    };
    let session = match endpoint.access {
        Access::Public => None,
        Access::Session => match ctx.sessions.find(&head) {
            Some(s) => Some(s),
            None => {
                if endpoint.method == Method::Post {
                    ctx.audit(
                        "PANEL-DENIED",
                        &[("action", endpoint.path), ("why", "no session")],
                    );
                }
                return Err(Response::from(HttpError::new(
                    401,
                    "log in first: run `qvm-remote-dom0 panel url` in dom0",
                )));
            }
        },
    };
    let mut raw: Vec<(String, Value)> = captures
        .into_iter()
        .map(|(n, v)| (n, Value::String(v)))
        .collect();
    match endpoint.method {
        Method::Post => {
            if let Some(s) = &session {
                if let Err(e) = auth::check_post(&head, s) {
                    ctx.audit(
                        "PANEL-DENIED",
                        &[("action", endpoint.path), ("why", e.message)],
                    );
                    return Err(Response::from(e));
                }
            }
            let body = ex.read_body().map_err(Response::from)?;
            match crate::json::parse(&body) {
                Ok(Value::Object(members)) => raw.extend(members),
                Ok(_) => return Err(Response::error(400, "the body must be a JSON object")),
                Err(e) => return Err(Response::error(400, &format!("bad JSON: {e}"))),
            }
        }
        Method::Get => {
            if head.content_length > 0 {
                return Err(Response::error(400, "a GET request has no body"));
            }
            let query = http::parse_query(&head.query).map_err(Response::from)?;
            raw.extend(api::query_values(endpoint.fields, query).map_err(api_response)?);
        }
    }
    let params = match api::validate(endpoint.fields, raw) {
        Ok(p) => p,
        Err(e) => {
            if endpoint.method == Method::Post {
                log_action(ctx, endpoint, &[], e.status, &e.message);
            }
            return Err(api_response(e));
        }
    };
    let call = Call {
        params,
        session,
        head: &head,
    };
    let result = (endpoint.handler)(ctx, &call);
    if endpoint.method == Method::Post {
        let (status, note) = match &result {
            Ok(Reply::Json(s, _)) => (*s, String::new()),
            Ok(Reply::Raw(r)) => (r.status, String::new()),
            Ok(_) => (200, String::new()),
            Err(e) => (e.status, e.message.clone()),
        };
        log_action(ctx, endpoint, &call.params, status, &note);
    }
    match result {
        Ok(Reply::Json(status, body)) => Ok(Some(Response::json(status, body))),
        Ok(Reply::Raw(resp)) => Ok(Some(resp)),
        Ok(Reply::TaskEvents(task, after)) => {
            events(ctx, ex, |w, stop| task.stream_events(w, after, stop))
        }
        Ok(Reply::LogEvents(from)) => events(ctx, ex, |w, stop| {
            routes::logs::stream_tail(ctx, w, from, stop)
        }),
        Err(e) => Err(api_response(e)),
    }
}

/// Serves an event stream if fewer than [`MAX_EVENT_STREAMS`] are open.
fn events(
    ctx: &Ctx,
    ex: &mut Exchange<'_>,
    body: impl FnOnce(&mut dyn io::Write, &AtomicBool) -> io::Result<()>,
) -> Result<Option<Response>, Response> {
    if ctx.event_streams.fetch_add(1, Ordering::SeqCst) >= MAX_EVENT_STREAMS {
        ctx.event_streams.fetch_sub(1, Ordering::SeqCst);
        return Err(
            Response::error(503, "too many event streams open; try again")
                .with_header("Retry-After", "2".into()),
        );
    }
    if let Ok(w) = ex.start_events() {
        let _ = body(w, ctx.stop);
    }
    ctx.event_streams.fetch_sub(1, Ordering::SeqCst);
    Ok(None)
}

fn api_response(e: ApiError) -> Response {
    Response::json(e.status, e.body)
}

/// Writes one POST to the audit log: the action, every parameter (escaped by the
/// log; keys as fingerprints, secrets left out), the status and any error.
fn log_action(
    ctx: &Ctx,
    endpoint: &Endpoint,
    params: &[(&'static str, api::Param)],
    status: u16,
    note: &str,
) {
    let mut rendered: Vec<(String, String)> = Vec::new();
    for (name, value) in params {
        let kind = endpoint
            .fields
            .iter()
            .find(|f| f.name == *name)
            .map(|f| f.kind);
        let text = match (kind, value) {
            (Some(api::Kind::Key), api::Param::Str(k)) => crate::keys::Key::parse(k)
                .map_or("invalid".to_string(), |k| {
                    format!("fingerprint:{}", k.fingerprint())
                }),
            (Some(k), _) if !k.loggable() => "(not logged)".to_string(),
            // A whole file (a policy) would flood the log: its digest identifies it.
            (Some(api::Kind::Text(_)), api::Param::Str(t)) => format!(
                "sha256:{} ({} bytes)",
                qvm_remote_hmac::hex::encode(&qvm_remote_hmac::sha256(t.as_bytes())),
                t.len()
            ),
            (_, api::Param::Str(s)) => s.clone(),
            (_, api::Param::Uint(n)) => n.to_string(),
            (_, api::Param::Bool(b)) => b.to_string(),
            (_, api::Param::List(v)) => {
                let mut a = crate::json::Array::new();
                for w in v {
                    a = a.str(w);
                }
                a.finish()
            }
        };
        rendered.push(((*name).to_string(), text));
    }
    let status = status.to_string();
    let mut fields: Vec<(&str, &str)> = vec![("action", endpoint.path), ("status", &status)];
    for (k, v) in &rendered {
        fields.push((k, v));
    }
    if !note.is_empty() {
        fields.push(("error", note));
    }
    ctx.audit("PANEL", &fields);
}

/// The JSON of `GET /api/session`.
pub fn session_json(ctx: &Ctx, s: &auth::Session) -> String {
    Object::new()
        .str("csrf", &s.csrf)
        .uint(
            "expires_in_s",
            s.expires_in(std::time::Instant::now()).as_secs(),
        )
        .str("version", crate::version::VERSION)
        .uint("port", u64::from(ctx.port))
        .finish()
}
