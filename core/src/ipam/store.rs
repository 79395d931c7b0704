//! The store on disk: the lock, atomic durable writes, reserve and release, and what is done
//! with entries that cannot be read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::warn;

use super::{Attachment, Error, FamilyPool, Result};
use crate::crashpoint;

/// The format this code writes and reads; a later release that changes the layout bumps it and
/// migrates older stores.
pub const FORMAT_VERSION: &str = "1";

/// An owner line is at most a 200-byte container ID, a space, a 15-byte ifname and a newline;
/// anything longer is not one, and is not read further.
const MAX_ENTRY: u64 = 256;

/// An IPAM store directory (see the module docs of `ipam` for its layout).
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// The store while this process holds its lock; dropping it releases the lock.
pub struct Locked<'a> {
    store: &'a Store,
    _lock: File,
}

/// Who an `ips/<ip>` entry says holds the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Owner(Attachment),
    /// Not an owner line (empty, garbage, not UTF-8, a directory, a link…): the address stays
    /// out of use until GC repairs the entry or sets it aside.
    Unreadable(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    move |cause| Error::Io {
        what: what.into(),
        cause,
    }
}

impl Store {
    /// Opens the store at `dir`, creating it if needed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store> {
        let store = Store { dir: dir.into() };
        for sub in ["ips", "attachments", "tmp"] {
            let d = store.dir.join(sub);
            fs::create_dir_all(&d).map_err(io_err(format!("create {}", d.display())))?;
        }
        let version = store.dir.join("version");
        match fs::read_to_string(&version) {
            Ok(v) if v.trim() == FORMAT_VERSION => {}
            Ok(v) => {
                return Err(Error::UnsupportedFormat {
                    dir: store.dir.clone(),
                    found: v.trim().to_string(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Racing creators write the same content; rename makes either one whole.
                store.write_replace(&version, FORMAT_VERSION, Some("store:write-version"))?;
            }
            Err(e) => return Err(io_err(format!("read {}", version.display()))(e)),
        }
        Ok(store)
    }

    /// Whether no address has an entry: one small directory read, however many there are.
    /// Only a hint, unlocked: another call may reserve meanwhile.
    pub fn is_empty(&self) -> Result<bool> {
        let dir = self.dir.join("ips");
        let list_err = || io_err(format!("list {}", dir.display()));
        let file = File::open(&dir).map_err(list_err())?;
        // One small getdents64, not `read_dir`: libc asks for 32 KiB of entries at a time, and
        // on tmpfs filling that cost ADD ~1 ms at a few thousand pods, to learn one bit.
        // Room for at least one entry of the longest name (19 + 256 bytes), and few more.
        let mut buf = [0u8; 512];
        loop {
            // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`, which lives
            // across the call; `file` keeps the fd open.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    file.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
            let n = usize::try_from(n).map_err(|_| list_err()(io::Error::last_os_error()))?;
            if n == 0 {
                return Ok(true);
            }
            // struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name (NUL-ended).
            let mut at = 0;
            while at + 19 < n {
                let reclen = usize::from(u16::from_ne_bytes([buf[at + 16], buf[at + 17]]));
                let name = &buf[at + 19..(at + reclen).min(n)];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                if name != b"." && name != b".." {
                    return Ok(false);
                }
                at += reclen.max(1);
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the store's cross-process lock, waiting up to `timeout`.
    pub fn lock(&self, timeout: Duration) -> Result<Locked<'_>> {
        let path = self.dir.join("lock");
        let file =
            crate::fsutil::lock_file(&path).map_err(io_err(format!("open {}", path.display())))?;
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_micros(200);
        loop {
            if crate::fsutil::flock(&file, false)
                .map_err(io_err(format!("lock {}", path.display())))?
            {
                return Ok(Locked {
                    store: self,
                    _lock: file,
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::LockTimeout(path));
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(10));
        }
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join("ips").join(ip.to_string())
    }

    /// Only for a validated owner: its ID and ifname cannot hold '/', ':' or "..".
    fn attachment_path(&self, a: &Attachment) -> PathBuf {
        debug_assert!(a.is_valid(), "unvalidated owner {a:?}");
        self.dir
            .join("attachments")
            .join(format!("{}:{}", a.container_id, a.ifname))
    }

    /// Writes `content` to a new file under tmp/ and makes it durable. The name is new: a file
    /// left by a killed process, even one with our PID, is never opened again, so nothing
    /// hard-linked to it can change. A failed write leaves no file.
    fn write_temp(&self, content: &str, point: Option<&'static str>) -> Result<PathBuf> {
        // create_new (O_EXCL) is what makes a name ours; the counter only saves retries.
        thread_local! {
            static SEQ: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        }
        let (tmp, mut f) = loop {
            let seq = SEQ.with(|c| c.replace(c.get() + 1));
            let tmp = self
                .dir
                .join("tmp")
                .join(format!("{}.{seq}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(format!("create {}", tmp.display()))(e)),
            }
        };
        let (head, tail) = content.as_bytes().split_at(content.len() / 2);
        let written = f
            .write_all(head)
            .map(|_| point.map_or((), crashpoint::hit))
            .and_then(|_| f.write_all(tail))
            .and_then(|_| f.sync_all());
        if let Err(e) = written {
            drop(f);
            let _ = fs::remove_file(&tmp);
            return Err(io_err(format!("write {}", tmp.display()))(e));
        }
        Ok(tmp)
    }

    /// Replaces `path` with `content`, whole or not at all.
    fn write_replace(&self, path: &Path, content: &str, point: Option<&'static str>) -> Result<()> {
        let tmp = self.write_temp(content, point)?;
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(format!("rename onto {}", path.display()))(e));
        }
        sync_dir(path.parent().expect("store paths have a parent"))
    }

    /// Claims `ip` for `owner`: a complete owner file, hard-linked into place, which fails if
    /// the address has an entry. Returns whether it claimed; durable when it did.
    fn claim(&self, ip: IpAddr, owner: &Attachment) -> Result<bool> {
        let tmp = self.write_temp(&owner_line(owner), Some("store:write-owner"))?;
        let linked = fs::hard_link(&tmp, self.ip_path(ip));
        if linked.is_ok() {
            crashpoint::hit("store:claimed");
        }
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err(format!("claim {ip}"))(e)),
        }
        if let Err(e) = sync_dir(&self.dir.join("ips")) {
            let _ = fs::remove_file(self.ip_path(ip));
            return Err(e);
        }
        Ok(true)
    }

    /// Where the search of `pool`'s family resumes: one cursor per family.
    fn cursor_path(&self, pool: &FamilyPool) -> PathBuf {
        self.dir.join(if pool.is_v6() {
            "last-reserved6"
        } else {
            "last-reserved"
        })
    }

    /// The first address of `pool` after `last` that has no entry; stops there, so its cost is
    /// the run of taken addresses after the cursor, never the size of the pool.
    fn next_free(&self, pool: &FamilyPool, last: Option<IpAddr>) -> Result<Option<IpAddr>> {
        for ip in pool.candidates_after(last) {
            // Under the lock nobody else claims, so a free name stays free until we link it.
            match self.ip_path(ip).symlink_metadata() {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(ip)),
                Ok(_) => continue,
                Err(e) => return Err(io_err(format!("stat {}", self.ip_path(ip).display()))(e)),
            }
        }
        Ok(None)
    }

    /// Moves an entry that cannot be used out of the way, into quarantine/, where it stays for
    /// a person to look at. The entry's own name is kept (made printable), never its content.
    fn quarantine(&self, path: &Path, why: &str) -> Result<()> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let q = self.dir.join("quarantine");
        fs::create_dir_all(&q).map_err(io_err(format!("create {}", q.display())))?;
        let kind = path
            .parent()
            .and_then(Path::file_name)
            .map_or_else(String::new, |n| printable(n.as_encoded_bytes()));
        let name = printable(path.file_name().unwrap_or_default().as_encoded_bytes());
        let dest = q.join(format!(
            "{kind}.{name}.{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::rename(path, &dest).map_err(io_err(format!("quarantine {}", path.display())))?;
        warn!(entry = %path.display(), moved_to = %dest.display(), why, "IPAM store entry set aside");
        sync_dir(path.parent().expect("store paths have a parent"))
    }

    /// Removes an entry; one that is not a plain file (a directory, say) is set aside instead.
    fn discard(&self, path: &Path) -> Result<()> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) if path.symlink_metadata().is_ok_and(|m| m.is_dir()) => {
                self.quarantine(path, &format!("a directory where a file belongs ({e})"))
            }
            Err(e) => Err(io_err(format!("remove {}", path.display()))(e)),
        }
    }
}

