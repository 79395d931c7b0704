//! The emulator end to end, through the built `flatnet` binary: clusters of real namespaces,
//! agents as real processes, pods attached by exec'ing `flatnet-cni`, real TCP between pods.
//! Everything is witnessed independently with `ip` and /proc.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{eventually, TestCluster};
use flatnet::emulator::check::{self, Outcome};
use flatnet::emulator::state::{NodeSpec, PodRecord};
use flatnet::netns::{self, NetNs};
use ipnetwork::Ipv4Network;

const CONVERGE: Duration = Duration::from_secs(10);

fn pods(c: &TestCluster) -> Vec<PodRecord> {
    serde_json::from_str(&c.ok(&["get", "pods", "-o", "json"])).expect("pods as JSON")
}

fn nodes(c: &TestCluster) -> Vec<NodeSpec> {
    serde_json::from_str(&c.ok(&["get", "nodes", "-o", "json"])).expect("nodes as JSON")
}

fn ping(c: &TestCluster, from_netns: &str, to: Ipv4Addr) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.netns(from_netns),
            "ping",
            "-c1",
            "-W2",
            &to.to_string(),
        ])
        .output()
        .expect("spawn ping")
        .status
        .success()
}

#[test]
fn three_nodes_full_matrix_without_nat() {
    let c = TestCluster::up("matrix", &["--nodes", "3"]);
    for node in 1..=3 {
        for pod in ["a", "b"] {
            c.ok(&[
                "run",
                &format!("{pod}{node}"),
                "--node",
                &format!("node-{node}"),
            ]);
        }
    }
    // With no node given, the least-loaded one: all have 2, so node-1.
    assert!(c.ok(&["run", "extra"]).contains("on node-1"));
    c.ok(&["delete", "pod", "extra"]);

    let nodes = nodes(&c);
    let pods = pods(&c);
    assert_eq!(pods.len(), 6);
    let mut ips = BTreeSet::new();
    for p in &pods {
        let node = nodes.iter().find(|n| n.name == p.node).unwrap();
        let ip = p.ip.expect("every pod has an IP");
        assert!(node.pod_cidr.contains(ip), "{ip} outside {}", node.pod_cidr);
        assert!(ips.insert(ip), "{ip} handed out twice");
        // The witness: the address is on the pod's eth0.
        let addr = c.ip(
            &format!("pod-{}", p.name),
            &["-4", "-o", "addr", "show", "eth0"],
        );
        assert!(addr.contains(&format!("{ip}/32")), "{addr}");
        // The pod reaches its node's IP and the node reaches the pod (kubelet's probes).
        assert!(ping(&c, &format!("pod-{}", p.name), node.node_ip));
        assert!(ping(&c, &p.node, ip));
    }

    let out = c.ok(&["check"]);
    assert!(out.contains("30 of 30 exchanges"), "{out}");
    assert!(out.contains("no NAT"), "{out}");
    let probes: serde_json::Value = serde_json::from_str(&c.ok(&["check", "-o", "json"])).unwrap();
    let probes = probes.as_array().unwrap();
    assert_eq!(probes.len(), 30);
    for p in probes {
        assert_eq!(p["result"], "ok", "{p}");
        assert_eq!(p["seen"], p["fromIP"], "{p}");
    }
}

#[test]
fn a_removed_node_takes_its_pods_and_routes_and_comes_back() {
    let c = TestCluster::up("churn", &["--nodes", "3"]);
    c.ok(&["run", "gone", "--node", "node-3"]);
    c.ok(&["run", "stays", "--node", "node-1"]);
    let node3_cidr = "10.244.3.0/24";
    for n in ["node-1", "node-2"] {
        assert!(
            c.agent_routes(n)
                .iter()
                .any(|r| r.starts_with(&format!("{node3_cidr} via 172.18.0.4"))),
            "{n}: {:?}",
            c.agent_routes(n)
        );
    }

    c.ok(&["node", "remove", "node-3"]);
    assert!(pods(&c).iter().all(|p| p.name != "gone"));
    assert!(!c.namespaces().contains(&c.netns("pod-gone")));
    assert!(!c.namespaces().contains(&c.netns("node-3")));
    for n in ["node-1", "node-2"] {
        eventually(
            &format!("{n} drops the route to node-3's pods"),
            CONVERGE,
            || c.agent_routes(n).iter().all(|r| !r.starts_with(node3_cidr)),
        );
    }

    assert!(c.ok(&["node", "add"]).contains("node-3 added"));
    for n in ["node-1", "node-2"] {
        eventually(&format!("{n} routes node-3's pods again"), CONVERGE, || {
            c.agent_routes(n)
                .iter()
                .any(|r| r.starts_with(&format!("{node3_cidr} via 172.18.0.4")))
        });
    }
    c.ok(&["run", "back", "--node", "node-3"]);
    assert!(c.ok(&["check"]).contains("no NAT"));
}

