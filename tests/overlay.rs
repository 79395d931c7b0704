//! The hybrid overlay end to end: clusters whose nodes sit on two L2 segments joined by a
//! router (`flatnet up --subnets 2`), so that same-segment peers are routed directly and
//! cross-segment peers through VXLAN. Witnessed with `ip`, `bridge`, `ping` and /sys.

mod common;

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::agent::{dual, node, node1, Fixture};
use common::cluster::{eventually, TestCluster};
use flatnet::agent::overlay::Backend;
use flatnet::emulator::state::PodRecord;
use flatnet::registry::{NodeRecord, Registry};

const CONVERGE: Duration = Duration::from_secs(10);

/// 4 nodes, node-1 and node-3 on segment 0 (172.18.0.0/16), node-2 and node-4 on segment 1
/// (172.19.0.0/16), and one pod on each node (`p1` on node-1, …).
fn four_on_two(tag: &str) -> TestCluster {
    let c = TestCluster::up(tag, &["--nodes", "4", "--subnets", "2"]);
    for n in 1..=4 {
        c.ok(&[
            "run",
            "--sandbox-only",
            &format!("p{n}"),
            "--node",
            &format!("node-{n}"),
        ]);
    }
    c
}

fn pod_ip(c: &TestCluster, name: &str) -> Ipv4Addr {
    let pods: Vec<PodRecord> =
        serde_json::from_str(&c.ok(&["get", "pods", "-o", "record"])).expect("pods as JSON");
    pods.iter()
        .find(|p| p.name == name)
        .and_then(|p| p.ipv4())
        .expect("the pod has an IPv4 address")
}

/// `ip netns exec NS args…` in the namespace of `what` (a node or `pod-default_NAME`).
fn exec(c: &TestCluster, what: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", &c.netns(what)])
        .args(args)
        .output()
        .expect("spawn ip netns exec")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ping(c: &TestCluster, pod: &str, to: Ipv4Addr, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["ping", "-c2", "-i0.2", "-W2"];
    args.extend_from_slice(extra);
    let to = to.to_string();
    args.push(&to);
    exec(c, &format!("pod-default_{pod}"), &args)
}

/// The packets the node's tunnel device sent and received (0, 0 if it has none).
fn tunnel_packets(c: &TestCluster, node: &str) -> (u64, u64) {
    let read = |what: &str| {
        let o = exec(
            c,
            node,
            &[
                "cat",
                &format!("/sys/class/net/flatnet.4/statistics/{what}"),
            ],
        );
        text(&o).trim().parse().unwrap_or(0)
    };
    (read("tx_packets"), read("rx_packets"))
}

fn route_of(c: &TestCluster, node: &str, dst: &str) -> String {
    c.ip(node, &["-4", "route", "show", dst])
}

fn neighbours(c: &TestCluster, node: &str) -> String {
    text(&exec(c, node, &["ip", "neigh", "show", "dev", "flatnet.4"]))
}

fn fdb(c: &TestCluster, node: &str) -> String {
    text(&exec(
        c,
        node,
        &["bridge", "fdb", "show", "dev", "flatnet.4"],
    ))
}

#[test]
fn four_nodes_on_two_segments_full_matrix_and_only_cross_segment_traffic_tunnels() {
    let c = four_on_two("ovl-matrix");
    let out = c.ok(&["check"]);
    assert!(out.contains("12 of 12 exchanges"), "{out}");
    assert!(out.contains("no NAT"), "{out}");

    // Same segment: direct, through eth0. Other segment: via the peer's VTEP on flatnet.4.
    let same = route_of(&c, "node-1", "10.244.3.0/24");
    assert!(same.contains("via 172.18.0.4 dev eth0"), "{same}");
    let other = route_of(&c, "node-1", "10.244.2.0/24");
    assert!(
        other.contains("via 10.244.2.0 dev flatnet.4") && other.contains("onlink"),
        "{other}"
    );
    // Exactly one neighbour and one FDB entry per tunnelled peer.
    let n = neighbours(&c, "node-1");
    assert!(
        n.contains("10.244.2.0 lladdr 0e:fa:ac:13:00:03 PERMANENT"),
        "{n}"
    );
    assert!(
        n.contains("10.244.4.0 lladdr 0e:fa:ac:13:00:05 PERMANENT"),
        "{n}"
    );
    assert_eq!(n.lines().count(), 2, "{n}");
    let f = fdb(&c, "node-1");
    assert!(
        f.contains("0e:fa:ac:13:00:03 dst 172.19.0.3 self permanent"),
        "{f}"
    );
    assert!(
        f.contains("0e:fa:ac:13:00:05 dst 172.19.0.5 self permanent"),
        "{f}"
    );
    assert_eq!(f.lines().count(), 2, "{f}");
    // The VTEP MAC is the one derived from the node IP.
    let link = c.ip("node-1", &["link", "show", "flatnet.4"]);
    assert!(link.contains("link/ether 0e:fa:ac:12:00:02"), "{link}");

    // Each peer's mode, as the agents report it and as the kernel has it.
    eventually(
        "get nodes -o wide shows node-1's peer modes",
        CONVERGE,
        || {
            c.ok(&["get", "nodes", "-o", "wide"])
                .contains("node-2=tunnel,node-3=direct,node-4=tunnel")
        },
    );
    let topo = c.ok(&["topology"]);
    for want in [
        "10.244.2.0/24 via 10.244.2.0 dev flatnet.4 (tunnel to node-2)",
        "10.244.3.0/24 via 172.18.0.4 (direct)",
        "eth0 172.19.0.3 (segment 1)",
    ] {
        assert!(topo.contains(want), "{want} not in\n{topo}");
    }

    // Converged, a pass changes nothing: no entry is set again and again.
    let log = c.state_dir().join("nodes/node-1/agent.log");
    let sets = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("entry set") || l.contains("route added"))
            .count()
    };
    let settled = sets();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        sets(),
        settled,
        "the agent keeps re-setting entries:\n{}",
        log.display()
    );

    // Same-segment traffic leaves both tunnel devices alone…
    let (p2, p3) = (pod_ip(&c, "p2"), pod_ip(&c, "p3"));
    let before = (tunnel_packets(&c, "node-1"), tunnel_packets(&c, "node-3"));
    assert!(ping(&c, "p1", p3, &[]).status.success());
    let after = (tunnel_packets(&c, "node-1"), tunnel_packets(&c, "node-3"));
    assert_eq!(before, after, "same-segment traffic went through a tunnel");
    // …while cross-segment traffic goes through them, both ways.
    let (tx, rx) = tunnel_packets(&c, "node-1");
    assert!(ping(&c, "p1", p2, &[]).status.success());
    let (tx2, rx2) = tunnel_packets(&c, "node-1");
    assert!(tx2 >= tx + 2 && rx2 >= rx + 2, "{tx}->{tx2}, {rx}->{rx2}");
}

