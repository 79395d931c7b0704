//! What NetworkPolicy enforcement needs to know, read from untrusted records and checked as
//! the API server checks them: the policies (networking.k8s.io/v1, with the API's defaulting
//! applied), the namespaces' labels, and every pod's addresses, labels, node and named ports.
//!
//! The semantics live here, once: which pods a policy selects, which pods a peer names, and
//! [`View::verdict`], the answer the API gives for one packet. The compiler turns the same
//! resolution into nftables rules; `flatnet check` asks `verdict` what to expect.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

pub type Labels = BTreeMap<String, String>;

/// A transport protocol a policy port can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Protocol, String> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(format!("unsupported protocol {s:?}: TCP, UDP or SCTP")),
        }
    }

    /// nftables' name for it.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A `containerPort` with a name, which policies may refer to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod as policies see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    /// Its addresses, at most one per family; none until the network gave it one.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    pub node: String,
    #[serde(default)]
    pub ports: Vec<NamedPort>,
}

impl PodInfo {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Checks what the API server would have: names, labels, one address per family, port
    /// names.
    pub fn validate(&self) -> Result<(), String> {
        dns_label(&self.namespace).map_err(|e| format!("namespace: {e}"))?;
        dns_subdomain(&self.name).map_err(|e| format!("name: {e}"))?;
        dns_subdomain(&self.node).map_err(|e| format!("node: {e}"))?;
        crate::emulator::labels::validate(&self.labels).map_err(|e| format!("labels: {e}"))?;
        if self.ips.len() > 2
            || (self.ips.len() == 2 && self.ips[0].is_ipv4() == self.ips[1].is_ipv4())
        {
            return Err("ips: at most one address per family".into());
        }
        for p in &self.ports {
            port_name(&p.name).map_err(|e| format!("ports: {e}"))?;
            if p.port == 0 {
                return Err(format!("ports: {}: port 0", p.name));
            }
        }
        Ok(())
    }

    /// The number of its port `name` for `protocol`, if it has one.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// A namespace as policies see it: its labels (`kubernetes.io/metadata.name` among them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceInfo {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
}

impl NamespaceInfo {
    pub fn validate(&self) -> Result<(), String> {
        dns_label(&self.name).map_err(|e| format!("name: {e}"))?;
        crate::emulator::labels::validate(&self.labels).map_err(|e| format!("labels: {e}"))
    }
}

/// A label selector (`matchLabels` and `matchExpressions`, all of which must hold); the empty
/// one selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Labels,
    exprs: Vec<Expr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn from_k8s(s: &LabelSelector) -> Result<Selector, String> {
        let labels: Labels = s.match_labels.clone().unwrap_or_default();
        crate::emulator::labels::validate(&labels).map_err(|e| format!("matchLabels: {e}"))?;
        let mut exprs = Vec::new();
        for (i, r) in s.match_expressions.iter().flatten().enumerate() {
            let at = |e: &str| format!("matchExpressions[{i}]: {e}");
            crate::emulator::labels::validate_key(&r.key).map_err(|e| at(&e))?;
            let values = r.values.clone().unwrap_or_default();
            let k = r.key.clone();
            exprs.push(match r.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(at("values: must be non-empty for In and NotIn"))
                }
                "In" => Expr::In(k, values),
                "NotIn" => Expr::NotIn(k, values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(at("values: must be empty for Exists and DoesNotExist"))
                }
                "Exists" => Expr::Exists(k),
                "DoesNotExist" => Expr::DoesNotExist(k),
                other => return Err(at(&format!("operator {other:?} is not supported"))),
            });
        }
        Ok(Selector { labels, exprs })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|e| match e {
                Expr::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                Expr::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Expr::Exists(k) => labels.contains_key(k),
                Expr::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

/// A port of a policy rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub protocol: Protocol,
    pub port: Option<PortRef>,
    /// With a numeric port: the last port of the range.
    pub end: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    /// A `containerPort` name, resolved against each destination pod.
    Name(String),
}

