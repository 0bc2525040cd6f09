//! Randomness for ids and keys: `/dev/urandom`, nothing else.

use std::fs::File;
use std::io::{self, Read};

/// Fills `buf` from `/dev/urandom`.
pub fn fill(buf: &mut [u8]) -> io::Result<()> {
    File::open("/dev/urandom")?.read_exact(buf)
}
