//! Keys: the 256-bit secret a VM and dom0 share (DESIGN §2).
//!
//! On disk a key is 64 hex characters (either case) and an optional newline. A key
//! file is trusted only if it is a regular file, not a symlink, owned by root (or by
//! the invoking user when not run as root) and not readable or writable by group or
//! others. `Debug` never prints key material; the only derived text shown to people is
//! the fingerprint: the first 16 hex characters of SHA-256 of the key bytes.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use qvm_remote_hmac::{hex, sha256};

use crate::atomic::{self, Durability};
use crate::rand;

/// Key length in bytes.
pub const KEY_LEN: usize = 32;
/// The most bytes read from a key file: 64 hex characters plus generous whitespace.
pub const MAX_KEY_FILE: u64 = 256;
/// Length of a printed fingerprint, in hex characters.
pub const FINGERPRINT_HEX: usize = 16;

/// A shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key {{ fingerprint: {} }}", self.fingerprint())
    }
}

/// Why a key could not be read or used.
#[derive(Debug)]
pub enum KeyError {
    /// The file could not be opened or read.
    Io {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The text is not 64 hex characters.
    Malformed {
        /// The key file, or `-` for text given directly.
        path: PathBuf,
    },
    /// The file's mode or owner makes it untrustworthy.
    Insecure {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            KeyError::Malformed { path } => write!(
                f,
                "{}: not a key (want 64 hex characters, 256 bits)",
                path.display()
            ),
            KeyError::Insecure { path, why } => {
                write!(f, "{}: refused: {why}", path.display())
            }
        }
    }
}

impl std::error::Error for KeyError {}

impl Key {
    /// A new random key from `/dev/urandom`.
    pub fn generate() -> io::Result<Key> {
        let mut k = [0u8; KEY_LEN];
        rand::fill(&mut k)?;
        Ok(Key(k))
    }

    /// Parses key text: 64 hex characters, surrounding whitespace ignored.
    pub fn parse(text: &str) -> Option<Key> {
        let t = text.trim();
        if t.len() != KEY_LEN * 2 {
            return None;
        }
        let bytes = hex::decode(t).ok()?;
        let arr: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(Key(arr))
    }

    /// The raw key bytes, for MAC computation.
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Lowercase hex of the key: the on-disk form. Handle with care.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// The first 16 hex characters of SHA-256 of the key bytes.
    pub fn fingerprint(&self) -> String {
        let mut h = hex::encode(&sha256(&self.0));
        h.truncate(FINGERPRINT_HEX);
        h
    }

    /// Reads and checks a key file (see the module doc for what is refused).
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(crate::sys::O_NOFOLLOW)
            .open(path)
            .map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        check_secret_file(path, &meta)?;
        let mut text = String::new();
        file.take(MAX_KEY_FILE)
            .read_to_string(&mut text)
            .map_err(|_| KeyError::Malformed {
                path: path.to_path_buf(),
            })?;
        Key::parse(&text).ok_or_else(|| KeyError::Malformed {
            path: path.to_path_buf(),
        })
    }

    /// Writes the key to a new file created with mode 0600 in one step; never
    /// overwrites (the file must not exist).
    pub fn store_new(&self, path: &Path) -> io::Result<()> {
        atomic::create_new(path, self.file_text().as_bytes(), Durability::Synced)
    }

    /// Writes the key to `path`, replacing any old one atomically (tmp + rename), the
    /// new file created with mode 0600 in one step.
    pub fn store_replace(&self, path: &Path) -> io::Result<()> {
        atomic::replace(path, self.file_text().as_bytes(), Durability::Synced)
    }

    /// The key file's contents: the hex key and a newline.
    fn file_text(&self) -> String {
        format!("{}\n", self.to_hex())
    }
}

/// The uid allowed to own secret and config files: root, or the invoking user when not
/// run as root (that is how tests run).
pub fn trusted_owner() -> u32 {
    crate::sys::geteuid()
}

/// Refuses a secret file that is not a regular file owned by the trusted owner with no
/// group or other permission bits.
pub fn check_secret_file(path: &Path, meta: &fs::Metadata) -> Result<(), KeyError> {
    let insecure = |why: String| KeyError::Insecure {
        path: path.to_path_buf(),
        why,
    };
    if !meta.file_type().is_file() {
        return Err(insecure("not a regular file".into()));
    }
    let owner = trusted_owner();
    if meta.uid() != owner && meta.uid() != 0 {
        return Err(insecure(format!(
            "owned by uid {}, want {owner} or root",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(insecure(format!(
            "mode {mode:04o} lets others read or write it (want 0600)"
        )));
    }
    Ok(())
}

/// Refuses a directory that holds secrets or dom0 state unless it is a real directory
/// (not a symlink: pass `symlink_metadata`), owned by the trusted owner or root, with no
/// group or other permission bits: the keys dir, the approval queues.
pub fn check_private_dir(path: &Path, meta: &fs::Metadata) -> Result<(), KeyError> {
    let insecure = |why: String| KeyError::Insecure {
        path: path.to_path_buf(),
        why,
    };
    if !meta.is_dir() {
        return Err(insecure("not a directory".into()));
    }
    check_not_writable_by_others(path, meta)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(insecure(format!("mode {mode:04o}, want 0700")));
    }
    Ok(())
}

/// Refuses a config-like file or directory that others could write: group- or
/// world-writable, or owned by someone other than the trusted owner or root.
pub fn check_not_writable_by_others(path: &Path, meta: &fs::Metadata) -> Result<(), KeyError> {
    let owner = trusted_owner();
    if meta.uid() != owner && meta.uid() != 0 {
        return Err(KeyError::Insecure {
            path: path.to_path_buf(),
            why: format!("owned by uid {}, want {owner} or root", meta.uid()),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(KeyError::Insecure {
            path: path.to_path_buf(),
            why: format!("mode {mode:04o} is writable by group or others"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_64_hex_either_case() {
        let lower = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let a = Key::parse(lower).unwrap();
        let b = Key::parse(&format!("{}\n", lower.to_uppercase())).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_hex(), lower);
        for bad in [
            "",
            &lower[..63],
            &format!("{lower}0"),
            &lower.replace('a', "g"),
        ] {
            assert!(Key::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn private_dirs_must_be_real_dirs_with_mode_0700() {
        let dir = std::env::temp_dir().join(format!("qvm-keys-dir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let check = |p: &Path| check_private_dir(p, &fs::symlink_metadata(p).unwrap());
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check(&dir).is_ok());
        for mode in [0o750, 0o705, 0o770] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
            let e = check(&dir).unwrap_err().to_string();
            assert!(e.contains(&format!("{mode:04o}")), "{e}");
        }
        let link = dir.with_extension("link");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(check(&link)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
        fs::remove_file(&link).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_shows_only_the_fingerprint() {
        let k = Key::parse(&"ab".repeat(32)).unwrap();
        let d = format!("{k:?}");
        assert!(!d.contains("abab"), "{d}");
        assert!(d.contains(&k.fingerprint()));
        assert_eq!(k.fingerprint().len(), FINGERPRINT_HEX);
    }
}
