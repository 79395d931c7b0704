//! What each way of taking a pod's veth out of service costs the caller, in process (no exec):
//! the kernel's own floor for DEL's design choices. Run as root; it makes two namespaces
//! `fbench<pid>-lo-node` and `-pod`, N veth pairs between them (host end up and routed as
//! flatnet-cni leaves it), and removes both namespaces at the end.
//!
//! `fbench-linkops growth N` is the reproducer of ADD's growth with the number of pods (issue
//! 23): it times the veth creation alone (host end in a node netns, peer born elsewhere) for N
//! pods, three ways, each in a node netns of its own: every peer in a netns of its own (what a
//! node has), every peer in one shared netns, and every peer in its own netns but the request
//! made from inside that pod netns (the host end sent to the node). In the first node it then
//! times the rest of flatnet's wiring (host end up, host route, the pod's neighbour entry for
//! the gateway); in the second, the step that grew: the gateway address on every host end, as
//! ptp wires it. It prints the p50 of the first and the last 100 of each series. The first
//! node's host ends get IPv6 turned off before they go up, as flatnet-cni does for an IPv4-only
//! pod; `FBENCH_HOST_IPV6=1` leaves it on, as before, to show what that costs.
//!
//! `fbench-linkops [N]` prints, per operation, p50 / p90 / max in ms over N links (default 40):
//! delete one link; set it down; move it into a group; both in one request; rename it; delete
//! a host /32 route; then one group delete of all the links retired, and the namespace removal.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use ipnetwork::Ipv4Network;

use std::os::fd::{FromRawFd, IntoRawFd};

use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};
use rtnetlink::{LinkMessageBuilder, LinkUnspec};

use flatnet::netlink::{protocol, GroupDelete, Netlink, Route, VethSpec, RETIRED};
use flatnet::netns::{self, NetNs};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p / 100.0).round() as usize]
}

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("growth") {
        let n = std::env::args()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1000);
        return growth(n);
    }
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(40);
    let tag = format!("fbench{}-lo", std::process::id());
    let (node_name, pod_name) = (format!("{tag}-node"), format!("{tag}-pod"));
    let node = Arc::new(netns::create_named(&node_name)?);
    let pod = match netns::create_named(&pod_name) {
        Ok(p) => p,
        Err(e) => {
            let _ = netns::delete_named(&node_name);
            return Err(e.into());
        }
    };
    let r = measure(n, node, &pod);
    let _ = netns::delete_named(&pod_name);
    let _ = netns::delete_named(&node_name);
    r
}

