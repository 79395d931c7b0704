//! Egress masquerade: traffic from this node's pods to anything outside the cluster leaves
//! with the node's address, so that the outside world can answer. Pod-to-pod and
//! pod-to-node traffic is never rewritten: those destinations are exempted first.
//!
//! Only the rules: they go into flatnet's table with the anti-spoofing chain (see
//! [`super::nft`]).

use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// The sets of node addresses and the `egress` chain for a node whose pods are `pod_cidrs`, in
/// a cluster of `cluster_cidrs`, whose nodes have the addresses `node_ips`. Each family of
/// `pod_cidrs` gets its three rules; a family the cluster has no CIDR for gets none.
pub fn rules(pod_cidrs: &[IpNetwork], cluster_cidrs: &[IpNetwork], node_ips: &[IpAddr]) -> String {
    let mut sets = String::new();
    let mut chain = String::new();
    for (set, kind, ip, v4) in [
        ("nodes", "ipv4_addr", "ip", true),
        ("nodes6", "ipv6_addr", "ip6", false),
    ] {
        let mut ips: Vec<&IpAddr> = node_ips.iter().filter(|a| a.is_ipv4() == v4).collect();
        ips.sort();
        ips.dedup();
        let elements = if ips.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = ips.iter().map(ToString::to_string).collect();
            format!(" elements = {{ {} }};", list.join(", "))
        };
        let pods = pod_cidrs.iter().find(|c| c.is_ipv4() == v4);
        let cluster = cluster_cidrs.iter().find(|c| c.is_ipv4() == v4);
        let (Some(pods), Some(cluster)) = (pods, cluster) else {
            continue;
        };
        sets += &format!("  set {set} {{ type {kind};{elements} }}\n");
        chain += &format!(
            "    {ip} saddr {pods} {ip} daddr {cluster} return\n\
             \x20   {ip} saddr {pods} {ip} daddr @{set} return\n\
             \x20   {ip} saddr {pods} masquerade\n"
        );
    }
    format!(
        "{sets}  chain egress {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         {chain}  }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNetwork> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn exempts_the_cluster_and_the_nodes_then_masquerades() {
        let s = rules(
            &nets(&["10.244.1.0/24"]),
            &nets(&["10.244.0.0/16"]),
            &["172.18.0.3".parse().unwrap(), "172.18.0.2".parse().unwrap()],
        );
        let return_cluster = s.find("ip daddr 10.244.0.0/16 return").unwrap();
        let return_nodes = s.find("ip daddr @nodes return").unwrap();
        let masq = s.find("ip saddr 10.244.1.0/24 masquerade").unwrap();
        assert!(return_cluster < masq && return_nodes < masq, "{s}");
        assert!(s.contains("elements = { 172.18.0.2, 172.18.0.3 }"), "{s}");
        assert!(!s.contains("ip6"), "{s}");
    }

    #[test]
    fn each_family_is_exempted_and_masqueraded_on_its_own() {
        let s = rules(
            &nets(&["fd00:10:244:1::/64", "10.244.1.0/24"]),
            &nets(&["10.244.0.0/16", "fd00:10:244::/56"]),
            &[
                "172.18.0.2".parse().unwrap(),
                "fc00:f853:ccd:e793::2".parse().unwrap(),
            ],
        );
        for want in [
            "set nodes { type ipv4_addr; elements = { 172.18.0.2 }; }",
            "set nodes6 { type ipv6_addr; elements = { fc00:f853:ccd:e793::2 }; }",
            "ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return",
            "ip6 saddr fd00:10:244:1::/64 ip6 daddr fd00:10:244::/56 return",
            "ip6 saddr fd00:10:244:1::/64 ip6 daddr @nodes6 return",
            "ip6 saddr fd00:10:244:1::/64 masquerade",
        ] {
            assert!(s.contains(want), "{want} not in\n{s}");
        }
    }

    #[test]
    fn an_empty_node_set_has_no_elements_clause() {
        let s = rules(&nets(&["10.244.1.0/24"]), &nets(&["10.244.0.0/16"]), &[]);
        assert!(!s.contains("elements"), "{s}");
    }
}
