//! NetworkPolicy to nftables, for one node's pods: a chain on the forward hook that lets
//! established and related packets through, then sends a new connection's first packet, by
//! its source address, to the egress chain of the local pod that sent it (if that pod is
//! isolated for egress), and by its destination address to the ingress chain of the local pod
//! it is for (if isolated for ingress). Each pod chain lists what its policies admit (egress:
//! `return`, so the ingress check still follows; ingress: `accept`) and ends in a drop.
//!
//! Pods are keyed by address, not by host veth: the anti-spoofing chain has already dropped
//! any packet from a host veth whose source is not that pod's own address, and a pod's
//! address is routed to its veth alone, so on the forward path the address names the veth.
//! One rule set serves both families (`ip` and `ip6` matches side by side).
//!
//! Traffic between a pod and its own node never crosses the forward hook (it is input or
//! output), so it is never filtered: kubelet's probes and the pod gateway always reach the
//! pod. The pod chains also admit the node's addresses first, for a packet forwarded with one
//! of them as source.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;

use super::model::{Peer, PodInfo, Policy, Port, PortRef, Rule, View};

/// nftables' longest rule comment.
const COMMENT_MAX: usize = 127;

/// The chains for the pods of `node`; empty when no pod of the node is isolated, so a cluster
/// without policies has the table it had before policies existed. `node_addrs`: the node's
/// IPs and its pods' gateway addresses.
pub fn rules(view: &View, node: &str, node_addrs: &[IpAddr]) -> String {
    let local: Vec<&PodInfo> = view
        .pods
        .iter()
        .filter(|p| p.node == node && !p.ips.is_empty())
        .collect();
    let mut chains = String::new();
    // (family keyword, address, chain) for the verdict maps.
    let mut egress_map: Vec<(IpAddr, String)> = Vec::new();
    let mut ingress_map: Vec<(IpAddr, String)> = Vec::new();
    for (i, pod) in local.iter().enumerate() {
        if view.isolated(pod, false) {
            let name = format!("egress_{i}");
            chains += &chain(&name, pod, &egress_lines(view, pod), "return", view, false);
            egress_map.extend(pod.ips.iter().map(|ip| (*ip, name.clone())));
        }
        if view.isolated(pod, true) {
            let name = format!("ingress_{i}");
            let mut lines = node_lines(node_addrs);
            lines.extend(ingress_lines(view, pod));
            chains += &chain(&name, pod, &lines, "accept", view, true);
            ingress_map.extend(pod.ips.iter().map(|ip| (*ip, name.clone())));
        }
    }
    if egress_map.is_empty() && ingress_map.is_empty() {
        return String::new();
    }
    let mut hook = String::from(
        "  chain netpol {\n\
         \x20   type filter hook forward priority filter; policy accept;\n\
         \x20   ct state established,related accept\n",
    );
    for (map, dir) in [(&egress_map, "saddr"), (&ingress_map, "daddr")] {
        for (kw, v4) in [("ip", true), ("ip6", false)] {
            let elems: Vec<String> = map
                .iter()
                .filter(|(ip, _)| ip.is_ipv4() == v4)
                .map(|(ip, c)| format!("{ip} : jump {c}"))
                .collect();
            if !elems.is_empty() {
                let _ = writeln!(hook, "    {kw} {dir} vmap {{ {} }}", elems.join(", "));
            }
        }
    }
    hook += "  }\n";
    hook + &chains
}

fn chain(
    name: &str,
    pod: &PodInfo,
    lines: &[String],
    verdict: &str,
    view: &View,
    ingress: bool,
) -> String {
    let mut s = format!("  chain {name} {{\n");
    let mut seen = std::collections::BTreeSet::new();
    for l in lines {
        if seen.insert(l.as_str()) {
            let _ = writeln!(s, "    {l}{verdict}");
        }
    }
    let by: Vec<String> = view.rules_for(pod, ingress).map(|(p, _)| p.key()).collect();
    let mut comment = format!(
        "{} {} isolated by {}",
        pod.key(),
        if ingress { "ingress" } else { "egress" },
        by.join(" ")
    );
    if comment.len() > COMMENT_MAX {
        let mut cut = COMMENT_MAX - 3;
        while !comment.is_char_boundary(cut) {
            cut -= 1;
        }
        comment.truncate(cut);
        comment += "...";
    }
    let _ = writeln!(
        s,
        "    counter drop comment \"{}\"",
        comment.replace('"', "'")
    );
    s + "  }\n"
}

