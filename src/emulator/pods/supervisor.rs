//! The per-pod supervisor: the role containerd-shim plays. One detached process per pod that
//! owns the pod's containers, writes their output to logs, reaps them, restarts them as the
//! restart policy says, and records the pod's status.
//!
//! It is single-threaded on purpose: it creates namespaces with clone(2) and joins the pod's
//! PID namespace with setns(2), which only a single-threaded process may do safely. It waits
//! for SIGCHLD and SIGTERM with sigtimedwait, so it needs no handlers and no async runtime.
//!
//! Namespaces: an infra process (like Kubernetes' pause) holds the pod's UTS namespace
//! (hostname) and IPC namespace, and with `shareProcessNamespace` is PID 1 of the pod's PID
//! namespace. Each container joins the pod's network, UTS and IPC namespaces, and gets its own
//! mount namespace (made recursively private before anything is mounted) with a fresh /proc,
//! the pod's /dev/shm (a tmpfs of the pod, mounted in the supervisor's own private mount
//! namespace, so the machine never sees it) and its emptyDir volumes; and, unless the PID
//! namespace is shared, a PID namespace of its own, of which it is PID 1.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lifecycle::{Clock, Containers, Processes, SystemClock};
use super::prober::{Prober, Verdict};
use crate::emulator::events::{self, Event};
use crate::emulator::manifest::{ContainerSpec, PodSpec};
use crate::emulator::pod_status::PodStatus;
use crate::emulator::process::ProcessId;
use crate::emulator::state::PodDir;

/// What the supervisor is told, in `supervisor.json` of the pod dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupervisorConfig {
    /// The pod's network namespace.
    pub netns: PathBuf,
    pub spec: PodSpec,
    /// The first restart back-off; it doubles per restart up to five minutes, as kubelet's.
    pub restart_backoff_ms: u64,
    /// The node's network namespace, where tcpSocket and httpGet probes come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_netns: Option<PathBuf>,
    /// What tcpSocket and httpGet probes that name no host connect to: the pod's first
    /// address (its `status.podIP`), as kubelet's probes do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<IpAddr>,
}

