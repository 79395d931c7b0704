//! `run`, `apply`, `delete`, `label`: kubectl's habits for pods and namespaces.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use flatnet::emulator::labels::{self, Change, Selector};
use flatnet::emulator::manifest::{self, Object};
use flatnet::emulator::objects::{pod_key, ApplyOptions, LabelKind};
use flatnet::emulator::state::PodRecord;
use flatnet::emulator::Cluster;

fn backoff(secs: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .context("--restart-backoff must be a number of seconds")
}

/// `pod/NAME created on NODE with IP IP`: kubectl's line, with where the pod went (and every
/// address, comma-separated, for a dual-stack pod).
pub fn created_line(pod: &PodRecord) -> String {
    let ip = match pod.ips.as_slice() {
        [] => "-".into(),
        ips => flatnet::emulator::state::join(ips),
    };
    format!("pod/{} created on {} with IP {ip}", pod.name, pod.node)
}

pub struct RunArgs<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub image: Option<&'a str>,
    pub labels: Option<&'a str>,
    pub node: Option<&'a str>,
    pub command: bool,
    pub words: &'a [String],
}

/// The v1/Pod `kubectl run` would send.
fn run_document(a: &RunArgs, pause: &str) -> Result<Value> {
    let labels = match a.labels {
        Some(l) => labels::parse_list(l).map_err(anyhow::Error::msg)?,
        None => [("run".to_string(), a.name.to_string())].into(),
    };
    let mut container = json!({"name": a.name, "image": a.image.unwrap_or_default()});
    match (a.command, a.words.is_empty()) {
        (true, true) => bail!("--command needs the command after `--`"),
        (true, false) => container["command"] = json!(a.words),
        (false, false) => container["args"] = json!(a.words),
        // No image to take an entrypoint from: the pause process stands in for one.
        (false, true) => container["command"] = json!([pause, "pause"]),
    }
    let mut doc = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": a.name, "namespace": a.namespace, "labels": labels},
        "spec": {"containers": [container]},
    });
    if let Some(n) = a.node {
        doc["spec"]["nodeName"] = n.into();
    }
    Ok(doc)
}

pub fn run(cluster: &Cluster, a: &RunArgs, restart_backoff: f64) -> Result<PodRecord> {
    let exe = std::env::current_exe().context("find the flatnet executable")?;
    let doc = run_document(a, &exe.display().to_string())?;
    let Object::Pod(m) = manifest::parse_value(doc).map_err(anyhow::Error::msg)? else {
        unreachable!("run makes a pod")
    };
    Ok(cluster.create_pod(&m, backoff(restart_backoff)?)?)
}

/// `flatnet pause`: waits for SIGTERM or SIGINT and exits 0, as the pause container does.
pub fn pause() -> Result<ExitCode> {
    // SAFETY: building a signal set and blocking it, then waiting for it; no handlers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
    Ok(ExitCode::SUCCESS)
}

