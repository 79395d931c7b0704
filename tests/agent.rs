//! The node agent against the real kernel: a fake node netns per test with an underlay veth
//! (172.18.0.2/16) so that other nodes' IPs are reachable gateways, a registry directory and a
//! CNI conf dir per test, the agent run on its own thread and runtime (or one pass at a time),
//! and `ip` inside the namespace as the independent witness of the routes.
//!
//! Nothing here touches the machine's own namespace: every link and route lives in a namespace
//! the harness made and removes on drop.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::agent::{
    born, dual, node, node1, node2, node3, routes, Fixture, LONG_RESYNC, NODE1_ROUTES, PATIENCE,
    SHORT_RESYNC,
};
use common::wait_until;
use flatnet::agent::overlay::Backend;
use flatnet::agent::{self, RouteFailure, Status};

/// The agent routes every other node's pod CIDR via that node's IP, never its own, and only
/// then writes the conflist with its own pod CIDR.
#[test]
fn routes_other_nodes_then_writes_the_conflist() {
    let mut fx = Fixture::new("steady");
    fx.cfg.mtu = Some(1450);
    assert!(!fx.conflist_path().exists());
    let (agent, conf) = fx.converge_three_nodes(LONG_RESYNC);
    let table = fx.table();
    assert!(
        table.contains("unicast 10.244.2.0/24 via 172.18.0.3 dev eth0 proto 103 scope global"),
        "{table}"
    );
    assert!(
        table.contains("unicast 10.244.3.0/24 via 172.18.0.4 dev eth0 proto 103 scope global"),
        "{table}"
    );
    assert!(
        !table.contains("10.244.1."),
        "a route for its own pods: {table}"
    );
    assert!(
        fx.has_route("unicast 172.18.0.0/16 dev eth0 proto kernel scope link src 172.18.0.2"),
        "{table}"
    );

    assert_eq!(conf["cniVersion"], "1.0.0");
    assert_eq!(conf["name"], "flatnet");
    let plugins = conf["plugins"].as_array().expect("plugins");
    assert_eq!(plugins.len(), 1);
    assert_eq!(plugins[0]["type"], "flatnet-cni");
    assert_eq!(plugins[0]["podCIDRs"], serde_json::json!(["10.244.1.0/24"]));
    assert_eq!(
        plugins[0]["dataDir"],
        fx.cfg.data_dir.to_str().expect("UTF-8 path")
    );
    assert_eq!(plugins[0]["mtu"], 1450);
    // Only the conflist lands in the conf dir: no temp file left beside it.
    let files: Vec<_> = std::fs::read_dir(&fx.cfg.conf_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, vec!["10-flatnet.conflist"]);
    agent.stop();
}

/// Every change to the registry reaches the routes through the watch alone: the resync is an
/// hour away.
#[test]
fn the_watch_follows_nodes_joining_leaving_and_moving() {
    let fx = Fixture::new("watch");
    fx.put(&node1());
    fx.put(&node2());
    let agent = fx.start(LONG_RESYNC);
    fx.wait_conflist(&[("10.244.2.0/24", "172.18.0.3")]);
    fx.wait_routes(&[("10.244.2.0/24", "172.18.0.3")]);

    fx.put(&node3());
    fx.wait_routes(&[
        ("10.244.2.0/24", "172.18.0.3"),
        ("10.244.3.0/24", "172.18.0.4"),
    ]);

    fx.remove("node-2");
    fx.wait_routes(&[("10.244.3.0/24", "172.18.0.4")]);
    assert!(!fx.table().contains("10.244.2.0/24"), "{}", fx.table());

    // The node's IP changes: its route's gateway is replaced in place, not doubled.
    fx.put(&node("node-3", "172.18.0.14", "10.244.3.0/24"));
    fx.wait_routes(&[("10.244.3.0/24", "172.18.0.14")]);
    let held = fx
        .table()
        .lines()
        .filter(|l| l.contains("10.244.3.0/24"))
        .count();
    assert_eq!(held, 1, "{}", fx.table());

    // Its pod CIDR changes: the old route goes, the new one comes.
    fx.put(&node("node-3", "172.18.0.14", "10.244.33.0/24"));
    fx.wait_routes(&[("10.244.33.0/24", "172.18.0.14")]);

    assert_eq!(
        fx.conflist().unwrap()["plugins"][0]["podCIDRs"][0],
        "10.244.1.0/24"
    );
    agent.stop();
}

