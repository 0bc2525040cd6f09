//! The only module that calls libc (shared/DESIGN.md §1: "the one dependency is `libc`,
//! for setrlimit/umask/kill"), and the process-level half of the job sandbox of
//! shared/DESIGN.md §5 (own session and process group, umask 077, RLIMIT_CORE 0).
//!
//! Every function here is a small safe wrapper that returns `io::Result` (or a plain
//! value where the call cannot fail), so the rest of the crate stays under
//! `#![deny(unsafe_code)]`. Each `unsafe` block carries a `// SAFETY:` checklist of why
//! it is sound. The code targets Linux only: the daemon runs in Qubes dom0 and the
//! client in a Qubes VM, both Linux.
//!
//! Signals are named by [`Signal`] rather than raw numbers so that no caller can ask for
//! signal 0 or a typo; functions that signal a process group refuse the group ids that
//! would reach far more than intended (`kill(-1)` is every process, group 0 is our own).

use std::io;
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

/// The signals this crate sends or handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: asks a job (or the daemon) to end.
    Term,
    /// SIGKILL: ends a job that did not end on SIGTERM, and everything a job leaves behind.
    Kill,
    /// SIGINT: what Ctrl-C sends; the client turns it into a cancel request.
    Int,
}

impl Signal {
    /// The signal's number on this platform (15, 9 and 2 on Linux).
    pub fn number(self) -> i32 {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Int => libc::SIGINT,
        }
    }

    fn from_number(number: i32) -> Option<Signal> {
        match number {
            libc::SIGTERM => Some(Signal::Term),
            libc::SIGKILL => Some(Signal::Kill),
            libc::SIGINT => Some(Signal::Int),
            _ => None,
        }
    }
}

/// What [`wait_ready`] waits for on a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Data (or end of file, or an error) can be read without blocking.
    Readable,
    /// A write would not block (or would fail at once, for instance with EPIPE).
    Writable,
}

/// The highest standard (non-real-time) signal number on Linux. The pre-exec hook resets
/// signals 1 to this one, and the real-time signals from `SIGRTMIN()` to `SIGRTMAX()`, to
/// their default action. The numbers in between (32 and 33) are glibc's own: glibc refuses
/// to change them, and no program can reach them through glibc's API either.
const LAST_STANDARD_SIGNAL: libc::c_int = 31;

/// Only the permission bits of a umask mean anything.
const UMASK_BITS: u32 = 0o777;

/// The first descriptor after stdin, stdout and stderr.
const FIRST_NON_STDIO_FD: libc::c_long = 3;

/// The flags word passed to `pidfd_open` and `pidfd_send_signal`: none.
const NO_FLAGS: libc::c_long = 0;

/// Makes `cmd` start its program in the sandbox of DESIGN §5: a new session (so a new
/// process group, whose id is the child's pid, and no controlling terminal), the given
/// umask, no core dumps (RLIMIT_CORE 0, soft and hard), every signal a program can use at
/// its default action (see [`LAST_STANDARD_SIGNAL`]), an empty signal mask, and no open
/// descriptor but stdin, stdout and stderr.
///
/// The signal reset matters because dispositions set to "ignore" and the signal mask
/// survive `exec`: a daemon started under `nohup`, or a thread that blocked signals,
/// would otherwise hand a job that cannot be stopped with SIGTERM. std already resets
/// SIGPIPE and the mask; doing it here too keeps the guarantee in one place we test.
///
/// The descriptors matter because std opens everything close-on-exec, but a descriptor
/// the daemon inherited without that flag (from whatever started it) would reach every
/// job. All descriptors from 3 up are marked close-on-exec with `close_range` (Linux 5.11
/// or later; on an older kernel the spawn fails rather than leak). They are marked, not
/// closed, because std reports a failed exec through a close-on-exec pipe of its own.
///
/// If any step fails, the child exits before running anything and `spawn` returns the
/// error.
pub fn sandbox_command(cmd: &mut Command, umask: u32) {
    let umask: libc::mode_t = umask & UMASK_BITS;
    // Asked here, in the parent: the child then only loops over two plain integers.
    let realtime = (libc::SIGRTMIN(), libc::SIGRTMAX());
    // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe
    // calls are allowed; `prepare_child` makes only such calls (setsid, umask, setrlimit,
    // close_range, sigaction, sigemptyset, sigprocmask), allocates nothing, takes no lock.
    unsafe {
        cmd.pre_exec(move || prepare_child(umask, realtime));
    }
}

