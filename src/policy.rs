//! The dom0 policy (shared/DESIGN.md §7): which VM may run which command, and which
//! commands wait for a human.
//!
//! This module is pure except for [`load`], [`read_policy_file`] and [`stamp`], which
//! read and stat the policy file. It holds:
//! - the parser: one rule per line, `VM ACTION PATTERN…` or `VM level NAME`, `#`
//!   comments; every error names the file and the line;
//! - the levels `deny`, `monitor`, `manage` and `full`, each an exact list of patterns
//!   ([`level_patterns`]; the README prints the same lists);
//! - the simple-command classifier ([`split_plain_words`], [`classify`]): only a body
//!   that bash would run as one external program, with no expansion of any kind, is an
//!   argv that argv patterns can match; every other body is `@script`;
//! - the matcher ([`Policy::decide`]): first match wins, no match denies;
//! - the checks of `policy lint`: rules no job can match ([`Policy::dead_rules`]) and
//!   rules an earlier one shadows ([`Policy::shadowed`]).
//!
//! Pattern words: `*` as the last word matches all remaining words (none included), `*`
//! elsewhere matches exactly one word, `?` matches exactly one word wherever it stands
//! (so a pattern can end in "exactly one more word"), any other word matches only
//! itself, and the program word matches the command's first word as written. `?` is an
//! addition to DESIGN §7: as a literal it could never match (the classifier refuses
//! glob characters), so giving it a meaning changes no policy that worked before. A word
//! that no simple command can hold in its place (`qvm-ls;`, `'x'`, `qvm-*`, or a shell
//! builtin as the program word) is still a word: the rule parses and never matches, so
//! it cannot take the rest of the file down; `policy lint` reports it.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::is_valid_vm_name;
use crate::keys;

/// Largest policy file read; a bigger one is an error (and so denies everything).
pub const MAX_POLICY_FILE: u64 = 256 * 1024;
/// Longest policy line.
pub const MAX_LINE_LEN: usize = 4096;
/// Most rules a policy may hold after levels are expanded.
pub const MAX_RULES: usize = 4096;
/// Most words in one pattern.
pub const MAX_PATTERN_WORDS: usize = 64;
/// Longest tag name in `@tag:T` (Qubes itself allows less in practice).
pub const MAX_TAG_LEN: usize = 64;
/// Longest body the classifier treats as a simple command; longer ones are `@script`.
pub const MAX_SIMPLE_BODY: usize = 64 * 1024;
/// Most words in a simple command; more make it `@script`.
pub const MAX_SIMPLE_WORDS: usize = 1024;

/// The bytes a plain word may hold besides ASCII letters and digits. None of them is
/// special to bash inside a word: no quoting, expansion, globbing, redirection,
/// comment, history or control operator starts with any of them.
pub const PLAIN_PUNCTUATION: &str = "-_./:=+,@%";

/// Bash reserved words and builtins made only of plain bytes, separated by spaces. A
/// body whose first word is one of these is run by bash itself, not as an external
/// program, so it is a script. The list is bash 5's `compgen -k` and `compgen -b`; a
/// test checks it against the local bash.
pub const SHELL_WORDS: &str = "\
    if then else elif fi case esac for select while until do done in function time coproc \
    . : alias bg bind break builtin caller cd command compgen complete compopt \
    continue declare dirs disown echo enable eval exec exit export false fc fg \
    getopts hash help history jobs kill let local logout mapfile popd printf pushd \
    pwd read readarray readonly return set shift shopt source suspend test times \
    trap true type typeset ulimit umask unalias unset wait";

/// The rules of `monitor`: reading VM state, never changing it. Each pattern was
/// checked against the real tool's argument parser, options anywhere included:
/// `qvm-prefs`, `qvm-features` and `qvm-service` need a third word to change anything,
/// `qubes-prefs` a second, and `qvm-tags` a subcommand other than `list`.
pub const MONITOR: &[&str] = &[
    "qvm-ls *",
    "qvm-check *",
    "qvm-prefs ?",
    "qvm-prefs ? ?",
    "qvm-features ?",
    "qvm-features ? ?",
    "qvm-service ?",
    "qvm-service ? ?",
    "qvm-tags ?",
    "qvm-tags ? list",
    "qvm-tags ? list ?",
    "qubes-prefs",
    "qubes-prefs ?",
    "qvm-volume list *",
    "qvm-volume info *",
    "xl info *",
    "xl list *",
    "xl vcpu-list *",
];

/// What `manage` adds to `monitor`: VM lifecycle and preference changes.
pub const MANAGE_EXTRA: &[&str] = &[
    "qvm-start *",
    "qvm-shutdown *",
    "qvm-pause *",
    "qvm-unpause *",
    "qvm-kill *",
    "qvm-prefs ? ? ?",
    "qvm-features ? ? ?",
    "qvm-service ? ? ?",
    "qvm-tags ? add *",
    "qvm-tags ? del ?",
];

/// The rules of `full`: every simple command and every script.
pub const FULL: &[&str] = &["*", "@script"];

/// A policy level (`VM level NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Nothing: `deny *` and `deny @script`, so later lines never apply to the VM.
    Deny,
    /// Read-only inspection ([`MONITOR`]).
    Monitor,
    /// `monitor` plus lifecycle and preference changes ([`MANAGE_EXTRA`]).
    Manage,
    /// Anything, scripts included ([`FULL`]).
    Full,
}

impl Level {
    /// Every level, weakest first.
    pub const ALL: [Level; 4] = [Level::Deny, Level::Monitor, Level::Manage, Level::Full];

    /// The level's name in the policy file.
    pub fn name(self) -> &'static str {
        match self {
            Level::Deny => "deny",
            Level::Monitor => "monitor",
            Level::Manage => "manage",
            Level::Full => "full",
        }
    }

    fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == s)
    }

    /// The action of every rule the level expands to.
    pub fn action(self) -> Action {
        match self {
            Level::Deny => Action::Deny,
            _ => Action::Allow,
        }
    }
}

/// The patterns a level expands to, in order.
pub fn level_patterns(level: Level) -> Vec<&'static str> {
    match level {
        Level::Deny | Level::Full => FULL.to_vec(),
        Level::Monitor => MONITOR.to_vec(),
        Level::Manage => MONITOR.iter().chain(MANAGE_EXTRA).copied().collect(),
    }
}

/// Every level with its rules, as `policy levels` prints it and the README shows it.
pub fn describe_levels() -> String {
    let mut out = String::new();
    for level in Level::ALL {
        let action = level.action().name();
        out.push_str(&format!("VM level {}\n", level.name()));
        for p in level_patterns(level) {
            out.push_str(&format!("    VM {action} {p}\n"));
        }
    }
    out
}

