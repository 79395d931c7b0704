//! ADD: reserve an address per family, make sure the node holds the gateway, make the veth pair
//! with its pod end born in the pod's netns, address the pod end, point the pod's gateway at
//! the host end's MAC, and route both ways. On failure, undo what this call made, and only that; if
//! the process dies instead, the runtime's DEL finds everything by container ID and ifname.
//!
//! IPv6 is wired like IPv4 (see the gateway model in the module docs of `plugin`), with what
//! makes an address usable the moment ADD returns: both ends get `accept_dad=0` and
//! `accept_ra=0` before they go up (so their link-local addresses are never tentative either,
//! and a pod cannot be given a route by an RA), and every address is added with IFA_F_NODAD.
//! The host veth keeps its link-local address: the kernel sources the neighbour solicitations
//! it sends for the pod's address from it.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use tracing::{info, warn};

use super::{
    forwarding, gateway, host_veth_name, leftovers, node_netlink, open_pod_netns, owner,
    pod_netlink,
};
use crate::cni::error::code;
use crate::cni::result::{Interface, IpConfig, RouteEntry};
use crate::cni::{CniError, CniResult, Env, NetConf};
use crate::crashpoint;
use crate::ipam::{FamilyPool, Store};
use crate::netlink::{protocol, Family, Link, Netlink, Packet, RouteOf, VethSpec, RETIRED};
use crate::netns::{ensure_sysctl, write_sysctls, NetNs};

pub(super) async fn add(env: &Env, conf: &NetConf) -> Result<CniResult, CniError> {
    let pod_ns = open_pod_netns(&env.netns)?;
    let node = node_netlink()?;
    let pod = pod_netlink(pod_ns.clone())?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);

    let store = Store::open(conf.store_dir())?;
    // Refuse before reserving anything, so a refusal changes nothing.
    refuse_conflicts(env, conf, &store, &pod_ns, &node, &pod, &host_name).await?;
    let mtu = match conf.mtu {
        Some(m) => m,
        None => default_mtu(&node).await?,
    };

    let pools = pools(conf);
    let ips = store
        .lock(super::LOCK_TIMEOUT)?
        .reserve(&pools, &owner(env))?;
    info!(container = %env.container_id, ifname = %env.ifname, ips = ?ips, "reserved");
    crashpoint::hit("add:reserved");

    let wiring = Wiring {
        env,
        node: &node,
        pod: &pod,
        pod_ns: &pod_ns,
        host_name: &host_name,
        families: pools
            .iter()
            .zip(&ips)
            .map(|(p, ip)| (*ip, p.gateway()))
            .collect(),
        mtu,
    };
    let mut made_veth = false;
    let wired = match refuse_node_addresses(&node, &pools, &ips).await {
        Ok(()) => wiring.wire(&mut made_veth).await,
        Err(e) => Err(e),
    };
    match wired {
        Ok(result) => {
            leftovers::kick(&conf.store_dir());
            Ok(result)
        }
        Err(e) => {
            warn!(error = %e, "ADD failed; undoing");
            if made_veth {
                let _ = super::delete_host_veth(&node, &host_name).await;
            }
            if let Ok(mut locked) = store.lock(super::LOCK_TIMEOUT) {
                let _ = locked.release(&owner(env), &ips);
            }
            Err(e)
        }
    }
}

/// The node's pools, in its `podCIDRs` order.
pub(super) fn pools(conf: &NetConf) -> Vec<FamilyPool> {
    conf.pod_cidrs
        .iter()
        .copied()
        .map(FamilyPool::new)
        .collect()
}

