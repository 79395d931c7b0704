//! The state dir: what a cluster is made of, on disk, so that every `flatnet` command (each a
//! new process) sees the same cluster, and `down` knows what to remove.
//!
//! ```text
//! <root>/<cluster>/
//!   cluster.json            CIDRs and nodes (with their agents' pid and start time, restart
//!                           counts), the controller, and who is building the cluster
//!   lock                    flock'd by every command that changes the cluster, and by the
//!                           controller while it acts
//!   controller.log          the controller's log
//!   registry/<node>.json    node records, as the agents read them
//!   nodes/<node>/net.d/     the node's CNI conf dir (its agent writes the conflist)
//!   nodes/<node>/ipam/      the node's IPAM store (nodes never share one)
//!   nodes/<node>/agent.log  the agent's log, stdout and stderr
//!   nodes/<node>/agent-status.json  the agent's report: ready, refused node records
//!   namespaces/<ns>.json    a namespace: its labels and annotations
//!   pods/<ns>/<pod>.json    a pod's sandbox: node, container ID, netns, cached conflist and
//!                           result, labels and annotations
//!   pods/<ns>/<pod>/        its containers: supervisor.json, status.json, logs/, volumes/, shm/
//! ```

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::labels::Labels;
use super::manifest::PodSpec;
use super::pod_status::PodStatus;
use super::process::ProcessId;
use super::{io_err, Error, Result};
use crate::fsutil::write_atomic;

/// Where clusters live unless `--state-dir` or `FLATNET_STATE_DIR` says otherwise.
pub const DEFAULT_ROOT: &str = "/run/flatnet";

/// The directory holding one subdirectory per cluster.
#[derive(Debug, Clone)]
pub struct StateRoot(PathBuf);

impl StateRoot {
    pub fn new(path: impl Into<PathBuf>) -> StateRoot {
        StateRoot(path.into())
    }

    pub fn cluster(&self, name: &str) -> ClusterDir {
        ClusterDir(self.0.join(name))
    }
}

/// One cluster's state dir.
#[derive(Debug, Clone)]
pub struct ClusterDir(PathBuf);

impl ClusterDir {
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The cluster's name: the last component of its state dir.
    pub fn name(&self) -> &str {
        self.0
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }

    pub fn exists(&self) -> bool {
        self.0.exists()
    }

    fn spec_path(&self) -> PathBuf {
        self.0.join("cluster.json")
    }

    pub fn registry(&self) -> PathBuf {
        self.0.join("registry")
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.0.join("nodes").join(node)
    }

