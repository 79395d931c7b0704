//! Section `netpol`: NetworkPolicy.
//!
//! 1. Apply to enforcement, on every node: an emulated cluster of 10 nodes with a server on
//!    each and one client on node-1 that opens a TCP connection to every server every few
//!    milliseconds. A default-deny ingress policy is applied through the emulator (as
//!    `flatnet apply` does: stored, published into the registry, picked up by every agent's
//!    watch, compiled, written in one transaction); each server's enforcement time is the start of
//!    the first refused attempt after which none got through, less the moment apply began.
//!    Then the policy is deleted and the time to the first connection through again is taken
//!    the same way.
//! 2. Scale: 1,000 pods and 100 policies, all selecting the measured server, each admitting
//!    one group of ten pods; the client is in the last group, so the rule that admits it is the
//!    last of the server's chain. The agent's own compiler and table code build the table for
//!    the server's node; its size, the agent's CPU per change (compile, plus the write of the
//!    whole table through libnftables, and with `nft -f` for comparison), and iperf3
//!    throughput client → server on the hand-built two-pod topology of the datapath section,
//!    against the node's table without policies. Both tables are the agent's whole node table
//!    (anti-spoofing and egress masquerade, which already makes the node track connections),
//!    the one with policies adding them; they take turns in the same topology's router, so the
//!    ratio compares tables and nothing else.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use flatnet::agent::policy::model::{NamedPort, Protocol};
use flatnet::agent::policy::{compile, Judge, NamespaceInfo, Objects, PodInfo, Record};
use flatnet::agent::{antispoof, egress, nft::Ruleset};
use flatnet::emulator::manifest::Object;
use flatnet::emulator::objects::ApplyOptions;
use flatnet::emulator::{Cluster, StateRoot, UpOptions};
use flatnet::netns::NetNs;

use crate::cni::verdict;
use crate::datapath;
use crate::util::{self, ms, progress, table, Ctx, Fig};

const NODES: u32 = 10;
/// A refused attempt waits this long for the SYN-ACK that never comes.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(20);
/// Between attempts.
const ATTEMPT_GAP: Duration = Duration::from_millis(2);

pub fn run(ctx: &Ctx) -> Result<(String, Value)> {
    let (md1, js1) = enforcement(ctx)?;
    util::check_interrupt()?;
    let r = scale(ctx);
    progress("netpol: removing the hand-built namespaces");
    let mut gone = Ok(());
    for n in ["a", "r", "b"] {
        let ns = format!("{}-nppol-{n}", ctx.tag);
        if flatnet::netns::named_path(&ns).exists() {
            gone = gone.and(util::delete_ns(&ns));
        }
    }
    let (md2, js2) = r?;
    gone?;
    Ok((
        format!("{md1}\n{md2}"),
        json!({"enforcement": js1, "scale": js2}),
    ))
}

// ---- 1. apply to enforcement ------------------------------------------------------------

fn enforcement(ctx: &Ctx) -> Result<(String, Value)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let root = StateRoot::new(ctx.work.join("state"));
    let cluster = Cluster::new(&root, &format!("{}-np", ctx.tag))?;
    let result = measure_enforcement(ctx, &cluster, &rt);
    progress("netpol: removing the cluster");
    let down = rt.block_on(cluster.down());
    let r = result?;
    down.context("remove the netpol cluster")?;
    Ok(r)
}

/// One prober's attempts: when each started and ended, and whether it connected.
type Attempts = Mutex<Vec<(Instant, Instant, bool)>>;

fn policy_object(yaml: &str) -> Result<Object> {
    let mut objs = flatnet::emulator::manifest::parse(yaml).map_err(anyhow::Error::msg)?;
    Ok(objs.remove(0))
}

