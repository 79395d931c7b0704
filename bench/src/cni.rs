//! Section 1: the CNI path. flatnet-cni, the reference ptp + host-local and a no-op plugin, all
//! exec'd the same way (clean env + CNI_* + stdin, from a node netns, into a fresh pod netns),
//! alternating in one run.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::Ipv4Network;
use serde_json::{json, Value};

use flatnet::netlink::{protocol, Netlink, Route, VethSpec, RETIRED};
use flatnet::netns::{self, NetNs};

use crate::util::{self, ms, pct, progress, table, Ctx, Exec, Fig};

const SUBNET: &str = "10.244.0.0/16";
/// The IPv6 pod CIDR of the dual-stack comparison: a /64 per node, as kind gives.
const SUBNET6: &str = "fd00:10:244::/64";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const PARALLEL: usize = 8;

struct Plugin {
    /// flatnet, ptp, noop
    name: &'static str,
    short: &'static str,
    bin: PathBuf,
    conf: Value,
    node: Arc<NetNs>,
}

#[derive(Default)]
struct Samples {
    add_p: Vec<[f64; 3]>,
    del_p: Vec<[f64; 3]>,
    serial_add_rate: Vec<f64>,
    serial_del_rate: Vec<f64>,
    par_add_rate: Vec<f64>,
    par_del_rate: Vec<f64>,
    rss_add: Vec<f64>,
    rss_del: Vec<f64>,
    add_user: Vec<f64>,
    add_sys: Vec<f64>,
    del_user: Vec<f64>,
    del_sys: Vec<f64>,
    churn_serial: Vec<f64>,
    churn_parallel: Vec<f64>,
}

fn cni_env(ctx: &Ctx, cmd: &str, cid: &str, netns: &str, pod: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", cmd.to_string()),
        ("CNI_CONTAINERID", cid.to_string()),
        ("CNI_NETNS", netns.to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        (
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={cid}"
            ),
        ),
        ("CNI_PATH", ctx.work.join("bin").display().to_string()),
    ]
}

impl Plugin {
    fn add(&self, ctx: &Ctx, cid: &str, pod_ns: &str) -> Result<(Exec, Value)> {
        self.add_via(ctx, cid, pod_ns, None)
    }

    fn add_via(
        &self,
        ctx: &Ctx,
        cid: &str,
        pod_ns: &str,
        launcher: Option<&std::path::Path>,
    ) -> Result<(Exec, Value)> {
        let stdin = serde_json::to_vec(&self.conf)?;
        let path = netns::named_path(pod_ns).display().to_string();
        let env = cni_env(ctx, "ADD", cid, &path, pod_ns);
        let e = util::exec_via(launcher, &self.bin, &env, &stdin, &self.node)
            .with_context(|| format!("exec {}", self.name))?;
        if !e.ok() {
            bail!("{} ADD {cid}: {}", self.name, e.explain());
        }
        let result: Value = serde_json::from_slice(&e.stdout)
            .with_context(|| format!("{} ADD result: {}", self.name, e.explain()))?;
        Ok((e, result))
    }

    fn del(&self, ctx: &Ctx, cid: &str, pod_ns: &str, prev: &Value) -> Result<Exec> {
        self.del_via(ctx, cid, pod_ns, prev, None)
    }

    fn del_via(
        &self,
        ctx: &Ctx,
        cid: &str,
        pod_ns: &str,
        prev: &Value,
        launcher: Option<&std::path::Path>,
    ) -> Result<Exec> {
        let mut conf = self.conf.clone();
        conf["prevResult"] = prev.clone();
        let stdin = serde_json::to_vec(&conf)?;
        let path = netns::named_path(pod_ns).display().to_string();
        let env = cni_env(ctx, "DEL", cid, &path, pod_ns);
        let e = util::exec_via(launcher, &self.bin, &env, &stdin, &self.node)
            .with_context(|| format!("exec {}", self.name))?;
        if !e.ok() {
            bail!("{} DEL {cid}: {}", self.name, e.explain());
        }
        Ok(e)
    }
}

fn setup(ctx: &Ctx) -> Result<Vec<Plugin>> {
    let bin = link_bins(ctx)?;
    let w = |p: &str| ctx.work.join(p).display().to_string();
    let confs = [
        (
            "flatnet",
            "f",
            "flatnet-cni",
            json!({"cniVersion":"1.0.0","name":"fbench","type":"flatnet-cni",
                   "podCIDR":SUBNET,"mtu":1500,"dataDir":w("ipam-flatnet"),
                   "logFile":w("flatnet-cni.log")}),
        ),
        (
            "ptp+host-local",
            "p",
            "ptp",
            json!({"cniVersion":"1.0.0","name":"fbench","type":"ptp","mtu":1500,
                   "ipam":{"type":"host-local","ranges":[[{"subnet":SUBNET}]],
                           "routes":[{"dst":"0.0.0.0/0"}],"dataDir":w("ipam-host-local")}}),
        ),
        (
            "no-op",
            "n",
            "noop-cni",
            json!({"cniVersion":"1.0.0","name":"fbench","type":"noop-cni"}),
        ),
    ];
    node_per_plugin(ctx, &bin, confs)
}