impl Port {
    /// The port range this matches on `dst` (a pod, or None for an address that is none):
    /// None when a named port does not resolve there, which matches nothing.
    pub fn range_on(&self, dst: Option<&PodInfo>) -> Option<(u16, u16)> {
        match &self.port {
            None => Some((1, u16::MAX)),
            Some(PortRef::Number(n)) => Some((*n, self.end.unwrap_or(*n))),
            Some(PortRef::Name(name)) => dst?.named_port(name, self.protocol).map(|n| (n, n)),
        }
    }
}

/// Who a rule admits (ingress: sources; egress: destinations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Pods matching `pods` in the namespaces matching `namespaces` (None: the policy's own
    /// namespace).
    Pods {
        namespaces: Option<Selector>,
        pods: Selector,
    },
    Block {
        cidr: IpNetwork,
        except: Vec<IpNetwork>,
    },
}

/// One ingress or egress rule: empty `peers` admits everyone, empty `ports` every port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<Port>,
}

/// A NetworkPolicy with the API's defaulting applied: a direction is Some when it is in the
/// policy's types (then its pods are isolated in that direction), with the rules that admit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub selector: Selector,
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Reads and checks a NetworkPolicy as the API server validates and defaults it.
    pub fn from_k8s(np: &NetworkPolicy) -> Result<Policy, String> {
        let name = np.metadata.name.clone().ok_or("metadata.name: required")?;
        dns_subdomain(&name).map_err(|e| format!("metadata.name: {e}"))?;
        let namespace = np
            .metadata
            .namespace
            .clone()
            .ok_or("metadata.namespace: required")?;
        dns_label(&namespace).map_err(|e| format!("metadata.namespace: {e}"))?;
        let spec = np.spec.clone().unwrap_or_default();
        let selector = Selector::from_k8s(&spec.pod_selector.unwrap_or_default())
            .map_err(|e| format!("spec.podSelector.{e}"))?;
        let ingress_rules = spec.ingress.unwrap_or_default();
        let egress_rules = spec.egress.unwrap_or_default();
        // Defaulting: Ingress always; Egress only when there are egress rules.
        let (has_ingress, has_egress) = match &spec.policy_types {
            None => (true, !egress_rules.is_empty()),
            Some(types) => {
                for (i, t) in types.iter().enumerate() {
                    if t != "Ingress" && t != "Egress" {
                        return Err(format!(
                            "spec.policyTypes[{i}]: {t:?}: must be Ingress or Egress"
                        ));
                    }
                }
                (
                    types.iter().any(|t| t == "Ingress"),
                    types.iter().any(|t| t == "Egress"),
                )
            }
        };
        let ingress = ingress_rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                rule(r.from.as_deref(), r.ports.as_deref())
                    .map_err(|e| format!("spec.ingress[{i}].{e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let egress = egress_rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                rule(r.to.as_deref(), r.ports.as_deref())
                    .map_err(|e| format!("spec.egress[{i}].{e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            namespace,
            name,
            selector,
            ingress: has_ingress.then_some(ingress),
            egress: has_egress.then_some(egress),
        })
    }
}

fn rule(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
) -> Result<Rule, String> {
    let peers = peers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| peer(p).map_err(|e| format!("peers[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let ports = ports
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| port(p).map_err(|e| format!("ports[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rule { peers, ports })
}

fn peer(p: &NetworkPolicyPeer) -> Result<Peer, String> {
    if let Some(b) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err("ipBlock may not be combined with a selector".into());
        }
        let cidr: IpNetwork = b
            .cidr
            .parse()
            .map_err(|e| format!("ipBlock.cidr {:?}: {e}", b.cidr))?;
        let mut except = Vec::new();
        for (i, e) in b.except.iter().flatten().enumerate() {
            let net: IpNetwork = e
                .parse()
                .map_err(|err| format!("ipBlock.except[{i}] {e:?}: {err}"))?;
            if net.is_ipv4() != cidr.is_ipv4()
                || net.prefix() <= cidr.prefix()
                || !cidr.contains(net.network())
            {
                return Err(format!(
                    "ipBlock.except[{i}] {e:?}: must be a strict subset of {}",
                    b.cidr
                ));
            }
            except.push(net);
        }
        return Ok(Peer::Block { cidr, except });
    }
    let namespaces = p
        .namespace_selector
        .as_ref()
        .map(Selector::from_k8s)
        .transpose()
        .map_err(|e| format!("namespaceSelector.{e}"))?;
    let pods = match &p.pod_selector {
        Some(s) => Selector::from_k8s(s).map_err(|e| format!("podSelector.{e}"))?,
        None if namespaces.is_some() => Selector::everything(),
        None => return Err("one of podSelector, namespaceSelector or ipBlock is required".into()),
    };
    Ok(Peer::Pods { namespaces, pods })
}

fn port(p: &NetworkPolicyPort) -> Result<Port, String> {
    let protocol = Protocol::parse(p.protocol.as_deref().unwrap_or("TCP"))
        .map_err(|e| format!("protocol: {e}"))?;
    let port = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(PortRef::Number(
            u16::try_from(*n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or(format!("port: {n} is not in 1-65535"))?,
        )),
        Some(IntOrString::String(s)) => {
            port_name(s).map_err(|e| format!("port: {e}"))?;
            Some(PortRef::Name(s.clone()))
        }
    };
    let end = match (p.end_port, &port) {
        (None, _) => None,
        (Some(e), Some(PortRef::Number(n))) => Some(
            u16::try_from(e)
                .ok()
                .filter(|e| e >= n)
                .ok_or(format!("endPort: {e} must be in {n}-65535"))?,
        ),
        (Some(_), _) => return Err("endPort: needs a numeric port".into()),
    };
    Ok(Port {
        protocol,
        port,
        end,
    })
}

/// A DNS-1123 label: what namespace names are.
fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    ok.then_some(())
        .ok_or(format!("{s:?} is not a DNS-1123 label"))
}

/// A DNS-1123 subdomain: what pod, node and policy names are.
fn dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    ok.then_some(())
        .ok_or(format!("{s:?} is not a DNS-1123 subdomain"))
}

/// An IANA service name: what a named port is.
fn port_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    ok.then_some(())
        .ok_or(format!("{s:?} is not a port name (IANA service name)"))
}

