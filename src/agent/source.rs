//! Where the agent learns the cluster's nodes. The reconcile loop only ever asks for the whole
//! list, so a source needs no notion of deltas: the emulator's registry directory today, the
//! Kubernetes API later.

use std::ffi::CString;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::{Interval, MissedTickBehavior};
use tracing::debug;

use super::Refusal;
use crate::registry::{Listed, Registry};

/// A source of the cluster's node list.
pub trait NodeSource {
    /// Waits until the list may have changed, or until the source's resync period has passed,
    /// and returns the whole list, each entry as read (unreadable ones included, so that the
    /// agent can tell them from a node that left). The first call returns at once. The resync
    /// is there because a watch can miss changes (a directory that did not exist yet, a
    /// dropped connection) and because routes drift without any change to the list (someone
    /// edits them by hand).
    fn next(&mut self) -> impl Future<Output = io::Result<Vec<Listed>>> + Send;

    /// Told about records the agent has just refused (each once, until it is accepted again),
    /// so that the source can report them where its users look; the agent logs them anyway.
    fn refused(&mut self, _new: &[Refusal]) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// Events that may mean a record appeared, changed or went. Records are replaced by rename,
/// so the directory is watched, never the files: a rename over a file drops a watch on it.
const WATCH_MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

/// The emulator's registry directory, watched with inotify.
pub struct RegistrySource {
    registry: Registry,
    inotify: AsyncFd<OwnedFd>,
    /// None while the directory is not watched: it does not exist (yet), or it was removed or
    /// moved away. Every call retries, so the resync period bounds how late a new directory
    /// is noticed.
    watch: Option<i32>,
    resync: Interval,
}

impl RegistrySource {
    /// Must be called inside a tokio runtime. `resync` must not be zero.
    pub fn new(registry: Registry, resync: Duration) -> io::Result<RegistrySource> {
        if resync.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the resync period must not be zero",
            ));
        }
        // SAFETY: plain syscall; the fd is checked before being owned.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut resync = tokio::time::interval(resync);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // SAFETY: the AsyncFd owns the fd, so it stays open and the same until it is dropped.
        let inotify = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
        Ok(RegistrySource {
            registry,
            inotify,
            watch: None,
            resync,
        })
    }

    fn ensure_watch(&mut self) {
        if self.watch.is_some() {
            return;
        }
        let dir = self.registry.dir();
        let added = CString::new(dir.as_os_str().as_bytes())
            .map_err(io::Error::other)
            .and_then(|path| {
                // SAFETY: a valid inotify fd and a NUL-terminated path.
                let wd = unsafe {
                    libc::inotify_add_watch(self.inotify.as_raw_fd(), path.as_ptr(), WATCH_MASK)
                };
                if wd < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(wd)
                }
            });
        match added {
            Ok(wd) => {
                debug!(dir = %dir.display(), "watching the registry");
                self.watch = Some(wd);
            }
            Err(e) => debug!(dir = %dir.display(), "cannot watch the registry yet: {e}"),
        }
    }
}

impl NodeSource for RegistrySource {
    async fn next(&mut self) -> io::Result<Vec<Listed>> {
        // Watch before listing, so that nothing changes unseen between the list and the watch.
        self.ensure_watch();
        tokio::select! {
            r = wait_for_events(&self.inotify, &mut self.watch) => r?,
            _ = self.resync.tick() => {}
        }
        // Whatever woke us, the list is now fresh: the next resync is a full period away.
        self.resync.reset();
        self.registry.list()
    }
}

/// Waits for at least one inotify event and consumes all that are queued, so a burst (a
/// temp file written, then renamed) costs one re-list rather than one per event.
async fn wait_for_events(fd: &AsyncFd<OwnedFd>, watch: &mut Option<i32>) -> io::Result<()> {
    // Room for many events; one needs at most a header and NAME_MAX + 1 bytes.
    let mut buf = [0u8; 4096];
    loop {
        let mut ready = fd.readable().await?;
        let mut got = false;
        loop {
            // SAFETY: reads into a buffer we own, within its length.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    ready.clear_ready();
                    break;
                }
                return Err(e);
            }
            got = true;
            for (wd, mask) in events(&buf[..n as usize]) {
                debug!(wd, mask = format_args!("{mask:#x}"), "registry event");
                if Some(wd) != *watch {
                    continue;
                }
                if mask & libc::IN_MOVE_SELF != 0 {
                    // The watch follows the directory to its new name; the registry is the
                    // path, so drop it and watch whatever is at the path next time.
                    // SAFETY: removing our own watch from our own inotify fd.
                    unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), wd) };
                    *watch = None;
                }
                if mask & libc::IN_IGNORED != 0 {
                    *watch = None;
                }
            }
        }
        if got {
            return Ok(());
        }
    }
}

