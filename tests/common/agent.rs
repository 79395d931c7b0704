//! The node agent's harness: node-1 of a cluster as a fake node netns with an underlay veth
//! (172.18.0.2/16) so that other nodes' IPs are reachable gateways, a registry directory and a
//! CNI conf dir, the agent run on its own thread and runtime (or one pass at a time), and `ip`
//! inside the namespace as the independent witness of the routes.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Once;
use std::thread::JoinHandle;
use std::time::Duration;

use flatnet::agent::{self, AgentConfig, RegistrySource, Status};
use flatnet::netlink::Netlink;
use flatnet::registry::{NodeRecord, Registry};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{node_ns, wait_until, TempDir, TestNs};

/// How long an outcome may take to show: generous, since waits end as soon as it shows.
pub const PATIENCE: Duration = Duration::from_secs(5);
/// A resync the tests never live to see: whatever the agent does, the watch (or its first
/// pass) made it do.
pub const LONG_RESYNC: Duration = Duration::from_secs(3600);
/// A resync short enough for a test to see several.
pub const SHORT_RESYNC: Duration = Duration::from_millis(200);

/// Agent logs go to the test's captured output (shown when it fails); FLATNET_LOG filters.
fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let level = std::env::var("FLATNET_LOG")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_test_writer()
            .try_init();
    });
}

/// A record with no creation time: it loses any overlap with a record that has one.
pub fn node(name: &str, ip: &str, cidr: &str) -> NodeRecord {
    NodeRecord::v4(name, ip.parse().unwrap(), cidr.parse().unwrap())
}

/// `node` created at `created` (seconds since the epoch).
pub fn born(node: NodeRecord, created: u64) -> NodeRecord {
    NodeRecord {
        created: Some(created),
        ..node
    }
}

/// A dual-stack node `i` of kind's defaults: 172.18.0.(i+1) and fc00:f853:ccd:e793::(i+1),
/// pods in 10.244.i.0/24 and fd00:10:244:i::/64.
pub fn dual(name: &str, i: u8) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        node_ips: vec![
            format!("172.18.0.{}", i + 1).parse().unwrap(),
            format!("fc00:f853:ccd:e793::{}", i + 1).parse().unwrap(),
        ],
        pod_cidrs: vec![
            format!("10.244.{i}.0/24").parse().unwrap(),
            format!("fd00:10:244:{i}::/64").parse().unwrap(),
        ],
        created: Some(u64::from(i)),
        node_networks: Vec::new(),
    }
}

pub fn node1() -> NodeRecord {
    born(node("node-1", "172.18.0.2", "10.244.1.0/24"), 1)
}

pub fn node2() -> NodeRecord {
    born(node("node-2", "172.18.0.3", "10.244.2.0/24"), 2)
}

pub fn node3() -> NodeRecord {
    born(node("node-3", "172.18.0.4", "10.244.3.0/24"), 3)
}

/// The routes node-1 holds in the cluster of [`node1`], [`node2`] and [`node3`]: the other
/// two nodes' pod CIDRs via their node IPs.
pub const NODE1_ROUTES: [(&str, &str); 2] = [
    ("10.244.2.0/24", "172.18.0.3"),
    ("10.244.3.0/24", "172.18.0.4"),
];

pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// The agent's routes as `ip` shows them: destination → gateway.
pub type Routes = BTreeMap<String, String>;

pub fn routes(want: &[(&str, &str)]) -> Routes {
    want.iter()
        .map(|(d, g)| (d.to_string(), g.to_string()))
        .collect()
}

/// node-1 of a cluster: its namespace, wired to an underlay, and its agent's directories.
pub struct Fixture {
    pub node: TestNs,
    _dir: TempDir,
    pub registry: Registry,
    pub cfg: AgentConfig,
}