/// What a rule does with a matching job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run it.
    Allow,
    /// Refuse it (`denied`, exit 126).
    Deny,
    /// Park it until dom0 approves or denies it.
    Ask,
}

impl Action {
    /// The word in the policy file.
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Ask => "ask",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which VMs a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmMatch {
    /// One VM by name.
    Name(String),
    /// `@anyvm`.
    AnyVm,
    /// `@tag:T`: VMs that carry tag T (asked from `qvm-tags VM list`).
    Tag(String),
}

impl fmt::Display for VmMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmMatch::Name(n) => f.write_str(n),
            VmMatch::AnyVm => f.write_str("@anyvm"),
            VmMatch::Tag(t) => write!(f, "@tag:{t}"),
        }
    }
}

/// One word of an argv pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Word {
    /// Matches only this word.
    Lit(String),
    /// Matches exactly one word (`*` before the last position, `?` anywhere).
    One,
    /// Matches all remaining words, none included (`*` in the last position).
    Rest,
}

/// What a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// A simple command whose words match these.
    Argv(Vec<Word>),
    /// Any body that is not a simple command.
    Script,
}

impl Pattern {
    /// The first word that keeps this pattern from ever matching, and why: a glob
    /// inside a word, a byte no plain word holds, or a program word that bash would
    /// run itself (or that is an assignment or a relative path).
    pub fn dead_word(&self) -> Option<Syntax> {
        let Pattern::Argv(words) = self else {
            return None;
        };
        words.iter().enumerate().find_map(|(i, word)| match word {
            Word::Lit(w) if w.contains(['*', '?', '[', ']']) => Some(Syntax::GlobInWord(w.clone())),
            Word::Lit(w) if !is_plain_word(w) => Some(Syntax::NotPlain(w.clone())),
            Word::Lit(w) if i == 0 && !can_be_program(w) => Some(Syntax::BadProgram(w.clone())),
            _ => None,
        })
    }

    fn matches(&self, cmd: &Command) -> bool {
        match (self, cmd) {
            (Pattern::Script, Command::Script) => true,
            (Pattern::Argv(p), Command::Simple(words)) => argv_matches(p, words),
            _ => false,
        }
    }

    /// True if `self` matches every command that `other` matches.
    fn covers(&self, other: &Pattern) -> bool {
        match (self, other) {
            (Pattern::Script, Pattern::Script) => true,
            (Pattern::Argv(a), Pattern::Argv(b)) => argv_covers(a, b),
            _ => false,
        }
    }
}

/// Where a rule came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Written as it is on this line.
    Line,
    /// One of the rules of `VM level NAME` on this line.
    Level(Level),
}

/// One rule, after levels are expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Which VMs.
    pub vm: VmMatch,
    /// What happens.
    pub action: Action,
    /// Which commands.
    pub pattern: Pattern,
    /// The pattern as written (`qvm-ls *`, `@script`).
    pub pattern_text: String,
    /// 1-based line in the policy file.
    pub line: usize,
    /// Written out or expanded from a level.
    pub source: Source,
}

impl Rule {
    /// `FILE:LINE: work allow qvm-ls *`, or for a level's rule
    /// `FILE:LINE: work level monitor (allow qvm-ls *)`: what logs and reasons name.
    pub fn describe(&self, path: &Path) -> String {
        format!("{}:{}: {self}", path.display(), self.line)
    }
}

impl fmt::Display for Rule {
    /// The rule without its place: `work allow qvm-ls *`, or
    /// `work level monitor (allow qvm-ls *)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            Source::Line => write!(f, "{} {} {}", self.vm, self.action, self.pattern_text),
            Source::Level(l) => write!(
                f,
                "{} level {} ({} {})",
                self.vm,
                l.name(),
                self.action,
                self.pattern_text
            ),
        }
    }
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The file it came from, for messages.
    pub path: PathBuf,
    /// The rules in file order, levels expanded in place.
    pub rules: Vec<Rule>,
}

/// A job's body as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A simple command: its words as written (the program word unresolved).
    Simple(Vec<String>),
    /// Anything else.
    Script,
}

/// The outcome of [`Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// The rule that decided, or why no rule did, for logs and reasons.
    pub rule: String,
}

