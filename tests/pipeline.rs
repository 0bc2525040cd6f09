//! The core pipeline end to end (DESIGN §2–§6), through the real binaries over the
//! Qubes simulator: a client in a VM writes a job, the dom0 daemon polls the VM's agent
//! through `qvm-run`, runs the job and the client prints the result.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use qvm_remote::id::CommandId;
use qvm_remote::keys::Key;
use qvm_remote::proto::{Job, JobResult, Status};

fn running_sim(vms: &[&str]) -> Sim {
    let mut sim = Sim::new(vms);
    sim.start_daemon();
    sim
}

#[test]
fn commands_report_output_and_exit_codes() {
    let sim = running_sim(&["work"]);
    // (arguments, stdout, exit code)
    let table: &[(&[&str], &str, i32)] = &[
        (&["echo", "hello", "world"], "hello world\n", 0),
        (&["exit 3"], "", 3),
        (&["nonexistent-command-xyz"], "", 127),
        (&["kill -9 $$"], "", 137),
        (&["printf", "'%s-%s'", "a", "b"], "a-b", 0),
        (
            &["test \"$QVM_REMOTE_VM\" = work && case $QVM_REMOTE_ID in 2*-*-*-*) echo ok;; esac"],
            "ok\n",
            0,
        ),
    ];
    for (args, want_out, want_code) in table {
        let out = sim.client("work", args);
        assert_eq!(stdout(&out), *want_out, "{args:?}: {}", stderr(&out));
        assert_eq!(code(&out), *want_code, "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn stderr_is_kept_apart_and_scripts_come_from_stdin() {
    let sim = running_sim(&["work"]);
    let out = sim.client("work", &["echo out; echo err >&2"]);
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");

    let script = b"x=41\necho $((x + 1))\nexit 5\n";
    let out = sim.client_stdin("work", &[], script);
    assert_eq!(stdout(&out), "42\n");
    assert_eq!(code(&out), 5);

    // `qvm-remote < script.sh`: a file on stdin is the same path.
    let file = sim.marker("script.sh");
    fs::write(&file, "echo from-file\n").unwrap();
    let out = sim.vm_cmd(
        "work",
        &["sh", "-c", &format!("qvm-remote < {}", file.display())],
        b"",
    );
    assert_eq!(stdout(&out), "from-file\n", "{}", stderr(&out));
}

#[test]
fn stdin_bytes_and_large_output_are_byte_exact() {
    let sim = running_sim(&["work"]);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let out = sim.client_stdin("work", &["-i", "cat"], &data);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(out.stdout == data, "stdin round trip differs");

    let out = sim.client(
        "work",
        &["head -c 5242880 /dev/urandom | tee /dev/stderr | sha256sum"],
    );
    assert_eq!(code(&out), 0);
    let digest = qvm_remote_hmac::hex::encode(&qvm_remote_hmac::sha256(&out.stderr));
    assert_eq!(out.stderr.len(), 5 * 1024 * 1024);
    assert!(stdout(&out).starts_with(&digest), "5 MiB output differs");
}

#[test]
fn output_over_the_cap_is_truncated_and_marked() {
    let mut sim = Sim::new(&["work"]);
    sim.set("QVM_REMOTE_MAX_OUTPUT", "1000");
    sim.start_daemon();
    let out = sim.client(
        "work",
        &["head -c 5000 /dev/zero | tr '\\0' x; echo done >&2"],
    );
    assert_eq!(code(&out), 0);
    assert_eq!(out.stdout, vec![b'x'; 1000]);
    assert!(stderr(&out).contains("done"));
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
}

#[test]
fn timeouts_kill_the_whole_job() {
    let sim = running_sim(&["work"]);
    let start = Instant::now();
    // Unique durations, so processes of tests running alongside never match.
    let single = format!("sleep 30.{}1", std::process::id());
    let out = sim.client("work", &["-t", "2", &single]);
    assert_eq!(code(&out), 124, "{}", stderr(&out));
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(processes_matching(&single).is_empty());

    let tag = format!("sleep 30.{}2", std::process::id());
    let cmd = format!("for i in $(seq 50); do {tag} & done; wait");
    let out = sim.client("work", &["-t", "2", &cmd]);
    assert_eq!(code(&out), 124);
    assert!(
        wait_for(Duration::from_secs(5), || processes_matching(&tag)
            .is_empty()),
        "background sleepers survived the timeout"
    );
}

#[test]
fn many_clients_on_two_vms_all_get_their_own_results() {
    let sim = running_sim(&["work", "dev"]);
    let sim = &sim;
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for vm in ["work", "dev"] {
            for i in 0..8 {
                handles.push(s.spawn(move || {
                    let out = sim.client(vm, &[&format!("echo {vm}-{i}; exit {i}")]);
                    assert_eq!(stdout(&out), format!("{vm}-{i}\n"), "{}", stderr(&out));
                    assert_eq!(code(&out), i);
                }));
            }
        }
        for h in handles {
            h.join().unwrap();
        }
    });
}

