//! `qvm-remote-dom0`: the dom0 daemon and its administration subcommands. All the work
//! is in `qvm_remote::dom0`; this only prints errors and picks the exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match qvm_remote::dom0::cli::main(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qvm-remote-dom0: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
