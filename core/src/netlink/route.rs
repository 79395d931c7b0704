//! Routes in the main table, of either family: [`Route`] for IPv4 (what the agent and the
//! emulator use), [`Route6`] for IPv6, one type with the family as a parameter.

use std::fmt::{Debug, Display};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnetwork::{Ipv4Network, Ipv6Network};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use rtnetlink::RouteMessageBuilder;

use super::link::is_errno;
use super::{nl_err, Netlink, Result};

/// A destination network type of one family: `Ipv4Network` or `Ipv6Network`.
pub trait Family: Copy + Debug + Display + Eq + Send + Sync + 'static {
    type Addr: Copy + Debug + Display + Eq + Into<IpAddr> + Send + Sync + 'static;
    /// The family's unspecified address, to build a dump request and a default route.
    const UNSPECIFIED: Self::Addr;
    fn new(addr: Self::Addr, prefix: u8) -> Option<Self>;
    fn ip(&self) -> Self::Addr;
    fn prefix(&self) -> u8;
    fn from_route_address(a: &RouteAddress) -> Option<Self::Addr>;
}

impl Family for Ipv4Network {
    type Addr = Ipv4Addr;
    const UNSPECIFIED: Ipv4Addr = Ipv4Addr::UNSPECIFIED;
    fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        Ipv4Network::new(addr, prefix).ok()
    }
    fn ip(&self) -> Ipv4Addr {
        Ipv4Network::ip(*self)
    }
    fn prefix(&self) -> u8 {
        Ipv4Network::prefix(*self)
    }
    fn from_route_address(a: &RouteAddress) -> Option<Ipv4Addr> {
        match a {
            RouteAddress::Inet(a) => Some(*a),
            _ => None,
        }
    }
}

impl Family for Ipv6Network {
    type Addr = Ipv6Addr;
    const UNSPECIFIED: Ipv6Addr = Ipv6Addr::UNSPECIFIED;
    fn new(addr: Ipv6Addr, prefix: u8) -> Option<Self> {
        Ipv6Network::new(addr, prefix).ok()
    }
    fn ip(&self) -> Ipv6Addr {
        Ipv6Network::ip(self)
    }
    fn prefix(&self) -> u8 {
        Ipv6Network::prefix(self)
    }
    fn from_route_address(a: &RouteAddress) -> Option<Ipv6Addr> {
        match a {
            RouteAddress::Inet6(a) => Some(*a),
            _ => None,
        }
    }
}

/// An IPv4 route in the main table.
pub type Route = RouteOf<Ipv4Network>;
/// An IPv6 route in the main table.
pub type Route6 = RouteOf<Ipv6Network>;

/// A route of the main table in family `N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOf<N: Family> {
    pub dst: N,
    /// Unicast for every route flatnet makes; others (blackhole, unreachable, …) are listed
    /// so that one holding a pod CIDR is seen, not mistaken for a free destination.
    pub kind: RouteType,
    /// The metric (priority); 0 for flatnet's routes.
    pub metric: u32,
    pub gateway: Option<N::Addr>,
    pub oif: Option<u32>,
    pub scope: RouteScope,
    pub protocol: u8,
    /// The gateway is reachable through `oif` without an on-link route to it.
    pub onlink: bool,
}

impl<N: Family> RouteOf<N> {
    /// `dst dev OIF scope link`.
    pub fn via_link(dst: N, oif: u32, protocol: u8) -> RouteOf<N> {
        RouteOf {
            dst,
            kind: RouteType::Unicast,
            metric: 0,
            gateway: None,
            oif: Some(oif),
            scope: RouteScope::Link,
            protocol,
            onlink: false,
        }
    }

    /// `dst via GATEWAY [dev OIF]`.
    pub fn via_gateway(dst: N, gateway: N::Addr, oif: Option<u32>, protocol: u8) -> RouteOf<N> {
        RouteOf {
            dst,
            kind: RouteType::Unicast,
            metric: 0,
            gateway: Some(gateway),
            oif,
            scope: RouteScope::Universe,
            protocol,
            onlink: false,
        }
    }

