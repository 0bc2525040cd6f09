//! The policy (shared/DESIGN.md §7) end to end: levels, first match, `@tag:` rules
//! through the simulator's `qvm-tags`, a broken policy, shell tricks against argv
//! rules, human approval, dev mode, the hash-chained audit log and its verifier —
//! through the real binaries over the Qubes simulator wherever a user would see it.
//!
//! Jobs run with the fixed PATH of DESIGN §5, where the simulator's `qvm-*` tools are
//! not; execution tests use programs every Linux has (`id`, `ls`, `touch`, `env`), and
//! the `qvm-*` patterns of the levels are checked through the library with a fake PATH.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qvm_remote::policy::{self, Action, Classified, Level, Policy};

/// The answer of `qvm-remote` for one command: (exit code, stdout, stderr).
fn run(sim: &Sim, vm: &str, args: &[&str]) -> (i32, String, String) {
    let out = sim.client(vm, args);
    (code(&out), stdout(&out), stderr(&out))
}

fn running_with_policy(vms: &[&str], policy: &str) -> Sim {
    let mut sim = Sim::new(vms);
    sim.write_policy(policy);
    sim.start_daemon_sim_path();
    sim
}

/// A PATH lookup where the Qubes tools exist, for the pure checks.
fn qubes_path(word: &str) -> Option<PathBuf> {
    let tools = [
        "qvm-ls",
        "qvm-prefs",
        "qvm-start",
        "qvm-shutdown",
        "qvm-tags",
        "qvm-remove",
        "qubes-prefs",
        "xl",
        "rm",
        "id",
    ];
    if word.starts_with('/') {
        return (word == "/usr/bin/qvm-ls").then(|| PathBuf::from(word));
    }
    tools
        .contains(&word)
        .then(|| PathBuf::from(format!("/usr/bin/{word}")))
}

fn decide(p: &Policy, vm: &str, body: &str) -> Action {
    let c = policy::classify(body.as_bytes(), &qubes_path);
    p.decide(vm, &c.command(), &mut || Ok(Vec::new())).action
}

#[test]
fn every_level_against_a_table_of_commands_with_ask() {
    use Action::{Allow as A, Ask as Q, Deny as D};
    // Each level, followed by the same two lines, so `ask` shows up wherever the level
    // leaves a command to the lines below it.
    let tail = "work ask qvm-start *\nwork ask @script\n";
    // (body, deny, monitor, manage, full)
    let table: &[(&str, Action, Action, Action, Action)] = &[
        ("qvm-ls", D, A, A, A),
        ("qvm-ls --running", D, A, A, A),
        ("qvm-prefs work memory", D, A, A, A),
        ("qvm-prefs work memory 800", D, D, A, A),
        ("qvm-tags work list", D, A, A, A),
        ("qvm-tags work add ops", D, D, A, A),
        ("qubes-prefs default_netvm", D, A, A, A),
        ("xl info", D, A, A, A),
        ("qvm-start work", D, Q, A, A),
        ("qvm-shutdown --wait work", D, D, A, A),
        ("qvm-remove -f work", D, D, D, A),
        ("rm -rf /", D, D, D, A),
        ("qvm-ls; rm -rf /", D, Q, Q, A),
        ("echo hi", D, Q, Q, A),
    ];
    for level in Level::ALL {
        let text = format!("work level {}\n{tail}", level.name());
        let p = Policy::parse(Path::new("/etc/qubes/remote-policy"), &text).unwrap();
        for (body, d, mo, ma, f) in table {
            let want = match level {
                Level::Deny => *d,
                Level::Monitor => *mo,
                Level::Manage => *ma,
                Level::Full => *f,
            };
            assert_eq!(decide(&p, "work", body), want, "{}: {body}", level.name());
            assert_eq!(decide(&p, "other", body), D, "other VM: {body}");
        }
    }
}

