//! The Deployment and ReplicaSet controllers, and the garbage collector for what they own:
//! kube-controller-manager's part, as a pass of the cluster's controller.
//!
//! Every pass starts from the state dir and nothing else. The Deployment controller gives
//! each Deployment a ReplicaSet for its current pod template and moves `spec.replicas`
//! between that one and the older ones ([`rollout`]); the ReplicaSet controller then makes
//! or deletes pods until each ReplicaSet has its `replicas`. The numbers are written before
//! any pod is touched, and a pod's creation is announced in its ReplicaSet before its sandbox
//! is made, so a controller killed at any point finds, on its next start, what it was doing
//! and neither loses nor duplicates a pod.

use std::collections::BTreeMap;

use tracing::{info, warn};

use crate::emulator::netpol::publish_pods;
use crate::emulator::pod_status::Phase;
use crate::emulator::state::{now, ClusterDir, ClusterSpec, PodRecord};
use crate::emulator::workloads::rollout::{self, Counts};
use crate::emulator::workloads::{
    owner_of, random_suffix, template_hash, template_manifest, DeploymentRecord, ReplicaSetRecord,
    Store, Strategy, POD_TEMPLATE_HASH,
};
use crate::emulator::{pods, sandbox, Cluster, Error, Result};

/// One pass over every Deployment and ReplicaSet. Goes on past a failure (a pod that cannot
/// be made, say) and returns the failures at the end, so that the caller logs each once.
pub fn reconcile(cluster: &Cluster, spec: &ClusterSpec) -> Result<()> {
    let dir = cluster.dir();
    let store = Store(dir);
    let mut errors: Vec<String> = Vec::new();
    let mut sets = store.replicasets()?;
    let mut deployments = store.deployments()?;
    let mut pods = dir.pods()?;

    finish_creations(dir, &store, &mut sets, &mut pods, &mut errors)?;

    // The namespace controller's part: a deleted namespace takes its Deployments along.
    let namespaces: Vec<String> = dir.namespaces()?.into_iter().map(|n| n.name).collect();
    for d in deployments
        .iter()
        .filter(|d| !namespaces.contains(&d.namespace))
    {
        info!(deployment = %d.name, namespace = %d.namespace, "the namespace is gone: deleting");
        store.remove_deployment(&d.namespace, &d.name)?;
    }
    deployments.retain(|d| namespaces.contains(&d.namespace));

    // The garbage collector: ReplicaSets whose Deployment is gone, then pods whose
    // ReplicaSet is gone (background cascading deletion).
    let orphans: Vec<ReplicaSetRecord> = sets
        .iter()
        .filter(|rs| {
            !deployments
                .iter()
                .any(|d| d.namespace == rs.namespace && d.name == rs.owner)
        })
        .cloned()
        .collect();
    for rs in &orphans {
        if rs.replicas > 0 {
            let mut rs = rs.clone();
            rs.replicas = 0;
            store.save_replicaset(&rs)?;
        }
    }
    for rs in &mut sets {
        if orphans
            .iter()
            .any(|o| o.name == rs.name && o.namespace == rs.namespace)
        {
            rs.replicas = 0;
        }
    }
    let orphan_pods: Vec<PodRecord> = pods
        .iter()
        .filter(|p| {
            owner_of(p).is_some_and(|o| {
                !sets
                    .iter()
                    .any(|rs| rs.namespace == p.namespace && rs.name == o)
            })
        })
        .cloned()
        .collect();
    delete_pods(dir, &orphan_pods, &mut pods, &mut errors);

    for d in &deployments {
        if let Err(e) = sync_deployment(&store, d, &mut sets, &pods, dir) {
            errors.push(format!("deployment {}/{}: {e}", d.namespace, d.name));
        }
    }
    for i in 0..sets.len() {
        let rs = sets[i].clone();
        let peers = peer_sets(&sets, &rs);
        if let Err(e) = sync_replicaset(dir, spec, &store, rs, &peers, &mut pods, &mut errors) {
            errors.push(format!(
                "replicaset {}/{}: {e}",
                sets[i].namespace, sets[i].name
            ));
        }
    }
    // An orphaned ReplicaSet goes once its pods have.
    for rs in &orphans {
        let left = pods
            .iter()
            .any(|p| p.namespace == rs.namespace && owner_of(p) == Some(rs.name.as_str()));
        if !left {
            store.remove_replicaset(&rs.namespace, &rs.name)?;
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(errors.join("; ")))
    }
}

