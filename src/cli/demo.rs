//! `flatnet demo`: the README's first command. Builds a 3-node cluster with 2 pods on each,
//! proves pod-to-pod traffic works without NAT, shows why (the routes), and removes it all.

use std::process::ExitCode;

use anyhow::{Context, Result};

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

pub fn run(root: &StateRoot, name: &str, keep: bool) -> Result<ExitCode> {
    interrupt::install();
    let cluster = Cluster::new(root, name)?;
    let shown = show_demo(&cluster);
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
        ] {
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

fn show_demo(cluster: &Cluster) -> Result<ExitCode> {
    step(&format!(
        "creating cluster {:?}: an underlay bridge and {NODES} nodes, each a network namespace \
         running `flatnet agent`",
        cluster.name()
    ));
    let opts = UpOptions {
        nodes: NODES,
        ..UpOptions::default()
    };
    block_on(cluster.up(&opts, &super::progress))?;
    step("starting 6 pods, 2 per node, each attached by exec'ing flatnet-cni as containerd does");
    for (pod, node) in PODS {
        interrupt::check()?;
        let p = cluster.run_sandbox("default", pod, Some(node))?;
        super::progress(&format!(
            "{pod} on {node}: {}",
            p.ip.map_or("no IP".into(), |ip| ip.to_string())
        ));
    }
    println!();
    print!("{}", show::get(cluster, Kind::Nodes, None)?);
    println!();
    print!("{}", show::get(cluster, Kind::Pods, Some(Output::Wide))?);

    step(
        "checking: a TCP exchange from every pod to every other pod; each receiver reports \
          the source address it saw (each row should show only its own pod IP)",
    );
    let probes = check::matrix(&cluster.dir().pods()?)?;
    print!("{}", check::render(&probes));

    step("why it works: node-1's routing table");
    print!(
        "{}",
        show::routes_text(&block_on(cluster.node_routes("node-1"))?)
    );

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

    step("the topology");
    print!("{}", block_on(show::topology(cluster))?);
    Ok(if check::all_ok(&probes) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn step(what: &str) {
    println!("\n==> {what}");
}