/// The node's own addresses, always admitted in.
fn node_lines(node_addrs: &[IpAddr]) -> Vec<String> {
    family_sets(node_addrs.iter().copied())
        .into_iter()
        .map(|(kw, set)| format!("{kw} saddr {set} "))
        .collect()
}

/// `{ a, b }` per family that has addresses: ("ip", …), ("ip6", …).
fn family_sets(addrs: impl Iterator<Item = IpAddr>) -> Vec<(&'static str, String)> {
    let mut v4: Vec<IpAddr> = Vec::new();
    let mut v6: Vec<IpAddr> = Vec::new();
    for a in addrs {
        if a.is_ipv4() {
            v4.push(a)
        } else {
            v6.push(a)
        }
    }
    let mut out = Vec::new();
    for (kw, mut list) in [("ip", v4), ("ip6", v6)] {
        list.sort();
        list.dedup();
        if !list.is_empty() {
            let l: Vec<String> = list.iter().map(ToString::to_string).collect();
            out.push((kw, format!("{{ {} }}", l.join(", "))));
        }
    }
    out
}

/// The address matches of a rule's peers in direction `dir` (saddr, daddr): one string per
/// peer and family, each ending in a space; `[""]` for a rule that admits everyone. A peer
/// naming no pod of a family gives nothing for it, so it admits nothing.
fn peer_matches(view: &View, policy: &Policy, rule: &Rule, dir: &str) -> Vec<String> {
    if rule.peers.is_empty() {
        return vec![String::new()];
    }
    let mut out = Vec::new();
    for peer in &rule.peers {
        match peer {
            Peer::Pods { .. } => {
                let ips = view
                    .peer_pods(&policy.namespace, peer)
                    .flat_map(|p| p.ips.iter().copied());
                for (kw, set) in family_sets(ips) {
                    out.push(format!("{kw} {dir} {set} "));
                }
            }
            Peer::Block { cidr, except } => {
                let kw = if cidr.is_ipv4() { "ip" } else { "ip6" };
                let mut m = format!("{kw} {dir} {cidr} ");
                if !except.is_empty() {
                    let e: Vec<String> = except.iter().map(ToString::to_string).collect();
                    let _ = write!(m, "{kw} {dir} != {{ {} }} ", e.join(", "));
                }
                out.push(m);
            }
        }
    }
    out
}

/// `tcp dport 80 `, `udp dport 80-90 `, `meta l4proto sctp `, for a port whose range on the
/// destination is `range`.
fn port_match(port: &Port, range: (u16, u16)) -> String {
    let p = port.protocol.nft();
    match (port.port.is_some(), range) {
        (false, _) => format!("meta l4proto {p} "),
        (true, (a, b)) if a == b => format!("{p} dport {a} "),
        (true, (a, b)) => format!("{p} dport {a}-{b} "),
    }
}

/// What admits traffic into `pod`: named ports resolve against `pod` itself.
fn ingress_lines(view: &View, pod: &PodInfo) -> Vec<String> {
    let mut lines = Vec::new();
    for (policy, rules) in view.rules_for(pod, true) {
        for rule in rules {
            let ports: Vec<String> = if rule.ports.is_empty() {
                vec![String::new()]
            } else {
                rule.ports
                    .iter()
                    .filter_map(|p| p.range_on(Some(pod)).map(|r| port_match(p, r)))
                    .collect()
            };
            for src in peer_matches(view, policy, rule, "saddr") {
                for port in &ports {
                    lines.push(format!("{src}{port}"));
                }
            }
        }
    }
    lines
}

