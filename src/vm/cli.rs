//! The `qvm-remote` command line (DESIGN §5 for the exit codes it documents).
//!
//! Options come only before the command, and `--` ends them; every word after the
//! command is data, joined with single spaces into the job body as ssh does. A first
//! word that is a subcommand name is the subcommand, so a dom0 program with such a name
//! is run as `qvm-remote -- key …`.

use std::ffi::OsString;
use std::fmt;

use crate::args::{self, ArgError, Args};
use crate::id::CommandId;

/// Default `-t`: seconds dom0 lets the command run.
pub const DEFAULT_TIMEOUT: u64 = 300;
/// Smallest `-t`.
pub const MIN_TIMEOUT: u64 = 1;
/// Largest `-t`: one day, dom0's own cap on any job.
pub const MAX_TIMEOUT: u64 = 86_400;
/// Default N of `log` and `history`.
pub const DEFAULT_LINES: usize = 20;
/// Largest N of `log` and `history`.
pub const MAX_LINES: usize = 100_000;

/// The usage text (`-h`). It documents the exit codes, which are part of the contract.
pub const USAGE: &str = "\
usage: qvm-remote [-t SEC] [-v] [-q] [--json] [-i] [--] COMMAND [ARGS...]
       COMMAND | qvm-remote [-t SEC] [-v] [-q] [--json]
       qvm-remote [options] < script.sh
       qvm-remote key gen | key show [--full] | key import [KEY]
       qvm-remote ping | status | queue [status|clean|debug]
       qvm-remote log [N] | history [N] | result ID
       qvm-remote agent [--once]
       qvm-remote mcp [--read-only]
       qvm-remote -h | --help | --version

Runs COMMAND in dom0 through the qvm-remote daemon and prints its stdout and
stderr separately. ARGS are joined to COMMAND with single spaces, as ssh does,
and the text runs in dom0 under bash. With no COMMAND the command text is read
from stdin (at most 1 MiB).

options (only before COMMAND; `--` ends them):
  -t SEC    let the command run at most SEC seconds (1..86400, default 300)
  -v        print the job id and timings on stderr
  -q        no progress messages on stderr
  --json    print one JSON object: id, status, exit, signal, duration_ms,
            stdout, stderr, truncated (and reason when there is one)
  -i        send stdin (at most 1 MiB) to the command's stdin; COMMAND required

A first word that names a subcommand below is that subcommand; to run a dom0
program with such a name, put `--` first: `qvm-remote -- key ...`.

subcommands:
  key gen           create auth.key (refused if one exists) and print its
                    fingerprint; dom0 then authorises it:
                    qvm-remote-dom0 authorize VM, reading the key on stdin
  key show [--full] print the key's fingerprint (--full: the key itself)
  key import [KEY]  replace the key with KEY (from stdin if absent)
  ping              check that dom0 answers (exit 0) or not (exit 125)
  status            data dir, key fingerprint, queue counts, last command
  queue [status]    count the entries in each queue directory
  queue debug       list every queue entry, with ids read from job headers
  queue clean       remove temporary files older than 1 h, everything in
                    queue/rejected/, and results older than 24 h whose job
                    is no longer in queue/running/; prints what it removed
  log [N]           the last N lines of audit.log (default 20)
  history [N]       the last N commands, newest last (default 20)
  result ID         print (and archive) a result that arrived after its
                    client gave up waiting
  agent [--once]    the VM end of dom0's channel; dom0 starts it, not you
  mcp [--read-only] a Model Context Protocol server on stdin/stdout for AI
                    agents: tools dom0_run, dom0_ping, dom0_history and
                    dom0_result (--read-only: all but dom0_run); dom0's
                    policy and approval apply to every job as to any other

exit status of a command run (and of `result`):
  0-123  the command's own exit status
  124    timed out (-t or dom0's cap)
  125    qvm-remote itself failed: no answer, bad result, no key, bad usage
  126    refused by dom0: authentication, validation, policy or approval
  127    command not found
  128+N  the command was killed by signal N
  130    cancelled (Ctrl-C or SIGTERM while waiting)
other subcommands exit 0 on success, 1 on failure and 2 on bad usage.

The data dir is $QVM_REMOTE_HOME if set, else $HOME/.qvm-remote.
";

/// Options of a command run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// `-t`: seconds.
    pub timeout: u64,
    /// `-v`.
    pub verbose: bool,
    /// `-q`.
    pub quiet: bool,
    /// `--json`.
    pub json: bool,
    /// `-i`: stdin is the command's input rather than its text.
    pub stdin_input: bool,
    /// COMMAND and ARGS, verbatim; empty when the text comes from stdin.
    pub words: Vec<OsString>,
}