#[test]
fn a_wrong_gateway_is_repaired_and_foreign_routes_are_left_alone() {
    let c = TestCluster::up("repair", &["--nodes", "2"]);
    c.ip(
        "node-1",
        &[
            "route",
            "replace",
            "10.244.2.0/24",
            "via",
            "172.18.0.99",
            "proto",
            "0x67",
        ],
    );
    c.ip(
        "node-1",
        &[
            "route",
            "add",
            "192.0.2.0/24",
            "via",
            "172.18.0.1",
            "proto",
            "static",
        ],
    );
    eventually(
        "the agent repairs the gateway at its next resync",
        CONVERGE,
        || c.agent_routes("node-1") == ["10.244.2.0/24 via 172.18.0.3 dev eth0"],
    );
    let all = c.ip("node-1", &["route"]);
    assert!(
        all.contains("192.0.2.0/24 via 172.18.0.1 dev eth0 proto static"),
        "{all}"
    );
}

#[test]
fn down_leaves_nothing_and_clusters_coexist() {
    let a = TestCluster::up("a", &["--nodes", "2"]);
    let b = TestCluster::up("b", &["--nodes", "1"]);
    a.ok(&["run", "p1", "--node", "node-1"]);
    a.ok(&["run", "p2", "--node", "node-2"]);
    b.ok(&["run", "p1"]);
    let agents: Vec<u32> = nodes(&a).iter().map(|n| n.agent.unwrap().pid).collect();
    assert_eq!(agents.len(), 2);
    assert_eq!(a.namespaces().len(), 5, "{:?}", a.namespaces());

    assert!(a.ok(&["down"]).contains("removed"));
    assert!(a.namespaces().is_empty(), "{:?}", a.namespaces());
    for pid in agents {
        assert!(!is_agent(pid), "agent {pid} still runs");
    }
    assert!(!a.state_dir().exists());
    assert!(a.ok(&["down"]).contains("nothing to do"));
    // The machine's own namespace got nothing: no link carries the cluster's names.
    let root_links = common::run_ok("ip", &["-o", "link"]);
    assert!(
        !root_links.contains(&a.name) && !root_links.contains(" flat"),
        "{root_links}"
    );

    // The other cluster did not notice.
    assert_eq!(b.namespaces().len(), 3);
    assert!(b.ok(&["get", "nodes"]).contains("Ready"));
}

fn is_agent(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"agent".as_slice()))
}

