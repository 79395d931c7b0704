//! Links: veth pairs, lookup, up, delete.

use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec};

use super::{nl_err, Netlink, Result};
use crate::netns::NetNs;

/// What flatnet needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// The rtnetlink kind ("veth", "bridge", …); None for a physical or loopback device.
    pub kind: Option<String>,
    pub up: bool,
    /// The device group (`ip link set DEV group N`); 0 unless someone set one.
    pub group: u32,
}

impl Link {
    /// The MAC as the CNI result spells it: lowercase, colon-separated.
    pub fn mac_string(&self) -> String {
        self.mac
            .map(|m| {
                m.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            })
            .unwrap_or_default()
    }

    fn from_message(msg: &netlink_packet_route::link::LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            kind: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            group: 0,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    link.mac = Some(a.as_slice().try_into().expect("length checked"))
                }
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Group(g) => link.group = *g,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            link.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// A veth pair whose peer is created directly inside another namespace.
pub struct VethSpec<'a> {
    pub name: &'a str,
    pub peer_name: &'a str,
    pub peer_netns: &'a NetNs,
    pub mtu: u32,
}

impl Netlink {
    /// The link called `name`, if there is one.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut req = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match req.try_next().await {
            Ok(msg) => Ok(msg.as_ref().map(Link::from_message)),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_err(format!("look up link {name}"))(e)),
        }
    }

    /// The link with index `index`, if there is one.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut req = self.handle.link().get().match_index(index).execute();
        match req.try_next().await {
            Ok(msg) => Ok(msg.as_ref().map(Link::from_message)),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_err(format!("look up link #{index}"))(e)),
        }
    }

    /// All links of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        Ok(self
            .link_messages()
            .await?
            .iter()
            .map(Link::from_message)
            .collect())
    }

    /// The kernel's own description of every link of the namespace.
    pub(super) async fn link_messages(&self) -> Result<Vec<LinkMessage>> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list links"))
    }

    /// Creates a veth pair: `name` here and `peer_name` born inside `peer_netns`, both with
    /// `mtu`. Creating the peer in place (rather than moving it afterwards) means the pod end
    /// never exists in the node's namespace, even for a moment, so it cannot clash there.
    pub async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<()> {
        use std::os::fd::{AsFd, AsRawFd};
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.peer_name.to_string())
            .mtu(spec.mtu)
            .setns_by_fd(spec.peer_netns.as_fd().as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(spec.name.to_string())
            .mtu(spec.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl_err(format!(
                "create veth {} (peer {})",
                spec.name, spec.peer_name
            )))
    }

    /// Creates a bridge, left down so its ports can be attached before it forwards anything.
    pub async fn create_bridge(&self, name: &str) -> Result<()> {
        self.handle
            .link()
            .add(LinkMessageBuilder::<LinkBridge>::new(name).build())
            .execute()
            .await
            .map_err(nl_err(format!("create bridge {name}")))
    }

    /// Makes link `index` a port of the bridge `master`.
    pub async fn set_master(&self, index: u32, master: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).controller(master).build())
            .execute()
            .await
            .map_err(nl_err(format!("attach link #{index} to #{master}")))
    }

    /// Sets the link up.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl_err(format!("set link #{index} up")))
    }

    /// Sets the link down and moves it into device group `group`, in one request. Down, the
    /// kernel flushes every route through it; the link itself waits for a group delete.
    pub async fn retire(&self, index: u32, group: u32) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .down()
                    .link_group(group)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!("retire link #{index} into group {group}")))
    }

    /// Deletes the link. Absent is not an error: deleting is idempotent.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            r => r.map_err(nl_err(format!("delete link #{index}"))),
        }
    }
}

pub(super) fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == errno)
}
