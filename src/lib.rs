//! qvm-remote: run commands in Qubes OS dom0 from an authorised VM, while dom0
//! initiates every channel.
//!
//! The two binaries (`qvm-remote` in the VM, `qvm-remote-dom0` in dom0) are thin
//! `main` functions over this library. The contract they implement is
//! `shared/DESIGN.md`; ARCHITECTURE.md maps it onto these modules.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod args;
pub mod atomic;
pub mod audit;
pub mod cgroup;
pub mod config;
pub mod dom0;
pub mod exec;
pub mod id;
pub mod json;
pub mod keys;
pub mod panel;
pub mod policy;
pub mod proto;
pub mod rand;
#[allow(unsafe_code)]
pub mod sys;
pub mod time;
pub mod version;
pub mod vm;

#[cfg(test)]
mod testutil;
