//! kube-proxy's part, in its nftables mode: the table `ip flatnet-proxy` in every node's
//! namespace, apart from the agent's `inet flatnet`, replaced whole in one `nft -f`
//! transaction whenever what it should hold changes.
//!
//! The layout is kube-proxy's: a `services` chain on the nat prerouting and output hooks looks
//! a packet's destination (ClusterIP, protocol, port) up in the verdict map `service-ips`, and
//! (addressed to one of the node's own addresses) its protocol and port in
//! `service-nodeports`; a Service port's chain picks one ready endpoint at random (`numgen`),
//! after the `sessionAffinity: ClientIP` sets when there are; an endpoint's chain DNATs to the
//! pod. Replies are un-NATed by conntrack, so the backend sees the client pod's own address.
//! Two cases are masqueraded, as kube-proxy does (mark 0x4000, masquerade on postrouting):
//! hairpin (the endpoint is the client itself, which would otherwise answer itself directly)
//! and traffic from outside the pod network (node ports with `externalTrafficPolicy:
//! Cluster`, the node's own connections to a ClusterIP). A Service port with no ready endpoint
//! is in the `no-endpoint-services` map of the filter chains, which reject new connections at
//! once. The DNAT happens on prerouting, so NetworkPolicy (the agent's chains on the forward
//! hook) judges the endpoint's address, as in Kubernetes.
//!
//! Whole-table replacement keeps conntrack (established connections keep their endpoint) but
//! starts `ClientIP` affinity afresh at each change; kube-proxy updates in place.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::Stdio;

use super::endpoints::Endpoint;
use super::Svc;
use crate::emulator::state::{ClusterSpec, NodeSpec};
use crate::netns::NetNs;

/// The table's family and name.
pub const TABLE: &str = "ip flatnet-proxy";
/// kube-proxy's masquerade mark.
const MASQ_MARK: &str = "0x00004000";

/// The table for `node`, given every Service and its endpoints.
pub fn ruleset(spec: &ClusterSpec, node: &NodeSpec, services: &[(Svc, Vec<Endpoint>)]) -> String {
    let mut chains = String::new();
    let mut sets = String::new();
    let mut service_ips = Vec::new();
    let mut node_ports = Vec::new();
    let mut no_endpoints = Vec::new();
    let mut no_endpoint_node_ports = Vec::new();
    let mut cluster_ips = std::collections::BTreeSet::new();
    let cluster = spec
        .cluster_cidr
        .map(|c| c.to_string())
        .unwrap_or_else(|| "0.0.0.0/0".into());
    for (svc, eps) in services {
        let Some(cip) = svc.cluster_ip else { continue };
        cluster_ips.insert(cip.to_string());
        for p in &svc.ports {
            let proto = p.protocol.nft();
            let id = format!("{}/{}/{}/{}", svc.namespace, svc.name, proto, port_id(p));
            let ready: Vec<(&Endpoint, u16)> = eps
                .iter()
                .filter(|e| e.ready)
                .filter_map(|e| Some((e, e.port(&p.name, p.protocol)?)))
                .collect();
            let key = format!("{cip} . {proto} . {}", p.port);
            if ready.is_empty() {
                no_endpoints.push(format!("{key} : goto reject-chain"));
                if let Some(np) = p.node_port {
                    no_endpoint_node_ports.push(format!("{proto} . {np} : goto reject-chain"));
                }
                continue;
            }
            let mut ep_chains = Vec::new();
            for (e, port) in &ready {
                let chain = format!("endpoint-{id}__{}/{port}", e.ip);
                let set = format!("affinity-{id}__{}", e.ip);
                let mut body = format!("    ip saddr {} jump mark-for-masquerade\n", e.ip);
                if let Some(t) = svc.affinity {
                    let _ = writeln!(
                        sets,
                        "  set {set} {{\n    type ipv4_addr\n    flags dynamic,timeout\n    timeout {t}s\n  }}"
                    );
                    let _ = writeln!(body, "    update @{set} {{ ip saddr }}");
                }
                let _ = writeln!(body, "    meta l4proto {proto} dnat to {}:{port}", e.ip);
                let _ = writeln!(chains, "  chain {chain} {{\n{body}  }}");
                ep_chains.push((chain, set, e.node == node.name));
            }
            let pick = |list: &[&String]| -> String {
                let arms: Vec<String> = list
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{i} : goto {c}"))
                    .collect();
                format!(
                    "    numgen random mod {} vmap {{ {} }}\n",
                    list.len(),
                    arms.join(", ")
                )
            };
            let mut body = format!(
                "    ip daddr {cip} {proto} dport {} ip saddr != {cluster} jump mark-for-masquerade\n",
                p.port
            );
            if svc.affinity.is_some() {
                for (c, set, _) in &ep_chains {
                    let _ = writeln!(body, "    ip saddr @{set} goto {c}");
                }
            }
            let all: Vec<&String> = ep_chains.iter().map(|(c, _, _)| c).collect();
            body += &pick(&all);
            let svc_chain = format!("service-{id}");
            let _ = writeln!(chains, "  chain {svc_chain} {{\n{body}  }}");
            service_ips.push(format!("{key} : goto {svc_chain}"));
            if let Some(np) = p.node_port {
                let ext = format!("external-{id}");
                let body = if svc.local {
                    // The client's source is kept, so only this node's endpoints can answer
                    // it; a node with none drops, as kube-proxy does.
                    let local: Vec<&String> = ep_chains
                        .iter()
                        .filter(|(_, _, l)| *l)
                        .map(|(c, _, _)| c)
                        .collect();
                    if local.is_empty() {
                        "    drop\n".to_string()
                    } else {
                        pick(&local)
                    }
                } else {
                    format!("    jump mark-for-masquerade\n    goto {svc_chain}\n")
                };
                let _ = writeln!(chains, "  chain {ext} {{\n{body}  }}");
                node_ports.push(format!("{proto} . {np} : goto {ext}"));
            }
        }
    }
    let elements = |list: &[String]| {
        if list.is_empty() {
            String::new()
        } else {
            format!("    elements = {{ {} }}\n", list.join(",\n      "))
        }
    };
    let mut t = String::new();
    let _ = writeln!(t, "{sets}");
    t += &format!(
        "  chain mark-for-masquerade {{\n    meta mark set meta mark | {MASQ_MARK}\n  }}\n\
         \x20 chain masquerading {{\n    meta mark & {MASQ_MARK} == 0 return\n    \
         meta mark set meta mark ^ {MASQ_MARK}\n    masquerade fully-random\n  }}\n\
         \x20 chain reject-chain {{\n    reject\n  }}\n"
    );
    t += &chains;
    let _ = write!(
        t,
        "  map service-ips {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n{}  }}\n\
         \x20 map service-nodeports {{\n    type inet_proto . inet_service : verdict\n{}  }}\n\
         \x20 map no-endpoint-services {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n{}  }}\n\
         \x20 map no-endpoint-nodeports {{\n    type inet_proto . inet_service : verdict\n{}  }}\n",
        elements(&service_ips),
        elements(&node_ports),
        elements(&no_endpoints),
        elements(&no_endpoint_node_ports),
    );
    // What no Service port took on prerouting is still addressed to the service CIDR: a
    // port a ClusterIP does not have is rejected, an address no Service has dropped, as
    // kube-proxy does.
    let ips: Vec<String> = cluster_ips.into_iter().collect();
    let _ = write!(
        t,
        "  set cluster-ips {{\n    type ipv4_addr\n{}  }}\n\
         \x20 chain cluster-ips-check {{\n    ip daddr @cluster-ips reject\n    \
         ip daddr {} drop\n  }}\n",
        elements(&ips),
        spec.service_cidr
    );
    t += "  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n    \
          fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n  }\n\
          \x20 chain service-endpoints-check {\n    ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n    \
          fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports\n    \
          jump cluster-ips-check\n  }\n\
          \x20 chain nat-prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }\n\
          \x20 chain nat-output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n\
          \x20 chain nat-postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    jump masquerading\n  }\n";
    for (name, hook) in [
        ("filter-input", "input"),
        ("filter-forward", "forward"),
        ("filter-output", "output"),
    ] {
        let _ = writeln!(
            t,
            "  chain {name} {{\n    type filter hook {hook} priority filter - 10; policy accept;\n    \
             ct state new jump service-endpoints-check\n  }}"
        );
    }
    let marker = format!(
        "flatnet-proxy {:016x}",
        crate::stable_hash::fnv1a(t.bytes())
    );
    format!(
        "table {TABLE} {{}}\ndelete table {TABLE}\ntable {TABLE} {{\n  comment \"{marker}\"\n{t}}}\n"
    )
}

