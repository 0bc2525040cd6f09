//! The admin panel over raw sockets (shared/DESIGN.md §8; issue 6): Host, login,
//! session, CSRF, Origin and Content-Type checks; every HTTP limit one byte past it;
//! malformed requests; deadlines; idle connections; keep-alive; shutdown; and a walk
//! over `/api/openapi.json` that calls every endpoint with valid input, invalid input
//! and injection strings, with a side-effect file proving nothing was executed.

mod common;
mod panel_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use panel_support::{connect, raw, read_response, wait_task, PanelSim, Resp};
use qvm_remote::json::Value;
use qvm_remote::panel::http::{HEAD_DEADLINE, MAX_BODY, MAX_HEADERS, MAX_LINE};

/// Every reply the panel sends carries these (DESIGN §8) and a Content-Length.
fn assert_well_formed(r: &Resp) {
    assert!(
        r.header("content-length").is_some(),
        "no Content-Length: {r:?}"
    );
    assert_eq!(
        r.header("content-security-policy")
            .map(|v| v.starts_with("default-src 'self'")),
        Some(true),
        "{r:?}"
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

fn get_raw(p: &PanelSim, host: &str, path: &str, extra: &str) -> Resp {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    raw(p.port, req.as_bytes()).expect("a response")
}

#[test]
fn host_header_must_name_the_panel() {
    let p = PanelSim::start(&["work"]);
    let port = p.port;
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
    ] {
        let r = get_raw(&p, &host, "/health", "");
        assert_eq!(r.status, 200, "{host}");
        assert_well_formed(&r);
    }
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        "127.0.0.1".to_string(),
        format!("127.0.0.2:{port}"),
        format!("[::1]:{port}"),
        format!("127.0.0.1:{port}.evil.example"),
    ] {
        for path in ["/health", "/", "/api/session", "/login?token=x"] {
            let r = get_raw(&p, &host, path, "");
            assert_eq!(r.status, 421, "{host} {path}");
            assert_well_formed(&r);
        }
    }
    // No Host names nothing: 421; two are malformed: 400.
    for version in ["1.1", "1.0"] {
        let req = format!("GET /health HTTP/{version}\r\n\r\n");
        assert_eq!(
            raw(p.port, req.as_bytes()).unwrap().status,
            421,
            "{version}"
        );
    }
    let req =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    assert_eq!(raw(p.port, req.as_bytes()).unwrap().status, 400);
}

#[test]
fn login_is_one_time_and_sets_a_strict_http_only_cookie() {
    let p = PanelSim::start(&["work"]);
    let url = p.login_url();
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{}/login?token=", p.port)),
        "{url}"
    );
    let path = url.split_once(&p.host()).unwrap().1.to_string();
    let first = get_raw(&p, &p.host(), &path, "");
    assert_eq!(first.status, 303);
    assert_eq!(first.header("location"), Some("/"));
    let cookie = first.header("set-cookie").unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    // The same URL again, a wrong token, no token: refused.
    assert_eq!(get_raw(&p, &p.host(), &path, "").status, 403);
    let wrong = format!("/login?token={}", "0".repeat(64));
    assert_eq!(get_raw(&p, &p.host(), &wrong, "").status, 403);
    assert_eq!(get_raw(&p, &p.host(), "/login", "").status, 403);
    // A token for a different panel URL is refused as well: a fresh one works once.
    let c = p.login();
    assert_eq!(c.get("/api/session").status, 200);
    let log = p.sim.log_text();
    assert!(log.contains("PANEL-LOGIN result=ok"), "{log}");
    assert!(log.contains("PANEL-LOGIN result=refused"), "{log}");
}

#[test]
fn panel_url_open_hands_the_url_to_the_desktop_users_xdg_open() {
    let p = PanelSim::start(&["work"]);
    // As root under sudo, the browser is the desktop user's: runuser -u USER -- xdg-open.
    let out = p
        .panel_command(&["panel", "url", "--open"])
        .env("SUDO_USER", "alice")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let calls = p.fake_calls();
    let opened = calls
        .iter()
        .find(|c| c[0] == "runuser" || c[0] == "xdg-open");
    let opened = opened.expect("nothing was opened").clone();
    if qvm_remote::sys::geteuid() == 0 {
        assert_eq!(
            opened,
            ["runuser", "-u", "alice", "--", "xdg-open", url.as_str()]
        );
    } else {
        assert_eq!(opened, ["xdg-open", url.as_str()]);
    }
    // A SUDO_USER that could become an option is never passed on.
    let out = p
        .panel_command(&["panel", "url", "--open"])
        .env("SUDO_USER", "-x")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let calls = p.fake_calls();
    assert!(
        calls.iter().all(|c| !c.iter().any(|w| w == "-x")),
        "{calls:?}"
    );
}

#[test]
fn api_needs_a_valid_session() {
    let p = PanelSim::start(&["work"]);
    let c = p.login();
    let host = p.host();
    for extra in [
        String::new(),
        "Cookie: qvmr_session=\r\n".to_string(),
        format!("Cookie: qvmr_session={}\r\n", "a".repeat(64)),
        format!("Cookie: other={}\r\n", c.cookie.split('=').nth(1).unwrap()),
    ] {
        for path in [
            "/api/session",
            "/api/openapi.json",
            "/api/tasks",
            "/api/logs",
        ] {
            let r = get_raw(&p, &host, path, &extra);
            assert_eq!(r.status, 401, "{path} with {extra:?}");
            assert_well_formed(&r);
        }
    }
    // Health is public; the page itself too (it holds no data).
    assert_eq!(get_raw(&p, &host, "/health", "").status, 200);
    assert_eq!(get_raw(&p, &host, "/", "").status, 200);
    // After logout the cookie is dead.
    let r = c.post("/api/logout", "{}");
    assert_eq!(r.status, 200);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(c.get("/api/session").status, 401);
}

#[test]
fn state_changes_need_csrf_same_origin_and_json() {
    let p = PanelSim::start(&["work"]);
    let c = p.login();
    let marker = p.files_dir.join("csrf-test");
    let body = r#"{"scope": "global", "name": "default_netvm", "value": "sys-net"}"#;
    let evil_origin = format!("http://evil.example:{}", p.port);
    let other_port = format!("http://127.0.0.1:{}", p.port.wrapping_add(1));
    type HeaderChanges<'a> = &'a [(&'a str, Option<&'a str>)];
    let table: &[(HeaderChanges, u16)] = &[
        (&[("X-CSRF-Token", None)], 403),
        (&[("X-CSRF-Token", Some("0000"))], 403),
        (&[("X-CSRF-Token", Some(""))], 403),
        (&[("Origin", None)], 403),
        (&[("Origin", Some(&evil_origin))], 403),
        (&[("Origin", Some(&other_port))], 403),
        (&[("Origin", Some("null"))], 403),
        (&[("Content-Type", Some("text/plain"))], 415),
        (
            &[("Content-Type", Some("application/x-www-form-urlencoded"))],
            415,
        ),
        (&[("Content-Type", None)], 415),
        (&[("Cookie", None)], 401),
    ];
    for (changes, status) in table {
        let r = c.post_with("/api/prefs/set", body, changes);
        assert_eq!(r.status, *status, "{changes:?}: {}", r.text());
        assert_well_formed(&r);
    }
    // Nothing was changed by any of them.
    let out = std::process::Command::new(common::sim_tools().join("qubes-prefs"))
        .arg("default_netvm")
        .env("QVM_SIM_DIR", &p.sim.sim_dir)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sys-firewall");
    assert!(!marker.exists());
    // The same request with every check satisfied works.
    let r = c.post("/api/prefs/set", body);
    assert_eq!(r.status, 200, "{}", r.text());
    // Refusals are in the audit log.
    let log = p.sim.log_text();
    assert!(log.contains("PANEL-DENIED action=/api/prefs/set"), "{log}");
}

