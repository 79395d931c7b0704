//! Anti-spoofing end to end: a pod sends TCP, UDP and ICMP with addresses that are not its own,
//! crafted on a raw socket inside its namespace, to a pod on its node and to a pod on another
//! node, under each `rp_filter` value (0, 1, 2) on the nodes and the host veths. A sniffer
//! (an AF_PACKET socket) in each receiver's namespace must see none of them, and the node's
//! counter must count each one; the same packets with the pod's own address, sent right after,
//! must arrive. Every packet carries a unique marker, so the sniffers tell them apart from
//! anything else on the wire.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::cluster::{eventually, TestCluster};
use common::{node_ns, wait_until, TempDir, TestNs};
use flatnet::emulator::state::{Family, NodeSpec, PodRecord};
use flatnet::netns::{self, NetNs};
use flatnet::registry::{NodeRecord, Registry};

const CONVERGE: Duration = Duration::from_secs(10);
const MARKER: &[u8] = b"FNSPOOF";

#[derive(Debug, Clone, Copy)]
enum Proto {
    Tcp,
    Udp,
    Icmp,
}

const PROTOS: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Icmp];

/// One crafted packet, identified by `id` in its payload.
#[derive(Debug, Clone, Copy)]
struct Probe {
    id: u32,
    src: IpAddr,
    dst: IpAddr,
    proto: Proto,
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The whole IP packet (the kernel fills in the IPv4 header's ID and checksum).
fn packet(p: &Probe) -> Vec<u8> {
    let v6 = p.dst.is_ipv6();
    let mut payload = MARKER.to_vec();
    payload.extend_from_slice(&p.id.to_be_bytes());
    let (next, mut seg, at) = match p.proto {
        Proto::Tcp => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&40000u16.to_be_bytes());
            h[2..4].copy_from_slice(&7u16.to_be_bytes());
            h[4..8].copy_from_slice(&p.id.to_be_bytes());
            h[12] = 5 << 4;
            h[13] = 0x02; // SYN
            h[14..16].copy_from_slice(&65535u16.to_be_bytes());
            (6u8, h, 16)
        }
        Proto::Udp => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&40000u16.to_be_bytes());
            h[2..4].copy_from_slice(&7u16.to_be_bytes());
            h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            (17, h, 6)
        }
        Proto::Icmp => {
            // Echo request, ICMP or ICMPv6.
            let h = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 1, 0, 1];
            (if v6 { 58 } else { 1 }, h, 2)
        }
    };
    seg.extend_from_slice(&payload);
    let len = seg.len();
    // ICMPv4 has no pseudo-header; everything else does.
    let pseudo = match (p.proto, v6) {
        (Proto::Icmp, false) => Vec::new(),
        (_, false) => [
            octets(p.src),
            octets(p.dst),
            vec![0, next],
            (len as u16).to_be_bytes().to_vec(),
        ]
        .concat(),
        (_, true) => [
            octets(p.src),
            octets(p.dst),
            (len as u32).to_be_bytes().to_vec(),
            vec![0, 0, 0, next],
        ]
        .concat(),
    };
    let c = fold(sum16(&pseudo) + sum16(&seg));
    seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
    let mut ip = if v6 {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(len as u16).to_be_bytes());
        h.extend_from_slice(&[next, 64]);
        h
    } else {
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&((20 + len) as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0, 0x40, 0, 64, next, 0, 0]);
        h
    };
    ip.extend_from_slice(&octets(p.src));
    ip.extend_from_slice(&octets(p.dst));
    ip.extend_from_slice(&seg);
    ip
}

