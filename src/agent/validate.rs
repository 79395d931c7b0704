//! What the agent accepts from a node list. Every record is untrusted: a record is routed only
//! if it is whole, names itself as its source stores it, and claims pod CIDRs that are inside
//! the cluster CIDRs and nobody else's. Everything else is refused, with the reason, and never
//! costs a route that is already working.
//!
//! The rules, per record:
//! - it parses, and its name equals its key (the registry's file name, the Node's name) and
//!   is a DNS subdomain; no other record has the same name;
//! - it has one or two pod CIDRs, at most one per family (as `Node.spec.podCIDRs`), and one or
//!   two node IPs, at most one per family;
//! - each pod CIDR is a network address (no host bits), leaves the plugin room for pods, and
//!   lies inside the cluster CIDR of its family. The cluster CIDRs are checked against the
//!   node's own connected networks before any record, and node IPs must lie outside them, so a
//!   pod CIDR inside one can overlap neither the node network nor a node IP;
//! - each node IP is a unicast address outside the cluster CIDRs (a pod address as a gateway
//!   would make a pod a router).
//!
//! A pod CIDR is routed via the node IP of its family. A node with no address of that family
//! (an IPv6 route via an IPv4 next hop would need the kernel's RTA_VIA, and the peer would have
//! to forward IPv6 it received over IPv4 neighbours) is routed in its other family only, and the
//! family left out is reported.
//!
//! Between records: when pod CIDRs overlap (equal, or one inside the other), the record that
//! was created first keeps its ranges and every other is refused; records with no creation
//! time, or the same one, are all refused. The rule reads the list and nothing else, so every
//! node, restarted or not, new or old, reaches the same decision from the same list. It is the
//! order Kubernetes itself allocates in (the controller manager never hands out a range twice,
//! so an overlap is a record made or edited by someone else), and it never moves a working
//! range to a newcomer. Whoever can forge a creation time can rewrite the holder's record as
//! well, so trusting it gives nothing away. This node's own record is judged like any other:
//! if it loses, the agent waits and changes nothing.
//!
//! A record that cannot be read, or is refused on its own, is not a departure: the routes it
//! may have had stay (the routes are the last good state), and nothing new is added for it. A
//! route is kept for an unreadable record when no valid record explains it; for a refused
//! record when its gateway is that record's node IP. A kept route also blocks any record that
//! would overlap it, so a corrupted record cannot be used to hand its range to someone else. A
//! record that loses an overlap is decided against, not unreadable: its routes go.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::registry::{Listed, NodeRecord};

/// The longest IPv4 pod CIDR: the plugin needs a gateway and one pod beside the network and
/// broadcast addresses.
const MAX_PREFIX_V4: u8 = 30;
/// The longest IPv6 pod CIDR: the plugin needs a gateway and one pod beside the subnet-router
/// anycast address.
const MAX_PREFIX_V6: u8 = 126;

/// A record left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The key it is stored under (the registry's file name, the Node's name).
    pub record: String,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.record, self.reason)
    }
}

/// One of the agent's routes, of either family: `dst via gateway`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hop {
    pub dst: IpNetwork,
    pub gateway: IpAddr,
}

/// What a node list comes to, seen from one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// This node's own record, if it is valid.
    pub own: Option<NodeRecord>,
    /// The other nodes to route to.
    pub others: Vec<NodeRecord>,
    /// The records left out, and the families of accepted records that cannot be routed.
    pub refused: Vec<Refusal>,
    /// The agent's routes that stay although no accepted record wants them: they may be an
    /// unreadable or refused record's last good state.
    pub kept: Vec<Hop>,
}

/// Whether two networks of one family share an address.
pub fn overlap(a: IpNetwork, b: IpNetwork) -> bool {
    match (a, b) {
        (IpNetwork::V4(a), IpNetwork::V4(b)) => a.overlaps(b),
        (IpNetwork::V6(a), IpNetwork::V6(b)) => a.contains(b.network()) || b.contains(a.network()),
        _ => false,
    }
}