impl Policy {
    /// The policy of `text`, or the first error in it.
    pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
        let (policy, mut errors) = Policy::parse_all(path, text);
        if errors.is_empty() {
            Ok(policy)
        } else {
            Err(errors.swap_remove(0))
        }
    }

    /// Parses every line, collecting every error (for `policy lint`). The policy holds
    /// the lines that parsed; it must not be used to decide anything if there were
    /// errors.
    pub fn parse_all(path: &Path, text: &str) -> (Policy, Vec<PolicyError>) {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line = i + 1;
            let syntax = |problem| PolicyError::Syntax {
                path: path.to_path_buf(),
                line,
                problem,
            };
            match parse_line(raw, line) {
                Ok(mut r) => {
                    if rules.len() + r.len() > MAX_RULES {
                        errors.push(syntax(Syntax::TooManyRules));
                        break;
                    }
                    rules.append(&mut r);
                }
                Err(problem) => errors.push(syntax(problem)),
            }
        }
        let policy = Policy {
            path: path.to_path_buf(),
            rules,
        };
        (policy, errors)
    }

    /// Decides a job of `vm`. `tags` is asked for the VM's tags only when an `@tag:`
    /// rule's pattern matches, and at most once; if it fails, the job is denied (a
    /// rule that cannot be evaluated must not let a later rule through).
    pub fn decide(
        &self,
        vm: &str,
        cmd: &Command,
        tags: &mut dyn FnMut() -> Result<Vec<String>, String>,
    ) -> Decision {
        let mut known_tags: Option<Vec<String>> = None;
        for rule in &self.rules {
            if !rule.pattern.matches(cmd) {
                continue;
            }
            let applies = match &rule.vm {
                VmMatch::AnyVm => true,
                VmMatch::Name(n) => n == vm,
                VmMatch::Tag(t) => {
                    if known_tags.is_none() {
                        match tags() {
                            Ok(list) => known_tags = Some(list),
                            Err(why) => {
                                return Decision {
                                    action: Action::Deny,
                                    rule: format!(
                                        "{} (tags of {vm} unavailable: {why})",
                                        rule.describe(&self.path)
                                    ),
                                }
                            }
                        }
                    }
                    known_tags.as_ref().is_some_and(|l| l.contains(t))
                }
            };
            if applies {
                return Decision {
                    action: rule.action,
                    rule: rule.describe(&self.path),
                };
            }
        }
        Decision {
            action: Action::Deny,
            rule: format!("{}: no rule matches (default deny)", self.path.display()),
        }
    }

    /// Rules that no job can ever match, because a word of theirs can never be a word
    /// of a simple command in its place, with the reason (for `policy lint`).
    pub fn dead_rules(&self) -> Vec<(&Rule, Syntax)> {
        self.rules
            .iter()
            .filter_map(|rule| rule.pattern.dead_word().map(|why| (rule, why)))
            .collect()
    }

    /// Rules that can never match because an earlier rule, on an earlier line, matches
    /// every job they match: `(shadowed, shadowing)` pairs, first shadowing rule only.
    /// For a `level` line, only a line whose every rule is shadowed is reported (by its
    /// first rule), since the rest of the level still applies.
    pub fn shadowed(&self) -> Vec<(&Rule, &Rule)> {
        let mut found: Vec<(&Rule, &Rule)> = Vec::new();
        let mut i = 0;
        while i < self.rules.len() {
            // The rules of one line: one, or a whole level.
            let line = self.rules.get(i).map_or(0, |r| r.line);
            let end = self.rules[i..]
                .iter()
                .position(|r| r.line != line)
                .map_or(self.rules.len(), |n| i + n);
            let group = &self.rules[i..end];
            let earlier = &self.rules[..i];
            let shadows: Vec<Option<&Rule>> = group
                .iter()
                .map(|r| {
                    earlier
                        .iter()
                        .find(|e| vm_covers(&e.vm, &r.vm) && e.pattern.covers(&r.pattern))
                })
                .collect();
            let is_level = group.iter().any(|r| r.source != Source::Line);
            if is_level {
                if let (Some(first), true) = (group.first(), shadows.iter().all(Option::is_some)) {
                    if let Some(Some(by)) = shadows.first() {
                        found.push((first, by));
                    }
                }
            } else {
                for (r, by) in group.iter().zip(shadows) {
                    if let Some(by) = by {
                        found.push((r, by));
                    }
                }
            }
            i = end;
        }
        found
    }

    /// The VM names the rules mention (for `policy lint`'s unknown-VM check).
    pub fn vm_names(&self) -> Vec<(usize, &str)> {
        let mut out: Vec<(usize, &str)> = Vec::new();
        for r in &self.rules {
            if let VmMatch::Name(n) = &r.vm {
                if !out.iter().any(|(l, m)| *l == r.line && *m == n) {
                    out.push((r.line, n));
                }
            }
        }
        out
    }
}

fn vm_covers(a: &VmMatch, b: &VmMatch) -> bool {
    a == &VmMatch::AnyVm || a == b
}

fn argv_matches(pattern: &[Word], words: &[String]) -> bool {
    let mut p = pattern;
    let mut w = words;
    loop {
        match (p.split_first(), w.split_first()) {
            (None, None) => return true,
            (Some((Word::Rest, _)), _) => return true,
            (Some((Word::One, pr)), Some((_, wr))) => (p, w) = (pr, wr),
            (Some((Word::Lit(l), pr)), Some((word, wr))) if l == word => (p, w) = (pr, wr),
            _ => return false,
        }
    }
}

/// True if pattern `a` matches every argv that pattern `b` matches.
fn argv_covers(a: &[Word], b: &[Word]) -> bool {
    let mut a = a;
    let mut b = b;
    loop {
        match (a.split_first(), b.split_first()) {
            (None, None) => return true,
            (Some((Word::Rest, _)), _) => return true,
            // b still matches argvs of several lengths (or needs a word a has not).
            (None, Some(_)) | (Some(_), None) | (Some(_), Some((Word::Rest, _))) => return false,
            (Some((Word::One, ar)), Some((_, br))) => (a, b) = (ar, br),
            (Some((Word::Lit(x), ar)), Some((Word::Lit(y), br))) if x == y => (a, b) = (ar, br),
            (Some((Word::Lit(_), _)), Some(_)) => return false,
        }
    }
}

/// What is wrong with a policy line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Syntax {
    /// Longer than [`MAX_LINE_LEN`].
    LineTooLong,
    /// Holds a byte that is not printable ASCII or whitespace.
    NotText,
    /// Fewer than three fields.
    MissingFields,
    /// The VM field is not a VM name, `@anyvm` or `@tag:T`.
    BadVm(String),
    /// The action is not `allow`, `deny`, `ask` or `level`.
    UnknownAction(String),
    /// `level` names no known level.
    UnknownLevel(String),
    /// `level` takes exactly one name.
    LevelArity,
    /// `@script` must be the whole pattern.
    ScriptNotAlone,
    /// A pattern word with glob characters inside it.
    GlobInWord(String),
    /// A pattern word that no simple command can hold.
    NotPlain(String),
    /// A program word that no simple command can start with.
    BadProgram(String),
    /// More than [`MAX_PATTERN_WORDS`] words.
    TooManyWords,
    /// More than [`MAX_RULES`] rules.
    TooManyRules,
}

impl fmt::Display for Syntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Syntax::LineTooLong => write!(f, "line longer than {MAX_LINE_LEN} bytes"),
            Syntax::NotText => f.write_str("not printable ASCII text"),
            Syntax::MissingFields => {
                f.write_str("want `VM ACTION PATTERN...` or `VM level NAME`")
            }
            Syntax::BadVm(v) => write!(
                f,
                "{v:?} is not a VM name, @anyvm or @tag:TAG"
            ),
            Syntax::UnknownAction(a) => {
                write!(f, "unknown action {a:?} (want allow, deny, ask or level)")
            }
            Syntax::UnknownLevel(l) => write!(
                f,
                "unknown level {l:?} (want deny, monitor, manage or full)"
            ),
            Syntax::LevelArity => f.write_str("`level` takes exactly one level name"),
            Syntax::ScriptNotAlone => f.write_str("@script must be the whole pattern"),
            Syntax::GlobInWord(w) => write!(
                f,
                "{w:?} can never match: patterns have no globs; `*` and `?` must be words of their own"
            ),
            Syntax::NotPlain(w) => write!(
                f,
                "{w:?} can never match: a simple command's words hold only letters, digits and {PLAIN_PUNCTUATION}"
            ),
            Syntax::BadProgram(w) => write!(
                f,
                "{w:?} can never match as the program word (an assignment, a relative path, or a shell builtin or keyword runs as a script)"
            ),
            Syntax::TooManyWords => write!(f, "more than {MAX_PATTERN_WORDS} pattern words"),
            Syntax::TooManyRules => write!(f, "more than {MAX_RULES} rules"),
        }
    }
}