/// Writes a job file into a VM's queue by hand, as an attacker or a broken client would.
fn queue_raw(sim: &Sim, vm: &str, id: &CommandId, bytes: &[u8]) {
    let pending = sim.vm_data(vm).join("queue/pending");
    let path = pending.join(format!("{id}.job"));
    fs::write(&path, bytes).unwrap();
    chown_like(&path, &pending);
}

fn chown_like(path: &std::path::Path, like: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(like).unwrap();
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid())).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

fn vm_key(sim: &Sim, vm: &str) -> Key {
    // The VM's key file belongs to the VM's user, so it is read here without the
    // owner check that dom0 applies to its own key files.
    Key::parse(&fs::read_to_string(sim.vm_data(vm).join("auth.key")).unwrap()).unwrap()
}

fn wait_result(sim: &Sim, vm: &str, id: &CommandId) -> JobResult {
    let path = sim.vm_data(vm).join(format!("queue/results/{id}.result"));
    assert!(
        wait_for(Duration::from_secs(20), || path.exists()),
        "no result for {id}"
    );
    JobResult::verify(&fs::read(&path).unwrap(), &vm_key(sim, vm)).unwrap()
}

fn job(body: &str, created: u64) -> Job {
    Job {
        id: CommandId::generate(4242).unwrap(),
        created,
        timeout: 30,
        body: body.as_bytes().to_vec(),
        stdin: Vec::new(),
    }
}

#[test]
fn forged_and_replayed_jobs_never_run() {
    let sim = running_sim(&["work", "dev"]);
    let now = qvm_remote::time::unix_now();
    let key = vm_key(&sim, "work");
    let other_vm_key = vm_key(&sim, "dev");
    let wrong_key = Key::generate().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = {
        let mut v = Vec::new();
        let mk = |name: &str| sim.marker(name).display().to_string();
        let j = job(&format!("touch {}", mk("tampered")), now);
        let mut bytes = j.encode(&key);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        v.push(("tampered", bytes, "hash"));
        let j = job(&format!("touch {}", mk("wrongkey")), now);
        v.push(("wrongkey", j.encode(&wrong_key), "authentication"));
        let j = job(&format!("touch {}", mk("otherkey")), now);
        v.push(("otherkey", j.encode(&other_vm_key), "authentication"));
        let j = job(&format!("touch {}", mk("stale")), now - 3600);
        v.push(("stale", j.encode(&key), "replay window"));
        let j = job(&format!("touch {}", mk("future")), now + 3600);
        v.push(("future", j.encode(&key), "replay window"));
        v
    };
    for (name, bytes, reason) in &cases {
        let id = qvm_remote::proto::job::peek_id(bytes).unwrap();
        queue_raw(&sim, "work", &id, bytes);
        let r = wait_result(&sim, "work", &id);
        assert_eq!(r.status, Status::Rejected, "{name}");
        assert_eq!(r.client_exit_code(), 126);
        assert!(r.reason.contains(reason), "{name}: {}", r.reason);
        assert!(!sim.marker(name).exists(), "{name} ran");
    }

    // A real job runs once; copying its file back into the queue is a replay.
    let marker = sim.marker("once");
    let j = job(&format!("echo x >> {}", marker.display()), now);
    let bytes = j.encode(&key);
    queue_raw(&sim, "work", &j.id, &bytes);
    let r = wait_result(&sim, "work", &j.id);
    assert_eq!(r.status, Status::Done);
    // Until dom0 has the agent's ACK it still holds the result and would simply send
    // it again (DESIGN §4); the replay case is the one after that.
    let held = sim.dom0.join("state/vms/work/held");
    assert!(wait_for(Duration::from_secs(10), || fs::read_dir(&held)
        .map(|d| d.count() == 0)
        .unwrap_or(false)));
    let data = sim.vm_data("work");
    fs::remove_file(data.join(format!("queue/results/{}.result", j.id))).unwrap();
    let _ = fs::remove_file(data.join(format!("queue/running/{}.job", j.id)));
    queue_raw(&sim, "work", &j.id, &bytes);
    let r = wait_result(&sim, "work", &j.id);
    assert_eq!(r.status, Status::Rejected, "{r:?}");
    assert!(r.reason.contains("replay"), "{}", r.reason);
    assert_eq!(
        fs::read_to_string(&marker).unwrap(),
        "x\n",
        "the replay ran"
    );
}