/// Routes the agent did not make stay as they are, except a foreign route for exactly
/// another node's pod CIDR, which pod traffic cannot work around and the agent takes over.
#[test]
fn routes_it_did_not_make_are_left_alone() {
    let fx = Fixture::new("foreign");
    // Someone else's: a static route elsewhere, a more specific one inside node-2's pod CIDR,
    // a pod's host route (the plugin's protocol), and a route of the agent's protocol in
    // another table (policy routing is not the agent's).
    fx.route("add 192.0.2.0/24 via 172.18.0.50 proto static");
    fx.route("add 10.244.2.128/25 via 172.18.0.60 proto static");
    fx.route("add 10.244.1.5/32 dev peer0 proto 0x66 scope link");
    fx.route("add 10.244.9.0/24 via 172.18.0.9 proto 0x67 table 100");
    // A foreign route for exactly node-3's pod CIDR, and a blackhole for node-2's (as Calico
    // makes them): both are taken over, since pod traffic depends on them.
    fx.route("add 10.244.3.0/24 via 172.18.0.77 proto static");
    fx.route("add blackhole 10.244.2.0/24 proto static");
    let before = fx.table();

    let (agent, _) = fx.converge_three_nodes(LONG_RESYNC);
    agent.stop();

    let after = fx.table();
    for kept in [
        "unicast 192.0.2.0/24 via 172.18.0.50 dev eth0 proto static scope global",
        "unicast 10.244.2.128/25 via 172.18.0.60 dev eth0 proto static scope global",
        "unicast 10.244.1.5 dev peer0 proto 102 scope link",
        "unicast 172.18.0.0/16 dev eth0 proto kernel scope link src 172.18.0.2",
    ] {
        assert!(before.contains(kept), "setup: {kept} in\n{before}");
        assert!(after.contains(kept), "lost {kept}:\n{after}");
    }
    let held: Vec<_> = after
        .lines()
        .filter(|l| l.contains("10.244.3.0/24"))
        .map(str::trim)
        .collect();
    assert_eq!(
        held,
        vec!["unicast 10.244.3.0/24 via 172.18.0.4 dev eth0 proto 103 scope global"],
        "{after}"
    );
    let held: Vec<_> = after
        .lines()
        .filter(|l| l.contains("10.244.2.0/24"))
        .map(str::trim)
        .collect();
    assert_eq!(
        held,
        vec!["unicast 10.244.2.0/24 via 172.18.0.3 dev eth0 proto 103 scope global"],
        "{after}"
    );
    let other_table = fx.node.ip(&["route", "show", "table", "100"]);
    assert!(
        other_table.contains("10.244.9.0/24 via 172.18.0.9 dev eth0 proto 103"),
        "{other_table}"
    );
}

/// A pod CIDR on the node network is refused (a route there would cut the node off its
/// link), and a node whose IP is unreachable gets no route: the agent routes the others
/// anyway, reports both, and withholds the conflist until every route is in.
#[test]
fn the_conflist_waits_for_every_route() {
    let mut fx = Fixture::new("gate");
    // host-gw: the hybrid default would tunnel to the unreachable node instead.
    fx.cfg.overlay.backend = Backend::HostGw;
    fx.put(&node1());
    fx.put(&node2());
    fx.put(&node("node-3", "198.51.100.7", "10.244.3.0/24"));
    fx.put(&node("node-4", "172.18.0.5", "172.18.0.0/16"));

    let pass = fx.pass();
    assert_eq!(pass.refused.len(), 1, "{:?}", pass.refused);
    assert_eq!(pass.refused[0].record, "node-4");
    let failures = match pass.outcome {
        Err(agent::Error::Routes(f)) => f,
        other => panic!("expected route failures, got {other:?}"),
    };
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures.iter().any(
            |f| matches!(f, RouteFailure::Unroutable(u) if u.cidr.to_string() == "10.244.3.0/24")
        ),
        "{failures:?}"
    );
    assert_eq!(
        fx.agent_routes(),
        routes(&[("10.244.2.0/24", "172.18.0.3")])
    );
    assert!(fx.has_route("unicast 172.18.0.0/16 dev eth0 proto kernel scope link src 172.18.0.2"));
    assert!(!fx.conflist_path().exists());

    // Fixing the records through the registry makes the running agent ready.
    let agent = fx.start(LONG_RESYNC);
    fx.remove("node-4");
    let written = wait_until(Duration::from_millis(300), || fx.conflist_path().exists());
    assert!(!written, "conflist written while node-3 is unroutable");
    fx.put(&node3());
    let want = NODE1_ROUTES;
    fx.wait_conflist(&want);
    fx.wait_routes(&want);
    agent.stop();
}

