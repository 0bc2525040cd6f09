//! A minimal ustar (POSIX.1-1988 tar) writer and reader for the panel's config backups:
//! regular files only, names up to 100 bytes, no links, no devices, no directories.
//!
//! The reader is for archives that may have been edited or replaced, so it is strict:
//! every header's checksum is verified, sizes are bounded by the archive, only regular
//! files are accepted, and [`read`] refuses any name that is absolute or has a `..` or
//! empty component. What a name *means* (which file it restores) is the caller's
//! decision; an unknown name is the caller's refusal.

use std::fmt;

/// Size of a tar block.
pub const BLOCK: usize = 512;
/// Largest archive read.
pub const MAX_ARCHIVE: usize = 16 * 1024 * 1024;
/// Most entries in an archive.
pub const MAX_ENTRIES: usize = 1024;
/// Longest name (the ustar `name` field; `prefix` is not used).
pub const MAX_NAME: usize = 100;

/// Why an archive was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarError {
    /// Larger than [`MAX_ARCHIVE`] or more than [`MAX_ENTRIES`] entries.
    TooLarge,
    /// A header is damaged (checksum, number field, magic) or the data is cut.
    Corrupt(usize),
    /// An entry is not a regular file.
    NotAFile(String),
    /// A name is absolute, has `..` or an empty component, or is not UTF-8.
    UnsafeName(String),
    /// A name is too long to write.
    NameTooLong(String),
}

impl fmt::Display for TarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TarError::TooLarge => write!(f, "archive too large"),
            TarError::Corrupt(at) => write!(f, "damaged archive at byte {at}"),
            TarError::NotAFile(n) => write!(f, "{n}: not a regular file (refused)"),
            TarError::UnsafeName(n) => {
                write!(f, "{n}: absolute path or .. in the archive (refused)")
            }
            TarError::NameTooLong(n) => write!(f, "{n}: name longer than {MAX_NAME} bytes"),
        }
    }
}

impl std::error::Error for TarError {}

/// One file in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its relative name.
    pub name: String,
    /// Its permission bits.
    pub mode: u32,
    /// Its bytes.
    pub data: Vec<u8>,
}

fn octal(field: &mut [u8], value: u64) {
    // Width - 1 digits, zero-padded, then NUL.
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    let bytes = text.as_bytes();
    let start = bytes.len().saturating_sub(width);
    for (dst, src) in field.iter_mut().zip(bytes.get(start..).unwrap_or_default()) {
        *dst = *src;
    }
    if let Some(last) = field.last_mut() {
        *last = 0;
    }
}

/// Writes `entries` as a ustar archive.
pub fn write(entries: &[Entry], mtime: u64) -> Result<Vec<u8>, TarError> {
    let mut out = Vec::new();
    for e in entries {
        check_name(&e.name)?;
        if e.name.len() > MAX_NAME {
            return Err(TarError::NameTooLong(e.name.clone()));
        }
        let mut h = [0u8; BLOCK];
        for (dst, src) in h.iter_mut().zip(e.name.as_bytes()) {
            *dst = *src;
        }
        octal(&mut h[100..108], u64::from(e.mode & 0o7777));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], e.data.len() as u64);
        octal(&mut h[136..148], mtime);
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let text = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(text.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&e.data);
        let pad = (BLOCK - e.data.len() % BLOCK) % BLOCK;
        out.resize(out.len() + pad, 0);
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    Ok(out)
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let text: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .filter(|&b| b != b' ')
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    if !text.iter().all(|b| (b'0'..=b'7').contains(b)) || text.len() > 22 {
        return None;
    }
    text.iter().try_fold(0u64, |n, d| {
        n.checked_mul(8)?.checked_add(u64::from(d - b'0'))
    })
}

fn check_name(name: &str) -> Result<(), TarError> {
    let unsafe_name = name.is_empty()
        || name.starts_with('/')
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        || name.chars().any(char::is_control);
    if unsafe_name {
        Err(TarError::UnsafeName(crate::proto::escape_line(
            name.as_bytes(),
            200,
        )))
    } else {
        Ok(())
    }
}

