//! The VXLAN device of one underlay family: `flatnet.4` over IPv4, `flatnet.6` over IPv6.
//! Checked on every pass: a device with other settings is made again, a rewritten MAC is set
//! back.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use tracing::{info, warn};

use super::{vtep_ip, Config};
use crate::netlink::{self, mac_string, Netlink, VxlanSpec};
use crate::registry::NodeRecord;

/// Bytes the tunnel adds to every packet over an IPv4 underlay: outer IPv4 (20), UDP (8),
/// VXLAN (8) and inner Ethernet (14).
pub const OVERHEAD_V4: u32 = 50;
/// The same over an IPv6 underlay: the outer header is 40 bytes.
pub const OVERHEAD_V6: u32 = 70;

/// The device carrying tunnels over the underlay family of `local`.
pub fn device_name(local: IpAddr) -> &'static str {
    if local.is_ipv4() {
        "flatnet.4"
    } else {
        "flatnet.6"
    }
}

pub(super) fn is_ours(name: &str) -> bool {
    name == "flatnet.4" || name == "flatnet.6"
}

/// The VTEP MAC of the node whose underlay address is `ip`: locally administered, unicast,
/// and a function of the address alone, so that every peer knows it without asking, and a
/// MAC someone rewrites is known to be wrong. IPv4 fits whole (`0e:fa:` + the four bytes);
/// IPv6 is hashed (`0e:fb:` + 32 bits of FNV-1a), and two peers hashing to one MAC are
/// refused (see `entries::without_collisions`).
pub fn vtep_mac(ip: IpAddr) -> [u8; 6] {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            [0x0e, 0xfa, o[0], o[1], o[2], o[3]]
        }
        IpAddr::V6(a) => {
            let mut h: u32 = 0x811c_9dc5;
            for b in a.octets() {
                h ^= u32::from(b);
                h = h.wrapping_mul(0x0100_0193);
            }
            let o = h.to_be_bytes();
            [0x0e, 0xfb, o[0], o[1], o[2], o[3]]
        }
    }
}

/// Whether `mac` is one flatnet derives (so an FDB entry of it on flatnet's device is
/// flatnet's).
pub(super) fn is_derived(mac: [u8; 6]) -> bool {
    mac[0] == 0x0e && (mac[1] == 0xfa || mac[1] == 0xfb)
}

/// The device for `local`'s family, made or repaired; returns its index.
pub(super) async fn ensure(
    cfg: &Config,
    own: &NodeRecord,
    local: IpAddr,
    netlink: &Netlink,
) -> Result<u32, netlink::Error> {
    let name = device_name(local);
    let mac = vtep_mac(local);
    let mut link = netlink.link_by_name(name).await?;
    if let Some(l) = &link {
        let info = netlink.vxlan_info(l.index).await?;
        let right = info.as_ref().is_some_and(|i| {
            i.vni == Some(cfg.vni)
                && i.port == Some(cfg.port)
                && i.local == Some(local)
                && i.learning == Some(false)
        });
        if !right {
            warn!(device = name, found = ?info, "the tunnel device has other settings: making it again");
            netlink.delete_link(l.index).await?;
            link = None;
        }
    }
    let link = match link {
        Some(l) => l,
        None => {
            let mtu = uplink_mtu(netlink, local).await?
                - if local.is_ipv4() {
                    OVERHEAD_V4
                } else {
                    OVERHEAD_V6
                };
            netlink
                .create_vxlan(&VxlanSpec {
                    name,
                    vni: cfg.vni,
                    port: cfg.port,
                    local,
                    mac,
                    mtu,
                })
                .await?;
            info!(device = name, vni = cfg.vni, port = cfg.port, %local, mac = %mac_string(mac), mtu,
                "tunnel device created");
            netlink
                .link_by_name(name)
                .await?
                .ok_or_else(|| netlink::Error::Io {
                    op: format!("find {name} just created"),
                    cause: std::io::ErrorKind::NotFound.into(),
                })?
        }
    };
    if link.mac != Some(mac) {
        netlink.set_mac(link.index, mac).await?;
        warn!(device = name, found = %link.mac_string(), set = %mac_string(mac),
            "the tunnel device's MAC was rewritten: set back");
    }
    // The VTEP addresses: traffic the node itself sends into the tunnel leaves with one of
    // them, inside this node's pod CIDR, which the peer's source check accepts.
    let have = netlink.addresses(link.index).await?;
    for cidr in &own.pod_cidrs {
        let vtep = vtep_ip(*cidr);
        let host = IpNetwork::new(vtep, if vtep.is_ipv4() { 32 } else { 128 })
            .expect("a host prefix is valid");
        if !have.iter().any(|a| a.ip() == vtep) {
            netlink.add_address(link.index, host).await?;
        }
    }
    if !link.up {
        netlink.set_up(link.index).await?;
    }
    if checksum_offload_broken() && netlink.tx_checksum(name)? {
        netlink.set_tx_checksum(name, false)?;
        info!(
            device = name,
            "tx checksum offload turned off: this kernel is older than 5.7 \
            (kubernetes #88986)"
        );
    }
    Ok(link.index)
}

