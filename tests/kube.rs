//! The agent's Kubernetes node source against a small fake API server on loopback: it serves
//! list and watch of real Node JSON (as the API server returns it; and of Pods, Namespaces and
//! NetworkPolicies, which the source also watches), replays events after a
//! resource version, drops watch connections, answers `410 Gone` for a compacted version and
//! fails requests with 500. The source must follow every change and survive all of it.
#![cfg(feature = "kubernetes")]

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flatnet::agent::kubernetes::KubeSource;
use flatnet::agent::{self, AgentConfig, NodeSource, Status};
use flatnet::netlink::Netlink;
use flatnet::registry::{Listed, NodeRecord};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

#[derive(Default)]
struct State {
    rv: u64,
    /// Objects by kind and key (namespace/name).
    nodes: BTreeMap<(String, String), Value>,
    /// Every event with its resource version, for watches that resume from one.
    log: Vec<(u64, Value)>,
    /// Watches from a version below this get 410 Gone.
    compacted_below: u64,
    /// Requests still to fail with 500.
    failures: u32,
    /// Events posted (events.k8s.io/v1), as sent.
    events: Vec<Value>,
}

#[derive(Clone)]
struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Events for open watches; "drop" closes them.
    tx: broadcast::Sender<Value>,
}

impl FakeApi {
    async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, _) = broadcast::channel(64);
        let api = FakeApi {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            tx,
        };
        let server = api.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(server.clone().handle(conn));
            }
        });
        api
    }

    fn event(&self, kind: &str, mut node: Value) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        node["metadata"]["resourceVersion"] = json!(rv.to_string());
        let name = key(&node);
        if kind == "DELETED" {
            st.nodes.remove(&name);
        } else {
            st.nodes.insert(name, node.clone());
        }
        let ev = json!({"type": kind, "object": node});
        st.log.push((rv, ev.clone()));
        let _ = self.tx.send(ev);
    }

    fn put(&self, node: Value) {
        let exists = self.state.lock().unwrap().nodes.contains_key(&key(&node));
        self.event(if exists { "MODIFIED" } else { "ADDED" }, node);
    }

    fn delete(&self, name: &str) {
        let node =
            self.state.lock().unwrap().nodes[&("Node".to_string(), format!("/{name}"))].clone();
        self.event("DELETED", node);
    }

    fn drop_watches(&self) {
        let _ = self.tx.send(json!("drop"));
    }

    /// Forgets history: a watch resuming from before now gets 410 Gone.
    fn compact(&self) {
        let mut st = self.state.lock().unwrap();
        st.compacted_below = st.rv + 1;
        st.log.clear();
    }

    fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap().events.clone()
    }

    fn fail_next(&self, n: u32) {
        self.state.lock().unwrap().failures = n;
    }

    async fn handle(self, mut conn: TcpStream) {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut body = head.split_off(end);
        let head = String::from_utf8_lossy(&head).into_owned();
        let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
        if head.starts_with("POST ") && target.starts_with("/apis/events.k8s.io/v1/namespaces/") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while body.len() < len {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => body.extend_from_slice(&buf[..n]),
                }
            }
            let event: Value = serde_json::from_slice(&body).unwrap_or_default();
            self.state.lock().unwrap().events.push(event.clone());
            let _ = respond(&mut conn, "201 Created", &event.to_string()).await;
            return;
        }
        // The agent annotating its own Node (a merge patch of nodes/status): only the
        // annotations are applied, as the agent sends nothing else.
        let status_of = target
            .strip_prefix("/api/v1/nodes/")
            .and_then(|t| t.split('?').next())
            .and_then(|t| t.strip_suffix("/status"))
            .map(str::to_string);
        if let (true, Some(name)) = (head.starts_with("PATCH "), status_of) {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while body.len() < len {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => body.extend_from_slice(&buf[..n]),
                }
            }
            let patch: Value = serde_json::from_slice(&body).unwrap_or_default();
            let found = self
                .state
                .lock()
                .unwrap()
                .nodes
                .get(&("Node".to_string(), format!("/{name}")))
                .cloned();
            let Some(mut node) = found else {
                let _ = respond(&mut conn, "404 Not Found", "{}").await;
                return;
            };
            for (k, v) in patch["metadata"]["annotations"]
                .as_object()
                .into_iter()
                .flatten()
            {
                let annotations = &mut node["metadata"]["annotations"];
                if v.is_null() {
                    if let Some(a) = annotations.as_object_mut() {
                        a.remove(k);
                    }
                } else {
                    annotations[k] = v.clone();
                }
            }
            self.put(node.clone());
            let _ = respond(&mut conn, "200 OK", &node.to_string()).await;
            return;
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let param = |k: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
        };
        let fail = {
            let mut st = self.state.lock().unwrap();
            let fail = st.failures > 0;
            st.failures = st.failures.saturating_sub(1);
            fail
        };
        if fail {
            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"etcd is sad","code":500}"#;
            let _ = respond(&mut conn, "500 Internal Server Error", body).await;
            return;
        }
        let kind = match path {
            "/api/v1/nodes" => "Node",
            "/api/v1/pods" => "Pod",
            "/api/v1/namespaces" => "Namespace",
            "/apis/networking.k8s.io/v1/networkpolicies" => "NetworkPolicy",
            _ => {
                let _ = respond(&mut conn, "404 Not Found", "{}").await;
                return;
            }
        };
        let of_kind = |ev: &Value| ev["object"]["kind"] == kind;
        if param("watch").as_deref() != Some("true") && param("watch").as_deref() != Some("1") {
            let body = {
                let st = self.state.lock().unwrap();
                json!({"apiVersion": "v1", "kind": format!("{kind}List"),
                    "metadata": {"resourceVersion": st.rv.to_string()},
                    "items": st.nodes.iter().filter(|((k, _), _)| k == kind).map(|(_, v)| v).collect::<Vec<_>>()})
                .to_string()
            };
            let _ = respond(&mut conn, "200 OK", &body).await;
            return;
        }
        let from: u64 = param("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (mut rx, replay, gone) = {
            let st = self.state.lock().unwrap();
            let rx = self.tx.subscribe();
            let replay: Vec<Value> = st
                .log
                .iter()
                .filter(|(rv, e)| *rv > from && of_kind(e))
                .map(|(_, e)| e.clone())
                .collect();
            (rx, replay, from < st.compacted_below)
        };
        if conn
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        if gone {
            let ev = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "Expired", "code": 410,
                "message": format!("too old resource version: {from}")}});
            let _ = chunk(&mut conn, &ev).await;
            let _ = conn.write_all(b"0\r\n\r\n").await;
            return;
        }
        for ev in replay {
            if chunk(&mut conn, &ev).await.is_err() {
                return;
            }
        }
        while let Ok(ev) = rx.recv().await {
            if ev == json!("drop") {
                return;
            }
            if of_kind(&ev) && chunk(&mut conn, &ev).await.is_err() {
                return;
            }
        }
    }
}