/// The files `-f` names: a file, `-`, or a directory's *.yaml, *.yml and *.json (with `-R`,
/// its subdirectories' too), sorted by name as kubectl reads them.
fn manifest_files(arg: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> Result<()> {
    if !arg.is_dir() {
        out.push(arg.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(arg)
        .with_context(|| format!("read {}", arg.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("read {}", arg.display()))?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if recursive {
                manifest_files(&p, true, out)?;
            }
        } else if p
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Every object of every `-f`, parsed and checked before anything is done with them.
fn read_objects(files: &[PathBuf], recursive: bool) -> Result<Vec<Object>> {
    let mut paths = Vec::new();
    for f in files {
        manifest_files(f, recursive, &mut paths)?;
    }
    if paths.is_empty() {
        bail!("no manifest (*.yaml, *.yml, *.json) in {files:?}");
    }
    let mut objects = Vec::new();
    for file in paths {
        let text = if file == Path::new("-") {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("read the manifest from stdin")?;
            s
        } else {
            std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?
        };
        objects.extend(
            manifest::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
        );
    }
    Ok(objects)
}

pub struct ApplyArgs<'a> {
    pub files: &'a [PathBuf],
    pub recursive: bool,
    pub force: bool,
    pub restart_backoff: f64,
}

pub fn apply(cluster: &Cluster, ns: &str, explicit: bool, a: &ApplyArgs) -> Result<ExitCode> {
    let objects = read_objects(a.files, a.recursive)?;
    for o in &objects {
        if let Object::Pod(m) = o {
            for w in &m.warnings {
                eprintln!(
                    "warning: pod/{}: {w} is not supported and is ignored",
                    m.name
                );
            }
        }
        if let Object::Deployment(d) = o {
            for w in &d.warnings {
                eprintln!(
                    "warning: deployment.apps/{}: {w} is not supported and is ignored",
                    d.name
                );
            }
        }
    }
    let opts = ApplyOptions {
        restart_backoff: backoff(a.restart_backoff)?,
        force: a.force,
    };
    for done in cluster.apply(&objects, ns, explicit, opts)? {
        if let Some(w) = &done.warning {
            eprintln!("Warning: {w}");
        }
        match (&done.pod, done.outcome) {
            (Some(pod), flatnet::emulator::objects::Outcome::Created) => {
                println!("{}", created_line(pod))
            }
            _ => println!("{} {}", done.object, done.outcome.word()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct DeleteArgs {
    /// `pod` (`pods`, `po`) or `namespace` (`ns`), then names.
    words: Vec<String>,
    /// What the manifests name (files or directories, as apply reads them); repeatable.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Also the files in the subdirectories of a directory given with -f.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// The pods whose labels match this selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Every pod of the namespace.
    #[arg(long)]
    all: bool,
    /// A name that does not exist is not an error.
    #[arg(long)]
    ignore_not_found: bool,
    /// Seconds between SIGTERM and SIGKILL, over the pod's terminationGracePeriodSeconds;
    /// 0 needs --force (else it is 1, as kubectl makes it).
    #[arg(long, allow_negative_numbers = true)]
    grace_period: Option<i64>,
    /// Kill at once (grace period 0 unless --grace-period says otherwise).
    #[arg(long)]
    force: bool,
}

/// What one `delete` asks for: pods and namespaces, and the names it did not find.
#[derive(Default)]
struct Targets {
    pods: Vec<PodRecord>,
    namespaces: Vec<String>,
    /// Namespace and name.
    deployments: Vec<(String, String)>,
    /// NetworkPolicies, by namespace and name.
    policies: Vec<(String, String)>,
    /// Services, by namespace and name.
    services: Vec<(String, String)>,
    missing: Vec<String>,
}

impl Targets {
    fn pod(&mut self, cluster: &Cluster, ns: &str, name: &str) -> Result<()> {
        match cluster.dir().pod(ns, name)? {
            Some(p) if !self.pods.iter().any(|q| pod_key(q) == pod_key(&p)) => self.pods.push(p),
            Some(_) => {}
            None => self.missing.push(format!("pods {name:?} not found")),
        }
        Ok(())
    }

    fn namespace(&mut self, cluster: &Cluster, name: &str) -> Result<()> {
        if cluster.dir().namespace(name)?.is_some() {
            if !self.namespaces.iter().any(|n| n == name) {
                self.namespaces.push(name.to_string());
            }
        } else {
            self.missing.push(format!("namespaces {name:?} not found"));
        }
        Ok(())
    }
}

/// kubectl's grace-period rules: `--force` alone means 0; 0 without `--force` means 1.
fn grace(d: &DeleteArgs) -> Option<u64> {
    let g = match (d.grace_period, d.force) {
        (Some(g), _) if g < 0 => None,
        (Some(0), false) => Some(1),
        (Some(g), _) => Some(g as u64),
        (None, true) => Some(0),
        (None, false) => None,
    };
    if d.force && g == Some(0) {
        eprintln!(
            "Warning: Immediate deletion does not wait for confirmation that the running \
             resource has been terminated. The resource may continue to run on the cluster \
             indefinitely."
        );
    }
    g
}

pub fn delete(cluster: &Cluster, ns: &str, explicit: bool, d: &DeleteArgs) -> Result<ExitCode> {
    cluster.spec()?;
    let mut t = Targets::default();
    let usage = "usage: flatnet delete pod NAME... | pods -l SELECTOR | pods --all | \
                 namespace NAME... | networkpolicy NAME... | -f FILE...";
    if !d.files.is_empty() {
        if !d.words.is_empty() || d.selector.is_some() || d.all {
            bail!("-f names what to delete: give no kind, names, -l or --all with it");
        }
        for o in read_objects(&d.files, d.recursive)? {
            match o {
                Object::Pod(m) => {
                    let pod_ns = match &m.namespace {
                        Some(n) if explicit && n != ns => bail!(
                            "the namespace from the provided object {n:?} does not match the \
                             namespace {ns:?}. You must pass '--namespace={n}' to perform this \
                             operation."
                        ),
                        Some(n) => n.clone(),
                        None => ns.to_string(),
                    };
                    t.pod(cluster, &pod_ns, &m.name)?;
                }
                Object::Namespace(n) => t.namespace(cluster, &n.name)?,
                Object::Deployment(d) => {
                    let d_ns = d.namespace.clone().unwrap_or_else(|| ns.to_string());
                    t.deployments.push((d_ns, d.name));
                }
                Object::NetworkPolicy(m) => {
                    let policy_ns = flatnet::emulator::objects::document_namespace(
                        m.namespace.as_deref(),
                        ns,
                        explicit,
                    )?;
                    t.policies.push((policy_ns, m.name.clone()));
                }
                Object::Service(m) => {
                    let svc_ns = flatnet::emulator::objects::document_namespace(
                        m.namespace.as_deref(),
                        ns,
                        explicit,
                    )?;
                    t.services.push((svc_ns, m.name.clone()));
                }
            }
        }
    } else {
        let Some((kind, names)) = d.words.split_first() else {
            bail!("{usage}");
        };
        let is_deployment = matches!(kind.as_str(), "deployment" | "deployments" | "deploy");
        let is_ns = match kind.as_str() {
            "pod" | "pods" | "po" => false,
            "namespace" | "namespaces" | "ns" => true,
            "deployment" | "deployments" | "deploy" => false,
            "networkpolicy" | "networkpolicies" | "netpol" => {
                return delete_policies(cluster, ns, names, d);
            }
            "service" | "services" | "svc" => {
                if d.selector.is_some() || d.all || names.is_empty() {
                    bail!("services are deleted by name");
                }
                let list: Vec<(String, String)> =
                    names.iter().map(|n| (ns.to_string(), n.clone())).collect();
                let (failed, missing) = super::services::delete(cluster, &list)?;
                let missing = if d.ignore_not_found { 0 } else { missing };
                return Ok(if failed || missing > 0 {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                });
            }
            k => bail!(
                "flatnet deletes pods, deployments, namespaces, services and networkpolicies, \
                 not {k:?}; {usage}"
            ),
        };
        let selector = d
            .selector
            .as_deref()
            .map(Selector::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        if names.is_empty() == (selector.is_none() && !d.all) {
            bail!("give names, or -l SELECTOR, or --all; {usage}");
        }
        if is_deployment {
            if selector.is_some() || d.all {
                bail!("deployments are deleted by name");
            }
            t.deployments = names.iter().map(|n| (ns.to_string(), n.clone())).collect();
        } else if is_ns {
            if selector.is_some() || d.all {
                bail!("namespaces are deleted by name");
            }
            for n in names {
                t.namespace(cluster, n)?;
            }
        } else if names.is_empty() {
            let sel = selector.unwrap_or_default();
            t.pods = cluster
                .dir()
                .pods()?
                .into_iter()
                .filter(|p| p.namespace == ns && sel.matches(&p.labels))
                .collect();
            if t.pods.is_empty() {
                eprintln!("No resources found");
            }
        } else {
            for n in names {
                t.pod(cluster, ns, n)?;
            }
        }
    }
    let grace = grace(d);
    let waiting = |left: &[&PodRecord]| {
        let what: Vec<String> = left
            .iter()
            .map(|p| {
                let g = flatnet::emulator::pods::grace_period(p, grace);
                format!("pod/{} (SIGKILL after {g}s)", pod_key(p))
            })
            .collect();
        eprintln!(
            "waiting for the containers to exit after SIGTERM: {}",
            what.join(", ")
        );
    };
    let mut failed = false;
    if !t.pods.is_empty() {
        let results = cluster.delete_pods(&t.pods, grace, &waiting)?;
        for (p, r) in t.pods.iter().zip(results) {
            match r {
                Ok(()) => println!("pod {:?} deleted", p.name),
                Err(e) => {
                    eprintln!("error: pod {:?}: {e}", pod_key(p));
                    failed = true;
                }
            }
        }
    }
    for (d_ns, name) in &t.deployments {
        match cluster.delete_deployment(d_ns, name) {
            Ok(true) => println!("deployment.apps {name:?} deleted"),
            Ok(false) => t
                .missing
                .push(format!("deployments.apps {name:?} not found")),
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    let mut by_ns: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for (pns, name) in &t.policies {
        by_ns.entry(pns.as_str()).or_default().push(name.clone());
    }
    for (pns, list) in by_ns {
        let missing = cluster.delete_policies(pns, &list)?;
        for name in list.iter().filter(|n| !missing.contains(n)) {
            println!("networkpolicy.networking.k8s.io {name:?} deleted");
        }
        t.missing.extend(
            missing
                .iter()
                .map(|m| format!("networkpolicies.networking.k8s.io {m:?} not found")),
        );
    }
    if !t.services.is_empty() {
        let (f, missing) = super::services::delete(cluster, &t.services)?;
        failed |= f || (missing > 0 && !d.ignore_not_found);
    }
    for n in &t.namespaces {
        match cluster.delete_namespace(n, grace, &waiting) {
            Ok(()) => println!("namespace {n:?} deleted"),
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if !d.ignore_not_found {
        for m in &t.missing {
            eprintln!("Error from server (NotFound): {m}");
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `delete networkpolicy NAME... | --all`, in namespace `ns`.
fn delete_policies(
    cluster: &Cluster,
    ns: &str,
    names: &[String],
    d: &DeleteArgs,
) -> Result<ExitCode> {
    if d.selector.is_some() {
        bail!("networkpolicies are deleted by name or with --all");
    }
    let list: Vec<String> = if d.all {
        cluster
            .policies()?
            .iter()
            .filter(|p| p["metadata"]["namespace"] == ns)
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect()
    } else {
        names.to_vec()
    };
    if list.is_empty() && !d.all {
        bail!("give names, or --all");
    }
    let missing = cluster.delete_policies(ns, &list)?;
    for name in list.iter().filter(|n| !missing.contains(n)) {
        println!("networkpolicy.networking.k8s.io {name:?} deleted");
    }
    if d.ignore_not_found || missing.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for m in missing {
        eprintln!(
            "Error from server (NotFound): networkpolicies.networking.k8s.io {m:?} not found"
        );
    }
    Ok(ExitCode::FAILURE)
}

/// What `get` of stored documents shows before its table: the whole documents for `-o
/// json|yaml`, or nothing (with kubectl's note) when none is left, else the rows to tabulate.
pub enum Selected {
    Printed(String),
    Rows(Vec<Value>),
}

/// The documents of `list` in `ns` (every namespace with `all_namespaces`), only the one named
/// `name` if given (NotFound for `kind` if there is none), printed whole if `json` says so.
pub fn select(
    mut list: Vec<Value>,
    kind: &str,
    ns: &str,
    name: Option<&str>,
    all_namespaces: bool,
    json: Option<bool>,
) -> Result<Selected> {
    list.retain(|p| all_namespaces || p["metadata"]["namespace"] == ns);
    if let Some(n) = name {
        list.retain(|p| p["metadata"]["name"] == n);
        if list.is_empty() {
            bail!("Error from server (NotFound): {kind} {n:?} not found");
        }
    }
    match json {
        Some(true) => {
            return Ok(Selected::Printed(
                serde_json::to_string_pretty(&list)? + "\n",
            ))
        }
        Some(false) => return Ok(Selected::Printed(serde_norway::to_string(&list)?)),
        None => {}
    }
    if list.is_empty() {
        eprintln!("No resources found in {ns} namespace.");
        return Ok(Selected::Printed(String::new()));
    }
    Ok(Selected::Rows(list))
}

/// `get networkpolicies [NAME] [-A] [-o json|yaml]`: kubectl's columns.
pub fn get_policies(
    cluster: &Cluster,
    ns: &str,
    name: Option<&str>,
    all_namespaces: bool,
    json: Option<bool>,
) -> Result<String> {
    let kind = "networkpolicies.networking.k8s.io";
    let list = match select(cluster.policies()?, kind, ns, name, all_namespaces, json)? {
        Selected::Printed(out) => return Ok(out),
        Selected::Rows(list) => list,
    };
    let mut rows = vec![];
    let mut header = vec!["NAME", "POD-SELECTOR", "AGE"];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    rows.push(header.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    for p in &list {
        let mut row = vec![
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            selector_text(&p["spec"]["podSelector"]),
            age(p["metadata"]["creationTimestamp"].as_str()),
        ];
        if all_namespaces {
            row.insert(
                0,
                p["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        rows.push(row);
    }
    Ok(flatnet::emulator::table::render(&rows))
}

/// `describe networkpolicy NAME`, in the shape of kubectl's.
pub fn describe_policy(cluster: &Cluster, ns: &str, name: &str) -> Result<String> {
    use std::fmt::Write;
    let p = cluster
        .policy(ns, name)?
        .with_context(|| format!("networkpolicies.networking.k8s.io {name:?} not found"))?;
    let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(p.clone())?;
    let mut checked = np.clone();
    checked.metadata.namespace.get_or_insert_with(|| ns.into());
    let policy = flatnet::agent::policy::Policy::from_k8s(&checked).map_err(anyhow::Error::msg)?;
    let spec = &p["spec"];
    let mut o = String::new();
    let _ = writeln!(o, "Name:         {name}");
    let _ = writeln!(o, "Namespace:    {ns}");
    let _ = writeln!(
        o,
        "Created on:   {}",
        p["metadata"]["creationTimestamp"].as_str().unwrap_or("?")
    );
    let labels = selector_text(&json!({ "matchLabels": p["metadata"]["labels"] }));
    let _ = writeln!(o, "Labels:       {labels}");
    let _ = writeln!(o, "Spec:");
    let _ = writeln!(
        o,
        "  PodSelector:     {}",
        selector_text(&spec["podSelector"])
    );
    for (title, dir, rules, field) in [
        ("Ingress", "from", &policy.ingress, "ingress"),
        ("Egress", "to", &policy.egress, "egress"),
    ] {
        match rules {
            None => {
                let _ = writeln!(o, "  Not affecting {title} traffic");
            }
            Some(r) if r.is_empty() => {
                let _ = writeln!(
                    o,
                    "  Allowing {title} traffic:\n    <none> (Selected pods are isolated for {title} connectivity)"
                );
            }
            Some(_) => {
                let _ = writeln!(o, "  Allowing {title} traffic:");
                for (i, rule) in spec[field].as_array().into_iter().flatten().enumerate() {
                    if i > 0 {
                        let _ = writeln!(o, "    ----------");
                    }
                    let ports = rule["ports"].as_array().cloned().unwrap_or_default();
                    if ports.is_empty() {
                        let _ = writeln!(o, "    To Port: <any> (traffic allowed to all ports)");
                    }
                    for port in ports {
                        let proto = port["protocol"].as_str().unwrap_or("TCP");
                        let num = match &port["port"] {
                            serde_json::Value::Null => "<any>".to_string(),
                            v => v.as_str().map_or(v.to_string(), String::from),
                        };
                        let end = port["endPort"]
                            .as_u64()
                            .map(|e| format!("-{e}"))
                            .unwrap_or_default();
                        let _ = writeln!(o, "    To Port: {num}{end}/{proto}");
                    }
                    let peers = rule[dir].as_array().cloned().unwrap_or_default();
                    let word = if dir == "from" { "From" } else { "To" };
                    if peers.is_empty() {
                        let _ = writeln!(
                            o,
                            "    {word}: <any> (traffic not restricted by {})",
                            if dir == "from" {
                                "source"
                            } else {
                                "destination"
                            }
                        );
                    } else {
                        let _ = writeln!(o, "    {word}:");
                    }
                    for peer in peers {
                        if let Some(b) = peer.get("ipBlock") {
                            let except: Vec<String> = b["except"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|e| e.as_str().map(String::from))
                                .collect();
                            let _ = writeln!(
                                o,
                                "      IPBlock:\n        CIDR: {}\n        Except: {}",
                                b["cidr"].as_str().unwrap_or(""),
                                except.join(", ")
                            );
                            continue;
                        }
                        if let Some(n) = peer.get("namespaceSelector") {
                            let _ = writeln!(o, "      NamespaceSelector: {}", selector_text(n));
                        }
                        if let Some(s) = peer.get("podSelector") {
                            let _ = writeln!(o, "      PodSelector: {}", selector_text(s));
                        }
                    }
                }
            }
        }
    }
    let types: Vec<&str> = [
        ("Ingress", policy.ingress.is_some()),
        ("Egress", policy.egress.is_some()),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(t, _)| *t)
    .collect();
    let _ = writeln!(o, "  Policy Types: {}", types.join(", "));
    Ok(o)
}

/// A label selector as kubectl prints it: `k=v,k2 in (a,b)`, `<none>` for the empty one.
fn selector_text(sel: &serde_json::Value) -> String {
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            _ => format!("!{key}"),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

/// The age of an RFC 3339 timestamp, as kubectl shows it (the largest unit only).
pub(super) fn age(created: Option<&str>) -> String {
    let Some(t) = created.and_then(parse_rfc3339) else {
        return "<unknown>".into();
    };
    let s = flatnet::emulator::state::now().saturating_sub(t);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` as seconds since the epoch.
fn parse_rfc3339(t: &str) -> Option<u64> {
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let secs = n(11..13)? * 3600 + n(14..16)? * 60 + n(17..19)?;
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + secs).ok()
}

/// `label KIND NAME... CHANGE...`: the changes are the words with `=` or a trailing `-`.
pub fn label(cluster: &Cluster, ns: &str, words: &[String], overwrite: bool) -> Result<()> {
    let Some((kind, rest)) = words.split_first() else {
        bail!("usage: flatnet label pod NAME... KEY=VALUE... KEY-...");
    };
    let kind = match kind.as_str() {
        "pod" | "pods" | "po" => LabelKind::Pod,
        "namespace" | "namespaces" | "ns" => LabelKind::Namespace,
        k => bail!("flatnet labels pods and namespaces, not {k:?}"),
    };
    let is_change = |w: &String| w.contains('=') || w.ends_with('-');
    let split = rest.iter().position(is_change).unwrap_or(rest.len());
    let (names, changes) = rest.split_at(split);
    if names.is_empty() || changes.is_empty() {
        bail!("usage: flatnet label pod NAME... KEY=VALUE... KEY-... [--overwrite]");
    }
    let changes: Vec<Change> = changes
        .iter()
        .map(|c| Change::parse(c))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    for (object, changed) in cluster.label(kind, ns, names, &changes, overwrite)? {
        if changed {
            println!("{object} labeled");
        } else {
            println!("{object} not labeled");
        }
    }
    Ok(())
}