/// Whether the running kernel's VXLAN tx checksum offload can corrupt outer packets that get
/// NATed (kubernetes #88986, fixed in 5.7). flatnet never NATs its own tunnel packets, but
/// another masquerade rule on the node might; the offload is turned off there, as flannel and
/// Calico do.
fn checksum_offload_broken() -> bool {
    static BROKEN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *BROKEN.get_or_init(|| {
        let release = kernel_release();
        let broken = older_than_5_7(&release);
        if broken {
            info!(%release, "kernel older than 5.7: tx checksum offload goes off on the tunnel devices");
        }
        broken
    })
}

/// `uname -r`; empty if it cannot be read.
fn kernel_release() -> String {
    // SAFETY: uname(2) fills the zeroed struct it is given; its fields are NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// Whether `release` (`5.4.0-150-generic`, `6.18.44`) is a kernel older than 5.7. One that
/// does not parse counts as old: the offload off costs some speed, the bug costs packets.
fn older_than_5_7(release: &str) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) < (5, 7),
        _ => true,
    }
}

/// The MTU of the link that holds `local`; 1500 if none does.
async fn uplink_mtu(netlink: &Netlink, local: IpAddr) -> Result<u32, netlink::Error> {
    let Some((index, _)) = netlink
        .all_addresses()
        .await?
        .into_iter()
        .find(|(_, a)| a.ip() == local)
    else {
        return Ok(1500);
    };
    Ok(netlink.link_by_index(index).await?.map_or(1500, |l| l.mtu))
}

/// Deletes the device of the family of `v4` if it is there.
pub(super) async fn remove(netlink: &Netlink, v4: bool) -> Result<(), netlink::Error> {
    let name = if v4 { "flatnet.4" } else { "flatnet.6" };
    if let Some(l) = netlink.link_by_name(name).await? {
        netlink.delete_link(l.index).await?;
        info!(device = name, "tunnel device removed: no peer needs it");
    }
    Ok(())
}

/// Deletes both devices (`--uninstall`); returns how many there were.
pub async fn remove_all(netlink: &Netlink) -> Result<usize, netlink::Error> {
    let mut n = 0;
    for v4 in [true, false] {
        let name = if v4 { "flatnet.4" } else { "flatnet.6" };
        if let Some(l) = netlink.link_by_name(name).await? {
            netlink.delete_link(l.index).await?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_mac_holds_the_address_and_is_local_unicast() {
        let mac = vtep_mac("172.19.0.3".parse().unwrap());
        assert_eq!(mac_string(mac), "0e:fa:ac:13:00:03");
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        assert!(is_derived(mac));
    }

    #[test]
    fn kernels_before_5_7_have_the_checksum_bug() {
        for old in [
            "4.19.0-26-amd64",
            "5.4.0-150-generic",
            "5.6.19",
            "3.10.0-1160.el7.x86_64",
        ] {
            assert!(older_than_5_7(old), "{old}");
        }
        for new in [
            "5.7.0",
            "5.10.0-28-cloud-amd64",
            "6.1.0-18-amd64",
            "6.18.44-fc-v1045",
            "10.0",
        ] {
            assert!(!older_than_5_7(new), "{new}");
        }
        for garbage in ["", "linux", "5", "x.y"] {
            assert!(older_than_5_7(garbage), "{garbage:?}");
        }
        assert!(!kernel_release().is_empty());
    }

    #[test]
    fn an_ipv6_mac_is_a_stable_hash() {
        let a = vtep_mac("fc00::3".parse().unwrap());
        assert_eq!(a, vtep_mac("fc00::3".parse().unwrap()));
        assert_ne!(a, vtep_mac("fc00::4".parse().unwrap()));
        assert_eq!(&a[..2], &[0x0e, 0xfb]);
    }
}