    pub fn conf_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("net.d")
    }

    pub fn ipam_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("ipam")
    }

    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.log")
    }

    pub fn agent_status(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent-status.json")
    }

    /// The agent's last report, if it wrote one.
    pub fn agent_report(&self, node: &str) -> Option<crate::agent::Report> {
        serde_json::from_slice(&std::fs::read(self.agent_status(node)).ok()?).ok()
    }

    pub fn controller_log(&self) -> PathBuf {
        self.0.join("controller.log")
    }

    /// The directory of a pod's containers: supervisor config, status, logs, volumes.
    pub fn pod_dir(&self, namespace: &str, pod: &str) -> PodDir {
        PodDir::new(self.pods_dir().join(namespace).join(pod))
    }

    fn pods_dir(&self) -> PathBuf {
        self.0.join("pods")
    }

    fn pod_path(&self, namespace: &str, pod: &str) -> PathBuf {
        self.pods_dir().join(namespace).join(format!("{pod}.json"))
    }

    fn namespaces_dir(&self) -> PathBuf {
        self.0.join("namespaces")
    }

    fn namespace_path(&self, name: &str) -> PathBuf {
        self.namespaces_dir().join(format!("{name}.json"))
    }

    pub fn namespace(&self, name: &str) -> Result<Option<NamespaceRecord>> {
        read_json(&self.namespace_path(name))
    }

    pub fn save_namespace(&self, ns: &NamespaceRecord) -> Result<()> {
        let dir = self.namespaces_dir();
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        write_json(&self.namespace_path(&ns.name), ns)
    }

    pub fn remove_namespace(&self, name: &str) -> Result<()> {
        remove_file(&self.namespace_path(name))?;
        // Fails, as it should, while the namespace still holds a pod.
        let _ = std::fs::remove_dir(self.pods_dir().join(name));
        Ok(())
    }

    /// All namespace records, sorted by name.
    pub fn namespaces(&self) -> Result<Vec<NamespaceRecord>> {
        let mut list: Vec<NamespaceRecord> = records(&self.namespaces_dir())?;
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    /// Takes the cluster's lock, creating the directory if needed; held until the guard drops.
    /// Commands that change the cluster hold it, so two of them never interleave.
    pub fn lock(&self) -> Result<Lock> {
        std::fs::create_dir_all(&self.0).map_err(io_err(format!("create {}", self.0.display())))?;
        let path = self.0.join("lock");
        let file =
            crate::fsutil::lock_file(&path).map_err(io_err(format!("open {}", path.display())))?;
        crate::fsutil::flock(&file, true).map_err(io_err(format!("lock {}", path.display())))?;
        Ok(Lock { _file: file })
    }

    /// The cluster's lock if nobody holds it now; None if someone does, or if the cluster's
    /// directory is gone (this never creates it).
    pub fn try_lock(&self) -> Result<Option<Lock>> {
        let path = self.0.join("lock");
        let file = match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
        };
        let got = crate::fsutil::flock(&file, false)
            .map_err(io_err(format!("lock {}", path.display())))?;
        Ok(got.then_some(Lock { _file: file }))
    }

    /// The cluster's spec, or None if it has none (never made, or a crash before it was written).
    pub fn load(&self) -> Result<Option<ClusterSpec>> {
        read_json(&self.spec_path())
    }

    pub fn save(&self, spec: &ClusterSpec) -> Result<()> {
        write_json(&self.spec_path(), spec)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodRecord>> {
        Ok(read_json(&self.pod_path(namespace, name))?.map(with_ips))
    }

    pub fn save_pod(&self, pod: &PodRecord) -> Result<()> {
        let dir = self.pods_dir().join(&pod.namespace);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        write_json(&self.pod_path(&pod.namespace, &pod.name), pod)
    }

    pub fn remove_pod(&self, namespace: &str, name: &str) -> Result<()> {
        remove_file(&self.pod_path(namespace, name))
    }

    /// All pod records of every namespace, sorted by namespace and name; unreadable ones are
    /// skipped (a crash mid-write leaves only a temp file, which is not a record).
    pub fn pods(&self) -> Result<Vec<PodRecord>> {
        let dir = self.pods_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(format!("read {}", dir.display()))(e)),
        };
        let mut pods: Vec<PodRecord> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
            // Only namespace directories: the pod files an older flatnet kept directly in
            // pods/ are not read (Cluster::spec refuses such a cluster).
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pods.extend(
                    records::<PodRecord>(&entry.path())?
                        .into_iter()
                        .map(with_ips),
                );
            }
        }
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(pods)
    }

    /// Removes the whole state dir, and the root above it if no other cluster is left; absent
    /// is fine.
    pub fn remove(&self) -> Result<()> {
        remove_tree(&self.0)?;
        if let Some(root) = self.0.parent() {
            // Fails, as it should, while anything else is in there.
            let _ = std::fs::remove_dir(root);
        }
        Ok(())
    }
}

/// A pod record with its addresses, also one written before records kept them all.
fn with_ips(mut pod: PodRecord) -> PodRecord {
    if pod.ips.is_empty() {
        pod.ips = pod.result.as_ref().map(result_ips).unwrap_or_default();
    }
    pod
}