/// The PATH a container gets unless its env sets one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs the supervisor of the pod in `dir` until SIGTERM, then stops the containers (SIGTERM,
/// SIGKILL after the grace period) and returns.
pub fn run(dir: &PodDir) -> io::Result<()> {
    if !super::child::single_threaded() {
        return Err(io::Error::other(
            "the pod supervisor must run single-threaded (it unshares and clones namespaces)",
        ));
    }
    let cfg: SupervisorConfig = serde_json::from_slice(&std::fs::read(dir.supervisor_config())?)
        .map_err(io::Error::other)?;
    let signals = block_signals()?;
    // Orphans of the containers come to us rather than to the machine's init.
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) })?;
    private_mounts()?;
    let shm = dir.shm();
    std::fs::create_dir_all(&shm)?;
    mount(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("size=64m"),
    )?;
    for v in &cfg.spec.volumes {
        std::fs::create_dir_all(dir.volume(v))?;
    }
    std::fs::create_dir_all(dir.logs())?;

    let netns = File::open(&cfg.netns)?;
    // Opened now: a namespace mounted later would not show in our private mount namespace.
    let node_netns = match &cfg.node_netns {
        Some(p) => Some(crate::netns::NetNs::open(p)?),
        None => None,
    };
    let infra = spawn_infra(&cfg.spec, &netns)?;
    let ns = |kind: &str| File::open(format!("/proc/{infra}/ns/{kind}"));
    let (uts, ipc) = (ns("uts")?, ns("ipc")?);
    if cfg.spec.share_process_namespace {
        // From now on our children are born in the pod's PID namespace.
        // SAFETY: setns on an open namespace fd; single-threaded (checked above), and it only
        // moves the children we create from now on.
        check(unsafe { libc::setns(ns("pid")?.as_raw_fd(), libc::CLONE_NEWPID) })?;
    }
    let ctx = Context {
        dir,
        netns,
        uts,
        ipc,
        own_pid_ns: !cfg.spec.share_process_namespace,
    };

    let mut status = PodStatus::new(&cfg.spec);
    status.supervisor = ProcessId::of(std::process::id());
    let clock = SystemClock;
    let mut procs = Children {
        ctx: &ctx,
        pod: &cfg.spec,
    };
    let mut containers = Containers::new(
        &cfg.spec,
        Duration::from_millis(cfg.restart_backoff_ms),
        &clock,
    );

    let mut prober = Prober::new(&cfg.spec.containers);
    // The process each container's probes are for: a new one starts them over.
    let mut probed: Vec<Option<i32>> = vec![None; cfg.spec.containers.len()];
    let mut last_failure: std::collections::HashMap<(usize, super::prober::Kind), String> =
        std::collections::HashMap::new();
    let mut saved = status.clone();
    loop {
        containers.start_due(&mut procs, &clock, &mut status);
        for (i, was) in probed.iter_mut().enumerate() {
            let now = containers.pid(i);
            if now != *was {
                match now {
                    Some(_) => prober.started(i, clock.now()),
                    None => prober.stopped(i),
                }
                *was = now;
            }
        }
        for (i, kind, probe) in prober.due(clock.now()) {
            let Some(pid) = containers.pid(i) else {
                continue;
            };
            let c = &cfg.spec.containers[i];
            let env = environment(c, &cfg.spec);
            let target = super::probe::Target {
                node_netns: node_netns.as_ref(),
                pod_ip: cfg.pod_ip,
                pid: pid as u32,
                env: &env,
                workdir: c.working_dir.as_deref().unwrap_or("/"),
            };
            let result = super::probe::run(&probe, &target);
            // Each change logged once, not every period (kubelet aggregates its events too).
            let last = last_failure.entry((i, kind)).or_default();
            match &result {
                Err(why) if why != last => {
                    eprintln!("container {}: {} probe failed: {why}", c.name, kind.name());
                    *last = why.clone();
                }
                Ok(()) if !last.is_empty() => {
                    eprintln!("container {}: {} probe succeeded", c.name, kind.name());
                    last.clear();
                }
                _ => {}
            }
            if let Some(Verdict::Kill { grace }) =
                prober.record(i, kind, result.is_ok(), clock.now())
            {
                let grace = grace.unwrap_or(cfg.spec.termination_grace_period_seconds);
                eprintln!(
                    "container {} failed its {} probe {} times: killing it (grace {grace}s); \
                     restartPolicy {:?} decides what follows",
                    c.name,
                    kind.name(),
                    probe.failure_threshold,
                    cfg.spec.restart_policy
                );
                events::record(
                    dir,
                    &[Event::normal(
                        "Killing",
                        format!(
                            "Container {} failed {} probe, will be restarted",
                            c.name,
                            kind.name()
                        ),
                    )],
                );
                containers.kill(i, &mut procs, &clock, Duration::from_secs(grace));
                prober.stopped(i);
            }
        }
        for (i, st) in status.containers.iter_mut().enumerate() {
            let running = containers.pid(i).is_some();
            st.started = running && prober.is_started(i);
            st.ready = running && prober.is_ready(i);
        }
        status.compute_phase(cfg.spec.restart_policy);
        status.compute_conditions(crate::emulator::state::now());
        dir.save_status(&status)?;
        if status.is_ready() != saved.is_ready() {
            // The pod's Services' endpoints change with it: the controller acts at once.
            if let Some(cluster) = dir.path().ancestors().nth(3) {
                crate::emulator::controller::services::nudge(cluster);
            }
        }
        events::record(dir, &events::between(&saved, &status));
        saved = status.clone();
        let wake = containers.next_wake(&clock);
        let wake = prober.next_wake(clock.now()).map_or(wake, |p| p.min(wake));
        match wait_signal(&signals, wake.max(Duration::from_millis(1))) {
            Some(libc::SIGCHLD) => containers.reap(&mut procs, &clock, &mut status, infra),
            Some(_) => break,
            None => {}
        }
    }

    // `delete --grace-period` writes its own before it signals us.
    let grace = std::fs::read_to_string(dir.grace_override())
        .ok()
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or(cfg.spec.termination_grace_period_seconds);
    let grace = Duration::from_secs(grace);
    let killing: Vec<Event> = status
        .containers
        .iter()
        .filter(|c| c.is_running())
        .map(|c| Event::normal("Killing", format!("Stopping container {}", c.name)))
        .collect();
    events::record(dir, &killing);
    containers.stop(&mut procs, &clock, &mut status, grace);
    // SAFETY: kill and waitpid on our own child.
    unsafe {
        libc::kill(infra as i32, libc::SIGKILL);
        while libc::waitpid(-1, std::ptr::null_mut(), 0) > 0 {}
    }
    status.supervisor = None;
    dir.save_status(&status)
}

