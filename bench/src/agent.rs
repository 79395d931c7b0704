//! Section 2: the agent. An emulated cluster (real `flatnet agent` processes, one per node
//! netns) grown to 10, 50 and 100 nodes; at each size a node record is written to and removed
//! from the registry, clocked from that write to the moment a netlink route monitor in every
//! node's namespace has seen the route appear (or go). Then each agent's peak RSS.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnetwork::Ipv4Network;
use serde_json::{json, Value};

use flatnet::emulator::{Cluster, StateRoot, UpOptions};
use flatnet::netns::{self, NetNs};
use flatnet::registry::{NodeRecord, Registry};

use crate::cni::verdict;
use crate::util::{self, median, ms, pct, progress, table, Ctx, Fig};

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTA_DST: u16 = 1;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;

/// A route event seen in node `node`'s namespace.
struct Event {
    node: usize,
    new: bool,
    dst: Ipv4Network,
    at: Instant,
}

/// One rtnetlink socket per node namespace, subscribed to IPv4 route changes, read by one
/// thread through epoll, stamping each event as it is read.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    rx: Receiver<Event>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn route_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket calls on a fresh fd we own.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let size: libc::c_int = 4 << 20;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of_val(&size) as u32,
        );
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = RTMGRP_IPV4_ROUTE;
        if libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn parse(buf: &[u8], node: usize, at: Instant, out: &mpsc::Sender<Event>) {
    let u16at = |o: usize| u16::from_ne_bytes([buf[o], buf[o + 1]]);
    let u32at = |o: usize| u32::from_ne_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32at(off) as usize;
        let ty = u16at(off + 4);
        if len < 16 || off + len > buf.len() {
            break;
        }
        if (ty == RTM_NEWROUTE || ty == RTM_DELROUTE) && len >= 16 + 12 {
            let body = off + 16;
            let family = buf[body];
            let dst_len = buf[body + 1];
            let mut a = body + 12;
            let mut dst = None;
            while a + 4 <= off + len {
                let alen = u16at(a) as usize;
                let aty = u16at(a + 2);
                if alen < 4 || a + alen > off + len {
                    break;
                }
                if aty == RTA_DST && alen >= 8 {
                    dst = Some(std::net::Ipv4Addr::new(
                        buf[a + 4],
                        buf[a + 5],
                        buf[a + 6],
                        buf[a + 7],
                    ));
                }
                a += (alen + 3) & !3;
            }
            if family == libc::AF_INET as u8 {
                if let Some(net) = dst.and_then(|d| Ipv4Network::new(d, dst_len).ok()) {
                    let _ = out.send(Event {
                        node,
                        new: ty == RTM_NEWROUTE,
                        dst: net,
                        at,
                    });
                }
            }
        }
        off += (len + 3) & !3;
    }
}

impl Monitor {
    pub fn start(namespaces: &[NetNs]) -> Result<Monitor> {
        let mut fds = Vec::new();
        for ns in namespaces {
            fds.push(ns.run(route_socket)??);
        }
        // SAFETY: a fresh epoll fd, owned at once.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            bail!("epoll_create1: {}", std::io::Error::last_os_error());
        }
        // SAFETY: as above.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        for (i, fd) in fds.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: registering an fd we own with a valid event.
            if unsafe {
                libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev)
            } != 0
            {
                bail!("epoll_ctl: {}", std::io::Error::last_os_error());
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 128];
            let mut buf = vec![0u8; 1 << 16];
            while !stop2.load(Ordering::Relaxed) {
                // SAFETY: the buffer holds `events.len()` entries.
                let n = unsafe {
                    libc::epoll_wait(
                        ep.as_raw_fd(),
                        events.as_mut_ptr(),
                        events.len() as i32,
                        100,
                    )
                };
                for ev in events.iter().take(n.max(0) as usize) {
                    let i = ev.u64 as usize;
                    loop {
                        // SAFETY: reading into our own buffer from a socket we own.
                        let r = unsafe {
                            libc::recv(
                                fds[i].as_raw_fd(),
                                buf.as_mut_ptr() as *mut libc::c_void,
                                buf.len(),
                                libc::MSG_DONTWAIT,
                            )
                        };
                        if r <= 0 {
                            // EAGAIN: drained. ENOBUFS: events were lost; the next read goes on.
                            if r < 0
                                && std::io::Error::last_os_error().raw_os_error()
                                    == Some(libc::ENOBUFS)
                            {
                                continue;
                            }
                            break;
                        }
                        parse(&buf[..r as usize], i, Instant::now(), &tx);
                    }
                }
            }
        });
        Ok(Monitor {
            stop,
            rx,
            thread: Some(thread),
        })
    }

    pub(crate) fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// Waits until every one of `nodes` namespaces has seen `dst` appear (`new`) or go; returns
    /// each node's delay after `t0`.
    pub(crate) fn wait_all(
        &self,
        nodes: usize,
        dst: Ipv4Network,
        new: bool,
        t0: Instant,
        limit: Duration,
    ) -> Result<Vec<Duration>> {
        let mut seen: Vec<Option<Duration>> = vec![None; nodes];
        let mut left = nodes;
        let deadline = t0 + limit;
        while left > 0 {
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "{left} of {nodes} nodes did not see {dst} {} within {}s",
                    if new { "appear" } else { "go" },
                    limit.as_secs()
                );
            }
            match self.rx.recv_timeout(deadline - now) {
                Ok(ev) => {
                    if ev.dst == dst && ev.new == new && ev.node < nodes && seen[ev.node].is_none()
                    {
                        seen[ev.node] = Some(ev.at.saturating_duration_since(t0));
                        left -= 1;
                    }
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => bail!("route monitor stopped"),
            }
        }
        Ok(seen.into_iter().flatten().collect())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// VmHWM and VmRSS of a process, KiB.
