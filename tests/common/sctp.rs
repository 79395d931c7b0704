//! SCTP on the wire without the kernel's SCTP: this machine's kernel has no SCTP sockets, so an
//! INIT chunk is crafted by hand (with its CRC32c, as RFC 9260 wants, so that a checksumming
//! conntrack would take it as valid) and sent from a raw IPv4 socket of protocol 132; the
//! receiver is a raw socket of the same protocol, which gets every SCTP packet delivered to its
//! namespace, with the IP header.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// CRC32c (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: a 32-byte packet needs
/// no table.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An SCTP packet of one INIT chunk from `sport` to `dport`, carrying `tag` as its initiate
/// tag (which tells one probe's packet from another's at the receiver).
pub fn init(sport: u16, dport: u16, tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend(sport.to_be_bytes());
    p.extend(dport.to_be_bytes());
    p.extend(0u32.to_be_bytes()); // verification tag: 0 in an INIT
    p.extend(0u32.to_be_bytes()); // checksum, filled in below
    p.extend([1, 0]); // chunk type INIT, flags
    p.extend(20u16.to_be_bytes()); // chunk length
    p.extend(tag.to_be_bytes()); // initiate tag
    p.extend(65_535u32.to_be_bytes()); // advertised receiver window
    p.extend(1u16.to_be_bytes()); // outbound streams
    p.extend(1u16.to_be_bytes()); // inbound streams
    p.extend(tag.to_be_bytes()); // initial TSN

    // The CRC32c goes into the packet least significant byte first (RFC 9260, appendix A).
    let sum = crc32c(&p);
    p[8..12].copy_from_slice(&sum.to_le_bytes());
    p
}

/// A raw IPv4 socket of protocol SCTP in the calling thread's namespace.
pub fn raw_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 132) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `packet` to `dst` from a raw socket (the kernel adds the IP header).
pub fn send(sock: &OwnedFd, dst: Ipv4Addr, packet: &[u8]) -> io::Result<()> {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the buffer and the address are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether an INIT with initiate tag `tag` to `dport` arrives on the raw socket `sock` within
/// `timeout`, with its checksum intact; other packets are skipped.
pub fn received(sock: &OwnedFd, dport: u16, tag: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) } <= 0 {
            continue;
        }
        // SAFETY: a receive into a buffer of the length given.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            continue;
        }
        let pkt = &buf[..n as usize];
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        let Some(sctp) = pkt.get(ihl..).filter(|s| s.len() >= 32) else {
            continue;
        };
        let mut zeroed = sctp.to_vec();
        zeroed[8..12].fill(0);
        let intact = crc32c(&zeroed).to_le_bytes() == sctp[8..12];
        if sctp[2..4] == dport.to_be_bytes() && sctp[12] == 1 && sctp[16..20] == tag.to_be_bytes() {
            return intact;
        }
    }
}
