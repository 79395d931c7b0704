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

/// What changed among the objects since a source last said: everything may have (a full
/// read), or only the records of a [`Delta`].
#[derive(Debug, Clone, PartialEq)]
pub enum Changes {
    All,
    Some(Delta),
}

/// Records changed since a source last said, each as read now: None when it went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub pods: Vec<(String, Option<Result<PodInfo, String>>)>,
    pub namespaces: Vec<(String, Option<Result<NamespaceInfo, String>>)>,
    pub policies: Vec<(String, Option<Result<NetworkPolicy, String>>)>,
}

impl Delta {
    /// Reads the records of the registry named by `keys`, one set per kind of
    /// [`crate::registry::Kind::ALL`], in that order.
    pub fn from_registry(
        reg: &crate::registry::Registry,
        keys: &[std::collections::BTreeSet<String>; 3],
    ) -> Delta {
        use crate::registry::Kind;
        fn read<T: serde::de::DeserializeOwned>(
            reg: &crate::registry::Registry,
            kind: Kind,
            keys: &std::collections::BTreeSet<String>,
        ) -> Vec<(String, Option<Result<T, String>>)> {
            keys.iter()
                .map(|k| (k.clone(), reg.object(kind, k)))
                .collect()
        }
        Delta {
            pods: read(reg, Kind::Pods, &keys[0]),
            namespaces: read(reg, Kind::Namespaces, &keys[1]),
            policies: read(reg, Kind::Policies, &keys[2]),
        }
    }

    /// Adds `later`, which wins over what this one says of the same record.
    pub fn extend(&mut self, later: Delta) {
        self.pods.extend(later.pods);
        self.namespaces.extend(later.namespaces);
        self.policies.extend(later.policies);
    }
}

impl Objects {
    /// Brings the records up to date with `delta`, keeping them sorted by key.
    pub fn apply(&mut self, delta: &Delta) {
        fn apply<T: Clone>(
            records: &mut Vec<Record<T>>,
            changes: &[(String, Option<Result<T, String>>)],
        ) {
            for (key, value) in changes {
                let at = records.binary_search_by(|r| r.key.as_str().cmp(key));
                match (at, value) {
                    (Ok(i), Some(v)) => records[i].value = v.clone(),
                    (Err(i), Some(v)) => records.insert(
                        i,
                        Record {
                            key: key.clone(),
                            value: v.clone(),
                        },
                    ),
                    (Ok(i), None) => {
                        records.remove(i);
                    }
                    (Err(_), None) => {}
                }
            }
        }
        apply(&mut self.pods, &delta.pods);
        apply(&mut self.namespaces, &delta.namespaces);
        apply(&mut self.policies, &delta.policies);
    }
}

/// Judges objects against the last good version of each, and keeps the view they make, so
/// that a change costs what it changed ([`Judge::update`]), not what the cluster holds.
#[derive(Debug, Default)]
pub struct Judge {
    view: View,
    /// The registry keys of `view`'s pods, namespaces and policies, index for index.
    keys: [Vec<String>; 3],
    /// Why each refused record of each kind is, by key.
    refused: [BTreeMap<String, String>; 3],
}

const KINDS: [&str; 3] = ["pod", "namespace", "networkpolicy"];

impl Judge {
    /// The view to enforce, and the records refused (each kept at its last good version).
    pub fn judge(&mut self, objects: &Objects) -> (View, Vec<Refusal>) {
        self.replace(objects);
        (self.view.clone(), self.refused())
    }

    /// Judges `objects`, the whole of them: a key no longer listed is gone. Returns whether
    /// the view changed.
    pub fn replace(&mut self, objects: &Objects) -> bool {
        fn whole<T: Clone>(
            known: (&[String], &BTreeMap<String, String>),
            listed: &[Record<T>],
        ) -> Vec<(String, Option<Result<T, String>>)> {
            let listed_keys: std::collections::BTreeSet<&str> =
                listed.iter().map(|r| r.key.as_str()).collect();
            let gone = known
                .0
                .iter()
                .chain(known.1.keys())
                .filter(|k| !listed_keys.contains(k.as_str()))
                .map(|k| (k.clone(), None));
            gone.chain(
                listed
                    .iter()
                    .map(|r| (r.key.clone(), Some(r.value.clone()))),
            )
            .collect()
        }
        let delta = Delta {
            pods: whole((&self.keys[0], &self.refused[0]), &objects.pods),
            namespaces: whole((&self.keys[1], &self.refused[1]), &objects.namespaces),
            policies: whole((&self.keys[2], &self.refused[2]), &objects.policies),
        };
        self.update(&delta)
    }

    /// Judges the records of `delta` alone, each against its last good version. Returns
    /// whether the view changed.
    pub fn update(&mut self, delta: &Delta) -> bool {
        let [pod_keys, ns_keys, policy_keys] = &mut self.keys;
        let [pod_refused, ns_refused, policy_refused] = &mut self.refused;
        let mut changed = false;
        for (key, value) in &delta.pods {
            changed |= keep(
                (pod_keys, &mut self.view.pods),
                pod_refused,
                key,
                value.as_ref(),
                |p: &PodInfo| p.validate().map(|()| p.clone()),
            );
        }
        for (key, value) in &delta.namespaces {
            changed |= keep(
                (ns_keys, &mut self.view.namespaces),
                ns_refused,
                key,
                value.as_ref(),
                |n: &NamespaceInfo| n.validate().map(|()| n.clone()),
            );
        }
        for (key, value) in &delta.policies {
            changed |= keep(
                (policy_keys, &mut self.view.policies),
                policy_refused,
                key,
                value.as_ref(),
                Policy::from_k8s,
            );
        }
        changed
    }

