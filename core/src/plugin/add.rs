//! ADD: reserve an address, make the veth pair with its pod end born in the pod's netns, address
//! and route both ends. On failure, undo what this call made, and only that; if the process
//! dies instead, the runtime's DEL finds everything by container ID and ifname.

use std::net::Ipv4Addr;

use ipnetwork::{IpNetwork, Ipv4Network};
use tracing::{info, warn};

use super::{host_veth_name, node_netlink, open_pod_netns, owner, pod_netlink};
use crate::cni::error::code;
use crate::cni::result::{Interface, IpConfig, RouteEntry};
use crate::cni::{CniError, CniResult, Env, NetConf};
use crate::crashpoint;
use crate::ipam::{Pool, Store};
use crate::netlink::{protocol, Link, Netlink, Route, VethSpec};
use crate::netns::{ensure_sysctl, NetNs};

pub(super) async fn add(env: &Env, conf: &NetConf) -> Result<CniResult, CniError> {
    let pod_ns = open_pod_netns(&env.netns)?;
    let node = node_netlink()?;
    let pod = pod_netlink(pod_ns.clone())?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);

    // Refuse before reserving anything, so a refusal changes nothing.
    refuse_conflicts(env, conf, &pod_ns, &node, &pod, &host_name).await?;
    let mtu = match conf.mtu {
        Some(m) => m,
        None => default_mtu(&node).await?,
    };

    let pool = Pool::new(conf.pod_cidr);
    let store = Store::open(conf.store_dir())?;
    let ip = store
        .lock(super::LOCK_TIMEOUT)?
        .reserve(&pool, &owner(env))?;
    info!(container = %env.container_id, ifname = %env.ifname, %ip, "reserved");
    crashpoint::hit("add:reserved");

    let wiring = Wiring {
        env,
        node: &node,
        pod: &pod,
        pod_ns: &pod_ns,
        host_name: &host_name,
        ip,
        gateway: pool.gateway(),
        mtu,
    };
    let mut made_veth = false;
    match wiring.wire(&mut made_veth).await {
        Ok(result) => Ok(result),
        Err(e) => {
            warn!(error = %e, "ADD failed; undoing");
            if made_veth {
                let _ = super::delete_host_veth(&node, &host_name).await;
            }
            if let Ok(mut locked) = store.lock(super::LOCK_TIMEOUT) {
                let _ = locked.release(&owner(env), Some(ip));
            }
            Err(e)
        }
    }
}

/// What would make this ADD wrong or fail half-way, checked while nothing is made yet.
async fn refuse_conflicts(
    env: &Env,
    conf: &NetConf,
    pod_ns: &NetNs,
    node: &Netlink,
    pod: &Netlink,
    host_name: &str,
) -> Result<(), CniError> {
    let node_ns = NetNs::current().map_err(|e| {
        CniError::new(code::IO_FAILURE, "cannot open the node's netns").with_details(e)
    })?;
    if pod_ns.same_as(&node_ns).unwrap_or(false) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_NETNS {} is the node's own network namespace, not a pod's",
                env.netns
            ),
        ));
    }
    if pod.link_by_name(&env.ifname).await?.is_some() {
        return Err(CniError::new(
            code::ALREADY_EXISTS,
            format!("interface {} already exists in {}", env.ifname, env.netns),
        ));
    }
    if node.link_by_name(host_name).await?.is_some() {
        return Err(CniError::new(
            code::ALREADY_EXISTS,
            format!(
                "host interface {host_name} for container {} {} already exists; DEL it first",
                env.container_id, env.ifname
            ),
        ));
    }
    // One flatnet interface per pod: a second would need a second default route. Whatever
    // holds the default route (flatnet on another ifname, or another plugin), it stays.
    if let Some(r) = pod.routes().await?.iter().find(|r| r.dst.prefix() == 0) {
        let dev = match r.oif {
            Some(i) => pod
                .link_by_index(i)
                .await?
                .map_or(format!("#{i}"), |l| l.name),
            None => "?".into(),
        };
        return Err(CniError::new(
            code::ALREADY_EXISTS,
            format!(
                "the pod already has a default route (dev {dev}); flatnet gives a pod one \
                 interface, and {} cannot be a second",
                env.ifname
            ),
        ));
    }
    let pool = Pool::new(conf.pod_cidr);
    if let Some((index, addr)) = node
        .all_addresses()
        .await?
        .into_iter()
        .find_map(|(i, a)| match a.ip() {
            std::net::IpAddr::V4(ip) if pool.contains(ip) => Some((i, ip)),
            _ => None,
        })
    {
        let dev = node
            .link_by_index(index)
            .await?
            .map_or(format!("#{index}"), |l| l.name);
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "invalid network config: podCIDR {} contains {addr}, an address of this node \
                 (on {dev}), which would be given to a pod",
                conf.pod_cidr
            ),
        ));
    }
    Ok(())
}

