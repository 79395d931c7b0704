//! An emulated cluster's pod-to-pod paths built again by hand with `ip`: the same hops (pod —
//! veth — node — veth — underlay bridge — veth — node — veth — pod), the same addresses,
//! host-veth names, routes and sysctls, and nothing else. Because the names and addresses are
//! the cluster's, a node's nftables tables copied into its mirror match exactly what they match
//! in the cluster, so the two can be compared with and without the same tables.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use ipnetwork::Ipv4Network;

use flatnet::emulator::state::{ClusterSpec, NodeSpec, PodRecord};
use flatnet::emulator::trace::host_veth;

use crate::datapath::{nft, sysctls};
use crate::util;

/// The namespaces of a mirror, named `<tag>-<label>-…`: the underlay, and per node its own and
/// one per pod.
pub(crate) struct Mirror {
    pub(crate) underlay: String,
    pub(crate) nodes: Vec<String>,
    /// `(pod name, its mirror's namespace)`.
    pub(crate) pods: Vec<(String, String)>,
}

impl Mirror {
    /// The mirror namespace of the cluster's pod `name`.
    pub(crate) fn pod(&self, name: &str) -> Result<&str> {
        self.pods
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ns)| ns.as_str())
            .with_context(|| format!("no pod {name} in the mirror"))
    }

    /// Copies each of `tables` (`family name`) from the cluster's nodes into their mirrors,
    /// replacing what the mirror had; a table the node does not have is removed.
    pub(crate) fn copy_tables(&self, spec: &[NodeSpec], tables: &[&str]) -> Result<()> {
        for (node, mirror) in spec.iter().zip(&self.nodes) {
            for table in tables {
                let words: Vec<&str> = table.split(' ').collect();
                let listed = nft(
                    &node.netns,
                    &[&["list", "table"], &words[..]].concat(),
                    None,
                );
                let _ = nft(mirror, &[&["delete", "table"], &words[..]].concat(), None);
                if let Ok(text) = listed {
                    nft(mirror, &["-f", "-"], Some(&text))
                        .with_context(|| format!("copy table {table} from {}", node.name))?;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn namespaces(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.pods.iter().map(|(_, ns)| ns.as_str()).collect();
        all.extend(self.nodes.iter().map(String::as_str));
        all.push(&self.underlay);
        all
    }
}

/// Builds the mirror of `nodes` of `spec` with the IPv4 pods among `pods` on them.
pub(crate) fn build(
    tag: &str,
    label: &str,
    spec: &ClusterSpec,
    nodes: &[NodeSpec],
    pods: &[PodRecord],
) -> Result<Mirror> {
    let underlay = format!("{tag}-{label}-u");
    util::create_ns(&underlay)?;
    util::ip(&["-n", &underlay, "link", "set", "lo", "up"])?;
    util::ip(&["-n", &underlay, "link", "add", "br0", "type", "bridge"])?;
    util::ip(&["-n", &underlay, "link", "set", "br0", "up"])?;
    let mut m = Mirror {
        underlay: underlay.clone(),
        nodes: Vec::new(),
        pods: Vec::new(),
    };
    let prefix = spec.underlay.prefix();
    for (i, node) in nodes.iter().enumerate() {
        let ns = format!("{tag}-{label}-n{i}");
        util::create_ns(&ns)?;
        m.nodes.push(ns.clone());
        util::ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        sysctls(&ns, true)?;
        util::ip(&[
            "-n", &underlay, "link", "add", &node.name, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ])?;
        util::ip(&["-n", &underlay, "link", "set", &node.name, "master", "br0"])?;
        util::ip(&["-n", &underlay, "link", "set", &node.name, "up"])?;
        let addr = format!("{}/{prefix}", node.node_ip);
        util::ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
        util::ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        let cidr = node.pod_cidr.context("an IPv4 pod CIDR")?;
        let gateway = nth(cidr, 1);
        for p in pods.iter().filter(|p| p.node == node.name) {
            let (Some(ip), Some(host)) = (p.ipv4(), host_veth(p)) else {
                continue;
            };
            let pod_ns = format!("{tag}-{label}-n{i}-{}", p.name);
            util::create_ns(&pod_ns)?;
            m.pods.push((p.name.clone(), pod_ns.clone()));
            wire_pod(&ns, &pod_ns, host, ip, gateway)?;
        }
        // Every other node's pod CIDR via that node, as the agent routes them (host-gw).
        for other in nodes.iter().filter(|o| o.name != node.name) {
            let Some(c) = other.pod_cidr else { continue };
            util::ip(&[
                "-n",
                &ns,
                "route",
                "add",
                &c.to_string(),
                "via",
                &other.node_ip.to_string(),
                "dev",
                "eth0",
            ])?;
        }
    }
    Ok(m)
}

/// A pod as flatnet-cni wires it: a /32 behind the node's gateway address, which sits on the
/// host veth too, a host route to the pod.
fn wire_pod(node: &str, pod: &str, host: &str, ip: Ipv4Addr, gateway: Ipv4Addr) -> Result<()> {
    let gw = gateway.to_string();
    util::ip(&["-n", pod, "link", "set", "lo", "up"])?;
    util::ip(&[
        "-n", node, "link", "add", host, "mtu", "1500", "type", "veth", "peer", "name", "eth0",
        "mtu", "1500", "netns", pod,
    ])?;
    util::ip(&["-n", node, "addr", "add", &format!("{gw}/32"), "dev", host])?;
    util::ip(&["-n", node, "link", "set", host, "up"])?;
    util::ip(&["-n", pod, "addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
    util::ip(&["-n", pod, "link", "set", "eth0", "up"])?;
    util::ip(&[
        "-n", pod, "route", "add", &gw, "dev", "eth0", "scope", "link",
    ])?;
    util::ip(&[
        "-n", pod, "route", "add", "default", "via", &gw, "dev", "eth0",
    ])?;
    util::ip(&["-n", node, "route", "add", &format!("{ip}/32"), "dev", host])
}

fn nth(net: Ipv4Network, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(n))
}
