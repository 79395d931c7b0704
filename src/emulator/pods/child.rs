//! What a forked child may do before exec, and how it says what failed.
//!
//! Between fork and exec a child of a process that had threads may only make async-signal-safe
//! calls: no allocation (another thread may have held the allocator's lock at the fork), so no
//! `format!`. A child therefore reports a failure as raw bytes — the name of the step, a
//! `&'static str` prepared at compile time, and errno — through a close-on-exec pipe, and exits;
//! the parent, after the fork, turns them into an error. An empty pipe at EOF means the child
//! got as far as exec (the pipe closed with it) or, for a child that never execs, as far as it
//! closed its end on purpose.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A pipe whose ends close on exec: the read end for the parent, the write end for the child.
pub fn channel() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both entries with new fds on success, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new, open and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// In a forked child: sends `step` and the current errno through `wr`, then exits 127 (as a
/// shell does for a command it cannot run). Allocates nothing.
///
/// # Safety
/// Only for a child between fork and exec; `wr` is the write end of [`channel`].
pub unsafe fn fail(wr: RawFd, step: &'static str) -> ! {
    // SAFETY: errno is thread-local and readable at any time.
    let errno = unsafe { *libc::__errno_location() };
    let mut msg = [0u8; 132];
    let n = step.len().min(msg.len() - 4);
    msg[..n].copy_from_slice(&step.as_bytes()[..n]);
    msg[n..n + 4].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: write and _exit are async-signal-safe; msg outlives the call.
    unsafe {
        libc::write(wr, msg.as_ptr().cast(), n + 4);
        libc::_exit(127)
    }
}

/// In the parent: reads the child's report until EOF. `None` if the child reported nothing;
/// otherwise the failed step and the error.
pub fn outcome(rd: OwnedFd) -> Option<(String, io::Error)> {
    let mut msg = Vec::new();
    let _ = File::from(rd).read_to_end(&mut msg);
    if msg.len() < 4 {
        return None;
    }
    let (step, errno) = msg.split_at(msg.len() - 4);
    let errno = i32::from_le_bytes(errno.try_into().expect("four bytes"));
    Some((
        String::from_utf8_lossy(step).into_owned(),
        io::Error::from_raw_os_error(errno),
    ))
}

/// Whether this process has exactly one thread: unshare, setns into a mount or PID namespace,
/// and clone without exec are only sound then.
pub fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

/// Closes the write end in a child that goes on without exec, so that the parent sees EOF.
///
/// # Safety
/// Only in a forked child that owns no other reference to `wr`.
pub unsafe fn done(wr: &OwnedFd) {
    // SAFETY: closing our copy of the fd; the parent's copy is its own.
    unsafe { libc::close(wr.as_raw_fd()) };
}
