//! The one question the agent asks before routing a peer directly: is that peer's address on a
//! link of this node? A route lookup answers it as the kernel would forward, whatever the
//! masks, policy rules or hand-made routes say.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::RouteMessageBuilder;

use super::{nl_err, Netlink, Result};

/// Where the kernel would send a packet to one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    pub kind: RouteType,
    /// None: the address is on the link `oif` itself.
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
}

impl Netlink {
    /// The kernel's route for a packet this namespace sends to `dst`; None if it has none
    /// (unreachable, prohibited: the lookup itself fails).
    pub async fn next_hop(&self, dst: IpAddr) -> Result<Option<NextHop>> {
        let prefix = if dst.is_ipv4() { 32 } else { 128 };
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst, prefix)
            .expect("a host prefix of the address's own family")
            .build();
        let mut answers = self.handle.route().get(msg).execute();
        let reply = match answers.try_next().await {
            Ok(r) => r,
            Err(e) if no_route(&e) => return Ok(None),
            Err(e) => return Err(nl_err(format!("route get {dst}"))(e)),
        };
        Ok(reply.map(|r| {
            let mut hop = NextHop {
                kind: r.header.kind,
                gateway: None,
                oif: None,
            };
            for a in &r.attributes {
                match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => {
                        hop.gateway = Some((*g).into())
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet6(g)) => {
                        hop.gateway = Some((*g).into())
                    }
                    RouteAttribute::Oif(i) => hop.oif = Some(*i),
                    _ => {}
                }
            }
            hop
        }))
    }
}

/// Whether a failed lookup just means "no route": ENETUNREACH, EHOSTUNREACH, EACCES
/// (prohibit) or EINVAL.
fn no_route(e: &rtnetlink::Error) -> bool {
    [
        libc::ENETUNREACH,
        libc::EHOSTUNREACH,
        libc::EACCES,
        libc::EINVAL,
    ]
    .iter()
    .any(|&n| super::link::is_errno(e, n))
}
