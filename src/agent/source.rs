//! Where the agent learns the cluster's nodes. The reconcile loop only ever asks for the whole
//! list, so a source needs no notion of deltas: the emulator's registry directory today, the
//! Kubernetes API later.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use ipnetwork::IpNetwork;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::policy::{Changes, Delta, Objects};
use super::Refusal;
use crate::registry::{Kind, Listed, NodeRecord, Registry};

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

    /// Publishes this node's networks (its node IPs with their links' prefix lengths) where
    /// its peers read them; called when they differ from what its record says. Peers decide
    /// direct or tunnel with them (see `overlay`). A failure is logged: until it works, the
    /// peers decide with the old value.
    fn publish_networks(
        &mut self,
        _node: &str,
        _networks: &[IpNetwork],
    ) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// The pods, namespaces and NetworkPolicies as of the last [`NodeSource::next`], which
    /// also wakes for changes to them. A source that has none has no policies to enforce.
    fn objects(&self) -> Objects {
        Objects::default()
    }

    /// What changed among the objects since the last call: a source that cannot tell says
    /// [`Changes::All`], and the agent judges every object again.
    fn object_changes(&mut self) -> Changes {
        Changes::All
    }
}

/// Events that may mean a record appeared, changed or went. Records are replaced by rename,
/// so the directory is watched, never the files: a rename over a file drops a watch on it.
/// CREATE: for a kind's subdirectory appearing (a created file is a temp file, and ignored).
const WATCH_MASK: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::CREATE)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

/// The emulator's registry directory, watched with inotify.
pub struct RegistrySource {
    registry: Registry,
    inotify: AsyncFd<Inotify>,
    /// None while the directory is not watched: it does not exist (yet), or it was removed or
    /// moved away. Every call retries, so the resync period bounds how late a new directory
    /// is noticed.
    watch: Option<WatchDescriptor>,
    /// The subdirectories of [`Kind::ALL`], in that order, the same way.
    kinds: [Option<WatchDescriptor>; 3],
    objects: Objects,
    /// What changed since the agent last asked.
    changes: Changes,
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
        // A non-blocking, close-on-exec inotify fd, registered with the runtime.
        // SAFETY: the Inotify owns its fd for as long as it lives, and as_raw_fd always
        // returns that one fd; the AsyncFd owns the Inotify.
        let inotify =
            unsafe { AsyncFd::register_with_interest(Inotify::init()?, Interest::READABLE)? };
        let mut resync = tokio::time::interval(resync);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(RegistrySource {
            registry,
            inotify,
            watch: None,
            kinds: [None, None, None],
            objects: Objects::default(),
            changes: Changes::All,
            resync,
        })
    }

    /// Returns whether it began to watch a kind's subdirectory, whose files may have been
    /// written unseen.
    fn ensure_watch(&mut self) -> bool {
        let mut added = false;
        if self.watch.is_none() {
            let dir = self.registry.dir();
            match self.inotify.get_mut().watches().add(dir, WATCH_MASK) {
                Ok(wd) => {
                    debug!(dir = %dir.display(), "watching the registry");
                    self.watch = Some(wd);
                }
                Err(e) => debug!(dir = %dir.display(), "cannot watch the registry yet: {e}"),
            }
        }
        for (slot, kind) in self.kinds.iter_mut().zip(Kind::ALL) {
            if slot.is_none() {
                let dir = self.registry.kind_dir(kind);
                if let Ok(wd) = self.inotify.get_mut().watches().add(&dir, WATCH_MASK) {
                    debug!(dir = %dir.display(), "watching the registry");
                    *slot = Some(wd);
                    added = true;
                }
            }
        }
        added
    }
}

impl NodeSource for RegistrySource {
    async fn next(&mut self) -> io::Result<Vec<Listed>> {
        // Watch before listing, so that nothing changes unseen between the list and the watch.
        self.ensure_watch();
        // The objects named by the events; all of them at a resync, or when the events
        // cannot say (a queue overflow, a kind's directory replaced).
        let mut named: [BTreeSet<String>; 3] = Default::default();
        let mut all = false;
        tokio::select! {
            r = wait_for_events(&mut self.inotify, &mut self.watch, &mut self.kinds, (&mut named, &mut all)) => r?,
            _ = self.resync.tick() => all = true,
        }
        // A subdirectory that has just appeared is watched before it is read.
        all |= self.ensure_watch();
        // Whatever woke us, the list is now fresh: the next resync is a full period away.
        self.resync.reset();
        if all {
            self.objects = Objects::from_registry(&self.registry)?;
            self.changes = Changes::All;
        } else {
            let delta = Delta::from_registry(&self.registry, &named);
            self.objects.apply(&delta);
            if let Changes::Some(pending) = &mut self.changes {
                pending.extend(delta);
            }
        }
        self.registry.list()
    }

    fn objects(&self) -> Objects {
        self.objects.clone()
    }

