//! Section 4: the emulator's bring-up: 10 nodes × 110 pods (Kubernetes' default maximum per
//! node) as network sandboxes, each attached by exec'ing flatnet-cni as containerd would, then
//! `down`; then the same with one container each (`sleep infinity`, from a v1/Pod manifest),
//! clocked until every container runs.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use flatnet::emulator::{manifest, state, Cluster, StateRoot, UpOptions};

use crate::util::{self, ms, pct, progress, table, Ctx};

pub fn run(ctx: &Ctx) -> Result<(String, Value)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let root = StateRoot::new(ctx.work.join("state"));
    let cluster = Cluster::new(&root, &format!("{}-emu", ctx.tag))?;
    let (nodes, per_node) = if ctx.quick { (3, 20) } else { (10, 110) };
    let result = (|| -> Result<(f64, f64, Vec<f64>, Cpu)> {
        let opts = UpOptions {
            nodes,
            cluster_cidr: "10.244.0.0/16".parse()?,
            node_mask: 24,
            agent_resync: Duration::from_secs(10),
            ..UpOptions::default()
        };
        progress(&format!("bring-up: {nodes} nodes"));
        let t0 = Instant::now();
        rt.block_on(cluster.up(&opts, &|m| progress(&format!("bring-up: up: {m}"))))?;
        let up_s = t0.elapsed().as_secs_f64();
        let total = nodes as usize * per_node;
        progress(&format!("bring-up: {total} pod sandboxes"));
        let mut lat = Vec::with_capacity(total);
        let cpu0 = Cpu::now(&cluster)?;
        let t0 = Instant::now();
        for i in 0..total {
            if i % 200 == 0 {
                util::check_interrupt()?;
                progress(&format!("bring-up: pod {i}/{total}"));
            }
            let node = format!("node-{}", i % nodes as usize + 1);
            let t = Instant::now();
            cluster.run_sandbox("default", &format!("p{i}"), Some(&node))?;
            lat.push(ms(t.elapsed()));
        }
        let pods_s = t0.elapsed().as_secs_f64();
        Ok((up_s, pods_s, lat, Cpu::now(&cluster)?.since(&cpu0)))
    })();
    progress("bring-up: down (CNI DEL of every pod, then the nodes)");
    let t0 = Instant::now();
    let down = rt.block_on(cluster.down());
    let down_s = t0.elapsed().as_secs_f64();
    let (up_s, pods_s, lat, cpu) = result?;
    down.context("remove the bring-up cluster")?;
    let total = lat.len();
    let with = containers(ctx, &rt, &root, nodes, per_node)?;
    let rows = vec![vec![
        format!("{nodes} × {per_node}"),
        format!("{up_s:.1}"),
        format!("{pods_s:.1}"),
        format!("{:.1}", up_s + pods_s),
        format!("{:.0}", total as f64 / pods_s),
        format!(
            "{:.1} / {:.1} / {:.1}",
            pct(&lat, 50.0),
            pct(&lat, 90.0),
            pct(&lat, 99.0)
        ),
        format!(
            "{:.1} (first 100) → {:.1} (last 100)",
            pct(&lat[..100.min(total)], 50.0),
            pct(&lat[total.saturating_sub(100)..], 50.0)
        ),
        format!("{down_s:.1}"),
    ]];
    let md = table(
        &[
            "nodes × pods",
            "up s",
            "pods s",
            "total s",
            "pods/s",
            "per pod p50 / p90 / p99 ms",
            "per pod p50 ms",
            "down s",
        ],
        &rows,
    );
    let md = format!(
        "{md}\nCPU while the {total} sandboxes were made: this process (the emulator's commands) \
         {:.1} s, the plugins it exec'd {:.1} s, the {nodes} agents {:.1} s, the controller {:.1} s.\n\
         \nWith one container each (`sleep infinity`; all pods in one `apply`, each a sandbox, \
         a supervisor and an infra process): apply {:.1} s, every container running {:.1} s after \
         the start ({:.0} pods/s), down {:.1} s.\n",
        cpu.emulator,
        cpu.plugins,
        cpu.agents,
        cpu.controller,
        with.apply_s,
        with.running_s,
        total as f64 / with.running_s,
        with.down_s
    );
    Ok((
        md,
        json!({"nodes": nodes, "pods_per_node": per_node, "up_s": up_s, "pods_s": pods_s,
               "down_s": down_s,
               "cpu_s": {"emulator": cpu.emulator, "plugins": cpu.plugins, "agents": cpu.agents, "controller": cpu.controller},
               "per_pod_ms": {"p50": pct(&lat, 50.0), "p90": pct(&lat, 90.0), "p99": pct(&lat, 99.0)},
               "with_containers": {"apply_s": with.apply_s, "running_s": with.running_s, "down_s": with.down_s}}),
    ))
}

