//! Who may talk to the panel (shared/DESIGN.md §8).
//!
//! - **Host.** Every request must name the panel itself: `127.0.0.1:PORT` or
//!   `localhost:PORT` (`[::1]:PORT` when bound to ::1). Anything else is 421, which
//!   defeats DNS rebinding: a page on another name that resolves to 127.0.0.1 sends its
//!   own name.
//! - **Login.** `qvm-remote-dom0 panel url` writes a one-time token (256 bits from
//!   `/dev/urandom`, hex) to `<run dir>/panel-token`, mode 0600, and prints a URL that
//!   carries it. `GET /login?token=…` compares it in constant time, deletes the file, and
//!   sets a session cookie: `HttpOnly` (no script can read it), `SameSite=Strict` (no
//!   other site's page can send it), `Path=/`. A token older than [`LOGIN_TOKEN_TTL`]
//!   is refused and removed.
//! - **Sessions.** At most [`MAX_SESSIONS`], in memory only (a restart logs everyone
//!   out), each ending after [`SESSION_IDLE`] without use or [`SESSION_MAX_AGE`] after
//!   login. Each has its own CSRF token, which the page reads from `GET /api/session`.
//! - **State changes.** A POST needs the session cookie, `X-CSRF-Token` equal to the
//!   session's token (constant-time compare), an `Origin` equal to `http://` + the
//!   checked Host, and `Content-Type: application/json`.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use qvm_remote_hmac::{ct_eq, hex};

use crate::atomic::{self, Durability};

use super::http::{Head, HttpError};

/// The login token file in the run dir.
pub const TOKEN_FILE: &str = "panel-token";
/// How long a login token stays valid after `panel url` wrote it.
pub const LOGIN_TOKEN_TTL: Duration = Duration::from_secs(300);
/// Random bytes in a login token, a session id and a CSRF token.
pub const SECRET_BYTES: usize = 32;
/// The session cookie's name.
pub const COOKIE_NAME: &str = "qvmr_session";
/// Most sessions at once; the oldest is dropped for a new login.
pub const MAX_SESSIONS: usize = 16;
/// A session unused this long ends.
pub const SESSION_IDLE: Duration = Duration::from_secs(3600);
/// A session ends this long after login whatever happens.
pub const SESSION_MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Largest token file read.
const MAX_TOKEN_FILE: u64 = 256;

/// Creates `run_dir` if needed (0700) and refuses it when others could write to it or
/// it belongs to someone else: the token file must only be readable by us.
pub fn ensure_run_dir(run_dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(run_dir)?;
    let meta = fs::symlink_metadata(run_dir)?;
    let owner = crate::keys::trusted_owner();
    if !meta.is_dir() || (meta.uid() != owner && meta.uid() != 0) || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{}: not a private directory of ours (want owner root or uid {owner}, not group- or world-writable)",
            run_dir.display()
        )));
    }
    Ok(())
}

fn token_path(run_dir: &Path) -> PathBuf {
    run_dir.join(TOKEN_FILE)
}

/// Random hex of [`SECRET_BYTES`] bytes.
pub fn random_secret() -> io::Result<String> {
    let mut b = [0u8; SECRET_BYTES];
    crate::rand::fill(&mut b)?;
    Ok(hex::encode(&b))
}

/// Writes a fresh login token (replacing any earlier one) and returns it.
pub fn issue_login_token(run_dir: &Path) -> io::Result<String> {
    ensure_run_dir(run_dir)?;
    let token = random_secret()?;
    atomic::replace(&token_path(run_dir), token.as_bytes(), Durability::Synced)?;
    Ok(token)
}