#[test]
fn a_tunnelled_path_passes_the_tunnel_mtu_answers_one_more_with_icmp_and_carries_bulk_tcp() {
    let c = four_on_two("ovl-mtu");
    let p2 = pod_ip(&c, "p2");
    // The tunnel device has the uplink's MTU less the 50 bytes VXLAN over IPv4 adds.
    let link = c.ip("node-1", &["link", "show", "flatnet.4"]);
    assert!(link.contains("mtu 1450"), "{link}");
    // 1450 bytes with DF (1422 of ICMP payload + 8 + 20) pass…
    let fits = ping(&c, "p1", p2, &["-M", "do", "-s", "1422"]);
    assert!(fits.status.success(), "{}", text(&fits));
    // …1451 get the node's ICMP "fragmentation needed", naming the MTU: no silent blackhole.
    let over = ping(&c, "p1", p2, &["-M", "do", "-s", "1423"]);
    assert!(!over.status.success());
    let said = text(&over);
    assert!(
        said.contains("mtu = 1450") || said.contains("mtu=1450"),
        "no clear answer to an oversized DF packet: {said}"
    );
    // Bulk TCP from a pod at the uplink MTU across the tunnel: path MTU discovery does it.
    let mut server = Command::new("ip")
        .args(["netns", "exec", &c.netns("pod-default_p2")])
        .args(["iperf3", "-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn iperf3 -s");
    std::thread::sleep(Duration::from_millis(500));
    let client = exec(
        &c,
        "pod-default_p1",
        &[
            "iperf3",
            "-c",
            &p2.to_string(),
            "-p",
            "5201",
            "-n",
            "8M",
            "--connect-timeout",
            "3000",
        ],
    );
    let _ = server.kill();
    let _ = server.wait();
    assert!(client.status.success(), "{}", text(&client));
}

fn registry(c: &TestCluster) -> Registry {
    Registry::new(c.state_dir().join("registry"))
}

#[test]
fn a_node_moved_to_the_other_segment_flips_its_mode_on_every_peer() {
    let c = four_on_two("ovl-move");
    // node-4 moves from segment 1 (172.19.0.5) to segment 0 (172.18.0.5): its port to br0,
    // its address and default route, and its record.
    let underlay = c.netns("underlay");
    common::run_ok(
        "ip",
        &["-n", &underlay, "link", "set", "node-4", "master", "br0"],
    );
    c.ip("node-4", &["addr", "flush", "dev", "eth0"]);
    c.ip("node-4", &["addr", "add", "172.18.0.5/16", "dev", "eth0"]);
    c.ip("node-4", &["route", "add", "default", "via", "172.18.0.1"]);
    let reg = registry(&c);
    let mut rec: NodeRecord = reg
        .list()
        .expect("list the registry")
        .into_iter()
        .find_map(|l| l.record.ok().filter(|r| r.name == "node-4"))
        .expect("node-4's record");
    rec.node_ips = vec!["172.18.0.5".parse().unwrap()];
    reg.put(&rec).expect("rewrite node-4's record");
    // Its published network (172.19.0.5/16 still) no longer matches its address: its agent
    // publishes the one its kernel has, and the record is whole again.
    eventually("node-4's agent publishes its new network", CONVERGE, || {
        record_of(&c, "node-4").node_networks == ["172.18.0.5/16".parse().unwrap()]
    });

    for peer in ["node-1", "node-3"] {
        eventually(&format!("{peer} routes node-4 directly"), CONVERGE, || {
            route_of(&c, peer, "10.244.4.0/24").contains("via 172.18.0.5 dev eth0")
        });
    }
    eventually("node-2 tunnels to node-4's new address", CONVERGE, || {
        route_of(&c, "node-2", "10.244.4.0/24").contains("dev flatnet.4")
            && fdb(&c, "node-2").contains("0e:fa:ac:12:00:05 dst 172.18.0.5")
            && !fdb(&c, "node-2").contains("0e:fa:ac:13:00:05")
    });
    eventually(
        "node-4 routes node-1 directly and tunnels to node-2",
        CONVERGE,
        || {
            route_of(&c, "node-4", "10.244.1.0/24").contains("via 172.18.0.2 dev eth0")
                && route_of(&c, "node-4", "10.244.2.0/24").contains("dev flatnet.4")
        },
    );
    // node-1 no longer tunnels to node-4: its entries went.
    assert!(!neighbours(&c, "node-1").contains("10.244.4.0"));
    assert!(!fdb(&c, "node-1").contains("0e:fa:ac:13:00:05"));
    eventually("the matrix passes again", CONVERGE, || {
        c.flatnet(&["check"]).status.success()
    });
}

#[test]
fn node_remove_leaves_no_route_neighbour_fdb_entry_or_idle_device() {
    let c = four_on_two("ovl-remove");
    c.ok(&["node", "remove", "node-2"]);
    eventually("node-1 forgets node-2", CONVERGE, || {
        route_of(&c, "node-1", "10.244.2.0/24").is_empty()
            && !neighbours(&c, "node-1").contains("10.244.2.0")
            && !fdb(&c, "node-1").contains("0e:fa:ac:13:00:03")
    });
    // node-4 still needs the device; once it goes too, nothing does.
    assert!(route_of(&c, "node-1", "10.244.4.0/24").contains("flatnet.4"));
    c.ok(&["node", "remove", "node-4"]);
    eventually("node-1's tunnel device goes", CONVERGE, || {
        !c.ip("node-1", &["-o", "link"]).contains("flatnet.4")
    });
    // A node added on segment 1 brings it back.
    let out = c.ok(&["node", "add", "--subnet", "1"]);
    assert!(out.contains("node-2"), "{out}");
    eventually("node-1 tunnels to the new node-2", CONVERGE, || {
        route_of(&c, "node-1", "10.244.2.0/24").contains("dev flatnet.4")
    });
}

#[test]
fn a_deleted_fdb_entry_and_a_rewritten_vtep_mac_are_repaired_and_foreign_entries_stay() {
    let c = four_on_two("ovl-repair");
    let ns = c.netns("node-1");
    // Someone else's entries on the device.
    common::run_ok(
        "ip",
        &[
            "netns",
            "exec",
            &ns,
            "bridge",
            "fdb",
            "append",
            "02:00:00:00:00:99",
            "dev",
            "flatnet.4",
            "dst",
            "192.0.2.1",
            "self",
            "permanent",
        ],
    );
    c.ip(
        "node-1",
        &[
            "neigh",
            "add",
            "192.0.2.7",
            "lladdr",
            "02:00:00:00:00:98",
            "dev",
            "flatnet.4",
            "nud",
            "permanent",
        ],
    );
    // Left alone across resyncs (the agent resyncs every second here).
    std::thread::sleep(Duration::from_secs(3));
    assert!(fdb(&c, "node-1").contains("02:00:00:00:00:99 dst 192.0.2.1"));
    assert!(neighbours(&c, "node-1").contains("192.0.2.7"));
    // Now the damage. (Setting a MAC makes the kernel flush the device's neighbour entries,
    // foreign ones too: the agent puts back its own.)
    common::run_ok(
        "ip",
        &[
            "netns",
            "exec",
            &ns,
            "bridge",
            "fdb",
            "del",
            "0e:fa:ac:13:00:03",
            "dev",
            "flatnet.4",
            "self",
        ],
    );
    c.ip(
        "node-1",
        &["neigh", "del", "10.244.4.0", "dev", "flatnet.4"],
    );
    c.ip(
        "node-1",
        &["link", "set", "flatnet.4", "address", "0e:00:00:00:00:01"],
    );
    eventually(
        "the agent repairs its entries and its MAC",
        CONVERGE,
        || {
            fdb(&c, "node-1").contains("0e:fa:ac:13:00:03 dst 172.19.0.3 self permanent")
                && neighbours(&c, "node-1").contains("10.244.4.0 lladdr 0e:fa:ac:13:00:05")
                && c.ip("node-1", &["link", "show", "flatnet.4"])
                    .contains("link/ether 0e:fa:ac:12:00:02")
        },
    );
    assert!(fdb(&c, "node-1").contains("02:00:00:00:00:99 dst 192.0.2.1"));
    let out = c.ok(&["check"]);
    assert!(out.contains("12 of 12 exchanges"), "{out}");
}

#[test]
fn down_leaves_nothing_of_a_two_segment_cluster() {
    let c = four_on_two("ovl-down");
    c.ok(&["down"]);
    assert!(c.namespaces().is_empty(), "{:?}", c.namespaces());
    assert!(!c.state_dir().exists());
}

#[test]
fn host_gw_reports_a_peer_that_is_not_on_a_link_and_hybrid_tunnels_to_it() {
    let mut f = Fixture::new("ovl-hostgw");
    f.cfg.overlay.backend = Backend::HostGw;
    f.put(&node1());
    // On no link of node-1 (whose only network is 172.18.0.0/16, with no default route).
    f.put(&node("node-2", "192.0.2.3", "10.244.2.0/24"));
    f.put(&node("node-3", "172.18.0.4", "10.244.3.0/24"));
    let err = f.reconcile().expect_err("host-gw cannot route node-2");
    let said = err.to_string();
    assert!(
        said.contains("node-2") && said.contains("not on a link"),
        "{said}"
    );
    // The peer that is on the link is routed all the same, and nothing is tunnelled.
    assert!(f.table().contains("10.244.3.0/24 via 172.18.0.4 dev eth0"));
    assert!(!f.node.links().iter().any(|l| l == "flatnet.4"));

    f.cfg.overlay.backend = Backend::Hybrid;
    f.reconcile().expect("hybrid tunnels to node-2");
    assert!(f.node.links().iter().any(|l| l == "flatnet.4"));
    let route = f.node.ip(&["route", "show", "10.244.2.0/24"]);
    assert!(route.contains("via 10.244.2.0 dev flatnet.4"), "{route}");

    // --uninstall takes the device too.
    f.uninstall().expect("uninstall");
    assert!(!f.node.links().iter().any(|l| l == "flatnet.4"));
}

#[test]
fn ipv6_pods_of_a_node_with_no_ipv6_address_go_through_the_ipv4_tunnel() {
    let mut f = Fixture::new("ovl-dual");
    f.dual_stack();
    let mut n2 = dual("node-2", 2);
    n2.node_ips.truncate(1);
    f.put(&dual("node-1", 1));
    f.put(&n2);
    let pass = f.pass();
    assert!(pass.outcome.is_ok(), "{:?}", pass.outcome);
    assert!(pass.refused.is_empty(), "{:?}", pass.refused);
    // IPv4 direct, IPv6 over the IPv4 underlay's device, with its IPv6 neighbour entry.
    assert!(f.table().contains("10.244.2.0/24 via 172.18.0.3 dev eth0"));
    let route6 = f.node.ip(&["-6", "route", "show", "fd00:10:244:2::/64"]);
    assert!(
        route6.contains("via fd00:10:244:2:: dev flatnet.4") && route6.contains("onlink"),
        "{route6}"
    );
    let neigh = f.node.ip(&["-6", "neigh", "show", "dev", "flatnet.4"]);
    assert!(
        neigh.contains("fd00:10:244:2:: lladdr 0e:fa:ac:12:00:03 PERMANENT"),
        "{neigh}"
    );
    let fdb = f.node.sh(&["bridge", "fdb", "show", "dev", "flatnet.4"]);
    assert!(
        fdb.contains("0e:fa:ac:12:00:03 dst 172.18.0.3 self permanent"),
        "{fdb}"
    );
    // Its source check admits node-2's IPv6 pods from node-2's VTEP MAC.
    let table = f.node.sh(&["nft", "list", "table", "inet", "flatnet"]);
    assert!(
        table.contains("ether saddr 0e:fa:ac:12:00:03 ip6 saddr fd00:10:244:2::/64 accept"),
        "{table}"
    );
}

#[test]
fn trace_shows_the_tunnel_hop_and_names_a_missing_fdb_entry() {
    let c = four_on_two("ovl-trace");
    let text_of = |o: std::process::Output| text(&o);
    let ok = text_of(c.flatnet(&["trace", "p1", "p2"]));
    for want in [
        "tunnel/flatnet.4",
        "neighbour 10.244.2.0 lladdr 0e:fa:ac:13:00:03, fdb 0e:fa:ac:13:00:03 dst 172.19.0.3",
        "VXLAN vni 1 udp/4789: outer 172.18.0.2 -> 172.19.0.3 (node-2)",
    ] {
        assert!(ok.contains(want), "{want} not in\n{ok}");
    }
    // Hold node-1's agent still (it would repair the entry within a second), take the FDB
    // entry away, and trace again.
    let nodes: Vec<flatnet::emulator::state::NodeSpec> =
        serde_json::from_str(&c.ok(&["get", "nodes", "-o", "record"])).unwrap();
    let agent = nodes[0].agent.expect("node-1 has an agent").pid;
    // SAFETY: kill(2) on the pid of the agent this test's cluster started; no memory involved.
    let signal = |sig| unsafe { libc::kill(agent as i32, sig) };
    assert_eq!(signal(libc::SIGSTOP), 0);
    let ns = c.netns("node-1");
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "bridge",
            "fdb",
            "del",
            "0e:fa:ac:13:00:03",
        ])
        .args(["dev", "flatnet.4", "self"])
        .status();
    let broken = text_of(c.flatnet(&["trace", "p1", "p2"]));
    assert_eq!(signal(libc::SIGCONT), 0);
    assert!(
        broken.contains("no FDB entry for the VTEP MAC 0e:fa:ac:13:00:03"),
        "{broken}"
    );
    eventually("the agent puts the entry back", CONVERGE, || {
        fdb(&c, "node-1").contains("0e:fa:ac:13:00:03 dst 172.19.0.3")
    });
}