/// What admits traffic out of `pod`. A named port resolves per destination pod, so such a
/// port becomes one line per port number, matching the pods (within the rule's peers) on
/// which the name has that number.
fn egress_lines(view: &View, pod: &PodInfo) -> Vec<String> {
    let mut lines = Vec::new();
    for (policy, rules) in view.rules_for(pod, false) {
        for rule in rules {
            let ports: Vec<&Port> = rule.ports.iter().collect();
            let numbered: Vec<String> = if ports.is_empty() {
                vec![String::new()]
            } else {
                ports
                    .iter()
                    .filter(|p| !matches!(p.port, Some(PortRef::Name(_))))
                    .filter_map(|p| p.range_on(None).map(|r| port_match(p, r)))
                    .collect()
            };
            for dst in peer_matches(view, policy, rule, "daddr") {
                for port in &numbered {
                    lines.push(format!("{dst}{port}"));
                }
            }
            for p in ports {
                let Some(PortRef::Name(_)) = &p.port else {
                    continue;
                };
                let mut by_number: BTreeMap<u16, Vec<IpAddr>> = BTreeMap::new();
                for dst in view
                    .pods
                    .iter()
                    .filter(|d| admitted_dst(view, policy, rule, d))
                {
                    if let Some((n, _)) = p.range_on(Some(dst)) {
                        by_number
                            .entry(n)
                            .or_default()
                            .extend(dst.ips.iter().copied());
                    }
                }
                for (n, ips) in by_number {
                    for (kw, set) in family_sets(ips.into_iter()) {
                        lines.push(format!("{kw} daddr {set} {}", port_match(p, (n, n))));
                    }
                }
            }
        }
    }
    lines
}

/// Whether `dst` is among an egress rule's destinations (by its pod identity or, for an
/// ipBlock, by any of its addresses).
fn admitted_dst(view: &View, policy: &Policy, rule: &Rule, dst: &PodInfo) -> bool {
    rule.peers.is_empty()
        || rule.peers.iter().any(|peer| match peer {
            Peer::Pods { .. } => view
                .peer_pods(&policy.namespace, peer)
                .any(|p| std::ptr::eq(p, dst)),
            Peer::Block { cidr, except } => dst
                .ips
                .iter()
                .any(|a| cidr.contains(*a) && !except.iter().any(|e| e.contains(*a))),
        })
}

#[cfg(test)]
mod tests {
    use super::super::model::{NamedPort, NamespaceInfo, Protocol, Verdict};
    use super::super::{Judge, Objects, Record};
    use super::*;
    use crate::agent::policy::model::End;

