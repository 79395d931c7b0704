//! GC: release every attachment the runtime no longer knows, with its host veth and route.
//! Keeps going past a failure and reports all of them at the end.

use std::collections::HashSet;

use tracing::info;

use super::{host_veth_name, node_netlink, remove_host_route};
use crate::cni::error::code;
use crate::cni::{CniError, NetConf};
use crate::ipam::Store;

pub(super) async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid: HashSet<_> = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "invalid network config: GC needs cni.dev/valid-attachments",
            )
        })?
        .iter()
        .cloned()
        .collect();
    let node = node_netlink()?;
    let store = Store::open(conf.store_dir())?;
    let mut locked = store.lock(super::LOCK_TIMEOUT)?;
    let mut failures = Vec::new();
    for (ip, owner) in locked.list()? {
        let Some(owner) = owner.filter(|o| !valid.contains(o)) else {
            continue;
        };
        let host_name = host_veth_name(&owner.container_id, &owner.ifname);
        let cleaned = async {
            if let Some(link) = node.link_by_name(&host_name).await? {
                node.delete_link(link.index).await?;
            }
            remove_host_route(&node, ip).await?;
            locked.release(&owner, Some(ip))?;
            Ok::<_, CniError>(())
        }
        .await;
        match cleaned {
            Ok(()) => {
                info!(container = %owner.container_id, ifname = %owner.ifname, %ip, "collected")
            }
            Err(e) => failures.push(format!(
                "{} {} ({ip}): {e}",
                owner.container_id, owner.ifname
            )),
        }
    }
    if let Err(e) = locked.sweep() {
        failures.push(e.to_string());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(
            CniError::new(code::IO_FAILURE, "GC could not collect everything")
                .with_details(failures.join("; ")),
        )
    }
}
