//! Shared by tests/panel.rs and tests/panel_browser.rs: a simulated dom0 (tests/sim via
//! `common::Sim`) with the admin panel running on an ephemeral loopback port, fake
//! versions of the dom0 tools the simulator does not provide, and a tiny raw-socket
//! HTTP client.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, Sim};

/// Fake dom0 tools: each logs its argv (one line, words joined by a US byte) to
/// $QVM_PANEL_FAKE_LOG and prints canned output. None of them evaluates its arguments.
const FAKE_TOOLS: &[(&str, &str)] = &[
    // `panel url --open`: the desktop opener, and runuser to reach the desktop user.
    ("xdg-open", "true"),
    ("runuser", "true"),
    (
        "xl",
        r#"case "$1" in
info) printf 'host                   : simhost\nrelease                : 6.6.48-1.qubes.fc37.x86_64\nxen_version            : 4.17.4\nnr_cpus                : 4\ntotal_memory           : 16000\nfree_memory            : 8123\n' ;;
*) echo "xl: unsupported: $1" >&2; exit 1 ;;
esac"#,
    ),
    (
        "journalctl",
        r#"printf '2026-12-04T15:30:00+0000 dom0 qvm-remote-dom0[42]: started\n2026-12-04T15:30:01+0000 dom0 qvm-remote-dom0[42]: serving work\n'"#,
    ),
    (
        "systemctl",
        r#"state_dir=${QVM_PANEL_FAKE_LOG%/*}
case "$1" in
is-active) cat "$state_dir/active" 2>/dev/null || { echo inactive; exit 3; } ;;
is-enabled) cat "$state_dir/enabled" 2>/dev/null || { echo disabled; exit 1; } ;;
start|restart) echo active > "$state_dir/active" ;;
stop) rm -f "$state_dir/active" ;;
enable) echo enabled > "$state_dir/enabled"; [ "$2" = --now ] && echo active > "$state_dir/active"; true ;;
disable) rm -f "$state_dir/enabled"; [ "$2" = --now ] && rm -f "$state_dir/active"; true ;;
*) echo "systemctl: unsupported $1" >&2; exit 1 ;;
esac"#,
    ),
    (
        "qvm-firewall",
        r#"vm=$1; shift
case "${1:-list}" in
list) printf 'NO  ACTION  HOST  PROTOCOL  PORT(S)  SPECIAL TARGET  ICMP TYPE  EXPIRE  COMMENT\n0   accept  -     -         -        dns             -          -       -\n1   drop    -     -         -        -               -          -       -\n' ;;
add|del) echo "firewall $vm $*" ;;
*) echo "qvm-firewall: error: unknown action $1" >&2; exit 2 ;;
esac"#,
    ),
    (
        "qvm-device",
        r#"class=$1; shift
case "$1" in
list|ls|l) case "$class" in
  usb) printf 'sys-usb:2-1  Kingston_DataTraveler\nsys-usb:2-2  Logitech_Mouse  work\n' ;;
  block) printf 'sys-usb:sda  Kingston_DataTraveler ()\n' ;;
  pci) printf 'dom0:00_14.0  USB controller: Intel  sys-usb\n' ;;
  mic) printf 'dom0:mic  Microphone\n' ;;
  esac ;;
attach|a|detach|d) echo "$class $*" ;;
*) echo "qvm-device: error: bad action" >&2; exit 2 ;;
esac"#,
    ),
    (
        "qvm-backup",
        r#"read -r pass || true
[ -n "$pass" ] || { echo "qvm-backup: no passphrase" >&2; exit 2; }
for p in 10 40 75 100; do echo "Backup progress: $p%"; sleep 0.2; done
echo "Backup finished"
"#,
    ),
    (
        "qubes-dom0-update",
        r#"case " $* " in
*" --check-only "*) echo "Checking for dom0 updates..."; echo "No updates available"; exit 0 ;;
*) for p in 20 60 100; do echo "Downloading: $p%"; sleep 0.2; done; echo "Complete!" ;;
esac"#,
    ),
    (
        "qvm-template",
        r#"case "$1" in
list) printf 'Installed Templates\nfedora-40  0:4.2.0-1  qubes-templates-itl\ndebian-12  0:4.2.0-1  qubes-templates-itl\nAvailable Templates\nfedora-41-xfce  0:4.2.0-1  qubes-templates-itl\n' ;;
install) for p in 25 50 100; do echo "Downloading ${@: -1}: $p%"; sleep 0.2; done ;;
*) echo "qvm-template: error: unknown command" >&2; exit 2 ;;
esac"#,
    ),
];

