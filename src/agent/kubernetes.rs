//! The node list from the Kubernetes API: a kube-rs watcher on Nodes, and, for NetworkPolicy,
//! watchers on NetworkPolicies, Namespaces and all Pods (peer selectors need every pod's IP
//! and labels, cluster-wide). In a real cluster the API server is the store; flatnet keeps
//! none of its own.
//!
//! The watcher lists, then watches from the list's resource version; on a dropped watch it
//! resumes, and on `410 Gone` (the version was compacted away) it lists again. API errors come
//! out of the stream as items: they are logged and the watcher retries with back-off, so the
//! agent keeps its last known list (and its working routes) meanwhile. A relist replaces the
//! list whole, only once complete, so a node is never dropped half-way through one. The other
//! three kinds follow the same rules, and the source answers only once every kind has been
//! listed: enforcing policies before all pods are known would drop traffic they admit, and
//! enforcing none before the policies are known would open isolated pods.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{self as k8s_events, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use kube::{Api, Client};
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::policy::model::{NamedPort, Protocol};
use super::policy::{NamespaceInfo, Objects, PodInfo, Record};
use super::{NodeSource, Refusal};
use crate::registry::{namespaced_key, Listed, NodeRecord};

/// How long the agent waits for the API server to take an Event before it gives up on it.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The Node annotation that publishes its node IPs with their links' prefix lengths
/// (`172.18.1.2/16`, comma-separated for two families), written by each node's own agent:
/// peers decide direct or tunnel with it (see `overlay`).
pub const NETWORK_ANNOTATION: &str = "flatnet.io/node-network";
/// How soon the agent tries again to annotate its Node with a value it already sent.
const ANNOTATE_RETRY: Duration = Duration::from_secs(60);

type Events = Pin<Box<dyn Stream<Item = Result<Event<Node>, watcher::Error>> + Send>>;
/// The key of an object, and what the agent keeps of it (None: nothing, as if absent).
type Read<K, T> = fn(&K) -> (String, Option<Result<T, String>>);
type EventsOf<K> = Pin<Box<dyn Stream<Item = Result<Event<K>, watcher::Error>> + Send>>;

/// One kind's watcher and its complete view, by key; `T` is what the agent keeps of a `K`.
struct Store<K, T> {
    events: EventsOf<K>,
    items: BTreeMap<String, Record<T>>,
    relist: Option<BTreeMap<String, Record<T>>>,
    listed: bool,
    read: Read<K, T>,
}

impl<K, T> Store<K, T>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    fn new(api: Api<K>, read: Read<K, T>) -> Store<K, T> {
        Store {
            events: Box::pin(watcher::watcher(api, watcher::Config::default()).default_backoff()),
            items: BTreeMap::new(),
            relist: None,
            listed: false,
            read,
        }
    }

    /// Applies one event as the node watcher does; true if the complete view may have
    /// changed.
    fn apply(&mut self, event: Event<K>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                let (key, value) = (self.read)(&obj);
                if let (Some(buf), Some(value)) = (self.relist.as_mut(), value) {
                    buf.insert(key.clone(), Record { key, value });
                }
                false
            }
            Event::InitDone => {
                self.items = self.relist.take().unwrap_or_default();
                self.listed = true;
                true
            }
            Event::Apply(obj) => {
                match (self.read)(&obj) {
                    (key, Some(value)) => self.items.insert(key.clone(), Record { key, value }),
                    (key, None) => self.items.remove(&key),
                };
                self.listed
            }
            Event::Delete(obj) => {
                self.items.remove(&(self.read)(&obj).0);
                self.listed
            }
        }
    }

    fn records(&self) -> Vec<Record<T>>
    where
        T: Clone,
    {
        self.items.values().cloned().collect()
    }
}