/// A port's part of chain names: its name, else its number.
fn port_id(p: &super::SvcPort) -> String {
    if p.name.is_empty() {
        p.port.to_string()
    } else {
        p.name.clone()
    }
}

/// What was last written to each node, by node name and the identity of its namespace (a
/// node removed and added again is a new namespace, with no table).
#[derive(Default)]
pub struct Written(HashMap<(String, u64), u64>);

impl Written {
    /// Writes each node's table that differs from what was last written there, the nodes'
    /// `nft -f` at once (one transaction each), so that a change reaches every node in about
    /// the time of one. Returns the failures, by node.
    pub fn sync(&mut self, spec: &ClusterSpec, services: &[(Svc, Vec<Endpoint>)]) -> Vec<String> {
        let mut errors = Vec::new();
        let mut seen = BTreeMap::new();
        let mut running = Vec::new();
        for node in &spec.nodes {
            let path = crate::netns::named_path(&node.netns);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let key = (
                node.name.clone(),
                std::os::unix::fs::MetadataExt::ino(&meta),
            );
            let script = ruleset(spec, node, services);
            let hash = crate::stable_hash::fnv1a(script.bytes());
            seen.insert(key.clone(), ());
            if self.0.get(&key) == Some(&hash) {
                continue;
            }
            match NetNs::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|ns| nft_start(&ns, &script))
            {
                Ok(child) => running.push((key, hash, child)),
                Err(e) => errors.push(format!("{}: {e}", node.name)),
            }
        }
        for (key, hash, child) in running {
            match nft_wait(child) {
                Ok(()) => {
                    self.0.insert(key, hash);
                }
                Err(e) => errors.push(format!("{}: {e}", key.0)),
            }
        }
        self.0.retain(|k, _| seen.contains_key(k));
        errors
    }
}

/// Starts `nft -f -` in `ns` with `script` on its stdin.
fn nft_start(ns: &NetNs, script: &str) -> std::result::Result<std::process::Child, String> {
    let mut child = crate::netns::command(std::path::Path::new("nft"), &[], Some(ns))
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run nft (package nftables): {e}"))?;
    if let Some(mut pipe) = child.stdin.take() {
        // A failed write is nft gone; its status says why. Dropping the pipe ends its input.
        let _ = pipe.write_all(script.as_bytes());
    }
    Ok(child)
}

/// Waits for an `nft -f` of [`nft_start`].
fn nft_wait(child: std::process::Child) -> std::result::Result<(), String> {
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft -f: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
