//! Pods as Kubernetes defines them: containers that share the pod's network, UTS and IPC
//! namespaces, run from `v1/Pod` manifests and kept by a per-pod supervisor.

mod child;
pub mod enter;
pub mod manifest;
pub mod status;
pub mod supervisor;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use manifest::Manifest;
use status::PodStatus;
use supervisor::ShimConfig;

use super::state::PodRecord;
use super::{io_err, process, runtime, Cluster, Error, Result};
use crate::fsutil::write_atomic;

/// A wait status as a shell reports it: the exit code, or 128 + the signal that killed it.
pub fn shell_exit_code(ws: i32) -> i32 {
    if libc::WIFSIGNALED(ws) {
        128 + libc::WTERMSIG(ws)
    } else {
        libc::WEXITSTATUS(ws)
    }
}

/// kubelet's first restart back-off.
pub const DEFAULT_RESTART_BACKOFF: Duration = Duration::from_secs(10);

/// A pod's directory in the state dir.
#[derive(Debug, Clone)]
pub struct PodDir(pub(crate) PathBuf);

impl PodDir {
    pub fn new(path: impl Into<PathBuf>) -> PodDir {
        PodDir(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn shim_config(&self) -> PathBuf {
        self.0.join("shim.json")
    }

    fn status_path(&self) -> PathBuf {
        self.0.join("status.json")
    }

    pub fn logs(&self) -> PathBuf {
        self.0.join("logs")
    }

    pub fn log(&self, container: &str) -> PathBuf {
        self.logs().join(format!("{container}.log"))
    }

    pub fn volume(&self, name: &str) -> PathBuf {
        self.0.join("volumes").join(name)
    }

    pub fn shm(&self) -> PathBuf {
        self.0.join("shm")
    }

    pub fn supervisor_log(&self) -> PathBuf {
        self.0.join("supervisor.log")
    }

    /// The status as the supervisor last wrote it.
    pub fn status(&self) -> Option<PodStatus> {
        serde_json::from_slice(&std::fs::read(self.status_path()).ok()?).ok()
    }

    pub fn save_status(&self, status: &PodStatus) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(status).expect("status serializes");
        write_atomic(&self.status_path(), &json)
    }
}

/// Creates the pods of `manifests`: all are checked first (names free, nodes known), so a bad
/// one creates none; then each gets its sandbox (CNI ADD) and its supervisor, which starts the
/// containers. Returns the records, in manifest order.
pub fn apply(
    cluster: &Cluster,
    manifests: &[Manifest],
    restart_backoff: Duration,
) -> Result<Vec<PodRecord>> {
    let dir = cluster.dir();
    let _lock = dir.lock()?;
    let mut spec = cluster.spec()?;
    cluster.ensure_controller(&mut spec)?;
    let mut pods = dir.pods()?;
    for m in manifests {
        if pods.iter().any(|p| p.name == m.name) {
            return Err(Error::Invalid(format!("pod {:?} already exists", m.name)));
        }
        if let Some(node) = &m.node {
            if spec.node(node).is_none() {
                return Err(Error::Invalid(format!(
                    "pod {:?}: spec.nodeName: node {node:?} is not in cluster {:?}",
                    m.name, spec.name
                )));
            }
        }
    }
    let mut made = Vec::new();
    for m in manifests {
        let node = match &m.node {
            Some(n) => n.clone(),
            None => runtime::schedule(&spec, &pods)?,
        };
        let mut pod = runtime::create_sandbox(dir, &spec, &m.name, &node)?;
        if let Err(e) = start_supervisor(cluster, &mut pod, m, restart_backoff) {
            let _ = runtime::remove_sandbox(dir, &pod);
            return Err(e);
        }
        pods.push(pod.clone());
        made.push(pod);
    }
    Ok(made)
}

fn start_supervisor(
    cluster: &Cluster,
    pod: &mut PodRecord,
    m: &Manifest,
    backoff: Duration,
) -> Result<()> {
    let pdir = cluster.dir().pod_dir(&pod.name);
    std::fs::create_dir_all(pdir.path())
        .map_err(io_err(format!("create {}", pdir.path().display())))?;
    let cfg = ShimConfig {
        netns: crate::netns::named_path(&pod.netns),
        spec: m.spec.clone(),
        restart_backoff_ms: backoff.as_millis().try_into().unwrap_or(u64::MAX),
    };
    let json = serde_json::to_vec_pretty(&cfg).expect("config serializes");
    write_atomic(&pdir.shim_config(), &json).map_err(io_err("write shim.json"))?;
    pdir.save_status(&PodStatus::new(&m.spec))
        .map_err(io_err("write status.json"))?;
    pod.spec = Some(m.spec.clone());
    cluster.dir().save_pod(pod)?;
    let exe = std::env::current_exe().map_err(io_err("find the flatnet executable"))?;
    let args = vec!["shim".to_string(), pdir.path().display().to_string()];
    let sup = process::spawn_detached(&exe, &args, None, &pdir.supervisor_log())
        .map_err(io_err(format!("start the supervisor of {}", pod.name)))?;
    pod.supervisor = Some(sup);
    cluster.dir().save_pod(pod)
}

/// Stops a pod's supervisor, which stops its containers first: SIGTERM, then SIGKILL after
/// the pod's grace period. Returns once it is gone.
pub fn stop_supervisor(pod: &PodRecord) -> Result<()> {
    let Some(sup) = pod.supervisor else {
        return Ok(());
    };
    let grace = pod
        .spec
        .as_ref()
        .map_or(0, |s| s.termination_grace_period_seconds);
    // The supervisor's own grace period covers the containers'; a little more for reaping.
    sup.stop(Duration::from_secs(grace + 5))
        .map_err(io_err(format!("stop the supervisor of {}", pod.name)))
}

/// Supervisors of a cluster whose records are lost: `flatnet shim <cluster dir>/pods/…`.
pub fn stray_supervisors(cluster_dir: &Path) -> Vec<process::ProcessId> {
    let prefix = cluster_dir.join("pods");
    process::find(|argv| {
        argv.first().is_some_and(|a| a.ends_with(b"flatnet"))
            && argv.get(1) == Some(&b"shim".as_slice())
            && argv
                .get(2)
                .is_some_and(|p| Path::new(std::ffi::OsStr::from_bytes(p)).starts_with(&prefix))
    })
}
