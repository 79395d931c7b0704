//! Bringing a cluster up and down, and adding and removing nodes.
//!
//! The underlay is a bridge in a namespace of its own (the machine's namespace is never
//! touched); each node's namespace is plugged into it by a veth whose node end is `eth0`.
//! Node `i` gets the underlay address `.(i+1)` (the bridge has `.1`, the nodes' default
//! gateway) and the `i`-th slice of the cluster CIDR as its pod CIDR; slice 0 is never used,
//! so `node-1` gets 10.244.1.0/24 in the default plan. A cluster with IPv6 pods does the same
//! in IPv6: the underlay gets kind's IPv6 network as well (node `i` at `::(i+1)`), and node `i`
//! the `i`-th /64 of the IPv6 cluster CIDR (`fd00:10:244:1::/64` for `node-1`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::names::{self, node_name};
use super::process::{self, ProcessId};
use super::state::{
    now, nth, nth6, remove_tree, ClusterDir, ClusterSpec, IpFamily, NodeSpec, StateRoot,
    STATE_VERSION,
};
use super::{controller, interrupt, io_err, pods, sandbox, Error, Result};
use crate::netlink::{Family, Netlink, Route, Route6, RouteOf, VethSpec};
use crate::netns::{self, NetNs};
use crate::registry::{NodeRecord, Registry};

/// The nodes' network, as kind's docker network has it.
pub const UNDERLAY: &str = "172.18.0.0/16";
/// The IPv6 network of kind's docker network.
pub const UNDERLAY_V6: &str = "fc00:f853:ccd:e793::/64";
const BRIDGE: &str = "br0";
/// rtm_protocol "static": routes set up by hand, as an admin would, distinct from flatnet's.
const RTPROT_STATIC: u8 = 4;
/// How long `up` and `node add` wait for an agent to write its conflist.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an agent gets to exit after SIGTERM before it is killed.
const AGENT_GRACE: Duration = Duration::from_secs(3);

/// The address plan of a new cluster.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub nodes: u32,
    /// Which families the pods get; each uses its own CIDR and mask below.
    pub ip_family: IpFamily,
    pub cluster_cidr: Ipv4Network,
    pub node_mask: u8,
    pub cluster_cidr_v6: Ipv6Network,
    pub node_mask_v6: u8,
    /// How often each agent re-reads the node list and re-checks its routes unprompted.
    pub agent_resync: Duration,
    /// The controller's first back-off before it restarts an agent that is gone.
    pub agent_restart_backoff: Duration,
    /// Where the plugins are looked up first, before the usual places.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Where Services' ClusterIPs come from.
    pub service_cidr: Ipv4Network,
    /// How many L2 segments the nodes are spread over (round robin), joined by the underlay
    /// namespace as a router: nodes on different segments reach each other only through it.
    pub subnets: u32,
    /// How the agents reach other nodes' pods: backend, VNI and UDP port.
    pub overlay: crate::agent::overlay::Config,
}

impl Default for UpOptions {
    /// kind's plan: three nodes, IPv4 pods from 10.244.0.0/16 in /24s (and for IPv6,
    /// fd00:10:244::/56 in /64s), kubelet's restart back-off.
    fn default() -> UpOptions {
        UpOptions {
            nodes: 3,
            ip_family: IpFamily::Ipv4,
            cluster_cidr: "10.244.0.0/16".parse().expect("valid CIDR"),
            node_mask: 24,
            cluster_cidr_v6: "fd00:10:244::/56".parse().expect("valid CIDR"),
            node_mask_v6: 64,
            agent_resync: crate::agent::DEFAULT_RESYNC,
            agent_restart_backoff: super::state::DEFAULT_RESTART_BACKOFF,
            cni_bin_dirs: Vec::new(),
            service_cidr: super::state::default_service_cidr(),
            subnets: 1,
            overlay: Default::default(),
        }
    }
}

/// A cluster by name, whether or not it exists yet.
#[derive(Debug, Clone)]
pub struct Cluster {
    name: String,
    dir: ClusterDir,
}

