//! The install path, through the real scripts and binaries: `install-dom0.sh` end to end
//! over the Qubes simulator (tests/sim), `make install-*` with DESTDIR, the static
//! client, reproducible release builds, the systemd units, the RPM and Debian packages,
//! the Salt formula, shellcheck, and one version number everywhere.
//!
//! Tests that need a tool this machine may lack (shellcheck, rpmbuild, dpkg-buildpackage,
//! salt-call, script) skip with a message, except under CI (`CI` set), where a missing
//! tool fails: .ci/run installs them all.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{run_with_stdin, sim_tools, temp_dir, CLIENT, DOM0};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `sha256sum`'s answer: the tool users run, and fast on the large debug binaries.
fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("sha256sum: {e}"));
    assert!(
        out.status.success(),
        "sha256sum {}: {}",
        path.display(),
        text(&out)
    );
    let sum = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(sum.len(), 64, "{sum}");
    sum
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// True when `tool` is on PATH. Missing under CI is a failure; elsewhere a skip.
fn tool_available(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing under CI: .ci/run must install it"
        );
        eprintln!("SKIP: {tool} not installed (apt-get install it to run this test)");
    }
    found
}

/// Every (relative path, mode) below `root`, directories included.
fn tree(root: &Path) -> BTreeMap<String, u32> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, u32>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(rel, mode(&p));
            if p.is_dir() && !p.is_symlink() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn make(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut c = Command::new("make");
    c.arg("-C")
        .arg(repo())
        .arg("--no-print-directory")
        .args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.stdin(Stdio::null()).output().expect("make runs")
}