/// The pods a killed controller had begun to make: kept if whole (a supervisor was
/// started), removed if not, so that the ReplicaSet counts only real pods.
fn finish_creations(
    dir: &ClusterDir,
    store: &Store,
    sets: &mut [ReplicaSetRecord],
    pods: &mut Vec<PodRecord>,
    errors: &mut Vec<String>,
) -> Result<()> {
    for rs in sets.iter_mut().filter(|rs| !rs.creating.is_empty()) {
        for name in std::mem::take(&mut rs.creating) {
            let Some(p) = dir.pod(&rs.namespace, &name)? else {
                continue;
            };
            if p.supervisor.is_some() && p.manifest.is_some() {
                continue;
            }
            warn!(pod = %name, "removing a pod whose creation was interrupted");
            let removed = pods::remove(dir, &p);
            publish_pods(dir, [(p.namespace.as_str(), p.name.as_str())])?;
            if let Err(e) = removed {
                errors.push(format!("pod {}/{name}: {e}", rs.namespace));
                rs.creating.push(name);
                continue;
            }
            pods.retain(|q| !(q.namespace == p.namespace && q.name == p.name));
        }
        store.save_replicaset(rs)?;
    }
    Ok(())
}

/// The names of the ReplicaSets of the same Deployment as `rs` (itself included): its pods
/// spread among theirs.
fn peer_sets(sets: &[ReplicaSetRecord], rs: &ReplicaSetRecord) -> Vec<String> {
    sets.iter()
        .filter(|s| s.namespace == rs.namespace && s.owner == rs.owner)
        .map(|s| s.name.clone())
        .collect()
}

fn pod_ready(dir: &ClusterDir, p: &PodRecord) -> bool {
    dir.pod_dir(&p.namespace, &p.name)
        .status()
        .is_some_and(|s| s.is_ready())
}

fn counts(dir: &ClusterDir, rs: &ReplicaSetRecord, pods: &[PodRecord]) -> Counts {
    let owned: Vec<&PodRecord> = owned(rs, pods).collect();
    Counts {
        replicas: rs.replicas,
        pods: owned.len() as u32,
        ready: owned.iter().filter(|p| pod_ready(dir, p)).count() as u32,
    }
}

fn owned<'a>(
    rs: &'a ReplicaSetRecord,
    pods: &'a [PodRecord],
) -> impl Iterator<Item = &'a PodRecord> {
    pods.iter()
        .filter(|p| p.namespace == rs.namespace && owner_of(p) == Some(rs.name.as_str()))
}

