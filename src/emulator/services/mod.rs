//! Services in the emulator: kube-proxy's and CoreDNS's part of a cluster.
//!
//! `apply` keeps v1 Service documents in the state dir (`services/<ns>/<name>.json`), with
//! the ClusterIP (from `up --service-cidr`) and node ports it allocated, as the API server
//! does. The cluster's controller then does, at every pass, what three components do in a
//! real cluster: the EndpointSlice controller ([`endpoints`]: which pods back a Service, with
//! their `ready`, `serving` and `terminating` conditions), kube-proxy in nftables mode
//! ([`proxy`]: one `ip flatnet-proxy` table in every node's namespace, written in one `nft -f`
//! transaction per change) and the records CoreDNS serves ([`dns`]), which the cluster DNS pod
//! (`coredns` in `kube-system`, behind the `kube-dns` Service at the tenth address of the
//! service CIDR) answers from.

pub mod addon;
pub mod dns;
pub mod endpoints;
pub mod proxy;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::cluster::Cluster;
use super::documents;
use super::labels::Labels;
use super::manifest::LAST_APPLIED;
use super::objects::Outcome;
use super::state::ClusterDir;
use super::{io_err, names, Error, Result};

/// The node port range of the API server's default.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;
/// kube-proxy's default for `sessionAffinity: ClientIP`.
const AFFINITY_TIMEOUT: u32 = 10_800;

/// A Service document of a manifest, checked as the API server validates it.
#[derive(Debug, Clone)]
pub struct ServiceManifest {
    pub name: String,
    /// `metadata.namespace`, if the document says.
    pub namespace: Option<String>,
    /// The document as written.
    pub raw: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// As nftables and kube-proxy's chain names spell it.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// As the API spells it.
    pub fn api(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }

    fn parse(s: Option<&str>) -> std::result::Result<Protocol, String> {
        match s {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some(other) => Err(format!("{other:?}: only TCP and UDP are supported")),
        }
    }
}

/// Where a Service port sends to on a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port's name, resolved on each pod.
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target: TargetPort,
    pub node_port: Option<u16>,
}

/// A stored Service, as the proxy, the endpoints and the DNS see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svc {
    pub namespace: String,
    pub name: String,
    /// None for a headless Service (`clusterIP: None`).
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<SvcPort>,
    /// None: the Service's endpoints are not managed from pods.
    pub selector: Option<Labels>,
    pub node_port: bool,
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity: Option<u32>,
}

impl Svc {
    /// `ns/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn selects(&self, labels: &Labels) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }

    /// Reads a stored (or about to be stored) document; it is checked again, since the state
    /// dir is untrusted.
    pub fn from_doc(doc: &Value) -> std::result::Result<Svc, String> {
        let s: Service = super::manifest::typed(doc)?;
        let name = s.metadata.name.clone().ok_or("metadata.name: required")?;
        names::validate_namespace(&name).map_err(|e| format!("metadata.name: {e}"))?;
        let namespace = s
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        names::validate_namespace(&namespace).map_err(|e| format!("metadata.namespace: {e}"))?;
        let spec = s.spec.unwrap_or_default();
        let node_port = match spec.type_.as_deref() {
            None | Some("ClusterIP") => false,
            Some("NodePort") => true,
            Some(other) => {
                return Err(format!(
                    "spec.type: {other:?}: only ClusterIP and NodePort are supported"
                ))
            }
        };
        let cluster_ip = match spec.cluster_ip.as_deref() {
            Some("None") if node_port => {
                return Err("spec.clusterIP: None is not allowed with type NodePort".into())
            }
            Some("None") => None,
            None | Some("") => Some(Ipv4Addr::UNSPECIFIED),
            Some(ip) => Some(
                ip.parse::<Ipv4Addr>()
                    .map_err(|_| format!("spec.clusterIP: {ip:?} is not an IPv4 address"))?,
            ),
        };
        let mut ports = Vec::new();
        let list = spec.ports.unwrap_or_default();
        for (i, p) in list.iter().enumerate() {
            let at = |e: String| format!("spec.ports[{i}].{e}");
            let name = p.name.clone().unwrap_or_default();
            if list.len() > 1 && name.is_empty() {
                return Err(at("name: required when there is more than one port".into()));
            }
            if !name.is_empty() {
                names::validate_namespace(&name).map_err(|e| at(format!("name: {e}")))?;
            }
            let port = u16::try_from(p.port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| at(format!("port: {} is not in 1-65535", p.port)))?;
            let protocol =
                Protocol::parse(p.protocol.as_deref()).map_err(|e| at(format!("protocol: {e}")))?;
            let target = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => TargetPort::Number(
                    u16::try_from(*n)
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| at(format!("targetPort: {n} is not in 1-65535")))?,
                ),
                Some(IntOrString::String(s)) => match s.parse::<u16>() {
                    Ok(n) if n > 0 => TargetPort::Number(n),
                    _ => {
                        names::validate_namespace(s).map_err(|e| at(format!("targetPort: {e}")))?;
                        TargetPort::Name(s.clone())
                    }
                },
            };
            let node = match p.node_port {
                Some(_) if !node_port => {
                    return Err(at("nodePort: only for type NodePort".into()));
                }
                Some(n) => Some(
                    u16::try_from(n)
                        .ok()
                        .filter(|n| NODE_PORTS.contains(n))
                        .ok_or_else(|| at(format!("nodePort: {n} is not in 30000-32767")))?,
                ),
                None => None,
            };
            if ports
                .iter()
                .any(|o: &SvcPort| o.port == port && o.protocol == protocol)
            {
                return Err(at(format!("port: {port}/{} is used twice", protocol.api())));
            }
            ports.push(SvcPort {
                name,
                protocol,
                port,
                target,
                node_port: node,
            });
        }
        if ports.is_empty() && cluster_ip.is_some() {
            return Err("spec.ports: required".into());
        }
        let selector: Option<Labels> = spec.selector.map(|s| s.into_iter().collect());
        if let Some(s) = &selector {
            super::labels::validate(s).map_err(|e| format!("spec.selector: {e}"))?;
        }
        let local = match spec.external_traffic_policy.as_deref() {
            None | Some("Cluster") => false,
            Some("Local") if node_port => true,
            Some("Local") => {
                return Err("spec.externalTrafficPolicy: only for type NodePort".into())
            }
            Some(o) => {
                return Err(format!(
                    "spec.externalTrafficPolicy: {o:?} is not Cluster or Local"
                ))
            }
        };
        let affinity = match spec.session_affinity.as_deref() {
            None | Some("None") => None,
            Some("ClientIP") => {
                let t = spec
                    .session_affinity_config
                    .and_then(|c| c.client_ip)
                    .and_then(|c| c.timeout_seconds)
                    .unwrap_or(AFFINITY_TIMEOUT as i32);
                Some(
                    u32::try_from(t)
                        .ok()
                        .filter(|t| (1..=86_400).contains(t))
                        .ok_or_else(|| {
                            format!("spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} is not in 1-86400")
                        })?,
                )
            }
            Some(o) => {
                return Err(format!(
                    "spec.sessionAffinity: {o:?} is not None or ClientIP"
                ))
            }
        };
        Ok(Svc {
            namespace,
            name,
            cluster_ip,
            ports,
            selector,
            node_port,
            local,
            affinity,
        })
    }
}

/// Reads and checks one Service document.
pub fn parse(raw: Value) -> std::result::Result<ServiceManifest, String> {
    let svc = Svc::from_doc(&raw)?;
    let namespace = raw["metadata"]["namespace"].as_str().map(String::from);
    Ok(ServiceManifest {
        name: svc.name,
        namespace,
        raw,
    })
}

