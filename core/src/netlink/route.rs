//! IPv4 routes in the main table.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use rtnetlink::RouteMessageBuilder;

use super::link::is_errno;
use super::{nl_err, Netlink, Result};

/// An IPv4 route in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Network,
    /// Unicast for every route flatnet makes; others (blackhole, unreachable, …) are listed
    /// so that one holding a pod CIDR is seen, not mistaken for a free destination.
    pub kind: RouteType,
    /// The metric (priority); 0 for flatnet's routes.
    pub metric: u32,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub scope: RouteScope,
    pub protocol: u8,
    /// The gateway is reachable through `oif` without an on-link route to it.
    pub onlink: bool,
}

impl Route {
    /// `dst dev OIF scope link`.
    pub fn via_link(dst: Ipv4Network, oif: u32, protocol: u8) -> Route {
        Route {
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
    pub fn via_gateway(
        dst: Ipv4Network,
        gateway: Ipv4Addr,
        oif: Option<u32>,
        protocol: u8,
    ) -> Route {
        Route {
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
    pub fn matching(dst: Ipv4Network, protocol: u8) -> Route {
        Route {
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

    fn to_message(&self) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(self.dst.ip(), self.dst.prefix())
            .protocol(RouteProtocol::from(self.protocol))
            .scope(self.scope)
            .kind(self.kind);
        if self.metric != 0 {
            b = b.priority(self.metric);
        }
        if let Some(gw) = self.gateway {
            b = b.gateway(gw);
        }
        if let Some(oif) = self.oif {
            b = b.output_interface(oif);
        }
        if self.onlink {
            b = b.onlink();
        }
        b.build()
    }

    fn from_message(msg: &RouteMessage) -> Option<Route> {
        if msg.header.table != RouteHeader::RT_TABLE_MAIN {
            return None;
        }
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut gateway = None;
        let mut oif = None;
        let mut metric = 0;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Priority(p) => metric = *p,
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Table(t) if *t != u32::from(RouteHeader::RT_TABLE_MAIN) => {
                    return None
                }
                _ => {}
            }
        }
        Some(Route {
            dst: Ipv4Network::new(dst, msg.header.destination_prefix_length).ok()?,
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
    pub async fn add_route(&self, route: &Route) -> Result<()> {
        self.handle
            .route()
            .add(route.to_message())
            .execute()
            .await
            .map_err(nl_err(format!("add route {}", describe(route))))
    }

    /// Adds the route, replacing any route for the same destination and metric.
    pub async fn replace_route(&self, route: &Route) -> Result<()> {
        self.handle
            .route()
            .add(route.to_message())
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("replace route {}", describe(route))))
    }

    /// Deletes the route; absent is not an error.
    pub async fn delete_route(&self, route: &Route) -> Result<()> {
        match self.handle.route().del(route.to_message()).execute().await {
            Err(e) if is_errno(&e, libc::ESRCH) => Ok(()),
            r => r.map_err(nl_err(format!("delete route {}", describe(route)))),
        }
    }

    /// The IPv4 routes of the main table.
    pub async fn routes(&self) -> Result<Vec<Route>> {
        let msgs: Vec<_> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list routes"))?;
        Ok(msgs.iter().filter_map(Route::from_message).collect())
    }
}

fn describe(r: &Route) -> String {
    let mut s = r.dst.to_string();
    if let Some(gw) = r.gateway {
        s += &format!(" via {gw}");
    }
    if let Some(oif) = r.oif {
        s += &format!(" dev #{oif}");
    }
    s
}