fn measure_enforcement(
    ctx: &Ctx,
    cluster: &Cluster,
    rt: &tokio::runtime::Runtime,
) -> Result<(String, Value)> {
    progress(&format!(
        "netpol: a {NODES}-node cluster, a server on every node, a client on node-1"
    ));
    let opts = UpOptions {
        nodes: NODES,
        agent_resync: Duration::from_secs(10),
        ..UpOptions::default()
    };
    rt.block_on(cluster.up(&opts, &|m| progress(&format!("netpol: up: {m}"))))?;
    let client = cluster.run_sandbox("default", "client", Some("node-1"))?;
    let mut servers = Vec::new();
    for i in 1..=NODES {
        servers.push(cluster.run_sandbox(
            "default",
            &format!("s{i}"),
            Some(&format!("node-{i}")),
        )?);
    }
    let open = |netns: &str| datapath::open(netns);
    let stop = AtomicBool::new(false);
    let client_ns = open(&client.netns)?;
    let mut listeners = Vec::new();
    let mut targets = Vec::new();
    for s in &servers {
        let ns = open(&s.netns)?;
        let l = ns
            .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 80)))?
            .context("listen in a server pod")?;
        l.set_nonblocking(true)?;
        listeners.push(l);
        targets.push(SocketAddr::from((
            s.ipv4().context("a server pod has no IP")?,
            80,
        )));
    }
    let attempts: Vec<Attempts> = targets.iter().map(|_| Mutex::new(Vec::new())).collect();
    let deny = policy_object(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: bench-deny}\nspec: {podSelector: {matchLabels: {bench: server}}}\n",
    )?;
    // The servers carry the label the policy selects (the client does not).
    let names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
    cluster.label(
        flatnet::emulator::objects::LabelKind::Pod,
        "default",
        &names,
        &[flatnet::emulator::labels::Change::parse("bench=server").map_err(anyhow::Error::msg)?],
        false,
    )?;
    let apply_opts = ApplyOptions {
        restart_backoff: Duration::from_secs(1),
        force: false,
    };
    let reps = ctx.reps.max(3);
    let mut close_worst = Vec::new();
    let mut close_all = Vec::new();
    let mut open_worst = Vec::new();
    let mut open_all = Vec::new();
    let result: Result<()> = std::thread::scope(|scope| {
        for l in &listeners {
            let stop = &stop;
            scope.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            });
        }
        for (t, log) in targets.iter().zip(&attempts) {
            let (stop, ns) = (&stop, &client_ns);
            scope.spawn(move || {
                let _ = ns.run(|| {
                    while !stop.load(Ordering::SeqCst) {
                        let start = Instant::now();
                        let ok = TcpStream::connect_timeout(t, ATTEMPT_TIMEOUT).is_ok();
                        log.lock()
                            .expect("not poisoned")
                            .push((start, Instant::now(), ok));
                        std::thread::sleep(ATTEMPT_GAP);
                    }
                });
            });
        }
        let outcome = (|| {
            wait_all(&attempts, Instant::now(), true, Duration::from_secs(30))
                .context("every server reachable before the policy")?;
            for rep in 0..reps {
                util::check_interrupt()?;
                let t0 = Instant::now();
                cluster.apply(std::slice::from_ref(&deny), "default", false, apply_opts)?;
                let closed = wait_all(&attempts, t0, false, Duration::from_secs(30))
                    .context("every server isolated")?;
                let t1 = Instant::now();
                cluster.delete_policies("default", &["bench-deny".to_string()])?;
                let opened = wait_all(&attempts, t1, true, Duration::from_secs(30))
                    .context("every server reachable again")?;
                let worst = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
                progress(&format!(
                    "netpol: rep {}: isolated on every node after {:.1} ms, open again after {:.1} ms",
                    rep + 1,
                    worst(&closed),
                    worst(&opened)
                ));
                close_worst.push(worst(&closed));
                open_worst.push(worst(&opened));
                close_all.extend(closed);
                open_all.extend(opened);
            }
            Ok(())
        })();
        stop.store(true, Ordering::SeqCst);
        outcome
    });
    result?;
    let (cw, ca, ow, oa) = (
        Fig::of(&close_worst),
        Fig::of(&close_all),
        Fig::of(&open_worst),
        Fig::of(&open_all),
    );
    let rows = vec![
        vec![
            "apply default-deny → every node isolates".to_string(),
            cw.show(1),
            ca.show(1),
            verdict(cw.med <= 100.0).to_string(),
        ],
        vec![
            "delete it → every node admits again".to_string(),
            ow.show(1),
            oa.show(1),
            "".to_string(),
        ],
    ];
    let md = format!(
        "### Apply to enforcement, {NODES} nodes\n\n\
         A server on each of {NODES} nodes, a client on node-1 connecting to each every \
         {} ms (a refused attempt gives up after {} ms); time from the start of apply \
         (in-process, as `flatnet apply` runs it) to the first refused attempt after which \
         none got through, per node; {reps} repetitions. Target ≤ 100 ms on every node.\n\n{}",
        ms(ATTEMPT_GAP),
        ms(ATTEMPT_TIMEOUT),
        table(
            &[
                "change",
                "slowest node, ms (median [min–max] of reps)",
                "any node, ms",
                "≤ 100 ms",
            ],
            &rows
        )
    );
    Ok((
        md,
        json!({"nodes": NODES, "isolate_slowest_ms": cw.json(), "isolate_any_ms": ca.json(),
            "open_slowest_ms": ow.json(), "open_any_ms": oa.json()}),
    ))
}

