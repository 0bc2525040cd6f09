//! Cryptographic primitives for qvm-remote: SHA-256 (FIPS 180-4), HMAC-SHA256
//! (RFC 2104, checked against the RFC 4231 test vectors), a constant-time byte
//! comparison and hex encoding. Standard library only, no dependencies.
//!
//! # What is here
//!
//! - [`sha256()`] and the streaming [`Sha256`].
//! - [`hmac_sha256`] and the streaming [`HmacSha256`], whose
//!   [`verify`](HmacSha256::verify) compares tags in constant time and accepts only
//!   full 32-byte tags.
//! - [`ct_eq`], the constant-time comparison behind `verify`.
//! - [`hex`], lowercase encoding and case-insensitive decoding.
//!
//! # Backends
//!
//! SHA-256 runs on one of two implementations of the compression function, chosen
//! once per process: the SHA extensions of x86-64 CPUs (SHA-NI) when the running CPU
//! has them, otherwise portable Rust. Setting `QVM_REMOTE_SHA256=portable` in the
//! environment forces the portable one. Reading that variable, once, is the only
//! contact this crate has with the outside world: it does no other I/O.
//!
//! # Side channels
//!
//! Constant time is best effort. The code avoids secret-dependent branches, secret
//! indexed tables and early-exit comparisons, and uses [`std::hint::black_box`] where
//! a compiler could otherwise undo that, but Rust makes no promise about the timing
//! of the machine code it generates. Likewise, key-derived state is overwritten when
//! dropped, but copies the compiler made in registers or on the stack may survive.
#![deny(missing_docs)]
#![deny(unsafe_code)]

mod backend;
mod consts;
mod ct;
pub mod hex;
mod hmac;
mod sha256;
mod soft;
#[cfg(target_arch = "x86_64")]
mod x86_shani;

pub use crate::ct::ct_eq;
pub use crate::hmac::{hmac_sha256, HmacSha256, VerifyError};
pub use crate::sha256::{sha256, Sha256};

#[doc(hidden)]
pub use crate::backend::{active_backend, sha256_with, shani_available, Backend, BACKEND_ENV};