/// What would make this ADD wrong or fail half-way, checked while nothing is made yet.
async fn refuse_conflicts(
    env: &Env,
    conf: &NetConf,
    store: &Store,
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
    // The name may be held by this attachment's own retired link (a DEL just before): it goes
    // now, with its pod end, before the pod is looked at.
    if let Some(link) = node.link_by_name(host_name).await? {
        if link.group != RETIRED || link.up {
            return Err(CniError::new(
                code::ALREADY_EXISTS,
                format!(
                    "host interface {host_name} for container {} {} already exists; DEL it first",
                    env.container_id, env.ifname
                ),
            ));
        }
        leftovers::sweep_now(&conf.store_dir()).map_err(|e| {
            CniError::new(
                code::NETLINK,
                format!("cannot delete the retired {host_name}"),
            )
            .with_details(e)
        })?;
    }
    if pod.link_by_name(&env.ifname).await?.is_some() {
        return Err(CniError::new(
            code::ALREADY_EXISTS,
            format!("interface {} already exists in {}", env.ifname, env.netns),
        ));
    }
    // One flatnet interface per pod: a second would need a second default route. Whatever
    // holds the default route of a family this ADD gives (flatnet on another ifname, or
    // another plugin), it stays. Only those families are asked for: a node booted without
    // IPv6 cannot even list IPv6 routes, and an IPv4-only ADD must work there.
    let pools = pools(conf);
    let mut v4_default = None;
    let mut v6_default = None;
    if pools.iter().any(|p| !p.is_v6()) {
        v4_default = pod
            .routes()
            .await?
            .into_iter()
            .find(|r| r.dst.prefix() == 0);
    }
    if pools.iter().any(FamilyPool::is_v6) {
        v6_default = pod
            .routes6()
            .await?
            .into_iter()
            .find(|r| r.dst.prefix() == 0);
    }
    if let Some(oif) = v4_default.map(|r| r.oif).or(v6_default.map(|r| r.oif)) {
        let dev = match oif {
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
    // The whole pod CIDR against every address of the node, on its first pod, where a
    // misconfigured node is found before any pod runs. Not at every ADD: the node's address
    // list grows with the pods (each IPv6 host veth's link-local address; each host veth's
    // gateway too, before the gateway moved to loopback), and reading it cost milliseconds per
    // ADD at a thousand pods. Later ADDs check the addresses they reserve, one route lookup
    // each (`refuse_node_addresses`).
    if store.is_empty()? {
        if let Some((index, addr, pool)) = node_address_in(node, &pools).await? {
            return Err(holds_node_address(node, Some(index), addr, pool).await);
        }
    }
    Ok(())
}

/// A node address that IPAM could hand out (the gateway is not one): its link, the address and
/// the pool it is in.
async fn node_address_in<'p>(
    node: &Netlink,
    pools: &'p [FamilyPool],
) -> Result<Option<(u32, IpAddr, &'p FamilyPool)>, CniError> {
    Ok(node.all_addresses().await?.into_iter().find_map(|(i, a)| {
        let pool = pools.iter().find(|p| p.contains(a.ip()))?;
        Some((i, a.ip(), pool))
    }))
}

async fn holds_node_address(
    node: &Netlink,
    index: Option<u32>,
    addr: IpAddr,
    pool: &FamilyPool,
) -> CniError {
    let dev = match index {
        Some(i) => match node.link_by_index(i).await {
            Ok(Some(l)) => l.name,
            _ => format!("#{i}"),
        },
        None => "?".into(),
    };
    CniError::new(
        code::INVALID_CONFIG,
        format!(
            "invalid network config: podCIDR {} contains {addr}, an address of this node \
             (on {dev}), which would be given to a pod",
            pool.cidr()
        ),
    )
}

/// Refuses, with the same error as [`refuse_conflicts`], an address just reserved that the
/// node itself holds (added to a link after the node's first pod): one route lookup each.
async fn refuse_node_addresses(
    node: &Netlink,
    pools: &[FamilyPool],
    ips: &[IpAddr],
) -> Result<(), CniError> {
    for (&ip, pool) in ips.iter().zip(pools) {
        if node.is_local(ip).await? {
            // Only now is the address list read, to name the link.
            let index = node
                .all_addresses()
                .await?
                .into_iter()
                .find_map(|(i, a)| (a.ip() == ip).then_some(i));
            return Err(holds_node_address(node, index, ip, pool).await);
        }
    }
    Ok(())
}

struct Wiring<'a> {
    env: &'a Env,
    node: &'a Netlink,
    pod: &'a Netlink,
    pod_ns: &'a NetNs,
    host_name: &'a str,
    /// Per family, in `podCIDRs` order: the pod's address and its gateway.
    families: Vec<(IpAddr, IpAddr)>,
    mtu: u32,
}