/// Waits until every prober's attempts since `since` end in a run of `want` (reachable or
/// not) of at least 100 ms; returns, per prober, ms from `since` to the start of that run.
fn wait_all(
    attempts: &[Attempts],
    since: Instant,
    want: bool,
    limit: Duration,
) -> Result<Vec<f64>> {
    let settle = Duration::from_millis(100);
    loop {
        let mut out = Vec::new();
        for a in attempts {
            let log = a.lock().expect("not poisoned");
            let recent: Vec<_> = log.iter().filter(|(s, _, _)| *s >= since).collect();
            // The run of `want` at the end, and where it began.
            let first = recent
                .iter()
                .rposition(|(_, _, ok)| *ok != want)
                .map_or(0, |i| i + 1);
            match recent.get(first) {
                Some((start, _, _)) if recent.last().is_some_and(|l| l.1 - *start >= settle) => {
                    out.push(ms(*start - since))
                }
                _ => break,
            }
        }
        if out.len() == attempts.len() {
            return Ok(out);
        }
        if since.elapsed() > limit {
            bail!("not settled after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- 2. 1,000 pods, 100 policies ----------------------------------------------------------

const POLICIES: usize = 100;
const PODS: usize = 1000;
const NODE: &str = "bench-node";

/// 1,000 pods (the client 10.97.0.2 and the server 10.97.0.3 of the hand-built topology,
/// on `NODE`, and 998 elsewhere), 100 policies selecting the server, policy `p{i}` admitting
/// group `g{i}` on TCP 5201; the client is in the last group.
fn objects(client_group: usize) -> Objects {
    let pod = |name: String, ip: Ipv4Addr, node: &str, labels: &[(&str, String)]| {
        let info = PodInfo {
            namespace: "default".into(),
            name: name.clone(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ips: vec![ip.into()],
            node: node.into(),
            ports: vec![NamedPort {
                name: "iperf".into(),
                port: 5201,
                protocol: Protocol::Tcp,
            }],
        };
        Record {
            key: format!("default_{name}"),
            value: Ok(info),
        }
    };
    let mut pods = vec![
        pod(
            "client".into(),
            Ipv4Addr::new(10, 97, 0, 2),
            NODE,
            &[("group", format!("g{client_group:03}"))],
        ),
        pod(
            "server".into(),
            Ipv4Addr::new(10, 97, 0, 3),
            NODE,
            &[("app", "server".into())],
        ),
    ];
    for i in 0..PODS - 2 {
        let ip = Ipv4Addr::new(10, 244, (1 + i / 250) as u8, (2 + i % 250) as u8);
        pods.push(pod(
            format!("p{i}"),
            ip,
            &format!("node-{}", 1 + i / 250),
            &[("group", format!("g{:03}", i % POLICIES))],
        ));
    }
    let policies = (0..POLICIES)
        .map(|i| {
            let np = serde_json::from_value(json!({
                "metadata": {"name": format!("p{i:03}"), "namespace": "default"},
                "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"group": format!("g{i:03}")}}}],
                        "ports": [{"port": 5201}]}]}
            }))
            .expect("a NetworkPolicy");
            Record {
                key: format!("default_p{i:03}"),
                value: Ok(np),
            }
        })
        .collect();
    Objects {
        pods,
        namespaces: vec![Record {
            key: "default".into(),
            value: Ok(NamespaceInfo {
                name: "default".into(),
                labels: [(
                    "kubernetes.io/metadata.name".to_string(),
                    "default".to_string(),
                )]
                .into(),
            }),
        }],
        policies,
    }
}

/// What the agent puts in `NODE`'s table without any policy: anti-spoofing and egress
/// masquerade for its pods (10.97.0.0/24 of the cluster's 10.97.0.0/16).
fn node_rules() -> String {
    let net = |s: &str| s.parse().expect("a CIDR");
    antispoof::rules()
        + &egress::rules(
            &[net("10.97.0.0/24")],
            &[net("10.97.0.0/16")],
            &["172.18.0.2".parse().expect("an address")],
        )
}

/// The node's table: [`node_rules`] and the policies of `objects` for `NODE`; with the time
/// the agent's compiler took.
fn node_table(objects: &Objects) -> (Ruleset, Duration) {
    let t = Instant::now();
    let (view, refused) = Judge::default().judge(objects);
    assert!(refused.is_empty(), "{refused:?}");
    let rules = compile::rules(&view, NODE, &["10.97.0.1".parse().expect("an address")]);
    let r = Ruleset::new(&(node_rules() + &rules));
    (r, t.elapsed())
}

/// `nft -f -` of `script` in `ns`: wall time and CPU (user + system) of the nft process.
fn nft_write(ns: &NetNs, script: &str) -> Result<(Duration, Duration)> {
    use std::io::Write;
    let mut cmd = flatnet::netns::command(Path::new("/usr/sbin/nft"), &[], Some(ns));
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = cmd.spawn().context("run nft")?;
    if let Some(mut p) = child.stdin.take() {
        p.write_all(script.as_bytes())?;
    }
    let pid = child.id() as libc::pid_t;
    let (status, ru) = crate::wait4::wait4(pid)?;
    let wall = t.elapsed();
    drop(child);
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("nft -f failed (status {status:#x})");
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Ok((wall, tv(ru.ru_utime) + tv(ru.ru_stime)))
}

/// The agent's own write of `ruleset` in `ns` (libnftables, a context made on a thread inside
/// `ns`): wall time and the process's CPU (user + system) around it.
fn agent_write(ns: &NetNs, ruleset: &Ruleset) -> Result<(Duration, Duration)> {
    let c0 = process_cpu();
    let t = Instant::now();
    flatnet::agent::nft::write(ruleset, Some(ns)).context("write the table")?;
    Ok((t.elapsed(), process_cpu() - c0))
}

fn process_cpu() -> Duration {
    util::rusage_cpu(libc::RUSAGE_SELF)
}

fn thread_cpu() -> Duration {
    util::rusage_cpu(libc::RUSAGE_THREAD)
}

fn scale(ctx: &Ctx) -> Result<(String, Value)> {
    progress(&format!(
        "netpol: {PODS} pods, {POLICIES} policies selecting the server; hand-built topology"
    ));
    let objs = objects(POLICIES - 1);
    let (with, _) = node_table(&objs);
    let base = Ruleset::new(&node_rules());
    let script = with.script();
    let chain_rules = script
        .lines()
        .skip_while(|l| !l.contains("chain ingress_"))
        .filter(|l| l.trim_end().ends_with("accept") || l.contains("drop"))
        .count();
    // The client's rule is the last admitting one of the server's chain.
    let last_accept = script
        .lines()
        .rfind(|l| l.contains("accept") && l.contains("tcp dport 5201"))
        .unwrap_or_default();
    if !last_accept.contains("10.97.0.2") {
        bail!("the client's rule is not the chain's last: {last_accept}");
    }
    let (pa, pb, pip) = datapath::hand_built(&ctx.tag, "nppol")?;
    let router = datapath::open(&format!("{}-nppol-r", ctx.tag))?;
    nft_write(&router, script)?;

    // CPU per change: a pod of another group moves into the client's group and back, each
    // change compiled and written whole, as the agent does.
    let changes = if ctx.quick { 6 } else { 20 };
    let mut compile_ms = Vec::new();
    let mut compile_cpu = Vec::new();
    let mut nft_wall = Vec::new();
    let mut nft_cpu = Vec::new();
    let mut lib_wall = Vec::new();
    let mut lib_cpu = Vec::new();
    for i in 0..changes {
        util::check_interrupt()?;
        let objs = objects(if i % 2 == 0 { 0 } else { POLICIES - 1 });
        let c0 = thread_cpu();
        let (table, took) = node_table(&objs);
        compile_cpu.push(ms(thread_cpu() - c0));
        compile_ms.push(ms(took));
        let (wall, cpu) = nft_write(&router, table.script())?;
        nft_wall.push(ms(wall));
        nft_cpu.push(ms(cpu));
        let (wall, cpu) = agent_write(&router, &table)?;
        lib_wall.push(ms(wall));
        lib_cpu.push(ms(cpu));
    }
    let server = datapath::server(&pb, &pip)?;
    let secs = if ctx.quick { 1 } else { 2 };
    let mut base_gbps = Vec::new();
    let mut pol_gbps = Vec::new();
    let mut ratios = Vec::new();
    let measure = |table: &str| -> Result<f64> {
        nft_write(&router, table)?;
        Ok(datapath::iperf(&pa, &pip, secs)?.gbps)
    };
    for rep in 0..ctx.reps {
        util::check_interrupt()?;
        let (x, y) = if rep % 2 == 0 {
            let x = measure(base.script())?;
            (x, measure(script)?)
        } else {
            let y = measure(script)?;
            (measure(base.script())?, y)
        };
        progress(&format!(
            "netpol: rep {}: {x:.2} Gbit/s without policies, {y:.2} with",
            rep + 1
        ));
        base_gbps.push(x);
        pol_gbps.push(y);
        ratios.push(y / x);
    }
    util::stop_child(server);
    let (bf, pf, rf) = (Fig::of(&base_gbps), Fig::of(&pol_gbps), Fig::of(&ratios));
    let (cm, cc, nw, nc, lw, lc) = (
        Fig::of(&compile_ms),
        Fig::of(&compile_cpu),
        Fig::of(&nft_wall),
        Fig::of(&nft_cpu),
        Fig::of(&lib_wall),
        Fig::of(&lib_cpu),
    );
    let per_change_cpu = cc.med + lc.med;
    let md = format!(
        "### {PODS} pods, {POLICIES} policies selecting the server\n\n\
         Policy `p{{i}}` admits the ten pods of group `g{{i}}` on TCP 5201; the client is in \
         the last group, so the rule admitting it is the last of the server's chain \
         (checked). The table is built by the agent's own code (policy compiler, `Ruleset`) \
         for the server's node and written in one transaction into the router of the hand-built \
         two-pod topology (the datapath section's), as the agent writes it. For throughput it \
         takes turns in that router with the node's table without policies (anti-spoofing and \
         egress masquerade: the node tracks connections either way), rewritten before each \
         run.\n\n\
         - nft transaction: {} bytes, {} rules in the pod chains ({} lines in all)\n\
         - agent CPU per change ({changes} changes: a pod moving between groups): compile \
         {} ms CPU ({} ms wall), the whole table written through libnftables as the agent \
         does {} ms CPU ({} ms wall; with the `nft -f` tool: {} ms CPU, {} ms wall): \
         **{per_change_cpu:.1} ms** per change\n\n{}",
        script.len(),
        chain_rules,
        script.lines().count(),
        cc.show(1),
        cm.show(1),
        lc.show(1),
        lw.show(1),
        nc.show(1),
        nw.show(1),
        table(
            &[
                "iperf3 TCP client → server",
                "Gbit/s (median [min–max])",
                "ratio",
                "≥ 0.95"
            ],
            &[
                vec![
                    "node table without policies (anti-spoofing, egress masquerade)".into(),
                    bf.show(2),
                    "1".into(),
                    "".into(),
                ],
                vec![
                    format!("with {POLICIES} policies, the admitting rule last"),
                    pf.show(2),
                    rf.show(3),
                    verdict(rf.med >= 0.95).to_string(),
                ],
            ]
        )
    );
    Ok((
        md,
        json!({"script_bytes": script.len(), "chain_rules": chain_rules,
            "compile_cpu_ms": cc.json(), "compile_wall_ms": cm.json(),
            "nft_cpu_ms": nc.json(), "nft_wall_ms": nw.json(),
            "libnftables_cpu_ms": lc.json(), "libnftables_wall_ms": lw.json(),
            "gbps_without": bf.json(), "gbps_with": pf.json(), "ratio": rf.json()}),
    ))
}
