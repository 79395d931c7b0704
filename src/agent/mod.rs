//! The node agent: routes every other node's pod CIDR to that node (host-gw), stops the node's
//! pods from sending with addresses not their own (and masquerades their egress), then
//! declares the node's network ready by writing its conflist.
//!
//! It runs in the node's network namespace, one per node. Every wake-up (a change to the node
//! list, or the periodic resync) re-reads the whole list and reconciles the whole state, so
//! there is one code path for start-up, changes, restarts and repairs. Pods, namespaces and
//! policies are the exception, being many: a wake-up for some of them judges those alone, and
//! reconciles only if this node's policy chains came out different (the resync re-judges
//! everything and reconciles whatever the inputs).

pub mod antispoof;
pub mod conflist;
pub mod egress;
pub mod health;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod leftovers;
pub mod nft;
pub mod overlay;
pub mod policy;
pub mod reconcile;
pub mod source;
pub mod validate;

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use tracing::{error, info, warn};

use crate::netlink::{self, protocol, Netlink};
use crate::registry::{Listed, NodeRecord};

#[cfg(test)]
mod fixtures;

pub use health::Readiness;
pub use source::{NodeSource, RegistrySource};
pub use validate::Refusal;

/// How often the node list is re-read and the routes re-checked when nothing announced a
/// change: the bound on how long a hand-edited route or a missed event stays wrong.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(10);

/// What the agent needs to know about its own node beyond the node list.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name in the node list: its record gives the pod CIDR of the conflist and
    /// is the one node that gets no route.
    pub node_name: String,
    /// The runtime's CNI config dir (/etc/cni/net.d).
    pub conf_dir: PathBuf,
    /// The plugin's IPAM store, passed to it in the conflist.
    pub data_dir: PathBuf,
    /// The pods' MTU, passed to the plugin; None lets it use the node's uplink MTU.
    pub mtu: Option<u32>,
    /// The plugin's log file, passed to it; None keeps its default.
    pub cni_log_file: Option<PathBuf>,
    /// The cluster's pod networks, at most one per family (kube-controller-manager's
    /// `--cluster-cidr`): every pod CIDR must lie inside the one of its family, no node IP
    /// inside any, and pod traffic to anywhere else (but the nodes) is masqueraded.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// Where to write the agent's status (ready, refused records) as JSON whenever it changes,
    /// for the emulator's `get nodes`; None writes nothing.
    pub status_file: Option<PathBuf>,
    /// How other nodes' pods are reached: directly, through VXLAN, or each the way it can.
    pub overlay: overlay::Config,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read the node list: {0}")]
    Source(io::Error),
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
    #[error("{}", join(.0))]
    Routes(Vec<RouteFailure>),
    #[error("{}: {cause}", .path.display())]
    Conflist { path: PathBuf, cause: io::Error },
    #[error("nftables table inet flatnet: {0}")]
    Nftables(nft::NftError),
    #[error("{} is not UTF-8, so the conflist cannot name it", .0.display())]
    PathNotUtf8(PathBuf),
    #[error(
        "the cluster CIDR {cluster} overlaps the node network {node_network}: refusing to route"
    )]
    ClusterCidr {
        cluster: IpNetwork,
        node_network: IpNetwork,
    },
}

/// Why one route could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum RouteFailure {
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
    #[error("route {dst}: held by a route of protocol {protocol}, which flatnet never replaces")]
    Blocked { dst: IpNetwork, protocol: u8 },
    #[error(transparent)]
    Unroutable(#[from] overlay::Unroutable),
}

