//! DEL: idempotent. Retires the host veth (down, so nothing passes either way and the node's
//! routes to the pod are flushed; see `leftovers` for when the link itself goes), then frees the
//! address. Works without the pod's netns and without
//! prevResult, as containerd's second DEL (RemovePodSandbox) has neither, and after an ADD that
//! was killed at any step (containerd 1.6 then sends one DEL with no prevResult).
//!
//! It acts only on what this attachment owns: the host veth named after its container ID and
//! ifname, and the addresses (one per family) the store holds for it. A stale prevResult (a
//! repeated DEL after an address went to another pod) frees nothing and removes no route.

use std::net::IpAddr;

use tracing::info;

use super::{host_veth_name, leftovers, node_netlink, owner};
use crate::cni::error::code;
use crate::cni::{CniError, CniResult, Env, NetConf};
use crate::crashpoint;
use crate::ipam::Store;

pub(super) async fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let node = node_netlink()?;
    let store_dir = conf.store_dir();
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    if let Some(link) = node.link_by_name(&host_name).await? {
        leftovers::retire(&node, &link, &store_dir)
            .await
            .map_err(|e| {
                CniError::new(code::NETLINK, format!("cannot retire {host_name}")).with_details(e)
            })?;
    }

    let store = Store::open(&store_dir)?;
    let mut locked = store.lock(super::LOCK_TIMEOUT)?;
    let freed = locked.release(&owner(env), &prev_result_ips(conf))?;
    if !freed.is_empty() {
        info!(container = %env.container_id, ifname = %env.ifname, ips = ?freed, "released");
    }
    crashpoint::hit("del:released");
    leftovers::kick(&store_dir);
    Ok(())
}

/// The pod's addresses according to prevResult, if it has one we can read.
fn prev_result_ips(conf: &NetConf) -> Vec<IpAddr> {
    conf.prev_result
        .as_ref()
        .and_then(|p| CniResult::from_value(p).ok())
        .map_or_else(Vec::new, |prev| {
            prev.ips.iter().map(|c| c.address.ip()).collect()
        })
}
