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
use flatnet::emulator::state::{Family, NodeSpec, PodRecord};
use flatnet::netns::{self, NetNs};
use ipnetwork::Ipv4Network;

const CONVERGE: Duration = Duration::from_secs(10);

fn pods(c: &TestCluster) -> Vec<PodRecord> {
    serde_json::from_str(&c.ok(&["get", "pods", "-o", "record"])).expect("pods as JSON")
}

fn nodes(c: &TestCluster) -> Vec<NodeSpec> {
    serde_json::from_str(&c.ok(&["get", "nodes", "-o", "record"])).expect("nodes as JSON")
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
                "--sandbox-only",
                &format!("{pod}{node}"),
                "--node",
                &format!("node-{node}"),
            ]);
        }
    }
    // With no node given, the least-loaded one: all have 2, so node-1.
    assert!(c
        .ok(&["run", "--sandbox-only", "extra"])
        .contains("on node-1"));
    c.ok(&["delete", "pod", "extra"]);

    let nodes = nodes(&c);
    let pods = pods(&c);
    assert_eq!(pods.len(), 6);
    let mut ips = BTreeSet::new();
    for p in &pods {
        let node = nodes.iter().find(|n| n.name == p.node).unwrap();
        let ip = p.ipv4().expect("every pod has an IP");
        let cidr = node.pod_cidr.expect("an IPv4 cluster");
        assert!(cidr.contains(ip), "{ip} outside {cidr}");
        assert!(ips.insert(ip), "{ip} handed out twice");
        // The witness: the address is on the pod's eth0.
        let addr = c.ip(
            &format!("pod-default_{}", p.name),
            &["-4", "-o", "addr", "show", "eth0"],
        );
        assert!(addr.contains(&format!("{ip}/32")), "{addr}");
        // The pod reaches its node's IP and the node reaches the pod (kubelet's probes).
        assert!(ping(&c, &format!("pod-default_{}", p.name), node.node_ip));
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
    c.ok(&["run", "--sandbox-only", "gone", "--node", "node-3"]);
    c.ok(&["run", "--sandbox-only", "stays", "--node", "node-1"]);
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
    assert!(!c.namespaces().contains(&c.netns("pod-default_gone")));
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
    c.ok(&["run", "--sandbox-only", "back", "--node", "node-3"]);
    assert!(c.ok(&["check"]).contains("no NAT"));

    // Several at once: each is Ready when the command returns, and routed everywhere.
    let out = c.ok(&["node", "add", "--count", "2"]);
    assert!(
        out.contains("node-4 added") && out.contains("node-5 added"),
        "{out}"
    );
    for (n, peer) in [
        ("node-1", "10.244.5.0/24 via 172.18.0.6"),
        ("node-4", "10.244.5.0/24 via 172.18.0.6"),
        ("node-5", "10.244.4.0/24 via 172.18.0.5"),
    ] {
        eventually(&format!("{n} routes {peer}"), CONVERGE, || {
            c.agent_routes(n).iter().any(|r| r.starts_with(peer))
        });
    }
    c.ok(&["run", "--sandbox-only", "late", "--node", "node-5"]);
    assert!(c.ok(&["check"]).contains("no NAT"));
    assert!(!c.flatnet(&["node", "add", "--count", "0"]).status.success());
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
    a.ok(&["run", "--sandbox-only", "p1", "--node", "node-1"]);
    a.ok(&["run", "--sandbox-only", "p2", "--node", "node-2"]);
    b.ok(&["run", "--sandbox-only", "p1"]);
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
    // The half-made cluster says so.
    let out = c.flatnet(&["get", "nodes"]);
    assert!(out.status.success(), "{out:?}");
    let (table, warning) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(warning.contains("is incomplete"), "{warning}");
    assert!(table.contains(",Incomplete"), "{table}");
    c.ok(&["down"]);
    assert!(c.namespaces().is_empty(), "{:?}", c.namespaces());
    assert!(!c.state_dir().exists());

    // A cluster whose state dir is lost entirely: found by its namespaces' names.
    let lost = TestCluster::up("lost", &["--nodes", "2"]);
    lost.ok(&["run", "--sandbox-only", "p"]);
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
        &["run", "--sandbox-only", "Not_A_Name"][..],
        &["run", "--sandbox-only", "p", "--node", "node-9"],
        &["node", "remove", "node-9"],
        &["delete", "pod", "nope"],
        &["up"],
    ] {
        let out = c.flatnet(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        // delete reports a missing pod as kubectl does.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("error: ") || err.starts_with("Error from server (NotFound): "),
            "{args:?}: {err}"
        );
    }
    c.ok(&["run", "--sandbox-only", "p"]);
    assert!(
        !c.flatnet(&["run", "--sandbox-only", "p"]).status.success(),
        "a second pod p"
    );
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
        c.ok(&["run", "--sandbox-only", &format!("p{i}")]);
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
    let ips: BTreeSet<Ipv4Addr> = pods.iter().filter_map(|p| p.ipv4()).collect();
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
    let probes = check::probe(&pods, &pairs, Family::V4).unwrap();
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
    c.ok(&["run", "--sandbox-only", "p1", "--node", "node-1"]);
    c.ok(&["run", "--sandbox-only", "p2", "--node", "node-2"]);
    let pods = pods(&c);
    let p1 = pods.iter().find(|p| p.name == "p1").unwrap();
    let p1_ns = Arc::new(NetNs::open(netns::named_path(&p1.netns)).unwrap());

    let outside = c.outside_host();
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
    let p1_ip = p1.ipv4().unwrap().to_string();
    assert_eq!(
        seen(node2, "172.18.0.3".parse().unwrap(), 8082),
        p1_ip,
        "node-2 sees the pod"
    );
    assert!(c.ok(&["check"]).contains("no NAT"));

    let rules = c.nft("node-1", &["list", "table", "inet", "flatnet"]);
    assert!(rules.contains("masquerade"));
}