fn mem(pid: u32) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some((get("VmHWM:")?, get("VmRSS:")?))
}

struct SizeResult {
    nodes: usize,
    add_last: Fig,
    add_median_node: Fig,
    del_last: Fig,
    del_median_node: Fig,
    hwm_median: f64,
    hwm_max: f64,
    rss_median: f64,
    grow_s: f64,
}

pub fn run(ctx: &Ctx) -> Result<(String, Value)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let root = StateRoot::new(ctx.work.join("state"));
    let cluster = Cluster::new(&root, &format!("{}-conv", ctx.tag))?;
    let result = rt.block_on(measure(ctx, &cluster));
    progress("agent: removing the cluster");
    let t0 = Instant::now();
    let down = rt.block_on(cluster.down());
    let down_s = t0.elapsed().as_secs_f64();
    let (mut md, mut v) = result?;
    down.context("remove the convergence cluster")?;
    md += &format!(
        "\n`down` of the {}-node cluster: {down_s:.1} s.\n",
        sizes(ctx).last().unwrap_or(&0)
    );
    v["down_s"] = json!(down_s);
    Ok((md, v))
}

fn sizes(ctx: &Ctx) -> Vec<usize> {
    if ctx.quick {
        vec![5, 10]
    } else {
        vec![10, 50, 100]
    }
}