/// Makes the child of `cmd` move itself into the cgroup whose `cgroup.procs` is `procs`
/// before it execs, so that everything it ever starts is born inside that cgroup (a
/// move from the parent after the spawn would race with the child's first fork). The
/// hook owns `procs` for as long as `cmd` exists. A failed write fails the spawn: the
/// caller asked for containment and does not get a job that silently runs without it.
pub fn enter_cgroup_on_exec(cmd: &mut Command, procs: OwnedFd) {
    // The hook runs in the forked child before exec, where only async-signal-safe calls
    // are allowed: `enter_cgroup` makes one write(2) and allocates nothing.
    // SAFETY: the closure owns `procs` (so it is open in the child) and takes no lock.
    unsafe {
        cmd.pre_exec(move || enter_cgroup(procs.as_fd()));
    }
}

/// Writes `0` (this process) to a cgroup's `cgroup.procs`, moving the caller into it.
fn enter_cgroup(procs: BorrowedFd<'_>) -> io::Result<()> {
    const SELF: &[u8] = b"0";
    // SAFETY: a valid pointer to SELF.len() readable bytes of a static slice, and a
    // descriptor that the borrow keeps open for the call.
    let written = unsafe { libc::write(procs.as_raw_fd(), SELF.as_ptr().cast(), SELF.len()) };
    if written == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The body of the pre-exec hook. Runs in the child between fork and exec, so it must
/// stay async-signal-safe: no allocation, no locks, no formatting. `realtime` is the
/// range `SIGRTMIN()..=SIGRTMAX()`.
fn prepare_child(umask: libc::mode_t, realtime: (libc::c_int, libc::c_int)) -> io::Result<()> {
    // SAFETY: setsid takes no arguments and touches no memory of ours. A freshly forked
    // child is never a process group leader, so the call can succeed.
    if unsafe { libc::setsid() } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: umask swaps one integer in the kernel; it takes no pointer and cannot fail.
    unsafe { libc::umask(umask) };
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an initialised rlimit on our stack, only read by the
    // kernel during the call; lowering a limit needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) } == -1 {
        return Err(io::Error::last_os_error());
    }
    let all_fds = libc::c_long::from(libc::c_uint::MAX);
    let cloexec = libc::c_long::from(libc::CLOSE_RANGE_CLOEXEC);
    // SAFETY: close_range takes three integers and touches no memory of ours; with
    // CLOSE_RANGE_CLOEXEC it closes nothing now, it only marks descriptors 3 and up.
    if unsafe { libc::syscall(libc::SYS_close_range, FIRST_NON_STDIO_FD, all_fds, cloexec) } == -1 {
        return Err(io::Error::last_os_error());
    }
    let default_action = action_with_handler(libc::SIG_DFL)?;
    let (first_realtime, last_realtime) = realtime;
    for signal in (1..=LAST_STANDARD_SIGNAL).chain(first_realtime..=last_realtime) {
        // SIGKILL and SIGSTOP cannot be caught or ignored, so there is nothing to reset.
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            install_action(signal, &default_action)?;
        }
    }
    let empty = empty_signal_set()?;
    // SAFETY: `empty` is an initialised signal set on our stack that outlives the call;
    // the old mask is not requested (null pointer, which the call allows).
    if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `sig` to every process in process group `pgid` (`kill(-pgid, sig)`).
