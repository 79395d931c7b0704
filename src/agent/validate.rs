//! What the agent accepts from a node list. Every record is untrusted: a record is routed only
//! if it is whole, names itself as its source stores it, and claims a pod CIDR that is
//! inside the cluster CIDR and nobody else's. Everything else is refused, with the reason,
//! and never costs a route that is already working.
//!
//! The rules, per record:
//! - it parses, and its name equals its key (the registry's file name, the Node's name) and
//!   is a DNS subdomain; no other record has the same name;
//! - its pod CIDR is a network address (no host bits), at most a /30 (the plugin needs room),
//!   and inside the cluster CIDR. The cluster CIDR is checked against the node's own connected
//!   networks before any record, and node IPs must lie outside it, so a pod CIDR inside it can
//!   overlap neither the node network nor a node IP;
//! - its node IP is a unicast address outside the cluster CIDR (a pod address as a gateway
//!   would make a pod a router).
//!
//! Between records: pod CIDRs that overlap (equal, or one inside the other) are all refused,
//! unless exactly one of them is *established*: this node's own record (on its own node), or
//! one this node already routes, exactly (its CIDR via its node IP, the agent's protocol).
//! The established one keeps its CIDR and the others are refused. Why local state is safe
//! here: a route is installed only for a claim that had no rival in the list, so an
//! established route always predates the conflict; a newcomer can therefore never take over
//! a working route, on any node. Routes live in the kernel, not in the agent, so a restarted
//! agent decides exactly as before. The one node that can decide differently is one that has
//! no route yet (new, or rebooted) while the conflict is on: it routes the contested range to
//! nobody (fail closed) rather than guess, and never to the newcomer.
//!
//! A record that cannot be read, or is refused, is not a departure: the routes it may have
//! had stay (the routes are the last good state), and nothing new is added for it. A route
//! is kept for an unreadable record when no valid record explains it; for a refused record
//! when its gateway is that record's node IP. A kept route also blocks any record that would
//! overlap it, so a corrupted record cannot be used to hand its range to someone else.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::netlink::Route;
use crate::registry::{Listed, NodeRecord};

/// The largest prefix the plugin accepts for a pod CIDR.
const MAX_PREFIX: u8 = 30;

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

/// What a node list comes to, seen from one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// This node's own record, if it is valid.
    pub own: Option<NodeRecord>,
    /// The other nodes to route to.
    pub others: Vec<NodeRecord>,
    pub refused: Vec<Refusal>,
    /// The agent's routes that stay although no accepted record wants them: they may be an
    /// unreadable or refused record's last good state.
    pub kept: Vec<Route>,
}

