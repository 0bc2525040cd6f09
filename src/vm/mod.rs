//! The VM side of qvm-remote: the `qvm-remote` client and its `agent` subcommand
//! (DESIGN §2 files, §3 formats, §4 the channel's VM end, §5 exit codes).
//!
//! A client writes a MAC'd job into `queue/pending/` of its data dir and waits for
//! `queue/results/<id>.result`. The agent, started by dom0 over `qvm-run`, claims jobs
//! into `queue/running/`, sends them as frames on stdout, and stores the results dom0
//! sends back. The client verifies the result's MAC, prints stdout and stderr
//! separately, archives the run under `history/` and exits with the code of DESIGN §5.
//!
//! Architecture invariants: nothing here runs a shell or any other program; every name
//! read from the data dir is validated as a command id before it is used in a path,
//! frame or log line; every read is bounded and refuses symlinks; nothing here prints
//! on its own: output goes to the [`Console`] that `main` hands in, and errors go back
//! to `main`, which prints them and picks the exit code.

pub mod agent;
pub mod cli;
pub mod client;
pub mod datadir;
pub mod files;
pub mod history;
pub mod keycmd;
pub mod mcp;
pub mod queue;
pub mod relay;
pub mod sock;

use std::fmt;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use crate::id::CommandId;
use crate::keys::KeyError;
use crate::proto::ResultError;

pub use agent::AgentError;
pub use cli::Command;
pub use datadir::{DataDir, DataDirError, QueueDir};
pub use files::ReadError;

/// The streams a command reads and writes: the process's own in `main`, buffers in
/// tests.
pub struct Console<'a> {
    /// Where command text, `-i` input and imported keys come from.
    pub input: &'a mut dyn Read,
    /// Whether `input` is a terminal (then it is never read as command text).
    pub input_is_terminal: bool,
    /// The command's stdout, and every subcommand's output.
    pub out: &'a mut dyn Write,
    /// The command's stderr, progress and notes.
    pub err: &'a mut dyn Write,
}

/// Why a result file was not accepted.
#[derive(Debug)]
pub enum VerifyError {
    /// The file is malformed or its MAC does not verify.
    Result(ResultError),
    /// It verifies, but answers another job.
    OtherJob(CommandId),
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::Result(e) => e.fmt(f),
            VerifyError::OtherJob(id) => write!(f, "it answers job {id}"),
        }
    }
}