/// The addresses of an ADD result, in its order (of every result version: `ips[].address`).
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    let Some(ips) = result["ips"].as_array() else {
        return Vec::new();
    };
    ips.iter()
        .filter_map(|ip| {
            ip["address"]
                .as_str()?
                .split('/')
                .next()?
                .parse::<IpAddr>()
                .ok()
        })
        .collect()
}

/// The JSON records directly in `dir` (absent: none); unreadable ones are skipped.
fn records<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<Vec<T>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("read {}", dir.display()))(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(io_err(format!("read {}", dir.display())))?
            .path();
        let is_record = path.extension().is_some_and(|e| e == "json")
            && !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if is_record {
            if let Ok(Some(r)) = read_json::<T>(&path) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// The cluster lock; released on drop.
pub struct Lock {
    _file: File,
}

/// The layout of the state dir; 2 added namespaces (pods under `pods/<ns>/`).
pub const STATE_VERSION: u32 = 2;

/// What a cluster is: its address plan and nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    pub name: String,
    /// [`STATE_VERSION`] of the flatnet that made it; absent (0) before namespaces.
    #[serde(default)]
    pub state_version: u32,
    /// The families the pods have (absent: IPv4, as every cluster before dual-stack).
    #[serde(default)]
    pub ip_family: IpFamily,
    /// The IPv4 pod network; None in an IPv6-only cluster.
    #[serde(
        rename = "clusterCIDR",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_cidr: Option<Ipv4Network>,
    /// The prefix length of each node's IPv4 pod CIDR.
    pub node_mask: u8,
    /// The IPv6 pod network; None in an IPv4-only cluster.
    #[serde(
        rename = "clusterCIDRv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_cidr_v6: Option<Ipv6Network>,
    /// The prefix length of each node's IPv6 pod CIDR.
    #[serde(default = "default_node_mask_v6")]
    pub node_mask_v6: u8,
    /// The nodes' network; its first address is the bridge's, and the nodes' default gateway.
    /// Every node has an address in it, whatever the pods' families (as kind's nodes have).
    pub underlay: Ipv4Network,
    /// The nodes' IPv6 network, as kind's docker network has one; only in a cluster with IPv6
    /// pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_v6: Option<Ipv6Network>,
    pub created: u64,
    /// The agents' resync period.
    #[serde(default = "default_resync_ms")]
    pub agent_resync_ms: u64,
    /// The controller's first back-off before it restarts an agent; it doubles per restart.
    #[serde(default = "default_backoff_ms")]
    pub agent_restart_backoff_ms: u64,
    /// Where plugins are looked up first (`up --cni-bin-dir`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The cluster's controller, once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<ProcessId>,
    /// The command building the cluster (`up`, `node add`) while it runs; cleared once it
    /// finished. Set with that process gone, the cluster is incomplete: it was killed half-way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<ProcessId>,
    /// Where Services' ClusterIPs come from (`up --service-cidr`; absent: kind's default).
    #[serde(rename = "serviceCIDR", default = "default_service_cidr")]
    pub service_cidr: Ipv4Network,
    /// How the agents reach other nodes' pods (`up --backend`; absent: hybrid).
    #[serde(default)]
    pub overlay: crate::agent::overlay::Config,
    pub nodes: Vec<NodeSpec>,
}

/// kind's (and kubeadm's) service network.
pub fn default_service_cidr() -> Ipv4Network {
    "10.96.0.0/16".parse().expect("valid CIDR")
}

impl ClusterSpec {
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn bridge_ip(&self) -> Ipv4Addr {
        nth(self.underlay.network(), 1)
    }

    /// The bridge's IPv6 address, the nodes' IPv6 gateway: `::1` of the IPv6 underlay.
    pub fn bridge_ip_v6(&self) -> Option<Ipv6Addr> {
        self.underlay_v6.map(|u| nth6(u.network(), 1))
    }

    /// The cluster's pod networks, IPv4 first: what each agent gets as `--cluster-cidr`.
    pub fn cluster_cidrs(&self) -> Vec<IpNetwork> {
        let v4 = self.cluster_cidr.map(IpNetwork::V4);
        v4.into_iter()
            .chain(self.cluster_cidr_v6.map(IpNetwork::V6))
            .collect()
    }

    /// Whether a command that was building the cluster died before it finished.
    pub fn incomplete(&self) -> bool {
        self.building.is_some_and(|b| !b.is_running())
    }
}

fn default_node_mask_v6() -> u8 {
    64
}

fn default_resync_ms() -> u64 {
    crate::agent::DEFAULT_RESYNC.as_millis() as u64
}

fn default_backoff_ms() -> u64 {
    DEFAULT_RESTART_BACKOFF.as_millis() as u64
}

/// `base + n`.
pub fn nth(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(n))
}