/// `up --service-cidr`: room for the DNS address and more.
pub fn check_service_cidr(cidr: Ipv4Network) -> std::result::Result<(), String> {
    if cidr.prefix() > 28 {
        return Err(format!(
            "--service-cidr {cidr}: at most a /28, so that the DNS Service has its tenth address"
        ));
    }
    Ok(())
}

/// The cluster DNS Service's address: the tenth of the service CIDR, as kubeadm chooses.
pub fn dns_ip(cidr: Ipv4Network) -> Ipv4Addr {
    super::state::nth(cidr.network(), 10)
}

fn services_dir(dir: &ClusterDir) -> PathBuf {
    dir.path().join("services")
}

fn service_path(dir: &ClusterDir, ns: &str, name: &str) -> PathBuf {
    services_dir(dir).join(ns).join(format!("{name}.json"))
}

/// Every stored Service document that reads as one, sorted by namespace and name; one that
/// does not is logged and left out.
pub fn stored(dir: &ClusterDir) -> Vec<Value> {
    documents::read_all(&services_dir(dir), "Service", |v| {
        Svc::from_doc(v).map(|_| ())
    })
}

/// Every stored Service, read.
pub fn all(dir: &ClusterDir) -> Vec<Svc> {
    stored(dir)
        .iter()
        .filter_map(|v| Svc::from_doc(v).ok())
        .collect()
}

impl Cluster {
    /// Creates or updates the Service `m` in `ns`, allocating its ClusterIP and node ports
    /// (kept across updates; a changed ClusterIP is refused, as the field is immutable).
    pub(crate) fn apply_service(
        &self,
        m: &ServiceManifest,
        ns: &str,
        last_applied: String,
    ) -> Result<Outcome> {
        let spec = self.spec()?;
        let live = self.service(ns, &m.name)?;
        let mut doc = m.raw.clone();
        doc["metadata"]["namespace"] = ns.into();
        doc["metadata"]["annotations"][LAST_APPLIED] = last_applied.into();
        doc["metadata"]["creationTimestamp"] = documents::created(live.as_ref()).into();
        let others: Vec<Value> = stored(self.dir())
            .into_iter()
            .filter(|v| {
                !(v["metadata"]["namespace"] == ns && v["metadata"]["name"] == m.name.as_str())
            })
            .collect();
        allocate(&mut doc, live.as_ref(), &others, spec.service_cidr)?;
        documents::store(&service_path(self.dir(), ns, &m.name), live.as_ref(), &doc)
    }

    /// One stored Service document.
    pub fn service(&self, ns: &str, name: &str) -> Result<Option<Value>> {
        documents::read(&service_path(self.dir(), ns, name))
    }

    /// Every stored Service document.
    pub fn services(&self) -> Result<Vec<Value>> {
        self.spec()?;
        Ok(stored(self.dir()))
    }

    /// Deletes the Services `list` of `ns`; returns the names that were not there. Their
    /// EndpointSlices, proxy rules and DNS records go at the controller's next pass.
    pub fn delete_services(&self, ns: &str, list: &[String]) -> Result<Vec<String>> {
        let _lock = self.dir().lock()?;
        let mut missing = Vec::new();
        for name in list {
            let path = service_path(self.dir(), ns, name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(name.clone()),
                Err(e) => return Err(io_err(format!("remove {}", path.display()))(e)),
            }
        }
        Ok(missing)
    }

    /// Removes the Services of a namespace being deleted.
    pub(crate) fn remove_namespace_services(&self, ns: &str) -> Result<()> {
        let path = services_dir(self.dir()).join(ns);
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err(format!("remove {}", path.display()))(e))
            }
            _ => Ok(()),
        }
    }
}