fn join(failures: &[RouteFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The outcome of a successful pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Routes to every other node are in place and the conflist is written.
    Ready,
    /// This node is not in the list, or its record is refused: nothing was touched, since
    /// without its own pod CIDR the agent could route that CIDR away from its own pods.
    WaitingForOwnNode,
}

/// One pass: its outcome, and the records it left out (also when the routes failed).
#[derive(Debug)]
pub struct Pass {
    pub outcome: Result<Status, Error>,
    pub refused: Vec<Refusal>,
    /// The nftables table's counters as the pass found them (zero if it did not get there).
    pub reading: antispoof::Reading,
    /// How each other node is reached (`direct`, `tunnel`, both, or `unroutable`).
    pub peers: BTreeMap<String, String>,
}

/// One pass: the records judged, the routes for those accepted and the nftables table, then,
/// only if both are in place, the conflist.
pub async fn reconcile(cfg: &AgentConfig, listed: &[Listed], netlink: &Netlink) -> Pass {
    reconcile_with(cfg, listed, &policy::View::default(), netlink).await
}

/// One pass that also enforces the NetworkPolicies of `view` on this node's pods.
pub async fn reconcile_with(
    cfg: &AgentConfig,
    listed: &[Listed],
    view: &policy::View,
    netlink: &Netlink,
) -> Pass {
    reconcile_compiled(cfg, listed, (view, None), netlink).await
}

/// NetworkPolicy's chains for this node, as compiled for the node's addresses `addrs`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Compiled {
    addrs: Vec<IpAddr>,
    rules: String,
}

impl Compiled {
    /// The chains of `view` for the node as `listed` has it, if its record is there and
    /// readable; whether the pass accepts it is the pass's to judge.
    fn new(cfg: &AgentConfig, listed: &[Listed], view: &policy::View) -> Option<Compiled> {
        let own = listed
            .iter()
            .filter(|l| l.key == cfg.node_name)
            .find_map(|l| l.record.as_ref().ok())?;
        let addrs = node_addrs(own);
        Some(Compiled {
            rules: policy::compile::rules(view, &cfg.node_name, &addrs),
            addrs,
        })
    }
}

/// A pass with the policy chains compiled already, when they were for the node's addresses.
async fn reconcile_compiled(
    cfg: &AgentConfig,
    listed: &[Listed],
    view: (&policy::View, Option<&Compiled>),
    netlink: &Netlink,
) -> Pass {
    let mut refused = Vec::new();
    let mut reading = antispoof::Reading::default();
    let mut peers = BTreeMap::new();
    let outcome = pass(
        cfg,
        listed,
        view,
        netlink,
        &mut refused,
        (&mut reading, &mut peers),
    )
    .await;
    Pass {
        outcome,
        refused,
        reading,
        peers,
    }
}

