//! `get deployments`, `get replicasets` and `describe deployment`.

use std::fmt::Write;

use anyhow::{Context, Result};
use serde_json::Value;

use flatnet::emulator::labels::Selector;
use flatnet::emulator::workloads::{
    owner_of, selector_of, template_manifest, DeploymentRecord, ReplicaSetRecord, Store, Strategy,
};
use flatnet::emulator::{table, Cluster};

use super::show::{age, GetArgs, LabelColumns};
use super::{Kind, Output};

pub fn get(cluster: &Cluster, ns: &str, what: Kind, g: &GetArgs) -> Result<String> {
    cluster.spec()?;
    let store = Store(cluster.dir());
    let selector = g
        .selector
        .as_deref()
        .map(Selector::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?
        .unwrap_or_default();
    let mut deployments = store.deployments()?;
    let mut sets = store.replicasets()?;
    let pods = cluster.dir().pods()?;
    let keep = |o_ns: &str, name: &str, labels: &flatnet::emulator::labels::Labels| {
        (g.all_namespaces || o_ns == ns)
            && g.name.as_deref().is_none_or(|n| n == name)
            && selector.matches(labels)
    };
    deployments.retain(|d| keep(&d.namespace, &d.name, &d.labels));
    let all_sets = sets.clone();
    sets.retain(|r| keep(&r.namespace, &r.name, &r.labels));
    let kind = if what == Kind::Deployments {
        "deployments.apps"
    } else {
        "replicasets.apps"
    };
    let empty = if what == Kind::Deployments {
        deployments.is_empty()
    } else {
        sets.is_empty()
    };
    if let (true, Some(name)) = (empty, &g.name) {
        anyhow::bail!("Error from server (NotFound): {kind} {name:?} not found");
    }
    let columns = LabelColumns {
        show_labels: g.show_labels,
        keys: &g.label_columns,
    };
    if what == Kind::Deployments {
        let mut list = Vec::new();
        for d in &deployments {
            let mut v = serde_json::to_value(d)?;
            v["status"] = serde_json::to_value(d.status(cluster.dir(), &all_sets, &pods))?;
            list.push(v);
        }
        return render(
            g.output,
            &Value::Array(list),
            empty,
            ns,
            g.all_namespaces,
            || {
                let mut rows = vec![cells(&["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"])];
                if g.output == Some(Output::Wide) {
                    rows[0].extend(cells(&["CONTAINERS", "IMAGES", "SELECTOR"]));
                }
                columns.header(&mut rows[0]);
                if g.all_namespaces {
                    rows[0].insert(0, "NAMESPACE".into());
                }
                for d in &deployments {
                    let st = d.status(cluster.dir(), &all_sets, &pods);
                    let mut row = vec![
                        d.name.clone(),
                        format!("{}/{}", st.ready_replicas, d.replicas),
                        st.updated_replicas.to_string(),
                        st.available_replicas.to_string(),
                        age(d.created),
                    ];
                    if g.output == Some(Output::Wide) {
                        let (names, images) = containers(&d.template);
                        row.extend([names, images, selector_text(&d.selector)]);
                    }
                    columns.cells(&d.labels, &mut row);
                    if g.all_namespaces {
                        row.insert(0, d.namespace.clone());
                    }
                    rows.push(row);
                }
                table::render(&rows)
            },
        );
    }
    let list = serde_json::to_value(&sets)?;
    render(g.output, &list, empty, ns, g.all_namespaces, || {
        let mut rows = vec![cells(&["NAME", "DESIRED", "CURRENT", "READY", "AGE"])];
        columns.header(&mut rows[0]);
        if g.all_namespaces {
            rows[0].insert(0, "NAMESPACE".into());
        }
        for r in &sets {
            let (current, ready) = replicaset_pods(cluster, r, &pods);
            let mut row = vec![
                r.name.clone(),
                r.replicas.to_string(),
                current.to_string(),
                ready.to_string(),
                age(r.created),
            ];
            columns.cells(&r.labels, &mut row);
            if g.all_namespaces {
                row.insert(0, r.namespace.clone());
            }
            rows.push(row);
        }
        table::render(&rows)
    })
}

fn render(
    output: Option<Output>,
    list: &Value,
    empty: bool,
    ns: &str,
    all: bool,
    table: impl FnOnce() -> String,
) -> Result<String> {
    Ok(match output {
        Some(Output::Json | Output::Record) => serde_json::to_string_pretty(list)? + "\n",
        Some(Output::Yaml) => serde_norway::to_string(list)?,
        _ if empty => {
            if all {
                eprintln!("No resources found");
            } else {
                eprintln!("No resources found in {ns} namespace.");
            }
            String::new()
        }
        _ => table(),
    })
}

/// Its pods, and how many of them are ready.
fn replicaset_pods(
    cluster: &Cluster,
    r: &ReplicaSetRecord,
    pods: &[flatnet::emulator::state::PodRecord],
) -> (usize, usize) {
    let mine: Vec<_> = pods
        .iter()
        .filter(|p| p.namespace == r.namespace && owner_of(p) == Some(r.name.as_str()))
        .collect();
    let ready = mine
        .iter()
        .filter(|p| {
            cluster
                .dir()
                .pod_dir(&p.namespace, &p.name)
                .status()
                .is_some_and(|s| s.is_ready())
        })
        .count();
    (mine.len(), ready)
}

fn cells(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The template's container names and images, comma-separated.
fn containers(template: &Value) -> (String, String) {
    let list = template["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let field = |k: &str| {
        list.iter()
            .map(|c| c[k].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    (field("name"), field("image"))
}

/// A selector as kubectl prints it: `app=web,tier in (a,b)`.
fn selector_text(v: &Value) -> String {
    use flatnet::emulator::labels::Requirement;
    let Ok(sel) = selector_of(v) else {
        return "<invalid>".into();
    };
    sel.0
        .iter()
        .map(|r| match r {
            Requirement::In(k, vs) if vs.len() == 1 => format!("{k}={}", vs[0]),
            Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
            Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
            Requirement::Exists(k) => k.clone(),
            Requirement::DoesNotExist(k) => format!("!{k}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn map_lines(o: &mut String, title: &str, map: &flatnet::emulator::labels::Labels) {
    if map.is_empty() {
        let _ = writeln!(o, "{title:<24}<none>");
    }
    for (i, (k, v)) in map.iter().enumerate() {
        let t = if i == 0 { title } else { "" };
        let _ = writeln!(o, "{t:<24}{k}={v}");
    }
}

pub fn describe(cluster: &Cluster, ns: &str, name: &str) -> Result<String> {
    cluster.spec()?;
    let store = Store(cluster.dir());
    let d: DeploymentRecord = store
        .deployment(ns, name)?
        .with_context(|| format!("deployments.apps {name:?} not found"))?;
    let sets = store.replicasets()?;
    let pods = cluster.dir().pods()?;
    let st = d.status(cluster.dir(), &sets, &pods);
    let mut o = String::new();
    let _ = writeln!(o, "{:<24}{}", "Name:", d.name);
    let _ = writeln!(o, "{:<24}{}", "Namespace:", d.namespace);
    let _ = writeln!(o, "{:<24}{} ago", "Created:", age(d.created));
    map_lines(&mut o, "Labels:", &d.labels);
    let mut annotations = d.annotations.clone();
    annotations.remove(flatnet::emulator::manifest::LAST_APPLIED);
    annotations.insert(
        "deployment.kubernetes.io/revision".into(),
        st.revision.to_string(),
    );
    map_lines(&mut o, "Annotations:", &annotations);
    let _ = writeln!(o, "{:<24}{}", "Selector:", selector_text(&d.selector));
    let _ = writeln!(
        o,
        "{:<24}{} desired | {} updated | {} total | {} available | {} unavailable",
        "Replicas:",
        d.replicas,
        st.updated_replicas,
        st.replicas,
        st.available_replicas,
        st.replicas.saturating_sub(st.available_replicas)
    );
    match &d.strategy {
        Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } => {
            let _ = writeln!(o, "{:<24}RollingUpdate", "StrategyType:");
            let _ = writeln!(
                o,
                "{:<24}{} max unavailable, {} max surge",
                "RollingUpdateStrategy:",
                max_unavailable.describe(),
                max_surge.describe()
            );
        }
        Strategy::Recreate => {
            let _ = writeln!(o, "{:<24}Recreate", "StrategyType:");
        }
    }
    let _ = writeln!(o, "Pod Template:");
    let template_labels: flatnet::emulator::labels::Labels = d.template["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    map_lines(&mut o, "  Labels:", &template_labels);
    let _ = writeln!(o, "  Containers:");
    for c in d.template["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let _ = writeln!(o, "   {}:", c["name"].as_str().unwrap_or_default());
        let _ = writeln!(
            o,
            "    Image:      {}",
            c["image"].as_str().unwrap_or("<none>")
        );
        let words: Vec<&str> = ["command", "args"]
            .iter()
            .flat_map(|k| c[*k].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .collect();
        let _ = writeln!(o, "    Command:    {}", words.join(" "));
    }
    // The probes as the pods get them (named ports resolved, defaults filled in).
    if let Ok(m) = template_manifest(&d.template, &d.name, &d.namespace, None) {
        for c in &m.spec.containers {
            for (title, p) in [
                ("Liveness:", &c.liveness_probe),
                ("Readiness:", &c.readiness_probe),
                ("Startup:", &c.startup_probe),
            ] {
                if let Some(p) = p {
                    let _ = writeln!(
                        o,
                        "    {} {title:<11} {} delay={}s timeout={}s period={}s #success={} \
                         #failure={}",
                        c.name,
                        p.action.describe(),
                        p.initial_delay_seconds,
                        p.timeout_seconds,
                        p.period_seconds,
                        p.success_threshold,
                        p.failure_threshold
                    );
                }
            }
        }
    }
    let mine: Vec<&ReplicaSetRecord> = sets
        .iter()
        .filter(|r| r.namespace == d.namespace && r.owner == d.name)
        .collect();
    let line = |r: &ReplicaSetRecord| {
        let (current, _) = replicaset_pods(cluster, r, &pods);
        format!("{} ({current}/{} replicas created)", r.name, r.replicas)
    };
    let old: Vec<String> = mine
        .iter()
        .filter(|r| Some(&r.name) != st.new_replica_set.as_ref())
        .filter(|r| r.replicas > 0 || replicaset_pods(cluster, r, &pods).0 > 0)
        .map(|r| line(r))
        .collect();
    let _ = writeln!(
        o,
        "{:<24}{}",
        "OldReplicaSets:",
        if old.is_empty() {
            "<none>".into()
        } else {
            old.join(", ")
        }
    );
    let new = mine
        .iter()
        .find(|r| Some(&r.name) == st.new_replica_set.as_ref())
        .map_or("<none>".into(), |r| line(r));
    let _ = writeln!(o, "{:<24}{new}", "NewReplicaSet:");
    Ok(o)
}
