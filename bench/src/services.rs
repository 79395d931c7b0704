//! Section `services`: Services and the cluster DNS, on an emulated cluster of 10 nodes
//! (`<tag>-svc`).
//!
//! 1. Pod Ready → endpoint on every node: the Service `bench` (port 80 → 8080) and a client
//!    sandbox on every node connecting to its ClusterIP every 2 ms (while it has no ready
//!    endpoint, an attempt is refused at once). Each repetition applies a pod on node-1
//!    whose container sleeps (no probe: Ready once running; the bench listens on 8080 in its
//!    namespace); time from the moment its supervisor records it Ready (its status file, read
//!    every millisecond) to each node's first connection through. The pod is then deleted.
//! 2. DNS: A queries for `bench.default.svc.cluster.local` over UDP from the node-1 client to
//!    10.96.0.10 (through the proxy's DNAT to the DNS pod), one at a time and from 4 threads,
//!    for 3 s each.
//! 3. Throughput: iperf3 from the node-1 client to a server sandbox on node-2, to its pod IP
//!    and through the Service `iperf` (its ClusterIP), runs interleaved.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use flatnet::emulator::manifest;
use flatnet::emulator::objects::ApplyOptions;
use flatnet::emulator::{Cluster, StateRoot, UpOptions};

use crate::cni::verdict;
use crate::datapath;
use crate::util::{self, median, ms, progress, table, Ctx, Fig};

const NODES: u32 = 10;
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(20);
const ATTEMPT_GAP: Duration = Duration::from_millis(2);

pub fn run(ctx: &Ctx) -> Result<(String, Value)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Not under the work dir, which is on /dev/shm: a container's /dev/shm is its pod's own,
    // so the DNS pod would not see the zone in a state dir there.
    let state = std::env::temp_dir().join(format!("{}-svc-state", ctx.tag));
    let root = StateRoot::new(&state);
    let cluster = Cluster::new(&root, &format!("{}-svc", ctx.tag))?;
    let result = measure(ctx, &cluster, &rt);
    progress("services: removing the cluster");
    let down = rt.block_on(cluster.down());
    let _ = std::fs::remove_dir(&state);
    let r = result?;
    down.context("remove the services cluster")?;
    Ok(r)
}

pub(crate) fn apply(cluster: &Cluster, yaml: &str) -> Result<()> {
    let objs = manifest::parse(yaml).map_err(anyhow::Error::msg)?;
    let opts = ApplyOptions {
        restart_backoff: Duration::from_secs(1),
        force: false,
    };
    cluster.apply(&objs, "default", false, opts)?;
    Ok(())
}