/// A restarted agent heals what was done while it was down; a running one heals hand edits
/// at its next resync, with no change to the registry to wake it.
#[test]
fn restarts_and_resyncs_heal_hand_edits() {
    let fx = Fixture::new("heal");
    let want = NODE1_ROUTES;
    let (agent, _) = fx.converge_three_nodes(LONG_RESYNC);
    agent.stop();

    // While it is down: a gateway edited, a route deleted, and a route left by a node that
    // has since left the cluster.
    fx.route("replace 10.244.2.0/24 via 172.18.0.99 proto 0x67");
    fx.route("del 10.244.3.0/24");
    fx.route("add 10.244.9.0/24 via 172.18.0.10 proto 0x67");
    assert_eq!(
        fx.agent_routes(),
        routes(&[
            ("10.244.2.0/24", "172.18.0.99"),
            ("10.244.9.0/24", "172.18.0.10")
        ])
    );
    let agent = fx.start(LONG_RESYNC);
    fx.wait_routes(&want);
    agent.stop();

    // One pass that heals a route leaves the conflist alone: same content, same file (every
    // rewrite would be an event for the runtime's watcher).
    let inode = std::fs::metadata(fx.conflist_path()).unwrap().ino();
    fx.route("del 10.244.2.0/24");
    assert_eq!(fx.reconcile().unwrap(), Status::Ready);
    assert_eq!(fx.agent_routes(), routes(&want));
    assert_eq!(std::fs::metadata(fx.conflist_path()).unwrap().ino(), inode);

    // Running, with a short resync and a registry nobody touches.
    let agent = fx.start(SHORT_RESYNC);
    fx.wait_routes(&want);
    fx.route("del 10.244.3.0/24");
    fx.wait_routes(&want);
    // A hand edit without the agent's protocol makes a foreign route for a pod CIDR: taken
    // over as well.
    fx.route("replace 10.244.2.0/24 via 172.18.0.99");
    fx.wait_routes(&want);
    assert!(
        !fx.table().contains("172.18.0.99"),
        "the hand-edited route is still there:\n{}",
        fx.table()
    );
    agent.stop();
    assert_eq!(std::fs::metadata(fx.conflist_path()).unwrap().ino(), inode);
}

/// Without its own record the agent touches nothing: no routes, no conflist. Once the record
/// appears, it gets ready.
#[test]
fn waits_for_its_own_node() {
    let fx = Fixture::new("own");
    fx.put(&node2());
    fx.put(&node3());
    assert_eq!(fx.reconcile().unwrap(), Status::WaitingForOwnNode);
    assert!(fx.agent_routes().is_empty(), "{}", fx.table());
    assert!(!fx.conflist_path().exists());

    let agent = fx.start(Duration::from_millis(50));
    fx.assert_nothing_for(Duration::from_millis(400));

    fx.put(&node1());
    let want = NODE1_ROUTES;
    fx.wait_conflist(&want);
    fx.wait_routes(&want);

    // Losing its record again changes nothing either: the routes stay over many resyncs.
    fx.remove("node-1");
    let changed = wait_until(Duration::from_millis(400), || {
        fx.agent_routes() != routes(&want)
    });
    assert!(!changed, "routes changed:\n{}", fx.table());
    agent.stop();
    assert_eq!(fx.reconcile().unwrap(), Status::WaitingForOwnNode);
    assert_eq!(fx.agent_routes(), routes(&want));
}

