//! Neighbour (ARP/NDP) entries: the overlay's inner IP → peer VTEP MAC, and a pod's gateway →
//! its host veth's MAC.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;

use super::link::is_errno;
use super::{nl_err, Netlink, Result};

/// A neighbour (ARP/NDP) entry of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub dst: IpAddr,
    pub mac: Option<[u8; 6]>,
    pub permanent: bool,
}

impl Netlink {
    /// The IPv4 and IPv6 neighbour entries of link `index`.
    pub async fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let msgs: Vec<NeighbourMessage> = self
                .handle
                .neighbours()
                .get()
                .set_address_family(family)
                .execute()
                .try_collect()
                .await
                .map_err(nl_err("list neighbours"))?;
            out.extend(
                msgs.iter()
                    .filter(|m| m.header.ifindex == index)
                    .filter_map(|m| {
                        Some(Neighbour {
                            dst: m.attributes.iter().find_map(|a| match a {
                                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                                    Some(IpAddr::from(*a))
                                }
                                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                                    Some(IpAddr::from(*a))
                                }
                                _ => None,
                            })?,
                            mac: lladdr(m),
                            permanent: m.header.state == NeighbourState::Permanent,
                        })
                    }),
            );
        }
        Ok(out)
    }

    /// Puts a permanent neighbour entry `dst → mac` on link `index`, replacing any other.
    pub async fn replace_neighbour(&self, index: u32, dst: IpAddr, mac: [u8; 6]) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, dst)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("neighbour {dst} on link #{index}")))
    }

    /// Deletes the neighbour entry for `dst` on link `index`; absent is not an error.
    pub async fn delete_neighbour(&self, index: u32, dst: IpAddr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = match dst {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(match dst {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        match self.handle.neighbours().del(msg).execute().await {
            Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
            r => r.map_err(nl_err(format!("delete neighbour {dst} on link #{index}"))),
        }
    }
}

pub(super) fn lladdr(m: &NeighbourMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => l.as_slice().try_into().ok(),
        _ => None,
    })
}
