//! The real packet `flatnet trace` sends along the path it computed: a TCP connection or a UDP
//! datagram to a listener of its own in the destination, which reports the source it saw
//! (so a NAT on the way shows), or an ICMP echo (as `ping` sends it, optionally of a given size
//! with Don't Fragment set, as `ping -M do -s`). A forged source goes out as UDP.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{node_netns, pod_netns, Endpoint, ProbeResult, Proto, Request};
use crate::emulator::names;
use crate::emulator::state::ClusterSpec;
use crate::netns::{self, NetNs};

/// How long the probe waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// IP header (20) and ICMP header (8).
const HEADERS: u32 = 28;

/// One echo request from inside `ns` to `dst`; the IP packet is `size` bytes (DF set) or 64.
fn ping(
    ns: &NetNs,
    dst: Ipv4Addr,
    size: Option<u32>,
    timeout: Duration,
) -> io::Result<ProbeResult> {
    ns.run(|| echo(dst, size, timeout))?
}

fn echo(dst: Ipv4Addr, size: Option<u32>, timeout: Duration) -> io::Result<ProbeResult> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid socket nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    if size.is_some() {
        set_pmtudisc_do(sock.as_raw_fd())?;
    }
    let payload = size.map_or(56, |s| s.saturating_sub(HEADERS)) as usize;
    // The identifier tells our reply apart from other pings in the namespace.
    let id = (std::process::id() & 0xffff) as u16;
    let mut pkt = vec![0u8; 8 + payload];
    pkt[0] = 8; // echo request
    pkt[4..6].copy_from_slice(&id.to_be_bytes());
    pkt[6..8].copy_from_slice(&1u16.to_be_bytes());
    let sum = checksum(&pkt);
    pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the buffer and the address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let result = |answered: bool, detail: String| ProbeResult {
        proto: Proto::Icmp,
        answered,
        seen_source: None,
        detail,
    };
    if sent < 0 {
        let e = io::Error::last_os_error();
        return Ok(result(false, format!("the sender refused the packet: {e}")));
    }
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(result(false, format!("no echo reply from {dst}")));
        }
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
        if n <= 0 {
            continue;
        }
        // SAFETY: the buffer is valid for its length.
        let got = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got < 0 {
            let e = io::Error::last_os_error();
            return Ok(result(false, format!("{e}")));
        }
        let got = got as usize;
        // A raw socket hands over the IP header too.
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        if got < ihl + 8 {
            continue;
        }
        let from = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
        let icmp = &buf[ihl..got];
        let ours = icmp[4..6] == id.to_be_bytes();
        match icmp[0] {
            0 if ours && from == dst => {
                return Ok(result(true, format!("echo reply from {dst}")));
            }
            // Destination unreachable: the quoted packet is ours if it carries our id.
            3 if icmp.len() >= 8 + 20 + 8 => {
                let inner = &icmp[8..];
                let inner_ihl = usize::from(inner[0] & 0x0f) * 4;
                if inner.len() >= inner_ihl + 8
                    && inner[inner_ihl + 4..inner_ihl + 6] == id.to_be_bytes()
                {
                    let why = match icmp[1] {
                        0 => "network unreachable".to_string(),
                        1 => "host unreachable".to_string(),
                        4 => format!(
                            "fragmentation needed: next-hop MTU {}",
                            u16::from_be_bytes([icmp[6], icmp[7]])
                        ),
                        c => format!("code {c}"),
                    };
                    return Ok(result(false, format!("{from} answered: {why}")));
                }
            }
            _ => {}
        }
    }
}