/// `base + n`, for IPv6.
pub fn nth6(base: Ipv6Addr, n: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(base).wrapping_add(n))
}

/// The address families of a cluster's pods, as kind's `networking.ipFamily`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    #[default]
    Ipv4,
    Ipv6,
    Dual,
}

impl IpFamily {
    pub fn has_v4(self) -> bool {
        self != IpFamily::Ipv6
    }

    pub fn has_v6(self) -> bool {
        self != IpFamily::Ipv4
    }

    /// Each family the cluster's pods have, IPv4 first.
    pub fn families(self) -> Vec<Family> {
        let mut out = Vec::new();
        if self.has_v4() {
            out.push(Family::V4);
        }
        if self.has_v6() {
            out.push(Family::V6);
        }
        out
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            IpFamily::Ipv4 => "ipv4",
            IpFamily::Ipv6 => "ipv6",
            IpFamily::Dual => "dual",
        })
    }
}

/// One address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Family {
    #[serde(rename = "IPv4")]
    V4,
    #[serde(rename = "IPv6")]
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// The emulator's record of one node: what it built (namespace, index, addresses) and what it
/// runs there (the agent, its restarts). The agent reads only the node's
/// [`crate::registry::NodeRecord`], which the emulator publishes from this.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    pub name: String,
    pub index: u32,
    /// The node's IPv4 address on the underlay: every node has one.
    #[serde(rename = "nodeIP")]
    pub node_ip: Ipv4Addr,
    /// Its IPv6 address on the underlay, in a cluster with IPv6 pods.
    #[serde(rename = "nodeIPv6", default, skip_serializing_if = "Option::is_none")]
    pub node_ip_v6: Option<Ipv6Addr>,
    /// Its IPv4 pod CIDR; None in an IPv6-only cluster.
    #[serde(rename = "podCIDR", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<Ipv4Network>,
    #[serde(rename = "podCIDRv6", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v6: Option<Ipv6Network>,
    /// Named namespace of the node.
    pub netns: String,
    /// None until the agent is started.
    pub agent: Option<ProcessId>,
    pub created: u64,
    /// How many times the controller restarted the agent.
    #[serde(default)]
    pub agent_restarts: u32,
    /// When the controller restarts the agent that it found gone, in ms since the epoch: on
    /// disk, so that a restarted controller keeps the back-off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_restart_at: Option<u64>,
}

impl NodeSpec {
    /// The node's pod CIDRs, IPv4 first (kind's order), as `spec.podCIDRs`.
    pub fn pod_cidrs(&self) -> Vec<IpNetwork> {
        let v4 = self.pod_cidr.map(IpNetwork::V4);
        v4.into_iter()
            .chain(self.pod_cidr_v6.map(IpNetwork::V6))
            .collect()
    }

    /// The node's addresses of its pods' families, as the InternalIPs kubelet reports: in an
    /// IPv6-only cluster only the IPv6 one, though eth0 has an IPv4 address too.
    pub fn node_ips(&self) -> Vec<IpAddr> {
        let v4 = self.pod_cidr.map(|_| IpAddr::V4(self.node_ip));
        v4.into_iter()
            .chain(self.pod_cidr_v6.and(self.node_ip_v6).map(IpAddr::V6))
            .collect()
    }