/// How output of a result is shown (`result ID`, `ping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShowOptions {
    /// `-v`.
    pub verbose: bool,
    /// `-q`.
    pub quiet: bool,
    /// `--json`.
    pub json: bool,
}

/// `key` actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAction {
    /// `key gen`.
    Gen,
    /// `key show [--full]`.
    Show {
        /// Print the key itself.
        full: bool,
    },
    /// `key import [KEY]`.
    Import {
        /// The key text, or `None` to read stdin.
        key: Option<String>,
    },
}

/// `queue` actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueAction {
    /// Counts per directory.
    Status,
    /// Every entry.
    Debug,
    /// Remove stale entries.
    Clean,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run a command in dom0.
    Run(RunOptions),
    /// `ping`.
    Ping(ShowOptions),
    /// `result ID`.
    Result {
        /// The job.
        id: CommandId,
        /// How to show it.
        show: ShowOptions,
    },
    /// `status`.
    Status,
    /// `queue …`.
    Queue(QueueAction),
    /// `log [N]`.
    Log {
        /// Lines.
        lines: usize,
    },
    /// `history [N]`.
    History {
        /// Entries.
        entries: usize,
    },
    /// `key …`.
    Key(KeyAction),
    /// `agent [--once]`.
    Agent {
        /// Poll mode: one batch per session.
        once: bool,
    },
    /// `mcp [--read-only]`.
    Mcp {
        /// Serve only the tools that change nothing in dom0.
        read_only: bool,
    },
    /// `-h`, `--help`.
    Help,
    /// `--version`.
    Version,
}

impl Command {
    /// True for the commands whose failures exit 125 (they stand in for a command run).
    pub fn is_command_run(&self) -> bool {
        matches!(
            self,
            Command::Run(_) | Command::Ping(_) | Command::Result { .. }
        )
    }

    /// True when errors should be reported as a JSON object on stdout.
    pub fn wants_json(&self) -> bool {
        match self {
            Command::Run(o) => o.json,
            Command::Result { show, .. } => show.json,
            _ => false,
        }
    }
}

/// A command line that could not be parsed, with what main needs to report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    /// What is wrong.
    pub error: ArgError,
    /// The subcommand, if the error is in one (exit 2); `None` in command mode (125).
    pub subcommand: Option<&'static str>,
    /// `--json` was given before the error.
    pub json: bool,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for UsageError {}

/// The subcommand names; a first word equal to one of them is that subcommand.
pub const SUBCOMMANDS: &[&str] = &[
    "agent", "history", "key", "log", "mcp", "ping", "queue", "result", "status",
];

/// The leading options, as given (so subcommands can refuse the ones they do not use).
#[derive(Debug, Default)]
struct Leading {
    timeout: Option<u64>,
    verbose: bool,
    quiet: bool,
    json: bool,
    stdin_input: bool,
}

impl Leading {
    /// The options that are set, by name, for refusal messages.
    fn given(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.timeout.is_some() {
            v.push("-t");
        }
        if self.verbose {
            v.push("-v");
        }
        if self.quiet {
            v.push("-q");
        }
        if self.json {
            v.push("--json");
        }
        if self.stdin_input {
            v.push("-i");
        }
        v
    }

    fn show(&self) -> ShowOptions {
        ShowOptions {
            verbose: self.verbose,
            quiet: self.quiet,
            json: self.json,
        }
    }
}

/// Parses a command line (without the program name).
pub fn parse(mut a: Args) -> Result<Command, UsageError> {
    let mut lead = Leading::default();
    let mut ended = false;
    let usage = |error, json| UsageError {
        error,
        subcommand: None,
        json,
    };
    while a.at_option() {
        let Some(opt) = a.eat(&[
            "--",
            "-h",
            "--help",
            "--version",
            "-t",
            "-v",
            "-q",
            "--json",
            "-i",
        ]) else {
            return Err(usage(a.unknown_option(), lead.json));
        };
        match opt {
            "--" => {
                ended = true;
                break;
            }
            "-h" | "--help" => return Ok(Command::Help),
            "--version" => return Ok(Command::Version),
            "-t" => {
                let text = a.value("-t").map_err(|e| usage(e, lead.json))?;
                let t = args::number("-t", &text, MIN_TIMEOUT..=MAX_TIMEOUT)
                    .map_err(|e| usage(e, lead.json))?;
                lead.timeout = Some(t);
            }
            "-v" => lead.verbose = true,
            "-q" => lead.quiet = true,
            "--json" => lead.json = true,
            _ => lead.stdin_input = true,
        }
    }
    if !ended {
        if let Some(name) = a.eat(SUBCOMMANDS) {
            return subcommand(name, &lead, &mut a).map_err(|error| UsageError {
                error,
                subcommand: Some(name),
                json: lead.json,
            });
        }
    }
    let words = a.rest();
    if lead.stdin_input && words.is_empty() {
        return Err(usage(
            ArgError::MissingArgument("COMMAND (-i sends stdin to it)"),
            lead.json,
        ));
    }
    Ok(Command::Run(RunOptions {
        timeout: lead.timeout.unwrap_or(DEFAULT_TIMEOUT),
        verbose: lead.verbose,
        quiet: lead.quiet,
        json: lead.json,
        stdin_input: lead.stdin_input,
        words,
    }))
}

