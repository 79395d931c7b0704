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
                 namespace NAME... | -f FILE...";
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
            k => bail!("flatnet deletes pods, deployments and namespaces, not {k:?}; {usage}"),
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