impl Cluster {
    pub fn new(root: &StateRoot, name: &str) -> Result<Cluster> {
        names::validate_cluster(name)?;
        Ok(Cluster {
            name: name.to_string(),
            dir: root.cluster(name),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &ClusterDir {
        &self.dir
    }

    /// The cluster's spec; an error if the cluster does not exist, or was made by a flatnet
    /// that kept its state in another layout (it is not migrated; `down` still removes it).
    pub fn spec(&self) -> Result<ClusterSpec> {
        let spec = self
            .dir
            .load()?
            .ok_or_else(|| Error::NoCluster(self.name.clone()))?;
        if spec.state_version != STATE_VERSION {
            return Err(Error::Invalid(format!(
                "cluster {:?} was made by another version of flatnet (state layout {}, this \
                 one reads {STATE_VERSION}); `flatnet down --name {}` removes it",
                self.name, spec.state_version, self.name
            )));
        }
        Ok(spec)
    }

    /// The namespaces of this cluster that exist now, found by name.
    pub fn namespaces(&self) -> Result<Vec<String>> {
        Ok(netns::list_named()
            .map_err(io_err("list network namespaces"))?
            .into_iter()
            .filter(|n| names::is_cluster_netns(&self.name, n))
            .collect())
    }

    /// Creates the cluster and returns once every node's agent has written its conflist, then
    /// starts the cluster's controller. On failure (Ctrl-C included) whatever was made is
    /// removed again; killed (SIGKILL), it leaves the cluster marked as being built by a
    /// process that is gone, which `get nodes` shows as incomplete.
    pub async fn up(&self, opts: &UpOptions, progress: &dyn Fn(&str)) -> Result<ClusterSpec> {
        let family = opts.ip_family;
        let cluster_cidr = family.has_v4().then(|| {
            Ipv4Network::new(opts.cluster_cidr.network(), opts.cluster_cidr.prefix())
                .expect("same prefix")
        });
        let cluster_cidr_v6 = family.has_v6().then(|| {
            Ipv6Network::new(
                opts.cluster_cidr_v6.network(),
                opts.cluster_cidr_v6.prefix(),
            )
            .expect("same prefix")
        });
        let plan = [
            cluster_cidr.map(|c| (IpNetwork::V4(c), opts.node_mask)),
            cluster_cidr_v6.map(|c| (IpNetwork::V6(c), opts.node_mask_v6)),
        ];
        if opts.subnets == 0 || opts.subnets > MAX_SEGMENTS {
            return Err(Error::Invalid(format!(
                "--subnets must be from 1 to {MAX_SEGMENTS}"
            )));
        }
        for (cidr, mask) in plan.into_iter().flatten() {
            let slices = slices(cidr, mask)?;
            if opts.nodes == 0 || u64::from(opts.nodes) >= slices {
                return Err(Error::Invalid(format!(
                    "--nodes must be from 1 to {} for {cidr} split into /{mask}",
                    slices - 1,
                )));
            }
        }
        if self.dir.exists() || !self.namespaces()?.is_empty() {
            return Err(Error::Invalid(format!(
                "cluster {:?} already exists (flatnet down --name {} removes it)",
                self.name, self.name
            )));
        }
        let _lock = self.dir.lock()?;
        let mut spec = ClusterSpec {
            name: self.name.clone(),
            state_version: STATE_VERSION,
            ip_family: family,
            cluster_cidr,
            node_mask: opts.node_mask,
            cluster_cidr_v6,
            node_mask_v6: opts.node_mask_v6,
            agent_resync_ms: opts.agent_resync.as_millis().try_into().unwrap_or(u64::MAX),
            agent_restart_backoff_ms: opts
                .agent_restart_backoff
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            cni_bin_dirs: opts.cni_bin_dirs.clone(),
            controller: None,
            building: ProcessId::of(std::process::id()),
            underlay: UNDERLAY.parse().expect("valid CIDR"),
            underlay_v6: family
                .has_v6()
                .then(|| UNDERLAY_V6.parse().expect("valid CIDR")),
            created: now(),
            service_cidr: opts.service_cidr,
            overlay: opts.overlay,
            nodes: Vec::new(),
        };
        self.dir.save(&spec)?;
        let built = async {
            self.create_system_namespaces()?;
            progress(&format!(
                "creating the underlay {}",
                names::underlay_netns(&self.name)
            ));
            self.create_underlay(&spec).await?;
            for segment in 1..opts.subnets {
                self.ensure_segment(&spec, segment).await?;
            }
            let mut made = Vec::new();
            for index in 1..=opts.nodes {
                interrupt::check()?;
                progress(&format!("creating {}", node_name(index)));
                let segment = (index - 1) % opts.subnets;
                made.push((
                    node_name(index),
                    self.create_node(&mut spec, index, segment).await?,
                ));
            }
            progress("starting the agents");
            self.start_agents(&mut spec, &made)?;
            progress("waiting for the agents to write their conflists");
            for node in &spec.nodes {
                self.wait_ready(node).await?;
            }
            progress("starting the cluster's controller");
            spec.controller = Some(
                controller::start(&self.dir).map_err(io_err("start the cluster's controller"))?,
            );
            spec.building = None;
            self.dir.save(&spec)
        }
        .await;
        match built {
            Ok(()) => Ok(spec),
            Err(e) => {
                progress(&format!("{e}; removing what was made"));
                let _ = self.teardown(progress).await;
                Err(e)
            }
        }
    }

    /// Starts the cluster's controller if it is not running (it was killed, or died): it picks
    /// up from the cluster's state. Call with the cluster lock held. A cluster being built
    /// gets none (its builder starts it), nor does one whose builder died half-way: there is
    /// nothing whole to keep running.
    pub fn ensure_controller(&self, spec: &mut ClusterSpec) -> Result<()> {
        if spec.building.is_some() || spec.controller.is_some_and(|c| c.is_running()) {
            return Ok(());
        }
        spec.controller =
            Some(controller::start(&self.dir).map_err(io_err("start the cluster's controller"))?);
        self.dir.save(spec)
    }

    /// Removes everything of the cluster: the controller, pods (CNI DEL), agents,
    /// namespaces, the state dir. Works from the state dir and from namespace names both, so
    /// it also finishes the job after a crash. Goes on past failures and returns the first.
    /// Returns whether there was anything to remove.
    pub async fn down(&self) -> Result<bool> {
        self.down_with(&|_| {}).await
    }

    /// [`Cluster::down`], telling `progress` about what went wrong but did not matter.
    pub async fn down_with(&self, progress: &dyn Fn(&str)) -> Result<bool> {
        if !self.dir.exists() && self.namespaces()?.is_empty() {
            return Ok(false);
        }
        let lock = self.dir.lock()?;
        let result = self.teardown(progress).await;
        drop(lock);
        result.map(|_| true)
    }

    async fn teardown(&self, progress: &dyn Fn(&str)) -> Result<()> {
        let mut first_err: Option<Error> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        };
        let spec = self.dir.load().unwrap_or(None);
        // The controller first, or it would restart the agents stopped below.
        let mut controllers = controller::strays(&self.dir);
        controllers.extend(spec.as_ref().and_then(|s| s.controller));
        controllers.sort_by_key(|c| c.pid);
        controllers.dedup();
        for c in controllers {
            note(
                c.stop(AGENT_GRACE)
                    .map_err(io_err(format!("stop the controller {}", c.pid))),
            );
        }
        let pods = self.dir.pods().unwrap_or_default();
        // All pods wind down at once: each may take its grace period.
        for sup in pods.iter().filter_map(|p| p.supervisor) {
            sup.terminate();
        }
        // No CNI DEL: everything the plugin made for a pod lives in its node's namespace (the
        // host veth and its route, which the kernel deletes with the namespace, all links in
        // one batch) or in the node's IPAM store, which goes with the state dir. A DEL per pod
        // would pay, pod by pod, for what removing the node does once.
        for pod in pods {
            if let Err(e) = pods::forget(&self.dir, &pod) {
                progress(&format!("pod {}: {e}", pod.name));
                note(Err(e));
            }
        }
        let mut agents: Vec<ProcessId> = spec
            .iter()
            .flat_map(|s| s.nodes.iter().filter_map(|n| n.agent))
            .collect();
        let namespaces = self.namespaces().unwrap_or_default();
        for ns in &namespaces {
            if names::netns_node(&self.name, ns).is_some() {
                agents.extend(process::agents_in(&netns::named_path(ns)));
            }
        }
        agents.sort_by_key(|a| a.pid);
        agents.dedup();
        for agent in agents {
            note(
                agent
                    .stop(AGENT_GRACE)
                    .map_err(io_err(format!("stop agent {}", agent.pid))),
            );
        }
        // What a lost state dir leaves running: supervisors first (or they would restart their
        // containers), then anything still inside a pod's namespace.
        for sup in super::pods::stray_supervisors(self.dir.path()) {
            note(
                sup.stop(AGENT_GRACE)
                    .map_err(io_err(format!("stop supervisor {}", sup.pid))),
            );
        }
        for ns in namespaces
            .iter()
            .filter(|n| names::netns_node(&self.name, n).is_none())
        {
            for p in process::in_netns(&netns::named_path(ns)) {
                note(
                    p.stop(Duration::ZERO)
                        .map_err(io_err(format!("stop process {}", p.pid))),
                );
            }
        }
        for ns in namespaces {
            note(netns::delete_named(&ns).map_err(io_err(format!("delete netns {ns}"))));
        }
        note(self.dir.remove());
        first_err.map_or(Ok(()), Err)
    }

    /// Adds a node with the lowest free index, and waits until it is ready.
    pub async fn add_node(&self) -> Result<NodeSpec> {
        self.add_node_on(0).await
    }

    /// Adds a node with the lowest free index on L2 segment `segment` (made if the cluster
    /// has no such segment yet), and waits until it is ready.
    pub async fn add_node_on(&self, segment: u32) -> Result<NodeSpec> {
        Ok(self.add_nodes(1, segment).await?.remove(0))
    }

    /// Adds `count` nodes at the lowest free indexes on L2 segment `segment` and waits until
    /// all are ready. Every node is made before any is waited for: the agents already running
    /// then take the new records in a pass or a few rather than one pass per node, and the new
    /// agents start together. On failure, removes the nodes it was adding.
    pub async fn add_nodes(&self, count: u32, segment: u32) -> Result<Vec<NodeSpec>> {
        if segment >= MAX_SEGMENTS {
            return Err(Error::Invalid(format!(
                "--subnet must be below {MAX_SEGMENTS}"
            )));
        }
        let _lock = self.dir.lock()?;
        let mut spec = self.spec()?;
        self.ensure_controller(&mut spec)?;
        let mut indexes: Vec<u32> = Vec::new();
        for _ in 0..count {
            let index = (1..)
                .find(|i| spec.nodes.iter().all(|n| n.index != *i) && !indexes.contains(i))
                .expect("some index is free");
            let plan = [
                spec.cluster_cidr
                    .map(|c| (IpNetwork::V4(c), spec.node_mask)),
                spec.cluster_cidr_v6
                    .map(|c| (IpNetwork::V6(c), spec.node_mask_v6)),
            ];
            for (cidr, mask) in plan.into_iter().flatten() {
                if u64::from(index) >= slices(cidr, mask)? {
                    return Err(Error::Invalid(format!(
                        "{cidr} has no pod CIDR left for another node"
                    )));
                }
            }
            indexes.push(index);
        }
        let names: Vec<String> = indexes.iter().map(|&i| node_name(i)).collect();
        spec.building = ProcessId::of(std::process::id());
        let made = async {
            self.ensure_segment(&spec, segment).await?;
            let mut made = Vec::new();
            for &index in &indexes {
                interrupt::check()?;
                made.push((
                    node_name(index),
                    self.create_node(&mut spec, index, segment).await?,
                ));
            }
            self.start_agents(&mut spec, &made)?;
            let nodes: Vec<NodeSpec> = names
                .iter()
                .map(|n| spec.node(n).expect("just added").clone())
                .collect();
            for node in &nodes {
                self.wait_ready(node).await?;
            }
            Ok(nodes)
        }
        .await;
        if made.is_err() {
            for name in &names {
                let _ = self.delete_node(&mut spec, name).await;
            }
        }
        spec.building = None;
        self.dir.save(&spec)?;
        made
    }

    /// Removes a node: its pods (CNI DEL each), its registry record (the other agents then
    /// drop their routes to it), its agent, its namespace and its state.
    pub async fn remove_node(&self, node: &str) -> Result<()> {
        let _lock = self.dir.lock()?;
        let mut spec = self.spec()?;
        self.ensure_controller(&mut spec)?;
        if spec.node(node).is_none() {
            return Err(Error::Invalid(format!(
                "node {node:?} is not in cluster {:?}",
                self.name
            )));
        }
        self.delete_node(&mut spec, node).await
    }

    async fn delete_node(&self, spec: &mut ClusterSpec, node: &str) -> Result<()> {
        for pod in self.dir.pods()?.iter().filter(|p| p.node == node) {
            pods::remove(&self.dir, pod)?;
        }
        // Its pods leave the agents' NetworkPolicy peer sets with it.
        self.publish()?;
        Registry::new(self.dir.registry())
            .remove(node)
            .map_err(io_err(format!("remove {node} from the registry")))?;
        // The underlay end first: deleting one end of a veth removes the pair at once,
        // whereas the kernel removes the links of a deleted namespace later, and a node
        // added back under the same name would then find its port name still taken.
        let underlay_ns = names::underlay_netns(&self.name);
        if let Ok(ns) = NetNs::open(netns::named_path(&underlay_ns)) {
            let nl = netlink_in(Arc::new(ns))?;
            if let Some(port) = nl.link_by_name(node).await? {
                nl.delete_link(port.index).await?;
            }
        }
        let ns_name = names::node_netns(&self.name, node);
        let mut agents: Vec<ProcessId> =
            spec.node(node).and_then(|n| n.agent).into_iter().collect();
        agents.extend(process::agents_in(&netns::named_path(&ns_name)));
        for agent in agents {
            agent
                .stop(AGENT_GRACE)
                .map_err(io_err(format!("stop agent {}", agent.pid)))?;
        }
        netns::delete_named(&ns_name).map_err(io_err(format!("delete netns {ns_name}")))?;
        remove_tree(&self.dir.node_dir(node))?;
        spec.nodes.retain(|n| n.name != node);
        self.dir.save(spec)
    }

    /// The main routing table of a node in family `N` (`Route` or `Route6`), as the agent and
    /// the plugin left it, each route with the name of its device (empty if it has none).
    pub async fn node_routes<N: Family>(&self, node: &str) -> Result<Vec<(RouteOf<N>, String)>> {
        let spec = self.spec()?;
        let node = spec.node(node).ok_or_else(|| {
            Error::Invalid(format!("node {node:?} is not in cluster {:?}", self.name))
        })?;
        let ns = NetNs::open(netns::named_path(&node.netns))
            .map_err(io_err(format!("open netns {}", node.netns)))?;
        let nl = netlink_in(Arc::new(ns))?;
        let links = nl.links().await?;
        let name = |oif: Option<u32>| {
            links
                .iter()
                .find(|l| Some(l.index) == oif)
                .map_or(String::new(), |l| l.name.clone())
        };
        Ok(nl
            .routes_of::<N>()
            .await?
            .into_iter()
            .map(|r| (name(r.oif), r))
            .map(|(n, r)| (r, n))
            .collect())
    }

    async fn create_underlay(&self, spec: &ClusterSpec) -> Result<()> {
        let name = names::underlay_netns(&self.name);
        let ns =
            Arc::new(netns::create_named(&name).map_err(io_err(format!("create netns {name}")))?);
        if spec.underlay_v6.is_some() {
            no_dad(&ns).map_err(io_err(format!("{name}: IPv6 sysctls")))?;
        }
        // The underlay namespace is the router between segments.
        netns::write_sysctl(&ns, "net.ipv4.ip_forward", "1")
            .map_err(io_err(format!("{name}: sysctl net.ipv4.ip_forward")))?;
        let nl = netlink_in(ns)?;
        set_up(&nl, "lo").await?;
        nl.create_bridge(BRIDGE).await?;
        let br = link_index(&nl, BRIDGE).await?;
        nl.add_address(
            br,
            Ipv4Network::new(spec.bridge_ip(), spec.underlay.prefix()).expect("prefix"),
        )
        .await?;
        if let (Some(u), Some(ip)) = (spec.underlay_v6, spec.bridge_ip_v6()) {
            nl.add_address(br, Ipv6Network::new(ip, u.prefix()).expect("prefix"))
                .await?;
        }
        nl.set_up(br).await?;
        Ok(())
    }

    /// Makes L2 segment `segment` (its bridge, addressed as the segment's router) unless it
    /// is there. Segment 0 is the underlay's own bridge, made with it.
    async fn ensure_segment(&self, spec: &ClusterSpec, segment: u32) -> Result<()> {
        let name = names::underlay_netns(&self.name);
        let ns = Arc::new(
            NetNs::open(netns::named_path(&name)).map_err(io_err(format!("open netns {name}")))?,
        );
        let nl = netlink_in(ns)?;
        let bridge = segment_bridge(segment);
        if nl.link_by_name(&bridge).await?.is_some() {
            return Ok(());
        }
        nl.create_bridge(&bridge).await?;
        let br = link_index(&nl, &bridge).await?;
        let net = segment_network(spec, segment);
        nl.add_address(
            br,
            Ipv4Network::new(nth(net.network(), 1), net.prefix()).expect("prefix"),
        )
        .await?;
        nl.set_up(br).await?;
        Ok(())
    }

    /// Makes node `index` on L2 segment `segment`: namespace, sysctls, underlay link; its
    /// registry record and its agent come with [`Cluster::start_agents`]. The node is in the
    /// spec (saved) before anything else is made for it, so `down` finds it. Only segment 0 has
    /// IPv6 on the underlay: a node elsewhere carries its IPv6 pods over the IPv4 tunnel.
    async fn create_node(
        &self,
        spec: &mut ClusterSpec,
        index: u32,
        segment: u32,
    ) -> Result<Arc<NetNs>> {
        let name = node_name(index);
        let node_ns = names::node_netns(&self.name, &name);
        let net = segment_network(spec, segment);
        let node = NodeSpec {
            name: name.clone(),
            index,
            node_ip: nth(net.network(), index + 1),
            node_ip_v6: spec
                .underlay_v6
                .filter(|_| segment == 0)
                .map(|u| nth6(u.network(), u128::from(index) + 1)),
            pod_cidr: spec
                .cluster_cidr
                .map(|c| pod_cidr(c, spec.node_mask, index)),
            pod_cidr_v6: spec
                .cluster_cidr_v6
                .map(|c| pod_cidr_v6(c, spec.node_mask_v6, index)),
            netns: node_ns.clone(),
            agent: None,
            created: now(),
            agent_restarts: 0,
            agent_restart_at: None,
        };
        spec.nodes.push(node.clone());
        spec.nodes.sort_by_key(|n| n.index);
        self.dir.save(spec)?;

        let ns = Arc::new(
            netns::create_named(&node_ns).map_err(io_err(format!("create netns {node_ns}")))?,
        );
        // Set explicitly rather than inherited: a new namespace takes some defaults from the
        // machine's, and the node must behave the same on every machine. Strict reverse-path
        // filtering is the harder case, and a flat network passes it.
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "1"),
            ("net.ipv4.conf.default.rp_filter", "1"),
        ] {
            netns::write_sysctl(&ns, key, value)
                .map_err(io_err(format!("{node_ns}: sysctl {key}")))?;
        }
        // IPv6 forwarding is the node's, as ip_forward above and as kind's nodes have it: the
        // node routes to other nodes' pods before its first pod exists (which is when the
        // plugin would turn it on), and the plugin then finds it on and leaves it. The node's
        // eth0 is addressed statically, as kind's docker network does it, so no interface
        // here takes router advertisements, and none waits for DAD.
        if spec.underlay_v6.is_some() {
            no_dad(&ns).map_err(io_err(format!("{node_ns}: IPv6 sysctls")))?;
            netns::write_sysctls(
                &ns,
                &[
                    ("net.ipv6.conf.all.accept_ra", "0"),
                    ("net.ipv6.conf.default.accept_ra", "0"),
                    ("net.ipv6.conf.all.forwarding", "1"),
                ],
            )
            .map_err(io_err(format!("{node_ns}: IPv6 forwarding")))?;
        }

        let underlay_ns = names::underlay_netns(&self.name);
        let underlay = netlink_in(Arc::new(
            NetNs::open(netns::named_path(&underlay_ns))
                .map_err(io_err(format!("open netns {underlay_ns}")))?,
        ))?;
        underlay
            .create_veth(&VethSpec {
                name: &name,
                peer_name: "eth0",
                peer_netns: &ns,
                mtu: 1500,
            })
            .await?;
        let port = link_index(&underlay, &name).await?;
        underlay
            .set_master(port, link_index(&underlay, &segment_bridge(segment)).await?)
            .await?;
        underlay.set_up(port).await?;

        let nl = netlink_in(ns.clone())?;
        set_up(&nl, "lo").await?;
        let eth0 = link_index(&nl, "eth0").await?;
        nl.add_address(
            eth0,
            Ipv4Network::new(node.node_ip, net.prefix()).expect("prefix"),
        )
        .await?;
        if let (Some(u), Some(ip)) = (spec.underlay_v6, node.node_ip_v6) {
            nl.add_address(eth0, Ipv6Network::new(ip, u.prefix()).expect("prefix"))
                .await?;
        }
        nl.set_up(eth0).await?;
        let default = Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("prefix 0");
        nl.add_route(&Route::via_gateway(
            default,
            nth(net.network(), 1),
            Some(eth0),
            RTPROT_STATIC,
        ))
        .await?;
        if let Some(gw) = spec.bridge_ip_v6().filter(|_| node.node_ip_v6.is_some()) {
            let default = Ipv6Network::new(Ipv6Addr::UNSPECIFIED, 0).expect("prefix 0");
            nl.add_route(&Route6::via_gateway(default, gw, Some(eth0), RTPROT_STATIC))
                .await?;
        }

        for dir in [self.dir.conf_dir(&name), self.dir.ipam_dir(&name)] {
            std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        }
        Ok(ns)
    }

