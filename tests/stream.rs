//! Stream mode end to end (DESIGN §4): live output through `agent.sock`, cancel,
//! stdin, agent and VM restarts, memory bounds under a client that never reads, and
//! many clients at once. Every test drives the real binaries over the simulator.

mod common;

use common::*;
use std::fs;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn live_output_arrives_before_the_command_ends() {
    let sim = Sim::streaming(&["work"]);
    let mut child = sim
        .vm_command("work", &["qvm-remote", "echo first; sleep 2; echo second"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut first_at = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if first_at.is_none() && seen.starts_with(b"first\n") {
            first_at = Some(started.elapsed());
        }
    }
    let ended = started.elapsed();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(seen, b"first\nsecond\n");
    let first_at = first_at.unwrap();
    assert!(
        first_at + Duration::from_millis(1500) < ended,
        "first line at {first_at:?}, end at {ended:?}: not live"
    );
}

/// Reads lines from a child's pipe on a thread, handing each over as it arrives.
fn line_reader(pipe: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn expect_line(rx: &std::sync::mpsc::Receiver<String>, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("the expected line in time");
        if want(&line) {
            return line;
        }
    }
}

/// A sleep duration no other test or process uses, to find the job's process by.
fn unique_sleep() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}.{nanos:09}", 700 + std::process::id() % 200)
}

#[test]
fn ctrl_c_cancels_the_running_job_and_leaves_no_process() {
    let sim = Sim::streaming(&["work"]);
    let duration = unique_sleep();
    let body = format!("echo started; sleep {duration}; echo never");
    let mut child = sim
        .vm_command("work", &["qvm-remote", "-v", &body])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = line_reader(child.stdout.take().unwrap());
    let err = line_reader(child.stderr.take().unwrap());
    let queued = expect_line(&err, |l| queued_id(l).is_some());
    let id = queued_id(&queued).unwrap();
    expect_line(&out, |l| l == "started");
    let needle = format!("sleep {duration}");
    assert!(
        wait_for(Duration::from_secs(10), || !processes_matching(&needle)
            .is_empty()),
        "the job's sleep is not running"
    );
    let t = Instant::now();
    signal(child.id(), "INT");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        t.elapsed()
    );
    // The reader thread ends at the pipe's end, which the client's exit brings.
    let rest: Vec<String> = err.iter().collect();
    assert!(
        rest.iter().any(|l| l == "qvm-remote: cancelled"),
        "{rest:?}"
    );
    assert!(
        wait_for(Duration::from_secs(10), || processes_matching(&needle)
            .is_empty()),
        "a process of the cancelled job survived"
    );
    let shown = sim.client("work", &["--json", "result", &id]);
    assert!(
        stdout(&shown).contains("\"status\": \"cancelled\""),
        "{}",
        stdout(&shown)
    );
    let history = stdout(&sim.client("work", &["history", "1"]));
    assert!(history.contains(&format!("{id} exit=130")), "{history}");
}

