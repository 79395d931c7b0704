//! One pass over the routes: what they should be given the node list, what they are, and the
//! changes between the two. Computing the whole desired state on every pass (rather than
//! applying deltas from events) makes a missed event, a restart or a hand-edited route all
//! heal the same way. Each family is its own pass over its own table, with the same rules.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use tracing::{info, warn};

use super::overlay::Next;
use super::validate::Hop;
use super::{Error, RouteFailure};
use crate::netlink::{protocol, Family, Netlink, RouteOf};
#[cfg(test)]
use crate::registry::NodeRecord;

/// A family the agent routes: how its typed routes meet the judge's family-free ones.
pub(crate) trait Routed: Family + Into<IpNetwork> {
    /// `dst via gateway`, if both are of this family.
    fn pick(dst: IpNetwork, gateway: IpAddr) -> Option<(Self, Self::Addr)>;
}

impl Routed for Ipv4Network {
    fn pick(dst: IpNetwork, gateway: IpAddr) -> Option<(Self, Self::Addr)> {
        match (dst, gateway) {
            (IpNetwork::V4(d), IpAddr::V4(g)) => Some((d, g)),
            _ => None,
        }
    }
}

impl Routed for Ipv6Network {
    fn pick(dst: IpNetwork, gateway: IpAddr) -> Option<(Self, Self::Addr)> {
        match (dst, gateway) {
            (IpNetwork::V6(d), IpAddr::V6(g)) => Some((d, g)),
            _ => None,
        }
    }
}

/// The host-gw routes: each other node's pod CIDRs, each via that node's address of its
/// family (a family the node has no address in is not routed; the judge reported it). The
/// records were judged first ([`super::validate`]), so no two of them overlap. With the
/// overlay, [`super::overlay::decide`] makes this choice per peer instead.
#[cfg(test)]
pub(crate) fn desired(others: &[NodeRecord]) -> BTreeMap<IpNetwork, Next> {
    others
        .iter()
        .flat_map(|n| {
            n.pod_cidrs.iter().filter_map(|&c| {
                n.node_ip(c).map(|ip| {
                    (
                        c,
                        Next {
                            gateway: ip,
                            dev: None,
                        },
                    )
                })
            })
        })
        .collect()
}

/// A wanted route of family `N`: destination, gateway, and the device when the gateway is
/// reachable only through it (a VTEP behind the tunnel device, `onlink`).
pub(crate) type Want<N> = (N, <N as Family>::Addr, Option<u32>);

/// The routes of family `N` in `desired`.
fn of_family<N: Routed>(desired: &BTreeMap<IpNetwork, Next>) -> Vec<Want<N>> {
    desired
        .iter()
        .filter_map(|(dst, next)| N::pick(*dst, next.gateway).map(|(d, g)| (d, g, next.dev)))
        .collect()
}

/// One change to the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action<N: Family> {
    Add(RouteOf<N>),
    /// `was` held the destination: the agent's own route with a stale gateway, or a foreign
    /// route for exactly a pod CIDR, which pod traffic cannot work around.
    Replace {
        route: RouteOf<N>,
        was: RouteOf<N>,
    },
    Delete(RouteOf<N>),
    /// The destination is held by a route that must never be replaced: a connected subnet
    /// (replacing it would cut the node off its own link) or one of the plugin's pod routes.
    Blocked {
        dst: N,
        holder: RouteOf<N>,
    },
}