#[test]
fn bad_jobs_are_refused_with_a_reason_and_nothing_runs() {
    let sim = running_sim(&["work"]);
    let now = qvm_remote::time::unix_now();
    let key = vm_key(&sim, "work");
    let marker = sim.marker("binary");
    let bin = format!("touch {}\x01", marker.display());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (job("", now).encode(&key), "empty"),
        (job(&bin, now).encode(&key), "control"),
    ];
    for (bytes, reason) in cases {
        let id = qvm_remote::proto::job::peek_id(&bytes).unwrap();
        queue_raw(&sim, "work", &id, &bytes);
        let r = wait_result(&sim, "work", &id);
        assert_eq!(r.client_exit_code(), 126);
        assert!(r.reason.contains(reason), "{}", r.reason);
    }
    assert!(!marker.exists());
    // A body one byte over the limit, written by hand, reaches dom0 and is refused.
    let over = job(&"x".repeat(1024 * 1024 + 1), now).encode(&key);
    let id = qvm_remote::proto::job::peek_id(&over).unwrap();
    queue_raw(&sim, "work", &id, &over);
    let r = wait_result(&sim, "work", &id);
    assert_eq!(r.client_exit_code(), 126);
    assert!(r.reason.contains("too large"), "{}", r.reason);
    // The client refuses the same body itself, with the same code: nothing is queued.
    let big = "x".repeat(1024 * 1024 + 1);
    let out = sim.client_stdin("work", &[], big.as_bytes());
    assert_eq!(code(&out), 126, "{}", stderr(&out));
    let pending = fs::read_dir(sim.vm_data("work").join("queue/pending"))
        .unwrap()
        .count();
    assert_eq!(pending, 0);
}

#[test]
fn a_vm_without_a_key_is_never_polled() {
    let mut sim = Sim::new(&["work", "nokey"]);
    let out = sim.dom0_cmd(&["revoke", "nokey"], b"");
    assert!(out.status.success(), "{out:?}");
    sim.start_daemon();
    let out = sim.client("work", &["echo", "ok"]);
    assert_eq!(stdout(&out), "ok\n");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sim.spawns("nokey"), 0);
    assert!(sim.spawns("work") > 0);
    let log = sim.log_text();
    assert_eq!(log.matches("NOKEY").count(), 1, "{log}");
}

#[test]
fn key_files_open_to_others_are_refused() {
    let mut sim = Sim::new(&["work"]);
    let key = sim.dom0.join("keys/work.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = sim.dom0_cmd(&["check-config"], b"");
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(stdout(&out).contains("0644"), "{}", stdout(&out));
    sim.start_daemon();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sim.spawns("work"), 0);
    assert!(sim.log_text().contains("NOKEY"));
}

#[test]
fn a_daemon_killed_mid_job_reports_interrupted_and_never_reruns() {
    let mut sim = running_sim(&["work"]);
    let marker2 = sim.marker("started2");
    // A unique duration names the job's process, so the test can tell whether the
    // restarted daemon killed what the dead one left running.
    let sleeper = format!("sleep 60.{}7", std::process::id());
    let cmd2 = format!("echo run >> {}; {sleeper}", marker2.display());
    let client = std::thread::spawn({
        let sim_dir = sim.sim_dir.clone();
        move || {
            let mut c = std::process::Command::new(sim_tools().join("simctl"));
            c.args(["exec", "work", "qvm-remote", "-t", "60", &cmd2])
                .env("QVM_SIM_DIR", sim_dir);
            run_with_stdin(c, b"")
        }
    });
    assert!(wait_for(Duration::from_secs(20), || marker2.exists()));
    sim.kill_daemon();
    sim.start_daemon();
    let out = client.join().unwrap();
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert!(
        wait_for(Duration::from_secs(5), || processes_matching(&sleeper)
            .is_empty()),
        "the crashed daemon's job is still running"
    );
    assert!(sim.log_text().contains(" KILLED "));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fs::read_to_string(&marker2).unwrap(), "run\n");
}

