//! Version text shared by both binaries.

/// The package version, as Cargo knows it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The protocol version spoken in job and result files and in `HELLO` frames.
pub const PROTOCOL: u32 = 2;