struct Wiring<'a> {
    env: &'a Env,
    node: &'a Netlink,
    pod: &'a Netlink,
    pod_ns: &'a NetNs,
    host_name: &'a str,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    mtu: u32,
}

impl Wiring<'_> {
    async fn wire(&self, made_veth: &mut bool) -> Result<CniResult, CniError> {
        let Wiring { env, node, pod, .. } = self;
        ensure_sysctl("net.ipv4.ip_forward", "1").map_err(|e| {
            CniError::new(code::IO_FAILURE, "cannot enable IPv4 forwarding").with_details(e)
        })?;

        node.create_veth(&VethSpec {
            name: self.host_name,
            peer_name: &env.ifname,
            peer_netns: self.pod_ns,
            mtu: self.mtu,
        })
        .await
        .map_err(|e| match e.errno() {
            Some(libc::EEXIST) => CniError::new(
                code::ALREADY_EXISTS,
                format!(
                    "interface {} or {} already exists",
                    env.ifname, self.host_name
                ),
            ),
            _ => e.into(),
        })?;
        *made_veth = true;
        crashpoint::hit("add:veth");

        let host = require(node.link_by_name(self.host_name).await?, self.host_name)?;
        node.add_address(host.index, Ipv4Network::from(self.gateway))
            .await?;
        crashpoint::hit("add:host-address");
        node.set_up(host.index).await?;
        crashpoint::hit("add:host-up");

        let cont = require(pod.link_by_name(&env.ifname).await?, &env.ifname)?;
        pod.add_address(cont.index, Ipv4Network::from(self.ip))
            .await?;
        crashpoint::hit("add:pod-address");
        pod.set_up(cont.index).await?;
        crashpoint::hit("add:pod-up");
        pod.add_route(&Route::via_link(
            Ipv4Network::from(self.gateway),
            cont.index,
            protocol::CNI,
        ))
        .await?;
        crashpoint::hit("add:pod-gateway-route");
        pod.add_route(&Route::via_gateway(
            Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("valid"),
            self.gateway,
            Some(cont.index),
            protocol::CNI,
        ))
        .await?;
        crashpoint::hit("add:pod-default-route");

        node.add_route(&Route::via_link(
            Ipv4Network::from(self.ip),
            host.index,
            protocol::CNI,
        ))
        .await?;
        crashpoint::hit("add:host-route");

        Ok(self.result(&host, &cont))
    }

    fn result(&self, host: &Link, cont: &Link) -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: host.name.clone(),
                    mac: host.mac_string(),
                    sandbox: None,
                    mtu: Some(self.mtu),
                },
                Interface {
                    name: cont.name.clone(),
                    mac: cont.mac_string(),
                    sandbox: Some(self.env.netns.clone()),
                    mtu: Some(self.mtu),
                },
            ],
            ips: vec![IpConfig {
                version: None,
                address: IpNetwork::V4(Ipv4Network::from(self.ip)),
                gateway: Some(self.gateway.into()),
                interface: Some(1),
            }],
            routes: vec![RouteEntry {
                dst: "0.0.0.0/0".parse().expect("valid"),
                gw: Some(self.gateway.into()),
            }],
            ..Default::default()
        }
    }
}

fn require(link: Option<Link>, name: &str) -> Result<Link, CniError> {
    link.ok_or_else(|| {
        CniError::new(
            code::NETLINK,
            format!("link {name} vanished after creation"),
        )
    })
}

/// The MTU of the node's default-route interface, else 1500.
async fn default_mtu(node: &Netlink) -> Result<u32, CniError> {
    let oif = node
        .routes()
        .await?
        .into_iter()
        .find_map(|r| (r.dst.prefix() == 0).then_some(r.oif).flatten());
    Ok(match oif {
        Some(i) => node.link_by_index(i).await?.map_or(1500, |l| l.mtu),
        None => 1500,
    })
}