pub(crate) fn cluster_ip(cluster: &Cluster, name: &str) -> Result<Ipv4Addr> {
    let svc = cluster.service("default", name)?.context("the Service")?;
    svc["spec"]["clusterIP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("the Service's ClusterIP")
}

fn measure(ctx: &Ctx, cluster: &Cluster, rt: &tokio::runtime::Runtime) -> Result<(String, Value)> {
    progress(&format!(
        "services: a {NODES}-node cluster, a client on every node"
    ));
    let opts = UpOptions {
        nodes: NODES,
        agent_resync: Duration::from_secs(10),
        ..UpOptions::default()
    };
    rt.block_on(cluster.up(&opts, &|m| progress(&format!("services: up: {m}"))))?;
    apply(
        cluster,
        "apiVersion: v1\nkind: Service\nmetadata: {name: bench}\nspec:\n  selector: {bench: ep}\n  \
         ports: [{port: 80, targetPort: 8080}]\n---\napiVersion: v1\nkind: Service\n\
         metadata: {name: iperf}\nspec:\n  selector: {bench: iperf}\n  ports: [{port: 5201}]\n",
    )?;
    let mut clients = Vec::new();
    for i in 1..=NODES {
        clients.push(cluster.run_sandbox(
            "default",
            &format!("c{i}"),
            Some(&format!("node-{i}")),
        )?);
    }
    let vip = SocketAddr::from((cluster_ip(cluster, "bench")?, 80));
    let reps = ctx.reps.max(3);
    let (md1, js1) = ready_to_endpoint(cluster, &clients, vip, reps)?;
    util::check_interrupt()?;
    let (md2, js2) = dns(&clients[0].netns)?;
    util::check_interrupt()?;
    let (md3, js3) = throughput(ctx, cluster, &clients[0].netns)?;
    Ok((
        format!("{md1}\n{md2}\n{md3}"),
        json!({"ready_to_endpoint": js1, "dns": js2, "throughput": js3}),
    ))
}

type Attempts = Mutex<Vec<(Instant, bool)>>;

fn ready_to_endpoint(
    cluster: &Cluster,
    clients: &[flatnet::emulator::state::PodRecord],
    vip: SocketAddr,
    reps: usize,
) -> Result<(String, Value)> {
    let stop = AtomicBool::new(false);
    let attempts: Vec<Attempts> = clients.iter().map(|_| Mutex::new(Vec::new())).collect();
    let namespaces = clients
        .iter()
        .map(|c| datapath::open(&c.netns))
        .collect::<Result<Vec<_>>>()?;
    let mut worst = Vec::new();
    let mut all = Vec::new();
    std::thread::scope(|scope| -> Result<()> {
        for (ns, log) in namespaces.iter().zip(&attempts) {
            let stop = &stop;
            scope.spawn(move || {
                let _ = ns.run(|| {
                    while !stop.load(Ordering::SeqCst) {
                        let ok = TcpStream::connect_timeout(&vip, ATTEMPT_TIMEOUT).is_ok();
                        log.lock().expect("not poisoned").push((Instant::now(), ok));
                        std::thread::sleep(ATTEMPT_GAP);
                    }
                });
            });
        }
        let outcome = (|| -> Result<()> {
            for rep in 0..reps {
                util::check_interrupt()?;
                let name = format!("ep{rep}");
                apply(
                    cluster,
                    &format!(
                        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{bench: ep}}}}\n\
                         spec:\n  nodeName: node-1\n  terminationGracePeriodSeconds: 0\n  \
                         containers:\n  - {{name: c, image: sleep, command: [sleep, inf]}}\n"
                    ),
                )?;
                let pod = cluster.dir().pod("default", &name)?.context("the pod")?;
                let ns = datapath::open(&pod.netns)?;
                let listener = ns
                    .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080)))?
                    .context("listen in the pod")?;
                listener.set_nonblocking(true)?;
                let pdir = cluster.dir().pod_dir("default", &name);
                let deadline = Instant::now() + Duration::from_secs(30);
                let ready_at = loop {
                    if pdir.status().is_some_and(|s| s.is_ready()) {
                        break Instant::now();
                    }
                    if Instant::now() > deadline {
                        bail!("{name} not Ready after 30 s");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                };
                let mut per_node = Vec::new();
                for log in &attempts {
                    let first = loop {
                        let _ = listener.accept();
                        let found = log
                            .lock()
                            .expect("not poisoned")
                            .iter()
                            .find(|(t, ok)| *ok && *t >= ready_at)
                            .map(|(t, _)| *t);
                        if let Some(t) = found {
                            break t;
                        }
                        if Instant::now() > deadline {
                            bail!("a node never reached {name} through the Service");
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    };
                    per_node.push(ms(first - ready_at));
                }
                let w = per_node.iter().cloned().fold(0.0, f64::max);
                progress(&format!(
                    "services: rep {}: an endpoint on every node {w:.1} ms after Ready",
                    rep + 1
                ));
                worst.push(w);
                all.extend(per_node);
                let gone = cluster.delete_pods(&[pod], Some(0), &|_| {})?;
                gone.into_iter()
                    .collect::<flatnet::emulator::Result<Vec<()>>>()?;
                for log in &attempts {
                    log.lock().expect("not poisoned").clear();
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::SeqCst);
        outcome
    })?;
    let (w, a) = (Fig::of(&worst), Fig::of(&all));
    let rows = vec![vec![
        "pod Ready → its Service reaches it from every node".to_string(),
        w.show(1),
        a.show(1),
        verdict(w.med <= 100.0).to_string(),
    ]];
    let md = format!(
        "### Pod Ready → endpoint on every node, {NODES} nodes\n\n\
         A client on each of {NODES} nodes connecting to the ClusterIP every {} ms; a pod on \
         node-1 applied per repetition; time from its supervisor recording it Ready to each \
         node's first connection through the Service; {reps} repetitions. Target ≤ 100 ms.\n\n{}",
        ms(ATTEMPT_GAP),
        table(
            &[
                "change",
                "slowest node, ms (median [min–max] of reps)",
                "any node, ms",
                "≤ 100 ms"
            ],
            &rows
        )
    );
    Ok((
        md,
        json!({"nodes": NODES, "slowest_ms": w.json(), "any_ms": a.json()}),
    ))
}

