//! `flatnet trace`: the path of one packet through the cluster, hop by hop, computed from the
//! live kernel state and confirmed by one real probe.
//!
//! The path is walked one namespace at a time. In each, the kernel is asked which route it
//! would pick (RTM_GETROUTE, as `ip route get`): in the sender's namespace an output lookup,
//! everywhere else an input lookup with the incoming interface and the source, as for a
//! forwarded packet, so that the reverse-path check and `ip rule` apply as they would to the
//! real packet. The outgoing interface then says where the packet goes next: a pod's `eth0`
//! leads to its host veth on the node, a host veth to its pod, a node's `eth0` onto the underlay
//! bridge and from there to whichever node has the next hop's address. Each step is checked the
//! way the kernel would fail it: no route, a link that is down, a next hop nobody answers for
//! (wrong gateway), a source that fails the reverse-path check, a packet larger than the MTU.
//! A route to a pod CIDR through a node that does not own it is flagged too, though the packet
//! may still arrive by the detour.
//!
//! Then one real packet goes the same way and each hop's interface counters are read before
//! and after: the hops whose counters moved are where the probe was seen. The kernel's own
//! counters also see drops that netfilter tracing cannot (no route, a down link, MTU).
//!
//! A Service's ClusterIP (or a node port) is DNATed by kube-proxy's rules before the node's
//! route lookup: that hop names the Service, its ready endpoints and the one the probe's
//! connection went to, which only conntrack knows after the probe (the proxy picks at random);
//! the walk is then done again to that endpoint (see [`service`] and [`conntrack`]).
//!
//! Later parts of the network (overlay, Services, NetworkPolicy) add their own hops by
//! teaching `Walk::next_place` about their interfaces and [`Trace`] about their verdicts.

mod conntrack;
mod probe;
mod service;

pub use service::{Backend, ServiceHop};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use ipnetwork::Ipv4Network;
use netlink_packet_route::route::RouteType;
use serde::Serialize;

use super::services::{proxy::TABLE as PROXY_TABLE, Protocol};
use super::state::{ClusterSpec, NodeSpec, PodRecord};
use super::{io_err, names, Cluster, Error, Result};
use crate::netlink::{protocol, Counters, Link, Netlink, Packet};
use crate::netns::{self, NetNs};

/// More namespaces than any path of the emulator crosses: a longer walk is a routing loop.
const MAX_HOPS: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// What to trace.
#[derive(Debug, Clone)]
pub struct Request {
    /// A pod name, a pod IP, or `node/NAME`.
    pub src: String,
    /// A pod name, a pod IP, `node/NAME`, a Service (`svc/NAME`, `svc/NS/NAME`,
    /// `NAME.NS.svc`, its ClusterIP), or any other IPv4 address (outside the cluster).
    pub dst: String,
    pub proto: Proto,
    /// The destination port for TCP and UDP; by default one the probe's listener gets (for a
    /// Service, its first port of the protocol).
    pub port: Option<u16>,
    /// The size of the IP packet, sent with Don't Fragment set, to find an MTU on the way.
    pub size: Option<u32>,
    /// Send as this source address instead of SRC's own: a forged source, to see the
    /// reverse-path check stop it. The probe is then a UDP datagram (no answer can come back).
    pub source: Option<Ipv4Addr>,
}

/// One end of the path.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Pod(Box<PodRecord>),
    Node(NodeSpec),
    /// An address no pod or node has: outside the cluster. The underlay's gateway (the
    /// bridge's address) is the one the emulator can answer for.
    Outside(Ipv4Addr),
    /// A Service by its ClusterIP: kube-proxy's DNAT sends the packet on to an endpoint.
    Service(Box<crate::emulator::services::Svc>),
}

impl Endpoint {
    fn label(&self) -> String {
        match self {
            Endpoint::Pod(p) => format!("pod/{}", p.display_name()),
            Endpoint::Node(n) => format!("node/{}", n.name),
            Endpoint::Outside(ip) => ip.to_string(),
            Endpoint::Service(s) => service::label(s),
        }
    }
}

/// Why a packet does not arrive, or arrives the wrong way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// No route matches the destination.
    NoRoute,
    /// The pod has no default route, so nothing outside its own link is reachable.
    NoDefaultRoute,
    /// The route to another node's pod CIDR goes through a node that does not own it.
    WrongNode,
    /// The next hop is an address nobody on that link has: ARP fails.
    WrongGateway,
    /// A link on the way is down (or missing).
    LinkDown,
    /// The reverse-path check drops it: the source is not routed back through the interface
    /// it came in by (a spoofed source, or asymmetric routing).
    SpoofedSource,
    /// The packet is larger than the MTU of a link on the way, and may not be fragmented.
    Mtu,
    /// A tunnelled packet finds no neighbour entry for the peer's VTEP, or no FDB entry for
    /// its MAC, on the node's VXLAN device: it has nowhere to go.
    TunnelEntry,
    /// A Service port with no ready endpoint: the proxy rejects (or, for a NodePort with
    /// `externalTrafficPolicy: Local` on a node without one, drops) the connection.
    NoEndpoints,
    /// A ClusterIP addressed on a port its Service does not have: the proxy rejects it.
    NoServicePort,
    /// The node's live proxy table lacks what the Service's endpoints call for: the
    /// controller has not written it (yet).
    ProxyTable,
    /// The walk came back to where it had been.
    Loop,
    /// The packet leaves through an interface flatnet knows nothing about.
    Unknown,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoRoute => "no route",
            Reason::NoDefaultRoute => "missing pod default route",
            Reason::WrongNode => "route to the wrong node",
            Reason::WrongGateway => "wrong gateway",
            Reason::LinkDown => "link down",
            Reason::SpoofedSource => "spoofed source",
            Reason::Mtu => "MTU",
            Reason::TunnelEntry => "missing tunnel entry",
            Reason::NoEndpoints => "no ready endpoints",
            Reason::NoServicePort => "no such Service port",
            Reason::ProxyTable => "proxy table out of date",
            Reason::Loop => "routing loop",
            Reason::Unknown => "unknown interface",
        }
    }
}

/// Where and why the path breaks.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// Index into [`Trace::hops`].
    pub hop: usize,
    pub reason: Reason,
    pub detail: String,
}

/// One namespace the packet crosses, and what decided where it went from there.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hop {
    /// `pod/alpha`, `node/node-1`, `underlay`.
    pub at: String,
    pub netns: String,
    /// The interface it came in by; None where it starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iif: Option<String>,
    /// The route the kernel picked, as `ip route` prints it; for the underlay, the bridge port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Who made that route, or what else decided.
    pub rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oif: Option<String>,
    /// The next hop's address on the outgoing link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<Ipv4Addr>,
    /// kube-proxy's DNAT here (before the route lookup): the Service, its candidate
    /// endpoints and the one taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceHop>,
    /// Source rewriting applied on the way out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat: Option<String>,
    /// Whether the probe moved this hop's interface counters; None before a probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_seen: Option<bool>,
    /// nftables counters in this namespace that the probe moved, where it has any: a rule
    /// that matched it (a drop shows here although the interface counters cannot say why).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nft_counters: Vec<String>,
    /// Link indexes whose counters show the probe: (in, out).
    #[serde(skip)]
    links: (Option<u32>, Option<u32>),
    /// Set when the packet ends here: delivered to a local address.
    pub delivered: bool,
}