/// Uninstall removes the conflist and exactly the agent's routes.
#[test]
fn uninstall_removes_exactly_its_own() {
    let fx = Fixture::new("uninstall");
    fx.route("add 192.0.2.0/24 via 172.18.0.50 proto static");
    fx.route("add 198.51.100.0/24 via 172.18.0.51");
    fx.route("add 10.244.1.5/32 dev peer0 proto 0x66 scope link");
    let (agent, _) = fx.converge_three_nodes(LONG_RESYNC);
    agent.stop();
    let mut others: Vec<String> = fx
        .table()
        .lines()
        .filter(|l| !l.contains("proto 103"))
        .map(String::from)
        .collect();
    assert_eq!(others.len(), 4, "{others:?}");

    assert_eq!(fx.uninstall().unwrap(), 2);
    assert!(!fx.conflist_path().exists());
    assert!(fx.agent_routes().is_empty(), "{}", fx.table());
    let mut after: Vec<String> = fx.table().lines().map(String::from).collect();
    others.sort();
    after.sort();
    assert_eq!(after, others);

    // Again: nothing left to do, and absent is fine.
    assert_eq!(fx.uninstall().unwrap(), 0);
    assert!(fx.cfg.conf_dir.is_dir());
}

/// Each hostile record a campaign tried is refused, the refusal is in the agent's status, and
/// the routes and the conflist stay exactly as they were.
#[test]
fn hostile_records_are_refused_and_change_nothing() {
    let mut fx = Fixture::new("hostile");
    fx.cfg.status_file = Some(fx.cfg.conf_dir.with_file_name("status.json"));
    let want = NODE1_ROUTES;
    let (agent, _) = fx.converge_three_nodes(SHORT_RESYNC);
    let hostile = [
        (
            node("inside", "172.18.0.9", "10.244.2.128/25"),
            "created earlier",
        ),
        // Same CIDR as node-3, and a name that sorts first.
        (
            node("aaa", "172.18.0.9", "10.244.3.0/24"),
            "created earlier",
        ),
        (node("podip", "10.244.2.5", "10.244.9.0/24"), "node IP"),
        (
            node("wide", "172.18.0.9", "128.0.0.0/1"),
            "not inside the cluster",
        ),
        (
            node("underlay", "172.18.0.9", "172.18.128.0/17"),
            "not inside the cluster",
        ),
        (
            node("whole", "172.18.0.9", "10.244.0.0/16"),
            "created earlier",
        ),
        (
            node("own-part", "172.18.0.9", "10.244.1.0/25"),
            "created earlier",
        ),
    ];
    for (record, why) in hostile {
        fx.put(&record);
        fx.wait_refused(&record.name, why);
        assert_eq!(fx.agent_routes(), routes(&want), "after {record:?}");
        fx.remove(&record.name);
    }
    // A record that names this node under another file name.
    fx.write_raw(
        "evil",
        r#"{"name":"node-1","nodeIPs":["172.18.0.9"],"podCIDRs":["10.244.9.0/24"]}"#,
    );
    fx.wait_refused("evil", "is not its key");
    assert_eq!(fx.agent_routes(), routes(&want));
    let report = fx.report().unwrap();
    assert!(report.ready, "{report:?}");
    agent.stop();
    assert_eq!(
        fx.conflist().unwrap()["plugins"][0]["podCIDRs"][0],
        "10.244.1.0/24"
    );
}