struct Context<'a> {
    dir: &'a PodDir,
    netns: File,
    uts: File,
    ipc: File,
    own_pid_ns: bool,
}

/// The containers as real processes: forked into the pod's namespaces, signalled and
/// reaped as children of the supervisor.
struct Children<'a> {
    ctx: &'a Context<'a>,
    pod: &'a PodSpec,
}

impl Processes for Children<'_> {
    fn spawn(&mut self, c: &ContainerSpec) -> Result<i32, String> {
        spawn_container(self.ctx, c, self.pod).inspect_err(|message| {
            let _ = append_log(self.ctx.dir, &c.name, &format!("flatnet: {message}\n"));
        })
    }

    fn kill(&mut self, pid: i32, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, signal) };
    }

    fn reap(&mut self) -> Option<(i32, i32)> {
        let mut ws = 0;
        // SAFETY: waitpid with WNOHANG on any child.
        let pid = unsafe { libc::waitpid(-1, &mut ws, libc::WNOHANG) };
        (pid > 0).then_some((pid, ws))
    }
}

/// The infra process: new UTS and IPC namespaces (and PID, if shared) with the pod's hostname,
/// inside the pod's network namespace; it only waits, reaping orphans if it is PID 1.
fn spawn_infra(spec: &PodSpec, netns: &File) -> io::Result<i32> {
    let mut flags = libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if spec.share_process_namespace {
        flags |= libc::CLONE_NEWPID;
    }
    let hostname = spec.hostname.clone().into_bytes();
    let netns_fd = netns.as_raw_fd();
    let (rd, wr) = super::child::channel()?;
    let wr_fd = wr.as_raw_fd();
    // SAFETY: we are single-threaded (checked in run); the child makes only checked syscalls
    // on data prepared above, then waits forever.
    let pid = unsafe { clone(flags) }?;
    if pid == 0 {
        // SAFETY: in the child, see above.
        unsafe {
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                super::child::fail(wr_fd, "join the pod's network namespace");
            }
            if libc::sethostname(hostname.as_ptr().cast(), hostname.len()) != 0 {
                super::child::fail(wr_fd, "set the pod's hostname");
            }
            let empty: libc::sigset_t = std::mem::zeroed();
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                super::child::fail(wr_fd, "unblock signals");
            }
            super::child::done(&wr);
            loop {
                if libc::waitpid(-1, std::ptr::null_mut(), 0) < 0 {
                    libc::pause();
                }
            }
        }
    }
    drop(wr);
    if let Some((step, e)) = super::child::outcome(rd) {
        // SAFETY: reaping our own child, which exited after reporting.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return Err(io::Error::new(
            e.kind(),
            format!("infra process: {step}: {e}"),
        ));
    }
    Ok(pid)
}

