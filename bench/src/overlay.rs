//! Section `overlay`: the hybrid overlay. Throughput of pod-to-pod TCP through flatnet's VXLAN
//! tunnel between two nodes on different segments (`up --subnets 2`), against the same path
//! built by hand with `ip link add … type vxlan` between the same two nodes, and against the
//! underlay across the router without a tunnel. Then, at 10, 50 and 100 nodes, how long a new
//! peer on another segment takes to be tunnelled to by every node: from the registry write to
//! the route through the tunnel device on the last node (the agent puts the route in after the
//! device, neighbour and FDB entries, so the route is the last step).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use flatnet::emulator::{Cluster, StateRoot, UpOptions};
use flatnet::netns::{self, NetNs};
use flatnet::registry::{NodeRecord, Registry};

use crate::agent::Monitor;
use crate::cni::{at_least, verdict};
use crate::datapath::{iperf, server};
use crate::util::{self, median, ms, pct, progress, table, Ctx, Fig};

pub fn run(ctx: &Ctx) -> Result<(String, Value)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let root = StateRoot::new(ctx.work.join("state"));
    let cluster = Cluster::new(&root, &format!("{}-ovl", ctx.tag))?;
    let thr = throughput(ctx, &cluster, &rt);
    progress("overlay: removing the throughput cluster");
    let down = rt.block_on(cluster.down());
    let (mut md, thr) = thr?;
    down.context("remove the overlay throughput cluster")?;
    let cluster = Cluster::new(&root, &format!("{}-ovc", ctx.tag))?;
    let conv = rt.block_on(convergence(ctx, &cluster));
    progress("overlay: removing the convergence cluster");
    let down = rt.block_on(cluster.down());
    let (cmd, conv) = conv?;
    down.context("remove the overlay convergence cluster")?;
    md += &cmd;
    Ok((md, json!({"throughput": thr, "convergence": conv})))
}

fn bridge(args: &[&str]) -> Result<()> {
    let out = Command::new("bridge").args(args).output()?;
    if !out.status.success() {
        bail!(
            "bridge {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The tunnelled pod-to-pod path by hand, between the nodes `n1` and `n2` (underlay addresses
/// `a1`, `a2`): a "pod" namespace behind a veth on each node, and a VXLAN device of its own
/// (VNI 42, port 4790, learning off, MTU 1450, permanent neighbour and FDB entries, the route
/// via the peer's VTEP `onlink`), as flatnet's agent makes them. Without a lower device the
/// kernel leaves a VXLAN device at MTU 1500, and every full-sized packet would then leave as
/// two fragments of outer IP. Returns the client and server
/// namespaces and the server's address.
fn hand_vxlan(tag: &str, nodes: [(&str, &str); 2]) -> Result<(String, String, String)> {
    let mut pods = Vec::new();
    for (i, (ns, _)) in nodes.iter().enumerate() {
        let k = i + 1;
        let pod = format!("{tag}-ovh{k}");
        util::create_ns(&pod)?;
        util::ip(&["-n", &pod, "link", "set", "lo", "up"])?;
        util::ip(&[
            "-n", ns, "link", "add", "hv", "type", "veth", "peer", "name", "eth0", "netns", &pod,
        ])?;
        util::ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("192.168.7{k}.1/24"),
            "dev",
            "hv",
        ])?;
        util::ip(&["-n", ns, "link", "set", "hv", "up"])?;
        util::ip(&[
            "-n",
            &pod,
            "addr",
            "add",
            &format!("192.168.7{k}.2/24"),
            "dev",
            "eth0",
        ])?;
        util::ip(&["-n", &pod, "link", "set", "eth0", "up"])?;
        util::ip(&[
            "-n",
            &pod,
            "route",
            "add",
            "default",
            "via",
            &format!("192.168.7{k}.1"),
        ])?;
        pods.push(pod);
    }
    for (i, (ns, local)) in nodes.iter().enumerate() {
        let k = i + 1;
        let (j, (_, remote)) = (2 - i, nodes[1 - i]);
        util::ip(&[
            "-n",
            ns,
            "link",
            "add",
            "hvx",
            "address",
            &format!("0e:aa:00:00:00:0{k}"),
            "mtu",
            "1450",
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            "4790",
            "local",
            local,
            "nolearning",
        ])?;
        util::ip(&["-n", ns, "link", "set", "hvx", "up"])?;
        util::ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("192.168.7{k}.0/32"),
            "dev",
            "hvx",
        ])?;
        let vtep = format!("192.168.7{j}.0");
        let mac = format!("0e:aa:00:00:00:0{j}");
        util::ip(&[
            "-n",
            ns,
            "neigh",
            "add",
            &vtep,
            "lladdr",
            &mac,
            "dev",
            "hvx",
            "nud",
            "permanent",
        ])?;
        bridge(&[
            "-n",
            ns,
            "fdb",
            "append",
            &mac,
            "dev",
            "hvx",
            "dst",
            remote,
            "self",
            "permanent",
        ])?;
        util::ip(&[
            "-n",
            ns,
            "route",
            "add",
            &format!("192.168.7{j}.0/24"),
            "via",
            &vtep,
            "dev",
            "hvx",
            "onlink",
        ])?;
    }
    Ok((pods[0].clone(), pods[1].clone(), "192.168.72.2".into()))
}