/// A dual-stack cluster: each other node's pod CIDR of each family is routed via its node
/// address of that family, the conflist carries both of this node's, the egress chain covers
/// both; a node with no IPv6 address is routed by IPv4 only and reported; nodes leaving and
/// joining move the routes of both families.
#[test]
fn routes_both_families_of_a_dual_stack_cluster() {
    let mut fx = Fixture::new("dual");
    // host-gw: the hybrid default would tunnel node-3's IPv6 pods over IPv4 (tests/overlay.rs).
    fx.cfg.overlay.backend = Backend::HostGw;
    fx.dual_stack();
    fx.cfg.status_file = Some(fx.cfg.conf_dir.with_file_name("status.json"));
    let mut n3 = dual("node-3", 3);
    n3.node_ips.truncate(1);
    for n in [dual("node-1", 1), dual("node-2", 2), n3] {
        fx.put(&n);
    }
    let agent = fx.start(SHORT_RESYNC);
    fx.wait_routes(&[
        ("10.244.2.0/24", "172.18.0.3"),
        ("10.244.3.0/24", "172.18.0.4"),
    ]);
    fx.wait_routes6(&[("fd00:10:244:2::/64", "fc00:f853:ccd:e793::3")]);
    fx.wait_refused("node-3", "IPv6 pod CIDR fd00:10:244:3::/64 is not routed");
    let conf = fx.conflist().unwrap();
    assert_eq!(
        conf["plugins"][0]["podCIDRs"],
        serde_json::json!(["10.244.1.0/24", "fd00:10:244:1::/64"])
    );
    let table = fx.node.sh(&["nft", "list", "table", "inet", "flatnet"]);
    for rule in [
        "ip6 saddr fd00:10:244:1::/64 ip6 daddr fd00:10:244::/56 return",
        "ip6 saddr fd00:10:244:1::/64 masquerade",
        "fc00:f853:ccd:e793::3",
    ] {
        assert!(table.contains(rule), "{rule} not in\n{table}");
    }

    // node-3 gets its IPv6 address, node-2 leaves, node-4 joins.
    fx.put(&dual("node-3", 3));
    fx.remove("node-2");
    fx.put(&dual("node-4", 4));
    fx.wait_routes(&[
        ("10.244.3.0/24", "172.18.0.4"),
        ("10.244.4.0/24", "172.18.0.5"),
    ]);
    fx.wait_routes6(&[
        ("fd00:10:244:3::/64", "fc00:f853:ccd:e793::4"),
        ("fd00:10:244:4::/64", "fc00:f853:ccd:e793::5"),
    ]);
    agent.stop();
    // Uninstall takes the routes of both families.
    assert_eq!(fx.uninstall().unwrap(), 4);
    assert!(fx.agent_routes6().is_empty());
}

/// An overlap is decided by the list alone: a fresh agent (no routes yet) routes the contested
/// range to its oldest claimant at once, as an agent that routed it before does; a tie routes
/// it to nobody; an older claim on this node's own range makes the agent wait, touching
/// nothing.
#[test]
fn overlaps_go_to_the_oldest_claim_on_every_node_alike() {
    let mut fx = Fixture::new("elder");
    fx.cfg.status_file = Some(fx.cfg.conf_dir.with_file_name("status.json"));
    for n in [node1(), node2(), node3()] {
        fx.put(&n);
    }
    fx.put(&born(node("copy", "172.18.0.9", "10.244.3.0/24"), 100));
    let agent = fx.start(SHORT_RESYNC);
    fx.wait_routes(&NODE1_ROUTES);
    fx.wait_refused("copy", "node-3's 10.244.3.0/24, which was created earlier");

    // Created in the same second as node-3: neither keeps the range, on any node.
    fx.put(&born(node("copy", "172.18.0.9", "10.244.3.0/24"), 3));
    fx.wait_refused("node-3", "neither was created earlier");
    fx.wait_routes(&[("10.244.2.0/24", "172.18.0.3")]);
    fx.remove("copy");
    fx.wait_routes(&NODE1_ROUTES);

    // An older claim on node-1's own range: node-1 waits and changes nothing.
    fx.put(&born(node("elder", "172.18.0.9", "10.244.1.0/24"), 0));
    fx.wait_refused("node-1", "elder's 10.244.1.0/24, which was created earlier");
    let waiting = wait_until(PATIENCE, || fx.report().is_some_and(|r| !r.ready));
    assert!(waiting, "{:?}", fx.report());
    std::thread::sleep(SHORT_RESYNC * 3);
    assert_eq!(fx.agent_routes(), routes(&NODE1_ROUTES));
    agent.stop();
}

