//! Egress masquerade: traffic from this node's pods to anything outside the cluster leaves
//! with the node's address, so that the outside world can answer. Pod-to-pod and
//! pod-to-node traffic is never rewritten: those destinations are exempted first.
//!
//! Only the rules: they go into flatnet's table with the anti-spoofing chain (see
//! [`super::nft`]).

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// The set of node addresses and the `egress` chain for a node whose pods are `pod_cidr`, in a
/// cluster of `cluster_cidr`, whose nodes have the addresses `node_ips`.
pub fn rules(pod_cidr: Ipv4Network, cluster_cidr: Ipv4Network, node_ips: &[Ipv4Addr]) -> String {
    let mut ips: Vec<String> = node_ips.iter().map(ToString::to_string).collect();
    ips.sort();
    ips.dedup();
    let elements = if ips.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", ips.join(", "))
    };
    format!(
        "  set nodes {{ type ipv4_addr;{elements} }}\n\
         \x20 chain egress {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   ip saddr {pod_cidr} ip daddr {cluster_cidr} return\n\
         \x20   ip saddr {pod_cidr} ip daddr @nodes return\n\
         \x20   ip saddr {pod_cidr} masquerade\n\
         \x20 }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exempts_the_cluster_and_the_nodes_then_masquerades() {
        let s = rules(
            "10.244.1.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
            &["172.18.0.3".parse().unwrap(), "172.18.0.2".parse().unwrap()],
        );
        let return_cluster = s.find("ip daddr 10.244.0.0/16 return").unwrap();
        let return_nodes = s.find("ip daddr @nodes return").unwrap();
        let masq = s.find("ip saddr 10.244.1.0/24 masquerade").unwrap();
        assert!(return_cluster < masq && return_nodes < masq, "{s}");
        assert!(s.contains("elements = { 172.18.0.2, 172.18.0.3 }"), "{s}");
    }

    #[test]
    fn an_empty_node_set_has_no_elements_clause() {
        let s = rules(
            "10.244.1.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
            &[],
        );
        assert!(!s.contains("elements"), "{s}");
    }
}