async fn pass(
    cfg: &AgentConfig,
    listed: &[Listed],
    view: (&policy::View, Option<&Compiled>),
    netlink: &Netlink,
    refused: &mut Vec<Refusal>,
    (reading, peers): (&mut antispoof::Reading, &mut BTreeMap<String, String>),
) -> Result<Status, Error> {
    let current = netlink.routes().await?;
    let current6 = netlink.routes6().await?;
    // Pod CIDRs are judged against the cluster CIDRs alone, which is sound only if the cluster
    // CIDRs themselves keep clear of the node's own networks. A host route is no network: the
    // plugin puts the gateway (inside the pod CIDR) on every host veth, and where IPv4 makes
    // no main-table route of a /32, IPv6 makes a kernel /128 of it; judged as a network, the
    // node's first IPv6 pod would stop every later pass.
    let connected = current
        .iter()
        .filter(|r| r.protocol == libc::RTPROT_KERNEL && r.gateway.is_none())
        .filter(|r| r.dst.prefix() < 32)
        .map(|r| IpNetwork::from(r.dst))
        .chain(
            current6
                .iter()
                .filter(|r| r.protocol == libc::RTPROT_KERNEL && r.gateway.is_none())
                .filter(|r| r.dst.prefix() < 128)
                .map(|r| IpNetwork::from(r.dst)),
        );
    for node_network in connected {
        if let Some(&cluster) = cfg
            .cluster_cidrs
            .iter()
            .find(|c| validate::overlap(**c, node_network))
        {
            return Err(Error::ClusterCidr {
                cluster,
                node_network,
            });
        }
    }
    let installed: Vec<_> = current
        .iter()
        .filter(|r| r.protocol == protocol::AGENT)
        .filter_map(reconcile::hop)
        .chain(
            current6
                .iter()
                .filter(|r| r.protocol == protocol::AGENT)
                .filter_map(reconcile::hop),
        )
        .collect();
    let verdict = validate::judge(&cfg.node_name, &cfg.cluster_cidrs, listed, &installed);
    *refused = verdict.refused;
    let Some(own) = verdict.own else {
        return Ok(Status::WaitingForOwnNode);
    };
    let data_dir = cfg
        .data_dir
        .to_str()
        .ok_or_else(|| Error::PathNotUtf8(cfg.data_dir.clone()))?;
    // Neither waits for the other: a failing route must not keep the pods unprotected, nor
    // a failing nft the routes to other nodes away. The conflist waits for both.
    let mut failures = Vec::new();
    let overlay = routes(
        cfg,
        &own,
        (&verdict.others, &verdict.kept),
        (&current, &current6),
        netlink,
        &mut failures,
    )
    .await?;
    *peers = overlay.modes.clone();
    // The judge reports a pod CIDR whose family the node has no address of; the tunnel
    // carries it over the other family, so that report no longer holds.
    refused.retain(|r| {
        !overlay.tunnelled.iter().any(|p| {
            r.reason
                .contains(&format!("pod CIDR {} is not routed", p.cidr))
        })
    });
    let table = table(cfg, &own, &verdict.others, &overlay, view, netlink);
    if !failures.is_empty() {
        return Err(Error::Routes(failures));
    }
    *reading = table?;
    let log_file = match &cfg.cni_log_file {
        Some(p) => Some(p.to_str().ok_or_else(|| Error::PathNotUtf8(p.clone()))?),
        None => None,
    };
    let content = conflist::render(&own.pod_cidrs, data_dir, cfg.mtu, log_file);
    let wrote = conflist::ensure(&cfg.conf_dir, &content).map_err(|cause| Error::Conflist {
        path: conflist::path(&cfg.conf_dir),
        cause,
    })?;
    if wrote {
        info!(path = %conflist::path(&cfg.conf_dir).display(), pod_cidrs = ?own.pod_cidrs,
            "conflist written: the node's network is ready");
    }
    Ok(Status::Ready)
}

/// The routes to every other node, direct or through the tunnel as [`overlay::decide`]
/// chooses, with the tunnel devices and their entries; a device no peer needs goes once the
/// routes through it are gone.
async fn routes(
    cfg: &AgentConfig,
    own: &NodeRecord,
    (others, kept): (&[NodeRecord], &[validate::Hop]),
    (current, current6): (&[netlink::Route], &[netlink::Route6]),
    netlink: &Netlink,
    failures: &mut Vec<RouteFailure>,
) -> Result<overlay::Applied, Error> {
    let decisions = overlay::decide(&cfg.overlay, own, others, netlink).await?;
    let mut nl_failures = Vec::new();
    let applied = overlay::apply(
        &cfg.overlay,
        own,
        &decisions,
        &cfg.cluster_cidrs,
        netlink,
        &mut nl_failures,
    )
    .await;
    reconcile::routes(netlink, current, &applied.routes, kept, failures).await;
    reconcile::routes(netlink, current6, &applied.routes, kept, failures).await;
    overlay::finish(&applied, netlink, &mut nl_failures).await;
    failures.extend(nl_failures.into_iter().map(RouteFailure::from));
    failures.extend(
        applied
            .unroutable
            .iter()
            .cloned()
            .map(RouteFailure::Unroutable),
    );
    Ok(applied)
}

