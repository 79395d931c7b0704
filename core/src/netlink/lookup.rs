//! Questions to the kernel about the path of a packet: which route it would take (RTM_GETROUTE,
//! what `ip route get` asks), and what each link has counted. `flatnet trace` asks these in
//! every namespace a packet crosses.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteType};
use rtnetlink::RouteMessageBuilder;

use super::{nl_err, Netlink, Result};

/// A packet to look a route up for.
#[derive(Debug, Clone, Copy)]
pub struct Packet {
    pub dst: Ipv4Addr,
    pub src: Option<Ipv4Addr>,
    /// The link it came in by: an input lookup, as for a forwarded packet, so that the
    /// reverse-path check and `ip rule` selectors on the input interface apply. None: a packet
    /// this namespace sends itself.
    pub iif: Option<u32>,
}

/// The route that matched, as the FIB holds it (RTM_F_FIB_MATCH), so that its prefix and the
/// protocol of whoever made it can be shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub dst: Ipv4Network,
    pub kind: RouteType,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub protocol: u8,
    pub table: u32,
}

/// A link's packet counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

impl Netlink {
    /// The route the kernel picks for `packet`. A refusal comes back as an error whose
    /// [`errno`](super::Error::errno) says why: ENETUNREACH or EHOSTUNREACH (no route), EXDEV
    /// (reverse-path check failed), EINVAL (a martian address).
    pub async fn route_get(&self, packet: Packet) -> Result<Matched> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(packet.dst, 32);
        if let Some(src) = packet.src {
            b = b.source_prefix(src, 32);
        }
        let mut msg = b.build();
        msg.header.flags |= RouteFlags::from_bits_retain(RTM_F_FIB_MATCH);
        if let Some(iif) = packet.iif {
            msg.attributes.push(RouteAttribute::Iif(iif));
        }
        let what = format!(
            "route get {}{}{}",
            packet.dst,
            packet.src.map_or(String::new(), |s| format!(" from {s}")),
            packet.iif.map_or(String::new(), |i| format!(" iif #{i}"))
        );
        let mut answers = self.handle.route().get(msg).execute();
        let reply = answers.try_next().await.map_err(nl_err(what.clone()))?;
        let reply = reply.ok_or_else(|| super::Error::Io {
            op: what,
            cause: std::io::ErrorKind::UnexpectedEof.into(),
        })?;
        let mut m = Matched {
            dst: Ipv4Network::new(
                Ipv4Addr::UNSPECIFIED,
                reply.header.destination_prefix_length,
            )
            .unwrap_or_else(|_| Ipv4Network::from(Ipv4Addr::UNSPECIFIED)),
            kind: reply.header.kind,
            gateway: None,
            oif: None,
            protocol: reply.header.protocol.into(),
            table: u32::from(reply.header.table),
        };
        for attr in &reply.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                    if let Ok(n) = Ipv4Network::new(*a, m.dst.prefix()) {
                        m.dst = n;
                    }
                }
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => m.gateway = Some(*a),
                RouteAttribute::Oif(i) => m.oif = Some(*i),
                RouteAttribute::Table(t) => m.table = *t,
                _ => {}
            }
        }
        Ok(m)
    }

    /// The source address the kernel would give a packet this namespace sends to `dst`; None
    /// if it has no route there.
    pub async fn source_for(&self, dst: Ipv4Addr) -> Result<Option<Ipv4Addr>> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let mut answers = self.handle.route().get(msg).execute();
        let reply = match answers.try_next().await {
            Ok(r) => r,
            Err(_) => return Ok(None),
        };
        Ok(reply.and_then(|r| {
            r.attributes.iter().find_map(|a| match a {
                RouteAttribute::PrefSource(RouteAddress::Inet(s)) => Some(*s),
                _ => None,
            })
        }))
    }

    /// Whether `ip` is one of this namespace's own addresses: the kernel's route for it is a
    /// `local` one. One question, however many addresses the namespace has.
    pub async fn is_local(&self, ip: IpAddr) -> Result<bool> {
        let full = if ip.is_ipv4() { 32 } else { 128 };
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(ip, full)
            .expect("a host prefix of the address's own family")
            .build();
        let mut answers = self.handle.route().get(msg).execute();
        match answers
            .try_next()
            .await
            .map_err(nl_err(format!("route get {ip}")))
        {
            Ok(reply) => Ok(reply.is_some_and(|r| r.header.kind == RouteType::Local)),
            // No route at all (or no IPv6 on this node): certainly not an address of it.
            Err(e)
                if matches!(
                    e.errno(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EAFNOSUPPORT)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Every link's counters, by link index.
    pub async fn counters(&self) -> Result<Vec<(u32, Counters)>> {
        Ok(self
            .link_messages()
            .await?
            .iter()
            .map(|m| {
                let c = m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::Stats64(s) => Some(Counters {
                            rx_packets: s.rx_packets,
                            tx_packets: s.tx_packets,
                            rx_dropped: s.rx_dropped,
                            tx_dropped: s.tx_dropped,
                        }),
                        _ => None,
                    })
                    .unwrap_or_default();
                (m.header.index, c)
            })
            .collect())
    }
}

/// rtm_flags: answer with the FIB entry that matched rather than the resolved next hop.
const RTM_F_FIB_MATCH: u32 = 0x2000;
