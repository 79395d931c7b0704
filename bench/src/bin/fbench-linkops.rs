//! What each way of taking a pod's veth out of service costs the caller, in process (no exec):
//! the kernel's own floor for DEL's design choices. Run as root; it makes two namespaces
//! `fbench<pid>-lo-node` and `-pod`, N veth pairs between them (host end addressed and routed as
//! flatnet-cni does), and removes both namespaces at the end.
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
            node.add_address(l.index, Ipv4Network::from(gw)).await?;
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
