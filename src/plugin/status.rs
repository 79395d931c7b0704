//! STATUS: can this node take another pod?

use crate::cni::error::code;
use crate::cni::{CniError, NetConf};
use crate::ipam::{Pool, Store};

pub(super) fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        CniError::new(code::NOT_AVAILABLE, "flatnet cannot add pods").with_details(e)
    };
    let store = Store::open(conf.store_dir()).map_err(|e| unavailable(&e))?;
    let used = store
        .lock(super::LOCK_TIMEOUT)
        .and_then(|l| l.list())
        .map_err(|e| unavailable(&e))?
        .len();
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