    /// The pod CIDRs as one column of text.
    pub fn pod_cidrs_text(&self) -> String {
        join(&self.pod_cidrs())
    }
}

/// Addresses or networks, comma-separated, as kubectl prints a list.
pub fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A Kubernetes namespace (`v1/Namespace`): a name, labels and annotations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceRecord {
    pub name: String,
    /// Always holds `kubernetes.io/metadata.name: <name>`, as Kubernetes sets it.
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub annotations: Labels,
    pub created: u64,
}

/// The label Kubernetes puts on every namespace, so that selectors can pick one by name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

impl NamespaceRecord {
    pub fn new(name: &str, mut labels: Labels, annotations: Labels) -> NamespaceRecord {
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.into());
        NamespaceRecord {
            name: name.into(),
            labels,
            annotations,
            created: now(),
        }
    }
}

/// A pod sandbox, with what a runtime caches for DEL: the conflist it was added with (the node's
/// may have changed or be gone by then) and the ADD result.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// With kubectl's last applied configuration, for a pod made by `apply`.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub annotations: Labels,
    pub node: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Named namespace of the pod.
    pub netns: String,
    /// Every address of the ADD result, in its order (one per family of a dual-stack node);
    /// empty until ADD succeeded. A record of a flatnet before dual-stack, which kept only
    /// `ip`, gets them from its cached result when read.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    pub conflist: Value,
    /// None while ADD has not succeeded yet: a crash then leaves a record that `down` still
    /// DELs by container ID.
    pub result: Option<Value>,
    pub created: u64,
    /// The v1/Pod document the pod was made from (by `apply` or `run`); None for a bare
    /// sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Value>,
    /// The pod's containers, for a pod made from a manifest or `run`; None for a bare sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PodSpec>,
    /// The pod's supervisor, once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<ProcessId>,
}

impl PodRecord {
    /// A bare sandbox `name` in namespace `default` on `node`, not yet attached: the start of
    /// every unit test's pod.
    #[cfg(test)]
    pub(crate) fn fixture(name: &str, node: &str) -> PodRecord {
        PodRecord {
            name: name.into(),
            namespace: "default".into(),
            labels: Default::default(),
            annotations: Default::default(),
            node: node.into(),
            container_id: format!("c-{name}"),
            netns: format!("ns-{name}"),
            ips: Vec::new(),
            conflist: Value::Null,
            result: None,
            created: 0,
            manifest: None,
            spec: None,
            supervisor: None,
        }
    }

