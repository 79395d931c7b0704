//! What `get` and `topology` print.

use std::fmt::Write;

use anyhow::Result;

use flatnet::emulator::sandbox::conflist_path;
use flatnet::emulator::state::{now, ClusterSpec, NodeSpec, PodRecord};
use flatnet::emulator::trace::{host_veth, made_by};
use flatnet::emulator::{table, Cluster};
use flatnet::netlink::Route;

use super::{Kind, Output};

pub fn get(
    cluster: &Cluster,
    what: Kind,
    name: Option<&str>,
    output: Option<Output>,
) -> Result<String> {
    let mut spec = cluster.spec()?;
    let mut pods = cluster.dir().pods()?;
    if let Some(name) = name {
        let found = match what {
            Kind::Nodes => {
                spec.nodes.retain(|n| n.name == name);
                !spec.nodes.is_empty()
            }
            Kind::Pods => {
                pods.retain(|p| p.name == name);
                !pods.is_empty()
            }
        };
        anyhow::ensure!(found, "{name:?} not found in cluster {:?}", cluster.name());
    }
    let wide = output == Some(Output::Wide);
    let pods_with_status = || -> Result<serde_json::Value> {
        let mut list = Vec::new();
        for p in &pods {
            let mut v = serde_json::to_value(p)?;
            if let Some(status) = cluster.dir().pod_dir(&p.name).status() {
                v["status"] = serde_json::to_value(status)?;
            }
            list.push(v);
        }
        Ok(serde_json::Value::Array(list))
    };
    if what == Kind::Nodes && spec.incomplete() {
        eprintln!(
            "warning: cluster {:?} is incomplete: the command that was building it (pid {}) \
             stopped before it finished; `flatnet down` removes it",
            spec.name,
            spec.building.map_or(0, |b| b.pid)
        );
    }
    if what == Kind::Nodes
        && spec.building.is_none()
        && !spec.controller.is_some_and(|c| c.is_running())
    {
        eprintln!(
            "warning: the cluster's controller is not running, so no agent is restarted; \
             the next command that changes the cluster starts it again"
        );
    }
    let nodes_with_status = || -> Result<serde_json::Value> {
        let mut list = Vec::new();
        for n in &spec.nodes {
            let mut v = serde_json::to_value(n)?;
            let report = cluster.dir().agent_report(&n.name);
            v["status"] = serde_json::json!({
                "ready": node_ready(cluster, n),
                "incomplete": spec.incomplete(),
                "problem": report.as_ref().and_then(|r| r.problem.clone()),
                "refused": report.map(|r| r.refused).unwrap_or_default(),
            });
            list.push(v);
        }
        Ok(serde_json::Value::Array(list))
    };
    Ok(match (what, output) {
        (Kind::Nodes, Some(Output::Json)) => {
            serde_json::to_string_pretty(&nodes_with_status()?)? + "\n"
        }
        (Kind::Nodes, Some(Output::Yaml)) => serde_norway::to_string(&nodes_with_status()?)?,
        (Kind::Pods, Some(Output::Json)) => {
            serde_json::to_string_pretty(&pods_with_status()?)? + "\n"
        }
        (Kind::Pods, Some(Output::Yaml)) => serde_norway::to_string(&pods_with_status()?)?,
        (Kind::Nodes, _) => nodes_table(cluster, &spec, &pods, wide),
        (Kind::Pods, _) => pods_table(cluster, &pods, wide),
    })
}

fn nodes_table(cluster: &Cluster, spec: &ClusterSpec, pods: &[PodRecord], wide: bool) -> String {
    let mut rows = vec![cells(&[
        "NAME", "STATUS", "RESTARTS", "NODE-IP", "POD-CIDR", "PODS", "AGE",
    ])];
    if wide {
        rows[0].extend(cells(&["NETNS", "AGENT-PID"]));
    }
    // Each refusal once, with the nodes whose agents made it.
    let mut refused: Vec<(String, Vec<&str>)> = Vec::new();
    for n in &spec.nodes {
        let mut status = if node_ready(cluster, n) {
            "Ready".to_string()
        } else {
            "NotReady".to_string()
        };
        if spec.incomplete() {
            status.push_str(",Incomplete");
        }
        let mut row = vec![
            n.name.clone(),
            status,
            n.agent_restarts.to_string(),
            n.node_ip.to_string(),
            n.pod_cidr.to_string(),
            pods.iter().filter(|p| p.node == n.name).count().to_string(),
            age(n.created),
        ];
        if wide {
            row.push(n.netns.clone());
            row.push(n.agent.map_or("-".into(), |a| a.pid.to_string()));
        }
        rows.push(row);
        for r in cluster
            .dir()
            .agent_report(&n.name)
            .map(|r| r.refused)
            .unwrap_or_default()
        {
            let line = r.to_string();
            match refused.iter_mut().find(|(l, _)| *l == line) {
                Some((_, by)) => by.push(&n.name),
                None => refused.push((line, vec![&n.name])),
            }
        }
    }
    let mut out = table::render(&rows);
    if !refused.is_empty() {
        out.push_str("\nRefused node records (not routed; see each node's agent.log):\n");
        for (line, by) in refused {
            let _ = writeln!(out, "  {line} (by {})", by.join(", "));
        }
    }
    out
}