    /// Registers the nodes just made, all at once, then starts their agents: each new agent's
    /// first pass sees the whole list, and the agents already running take the burst of new
    /// records in a pass or two, rather than each agent one pass per node.
    fn start_agents(&self, spec: &mut ClusterSpec, made: &[(String, Arc<NetNs>)]) -> Result<()> {
        let registry = Registry::new(self.dir.registry());
        for (name, _) in made {
            let node = spec.node(name).expect("made");
            registry
                .put(&NodeRecord {
                    name: name.clone(),
                    node_ips: node.node_ips(),
                    pod_cidrs: node.pod_cidrs(),
                    created: Some(node.created),
                    node_networks: node_networks(spec, node),
                })
                .map_err(io_err(format!("register {name}")))?;
        }
        for (name, ns) in made {
            let agent = self.start_agent(spec, name, ns)?;
            if let Some(n) = spec.nodes.iter_mut().find(|n| &n.name == name) {
                n.agent = Some(agent);
            }
        }
        self.dir.save(spec)
    }

    /// Starts the agent of `node` in its namespace `ns`, detached.
    pub(crate) fn start_agent(
        &self,
        spec: &ClusterSpec,
        node: &str,
        ns: &NetNs,
    ) -> Result<ProcessId> {
        let exe = std::env::current_exe().map_err(io_err("find the flatnet executable"))?;
        let path = |p: PathBuf| p.display().to_string();
        let args = vec![
            "agent".to_string(),
            "--node".into(),
            node.into(),
            "--registry".into(),
            path(self.dir.registry()),
            "--conf-dir".into(),
            path(self.dir.conf_dir(node)),
            "--data-dir".into(),
            path(self.dir.ipam_dir(node)),
            "--cluster-cidr".into(),
            super::state::join(&spec.cluster_cidrs()),
            "--cni-log-file".into(),
            path(self.dir.node_dir(node).join("flatnet-cni.log")),
            "--status-file".into(),
            path(self.dir.agent_status(node)),
            "--resync".into(),
            format!("{}", spec.agent_resync_ms as f64 / 1000.0),
            "--backend".into(),
            spec.overlay.backend.to_string(),
            "--vxlan-vni".into(),
            spec.overlay.vni.to_string(),
            "--vxlan-port".into(),
            spec.overlay.port.to_string(),
        ];
        process::spawn_detached(&exe, &args, Some(ns), &self.dir.agent_log(node))
            .map_err(io_err(format!("start the agent of {node}")))
    }

