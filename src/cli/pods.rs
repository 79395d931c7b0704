//! `describe`, `logs`, `exec`: a pod's containers, kubectl-style.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use flatnet::emulator::manifest;
use flatnet::emulator::pod_status::ContainerState;
use flatnet::emulator::pods::{enter, logs, supervisor};
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

/// The container `-c` names; else, as kubectl does, the one the
/// `kubectl.kubernetes.io/default-container` annotation names, or the first, with a note on
/// stderr when the pod has several.
fn container<'a>(pod: &'a PodRecord, asked: Option<&str>) -> Result<&'a manifest::ContainerSpec> {
    let spec = pod.spec.as_ref().with_context(|| {
        format!(
            "pod {:?} has no containers (it was made by `flatnet run --sandbox-only`)",
            pod.name
        )
    })?;
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let find = |c: &str| spec.containers.iter().find(|x| x.name == c);
    if let Some(c) = asked {
        return find(c).with_context(|| {
            format!(
                "container {c:?} is not in pod {:?}: one of {}",
                pod.name,
                names.join(", ")
            )
        });
    }
    let first = spec
        .containers
        .first()
        .context("the pod has no containers")?;
    if spec.containers.len() == 1 {
        return Ok(first);
    }
    let chosen = match pod.annotations.get(DEFAULT_CONTAINER) {
        Some(name) => find(name).unwrap_or_else(|| {
            eprintln!(
                "Warning: default container name {name:?} not found in pod {}",
                pod.name
            );
            first
        }),
        None => first,
    };
    eprintln!(
        "Defaulted container {:?} out of: {}",
        chosen.name,
        names.join(", ")
    );
    Ok(chosen)
}

const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// What `flatnet logs` prints, as kubectl's flags say.
pub struct LogsOpts<'a> {
    pub container: Option<&'a str>,
    pub all_containers: bool,
    pub follow: bool,
    pub previous: bool,
    /// The last N lines; None for all.
    pub tail: Option<usize>,
    pub timestamps: bool,
    pub since: Option<Duration>,
}

pub fn logs(cluster: &Cluster, ns: &str, name: &str, o: &LogsOpts) -> Result<()> {
    let p = pod(cluster, ns, name)?;
    let containers: Vec<&manifest::ContainerSpec> = if o.all_containers {
        let spec = p
            .spec
            .as_ref()
            .with_context(|| format!("pod {name:?} has no containers"))?;
        spec.containers.iter().collect()
    } else {
        vec![container(&p, o.container)?]
    };
    let dir = cluster.dir().pod_dir(ns, name);
    let since = o.since.map(|d| {
        SystemTime::now()
            .checked_sub(d)
            .unwrap_or(UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    });
    if o.previous {
        for c in &containers {
            let path = logs::previous(&dir, &c.name);
            let bytes = std::fs::read(&path).map_err(|_| {
                anyhow::anyhow!(
                    "previous terminated container {:?} in pod {name:?} not found",
                    c.name
                )
            })?;
            print_lines(&select(logs::parse(&bytes), since, o.tail), o.timestamps)?;
        }
        return Ok(());
    }
    if !o.follow {
        for c in &containers {
            let bytes = std::fs::read(logs::current(&dir, &c.name)).unwrap_or_default();
            print_lines(&select(logs::parse(&bytes), since, o.tail), o.timestamps)?;
        }
        return Ok(());
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = containers
            .iter()
            .map(|c| s.spawn(|| follow(cluster, ns, name, &c.name, since, o)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("a log reader panicked")))
            .collect::<Result<Vec<()>>>()
    })?;
    Ok(())
}

/// A line of a log: its entries joined, stamped with the first one's time.
struct Line {
    time: String,
    nanos: u128,
    text: Vec<u8>,
}

/// Joins partial entries into lines, then keeps those since `since` and the last `tail`.
fn select(entries: Vec<logs::Entry>, since: Option<u128>, tail: Option<usize>) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    let mut open = false;
    for e in entries {
        match lines.last_mut() {
            Some(l) if open => l.text.extend_from_slice(&e.text),
            _ => lines.push(Line {
                time: e.time,
                nanos: e.nanos,
                text: e.text,
            }),
        }
        open = !lines.last().is_some_and(|l| l.text.ends_with(b"\n"));
    }
    lines.retain(|l| since.is_none_or(|s| l.nanos >= s));
    if let Some(n) = tail {
        lines.drain(..lines.len().saturating_sub(n));
    }
    lines
}

fn print_lines(lines: &[Line], timestamps: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for l in lines {
        if timestamps {
            write!(out, "{} ", l.time)?;
        }
        out.write_all(&l.text)?;
    }
    out.flush()?;
    Ok(())
}