// ---------------------------------------------------------------------------------------
// install-dom0.sh over the simulator

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A simulated Qubes system with one running VM `work` (the client binary on its
/// PATH, no key), the dom0 bundle built from the debug binary at install-dom0.sh's
/// default path in that VM, a fake `systemctl` that logs its arguments, and an empty
/// install root standing in for dom0's `/`.
struct Dom0 {
    dir: PathBuf,
    /// Copies of the debug binaries taken at setup, so a concurrent rebuild of
    /// target/debug cannot change them under the test.
    dom0_bin: PathBuf,
    client_bin: PathBuf,
    sim_dir: PathBuf,
    root: PathBuf,
    fake_bin: PathBuf,
    bundle: PathBuf,
    uid_base: u32,
}

impl Dom0 {
    fn new() -> Dom0 {
        let dir = temp_dir("install");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let d = Dom0 {
            dom0_bin: dir.join("qvm-remote-dom0"),
            client_bin: dir.join("qvm-remote"),
            sim_dir: dir.join("qubes"),
            root: dir.join("root"),
            fake_bin: dir.join("fakebin"),
            bundle: PathBuf::new(),
            uid_base: 400_000 + ((std::process::id() % 2048) * 32 + n % 32) * 16,
            dir,
        };
        fs::copy(DOM0, &d.dom0_bin).unwrap();
        fs::copy(CLIENT, &d.client_bin).unwrap();
        d.simctl(&["init"]);
        d.simctl(&["add-vm", "work"]);
        fs::copy(&d.client_bin, d.sim_dir.join("bin/qvm-remote")).unwrap();
        fs::create_dir(&d.root).unwrap();
        fs::create_dir(&d.fake_bin).unwrap();
        let log = d.dir.join("systemctl.log");
        let fake = format!(
            "#!/bin/sh\n# records each call, one line of arguments\nprintf '%s\\n' \"$*\" >> '{}'\n",
            log.display()
        );
        let systemctl = d.fake_bin.join("systemctl");
        fs::write(&systemctl, fake).unwrap();
        fs::set_permissions(&systemctl, fs::Permissions::from_mode(0o755)).unwrap();
        let home = d.vm_home();
        let bundle = home.join("qvm-remote/target/qvm-remote-dom0.tar");
        let mut d = d;
        d.bundle = bundle;
        d.build_bundle(&d.dom0_bin.clone());
        d
    }

    fn simctl(&self, args: &[&str]) -> Output {
        let out = Command::new(sim_tools().join("simctl"))
            .args(args)
            .env("QVM_SIM_DIR", &self.sim_dir)
            .env("QVM_SIM_UID_BASE", self.uid_base.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "simctl {args:?}: {}", text(&out));
        out
    }

    fn vm_home(&self) -> PathBuf {
        let out = self.simctl(&["home", "work"]);
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    }

    /// (Re)builds the bundle in the VM with `dom0_bin` as its dom0 binary; returns its hash.
    fn build_bundle(&self, dom0_bin: &Path) -> String {
        fs::create_dir_all(self.bundle.parent().unwrap()).unwrap();
        let out = Command::new(repo().join("packaging/mkbundle.sh"))
            .arg(&self.bundle)
            .arg(dom0_bin)
            .output()
            .unwrap();
        assert!(out.status.success(), "mkbundle.sh: {}", text(&out));
        fs::set_permissions(&self.bundle, fs::Permissions::from_mode(0o644)).unwrap();
        sha256_file(&self.bundle)
    }

    fn path_env(&self) -> String {
        format!(
            "{}:{}:/usr/sbin:/usr/bin:/sbin:/bin",
            self.fake_bin.display(),
            sim_tools().display()
        )
    }

    /// install-dom0.sh ARGS with stdin bytes (never a terminal), as dom0 with host
    /// name `host`, installing below the install root.
    fn install_as(&self, host: &str, args: &[&str], stdin: &[u8]) -> Output {
        let mut c = Command::new("bash");
        c.arg(repo().join("install-dom0.sh")).args(args);
        c.env_clear()
            .env("PATH", self.path_env())
            .env("QVM_SIM_DIR", &self.sim_dir)
            .env("QVM_REMOTE_INSTALL_ROOT", &self.root)
            .env("QVM_REMOTE_INSTALL_TEST_HOSTNAME", host)
            .env("LANG", "C.UTF-8");
        run_with_stdin(c, stdin)
    }

    fn install(&self, args: &[&str]) -> Output {
        self.install_as("dom0", args, b"")
    }

    fn sha(&self) -> String {
        sha256_file(&self.bundle)
    }

    /// The installed dom0 binary, pointed at the install root's files.
    fn dom0_cmd(&self, args: &[&str]) -> Output {
        let mut c = Command::new(self.root.join("usr/bin/qvm-remote-dom0"));
        c.args(args);
        for (k, v) in self.dom0_env() {
            c.env(k, v);
        }
        c.env("PATH", self.path_env())
            .env("QVM_SIM_DIR", &self.sim_dir);
        run_with_stdin(c, b"")
    }

    fn dom0_env(&self) -> Vec<(&'static str, PathBuf)> {
        let r = &self.root;
        vec![
            ("QVM_REMOTE_CONF", r.join("etc/qubes/remote.conf")),
            ("QVM_REMOTE_KEYS_DIR", r.join("etc/qubes/remote.d")),
            ("QVM_REMOTE_POLICY", r.join("etc/qubes/remote-policy")),
            ("QVM_REMOTE_STATE_DIR", r.join("var/lib/qvm-remote")),
            ("QVM_REMOTE_RUN_DIR", r.join("run/qvm-remote")),
            ("QVM_REMOTE_LOG", r.join("var/log/qubes/qvm-remote.log")),
        ]
    }

    fn in_vm(&self, argv: &[&str], stdin: &[u8]) -> Output {
        let mut c = Command::new(sim_tools().join("simctl"));
        c.arg("exec").arg("work").args(argv);
        c.env("QVM_SIM_DIR", &self.sim_dir);
        run_with_stdin(c, stdin)
    }

    fn systemctl_calls(&self) -> Vec<String> {
        fs::read_to_string(self.dir.join("systemctl.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn spawns(&self) -> String {
        fs::read_to_string(self.sim_dir.join("spawns.log")).unwrap_or_default()
    }

    fn dom0_key_file(&self) -> PathBuf {
        self.root.join("etc/qubes/remote.d/work.key")
    }

    fn vm_key_file(&self) -> PathBuf {
        self.vm_home().join(".qvm-remote/auth.key")
    }

    /// `install-dom0.sh work --yes --sha256 <right hash>`, which must succeed.
    fn install_ok(&self) -> Output {
        let out = self.install(&["work", "--yes", "--sha256", &self.sha()]);
        assert!(out.status.success(), "install: {}", text(&out));
        out
    }
}

impl Drop for Dom0 {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The files a successful install puts below the root, with their modes.
const INSTALLED: &[(&str, u32)] = &[
    ("etc/qubes/remote-policy", 0o644),
    ("etc/qubes/remote.conf", 0o644),
    ("etc/qubes/remote.d", 0o700),
    ("etc/qubes/remote.d/work.key", 0o600),
    ("usr/bin/qvm-remote-dom0", 0o755),
    ("usr/lib/qvm-remote/qvm-remote-provision", 0o755),
    ("usr/lib/systemd/system-preset/30-qvm-remote.preset", 0o644),
    ("usr/lib/systemd/system/qvm-remote-dom0.service", 0o644),
    ("usr/lib/systemd/system/qvm-remote-panel.service", 0o644),
];

fn installed_files(root: &Path) -> BTreeMap<String, u32> {
    tree(root)
        .into_iter()
        .filter(|(p, m)| {
            fs::symlink_metadata(root.join(p)).is_ok_and(|md| !md.is_dir()) || *m == 0o700
        })
        .collect()
}

#[test]
fn install_dom0_refuses_outside_dom0() {
    let d = Dom0::new();
    let out = d.install_as("work", &["work", "--yes", "--sha256", &d.sha()], b"");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not dom0"));
    // The host-name override counts only together with a test install root: without
    // one, this machine's real name decides (and it is not dom0).
    let mut c = Command::new("bash");
    c.arg(repo().join("install-dom0.sh"))
        .args(["work", "--yes", "--sha256", &d.sha()])
        .env_clear()
        .env("PATH", d.path_env())
        .env("QVM_SIM_DIR", &d.sim_dir)
        .env("QVM_REMOTE_INSTALL_TEST_HOSTNAME", "dom0");
    let out = run_with_stdin(c, b"");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not dom0"));
    assert!(tree(&d.root).is_empty());
    assert_eq!(d.spawns(), "", "nothing was read from the VM");
}

#[test]
fn install_dom0_without_a_terminal_needs_yes_and_a_hash() {
    let d = Dom0::new();
    let table: &[(&[&str], &str)] = &[
        (&["work"], "not a terminal"),
        (&["work", "--sha256", &"a".repeat(64)], "not a terminal"),
        (&["work", "--yes"], "--yes needs --sha256"),
        (&["work", "--uninstall"], "not a terminal"),
    ];
    for (args, why) in table {
        let out = d.install(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{args:?}: want {why:?}: {}",
            text(&out)
        );
    }
    let usage: &[&[&str]] = &[
        &[],
        &["work", "--purge"],
        &["work", "--upgrade", "--enable"],
        &["work", "--frobnicate"],
        &["work", "--sha256"],
    ];
    for args in usage {
        let out = d.install(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    for bad in ["dom0", "-x", "1abc", "a b", "none"] {
        let out = d.install(&[bad, "--yes", "--sha256", &d.sha()]);
        assert_ne!(out.status.code(), Some(0), "{bad}: {}", text(&out));
    }
    let out = d.install(&["work", "--yes", "--sha256", "abc"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 hex"));
    let out = d.install(&["work", "--yes", "--sha256", &d.sha(), "--from", "a;b"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from"));
    assert!(tree(&d.root).is_empty());
    assert_eq!(d.spawns(), "");
}

#[test]
fn install_dom0_wrong_hash_installs_nothing() {
    let d = Dom0::new();
    let wrong = "0".repeat(64);
    let out = d.install(&["work", "--yes", "--sha256", &wrong]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SHA-256 mismatch"), "{err}");
    assert!(
        err.contains(&d.sha()),
        "the refusal names what dom0 received: {err}"
    );
    assert!(tree(&d.root).is_empty(), "{:?}", tree(&d.root));
    assert!(d.systemctl_calls().is_empty());
    assert!(!d.vm_key_file().exists(), "no key was pushed");
    // One spawn: the read of the bundle; nothing else ran in the VM.
    assert_eq!(d.spawns().lines().count(), 1, "{}", d.spawns());
    // A bundle that is not what make print-hash builds is refused even with its hash.
    fs::write(&d.bundle, b"not a tar file").unwrap();
    let out = d.install(&["work", "--yes", "--sha256", &d.sha()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(tree(&d.root).is_empty());
}

#[test]
fn install_dom0_end_to_end() {
    let d = Dom0::new();
    let out = d.install_ok();
    let all = text(&out);

    let want: BTreeMap<String, u32> = INSTALLED.iter().map(|(p, m)| (p.to_string(), *m)).collect();
    assert_eq!(installed_files(&d.root), want);
    assert_eq!(
        sha256_file(&d.root.join("usr/bin/qvm-remote-dom0")),
        sha256_file(&d.dom0_bin)
    );
    for (installed, shipped) in [
        (
            "usr/lib/systemd/system/qvm-remote-dom0.service",
            "packaging/systemd/qvm-remote-dom0.service",
        ),
        (
            "usr/lib/qvm-remote/qvm-remote-provision",
            "packaging/dom0/qvm-remote-provision",
        ),
        ("etc/qubes/remote-policy", "packaging/dom0/remote-policy"),
    ] {
        assert_eq!(
            fs::read(d.root.join(installed)).unwrap(),
            fs::read(repo().join(shipped)).unwrap(),
            "{installed}"
        );
    }
    let conf = fs::read_to_string(d.root.join("etc/qubes/remote.conf")).unwrap();
    assert!(conf.lines().any(|l| l == "QVM_REMOTE_VMS=work"), "{conf}");

    // The key was generated in dom0 and is the one the VM holds.
    let dom0_key = fs::read_to_string(d.dom0_key_file()).unwrap();
    let vm_key = fs::read_to_string(d.vm_key_file()).unwrap();
    let key_hex = dom0_key.trim().to_string();
    assert_eq!(key_hex.len(), 64);
    assert_eq!(vm_key.trim(), key_hex);
    let keys = d.dom0_cmd(&["keys"]);
    assert!(keys.status.success(), "{}", text(&keys));
    let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
    let dom0_fp = keys
        .lines()
        .find_map(|l| l.strip_prefix("work ").map(|r| r.split_whitespace().next()))
        .flatten()
        .unwrap_or_else(|| panic!("no work line in: {keys}"))
        .to_string();
    assert!(keys.contains("(served)"), "{keys}");
    let shown = d.in_vm(&["qvm-remote", "key", "show"], b"");
    assert!(shown.status.success(), "{}", text(&shown));
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), dom0_fp);

    // The key never appears in an argv (the simulator logs every qvm-run command),
    // in a systemctl call or in anything the installer printed.
    let spawns = d.spawns();
    assert!(!spawns.contains(&key_hex), "key in spawns.log:\n{spawns}");
    assert!(spawns.contains("qvm-remote key import"), "{spawns}");
    assert!(!d.systemctl_calls().join("\n").contains(&key_hex));
    assert!(!all.contains(&key_hex));

    // Started for this boot, not enabled.
    assert_eq!(
        d.systemctl_calls(),
        ["daemon-reload", "restart qvm-remote-dom0.service"]
    );

    // The shipped config parses and the VM is ready to serve.
    let check = d.dom0_cmd(&["check-config"]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains(&format!("ok: work key {dom0_fp}")));

    // A second plain install refuses: --upgrade replaces, provisioning adds VMs.
    let again = d.install(&["work", "--yes", "--sha256", &d.sha()]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already installed"));

    // And the installed daemon runs a command for the VM with that key.
    run_one_job(&d);
}

/// Submits `echo installed-ok` from the VM and serves it with one poll session of the
/// installed daemon, configured by the installed files.
fn run_one_job(d: &Dom0) {
    let mut client = Command::new(sim_tools().join("simctl"));
    client
        .args([
            "exec",
            "work",
            "qvm-remote",
            "-t",
            "30",
            "echo",
            "installed-ok",
        ])
        .env("QVM_SIM_DIR", &d.sim_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = client.spawn().unwrap();
    let pending = d.vm_home().join(".qvm-remote/queue/pending");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fs::read_dir(&pending).is_ok_and(|mut e| {
        e.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".job")))
    }) {
        assert!(Instant::now() < deadline, "the client wrote no job");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut daemon = Command::new(d.root.join("usr/bin/qvm-remote-dom0"));
    daemon.arg("--once");
    for (k, v) in d.dom0_env() {
        daemon.env(k, v);
    }
    daemon
        .env("QVM_REMOTE_MODE", "poll")
        .env("QVM_REMOTE_POLL_INTERVAL", "0.1")
        .env("PATH", d.path_env())
        .env("QVM_SIM_DIR", &d.sim_dir);
    let served = run_with_stdin(daemon, b"");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the client got no result; daemon: {}", text(&served));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(
        status.success() && stdout == "installed-ok\n",
        "client {status:?} {stdout:?}; daemon: {}",
        text(&served)
    );
}

#[test]
fn install_dom0_keeps_existing_config_and_policy() {
    let d = Dom0::new();
    let etc = d.root.join("etc/qubes");
    fs::create_dir_all(&etc).unwrap();
    let conf = "# mine\nQVM_REMOTE_VMS=work\nQVM_REMOTE_TIMEOUT=60\n";
    let policy = "# mine\nwork allow qvm-ls *\n";
    fs::write(etc.join("remote.conf"), conf).unwrap();
    fs::write(etc.join("remote-policy"), policy).unwrap();
    let out = d.install_ok();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("keeping the existing"), "{said}");
    assert_eq!(fs::read_to_string(etc.join("remote.conf")).unwrap(), conf);
    assert_eq!(
        fs::read_to_string(etc.join("remote-policy")).unwrap(),
        policy
    );
    assert!(d.dom0_key_file().exists());

    // A config that does not list the VM: kept, and the installer says so.
    let d = Dom0::new();
    fs::create_dir_all(d.root.join("etc/qubes")).unwrap();
    fs::write(
        d.root.join("etc/qubes/remote.conf"),
        "QVM_REMOTE_VMS=other\n",
    )
    .unwrap();
    let out = d.install_ok();
    assert!(String::from_utf8_lossy(&out.stdout).contains("not in QVM_REMOTE_VMS"));
    assert_eq!(
        fs::read_to_string(d.root.join("etc/qubes/remote.conf")).unwrap(),
        "QVM_REMOTE_VMS=other\n"
    );
}

#[test]
fn install_dom0_upgrade_replaces_binary_keeps_keys_and_restarts() {
    let d = Dom0::new();
    let refused = d.install(&["work", "--upgrade", "--yes", "--sha256", &d.sha()]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not installed"));

    d.install_ok();
    let key_before = fs::read(d.dom0_key_file()).unwrap();
    let vm_key_before = fs::read(d.vm_key_file()).unwrap();
    let conf_before = fs::read(d.root.join("etc/qubes/remote.conf")).unwrap();
    let spawns_before = d.spawns().lines().count();
    let calls_before = d.systemctl_calls().len();

    // A "new version": any program that answers --version will do.
    let new_sha = d.build_bundle(&d.client_bin);
    let wrong = d.install(&["work", "--upgrade", "--yes", "--sha256", &"1".repeat(64)]);
    assert_eq!(wrong.status.code(), Some(1));
    assert_eq!(
        sha256_file(&d.root.join("usr/bin/qvm-remote-dom0")),
        sha256_file(&d.dom0_bin),
        "a refused upgrade leaves the old binary"
    );

    let out = d.install(&["work", "--upgrade", "--yes", "--sha256", &new_sha]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        sha256_file(&d.root.join("usr/bin/qvm-remote-dom0")),
        sha256_file(&d.client_bin)
    );
    assert_eq!(fs::read(d.dom0_key_file()).unwrap(), key_before);
    assert_eq!(fs::read(d.vm_key_file()).unwrap(), vm_key_before);
    assert_eq!(
        fs::read(d.root.join("etc/qubes/remote.conf")).unwrap(),
        conf_before
    );
    // The upgrade reached the VM only through qvm-run reads (two bundle reads: the
    // refused one and this one), never through the daemon, and never stopped it.
    let spawns: Vec<String> = d
        .spawns()
        .lines()
        .skip(spawns_before)
        .map(str::to_string)
        .collect();
    assert_eq!(spawns.len(), 2, "{spawns:?}");
    assert!(
        spawns.iter().all(|l| l.contains(" work cat -- ")),
        "{spawns:?}"
    );
    let calls: Vec<String> = d.systemctl_calls().into_iter().skip(calls_before).collect();
    assert_eq!(
        calls,
        [
            "daemon-reload",
            "try-restart qvm-remote-dom0.service qvm-remote-panel.service"
        ]
    );
}

#[test]
fn install_dom0_uninstall_keeps_config_and_keys_purge_removes_them() {
    let d = Dom0::new();
    d.install_ok();
    let out = d.install(&["work", "--uninstall", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let left: Vec<String> = installed_files(&d.root).into_keys().collect();
    assert_eq!(
        left,
        [
            "etc/qubes/remote-policy",
            "etc/qubes/remote.conf",
            "etc/qubes/remote.d",
            "etc/qubes/remote.d/work.key"
        ]
    );
    let calls = d.systemctl_calls();
    assert_eq!(
        calls[calls.len() - 2..],
        [
            "disable --now qvm-remote-dom0.service qvm-remote-panel.service",
            "daemon-reload"
        ]
    );
    let out = d.install(&["--uninstall", "--purge", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(installed_files(&d.root).is_empty(), "{:?}", tree(&d.root));
}

#[test]
fn install_dom0_enable_asks_with_the_risk_prompt() {
    let d = Dom0::new();
    let out = d.install_as(
        "dom0",
        &["work", "--yes", "--enable", "--sha256", &d.sha()],
        b"no\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("as root"));
    assert!(!d.systemctl_calls().iter().any(|c| c.starts_with("enable")));

    let d = Dom0::new();
    let out = d.install_as(
        "dom0",
        &["work", "--yes", "--enable", "--sha256", &d.sha()],
        b"yes\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        d.systemctl_calls(),
        ["daemon-reload", "enable --now qvm-remote-dom0.service"]
    );
}

#[test]
fn provision_refuses_a_key_the_vm_does_not_hold() {
    let d = Dom0::new();
    d.install_ok();
    let other = "ab".repeat(32);
    let out = d.in_vm(
        &["qvm-remote", "key", "import"],
        format!("{other}\n").as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let mut c = Command::new(d.root.join("usr/lib/qvm-remote/qvm-remote-provision"));
    c.arg("work");
    for (k, v) in d.dom0_env() {
        c.env(k, v);
    }
    c.env(
        "PATH",
        format!("{}:{}", d.root.join("usr/bin").display(), d.path_env()),
    )
    .env("QVM_SIM_DIR", &d.sim_dir);
    let out = run_with_stdin(c, b"");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoke"));
    assert_eq!(
        fs::read_to_string(d.vm_key_file()).unwrap().trim(),
        other,
        "nothing was overwritten"
    );
}

/// The interactive path, through a pseudo-terminal (`script`): the typed hash decides.
#[test]
fn install_dom0_typed_hash_through_a_terminal() {
    if !tool_available("script") {
        return;
    }
    let d = Dom0::new();
    let run = |input: String| {
        let cmd = format!("bash '{}' work", repo().join("install-dom0.sh").display());
        let mut c = Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"])
            .env_clear()
            .env("PATH", d.path_env())
            .env("QVM_SIM_DIR", &d.sim_dir)
            .env("QVM_REMOTE_INSTALL_ROOT", &d.root)
            .env("QVM_REMOTE_INSTALL_TEST_HOSTNAME", "dom0")
            .env("TERM", "dumb");
        run_with_stdin(c, input.as_bytes())
    };
    let out = run(format!("{}\n", "f".repeat(64)));
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mismatch"));
    assert!(tree(&d.root).is_empty());

    let out = run(format!("{}\ny\n", d.sha().to_uppercase()));
    assert!(out.status.success(), "{}", text(&out));
    assert!(d.dom0_key_file().exists());
}

// ---------------------------------------------------------------------------------------
// make install-* with DESTDIR

#[test]
fn make_install_dom0_file_list_and_modes_never_overwrites() {
    let dest = temp_dir("destdir");
    let dom0 = Path::new(DOM0);
    let out = make(
        &["install-dom0", &format!("DESTDIR={}", dest.display())],
        &[("DOM0_BIN", dom0)],
    );
    assert!(out.status.success(), "{}", text(&out));
    let want: BTreeMap<String, u32> = [
        ("etc", 0o755),
        ("etc/qubes", 0o755),
        ("etc/qubes/remote-policy", 0o644),
        ("etc/qubes/remote.conf", 0o644),
        ("etc/qubes/remote.d", 0o700),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/bin/qvm-remote-dom0", 0o755),
        ("usr/lib", 0o755),
        ("usr/lib/qvm-remote", 0o755),
        ("usr/lib/qvm-remote/qvm-remote-provision", 0o755),
        ("usr/lib/systemd", 0o755),
        ("usr/lib/systemd/system", 0o755),
        ("usr/lib/systemd/system-preset", 0o755),
        ("usr/lib/systemd/system-preset/30-qvm-remote.preset", 0o644),
        ("usr/lib/systemd/system/qvm-remote-dom0.service", 0o644),
        ("usr/lib/systemd/system/qvm-remote-panel.service", 0o644),
        ("usr/share", 0o755),
        ("usr/share/doc", 0o755),
        ("usr/share/doc/qvm-remote", 0o755),
        ("usr/share/doc/qvm-remote/README.md", 0o644),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_string(), m))
    .collect();
    assert_eq!(tree(&dest), want);

    // Local changes and a key survive a second install and an uninstall.
    let etc = dest.join("etc/qubes");
    fs::write(etc.join("remote.conf"), "QVM_REMOTE_VMS=mine\n").unwrap();
    fs::write(etc.join("remote-policy"), "mine allow ls\n").unwrap();
    fs::set_permissions(etc.join("remote.d"), fs::Permissions::from_mode(0o711)).unwrap();
    fs::write(etc.join("remote.d/mine.key"), "k\n").unwrap();
    let out = make(
        &["install-dom0", &format!("DESTDIR={}", dest.display())],
        &[("DOM0_BIN", dom0)],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("keeping existing"));
    let check = |when: &str| {
        assert_eq!(
            fs::read_to_string(etc.join("remote.conf")).unwrap(),
            "QVM_REMOTE_VMS=mine\n",
            "{when}"
        );
        assert_eq!(
            fs::read_to_string(etc.join("remote-policy")).unwrap(),
            "mine allow ls\n",
            "{when}"
        );
        assert_eq!(
            mode(&etc.join("remote.d")),
            0o711,
            "{when}: dir mode untouched"
        );
        assert_eq!(
            fs::read_to_string(etc.join("remote.d/mine.key")).unwrap(),
            "k\n"
        );
    };
    check("after a second install");
    let out = make(
        &["uninstall-dom0", &format!("DESTDIR={}", dest.display())],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    check("after uninstall");
    let files: Vec<String> = tree(&dest)
        .into_keys()
        .filter(|p| !fs::metadata(dest.join(p)).unwrap().is_dir())
        .collect();
    assert_eq!(
        files,
        [
            "etc/qubes/remote-policy",
            "etc/qubes/remote.conf",
            "etc/qubes/remote.d/mine.key"
        ]
    );
    let _ = fs::remove_dir_all(&dest);
}

#[test]
fn make_install_vm_and_salt_with_prefix() {
    let dest = temp_dir("destdir-vm");
    let client = Path::new(CLIENT);
    let d = format!("DESTDIR={}", dest.display());
    let out = make(
        &["install-vm", &d, "PREFIX=/usr/local"],
        &[("CLIENT_BIN", client)],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = make(&["install-salt", &d], &[("CLIENT_BIN", client)]);
    assert!(out.status.success(), "{}", text(&out));
    let files: BTreeMap<String, u32> = tree(&dest)
        .into_iter()
        .filter(|(p, _)| !fs::metadata(dest.join(p)).unwrap().is_dir())
        .collect();
    let want: BTreeMap<String, u32> = [
        ("srv/salt/qvm-remote/authorize.sls", 0o644),
        ("srv/salt/qvm-remote/client.sls", 0o644),
        ("srv/salt/qvm-remote/create.sls", 0o644),
        ("srv/salt/qvm-remote/files/qvm-remote", 0o755),
        ("srv/salt/qvm-remote/map.jinja", 0o644),
        ("usr/local/bin/qvm-remote", 0o755),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_string(), m))
    .collect();
    assert_eq!(files, want);
    // Every salt:// path the formula names is a file that install-salt created
    // (upstream's formula pointed at a path that nothing created).
    let mut refs = 0;
    for sls in ["create.sls", "client.sls", "authorize.sls", "map.jinja"] {
        let body = fs::read_to_string(repo().join("packaging/salt/qvm-remote").join(sls)).unwrap();
        for (i, _) in body.match_indices("salt://") {
            let rest = &body[i + "salt://".len()..];
            let path: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '\'' && *c != '"')
                .collect();
            assert!(
                dest.join("srv/salt").join(&path).is_file(),
                "{sls} names salt://{path}, which make install-salt does not create"
            );
            refs += 1;
        }
    }
    assert!(refs >= 1);
    let out = make(&["uninstall-vm", &d, "PREFIX=/usr/local"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!dest.join("usr/local/bin/qvm-remote").exists());
    let _ = fs::remove_dir_all(&dest);
}

// ---------------------------------------------------------------------------------------
// Static client and reproducible builds

/// The program header types of an ELF64 little-endian file, read with std only.
fn elf_program_headers(bytes: &[u8]) -> Result<(u16, Vec<u32>), String> {
    let u16_at = |o: usize| -> Result<u16, String> {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("truncated at {o}"))
    };
    let u32_at = |o: usize| -> Result<u32, String> {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!("truncated at {o}"))
    };
    let u64_at = |o: usize| -> Result<u64, String> {
        let b = bytes
            .get(o..o + 8)
            .ok_or_else(|| format!("truncated at {o}"))?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    };
    if bytes.get(0..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file".into());
    }
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return Err("not ELF64 little-endian".into());
    }
    let e_type = u16_at(16)?;
    let phoff = usize::try_from(u64_at(32)?).map_err(|e| e.to_string())?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    if phentsize < 56 {
        return Err(format!("program header size {phentsize}"));
    }
    let mut types = Vec::new();
    for i in 0..phnum {
        types.push(u32_at(phoff + i * phentsize)?);
    }
    Ok((e_type, types))
}

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const ET_EXEC: u16 = 2;

#[test]
fn elf_reader_sees_a_dynamic_executable() {
    // The reader itself, on something known to be dynamic: the test binary.
    let me = fs::read(std::env::current_exe().unwrap()).unwrap();
    let (_, types) = elf_program_headers(&me).unwrap();
    assert!(
        types.contains(&PT_INTERP) && types.contains(&PT_DYNAMIC),
        "{types:?}"
    );
    assert!(elf_program_headers(b"\x7fELF").is_err());
    assert!(elf_program_headers(b"#!/bin/sh\n").is_err());
}

/// `make static` in this tree, one test at a time: two tests use target/static.
fn make_static() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = make(&["static"], &[]);
    assert!(out.status.success(), "make static: {}", text(&out));
    guard
}

#[test]
fn static_client_has_no_dynamic_section_and_runs_in_an_empty_environment() {
    let _static = make_static();
    let bin = repo().join("target/static/qvm-remote");
    let bytes = fs::read(&bin).unwrap();
    let size = bytes.len();
    eprintln!("static client: {size} bytes, SHA-256 {}", sha256_file(&bin));
    assert!(size <= 2 * 1024 * 1024, "{size} bytes > 2 MiB");
    let (e_type, types) = elf_program_headers(&bytes).unwrap();
    assert_eq!(e_type, ET_EXEC, "a fixed-address executable");
    assert!(!types.contains(&PT_INTERP), "{types:?}");
    assert!(!types.contains(&PT_DYNAMIC), "{types:?}");
    let out = Command::new(&bin)
        .arg("--version")
        .env_clear()
        .current_dir("/")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("qvm-remote {}\n", cargo_version())
    );
}

/// Two clean `make release` builds, from copies of the tree at different paths into
/// different target dirs, give byte-identical binaries.
#[test]
fn release_builds_are_reproducible() {
    let work = temp_dir("repro");
    let dist = make(&["dist", &format!("DIST_DIR={}", work.display())], &[]);
    assert!(dist.status.success(), "{}", text(&dist));
    let tarball = work.join(format!("qvm-remote-{}.tar.gz", cargo_version()));
    let mut hashes = Vec::new();
    for place in ["a/qvm-remote", "elsewhere/b/other-name"] {
        let dir = work.join(place);
        fs::create_dir_all(&dir).unwrap();
        let out = Command::new("tar")
            .args(["-xzf"])
            .arg(&tarball)
            .args(["--strip-components=1", "-C"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let out = Command::new("make")
            .arg("-C")
            .arg(&dir)
            .arg("release")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make release in {place}: {}",
            text(&out)
        );
        // No build path is left in the bytes: not the tree's, not the cargo home's.
        let cargo_home = std::env::var("CARGO_HOME")
            .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
        for bin in ["qvm-remote", "qvm-remote-dom0"] {
            let bytes = fs::read(dir.join("target/release").join(bin)).unwrap();
            for needle in [dir.to_string_lossy().into_owned(), cargo_home.clone()] {
                let n = needle.as_bytes();
                assert!(
                    !bytes.windows(n.len()).any(|w| w == n),
                    "{bin} built in {place} holds the path {needle}"
                );
            }
        }
        let client = sha256_file(&dir.join("target/release/qvm-remote"));
        let dom0 = sha256_file(&dir.join("target/release/qvm-remote-dom0"));
        eprintln!("{place}: qvm-remote {client}  qvm-remote-dom0 {dom0}");
        hashes.push((client, dom0));
    }
    assert_eq!(hashes[0], hashes[1], "release builds differ between paths");
    let _ = fs::remove_dir_all(&work);
}

// ---------------------------------------------------------------------------------------
// Packages: RPM (VM + dom0), Debian (VM)

#[test]
fn rpm_and_deb_packages_build_with_the_expected_files() {
    if !tool_available("rpmbuild") || !tool_available("dpkg-buildpackage") {
        return;
    }
    let top = repo().join("target/pkgtest");
    let _ = fs::remove_dir_all(&top);
    fs::create_dir_all(&top).unwrap();
    // One cargo target dir for every package build: they build the same tree at the
    // same path with the same flags, so only the first one compiles.
    let cargo_dir = repo().join("target/pkgtest-cargo");
    let v = cargo_version();
    let out = make(
        &[
            "rpm",
            &format!("RPM_TOPDIR={}", top.join("rpm").display()),
            &format!("DIST_DIR={}", top.join("dist").display()),
            "RPMBUILD_FLAGS=--nodeps",
        ],
        &[("STATIC_TARGET_DIR", &cargo_dir)],
    );
    assert!(out.status.success(), "make rpm: {}", text(&out));
    // The dom0 binary the package ships is static-pie: no interpreter, so it runs in
    // any dom0 whatever glibc the building VM had.
    let dom0_static = cargo_dir.join("dom0/x86_64-unknown-linux-gnu/release/qvm-remote-dom0");
    let (_, types) = elf_program_headers(&fs::read(&dom0_static).unwrap()).unwrap();
    assert!(!types.contains(&PT_INTERP), "{types:?}");
    let rpms = top.join("rpm/RPMS/x86_64");
    let list = |rpm: &str| -> Vec<String> {
        let out = Command::new("rpm")
            .args(["-qlp"])
            .arg(rpms.join(rpm))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    let vm = list(&format!("qvm-remote-{v}-1.x86_64.rpm"));
    assert!(vm.contains(&"/usr/bin/qvm-remote".to_string()), "{vm:?}");
    assert!(
        !vm.iter()
            .any(|f| f.contains("dom0") || f.starts_with("/etc")),
        "{vm:?}"
    );
    let dom0_rpm = format!("qvm-remote-dom0-{v}-1.x86_64.rpm");
    let dom0 = list(&dom0_rpm);
    let want = [
        "/etc/qubes/remote-policy",
        "/etc/qubes/remote.conf",
        "/etc/qubes/remote.d",
        "/srv/salt/qvm-remote",
        "/srv/salt/qvm-remote/authorize.sls",
        "/srv/salt/qvm-remote/client.sls",
        "/srv/salt/qvm-remote/create.sls",
        "/srv/salt/qvm-remote/files",
        "/srv/salt/qvm-remote/files/qvm-remote",
        "/srv/salt/qvm-remote/map.jinja",
        "/usr/bin/qvm-remote-dom0",
        "/usr/lib/qvm-remote",
        "/usr/lib/qvm-remote/qvm-remote-provision",
        "/usr/lib/systemd/system-preset/30-qvm-remote.preset",
        "/usr/lib/systemd/system/qvm-remote-dom0.service",
        "/usr/lib/systemd/system/qvm-remote-panel.service",
        "/usr/share/doc/qvm-remote/README.md",
    ];
    assert_eq!(dom0, want);
    let query = |args: &[&str]| -> String {
        let out = Command::new("rpm")
            .args(args)
            .arg(rpms.join(&dom0_rpm))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Config and policy are %config(noreplace); the keys dir is 0700.
    let configs = query(&["-qcp"]);
    assert_eq!(
        configs.lines().collect::<Vec<_>>(),
        ["/etc/qubes/remote-policy", "/etc/qubes/remote.conf"]
    );
    let dump = query(&["-qp", "--dump"]);
    let keys_dir = dump
        .lines()
        .find(|l| l.starts_with("/etc/qubes/remote.d "))
        .unwrap();
    assert!(keys_dir.contains(" 040700 root root "), "{keys_dir}");
    // %systemd_post: on first install, `systemctl preset` decides, and the preset says
    // disable; on removal, disable and stop; on upgrade, restart what runs.
    let scripts = query(&["-qp", "--scripts"]);
    for needle in [
        "install-system-units qvm-remote-dom0.service qvm-remote-panel.service",
        "remove-system-units qvm-remote-dom0.service qvm-remote-panel.service",
        "mark-restart-system-units qvm-remote-dom0.service qvm-remote-panel.service",
    ] {
        assert!(scripts.contains(needle), "{needle}: {scripts}");
    }
    assert!(!scripts.contains("enable"), "{scripts}");

    // The Debian package, built from the same tarball at the same path.
    let out = make(
        &[
            "deb",
            &format!("DIST_DIR={}", top.join("dist").display()),
            &format!("DEB_BUILD_DIR={}", top.join("rpm/BUILD").display()),
            "DEB_FLAGS=-d",
        ],
        &[("STATIC_TARGET_DIR", &cargo_dir)],
    );
    assert!(out.status.success(), "make deb: {}", text(&out));
    let deb = top.join(format!("rpm/BUILD/qvm-remote_{v}-1_amd64.deb"));
    let out = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x root/root") && l.ends_with("./usr/bin/qvm-remote")),
        "{listing}"
    );

    // The same client bytes in all three builds: the RPM's, the .deb's and a plain
    // `make static` in this tree, at another path with another target dir.
    let vm_dump = Command::new("rpm")
        .args(["-qp", "--dump"])
        .arg(rpms.join(format!("qvm-remote-{v}-1.x86_64.rpm")))
        .output()
        .unwrap();
    let vm_dump = String::from_utf8_lossy(&vm_dump.stdout).into_owned();
    let rpm_sha = vm_dump
        .lines()
        .find_map(|l| l.strip_prefix("/usr/bin/qvm-remote "))
        .and_then(|r| r.split_whitespace().nth(2))
        .unwrap()
        .to_string();
    let extracted = top.join("deb-x");
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&extracted)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let deb_sha = sha256_file(&extracted.join("usr/bin/qvm-remote"));
    let local_sha = {
        let _static = make_static();
        sha256_file(&repo().join("target/static/qvm-remote"))
    };
    eprintln!("static client: rpm {rpm_sha} deb {deb_sha} local {local_sha}");
    assert_eq!(rpm_sha, local_sha);
    assert_eq!(deb_sha, local_sha);
    let _ = fs::remove_dir_all(&top);
}

// ---------------------------------------------------------------------------------------
// Salt formula

#[test]
fn salt_formula_renders_and_never_enables_the_service() {
    if !tool_available("salt-call") {
        return;
    }
    let dir = temp_dir("salt");
    let conf = dir.join("conf");
    fs::create_dir_all(&conf).unwrap();
    let minion = format!(
        "file_client: local\nroot_dir: {root}\nfile_roots:\n  base:\n    - {formula}\npillar_roots:\n  base: []\nlog_level: error\n",
        root = dir.join("root").display(),
        formula = repo().join("packaging/salt").display()
    );
    fs::write(conf.join("minion"), minion).unwrap();
    let show = |pillar: Option<&str>| -> Output {
        let mut c = Command::new("salt-call");
        c.args(["--local", "-c"]).arg(&conf).args([
            "--out=json",
            "state.show_sls",
            "qvm-remote.create,qvm-remote.client,qvm-remote.authorize",
        ]);
        if let Some(p) = pillar {
            c.arg(format!("pillar={p}"));
        }
        c.stdin(Stdio::null()).output().unwrap()
    };
    let out = show(Some(
        r#"{"qvm-remote": {"vm": "work", "template": "debian-12"}}"#,
    ));
    let rendered = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    for id in [
        "qvm-remote-client-vm",
        "qvm-remote-client-binary",
        "qvm-remote-config-lists-vm",
        "qvm-remote-key-provisioned",
    ] {
        assert!(rendered.contains(&format!("\"{id}\"")), "{id}: {rendered}");
    }
    assert!(rendered.contains("/usr/lib/qvm-remote/qvm-remote-provision --user user work"));
    assert!(rendered.contains("debian-12"));
    for forbidden in [
        "service.running",
        "\"running\"",
        "\"enabled\"",
        "systemctl",
        "enable",
    ] {
        assert!(!rendered.contains(forbidden), "{forbidden}: {rendered}");
    }
    // Names that would reach a shell or a path are checked at render time.
    for bad in [
        r#"{"qvm-remote": {"vm": "x; rm -rf /"}}"#,
        r#"{"qvm-remote": {"vm": "dom0"}}"#,
        r#"{"qvm-remote": {"user": "root --x"}}"#,
        r#"{"qvm-remote": {"label": "pink"}}"#,
    ] {
        let out = show(Some(bad));
        let all = text(&out);
        assert!(
            !out.status.success() || !all.contains("qvm-remote-key-provisioned"),
            "{bad} rendered: {all}"
        );
    }
    let _ = fs::remove_dir_all(&dir);
}

/// makepkg's own parser reads the PKGBUILD (as a normal user: makepkg refuses root).
#[test]
fn pkgbuild_parses_with_makepkg() {
    if !tool_available("makepkg") {
        return;
    }
    let dir = temp_dir("pkgbuild");
    let pkgbuild = dir.join("PKGBUILD");
    fs::copy(repo().join("packaging/archlinux/PKGBUILD"), &pkgbuild).unwrap();
    fs::set_permissions(&pkgbuild, fs::Permissions::from_mode(0o644)).unwrap();
    // makepkg wants to be able to write where the PKGBUILD is, even to print.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
    let mut c = if nix_euid_is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--", "makepkg"]);
        c
    } else {
        Command::new("makepkg")
    };
    let out = c
        .arg("--printsrcinfo")
        .current_dir(&dir)
        .env("HOME", &dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    let (libc, sum) = libc_from_lock();
    for want in [
        format!("pkgver = {}", cargo_version()),
        format!(
            "source = libc-{libc}.crate::https://static.crates.io/crates/libc/libc-{libc}.crate"
        ),
        format!("sha256sums = {sum}"),
        "options = !strip".to_string(),
    ] {
        assert!(info.lines().any(|l| l.trim() == want), "{want}: {info}");
    }
    let _ = fs::remove_dir_all(&dir);
}

fn nix_euid_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

// ---------------------------------------------------------------------------------------
// systemd units

fn unit_lines(name: &str) -> Vec<String> {
    fs::read_to_string(repo().join("packaging/systemd").join(name))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn systemd_units_have_what_the_install_relies_on() {
    let daemon = unit_lines("qvm-remote-dom0.service");
    for want in [
        "After=qubesd.service",
        "Wants=qubesd.service",
        "ExecStart=/usr/bin/qvm-remote-dom0",
        "Restart=on-failure",
        "RuntimeDirectory=qvm-remote",
        "RuntimeDirectoryMode=0700",
        "StateDirectory=qvm-remote",
        "StateDirectoryMode=0700",
        "UMask=0077",
        "LimitCORE=0",
        "NoNewPrivileges=yes",
    ] {
        assert!(daemon.iter().any(|l| l == want), "daemon unit lacks {want}");
    }
    let panel = unit_lines("qvm-remote-panel.service");
    for want in [
        "ExecStart=/usr/bin/qvm-remote-dom0 panel",
        "After=qubesd.service qvm-remote-dom0.service",
        "IPAddressDeny=any",
        "IPAddressAllow=localhost",
        "NoNewPrivileges=yes",
    ] {
        assert!(panel.iter().any(|l| l == want), "panel unit lacks {want}");
    }
    // Neither may take away what the tools it runs need: /dev/xen (qrexec, xl), root's
    // capabilities, a writable system and setuid files (dnf), kernel modules (updates).
    for unit in [&daemon, &panel] {
        for never in [
            "PrivateDevices=yes",
            "CapabilityBoundingSet=",
            "User=",
            "DynamicUser=yes",
            "ProtectSystem=",
            "RestrictSUIDSGID=yes",
            "ProtectKernelModules=yes",
        ] {
            assert!(!unit.iter().any(|l| l.starts_with(never)), "{never}");
        }
    }
    let preset = unit_lines("30-qvm-remote.preset");
    assert_eq!(
        preset,
        [
            "disable qvm-remote-dom0.service",
            "disable qvm-remote-panel.service"
        ]
    );
}

#[test]
fn systemd_analyze_verifies_the_units() {
    if !tool_available("systemd-analyze") {
        return;
    }
    let dir = temp_dir("units");
    let mut paths = Vec::new();
    for unit in ["qvm-remote-dom0.service", "qvm-remote-panel.service"] {
        // The unit as shipped, but pointing at a binary that exists on this machine.
        let body = fs::read_to_string(repo().join("packaging/systemd").join(unit))
            .unwrap()
            .replace("/usr/bin/qvm-remote-dom0", DOM0);
        let p = dir.join(unit);
        fs::write(&p, body).unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("qvm-remote"),
        "{all}"
    );
    let _ = fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// Shell scripts and version agreement

/// Every shell script in the tree (not under target/).
fn shell_scripts() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if name != "target" && name != ".git" {
                    walk(&p, out);
                }
                continue;
            }
            let mut head = [0u8; 64];
            let n = fs::File::open(&p)
                .and_then(|mut f| f.read(&mut head))
                .unwrap_or(0);
            let first = String::from_utf8_lossy(&head[..n]);
            let shebang = first.starts_with("#!")
                && first.lines().next().is_some_and(|l| {
                    l.ends_with("bash") || l.ends_with("/sh") || l.ends_with(" sh")
                });
            if shebang || name.ends_with(".sh") || name == "PKGBUILD" {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo(), &mut out);
    out.sort();
    out
}

/// The install path's own scripts: shellcheck finds nothing at any severity.
const OWN_SCRIPTS: &[&str] = &[
    "install-dom0.sh",
    "packaging/archlinux/PKGBUILD",
    "packaging/dom0/qvm-remote-provision",
    "packaging/mkbundle.sh",
    "packaging/vendor-crates.sh",
];

#[test]
fn shellcheck_every_shell_script() {
    if !tool_available("shellcheck") {
        return;
    }
    let scripts = shell_scripts();
    for own in OWN_SCRIPTS {
        assert!(
            scripts.contains(&repo().join(own)),
            "{own} not found as a script"
        );
    }
    assert!(scripts.len() > OWN_SCRIPTS.len(), "{scripts:?}");
    let run = |severity: &str, files: &[PathBuf]| {
        let out = Command::new("shellcheck")
            .args(["-x", "--source-path=SCRIPTDIR", "-S", severity])
            .args(files)
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "shellcheck -S {severity}: {}",
            text(&out)
        );
    };
    // Warnings and errors nowhere; not even style notes in the install path.
    run("warning", &scripts);
    let own: Vec<PathBuf> = OWN_SCRIPTS.iter().map(|s| repo().join(s)).collect();
    run("style", &own);
    for s in &own {
        let body = fs::read_to_string(s).unwrap();
        if s.ends_with("PKGBUILD") {
            continue;
        }
        assert!(
            body.contains("set -euo pipefail"),
            "{}: no set -euo pipefail",
            s.display()
        );
        assert!(mode(s) & 0o111 != 0, "{} is not executable", s.display());
    }
}

fn cargo_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

fn libc_from_lock() -> (String, String) {
    let lock = fs::read_to_string(repo().join("Cargo.lock")).unwrap();
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == "name = \"libc\"" {
            let version = lines.next().unwrap();
            let _source = lines.next().unwrap();
            let checksum = lines.next().unwrap();
            let unquote =
                |s: &str, key: &str| s.strip_prefix(key).unwrap().trim_matches('"').to_string();
            return (
                unquote(version, "version = "),
                unquote(checksum, "checksum = "),
            );
        }
    }
    panic!("no libc in Cargo.lock");
}

/// One version number: Cargo.toml's. Every package file repeats it, and the vendored
/// crate is the one Cargo.lock pins, by version and hash.
#[test]
fn every_package_file_has_cargo_version_and_the_locked_libc() {
    let v = cargo_version();
    let read = |p: &str| fs::read_to_string(repo().join(p)).unwrap();
    let field = |body: &str, key: &str| -> Vec<String> {
        body.lines()
            .filter_map(|l| l.strip_prefix(key))
            .map(|r| r.trim().to_string())
            .collect()
    };
    assert_eq!(read("version").trim(), v, "version (Qubes Builder)");
    for spec in [
        "packaging/rpm/qvm-remote.spec",
        "packaging/rpm/qvm-remote-dom0.spec",
    ] {
        let body = read(spec);
        assert_eq!(field(&body, "Version:"), [v.as_str()], "{spec}");
        assert!(
            body.contains(&format!("> - {v}-1")),
            "{spec}: the %changelog's newest entry is not {v}"
        );
    }
    let pkgbuild = read("packaging/archlinux/PKGBUILD");
    assert_eq!(field(&pkgbuild, "pkgver="), [v.as_str()]);
    let changelog = read("packaging/debian/changelog");
    assert!(
        changelog.starts_with(&format!("qvm-remote ({v}-")),
        "debian/changelog: {}",
        changelog.lines().next().unwrap_or("")
    );
    // No template placeholders anywhere a package is built from.
    for p in shell_scripts().into_iter().chain(
        [
            "packaging/rpm/qvm-remote.spec",
            "packaging/rpm/qvm-remote-dom0.spec",
            ".qubesbuilder",
            "packaging/debian/control",
            "packaging/debian/changelog",
        ]
        .iter()
        .map(|p| repo().join(p)),
    ) {
        let body = fs::read_to_string(&p).unwrap();
        assert!(
            !body.contains("@VERSION@") && !body.contains("@REL@"),
            "{}",
            p.display()
        );
    }

    let (libc, sum) = libc_from_lock();
    let crate_file = format!("libc-{libc}.crate");
    for spec in [
        "packaging/rpm/qvm-remote.spec",
        "packaging/rpm/qvm-remote-dom0.spec",
    ] {
        assert_eq!(
            field(&read(spec), "Source1:"),
            [crate_file.as_str()],
            "{spec}"
        );
    }
    assert_eq!(field(&pkgbuild, "_libc="), [libc.as_str()]);
    assert!(pkgbuild.contains(&format!("'{sum}'")), "PKGBUILD libc hash");
    let qb = read(".qubesbuilder");
    assert!(qb.contains(&format!(
        "- url: https://static.crates.io/crates/libc/{crate_file}"
    )));
    let sha_file = format!("packaging/qubes-builder/{crate_file}.sha256");
    assert!(qb.contains(&format!("sha256: {sha_file}")));
    assert_eq!(read(&sha_file), format!("{sum}  {crate_file}\n"));
}

/// The bundle is reproducible: built twice, same bytes, and its members are exactly the
/// list install-dom0.sh checks.
#[test]
fn dom0_bundle_is_reproducible_and_has_the_checked_members() {
    let dir = temp_dir("bundle");
    let mut sums = Vec::new();
    for name in ["a.tar", "b.tar"] {
        let out = Command::new(repo().join("packaging/mkbundle.sh"))
            .arg(dir.join(name))
            .arg(DOM0)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        sums.push(sha256_file(&dir.join(name)));
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert_eq!(sums[0], sums[1]);
    let out = Command::new("tar")
        .arg("-tvf")
        .arg(dir.join("a.tar"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let script = fs::read_to_string(repo().join("install-dom0.sh")).unwrap();
    let members: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    let mut sorted = members.clone();
    sorted.sort();
    assert_eq!(members, sorted, "byte order");
    for m in &members {
        assert!(script.contains(m), "install-dom0.sh does not expect {m}");
    }
    assert_eq!(members.len(), 7);
    for l in listing.lines() {
        assert!(l.contains(" 0/0 "), "owner: {l}");
        assert!(l.contains("1970-01-01"), "mtime: {l}");
    }
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(dir.join("b.tar"))
        .unwrap();
    f.write_all(b"x").unwrap();
    assert_ne!(sha256_file(&dir.join("b.tar")), sums[0]);
    let _ = fs::remove_dir_all(&dir);
}