async fn measure(ctx: &Ctx, cluster: &Cluster) -> Result<(String, Value)> {
    let sizes = sizes(ctx);
    let opts = UpOptions {
        nodes: sizes[0] as u32,
        cluster_cidr: "10.244.0.0/16".parse()?,
        node_mask: 24,
        // Long, so that what is measured is the watch, not a periodic re-read.
        agent_resync: Duration::from_secs(60),
        ..UpOptions::default()
    };
    progress(&format!("agent: bringing up {} nodes", sizes[0]));
    let t0 = Instant::now();
    cluster
        .up(&opts, &|m| progress(&format!("agent: up: {m}")))
        .await?;
    let mut grow_s = t0.elapsed().as_secs_f64();
    let registry = Registry::new(cluster.dir().registry());
    let ghost = NodeRecord::v4(
        "node-250",
        "172.18.0.251".parse()?,
        "10.244.250.0/24".parse()?,
    );
    let ghost_cidr = ghost.pod_cidr_v4().expect("an IPv4 record");
    let mut results = Vec::new();
    for (si, &size) in sizes.iter().enumerate() {
        if si > 0 {
            progress(&format!("agent: adding nodes up to {size}"));
            let t0 = Instant::now();
            let have = cluster.spec()?.nodes.len();
            cluster.add_nodes((size - have) as u32, 0).await?;
            grow_s = t0.elapsed().as_secs_f64();
        }
        let spec = cluster.spec()?;
        let namespaces = spec
            .nodes
            .iter()
            .map(|n| NetNs::open(netns::named_path(&n.netns)))
            .collect::<std::io::Result<Vec<_>>>()?;
        // Let the agents settle after the last node joined.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let monitor = Monitor::start(&namespaces)?;
        let (mut add_last, mut add_mid, mut del_last, mut del_mid) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for rep in 0..ctx.reps {
            util::check_interrupt()?;
            monitor.drain();
            let t0 = Instant::now();
            registry.put(&ghost)?;
            let seen = monitor.wait_all(size, ghost_cidr, true, t0, Duration::from_secs(30))?;
            let l: Vec<f64> = seen.iter().map(|d| ms(*d)).collect();
            add_last.push(pct(&l, 100.0));
            add_mid.push(median(&l));
            tokio::time::sleep(Duration::from_millis(300)).await;
            monitor.drain();
            let t0 = Instant::now();
            registry.remove(&ghost.name)?;
            let seen = monitor.wait_all(size, ghost_cidr, false, t0, Duration::from_secs(30))?;
            let l: Vec<f64> = seen.iter().map(|d| ms(*d)).collect();
            del_last.push(pct(&l, 100.0));
            del_mid.push(median(&l));
            progress(&format!(
                "agent: {size} nodes, rep {}/{}: route on every node after {:.0} ms, gone after {:.0} ms",
                rep + 1,
                ctx.reps,
                add_last.last().unwrap_or(&0.0),
                del_last.last().unwrap_or(&0.0)
            ));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        drop(monitor);
        let mut hwm = Vec::new();
        let mut rss = Vec::new();
        for n in &spec.nodes {
            if let Some((h, r)) = n.agent.and_then(|a| mem(a.pid)) {
                hwm.push(h);
                rss.push(r);
            }
        }
        results.push(SizeResult {
            nodes: size,
            add_last: Fig::of(&add_last),
            add_median_node: Fig::of(&add_mid),
            del_last: Fig::of(&del_last),
            del_median_node: Fig::of(&del_mid),
            hwm_median: median(&hwm),
            hwm_max: pct(&hwm, 100.0),
            rss_median: median(&rss),
            grow_s,
        });
    }

    let mut rows = Vec::new();
    let mut js = Vec::new();
    for r in &results {
        rows.push(vec![
            r.nodes.to_string(),
            r.add_last.show(0),
            r.add_median_node.show(0),
            r.del_last.show(0),
            r.del_median_node.show(0),
            format!("{:.1} / {:.1}", r.hwm_median / 1024.0, r.hwm_max / 1024.0),
            format!("{:.1}", r.rss_median / 1024.0),
        ]);
        js.push(json!({
            "nodes": r.nodes, "add_last_ms": r.add_last.json(), "add_median_node_ms": r.add_median_node.json(),
            "del_last_ms": r.del_last.json(), "del_median_node_ms": r.del_median_node.json(),
            "vmhwm_kib_median": r.hwm_median, "vmhwm_kib_max": r.hwm_max, "vmrss_kib_median": r.rss_median,
            "bringup_s": r.grow_s,
        }));
    }
    let mut md = format!(
        "### Route convergence ({} repetitions per size; median (min–max) across them, ms)\n\n",
        ctx.reps
    );
    md += &table(
        &[
            "nodes",
            "add: last node",
            "add: median node",
            "remove: last node",
            "remove: median node",
            "agent VmHWM MiB median / max",
            "agent VmRSS MiB median",
        ],
        &rows,
    );
    let last = results.last();
    if let Some(l) = last {
        md += &format!(
            "\nAt {} nodes: convergence (add, last node) {:.0} ms against ≤ 1,000 ms: {}; agent peak RSS {:.1} MiB against ≤ 20 MB: {}.\n",
            l.nodes,
            l.add_last.med,
            verdict(l.add_last.med <= 1000.0 && l.del_last.med <= 1000.0),
            l.hwm_max / 1024.0,
            verdict(l.hwm_max * 1024.0 <= 20e6)
        );
    }
    md += "\nBring-up of the convergence cluster: ";
    md += &results
        .iter()
        .map(|r| format!("to {} nodes {:.1} s", r.nodes, r.grow_s))
        .collect::<Vec<_>>()
        .join(", ");
    md += " (`up` for the first size, then `Cluster::add_nodes` of the nodes missing, which makes them all, then waits for every new agent's conflist).\n";
    Ok((md, json!({"sizes": js})))
}
