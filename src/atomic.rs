//! Atomic, private file writes for every part of qvm-remote (STYLE rule 7).
//!
//! A file is created with its final mode (0600) in one step, `create_new` and
//! `O_NOFOLLOW`, so an existing file or a symlink planted in its place is never written
//! through; a file that replaces another is written under a temporary name beside it and
//! renamed into place, so a reader sees the old file or the new one, never half of one.
//! [`Durability`] says whether the write must reach the disk before it counts as done.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Mode of every file written here: private to the user qvm-remote runs as.
pub const FILE_MODE: u32 = 0o600;

/// Whether a write must reach the disk before it counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the file and its directory: the agent's `ACK` promises dom0 that a result
    /// is stored, after which dom0 forgets it.
    Synced,
    /// Leave it to the kernel: a job or archive lost in a VM crash is lost with its
    /// client anyway.
    Buffered,
}

/// Creates `path` (which must not exist, not even as a symlink) with mode 0600 and
/// writes `bytes` to it. With [`Durability::Synced`] the file is fsynced; its directory
/// entry is the caller's to sync ([`sync_dir`]), as several entries may share one.
pub fn create_new(path: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let f = create_written(path, bytes)?;
    if durability == Durability::Synced {
        f.sync_all()?;
    }
    Ok(())
}

/// The open and write of [`create_new`], handing back the file.
fn create_written(path: &Path, bytes: &[u8]) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(path)?;
    f.write_all(bytes)?;
    Ok(f)
}

/// fsyncs a directory, making the entries created, renamed or removed in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `dir/name` atomically: `dir/tmp` is removed if a stale one is there, created
/// new with mode 0600, written, and renamed to `name` (replacing a file of that name).
pub fn write_atomic(
    dir: &Path,
    tmp: &str,
    name: &str,
    bytes: &[u8],
    durability: Durability,
) -> io::Result<()> {
    let tmp_path = dir.join(tmp);
    remove_if_present(&tmp_path)?;
    if let Err(e) = create_new(&tmp_path, bytes, durability) {
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    if let Err(e) = fs::rename(&tmp_path, dir.join(name)) {
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    if durability == Durability::Synced {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Like [`write_atomic`] with [`Durability::Synced`], but calls `visible` as soon as the
/// file is in place under its final name, before the fsyncs that make it durable; it
/// returns once it is durable. For the agent's results: the waiting client may read
/// the file at once, while the `ACK` that lets dom0 forget it still waits for the disk.
/// A crash between the two can leave a final name with incomplete bytes, which fail
/// their MAC check; dom0, never having had its `ACK`, sends the result again.
pub fn write_atomic_visible_early(
    dir: &Path,
    tmp: &str,
    name: &str,
    bytes: &[u8],
    visible: impl FnOnce(),
) -> io::Result<()> {
    let tmp_path = dir.join(tmp);
    remove_if_present(&tmp_path)?;
    let file = match create_written(&tmp_path, bytes) {
        Ok(f) => f,
        Err(e) => {
            let _ = fs::remove_file(&tmp_path);
            return Err(e);
        }
    };
    if let Err(e) = fs::rename(&tmp_path, dir.join(name)) {
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    visible();
    file.sync_all()?;
    sync_dir(dir)
}

/// Replaces `path` atomically with `bytes`, through `.<name>.<pid>.tmp` beside it (the
/// pid keeps two processes writing the same file from sharing a temporary name).
pub fn replace(path: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = format!(".{name}.{}.tmp", std::process::id());
    write_atomic(dir, &tmp, &name, bytes, durability)
}

/// Removes a file (or symlink); says whether there was one. A missing file is fine.
pub fn remove_if_present(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::PathBuf;

    fn temp(name: &str) -> PathBuf {
        crate::testutil::temp_dir(&format!("atomic-{name}"))
    }

    #[test]
    fn atomic_writes_use_0600_and_never_write_through_a_symlink() {
        let d = temp("atomic");
        write_atomic(&d, ".a.tmp", "a", b"one", Durability::Synced).unwrap();
        write_atomic(&d, ".a.tmp", "a", b"two", Durability::Buffered).unwrap();
        assert_eq!(fs::read(d.join("a")).unwrap(), b"two");
        let mode = fs::metadata(d.join("a")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(fs::symlink_metadata(d.join(".a.tmp")).is_err());
        // A symlink planted at the tmp name is removed, not written through.
        fs::write(d.join("victim"), b"keep").unwrap();
        symlink(d.join("victim"), d.join(".b.tmp")).unwrap();
        write_atomic(&d, ".b.tmp", "b", b"new", Durability::Buffered).unwrap();
        assert_eq!(fs::read(d.join("victim")).unwrap(), b"keep");
        assert_eq!(fs::read(d.join("b")).unwrap(), b"new");
        // create_new refuses an existing name, symlink or not.
        assert!(create_new(&d.join("b"), b"x", Durability::Buffered).is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn early_visible_writes_are_whole_when_announced() {
        let d = temp("early");
        let path = d.join("r");
        let mut seen = None;
        write_atomic_visible_early(&d, ".r.tmp", "r", b"result", || {
            seen = Some(fs::read(&path).unwrap());
        })
        .unwrap();
        assert_eq!(seen.as_deref(), Some(&b"result"[..]));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(fs::symlink_metadata(d.join(".r.tmp")).is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn replace_swaps_the_whole_file_and_leaves_no_temporary() {
        let d = temp("replace");
        let p = d.join("status");
        replace(&p, b"first", Durability::Buffered).unwrap();
        replace(&p, b"second", Durability::Synced).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["status"]);
        // A symlink at the final name is replaced, never written through.
        fs::write(d.join("victim"), b"keep").unwrap();
        symlink(d.join("victim"), d.join("link")).unwrap();
        replace(&d.join("link"), b"new", Durability::Buffered).unwrap();
        assert_eq!(fs::read(d.join("victim")).unwrap(), b"keep");
        assert!(fs::symlink_metadata(d.join("link")).unwrap().is_file());
        assert!(replace(Path::new("/"), b"x", Durability::Buffered).is_err());
        fs::remove_dir_all(&d).unwrap();
    }
}
