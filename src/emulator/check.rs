//! The connectivity matrix: a real TCP exchange from every pod to every other pod, in which
//! the receiver writes back the source address it saw. A flat network shows each sender's own
//! pod IP; anything else is NAT.
//!
//! Each pod gets a listener inside its namespace on a port the kernel picks (so it never
//! collides with what the pod itself serves); each sender connects from a thread that entered
//! its namespace. Senders run in parallel, a bounded number at a time.
//!
//! One matrix is one address family: a dual-stack cluster is checked once over IPv4 and once
//! over IPv6, each pod sending from and to its address of that family, so NAT in one family
//! cannot hide behind the other.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use super::state::{Family, PodRecord};
use super::{io_err, Result};
use crate::netns::{self, NetNs};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Senders at a time: enough to hide the latency of a failing probe, few enough for 2 cores.
const PARALLEL: usize = 8;

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum Outcome {
    /// The receiver saw the sender's pod IP.
    Ok {
        seen: IpAddr,
    },
    /// The receiver saw another address: something rewrote the source.
    Nat {
        seen: IpAddr,
    },
    Failed {
        error: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub from: String,
    pub to: String,
    pub family: Family,
    #[serde(rename = "fromIP")]
    pub from_ip: IpAddr,
    #[serde(rename = "toIP")]
    pub to_ip: IpAddr,
    /// The TCP port probed (the receiver's listener): what a NetworkPolicy's ports match.
    #[serde(rename = "toPort")]
    pub to_port: u16,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Probes every ordered pair of distinct pods that have an IP of `family`, by those IPs.
pub fn matrix(pods: &[PodRecord], family: Family) -> Result<Vec<Probe>> {
    let with_ip: Vec<PodRecord> = pods
        .iter()
        .filter(|p| p.ip(family).is_some())
        .cloned()
        .collect();
    let n = with_ip.len();
    let pairs: Vec<(usize, usize)> = (0..n)
        .flat_map(|a| (0..n).filter(move |b| *b != a).map(move |b| (a, b)))
        .collect();
    probe(&with_ip, &pairs, family)
}

/// Probes the given (sender, receiver) pairs, indexes into `pods`, which must all have an IP
/// of `family`. Returns the probes in the order of `pairs`.
pub fn probe(pods: &[PodRecord], pairs: &[(usize, usize)], family: Family) -> Result<Vec<Probe>> {
    let ip = |i: usize| pods[i].ip(family).expect("pods have IPs of the family");
    let any: IpAddr = match family {
        Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
        Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
    };
    let namespaces: Vec<NetNs> = pods
        .iter()
        .map(|p| {
            NetNs::open(netns::named_path(&p.netns))
                .map_err(io_err(format!("open netns {}", p.netns)))
        })
        .collect::<Result<_>>()?;
    let mut receivers = vec![false; pods.len()];
    for &(_, b) in pairs {
        receivers[b] = true;
    }
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; pairs.len()]);
    let mut ports = vec![0u16; pods.len()];
    let mut listeners = Vec::new();
    for (i, ns) in namespaces.iter().enumerate().filter(|(i, _)| receivers[*i]) {
        let listener = ns
            .run(|| TcpListener::bind((any, 0)))
            .and_then(|l| l)
            .map_err(io_err(format!("listen in {}", pods[i].netns)))?;
        ports[i] = listener
            .local_addr()
            .map_err(io_err("listener address"))?
            .port();
        listeners.push(listener);
    }
    // Senders, grouped by source so each thread enters one namespace once.
    let mut by_source: Vec<Vec<usize>> = vec![Vec::new(); pods.len()];
    for (k, &(a, _)) in pairs.iter().enumerate() {
        by_source[a].push(k);
    }
    let work: Mutex<Vec<usize>> = Mutex::new(
        (0..pods.len())
            .filter(|a| !by_source[*a].is_empty())
            .collect(),
    );
    std::thread::scope(|s| {
        let servers: Vec<_> = listeners
            .into_iter()
            .map(|l| {
                let stop = &stop;
                s.spawn(move || serve(l, stop))
            })
            .collect();
        let workers: Vec<_> = (0..PARALLEL)
            .map(|_| {
                s.spawn(|| loop {
                    let Some(a) = work.lock().expect("not poisoned").pop() else {
                        return;
                    };
                    let outcomes: Vec<(usize, Outcome)> = match namespaces[a].run(|| {
                        by_source[a]
                            .iter()
                            .map(|&k| {
                                let b = pairs[k].1;
                                (k, exchange(SocketAddr::new(ip(b), ports[b]), Some(ip(a))))
                            })
                            .collect()
                    }) {
                        Ok(v) => v,
                        Err(e) => by_source[a]
                            .iter()
                            .map(|&k| {
                                (
                                    k,
                                    Outcome::Failed {
                                        error: format!("enter {}: {e}", pods[a].netns),
                                    },
                                )
                            })
                            .collect(),
                    };
                    let mut r = results.lock().expect("not poisoned");
                    for (k, o) in outcomes {
                        r[k] = Some(o);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a sender does not panic");
        }
        stop.store(true, Ordering::SeqCst);
        for srv in servers {
            srv.join().expect("a receiver does not panic");
        }
    });
    let results = results.into_inner().expect("not poisoned");
    Ok(pairs
        .iter()
        .zip(results)
        .map(|(&(a, b), outcome)| Probe {
            from: pods[a].display_name(),
            to: pods[b].display_name(),
            family,
            from_ip: ip(a),
            to_ip: ip(b),
            to_port: ports[b],
            outcome: outcome.expect("every pair was probed"),
        })
        .collect())
}

/// Accepts until told to stop, answering each connection with the peer address it came from.
pub(crate) fn serve(listener: TcpListener, stop: &AtomicBool) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut conn, peer)) => {
                let _ = conn.set_nonblocking(false);
                let _ = writeln!(conn, "{}", peer.ip());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// One connection to `dst`; compares what the receiver saw with `expected`.
pub(crate) fn exchange(dst: SocketAddr, expected: Option<IpAddr>) -> Outcome {
    let answer = (|| {
        let mut conn = TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        Ok::<_, std::io::Error>(text)
    })();
    match answer {
        Ok(text) => match text.trim().parse::<IpAddr>() {
            Ok(seen) if Some(seen) == expected => Outcome::Ok { seen },
            Ok(seen) => Outcome::Nat { seen },
            Err(_) => Outcome::Failed {
                error: format!("unexpected answer {text:?}"),
            },
        },
        Err(e) => Outcome::Failed {
            error: format!("{dst}: {e}"),
        },
    }
}

/// The matrix as text: one row per sender, one column per receiver, each cell the source
/// address the receiver saw. In a flat network every cell of a row is that row's own IP.
pub fn render(probes: &[Probe]) -> String {
    render_with(probes, &[])
}

/// Where a failed probe broke, by index into the probes: what `flatnet trace` found on its
/// path.
pub type Diagnoses = [(usize, String)];

fn diagnosis(why: &Diagnoses, i: usize) -> Option<&str> {
    why.iter().find(|(k, _)| *k == i).map(|(_, w)| w.as_str())
}

/// [`render`], each failed cell followed by where its path broke.
pub fn render_with(probes: &[Probe], why: &Diagnoses) -> String {
    let mut names: Vec<(&str, IpAddr)> = Vec::new();
    for p in probes {
        for (n, ip) in [(p.from.as_str(), p.from_ip), (p.to.as_str(), p.to_ip)] {
            if !names.iter().any(|(m, _)| *m == n) {
                names.push((n, ip));
            }
        }
    }
    names.sort();
    let cell = |from: &str, to: &str| -> String {
        if from == to {
            return "-".into();
        }
        match probes.iter().find(|p| p.from == from && p.to == to) {
            None => String::new(),
            Some(p) => match &p.outcome {
                Outcome::Ok { seen } => seen.to_string(),
                Outcome::Nat { seen } => format!("{seen} NAT"),
                Outcome::Failed { .. } => "FAILED".into(),
            },
        }
    };
    let mut rows = vec![std::iter::once("FROM \\ TO".to_string())
        .chain(names.iter().map(|(n, _)| n.to_string()))
        .collect::<Vec<_>>()];
    for (from, ip) in &names {
        let mut row = vec![format!("{from} ({ip})")];
        row.extend(names.iter().map(|(to, _)| cell(from, to)));
        rows.push(row);
    }
    let mut out = super::table::render(&rows);
    let failed: Vec<(usize, &Probe)> = probes
        .iter()
        .enumerate()
        .filter(|(_, p)| !matches!(p.outcome, Outcome::Ok { .. }))
        .collect();
    for (i, p) in &failed {
        match &p.outcome {
            Outcome::Nat { seen } => out.push_str(&format!(
                "NAT: {} -> {} was seen as {seen}, not {}\n",
                p.from, p.to, p.from_ip
            )),
            Outcome::Failed { error } => {
                out.push_str(&format!("FAILED: {} -> {}: {error}\n", p.from, p.to))
            }
            Outcome::Ok { .. } => {}
        }
        if let Some(w) = diagnosis(why, *i) {
            out.push_str(&format!("  where: {w}\n"));
        }
    }
    let over = probes
        .first()
        .map_or(String::new(), |p| format!(" over {}", p.family));
    out.push_str(&format!(
        "{} of {} exchanges{over} reached the receiver from the sender's own pod IP{}\n",
        probes.len() - failed.len(),
        probes.len(),
        if failed.is_empty() { ": no NAT" } else { "" }
    ));
    out
}

/// One line per failed cell and nothing else: `FROM -> TO: where it broke`.
pub fn failures(probes: &[Probe], why: &Diagnoses) -> String {
    let mut out = String::new();
    for (i, p) in probes.iter().enumerate() {
        let what = match &p.outcome {
            Outcome::Ok { .. } => continue,
            Outcome::Nat { seen } => format!("NAT (seen as {seen})"),
            Outcome::Failed { error } => error.clone(),
        };
        // IPv4 cells name no family, as before dual-stack; an IPv6 one says it is.
        let family = match p.family {
            Family::V4 => "",
            Family::V6 => " (IPv6)",
        };
        out.push_str(&format!(
            "{} -> {}{family}: {}\n",
            p.from,
            p.to,
            diagnosis(why, i).unwrap_or(&what)
        ));
    }
    out
}

/// The probes as JSON, each failed one with a `where` saying where its path broke.
pub fn with_diagnoses(probes: &[Probe], why: &Diagnoses) -> Vec<serde_json::Value> {
    probes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut v = serde_json::to_value(p).expect("a probe serializes");
            if let Some(w) = diagnosis(why, i) {
                v["where"] = w.into();
            }
            v
        })
        .collect()
}

/// Whether every probe went through without NAT.
pub fn all_ok(probes: &[Probe]) -> bool {
    probes
        .iter()
        .all(|p| matches!(p.outcome, Outcome::Ok { .. }))
}

/// A probe that the NetworkPolicies in force deny, and that was denied: as expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denied {
    pub from: String,
    pub to: String,
    /// The policies isolating the side that refused it.
    pub policies: Vec<String>,
}

