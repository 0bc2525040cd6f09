//! dom0 side: the daemon and the administrator's subcommands of `qvm-remote-dom0`.

pub mod admin;
pub mod approval;
pub mod cli;
pub mod daemon;
pub mod devmode;
pub mod gate;
pub mod sched;
pub mod store;