fn throughput(
    ctx: &Ctx,
    cluster: &Cluster,
    rt: &tokio::runtime::Runtime,
) -> Result<(String, Value)> {
    progress("overlay: 2 nodes on 2 segments, pod a on node-1 and pod c on node-2");
    let opts = UpOptions {
        nodes: 2,
        subnets: 2,
        agent_resync: Duration::from_secs(10),
        ..UpOptions::default()
    };
    let spec = rt.block_on(cluster.up(&opts, &|m| progress(&format!("overlay: up: {m}"))))?;
    let a = cluster.run_sandbox("default", "a", Some("node-1"))?;
    let c = cluster.run_sandbox("default", "c", Some("node-2"))?;
    let (n1, n2) = (spec.nodes[0].clone(), spec.nodes[1].clone());
    let (a1, a2) = (n1.node_ip.to_string(), n2.node_ip.to_string());
    let (hx, hy, hip) = hand_vxlan(&ctx.tag, [(&n1.netns, &a1), (&n2.netns, &a2)])?;
    let c_ip = c.ipv4().context("pod c has no IP")?.to_string();
    let paths = [
        (
            "flatnet, pod a → pod c through the tunnel",
            a.netns.clone(),
            c.netns.clone(),
            c_ip,
        ),
        (
            "hand-built: veth, `ip link add … type vxlan`, veth",
            hx,
            hy.clone(),
            hip,
        ),
        (
            "underlay across the router, node-1 → node-2, no tunnel",
            n1.netns.clone(),
            n2.netns.clone(),
            a2,
        ),
    ];
    let mut servers = Vec::new();
    for (_, _, s, ip) in &paths {
        servers.push(server(s, ip)?);
    }
    let secs = if ctx.quick { 1 } else { 3 };
    let mut gbps: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for rep in 0..ctx.reps {
        for k in 0..paths.len() {
            let i = (k + rep) % paths.len();
            util::check_interrupt()?;
            let g = iperf(&paths[i].1, &paths[i].3, secs)?.gbps;
            progress(&format!(
                "overlay: rep {}/{}: {}: {g:.2} Gbit/s",
                rep + 1,
                ctx.reps,
                paths[i].0
            ));
            gbps[i].push(g);
        }
    }
    for pid in servers {
        util::stop_child(pid);
    }
    for k in 1..=2 {
        util::delete_ns(&format!("{}-ovh{k}", ctx.tag))?;
    }
    let figs: Vec<Fig> = gbps.iter().map(|g| Fig::of(g)).collect();
    let rows: Vec<Vec<String>> = paths
        .iter()
        .zip(&figs)
        .map(|(p, f)| vec![p.0.to_string(), f.show(2)])
        .collect();
    let vs_hand = figs[0].med / figs[1].med;
    let vs_direct = figs[0].med / figs[2].med;
    let mut md = format!(
        "### iperf3 TCP across segments, one stream, {secs} s per run, client on CPU 0 and server on CPU 1, {} runs per path interleaved (Gbit/s: median (min–max))\n\n",
        ctx.reps
    );
    md += &table(&["path", "Gbit/s"], &rows);
    md += "\n";
    md += &table(
        &["ratio", "measured", "target", ""],
        &[
            at_least("flatnet tunnel / hand-built VXLAN", vs_hand, 0.95),
            vec![
                "flatnet tunnel / underlay without a tunnel".into(),
                format!("{vs_direct:.3}"),
                "".into(),
                "what encapsulation and two veth hops cost".into(),
            ],
        ],
    );
    let js = json!({
        "paths": paths.iter().zip(&figs).map(|(p, f)| json!({"path": p.0, "gbps": f.json()})).collect::<Vec<_>>(),
        "vs_hand_built": vs_hand, "vs_underlay": vs_direct,
    });
    Ok((md, js))
}