/// A UDP socket bound to `src` even though no interface has it: a forged source, as a
/// misbehaving pod would send. IP_TRANSPARENT rather than IP_FREEBIND: only the former lets
/// the socket's own route lookup accept a source that is not local.
fn udp_from(src: Ipv4Addr) -> io::Result<UdpSocket> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid socket nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let on: libc::c_int = 1;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(src).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: setsockopt with a valid int; bind with a valid sockaddr_in and its length.
    unsafe {
        if libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_TRANSPARENT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
            || libc::bind(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(UdpSocket::from(sock))
}

/// Sets Don't Fragment on a UDP socket, so a packet too large for a link on the way is
/// dropped there rather than fragmented.
fn dont_fragment(sock: &UdpSocket) -> io::Result<()> {
    set_pmtudisc_do(sock.as_raw_fd())
}

fn set_pmtudisc_do(fd: i32) -> io::Result<()> {
    let v: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: setsockopt with a valid int option.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The namespace that answers for an endpoint: a pod's, a node's, or the underlay for its
/// gateway address.
fn endpoint_netns(spec: &ClusterSpec, e: &Endpoint) -> Option<String> {
    match e {
        Endpoint::Pod(p) => Some(pod_netns(spec, p)),
        Endpoint::Node(n) => Some(node_netns(spec, n)),
        Endpoint::Outside(ip) if *ip == spec.bridge_ip() => Some(names::underlay_netns(&spec.name)),
        Endpoint::Outside(_) | Endpoint::Service(_) => None,
    }
}

/// One real packet (and its answer) from `src` to `dst_ip`.
pub(crate) fn send(
    spec: &ClusterSpec,
    src: &Endpoint,
    dst: &Endpoint,
    dst_ip: Ipv4Addr,
    req: &Request,
) -> ProbeResult {
    let result = (|| -> std::io::Result<ProbeResult> {
        let src_ns = NetNs::open(netns::named_path(
            &endpoint_netns(spec, src).expect("a source has a namespace"),
        ))?;
        let dst_ns = endpoint_netns(spec, dst)
            .map(|n| NetNs::open(netns::named_path(&n)))
            .transpose()?;
        if let Some(forged) = req.source {
            return udp_probe(
                &src_ns,
                dst_ns.as_ref(),
                dst_ip,
                req.port,
                req.size,
                Some(forged),
            );
        }
        match req.proto {
            Proto::Icmp => ping(&src_ns, dst_ip, req.size, PROBE_TIMEOUT),
            Proto::Tcp => tcp_probe(&src_ns, dst_ns.as_ref(), dst_ip, req.port),
            Proto::Udp => udp_probe(&src_ns, dst_ns.as_ref(), dst_ip, req.port, req.size, None),
        }
    })();
    result.unwrap_or_else(|e| ProbeResult {
        proto: if req.source.is_some() {
            Proto::Udp
        } else {
            req.proto
        },
        answered: false,
        seen_source: None,
        detail: format!("probe failed: {e}"),
    })
}

/// A TCP connection; a listener in the destination reports the source it saw. Where the
/// port is already taken (`--port` of a server the pod runs), that server answers instead, and
/// a connection is all the probe learns.
fn tcp_probe(
    src: &NetNs,
    dst: Option<&NetNs>,
    dst_ip: Ipv4Addr,
    port: Option<u16>,
) -> std::io::Result<ProbeResult> {
    let listener = match dst {
        Some(ns) => {
            match ns.run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port.unwrap_or(0))))? {
                Ok(l) => Some(l),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => None,
                Err(e) => return Err(e),
            }
        }
        None => None,
    };
    let port = match &listener {
        Some(l) => l.local_addr()?.port(),
        None => port.unwrap_or(80),
    };
    let ours = listener.is_some();
    let stop = AtomicBool::new(false);
    let target = SocketAddrV4::new(dst_ip, port);
    let result = |answered, seen_source, detail| ProbeResult {
        proto: Proto::Tcp,
        answered,
        seen_source,
        detail,
    };
    std::thread::scope(|s| {
        if let Some(l) = listener {
            let stop = &stop;
            s.spawn(move || crate::emulator::check::serve(l, stop));
        }
        let outcome = src.run(|| {
            if ours {
                crate::emulator::check::exchange(SocketAddr::V4(target), None)
            } else {
                match TcpStream::connect_timeout(&SocketAddr::V4(target), PROBE_TIMEOUT) {
                    Ok(_) => crate::emulator::check::Outcome::Ok {
                        seen: dst_ip.into(),
                    },
                    Err(e) => crate::emulator::check::Outcome::Failed {
                        error: format!("{target}: {e}"),
                    },
                }
            }
        });
        stop.store(true, Ordering::SeqCst);
        Ok(match outcome? {
            crate::emulator::check::Outcome::Ok { .. } if !ours => result(
                true,
                None,
                format!("connected to {target} (a server already listening there answered)"),
            ),
            crate::emulator::check::Outcome::Ok { seen }
            | crate::emulator::check::Outcome::Nat { seen } => result(
                true,
                match seen {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                },
                format!("connected to {target}; the receiver saw {seen}"),
            ),
            crate::emulator::check::Outcome::Failed { error } => result(false, None, error),
        })
    })
}