    /// For deletion: every route to `dst` made by `protocol`, whatever its device or scope.
    pub fn matching(dst: N, protocol: u8) -> RouteOf<N> {
        RouteOf {
            dst,
            kind: RouteType::Unicast,
            metric: 0,
            gateway: None,
            oif: None,
            scope: RouteScope::NoWhere,
            protocol,
            onlink: false,
        }
    }

    /// The default route of the family (`0.0.0.0/0`, `::/0`).
    pub fn default_dst() -> N {
        N::new(N::UNSPECIFIED, 0).expect("a /0 is valid")
    }

    fn to_message(&self) -> RouteMessage {
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.dst.ip().into(), self.dst.prefix())
            .expect("the prefix of a network of its own family")
            .protocol(RouteProtocol::from(self.protocol))
            .scope(self.scope)
            .kind(self.kind);
        if self.metric != 0 {
            b = b.priority(self.metric);
        }
        if let Some(gw) = self.gateway {
            b = b
                .gateway(gw.into())
                .expect("a gateway of the route's own family");
        }
        if let Some(oif) = self.oif {
            b = b.output_interface(oif);
        }
        if self.onlink {
            b = b.onlink();
        }
        b.build()
    }

    fn from_message(msg: &RouteMessage) -> Option<RouteOf<N>> {
        if msg.header.table != RouteHeader::RT_TABLE_MAIN {
            return None;
        }
        let mut dst = N::UNSPECIFIED;
        let mut gateway = None;
        let mut oif = None;
        let mut metric = 0;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Priority(p) => metric = *p,
                RouteAttribute::Destination(a) => dst = N::from_route_address(a)?,
                RouteAttribute::Gateway(a) => gateway = N::from_route_address(a).or(gateway),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Table(t) if *t != u32::from(RouteHeader::RT_TABLE_MAIN) => {
                    return None
                }
                _ => {}
            }
        }
        Some(RouteOf {
            dst: N::new(dst, msg.header.destination_prefix_length)?,
            kind: msg.header.kind,
            metric,
            gateway,
            oif,
            scope: msg.header.scope,
            protocol: msg.header.protocol.into(),
            onlink: msg.header.flags.contains(RouteFlags::Onlink),
        })
    }
}

impl Netlink {
    /// Adds the route; fails if one for the same destination exists.
    pub async fn add_route<N: Family>(&self, route: &RouteOf<N>) -> Result<()> {
        self.handle
            .route()
            .add(route.to_message())
            .execute()
            .await
            .map_err(nl_err(format!("add route {}", describe(route))))
    }

    /// Adds the route, replacing any route for the same destination and metric.
    pub async fn replace_route<N: Family>(&self, route: &RouteOf<N>) -> Result<()> {
        self.handle
            .route()
            .add(route.to_message())
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("replace route {}", describe(route))))
    }

    /// Deletes the route; absent is not an error.
    pub async fn delete_route<N: Family>(&self, route: &RouteOf<N>) -> Result<()> {
        match self.handle.route().del(route.to_message()).execute().await {
            Err(e) if is_errno(&e, libc::ESRCH) => Ok(()),
            r => r.map_err(nl_err(format!("delete route {}", describe(route)))),
        }
    }

    /// The IPv4 routes of the main table.
    pub async fn routes(&self) -> Result<Vec<Route>> {
        self.routes_of().await
    }

    /// The IPv6 routes of the main table.
    pub async fn routes6(&self) -> Result<Vec<Route6>> {
        self.routes_of().await
    }

    /// The routes of the main table in family `N`.
    pub async fn routes_of<N: Family>(&self) -> Result<Vec<RouteOf<N>>> {
        let family = match N::UNSPECIFIED.into() {
            IpAddr::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            IpAddr::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let msgs: Vec<_> = self
            .handle
            .route()
            .get(family)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list routes"))?;
        Ok(msgs.iter().filter_map(RouteOf::from_message).collect())
    }
}

fn describe<N: Family>(r: &RouteOf<N>) -> String {
    let mut s = r.dst.to_string();
    if let Some(gw) = r.gateway {
        s += &format!(" via {gw}");
    }
    if let Some(oif) = r.oif {
        s += &format!(" dev #{oif}");
    }
    s
}
