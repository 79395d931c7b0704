//! Ctrl-C during a long command: instead of dying half-way and leaving namespaces and agents
//! behind, the command notices at its next step, fails with [`Error::Interrupted`], and its
//! cleanup runs as for any other failure.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Catches SIGINT and SIGTERM from now on. Children get the default action back at exec.
pub fn install() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Fails if an interrupt has come in.
pub fn check() -> Result<()> {
    if REQUESTED.load(Ordering::SeqCst) {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// SIGINT and SIGTERM held back until [`Held::release`]: for work that must finish once
/// started, like `down`. The mask is inherited by every process started meanwhile, so a Ctrl-C
/// at the terminal (sent to the whole foreground process group) does not kill the plugins
/// `down` runs half-way through their DEL either.
pub struct Held {
    set: libc::sigset_t,
}

/// Holds SIGINT and SIGTERM back, for the calling thread and the threads and processes it
/// starts from now on.
pub fn hold() -> Held {
    // SAFETY: building a signal set and blocking it for this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        Held { set }
    }
}

impl Held {
    /// Lets the signals through again; true if one came in meanwhile (or before).
    pub fn release(self) -> bool {
        // SAFETY: reading the pending set, then unblocking what `hold` blocked; a pending
        // signal is then delivered to the handler `install` set.
        unsafe {
            let mut pending: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&mut pending);
            let came = libc::sigismember(&pending, libc::SIGINT) == 1
                || libc::sigismember(&pending, libc::SIGTERM) == 1;
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &self.set, std::ptr::null_mut());
            came || check().is_err()
        }
    }
}