/// Refuses leading options that `name` does not use.
fn only(lead: &Leading, name: &'static str, allowed: &[&str]) -> Result<(), ArgError> {
    match lead.given().into_iter().find(|o| !allowed.contains(o)) {
        Some(option) => Err(ArgError::NotApplicable {
            option,
            subcommand: name,
        }),
        None => Ok(()),
    }
}

fn subcommand(name: &'static str, lead: &Leading, a: &mut Args) -> Result<Command, ArgError> {
    let cmd = match name {
        "ping" => {
            only(lead, name, &["-v", "-q"])?;
            Command::Ping(lead.show())
        }
        "result" => {
            only(lead, name, &["-v", "-q", "--json"])?;
            let text = a.required("ID")?;
            let id = CommandId::parse(&text).map_err(|_| ArgError::BadValue {
                option: "ID",
                value: args::quote(text.as_ref()),
                expected: "a command id (YYYYMMDD-HHMMSS-PID-16 hex)".into(),
            })?;
            Command::Result {
                id,
                show: lead.show(),
            }
        }
        "status" => {
            only(lead, name, &[])?;
            Command::Status
        }
        "queue" => {
            only(lead, name, &[])?;
            let action = match a.word()?.as_deref() {
                None | Some("status") => QueueAction::Status,
                Some("debug") => QueueAction::Debug,
                Some("clean") => QueueAction::Clean,
                Some(other) => return Err(ArgError::Unexpected(args::quote(other.as_ref()))),
            };
            Command::Queue(action)
        }
        "log" => {
            only(lead, name, &[])?;
            Command::Log { lines: count(a)? }
        }
        "history" => {
            only(lead, name, &[])?;
            Command::History { entries: count(a)? }
        }
        "key" => {
            only(lead, name, &[])?;
            Command::Key(key_action(a)?)
        }
        "mcp" => {
            only(lead, name, &[])?;
            let read_only = a.eat(&["--read-only"]).is_some();
            Command::Mcp { read_only }
        }
        _ => {
            only(lead, name, &[])?;
            let once = a.eat(&["--once"]).is_some();
            Command::Agent { once }
        }
    };
    a.finish()?;
    Ok(cmd)
}

fn count(a: &mut Args) -> Result<usize, ArgError> {
    match a.word()? {
        None => Ok(DEFAULT_LINES),
        Some(text) => args::number("N", &text, 1..=MAX_LINES),
    }
}