fn sizes(ctx: &Ctx) -> Vec<usize> {
    if ctx.quick {
        vec![5, 10]
    } else {
        vec![10, 50, 100]
    }
}

async fn convergence(ctx: &Ctx, cluster: &Cluster) -> Result<(String, Value)> {
    let sizes = sizes(ctx);
    let opts = UpOptions {
        nodes: sizes[0] as u32,
        // Long, so that what is measured is the watch, not a periodic re-read.
        agent_resync: Duration::from_secs(60),
        ..UpOptions::default()
    };
    progress(&format!("overlay: bringing up {} nodes", sizes[0]));
    cluster
        .up(&opts, &|m| progress(&format!("overlay: up: {m}")))
        .await?;
    let registry = Registry::new(cluster.dir().registry());
    // On a segment none of the nodes is on: every node reaches it through the router, so
    // every node tunnels to it (and makes its tunnel device for it, the worst case).
    let ghost = NodeRecord::v4(
        "node-250",
        "172.19.0.251".parse()?,
        "10.244.250.0/24".parse()?,
    );
    let ghost_cidr = ghost.pod_cidr_v4().expect("an IPv4 record");
    let mut rows = Vec::new();
    let mut js = Vec::new();
    for &size in &sizes {
        while cluster.spec()?.nodes.len() < size {
            util::check_interrupt()?;
            cluster.add_node().await?;
        }
        let spec = cluster.spec()?;
        let namespaces = spec
            .nodes
            .iter()
            .map(|n| NetNs::open(netns::named_path(&n.netns)))
            .collect::<std::io::Result<Vec<_>>>()?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let monitor = Monitor::start(&namespaces)?;
        let (mut last, mut mid) = (Vec::new(), Vec::new());
        for rep in 0..ctx.reps {
            util::check_interrupt()?;
            monitor.drain();
            let t0 = Instant::now();
            registry.put(&ghost)?;
            let seen = monitor.wait_all(size, ghost_cidr, true, t0, Duration::from_secs(30))?;
            let l: Vec<f64> = seen.iter().map(|d| ms(*d)).collect();
            last.push(pct(&l, 100.0));
            mid.push(median(&l));
            progress(&format!(
                "overlay: {size} nodes, rep {}/{}: tunnelled on every node after {:.0} ms",
                rep + 1,
                ctx.reps,
                last.last().unwrap_or(&0.0)
            ));
            registry.remove(&ghost.name)?;
            monitor.wait_all(
                size,
                ghost_cidr,
                false,
                Instant::now(),
                Duration::from_secs(30),
            )?;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (last, mid) = (Fig::of(&last), Fig::of(&mid));
        rows.push(vec![size.to_string(), last.show(0), mid.show(0)]);
        js.push(json!({"nodes": size, "last_node_ms": last.json(), "median_node_ms": mid.json()}));
    }
    let mut md = format!(
        "\n### A new peer on another segment, tunnelled to by every node ({} repetitions per size; median (min–max), ms from the registry write to the tunnel route)\n\n",
        ctx.reps
    );
    md += &table(&["nodes", "last node", "median node"], &rows);
    if let Some(r) = js.last() {
        let at = r["last_node_ms"]["median"].as_f64().unwrap_or(f64::NAN);
        md += &format!(
            "\nAt {} nodes: {at:.0} ms against ≤ 1,000 ms: {}.\n",
            r["nodes"],
            verdict(at <= 1000.0)
        );
    }
    Ok((md, json!(js)))
}