/// Puts the table in place unless it already is: anti-spoofing, egress masquerade that
/// exempts the cluster CIDR and the accepted nodes (`own` and `others`), and the policies of
/// `view` for this node's pods. Returns the counters of the table found.
fn table(
    cfg: &AgentConfig,
    own: &NodeRecord,
    others: &[NodeRecord],
    overlay: &overlay::Applied,
    (view, compiled): (&policy::View, Option<&Compiled>),
    netlink: &Netlink,
) -> Result<antispoof::Reading, Error> {
    let node_ips: Vec<_> = std::iter::once(own)
        .chain(others)
        .flat_map(|n| n.node_ips.iter().copied())
        .collect();
    let pod_cidrs: Vec<_> = own
        .pod_cidrs
        .iter()
        .map(|c| conflist::network(*c))
        .collect();
    let node_addrs = node_addrs(own);
    let policies = match compiled {
        Some(c) if c.addrs == node_addrs => c.rules.clone(),
        _ => policy::compile::rules(view, &cfg.node_name, &node_addrs),
    };
    let body = antispoof::rules()
        + &egress::rules(&pod_cidrs, &cfg.cluster_cidrs, &node_ips)
        + &overlay::rules(cfg.overlay.port, &overlay.tunnelled)
        + &policies;
    let wanted = nft::Ruleset::new(&body);
    // A table that cannot be read is written: what is in the kernel is unknown, and the
    // write says whether nftables works at all.
    let found = nft::read(netlink.netns()).unwrap_or_else(|e| {
        warn!(table = nft::TABLE, "read the table over nfnetlink: {e}");
        None
    });
    let rewritten = !found.as_ref().is_some_and(|f| wanted.is_current(f));
    if rewritten {
        nft::write(&wanted, netlink.netns()).map_err(Error::Nftables)?;
        info!(table = nft::TABLE, cluster_cidrs = ?cfg.cluster_cidrs,
            "nftables table written: anti-spoofing and egress masquerade in place");
    }
    Ok(antispoof::Reading {
        counters: found.map(|f| f.counters).unwrap_or_default(),
        rewritten,
    })
}

/// The node, as policies see it: its own addresses and its pods' gateway.
fn node_addrs(own: &NodeRecord) -> Vec<IpAddr> {
    own.node_ips
        .iter()
        .copied()
        .chain(own.pod_cidrs.iter().map(|c| policy::gateway(*c)))
        .collect()
}

/// What the last pass that left the node ready was given, and what it found: a wake-up that
/// brings the same node list and the same chains for this node has nothing to change.
struct Settled {
    listed: Vec<Listed>,
    compiled: Option<Compiled>,
    refused: Vec<Refusal>,
    peers: BTreeMap<String, String>,
}

/// What the agent reports about itself: in `--status-file` and in `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub ready: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(default)]
    pub refused: Vec<Refusal>,
    /// How each other node is reached: `direct`, `tunnel`, `direct/tunnel` (one family each
    /// way) or `unroutable`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peers: BTreeMap<String, String>,
}

