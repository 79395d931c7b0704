//! Which endpoint a Service connection was DNATed to, asked of the kernel's connection tracking
//! over ctnetlink (what `conntrack -G` asks): the entry of the probe's own original tuple, whose
//! reply tuple holds the endpoint (reply source) and any masquerade (reply destination).
//!
//! Conntrack rather than the proxy table's counters: the entry is keyed by the probe's own
//! source port, so other traffic to the same Service at the same moment cannot be mistaken
//! for it, and the proxy's rules need no counters of their own.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::nfnetlink::{self, attr, find, NLA_F_NESTED};

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

/// The reply tuple (source, destination) of the connection `orig` of IP protocol `proto`
/// (6 or 17) in the calling thread's namespace; None when the kernel tracks no such
/// connection.
pub fn reply_of(
    proto: u8,
    orig: (SocketAddrV4, SocketAddrV4),
) -> io::Result<Option<(SocketAddrV4, SocketAddrV4)>> {
    let sock = nfnetlink::socket()?;
    let mut found = None;
    let answer = nfnetlink::exchange(
        &sock,
        &request(proto, orig),
        NFNL_SUBSYS_CTNETLINK,
        |kind, attrs| {
            if kind == IPCTNL_MSG_CT_NEW {
                found = reply_tuple(attrs);
            }
        },
    );
    match answer {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        other => other.map(|()| found),
    }
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
    let mut attrs = Vec::new();
    attr(&mut attrs, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
    nfnetlink::request(
        NFNL_SUBSYS_CTNETLINK,
        IPCTNL_MSG_CT_GET,
        libc::NLM_F_ACK as u16,
        libc::AF_INET as u8,
        &attrs,
    )
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
        // The attributes follow the netlink header (16 bytes) and nfgenmsg (4).
        let mut attrs = req[20..].to_vec();
        attrs[2..4].copy_from_slice(&(CTA_TUPLE_REPLY | NLA_F_NESTED).to_ne_bytes());
        assert_eq!(reply_tuple(&attrs), Some(orig));
    }
}