impl Hop {
    fn new(at: String, netns: String, iif: Option<(u32, String)>) -> Hop {
        Hop {
            at,
            netns,
            links: (iif.as_ref().map(|i| i.0), None),
            iif: iif.map(|i| i.1),
            route: None,
            rule: String::new(),
            oif: None,
            next_hop: None,
            service: None,
            nat: None,
            probe_seen: None,
            nft_counters: Vec::new(),
            delivered: false,
        }
    }
}

/// What the real packet did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    pub proto: Proto,
    pub answered: bool,
    /// The source address the receiver saw (TCP and UDP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seen_source: Option<Ipv4Addr>,
    pub detail: String,
}

/// The path from one endpoint to another.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    pub src: String,
    pub dst: String,
    #[serde(rename = "srcIP")]
    pub src_ip: Ipv4Addr,
    #[serde(rename = "dstIP")]
    pub dst_ip: Ipv4Addr,
    pub hops: Vec<Hop>,
    /// Whether the walk ended at a local address of the destination.
    pub delivered: bool,
    /// The first fault on the way; a delivered packet may still have one (the wrong node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeResult>,
}

impl Trace {
    /// Delivered, by the intended route, and (when probed) answered.
    pub fn ok(&self) -> bool {
        self.delivered && self.fault.is_none() && self.probe.as_ref().is_none_or(|p| p.answered)
    }

    /// One line: where it broke and why, or that it went through.
    pub fn summary(&self) -> String {
        match &self.fault {
            Some(f) => format!(
                "{} at hop {} ({}): {}",
                f.reason.as_str(),
                f.hop + 1,
                self.hops[f.hop].at,
                f.detail
            ),
            None if self.delivered && !self.ok() => self.unanswered(),
            None if self.delivered => format!("delivered in {} hops", self.hops.len()),
            None => "not delivered".into(),
        }
    }

    /// The routes are whole but the probe got no answer: something the lookups cannot see
    /// dropped it (a firewall rule, a neighbour that does not answer). The counters say where
    /// it was last seen, and which rules counted it.
    fn unanswered(&self) -> String {
        let mut s = format!(
            "the path is whole but the probe got no answer ({})",
            self.probe.as_ref().map_or("", |p| p.detail.as_str())
        );
        if let Some((i, h)) = self
            .hops
            .iter()
            .enumerate()
            .rev()
            .find(|(_, h)| h.probe_seen == Some(true))
        {
            s += &format!("; last seen at hop {} ({})", i + 1, h.at);
        }
        for (i, h) in self.hops.iter().enumerate() {
            for c in &h.nft_counters {
                s += &format!("; nftables at hop {}: {c}", i + 1);
            }
        }
        s
    }
}

/// Who made a route, from its rtm_protocol: flatnet's own are marked (see
/// [`crate::netlink::protocol`]).
pub fn made_by(protocol: u8) -> &'static str {
    match protocol {
        protocol::AGENT => "flatnet agent (another node's pods)",
        protocol::CNI => "flatnet-cni (a pod on this node)",
        2 => "kernel (connected)",
        4 => "static (the underlay's gateway)",
        _ => "other",
    }
}

/// The node end of a pod's veth: the interface of its ADD result without a sandbox.
pub fn host_veth(p: &PodRecord) -> Option<&str> {
    p.result.as_ref()?["interfaces"]
        .as_array()?
        .iter()
        .find(|i| i.get("sandbox").is_none())?["name"]
        .as_str()
}

/// Finds SRC or DST: `node/NAME`, a pod name, a pod's or node's IP, or (DST only) a Service
/// or any address.
pub fn resolve(
    spec: &ClusterSpec,
    pods: &[PodRecord],
    services: &[service::Service],
    what: &str,
    outside_ok: bool,
) -> Result<Endpoint> {
    if let Some(found) = service::resolve(services, what) {
        let svc = found?;
        if !outside_ok {
            return Err(Error::Invalid(format!(
                "{what}: a trace starts at a pod or a node, not at a Service"
            )));
        }
        return Ok(Endpoint::Service(Box::new(svc.clone())));
    }
    if let Some(node) = what.strip_prefix("node/") {
        return spec
            .node(node)
            .cloned()
            .map(Endpoint::Node)
            .ok_or_else(|| Error::Invalid(format!("node {node:?} is not in the cluster")));
    }
    // A pod is NAME when only one namespace has it, else NAMESPACE/NAME.
    let name = what.strip_prefix("pod/").unwrap_or(what);
    let (ns, name) = match name.split_once('/') {
        Some((ns, n)) => (Some(ns), n),
        None => (None, name),
    };
    let found: Vec<&PodRecord> = pods
        .iter()
        .filter(|p| p.name == name && ns.is_none_or(|ns| p.namespace == ns))
        .collect();
    match found[..] {
        [p] => return Ok(Endpoint::Pod(Box::new(p.clone()))),
        [] => {}
        _ => {
            let in_ns: Vec<&str> = found.iter().map(|p| p.namespace.as_str()).collect();
            return Err(Error::Invalid(format!(
                "pod {name:?} is in namespaces {}: say which, as NAMESPACE/{name}",
                in_ns.join(", ")
            )));
        }
    }
    if let Ok(std::net::IpAddr::V6(ip)) = what.parse::<std::net::IpAddr>() {
        return Err(Error::Invalid(format!(
            "{ip}: trace follows IPv4 packets only; name the pod or node instead (in a \
             dual-stack cluster its IPv4 address is traced)"
        )));
    }
    if let Ok(ip) = what.parse::<Ipv4Addr>() {
        if let Some(p) = pods.iter().find(|p| p.ipv4() == Some(ip)) {
            return Ok(Endpoint::Pod(Box::new(p.clone())));
        }
        if let Some(n) = spec.nodes.iter().find(|n| n.node_ip == ip) {
            return Ok(Endpoint::Node(n.clone()));
        }
        if outside_ok {
            return Ok(Endpoint::Outside(ip));
        }
        return Err(Error::Invalid(format!(
            "{ip} is no pod's or node's address: a trace starts at a pod or a node"
        )));
    }
    Err(Error::Invalid(format!(
        "{what:?} is not a pod, a pod IP, node/NAME or svc/NAME in the cluster"
    )))
}

