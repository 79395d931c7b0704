//! `flatnet trace`, `check --failures-only`, `routes` and the pictures, through the built
//! binary on a real cluster. Faults are injected with `ip` (the independent hand) one at a
//! time and undone before the next, on one cluster whose agents resync rarely, so that the
//! agent does not repair a fault before the trace sees it.

mod common;

use std::process::Command;

use common::cluster::TestCluster;
use common::{unique, TempDir};
use flatnet::emulator::picture::{self, NodeRoute, NodeView, PodView, Topology, Underlay};
use serde_json::Value;

/// A 3-node cluster whose agents only resync on a registry change or every 10 minutes.
fn cluster() -> TestCluster {
    let c = TestCluster {
        name: unique("trace"),
        state: TempDir::new("trace-state"),
    };
    c.ok(&["up", "--nodes", "3", "--agent-resync", "600"]);
    c
}

/// `trace SRC DST -o json`, with whether it exited 0.
fn trace(c: &TestCluster, src: &str, dst: &str, extra: &[&str]) -> (bool, Value) {
    let mut args = vec!["trace", src, dst, "-o", "json"];
    args.extend_from_slice(extra);
    let out = c.flatnet(&args);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "trace {src} {dst}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), json)
}

fn hops(t: &Value) -> Vec<String> {
    t["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["at"].as_str().unwrap().to_string())
        .collect()
}

/// Asserts that the trace failed at hop `at` for `reason`.
fn assert_fault(c: &TestCluster, src: &str, dst: &str, at: &str, reason: &str) {
    let (ok, t) = trace(c, src, dst, &[]);
    assert!(!ok, "trace {src} {dst} should fail: {t:#}");
    let f = &t["fault"];
    let hop = f["hop"].as_u64().unwrap() as usize;
    assert_eq!(hops(&t)[hop], at, "{t:#}");
    assert_eq!(f["reason"], reason, "{t:#}");
}

fn ip(c: &TestCluster, netns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["-n", &c.netns(netns)])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip -n {netns} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn host_veth(c: &TestCluster, pod: &str) -> String {
    let pods: Value = serde_json::from_str(&c.ok(&["get", "pods", "-o", "record"])).unwrap();
    let p = pods
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pod)
        .unwrap();
    p["result"]["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i.get("sandbox").is_none())
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn trace_lists_every_hop_and_names_each_fault_where_it_is() {
    let c = cluster();
    c.ok(&["run", "--sandbox-only", "a", "--node", "node-1"]);
    c.ok(&["run", "--sandbox-only", "b", "--node", "node-1"]);
    c.ok(&["run", "--sandbox-only", "d", "--node", "node-3"]);
    let healthy = |c: &TestCluster| {
        // Same node: the pod's default route, the node's /32 to the other pod.
        let (ok, t) = trace(c, "a", "b", &[]);
        assert!(ok, "{t:#}");
        assert_eq!(hops(&t), ["pod/a", "node/node-1", "pod/b"]);
        assert_eq!(
            t["hops"][0]["route"],
            "default via 10.244.1.1 dev eth0 proto 0x66"
        );
        assert_eq!(t["hops"][1]["iif"], host_veth(c, "a"));
        assert_eq!(t["hops"][1]["oif"], host_veth(c, "b"));
        // Cross node: the agent's host-gw route, the underlay, node-3's /32.
        let (ok, t) = trace(c, "a", "d", &[]);
        assert!(ok, "{t:#}");
        assert_eq!(
            hops(&t),
            ["pod/a", "node/node-1", "underlay", "node/node-3", "pod/d"]
        );
        assert_eq!(
            t["hops"][1]["route"],
            "10.244.3.0/24 via 172.18.0.4 dev eth0 proto 0x67"
        );
        assert_eq!(t["hops"][3]["oif"], host_veth(c, "d"));
        assert_eq!(t["hops"][4]["delivered"], true);
        // The probe went through, seen at every hop, from the pod's own address.
        assert_eq!(t["probe"]["answered"], true, "{t:#}");
        assert_eq!(t["probe"]["seenSource"], "10.244.1.2");
        for h in t["hops"].as_array().unwrap() {
            assert_eq!(h["probeSeen"], true, "{h:#}");
        }
    };
    healthy(&c);

    // Pod to node, node to pod, and egress with its masquerade.
    let (ok, t) = trace(&c, "a", "node/node-2", &["--proto", "udp"]);
    assert!(ok, "{t:#}");
    assert_eq!(
        hops(&t),
        ["pod/a", "node/node-1", "underlay", "node/node-2"]
    );
    let (ok, t) = trace(&c, "node/node-3", "d", &["--proto", "icmp"]);
    assert!(ok, "{t:#}");
    assert_eq!(hops(&t), ["node/node-3", "pod/d"]);
    let (ok, t) = trace(&c, "a", "172.18.0.1", &[]);
    assert!(ok, "{t:#}");
    assert_eq!(hops(&t), ["pod/a", "node/node-1", "underlay"]);
    assert!(
        t["hops"][1]["nat"]
            .as_str()
            .unwrap()
            .starts_with("masquerade 10.244.1.2 -> 172.18.0.2"),
        "{t:#}"
    );
    assert_eq!(t["probe"]["seenSource"], "172.18.0.2", "{t:#}");

    // A node route deleted: node-1 has no route to node-3's pods.
    ip(&c, "node-1", &["route", "del", "10.244.3.0/24"]);
    assert_fault(&c, "a", "d", "node/node-1", "no-route");
    // check says where each failed cell broke, one line per cell, both ways.
    let out = c.flatnet(&["check", "--failures-only"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    for l in &lines {
        assert!(l.contains("no route at hop 2 (node/node-1)"), "{text}");
    }
    assert!(lines.iter().any(|l| l.starts_with("a -> d: ")), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("d -> b: on the way back: ")),
        "{text}"
    );
    ip(
        &c,
        "node-1",
        &[
            "route",
            "add",
            "10.244.3.0/24",
            "via",
            "172.18.0.4",
            "proto",
            "0x67",
        ],
    );

    // The route to node-3's pods through node-2 instead.
    ip(
        &c,
        "node-1",
        &[
            "route",
            "replace",
            "10.244.3.0/24",
            "via",
            "172.18.0.3",
            "proto",
            "0x67",
        ],
    );
    assert_fault(&c, "a", "d", "node/node-1", "wrong-node");
    ip(
        &c,
        "node-1",
        &[
            "route",
            "replace",
            "10.244.3.0/24",
            "via",
            "172.18.0.4",
            "proto",
            "0x67",
        ],
    );

    // d's host veth down: node-3 can no longer reach d (the kernel drops the pod's route).
    let veth = host_veth(&c, "d");
    ip(&c, "node-3", &["link", "set", &veth, "down"]);
    assert_fault(&c, "a", "d", "node/node-3", "link-down");
    assert_fault(&c, "d", "a", "pod/d", "link-down");
    ip(&c, "node-3", &["link", "set", &veth, "up"]);
    ip(
        &c,
        "node-3",
        &[
            "route",
            "replace",
            "10.244.3.2/32",
            "dev",
            &veth,
            "proto",
            "0x66",
        ],
    );

    // a's default route removed.
    ip(&c, "pod-default_a", &["route", "del", "default"]);
    assert_fault(&c, "a", "d", "pod/a", "no-default-route");
    ip(
        &c,
        "pod-default_a",
        &[
            "route",
            "add",
            "default",
            "via",
            "10.244.1.1",
            "dev",
            "eth0",
            "proto",
            "0x66",
        ],
    );

    // a's default route through an address node-1 does not have: nobody answers its ARP.
    ip(
        &c,
        "pod-default_a",
        &[
            "route",
            "replace",
            "default",
            "via",
            "10.244.1.77",
            "dev",
            "eth0",
            "onlink",
        ],
    );
    assert_fault(&c, "a", "d", "pod/a", "wrong-gateway");
    ip(
        &c,
        "pod-default_a",
        &[
            "route",
            "replace",
            "default",
            "via",
            "10.244.1.1",
            "dev",
            "eth0",
            "proto",
            "0x66",
        ],
    );

    // A forged source: node-1's strict rp_filter (the emulator sets it) drops it at the host
    // veth, and the probe's counters stop there.
    let (ok, t) = trace(&c, "a", "d", &["--source", "10.244.1.99"]);
    assert!(!ok, "{t:#}");
    assert_eq!(t["fault"]["reason"], "spoofed-source", "{t:#}");
    assert_eq!(hops(&t), ["pod/a", "node/node-1"], "{t:#}");
    assert_eq!(t["hops"][1]["probeSeen"], true, "{t:#}");
    assert_eq!(t["delivered"], false);

    // A firewall rule the route lookups cannot see: the path is whole, the probe gets no
    // answer, and the rule's own counter (read before and after the probe) names it.
    let nft = |script: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &c.netns("node-3"), "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(script.as_bytes())?;
                child.wait()
            })
            .unwrap();
        assert!(out.success(), "nft {script}");
    };
    nft(
        "table inet fnttest {\n chain c {\n  type filter hook forward priority 0;\n  \
         ip daddr 10.244.3.2 counter drop\n }\n}\n",
    );
    let (ok, t) = trace(&c, "a", "d", &["--proto", "udp"]);
    nft("delete table inet fnttest\n");
    assert!(!ok, "{t:#}");
    assert!(t["fault"].is_null(), "{t:#}");
    assert_eq!(t["probe"]["answered"], false, "{t:#}");
    let counted = t["hops"][3]["nftCounters"][0].as_str().unwrap_or_default();
    assert!(
        counted.starts_with("ip daddr 10.244.3.2 … drop: +"),
        "{t:#}"
    );

    // A link on the way with a smaller MTU, found with --size.
    ip(&c, "node-3", &["link", "set", "eth0", "mtu", "1300"]);
    let (ok, t) = trace(&c, "a", "d", &["--proto", "icmp", "--size", "1400"]);
    assert!(!ok, "{t:#}");
    assert_eq!(t["fault"]["reason"], "mtu");
    assert_eq!(
        hops(&t)[t["fault"]["hop"].as_u64().unwrap() as usize],
        "node/node-3"
    );
    ip(&c, "node-3", &["link", "set", "eth0", "mtu", "1500"]);

    // Every fault undone: the paths are whole again.
    healthy(&c);
    let text = c.ok(&["trace", "a", "d"]);
    assert!(text.contains("OK\n"), "{text}");

    // routes: every node's table, each route with who made it.
    let routes = c.ok(&["routes"]);
    for n in ["node-1:", "node-2:", "node-3:"] {
        assert!(routes.contains(n), "{routes}");
    }
    assert!(
        routes.contains("10.244.3.0/24 via 172.18.0.4 dev eth0")
            && routes.contains("flatnet agent"),
        "{routes}"
    );
    assert!(c
        .ok(&["routes", "node-3"])
        .contains("flatnet-cni (a pod on this node)"));

    // The pictures of this cluster.
    let svg = c.ok(&["topology", "-o", "svg"]);
    check_picture(&svg, &["node-1", "node-2", "node-3"], &["a", "b", "d"]);
    let traced = c.ok(&["trace", "a", "d", "-o", "svg"]);
    check_picture(&traced, &["node-1", "node-2", "node-3"], &["a", "b", "d"]);
    let doc = roxmltree::Document::parse(&traced).unwrap();
    assert!(doc
        .descendants()
        .any(|n| n.attribute("class") == Some("path")));
    let on_path: Vec<&str> = doc
        .descendants()
        .filter(|n| n.attribute("class").is_some_and(|c| c.contains("on-path")))
        .filter_map(|n| n.attribute("data-name"))
        .collect();
    for name in ["a", "node-1", "node-3", "d"] {
        assert!(on_path.contains(&name), "{on_path:?}");
    }
    let topo: Value = serde_json::from_str(&c.ok(&["topology", "-o", "json"])).unwrap();
    assert_eq!(topo["nodes"][0]["pods"][0]["gateways"][0], "10.244.1.1");
    assert!(c.ok(&["topology", "-o", "dot"]).starts_with("digraph"));
}