/// The changes that turn `current` (the main table of one family) into `desired`. Routes of
/// other protocols are only ever touched when they hold exactly a desired destination; the
/// agent's own routes in `kept` (the last good state of records that cannot be read) stay.
pub(crate) fn plan<N: Routed>(
    desired: &[Want<N>],
    current: &[RouteOf<N>],
    kept: &[Hop],
) -> Vec<Action<N>> {
    let mut actions = Vec::new();
    for &(dst, gw, dev) in desired {
        let mut want = RouteOf::via_gateway(dst, gw, dev, protocol::AGENT);
        want.onlink = dev.is_some();
        // The agent's own routes at another metric (left by hand or by an older version)
        // would sit beside the wanted one for ever: they go.
        let metric = default_metric::<N>();
        actions.extend(
            current
                .iter()
                .filter(|r| r.dst == dst && r.protocol == protocol::AGENT && r.metric != metric)
                .map(|r| Action::Delete(r.clone())),
        );
        // A replace acts on the route of the same destination and metric.
        let held: Vec<&RouteOf<N>> = current
            .iter()
            .filter(|r| r.dst == dst && r.metric == metric)
            .collect();
        if held.iter().any(|r| {
            r.protocol == protocol::AGENT
                && r.gateway == Some(gw)
                && r.kind == want.kind
                && (dev.is_none() || r.oif == dev)
        }) {
            continue;
        }
        let ours = held.iter().find(|r| r.protocol == protocol::AGENT);
        let foreign = held.iter().find(|r| replaceable(r));
        actions.push(match (ours.or(foreign), held.first()) {
            (Some(was), _) => Action::Replace {
                route: want,
                was: (*was).clone(),
            },
            (None, Some(holder)) => Action::Blocked {
                dst,
                holder: (*holder).clone(),
            },
            (None, None) => Action::Add(want),
        });
    }
    actions.extend(
        current
            .iter()
            .filter(|r| {
                r.protocol == protocol::AGENT
                    && !desired.iter().any(|(d, _, _)| *d == r.dst)
                    && !hop(r).is_some_and(|h| kept.contains(&h))
            })
            .map(|r| Action::Delete(r.clone())),
    );
    actions
}

/// The metric a route added without one reads back with: 0 for IPv4, but the kernel gives
/// an IPv6 route 1024 (IP6_RT_PRIO_USER). Judged against 0, every IPv6 route the agent made
/// would be deleted and added again at each pass, a gap in the pods' IPv6 traffic each time.
fn default_metric<N: Family>() -> u32 {
    let unspecified: IpAddr = N::UNSPECIFIED.into();
    if unspecified.is_ipv6() {
        1024
    } else {
        0
    }
}

/// The route as the judge sees it, if it has a gateway.
pub(crate) fn hop<N: Routed>(r: &RouteOf<N>) -> Option<Hop> {
    Some(Hop {
        dst: r.dst.into(),
        gateway: r.gateway?.into(),
    })
}

fn replaceable<N: Family>(r: &RouteOf<N>) -> bool {
    r.protocol != protocol::AGENT
        && r.protocol != protocol::CNI
        && r.protocol != libc::RTPROT_KERNEL
}

/// Brings the agent's routes of family `N` from `current` to exactly the routes to `others`,
/// leaving `kept` alone. Goes on past a failing change, so that one unreachable node does not
/// hold up routes to the others, and collects every failure in `failures`.
pub(crate) async fn routes<N: Routed>(
    netlink: &Netlink,
    current: &[RouteOf<N>],
    desired: &BTreeMap<IpNetwork, Next>,
    kept: &[Hop],
    failures: &mut Vec<RouteFailure>,
) {
    for action in plan(&of_family::<N>(desired), current, kept) {
        if let Err(e) = apply(netlink, &action).await {
            failures.push(e);
        }
    }
}

async fn apply<N: Routed>(netlink: &Netlink, action: &Action<N>) -> Result<(), RouteFailure> {
    match action {
        Action::Add(r) => {
            netlink.add_route(r).await?;
            info!(dst = %r.dst, via = ?r.gateway, tunnel = r.onlink, "route added");
        }
        Action::Replace { route, was } => {
            netlink.replace_route(route).await?;
            if was.protocol == protocol::AGENT {
                info!(dst = %route.dst, via = ?route.gateway, was = ?was.gateway, tunnel = route.onlink, "route replaced");
            } else {
                warn!(dst = %route.dst, via = ?route.gateway, was = ?was.gateway,
                    was_protocol = was.protocol, "replaced a foreign route for a pod CIDR");
            }
        }
        Action::Delete(r) => {
            netlink.delete_route(r).await?;
            info!(dst = %r.dst, via = ?r.gateway, "route of a departed node deleted");
        }
        Action::Blocked { dst, holder } => {
            return Err(RouteFailure::Blocked {
                dst: (*dst).into(),
                protocol: holder.protocol,
            })
        }
    }
    Ok(())
}