#[test]
fn shell_tricks_never_pass_an_argv_rule() {
    let p = Policy::parse(Path::new("/p"), "work allow qvm-ls *\n").unwrap();
    assert_eq!(decide(&p, "work", "qvm-ls --raw-list"), Action::Allow);
    let tricks = [
        "qvm-ls; rm -rf /",
        "qvm-ls && rm -rf /",
        "qvm-ls || rm -rf /",
        "qvm-ls | sh",
        "qvm-ls & rm -rf /",
        "qvm-ls $(id)",
        "qvm-ls `id`",
        "qvm-ls ${IFS}x",
        "qvm-ls $HOME",
        "qvm-ls 'work'",
        "qvm-ls \"work\"",
        "qvm-ls \\; rm",
        "qvm-ls\nrm -rf /",
        "qvm-ls\rrm",
        "qvm-ls > /etc/passwd",
        "qvm-ls < /etc/shadow",
        "qvm-ls *",
        "qvm-ls {a,b}",
        "qvm-ls ~root",
        "(qvm-ls)",
        "{ qvm-ls; }",
        "qvm-ls # comment",
        "./qvm-ls",
        "/usr/bin/qvm-ls",
        "bin/qvm-ls",
        "qvm-lsx",
        "FOO=1 qvm-ls",
        "exec qvm-ls",
        "command qvm-ls",
        "time qvm-ls",
        "qvm-ls\u{a0}x",
    ];
    for t in tricks {
        assert_eq!(decide(&p, "work", t), Action::Deny, "{t:?}");
    }
    // A program not on the fixed PATH is still a simple command: the rules that name
    // it decide (DESIGN §7 defines a simple command by its form).
    let p = Policy::parse(
        Path::new("/p"),
        "work deny qvm-nothing *\nwork allow @script\nwork allow qvm-other *\n",
    )
    .unwrap();
    assert_eq!(decide(&p, "work", "qvm-nothing"), Action::Deny);
    assert_eq!(decide(&p, "work", "qvm-other x"), Action::Allow);
    assert!(matches!(
        policy::classify(b"qvm-nothing", &qubes_path),
        Classified::Simple { .. }
    ));
}

#[test]
fn shell_tricks_fail_through_the_daemon_and_nothing_runs() {
    let sim = running_with_policy(&["work"], "work allow ls *\nwork allow id *\n");
    let marker = sim.marker("pwned");
    let m = marker.display().to_string();
    let (c, out, err) = run(&sim, "work", &["ls", "/"]);
    assert_eq!(c, 0, "{err}");
    assert!(out.lines().any(|l| l == "usr"), "{out}");
    let tricks: Vec<Vec<String>> = vec![
        vec![format!("ls; touch {m}")],
        vec![format!("ls $(touch {m})")],
        vec![format!("ls `touch {m}`")],
        vec![format!("ls && touch {m}")],
        vec![format!("ls > {m}")],
        vec!["ls".into(), "'/'".into()],
        vec!["./ls".into()],
        vec!["/bin/ls".into()],
        vec![format!("FOO=1 ls {m}")],
    ];
    for t in &tricks {
        let args: Vec<&str> = t.iter().map(String::as_str).collect();
        let (c, _, err) = run(&sim, "work", &args);
        assert_eq!(c, 126, "{t:?}: {err}");
        assert!(err.contains("denied by policy"), "{t:?}: {err}");
        assert!(!marker.exists(), "{t:?} ran");
    }
    // A newline in a script from stdin.
    let out = sim.client_stdin("work", &[], format!("ls\ntouch {m}\n").as_bytes());
    assert_eq!(code(&out), 126);
    assert!(!marker.exists());
    let log = sim.log_text();
    assert!(log.contains(" ALLOW vm=work "), "{log}");
    assert!(log.contains("run=\"argv /"), "{log}");
    assert!(
        log.contains("rule=\"") && log.contains(":1: work allow ls *"),
        "{log}"
    );
}

