//! `flatnet exec`: a command inside a running container's namespaces (network, UTS, IPC,
//! mount, PID), as `kubectl exec` runs it.
//!
//! Joining a mount or PID namespace is only sound in a single-threaded process, and joining a
//! PID namespace only moves the caller's future children. So a forked child joins all of them
//! at once through a pidfd, and forks again: the grandchild, born in the container's PID
//! namespace, execs the command; the child passes its exit status up.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::emulator::process::ProcessId;

/// Runs `argv` with `env` in `workdir` inside the namespaces of process `pid`; returns its
/// exit code (128 + N if killed by signal N; 127 if it could not be started).
pub fn exec(pid: u32, argv: &[String], env: &[(String, String)], workdir: &str) -> io::Result<i32> {
    let (child, rd) = spawn(pid, argv, env, workdir, false)?;
    let failed = super::child::outcome(rd);
    let mut ws = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(child, &mut ws, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some((step, e)) = failed {
        eprintln!("flatnet exec: {step}: {e}");
    }
    Ok(super::shell_exit_code(ws))
}

/// [`exec`] with its output discarded and a time limit, for an exec probe: the exit code, or
/// None if it ran out of time (then it is killed). The caller must be single-threaded: it is
/// the pod supervisor, whose other children this never reaps.
pub fn exec_quiet(
    pid: u32,
    argv: &[String],
    env: &[(String, String)],
    workdir: &str,
    timeout: Duration,
) -> io::Result<Option<i32>> {
    let (child, rd) = spawn(pid, argv, env, workdir, true)?;
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

/// Forks the child that joins `pid`'s namespaces and runs `argv` in a grandchild; returns the
/// child and the pipe on which it reports a failure before the exec.
fn spawn(
    pid: u32,
    argv: &[String],
    env: &[(String, String)],
    workdir: &str,
    quiet: bool,
) -> io::Result<(i32, std::os::fd::OwnedFd)> {
    let cstr = |s: String| CString::new(s).map_err(io::Error::other);
    let args: Vec<CString> = argv.iter().cloned().map(cstr).collect::<io::Result<_>>()?;
    let envs: Vec<CString> = env
        .iter()
        .map(|(k, v)| cstr(format!("{k}={v}")))
        .collect::<io::Result<_>>()?;
    let workdir = cstr(workdir.to_string())?;
    let mut args_p: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    args_p.push(std::ptr::null());
    let mut envs_p: Vec<*const libc::c_char> = envs.iter().map(|a| a.as_ptr()).collect();
    envs_p.push(std::ptr::null());
    if args.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no command given",
        ));
    }

    // Once open, the pidfd names this very process even if the pid is reused.
    let pidfd = ProcessId::of(pid)
        .map(|p| p.pidfd())
        .transpose()?
        .flatten()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("process {pid} is gone")))?;

    let devnull = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
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
                if quiet
                    && (libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                        || libc::dup2(devnull.as_raw_fd(), 1) < 0
                        || libc::dup2(devnull.as_raw_fd(), 2) < 0)
                {
                    super::child::fail(wr_fd, "redirect the output");
                }
                libc::execvpe(args_p[0], args_p.as_ptr(), envs_p.as_ptr());
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