    /// The pod's address of `family`, if it has one.
    pub fn ip(&self, family: Family) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| Family::of(*ip) == family)
    }

    /// The pod's IPv4 address, if it has one: what the IPv4-only parts (trace) follow.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.ips.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
    }

    /// NAME for a pod of `default`, else NAMESPACE/NAME: how check, trace and the pictures
    /// name a pod, and what trace takes.
    pub fn display_name(&self) -> String {
        if self.namespace == "default" {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

pub fn now() -> u64 {
    now_ms() / 1000
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Io {
                op: format!("parse {}", path.display()),
                cause: io::Error::other(e),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(value).expect("state serializes");
    json.push(b'\n');
    write_atomic(path, &json).map_err(io_err(format!("write {}", path.display())))
}

fn remove_file(path: &Path) -> Result<()> {
    absent_is_fine(std::fs::remove_file(path), path)
}

/// Removes a directory tree; absent is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    absent_is_fine(std::fs::remove_dir_all(path), path)
}

fn absent_is_fine(removed: io::Result<()>, path: &Path) -> Result<()> {
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_err(format!("remove {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}
/// kubelet's first restart back-off.
pub const DEFAULT_RESTART_BACKOFF: Duration = Duration::from_secs(10);

/// A pod's directory in the state dir.
#[derive(Debug, Clone)]
pub struct PodDir(PathBuf);

impl PodDir {
    pub fn new(path: impl Into<PathBuf>) -> PodDir {
        PodDir(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn supervisor_config(&self) -> PathBuf {
        self.0.join("supervisor.json")
    }

    fn status_path(&self) -> PathBuf {
        self.0.join("status.json")
    }

    pub fn logs(&self) -> PathBuf {
        self.0.join("logs")
    }

    pub fn log(&self, container: &str) -> PathBuf {
        self.logs().join(format!("{container}.log"))
    }

    pub fn volume(&self, name: &str) -> PathBuf {
        self.0.join("volumes").join(name)
    }

    pub fn shm(&self) -> PathBuf {
        self.0.join("shm")
    }

    pub fn supervisor_log(&self) -> PathBuf {
        self.0.join("supervisor.log")
    }

    /// `delete --grace-period`: read by the supervisor when it is told to stop, over the
    /// pod's own terminationGracePeriodSeconds.
    pub fn grace_override(&self) -> PathBuf {
        self.0.join("grace-period")
    }

    /// The status as the supervisor last wrote it.
    /// The pod's /etc/resolv.conf, mounted into each container.
    pub fn resolv_conf(&self) -> PathBuf {
        self.0.join("resolv.conf")
    }

    /// The pod's /etc/hosts, mounted into each container.
    pub fn hosts(&self) -> PathBuf {
        self.0.join("hosts")
    }

    pub fn status(&self) -> Option<PodStatus> {
        serde_json::from_slice(&std::fs::read(self.status_path()).ok()?).ok()
    }

    pub fn save_status(&self, status: &PodStatus) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(status).expect("status serializes");
        write_atomic(&self.status_path(), &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_of_a_flatnet_before_dual_stack_reads_as_ipv4() {
        let old = r#"{"name":"c","stateVersion":2,"clusterCIDR":"10.244.0.0/16","nodeMask":24,
            "underlay":"172.18.0.0/16","created":1,"nodes":[{"name":"node-1","index":1,
            "nodeIP":"172.18.0.2","podCIDR":"10.244.1.0/24","netns":"n","agent":null,
            "created":1}]}"#;
        let spec: ClusterSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec.ip_family, IpFamily::Ipv4);
        assert_eq!(spec.ip_family.families(), [Family::V4]);
        assert_eq!(join(&spec.cluster_cidrs()), "10.244.0.0/16");
        assert_eq!(spec.bridge_ip_v6(), None);
        let node = &spec.nodes[0];
        assert_eq!(join(&node.node_ips()), "172.18.0.2");
        assert_eq!(node.pod_cidrs_text(), "10.244.1.0/24");
    }

    #[test]
    fn a_dual_stack_node_lists_ipv4_first_and_an_ipv6_only_one_ipv6_alone() {
        let mut node = NodeSpec {
            name: "node-1".into(),
            index: 1,
            node_ip: "172.18.0.2".parse().unwrap(),
            node_ip_v6: Some("fc00:f853:ccd:e793::2".parse().unwrap()),
            pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
            pod_cidr_v6: Some("fd00:10:244:1::/64".parse().unwrap()),
            netns: String::new(),
            agent: None,
            created: 0,
            agent_restarts: 0,
            agent_restart_at: None,
        };
        assert_eq!(join(&node.node_ips()), "172.18.0.2,fc00:f853:ccd:e793::2");
        assert_eq!(node.pod_cidrs_text(), "10.244.1.0/24,fd00:10:244:1::/64");
        node.pod_cidr = None;
        assert_eq!(join(&node.node_ips()), "fc00:f853:ccd:e793::2");
        assert_eq!(node.pod_cidrs_text(), "fd00:10:244:1::/64");
        assert_eq!(IpFamily::Ipv6.families(), [Family::V6]);
        assert_eq!(IpFamily::Dual.families(), [Family::V4, Family::V6]);
    }
}