/// The plugins of the dual-stack comparison, each in its own node netns (none has IPv6
/// forwarding on: each plugin turns it on as it would on a real node).
fn setup_dual(ctx: &Ctx) -> Result<Vec<Plugin>> {
    let bin = link_bins(ctx)?;
    let w = |p: &str| ctx.work.join(p).display().to_string();
    let flatnet = |cidrs: Value, store: &str| {
        json!({"cniVersion":"1.0.0","name":"fbench","type":"flatnet-cni",
               "podCIDRs":cidrs,"mtu":1500,"dataDir":w(store),
               "logFile":w("flatnet-cni.log")})
    };
    let confs = [
        (
            "flatnet IPv4",
            "d4",
            "flatnet-cni",
            flatnet(json!([SUBNET]), "ipam-d4"),
        ),
        (
            "flatnet dual-stack",
            "dd",
            "flatnet-cni",
            flatnet(json!([SUBNET, SUBNET6]), "ipam-dd"),
        ),
        (
            "flatnet IPv6",
            "d6",
            "flatnet-cni",
            flatnet(json!([SUBNET6]), "ipam-d6"),
        ),
        (
            "ptp+host-local dual-stack",
            "dp",
            "ptp",
            json!({"cniVersion":"1.0.0","name":"fbench","type":"ptp","mtu":1500,
                   "ipam":{"type":"host-local",
                           "ranges":[[{"subnet":SUBNET}],[{"subnet":SUBNET6}]],
                           "routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}],
                           "dataDir":w("ipam-host-local-dual")}}),
        ),
    ];
    node_per_plugin(ctx, &bin, confs)
}

fn node_per_plugin<const N: usize>(
    ctx: &Ctx,
    bin: &std::path::Path,
    confs: [(&'static str, &'static str, &str, Value); N],
) -> Result<Vec<Plugin>> {
    let mut plugins = Vec::new();
    for (name, short, exe, conf) in confs {
        let node_name = format!("{}-node-{short}", ctx.tag);
        let node = Arc::new(util::create_ns(&node_name)?);
        util::ip(&["-n", &node_name, "link", "set", "lo", "up"])?;
        netns::write_sysctl(&node, "net.ipv4.ip_forward", "1")?;
        plugins.push(Plugin {
            name,
            short,
            bin: bin.join(exe),
            conf,
            node,
        });
    }
    Ok(plugins)
}

/// The directory of plugins a runtime's CNI_PATH names: links to the built and the reference
/// binaries.
fn link_bins(ctx: &Ctx) -> Result<PathBuf> {
    let bin = ctx.work.join("bin");
    std::fs::create_dir_all(&bin)?;
    for (name, target) in [
        ("flatnet-cni", ctx.bin.join("flatnet-cni")),
        ("noop-cni", ctx.bin.join("noop-cni")),
        ("ptp", PathBuf::from("/usr/lib/cni/ptp")),
        ("host-local", PathBuf::from("/usr/lib/cni/host-local")),
    ] {
        if !target.is_file() {
            bail!("{} is missing", target.display());
        }
        let link = bin.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)?;
    }
    Ok(bin)
}

fn make_pods(ctx: &Ctx, p: &Plugin, label: &str, n: usize) -> Result<Vec<String>> {
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{}-{}-{label}-{i}", ctx.tag, p.short);
        util::create_ns(&name)?;
        names.push(name);
    }
    Ok(names)
}

