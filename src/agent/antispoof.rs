//! Anti-spoofing: a pod sends only with its own address. Without it, a pod could send as
//! another pod, as a node or as anyone, and only a strict `rp_filter` (which flatnet does not
//! own: kind leaves it at 0, systemd ≥ 245 writes 2 onto every new interface) would stop it;
//! IPv6 has no `rp_filter` at all.
//!
//! One chain in flatnet's table, hooked at prerouting before conntrack (priority `raw`, so a
//! spoofed packet never gets a conntrack entry), checks every packet that arrives from a pod's
//! host veth with a reverse route lookup: `fib saddr . iif oif missing` asks whether the node
//! routes the packet's source back out of the interface it came in by. Only the pod's own
//! address is routed there (the plugin's /32 host route, a /128 with dual-stack), so the check
//! needs no per-pod state and holds whatever `rp_filter` says. For IPv6, what neighbour
//! discovery and MLD send toward the node (from `fe80::/10`, or `::` during address
//! autoconfiguration) passes; the kernel never forwards either. Router advertisements from a
//! pod are dropped first: a pod must not configure the node's addresses or routes.

use std::collections::BTreeMap;

use super::nft;
use crate::netns::NetNs;

/// How the plugin names every host veth (`flat` + 11 hex digits): the chain checks packets
/// from these interfaces only.
pub const HOST_VETH_PREFIX: &str = "flat";

/// The chain's counters, as named in the table, and what each counts.
pub const COUNTERS: [(&str, &str); 3] = [
    (
        "spoofed_ipv4",
        "IPv4 packets from a pod whose source is not the pod's address",
    ),
    (
        "spoofed_ipv6",
        "IPv6 packets from a pod whose source is not the pod's address",
    ),
    ("router_adverts", "ICMPv6 router advertisements from a pod"),
];

/// The counters and the `antispoof` chain.
pub fn rules() -> String {
    let mut s: String = COUNTERS
        .iter()
        .map(|(name, _)| format!("  counter {name} {{}}\n"))
        .collect();
    s += &format!(
        "  chain antispoof {{\n\
         \x20   type filter hook prerouting priority raw; policy accept;\n\
         \x20   iifname != \"{HOST_VETH_PREFIX}*\" accept\n\
         \x20   icmpv6 type nd-router-advert counter name router_adverts drop\n\
         \x20   ip6 saddr {{ ::, fe80::/10 }} accept\n\
         \x20   meta nfproto ipv4 fib saddr . iif oif missing counter name spoofed_ipv4 drop\n\
         \x20   meta nfproto ipv6 fib saddr . iif oif missing counter name spoofed_ipv6 drop\n\
         \x20 }}\n"
    );
    s
}

/// The counters a pass read from the table, and whether the pass then rewrote the table,
/// which starts them again from 0.
#[derive(Debug, Default)]
pub struct Reading {
    pub counters: BTreeMap<String, u64>,
    pub rewritten: bool,
}

/// What the chain dropped since the agent started, from the counters each pass reads.
#[derive(Debug, Default)]
pub struct Drops {
    last: BTreeMap<String, u64>,
    total: BTreeMap<String, u64>,
}

impl Drops {
    /// Takes a pass's reading; returns the counters that grew since the last one, with the
    /// growth and the total. A counter lower than last time was reset behind the agent's back
    /// (by hand): all it holds is new.
    pub fn observe(&mut self, reading: &Reading) -> Vec<(String, u64, u64)> {
        let mut grew = Vec::new();
        for (name, _) in COUNTERS {
            let Some(&n) = reading.counters.get(name) else {
                continue;
            };
            let before = self.last.insert(name.to_string(), n).unwrap_or(0);
            let added = if n >= before { n - before } else { n };
            if added > 0 {
                let total = self.total.entry(name.to_string()).or_default();
                *total += added;
                grew.push((name.to_string(), added, *total));
            }
        }
        if reading.rewritten {
            self.last.clear();
        }
        grew
    }
}

/// The chain's counters in the Prometheus text format, read from the kernel in `ns` (else the
/// caller's namespace). They restart from 0 whenever the table is rewritten, which Prometheus
/// takes as a counter reset.
pub fn metrics(ns: Option<&NetNs>) -> String {
    let listing = nft::list(ns);
    let counters = listing.as_deref().map(nft::counters).unwrap_or_default();
    let mut s = String::from(
        "# HELP flatnet_antispoof_installed Whether flatnet's anti-spoofing table is in place.\n\
         # TYPE flatnet_antispoof_installed gauge\n",
    );
    s += &format!(
        "flatnet_antispoof_installed {}\n",
        u8::from(listing.is_some())
    );
    s += "# HELP flatnet_antispoof_dropped_packets_total Packets from pods dropped by \
          flatnet's anti-spoofing rules since the table was last written.\n\
          # TYPE flatnet_antispoof_dropped_packets_total counter\n";
    for (name, _) in COUNTERS {
        if let Some(n) = counters.get(name) {
            s += &format!("flatnet_antispoof_dropped_packets_total{{reason=\"{name}\"}} {n}\n");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_the_plugins() {
        assert!(crate::plugin::host_veth_name("abc", "eth0").starts_with(HOST_VETH_PREFIX));
    }

    #[test]
    fn advertisements_drop_before_link_local_passes_and_every_counter_is_declared() {
        let r = rules();
        let ra = r.find("nd-router-advert").unwrap();
        let link_local = r.find("fe80::/10 } accept").unwrap();
        assert!(ra < link_local, "{r}");
        for (name, _) in COUNTERS {
            assert!(r.contains(&format!("counter {name} {{}}")), "{r}");
            assert!(r.contains(&format!("counter name {name} drop")), "{r}");
        }
    }

    #[test]
    fn drops_add_up_across_table_rewrites() {
        let mut d = Drops::default();
        let at = |v: u64, rewritten: bool| Reading {
            counters: BTreeMap::from([("spoofed_ipv4".to_string(), v)]),
            rewritten,
        };
        assert_eq!(d.observe(&at(3, false)), [("spoofed_ipv4".into(), 3, 3)]);
        assert!(d.observe(&at(3, false)).is_empty());
        // The pass rewrote the table after reading 5: the next reading counts from 0.
        assert_eq!(d.observe(&at(5, true)), [("spoofed_ipv4".into(), 2, 5)]);
        assert_eq!(d.observe(&at(4, false)), [("spoofed_ipv4".into(), 4, 9)]);
        // Reset by hand, unannounced: what is there is new.
        assert_eq!(d.observe(&at(1, false)), [("spoofed_ipv4".into(), 1, 10)]);
    }
}