/// The cluster's objects, each checked, as one node's agent sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub pods: Vec<PodInfo>,
    pub namespaces: Vec<NamespaceInfo>,
    pub policies: Vec<Policy>,
}

/// One end of a packet: a pod, or an address that is none (a node, the outside).
#[derive(Debug, Clone, Copy)]
pub enum End<'a> {
    Pod(&'a PodInfo),
    Addr(IpAddr),
}

/// What the policies say about one packet opening a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The policies that isolate the side that refused (empty when allowed, or when nothing
    /// isolates anything).
    pub isolated_by: Vec<String>,
}

impl View {
    fn namespace_labels(&self, ns: &str) -> Option<&Labels> {
        self.namespaces
            .iter()
            .find(|n| n.name == ns)
            .map(|n| &n.labels)
    }

    /// Whether `policy` selects `pod`.
    pub fn selects(&self, policy: &Policy, pod: &PodInfo) -> bool {
        policy.namespace == pod.namespace && policy.selector.matches(&pod.labels)
    }

    /// Whether a `Pods` peer of a policy in `policy_ns` names `pod`.
    fn peer_has_pod(&self, policy_ns: &str, peer: &Peer, pod: &PodInfo) -> bool {
        match peer {
            Peer::Pods { namespaces, pods } => {
                let ns_ok = match namespaces {
                    None => pod.namespace == policy_ns,
                    Some(sel) => self
                        .namespace_labels(&pod.namespace)
                        .is_some_and(|l| sel.matches(l)),
                };
                ns_ok && pods.matches(&pod.labels)
            }
            Peer::Block { .. } => false,
        }
    }