/// A file name as printable ASCII: other bytes as %XX.
fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("sync {}", dir.display())))
}

/// What a store file holds: `Ok(None)` when it does not exist, `Err(why)` when it is not a
/// small regular file (a symbolic link is never followed), `Ok(Some(bytes))` otherwise. Only
/// an I/O failure of the filesystem itself is an error of the outer result.
fn read_entry(path: &Path) -> Result<Option<std::result::Result<Vec<u8>, String>>> {
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Some(Err("a symbolic link".into())))
        }
        Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
    };
    let kind = f
        .metadata()
        .map_err(io_err(format!("stat {}", path.display())))?
        .file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() || kind.is_socket() {
            "a FIFO or socket"
        } else {
            "not a regular file"
        };
        return Ok(Some(Err(what.into())));
    }
    let mut bytes = Vec::new();
    f.take(MAX_ENTRY + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(format!("read {}", path.display())))?;
    if bytes.len() as u64 > MAX_ENTRY {
        return Ok(Some(Err("too large".into())));
    }
    Ok(Some(Ok(bytes)))
}

/// A text entry of exactly one line.
fn one_line(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()?.strip_suffix('\n')
}

fn owner_line(a: &Attachment) -> String {
    format!("{} {}\n", a.container_id, a.ifname)
}