/// `get nodes -o json` with each node's status.
fn nodes_json(c: &TestCluster) -> Vec<serde_json::Value> {
    serde_json::from_str(&c.ok(&["get", "nodes", "-o", "record"])).expect("nodes as JSON")
}

fn node_json(c: &TestCluster, name: &str) -> serde_json::Value {
    nodes_json(c)
        .into_iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

fn agent_of(c: &TestCluster, node: &str) -> (u32, u64) {
    let n = node_json(c, node);
    (
        n["agent"]["pid"].as_u64().unwrap() as u32,
        n["agent"]["startTime"].as_u64().unwrap(),
    )
}

fn sigkill(pid: u32) {
    // SAFETY: kill(2) on a process this test's cluster started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
}

/// A SIGKILLed agent is restarted by the cluster's controller after its back-off, counted,
/// and its node is Ready again; the controller itself, SIGKILLed while a restart is due, is
/// started again by the next command and keeps the back-off and the count from disk.
#[test]
fn a_killed_agent_is_restarted_with_back_off() {
    let c = TestCluster::up(
        "restart",
        &["--nodes", "2", "--agent-restart-backoff", "0.5"],
    );
    let table = c.ok(&["get", "nodes"]);
    assert!(table.contains("RESTARTS"), "{table}");
    let first = agent_of(&c, "node-1");
    sigkill(first.0);
    eventually("node-1's agent restarted", CONVERGE, || {
        let n = node_json(&c, "node-1");
        n["agentRestarts"] == 1 && n["status"]["ready"] == true
    });
    let second = agent_of(&c, "node-1");
    assert_ne!(second, first);
    // It does not inherit the controller's blocked signals: SIGTERM still stops it cleanly.
    let status = std::fs::read_to_string(format!("/proc/{}/status", second.0)).unwrap();
    assert!(
        status.lines().any(|l| l == "SigBlk:\t0000000000000000"),
        "{status}"
    );
    assert!(c.ok(&["get", "nodes"]).lines().any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.starts_with(&["node-1", "Ready", "1"])
    }));
    // Its routes are in place: a change to the node list reaches it.
    c.ok(&["node", "add"]);
    eventually("the restarted agent routes node-3", CONVERGE, || {
        c.agent_routes("node-1")
            .iter()
            .any(|r| r.starts_with("10.244.3.0/24 via 172.18.0.4"))
    });

    // The second restart waits twice as long (1 s). Kill the controller once it has
    // scheduled it: nothing restarts the agent until a command starts a new controller,
    // which restarts it at the time on disk.
    let controller = serde_json::from_slice::<serde_json::Value>(
        &std::fs::read(c.state_dir().join("cluster.json")).unwrap(),
    )
    .unwrap()["controller"]["pid"]
        .as_u64()
        .unwrap() as u32;
    sigkill(second.0);
    eventually("the controller schedules the restart", CONVERGE, || {
        node_json(&c, "node-1")["agentRestartAt"].is_u64()
    });
    sigkill(controller);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(node_json(&c, "node-1")["agentRestarts"], 1);
    let out = c.flatnet(&["get", "nodes"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("controller is not running"),
        "{out:?}"
    );
    c.ok(&["run", "--sandbox-only", "p"]);
    eventually("the new controller restarts the agent", CONVERGE, || {
        let n = node_json(&c, "node-1");
        n["agentRestarts"] == 2 && n["status"]["ready"] == true
    });
}