/// What NetworkPolicy needs: the three watchers.
struct PolicyStores {
    pods: Store<Pod, PodInfo>,
    namespaces: Store<Namespace, NamespaceInfo>,
    policies: Store<NetworkPolicy, NetworkPolicy>,
}

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
    stores: PolicyStores,
    client: Client,
    /// The network value last sent in a patch of this node's annotation, and when.
    annotated: Option<(Vec<IpNetwork>, tokio::time::Instant)>,
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
        let stores = PolicyStores {
            pods: Store::new(Api::all(client.clone()), pod_info),
            namespaces: Store::new(Api::all(client.clone()), namespace_info),
            policies: Store::new(Api::all(client.clone()), policy),
        };
        let api: Api<Node> = Api::all(client.clone());
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
            stores,
            client,
            annotated: None,
        }
    }

    /// Whether every kind has been listed once.
    fn all_listed(&self) -> bool {
        self.listed
            && self.stores.pods.listed
            && self.stores.namespaces.listed
            && self.stores.policies.listed
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
            let listed = self.all_listed();
            let changed = tokio::select! {
                item = self.events.next() => match item {
                    Some(Ok(event)) => self.apply(event),
                    Some(Err(e)) => { warn!("watching nodes: {e}; retrying"); false }
                    None => return Err(io::Error::other("the node watch ended")),
                },
                item = self.stores.pods.events.next() => match item {
                    Some(Ok(event)) => self.stores.pods.apply(event),
                    Some(Err(e)) => { warn!("watching pods: {e}; retrying"); false }
                    None => return Err(io::Error::other("the pod watch ended")),
                },
                item = self.stores.namespaces.events.next() => match item {
                    Some(Ok(event)) => self.stores.namespaces.apply(event),
                    Some(Err(e)) => { warn!("watching namespaces: {e}; retrying"); false }
                    None => return Err(io::Error::other("the namespace watch ended")),
                },
                item = self.stores.policies.events.next() => match item {
                    Some(Ok(event)) => self.stores.policies.apply(event),
                    Some(Err(e)) => { warn!("watching networkpolicies: {e}; retrying"); false }
                    None => return Err(io::Error::other("the networkpolicy watch ended")),
                },
                // Until every first list is complete there is nothing to reconcile against.
                _ = self.resync.tick(), if listed => true,
            };
            if changed && self.all_listed() {
                break;
            }
        }
        self.resync.reset();
        Ok(self.nodes.values().cloned().collect())
    }

    fn objects(&self) -> Objects {
        Objects {
            pods: self.stores.pods.records(),
            namespaces: self.stores.namespaces.records(),
            policies: self.stores.policies.records(),
        }
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

    /// Annotates this node's Node with its networks (a merge patch of `nodes/status`, in the
    /// background, as the Events); each value is sent once a minute at most until the watch shows it, so a
    /// missing `patch` permission costs a line a minute.
    fn publish_networks(
        &mut self,
        node: &str,
        networks: &[IpNetwork],
    ) -> impl std::future::Future<Output = ()> + Send {
        let now = tokio::time::Instant::now();
        let recent = self
            .annotated
            .as_ref()
            .is_some_and(|(v, at)| v == networks && now.duration_since(*at) < ANNOTATE_RETRY);
        if !recent {
            self.annotated = Some((networks.to_vec(), now));
            let value = match networks {
                [] => serde_json::Value::Null,
                n => n
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
                    .into(),
            };
            let patch = serde_json::json!({"metadata": {"annotations": {NETWORK_ANNOTATION: value.clone()}}});
            let api: Api<Node> = Api::all(self.client.clone());
            let node = node.to_string();
            tokio::spawn(async move {
                // Through nodes/status, as flannel does: its RBAC grant cannot change a Node's
                // spec (taints, unschedulable), and the status strategy keeps metadata edits.
                let params = PatchParams::default();
                let patch = Patch::Merge(&patch);
                let sent = api.patch_status(&node, &params, &patch);
                match tokio::time::timeout(EVENT_TIMEOUT, sent).await {
                    Ok(Ok(_)) => {
                        info!(%value, "this node's network published: {NETWORK_ANNOTATION}")
                    }
                    Ok(Err(e)) => warn!(
                        "annotate this node with its network ({NETWORK_ANNOTATION}): {e}; \
                        until it is, its peers decide by their kernels' view alone"
                    ),
                    Err(_) => warn!("annotate this node with its network: timed out"),
                }
            });
        }
        std::future::ready(())
    }
}

/// A pod as policies see it: None for a pod that has no address of its own on the pod
/// network (not yet, no longer, or never: `hostNetwork`), which no policy can select or name.
pub fn pod_info(pod: &Pod) -> (String, Option<Result<PodInfo, String>>) {
    let meta = pod.meta();
    let name = meta.name.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_default();
    let key = namespaced_key(&namespace, &name);
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let finished = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    if spec.is_some_and(|s| s.host_network == Some(true)) || finished {
        return (key, None);
    }
    let texts: Vec<&String> = match status.and_then(|s| s.pod_ips.as_ref()) {
        Some(list) if !list.is_empty() => list.iter().map(|p| &p.ip).collect(),
        _ => status.and_then(|s| s.pod_ip.as_ref()).into_iter().collect(),
    };
    if texts.is_empty() {
        return (key, None);
    }
    let mut ips = Vec::new();
    for t in texts {
        match t.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(e) => return (key, Some(Err(format!("status.podIPs {t:?}: {e}")))),
        }
    }
    let ports = spec
        .into_iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone()?,
                port: u16::try_from(p.container_port).ok()?,
                protocol: Protocol::parse(p.protocol.as_deref().unwrap_or("TCP")).ok()?,
            })
        })
        .collect();
    let info = PodInfo {
        namespace,
        name,
        labels: meta.labels.clone().unwrap_or_default(),
        ips,
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        ports,
    };
    (key, Some(Ok(info)))
}