fn drop_pods(names: &[String]) -> Result<()> {
    for n in names {
        util::delete_ns(n)?;
    }
    // The kernel frees namespaces in a work queue; let it finish before the next timing.
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// Serial ADD of `n` pods into fresh namespaces, then serial DEL of them.
fn serial(ctx: &Ctx, p: &Plugin, rep: usize, n: usize, s: &mut Samples) -> Result<()> {
    let pods = make_pods(ctx, p, &format!("s{rep}"), n)?;
    let mut results = Vec::with_capacity(n);
    let mut add = Vec::with_capacity(n);
    let t0 = Instant::now();
    for (i, pod) in pods.iter().enumerate() {
        let cid = format!("{}-{}-s{rep}-{i}", ctx.tag, p.short);
        let (e, r) = p.add(ctx, &cid, pod)?;
        add.push(e);
        results.push((cid, r));
    }
    let add_wall = t0.elapsed();
    util::check_interrupt()?;
    let mut del = Vec::with_capacity(n);
    let t0 = Instant::now();
    for ((cid, r), pod) in results.iter().zip(&pods) {
        del.push(p.del(ctx, cid, pod, r)?);
    }
    let del_wall = t0.elapsed();
    drop_pods(&pods)?;

    let lat = |v: &[Exec]| -> [f64; 3] {
        let l: Vec<f64> = v.iter().map(|e| ms(e.wall)).collect();
        [pct(&l, 50.0), pct(&l, 90.0), pct(&l, 99.0)]
    };
    s.add_p.push(lat(&add));
    s.del_p.push(lat(&del));
    s.serial_add_rate.push(n as f64 / add_wall.as_secs_f64());
    s.serial_del_rate.push(n as f64 / del_wall.as_secs_f64());
    s.rss_add.extend(add.iter().map(|e| e.maxrss_kib as f64));
    s.rss_del.extend(del.iter().map(|e| e.maxrss_kib as f64));
    s.add_user.extend(add.iter().map(|e| ms(e.utime)));
    s.add_sys.extend(add.iter().map(|e| ms(e.stime)));
    s.del_user.extend(del.iter().map(|e| ms(e.utime)));
    s.del_sys.extend(del.iter().map(|e| ms(e.stime)));
    Ok(())
}

/// End-to-end churn, so that no cost is hidden, only moved: for each of `n` pods, make its
/// netns, ADD, DEL (with prevResult), remove the netns — serially, or with 8 pods in flight —
/// and the clock stops only when no link of any of these pods is left in the node's netns,
/// whoever deletes it (the plugin, its sweeper, or the kernel's netns teardown). Pods/s.
fn churn(ctx: &Ctx, p: &Plugin, rep: usize, n: usize, par: usize) -> Result<f64> {
    let node_name = format!("{}-node-{}", ctx.tag, p.short);
    let baseline = node_links(&node_name)?;
    let one = |i: usize| -> Result<()> {
        let pod = format!("{}-{}-c{rep}-{par}-{i}", ctx.tag, p.short);
        util::create_ns(&pod)?;
        let cid = format!("{}-{}-c{rep}-{par}-{i}", ctx.tag, p.short);
        let r = (|| {
            let (_, res) = p.add(ctx, &cid, &pod)?;
            p.del(ctx, &cid, &pod, &res)?;
            anyhow::Ok(())
        })();
        util::delete_ns(&pod)?;
        r
    };
    let t0 = Instant::now();
    if let (_, Some(e)) = in_flight(n, par, &one) {
        return Err(e);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while node_links(&node_name)? > baseline {
        if Instant::now() > deadline {
            bail!("churn: links of {} stayed in {node_name}", p.name);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// How many links the namespace has (read through `ip`, a witness independent of flatnet).
fn node_links(ns: &str) -> Result<usize> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-o", "link", "show"])
        .output()
        .context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip -n {ns} link: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count())
}

/// Peak RSS of `n` ADDs and `n` DELs, each run through the `fbench-rusage` launcher (KiB).
fn rss_pass(ctx: &Ctx, p: &Plugin, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let launcher = ctx.bin.join("fbench-rusage");
    let pods = make_pods(ctx, p, "rss", n)?;
    let parse = |e: &Exec| -> Result<f64> {
        String::from_utf8_lossy(&e.stderr)
            .lines()
            .find_map(|l| l.strip_prefix("fbench-maxrss-kib="))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or_else(|| anyhow!("fbench-rusage printed no figure: {}", e.explain()))
    };
    let mut add = Vec::new();
    let mut del = Vec::new();
    let mut made = Vec::new();
    let r = (|| -> Result<()> {
        for (i, pod) in pods.iter().enumerate() {
            let cid = format!("{}-{}-rss-{i}", ctx.tag, p.short);
            let (e, r) = p.add_via(ctx, &cid, pod, Some(&launcher))?;
            add.push(parse(&e)?);
            made.push((cid, pod.clone(), r));
        }
        for (cid, pod, r) in &made {
            let e = p.del_via(ctx, cid, pod, r, Some(&launcher))?;
            del.push(parse(&e)?);
        }
        Ok(())
    })();
    drop_pods(&pods)?;
    r.map(|_| (add, del))
}

/// Runs `f(0..n)` with `par` calls in flight; a worker stops at its first error. The wall
/// time, and an error if any call failed.
fn in_flight(
    n: usize,
    par: usize,
    f: &(dyn Fn(usize) -> Result<()> + Sync),
) -> (Duration, Option<anyhow::Error>) {
    let next = AtomicUsize::new(0);
    let errors: Mutex<Vec<anyhow::Error>> = Mutex::new(Vec::new());
    let t0 = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..par {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                if let Err(e) = f(i) {
                    errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                    break;
                }
            });
        }
    });
    let error = errors.into_inner().unwrap_or_else(|p| p.into_inner()).pop();
    (t0.elapsed(), error)
}

/// `n` ADDs with 8 in flight, then `n` DELs with 8 in flight: pods per second.
fn parallel(ctx: &Ctx, p: &Plugin, rep: usize, n: usize, s: &mut Samples) -> Result<()> {
    let pods = make_pods(ctx, p, &format!("p{rep}"), n)?;
    let results: Mutex<Vec<Option<(String, Value)>>> = Mutex::new(vec![None; n]);
    let (add_wall, add_err) = in_flight(n, PARALLEL, &|i| {
        let cid = format!("{}-{}-p{rep}-{i}", ctx.tag, p.short);
        let (_, r) = p.add(ctx, &cid, &pods[i])?;
        results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some((cid, r));
        Ok(())
    });
    let (del_wall, del_err) = in_flight(n, PARALLEL, &|i| {
        let got = results.lock().unwrap_or_else(|p| p.into_inner())[i].clone();
        if let Some((cid, r)) = got {
            p.del(ctx, &cid, &pods[i], &r)?;
        }
        Ok(())
    });
    drop_pods(&pods)?;
    if let Some(e) = add_err.or(del_err) {
        return Err(e);
    }
    s.par_add_rate.push(n as f64 / add_wall.as_secs_f64());
    s.par_del_rate.push(n as f64 / del_wall.as_secs_f64());
    Ok(())
}

/// The kernel's share: what flatnet-cni's ADD asks of the kernel (is the gateway the node's,
/// veth born in the pod netns, IPv6 off on the host end, host end up, pod address, the pod's neighbour entry for the
/// gateway, two pod routes, the host route) and its DEL (retire the host veth), done in process
/// through flatnet's own netlink layer: no exec, no IPAM, no config parsing. The node holds the
/// gateway on its loopback, as the plugin leaves it. The pod netns socket is opened per ADD, as
/// the plugin must; the node's socket once.
struct KernelFloor {
    rt: tokio::runtime::Runtime,
    node: Netlink,
    node_name: String,
}

