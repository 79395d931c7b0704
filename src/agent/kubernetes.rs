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
use std::net::Ipv4Addr;
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

/// The node as the agent routes to it: its InternalIP and its IPv4 pod CIDR. None if it has
/// not got both yet (a new node before the controller manager assigned its pod CIDR), or has
/// only IPv6 ones; a record that cannot be read if a pod CIDR is not a CIDR at all, so that the
/// agent refuses it (and keeps what it had) rather than take it for a node that left.
pub fn record(node: &Node) -> Option<Listed> {
    let name = node.metadata.name.clone()?;
    let node_ip = node
        .status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse::<Ipv4Addr>().ok());
    let spec = node.spec.as_ref();
    let cidrs: Vec<(String, &String)> = spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| (format!("spec.podCIDRs[{i}]"), c))
        .chain(
            spec.and_then(|s| s.pod_cidr.as_ref())
                .map(|c| ("spec.podCIDR".to_string(), c)),
        )
        .collect();
    let mut pod_cidr = None;
    for (field, text) in cidrs {
        match text.parse::<IpNetwork>() {
            Ok(IpNetwork::V4(v4)) => {
                pod_cidr.get_or_insert(v4);
            }
            Ok(IpNetwork::V6(_)) => {}
            Err(e) => {
                return Some(Listed {
                    key: name,
                    record: Err(format!("{field} {text:?} is not a CIDR: {e}")),
                })
            }
        }
    }
    match (node_ip, pod_cidr) {
        (Some(node_ip), Some(pod_cidr)) => Some(Listed::valid(NodeRecord {
            name,
            node_ip,
            pod_cidr,
        })),
        _ => {
            debug!(node = %name, "no InternalIP or no IPv4 pod CIDR yet; not routed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: &str) -> Node {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_node_is_its_internal_ip_and_ipv4_pod_cidr() {
        let n = node(
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"kind-worker"},
            "spec":{"podCIDR":"fd00:10:244:1::/64","podCIDRs":["fd00:10:244:1::/64","10.244.1.0/24"]},
            "status":{"addresses":[{"type":"Hostname","address":"kind-worker"},
            {"type":"InternalIP","address":"fc00:f853:ccd:e793::3"},
            {"type":"InternalIP","address":"172.18.0.3"}]}}"#,
        );
        assert_eq!(
            record(&n),
            Some(Listed::valid(NodeRecord {
                name: "kind-worker".into(),
                node_ip: "172.18.0.3".parse().unwrap(),
                pod_cidr: "10.244.1.0/24".parse().unwrap(),
            }))
        );
        let legacy = node(
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n"},"spec":{"podCIDR":"10.244.2.0/24"},
            "status":{"addresses":[{"type":"InternalIP","address":"172.18.0.4"}]}}"#,
        );
        assert_eq!(
            record(&legacy).unwrap().record.unwrap().pod_cidr,
            "10.244.2.0/24".parse().unwrap()
        );
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
    }

    /// What the agent makes of a node: the conflist of its own, a route to the others.
    #[test]
    fn a_node_becomes_a_conflist_and_a_route() {
        let n = node(
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"kind-worker"},
            "spec":{"podCIDRs":["10.244.1.0/24"]},
            "status":{"addresses":[{"type":"InternalIP","address":"172.18.0.3"}]}}"#,
        );
        let r = record(&n).unwrap().record.unwrap();
        let conflist = crate::agent::conflist::render(r.pod_cidr, "/run/flatnet/ipam", None, None);
        assert!(
            conflist.contains(r#""podCIDR":"10.244.1.0/24""#),
            "{conflist}"
        );
        let own = NodeRecord {
            name: "kind-control-plane".into(),
            node_ip: "172.18.0.2".parse().unwrap(),
            pod_cidr: "10.244.0.0/24".parse().unwrap(),
        };
        let verdict = crate::agent::validate::judge(
            &own.name,
            "10.244.0.0/16".parse().unwrap(),
            &[Listed::valid(own.clone()), Listed::valid(r)],
            &[],
        );
        let routes = crate::agent::reconcile::desired(&verdict.others);
        assert_eq!(
            routes.into_iter().collect::<Vec<_>>(),
            vec![(
                "10.244.1.0/24".parse().unwrap(),
                "172.18.0.3".parse().unwrap()
            )]
        );
    }
}