/// The path of a packet from `req.src` to `req.dst`, and (with `probe`) what a real one did.
pub async fn trace(cluster: &Cluster, req: &Request, probe: bool) -> Result<Trace> {
    let (spec, pods) = state(cluster)?;
    let services = service::load(cluster, &pods);
    let src = resolve(&spec, &pods, &services, &req.src, false)?;
    let dst = resolve(&spec, &pods, &services, &req.dst, true)?;
    let proto = match req.proto {
        Proto::Tcp => Some(Protocol::Tcp),
        Proto::Udp => Some(Protocol::Udp),
        Proto::Icmp => None,
    };
    let mut req = req.clone();
    if let Endpoint::Service(svc) = &dst {
        let Some(proto) = proto.filter(|_| req.source.is_none()) else {
            return Err(Error::Invalid(format!(
                "{}: a Service takes TCP or UDP from the pod's own address",
                req.dst
            )));
        };
        if req.port.is_none() {
            req.port = Some(service::default_port(svc, proto)?);
        }
    }
    let mut walk = Walk::new(&spec, &pods, &services);
    walk.l4 = proto.zip(req.port);
    let mut t = walk.path(&src, &dst, req.size, req.source).await?;
    if !probe {
        return Ok(t);
    }
    // A DNAT to an endpoint: the probe learns which one, and the path is walked to it (a fault
    // found on the way to the first candidate may not be on the way to that one).
    let dnat = t
        .hops
        .iter()
        .find_map(|h| h.service.clone().map(|s| (h.netns.clone(), s)))
        .filter(|(_, s)| s.chosen.is_some());
    // Every namespace a path to any candidate endpoint could cross, counted before the probe:
    // which endpoint it takes is known only after.
    let mut seen: BTreeSet<String> = t.hops.iter().map(|h| h.netns.clone()).collect();
    if let Some((_, s)) = &dnat {
        seen.insert(names::underlay_netns(&spec.name));
        for b in &s.candidates {
            if let Some(p) = pods.iter().find(|p| p.ipv4() == Some(b.ip)) {
                seen.insert(pod_netns(&spec, p));
            }
            if let Some(n) = spec.node(&b.node) {
                seen.insert(node_netns(&spec, n));
            }
        }
    }
    let before = walk.snapshot(&seen).await;
    let result = match &dnat {
        Some((ct_netns, s)) => {
            let targets: Vec<(String, SocketAddrV4)> = s
                .candidates
                .iter()
                .filter_map(|b| {
                    let p = pods.iter().find(|p| p.ipv4() == Some(b.ip))?;
                    Some((pod_netns(&spec, p), SocketAddrV4::new(b.ip, b.port)))
                })
                .collect();
            let (result, reply) =
                probe::send_service(&spec, &src, t.dst_ip, &req, &targets, ct_netns);
            match reply {
                Some((endpoint, back_to)) => {
                    walk.chosen = Some(*endpoint.ip());
                    t = walk.path(&src, &dst, req.size, req.source).await?;
                    if let Some(h) = t.hops.iter_mut().find(|h| h.service.is_some()) {
                        let masq = (*back_to.ip() != s.orig.0).then_some(*back_to.ip());
                        if let (Some(ip), Some(nat)) = (masq, &mut h.nat) {
                            *nat += &format!("; conntrack: the reply goes to {ip}");
                        }
                    }
                }
                None => {
                    if let Some(h) = t.hops.iter_mut().find_map(|h| h.service.as_mut()) {
                        h.chosen_by = format!(
                            "not learnt: conntrack has no entry of the probe ({}); the walk \
                             follows the first candidate",
                            result.detail
                        );
                    }
                }
            }
            result
        }
        None => probe::send(&spec, &src, &dst, t.dst_ip, &req),
    };
    seen.extend(t.hops.iter().map(|h| h.netns.clone()));
    let after = walk.snapshot(&seen).await;
    for hop in t.hops.iter_mut() {
        hop.probe_seen = Some(moved(
            &hop_counters(&before, hop),
            &hop_counters(&after, hop),
        ));
        let rules = |s: &Snapshot| s.get(&hop.netns).map(|x| x.1.clone()).unwrap_or_default();
        hop.nft_counters = counted(&rules(&before), &rules(&after));
    }
    t.probe = Some(result);
    Ok(t)
}

/// The cluster's spec and pods, leaving out any whose name could not have been made by the
/// emulator: namespace names are derived from them (never taken from the records as written).
pub(crate) fn state(cluster: &Cluster) -> Result<(ClusterSpec, Vec<PodRecord>)> {
    let mut spec = cluster.spec()?;
    spec.nodes.retain(|n| names::node_index(&n.name).is_some());
    let mut pods = cluster.dir().pods()?;
    pods.retain(|p| names::validate_pod(&p.name).is_ok() && spec.node(&p.node).is_some());
    Ok((spec, pods))
}

/// The network namespace of a pod or node, by the emulator's naming.
pub(crate) fn pod_netns(spec: &ClusterSpec, p: &PodRecord) -> String {
    names::pod_netns(&spec.name, &p.namespace, &p.name)
}

pub(crate) fn node_netns(spec: &ClusterSpec, n: &NodeSpec) -> String {
    names::node_netns(&spec.name, &n.name)
}

/// Whether any of a hop's counters went up.
fn moved(before: &[Option<Counters>; 2], after: &[Option<Counters>; 2]) -> bool {
    let [bi, bo] = before;
    let [ai, ao] = after;
    let rx = |c: &Option<Counters>| c.map(|c| c.rx_packets + c.rx_dropped);
    let tx = |c: &Option<Counters>| c.map(|c| c.tx_packets + c.tx_dropped);
    rx(ai) > rx(bi) || tx(ao) > tx(bo) || tx(ai) > tx(bi)
}

/// A place the packet is in: a namespace, and what it is.
#[derive(Debug, Clone)]
enum Place {
    Pod(Box<PodRecord>),
    Node(NodeSpec),
    Underlay,
}

struct Walk<'a> {
    spec: &'a ClusterSpec,
    pods: &'a [PodRecord],
    services: &'a [service::Service],
    /// The probe's protocol and destination port, where a Service could match them.
    l4: Option<(Protocol, u16)>,
    /// The endpoint the probe's connection was DNATed to, once known.
    chosen: Option<Ipv4Addr>,
    handles: HashMap<String, Netlink>,
    /// The source is forged: the sender's own lookup cannot name it (the kernel wants a local
    /// source there), the lookups on the way must.
    forged: bool,
}