#[test]
fn a_result_with_a_bad_mac_is_refused_by_the_client() {
    let sim = Sim::new(&["work"]);
    // No daemon: this test plays dom0 and answers with a forged result.
    let data = sim.vm_data("work");
    let client = std::thread::spawn({
        let sim_dir = sim.sim_dir.clone();
        move || {
            let mut c = std::process::Command::new(sim_tools().join("simctl"));
            c.args(["exec", "work", "qvm-remote", "echo", "hi"])
                .env("QVM_SIM_DIR", sim_dir);
            run_with_stdin(c, b"")
        }
    });
    let pending = data.join("queue/pending");
    let mut id = None;
    assert!(wait_for(Duration::from_secs(10), || {
        id = fs::read_dir(&pending).unwrap().flatten().find_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".job")
                .and_then(|s| CommandId::parse(s).ok())
        });
        id.is_some()
    }));
    let id = id.unwrap();
    let mut forged = JobResult::refusal(id.clone(), Status::Done, "");
    forged.stdout = b"FORGED OUTPUT\n".to_vec();
    let path = data.join(format!("queue/results/{id}.result"));
    fs::write(&path, forged.encode(&Key::generate().unwrap())).unwrap();
    chown_like(&path, &pending);
    let out = client.join().unwrap();
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(!stdout(&out).contains("FORGED"));
    assert!(stderr(&out).contains("verif"), "{}", stderr(&out));
}

#[test]
fn the_audit_log_records_each_job_and_verifies() {
    let sim = running_sim(&["work"]);
    let out = sim.client("work", &["echo", "audited"]);
    assert_eq!(code(&out), 0);
    let log = sim.log_text();
    for cat in ["START", "AUTH-OK", "EXEC", "DONE"] {
        assert!(log.contains(&format!(" {cat} ")), "{cat} missing:\n{log}");
    }
    assert!(log.contains("cmd=\"echo audited\""), "{log}");
    let path = sim.dom0.join("log/qvm-remote.log");
    let (n, _) = qvm_remote::audit::verify(&path, qvm_remote::audit::GENESIS).unwrap();
    assert!(n >= 4);
}