fn sockaddr(a: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage; the casts write within it.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as _;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as _;
            sin6.sin6_addr.s6_addr = a.octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Sends `probes` from inside `ns` on raw sockets (IPPROTO_RAW: the header is ours, source
/// included). Panics if the kernel refuses one.
fn send(ns: &NetNs, probes: &[Probe]) {
    let probes = probes.to_vec();
    ns.run(move || {
        for p in &probes {
            let family = if p.dst.is_ipv6() {
                libc::AF_INET6
            } else {
                libc::AF_INET
            };
            // SAFETY: plain socket calls on a fd this closure owns and closes.
            unsafe {
                let fd = libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW);
                assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
                let bytes = packet(p);
                let (ss, len) = sockaddr(p.dst);
                let n = libc::sendto(
                    fd,
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    &ss as *const _ as *const libc::sockaddr,
                    len,
                );
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                assert_eq!(n, bytes.len() as isize, "send {p:?}: {err}");
            }
        }
    })
    .expect("enter the sender's netns");
}

/// An AF_PACKET socket on every interface of a namespace, recording the probe ids of the
/// packets that arrive there, until dropped.
struct Sniffer {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<u32>>>,
    thread: Option<JoinHandle<()>>,
}

impl Sniffer {
    fn start(ns: Arc<NetNs>) -> Sniffer {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            ns.enter().expect("enter the receiver's netns");
            // SAFETY: plain socket calls on a fd this thread owns and closes.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_DGRAM,
                    i32::from((libc::ETH_P_ALL as u16).to_be()),
                )
            };
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            // SAFETY: `tv` outlives the call, which copies it.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                );
            }
            tx.send(()).unwrap();
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                // SAFETY: all-zero is a valid sockaddr_ll; recvfrom writes within `buf` and
                // `from`, whose lengths it is given.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: as above.
                let n = unsafe {
                    libc::recvfrom(
                        fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        &mut from as *mut _ as *mut libc::sockaddr,
                        &mut len,
                    )
                };
                if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                let pkt = &buf[..n as usize];
                if let Some(at) = pkt.windows(MARKER.len()).position(|w| w == MARKER) {
                    if let Some(id) = pkt.get(at + MARKER.len()..at + MARKER.len() + 4) {
                        let id = u32::from_be_bytes(id.try_into().unwrap());
                        seen2.lock().unwrap().insert(id);
                    }
                }
            }
            // SAFETY: closing the socket this thread opened.
            unsafe { libc::close(fd) };
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("sniffer ready");
        Sniffer {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> BTreeSet<u32> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open(name: &str) -> Arc<NetNs> {
    Arc::new(NetNs::open(netns::named_path(name)).expect("open netns"))
}

fn pods(c: &TestCluster) -> Vec<PodRecord> {
    serde_json::from_str(&c.ok(&["get", "pods", "-o", "record"])).expect("pods as JSON")
}

fn nodes(c: &TestCluster) -> Vec<NodeSpec> {
    serde_json::from_str(&c.ok(&["get", "nodes", "-o", "record"])).expect("nodes as JSON")
}

/// `ip netns exec NS args…`, its output whatever the exit status.
fn exec(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("spawn")
}

/// A named counter of flatnet's table in `ns`, read with `nft` (the independent witness).
fn counter(ns: &str, name: &str) -> u64 {
    let out = exec(ns, &["nft", "list", "counter", "inet", "flatnet", name]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words.find(|w| *w == "packets");
    words
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter {name} in {ns}: {text}"))
}

fn set_rp_filter(ns: &str, value: &str) {
    let h = open(ns);
    let links = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show"])
        .output()
        .unwrap();
    let mut keys = vec!["all".to_string(), "default".to_string()];
    keys.extend(
        String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .filter(|n| !n.is_empty()),
    );
    for k in keys {
        netns::write_sysctl(&h, &format!("net/ipv4/conf/{k}/rp_filter"), value)
            .unwrap_or_else(|e| panic!("{ns}: rp_filter of {k}: {e}"));
    }
}

fn read_sysctl(ns: &str, key: &str) -> String {
    let path = Path::new("/proc/sys").join(key);
    open(ns)
        .run(move || std::fs::read_to_string(path))
        .unwrap()
        .unwrap()
        .trim()
        .to_string()
}

/// The link-local address of `dev` in `ns`, once DAD has finished with it.
fn link_local(ns: &str, dev: &str) -> Ipv6Addr {
    let mut found = None;
    let ok = wait_until(CONVERGE, || {
        let out = Command::new("ip")
            .args([
                "-n", ns, "-6", "-o", "addr", "show", "dev", dev, "scope", "link",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        found = text
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next()?.parse().ok());
        found.is_some() && !text.contains("tentative")
    });
    assert!(ok, "{ns}: no usable link-local address on {dev}");
    found.unwrap()
}

/// Stops a process of this test's cluster for a while (SIGSTOP), and lets it go on again
/// (SIGCONT) on drop, also when the test fails.
struct Paused(u32);

impl Paused {
    fn new(pid: u32) -> Paused {
        // SAFETY: a signal to a pid of this test's own cluster, read from its state just now.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: the same pid as in `new`.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// The issue's "done when": for each rp_filter value, a pod sends TCP, UDP and ICMP with
/// another pod's address, a node's address, an unassigned pod-CIDR address and an outside
/// address, to a pod on its node and to a pod on the other node: nothing arrives and the
/// counters move by exactly the number sent; the pod's own packets, its TCP to other pods and
/// node → pod probes still work. In this IPv4-only cluster the host veth has IPv6 off, so the
/// pod's IPv6 (global sources to the other node, a router advertisement) goes nowhere at all.
/// Without the table (its agent paused), the same IPv4 spoofs do arrive.
#[test]
fn spoofed_packets_are_dropped_at_the_node_whatever_rp_filter() {
    let c = TestCluster::up("spoof", &["--nodes", "2"]);
    for (pod, node) in [
        ("s", "node-1"),
        ("o", "node-1"),
        ("r1", "node-1"),
        ("o2", "node-2"),
        ("r2", "node-2"),
    ] {
        c.ok(&["run", "--sandbox-only", pod, "--node", node]);
    }
    let pods = pods(&c);
    let pod = |n: &str| pods.iter().find(|p| p.name == n).unwrap().clone();
    let ip = |n: &str| IpAddr::V4(pod(n).ipv4().unwrap());
    let (s, r1, r2) = (pod("s"), pod("r1"), pod("r2"));
    let s_ns = open(&s.netns);
    let (n1, n2) = (c.netns("node-1"), c.netns("node-2"));
    let s_veth = flatnet::plugin::host_veth_name(&s.container_id, "eth0");
    assert_eq!(
        read_sysctl(&n1, &format!("net/ipv4/conf/{s_veth}/route_localnet")),
        "0"
    );

    // IPv6 on the underlay, forwarding on node-1, and a default route in the spoofer toward
    // its host veth (a static neighbour entry, since the host veth, with IPv6 off, answers no
    // solicitation): were IPv6 on there, node-1 would forward any IPv6 source to node-2.
    let (n1_v6, n2_v6): (Ipv6Addr, Ipv6Addr) = (
        "2001:db8:18::2".parse().unwrap(),
        "2001:db8:18::3".parse().unwrap(),
    );
    c.ip(
        "node-1",
        &["addr", "add", "2001:db8:18::2/64", "dev", "eth0", "nodad"],
    );
    c.ip(
        "node-2",
        &["addr", "add", "2001:db8:18::3/64", "dev", "eth0", "nodad"],
    );
    netns::write_sysctl(&open(&n1), "net.ipv6.conf.all.forwarding", "1").unwrap();
    assert_eq!(
        read_sysctl(&n1, &format!("net/ipv6/conf/{s_veth}/disable_ipv6")),
        "1"
    );
    let host_addrs = c.ip("node-1", &["-o", "addr", "show", "dev", &s_veth]);
    assert!(host_addrs.trim().is_empty(), "{host_addrs}");
    link_local(&s.netns, "eth0");
    let result = s.result.as_ref().expect("a wired pod has its CNI result");
    let mac = result["interfaces"][0]["mac"]
        .as_str()
        .expect("the host veth's MAC");
    for args in [
        vec![
            "ip", "-6", "neigh", "add", "fe80::1", "lladdr", mac, "dev", "eth0",
        ],
        vec![
            "ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
        ],
    ] {
        let out = exec(&s.netns, &args);
        assert!(out.status.success(), "{out:?}");
    }

    let sniff_r1 = Sniffer::start(open(&r1.netns));
    let sniff_r2 = Sniffer::start(open(&r2.netns));
    let sniff_n2 = Sniffer::start(open(&n2));
    let mut probe = prober();
    let spoofed_v4: Vec<IpAddr> = [
        ip("o"),                         // another pod, same node
        ip("o2"),                        // another pod, other node
        "172.18.0.2".parse().unwrap(),   // node-1
        "172.18.0.3".parse().unwrap(),   // node-2
        "10.244.1.1".parse().unwrap(),   // node-1's gateway address
        "10.244.1.250".parse().unwrap(), // unassigned, this node's pod CIDR
        "10.244.2.250".parse().unwrap(), // unassigned, the other node's
        "203.0.113.7".parse().unwrap(),  // outside
    ]
    .into();
    let spoofed_v6: Vec<IpAddr> = [
        "2001:db8:99::5".parse().unwrap(), // outside
        IpAddr::V6(n1_v6),                 // node-1
        "2001:db8:18::7".parse().unwrap(), // unassigned
    ]
    .into();

    for rp in ["0", "1", "2"] {
        set_rp_filter(&n1, rp);
        set_rp_filter(&n2, rp);
        let v4_before = counter(&n1, "spoofed_ipv4");
        let mut spoofs = Vec::new();
        for &src in &spoofed_v4 {
            for dst in [ip("r1"), ip("r2")] {
                spoofs.extend(PROTOS.map(|p| probe(src, dst, p)));
            }
        }
        let n_v4 = spoofs.len() as u64;
        for &src in &spoofed_v6 {
            spoofs.extend(PROTOS.map(|p| probe(src, IpAddr::V6(n2_v6), p)));
        }
        // The same packets with the pod's own address, sent after the spoofs on the same path:
        // once they are in, the spoofs would be too.
        let own: Vec<Probe> = [ip("r1"), ip("r2")]
            .iter()
            .flat_map(|&dst| PROTOS.map(|p| probe(ip("s"), dst, p)))
            .collect();
        send(&s_ns, &spoofs);
        send(&s_ns, &own);
        let arrived = |p: &Probe| {
            if p.dst == ip("r1") {
                sniff_r1.seen().contains(&p.id)
            } else if p.dst == ip("r2") {
                sniff_r2.seen().contains(&p.id)
            } else {
                sniff_n2.seen().contains(&p.id)
            }
        };
        eventually(
            &format!("rp_filter={rp}: the pod's own packets arrive"),
            CONVERGE,
            || own.iter().all(arrived),
        );
        std::thread::sleep(Duration::from_millis(100));
        let leaked: Vec<&Probe> = spoofs.iter().filter(|p| arrived(p)).collect();
        assert!(
            leaked.is_empty(),
            "rp_filter={rp}: spoofed packets arrived: {leaked:?}"
        );
        assert_eq!(
            counter(&n1, "spoofed_ipv4") - v4_before,
            n_v4,
            "rp_filter={rp}"
        );

        // The pod's own TCP, to a pod on each node, keeps its address; the node probes the pod.
        for (i, r) in [&r1, &r2].into_iter().enumerate() {
            let port = 8100 + i as u16;
            let server = common::serve_once_in(open(&r.netns), port);
            let answer = common::connect_in(&s_ns, r.ipv4().unwrap(), port).expect("pod to pod");
            assert_eq!(answer, "ok\n");
            assert_eq!(server.join().unwrap().ip(), ip("s"), "rp_filter={rp}");
        }
        let server = common::serve_once_in(s_ns.clone(), 8102);
        assert_eq!(
            common::connect_in(&open(&n1), s.ipv4().unwrap(), 8102).expect("node to pod"),
            "ok\n"
        );
        server.join().unwrap();
        let ping = exec(&n1, &["ping", "-c1", "-W2", &s.ipv4().unwrap().to_string()]);
        assert!(
            ping.status.success(),
            "rp_filter={rp}: node-1 pings the pod"
        );
    }

    // A router advertisement from the pod: node-1 learns no prefix and no router from it.
    send_router_advert(&s_ns);
    std::thread::sleep(Duration::from_millis(300));
    let routes6 = c.ip("node-1", &["-6", "route"]);
    assert!(
        !routes6.contains("2001:db8:ad::") && !routes6.contains("default"),
        "{routes6}"
    );

    // The agent reports what it dropped in its log.
    let log = c.state_dir().join("nodes/node-1/agent.log");
    eventually("the agent logs the drops", CONVERGE, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("dropped packets from pods with a source address not their own")
    });

    // The control: with node-1's agent paused and its table deleted (rp_filter is 0 now, from
    // the last round), the same kinds of spoofs arrive: the rules, nothing else, stopped them.
    set_rp_filter(&n1, "0");
    set_rp_filter(&n2, "0");
    let agent = nodes(&c)[0].agent.expect("node-1's agent").pid;
    {
        let _paused = Paused::new(agent);
        let del = exec(&n1, &["nft", "delete", "table", "inet", "flatnet"]);
        assert!(del.status.success(), "{del:?}");
        let spoofs = [
            probe(ip("o"), ip("r1"), Proto::Udp),
            probe("203.0.113.7".parse().unwrap(), ip("r2"), Proto::Tcp),
        ];
        send(&s_ns, &spoofs);
        eventually("without the table, spoofs arrive", CONVERGE, || {
            sniff_r1.seen().contains(&spoofs[0].id) && sniff_r2.seen().contains(&spoofs[1].id)
        });
    }
    eventually("the agent puts its table back", CONVERGE, || {
        exec(&n1, &["nft", "list", "table", "inet", "flatnet"])
            .status
            .success()
    });
    let again = probe(ip("o"), ip("r1"), Proto::Udp);
    let own = probe(ip("s"), ip("r1"), Proto::Udp);
    send(&s_ns, &[again, own]);
    eventually("the pod's own packet arrives", CONVERGE, || {
        sniff_r1.seen().contains(&own.id)
    });
    assert!(
        !sniff_r1.seen().contains(&again.id),
        "a spoof arrived after the repair"
    );
}

/// In a dual-stack cluster a pod's IPv6 address is checked as its IPv4 address is: its own
/// passes to a pod on another node, another pod's IPv6 address, the node's gateway address and
/// an unassigned address of its pod CIDR are dropped at its node and counted. Neighbour
/// discovery between the pod and its node passes; a router advertisement from the pod is
/// dropped and counted, and the node learns nothing from it.
#[test]
fn a_dual_stack_pod_can_only_send_with_its_own_ipv6_address() {
    let c = TestCluster::up("spoof6", &["--nodes", "2", "--ip-family", "dual"]);
    for (pod, node) in [("s", "node-1"), ("o", "node-1"), ("r", "node-2")] {
        c.ok(&["run", "--sandbox-only", pod, "--node", node]);
    }
    let pods = pods(&c);
    let pod = |n: &str| pods.iter().find(|p| p.name == n).unwrap().clone();
    let ip6 = |n: &str| {
        pod(n)
            .ip(Family::V6)
            .unwrap_or_else(|| panic!("{n} has no IPv6 address"))
    };
    let (s, r) = (pod("s"), pod("r"));
    let n1 = c.netns("node-1");
    let sniff = Sniffer::start(open(&r.netns));
    let mut probe = prober();
    let spoofed: Vec<Probe> = [
        ip6("o"),                                 // another pod, same node
        "fd00:10:244:1::1".parse().unwrap(),      // node-1's gateway address
        "fd00:10:244:1::fa".parse().unwrap(),     // unassigned, this node's pod CIDR
        "fc00:f853:ccd:e793::2".parse().unwrap(), // node-1
    ]
    .into_iter()
    .flat_map(|src| PROTOS.map(|p| probe(src, ip6("r"), p)))
    .collect();
    let own: Vec<Probe> = PROTOS.map(|p| probe(ip6("s"), ip6("r"), p)).into();
    let before = counter(&n1, "spoofed_ipv6");
    send(&open(&s.netns), &spoofed);
    send(&open(&s.netns), &own);
    eventually("the pod's own IPv6 packets arrive", CONVERGE, || {
        own.iter().all(|p| sniff.seen().contains(&p.id))
    });
    std::thread::sleep(Duration::from_millis(100));
    let leaked: Vec<&Probe> = spoofed
        .iter()
        .filter(|p| sniff.seen().contains(&p.id))
        .collect();
    assert!(
        leaked.is_empty(),
        "spoofed IPv6 packets arrived: {leaked:?}"
    );
    assert_eq!(counter(&n1, "spoofed_ipv6") - before, spoofed.len() as u64);

    let s_veth = flatnet::plugin::host_veth_name(&s.container_id, "eth0");
    let host_ll = link_local(&n1, &s_veth);
    let ping6 = exec(
        &s.netns,
        &["ping", "-6", "-c1", "-W2", &format!("{host_ll}%eth0")],
    );
    assert!(
        ping6.status.success(),
        "the pod pings its host veth's link-local: {ping6:?}"
    );
    // accept_ra=2 would take an advertisement even while forwarding.
    netns::write_sysctl(
        &open(&n1),
        &format!("net/ipv6/conf/{s_veth}/accept_ra"),
        "2",
    )
    .unwrap();
    let ra_before = counter(&n1, "router_adverts");
    send_router_advert(&open(&s.netns));
    eventually("the advertisement is counted", CONVERGE, || {
        counter(&n1, "router_adverts") > ra_before
    });
    let routes6 = c.ip("node-1", &["-6", "route"]);
    assert!(
        !routes6.contains("2001:db8:ad::")
            && !routes6
                .lines()
                .any(|r| r.starts_with("default") && r.contains(&s_veth)),
        "{routes6}"
    );
}

/// Makes probes, each with an id of its own.
fn prober() -> impl FnMut(IpAddr, IpAddr, Proto) -> Probe {
    let mut next_id = 0u32;
    move |src, dst, proto| {
        next_id += 1;
        Probe {
            id: next_id,
            src,
            dst,
            proto,
        }
    }
}

/// An ICMPv6 router advertisement with a prefix (2001:db8:ad::/64, on-link and autonomous) and
/// a router lifetime, from the pod's link-local address to all nodes.
fn send_router_advert(ns: &NetNs) {
    // SAFETY: plain socket calls on a fd this closure owns and closes; every pointer passed
    // is to a live local of the size given.
    ns.run(|| unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6);
        assert!(fd >= 0);
        let hops: libc::c_int = 255;
        let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
        for (opt, val) in [
            (libc::IPV6_MULTICAST_HOPS, hops),
            (libc::IPV6_MULTICAST_IF, ifindex as libc::c_int),
        ] {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                opt,
                &val as *const _ as *const libc::c_void,
                4,
            );
        }
        let mut ra = vec![134u8, 0, 0, 0, 64, 0];
        ra.extend_from_slice(&1800u16.to_be_bytes());
        ra.extend_from_slice(&[0; 8]);
        ra.extend_from_slice(&[3, 4, 64, 0xc0]);
        ra.extend_from_slice(&86400u32.to_be_bytes());
        ra.extend_from_slice(&14400u32.to_be_bytes());
        ra.extend_from_slice(&[0; 4]);
        ra.extend_from_slice(&"2001:db8:ad::".parse::<Ipv6Addr>().unwrap().octets());
        let (mut ss, len) = sockaddr("ff02::1".parse().unwrap());
        (*(&mut ss as *mut _ as *mut libc::sockaddr_in6)).sin6_scope_id = ifindex;
        let n = libc::sendto(
            fd,
            ra.as_ptr().cast(),
            ra.len(),
            0,
            &ss as *const _ as *const libc::sockaddr,
            len,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(n, ra.len() as isize, "send the advertisement: {err}");
    })
    .unwrap();
}

/// `flatnet agent` as a process in a node namespace of the test's own.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn flatnet_in(node: &TestNs, args: &[&str]) -> Command {
    let mut cmd = flatnet::netns::command(&common::workspace_bin("flatnet"), &[], Some(&node.ns()));
    cmd.args(args);
    cmd
}

fn http_get(node: &TestNs, path: &str) -> String {
    let path = path.to_string();
    node.ns()
        .run(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], 9099)),
                Duration::from_secs(2),
            )?;
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<_, std::io::Error>(out)
        })
        .unwrap()
        .unwrap_or_default()
}