/// Runs the agent until the task is dropped, or until the node source fails (a source that
/// cannot read the list cannot be reconciled against; failures to program routes, by
/// contrast, are logged and retried on the next wake-up).
pub async fn run(
    cfg: &AgentConfig,
    mut source: impl NodeSource,
    netlink: Netlink,
    ready: &Readiness,
) -> Result<(), Error> {
    info!(node = %cfg.node_name, conf_dir = %cfg.conf_dir.display(), "agent started");
    let _leftovers = leftovers::Sweeper::start(&netlink);
    // The last report: a steady state, good or bad, is logged (and written) once, not every
    // resync.
    let mut last: Option<Report> = None;
    let mut drops = antispoof::Drops::default();
    let mut judge = policy::Judge::default();
    let mut settled: Option<Settled> = None;
    loop {
        let listed = source.next().await.map_err(Error::Source)?;
        let resync = match source.object_changes() {
            policy::Changes::All => {
                judge.replace(&source.objects());
                true
            }
            policy::Changes::Some(delta) => {
                judge.update(&delta);
                false
            }
        };
        let view = judge.view();
        let compiled = Compiled::new(cfg, &listed, view);
        // A pod, namespace or policy that changes nothing this node enforces (a pod created
        // elsewhere while no policy selects it as a peer, say) costs no pass: the kernel is
        // as the last pass left it, and the next resync checks it anyway.
        let unchanged = settled
            .as_ref()
            .filter(|s| !resync && s.listed == listed && s.compiled == compiled);
        let mut pass = match unchanged {
            Some(s) => Pass {
                outcome: Ok(Status::Ready),
                refused: s.refused.clone(),
                reading: antispoof::Reading::default(),
                peers: s.peers.clone(),
            },
            None => {
                let pass =
                    reconcile_compiled(cfg, &listed, (view, compiled.as_ref()), &netlink).await;
                log_drops(&mut drops, &pass.reading);
                settled = matches!(pass.outcome, Ok(Status::Ready)).then(|| Settled {
                    listed: listed.clone(),
                    compiled,
                    refused: pass.refused.clone(),
                    peers: pass.peers.clone(),
                });
                pass
            }
        };
        pass.refused.extend(judge.refused());
        let report = Report {
            ready: matches!(pass.outcome, Ok(Status::Ready)),
            problem: match &pass.outcome {
                Ok(Status::Ready) => None,
                Ok(Status::WaitingForOwnNode) => Some(format!(
                    "this node ({}) is not in the node list, or its record is refused",
                    cfg.node_name
                )),
                Err(e) => Some(e.to_string()),
            },
            refused: pass.refused.clone(),
            peers: pass.peers.clone(),
        };
        ready.set(report.ready);
        ready.set_notes(
            pass.refused
                .iter()
                .map(|r| format!("refused {r}"))
                .collect(),
        );
        // This node's link prefix, where its peers read it: they decide direct or tunnel with
        // it (see `overlay`), so it follows the node's mask. Also while the record is refused
        // for a stale prefix (the node's address moved and its record's writer followed).
        let own = listed.iter().find(|l| l.key == cfg.node_name);
        if let Some(Listed {
            record: Ok(own), ..
        }) = own
        {
            if let Some(networks) = overlay::networks_to_publish(own, &netlink).await {
                source.publish_networks(&cfg.node_name, &networks).await;
            }
        }
        if last.as_ref() == Some(&report) {
            continue;
        }
        let new: Vec<Refusal> = pass
            .refused
            .iter()
            .filter(|r| !last.as_ref().is_some_and(|l| l.refused.contains(r)))
            .cloned()
            .collect();
        for r in &new {
            warn!(record = %r.record, "node record refused: {}", r.reason);
        }
        source.refused(&new).await;
        match &pass.outcome {
            Ok(Status::Ready) => info!(
                nodes = listed.len().saturating_sub(pass.refused.len()),
                refused = pass.refused.len(),
                "routes in place"
            ),
            Ok(Status::WaitingForOwnNode) => warn!(node = %cfg.node_name,
                "this node is not in the node list (yet), or its record is refused: waiting, no routes changed, no conflist"),
            Err(e) => error!("reconcile failed, retrying on the next change or resync: {e}"),
        }
        if let Some(path) = &cfg.status_file {
            let json = serde_json::to_vec_pretty(&report).expect("a report serializes");
            if let Err(e) = crate::fsutil::write_atomic(path, &json) {
                warn!(path = %path.display(), "write the status file: {e}");
            }
        }
        last = Some(report);
    }
}

/// Logs what the anti-spoofing rules dropped since the last pass: someone on this node is
/// spoofing, and the operator should know. Once per pass at most, so a flood is one line per
/// resync.
fn log_drops(drops: &mut antispoof::Drops, reading: &antispoof::Reading) {
    let grew = drops.observe(reading);
    if grew.is_empty() {
        return;
    }
    let what: Vec<String> = grew
        .iter()
        .map(|(name, added, total)| format!("{name} +{added} (total {total})"))
        .collect();
    warn!(
        table = nft::TABLE,
        "dropped packets from pods with a source address not their own: {}",
        what.join(", ")
    );
}

/// Undoes the agent: the conflist first, so the runtime stops starting pods on a network that
/// is about to lose its routes, then the nftables table and every route the agent made.
/// Returns how many routes.
pub async fn uninstall(netlink: &Netlink, conf_dir: &Path) -> Result<usize, Error> {
    conflist::remove(conf_dir).map_err(|cause| Error::Conflist {
        path: conflist::path(conf_dir),
        cause,
    })?;
    nft::remove(netlink.netns()).map_err(Error::Nftables)?;
    let routes = reconcile::remove_all(netlink).await?;
    overlay::remove_all(netlink).await?;
    Ok(routes)
}
