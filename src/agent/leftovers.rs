//! Deletes the host veths that `flatnet-cni`'s DEL retired (down, in device group
//! [`RETIRED`]), all of them in one request, every [`EVERY`]: a retired link is gone within a
//! second while the agent runs, and its deletion costs the kernel's grace periods once per
//! sweep rather than once per pod (see `flatnet_core::plugin`'s DEL and `netlink::group`).
//!
//! A sweep with nothing retired is one request that the kernel answers at once (ENODEV). The
//! request blocks while the kernel deletes, so it runs on the blocking pool, never on a worker.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use crate::netlink::{GroupDelete, Netlink, RETIRED};

/// How often the group is swept.
pub const EVERY: Duration = Duration::from_millis(500);

/// The sweeping task; it stops when this is dropped.
pub struct Sweeper(tokio::task::JoinHandle<()>);

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Sweeper {
    /// Sweeps the namespace `netlink` works on (the caller's if it was opened on no other).
    /// None, with a warning, if no socket can be had there: retired links then go with their
    /// pods' namespaces or at the plugin's next call, as without an agent.
    pub fn start(netlink: &Netlink) -> Option<Sweeper> {
        let made = match netlink.netns() {
            Some(ns) => ns.run(|| GroupDelete::new(RETIRED)).and_then(|r| r),
            None => GroupDelete::new(RETIRED),
        };
        let del = match made {
            Ok(d) => Arc::new(d),
            Err(e) => {
                warn!("cannot sweep retired host veths: {e}");
                return None;
            }
        };
        Some(Sweeper(tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let del = del.clone();
                match tokio::task::spawn_blocking(move || del.run()).await {
                    Ok(Ok(true)) => debug!("deleted retired host veths"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => warn!("delete retired host veths: {e}"),
                    Err(e) => warn!("the sweep of retired host veths failed: {e}"),
                }
            }
        })))
    }
}
