//! VXLAN devices and what points into them: permanent FDB entries (peer VTEP MAC → peer node
//! IP), the agent's overlay; its neighbour entries (inner IP → peer VTEP MAC) are [`super::neigh`]'s.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, LinkVxlan};

use super::link::is_errno;
use super::neigh::lladdr;
use super::{nl_err, Netlink, Result};

/// A VXLAN device to create: the MAC goes into the creation request itself, so that nothing
/// (systemd-networkd's MACAddressPolicy, for one) gets to pick another one first.
#[derive(Debug, Clone)]
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    pub vni: u32,
    pub port: u16,
    /// The outer source address: this node's address of the underlay family.
    pub local: IpAddr,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// What the agent checks of an existing VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<IpAddr>,
    pub learning: Option<bool>,
}

/// A forwarding-database entry of a VXLAN device: inner MAC → outer destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: Option<IpAddr>,
    pub permanent: bool,
}

impl Netlink {
    /// Creates the VXLAN device, learning off and no miss notifications: every entry it
    /// needs is put there by the agent, and nothing else is believed.
    pub async fn create_vxlan(&self, spec: &VxlanSpec<'_>) -> Result<()> {
        let mut b = LinkVxlan::new(spec.name, spec.vni)
            .port(spec.port)
            .learning(false)
            .l2miss(false)
            .l3miss(false)
            .address(spec.mac.to_vec())
            .mtu(spec.mtu);
        b = match spec.local {
            IpAddr::V4(a) => b.local(a),
            IpAddr::V6(a) => b.local6(a),
        };
        self.handle
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(nl_err(format!("create vxlan device {}", spec.name)))
    }

    /// The VXLAN attributes of link `index`; None if it is no VXLAN device.
    pub async fn vxlan_info(&self, index: u32) -> Result<Option<VxlanInfo>> {
        let msgs = self.link_messages().await?;
        let Some(msg) = msgs.iter().find(|m| m.header.index == index) else {
            return Ok(None);
        };
        let mut kind = false;
        let mut info = VxlanInfo {
            vni: None,
            port: None,
            local: None,
            learning: None,
        };
        for attr in &msg.attributes {
            let LinkAttribute::LinkInfo(infos) = attr else {
                continue;
            };
            for i in infos {
                match i {
                    LinkInfo::Kind(InfoKind::Vxlan) => kind = true,
                    LinkInfo::Data(InfoData::Vxlan(data)) => {
                        for d in data {
                            match d {
                                InfoVxlan::Id(v) => info.vni = Some(*v),
                                InfoVxlan::Port(p) => info.port = Some(*p),
                                InfoVxlan::Local(a) => info.local = Some((*a).into()),
                                InfoVxlan::Local6(a) => info.local = Some((*a).into()),
                                InfoVxlan::Learning(l) => info.learning = Some(*l),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(kind.then_some(info))
    }

    /// Sets link `index`'s MAC address.
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!("set the MAC of link #{index}")))
    }

    /// The FDB entries of link `index` (a VXLAN device's own table).
    pub async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list the forwarding database"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(|m| {
                Some(FdbEntry {
                    mac: lladdr(m)?,
                    dst: m.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::Destination(d) => address(d),
                        _ => None,
                    }),
                    permanent: m.header.state == NeighbourState::Permanent,
                })
            })
            .collect())
    }

    /// Puts a permanent FDB entry `mac → dst` on VXLAN link `index`, replacing the
    /// destination of an existing entry for `mac`.
    pub async fn replace_fdb(&self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(index, &mac)
            .destination(dst)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!(
                "fdb {} dst {dst} on link #{index}",
                mac_string(mac)
            )))
    }

    /// Deletes the FDB entry for `mac` on VXLAN link `index`; absent is not an error.
    pub async fn delete_fdb(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        match self.handle.neighbours().del(msg).execute().await {
            Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
            r => r.map_err(nl_err(format!(
                "delete fdb {} on link #{index}",
                mac_string(mac)
            ))),
        }
    }
}

/// An FDB entry's destination: the parser knows no address family for AF_BRIDGE messages,
/// so it comes as raw bytes, 4 or 16 of them.
fn address(d: &NeighbourAddress) -> Option<IpAddr> {
    match d {
        NeighbourAddress::Inet(a) => Some((*a).into()),
        NeighbourAddress::Inet6(a) => Some((*a).into()),
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
