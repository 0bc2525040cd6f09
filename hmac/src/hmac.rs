//! HMAC-SHA256 as specified in RFC 2104 (with SHA-256 from FIPS 180-4 as the hash,
//! the combination RFC 4231 gives test vectors for).
//!
//! HMAC(K, m) = H((K' ^ opad) || H((K' ^ ipad) || m)), where K' is the key padded with
//! zeros to the 64-byte block size, or SHA-256 of the key first if it is longer than
//! a block (RFC 2104 section 2). The two key-derived pad blocks are absorbed once, in
//! [`HmacSha256::new`], so cloning a keyed instance is cheap.

use std::error::Error;
use std::fmt;

use crate::backend::{active_backend, sha256_with, Backend};
use crate::ct::{ct_eq, wipe};
use crate::sha256::Sha256;

/// HMAC-SHA256 of `msg` under `key`, using the process-wide backend.
///
/// ```
/// // RFC 4231 test case 2.
/// let tag = qvm_remote_hmac::hmac_sha256(b"Jefe", b"what do ya want for nothing?");
/// assert_eq!(
///     qvm_remote_hmac::hex::encode(&tag),
///     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
/// );
/// ```
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new(key);
    mac.update(msg);
    mac.finalize()
}

/// Streaming HMAC-SHA256: key it with [`new`](Self::new), feed the message with
/// [`update`](Self::update), then either [`finalize`](Self::finalize) to get the tag
/// or [`verify`](Self::verify) to check one.
///
/// `Debug` prints `HmacSha256 { .. }` and nothing derived from the key. The
/// key-derived hash states are overwritten on drop (best effort).
#[derive(Clone)]
pub struct HmacSha256 {
    /// Hash state after absorbing K' ^ ipad; the message goes here.
    inner: Sha256,
    /// Hash state after absorbing K' ^ opad; the inner digest goes here.
    outer: Sha256,
}

/// The tag given to [`HmacSha256::verify`] was wrong (or not 32 bytes long). It says
/// nothing more, on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyError {
    _private: (),
}

impl HmacSha256 {
    /// An HMAC instance keyed with `key`, which may have any length. Keys longer than
    /// the 64-byte block are hashed first (RFC 2104 section 2); RFC 2104 section 3
    /// recommends keys of at least 32 bytes for SHA-256.
    pub fn new(key: &[u8]) -> Self {
        Self::with_backend(key, active_backend())
    }

    /// Like [`new`](Self::new), but on `backend` (or the portable backend if `backend`
    /// is not available on this CPU). For tests and benchmarks.
    #[doc(hidden)]
    pub fn with_backend(key: &[u8], backend: Backend) -> Self {
        // K': the key, or its digest if it is longer than a block, padded with zeros.
        let mut padded_key = [0u8; 64];
        if key.len() > 64 {
            let mut digest = sha256_with(backend, key);
            padded_key[..32].copy_from_slice(&digest);
            wipe(&mut digest);
        } else {
            padded_key[..key.len()].copy_from_slice(key);
        }

        let mut pad = [0u8; 64];
        for (p, k) in pad.iter_mut().zip(padded_key) {
            *p = k ^ 0x36;
        }
        let mut inner = Sha256::with_backend(backend);
        inner.update(&pad);

        for (p, k) in pad.iter_mut().zip(padded_key) {
            *p = k ^ 0x5c;
        }
        let mut outer = Sha256::with_backend(backend);
        outer.update(&pad);

        wipe(&mut pad);
        wipe(&mut padded_key);
        HmacSha256 { inner, outer }
    }

    /// Absorbs more of the message.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
    }

    /// The 32-byte tag of everything passed to [`update`](Self::update).
    pub fn finalize(self) -> [u8; 32] {
        let HmacSha256 { inner, mut outer } = self;
        let mut inner_digest = inner.finalize();
        outer.update(&inner_digest);
        wipe(&mut inner_digest);
        outer.finalize()
    }

    /// Checks `tag` against the tag of the message, in constant time for a given tag
    /// length (see [`crate::ct_eq`]). Only a full 32-byte tag can succeed: truncated
    /// tags (RFC 2104 section 5, RFC 4231 test case 5) are refused, because accepting
    /// a caller-chosen length would let an attacker shorten the tag to guess it.
    pub fn verify(self, tag: &[u8]) -> Result<(), VerifyError> {
        let mut expected = self.finalize();
        let equal = ct_eq(&expected, tag);
        wipe(&mut expected);
        if equal {
            Ok(())
        } else {
            Err(VerifyError { _private: () })
        }
    }
}

impl fmt::Debug for HmacSha256 {
    /// Prints no field: every part of the state is derived from the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacSha256 { .. }")
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MAC verification failed")
    }
}

impl Error for VerifyError {}