#[test]
fn wrong_methods_are_405_with_allow() {
    let p = PanelSim::start(&["work"]);
    let c = p.login();
    // GET on a state-changing route.
    for path in [
        "/api/logout",
        "/api/prefs/set",
        "/api/exec/dom0",
        "/api/vms/revoke",
    ] {
        let r = c.get(path);
        assert_eq!(r.status, 405, "{path}");
        assert_eq!(r.header("allow"), Some("POST"), "{path}");
    }
    // POST on a read-only route.
    let r = c.post("/api/session", "{}");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    // Other methods.
    for m in ["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"] {
        let req = format!(
            "{m} /api/session HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\n\r\n",
            p.host(),
            c.cookie
        );
        assert_eq!(raw(p.port, req.as_bytes()).unwrap().status, 405, "{m}");
    }
    assert_eq!(c.get("/api/nonexistent").status, 404);
    assert_eq!(c.get("/etc/passwd").status, 404);
    assert_eq!(c.get("/../../etc/passwd").status, 404);
}

#[test]
fn limits_one_past_each() {
    let p = PanelSim::start(&["work"]);
    let c = p.login();
    let host = p.host();
    // Request line: exactly MAX_LINE is fine (404), one more is 414.
    let fixed = "GET / HTTP/1.1".len();
    let ok_path = format!("/{}", "a".repeat(MAX_LINE - fixed));
    let r = get_raw(&p, &host, &ok_path, "");
    assert_eq!(r.status, 404);
    let long_path = format!("/{}", "a".repeat(MAX_LINE - fixed + 1));
    let r = get_raw(&p, &host, &long_path, "");
    assert_eq!(r.status, 414);
    assert_well_formed(&r);
    // One header line: MAX_LINE fine, one more 431.
    let name = "X-Filler: ";
    let ok = format!("{name}{}\r\n", "b".repeat(MAX_LINE - name.len()));
    assert_eq!(get_raw(&p, &host, "/health", &ok).status, 200);
    let long = format!("{name}{}\r\n", "b".repeat(MAX_LINE - name.len() + 1));
    assert_eq!(get_raw(&p, &host, "/health", &long).status, 431);
    // Header count: Host + Connection + (MAX_HEADERS - 2) fine; one more is 431.
    let many = |n: usize| (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
    assert_eq!(
        get_raw(&p, &host, "/health", &many(MAX_HEADERS - 2)).status,
        200
    );
    assert_eq!(
        get_raw(&p, &host, "/health", &many(MAX_HEADERS - 1)).status,
        431
    );
    assert_eq!(get_raw(&p, &host, "/health", &many(5000)).status, 431);
    // Body: MAX_BODY accepted (and then refused as JSON), one more 413 before reading.
    let big = format!("{{\"x\": \"{}\"}}", "c".repeat(MAX_BODY - 9));
    assert_eq!(big.len(), MAX_BODY);
    let r = c.post("/api/prefs/set", &big);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = c.post_with(
        "/api/prefs/set",
        "",
        &[("Content-Length", Some(&(MAX_BODY + 1).to_string()))],
    );
    assert_eq!(r.status, 413);
    // Transfer-Encoding is not accepted at all; two lengths are refused.
    let r = c.post_with(
        "/api/prefs/set",
        "{}",
        &[("Transfer-Encoding", Some("chunked"))],
    );
    assert_eq!(r.status, 501);
    let req = format!("POST /api/logout HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}");
    assert_eq!(raw(p.port, req.as_bytes()).unwrap().status, 400);
    // POST without a length.
    let r = c.post_with("/api/logout", "", &[("Content-Length", None)]);
    assert_eq!(r.status, 411);
    // A body that is not JSON, not an object, too deep.
    for body in ["nope", "[1]", "\"x\"", &"[".repeat(100)] {
        let r = c.post("/api/logout", body);
        assert_eq!(r.status, 400, "{body}");
    }
    // The server is still fine.
    assert_eq!(c.get("/api/session").status, 200);
}

#[test]
fn malformed_requests_are_refused_and_the_server_survives() {
    let p = PanelSim::start(&["work"]);
    let host = p.host();
    let table: Vec<(Vec<u8>, u16)> = vec![
        (b"\r\n\r\n".to_vec(), 400),
        (b"GET\r\n\r\n".to_vec(), 400),
        (b"GET /\r\n\r\n".to_vec(), 400),
        (
            format!("GET / HTTP/1.1 extra\r\nHost: {host}\r\n\r\n").into_bytes(),
            400,
        ),
        (
            format!("GET  / HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
            400,
        ),
        (
            format!("get / HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
            400,
        ),
        (
            format!("GET noslash HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
            400,
        ),
        (
            format!("GET http://evil/ HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
            400,
        ),
        (
            format!("GET / HTTP/2.0\r\nHost: {host}\r\n\r\n").into_bytes(),
            505,
        ),
        (
            format!("GET / SMTP/1.0\r\nHost: {host}\r\n\r\n").into_bytes(),
            400,
        ),
        (
            format!("GET / HTTP/1.1\nHost: {host}\n\n").into_bytes(),
            400,
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: {host}\r\n folded\r\n\r\n").into_bytes(),
            400,
        ),
        (
            format!("GET / HTTP/1.1\r\nHost : {host}\r\n\r\n").into_bytes(),
            400,
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nBad\x01: x\r\n\r\n").into_bytes(),
            400,
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nX: \x7f\r\n\r\n").into_bytes(),
            400,
        ),
        (
            [
                b"GET /".as_slice(),
                &[0xff],
                format!(" HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
            ]
            .concat(),
            400,
        ),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
        ),
        (
            format!("GET /health?a=%zz HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
            400,
        ),
        (
            format!("GET /health?a=1 HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
            400,
        ),
    ];
    for (bytes, status) in &table {
        let r = raw(p.port, bytes).expect("an answer");
        assert_eq!(r.status, *status, "{:?}", String::from_utf8_lossy(bytes));
        assert_well_formed(&r);
    }
    // Bytes that never end a line, and random noise: refused or timed out, never a hang
    // of the server.
    let mut noise = connect(p.port);
    noise.write_all(&[0u8; 20_000]).unwrap();
    let r = read_response(&mut noise).unwrap();
    assert_eq!(r.status, 414);
    let r = get_raw(&p, &host, "/health", "");
    assert_eq!(r.status, 200);
}

#[test]
fn slow_head_gets_408_at_the_deadline_and_idle_connections_do_not_block() {
    let p = PanelSim::start(&["work"]);
    let host = p.host();
    // 50 idle connections and 10 half-sent heads: more than the workers.
    let idle: Vec<TcpStream> = (0..50).map(|_| connect(p.port)).collect();
    let mut slow: Vec<TcpStream> = (0..10).map(|_| connect(p.port)).collect();
    for s in &mut slow {
        s.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    // A real request still gets through at once.
    let t = Instant::now();
    let r = get_raw(&p, &host, "/health", "");
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // Keep the slow ones trickling; they still hit the head deadline.
    let started = Instant::now();
    for s in &mut slow {
        s.write_all(b"s").unwrap();
    }
    for s in &mut slow {
        let r = read_response(s).expect("a 408");
        assert_eq!(r.status, 408);
        assert_eq!(r.header("connection"), Some("close"));
    }
    let waited = started.elapsed();
    assert!(
        waited <= HEAD_DEADLINE + Duration::from_secs(2),
        "{waited:?}"
    );
    // The idle connections are still open and usable (idle timeout is longer).
    let mut one = idle.into_iter().next().unwrap();
    one.write_all(format!("GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut one).unwrap().status, 200);
}

#[test]
fn keep_alive_and_pipelining() {
    let p = PanelSim::start(&["work"]);
    let host = p.host();
    let mut s = connect(p.port);
    for _ in 0..5 {
        s.write_all(format!("GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .unwrap();
        let r = read_response(&mut s).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    // Three requests in one write: three answers, in order.
    let one = format!("GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let bad = format!("GET /nope HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(format!("{one}{bad}{one}").as_bytes()).unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    assert_eq!(read_response(&mut s).unwrap().status, 404);
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    // Connection: close is honoured.
    s.write_all(
        format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
    // A refused request closes its connection (its body was never read).
    let mut s = connect(p.port);
    s.write_all(
        format!("POST /api/logout HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello")
            .as_bytes(),
    )
    .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn event_streams_are_capped_and_sigterm_stops_within_two_seconds() {
    let mut p = PanelSim::start(&["work"]);
    let c = p.login();
    let r = c.post(
        "/api/exec/dom0",
        r#"{"argv": ["sleep", "61.75"], "timeout": 120}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = panel_support::json_str(&r.body, "task");
    let open = |n: usize| -> Vec<TcpStream> {
        (0..n)
            .map(|_| {
                let mut s = connect(p.port);
                s.write_all(
                    format!(
                        "GET /api/tasks/{id}/events HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\n\r\n",
                        p.host(),
                        c.cookie
                    )
                    .as_bytes(),
                )
                .unwrap();
                let mut head = [0u8; 15];
                s.read_exact(&mut head).unwrap();
                assert_eq!(&head, b"HTTP/1.1 200 OK");
                s
            })
            .collect()
    };
    let streams = open(qvm_remote::panel::MAX_EVENT_STREAMS);
    let r = c.get(&format!("/api/tasks/{id}/events"));
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    // Ordinary requests still work while the streams hold their workers.
    assert_eq!(c.get("/api/session").status, 200);
    drop(streams);
    let took = p.stop();
    assert!(took < Duration::from_secs(2), "SIGTERM took {took:?}");
    // The task's process group went with it.
    assert!(common::wait_for(Duration::from_secs(5), || {
        common::processes_matching("sleep 61.75").is_empty()
    }));
}

/// Strings that would do something if any layer handed them to a shell or used them
/// as an option; each includes the side-effect file's path.
fn injections(marker: &str) -> Vec<String> {
    vec![
        format!("'; touch {marker}; '"),
        format!("; touch {marker}"),
        format!("$(touch {marker})"),
        format!("`touch {marker}`"),
        format!("x && touch {marker}"),
        format!("| touch {marker}"),
        format!("../../../../{marker}"),
        format!("-oProxyCommand=touch {marker}"),
        "--help".to_string(),
        format!("a\ntouch {marker}"),
        format!("work\n{marker}"),
        format!("{marker}\0"),
    ]
}

fn example_body(fields: &[(String, Value, bool, bool)]) -> Vec<(String, Value)> {
    fields
        .iter()
        .filter(|(_, _, _, in_path)| !in_path)
        .map(|(n, v, _, _)| (n.clone(), v.clone()))
        .collect()
}

fn fill_path(path: &str, fields: &[(String, Value, bool, bool)]) -> String {
    let mut out = path.to_string();
    for (name, v, _, in_path) in fields {
        if *in_path {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_json(),
            };
            out = out.replace(&format!("{{{name}}}"), &pct(&text));
        }
    }
    out
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn query(fields: &[(String, Value)]) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|(n, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_json(),
            };
            format!("{}={}", pct(n), pct(&text))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// The operations of the OpenAPI document: (method, path, fields as (name, example,
/// required, in path), runs_command).
type Op = (String, String, Vec<(String, Value, bool, bool)>, bool);

fn operations(doc: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for (path, item) in doc.get("paths").unwrap().as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let mut fields = Vec::new();
            for p in op
                .get("parameters")
                .and_then(Value::as_array)
                .unwrap_or(&[])
            {
                let name = p.get("name").unwrap().as_str().unwrap().to_string();
                let schema = p.get("schema").unwrap();
                let example = schema.get("example").cloned().unwrap_or(Value::Null);
                let required = p.get("required").and_then(Value::as_bool).unwrap_or(false);
                let in_path = p.get("in").and_then(Value::as_str) == Some("path");
                fields.push((name, example, required, in_path));
            }
            if let Some(body) = op.get("requestBody") {
                let schema = body
                    .get("content")
                    .and_then(|c| c.get("application/json"))
                    .and_then(|c| c.get("schema"))
                    .unwrap();
                let required: Vec<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .unwrap_or(&[])
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                for (name, prop) in schema.get("properties").unwrap().as_object().unwrap() {
                    let example = prop.get("example").cloned().unwrap_or(Value::Null);
                    fields.push((
                        name.clone(),
                        example,
                        required.contains(&name.as_str()),
                        false,
                    ));
                }
            }
            let runs = op
                .get("x-runs-command")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            ops.push((method.to_ascii_uppercase(), path.clone(), fields, runs));
        }
    }
    ops
}

fn call(c: &panel_support::Client, method: &str, path: &str, fields: &[(String, Value)]) -> Resp {
    if method == "GET" {
        c.get(&format!("{path}{}", query(fields)))
    } else {
        c.post(path, &Value::Object(fields.to_vec()).to_json())
    }
}

#[test]
fn openapi_walk_valid_invalid_and_injected_input_never_executes() {
    let p = PanelSim::start(&["work", "dev"]);
    let mut c = p.login();
    let marker = p.sim.marker("pwned");
    let marker_s = marker.display().to_string();
    let doc = c.get("/api/openapi.json").json();
    assert_eq!(doc.get("openapi").and_then(Value::as_str), Some("3.0.3"));
    let ops = operations(&doc);
    assert!(ops.len() >= 8, "{}", ops.len());
    let skip = |path: &str| path == "/login" || path.ends_with("/events") || path == "/api/logout";
    let mut statuses = Vec::new();
    for (method, path, fields, runs) in &ops {
        if skip(path) {
            continue;
        }
        let url = fill_path(path, fields);
        let valid = example_body(fields);
        // Valid input: never a validation or auth failure, never a server bug.
        let r = call(&c, method, &url, &valid);
        assert!(
            ![400, 401, 403, 405, 415, 500].contains(&r.status),
            "{method} {path} valid input: {} {}",
            r.status,
            r.text()
        );
        assert_well_formed(&r);
        statuses.push(format!("{method} {path} {}", r.status));
        // Each field: missing (when required), wrong type, and every injection string.
        for (i, (name, example, required, in_path)) in fields.iter().enumerate() {
            let with = |v: Option<Value>| -> Vec<(String, Value)> {
                let mut out = Vec::new();
                for (j, (n, e, _, ip)) in fields.iter().enumerate() {
                    if *ip {
                        continue;
                    }
                    if j == i {
                        if let Some(v) = &v {
                            out.push((n.clone(), v.clone()));
                        }
                    } else {
                        out.push((n.clone(), e.clone()));
                    }
                }
                out
            };
            if *in_path {
                for inj in injections(&marker_s) {
                    let bad_url = path.replace(&format!("{{{name}}}"), &pct(&inj));
                    let bad_url = fill_path(&bad_url, fields);
                    let r = call(&c, method, &bad_url, &valid);
                    assert!(
                        [400, 404].contains(&r.status),
                        "{method} {path} {name}={inj:?}: {}",
                        r.status
                    );
                }
                continue;
            }
            if *required {
                let r = call(&c, method, &url, &with(None));
                assert_eq!(
                    r.status,
                    400,
                    "{method} {path} without {name}: {}",
                    r.text()
                );
            }
            let wrong_type = match example {
                Value::String(_) => Value::Number(7.0),
                Value::Number(_) => Value::String("7x".into()),
                Value::Bool(_) => Value::String("maybe".into()),
                Value::Array(_) => Value::String("not a list".into()),
                _ => Value::Object(vec![]),
            };
            if method == "POST" || !matches!(example, Value::String(_)) {
                let r = call(&c, method, &url, &with(Some(wrong_type)));
                assert_eq!(
                    r.status,
                    400,
                    "{method} {path} {name} wrong type: {}",
                    r.text()
                );
            }
            for inj in injections(&marker_s) {
                let v = match example {
                    Value::Array(items) => {
                        // In an argv, the injection is an argument: data to the program.
                        let mut a = items.clone();
                        if *runs {
                            a.push(Value::String(inj.clone()));
                        } else {
                            a = vec![Value::String(inj.clone())];
                        }
                        Value::Array(a)
                    }
                    _ => Value::String(inj.clone()),
                };
                let r = call(&c, method, &url, &with(Some(v)));
                assert!(
                    r.status < 500 || r.status == 502,
                    "{method} {path} {name}={inj:?}: {} {}",
                    r.status,
                    r.text()
                );
                assert!(
                    !marker.exists(),
                    "{method} {path} {name}={inj:?} ran something!"
                );
            }
        }
        // Unknown parameters are refused, not ignored.
        let mut extra = valid.clone();
        extra.push(("no_such_parameter".into(), Value::String("x".into())));
        let r = call(&c, method, &url, &extra);
        assert_eq!(
            r.status,
            400,
            "{method} {path} unknown parameter: {}",
            r.text()
        );
        // Re-login if an endpoint ended the session.
        if c.get("/api/session").status == 401 {
            c = p.login();
        }
    }
    // Let background tasks started by the walk finish, then look again.
    let tasks = c.get("/api/tasks").json();
    for t in tasks.get("tasks").and_then(Value::as_array).unwrap_or(&[]) {
        let id = t.get("id").and_then(Value::as_str).unwrap();
        let _ = c.post(&format!("/api/tasks/{id}/cancel"), "{}");
        wait_task(&c, id);
    }
    assert!(!marker.exists(), "an injection string was executed");
    // No fake tool ever got an argument that starts with - from a parameter.
    for call in p.fake_calls() {
        for w in call.iter().skip(1) {
            assert!(!w.contains("touch") || !w.starts_with('-'), "{call:?}");
        }
    }
    // Every POST endpoint's valid call is in the audit log.
    let log = p.sim.log_text();
    for (method, path, _, _) in &ops {
        if method == "POST" && !skip(path) {
            assert!(
                log.contains(&format!("action={path} ")),
                "{path} not logged"
            );
        }
    }
    eprintln!("{}", statuses.join("\n"));
}

/// Reads one Content-Length response into `buf` with as few reads as possible (the
/// load generator must not eat the CPU the server needs); returns its status.
fn read_buffered(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).ok()?;
            let status: u16 = head.get(9..12)?.parse().ok()?;
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))?
                .parse()
                .ok()?;
            let total = end + 4 + len;
            if buf.len() >= total {
                buf.drain(..total);
                return Some(status);
            }
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `make bench-panel`: /health under 64 keep-alive connections for 10 s.
#[test]
#[ignore]
fn bench_health_under_64_keep_alive_connections() {
    const CONNECTIONS: usize = 64;
    const SECONDS: u64 = 10;
    let p = PanelSim::start(&["work"]);
    let threads = |pid: u32| -> usize {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    // The worker pool starts right after the address file is written: one request
    // first, so "before" counts the whole pool.
    assert_eq!(get_raw(&p, &p.host(), "/health", "").status, 200);
    let before = threads(p.pid());
    let req = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", p.host());
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let peak = std::sync::atomic::AtomicUsize::new(before);
    let results: Vec<(Vec<u32>, usize)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let req = req.clone();
                scope.spawn(move || {
                    let mut lat = Vec::new();
                    let mut errors = 0;
                    let mut s = connect(p.port);
                    let mut buf = Vec::with_capacity(4096);
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        if s.write_all(req.as_bytes()).is_err() {
                            errors += 1;
                            s = connect(p.port);
                            buf.clear();
                            continue;
                        }
                        match read_buffered(&mut s, &mut buf) {
                            Some(200) => lat.push(t.elapsed().as_micros() as u32),
                            _ => {
                                errors += 1;
                                s = connect(p.port);
                                buf.clear();
                            }
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        while Instant::now() < deadline {
            peak.fetch_max(threads(p.pid()), std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(200));
        }
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let after = threads(p.pid());
    let mut all: Vec<u32> = results
        .iter()
        .flat_map(|(l, _)| l.iter().copied())
        .collect();
    let errors: usize = results.iter().map(|(_, e)| e).sum();
    all.sort_unstable();
    let pct = |q: f64| all[((all.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
    println!("panel /health, {CONNECTIONS} keep-alive connections, {SECONDS} s:");
    println!("  requests   {}", all.len());
    println!(
        "  throughput {:.0} req/s",
        all.len() as f64 / SECONDS as f64
    );
    println!("  p50        {:.2} ms", pct(0.50));
    println!("  p99        {:.2} ms", pct(0.99));
    println!("  max        {:.2} ms", pct(1.0));
    println!("  errors     {errors}");
    println!(
        "  threads    {before} before, {} peak, {after} after",
        peak.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert_eq!(errors, 0);
    assert_eq!(before, after, "thread count changed");
    assert_eq!(
        peak.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "thread count grew under load"
    );
    assert!(pct(0.99) <= 20.0, "p99 {:.2} ms over 20 ms", pct(0.99));
}

/// Reads an event stream on `s` until `needle` appears or `limit` passes.
fn read_events_until(s: &mut TcpStream, needle: &str, limit: Duration) -> String {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if String::from_utf8_lossy(&text).contains(needle) {
            break;
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

fn open_events(p: &PanelSim, c: &panel_support::Client, path: &str) -> TcpStream {
    let mut s = connect(p.port);
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\n\r\n",
            p.host(),
            c.cookie
        )
        .as_bytes(),
    )
    .unwrap();
    s
}

fn task_id(r: &Resp) -> String {
    assert_eq!(r.status, 202, "{}", r.text());
    panel_support::json_str(&r.body, "task")
}

fn status_of(v: &Value) -> String {
    v.get("status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

#[test]
fn execute_streams_output_and_cancel_timeout_and_page_close_kill_the_group() {
    let p = PanelSim::start(&["work"]);
    let c = p.login();
    let marker = p.sim.marker("exec-pwned");
    let m = marker.display().to_string();
    // Words are data: the injection is printed, not run, in dom0 and in a VM.
    let r = c.post(
        "/api/exec/dom0",
        &Value::Object(vec![(
            "argv".into(),
            Value::Array(vec![
                Value::String("echo".into()),
                Value::String(format!("$(touch {m})")),
                Value::String(format!("; touch {m}")),
            ]),
        )])
        .to_json(),
    );
    let id = task_id(&r);
    let mut s = open_events(&p, &c, &format!("/api/tasks/{id}/events"));
    let text = read_events_until(&mut s, "event: end", Duration::from_secs(20));
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(
        text.contains(&format!("$(touch {m}) ; touch {m}")),
        "{text}"
    );
    assert!(text.contains("event: end"), "{text}");
    let r = c.post(
        "/api/exec/vm",
        &format!(r#"{{"vm": "work", "argv": ["echo", "`touch {m}`", "$QVM_SIM_VM"]}}"#),
    );
    let v = wait_task(&c, &task_id(&r));
    assert_eq!(status_of(&v), "done", "{}", v.to_json());
    assert_eq!(
        panel_support::task_output(&v),
        format!("`touch {m}` $QVM_SIM_VM\n")
    );
    assert!(!marker.exists());

    // Cancel: SIGTERM to the group, the background child goes too.
    let r = c.post(
        "/api/exec/dom0",
        r#"{"argv": ["sh", "-c", "echo started; sleep 31.25 & sleep 31.5"]}"#,
    );
    let id = task_id(&r);
    let mut s = open_events(&p, &c, &format!("/api/tasks/{id}/events"));
    read_events_until(&mut s, "started", Duration::from_secs(10));
    let r = c.post(&format!("/api/tasks/{id}/cancel"), "{}");
    assert_eq!(r.status, 200);
    let v = wait_task(&c, &id);
    assert_eq!(status_of(&v), "cancelled");
    assert!(common::wait_for(Duration::from_secs(5), || {
        common::processes_matching("sleep 31.25").is_empty()
            && common::processes_matching("sleep 31.5").is_empty()
    }));

    // Timeout.
    let r = c.post(
        "/api/exec/dom0",
        r#"{"argv": ["sleep", "33.5"], "timeout": 1}"#,
    );
    let v = wait_task(&c, &task_id(&r));
    assert_eq!(status_of(&v), "timeout");

    // A dangerous program needs confirmation.
    let r = c.post(
        "/api/exec/dom0",
        r#"{"argv": ["rm", "-f", "/nonexistent/qvm-panel"]}"#,
    );
    assert_eq!(r.status, 409);
    assert_eq!(
        r.json().get("needs_confirmation").and_then(Value::as_bool),
        Some(true)
    );
    let r = c.post(
        "/api/exec/dom0",
        r#"{"argv": ["rm", "-f", "/nonexistent/qvm-panel"], "confirm": true}"#,
    );
    wait_task(&c, &task_id(&r));
    // In a VM too.
    let r = c.post(
        "/api/exec/vm",
        r#"{"vm": "work", "argv": ["rm", "-f", "/nonexistent/qvm-panel"]}"#,
    );
    assert_eq!(r.status, 409, "{}", r.text());
    let r = c.post(
        "/api/exec/vm",
        r#"{"vm": "work", "argv": ["rm", "-f", "/nonexistent/qvm-panel"], "confirm": true}"#,
    );
    wait_task(&c, &task_id(&r));

    // Nobody watching (the page was closed): killed after UNWATCHED_LIMIT.
    let r = c.post("/api/exec/dom0", r#"{"argv": ["sleep", "34.5"]}"#);
    let id = task_id(&r);
    let limit = qvm_remote::panel::tasks::UNWATCHED_LIMIT + Duration::from_secs(5);
    let deadline = Instant::now() + limit;
    let mut status = String::new();
    while Instant::now() < deadline {
        // The list does not count as watching.
        let list = c.get("/api/tasks").json();
        status = list
            .get("tasks")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .find(|t| t.get("id").and_then(Value::as_str) == Some(&id))
            })
            .map(status_of)
            .unwrap_or_default();
        if status != "running" {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(status, "cancelled");
    let v = c.get(&format!("/api/tasks/{id}")).json();
    assert!(
        v.get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .contains("nobody was watching"),
        "{}",
        v.to_json()
    );
    assert!(common::processes_matching("sleep 34.5").is_empty());
}

fn sim_pref(p: &PanelSim, tool: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(common::sim_tools().join(tool))
        .args(args)
        .env("QVM_SIM_DIR", &p.sim.sim_dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn prefs_features_tags_and_services_change_the_simulator() {
    let p = PanelSim::start(&["work"]);
    let c = p.login();
    let r = c.post(
        "/api/prefs/set",
        r#"{"scope": "global", "name": "default_netvm", "value": "sys-net"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sim_pref(&p, "qubes-prefs", &["default_netvm"]), "sys-net");
    let r = c.post(
        "/api/prefs/set",
        r#"{"scope": "vm", "vm": "work", "name": "memory", "value": "1234"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sim_pref(&p, "qvm-prefs", &["work", "memory"]), "1234");
    let listed = c.get("/api/prefs?vm=work").text();
    assert!(
        listed.contains("\"name\": \"memory\", \"value\": \"1234\""),
        "{listed}"
    );
    let r = c.post(
        "/api/prefs/set",
        r#"{"scope": "vm", "vm": "work", "name": "memory", "reset": true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sim_pref(&p, "qvm-prefs", &["work", "memory"]), "400");
    // A property the tool refuses: 502 with its exit and stderr, for the staged item.
    let r = c.post(
        "/api/prefs/set",
        r#"{"scope": "vm", "vm": "work", "name": "no_such_prop", "value": "1"}"#,
    );
    assert_eq!(r.status, 502);
    let v = r.json();
    assert_eq!(v.get("exit").and_then(Value::as_u64), Some(2));
    assert!(v
        .get("stderr")
        .and_then(Value::as_str)
        .unwrap_or("")
        .contains("no_such_prop"));
    // Option-looking values and scope mistakes are refused before anything runs.
    for body in [
        r#"{"scope": "vm", "vm": "work", "name": "memory", "value": "--help"}"#,
        r#"{"scope": "vm", "name": "memory", "value": "1"}"#,
        r#"{"scope": "global", "vm": "work", "name": "memory", "value": "1"}"#,
        r#"{"scope": "vm", "vm": "work", "name": "memory"}"#,
        r#"{"scope": "vm", "vm": "dom0", "name": "memory", "value": "1"}"#,
    ] {
        assert_eq!(c.post("/api/prefs/set", body).status, 400, "{body}");
    }
    // VM Tools edits.
    assert_eq!(
        c.post(
            "/api/tools/tags",
            r#"{"vm": "work", "action": "add", "tag": "proj"}"#
        )
        .status,
        200
    );
    assert!(sim_pref(&p, "qvm-tags", &["work", "list"]).contains("proj"));
    assert_eq!(
        c.post(
            "/api/tools/tags",
            r#"{"vm": "work", "action": "del", "tag": "proj"}"#
        )
        .status,
        200
    );
    assert!(!sim_pref(&p, "qvm-tags", &["work", "list"]).contains("proj"));
    assert_eq!(
        c.post(
            "/api/tools/features",
            r#"{"vm": "work", "name": "gui-x", "value": "1"}"#
        )
        .status,
        200
    );
    assert_eq!(sim_pref(&p, "qvm-features", &["work", "gui-x"]), "1");
    assert_eq!(
        c.post(
            "/api/tools/features",
            r#"{"vm": "work", "name": "gui-x", "unset": true}"#
        )
        .status,
        200
    );
    assert_eq!(sim_pref(&p, "qvm-features", &["work", "gui-x"]), "");
    assert_eq!(
        c.post(
            "/api/tools/services",
            r#"{"vm": "work", "name": "cups", "state": "on"}"#
        )
        .status,
        200
    );
    assert_eq!(sim_pref(&p, "qvm-features", &["work", "service.cups"]), "1");
    let r = c.post(
        "/api/tools/devices",
        r#"{"class": "block", "action": "attach", "vm": "work", "device": "sys-usb:sda"}"#,
    );
    assert_eq!(r.status, 200);
    let r = c.post("/api/tools/firewall", r#"{"vm": "work", "op": "add", "action": "accept", "dsthost": "qubes-os.org", "proto": "tcp", "dstports": "443"}"#);
    assert_eq!(r.status, 200);
    let calls = p.fake_calls();
    assert!(
        calls.contains(
            &["qvm-device", "block", "attach", "work", "sys-usb:sda"]
                .map(String::from)
                .to_vec()
        ),
        "{calls:?}"
    );
    assert!(
        calls.contains(
            &[
                "qvm-firewall",
                "work",
                "add",
                "action=accept",
                "dsthost=qubes-os.org",
                "proto=tcp",
                "dstports=443"
            ]
            .map(String::from)
            .to_vec()
        ),
        "{calls:?}"
    );
    // Power.
    assert_eq!(
        c.post("/api/vms/power", r#"{"vm": "vault", "action": "start"}"#)
            .status,
        200
    );
    assert_eq!(sim_pref(&p, "simctl", &["state", "vault"]), "Running");
}

#[test]
fn files_push_pull_ask_before_overwriting_and_stay_inside_the_directory() {
    let p = PanelSim::start(&["work"]);
    let c = p.login();
    let home = p.sim.vm_home("work");
    let dest = home.join("pushed.txt").display().to_string();
    let body = format!(r#"{{"file": "hello.txt", "vm": "work", "dest": "{dest}"}}"#);
    let r = c.post("/api/files/push", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "hello from dom0\n");
    let r = c.post("/api/files/push", &body);
    assert_eq!(r.status, 409, "no overwrite without asking");
    let r = c.post(
        "/api/files/push",
        &body.replace('}', r#", "overwrite": true}"#),
    );
    assert_eq!(r.status, 200);
    let size = c.get(&format!(
        "/api/files/vm-size?vm=work&path={}",
        dest.replace('/', "%2F")
    ));
    assert_eq!(size.json().get("size").and_then(Value::as_u64), Some(16));
    let pull = format!(r#"{{"vm": "work", "src": "{dest}", "dest": "sub/back.txt"}}"#);
    let r = c.post("/api/files/pull", &pull);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        std::fs::read_to_string(p.files_dir.join("sub/back.txt")).unwrap(),
        "hello from dom0\n"
    );
    let r = c.post("/api/files/pull", &pull);
    assert_eq!(r.status, 409);
    let listing = c.get("/api/files?path=sub").text();
    assert!(
        listing.contains("\"name\": \"back.txt\", \"type\": \"file\", \"size\": 16"),
        "{listing}"
    );
    // A symlink inside the directory is never followed, for reading or writing.
    std::os::unix::fs::symlink("/etc", p.files_dir.join("etc-link")).unwrap();
    assert_eq!(c.get("/api/files?path=etc-link").status, 403);
    let r = c.post(
        "/api/files/push",
        &format!(
            r#"{{"file": "etc-link/hostname", "vm": "work", "dest": "{dest}", "overwrite": true}}"#
        ),
    );
    assert_eq!(r.status, 403);
    let r = c.post(
        "/api/files/pull",
        &format!(r#"{{"vm": "work", "src": "{dest}", "dest": "etc-link/x"}}"#),
    );
    assert_eq!(r.status, 403);
    assert!(!std::path::Path::new("/etc/x").exists());
    for bad in ["../x", "/etc/x", "sub/../../x", "./x", ""] {
        let r = c.post(
            "/api/files/pull",
            &format!(r#"{{"vm": "work", "src": "{dest}", "dest": "{bad}"}}"#),
        );
        assert_eq!(r.status, 400, "{bad}");
    }
    let r = c.post(
        "/api/files/pull",
        r#"{"vm": "work", "src": "relative/path", "dest": "x"}"#,
    );
    assert_eq!(r.status, 400);
}

/// A ustar archive with one entry named `name` (any name: the header is patched and
/// its checksum fixed, as a hostile archive would be).
fn forged_tar(name: &str, data: &[u8]) -> Vec<u8> {
    use qvm_remote::panel::tar;
    let mut bytes = tar::write(
        &[tar::Entry {
            name: "placeholder".into(),
            mode: 0o600,
            data: data.to_vec(),
        }],
        0,
    )
    .unwrap();
    bytes[..100].fill(0);
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    bytes[148..156].copy_from_slice(b"        ");
    let sum: u32 = bytes[..512].iter().map(|&b| u32::from(b)).sum();
    bytes[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    bytes
}

#[test]
fn config_backup_restores_and_hostile_archives_are_refused() {
    let p = PanelSim::start(&["work", "dev"]);
    let c = p.login();
    let key_path = p.sim.dom0.join("keys/work.key");
    let key_before = std::fs::read_to_string(&key_path).unwrap();
    let r = c.post("/api/backup/config/create", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let name = panel_support::json_str(&r.body, "name");
    let entries = r.json().get("entries").unwrap().to_json();
    assert!(
        entries.contains("remote.conf") && entries.contains("remote.d/work.key"),
        "{entries}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p.files_dir.join(&name))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(c.get("/api/backup/config").text().contains(&name));
    // Lose the key, check the restore (nothing written), then restore it.
    assert_eq!(c.post("/api/vms/revoke", r#"{"vm": "work"}"#).status, 200);
    let body = format!(r#"{{"name": "{name}"}}"#);
    let r = c.post("/api/backup/config/restore", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json().get("written").and_then(Value::as_bool),
        Some(false)
    );
    assert!(!key_path.exists());
    let r = c.post(
        "/api/backup/config/restore",
        &format!(r#"{{"name": "{name}", "confirm": true}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        std::fs::read_to_string(&key_path).unwrap().trim(),
        key_before.trim()
    );
    // Hostile archives: nothing is written, whatever they hold.
    let victim = p.sim.root.join("victim");
    for (i, (entry, data)) in [
        ("../../victim", b"x".as_slice()),
        ("/tmp/victim", b"x".as_slice()),
        ("remote.d/../../victim", b"x".as_slice()),
        ("evil.sh", b"touch /tmp/x".as_slice()),
        ("remote.d/work.key", b"not a key".as_slice()),
        ("remote.conf", b"QVM_REMOTE_NOPE=1\n".as_slice()),
        ("remote.d/-x.key", &[b'a'; 64]),
    ]
    .iter()
    .enumerate()
    {
        let file = format!("qvm-remote-config-hostile-{i}.tar");
        std::fs::write(p.files_dir.join(&file), forged_tar(entry, data)).unwrap();
        let r = c.post(
            "/api/backup/config/restore",
            &format!(r#"{{"name": "{file}", "confirm": true}}"#),
        );
        assert_eq!(r.status, 422, "{entry}: {}", r.text());
        assert!(!victim.exists());
        assert_eq!(
            std::fs::read_to_string(&key_path).unwrap().trim(),
            key_before.trim()
        );
    }
    for bad in ["../x.tar", "/etc/x.tar", ".hidden.tar"] {
        let r = c.post(
            "/api/backup/config/restore",
            &format!(r#"{{"name": "{bad}"}}"#),
        );
        assert_eq!(r.status, 400, "{bad}");
    }
    // qvm-backup as a task: progress, and the passphrase only on stdin.
    let r = c.post("/api/backup/start", r#"{"dest": "/backups", "dest_vm": "work", "vms": ["work", "dev"], "passphrase": "s3cret pass", "compress": true}"#);
    let v = wait_task(&c, &task_id(&r));
    assert_eq!(status_of(&v), "done", "{}", v.to_json());
    assert_eq!(v.get("progress").and_then(Value::as_u64), Some(100));
    let call = p
        .fake_calls()
        .into_iter()
        .find(|c| c[0] == "qvm-backup")
        .unwrap();
    assert_eq!(
        call,
        [
            "qvm-backup",
            "--yes",
            "--passphrase-file",
            "-",
            "--dest-vm",
            "work",
            "--compress",
            "--",
            "/backups",
            "work",
            "dev"
        ]
        .map(String::from)
        .to_vec()
    );
    let log = p.sim.log_text();
    assert!(!log.contains("s3cret"), "the passphrase reached the log");
    assert!(log.contains("passphrase=\"(not logged)\""), "{log}");
}

#[test]
fn approvals_policy_check_save_and_dev_mode() {
    let mut p = PanelSim::start(&["work", "dev"]);
    let c = p.login();
    let policy = p.sim.dom0.join("policy");
    // Lint and save: a bad policy is refused and the file is unchanged.
    let r = c.post("/api/policy/lint", r#"{"text": "work allow\n"}"#);
    assert_eq!(
        r.json().get("ok").and_then(Value::as_bool),
        Some(false),
        "{}",
        r.text()
    );
    let r = c.post(
        "/api/policy/save",
        r#"{"text": "nosuchvm allow qvm-ls *\n"}"#,
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(!policy.exists());
    let good = "work ask basename *\nwork allow uname *\nwork level manage\ndev level monitor\n";
    let r = c.post(
        "/api/policy/save",
        &Value::Object(vec![("text".into(), Value::String(good.into()))]).to_json(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), good);
    let log = p.sim.log_text();
    assert!(
        log.contains("action=/api/policy/save status=200 text=\"sha256:"),
        "{log}"
    );
    assert!(!log.contains("uname"), "the policy text itself was logged");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&policy).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let shown = c.get("/api/policy").json();
    assert_eq!(
        shown
            .get("lint")
            .and_then(|l| l.get("ok"))
            .and_then(Value::as_bool),
        Some(true),
        "{}",
        shown.to_json()
    );
    assert!(shown
        .get("levels")
        .unwrap()
        .to_json()
        .contains("\"level\": \"manage\""));
    // Check: the daemon's own decision, nothing run.
    let marker = p.sim.marker("check-pwned");
    for (vm, cmd, want) in [
        ("work", "basename x".to_string(), "ask"),
        ("work", "uname -a".to_string(), "allow"),
        ("dev", "basename x".to_string(), "deny"),
        ("work", format!("$(touch {})", marker.display()), "deny"),
    ] {
        let body = Value::Object(vec![
            ("vm".into(), Value::String(vm.into())),
            ("command".into(), Value::String(cmd.clone())),
        ]);
        let r = c.post("/api/policy/check", &body.to_json());
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            panel_support::json_str(&r.body, "decision"),
            want,
            "{vm} {cmd}: {}",
            r.text()
        );
    }
    assert!(!marker.exists());
    // Dev mode: the server's expiry, a served VM only.
    let r = c.post(
        "/api/devmode",
        r#"{"vm": "dev", "action": "on", "minutes": 5}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let left = v.get("seconds_left").and_then(Value::as_u64).unwrap();
    assert!((295..=300).contains(&left), "{left}");
    let shown = c
        .get("/api/policy")
        .json()
        .get("devmode")
        .unwrap()
        .to_json();
    assert!(
        shown.contains("\"vm\": \"dev\", \"state\": \"active\""),
        "{shown}"
    );
    assert_eq!(
        c.post(
            "/api/devmode",
            r#"{"vm": "vault", "action": "on", "minutes": 5}"#
        )
        .status,
        409
    );
    assert_eq!(
        c.post(
            "/api/devmode",
            r#"{"vm": "dev", "action": "on", "minutes": 121}"#
        )
        .status,
        400
    );
    assert_eq!(
        c.post("/api/devmode", r#"{"vm": "dev", "action": "off"}"#)
            .status,
        200
    );
    assert!(!c
        .get("/api/policy")
        .text()
        .contains("\"state\": \"active\""));
    // Approvals: a job parked by `ask`, denied through the API; its client gets 126.
    p.sim.start_daemon();
    let sim_dir = p.sim.sim_dir.clone();
    let client = std::thread::spawn(move || {
        std::process::Command::new(common::sim_tools().join("simctl"))
            .args([
                "exec",
                "work",
                "qvm-remote",
                "-t",
                "60",
                "basename",
                "denied-job",
            ])
            .env("QVM_SIM_DIR", &sim_dir)
            .output()
            .unwrap()
    });
    let mut id = String::new();
    assert!(
        common::wait_for(Duration::from_secs(30), || {
            let v = c.get("/api/approvals").json();
            if let Some(first) = v
                .get("pending")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
            {
                assert_eq!(
                    first.get("command").and_then(Value::as_str),
                    Some("basename denied-job")
                );
                id = first.get("id").and_then(Value::as_str).unwrap().to_string();
                true
            } else {
                false
            }
        }),
        "no pending job: {}",
        p.sim.log_text()
    );
    let r = c.post(
        "/api/approvals/decide",
        &format!(r#"{{"id": "{id}", "decision": "deny"}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let again = c.post(
        "/api/approvals/decide",
        &format!(r#"{{"id": "{id}", "decision": "approve"}}"#),
    );
    assert!([404, 409].contains(&again.status), "{}", again.text());
    let out = client.join().unwrap();
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    let unknown = c.post(
        "/api/approvals/decide",
        r#"{"id": "20261204-153000-4242-0123456789abcdef", "decision": "approve"}"#,
    );
    assert_eq!(unknown.status, 404);
    // The daemon and the panel both append to the audit log; report whether the chain
    // held (see the report: audit.rs keeps the last chain value in memory).
    p.sim.stop_daemon();
    let verify = p.sim.dom0_cmd(&["audit", "verify"], b"");
    eprintln!(
        "audit verify: {} {}",
        common::stdout(&verify),
        common::stderr(&verify)
    );
}

#[test]
fn audit_log_records_every_action_with_key_fingerprints_only() {
    let p = PanelSim::start(&["work"]);
    let c = p.login();
    let key = "ab".repeat(32);
    let r = c.post(
        "/api/vms/authorize",
        &format!(r#"{{"vm": "newvm", "key": "{key}"}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let fingerprint = panel_support::json_str(&r.body, "fingerprint");
    assert_eq!(fingerprint.len(), 16);
    assert!(!r.text().contains(&key), "the key came back");
    let vms = c.get("/api/vms").text();
    assert!(!vms.contains(&key) && vms.contains(&fingerprint));
    let log = p.sim.log_text();
    assert!(!log.contains(&key), "the key reached the log");
    assert!(
        log.contains(&format!("key=fingerprint:{fingerprint}")),
        "{log}"
    );
    assert!(
        log.contains("PANEL action=/api/vms/authorize status=200 vm=newvm"),
        "{log}"
    );
    // Refused calls are logged too, with why.
    c.post("/api/vms/revoke", r#"{"vm": "--all"}"#);
    let log = p.sim.log_text();
    assert!(
        log.contains("PANEL action=/api/vms/revoke status=400"),
        "{log}"
    );
    // Many actions at once from several connections: the chain still verifies.
    std::thread::scope(|scope| {
        for i in 0..8 {
            let c = &c;
            scope.spawn(move || {
                for j in 0..5 {
                    let body = format!(r#"{{"vm": "work", "action": "add", "tag": "t{i}-{j}"}}"#);
                    assert_eq!(c.post("/api/tools/tags", &body).status, 200);
                }
            });
        }
    });
    let dash = c.get("/api/dashboard").json();
    assert_eq!(
        dash.get("audit")
            .and_then(|a| a.get("ok"))
            .and_then(Value::as_bool),
        Some(true),
        "{}",
        dash.to_json()
    );
}

#[test]
fn live_log_tail_streams_new_lines() {
    let p = PanelSim::start(&["work"]);
    let c = p.login();
    let mut s = open_events(&p, &c, "/api/logs/events");
    read_events_until(&mut s, "event: hello", Duration::from_secs(5));
    assert_eq!(
        c.post(
            "/api/prefs/set",
            r#"{"scope": "global", "name": "clockvm", "value": "sys-net"}"#
        )
        .status,
        200
    );
    let text = read_events_until(&mut s, "/api/prefs/set", Duration::from_secs(10));
    assert!(
        text.contains("event: line") && text.contains("\\/api\\/prefs\\/set")
            || text.contains("/api/prefs/set"),
        "{text}"
    );
    let filtered = c.get("/api/logs?category=PANEL&text=clockvm").json();
    assert_eq!(
        filtered.get("matched").and_then(Value::as_u64),
        Some(1),
        "{}",
        filtered.to_json()
    );
}

#[test]
fn the_page_holds_no_inline_script_or_style_and_no_html_sinks() {
    let p = PanelSim::start(&["work"]);
    let host = p.host();
    let index = get_raw(&p, &host, "/", "");
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = index.text();
    assert!(!html.contains(" style="), "inline style attribute");
    assert!(!html.contains("<style"), "inline style element");
    assert!(!html.contains("javascript:"));
    for tag in html.split("<script").skip(1) {
        assert!(
            tag.trim_start().starts_with("src=\"/app.js\""),
            "inline script: {tag}"
        );
    }
    for attr in [" onclick=", " onload=", " onerror=", " onsubmit="] {
        assert!(!html.contains(attr), "{attr}");
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "a CDN or external URL"
    );
    let js = get_raw(&p, &host, "/app.js", "").text();
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "setAttribute('style'",
        ".style.",
    ] {
        assert!(!js.contains(sink), "app.js uses {sink}");
    }
    let css = get_raw(&p, &host, "/app.css", "");
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert!(!css.text().contains("@import") && !css.text().contains("url("));
    assert_eq!(get_raw(&p, &host, "/favicon.svg", "").status, 200);
}
