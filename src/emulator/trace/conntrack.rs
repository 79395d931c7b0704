//! Which endpoint a Service connection was DNATed to, asked of the kernel's connection tracking
//! over ctnetlink (what `conntrack -G` asks): the entry of the probe's own original tuple, whose
//! reply tuple holds the endpoint (reply source) and any masquerade (reply destination).
//!
//! Conntrack rather than the proxy table's counters: the entry is keyed by the probe's own
//! source port, so other traffic to the same Service at the same moment cannot be mistaken
//! for it, and the proxy's rules need no counters of their own.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// From linux/netfilter/nfnetlink.h and nfnetlink_conntrack.h (libc has the netlink basics).
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// The reply tuple (source, destination) of the connection `orig` of IP protocol `proto`
/// (6 or 17) in the calling thread's namespace; None when the kernel tracks no such
/// connection.
pub fn reply_of(
    proto: u8,
    orig: (SocketAddrV4, SocketAddrV4),
) -> io::Result<Option<(SocketAddrV4, SocketAddrV4)>> {
    let sock = socket()?;
    let req = request(proto, orig);
    // SAFETY: a send of our own buffer on our own netlink socket.
    if unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut found = None;
    loop {
        // SAFETY: a receive into a buffer of the length given.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut rest = &buf[..n as usize];
        while rest.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            if len < NLMSG_HDRLEN || len > rest.len() {
                return Err(io::Error::other("malformed ctnetlink answer"));
            }
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            let body = &rest[NLMSG_HDRLEN..len];
            match kind as i32 {
                libc::NLMSG_DONE => return Ok(found),
                libc::NLMSG_ERROR => {
                    let err = body
                        .get(0..4)
                        .map(|e| i32::from_ne_bytes(e.try_into().expect("4 bytes")))
                        .ok_or_else(|| io::Error::other("short ctnetlink error"))?;
                    return match err {
                        0 => Ok(found),
                        e if -e == libc::ENOENT => Ok(None),
                        e => Err(io::Error::from_raw_os_error(-e)),
                    };
                }
                _ if kind == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
                    && body.len() >= NFGENMSG_LEN =>
                {
                    found = reply_tuple(&body[NFGENMSG_LEN..]);
                }
                _ => {}
            }
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
    }
}

/// A blocking ctnetlink socket that gives up on an answer after a second.
fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a timeval of the size given.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

fn attr(b: &mut Vec<u8>, kind: u16, value: &[u8]) {
    b.extend(((4 + value.len()) as u16).to_ne_bytes());
    b.extend(kind.to_ne_bytes());
    b.extend(value);
    b.resize(b.len().next_multiple_of(4), 0);
}

/// IPCTNL_MSG_CT_GET for the original tuple `orig`.
fn request(proto: u8, (src, dst): (SocketAddrV4, SocketAddrV4)) -> Vec<u8> {
    let mut ip = Vec::new();
    attr(&mut ip, CTA_IP_V4_SRC, &src.ip().octets());
    attr(&mut ip, CTA_IP_V4_DST, &dst.ip().octets());
    let mut l4 = Vec::new();
    attr(&mut l4, CTA_PROTO_NUM, &[proto]);
    attr(&mut l4, CTA_PROTO_SRC_PORT, &src.port().to_be_bytes());
    attr(&mut l4, CTA_PROTO_DST_PORT, &dst.port().to_be_bytes());
    let mut tuple = Vec::new();
    attr(&mut tuple, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    attr(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &l4);
    let mut b = vec![0u8; NLMSG_HDRLEN];
    b.extend([libc::AF_INET as u8, 0, 0, 0]);
    attr(&mut b, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
    let len = b.len() as u32;
    b[0..4].copy_from_slice(&len.to_ne_bytes());
    b[4..6].copy_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    b[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    b
}

/// The netlink attributes in `b`: type (flags masked off) and value.
fn attributes(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(b.get(2..4)?.try_into().ok()?) & 0x3fff;
        let value = b.get(4..len)?;
        b = b.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, value))
    })
}

fn find(b: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(b).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

/// The reply tuple of a conntrack entry's attributes.
fn reply_tuple(attrs: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4)> {
    let tuple = find(attrs, CTA_TUPLE_REPLY)?;
    let ip = find(tuple, CTA_TUPLE_IP)?;
    let l4 = find(tuple, CTA_TUPLE_PROTO)?;
    let addr = |k| -> Option<Ipv4Addr> { Some(<[u8; 4]>::try_from(find(ip, k)?).ok()?.into()) };
    let port = |k| -> Option<u16> { Some(u16::from_be_bytes(find(l4, k)?.try_into().ok()?)) };
    Some((
        SocketAddrV4::new(addr(CTA_IP_V4_SRC)?, port(CTA_PROTO_SRC_PORT)?),
        SocketAddrV4::new(addr(CTA_IP_V4_DST)?, port(CTA_PROTO_DST_PORT)?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_the_original_tuple_and_the_reply_reads_back() {
        let orig = (
            "10.244.1.2:40000".parse().unwrap(),
            "10.96.0.11:80".parse().unwrap(),
        );
        let req = request(6, orig);
        assert_eq!(
            req.len(),
            u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize
        );
        // An answer's reply tuple has the same shape as the request's original one.
        let mut attrs = req[NLMSG_HDRLEN + NFGENMSG_LEN..].to_vec();
        attrs[2..4].copy_from_slice(&(CTA_TUPLE_REPLY | NLA_F_NESTED).to_ne_bytes());
        assert_eq!(reply_tuple(&attrs), Some(orig));
    }
}