impl Wiring<'_> {
    fn has_v6(&self) -> bool {
        self.families.iter().any(|(ip, _)| ip.is_ipv6())
    }

    async fn wire(&self, made_veth: &mut bool) -> Result<CniResult, CniError> {
        let Wiring { env, node, pod, .. } = self;
        if self.families.iter().any(|(ip, _)| ip.is_ipv4()) {
            forwarding::enable_ipv4().map_err(|e| {
                CniError::new(code::IO_FAILURE, "cannot enable IPv4 forwarding").with_details(e)
            })?;
        }
        if self.has_v6() {
            forwarding::enable_ipv6().map_err(|e| {
                CniError::new(code::IO_FAILURE, "cannot enable IPv6 forwarding").with_details(e)
            })?;
        }

        let gateways: Vec<IpAddr> = self.families.iter().map(|&(_, gw)| gw).collect();
        gateway::ensure(node, &gateways).await?;

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
        let cont = require(pod.link_by_name(&env.ifname).await?, &env.ifname)?;
        if self.has_v6() {
            self.ipv6_sysctls()?;
        } else {
            self.host_end_without_ipv6()?;
        }
        node.set_up(host.index).await?;
        crashpoint::hit("add:host-up");

        for &(ip, _) in &self.families {
            pod.add_address(cont.index, IpNetwork::from(ip)).await?;
            crashpoint::hit("add:pod-address");
        }
        pod.set_up(cont.index).await?;
        crashpoint::hit("add:pod-up");
        let host_mac = host.mac.ok_or_else(|| {
            CniError::new(
                code::NETLINK,
                format!("host interface {} has no MAC", self.host_name),
            )
        })?;
        for &(_, gateway) in &self.families {
            pod.replace_neighbour(cont.index, gateway, host_mac).await?;
            crashpoint::hit("add:pod-neighbour");
            match gateway {
                IpAddr::V4(gw) => pod_routes::<Ipv4Network>(pod, gw, cont.index).await?,
                IpAddr::V6(gw) => pod_routes::<Ipv6Network>(pod, gw, cont.index).await?,
            }
        }

        for &(ip, _) in &self.families {
            match ip {
                IpAddr::V4(ip) => host_route::<Ipv4Network>(node, ip, host.index).await?,
                IpAddr::V6(ip) => host_route::<Ipv6Network>(node, ip, host.index).await?,
            }
            crashpoint::hit("add:host-route");
        }

        Ok(self.result(&host, &cont))
    }

    /// No DAD and no RAs on either end, written while both are still down: an address added
    /// later is usable at once, and the link-local addresses the kernel makes at link up are
    /// too. The pod end's are written inside the pod's namespace.
    fn ipv6_sysctls(&self) -> Result<(), CniError> {
        let sysctl_failed = |e: std::io::Error| {
            CniError::new(code::IO_FAILURE, "cannot set the IPv6 sysctls of the veth")
                .with_details(e)
        };
        // Slashed keys: an interface name may contain dots.
        for (key, value) in [("accept_dad", "0"), ("accept_ra", "0")] {
            ensure_sysctl(&format!("net/ipv6/conf/{}/{key}", self.host_name), value)
                .map_err(sysctl_failed)?;
        }
        let dad = format!("net/ipv6/conf/{}/accept_dad", self.env.ifname);
        let ra = format!("net/ipv6/conf/{}/accept_ra", self.env.ifname);
        write_sysctls(self.pod_ns, &[(dad.as_str(), "0"), (ra.as_str(), "0")])
            .map_err(sysctl_failed)
    }

    /// An IPv4-only attachment's host end gets no IPv6 at all, written while it is down. Not
    /// for its own sake: when the pod end comes up, the kernel would give the host end a
    /// link-local address, and its `fe80::/64` route joins one list with every other host
    /// veth's, walked at each insert (ADD grew by ~3 ms at 5,000 pods; BENCHMARKS.md). A node
    /// without IPv6 has no such key, which is fine.
    fn host_end_without_ipv6(&self) -> Result<(), CniError> {
        let path = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.host_name);
        match std::fs::write(&path, "1") {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CniError::new(
                code::IO_FAILURE,
                "cannot turn IPv6 off on the host veth",
            )
            .with_details(format!("write {path}: {e}"))),
            _ => Ok(()),
        }
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
            ips: self
                .families
                .iter()
                .map(|&(ip, gateway)| IpConfig {
                    version: None,
                    address: IpNetwork::from(ip),
                    gateway: Some(gateway),
                    interface: Some(1),
                })
                .collect(),
            routes: self
                .families
                .iter()
                .map(|&(ip, gateway)| RouteEntry {
                    dst: IpNetwork::new(unspecified(ip), 0).expect("a /0 is valid"),
                    gw: Some(gateway),
                })
                .collect(),
            ..Default::default()
        }
    }
}

fn unspecified(of: IpAddr) -> IpAddr {
    match of {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// In the pod: a link route to the gateway (it is in no on-link subnet) and the default route
/// through it. The gateway's neighbour entry, written before, makes both usable at once.
async fn pod_routes<N: Family>(pod: &Netlink, gateway: N::Addr, oif: u32) -> Result<(), CniError>
where
    N::Addr: Into<N>,
{
    pod.add_route(&RouteOf::<N>::via_link(gateway.into(), oif, protocol::CNI))
        .await?;
    crashpoint::hit("add:pod-gateway-route");
    pod.add_route(&RouteOf::<N>::via_gateway(
        RouteOf::<N>::default_dst(),
        gateway,
        Some(oif),
        protocol::CNI,
    ))
    .await?;
    crashpoint::hit("add:pod-default-route");
    Ok(())
}

/// On the node: the pod's address through its host veth.
async fn host_route<N: Family>(node: &Netlink, ip: N::Addr, oif: u32) -> Result<(), CniError>
where
    N::Addr: Into<N>,
{
    node.add_route(&RouteOf::<N>::via_link(ip.into(), oif, protocol::CNI))
        .await?;
    Ok(())
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
    // One route lookup, however many pod routes the node has (reading the table grows by one
    // /32 route per pod): an address of TEST-NET-1 (RFC 5737), which nothing routes, matches
    // the default route. Only if something routes that block is the table read.
    let probe = Packet {
        dst: Ipv4Addr::new(192, 0, 2, 1),
        src: None,
        iif: None,
    };
    let oif = match node.route_get(probe).await {
        Ok(m) if m.dst.prefix() == 0 => m.oif,
        Ok(_) => node
            .routes()
            .await?
            .into_iter()
            .find_map(|r| (r.dst.prefix() == 0).then_some(r.oif).flatten()),
        Err(e) if e.errno() == Some(libc::ENETUNREACH) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(match oif {
        Some(i) => node.link_by_index(i).await?.map_or(1500, |l| l.mtu),
        None => 1500,
    })
}