#[test]
fn simple_commands_run_as_exactly_their_argv() {
    // Even at `full`, a simple command runs as the argv that was decided: its first word
    // is the executable it resolved to, the rest as written. A script runs as written,
    // so bash passes the program name as typed.
    let sim = running_with_policy(&["work"], "work level full\n");
    let cat = ["/usr/bin/cat", "/bin/cat"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap();
    let (c, out, err) = run(&sim, "work", &["cat", "/proc/self/cmdline"]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(out, format!("{cat}\0/proc/self/cmdline\0"));
    let (c, out, err) = run(&sim, "work", &["cat /proc/self/cmdline; true"]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(out, "cat\0/proc/self/cmdline\0");
    let (c, out, _) = run(&sim, "work", &["env | grep -c SHLVL"]);
    assert_eq!((c, out.as_str()), (0, "1\n"), "a script runs in bash");
}

#[test]
fn first_match_wins_through_the_daemon_and_policy_check() {
    let sim = running_with_policy(
        &["work", "dev"],
        "# first match wins\nwork deny id -u\nwork allow id *\n@anyvm ask id *\n",
    );
    let (c, _, err) = run(&sim, "work", &["id", "-u"]);
    assert_eq!(c, 126);
    assert!(err.contains(":2: work deny id -u"), "{err}");
    let (c, out, err) = run(&sim, "work", &["id", "-g"]);
    assert_eq!(c, 0, "{err}");
    assert!(out.trim().parse::<u32>().is_ok(), "{out}");
    // The dry evaluation names the rule and exits 0 allow, 1 deny, 2 ask.
    let table: &[(&str, &[&str], i32, &str)] = &[
        ("work", &["--", "id", "-g"], 0, ":3: work allow id *"),
        ("work", &["id", "-u"], 1, ":2: work deny id -u"),
        ("dev", &["--", "id", "-u"], 2, ":4: @anyvm ask id *"),
        ("dev", &["--", "ls"], 1, "no rule matches"),
        ("dev", &["--", "echo hi"], 1, "no rule matches"),
    ];
    for (vm, cmd, want, rule) in table {
        let mut args = vec!["policy", "check", vm];
        args.extend_from_slice(cmd);
        let out = sim.dom0_cmd(&args, b"");
        assert_eq!(code(&out), *want, "{args:?}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains(rule), "{args:?}: {text}");
        let word = ["allow", "deny", "ask"][*want as usize];
        assert!(text.contains(&format!("decision: {word}\n")), "{text}");
    }
    let out = sim.dom0_cmd(&["policy", "check", "work", "--", "id", "-g"], b"");
    assert!(
        stdout(&out).starts_with("command: argv /"),
        "{}",
        stdout(&out)
    );
    let out = sim.dom0_cmd(&["policy", "check", "work", "--", "echo", "hi"], b"");
    assert!(
        stdout(&out).contains("command: script (starts with a bash builtin or keyword)"),
        "{}",
        stdout(&out)
    );
    // With no words, the body comes from stdin, like the client's scripts.
    let out = sim.dom0_cmd(&["policy", "check", "work"], b"id -g\n");
    assert_eq!(code(&out), 0, "{}", stdout(&out));
}

#[test]
fn tag_rules_follow_the_simulators_qvm_tags() {
    let sim = running_with_policy(&["work", "dev"], "@tag:ops allow id *\n");
    let tags = |args: &[&str]| {
        let out = std::process::Command::new(sim_tools().join("qvm-tags"))
            .args(args)
            .env("QVM_SIM_DIR", &sim.sim_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "qvm-tags {args:?}: {out:?}");
    };
    tags(&["work", "add", "ops"]);
    let (c, _, err) = run(&sim, "work", &["id", "-u"]);
    assert_eq!(c, 0, "{err}");
    let (c, _, err) = run(&sim, "dev", &["id", "-u"]);
    assert_eq!(c, 126, "{err}");
    assert!(err.contains("no rule matches"), "{err}");
    // policy check asks qvm-tags afresh.
    let check = |vm: &str| code(&sim.dom0_cmd_sim_path(&["policy", "check", vm, "--", "id"], b""));
    assert_eq!(check("dev"), 1);
    tags(&["dev", "add", "ops"]);
    assert_eq!(check("dev"), 0);
    tags(&["work", "del", "ops"]);
    assert_eq!(check("work"), 1);
    // Without qvm-tags the tag rule cannot be evaluated, and that denies.
    // Without the simulator's qvm-tags the tag rule cannot be evaluated, which denies.
    let out = sim.dom0_cmd(&["policy", "check", "dev", "--", "id"], b"");
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("tags of dev unavailable"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn an_unparseable_policy_denies_everything_until_it_is_fixed() {
    let sim = running_with_policy(&["work"], "work allow id *\nwork permit ls *\n");
    for args in [&["id", "-u"][..], &["echo hi"][..]] {
        let (c, _, err) = run(&sim, "work", args);
        assert_eq!(c, 126, "{args:?}");
        assert!(err.contains("policy unusable"), "{err}");
        assert!(err.contains("policy:2: unknown action"), "{err}");
    }
    let log = sim.log_text();
    assert_eq!(
        log.matches(" POLICY state=broken ").count(),
        1,
        "the daemon logs why once: {log}"
    );
    let out = sim.dom0_cmd(&["check-config"], b"");
    assert_eq!(code(&out), 1);
    assert!(
        stdout(&out).contains("denies every job"),
        "{}",
        stdout(&out)
    );
    // An edit takes effect for the next job, without a restart.
    sim.write_policy("work allow id *\n");
    let (c, _, err) = run(&sim, "work", &["id", "-u"]);
    assert_eq!(c, 0, "{err}");
    assert!(sim.log_text().contains(" POLICY state=loaded "));
    // A policy others can write is refused like a broken one.
    fs::set_permissions(sim.policy_path(), fs::Permissions::from_mode(0o666)).unwrap();
    let (c, _, err) = run(&sim, "work", &["id", "-u"]);
    assert_eq!(c, 126);
    assert!(err.contains("writable by group or others"), "{err}");
}

#[test]
fn no_policy_file_means_full_and_check_config_warns() {
    let mut sim = Sim::new(&["work"]);
    sim.start_daemon();
    let (c, out, _) = run(&sim, "work", &["id -u && echo script"]);
    assert_eq!(c, 0);
    assert!(out.ends_with("script\n"));
    let out = sim.dom0_cmd(&["check-config"], b"");
    assert!(
        stdout(&out).contains("no policy file: every authorised VM may run anything (full)"),
        "{}",
        stdout(&out)
    );
    let out = sim.dom0_cmd(&["policy", "lint"], b"");
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("no policy file"));
    assert!(sim.log_text().contains(" POLICY state=missing "));
}

/// Starts `qvm-remote ARGS` in `vm` on another thread and waits for its job to be
/// pending; returns the id and the client's handle.
fn start_parked<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    sim: &'s Sim,
    args: &'s [&'s str],
    stdin: &'s [u8],
) -> (
    String,
    std::thread::ScopedJoinHandle<'s, std::process::Output>,
) {
    let before = sim.pending_ids();
    let h = scope.spawn(move || sim.client_stdin("work", args, stdin));
    let mut id = None;
    assert!(
        wait_for(Duration::from_secs(20), || {
            id = sim.pending_ids().into_iter().find(|i| !before.contains(i));
            id.is_some()
        }),
        "the job never showed in pending: {}",
        sim.log_text()
    );
    (id.unwrap_or_default(), h)
}

#[test]
fn ask_then_approve_runs_it_without_holding_a_worker() {
    let mut sim = Sim::new(&["work"]);
    sim.set("QVM_REMOTE_MAX_CONCURRENT", "1");
    sim.write_policy("work ask touch *\nwork allow id *\n");
    sim.start_daemon();
    let marker = sim.marker("approved");
    let m = marker.display().to_string();
    let args = ["touch", m.as_str()];
    std::thread::scope(|s| {
        let (id, h) = start_parked(s, &sim, &args, b"");
        let out = sim.dom0_cmd(&["pending"], b"");
        let text = stdout(&out);
        assert!(text.contains(&format!("{id} vm=work ")), "{text}");
        assert!(
            text.contains(&format!("    command: touch {m}\n")),
            "{text}"
        );
        assert!(text.contains(":1: work ask touch *"), "{text}");
        assert!(!marker.exists(), "ran before approval");
        // The parked job holds no worker: with one worker, another job still runs.
        let (c, _, err) = run(&sim, "work", &["id", "-u"]);
        assert_eq!(c, 0, "{err}");
        let out = sim.dom0_cmd(&["approve", &id], b"");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let out = h.join().unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(marker.exists());
        // Decided once: a second decision is refused.
        let out = sim.dom0_cmd(&["deny", &id], b"");
        assert_eq!(code(&out), 1);
    });
    assert!(sim.pending_ids().is_empty());
    let log = sim.log_text();
    assert!(log.contains(" ASK vm=work "), "{log}");
    assert!(
        log.contains(" APPROVAL vm=work ") && log.contains("decision=approve"),
        "{log}"
    );
    let out = sim.dom0_cmd(&["approve", "not-an-id"], b"");
    assert_eq!(code(&out), 2);
}

#[test]
fn ask_then_deny_refuses_it_and_pending_escapes_control_characters() {
    let sim = running_with_policy(&["work"], "work ask @script\n");
    let marker = sim.marker("denied");
    // The protocol refuses most control bytes in a body; these are the ones it lets
    // through (CR, DEL, and a C1 CSI in UTF-8), and none may reach the terminal raw.
    let mut script = format!("touch {}\necho red\r", marker.display()).into_bytes();
    script.extend_from_slice(b"\x7f\xc2\x9b31m\tx\n");
    std::thread::scope(|s| {
        let (id, h) = start_parked(s, &sim, &[], &script);
        let out = sim.dom0_cmd(&["pending"], b"");
        let text = stdout(&out);
        assert!(
            text.contains("\\x0aecho red\\x0d\\x7f\\xc2\\x9b31m\\x09x\\x0a\n"),
            "escaped: {text}"
        );
        for raw in [b'\r', 0x7f, 0x9b, b'\t'] {
            assert!(!out.stdout.contains(&raw), "raw byte {raw:#x} in pending");
        }
        let out = sim.dom0_cmd(&["deny", &id], b"");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let out = h.join().unwrap();
        assert_eq!(code(&out), 126, "{}", stderr(&out));
        assert!(stderr(&out).contains("denied by the dom0 administrator"));
    });
    assert!(!marker.exists());
    assert!(sim.log_text().contains("decision=deny"));
    // The VM's own log shows the refusal too.
    let (c, out, _) = run(&sim, "work", &["log"]);
    assert_eq!(c, 0);
    assert!(out.contains("status=denied exit=126"), "{out}");
}

#[test]
fn ask_times_out_as_denied() {
    let sim = running_with_policy(&["work"], "work ask touch *\n");
    let marker = sim.marker("late");
    let m = marker.display().to_string();
    let start = Instant::now();
    let (c, _, err) = run(&sim, "work", &["-t", "2", "touch", &m]);
    assert_eq!(c, 126, "{err}");
    assert!(err.contains("approval timed out after 2 s"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(15));
    assert!(!marker.exists());
    assert!(sim.pending_ids().is_empty());
    assert!(sim.log_text().contains("decision=timeout"));
}

#[test]
fn refused_jobs_appear_in_the_vms_own_log() {
    let sim = running_with_policy(&["work"], "work level monitor\n");
    let (c, _, _) = run(&sim, "work", &["id", "-u"]);
    assert_eq!(c, 126);
    let (c, out, _) = run(&sim, "work", &["log"]);
    assert_eq!(c, 0);
    // The agent logs to the same file, so the client's line need not be the last.
    assert!(
        out.lines()
            .any(|l| l.contains("status=denied exit=126") && l.ends_with("cmd=id -u")),
        "{out}"
    );
}

fn overlay(sim: &Sim) -> PathBuf {
    sim.dom0.join("run/devmode/work")
}

#[test]
fn dev_mode_elevates_until_off_and_survives_a_daemon_restart() {
    let mut sim = running_with_policy(&["work"], "work level monitor\n");
    let policy_before = fs::read(sim.policy_path()).unwrap();
    assert_eq!(run(&sim, "work", &["id", "-u"]).0, 126);
    let out = sim.dom0_cmd(&["dev-mode", "on", "work", "--minutes", "5"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("dev mode on for work: full until"));
    let (c, _, err) = run(&sim, "work", &["id -u; echo script"]);
    assert_eq!(c, 0, "{err}");
    // Turning it on again extends, never stacks: a shorter second `on` changes nothing.
    let first = fs::read_to_string(overlay(&sim)).unwrap();
    let out = sim.dom0_cmd(&["dev-mode", "on", "work", "--minutes", "1"], b"");
    assert_eq!(code(&out), 0);
    assert_eq!(fs::read_to_string(overlay(&sim)).unwrap(), first);
    let out = sim.dom0_cmd(&["dev-mode", "on", "work", "--minutes", "6"], b"");
    assert_eq!(code(&out), 0);
    let expiry = |t: &str| -> u64 { t.trim().trim_start_matches("expires=").parse().unwrap() };
    let second = fs::read_to_string(overlay(&sim)).unwrap();
    let now = qvm_remote::time::unix_now();
    assert!(expiry(&second) > expiry(&first) && expiry(&second) <= now + 360);
    // A restart of the daemon keeps it (the run dir is only emptied by a reboot).
    sim.stop_daemon();
    sim.start_daemon_sim_path();
    assert_eq!(run(&sim, "work", &["id", "-u"]).0, 0);
    let out = sim.dom0_cmd(&["dev-mode", "status"], b"");
    assert!(
        stdout(&out).contains("work: on, full until"),
        "{}",
        stdout(&out)
    );
    let out = sim.dom0_cmd(&["dev-mode", "off", "work"], b"");
    assert_eq!(code(&out), 0);
    assert_eq!(run(&sim, "work", &["id", "-u"]).0, 126);
    // `dev-mode off` with no VM ends every overlay; the options may come first.
    let out = sim.dom0_cmd(&["dev-mode", "on", "--minutes", "5", "work"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(run(&sim, "work", &["id", "-u"]).0, 0);
    let out = sim.dom0_cmd(&["dev-mode", "off"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "dev mode off for work\n");
    assert_eq!(run(&sim, "work", &["id", "-u"]).0, 126);
    let out = sim.dom0_cmd(&["dev-mode", "off"], b"");
    assert_eq!(stdout(&out), "dev mode was not on for any VM\n");
    assert!(wait_for(Duration::from_secs(5), || sim
        .log_text()
        .contains(" DEVMODE vm=work state=off")));
    assert_eq!(fs::read(sim.policy_path()).unwrap(), policy_before);
    // Limits.
    for bad in ["0", "121", "x"] {
        let out = sim.dom0_cmd(&["dev-mode", "on", "work", "--minutes", bad], b"");
        assert_eq!(code(&out), 2, "--minutes {bad}");
    }
    let out = sim.dom0_cmd(&["dev-mode", "on", "nosuchvm", "--minutes", "5"], b"");
    assert_eq!(code(&out), 1);
    let log = sim.log_text();
    assert!(log.contains(" DEVMODE vm=work state=on "), "{log}");
    assert!(log.contains(" DEVMODE vm=work state=off"), "{log}");
    assert!(log.contains("rule=\"dev mode (full) until "), "{log}");
}

#[test]
fn dev_mode_ends_at_its_absolute_expiry_with_nobody_watching() {
    let sim = running_with_policy(&["work"], "work level deny\n");
    // The overlay format is the interface: an expiry 5 s ahead, written by hand.
    let dir = sim.dom0.join("run/devmode");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let until = qvm_remote::time::unix_now() + 5;
    fs::write(overlay(&sim), format!("expires={until}\n")).unwrap();
    fs::set_permissions(overlay(&sim), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(run(&sim, "work", &["id", "-u"]).0, 0);
    while qvm_remote::time::unix_now() <= until {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (c, _, err) = run(&sim, "work", &["id", "-u"]);
    assert_eq!(c, 126, "{err}");
    assert!(wait_for(Duration::from_secs(5), || sim
        .log_text()
        .contains(" DEVMODE vm=work state=expired ")));
    // An overlay claiming more than the longest elevation grants nothing.
    let far = qvm_remote::time::unix_now() + 121 * 60;
    fs::write(overlay(&sim), format!("expires={far}\n")).unwrap();
    assert_eq!(run(&sim, "work", &["id", "-u"]).0, 126);
}

/// Lines of `text` as a file in the sim's dom0 dir, for tampering.
fn tampered(sim: &Sim, name: &str, bytes: &[u8]) -> String {
    let p = sim.dom0.join(name);
    fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

#[test]
fn audit_verify_passes_on_a_real_log_and_names_each_tampering() {
    let mut sim = running_with_policy(&["work"], "work allow id *\n");
    assert_eq!(run(&sim, "work", &["id", "-u"]).0, 0);
    assert_eq!(run(&sim, "work", &["ls", "/"]).0, 126);
    sim.stop_daemon();
    let out = sim.dom0_cmd(&["audit", "verify"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("ok: "), "{}", stdout(&out));
    let log_path = sim.dom0.join("log/qvm-remote.log");
    let good = fs::read(&log_path).unwrap();
    let text = String::from_utf8(good.clone()).unwrap();
    assert!(text.lines().count() >= 6, "{text}");
    for cat in [
        " START ",
        " AUTH-OK ",
        " ALLOW ",
        " EXEC ",
        " DONE ",
        " DENY ",
    ] {
        assert!(text.contains(cat), "{cat}: {text}");
    }
    let out = sim.dom0_cmd(&["audit", "verify", &log_path.display().to_string()], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let lines: Vec<&str> = text.lines().collect();
    let join = |l: &[&str]| l.join("\n") + "\n";
    // One edited byte, in the middle of line 3.
    let mut edited = good.clone();
    let at = lines[..2].iter().map(|l| l.len() + 1).sum::<usize>() + 30;
    edited[at] ^= 0x01;
    let mut deleted = lines.clone();
    deleted.remove(1);
    let mut reordered = lines.clone();
    reordered.swap(2, 3);
    let cut = &good[..good.len() - 5];
    let truncated = format!("line {}: truncated", lines.len());
    let table: Vec<(&str, Vec<u8>, &str)> = vec![
        ("edited", edited, "line 3: chain broken"),
        (
            "deleted",
            join(&deleted).into_bytes(),
            "line 2: chain broken",
        ),
        (
            "reordered",
            join(&reordered).into_bytes(),
            "line 3: chain broken",
        ),
        ("truncated", cut.to_vec(), &truncated),
    ];
    for (name, bytes, want) in &table {
        let p = tampered(&sim, name, bytes);
        let out = sim.dom0_cmd(&["audit", "verify", &p], b"");
        assert_eq!(code(&out), 1, "{name}: {}", stdout(&out));
        assert!(stderr(&out).contains(want), "{name}: {}", stderr(&out));
    }
    // Whole lines cut from the end verify as a file, but not against the anchor.
    fs::write(&log_path, join(&lines[..lines.len() - 2])).unwrap();
    let out = sim.dom0_cmd(&["audit", "verify"], b"");
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("not in the log"), "{}", stderr(&out));
    fs::write(&log_path, &good).unwrap();

    // Rotation: the next daemon starts the new file from the old file's last value.
    let old = sim.dom0.join("log/qvm-remote.log.1");
    fs::rename(&log_path, &old).unwrap();
    sim.start_daemon_sim_path();
    assert_eq!(run(&sim, "work", &["id", "-u"]).0, 0);
    sim.stop_daemon();
    let new_text = fs::read_to_string(&log_path).unwrap();
    let last_old = lines.last().unwrap().rsplit("chain=").next().unwrap();
    assert!(
        new_text
            .lines()
            .next()
            .unwrap()
            .contains(&format!(" ROTATE prev={last_old} ")),
        "{new_text}"
    );
    let out = sim.dom0_cmd(&["audit", "verify"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let (o, n) = (old.display().to_string(), log_path.display().to_string());
    let out = sim.dom0_cmd(&["audit", "verify", &o, &n], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("form one chain"));
    let out = sim.dom0_cmd(&["audit", "verify", &n, &o], b"");
    assert_eq!(code(&out), 1);
}

#[test]
fn lint_names_syntax_errors_unknown_vms_and_unreachable_rules() {
    let sim = Sim::new(&["work", "dev"]);
    sim.write_policy(
        "work allow qvm-ls *\n\
         work deny qvm-ls --raw-list\n\
         wrok allow id *\n\
         dev level manage\n\
         @anyvm allow id;\n\
         dev ask qvm-start *\n",
    );
    let out = sim.dom0_cmd_sim_path(&["policy", "lint"], b"");
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let text = stdout(&out);
    let p = sim.policy_path().display().to_string();
    for want in [
        format!("error: {p}:2: unreachable: `work deny qvm-ls --raw-list` is shadowed by line 1"),
        format!("error: {p}:3: unknown VM wrok"),
        format!("error: {p}:5: \"id;\" can never match"),
        format!("error: {p}:6: unreachable: `dev ask qvm-start *` is shadowed by line 4"),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    // A VM that exists in Qubes but is not served is a warning, not an error.
    sim.simctl(&["add-vm", "vault"]);
    sim.write_policy("work level monitor\nvault allow id *\n");
    let out = sim.dom0_cmd_sim_path(&["policy", "lint"], b"");
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(stdout(&out).contains(":2: VM vault is not in QVM_REMOTE_VMS"));
    let out = sim.dom0_cmd(&["policy", "levels"], b"");
    assert_eq!(stdout(&out), policy::describe_levels());
}

#[test]
fn the_readme_lists_every_level_exactly() {
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(
        readme.contains(&policy::describe_levels()),
        "README.md must hold `qvm-remote-dom0 policy levels` verbatim"
    );
}

#[test]
fn a_program_that_is_not_installed_is_decided_by_its_rule_and_the_shell_says_127() {
    let sim = running_with_policy(
        &["work"],
        "work deny qvm-gone-xyz *\nwork allow qvm-missing-xyz *\nwork allow @script\n",
    );
    // Allowed by its argv rule, then not found by the shell: DESIGN §5's 127.
    let (c, _, err) = run(&sim, "work", &["qvm-missing-xyz", "--help"]);
    assert_eq!(c, 127, "{err}");
    assert!(err.contains("not found"), "{err}");
    // Denied by its argv rule, although @script would allow a script.
    let (c, _, err) = run(&sim, "work", &["qvm-gone-xyz"]);
    assert_eq!(c, 126, "{err}");
    assert!(err.contains(":1: work deny qvm-gone-xyz *"), "{err}");
}