/// A record that becomes unreadable is not a departure: its route stays (the last good
/// state), nobody may take its range meanwhile, and only its removal deletes the route.
#[test]
fn an_unreadable_record_keeps_its_route() {
    let mut fx = Fixture::new("corrupt");
    fx.cfg.status_file = Some(fx.cfg.conf_dir.with_file_name("status.json"));
    let want = NODE1_ROUTES;
    let (agent, _) = fx.converge_three_nodes(SHORT_RESYNC);

    fx.write_raw(
        "node-2",
        "{\"name\":\"node-2\",\"nodeIPs\":[\"172.18.0.3\"],\"podC\x00\x7f",
    );
    fx.wait_refused("node-2", "unreadable");
    fx.put(&node("thief", "172.18.0.66", "10.244.2.0/24"));
    fx.wait_refused("thief", "unreadable or refused");
    // Several resyncs later, the route is still there and still node-2's.
    std::thread::sleep(SHORT_RESYNC * 3);
    assert_eq!(fx.agent_routes(), routes(&want));
    fx.remove("thief");

    // Made invalid rather than unreadable: the same.
    fx.put(&node("node-2", "172.18.0.3", "128.0.0.0/1"));
    fx.wait_refused("node-2", "not inside the cluster");
    std::thread::sleep(SHORT_RESYNC * 3);
    assert_eq!(fx.agent_routes(), routes(&want));

    // Fixed, then gone for real: the route follows.
    fx.put(&node2());
    let fixed = wait_until(PATIENCE, || {
        fx.report().is_some_and(|r| r.refused.is_empty())
    });
    assert!(fixed, "{:?}", fx.report());
    fx.remove("node-2");
    fx.wait_routes(&[("10.244.3.0/24", "172.18.0.4")]);
    agent.stop();
}

/// A pass reads the table's marker and counters over nfnetlink: what it reads is what `nft
/// list` (the witness) shows, a missing table reads as none, and a table whose comment was
/// changed by hand is not the agent's. Writes (through libnftables) are one transaction: a
/// refused script leaves the table as it was.
#[test]
fn the_table_is_read_over_nfnetlink_as_nft_lists_it() {
    use flatnet::agent::nft;
    let ns = common::TestNs::new("nftread");
    assert_eq!(nft::read(Some(&ns.ns())).unwrap(), None);
    let body = "  counter spoofed_ipv4 { packets 7 bytes 420 }\n\
                \x20 counter router_adverts {}\n\
                \x20 chain c {\n    counter name spoofed_ipv4 drop\n  }\n";
    let ruleset = nft::Ruleset::new(body);
    nft::write(&ruleset, Some(&ns.ns())).unwrap();
    let found = nft::read(Some(&ns.ns()))
        .unwrap()
        .expect("the table is there");
    assert!(ruleset.is_current(&found), "{found:?}");
    let listing = ns.sh(&["nft", "list", "table", "inet", "flatnet"]);
    assert_eq!(found.counters, nft::counters(&listing), "{listing}");
    assert_eq!(found.counters.get("spoofed_ipv4"), Some(&7), "{found:?}");

    // Edited by hand: another table of the same name, with the comment of another content.
    let other = nft::Ruleset::new("  chain d {\n  }\n");
    nft::write(&other, Some(&ns.ns())).unwrap();
    let found = nft::read(Some(&ns.ns()))
        .unwrap()
        .expect("the table is there");
    assert!(!ruleset.is_current(&found) && other.is_current(&found));
    assert!(found.counters.is_empty(), "{found:?}");
    // A script nft refuses changes nothing, and its error says why.
    let bad = nft::Ruleset::new("  chain e {\n    no such statement\n  }\n");
    let err = nft::write(&bad, Some(&ns.ns())).unwrap_err().to_string();
    assert!(err.contains("syntax error"), "{err}");
    let found = nft::read(Some(&ns.ns())).unwrap();
    assert!(found.is_some_and(|f| other.is_current(&f)));
    nft::remove(Some(&ns.ns())).unwrap();
    assert_eq!(nft::read(Some(&ns.ns())).unwrap(), None);
}
