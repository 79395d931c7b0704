//! The addresses of a pod CIDR that pods may get, for each family.
//!
//! Both families follow one picture: the first address after the network one is the gateway
//! (on every host veth), and pods get the addresses after it. An IPv6 pod CIDR is typically a
//! /64, whose 2^64 addresses are never enumerated: the search for a free one starts at a cursor
//! and stops at the first free address, and sizes are u128.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

/// A node's pod CIDR: the network and broadcast addresses are never handed out, and the first
/// address after the network one is the gateway every pod routes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    cidr: Ipv4Network,
}

impl Pool {
    /// `cidr` must have room for at least one pod (prefix ≤ 30); the config parser checks.
    pub fn new(cidr: Ipv4Network) -> Pool {
        assert!(cidr.prefix() <= 30, "pod CIDR {cidr} has no room for pods");
        Pool { cidr }
    }

    pub fn cidr(&self) -> Ipv4Network {
        self.cidr
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    fn first(&self) -> u32 {
        u32::from(self.cidr.network()) + 2
    }

    fn last(&self) -> u32 {
        u32::from(self.cidr.broadcast()) - 1
    }

    /// How many pods fit.
    pub fn size(&self) -> u32 {
        self.last() - self.first() + 1
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first()..=self.last()).contains(&u32::from(ip))
    }

    /// Every pod address once, starting right after `last` (round-robin: a freed address is the
    /// last to be reused) and wrapping around.
    pub fn candidates_after(&self, last: Option<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> {
        let (first, size) = (self.first(), self.size());
        let start = match last {
            Some(ip) if self.contains(ip) => u32::from(ip) - first + 1,
            _ => 0,
        };
        (0..size).map(move |i| Ipv4Addr::from(first + (start + i) % size))
    }
}

/// A node's IPv6 pod CIDR: the network address (the subnet-router anycast address) is never
/// handed out and the next one is the gateway; IPv6 has no broadcast, so the last address is a
/// pod's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool6 {
    cidr: Ipv6Network,
}

impl Pool6 {
    /// `cidr` must have room for at least one pod (prefix ≤ 126); the config parser checks.
    pub fn new(cidr: Ipv6Network) -> Pool6 {
        assert!(cidr.prefix() <= 126, "pod CIDR {cidr} has no room for pods");
        Pool6 { cidr }
    }

    pub fn cidr(&self) -> Ipv6Network {
        self.cidr
    }

    pub fn gateway(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.cidr.network()) + 1)
    }

    fn first(&self) -> u128 {
        u128::from(self.cidr.network()) + 2
    }

    fn last(&self) -> u128 {
        u128::from(self.cidr.network())
            | (u128::MAX
                .checked_shr(u32::from(self.cidr.prefix()))
                .unwrap_or(0))
    }

    /// How many pods fit: up to 2^128 - 2, so never summed or multiplied.
    pub fn size(&self) -> u128 {
        self.last() - self.first() + 1
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        (self.first()..=self.last()).contains(&u128::from(ip))
    }

    /// As [`Pool::candidates_after`]: lazy, so a /64 costs what a /24 costs until it fills.
    pub fn candidates_after(&self, last: Option<Ipv6Addr>) -> impl Iterator<Item = Ipv6Addr> {
        let (first, size) = (self.first(), self.size());
        let start = match last {
            Some(ip) if self.contains(ip) => u128::from(ip) - first + 1,
            _ => 0,
        };
        // start + i can exceed u128 for a huge pool: wrap without the sum.
        (0..size).map(move |i| {
            let offset = if i < size - start {
                start + i
            } else {
                i - (size - start)
            };
            Ipv6Addr::from(first + offset)
        })
    }
}

/// The pool of one family; a dual-stack node has one of each, in its `podCIDRs` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyPool {
    V4(Pool),
    V6(Pool6),
}

impl FamilyPool {
    /// See [`Pool::new`] and [`Pool6::new`] for what `cidr` must be.
    pub fn new(cidr: IpNetwork) -> FamilyPool {
        match cidr {
            IpNetwork::V4(n) => FamilyPool::V4(Pool::new(n)),
            IpNetwork::V6(n) => FamilyPool::V6(Pool6::new(n)),
        }
    }

    pub fn cidr(&self) -> IpNetwork {
        match self {
            FamilyPool::V4(p) => p.cidr().into(),
            FamilyPool::V6(p) => p.cidr().into(),
        }
    }

    pub fn is_v6(&self) -> bool {
        matches!(self, FamilyPool::V6(_))
    }

    pub fn gateway(&self) -> IpAddr {
        match self {
            FamilyPool::V4(p) => p.gateway().into(),
            FamilyPool::V6(p) => p.gateway().into(),
        }
    }

