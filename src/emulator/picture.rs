//! Pictures of a cluster: what `flatnet topology -o json|dot|svg` and `flatnet trace -o svg`
//! print. The state is read live from the kernel (addresses and routes of every node and pod),
//! then drawn.
//!
//! The SVG is laid out here, by hand, rather than by a graph-layout crate or Graphviz: the
//! picture is always the same shape (an underlay, nodes on it, pods in the nodes), so a grid
//! whose boxes cannot overlap by construction beats a general layout, needs no dependency and
//! no external tool, and keeps every text at a fixed, readable size. The grid takes the
//! number of columns that makes the picture most nearly square.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::Serialize;

use super::state::join;
use super::trace::{host_veth, Trace};
use super::{io_err, names, Cluster, Result};
use crate::netlink::{protocol, Netlink, RouteOf};
use crate::netns::{self, NetNs};

/// The cluster as the kernel has it now.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    pub cluster: String,
    /// How the agents reach other nodes' pods (`up --backend`).
    pub overlay: crate::agent::overlay::Config,
    pub underlay: Underlay,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Underlay {
    pub netns: String,
    pub bridge: String,
    pub address: Ipv4Network,
    /// In a cluster with IPv6 pods, the underlay's IPv6 network too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address_v6: Option<Ipv6Network>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub name: String,
    /// The addresses of its eth0: IPv4, and IPv6 in a cluster with IPv6 pods.
    #[serde(rename = "nodeIPs")]
    pub node_ips: Vec<IpAddr>,
    /// One per family of the cluster's pods, IPv4 first.
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<IpNetwork>,
    pub netns: String,
    /// The L2 segment of the underlay it is on (`flatnet up --subnets`).
    pub segment: u32,
    /// The agent's routes: another node's pod CIDR via its node IP, or through the tunnel.
    pub routes_to_nodes: Vec<NodeRoute>,
    pub pods: Vec<PodView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeRoute {
    pub dst: IpNetwork,
    pub via: Option<IpAddr>,
    /// The node whose pod CIDR this is, if any node's is.
    pub node: Option<String>,
    /// `direct` (via the node's IP on a shared link) or `tunnel` (via its VTEP, through the
    /// VXLAN device `dev`).
    pub mode: &'static str,
    pub dev: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    pub name: String,
    /// One per family, in the order of the pod's ADD result.
    pub ips: Vec<IpAddr>,
    /// The node end of the pod's veth, and the gateway addresses on it (one per family).
    pub host_veth: Option<String>,
    pub gateways: Vec<IpAddr>,
    /// The pod's routes of every family, as `ip route` prints them.
    pub routes: Vec<String>,
}

impl Topology {
    /// Reads the cluster's state and every node's and pod's addresses and routes.
    pub async fn read(cluster: &Cluster) -> Result<Topology> {
        let (spec, pods) = super::trace::state(cluster)?;
        let mut nodes = Vec::new();
        for n in &spec.nodes {
            let netns = super::trace::node_netns(&spec, n);
            let nl = netlink(&netns)?;
            let links = nl.links().await?;
            let addrs = nl.all_addresses().await?;
            let v4 = nl.routes().await?.into_iter().map(|r| {
                (
                    r.protocol,
                    IpNetwork::V4(r.dst),
                    r.gateway.map(IpAddr::V4),
                    r.oif,
                )
            });
            let v6 = nl.routes6().await?.into_iter().map(|r| {
                (
                    r.protocol,
                    IpNetwork::V6(r.dst),
                    r.gateway.map(IpAddr::V6),
                    r.oif,
                )
            });
            let routes_to_nodes = v4
                .chain(v6)
                .filter(|(proto, _, _, _)| *proto == protocol::AGENT)
                .map(|(_, dst, via, oif)| {
                    let dev = links
                        .iter()
                        .find(|l| Some(l.index) == oif && l.name.starts_with("flatnet."))
                        .map(|l| l.name.clone());
                    NodeRoute {
                        dst,
                        via,
                        node: spec
                            .nodes
                            .iter()
                            .find(|o| o.pod_cidrs().contains(&dst))
                            .map(|o| o.name.clone()),
                        mode: if dev.is_some() { "tunnel" } else { "direct" },
                        dev,
                    }
                })
                .collect();
            // Every pod of the node reaches the same gateways, the node's, through its veth.
            let gateways: Vec<IpAddr> = n
                .pod_cidrs()
                .into_iter()
                .map(|c| crate::ipam::FamilyPool::new(c).gateway())
                .filter(|gw| addrs.iter().any(|(_, a)| a.ip() == *gw))
                .collect();
            let mut views = Vec::new();
            for p in pods.iter().filter(|p| p.node == n.name) {
                let veth = host_veth(p).map(str::to_string);
                let gateways = gateways.clone();
                views.push(PodView {
                    name: p.display_name(),
                    ips: p.ips.clone(),
                    host_veth: veth,
                    gateways,
                    routes: pod_routes(&super::trace::pod_netns(&spec, p))
                        .await
                        .unwrap_or_default(),
                });
            }
            nodes.push(NodeView {
                name: n.name.clone(),
                node_ips: eth0_ips(n),
                pod_cidrs: n.pod_cidrs(),
                netns,
                segment: super::cluster::segment_of(&spec, n.node_ip),
                routes_to_nodes,
                pods: views,
            });
        }
        Ok(Topology {
            cluster: spec.name.clone(),
            overlay: spec.overlay,
            underlay: Underlay {
                netns: names::underlay_netns(&spec.name),
                bridge: "br0".into(),
                address: Ipv4Network::new(spec.bridge_ip(), spec.underlay.prefix())
                    .expect("prefix of a valid network"),
                address_v6: spec.underlay_v6.zip(spec.bridge_ip_v6()).map(|(u, ip)| {
                    Ipv6Network::new(ip, u.prefix()).expect("prefix of a valid network")
                }),
            },
            nodes,
        })
    }
}

/// A node's addresses on the underlay.
fn eth0_ips(n: &super::state::NodeSpec) -> Vec<IpAddr> {
    std::iter::once(IpAddr::V4(n.node_ip))
        .chain(n.node_ip_v6.map(IpAddr::V6))
        .collect()
}

/// fe80::/10: every IPv6 link has one, and it names nothing of the cluster.
fn is_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

fn netlink(netns: &str) -> Result<Netlink> {
    let ns =
        NetNs::open(netns::named_path(netns)).map_err(io_err(format!("open netns {netns}")))?;
    Netlink::in_netns(Arc::new(ns)).map_err(io_err(format!("open netlink in {netns}")))
}

async fn pod_routes(netns: &str) -> Result<Vec<String>> {
    let nl = netlink(netns)?;
    let links = nl.links().await?;
    // The kernel's own (proto kernel) routes of the pod's addresses and of link-local
    // networks say nothing about where the pod's traffic goes.
    let v4 = nl
        .routes()
        .await?
        .into_iter()
        .filter(|r| r.protocol != 2 || r.dst.prefix() != 32)
        .map(|r| route_text(&r, &links));
    let v6 = nl
        .routes6()
        .await?
        .into_iter()
        .filter(|r| r.protocol != 2 || (r.dst.prefix() != 128 && !is_link_local(r.dst.ip().into())))
        .map(|r| route_text(&r, &links));
    Ok(v4.chain(v6).collect())
}

fn route_text<N: crate::netlink::Family>(r: &RouteOf<N>, links: &[crate::netlink::Link]) -> String {
    let host = if r.dst.ip().into().is_ipv4() { 32 } else { 128 };
    let mut s = if r.dst.prefix() == 0 {
        "default".to_string()
    } else if r.dst.prefix() == host {
        r.dst.ip().to_string()
    } else {
        r.dst.to_string()
    };
    // A pod has one link: the device is worth its room only where no gateway names the way.
    if let Some(gw) = r.gateway {
        let _ = write!(s, " via {gw}");
    } else if let Some(l) = links.iter().find(|l| Some(l.index) == r.oif) {
        let _ = write!(s, " dev {}", l.name);
    }
    s
}

/// The cluster as a text tree, what `flatnet topology` prints.
pub fn tree(t: &Topology) -> String {
    let mut out = format!(
        "underlay  netns {}  bridge {} {}  backend {}\n",
        t.underlay.netns,
        t.underlay.bridge,
        underlay_text(&t.underlay),
        t.overlay
    );
    for (i, n) in t.nodes.iter().enumerate() {
        let (branch, stem) = if i + 1 == t.nodes.len() {
            ("└─", "   ")
        } else {
            ("├─", "│  ")
        };
        let _ = writeln!(
            out,
            "│\n{branch} {}  eth0 {}{}  pods {}  (netns {})",
            n.name,
            join(&n.node_ips),
            if n.segment == 0 {
                String::new()
            } else {
                format!(" (segment {})", n.segment)
            },
            join(&n.pod_cidrs),
            n.netns
        );
        let to_nodes: Vec<String> = n
            .routes_to_nodes
            .iter()
            .map(|r| match (&r.dev, &r.node) {
                (Some(dev), Some(node)) => {
                    format!("{} via {} dev {dev} (tunnel to {node})", r.dst, opt(r.via))
                }
                (Some(dev), None) => format!("{} via {} dev {dev} (tunnel)", r.dst, opt(r.via)),
                (None, _) => format!("{} via {} (direct)", r.dst, opt(r.via)),
            })
            .collect();
        let _ = writeln!(
            out,
            "{stem}  routes to other nodes: {}",
            if to_nodes.is_empty() {
                "none".into()
            } else {
                to_nodes.join(", ")
            }
        );
        for (j, p) in n.pods.iter().enumerate() {
            let twig = if j + 1 == n.pods.len() {
                "└─"
            } else {
                "├─"
            };
            let _ = writeln!(
                out,
                "{stem}  {twig} pod {}  eth0 {}  ⇄  {} on the node, gw {}\n{stem}  {}    \
                 routes: {}",
                p.name,
                host_addrs(&p.ips),
                p.host_veth.as_deref().unwrap_or("?"),
                list(&p.gateways),
                if j + 1 == n.pods.len() { " " } else { "│" },
                p.routes.join(", ")
            );
        }
    }
    out
}

/// The cluster in Graphviz's language: one cluster per node, its pods inside, every node on
/// the underlay, and the host-gw routes as dashed edges.
pub fn dot(t: &Topology) -> String {
    let mut s = format!(
        "digraph {:?} {{\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n  \
         underlay [label=\"underlay\\n{} {}\\n{}\", shape=box3d];\n",
        t.cluster,
        t.underlay.bridge,
        underlay_text(&t.underlay),
        t.underlay.netns
    );
    for (i, n) in t.nodes.iter().enumerate() {
        let _ = writeln!(
            s,
            "  subgraph cluster_{i} {{\n    label=\"{}\\neth0 {}\\npods {}\";\n    \"{}\" \
             [label=\"{}\\n{}\", shape=component];",
            n.name,
            join(&n.node_ips),
            join(&n.pod_cidrs),
            n.name,
            n.name,
            join(&n.node_ips)
        );
        for p in &n.pods {
            let _ = writeln!(
                s,
                "    \"pod/{}\" [label=\"{}\\n{}\\n{}\"];\n    \"{}\" -> \"pod/{}\" \
                 [label=\"{} gw {}\", dir=both];",
                p.name,
                p.name,
                host_addrs(&p.ips),
                p.routes.join("\\n"),
                n.name,
                p.name,
                p.host_veth.as_deref().unwrap_or("?"),
                list(&p.gateways)
            );
        }
        s.push_str("  }\n");
        let _ = writeln!(
            s,
            "  \"{}\" -> underlay [label=\"eth0 {}\", dir=both];",
            n.name,
            join(&n.node_ips)
        );
        for r in &n.routes_to_nodes {
            if let Some(to) = &r.node {
                let _ = writeln!(
                    s,
                    "  \"{}\" -> \"{to}\" [label=\"{} via {}\", style=dashed, constraint=false];",
                    n.name,
                    r.dst,
                    opt(r.via)
                );
            }
        }
    }
    s.push_str("}\n");
    s
}

fn opt(ip: Option<IpAddr>) -> String {
    ip.map_or("-".into(), |ip| ip.to_string())
}

/// Addresses comma-separated, or `-` for none.
fn list(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        "-".into()
    } else {
        join(ips)
    }
}

