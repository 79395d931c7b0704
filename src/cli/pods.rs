//! `apply`, `delete`, `describe`, `logs`, `exec`: pods from manifests, kubectl-style.

use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use flatnet::emulator::manifest;
use flatnet::emulator::pod_status::ContainerState;
use flatnet::emulator::pods::{enter, supervisor};
use flatnet::emulator::state::PodRecord;
use flatnet::emulator::Cluster;

fn read_manifest(file: &Path) -> Result<Vec<manifest::Manifest>> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("read the manifest from stdin")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?
    };
    manifest::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

pub fn apply(cluster: &Cluster, file: &Path, backoff: f64) -> Result<()> {
    let backoff = Duration::try_from_secs_f64(backoff)
        .ok()
        .context("--restart-backoff must be a number of seconds")?;
    let manifests = read_manifest(file)?;
    for m in &manifests {
        for w in &m.warnings {
            eprintln!(
                "warning: pod/{}: {w} is not supported and is ignored",
                m.name
            );
        }
    }
    for pod in cluster.apply(&manifests, backoff)? {
        let ip = pod.ip.map_or_else(|| "-".into(), |ip| ip.to_string());
        println!("pod/{} created on {} with IP {ip}", pod.name, pod.node);
    }
    Ok(())
}

pub fn delete(
    cluster: &Cluster,
    kind: Option<String>,
    name: Option<String>,
    file: Option<PathBuf>,
) -> Result<()> {
    let names: Vec<String> = match (kind.as_deref(), name, file) {
        (None, None, Some(file)) => read_manifest(&file)?.into_iter().map(|m| m.name).collect(),
        (Some("pod" | "pods" | "po"), Some(name), None) => vec![name],
        (Some(k), Some(_), None) => bail!("only pods can be deleted, not {k:?}"),
        _ => bail!("usage: flatnet delete pod NAME | flatnet delete -f FILE"),
    };
    for name in names {
        cluster.delete_pod(&name)?;
        println!("pod/{name} deleted");
    }
    Ok(())
}

fn pod(cluster: &Cluster, name: &str) -> Result<PodRecord> {
    cluster.spec()?;
    cluster
        .dir()
        .pod(name)?
        .with_context(|| format!("pod {name:?} not found in cluster {:?}", cluster.name()))
}

/// The container `-c` names, or the only one.
fn container<'a>(pod: &'a PodRecord, asked: Option<&str>) -> Result<&'a manifest::ContainerSpec> {
    let spec = pod.spec.as_ref().with_context(|| {
        format!(
            "pod {:?} has no containers (it was made by `flatnet run`)",
            pod.name
        )
    })?;
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    match asked {
        Some(c) => spec
            .containers
            .iter()
            .find(|x| x.name == c)
            .with_context(|| {
                format!(
                    "container {c:?} is not in pod {:?}: one of {names:?}",
                    pod.name
                )
            }),
        None if spec.containers.len() == 1 => Ok(&spec.containers[0]),
        None => bail!(
            "pod {:?} has several containers: choose one with -c, one of {names:?}",
            pod.name
        ),
    }
}