/// "IPv4" or "IPv6", for messages.
pub fn family(net: IpNetwork) -> &'static str {
    if net.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Whether `a` was created strictly before `b`; a record without a creation time is never
/// older than anything.
fn older(a: &NodeRecord, b: &NodeRecord) -> bool {
    match (a.created, b.created) {
        (Some(x), Some(y)) => x < y,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The first pair of overlapping pod CIDRs of `a` and `b`.
fn contested(a: &NodeRecord, b: &NodeRecord) -> Option<(IpNetwork, IpNetwork)> {
    a.pod_cidrs
        .iter()
        .flat_map(|x| b.pod_cidrs.iter().map(move |y| (*x, *y)))
        .find(|(x, y)| overlap(*x, *y))
}

/// Judges `listed` for node `own_name` in a cluster whose pod networks are `cluster` (at most
/// one per family), given the agent's routes installed now (`installed`: its own protocol, main
/// table, both families).
pub fn judge(
    own_name: &str,
    cluster: &[IpNetwork],
    listed: &[Listed],
    installed: &[Hop],
) -> Verdict {
    let mut refused = Vec::new();
    let mut refuse = |key: &str, reason: String| {
        refused.push(Refusal {
            record: key.to_string(),
            reason,
        })
    };
    let mut unreadable = false;
    let mut refused_ips: Vec<IpAddr> = Vec::new();
    let mut named: BTreeMap<&str, Vec<&NodeRecord>> = BTreeMap::new();
    for entry in listed {
        let r = match &entry.record {
            Ok(r) => r,
            Err(e) => {
                unreadable = true;
                refuse(&entry.key, format!("unreadable ({e}); its routes are kept"));
                continue;
            }
        };
        let problem = if r.name != entry.key {
            Some(format!(
                "its name {:?} is not its key {:?}",
                r.name, entry.key
            ))
        } else {
            record_problem(r, cluster)
        };
        match problem {
            Some(p) => {
                refused_ips.extend(&r.node_ips);
                refuse(&entry.key, p);
            }
            None => named.entry(r.name.as_str()).or_default().push(r),
        }
    }
    let mut candidates: Vec<&NodeRecord> = Vec::new();
    for (name, records) in named {
        if records.len() == 1 {
            candidates.push(records[0]);
        } else {
            let n = records.len();
            for r in records {
                refused_ips.extend(&r.node_ips);
                refuse(name, format!("{n} records are named {name:?}"));
            }
        }
    }

    // Overlaps: the oldest claim keeps its ranges.
    let mut winners: Vec<&NodeRecord> = Vec::new();
    for r in &candidates {
        let lost = candidates
            .iter()
            .filter(|s| s.name != r.name)
            .find_map(|s| contested(r, s).filter(|_| !older(r, s)).map(|c| (s, c)));
        match lost {
            None => winners.push(r),
            Some((s, (mine, theirs))) => {
                let why = if older(s, r) {
                    "which was created earlier and keeps it"
                } else {
                    "and neither was created earlier: both are refused"
                };
                refuse(
                    &r.name,
                    format!("pod CIDR {mine} overlaps {}'s {theirs}, {why}", s.name),
                );
            }
        }
    }

    let own = winners
        .iter()
        .find(|c| c.name == own_name)
        .map(|o| (*o).clone());
    // Routes that may be the last good state of a record that is unreadable or refused; never
    // one into this node's own pod CIDRs, which the plugin's pod routes need.
    let kept: Vec<Hop> = installed
        .iter()
        .filter(|route| {
            let (dst, gw) = (route.dst, route.gateway);
            if own
                .as_ref()
                .is_some_and(|o| o.pod_cidrs.iter().any(|c| overlap(*c, dst)))
            {
                return false;
            }
            let explained = candidates
                .iter()
                .any(|c| c.pod_cidrs.contains(&dst) && c.node_ips.contains(&gw));
            let readable_gateway = candidates.iter().any(|c| c.node_ips.contains(&gw));
            !explained && ((unreadable && !readable_gateway) || refused_ips.contains(&gw))
        })
        .copied()
        .collect();

    let mut others = Vec::new();
    for r in winners.iter().filter(|c| c.name != own_name) {
        let blocked = kept.iter().find_map(|k| {
            let dst = k.dst;
            r.pod_cidrs
                .iter()
                .find(|c| overlap(**c, dst))
                .map(|c| (c, dst))
        });
        if let Some((cidr, dst)) = blocked {
            refuse(
                &r.name,
                format!(
                    "pod CIDR {cidr} overlaps {dst}, routed here for a record that is unreadable or refused"
                ),
            );
            continue;
        }
        for cidr in r.pod_cidrs.iter().filter(|c| r.node_ip(**c).is_none()) {
            refuse(
                &r.name,
                format!(
                    "{} pod CIDR {cidr} is not routed: the node has no {} address",
                    family(*cidr),
                    family(*cidr)
                ),
            );
        }
        others.push((*r).clone());
    }
    Verdict {
        own,
        others,
        refused,
        kept,
    }
}

/// What is wrong with one record on its own, if anything.
fn record_problem(r: &NodeRecord, cluster: &[IpNetwork]) -> Option<String> {
    if !is_dns_subdomain(&r.name) {
        return Some(format!("its name {:?} is not a DNS subdomain", r.name));
    }
    if let Some(p) = one_per_family("pod CIDRs", &r.pod_cidrs, |c| c.is_ipv4()) {
        return Some(p);
    }
    if let Some(p) = one_per_family("node IPs", &r.node_ips, |ip| ip.is_ipv4()) {
        return Some(p);
    }
    for &cidr in &r.pod_cidrs {
        if cidr.network() != cidr.ip() {
            return Some(format!(
                "pod CIDR {cidr} has host bits set (the network is {})",
                cidr.network()
            ));
        }
        let max = if cidr.is_ipv4() {
            MAX_PREFIX_V4
        } else {
            MAX_PREFIX_V6
        };
        if cidr.prefix() > max {
            return Some(format!(
                "pod CIDR {cidr} is longer than /{max}: no room for pods"
            ));
        }
        match cluster.iter().find(|c| c.is_ipv4() == cidr.is_ipv4()) {
            None => {
                return Some(format!(
                    "pod CIDR {cidr} is {}, and the cluster has no {} pod network",
                    family(cidr),
                    family(cidr)
                ))
            }
            Some(c) if !(c.contains(cidr.network()) && c.prefix() <= cidr.prefix()) => {
                return Some(format!(
                    "pod CIDR {cidr} is not inside the cluster CIDR {c}"
                ))
            }
            Some(_) => {}
        }
    }
    for &ip in &r.node_ips {
        if !is_routable_unicast(ip) {
            return Some(format!("node IP {ip} is not a routable unicast address"));
        }
        if let Some(c) = cluster.iter().find(|c| c.contains(ip)) {
            return Some(format!(
                "node IP {ip} is inside the cluster CIDR {c}: a pod address cannot be a node's"
            ));
        }
    }
    node_networks_problem(r, cluster)
}

/// What is wrong with the node networks a record publishes, if anything: each is one of its
/// node IPs with the prefix length of its link, at most one per family, and its link holds
/// no pod address.
fn node_networks_problem(r: &NodeRecord, cluster: &[IpNetwork]) -> Option<String> {
    if !r.node_networks.is_empty() {
        if let Some(p) = one_per_family("node networks", &r.node_networks, |n| n.is_ipv4()) {
            return Some(p);
        }
    }
    for &net in &r.node_networks {
        if !r.node_ips.contains(&net.ip()) {
            return Some(format!(
                "node network {net} is not one of its node IPs with a prefix length"
            ));
        }
        if net.prefix() == 0 {
            return Some(format!(
                "node network {net} claims every address as on its link"
            ));
        }
        if let Some(c) = cluster.iter().find(|c| overlap(**c, net)) {
            return Some(format!("node network {net} overlaps the cluster CIDR {c}"));
        }
    }
    None
}

/// Why `items` is not one or two values of distinct families, if it is not.
fn one_per_family<T: std::fmt::Display>(
    what: &str,
    items: &[T],
    is_v4: impl Fn(&T) -> bool,
) -> Option<String> {
    let v4 = items.iter().filter(|i| is_v4(i)).count();
    let v6 = items.len() - v4;
    if items.is_empty() {
        Some(format!("it has no {what}"))
    } else if v4 > 1 || v6 > 1 {
        let list: Vec<String> = items.iter().map(ToString::to_string).collect();
        Some(format!(
            "its {what} {} are not one per family",
            list.join(", ")
        ))
    } else {
        None
    }
}

fn is_routable_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            !(ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_multicast()
                || ip.is_broadcast()
                || ip.is_link_local())
        }
        // fe80::/10 is link-local: a next hop that only means something on one link.
        IpAddr::V6(ip) => {
            !(ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_multicast()
                || ip.segments()[0] & 0xffc0 == 0xfe80
                || ip.to_ipv4_mapped().is_some())
        }
    }
}

