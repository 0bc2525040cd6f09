//! Tidy checks that run inside `cargo test`, so CI cannot skip them: formatting, the
//! dependency promise (Cargo.lock holds our crates and `libc`, nothing else), and where
//! `unsafe`, `unwrap` and `expect` may appear.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files allowed to hold `unsafe` code; each block there needs a `// SAFETY:` comment.
const UNSAFE_ALLOWED: &[&str] = &["src/sys.rs", "hmac/src/x86_shani.rs"];

/// Our own crates; every other package in Cargo.lock must be one of REGISTRY_ALLOWED.
const OWN_CRATES: &[&str] = &["qvm-remote", "qvm-remote-hmac"];
const REGISTRY_ALLOWED: &[&str] = &["libc"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn product_sources() -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("hmac/src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(root())
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            let text = fs::read_to_string(&p).unwrap_or_default();
            (rel, text)
        })
        .collect()
}

/// The code part of a line: what precedes a `//` comment. Good enough for our own
/// sources, which keep `//` out of string literals on lines that matter here.
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn has_word(code: &str, word: &str) -> bool {
    code.match_indices(word).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + word.len()..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        boundary(before) && boundary(after)
    })
}

#[test]
fn formatting_is_rustfmt_clean() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .args(["fmt", "--all", "--", "--check"])
        .current_dir(root())
        .output()
        .expect("cargo fmt runs (install rustfmt: rustup component add rustfmt)");
    assert!(
        out.status.success(),
        "cargo fmt --check found unformatted code:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn lockfile_holds_only_our_crates_and_libc() {
    let lock = fs::read_to_string(root().join("Cargo.lock")).expect("Cargo.lock is committed");
    let mut names = Vec::new();
    let mut current: Option<String> = None;
    let mut from_registry = false;
    let flush = |name: Option<String>, registry: bool, names: &mut Vec<(String, bool)>| {
        if let Some(n) = name {
            names.push((n, registry));
        }
    };
    for line in lock.lines() {
        if line == "[[package]]" {
            flush(current.take(), from_registry, &mut names);
            from_registry = false;
        } else if let Some(v) = line.strip_prefix("name = ") {
            current = Some(v.trim_matches('"').to_string());
        } else if line.starts_with("source = ") {
            from_registry = true;
        }
    }
    flush(current.take(), from_registry, &mut names);
    assert!(names.len() >= 3, "Cargo.lock parsed to {names:?}");
    for (name, registry) in &names {
        if *registry {
            assert!(
                REGISTRY_ALLOWED.contains(&name.as_str()),
                "registry crate {name} in Cargo.lock: the product promises std + libc only"
            );
        } else {
            assert!(
                OWN_CRATES.contains(&name.as_str()),
                "unknown local crate {name} in Cargo.lock"
            );
        }
    }
}

#[test]
fn unsafe_only_in_allowed_files_and_each_block_justified() {
    let sources = product_sources();
    assert!(!sources.is_empty());
    for (path, text) in &sources {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = code_of(line);
            if !has_word(code, "unsafe") {
                continue;
            }
            assert!(
                UNSAFE_ALLOWED.contains(&path.as_str()),
                "{path}:{}: `unsafe` outside {UNSAFE_ALLOWED:?}",
                i + 1
            );
            if code.contains("unsafe {") {
                let start = i.saturating_sub(6);
                let justified = lines[start..i].iter().any(|l| l.contains("// SAFETY:"));
                assert!(
                    justified,
                    "{path}:{}: unsafe block without a `// SAFETY:` comment above it",
                    i + 1
                );
            }
        }
    }
}

#[test]
fn no_unwrap_or_expect_in_product_code() {
    // Tests may unwrap; product code handles every error. Test modules sit at the end
    // of a file behind `#[cfg(test)]`, so everything after that line is skipped.
    for (path, text) in product_sources() {
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let code = code_of(line);
            assert!(
                !code.contains(".unwrap()") && !code.contains(".expect("),
                "{path}:{}: unwrap/expect in product code: {}",
                i + 1,
                line.trim()
            );
        }
    }
}

#[test]
fn the_checks_themselves_can_fail() {
    // The word matcher must catch real uses and ignore look-alikes, or the checks
    // above would pass vacuously.
    assert!(has_word("    unsafe { f() }", "unsafe"));
    assert!(has_word("pub unsafe fn f()", "unsafe"));
    assert!(!has_word("deny(unsafe_code)", "unsafe"));
    assert!(!has_word("let not_unsafe = 1;", "unsafe"));
    assert_eq!(code_of("let x = 1; // unsafe here"), "let x = 1; ");
}