/// `node add` names the node it made, and returns once that node is Ready.
#[test]
fn node_add_says_which_node_and_waits_for_it() {
    let c = TestCluster::up("add", &["--nodes", "3"]);
    c.ok(&["node", "remove", "node-2"]);
    let out = c.ok(&["node", "add"]);
    assert!(out.starts_with("node-2 added: 172.18.0.3"), "{out}");
    assert_eq!(node_json(&c, "node-2")["status"]["ready"], true);
    let out = c.ok(&["node", "add"]);
    assert!(out.starts_with("node-4 added"), "{out}");
    assert_eq!(node_json(&c, "node-4")["status"]["ready"], true);
}

/// A copy of `flatnet` in a directory of its own, without `flatnet-cni` beside it.
fn lone_flatnet(dir: &common::TempDir) -> std::path::PathBuf {
    let exe = dir.path().join("flatnet");
    std::fs::copy(common::workspace_bin("flatnet"), &exe).unwrap();
    exe
}

fn flatnet_with(
    exe: &std::path::Path,
    c: &TestCluster,
    path: &str,
    args: &[&str],
) -> std::process::Output {
    // A test thread forking while the copy was open for writing holds its fd until that
    // child execs: exec then fails with ETXTBSY for a moment, as for any freshly written binary.
    for _ in 0..100 {
        match Command::new(exe)
            .arg("--name")
            .arg(&c.name)
            .arg("--state-dir")
            .arg(c.state.path())
            .args(args)
            .env("PATH", path)
            .output()
        {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            out => return out.unwrap(),
        }
    }
    panic!("{} stayed busy", exe.display());
}

/// A `run` whose plugin is not found fails and leaves nothing (no Pending pod, no netns);
/// `down` then succeeds. The plugin is found in `--cni-bin-dir` and on PATH.
#[test]
fn a_plugin_not_found_leaves_nothing_and_is_found_where_told() {
    let bin = common::TempDir::new("lonebin");
    let exe = lone_flatnet(&bin);
    let built = common::plugin_bin().parent().unwrap().display().to_string();
    let c = TestCluster {
        name: common::unique("lone"),
        state: common::TempDir::new("lone-state"),
    };
    let plain = "/usr/sbin:/usr/bin:/sbin:/bin";
    let out = flatnet_with(
        &exe,
        &c,
        plain,
        &["up", "--nodes", "1", "--agent-resync", "1"],
    );
    assert!(out.status.success(), "{out:?}");
    let out = flatnet_with(&exe, &c, plain, &["run", "--sandbox-only", "p"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("flatnet-cni not found"), "{err}");
    assert!(pods(&c).is_empty(), "{:?}", pods(&c));
    assert!(!c.namespaces().contains(&c.netns("pod-default_p")));
    // On PATH: found.
    let on_path = format!("{built}:{plain}");
    let out = flatnet_with(&exe, &c, &on_path, &["run", "--sandbox-only", "p"]);
    assert!(out.status.success(), "{out:?}");
    let out = flatnet_with(&exe, &c, &on_path, &["down"]);
    assert!(out.status.success(), "{out:?}");
    assert!(c.namespaces().is_empty());

    // In --cni-bin-dir: found, by every later command.
    let out = flatnet_with(
        &exe,
        &c,
        plain,
        &[
            "up",
            "--nodes",
            "1",
            "--agent-resync",
            "1",
            "--cni-bin-dir",
            &built,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        flatnet_with(&exe, &c, plain, &["run", "--sandbox-only", "q"])
            .status
            .success()
    );
    assert!(flatnet_with(&exe, &c, plain, &["delete", "pod", "q"])
        .status
        .success());
    let out = flatnet_with(&exe, &c, plain, &["down"]);
    assert!(out.status.success(), "{out:?}");
    assert!(c.namespaces().is_empty());
}

/// Ctrl-C at the terminal during `down` (SIGINT to its whole process group, plugins
/// included, again and again): down finishes, says so plainly, exits 130.
#[test]
fn an_interrupted_down_finishes_and_exits_130() {
    use std::os::unix::process::CommandExt;
    let c = TestCluster::up("intr", &["--nodes", "2"]);
    for i in 0..6 {
        c.ok(&["run", "--sandbox-only", &format!("p{i}")]);
    }
    let down = Command::new(common::workspace_bin("flatnet"))
        .args(["--name", &c.name, "--state-dir"])
        .arg(c.state.path())
        .arg("down")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = down.id() as i32;
    // A Ctrl-C before `down` catches SIGINT kills it, as it would any program: start once it
    // does (SigCgt in /proc has bit 1 for SIGINT).
    eventually("down catches SIGINT", CONVERGE, || {
        std::fs::read_to_string(format!("/proc/{pgid}/status")).is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                .is_some_and(|m| m & (1 << (libc::SIGINT - 1)) != 0)
        })
    });
    let stop = std::sync::atomic::AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // SAFETY: signalling the process group of the `down` this test started.
                unsafe { libc::kill(-pgid, libc::SIGINT) };
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let out = down.wait_with_output().unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        out
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted: flatnet down finished"), "{err}");
    assert!(!err.contains("999"), "{err}");
    assert!(c.namespaces().is_empty(), "{:?}", c.namespaces());
    assert!(!c.state_dir().exists());
}

