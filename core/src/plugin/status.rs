//! STATUS: can this node take another pod? Yes when the store opens, locks, can take a new
//! entry (a full or read-only filesystem fails every ADD, so it fails STATUS too) and the pool
//! has a free address.

use crate::cni::error::code;
use crate::cni::{CniError, NetConf};
use crate::ipam::{Pool, Store};

pub(super) fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        CniError::new(code::NOT_AVAILABLE, "flatnet cannot add pods").with_details(e)
    };
    let store = Store::open(conf.store_dir()).map_err(|e| unavailable(&e))?;
    let locked = store
        .lock(super::LOCK_TIMEOUT)
        .map_err(|e| unavailable(&e))?;
    locked.writable().map_err(|e| unavailable(&e))?;
    // Unreadable entries count as used: their addresses are out of use until GC.
    let used = locked.list().map_err(|e| unavailable(&e))?.len();
    let pool = Pool::new(conf.pod_cidr);
    if used as u64 >= u64::from(pool.size()) {
        return Err(unavailable(&format!(
            "pool {} is exhausted ({used} of {} addresses in use)",
            pool.cidr(),
            pool.size()
        )));
    }
    Ok(())
}