/// clone(2) with only flags and SIGCHLD: fork with new namespaces. Returns 0 in the child.
///
/// # Safety
/// The caller is single-threaded, and the child makes only async-signal-safe calls until it
/// execs or exits.
unsafe fn clone(flags: i32) -> io::Result<i32> {
    // SAFETY: clone with a null stack is fork with flags; the caller is single-threaded.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid as i32)
    }
}

/// Forks a container into its namespaces and execs its command. Everything the child needs is
/// prepared before the fork; a failure in the child (a mount, the exec itself) comes back
/// through a close-on-exec pipe as a message, so the caller can tell "could not start" from
/// "started and exited".
fn spawn_container(ctx: &Context, c: &ContainerSpec, pod: &PodSpec) -> Result<i32, String> {
    // kubelet keeps the current instance's log and the previous one's.
    super::logs::rotate(ctx.dir, &c.name).map_err(|e| format!("rotate the log: {e}"))?;
    let cstr =
        |s: &[u8]| CString::new(s).map_err(|_| "a NUL byte in the container spec".to_string());
    let argv: Vec<CString> = c
        .argv
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let env = environment(c, pod);
    let envp: Vec<CString> = env
        .iter()
        .map(|(k, v)| cstr(format!("{k}={v}").as_bytes()))
        .collect::<Result<_, _>>()?;
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    // The program is looked up in the container's PATH before the fork, as execvpe would.
    let program = resolve(&c.argv[0], &path_var)
        .ok_or_else(|| format!("exec {:?}: executable file not found in $PATH", c.argv[0]))?;
    let program = cstr(program.as_os_str().as_bytes())?;
    let workdir = cstr(c.working_dir.as_deref().unwrap_or("/").as_bytes())?;
    let mounts: Vec<(CString, CString, bool)> = c
        .mounts
        .iter()
        .map(|m| {
            Ok((
                cstr(ctx.dir.volume(&m.volume).as_os_str().as_bytes())?,
                cstr(m.mount_path.as_bytes())?,
                m.read_only,
            ))
        })
        .collect::<Result<_, String>>()?;
    let shm = cstr(ctx.dir.shm().as_os_str().as_bytes())?;
    // kubelet's resolv.conf and hosts of the pod, over the machine's (in this container's
    // mount namespace only); a pod made before they existed keeps the machine's.
    let etc: Vec<(CString, &CStr)> = [
        (ctx.dir.resolv_conf(), c"/etc/resolv.conf"),
        (ctx.dir.hosts(), c"/etc/hosts"),
    ]
    .into_iter()
    .filter(|(src, _)| src.exists())
    .map(|(src, dst)| Ok((cstr(src.as_os_str().as_bytes())?, dst)))
    .collect::<Result<_, String>>()?;
    let [out, err] = super::logs::Pipes::new(&super::logs::current(ctx.dir, &c.name))
        .and_then(super::logs::Pipes::spawn_copier)
        .map_err(|e| format!("start the log copier: {e}"))?;
    let devnull = File::open("/dev/null").map_err(|e| e.to_string())?;
    let (rd, wr) = super::child::channel().map_err(|e| format!("pipe: {e}"))?;
    let wr_fd = wr.as_raw_fd();
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_p.push(std::ptr::null());

    let mut flags = libc::CLONE_NEWNS;
    if ctx.own_pid_ns {
        flags |= libc::CLONE_NEWPID;
    }
    // SAFETY: we are single-threaded; the child only makes syscalls on data prepared above
    // and then execs or exits.
    let pid = unsafe { clone(flags) }.map_err(|e| format!("clone: {e}"))?;
    if pid == 0 {
        // SAFETY: in the child, see above.
        unsafe {
            let fail = |step: &'static str| -> ! { super::child::fail(wr_fd, step) };
            let root = c"/";
            let none: *const libc::c_char = std::ptr::null();
            let bind = |src: *const libc::c_char, dst: *const libc::c_char| {
                libc::mount(src, dst, none, libc::MS_BIND, std::ptr::null()) == 0
            };
            if libc::setns(ctx.netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                fail("join the pod's network namespace");
            }
            if libc::setns(ctx.uts.as_raw_fd(), libc::CLONE_NEWUTS) != 0 {
                fail("join the pod's UTS namespace");
            }
            if libc::setns(ctx.ipc.as_raw_fd(), libc::CLONE_NEWIPC) != 0 {
                fail("join the pod's IPC namespace");
            }
            if libc::mount(
                none,
                root.as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                fail("make mounts private");
            }
            if libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ) != 0
            {
                fail("mount /proc");
            }
            // /dev/shm is covered last: the pod's files and volumes may live under it (a
            // state dir on tmpfs).
            for (src, dst) in &etc {
                if !bind(src.as_ptr(), dst.as_ptr()) {
                    fail("mount /etc/resolv.conf and /etc/hosts");
                }
            }
            for (src, dst, ro) in &mounts {
                if !bind(src.as_ptr(), dst.as_ptr()) {
                    fail("mount a volume");
                }
                if *ro
                    && libc::mount(
                        none,
                        dst.as_ptr(),
                        none,
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ) != 0
                {
                    fail("make a volume read-only");
                }
            }
            if !bind(shm.as_ptr(), c"/dev/shm".as_ptr()) {
                fail("mount /dev/shm");
            }
            if libc::chdir(workdir.as_ptr()) != 0 {
                fail("change to workingDir");
            }
            if libc::dup2(devnull.as_raw_fd(), 0) < 0
                || libc::dup2(out.as_raw_fd(), 1) < 0
                || libc::dup2(err.as_raw_fd(), 2) < 0
            {
                fail("redirect stdin, stdout and stderr");
            }
            // The supervisor blocks these to wait for them; the container must not inherit that.
            let empty: libc::sigset_t = std::mem::zeroed();
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                fail("unblock signals");
            }
            libc::execve(program.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
            fail("exec");
        }
    }
    drop(wr);
    match super::child::outcome(rd) {
        None => Ok(pid),
        Some((step, e)) => {
            // SAFETY: reaping our own child, which exits right after reporting.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            Err(format!("{step}: {e}"))
        }
    }
}

