//! `qvm-remote`: the VM client and agent (DESIGN §5 for the exit codes).
//!
//! A thin main: parse the command line, run it through `qvm_remote::vm`, print the error
//! if there is one and pick the exit code. Nothing else in the program prints errors.

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;

use qvm_remote::args::Args;
use qvm_remote::json;
use qvm_remote::version::VERSION;
use qvm_remote::vm::{self, cli, Command, Console};

/// qvm-remote itself failed while standing in for a command (DESIGN §5).
const EXIT_OWN_FAILURE: u8 = 125;
/// Refused: the job broke a rule dom0 would refuse it for (DESIGN §5), so it was never
/// queued; the same code dom0's refusal would have given.
const EXIT_REFUSED: u8 = 126;
/// Cancelled from the client (DESIGN §5).
const EXIT_CANCELLED: u8 = 130;
/// A subcommand failed.
const EXIT_FAILURE: u8 = 1;
/// A subcommand was used wrongly.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cmd = match cli::parse(Args::from_env()) {
        Ok(c) => c,
        Err(e) => {
            if e.json {
                print_json_error(&e.to_string(), None);
            } else {
                eprintln!("qvm-remote: {e}\nTry 'qvm-remote --help'.");
            }
            let code = if e.subcommand.is_some() {
                EXIT_USAGE
            } else {
                EXIT_OWN_FAILURE
            };
            return ExitCode::from(code);
        }
    };
    match cmd {
        Command::Help => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("qvm-remote {VERSION}");
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let mut input = io::stdin();
    let input_is_terminal = input.is_terminal();
    let mut out = io::stdout();
    let mut err = io::stderr();
    let mut console = Console {
        input: &mut input,
        input_is_terminal,
        out: &mut out,
        err: &mut err,
    };
    let result = vm::run(&cmd, &mut console);
    let _ = out.flush();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if cmd.wants_json() && !e.result_shown() {
                print_json_error(&e.to_string(), e.id().map(|id| id.as_str()));
            } else {
                eprintln!("qvm-remote: {e}");
            }
            ExitCode::from(exit_code(&cmd, &e))
        }
    }
}

/// The exit code for a failed command (see the usage text).
fn exit_code(cmd: &Command, e: &vm::Error) -> u8 {
    if matches!(e, vm::Error::Cancelled { .. }) {
        EXIT_CANCELLED
    } else if cmd.is_command_run()
        && matches!(
            e,
            vm::Error::EmptyCommand | vm::Error::ControlBytes | vm::Error::TooLarge { .. }
        )
    {
        EXIT_REFUSED
    } else if cmd.is_command_run() {
        EXIT_OWN_FAILURE
    } else {
        EXIT_FAILURE
    }
}

/// `{"error": "...", "id": "..."}` on stdout, where a `--json` caller reads.
fn print_json_error(message: &str, id: Option<&str>) {
    let mut o = json::Object::new().str("error", message);
    if let Some(id) = id {
        o = o.str("id", id);
    }
    println!("{}", o.finish());
}