/// A pod's addresses as host prefixes: `10.244.1.2/32,fd00:10:244:1::2/128`.
fn host_addrs(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        return "-".into();
    }
    let with_prefix: Vec<String> = ips
        .iter()
        .map(|ip| format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }))
        .collect();
    with_prefix.join(",")
}

fn underlay_text(u: &Underlay) -> String {
    match u.address_v6 {
        Some(v6) => format!("{},{v6}", u.address),
        None => u.address.to_string(),
    }
}

// The layout, in pixels. Text is monospace at FONT px, about CHAR px wide.
const FONT: u32 = 12;
const CHAR: f64 = 7.3;
const LINE: u32 = 16;
const MARGIN: u32 = 20;
const NODE_W: u32 = 440;
const POD_W: u32 = NODE_W - 2 * PAD;
const PAD: u32 = 12;
const POD_H: u32 = 3 * LINE + 10;
const POD_GAP: u32 = 8;
const GAP_X: u32 = 40;
/// Space above each row of nodes for its stretch of the underlay.
const BUS_SPACE: u32 = 60;
const TITLE_H: u32 = 86;
/// Where the underlay's text starts: clear of the trunk and of a path's mark on it.
const TITLE_X: u32 = 36;
/// The largest picture wanted, on either side.
const MAX_SIDE: u32 = 4000;
/// Host-gw routes listed in a node's box; more are summed up in one line.
const ROUTES_SHOWN: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Rect {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

impl Rect {
    fn center(&self) -> (u32, u32) {
        (self.x + self.w / 2, self.y + self.h / 2)
    }
}

struct Layout {
    width: u32,
    height: u32,
    underlay: Rect,
    /// Per node: its box, the y of its row's bus, its pods' boxes.
    nodes: Vec<(Rect, u32, Vec<Rect>)>,
    trunk_x: u32,
}

fn header_lines(n: &NodeView) -> u32 {
    let routes = n.routes_to_nodes.len();
    let shown = routes.min(ROUTES_SHOWN) as u32;
    3 + shown + u32::from(routes > ROUTES_SHOWN) + u32::from(routes == 0)
}

fn node_height(n: &NodeView) -> u32 {
    PAD + header_lines(n) * LINE + PAD + n.pods.len() as u32 * (POD_H + POD_GAP) + PAD
}

fn layout(t: &Topology) -> Layout {
    let count = t.nodes.len().max(1) as u32;
    let size = |cols: u32| -> (u32, u32) {
        let rows = count.div_ceil(cols);
        let w = 2 * MARGIN + GAP_X + cols * NODE_W + (cols - 1) * GAP_X;
        let h: u32 = (0..rows)
            .map(|r| {
                t.nodes
                    .iter()
                    .skip((r * cols) as usize)
                    .take(cols as usize)
                    .map(node_height)
                    .max()
                    .unwrap_or(0)
                    + BUS_SPACE
            })
            .sum();
        (w, TITLE_H + h + MARGIN)
    };
    // Landscape reads best on a screen: height counts double, within the 4000 px square
    // wherever that is possible.
    let cols = (1..=count)
        .min_by_key(|c| {
            let (w, h) = size(*c);
            (w > MAX_SIDE || h > MAX_SIDE, w.max(2 * h), *c)
        })
        .unwrap_or(1);
    let (width, height) = size(cols);
    let trunk_x = MARGIN + GAP_X / 2;
    let mut nodes = Vec::new();
    let mut y = TITLE_H;
    for row in t.nodes.chunks(cols as usize) {
        let bus_y = y + BUS_SPACE / 2;
        let top = y + BUS_SPACE;
        for (c, n) in row.iter().enumerate() {
            let x = MARGIN + GAP_X + c as u32 * (NODE_W + GAP_X);
            let h = node_height(n);
            let first_pod = top + PAD + header_lines(n) * LINE + PAD;
            let pods = (0..n.pods.len() as u32)
                .map(|i| Rect {
                    x: x + PAD,
                    y: first_pod + i * (POD_H + POD_GAP),
                    w: POD_W,
                    h: POD_H,
                })
                .collect();
            nodes.push((
                Rect {
                    x,
                    y: top,
                    w: NODE_W,
                    h,
                },
                bus_y,
                pods,
            ));
        }
        y = top + row.iter().map(node_height).max().unwrap_or(0);
    }
    Layout {
        width,
        height,
        underlay: Rect {
            x: MARGIN,
            y: MARGIN,
            w: width - 2 * MARGIN,
            h: TITLE_H - MARGIN - 8,
        },
        nodes,
        trunk_x,
    }
}

/// Escapes text for XML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Cuts `s` to what fits `width` px.
fn fit(s: &str, width: u32) -> String {
    let max = (f64::from(width) / CHAR) as usize;
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    }
}

