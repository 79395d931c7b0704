//! The Service controllers' pass: EndpointSlices from the pods, the proxy table of every node
//! and the DNS zone, from the Services on disk (see [`crate::emulator::services`]).
//!
//! kube-proxy runs on every node of a real cluster; here the one controller process programs
//! every node's table, entering each node's namespace for one `nft -f` transaction, so that a
//! cluster needs no process per node beyond its agent. What it last wrote to each node is the
//! only thing it keeps between passes (a controller started again rewrites every table once).

use std::collections::BTreeMap;

use tracing::{info, warn};

use crate::emulator::services::{self, dns, endpoints, proxy};
use crate::emulator::state::{ClusterDir, ClusterSpec};
use crate::emulator::{io_err, Result};

/// Brings the slices, the node tables and the zone in line with the Services and pods.
pub fn reconcile(dir: &ClusterDir, spec: &ClusterSpec, written: &mut proxy::Written) -> Result<()> {
    let svcs = services::all(dir);
    let pods = dir.pods()?;
    let mut with_eps = Vec::new();
    let mut slices: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
    for svc in svcs {
        let eps = endpoints::of(dir, &svc, &pods);
        if svc.selector.is_some() {
            slices
                .entry(svc.namespace.clone())
                .or_default()
                .extend(endpoints::slices(&svc, &eps));
        }
        with_eps.push((svc, eps));
    }
    if endpoints::store(dir, &slices)? {
        info!("endpoint slices changed");
    }
    dns::store(dir, &dns::Zone::build(&with_eps, &pods)).map_err(io_err("write dns.json"))?;
    for e in written.sync(spec, &with_eps) {
        warn!("proxy rules of {e}");
    }
    Ok(())
}

/// What the controller starts with: no table written yet.
pub fn proxy_state() -> proxy::Written {
    proxy::Written::default()
}

/// Adds SIGUSR1 to the signals the controller waits for: a pod supervisor sends it when its
/// pod's readiness changes, so that the endpoints follow at once rather than at the next tick.
pub fn wake_on_nudge(set: &mut libc::sigset_t) -> std::io::Result<()> {
    // SAFETY: adding a signal to a set and blocking it.
    unsafe {
        libc::sigaddset(set, libc::SIGUSR1);
        if libc::sigprocmask(libc::SIG_BLOCK, set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Wakes the controller of the cluster in `cluster_dir` (see [`wake_on_nudge`]); a controller
/// that is gone, or a PID that now belongs to another process, is left alone.
pub fn nudge(cluster_dir: &std::path::Path) {
    let Some(pid) = std::fs::read(cluster_dir.join("cluster.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            serde_json::from_value::<crate::emulator::process::ProcessId>(v["controller"].clone())
                .ok()
        })
    else {
        return;
    };
    if let Ok(Some(fd)) = pid.pidfd() {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGUSR1,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}
