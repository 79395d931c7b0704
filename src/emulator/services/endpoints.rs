//! The EndpointSlice controller's part: which pods back each Service, on which ports, and in
//! which condition, from the pods' records and the statuses their supervisors write.
//!
//! An endpoint is every pod of the Service's namespace that its selector matches, that has an
//! IPv4 address and has not finished: `ready` when the pod is Ready and not terminating,
//! `serving` when it is Ready, `terminating` from the moment its deletion starts (before its
//! containers are signalled, so the proxy stops sending new connections to it first). A named
//! `targetPort` is resolved on each pod; pods that resolve a Service's ports alike share a
//! slice, as the controller groups them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde_json::{json, Value};

use super::{Protocol, Svc, TargetPort};
use crate::emulator::pod_status::Phase;
use crate::emulator::state::{ClusterDir, PodRecord};
use crate::emulator::{io_err, Result};

/// One pod behind a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub node: String,
    pub pod: String,
    /// The pod's `hostname` when its `subdomain` is the Service: its own DNS name.
    pub hostname: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Each Service port's name and where it lands on this pod; a port whose target name the
    /// pod has no container port for is missing.
    pub ports: Vec<(String, Protocol, u16)>,
}

impl Endpoint {
    /// Where the Service port `name` lands on this pod.
    pub fn port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|(n, p, _)| n == name && *p == protocol)
            .map(|(_, _, port)| *port)
    }
}

/// The name of the marker a pod's deletion leaves in its directory before its containers are
/// told to stop: the pod is terminating from then on.
pub const TERMINATING: &str = "terminating";

/// The endpoints of `svc` among `pods`.
pub fn of(dir: &ClusterDir, svc: &Svc, pods: &[PodRecord]) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for pod in pods {
        if pod.namespace != svc.namespace || !svc.selects(&pod.labels) {
            continue;
        }
        let Some(ip) = pod.ipv4() else { continue };
        let pdir = dir.pod_dir(&pod.namespace, &pod.name);
        let status = pdir.status();
        if status
            .as_ref()
            .is_some_and(|s| matches!(s.phase, Phase::Succeeded | Phase::Failed))
        {
            continue;
        }
        // A bare sandbox has no containers to be unready: ready once it has its address.
        let serving = pod.spec.is_none() || status.as_ref().is_some_and(|s| s.is_ready());
        let terminating = pdir.path().join(TERMINATING).exists();
        let spec = pod.manifest.as_ref().map(|m| &m["spec"]);
        let hostname = spec
            .filter(|s| s["subdomain"].as_str() == Some(svc.name.as_str()))
            .and_then(|s| s["hostname"].as_str())
            .map(String::from);
        let ports = svc
            .ports
            .iter()
            .filter_map(|p| {
                let port = match &p.target {
                    TargetPort::Number(n) => Some(*n),
                    TargetPort::Name(name) => named_port(pod, name, p.protocol),
                }?;
                Some((p.name.clone(), p.protocol, port))
            })
            .collect();
        out.push(Endpoint {
            ip,
            node: pod.node.clone(),
            pod: pod.name.clone(),
            hostname,
            ready: serving && !terminating,
            serving,
            terminating,
            ports,
        });
    }
    out.sort_by_key(|e| e.ip);
    out
}

fn named_port(pod: &PodRecord, name: &str, protocol: Protocol) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol.api())
        .map(|p| p.container_port)
}

/// The discovery.k8s.io/v1 EndpointSlices of `svc`, by name: one per set of resolved ports.
pub fn slices(svc: &Svc, endpoints: &[Endpoint]) -> BTreeMap<String, Value> {
    let mut groups: BTreeMap<Vec<(String, Protocol, u16)>, Vec<&Endpoint>> = BTreeMap::new();
    for e in endpoints {
        groups.entry(e.ports.clone()).or_default().push(e);
    }
    if groups.is_empty() {
        groups.insert(Vec::new(), Vec::new());
    }
    groups
        .into_iter()
        .map(|(ports, eps)| {
            let tag = crate::stable_hash::fnv1a(format!("{ports:?}").bytes());
            let name = format!("{}-{}", svc.name, suffix(tag));
            let endpoints: Vec<Value> = eps
                .iter()
                .map(|e| {
                    let mut v = json!({
                        "addresses": [e.ip.to_string()],
                        "conditions": {
                            "ready": e.ready,
                            "serving": e.serving,
                            "terminating": e.terminating,
                        },
                        "nodeName": e.node,
                        "targetRef": {"kind": "Pod", "namespace": svc.namespace, "name": e.pod},
                    });
                    if let Some(h) = &e.hostname {
                        v["hostname"] = h.clone().into();
                    }
                    v
                })
                .collect();
            let ports: Vec<Value> = ports
                .iter()
                .map(|(n, p, port)| json!({"name": n, "protocol": p.api(), "port": port}))
                .collect();
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": name,
                    "namespace": svc.namespace,
                    "labels": {
                        "kubernetes.io/service-name": svc.name,
                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                    },
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": svc.name}],
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": ports,
            });
            (name, slice)
        })
        .collect()
}

/// Five characters of Kubernetes' name alphabet from `n`, as generateName's suffixes look.
fn suffix(mut n: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn slices_dir(dir: &ClusterDir) -> PathBuf {
    dir.path().join("endpointslices")
}

/// Writes `want` (`ns` → name → slice) as the stored EndpointSlices: only changed files are
/// rewritten, gone ones removed. Returns whether anything changed.
pub fn store(dir: &ClusterDir, want: &BTreeMap<String, BTreeMap<String, Value>>) -> Result<bool> {
    let root = slices_dir(dir);
    let mut changed = false;
    for (ns, slices) in want {
        let nsdir = root.join(ns);
        std::fs::create_dir_all(&nsdir).map_err(io_err(format!("create {}", nsdir.display())))?;
        for (name, slice) in slices {
            let path = nsdir.join(format!("{name}.json"));
            let json = serde_json::to_vec_pretty(slice).expect("JSON serializes");
            if std::fs::read(&path).ok().as_deref() != Some(json.as_slice()) {
                crate::fsutil::write_atomic(&path, &json)
                    .map_err(io_err(format!("write {}", path.display())))?;
                changed = true;
            }
        }
    }
    for ns in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let nsname = ns.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let keep = name
                .strip_suffix(".json")
                .is_some_and(|n| want.get(&nsname).is_some_and(|s| s.contains_key(n)));
            if !keep {
                std::fs::remove_file(f.path())
                    .map_err(io_err(format!("remove {}", f.path().display())))?;
                changed = true;
            }
        }
    }
    Ok(changed)
}

/// Every stored EndpointSlice, sorted by namespace and name.
pub fn stored(dir: &ClusterDir) -> Vec<Value> {
    crate::emulator::documents::read_all(&slices_dir(dir), "EndpointSlice", |_| Ok(()))
}
