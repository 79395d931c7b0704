//! What each CNI verb does. The `flatnet-cni` binary parses its input with [`crate::cni`] and
//! calls [`run`]; the plugin process runs in the node's network namespace, as runtimes exec it.
//!
//! Gateway model (routed, ptp-like, as kindnet and Calico route): the first address of the
//! node's pod CIDR is the gateway, an address of the node held once, on its loopback
//! ([`gateway`]). The pod has its own address as a /32, a permanent neighbour entry
//! for the gateway with its host veth's MAC, a link route to the gateway and a default route
//! through it; the node has a /32 route to the pod through the host veth, which carries no IPv4
//! address. No bridge, no proxy ARP, no NAT; even traffic between two pods of one node is routed
//! by the node. (ptp puts the gateway on every host veth instead; the kernel walks one list of
//! the links that hold an address at every add of it, so each ADD grew with the pods.)
//!
//! IPv6 follows the same picture: the first address of the node's IPv6 pod CIDR (e.g.
//! `fd00:10:244:1::1`) is the gateway, on the node's loopback as a /128; the pod has its /128, the
//! permanent neighbour entry, a route `<gw> dev eth0` and `default via <gw>`; the node routes
//! the pod's /128 through the veth. Why not a link-local gateway (`fe80::1`, as Calico does):
//! the same model for both families means one set of code paths, CHECKs and crash points; the
//! gateway is a real, routable address of the node, so `traceroute` shows it, a pod can ping
//! its gateway and reach the node by it; and a dual-stack pod's two routing tables read alike.
//! The host veth keeps its own link-local address: the neighbour solicitations the node sends
//! for the pod's address are sourced from it. A dual-stack pod gets one address of each family
//! on its one interface, in the node's `podCIDRs` order.

mod add;
mod check;
mod del;
mod forwarding;
mod gateway;
mod gc;
mod leftovers;
mod status;

use std::sync::Arc;
use std::time::Duration;

use crate::cni::config::Attachment;
use crate::cni::error::code;
use crate::cni::{CniError, Command, Env, NetConf};
use crate::ipam;
use crate::netlink::Netlink;
use crate::netns::NetNs;

pub use gateway::LINK as GATEWAY_LINK;

/// How long a call waits for the IPAM store's lock before answering "try again later" (11).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `cmd` and returns what goes on stdout (nothing for DEL, STATUS and GC).
pub async fn run(cmd: Command, env: &Env, conf: &NetConf) -> Result<Option<String>, CniError> {
    match cmd {
        Command::Add => add::add(env, conf)
            .await
            .map(|r| Some(r.to_json(&conf.cni_version))),
        Command::Del => del::del(env, conf).await.map(|_| None),
        Command::Check => check::check(env, conf).await.map(|_| None),
        Command::Status => status::status(conf).map(|_| None),
        Command::Gc => gc::gc(conf).await.map(|_| None),
        Command::Version => Ok(Some(crate::cni::version::version_info(&conf.cni_version))),
    }
}

/// The host end's name: derived from the container ID and ifname so that DEL and GC find it
/// without state, and at most 15 bytes (IFNAMSIZ - 1).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = crate::stable_hash::fnv1a(container_id.bytes().chain([0]).chain(ifname.bytes()));
    format!("flat{:011x}", h & 0x0fff_ffff_ffff)
}

/// Whether `name` is one [`host_veth_name`] can return: what a name read from a directory must
/// be before it is used.
fn host_veth_name_is_valid(name: &str) -> bool {
    name.len() == 15
        && name.strip_prefix("flat").is_some_and(|h| {
            h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

fn owner(env: &Env) -> Attachment {
    Attachment {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

fn open_pod_netns(path: &str) -> Result<Arc<NetNs>, CniError> {
    NetNs::open(path).map(Arc::new).map_err(|e| {
        CniError::new(code::INVALID_ENV, format!("CNI_NETNS {path} is not usable")).with_details(e)
    })
}

fn node_netlink() -> Result<Netlink, CniError> {
    Netlink::current()
        .map_err(|e| CniError::new(code::NETLINK, "cannot open a netlink socket").with_details(e))
}

fn pod_netlink(ns: Arc<NetNs>) -> Result<Netlink, CniError> {
    Netlink::in_netns(ns).map_err(|e| {
        CniError::new(
            code::NETLINK,
            "cannot open a netlink socket in the pod's netns",
        )
        .with_details(e)
    })
}

/// Deletes the host veth `name` if it exists. The kernel removes the routes through it and
/// the pod's end with it before the request returns, so afterwards nothing routes to the pod.
async fn delete_host_veth(node: &Netlink, name: &str) -> Result<(), CniError> {
    if let Some(link) = node.link_by_name(name).await? {
        node.delete_link(link.index).await?;
    }
    Ok(())
}

/// A kernel refusal is the plugin's 102, with the request and errno in the details.
impl From<crate::netlink::Error> for CniError {
    fn from(e: crate::netlink::Error) -> CniError {
        CniError::new(code::NETLINK, "netlink request failed").with_details(e)
    }
}

impl From<ipam::Error> for CniError {
    fn from(e: ipam::Error) -> CniError {
        let c = match &e {
            ipam::Error::LockTimeout(_) => code::TRY_AGAIN,
            ipam::Error::Exhausted(_) => code::POOL_EXHAUSTED,
            ipam::Error::AlreadyReserved { .. } => code::ALREADY_EXISTS,
            ipam::Error::Io { .. } => code::IO_FAILURE,
            ipam::Error::UnsupportedFormat { .. } => code::STORE,
        };
        CniError::new(c, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_short_stable_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a.len(), 15);
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(host_veth_name("ab", "ceth0"), host_veth_name("abc", "eth0"));
        assert!(host_veth_name_is_valid(&a));
        for bad in [
            "flat",
            "flat0123456789A",
            "eth0123456789ab",
            "flat0123456789ab",
            "../flat0123456",
        ] {
            assert!(!host_veth_name_is_valid(bad), "{bad}");
        }
    }
}
