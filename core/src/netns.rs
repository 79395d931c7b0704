//! Network namespaces: named ones under /run/netns (the layout `ip netns` uses, so `ip -n NAME`
//! and `ip netns exec` work on ours), opening one by path, and running code inside one.
//!
//! setns() switches only the calling thread. Code that must run inside a namespace therefore
//! runs on a fresh OS thread that enters it and then ends, never on a tokio worker that would go
//! on to run unrelated tasks in the wrong namespace.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where named network namespaces live, as iproute2 has it.
pub const NETNS_RUN_DIR: &str = "/run/netns";

const NSFS_MAGIC: i64 = 0x6e73_6673;
// ioctl(NS_GET_NSTYPE) = _IO(0xb7, 0x3)
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open handle on a network namespace; the namespace lives at least as long as this does.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
}

impl NetNs {
    /// Opens `path` and checks that it really is a network namespace (not just any file).
    pub fn open(path: impl AsRef<Path>) -> io::Result<NetNs> {
        let path = path.as_ref();
        let file = File::open(path)?;
        let fd: OwnedFd = file.into();
        // SAFETY: fstatfs and ioctl only read from a valid open fd.
        unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            if libc::fstatfs(fd.as_raw_fd(), &mut st) != 0 {
                return Err(io::Error::last_os_error());
            }
            if st.f_type as i64 != NSFS_MAGIC {
                return Err(not_netns(path));
            }
            let kind = libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _);
            if kind != libc::CLONE_NEWNET {
                return Err(not_netns(path));
            }
        }
        Ok(NetNs {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The namespace of the calling thread.
    pub fn current() -> io::Result<NetNs> {
        NetNs::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `other` is the same namespace (compared by nsfs inode, whatever the paths).
    pub fn same_as(&self, other: &NetNs) -> io::Result<bool> {
        let id = |ns: &NetNs| -> io::Result<(u64, u64)> {
            let st = File::from(ns.fd.try_clone()?).metadata()?;
            use std::os::unix::fs::MetadataExt;
            Ok((st.dev(), st.ino()))
        };
        Ok(id(self)? == id(other)?)
    }

    /// Runs `f` on a new OS thread that has entered this namespace, and returns its result.
    pub fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("thread running inside a netns panicked"))?
        })
    }

    /// Moves the *calling thread* into this namespace. Only for threads that exist to do so
    /// (see [`NetNs::run`]) and for a forked child before exec.
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: setns on a valid namespace fd; affects only the calling thread.
        if unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn not_netns(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} is not a network namespace", path.display()),
    )
}

/// The path of the named namespace `name`.
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Creates a new, empty network namespace pinned at /run/netns/NAME and returns it open.
/// Fails if the name is taken.
pub fn create_named(name: &str) -> io::Result<NetNs> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid netns name {name:?}"),
        ));
    }
    ensure_run_dir()?;
    let path = named_path(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            // SAFETY: unshare affects only this short-lived thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            bind_mount(Path::new("/proc/thread-self/ns/net"), &path)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns creation thread panicked")))
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    NetNs::open(&path)
}

/// Removes the named namespace. The namespace itself (and its links) goes once nothing holds it
/// any more; the kernel then tears its devices down asynchronously. Absent is not an error.
pub fn delete_named(name: &str) -> io::Result<()> {
    let path = named_path(name);
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: plain syscall on a NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOENT) => {}
            _ => return Err(e),
        }
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Names of the namespaces under /run/netns.
pub fn list_named() -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Makes /run/netns a shared mount point, as `ip netns add` does, so that namespaces pinned
/// there are visible to mount namespaces created later (a pod's containers, containerd's).
fn ensure_run_dir() -> io::Result<()> {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return Ok(());
    }
    std::fs::create_dir_all(NETNS_RUN_DIR)?;
    let dir = CString::new(NETNS_RUN_DIR)?;
    // SAFETY: mount(2) with valid NUL-terminated strings and null data.
    unsafe {
        let shared = |flags| {
            libc::mount(
                c"none".as_ptr(),
                dir.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        };
        if shared(libc::MS_SHARED | libc::MS_REC) != 0 {
            // Not yet a mount point: make it one, then mark it shared.
            if libc::mount(
                dir.as_ptr(),
                dir.as_ptr(),
                c"none".as_ptr(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if shared(libc::MS_SHARED | libc::MS_REC) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    *done = true;
    Ok(())
}

fn bind_mount(src: &Path, dst: &Path) -> io::Result<()> {
    let s = CString::new(src.as_os_str().as_bytes())?;
    let d = CString::new(dst.as_os_str().as_bytes())?;
    // SAFETY: mount(2) with valid NUL-terminated strings and null data.
    if unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            c"none".as_ptr(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes a sysctl under /proc/sys/net of the namespace `ns` (/proc/sys/net shows the
/// namespace of the thread that opens it). `key` is dotted or slashed: `net.ipv4.ip_forward`.
pub fn write_sysctl(ns: &NetNs, key: &str, value: &str) -> io::Result<()> {
    write_sysctls(ns, &[(key, value)])
}

/// Writes several sysctls of the namespace `ns` in order, entering it once; stops at the first
/// that fails, naming it.
pub fn write_sysctls(ns: &NetNs, pairs: &[(&str, &str)]) -> io::Result<()> {
    let paths: Vec<(PathBuf, &str)> = pairs.iter().map(|(k, v)| (sysctl_path(k), *v)).collect();
    ns.run(|| {
        paths.iter().try_for_each(|(path, value)| {
            std::fs::write(path, value)
                .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", path.display())))
        })
    })?
}

/// Reads a sysctl of the calling thread's own namespace, trimmed.
pub fn read_sysctl(key: &str) -> io::Result<String> {
    let path = sysctl_path(key);
    std::fs::read_to_string(&path)
        .map(|v| v.trim().to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", path.display())))
}

/// Writes a sysctl of the calling thread's own namespace, skipping the write when it already
/// holds `value` (the plugin runs in the node's namespace and does this on every ADD).
pub fn ensure_sysctl(key: &str, value: &str) -> io::Result<()> {
    if read_sysctl(key)? == value {
        return Ok(());
    }
    let path = sysctl_path(key);
    std::fs::write(&path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", path.display())))
}

/// A key with slashes is taken as it is, since interface names may contain dots.
fn sysctl_path(key: &str) -> PathBuf {
    if key.contains('/') {
        Path::new("/proc/sys").join(key)
    } else {
        Path::new("/proc/sys").join(key.replace('.', "/"))
    }
}

/// A command that runs `bin` with exactly `env` (plus a standard PATH: a CNI plugin, or a tool
/// such as nft, must not depend on the caller's environment) and, in the forked child, enters
/// `netns` before exec.
pub fn command(bin: &Path, env: &[(&str, String)], netns: Option<&NetNs>) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(bin);
    cmd.env_clear().env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(ns) = netns {
        let fd = ns.as_fd().as_raw_fd();
        // SAFETY: only setns (async-signal-safe) runs between fork and exec; the fd stays open
        // because `ns` outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}
