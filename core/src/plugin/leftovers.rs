//! Retired host veths: DEL takes a pod's veth out of service without waiting for the kernel to
//! delete it, and the link is deleted later, many at a time.
//!
//! Deleting a veth costs its caller the kernel's RCU grace periods (~20 ms here), per request,
//! however many links the request deletes. So DEL *retires* the host veth instead: down (so
//! nothing passes either way, and the kernel flushes the routes through it) and moved into the
//! device group [`RETIRED`], in one request that costs no grace period worth the name. The link
//! then goes, whichever comes first:
//! - with the pod's netns, which the runtime removes right after DEL (the kernel deletes a
//!   namespace's links in one batch, in its own work queue);
//! - at the agent's next sweep (every 500 ms; `flatnet agent`'s `leftovers` module);
//! - in a sweeper this module forks after a plugin call that finds retired links pending, which
//!   waits [`SWEEP_DELAY`] (so that netns removals take most links first) and deletes the whole
//!   group in one request, off the runtime's clock;
//! - at ADD, synchronously, if it is the very link this ADD needs the name of;
//! - at GC, synchronously.
//!
//! Pending sweeps are files `retired/<host veth>` in the store's directory, written after the
//! link is retired and removed only after a group delete that followed them, so a sweeper killed
//! at any point leaves them for the next plugin call. `retired/sweeping` is locked (flock) by the
//! one sweeper at work: a call that finds it locked leaves the work to it, and that sweeper looks
//! again after it lets go, so nothing written meanwhile is missed.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::warn;

use super::host_veth_name_is_valid;
use crate::crashpoint;
use crate::netlink::{GroupDelete, Link, Netlink, RETIRED};

/// How long a forked sweeper waits before it deletes: enough for a runtime to remove the pod's
/// netns (which takes the link with it at no cost to anyone), well under the agent's 1 s bound.
pub const SWEEP_DELAY: Duration = Duration::from_millis(250);

const LOCK: &str = "sweeping";

fn dir(store_dir: &Path) -> PathBuf {
    store_dir.join("retired")
}

/// Takes `link` out of service: down (its routes flushed with it) and into [`RETIRED`], then
/// noted as pending. Noting comes after: a sweep must never clear a note before the link it
/// names is retired. A link already retired is noted again (its DEL may have died before).
pub(super) async fn retire(node: &Netlink, link: &Link, store_dir: &Path) -> io::Result<()> {
    if link.group != RETIRED || link.up {
        node.retire(link.index, RETIRED)
            .await
            .map_err(io::Error::other)?;
    }
    crashpoint::hit("del:retired");
    let d = dir(store_dir);
    fs::create_dir_all(&d)?;
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(d.join(&link.name))?;
    Ok(())
}

/// The notes pending: the names of retired links a sweep has not yet covered.
fn pending(d: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(d) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| host_veth_name_is_valid(n))
        .collect()
}

/// If retired links are pending and no sweeper is at work, forks one and returns at once. The
/// caller must be single-threaded here (the plugin is: a current-thread runtime, and its netns
/// threads are joined), and in the node's netns. Best effort: a failure is logged, and the
/// links wait for the next call, the agent or the netns removal.
pub(super) fn kick(store_dir: &Path) {
    let d = dir(store_dir);
    if pending(&d).is_empty() {
        return;
    }
    if let Err(e) = fork_sweeper(&d) {
        warn!(error = %e, "cannot start the sweeper of retired host veths");
    }
}

fn fork_sweeper(d: &Path) -> io::Result<()> {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(d.join(LOCK))?;
    if !try_lock(&lock)? {
        return Ok(()); // a sweeper is at work and looks again after it lets go
    }
    // Everything the child needs is made before the fork: it only makes syscalls.
    let del = GroupDelete::new(RETIRED)?;
    let null = File::open("/dev/null")?;
    let dir_path = d.to_path_buf();
    // SAFETY: the process is single-threaded (see `kick`), so the child is a full copy.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            let keep = [lock.as_raw_fd(), del.fd()];
            detach(null.into_raw_fd(), &keep);
            crashpoint::hit("sweep:started");
            let code = match sweep(&dir_path, &lock, &del) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            // SAFETY: ends the child without running the parent's exit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        _ => Ok(()), // the parent's copy of the lock closes here; the child holds it
    }
}

/// The child leaves the runtime's pipes (which must see EOF when the plugin exits), its session
/// and every descriptor but `keep` (a socket bound to a pod's netns would keep that alive).
fn detach(null: i32, keep: &[i32]) {
    // SAFETY: plain syscalls on descriptors this process owns.
    unsafe {
        libc::setsid();
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        let mut from = 3;
        let mut keep = keep.to_vec();
        keep.push(i32::MAX);
        keep.sort_unstable();
        for k in keep {
            if k > from {
                libc::syscall(libc::SYS_close_range, from as u32, (k - 1) as u32, 0u32);
            }
            from = from.max(k.saturating_add(1));
        }
    }
}

/// The sweeper's work: wait, then until no note is pending, delete the group and clear the
/// notes that the delete covered. Then let go of the lock and look once more, so a note written
/// while the lock was held is never left without a sweeper.
fn sweep(d: &Path, lock: &File, del: &GroupDelete) -> io::Result<()> {
    std::thread::sleep(SWEEP_DELAY);
    loop {
        let notes = pending(d);
        if notes.is_empty() {
            break;
        }
        del.run()?;
        crashpoint::hit("sweep:deleted");
        for n in notes {
            let _ = fs::remove_file(d.join(n));
        }
    }
    unlock(lock)?;
    if !pending(d).is_empty() && try_lock(lock)? {
        return sweep(d, lock, del);
    }
    Ok(())
}

/// Deletes every retired link now, waiting for the kernel, and clears the notes: for GC, and
/// for an ADD whose host veth name is held by a retired link.
pub(super) fn sweep_now(store_dir: &Path) -> io::Result<()> {
    let d = dir(store_dir);
    let notes = pending(&d);
    GroupDelete::new(RETIRED)?.run()?;
    for n in notes {
        let _ = fs::remove_file(d.join(n));
    }
    Ok(())
}

fn try_lock(f: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn unlock(f: &File) -> io::Result<()> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
