//! NetworkPolicy, enforced in the kernel: the agent compiles the policies that select its
//! node's pods into chains of flatnet's nftables table ([`compile`]), written with the rest of
//! the table in one transaction, so there is never a moment where a new connection that both
//! the old and the new policies deny gets through. No user space is in the packet path.
//!
//! Connections already established when a change denies them are left alone, as
//! kube-network-policies does: the chain passes established and related packets before it
//! judges anything, and the agent deletes no conntrack entries. A change judges new
//! connections only (for UDP, a flow is new again once its conntrack entry times out).
//!
//! The objects come from the node source (the emulator's registry, or the API server), each
//! untrusted: a record that does not check out is refused with a log line and its last good
//! version (if any) stays in force, so a corrupted record can neither open an isolated pod nor
//! cut one off.

pub mod compile;
pub mod model;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use k8s_openapi::api::networking::v1::NetworkPolicy;

pub use model::{NamespaceInfo, PodInfo, Policy, View};

use super::Refusal;

/// The pod gateway of a pod CIDR (the address after the network one, as the plugin's IPAM
/// has it): the node's address as its pods see it.
pub fn gateway(pod_cidr: IpNetwork) -> IpAddr {
    match pod_cidr {
        IpNetwork::V4(n) => Ipv4Addr::from(u32::from(n.network()).wrapping_add(1)).into(),
        IpNetwork::V6(n) => Ipv6Addr::from(u128::from(n.network()).wrapping_add(1)).into(),
    }
}

/// One object as a source read it: the key it is stored under and the object, or why it
/// could not be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<T> {
    pub key: String,
    pub value: Result<T, String>,
}

/// Everything policies need, as read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Objects {
    pub pods: Vec<Record<PodInfo>>,
    pub namespaces: Vec<Record<NamespaceInfo>>,
    pub policies: Vec<Record<NetworkPolicy>>,
}

impl Objects {
    /// The objects of the emulator's registry, each as read.
    pub fn from_registry(reg: &crate::registry::Registry) -> std::io::Result<Objects> {
        use crate::registry::Kind;
        fn records<T: serde::de::DeserializeOwned>(
            reg: &crate::registry::Registry,
            kind: Kind,
        ) -> std::io::Result<Vec<Record<T>>> {
            Ok(reg
                .objects(kind)?
                .into_iter()
                .map(|(key, value)| Record { key, value })
                .collect())
        }
        Ok(Objects {
            pods: records(reg, Kind::Pods)?,
            namespaces: records(reg, Kind::Namespaces)?,
            policies: records(reg, Kind::Policies)?,
        })
    }
}

/// Judges objects against the last good version of each.
#[derive(Debug, Default)]
pub struct Judge {
    pods: BTreeMap<String, PodInfo>,
    namespaces: BTreeMap<String, NamespaceInfo>,
    policies: BTreeMap<String, Policy>,
}

impl Judge {
    /// The view to enforce, and the records refused (each kept at its last good version).
    pub fn judge(&mut self, objects: &Objects) -> (View, Vec<Refusal>) {
        let mut refused = Vec::new();
        keep(
            &mut self.pods,
            &objects.pods,
            "pod",
            |p: &PodInfo| p.validate().map(|()| p.clone()),
            &mut refused,
        );
        keep(
            &mut self.namespaces,
            &objects.namespaces,
            "namespace",
            |n: &NamespaceInfo| n.validate().map(|()| n.clone()),
            &mut refused,
        );
        keep(
            &mut self.policies,
            &objects.policies,
            "networkpolicy",
            Policy::from_k8s,
            &mut refused,
        );
        let view = View {
            pods: self.pods.values().cloned().collect(),
            namespaces: self.namespaces.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
        };
        (view, refused)
    }
}

/// Replaces `good` with the records listed: valid ones as read, refused ones at their last
/// good version; a key no longer listed is gone.
fn keep<T, U>(
    good: &mut BTreeMap<String, U>,
    listed: &[Record<T>],
    kind: &str,
    check: impl Fn(&T) -> Result<U, String>,
    refused: &mut Vec<Refusal>,
) {
    let mut next = BTreeMap::new();
    for r in listed {
        match r.value.as_ref().map_err(Clone::clone).and_then(&check) {
            Ok(v) => {
                next.insert(r.key.clone(), v);
            }
            Err(reason) => {
                refused.push(Refusal {
                    record: format!("{kind}/{}", r.key),
                    reason,
                });
                if let Some(old) = good.remove(&r.key) {
                    next.insert(r.key.clone(), old);
                }
            }
        }
    }
    *good = next;
}