///
/// A group that no longer exists is not an error (ESRCH is `Ok`): the goal, that nothing
/// in the group runs on, is met. Refuses `pgid <= 1` (`kill(-1)` would signal every
/// process we may signal, group 0 is our own, group 1 is init's) and the caller's own
/// process group, so a bug elsewhere can never turn this into killing the daemon or the
/// system.
pub fn kill_group(pgid: i32, sig: Signal) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    // SAFETY: getpgrp takes no arguments and cannot fail.
    let own_group = unsafe { libc::getpgrp() };
    if pgid == own_group {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal our own process group {pgid}"),
        ));
    }
    // SAFETY: kill takes two integers and touches no memory of ours; pgid > 1, so -pgid
    // names exactly one process group (never -1 = everyone, never 0 = our own group).
    if unsafe { libc::kill(-pgid, sig.number()) } == -1 {
        return ok_if_gone(io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd: a handle that keeps naming one process even after that process has died and
/// its pid has been given to another, so a signal sent through it can never reach a
/// stranger. Needs Linux 5.3 or later (Qubes 4.1 dom0 runs 5.10+).
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
}

impl AsFd for PidFd {
    /// The descriptor becomes readable when the process exits, so a caller can wait for
    /// an exit with [`wait_ready`] instead of polling on a timer.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl PidFd {
    /// Opens a pidfd for `pid`. Refuses `pid <= 1` and our own pid.
    pub fn open(pid: i32) -> io::Result<PidFd> {
        if pid <= 1 || u32::try_from(pid).ok() == Some(getpid()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing to open a pidfd for pid {pid}"),
            ));
        }
        // SAFETY: pidfd_open takes a pid and a flags word and returns a new descriptor or
        // -1; it touches no memory of ours.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::c_long::from(pid), NO_FLAGS) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let raw = RawFd::try_from(raw)
            .map_err(|_| io::Error::other("pidfd_open returned an out-of-range descriptor"))?;
        // SAFETY: `raw` is a descriptor the kernel has just created for us and nothing
        // else owns, so handing it to OwnedFd (which closes it once) is sound.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(PidFd { fd })
    }

    /// Sends `sig` to the process this pidfd names. A process that has already exited is
    /// not an error (ESRCH is `Ok`).
    pub fn send(&self, sig: Signal) -> io::Result<()> {
        let fd = libc::c_long::from(self.fd.as_raw_fd());
        let signal = libc::c_long::from(sig.number());
        let no_info: *const libc::siginfo_t = ptr::null();
        // SAFETY: the descriptor is open (we own it for `self`'s lifetime); a null siginfo
        // is allowed and means "as kill(2) would"; no flags.
        let rc =
            unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, signal, no_info, NO_FLAGS) };
        if rc == -1 {
            return ok_if_gone(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Whether a process with this pid exists (`kill(pid, 0)`); a process we may not signal
/// (EPERM) exists too. A zombie counts as existing. Non-positive pids, which would name
/// groups rather than a process, are reported as not existing.
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission; pid > 0 names
    // one process; no memory of ours is touched.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether our child `pid` has exited, without reaping it (`waitid` with `WNOWAIT`).
///
/// Leaving the child unreaped keeps its pid, which for a job is also its process group id
/// and session id, reserved: the kernel cannot hand that number to a new process while the
/// zombie exists, so signalling the group by that number afterwards cannot reach a
/// stranger. The caller must reap the child itself later (`Child::wait`). An interrupted
/// call reports "not yet".
pub fn child_has_exited(pid: i32) -> io::Result<bool> {
    let id = libc::id_t::try_from(pid)
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "child pid must be positive"))?;
    // SAFETY: siginfo_t is plain C data for which all-zero bytes are a valid value; the
    // zeroed si_pid is how a "no child has exited" answer is told apart (see waitid(2)).
    let mut info: libc::siginfo_t = unsafe { mem::zeroed() };
    let options = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: `info` is a live, writable siginfo_t; P_PID with a positive id waits for that
    // one child only; WNOHANG makes the call return at once and WNOWAIT leaves it unreaped.
    if unsafe { libc::waitid(libc::P_PID, id, &mut info, options) } == -1 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(error);
    }
    // SAFETY: waitid succeeded and filled `info` (or left it zeroed when no child had
    // exited); si_pid is valid to read for the CLD_* codes waitid reports.
    Ok(unsafe { info.si_pid() } != 0)
}

/// Waits up to `timeout` for `fd` to become ready for `want`; returns whether it did.
/// Hang-up and error conditions count as ready, so the next read or write reports them.
/// An interrupted wait reports "not ready"; callers loop anyway.
pub fn wait_ready(fd: BorrowedFd<'_>, want: Readiness, timeout: Duration) -> io::Result<bool> {
    let events = match want {
        Readiness::Readable => libc::POLLIN,
        Readiness::Writable => libc::POLLOUT,
    };
    let mut entry = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `entry` is one live, writable pollfd and the count passed is 1; the borrowed
    // descriptor stays open for the whole call.
    let ready = unsafe { libc::poll(&mut entry, 1, millis) };
    if ready == -1 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(error);
    }
    Ok(ready > 0)
}

