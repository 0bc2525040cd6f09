//! Run-time choice between the two implementations of the FIPS 180-4 SHA-256
//! compression function: the portable one ([`crate::soft`]) and, on x86-64 CPUs with
//! the SHA extensions, the SHA-NI one (`crate::x86_shani`).
//!
//! The choice is made once per process, on first use, and cached in a
//! [`OnceLock`]. Setting the environment variable `QVM_REMOTE_SHA256=portable`
//! before that first use forces the portable backend; this is the crate's only
//! access to its environment, and it happens at most once. Any other value, or no
//! value, means "use SHA-NI when the CPU has it".
//!
//! The items here are public but hidden from the documentation: they exist so that
//! tests and the benchmark can run both backends in one process. Asking for
//! [`Backend::ShaNi`] on a CPU without SHA-NI quietly gives the portable backend,
//! so no API can execute instructions the CPU lacks.

use std::sync::OnceLock;

use crate::sha256::Sha256;

/// The name of the environment variable that can force the portable backend.
#[doc(hidden)]
pub const BACKEND_ENV: &str = "QVM_REMOTE_SHA256";

/// An implementation of the SHA-256 compression function.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Plain Rust, any CPU.
    Portable,
    /// The x86-64 SHA extensions; only ever used after run-time detection.
    ShaNi,
}

/// The backend that [`crate::sha256`], [`Sha256::new`] and [`crate::HmacSha256::new`]
/// use: SHA-NI when the CPU has it, unless `QVM_REMOTE_SHA256=portable` was set when
/// this was first called. The answer is fixed for the life of the process.
#[doc(hidden)]
pub fn active_backend() -> Backend {
    static ACTIVE: OnceLock<Backend> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let forced_portable = std::env::var_os(BACKEND_ENV)
            .is_some_and(|value| value.eq_ignore_ascii_case("portable"));
        if forced_portable {
            Backend::Portable
        } else {
            Backend::ShaNi.resolve()
        }
    })
}

/// Whether this CPU can run the SHA-NI backend (x86-64 with SHA, SSE2, SSSE3 and
/// SSE4.1). Always false on other architectures.
#[doc(hidden)]
pub fn shani_available() -> bool {
    accel::available()
}

/// SHA-256 of `data` computed with `backend` (or the portable backend if `backend`
/// is not available on this CPU).
#[doc(hidden)]
pub fn sha256_with(backend: Backend, data: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::with_backend(backend);
    hasher.update(data);
    hasher.finalize()
}

impl Backend {
    /// The backend that will really run when `self` is requested: SHA-NI only if the
    /// CPU has it, otherwise portable.
    pub(crate) fn resolve(self) -> Backend {
        match self {
            Backend::ShaNi if accel::available() => Backend::ShaNi,
            _ => Backend::Portable,
        }
    }
}

/// Runs the compression function of `backend` over `blocks`. Even if an unresolved
/// `Backend::ShaNi` reaches this point, the SHA-NI module checks the CPU again
/// before using its instructions.
#[inline]
pub(crate) fn compress(backend: Backend, state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    match backend {
        Backend::ShaNi => accel::compress(state, blocks),
        Backend::Portable => crate::soft::compress(state, blocks),
    }
}

#[cfg(target_arch = "x86_64")]
use crate::x86_shani as accel;

/// Stand-in for the SHA-NI module on other architectures: never available, and
/// delegates to the portable code should it be called anyway.
#[cfg(not(target_arch = "x86_64"))]
mod accel {
    pub(crate) fn available() -> bool {
        false
    }

    pub(crate) fn compress(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
        crate::soft::compress(state, blocks);
    }
}