/// Why a policy could not be used. Any of these denies every job.
#[derive(Debug)]
pub enum PolicyError {
    /// The file could not be opened or read.
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not a regular file, or others could write it.
    Insecure {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The file is larger than [`MAX_POLICY_FILE`].
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A line does not parse.
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: Syntax,
    },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Read { path, source } => write!(f, "{}: {source}", path.display()),
            PolicyError::Insecure { path, why } => {
                write!(f, "{}: refused: {why}", path.display())
            }
            PolicyError::TooLarge { path } => {
                write!(f, "{}: larger than {MAX_POLICY_FILE} bytes", path.display())
            }
            PolicyError::Syntax {
                path,
                line,
                problem,
            } => write!(f, "{}:{line}: {problem}", path.display()),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Parses one line into its rules (none for a blank or comment line).
fn parse_line(raw: &str, line: usize) -> Result<Vec<Rule>, Syntax> {
    if raw.len() > MAX_LINE_LEN {
        return Err(Syntax::LineTooLong);
    }
    if !raw
        .bytes()
        .all(|b| b == b'\t' || b == b'\r' || (0x20..=0x7e).contains(&b))
    {
        return Err(Syntax::NotText);
    }
    // A word that starts with `#` starts a comment, as in bash: no simple command can
    // hold such a word, so nothing a pattern needs is lost.
    let fields: Vec<&str> = raw
        .split_ascii_whitespace()
        .take_while(|w| !w.starts_with('#'))
        .collect();
    let (vm, action, rest) = match fields.as_slice() {
        [] => return Ok(Vec::new()),
        [vm, action, rest @ ..] if !rest.is_empty() => (*vm, *action, rest),
        _ => return Err(Syntax::MissingFields),
    };
    let vm = parse_vm(vm)?;
    let (action, level) = match action {
        "allow" => (Action::Allow, None),
        "deny" => (Action::Deny, None),
        "ask" => (Action::Ask, None),
        "level" => match rest {
            [name] => {
                let l = Level::parse(name).ok_or_else(|| Syntax::UnknownLevel(name.to_string()))?;
                (l.action(), Some(l))
            }
            _ => return Err(Syntax::LevelArity),
        },
        other => return Err(Syntax::UnknownAction(other.to_string())),
    };
    match level {
        Some(l) => level_patterns(l)
            .into_iter()
            .map(|text| {
                let words: Vec<&str> = text.split(' ').collect();
                Ok(Rule {
                    vm: vm.clone(),
                    action,
                    pattern: parse_pattern(&words)?,
                    pattern_text: text.to_string(),
                    line,
                    source: Source::Level(l),
                })
            })
            .collect(),
        None => Ok(vec![Rule {
            vm,
            action,
            pattern: parse_pattern(rest)?,
            pattern_text: rest.join(" "),
            line,
            source: Source::Line,
        }]),
    }
}

fn parse_vm(s: &str) -> Result<VmMatch, Syntax> {
    if s == "@anyvm" {
        return Ok(VmMatch::AnyVm);
    }
    if let Some(tag) = s.strip_prefix("@tag:") {
        if is_valid_tag(tag) {
            return Ok(VmMatch::Tag(tag.to_string()));
        }
    } else if is_valid_vm_name(s) {
        return Ok(VmMatch::Name(s.to_string()));
    }
    Err(Syntax::BadVm(s.to_string()))
}

/// A tag name as Qubes writes them: `^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$`.
pub fn is_valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    match b.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_alphanumeric() || *first == b'_')
                && rest.len() < MAX_TAG_LEN
                && rest
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-'))
        }
        None => false,
    }
}

fn parse_pattern(words: &[&str]) -> Result<Pattern, Syntax> {
    if words.contains(&"@script") {
        return if words.len() == 1 {
            Ok(Pattern::Script)
        } else {
            Err(Syntax::ScriptNotAlone)
        };
    }
    if words.len() > MAX_PATTERN_WORDS {
        return Err(Syntax::TooManyWords);
    }
    let last = words.len().saturating_sub(1);
    let mut out = Vec::with_capacity(words.len());
    for (i, w) in words.iter().enumerate() {
        let word = match *w {
            "*" if i == last => Word::Rest,
            "*" | "?" => Word::One,
            // DESIGN §7: any other word matches only itself. One that no simple command
            // can hold (`qvm-ls;`, `'x'`, `qvm-*`, or `echo` as the program) is kept:
            // the rule parses and never matches, and `policy lint` says why.
            w => Word::Lit(w.to_string()),
        };
        out.push(word);
    }
    Ok(Pattern::Argv(out))
}

/// Whether bash runs a command starting with `w` itself (a builtin or reserved word).
pub fn is_shell_word(w: &str) -> bool {
    SHELL_WORDS.split_ascii_whitespace().any(|s| s == w)
}

/// A byte that may appear in a plain word.
pub fn is_plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || PLAIN_PUNCTUATION.as_bytes().contains(&b)
}

/// A non-empty word of plain bytes only.
pub fn is_plain_word(w: &str) -> bool {
    !w.is_empty() && w.bytes().all(is_plain_byte)
}

/// Whether a plain word could be a simple command's program word: not an assignment,
/// not a relative path, not run by bash itself.
fn can_be_program(w: &str) -> bool {
    !w.contains('=') && (!w.contains('/') || w.starts_with('/')) && !is_shell_word(w)
}

/// Splits a body into plain words if it is one line of them: only plain bytes, spaces
/// and tabs, at most one newline and only at the very end. `None` for anything else
/// (including an empty body), which makes it `@script`.
pub fn split_plain_words(body: &[u8]) -> Option<Vec<String>> {
    if body.len() > MAX_SIMPLE_BODY {
        return None;
    }
    let line = body.strip_suffix(b"\n").unwrap_or(body);
    let mut words = Vec::new();
    for w in line.split(|&b| b == b' ' || b == b'\t') {
        if w.is_empty() {
            continue;
        }
        if !w.iter().all(|&b| is_plain_byte(b)) || words.len() >= MAX_SIMPLE_WORDS {
            return None;
        }
        // Plain bytes are ASCII, so this cannot fail; a failure would only make the
        // body a script.
        words.push(String::from_utf8(w.to_vec()).ok()?);
    }
    if words.is_empty() {
        None
    } else {
        Some(words)
    }
}