/// An object's key in the fake's store: its kind, and namespace/name.
fn key(obj: &Value) -> (String, String) {
    (
        obj["kind"].as_str().unwrap().to_string(),
        format!(
            "{}/{}",
            obj["metadata"]["namespace"].as_str().unwrap_or_default(),
            obj["metadata"]["name"].as_str().unwrap()
        ),
    )
}

async fn respond(conn: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(r.as_bytes()).await
}

async fn chunk(conn: &mut TcpStream, ev: &Value) -> std::io::Result<()> {
    let line = format!("{ev}\n");
    conn.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
        .await
}

/// A Node as the API server returns it (kind's, trimmed).
fn node(name: &str, ip: &str, pod_cidr: Option<&str>) -> Value {
    let mut spec = json!({"providerID": format!("kind://docker/kind/{name}")});
    if let Some(c) = pod_cidr {
        spec["podCIDR"] = json!(c);
        spec["podCIDRs"] = json!([c]);
    }
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": format!("uid-{name}"),
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "spec": spec,
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "nodeInfo": {"kubeletVersion": "v1.33.1", "containerRuntimeVersion": "containerd://2.1.1"}
        }
    })
}

/// `node` created `minutes` after the cluster: of two Nodes claiming one range, the older
/// keeps it.
fn born(mut node: Value, minutes: u32) -> Value {
    node["metadata"]["creationTimestamp"] = json!(format!("2026-12-01T10:{minutes:02}:00Z"));
    node
}