/// Hostile records in the registry: each is refused by every agent, `get nodes` names it and
/// why, and every node's routes stay exactly as they were. A corrupted record keeps its
/// node's route on the others.
#[test]
fn hostile_records_change_no_node() {
    let c = TestCluster::up("hostile", &["--nodes", "2"]);
    let registry = c.state_dir().join("registry");
    let want1 = vec!["10.244.2.0/24 via 172.18.0.3 dev eth0".to_string()];
    let want2 = vec!["10.244.1.0/24 via 172.18.0.2 dev eth0".to_string()];
    let hostile = [
        (
            "evil",
            r#"{"name":"node-1","nodeIPs":["172.18.0.9"],"podCIDRs":["10.244.9.0/24"]}"#,
        ),
        (
            "aaa",
            r#"{"name":"aaa","nodeIPs":["172.18.0.9"],"podCIDRs":["10.244.2.0/24"]}"#,
        ),
        (
            "inside",
            r#"{"name":"inside","nodeIPs":["172.18.0.9"],"podCIDRs":["10.244.1.128/25"]}"#,
        ),
        (
            "podip",
            r#"{"name":"podip","nodeIPs":["10.244.2.7"],"podCIDRs":["10.244.9.0/24"]}"#,
        ),
        (
            "wide",
            r#"{"name":"wide","nodeIPs":["172.18.0.9"],"podCIDRs":["128.0.0.0/1"]}"#,
        ),
        (
            "underlay",
            r#"{"name":"underlay","nodeIPs":["172.18.0.9"],"podCIDRs":["172.18.64.0/18"]}"#,
        ),
        ("garbage", "\u{1}not json"),
    ];
    for (key, text) in hostile {
        std::fs::write(registry.join(format!("{key}.json")), text).unwrap();
    }
    eventually("every agent refuses every hostile record", CONVERGE, || {
        nodes_json(&c)
            .iter()
            .all(|n| n["status"]["refused"].as_array().map_or(0, Vec::len) == hostile.len())
    });
    let table = c.ok(&["get", "nodes"]);
    for (key, _) in hostile {
        assert!(
            table.contains(&format!("  {key}: ")) && table.contains("(by node-1, node-2)"),
            "{key}: {table}"
        );
    }
    assert!(table.contains("is not its key"), "{table}");
    // And each agent's log says so, the garbage included.
    for n in ["node-1", "node-2"] {
        let log =
            std::fs::read_to_string(c.state_dir().join(format!("nodes/{n}/agent.log"))).unwrap();
        for (key, _) in hostile {
            assert!(
                log.lines()
                    .any(|l| l.contains("node record refused")
                        && l.ends_with(&format!("record={key}"))),
                "{n}: {key}:\n{log}"
            );
        }
    }
    assert_eq!(c.agent_routes("node-1"), want1);
    assert_eq!(c.agent_routes("node-2"), want2);
    let conflist =
        std::fs::read_to_string(c.state_dir().join("nodes/node-1/net.d/10-flatnet.conflist"))
            .unwrap();
    assert!(conflist.contains("10.244.1.0/24"), "{conflist}");

    // node-2's own record corrupted: node-1 keeps its route; node-2 changes nothing and says
    // it is not ready.
    let node2 = registry.join("node-2.json");
    let good = std::fs::read(&node2).unwrap();
    std::fs::write(&node2, b"{\"name\":").unwrap();
    eventually("node-2 reports its record refused", CONVERGE, || {
        node_json(&c, "node-2")["status"]["ready"] == false
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.agent_routes("node-1"), want1);
    assert_eq!(c.agent_routes("node-2"), want2);
    std::fs::write(&node2, good).unwrap();
    eventually("node-2 ready again", CONVERGE, || {
        node_json(&c, "node-2")["status"]["ready"] == true
    });
}
