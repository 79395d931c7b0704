//! The node list from the Kubernetes API: a kube-rs watcher on Nodes. In a real cluster the
//! API server is the store; flatnet keeps none of its own.
//!
//! The watcher lists, then watches from the list's resource version; on a dropped watch it
//! resumes, and on `410 Gone` (the version was compacted away) it lists again. API errors come
//! out of the stream as items: they are logged and the watcher retries with back-off, so the
//! agent keeps its last known list (and its working routes) meanwhile. A relist replaces the
//! list whole, only once complete, so a node is never dropped half-way through one.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::runtime::events::{self as k8s_events, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{debug, warn};

use super::{NodeSource, Refusal};
use crate::registry::{Listed, NodeRecord};

/// How long the agent waits for the API server to take an Event before it gives up on it.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

type Events = Pin<Box<dyn Stream<Item = Result<Event<Node>, watcher::Error>> + Send>>;

/// Nodes as the API server has them.
pub struct KubeSource {
    events: Events,
    /// The last complete view, by node name.
    nodes: BTreeMap<String, Listed>,
    /// Filled during a relist, swapped in at its end.
    relist: Option<BTreeMap<String, Listed>>,
    listed: bool,
    resync: Interval,
    /// Each Node's uid, so that an Event about it shows in `kubectl describe node`.
    uids: BTreeMap<String, String>,
    recorder: Recorder,
}

impl KubeSource {
    /// The Nodes, for the agent of node `node` (it reports its Events as that instance).
    /// Must be called inside a tokio runtime. `resync` must not be zero.
    pub fn new(client: Client, node: &str, resync: Duration) -> KubeSource {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "flatnet-agent".into(),
                instance: Some(node.to_string()),
            },
        );
        let api: Api<Node> = Api::all(client);
        let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
        let mut resync = tokio::time::interval(resync);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        KubeSource {
            events: Box::pin(events),
            nodes: BTreeMap::new(),
            relist: None,
            listed: false,
            resync,
            uids: BTreeMap::new(),
            recorder,
        }
    }

    fn remember_uid(&mut self, node: &Node) {
        if let (Some(name), Some(uid)) = (&node.metadata.name, &node.metadata.uid) {
            self.uids.insert(name.clone(), uid.clone());
        }
    }

    /// Applies one event; true if the complete view may have changed.
    fn apply(&mut self, event: Event<Node>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(node) => {
                self.remember_uid(&node);
                if let (Some(buf), Some(r)) = (self.relist.as_mut(), record(&node)) {
                    buf.insert(r.key.clone(), r);
                }
                false
            }
            Event::InitDone => {
                self.nodes = self.relist.take().unwrap_or_default();
                self.listed = true;
                true
            }
            Event::Apply(node) => {
                self.remember_uid(&node);
                let name = node.metadata.name.clone().unwrap_or_default();
                match record(&node) {
                    Some(r) => self.nodes.insert(name, r),
                    // A node that lost its IP or pod CIDR can no longer be routed to.
                    None => self.nodes.remove(&name),
                };
                self.listed
            }
            Event::Delete(node) => {
                self.nodes.remove(&node.metadata.name.unwrap_or_default());
                self.listed
            }
        }
    }
}

impl NodeSource for KubeSource {
    async fn next(&mut self) -> io::Result<Vec<Listed>> {
        loop {
            tokio::select! {
                item = self.events.next() => match item {
                    Some(Ok(event)) => {
                        if self.apply(event) {
                            break;
                        }
                    }
                    Some(Err(e)) => warn!("watching nodes: {e}; retrying"),
                    None => return Err(io::Error::other("the node watch ended")),
                },
                // Until the first list is complete there is nothing to reconcile against.
                _ = self.resync.tick(), if self.listed => break,
            }
        }
        self.resync.reset();
        Ok(self.nodes.values().cloned().collect())
    }