/// The (watch descriptor, mask) of each event in `buf`, as read(2) returned them.
fn events(buf: &[u8]) -> Vec<(i32, u32)> {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut out = Vec::new();
    let mut at = 0;
    while at + HEADER <= buf.len() {
        // SAFETY: HEADER bytes are in bounds; read_unaligned needs no alignment.
        let ev: libc::inotify_event =
            unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
        out.push((ev.wd, ev.mask));
        at += HEADER + ev.len as usize;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::NodeRecord;

    fn event(wd: i32, mask: u32, name: &[u8]) -> Vec<u8> {
        let len = name.len().next_multiple_of(16);
        let mut b = Vec::new();
        b.extend_from_slice(&wd.to_ne_bytes());
        b.extend_from_slice(&mask.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(name);
        b.resize(b.len() + len - name.len(), 0);
        b
    }

    #[test]
    fn parses_a_batch_of_events() {
        let mut buf = event(1, libc::IN_MOVED_TO, b"node-2.json");
        buf.extend(event(1, libc::IN_IGNORED, b""));
        buf.extend(event(3, libc::IN_DELETE, b"a-rather-long-file-name.json"));
        assert_eq!(
            events(&buf),
            vec![
                (1, libc::IN_MOVED_TO),
                (1, libc::IN_IGNORED),
                (3, libc::IN_DELETE)
            ]
        );
    }

    fn dir(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("flatnet-source-{tag}-{}", std::process::id()))
    }

    fn node(name: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            node_ip: "172.18.0.2".parse().unwrap(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
        }
    }

    async fn next_within(src: &mut RegistrySource, limit: Duration) -> Vec<Listed> {
        tokio::time::timeout(limit, src.next())
            .await
            .expect("the source answered")
            .unwrap()
    }

    /// The first non-empty list: a burst may wake the source before the rename lands; the
    /// rename wakes it again.
    async fn next_nonempty(src: &mut RegistrySource, limit: Duration) -> Vec<Listed> {
        loop {
            let seen = next_within(src, limit).await;
            if !seen.is_empty() {
                return seen;
            }
        }
    }

    /// With a resync far beyond the test's patience, each answer after the first comes from
    /// the watch.
    #[tokio::test(flavor = "current_thread")]
    async fn the_watch_sees_renames_and_removals() {
        let d = dir("watch");
        std::fs::create_dir_all(&d).unwrap();
        let reg = Registry::new(&d);
        let mut src = RegistrySource::new(reg.clone(), Duration::from_secs(3600)).unwrap();
        let patience = Duration::from_secs(10);
        assert!(next_within(&mut src, patience).await.is_empty());
        reg.put(&node("node-1")).unwrap();
        assert_eq!(
            next_nonempty(&mut src, patience).await,
            vec![Listed::valid(node("node-1"))]
        );
        reg.remove("node-1").unwrap();
        assert!(next_within(&mut src, patience).await.is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A directory that appears after the agent started is found at the next resync, and
    /// watched from then on.
    #[tokio::test(flavor = "current_thread")]
    async fn a_late_directory_is_picked_up() {
        let d = dir("late");
        let reg = Registry::new(&d);
        let mut src = RegistrySource::new(reg.clone(), Duration::from_millis(50)).unwrap();
        let patience = Duration::from_secs(10);
        assert!(next_within(&mut src, patience).await.is_empty());
        reg.put(&node("node-1")).unwrap();
        assert_eq!(
            next_nonempty(&mut src, patience).await,
            vec![Listed::valid(node("node-1"))]
        );
        assert!(src.watch.is_some());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn zero_resync_is_refused() {
        let e = RegistrySource::new(Registry::new("/nonexistent"), Duration::ZERO).err();
        assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
    }
}