/// `logs -f` of one container: what its current instance wrote and writes, until that
/// instance terminates (kubectl's follow ends there too: a restart is a new instance) or the
/// pod is deleted.
fn follow(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    container: &str,
    since: Option<u128>,
    o: &LogsOpts,
) -> Result<()> {
    let dir = cluster.dir().pod_dir(ns, name);
    let state = || {
        dir.status()
            .and_then(|s| s.container(container).map(|c| c.state.clone()))
    };
    // Until the first start there is nothing to follow.
    let mut st = state();
    while matches!(&st, Some(ContainerState::Waiting { reason, .. }) if reason == "ContainerCreating")
    {
        if cluster.dir().pod(ns, name)?.is_none() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
        st = state();
    }
    let instance = match st {
        Some(ContainerState::Running { pid, .. }) => Some(pid),
        _ => None,
    };
    let mut file = std::fs::File::open(logs::current(&dir, container)).ok();
    let mut pending: Vec<u8> = Vec::new();
    let mut first = true;
    let mut ended_at: Option<Instant> = None;
    loop {
        if let Some(f) = file.as_mut() {
            f.read_to_end(&mut pending)?;
            let whole = pending
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            let entries = logs::parse(&pending[..whole]);
            pending.drain(..whole);
            let lines = if first {
                select(entries, since, o.tail)
            } else {
                select(entries, None, None)
            };
            first = false;
            print_lines(&lines, o.timestamps)?;
        }
        if let Some(at) = ended_at {
            // The instance is over; its copier may still be writing what was left in the pipe.
            let done = file.as_ref().is_none_or(logs::complete);
            if done || at.elapsed() > Duration::from_secs(2) {
                if done {
                    if let Some(f) = file.as_mut() {
                        let mut rest = Vec::new();
                        f.read_to_end(&mut rest)?;
                        pending.extend_from_slice(&rest);
                        print_lines(&select(logs::parse(&pending), None, None), o.timestamps)?;
                    }
                }
                return Ok(());
            }
        } else {
            let running = match (state(), instance) {
                (Some(ContainerState::Running { pid, .. }), Some(i)) => pid == i,
                _ => false,
            };
            if !running || cluster.dir().pod(ns, name)?.is_none() {
                ended_at = Some(Instant::now());
                continue;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        if file.is_none() {
            file = std::fs::File::open(logs::current(&dir, container)).ok();
        }
    }
}

pub fn exec(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    asked: Option<&str>,
    mut stdio: enter::Stdio,
    command: &[String],
) -> Result<ExitCode> {
    // As kubectl: -it from a pipe or a file has no terminal to pass on.
    // SAFETY: isatty on fd 0 has no preconditions.
    if stdio.tty && stdio.stdin && unsafe { libc::isatty(0) } == 0 {
        eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
        stdio.tty = false;
    }
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
    let workdir = c.working_dir.as_deref().unwrap_or("/");
    let code = enter::exec(pid, command, &env, workdir, stdio)
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
    if matches!(kind, "node" | "nodes" | "no") {
        return super::show::describe_node(cluster, name);
    }
    let mut o = describe_object(cluster, ns, kind, name)?;
    if matches!(kind, "pod" | "pods" | "po") {
        o.push_str(&events_text(&flatnet::emulator::events::read(
            &cluster.dir().pod_dir(ns, name),
        )));
    }
    Ok(o)
}

/// kubectl's Events section, oldest first.
fn events_text(events: &[flatnet::emulator::events::Event]) -> String {
    if events.is_empty() {
        return "Events:        <none>\n".into();
    }
    let mut rows = vec![
        ["Type", "Reason", "Age", "From", "Message"]
            .map(String::from)
            .to_vec(),
        ["----", "------", "----", "----", "-------"]
            .map(String::from)
            .to_vec(),
    ];
    for e in events {
        let from = if e.reason == "Scheduled" {
            "default-scheduler"
        } else {
            "kubelet"
        };
        rows.push(vec![
            e.kind.clone(),
            e.reason.clone(),
            super::show::age(e.at),
            from.into(),
            e.message.clone(),
        ]);
    }
    let mut o = "Events:\n".to_string();
    for line in flatnet::emulator::table::render(&rows).lines() {
        let _ = writeln!(o, "  {line}");
    }
    o
}

fn describe_object(cluster: &Cluster, ns: &str, kind: &str, name: &str) -> Result<String> {
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
        bail!("only pods, nodes and namespaces can be described, not {kind:?}");
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
