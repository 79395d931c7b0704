//! The `flatnet` commands: argument parsing and dispatch. What each command does lives in the
//! library; this module only turns arguments into calls and results into text.

mod agent;
mod clusters;
mod demo;
mod jsonpath;
mod objects;
mod pods;
mod services;
mod show;
mod trace;
mod v1;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ipnetwork::IpNetwork;

use flatnet::emulator::state::IpFamily;
use flatnet::emulator::{check, interrupt, Cluster, StateRoot, UpOptions};

#[derive(Parser)]
#[command(
    name = "flatnet",
    version,
    about = "A flat, NAT-free pod network: the node agent, and an emulator that runs a \
             cluster of network namespaces on one Linux machine"
)]
pub struct Args {
    /// The cluster to act on [default: "default"; "demo" for `demo`].
    #[arg(long = "name", global = true, env = "FLATNET_CLUSTER")]
    cluster: Option<String>,
    /// Where clusters keep their state.
    #[arg(long, global = true, default_value = flatnet::emulator::state::DEFAULT_ROOT, env = "FLATNET_STATE_DIR")]
    state_dir: PathBuf,
    /// The namespace of the pods a command acts on [default: "default"].
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a cluster: an underlay, N nodes, an agent on each; returns once all are ready.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// The pods' address families, as kind's `networking.ipFamily`.
        #[arg(long, value_enum, default_value_t = FamilyArg::Ipv4)]
        ip_family: FamilyArg,
        /// The pod network of each family, comma-separated as kind's podSubnet [default:
        /// 10.244.0.0/16 and fd00:10:244::/56]; only the families of --ip-family.
        #[arg(long, value_delimiter = ',')]
        cluster_cidr: Vec<IpNetwork>,
        /// Where Services' ClusterIPs come from (kind's default); the cluster DNS is its
        /// tenth address.
        #[arg(long, default_value = "10.96.0.0/16")]
        service_cidr: ipnetwork::Ipv4Network,
        /// Prefix length of each node's IPv4 pod CIDR.
        #[arg(long, default_value_t = 24)]
        node_mask: u8,
        /// Prefix length of each node's IPv6 pod CIDR.
        #[arg(long, default_value_t = 64)]
        node_mask_v6: u8,
        /// Seconds between each agent's unprompted re-checks of the node list and its routes.
        #[arg(long, default_value_t = flatnet::agent::DEFAULT_RESYNC.as_secs_f64())]
        agent_resync: f64,
        /// Seconds the controller waits before restarting an agent that is gone; doubled per
        /// restart, up to five minutes (kubelet: 10).
        #[arg(long, default_value_t = flatnet::emulator::state::DEFAULT_RESTART_BACKOFF.as_secs_f64())]
        agent_restart_backoff: f64,
        /// Look for CNI plugins here first (repeatable); then beside `flatnet`, in
        /// /opt/cni/bin, /usr/lib/cni, and in the dirs of PATH.
        #[arg(long)]
        cni_bin_dir: Vec<PathBuf>,
        /// Spread the nodes over this many L2 segments (one bridge each, round robin), joined
        /// by a router: nodes on different segments reach each other only through it, so the
        /// agents tunnel between them.
        #[arg(long, default_value_t = 1)]
        subnets: u32,
        /// How the agents reach other nodes' pods: `hybrid` directly where a node is on a
        /// link, through VXLAN where it is not; `host-gw` directly only; `vxlan` always
        /// through the tunnel.
        #[arg(long, default_value = "hybrid")]
        backend: flatnet::agent::overlay::Backend,
        /// The VXLAN network identifier of the agents' tunnels.
        #[arg(long, default_value_t = flatnet::agent::overlay::DEFAULT_VNI)]
        vxlan_vni: u32,
        /// The agents' VXLAN UDP port.
        #[arg(long, default_value_t = flatnet::agent::overlay::DEFAULT_PORT)]
        vxlan_port: u16,
    },
    /// Remove a cluster and everything it made (also finishes a crashed `up` or `down`).
    Down,
    /// Add or remove a node of a running cluster.
    Node {
        #[command(subcommand)]
        action: NodeCmd,
    },
    /// Create a one-container pod, as `kubectl run`: the container is named NAME, the pod is
    /// labelled run=NAME unless --labels says otherwise. The words after `--` are its args, or
    /// with --command its command; with none it runs `flatnet pause` (sleeps until SIGTERM):
    /// images are not pulled, so there is no entrypoint to run.
    Run {
        name: String,
        /// Recorded, not pulled: containers are processes of the machine.
        #[arg(long)]
        image: Option<String>,
        /// `k=v,k2=v2`, instead of run=NAME.
        #[arg(short = 'l', long)]
        labels: Option<String>,
        /// The node to run on; by default the one with the fewest pods.
        #[arg(long)]
        node: Option<String>,
        /// The words after `--` are the command, not its args.
        #[arg(long)]
        command: bool,
        /// A bare pod sandbox: a network namespace attached through the node's conflist, and
        /// no container.
        #[arg(long, conflicts_with_all = ["image", "command", "words"])]
        sandbox_only: bool,
        /// The first restart back-off of a failed container, in seconds (kubelet: 10).
        #[arg(long, default_value_t = flatnet::emulator::state::DEFAULT_RESTART_BACKOFF.as_secs_f64())]
        restart_backoff: f64,
        #[arg(last = true)]
        words: Vec<String>,
    },
    /// Create or update the Pods and Namespaces of manifests, as `kubectl apply` (client-side):
    /// created, configured (labels and annotations by a three-way merge with the last applied
    /// configuration), or unchanged.
    Apply {
        /// A file (`-` for stdin) or a directory of *.yaml, *.yml and *.json; repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Also the files in the subdirectories of a directory.
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Replace (delete, then create) a pod whose immutable fields changed.
        #[arg(long)]
        force: bool,
        /// The first restart back-off of a failed container, in seconds (kubelet: 10).
        #[arg(long, default_value_t = flatnet::emulator::state::DEFAULT_RESTART_BACKOFF.as_secs_f64())]
        restart_backoff: f64,
    },
    /// Delete pods (`delete pod NAME...`, `-l SEL`, `--all`) or namespaces with their pods
    /// (`delete ns NAME...`), or what manifests name (`-f`): containers get SIGTERM, SIGKILL
    /// after the grace period, then CNI DEL; pods stop in parallel.
    Delete(objects::DeleteArgs),
    /// Add, change or remove labels: `label pod NAME k=v k2-` (also `ns NAME`).
    Label {
        /// `pod` or `namespace`, then the names, then the changes (`k=v` sets, `k-` removes).
        #[arg(required = true, num_args = 1..)]
        args: Vec<String>,
        /// Replace a label that has another value.
        #[arg(long)]
        overwrite: bool,
    },
    /// Set a Deployment's replicas; the controller makes or deletes pods to match.
    Scale {
        /// `deployment` (`deploy`).
        kind: String,
        name: String,
        #[arg(long)]
        replicas: u32,
    },
    /// Show a pod in detail: containers, their state, ports, mounts, network.
    Describe {
        /// `pod`, `namespace` or `deployment`.
        kind: String,
        name: String,
    },
    /// Print a container's log: by default the one -c names, else the pod's
    /// kubectl.kubernetes.io/default-container, else its first container.
    Logs {
        pod: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// Every container's log, one after another (with -f, as they come).
        #[arg(long, conflicts_with = "container")]
        all_containers: bool,
        /// Keep printing what the container writes, until it terminates or the pod is deleted.
        #[arg(short = 'f', long)]
        follow: bool,
        /// The log of the previous instance (before the last restart).
        #[arg(short = 'p', long, conflicts_with = "follow")]
        previous: bool,
        /// Only the last N lines (-1: all).
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        tail: i64,
        /// Each line prefixed with the time it was written (RFC 3339, nanoseconds).
        #[arg(long)]
        timestamps: bool,
        /// Only lines newer than this: 10s, 5m, 1h30m.
        #[arg(long, value_parser = parse_since)]
        since: Option<std::time::Duration>,
    },
    /// Run a command inside a running container's namespaces, on the container's PATH; exits
    /// with the command's exit code.
    Exec {
        pod: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// Pass stdin to the command (else it reads /dev/null).
        #[arg(short = 'i', long)]
        stdin: bool,
        /// A terminal for the command: a pty of the caller's window size, following its
        /// changes; with -i, Ctrl-C goes to the command.
        #[arg(short = 't', long)]
        tty: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// The per-pod supervisor (started by `apply`; not for direct use).
    #[command(hide = true)]
    Supervisor { pod_dir: PathBuf },
    /// The cluster's controller (started by `up`; not for direct use).
    #[command(hide = true)]
    Controller { cluster_dir: PathBuf },
    /// The cluster DNS server: the coredns pod's container (made with the first Service; not
    /// for direct use).
    #[command(hide = true)]
    Dns { cluster_dir: PathBuf },
    /// List nodes, pods or namespaces.
    Get(show::GetArgs),
    /// A TCP exchange from every pod to every other; the receiver reports the source it saw.
    Check {
        #[arg(short, long, value_enum)]
        output: Option<Output>,
        /// Print only the failed cells, one line each, with where the path broke.
        #[arg(long)]
        failures_only: bool,
    },
    /// Draw the cluster: underlay, nodes, pods, and each node's routes to the others (a text
    /// tree; -o json, dot or svg for the others).
    Topology {
        #[arg(short, long, value_enum)]
        output: Option<Picture>,
    },
    /// The path of a packet, hop by hop, from the kernel's own route lookups, confirmed by a
    /// real probe; names the hop and the reason where it is dropped.
    Trace(trace::TraceArgs),
    /// Each node's routes, with who made each.
    Routes { node: Option<String> },
    /// Up 3 nodes, 2 pods each, check the matrix, show the routes, then down.
    Demo {
        /// Leave the cluster running afterwards.
        #[arg(long)]
        keep: bool,
        /// The pods' address families; `dual` checks a matrix per family.
        #[arg(long, value_enum, default_value_t = FamilyArg::Ipv4)]
        ip_family: FamilyArg,
    },
    /// Run the node agent in the current network namespace (the emulator starts one per node).
    Agent(agent::AgentArgs),
    /// Print a shell completion script: `source <(flatnet completion bash)`.
    Completion { shell: Shell },
    /// Sleep until SIGTERM or SIGINT, then exit 0: what `run` runs when given no command
    /// (the Kubernetes pause container's role; not for direct use).
    #[command(hide = true)]
    Pause,
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Add nodes with the next free indexes and pod CIDRs.
    Add {
        /// The L2 segment to put them on (0 is the first; a new one is made if needed).
        #[arg(long, default_value_t = 0)]
        subnet: u32,
        /// How many: made together, as `up` makes its nodes, so the running agents take them
        /// in a pass or two rather than one pass per node.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
    },
    /// Remove a node: its pods first (CNI DEL each), then the node.
    Remove { node: String },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(alias = "node", alias = "no")]
    Nodes,
    #[value(alias = "pod", alias = "po")]
    Pods,
    #[value(alias = "namespace", alias = "ns")]
    Namespaces,
    #[value(alias = "deployment", alias = "deploy")]
    Deployments,
    #[value(alias = "replicaset", alias = "rs")]
    Replicasets,
    #[value(alias = "networkpolicy", alias = "netpol")]
    Networkpolicies,
    #[value(alias = "service", alias = "svc")]
    Services,
    #[value(alias = "endpointslice")]
    Endpointslices,
    /// The clusters of the state dir, as `kind get clusters`.
    #[value(alias = "cluster")]
    Clusters,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FamilyArg {
    Ipv4,
    Ipv6,
    Dual,
}