    /// Rewrites the node's own record with `networks`, as a Kubernetes agent patches its
    /// Node's annotation; nothing else of the record changes, and a record that does not
    /// parse or names another node is left alone.
    async fn publish_networks(&mut self, node: &str, networks: &[IpNetwork]) {
        match publish(&self.registry, node, networks) {
            Ok(true) => info!(networks = ?networks, "this node's network published in its record"),
            Ok(false) => debug!("this node's record went or changed meanwhile: not published"),
            Err(e) => warn!("publish this node's network in its record: {e}"),
        }
    }

    fn object_changes(&mut self) -> Changes {
        std::mem::replace(&mut self.changes, Changes::Some(Delta::default()))
    }
}

/// Puts `networks` into `node`'s record if the record is still what was read: the new one is
/// swapped in with `RENAME_EXCHANGE`, which fails if the file is gone (a node removed
/// meanwhile is not brought back), and swapped back if what it replaced is not what was read
/// (someone rewrote it meanwhile: theirs stands). Whether it was written.
fn publish(registry: &Registry, node: &str, networks: &[IpNetwork]) -> io::Result<bool> {
    if node.is_empty() || node.starts_with('.') || node.contains('/') {
        return Ok(false);
    }
    let path = registry.dir().join(format!("{node}.json"));
    let old = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut record = match serde_json::from_slice::<NodeRecord>(&old) {
        Ok(r) if r.name == node => r,
        _ => return Ok(false),
    };
    record.node_networks = networks.to_vec();
    let new = serde_json::to_vec_pretty(&record).map_err(io::Error::other)?;
    // A name starting with '.': the registry lists no such file.
    let tmp = registry
        .dir()
        .join(format!(".{node}.json.publish.{}", std::process::id()));
    std::fs::write(&tmp, &new)?;
    let swapped = match exchange(&tmp, &path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
        Ok(()) => match std::fs::read(&tmp) {
            Ok(replaced) if replaced == old => Ok(true),
            _ => exchange(&tmp, &path).map(|()| false),
        },
    };
    let _ = std::fs::remove_file(&tmp);
    swapped
}

