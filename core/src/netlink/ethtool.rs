//! A device's tx checksum offload, read and set with the SIOCETHTOOL ioctl (what the
//! `ethtool` tool itself uses; it is not run). The agent turns it off on its VXLAN devices on
//! kernels older than 5.7, whose VXLAN checksum offload corrupts NATed outer packets
//! (kubernetes #88986).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{Netlink, Result};

/// <linux/sockios.h>
const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// <linux/ethtool.h>: get and set tx checksum offload (`struct ethtool_value`).
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with its union as `ifr_data`: 16 bytes of name, then a 24-byte union.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _rest: [u8; 24 - std::mem::size_of::<*mut EthtoolValue>()],
}

impl Netlink {
    /// Whether tx checksum offload is on for device `name` of this handle's namespace.
    pub fn tx_checksum(&self, name: &str) -> Result<bool> {
        let on = self.ethtool(name, ETHTOOL_GTXCSUM, 0)?;
        Ok(on != 0)
    }

    /// Turns tx checksum offload of device `name` on or off (the kernel turns off the
    /// features that depend on it, TSO among them, with it).
    pub fn set_tx_checksum(&self, name: &str, on: bool) -> Result<()> {
        self.ethtool(name, ETHTOOL_STXCSUM, u32::from(on))
            .map(|_| ())
    }

    /// One `struct ethtool_value` command on `name`, through a socket of this handle's
    /// namespace (the ioctl acts on the devices of the namespace the socket was made in).
    fn ethtool(&self, name: &str, cmd: u32, data: u32) -> Result<u32> {
        let op = || format!("ethtool command {cmd:#x} on {name}");
        let err = |cause: io::Error| super::Error::Io { op: op(), cause };
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(err(io::ErrorKind::InvalidInput.into()));
        }
        let socket = match self.netns() {
            Some(ns) => ns.run(socket).map_err(err)?,
            None => socket(),
        }
        .map_err(err)?;
        let mut value = EthtoolValue { cmd, data };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: &mut value,
            _rest: [0; 24 - std::mem::size_of::<*mut EthtoolValue>()],
        };
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: SIOCETHTOOL reads the ifreq and the ethtool_value it points to, and writes
        // back into the latter; both live on this stack frame for the whole call.
        let r = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
        if r < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(value.data)
    }
}

/// A datagram socket, the handle the ioctl goes through.
fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; a non-negative result is a new fd we own.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
