//! Questions to netfilter over nfnetlink on a blocking socket: the agent reads its nftables
//! table ([`crate::agent::nft`]) and `flatnet trace` reads a conntrack entry with them. One
//! request, its answer messages handed over one by one; no library for the few message types
//! asked (rtnetlink covers routing netlink only).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Set on an attribute's type when its value is more attributes.
pub const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;
/// nfgenmsg: family, version, resource id.
const NFGENMSG_LEN: usize = 4;

/// A blocking, close-on-exec nfnetlink socket in the calling thread's namespace, that gives up
/// on an answer after a second rather than hang its caller.
pub fn socket() -> io::Result<OwnedFd> {
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

/// Appends one attribute to `b`, padded to 4 bytes.
pub fn attr(b: &mut Vec<u8>, kind: u16, value: &[u8]) {
    b.extend(((4 + value.len()) as u16).to_ne_bytes());
    b.extend(kind.to_ne_bytes());
    b.extend(value);
    b.resize(b.len().next_multiple_of(4), 0);
}

/// A request of message `msg` of subsystem `subsys` for protocol family `family`, with
/// `NLM_F_REQUEST` and `flags`, whose attributes are `attrs` (encoded by [`attr`]).
pub fn request(subsys: u16, msg: u16, flags: u16, family: u8, attrs: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; NLMSG_HDRLEN];
    b.extend([family, 0, 0, 0]);
    b.extend(attrs);
    let len = b.len() as u32;
    b[0..4].copy_from_slice(&len.to_ne_bytes());
    b[4..6].copy_from_slice(&((subsys << 8) | msg).to_ne_bytes());
    b[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
    b
}

/// Sends `req` and hands each message of subsystem `subsys` in the answer (its message type
/// and attributes) to `each`, until the ack or the end of a dump; an error answer is the
/// error (ENOENT: nothing of that name).
pub fn exchange(
    sock: &OwnedFd,
    req: &[u8],
    subsys: u16,
    mut each: impl FnMut(u16, &[u8]),
) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    crate::netlink::raw::send(fd, req)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = crate::netlink::raw::recv(fd, &mut buf)?;
        let mut rest = &buf[..n];
        while rest.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            if len < NLMSG_HDRLEN || len > rest.len() {
                return Err(io::Error::other("malformed nfnetlink answer"));
            }
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            let body = &rest[NLMSG_HDRLEN..len];
            match kind as i32 {
                libc::NLMSG_DONE => return Ok(()),
                libc::NLMSG_ERROR => {
                    let err = body
                        .get(0..4)
                        .map(|e| i32::from_ne_bytes(e.try_into().expect("4 bytes")))
                        .ok_or_else(|| io::Error::other("short nfnetlink error"))?;
                    return match err {
                        0 => Ok(()),
                        e => Err(io::Error::from_raw_os_error(-e)),
                    };
                }
                _ if (kind >> 8) == subsys && body.len() >= NFGENMSG_LEN => {
                    each(kind & 0xff, &body[NFGENMSG_LEN..]);
                }
                _ => {}
            }
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
    }
}

/// The netlink attributes in `b`: type (flags masked off) and value.
pub fn attributes(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(b.get(2..4)?.try_into().ok()?) & 0x3fff;
        let value = b.get(4..len)?;
        b = b.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, value))
    })
}

/// The value of the first attribute of type `kind` in `b`.
pub fn find(b: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(b).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_sized_and_its_attributes_read_back() {
        let mut inner = Vec::new();
        attr(&mut inner, 1, &[10, 0, 0, 1]);
        let mut attrs = Vec::new();
        attr(&mut attrs, 2 | NLA_F_NESTED, &inner);
        attr(&mut attrs, 3, b"abc\0");
        let req = request(1, 1, 0, libc::AF_INET as u8, &attrs);
        assert_eq!(
            req.len(),
            u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize
        );
        let body = &req[NLMSG_HDRLEN + NFGENMSG_LEN..];
        assert_eq!(find(find(body, 2).unwrap(), 1), Some(&[10, 0, 0, 1][..]));
        assert_eq!(find(body, 3), Some(&b"abc\0"[..]));
        assert_eq!(find(body, 4), None);
    }
}
