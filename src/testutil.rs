//! Helpers for the unit tests only (the module is compiled for tests alone).

use std::path::PathBuf;

/// A fresh, empty 0700 directory under the system temp dir, unique to this call: the
/// tests of one process run in parallel threads, and a name made of the pid and the
/// time alone is shared by two tests that start in the same millisecond.
#[cfg(test)]
pub fn temp_dir(tag: &str) -> PathBuf {
    use std::fs;
    use std::os::unix::fs::DirBuilderExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir =
        std::env::temp_dir().join(format!("qvm-remote-unit-{tag}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    dir
}
