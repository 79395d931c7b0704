//! What `get` and `topology` print.

use std::fmt::Write;

use anyhow::{Context, Result};

use flatnet::emulator::labels::{Labels, Selector};
use flatnet::emulator::sandbox::conflist_path;
use flatnet::emulator::state::{join, now, ClusterSpec, NamespaceRecord, NodeSpec, PodRecord};
use flatnet::emulator::trace::{host_veth, made_by};
use flatnet::emulator::{table, Cluster};
use flatnet::netlink::{Family, RouteOf};

use serde_json::Value;

use super::{jsonpath, v1, Kind, Output};

#[derive(clap::Args, Default, Clone)]
pub struct GetArgs {
    /// nodes, pods or namespaces (`no`, `po`, `ns`).
    pub what: Option<Kind>,
    /// Only this one.
    pub name: Option<String>,
    /// wide, json, yaml, record, name, or jsonpath=TEMPLATE.
    #[arg(short = 'o', long = "output", value_parser = Format::parse)]
    pub format: Option<Format>,
    /// What the listing itself prints: set from `format`.
    #[arg(skip)]
    pub output: Option<Output>,
    /// After the listing, a row each time a pod's row changes, until interrupted (pods only).
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// With -w: an EVENT column (ADDED, MODIFIED, DELETED), as kubectl's flag of that name.
    #[arg(long)]
    pub output_watch_events: bool,
    /// Tables without their header line.
    #[arg(long)]
    pub no_headers: bool,
    /// Only the objects whose labels match (kubectl's syntax: `k=v`, `k!=v`, `k in (a,b)`,
    /// `k notin (a)`, `k`, `!k`, comma-separated).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Pods of every namespace, with a NAMESPACE column.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// A LABELS column.
    #[arg(long)]
    pub show_labels: bool,
    /// A column for each of these label keys (repeatable, or comma-separated).
    #[arg(short = 'L', long = "label-columns", value_delimiter = ',')]
    pub label_columns: Vec<String>,
}

/// `-o`: one of the listing's outputs, or one made from its JSON.
#[derive(Clone, Debug, PartialEq)]
pub enum Format {
    Output(Output),
    /// KIND/NAME, a line each.
    Name,
    Jsonpath(String),
}

impl Format {
    fn parse(s: &str) -> std::result::Result<Format, String> {
        if let Some(t) = s.strip_prefix("jsonpath=") {
            return Ok(Format::Jsonpath(t.to_string()));
        }
        match s {
            "name" => Ok(Format::Name),
            "jsonpath" => Err("jsonpath needs a template: -o jsonpath='{.status.podIP}'".into()),
            _ => <Output as clap::ValueEnum>::from_str(s, false)
                .map(Format::Output)
                .map_err(|_| {
                    format!(
                        "unknown output format {s:?}: wide, json, yaml, record, name, \
                         jsonpath=TEMPLATE"
                    )
                }),
        }
    }
}

/// The label columns asked for.
pub struct LabelColumns<'a> {
    pub show_labels: bool,
    pub keys: &'a [String],
}

impl LabelColumns<'_> {
    pub fn header(&self, row: &mut Vec<String>) {
        row.extend(
            self.keys
                .iter()
                .map(|k| k.rsplit('/').next().unwrap_or(k).to_uppercase()),
        );
        if self.show_labels {
            row.push("LABELS".into());
        }
    }

    pub fn cells(&self, labels: &Labels, row: &mut Vec<String>) {
        row.extend(
            self.keys
                .iter()
                .map(|k| labels.get(k).cloned().unwrap_or_default()),
        );
        if self.show_labels {
            row.push(if labels.is_empty() {
                "<none>".into()
            } else {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            });
        }
    }
}

pub fn get_cmd(cluster: &Cluster, ns: &str, g: &GetArgs) -> Result<String> {
    let output = match &g.format {
        Some(Format::Output(o)) => Some(*o),
        Some(Format::Name | Format::Jsonpath(_)) => Some(Output::Json),
        None => None,
    };
    let listed = get_as(
        cluster,
        ns,
        &GetArgs {
            output,
            ..g.clone()
        },
    )?;
    let from_json =
        || -> Result<Value> { serde_json::from_str(&listed).context("the listing's JSON") };
    Ok(match &g.format {
        Some(Format::Name) => names(g.what, &from_json()?),
        Some(Format::Jsonpath(template)) => jsonpath::render(template, &from_json()?)?,
        _ if g.no_headers && output.is_none_or(|o| o == Output::Wide) => {
            listed.split_once('\n').map_or("", |(_, rest)| rest).into()
        }
        _ => listed,
    })
}

