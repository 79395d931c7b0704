//! `flatnet exec`: a command inside a running container's namespaces (network, UTS, IPC,
//! mount, PID), as `kubectl exec` runs it.
//!
//! Joining a mount or PID namespace is only sound in a single-threaded process, and joining a
//! PID namespace only moves the caller's future children. So a forked child joins all of them
//! at once through a pidfd, and forks again: the grandchild, born in the container's PID
//! namespace, execs the command; the child passes its exit status up. With `-t` the
//! grandchild's stdin, stdout and stderr are a pty (see pty.rs).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::emulator::process::ProcessId;

/// How the command's stdin, stdout and stderr are connected, as `kubectl exec -i -t` says.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stdio {
    /// Pass the caller's stdin (else the command reads /dev/null).
    pub stdin: bool,
    /// A pseudo-terminal for the command, sized and resized as the caller's terminal.
    pub tty: bool,
}

/// Runs `argv` with `env` in `workdir` inside the namespaces of process `pid`; returns its
/// exit code (128 + N if killed by signal N; 127 if it could not be started).
///
/// The program is looked up in the PATH of `env` — the container's — as a container runtime
/// does, not in flatnet's own (glibc's execvpe searches the caller's PATH, whatever envp says).
pub fn exec(
    pid: u32,
    argv: &[String],
    env: &[(String, String)],
    workdir: &str,
    stdio: Stdio,
) -> io::Result<i32> {
    let Some(program) = program(argv, env)? else {
        eprintln!(
            "flatnet exec: exec {:?}: executable file not found in $PATH",
            argv[0]
        );
        return Ok(127);
    };
    let pty: Option<(OwnedFd, OwnedFd)> = stdio.tty.then(super::pty::open).transpose()?;
    let devnull: Option<std::fs::File> = (!stdio.stdin && !stdio.tty)
        .then(|| std::fs::File::open("/dev/null"))
        .transpose()?;
    if let Some((master, _)) = &pty {
        super::pty::copy_window_size(master);
    }
    // Raw mode before the command starts, so that no keystroke is cooked by our terminal.
    let raw = (stdio.tty && stdio.stdin).then(super::pty::RawMode::enter);
    let winch = stdio.tty.then(super::pty::Winch::block).transpose()?;
    // Without a pty, Ctrl-C reaches the command from the terminal itself (same process
    // group); flatnet stays to pass its exit code back, as system(3) does.
    let _ignore = IgnoreInterrupts::new();
    let io = Io {
        tty: pty.as_ref().map_or(-1, |(_, s)| s.as_raw_fd()),
        null: devnull.as_ref().map_or(-1, |f| f.as_raw_fd()),
        quiet: false,
    };
    let (child, rd) = spawn(pid, &program, argv, env, workdir, io)?;
    let failed = super::child::outcome(rd);
    let mut ws = 0;
    let mut reaped = false;
    if let (Some((master, slave)), Some(winch)) = (pty, &winch) {
        drop(slave);
        super::pty::relay(&master, stdio.stdin, winch, || {
            // SAFETY: polling our own child.
            reaped = unsafe { libc::waitpid(child, &mut ws, libc::WNOHANG) } == child;
            reaped
        })?;
    }
    drop(raw);
    // SAFETY: waiting for our own child (unless the relay already reaped it).
    if !reaped && unsafe { libc::waitpid(child, &mut ws, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some((step, e)) = failed {
        eprintln!("flatnet exec: {step}: {e}");
    }
    Ok(super::shell_exit_code(ws))
}

/// [`exec`] with no input, its output discarded and a time limit, for an exec probe: the exit
/// code, or None if it ran out of time (then it is killed). The caller must be
/// single-threaded: it is the pod supervisor, whose other children this never reaps.
pub fn exec_quiet(
    pid: u32,
    argv: &[String],
    env: &[(String, String)],
    workdir: &str,
    timeout: Duration,
) -> io::Result<Option<i32>> {
    let Some(program) = program(argv, env)? else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("exec {:?}: executable file not found in $PATH", argv[0]),
        ));
    };
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let io = Io {
        tty: -1,
        null: devnull.as_raw_fd(),
        quiet: true,
    };
    let (child, rd) = spawn(pid, &program, argv, env, workdir, io)?;
    if let Some((step, e)) = super::child::outcome(rd) {
        // SAFETY: reaping our own child, which exits right after reporting.
        unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
        return Err(io::Error::new(e.kind(), format!("{step}: {e}")));
    }
    let deadline = Instant::now() + timeout;
    let mut ws = 0;
    loop {
        // SAFETY: polling our own child.
        let done = unsafe { libc::waitpid(child, &mut ws, libc::WNOHANG) };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
        if done == child {
            return Ok(Some(super::shell_exit_code(ws)));
        }
        if Instant::now() >= deadline {
            // The command dies with it (PR_SET_PDEATHSIG).
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(child, libc::SIGKILL);
                libc::waitpid(child, std::ptr::null_mut(), 0);
            }
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The program `argv` names, looked up on the PATH of `env`; None if it is not there. A name
/// with a slash is the program itself, relative to the working directory it is run in (execve
/// says if it is not there).
fn program(argv: &[String], env: &[(String, String)]) -> io::Result<Option<PathBuf>> {
    let Some(name) = argv.first() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no command given",
        ));
    };
    if name.contains('/') {
        return Ok(Some(PathBuf::from(name)));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("", |(_, v)| v.as_str());
    Ok(super::supervisor::resolve(name, path_var))
}