/// Holds the probes against what the NetworkPolicies of `view` expect. A failed probe they
/// deny was denied as expected: it is taken out of the probes and returned apart. A probe that
/// got through although they deny it becomes a failure naming them.
pub fn expect_policies(
    probes: Vec<Probe>,
    view: &crate::agent::policy::View,
) -> (Vec<Probe>, Vec<Denied>) {
    use crate::agent::policy::model::{End, Protocol};
    let pod = |ip: IpAddr| view.pods.iter().find(|p| p.ips.contains(&ip));
    let mut kept = Vec::new();
    let mut denied = Vec::new();
    for mut p in probes {
        let end = |ip: IpAddr| pod(ip).map_or(End::Addr(ip), End::Pod);
        let verdict = view.verdict(
            end(p.from_ip),
            p.from_ip,
            end(p.to_ip),
            p.to_ip,
            Protocol::Tcp,
            p.to_port,
            &[],
        );
        match (&p.outcome, verdict.allowed) {
            (_, true) => kept.push(p),
            (Outcome::Failed { .. }, false) => denied.push(Denied {
                from: p.from,
                to: p.to,
                policies: verdict.isolated_by,
            }),
            (Outcome::Ok { .. } | Outcome::Nat { .. }, false) => {
                p.outcome = Outcome::Failed {
                    error: format!(
                        "got through, but NetworkPolicy {} denies it",
                        verdict.isolated_by.join(", ")
                    ),
                };
                kept.push(p);
            }
        }
    }
    (kept, denied)
}