/// A container's environment: the basics a shell expects, then the manifest's `env`.
pub fn environment(c: &ContainerSpec, pod: &PodSpec) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), "/root".into()),
        ("HOSTNAME".into(), pod.hostname.clone()),
    ];
    for (k, v) in &c.env {
        env.retain(|(e, _)| e != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// `name` as execvp would find it along `path`.
pub fn resolve(name: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exe = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        return Some(PathBuf::from(name)).filter(|p| is_exe(p));
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| is_exe(p))
}

fn append_log(dir: &PodDir, container: &str, text: &str) -> io::Result<()> {
    super::logs::append(&super::logs::current(dir, container), "stderr", text)
}

/// Blocks SIGCHLD, SIGTERM, SIGINT and SIGHUP, to be taken with sigtimedwait.
pub(crate) fn block_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: building and installing a signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        check(libc::sigprocmask(
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut(),
        ))?;
        Ok(set)
    }
}

pub(crate) fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: waiting for a blocked signal with a timeout.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// A mount namespace of our own whose mounts never propagate to the machine's.
fn private_mounts() -> io::Result<()> {
    // SAFETY: single-threaded, so unshare affects the whole process.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
}

fn mount(
    src: Option<&str>,
    dst: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(io::Error::other);
    let src = src.map(c).transpose()?;
    let fstype = fstype.map(c).transpose()?;
    let data = data.map(c).transpose()?;
    let dst = CString::new(dst.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let p = |o: &Option<CString>| o.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: valid C strings or null, as mount(2) takes them.
    check(unsafe { libc::mount(p(&src), dst.as_ptr(), p(&fstype), flags, p(&data).cast()) })
}

fn check(rc: i32) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