#[test]
fn down_finishes_the_job_after_a_crash() {
    // An `up` killed half-way: whatever it had made, `down` removes.
    let c = TestCluster {
        name: common::unique("crash"),
        state: common::TempDir::new("crash-state"),
    };
    let mut up = Command::new(common::workspace_bin("flatnet"))
        .args(["--name", &c.name, "--state-dir"])
        .arg(c.state.path())
        .args(["up", "--nodes", "6"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually("up has made a node", CONVERGE, || {
        c.namespaces().iter().any(|n| n.contains("-node-"))
    });
    up.kill().unwrap();
    up.wait().unwrap();
    c.ok(&["down"]);
    assert!(c.namespaces().is_empty(), "{:?}", c.namespaces());
    assert!(!c.state_dir().exists());

    // A cluster whose state dir is lost entirely: found by its namespaces' names.
    let lost = TestCluster::up("lost", &["--nodes", "2"]);
    lost.ok(&["run", "p"]);
    let agents: Vec<u32> = nodes(&lost).iter().map(|n| n.agent.unwrap().pid).collect();
    // The agents still run and rewrite their conflists as they vanish: retry until gone.
    eventually("the state dir is gone", CONVERGE, || {
        std::fs::remove_dir_all(lost.state_dir()).is_ok()
    });
    lost.ok(&["down"]);
    assert!(lost.namespaces().is_empty(), "{:?}", lost.namespaces());
    for pid in agents {
        assert!(!is_agent(pid), "agent {pid} still runs");
    }
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let c = TestCluster::up("bad", &["--nodes", "1"]);
    for args in [
        &["run", "Not_A_Name"][..],
        &["run", "p", "--node", "node-9"],
        &["node", "remove", "node-9"],
        &["delete", "pod", "nope"],
        &["up"],
    ] {
        let out = c.flatnet(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("error: "),
            "{args:?}"
        );
    }
    c.ok(&["run", "p"]);
    assert!(!c.flatnet(&["run", "p"]).status.success(), "a second pod p");
    assert_eq!(pods(&c).len(), 1);
    assert_eq!(c.namespaces().len(), 3);
    let out = c.flatnet(&["check"]);
    assert!(
        !out.status.success(),
        "check with one pod has nothing to check"
    );
}

/// 10 nodes × 20 pods: everything attaches, a sample of the matrix (every pod to a pod on
/// each other node) passes without NAT, and down is clean. A test of scale, not of time.
#[test]
fn ten_nodes_twenty_pods_each() {
    let c = TestCluster::up("scale", &["--nodes", "10"]);
    for i in 0..200 {
        c.ok(&["run", &format!("p{i}")]);
    }
    let pods = pods(&c);
    assert_eq!(pods.len(), 200);
    for n in nodes(&c) {
        assert_eq!(
            pods.iter().filter(|p| p.node == n.name).count(),
            20,
            "{}",
            n.name
        );
        assert_eq!(c.agent_routes(&n.name).len(), 9, "{}", n.name);
    }
    let ips: BTreeSet<Ipv4Addr> = pods.iter().filter_map(|p| p.ip).collect();
    assert_eq!(ips.len(), 200);
    let cluster: Ipv4Network = "10.244.0.0/16".parse().unwrap();
    assert!(ips.iter().all(|ip| cluster.contains(*ip)));

    let pairs: Vec<(usize, usize)> = (0..pods.len())
        .flat_map(|a| {
            let pods = &pods;
            (0..pods.len())
                .filter(move |&b| pods[b].node != pods[a].node && b % 20 == a % 20)
                .map(move |b| (a, b))
        })
        .collect();
    assert!(pairs.len() >= 200 * 9 / 2, "{} pairs", pairs.len());
    let probes = check::probe(&pods, &pairs).unwrap();
    for p in &probes {
        assert!(matches!(p.outcome, Outcome::Ok { .. }), "{p:?}");
    }
    c.ok(&["down"]);
    assert!(c.namespaces().is_empty());
}

/// What a pod sends to an address outside the cluster leaves with its node's IP (the outside
/// could not answer a pod IP); to another pod or to a node it keeps its pod IP.
#[test]
fn egress_is_masqueraded_and_nothing_else_is() {
    let c = TestCluster::up("egress", &["--nodes", "2"]);
    c.ok(&["run", "p1", "--node", "node-1"]);
    c.ok(&["run", "p2", "--node", "node-2"]);
    let pods = pods(&c);
    let p1 = pods.iter().find(|p| p.name == "p1").unwrap();
    let p1_ns = Arc::new(NetNs::open(netns::named_path(&p1.netns)).unwrap());

    // An outside host on the underlay, in a namespace of its own; its link is made inside
    // its namespace and moved straight into the underlay's, never in the machine's.
    let outside = common::TestNs::new("out");
    outside.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "out0",
        "netns",
        &c.netns("underlay"),
    ]);
    c.ip("underlay", &["link", "set", "out0", "master", "br0", "up"]);
    outside.ip(&["addr", "add", "172.18.255.254/16", "dev", "eth0"]);
    outside.ip(&["link", "set", "eth0", "up"]);
    let outside_ip: Ipv4Addr = "172.18.255.254".parse().unwrap();

    let seen = |server: Arc<NetNs>, dst: Ipv4Addr, port: u16| {
        let srv = common::serve_once_in(server, port);
        let answer = common::connect_in(&p1_ns, dst, port).expect("connect");
        assert_eq!(answer, "ok\n");
        srv.join().unwrap().ip().to_string()
    };
    assert_eq!(
        seen(outside.ns(), outside_ip, 8081),
        "172.18.0.2",
        "the outside sees node-1"
    );

    let node2 = Arc::new(NetNs::open(netns::named_path(&c.netns("node-2"))).unwrap());
    let p1_ip = p1.ip.unwrap().to_string();
    assert_eq!(
        seen(node2, "172.18.0.3".parse().unwrap(), 8082),
        p1_ip,
        "node-2 sees the pod"
    );
    assert!(c.ok(&["check"]).contains("no NAT"));

    let rules = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.netns("node-1"),
            "nft",
            "list",
            "table",
            "inet",
            "flatnet",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&rules.stdout).contains("masquerade"));
}
