//! The VM data dir (DESIGN §2): where it is, what is in it, and when it is trusted.
//!
//! `$QVM_REMOTE_HOME` names the data dir itself; otherwise it is `$HOME/.qvm-remote`.
//! Layout:
//!
//! ```text
//! auth.key                         the shared key, 0600
//! queue/pending/<id>.job           jobs written by clients (via .<id>.tmp)
//! queue/pending/<id>.cancel        cancel requests
//! queue/running/<id>.job           jobs the agent has sent to dom0
//! queue/results/<id>.result        dom0's answers, stored by the agent
//! queue/rejected/                  entries the agent refused to send
//! history/YYYY-MM-DD/<id>/         the client's archive
//! audit.log                        the client's and agent's log, 0600
//! agent.sock                       a stream-mode agent's socket, 0600 (see sock.rs)
//! ```
//!
//! The data dir and every directory in it must be a real directory (not a symlink),
//! owned by the effective user and not writable by group or others; missing ones are
//! created with mode 0700. Nothing else is required, so an upstream data dir (or one
//! holding only `auth.key`) is used as it is.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::id::CommandId;

/// The environment variable naming the data dir itself.
pub const ENV_DATA_DIR: &str = "QVM_REMOTE_HOME";
/// The data dir's name under `$HOME`.
pub const DEFAULT_DIR_NAME: &str = ".qvm-remote";
/// Mode of every directory we create.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file we create.
pub const FILE_MODE: u32 = 0o600;
/// Permission bits that make a directory writable by someone else.
const OTHERS_WRITE: u32 = 0o022;

/// The queue directories, in the order a job passes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueDir {
    /// `queue/pending`.
    Pending,
    /// `queue/running`.
    Running,
    /// `queue/results`.
    Results,
    /// `queue/rejected`.
    Rejected,
}

impl QueueDir {
    /// Every queue directory.
    pub const ALL: [QueueDir; 4] = [
        QueueDir::Pending,
        QueueDir::Running,
        QueueDir::Results,
        QueueDir::Rejected,
    ];

    /// The directory's name under `queue/`.
    pub fn name(self) -> &'static str {
        match self {
            QueueDir::Pending => "pending",
            QueueDir::Running => "running",
            QueueDir::Results => "results",
            QueueDir::Rejected => "rejected",
        }
    }
}

/// Why the data dir cannot be used.
#[derive(Debug)]
pub enum DataDirError {
    /// Neither `QVM_REMOTE_HOME` nor `HOME` is set (or they are empty).
    NoLocation,
    /// A directory could not be created or inspected.
    Io {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The path is a symlink.
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// The path exists but is not a directory.
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The directory belongs to someone else.
    WrongOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// Our effective uid.
        want: u32,
    },
    /// Group or others may write to it.
    Writable {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

impl fmt::Display for DataDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataDirError::NoLocation => {
                write!(f, "no data dir: set HOME or {ENV_DATA_DIR}")
            }
            DataDirError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            DataDirError::Symlink { path } => write!(
                f,
                "{}: refused: a symlink (the data dir and its directories must be real directories)",
                path.display()
            ),
            DataDirError::NotADirectory { path } => {
                write!(f, "{}: refused: not a directory", path.display())
            }
            DataDirError::WrongOwner { path, uid, want } => write!(
                f,
                "{}: refused: owned by uid {uid}, not by you (uid {want})",
                path.display()
            ),
            DataDirError::Writable { path, mode } => write!(
                f,
                "{}: refused: mode {mode:04o} lets others write to it (want 0700)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for DataDirError {}

/// A checked data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Where the data dir is, from the two environment values (`QVM_REMOTE_HOME`,
    /// `HOME`). An empty value counts as unset.
    pub fn locate(
        data_dir: Option<OsString>,
        home: Option<OsString>,
    ) -> Result<PathBuf, DataDirError> {
        if let Some(d) = data_dir.filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(d));
        }
        match home.filter(|h| !h.is_empty()) {
            Some(h) => Ok(PathBuf::from(h).join(DEFAULT_DIR_NAME)),
            None => Err(DataDirError::NoLocation),
        }
    }

    /// Locates the data dir from the environment and opens it.
    pub fn from_env() -> Result<DataDir, DataDirError> {
        let root = DataDir::locate(std::env::var_os(ENV_DATA_DIR), std::env::var_os("HOME"))?;
        DataDir::open(root)
    }

    /// Opens the data dir at `root`, creating it and its directories (0700) where
    /// missing and refusing any that is not trustworthy. The parent of `root` must
    /// exist.
    pub fn open(root: PathBuf) -> Result<DataDir, DataDirError> {
        ensure_dir(&root)?;
        let dd = DataDir { root };
        ensure_dir(&dd.root.join("queue"))?;
        for q in QueueDir::ALL {
            ensure_dir(&dd.queue(q))?;
        }
        ensure_dir(&dd.history())?;
        Ok(dd)
    }

    /// The data dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `auth.key`.
    pub fn key_path(&self) -> PathBuf {
        self.root.join("auth.key")
    }

    /// `audit.log`.
    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit.log")
    }

    /// `agent.sock`.
    pub fn agent_socket(&self) -> PathBuf {
        self.root.join("agent.sock")
    }

    /// `history/`.
    pub fn history(&self) -> PathBuf {
        self.root.join("history")
    }

    /// `history/<day>/<id>/`.
    pub fn history_entry(&self, id: &CommandId) -> PathBuf {
        self.history().join(id.day()).join(id.as_str())
    }

    /// A queue directory.
    pub fn queue(&self, q: QueueDir) -> PathBuf {
        self.root.join("queue").join(q.name())
    }

    /// `<queue dir>/<id>.job`.
    pub fn job_path(&self, q: QueueDir, id: &CommandId) -> PathBuf {
        self.queue(q).join(job_name(id))
    }

    /// `queue/pending/<id>.cancel`.
    pub fn cancel_path(&self, id: &CommandId) -> PathBuf {
        self.queue(QueueDir::Pending).join(cancel_name(id))
    }

    /// `queue/results/<id>.result`.
    pub fn result_path(&self, id: &CommandId) -> PathBuf {
        self.queue(QueueDir::Results).join(result_name(id))
    }
}

