//! The pods' gateway: per family the first address of the node's pod CIDR, held by the node
//! once, on its loopback [`LINK`], and by none of the host veths. Each pod reaches it through a
//! permanent neighbour entry that ADD writes in the pod (gateway → its host veth's MAC), so no
//! pod ever asks ARP or NDP for it, and the node answers none, whatever its `arp_ignore`.
//!
//! Why not on every host veth, as ptp puts it: the kernel keeps one address on N links as one
//! hash chain and one alias list of the local route, both of length N, and every add of it
//! walks them, so each ADD cost more the more pods the node had (BENCHMARKS.md, issue 23).
//! Traffic routed through the node never needed the gateway to be a local address; a pod that
//! talks to the gateway itself (ping, a node service) does, and gets the node.
//!
//! Why loopback and not a link of flatnet's own: every node has it, always up, and it carries
//! addresses of both families; a dummy device is not in every kernel (this project's CI
//! kernel has none). Being first in the kernel's device list, it also gives the node's own
//! connections to its pods the gateway as their source, as a gateway on the host veth did.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use tracing::info;

use crate::cni::error::code;
use crate::cni::CniError;
use crate::netlink::{mac_string, Link, Netlink};

/// The node's link that holds the gateways.
pub const LINK: &str = "lo";

/// Makes each gateway an address of the node, unless it is one already, wherever it sits (the
/// host veths of pods an older flatnet wired hold it too). One route lookup per family when
/// there is nothing to do. Concurrent ADDs may race here: the loser finds the address made,
/// which is success.
pub(super) async fn ensure(node: &Netlink, gateways: &[IpAddr]) -> Result<(), CniError> {
    let mut missing = Vec::new();
    for &gw in gateways {
        if !node.is_local(gw).await? {
            missing.push(gw);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let lo = node
        .link_by_name(LINK)
        .await?
        .ok_or_else(|| CniError::new(code::NETLINK, format!("the node has no {LINK}")))?;
    if !lo.up {
        node.set_up(lo.index).await?;
    }
    for gw in missing {
        match node.add_address(lo.index, IpNetwork::from(gw)).await {
            Ok(()) => info!(gateway = %gw, link = LINK, "the pods' gateway is on the node"),
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// CHECK's part: the node holds each gateway, and the pod's interface `pod_link` reaches each
/// through a permanent neighbour entry for the host veth's MAC.
pub(super) async fn check(
    node: &Netlink,
    pod: &Netlink,
    pod_link: &Link,
    host: &Link,
    gateways: &[IpAddr],
) -> Result<(), CniError> {
    let failed = |msg: String| CniError::new(code::CHECK_FAILED, msg);
    let mac = host
        .mac
        .ok_or_else(|| failed(format!("host interface {} has no MAC", host.name)))?;
    let neighbours = pod.neighbours(pod_link.index).await?;
    for &gw in gateways {
        if !node.is_local(gw).await? {
            return Err(failed(format!("the node does not hold the gateway {gw}")));
        }
        let entry = neighbours.iter().find(|n| n.dst == gw);
        if !entry.is_some_and(|n| n.permanent && n.mac == Some(mac)) {
            return Err(failed(format!(
                "the pod's neighbour entry for the gateway {gw} is {}, not permanent {} (the \
                 host veth {})",
                entry.map_or("missing".into(), |n| format!(
                    "{}{}",
                    if n.permanent { "" } else { "not permanent, " },
                    n.mac.map_or("no MAC".into(), mac_string)
                )),
                mac_string(mac),
                host.name
            )));
        }
    }
    Ok(())
}