impl Fixture {
    pub fn new(tag: &str) -> Fixture {
        init_logging();
        let node = node_ns(tag);
        // The underlay: both ends of a veth in the node, so the link is up with a carrier and
        // 172.18.0.0/16 is connected (the kernel only accepts gateways it can reach).
        node.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]);
        node.ip(&["addr", "add", "172.18.0.2/16", "dev", "eth0"]);
        node.ip(&["link", "set", "peer0", "up"]);
        node.ip(&["link", "set", "eth0", "up"]);
        let dir = TempDir::new(tag);
        let registry = Registry::new(dir.path().join("registry"));
        // The watch needs the directory from the start (a late one waits for a resync).
        std::fs::create_dir_all(registry.dir()).expect("registry dir");
        let cfg = AgentConfig {
            node_name: "node-1".into(),
            conf_dir: dir.path().join("net.d"),
            data_dir: dir.path().join("data"),
            mtu: None,
            cni_log_file: None,
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            status_file: None,
            overlay: Default::default(),
        };
        Fixture {
            node,
            _dir: dir,
            registry,
            cfg,
        }
    }

    pub fn put(&self, n: &NodeRecord) {
        self.registry.put(n).expect("registry put");
    }

    pub fn remove(&self, name: &str) {
        self.registry.remove(name).expect("registry remove");
    }

    pub fn conflist_path(&self) -> PathBuf {
        self.cfg.conf_dir.join("10-flatnet.conflist")
    }

    pub fn conflist(&self) -> Option<Value> {
        let bytes = std::fs::read(self.conflist_path()).ok()?;
        Some(serde_json::from_slice(&bytes).expect("the conflist is JSON"))
    }

    /// Routes of protocol 0x67 in the main table, read with `ip`.
    pub fn agent_routes(&self) -> Routes {
        self.agent_routes_of("-4")
    }

    /// The same for IPv6.
    pub fn agent_routes6(&self) -> Routes {
        self.agent_routes_of("-6")
    }

    fn agent_routes_of(&self, family: &str) -> Routes {
        let out = self
            .node
            .ip(&[family, "-j", "route", "show", "proto", "0x67"]);
        let list: Vec<Value> = serde_json::from_str(&out).expect("ip -j");
        list.iter()
            .map(|r| {
                (
                    r["dst"].as_str().unwrap_or_default().to_string(),
                    r["gateway"].as_str().unwrap_or("-").to_string(),
                )
            })
            .collect()
    }

    /// Every route of the main table, as `ip -d route` prints it: for messages and for
    /// checking that the routes the agent did not make are still there, exactly. (The agent's
    /// protocol shows as `proto 103`: iproute2 has no name for it.)
    pub fn table(&self) -> String {
        self.node.ip(&["-d", "route", "show"])
    }

    /// `ip route ARGS` inside the node: setup and hand edits, never the code under test.
    pub fn route(&self, args: &str) {
        let mut all = vec!["route"];
        all.extend(args.split_whitespace());
        self.node.ip(&all);
    }

    pub fn has_route(&self, line: &str) -> bool {
        self.table().lines().any(|l| l.trim() == line)
    }

    /// Makes the fixture dual-stack: node-1's underlay gets an IPv6 address (no DAD: a
    /// gateway is usable at once) and the cluster an IPv6 pod network.
    pub fn dual_stack(&mut self) {
        self.node.ip(&[
            "addr",
            "add",
            "fc00:f853:ccd:e793::2/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        self.cfg
            .cluster_cidrs
            .push("fd00:10:244::/56".parse().unwrap());
    }

    /// Waits until the agent's IPv6 routes are exactly `want`.
    pub fn wait_routes6(&self, want: &[(&str, &str)]) {
        let want = routes(want);
        let ok = wait_until(PATIENCE, || self.agent_routes6() == want);
        assert!(
            ok,
            "agent IPv6 routes never became {want:?}; the table is:\n{}",
            self.node.ip(&["-6", "-d", "route", "show"])
        );
    }

    /// Waits until the agent's routes are exactly `want`.
    pub fn wait_routes(&self, want: &[(&str, &str)]) {
        let want = routes(want);
        let ok = wait_until(PATIENCE, || self.agent_routes() == want);
        assert!(
            ok,
            "agent routes never became {want:?}; the table is:\n{}",
            self.table()
        );
    }

    /// Waits until the conflist exists, checking on every look that it never exists without
    /// all of `want` in place (the runtime takes the file as "the network is ready").
    pub fn wait_conflist(&self, want: &[(&str, &str)]) -> Value {
        let want = routes(want);
        let ok = wait_until(PATIENCE, || {
            if !self.conflist_path().exists() {
                return false;
            }
            let now = self.agent_routes();
            assert!(
                want.iter().all(|(d, g)| now.get(d) == Some(g)),
                "conflist written before the routes {want:?}; the table is:\n{}",
                self.table()
            );
            true
        });
        assert!(ok, "no conflist; the table is:\n{}", self.table());
        self.conflist().expect("conflist readable")
    }

    /// Checks that nothing in `window` produces agent routes or a conflist. Absence can only
    /// be checked over a time; the window covers several resyncs of the agents that use it.
    pub fn assert_nothing_for(&self, window: Duration) {
        let appeared = wait_until(window, || {
            !self.agent_routes().is_empty() || self.conflist_path().exists()
        });
        assert!(
            !appeared,
            "the agent acted; conflist: {}, table:\n{}",
            self.conflist_path().exists(),
            self.table()
        );
    }

    /// One pass over the registry's current list, as the agent's loop makes it.
    pub fn pass(&self) -> agent::Pass {
        let listed = self.registry.list().expect("registry list");
        block_on(async {
            let netlink = Netlink::in_netns(self.node.ns()).expect("netlink in the node");
            agent::reconcile(&self.cfg, &listed, &netlink).await
        })
    }

    pub fn reconcile(&self) -> Result<Status, agent::Error> {
        self.pass().outcome
    }

    /// Writes `text` as the registry file `key.json`, as a hand edit or a corruption would.
    pub fn write_raw(&self, key: &str, text: &str) {
        std::fs::write(self.registry.dir().join(format!("{key}.json")), text).expect("write");
    }

    pub fn uninstall(&self) -> Result<usize, agent::Error> {
        block_on(async {
            let netlink = Netlink::in_netns(self.node.ns()).expect("netlink in the node");
            agent::uninstall(&netlink, &self.cfg.conf_dir).await
        })
    }

    /// Starts the agent on its own thread and runtime, as `flatnet agent` would run it.
    pub fn start(&self, resync: Duration) -> Agent {
        let cfg = self.cfg.clone();
        let registry = self.registry.clone();
        let ns = self.node.ns();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || -> Result<(), String> {
            block_on(async move {
                let source = RegistrySource::new(registry, resync).map_err(|e| e.to_string())?;
                let netlink = Netlink::in_netns(ns).map_err(|e| e.to_string())?;
                let ready = agent::Readiness::default();
                tokio::select! {
                    r = agent::run(&cfg, source, netlink, &ready) => {
                        Err(format!("the agent stopped by itself: {r:?}"))
                    }
                    _ = stopped => Ok(()),
                }
            })
        });
        Agent {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Fixture {
    /// The three-node cluster converged: node-1, node-2 and node-3 in the registry, the agent
    /// started with `resync`, its routes exactly [`NODE1_ROUTES`] and its conflist written
    /// (never before the routes). Returns the running agent and the conflist.
    pub fn converge_three_nodes(&self, resync: Duration) -> (Agent, Value) {
        for n in [node1(), node2(), node3()] {
            self.put(&n);
        }
        let agent = self.start(resync);
        let conf = self.wait_conflist(&NODE1_ROUTES);
        self.wait_routes(&NODE1_ROUTES);
        (agent, conf)
    }
}

/// A running agent; stopped (its task dropped, as a killed process leaves things) on drop.
pub struct Agent {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Agent {
    /// Stops the agent, asserting that it was still running fine.
    pub fn stop(mut self) {
        let r = self.halt();
        if let Some(r) = r {
            r.expect("the agent ran until stopped");
        }
    }

    pub fn halt(&mut self) -> Option<Result<(), String>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let thread = self.thread.take()?;
        Some(
            thread
                .join()
                .unwrap_or_else(|_| Err("the agent thread panicked".into())),
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

impl Fixture {
    /// The agent's status file, once it has written one.
    pub fn report(&self) -> Option<agent::Report> {
        let path = self.cfg.status_file.as_ref()?;
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Waits until the running agent reports `key` refused with a reason containing `why`.
    pub fn wait_refused(&self, key: &str, why: &str) {
        let ok = wait_until(PATIENCE, || {
            self.report().is_some_and(|r| {
                r.refused
                    .iter()
                    .any(|f| f.record == key && f.reason.contains(why))
            })
        });
        assert!(ok, "{key} not refused for {why:?}: {:?}", self.report());
    }
}
