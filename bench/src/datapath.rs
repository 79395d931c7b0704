//! Section 3: the datapath. iperf3 TCP between two pods on one node and on two nodes of an
//! emulated cluster, against the same topology built by hand with `ip` (two veth hops and a
//! forwarding netns), a single raw veth pair, a raw underlay (two namespaces on a bridge), and
//! the cluster's own two-node path built again by hand ([`crate::mirror`]), all interleaved,
//! each run short. Then the same under a node's whole load (100 NetworkPolicies, a Service),
//! against the mirror with the nodes' tables copied in.
//!
//! Section `antispoof`: what the agent's nftables rules cost pod-to-pod, on the hand-built
//! topology alone: no rules, the anti-spoofing chain, the egress chain, both.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use flatnet::emulator::state::{ClusterSpec, PodRecord};
use flatnet::emulator::{Cluster, StateRoot, UpOptions};
use flatnet::netns::{self, NetNs};

use crate::cni::{at_least, verdict};
use crate::mirror::{self, Mirror};
use crate::services;
use crate::util::{self, progress, table, Ctx, Fig};

const IPERF: &str = "/usr/bin/iperf3";

pub(crate) struct Config {
    name: &'static str,
    client_ns: String,
    server_ns: String,
    server_ip: String,
}

pub(crate) fn open(name: &str) -> Result<NetNs> {
    NetNs::open(netns::named_path(name)).with_context(|| format!("open netns {name}"))
}

