//! DEL: idempotent. Removes the host veth (its pod end goes with it) and the host route, then
//! frees the address. Works without the pod's netns and without prevResult, as containerd's
//! second DEL (RemovePodSandbox) has neither.

use std::net::Ipv4Addr;

use tracing::info;

use super::{host_veth_name, node_netlink, owner, remove_host_route};
use crate::cni::{CniError, CniResult, Env, NetConf};
use crate::ipam::Store;

pub(super) async fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let node = node_netlink()?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    if let Some(link) = node.link_by_name(&host_name).await? {
        node.delete_link(link.index).await?;
    }

    let store = Store::open(conf.store_dir())?;
    let mut locked = store.lock(super::LOCK_TIMEOUT)?;
    let owner = owner(env);
    let ip = match locked.get(&owner)? {
        Some(ip) => Some(ip),
        None => prev_result_ip(conf),
    };
    if let Some(ip) = ip {
        remove_host_route(&node, ip).await?;
    }
    if let Some(freed) = locked.release(&owner, ip)? {
        info!(container = %env.container_id, ifname = %env.ifname, ip = %freed, "released");
    }
    Ok(())
}

/// The pod's address according to prevResult, if it has one we can read.
fn prev_result_ip(conf: &NetConf) -> Option<Ipv4Addr> {
    let prev = CniResult::from_value(conf.prev_result.as_ref()?).ok()?;
    prev.ips.iter().find_map(|c| match c.address.ip() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(_) => None,
    })
}