/// Puts the open file description behind `fd` into non-blocking mode. For a pipe end we
/// created, only our end changes; the process at the other end is not affected.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL takes no third argument and touches no memory of ours; the borrowed
    // descriptor is open for the call.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL takes an integer third argument; same open descriptor as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Blocks SIGPIPE in the calling thread only.
///
/// A write to a pipe whose reader has gone raises SIGPIPE in the writing thread; with it
/// blocked, the write fails with EPIPE instead and the signal stays pending on that
/// thread until it exits, when the kernel discards it. A thread that feeds a job's stdin
/// calls this, so a job closing its stdin can never kill the daemon, whatever the
/// process-wide SIGPIPE disposition is.
pub fn block_sigpipe_in_current_thread() -> io::Result<()> {
    let mut set = empty_signal_set()?;
    // SAFETY: `set` is an initialised signal set on our stack and SIGPIPE a valid signal.
    if unsafe { libc::sigaddset(&mut set, libc::SIGPIPE) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `set` is initialised and outlives the call; the old mask is not requested
    // (null, which is allowed); pthread_sigmask changes only the calling thread's mask.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// The session id of process `pid`, or `None` if there is no such process or its
/// session leader lives outside our pid namespace (the kernel then answers 0, as it
/// does for a daemon started inside a container). On Linux this works for any process
/// in our pid namespace (zombies included), at the cost of one system call: far
/// cheaper than opening and parsing `/proc/<pid>/stat`.
pub fn getsid(pid: i32) -> Option<i32> {
    if pid <= 0 {
        // getsid(0) would mean "this process": never what a caller naming a pid wants.
        return None;
    }
    // SAFETY: getsid takes one integer and touches no memory of ours.
    let sid = unsafe { libc::getsid(pid) };
    (sid > 0).then_some(sid)
}

/// The effective user id of this process.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// The real user id of this process.
pub fn getuid() -> u32 {
    // SAFETY: getuid takes no arguments and cannot fail.
    unsafe { libc::getuid() }
}

/// The pid of this process.
pub fn getpid() -> u32 {
    std::process::id()
}

/// Whether `fd` refers to a terminal. A descriptor that is not open is not a terminal.
pub fn isatty(fd: i32) -> bool {
    // SAFETY: isatty takes an integer and only inspects the descriptor table; any value,
    // open or not, is acceptable (an invalid one yields 0 and EBADF).
    unsafe { libc::isatty(fd) == 1 }
}

/// Sets the umask of the whole process (for the daemon's own start, before it creates
/// any file) and returns the previous one. Only the permission bits of `mask` are used.
pub fn set_process_umask(mask: u32) -> u32 {
    // SAFETY: umask swaps one integer in the kernel; it takes no pointer and cannot fail.
    unsafe { libc::umask(mask & UMASK_BITS) }
}

/// Set by the SIGTERM/SIGINT handler that [`install_termination_flag`] installs.
static TERMINATION_REQUESTED: AtomicBool = AtomicBool::new(false);
/// The number of the last termination signal received, 0 if none.
static TERMINATION_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The handler: it only stores to two lock-free atomics, which is async-signal-safe, and
/// it cannot panic.
extern "C" fn record_termination(signal: libc::c_int) {
    TERMINATION_SIGNAL.store(signal, Ordering::SeqCst);
    TERMINATION_REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs handlers for SIGTERM and SIGINT that only set the returned flag (and remember
/// which signal came, see [`termination_signal`]). Calling it again is harmless.
///
/// The handlers are installed without `SA_RESTART`, on purpose: a thread blocked in a
/// system call such as `accept`, `read` or `poll` when the signal arrives gets EINTR
/// and can look at the flag at once, instead of the kernel silently restarting the call.
/// Two consequences for callers: code that makes raw calls must treat
/// `ErrorKind::Interrupted` as "check the flag and retry" (std's `read_exact`,
/// `write_all`, `read_to_end`, `Child::wait` and `thread::sleep` already retry by
/// themselves); and since the kernel delivers the signal to any one thread that does not
/// block it, no particular thread is guaranteed to be woken, so every wait loop must
/// also poll the flag with a bounded timeout.
pub fn install_termination_flag() -> io::Result<&'static AtomicBool> {
    let handler = record_termination as extern "C" fn(libc::c_int) as libc::sighandler_t;
    let action = action_with_handler(handler)?;
    install_action(libc::SIGTERM, &action)?;
    install_action(libc::SIGINT, &action)?;
    Ok(&TERMINATION_REQUESTED)
}

/// Which termination signal was received last, if any, once [`install_termination_flag`]
/// has been called (the client exits 130 for SIGINT, the daemon logs which one came).
pub fn termination_signal() -> Option<Signal> {
    Signal::from_number(TERMINATION_SIGNAL.load(Ordering::SeqCst))
}

/// Sets SIGPIPE to "ignore" for the whole process, so writing to a pipe or socket whose
/// reader has gone fails with EPIPE (which the code handles) instead of killing the
/// process. Rust binaries start that way already; calling it makes the daemon and the
/// client independent of that runtime default. Children get SIGPIPE back at its default
/// action (std does this, and so does [`sandbox_command`]).
pub fn ignore_sigpipe() -> io::Result<()> {
    let action = action_with_handler(libc::SIG_IGN)?;
    install_action(libc::SIGPIPE, &action)
}

/// `O_NOFOLLOW` for `OpenOptionsExt::custom_flags`, so that other modules can refuse
/// symlinks without naming libc.
pub const O_NOFOLLOW: i32 = libc::O_NOFOLLOW;

// PR_SET_CHILD_SUBREAPER is deliberately not offered: a subreaper inherits every orphaned
// descendant of every job and must reap them with waitpid(-1), which would steal the exit
// statuses that std's `Child::wait` needs for the daemon's own children. Jobs are ended
// by group kill and session sweep instead (see exec.rs).

/// A signal set with no signal in it.
fn empty_signal_set() -> io::Result<libc::sigset_t> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset writes the whole set it is given through a valid pointer to
    // storage of the right type and size; it is async-signal-safe.
    if unsafe { libc::sigemptyset(set.as_mut_ptr()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sigemptyset reported success, so every byte of the set is initialised.
    Ok(unsafe { set.assume_init() })
}

/// A `sigaction` value with the given handler (or SIG_DFL / SIG_IGN), an empty mask and
/// no flags: in particular no `SA_RESTART` (see [`install_termination_flag`]).
fn action_with_handler(handler: libc::sighandler_t) -> io::Result<libc::sigaction> {
    // SAFETY: libc::sigaction is a plain C struct (handler word, mask, flags, restorer
    // option) for which all-zero bytes are a valid value of every field.
    let mut action: libc::sigaction = unsafe { mem::zeroed() };
    action.sa_sigaction = handler;
    action.sa_mask = empty_signal_set()?;
    action.sa_flags = 0;
    Ok(action)
}

/// Installs `action` for `signal`. Async-signal-safe (used by the pre-exec hook).
fn install_action(signal: libc::c_int, action: &libc::sigaction) -> io::Result<()> {
    // SAFETY: `action` points to an initialised struct that outlives the call; the old
    // action is not requested (null is allowed); every handler we pass is SIG_DFL,
    // SIG_IGN or `record_termination`, which is async-signal-safe.
    if unsafe { libc::sigaction(signal, action, ptr::null_mut()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Maps ESRCH ("no such process or group") to success: the target is already gone.
fn ok_if_gone(error: io::Error) -> io::Result<()> {
    if error.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(error)
    }
}

/// Waits up to `timeout` until at least one of `fds` can be read without blocking (data,
/// end of file, hang-up or an error all count), and sets `ready[i]` for each one that
/// can. Returns how many are ready: 0 on timeout, and also when the wait was interrupted
/// by a signal (callers loop and look at their stop flag). `ready` must be exactly as
/// long as `fds`.
///
/// This is what lets the admin panel's one acceptor thread watch every idle keep-alive
/// connection at once, so that no worker thread ever sits waiting on an idle socket.
pub fn poll_readable(
    fds: &[BorrowedFd<'_>],
    ready: &mut [bool],
    timeout: Duration,
) -> io::Result<usize> {
    if fds.len() != ready.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "poll_readable: fds and ready differ in length",
        ));
    }
    let mut entries: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let count = libc::nfds_t::try_from(entries.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"))?;
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `entries` is a live, writable array of exactly `count` pollfd structs that
    // outlives the call; every descriptor in it is borrowed, so it stays open for the
    // whole call; poll only writes the `revents` fields.
    let n = unsafe { libc::poll(entries.as_mut_ptr(), count, millis) };
    if n == -1 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::Interrupted {
            ready.iter_mut().for_each(|r| *r = false);
            return Ok(0);
        }
        return Err(error);
    }
    let mut found = 0;
    for (slot, entry) in ready.iter_mut().zip(&entries) {
        *slot = entry.revents != 0;
        found += usize::from(*slot);
    }
    Ok(found)
}

/// An exclusive advisory lock on an open file (`flock(LOCK_EX)`), released when the
/// guard is dropped. Several writers of one file — the daemon and the panel both append
/// to the audit log — take it around each append, so lines never interleave and each
/// writer can see what the others wrote before it chains its own line.
pub struct FileLock<'a> {
    fd: BorrowedFd<'a>,
}

/// Blocks until the exclusive lock on `file` is ours.
pub fn lock_exclusive<F: AsFd>(file: &F) -> io::Result<FileLock<'_>> {
    let fd = file.as_fd();
    loop {
        // SAFETY: flock takes a descriptor and an operation word; the borrowed
        // descriptor stays open for the call and the guard's lifetime.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(FileLock { fd });
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // SAFETY: as above; unlocking a lock we hold cannot fail in a way we could act on.
        unsafe { libc::flock(self.fd.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::process::Stdio;
    use std::time::Instant;

    #[test]
    fn kill_group_refuses_dangerous_group_ids() {
        // SAFETY: getpgrp takes no arguments and cannot fail.
        let own = unsafe { libc::getpgrp() };
        for pgid in [i32::MIN, -5, -1, 0, 1, own] {
            let error = kill_group(pgid, Signal::Term).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "pgid {pgid}");
        }
    }

    #[test]
    fn getsid_names_the_session_of_a_child_in_its_own_session() {
        // Our own session may be invisible (None) when its leader is outside this pid
        // namespace, as under a container's init; a child's new session never is.
        let own = getsid(i32::try_from(std::process::id()).unwrap());
        let mut command = Command::new("sleep");
        command.arg("30");
        sandbox_command(&mut command, 0o077);
        let mut child = command.spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // setsid in the child made it the leader of a new session named by its pid.
        assert_eq!(getsid(pid), Some(pid));
        assert_ne!(own, Some(pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(getsid(pid), None);
        assert_eq!(getsid(0), None);
        assert_eq!(getsid(-1), None);
    }

    #[test]
    fn kill_group_reaches_the_group_and_a_missing_group_is_ok() {
        // A shell in its own session with a background child: both are in the group.
        let mut command = Command::new("sh");
        command
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(Stdio::piped());
        sandbox_command(&mut command, 0o077);
        let mut child = command.spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let sleeper: i32 = line.trim().parse().unwrap();
        kill_group(pid, Signal::Kill).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{sleeper}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit_once(')')
                .unwrap()
                .1
                .trim_start()
                .starts_with('Z')
        }) {
            assert!(Instant::now() < deadline, "the background sleeper survived");
            std::thread::sleep(Duration::from_millis(5));
        }
        // No pid ever equals pid_max, so no group has that id: ESRCH, reported as Ok.
        let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        kill_group(pid_max, Signal::Kill).unwrap();
    }

    #[test]
    fn pidfd_refuses_init_and_ourselves_and_signals_a_child() {
        for pid in [-1, 0, 1, i32::try_from(getpid()).unwrap()] {
            assert_eq!(
                PidFd::open(pid).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let handle = PidFd::open(pid).unwrap();
        handle.send(Signal::Kill).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // Reaped: the handle now names a process that is gone, which is not an error.
        handle.send(Signal::Kill).unwrap();
    }

    #[test]
    fn child_has_exited_does_not_reap() {
        let mut child = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !child_has_exited(pid).unwrap() {
            assert!(Instant::now() < deadline, "child did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Still unreaped: the pid exists (as a zombie) and wait() gets the real status.
        assert!(process_alive(pid));
        assert_eq!(child.wait().unwrap().code(), Some(7));
        assert!(child_has_exited(0).is_err());
        assert!(child_has_exited(-3).is_err());
    }

    #[test]
    fn process_alive_answers_for_ourselves_and_refuses_groups() {
        assert!(process_alive(i32::try_from(getpid()).unwrap()));
        assert!(!process_alive(0));
        assert!(!process_alive(-1));
    }

    #[test]
    fn sandbox_command_sets_session_umask_and_core_limit() {
        let mut command = Command::new("sh");
        command
            .args(["-c", "umask; ulimit -c; ulimit -Hc; cat /proc/self/stat"])
            .stdout(Stdio::piped());
        sandbox_command(&mut command, 0o027);
        let output = command.output().unwrap();
        assert!(output.status.success());
        let text = String::from_utf8(output.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..3], ["0027", "0", "0"]);
        // `cat` runs in the shell's session: session id == the shell's pid, not ours.
        let after_comm = lines[3].rsplit_once(')').unwrap().1;
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        let session: u32 = fields[3].parse().unwrap();
        assert_ne!(session, getpid());
        assert_eq!(
            fields[2], fields[3],
            "the shell is its own group and session leader"
        );
    }

    #[test]
    fn wait_ready_and_nonblocking_on_a_pipe() {
        let mut child = Command::new("sh")
            .args(["-c", "read line; echo got $line"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        assert!(!wait_ready(
            stdout.as_fd(),
            Readiness::Readable,
            Duration::from_millis(20)
        )
        .unwrap());
        let stdin = child.stdin.take().unwrap();
        set_nonblocking(stdin.as_fd()).unwrap();
        assert!(wait_ready(stdin.as_fd(), Readiness::Writable, Duration::ZERO).unwrap());
        use std::io::{Read, Write};
        (&stdin).write_all(b"x\n").unwrap();
        drop(stdin);
        assert!(wait_ready(stdout.as_fd(), Readiness::Readable, Duration::from_secs(5)).unwrap());
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        assert_eq!(text, "got x\n");
        child.wait().unwrap();
    }

    /// Set in the child process that `termination_flag_is_set_by_sigterm` starts.
    const TERMINATION_CHILD_ENV: &str = "QVM_REMOTE_SYS_TEST_TERMINATION_CHILD";

    #[test]
    fn termination_flag_is_set_by_sigterm() {
        // The flag is process-wide and sticky, so the SIGTERM goes to a copy of this test
        // binary running only this test, never to the process other tests share.
        if std::env::var_os(TERMINATION_CHILD_ENV).is_none() {
            let output = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "sys::tests::termination_flag_is_set_by_sigterm"])
                .args(["--nocapture", "--test-threads=1"])
                .env(TERMINATION_CHILD_ENV, "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success() && stdout.contains("flag-set"),
                "child failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            return;
        }
        let flag = install_termination_flag().unwrap();
        assert!(!flag.load(Ordering::SeqCst));
        assert_eq!(termination_signal(), None);
        let pid = getpid().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !flag.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "SIGTERM did not set the flag");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(termination_signal(), Some(Signal::Term));
        println!("flag-set");
    }

    #[test]
    fn uid_helpers_agree_with_proc() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let uids: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap()
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        assert_eq!(getuid(), uids[0]);
        assert_eq!(geteuid(), uids[1]);
        assert!(!isatty(-1));
        block_sigpipe_in_current_thread().unwrap();
        ignore_sigpipe().unwrap();
    }

    #[test]
    fn poll_readable_reports_exactly_the_ready_descriptors() {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        let (mut a_tx, a_rx) = UnixStream::pair().unwrap();
        let (_b_tx, b_rx) = UnixStream::pair().unwrap();
        let mut ready = [false; 2];
        let fds = [a_rx.as_fd(), b_rx.as_fd()];
        assert_eq!(
            poll_readable(&fds, &mut ready, Duration::from_millis(10)).unwrap(),
            0
        );
        a_tx.write_all(b"x").unwrap();
        assert_eq!(
            poll_readable(&fds, &mut ready, Duration::from_secs(5)).unwrap(),
            1
        );
        assert_eq!(ready, [true, false]);
        let mut short = [false; 1];
        assert!(poll_readable(&fds, &mut short, Duration::ZERO).is_err());
    }
}