/// The modes an agent reports for its peers, from `get nodes -o wide` (`node-2=tunnel,…`).
fn peers_of(c: &TestCluster, node: &str) -> String {
    c.ok(&["get", "nodes", "-o", "wide"])
        .lines()
        .find(|l| l.starts_with(&format!("{node} ")))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_default()
        .to_string()
}

fn record_of(c: &TestCluster, name: &str) -> NodeRecord {
    registry(c)
        .list()
        .expect("list the registry")
        .into_iter()
        .find_map(|l| l.record.ok().filter(|r| r.name == name))
        .unwrap_or_else(|| panic!("{name}'s record"))
}

/// Calico #9138: two nodes on one link with different masks. node-1 (172.18.0.2) shrinks its
/// mask to /30, so node-3 (172.18.0.4/16) is behind the router for it, while node-3 still
/// sees node-1 on its link. Decided by the kernel alone, node-3 would go direct and node-1's
/// strict reverse-path check would drop what it sends (node-1 routes node-3's pods back
/// through the tunnel); with each node's published network both tunnel.
#[test]
fn mismatched_masks_decide_the_same_mode_on_both_sides() {
    let c = TestCluster::up("ovl-masks", &["--nodes", "3", "--subnets", "2"]);
    for n in 1..=3 {
        c.ok(&[
            "run",
            "--sandbox-only",
            &format!("p{n}"),
            "--node",
            &format!("node-{n}"),
        ]);
    }
    // The emulator publishes each node's mask as it made it.
    assert_eq!(
        record_of(&c, "node-1").node_networks,
        ["172.18.0.2/16".parse().unwrap()]
    );
    // Strict reverse-path filtering on both ends, in the test's own node namespaces.
    for node in ["node-1", "node-3"] {
        for key in ["all", "default", "eth0"] {
            let o = exec(
                &c,
                node,
                &["sysctl", "-w", &format!("net.ipv4.conf.{key}.rp_filter=1")],
            );
            assert!(o.status.success(), "{}", text(&o));
        }
    }
    c.ip("node-1", &["addr", "del", "172.18.0.2/16", "dev", "eth0"]);
    c.ip("node-1", &["addr", "add", "172.18.0.2/30", "dev", "eth0"]);
    c.ip(
        "node-1",
        &["route", "replace", "default", "via", "172.18.0.1"],
    );
    // The asymmetry is real: node-3's kernel has node-1 on its link, node-1's has a gateway.
    assert!(!c
        .ip("node-3", &["route", "get", "172.18.0.2"])
        .contains(" via "));
    assert!(c
        .ip("node-1", &["route", "get", "172.18.0.4"])
        .contains("via 172.18.0.1"));

    eventually("node-1's agent publishes its new mask", CONVERGE, || {
        record_of(&c, "node-1").node_networks == ["172.18.0.2/30".parse().unwrap()]
    });
    eventually("both ends report a tunnel to the other", CONVERGE, || {
        peers_of(&c, "node-1") == "node-2=tunnel,node-3=tunnel"
            && peers_of(&c, "node-3") == "node-1=tunnel,node-2=tunnel"
    });
    assert!(route_of(&c, "node-3", "10.244.1.0/24").contains("dev flatnet.4"));
    assert!(route_of(&c, "node-1", "10.244.3.0/24").contains("dev flatnet.4"));

    // Pods of the two nodes reach each other both ways, through node-3's tunnel too.
    let (p1, p3) = (pod_ip(&c, "p1"), pod_ip(&c, "p3"));
    let (tx, _) = tunnel_packets(&c, "node-3");
    let there = ping(&c, "p3", p1, &[]);
    assert!(there.status.success(), "{}", text(&there));
    let back = ping(&c, "p1", p3, &[]);
    assert!(back.status.success(), "{}", text(&back));
    assert!(tunnel_packets(&c, "node-3").0 >= tx + 4);
    let out = c.ok(&["check"]);
    assert!(out.contains("6 of 6 exchanges"), "{out}");
    assert!(out.contains("no NAT"), "{out}");

    // The mask back to /16: both go direct again.
    c.ip("node-1", &["addr", "del", "172.18.0.2/30", "dev", "eth0"]);
    c.ip("node-1", &["addr", "add", "172.18.0.2/16", "dev", "eth0"]);
    c.ip(
        "node-1",
        &["route", "replace", "default", "via", "172.18.0.1"],
    );
    eventually("both ends go direct again", CONVERGE, || {
        peers_of(&c, "node-1") == "node-2=tunnel,node-3=direct"
            && peers_of(&c, "node-3") == "node-1=direct,node-2=tunnel"
    });
    eventually("the matrix passes again", CONVERGE, || {
        c.flatnet(&["check"]).status.success()
    });
}