    /// The pods a `Pods` peer names.
    pub fn peer_pods<'a>(
        &'a self,
        policy_ns: &'a str,
        peer: &'a Peer,
    ) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.pods
            .iter()
            .filter(move |p| self.peer_has_pod(policy_ns, peer, p))
    }

    /// Whether `peer` admits the other end `other` (whose address on this packet is `addr`).
    fn peer_admits(&self, policy_ns: &str, peer: &Peer, other: End, addr: IpAddr) -> bool {
        match (peer, other) {
            (Peer::Block { cidr, except }, _) => {
                cidr.contains(addr) && !except.iter().any(|e| e.contains(addr))
            }
            (Peer::Pods { .. }, End::Pod(p)) => self.peer_has_pod(policy_ns, peer, p),
            (Peer::Pods { .. }, End::Addr(_)) => false,
        }
    }

    /// The policies isolating `pod` in one direction, with their rules for it.
    fn isolating<'a>(
        &'a self,
        pod: &'a PodInfo,
        ingress: bool,
    ) -> impl Iterator<Item = (&'a Policy, &'a Vec<Rule>)> + 'a {
        self.policies.iter().filter_map(move |p| {
            let rules = if ingress { &p.ingress } else { &p.egress };
            rules
                .as_ref()
                .filter(|_| self.selects(p, pod))
                .map(|r| (p, r))
        })
    }

    /// Whether one direction admits: `pod` is the isolated side, `other` the far end,
    /// `dst` the packet's destination pod (for named ports).
    fn admits(
        &self,
        pod: &PodInfo,
        ingress: bool,
        other: End,
        other_addr: IpAddr,
        dst: Option<&PodInfo>,
        (proto, port): (Protocol, u16),
    ) -> Result<(), Vec<String>> {
        let mut by = Vec::new();
        for (policy, rules) in self.isolating(pod, ingress) {
            by.push(policy.key());
            let hit = rules.iter().any(|r| {
                (r.peers.is_empty()
                    || r.peers
                        .iter()
                        .any(|p| self.peer_admits(&policy.namespace, p, other, other_addr)))
                    && (r.ports.is_empty()
                        || r.ports.iter().any(|p| {
                            p.protocol == proto
                                && p.range_on(dst).is_some_and(|(a, b)| a <= port && port <= b)
                        }))
            });
            if hit {
                return Ok(());
            }
        }
        if by.is_empty() {
            Ok(())
        } else {
            Err(by)
        }
    }

    /// The verdict on a new connection from `src` to `dst` (addresses `src_addr`,
    /// `dst_addr`): the source's egress, then the destination's ingress. `node_addrs` are the
    /// destination's node's own addresses (its node IPs and pod gateways), always admitted in.
    #[allow(clippy::too_many_arguments)]
    pub fn verdict(
        &self,
        src: End,
        src_addr: IpAddr,
        dst: End,
        dst_addr: IpAddr,
        proto: Protocol,
        port: u16,
        node_addrs: &[IpAddr],
    ) -> Verdict {
        let dst_pod = match dst {
            End::Pod(p) => Some(p),
            End::Addr(_) => None,
        };
        if let End::Pod(s) = src {
            if let Err(by) = self.admits(s, false, dst, dst_addr, dst_pod, (proto, port)) {
                return Verdict {
                    allowed: false,
                    isolated_by: by,
                };
            }
        }
        if let Some(d) = dst_pod {
            if !node_addrs.contains(&src_addr) {
                if let Err(by) = self.admits(d, true, src, src_addr, dst_pod, (proto, port)) {
                    return Verdict {
                        allowed: false,
                        isolated_by: by,
                    };
                }
            }
        }
        Verdict {
            allowed: true,
            isolated_by: Vec::new(),
        }
    }

    /// Whether `pod` is isolated for ingress (true) or egress (false).
    pub fn isolated(&self, pod: &PodInfo, ingress: bool) -> bool {
        self.isolating(pod, ingress).next().is_some()
    }

    /// The policies isolating `pod` in one direction, with their rules.
    pub fn rules_for<'a>(
        &'a self,
        pod: &'a PodInfo,
        ingress: bool,
    ) -> impl Iterator<Item = (&'a Policy, &'a Vec<Rule>)> + 'a {
        self.isolating(pod, ingress)
    }
}