/// Gives the Deployment a ReplicaSet for its template and takes one rollout step.
fn sync_deployment(
    store: &Store,
    d: &DeploymentRecord,
    sets: &mut Vec<ReplicaSetRecord>,
    pods: &[PodRecord],
    dir: &ClusterDir,
) -> Result<()> {
    let hash = template_hash(&d.template);
    let new_name = format!("{}-{hash}", d.name);
    let mine = |rs: &ReplicaSetRecord| rs.namespace == d.namespace && rs.owner == d.name;
    let top = sets
        .iter()
        .filter(|rs| mine(rs))
        .map(|rs| rs.revision)
        .max();
    match sets.iter_mut().find(|rs| mine(rs) && rs.name == new_name) {
        None => {
            let mut template = d.template.clone();
            template["metadata"]["labels"][POD_TEMPLATE_HASH] = hash.clone().into();
            let mut labels = crate::emulator::labels::Labels::new();
            if let Some(l) = template["metadata"]["labels"].as_object() {
                for (k, v) in l {
                    labels.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                }
            }
            let rs = ReplicaSetRecord {
                name: new_name.clone(),
                namespace: d.namespace.clone(),
                owner: d.name.clone(),
                labels,
                created: now(),
                revision: top.unwrap_or(0) + 1,
                replicas: 0,
                template,
                restart_backoff_ms: d.restart_backoff_ms,
                creating: Vec::new(),
            };
            info!(deployment = %d.name, replicaset = %rs.name, revision = rs.revision,
                "new pod template: new ReplicaSet");
            store.save_replicaset(&rs)?;
            sets.push(rs);
        }
        Some(rs) if Some(rs.revision) != top => {
            // Back to an older template: it becomes the newest revision again.
            rs.revision = top.unwrap_or(0) + 1;
            store.save_replicaset(rs)?;
        }
        Some(_) => {}
    }
    let mut old: Vec<usize> = (0..sets.len())
        .filter(|&i| mine(&sets[i]) && sets[i].name != new_name)
        .collect();
    old.sort_by_key(|&i| sets[i].revision);
    let new_i = sets
        .iter()
        .position(|rs| mine(rs) && rs.name == new_name)
        .expect("made above");
    let new = counts(dir, &sets[new_i], pods);
    let old_counts: Vec<Counts> = old.iter().map(|&i| counts(dir, &sets[i], pods)).collect();
    let r = d.replicas;
    let step = match &d.strategy {
        Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } => rollout::rolling(
            r,
            max_surge.resolve(r, true),
            max_unavailable.resolve(r, false),
            new,
            &old_counts,
        ),
        Strategy::Recreate => rollout::recreate(r, new, &old_counts),
    };
    if let Some((n, o)) = step {
        for (i, want) in std::iter::once(new_i)
            .zip([n])
            .chain(old.iter().copied().zip(o))
        {
            if sets[i].replicas != want {
                info!(deployment = %d.name, replicaset = %sets[i].name,
                    from = sets[i].replicas, to = want, "scaling");
                sets[i].replicas = want;
                store.save_replicaset(&sets[i])?;
            }
        }
    }
    // Revision history: old, empty ReplicaSets beyond the limit go, oldest first.
    let mut empty: Vec<&ReplicaSetRecord> = old
        .iter()
        .map(|&i| &sets[i])
        .filter(|rs| rs.replicas == 0 && owned(rs, pods).next().is_none())
        .collect();
    empty.sort_by_key(|rs| std::cmp::Reverse(rs.revision));
    let gone: Vec<String> = empty
        .iter()
        .skip(d.revision_history_limit as usize)
        .map(|rs| rs.name.clone())
        .collect();
    for name in &gone {
        store.remove_replicaset(&d.namespace, name)?;
    }
    sets.retain(|rs| !(rs.namespace == d.namespace && gone.contains(&rs.name)));
    Ok(())
}

/// Makes or deletes the ReplicaSet's pods until it has `replicas` of them.
fn sync_replicaset(
    dir: &ClusterDir,
    spec: &ClusterSpec,
    store: &Store,
    mut rs: ReplicaSetRecord,
    peers: &[String],
    pods: &mut Vec<PodRecord>,
    errors: &mut Vec<String>,
) -> Result<()> {
    // Its pods whose supervisor is gone: a deletion that a killed controller left half-done
    // (the containers stopped, the sandbox not yet removed), or a pod the emulator's kubelet
    // lost. A Deployment's pods restart forever, so neither serves again: they are removed
    // and replaced.
    let lost: Vec<PodRecord> = owned(&rs, pods)
        .filter(|p| !p.supervisor.is_some_and(|s| s.is_running()))
        .cloned()
        .collect();
    for p in &lost {
        warn!(pod = %p.name, "its supervisor is gone: removing it");
    }
    delete_pods(dir, &lost, pods, errors);
    let active: Vec<PodRecord> = owned(&rs, pods)
        .filter(|p| {
            !dir.pod_dir(&p.namespace, &p.name)
                .status()
                .is_some_and(|s| matches!(s.phase, Phase::Succeeded | Phase::Failed))
        })
        .cloned()
        .collect();
    let want = rs.replicas as usize;
    if active.len() < want {
        let mut names = Vec::new();
        while names.len() < want - active.len() {
            let name = format!("{}-{}", rs.name, random_suffix()?);
            let taken = pods
                .iter()
                .any(|p| p.namespace == rs.namespace && p.name == name)
                || names.contains(&name);
            if !taken {
                names.push(name);
            }
        }
        // Announced before anything is made (see finish_creations).
        rs.creating = names.clone();
        store.save_replicaset(&rs)?;
        for name in &names {
            let node = spread(spec, pods, &rs.namespace, peers)?;
            match create_pod(dir, spec, &rs, name, &node) {
                Ok(p) => {
                    info!(replicaset = %rs.name, pod = %p.name, node = %p.node,
                        ips = ?p.ips, "pod created");
                    pods.push(p);
                }
                Err(e) => errors.push(format!("pod {}/{name}: {e}", rs.namespace)),
            }
        }
        rs.creating.clear();
        store.save_replicaset(&rs)?;
    } else if active.len() > want {
        let mut ranked: Vec<(bool, bool, u64, PodRecord)> = active
            .into_iter()
            .map(|p| {
                let st = dir.pod_dir(&p.namespace, &p.name).status();
                let running = st.as_ref().is_some_and(|s| s.phase == Phase::Running);
                let ready = st.is_some_and(|s| s.is_ready());
                (ready, running, u64::MAX - p.created, p)
            })
            .collect();
        // Kubernetes' order: unready before ready, pending before running, newest first.
        ranked
            .sort_by_key(|(ready, running, newest, p)| (*ready, *running, *newest, p.name.clone()));
        let excess = ranked.len() - want;
        let victims: Vec<PodRecord> = ranked.into_iter().take(excess).map(|r| r.3).collect();
        for v in &victims {
            info!(replicaset = %rs.name, pod = %v.name, "deleting an excess pod");
        }
        delete_pods(dir, &victims, pods, errors);
    }
    Ok(())
}