/// The decision with published networks, on one agent: a peer on this node's link whose own
/// published network leaves this node out is tunnelled (it would route back through its
/// gateway), and host-gw reports it rather than route one way.
#[test]
fn a_peer_whose_published_mask_leaves_this_node_out_is_tunnelled() {
    let mut f = Fixture::new("ovl-pubmask");
    f.put(&NodeRecord {
        node_networks: vec!["172.18.0.2/16".parse().unwrap()],
        ..node1()
    });
    // On node-1's link (172.18.0.0/16), but node-3's /24 does not hold 172.18.0.2.
    f.put(&NodeRecord {
        node_networks: vec!["172.18.1.4/24".parse().unwrap()],
        ..node("node-3", "172.18.1.4", "10.244.3.0/24")
    });
    f.put(&NodeRecord {
        node_networks: vec!["172.18.0.5/16".parse().unwrap()],
        ..node("node-4", "172.18.0.5", "10.244.4.0/24")
    });
    let pass = f.pass();
    assert!(pass.outcome.is_ok(), "{:?}", pass.outcome);
    assert_eq!(pass.peers["node-3"], "tunnel");
    assert_eq!(pass.peers["node-4"], "direct");
    let route = f.node.ip(&["route", "show", "10.244.3.0/24"]);
    assert!(route.contains("via 10.244.3.0 dev flatnet.4"), "{route}");

    f.cfg.overlay.backend = Backend::HostGw;
    let said = f
        .reconcile()
        .expect_err("host-gw cannot route node-3")
        .to_string();
    assert!(
        said.contains("node-3") && said.contains("published network 172.18.1.4/24"),
        "{said}"
    );
    assert!(f.table().contains("10.244.4.0/24 via 172.18.0.5 dev eth0"));
}

