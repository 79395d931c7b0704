//! GC: release every attachment the runtime no longer knows, with its host veth (and so its
//! route). An entry of the store that cannot be read is repaired when a live attachment's index
//! names it, else set aside, which frees its address. Keeps going past a failure and reports
//! all of them at the end.

use std::collections::HashSet;

use tracing::info;

use super::{delete_host_veth, host_veth_name, node_netlink};
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
    let store = Store::open(conf.store_dir())?;
    let mut locked = store.lock(super::LOCK_TIMEOUT)?;
    let mut failures = Vec::new();
    for (ip, holder) in locked.list()? {
        let cleaned = match holder {
            Holder::Owner(owner) if valid.contains(&owner) => continue,
            Holder::Owner(owner) => async {
                let host_name = host_veth_name(&owner.container_id, &owner.ifname);
                delete_host_veth(&node, &host_name).await?;
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
    if failures.is_empty() {
        Ok(())
    } else {
        Err(
            CniError::new(code::IO_FAILURE, "GC could not collect everything")
                .with_details(failures.join("; ")),
        )
    }
}