fn client(addr: SocketAddr) -> kube::Client {
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn records(listed: &[Listed]) -> Vec<NodeRecord> {
    listed
        .iter()
        .filter_map(|l| l.record.clone().ok())
        .collect()
}

fn names(nodes: &[NodeRecord]) -> Vec<&str> {
    nodes.iter().map(|n| n.name.as_str()).collect()
}

/// Calls `next` until `want` holds for the valid records of the list it returns.
async fn until(
    src: &mut KubeSource,
    what: &str,
    want: impl Fn(&[NodeRecord]) -> bool,
) -> Vec<NodeRecord> {
    records(&until_listed(src, what, |l| want(&records(l))).await)
}

/// Calls `next` until `want` holds for the whole list it returns.
async fn until_listed(
    src: &mut KubeSource,
    what: &str,
    want: impl Fn(&[Listed]) -> bool,
) -> Vec<Listed> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let nodes = tokio::time::timeout(left, src.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
            .unwrap();
        if want(&nodes) {
            return nodes;
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn follows_the_api_through_drops_410_and_errors() {
    let api = FakeApi::start().await;
    api.put(node(
        "kind-control-plane",
        "172.18.0.2",
        Some("10.244.0.0/24"),
    ));
    api.put(node("kind-worker", "172.18.0.3", Some("10.244.1.0/24")));
    // Not routable yet: no pod CIDR assigned.
    api.put(node("kind-worker2", "172.18.0.4", None));

    // A long resync: every answer after the first comes from the watch.
    let mut src = KubeSource::new(
        client(api.addr),
        "kind-control-plane",
        Duration::from_secs(3600),
    );
    let first = until(&mut src, "the initial list", |n| !n.is_empty()).await;
    assert_eq!(names(&first), ["kind-control-plane", "kind-worker"]);
    assert_eq!(first[1].node_ips, ["172.18.0.3".parse::<IpAddr>().unwrap()]);
    assert_eq!(first[1].pod_cidrs, ["10.244.1.0/24".parse().unwrap()]);

    // The controller manager assigns worker2's pod CIDR: it appears.
    api.put(node("kind-worker2", "172.18.0.4", Some("10.244.2.0/24")));
    until(&mut src, "worker2 routable", |n| n.len() == 3).await;

    // The watch drops; a node joins meanwhile: the watch resumes and replays it.
    api.drop_watches();
    api.put(node("kind-worker3", "172.18.0.5", Some("10.244.3.0/24")));
    until(&mut src, "worker3 after a dropped watch", |n| {
        names(n).contains(&"kind-worker3")
    })
    .await;

    // History is compacted and the watch drops: resuming gets 410 Gone, and a relist (the
    // API failing twice first) brings the source to the server's state, deletion included.
    api.compact();
    api.delete("kind-worker");
    api.fail_next(2);
    api.drop_watches();
    let after = until(&mut src, "the relist after 410", |n| {
        !names(n).contains(&"kind-worker")
    })
    .await;
    assert_eq!(
        names(&after),
        ["kind-control-plane", "kind-worker2", "kind-worker3"]
    );

    // A pod CIDR that changes is followed (the agent then moves the route).
    api.put(node("kind-worker3", "172.18.0.5", Some("10.244.9.0/24")));
    until(&mut src, "worker3's new pod CIDR", |n| {
        n.iter()
            .any(|r| r.name == "kind-worker3" && r.pod_cidrs == ["10.244.9.0/24".parse().unwrap()])
    })
    .await;
}

/// Before the first list completes there is nothing to answer with; a failing API delays it
/// without ending the source.
#[tokio::test(flavor = "current_thread")]
async fn waits_out_a_failing_api_at_start() {
    let api = FakeApi::start().await;
    api.put(node("n1", "172.18.0.2", Some("10.244.1.0/24")));
    api.fail_next(2);
    let mut src = KubeSource::new(
        client(api.addr),
        "kind-control-plane",
        Duration::from_millis(100),
    );
    let nodes = until(&mut src, "the first list", |n| !n.is_empty()).await;
    assert_eq!(names(&nodes), ["n1"]);
    // With a short resync and nothing changing, it keeps answering with the same list.
    assert_eq!(until(&mut src, "a resync", |_| true).await, nodes);
}

/// A node of the test: its own namespace on a private underlay (both ends of a veth inside it,
/// so 172.18.0.0/16 is connected and other nodes' IPs are valid gateways).
fn node_netns(tag: &str, ip: &str) -> common::TestNs {
    let ns = common::node_ns(tag);
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);
    ns.ip(&["addr", "add", &format!("{ip}/16"), "dev", "eth0"]);
    ns.ip(&["link", "set", "peer0", "up"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns
}

/// The agent's routes in `ns`, as `ip` prints them.
fn agent_routes(ns: &common::TestNs) -> Vec<String> {
    ns.ip(&["route", "show", "proto", "0x67"])
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

/// Each agent annotates its own Node with its link's prefix (`flatnet.io/node-network`), the
/// value its peers decide direct or tunnel with, and reads it back from the watch.
#[tokio::test(flavor = "current_thread")]
async fn the_agent_annotates_its_node_with_its_link_prefix() {
    let api = FakeApi::start().await;
    api.put(born(
        node("kind-control-plane", "172.18.0.2", Some("10.244.0.0/24")),
        0,
    ));
    api.put(born(
        node("kind-worker", "172.18.0.3", Some("10.244.1.0/24")),
        1,
    ));
    let dir = common::TempDir::new("kube-annotate");
    let cfg = AgentConfig {
        node_name: "kind-control-plane".into(),
        conf_dir: dir.path().join("net.d"),
        data_dir: dir.path().join("ipam"),
        mtu: None,
        cni_log_file: None,
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        status_file: None,
        overlay: Default::default(),
    };
    let ns = node_netns("kube-annotate", "172.18.0.2");
    let readiness = agent::Readiness::default();
    let looping = agent::run(
        &cfg,
        KubeSource::new(client(api.addr), &cfg.node_name, Duration::from_millis(100)),
        Netlink::in_netns(ns.ns()).unwrap(),
        &readiness,
    );
    let annotation = |api: &FakeApi| {
        api.state.lock().unwrap().nodes[&("Node".to_string(), "/kind-control-plane".to_string())]
            ["metadata"]["annotations"][flatnet::agent::kubernetes::NETWORK_ANNOTATION]
            .clone()
    };
    let annotated = async {
        while annotation(&api) != json!("172.18.0.2/16") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        r = looping => panic!("the agent stopped: {r:?}"),
        r = tokio::time::timeout(Duration::from_secs(20), annotated) => {
            r.unwrap_or_else(|_| panic!("not annotated: {}", annotation(&api)))
        }
    }
    let mut src = KubeSource::new(
        client(api.addr),
        "kind-control-plane",
        Duration::from_secs(3600),
    );
    let nodes = until(&mut src, "the list", |n| n.len() == 2).await;
    assert_eq!(nodes[0].node_networks, ["172.18.0.2/16".parse().unwrap()]);
}

/// Hostile Nodes from the API are refused on every node, the refusal names them, and every
/// node's routes stay exactly right; a Node whose pod CIDR turns to garbage keeps its route.
#[tokio::test(flavor = "current_thread")]
async fn hostile_nodes_are_refused_on_every_node() {
    let api = FakeApi::start().await;
    let good = [
        ("kind-control-plane", "172.18.0.2", "10.244.0.0/24"),
        ("kind-worker", "172.18.0.3", "10.244.1.0/24"),
        ("kind-worker2", "172.18.0.4", "10.244.2.0/24"),
    ];
    for (i, (name, ip, cidr)) in good.into_iter().enumerate() {
        api.put(born(node(name, ip, Some(cidr)), i as u32));
    }
    let dir = common::TempDir::new("kube-hostile");
    let nodes: Vec<(AgentConfig, common::TestNs)> = good[..2]
        .iter()
        .map(|(name, ip, _)| {
            let cfg = AgentConfig {
                node_name: name.to_string(),
                conf_dir: dir.path().join(name).join("net.d"),
                data_dir: dir.path().join(name).join("ipam"),
                mtu: None,
                cni_log_file: None,
                cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                status_file: None,
                overlay: Default::default(),
            };
            (cfg, node_netns("kube", ip))
        })
        .collect();
    let want = [
        vec![
            "10.244.1.0/24 via 172.18.0.3 dev eth0",
            "10.244.2.0/24 via 172.18.0.4 dev eth0",
        ],
        vec![
            "10.244.0.0/24 via 172.18.0.2 dev eth0",
            "10.244.2.0/24 via 172.18.0.4 dev eth0",
        ],
    ];
    let pass_all = |listed: Vec<Listed>| {
        let nodes = &nodes;
        async move {
            let mut refused = Vec::new();
            for (cfg, ns) in nodes {
                let netlink = Netlink::in_netns(ns.ns()).unwrap();
                let pass = agent::reconcile(cfg, &listed, &netlink).await;
                assert_eq!(pass.outcome.unwrap(), Status::Ready, "{}", cfg.node_name);
                refused.push(pass.refused);
            }
            refused
        }
    };

    let mut src = KubeSource::new(
        client(api.addr),
        "kind-control-plane",
        Duration::from_secs(3600),
    );
    let listed = until_listed(&mut src, "the cluster", |l| l.len() == 3).await;
    pass_all(listed).await;
    for (i, (_, ns)) in nodes.iter().enumerate() {
        assert_eq!(agent_routes(ns), want[i]);
    }

    let hostile = [
        ("aaa", "172.18.0.9", "10.244.2.0/24"),
        ("inside", "172.18.0.10", "10.244.1.128/25"),
        ("podip", "10.244.1.5", "10.244.9.0/24"),
        ("wide", "172.18.0.11", "128.0.0.0/1"),
        ("underlay", "172.18.0.13", "172.18.64.0/18"),
        ("garbage", "172.18.0.12", "10.244.x.0/24"),
        // Created in the same second, for one range: neither is older, both are refused.
        ("twin-a", "172.18.0.14", "10.244.7.0/24"),
        ("twin-b", "172.18.0.15", "10.244.7.0/24"),
    ];
    for (name, ip, cidr) in hostile {
        api.put(born(node(name, ip, Some(cidr)), 30));
    }
    // kind-worker2's pod CIDR turns to garbage: refused, but its route is its last good state.
    api.put(born(
        node("kind-worker2", "172.18.0.4", Some("10.244.2.0/24x")),
        2,
    ));
    let listed = until_listed(&mut src, "the hostile nodes", |l| {
        l.len() == 11
            && l.iter()
                .any(|e| e.key == "kind-worker2" && e.record.is_err())
    })
    .await;
    for refused in pass_all(listed).await {
        let mut keys: Vec<&str> = refused.iter().map(|r| r.record.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "aaa",
                "garbage",
                "inside",
                "kind-worker2",
                "podip",
                "twin-a",
                "twin-b",
                "underlay",
                "wide"
            ],
            "{refused:?}"
        );
        let garbage = refused.iter().find(|r| r.record == "garbage").unwrap();
        assert!(garbage.reason.contains("spec.podCIDRs[0]"), "{garbage:?}");
    }
    for (i, (_, ns)) in nodes.iter().enumerate() {
        assert_eq!(agent_routes(ns), want[i]);
    }

    // The agent's own loop posts a Warning Event on each refused Node, once.
    let (cfg, ns) = &nodes[0];
    let readiness = agent::Readiness::default();
    let looping = agent::run(
        cfg,
        KubeSource::new(client(api.addr), &cfg.node_name, Duration::from_millis(100)),
        Netlink::in_netns(ns.ns()).unwrap(),
        &readiness,
    );
    let posted = async {
        loop {
            let refused: Vec<String> = api
                .events()
                .iter()
                .map(|e| e["regarding"]["name"].as_str().unwrap_or("").to_string())
                .collect();
            if refused.len() >= 9 {
                return refused;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut refused = tokio::select! {
        r = looping => panic!("the agent stopped: {r:?}"),
        r = tokio::time::timeout(Duration::from_secs(20), posted) => r.expect("9 Events"),
    };
    refused.sort();
    assert_eq!(
        refused,
        [
            "aaa",
            "garbage",
            "inside",
            "kind-worker2",
            "podip",
            "twin-a",
            "twin-b",
            "underlay",
            "wide"
        ]
    );
    let ev = api
        .events()
        .into_iter()
        .find(|e| e["regarding"]["name"] == "garbage")
        .unwrap();
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], "NodeRecordRefused");
    assert_eq!(ev["regarding"]["kind"], "Node");
    assert_eq!(ev["regarding"]["uid"], "uid-garbage");
    assert_eq!(ev["reportingInstance"], "kind-control-plane");
    assert!(
        ev["note"].as_str().unwrap().contains("spec.podCIDRs[0]"),
        "{ev}"
    );

    // Deleted for real (and the garbage Node with it: while a Node is unreadable, a route no
    // valid Node explains may be its own and stays): worker2's route goes, and "aaa", whose
    // claim is now nobody else's, gets 10.244.2.0/24 on every node alike.
    api.delete("kind-worker2");
    api.delete("garbage");
    let listed = until_listed(&mut src, "worker2 gone", |l| {
        l.len() == 9 && l.iter().all(|e| e.key != "kind-worker2")
    })
    .await;
    pass_all(listed).await;
    for (i, (_, ns)) in nodes.iter().enumerate() {
        assert_eq!(
            agent_routes(ns),
            [want[i][0], "10.244.2.0/24 via 172.18.0.9 dev eth0"]
        );
    }
}

/// Pods, Namespaces and NetworkPolicies come through the same source, with the Node watch's
/// rules: each change (a pod's label, a policy gone) is seen, also across a dropped watch.
#[tokio::test(flavor = "current_thread")]
async fn policies_namespaces_and_pods_are_watched_too() {
    let api = FakeApi::start().await;
    api.put(node("kind-worker", "172.18.0.3", Some("10.244.1.0/24")));
    api.put(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "x", "labels": {"kubernetes.io/metadata.name": "x"}}}));
    let pod = |labels: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "namespace": "x", "labels": labels},
            "spec": {"nodeName": "kind-worker", "containers": [{"name": "c",
                "ports": [{"name": "http", "containerPort": 80}]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.2", "podIPs": [{"ip": "10.244.1.2"}]}})
    };
    api.put(pod(json!({"pod": "a"})));
    let policy = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}}});
    api.put(policy.clone());

    let mut src = KubeSource::new(client(api.addr), "kind-worker", Duration::from_secs(3600));
    until(&mut src, "the first list", |n| !n.is_empty()).await;
    let o = src.objects();
    assert_eq!(o.namespaces.len(), 1, "{o:?}");
    assert_eq!(o.policies.len(), 1, "{o:?}");
    let p = o.pods[0].value.as_ref().unwrap();
    assert_eq!((p.key().as_str(), p.node.as_str()), ("x/a", "kind-worker"));
    assert_eq!(p.ports[0].port, 80);

    let label = |src: &KubeSource| {
        src.objects().pods[0]
            .value
            .as_ref()
            .unwrap()
            .labels
            .get("role")
            .cloned()
    };
    api.put(pod(json!({"pod": "a", "role": "client"})));
    while label(&src).is_none() {
        tokio::time::timeout(Duration::from_secs(20), src.next())
            .await
            .unwrap()
            .unwrap();
    }
    api.drop_watches();
    api.event("DELETED", policy);
    while !src.objects().policies.is_empty() {
        tokio::time::timeout(Duration::from_secs(20), src.next())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(label(&src).as_deref(), Some("client"));
}