    const NODE: &str = "node-1";

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)], ip: &str, node: &str) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ips: vec![ip.parse().unwrap()],
            node: node.into(),
            ports: vec![
                NamedPort {
                    name: "serve-80-tcp".into(),
                    port: 80,
                    protocol: Protocol::Tcp,
                },
                NamedPort {
                    name: "serve-81-udp".into(),
                    port: 81,
                    protocol: Protocol::Udp,
                },
            ],
        }
    }

    /// Namespaces x and y (y labelled team=y); pods x/a (local), x/b, y/a, y/b (on node-2).
    fn cluster(policies: &str) -> View {
        let ns = |n: &str, extra: &[(&str, &str)]| NamespaceInfo {
            name: n.into(),
            labels: std::iter::once(("kubernetes.io/metadata.name".to_string(), n.to_string()))
                .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
                .collect(),
        };
        let mut pods = vec![
            pod("x", "a", &[("pod", "a")], "10.244.1.2", NODE),
            pod("x", "b", &[("pod", "b")], "10.244.2.2", "node-2"),
            pod("y", "a", &[("pod", "a")], "10.244.2.3", "node-2"),
            pod("y", "b", &[("pod", "b")], "10.244.2.4", "node-2"),
        ];
        // y/b serves its "serve-80-tcp" on 8080.
        pods[3].ports[0].port = 8080;
        let objects = Objects {
            pods: pods
                .into_iter()
                .map(|p| Record {
                    key: p.key(),
                    value: Ok(p),
                })
                .collect(),
            namespaces: vec![ns("x", &[]), ns("y", &[("team", "y")])]
                .into_iter()
                .map(|n| Record {
                    key: n.name.clone(),
                    value: Ok(n),
                })
                .collect(),
            policies: serde_norway::Deserializer::from_str(policies)
                .map(|d| serde::Deserialize::deserialize(d).unwrap())
                .filter(|v: &serde_json::Value| !v.is_null())
                .map(|v| Record {
                    key: v["metadata"]["name"].as_str().unwrap().into(),
                    value: Ok(serde_json::from_value(v).unwrap()),
                })
                .collect(),
        };
        let (view, refused) = Judge::default().judge(&objects);
        assert!(refused.is_empty(), "{refused:?}");
        view
    }

    fn find<'a>(v: &'a View, key: &str) -> &'a PodInfo {
        v.pods.iter().find(|p| p.key() == key).unwrap()
    }

    fn node_addrs() -> Vec<IpAddr> {
        vec!["172.18.0.2".parse().unwrap(), "10.244.1.1".parse().unwrap()]
    }

    /// Whether a new connection from pod `src` to pod `dst` on `proto`/`port` is allowed.
    fn allowed(v: &View, src: &str, dst: &str, proto: Protocol, port: u16) -> bool {
        let (s, d) = (find(v, src), find(v, dst));
        let Verdict { allowed, .. } = v.verdict(
            End::Pod(s),
            s.ips[0],
            End::Pod(d),
            d.ips[0],
            proto,
            port,
            &node_addrs(),
        );
        allowed
    }

    fn tcp(v: &View, src: &str, dst: &str, port: u16) -> bool {
        allowed(v, src, dst, Protocol::Tcp, port)
    }

    fn compiled(v: &View) -> String {
        rules(v, NODE, &node_addrs())
    }

    /// `nft --check` on the table with `body`: the kernel's parser, nothing changed.
    fn nft_accepts(body: &str) {
        use std::io::Write;
        let script = crate::agent::nft::Ruleset::new(body).script().to_string();
        let mut child = std::process::Command::new("nft")
            .args(["--check", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nft (package nftables)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    const DENY_ALL_INGRESS: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
";

    #[test]
    fn no_policy_no_chain() {
        let v = cluster("");
        assert_eq!(compiled(&v), "");
        assert!(tcp(&v, "y/a", "x/a", 80));
    }

    #[test]
    fn policy_types_default_to_ingress_and_to_egress_only_with_egress_rules() {
        let v = cluster(DENY_ALL_INGRESS);
        assert!(!tcp(&v, "y/a", "x/a", 80));
        assert!(tcp(&v, "x/a", "y/a", 80), "egress stays open");
        let s = compiled(&v);
        assert!(
            s.contains("ip daddr vmap { 10.244.1.2 : jump ingress_0 }"),
            "{s}"
        );
        assert!(!s.contains("saddr vmap"), "{s}");
        nft_accepts(&s);

        // Egress rules present, no policyTypes: both directions isolated.
        let v = cluster(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: [{ports: [{port: 53, protocol: UDP}]}]
",
        );
        assert!(!tcp(&v, "y/a", "x/a", 80));
        assert!(!tcp(&v, "x/a", "y/a", 80));
        assert!(allowed(&v, "x/a", "y/a", Protocol::Udp, 53));
        let s = compiled(&v);
        assert!(
            s.contains("ip saddr vmap { 10.244.1.2 : jump egress_0 }"),
            "{s}"
        );
        assert!(s.contains("    udp dport 53 return\n"), "{s}");
        nft_accepts(&s);

        // policyTypes [Egress] with ingress rules: ingress is not isolated (an ingress-only
        // policy's egress rules are ignored, and the other way round).
        let v = cluster(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: [{}]
  egress: []
",
        );
        assert!(tcp(&v, "y/a", "x/a", 80));
        assert!(tcp(&v, "x/a", "y/a", 80));
        assert!(!compiled(&v).contains("egress_"));
    }

    #[test]
    fn an_empty_rule_list_isolates_and_an_empty_rule_admits_all() {
        let v = cluster(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress], ingress: [{}], egress: []}
",
        );
        assert!(tcp(&v, "y/a", "x/a", 1234));
        assert!(!tcp(&v, "x/a", "y/a", 80));
        let s = compiled(&v);
        // The ingress chain: the node, then everyone.
        assert!(
            s.contains("ip saddr { 10.244.1.1, 172.18.0.2 } accept\n    accept\n"),
            "{s}"
        );
        assert!(s.contains("  chain egress_0 {\n    counter drop"), "{s}");
        nft_accepts(&s);
    }

    #[test]
    fn selectors_in_one_peer_are_anded_and_peers_are_ored() {
        let and = cluster(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: y}}
      podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}