    /// The view to enforce.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The records refused, each kept at its last good version (if it had one).
    pub fn refused(&self) -> Vec<Refusal> {
        KINDS
            .iter()
            .zip(&self.refused)
            .flat_map(|(kind, refused)| {
                refused.iter().map(move |(key, reason)| Refusal {
                    record: format!("{kind}/{key}"),
                    reason: reason.clone(),
                })
            })
            .collect()
    }
}

/// Judges one record of a kind whose good versions are `good` (sorted by key, `keys` index
/// for index): valid, it replaces the last good version; refused, the last good version
/// stays; gone (None), so does its good version. Returns whether `good` changed.
fn keep<T, U: PartialEq>(
    (keys, good): (&mut Vec<String>, &mut Vec<U>),
    refused: &mut BTreeMap<String, String>,
    key: &str,
    value: Option<&Result<T, String>>,
    check: impl Fn(&T) -> Result<U, String>,
) -> bool {
    let at = keys.binary_search_by(|k| k.as_str().cmp(key));
    let Some(value) = value else {
        refused.remove(key);
        let Ok(i) = at else { return false };
        keys.remove(i);
        good.remove(i);
        return true;
    };
    match value.as_ref().map_err(Clone::clone).and_then(check) {
        Ok(v) => {
            refused.remove(key);
            match at {
                Ok(i) if good[i] == v => false,
                Ok(i) => {
                    good[i] = v;
                    true
                }
                Err(i) => {
                    keys.insert(i, key.to_string());
                    good.insert(i, v);
                    true
                }
            }
        }
        Err(reason) => {
            refused.insert(key.to_string(), reason);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, app: &str) -> Record<PodInfo> {
        Record {
            key: format!("default_{name}"),
            value: Ok(PodInfo {
                namespace: "default".into(),
                name: name.into(),
                labels: [("app".to_string(), app.to_string())].into(),
                ips: vec![],
                node: "node-1".into(),
                ports: vec![],
            }),
        }
    }

    fn bad(name: &str) -> Record<PodInfo> {
        Record {
            key: format!("default_{name}"),
            value: Err("unreadable".into()),
        }
    }

    fn objects(pods: Vec<Record<PodInfo>>) -> Objects {
        Objects {
            pods,
            ..Objects::default()
        }
    }

    /// Judging the records that changed gives what judging everything again gives: the same
    /// view, in the same order, and the same refusals, each bad record at its last good
    /// version.
    #[test]
    fn judging_a_delta_is_judging_everything_again() {
        let steps: Vec<Delta> = vec![
            Delta {
                pods: vec![
                    ("default_b".into(), Some(pod("b", "x").value)),
                    ("default_a".into(), Some(pod("a", "x").value)),
                    ("default_c".into(), Some(bad("c").value)),
                ],
                ..Delta::default()
            },
            // a relabelled, b broken (its last good version stays), d new.
            Delta {
                pods: vec![
                    ("default_a".into(), Some(pod("a", "y").value)),
                    ("default_b".into(), Some(bad("b").value)),
                    ("default_d".into(), Some(pod("d", "x").value)),
                ],
                ..Delta::default()
            },
            // a and the refused c go; b mended.
            Delta {
                pods: vec![
                    ("default_a".into(), None),
                    ("default_c".into(), None),
                    ("default_b".into(), Some(pod("b", "z").value)),
                ],
                ..Delta::default()
            },
        ];
        let mut incremental = Judge::default();
        let mut full = Judge::default();
        let mut records = Objects::default();
        for delta in &steps {
            records.apply(delta);
            incremental.update(delta);
            let (view, refused) = full.judge(&records);
            assert_eq!(incremental.view(), &view);
            assert_eq!(incremental.refused(), refused);
        }
        let names: Vec<_> = incremental
            .view()
            .pods
            .iter()
            .map(|p| (p.name.as_str(), p.labels["app"].as_str()))
            .collect();
        assert_eq!(names, [("b", "z"), ("d", "x")]);
        assert!(incremental.refused().is_empty());
    }

    #[test]
    fn a_bad_record_keeps_its_last_good_version_and_a_removed_one_goes() {
        let mut judge = Judge::default();
        assert!(judge.replace(&objects(vec![pod("a", "x"), bad("b")])));
        let refused = judge.refused();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].record, "pod/default_b");
        assert!(!judge.replace(&objects(vec![bad("a"), bad("b")])));
        assert_eq!(judge.view().pods.len(), 1);
        assert_eq!(judge.refused().len(), 2);
        assert!(judge.replace(&objects(vec![])));
        assert!(judge.view().pods.is_empty());
        assert!(judge.refused().is_empty());
        // Unchanged records change nothing.
        assert!(judge.replace(&objects(vec![pod("a", "x")])));
        assert!(!judge.update(&Delta {
            pods: vec![("default_a".into(), Some(pod("a", "x").value))],
            ..Delta::default()
        }));
    }
}