/// The probes denied as expected, one line each; nothing when there are none.
pub fn render_denied(denied: &[Denied]) -> String {
    if denied.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "{} exchanges denied as expected by NetworkPolicy:\n",
        denied.len()
    );
    for d in denied {
        out += &format!(
            "  {} -> {}: isolated by {}\n",
            d.from,
            d.to,
            d.policies.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(from: &str, to: &str, outcome: Outcome) -> Probe {
        let ip = |n: &str| -> IpAddr {
            if n == "a" { "10.0.1.2" } else { "10.0.2.2" }
                .parse()
                .unwrap()
        };
        Probe {
            from: from.into(),
            to: to.into(),
            family: Family::V4,
            from_ip: ip(from),
            to_ip: ip(to),
            to_port: 40000,
            outcome,
        }
    }

    #[test]
    fn renders_seen_sources_and_marks_nat() {
        let probes = [
            probe(
                "a",
                "b",
                Outcome::Ok {
                    seen: "10.0.1.2".parse().unwrap(),
                },
            ),
            probe(
                "b",
                "a",
                Outcome::Nat {
                    seen: "172.18.0.3".parse().unwrap(),
                },
            ),
        ];
        let text = render(&probes);
        assert!(text.contains("a (10.0.1.2)"), "{text}");
        assert!(text.contains("172.18.0.3 NAT"), "{text}");
        assert!(
            text.contains("NAT: b -> a was seen as 172.18.0.3, not 10.0.2.2"),
            "{text}"
        );
        assert!(text.contains("1 of 2 exchanges over IPv4"), "{text}");
        assert!(!all_ok(&probes));
    }

    #[test]
    fn failures_only_is_one_line_per_failed_cell_with_where_it_broke() {
        let probes = [
            probe(
                "a",
                "b",
                Outcome::Ok {
                    seen: "10.0.1.2".parse().unwrap(),
                },
            ),
            probe(
                "b",
                "a",
                Outcome::Failed {
                    error: "timed out".into(),
                },
            ),
        ];
        assert_eq!(failures(&probes, &[]), "b -> a: timed out\n");
        let why = [(1, "no route at hop 2 (node/node-2): …".to_string())];
        assert_eq!(
            failures(&probes, &why),
            "b -> a: no route at hop 2 (node/node-2): …\n"
        );
        assert!(render_with(&probes, &why).contains("  where: no route at hop 2"));
        assert_eq!(with_diagnoses(&probes, &why)[1]["where"], why[0].1.as_str());
    }
}
