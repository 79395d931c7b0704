//! VXLAN has no authentication, so flatnet's table guards both ends of it: the tunnel port
//! takes packets only from the node IPs of tunnelled peers, and a packet that comes out of the
//! tunnel must carry a source inside the pod CIDR of the peer whose VTEP MAC sent it (the
//! inner Ethernet source, which a peer's kernel sets from its device's MAC).

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::netlink::mac_string;

/// One tunnelled pod CIDR, as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub remote: IpAddr,
    pub mac: [u8; 6],
    pub cidr: IpNetwork,
}

/// The counters the rules keep, as named in the table.
pub const COUNTERS: [(&str, &str); 2] = [
    (
        "tunnel_foreign",
        "VXLAN packets from an address that is no tunnelled peer's node IP",
    ),
    (
        "tunnel_spoofed",
        "packets out of the tunnel whose source is outside the sending peer's pod CIDR",
    ),
];

/// The sets, counters and chains for `peers` on UDP `port`; nothing when no peer is
/// tunnelled (the port then belongs to no flatnet device, and flatnet keeps out of it).
pub fn rules(port: u16, peers: &[Peer]) -> String {
    if peers.is_empty() {
        return String::new();
    }
    let mut s: String = COUNTERS
        .iter()
        .map(|(name, _)| format!("  counter {name} {{}}\n"))
        .collect();
    for (set, kind, v4) in [
        ("tunnel_peers4", "ipv4_addr", true),
        ("tunnel_peers6", "ipv6_addr", false),
    ] {
        let mut ips: Vec<String> = peers
            .iter()
            .filter(|p| p.remote.is_ipv4() == v4)
            .map(|p| p.remote.to_string())
            .collect();
        ips.sort();
        ips.dedup();
        let elements = if ips.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", ips.join(", "))
        };
        s += &format!("  set {set} {{ type {kind};{elements} }}\n");
    }
    s += &format!(
        "  chain tunnel_port {{\n\
         \x20   type filter hook input priority filter; policy accept;\n\
         \x20   meta nfproto ipv4 udp dport {port} ip saddr != @tunnel_peers4 counter name tunnel_foreign drop\n\
         \x20   meta nfproto ipv6 udp dport {port} ip6 saddr != @tunnel_peers6 counter name tunnel_foreign drop\n\
         \x20 }}\n"
    );
    s += "  chain tunnel_inner {\n\
          \x20   type filter hook prerouting priority raw; policy accept;\n\
          \x20   iifname != { \"flatnet.4\", \"flatnet.6\" } accept\n";
    for p in peers {
        let ip = if p.cidr.is_ipv4() { "ip" } else { "ip6" };
        s += &format!(
            "    ether saddr {} {ip} saddr {} accept\n",
            mac_string(p.mac),
            super::super::conflist::network(p.cidr)
        );
    }
    s += "    counter name tunnel_spoofed drop\n  }\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_tunnelled_peer_no_rules() {
        assert_eq!(rules(4789, &[]), "");
    }

    #[test]
    fn each_peer_may_send_its_own_pod_cidrs_only() {
        let peer = |remote: &str, cidr: &str| Peer {
            remote: remote.parse().unwrap(),
            mac: super::super::vtep_mac(remote.parse().unwrap()),
            cidr: cidr.parse().unwrap(),
        };
        let s = rules(
            4789,
            &[
                peer("172.19.0.3", "10.244.2.0/24"),
                peer("172.19.0.3", "fd00:10:244:2::/64"),
                peer("172.19.0.4", "10.244.3.0/24"),
            ],
        );
        for want in [
            "set tunnel_peers4 { type ipv4_addr; elements = { 172.19.0.3, 172.19.0.4 }; }",
            "set tunnel_peers6 { type ipv6_addr; }",
            "udp dport 4789 ip saddr != @tunnel_peers4 counter name tunnel_foreign drop",
            "ether saddr 0e:fa:ac:13:00:03 ip saddr 10.244.2.0/24 accept",
            "ether saddr 0e:fa:ac:13:00:03 ip6 saddr fd00:10:244:2::/64 accept",
            "ether saddr 0e:fa:ac:13:00:04 ip saddr 10.244.3.0/24 accept",
        ] {
            assert!(s.contains(want), "{want} not in\n{s}");
        }
        assert!(
            s.find("ip saddr 10.244.3.0/24 accept").unwrap()
                < s.find("counter name tunnel_spoofed drop").unwrap()
        );
    }
}
