//! SHA-256 as specified in FIPS 180-4 (sections 5.1.1 padding, 5.3.3 initial value,
//! 6.2 hash computation), one-shot and streaming.
//!
//! Whole blocks are handed to the compression function straight from the caller's
//! slice, many at a time, so long inputs are neither copied nor processed one block
//! per call; only a trailing partial block is buffered.

use std::fmt;

use crate::backend::{self, active_backend, Backend};
use crate::consts::H0;
use crate::ct::wipe;

/// SHA-256 digest of `data`, using the process-wide backend.
///
/// ```
/// let digest = qvm_remote_hmac::sha256(b"abc");
/// assert_eq!(
///     qvm_remote_hmac::hex::encode(&digest),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(data);
    hasher.finalize()
}

/// Streaming SHA-256: feed data with [`update`](Self::update) in pieces of any size,
/// then call [`finalize`](Self::finalize). The result is the same as [`sha256`] of
/// the concatenated pieces.
///
/// The hash state and buffered input are overwritten when the value is dropped
/// (best effort: see the crate documentation), since they may be derived from keys.
#[derive(Clone)]
pub struct Sha256 {
    /// The intermediate hash value H(i).
    state: [u32; 8],
    /// Input not yet compressed; only the first `buffered` bytes are meaningful.
    buffer: [u8; 64],
    /// Number of bytes held in `buffer`, always below 64 between calls.
    buffered: usize,
    /// Message length in bits modulo 2^64, which is what the padding encodes
    /// (FIPS 180-4 section 5.1.1 limits messages to fewer than 2^64 bits).
    bit_len: u64,
    /// Resolved backend: `ShaNi` only if this CPU has the extensions.
    backend: Backend,
}

impl Sha256 {
    /// A hasher with no input yet, using the process-wide backend.
    pub fn new() -> Self {
        Self::with_backend(active_backend())
    }

    /// A hasher that uses `backend`, or the portable backend if `backend` is not
    /// available on this CPU. For tests and benchmarks.
    #[doc(hidden)]
    pub fn with_backend(backend: Backend) -> Self {
        Sha256 {
            state: H0,
            buffer: [0; 64],
            buffered: 0,
            bit_len: 0,
            backend: backend.resolve(),
        }
    }

    /// The backend this hasher really runs on. For tests.
    #[doc(hidden)]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Absorbs `data`.
    pub fn update(&mut self, data: &[u8]) {
        // `usize` is at most 64 bits on every target Rust supports, so the cast is
        // lossless; the multiplication wraps like the spec's length counter.
        self.bit_len = self
            .bit_len
            .wrapping_add((data.len() as u64).wrapping_mul(8));

        let mut data = data;
        if self.buffered > 0 {
            // Top up the partial block first; it can only be compressed once full.
            let take = (64 - self.buffered).min(data.len());
            let (head, tail) = data.split_at(take);
            self.buffer[self.buffered..self.buffered + take].copy_from_slice(head);
            self.buffered += take;
            data = tail;
            if self.buffered < 64 {
                return;
            }
            backend::compress(
                self.backend,
                &mut self.state,
                std::slice::from_ref(&self.buffer),
            );
            self.buffered = 0;
        }

        // All whole blocks go to the compression function in one call, without a copy.
        let (blocks, rest) = data.as_chunks::<64>();
        if !blocks.is_empty() {
            backend::compress(self.backend, &mut self.state, blocks);
        }
        self.buffer[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    /// Pads the message (FIPS 180-4 section 5.1.1) and returns the digest.
    pub fn finalize(mut self) -> [u8; 32] {
        // Append the 1 bit, then zeros up to 56 bytes into a block, then the 64-bit
        // big-endian length. If the 0x80 byte leaves no room for the length, the
        // padding spills into one more block.
        let used = self.buffered;
        self.buffer[used] = 0x80;
        self.buffer[used + 1..].fill(0);
        if used + 1 > 56 {
            backend::compress(
                self.backend,
                &mut self.state,
                std::slice::from_ref(&self.buffer),
            );
            self.buffer.fill(0);
        }
        self.buffer[56..].copy_from_slice(&self.bit_len.to_be_bytes());
        backend::compress(
            self.backend,
            &mut self.state,
            std::slice::from_ref(&self.buffer),
        );

        let mut digest = [0u8; 32];
        for (out, word) in digest.chunks_exact_mut(4).zip(self.state) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        digest
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Sha256 {
    /// Shows the backend only: the state and buffer may be derived from secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sha256")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Drop for Sha256 {
    fn drop(&mut self) {
        wipe(&mut self.state);
        wipe(&mut self.buffer);
        self.bit_len = 0;
        self.buffered = 0;
    }
}