/// The command's descriptors, as raw fds the forked children can use without allocating
/// (-1: none).
struct Io {
    /// The pty's slave end: stdin, stdout and stderr, and the controlling terminal.
    tty: RawFd,
    /// /dev/null: stdin, and with `quiet` stdout and stderr too.
    null: RawFd,
    /// A probe's command: its output discarded, and killed if its caller dies.
    quiet: bool,
}

/// Forks the child that joins `pid`'s namespaces and runs `program` in a grandchild; returns
/// the child and the pipe on which it reports a failure before the exec.
fn spawn(
    pid: u32,
    program: &std::path::Path,
    argv: &[String],
    env: &[(String, String)],
    workdir: &str,
    io: Io,
) -> io::Result<(i32, OwnedFd)> {
    let cstr = |s: &[u8]| CString::new(s).map_err(io::Error::other);
    let program = cstr(program.as_os_str().as_bytes())?;
    let args: Vec<CString> = argv
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<io::Result<_>>()?;
    let envs: Vec<CString> = env
        .iter()
        .map(|(k, v)| cstr(format!("{k}={v}").as_bytes()))
        .collect::<io::Result<_>>()?;
    let workdir = cstr(workdir.as_bytes())?;
    let mut args_p: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    args_p.push(std::ptr::null());
    let mut envs_p: Vec<*const libc::c_char> = envs.iter().map(|a| a.as_ptr()).collect();
    envs_p.push(std::ptr::null());

    // Once open, the pidfd names this very process even if the pid is reused.
    let pidfd = ProcessId::of(pid)
        .map(|p| p.pidfd())
        .transpose()?
        .flatten()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("process {pid} is gone")))?;

    let (rd, wr) = super::child::channel()?;
    let wr_fd = wr.as_raw_fd();
    // SAFETY: between fork and exec the children only make async-signal-safe calls on data
    // prepared above (no allocation: failures go back through the pipe as raw bytes).
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        // SAFETY: see above; every call's result is checked.
        unsafe {
            let all = libc::CLONE_NEWNET
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWNS
                | libc::CLONE_NEWPID;
            if libc::setns(pidfd.as_raw_fd(), all) != 0 {
                super::child::fail(wr_fd, "join the container's namespaces");
            }
            if libc::chdir(workdir.as_ptr()) != 0 {
                super::child::fail(wr_fd, "change to the working directory");
            }
            let inner = libc::fork();
            if inner == 0 {
                if io.quiet {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                        || (0..3).any(|fd| libc::dup2(io.null, fd) < 0)
                    {
                        super::child::fail(wr_fd, "redirect the output");
                    }
                } else if io.tty >= 0 {
                    // A session of its own whose controlling terminal is the pty: Ctrl-C
                    // typed there is SIGINT to the command's foreground process group.
                    if libc::setsid() < 0 || libc::ioctl(io.tty, libc::TIOCSCTTY, 0) != 0 {
                        super::child::fail(wr_fd, "make the pty the controlling terminal");
                    }
                    if (0..3).any(|fd| libc::dup2(io.tty, fd) < 0) {
                        super::child::fail(wr_fd, "connect the pty");
                    }
                } else if io.null >= 0 && libc::dup2(io.null, 0) < 0 {
                    super::child::fail(wr_fd, "connect stdin to /dev/null");
                }
                let empty: libc::sigset_t = std::mem::zeroed();
                libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGQUIT, libc::SIG_DFL);
                libc::execve(program.as_ptr(), args_p.as_ptr(), envs_p.as_ptr());
                super::child::fail(wr_fd, "exec");
            }
            if inner < 0 {
                super::child::fail(wr_fd, "fork");
            }
            super::child::done(&wr);
            let mut ws = 0;
            if libc::waitpid(inner, &mut ws, 0) < 0 {
                libc::_exit(127);
            }
            libc::_exit(super::shell_exit_code(ws));
        }
    }
    drop(pidfd);
    drop(wr);
    Ok((child, rd))
}

/// SIGINT and SIGQUIT ignored until dropped.
struct IgnoreInterrupts([libc::sighandler_t; 2]);

impl IgnoreInterrupts {
    fn new() -> IgnoreInterrupts {
        // SAFETY: setting a signal's disposition to SIG_IGN.
        unsafe {
            IgnoreInterrupts([
                libc::signal(libc::SIGINT, libc::SIG_IGN),
                libc::signal(libc::SIGQUIT, libc::SIG_IGN),
            ])
        }
    }
}

impl Drop for IgnoreInterrupts {
    fn drop(&mut self) {
        // SAFETY: restoring the dispositions saved in new.
        unsafe {
            libc::signal(libc::SIGINT, self.0[0]);
            libc::signal(libc::SIGQUIT, self.0[1]);
        }
    }
}
