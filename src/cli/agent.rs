//! `flatnet agent`: the node agent as a process, in the network namespace it was started in.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use flatnet::agent::{self, health, AgentConfig, Readiness, RegistrySource};
use flatnet::netlink::Netlink;
use flatnet::registry::Registry;

#[derive(Args)]
pub struct AgentArgs {
    /// This node's name in the node list.
    #[arg(long, env = "NODE_NAME", required_unless_present = "uninstall")]
    node: Option<String>,
    /// The registry directory holding one JSON record per node (the emulator's).
    #[arg(long, required_unless_present_any = ["uninstall", "kubernetes"], conflicts_with = "kubernetes")]
    registry: Option<PathBuf>,
    /// Read the nodes from the Kubernetes API (in-cluster config, or KUBECONFIG).
    #[arg(long)]
    kubernetes: bool,
    /// Serve /healthz, /readyz (for a DaemonSet's probes) and /metrics (the anti-spoofing
    /// counters) here, e.g. 0.0.0.0:9099.
    #[arg(long)]
    health_addr: Option<std::net::SocketAddr>,
    /// Where the node's conflist goes (the runtime's CNI conf dir).
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The plugin's IPAM store, written into the conflist.
    #[arg(long, default_value = "/run/flatnet/ipam")]
    data_dir: PathBuf,
    /// The pods' MTU, written into the conflist; by default the plugin uses the uplink's.
    #[arg(long)]
    mtu: Option<u32>,
    /// The cluster's pod networks, one per family, comma-separated as kube-controller-manager
    /// takes them (`10.244.0.0/16,fd00:10:244::/56`): every node record's pod CIDR must lie
    /// inside the one of its family and no node IP in any; pod traffic to anywhere else but the
    /// nodes is masqueraded (in the nftables table `inet flatnet`, beside the anti-spoofing
    /// rules).
    #[arg(long, required_unless_present = "uninstall", value_delimiter = ',')]
    cluster_cidr: Vec<ipnetwork::IpNetwork>,
    /// Write the agent's status (ready, refused node records) here as JSON when it changes.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// The plugin's log file, written into the conflist; by default the plugin's own default.
    #[arg(long)]
    cni_log_file: Option<PathBuf>,
    /// Seconds between full re-reads of the node list when nothing changed.
    #[arg(long, default_value_t = agent::DEFAULT_RESYNC.as_secs_f64())]
    resync: f64,
    /// How other nodes' pods are reached: `hybrid` routes a node directly when its address
    /// is on a link of this node and through VXLAN when it is not; `host-gw` only directly
    /// (a node that is not on a link is reported, not routed); `vxlan` always through the
    /// tunnel.
    #[arg(long, default_value = "hybrid")]
    backend: agent::overlay::Backend,
    /// The VXLAN network identifier of the tunnel (the same on every node).
    #[arg(long, default_value_t = agent::overlay::DEFAULT_VNI)]
    vxlan_vni: u32,
    /// The VXLAN UDP port (the same on every node): IANA's, which NIC offloads recognise.
    #[arg(long, default_value_t = agent::overlay::DEFAULT_PORT)]
    vxlan_port: u16,
    /// Log to this file instead of stderr.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Remove the conflist, the nftables table and every route the agent made, then exit.
    #[arg(long)]
    uninstall: bool,
}

pub fn run(args: AgentArgs) -> Result<()> {
    match &args.log_file {
        Some(path) => flatnet::logging::to_file(path),
        None => flatnet::logging::to_stderr(),
    }
    // One thread is plenty for one netlink socket and one watch, and it keeps the agent small.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    rt.block_on(async {
        let netlink = Netlink::current().context("open a netlink socket")?;
        if args.uninstall {
            let n = agent::uninstall(&netlink, &args.conf_dir).await?;
            eprintln!(
                "removed the conflist, the nftables table, the tunnel devices and {n} routes"
            );
            return Ok(());
        }
        let resync = Duration::try_from_secs_f64(args.resync)
            .ok()
            .filter(|d| !d.is_zero())
            .context("--resync must be a positive number of seconds")?;
        let cfg = AgentConfig {
            node_name: args.node.clone().expect("required by clap"),
            conf_dir: args.conf_dir.clone(),
            data_dir: args.data_dir.clone(),
            mtu: args.mtu,
            cni_log_file: args.cni_log_file.clone(),
            cluster_cidrs: cluster_cidrs(&args.cluster_cidr)?,
            status_file: args.status_file.clone(),
            overlay: agent::overlay::Config {
                backend: args.backend,
                vni: args.vxlan_vni,
                port: args.vxlan_port,
            },
        };
        let ready = Readiness::default();
        if let Some(addr) = args.health_addr {
            let listener = health::bind(addr)
                .await
                .with_context(|| format!("serve health on {addr}"))?;
            tokio::spawn(health::serve(listener, ready.clone()));
        }
        if args.kubernetes {
            return run_kubernetes(&cfg, netlink, resync, &ready).await;
        }
        let registry = Registry::new(args.registry.clone().expect("required by clap"));
        let source = RegistrySource::new(registry, resync).context("watch the registry")?;
        until_terminated(agent::run(&cfg, source, netlink, &ready)).await
    })
}

#[cfg(feature = "kubernetes")]
async fn run_kubernetes(
    cfg: &AgentConfig,
    netlink: Netlink,
    resync: Duration,
    ready: &Readiness,
) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connect to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let source = agent::kubernetes::KubeSource::new(client, &cfg.node_name, resync);
    until_terminated(agent::run(cfg, source, netlink, ready)).await
}

#[cfg(not(feature = "kubernetes"))]
async fn run_kubernetes(_: &AgentConfig, _: Netlink, _: Duration, _: &Readiness) -> Result<()> {
    bail!("this flatnet was built without Kubernetes support: build with --features kubernetes")
}

/// Runs the agent until it fails or SIGTERM/SIGINT comes.
async fn until_terminated(
    agent: impl std::future::Future<Output = Result<(), agent::Error>>,
) -> Result<()> {
    tokio::select! {
        r = agent => r?,
        _ = terminated() => tracing::info!("stopping; routes and conflist stay in place"),
    }
    Ok(())
}

/// SIGTERM or SIGINT: the agent exits cleanly, leaving its routes (pods keep working while it
/// restarts).
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `--cluster-cidr` checked as kube-controller-manager checks it: one or two networks, at most
/// one per family, no host bits.
fn cluster_cidrs(given: &[ipnetwork::IpNetwork]) -> Result<Vec<ipnetwork::IpNetwork>> {
    let v4 = given.iter().filter(|c| c.is_ipv4()).count();
    if given.is_empty() || v4 > 1 || given.len() - v4 > 1 {
        bail!("--cluster-cidr takes one network per family (IPv4, IPv6, or one of each)");
    }
    if let Some(c) = given.iter().find(|c| c.ip() != c.network()) {
        bail!(
            "--cluster-cidr {c} has host bits set (the network is {}/{})",
            c.network(),
            c.prefix()
        );
    }
    Ok(given.to_vec())
}