#[test]
fn sigterm_lets_a_running_job_finish_then_exits_cleanly() {
    let mut sim = running_sim(&["work"]);
    let marker = sim.marker("graceful");
    let cmd = format!("sleep 1; echo finished > {}", marker.display());
    let client = std::thread::spawn({
        let sim_dir = sim.sim_dir.clone();
        move || {
            let mut c = std::process::Command::new(sim_tools().join("simctl"));
            c.args(["exec", "work", "qvm-remote", &cmd])
                .env("QVM_SIM_DIR", sim_dir);
            run_with_stdin(c, b"")
        }
    });
    // Wait until the job runs, then ask the daemon to stop.
    assert!(wait_for(Duration::from_secs(20), || sim
        .log_text()
        .contains(" EXEC ")));
    let code_at_exit = sim.stop_daemon();
    assert_eq!(code_at_exit, Some(0));
    assert_eq!(fs::read_to_string(&marker).unwrap(), "finished\n");
    let log = sim.log_text();
    assert!(log.contains(" STOP "), "{log}");
    // The result was held; the next daemon delivers it to the waiting client.
    sim.start_daemon();
    let out = client.join().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn once_and_dry_run() {
    let sim = Sim::new(&["work"]);
    let marker = sim.marker("dry");
    // Queue a job while no daemon runs, then let a --dry-run --once daemon answer it.
    let client = std::thread::spawn({
        let sim_dir = sim.sim_dir.clone();
        let cmd = format!("touch {}", marker.display());
        move || {
            let mut c = std::process::Command::new(sim_tools().join("simctl"));
            c.args(["exec", "work", "qvm-remote", &cmd])
                .env("QVM_SIM_DIR", sim_dir);
            run_with_stdin(c, b"")
        }
    });
    let pending = sim.vm_data("work").join("queue/pending");
    assert!(wait_for(Duration::from_secs(10), || fs::read_dir(&pending)
        .map(|d| d.count() > 0)
        .unwrap_or(false)));
    let out = sim.dom0_cmd(&["--once", "--dry-run"], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = client.join().unwrap();
    assert_eq!(code(&out), 126, "{}", stderr(&out));
    assert!(stderr(&out).contains("dry-run"), "{}", stderr(&out));
    assert!(!marker.exists());
    assert!(sim.log_text().contains(" DRY "));
    // --once without --dry-run runs it and exits.
    let client = std::thread::spawn({
        let sim_dir = sim.sim_dir.clone();
        move || {
            let mut c = std::process::Command::new(sim_tools().join("simctl"));
            c.args(["exec", "work", "qvm-remote", "echo", "once"])
                .env("QVM_SIM_DIR", sim_dir);
            run_with_stdin(c, b"")
        }
    });
    assert!(wait_for(Duration::from_secs(10), || fs::read_dir(&pending)
        .map(|d| d.count() > 0)
        .unwrap_or(false)));
    let out = sim.dom0_cmd(&["--once"], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = client.join().unwrap();
    assert_eq!(stdout(&out), "once\n");
}

#[test]
fn status_and_check_config_report_the_daemon() {
    let mut sim = Sim::new(&["work", "dev"]);
    let out = sim.dom0_cmd(&["check-config"], b"");
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("no policy file"), "{}", stdout(&out));
    let out = sim.dom0_cmd(&["status"], b"");
    assert_eq!(code(&out), 1, "status without a daemon must fail");
    sim.start_daemon();
    let ok = sim.client("work", &["true"]);
    assert_eq!(code(&ok), 0);
    assert!(wait_for(Duration::from_secs(5), || {
        let out = sim.dom0_cmd(&["status"], b"");
        code(&out) == 0 && stdout(&out).contains("work") && stdout(&out).contains("dev")
    }));
    // The status file records when dom0 last opened a channel to each VM, before the
    // agent answered it.
    let field = |line: &str, key: &str| -> u64 {
        line.split(' ')
            .find_map(|f| f.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(wait_for(Duration::from_secs(5), || {
        let status = fs::read_to_string(sim.dom0.join("run/status")).unwrap_or_default();
        let Some(line) = status.lines().find(|l| l.contains(" name=work ")) else {
            return false;
        };
        let (poll, session) = (field(line, "last_poll_ms"), field(line, "last_session_ms"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        poll > 0 && session > 0 && now.saturating_sub(poll) < 60_000 && poll <= session
    }));
    let out = sim.dom0_cmd(&["keys"], b"");
    let text = stdout(&out);
    assert!(text.contains("work") && text.contains("dev"), "{text}");
    let key = fs::read_to_string(sim.vm_data("work").join("auth.key")).unwrap();
    assert!(!text.contains(key.trim()), "keys printed key material");
}

#[test]
fn config_errors_name_the_line() {
    let mut sim = Sim::new(&["work"]);
    sim.set("QVM_REMOTE_TYPO", "1");
    let out = sim.dom0_cmd(&["check-config"], b"");
    assert_ne!(code(&out), 0);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("remote.conf:10"), "{all}");
    assert!(all.contains("unknown key"), "{all}");
}

#[test]
fn bad_names_and_symlinks_in_the_queue_are_never_sent() {
    let sim = running_sim(&["work"]);
    let data = sim.vm_data("work");
    let pending = data.join("queue/pending");
    let outside = sim.marker("outside.job");
    let key = vm_key(&sim, "work");
    let evil = job(
        &format!("touch {}", sim.marker("symlinked").display()),
        qvm_remote::time::unix_now(),
    );
    fs::write(&outside, evil.encode(&key)).unwrap();
    std::os::unix::fs::symlink(&outside, pending.join(format!("{}.job", evil.id))).unwrap();
    fs::write(pending.join("bad.job"), b"x").unwrap();
    chown_like(&pending.join("bad.job"), &pending);
    // A well-formed job behind them still runs: one bad file never blocks the queue.
    let out = sim.client("work", &["echo", "after"]);
    assert_eq!(stdout(&out), "after\n", "{}", stderr(&out));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!sim.marker("symlinked").exists(), "a symlinked job ran");
    let rejected: Vec<String> = fs::read_dir(data.join("queue/rejected"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(rejected.iter().any(|n| n.contains("bad")), "{rejected:?}");
}

#[test]
fn a_job_frame_with_an_unparsable_header_is_answered_and_ends_the_session() {
    // DESIGN §4: a job whose header cannot be parsed is a protocol violation, and §3:
    // every job gets a result. A scripted agent sends one such job that still names its
    // id, then keeps its end of the channel open and records what dom0 says.
    let mut sim = Sim::new(&["work"]);
    sim.set("QVM_REMOTE_MODE", "stream");
    let home = sim.vm_home("work");
    let id = "20261204-153000-4242-00000000000000aa";
    let job = format!("qvm-remote-job 2\nid {id}\ncreated soon\n\nbody");
    let job_file = sim.sim_dir.join("bin/broken-job");
    fs::write(&job_file, &job).unwrap();
    fs::set_permissions(&job_file, fs::Permissions::from_mode(0o644)).unwrap();
    let script = sim.sim_dir.join("bin/broken-agent");
    fs::write(
        &script,
        format!(
            "#!/bin/bash\nprintf 'HELLO 1\\n2JOB {}\\n'\ncat {}\nexec cat >> \"$HOME/dom0-said\"\n",
            job.len(),
            job_file.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        sim.sim_dir.join("vms/work/agent"),
        format!("{}\n", script.display()),
    )
    .unwrap();
    sim.start_daemon();
    // Sessions end at once and come back after a backoff: 0.5 s, then 1 s, …
    assert!(
        wait_for(Duration::from_secs(10), || sim.spawns("work") >= 2),
        "the session did not end: {}",
        sim.log_text()
    );
    sim.stop_daemon();
    let log = sim.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(" PROTO ") && l.contains("vm=work") && l.contains("created")),
        "{log}"
    );
    let said = fs::read(home.join("dom0-said")).unwrap();
    let said = String::from_utf8_lossy(&said);
    assert!(said.starts_with("RESULT "), "{said}");
    assert!(
        said.contains(&format!("\nid {id}\nstatus rejected\n")),
        "{said}"
    );
    assert!(said.contains("\nreason malformed job: created\n"), "{said}");
}

#[test]
fn start_says_how_jobs_are_contained() {
    // The daemon uses job cgroups exactly where this process could (same user, same
    // system), and says which in its START line; without them it says why.
    let start_line = |sim: &mut Sim| {
        assert!(wait_for(Duration::from_secs(10), || sim
            .log_text()
            .contains(" START ")));
        sim.stop_daemon();
        let log = sim.log_text();
        log.lines()
            .find(|l| l.contains(" START "))
            .unwrap()
            .to_string()
    };
    // Not asked for: the group and the session only.
    let mut sim = running_sim(&["work"]);
    let start = start_line(&mut sim);
    assert!(start.contains(" containment=session "), "{start}");
    assert!(!start.contains("no_cgroup="), "{start}");
    // Asked for: used exactly where this process could use them.
    let mut sim = Sim::new(&["work"]);
    sim.set("QVM_REMOTE_JOB_CGROUP", "yes");
    sim.start_daemon();
    let start = start_line(&mut sim);
    match qvm_remote::cgroup::discover() {
        Ok(found) => assert!(
            start.contains(&format!("containment=cgroup:{}", found.base().display())),
            "{start}"
        ),
        Err(_) => assert!(
            start.contains("containment=session") && start.contains(" no_cgroup="),
            "{start}"
        ),
    }
}

#[test]
fn a_process_that_leaves_the_job_session_dies_with_the_job() {
    if let Err(why) = qvm_remote::cgroup::discover() {
        eprintln!("skipped: no job cgroups here: {why}");
        return;
    }
    let mut sim = Sim::new(&["work"]);
    sim.set("QVM_REMOTE_JOB_CGROUP", "yes");
    sim.start_daemon();
    let sleeper = format!("sleep 60.{}3", std::process::id());
    let cmd = format!("setsid {sleeper} & sleep 0.3; echo started");
    let out = sim.client("work", &[&cmd]);
    assert_eq!(stdout(&out), "started\n", "{}", stderr(&out));
    assert!(
        wait_for(Duration::from_secs(5), || processes_matching(&sleeper)
            .is_empty()),
        "the escaped process outlived its job"
    );
}
