//! Addresses.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};

use super::link::is_errno;
use super::{nl_err, Netlink, Result};

impl Netlink {
    /// Adds `addr` to the link. An IPv6 address is added with IFA_F_NODAD: it is usable at
    /// once, never tentative. flatnet only adds addresses it alone hands out (a pod's from its
    /// store, the pods' gateway on the node's loopback), so there is no duplicate to detect,
    /// and waiting for DAD would cost every pod about a second.
    pub async fn add_address(&self, index: u32, addr: impl Into<IpNetwork>) -> Result<()> {
        let addr: IpNetwork = addr.into();
        let mut req = self.handle.address().add(index, addr.ip(), addr.prefix());
        if addr.is_ipv6() {
            let msg = req.message_mut();
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(nl_err(format!("add address {addr} to link #{index}")))
    }

    /// The addresses on the link.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>> {
        Ok(self
            .address_dump(Some(index))
            .await?
            .into_iter()
            .map(|(_, a)| a)
            .collect())
    }

    /// Every address of the namespace, with the index of its link.
    pub async fn all_addresses(&self) -> Result<Vec<(u32, IpNetwork)>> {
        self.address_dump(None).await
    }

    async fn address_dump(&self, index: Option<u32>) -> Result<Vec<(u32, IpNetwork)>> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let msgs: Vec<_> = req
            .execute()
            .try_collect()
            .await
            .map_err(nl_err(match index {
                Some(i) => format!("list addresses of link #{i}"),
                None => "list addresses".to_string(),
            }))?;
        let mut out = Vec::new();
        for msg in msgs {
            let prefix = msg.header.prefix_len;
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on p2p links.
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let address = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(address) {
                if let Ok(net) = IpNetwork::new(ip, prefix) {
                    out.push((msg.header.index, net));
                }
            }
        }
        Ok(out)
    }

    /// Removes `addr` from the link; absent is not an error.
    pub async fn delete_address(&self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(IpAddr::V4(addr))
            .set_prefix_length_filter(prefix)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err(format!("find address {addr}/{prefix}")))?;
        for msg in msgs {
            match self.handle.address().del(msg).execute().await {
                Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) => {}
                r => r.map_err(nl_err(format!("delete address {addr}/{prefix}")))?,
            }
        }
        Ok(())
    }
}
