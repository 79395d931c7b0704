//! `flatnet trace`, `flatnet routes`, and what `check` says about a failed cell.

use std::fmt::Write;
use std::process::ExitCode;

use anyhow::Result;
use ipnetwork::{Ipv4Network, Ipv6Network};

use flatnet::emulator::check::{Outcome, Probe};
use flatnet::emulator::trace::{self, Proto, Request, Trace};
use flatnet::emulator::Cluster;

use super::{block_on, show};

#[derive(clap::Args)]
pub struct TraceArgs {
    /// Where the packet starts: a pod, a pod IP, or node/NAME.
    src: String,
    /// Where it goes: a pod, a pod IP, node/NAME (with --port a NodePort: through the Service),
    /// a Service (svc/NAME, svc/NAMESPACE/NAME, NAME.NAMESPACE.svc, its ClusterIP), or an
    /// address outside the cluster.
    dst: String,
    /// The destination port (TCP and UDP); by default the probe's own listener's, or a
    /// Service's first port.
    #[arg(long)]
    port: Option<u16>,
    #[arg(long, value_enum, default_value = "tcp")]
    proto: Proto,
    /// The size in bytes of the IP packet, sent with Don't Fragment: finds a link whose MTU
    /// is smaller (UDP or ICMP).
    #[arg(long)]
    size: Option<u32>,
    /// Send as this source address instead of SRC's own (a forged source): shows where the
    /// anti-spoofing check stops it. The probe is then UDP.
    #[arg(long)]
    source: Option<std::net::Ipv4Addr>,
    /// Compute the path only; send no probe.
    #[arg(long)]
    no_probe: bool,
    #[arg(short, long, value_enum)]
    output: Option<TraceOutput>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceOutput {
    Json,
    Svg,
}

pub fn run(cluster: &Cluster, a: TraceArgs) -> Result<ExitCode> {
    anyhow::ensure!(
        a.size.is_none() || a.proto != Proto::Tcp,
        "--size needs --proto udp or icmp: TCP segments itself to fit the path"
    );
    let req = Request {
        src: a.src,
        dst: a.dst,
        proto: a.proto,
        port: a.port,
        size: a.size,
        source: a.source,
    };
    let t = block_on(trace::trace(cluster, &req, !a.no_probe))?;
    match a.output {
        Some(TraceOutput::Json) => println!("{}", serde_json::to_string_pretty(&t)?),
        Some(TraceOutput::Svg) => {
            let topo = block_on(flatnet::emulator::picture::Topology::read(cluster))?;
            print!("{}", flatnet::emulator::picture::svg(&topo, Some(&t)));
        }
        None => print!("{}", render(&t)),
    }
    Ok(if t.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The trace as text: one block per hop, then the verdict and the probe.
pub fn render(t: &Trace) -> String {
    let mut out = format!(
        "trace {} ({}) -> {} ({})\n",
        t.src, t.src_ip, t.dst, t.dst_ip
    );
    for (i, h) in t.hops.iter().enumerate() {
        let seen = match h.probe_seen {
            Some(true) => "   [probe seen]",
            Some(false) => "   [probe not seen]",
            None => "",
        };
        let _ = write!(out, "{:>2}. {}", i + 1, h.at);
        if let Some(iif) = &h.iif {
            let _ = write!(out, "  in {iif}");
        }
        let _ = writeln!(out, "{seen}");
        if h.delivered {
            let _ = writeln!(out, "      delivered: {}", h.rule);
            continue;
        }
        if let Some(s) = &h.service {
            let _ = writeln!(
                out,
                "      dnat   service {} port {}: {} (kube-proxy, nftables)",
                s.service, s.port, s.matched
            );
            let backend =
                |b: &trace::Backend| format!("{}:{} (pod {}, {})", b.ip, b.port, b.pod, b.node);
            let list: Vec<String> = s.candidates.iter().map(backend).collect();
            let _ = writeln!(
                out,
                "      of     {} ready: {}",
                list.len(),
                if list.is_empty() {
                    "none".into()
                } else {
                    list.join(", ")
                }
            );
            if let Some(b) = &s.chosen {
                let _ = writeln!(out, "      to     {}, by {}", backend(b), s.chosen_by);
            }
        }
        if let Some(route) = &h.route {
            let _ = writeln!(out, "      route  {route}");
        }
        if !h.rule.is_empty() {
            let _ = writeln!(out, "      by     {}", h.rule);
        }
        if let Some(oif) = &h.oif {
            let _ = write!(out, "      out    {oif}");
            if let Some(nh) = h.next_hop {
                let _ = write!(out, ", next hop {nh}");
            }
            out.push('\n');
        }
        if let Some(nat) = &h.nat {
            let _ = writeln!(out, "      nat    {nat}");
        }
        for c in &h.nft_counters {
            let _ = writeln!(out, "      nft    {c}");
        }
        if t.fault.as_ref().is_some_and(|f| f.hop == i) {
            let f = t.fault.as_ref().expect("checked");
            let _ = writeln!(out, "      !!     {}: {}", f.reason.as_str(), f.detail);
        }
    }
    let verdict = match (&t.fault, t.delivered) {
        (None, true) if t.ok() => "OK".to_string(),
        (None, true) => format!("NO ANSWER: {}", t.summary()),
        (Some(_), true) => format!("DELIVERED, BUT {}", t.summary()),
        (_, false) => format!("DROPPED: {}", t.summary()),
    };
    let _ = writeln!(out, "{verdict}");
    if let Some(p) = &t.probe {
        let _ = writeln!(
            out,
            "probe ({}): {}",
            serde_json::to_value(p.proto)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            p.detail
        );
    }
    out
}

/// Where each failed cell of the matrix broke, from traces without a probe (the matrix was
/// the probe): the way there, and when that is whole, the way back, which a TCP exchange
/// needs as much.
pub fn diagnose(cluster: &Cluster, probes: &[Probe]) -> Vec<(usize, String)> {
    let path = |from: &str, to: &str| {
        let req = Request {
            src: from.into(),
            dst: to.into(),
            proto: Proto::Tcp,
            port: None,
            size: None,
            source: None,
        };
        block_on(trace::trace(cluster, &req, false))
    };
    probes
        .iter()
        .enumerate()
        .filter(|(_, p)| !matches!(p.outcome, Outcome::Ok { .. }))
        // trace follows IPv4 only: an IPv6 cell would get the IPv4 path's diagnosis.
        .filter(|(_, p)| p.family == flatnet::emulator::state::Family::V4)
        .map(|(i, p)| {
            let why = match path(&p.from, &p.to) {
                Ok(t) if t.ok() => match path(&p.to, &p.from) {
                    Ok(back) if !back.ok() => format!("on the way back: {}", back.summary()),
                    Err(e) => format!("trace failed: {e:#}"),
                    Ok(_) => match &p.outcome {
                        Outcome::Nat { seen } => format!("NAT: seen as {seen}"),
                        Outcome::Failed { error } => {
                            format!("both ways look whole, yet the exchange failed: {error}")
                        }
                        Outcome::Ok { .. } => unreachable!("filtered"),
                    },
                },
                Ok(t) => t.summary(),
                Err(e) => format!("trace failed: {e:#}"),
            };
            (i, why)
        })
        .collect()
}

/// `flatnet routes [NODE]`: each node's routing table, each route with who made it.
pub fn routes(cluster: &Cluster, node: Option<&str>) -> Result<String> {
    let spec = cluster.spec()?;
    let names: Vec<&str> = match node {
        Some(n) => {
            anyhow::ensure!(spec.node(n).is_some(), "node {n:?} is not in the cluster");
            vec![n]
        }
        None => spec.nodes.iter().map(|n| n.name.as_str()).collect(),
    };
    let mut out = String::new();
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "{n}:");
        if spec.ip_family.has_v4() {
            let routes = block_on(cluster.node_routes::<Ipv4Network>(n))?;
            out.push_str(&show::routes_text(&routes));
        }
        if spec.ip_family.has_v6() {
            let routes = block_on(cluster.node_routes::<Ipv6Network>(n))?;
            out.push_str(&show::routes_text(&routes));
        }
    }
    Ok(out)
}