/// The agent as deployed: the anti-spoofing table is in place whenever the conflist is, an
/// older flatnet's `ip flatnet` table is replaced, drops show on /metrics and in the log, and
/// `--uninstall` removes it all.
#[test]
fn the_agent_protects_before_the_conflist_reports_drops_and_uninstalls() {
    let node = node_ns("agent");
    node.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);
    node.ip(&["addr", "add", "172.18.0.2/16", "dev", "eth0"]);
    node.ip(&["link", "set", "peer0", "up"]);
    node.ip(&["link", "set", "eth0", "up"]);
    // A pod wired as the plugin wires one: a host veth named flat…, the gateway on it, a /32
    // route to the pod through it.
    let pod = TestNs::new("pod");
    node.ip(&[
        "link",
        "add",
        "flat0123456789a",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ]);
    node.ip(&["addr", "add", "10.244.1.1/32", "dev", "flat0123456789a"]);
    node.ip(&["link", "set", "flat0123456789a", "up"]);
    node.ip(&["route", "add", "10.244.1.5/32", "dev", "flat0123456789a"]);
    pod.ip(&["addr", "add", "10.244.1.5/32", "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&["route", "add", "10.244.1.1", "dev", "eth0", "scope", "link"]);
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.244.1.1",
        "dev",
        "eth0",
    ]);
    // What an older flatnet left: its egress table.
    node.sh(&["nft", "add", "table", "ip", "flatnet"]);

    let dir = TempDir::new("agent");
    let registry = Registry::new(dir.path().join("registry"));
    std::fs::create_dir_all(registry.dir()).unwrap();
    registry
        .put(&NodeRecord::v4(
            "node-1",
            "172.18.0.2".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
        ))
        .unwrap();
    let conf_dir = dir.path().join("net.d");
    let conflist = conf_dir.join("10-flatnet.conflist");
    let log = dir.path().join("agent.log");
    let p = |p: &Path| p.display().to_string();
    let (reg, conf, logf) = (p(registry.dir()), p(&conf_dir), p(&log));
    let child = flatnet_in(
        &node,
        &[
            "agent",
            "--node",
            "node-1",
            "--registry",
            &reg,
            "--conf-dir",
            &conf,
            "--cluster-cidr",
            "10.244.0.0/16",
            "--resync",
            "0.2",
            "--health-addr",
            "127.0.0.1:9099",
            "--log-file",
            &logf,
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start the agent");
    let agent = AgentProcess(child);

    let table = || {
        let out = node.sh(&["nft", "list", "tables"]);
        out.lines().map(str::to_string).collect::<Vec<_>>()
    };
    // Whenever the conflist is there, the rules are.
    let ok = wait_until(CONVERGE, || {
        if !conflist.exists() {
            return false;
        }
        assert_eq!(table(), ["table inet flatnet"], "conflist before the rules");
        true
    });
    assert!(
        ok,
        "no conflist: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let rules = node.sh(&["nft", "list", "table", "inet", "flatnet"]);
    assert!(rules.contains("chain antispoof"), "{rules}");
    assert!(rules.contains("chain egress"), "{rules}");

    let spoofs: Vec<Probe> = ["10.244.1.9", "172.18.0.2", "203.0.113.7"]
        .iter()
        .enumerate()
        .map(|(i, src)| Probe {
            id: 1000 + i as u32,
            src: src.parse().unwrap(),
            dst: "172.18.0.99".parse().unwrap(),
            proto: Proto::Udp,
        })
        .collect();
    send(&pod.ns(), &spoofs);
    eventually("/metrics shows the drops", CONVERGE, || {
        http_get(&node, "/metrics")
            .contains("flatnet_antispoof_dropped_packets_total{reason=\"spoofed_ipv4\"} 3")
    });
    assert!(http_get(&node, "/metrics").contains("flatnet_antispoof_installed 1"));
    eventually("the log reports the drops", CONVERGE, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("spoofed_ipv4 +3 (total 3)")
    });
    drop(agent);

    node.sh(&["nft", "add", "table", "ip", "flatnet"]);
    let out = flatnet_in(&node, &["agent", "--uninstall", "--conf-dir", &conf])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(table().is_empty(), "{:?}", table());
    assert!(!conflist.exists());
}