/// Why a body is a script rather than a simple command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptWhy {
    /// Not one line of plain words.
    NotPlainWords,
    /// The first word is an assignment (`NAME=value`).
    Assignment,
    /// The first word is a bash builtin or reserved word.
    ShellWord,
    /// The first word is a relative path, which depends on the working directory.
    RelativePath,
}

impl fmt::Display for ScriptWhy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScriptWhy::NotPlainWords => "not one line of plain words",
            ScriptWhy::Assignment => "starts with an assignment",
            ScriptWhy::ShellWord => "starts with a bash builtin or keyword",
            ScriptWhy::RelativePath => "starts with a relative path",
        })
    }
}

/// How a body will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// As exactly this argv (the shell execs it, every word quoted): `program` is the
    /// first word resolved, and `words` are the words as written (what argv patterns
    /// match).
    Simple {
        /// The words as written.
        words: Vec<String>,
        /// The executable the first word resolved to.
        program: PathBuf,
    },
    /// Through the shell, as `@script`.
    Script(ScriptWhy),
}

impl Classified {
    /// The view the matcher needs.
    pub fn command(&self) -> Command {
        match self {
            Classified::Simple { words, .. } => Command::Simple(words.clone()),
            Classified::Script(_) => Command::Script,
        }
    }

    /// The argv to execute: the resolved program, then the words after the first.
    pub fn argv(&self) -> Option<Vec<String>> {
        match self {
            Classified::Simple { words, program } => {
                let mut argv = vec![program.to_string_lossy().into_owned()];
                argv.extend(words.iter().skip(1).cloned());
                Some(argv)
            }
            Classified::Script(_) => None,
        }
    }
}

/// Classifies a body. `find` resolves a program word (no `/`, or an absolute path) to
/// an executable, as bash's PATH search would in the job's fixed PATH.
pub fn classify(body: &[u8], find: &dyn Fn(&str) -> Option<PathBuf>) -> Classified {
    let Some(words) = split_plain_words(body) else {
        return Classified::Script(ScriptWhy::NotPlainWords);
    };
    let first = words.first().map(String::as_str).unwrap_or_default();
    if first.contains('=') {
        return Classified::Script(ScriptWhy::Assignment);
    }
    if is_shell_word(first) {
        return Classified::Script(ScriptWhy::ShellWord);
    }
    if first.contains('/') && !first.starts_with('/') {
        return Classified::Script(ScriptWhy::RelativePath);
    }
    // A program word that names no executable is still a simple command (DESIGN §7
    // defines it by its form): its rule decides, and then the shell, looking the word
    // up in the same fixed PATH, answers 127 as for any command not found (§5).
    let program = find(first).unwrap_or_else(|| PathBuf::from(first));
    Classified::Simple { words, program }
}

/// What identifies one version of the policy file, so the daemon re-reads it only
/// when it changed: device, inode, size, change and modification times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The current stamp of `path`, `None` if there is no file (a symlink counts as a
/// file here, and is refused by [`load`]).
pub fn stamp(path: &Path) -> io::Result<Option<Stamp>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(Stamp::of(&m))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The policy in force.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// No policy file: every authorised VM is `full` (the upstream behaviour).
    Missing,
    /// A policy that parsed.
    Ready(Arc<Policy>),
    /// A policy that could not be read or parsed: every job is denied.
    Broken(Arc<PolicyError>),
}

/// Reads and parses the policy at `path`: not a symlink, a regular file, not writable
/// by others (DESIGN §2), at most [`MAX_POLICY_FILE`] bytes.
pub fn load(path: &Path) -> Loaded {
    match read_policy_file(path) {
        Ok(None) => Loaded::Missing,
        Ok(Some(text)) => match Policy::parse(path, &text) {
            Ok(p) => Loaded::Ready(Arc::new(p)),
            Err(e) => Loaded::Broken(Arc::new(e)),
        },
        Err(e) => Loaded::Broken(Arc::new(e)),
    }
}