fn text(out: &mut String, x: u32, y: u32, s: &str, width: u32, class: &str) {
    let _ = writeln!(
        out,
        r#"<text x="{x}" y="{y}" font-size="{FONT}" class="{class}" xml:space="preserve">{}</text>"#,
        esc(&fit(s, width))
    );
}

const PATH: &str = "#d9480f";

/// The cluster as an SVG picture; with a trace, its path drawn over it hop by hop.
pub fn svg(t: &Topology, trace: Option<&Trace>) -> String {
    let l = layout(t);
    let mut s = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="monospace">
<style>
.title {{ font-weight: bold; }}
rect.node {{ fill: #eef3fb; stroke: #3b5b92; stroke-width: 1.5; }}
rect.pod {{ fill: #ffffff; stroke: #6c8ebf; }}
rect.underlay {{ fill: #f4f4f4; stroke: #555; }}
rect.on-path {{ stroke: {PATH}; stroke-width: 3; }}
rect.fault {{ stroke: #c00; stroke-width: 4; }}
.bus {{ stroke: #555; stroke-width: 4; }}
.link {{ stroke: #555; stroke-width: 1.5; }}
.dim {{ fill: #555; }}
</style>
<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>
"#,
        w = l.width,
        h = l.height
    );
    // Which boxes the path crosses, and where it broke.
    let on_path = |label: &str| -> Option<usize> {
        trace.and_then(|tr| tr.hops.iter().position(|h| h.at == label))
    };
    let fault_at = trace
        .and_then(|tr| tr.fault.as_ref().map(|f| tr.hops[f.hop].at.clone()))
        .unwrap_or_default();
    let class = |base: &str, label: &str| -> String {
        if label == fault_at {
            format!("{base} fault")
        } else if on_path(label).is_some() {
            format!("{base} on-path")
        } else {
            base.to_string()
        }
    };

    let u = l.underlay;
    let _ = writeln!(
        s,
        r#"<rect class="{}" data-name="underlay" x="{}" y="{}" width="{}" height="{}" rx="4"/>"#,
        class("underlay", "underlay"),
        u.x,
        u.y,
        u.w,
        u.h
    );
    text(
        &mut s,
        u.x + TITLE_X,
        u.y + LINE + 2,
        &format!(
            "underlay: bridge {} {}  (netns {})",
            t.underlay.bridge,
            underlay_text(&t.underlay),
            t.underlay.netns
        ),
        u.w - TITLE_X - PAD,
        "title",
    );
    // The underlay bus: one stretch above each row, joined by a trunk on the left.
    let mut buses: Vec<u32> = l.nodes.iter().map(|(_, b, _)| *b).collect();
    buses.dedup();
    let trunk_top = u.y + u.h;
    let _ = writeln!(
        s,
        r#"<line class="bus" x1="{x}" y1="{trunk_top}" x2="{x}" y2="{}"/>"#,
        buses.last().copied().unwrap_or(trunk_top),
        x = l.trunk_x
    );
    for b in &buses {
        let _ = writeln!(
            s,
            r#"<line class="bus" x1="{}" y1="{b}" x2="{}" y2="{b}"/>"#,
            l.trunk_x,
            l.width - MARGIN
        );
    }
    for (n, (r, bus_y, pods)) in t.nodes.iter().zip(&l.nodes) {
        let label = format!("node/{}", n.name);
        let cx = r.x + r.w / 2;
        let _ = writeln!(
            s,
            r#"<line class="link" x1="{cx}" y1="{bus_y}" x2="{cx}" y2="{}"/>"#,
            r.y
        );
        let _ = writeln!(
            s,
            r#"<rect class="{}" data-name="{}" x="{}" y="{}" width="{}" height="{}" rx="6"/>"#,
            class("node", &label),
            esc(&n.name),
            r.x,
            r.y,
            r.w,
            r.h
        );
        let tw = r.w - 2 * PAD;
        let mut y = r.y + PAD + FONT;
        // Two families do not fit one line: the addresses go up beside the name.
        let (title, line) = if n.node_ips.len() > 1 {
            (
                format!("{}  eth0 {}", n.name, join(&n.node_ips)),
                format!("pods {}", join(&n.pod_cidrs)),
            )
        } else {
            (
                n.name.clone(),
                format!("eth0 {}  pods {}", join(&n.node_ips), join(&n.pod_cidrs)),
            )
        };
        text(&mut s, r.x + PAD, y, &title, tw, "title");
        y += LINE;
        text(&mut s, r.x + PAD, y, &line, tw, "");
        y += LINE;
        text(
            &mut s,
            r.x + PAD,
            y,
            "routes to other nodes (agent):",
            tw,
            "dim",
        );
        if n.routes_to_nodes.is_empty() {
            y += LINE;
            text(&mut s, r.x + PAD, y, "  none", tw, "dim");
        }
        for route in n.routes_to_nodes.iter().take(ROUTES_SHOWN) {
            y += LINE;
            text(
                &mut s,
                r.x + PAD,
                y,
                &format!(
                    "  {} via {} ({})",
                    route.dst,
                    opt(route.via),
                    route.node.as_deref().unwrap_or("no node")
                ),
                tw,
                "",
            );
        }
        if n.routes_to_nodes.len() > ROUTES_SHOWN {
            y += LINE;
            text(
                &mut s,
                r.x + PAD,
                y,
                &format!(
                    "  … and {} more, each via its node's eth0",
                    n.routes_to_nodes.len() - ROUTES_SHOWN
                ),
                tw,
                "dim",
            );
        }
        for (p, pr) in n.pods.iter().zip(pods) {
            let label = format!("pod/{}", p.name);
            let _ = writeln!(
                s,
                r#"<rect class="{}" data-name="{}" x="{}" y="{}" width="{}" height="{}" rx="3"/>"#,
                class("pod", &label),
                esc(&p.name),
                pr.x,
                pr.y,
                pr.w,
                pr.h
            );
            // Room on the right for the path's hop marks.
            let pw = pr.w - 2 * 8 - 24;
            let mut y = pr.y + 4 + FONT;
            text(
                &mut s,
                pr.x + 8,
                y,
                &format!("{}  eth0 {}", p.name, host_addrs(&p.ips)),
                pw,
                "title",
            );
            y += LINE;
            text(
                &mut s,
                pr.x + 8,
                y,
                &format!(
                    "⇄ {}{}, gw {}",
                    p.host_veth.as_deref().unwrap_or("?"),
                    // Room for a second gateway.
                    if p.gateways.len() > 1 {
                        ""
                    } else {
                        " on the node"
                    },
                    list(&p.gateways)
                ),
                pw,
                "",
            );
            y += LINE;
            text(&mut s, pr.x + 8, y, &p.routes.join(" · "), pw, "dim");
        }
    }
    if let Some(tr) = trace {
        draw_path(&mut s, t, &l, tr);
    }
    s.push_str("</svg>\n");
    s
}

/// The path as a line through the boxes it crosses, each hop numbered. Between nodes it runs
/// along the underlay: up from one node's eth0 to its row's bus, along the buses (by the
/// trunk between rows) and down to the other's eth0.
fn draw_path(s: &mut String, t: &Topology, l: &Layout, tr: &Trace) {
    let mut boxes: HashMap<String, (Rect, u32)> = HashMap::new();
    for (n, (r, bus, pods)) in t.nodes.iter().zip(&l.nodes) {
        boxes.insert(format!("node/{}", n.name), (*r, *bus));
        for (p, pr) in n.pods.iter().zip(pods) {
            boxes.insert(format!("pod/{}", p.name), (*pr, *bus));
        }
    }
    let eth0 = |r: &Rect| (r.x + r.w / 2, r.y);
    let mut points: Vec<(u32, u32)> = Vec::new();
    let mut marks: Vec<(usize, (u32, u32))> = Vec::new();
    for (i, h) in tr.hops.iter().enumerate() {
        if h.at == "underlay" {
            // From the node before, up onto the bus.
            let Some((r, bus)) = i.checked_sub(1).and_then(|p| boxes.get(&tr.hops[p].at)) else {
                continue;
            };
            points.push(eth0(r));
            points.push((eth0(r).0, *bus));
            match tr.hops.get(i + 1).and_then(|n| boxes.get(&n.at)) {
                // On to another node: along the buses, the trunk between rows.
                Some((next, next_bus)) => {
                    if next_bus != bus {
                        points.push((l.trunk_x, *bus));
                        points.push((l.trunk_x, *next_bus));
                    }
                    points.push((eth0(next).0, *next_bus));
                    marks.push((i, (eth0(next).0, *next_bus)));
                }
                // The underlay itself (its gateway address): up the trunk to its box.
                None => {
                    points.push((l.trunk_x, *bus));
                    let end = (l.trunk_x, l.underlay.y + l.underlay.h);
                    points.push(end);
                    marks.push((i, end));
                }
            }
            continue;
        }
        let Some((r, _)) = boxes.get(&h.at) else {
            continue;
        };
        let from_underlay = i > 0 && tr.hops[i - 1].at == "underlay";
        if from_underlay {
            points.push(eth0(r));
        }
        // A node's mark beside its header, a pod's at its right edge.
        let point = if h.at.starts_with("node/") {
            (r.x + r.w - 2 * PAD, r.y + PAD + LINE)
        } else {
            (r.x + r.w - 16, r.center().1)
        };
        points.push(point);
        marks.push((i, point));
    }
    if points.len() > 1 {
        let pts: Vec<String> = points.iter().map(|(x, y)| format!("{x},{y}")).collect();
        let _ = writeln!(
            s,
            r#"<polyline class="path" points="{}" fill="none" stroke="{PATH}" stroke-width="3" stroke-dasharray="8 4"/>"#,
            pts.join(" ")
        );
    }
    for (i, (x, y)) in marks {
        let fault = tr.fault.as_ref().is_some_and(|f| f.hop == i);
        let _ = writeln!(
            s,
            r#"<circle cx="{x}" cy="{y}" r="10" fill="{}"/><text x="{x}" y="{}" font-size="{FONT}" text-anchor="middle" fill="white">{}</text>"#,
            if fault { "#c00" } else { PATH },
            y + 4,
            i + 1
        );
    }
    // The verdict on one line, the fault's detail (cut to the box) on the next.
    let (verdict, detail) = match &tr.fault {
        Some(f) => (
            format!(
                "trace {} -> {}: {} at hop {} ({})",
                tr.src,
                tr.dst,
                f.reason.as_str(),
                f.hop + 1,
                tr.hops[f.hop].at
            ),
            f.detail.clone(),
        ),
        None => (
            format!("trace {} -> {}: {}", tr.src, tr.dst, tr.summary()),
            tr.hops
                .iter()
                .enumerate()
                .filter_map(|(i, h)| Some(format!("hop {}: {}", i + 1, h.nat.as_ref()?)))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let width = l.underlay.w - TITLE_X - PAD;
    let x = l.underlay.x + TITLE_X;
    let class = if tr.ok() { "" } else { "title" };
    text(s, x, l.underlay.y + 2 * LINE + 2, &verdict, width, class);
    if !detail.is_empty() {
        text(s, x, l.underlay.y + 3 * LINE + 2, &detail, width, "");
    }
}