/// The node for a new pod of a Deployment: the one with the fewest of its pods (of any of its
/// ReplicaSets), then the fewest pods, then the lowest index, as the scheduler's default
/// spreading would choose.
fn spread(spec: &ClusterSpec, pods: &[PodRecord], ns: &str, peers: &[String]) -> Result<String> {
    let mut per_node: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for p in pods {
        let e = per_node.entry(p.node.as_str()).or_default();
        e.1 += 1;
        if p.namespace == ns && owner_of(p).is_some_and(|o| peers.iter().any(|x| x == o)) {
            e.0 += 1;
        }
    }
    spec.nodes
        .iter()
        .min_by_key(|n| {
            (
                per_node.get(n.name.as_str()).copied().unwrap_or_default(),
                n.index,
            )
        })
        .map(|n| n.name.clone())
        .ok_or_else(|| Error::Invalid(format!("cluster {:?} has no nodes", spec.name)))
}

/// A pod of the ReplicaSet's template: sandbox, then supervisor, as `apply` makes a pod.
fn create_pod(
    dir: &ClusterDir,
    spec: &ClusterSpec,
    rs: &ReplicaSetRecord,
    name: &str,
    node: &str,
) -> Result<PodRecord> {
    let m = template_manifest(&rs.template, name, &rs.namespace, Some(&rs.name))
        .map_err(Error::Invalid)?;
    let mut pod = sandbox::create_sandbox(dir, spec, &rs.namespace, name, node)?;
    pod.labels = m.labels.clone();
    pod.annotations = m.annotations.clone();
    pod.manifest = Some(m.raw.clone());
    let backoff = std::time::Duration::from_millis(rs.restart_backoff_ms);
    let started = pods::start_supervisor(dir, &mut pod, &m, backoff);
    if started.is_err() {
        let _ = pods::remove(dir, &pod);
    }
    // A peer and target of NetworkPolicy from now on (or no longer, if it failed).
    publish_pods(dir, [(rs.namespace.as_str(), name)])?;
    started.map(|()| pod)
}

/// Deletes pods at once, each in its own thread (SIGTERM, SIGKILL after its grace period,
/// then CNI DEL), and drops them from `pods`.
fn delete_pods(
    dir: &ClusterDir,
    victims: &[PodRecord],
    pods: &mut Vec<PodRecord>,
    errors: &mut Vec<String>,
) {
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = victims
            .iter()
            .map(|p| s.spawn(move || pods::remove(dir, p)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Invalid("a delete thread panicked".into())))
            })
            .collect()
    });
    // Those that did not go are still stored, and stay published.
    let published = publish_pods(
        dir,
        victims
            .iter()
            .map(|p| (p.namespace.as_str(), p.name.as_str())),
    );
    if let Err(e) = published {
        errors.push(e.to_string());
    }
    for (p, r) in victims.iter().zip(results) {
        match r {
            Ok(()) => pods.retain(|q| !(q.namespace == p.namespace && q.name == p.name)),
            Err(e) => errors.push(format!("delete pod {}/{}: {e}", p.namespace, p.name)),
        }
    }
}
