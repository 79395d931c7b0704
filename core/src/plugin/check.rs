//! CHECK: the attachment is still as ADD left it, in every family of the node's `podCIDRs`.
//! Each finding names what is missing or wrong.

use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::{host_veth_name, node_netlink, open_pod_netns, owner, pod_netlink};
use crate::cni::error::code;
use crate::cni::{CniError, CniResult, Env, NetConf};
use crate::ipam::Store;
use crate::netlink::{Family, Netlink, RouteOf};

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
    // One address per pool, in the pools' order, each with the gateway of its pool.
    let mut want = Vec::new();
    for pool in super::add::pools(conf) {
        let ip = prev
            .ips
            .iter()
            .filter(|c| c.interface == Some(iface_idx))
            .map(|c| c.address.ip())
            .find(|ip| pool.contains(*ip))
            .ok_or_else(|| {
                failed(format!(
                    "prevResult has no address of {} on {}",
                    pool.cidr(),
                    env.ifname
                ))
            })?;
        want.push((ip, pool.gateway()));
    }

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
    let addresses = pod.addresses(link.index).await?;
    for &(ip, _) in &want {
        let net = IpNetwork::from(ip);
        if !addresses.contains(&net) {
            return Err(failed(format!(
                "address {net} is missing from {}",
                env.ifname
            )));
        }
    }
    for &(_, gateway) in &want {
        match gateway {
            IpAddr::V4(gw) => check_pod_routes::<Ipv4Network>(&pod, gw, link.index).await?,
            IpAddr::V6(gw) => check_pod_routes::<Ipv6Network>(&pod, gw, link.index).await?,
        }
    }

    let node = node_netlink()?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let host = node
        .link_by_name(&host_name)
        .await?
        .ok_or_else(|| failed(format!("host interface {host_name} is missing")))?;
    for &(ip, _) in &want {
        match ip {
            IpAddr::V4(ip) => check_host_route::<Ipv4Network>(&node, ip, host.index).await?,
            IpAddr::V6(ip) => check_host_route::<Ipv6Network>(&node, ip, host.index).await?,
        }
    }
    let gateways: Vec<IpAddr> = want.iter().map(|&(_, gw)| gw).collect();
    super::gateway::check(&node, &pod, &link, &host, &gateways).await?;

    let store = Store::open(conf.store_dir())?;
    let held = store.lock(super::LOCK_TIMEOUT)?.get(&owner(env))?;
    let named: Vec<IpAddr> = want.iter().map(|(ip, _)| *ip).collect();
    if held != named {
        let list = |ips: &[IpAddr]| match ips {
            [] => "nothing".to_string(),
            _ => ips
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        };
        return Err(failed(format!(
            "IPAM store holds {} for this container, prevResult says {}",
            list(&held),
            list(&named)
        )));
    }
    Ok(())
}

async fn check_pod_routes<N: Family>(
    pod: &Netlink,
    gateway: N::Addr,
    oif: u32,
) -> Result<(), CniError>
where
    N::Addr: Into<N>,
{
    let routes = pod.routes_of::<N>().await?;
    let has = |dst: N, gw: Option<N::Addr>| {
        routes
            .iter()
            .any(|r| r.dst == dst && r.gateway == gw && r.oif == Some(oif))
    };
    if !has(gateway.into(), None) {
        return Err(failed(format!(
            "pod route to the gateway {gateway} is missing"
        )));
    }
    if !has(RouteOf::<N>::default_dst(), Some(gateway)) {
        return Err(failed(format!(
            "pod default route via {gateway} is missing"
        )));
    }
    Ok(())
}

async fn check_host_route<N: Family>(
    node: &Netlink,
    ip: N::Addr,
    index: u32,
) -> Result<(), CniError>
where
    N::Addr: Into<N>,
{
    let dst: N = ip.into();
    if node
        .routes_of::<N>()
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