impl KernelFloor {
    fn new(ctx: &Ctx, label: &str) -> Result<KernelFloor> {
        let node_name = format!("{}-node-k{label}", ctx.tag);
        let ns = Arc::new(util::create_ns(&node_name)?);
        util::ip(&["-n", &node_name, "link", "set", "lo", "up"])?;
        util::ip(&[
            "-n",
            &node_name,
            "addr",
            "add",
            &format!("{GATEWAY}/32"),
            "dev",
            "lo",
        ])?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let node = rt.block_on(async { Netlink::in_netns(ns) })?;
        Ok(KernelFloor {
            rt,
            node,
            node_name,
        })
    }

    fn host_name(i: usize) -> String {
        format!("fbk{i:011x}")
    }

    fn ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(GATEWAY) + 1 + i as u32)
    }

    fn add(&self, i: usize, pod_ns: Arc<NetNs>) -> Result<f64> {
        let (nl, ip, host_name) = (&self.node, Self::ip(i), Self::host_name(i));
        self.rt.block_on(async {
            let t0 = Instant::now();
            let pod = Netlink::in_netns(pod_ns.clone())?;
            // Does the node hold the gateway (on its loopback, once)? One lookup per ADD.
            nl.is_local(GATEWAY.into()).await?;
            nl.create_veth(&VethSpec {
                name: &host_name,
                peer_name: "eth0",
                peer_netns: &pod_ns,
                mtu: 1500,
            })
            .await?;
            let host = nl
                .link_by_name(&host_name)
                .await?
                .ok_or_else(|| anyhow!("veth vanished"))?;
            // The plugin writes this in its own netns; from here it takes a thread that
            // enters the node's (~0.05 ms more than the plugin pays).
            let key = format!("net/ipv6/conf/{host_name}/disable_ipv6");
            netns::write_sysctls(self.node_ns(), &[(key.as_str(), "1")])?;
            nl.set_up(host.index).await?;
            let cont = pod
                .link_by_name("eth0")
                .await?
                .ok_or_else(|| anyhow!("veth vanished"))?;
            pod.add_address(cont.index, Ipv4Network::from(ip)).await?;
            pod.set_up(cont.index).await?;
            let mac = host.mac.ok_or_else(|| anyhow!("a veth without a MAC"))?;
            pod.replace_neighbour(cont.index, GATEWAY.into(), mac)
                .await?;
            pod.add_route(&Route::via_link(
                Ipv4Network::from(GATEWAY),
                cont.index,
                protocol::CNI,
            ))
            .await?;
            pod.add_route(&Route::via_gateway(
                Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0)?,
                GATEWAY,
                Some(cont.index),
                protocol::CNI,
            ))
            .await?;
            nl.add_route(&Route::via_link(
                Ipv4Network::from(ip),
                host.index,
                protocol::CNI,
            ))
            .await?;
            Ok(ms(t0.elapsed()))
        })
    }

    fn del(&self, i: usize) -> Result<f64> {
        let (nl, host_name) = (&self.node, Self::host_name(i));
        self.rt.block_on(async {
            let t0 = Instant::now();
            // What flatnet-cni's DEL asks of the kernel: the link goes later, many at a time.
            if let Some(l) = nl.link_by_name(&host_name).await? {
                nl.retire(l.index, RETIRED).await?;
            }
            Ok(ms(t0.elapsed()))
        })
    }

    fn node_ns(&self) -> &NetNs {
        self.node.netns().expect("opened on the node's netns")
    }

    fn remove(self) -> Result<()> {
        let name = self.node_name.clone();
        drop(self);
        util::delete_ns(&name)
    }
}

/// `n` ADDs then `n` DELs of the kernel floor, into fresh namespaces: p50 of each.
fn kernel_floor(ctx: &Ctx, rep: usize, n: usize) -> Result<(f64, f64)> {
    let k = KernelFloor::new(ctx, &rep.to_string())?;
    let mut names = Vec::new();
    let mut add = Vec::new();
    let mut del = Vec::new();
    let r = (|| -> Result<()> {
        for i in 0..n {
            let name = format!("{}-k{rep}-{i}", ctx.tag);
            let ns = Arc::new(util::create_ns(&name)?);
            names.push(name);
            add.push(k.add(i, ns)?);
        }
        for i in 0..n {
            del.push(k.del(i)?);
        }
        Ok(())
    })();
    drop_pods(&names)?;
    k.remove()?;
    r?;
    Ok((pct(&add, 50.0), pct(&del, 50.0)))
}

