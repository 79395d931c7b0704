//! `describe`, `logs`, `exec`: a pod's containers, kubectl-style.

use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use flatnet::emulator::manifest;
use flatnet::emulator::pod_status::ContainerState;
use flatnet::emulator::pods::{enter, supervisor};
use flatnet::emulator::state::PodRecord;
use flatnet::emulator::Cluster;

fn pod(cluster: &Cluster, ns: &str, name: &str) -> Result<PodRecord> {
    cluster.spec()?;
    cluster.dir().pod(ns, name)?.with_context(|| {
        format!(
            "pods {name:?} not found in namespace {ns:?} of cluster {:?}",
            cluster.name()
        )
    })
}

/// The container `-c` names, or the only one.
fn container<'a>(pod: &'a PodRecord, asked: Option<&str>) -> Result<&'a manifest::ContainerSpec> {
    let spec = pod.spec.as_ref().with_context(|| {
        format!(
            "pod {:?} has no containers (it was made by `flatnet run --sandbox-only`)",
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

pub fn logs(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    asked: Option<&str>,
    follow: bool,
) -> Result<()> {
    let p = pod(cluster, ns, name)?;
    let c = container(&p, asked)?;
    let path = cluster.dir().pod_dir(ns, name).log(&c.name);
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
        if !follow || cluster.dir().pod(ns, name)?.is_none() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn exec(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    asked: Option<&str>,
    command: &[String],
) -> Result<ExitCode> {
    let p = pod(cluster, ns, name)?;
    let c = container(&p, asked)?;
    let status = cluster
        .dir()
        .pod_dir(ns, name)
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

/// `key=value` lines, as describe prints labels: the first after the title, the rest indented.
fn map_lines(o: &mut String, title: &str, map: &flatnet::emulator::labels::Labels) {
    if map.is_empty() {
        let _ = writeln!(o, "{title:<15}<none>");
    }
    for (i, (k, v)) in map.iter().enumerate() {
        let t = if i == 0 { title } else { "" };
        let _ = writeln!(o, "{t:<15}{k}={v}");
    }
}

pub fn describe(cluster: &Cluster, ns: &str, kind: &str, name: &str) -> Result<String> {
    if matches!(kind, "namespace" | "namespaces" | "ns") {
        cluster.spec()?;
        let n = cluster
            .dir()
            .namespace(name)?
            .with_context(|| format!("namespaces {name:?} not found"))?;
        let mut o = String::new();
        let _ = writeln!(o, "Name:          {}", n.name);
        map_lines(&mut o, "Labels:", &n.labels);
        map_lines(&mut o, "Annotations:", &n.annotations);
        let _ = writeln!(o, "Status:        Active");
        return Ok(o);
    }
    if !matches!(kind, "pod" | "pods" | "po") {
        bail!("only pods and namespaces can be described, not {kind:?}");
    }
    let spec = cluster.spec()?;
    let p = pod(cluster, ns, name)?;
    let status = cluster.dir().pod_dir(ns, name).status();
    // kubectl's Node: NAME/hostIP, the node's first address of its pods' families.
    let node_ip = spec.node(&p.node).map_or("?".into(), |n| {
        n.node_ips()
            .first()
            .map_or(n.node_ip.to_string(), ToString::to_string)
    });
    let mut o = String::new();
    let _ = writeln!(o, "Name:          {}", p.name);
    let _ = writeln!(o, "Namespace:     {}", p.namespace);
    let _ = writeln!(o, "Node:          {}/{node_ip}", p.node);
    map_lines(&mut o, "Labels:", &p.labels);
    map_lines(&mut o, "Annotations:", &p.annotations);
    // As kubectl: IP is the first (status.podIP), IPs every one (status.podIPs).
    let _ = writeln!(
        o,
        "IP:            {}",
        p.ips.first().map_or("<none>".into(), ToString::to_string)
    );
    if p.ips.is_empty() {
        let _ = writeln!(o, "IPs:           <none>");
    } else {
        let _ = writeln!(o, "IPs:");
        for ip in &p.ips {
            let _ = writeln!(o, "  IP:  {ip}");
        }
    }
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
            "Containers:    none (a bare sandbox made by `flatnet run --sandbox-only`)"
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
        let _ = writeln!(o, "    Ready:         {}", st.is_some_and(|s| s.ready));
        for (title, p) in [
            ("Liveness:", &c.liveness_probe),
            ("Readiness:", &c.readiness_probe),
            ("Startup:", &c.startup_probe),
        ] {
            if let Some(p) = p {
                let _ = writeln!(
                    o,
                    "    {title:<15}{} delay={}s timeout={}s period={}s #success={} #failure={}",
                    p.action.describe(),
                    p.initial_delay_seconds,
                    p.timeout_seconds,
                    p.period_seconds,
                    p.success_threshold,
                    p.failure_threshold
                );
            }
        }
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
            cluster.dir().pod_dir(ns, name).log(&c.name).display()
        );
    }
    if let Some(st) = status.as_ref().filter(|s| !s.conditions.is_empty()) {
        let _ = writeln!(o, "Conditions:");
        for c in &st.conditions {
            let _ = writeln!(o, "  {:<16}{}", c.kind, c.status);
        }
    }
    if !ps.volumes.is_empty() {
        let _ = writeln!(o, "Volumes:");
        for v in &ps.volumes {
            let _ = writeln!(o, "  {v}: emptyDir");
        }
    }
    Ok(o)
}
