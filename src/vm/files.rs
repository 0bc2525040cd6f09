//! Careful file primitives for the data dir (DESIGN §2; STYLE rule 7).
//!
//! Files are created with their final mode in one step (`create_new` + 0600), under a
//! temporary name, then renamed into place, so a reader never sees half a file and an
//! existing file (or a symlink planted in its place) is never written through. Reads
//! refuse symlinks (`O_NOFOLLOW`) and anything but a regular file, and are bounded: a
//! file one byte over its limit is an error, not a truncated read.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::datadir::FILE_MODE;

/// Why a file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// There is nothing at the path.
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// The path is a symlink, directory, fifo, socket or device.
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The file is over its limit.
    TooLarge {
        /// The path.
        path: PathBuf,
        /// Its size (at least; a growing file may be larger).
        size: u64,
        /// The limit.
        max: usize,
    },
    /// Opening or reading failed.
    Io {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::NotFound { path } => write!(f, "{}: not found", path.display()),
            ReadError::NotRegular { path, kind } => {
                write!(
                    f,
                    "{}: refused: a {kind}, not a regular file",
                    path.display()
                )
            }
            ReadError::TooLarge { path, size, max } => write!(
                f,
                "{}: {size} bytes is over the limit of {max}",
                path.display()
            ),
            ReadError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for ReadError {}

/// What kind of thing `meta` describes, for messages.
pub fn kind_of(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else if t.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

/// Opens a regular file for reading without following a symlink, and returns it with
/// its metadata (taken from the open file, so it describes what will be read).
pub fn open_regular(path: &Path) -> Result<(File, fs::Metadata), ReadError> {
    let io_err = |source: io::Error| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Looking first keeps us from opening a fifo, which would block until a writer
    // came; only the data dir's owner could swap one in between the look and the open,
    // and a symlink swapped in then makes the O_NOFOLLOW open fail (an Io error).
    let meta = fs::symlink_metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ReadError::NotFound {
            path: path.to_path_buf(),
        },
        _ => io_err(e),
    })?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(&meta),
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ReadError::NotFound {
                path: path.to_path_buf(),
            },
            _ => io_err(e),
        })?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(&meta),
        });
    }
    Ok((file, meta))
}

/// Reads a whole regular file of at most `max` bytes (see [`open_regular`]).
pub fn read_regular(path: &Path, max: usize) -> Result<Vec<u8>, ReadError> {
    let (file, meta) = open_regular(path)?;
    read_open(path, file, &meta, max)
}

/// Reads an already opened file of at most `max` bytes.
pub fn read_open(
    path: &Path,
    file: File,
    meta: &fs::Metadata,
    max: usize,
) -> Result<Vec<u8>, ReadError> {
    let too_large = |size| ReadError::TooLarge {
        path: path.to_path_buf(),
        size,
        max,
    };
    if meta.len() > max as u64 {
        return Err(too_large(meta.len()));
    }
    // The size can change after the look, so the read itself is bounded too.
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if buf.len() > max {
        return Err(too_large(buf.len() as u64));
    }
    Ok(buf)
}

/// Reads up to `max` bytes from the start of a regular file; a longer file is not an
/// error (for peeking at headers and first lines).
pub fn read_prefix(path: &Path, max: usize) -> Result<Vec<u8>, ReadError> {
    let (file, _) = open_regular(path)?;
    let mut buf = Vec::new();
    file.take(max as u64)
        .read_to_end(&mut buf)
        .map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(buf)
}

/// True when something (anything, a dangling symlink included) is at `path`.
pub fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Appends one line (a newline is added) to a log file, creating it with mode 0600.
/// The whole line goes out in one `write` on an `O_APPEND` descriptor, so lines from
/// the client and the agent never interleave. A log that is not a regular file of ours
/// is refused.
pub fn append_line(path: &Path, line: &str) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() || meta.uid() != crate::sys::geteuid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: not a regular file of ours", path.display()),
        ));
    }
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    f.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn temp(name: &str) -> PathBuf {
        crate::testutil::temp_dir(&format!("files-{name}"))
    }

    #[test]
    fn bounded_reads_hold_one_byte_past() {
        let d = temp("bounded");
        let p = d.join("f");
        fs::write(&p, b"12345").unwrap();
        assert_eq!(read_regular(&p, 5).unwrap(), b"12345");
        assert!(matches!(
            read_regular(&p, 4),
            Err(ReadError::TooLarge {
                size: 5,
                max: 4,
                ..
            })
        ));
        assert_eq!(read_prefix(&p, 2).unwrap(), b"12");
        assert!(matches!(
            read_regular(&d.join("none"), 5),
            Err(ReadError::NotFound { .. })
        ));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn symlinks_and_directories_are_not_read() {
        let d = temp("kinds");
        fs::write(d.join("target"), b"secret").unwrap();
        symlink(d.join("target"), d.join("link")).unwrap();
        fs::create_dir(d.join("dir")).unwrap();
        for (name, kind) in [("link", "symlink"), ("dir", "directory")] {
            match read_regular(&d.join(name), 100) {
                Err(ReadError::NotRegular { kind: k, .. }) => assert_eq!(k, kind),
                other => panic!("{name}: {other:?}"),
            }
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn append_line_creates_0600_and_appends() {
        let d = temp("append");
        let p = d.join("log");
        append_line(&p, "one").unwrap();
        append_line(&p, "two").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "one\ntwo\n");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        symlink(&p, d.join("link")).unwrap();
        assert!(append_line(&d.join("link"), "x").is_err());
        fs::remove_dir_all(&d).unwrap();
    }
}
