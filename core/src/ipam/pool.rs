//! The addresses of a pod CIDR that pods may get.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

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
}
