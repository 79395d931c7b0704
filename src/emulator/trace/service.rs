//! Services on the path: kube-proxy's DNAT at a node, as the trace shows it.
//!
//! The Service a packet matches and its candidate endpoints come from the same computation
//! the controller writes each node's `ip flatnet-proxy` table from (the stored Services and
//! [`endpoints::of`]); which endpoint a real connection was sent to is the kernel's
//! conntrack entry of the probe (see [`super::conntrack`]).

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::Serialize;

use crate::emulator::services::{self, endpoints, Protocol, Svc};
use crate::emulator::state::{ClusterSpec, NodeSpec, PodRecord};
use crate::emulator::{Cluster, Error, Result};

/// A Service with its endpoints.
pub type Service = (Svc, Vec<endpoints::Endpoint>);

/// Every stored Service with its endpoints.
pub fn load(cluster: &Cluster, pods: &[PodRecord]) -> Vec<Service> {
    services::all(cluster.dir())
        .into_iter()
        .map(|s| {
            let eps = endpoints::of(cluster.dir(), &s, pods);
            (s, eps)
        })
        .collect()
}

/// `svc/NAME` of the default namespace, else `svc/NS/NAME`, as pods are named.
pub fn label(svc: &Svc) -> String {
    if svc.namespace == "default" {
        format!("svc/{}", svc.name)
    } else {
        format!("svc/{}/{}", svc.namespace, svc.name)
    }
}

/// A Service named as trace takes it: `svc/NAME`, `svc/NS/NAME` (or `service/…`), its DNS
/// name `NAME.NS.svc[.cluster.local]`, or its ClusterIP. None: not a Service's form.
pub fn resolve<'a>(services: &'a [Service], what: &str) -> Option<Result<&'a Svc>> {
    let (ns, name) = if let Some(rest) = what
        .strip_prefix("svc/")
        .or_else(|| what.strip_prefix("service/"))
    {
        match rest.split_once('/') {
            Some((ns, n)) => (ns.to_string(), n.to_string()),
            None => ("default".into(), rest.to_string()),
        }
    } else if let Some(rest) = what
        .strip_suffix(".svc.cluster.local")
        .or_else(|| what.strip_suffix(".svc"))
    {
        let (n, ns) = rest.split_once('.')?;
        (ns.to_string(), n.to_string())
    } else if let Ok(ip) = what.parse::<Ipv4Addr>() {
        return services
            .iter()
            .find(|(s, _)| s.cluster_ip == Some(ip))
            .map(|(s, _)| Ok(s));
    } else {
        return None;
    };
    Some(
        match services
            .iter()
            .find(|(s, _)| s.namespace == ns && s.name == name)
        {
            Some((s, _)) if s.cluster_ip.is_none() => Err(Error::Invalid(format!(
                "Service {ns}/{name} is headless: it has no address of its own to DNAT; trace \
                 one of its pods"
            ))),
            Some((s, _)) => Ok(s),
            None => Err(Error::Invalid(format!(
                "Service {ns}/{name} is not in the cluster"
            ))),
        },
    )
}

/// The Service's port a trace aims at without `--port`: its first of the protocol.
pub fn default_port(svc: &Svc, proto: Protocol) -> Result<u16> {
    svc.ports
        .iter()
        .find(|p| p.protocol == proto)
        .map(|p| p.port)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "Service {}/{} has no {} port",
                svc.namespace,
                svc.name,
                proto.api()
            ))
        })
}

/// One ready endpoint the proxy may send to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub pod: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// The DNAT at a node: what matched, the candidates, and the one taken.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceHop {
    /// `NS/NAME`.
    pub service: String,
    /// The Service port: `http 80/TCP`, or `80/TCP` for an unnamed one.
    pub port: String,
    /// What the packet was addressed to: `ClusterIP 10.96.0.11:80` or `NodePort 172.18.0.2:30080`.
    pub matched: String,
    /// The ready endpoints, in the proxy's order.
    pub candidates: Vec<Backend>,
    /// The endpoint the walk goes on to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen: Option<Backend>,
    /// How `chosen` was learnt: the probe's conntrack entry, or not at all (no probe).
    pub chosen_by: String,
    /// Why kube-proxy masquerades this connection, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<String>,
    /// The address as the packet had it at this node: the probe's conntrack entry's key.
    #[serde(skip)]
    pub(crate) orig: (Ipv4Addr, SocketAddrV4),
}

/// What the proxy of node `n` does with a packet from `src` to `dst:port`.
pub enum Dnat {
    /// Sent to an endpoint.
    To(Box<ServiceHop>),
    /// Rejected or dropped by the proxy: why.
    Refused(super::Reason, String, Box<ServiceHop>),
}

