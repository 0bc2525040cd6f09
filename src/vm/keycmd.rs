//! `qvm-remote key gen|show|import` (DESIGN §2: `auth.key`, 64 hex characters, 0600).
//!
//! Only the fingerprint is printed, unless `key show --full` asks for the key itself
//! (which is how dom0 reads it: `qvm-run --pass-io VM 'qvm-remote key show --full' |
//! qvm-remote-dom0 authorize VM`). `key gen` never replaces a key: replacing one means
//! re-authorising the VM in dom0, so that takes the explicit `key import`.

use std::io::{BufRead, BufReader, Read};

use super::cli::KeyAction;
use super::client::load_key;
use super::datadir::DataDir;
use super::files;
use super::{Console, Error};
use crate::keys::{Key, MAX_KEY_FILE};

/// Runs a `key` action.
pub fn run(dd: &DataDir, action: &KeyAction, console: &mut Console<'_>) -> Result<(), Error> {
    match action {
        KeyAction::Gen => gen(dd, console),
        KeyAction::Show { full } => {
            let key = load_key(dd)?;
            let text = if *full {
                key.to_hex()
            } else {
                key.fingerprint()
            };
            writeln!(console.out, "{text}").map_err(Error::Output)
        }
        KeyAction::Import { key } => import(dd, key.as_deref(), console),
    }
}

fn gen(dd: &DataDir, console: &mut Console<'_>) -> Result<(), Error> {
    let path = dd.key_path();
    if files::exists(&path) {
        return Err(Error::KeyExists { path });
    }
    let key = Key::generate().map_err(|source| Error::Write {
        path: path.clone(),
        source,
    })?;
    // store_new is create_new: a key that appears meanwhile is not overwritten either.
    key.store_new(&path).map_err(|source| Error::Write {
        path: path.clone(),
        source,
    })?;
    writeln!(
        console.out,
        "created {} (fingerprint {})\n\
         Authorise it in dom0, which reads the key on stdin:\n  \
         qvm-run --pass-io --no-gui VM 'qvm-remote key show --full' | qvm-remote-dom0 authorize VM\n\
         where VM is this VM's name.",
        path.display(),
        key.fingerprint()
    )
    .map_err(Error::Output)
}

fn import(dd: &DataDir, given: Option<&str>, console: &mut Console<'_>) -> Result<(), Error> {
    let (text, from) = match given {
        Some(t) => (t.to_string(), "the argument"),
        None => (read_key_line(console)?, "stdin"),
    };
    let key = Key::parse(&text).ok_or(Error::NotAKey { from })?;
    let path = dd.key_path();
    key.store_replace(&path).map_err(|source| Error::Write {
        path: path.clone(),
        source,
    })?;
    writeln!(
        console.out,
        "imported {} (fingerprint {})",
        path.display(),
        key.fingerprint()
    )
    .map_err(Error::Output)
}

/// The first line of stdin, at most [`MAX_KEY_FILE`] bytes: a key pasted into a
/// terminal ends with Enter, not Ctrl-D.
fn read_key_line(console: &mut Console<'_>) -> Result<String, Error> {
    let mut line = Vec::new();
    BufReader::new((&mut console.input).take(MAX_KEY_FILE))
        .read_until(b'\n', &mut line)
        .map_err(Error::Stdin)?;
    Ok(String::from_utf8_lossy(&line).into_owned())
}