    /// A Warning Event on each newly refused Node (`kubectl describe node` shows it), posted
    /// in the background: a slow or forbidding API server must not hold up the routes.
    fn refused(&mut self, new: &[Refusal]) -> impl std::future::Future<Output = ()> + Send {
        for r in new {
            let reference = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(r.record.clone()),
                uid: self.uids.get(&r.record).cloned(),
                ..ObjectReference::default()
            };
            let event = k8s_events::Event {
                type_: EventType::Warning,
                reason: "NodeRecordRefused".into(),
                note: Some(r.reason.chars().take(1024).collect()),
                action: "Route".into(),
                secondary: None,
            };
            let recorder = self.recorder.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(EVENT_TIMEOUT, recorder.publish(&event, &reference))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(node = ?reference.name, "post an Event: {e}"),
                    Err(_) => warn!(node = ?reference.name, "post an Event: timed out"),
                }
            });
        }
        std::future::ready(())
    }
}

/// The node as the agent routes to it: its `InternalIP` addresses (the first of each family),
/// its pod CIDRs (`spec.podCIDRs`, else the older `spec.podCIDR`) and its creation time. None
/// if it has not got an address and a pod CIDR yet (a new node before the controller manager
/// assigned its range); a record that cannot be read if an address or a pod CIDR does not
/// parse, so that the agent refuses it (and keeps what it had) rather than take it for a node
/// that left. Whether the families make sense is for the agent to judge, as for any source.
pub fn record(node: &Node) -> Option<Listed> {
    let name = node.metadata.name.clone()?;
    let unreadable = |why: String| {
        Some(Listed {
            key: name.clone(),
            record: Err(why),
        })
    };
    let mut node_ips: Vec<IpAddr> = Vec::new();
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, a) in addresses.into_iter().flatten().enumerate() {
        if a.type_ != "InternalIP" {
            continue;
        }
        match a.address.parse::<IpAddr>() {
            Ok(ip) if !node_ips.iter().any(|n| n.is_ipv4() == ip.is_ipv4()) => node_ips.push(ip),
            Ok(_) => {}
            Err(e) => {
                return unreadable(format!(
                    "status.addresses[{i}] InternalIP {:?} is not an IP address: {e}",
                    a.address
                ))
            }
        }
    }
    let spec = node.spec.as_ref();
    let cidrs: Vec<(String, &String)> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("spec.podCIDRs[{i}]"), c))
            .collect(),
        _ => spec
            .and_then(|s| s.pod_cidr.as_ref())
            .map(|c| ("spec.podCIDR".to_string(), c))
            .into_iter()
            .collect(),
    };
    let mut pod_cidrs = Vec::new();
    for (field, text) in cidrs {
        match text.parse::<IpNetwork>() {
            Ok(c) => pod_cidrs.push(c),
            Err(e) => return unreadable(format!("{field} {text:?} is not a CIDR: {e}")),
        }
    }
    if node_ips.is_empty() || pod_cidrs.is_empty() {
        debug!(node = %name, "no InternalIP or no pod CIDR yet; not routed");
        return None;
    }
    let created = node
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| u64::try_from(t.0.as_second()).ok());
    Some(Listed::valid(NodeRecord {
        name,
        node_ips,
        pod_cidrs,
        created,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: &str) -> Node {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_node_is_its_internal_ips_pod_cidrs_and_creation_time() {
        let n = node(
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"kind-worker",
            "creationTimestamp":"2026-12-01T10:00:00Z"},
            "spec":{"podCIDR":"fd00:10:244:1::/64","podCIDRs":["fd00:10:244:1::/64","10.244.1.0/24"]},
            "status":{"addresses":[{"type":"Hostname","address":"kind-worker"},
            {"type":"InternalIP","address":"fc00:f853:ccd:e793::3"},
            {"type":"InternalIP","address":"fc00:f853:ccd:e793::4"},
            {"type":"InternalIP","address":"172.18.0.3"}]}}"#,
        );
        assert_eq!(
            record(&n),
            Some(Listed::valid(NodeRecord {
                name: "kind-worker".into(),
                node_ips: vec![
                    "fc00:f853:ccd:e793::3".parse().unwrap(),
                    "172.18.0.3".parse().unwrap()
                ],
                pod_cidrs: vec![
                    "fd00:10:244:1::/64".parse().unwrap(),
                    "10.244.1.0/24".parse().unwrap()
                ],
                created: Some(1_796_119_200),
            }))
        );
        let legacy = node(
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n"},"spec":{"podCIDR":"10.244.2.0/24"},
            "status":{"addresses":[{"type":"InternalIP","address":"172.18.0.4"}]}}"#,
        );
        let r = record(&legacy).unwrap().record.unwrap();
        assert_eq!(r.pod_cidrs, ["10.244.2.0/24".parse().unwrap()]);
        assert_eq!(r.created, None);
        let unassigned = node(
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n"},"spec":{},
            "status":{"addresses":[{"type":"InternalIP","address":"172.18.0.4"}]}}"#,
        );
        assert_eq!(record(&unassigned), None);
        let garbage = node(
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n"},"spec":{"podCIDRs":["10.244.2.0/24","10.244.x"]},
            "status":{"addresses":[{"type":"InternalIP","address":"172.18.0.4"}]}}"#,
        );
        let r = record(&garbage).unwrap();
        assert_eq!(r.key, "n");
        assert!(r.record.unwrap_err().contains("spec.podCIDRs[1]"));
        let bad_ip = node(
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n"},"spec":{"podCIDRs":["10.244.2.0/24"]},
            "status":{"addresses":[{"type":"InternalIP","address":"172.18.0.400"}]}}"#,
        );
        assert!(record(&bad_ip)
            .unwrap()
            .record
            .unwrap_err()
            .contains("status.addresses[0]"));
    }

    /// What the agent makes of a node: the conflist of its own, a route to the others.
    #[test]
    fn a_node_becomes_a_conflist_and_a_route() {
        let n = node(
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"kind-worker"},
            "spec":{"podCIDRs":["10.244.1.0/24","fd00:10:244:1::/64"]},
            "status":{"addresses":[{"type":"InternalIP","address":"172.18.0.3"},
            {"type":"InternalIP","address":"fc00:f853:ccd:e793::3"}]}}"#,
        );
        let r = record(&n).unwrap().record.unwrap();
        let conflist =
            crate::agent::conflist::render(&r.pod_cidrs, "/run/flatnet/ipam", None, None);
        assert!(
            conflist.contains(r#""podCIDRs":["10.244.1.0/24","fd00:10:244:1::/64"]"#),
            "{conflist}"
        );
        let own = NodeRecord {
            name: "kind-control-plane".into(),
            node_ips: vec![
                "172.18.0.2".parse().unwrap(),
                "fc00:f853:ccd:e793::2".parse().unwrap(),
            ],
            pod_cidrs: vec![
                "10.244.0.0/24".parse().unwrap(),
                "fd00:10:244::/64".parse().unwrap(),
            ],
            created: None,
        };
        let verdict = crate::agent::validate::judge(
            &own.name,
            &[
                "10.244.0.0/16".parse().unwrap(),
                "fd00:10:244::/56".parse().unwrap(),
            ],
            &[Listed::valid(own.clone()), Listed::valid(r)],
            &[],
        );
        let routes = crate::agent::reconcile::desired(&verdict.others);
        assert_eq!(
            routes.into_iter().collect::<Vec<_>>(),
            vec![
                (
                    "10.244.1.0/24".parse().unwrap(),
                    "172.18.0.3".parse().unwrap()
                ),
                (
                    "fd00:10:244:1::/64".parse().unwrap(),
                    "fc00:f853:ccd:e793::3".parse().unwrap()
                ),
            ]
        );
    }
}
