//! The neighbour and FDB entries of one tunnel device: one of each per tunnelled peer, put
//! back when deleted or changed, removed when the peer leaves or goes direct. Entries flatnet
//! did not make (a neighbour outside the cluster CIDRs, an FDB entry of a MAC flatnet does not
//! derive) are never touched.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use tracing::info;

use super::device::is_derived;
use super::Unroutable;
use crate::netlink::{self, mac_string, Netlink};

/// What one tunnelled pod CIDR needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub node: String,
    pub cidr: IpNetwork,
    pub vtep: IpAddr,
    pub mac: [u8; 6],
    pub remote: IpAddr,
}

/// `wanted` without the peers whose derived MAC another peer (or this node) already has:
/// possible only for hashed IPv6 addresses, and then neither peer could be told apart.
pub(super) fn without_collisions(
    local: IpAddr,
    wanted: &[Entry],
    unroutable: &mut Vec<Unroutable>,
) -> Vec<Entry> {
    let own = super::vtep_mac(local);
    let mut out: Vec<Entry> = Vec::new();
    for e in wanted {
        let clash = e.mac == own || out.iter().any(|o| o.mac == e.mac && o.remote != e.remote);
        if clash {
            unroutable.push(Unroutable {
                node: e.node.clone(),
                cidr: e.cidr,
                why: format!(
                    "its VTEP MAC {} (derived from {}) is another node's",
                    mac_string(e.mac),
                    e.remote
                ),
            });
        } else {
            out.push(e.clone());
        }
    }
    out
}

/// Brings the entries of device `index` to exactly `wanted`, leaving foreign ones alone.
pub(super) async fn ensure(
    netlink: &Netlink,
    index: u32,
    wanted: &[Entry],
    cluster_cidrs: &[IpNetwork],
    failures: &mut Vec<netlink::Error>,
) {
    let mut note = |r: Result<(), netlink::Error>| {
        if let Err(e) = r {
            failures.push(e);
        }
    };
    match netlink.neighbours(index).await {
        Ok(have) => {
            for e in wanted {
                let right = have
                    .iter()
                    .any(|n| n.dst == e.vtep && n.mac == Some(e.mac) && n.permanent);
                if !right {
                    note(netlink.replace_neighbour(index, e.vtep, e.mac).await);
                    info!(node = %e.node, vtep = %e.vtep, mac = %mac_string(e.mac), "neighbour entry set");
                }
            }
            for n in have.iter().filter(|n| {
                n.permanent
                    && cluster_cidrs.iter().any(|c| c.contains(n.dst))
                    && !wanted.iter().any(|e| e.vtep == n.dst)
            }) {
                note(netlink.delete_neighbour(index, n.dst).await);
                info!(vtep = %n.dst, "neighbour entry of a peer gone or direct deleted");
            }
        }
        Err(e) => note(Err(e)),
    }
    match netlink.fdb(index).await {
        Ok(have) => {
            let mut done = BTreeSet::new();
            for e in wanted {
                if !done.insert(e.mac) {
                    continue;
                }
                let mine: Vec<_> = have.iter().filter(|f| f.mac == e.mac).collect();
                let right = mine.len() == 1 && mine[0].dst == Some(e.remote) && mine[0].permanent;
                if !right {
                    note(netlink.replace_fdb(index, e.mac, e.remote).await);
                    info!(node = %e.node, mac = %mac_string(e.mac), dst = %e.remote, "fdb entry set");
                }
            }
            let stale: BTreeSet<[u8; 6]> = have
                .iter()
                .filter(|f| is_derived(f.mac) && !wanted.iter().any(|e| e.mac == f.mac))
                .map(|f| f.mac)
                .collect();
            for mac in stale {
                note(netlink.delete_fdb(index, mac).await);
                info!(mac = %mac_string(mac), "fdb entry of a peer gone or direct deleted");
            }
        }
        Err(e) => note(Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(node: &str, remote: &str, mac: [u8; 6]) -> Entry {
        Entry {
            node: node.into(),
            cidr: "10.244.2.0/24".parse().unwrap(),
            vtep: "10.244.2.0".parse().unwrap(),
            mac,
            remote: remote.parse().unwrap(),
        }
    }

    #[test]
    fn a_peer_whose_mac_is_taken_is_refused() {
        let mut refused = Vec::new();
        let m = [0x0e, 0xfb, 1, 2, 3, 4];
        let kept = without_collisions(
            "fc00::1".parse().unwrap(),
            &[
                entry("a", "fc00::2", m),
                entry("b", "fc00::3", m),
                entry("c", "fc00::4", [0x0e, 0xfb, 9, 9, 9, 9]),
            ],
            &mut refused,
        );
        assert_eq!(
            kept.iter().map(|e| e.node.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].node, "b");
    }
}
