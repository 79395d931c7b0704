//! CHECK: the attachment is still as ADD left it. Each finding names what is missing or wrong.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};

use super::{host_veth_name, node_netlink, open_pod_netns, owner, pod_netlink};
use crate::cni::error::code;
use crate::cni::{CniError, CniResult, Env, NetConf};
use crate::ipam::{Pool, Store};
use crate::netlink::{Netlink, Route};

pub(super) async fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid network config: CHECK needs prevResult",
        )
    })?;
    let prev = CniResult::from_value(prev)?;
    let (iface_idx, iface) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.sandbox.is_some() && i.name == env.ifname)
        .ok_or_else(|| {
            failed(format!(
                "prevResult has no interface {} in a sandbox",
                env.ifname
            ))
        })?;
    let ip = prev
        .ips
        .iter()
        .filter(|c| c.interface == Some(iface_idx))
        .find_map(|c| match c.address.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
        .ok_or_else(|| failed(format!("prevResult has no IPv4 address on {}", env.ifname)))?;
    let gateway = Pool::new(conf.pod_cidr).gateway();

    let pod = pod_netlink(open_pod_netns(&env.netns)?)?;
    let link = pod.link_by_name(&env.ifname).await?.ok_or_else(|| {
        failed(format!(
            "interface {} is missing from {}",
            env.ifname, env.netns
        ))
    })?;
    if link.kind.as_deref() != Some("veth") {
        return Err(failed(format!("interface {} is not a veth", env.ifname)));
    }
    if !iface.mac.is_empty() && !iface.mac.eq_ignore_ascii_case(&link.mac_string()) {
        return Err(failed(format!(
            "interface {} has MAC {}, prevResult says {}",
            env.ifname,
            link.mac_string(),
            iface.mac
        )));
    }
    let want = IpNetwork::V4(Ipv4Network::from(ip));
    if !pod.addresses(link.index).await?.contains(&want) {
        return Err(failed(format!(
            "address {want} is missing from {}",
            env.ifname
        )));
    }
    let routes = pod.routes().await?;
    let has = |dst: Ipv4Network, gw: Option<Ipv4Addr>| {
        routes
            .iter()
            .any(|r: &Route| r.dst == dst && r.gateway == gw && r.oif == Some(link.index))
    };
    if !has(Ipv4Network::from(gateway), None) {
        return Err(failed(format!(
            "pod route to the gateway {gateway} is missing"
        )));
    }
    let default = Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("valid");
    if !has(default, Some(gateway)) {
        return Err(failed(format!(
            "pod default route via {gateway} is missing"
        )));
    }

    let node = node_netlink()?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let host = node
        .link_by_name(&host_name)
        .await?
        .ok_or_else(|| failed(format!("host interface {host_name} is missing")))?;
    check_host_route(&node, ip, host.index).await?;

    let store = Store::open(conf.store_dir())?;
    let held = store.lock(super::LOCK_TIMEOUT)?.get(&owner(env))?;
    if held != Some(ip) {
        return Err(failed(format!(
            "IPAM store holds {} for this container, prevResult says {ip}",
            held.map_or("nothing".to_string(), |h| h.to_string())
        )));
    }
    Ok(())
}

async fn check_host_route(node: &Netlink, ip: Ipv4Addr, index: u32) -> Result<(), CniError> {
    let dst = Ipv4Network::from(ip);
    if node
        .routes()
        .await?
        .iter()
        .any(|r| r.dst == dst && r.oif == Some(index) && r.gateway.is_none())
    {
        Ok(())
    } else {
        Err(failed(format!(
            "node route to {ip} through its host veth is missing"
        )))
    }
}

fn failed(msg: String) -> CniError {
    CniError::new(code::CHECK_FAILED, msg)
}