/// Swaps the files at `a` and `b` in one step (renameat2 RENAME_EXCHANGE).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: renameat2 on two NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for at least one inotify event and consumes all that are queued, so a burst (a
/// temp file written, then renamed) costs one re-list rather than one per event.
async fn wait_for_events(
    fd: &mut AsyncFd<Inotify>,
    watch: &mut Option<WatchDescriptor>,
    kinds: &mut [Option<WatchDescriptor>; 3],
    (named, all): (&mut [BTreeSet<String>; 3], &mut bool),
) -> io::Result<()> {
    // Room for many events; one needs at most a header and NAME_MAX + 1 bytes.
    let mut buf = [0u8; 4096];
    loop {
        let mut ready = fd.readable_mut().await?;
        let mut got = false;
        loop {
            let inotify = ready.get_inner_mut();
            let mut gone = false;
            let mut gone_kinds = Vec::new();
            match inotify.read_events(&mut buf) {
                Ok(events) => {
                    for ev in events {
                        debug!(mask = ?ev.mask, "registry event");
                        // A file created is a temp file a rename will follow.
                        if ev.mask.contains(EventMask::CREATE)
                            && !ev.mask.contains(EventMask::ISDIR)
                        {
                            continue;
                        }
                        got = true;
                        *all |= ev.mask.contains(EventMask::Q_OVERFLOW);
                        if let Some(i) = kinds.iter().position(|k| k.as_ref() == Some(&ev.wd)) {
                            match ev.name.and_then(crate::registry::record_key) {
                                Some(key) => {
                                    named[i].insert(key.to_string());
                                }
                                // The directory itself: it went, or moved.
                                None => *all |= ev.name.is_none(),
                            }
                            if ev
                                .mask
                                .intersects(EventMask::MOVE_SELF | EventMask::IGNORED)
                            {
                                gone_kinds.push(i);
                            }
                            continue;
                        }
                        // A kind's directory made, removed or replaced.
                        *all |= ev.mask.contains(EventMask::ISDIR);
                        if Some(&ev.wd) != watch.as_ref() {
                            continue;
                        }
                        // The watch follows a moved directory to its new name; the registry
                        // is the path, so drop it and watch whatever is at the path next time.
                        // IGNORED: the kernel dropped it (the directory went).
                        gone |= ev
                            .mask
                            .intersects(EventMask::MOVE_SELF | EventMask::IGNORED);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    break;
                }
                Err(e) => return Err(e),
            }
            if gone {
                if let Some(wd) = watch.take() {
                    // Already gone after IGNORED: nothing to remove then.
                    let _ = ready.get_inner_mut().watches().remove(wd);
                }
            }
            for i in gone_kinds {
                if let Some(wd) = kinds[i].take() {
                    let _ = ready.get_inner_mut().watches().remove(wd);
                }
            }
        }
        if got {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeRecord {
        NodeRecord::v4(
            name,
            "172.18.0.2".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
        )
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
        let d = tempfile::tempdir().unwrap();
        let reg = Registry::new(d.path());
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
    }

    /// A directory that appears after the agent started is found at the next resync, and
    /// watched from then on.
    #[tokio::test(flavor = "current_thread")]
    async fn a_late_directory_is_picked_up() {
        let d = tempfile::tempdir().unwrap();
        let reg = Registry::new(d.path().join("registry"));
        let mut src = RegistrySource::new(reg.clone(), Duration::from_millis(50)).unwrap();
        let patience = Duration::from_secs(10);
        assert!(next_within(&mut src, patience).await.is_empty());
        reg.put(&node("node-1")).unwrap();
        assert_eq!(
            next_nonempty(&mut src, patience).await,
            vec![Listed::valid(node("node-1"))]
        );
        assert!(src.watch.is_some());
    }

    /// A kind's subdirectory that appears after the agent started is watched at once, and a
    /// record written into it wakes the source.
    #[tokio::test(flavor = "current_thread")]
    async fn pods_namespaces_and_policies_are_watched_like_node_records() {
        let d = tempfile::tempdir().unwrap();
        let reg = Registry::new(d.path());
        let mut src = RegistrySource::new(reg.clone(), Duration::from_secs(3600)).unwrap();
        let patience = Duration::from_secs(10);
        assert!(next_within(&mut src, patience).await.is_empty());
        let ns = crate::agent::policy::NamespaceInfo {
            name: "x".into(),
            labels: Default::default(),
        };
        reg.put_object(Kind::Namespaces, "x", &ns).unwrap();
        while src.objects().namespaces.is_empty() {
            next_within(&mut src, patience).await;
        }
        assert_eq!(src.objects().namespaces[0].value.as_ref().unwrap(), &ns);
        reg.put_object(
            Kind::Policies,
            "x_p",
            &serde_json::json!({"metadata": {"name": "p"}}),
        )
        .unwrap();
        while src.objects().policies.is_empty() {
            next_within(&mut src, patience).await;
        }
        reg.remove_object(Kind::Namespaces, "x").unwrap();
        while !src.objects().namespaces.is_empty() {
            next_within(&mut src, patience).await;
        }
    }

    /// Between resyncs, the source reads and reports only the records the events named.
    #[tokio::test(flavor = "current_thread")]
    async fn a_change_reads_only_the_records_it_names() {
        let d = tempfile::tempdir().unwrap();
        let reg = Registry::new(d.path());
        let ns = |name: &str| crate::agent::policy::NamespaceInfo {
            name: name.into(),
            labels: Default::default(),
        };
        reg.put_object(Kind::Namespaces, "a", &ns("a")).unwrap();
        let mut src = RegistrySource::new(reg.clone(), Duration::from_secs(3600)).unwrap();
        let patience = Duration::from_secs(10);
        next_within(&mut src, patience).await;
        assert_eq!(src.object_changes(), Changes::All);
        reg.put_object(Kind::Namespaces, "b", &ns("b")).unwrap();
        let mut seen = Delta::default();
        while seen.namespaces.is_empty() {
            next_within(&mut src, patience).await;
            let Changes::Some(delta) = src.object_changes() else {
                panic!("a full read without a resync");
            };
            seen.extend(delta);
        }
        assert_eq!(seen.namespaces, vec![("b".to_string(), Some(Ok(ns("b"))))]);
        assert_eq!(src.objects().namespaces.len(), 2);
        reg.remove_object(Kind::Namespaces, "a").unwrap();
        while src.objects().namespaces.len() == 2 {
            next_within(&mut src, patience).await;
        }
        let Changes::Some(delta) = src.object_changes() else {
            panic!("a full read without a resync");
        };
        assert!(
            delta.namespaces.contains(&("a".to_string(), None)),
            "{delta:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn publishing_rewrites_only_the_own_records_networks() {
        let d = tempfile::tempdir().unwrap();
        let reg = Registry::new(d.path());
        let mut src = RegistrySource::new(reg.clone(), Duration::from_secs(3600)).unwrap();
        reg.put(&node("node-1")).unwrap();
        let net: IpNetwork = "172.18.0.2/24".parse().unwrap();
        src.publish_networks("node-1", &[net]).await;
        let want = NodeRecord {
            node_networks: vec![net],
            ..node("node-1")
        };
        assert_eq!(reg.list().unwrap(), vec![Listed::valid(want)]);
        // A file under this node's name that names another node is not written through.
        std::fs::write(
            d.path().join("node-2.json"),
            serde_json::to_vec(&node("node-3")).unwrap(),
        )
        .unwrap();
        src.publish_networks("node-2", &[net]).await;
        assert!(!d.path().join("node-3.json").exists());
        // A record that is gone stays gone.
        src.publish_networks("node-9", &[net]).await;
        assert!(!d.path().join("node-9.json").exists());
        assert_eq!(
            reg.list().unwrap()[1].record.as_ref().unwrap(),
            &node("node-3")
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn zero_resync_is_refused() {
        let e = RegistrySource::new(Registry::new("/nonexistent"), Duration::ZERO).err();
        assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
    }
}