/// Checks a presented login token against the file; on success the file is removed,
/// so the URL works once. An expired token file is removed too.
pub fn redeem_login_token(run_dir: &Path, presented: &str) -> bool {
    let path = token_path(run_dir);
    let Ok(mut f) = OpenOptions::new()
        .read(true)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(&path)
    else {
        return false;
    };
    let Ok(meta) = f.metadata() else {
        return false;
    };
    let owner = crate::keys::trusted_owner();
    if !meta.is_file() || (meta.uid() != owner && meta.uid() != 0) || meta.mode() & 0o077 != 0 {
        return false;
    }
    let age = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or(Duration::MAX);
    if age > LOGIN_TOKEN_TTL {
        let _ = fs::remove_file(&path);
        return false;
    }
    let mut stored = String::new();
    if Read::by_ref(&mut f)
        .take(MAX_TOKEN_FILE)
        .read_to_string(&mut stored)
        .is_err()
    {
        return false;
    }
    let stored = stored.trim();
    if stored.len() != SECRET_BYTES * 2 || !ct_eq(stored.as_bytes(), presented.as_bytes()) {
        return false;
    }
    fs::remove_file(&path).is_ok()
}

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    id: String,
    /// The CSRF token the page must send back in `X-CSRF-Token`.
    pub csrf: String,
    created: Instant,
    last_used: Instant,
}

impl Session {
    /// Seconds until this session ends if it is not used.
    pub fn expires_in(&self, now: Instant) -> Duration {
        let idle_end = self.last_used + SESSION_IDLE;
        let hard_end = self.created + SESSION_MAX_AGE;
        idle_end.min(hard_end).saturating_duration_since(now)
    }
}

/// The live sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    list: Mutex<Vec<Session>>,
}