    pub fn size(&self) -> u128 {
        match self {
            FamilyPool::V4(p) => p.size().into(),
            FamilyPool::V6(p) => p.size(),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (FamilyPool::V4(p), IpAddr::V4(ip)) => p.contains(ip),
            (FamilyPool::V6(p), IpAddr::V6(ip)) => p.contains(ip),
            _ => false,
        }
    }

    /// Every pod address once, starting after `last` (if it is of this family).
    pub fn candidates_after(&self, last: Option<IpAddr>) -> Box<dyn Iterator<Item = IpAddr>> {
        match *self {
            FamilyPool::V4(p) => {
                let last = last.and_then(|ip| match ip {
                    IpAddr::V4(ip) => Some(ip),
                    IpAddr::V6(_) => None,
                });
                Box::new(p.candidates_after(last).map(IpAddr::V4))
            }
            FamilyPool::V6(p) => {
                let last = last.and_then(|ip| match ip {
                    IpAddr::V6(ip) => Some(ip),
                    IpAddr::V4(_) => None,
                });
                Box::new(p.candidates_after(last).map(IpAddr::V6))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> Pool {
        Pool::new(s.parse().unwrap())
    }

    #[test]
    fn skips_network_gateway_and_broadcast() {
        let p = pool("10.0.0.0/29");
        assert_eq!(p.gateway(), Ipv4Addr::new(10, 0, 0, 1));
        let all: Vec<_> = p.candidates_after(None).collect();
        assert_eq!(all.first(), Some(&Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(10, 0, 0, 6)));
        assert_eq!(all.len(), 5);
    }

    #[test]
    fn resumes_after_the_last_and_wraps() {
        let p = pool("10.0.0.0/29");
        let next: Vec<_> = p
            .candidates_after(Some(Ipv4Addr::new(10, 0, 0, 5)))
            .collect();
        assert_eq!(next[0], Ipv4Addr::new(10, 0, 0, 6));
        assert_eq!(next[1], Ipv4Addr::new(10, 0, 0, 2));
        let last = p.candidates_after(Some(Ipv4Addr::new(10, 0, 0, 6))).next();
        assert_eq!(last, Some(Ipv4Addr::new(10, 0, 0, 2)));
    }

    #[test]
    fn smallest_pool_has_one_pod() {
        assert_eq!(pool("10.0.0.0/30").size(), 1);
    }

    fn pool6(s: &str) -> Pool6 {
        Pool6::new(s.parse().unwrap())
    }

    #[test]
    fn v6_skips_network_and_gateway_and_keeps_the_last() {
        let p = pool6("fd00:10:244:1::/126");
        assert_eq!(p.gateway(), "fd00:10:244:1::1".parse::<Ipv6Addr>().unwrap());
        let all: Vec<String> = p.candidates_after(None).map(|a| a.to_string()).collect();
        assert_eq!(all, ["fd00:10:244:1::2", "fd00:10:244:1::3"]);
    }

    #[test]
    fn a_v6_slash_64_is_sized_and_searched_without_enumerating() {
        let p = pool6("fd00:10:244:1::/64");
        assert_eq!(p.size(), (1u128 << 64) - 2);
        let last = "fd00:10:244:1:ffff:ffff:ffff:ffff".parse().unwrap();
        assert!(p.contains(last));
        // After the very last address the search wraps to the first, at once.
        let next: Vec<String> = p
            .candidates_after(Some(last))
            .take(2)
            .map(|a| a.to_string())
            .collect();
        assert_eq!(next, ["fd00:10:244:1::2", "fd00:10:244:1::3"]);
        let mid = "fd00:10:244:1::1:0".parse().unwrap();
        assert_eq!(
            p.candidates_after(Some(mid)).next().unwrap().to_string(),
            "fd00:10:244:1::1:1"
        );
    }

    #[test]
    fn the_whole_v6_space_does_not_overflow() {
        let p = pool6("::/0");
        assert_eq!(p.size(), u128::MAX - 1);
        let last = Ipv6Addr::from(u128::MAX);
        assert_eq!(
            p.candidates_after(Some(last)).next(),
            Some(Ipv6Addr::from(2))
        );
        assert_eq!(
            p.candidates_after(Some(Ipv6Addr::from(u128::MAX - 1)))
                .nth(1),
            Some(Ipv6Addr::from(2))
        );
    }

    #[test]
    fn family_pools_answer_only_for_their_family() {
        let v4 = FamilyPool::new("10.0.0.0/24".parse().unwrap());
        let v6 = FamilyPool::new("fd00::/64".parse().unwrap());
        assert!(!v4.contains("fd00::2".parse().unwrap()));
        assert!(!v6.contains("10.0.0.2".parse().unwrap()));
        assert_eq!(v6.gateway().to_string(), "fd00::1");
        assert_eq!(
            v4.candidates_after(Some("fd00::5".parse().unwrap())).next(),
            Some("10.0.0.2".parse().unwrap())
        );
    }
}
