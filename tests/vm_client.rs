//! The `qvm-remote` binary, driven as its users and dom0 drive it (DESIGN §2–§5).
//!
//! No dom0 daemon runs here. A test plays dom0 itself: it takes the job file from
//! `queue/pending/`, verifies it with the key (so the MAC provably covers the job), and
//! writes a result file encoded with `JobResult::encode`, exactly as the agent would
//! store it. Agent tests run `qvm-remote agent --once` as a child and speak frames to
//! it. Every test uses its own data dir through `QVM_REMOTE_HOME`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use qvm_remote::id::CommandId;
use qvm_remote::keys::Key;
use qvm_remote::proto::frame::write_frame;
use qvm_remote::proto::job::{self, JobLimits, MAX_JOB_FILE, PROTOCOL_MAX_COMMAND};
use qvm_remote::proto::{
    verify_cancel, Frame, FrameReader, FrameType, Job, JobResult, Status, Truncated,
};
use qvm_remote::time::unix_now;
use qvm_remote::vm::sock::{ReplyKind, ReplyReader, Request, MAX_CHUNK};

const BIN: &str = env!("CARGO_BIN_EXE_qvm-remote");
/// How long a test waits for the binary to do something before failing.
const PATIENCE: Duration = Duration::from_secs(20);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh data dir, removed when dropped.
struct Home {
    path: PathBuf,
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

impl Home {
    fn new() -> Home {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("qvm-remote-vm-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        for q in ["pending", "running", "results", "rejected"] {
            fs::create_dir_all(path.join("queue").join(q)).unwrap();
        }
        Home { path }
    }

    /// A home with a fresh key in auth.key.
    fn with_key() -> (Home, Key) {
        let h = Home::new();
        let k = Key::generate().unwrap();
        k.store_new(&h.path.join("auth.key")).unwrap();
        (h, k)
    }