/// A UDP datagram; a socket in the destination answers with the source it saw.
fn udp_probe(
    src: &NetNs,
    dst: Option<&NetNs>,
    dst_ip: Ipv4Addr,
    port: Option<u16>,
    size: Option<u32>,
    forged: Option<Ipv4Addr>,
) -> std::io::Result<ProbeResult> {
    let server = match dst {
        Some(ns) => Some(ns.run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port.unwrap_or(0))))??),
        None => None,
    };
    let port = match &server {
        Some(s) => s.local_addr()?.port(),
        None => port.unwrap_or(53),
    };
    let target = SocketAddrV4::new(dst_ip, port);
    // IP and UDP headers take 28 bytes of the packet.
    let payload = vec![0u8; size.map_or(8, |s| s.saturating_sub(28) as usize)];
    std::thread::scope(|s| {
        if let Some(server) = &server {
            server.set_read_timeout(Some(PROBE_TIMEOUT))?;
            s.spawn(move || {
                let mut buf = vec![0u8; 65536];
                if let Ok((_, peer)) = server.recv_from(&mut buf) {
                    let _ = server.send_to(peer.ip().to_string().as_bytes(), peer);
                }
            });
        }
        src.run(|| -> std::io::Result<ProbeResult> {
            let sock = match forged {
                Some(ip) => udp_from(ip)?,
                None => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?,
            };
            if size.is_some() {
                dont_fragment(&sock)?;
            }
            sock.set_read_timeout(Some(PROBE_TIMEOUT))?;
            sock.send_to(&payload, SocketAddr::V4(target))?;
            let mut buf = [0u8; 64];
            Ok(match sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    let seen = String::from_utf8_lossy(&buf[..n]).parse().ok();
                    ProbeResult {
                        proto: Proto::Udp,
                        answered: true,
                        seen_source: seen,
                        detail: format!(
                            "{target} answered; it saw {}",
                            seen.map_or("?".into(), |s: Ipv4Addr| s.to_string())
                        ),
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    ProbeResult {
                        proto: Proto::Udp,
                        answered: false,
                        seen_source: None,
                        detail: format!(
                            "no answer from {target} within {}s",
                            PROBE_TIMEOUT.as_secs()
                        ),
                    }
                }
                Err(e) => ProbeResult {
                    proto: Proto::Udp,
                    answered: false,
                    seen_source: None,
                    detail: format!("no answer from {target}: {e}"),
                },
            })
        })?
    })
}

/// The reply tuple of the probe's conntrack entry: (the endpoint, where the reply goes).
pub(crate) type Reply = (SocketAddrV4, SocketAddrV4);

