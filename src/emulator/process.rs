//! The agents' processes: started detached inside a node's namespace, and stopped only when the
//! process behind a recorded PID is still the one we started.
//!
//! A PID alone is not an identity: once the agent is gone the kernel may hand the number to
//! any other process. So a process is recorded with its start time (field 22 of
//! /proc/PID/stat), and stopped through a pidfd that is opened first and checked second: once
//! the pidfd is open it refers to that one process for good, so the check cannot be outrun.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::netns::NetNs;

/// A process, named so that a reused PID is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessId {
    pub pid: u32,
    /// In clock ticks since boot, as /proc/PID/stat has it.
    pub start_time: u64,
}

/// State letter and start time of `pid`, or None if there is no such process.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain anything, spaces included.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 (starttime) is 19 further on.
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

impl ProcessId {
    /// The process now running as `pid`, if any.
    pub fn of(pid: u32) -> Option<ProcessId> {
        stat(pid).map(|(_, start_time)| ProcessId { pid, start_time })
    }

    /// Whether this very process still runs (a zombie has finished running).
    pub fn is_running(&self) -> bool {
        matches!(stat(self.pid), Some((state, start)) if start == self.start_time && state != 'Z')
    }

    /// A pidfd on this very process, or None if it is gone or its PID now belongs to another.
    /// Once open, the pidfd names that one process for good, so the check cannot be outrun.
    pub(crate) fn pidfd(&self) -> io::Result<Option<OwnedFd>> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid as libc::pid_t, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ESRCH) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        // SAFETY: a fresh fd we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(self.is_running().then_some(pidfd))
    }

    /// SIGTERM without waiting, so that several processes can wind down at once; a process
    /// that is gone, or whose PID now belongs to another, is left alone.
    pub fn terminate(&self) {
        if let Ok(Some(pidfd)) = self.pidfd() {
            let _ = send(&pidfd, libc::SIGTERM);
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`. Returns once it has exited;
    /// a process that is already gone, or whose PID now belongs to another, is left alone.
    pub fn stop(&self, grace: Duration) -> io::Result<()> {
        let Some(pidfd) = self.pidfd()? else {
            return Ok(());
        };
        for (signal, wait) in [
            (libc::SIGTERM, grace),
            (libc::SIGKILL, Duration::from_secs(5)),
        ] {
            if !send(&pidfd, signal)? || wait_exit(&pidfd, wait)? {
                break;
            }
        }
        // Reap it if it is our own child (`demo` starts and stops agents in one process);
        // for anyone else's this fails with ECHILD, which is fine.
        // SAFETY: waitpid with WNOHANG on a pid, null status.
        unsafe { libc::waitpid(self.pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
        Ok(())
    }
}

/// Sends `signal` through a pidfd; false if the process has already exited.
fn send(pidfd: &OwnedFd, signal: i32) -> io::Result<bool> {
    // SAFETY: pidfd_send_signal on a pidfd we hold, no siginfo, no flags.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if sent == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Waits up to `timeout` for the process behind `pidfd` to exit; true if it did.
fn wait_exit(pidfd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: poll on one valid pollfd.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            -1 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            n => return Ok(n > 0),
        }
    }
}

/// Starts `exe args…` (inside `netns`, if given) in a session of its own, so the terminal's
/// Ctrl-C and the caller's exit do not reach it, with stdout and stderr appended to `log`.
pub fn spawn_detached(
    exe: &Path,
    args: &[String],
    netns: Option<&NetNs>,
    log: &Path,
) -> io::Result<ProcessId> {
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let fd = netns.map(|ns| ns.as_fd().as_raw_fd());
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: zeroed storage for a sigset_t, then filled by sigemptyset.
    let unblocked = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    };
    // SAFETY: only setns, setsid and sigprocmask (all async-signal-safe) run between fork and
    // exec, on a signal set made before the fork; the namespace fd stays open because `netns`
    // outlives the spawn.
    unsafe {
        cmd.pre_exec(move || {
            // A blocked signal stays blocked across exec: the starter's mask (the controller
            // and the supervisor block SIGTERM to take it with sigtimedwait) must not make
            // the new process deaf to SIGTERM.
            if fd.is_some_and(|fd| libc::setns(fd, libc::CLONE_NEWNET) != 0)
                || libc::setsid() < 0
                || libc::sigprocmask(libc::SIG_SETMASK, &unblocked, std::ptr::null_mut()) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id();
    ProcessId::of(pid).ok_or_else(|| io::Error::other(format!("process {pid} exited at once")))
}

/// Every process for which `wanted(its /proc dir, its argv split at NULs)` holds: one walk
/// over /proc.
fn scan(wanted: impl Fn(&Path, &[&[u8]]) -> bool) -> Vec<ProcessId> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if wanted(&dir, &argv) {
            found.extend(ProcessId::of(pid));
        }
    }
    found
}

/// Every process whose command line satisfies `wanted`.
pub fn find(wanted: impl Fn(&[&[u8]]) -> bool) -> Vec<ProcessId> {
    scan(|_, argv| wanted(argv))
}

/// Whether the process at `proc_dir` is in the namespace whose file has metadata `ns`.
fn in_ns(proc_dir: &Path, ns: &std::fs::Metadata) -> bool {
    std::fs::metadata(proc_dir.join("ns/net"))
        .is_ok_and(|m| m.dev() == ns.dev() && m.ino() == ns.ino())
}

/// Every process inside the named network namespace at `netns_path`.
pub fn in_netns(netns_path: &Path) -> Vec<ProcessId> {
    let Ok(ns) = std::fs::metadata(netns_path) else {
        return Vec::new();
    };
    scan(|dir, _| in_ns(dir, &ns))
}

/// The agents of a node whose state was lost: `flatnet agent …` in the node's namespace.
pub fn agents_in(netns_path: &Path) -> Vec<ProcessId> {
    let Ok(ns) = std::fs::metadata(netns_path) else {
        return Vec::new();
    };
    scan(|dir, argv| {
        argv.first().is_some_and(|a| a.ends_with(b"flatnet"))
            && argv.get(1) == Some(&b"agent".as_slice())
            && in_ns(dir, &ns)
    })
}
