//! GC: release every attachment the runtime no longer knows, with its host veth (and so its
//! route), and delete every retired host veth, in one request at the end. An entry of the store that cannot be read is repaired when a live attachment's index
//! names it, else set aside, which frees its address. Keeps going past a failure and reports
//! all of them at the end.

use std::collections::HashSet;

use tracing::info;

use super::{host_veth_name, leftovers, node_netlink};
use crate::cni::config::Attachment;
use crate::cni::error::code;
use crate::cni::{CniError, NetConf};
use crate::ipam::{Holder, Store};

pub(super) async fn gc(conf: &NetConf) -> Result<(), CniError> {
    // An invalid entry cannot match anything the store holds, and must not name a path.
    let valid: HashSet<&Attachment> = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "invalid network config: GC needs cni.dev/valid-attachments",
            )
        })?
        .iter()
        .filter(|a| a.is_valid())
        .collect();
    let node = node_netlink()?;
    let store_dir = conf.store_dir();
    let store = Store::open(&store_dir)?;
    let mut locked = store.lock(super::LOCK_TIMEOUT)?;
    let mut failures = Vec::new();
    for (ip, holder) in locked.list()? {
        let cleaned = match holder {
            Holder::Owner(owner) if valid.contains(&owner) => continue,
            Holder::Owner(owner) => async {
                let host_name = host_veth_name(&owner.container_id, &owner.ifname);
                if let Some(link) = node.link_by_name(&host_name).await? {
                    leftovers::retire(&node, &link, &store_dir)
                        .await
                        .map_err(|e| {
                            CniError::new(code::NETLINK, format!("cannot retire {host_name}"))
                                .with_details(e)
                        })?;
                }
                locked.release(&owner, &[ip])?;
                info!(container = %owner.container_id, ifname = %owner.ifname, %ip, "collected");
                Ok::<_, CniError>(())
            }
            .await,
            Holder::Unreadable(why) => (|| {
                for a in &valid {
                    if locked.index_of(a)?.contains(&ip) {
                        return Ok(locked.repair(ip, a)?);
                    }
                }
                Ok::<_, CniError>(locked.quarantine_address(ip, &why)?)
            })(),
        };
        if let Err(e) = cleaned {
            failures.push(format!("{ip}: {e}"));
        }
    }
    if let Err(e) = locked.sweep() {
        failures.push(e.to_string());
    }
    if let Err(e) = leftovers::sweep_now(&store_dir) {
        failures.push(format!("delete retired host veths: {e}"));
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