/// The address a file under `ips/` is named for, if the name is one exactly as this code
/// writes it: `fd00:0::2` or `010.0.0.2` would be a second name for an address, which reserve
/// (that looks only at the canonical name) would not see.
fn canonical_address(name: &str) -> Option<IpAddr> {
    let ip: IpAddr = name.parse().ok()?;
    (ip.to_string() == name).then_some(ip)
}

/// An index entry names one or two addresses, never two of one family.
fn index_is_valid(ips: &[IpAddr]) -> bool {
    match ips {
        [_] => true,
        [a, b] => a.is_ipv4() != b.is_ipv4(),
        _ => false,
    }
}

/// An owner line, validated as the runtime's values were: nothing read from the store can
/// name a path outside it.
fn parse_owner(bytes: &[u8]) -> std::result::Result<Attachment, String> {
    let line = one_line(bytes).ok_or_else(|| {
        if bytes.is_empty() {
            "empty".to_string()
        } else {
            "not one line of UTF-8".to_string()
        }
    })?;
    let (container_id, ifname) = line
        .split_once(' ')
        .ok_or_else(|| "not \"<containerID> <ifname>\"".to_string())?;
    let a = Attachment {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
    };
    if a.is_valid() {
        Ok(a)
    } else {
        Err("not a valid container ID and interface name".into())
    }
}