/// The text of the policy file, `None` if it does not exist.
pub fn read_policy_file(path: &Path) -> Result<Option<String>, PolicyError> {
    let read_err = |source| PolicyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(PolicyError::Insecure {
            path: path.to_path_buf(),
            why: "not a regular file".into(),
        });
    }
    keys::check_not_writable_by_others(path, &meta).map_err(|e| PolicyError::Insecure {
        path: path.to_path_buf(),
        why: match e {
            keys::KeyError::Insecure { why, .. } => why,
            other => other.to_string(),
        },
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_POLICY_FILE {
        return Err(PolicyError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    match String::from_utf8(bytes) {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            let upto = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..upto].iter().filter(|&&b| b == b'\n').count() + 1;
            Err(PolicyError::Syntax {
                path: path.to_path_buf(),
                line,
                problem: Syntax::NotText,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::parse(Path::new("/p"), text).unwrap()
    }

    fn simple(s: &str) -> Command {
        Command::Simple(s.split(' ').map(str::to_string).collect())
    }

    fn no_tags() -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }

    fn decide(p: &Policy, vm: &str, cmd: &Command) -> Action {
        p.decide(vm, cmd, &mut no_tags).action
    }

    #[test]
    fn pattern_words_match_as_design_section_7_says() {
        // (pattern, command, matches)
        let table = [
            ("qvm-ls *", "qvm-ls", true),
            ("qvm-ls *", "qvm-ls --running work", true),
            ("qvm-ls", "qvm-ls", true),
            ("qvm-ls", "qvm-ls work", false),
            ("qvm-prefs * memory", "qvm-prefs work memory", true),
            ("qvm-prefs * memory", "qvm-prefs work netvm", false),
            ("qvm-prefs * memory", "qvm-prefs memory", false),
            ("qvm-prefs ?", "qvm-prefs work", true),
            ("qvm-prefs ?", "qvm-prefs", false),
            ("qvm-prefs ?", "qvm-prefs work memory", false),
            ("qvm-prefs ? ?", "qvm-prefs work memory", true),
            ("qvm-prefs ? ?", "qvm-prefs work memory 800", false),
            ("* --help", "anything --help", true),
            ("* --help", "--help", false),
            ("*", "any program at all", true),
            ("qvm-ls *", "/usr/bin/qvm-ls", false),
            ("/usr/bin/qvm-ls *", "/usr/bin/qvm-ls -n", true),
        ];
        for (pat, cmd, want) in table {
            let p = policy(&format!("work allow {pat}\n"));
            let got = decide(&p, "work", &simple(cmd)) == Action::Allow;
            assert_eq!(got, want, "{pat:?} vs {cmd:?}");
        }
        let p = policy("work allow *\n");
        assert_eq!(decide(&p, "work", &Command::Script), Action::Deny);
        let p = policy("work allow @script\n");
        assert_eq!(decide(&p, "work", &Command::Script), Action::Allow);
        assert_eq!(decide(&p, "work", &simple("ls")), Action::Deny);
    }

    #[test]
    fn first_match_wins_and_no_match_denies() {
        let p = policy(
            "# comment\n\nwork deny qvm-ls --raw-list  # trailing comment\n\
             work ask qvm-ls *\n@anyvm allow qvm-ls *\nwork allow *\n",
        );
        assert_eq!(
            decide(&p, "work", &simple("qvm-ls --raw-list")),
            Action::Deny
        );
        assert_eq!(decide(&p, "work", &simple("qvm-ls")), Action::Ask);
        assert_eq!(decide(&p, "dev", &simple("qvm-ls")), Action::Allow);
        assert_eq!(decide(&p, "work", &simple("id")), Action::Allow);
        assert_eq!(decide(&p, "dev", &simple("id")), Action::Deny);
        let d = p.decide("dev", &simple("id"), &mut no_tags);
        assert!(d.rule.contains("no rule matches"), "{}", d.rule);
        let d = p.decide("work", &simple("qvm-ls"), &mut no_tags);
        assert_eq!(d.rule, "/p:4: work ask qvm-ls *");
    }

    #[test]
    fn tags_are_asked_lazily_once_and_failures_deny() {
        let p = policy("work allow id\n@tag:ops allow ls *\n@anyvm allow ls *\n");
        let calls = std::cell::Cell::new(0);
        let mut tags = || {
            calls.set(calls.get() + 1);
            Ok(vec!["ops".to_string()])
        };
        assert_eq!(
            p.decide("work", &simple("id"), &mut tags).action,
            Action::Allow
        );
        assert_eq!(
            calls.get(),
            0,
            "tags asked for a rule that did not need them"
        );
        assert_eq!(
            p.decide("dev", &simple("ls"), &mut tags).action,
            Action::Allow
        );
        assert_eq!(calls.get(), 1);
        let p = policy("@tag:ops deny ls *\n@anyvm allow ls *\n");
        let d = p.decide("dev", &simple("ls"), &mut || Err("qvm-tags failed".into()));
        assert_eq!(
            d.action,
            Action::Deny,
            "an unevaluable deny rule let a job through"
        );
        assert!(d.rule.contains("qvm-tags failed"));
        assert_eq!(decide(&p, "dev", &simple("ls")), Action::Allow);
    }

    #[test]
    fn every_level_against_a_table_of_commands() {
        use Action::{Allow, Deny};
        // (command, deny, monitor, manage, full)
        let table: &[(&str, Action, Action, Action, Action)] = &[
            ("qvm-ls", Deny, Allow, Allow, Allow),
            (
                "qvm-ls --raw-data --fields NAME,STATE",
                Deny,
                Allow,
                Allow,
                Allow,
            ),
            ("qvm-check --running work", Deny, Allow, Allow, Allow),
            ("qvm-prefs work", Deny, Allow, Allow, Allow),
            ("qvm-prefs work memory", Deny, Allow, Allow, Allow),
            ("qvm-prefs work memory 800", Deny, Deny, Allow, Allow),
            ("qvm-prefs -D work memory", Deny, Deny, Allow, Allow),
            ("qvm-features work", Deny, Allow, Allow, Allow),
            ("qvm-features work gui", Deny, Allow, Allow, Allow),
            ("qvm-features work gui 1", Deny, Deny, Allow, Allow),
            ("qvm-service work", Deny, Allow, Allow, Allow),
            ("qvm-service work cups on", Deny, Deny, Allow, Allow),
            ("qvm-tags work", Deny, Allow, Allow, Allow),
            ("qvm-tags work list", Deny, Allow, Allow, Allow),
            ("qvm-tags work list ops", Deny, Allow, Allow, Allow),
            ("qvm-tags -q list add ops", Deny, Deny, Deny, Allow),
            ("qvm-tags work add ops", Deny, Deny, Allow, Allow),
            ("qvm-tags work del ops", Deny, Deny, Allow, Allow),
            ("qubes-prefs", Deny, Allow, Allow, Allow),
            ("qubes-prefs default_netvm", Deny, Allow, Allow, Allow),
            ("qubes-prefs default_netvm sys-net", Deny, Deny, Deny, Allow),
            ("qvm-volume list", Deny, Allow, Allow, Allow),
            ("qvm-volume info work:private", Deny, Allow, Allow, Allow),
            (
                "qvm-volume resize work:private 10G",
                Deny,
                Deny,
                Deny,
                Allow,
            ),
            ("xl info", Deny, Allow, Allow, Allow),
            ("xl list -l", Deny, Allow, Allow, Allow),
            ("xl dmesg -c", Deny, Deny, Deny, Allow),
            ("xl destroy work", Deny, Deny, Deny, Allow),
            ("qvm-start work", Deny, Deny, Allow, Allow),
            ("qvm-shutdown --wait work", Deny, Deny, Allow, Allow),
            ("qvm-pause work", Deny, Deny, Allow, Allow),
            ("qvm-unpause work", Deny, Deny, Allow, Allow),
            ("qvm-kill work", Deny, Deny, Allow, Allow),
            ("qvm-run work xterm", Deny, Deny, Deny, Allow),
            ("qvm-remove -f work", Deny, Deny, Deny, Allow),
            ("qvm-create --label red x", Deny, Deny, Deny, Allow),
            ("rm -rf /", Deny, Deny, Deny, Allow),
        ];
        for level in Level::ALL {
            let p = policy(&format!("work level {}\n", level.name()));
            for (cmd, d, mo, ma, f) in table {
                let want = match level {
                    Level::Deny => *d,
                    Level::Monitor => *mo,
                    Level::Manage => *ma,
                    Level::Full => *f,
                };
                assert_eq!(
                    decide(&p, "work", &simple(cmd)),
                    want,
                    "{} {cmd}",
                    level.name()
                );
                assert_eq!(decide(&p, "dev", &simple(cmd)), Deny, "other VM: {cmd}");
            }
            let script = decide(&p, "work", &Command::Script);
            let want = if level == Level::Full { Allow } else { Deny };
            assert_eq!(script, want, "{} @script", level.name());
        }
        // `deny` stops later lines; the other levels let them add more.
        let p = policy("work level deny\nwork allow ls *\n");
        assert_eq!(decide(&p, "work", &simple("ls")), Deny);
        let p = policy("work level monitor\nwork ask qvm-start *\n");
        assert_eq!(decide(&p, "work", &simple("qvm-start work")), Action::Ask);
    }

    #[test]
    fn no_level_rule_is_shadowed_by_an_earlier_one_of_its_level() {
        for level in Level::ALL {
            let pats = level_patterns(level);
            let parsed: Vec<Pattern> = pats
                .iter()
                .map(|t| parse_pattern(&t.split(' ').collect::<Vec<_>>()).unwrap())
                .collect();
            for (i, p) in parsed.iter().enumerate() {
                for (j, q) in parsed[..i].iter().enumerate() {
                    assert!(
                        !q.covers(p),
                        "{}: {:?} shadows {:?}",
                        level.name(),
                        pats[j],
                        pats[i]
                    );
                }
            }
        }
    }

    #[test]
    fn shadowing_is_found_line_by_line() {
        let p = policy(
            "work allow qvm-ls *\nwork deny qvm-ls --raw-list\n@anyvm deny ls\nwork allow ls\n\
             work allow ls -l\nwork level monitor\n@tag:x allow ? a\n@tag:x allow b a\n\
             @anyvm level full\nwork level manage\n",
        );
        let found: Vec<(usize, usize)> = p
            .shadowed()
            .iter()
            .map(|(r, by)| (r.line, by.line))
            .collect();
        assert_eq!(found, vec![(2, 1), (4, 3), (8, 7), (10, 1)]);
        // A level partly shadowed (its qvm-ls rule by line 1) is still reachable.
        assert!(!found.iter().any(|(l, _)| *l == 6));
        // Covering, case by case.
        let pat = |s: &str| parse_pattern(&s.split(' ').collect::<Vec<_>>()).unwrap();
        let table = [
            ("a *", "a", true),
            ("a *", "a b c", true),
            ("a ?", "a *", false),
            ("a ? ?", "a b c", true),
            ("a b", "a ?", false),
            ("a", "a *", false),
            ("* x", "a x", true),
            ("*", "@script", false),
        ];
        for (a, b, want) in table {
            assert_eq!(pat(a).covers(&pat(b)), want, "{a} covers {b}");
        }
    }

    #[test]
    fn rules_no_simple_command_can_match_parse_and_never_match() {
        // DESIGN §7: any other word matches only itself, so these parse; no job can
        // match them, and lint says why.
        let table: &[(&str, &str)] = &[
            ("qvm-*", "no globs"),
            ("ls x?", "no globs"),
            ("qvm-ls;", "can never match"),
            ("'qvm-ls'", "can never match"),
            ("echo *", "program word"),
            ("./qvm-ls", "program word"),
            ("FOO=1 ls", "program word"),
        ];
        for (pattern, why) in table {
            let text = format!("work allow {pattern}\nwork deny @script\nwork ask *\n");
            let pol = Policy::parse(Path::new("/p"), &text).unwrap();
            let dead = pol.dead_rules();
            assert_eq!(dead.len(), 1, "{pattern}");
            assert_eq!(dead[0].0.line, 1);
            assert!(
                dead[0].1.to_string().contains(why),
                "{pattern}: {}",
                dead[0].1
            );
        }
        // The dead rule does not take the file down: the rules after it still apply.
        let pol = policy("work allow echo *\nwork allow @script\n");
        assert_eq!(decide(&pol, "work", &Command::Script), Action::Allow);
        let pol = policy("work allow qvm-ls;\nwork ask qvm-ls *\n");
        assert_eq!(decide(&pol, "work", &simple("qvm-ls")), Action::Ask);
        assert!(Policy::parse(Path::new("/p"), "work allow qvm-ls *\n")
            .unwrap()
            .dead_rules()
            .is_empty());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let table: &[(&str, usize, &str)] = &[
            ("work allow\n", 1, "want `VM ACTION"),
            ("\nwork permit ls\n", 2, "unknown action"),
            ("../x allow ls\n", 1, "not a VM name"),
            ("@tag: allow ls\n", 1, "not a VM name"),
            ("work level admin\n", 1, "unknown level"),
            ("work level full extra\n", 1, "exactly one level"),
            ("work allow ls @script\n", 1, "whole pattern"),
            ("work allow ls \u{e9}\n", 1, "printable ASCII"),
            (
                &format!("work allow {}\n", "x ".repeat(MAX_PATTERN_WORDS + 1)),
                1,
                "pattern words",
            ),
            (
                &format!("work allow {}\n", "x".repeat(MAX_LINE_LEN)),
                1,
                "longer than",
            ),
        ];
        for (text, line, want) in table {
            let e = Policy::parse(Path::new("/etc/qubes/remote-policy"), text).unwrap_err();
            let s = e.to_string();
            assert!(
                s.starts_with(&format!("/etc/qubes/remote-policy:{line}: ")),
                "{text:?}: {s}"
            );
            assert!(s.contains(want), "{text:?}: {s}");
        }
        let (_, errors) = Policy::parse_all(Path::new("/p"), "a b\nwork allow ls\nc d\n");
        assert_eq!(errors.len(), 2);
        // One word past the limits parses no more.
        let ok = format!("work allow {}\n", "x ".repeat(MAX_PATTERN_WORDS));
        assert!(Policy::parse(Path::new("/p"), &ok).is_ok());
        let many =
            "work level manage\n".repeat(MAX_RULES / level_patterns(Level::Manage).len() + 1);
        let e = Policy::parse(Path::new("/p"), &many).unwrap_err();
        assert!(e.to_string().contains("rules"), "{e}");
    }

    #[test]
    fn plain_words_are_only_what_bash_leaves_alone() {
        let plain: &[(&str, &[&str])] = &[
            ("qvm-ls", &["qvm-ls"]),
            (
                "  qvm-prefs\twork  memory \n",
                &["qvm-prefs", "work", "memory"],
            ),
            ("date +%s", &["date", "+%s"]),
            (
                "a=b c,d e:f g@h i.j k/l",
                &["a=b", "c,d", "e:f", "g@h", "i.j", "k/l"],
            ),
        ];
        for (body, words) in plain {
            assert_eq!(
                split_plain_words(body.as_bytes()).unwrap(),
                words.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
                "{body:?}"
            );
        }
        let tricks = [
            "",
            " ",
            "\n",
            "qvm-ls; rm -rf /",
            "qvm-ls $(id)",
            "qvm-ls `id`",
            "qvm-ls 'a'",
            "qvm-ls \"a\"",
            "qvm-ls\nrm -rf /",
            "qvm-ls\n\n",
            "qvm-ls > /tmp/x",
            "qvm-ls < x",
            "qvm-ls | sh",
            "qvm-ls & rm",
            "qvm-ls && rm",
            "qvm-ls *",
            "qvm-ls ?",
            "qvm-ls [a]",
            "qvm-ls {a,b}",
            "qvm-ls ~",
            "qvm-ls ~root",
            "qvm-ls # c",
            "qvm-ls \\;",
            "(qvm-ls)",
            "qvm-ls $HOME",
            "qvm-ls !!",
            "qvm-ls ^a",
            "qvm-ls\r",
            "qvm-ls\x0b",
            "qvm-ls\u{e9}",
            "qvm-ls <(id)",
            "qvm-ls @(a)",
            "qvm-ls\x00",
        ];
        for t in tricks {
            assert_eq!(split_plain_words(t.as_bytes()), None, "{t:?}");
        }
        let long = vec![b'a'; MAX_SIMPLE_BODY + 1];
        assert_eq!(split_plain_words(&long), None);
        assert!(split_plain_words(&long[..MAX_SIMPLE_BODY]).is_some());
        let many = "a ".repeat(MAX_SIMPLE_WORDS + 1);
        assert_eq!(split_plain_words(many.as_bytes()), None);
        assert!(split_plain_words("a ".repeat(MAX_SIMPLE_WORDS).as_bytes()).is_some());
    }

    fn fake_path(word: &str) -> Option<PathBuf> {
        let on_path = ["qvm-ls", "qvm-prefs", "ls", "id", "bash"];
        if word.starts_with('/') {
            (word == "/usr/bin/qvm-ls").then(|| PathBuf::from(word))
        } else {
            on_path
                .contains(&word)
                .then(|| PathBuf::from(format!("/usr/bin/{word}")))
        }
    }

    #[test]
    fn classify_resolves_programs_and_refuses_the_rest() {
        let c = classify(b"qvm-ls --raw-list", &fake_path);
        assert_eq!(c.argv().unwrap(), ["/usr/bin/qvm-ls", "--raw-list"]);
        // A program that is not there keeps its word as written, for the shell to look
        // up (and answer 127).
        for body in ["qvm-nothing -x", "/opt/qvm-ls -x"] {
            let c = classify(body.as_bytes(), &fake_path);
            assert_eq!(c.argv().unwrap().join(" "), body);
            assert_eq!(c.command(), simple(body));
        }
        assert_eq!(c.command(), simple("qvm-ls --raw-list"));
        let table = [
            ("qvm-ls $(id)", ScriptWhy::NotPlainWords),
            ("FOO=1 qvm-ls", ScriptWhy::Assignment),
            ("echo hi", ScriptWhy::ShellWord),
            ("exec qvm-ls", ScriptWhy::ShellWord),
            ("command qvm-ls", ScriptWhy::ShellWord),
            (". x", ScriptWhy::ShellWord),
            ("time qvm-ls", ScriptWhy::ShellWord),
            ("./qvm-ls", ScriptWhy::RelativePath),
            ("bin/qvm-ls", ScriptWhy::RelativePath),
        ];
        for (body, why) in table {
            assert_eq!(
                classify(body.as_bytes(), &fake_path),
                Classified::Script(why),
                "{body}"
            );
        }
        assert!(matches!(
            classify(b"/usr/bin/qvm-ls", &fake_path),
            Classified::Simple { .. }
        ));
    }

    #[test]
    fn shell_words_cover_the_local_bash() {
        // Every builtin and keyword of the bash on this machine that is made of plain
        // bytes must be in SHELL_WORDS, or a new bash could run a "simple command" itself.
        let out = std::process::Command::new("bash")
            .args(["--noprofile", "--norc", "-c", "compgen -b; compgen -k"])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let mut n = 0;
        for w in text.lines().filter(|w| is_plain_word(w)) {
            assert!(is_shell_word(w), "bash word {w:?} missing from SHELL_WORDS");
            n += 1;
        }
        assert!(n > 50, "compgen gave only {n} words");
    }

    #[test]
    fn the_file_is_bounded_private_and_text() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::testutil::temp_dir("policy");
        let path = dir.join("remote-policy");
        let write = |bytes: &[u8], mode: u32| {
            let _ = fs::remove_file(&path);
            fs::write(&path, bytes).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        };
        assert!(matches!(load(&path), Loaded::Missing));
        assert!(stamp(&path).unwrap().is_none());
        let mut big = b"work allow ls *\n".to_vec();
        big.resize(MAX_POLICY_FILE as usize, b'\n');
        write(&big, 0o600);
        assert!(matches!(load(&path), Loaded::Ready(_)));
        let before = stamp(&path).unwrap();
        big.push(b'\n');
        write(&big, 0o600);
        assert!(
            matches!(load(&path), Loaded::Broken(e) if matches!(*e, PolicyError::TooLarge { .. }))
        );
        assert_ne!(
            stamp(&path).unwrap(),
            before,
            "a change must change the stamp"
        );
        write(b"work allow ls *\n", 0o620);
        let Loaded::Broken(e) = load(&path) else {
            panic!("group-writable policy accepted")
        };
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        write(b"# ok\n\nwork allow ls \xff\n", 0o600);
        let Loaded::Broken(e) = load(&path) else {
            panic!("non-UTF-8 policy accepted")
        };
        assert!(
            e.to_string()
                .ends_with("remote-policy:3: not printable ASCII text"),
            "{e}"
        );
        let link = dir.join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(
            matches!(load(&link), Loaded::Broken(_)),
            "a symlinked policy is refused"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tags_are_qubes_tag_names() {
        let longest = format!("a{}", "b".repeat(MAX_TAG_LEN - 1));
        for good in ["ops", "created-by-dom0", "a.b:c_d", "_x", longest.as_str()] {
            assert!(is_valid_tag(good), "{good}");
        }
        let long = format!("a{}", "b".repeat(MAX_TAG_LEN));
        for bad in ["", "-x", "a b", "a/b", "a*", long.as_str()] {
            assert!(!is_valid_tag(bad), "{bad}");
        }
    }

    #[test]
    fn describe_levels_lists_every_rule() {
        let text = describe_levels();
        assert!(text.contains("VM level monitor\n    VM allow qvm-ls *\n"));
        assert!(text.contains("VM level deny\n    VM deny *\n    VM deny @script\n"));
        for p in MANAGE_EXTRA {
            assert!(text.contains(&format!("    VM allow {p}\n")));
        }
    }
}