impl<'a> Walk<'a> {
    fn new(
        spec: &'a ClusterSpec,
        pods: &'a [PodRecord],
        services: &'a [service::Service],
    ) -> Walk<'a> {
        Walk {
            spec,
            pods,
            services,
            l4: None,
            chosen: None,
            handles: HashMap::new(),
            forged: false,
        }
    }

    fn netns(&self, place: &Place) -> String {
        match place {
            Place::Pod(p) => pod_netns(self.spec, p),
            Place::Node(n) => node_netns(self.spec, n),
            Place::Underlay => names::underlay_netns(&self.spec.name),
        }
    }

    fn label(place: &Place) -> String {
        match place {
            Place::Pod(p) => format!("pod/{}", p.display_name()),
            Place::Node(n) => format!("node/{}", n.name),
            Place::Underlay => "underlay".into(),
        }
    }

    fn nl(&mut self, netns: &str) -> Result<Netlink> {
        if let Some(h) = self.handles.get(netns) {
            return Ok(h.clone());
        }
        let ns =
            NetNs::open(netns::named_path(netns)).map_err(io_err(format!("open netns {netns}")))?;
        let h =
            Netlink::in_netns(Arc::new(ns)).map_err(io_err(format!("open netlink in {netns}")))?;
        self.handles.insert(netns.to_string(), h.clone());
        Ok(h)
    }

    async fn path(
        &mut self,
        src: &Endpoint,
        dst: &Endpoint,
        size: Option<u32>,
        forged: Option<Ipv4Addr>,
    ) -> Result<Trace> {
        let dst_ip = match dst {
            Endpoint::Pod(p) => p.ipv4().ok_or_else(|| no_ipv4(p))?,
            Endpoint::Node(n) => n.node_ip,
            Endpoint::Outside(ip) => *ip,
            Endpoint::Service(s) => s.cluster_ip.expect("resolve refuses a headless Service"),
        };
        let (mut place, default_src) = match src {
            Endpoint::Pod(p) => (Place::Pod(p.clone()), p.ipv4().ok_or_else(|| no_ipv4(p))?),
            Endpoint::Node(n) => (Place::Node(n.clone()), n.node_ip),
            Endpoint::Outside(_) | Endpoint::Service(_) => {
                unreachable!("resolve refuses an outside source")
            }
        };
        // The source the kernel would choose (a node talks to its own pods from the gateway
        // address on their veth); the endpoint's address when there is no route to choose by.
        let src_nl = self.nl(&self.netns(&place))?;
        let src_ip = src_nl
            .source_for(dst_ip)
            .await
            .ok()
            .flatten()
            .unwrap_or(default_src);
        let src_ip = forged.unwrap_or(src_ip);
        self.forged = forged.is_some();
        let mut t = Trace {
            src: src.label(),
            dst: dst.label(),
            src_ip,
            dst_ip,
            hops: Vec::new(),
            delivered: false,
            fault: None,
            probe: None,
        };
        let mut pkt_src = src_ip;
        let mut dst_ip = dst_ip;
        let mut iif: Option<(u32, String)> = None;
        let mut visited: Vec<(String, Option<u32>)> = Vec::new();
        loop {
            let netns = self.netns(&place);
            let here = t.hops.len();
            let key = (netns.clone(), iif.as_ref().map(|i| i.0));
            if visited.contains(&key) || here >= MAX_HOPS {
                t.hops.push(Hop::new(Self::label(&place), netns, iif));
                t.fault = Some(Fault {
                    hop: here,
                    reason: Reason::Loop,
                    detail: "the packet comes back to a namespace it already crossed".into(),
                });
                return Ok(t);
            }
            visited.push(key);
            let mut hop = Hop::new(Self::label(&place), netns.clone(), iif.clone());
            // kube-proxy's DNAT comes first: nat prerouting (output, for the node's own
            // packets) runs before the route lookup.
            if let (Place::Node(n), Some(l4)) = (&place, self.l4) {
                match service::at_node(
                    self.spec,
                    self.services,
                    n,
                    pkt_src,
                    dst_ip,
                    l4,
                    self.chosen,
                ) {
                    Some(service::Dnat::To(s)) => {
                        dst_ip = s
                            .chosen
                            .as_ref()
                            .expect("a Service hop has its endpoint")
                            .ip;
                        if let Some(detail) = proxy_lacks(&netns, &n.name, &s, l4.0) {
                            t.fault.get_or_insert(Fault {
                                hop: here,
                                reason: Reason::ProxyTable,
                                detail,
                            });
                        }
                        hop.service = Some(*s);
                    }
                    Some(service::Dnat::Refused(reason, detail, s)) => {
                        let detail = match proxy_lacks(&netns, &n.name, &s, l4.0) {
                            Some(stale) => format!("{detail}; but {stale}"),
                            None => detail,
                        };
                        hop.service = Some(*s);
                        hop.rule = format!("kube-proxy (nftables): table {}", PROXY_TABLE);
                        t.hops.push(hop);
                        t.fault = Some(Fault {
                            hop: here,
                            reason,
                            detail,
                        });
                        return Ok(t);
                    }
                    None => {}
                }
            }
            let step = self
                .step(&place, &mut hop, pkt_src, dst_ip, iif.as_ref(), size)
                .await?;
            t.hops.push(hop);
            match step {
                Step::Delivered => {
                    t.delivered = true;
                    return Ok(t);
                }
                Step::Drop(reason, detail) => {
                    t.fault.get_or_insert(Fault {
                        hop: here,
                        reason,
                        detail,
                    });
                    return Ok(t);
                }
                Step::Next {
                    place: next,
                    iif: next_iif,
                    warn,
                    mut nat_to,
                    bridge,
                } => {
                    let masq = t.hops[here]
                        .service
                        .as_ref()
                        .and_then(|s| s.masquerade.clone());
                    if let Some(why) = masq {
                        if let Some(ip) = self.out_address(&t.hops[here]).await {
                            t.hops[here].nat =
                                Some(format!("masquerade {pkt_src} -> {ip} (kube-proxy: {why})"));
                            nat_to = Some(ip);
                        }
                    }
                    if let Some((reason, detail)) = warn {
                        t.fault.get_or_insert(Fault {
                            hop: here,
                            reason,
                            detail,
                        });
                    }
                    if let Some(ip) = nat_to {
                        pkt_src = ip;
                    }
                    t.hops.extend(bridge.map(|b| *b));
                    place = *next;
                    iif = Some(next_iif);
                }
            }
        }
    }

    /// One namespace: the kernel's lookup, then where the chosen interface leads.
    async fn step(
        &mut self,
        place: &Place,
        hop: &mut Hop,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        iif: Option<&(u32, String)>,
        size: Option<u32>,
    ) -> Result<Step> {
        let nl = self.nl(&hop.netns)?;
        // A veth drops what is larger than the MTU of the end that receives it.
        if let (Some(size), Some((index, name))) = (size, iif) {
            if let Some(l) = nl.link_by_index(*index).await?.filter(|l| size > l.mtu) {
                return Ok(Step::Drop(
                    Reason::Mtu,
                    format!(
                        "a {size}-byte packet does not fit the MTU {} of {name}, where it \
                         arrives",
                        l.mtu
                    ),
                ));
            }
        }
        let spoofed = self.own_source(place, &nl, src, iif).await?;
        let looked = nl
            .route_get(Packet {
                dst,
                src: Some(src).filter(|_| iif.is_some() || !self.forged),
                iif: iif.map(|i| i.0),
            })
            .await;
        let mut spoof_warn = None;
        if let Some(detail) = spoofed {
            hop.rule = "anti-spoofing: a pod sends only with its own address".into();
            let stopped_by = if looked.is_err() {
                Some("the kernel's reverse-path check (rp_filter)")
            } else if self.antispoof_chain(&hop.netns) {
                Some("flatnet's anti-spoofing chain")
            } else {
                None
            };
            match stopped_by {
                Some(by) => {
                    return Ok(Step::Drop(
                        Reason::SpoofedSource,
                        format!("{detail}; {by} drops it"),
                    ))
                }
                None => {
                    spoof_warn = Some((
                        Reason::SpoofedSource,
                        format!("{detail}; neither rp_filter nor an anti-spoofing chain stops it"),
                    ))
                }
            }
        }
        let m = match looked {
            Ok(m) => m,
            Err(e) => return self.refused(place, hop, &nl, e, src, dst, iif).await,
        };
        if m.kind == RouteType::Local {
            hop.rule = format!("{dst} is an address of this namespace (local table)");
            hop.delivered = true;
            return Ok(Step::Delivered);
        }
        hop.route = Some(route_text(&m, &nl).await);
        hop.rule = made_by(m.protocol).to_string();
        if m.kind != RouteType::Unicast {
            return Ok(Step::Drop(
                Reason::NoRoute,
                format!("the route to {dst} is of type {:?}", m.kind),
            ));
        }
        let Some(oif) = m.oif else {
            return Ok(Step::Drop(
                Reason::NoRoute,
                "the route has no device".into(),
            ));
        };
        let out = nl.link_by_index(oif).await?.ok_or_else(|| Error::Io {
            op: format!("find link #{oif} in {}", hop.netns),
            cause: std::io::ErrorKind::NotFound.into(),
        })?;
        hop.oif = Some(out.name.clone());
        hop.links.1 = Some(oif);
        let next_hop = m.gateway.unwrap_or(dst);
        hop.next_hop = Some(next_hop);
        if !out.up {
            return Ok(Step::Drop(
                Reason::LinkDown,
                format!("{} in {} is down", out.name, hop.at),
            ));
        }
        if let Some(size) = size.filter(|s| *s > out.mtu) {
            return Ok(Step::Drop(
                Reason::Mtu,
                format!(
                    "a {size}-byte packet does not fit the MTU {} of {}",
                    out.mtu, out.name
                ),
            ));
        }
        if let Place::Node(n) = place {
            if let Some(drop) = self.expected_route(n, &m, &out, dst, next_hop).await? {
                return Ok(drop);
            }
        }
        let nat_to = self.masquerade(place, &out, src, dst).await;
        if let Some(ip) = nat_to {
            hop.nat = Some(format!(
                "masquerade {src} -> {ip} (egress: the destination is outside the cluster)"
            ));
        }
        let mut step = self.next_place(place, &out, next_hop, dst, nat_to).await?;
        if let Step::Next { warn, .. } = &mut step {
            if warn.is_none() {
                *warn = spoof_warn;
            }
        }
        Ok(step)
    }

    /// The lookup was refused: say why as the kernel meant it.
    #[allow(clippy::too_many_arguments)]
    async fn refused(
        &mut self,
        place: &Place,
        hop: &mut Hop,
        nl: &Netlink,
        e: crate::netlink::Error,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        iif: Option<&(u32, String)>,
    ) -> Result<Step> {
        let errno = e.errno();
        // The reverse-path check fails the lookup with EXDEV, or with EINVAL where the kernel
        // treats the packet as a martian source.
        if iif.is_some() && matches!(errno, Some(libc::EXDEV) | Some(libc::EINVAL)) {
            hop.rule = "reverse-path filter (rp_filter)".into();
            let dev = iif.map_or("?", |i| i.1.as_str());
            return Ok(Step::Drop(
                Reason::SpoofedSource,
                format!("{src} is not routed back through {dev}, the interface it came in by"),
            ));
        }
        if errno == Some(libc::ENETDOWN) {
            let dev = iif.map_or("?", |i| i.1.as_str());
            return Ok(Step::Drop(
                Reason::LinkDown,
                format!("{dev} in {} is down", hop.at),
            ));
        }
        if matches!(errno, Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH)) {
            hop.rule = "no route matches".into();
            if let Place::Pod(p) = place {
                let routes = nl.routes().await?;
                if !routes.iter().any(|r| r.dst.prefix() == 0) {
                    let gw = self
                        .spec
                        .node(&p.node)
                        .and_then(|n| n.pod_cidr.map(|c| crate::ipam::Pool::new(c).gateway()));
                    return Ok(Step::Drop(
                        Reason::NoDefaultRoute,
                        format!(
                            "the pod has no default route (flatnet-cni adds `default via {} \
                             dev eth0`)",
                            gw.map_or("?".into(), |g| g.to_string())
                        ),
                    ));
                }
            }
            return Ok(Step::Drop(
                Reason::NoRoute,
                format!("{} has no route to {dst}", hop.at),
            ));
        }
        Err(Error::Netlink(e))
    }

    /// Where a packet leaving by `out` towards `next_hop` arrives.
    async fn next_place(
        &mut self,
        place: &Place,
        out: &Link,
        next_hop: Ipv4Addr,
        dst: Ipv4Addr,
        nat_to: Option<Ipv4Addr>,
    ) -> Result<Step> {
        let next = |place: Place, iif: (u32, String), warn: Option<(Reason, String)>| Step::Next {
            place: Box::new(place),
            iif,
            warn,
            nat_to,
            bridge: None,
        };
        match place {
            // A pod's only link is its veth to the node.
            Place::Pod(p) => {
                let Some(node) = self.spec.node(&p.node).cloned() else {
                    return Ok(Step::Drop(
                        Reason::Unknown,
                        format!("node {} is not in the cluster", p.node),
                    ));
                };
                let veth = host_veth(p).unwrap_or_default().to_string();
                let nl = self.nl(&node_netns(self.spec, &node))?;
                let Some(host) = nl.link_by_name(&veth).await? else {
                    return Ok(Step::Drop(
                        Reason::LinkDown,
                        format!("the host veth {veth:?} is missing on {}", node.name),
                    ));
                };
                if !host.up {
                    return Ok(Step::Drop(
                        Reason::LinkDown,
                        format!("the host veth {veth} on {} is down", node.name),
                    ));
                }
                if !is_local(&nl, next_hop).await? {
                    let gw = cidr_text(node.pod_cidr.map(|c| crate::ipam::Pool::new(c).gateway()));
                    return Ok(Step::Drop(
                        Reason::WrongGateway,
                        format!(
                            "the pod sends to {next_hop}, which {} does not have: its \
                             gateway is {gw}, on its loopback",
                            node.name
                        ),
                    ));
                }
                Ok(next(Place::Node(node), (host.index, veth), None))
            }
            Place::Node(n) if out.name == "eth0" => {
                let owner = self
                    .spec
                    .nodes
                    .iter()
                    .find(|o| in_cidr(o.pod_cidr, dst) && o.name != n.name)
                    .cloned();
                if let Some(to) = self.spec.nodes.iter().find(|o| o.node_ip == next_hop) {
                    let to = to.clone();
                    let warn = match &owner {
                        Some(o) if o.name != to.name => Some((
                            Reason::WrongNode,
                            format!(
                                "{} belongs to {} ({}), but {} sends it via {} ({})",
                                cidr_text(o.pod_cidr),
                                o.name,
                                o.node_ip,
                                n.name,
                                to.name,
                                to.node_ip
                            ),
                        )),
                        _ => None,
                    };
                    let bridge = match self.underlay_hop(&n.name, &to).await? {
                        Ok(h) => h,
                        Err(step) => return Ok(step),
                    };
                    let nl = self.nl(&node_netns(self.spec, &to))?;
                    let Some(eth0) = nl.link_by_name("eth0").await? else {
                        return Ok(Step::Drop(
                            Reason::LinkDown,
                            format!("{} has no eth0", to.name),
                        ));
                    };
                    if !eth0.up {
                        return Ok(Step::Drop(
                            Reason::LinkDown,
                            format!("eth0 of {} is down", to.name),
                        ));
                    }
                    let mut step = next(Place::Node(to), (eth0.index, "eth0".into()), warn);
                    if let Step::Next { bridge: b, .. } = &mut step {
                        *b = Some(Box::new(bridge));
                    }
                    return Ok(step);
                }
                if next_hop == self.spec.bridge_ip() {
                    let nl = self.nl(&names::underlay_netns(&self.spec.name))?;
                    let br = nl.link_by_name("br0").await?;
                    return Ok(match br {
                        Some(br) => next(Place::Underlay, (br.index, "br0".into()), None),
                        None => Step::Drop(Reason::LinkDown, "the underlay has no br0".into()),
                    });
                }
                Ok(Step::Drop(
                    Reason::WrongGateway,
                    format!(
                        "nothing on the underlay has {next_hop}{}",
                        owner.map_or(String::new(), |o| format!(
                            " ({} is {}'s, at {})",
                            cidr_text(o.pod_cidr),
                            o.name,
                            o.node_ip
                        ))
                    ),
                ))
            }
            Place::Node(n) if out.name.starts_with("flatnet.") => {
                let (hop, to) = match self.tunnel_hop(n, out, next_hop).await? {
                    Ok(x) => x,
                    Err(step) => return Ok(step),
                };
                let nl = self.nl(&node_netns(self.spec, &to))?;
                let Some(dev) = nl.link_by_name(&out.name).await?.filter(|l| l.up) else {
                    return Ok(Step::Drop(
                        Reason::TunnelEntry,
                        format!(
                            "{} has no {} up to take the tunnelled packet out",
                            to.name, out.name
                        ),
                    ));
                };
                let warn = self
                    .spec
                    .nodes
                    .iter()
                    .find(|o| in_cidr(o.pod_cidr, dst) && o.name != to.name)
                    .map(|o| {
                        (
                            Reason::WrongNode,
                            format!(
                                "{} belongs to {}, but {} tunnels it to {} ({})",
                                cidr_text(o.pod_cidr),
                                o.name,
                                n.name,
                                to.name,
                                to.node_ip
                            ),
                        )
                    });
                let mut step = next(Place::Node(to), (dev.index, out.name.clone()), warn);
                if let Step::Next { bridge: b, .. } = &mut step {
                    *b = Some(Box::new(hop));
                }
                Ok(step)
            }
            Place::Node(n) => {
                let Some(pod) = self
                    .pods
                    .iter()
                    .find(|p| p.node == n.name && host_veth(p) == Some(out.name.as_str()))
                    .cloned()
                else {
                    return Ok(Step::Drop(
                        Reason::Unknown,
                        format!("{} leads to no pod flatnet knows", out.name),
                    ));
                };
                let nl = self.nl(&pod_netns(self.spec, &pod))?;
                let Some(eth0) = nl.link_by_name("eth0").await? else {
                    return Ok(Step::Drop(
                        Reason::LinkDown,
                        format!("pod {} has no eth0", pod.name),
                    ));
                };
                if !eth0.up {
                    return Ok(Step::Drop(
                        Reason::LinkDown,
                        format!("eth0 of pod {} is down", pod.name),
                    ));
                }
                if !is_local(&nl, next_hop).await? {
                    return Ok(Step::Drop(
                        Reason::WrongGateway,
                        format!("{next_hop} is not pod {}'s address", pod.name),
                    ));
                }
                Ok(next(
                    Place::Pod(Box::new(pod)),
                    (eth0.index, "eth0".into()),
                    None,
                ))
            }
            Place::Underlay => Ok(Step::Drop(
                Reason::Unknown,
                format!(
                    "the underlay sends it out by {}: outside the emulator",
                    out.name
                ),
            )),
        }
    }

    /// A packet from a pod's host veth must come from the pod's own address, which is the
    /// only one the node routes back through that veth: what is wrong, if not. Whether
    /// anything stops it is for the caller: the kernel's rp_filter where it is strict (the input
    /// lookup then fails), an anti-spoofing chain (`fib saddr . iif oif missing`) where there is
    /// one.
    async fn own_source(
        &mut self,
        place: &Place,
        nl: &Netlink,
        src: Ipv4Addr,
        iif: Option<&(u32, String)>,
    ) -> Result<Option<String>> {
        let (Place::Node(n), Some((index, veth))) = (place, iif) else {
            return Ok(None);
        };
        let from_pod = self
            .pods
            .iter()
            .any(|p| p.node == n.name && host_veth(p) == Some(veth.as_str()));
        if !from_pod {
            return Ok(None);
        }
        let back = nl
            .route_get(Packet {
                dst: src,
                src: None,
                iif: None,
            })
            .await
            .ok();
        if back.and_then(|m| m.oif) == Some(*index) {
            return Ok(None);
        }
        Ok(Some(format!(
            "{src} is not routed back through {veth}: it is not that pod's address"
        )))
    }

    /// Whether the namespace has an anti-spoofing chain in flatnet's nftables table.
    fn antispoof_chain(&self, netns: &str) -> bool {
        NetNs::open(netns::named_path(netns))
            .ok()
            .and_then(|ns| nft_ruleset(&ns))
            .is_some_and(|r| r.contains("chain antispoof"))
    }

    /// A node's route to a pod address must be the one flatnet made: to its own pods through
    /// their host veth, to another node's through that node. A packet that leaves otherwise
    /// never arrives (a route through the wrong node is left to [`Self::next_place`]: the
    /// packet may still get there by the detour).
    async fn expected_route(
        &mut self,
        n: &NodeSpec,
        m: &crate::netlink::Matched,
        out: &Link,
        dst: Ipv4Addr,
        next_hop: Ipv4Addr,
    ) -> Result<Option<Step>> {
        let used = format!("{} sends it by {} to {next_hop}", route_name(m), out.name);
        if in_cidr(n.pod_cidr, dst) {
            let Some(pod) = self
                .pods
                .iter()
                .find(|p| p.node == n.name && p.ipv4() == Some(dst))
            else {
                return Ok(None);
            };
            let veth = host_veth(pod).unwrap_or_default();
            if out.name == veth {
                return Ok(None);
            }
            let nl = self.nl(&node_netns(self.spec, n))?;
            return Ok(Some(match nl.link_by_name(veth).await? {
                None => Step::Drop(
                    Reason::LinkDown,
                    format!("the host veth {veth:?} of pod {} is missing", pod.name),
                ),
                Some(l) if !l.up => Step::Drop(
                    Reason::LinkDown,
                    format!(
                        "the host veth {veth} of pod {} is down (and the kernel removed the \
                         pod's route with it); {used}",
                        pod.name
                    ),
                ),
                Some(_) => Step::Drop(
                    Reason::NoRoute,
                    format!(
                        "{} has no route to pod {} (flatnet-cni's `{dst} dev {veth}`); {used}",
                        n.name, pod.name
                    ),
                ),
            }));
        }
        let Some(owner) = self.spec.nodes.iter().find(|o| in_cidr(o.pod_cidr, dst)) else {
            return Ok(None);
        };
        let via_a_node = self.spec.nodes.iter().any(|o| o.node_ip == next_hop);
        if via_a_node || m.protocol == protocol::AGENT {
            return Ok(None);
        }
        Ok(Some(Step::Drop(
            Reason::NoRoute,
            format!(
                "{} has no route to {}'s pods {} (the agent's `{} via {}` is missing); {used}",
                n.name,
                owner.name,
                cidr_text(owner.pod_cidr),
                cidr_text(owner.pod_cidr),
                owner.node_ip
            ),
        )))
    }

    /// The tunnel from node `n`'s VXLAN device `out` towards the VTEP `vtep`: the neighbour
    /// entry gives the VTEP's MAC, the FDB entry of that MAC the outer destination, which
    /// must be a node. The hop shows both entries and the outer addresses; a missing entry is
    /// the drop, named.
    async fn tunnel_hop(
        &mut self,
        n: &NodeSpec,
        out: &Link,
        vtep: Ipv4Addr,
    ) -> Result<std::result::Result<(Hop, NodeSpec), Step>> {
        let netns = node_netns(self.spec, n);
        let nl = self.nl(&netns)?;
        let drop = |detail: String| Ok(Err(Step::Drop(Reason::TunnelEntry, detail)));
        let neigh = nl
            .neighbours(out.index)
            .await?
            .into_iter()
            .find(|x| x.dst == std::net::IpAddr::V4(vtep));
        let Some(mac) = neigh.and_then(|x| x.mac) else {
            return drop(format!(
                "{} has no neighbour entry for the VTEP {vtep} on {} (the agent keeps `{vtep} \
                 lladdr <VTEP MAC> PERMANENT` there for each tunnelled peer)",
                n.name, out.name
            ));
        };
        let mac_text = crate::netlink::mac_string(mac);
        let fdb = nl.fdb(out.index).await?.into_iter().find(|f| f.mac == mac);
        let Some(std::net::IpAddr::V4(outer)) = fdb.and_then(|f| f.dst) else {
            return drop(format!(
                "{} has no FDB entry for the VTEP MAC {mac_text} on {} (the agent keeps \
                 `{mac_text} dst <node IP> self permanent` there for each tunnelled peer)",
                n.name, out.name
            ));
        };
        let Some(to) = self.spec.nodes.iter().find(|o| o.node_ip == outer).cloned() else {
            return Ok(Err(Step::Drop(
                Reason::WrongGateway,
                format!("the FDB sends VTEP MAC {mac_text} to {outer}, which no node has"),
            )));
        };
        let info = nl.vxlan_info(out.index).await?;
        let local = info
            .as_ref()
            .and_then(|i| i.local)
            .map_or("?".into(), |a| a.to_string());
        let mut hop = Hop::new(format!("tunnel/{}", out.name), netns, None);
        hop.links.0 = Some(out.index);
        hop.route = Some(format!(
            "neighbour {vtep} lladdr {mac_text}, fdb {mac_text} dst {outer}"
        ));
        hop.rule = format!(
            "VXLAN vni {} udp/{}: outer {local} -> {outer} ({})",
            info.as_ref()
                .and_then(|i| i.vni)
                .map_or("?".into(), |v| v.to_string()),
            info.as_ref()
                .and_then(|i| i.port)
                .map_or("?".into(), |p| p.to_string()),
            to.name
        );
        hop.oif = Some("eth0".into());
        hop.next_hop = Some(outer);
        Ok(Ok((hop, to)))
    }

    /// The underlay's bridge between two nodes' ports, or the drop if a port is down.
    async fn underlay_hop(
        &mut self,
        from: &str,
        to: &NodeSpec,
    ) -> Result<std::result::Result<Hop, Step>> {
        let netns = names::underlay_netns(&self.spec.name);
        let nl = self.nl(&netns)?;
        let mut ports = Vec::new();
        for node in [from, to.name.as_str()] {
            match nl.link_by_name(node).await? {
                Some(l) if l.up => ports.push(l),
                Some(_) => {
                    return Ok(Err(Step::Drop(
                        Reason::LinkDown,
                        format!("the underlay port of {node} is down"),
                    )))
                }
                None => {
                    return Ok(Err(Step::Drop(
                        Reason::LinkDown,
                        format!("{node} is not plugged into the underlay"),
                    )))
                }
            }
        }
        let mut hop = Hop::new(
            "underlay".into(),
            netns,
            Some((ports[0].index, from.into())),
        );
        hop.route = Some(format!("bridge br0: port {from} -> port {}", to.name));
        hop.rule = format!(
            "the bridge forwards to the port of {} ({})",
            to.name, to.node_ip
        );
        hop.oif = Some(to.name.clone());
        hop.links.1 = Some(ports[1].index);
        hop.next_hop = Some(to.node_ip);
        Ok(Ok(hop))
    }

    /// The source a node's egress masquerade gives a packet leaving by `out`, as the agent's
    /// rules have it (see `agent::egress`): only pods' packets to outside the cluster, and
    /// only while the node's table holds the masquerade rule.
    async fn masquerade(
        &mut self,
        place: &Place,
        out: &Link,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Option<Ipv4Addr> {
        let Place::Node(n) = place else { return None };
        let outside = !in_cidr(self.spec.cluster_cidr, dst)
            && self.spec.nodes.iter().all(|o| o.node_ip != dst);
        let pod_cidr = n.pod_cidr.filter(|c| c.contains(src))?;
        if out.name != "eth0" || !outside {
            return None;
        }
        let ns = NetNs::open(netns::named_path(&node_netns(self.spec, n))).ok()?;
        let rules = nft_ruleset(&ns)?;
        rules
            .contains(&format!("ip saddr {pod_cidr} masquerade"))
            .then_some(n.node_ip)
    }

    /// The IPv4 address a masquerade on a hop's outgoing link takes, as the kernel picks it:
    /// the link's own, else (a host veth has none) the first global one of the namespace in
    /// link order, which on a node is the pods' gateway on its loopback.
    async fn out_address(&mut self, hop: &Hop) -> Option<Ipv4Addr> {
        let index = hop.links.1?;
        let nl = self.nl(&hop.netns).ok()?;
        let v4: Vec<(u32, Ipv4Addr)> = nl
            .all_addresses()
            .await
            .ok()?
            .into_iter()
            .filter_map(|(i, a)| match a.ip() {
                std::net::IpAddr::V4(v4) => Some((i, v4)),
                _ => None,
            })
            .collect();
        v4.iter()
            .find(|(i, _)| *i == index)
            .or_else(|| {
                v4.iter()
                    .find(|(_, a)| !a.is_loopback() && !a.is_link_local())
            })
            .map(|(_, a)| *a)
    }

    /// The interface and nftables counters of each namespace now.
    async fn snapshot(&mut self, netns: &BTreeSet<String>) -> Snapshot {
        let mut out = HashMap::new();
        for ns in netns {
            let links = match self.nl(ns) {
                Ok(nl) => nl.counters().await.unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            out.insert(ns.clone(), (links, nft_counters(ns)));
        }
        out
    }
}

/// Per namespace: each link's counters, and the nftables counters.
type Snapshot = HashMap<String, (Vec<(u32, Counters)>, BTreeMap<String, u64>)>;

/// A hop's (in, out) counters in a snapshot.
fn hop_counters(snap: &Snapshot, h: &Hop) -> [Option<Counters>; 2] {
    let all = snap
        .get(&h.netns)
        .map(|s| s.0.as_slice())
        .unwrap_or_default();
    let find = |i: Option<u32>| i.and_then(|i| all.iter().find(|(x, _)| *x == i).map(|(_, c)| *c));
    [find(h.links.0), find(h.links.1)]
}

enum Step {
    Delivered,
    Drop(Reason, String),
    Next {
        place: Box<Place>,
        iif: (u32, String),
        warn: Option<(Reason, String)>,
        nat_to: Option<Ipv4Addr>,
        /// The underlay's bridge, crossed on the way from one node to another.
        bridge: Option<Box<Hop>>,
    },
}

/// A route by its destination, as `ip route` names it.
fn route_name(m: &crate::netlink::Matched) -> String {
    if m.dst.prefix() == 0 {
        "the default route".into()
    } else {
        format!("the route {}", m.dst)
    }
}

/// The matched route as `ip route` prints it.
async fn route_text(m: &crate::netlink::Matched, nl: &Netlink) -> String {
    let mut s = if m.dst.prefix() == 0 {
        "default".to_string()
    } else {
        m.dst.to_string()
    };
    if let Some(gw) = m.gateway {
        s += &format!(" via {gw}");
    }
    if let Some(oif) = m.oif {
        if let Ok(Some(l)) = nl.link_by_index(oif).await {
            s += &format!(" dev {}", l.name);
        }
    }
    if m.protocol == protocol::AGENT || m.protocol == protocol::CNI {
        s += &format!(" proto {:#x}", m.protocol);
    }
    if m.table != 254 {
        s += &format!(" table {}", m.table);
    }
    s
}

/// Why the node's live proxy table does not do what the hop says, if it does not: it has no
/// element for the Service port that matched (the controller has not written it yet, or is
/// not running), or no DNAT to the endpoint followed. None where nft cannot be asked.
fn proxy_lacks(netns: &str, node: &str, s: &ServiceHop, proto: Protocol) -> Option<String> {
    let table = NetNs::open(netns::named_path(netns)).ok().and_then(|ns| {
        let out = crate::netns::command(std::path::Path::new("nft"), &[], Some(&ns))
            .args(["list", "table"])
            .args(PROXY_TABLE.split(' '))
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        // No table at all is an answer too: nothing DNATs there.
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    })?;
    let (_, dst) = s.orig;
    let key = if s.matched.starts_with("ClusterIP") {
        format!("{} . {} . {}", dst.ip(), proto.nft(), dst.port())
    } else {
        format!("{} . {} :", proto.nft(), dst.port())
    };
    if !table.contains(&key) {
        return Some(format!(
            "{node}'s table {PROXY_TABLE} has no element `{key}` (the controller has not \
             written this Service yet, or is not running): the kernel does not do what this \
             hop shows"
        ));
    }
    let to = s.chosen.as_ref()?;
    let dnat = format!("dnat to {}:{}", to.ip, to.port);
    (!table.contains(&dnat)).then(|| {
        format!(
            "{node}'s table {PROXY_TABLE} has no `{dnat}` (the controller has not written the \
             endpoint yet)"
        )
    })
}

/// Whether `ip` is in the IPv4 network, if there is one (an IPv6-only cluster has none).
fn in_cidr(cidr: Option<Ipv4Network>, ip: Ipv4Addr) -> bool {
    cidr.is_some_and(|c| c.contains(ip))
}

fn cidr_text<T: std::fmt::Display>(x: Option<T>) -> String {
    x.map_or("-".into(), |x| x.to_string())
}

fn no_ipv4(p: &PodRecord) -> Error {
    Error::Invalid(if p.ips.is_empty() {
        format!("pod {} has no IP yet", p.name)
    } else {
        format!(
            "pod {} has no IPv4 address ({}): trace follows IPv4 packets only",
            p.name,
            super::state::join(&p.ips)
        )
    })
}

async fn is_local(nl: &Netlink, ip: Ipv4Addr) -> Result<bool> {
    Ok(nl
        .all_addresses()
        .await?
        .iter()
        .any(|(_, a)| a.ip() == std::net::IpAddr::V4(ip)))
}

/// Every nftables counter of the namespace with its packets: named counters by name, a rule's
/// own counter by the rule's text. Empty where nft is missing or the namespace has no rules.
fn nft_counters(netns: &str) -> BTreeMap<String, u64> {
    let Some(rules) = NetNs::open(netns::named_path(netns))
        .ok()
        .and_then(|ns| nft_ruleset(&ns))
    else {
        return BTreeMap::new();
    };
    parse_counters(&rules)
}

fn parse_counters(rules: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut last = "";
    for line in rules.lines().map(str::trim) {
        if let Some(at) = line.find("packets ") {
            let packets = line[at + 8..]
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok());
            let key = if at == 0 {
                // The body of a named counter: `counter NAME {` came just before.
                last.strip_prefix("counter ")
                    .and_then(|l| l.strip_suffix(" {"))
                    .map(|n| format!("counter {n}"))
            } else {
                let rule = line[..at].trim_end().trim_end_matches("counter").trim_end();
                let rest = line[at..].splitn(5, ' ').nth(4).unwrap_or("");
                Some(format!("{rule} … {rest}").trim().to_string())
            };
            if let (Some(k), Some(p)) = (key, packets) {
                out.insert(k, p);
            }
        }
        last = line;
    }
    out
}

