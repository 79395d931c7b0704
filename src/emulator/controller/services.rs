//! The Service controllers' pass: EndpointSlices from the pods, the proxy table of every node
//! and the DNS zone, from the Services on disk (see [`crate::emulator::services`]).
//!
//! kube-proxy runs on every node of a real cluster; here the one controller process programs
//! every node's table, entering each node's namespace for one `nft -f` transaction, so that a
//! cluster needs no process per node beyond its agent. What it last wrote to each node is the
//! only thing it keeps between passes (a controller started again rewrites every table once).

use std::collections::BTreeMap;

use tracing::{info, warn};

use crate::emulator::services::{self, dns, endpoints, proxy};
use crate::emulator::state::{ClusterDir, ClusterSpec};
use crate::emulator::{io_err, Result};

/// Brings the slices, the node tables and the zone in line with the Services and pods.
pub fn reconcile(dir: &ClusterDir, spec: &ClusterSpec, written: &mut proxy::Written) -> Result<()> {
    let svcs = services::all(dir);
    let pods = dir.pods()?;
    let mut with_eps = Vec::new();
    let mut slices: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
    for svc in svcs {
        let eps = endpoints::of(dir, &svc, &pods);
        if svc.selector.is_some() {
            slices
                .entry(svc.namespace.clone())
                .or_default()
                .extend(endpoints::slices(&svc, &eps));
        }
        with_eps.push((svc, eps));
    }
    if endpoints::store(dir, &slices)? {
        info!("endpoint slices changed");
    }
    dns::store(dir, &dns::Zone::build(&with_eps, &pods)).map_err(io_err("write dns.json"))?;
    for e in written.sync(spec, &with_eps) {
        warn!("proxy rules of {e}");
    }
    Ok(())
}

/// What the controller starts with: no table written yet.
pub fn proxy_state() -> proxy::Written {
    proxy::Written::default()
}
