//! Test helpers: a simulated Qubes system (tests/sim/) with a dom0 daemon and VMs,
//! driven through the real binaries. Everything lives in one temp dir that is removed,
//! with every process started here, when the `Sim` is dropped.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const CLIENT: &str = env!("CARGO_BIN_EXE_qvm-remote");
pub const DOM0: &str = env!("CARGO_BIN_EXE_qvm-remote-dom0");

pub fn sim_tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sim")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh, unique temp dir, world-traversable so that simulated VM users can reach
/// their homes below it.
pub fn temp_dir(tag: &str) -> PathBuf {
    temp_dir_in(&std::env::temp_dir(), tag)
}

/// [`temp_dir`] under `base` instead of the system temp dir.
pub fn temp_dir_in(base: &Path, tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = base.join(format!(
        "qvm-remote-test-{tag}-{}-{n}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

pub struct Sim {
    pub root: PathBuf,
    pub sim_dir: PathBuf,
    pub dom0: PathBuf,
    pub config: PathBuf,
    conf_lines: Vec<(String, String)>,
    daemon: Option<Child>,
    /// First uid of this simulator's VMs: distinct per Sim, so tests running in
    /// parallel never share a VM user.
    uid_base: u32,
}

impl Sim {
    /// A simulator with these VMs, keys generated in each VM and authorised in dom0,
    /// and a poll-mode config with a short interval. The daemon is not started.
    pub fn new(vms: &[&str]) -> Sim {
        Sim::new_at(temp_dir("sim"), vms)
    }

    /// [`Sim::new`] with its tree (VM homes and dom0's dirs) at `root`, a fresh dir.
    pub fn new_at(root: PathBuf, vms: &[&str]) -> Sim {
        let sim_dir = root.join("qubes");
        let dom0 = root.join("dom0");
        fs::create_dir_all(&dom0).unwrap();
        fs::set_permissions(&dom0, fs::Permissions::from_mode(0o700)).unwrap();
        let mut sim = Sim {
            config: dom0.join("remote.conf"),
            root,
            sim_dir,
            dom0,
            conf_lines: Vec::new(),
            daemon: None,
            uid_base: 200_000
                + ((std::process::id() % 4096) * 64 + COUNTER.fetch_add(1, Ordering::SeqCst) % 64)
                    * 16,
        };
        sim.simctl(&["init"]);
        fs::copy(CLIENT, sim.sim_dir.join("bin/qvm-remote")).unwrap();
        let d = sim.dom0.clone();
        let qvm_run = sim_tools().join("qvm-run");
        let defaults = [
            ("QVM_REMOTE_VMS", vms.join(" ")),
            ("QVM_REMOTE_MODE", "poll".to_string()),
            ("QVM_REMOTE_POLL_INTERVAL", "0.1".to_string()),
            ("QVM_REMOTE_QVM_RUN", qvm_run.display().to_string()),
            ("QVM_REMOTE_KEYS_DIR", d.join("keys").display().to_string()),
            ("QVM_REMOTE_POLICY", d.join("policy").display().to_string()),
            (
                "QVM_REMOTE_STATE_DIR",
                d.join("state").display().to_string(),
            ),
            ("QVM_REMOTE_RUN_DIR", d.join("run").display().to_string()),
            (
                "QVM_REMOTE_LOG",
                d.join("log/qvm-remote.log").display().to_string(),
            ),
        ];
        for (k, v) in defaults {
            sim.conf_lines.push((k.to_string(), v));
        }
        sim.write_config();
        for vm in vms {
            sim.add_vm(vm);
            sim.authorize(vm);
        }
        sim
    }

    pub fn simctl(&self, args: &[&str]) -> Output {
        let out = Command::new(sim_tools().join("simctl"))
            .args(args)
            .env("QVM_SIM_DIR", &self.sim_dir)
            .env("QVM_SIM_UID_BASE", self.uid_base.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "simctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Adds a VM and generates its key inside it.
    pub fn add_vm(&self, vm: &str) {
        self.simctl(&["add-vm", vm]);
        let out = self.vm_cmd(vm, &["qvm-remote", "key", "gen"], b"");
        assert!(out.status.success(), "key gen in {vm}: {out:?}");
    }

    /// Copies the VM's key into dom0 the way an administrator would: through stdin.
    pub fn authorize(&self, vm: &str) {
        let key = fs::read(self.vm_data(vm).join("auth.key")).unwrap();
        let out = self.dom0_cmd(&["authorize", vm], &key);
        assert!(out.status.success(), "authorize {vm}: {out:?}");
    }

    pub fn vm_home(&self, vm: &str) -> PathBuf {
        let out = self.simctl(&["home", vm]);
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    }

    pub fn vm_data(&self, vm: &str) -> PathBuf {
        self.vm_home(vm).join(".qvm-remote")
    }

    /// Sets a config key (replacing an earlier value) and rewrites the file.
    pub fn set(&mut self, key: &str, value: &str) {
        self.conf_lines.retain(|(k, _)| k != key);
        self.conf_lines.push((key.to_string(), value.to_string()));
        self.write_config();
    }

    fn write_config(&self) {
        let mut text = String::new();
        for (k, v) in &self.conf_lines {
            text.push_str(&format!("{k}=\"{v}\"\n"));
        }
        let _ = fs::remove_file(&self.config);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.config)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
        fs::set_permissions(&self.config, fs::Permissions::from_mode(0o600)).unwrap();
    }

    pub fn dom0_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOM0);
        c.arg("--config").arg(&self.config).args(args);
        c.env("QVM_SIM_DIR", &self.sim_dir);
        for k in ["QVM_REMOTE_CONF", "QVM_REMOTE_HOME"] {
            c.env_remove(k);
        }
        c
    }

    pub fn dom0_cmd(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_with_stdin(self.dom0_command(args), stdin)
    }

    /// Runs a command inside a VM (as its user, with its HOME), like qvm-run would.
    pub fn vm_cmd(&self, vm: &str, argv: &[&str], stdin: &[u8]) -> Output {
        let mut c = Command::new(sim_tools().join("simctl"));
        c.arg("exec").arg(vm).args(argv);
        c.env("QVM_SIM_DIR", &self.sim_dir);
        run_with_stdin(c, stdin)
    }

    /// `qvm-remote ARGS…` in a VM.
    pub fn client(&self, vm: &str, args: &[&str]) -> Output {
        self.client_stdin(vm, args, b"")
    }

    pub fn client_stdin(&self, vm: &str, args: &[&str], stdin: &[u8]) -> Output {
        let mut argv = vec!["qvm-remote"];
        argv.extend_from_slice(args);
        self.vm_cmd(vm, &argv, stdin)
    }

    pub fn start_daemon(&mut self) {
        self.start_daemon_with(&[]);
    }

    pub fn start_daemon_with(&mut self, extra: &[&str]) {
        assert!(self.daemon.is_none());
        let mut c = self.dom0_command(extra);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.daemon = Some(c.spawn().unwrap());
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn stop_daemon(&mut self) -> Option<i32> {
        let mut child = self.daemon.take()?;
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dom0.join("log/qvm-remote.log")).unwrap_or_default()
    }

    pub fn spawns(&self, vm: &str) -> usize {
        let out = self.simctl(&["spawns", vm]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// A path in a shared scratch dir that both VMs and dom0 jobs may write to, for
    /// side-effect files that prove whether something ran.
    pub fn marker(&self, name: &str) -> PathBuf {
        let dir = self.root.join("markers");
        if !dir.exists() {
            fs::create_dir_all(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        }
        dir.join(name)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.kill_daemon();
        // Kill anything still running as a simulated VM (agents left by a killed
        // daemon) before removing the tree.
        let _ = fs::remove_dir_all(&self.root);
    }
}

pub fn run_with_stdin(mut c: Command, stdin: &[u8]) -> Output {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    out
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Waits until `f` holds, up to `limit`.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Processes whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(pid);
            }
        }
    }
    found
}

impl Sim {
    /// `simctl exec VM ARGV…` as a `Command` to configure and spawn: the process ends
    /// up being ARGV[0] itself (simctl, setpriv and env all exec), so its pid is the
    /// pid to signal once the program has started.
    pub fn vm_command(&self, vm: &str, argv: &[&str]) -> Command {
        let mut c = Command::new(sim_tools().join("simctl"));
        c.arg("exec").arg(vm).args(argv);
        c.env("QVM_SIM_DIR", &self.sim_dir);
        c
    }

    /// A stream-mode simulator with these VMs, daemon started and every VM's agent
    /// listening on its `agent.sock`.
    pub fn streaming(vms: &[&str]) -> Sim {
        let mut sim = Sim::new(vms);
        sim.set("QVM_REMOTE_MODE", "stream");
        sim.start_daemon();
        for vm in vms {
            let sock = sim.vm_data(vm).join("agent.sock");
            assert!(
                wait_for(Duration::from_secs(20), || sock.exists()),
                "no agent.sock in {vm}: {}",
                sim.log_text()
            );
        }
        sim
    }
}

impl Sim {
    /// Pids of processes "inside" VM `vm` of this simulator (their environment names
    /// this sim dir and the VM, as qvm-run sets it) whose command line contains
    /// `needle`.
    pub fn vm_processes(&self, vm: &str, needle: &str) -> Vec<u32> {
        let want_dir = format!("QVM_SIM_DIR={}", self.sim_dir.display());
        let want_vm = format!("QVM_SIM_VM={vm}");
        processes_matching(needle)
            .into_iter()
            .filter(|pid| {
                let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
                vars.contains(&want_dir.as_bytes()) && vars.contains(&want_vm.as_bytes())
            })
            .collect()
    }
}

/// A process's field from /proc/<pid>/status, in kB (or a plain count).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The job id from a `qvm-remote -v` run's `job <id> queued` note.
pub fn queued_id(stderr_text: &str) -> Option<String> {
    stderr_text.lines().find_map(|l| {
        let rest = l.strip_prefix("qvm-remote: job ")?;
        let (id, tail) = rest.split_once(' ')?;
        tail.starts_with("queued").then(|| id.to_string())
    })
}

impl Sim {
    /// dom0's PATH with the simulator's tools first, so the daemon and the admin
    /// subcommands find `qvm-tags` and `qvm-ls` there (job PATH stays the fixed one).
    pub fn sim_path(&self) -> String {
        let rest = std::env::var("PATH").unwrap_or_default();
        format!("{}:{rest}", sim_tools().display())
    }

    /// Starts the daemon with the simulator's tools on its PATH.
    pub fn start_daemon_sim_path(&mut self) {
        assert!(self.daemon.is_none());
        let mut c = self.dom0_command(&[]);
        c.env("PATH", self.sim_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.daemon = Some(c.spawn().unwrap());
    }

    /// `qvm-remote-dom0 ARGS…` with the simulator's tools on its PATH.
    pub fn dom0_cmd_sim_path(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut c = self.dom0_command(args);
        c.env("PATH", self.sim_path());
        run_with_stdin(c, stdin)
    }

    /// The policy file the config names.
    pub fn policy_path(&self) -> PathBuf {
        self.dom0.join("policy")
    }

    /// Writes the policy file (mode 0600, replacing it atomically).
    pub fn write_policy(&self, text: &str) {
        let tmp = self.dom0.join(".policy.tmp");
        let _ = fs::remove_file(&tmp);
        fs::write(&tmp, text).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
        fs::rename(&tmp, self.policy_path()).unwrap();
    }

    /// The ids `qvm-remote-dom0 pending` lists.
    pub fn pending_ids(&self) -> Vec<String> {
        let out = self.dom0_cmd(&["pending"], b"");
        stdout(&out)
            .lines()
            .filter(|l| !l.starts_with(' ') && l.contains(" vm="))
            .filter_map(|l| l.split(' ').next().map(str::to_string))
            .collect()
    }
}