/// ADD latency while reservations grow to `total`: flatnet, ptp+host-local and the kernel
/// floor interleaved pod by pod, each in its own node netns; returns each series in order.
/// The pods are not DELeted afterwards (that is measured elsewhere): their namespaces are
/// removed, which takes their veths with them.
fn growth(
    ctx: &Ctx,
    plugins: &[&Plugin],
    total: usize,
) -> Result<BTreeMap<&'static str, Vec<f64>>> {
    let before = util::netns_in_kernel();
    let kernel = KernelFloor::new(ctx, "g")?;
    let mut lat: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut names: Vec<String> = Vec::new();
    let outcome = (|| -> Result<()> {
        for i in 0..total {
            if i % 250 == 0 {
                progress(&format!("cni: growth {i}/{total} reservations"));
                util::check_interrupt()?;
            }
            // Rotate which goes first, so that none always follows the same one.
            for j in 0..3 {
                let k = (i + j) % 3;
                if k == 2 {
                    let pod = format!("{}-k-g-{i}", ctx.tag);
                    let ns = Arc::new(util::create_ns(&pod)?);
                    names.push(pod);
                    lat.entry("kernel floor")
                        .or_default()
                        .push(kernel.add(i, ns)?);
                    continue;
                }
                let p = plugins[k];
                let pod = format!("{}-{}-g-{i}", ctx.tag, p.short);
                util::create_ns(&pod)?;
                names.push(pod.clone());
                let cid = format!("{}-{}-g-{i}", ctx.tag, p.short);
                let (e, _) = p.add(ctx, &cid, &pod)?;
                lat.entry(p.name).or_default().push(ms(e.wall));
            }
        }
        Ok(())
    })();
    progress(&format!(
        "cni: growth: removing {} pod namespaces",
        names.len()
    ));
    for n in &names {
        util::delete_ns(n)?;
    }
    kernel.remove()?;
    // Thousands of namespaces go in the kernel's cleanup work queue: let it drain.
    progress("cni: growth: waiting for the kernel to free them");
    match before {
        Some(n) => util::wait_netns_freed(n + 50),
        None => std::thread::sleep(Duration::from_secs(5)),
    }
    outcome.map(|_| lat)
}

