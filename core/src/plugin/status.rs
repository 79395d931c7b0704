//! STATUS: can this node take another pod? Yes when the store opens, locks, can take a new
//! entry (a full or read-only filesystem fails every ADD, so it fails STATUS too) and the pool
//! has a free address in every family (an ADD takes one of each).

use crate::cni::error::code;
use crate::cni::{CniError, NetConf};
use crate::ipam::Store;

pub(super) fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        CniError::new(code::NOT_AVAILABLE, "flatnet cannot add pods").with_details(e)
    };
    let store = Store::open(conf.store_dir()).map_err(|e| unavailable(&e))?;
    let locked = store
        .lock(super::LOCK_TIMEOUT)
        .map_err(|e| unavailable(&e))?;
    locked.writable().map_err(|e| unavailable(&e))?;
    // Counting what the store holds costs the number of pods, never the size of a pool (a /64
    // has 2^64 - 2 addresses; sizes are u128 and are only compared).
    let held = locked.list().map_err(|e| unavailable(&e))?;
    for pool in super::add::pools(conf) {
        // Unreadable entries count as used: their addresses are out of use until GC.
        let used = held.iter().filter(|(ip, _)| pool.contains(*ip)).count() as u128;
        if used >= pool.size() {
            return Err(unavailable(&format!(
                "pool {} is exhausted ({used} of {} addresses in use)",
                pool.cidr(),
                pool.size()
            )));
        }
    }
    Ok(())
}