/// CPU seconds used so far: by this process (the emulator's commands run in it), by the
/// children it waited for (the plugins it exec'd), by the cluster's agents and controller.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    emulator: f64,
    plugins: f64,
    agents: f64,
    controller: f64,
}

impl Cpu {
    fn now(cluster: &Cluster) -> Result<Cpu> {
        let spec = cluster.spec()?;
        Ok(Cpu {
            emulator: util::rusage_cpu(libc::RUSAGE_SELF).as_secs_f64(),
            plugins: util::rusage_cpu(libc::RUSAGE_CHILDREN).as_secs_f64(),
            agents: spec
                .nodes
                .iter()
                .filter_map(|n| n.agent)
                .map(|a| util::pid_cpu(a.pid).as_secs_f64())
                .sum(),
            controller: spec
                .controller
                .map_or(0.0, |c| util::pid_cpu(c.pid).as_secs_f64()),
        })
    }

    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            emulator: self.emulator - before.emulator,
            plugins: self.plugins - before.plugins,
            agents: self.agents - before.agents,
            controller: self.controller - before.controller,
        }
    }
}

struct WithContainers {
    apply_s: f64,
    running_s: f64,
    down_s: f64,
}

/// The same cluster size with a container in every pod: one manifest of `nodes × per_node`
/// pods, applied at once; the clock stops when every supervisor reports its container running.
fn containers(
    ctx: &Ctx,
    rt: &tokio::runtime::Runtime,
    root: &StateRoot,
    nodes: u32,
    per_node: usize,
) -> Result<WithContainers> {
    let cluster = Cluster::new(root, &format!("{}-ctr", ctx.tag))?;
    let opts = UpOptions {
        nodes,
        cluster_cidr: "10.244.0.0/16".parse()?,
        node_mask: 24,
        agent_resync: Duration::from_secs(10),
        ..UpOptions::default()
    };
    let total = nodes as usize * per_node;
    let yaml: String = (0..total)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: c{i}}}\nspec:\n  nodeName: node-{}\n  \
                 terminationGracePeriodSeconds: 0\n  containers:\n  - {{name: c, image: busybox, command: [sleep, infinity]}}\n",
                i % nodes as usize + 1
            )
        })
        .collect();
    let manifests = manifest::parse(&yaml).map_err(anyhow::Error::msg)?;
    let result = (|| -> Result<(f64, f64)> {
        progress(&format!("bring-up: {nodes} nodes for pods with containers"));
        rt.block_on(cluster.up(&opts, &|_| {}))?;
        progress(&format!("bring-up: {total} pods with one container each"));
        let t0 = Instant::now();
        let opts = flatnet::emulator::objects::ApplyOptions {
            restart_backoff: state::DEFAULT_RESTART_BACKOFF,
            force: false,
        };
        cluster.apply(&manifests, "default", false, opts)?;
        let apply_s = t0.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            util::check_interrupt()?;
            let running = (0..total)
                .filter(|i| {
                    cluster
                        .dir()
                        .pod_dir("default", &format!("c{i}"))
                        .status()
                        .is_some_and(|s| s.containers.iter().all(|c| c.is_running()))
                })
                .count();
            if running == total {
                return Ok((apply_s, t0.elapsed().as_secs_f64()));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {running} of {total} containers running after 300 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })();
    progress("bring-up: down (every container stopped, CNI DEL, the nodes)");
    let t0 = Instant::now();
    let down = rt.block_on(cluster.down());
    let down_s = t0.elapsed().as_secs_f64();
    let (apply_s, running_s) = result?;
    down.context("remove the cluster with containers")?;
    Ok(WithContainers {
        apply_s,
        running_s,
        down_s,
    })
}