/// Starts an iperf3 server bound to `ip` inside `ns`; returns its pid (killed at the end).
pub(crate) fn server(ns: &str, ip: &str) -> Result<u32> {
    let ns = open(ns)?;
    let mut cmd = flatnet::netns::command(Path::new(IPERF), &[], Some(&ns));
    cmd.args(["-s", "-B", ip, "-p", "5201"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(util::keep_child(cmd.spawn().context("start iperf3 -s")?))
}

/// One iperf3 TCP run; Gbit/s received.
fn client(ns: &str, ip: &str, secs: u32) -> Result<f64> {
    Ok(iperf(ns, ip, secs)?.gbps)
}

pub(crate) struct Run {
    pub(crate) gbps: f64,
    /// CPU seconds (client and server, user and system) per GB received. Without
    /// IRQ time accounting (this kernel), the forwarding netns's softirq work runs and is
    /// charged in the context of the process that sent the packet, so this is the path's
    /// cost, whatever share of the CPUs other work took meanwhile.
    pub(crate) cpu_per_gb: f64,
}

/// One iperf3 TCP run.
pub(crate) fn iperf(ns: &str, ip: &str, secs: u32) -> Result<Run> {
    let ns = open(ns)?;
    let mut last_err = String::new();
    for _ in 0..30 {
        let mut cmd = flatnet::netns::command(Path::new(IPERF), &[], Some(&ns));
        // Client on CPU 0, server on CPU 1, for every path alike: on two cores, where the
        // scheduler puts them otherwise decides the figure more than the path does.
        cmd.args([
            "-c",
            ip,
            "-p",
            "5201",
            "-t",
            &secs.to_string(),
            "-A",
            "0,1",
            "-J",
        ])
        .stdin(Stdio::null());
        let out = cmd.output().context("run iperf3 -c")?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let end = &v["end"];
        if let (Some(bps), true) = (
            end["sum_received"]["bits_per_second"].as_f64(),
            out.status.success(),
        ) {
            let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
            let cpu = (f(&end["cpu_utilization_percent"]["host_total"])
                + f(&end["cpu_utilization_percent"]["remote_total"]))
                / 100.0
                * f(&end["sum_received"]["seconds"]);
            return Ok(Run {
                gbps: bps / 1e9,
                cpu_per_gb: cpu / (f(&end["sum_received"]["bytes"]) / 1e9),
            });
        }
        last_err = v["error"].as_str().unwrap_or("no result").to_string();
        // The server may not be listening yet, or still finishing the previous test.
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("iperf3 to {ip}: {last_err}")
}

pub(crate) fn sysctls(ns: &str, forward: bool) -> Result<()> {
    let h = open(ns)?;
    let mut kv = vec![
        ("net.ipv4.conf.all.rp_filter", "1"),
        ("net.ipv4.conf.default.rp_filter", "1"),
    ];
    if forward {
        kv.push(("net.ipv4.ip_forward", "1"));
    }
    for (k, v) in kv {
        netns::write_sysctl(&h, k, v)?;
    }
    Ok(())
}

/// The same-node topology, by hand: pod A — veth — router R — veth — pod B, ptp-style /32s with
/// the gateway on both router ends, as flatnet-cni wires a node's pods (the router ends named
/// like its host veths, so that the anti-spoofing chain checks them).
pub(crate) fn hand_built(tag: &str, label: &str) -> Result<(String, String, String)> {
    let (a, r, b) = (
        format!("{tag}-{label}-a"),
        format!("{tag}-{label}-r"),
        format!("{tag}-{label}-b"),
    );
    for n in [&r, &a, &b] {
        util::create_ns(n)?;
        util::ip(&["-n", n, "link", "set", "lo", "up"])?;
    }
    sysctls(&r, true)?;
    for (pod, host, ip) in [
        (&a, "flat0000000000a", "10.97.0.2"),
        (&b, "flat0000000000b", "10.97.0.3"),
    ] {
        util::ip(&[
            "-n", &r, "link", "add", host, "mtu", "1500", "type", "veth", "peer", "name", "eth0",
            "mtu", "1500", "netns", pod,
        ])?;
        util::ip(&["-n", &r, "addr", "add", "10.97.0.1/32", "dev", host])?;
        util::ip(&["-n", &r, "link", "set", host, "up"])?;
        util::ip(&["-n", pod, "addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        util::ip(&["-n", pod, "link", "set", "eth0", "up"])?;
        util::ip(&[
            "-n",
            pod,
            "route",
            "add",
            "10.97.0.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        util::ip(&[
            "-n",
            pod,
            "route",
            "add",
            "default",
            "via",
            "10.97.0.1",
            "dev",
            "eth0",
        ])?;
        util::ip(&["-n", &r, "route", "add", &format!("{ip}/32"), "dev", host])?;
    }
    Ok((a, b, "10.97.0.3".into()))
}

/// Runs `nft ARGS` inside the named namespace, with `stdin`.
pub(crate) fn nft(ns: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let h = open(ns)?;
    let mut cmd = flatnet::netns::command(Path::new("/usr/sbin/nft"), &[], Some(&h));
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("run nft")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A single veth pair between two namespaces.
fn raw_veth(tag: &str) -> Result<(String, String, String)> {
    let (x, y) = (format!("{tag}-veth-x"), format!("{tag}-veth-y"));
    for n in [&x, &y] {
        util::create_ns(n)?;
        util::ip(&["-n", n, "link", "set", "lo", "up"])?;
    }
    util::ip(&[
        "-n", &x, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &y,
    ])?;
    for (n, ip) in [(&x, "10.98.0.1/24"), (&y, "10.98.0.2/24")] {
        util::ip(&["-n", n, "addr", "add", ip, "dev", "eth0"])?;
        util::ip(&["-n", n, "link", "set", "eth0", "up"])?;
    }
    Ok((x, y, "10.98.0.2".into()))
}

/// The raw underlay: two namespaces, each with a veth into a bridge in a third, as the
/// emulator's nodes sit on br0, but with nothing else in them.
fn raw_underlay(tag: &str) -> Result<(String, String, String)> {
    let (u1, ub, u2) = (
        format!("{tag}-under-1"),
        format!("{tag}-under-br"),
        format!("{tag}-under-2"),
    );
    for n in [&ub, &u1, &u2] {
        util::create_ns(n)?;
        util::ip(&["-n", n, "link", "set", "lo", "up"])?;
    }
    util::ip(&["-n", &ub, "link", "add", "br0", "type", "bridge"])?;
    for (n, port, ip) in [(&u1, "p1", "172.30.0.2/16"), (&u2, "p2", "172.30.0.3/16")] {
        util::ip(&[
            "-n", &ub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", n,
        ])?;
        util::ip(&["-n", &ub, "link", "set", port, "master", "br0"])?;
        util::ip(&["-n", &ub, "link", "set", port, "up"])?;
        util::ip(&["-n", n, "addr", "add", ip, "dev", "eth0"])?;
        util::ip(&["-n", n, "link", "set", "eth0", "up"])?;
    }
    util::ip(&["-n", &ub, "link", "set", "br0", "up"])?;
    Ok((u1, u2, "172.30.0.3".into()))
}

pub fn run(ctx: &Ctx) -> Result<(String, Value)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let root = StateRoot::new(ctx.work.join("state"));
    let cluster = Cluster::new(&root, &format!("{}-dp", ctx.tag))?;
    let result = measure(ctx, &cluster, &rt);
    progress("datapath: removing the cluster and the hand-built namespaces");
    let down = rt.block_on(cluster.down());
    let r = result?;
    down.context("remove the datapath cluster")?;
    Ok(r)
}

fn measure(ctx: &Ctx, cluster: &Cluster, rt: &tokio::runtime::Runtime) -> Result<(String, Value)> {
    progress("datapath: a 2-node cluster with pods a, b on node-1 and c on node-2");
    let opts = UpOptions {
        nodes: 2,
        cluster_cidr: "10.244.0.0/16".parse()?,
        node_mask: 24,
        agent_resync: Duration::from_secs(10),
        ..UpOptions::default()
    };
    let spec = rt.block_on(cluster.up(&opts, &|m| progress(&format!("datapath: up: {m}"))))?;
    let a = cluster.run_sandbox("default", "a", Some("node-1"))?;
    let b = cluster.run_sandbox("default", "b", Some("node-1"))?;
    let c = cluster.run_sandbox("default", "c", Some("node-2"))?;
    let n1 = spec.nodes[0].clone();
    let n2 = spec.nodes[1].clone();

    let (ha, hb, hip) = hand_built(&ctx.tag, "hand")?;
    // The same again, with the agent's table (anti-spoofing, and egress: a nat hook, so
    // conntrack sees every packet) copied from node-1 into the router: what it costs, apart
    // from everything else.
    let (na, nb, nip) = hand_built(&ctx.tag, "handnft")?;
    let node_table = nft(&n1.netns, &["list", "table", "inet", "flatnet"], None)?;
    nft(
        &format!("{}-handnft-r", ctx.tag),
        &["-f", "-"],
        Some(&node_table),
    )?;
    let (vx, vy, vip) = raw_veth(&ctx.tag)?;
    let (u1, u2, uip) = raw_underlay(&ctx.tag)?;
    let pods = [a.clone(), b.clone(), c.clone()];
    let mirror = mirror::build(&ctx.tag, "mir", &spec, &spec.nodes, &pods)?;
    let configs = vec![
        Config {
            name: "flatnet, same node (pod a → pod b)",
            client_ns: a.netns.clone(),
            server_ns: b.netns.clone(),
            server_ip: pod_ip(&b)?,
        },
        Config {
            name: "hand-built: veth, forwarding netns, veth",
            client_ns: ha,
            server_ns: hb,
            server_ip: hip,
        },
        Config {
            name: "hand-built + node-1's nft table in the router",
            client_ns: na,
            server_ns: nb,
            server_ip: nip,
        },
        Config {
            name: "flatnet, two nodes (pod a → pod c, host-gw)",
            client_ns: a.netns.clone(),
            server_ns: c.netns.clone(),
            server_ip: pod_ip(&c)?,
        },
        Config {
            name: "emulator underlay (node-1 → node-2 over br0)",
            client_ns: n1.netns.clone(),
            server_ns: n2.netns.clone(),
            server_ip: n2.node_ip.to_string(),
        },
        Config {
            name: "raw underlay (hand-built: veth, bridge, veth)",
            client_ns: u1,
            server_ns: u2,
            server_ip: uip,
        },
        Config {
            name: "raw veth pair",
            client_ns: vx,
            server_ns: vy,
            server_ip: vip,
        },
        Config {
            name: "hand-built two nodes: the emulator's hops, addresses and names (a → c)",
            client_ns: mirror.pod("a")?.to_string(),
            server_ns: mirror.pod("c")?.to_string(),
            server_ip: pod_ip(&c)?,
        },
    ];
    let mut servers = Vec::new();
    for c in &configs {
        servers.push(server(&c.server_ns, &c.server_ip)?);
    }
    let secs = if ctx.quick { 1 } else { 3 };
    let mut gbps: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let t0 = Instant::now();
    for rep in 0..ctx.reps {
        // Rotate the order so that no configuration always runs first or after the same one.
        for k in 0..configs.len() {
            let i = (k + rep) % configs.len();
            util::check_interrupt()?;
            let g = client(&configs[i].client_ns, &configs[i].server_ip, secs)?;
            progress(&format!(
                "datapath: rep {}/{}: {}: {g:.2} Gbit/s",
                rep + 1,
                ctx.reps,
                configs[i].name
            ));
            gbps[i].push(g);
        }
    }
    let took = t0.elapsed().as_secs_f64();
    for pid in servers {
        util::stop_child(pid);
    }
    util::check_interrupt()?;
    let loaded = loaded(ctx, cluster, &spec, &mirror, [&a, &b, &c]);
    for ns in mirror.namespaces() {
        util::delete_ns(ns)?;
    }
    let (loaded_md, loaded_js) = loaded?;
    for ns in [
        "hand-a",
        "hand-r",
        "hand-b",
        "handnft-a",
        "handnft-r",
        "handnft-b",
        "veth-x",
        "veth-y",
        "under-1",
        "under-br",
        "under-2",
    ] {
        util::delete_ns(&format!("{}-{ns}", ctx.tag))?;
    }

    let figs: Vec<Fig> = gbps.iter().map(|g| Fig::of(g)).collect();
    let mut rows = Vec::new();
    for (c, f) in configs.iter().zip(&figs) {
        rows.push(vec![c.name.to_string(), f.show(2)]);
    }
    let same = figs[0].med / figs[1].med;
    let same_nft = figs[0].med / figs[2].med;
    let cross_raw = figs[3].med / figs[5].med;
    let cross_emu = figs[3].med / figs[4].med;
    let cross_mirror = figs[3].med / figs[7].med;
    let mut md = format!(
        "### iperf3 TCP, one stream, {secs} s per run, client pinned to CPU 0 and server to CPU 1, {} runs per path interleaved (Gbit/s: median (min–max))\n\n",
        ctx.reps
    );
    md += &table(&["path", "Gbit/s"], &rows);
    md += "\n";
    md += &table(
        &["ratio", "measured", "target", ""],
        &[
            at_least("same node: flatnet / hand-built", same, 0.97),
            vec![
                "same node: flatnet / hand-built with the same nft table".into(),
                format!("{same_nft:.3}"),
                "".into(),
                "the path alone, netfilter equal".into(),
            ],
            vec![
                "hand-built with nft table / hand-built".into(),
                format!("{:.3}", figs[2].med / figs[1].med),
                "".into(),
                "the table's cost (mostly conntrack's)".into(),
            ],
            at_least("two nodes: flatnet / raw underlay", cross_raw, 0.9),
            vec![
                "two nodes: flatnet / emulator underlay".into(),
                format!("{cross_emu:.3}"),
                "(≥ 0.9)".into(),
                verdict(cross_emu >= 0.9),
            ],
            at_least(
                "two nodes: flatnet / hand-built with the emulator's hops",
                cross_mirror,
                0.95,
            ),
            vec![
                "hand-built two hops / raw veth pair".into(),
                format!("{:.3}", figs[1].med / figs[6].med),
                "".into(),
                "the cost of the extra hop".into(),
            ],
        ],
    );
    md += &format!(
        "\n{} iperf3 runs took {took:.0} s.\n\n{loaded_md}",
        ctx.reps * configs.len()
    );
    let js: Vec<Value> = configs
        .iter()
        .zip(&figs)
        .zip(&gbps)
        .map(|((c, f), g)| json!({"path": c.name, "gbps": f.json(), "runs": g}))
        .collect();
    Ok((
        md,
        json!({"paths": js, "ratio_same_node": same, "ratio_same_node_vs_nft": same_nft, "ratio_cross_raw": cross_raw, "ratio_cross_emulator": cross_emu, "ratio_cross_mirror": cross_mirror, "loaded": loaded_js}),
    ))
}

/// The anti-spoofing section: the hand-built same-node topology four times, with no rules, the
/// anti-spoofing chain alone, the egress chain alone (as before anti-spoofing) and both (a node
/// with `--cluster-cidr`), each rendered by the agent's own code for the router's addresses.
pub fn run_antispoof(ctx: &Ctx) -> Result<(String, Value)> {
    let r = measure_antispoof(ctx);
    progress("antispoof: removing the hand-built namespaces");
    let mut gone = Ok(());
    for label in ["asnone", "asspoof", "asegress", "asboth"] {
        for n in ["a", "r", "b"] {
            let ns = format!("{}-{label}-{n}", ctx.tag);
            if netns::named_path(&ns).exists() {
                gone = gone.and(util::delete_ns(&ns));
            }
        }
    }
    let r = r?;
    gone?;
    Ok(r)
}

fn measure_antispoof(ctx: &Ctx) -> Result<(String, Value)> {
    use flatnet::agent::{antispoof, egress, nft::Ruleset};
    let egress = egress::rules(
        &["10.97.0.0/24".parse()?],
        &["10.97.0.0/16".parse()?],
        &["172.30.0.2".parse()?, "172.30.0.3".parse()?],
    );
    let tables = [
        ("asnone", "no rules", None),
        (
            "asspoof",
            "anti-spoofing chain",
            Some(Ruleset::new(&antispoof::rules())),
        ),
        ("asegress", "egress chain", Some(Ruleset::new(&egress))),
        (
            "asboth",
            "anti-spoofing + egress (a node's table)",
            Some(Ruleset::new(&(antispoof::rules() + &egress))),
        ),
    ];
    let mut configs = Vec::new();
    for (label, name, table) in &tables {
        progress(&format!("antispoof: building {label}"));
        let (a, b, ip) = hand_built(&ctx.tag, label)?;
        if let Some(t) = table {
            nft(
                &format!("{}-{label}-r", ctx.tag),
                &["-f", "-"],
                Some(t.script()),
            )?;
        }
        configs.push(Config {
            name,
            client_ns: a,
            server_ns: b,
            server_ip: ip,
        });
    }
    let mut servers = Vec::new();
    for c in &configs {
        servers.push(server(&c.server_ns, &c.server_ip)?);
    }
    let secs = if ctx.quick { 1 } else { 2 };
    let mut gbps: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let t0 = Instant::now();
    for rep in 0..ctx.reps {
        // Each compared pair runs back to back, which goes first alternating: on a shared
        // machine the load drifts over seconds, so the pairs' ratios are steadier than the
        // paths' medians.
        let order = if rep % 2 == 0 {
            [0, 1, 2, 3]
        } else {
            [3, 2, 1, 0]
        };
        for i in order {
            util::check_interrupt()?;
            let r = iperf(&configs[i].client_ns, &configs[i].server_ip, secs)?;
            progress(&format!(
                "antispoof: rep {}/{}: {}: {:.2} Gbit/s, {:.3} CPU s/GB",
                rep + 1,
                ctx.reps,
                configs[i].name,
                r.gbps,
                r.cpu_per_gb
            ));
            gbps[i].push(r.gbps);
            cpu[i].push(r.cpu_per_gb);
        }
    }
    let took = t0.elapsed().as_secs_f64();
    for pid in servers {
        util::stop_child(pid);
    }
    let figs: Vec<Fig> = gbps.iter().map(|g| Fig::of(g)).collect();
    let cpu_figs: Vec<Fig> = cpu.iter().map(|g| Fig::of(g)).collect();
    let rows: Vec<Vec<String>> = configs
        .iter()
        .zip(figs.iter().zip(&cpu_figs))
        .map(|(c, (f, u))| vec![format!("hand-built + {}", c.name), f.show(2), u.show(3)])
        .collect();
    let paired = |series: &[Vec<f64>], x: usize, base: usize| {
        let r: Vec<f64> = series[x]
            .iter()
            .zip(&series[base])
            .map(|(a, b)| a / b)
            .collect();
        Fig::of(&r)
    };
    let (alone, with_egress) = (paired(&gbps, 1, 0), paired(&gbps, 3, 2));
    // Throughput per CPU second, relative: what the throughput ratio is on a CPU-bound path
    // that has its CPUs to itself.
    let (alone_cpu, with_egress_cpu) = (paired(&cpu, 0, 1), paired(&cpu, 2, 3));
    let mut md = format!(
        "### iperf3 TCP pod to pod through a forwarding netns, one stream, {secs} s per run, client pinned to CPU 0 and server to CPU 1, {} runs per path; each compared pair back to back (median (min–max))\n\n",
        ctx.reps
    );
    md += &table(&["path", "Gbit/s", "CPU s per GB"], &rows);
    md += "\n";
    md += &table(
        &[
            "ratio",
            "median of the pairs' ratios (min–max)",
            "ratio of the medians",
            "target",
            "",
        ],
        &[
            vec![
                "anti-spoofing chain / no rules".into(),
                alone.show(3),
                format!("{:.3}", figs[1].med / figs[0].med),
                "≥ 0.98".into(),
                verdict(alone.med >= 0.98),
            ],
            vec![
                "anti-spoofing + egress / egress alone".into(),
                with_egress.show(3),
                format!("{:.3}", figs[3].med / figs[2].med),
                "≥ 0.98".into(),
                verdict(with_egress.med >= 0.98),
            ],
            vec![
                "the same in throughput per CPU second: anti-spoofing / no rules".into(),
                alone_cpu.show(3),
                format!("{:.3}", cpu_figs[0].med / cpu_figs[1].med),
                "≥ 0.98".into(),
                verdict(alone_cpu.med >= 0.98),
            ],
            vec![
                "the same in throughput per CPU second: both / egress alone".into(),
                with_egress_cpu.show(3),
                format!("{:.3}", cpu_figs[2].med / cpu_figs[3].med),
                "≥ 0.98".into(),
                verdict(with_egress_cpu.med >= 0.98),
            ],
            vec![
                "egress chain / no rules".into(),
                "".into(),
                format!("{:.3}", figs[2].med / figs[0].med),
                "".into(),
                "conntrack's cost, for comparison".into(),
            ],
        ],
    );
    md += &format!(
        "\n{} iperf3 runs took {took:.0} s.\n",
        ctx.reps * configs.len()
    );
    let js: Vec<Value> = configs
        .iter()
        .zip(&figs)
        .zip(&gbps)
        .zip(&cpu)
        .map(|(((c, f), g), u)| json!({"path": c.name, "gbps": f.json(), "runs": g, "cpu_s_per_gb": u}))
        .collect();
    Ok((
        md,
        json!({"paths": js, "ratio_antispoof": alone.json(), "ratio_antispoof_with_egress": with_egress.json(),
            "ratio_antispoof_per_cpu": alone_cpu.json(), "ratio_antispoof_with_egress_per_cpu": with_egress_cpu.json()}),
    ))
}

/// NetworkPolicies in the loaded datapath: as many as in the NetworkPolicy section.
const POLICIES: usize = 100;

/// The cluster's pods under a node's whole load: 100 NetworkPolicies selecting the servers b
/// and c, each admitting one group, the client's group last (so the admitting rule is the last
/// of each server's chain), and a Service in front of b and c (kube-proxy's table in every
/// node). The nodes' tables are then copied into the mirror, whose addresses and names are the
/// cluster's, so that flatnet and the hand-built paths are compared with the same tables.
fn loaded(
    ctx: &Ctx,
    cluster: &Cluster,
    spec: &ClusterSpec,
    mirror: &Mirror,
    [a, b, c]: [&PodRecord; 3],
) -> Result<(String, Value)> {
    use flatnet::emulator::labels::Change;
    use flatnet::emulator::objects::LabelKind;
    progress(&format!(
        "datapath: {POLICIES} NetworkPolicies selecting b and c, a Service in front of them"
    ));
    let change = |c: &str| Change::parse(c).map_err(anyhow::Error::msg);
    cluster.label(
        LabelKind::Pod,
        "default",
        &["a".to_string()],
        &[change(&format!("group=g{:03}", POLICIES - 1))?],
        false,
    )?;
    cluster.label(
        LabelKind::Pod,
        "default",
        &["b".to_string(), "c".to_string()],
        &[change("app=server")?],
        false,
    )?;
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: dp}\nspec:\n  \
         selector: {app: server}\n  ports: [{port: 5201}]\n",
    );
    // Peers that match no pod here would compile to nothing: the others admit address blocks
    // that no pod is in, so that each is a rule the client's packet is checked against.
    for i in 0..POLICIES {
        let peer = if i + 1 == POLICIES {
            format!("{{podSelector: {{matchLabels: {{group: g{i:03}}}}}}}")
        } else {
            format!("{{ipBlock: {{cidr: 10.250.{i}.0/24}}}}")
        };
        yaml += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: p{i:03}}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  \
             ingress: [{{from: [{peer}], ports: [{{port: 5201}}]}}]\n"
        );
    }
    services::apply(cluster, &yaml)?;
    let (bip, cip) = (pod_ip(b)?, pod_ip(c)?);
    // Every node has a server, so every node's table gets its pod chain; kube-proxy's table
    // gets both endpoints.
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in &spec.nodes {
        loop {
            let policy = nft(&n.netns, &["list", "table", "inet", "flatnet"], None)?;
            let proxy =
                nft(&n.netns, &["list", "table", "ip", "flatnet-proxy"], None).unwrap_or_default();
            if policy.contains("ingress_") && proxy.contains(&bip) && proxy.contains(&cip) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: the policies and the Service never reached its tables",
                    n.name
                );
            }
            util::check_interrupt()?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let tables = ["inet flatnet", "ip flatnet-proxy"];
    mirror.copy_tables(&spec.nodes, &tables)?;
    let node1 = nft(
        &spec.nodes[0].netns,
        &["list", "table", "inet", "flatnet"],
        None,
    )?;
    let last_accept = node1
        .lines()
        .rfind(|l| l.contains("tcp dport 5201 accept"))
        .unwrap_or_default();
    if !last_accept.contains(&format!("{} ", pod_ip(a)?)) {
        bail!("the rule admitting a is not the last of b's chain: {last_accept}");
    }
    let lines = |t: &str| -> Result<usize> {
        let words: Vec<&str> = t.split(' ').collect();
        Ok(nft(
            &spec.nodes[0].netns,
            &[&["list", "table"], &words[..]].concat(),
            None,
        )?
        .lines()
        .count())
    };
    let (policy_lines, proxy_lines) = (lines(tables[0])?, lines(tables[1])?);

    let configs = [
        Config {
            name: "flatnet, same node (a → b)",
            client_ns: a.netns.clone(),
            server_ns: b.netns.clone(),
            server_ip: bip.clone(),
        },
        Config {
            name: "hand-built same node, node-1's tables",
            client_ns: mirror.pod("a")?.to_string(),
            server_ns: mirror.pod("b")?.to_string(),
            server_ip: bip.clone(),
        },
        Config {
            name: "flatnet, two nodes (a → c)",
            client_ns: a.netns.clone(),
            server_ns: c.netns.clone(),
            server_ip: cip.clone(),
        },
        Config {
            name: "hand-built two nodes, both nodes' tables",
            client_ns: mirror.pod("a")?.to_string(),
            server_ns: mirror.pod("c")?.to_string(),
            server_ip: cip.clone(),
        },
    ];
    let mut servers = Vec::new();
    for c in &configs {
        servers.push(server(&c.server_ns, &c.server_ip)?);
    }
    let secs = if ctx.quick { 1 } else { 3 };
    let mut gbps: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let run = (|| -> Result<()> {
        for rep in 0..ctx.reps {
            // Each compared pair back to back, which goes first alternating.
            for pair in [[0, 1], [2, 3]] {
                let order = if rep % 2 == 0 {
                    pair
                } else {
                    [pair[1], pair[0]]
                };
                for i in order {
                    util::check_interrupt()?;
                    let g = client(&configs[i].client_ns, &configs[i].server_ip, secs)?;
                    progress(&format!(
                        "datapath: loaded rep {}/{}: {}: {g:.2} Gbit/s",
                        rep + 1,
                        ctx.reps,
                        configs[i].name
                    ));
                    gbps[i].push(g);
                }
            }
        }
        Ok(())
    })();
    for pid in servers {
        util::stop_child(pid);
    }
    run?;
    let figs: Vec<Fig> = gbps.iter().map(|g| Fig::of(g)).collect();
    let same = figs[0].med / figs[1].med;
    let two = figs[2].med / figs[3].med;
    let rows: Vec<Vec<String>> = configs
        .iter()
        .zip(&figs)
        .map(|(c, f)| vec![c.name.to_string(), f.show(2)])
        .collect();
    let mut md = format!(
        "### Loaded: {POLICIES} NetworkPolicies and a Service\n\n\
         The same cluster with {POLICIES} NetworkPolicies selecting b and c (the rule admitting \
         a last of each server's chain) and a ClusterIP Service in front of them, so that every \
         node has anti-spoofing, egress, policy and kube-proxy tables (node-1's `inet flatnet`: \
         {policy_lines} lines, `ip flatnet-proxy`: {proxy_lines}); each node's tables copied \
         into the hand-built mirror of the cluster (the emulator's hops, addresses and names), \
         so both sides run the same rules. {} runs per path, each pair back to back.\n\n",
        ctx.reps
    );
    md += &table(&["path", "Gbit/s"], &rows);
    md += "\n";
    md += &table(
        &["ratio", "measured", "target", ""],
        &[
            at_least("same node: flatnet / hand-built, same tables", same, 0.97),
            at_least("two nodes: flatnet / hand-built, same tables", two, 0.97),
        ],
    );
    let js: Vec<Value> = configs
        .iter()
        .zip(&figs)
        .map(|(c, f)| json!({"path": c.name, "gbps": f.json()}))
        .collect();
    Ok((
        md,
        json!({"paths": js, "ratio_same_node": same, "ratio_two_nodes": two,
            "policy_table_lines": policy_lines, "proxy_table_lines": proxy_lines}),
    ))
}

fn pod_ip(p: &PodRecord) -> Result<String> {
    p.ipv4()
        .map(|i| i.to_string())
        .with_context(|| format!("pod {} has no IP", p.name))
}