/// The counters that went up, with by how much.
fn counted(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<String> {
    after
        .iter()
        .filter_map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or(0);
            (*a > b).then(|| format!("{k}: +{}", a - b))
        })
        .collect()
}

/// `nft list ruleset` in `ns`; None where nft is missing or fails.
fn nft_ruleset(ns: &NetNs) -> Option<String> {
    let out = crate::netns::command(std::path::Path::new("nft"), &[], Some(ns))
        .args(["list", "ruleset"])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn spec() -> ClusterSpec {
        ClusterSpec {
            state_version: crate::emulator::state::STATE_VERSION,
            name: "t".into(),
            ip_family: Default::default(),
            cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
            node_mask: 24,
            cluster_cidr_v6: None,
            node_mask_v6: 64,
            underlay: "172.18.0.0/16".parse().unwrap(),
            underlay_v6: None,
            created: 0,
            agent_resync_ms: 1000,
            agent_restart_backoff_ms: 10_000,
            cni_bin_dirs: Vec::new(),
            controller: None,
            building: None,
            service_cidr: crate::emulator::state::default_service_cidr(),
            overlay: Default::default(),
            nodes: vec![NodeSpec {
                name: "node-1".into(),
                index: 1,
                node_ip: "172.18.0.2".parse().unwrap(),
                node_ip_v6: None,
                pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
                pod_cidr_v6: None,
                netns: "flatnet-t-node-1".into(),
                agent: None,
                created: 0,
                agent_restarts: 0,
                agent_restart_at: None,
            }],
        }
    }

    fn pod(name: &str, ip: &str) -> PodRecord {
        PodRecord {
            netns: format!("flatnet-t-pod-{name}"),
            ips: vec![ip.parse().unwrap()],
            result: Some(serde_json::json!({"interfaces": [
                {"name": "flat0123456789a"},
                {"name": "eth0", "sandbox": "/run/netns/x"}
            ]})),
            ..PodRecord::fixture(name, "node-1")
        }
    }

    #[test]
    fn endpoints_by_name_ip_and_node() {
        let (s, pods) = (spec(), vec![pod("web", "10.244.1.2")]);
        let name = |e: Endpoint| e.label();
        assert_eq!(
            name(resolve(&s, &pods, &[], "web", false).unwrap()),
            "pod/web"
        );
        assert_eq!(
            name(resolve(&s, &pods, &[], "pod/web", false).unwrap()),
            "pod/web"
        );
        assert_eq!(
            name(resolve(&s, &pods, &[], "10.244.1.2", false).unwrap()),
            "pod/web"
        );
        assert_eq!(
            name(resolve(&s, &pods, &[], "node/node-1", false).unwrap()),
            "node/node-1"
        );
        assert_eq!(
            name(resolve(&s, &pods, &[], "172.18.0.2", false).unwrap()),
            "node/node-1"
        );
        // The same name in two namespaces: NAMESPACE/NAME says which.
        let mut other = pod("web", "10.244.1.3");
        other.namespace = "x".into();
        let two = vec![pod("web", "10.244.1.2"), other];
        let e = resolve(&s, &two, &[], "web", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("in namespaces default, x"), "{e}");
        assert_eq!(
            name(resolve(&s, &two, &[], "x/web", false).unwrap()),
            "pod/x/web"
        );
        assert_eq!(
            name(resolve(&s, &two, &[], "pod/default/web", false).unwrap()),
            "pod/web"
        );
        // Any other address only as a destination: a trace starts inside the cluster.
        assert_eq!(
            name(resolve(&s, &pods, &[], "172.18.0.1", true).unwrap()),
            "172.18.0.1"
        );
        assert!(resolve(&s, &pods, &[], "172.18.0.1", false).is_err());
        assert!(resolve(&s, &pods, &[], "node/node-9", true).is_err());
        assert!(resolve(&s, &pods, &[], "nope", true).is_err());
        assert_eq!(host_veth(&pods[0]), Some("flat0123456789a"));
    }

    #[test]
    fn nft_counters_by_name_and_by_rule() {
        let before = parse_counters(
            "table inet flatnet {\n\tcounter spoofed_ipv4 {\n\t\tpackets 2 bytes 168\n\t}\n\
             \tchain c {\n\t\tiifname \"flat*\" counter packets 5 bytes 420 drop\n\t}\n}\n",
        );
        assert_eq!(before["counter spoofed_ipv4"], 2);
        assert_eq!(before["iifname \"flat*\" … drop"], 5);
        let mut after = before.clone();
        *after.get_mut("counter spoofed_ipv4").unwrap() += 1;
        assert_eq!(counted(&before, &after), ["counter spoofed_ipv4: +1"]);
    }

    #[test]
    fn a_hop_saw_the_probe_when_its_counters_moved() {
        let c = |rx, tx| {
            Some(Counters {
                rx_packets: rx,
                tx_packets: tx,
                ..Counters::default()
            })
        };
        assert!(moved(&[c(1, 0), None], &[c(2, 0), None]));
        assert!(moved(&[None, c(0, 5)], &[None, c(0, 6)]));
        assert!(!moved(&[c(1, 1), c(1, 1)], &[c(1, 1), c(1, 1)]));
        assert!(!moved(&[None, None], &[None, None]));
    }
}
