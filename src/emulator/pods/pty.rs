//! `exec -t`: a pseudo-terminal for the command, and the caller's side of it — its terminal
//! in raw mode (so Ctrl-C is a byte for the command's terminal to turn into SIGINT, not a
//! signal to flatnet), its window size and each change of it (SIGWINCH) passed on, and the
//! bytes relayed both ways until the command is gone.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A new pty pair: the master for the caller, the slave for the command.
pub fn open() -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: posix_openpt returns a new fd or -1; the calls after it act on that fd, and
    // ptsname_r writes into our buffer.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if m < 0 {
            return Err(io::Error::last_os_error());
        }
        let master = OwnedFd::from_raw_fd(m);
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        let rc = libc::ptsname_r(m, name.as_mut_ptr(), name.len());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((master, OwnedFd::from_raw_fd(s)))
    }
}

/// The window size of the caller's terminal (stdin's, else stdout's), if it has one.
fn window_size() -> Option<libc::winsize> {
    [0, 1].into_iter().find_map(|fd| {
        // SAFETY: TIOCGWINSZ fills the struct we pass.
        unsafe {
            let mut ws: libc::winsize = std::mem::zeroed();
            (libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) == 0).then_some(ws)
        }
    })
}

/// Gives the pty `master` the caller's window size; the kernel tells the command (SIGWINCH).
pub fn copy_window_size(master: &OwnedFd) {
    if let Some(ws) = window_size() {
        // SAFETY: TIOCSWINSZ reads the struct we pass.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

/// The caller's terminal in raw mode until dropped (if stdin is a terminal at all).
pub struct RawMode(Option<libc::termios>);

impl RawMode {
    pub fn enter() -> RawMode {
        // SAFETY: tcgetattr and tcsetattr on fd 0 with structs we own.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return RawMode(None);
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            // TCSANOW: what was typed before stays to be read (TCSAFLUSH would drop it).
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return RawMode(None);
            }
            RawMode(Some(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restoring the settings read in enter.
            unsafe { libc::tcsetattr(0, libc::TCSAFLUSH, t) };
        }
    }
}

/// SIGWINCH blocked and readable from an fd, until dropped. Block it before forking the
/// command (which unblocks it again) so that none is lost.
pub struct Winch {
    fd: OwnedFd,
    old: libc::sigset_t,
}

impl Winch {
    pub fn block() -> io::Result<Winch> {
        // SAFETY: building a signal set, changing this thread's mask, and signalfd returning
        // a new fd we then own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGWINCH);
            let mut old: libc::sigset_t = std::mem::zeroed();
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) != 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if fd < 0 {
                let e = io::Error::last_os_error();
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                return Err(e);
            }
            Ok(Winch {
                fd: OwnedFd::from_raw_fd(fd),
                old,
            })
        }
    }

    /// Whether a SIGWINCH came (consuming it).
    fn take(&self) -> bool {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        let mut got = false;
        // SAFETY: reading whole siginfo records into our buffer from our signalfd.
        while unsafe { libc::read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } > 0 {
            got = true;
        }
        got
    }
}

impl Drop for Winch {
    fn drop(&mut self) {
        // SAFETY: restoring the mask read in block.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// Relays the caller's stdin (if `stdin`) to `master` and `master` to the caller's stdout,
/// and window size changes, until the command's side of the pty is closed or `gone` says
/// the command has exited.
pub fn relay(
    master: &OwnedFd,
    stdin: bool,
    winch: &Winch,
    mut gone: impl FnMut() -> bool,
) -> io::Result<()> {
    let m = master.as_raw_fd();
    let mut stdin_open = stdin;
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = File::from(dup(1)?);
    loop {
        let mut fds = vec![pollfd(m), pollfd(winch.fd.as_raw_fd())];
        if stdin_open {
            fds.push(pollfd(0));
        }
        // SAFETY: fds is a valid array of pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 && winch.take() {
            copy_window_size(master);
        }
        if stdin_open && fds[2].revents != 0 {
            match read(0, &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(k) => write_all(m, &buf[..k])?,
            }
        }
        if fds[0].revents != 0 {
            // EIO: every holder of the slave has closed it.
            match read(m, &mut buf) {
                Ok(0) | Err(_) => return Ok(()),
                Ok(k) => io::Write::write_all(&mut out, &buf[..k])?,
            }
        } else if n == 0 && gone() {
            return Ok(());
        }
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd we then own.
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if d < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: d is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(d) })
}

fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reading into our buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn write_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: writing from our buffer.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}