impl Locked<'_> {
    /// Who holds `ip`, if anyone.
    pub fn holder(&self, ip: IpAddr) -> Result<Option<Holder>> {
        Ok(
            read_entry(&self.store.ip_path(ip))?.map(|r| match r.and_then(|b| parse_owner(&b)) {
                Ok(a) => Holder::Owner(a),
                Err(why) => Holder::Unreadable(why),
            }),
        )
    }

    /// The addresses `owner`'s index entry names (one line each, at most one per family),
    /// whoever holds them now; an unreadable entry names none (it is discarded on release).
    fn indexed(&self, owner: &Attachment) -> Result<Vec<IpAddr>> {
        let Some(Ok(bytes)) = read_entry(&self.store.attachment_path(owner))? else {
            return Ok(Vec::new());
        };
        let parsed: Option<Vec<IpAddr>> = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|t| t.strip_suffix('\n'))
            .map(|t| t.split('\n').map(|l| l.parse().ok()).collect())
            .unwrap_or(None);
        Ok(match parsed {
            Some(ips) if index_is_valid(&ips) => ips,
            _ => Vec::new(),
        })
    }

    /// The addresses reserved for `owner`, in the order it reserved them. The index entry is
    /// written before the addresses are claimed, so an address it names that `owner` does not
    /// hold (a crash between the steps of reserve or of release) is not one of them. An address
    /// whose entry cannot be read counts as `owner`'s when its index names it: nothing else
    /// can tell whose it is.
    pub fn get(&self, owner: &Attachment) -> Result<Vec<IpAddr>> {
        let mut held = Vec::new();
        for ip in self.indexed(owner)? {
            match self.holder(ip)? {
                Some(Holder::Owner(o)) if &o == owner => held.push(ip),
                Some(Holder::Unreadable(_)) => held.push(ip),
                _ => {}
            }
        }
        Ok(held)
    }

    /// Reserves the next free address of each pool for `owner`, all or none, and returns them
    /// in the pools' order. The reservations are durable when this returns.
    ///
    /// Order matters for crashes: every address is chosen first (a full pool fails here, before
    /// anything is written), then the index entry naming all of them is written, then each is
    /// claimed (a hard link of a complete owner file). A crash at any point leaves either
    /// nothing claimed, or claims that the index finds, so the runtime's DEL releases them.
    pub fn reserve(&mut self, pools: &[FamilyPool], owner: &Attachment) -> Result<Vec<IpAddr>> {
        if let Some(&ip) = self.get(owner)?.first() {
            return Err(Error::AlreadyReserved {
                owner: owner.clone(),
                ip,
            });
        }
        let store = self.store;
        // Only hints for where to start: anything unreadable starts from the beginning.
        let mut after: Vec<Option<IpAddr>> = pools
            .iter()
            .map(|p| {
                read_entry(&store.cursor_path(p))
                    .ok()
                    .flatten()
                    .and_then(|r| r.ok())
                    .and_then(|b| one_line(&b)?.parse::<IpAddr>().ok())
            })
            .collect();
        let index = store.attachment_path(owner);
        loop {
            let mut chosen = Vec::with_capacity(pools.len());
            for (pool, last) in pools.iter().zip(&after) {
                match store.next_free(pool, *last) {
                    Ok(Some(ip)) => chosen.push(ip),
                    Ok(None) => {
                        let _ = store.discard(&index);
                        return Err(Error::Exhausted(pool.cidr()));
                    }
                    Err(e) => {
                        let _ = store.discard(&index);
                        return Err(e);
                    }
                }
            }
            let lines: String = chosen.iter().map(|ip| format!("{ip}\n")).collect();
            store.write_replace(&index, &lines, Some("store:write-index"))?;
            crashpoint::hit("store:index");
            let mut taken = None;
            for (i, &ip) in chosen.iter().enumerate() {
                let claimed = store.claim(ip, owner);
                if !matches!(claimed, Ok(true)) {
                    // Both or none: give back what this call claimed.
                    for &mine in &chosen[..i] {
                        let _ = fs::remove_file(store.ip_path(mine));
                    }
                }
                match claimed {
                    Ok(true) => {}
                    Ok(false) => {
                        taken = Some(i);
                        break;
                    }
                    Err(e) => {
                        let _ = fs::remove_file(&index);
                        return Err(e);
                    }
                }
            }
            if let Some(i) = taken {
                // Someone holds it after all: search on past it.
                after[i] = Some(chosen[i]);
                continue;
            }
            for (pool, ip) in pools.iter().zip(&chosen) {
                // Only a hint for the next search: losing it costs fairness, never correctness.
                let _ = store.write_replace(
                    &store.cursor_path(pool),
                    &format!("{ip}\n"),
                    Some("store:write-last"),
                );
            }
            return Ok(chosen);
        }
    }

    /// Releases what `owner` holds and returns those addresses. `hints` are the addresses the
    /// runtime believes it has (from prevResult): each is used only if `owner` holds it, so a
    /// stale hint never frees another attachment's address.
    pub fn release(&mut self, owner: &Attachment, hints: &[IpAddr]) -> Result<Vec<IpAddr>> {
        let store = self.store;
        let mut ips = self.get(owner)?;
        for &h in hints {
            if !ips.contains(&h) && self.holder(h)? == Some(Holder::Owner(owner.clone())) {
                ips.push(h);
            }
        }
        // The addresses first: a crash after one leaves an index entry whose freed address
        // get() ignores, never an address held by nobody's index.
        for &ip in &ips {
            let path = store.ip_path(ip);
            match self.holder(ip)? {
                Some(Holder::Unreadable(why)) => store.quarantine(&path, &why)?,
                Some(Holder::Owner(_)) => store.discard(&path)?,
                None => {}
            }
            sync_dir(&store.dir.join("ips"))?;
            crashpoint::hit("store:address-freed");
        }
        store.discard(&store.attachment_path(owner))?;
        Ok(ips)
    }

    /// Every address with an entry. Scans the store: for GC and STATUS, not the ADD/DEL path.
    /// Entries whose name is not an address are left to [`Locked::sweep`].
    pub fn list(&self) -> Result<Vec<(IpAddr, Holder)>> {
        let dir = self.store.dir.join("ips");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(format!("list {}", dir.display())))? {
            let entry = entry.map_err(io_err(format!("list {}", dir.display())))?;
            let Some(ip) = entry.file_name().to_str().and_then(canonical_address) else {
                continue;
            };
            if let Some(h) = self.holder(ip)? {
                out.push((ip, h));
            }
        }
        out.sort_by_key(|(ip, _)| *ip);
        Ok(out)
    }

    /// The addresses `owner`'s index entry names, if `owner` may be given them back: for GC,
    /// to repair an unreadable entry of an attachment the runtime still has.
    pub fn index_of(&self, owner: &Attachment) -> Result<Vec<IpAddr>> {
        if owner.is_valid() {
            self.indexed(owner)
        } else {
            Ok(Vec::new())
        }
    }

    /// Rewrites an unreadable `ips/<ip>` entry for `owner`, whose index names it. For GC.
    pub fn repair(&mut self, ip: IpAddr, owner: &Attachment) -> Result<()> {
        let path = self.store.ip_path(ip);
        if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            self.store.quarantine(&path, "a directory")?;
        }
        self.store.write_replace(&path, &owner_line(owner), None)?;
        warn!(%ip, container = %owner.container_id, ifname = %owner.ifname,
            "repaired an unreadable IPAM store entry from its owner's index");
        Ok(())
    }

    /// Sets aside an unreadable `ips/<ip>` entry that no live attachment claims, which frees
    /// the address. For GC.
    pub fn quarantine_address(&mut self, ip: IpAddr, why: &str) -> Result<()> {
        self.store.quarantine(&self.store.ip_path(ip), why)
    }

    /// Whether a new entry can be written now (the filesystem is not full or read-only): the
    /// store can take a pod. For STATUS.
    pub fn writable(&self) -> Result<()> {
        let tmp = self.store.write_temp("probe\n", None)?;
        fs::remove_file(&tmp).map_err(io_err(format!("remove {}", tmp.display())))
    }

    /// Removes what a crash can leave behind and sets aside what is not the store's: temp
    /// files, `ips/` entries whose name is not an address, and index entries that are
    /// unreadable or whose address is not (or no longer) held by their owner. For GC.
    pub fn sweep(&mut self) -> Result<()> {
        let store = self.store;
        let tmp = store.dir.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_err(format!("list {}", tmp.display())))? {
            let entry = entry.map_err(io_err(format!("list {}", tmp.display())))?;
            store.discard(&entry.path())?;
        }
        let ips = store.dir.join("ips");
        for entry in fs::read_dir(&ips).map_err(io_err(format!("list {}", ips.display())))? {
            let entry = entry.map_err(io_err(format!("list {}", ips.display())))?;
            let name = entry.file_name();
            if name.to_str().and_then(canonical_address).is_none() {
                store.quarantine(
                    &entry.path(),
                    "its name is not an address as flatnet writes it",
                )?;
            }
        }
        let index = store.dir.join("attachments");
        for entry in fs::read_dir(&index).map_err(io_err(format!("list {}", index.display())))? {
            let entry = entry.map_err(io_err(format!("list {}", index.display())))?;
            let owner = entry.file_name().to_str().and_then(|n| {
                let (container_id, ifname) = n.split_once(':')?;
                let a = Attachment {
                    container_id: container_id.into(),
                    ifname: ifname.into(),
                };
                a.is_valid().then_some(a)
            });
            match owner {
                None => {
                    store.quarantine(&entry.path(), "its name is not <containerID>:<ifname>")?
                }
                Some(owner) => {
                    if self.get(&owner)?.is_empty() {
                        store.discard(&entry.path())?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch store directory, on tmpfs where there is one (as /run is on a normal host:
    /// fsync on a disk would make the property tests slow without testing more).
    fn scratch(tag: &str) -> tempfile::TempDir {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        tempfile::Builder::new()
            .prefix(&format!("flatnet-ipam-{tag}-"))
            .tempdir_in(base)
            .unwrap()
    }

    fn owner(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn pools(cidrs: &[&str]) -> Vec<FamilyPool> {
        cidrs
            .iter()
            .map(|c| FamilyPool::new(c.parse().unwrap()))
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const T: Duration = Duration::from_secs(1);

    #[test]
    fn reserve_release_round_robin() {
        let d = scratch("rr");
        let store = Store::open(d.path()).unwrap();
        let pool = pools(&["10.1.0.0/29"]);
        let mut l = store.lock(T).unwrap();
        let a = l.reserve(&pool, &owner("a")).unwrap();
        let b = l.reserve(&pool, &owner("b")).unwrap();
        assert_eq!(
            (a.clone(), b.clone()),
            (vec![ip("10.1.0.2")], vec![ip("10.1.0.3")])
        );
        assert_eq!(l.release(&owner("a"), &[]).unwrap(), a);
        // a was freed, but the search goes on after b.
        assert_eq!(l.reserve(&pool, &owner("c")).unwrap(), [ip("10.1.0.4")]);
        assert_eq!(l.get(&owner("b")).unwrap(), b);
        assert_eq!(l.release(&owner("a"), &[]).unwrap(), Vec::<IpAddr>::new());
    }

    #[test]
    fn is_empty_sees_one_entry_among_none_or_many() {
        let d = scratch("empty");
        let store = Store::open(d.path()).unwrap();
        assert!(store.is_empty().unwrap());
        let pool = pools(&["10.1.0.0/24"]);
        let mut l = store.lock(T).unwrap();
        l.reserve(&pool, &owner("only")).unwrap();
        assert!(!store.is_empty().unwrap());
        l.release(&owner("only"), &[]).unwrap();
        assert!(store.is_empty().unwrap());
        // More entries than one small read holds, and names longer than its buffer.
        for i in 0..100 {
            l.reserve(&pool, &owner(&format!("pod-{i}"))).unwrap();
        }
        assert!(!store.is_empty().unwrap());
        std::fs::write(d.path().join("ips").join("x".repeat(250)), "").unwrap();
        for i in 0..100 {
            l.release(&owner(&format!("pod-{i}")), &[]).unwrap();
        }
        assert!(!store.is_empty().unwrap(), "the long name is still there");
    }

    #[test]
    fn dual_stack_reserves_one_of_each_in_order_and_releases_both() {
        let d = scratch("dual");
        let store = Store::open(d.path()).unwrap();
        let pool = pools(&["fd00:10:244:1::/64", "10.1.0.0/29"]);
        let mut l = store.lock(T).unwrap();
        let a = l.reserve(&pool, &owner("a")).unwrap();
        assert_eq!(a, [ip("fd00:10:244:1::2"), ip("10.1.0.2")]);
        let b = l.reserve(&pool, &owner("b")).unwrap();
        assert_eq!(b, [ip("fd00:10:244:1::3"), ip("10.1.0.3")]);
        assert_eq!(
            fs::read_to_string(store.attachment_path(&owner("a"))).unwrap(),
            "fd00:10:244:1::2\n10.1.0.2\n"
        );
        assert_eq!(l.get(&owner("a")).unwrap(), a);
        assert_eq!(l.list().unwrap().len(), 4);
        assert_eq!(l.release(&owner("a"), &[]).unwrap(), a);
        assert_eq!(l.list().unwrap().len(), 2);
        // Each family resumes after its own last address.
        assert_eq!(
            l.reserve(&pool, &owner("c")).unwrap(),
            [ip("fd00:10:244:1::4"), ip("10.1.0.4")]
        );
    }

    #[test]
    fn a_full_family_reserves_nothing_in_the_other() {
        let d = scratch("dualfull");
        let store = Store::open(d.path()).unwrap();
        // One pod fits the IPv6 pool; the IPv4 one has room for five.
        let pool = pools(&["10.1.0.0/29", "fd00::/126"]);
        let mut l = store.lock(T).unwrap();
        l.reserve(&pool, &owner("a")).unwrap();
        l.reserve(&pool, &owner("b")).unwrap();
        match l.reserve(&pool, &owner("c")) {
            Err(Error::Exhausted(net)) => assert_eq!(net.to_string(), "fd00::/126"),
            other => panic!("{other:?}"),
        }
        assert_eq!(l.list().unwrap().len(), 4);
        assert!(!store.attachment_path(&owner("c")).exists());
    }

    #[test]
    fn second_reserve_for_same_owner_is_refused() {
        let d = scratch("dup");
        let store = Store::open(d.path()).unwrap();
        let pool = pools(&["10.1.0.0/29"]);
        let mut l = store.lock(T).unwrap();
        let a = l.reserve(&pool, &owner("a")).unwrap();
        match l.reserve(&pool, &owner("a")) {
            Err(Error::AlreadyReserved { ip, .. }) => assert_eq!(ip, a[0]),
            other => panic!("{other:?}"),
        }
        assert_eq!(l.list().unwrap().len(), 1);
    }

    #[test]
    fn exhaustion_and_reuse() {
        let d = scratch("full");
        let store = Store::open(d.path()).unwrap();
        let pool = pools(&["10.1.0.0/29"]);
        let mut l = store.lock(T).unwrap();
        for i in 0..5 {
            l.reserve(&pool, &owner(&format!("c{i}"))).unwrap();
        }
        assert!(matches!(
            l.reserve(&pool, &owner("x")),
            Err(Error::Exhausted(_))
        ));
        l.release(&owner("c2"), &[]).unwrap();
        assert_eq!(l.reserve(&pool, &owner("x")).unwrap(), [ip("10.1.0.4")]);
    }

    #[test]
    fn crash_leftovers_are_tolerated_and_swept() {
        let d = scratch("crash");
        let store = Store::open(d.path()).unwrap();
        let pool = pools(&["10.1.0.0/29", "fd00::/120"]);
        let mut l = store.lock(T).unwrap();
        let a = l.reserve(&pool, &owner("a")).unwrap();
        // An index lost after the claims: the addresses stay taken, and DEL's prevResult
        // hints still release them.
        fs::remove_file(store.attachment_path(&owner("a"))).unwrap();
        assert_eq!(l.get(&owner("a")).unwrap(), Vec::<IpAddr>::new());
        let b = l.reserve(&pool, &owner("b")).unwrap();
        assert!(a.iter().all(|x| !b.contains(x)));
        assert_eq!(l.release(&owner("a"), &a).unwrap(), a);
        // A crash in release after freeing the addresses: the index entry is ignored, then
        // swept.
        fs::write(store.attachment_path(&owner("z")), "10.1.0.6\nfd00::9\n").unwrap();
        fs::write(store.dir.join("tmp/123.0"), "half").unwrap();
        assert_eq!(l.get(&owner("z")).unwrap(), Vec::<IpAddr>::new());
        // A second name for an address is not the store's.
        fs::write(store.dir.join("ips/fd00:0::9"), "z eth0\n").unwrap();
        l.sweep().unwrap();
        assert!(!store.attachment_path(&owner("z")).exists());
        assert!(!store.dir.join("ips/fd00:0::9").exists());
        assert_eq!(fs::read_dir(store.dir.join("tmp")).unwrap().count(), 0);
        assert_eq!(l.list().unwrap().len(), 2);
    }

    #[test]
    fn an_index_naming_two_of_one_family_names_nothing() {
        let d = scratch("badindex");
        let store = Store::open(d.path()).unwrap();
        let l = store.lock(T).unwrap();
        fs::write(store.ip_path(ip("10.1.0.2")), "a eth0\n").unwrap();
        for bad in [
            "10.1.0.2\n10.1.0.3\n",
            "10.1.0.2",
            "10.1.0.2\nfd00::2\n10.1.0.4\n",
            "\n",
        ] {
            fs::write(store.attachment_path(&owner("a")), bad).unwrap();
            assert_eq!(l.get(&owner("a")).unwrap(), Vec::<IpAddr>::new(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_format_is_refused() {
        let d = scratch("fmt");
        Store::open(d.path()).unwrap();
        fs::write(d.path().join("version"), "9\n").unwrap();
        assert!(matches!(
            Store::open(d.path()),
            Err(Error::UnsupportedFormat { .. })
        ));
    }

    /// A temp file a killed process left hard-linked to a reservation (here: under every name
    /// this thread is about to use) is never opened again, so the reservation cannot change.
    #[test]
    fn leftover_temp_files_are_never_reopened() {
        let d = scratch("tmpnames");
        let store = Store::open(d.path()).unwrap();
        let victim = store.ip_path(ip("10.1.0.6"));
        fs::write(&victim, "victim eth0\n").unwrap();
        for seq in 0..64 {
            let name = store
                .dir
                .join("tmp")
                .join(format!("{}.{seq}", std::process::id()));
            fs::hard_link(&victim, name).unwrap();
        }
        let pool = pools(&["10.1.0.0/29"]);
        let mut l = store.lock(T).unwrap();
        for i in 0..4 {
            l.reserve(&pool, &owner(&format!("c{i}"))).unwrap();
        }
        assert_eq!(fs::read_to_string(&victim).unwrap(), "victim eth0\n");
        assert_eq!(
            l.holder(ip("10.1.0.6")).unwrap(),
            Some(Holder::Owner(owner("victim")))
        );
    }

    /// Model-based: random reserve, release (with right, stale or no prevResult hints), GC and
    /// crashes at any store step (each followed by what the runtime does next: DEL after a
    /// failed ADD, DEL again after a failed DEL) against a map of who holds what, for an IPv4,
    /// an IPv6 and a dual-stack node (either family first, either one the first to fill).
    /// After every step the store holds exactly the model's reservations: never a duplicate,
    /// never a leak, never one family of a dual-stack attachment without the other.
    mod model {
        use std::collections::BTreeMap;
        use std::panic::{catch_unwind, AssertUnwindSafe};

        use proptest::prelude::*;

        use super::*;
        use crate::crashpoint::tests_support::{crash_after, Crashed};

        const OWNERS: usize = 8;

        /// The node's pod CIDRs: a /28 has 13 pod addresses, a /125 6 and a /124 14, so
        /// exhaustion and wrap-around happen often, in either family first.
        fn node() -> impl Strategy<Value = Vec<&'static str>> {
            prop_oneof![
                Just(vec!["10.9.0.0/28"]),
                Just(vec!["fd00:9::/124"]),
                Just(vec!["10.9.0.0/28", "fd00:9::/124"]),
                Just(vec!["fd00:9::/125", "10.9.0.0/28"]),
            ]
        }

        #[derive(Debug, Clone)]
        enum Op {
            Reserve(usize),
            /// Release `owner`, with prevResult naming the addresses of `hint`'s owner, if any.
            Release(usize, Option<usize>),
            Gc(Vec<bool>),
            /// Reserve, killed at the `n`th crash point reached; the runtime then DELs.
            CrashedReserve(usize, u32),
            /// Release, killed at the `n`th crash point reached; the runtime DELs again.
            CrashedRelease(usize, u32),
        }

        fn op() -> impl Strategy<Value = Op> {
            let o = 0..OWNERS;
            prop_oneof![
                3 => o.clone().prop_map(Op::Reserve),
                2 => (o.clone(), proptest::option::of(0..OWNERS)).prop_map(|(a, h)| Op::Release(a, h)),
                1 => proptest::collection::vec(any::<bool>(), OWNERS).prop_map(Op::Gc),
                2 => (o.clone(), 0..10u32).prop_map(|(a, n)| Op::CrashedReserve(a, n)),
                1 => (o, 0..4u32).prop_map(|(a, n)| Op::CrashedRelease(a, n)),
            ]
        }

        fn who(i: usize) -> Attachment {
            owner(&format!("c{i}"))
        }

        /// Runs `f` under the lock as a process would; `Err(point)` if it was crashed.
        fn attempt<R>(
            store: &Store,
            crash_at: Option<u32>,
            f: impl FnOnce(&mut Locked<'_>) -> R,
        ) -> std::result::Result<R, &'static str> {
            let run = catch_unwind(AssertUnwindSafe(|| {
                crash_after(crash_at);
                let mut l = store.lock(T).unwrap();
                f(&mut l)
            }));
            crash_after(None);
            run.map_err(|p| match p.downcast::<Crashed>() {
                Ok(c) => c.0,
                Err(p) => std::panic::resume_unwind(p),
            })
        }

        fn release(store: &Store, a: usize, hints: &[IpAddr]) -> Vec<IpAddr> {
            attempt(store, None, |l| l.release(&who(a), hints).unwrap()).unwrap()
        }

        fn check(
            store: &Store,
            model: &BTreeMap<usize, Vec<IpAddr>>,
        ) -> std::result::Result<(), TestCaseError> {
            let l = store.lock(T).unwrap();
            let held: BTreeMap<IpAddr, Holder> = l.list().unwrap().into_iter().collect();
            let want: BTreeMap<IpAddr, Holder> = model
                .iter()
                .flat_map(|(a, ips)| ips.iter().map(move |ip| (*ip, Holder::Owner(who(*a)))))
                .collect();
            prop_assert_eq!(&held, &want);
            for a in 0..OWNERS {
                prop_assert_eq!(
                    l.get(&who(a)).unwrap(),
                    model.get(&a).cloned().unwrap_or_default(),
                    "owner c{}",
                    a
                );
            }
            Ok(())
        }

        /// A fresh reservation: one address of each pool, in order, none held by another.
        fn fresh(
            pool: &[FamilyPool],
            model: &BTreeMap<usize, Vec<IpAddr>>,
            ips: &[IpAddr],
        ) -> std::result::Result<(), TestCaseError> {
            prop_assert_eq!(ips.len(), pool.len());
            for (p, ip) in pool.iter().zip(ips) {
                prop_assert!(p.contains(*ip), "{} not in {:?}", ip, p);
                prop_assert!(
                    !model.values().flatten().any(|v| v == ip),
                    "{} handed out twice",
                    ip
                );
            }
            Ok(())
        }

        /// Exhausted only when one of the pools is full.
        fn full(pool: &[FamilyPool], model: &BTreeMap<usize, Vec<IpAddr>>) -> bool {
            pool.iter().any(|p| {
                model
                    .values()
                    .flatten()
                    .filter(|ip| p.contains(**ip))
                    .count() as u128
                    == p.size()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                failure_persistence: None,
                ..ProptestConfig::default()
            })]
            #[test]
            fn the_store_matches_its_model(node in node(), ops in proptest::collection::vec(op(), 1..40)) {
                let d = scratch("model");
                let store = Store::open(d.path()).unwrap();
                let pool = pools(&node);
                let mut model: BTreeMap<usize, Vec<IpAddr>> = BTreeMap::new();
                for op in ops {
                    match op {
                        Op::Reserve(a) => {
                            let r = attempt(&store, None, |l| l.reserve(&pool, &who(a))).unwrap();
                            match r {
                                Ok(ips) => {
                                    prop_assert!(!model.contains_key(&a));
                                    fresh(&pool, &model, &ips)?;
                                    model.insert(a, ips);
                                }
                                Err(Error::AlreadyReserved { ip, .. }) => {
                                    prop_assert_eq!(model.get(&a).map(|v| v[0]), Some(ip));
                                }
                                Err(Error::Exhausted(_)) => prop_assert!(full(&pool, &model)),
                                Err(e) => prop_assert!(false, "{}", e),
                            }
                        }
                        Op::Release(a, hint) => {
                            let hints = hint.and_then(|h| model.get(&h).cloned()).unwrap_or_default();
                            prop_assert_eq!(release(&store, a, &hints), model.remove(&a).unwrap_or_default());
                        }
                        Op::Gc(keep) => {
                            attempt(&store, None, |l| {
                                for (ip, h) in l.list().unwrap() {
                                    if let Holder::Owner(o) = h {
                                        let i: usize = o.container_id[1..].parse().unwrap();
                                        if !keep[i] {
                                            l.release(&o, &[ip]).unwrap();
                                        }
                                    }
                                }
                                l.sweep().unwrap();
                            })
                            .unwrap();
                            model.retain(|a, _| keep[*a]);
                        }
                        Op::CrashedReserve(a, n) => {
                            if model.contains_key(&a) {
                                continue;
                            }
                            match attempt(&store, Some(n), |l| l.reserve(&pool, &who(a))) {
                                Ok(Ok(ips)) => {
                                    fresh(&pool, &model, &ips)?;
                                    model.insert(a, ips);
                                }
                                Ok(Err(Error::Exhausted(_))) => prop_assert!(full(&pool, &model)),
                                Ok(Err(e)) => prop_assert!(false, "{}", e),
                                // containerd 1.6: one DEL, no prevResult.
                                Err(_) => {
                                    release(&store, a, &[]);
                                }
                            }
                        }
                        Op::CrashedRelease(a, n) => {
                            let hints = model.get(&a).cloned().unwrap_or_default();
                            if attempt(&store, Some(n), |l| l.release(&who(a), &hints).unwrap()).is_err() {
                                release(&store, a, &hints);
                            }
                            model.remove(&a);
                        }
                    }
                    check(&store, &model)?;
                }
            }
        }
    }
}
