//! What every section shares: progress, statistics, the namespaces and processes the run made
//! (so that they are removed again on every path), and exec'ing a plugin with its rusage.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flatnet::netns::{self, NetNs};

static START: OnceLock<Instant> = OnceLock::new();

pub fn start_clock() {
    START.get_or_init(Instant::now);
}

/// Progress on stderr, with the time since the start of the run.
pub fn progress(msg: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[{t:6.1}s] {msg}");
}

/// Fails once Ctrl-C or SIGTERM has come in (the emulator's handler is installed in main).
pub fn check_interrupt() -> Result<()> {
    flatnet::emulator::interrupt::check().context("benchmark interrupted")
}

/// The run's identity: every name it gives starts with `tag` (e.g. `fbench1234`) and every
/// file it writes is under `work`.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub tag: String,
    pub work: PathBuf,
    /// Where `flatnet`, `flatnet-cni`, `noop-cni` and this binary are.
    pub bin: PathBuf,
    pub reps: usize,
    pub quick: bool,
    /// How many pods the cni section's ADD growth goes to (default 1,000; 300 quick).
    pub growth: Option<usize>,
}

/// User + system CPU of `who` (`RUSAGE_SELF`: every thread of this process, ended ones too;
/// `RUSAGE_THREAD`; `RUSAGE_CHILDREN`: the children waited for).
pub fn rusage_cpu(who: libc::c_int) -> Duration {
    // SAFETY: rusage is plain data that getrusage fills.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// User + system CPU of process `pid` so far (zero if it is gone).
pub fn pid_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // After the command's ')': state is the first field, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

// ---- statistics -------------------------------------------------------------------------

/// The nearest-rank percentile `p` (0..=100) of `v` (any order).
pub fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// One figure over repetitions: the median of the per-repetition values and their range.
#[derive(Debug, Clone, Copy)]
pub struct Fig {
    pub med: f64,
    pub min: f64,
    pub max: f64,
}

impl Fig {
    pub fn of(per_rep: &[f64]) -> Fig {
        Fig {
            med: median(per_rep),
            min: per_rep.iter().copied().fold(f64::INFINITY, f64::min),
            max: per_rep.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }

    /// `12.3 (11.9–13.0)` with `prec` decimals.
    pub fn show(&self, prec: usize) -> String {
        format!(
            "{:.p$} ({:.p$}–{:.p$})",
            self.med,
            self.min,
            self.max,
            p = prec
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"median": self.med, "min": self.min, "max": self.max})
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---- namespaces and processes the run made -------------------------------------------------

static NAMESPACES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// Creates the named namespace (which must start with the run's tag) and remembers it.
pub fn create_ns(name: &str) -> Result<NetNs> {
    let ns = netns::create_named(name).with_context(|| format!("create netns {name}"))?;
    NAMESPACES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(name.to_string());
    Ok(ns)
}

/// Removes the named namespace now (untimed work between measurements).
pub fn delete_ns(name: &str) -> Result<()> {
    netns::delete_named(name).with_context(|| format!("delete netns {name}"))?;
    NAMESPACES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|n| n != name);
    Ok(())
}

/// A long-running helper process (an iperf3 server) to be killed at the end.
/// How many network namespaces the kernel holds, dying ones included (they are freed by a
/// kernel worker long after their last reference goes): the `net_namespace` slab's active
/// objects. None where /proc/slabinfo cannot be read.
pub fn netns_in_kernel() -> Option<usize> {
    let slabs = std::fs::read_to_string("/proc/slabinfo").ok()?;
    slabs
        .lines()
        .find_map(|l| l.strip_prefix("net_namespace "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Waits (up to two minutes) until the kernel has freed namespaces down to `target`: thousands
/// being torn down hold the RTNL lock in bursts, which the next measurement would pay for.
pub fn wait_netns_freed(target: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while netns_in_kernel().is_some_and(|n| n > target) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn keep_child(child: Child) -> u32 {
    let pid = child.id();
    CHILDREN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(child);
    pid
}

/// Kills and reaps the helper process `pid`, which this run started.
pub fn stop_child(pid: u32) {
    let mut children = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = children.iter().position(|c| c.id() == pid) {
        let mut c = children.remove(i);
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Kills every helper process and removes every namespace the run still has. Called on every
/// way out of main; `bench/run.sh` repeats it by name as a last resort.
pub fn cleanup_all() {
    let children: Vec<Child> =
        std::mem::take(&mut *CHILDREN.lock().unwrap_or_else(|p| p.into_inner()));
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let names: Vec<String> =
        std::mem::take(&mut *NAMESPACES.lock().unwrap_or_else(|p| p.into_inner()));
    for n in names.iter().rev() {
        let _ = netns::delete_named(n);
    }
}

/// Runs `ip ARGS…` (namespace set-up by hand, as the issue asks for the datapath baselines).
pub fn ip(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

// ---- exec'ing a plugin -------------------------------------------------------------------

/// One plugin call as the runtime makes it, with what the kernel says it cost.
#[derive(Debug, Clone)]
pub struct Exec {
    pub wall: Duration,
    /// ru_maxrss of the child (KiB): the largest of it and any child it waited for (ptp's
    /// host-local), as wait4 reports it.
    pub maxrss_kib: i64,
    pub utime: Duration,
    pub stime: Duration,
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Exec {
    pub fn ok(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    pub fn explain(&self) -> String {
        format!(
            "status {:#x}, stdout {}, stderr {}",
            self.status,
            String::from_utf8_lossy(&self.stdout).trim(),
            String::from_utf8_lossy(&self.stderr).trim()
        )
    }
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// Execs `bin` exactly as flatnet's runtime side does (`flatnet::netns::command`:
/// clean environment plus `env`, the node's netns entered between fork and exec), writes
/// `stdin`, collects stdout and stderr and reaps the child with wait4 for its rusage. The
/// clock runs from just before the fork to the reaping.
/// Through `launcher` (`launcher bin`, see `fbench-rusage`) when given.
pub fn exec_via(
    launcher: Option<&Path>,
    bin: &Path,
    env: &[(&str, String)],
    stdin: &[u8],
    node: &NetNs,
) -> io::Result<Exec> {
    let mut cmd = match launcher {
        Some(l) => {
            let mut c = flatnet::netns::command(l, env, Some(node));
            c.arg(bin);
            c
        }
        None => flatnet::netns::command(bin, env, Some(node)),
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin);
    }
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut p) = child.stdout.take() {
        p.read_to_end(&mut stdout)?;
    }
    if let Some(mut p) = child.stderr.take() {
        p.read_to_end(&mut stderr)?;
    }
    let (status, ru) = crate::wait4::wait4(pid)?;
    let wall = t0.elapsed();
    // Reaped already: dropping the handle neither waits nor signals.
    drop(child);
    Ok(Exec {
        wall,
        maxrss_kib: ru.ru_maxrss,
        utime: tv(ru.ru_utime),
        stime: tv(ru.ru_stime),
        status,
        stdout,
        stderr,
    })
}

/// Markdown table.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n|", head.join(" | "));
    for (i, _) in head.iter().enumerate() {
        s.push_str(if i == 0 { "---|" } else { "---:|" });
    }
    s.push('\n');
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}