",
        );
        assert!(tcp(&and, "y/b", "x/a", 80));
        assert!(!tcp(&and, "y/a", "x/a", 80));
        assert!(!tcp(&and, "x/b", "x/a", 80));
        let s = compiled(&and);
        assert!(s.contains("ip saddr { 10.244.2.4 } accept"), "{s}");
        nft_accepts(&s);

        let or = cluster(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: y}}
    - podSelector: {matchLabels: {pod: b}}
",
        );
        assert!(tcp(&or, "y/b", "x/a", 80));
        assert!(tcp(&or, "y/a", "x/a", 80));
        assert!(tcp(&or, "x/b", "x/a", 80));
        let s = compiled(&or);
        assert!(
            s.contains("ip saddr { 10.244.2.3, 10.244.2.4 } accept"),
            "{s}"
        );
        assert!(s.contains("ip saddr { 10.244.2.2 } accept"), "{s}");
    }

    #[test]
    fn ip_blocks_honour_except() {
        let v = cluster(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.244.2.0/24, except: [10.244.2.4/32]}}]}]
",
        );
        assert!(tcp(&v, "y/a", "x/a", 80));
        assert!(!tcp(&v, "y/b", "x/a", 80));
        let s = compiled(&v);
        assert!(
            s.contains("ip saddr 10.244.2.0/24 ip saddr != { 10.244.2.4/32 } accept"),
            "{s}"
        );
        nft_accepts(&s);
    }

    #[test]
    fn named_ports_resolve_per_destination_pod() {
        let v = cluster(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress: [{ports: [{port: serve-80-tcp}, {port: serve-81-udp, protocol: UDP}]}]
  egress: [{ports: [{port: serve-80-tcp}]}]
",
        );
        assert!(tcp(&v, "y/a", "x/a", 80));
        assert!(!tcp(&v, "y/a", "x/a", 81));
        assert!(allowed(&v, "y/a", "x/a", Protocol::Udp, 81));
        // Out: 80 on the pods whose serve-80-tcp is 80, 8080 on y/b.
        assert!(tcp(&v, "x/a", "y/a", 80));
        assert!(!tcp(&v, "x/a", "y/a", 8080));
        assert!(tcp(&v, "x/a", "y/b", 8080));
        assert!(!tcp(&v, "x/a", "y/b", 80));
        let s = compiled(&v);
        assert!(
            s.contains("    tcp dport 80 accept\n    udp dport 81 accept\n"),
            "{s}"
        );
        assert!(
            s.contains("ip daddr { 10.244.1.2, 10.244.2.2, 10.244.2.3 } tcp dport 80 return"),
            "{s}"
        );
        assert!(
            s.contains("ip daddr { 10.244.2.4 } tcp dport 8080 return"),
            "{s}"
        );
        nft_accepts(&s);
    }

    #[test]
    fn end_port_ranges_and_protocols() {
        let v = cluster(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 80, endPort: 82}, {protocol: UDP}, {protocol: SCTP, port: 9000}]