pub struct PanelSim {
    pub sim: Sim,
    pub child: Option<Child>,
    pub port: u16,
    pub fakebin: PathBuf,
    pub files_dir: PathBuf,
    pub qrexec_dir: PathBuf,
    pub openclaw_conf: PathBuf,
}

impl PanelSim {
    /// A simulator with `vms`, an OpenClaw VM, fake tools, and the panel started.
    pub fn start(vms: &[&str]) -> PanelSim {
        let mut sim = Sim::new(vms);
        sim.set("QVM_REMOTE_PANEL_ADDR", "127.0.0.1:0");
        sim.simctl(&["add-vm", "claw1", "--tag", "openclaw", "--label", "purple"]);
        sim.simctl(&["add-vm", "vault", "--halted", "--label", "black"]);
        let fakebin = sim.root.join("fakebin");
        fs::create_dir_all(&fakebin).unwrap();
        for (name, body) in FAKE_TOOLS {
            let path = fakebin.join(name);
            let script = format!(
                "#!/usr/bin/env bash\n(IFS=$'\\x1f'; printf '%s\\n' \"{name}$IFS$*\") >> \"$QVM_PANEL_FAKE_LOG\"\n{body}\n"
            );
            fs::write(&path, script).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let files_dir = sim.root.join("files");
        fs::create_dir_all(files_dir.join("sub")).unwrap();
        fs::write(files_dir.join("hello.txt"), "hello from dom0\n").unwrap();
        let qrexec_dir = sim.root.join("policy.d");
        fs::create_dir_all(&qrexec_dir).unwrap();
        fs::write(
            qrexec_dir.join("30-user.policy"),
            "qubes.Filecopy * work @default ask\n",
        )
        .unwrap();
        let openclaw_conf = sim.root.join("openclaw.conf");
        let mut p = PanelSim {
            sim,
            child: None,
            port: 0,
            fakebin,
            files_dir,
            qrexec_dir,
            openclaw_conf,
        };
        p.spawn();
        p
    }

    pub fn fake_log(&self) -> PathBuf {
        self.fakebin.join("calls.log")
    }

    /// Lines of the fake tools' call log, words split.
    pub fn fake_calls(&self) -> Vec<Vec<String>> {
        fs::read_to_string(self.fake_log())
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('\x1f').map(str::to_string).collect())
            .collect()
    }