impl From<FamilyArg> for IpFamily {
    fn from(f: FamilyArg) -> IpFamily {
        match f {
            FamilyArg::Ipv4 => IpFamily::Ipv4,
            FamilyArg::Ipv6 => IpFamily::Ipv6,
            FamilyArg::Dual => IpFamily::Dual,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Picture {
    Json,
    Dot,
    Svg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Wide,
    /// A v1/Pod or v1/Node, or a v1/List of them.
    Json,
    Yaml,
    /// flatnet's own records (netns, container ID, agent restarts...) as JSON, for scripts
    /// and tests that look behind the API view.
    Record,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let root = args.state_dir.clone();
    run_command(args).map_err(|e| clusters::with_choices(e, &root))
}

fn run_command(args: Args) -> Result<ExitCode> {
    if let Cmd::Completion { shell } = args.command {
        let shell = match shell {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        };
        let mut cmd = <Args as clap::CommandFactory>::command();
        // Into a buffer first: the generator panics on a write error (`| head`).
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, "flatnet", &mut script);
        std::io::Write::write_all(&mut std::io::stdout(), &script)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Cmd::Get(show::GetArgs {
        what: Some(Kind::Clusters),
        ..
    }) = &args.command
    {
        clusters::print(&args.state_dir);
        return Ok(ExitCode::SUCCESS);
    }
    if let Cmd::Agent(a) = args.command {
        return agent::run(a).map(|()| ExitCode::SUCCESS);
    }
    if let Cmd::Pause = args.command {
        return objects::pause();
    }
    if let Cmd::Supervisor { pod_dir } = &args.command {
        flatnet::emulator::pods::supervisor::run(&flatnet::emulator::state::PodDir::new(pod_dir))
            .with_context(|| format!("supervisor of {}", pod_dir.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Cmd::Dns { cluster_dir } = &args.command {
        return services::dns_server(cluster_dir);
    }
    if let Cmd::Controller { cluster_dir } = &args.command {
        let name = cluster_dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("the controller needs a cluster's state dir")?;
        let root = StateRoot::new(cluster_dir.parent().unwrap_or(cluster_dir));
        flatnet::logging::to_stderr();
        flatnet::emulator::controller::run(&root.cluster(name))
            .with_context(|| format!("controller of {}", cluster_dir.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    require_root()?;
    let root = StateRoot::new(&args.state_dir);
    if let Cmd::Demo { keep, ip_family } = args.command {
        let name = args.cluster.as_deref().unwrap_or("demo");
        return demo::run(&root, name, keep, ip_family.into());
    }
    let cluster = Cluster::new(&root, args.cluster.as_deref().unwrap_or("default"))?;
    let ns = args.namespace.as_deref().unwrap_or("default");
    if let Some(n) = &args.namespace {
        flatnet::emulator::names::validate_namespace(n)?;
    }
    match args.command {
        Cmd::Up {
            nodes,
            ip_family,
            cluster_cidr,
            service_cidr,
            node_mask,
            node_mask_v6,
            agent_resync,
            agent_restart_backoff,
            cni_bin_dir,
            subnets,
            backend,
            vxlan_vni,
            vxlan_port,
        } => {
            flatnet::emulator::services::check_service_cidr(service_cidr)
                .map_err(anyhow::Error::msg)?;
            interrupt::install();
            let agent_resync = std::time::Duration::try_from_secs_f64(agent_resync)
                .ok()
                .filter(|d| !d.is_zero())
                .context("--agent-resync must be a positive number of seconds")?;
            let agent_restart_backoff =
                std::time::Duration::try_from_secs_f64(agent_restart_backoff)
                    .ok()
                    .context("--agent-restart-backoff must be a number of seconds")?;
            let cni_bin_dirs = cni_bin_dir
                .iter()
                .map(|d| std::path::absolute(d).with_context(|| format!("{}", d.display())))
                .collect::<Result<Vec<_>>>()?;
            let mut opts = UpOptions {
                nodes,
                ip_family: ip_family.into(),
                node_mask,
                node_mask_v6,
                agent_resync,
                agent_restart_backoff,
                cni_bin_dirs,
                service_cidr,
                subnets,
                overlay: flatnet::agent::overlay::Config {
                    backend,
                    vni: vxlan_vni,
                    port: vxlan_port,
                },
                ..UpOptions::default()
            };
            cluster_cidrs(&mut opts, &cluster_cidr)?;
            let spec = block_on(cluster.up(&opts, &progress))?;
            println!(
                "cluster {:?} is up: {} nodes, pods from {}, backend {}",
                spec.name,
                spec.nodes.len(),
                flatnet::emulator::state::join(&spec.cluster_cidrs()),
                spec.overlay
            );
        }
        Cmd::Down => {
            // Once started, down finishes: an interrupt is taken only at the end.
            interrupt::install();
            let held = interrupt::hold();
            let removed = block_on(cluster.down_with(&progress));
            let interrupted = held.release();
            if removed? {
                println!("cluster {:?} removed", cluster.name());
            } else {
                println!("cluster {:?} does not exist; nothing to do", cluster.name());
            }
            if interrupted {
                eprintln!("interrupted: flatnet down finished removing the cluster first");
                return Ok(ExitCode::from(130));
            }
        }
        Cmd::Node { action } => match action {
            NodeCmd::Add { subnet, count } => {
                for node in block_on(cluster.add_nodes(count, subnet))? {
                    let ips = match node.node_ips() {
                        ips if ips.is_empty() => vec![node.node_ip.into()],
                        ips => ips,
                    };
                    println!(
                        "{} added: {} with pods from {}",
                        node.name,
                        flatnet::emulator::state::join(&ips),
                        node.pod_cidrs_text()
                    );
                }
            }
            NodeCmd::Remove { node } => {
                clusters::known_node(&cluster, &node)?;
                let pods: Vec<_> = cluster
                    .dir()
                    .pods()?
                    .into_iter()
                    .filter(|p| p.node == node)
                    .collect();
                block_on(cluster.remove_node(&node))?;
                for p in pods {
                    println!("pod {:?} deleted (namespace {:?})", p.name, p.namespace);
                }
                println!("{node} removed");
            }
        },
        Cmd::Run {
            name,
            image,
            labels,
            node,
            command,
            sandbox_only,
            restart_backoff,
            words,
        } => {
            if let Some(n) = &node {
                clusters::known_node(&cluster, n)?;
            }
            let pod = if sandbox_only {
                cluster.run_sandbox(ns, &name, node.as_deref())?
            } else {
                let run = objects::RunArgs {
                    name: &name,
                    namespace: ns,
                    image: image.as_deref(),
                    labels: labels.as_deref(),
                    node: node.as_deref(),
                    command,
                    words: &words,
                };
                objects::run(&cluster, &run, restart_backoff)?
            };
            println!("{}", objects::created_line(&pod));
        }
        Cmd::Apply {
            files,
            recursive,
            force,
            restart_backoff,
        } => {
            let opts = objects::ApplyArgs {
                files: &files,
                recursive,
                force,
                restart_backoff,
            };
            return objects::apply(&cluster, ns, args.namespace.is_some(), &opts);
        }
        Cmd::Delete(d) => return objects::delete(&cluster, ns, args.namespace.is_some(), &d),
        Cmd::Label {
            args: words,
            overwrite,
        } => objects::label(&cluster, ns, &words, overwrite)?,
        Cmd::Describe { kind, name } => {
            if matches!(kind.as_str(), "deployment" | "deployments" | "deploy") {
                print!("{}", workloads::describe(&cluster, ns, &name)?)
            } else if matches!(
                kind.as_str(),
                "networkpolicy" | "networkpolicies" | "netpol"
            ) {
                print!("{}", objects::describe_policy(&cluster, ns, &name)?)
            } else {
                print!("{}", pods::describe(&cluster, ns, &kind, &name)?)
            }
        }
        Cmd::Scale {
            kind,
            name,
            replicas,
        } => {
            if !matches!(kind.as_str(), "deployment" | "deployments" | "deploy") {
                bail!("flatnet scales deployments, not {kind:?}");
            }
            cluster.scale_deployment(ns, &name, replicas)?;
            println!("deployment.apps/{name} scaled");
        }
        Cmd::Logs {
            pod,
            container,
            all_containers,
            follow,
            previous,
            tail,
            timestamps,
            since,
        } => {
            let opts = pods::LogsOpts {
                container: container.as_deref(),
                all_containers,
                follow,
                previous,
                tail: usize::try_from(tail).ok(),
                timestamps,
                since,
            };
            pods::logs(&cluster, ns, &pod, &opts)?
        }
        Cmd::Exec {
            pod,
            container,
            stdin,
            tty,
            command,
        } => {
            let stdio = flatnet::emulator::pods::enter::Stdio { stdin, tty };
            return pods::exec(&cluster, ns, &pod, container.as_deref(), stdio, &command);
        }
        Cmd::Get(g) if g.watch => show::watch(&cluster, ns, &g)?,
        Cmd::Get(g) => print!("{}", show::get_cmd(&cluster, ns, &g)?),
        Cmd::Check {
            output,
            failures_only,
        } => {
            let pods = cluster.dir().pods()?;
            let families = cluster.spec()?.ip_family.families();
            if pods.len() < 2 {
                bail!("check needs at least two pods (flatnet run NAME adds one)");
            }
            // One matrix per family, each judged on its own and against the policies in
            // force; JSON lists them all, each probe with its family.
            let view = cluster.policy_view()?;
            let mut ok = true;
            let mut json = Vec::new();
            for (i, family) in families.into_iter().enumerate() {
                let probes = check::matrix(&pods, family)?;
                let (probes, denied) = check::expect_policies(probes, &view);
                let why = trace::diagnose(&cluster, &probes);
                ok &= check::all_ok(&probes);
                if failures_only {
                    print!("{}", check::failures(&probes, &why));
                } else if matches!(output, Some(Output::Json | Output::Record)) {
                    json.extend(check::with_diagnoses(&probes, &why));
                    json.extend(denied.iter().map(|d| {
                        serde_json::json!({"from": d.from, "to": d.to, "family": family,
                            "result": "denied", "policies": d.policies})
                    }));
                } else {
                    if i > 0 {
                        println!();
                    }
                    print!("{}", show::check_text(&probes, &why));
                    print!("{}", check::render_denied(&denied));
                }
            }
            if matches!(output, Some(Output::Json | Output::Record)) && !failures_only {
                println!("{}", serde_json::to_string_pretty(&json)?);
            }
            if !ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Topology { output: None } => print!("{}", block_on(show::topology(&cluster))?),
        Cmd::Topology {
            output: Some(format),
        } => {
            use flatnet::emulator::picture;
            let topo = block_on(picture::Topology::read(&cluster))?;
            match format {
                Picture::Json => println!("{}", serde_json::to_string_pretty(&topo)?),
                Picture::Dot => print!("{}", picture::dot(&topo)),
                Picture::Svg => print!("{}", picture::svg(&topo, None)),
            }
        }
        Cmd::Trace(a) => return trace::run(&cluster, a),
        Cmd::Routes { node } => {
            if let Some(n) = &node {
                clusters::known_node(&cluster, n)?;
            }
            print!("{}", trace::routes(&cluster, node.as_deref())?);
        }
        Cmd::Demo { .. }
        | Cmd::Agent(_)
        | Cmd::Pause
        | Cmd::Completion { .. }
        | Cmd::Supervisor { .. }
        | Cmd::Dns { .. }
        | Cmd::Controller { .. } => {
            unreachable!("handled above")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_since(s: &str) -> std::result::Result<std::time::Duration, String> {
    flatnet::emulator::pods::logs::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration such as 10s, 5m or 1h30m"))
}

/// Namespaces and routes need CAP_NET_ADMIN and CAP_SYS_ADMIN: say so up front rather than
/// fail half-way with EPERM.
fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("flatnet creates network namespaces and routes: run it as root (sudo)");
    }
    Ok(())
}

/// `up --cluster-cidr`: each CIDR replaces the default of its family, which the cluster must
/// have.
fn cluster_cidrs(opts: &mut UpOptions, given: &[IpNetwork]) -> Result<()> {
    let (mut v4, mut v6) = (false, false);
    for cidr in given {
        match cidr {
            IpNetwork::V4(c) if !v4 && opts.ip_family.has_v4() => {
                opts.cluster_cidr = *c;
                v4 = true;
            }
            IpNetwork::V6(c) if !v6 && opts.ip_family.has_v6() => {
                opts.cluster_cidr_v6 = *c;
                v6 = true;
            }
            _ if (cidr.is_ipv4() && v4) || (cidr.is_ipv6() && v6) => {
                bail!("--cluster-cidr takes one network per family; {cidr} is a second one")
            }
            _ => bail!(
                "--cluster-cidr {cidr}: --ip-family {} has no {} pods",
                opts.ip_family,
                if cidr.is_ipv4() { "IPv4" } else { "IPv6" }
            ),
        }
    }
    Ok(())
}

fn progress(step: &str) {
    eprintln!("  • {step}");
}

/// The emulator's async calls run on a current-thread runtime: they create their netlink
/// sockets inside the namespaces they work on, so no thread of this runtime ever enters one.
fn block_on<T>(f: impl std::future::Future<Output = flatnet::emulator::Result<T>>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    Ok(rt.block_on(f)?)
}