pub fn logs(cluster: &Cluster, name: &str, asked: Option<&str>, follow: bool) -> Result<()> {
    let p = pod(cluster, name)?;
    let c = container(&p, asked)?;
    let path = cluster.dir().pod_dir(name).log(&c.name);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
    };
    let mut out = std::io::stdout();
    let mut pos = 0;
    loop {
        if file.is_none() {
            file = std::fs::File::open(&path).ok();
        }
        if let Some(f) = file.as_mut() {
            f.seek(SeekFrom::Start(pos))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            pos += buf.len() as u64;
            out.write_all(&buf)?;
            out.flush()?;
        }
        if !follow || cluster.dir().pod(name)?.is_none() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn exec(
    cluster: &Cluster,
    name: &str,
    asked: Option<&str>,
    command: &[String],
) -> Result<ExitCode> {
    let p = pod(cluster, name)?;
    let c = container(&p, asked)?;
    let status = cluster
        .dir()
        .pod_dir(name)
        .status()
        .with_context(|| format!("pod {name:?} has no status yet"))?;
    let pid = match status.container(&c.name).map(|s| &s.state) {
        Some(ContainerState::Running { pid, .. }) => *pid,
        _ => bail!("container {:?} of pod {name:?} is not running", c.name),
    };
    let env = supervisor::environment(c, p.spec.as_ref().expect("checked by container()"));
    let code = enter::exec(pid, command, &env, c.working_dir.as_deref().unwrap_or("/"))
        .with_context(|| format!("exec in {name}/{}", c.name))?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

pub fn describe(cluster: &Cluster, kind: &str, name: &str) -> Result<String> {
    if !matches!(kind, "pod" | "pods" | "po") {
        bail!("only pods can be described, not {kind:?}");
    }
    let spec = cluster.spec()?;
    let p = pod(cluster, name)?;
    let status = cluster.dir().pod_dir(name).status();
    let node_ip = spec
        .node(&p.node)
        .map_or("?".into(), |n| n.node_ip.to_string());
    let mut o = String::new();
    let _ = writeln!(o, "Name:          {}", p.name);
    let _ = writeln!(o, "Namespace:     default");
    let _ = writeln!(o, "Node:          {}/{node_ip}", p.node);
    let _ = writeln!(
        o,
        "IP:            {}",
        p.ip.map_or("<none>".into(), |ip| ip.to_string())
    );
    let _ = writeln!(
        o,
        "Status:        {}",
        super::show::pod_status(cluster, &p).0
    );
    let _ = writeln!(
        o,
        "Network:       netns {}, container ID {}",
        p.netns, p.container_id
    );
    let Some(ps) = &p.spec else {
        let _ = writeln!(
            o,
            "Containers:    none (a bare sandbox made by `flatnet run`)"
        );
        return Ok(o);
    };
    let _ = writeln!(o, "Hostname:      {}", ps.hostname);
    let _ = writeln!(o, "Restart Policy: {:?}", ps.restart_policy);
    let _ = writeln!(
        o,
        "Namespaces:    network, UTS and IPC shared by the pod's containers; PID {}",
        if ps.share_process_namespace {
            "shared (shareProcessNamespace)"
        } else {
            "one per container"
        }
    );
    let _ = writeln!(
        o,
        "Termination Grace Period: {}s",
        ps.termination_grace_period_seconds
    );
    let _ = writeln!(o, "Containers:");
    for c in &ps.containers {
        let st = status.as_ref().and_then(|s| s.container(&c.name));
        let _ = writeln!(o, "  {}:", c.name);
        let _ = writeln!(
            o,
            "    Image:         {} (informational: containers are host processes)",
            if c.image.is_empty() {
                "<none>"
            } else {
                &c.image
            }
        );
        let _ = writeln!(o, "    Command:       {}", c.argv.join(" "));
        let ports: Vec<String> = c
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.container_port, p.protocol))
            .collect();
        let _ = writeln!(
            o,
            "    Ports:         {}",
            if ports.is_empty() {
                "<none>".into()
            } else {
                ports.join(", ")
            }
        );
        let state = match st.map(|s| &s.state) {
            Some(ContainerState::Running { pid, .. }) => format!("Running (pid {pid})"),
            Some(ContainerState::Waiting { reason, message }) => {
                format!("Waiting: {reason} {message}")
            }
            Some(ContainerState::Terminated {
                exit_code,
                reason,
                message,
                ..
            }) => {
                format!("Terminated: {reason}, exit code {exit_code} {message}")
            }
            None => "Unknown".into(),
        };
        let _ = writeln!(o, "    State:         {}", state.trim_end());
        if let Some(code) = st.and_then(|s| s.last_exit_code) {
            let _ = writeln!(o, "    Last Exit Code: {code}");
        }
        let _ = writeln!(
            o,
            "    Restart Count: {}",
            st.map_or(0, |s| s.restart_count)
        );
        if let Some(r) = &c.resources {
            let _ = writeln!(
                o,
                "    Resources:     {r} (shown, not enforced by the emulator)"
            );
        }
        for (k, v) in &c.env {
            let _ = writeln!(o, "    Env:           {k}={v}");
        }
        for m in &c.mounts {
            let _ = writeln!(
                o,
                "    Mount:         {} from {} ({})",
                m.mount_path,
                m.volume,
                if m.read_only { "ro" } else { "rw" }
            );
        }
        let _ = writeln!(
            o,
            "    Log:           {}",
            cluster.dir().pod_dir(name).log(&c.name).display()
        );
    }
    if !ps.volumes.is_empty() {
        let _ = writeln!(o, "Volumes:");
        for v in &ps.volumes {
            let _ = writeln!(o, "  {v}: emptyDir");
        }
    }
    Ok(o)
}