/// Why a `qvm-remote` command failed. `main` prints it as `qvm-remote: <error>`.
#[derive(Debug)]
pub enum Error {
    /// The data dir cannot be used.
    DataDir(DataDirError),
    /// There is no `auth.key`.
    NoKey {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// `auth.key` is refused or malformed.
    Key(KeyError),
    /// `key gen` found a key already there.
    KeyExists {
        /// The key file.
        path: PathBuf,
    },
    /// `key import` was given text that is not a key.
    NotAKey {
        /// Where the text came from: `the argument` or `stdin`.
        from: &'static str,
    },
    /// A file or directory could not be written, renamed or removed.
    Write {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// A file could not be read.
    Read(ReadError),
    /// Reading stdin failed.
    Stdin(io::Error),
    /// Writing our own output failed.
    Output(io::Error),
    /// No command words, and stdin is a terminal.
    NoCommand,
    /// The command text is empty.
    EmptyCommand,
    /// The command text or its stdin is over the protocol's limit.
    TooLarge {
        /// `command text` or `stdin`.
        what: &'static str,
        /// The limit in bytes.
        max: usize,
    },
    /// The command text holds control bytes dom0 refuses.
    ControlBytes,
    /// A new id could not be made (no `/dev/urandom`).
    Id(io::Error),
    /// The SIGINT/SIGTERM handlers could not be installed.
    Signals(io::Error),
    /// A thread could not be started (`mcp`).
    Spawn(io::Error),
    /// dom0 did not answer in time.
    NoAnswer {
        /// The job.
        id: CommandId,
        /// How long we waited.
        secs: u64,
        /// Whether the job is still queued (it is withdrawn after a failed `ping`).
        left_queued: bool,
    },
    /// A result arrived but does not verify; its output is not shown.
    Unverified {
        /// The job.
        id: CommandId,
        /// Why.
        why: VerifyError,
    },
    /// `result ID` found nothing.
    NoResult {
        /// The job.
        id: CommandId,
    },
    /// Ctrl-C or SIGTERM while waiting.
    Cancelled {
        /// The job.
        id: CommandId,
        /// A result arrived in the grace period and was shown.
        result_shown: bool,
    },
    /// The live output shown does not match the verified result's (DESIGN §4 stream
    /// mode: what streams must be a prefix of what dom0 signed).
    StreamMismatch {
        /// The job.
        id: CommandId,
    },
    /// The agent ended abnormally.
    Agent(AgentError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::DataDir(e) => e.fmt(f),
            Error::NoKey { path } => write!(
                f,
                "no key: run `qvm-remote key gen` and authorise it in dom0 ({} does not exist)",
                path.display()
            ),
            Error::Key(e) => e.fmt(f),
            Error::KeyExists { path } => write!(
                f,
                "{}: a key already exists; not replacing it (use `qvm-remote key import` to replace it on purpose)",
                path.display()
            ),
            Error::NotAKey { from } => write!(
                f,
                "the key from {from} is not a key (want 64 hex characters, 256 bits)"
            ),
            Error::Write { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Read(e) => e.fmt(f),
            Error::Stdin(e) => write!(f, "reading stdin: {e}"),
            Error::Output(e) => write!(f, "writing output: {e}"),
            Error::NoCommand => f.write_str(
                "no command given and stdin is a terminal (see qvm-remote --help)",
            ),
            Error::EmptyCommand => f.write_str("empty command; nothing was queued"),
            Error::TooLarge { what, max } => write!(
                f,
                "{what} is over the limit of {max} bytes; nothing was queued"
            ),
            Error::ControlBytes => f.write_str(
                "command text holds control bytes dom0 refuses (0x00-0x08, 0x0b, 0x0c, 0x0e-0x1f); nothing was queued",
            ),
            Error::Id(e) => write!(f, "making a command id: {e}"),
            Error::Signals(e) => write!(f, "installing signal handlers: {e}"),
            Error::Spawn(e) => write!(f, "starting a thread: {e}"),
            Error::NoAnswer {
                id,
                secs,
                left_queued: true,
            } => write!(
                f,
                "no answer from dom0 after {secs}s (job {id} left queued; fetch later with: qvm-remote result {id})"
            ),
            Error::NoAnswer { secs, .. } => write!(f, "no answer from dom0 after {secs}s"),
            Error::Unverified { id, why } => {
                write!(f, "result for {id} failed verification: {why}")
            }
            Error::NoResult { id } => write!(f, "no result for {id} yet"),
            Error::Cancelled { .. } => f.write_str("cancelled"),
            Error::StreamMismatch { .. } => {
                f.write_str("streamed output differs from dom0's signed result")
            }
            Error::Agent(e) => write!(f, "agent: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<DataDirError> for Error {
    fn from(e: DataDirError) -> Error {
        Error::DataDir(e)
    }
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Error {
        Error::Read(e)
    }
}

impl Error {
    /// The job the error is about, if any (for `--json` error objects).
    pub fn id(&self) -> Option<&CommandId> {
        match self {
            Error::NoAnswer { id, .. }
            | Error::Unverified { id, .. }
            | Error::NoResult { id }
            | Error::StreamMismatch { id }
            | Error::Cancelled { id, .. } => Some(id),
            _ => None,
        }
    }

    /// True when a result was already shown, so `--json` must not print a second object.
    pub fn result_shown(&self) -> bool {
        matches!(
            self,
            Error::Cancelled {
                result_shown: true,
                ..
            }
        )
    }
}

/// Runs a parsed command (everything but `Help` and `Version`, which are `main`'s).
/// Returns the exit code on success; on error `main` picks it (see [`Command`]).
pub fn run(cmd: &Command, console: &mut Console<'_>) -> Result<u8, Error> {
    let dd = DataDir::from_env()?;
    match cmd {
        Command::Run(opts) => client::run_command(&dd, opts, console),
        Command::Ping(show) => client::ping(&dd, show, console),
        Command::Result { id, show } => client::fetch_result(&dd, id, show, console),
        Command::Status => queue::status(&dd, console).map(|()| 0),
        Command::Queue(action) => queue::run(&dd, *action, console).map(|()| 0),
        Command::Log { lines } => history::print_log(&dd, *lines, console).map(|()| 0),
        Command::History { entries } => history::print_history(&dd, *entries, console).map(|()| 0),
        Command::Key(action) => keycmd::run(&dd, action, console).map(|()| 0),
        Command::Agent { once } => {
            let mode = if *once {
                agent::Mode::Once
            } else {
                agent::Mode::Stream
            };
            agent::serve(&dd, io::stdin(), io::stdout(), mode)
                .map(|()| 0)
                .map_err(Error::Agent)
        }
        Command::Mcp { read_only } => {
            mcp::serve(dd, *read_only, io::stdin(), io::stdout(), io::stderr()).map(|()| 0)
        }
        Command::Help | Command::Version => Ok(0),
    }
}
