//! The emulator's IPv6-only and dual-stack clusters end to end, through the built `flatnet`
//! binary: every pod gets an address of each family of its cluster, the matrix runs per
//! family with no NAT in either, nodes added and removed are routed in both families, and
//! `down` leaves nothing. Witnessed with `ip`, `nft` and /proc.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use common::cluster::{eventually, TestCluster};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(10);

fn pods(c: &TestCluster) -> Vec<Value> {
    let all: Value = serde_json::from_str(&c.ok(&["get", "pods", "-o", "record"])).unwrap();
    all.as_array().unwrap().clone()
}

/// A pod's addresses as `get pods -o json` lists them in `status.podIPs`.
fn pod_ips(p: &Value) -> Vec<IpAddr> {
    p["status"]["podIPs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ip"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// The node's agent routes of one family (`-4` or `-6`), as `ip route` prints them.
fn agent_routes(c: &TestCluster, node: &str, family: &str) -> Vec<String> {
    c.ip(node, &[family, "route", "show", "proto", "0x67"])
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

fn routes_to(c: &TestCluster, node: &str, family: &str, cidr: &str, via: &str) -> bool {
    agent_routes(c, node, family)
        .iter()
        .any(|r| r.starts_with(&format!("{cidr} via {via} ")))
}

fn ping(c: &TestCluster, from: &str, to: IpAddr) -> bool {
    Command::new("ip")
        .args(["netns", "exec", &c.netns(from), "ping", "-c1", "-W2"])
        .arg(to.to_string())
        .output()
        .expect("spawn ping")
        .status
        .success()
}

/// `flatnet check -o json`: every probe of `family` went through and the receiver saw the
/// sender's own address; returns how many there were.
fn matrix_without_nat(c: &TestCluster, family: &str) -> usize {
    let probes: Value = serde_json::from_str(&c.ok(&["check", "-o", "json"])).unwrap();
    let of_family: Vec<&Value> = probes
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["family"] == family)
        .collect();
    for p in &of_family {
        assert_eq!(p["result"], "ok", "{p}");
        assert_eq!(p["seen"], p["fromIP"], "{p}");
        let from: IpAddr = p["fromIP"].as_str().unwrap().parse().unwrap();
        assert_eq!(from.is_ipv6(), family == "IPv6", "{p}");
    }
    of_family.len()
}

/// The anti-spoofing counter of IPv6 drops on `node`: pods sending from their own IPv6
/// address must never add to it.
fn spoofed_ipv6(c: &TestCluster, node: &str) -> String {
    c.nft(
        node,
        &["list", "counter", "inet", "flatnet", "spoofed_ipv6"],
    )
}

/// What `down` must leave: no namespace, no agent, no state dir, no link in the machine's
/// own namespace carrying the cluster's names.
fn assert_down_clean(c: &TestCluster, agents: &[u32]) {
    assert!(c.ok(&["down"]).contains("removed"));
    assert!(c.namespaces().is_empty(), "{:?}", c.namespaces());
    for pid in agents {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || !std::fs::read(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .windows(5)
                    .any(|w| w == b"agent"),
            "agent {pid} still runs"
        );
    }
    assert!(!c.state_dir().exists());
    let root_links = common::run_ok("ip", &["-o", "link"]);
    assert!(
        !root_links.contains(&c.name) && !root_links.contains(" flat"),
        "{root_links}"
    );
}

fn agent_pids(c: &TestCluster) -> Vec<u32> {
    let nodes: Value = serde_json::from_str(&c.ok(&["get", "nodes", "-o", "record"])).unwrap();
    nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["agent"]["pid"].as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn ipv6_only_full_matrix_without_nat_node_churn_and_a_clean_down() {
    let c = TestCluster::up("v6", &["--nodes", "3", "--ip-family", "ipv6"]);
    // The node records carry IPv6 only (the nodes' eth0 has IPv4 too, as kind's nodes do).
    let record: Value =
        serde_json::from_slice(&std::fs::read(c.state_dir().join("registry/node-2.json")).unwrap())
            .unwrap();
    assert_eq!(
        record["nodeIPs"],
        serde_json::json!(["fc00:f853:ccd:e793::3"])
    );
    assert_eq!(
        record["podCIDRs"],
        serde_json::json!(["fd00:10:244:2::/64"])
    );
    // IPv6 forwarding is on in the node, set when it was made, before any pod.
    let fwd = Command::new("ip")
        .args(["netns", "exec", &c.netns("node-1")])
        .args(["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");

    for (pod, node) in [
        ("a", "node-1"),
        ("b", "node-1"),
        ("c", "node-2"),
        ("d", "node-3"),
    ] {
        c.ok(&["run", "--sandbox-only", pod, "--node", node]);
    }
    let mut seen = BTreeSet::new();
    for p in pods(&c) {
        let ips = pod_ips(&p);
        assert_eq!(ips.len(), 1, "{p}");
        let ip = ips[0];
        let node = p["node"].as_str().unwrap();
        let index = node.trim_start_matches("node-");
        assert!(
            ip.to_string()
                .starts_with(&format!("fd00:10:244:{index}::")),
            "{ip} on {node}"
        );
        assert!(seen.insert(ip), "{ip} handed out twice");
        let netns = format!("pod-default_{}", p["name"].as_str().unwrap());
        // The witness: the address is on eth0, usable (not tentative), and the pod has no
        // IPv4 address at all.
        let addr = c.ip(&netns, &["-o", "addr", "show", "eth0"]);
        assert!(addr.contains(&format!("{ip}/128")), "{addr}");
        assert!(!addr.contains("tentative"), "{addr}");
        assert!(!addr.contains("inet "), "{addr}");
        // Pod and node reach each other by IPv6 (node-N is at ::N+1 of the underlay).
        let node_ip = format!("fc00:f853:ccd:e793::{}", index.parse::<u8>().unwrap() + 1);
        assert!(
            ping(&c, &netns, node_ip.parse().unwrap()),
            "{netns} -> {node_ip}"
        );
        assert!(ping(&c, node, ip));
    }
    let text = c.ok(&["check"]);
    assert!(
        text.contains("12 of 12 exchanges over IPv6") && text.contains("no NAT"),
        "{text}"
    );
    assert!(!text.contains("over IPv4"), "{text}");
    assert_eq!(matrix_without_nat(&c, "IPv6"), 12);
    assert!(spoofed_ipv6(&c, "node-1").contains("packets 0 "));

    // A node added is routed by every other node, and its pods join the matrix.
    assert!(c.ok(&["node", "add"]).contains("node-4 added"));
    for n in ["node-1", "node-2", "node-3"] {
        eventually(&format!("{n} routes node-4's pods"), CONVERGE, || {
            routes_to(&c, n, "-6", "fd00:10:244:4::/64", "fc00:f853:ccd:e793::5")
        });
        assert!(agent_routes(&c, n, "-4").is_empty());
    }
    c.ok(&["run", "--sandbox-only", "e", "--node", "node-4"]);
    assert_eq!(matrix_without_nat(&c, "IPv6"), 20);
    c.ok(&["node", "remove", "node-4"]);
    for n in ["node-1", "node-2", "node-3"] {
        eventually(&format!("{n} drops node-4's pods"), CONVERGE, || {
            agent_routes(&c, n, "-6")
                .iter()
                .all(|r| !r.starts_with("fd00:10:244:4::"))
        });
    }
    // trace follows IPv4: here it says so, and nothing breaks.
    let out = c.flatnet(&["trace", "a", "c"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("trace follows IPv4 packets only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agents = agent_pids(&c);
    assert_down_clean(&c, &agents);
}

#[test]
fn dual_stack_full_matrix_in_each_family_node_churn_and_a_clean_down() {
    let c = TestCluster::up("dual", &["--nodes", "3", "--ip-family", "dual"]);
    let record: Value =
        serde_json::from_slice(&std::fs::read(c.state_dir().join("registry/node-1.json")).unwrap())
            .unwrap();
    assert_eq!(
        record["nodeIPs"],
        serde_json::json!(["172.18.0.2", "fc00:f853:ccd:e793::2"])
    );
    assert_eq!(
        record["podCIDRs"],
        serde_json::json!(["10.244.1.0/24", "fd00:10:244:1::/64"])
    );
    // The underlay's IPv6 addresses are usable at once: no DAD, not even for link-local ones.
    for (ns, dev, addr) in [
        ("underlay", "br0", "fc00:f853:ccd:e793::1/64"),
        ("node-1", "eth0", "fc00:f853:ccd:e793::2/64"),
    ] {
        let shown = c.ip(ns, &["-6", "-o", "addr", "show", "dev", dev]);
        assert!(shown.contains(addr), "{ns}: {shown}");
        assert!(!shown.contains("tentative"), "{ns}: {shown}");
    }
    // Each agent was told both cluster CIDRs.
    let log = std::fs::read_to_string(c.state_dir().join("nodes/node-1/agent.log")).unwrap();
    assert!(log.contains("fd00:10:244::"), "{log}");
    for n in ["node-1", "node-2", "node-3"] {
        for (family, cidr, via) in [
            ("-4", "10.244", "172.18.0."),
            ("-6", "fd00:10:244:", "fc00:f853:ccd:e793::"),
        ] {
            let routes = agent_routes(&c, n, family);
            assert_eq!(routes.len(), 2, "{n}: {routes:?}");
            assert!(
                routes
                    .iter()
                    .all(|r| r.starts_with(cidr) && r.contains(&format!(" via {via}"))),
                "{n}: {routes:?}"
            );
        }
    }

    for (pod, node) in [
        ("a", "node-1"),
        ("b", "node-1"),
        ("c", "node-2"),
        ("d", "node-3"),
    ] {
        c.ok(&["run", "--sandbox-only", pod, "--node", node]);
    }
    for p in pods(&c) {
        let ips = pod_ips(&p);
        assert_eq!(ips.len(), 2, "{p}");
        assert!(
            ips.iter().any(IpAddr::is_ipv4) && ips.iter().any(IpAddr::is_ipv6),
            "{p}"
        );
        assert_eq!(p["status"]["podIP"], ips[0].to_string());
        let netns = format!("pod-default_{}", p["name"].as_str().unwrap());
        let addr = c.ip(&netns, &["-o", "addr", "show", "eth0"]);
        for ip in &ips {
            let host = if ip.is_ipv4() { 32 } else { 128 };
            assert!(addr.contains(&format!("{ip}/{host}")), "{addr}");
            assert!(ping(&c, p["node"].as_str().unwrap(), *ip));
        }
        assert!(!addr.contains("tentative"), "{addr}");
    }
    // get shows the first address, as kubectl; -o wide and describe show both.
    let plain = c.ok(&["get", "pods", "a"]);
    let wide = c.ok(&["get", "pods", "a", "-o", "wide"]);
    let describe = c.ok(&["describe", "pod", "a"]);
    let a = pods(&c).into_iter().find(|p| p["name"] == "a").unwrap();
    let [v4, v6] = [0, 1].map(|i| pod_ips(&a)[i].to_string());
    assert!(plain.contains(&v4) && !plain.contains(&v6), "{plain}");
    assert!(wide.contains(&format!("{v4},{v6}")), "{wide}");
    assert!(
        describe.contains(&format!("IPs:\n  IP:  {v4}\n  IP:  {v6}\n")),
        "{describe}"
    );

    let text = c.ok(&["check"]);
    for family in ["IPv4", "IPv6"] {
        assert!(
            text.contains(&format!(
                "12 of 12 exchanges over {family} reached the receiver from the sender's own \
                 pod IP: no NAT"
            )),
            "{text}"
        );
        assert_eq!(matrix_without_nat(&c, family), 12);
    }
    for n in ["node-1", "node-2", "node-3"] {
        assert!(spoofed_ipv6(&c, n).contains("packets 0 "), "{n}");
    }

    // The topology shows both families of every node and pod.
    let topo = c.ok(&["topology"]);
    assert!(topo.contains("fc00:f853:ccd:e793::1/64"), "{topo}");
    assert!(
        topo.contains("pods 10.244.1.0/24,fd00:10:244:1::/64"),
        "{topo}"
    );
    assert!(
        topo.contains("fd00:10:244:2::/64 via fc00:f853:ccd:e793::3"),
        "{topo}"
    );
    assert!(topo.contains(&format!("{v4}/32,{v6}/128")), "{topo}");
    let svg = c.ok(&["topology", "-o", "svg"]);
    roxmltree::Document::parse(&svg).expect("the SVG is XML");
    for whole in [
        "node-1  eth0 172.18.0.2,fc00:f853:ccd:e793::2",
        "pods 10.244.1.0/24,fd00:10:244:1::/64",
        &format!("a  eth0 {v4}/32,{v6}/128"),
        "gw 10.244.1.1,fd00:10:244:1::1",
    ] {
        assert!(
            svg.contains(whole),
            "{whole} is not written whole in the SVG"
        );
    }
    let json: Value = serde_json::from_str(&c.ok(&["topology", "-o", "json"])).unwrap();
    assert_eq!(
        json["nodes"][0]["pods"][0]["ips"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        json["nodes"][0]["pods"][0]["gateways"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // trace follows the IPv4 path of a dual-stack pair, and refuses an IPv6 address plainly.
    assert!(c.ok(&["trace", "a", "c"]).contains("OK"));
    let out = c.flatnet(&["trace", "a", &pod_ips(&pods(&c)[2])[1].to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("IPv4 packets only"));

    // node add and remove route both families.
    assert!(c
        .ok(&["node", "add"])
        .contains("node-4 added: 172.18.0.5,fc00:f853:ccd:e793::5 with pods from 10.244.4.0/24,fd00:10:244:4::/64"));
    for n in ["node-1", "node-2", "node-3"] {
        eventually(
            &format!("{n} routes node-4's pods in both families"),
            CONVERGE,
            || {
                routes_to(&c, n, "-4", "10.244.4.0/24", "172.18.0.5")
                    && routes_to(&c, n, "-6", "fd00:10:244:4::/64", "fc00:f853:ccd:e793::5")
            },
        );
    }
    c.ok(&["run", "--sandbox-only", "e", "--node", "node-4"]);
    assert_eq!(matrix_without_nat(&c, "IPv4"), 20);
    assert_eq!(matrix_without_nat(&c, "IPv6"), 20);
    c.ok(&["node", "remove", "node-4"]);
    for n in ["node-1", "node-2", "node-3"] {
        eventually(
            &format!("{n} drops node-4's pods in both families"),
            CONVERGE,
            || agent_routes(&c, n, "-4").len() == 2 && agent_routes(&c, n, "-6").len() == 2,
        );
    }
    let agents = agent_pids(&c);
    assert_down_clean(&c, &agents);
}

/// NAT in one family is reported in that family's matrix alone: a masquerade rule for IPv6
/// traffic between pods, added by hand on node-1, shows in the IPv6 matrix, fails `check`,
/// and leaves the IPv4 matrix clean.
#[test]
fn nat_in_one_family_is_reported_in_that_family_only() {
    let c = TestCluster::up("dualnat", &["--nodes", "2", "--ip-family", "dual"]);
    c.ok(&["run", "--sandbox-only", "a", "--node", "node-1"]);
    c.ok(&["run", "--sandbox-only", "b", "--node", "node-2"]);
    assert_eq!(matrix_without_nat(&c, "IPv6"), 2);
    let nft = |args: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &c.netns("node-1"), "nft"])
            .args(args.split(' '))
            .output()
            .unwrap();
        assert!(out.status.success(), "nft {args}: {out:?}");
    };
    nft("add table ip6 handmade");
    nft("add chain ip6 handmade post { type nat hook postrouting priority 200 ; }");
    nft("add rule ip6 handmade post ip6 daddr fd00:10:244:2::/64 masquerade");

    let out = c.flatnet(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(
            "2 of 2 exchanges over IPv4 reached the receiver from the sender's own pod IP: no NAT"
        ),
        "{text}"
    );
    assert!(text.contains("1 of 2 exchanges over IPv6"), "{text}");
    assert!(
        text.contains("fc00:f853:ccd:e793::2 NAT"),
        "node-1's IPv6 address, where a's should be: {text}"
    );
    let failures = c.flatnet(&["check", "--failures-only"]);
    assert_eq!(
        String::from_utf8_lossy(&failures.stdout),
        "a -> b (IPv6): NAT (seen as fc00:f853:ccd:e793::2)\n"
    );
    let probes: Value =
        serde_json::from_slice(&c.flatnet(&["check", "-o", "json"]).stdout).unwrap();
    let nat: Vec<&Value> = probes
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["result"] != "ok")
        .collect();
    assert_eq!(nat.len(), 1, "{probes}");
    assert_eq!(nat[0]["family"], "IPv6");
    assert_eq!(nat[0]["result"], "nat");
}

/// The demo in a dual-stack cluster: a matrix per family, both without NAT, and nothing left.
#[test]
fn demo_dual_shows_both_matrices() {
    common::sweep_stale();
    let name = common::unique("demo");
    let state = common::TempDir::new("demo-state");
    let out = Command::new(common::workspace_bin("flatnet"))
        .args(["--name", &name, "--state-dir"])
        .arg(state.path())
        .args(["demo", "--ip-family", "dual"])
        .output()
        .expect("spawn flatnet demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for family in ["IPv4", "IPv6"] {
        assert!(
            text.contains(&format!("30 of 30 exchanges over {family}")),
            "{text}"
        );
    }
    assert_eq!(text.matches(": no NAT").count(), 2, "{text}");
    assert!(
        text.contains("fd00:10:244:2::/64 via fc00:f853:ccd:e793::3"),
        "{text}"
    );
    assert!(text.contains("nothing is left behind"), "{text}");
    let prefix = format!("flatnet-{name}-");
    assert!(flatnet::netns::list_named()
        .unwrap()
        .iter()
        .all(|n| !n.starts_with(&prefix)));
}
