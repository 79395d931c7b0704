//! Forwarding on the node, as ADD needs it for the families it wires.
//!
//! IPv4: `net.ipv4.ip_forward=1`, as every CNI plugin that routes sets it.
//!
//! IPv6: the kernel forwards only with `net.ipv6.conf.all.forwarding=1` (ip6_forward reads the
//! `all` value; per-interface `forwarding` only makes an interface behave as a router). But
//! setting it also sets `forwarding=1` on every interface, and an interface with
//! `accept_ra=1` then ignores router advertisements: a node whose uplink is configured by
//! SLAAC would lose its default route at the next RA expiry. So, as Docker and kindnet do,
//! flatnet first moves every interface with `accept_ra=1` (and `default`, for interfaces that
//! appear later) to `accept_ra=2` — "accept RAs even when forwarding" — and only then sets
//! `all.forwarding=1`. `accept_ra=0` stays 0, and a node that already forwards is left alone.
//!
//! Why the plugin does it rather than refuse and leave it to the node: the node operator who
//! gives a node an IPv6 pod CIDR wants its pods to reach the rest of the cluster, which cannot
//! happen without forwarding; refusing would fail every pod on every node whose image does
//! not set it (and kubeadm only warns). The one way enabling it can hurt a node — an RA-fed
//! uplink going deaf to RAs — is what the accept_ra=2 step prevents. What this changes is
//! logged once, when it changes anything.

use std::io;

use tracing::info;

use crate::netns::{ensure_sysctl, read_sysctl};

pub fn enable_ipv4() -> io::Result<()> {
    ensure_sysctl("net.ipv4.ip_forward", "1")
}

pub fn enable_ipv6() -> io::Result<()> {
    if read_sysctl("net/ipv6/conf/all/forwarding")? == "1" {
        return Ok(());
    }
    let mut kept = Vec::new();
    for entry in std::fs::read_dir("/proc/sys/net/ipv6/conf")? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == "all" {
            continue;
        }
        let key = format!("net/ipv6/conf/{name}/accept_ra");
        match read_sysctl(&key) {
            Ok(v) if v == "1" => {
                ensure_sysctl(&key, "2")?;
                kept.push(name.to_string());
            }
            // An interface that went away since the listing has nothing to keep.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
            Ok(_) => {}
        }
    }
    ensure_sysctl("net/ipv6/conf/all/forwarding", "1")?;
    info!(
        accept_ra_2 = ?kept,
        "enabled IPv6 forwarding; interfaces that accepted router advertisements still do"
    );
    Ok(())
}