fn measure(n: usize, node_ns: Arc<NetNs>, pod: &NetNs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let gw = Ipv4Addr::new(10, 244, 0, 1);
    let ops = [
        "delete",
        "down",
        "group",
        "group+down",
        "rename",
        "route del",
    ];
    rt.block_on(async {
        let node = Netlink::in_netns(node_ns.clone())?;
        // What flatnet's layer has no call for (a bare group change, a rename): rtnetlink itself.
        let socket = node_ns.run(|| Socket::new(NETLINK_ROUTE))??;
        socket.set_non_blocking(true)?;
        // SAFETY: the fd comes straight from a netlink Socket we own and hand over whole.
        let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (conn, raw, _) = rtnetlink::from_socket(socket);
        tokio::spawn(conn);
        let mut links = Vec::new();
        for i in 0..n * ops.len() {
            let name = format!("flat{i:011x}");
            node.create_veth(&VethSpec {
                name: &name,
                peer_name: &format!("e{i}"),
                peer_netns: pod,
                mtu: 1500,
            })
            .await?;
            let l = node.link_by_name(&name).await?.expect("just made");
            node.set_up(l.index).await?;
            let ip = Ipv4Addr::from(u32::from(gw) + 1 + i as u32);
            node.add_route(&Route::via_link(ip.into(), l.index, protocol::CNI))
                .await?;
            links.push((l.index, ip));
        }
        let mut chunks = links.chunks(n);
        for op in ops {
            let mut t = Vec::new();
            for &(index, ip) in chunks.next().expect("one chunk per op") {
                let t0 = Instant::now();
                match op {
                    "delete" => node.delete_link(index).await?,
                    "down" => node.retire(index, 0).await?,
                    "group" => {
                        set(&raw, LinkUnspec::new_with_index(index).link_group(RETIRED)).await?
                    }
                    "group+down" => node.retire(index, RETIRED).await?,
                    "rename" => {
                        set(
                            &raw,
                            LinkUnspec::new_with_index(index).name(format!("x{index}")),
                        )
                        .await?
                    }
                    _ => {
                        node.delete_route(&Route::matching(ip.into(), protocol::CNI))
                            .await?
                    }
                }
                t.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            println!(
                "{op:>12}: p50 {:.3}  p90 {:.3}  max {:.3} ms",
                pct(&mut t, 50.0),
                pct(&mut t, 90.0),
                pct(&mut t, 100.0)
            );
        }
        anyhow::Ok(())
    })?;
    let del = node_ns.run(|| GroupDelete::new(RETIRED))??;
    let t0 = Instant::now();
    let some = del.run()?;
    println!(
        "group delete of {} retired links ({some}): {:.3} ms",
        2 * n,
        t0.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

async fn set(h: &rtnetlink::Handle, b: LinkMessageBuilder<LinkUnspec>) -> anyhow::Result<()> {
    Ok(h.link().set(b.build()).execute().await?)
}

/// Namespaces made by the growth reproducer, removed at the end whatever happens.
struct Made(Vec<String>);

impl Drop for Made {
    fn drop(&mut self) {
        for n in self.0.iter().rev() {
            let _ = netns::delete_named(n);
        }
    }
}

fn growth(n: usize) -> anyhow::Result<()> {
    let tag = format!("fbench{}-gr", std::process::id());
    let mut made = Made(Vec::new());
    let mut mk = |name: String| -> anyhow::Result<Arc<NetNs>> {
        let ns = Arc::new(netns::create_named(&name)?);
        made.0.push(name);
        Ok(ns)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let modes = [
        "peer netns each",
        "one shared peer netns",
        "each, asked from the pod",
    ];
    let steps = [
        "host end up",
        "host /32 route",
        "pod: gateway neighbour",
        "ptp's gateway /32 on host",
        "open a socket in the pod",
        "node: link by name",
        "pod: address",
        "host end: IPv6 off",
        "node: lo by name",
        "pod: up (host end's carrier)",
        "pod: 2 routes",
    ];
    let mut nodes = Vec::new();
    for (m, _) in modes.iter().enumerate() {
        nodes.push(mk(format!("{tag}-node{m}"))?);
    }
    let shared = mk(format!("{tag}-shared"))?;
    let mut series: Vec<Vec<f64>> = vec![Vec::new(); modes.len() + steps.len()];
    let gw = Ipv4Addr::new(10, 244, 0, 1);
    let host_ipv6 = std::env::var_os("FBENCH_HOST_IPV6").is_some();
    rt.block_on(async {
        let node_nl: Vec<Netlink> = nodes
            .iter()
            .map(|ns| Netlink::in_netns(ns.clone()))
            .collect::<std::io::Result<_>>()?;
        // The first node holds the gateway as flatnet-cni leaves a node: once, on its loopback.
        // (It matters beyond the address itself: a route through a link with no address takes
        // its source from the first link that has one, and without it the kernel walks every
        // link of the node for each route added.)
        let lo = node_nl[0]
            .link_by_name("lo")
            .await?
            .expect("every netns has lo");
        node_nl[0].set_up(lo.index).await?;
        node_nl[0]
            .add_address(lo.index, Ipv4Network::from(gw))
            .await?;
        for i in 0..n {
            for m in 0..modes.len() {
                let pod = if m == 1 {
                    shared.clone()
                } else {
                    mk(format!("{tag}-p{m}-{i}"))?
                };
                let host = format!("flat{i:011x}");
                let peer = if m == 1 {
                    format!("e{i}")
                } else {
                    "eth0".into()
                };
                let t0 = Instant::now();
                if m == 2 {
                    let in_pod = Netlink::in_netns(pod.clone())?;
                    in_pod
                        .create_veth(&VethSpec {
                            name: &peer,
                            peer_name: &host,
                            peer_netns: &nodes[m],
                            mtu: 1500,
                        })
                        .await?;
                } else {
                    node_nl[m]
                        .create_veth(&VethSpec {
                            name: &host,
                            peer_name: &peer,
                            peer_netns: &pod,
                            mtu: 1500,
                        })
                        .await?;
                }
                series[m].push(t0.elapsed().as_secs_f64() * 1e3);
                if m == 0 {
                    // The rest of flatnet's wiring, in the node with a peer netns each: the host
                    // end stays bare, the pod points its gateway at the host end's MAC.
                    let t = Instant::now();
                    let l = node_nl[0].link_by_name(&host).await?.expect("just made");
                    series[modes.len() + 5].push(t.elapsed().as_secs_f64() * 1e3);
                    // The same question about a link with no peer in another netns.
                    let t = Instant::now();
                    node_nl[0].link_by_name("lo").await?;
                    series[modes.len() + 8].push(t.elapsed().as_secs_f64() * 1e3);
                    let ip = Ipv4Addr::from(u32::from(gw) + 1 + i as u32);
                    if !host_ipv6 {
                        let t = Instant::now();
                        let key = format!("net/ipv6/conf/{host}/disable_ipv6");
                        netns::write_sysctls(&nodes[0], &[(key.as_str(), "1")])?;
                        series[modes.len() + 7].push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    let t = Instant::now();
                    node_nl[0].set_up(l.index).await?;
                    series[modes.len()].push(t.elapsed().as_secs_f64() * 1e3);
                    let t = Instant::now();
                    node_nl[0]
                        .add_route(&Route::via_link(ip.into(), l.index, protocol::CNI))
                        .await?;
                    series[modes.len() + 1].push(t.elapsed().as_secs_f64() * 1e3);
                    let t = Instant::now();
                    let in_pod = Netlink::in_netns(pod.clone())?;
                    series[modes.len() + 4].push(t.elapsed().as_secs_f64() * 1e3);
                    let eth0 = in_pod.link_by_name(&peer).await?.expect("just made");
                    let t = Instant::now();
                    in_pod
                        .add_address(eth0.index, Ipv4Network::from(ip))
                        .await?;
                    series[modes.len() + 6].push(t.elapsed().as_secs_f64() * 1e3);
                    let t = Instant::now();
                    in_pod.set_up(eth0.index).await?;
                    series[modes.len() + 9].push(t.elapsed().as_secs_f64() * 1e3);
                    let t = Instant::now();
                    in_pod
                        .add_route(&Route::via_link(gw.into(), eth0.index, protocol::CNI))
                        .await?;
                    in_pod
                        .add_route(&Route::via_gateway(
                            Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0)?,
                            gw,
                            Some(eth0.index),
                            protocol::CNI,
                        ))
                        .await?;
                    series[modes.len() + 10].push(t.elapsed().as_secs_f64() * 1e3);
                    let mac = l.mac.expect("a veth has a MAC");
                    let t = Instant::now();
                    in_pod.replace_neighbour(eth0.index, gw.into(), mac).await?;
                    series[modes.len() + 2].push(t.elapsed().as_secs_f64() * 1e3);
                } else if m == 1 {
                    // What ptp (and flatnet before issue 23) did instead: the gateway on every
                    // host end, up.
                    let l = node_nl[1].link_by_name(&host).await?.expect("just made");
                    let t = Instant::now();
                    node_nl[1]
                        .add_address(l.index, Ipv4Network::from(gw))
                        .await?;
                    series[modes.len() + 3].push(t.elapsed().as_secs_f64() * 1e3);
                    node_nl[1].set_up(l.index).await?;
                }
            }
        }
        anyhow::Ok(())
    })?;
    for (m, name) in modes.iter().chain(&steps).enumerate() {
        let l = &mut series[m];
        if l.is_empty() {
            continue;
        }
        let k = 100.min(l.len());
        let first = pct(&mut l[..k].to_vec(), 50.0);
        let len = l.len();
        let last = pct(&mut l[len - k..].to_vec(), 50.0);
        println!(
            "{name:>26}: p50 first {k} {first:.3} ms, last {k} {last:.3} ms, ratio {:.2}",
            last / first
        );
    }
    Ok(())
}
