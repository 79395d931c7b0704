//! `apply` of a Deployment: created, configured or unchanged, as kubectl's client-side apply
//! says it. Labels and annotations merge three ways against the last applied configuration,
//! as a pod's do; the spec is the document's, except `replicas` when the document leaves it
//! out (then `scale` keeps what it set). The selector is immutable in apps/v1.

use std::time::Duration;

use super::{DeploymentManifest, DeploymentRecord, Store};
use crate::emulator::labels::{self, Labels};
use crate::emulator::manifest::LAST_APPLIED;
use crate::emulator::objects::{metadata_maps, Outcome};
use crate::emulator::state::{now, ClusterDir};
use crate::emulator::{Error, Result};

/// Refuses what the API server would refuse of an update; changes nothing.
pub fn check(dir: &ClusterDir, d: &DeploymentManifest, ns: &str) -> Result<()> {
    if let Some(live) = Store(dir).deployment(ns, &d.name)? {
        if live.selector != d.selector {
            return Err(Error::Invalid(format!(
                "The Deployment {:?} is invalid: spec.selector: Invalid value: {}: field is \
                 immutable",
                d.name, d.selector
            )));
        }
    }
    Ok(())
}

pub fn apply(
    dir: &ClusterDir,
    d: &DeploymentManifest,
    ns: &str,
    last_applied: &str,
    restart_backoff: Duration,
) -> Result<Outcome> {
    let store = Store(dir);
    let live = store.deployment(ns, &d.name)?;
    let mut rec = DeploymentRecord {
        name: d.name.clone(),
        namespace: ns.to_string(),
        labels: d.labels.clone(),
        annotations: d.annotations.clone(),
        created: now(),
        replicas: d.replicas.unwrap_or(1),
        selector: d.selector.clone(),
        template: d.template.clone(),
        strategy: d.strategy.clone(),
        revision_history_limit: d.revision_history_limit,
        restart_backoff_ms: restart_backoff.as_millis().try_into().unwrap_or(u64::MAX),
    };
    let outcome = match &live {
        None => Outcome::Created,
        Some(live) => {
            let (last_labels, last_annotations) = live
                .annotations
                .get(LAST_APPLIED)
                .map(|j| metadata_maps(j))
                .unwrap_or_default();
            let mut live_annotations: Labels = live.annotations.clone();
            live_annotations.remove(LAST_APPLIED);
            rec.labels = labels::merge3(&live.labels, &last_labels, &d.labels);
            rec.annotations = labels::merge3(&live_annotations, &last_annotations, &d.annotations);
            rec.created = live.created;
            if d.replicas.is_none() {
                rec.replicas = live.replicas;
            }
            rec.annotations
                .insert(LAST_APPLIED.into(), last_applied.to_string());
            if rec == *live {
                return Ok(Outcome::Unchanged);
            }
            Outcome::Configured
        }
    };
    rec.annotations
        .insert(LAST_APPLIED.into(), last_applied.to_string());
    store.save_deployment(&rec)?;
    Ok(outcome)
}

/// `scale deployment NAME --replicas N`.
fn scale(dir: &ClusterDir, ns: &str, name: &str, replicas: u32) -> Result<()> {
    let store = Store(dir);
    let mut d = store.deployment(ns, name)?.ok_or_else(|| {
        Error::Invalid(format!(
            "Error from server (NotFound): deployments.apps {name:?} not found"
        ))
    })?;
    d.replicas = replicas;
    store.save_deployment(&d)
}

impl crate::emulator::Cluster {
    /// `scale deployment NAME --replicas N`: the controller does the rest.
    pub fn scale_deployment(&self, ns: &str, name: &str, replicas: u32) -> Result<()> {
        let _lock = self.dir().lock()?;
        self.ensure_controller(&mut self.spec()?)?;
        scale(self.dir(), ns, name, replicas)
    }

    /// Deletes a Deployment; the controller then deletes its ReplicaSets and their pods (in
    /// the background, as `kubectl delete` leaves it to the garbage collector). Returns
    /// whether it existed.
    pub fn delete_deployment(&self, ns: &str, name: &str) -> Result<bool> {
        let _lock = self.dir().lock()?;
        self.ensure_controller(&mut self.spec()?)?;
        let store = Store(self.dir());
        if store.deployment(ns, name)?.is_none() {
            return Ok(false);
        }
        store.remove_deployment(ns, name)?;
        Ok(true)
    }
}
