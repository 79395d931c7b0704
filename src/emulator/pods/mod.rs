//! Pods as Kubernetes defines them: containers that share the pod's network, UTS and IPC
//! namespaces, run from `v1/Pod` manifests and kept by a per-pod supervisor.

mod child;
pub mod dns_files;
pub mod enter;
mod lifecycle;
pub mod logs;
mod probe;
pub mod prober;
mod pty;
pub mod supervisor;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use super::pod_status::PodStatus;
use crate::emulator::manifest::Manifest;
use supervisor::SupervisorConfig;

use super::state::{ClusterDir, PodRecord};
use super::{io_err, process, sandbox, Result};
use crate::fsutil::write_atomic;

/// A wait status as a shell reports it: the exit code, or 128 + the signal that killed it.
pub fn shell_exit_code(ws: i32) -> i32 {
    if libc::WIFSIGNALED(ws) {
        128 + libc::WTERMSIG(ws)
    } else {
        libc::WEXITSTATUS(ws)
    }
}

/// Gives a pod whose sandbox exists its supervisor, which starts the containers of `m`.
pub fn start_supervisor(
    dir: &ClusterDir,
    pod: &mut PodRecord,
    m: &Manifest,
    backoff: Duration,
) -> Result<()> {
    let pdir = dir.pod_dir(&pod.namespace, &pod.name);
    std::fs::create_dir_all(pdir.path())
        .map_err(io_err(format!("create {}", pdir.path().display())))?;
    let node_netns = dir.load()?.and_then(|c| {
        c.node(&pod.node)
            .map(|n| crate::netns::named_path(&n.netns))
    });
    let cfg = SupervisorConfig {
        netns: crate::netns::named_path(&pod.netns),
        spec: m.spec.clone(),
        restart_backoff_ms: backoff.as_millis().try_into().unwrap_or(u64::MAX),
        node_netns,
        pod_ip: pod.ips.first().copied(),
    };
    let json = serde_json::to_vec_pretty(&cfg).expect("config serializes");
    write_atomic(&pdir.supervisor_config(), &json).map_err(io_err("write supervisor.json"))?;
    pdir.save_status(&PodStatus::new(&m.spec))
        .map_err(io_err("write status.json"))?;
    write_dns_files(dir, &pdir, pod, m)?;
    pod.spec = Some(m.spec.clone());
    dir.save_pod(pod)?;
    let exe = std::env::current_exe().map_err(io_err("find the flatnet executable"))?;
    let args = vec!["supervisor".to_string(), pdir.path().display().to_string()];
    let sup = process::spawn_detached(&exe, &args, None, &pdir.supervisor_log())
        .map_err(io_err(format!("start the supervisor of {}", pod.name)))?;
    pod.supervisor = Some(sup);
    dir.save_pod(pod)
}

/// The pod's resolv.conf and hosts, which its supervisor mounts into each container.
fn write_dns_files(
    dir: &ClusterDir,
    pdir: &super::state::PodDir,
    pod: &PodRecord,
    m: &Manifest,
) -> Result<()> {
    let spec = dir
        .load()?
        .ok_or_else(|| super::Error::Invalid("the cluster's state is gone".into()))?;
    let dns_ip = super::services::dns_ip(spec.service_cidr).into();
    // The node's resolver settings, for dnsPolicy Default: the emulator's nodes share the
    // machine's. Read, never written.
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolv = dns_files::resolv_conf(&m.raw, &pod.namespace, dns_ip, &host);
    let hosts = dns_files::hosts(&m.raw, &pod.namespace, &m.spec.hostname, &pod.ips);
    for (path, text) in [(pdir.resolv_conf(), resolv), (pdir.hosts(), hosts)] {
        write_atomic(&path, text.as_bytes())
            .map_err(io_err(format!("write {}", path.display())))?;
    }
    Ok(())
}

/// The grace period a pod's containers get: `delete --grace-period` if given, else the pod's
/// terminationGracePeriodSeconds.
pub fn grace_period(pod: &PodRecord, asked: Option<u64>) -> u64 {
    asked.unwrap_or_else(|| {
        pod.spec
            .as_ref()
            .map_or(0, |s| s.termination_grace_period_seconds)
    })
}

/// Stops a pod's supervisor, which stops its containers first: SIGTERM, then SIGKILL after
/// the grace period (`grace`, else the pod's own). Returns once it is gone.
pub fn stop_supervisor(dir: &ClusterDir, pod: &PodRecord, grace: Option<u64>) -> Result<()> {
    let Some(sup) = pod.supervisor else {
        return Ok(());
    };
    if let Some(g) = grace {
        let path = dir.pod_dir(&pod.namespace, &pod.name).grace_override();
        write_atomic(&path, g.to_string().as_bytes())
            .map_err(io_err(format!("write {}", path.display())))?;
    }
    leave_services(dir, pod);
    let grace = grace_period(pod, grace);
    // The supervisor's own grace period covers the containers'; a little more for reaping.
    sup.stop(Duration::from_secs(grace + 5))
        .map_err(io_err(format!("stop the supervisor of {}", pod.name)))
}

/// Marks the pod terminating and, when a Service selects it, takes it out of the Services'
/// ready endpoints on every node before its containers are told to stop, as the endpoint
/// controller and kube-proxy react to a pod's deletion before kubelet kills it (so new
/// connections stop going to it first). A failure is logged: the pod is deleted anyway.
fn leave_services(dir: &ClusterDir, pod: &PodRecord) {
    let pdir = dir.pod_dir(&pod.namespace, &pod.name);
    let marker = pdir.path().join(super::services::endpoints::TERMINATING);
    if let Err(e) = write_atomic(&marker, b"") {
        tracing::warn!("mark {} terminating: {e}", pod.name);
        return;
    }
    let selected = super::services::all(dir)
        .iter()
        .any(|s| s.namespace == pod.namespace && s.selects(&pod.labels));
    if !selected {
        return;
    }
    let done = dir.load().and_then(|spec| {
        let spec = spec.ok_or_else(|| super::Error::Invalid("no cluster".into()))?;
        let mut written = super::controller::services::proxy_state();
        super::controller::services::reconcile(dir, &spec, &mut written)
    });
    if let Err(e) = done {
        tracing::warn!("take {} out of its Services' endpoints: {e}", pod.name);
    }
}

/// Removes a pod: its containers (through its supervisor), then its sandbox (CNI DEL).
pub fn remove(dir: &ClusterDir, pod: &PodRecord) -> Result<()> {
    stop_supervisor(dir, pod, None)?;
    sandbox::remove_sandbox(dir, pod)
}

/// Removes a pod without CNI DEL, for when nothing the plugins made can outlive it.
pub fn forget(dir: &ClusterDir, pod: &PodRecord) -> Result<()> {
    stop_supervisor(dir, pod, None)?;
    sandbox::forget_sandbox(dir, pod)
}

/// Supervisors of a cluster whose records are lost: `flatnet supervisor <cluster dir>/pods/…`.
pub fn stray_supervisors(cluster_dir: &Path) -> Vec<process::ProcessId> {
    let prefix = cluster_dir.join("pods");
    process::find(|argv| {
        argv.first().is_some_and(|a| a.ends_with(b"flatnet"))
            && argv.get(1) == Some(&b"supervisor".as_slice())
            && argv
                .get(2)
                .is_some_and(|p| Path::new(std::ffi::OsStr::from_bytes(p)).starts_with(&prefix))
    })
}