fn query(id: u16) -> Vec<u8> {
    let mut q = vec![(id >> 8) as u8, id as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in ["bench", "default", "svc", "cluster", "local"] {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Answered queries per second from `threads` clients, one query in flight each.
fn qps(netns: &str, threads: usize, secs: u64) -> Result<f64> {
    let dns = SocketAddr::from(([10, 96, 0, 10], 53));
    let counts: Vec<Result<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(move || -> Result<u64> {
                    let ns = datapath::open(netns)?;
                    ns.run(|| -> Result<u64> {
                        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                        s.set_read_timeout(Some(Duration::from_millis(200)))?;
                        let end = Instant::now() + Duration::from_secs(secs);
                        let mut n = 0u64;
                        let mut buf = [0u8; 512];
                        let mut id = 0u16;
                        while Instant::now() < end {
                            id = id.wrapping_add(1);
                            s.send_to(&query(id), dns)?;
                            if let Ok(len) = s.recv(&mut buf) {
                                if len > 12 && buf[..2] == id.to_be_bytes() && buf[7] == 1 {
                                    n += 1;
                                }
                            }
                        }
                        Ok(n)
                    })?
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a DNS client panicked"))
            .collect()
    });
    let total: u64 = counts.into_iter().sum::<Result<u64>>()?;
    Ok(total as f64 / secs as f64)
}

fn dns(netns: &str) -> Result<(String, Value)> {
    progress("services: waiting for the cluster DNS");
    let deadline = Instant::now() + Duration::from_secs(60);
    while qps(netns, 1, 1)? < 1.0 {
        if Instant::now() > deadline {
            bail!("the cluster DNS never answered");
        }
    }
    let one = qps(netns, 1, 3)?;
    let four = qps(netns, 4, 3)?;
    progress(&format!(
        "services: DNS {one:.0} queries/s (1 client), {four:.0} (4)"
    ));
    let md = format!(
        "### Cluster DNS\n\nA queries for a Service's name over UDP to 10.96.0.10 (DNAT to the \
         DNS pod), one in flight per client, 3 s each.\n\n{}",
        table(
            &["clients", "answered queries/s"],
            &[
                vec!["1".into(), format!("{one:.0}")],
                vec!["4".into(), format!("{four:.0}")]
            ]
        )
    );
    Ok((md, json!({"qps_1": one, "qps_4": four})))
}

fn throughput(ctx: &Ctx, cluster: &Cluster, client_ns: &str) -> Result<(String, Value)> {
    let server = cluster.run_sandbox("default", "iperf", Some("node-2"))?;
    cluster.label(
        flatnet::emulator::objects::LabelKind::Pod,
        "default",
        &["iperf".to_string()],
        &[flatnet::emulator::labels::Change::parse("bench=iperf").map_err(anyhow::Error::msg)?],
        false,
    )?;
    let pod_ip = server.ipv4().context("the server has no IP")?.to_string();
    let vip = cluster_ip(cluster, "iperf")?.to_string();
    datapath::server(&server.netns, "0.0.0.0")?;
    // The endpoint is in node-1's table within a pass of the controller.
    let target = SocketAddr::from((vip.parse::<Ipv4Addr>()?, 5201));
    let client = datapath::open(client_ns)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client.run(|| TcpStream::connect_timeout(&target, ATTEMPT_TIMEOUT).is_ok())? {
        if Instant::now() > deadline {
            bail!("the Service iperf never answered");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let secs = if ctx.quick { 2 } else { 5 };
    let runs = ctx.reps.max(3);
    let mut direct = Vec::new();
    let mut via = Vec::new();
    for i in 0..runs {
        util::check_interrupt()?;
        direct.push(datapath::iperf(client_ns, &pod_ip, secs)?.gbps);
        via.push(datapath::iperf(client_ns, &vip, secs)?.gbps);
        progress(&format!(
            "services: iperf3 run {}: pod IP {:.2} Gbit/s, ClusterIP {:.2} Gbit/s",
            i + 1,
            direct[i],
            via[i]
        ));
    }
    let ratio = median(&via) / median(&direct);
    let (d, v) = (Fig::of(&direct), Fig::of(&via));
    let md = format!(
        "### Service path throughput\n\niperf3 TCP, one stream, {secs} s per run, client on \
         node-1, server on node-2, {runs} runs per path interleaved (Gbit/s: median \
         (min–max)). Target: the Service path ≥ 0.95 of the direct one.\n\n{}",
        table(
            &["path", "Gbit/s", "ratio", "≥ 0.95"],
            &[
                vec!["pod IP".into(), d.show(2), "1".into(), String::new()],
                vec![
                    "ClusterIP (DNAT at node-1)".into(),
                    v.show(2),
                    format!("{ratio:.3}"),
                    verdict(ratio >= 0.95).to_string()
                ]
            ]
        )
    );
    Ok((
        md,
        json!({"direct_gbps": d.json(), "service_gbps": v.json(), "ratio": ratio}),
    ))
}