/// `get pods -w`: the table, then a row for each pod whose row changes (AGE aside), polling
/// the state dir; a deleted pod's last row once more, as kubectl prints a DELETED event.
pub fn watch(cluster: &Cluster, ns: &str, g: &GetArgs) -> Result<()> {
    use std::collections::BTreeMap;
    anyhow::ensure!(
        g.what == Some(Kind::Pods),
        "-w watches pods only in the emulator"
    );
    anyhow::ensure!(
        g.format.is_none() || g.format == Some(Format::Output(Output::Wide)),
        "-w prints tables only (-o wide or none)"
    );
    let columns = LabelColumns {
        show_labels: g.show_labels,
        keys: &g.label_columns,
    };
    let wide = g.format.is_some();
    let record = GetArgs {
        output: Some(Output::Record),
        ..g.clone()
    };
    let key_len = if g.all_namespaces { 2 } else { 1 };
    // AGE changes every second: not a change of the pod.
    let age_at = if g.all_namespaces { 5 } else { 4 };
    let without_age = |row: &[String]| {
        let mut r = row.to_vec();
        r.remove(age_at);
        r
    };
    let mut seen: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    let mut first = true;
    loop {
        let pods: Vec<PodRecord> =
            serde_json::from_str(&get_as(cluster, ns, &record)?).context("the pods' records")?;
        let mut rows = pods_rows(cluster, &pods, wide, &columns, g.all_namespaces);
        let mut header = rows.remove(0);
        let mut out = Vec::new();
        let mut now_seen = BTreeMap::new();
        for row in rows {
            let key = row[..key_len].to_vec();
            let event = match seen.get(&key) {
                None => Some("ADDED"),
                Some(old) if without_age(old) != without_age(&row) => Some("MODIFIED"),
                Some(_) => None,
            };
            if let Some(event) = event {
                out.push((event, row.clone()));
            }
            now_seen.insert(key, row);
        }
        for (key, row) in &seen {
            if !now_seen.contains_key(key) {
                out.push(("DELETED", row.clone()));
            }
        }
        seen = now_seen;
        if g.output_watch_events {
            header.insert(0, "EVENT".into());
            for (event, row) in &mut out {
                row.insert(0, event.to_string());
            }
        }
        let mut table: Vec<Vec<String>> = out.into_iter().map(|(_, row)| row).collect();
        if first && !g.no_headers {
            table.insert(0, header);
        }
        first = false;
        if !table.is_empty() {
            print!("{}", table::render(&table));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// `-o name`: `pod/web`, as kubectl names objects.
fn names(what: Option<Kind>, listed: &Value) -> String {
    let kind = match what {
        Some(Kind::Nodes) => "node",
        Some(Kind::Namespaces) => "namespace",
        Some(Kind::Deployments) => "deployment.apps",
        Some(Kind::Replicasets) => "replicaset.apps",
        _ => "pod",
    };
    let items = match listed {
        Value::Array(items) => items.as_slice(),
        Value::Object(o) if o.contains_key("items") => {
            listed["items"].as_array().map_or(&[][..], |a| a.as_slice())
        }
        one => std::slice::from_ref(one),
    };
    let mut out = String::new();
    for item in items {
        // A v1 object's metadata.name, or a flatnet record's name.
        let name = item["metadata"]["name"].as_str().or(item["name"].as_str());
        if let Some(name) = name {
            let _ = writeln!(out, "{kind}/{name}");
        }
    }
    out
}

fn get_as(cluster: &Cluster, ns: &str, g: &GetArgs) -> Result<String> {
    let what = g.what.context(
        "what to get: nodes, pods, namespaces, deployments, replicasets or networkpolicies \
         (no, po, ns, deploy, rs, netpol)",
    )?;
    if matches!(what, Kind::Deployments | Kind::Replicasets) {
        return super::workloads::get(cluster, ns, what, g);
    }
    if matches!(what, Kind::Services | Kind::Endpointslices) {
        let json = g.output.and_then(|o| match o {
            Output::Json => Some(true),
            Output::Yaml => Some(false),
            _ => None,
        });
        return super::services::get(
            cluster,
            ns,
            what == Kind::Endpointslices,
            g.name.as_deref(),
            g.all_namespaces,
            json,
        );
    }
    let what = g
        .what
        .context("what to get: nodes, pods, namespaces or networkpolicies (no, po, ns, netpol)")?;
    if what == Kind::Networkpolicies {
        cluster.spec()?;
        let json = g.output.and_then(|o| match o {
            Output::Json => Some(true),
            Output::Yaml => Some(false),
            _ => None,
        });
        return super::objects::get_policies(
            cluster,
            ns,
            g.name.as_deref(),
            g.all_namespaces,
            json,
        );
    }
    let selector = g
        .selector
        .as_deref()
        .map(Selector::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let mut spec = cluster.spec()?;
    let mut pods = cluster.dir().pods()?;
    let mut namespaces = cluster.dir().namespaces()?;
    if !g.all_namespaces {
        if cluster.dir().namespace(ns)?.is_none() && what == Kind::Pods {
            anyhow::bail!("namespaces {ns:?} not found");
        }
        pods.retain(|p| p.namespace == ns);
    }
    if let Some(sel) = &selector {
        if what == Kind::Nodes {
            anyhow::bail!("the emulator's nodes have no labels to select on");
        }
        pods.retain(|p| sel.matches(&p.labels));
        namespaces.retain(|n| sel.matches(&n.labels));
    }
    if let Some(name) = &g.name {
        let found = match what {
            Kind::Nodes => {
                spec.nodes.retain(|n| n.name == *name);
                !spec.nodes.is_empty()
            }
            Kind::Pods => {
                pods.retain(|p| p.name == *name);
                !pods.is_empty()
            }
            Kind::Namespaces => {
                namespaces.retain(|n| n.name == *name);
                !namespaces.is_empty()
            }
            Kind::Deployments | Kind::Replicasets => unreachable!("listed above"),
            Kind::Clusters => unreachable!("listed by clusters::list"),
            Kind::Networkpolicies => unreachable!("listed by objects::get_policies"),
            Kind::Services | Kind::Endpointslices => unreachable!("listed by services::get"),
        };
        let kind = match what {
            Kind::Nodes => "nodes",
            Kind::Pods => "pods",
            Kind::Namespaces => "namespaces",
            Kind::Deployments | Kind::Replicasets => unreachable!("listed above"),
            Kind::Clusters => "clusters",
            Kind::Networkpolicies => unreachable!("listed by objects::get_policies"),
            Kind::Services | Kind::Endpointslices => unreachable!("listed by services::get"),
        };
        anyhow::ensure!(
            found,
            "Error from server (NotFound): {kind} {name:?} not found"
        );
    }
    let columns = LabelColumns {
        show_labels: g.show_labels,
        keys: &g.label_columns,
    };
    if what == Kind::Namespaces {
        return namespaces_out(&namespaces, g.output, &columns);
    }
    if pods.is_empty() && what == Kind::Pods && g.output.is_none_or(|o| o == Output::Wide) {
        // As kubectl: a sentence on stderr, no table.
        if g.all_namespaces {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {ns} namespace.");
        }
        return Ok(String::new());
    }
    get_listed(
        cluster,
        what,
        spec,
        pods,
        g.output,
        &columns,
        Scope {
            all_namespaces: g.all_namespaces,
            one: g.name.is_some(),
        },
    )
}

/// `get nodes` and `get pods` of the whole cluster, as the demo shows them.
pub fn get(cluster: &Cluster, what: Kind, output: Option<Output>) -> Result<String> {
    let spec = cluster.spec()?;
    let pods = cluster.dir().pods()?;
    let columns = LabelColumns {
        show_labels: false,
        keys: &[],
    };
    get_listed(
        cluster,
        what,
        spec,
        pods,
        output,
        &columns,
        Scope {
            all_namespaces: false,
            one: false,
        },
    )
}

fn namespaces_out(
    list: &[NamespaceRecord],
    output: Option<Output>,
    columns: &LabelColumns,
) -> Result<String> {
    Ok(match output {
        Some(Output::Json | Output::Record) => serde_json::to_string_pretty(list)? + "\n",
        Some(Output::Yaml) => serde_norway::to_string(list)?,
        _ => {
            let mut rows = vec![cells(&["NAME", "STATUS", "AGE"])];
            columns.header(&mut rows[0]);
            for n in list {
                let mut row = vec![n.name.clone(), "Active".into(), age(n.created)];
                columns.cells(&n.labels, &mut row);
                rows.push(row);
            }
            table::render(&rows)
        }
    })
}

/// What was asked for: every namespace (a NAMESPACE column), one object by name (printed as
/// itself rather than in a List).
struct Scope {
    all_namespaces: bool,
    one: bool,
}

fn get_listed(
    cluster: &Cluster,
    what: Kind,
    spec: ClusterSpec,
    pods: Vec<PodRecord>,
    output: Option<Output>,
    columns: &LabelColumns,
    scope: Scope,
) -> Result<String> {
    let Scope {
        all_namespaces: with_namespace,
        one: single,
    } = scope;
    let wide = output == Some(Output::Wide);
    let pods_with_status = || -> Result<serde_json::Value> {
        let mut list = Vec::new();
        for p in &pods {
            let mut v = serde_json::to_value(p)?;
            v["status"] = match cluster.dir().pod_dir(&p.namespace, &p.name).status() {
                Some(status) => serde_json::to_value(status)?,
                None => serde_json::json!({}),
            };
            // As the API server has them: the first address, and every one. `ip`, the
            // first, stays beside `ips` for what read it before pods had two.
            if let Some(first) = p.ips.first() {
                v["ip"] = first.to_string().into();
                v["status"]["podIP"] = first.to_string().into();
            }
            v["status"]["podIPs"] = p
                .ips
                .iter()
                .map(|ip| serde_json::json!({ "ip": ip.to_string() }))
                .collect();
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
    let v1 = |single: bool| -> Result<Value> {
        let mut items = Vec::new();
        if what == Kind::Nodes {
            for n in &spec.nodes {
                let report = cluster.dir().agent_report(&n.name);
                let health = v1::NodeHealth {
                    ready: node_ready(cluster, n),
                    problem: report.and_then(|r| r.problem),
                };
                items.push(serde_json::to_value(v1::node(n, &health))?);
            }
        } else {
            for p in &pods {
                let node = spec.nodes.iter().find(|n| n.name == p.node);
                items.push(serde_json::to_value(v1::pod(cluster, p, node))?);
            }
        }
        Ok(match items.len() {
            1 if single => items.remove(0),
            _ => v1::list(items),
        })
    };
    Ok(match (what, output) {
        (Kind::Nodes, Some(Output::Record)) => {
            serde_json::to_string_pretty(&nodes_with_status()?)? + "\n"
        }
        (Kind::Pods, Some(Output::Record)) => {
            serde_json::to_string_pretty(&pods_with_status()?)? + "\n"
        }
        (_, Some(Output::Json)) => serde_json::to_string_pretty(&v1(single)?)? + "\n",
        (_, Some(Output::Yaml)) => serde_norway::to_string(&v1(single)?)?,
        (Kind::Nodes, _) => nodes_table(cluster, &spec, &pods, wide),
        (Kind::Pods, _) => pods_table(cluster, &pods, wide, columns, with_namespace),
        (Kind::Namespaces | Kind::Deployments | Kind::Replicasets, _) => {
            unreachable!("listed by namespaces_out and workloads::get")
        }
        (Kind::Clusters, _) => unreachable!("listed by clusters::list"),
        (Kind::Networkpolicies, _) => unreachable!("listed by objects::get_policies"),
        (Kind::Services | Kind::Endpointslices, _) => unreachable!("listed by services::get"),
    })
}

fn nodes_table(cluster: &Cluster, spec: &ClusterSpec, pods: &[PodRecord], wide: bool) -> String {
    let mut rows = vec![cells(&[
        "NAME", "STATUS", "RESTARTS", "NODE-IP", "POD-CIDR", "PODS", "AGE",
    ])];
    if wide {
        rows[0].extend(cells(&["NETNS", "AGENT-PID", "PEERS"]));
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
            match n.node_ips() {
                ips if ips.is_empty() => n.node_ip.to_string(),
                ips => join(&ips),
            },
            n.pod_cidrs_text(),
            pods.iter().filter(|p| p.node == n.name).count().to_string(),
            age(n.created),
        ];
        if wide {
            row.push(n.netns.clone());
            row.push(n.agent.map_or("-".into(), |a| a.pid.to_string()));
            row.push(peer_modes(cluster, n));
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

/// How the node's agent reaches each other node (`node-2=tunnel,node-3=direct`), from its
/// report; `-` before its first.
fn peer_modes(cluster: &Cluster, n: &NodeSpec) -> String {
    let peers = cluster
        .dir()
        .agent_report(&n.name)
        .map(|r| r.peers)
        .unwrap_or_default();
    if peers.is_empty() {
        return "-".into();
    }
    peers
        .iter()
        .map(|(node, mode)| format!("{node}={mode}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Ready as kubelet would say it: the agent runs, the network config is in place, and the
/// agent's last pass succeeded.
fn node_ready(cluster: &Cluster, n: &NodeSpec) -> bool {
    let agent = n.agent.is_some_and(|a| a.is_running());
    let conflist = conflist_path(&cluster.dir().conf_dir(&n.name)).is_some();
    let report = cluster.dir().agent_report(&n.name).is_none_or(|r| r.ready);
    agent && conflist && report
}

fn pods_table(
    cluster: &Cluster,
    pods: &[PodRecord],
    wide: bool,
    columns: &LabelColumns,
    with_namespace: bool,
) -> String {
    table::render(&pods_rows(cluster, pods, wide, columns, with_namespace))
}

fn pods_rows(
    cluster: &Cluster,
    pods: &[PodRecord],
    wide: bool,
    columns: &LabelColumns,
    with_namespace: bool,
) -> Vec<Vec<String>> {
    let mut rows = vec![cells(&[
        "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE",
    ])];
    if wide {
        rows[0].extend(cells(&["PORTS", "HOST-VETH", "NETNS"]));
    }
    columns.header(&mut rows[0]);
    if with_namespace {
        rows[0].insert(0, "NAMESPACE".into());
    }
    for p in pods {
        let (status, ready, restarts) = pod_status(cluster, p);
        let mut row = vec![
            p.name.clone(),
            ready,
            status,
            restarts.to_string(),
            age(p.created),
            // kubectl's IP column is the first address (status.podIP); -o wide shows them
            // all, as status.podIPs lists them.
            match (p.ips.first(), wide) {
                (None, _) => "<none>".into(),
                (Some(ip), false) => ip.to_string(),
                (Some(_), true) => join(&p.ips),
            },
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
        columns.cells(&p.labels, &mut row);
        if with_namespace {
            row.insert(0, p.namespace.clone());
        }
        rows.push(row);
    }
    rows
}

/// STATUS, READY and RESTARTS as kubectl shows them. A bare sandbox (`run --sandbox-only`) is
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
    let Some(st) = cluster.dir().pod_dir(&p.namespace, &p.name).status() else {
        return ("Pending".into(), format!("0/{total}"), 0);
    };
    // READY counts the containers that are ready: running, started and passing their
    // readiness probes.
    let ready = st.containers.iter().filter(|c| c.ready).count();
    let restarts = st.containers.iter().map(|c| c.restart_count).sum();
    let lost = st.supervisor.is_some() && !p.supervisor.is_some_and(|s| s.is_running());
    let status = if lost { "Unknown".into() } else { st.display() };
    (status, format!("{ready}/{total}"), restarts)
}

/// `describe node NAME`: addresses, pod CIDRs, conditions, the agent and its restarts, pods.
pub fn describe_node(cluster: &Cluster, name: &str) -> Result<String> {
    super::clusters::known_node(cluster, name)?;
    let spec = cluster.spec()?;
    let n = spec
        .nodes
        .iter()
        .find(|n| n.name == name)
        .context("the node's record")?;
    let report = cluster.dir().agent_report(name);
    let ready = node_ready(cluster, n);
    let mut o = String::new();
    let _ = writeln!(o, "Name:          {}", n.name);
    let _ = writeln!(o, "Addresses:");
    for ip in n.node_ips() {
        let _ = writeln!(o, "  InternalIP:  {ip}");
    }
    let _ = writeln!(o, "  Hostname:    {}", n.name);
    let _ = writeln!(
        o,
        "PodCIDR:       {}",
        n.pod_cidrs()
            .first()
            .map_or("<none>".into(), ToString::to_string)
    );
    let _ = writeln!(o, "PodCIDRs:      {}", n.pod_cidrs_text());
    let _ = writeln!(o, "Network:       netns {}", n.netns);
    let _ = writeln!(o, "Conditions:");
    let _ = writeln!(o, "  Ready:       {}", if ready { "True" } else { "False" });
    let agent = match n.agent {
        Some(a) if a.is_running() => format!("running (pid {})", a.pid),
        Some(a) => format!("gone (pid {} was)", a.pid),
        None => "not started".into(),
    };
    let _ = writeln!(
        o,
        "Agent:         {agent}, restarted {} times",
        n.agent_restarts
    );
    if let Some(problem) = report.as_ref().and_then(|r| r.problem.as_ref()) {
        let _ = writeln!(o, "Agent Problem: {problem}");
    }
    for r in report.map(|r| r.refused).unwrap_or_default() {
        let _ = writeln!(o, "Refused:       {r}");
    }
    let pods: Vec<PodRecord> = cluster
        .dir()
        .pods()?
        .into_iter()
        .filter(|p| p.node == n.name)
        .collect();
    let _ = writeln!(o, "Pods:          ({} in total)", pods.len());
    if !pods.is_empty() {
        let mut rows = vec![cells(&["Namespace", "Name", "IP", "Status"])];
        for p in &pods {
            rows.push(vec![
                p.namespace.clone(),
                p.name.clone(),
                p.ips.first().map_or("<none>".into(), ToString::to_string),
                pod_status(cluster, p).0,
            ]);
        }
        for line in table::render(&rows).lines() {
            let _ = writeln!(o, "  {line}");
        }
    }
    Ok(o)
}

/// Wider than this, `check` prints a line per pod instead of the matrix.
const CHECK_COLUMNS: usize = 100;

/// `check`'s matrix while it fits in 100 columns (about 6 pods); past that a line per pod
/// (its probes out and in: ok, NAT, failed) and then each failure with where it broke.
pub fn check_text(
    probes: &[flatnet::emulator::check::Probe],
    why: &flatnet::emulator::check::Diagnoses,
) -> String {
    use flatnet::emulator::check::{self, Outcome};
    let matrix = check::render_with(probes, why);
    if matrix.lines().all(|l| l.chars().count() <= CHECK_COLUMNS) {
        return matrix;
    }
    let mut pods: Vec<(&str, std::net::IpAddr)> = Vec::new();
    for p in probes {
        for (n, ip) in [(p.from.as_str(), p.from_ip), (p.to.as_str(), p.to_ip)] {
            if !pods.iter().any(|(m, _)| *m == n) {
                pods.push((n, ip));
            }
        }
    }
    pods.sort();
    let count = |pick: &dyn Fn(&flatnet::emulator::check::Probe) -> bool,
                 what: &dyn Fn(&Outcome) -> bool| {
        probes
            .iter()
            .filter(|p| pick(p) && what(&p.outcome))
            .count()
            .to_string()
    };
    let ok = |o: &Outcome| matches!(o, Outcome::Ok { .. });
    let nat = |o: &Outcome| matches!(o, Outcome::Nat { .. });
    let failed = |o: &Outcome| matches!(o, Outcome::Failed { .. });
    let mut rows = vec![cells(&[
        "POD",
        "IP",
        "OUT-OK",
        "OUT-NAT",
        "OUT-FAILED",
        "IN-OK",
        "IN-NAT",
        "IN-FAILED",
    ])];
    for (name, ip) in &pods {
        let out = |p: &flatnet::emulator::check::Probe| p.from == *name;
        let inn = |p: &flatnet::emulator::check::Probe| p.to == *name;
        rows.push(vec![
            name.to_string(),
            ip.to_string(),
            count(&out, &ok),
            count(&out, &nat),
            count(&out, &failed),
            count(&inn, &ok),
            count(&inn, &nat),
            count(&inn, &failed),
        ]);
    }
    let mut text = table::render(&rows);
    let _ = writeln!(
        text,
        "({} pods: a line each; the matrix is shown while it fits in {CHECK_COLUMNS} columns)",
        pods.len()
    );
    // What follows the matrix's rows: each NAT or failure with where it broke, and the total.
    for line in matrix.lines().skip(pods.len() + 1) {
        let _ = writeln!(text, "{line}");
    }
    text
}

fn cells(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Like kubectl: the largest unit only.
pub fn age(created: u64) -> String {
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

/// A node's routes as `ip route` shows them, with who made each; IPv6's link-local routes
/// (one per link, the kernel's) are left out.
pub fn routes_text<N: Family>(routes: &[(RouteOf<N>, String)]) -> String {
    let mut rows = Vec::new();
    let link_local = |r: &RouteOf<N>| match r.dst.ip().into() {
        std::net::IpAddr::V6(ip) => ip.segments()[0] & 0xffc0 == 0xfe80,
        std::net::IpAddr::V4(_) => false,
    };
    for (r, dev) in routes.iter().filter(|(r, _)| !link_local(r)) {
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