pub fn run(ctx: &Ctx) -> Result<(String, Value)> {
    let plugins = setup(ctx)?;
    let n = if ctx.quick { 30 } else { 100 };
    let mut samples: Vec<Samples> = plugins.iter().map(|_| Samples::default()).collect();
    // Warm-up: page cache and the dynamic loader for each binary, untimed.
    for p in &plugins {
        let mut scratch = Samples::default();
        serial(ctx, p, 99, 5, &mut scratch)?;
    }
    for rep in 0..ctx.reps {
        let order: Vec<usize> = (0..plugins.len())
            .map(|k| (k + rep) % plugins.len())
            .collect();
        for &k in &order {
            progress(&format!(
                "cni: rep {}/{}: {} serial, {n} ADD then {n} DEL",
                rep + 1,
                ctx.reps,
                plugins[k].name
            ));
            util::check_interrupt()?;
            serial(ctx, &plugins[k], rep, n, &mut samples[k])?;
        }
        for &k in &order {
            progress(&format!(
                "cni: rep {}/{}: {} {PARALLEL}-parallel, {n} ADD then {n} DEL",
                rep + 1,
                ctx.reps,
                plugins[k].name
            ));
            util::check_interrupt()?;
            parallel(ctx, &plugins[k], rep, n, &mut samples[k])?;
        }
        for &k in order.iter().filter(|&&k| k < 2) {
            progress(&format!(
                "cni: rep {}/{}: {} churn (netns, ADD, DEL, netns removal, until no link is left), serial and {PARALLEL}-parallel",
                rep + 1,
                ctx.reps,
                plugins[k].name
            ));
            util::check_interrupt()?;
            let serial_rate = churn(ctx, &plugins[k], rep, n, 1)?;
            samples[k].churn_serial.push(serial_rate);
            let par_rate = churn(ctx, &plugins[k], rep, n, PARALLEL)?;
            samples[k].churn_parallel.push(par_rate);
        }
    }

    let mut rss: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    for p in &plugins {
        progress(&format!(
            "cni: peak RSS of {} (through fbench-rusage)",
            p.name
        ));
        rss.push(rss_pass(ctx, p, if ctx.quick { 10 } else { 30 })?);
    }

    progress("cni: kernel floor (flatnet's netlink requests, in process)");
    let mut kadd = Vec::new();
    let mut kdel = Vec::new();
    for rep in 0..ctx.reps {
        let (a, d) = kernel_floor(ctx, rep, n)?;
        kadd.push(a);
        kdel.push(d);
    }
    let kadd = Fig::of(&kadd);
    let kdel = Fig::of(&kdel);

    let (dual_md, dual_json) = dual_stack(ctx)?;
    // Last, since it leaves thousands of namespaces for the kernel to free.
    let growth_total = ctx.growth.unwrap_or(if ctx.quick { 300 } else { 1000 });
    progress(&format!(
        "cni: ADD latency as reservations grow to {growth_total} on a /16 (flatnet, ptp+host-local, kernel floor interleaved)"
    ));
    let grown = growth(ctx, &[&plugins[0], &plugins[1]], growth_total)?;
    remove_nodes(ctx, plugins)?;

    // ---- report --------------------------------------------------------------------------
    let names = ["flatnet", "ptp+host-local", "no-op"];
    let col = |s: &Samples, f: &dyn Fn(&Samples) -> Vec<f64>| Fig::of(&f(s));
    let addp = |i: usize| move |s: &Samples| s.add_p.iter().map(|a| a[i]).collect::<Vec<_>>();
    let delp = |i: usize| move |s: &Samples| s.del_p.iter().map(|a| a[i]).collect::<Vec<_>>();
    let mut rows = Vec::new();
    let mut js = serde_json::Map::new();
    for (k, s) in samples.iter().enumerate() {
        let figs = [
            col(s, &addp(0)),
            col(s, &addp(1)),
            col(s, &addp(2)),
            col(s, &delp(0)),
            col(s, &delp(1)),
            col(s, &delp(2)),
        ];
        let rates = [
            Fig::of(&s.serial_add_rate),
            Fig::of(&s.par_add_rate),
            Fig::of(&s.serial_del_rate),
            Fig::of(&s.par_del_rate),
        ];
        let mut row = vec![names[k].to_string()];
        row.extend(figs.iter().map(|f| f.show(2)));
        row.extend(rates.iter().map(|f| f.show(0)));
        rows.push(row);
        js.insert(
            names[k].into(),
            json!({
                "add_ms": {"p50": figs[0].json(), "p90": figs[1].json(), "p99": figs[2].json()},
                "del_ms": {"p50": figs[3].json(), "p90": figs[4].json(), "p99": figs[5].json()},
                "pods_per_s": {"add_serial": rates[0].json(), "add_parallel8": rates[1].json(),
                               "del_serial": rates[2].json(), "del_parallel8": rates[3].json()},
                "maxrss_kib_forked_from_harness": {"add_max": pct(&s.rss_add, 100.0), "add_p50": pct(&s.rss_add, 50.0),
                               "del_max": pct(&s.rss_del, 100.0), "del_p50": pct(&s.rss_del, 50.0)},
                "peak_rss_kib": {"add_max": pct(&rss[k].0, 100.0), "add_p50": pct(&rss[k].0, 50.0),
                               "del_max": pct(&rss[k].1, 100.0), "del_p50": pct(&rss[k].1, 50.0)},
                "churn_pods_per_s": {"serial": Fig::of(&s.churn_serial).json(), "parallel8": Fig::of(&s.churn_parallel).json()},
                "cpu_ms_p50": {"add_user": pct(&s.add_user, 50.0), "add_sys": pct(&s.add_sys, 50.0),
                               "del_user": pct(&s.del_user, 50.0), "del_sys": pct(&s.del_sys, 50.0)},
            }),
        );
    }
    let mut md = format!(
        "### Latency and throughput ({} repetitions × {n} pods per plugin; median of the repetitions, (min–max) across them)\n\n",
        ctx.reps
    );
    md += &table(
        &[
            "plugin",
            "ADD p50 ms",
            "ADD p90 ms",
            "ADD p99 ms",
            "DEL p50 ms",
            "DEL p90 ms",
            "DEL p99 ms",
            "ADD pods/s serial",
            "ADD pods/s 8-par",
            "DEL pods/s serial",
            "DEL pods/s 8-par",
        ],
        &rows,
    );

    // Ratios: flatnet against ptp+host-local, and each above the no-op floor.
    let f = &samples[0];
    let r = &samples[1];
    let z = &samples[2];
    let med = |s: &Samples, g: &dyn Fn(&Samples) -> Vec<f64>| Fig::of(&g(s)).med;
    let a50 = |s: &Samples| med(s, &addp(0));
    let d50 = |s: &Samples| med(s, &delp(0));
    let par = |s: &Samples| Fig::of(&s.par_add_rate).med;
    // The ADD ratio in the worst repetition: repetition i of each plugin ran back to back.
    let per_rep_add: Vec<f64> = r
        .add_p
        .iter()
        .zip(&f.add_p)
        .map(|(rr, ff)| rr[0] / ff[0])
        .collect();
    let worst_add = per_rep_add.iter().copied().fold(f64::INFINITY, f64::min);
    let par_del = |s: &Samples| Fig::of(&s.par_del_rate).med;
    let churn_s = |s: &Samples| Fig::of(&s.churn_serial).med;
    let churn_p = |s: &Samples| Fig::of(&s.churn_parallel).med;
    let ratio_rows = vec![
        vec![
            "ADD p50: ptp+host-local / flatnet, worst repetition".into(),
            format!(
                "{worst_add:.2}× (each: {})",
                per_rep_add
                    .iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "≥ 3.5×".into(),
            verdict(worst_add >= 3.5),
        ],
        vec![
            "DEL p50: ptp+host-local / flatnet".into(),
            format!("{:.2}×", d50(r) / d50(f)),
            "≥ 5×".into(),
            verdict(d50(r) / d50(f) >= 5.0),
        ],
        vec![
            "DEL pods/s 8-parallel: flatnet / ptp+host-local".into(),
            format!("{:.2}×", par_del(f) / par_del(r)),
            "≥ 5×".into(),
            verdict(par_del(f) / par_del(r) >= 5.0),
        ],
        vec![
            "ADD pods/s 8-parallel: flatnet / ptp+host-local".into(),
            format!("{:.2}×", par(f) / par(r)),
            "≥ 2×".into(),
            verdict(par(f) / par(r) >= 2.0),
        ],
        vec![
            "churn pods/s serial (netns + ADD + DEL + netns removal, until no link is left): flatnet / ptp+host-local".into(),
            format!(
                "{:.2}× ({:.0} vs {:.0} pods/s)",
                churn_s(f) / churn_s(r),
                churn_s(f),
                churn_s(r)
            ),
            "(no cost hidden)".into(),
            String::new(),
        ],
        vec![
            "churn pods/s 8-parallel: flatnet / ptp+host-local".into(),
            format!(
                "{:.2}× ({:.0} vs {:.0} pods/s)",
                churn_p(f) / churn_p(r),
                churn_p(f),
                churn_p(r)
            ),
            "(no cost hidden)".into(),
            String::new(),
        ],
    ];
    md += "\n### Against the targets\n\n";
    md += &table(&["ratio", "measured", "target", ""], &ratio_rows);

    md += "\n### Above the floors (ADD / DEL p50, ms)\n\n";
    let floor_rows = vec![
        vec![
            "no-op plugin (exec floor)".into(),
            format!("{:.2}", a50(z)),
            format!("{:.2}", d50(z)),
            "fork + exec + loader + exit of a std-only binary".into(),
        ],
        vec![
            "kernel floor (flatnet's netlink requests, in process)".into(),
            format!("{:.2} ({:.2}–{:.2})", kadd.med, kadd.min, kadd.max),
            format!("{:.2} ({:.2}–{:.2})", kdel.med, kdel.min, kdel.max),
            "veth + 2 addresses + 3 routes; DEL: look up + retire the host veth (down, group)"
                .into(),
        ],
        vec![
            "flatnet − no-op".into(),
            format!("{:.2}", a50(f) - a50(z)),
            format!("{:.2}", d50(f) - d50(z)),
            format!(
                "kernel floor is {:.0}% of ADD's excess, {:.0}% of DEL's",
                100.0 * kadd.med / (a50(f) - a50(z)),
                100.0 * kdel.med / (d50(f) - d50(z))
            ),
        ],
        vec![
            "ptp+host-local − no-op".into(),
            format!("{:.2}", a50(r) - a50(z)),
            format!("{:.2}", d50(r) - d50(z)),
            "two Go processes (ptp execs host-local)".into(),
        ],
    ];
    md += &table(&["", "ADD", "DEL", "note"], &floor_rows);

    md += "\n### Peak RSS and CPU per call\n\n";
    let mut rss_rows = Vec::new();
    for (k, s) in samples.iter().enumerate() {
        let (ra, rd) = &rss[k];
        let peak = pct(ra, 100.0).max(pct(rd, 100.0));
        rss_rows.push(vec![
            names[k].to_string(),
            format!("{:.0}", pct(ra, 50.0)),
            format!("{:.0}", pct(rd, 50.0)),
            format!("{:.2} MiB = {:.2} MB", peak / 1024.0, peak * 1024.0 / 1e6),
            format!("{:.2}", cpu_p50(&s.add_user, &s.add_sys)),
            format!("{:.2}", cpu_p50(&s.del_user, &s.del_sys)),
            if k == 0 {
                format!("≤ 4 MB: {}", verdict(peak * 1024.0 <= 4e6))
            } else {
                String::new()
            },
        ]);
    }
    md += &table(
        &[
            "plugin",
            "ADD peak RSS p50 KiB",
            "DEL peak RSS p50 KiB",
            "peak (max of all calls)",
            "ADD CPU ms p50",
            "DEL CPU ms p50",
            "target",
        ],
        &rss_rows,
    );
    md += "\nPeak RSS: ru_maxrss from wait4, each call exec'd through `fbench-rusage` (a small \
           launcher, as `/usr/bin/time -f %M`), so that the harness's own pages, which a forked \
           child carries until exec, are not counted. ptp's figure is the larger of ptp and the \
           host-local it execs. CPU: user + system time of the call from the timed runs (their \
           split is tick-sampled and meaningless at this scale; the sum is exact).\n";

    md += &format!(
        "\n### ADD latency as reservations grow to {growth_total} (one /16 each, flatnet, ptp+host-local and the kernel floor interleaved pod by pod; one run)\n\n"
    );
    let mut grow_rows = Vec::new();
    let mut gjs = serde_json::Map::new();
    for (name, l) in &grown {
        let first = &l[..100.min(l.len())];
        let last = &l[l.len().saturating_sub(100)..];
        let ratio = pct(last, 50.0) / pct(first, 50.0);
        grow_rows.push(vec![
            name.to_string(),
            format!("{:.2}", pct(first, 50.0)),
            format!("{:.2}", pct(last, 50.0)),
            format!("{:.2}", pct(first, 90.0)),
            format!("{:.2}", pct(last, 90.0)),
            format!("{ratio:.3}"),
            format!("{:+.2}", pct(last, 50.0) - pct(first, 50.0)),
            if *name == "flatnet" {
                format!("≤ 1.1: {}", verdict(ratio <= 1.1))
            } else {
                String::new()
            },
        ]);
        gjs.insert(
            name.to_string(),
            json!({"first100_p50": pct(first, 50.0), "last100_p50": pct(last, 50.0),
                   "first100_p90": pct(first, 90.0), "last100_p90": pct(last, 90.0),
                   "ratio_p50": ratio, "all_ms": l}),
        );
    }
    md += &table(
        &[
            "plugin",
            "first 100 p50 ms",
            "last 100 p50 ms",
            "first 100 p90 ms",
            "last 100 p90 ms",
            "last / first (p50)",
            "last − first ms (p50)",
            "target",
        ],
        &grow_rows,
    );
    md += &dual_md;
    let value = json!({
        "pods_per_rep": n, "reps": ctx.reps, "plugins": Value::Object(js),
        "kernel_floor_ms": {"add_p50": kadd.json(), "del_p50": kdel.json()},
        "growth": Value::Object(gjs),
        "dual_stack": dual_json,
    });
    Ok((md, value))
}

fn remove_nodes(ctx: &Ctx, plugins: Vec<Plugin>) -> Result<()> {
    for p in plugins {
        let name = format!("{}-node-{}", ctx.tag, p.short);
        drop(p);
        util::delete_ns(&name)?;
    }
    Ok(())
}

/// Dual-stack against IPv4-only in the same run: flatnet with `podCIDRs` [IPv4], [IPv4, IPv6]
/// and [IPv6], serial ADD then DEL into fresh pod namespaces, the order rotating each
/// repetition; ptp+host-local dual-stack beside them for reference only (ptp waits for DAD
/// to settle on the pod's addresses, about a second, so it gets fewer pods and no target).
fn dual_stack(ctx: &Ctx) -> Result<(String, Value)> {
    let plugins = setup_dual(ctx)?;
    let n = if ctx.quick { 30 } else { 100 };
    let n_ptp = if ctx.quick { 5 } else { 20 };
    let pods = |p: &Plugin| if p.bin.ends_with("ptp") { n_ptp } else { n };
    let counts: Vec<usize> = plugins.iter().map(pods).collect();
    let mut samples: Vec<Samples> = plugins.iter().map(|_| Samples::default()).collect();
    let outcome = (|| -> Result<()> {
        for p in &plugins {
            serial(ctx, p, 99, 3, &mut Samples::default())?;
        }
        for rep in 0..ctx.reps {
            for j in 0..plugins.len() {
                let k = (j + rep) % plugins.len();
                let p = &plugins[k];
                progress(&format!(
                    "cni: dual-stack rep {}/{}: {} serial, {} ADD then {} DEL",
                    rep + 1,
                    ctx.reps,
                    p.name,
                    pods(p),
                    pods(p)
                ));
                util::check_interrupt()?;
                serial(ctx, p, rep, pods(p), &mut samples[k])?;
            }
        }
        Ok(())
    })();
    remove_nodes(ctx, plugins)?;
    outcome?;

    let names = [
        "flatnet IPv4",
        "flatnet dual-stack",
        "flatnet IPv6",
        "ptp+host-local dual-stack",
    ];
    let fig = |s: &Samples, ph: usize, i: usize| {
        let v: Vec<f64> = if ph == 0 { &s.add_p } else { &s.del_p }
            .iter()
            .map(|a| a[i])
            .collect();
        Fig::of(&v)
    };
    let mut rows = Vec::new();
    let mut js = serde_json::Map::new();
    for (k, s) in samples.iter().enumerate() {
        let figs: Vec<Fig> = (0..2)
            .flat_map(|ph| (0..3).map(move |i| (ph, i)))
            .map(|(ph, i)| fig(s, ph, i))
            .collect();
        let mut row = vec![names[k].to_string(), counts[k].to_string()];
        row.extend(figs.iter().map(|f| f.show(2)));
        rows.push(row);
        js.insert(
            names[k].into(),
            json!({
                "add_ms": {"p50": figs[0].json(), "p90": figs[1].json(), "p99": figs[2].json()},
                "del_ms": {"p50": figs[3].json(), "p90": figs[4].json(), "p99": figs[5].json()},
            }),
        );
    }
    let ratio = fig(&samples[1], 0, 0).med / fig(&samples[0], 0, 0).med;
    let del_ratio = fig(&samples[1], 1, 0).med / fig(&samples[0], 1, 0).med;
    let mut md = format!(
        "\n### Dual-stack beside IPv4-only ({} repetitions, serial ADD then DEL; median of the repetitions, (min–max) across them)\n\n",
        ctx.reps
    );
    md += &table(
        &[
            "plugin",
            "pods per rep",
            "ADD p50 ms",
            "ADD p90 ms",
            "ADD p99 ms",
            "DEL p50 ms",
            "DEL p90 ms",
            "DEL p99 ms",
        ],
        &rows,
    );
    md += "\n";
    md += &table(
        &["ratio", "measured", "target", ""],
        &[
            vec![
                "ADD p50: flatnet dual-stack / flatnet IPv4".into(),
                format!("{ratio:.2}×"),
                "≤ 1.2×".into(),
                verdict(ratio <= 1.2),
            ],
            vec![
                "DEL p50: flatnet dual-stack / flatnet IPv4".into(),
                format!("{del_ratio:.2}×"),
                "".into(),
                "".into(),
            ],
        ],
    );
    md += "\nptp+host-local dual-stack is for reference only: ptp waits for DAD to settle on the \
           pod's IPv6 address before it returns; flatnet adds its addresses with IFA_F_NODAD and \
           accept_dad=0, so they are usable at once.\n";
    Ok((
        md,
        json!({"pods_per_rep": n, "ptp_pods_per_rep": n_ptp, "plugins": Value::Object(js),
               "add_p50_dual_over_ipv4": ratio, "del_p50_dual_over_ipv4": del_ratio}),
    ))
}

fn cpu_p50(user: &[f64], sys: &[f64]) -> f64 {
    let sum: Vec<f64> = user.iter().zip(sys).map(|(u, s)| u + s).collect();
    pct(&sum, 50.0)
}

pub fn verdict(ok: bool) -> String {
    if ok { "**met**" } else { "**missed**" }.to_string()
}

/// A row of a table of ratios against their targets: what, the ratio, "≥ min", the verdict.
pub fn at_least(what: &str, ratio: f64, min: f64) -> Vec<String> {
    vec![
        what.to_string(),
        format!("{ratio:.3}"),
        format!("≥ {min}"),
        verdict(ratio >= min),
    ]
}