/// Judges `listed` for node `own_name` in a cluster of `cluster`, given the agent's routes
/// installed now (`installed`: its own protocol, main table).
pub fn judge(
    own_name: &str,
    cluster: Ipv4Network,
    listed: &[Listed],
    installed: &[Route],
) -> Verdict {
    let mut refused = Vec::new();
    let mut refuse = |key: &str, reason: String| {
        refused.push(Refusal {
            record: key.to_string(),
            reason,
        })
    };
    let mut unreadable = false;
    let mut refused_ips: Vec<Ipv4Addr> = Vec::new();
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
                refused_ips.push(r.node_ip);
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
                refused_ips.push(r.node_ip);
                refuse(name, format!("{n} records are named {name:?}"));
            }
        }
    }

    let own = candidates
        .iter()
        .find(|c| c.name == own_name)
        .map(|o| (*o).clone());
    // Routes that may be the last good state of a record that is unreadable or refused; never
    // one into this node's own pod CIDR, which the plugin's pod routes need.
    let kept: Vec<Route> = installed
        .iter()
        .filter(|route| {
            let Some(gw) = route.gateway else {
                return false;
            };
            if own.as_ref().is_some_and(|o| o.pod_cidr.overlaps(route.dst)) {
                return false;
            }
            let explained = candidates
                .iter()
                .any(|c| c.pod_cidr == route.dst && c.node_ip == gw);
            let readable_gateway = candidates.iter().any(|c| c.node_ip == gw);
            !explained && ((unreadable && !readable_gateway) || refused_ips.contains(&gw))
        })
        .cloned()
        .collect();

    let established = |r: &NodeRecord| {
        r.name == own_name
            || installed
                .iter()
                .any(|i| i.dst == r.pod_cidr && i.gateway == Some(r.node_ip))
    };
    let mut others = Vec::new();
    // This node's own record always keeps its CIDR here: a route into it would compete with
    // the plugin's pod routes.
    for r in candidates.iter().filter(|c| c.name != own_name) {
        if let Some(k) = kept.iter().find(|k| k.dst.overlaps(r.pod_cidr)) {
            refuse(
                &r.name,
                format!(
                    "pod CIDR {} overlaps {}, routed here for a record that is unreadable or refused",
                    r.pod_cidr, k.dst
                ),
            );
            continue;
        }
        let rivals: Vec<&&NodeRecord> = candidates
            .iter()
            .filter(|s| s.name != r.name && s.pod_cidr.overlaps(r.pod_cidr))
            .collect();
        if let Some(holder) = rivals.iter().find(|s| established(s)) {
            refuse(
                &r.name,
                format!(
                    "pod CIDR {} overlaps {}'s {}, which is established and keeps it",
                    r.pod_cidr, holder.name, holder.pod_cidr
                ),
            );
            continue;
        }
        if let Some(rival) = rivals.first().filter(|_| !established(r)) {
            refuse(
                &r.name,
                format!(
                    "pod CIDR {} overlaps {}'s {}, and neither is established: both are refused",
                    r.pod_cidr, rival.name, rival.pod_cidr
                ),
            );
            continue;
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
fn record_problem(r: &NodeRecord, cluster: Ipv4Network) -> Option<String> {
    if !is_dns_subdomain(&r.name) {
        return Some(format!("its name {:?} is not a DNS subdomain", r.name));
    }
    let cidr = r.pod_cidr;
    if cidr.network() != cidr.ip() {
        return Some(format!(
            "pod CIDR {cidr} has host bits set (the network is {})",
            cidr.network()
        ));
    }
    if cidr.prefix() > MAX_PREFIX {
        return Some(format!(
            "pod CIDR {cidr} is longer than /{MAX_PREFIX}: no room for pods"
        ));
    }
    if !(cluster.contains(cidr.network()) && cluster.prefix() <= cidr.prefix()) {
        return Some(format!(
            "pod CIDR {cidr} is not inside the cluster CIDR {cluster}"
        ));
    }
    let ip = r.node_ip;
    if ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_link_local()
    {
        return Some(format!("node IP {ip} is not a routable unicast address"));
    }
    if cluster.contains(ip) {
        return Some(format!(
            "node IP {ip} is inside the cluster CIDR {cluster}: a pod address cannot be a node's"
        ));
    }
    None
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
    use crate::netlink::protocol;

    const CLUSTER: &str = "10.244.0.0/16";

    fn node(name: &str, ip: &str, cidr: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            node_ip: ip.parse().unwrap(),
            pod_cidr: cidr.parse().unwrap(),
        }
    }

    fn cluster() -> Vec<NodeRecord> {
        vec![
            node("node-1", "172.18.0.2", "10.244.1.0/24"),
            node("node-2", "172.18.0.3", "10.244.2.0/24"),
            node("node-3", "172.18.0.4", "10.244.3.0/24"),
        ]
    }

    fn listed(nodes: &[NodeRecord]) -> Vec<Listed> {
        nodes.iter().cloned().map(Listed::valid).collect()
    }

    fn route(dst: &str, gw: &str) -> Route {
        Route::via_gateway(
            dst.parse().unwrap(),
            gw.parse().unwrap(),
            None,
            protocol::AGENT,
        )
    }

    /// The routes node-1's agent has once node-2 and node-3 are routed.
    fn settled() -> Vec<Route> {
        vec![
            route("10.244.2.0/24", "172.18.0.3"),
            route("10.244.3.0/24", "172.18.0.4"),
        ]
    }

    fn judge1(list: &[Listed], installed: &[Route]) -> Verdict {
        judge("node-1", CLUSTER.parse().unwrap(), list, installed)
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
        ] {
            nodes.push(bad);
        }
        let v = judge1(&listed(&nodes), &settled());
        assert_eq!(names(&v), ["node-2", "node-3"]);
        assert_eq!(
            refused(&v),
            ["wide", "underlay", "hostbits", "tiny", "podip", "zero", "Upper"]
        );
        assert!(v.refused[0].reason.contains("not inside the cluster CIDR"));
        assert!(v.refused[4].reason.contains("inside the cluster CIDR"));
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
    fn overlaps_with_an_established_record_lose() {
        let mut nodes = cluster();
        nodes.push(node("aaa-same", "172.18.0.9", "10.244.2.0/24"));
        nodes.push(node("inside", "172.18.0.10", "10.244.3.128/25"));
        nodes.push(node("around", "172.18.0.11", "10.244.0.0/20"));
        nodes.push(node("own-part", "172.18.0.12", "10.244.1.0/25"));
        let v = judge1(&listed(&nodes), &settled());
        assert_eq!(names(&v), ["node-2", "node-3"]);
        assert_eq!(refused(&v), ["aaa-same", "around", "inside", "own-part"]);
        // Whatever order the source lists them in.
        let mut list = listed(&nodes);
        list.reverse();
        assert_eq!(judge1(&list, &settled()).others, v.others);
    }

    #[test]
    fn without_an_established_record_both_sides_are_refused() {
        let mut nodes = cluster();
        nodes.push(node("node-4", "172.18.0.5", "10.244.4.0/24"));
        nodes.push(node("aaa", "172.18.0.9", "10.244.4.0/24"));
        nodes.push(node("node-5", "172.18.0.6", "10.244.5.0/24"));
        nodes.push(node("zzz", "172.18.0.10", "10.244.5.128/25"));
        let v = judge1(&listed(&nodes), &settled());
        assert_eq!(names(&v), ["node-2", "node-3"]);
        assert_eq!(refused(&v), ["aaa", "node-4", "node-5", "zzz"]);
        // Once one is routed (it was alone when it came), it stays.
        let mut installed = settled();
        installed.push(route("10.244.4.0/24", "172.18.0.5"));
        let v = judge1(&listed(&nodes), &installed);
        assert_eq!(names(&v), ["node-2", "node-3", "node-4"]);
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
        // A newcomer for the unreadable record's range is refused.
        list.push(Listed::valid(node("thief", "172.18.0.66", "10.244.2.0/24")));
        let v = judge1(&list, &installed);
        assert_eq!(refused(&v), ["node-2", "thief"]);
        // A record made invalid keeps its route too (by its node IP); others go.
        let mut nodes = cluster();
        nodes[1].pod_cidr = "128.0.0.0/1".parse().unwrap();
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