impl Sessions {
    /// No sessions.
    pub fn new() -> Sessions {
        Sessions::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Session>> {
        match self.list.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Starts a session; returns its id (for the cookie).
    pub fn create(&self) -> io::Result<String> {
        let now = Instant::now();
        let s = Session {
            id: random_secret()?,
            csrf: random_secret()?,
            created: now,
            last_used: now,
        };
        let id = s.id.clone();
        let mut list = self.lock();
        list.retain(|s| !s.expires_in(now).is_zero());
        if list.len() >= MAX_SESSIONS {
            list.remove(0);
        }
        list.push(s);
        Ok(id)
    }

    /// The session named by the request's cookie, refreshed; `None` without a valid one.
    pub fn find(&self, head: &Head) -> Option<Session> {
        let presented = session_cookie(head)?;
        let now = Instant::now();
        let mut list = self.lock();
        list.retain(|s| !s.expires_in(now).is_zero());
        // Compare against every session in constant time each, so the time taken does
        // not tell which prefix matched.
        let mut found = None;
        for (i, s) in list.iter().enumerate() {
            if ct_eq(s.id.as_bytes(), presented.as_bytes()) {
                found = Some(i);
            }
        }
        let s = list.get_mut(found?)?;
        s.last_used = now;
        Some(s.clone())
    }

    /// Ends the session named by the request's cookie.
    pub fn remove(&self, head: &Head) {
        if let Some(presented) = session_cookie(head) {
            self.lock()
                .retain(|s| !ct_eq(s.id.as_bytes(), presented.as_bytes()));
        }
    }

    /// How many sessions are live.
    pub fn count(&self) -> usize {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|s| !s.expires_in(now).is_zero())
            .count()
    }
}

/// The `Set-Cookie` value that starts a session.
pub fn session_cookie_header(id: &str) -> String {
    format!(
        "{COOKIE_NAME}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_MAX_AGE.as_secs()
    )
}

/// The `Set-Cookie` value that ends a session.
pub fn clear_cookie_header() -> String {
    format!("{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// The value of our cookie in the request's `Cookie` header(s), if any.
fn session_cookie(head: &Head) -> Option<String> {
    head.headers
        .iter()
        .filter(|(n, _)| n == "cookie")
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_string())
}

/// The Host values the panel answers to, for a listener on `port`.
pub fn allowed_hosts(port: u16, ipv6: bool) -> Vec<String> {
    let mut v = vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")];
    if ipv6 {
        v.push(format!("[::1]:{port}"));
    }
    v
}

/// Host check: 421 unless the request names the panel itself.
pub fn check_host(head: &Head, allowed: &[String]) -> Result<(), HttpError> {
    let host = head.header("host").unwrap_or_default();
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) {
        Ok(())
    } else {
        Err(HttpError::new(
            421,
            "wrong Host: use the URL that `panel url` prints",
        ))
    }
}

/// The checks of a state-changing request, in order, before its body is read.
pub fn check_post(head: &Head, session: &Session) -> Result<(), HttpError> {
    let host = head.header("host").unwrap_or_default();
    let origin = head.header("origin").unwrap_or_default();
    if origin.is_empty() {
        return Err(HttpError::new(403, "missing Origin"));
    }
    if !origin.eq_ignore_ascii_case(&format!("http://{host}")) {
        return Err(HttpError::new(403, "cross-origin request refused"));
    }
    let token = head.header("x-csrf-token").unwrap_or_default();
    if !ct_eq(token.as_bytes(), session.csrf.as_bytes()) {
        return Err(HttpError::new(403, "missing or wrong X-CSRF-Token"));
    }
    let ctype = head.header("content-type").unwrap_or_default();
    let media = ctype.split(';').next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return Err(HttpError::new(415, "Content-Type must be application/json"));
    }
    if head.header("content-length").is_none() {
        return Err(HttpError::new(411, "Content-Length required"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::panel::http::parse_head;

    fn head(extra: &str) -> Head {
        parse_head(
            format!("POST /api/x HTTP/1.1\r\nHost: 127.0.0.1:9876\r\n{extra}\r\n").as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn host_must_name_the_panel() {
        let allowed = allowed_hosts(9876, false);
        assert!(check_host(&head(""), &allowed).is_ok());
        for bad in [
            "evil.example:9876",
            "127.0.0.1",
            "127.0.0.1:9877",
            "127.0.0.2:9876",
        ] {
            let h =
                parse_head(format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n").as_bytes()).unwrap();
            assert_eq!(check_host(&h, &allowed).unwrap_err().status, 421, "{bad}");
        }
        let h = parse_head(b"GET / HTTP/1.1\r\nHost: LOCALHOST:9876\r\n\r\n").unwrap();
        assert!(check_host(&h, &allowed).is_ok());
    }

    #[test]
    fn sessions_and_post_checks() {
        let sessions = Sessions::new();
        let id = sessions.create().unwrap();
        assert!(sessions.find(&head("")).is_none());
        assert!(sessions
            .find(&head("Cookie: qvmr_session=nope\r\n"))
            .is_none());
        let s = sessions
            .find(&head(&format!("Cookie: a=b; {COOKIE_NAME}={id}\r\n")))
            .unwrap();
        let good = format!(
            "Origin: http://127.0.0.1:9876\r\nX-CSRF-Token: {}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 2\r\n",
            s.csrf
        );
        assert!(check_post(&head(&good), &s).is_ok());
        let table: &[(&str, &str, u16)] = &[
            ("Origin: http://127.0.0.1:9876\r\n", "", 403),
            (
                "Origin: http://127.0.0.1:9876\r\n",
                "Origin: http://evil.example\r\n",
                403,
            ),
            ("Origin: http://127.0.0.1:9876\r\n", "Origin: null\r\n", 403),
            ("X-CSRF-Token: ", "X-CSRF-Token: x", 403),
            (
                "Content-Type: application/json; charset=utf-8",
                "Content-Type: text/plain",
                415,
            ),
            ("Content-Length: 2\r\n", "", 411),
        ];
        for (from, to, status) in table {
            let bad = good.replacen(from, to, 1);
            assert_eq!(
                check_post(&head(&bad), &s).unwrap_err().status,
                *status,
                "{bad}"
            );
        }
        sessions.remove(&head(&format!("Cookie: {COOKIE_NAME}={id}\r\n")));
        assert_eq!(sessions.count(), 0);
    }

    #[test]
    fn login_tokens_work_once() {
        let dir = std::env::temp_dir().join(format!("qvm-panel-auth-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let run = dir.join("run");
        let token = issue_login_token(&run).unwrap();
        assert_eq!(token.len(), 64);
        assert!(!redeem_login_token(&run, "0".repeat(64).as_str()));
        assert!(!redeem_login_token(&run, ""));
        assert!(redeem_login_token(&run, &token));
        assert!(!redeem_login_token(&run, &token), "a token works once");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn session_limit_drops_the_oldest() {
        let sessions = Sessions::new();
        let first = sessions.create().unwrap();
        for _ in 0..MAX_SESSIONS {
            sessions.create().unwrap();
        }
        assert_eq!(sessions.count(), MAX_SESSIONS);
        assert!(sessions
            .find(&head(&format!("Cookie: {COOKIE_NAME}={first}\r\n")))
            .is_none());
    }
}