/// `up --backend vxlan`: nodes on one segment tunnel to each other, on the VNI and port
/// asked for, and the cluster shows its backend.
#[test]
fn the_vxlan_backend_tunnels_between_nodes_of_one_segment() {
    let c = TestCluster::up(
        "ovl-vxlan",
        &[
            "--nodes",
            "2",
            "--backend",
            "vxlan",
            "--vxlan-vni",
            "7",
            "--vxlan-port",
            "8472",
        ],
    );
    for n in 1..=2 {
        c.ok(&[
            "run",
            "--sandbox-only",
            &format!("p{n}"),
            "--node",
            &format!("node-{n}"),
        ]);
    }
    let topo = c.ok(&["topology"]);
    assert!(
        topo.lines()
            .next()
            .is_some_and(|l| l.contains("backend vxlan (VXLAN vni 7, udp/8472)")),
        "{topo}"
    );
    assert!(
        topo.contains("10.244.2.0/24 via 10.244.2.0 dev flatnet.4 (tunnel to node-2)"),
        "{topo}"
    );
    let dev = c.ip("node-1", &["-d", "link", "show", "flatnet.4"]);
    assert!(
        dev.contains("vxlan id 7") && dev.contains("dstport 8472"),
        "{dev}"
    );
    eventually("both report a tunnel", CONVERGE, || {
        peers_of(&c, "node-1") == "node-2=tunnel" && peers_of(&c, "node-2") == "node-1=tunnel"
    });
    let (tx, rx) = tunnel_packets(&c, "node-1");
    assert!(ping(&c, "p1", pod_ip(&c, "p2"), &[]).status.success());
    let (tx2, rx2) = tunnel_packets(&c, "node-1");
    assert!(tx2 >= tx + 2 && rx2 >= rx + 2, "{tx}->{tx2}, {rx}->{rx2}");
    let out = c.ok(&["check"]);
    assert!(out.contains("2 of 2 exchanges"), "{out}");
    assert!(out.contains("no NAT"), "{out}");
}

/// The switch the agent uses on kernels older than 5.7 (this one is newer, so it is called
/// here directly): tx checksum offload of a VXLAN device goes off, as `ethtool -k` sees it.
#[test]
fn tx_checksum_offload_turns_off_on_a_vxlan_device() {
    let ns = common::node_ns("ovl-csum");
    ns.ip(&[
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "9",
        "dstport",
        "4789",
        "local",
        "192.0.2.1",
        "nolearning",
    ]);
    let features = || ns.sh(&["ethtool", "-k", "vx0"]);
    assert!(features().contains("tx-checksumming: on"), "{}", features());
    common::agent::block_on(async {
        let nl = flatnet::netlink::Netlink::in_netns(ns.ns()).expect("netlink in the netns");
        assert!(nl.tx_checksum("vx0").expect("read tx checksumming"));
        nl.set_tx_checksum("vx0", false)
            .expect("turn tx checksumming off");
        assert!(!nl.tx_checksum("vx0").expect("read tx checksumming"));
        let missing = nl.tx_checksum("nosuchdev").expect_err("no such device");
        assert_eq!(missing.errno(), Some(libc::ENODEV), "{missing}");
    });
    let now = features();
    assert!(now.contains("tx-checksumming: off"), "{now}");
}