/// A Kubernetes object name: lowercase letters, digits, '-' and '.', at most 253 bytes,
/// starting and ending with a letter or digit.
fn is_dns_subdomain(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 253
        && s.starts_with(ok)
        && s.ends_with(ok)
        && s.chars().all(|c| ok(c) || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::fixtures::dual;

    fn clusters() -> Vec<IpNetwork> {
        vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        ]
    }

    /// A node created at `created` (no creation time: 0).
    fn node(name: &str, ip: &str, cidr: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            node_ips: vec![ip.parse().unwrap()],
            pod_cidrs: vec![cidr.parse().unwrap()],
            created: Some(100),
            node_networks: Vec::new(),
        }
    }

    fn born(mut n: NodeRecord, created: Option<u64>) -> NodeRecord {
        n.created = created;
        n
    }

    fn cluster() -> Vec<NodeRecord> {
        vec![
            born(node("node-1", "172.18.0.2", "10.244.1.0/24"), Some(10)),
            born(node("node-2", "172.18.0.3", "10.244.2.0/24"), Some(11)),
            born(node("node-3", "172.18.0.4", "10.244.3.0/24"), Some(12)),
        ]
    }

    fn listed(nodes: &[NodeRecord]) -> Vec<Listed> {
        nodes.iter().cloned().map(Listed::valid).collect()
    }

    fn route(dst: &str, gw: &str) -> Hop {
        Hop {
            dst: dst.parse().unwrap(),
            gateway: gw.parse().unwrap(),
        }
    }

    /// The routes node-1's agent has once node-2 and node-3 are routed.
    fn settled() -> Vec<Hop> {
        vec![
            route("10.244.2.0/24", "172.18.0.3"),
            route("10.244.3.0/24", "172.18.0.4"),
        ]
    }

    fn judge1(list: &[Listed], installed: &[Hop]) -> Verdict {
        judge("node-1", &clusters(), list, installed)
    }

    fn names(v: &Verdict) -> Vec<&str> {
        v.others.iter().map(|n| n.name.as_str()).collect()
    }

    fn refused(v: &Verdict) -> Vec<&str> {
        v.refused.iter().map(|r| r.record.as_str()).collect()
    }

    #[test]
    fn a_sane_cluster_is_accepted_whole() {
        let v = judge1(&listed(&cluster()), &[]);
        assert_eq!(v.own, Some(cluster()[0].clone()));
        assert_eq!(names(&v), ["node-2", "node-3"]);
        assert!(v.refused.is_empty() && v.kept.is_empty(), "{v:?}");
    }

    #[test]
    fn a_dual_stack_cluster_is_accepted_whole() {
        let nodes = [dual("node-1", 1), dual("node-2", 2), dual("node-3", 3)];
        let v = judge1(&listed(&nodes), &[]);
        assert_eq!(v.own, Some(nodes[0].clone()));
        assert_eq!(names(&v), ["node-2", "node-3"]);
        assert!(v.refused.is_empty(), "{v:?}");
        // An IPv6-only cluster needs no IPv4 pod network.
        let v6: Vec<NodeRecord> = nodes
            .iter()
            .map(|n| NodeRecord {
                node_ips: vec![n.node_ips[1]],
                pod_cidrs: vec![n.pod_cidrs[1]],
                ..n.clone()
            })
            .collect();
        let v = judge("node-1", &clusters()[1..], &listed(&v6), &[]);
        assert_eq!(names(&v), ["node-2", "node-3"]);
        assert!(v.refused.is_empty(), "{v:?}");
    }

    #[test]
    fn bad_records_on_their_own_are_refused() {
        let mut nodes = cluster();
        for bad in [
            node("wide", "172.18.0.9", "128.0.0.0/1"),
            node("underlay", "172.18.0.9", "172.18.5.0/24"),
            node("hostbits", "172.18.0.9", "10.244.9.7/24"),
            node("tiny", "172.18.0.9", "10.244.9.0/31"),
            node("podip", "10.244.2.5", "10.244.9.0/24"),
            node("zero", "0.0.0.0", "10.244.9.0/24"),
            node("Upper", "172.18.0.9", "10.244.9.0/24"),
            node("v6-wide", "172.18.0.9", "fd00::/8"),
            node("v6-tiny", "172.18.0.9", "fd00:10:244:9::/127"),
            node("v6-hostbits", "172.18.0.9", "fd00:10:244:9::1/64"),
            node("v6-podip", "fd00:10:244:2::5", "10.244.9.0/24"),
            node("v6-linklocal", "fe80::1", "fd00:10:244:9::/64"),
            NodeRecord {
                pod_cidrs: vec![
                    "10.244.9.0/24".parse().unwrap(),
                    "10.244.10.0/24".parse().unwrap(),
                ],
                ..node("two-v4", "172.18.0.9", "10.244.9.0/24")
            },
            NodeRecord {
                pod_cidrs: vec![],
                ..node("no-cidr", "172.18.0.9", "10.244.9.0/24")
            },
        ] {
            nodes.push(bad);
        }
        let v = judge1(&listed(&nodes), &settled());
        assert_eq!(names(&v), ["node-2", "node-3"]);
        assert_eq!(
            refused(&v),
            [
                "wide",
                "underlay",
                "hostbits",
                "tiny",
                "podip",
                "zero",
                "Upper",
                "v6-wide",
                "v6-tiny",
                "v6-hostbits",
                "v6-podip",
                "v6-linklocal",
                "two-v4",
                "no-cidr"
            ]
        );
        let reason = |name: &str| {
            v.refused
                .iter()
                .find(|r| r.record == name)
                .map(|r| r.reason.clone())
                .unwrap_or_else(|| panic!("{name} was not refused: {v:?}"))
        };
        assert!(reason("wide").contains("not inside the cluster CIDR"));
        assert!(reason("podip").contains("inside the cluster CIDR"));
        assert!(reason("v6-podip").contains("inside the cluster CIDR"));
        assert!(reason("two-v4").contains("not one per family"));
        assert!(reason("no-cidr").contains("no pod CIDRs"));
        assert!(reason("v6-tiny").contains("no room"));
        assert!(reason("v6-linklocal").contains("not a routable unicast"));
        for name in [
            "underlay",
            "hostbits",
            "tiny",
            "zero",
            "Upper",
            "v6-wide",
            "v6-hostbits",
        ] {
            reason(name);
        }
        // An IPv6 pod CIDR in a cluster without an IPv6 pod network.
        let v = judge(
            "node-1",
            &clusters()[..1],
            &listed(&[cluster()[0].clone(), dual("node-2", 2)]),
            &[],
        );
        assert!(v.refused[0].reason.contains("no IPv6 pod network"), "{v:?}");
    }

    #[test]
    fn published_node_networks_must_be_its_node_ips_with_a_prefix() {
        let with = |name: &str, nets: &[&str]| NodeRecord {
            node_networks: nets.iter().map(|n| n.parse().unwrap()).collect(),
            ..node(name, "172.18.0.9", "10.244.9.0/24")
        };
        let mut nodes = cluster();
        nodes.extend([
            with("good", &["172.18.0.9/16"]),
            with("other-ip", &["172.18.0.8/16"]),
            with("everything", &["172.18.0.9/0"]),
            with("two-v4", &["172.18.0.9/16", "172.18.0.9/24"]),
            with("v6-not-its-own", &["fc00::9/64"]),
        ]);
        nodes.push(NodeRecord {
            node_ips: vec!["10.0.0.9".parse().unwrap()],
            ..with("over-pods", &["10.0.0.9/8"])
        });
        let v = judge1(&listed(&nodes), &settled());
        let mut accepted = names(&v);
        accepted.sort();
        assert_eq!(accepted, ["good", "node-2", "node-3"]);
        let reasons: Vec<(&str, &str)> = v
            .refused
            .iter()
            .map(|r| (r.record.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons.iter().map(|r| r.0).collect::<Vec<_>>(),
            [
                "other-ip",
                "everything",
                "two-v4",
                "v6-not-its-own",
                "over-pods"
            ]
        );
        assert!(
            reasons[0].1.contains("not one of its node IPs"),
            "{reasons:?}"
        );
        assert!(reasons[1].1.contains("every address"), "{reasons:?}");
        assert!(reasons[2].1.contains("not one per family"), "{reasons:?}");
        assert!(
            reasons[4].1.contains("overlaps the cluster CIDR"),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_name_that_is_not_its_key_is_refused_even_if_it_names_this_node() {
        let mut list = listed(&cluster());
        list.push(Listed {
            key: "evil".into(),
            record: Ok(node("node-1", "172.18.0.9", "10.244.9.0/24")),
        });
        let v = judge1(&list, &settled());
        assert_eq!(v.own, Some(cluster()[0].clone()));
        assert_eq!(refused(&v), ["evil"]);
    }

    #[test]
    fn of_overlapping_records_the_oldest_keeps_its_range() {
        let mut nodes = cluster();
        nodes.push(born(
            node("aaa-same", "172.18.0.9", "10.244.2.0/24"),
            Some(50),
        ));
        nodes.push(born(node("inside", "172.18.0.10", "10.244.3.128/25"), None));
        nodes.push(born(
            node("around", "172.18.0.11", "10.244.0.0/20"),
            Some(50),
        ));
        nodes.push(born(
            node("own-part", "172.18.0.12", "10.244.1.0/25"),
            Some(50),
        ));
        // Whatever this node has routed, and whatever order the source lists them in: the
        // verdict is the list's alone.
        for installed in [
            settled(),
            vec![],
            vec![route("10.244.2.0/24", "172.18.0.9")],
        ] {
            for reverse in [false, true] {
                let mut list = listed(&nodes);
                if reverse {
                    list.reverse();
                }
                let v = judge1(&list, &installed);
                assert_eq!(names(&v), ["node-2", "node-3"]);
                assert_eq!(v.own, Some(nodes[0].clone()));
                let mut r = refused(&v);
                r.sort();
                assert_eq!(r, ["aaa-same", "around", "inside", "own-part"]);
            }
        }
        // The same list seen from another node: the same winners.
        let v = judge("node-2", &clusters(), &listed(&nodes), &[]);
        assert_eq!(names(&v), ["node-1", "node-3"]);
        // An older claim on this node's own range wins here too: the agent waits.
        nodes.push(born(node("elder", "172.18.0.13", "10.244.1.0/24"), Some(1)));
        let v = judge1(&listed(&nodes), &settled());
        assert_eq!(v.own, None);
        assert!(v.refused.iter().any(|r| r.record == "node-1"
            && r.reason
                .contains("elder's 10.244.1.0/24, which was created earlier")));
    }

    #[test]
    fn overlaps_with_no_elder_refuse_every_side() {
        let mut nodes = cluster();
        nodes.push(born(
            node("node-4", "172.18.0.5", "10.244.4.0/24"),
            Some(60),
        ));
        nodes.push(born(node("aaa", "172.18.0.9", "10.244.4.0/24"), Some(60)));
        nodes.push(born(node("node-5", "172.18.0.6", "10.244.5.0/24"), None));
        nodes.push(born(node("zzz", "172.18.0.10", "10.244.5.128/25"), None));
        let v = judge1(&listed(&nodes), &settled());
        assert_eq!(names(&v), ["node-2", "node-3"]);
        let mut r = refused(&v);
        r.sort();
        assert_eq!(r, ["aaa", "node-4", "node-5", "zzz"]);
        assert!(v.refused[0].reason.contains("neither was created earlier"));
        // A route one of them had does not change that: it goes.
        let mut installed = settled();
        installed.push(route("10.244.4.0/24", "172.18.0.5"));
        let v = judge1(&listed(&nodes), &installed);
        assert_eq!(names(&v), ["node-2", "node-3"]);
        assert!(v.kept.is_empty(), "{v:?}");
    }

    #[test]
    fn overlaps_are_judged_per_family() {
        let mut nodes = vec![dual("node-1", 1), dual("node-2", 2), dual("node-3", 3)];
        // node-4's IPv4 range is its own, its IPv6 range node-2's: it loses both.
        let mut n4 = dual("node-4", 4);
        n4.pod_cidrs[1] = nodes[1].pod_cidrs[1];
        nodes.push(n4);
        let v = judge1(&listed(&nodes), &[]);
        assert_eq!(names(&v), ["node-2", "node-3"]);
        assert_eq!(refused(&v), ["node-4"]);
        assert!(v.refused[0].reason.contains("fd00:10:244:2::/64"), "{v:?}");
        // An IPv4 range equal in its digits to nothing IPv6: no contest across families.
        assert!(!overlap(
            "10.244.0.0/16".parse().unwrap(),
            "::/0".parse().unwrap()
        ));
    }

    #[test]
    fn a_family_without_a_node_address_is_reported_not_routed() {
        let mut n2 = dual("node-2", 2);
        n2.node_ips.truncate(1);
        let v = judge1(&listed(&[dual("node-1", 1), n2.clone()]), &[]);
        assert_eq!(v.others, vec![n2]);
        assert_eq!(refused(&v), ["node-2"]);
        assert!(v.refused[0]
            .reason
            .contains("IPv6 pod CIDR fd00:10:244:2::/64 is not routed"));
    }

    #[test]
    fn unreadable_and_refused_records_keep_their_routes_and_block_their_range() {
        let mut list = listed(&cluster());
        list[1].record = Err("EOF while parsing".into());
        let mut installed = settled();
        installed.push(route("10.244.9.0/24", "172.18.0.10"));
        // Never kept: a route into this node's own pod CIDR.
        installed.push(route("10.244.1.0/25", "172.18.0.11"));
        let v = judge1(&list, &installed);
        assert_eq!(names(&v), ["node-3"]);
        assert_eq!(
            v.kept,
            vec![
                route("10.244.2.0/24", "172.18.0.3"),
                route("10.244.9.0/24", "172.18.0.10")
            ]
        );
        // A newcomer for the unreadable record's range is refused, however old it says it is.
        list.push(Listed::valid(born(
            node("thief", "172.18.0.66", "10.244.2.0/24"),
            Some(0),
        )));
        let v = judge1(&list, &installed);
        assert_eq!(refused(&v), ["node-2", "thief"]);
        // A record made invalid keeps its route too (by its node IP); others go.
        let mut nodes = cluster();
        nodes[1].pod_cidrs = vec!["128.0.0.0/1".parse().unwrap()];
        let v = judge1(&listed(&nodes), &installed);
        assert_eq!(v.kept, vec![route("10.244.2.0/24", "172.18.0.3")]);
    }

    #[test]
    fn duplicate_names_are_all_refused() {
        let mut list = listed(&cluster());
        list.push(Listed {
            key: "node-3".into(),
            record: Ok(node("node-3", "172.18.0.9", "10.244.9.0/24")),
        });
        let v = judge1(&list, &settled());
        assert_eq!(names(&v), ["node-2"]);
        assert_eq!(refused(&v), ["node-3", "node-3"]);
    }
}