/// Deletes every route the agent made, of both families; returns how many.
pub async fn remove_all(netlink: &Netlink) -> Result<usize, Error> {
    Ok(
        remove_family::<Ipv4Network>(netlink).await?
            + remove_family::<Ipv6Network>(netlink).await?,
    )
}

async fn remove_family<N: Routed>(netlink: &Netlink) -> Result<usize, Error> {
    let mine: Vec<RouteOf<N>> = netlink
        .routes_of::<N>()
        .await?
        .into_iter()
        .filter(|r| r.protocol == protocol::AGENT)
        .collect();
    for r in &mine {
        netlink.delete_route(r).await?;
        info!(dst = %r.dst, via = ?r.gateway, "route deleted");
    }
    Ok(mine.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, cidr: &str) -> NodeRecord {
        NodeRecord::v4(name, ip.parse().unwrap(), cidr.parse().unwrap())
    }

    fn cluster() -> Vec<NodeRecord> {
        vec![
            node("node-1", "172.18.0.2", "10.244.1.0/24"),
            node("node-2", "172.18.0.3", "10.244.2.0/24"),
            node("node-3", "172.18.0.4", "10.244.3.0/24"),
        ]
    }

    use crate::agent::fixtures::dual;
    use crate::netlink::{Route, Route6};

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn agent(dst: &str, gw: &str) -> Route {
        Route::via_gateway(net(dst), gw.parse().unwrap(), Some(2), protocol::AGENT)
    }

    fn want(dst: &str, gw: &str) -> Route {
        Route::via_gateway(net(dst), gw.parse().unwrap(), None, protocol::AGENT)
    }

    /// node-1's view: the routes it wants.
    fn want1(nodes: &[NodeRecord]) -> Vec<Want<Ipv4Network>> {
        of_family(&desired(&nodes[1..]))
    }

    #[test]
    fn converged_means_nothing_to_do() {
        let nodes = cluster();
        let current = vec![
            agent("10.244.2.0/24", "172.18.0.3"),
            agent("10.244.3.0/24", "172.18.0.4"),
            Route::via_link(net("172.18.0.0/16"), 2, libc::RTPROT_KERNEL),
        ];
        assert!(plan(&want1(&nodes), &current, &[]).is_empty());
    }

    #[test]
    fn adds_replaces_and_deletes_only_its_own() {
        let nodes = cluster();
        let stale = agent("10.244.2.0/24", "172.18.0.99");
        let gone = agent("10.244.9.0/24", "172.18.0.10");
        let foreign_elsewhere =
            Route::via_gateway(net("192.0.2.0/24"), "172.18.0.50".parse().unwrap(), None, 4);
        let pod = Route::via_link(net("10.244.1.5/32"), 7, protocol::CNI);
        let current = vec![stale.clone(), gone.clone(), foreign_elsewhere, pod];
        assert_eq!(
            plan(&want1(&nodes), &current, &[]),
            vec![
                Action::Replace {
                    route: want("10.244.2.0/24", "172.18.0.3"),
                    was: stale
                },
                Action::Add(want("10.244.3.0/24", "172.18.0.4")),
                Action::Delete(gone),
            ]
        );
    }

    #[test]
    fn foreign_route_for_a_pod_cidr_is_taken_over() {
        let nodes = cluster();
        let foreign = Route::via_gateway(
            net("10.244.3.0/24"),
            "172.18.0.50".parse().unwrap(),
            None,
            4,
        );
        let current = vec![agent("10.244.2.0/24", "172.18.0.3"), foreign.clone()];
        assert_eq!(
            plan(&want1(&nodes), &current, &[]),
            vec![Action::Replace {
                route: want("10.244.3.0/24", "172.18.0.4"),
                was: foreign
            }]
        );
    }

    #[test]
    fn connected_subnet_is_never_replaced() {
        let nodes = vec![
            node("node-1", "172.18.0.2", "10.244.1.0/24"),
            node("node-2", "172.18.0.3", "172.18.0.0/16"),
        ];
        let connected = Route::via_link(net("172.18.0.0/16"), 2, libc::RTPROT_KERNEL);
        assert_eq!(
            plan(&want1(&nodes), std::slice::from_ref(&connected), &[]),
            vec![Action::Blocked {
                dst: net("172.18.0.0/16"),
                holder: connected
            }]
        );
    }

    #[test]
    fn a_blackhole_for_a_pod_cidr_is_taken_over() {
        let nodes = cluster();
        let mut blackhole = Route::matching(net("10.244.3.0/24"), 4);
        blackhole.kind = netlink_packet_route::route::RouteType::BlackHole;
        let current = vec![agent("10.244.2.0/24", "172.18.0.3"), blackhole.clone()];
        assert_eq!(
            plan(&want1(&nodes), &current, &[]),
            vec![Action::Replace {
                route: want("10.244.3.0/24", "172.18.0.4"),
                was: blackhole
            }]
        );
    }

    #[test]
    fn kept_routes_stay() {
        let nodes = cluster();
        let kept = agent("10.244.9.0/24", "172.18.0.10");
        let current = vec![
            agent("10.244.2.0/24", "172.18.0.3"),
            agent("10.244.3.0/24", "172.18.0.4"),
            kept.clone(),
        ];
        assert!(plan(&want1(&nodes), &current, &[hop(&kept).unwrap()]).is_empty());
    }

    #[test]
    fn each_family_is_planned_against_its_own_table() {
        let wanted = desired(&[dual("node-2", 2), dual("node-3", 3)]);
        let six = |dst: &str, gw: &str| {
            Route6::via_gateway(
                dst.parse().unwrap(),
                gw.parse().unwrap(),
                None,
                protocol::AGENT,
            )
        };
        // node-3's IPv6 route is there with a stale gateway, a departed node's is left.
        // As the kernel reads them back: at IPv6's default metric.
        let read_back = |mut r: Route6| {
            r.metric = 1024;
            r
        };
        let stale = read_back(six("fd00:10:244:3::/64", "fc00:f853:ccd:e793::99"));
        let gone = read_back(six("fd00:10:244:9::/64", "fc00:f853:ccd:e793::10"));
        let current6 = vec![stale.clone(), gone.clone()];
        assert_eq!(
            plan(&of_family::<Ipv6Network>(&wanted), &current6, &[]),
            vec![
                Action::Add(six("fd00:10:244:2::/64", "fc00:f853:ccd:e793::3")),
                Action::Replace {
                    route: six("fd00:10:244:3::/64", "fc00:f853:ccd:e793::4"),
                    was: stale
                },
                Action::Delete(gone),
            ]
        );
        // The IPv4 table is planned from the IPv4 half only.
        assert_eq!(
            plan(&of_family::<Ipv4Network>(&wanted), &[], &[]),
            vec![
                Action::Add(want("10.244.2.0/24", "172.18.0.3")),
                Action::Add(want("10.244.3.0/24", "172.18.0.4")),
            ]
        );
    }

    #[test]
    fn an_ipv6_route_read_back_at_the_kernels_metric_is_left_alone() {
        let wanted: Vec<Want<Ipv6Network>> = vec![(
            "fd00:10:244:2::/64".parse().unwrap(),
            "fc00:f853:ccd:e793::3".parse().unwrap(),
            None,
        )];
        let mut made = Route6::via_gateway(wanted[0].0, wanted[0].1, None, protocol::AGENT);
        made.metric = 1024;
        assert!(plan(&wanted, &[made], &[]).is_empty());
    }

    #[test]
    fn its_own_routes_at_another_metric_go() {
        let nodes = cluster();
        let mut stray = agent("10.244.3.0/24", "172.18.0.99");
        stray.metric = 50;
        let current = vec![
            agent("10.244.2.0/24", "172.18.0.3"),
            agent("10.244.3.0/24", "172.18.0.4"),
            stray.clone(),
        ];
        assert_eq!(
            plan(&want1(&nodes), &current, &[]),
            vec![Action::Delete(stray)]
        );
    }
}