fn key_action(a: &mut Args) -> Result<KeyAction, ArgError> {
    match a.required("key action (gen, show or import)")?.as_str() {
        "gen" => Ok(KeyAction::Gen),
        "show" => Ok(KeyAction::Show {
            full: a.eat(&["--full"]).is_some(),
        }),
        "import" => Ok(KeyAction::Import { key: a.word()? }),
        other => Err(ArgError::Unexpected(args::quote(other.as_ref()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &[&str]) -> Result<Command, UsageError> {
        parse(Args::new(words.iter().map(OsString::from).collect()))
    }

    fn run(words: &[&str], timeout: u64) -> Command {
        Command::Run(RunOptions {
            timeout,
            verbose: false,
            quiet: false,
            json: false,
            stdin_input: false,
            words: words.iter().map(OsString::from).collect(),
        })
    }

    #[test]
    fn command_lines_table() {
        let id = "20261204-153000-4242-0123456789abcdef";
        let table: Vec<(Vec<&str>, Command)> = vec![
            (vec![], run(&[], DEFAULT_TIMEOUT)),
            (vec!["ls"], run(&["ls"], DEFAULT_TIMEOUT)),
            (
                vec!["qvm-ls", "-l"],
                run(&["qvm-ls", "-l"], DEFAULT_TIMEOUT),
            ),
            (vec!["-t", "5", "sleep", "1"], run(&["sleep", "1"], 5)),
            (
                vec!["--", "key", "gen"],
                run(&["key", "gen"], DEFAULT_TIMEOUT),
            ),
            (vec!["--", "-v"], run(&["-v"], DEFAULT_TIMEOUT)),
            (vec!["--"], run(&[], DEFAULT_TIMEOUT)),
            (
                vec!["echo", "--", "-h"],
                run(&["echo", "--", "-h"], DEFAULT_TIMEOUT),
            ),
            (vec!["-"], run(&["-"], DEFAULT_TIMEOUT)),
            (vec!["-h"], Command::Help),
            (vec!["--help", "x"], Command::Help),
            (vec!["--version"], Command::Version),
            (vec!["ping"], Command::Ping(ShowOptions::default())),
            (vec!["status"], Command::Status),
            (vec!["queue"], Command::Queue(QueueAction::Status)),
            (vec!["queue", "debug"], Command::Queue(QueueAction::Debug)),
            (vec!["queue", "clean"], Command::Queue(QueueAction::Clean)),
            (vec!["log"], Command::Log { lines: 20 }),
            (vec!["log", "5"], Command::Log { lines: 5 }),
            (vec!["history", "7"], Command::History { entries: 7 }),
            (vec!["key", "gen"], Command::Key(KeyAction::Gen)),
            (
                vec!["key", "show", "--full"],
                Command::Key(KeyAction::Show { full: true }),
            ),
            (
                vec!["key", "import"],
                Command::Key(KeyAction::Import { key: None }),
            ),
            (
                vec!["key", "import", "ab"],
                Command::Key(KeyAction::Import {
                    key: Some("ab".into()),
                }),
            ),
            (vec!["agent"], Command::Agent { once: false }),
            (vec!["agent", "--once"], Command::Agent { once: true }),
            (vec!["mcp"], Command::Mcp { read_only: false }),
            (vec!["mcp", "--read-only"], Command::Mcp { read_only: true }),
            (
                vec!["--json", "result", id],
                Command::Result {
                    id: CommandId::parse(id).unwrap(),
                    show: ShowOptions {
                        json: true,
                        ..ShowOptions::default()
                    },
                },
            ),
        ];
        for (words, want) in table {
            assert_eq!(parse_words(&words), Ok(want), "{words:?}");
        }
        let Ok(Command::Run(o)) = parse_words(&["-v", "-q", "--json", "-i", "-t", "9", "cat"])
        else {
            panic!("expected a run");
        };
        assert!(o.verbose && o.quiet && o.json && o.stdin_input);
        assert_eq!(o.timeout, 9);
    }

    #[test]
    fn usage_errors_say_where_they_are() {
        let table: &[(&[&str], Option<&str>)] = &[
            (&["-t"], None),
            (&["-t", "0", "ls"], None),
            (&["-t", "86401", "ls"], None),
            (&["-t", "x", "ls"], None),
            (&["-x", "ls"], None),
            (&["-i"], None),
            (&["--json", "-i"], None),
            (&["key"], Some("key")),
            (&["key", "rotate"], Some("key")),
            (&["key", "show", "extra"], Some("key")),
            (&["queue", "flush"], Some("queue")),
            (&["log", "0"], Some("log")),
            (&["log", "100001"], Some("log")),
            (&["history", "x"], Some("history")),
            (&["result"], Some("result")),
            (&["result", "../x"], Some("result")),
            (&["ping", "now"], Some("ping")),
            (&["agent", "--twice"], Some("agent")),
            (&["mcp", "--write"], Some("mcp")),
            (&["-v", "mcp"], Some("mcp")),
            (&["-t", "5", "status"], Some("status")),
            (&["-i", "ping"], Some("ping")),
            (&["--json", "ping"], Some("ping")),
        ];
        for (words, sub) in table {
            let e = parse_words(words).unwrap_err();
            assert_eq!(e.subcommand, *sub, "{words:?}: {e}");
        }
        let e = parse_words(&["--json", "-i"]).unwrap_err();
        assert!(e.json);
        let e = parse_words(&["-t", "5", "status"]).unwrap_err();
        assert_eq!(e.to_string(), "option -t does not apply to `status`");
    }

    #[test]
    fn classification_for_exit_codes() {
        assert!(parse_words(&["ls"]).unwrap().is_command_run());
        assert!(parse_words(&["ping"]).unwrap().is_command_run());
        assert!(!parse_words(&["status"]).unwrap().is_command_run());
        assert!(parse_words(&["--json", "ls"]).unwrap().wants_json());
        assert!(!parse_words(&["ls"]).unwrap().wants_json());
    }

    #[test]
    fn usage_names_every_subcommand_and_exit_code() {
        for name in SUBCOMMANDS {
            assert!(USAGE.contains(&format!("  {name}")), "{name}");
        }
        for code in ["124", "125", "126", "127", "128+N", "130"] {
            assert!(USAGE.contains(code), "{code}");
        }
        assert!(USAGE.contains("qvm-remote -- key"));
    }
}