    fn q(&self, dir: &str) -> PathBuf {
        self.path.join("queue").join(dir)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("QVM_REMOTE_HOME", &self.path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self.cmd(args).stdin(Stdio::piped()).spawn().unwrap();
        feed(child.stdin.take().unwrap(), input.to_vec());
        child.wait_with_output().unwrap()
    }

    fn names(&self, dir: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.q(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// Waits for a job in pending/, verifies it as dom0 would, and claims it into
    /// running/ as the agent would.
    fn take_job(&self, key: &Key) -> Job {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found = self
                .names("pending")
                .into_iter()
                .find(|n| n.ends_with(".job") && !n.starts_with('.'));
            if let Some(name) = found {
                let from = self.q("pending").join(&name);
                let bytes = fs::read(&from).unwrap();
                let limits = JobLimits {
                    max_command: PROTOCOL_MAX_COMMAND,
                    replay_window: 600,
                    now: unix_now(),
                };
                let job = job::verify(&bytes, key, &limits).unwrap();
                assert_eq!(name, format!("{}.job", job.id));
                fs::rename(&from, self.q("running").join(&name)).unwrap();
                return job;
            }
            assert!(Instant::now() < deadline, "no job appeared in pending/");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stores result bytes as the agent does (tmp + rename).
    fn put_result(&self, id: &CommandId, bytes: &[u8]) {
        let tmp = self.q("results").join(format!(".{id}.tmp"));
        fs::write(&tmp, bytes).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
        fs::rename(&tmp, self.q("results").join(format!("{id}.result"))).unwrap();
    }

    fn write_job(&self, dir: &str, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.q(dir).join(name);
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        p
    }
}

fn feed(mut stdin: ChildStdin, bytes: Vec<u8>) {
    // The child may stop reading early (that is what a limit does): ignore EPIPE.
    thread::spawn(move || {
        let _ = stdin.write_all(&bytes);
    });
}

fn result_for(job: &Job, status: Status, exit: u8, signal: u8, reason: &str) -> JobResult {
    JobResult {
        id: job.id.clone(),
        status,
        exit,
        signal,
        started_ms: 1_796_398_200_000,
        duration_ms: 42,
        stdout: b"out\n".to_vec(),
        stderr: b"err\n".to_vec(),
        truncated: Truncated::None,
        reason: reason.to_string(),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn new_job(body: &[u8]) -> Job {
    Job {
        id: CommandId::generate(std::process::id()).unwrap(),
        created: unix_now(),
        timeout: 300,
        body: body.to_vec(),
        stdin: Vec::new(),
    }
}

/// Runs the client with `args`, answers its job with `answer`, returns its output.
fn round_trip(args: &[&str], answer: impl FnOnce(&Job, &Key) -> Vec<u8>) -> (Output, Job, Home) {
    let (home, key) = Home::with_key();
    let child = home.cmd(args).spawn().unwrap();
    let job = home.take_job(&key);
    home.put_result(&job.id, &answer(&job, &key));
    let out = child.wait_with_output().unwrap();
    (out, job, home)
}

#[test]
fn exit_codes_follow_the_design_table() {
    let table: &[(Status, u8, u8, &str, u8)] = &[
        (Status::Done, 0, 0, "", 0),
        (Status::Done, 3, 0, "", 3),
        (Status::Done, 0, 9, "", 137),
        (Status::Timeout, 0, 15, "timed out after 300 s", 124),
        (Status::Rejected, 0, 0, "authentication failed", 126),
        (Status::Denied, 0, 0, "policy: no rule matches", 126),
        (Status::Cancelled, 0, 0, "cancelled by the client", 130),
        (Status::Interrupted, 0, 0, "dom0 restarted", 125),
        (Status::Failed, 0, 0, "cannot start bash", 125),
    ];
    for &(status, exit, signal, reason, want) in table {
        let (out, job, _home) = round_trip(&["echo", "hi"], |job, key| {
            result_for(job, status, exit, signal, reason).encode(key)
        });
        assert_eq!(job.body, b"echo hi");
        assert_eq!(
            out.status.code(),
            Some(i32::from(want)),
            "{status:?}: {out:?}"
        );
        assert_eq!(out.stdout, b"out\n", "{status:?}");
        let err = text(&out.stderr);
        assert!(err.starts_with("err\n"), "{status:?}: {err}");
        if status == Status::Done {
            assert_eq!(err, "err\n");
        } else {
            assert!(err.ends_with(&format!("\nqvm-remote: {reason}\n")), "{err}");
        }
    }
}

#[test]
fn truncation_is_reported() {
    let (out, _, _home) = round_trip(&["yes"], |job, key| {
        let mut r = result_for(job, Status::Done, 0, 0, "");
        r.truncated = Truncated::Both;
        r.encode(key)
    });
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("qvm-remote: output truncated (both) at dom0's cap"));
}

/// Makes a result file for a job: the forgeries below.
type Forge = Box<dyn Fn(&Job, &Key) -> Vec<u8>>;

#[test]
fn results_that_do_not_verify_are_never_shown() {
    let forgeries: Vec<(&str, Forge)> = vec![
        (
            "another key",
            Box::new(|job, _| {
                let other = Key::generate().unwrap();
                result_for(job, Status::Done, 0, 0, "").encode(&other)
            }),
        ),
        (
            "a flipped byte",
            Box::new(|job, key| {
                let mut b = result_for(job, Status::Done, 0, 0, "").encode(key);
                let last = b.len() - 1;
                b[last] ^= 1;
                b
            }),
        ),
        (
            "another job's result",
            Box::new(|_, key| result_for(&new_job(b"x"), Status::Done, 0, 0, "").encode(key)),
        ),
        ("garbage", Box::new(|_, _| b"not a result".to_vec())),
    ];
    for (what, forge) in forgeries {
        let (out, job, home) = round_trip(&["echo", "hi"], |j, k| forge(j, k));
        assert_eq!(out.status.code(), Some(125), "{what}");
        assert!(out.stdout.is_empty(), "{what}: {:?}", out.stdout);
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!(
                "qvm-remote: result for {} failed verification",
                job.id
            )),
            "{what}: {err}"
        );
        assert!(
            !err.contains("out\n") && !err.starts_with("err"),
            "{what}: {err}"
        );
        // Left in place for inspection.
        assert!(home
            .q("results")
            .join(format!("{}.result", job.id))
            .exists());
    }
}

#[test]
fn json_output_is_one_object() {
    let (out, job, _home) = round_trip(&["--json", "cat", "/etc/x"], |job, key| {
        let mut r = result_for(job, Status::Done, 1, 0, "");
        r.stdout = b"line \"1\"\n\x1b[31m\xf0\x9f\x98\x80".to_vec();
        r.stderr = b"\xff\xfe".to_vec();
        r.encode(key)
    });
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.ends_with("}\n") && s.lines().count() == 1, "{s}");
    let o = parse_object(s.trim_end());
    check(&o, "id", J::Str(job.id.to_string()));
    check(&o, "status", J::Str("done".into()));
    check(&o, "exit", J::Num(1));
    check(&o, "signal", J::Num(0));
    check(&o, "duration_ms", J::Num(42));
    check(&o, "stdout", J::Str("line \"1\"\n\u{1b}[31m😀".into()));
    check(&o, "stderr", J::Str("\u{fffd}\u{fffd}".into()));
    check(&o, "stderr_utf8", J::Bool(false));
    check(&o, "truncated", J::Str("none".into()));
    assert!(!o.contains_key("stdout_utf8"));
    assert!(!o.contains_key("reason"));
    assert_eq!(o.len(), 9);

    let (out, _, _home) = round_trip(&["--json", "qvm-remove", "work"], |job, key| {
        result_for(job, Status::Denied, 0, 0, "policy: no rule").encode(key)
    });
    assert_eq!(out.status.code(), Some(126));
    let o = parse_object(text(&out.stdout).trim_end());
    check(&o, "status", J::Str("denied".into()));
    check(&o, "reason", J::Str("policy: no rule".into()));
}

#[test]
fn errors_before_a_result_are_json_in_json_mode() {
    let home = Home::new();
    let out = home.run(&["--json", "ls"]);
    assert_eq!(out.status.code(), Some(125));
    let o = parse_object(text(&out.stdout).trim_end());
    match o.get("error") {
        Some(J::Str(e)) => assert!(e.starts_with("no key: run `qvm-remote key gen`"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn command_text_from_a_pipe_and_from_a_file() {
    let script = b"echo one\necho two\n";
    let (home, key) = Home::with_key();
    let mut child = home.cmd(&["-q"]).stdin(Stdio::piped()).spawn().unwrap();
    feed(child.stdin.take().unwrap(), script.to_vec());
    let job = home.take_job(&key);
    assert_eq!(job.body, script);
    assert!(job.stdin.is_empty());
    home.put_result(
        &job.id,
        &result_for(&job, Status::Done, 0, 0, "").encode(&key),
    );
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(0));

    let file = home.path.join("script.sh");
    fs::write(&file, script).unwrap();
    let child = home
        .cmd(&["-t", "7"])
        .stdin(fs::File::open(&file).unwrap())
        .spawn()
        .unwrap();
    let job = home.take_job(&key);
    assert_eq!(job.body, script);
    assert_eq!(job.timeout, 7);
    home.put_result(
        &job.id,
        &result_for(&job, Status::Done, 5, 0, "").encode(&key),
    );
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(5));
}

#[test]
fn dash_i_sends_stdin_bytes_to_the_command() {
    let input = b"\x00binary\xffinput\n".to_vec();
    let (home, key) = Home::with_key();
    let mut child = home
        .cmd(&["-i", "sha256sum"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    feed(child.stdin.take().unwrap(), input.clone());
    let job = home.take_job(&key);
    assert_eq!(job.body, b"sha256sum");
    assert_eq!(job.stdin, input);
    home.put_result(
        &job.id,
        &result_for(&job, Status::Done, 0, 0, "").encode(&key),
    );
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(0));
}

#[test]
fn oversized_input_is_refused_with_nothing_queued() {
    let (home, _key) = Home::with_key();
    let at_limit_plus_one = vec![b'x'; PROTOCOL_MAX_COMMAND + 1];
    for args in [&[][..], &["-i", "cat"][..]] {
        let out = home.run_with_stdin(args, &at_limit_plus_one);
        assert_eq!(out.status.code(), Some(126), "{args:?}");
        assert!(
            text(&out.stderr).contains("over the limit of 1048576 bytes"),
            "{args:?}"
        );
        assert!(home.names("pending").is_empty(), "{args:?}");
    }
    // One argv word is capped at 128 KiB by Linux, so the text is spread over 11 words
    // that join (with 10 spaces) to PROTOCOL_MAX_COMMAND + 1 bytes.
    let word = "x".repeat((PROTOCOL_MAX_COMMAND + 1 - 10) / 11);
    let mut words = vec![word.as_str(); 11];
    let last = "x".repeat(PROTOCOL_MAX_COMMAND + 1 - 10 - 10 * word.len());
    words[10] = last.as_str();
    assert_eq!(
        words.iter().map(|w| w.len()).sum::<usize>() + 10,
        PROTOCOL_MAX_COMMAND + 1
    );
    let out = home.run(&words);
    assert_eq!(out.status.code(), Some(126));
    assert!(home.names("pending").is_empty());
    // Empty command text, and control bytes dom0 would refuse, are refused here.
    for input in [&b""[..], b"echo \x1b[2J"] {
        let out = home.run_with_stdin(&[], input);
        assert_eq!(out.status.code(), Some(126), "{input:?}");
        assert!(home.names("pending").is_empty());
    }
}

#[test]
fn no_key_means_nothing_queued() {
    let home = Home::new();
    let out = home.run(&["ls"]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("qvm-remote: no key: run `qvm-remote key gen` and authorise it in dom0"),
        "{err}"
    );
    assert!(home.names("pending").is_empty());
}

#[test]
fn key_gen_show_import() {
    let home = Home::new();
    let key_path = home.path.join("auth.key");
    let out = home.run(&["key", "gen"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mode = fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key = Key::load(&key_path).unwrap();
    let said = text(&out.stdout);
    assert!(said.contains(&key.fingerprint()), "{said}");
    assert!(said.contains("qvm-remote-dom0 authorize"), "{said}");
    assert!(!said.contains(&key.to_hex()));

    let before = fs::read(&key_path).unwrap();
    let out = home.run(&["key", "gen"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("already exists"));
    assert_eq!(fs::read(&key_path).unwrap(), before);

    let out = home.run(&["key", "show"]);
    assert_eq!(out.status.code(), Some(0));
    let shown = text(&out.stdout);
    let shown = shown.trim_end();
    assert_eq!(shown.len(), 16);
    assert!(shown.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(shown, key.fingerprint());
    let out = home.run(&["key", "show", "--full"]);
    assert_eq!(text(&out.stdout).trim_end(), key.to_hex());

    let new = Key::generate().unwrap();
    let out = home.run_with_stdin(&["key", "import"], format!("{}\n", new.to_hex()).as_bytes());
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains(&new.fingerprint()));
    assert_eq!(Key::load(&key_path).unwrap(), new);
    let mode = fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let other = Key::generate().unwrap();
    let out = home.run(&["key", "import", &other.to_hex()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(Key::load(&key_path).unwrap(), other);

    let out = home.run_with_stdin(&["key", "import"], b"not a key\n");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(Key::load(&key_path).unwrap(), other);
}

#[test]
fn a_key_readable_by_others_is_refused() {
    let (home, _key) = Home::with_key();
    let key_path = home.path.join("auth.key");
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).unwrap();
    let out = home.run(&["ls"]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(err.contains(&key_path.display().to_string()), "{err}");
    assert!(err.contains("0644"), "{err}");
    assert!(home.names("pending").is_empty());
}

#[test]
fn an_insecure_data_dir_is_refused() {
    let home = Home::new();
    fs::set_permissions(&home.path, fs::Permissions::from_mode(0o777)).unwrap();
    let out = home.run(&["ls"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains(&home.path.display().to_string()));
    let out = home.run(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    fs::set_permissions(&home.path, fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn a_run_is_archived_and_logged() {
    let (out, job, home) = round_trip(&["echo", "hi"], |job, key| {
        result_for(job, Status::Done, 3, 0, "").encode(key)
    });
    assert_eq!(out.status.code(), Some(3));
    let dir = home
        .path
        .join("history")
        .join(job.id.day())
        .join(job.id.as_str());
    assert_eq!(fs::read(dir.join("command")).unwrap(), b"echo hi");
    assert_eq!(fs::read(dir.join("out")).unwrap(), b"out\n");
    assert_eq!(fs::read(dir.join("err")).unwrap(), b"err\n");
    assert_eq!(fs::read(dir.join("exit")).unwrap(), b"3\n");
    let meta = fs::read_to_string(dir.join("meta")).unwrap();
    assert!(
        meta.starts_with(&format!("id={}\nstatus=done\nexit=3\n", job.id)),
        "{meta}"
    );
    assert!(
        meta.contains(&format!("created={}\n", job.created)),
        "{meta}"
    );
    for f in ["command", "out", "err", "exit", "meta"] {
        let mode = fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(home.names("running").is_empty());
    assert!(home.names("results").is_empty());
    let log = fs::read_to_string(home.path.join("audit.log")).unwrap();
    assert!(
        log.contains(&format!(
            " id={} status=done exit=3 duration_ms=42 cmd=echo hi\n",
            job.id
        )),
        "{log}"
    );
    let mode = fs::metadata(home.path.join("audit.log"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let out = home.run(&["history"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        format!("{} {} exit=3 echo hi\n", job.id.day(), job.id)
    );
    let out = home.run(&["log", "1"]);
    assert!(text(&out.stdout).contains(&format!("id={}", job.id)));
    let out = home.run(&["status"]);
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    assert!(
        s.contains("queue: pending 0, running 0, results 0, rejected 0"),
        "{s}"
    );
    assert!(s.contains(&job.id.to_string()), "{s}");
}

#[test]
fn result_id_picks_up_a_result_left_by_an_earlier_client() {
    let (home, key) = Home::with_key();
    let job = new_job(b"qvm-ls --raw-list");
    home.write_job("running", &format!("{}.job", job.id), &job.encode(&key));
    let out = home.run(&["result", job.id.as_str()]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains(&format!("no result for {} yet", job.id)));

    home.put_result(
        &job.id,
        &result_for(&job, Status::Done, 0, 0, "").encode(&key),
    );
    let out = home.run(&["result", job.id.as_str()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert!(home.names("results").is_empty());
    assert!(home.names("running").is_empty());
    let dir = home
        .path
        .join("history")
        .join(job.id.day())
        .join(job.id.as_str());
    assert_eq!(fs::read(dir.join("command")).unwrap(), b"qvm-ls --raw-list");

    // Once archived, it is shown from history.
    let out = home.run(&["--json", "result", job.id.as_str()]);
    assert_eq!(out.status.code(), Some(0));
    let o = parse_object(text(&out.stdout).trim_end());
    check(&o, "stdout", J::Str("out\n".into()));
    check(&o, "status", J::Str("done".into()));

    let out = home.run(&["result", "../../etc/passwd"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn ping_reports_any_verified_answer() {
    let (home, key) = Home::with_key();
    let child = home.cmd(&["ping"]).spawn().unwrap();
    let job = home.take_job(&key);
    assert_eq!(job.body, b"true");
    assert_eq!(job.timeout, 10);
    home.put_result(
        &job.id,
        &result_for(&job, Status::Denied, 0, 0, "policy").encode(&key),
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    assert!(
        s.starts_with("pong from dom0 in ") && s.contains("(status denied: policy)"),
        "{s}"
    );
    assert!(home.names("results").is_empty());
}

#[test]
fn ctrl_c_withdraws_an_unclaimed_job() {
    let (home, _key) = Home::with_key();
    let child = home.cmd(&["sleep", "100"]).spawn().unwrap();
    wait_for(|| home.names("pending").iter().any(|n| n.ends_with(".job")));
    signal(&child, "INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert_eq!(text(&out.stderr), "qvm-remote: cancelled\n");
    assert!(home.names("pending").is_empty());
}

#[test]
fn ctrl_c_on_a_claimed_job_sends_a_cancel_and_shows_the_answer() {
    let (home, key) = Home::with_key();
    let child = home.cmd(&["sleep", "100"]).spawn().unwrap();
    let job = home.take_job(&key);
    signal(&child, "TERM");
    let cancel = home.q("pending").join(format!("{}.cancel", job.id));
    wait_for(|| cancel.exists());
    let token = fs::read(&cancel).unwrap();
    assert!(token.ends_with(b"\n"));
    assert!(verify_cancel(&key, &job.id, &token[..token.len() - 1]));
    let mode = fs::metadata(&cancel).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    home.put_result(
        &job.id,
        &result_for(&job, Status::Cancelled, 0, 15, "cancelled").encode(&key),
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert_eq!(out.stdout, b"out\n");
    assert!(text(&out.stderr).ends_with("qvm-remote: cancelled\n"));
}

#[test]
fn usage_and_version() {
    let home = Home::new();
    let table: &[(&[&str], i32)] = &[
        (&["--version"], 0),
        (&["-h"], 0),
        (&["-t", "0", "ls"], 125),
        (&["-x", "ls"], 125),
        (&["-i"], 125),
        (&["log", "x"], 2),
        (&["key"], 2),
        (&["-t", "5", "status"], 2),
        (&[], 125),
    ];
    for (args, want) in table {
        let out = home.run(args);
        assert_eq!(out.status.code(), Some(*want), "{args:?}: {out:?}");
    }
    let out = home.run(&["--version"]);
    assert!(text(&out.stdout).starts_with("qvm-remote "));
    let out = home.run(&["--help"]);
    assert!(text(&out.stdout).contains("exit status"));
}

#[test]
fn queue_debug_and_clean() {
    let (home, key) = Home::with_key();
    let job = new_job(b"true");
    home.write_job("pending", &format!("{}.job", job.id), &job.encode(&key));
    home.write_job("rejected", "bad.job", b"junk");
    let out = home.run(&["queue"]);
    assert_eq!(
        text(&out.stdout),
        "pending 1\nrunning 0\nresults 0\nrejected 1\n"
    );
    let out = home.run(&["queue", "debug"]);
    let s = text(&out.stdout);
    assert!(
        s.contains(&format!("pending {}.job regular file", job.id))
            && s.contains(&format!("id={} name-matches=yes", job.id)),
        "{s}"
    );
    let out = home.run(&["queue", "clean"]);
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    assert!(
        s.contains("removed queue/rejected/bad.job") && s.ends_with("1 removed\n"),
        "{s}"
    );
    assert_eq!(home.names("pending").len(), 1);
    assert!(home.names("rejected").is_empty());
}

// ---- the agent ----

/// A running `qvm-remote agent`, with dom0's ends of its pipes.
struct Agent {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: mpsc::Receiver<Result<Frame, String>>,
}

impl Agent {
    fn start(home: &Home, args: &[&str]) -> Agent {
        let mut child = home.cmd(args).stdin(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut r = FrameReader::new(stdout);
            loop {
                let f = match r.read() {
                    Ok(Some(f)) => Ok(f),
                    Ok(None) => return,
                    Err(e) => Err(e.to_string()),
                };
                let stop = f.is_err();
                if tx.send(f).is_err() || stop {
                    return;
                }
            }
        });
        Agent {
            child,
            stdin,
            frames: rx,
        }
    }

    fn next(&self) -> Frame {
        self.frames
            .recv_timeout(PATIENCE)
            .expect("a frame from the agent")
            .unwrap()
    }

    fn expect(&self, kind: FrameType) -> Vec<u8> {
        let f = self.next();
        assert_eq!(f.kind, kind, "{f:?}");
        f.payload
    }

    fn send(&mut self, kind: FrameType, payload: &[u8]) {
        write_frame(self.stdin.as_mut().unwrap(), kind, payload).unwrap();
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        let s = self.stdin.as_mut().unwrap();
        s.write_all(bytes).unwrap();
        s.flush().unwrap();
    }

    /// Waits for the agent to exit; returns its code.
    fn exit_code(mut self) -> Option<i32> {
        drop(self.stdin.take());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("agent did not exit");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Sends a job through the queue the way the client does: tmp + rename.
fn queue_job(home: &Home, key: &Key, job: &Job) -> Vec<u8> {
    let bytes = job.encode(key);
    home.write_job("pending", &format!(".{}.tmp", job.id), &bytes);
    fs::rename(
        home.q("pending").join(format!(".{}.tmp", job.id)),
        home.q("pending").join(format!("{}.job", job.id)),
    )
    .unwrap();
    bytes
}

#[test]
fn agent_sends_jobs_stores_results_and_acks() {
    let (home, key) = Home::with_key();
    let mut jobs: Vec<Job> = (0..3)
        .map(|i| new_job(format!("echo {i}").as_bytes()))
        .collect();
    jobs.sort_by(|a, b| a.id.cmp(&b.id));
    let files: Vec<Vec<u8>> = jobs.iter().map(|j| queue_job(&home, &key, j)).collect();
    // A tmp file being written is not sent, nor moved.
    home.write_job(
        "pending",
        ".20261204-153000-1-0123456789abcdef.tmp",
        b"half",
    );

    let mut agent = Agent::start(&home, &["agent", "--once"]);
    let hello = text(&agent.expect(FrameType::Hello));
    assert!(hello.starts_with("2 qvm-remote "), "{hello}");
    for f in &files {
        assert_eq!(
            &agent.expect(FrameType::Job),
            f,
            "JOB frames are the files, byte for byte"
        );
    }
    assert!(agent.expect(FrameType::Idle).is_empty());
    assert_eq!(home.names("running").len(), 3);
    assert_eq!(
        home.names("pending"),
        [".20261204-153000-1-0123456789abcdef.tmp"]
    );

    let res = result_for(&jobs[1], Status::Done, 0, 0, "").encode(&key);
    agent.send(FrameType::Result, &res);
    assert_eq!(agent.expect(FrameType::Ack), jobs[1].id.as_str().as_bytes());
    let stored = home.q("results").join(format!("{}.result", jobs[1].id));
    assert_eq!(fs::read(&stored).unwrap(), res);
    let mode = fs::metadata(&stored).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // OUT/ERR are accepted (nobody watches in poll mode); a RESULT without an id is
    // ignored, not ACKed.
    agent.send(FrameType::Out, format!("{}\nchunk", jobs[0].id).as_bytes());
    agent.send(FrameType::Result, b"no header here");
    agent.send(FrameType::Bye, b"");
    assert_eq!(agent.exit_code(), Some(0));
    assert_eq!(home.names("results").len(), 1);

    // The client picks the stored result up.
    let out = home.run(&["result", jobs[1].id.as_str()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"out\n");
}

#[test]
fn agent_end_of_input_is_a_clean_end() {
    let (home, _key) = Home::with_key();
    let agent = Agent::start(&home, &["agent", "--once"]);
    agent.expect(FrameType::Hello);
    agent.expect(FrameType::Idle);
    assert_eq!(agent.exit_code(), Some(0));
}

#[test]
fn agent_never_sends_bad_entries_and_moves_them_to_rejected() {
    let (home, key) = Home::with_key();
    let good = new_job(b"echo good");
    let good_bytes = queue_job(&home, &key, &good);

    // A symlink named for a valid id, pointing at a valid job outside the queue.
    let target = new_job(b"echo elsewhere");
    let outside = home.path.join("outside.job");
    fs::write(&outside, target.encode(&key)).unwrap();
    let link_name = format!("{}.job", target.id);
    symlink(&outside, home.q("pending").join(&link_name)).unwrap();
    // Names that are not ids.
    home.write_job("pending", "bad.job", &new_job(b"x").encode(&key));
    home.write_job(
        "pending",
        "20261204-153000-1-ZZZZ.job",
        &new_job(b"x").encode(&key),
    );
    home.write_job("pending", "notes.txt", b"hello");
    // A job whose header names another id than its file name.
    let inner = new_job(b"echo inner");
    let mismatch_name = format!("{}.job", new_job(b"y").id);
    home.write_job("pending", &mismatch_name, &inner.encode(&key));
    // A directory named like a job.
    let dir_job = new_job(b"z");
    fs::create_dir(home.q("pending").join(format!("{}.job", dir_job.id))).unwrap();
    // A job whose header names its own id but cannot be parsed past it.
    let broken = new_job(b"broken");
    let broken_name = format!("{}.job", broken.id);
    home.write_job(
        "pending",
        &broken_name,
        format!("qvm-remote-job 2\nid {}\ncreated soon\n\nbody", broken.id).as_bytes(),
    );
    // A job file one byte over the protocol's limit.
    let big = new_job(b"big");
    let big_name = format!("{}.job", big.id);
    home.write_job("pending", &big_name, &vec![b'x'; MAX_JOB_FILE + 1]);

    let agent = Agent::start(&home, &["agent", "--once"]);
    agent.expect(FrameType::Hello);
    assert_eq!(agent.expect(FrameType::Job), good_bytes);
    agent.expect(FrameType::Idle);
    drop(agent);

    let rejected = home.names("rejected");
    for name in [
        link_name.as_str(),
        "bad.job",
        "20261204-153000-1-ZZZZ.job",
        "notes.txt",
        mismatch_name.as_str(),
        big_name.as_str(),
        broken_name.as_str(),
        &format!("{}.job", dir_job.id),
    ] {
        assert!(
            rejected.iter().any(|n| n == name),
            "{name} not in {rejected:?}"
        );
    }
    assert!(
        home.names("pending").is_empty(),
        "{:?}",
        home.names("pending")
    );
    assert_eq!(home.names("running"), [format!("{}.job", good.id)]);
    // The symlink was moved, not followed: its target is untouched.
    assert!(fs::symlink_metadata(home.q("rejected").join(&link_name))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(&outside).unwrap(), target.encode(&key));
    // Every entry named for an id whose header does not name another one gets a local
    // result saying why, and its client can read it.
    let mut results = home.names("results");
    results.sort();
    let mut want: Vec<String> = [&target.id, &big.id, &broken.id, &dir_job.id]
        .iter()
        .map(|id| format!("{id}.result"))
        .collect();
    want.sort();
    assert_eq!(results, want);
    for (id, why) in [
        (
            &big.id,
            format!("job file too large ({} bytes)", MAX_JOB_FILE + 1),
        ),
        (&broken.id, "malformed job: created".to_string()),
        (
            &dir_job.id,
            "job entry is a directory, not a regular file".to_string(),
        ),
        (
            &target.id,
            "job entry is a symlink, not a regular file".to_string(),
        ),
    ] {
        let out = home.run(&["result", id.as_str()]);
        assert_eq!(out.status.code(), Some(126), "{out:?}");
        assert_eq!(text(&out.stderr), format!("qvm-remote: {why}\n"));
    }
    let log = fs::read_to_string(home.path.join("audit.log")).unwrap();
    assert!(
        log.contains("agent rejected queue/pending/bad.job"),
        "{log}"
    );
}

#[test]
fn agent_resends_claimed_jobs_without_results_and_never_duplicates() {
    let (home, key) = Home::with_key();
    let a = new_job(b"echo a");
    let a_bytes = queue_job(&home, &key, &a);
    let mut agent = Agent::start(&home, &["agent", "--once"]);
    agent.expect(FrameType::Hello);
    assert_eq!(agent.expect(FrameType::Job), a_bytes);
    agent.expect(FrameType::Idle);
    agent.send(FrameType::Bye, b"");
    assert_eq!(agent.exit_code(), Some(0));

    // A second copy of the same id appears in pending: it must not go out twice.
    home.write_job("pending", &format!("{}.job", a.id), &a_bytes);
    let mut agent = Agent::start(&home, &["agent", "--once"]);
    agent.expect(FrameType::Hello);
    assert_eq!(
        agent.expect(FrameType::Job),
        a_bytes,
        "re-sent from running/"
    );
    agent.expect(FrameType::Idle);
    agent.send(
        FrameType::Result,
        &result_for(&a, Status::Done, 0, 0, "").encode(&key),
    );
    agent.expect(FrameType::Ack);
    agent.send(FrameType::Bye, b"");
    assert_eq!(agent.exit_code(), Some(0));
    assert_eq!(home.names("rejected"), [format!("{}.job", a.id)]);

    // With its result stored, it is not re-sent.
    let agent = Agent::start(&home, &["agent", "--once"]);
    agent.expect(FrameType::Hello);
    agent.expect(FrameType::Idle);
    drop(agent);
}

#[test]
fn agent_sends_cancels_after_jobs() {
    let (home, key) = Home::with_key();
    let running = new_job(b"sleep 100");
    let token = qvm_remote::proto::cancel_token(&key, &running.id);
    home.write_job(
        "pending",
        &format!("{}.cancel", running.id),
        format!("{token}\n").as_bytes(),
    );
    let bad = new_job(b"x");
    home.write_job("pending", &format!("{}.cancel", bad.id), b"not a token\n");
    let later = new_job(b"echo later");
    let later_bytes = queue_job(&home, &key, &later);
    let agent = Agent::start(&home, &["agent", "--once"]);
    agent.expect(FrameType::Hello);
    assert_eq!(agent.expect(FrameType::Job), later_bytes);
    assert_eq!(
        agent.expect(FrameType::Cancel),
        format!("{}\n{token}", running.id).as_bytes()
    );
    agent.expect(FrameType::Idle);
    drop(agent);
    assert!(home.names("pending").is_empty());
    assert_eq!(home.names("rejected"), [format!("{}.cancel", bad.id)]);
}

#[test]
fn agent_exits_non_zero_on_bad_frames() {
    let cases: Vec<Vec<u8>> = vec![
        format!(
            "RESULT {}\n",
            qvm_remote::proto::result::MAX_RESULT_FILE + 1
        )
        .into_bytes(),
        b"ACK 1000\n".to_vec(),
        b"HELLO 1\n2".to_vec(),
        b"NOPE 0\n".to_vec(),
        b"RESULT 10\nshort".to_vec(),
    ];
    for case in cases {
        let (home, _key) = Home::with_key();
        let mut agent = Agent::start(&home, &["agent", "--once"]);
        agent.expect(FrameType::Hello);
        agent.expect(FrameType::Idle);
        agent.send_raw(&case);
        assert_eq!(agent.exit_code(), Some(1), "{:?}", text(&case));
        let log = fs::read_to_string(home.path.join("audit.log")).unwrap();
        assert!(log.contains("agent session error"), "{log}");
    }
}

#[test]
fn stream_mode_sends_new_jobs_as_they_appear() {
    let (home, key) = Home::with_key();
    let mut agent = Agent::start(&home, &["agent"]);
    agent.expect(FrameType::Hello);
    agent.expect(FrameType::Idle);
    let job = new_job(b"echo later");
    let bytes = queue_job(&home, &key, &job);
    assert_eq!(agent.expect(FrameType::Job), bytes);
    agent.expect(FrameType::Idle);
    agent.send(FrameType::Bye, b"");
    assert_eq!(agent.exit_code(), Some(0));
}

#[test]
fn client_and_agent_end_to_end() {
    let (home, key) = Home::with_key();
    let client = home.cmd(&["qvm-ls", "--raw-list"]).spawn().unwrap();
    wait_for(|| home.names("pending").iter().any(|n| n.ends_with(".job")));
    let mut agent = Agent::start(&home, &["agent", "--once"]);
    agent.expect(FrameType::Hello);
    let bytes = agent.expect(FrameType::Job);
    let limits = JobLimits {
        max_command: PROTOCOL_MAX_COMMAND,
        replay_window: 600,
        now: unix_now(),
    };
    let job = job::verify(&bytes, &key, &limits).unwrap();
    assert_eq!(job.body, b"qvm-ls --raw-list");
    agent.expect(FrameType::Idle);
    let mut res = result_for(&job, Status::Done, 0, 0, "");
    res.stdout = b"dom0\nwork\n".to_vec();
    res.stderr = Vec::new();
    agent.send(FrameType::Result, &res.encode(&key));
    assert_eq!(agent.expect(FrameType::Ack), job.id.as_str().as_bytes());
    agent.send(FrameType::Bye, b"");
    assert_eq!(agent.exit_code(), Some(0));
    let out = client.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"dom0\nwork\n");
    assert!(out.stderr.is_empty());
    assert!(home.names("running").is_empty() && home.names("results").is_empty());
}

// ---- stream mode: agent.sock ----

/// The agent's socket in `home`, once a stream-mode agent has bound it.
fn agent_sock(home: &Home) -> PathBuf {
    let path = home.path.join("agent.sock");
    wait_for(|| fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()));
    path
}

/// A stream-mode agent that has said HELLO and IDLE, with its socket bound.
fn stream_agent(home: &Home) -> Agent {
    let agent = Agent::start(home, &["agent"]);
    agent.expect(FrameType::Hello);
    agent.expect(FrameType::Idle);
    agent_sock(home);
    agent
}

/// A client of `agent.sock` speaking the protocol by hand.
struct Watch {
    stream: UnixStream,
    replies: ReplyReader<UnixStream>,
}

impl Watch {
    fn connect(home: &Home) -> Watch {
        let stream = UnixStream::connect(agent_sock(home)).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let replies = ReplyReader::new(stream.try_clone().unwrap());
        Watch { stream, replies }
    }

    fn send(&mut self, line: &[u8]) {
        self.stream.write_all(line).unwrap();
    }

    /// Sends `WATCH id` and checks the answer.
    fn start(home: &Home, id: &CommandId) -> Watch {
        let mut w = Watch::connect(home);
        w.send(&Request::Watch(id.clone()).encode());
        assert_eq!(w.next(), Some((ReplyKind::Watching, vec![])));
        w
    }

    fn next(&mut self) -> Option<(ReplyKind, Vec<u8>)> {
        self.replies.read().unwrap()
    }

    /// The replies until the agent closes; a reset (it closed with our request
    /// unread) counts as closed.
    fn until_closed(&mut self) -> Vec<ReplyKind> {
        let mut v = Vec::new();
        while let Ok(Some((k, _))) = self.replies.read() {
            v.push(k);
        }
        v
    }

    /// Every reply up to the end of the connection.
    fn rest(&mut self) -> Vec<(ReplyKind, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some(r) = self.next() {
            v.push(r);
        }
        v
    }
}

fn chunk(id: &CommandId, bytes: &[u8]) -> Vec<u8> {
    [id.as_str().as_bytes(), b"\n", bytes].concat()
}

#[test]
fn a_stream_agent_binds_a_private_socket_and_removes_it_on_exit() {
    let (home, _key) = Home::with_key();
    let mut agent = stream_agent(&home);
    let path = agent_sock(&home);
    let mode = fs::symlink_metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    agent.send(FrameType::Bye, b"");
    assert_eq!(agent.exit_code(), Some(0));
    assert!(
        fs::symlink_metadata(&path).is_err(),
        "agent.sock left behind"
    );
    // Poll mode never binds one.
    let agent = Agent::start(&home, &["agent", "--once"]);
    agent.expect(FrameType::Hello);
    agent.expect(FrameType::Idle);
    assert!(fs::symlink_metadata(&path).is_err());
    assert_eq!(agent.exit_code(), Some(0));
}

#[test]
fn a_stale_socket_is_replaced_a_live_one_taken_over_and_a_symlink_left_alone() {
    let (home, key) = Home::with_key();
    let path = home.path.join("agent.sock");
    // Stale: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let log_path = home.path.join("audit.log");
    let logged = |what: &str| {
        fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains(what)
    };
    let mut first = Agent::start(&home, &["agent"]);
    first.expect(FrameType::Hello);
    wait_for(|| logged("socket: replaced a stale agent.sock"));
    UnixStream::connect(&path).expect("the new socket answers");
    // Live: a second agent takes over; the first one's exit leaves the new socket.
    // (A listening socket holds its inode, so the successor's cannot reuse its number.)
    let ino = fs::symlink_metadata(&path).unwrap().ino();
    let mut second = Agent::start(&home, &["agent"]);
    second.expect(FrameType::Hello);
    wait_for(|| logged("socket: took agent.sock over"));
    assert_ne!(fs::symlink_metadata(&path).unwrap().ino(), ino);
    first.send(FrameType::Bye, b"");
    assert_eq!(first.exit_code(), Some(0));
    assert!(
        fs::symlink_metadata(&path).is_ok(),
        "the successor's socket was removed"
    );
    second.send(FrameType::Bye, b"");
    assert_eq!(second.exit_code(), Some(0));
    assert!(fs::symlink_metadata(&path).is_err());

    // A symlink (or any non-socket) is never followed nor replaced; the agent runs
    // without a socket and still finds jobs by its periodic rescan.
    let elsewhere = home.path.join("elsewhere");
    symlink(&elsewhere, &path).unwrap();
    let mut agent = Agent::start(&home, &["agent"]);
    agent.expect(FrameType::Hello);
    agent.expect(FrameType::Idle);
    let job = new_job(b"echo rescanned");
    let bytes = queue_job(&home, &key, &job);
    assert_eq!(agent.expect(FrameType::Job), bytes);
    agent.send(FrameType::Bye, b"");
    assert_eq!(agent.exit_code(), Some(0));
    assert!(fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!elsewhere.exists());
    let log = fs::read_to_string(home.path.join("audit.log")).unwrap();
    assert!(log.contains("a symlink, not a socket"), "{log}");
}

#[test]
fn a_watcher_gets_its_jobs_output_live_then_done() {
    let (home, key) = Home::with_key();
    let mut agent = stream_agent(&home);
    let job = new_job(b"echo live");
    let mut w = Watch::start(&home, &job.id);
    let bytes = queue_job(&home, &key, &job);
    w.send(b"WAKE\n");
    assert_eq!(agent.expect(FrameType::Job), bytes);
    agent.expect(FrameType::Idle);
    // Someone watching after the claim may have missed the start: no live output.
    let mut late = Watch::start(&home, &job.id);
    agent.send(FrameType::Out, &chunk(&job.id, b"hello "));
    agent.send(FrameType::Err, &chunk(&job.id, b"oops"));
    agent.send(FrameType::Out, &chunk(&job.id, b"world"));
    // Output of other jobs goes nowhere near this watcher.
    let other = new_job(b"x");
    agent.send(FrameType::Out, &chunk(&other.id, b"not yours"));
    agent.send(
        FrameType::Result,
        &result_for(&job, Status::Done, 0, 0, "").encode(&key),
    );
    assert_eq!(agent.expect(FrameType::Ack), job.id.as_str().as_bytes());
    // The late watcher replaced the first one, which the agent closed.
    assert_eq!(w.rest(), vec![]);
    assert_eq!(late.rest(), vec![(ReplyKind::Done, vec![])]);

    // A watcher that watches first gets every chunk, in order, then DONE.
    let job = new_job(b"echo again");
    let mut w = Watch::start(&home, &job.id);
    let bytes = queue_job(&home, &key, &job);
    w.send(b"WAKE\n");
    assert_eq!(agent.expect(FrameType::Job), bytes);
    agent.send(FrameType::Out, &chunk(&job.id, b"hello "));
    agent.send(FrameType::Err, &chunk(&job.id, b"oops"));
    agent.send(FrameType::Out, &chunk(&job.id, b"world"));
    agent.send(
        FrameType::Result,
        &result_for(&job, Status::Done, 0, 0, "").encode(&key),
    );
    assert_eq!(
        w.rest(),
        vec![
            (ReplyKind::Out, b"hello ".to_vec()),
            (ReplyKind::Err, b"oops".to_vec()),
            (ReplyKind::Out, b"world".to_vec()),
            (ReplyKind::Done, vec![]),
        ]
    );
    // Watching a job whose result is already stored answers DONE at once.
    let mut w = Watch::start(&home, &job.id);
    assert_eq!(w.rest(), vec![(ReplyKind::Done, vec![])]);
    agent.send(FrameType::Bye, b"");
    assert_eq!(agent.exit_code(), Some(0));
}

#[test]
fn a_watcher_that_does_not_read_gets_a_prefix_then_done() {
    let (home, key) = Home::with_key();
    let mut agent = stream_agent(&home);
    let job = new_job(b"yes");
    let mut w = Watch::start(&home, &job.id);
    let bytes = queue_job(&home, &key, &job);
    w.send(b"WAKE\n");
    assert_eq!(agent.expect(FrameType::Job), bytes);
    agent.expect(FrameType::Idle);
    // Four times the agent's per-watcher backlog, in distinct chunks, while the
    // watcher reads nothing: the agent must keep reading dom0's frames regardless.
    let mut sent = Vec::new();
    for i in 0..64u32 {
        let part: Vec<u8> = (0..MAX_CHUNK as u32)
            .map(|j| (i.wrapping_mul(31) ^ j) as u8)
            .collect();
        agent.send(FrameType::Out, &chunk(&job.id, &part));
        sent.extend_from_slice(&part);
    }
    agent.send(
        FrameType::Result,
        &result_for(&job, Status::Done, 0, 0, "").encode(&key),
    );
    assert_eq!(agent.expect(FrameType::Ack), job.id.as_str().as_bytes());
    let replies = w.rest();
    assert_eq!(replies.last(), Some(&(ReplyKind::Done, vec![])));
    let got: Vec<u8> = replies
        .iter()
        .filter(|(k, _)| *k == ReplyKind::Out)
        .flat_map(|(_, b)| b.clone())
        .collect();
    assert!(sent.starts_with(&got), "the relayed bytes are not a prefix");
    assert!(got.len() < sent.len(), "nothing was held back");
    agent.send(FrameType::Bye, b"");
    assert_eq!(agent.exit_code(), Some(0));
}

#[test]
fn bad_socket_requests_close_the_connection() {
    let (home, key) = Home::with_key();
    let mut agent = stream_agent(&home);
    let over = [vec![b'W'; 200], b"\n".to_vec()].concat();
    let cases: Vec<&[u8]> = vec![
        b"WATCH ../../etc/passwd\n",
        b"HELLO\n",
        &over,
        b"WATCH 20261204-153000-1-0123456789abcdef\nWATCH 20261204-153000-1-0123456789abcdee\n",
    ];
    for case in cases {
        let mut w = Watch::connect(&home);
        w.send(case);
        let replies = w.until_closed();
        assert!(
            replies.iter().all(|k| *k == ReplyKind::Watching),
            "{:?}: {replies:?}",
            text(case)
        );
    }
    // The agent is unharmed: a plain WAKE still gets a new job out.
    let job = new_job(b"echo still");
    let bytes = queue_job(&home, &key, &job);
    Watch::connect(&home).send(b"WAKE\n");
    assert_eq!(agent.expect(FrameType::Job), bytes);
    agent.send(FrameType::Bye, b"");
    assert_eq!(agent.exit_code(), Some(0));
    let log = fs::read_to_string(home.path.join("audit.log")).unwrap();
    assert_eq!(log.matches("bad request").count(), 1, "{log}");
}

#[test]
fn the_client_streams_through_the_socket_and_checks_the_prefix() {
    let (home, key) = Home::with_key();
    let mut agent = stream_agent(&home);
    let answer = |agent: &mut Agent, streamed: &[&[u8]]| -> Output {
        let client = home.cmd(&["echo", "hi"]).spawn().unwrap();
        let job = job::verify(
            &agent.expect(FrameType::Job),
            &key,
            &JobLimits {
                max_command: PROTOCOL_MAX_COMMAND,
                replay_window: 600,
                now: unix_now(),
            },
        )
        .unwrap();
        agent.expect(FrameType::Idle);
        for part in streamed {
            agent.send(FrameType::Out, &chunk(&job.id, part));
        }
        let mut res = result_for(&job, Status::Done, 0, 0, "");
        res.stdout = b"hi\n".to_vec();
        res.stderr = Vec::new();
        agent.send(FrameType::Result, &res.encode(&key));
        agent.expect(FrameType::Ack);
        client.wait_with_output().unwrap()
    };
    // A prefix streamed: the rest comes from the result, the output is whole.
    let out = answer(&mut agent, &[b"h"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"hi\n");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    // Streamed bytes the signed result does not hold: the run fails.
    let out = answer(&mut agent, &[b"forged\n"]);
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(out.stdout, b"forged\n");
    assert_eq!(
        text(&out.stderr),
        "qvm-remote: streamed output differs from dom0's signed result\n"
    );
    agent.send(FrameType::Bye, b"");
    assert_eq!(agent.exit_code(), Some(0));
}

#[test]
fn ctrl_c_with_an_agent_sends_the_cancel_at_once() {
    let (home, key) = Home::with_key();
    let mut agent = stream_agent(&home);
    let client = home.cmd(&["sleep", "100"]).spawn().unwrap();
    let bytes = agent.expect(FrameType::Job);
    let job_id = job::peek_id(&bytes).unwrap();
    agent.expect(FrameType::Idle);
    signal(&client, "INT");
    let t = Instant::now();
    let payload = agent.expect(FrameType::Cancel);
    // Woken through the socket, not found by the periodic rescan.
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let (id, token) = qvm_remote::proto::parse_cancel_payload(&payload).unwrap();
    assert_eq!(id, job_id);
    assert!(verify_cancel(&key, &id, token));
    let job = Job {
        id,
        ..new_job(b"sleep 100")
    };
    agent.send(
        FrameType::Result,
        &result_for(&job, Status::Cancelled, 0, 15, "cancelled by the client").encode(&key),
    );
    let out = client.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(text(&out.stderr).ends_with("qvm-remote: cancelled\n"));
    agent.send(FrameType::Bye, b"");
    assert_eq!(agent.exit_code(), Some(0));
}

// ---- helpers ----

fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met in time");
        thread::sleep(Duration::from_millis(5));
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([format!("-{sig}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A JSON value as the client's flat objects use them.
#[derive(Debug, Clone, PartialEq)]
enum J {
    Str(String),
    Num(i64),
    Bool(bool),
}

fn check(o: &BTreeMap<String, J>, key: &str, want: J) {
    assert_eq!(o.get(key), Some(&want), "{key} in {o:?}");
}

/// A tiny parser for one flat JSON object (strings, integers, booleans), enough to
/// prove the client's output parses as JSON and carries the right values.
fn parse_object(s: &str) -> BTreeMap<String, J> {
    let mut p = Parser {
        b: s.as_bytes(),
        i: 0,
    };
    let mut out = BTreeMap::new();
    p.ws();
    p.eat(b'{');
    p.ws();
    if p.peek() == b'}' {
        p.i += 1;
    } else {
        loop {
            p.ws();
            let k = p.string();
            p.ws();
            p.eat(b':');
            p.ws();
            let v = match p.peek() {
                b'"' => J::Str(p.string()),
                b't' => {
                    p.word("true");
                    J::Bool(true)
                }
                b'f' => {
                    p.word("false");
                    J::Bool(false)
                }
                _ => J::Num(p.number()),
            };
            assert!(out.insert(k, v).is_none(), "duplicate key");
            p.ws();
            match p.next() {
                b',' => continue,
                b'}' => break,
                c => panic!("unexpected {:?} at {}", c as char, p.i),
            }
        }
    }
    p.ws();
    assert_eq!(p.i, s.len(), "trailing text in {s}");
    out
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> u8 {
        self.b[self.i]
    }
    fn next(&mut self) -> u8 {
        self.i += 1;
        self.b[self.i - 1]
    }
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\n' | b'\t' | b'\r') {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) {
        assert_eq!(self.next(), c);
    }
    fn word(&mut self, w: &str) {
        for c in w.bytes() {
            self.eat(c);
        }
    }
    fn number(&mut self) -> i64 {
        let start = self.i;
        if self.peek() == b'-' {
            self.i += 1;
        }
        while self.i < self.b.len() && self.b[self.i].is_ascii_digit() {
            self.i += 1;
        }
        std::str::from_utf8(&self.b[start..self.i])
            .unwrap()
            .parse()
            .unwrap()
    }
    fn hex4(&mut self) -> u32 {
        let h = std::str::from_utf8(&self.b[self.i..self.i + 4]).unwrap();
        self.i += 4;
        u32::from_str_radix(h, 16).unwrap()
    }
    fn string(&mut self) -> String {
        self.eat(b'"');
        let mut out = String::new();
        loop {
            let c = self.next();
            assert!(c >= 0x20, "raw control byte in a JSON string");
            match c {
                b'"' => return out,
                b'\\' => match self.next() {
                    b'"' => out.push('"'),
                    b'\\' => out.push('\\'),
                    b'/' => out.push('/'),
                    b'n' => out.push('\n'),
                    b'r' => out.push('\r'),
                    b't' => out.push('\t'),
                    b'b' => out.push('\u{8}'),
                    b'f' => out.push('\u{c}'),
                    b'u' => {
                        let hi = self.hex4();
                        let cp = if (0xd800..0xdc00).contains(&hi) {
                            self.word("\\u");
                            let lo = self.hex4();
                            0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                        } else {
                            hi
                        };
                        out.push(char::from_u32(cp).unwrap());
                    }
                    e => panic!("bad escape {e}"),
                },
                _ => {
                    // Multi-byte UTF-8 is allowed by JSON; collect the whole char.
                    let start = self.i - 1;
                    let len = match c {
                        0..=0x7f => 1,
                        0xc0..=0xdf => 2,
                        0xe0..=0xef => 3,
                        _ => 4,
                    };
                    self.i = start + len;
                    out.push_str(std::str::from_utf8(&self.b[start..self.i]).unwrap());
                }
            }
        }
    }
}

#[test]
fn the_test_json_parser_is_strict_enough() {
    let o = parse_object(r#"{"a": "x\"\n\u00e9\ud83d\ude00", "b": -3, "c": true, "d": false}"#);
    check(&o, "a", J::Str("x\"\né😀".into()));
    check(&o, "b", J::Num(-3));
    check(&o, "c", J::Bool(true));
    check(&o, "d", J::Bool(false));
    assert!(std::panic::catch_unwind(|| parse_object("{\"a\": \"\u{1}\"}")).is_err());
}