#[test]
fn a_killed_client_leaves_the_job_to_finish_and_its_result_fetchable() {
    let sim = Sim::streaming(&["work"]);
    let mut child = sim
        .vm_command(
            "work",
            &["qvm-remote", "-v", "echo begun; sleep 1.5; echo finished"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = line_reader(child.stdout.take().unwrap());
    let err = line_reader(child.stderr.take().unwrap());
    let id = queued_id(&expect_line(&err, |l| queued_id(l).is_some())).unwrap();
    expect_line(&out, |l| l == "begun");
    signal(child.id(), "KILL");
    child.wait().unwrap();
    let mut last = None;
    let fetched = wait_for(Duration::from_secs(20), || {
        let o = sim.client("work", &["result", &id]);
        let ok = code(&o) == 0;
        last = Some(o);
        ok
    });
    let last = last.unwrap();
    assert!(fetched, "{}", stderr(&last));
    assert_eq!(stdout(&last), "begun\nfinished\n");
}

#[test]
fn one_mib_of_stdin_round_trips_byte_exact() {
    let sim = Sim::streaming(&["work"]);
    // Every byte value, in a pattern that shifts so no chunk repeats another.
    let data: Vec<u8> = (0..1usize << 20)
        .map(|i| (i ^ (i >> 8) ^ (i >> 16)) as u8)
        .collect();
    let out = sim.client_stdin("work", &["-i", "cat"], &data);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(out.stdout == data, "stdout differs from stdin");
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    // One byte more is refused before anything is queued.
    let mut over = data.clone();
    over.push(0);
    let out = sim.client_stdin("work", &["-i", "cat"], &over);
    assert_eq!(code(&out), 126);
    assert!(stderr(&out).contains("over the limit"), "{}", stderr(&out));
}

#[test]
fn an_agent_killed_mid_session_is_replaced_and_later_jobs_work() {
    let sim = Sim::streaming(&["work"]);
    let out = sim.client("work", &["echo", "before"]);
    assert_eq!(stdout(&out), "before\n", "{}", stderr(&out));
    let agents = sim.vm_processes("work", "qvm-remote agent");
    assert_eq!(agents.len(), 1, "{agents:?}");
    signal(agents[0], "KILL");
    // A client started at once may find the dead agent's socket: it polls instead.
    let out = sim.client("work", &["echo", "during"]);
    assert_eq!(stdout(&out), "during\n", "{}", stderr(&out));
    assert!(
        wait_for(Duration::from_secs(10), || {
            let now = sim.vm_processes("work", "qvm-remote agent");
            now.len() == 1 && now[0] != agents[0]
        }),
        "dom0 did not start a new agent"
    );
    for i in 0..3 {
        let out = sim.client("work", &["echo", &format!("after-{i}")]);
        assert_eq!(stdout(&out), format!("after-{i}\n"), "{}", stderr(&out));
    }
    let log = fs::read_to_string(sim.vm_data("work").join("audit.log")).unwrap();
    assert!(log.contains("socket: replaced a stale agent.sock"), "{log}");
}

#[test]
fn a_halted_vm_is_logged_once_and_noticed_when_it_starts() {
    let mut sim = Sim::new(&["work"]);
    sim.set("QVM_REMOTE_MODE", "stream");
    sim.simctl(&["set-state", "work", "Halted"]);
    sim.start_daemon();
    assert!(wait_for(Duration::from_secs(10), || sim
        .log_text()
        .contains(" DOWN ")));
    std::thread::sleep(Duration::from_secs(3));
    let lines = sim.log_text().lines().count();
    std::thread::sleep(Duration::from_secs(3));
    let log = sim.log_text();
    assert_eq!(log.matches(" DOWN ").count(), 1, "{log}");
    assert_eq!(
        log.lines().count(),
        lines,
        "the log grows while the VM is down:\n{log}"
    );
    sim.simctl(&["set-state", "work", "Running"]);
    let sock = sim.vm_data("work").join("agent.sock");
    assert!(
        wait_for(Duration::from_secs(15), || sock.exists()),
        "the daemon did not notice the VM start: {}",
        sim.log_text()
    );
    assert!(
        wait_for(Duration::from_secs(10), || sim.log_text().contains(" UP ")),
        "{}",
        sim.log_text()
    );
    let out = sim.client("work", &["echo", "up"]);
    assert_eq!(stdout(&out), "up\n", "{}", stderr(&out));
}

#[test]
fn a_client_that_never_reads_keeps_dom0_memory_bounded() {
    let sim = Sim::streaming(&["work"]);
    let pid = sim.daemon_pid().unwrap();
    let mut child = sim
        .vm_command("work", &["qvm-remote", "head -c 50000000 /dev/zero"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The pipe is held open and never read.
    let _unread = child.stdout.take().unwrap();
    assert!(
        wait_for(Duration::from_secs(60), || sim
            .log_text()
            .contains(" TRUNC ")),
        "the job did not finish: {}",
        sim.log_text()
    );
    // The result reaches the VM although its client is stuck.
    let results = sim.vm_data("work").join("queue/results");
    assert!(wait_for(Duration::from_secs(20), || fs::read_dir(&results)
        .map(|d| d.count() > 0)
        .unwrap_or(false)));
    let peak_kib = proc_status_kib(pid, "VmHWM:");
    eprintln!("dom0 VmHWM with a client that never reads: {peak_kib} KiB");
    signal(child.id(), "KILL");
    let _ = child.wait();
    assert!(
        peak_kib < 32 * 1024,
        "dom0 peak RSS {} KiB with a client that never reads",
        peak_kib
    );
    // Other clients of the VM were never held up by it.
    let out = sim.client("work", &["echo", "free"]);
    assert_eq!(stdout(&out), "free\n", "{}", stderr(&out));
}

#[test]
fn eight_clients_on_each_of_four_vms_get_their_own_results() {
    let vms = ["work", "dev", "vm3", "vm4"];
    let sim = Sim::streaming(&vms);
    std::thread::scope(|s| {
        for vm in vms {
            for i in 0..8u32 {
                let sim = &sim;
                s.spawn(move || {
                    let body = format!("echo out-{vm}-{i}; echo err-{vm}-{i} >&2; exit {}", i % 4);
                    let out = sim.client(vm, &[&body]);
                    assert_eq!(stdout(&out), format!("out-{vm}-{i}\n"), "{}", stderr(&out));
                    assert_eq!(stderr(&out), format!("err-{vm}-{i}\n"));
                    assert_eq!(code(&out), (i % 4) as i32);
                });
            }
        }
    });
}

#[test]
fn streamed_output_equals_the_signed_result() {
    let sim = Sim::streaming(&["work"]);
    let body = "for i in $(seq 1 3000); do echo \"out-$i\"; echo \"err-$i\" >&2; done";
    let out = sim.client("work", &["-v", body]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err_text = stderr(&out);
    let id = queued_id(&err_text).unwrap();
    assert!(err_text.contains("live through agent.sock"), "{err_text}");
    let expected_out: String = (1..=3000).map(|i| format!("out-{i}\n")).collect();
    let expected_err: String = (1..=3000).map(|i| format!("err-{i}\n")).collect();
    assert!(stdout(&out) == expected_out, "stdout differs");
    let plain_err: String = err_text
        .lines()
        .filter(|l| !l.starts_with("qvm-remote: "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(plain_err == expected_err, "stderr differs");
    // The archive holds dom0's signed bytes: the same.
    let archived = sim.client("work", &["result", &id]);
    assert!(archived.stdout == out.stdout);
    assert!(stderr(&archived) == expected_err);
    // --json does not stream: one object, nothing else on stdout.
    let json = sim.client("work", &["--json", body]);
    assert_eq!(code(&json), 0);
    let text = stdout(&json);
    assert_eq!(text.lines().count(), 1, "{}", &text[..200.min(text.len())]);
    assert!(text.starts_with("{\"id\": ") && text.contains("out-3000\\n"));
}