    pub fn path_env(&self) -> String {
        format!(
            "{}:{}:{}",
            self.fakebin.display(),
            common::sim_tools().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    pub fn panel_command(&self, args: &[&str]) -> Command {
        let mut c = self.sim.dom0_command(args);
        c.env("PATH", self.path_env())
            .env("QVM_PANEL_FAKE_LOG", self.fake_log());
        c
    }

    fn spawn(&mut self) {
        let addr_file = self.sim.dom0.join("run/panel-addr");
        let _ = fs::remove_file(&addr_file);
        let mut c = self.panel_command(&[
            "panel",
            "--files-dir",
            self.files_dir.to_str().unwrap(),
            "--qrexec-dir",
            self.qrexec_dir.to_str().unwrap(),
            "--openclaw-conf",
            self.openclaw_conf.to_str().unwrap(),
        ]);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.child = Some(c.spawn().unwrap());
        assert!(
            common::wait_for(Duration::from_secs(20), || addr_file.exists()),
            "the panel did not start"
        );
        let text = fs::read_to_string(&addr_file).unwrap();
        self.port = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// `qvm-remote-dom0 panel url`.
    pub fn login_url(&self) -> String {
        let out = self.panel_command(&["panel", "url"]).output().unwrap();
        assert!(out.status.success(), "panel url: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Logs in through the URL; returns a client with cookie and CSRF token.
    pub fn login(&self) -> Client {
        let url = self.login_url();
        let path = url.split_once(&self.host()).unwrap().1.to_string();
        let mut c = Client {
            port: self.port,
            cookie: String::new(),
            csrf: String::new(),
        };
        let r = c.get(&path);
        assert_eq!(r.status, 303, "{}", r.text());
        let set = r.header("set-cookie").unwrap().to_string();
        c.cookie = set.split(';').next().unwrap().to_string();
        let s = c.get("/api/session");
        assert_eq!(s.status, 200);
        c.csrf = json_str(&s.body, "csrf");
        c
    }

    /// SIGTERM and wait; returns how long it took.
    pub fn stop(&mut self) -> Duration {
        let mut child = self.child.take().unwrap();
        let t = Instant::now();
        common::signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return t.elapsed();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PanelSim {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of a string member in a JSON body (our own parser).
pub fn json_str(body: &[u8], key: &str) -> String {
    let v = qvm_remote::json::parse(body).unwrap();
    v.get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> qvm_remote::json::Value {
        qvm_remote::json::parse(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

/// Reads one response from `stream` (Content-Length delimited, or to EOF for an event
/// stream). `None` if the connection closed before a status line.
pub fn read_response(stream: &mut TcpStream) -> Option<Resp> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8(buf).unwrap();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse::<usize>().unwrap());
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            stream.read_exact(&mut body).unwrap();
        }
        None => {
            let _ = stream.read_to_end(&mut body);
        }
    }
    Some(Resp {
        status,
        headers,
        body,
    })
}

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Sends raw bytes on a new connection and reads one response.
pub fn raw(port: u16, bytes: &[u8]) -> Option<Resp> {
    let mut s = connect(port);
    s.write_all(bytes).ok()?;
    read_response(&mut s)
}

pub struct Client {
    pub port: u16,
    pub cookie: String,
    pub csrf: String,
}

impl Client {
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn get(&self, path: &str) -> Resp {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\nConnection: close\r\n\r\n",
            self.host(),
            self.cookie
        );
        raw(self.port, req.as_bytes()).expect("a response")
    }

    /// A POST with every check satisfied.
    pub fn post(&self, path: &str, body: &str) -> Resp {
        self.post_with(path, body, &[])
    }

    /// A POST whose headers are changed: `(name, Some(value))` replaces or adds,
    /// `(name, None)` removes.
    pub fn post_with(&self, path: &str, body: &str, changes: &[(&str, Option<&str>)]) -> Resp {
        let origin = format!("http://{}", self.host());
        let mut headers: Vec<(String, String)> = vec![
            ("Host".into(), self.host()),
            ("Cookie".into(), self.cookie.clone()),
            ("Origin".into(), origin),
            ("X-CSRF-Token".into(), self.csrf.clone()),
            ("Content-Type".into(), "application/json".into()),
            ("Content-Length".into(), body.len().to_string()),
            ("Connection".into(), "close".into()),
        ];
        for (name, value) in changes {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            if let Some(v) = value {
                headers.push(((*name).to_string(), (*v).to_string()));
            }
        }
        let mut req = format!("POST {path} HTTP/1.1\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        raw(self.port, req.as_bytes()).expect("a response")
    }
}

/// Waits for a task to finish; returns its final JSON.
pub fn wait_task(c: &Client, id: &str) -> qvm_remote::json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c.get(&format!("/api/tasks/{id}"));
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        if v.get("status").and_then(|s| s.as_str()) != Some("running") {
            return v;
        }
        assert!(Instant::now() < deadline, "task {id} still running");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// All output text of a task JSON.
pub fn task_output(v: &qvm_remote::json::Value) -> String {
    v.get("output")
        .and_then(|o| o.as_array())
        .map(|chunks| {
            chunks
                .iter()
                .filter_map(|c| c.get("text").and_then(|t| t.as_str()))
                .collect::<String>()
        })
        .unwrap_or_default()
}

pub fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}
