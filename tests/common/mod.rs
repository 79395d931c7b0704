//! The netns test harness: namespaces and directories that clean themselves up, a fake node
//! with the sysctls it relies on set explicitly, the built plugin run as a runtime runs it,
//! TCP probes that report the source address the receiver saw, and polling helpers.
//!
//! Every name carries the prefix `fnt<pid>-`, so parallel test processes never collide and a
//! later run can sweep what a killed one (SIGKILL, CI timeout) left behind.
#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod agent;
pub mod cluster;
pub mod plugin;
pub mod sctp;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use flatnet::netns::{self, NetNs};
use serde_json::Value;

pub const PREFIX: &str = "fnt";

static SEQ: AtomicU64 = AtomicU64::new(0);
static SWEEP: Once = Once::new();

pub fn unique(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}-{n}-{tag}", std::process::id())
}

pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid a harness name was made by, if it is one.
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Removes namespaces and temp dirs left by test processes that no longer run. Runs once per
/// test process, before its first fixture.
pub fn sweep_stale() {
    SWEEP.call_once(|| {
        for name in netns::list_named().unwrap_or_default() {
            if owner_pid(&name).is_some_and(|p| !pid_alive(p)) {
                let _ = netns::delete_named(&name);
            }
        }
        cluster::sweep_stale_clusters();
        if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if owner_pid(&name).is_some_and(|p| !pid_alive(p)) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    });
}

/// A named network namespace, deleted on drop (also when the test panics).
pub struct TestNs {
    name: String,
    ns: Arc<NetNs>,
}

impl TestNs {
    /// A new namespace with `lo` up.
    pub fn new(tag: &str) -> TestNs {
        sweep_stale();
        let name = unique(tag);
        let ns = Arc::new(netns::create_named(&name).expect("create netns"));
        let t = TestNs { name, ns };
        t.sh(&["ip", "link", "set", "lo", "up"]);
        t
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ns(&self) -> Arc<NetNs> {
        self.ns.clone()
    }

    pub fn path(&self) -> String {
        netns::named_path(&self.name).display().to_string()
    }

    /// Runs a command inside the namespace (`ip netns exec`) and returns its stdout; panics
    /// on failure. For witnesses and setup, never for the code under test.
    pub fn sh(&self, cmd: &[&str]) -> String {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(cmd);
        run_ok("ip", &args)
    }

    /// `ip -n NAME ARGS…`: the independent witness of what the plugin did.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_ok("ip", &all)
    }

    /// Names of the links in the namespace.
    pub fn links(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect()
    }

    /// Sets a sysctl of this namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        netns::write_sysctl(&self.ns, key, value).unwrap_or_else(|e| panic!("sysctl {key}: {e}"));
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = netns::delete_named(&self.name);
    }
}

/// A fake node: its own namespace with forwarding on and strict reverse-path filtering set
/// explicitly (the harder case, and independent of the machine's defaults).
pub fn node_ns(tag: &str) -> TestNs {
    let node = TestNs::new(tag);
    node.sysctl("net.ipv4.ip_forward", "1");
    node.sysctl("net.ipv4.conf.all.rp_filter", "1");
    node.sysctl("net.ipv4.conf.default.rp_filter", "1");
    node
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        sweep_stale();
        let d = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&d).expect("create temp dir");
        TempDir(d)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run_ok(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A binary of this workspace, built next to the test executable (target/<profile>/).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        bin.display()
    );
    bin
}

/// The built `flatnet-cni`.
pub fn plugin_bin() -> PathBuf {
    workspace_bin("flatnet-cni")
}

/// What one plugin call printed and how it exited.
#[derive(Debug)]
pub struct CniOut {
    pub ok: bool,
    pub stdout: String,
    pub json: Value,
}

impl CniOut {
    fn from(out: Output) -> CniOut {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        CniOut {
            ok: out.status.success(),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
        }
    }

    /// The error code, asserting that the call failed as the spec says: non-zero exit and
    /// the error JSON on stdout.
    pub fn err_code(&self) -> u64 {
        assert!(!self.ok, "expected a failure, got success: {}", self.stdout);
        self.json["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error JSON on stdout: {:?}", self.stdout))
    }

    pub fn expect_ok(self) -> CniOut {
        assert!(self.ok, "plugin failed: {}", self.stdout);
        self
    }
}

/// Runs `flatnet-cni` as a runtime does: exactly `env`, `stdin`, inside `node`.
pub fn cni(node: &TestNs, env: &[(&str, &str)], stdin: &str) -> CniOut {
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let out = flatnet::cni::invoke::exec(&plugin_bin(), &env, stdin.as_bytes(), Some(&node.ns))
        .expect("exec flatnet-cni");
    CniOut::from(out)
}

/// A TCP server in `ns` that accepts one connection, reads a line, answers "ok" and returns
/// the peer address it saw.
pub fn serve_once(ns: &TestNs, port: u16) -> std::thread::JoinHandle<SocketAddr> {
    serve_once_in(ns.ns(), port)
}

/// [`serve_once`] in any namespace.
pub fn serve_once_in(ns: Arc<NetNs>, port: u16) -> std::thread::JoinHandle<SocketAddr> {
    serve_once_on(ns, port, false)
}

/// [`serve_once_in`], on `::` for IPv6.
fn serve_once_on(ns: Arc<NetNs>, port: u16, v6: bool) -> std::thread::JoinHandle<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        ns.enter().expect("enter netns");
        let any: IpAddr = if v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let l = TcpListener::bind((any, port)).expect("bind");
        tx.send(()).unwrap();
        let (mut s, peer) = l.accept().expect("accept");
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        s.write_all(b"ok\n").unwrap();
        peer
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    handle
}

/// Connects from `ns` to dst:port, sends a line, and returns the answer.
pub fn connect(ns: &TestNs, dst: Ipv4Addr, port: u16) -> std::io::Result<String> {
    connect_in(&ns.ns(), dst, port)
}

/// [`connect`] from any namespace, to an address of either family.
pub fn connect_in(ns: &NetNs, dst: impl Into<IpAddr>, port: u16) -> std::io::Result<String> {
    let dst = dst.into();
    ns.run(move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"hello\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    })?
}

/// A TCP exchange from `from` to `to` at dst:port, of either family; returns the source
/// address `to` saw.
fn exchange_ip(from: &TestNs, to: &TestNs, dst: IpAddr, port: u16) -> IpAddr {
    let server = serve_once_on(to.ns(), port, dst.is_ipv6());
    let answer = connect_in(&from.ns(), dst, port)
        .unwrap_or_else(|e| panic!("connect {} -> {dst}:{port}: {e}", from.name()));
    assert_eq!(answer, "ok\n");
    server.join().expect("server thread").ip()
}

/// [`exchange_ip`] over IPv4.
pub fn exchange(from: &TestNs, to: &TestNs, dst: Ipv4Addr, port: u16) -> Ipv4Addr {
    match exchange_ip(from, to, dst.into(), port) {
        IpAddr::V4(a) => a,
        other => panic!("unexpected peer {other}"),
    }
}

/// [`exchange_ip`] over IPv6.
pub fn exchange6(from: &TestNs, to: &TestNs, dst: Ipv6Addr, port: u16) -> Ipv6Addr {
    match exchange_ip(from, to, dst.into(), port) {
        IpAddr::V6(a) => a,
        other => panic!("unexpected peer {other}"),
    }
}

/// Polls `f` until it holds or `timeout` passes. The kernel tears down links and namespaces
/// asynchronously, so tests wait for the outcome instead of asserting it at once.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