/// Fills in `spec.clusterIP(s)`, `type`, `sessionAffinity` and each port's `nodePort` as the
/// API server defaults and allocates them: what `live` had is kept; a new ClusterIP is the
/// lowest free address of `cidr` past the tenth (the DNS Service's, asked for by name), a new
/// node port the lowest free one.
fn allocate(
    doc: &mut Value,
    live: Option<&Value>,
    others: &[Value],
    cidr: Ipv4Network,
) -> Result<()> {
    let invalid = |e: String| Error::Invalid(format!("The Service is invalid: {e}"));
    let svc = Svc::from_doc(doc).map_err(invalid)?;
    let live_ip = live.and_then(|l| l["spec"]["clusterIP"].as_str().map(String::from));
    let asked = doc["spec"]["clusterIP"].as_str().map(String::from);
    let taken: Vec<&str> = others
        .iter()
        .filter_map(|o| o["spec"]["clusterIP"].as_str())
        .collect();
    let ip = match (svc.cluster_ip, live_ip) {
        (None, None) => "None".to_string(),
        (None, Some(l)) if l == "None" => l,
        (Some(ip), Some(l)) if ip.is_unspecified() || ip.to_string() == l => l,
        (_, Some(l)) => {
            return Err(invalid(format!(
                "spec.clusterIP: Invalid value: {:?}: field is immutable (it is {l})",
                asked.unwrap_or_default()
            )))
        }
        (Some(ip), None) if !ip.is_unspecified() => {
            if !cidr.contains(ip) || ip == cidr.network() || ip == cidr.broadcast() {
                return Err(invalid(format!(
                    "spec.clusterIP: Invalid value: {ip:?}: not in the service CIDR {cidr}"
                )));
            }
            if taken.contains(&ip.to_string().as_str()) {
                return Err(invalid(format!(
                    "spec.clusterIP: Invalid value: {ip:?}: provided IP is already allocated"
                )));
            }
            ip.to_string()
        }
        (Some(_), None) => {
            let dns = dns_ip(cidr);
            (11..cidr.size().saturating_sub(1))
                .map(|n| super::state::nth(cidr.network(), n))
                .find(|a| *a != dns && !taken.contains(&a.to_string().as_str()))
                .ok_or_else(|| invalid(format!("no free ClusterIP left in {cidr}")))?
                .to_string()
        }
    };
    let spec = &mut doc["spec"];
    spec["clusterIP"] = ip.clone().into();
    spec["clusterIPs"] = serde_json::json!([ip]);
    for p in spec["ports"].as_array_mut().into_iter().flatten() {
        if p["protocol"].is_null() {
            p["protocol"] = "TCP".into();
        }
        if p["targetPort"].is_null() {
            p["targetPort"] = p["port"].clone();
        }
    }
    if spec["type"].is_null() {
        spec["type"] = "ClusterIP".into();
    }
    if spec["sessionAffinity"].is_null() {
        spec["sessionAffinity"] = "None".into();
    }
    if svc.node_port {
        if spec["externalTrafficPolicy"].is_null() {
            spec["externalTrafficPolicy"] = "Cluster".into();
        }
        let mut used: Vec<u64> = others
            .iter()
            .flat_map(|o| o["spec"]["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["nodePort"].as_u64())
            .collect();
        let live_ports = live
            .and_then(|l| l["spec"]["ports"].as_array().cloned())
            .unwrap_or_default();
        let ports = spec["ports"].as_array_mut().expect("checked: ports");
        for p in ports.iter_mut() {
            if let Some(n) = p["nodePort"].as_u64() {
                if used.contains(&n) {
                    return Err(invalid(format!(
                        "spec.ports: nodePort {n}: provided port is already allocated"
                    )));
                }
                used.push(n);
                continue;
            }
            let kept = live_ports
                .iter()
                .find(|l| l["port"] == p["port"] && l["protocol"] == p["protocol"])
                .and_then(|l| l["nodePort"].as_u64())
                .filter(|n| !used.contains(n));
            let n = match kept {
                Some(n) => n,
                None => NODE_PORTS
                    .map(u64::from)
                    .find(|n| !used.contains(n))
                    .ok_or_else(|| invalid("no free node port left".into()))?,
            };
            used.push(n);
            p["nodePort"] = n.into();
        }
    }
    Ok(())
}