    /// Waits for the node's conflist: the agent writes it once the node's routes are in place.
    async fn wait_ready(&self, node: &NodeSpec) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if sandbox::conflist_path(&self.dir.conf_dir(&node.name)).is_some() {
                return Ok(());
            }
            interrupt::check()?;
            let log = self.dir.agent_log(&node.name);
            if !node.agent.is_some_and(|a| a.is_running()) {
                return Err(Error::Invalid(format!(
                    "the agent of {} exited before writing its conflist{}",
                    node.name,
                    log_tail(&log)
                )));
            }
            if Instant::now() >= deadline {
                return Err(Error::Invalid(format!(
                    "the agent of {} wrote no conflist within {}s{}",
                    node.name,
                    READY_TIMEOUT.as_secs(),
                    log_tail(&log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The node's addresses with the prefix lengths `create_node` gave them on its link: what its
/// record publishes until its agent publishes what the kernel says.
fn node_networks(spec: &ClusterSpec, node: &NodeSpec) -> Vec<IpNetwork> {
    node.node_ips()
        .into_iter()
        .filter_map(|ip| {
            let prefix = match ip {
                IpAddr::V4(v4) => segment_network(spec, segment_of(spec, v4)).prefix(),
                IpAddr::V6(_) => spec.underlay_v6?.prefix(),
            };
            IpNetwork::new(ip, prefix).ok()
        })
        .collect()
}

/// The most L2 segments a cluster can have: segment `s` is the `s`-th /16 from the underlay's
/// (172.18.0.0/16, 172.19.0.0/16, …), all inside 172.16.0.0/12.
pub const MAX_SEGMENTS: u32 = 14;

/// The network of L2 segment `segment`.
pub fn segment_network(spec: &ClusterSpec, segment: u32) -> Ipv4Network {
    let size = 1u32 << (32 - u32::from(spec.underlay.prefix()));
    Ipv4Network::new(
        nth(spec.underlay.network(), segment * size),
        spec.underlay.prefix(),
    )
    .expect("prefix of the underlay")
}

/// The segment a node address is on (0 when it is on none of them).
pub fn segment_of(spec: &ClusterSpec, ip: Ipv4Addr) -> u32 {
    (0..MAX_SEGMENTS)
        .find(|s| segment_network(spec, *s).contains(ip))
        .unwrap_or(0)
}

/// The bridge of L2 segment `segment` in the underlay namespace.
fn segment_bridge(segment: u32) -> String {
    if segment == 0 {
        BRIDGE.to_string()
    } else {
        format!("br{segment}")
    }
}

/// How many node-sized slices the cluster CIDR has (counted up to 2^32: nodes are numbered
/// by a u32).
fn slices(cluster: IpNetwork, node_mask: u8) -> Result<u64> {
    let (flag, longest) = match cluster {
        IpNetwork::V4(_) => ("--node-mask", 30),
        IpNetwork::V6(_) => ("--node-mask-v6", 126),
    };
    if node_mask <= cluster.prefix() || node_mask > longest {
        return Err(Error::Invalid(format!(
            "{flag} must be longer than the cluster CIDR's /{} and at most {longest}",
            cluster.prefix()
        )));
    }
    Ok(1u64 << (node_mask - cluster.prefix()).min(32))
}

/// The `index`-th /node_mask slice of the cluster CIDR.
fn pod_cidr(cluster: Ipv4Network, node_mask: u8, index: u32) -> Ipv4Network {
    let size = 1u32 << (32 - node_mask);
    Ipv4Network::new(nth(cluster.network(), index * size), node_mask).expect("prefix checked")
}

/// The `index`-th /node_mask slice of the IPv6 cluster CIDR.
fn pod_cidr_v6(cluster: Ipv6Network, node_mask: u8, index: u32) -> Ipv6Network {
    let size = 1u128 << (128 - node_mask);
    Ipv6Network::new(nth6(cluster.network(), u128::from(index) * size), node_mask)
        .expect("prefix checked")
}

/// No DAD on the links created in `ns` from now on: the emulator hands out every underlay
/// address itself, so there is nothing to detect, and a node would otherwise wait a second
/// or more for its link-local and global addresses (the global ones are added with
/// IFA_F_NODAD as well).
fn no_dad(ns: &NetNs) -> std::io::Result<()> {
    netns::write_sysctls(
        ns,
        &[
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ],
    )
}

fn netlink_in(ns: Arc<NetNs>) -> Result<Netlink> {
    let name = ns.path().display().to_string();
    Netlink::in_netns(ns).map_err(io_err(format!("open netlink in {name}")))
}

async fn link_index(nl: &Netlink, name: &str) -> Result<u32> {
    nl.link_by_name(name)
        .await?
        .map(|l| l.index)
        .ok_or_else(|| Error::Io {
            op: format!("find link {name}"),
            cause: std::io::ErrorKind::NotFound.into(),
        })
}

async fn set_up(nl: &Netlink, name: &str) -> Result<()> {
    let index = link_index(nl, name).await?;
    Ok(nl.set_up(index).await?)
}

/// The last lines of a log, to show why an agent failed.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
    if tail.is_empty() {
        format!(" (log: {})", path.display())
    } else {
        format!("; {}:\n  {tail}", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs_are_slices_of_the_cluster_cidr() {
        let c: Ipv4Network = "10.244.0.0/16".parse().unwrap();
        assert_eq!(pod_cidr(c, 24, 1).to_string(), "10.244.1.0/24");
        assert_eq!(pod_cidr(c, 24, 255).to_string(), "10.244.255.0/24");
        assert_eq!(pod_cidr(c, 26, 5).to_string(), "10.244.1.64/26");
        assert_eq!(slices(c.into(), 24).unwrap(), 256);
        assert!(slices(c.into(), 16).is_err());
        assert!(slices(c.into(), 31).is_err());
        let c6: Ipv6Network = "fd00:10:244::/56".parse().unwrap();
        assert_eq!(pod_cidr_v6(c6, 64, 1).to_string(), "fd00:10:244:1::/64");
        assert_eq!(pod_cidr_v6(c6, 64, 255).to_string(), "fd00:10:244:ff::/64");
        assert_eq!(slices(c6.into(), 64).unwrap(), 256);
        assert_eq!(slices("fd00::/8".parse().unwrap(), 64).unwrap(), 1 << 32);
        assert!(slices(c6.into(), 127).is_err());
    }
}