/// `<id>.job`.
pub fn job_name(id: &CommandId) -> String {
    format!("{id}.job")
}

/// `<id>.cancel`.
pub fn cancel_name(id: &CommandId) -> String {
    format!("{id}.cancel")
}

/// `<id>.result`.
pub fn result_name(id: &CommandId) -> String {
    format!("{id}.result")
}

/// `.<id>.tmp`: the name a job or result is written under before its rename.
pub fn tmp_name(id: &CommandId) -> String {
    format!(".{id}.tmp")
}

/// True for a temporary name (`.*.tmp`), which readers of a queue skip.
pub fn is_tmp_name(name: &[u8]) -> bool {
    name.len() > ".tmp".len() + 1 && name.starts_with(b".") && name.ends_with(b".tmp")
}

/// Makes sure `path` is a trustworthy directory, creating it (0700) if missing.
pub fn ensure_dir(path: &Path) -> Result<(), DataDirError> {
    let io_err = |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(path) {
        Ok(meta) => check_dir(path, &meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match DirBuilder::new().mode(DIR_MODE).create(path) {
                Ok(()) => {}
                // Another process made it first; it is checked below like any other.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(e)),
            }
            let meta = fs::symlink_metadata(path).map_err(io_err)?;
            check_dir(path, &meta)
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Refuses a directory that is a symlink, someone else's, or writable by others.
pub fn check_dir(path: &Path, meta: &fs::Metadata) -> Result<(), DataDirError> {
    if meta.file_type().is_symlink() {
        return Err(DataDirError::Symlink {
            path: path.to_path_buf(),
        });
    }
    if !meta.is_dir() {
        return Err(DataDirError::NotADirectory {
            path: path.to_path_buf(),
        });
    }
    let want = crate::sys::geteuid();
    if meta.uid() != want {
        return Err(DataDirError::WrongOwner {
            path: path.to_path_buf(),
            uid: meta.uid(),
            want,
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & OTHERS_WRITE != 0 {
        return Err(DataDirError::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn temp(name: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("qvm-remote-datadir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn locate_prefers_the_override_and_ignores_empty_values() {
        let table: &[(Option<&str>, Option<&str>, Option<&str>)] = &[
            (Some("/d"), Some("/h"), Some("/d")),
            (None, Some("/h"), Some("/h/.qvm-remote")),
            (Some(""), Some("/h"), Some("/h/.qvm-remote")),
            (None, None, None),
            (Some(""), Some(""), None),
        ];
        for (d, h, want) in table {
            let got = DataDir::locate(d.map(OsString::from), h.map(OsString::from)).ok();
            assert_eq!(got, want.map(PathBuf::from), "{d:?} {h:?}");
        }
    }

    #[test]
    fn open_creates_the_layout_with_0700() {
        let root = temp("layout");
        let dd = DataDir::open(root.clone()).unwrap();
        for p in [
            root.clone(),
            root.join("queue"),
            dd.queue(QueueDir::Pending),
            dd.queue(QueueDir::Running),
            dd.queue(QueueDir::Results),
            dd.queue(QueueDir::Rejected),
            dd.history(),
        ] {
            let m = fs::symlink_metadata(&p).unwrap();
            assert!(m.is_dir(), "{}", p.display());
            assert_eq!(m.permissions().mode() & 0o777, 0o700, "{}", p.display());
        }
        // Opening again accepts what is there.
        DataDir::open(root.clone()).unwrap();
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn untrustworthy_dirs_are_refused_naming_the_path() {
        let root = temp("refuse");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        let e = DataDir::open(root.clone()).unwrap_err();
        assert!(matches!(e, DataDirError::Writable { .. }), "{e}");
        assert!(e.to_string().contains(&root.display().to_string()));
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();

        let link = temp("refuse-link");
        symlink(&root, &link).unwrap();
        let e = DataDir::open(link.clone()).unwrap_err();
        assert!(matches!(e, DataDirError::Symlink { .. }), "{e}");

        // A queue directory that is a symlink out of the data dir is refused too.
        let elsewhere = temp("refuse-elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::create_dir(root.join("queue")).unwrap();
        symlink(&elsewhere, root.join("queue/pending")).unwrap();
        let e = DataDir::open(root.clone()).unwrap_err();
        assert!(e.to_string().contains("queue/pending"), "{e}");

        let file = temp("refuse-file");
        fs::write(&file, b"x").unwrap();
        let e = DataDir::open(file.clone()).unwrap_err();
        assert!(matches!(e, DataDirError::NotADirectory { .. }), "{e}");

        for p in [&link, &file] {
            fs::remove_file(p).unwrap();
        }
        fs::remove_dir_all(&root).unwrap();
        fs::remove_dir_all(&elsewhere).unwrap();
    }

    #[test]
    fn tmp_names() {
        for (name, want) in [
            (&b".20261204-153000-1-0123456789abcdef.tmp"[..], true),
            (b".x.tmp", true),
            (b".tmp", false),
            (b"..tmp", false),
            (b"x.tmp", false),
            (b".x.job", false),
        ] {
            assert_eq!(
                is_tmp_name(name),
                want,
                "{:?}",
                String::from_utf8_lossy(name)
            );
        }
    }
}