/// Reads a ustar archive written by [`write`] (or by tar, for regular files).
pub fn read(bytes: &[u8]) -> Result<Vec<Entry>, TarError> {
    if bytes.len() > MAX_ARCHIVE {
        return Err(TarError::TooLarge);
    }
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let h = bytes.get(at..at + BLOCK).ok_or(TarError::Corrupt(at))?;
        if h.iter().all(|&b| b == 0) {
            return Ok(out);
        }
        if out.len() == MAX_ENTRIES {
            return Err(TarError::TooLarge);
        }
        let stored =
            parse_octal(h.get(148..156).unwrap_or_default()).ok_or(TarError::Corrupt(at))?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if sum != stored || h.get(257..262) != Some(b"ustar".as_slice()) {
            return Err(TarError::Corrupt(at));
        }
        let field_text = |r: std::ops::Range<usize>| -> Result<String, TarError> {
            let raw: Vec<u8> = h
                .get(r)
                .unwrap_or_default()
                .iter()
                .copied()
                .take_while(|&b| b != 0)
                .collect();
            String::from_utf8(raw).map_err(|_| TarError::UnsafeName("(not UTF-8)".into()))
        };
        let prefix = field_text(345..500)?;
        let base = field_text(0..100)?;
        let name = if prefix.is_empty() {
            base
        } else {
            format!("{prefix}/{base}")
        };
        check_name(&name)?;
        let kind = h.get(156).copied().unwrap_or(0);
        if kind != b'0' && kind != 0 {
            return Err(TarError::NotAFile(crate::proto::escape_line(
                name.as_bytes(),
                200,
            )));
        }
        let size = parse_octal(h.get(124..136).unwrap_or_default()).ok_or(TarError::Corrupt(at))?;
        let mode = parse_octal(h.get(100..108).unwrap_or_default()).ok_or(TarError::Corrupt(at))?;
        let size = usize::try_from(size).map_err(|_| TarError::TooLarge)?;
        let start = at + BLOCK;
        let data = bytes
            .get(start..start.checked_add(size).ok_or(TarError::TooLarge)?)
            .ok_or(TarError::Corrupt(start))?;
        out.push(Entry {
            name,
            mode: (mode & 0o7777) as u32,
            data: data.to_vec(),
        });
        at = start + size.div_ceil(BLOCK) * BLOCK;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, data: &[u8]) -> Entry {
        Entry {
            name: name.into(),
            mode: 0o600,
            data: data.to_vec(),
        }
    }

    #[test]
    fn round_trip_and_tar_reads_it() {
        let entries = vec![
            entry("remote.conf", b"QVM_REMOTE_VMS=work\n"),
            entry("remote.d/work.key", &[b'a'; 64]),
            entry("empty", b""),
            entry("block", &[7u8; 512]),
        ];
        let bytes = write(&entries, 1_700_000_000).unwrap();
        assert_eq!(bytes.len() % BLOCK, 0);
        assert_eq!(read(&bytes).unwrap(), entries);
        // GNU tar agrees, when it is installed.
        let dir = std::env::temp_dir().join(format!("qvm-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.tar");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(out) = std::process::Command::new("tar")
            .arg("-tf")
            .arg(&path)
            .output()
        {
            assert!(out.status.success());
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "remote.conf\nremote.d/work.key\nempty\nblock\n"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_unsafe_and_damaged_archives() {
        for name in ["/etc/passwd", "../x", "a/../b", "a//b", "./a", ""] {
            assert!(write(&[entry(name, b"x")], 0).is_err(), "{name}");
            // Forge one by hand: write a safe name, then patch it (fixing the checksum).
            let mut bytes = write(&[entry("placeholder", b"x")], 0).unwrap();
            bytes[..100].fill(0);
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            bytes[148..156].copy_from_slice(b"        ");
            let sum: u32 = bytes[..512].iter().map(|&b| u32::from(b)).sum();
            bytes[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            assert!(
                matches!(read(&bytes), Err(TarError::UnsafeName(_))),
                "{name}"
            );
        }
        let good = write(&[entry("a", b"hello")], 0).unwrap();
        let mut bad_sum = good.clone();
        bad_sum[0] ^= 1;
        assert!(matches!(read(&bad_sum), Err(TarError::Corrupt(0))));
        let mut symlink = good.clone();
        symlink[156] = b'2';
        symlink[148..156].copy_from_slice(b"        ");
        let sum: u32 = symlink[..512].iter().map(|&b| u32::from(b)).sum();
        symlink[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert!(matches!(read(&symlink), Err(TarError::NotAFile(_))));
        assert!(read(&good[..600]).is_err());
        assert!(read(&[]).is_err());
        assert!(write(&[entry(&"n".repeat(101), b"")], 0).is_err());
    }
}