fn namespace_info(ns: &Namespace) -> (String, Option<Result<NamespaceInfo, String>>) {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let info = NamespaceInfo {
        name: name.clone(),
        labels: ns.metadata.labels.clone().unwrap_or_default(),
    };
    (name, Some(Ok(info)))
}

fn policy(np: &NetworkPolicy) -> (String, Option<Result<NetworkPolicy, String>>) {
    let key = namespaced_key(
        np.metadata.namespace.as_deref().unwrap_or_default(),
        np.metadata.name.as_deref().unwrap_or_default(),
    );
    (key, Some(Ok(np.clone())))
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
    let mut node_networks = Vec::new();
    let annotation = node.metadata.annotations.as_ref();
    if let Some(text) = annotation.and_then(|a| a.get(NETWORK_ANNOTATION)) {
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<IpNetwork>() {
                Ok(n) => node_networks.push(n),
                Err(e) => {
                    return unreadable(format!(
                        "annotation {NETWORK_ANNOTATION} {text:?}: {part:?} is not an address \
                         with a prefix length: {e}"
                    ))
                }
            }
        }
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
        node_networks,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: &str) -> Node {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_node_network_annotation_is_read_and_a_bad_one_is_unreadable() {
        let with = |value: &str| {
            node(&format!(
                r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"n",
                "annotations":{{"{NETWORK_ANNOTATION}":"{value}"}}}},
                "spec":{{"podCIDR":"10.244.2.0/24"}},
                "status":{{"addresses":[{{"type":"InternalIP","address":"172.18.1.4"}}]}}}}"#
            ))
        };
        let r = record(&with("172.18.1.4/16, fc00::4/64"))
            .unwrap()
            .record
            .unwrap();
        assert_eq!(
            r.node_networks,
            [
                "172.18.1.4/16".parse::<IpNetwork>().unwrap(),
                "fc00::4/64".parse().unwrap()
            ]
        );
        let bad = record(&with("172.18.1.4/99")).unwrap().record.unwrap_err();
        assert!(bad.contains(NETWORK_ANNOTATION), "{bad}");
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
                node_networks: Vec::new(),
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
    fn a_pod_is_its_addresses_labels_node_and_named_ports() {
        let p: Pod = serde_json::from_str(
            r#"{"metadata":{"name":"web","namespace":"shop","labels":{"app":"web"}},
            "spec":{"nodeName":"kind-worker","containers":[{"name":"c","ports":[
              {"name":"http","containerPort":8080},{"containerPort":9090},
              {"name":"dns","containerPort":53,"protocol":"UDP"}]}]},
            "status":{"phase":"Running","podIP":"10.244.1.5","podIPs":[{"ip":"10.244.1.5"},{"ip":"fd00:10:244:1::5"}]}}"#,
        )
        .unwrap();
        let (key, info) = pod_info(&p);
        assert_eq!(key, "shop_web");
        let info = info.unwrap().unwrap();
        assert_eq!(info.ips.len(), 2);
        assert_eq!(info.node, "kind-worker");
        assert_eq!(info.named_port("http", Protocol::Tcp), Some(8080));
        assert_eq!(info.named_port("dns", Protocol::Udp), Some(53));
        assert_eq!(info.ports.len(), 2, "a port without a name cannot be named");
        let mut host = p.clone();
        host.spec.as_mut().unwrap().host_network = Some(true);
        assert!(
            pod_info(&host).1.is_none(),
            "a host-network pod is not on the pod network"
        );
        let mut done = p.clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(
            pod_info(&done).1.is_none(),
            "a finished pod's address is released"
        );
        let mut bad = p;
        bad.status.as_mut().unwrap().pod_ips = Some(vec![k8s_openapi::api::core::v1::PodIP {
            ip: "10.244.1.500".into(),
        }]);
        assert!(pod_info(&bad).1.unwrap().is_err());
    }

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
            node_networks: Vec::new(),
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
            routes
                .into_iter()
                .map(|(c, n)| (c, n.gateway))
                .collect::<Vec<_>>(),
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