#[test]
fn thirty_nodes_of_ten_pods_make_a_readable_picture() {
    let t = synthetic(30, 10);
    let nodes: Vec<String> = t.nodes.iter().map(|n| n.name.clone()).collect();
    let pods: Vec<String> = t
        .nodes
        .iter()
        .flat_map(|n| n.pods.iter().map(|p| p.name.clone()))
        .collect();
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
    check_picture(&picture::svg(&t, None), &nodes, &pods);
}

/// A topology as `Topology::read` would make it, without a cluster of that size.
fn synthetic(nodes: u8, pods: u8) -> Topology {
    Topology {
        cluster: "big".into(),
        overlay: Default::default(),
        underlay: Underlay {
            netns: "flatnet-big-underlay".into(),
            bridge: "br0".into(),
            address: "172.18.0.1/16".parse().unwrap(),
            address_v6: None,
        },
        nodes: (1..=nodes)
            .map(|i| NodeView {
                name: format!("node-{i}"),
                node_ips: vec![[172, 18, 0, i + 1].into()],
                pod_cidrs: vec![format!("10.244.{i}.0/24").parse().unwrap()],
                netns: format!("flatnet-big-node-{i}"),
                segment: 0,
                routes_to_nodes: (1..=nodes)
                    .filter(|j| *j != i)
                    .map(|j| NodeRoute {
                        dst: format!("10.244.{j}.0/24").parse().unwrap(),
                        via: Some(std::net::Ipv4Addr::new(172, 18, 0, j + 1).into()),
                        node: Some(format!("node-{j}")),
                        mode: "direct",
                        dev: None,
                    })
                    .collect(),
                pods: (1..=pods)
                    .map(|k| PodView {
                        name: format!("web-{i}-{k}"),
                        ips: vec![std::net::Ipv4Addr::new(10, 244, i, k + 1).into()],
                        host_veth: Some(format!("flat{:011x}", u64::from(i) << 8 | u64::from(k))),
                        gateways: vec![std::net::Ipv4Addr::new(10, 244, i, 1).into()],
                        routes: vec![
                            format!("default via 10.244.{i}.1 dev eth0"),
                            format!("10.244.{i}.1 dev eth0"),
                        ],
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[derive(Debug, Clone, Copy)]
struct Box2 {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

impl Box2 {
    fn overlaps(&self, o: &Box2) -> bool {
        self.x < o.x + o.w && o.x < self.x + self.w && self.y < o.y + o.h && o.y < self.y + self.h
    }
    fn inside(&self, o: &Box2) -> bool {
        self.x >= o.x
            && self.y >= o.y
            && self.x + self.w <= o.x + o.w
            && self.y + self.h <= o.y + o.h
    }
}

/// The SVG parses as XML; fits 4000 x 4000 px; no two node boxes (nor the underlay's)
/// overlap, no two pod boxes overlap and each pod's is inside a node's; every text is at least
/// 10 px; every node and pod name is written; rsvg-convert renders it at its size.
fn check_picture(svg: &str, nodes: &[&str], pods: &[&str]) {
    let doc = roxmltree::Document::parse(svg).expect("the SVG is XML");
    let root = doc.root_element();
    let num = |n: roxmltree::Node, a: &str| -> f64 {
        n.attribute(a)
            .unwrap_or_else(|| panic!("{a} missing"))
            .parse()
            .unwrap()
    };
    let (w, h) = (num(root, "width"), num(root, "height"));
    assert!(w <= 4000.0 && h <= 4000.0, "{w} x {h}");
    let boxes = |class: &str| -> Vec<(String, Box2)> {
        doc.descendants()
            .filter(|n| n.has_tag_name("rect"))
            .filter(|n| {
                n.attribute("class")
                    .is_some_and(|c| c.split(' ').next() == Some(class))
            })
            .map(|n| {
                (
                    n.attribute("data-name").unwrap().to_string(),
                    Box2 {
                        x: num(n, "x"),
                        y: num(n, "y"),
                        w: num(n, "width"),
                        h: num(n, "height"),
                    },
                )
            })
            .collect()
    };
    let mut big = boxes("node");
    let pod_boxes = boxes("pod");
    assert_eq!(big.len(), nodes.len());
    assert_eq!(pod_boxes.len(), pods.len());
    big.extend(boxes("underlay"));
    for set in [&big, &pod_boxes] {
        for (i, (a, ba)) in set.iter().enumerate() {
            assert!(
                ba.x >= 0.0 && ba.y >= 0.0 && ba.x + ba.w <= w && ba.y + ba.h <= h,
                "{a}"
            );
            for (b, bb) in &set[i + 1..] {
                assert!(!ba.overlaps(bb), "{a} overlaps {b}: {ba:?} {bb:?}");
            }
        }
    }
    for (p, bp) in &pod_boxes {
        assert!(
            big.iter().any(|(_, bn)| bp.inside(bn)),
            "pod {p} is in no node's box"
        );
    }
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| {
            assert!(num(n, "font-size") >= 10.0, "{n:?}");
            n.text().unwrap_or_default().to_string()
        })
        .collect();
    for name in nodes.iter().chain(pods) {
        assert!(
            texts
                .iter()
                .any(|t| t == name || t.starts_with(&format!("{name} "))),
            "{name} is not written"
        );
    }
    render(svg, w as u32, h as u32);
}

/// Renders with Debian's rsvg-convert and checks the PNG's size from its header.
fn render(svg: &str, w: u32, h: u32) {
    let dir = TempDir::new("svg");
    let src = dir.path().join("p.svg");
    let png = dir.path().join("p.png");
    std::fs::write(&src, svg).unwrap();
    let out = Command::new("rsvg-convert")
        .arg(&src)
        .arg("-o")
        .arg(&png)
        .output()
        .expect("rsvg-convert (Debian package librsvg2-bin; scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    assert_eq!((be(16), be(20)), (w, h));
}
