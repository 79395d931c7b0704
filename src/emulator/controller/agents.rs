//! The node agents, supervised as a DaemonSet's pods are: one agent per node, and an agent
//! that is gone is started again after a back-off that doubles with each restart up to five
//! minutes (kubelet's CrashLoopBackOff), its restart counted. A node whose agent was never
//! started (a command is still making the node, or was killed making it) is left alone.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::emulator::state::ClusterSpec;
use crate::emulator::Cluster;
use crate::netns::{self, NetNs};

const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The wait before restart number `restarts + 1`.
pub fn backoff(first: Duration, restarts: u32) -> Duration {
    first
        .saturating_mul(1u32 << restarts.min(16))
        .min(MAX_BACKOFF)
}

/// Restarts the agents that are due and schedules those newly found gone. Returns whether the
/// spec changed, and how soon the next restart is due.
pub fn reconcile(
    cluster: &Cluster,
    spec: &mut ClusterSpec,
    now_ms: u64,
) -> (bool, Option<Duration>) {
    let first = Duration::from_millis(spec.agent_restart_backoff_ms);
    let mut changed = false;
    let mut due: Option<Duration> = None;
    let snapshot = spec.clone();
    for node in &mut spec.nodes {
        let Some(agent) = node.agent else {
            continue;
        };
        if agent.is_running() {
            if node.agent_restart_at.take().is_some() {
                changed = true;
            }
            continue;
        }
        let at = *node.agent_restart_at.get_or_insert_with(|| {
            changed = true;
            let wait = backoff(first, node.agent_restarts);
            warn!(node = %node.name, pid = agent.pid, "the agent is gone; restarting it in {} ms",
                wait.as_millis());
            now_ms + wait.as_millis() as u64
        });
        if at > now_ms {
            let left = Duration::from_millis(at - now_ms);
            due = Some(due.map_or(left, |d| d.min(left)));
            continue;
        }
        let path = netns::named_path(&node.netns);
        let started = NetNs::open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))
            .and_then(|ns| {
                cluster
                    .start_agent(&snapshot, &node.name, &Arc::new(ns))
                    .map_err(|e| e.to_string())
            });
        match started {
            Ok(new) => {
                node.agent = Some(new);
                node.agent_restarts += 1;
                node.agent_restart_at = None;
                changed = true;
                info!(node = %node.name, pid = new.pid, restarts = node.agent_restarts,
                    "agent restarted");
            }
            Err(e) => {
                let wait = backoff(first, node.agent_restarts);
                node.agent_restarts += 1;
                node.agent_restart_at = Some(now_ms + wait.as_millis() as u64);
                changed = true;
                warn!(node = %node.name, "cannot restart the agent: {e}; trying again in {} ms",
                    wait.as_millis());
            }
        }
    }
    (changed, due)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_doubles_up_to_five_minutes() {
        let first = Duration::from_secs(10);
        assert_eq!(backoff(first, 0), first);
        assert_eq!(backoff(first, 1), Duration::from_secs(20));
        assert_eq!(backoff(first, 4), Duration::from_secs(160));
        assert_eq!(backoff(first, 5), MAX_BACKOFF);
        assert_eq!(backoff(first, 1000), MAX_BACKOFF);
    }
}
