//! `flatnet demo`: the README's first command. Builds a 3-node cluster with 2 pods on each,
//! proves pod-to-pod traffic works without NAT, shows why (the routes), and removes it all.

use std::process::ExitCode;

use anyhow::{Context, Result};
use ipnetwork::{Ipv4Network, Ipv6Network};

use flatnet::emulator::state::{join, IpFamily};
use flatnet::emulator::{check, interrupt, trace, Cluster, StateRoot, UpOptions};

use super::{block_on, show, Kind, Output};

const NODES: u32 = 3;
const PODS: [(&str, &str); 6] = [
    ("alpha", "node-1"),
    ("bravo", "node-1"),
    ("charlie", "node-2"),
    ("delta", "node-2"),
    ("echo", "node-3"),
    ("foxtrot", "node-3"),
];

pub fn run(root: &StateRoot, name: &str, keep: bool, family: IpFamily) -> Result<ExitCode> {
    interrupt::install();
    let cluster = Cluster::new(root, name)?;
    let shown = show_demo(&cluster, family);
    if keep && shown.is_ok() {
        println!("\nThe cluster keeps running. Try:");
        for cmd in [
            "get pods -o wide",
            "check",
            "topology",
            "trace alpha echo",
            "routes node-1",
            "topology -o svg > cluster.svg",
            "run web --node node-2",
            "node remove node-3",
            "down",
        ]
        .into_iter()
        // trace follows IPv4 packets, which an IPv6-only cluster has none of.
        .filter(|c| family.has_v4() || !c.starts_with("trace"))
        {
            println!("  flatnet --name {name} {cmd}");
        }
        return shown;
    }
    step(&format!(
        "removing the cluster{}",
        if keep { "" } else { " (--keep keeps it)" }
    ));
    let removed = block_on(cluster.down());
    let code = shown?;
    removed.context("remove the demo cluster")?;
    println!("done: nothing is left behind");
    Ok(code)
}

fn show_demo(cluster: &Cluster, family: IpFamily) -> Result<ExitCode> {
    step(&format!(
        "creating cluster {:?} ({family}): an underlay bridge and {NODES} nodes, each a \
         network namespace running `flatnet agent`",
        cluster.name()
    ));
    let opts = UpOptions {
        nodes: NODES,
        ip_family: family,
        ..UpOptions::default()
    };
    block_on(cluster.up(&opts, &super::progress))?;
    step("starting 6 pods, 2 per node, each attached by exec'ing flatnet-cni as containerd does");
    for (pod, node) in PODS {
        interrupt::check()?;
        let p = cluster.run_sandbox("default", pod, Some(node))?;
        super::progress(&format!(
            "{pod} on {node}: {}",
            if p.ips.is_empty() {
                "no IP".into()
            } else {
                join(&p.ips)
            }
        ));
    }
    println!();
    print!("{}", show::get(cluster, Kind::Nodes, None)?);
    println!();
    print!("{}", show::get(cluster, Kind::Pods, Some(Output::Wide))?);

    let pods = cluster.dir().pods()?;
    let mut all_ok = true;
    for f in family.families() {
        step(&format!(
            "checking over {f}: a TCP exchange from every pod to every other pod; each \
             receiver reports the source address it saw (each row should show only its own \
             pod IP)"
        ));
        let probes = check::matrix(&pods, f)?;
        print!("{}", check::render(&probes));
        all_ok &= check::all_ok(&probes);
    }

    step("why it works: node-1's routing table");
    if family.has_v4() {
        let routes = block_on(cluster.node_routes::<Ipv4Network>("node-1"))?;
        print!("{}", show::routes_text(&routes));
    }
    if family.has_v6() {
        let routes = block_on(cluster.node_routes::<Ipv6Network>("node-1"))?;
        print!("{}", show::routes_text(&routes));
    }

    // trace follows IPv4 packets: an IPv6-only cluster has none to follow.
    if family.has_v4() {
        step("one packet's way, hop by hop, from the kernel's own route lookups (flatnet trace)");
        let req = trace::Request {
            src: "alpha".into(),
            dst: "echo".into(),
            proto: trace::Proto::Tcp,
            port: None,
            size: None,
            source: None,
        };
        print!(
            "{}",
            super::trace::render(&block_on(trace::trace(cluster, &req, true))?)
        );
    }

    step("the topology");
    print!("{}", block_on(show::topology(cluster))?);
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn step(what: &str) {
    println!("\n==> {what}");
}