/// Ready as kubelet would say it: the agent runs, the network config is in place, and the
/// agent's last pass succeeded.
fn node_ready(cluster: &Cluster, n: &NodeSpec) -> bool {
    let agent = n.agent.is_some_and(|a| a.is_running());
    let conflist = conflist_path(&cluster.dir().conf_dir(&n.name)).is_some();
    let report = cluster.dir().agent_report(&n.name).is_none_or(|r| r.ready);
    agent && conflist && report
}

fn pods_table(cluster: &Cluster, pods: &[PodRecord], wide: bool) -> String {
    let mut rows = vec![cells(&[
        "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE",
    ])];
    if wide {
        rows[0].extend(cells(&["PORTS", "HOST-VETH", "NETNS"]));
    }
    for p in pods {
        let (status, ready, restarts) = pod_status(cluster, p);
        let mut row = vec![
            p.name.clone(),
            ready,
            status,
            restarts.to_string(),
            age(p.created),
            p.ip.map_or("<none>".into(), |ip| ip.to_string()),
            p.node.clone(),
        ];
        if wide {
            let ports: Vec<String> = p
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .flat_map(|c| &c.ports)
                .map(|port| format!("{}/{}", port.container_port, port.protocol))
                .collect();
            row.push(if ports.is_empty() {
                "<none>".into()
            } else {
                ports.join(",")
            });
            row.push(host_veth(p).unwrap_or("-").into());
            row.push(p.netns.clone());
        }
        rows.push(row);
    }
    table::render(&rows)
}

/// STATUS, READY and RESTARTS as kubectl shows them. A bare sandbox (`flatnet run`) is
/// Running once attached; a pod whose supervisor is gone is Unknown, as kubelet reports a pod
/// it lost track of.
pub fn pod_status(cluster: &Cluster, p: &PodRecord) -> (String, String, u32) {
    let Some(spec) = &p.spec else {
        let status = if p.result.is_some() {
            "Running"
        } else {
            "Pending"
        };
        return (status.into(), "0/0".into(), 0);
    };
    let total = spec.containers.len();
    let Some(st) = cluster.dir().pod_dir(&p.name).status() else {
        return ("Pending".into(), format!("0/{total}"), 0);
    };
    let running = st.containers.iter().filter(|c| c.is_running()).count();
    let restarts = st.containers.iter().map(|c| c.restart_count).sum();
    let lost = st.supervisor.is_some() && !p.supervisor.is_some_and(|s| s.is_running());
    let status = if lost { "Unknown".into() } else { st.display() };
    (status, format!("{running}/{total}"), restarts)
}

fn cells(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Like kubectl: the largest unit only.
fn age(created: u64) -> String {
    let s = now().saturating_sub(created);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The cluster as a tree: the underlay's bridge, each node on it with its routes to the other
/// nodes' pod CIDRs and its pods, each pod with its host veth, the gateway on it, its routes.
pub async fn topology(cluster: &Cluster) -> flatnet::emulator::Result<String> {
    let topo = flatnet::emulator::picture::Topology::read(cluster).await?;
    Ok(flatnet::emulator::picture::tree(&topo))
}

/// A node's routes as `ip route` shows them, with who made each.
pub fn routes_text(routes: &[(Route, String)]) -> String {
    let mut rows = Vec::new();
    for (r, dev) in routes {
        let mut row = r.dst.to_string();
        if let Some(gw) = r.gateway {
            let _ = write!(row, " via {gw}");
        }
        if !dev.is_empty() {
            let _ = write!(row, " dev {dev}");
        }
        rows.push(vec![row, made_by(r.protocol).to_string()]);
    }
    table::render(&rows)
}