",
        );
        assert!(tcp(&v, "y/a", "x/a", 81));
        assert!(!tcp(&v, "y/a", "x/a", 83));
        assert!(allowed(&v, "y/a", "x/a", Protocol::Udp, 5353));
        assert!(allowed(&v, "y/a", "x/a", Protocol::Sctp, 9000));
        assert!(!allowed(&v, "y/a", "x/a", Protocol::Sctp, 9001));
        let s = compiled(&v);
        for want in [
            "tcp dport 80-82 accept",
            "meta l4proto udp accept",
            "sctp dport 9000 accept",
        ] {
            assert!(s.contains(want), "{want} not in {s}");
        }
        nft_accepts(&s);
    }

    #[test]
    fn policies_selecting_one_pod_are_a_union() {
        let v = cluster(&format!(
            "{DENY_ALL_INGRESS}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: from-b, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: from-y, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{team: y}}}}}}], ports: [{{port: 81}}]}}]
"
        ));
        assert!(tcp(&v, "x/b", "x/a", 80));
        assert!(tcp(&v, "y/a", "x/a", 81));
        assert!(!tcp(&v, "y/a", "x/a", 80));
        let a = find(&v, "x/a");
        let verdict = v.verdict(
            End::Pod(find(&v, "y/a")),
            "10.244.2.3".parse().unwrap(),
            End::Pod(a),
            a.ips[0],
            Protocol::Tcp,
            80,
            &node_addrs(),
        );
        assert_eq!(verdict.isolated_by, ["x/deny", "x/from-b", "x/from-y"]);
        let s = compiled(&v);
        assert!(s.contains("isolated by x/deny x/from-b x/from-y"), "{s}");
        nft_accepts(&s);
    }

    #[test]
    fn the_node_and_the_pod_gateway_always_get_in() {
        let v = cluster(DENY_ALL_INGRESS);
        let a = find(&v, "x/a");
        for node in ["172.18.0.2", "10.244.1.1"] {
            let ip: IpAddr = node.parse().unwrap();
            let verdict = v.verdict(
                End::Addr(ip),
                ip,
                End::Pod(a),
                a.ips[0],
                Protocol::Tcp,
                80,
                &node_addrs(),
            );
            assert!(verdict.allowed, "{node}");
        }
        let other: IpAddr = "172.18.0.3".parse().unwrap();
        let v2 = v.verdict(
            End::Addr(other),
            other,
            End::Pod(a),
            a.ips[0],
            Protocol::Tcp,
            80,
            &node_addrs(),
        );
        assert!(!v2.allowed, "another node is not this node");
        let s = compiled(&v);
        let chain = &s[s.find("chain ingress_0").unwrap()..];
        assert!(
            chain
                .starts_with("chain ingress_0 {\n    ip saddr { 10.244.1.1, 172.18.0.2 } accept\n"),
            "{s}"
        );
        // Established and related pass before anything is judged.
        let hook = &s[..s.find("vmap").unwrap()];
        assert!(hook.contains("ct state established,related accept"), "{s}");
    }

    #[test]
    fn both_families_are_written() {
        let mut v = cluster(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {}}, {ipBlock: {cidr: 'fd00::/8', except: ['fd00:1::/32']}}]}]
  egress: [{to: [{namespaceSelector: {}}]}]
",
        );
        for p in &mut v.pods {
            let last = p.ips[0].to_string().rsplit('.').next().unwrap().to_string();
            let third = p.ips[0].to_string().split('.').nth(2).unwrap().to_string();
            p.ips
                .push(format!("fd00:10:244:{third}::{last}").parse().unwrap());
        }
        let mut addrs = node_addrs();
        addrs.push("fd00:10:244:1::1".parse().unwrap());
        let s = rules(&v, NODE, &addrs);
        for want in [
            "ip6 saddr vmap { fd00:10:244:1::2 : jump egress_0 }",
            "ip6 daddr vmap { fd00:10:244:1::2 : jump ingress_0 }",
            "ip6 saddr { fd00:10:244:1::1 } accept",
            "ip6 saddr { fd00:10:244:1::2, fd00:10:244:2::2 } accept",
            "ip6 saddr fd00::/8 ip6 saddr != { fd00:1::/32 } accept",
            "ip6 daddr { fd00:10:244:1::2, fd00:10:244:2::2, fd00:10:244:2::3, fd00:10:244:2::4 } return",
        ] {
            assert!(s.contains(want), "{want} not in {s}");
        }
        nft_accepts(&s);
    }

    #[test]
    fn a_bad_record_is_refused_and_its_last_good_version_stays() {
        let good: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_str(
            r#"{"metadata":{"name":"p","namespace":"x"},"spec":{"podSelector":{}}}"#,
        )
        .unwrap();
        let mut bad = good.clone();
        bad.spec.as_mut().unwrap().policy_types = Some(vec!["Sideways".into()]);
        let objs = |p| Objects {
            policies: vec![Record {
                key: "x_p".into(),
                value: Ok(p),
            }],
            ..Objects::default()
        };
        let mut judge = Judge::default();
        let (v, refused) = judge.judge(&objs(good));
        assert!(refused.is_empty());
        assert_eq!(v.policies.len(), 1);
        let (v, refused) = judge.judge(&objs(bad.clone()));
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].reason.contains("policyTypes"), "{refused:?}");
        assert_eq!(v.policies.len(), 1, "the last good version stays");
        let (v, _) = judge.judge(&Objects::default());
        assert!(v.policies.is_empty(), "a record gone is gone");
        let (v, refused) = Judge::default().judge(&objs(bad));
        assert!(v.policies.is_empty() && refused.len() == 1);
    }
}