/// A TCP connection or a UDP datagram to a Service's `vip:port`, with a listener of the
/// probe's own on each candidate endpoint's target port (an endpoint that already serves
/// there answers for itself); then the conntrack entry of the probe's own source port, in
/// `ct_netns` where the DNAT happened, says which endpoint it went to and where the reply
/// goes (elsewhere than the sender: masqueraded).
pub(crate) fn send_service(
    spec: &ClusterSpec,
    src: &Endpoint,
    vip: Ipv4Addr,
    req: &Request,
    targets: &[(String, SocketAddrV4)],
    ct_netns: &str,
) -> (ProbeResult, Option<Reply>) {
    let target = SocketAddrV4::new(vip, req.port.unwrap_or(80));
    let result = |answered, seen_source, detail| ProbeResult {
        proto: req.proto,
        answered,
        seen_source,
        detail,
    };
    let run = || -> io::Result<(ProbeResult, Option<Reply>)> {
        let src_ns = NetNs::open(netns::named_path(
            &endpoint_netns(spec, src).expect("a source has a namespace"),
        ))?;
        let ct_ns = NetNs::open(netns::named_path(ct_netns))?;
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        let mut mine = Vec::new();
        for (ns, at) in targets {
            let ns = NetNs::open(netns::named_path(ns))?;
            let bound = match req.proto {
                Proto::Tcp => ns
                    .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, at.port())))?
                    .map(|l| tcp.push(l)),
                _ => ns
                    .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, at.port())))?
                    .map(|u| udp.push(u)),
            };
            match bound {
                Ok(()) => mine.push(*at),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
        }
        let ours = |ep: &SocketAddrV4| mine.contains(ep);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for l in tcp {
                let stop = &stop;
                s.spawn(move || crate::emulator::check::serve(l, stop));
            }
            for u in &udp {
                let stop = &stop;
                s.spawn(move || serve_udp(u, stop));
            }
            let out = (|| -> io::Result<(ProbeResult, Option<Reply>)> {
                let conntrack = |local: SocketAddr, proto: u8| -> io::Result<Option<Reply>> {
                    let SocketAddr::V4(local) = local else {
                        return Ok(None);
                    };
                    ct_ns.run(|| super::conntrack::reply_of(proto, (local, target)))?
                };
                if req.proto == Proto::Tcp {
                    let conn = src_ns.run(|| {
                        TcpStream::connect_timeout(&SocketAddr::V4(target), PROBE_TIMEOUT)
                    })?;
                    let mut conn = match conn {
                        Ok(c) => c,
                        Err(e) => return Ok((result(false, None, format!("{target}: {e}")), None)),
                    };
                    let reply = conntrack(conn.local_addr()?, libc::IPPROTO_TCP as u8)?;
                    let Some((ep, _)) = reply.filter(|(ep, _)| ours(ep)) else {
                        let detail = match reply {
                            Some((ep, _)) => format!(
                                "connected to {target}, DNATed to {ep} (whose own server answered)"
                            ),
                            None => format!("connected to {target}"),
                        };
                        return Ok((result(true, None, detail), reply));
                    };
                    conn.set_read_timeout(Some(PROBE_TIMEOUT))?;
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut conn, &mut text)?;
                    let seen = text.trim().parse::<Ipv4Addr>().ok();
                    let detail = format!(
                        "connected to {target}, DNATed to {ep}; the receiver saw {}",
                        seen.map_or("?".into(), |s| s.to_string())
                    );
                    return Ok((result(true, seen, detail), reply));
                }
                let (sock, answer) = src_ns.run(|| -> io::Result<_> {
                    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                    sock.set_read_timeout(Some(PROBE_TIMEOUT))?;
                    sock.send_to(b"flatnet trace", SocketAddr::V4(target))?;
                    let mut buf = [0u8; 64];
                    let answer = sock
                        .recv_from(&mut buf)
                        .ok()
                        .map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned());
                    Ok((sock, answer))
                })??;
                let reply = conntrack(sock.local_addr()?, libc::IPPROTO_UDP as u8)?;
                let to = reply.map_or(String::new(), |(ep, _)| format!(", DNATed to {ep}"));
                Ok(match answer {
                    Some(a) => {
                        let seen = a.trim().parse::<Ipv4Addr>().ok();
                        let detail = format!(
                            "{target} answered{to}; the receiver saw {}",
                            seen.map_or("?".into(), |s| s.to_string())
                        );
                        (result(true, seen, detail), reply)
                    }
                    None => (
                        result(
                            false,
                            None,
                            format!(
                                "no answer from {target}{to} within {}s{}",
                                PROBE_TIMEOUT.as_secs(),
                                match reply {
                                    Some((ep, _)) if !ours(&ep) => {
                                        " (a server of the endpoint's own has the port, and \
                                         did not answer the probe's datagram)"
                                    }
                                    _ => "",
                                }
                            ),
                        ),
                        reply,
                    ),
                })
            })();
            stop.store(true, Ordering::SeqCst);
            out
        })
    };
    run().unwrap_or_else(|e| (result(false, None, format!("probe failed: {e}")), None))
}

/// Answers each datagram with the source it came from, until `stop`.
fn serve_udp(sock: &UdpSocket, stop: &AtomicBool) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(peer.ip().to_string().as_bytes(), peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_an_echo_request() {
        // From RFC 1071's example: 0001 f203 f4f5 f6f7 sums to 0xddf2, so the checksum is 0x220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }
}