/// The proxy's verdict at node `n` (whose own addresses a NodePort takes), if the packet is
/// for a Service; `chosen` names the endpoint the probe learnt, else the first is followed.
pub fn at_node(
    spec: &ClusterSpec,
    services: &[Service],
    n: &NodeSpec,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    l4: (Protocol, u16),
    chosen: Option<Ipv4Addr>,
) -> Option<Dnat> {
    let (proto, port) = l4;
    let by_ip = services.iter().find(|(s, _)| s.cluster_ip == Some(dst));
    let (svc, eps, sp, matched) = match by_ip {
        Some((svc, eps)) => {
            let matched = format!("ClusterIP {dst}:{port}");
            let Some(sp) = svc
                .ports
                .iter()
                .find(|p| p.protocol == proto && p.port == port)
            else {
                let hop = ServiceHop {
                    service: svc.key(),
                    port: format!("{port}/{}", proto.api()),
                    matched,
                    candidates: Vec::new(),
                    chosen: None,
                    chosen_by: String::new(),
                    masquerade: None,
                    orig: (src, SocketAddrV4::new(dst, port)),
                };
                return Some(Dnat::Refused(
                    super::Reason::NoServicePort,
                    format!(
                        "rejected: {} has no port {port}/{} (the proxy's cluster-ips-check)",
                        svc.key(),
                        proto.api()
                    ),
                    Box::new(hop),
                ));
            };
            (svc, eps, sp, matched)
        }
        None if dst == n.node_ip => {
            let (svc, eps, sp) = services.iter().find_map(|(s, eps)| {
                let sp = s
                    .ports
                    .iter()
                    .find(|p| p.protocol == proto && p.node_port == Some(port))?;
                Some((s, eps, sp))
            })?;
            (svc, eps, sp, format!("NodePort {dst}:{port}"))
        }
        None => return None,
    };
    let node_port = !matched.starts_with("ClusterIP");
    let candidates: Vec<Backend> = eps
        .iter()
        .filter(|e| e.ready)
        .filter_map(|e| {
            Some(Backend {
                pod: e.pod.clone(),
                node: e.node.clone(),
                ip: e.ip,
                port: e.port(&sp.name, proto)?,
            })
        })
        .collect();
    let reachable: Vec<&Backend> = candidates
        .iter()
        .filter(|b| !(node_port && svc.local) || b.node == n.name)
        .collect();
    let pick = chosen
        .and_then(|ip| reachable.iter().find(|b| b.ip == ip))
        .or(reachable.first())
        .map(|b| (*b).clone());
    let in_pods = spec.cluster_cidr.is_some_and(|c| c.contains(src));
    let masquerade = match &pick {
        _ if node_port && !svc.local => {
            Some("externalTrafficPolicy: Cluster (the reply must come back this way)".into())
        }
        _ if node_port => None,
        _ if !in_pods => Some(format!("{src} is not a pod's address (kube-proxy masquerades what comes from outside the pod network)")),
        Some(b) if b.ip == src => {
            Some("hairpin: the endpoint is the client itself, which would answer itself directly".into())
        }
        _ => None,
    };
    let hop = ServiceHop {
        service: svc.key(),
        port: if sp.name.is_empty() {
            format!("{}/{}", sp.port, proto.api())
        } else {
            format!("{} {}/{}", sp.name, sp.port, proto.api())
        },
        matched,
        candidates: candidates.clone(),
        chosen: pick.clone(),
        chosen_by: if chosen.is_some() && pick.as_ref().map(|b| b.ip) == chosen {
            "the probe's conntrack entry".into()
        } else {
            "no probe: the walk follows the first candidate; a connection gets one at random".into()
        },
        masquerade,
        orig: (src, SocketAddrV4::new(dst, port)),
    };
    if candidates.is_empty() {
        return Some(Dnat::Refused(
            super::Reason::NoEndpoints,
            format!(
                "rejected: {} has no ready endpoint for port {} (the proxy's \
                 no-endpoint-services map: the client gets an ICMP port unreachable, \
                 \"connection refused\", at once)",
                hop.service, hop.port
            ),
            Box::new(hop),
        ));
    }
    if pick.is_none() {
        return Some(Dnat::Refused(
            super::Reason::NoEndpoints,
            format!(
                "dropped: externalTrafficPolicy: Local, and {} has no ready endpoint of {} \
                 (the client's source is kept, so only a local endpoint could answer)",
                n.name, hop.service
            ),
            Box::new(hop),
        ));
    }
    Some(Dnat::To(Box::new(hop)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::trace::Reason;

    fn web(eps: &[(&str, &str, bool)]) -> Service {
        let svc = Svc::from_doc(&serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "x"},
            "spec": {"clusterIP": "10.96.0.11", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .unwrap();
        let eps = eps
            .iter()
            .map(|(ip, node, ready)| endpoints::Endpoint {
                ip: ip.parse().unwrap(),
                node: node.to_string(),
                pod: format!("web-{ip}"),
                hostname: None,
                ready: *ready,
                serving: *ready,
                terminating: false,
                ports: vec![("http".into(), Protocol::Tcp, 8080)],
            })
            .collect();
        (svc, eps)
    }

    #[test]
    fn a_service_by_each_of_its_names() {
        let all = [web(&[])];
        for name in [
            "svc/x/web",
            "service/x/web",
            "web.x.svc",
            "web.x.svc.cluster.local",
            "10.96.0.11",
        ] {
            assert_eq!(
                resolve(&all, name).unwrap().unwrap().key(),
                "x/web",
                "{name}"
            );
        }
        assert!(resolve(&all, "svc/web").unwrap().is_err(), "not in default");
        assert!(
            resolve(&all, "10.96.0.12").is_none(),
            "no Service's address"
        );
        assert!(resolve(&all, "web").is_none(), "a bare name is a pod's");
        assert_eq!(label(&all[0].0), "svc/x/web");
    }

    #[test]
    fn the_proxy_verdict_at_a_node() {
        let spec = super::super::tests::spec();
        let n = &spec.nodes[0];
        let client: Ipv4Addr = "10.244.1.2".parse().unwrap();
        let vip: Ipv4Addr = "10.96.0.11".parse().unwrap();
        let all = [web(&[
            ("10.244.1.2", "node-1", true),
            ("10.244.2.2", "node-2", true),
            ("10.244.2.3", "node-2", false),
        ])];
        let l4 = (Protocol::Tcp, 80);
        let Some(Dnat::To(h)) = at_node(&spec, &all, n, client, vip, l4, None) else {
            panic!("no DNAT")
        };
        assert_eq!(h.candidates.len(), 2, "ready ones only");
        assert_eq!(h.port, "http 80/TCP");
        // Without a probe the first candidate is followed, here the client itself: hairpin.
        assert_eq!(h.chosen.as_ref().unwrap().ip, client);
        assert!(h.masquerade.as_deref().unwrap().starts_with("hairpin"));
        let other = "10.244.2.2".parse().ok();
        let Some(Dnat::To(h)) = at_node(&spec, &all, n, client, vip, l4, other) else {
            panic!("no DNAT")
        };
        assert_eq!(h.chosen.as_ref().unwrap().ip, other.unwrap());
        assert!(h.chosen_by.contains("conntrack") && h.masquerade.is_none());
        // A port the Service does not have; no ready endpoint; not a Service at all.
        let port = at_node(&spec, &all, n, client, vip, (Protocol::Tcp, 81), None);
        assert!(matches!(
            port,
            Some(Dnat::Refused(Reason::NoServicePort, ..))
        ));
        let empty = [web(&[("10.244.2.3", "node-2", false)])];
        let none = at_node(&spec, &empty, n, client, vip, l4, None);
        assert!(
            matches!(none, Some(Dnat::Refused(Reason::NoEndpoints, ref d, _)) if d.starts_with("rejected"))
        );
        assert!(at_node(&spec, &all, n, client, client, l4, None).is_none());
    }

    #[test]
    fn a_node_port_by_traffic_policy() {
        let spec = super::super::tests::spec();
        let n = &spec.nodes[0];
        let outside: Ipv4Addr = "172.18.255.254".parse().unwrap();
        let mut np = web(&[("10.244.2.2", "node-2", true)]);
        np.0.node_port = true;
        np.0.ports[0].node_port = Some(30080);
        let l4 = (Protocol::Tcp, 30080);
        let Some(Dnat::To(h)) = at_node(&spec, &[np.clone()], n, outside, n.node_ip, l4, None)
        else {
            panic!("no DNAT")
        };
        assert_eq!(h.matched, "NodePort 172.18.0.2:30080");
        assert!(h.masquerade.as_deref().unwrap().contains("Cluster"));
        // Local, on a node without an endpoint of its own: dropped.
        np.0.local = true;
        let local = at_node(&spec, &[np], n, outside, n.node_ip, l4, None);
        assert!(
            matches!(local, Some(Dnat::Refused(Reason::NoEndpoints, ref d, _)) if d.starts_with("dropped"))
        );
    }
}
