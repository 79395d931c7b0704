//! The cluster's controller: one process per cluster (`flatnet controller DIR`, started by `up`
//! and stopped by `down`) that keeps running what the cluster's state says should run, as
//! kube-controller-manager and kubelet do in a real cluster. It supervises the node agents as
//! a DaemonSet would ([`agents`]), and keeps each Deployment's ReplicaSets and pods
//! ([`deployments`]), and is kube-proxy, the EndpointSlice controller and CoreDNS's source of
//! records for the Services ([`services`]).
//!
//! It keeps nothing that matters in memory: every pass reads the cluster's state from disk
//! and writes what it decided (restart counts, when the next restart is due) back, under the
//! cluster lock. So it can be killed and started again at any moment and carries on where it
//! was. A pass never waits for the lock: while a command holds it (`up`, `node add`, …), the
//! pass is skipped and tried again a tick later.
//!
//! It is single-threaded and waits for SIGTERM, SIGINT and SIGCHLD with sigtimedwait, as the
//! pod supervisor does, so it needs no handlers and no async runtime.

pub mod agents;
pub mod deployments;
pub mod services;

use std::io;
use std::time::Duration;

use tracing::{info, warn};

use super::pods::supervisor::{block_signals, wait_signal};
use super::process::{self, ProcessId};
use super::state::{now_ms, ClusterDir, StateRoot};
use super::{io_err, Cluster, Result};

/// How often the controller looks, when nothing is due sooner: the bound on how late a dead
/// agent that is not its own child is noticed.
const TICK: Duration = Duration::from_millis(250);

/// How often the controller publishes every pod, namespace and policy to the agents' registry
/// whether or not anything changed: the bound on how long a command killed between its change
/// and its publish leaves the agents behind. Every command (and this controller) publishes
/// what it changed as it goes; a full publish reads every pod's record, so it is not done at
/// every tick.
const REPUBLISH: Duration = Duration::from_secs(10);

/// Runs the controller of the cluster in `dir` until SIGTERM or SIGINT, or until the cluster
/// is gone.
pub fn run(dir: &ClusterDir) -> Result<()> {
    let mut signals = block_signals().map_err(io_err("block signals"))?;
    services::wake_on_nudge(&mut signals).map_err(io_err("block signals"))?;
    let root = StateRoot::new(dir.path().parent().unwrap_or(dir.path()));
    let cluster = Cluster::new(&root, dir.name())?;
    info!(cluster = %cluster.name(), "controller started");
    // The last failure logged: one that persists is logged once, not every tick.
    let mut failing = String::new();
    let mut written = services::proxy_state();
    // None: the first pass publishes everything.
    let mut published: Option<std::time::Instant> = None;
    loop {
        reap();
        if !dir.exists() {
            info!("the cluster's state is gone: stopping");
            return Ok(());
        }
        let wake = match pass(&cluster, &mut written, &mut published) {
            Ok(due) => {
                failing.clear();
                due.map_or(TICK, |d| d.min(TICK))
            }
            Err(e) => {
                let e = e.to_string();
                if e != failing {
                    warn!("pass failed, retrying every {} ms: {e}", TICK.as_millis());
                    failing = e;
                }
                TICK
            }
        };
        match wait_signal(&signals, wake.max(Duration::from_millis(1))) {
            Some(libc::SIGCHLD | libc::SIGUSR1) | None => {}
            Some(_) => {
                info!("stopping; the agents keep running");
                return Ok(());
            }
        }
    }
}

/// One pass of every controller, under the cluster lock if it is free. Returns how soon the
/// next pass is due, if sooner than a tick.
fn pass(
    cluster: &Cluster,
    written: &mut crate::emulator::services::proxy::Written,
    published: &mut Option<std::time::Instant>,
) -> Result<Option<Duration>> {
    let Some(_lock) = cluster.dir().try_lock()? else {
        return Ok(None);
    };
    let Some(mut spec) = cluster.dir().load()? else {
        return Ok(None);
    };
    let (changed, due) = agents::reconcile(cluster, &mut spec, now_ms());
    if changed {
        cluster.dir().save(&spec)?;
    }
    // Not while a command is still building the cluster: its nodes may not be ready.
    if spec.building.is_none() {
        deployments::reconcile(cluster, &spec)?;
        services::reconcile(cluster.dir(), &spec, written)?;
        // The pods it made or deleted were published as it went; now and then everything is,
        // in case a command died before its own publish (only changed records are rewritten).
        if published.is_none_or(|t| t.elapsed() >= REPUBLISH) {
            cluster.publish()?;
            *published = Some(std::time::Instant::now());
        }
    }
    Ok(due)
}

/// Reaps the agents it restarted (its children) that have exited.
fn reap() {
    // SAFETY: waitpid with WNOHANG on any child, no status wanted.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// Starts the controller of `dir`, detached.
pub fn start(dir: &ClusterDir) -> io::Result<ProcessId> {
    let exe = std::env::current_exe()?;
    let args = vec!["controller".to_string(), dir.path().display().to_string()];
    process::spawn_detached(&exe, &args, None, &dir.controller_log())
}

/// Controllers of a cluster whose state was lost: `flatnet controller <cluster dir>`.
pub fn strays(dir: &ClusterDir) -> Vec<ProcessId> {
    let want = dir.path().as_os_str().as_encoded_bytes();
    process::find(|argv| {
        argv.first().is_some_and(|a| a.ends_with(b"flatnet"))
            && argv.get(1) == Some(&b"controller".as_slice())
            && argv.get(2) == Some(&want)
    })
}
