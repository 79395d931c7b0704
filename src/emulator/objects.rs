//! The API objects of a cluster, as the API server and kubectl treat them: namespaces, pods in
//! them, labels, declarative apply (kubectl's client-side apply: a three-way merge against the
//! last applied configuration), and deletion with a grace period.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::Cluster;
use super::labels::{self, Change, Labels};
use super::manifest::{self, Manifest, NamespaceManifest, Object, LAST_APPLIED};
use super::netpol::{publish_namespaces, publish_pods, publish_policies};
use super::state::{ClusterSpec, NamespaceRecord, PodRecord};
use super::{names, pods, sandbox, Error, Result};

/// The namespaces every cluster has, as Kubernetes makes them.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-node-lease", "kube-public", "kube-system"];
/// The ones the API server refuses to delete.
const UNDELETABLE: [&str; 3] = ["default", "kube-public", "kube-system"];

/// What apply did to one object, as kubectl says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// One object's line of `apply`.
#[derive(Debug, Clone)]
pub struct Applied {
    /// `pod/NAME` or `namespace/NAME`.
    pub object: String,
    pub outcome: Outcome,
    /// The pod, when the object is one.
    pub pod: Option<PodRecord>,
    /// A warning kubectl would print for it.
    pub warning: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// The first restart back-off of a failed container.
    pub restart_backoff: Duration,
    /// Replace (delete and create) a pod whose immutable fields changed.
    pub force: bool,
}

/// The pod's namespace and name, as kubectl writes a pod in a namespace.
pub fn pod_key(p: &PodRecord) -> String {
    format!("{}/{}", p.namespace, p.name)
}

fn not_found(kind: &str, name: &str) -> Error {
    Error::Invalid(format!("{kind} {name:?} not found"))
}

impl Cluster {
    /// The cluster's namespaces; the system ones are made by `up`.
    pub fn namespace_list(&self) -> Result<Vec<NamespaceRecord>> {
        self.spec()?;
        self.dir().namespaces()
    }

    pub(crate) fn create_system_namespaces(&self) -> Result<()> {
        for ns in SYSTEM_NAMESPACES {
            self.dir()
                .save_namespace(&NamespaceRecord::new(ns, Labels::new(), Labels::new()))?;
        }
        Ok(())
    }

    fn require_namespace(&self, ns: &str) -> Result<()> {
        match self.dir().namespace(ns)? {
            Some(_) => Ok(()),
            None => Err(not_found("namespaces", ns)),
        }
    }

    /// Creates a bare pod sandbox (no containers) in `namespace`, on `node` or the
    /// least-loaded node, attached to the network through the node's conflist.
    pub fn run_sandbox(
        &self,
        namespace: &str,
        name: &str,
        node: Option<&str>,
    ) -> Result<PodRecord> {
        let _lock = self.dir().lock()?;
        let mut spec = self.spec()?;
        self.ensure_controller(&mut spec)?;
        self.require_namespace(namespace)?;
        let node = match node {
            Some(n) => n.to_string(),
            None => sandbox::schedule(&spec, &self.dir().pods()?)?,
        };
        let pod = sandbox::create_sandbox(self.dir(), &spec, namespace, name, &node)?;
        publish_pods(self.dir(), [(namespace, name)])?;
        Ok(pod)
    }

    /// Creates one pod from `m` (`flatnet run`): no last-applied configuration, as kubectl
    /// run keeps none.
    pub fn create_pod(&self, m: &Manifest, restart_backoff: Duration) -> Result<PodRecord> {
        let _lock = self.dir().lock()?;
        let mut spec = self.spec()?;
        self.ensure_controller(&mut spec)?;
        let ns = m.namespace.clone().unwrap_or_else(|| "default".into());
        self.require_namespace(&ns)?;
        if self.dir().pod(&ns, &m.name)?.is_some() {
            return Err(Error::Invalid(format!(
                "pods {:?} already exists in namespace {ns:?}",
                m.name
            )));
        }
        check_node(&spec, m)?;
        // Only the scheduler needs every pod, and reading them all grows with the cluster.
        let existing = match m.node {
            Some(_) => Vec::new(),
            None => self.dir().pods()?,
        };
        let pod = self.make_pod(&spec, &existing, m, &ns, None, restart_backoff)?;
        publish_pods(self.dir(), [(ns.as_str(), m.name.as_str())])?;
        Ok(pod)
    }

    /// Applies `objects` as `kubectl apply` does. `namespace` is where pods that name none go;
    /// `explicit` says it was asked for with `-n`, so that a document naming another is an
    /// error. Everything is checked before anything changes: a bad document changes nothing.
    pub fn apply(
        &self,
        objects: &[Object],
        namespace: &str,
        explicit: bool,
        opts: ApplyOptions,
    ) -> Result<Vec<Applied>> {
        let _lock = self.dir().lock()?;
        let mut spec = self.spec()?;
        self.ensure_controller(&mut spec)?;
        manifest::check_unique(objects, namespace).map_err(Error::Invalid)?;
        let new_namespaces: Vec<&str> = objects
            .iter()
            .filter_map(|o| match o {
                Object::Namespace(n) => Some(n.name.as_str()),
                Object::Pod(_)
                | Object::Deployment(_)
                | Object::NetworkPolicy(_)
                | Object::Service(_) => None,
            })
            .collect();
        // Check every pod first.
        let mut plans = Vec::new();
        for o in objects {
            let Object::Pod(m) = o else { continue };
            let ns = document_namespace(m.namespace.as_deref(), namespace, explicit)?;
            if !new_namespaces.contains(&ns.as_str()) {
                self.require_namespace(&ns)?;
            }
            check_node(&spec, m)?;
            let live = self.dir().pod(&ns, &m.name)?;
            if let Some(live) = &live {
                if let Some(field) = immutable_change(live, m) {
                    if !opts.force {
                        return Err(Error::Invalid(format!(
                            "The Pod {:?} is invalid: {field}: Forbidden: pod updates may not \
                             change fields other than metadata.labels and \
                             metadata.annotations (the emulator restarts nothing in place; \
                             --force replaces the pod)",
                            m.name
                        )));
                    }
                }
            }
            plans.push((m, ns, live));
        }
        let mut policy_plans = Vec::new();
        for o in objects {
            let Object::NetworkPolicy(m) = o else {
                continue;
            };
            let ns = document_namespace(m.namespace.as_deref(), namespace, explicit)?;
            if !new_namespaces.contains(&ns.as_str()) {
                self.require_namespace(&ns)?;
            }
            policy_plans.push((m, ns));
        }
        let mut service_plans = Vec::new();
        for o in objects {
            let Object::Service(m) = o else { continue };
            let ns = document_namespace(m.namespace.as_deref(), namespace, explicit)?;
            if !new_namespaces.contains(&ns.as_str()) {
                self.require_namespace(&ns)?;
            }
            service_plans.push((m, ns));
        }

        // And every Deployment.
        let mut deployments = Vec::new();
        for o in objects {
            let Object::Deployment(d) = o else { continue };
            let ns = document_namespace(d.namespace.as_deref(), namespace, explicit)?;
            if !new_namespaces.contains(&ns.as_str()) {
                self.require_namespace(&ns)?;
            }
            super::workloads::apply::check(self.dir(), d, &ns)?;
            deployments.push((d, ns));
        }

        // What the agents learn: each object applied, as stored at the end; Deployments and
        // Services make and remove pods of their own (replicas, the DNS addon), so with
        // either, everything.
        let publish_all = !deployments.is_empty() || !service_plans.is_empty();
        let published_pods: Vec<(String, String)> = plans
            .iter()
            .map(|(m, ns, _)| (ns.clone(), m.name.clone()))
            .collect();
        let published_policies: Vec<(String, String)> = policy_plans
            .iter()
            .map(|(m, ns)| (ns.clone(), m.name.clone()))
            .collect();

        let mut done = Vec::new();
        for o in objects {
            if let Object::Namespace(n) = o {
                done.push(self.apply_namespace(n)?);
            }
        }
        let mut existing = self.dir().pods()?;
        for (m, ns, live) in plans {
            let last_applied = last_applied_json(&m.raw, &ns);
            let object = format!("pod/{}", m.name);
            // A new pod is made; one whose spec changed is replaced (only with --force, checked
            // above), as kubectl apply --force does.
            let made = match &live {
                None => Some(Outcome::Created),
                Some(l) if immutable_change(l, m).is_some() => {
                    pods::remove(self.dir(), l)?;
                    existing.retain(|p| !(p.namespace == ns && p.name == m.name));
                    Some(Outcome::Configured)
                }
                Some(_) => None,
            };
            if let Some(outcome) = made {
                let pod = self.make_pod(
                    &spec,
                    &existing,
                    m,
                    &ns,
                    Some(&last_applied),
                    opts.restart_backoff,
                )?;
                existing.push(pod.clone());
                done.push(Applied {
                    object,
                    outcome,
                    pod: Some(pod),
                    warning: None,
                });
                continue;
            }
            let live = live.expect("made above when absent");
            let (last_labels, last_annotations, warning) = match live.annotations.get(LAST_APPLIED)
            {
                Some(json) => {
                    let (l, a) = metadata_maps(json);
                    (l, a, None)
                }
                None => (
                    Labels::new(),
                    Labels::new(),
                    Some(format!(
                        "resource pods/{} is missing the {LAST_APPLIED} annotation which \
                             is required by flatnet apply; it is patched automatically",
                        m.name
                    )),
                ),
            };
            let mut pod = live.clone();
            pod.labels = labels::merge3(&live.labels, &last_labels, &m.labels);
            let mut live_annotations = live.annotations.clone();
            live_annotations.remove(LAST_APPLIED);
            pod.annotations = labels::merge3(&live_annotations, &last_annotations, &m.annotations);
            pod.annotations.insert(LAST_APPLIED.into(), last_applied);
            let outcome = if pod.labels == live.labels && pod.annotations == live.annotations {
                Outcome::Unchanged
            } else {
                self.dir().save_pod(&pod)?;
                Outcome::Configured
            };
            done.push(Applied {
                object,
                outcome,
                pod: Some(pod),
                warning,
            });
        }
        for (d, ns) in deployments {
            let last_applied = last_applied_json(&d.raw, &ns);
            let outcome = super::workloads::apply::apply(
                self.dir(),
                d,
                &ns,
                &last_applied,
                opts.restart_backoff,
            )?;
            done.push(Applied {
                object: format!("deployment.apps/{}", d.name),
                outcome,
                pod: None,
                warning: None,
            });
        }
        if !service_plans.is_empty() {
            self.ensure_dns(opts.restart_backoff)?;
        }
        for (m, ns) in service_plans {
            let outcome = self.apply_service(m, &ns, last_applied_json(&m.raw, &ns))?;
            done.push(Applied {
                object: format!("service/{}", m.name),
                outcome,
                pod: None,
                warning: None,
            });
        }
        for (m, ns) in policy_plans {
            let outcome = self.apply_policy(m, &ns, last_applied_json(&m.raw, &ns))?;
            done.push(Applied {
                object: format!("networkpolicy.networking.k8s.io/{}", m.name),
                outcome,
                pod: None,
                warning: None,
            });
        }
        if publish_all {
            self.publish()?;
        } else {
            publish_namespaces(self.dir(), new_namespaces.iter().copied())?;
            publish_pods(
                self.dir(),
                published_pods
                    .iter()
                    .map(|(ns, n)| (ns.as_str(), n.as_str())),
            )?;
            publish_policies(
                self.dir(),
                published_policies
                    .iter()
                    .map(|(ns, n)| (ns.as_str(), n.as_str())),
            )?;
        }
        Ok(done)
    }

    fn apply_namespace(&self, n: &NamespaceManifest) -> Result<Applied> {
        let last_applied = last_applied_json(&n.raw, "");
        let object = format!("namespace/{}", n.name);
        let Some(live) = self.dir().namespace(&n.name)? else {
            let mut rec = NamespaceRecord::new(&n.name, n.labels.clone(), n.annotations.clone());
            rec.annotations.insert(LAST_APPLIED.into(), last_applied);
            self.dir().save_namespace(&rec)?;
            return Ok(Applied {
                object,
                outcome: Outcome::Created,
                pod: None,
                warning: None,
            });
        };
        let (last_labels, last_annotations) = live
            .annotations
            .get(LAST_APPLIED)
            .map(|j| metadata_maps(j))
            .unwrap_or_default();
        let mut rec = live.clone();
        rec.labels = labels::merge3(&live.labels, &last_labels, &n.labels);
        rec.labels
            .insert(super::state::NAMESPACE_NAME_LABEL.into(), n.name.clone());
        let mut live_annotations = live.annotations.clone();
        live_annotations.remove(LAST_APPLIED);
        rec.annotations = labels::merge3(&live_annotations, &last_annotations, &n.annotations);
        rec.annotations.insert(LAST_APPLIED.into(), last_applied);
        let outcome = if rec == live {
            Outcome::Unchanged
        } else {
            self.dir().save_namespace(&rec)?;
            Outcome::Configured
        };
        Ok(Applied {
            object,
            outcome,
            pod: None,
            warning: None,
        })
    }

    /// Sandbox, then supervisor; the record carries the document and its metadata.
    fn make_pod(
        &self,
        spec: &ClusterSpec,
        existing: &[PodRecord],
        m: &Manifest,
        ns: &str,
        last_applied: Option<&str>,
        restart_backoff: Duration,
    ) -> Result<PodRecord> {
        let node = match &m.node {
            Some(n) => n.clone(),
            None => sandbox::schedule(spec, existing)?,
        };
        let mut pod = sandbox::create_sandbox(self.dir(), spec, ns, &m.name, &node)?;
        pod.labels = m.labels.clone();
        pod.annotations = m.annotations.clone();
        if let Some(j) = last_applied {
            pod.annotations.insert(LAST_APPLIED.into(), j.to_string());
        }
        let mut doc = m.raw.clone();
        doc["metadata"]["namespace"] = ns.into();
        pod.manifest = Some(doc);
        if let Err(e) = pods::start_supervisor(self.dir(), &mut pod, m, restart_backoff) {
            let _ = pods::remove(self.dir(), &pod);
            return Err(e);
        }
        Ok(pod)
    }

    /// Changes the labels of pods (`kind` "pod") or namespaces, as `kubectl label` does.
    /// Returns each object and whether it changed.
    pub fn label(
        &self,
        kind: LabelKind,
        namespace: &str,
        names: &[String],
        changes: &[Change],
        overwrite: bool,
    ) -> Result<Vec<(String, bool)>> {
        let _lock = self.dir().lock()?;
        self.spec()?;
        let mut out = Vec::new();
        // All are checked before any is written.
        match kind {
            LabelKind::Pod => {
                let mut recs = Vec::new();
                for name in names {
                    let mut p = self
                        .dir()
                        .pod(namespace, name)?
                        .ok_or_else(|| not_found("pods", name))?;
                    let changed = labels::apply_changes(&mut p.labels, changes, overwrite)
                        .map_err(Error::Invalid)?;
                    recs.push((p, changed));
                }
                for (p, changed) in &recs {
                    if *changed {
                        self.dir().save_pod(p)?;
                    }
                    out.push((format!("pod/{}", p.name), *changed));
                }
                // Labels are what selectors match: the agents re-evaluate.
                let changed = recs.iter().filter(|(_, c)| *c).map(|(p, _)| p);
                publish_pods(
                    self.dir(),
                    changed.map(|p| (p.namespace.as_str(), p.name.as_str())),
                )?;
            }
            LabelKind::Namespace => {
                let mut recs = Vec::new();
                for name in names {
                    let mut n = self
                        .dir()
                        .namespace(name)?
                        .ok_or_else(|| not_found("namespaces", name))?;
                    let changed = labels::apply_changes(&mut n.labels, changes, overwrite)
                        .map_err(Error::Invalid)?;
                    if n.labels.get(super::state::NAMESPACE_NAME_LABEL) != Some(&n.name) {
                        return Err(Error::Invalid(format!(
                            "namespace {name:?}: the label {} is set by the cluster",
                            super::state::NAMESPACE_NAME_LABEL
                        )));
                    }
                    recs.push((n, changed));
                }
                for (n, changed) in &recs {
                    if *changed {
                        self.dir().save_namespace(n)?;
                    }
                    out.push((format!("namespace/{}", n.name), *changed));
                }
                let changed = recs.iter().filter(|(_, c)| *c).map(|(n, _)| n);
                publish_namespaces(self.dir(), changed.map(|n| n.name.as_str()))?;
            }
        }
        Ok(out)
    }

    /// Deletes `pods` at once (each stops in its own thread: SIGTERM, SIGKILL after its grace
    /// period or `grace`, then CNI DEL). `waiting` is told, once, which pods' containers are
    /// still stopping after a second. Returns each pod's result, in the order given.
    pub fn delete_pods(
        &self,
        pods: &[PodRecord],
        grace: Option<u64>,
        waiting: &dyn Fn(&[&PodRecord]),
    ) -> Result<Vec<Result<()>>> {
        let _lock = self.dir().lock()?;
        self.ensure_controller(&mut self.spec()?)?;
        let stopped = self.stop_pods(pods, grace, waiting);
        // Those that did not stop are still stored, and stay published.
        publish_pods(
            self.dir(),
            pods.iter().map(|p| (p.namespace.as_str(), p.name.as_str())),
        )?;
        Ok(stopped)
    }

    fn stop_pods(
        &self,
        list: &[PodRecord],
        grace: Option<u64>,
        waiting: &dyn Fn(&[&PodRecord]),
    ) -> Vec<Result<()>> {
        std::thread::scope(|s| {
            let handles: Vec<_> = list
                .iter()
                .map(|p| {
                    let finished = Arc::new(AtomicBool::new(false));
                    let flag = finished.clone();
                    let dir = self.dir().clone();
                    let h = s.spawn(move || {
                        let stopped = pods::stop_supervisor(&dir, p, grace);
                        flag.store(true, Ordering::Release);
                        stopped.and_then(|()| sandbox::remove_sandbox(&dir, p))
                    });
                    (h, finished)
                })
                .collect();
            let start = Instant::now();
            let mut told = false;
            // Until every container has stopped; the joins below wait for the DELs.
            while !handles.iter().all(|(_, f)| f.load(Ordering::Acquire)) {
                if !told && start.elapsed() >= Duration::from_secs(1) {
                    let left: Vec<&PodRecord> = list
                        .iter()
                        .zip(&handles)
                        .filter(|(_, (_, f))| !f.load(Ordering::Acquire))
                        .map(|(p, _)| p)
                        .collect();
                    waiting(&left);
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            handles
                .into_iter()
                .map(|(h, _)| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Invalid("a delete thread panicked".into())))
                })
                .collect()
        })
    }

    /// Deletes namespace `name` and every pod in it, as the namespace controller does.
    pub fn delete_namespace(
        &self,
        name: &str,
        grace: Option<u64>,
        waiting: &dyn Fn(&[&PodRecord]),
    ) -> Result<()> {
        let _lock = self.dir().lock()?;
        self.ensure_controller(&mut self.spec()?)?;
        names::validate_namespace(name)?;
        if UNDELETABLE.contains(&name) {
            return Err(Error::Invalid(format!(
                "namespaces {name:?} is forbidden: this namespace may not be deleted"
            )));
        }
        if self.dir().namespace(name)?.is_none() {
            return Err(not_found("namespaces", name));
        }
        let inside: Vec<PodRecord> = self
            .dir()
            .pods()?
            .into_iter()
            .filter(|p| p.namespace == name)
            .collect();
        let stopped = self.stop_pods(&inside, grace, waiting);
        // The pods that did stop are gone whatever happened to the others.
        self.publish()?;
        for r in stopped {
            r?;
        }
        self.remove_namespace_policies(name)?;
        self.remove_namespace_services(name)?;
        self.dir().remove_namespace(name)?;
        self.publish()
    }
}

/// What `flatnet label` changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelKind {
    Pod,
    Namespace,
}

/// The namespace of a namespaced document: its own, or `namespace` (from `-n` when
/// `explicit`, which a document naming another contradicts, as in kubectl).
pub fn document_namespace(doc: Option<&str>, namespace: &str, explicit: bool) -> Result<String> {
    match doc {
        Some(ns) if explicit && ns != namespace => Err(Error::Invalid(format!(
            "the namespace from the provided object {ns:?} does not match the namespace \
             {namespace:?}. You must pass '--namespace={ns}' to perform this operation."
        ))),
        Some(ns) => Ok(ns.to_string()),
        None => Ok(namespace.to_string()),
    }
}

fn check_node(spec: &ClusterSpec, m: &Manifest) -> Result<()> {
    if let Some(node) = &m.node {
        if spec.node(node).is_none() {
            return Err(Error::Invalid(format!(
                "pod {:?}: spec.nodeName: node {node:?} is not in cluster {:?}",
                m.name, spec.name
            )));
        }
    }
    Ok(())
}

/// The field of the live pod that `m` would change and may not, if any. `spec.nodeName` only
/// counts when the document names a node (else the scheduler chose it).
fn immutable_change(live: &PodRecord, m: &Manifest) -> Option<String> {
    if m.node.as_ref().is_some_and(|n| *n != live.node) {
        return Some("spec.nodeName".into());
    }
    let Some(live_doc) = &live.manifest else {
        // A bare sandbox has no containers to keep.
        return Some("spec.containers".into());
    };
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("nodeName");
        }
        v
    };
    manifest::spec_change(&strip(live_doc), &strip(&m.raw))
}

/// The document as kubectl keeps it in the annotation: compact JSON, with the namespace and
/// without the annotation itself.
pub(crate) fn last_applied_json(raw: &Value, namespace: &str) -> String {
    let mut doc = raw.clone();
    if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
        if !namespace.is_empty() {
            meta.insert("namespace".into(), namespace.into());
        }
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove(LAST_APPLIED);
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    serde_json::to_string(&doc).expect("JSON serializes")
}

/// The labels and annotations of a last-applied configuration; nothing if it is unreadable
/// (then apply only adds, as kubectl does without one).
pub(crate) fn metadata_maps(json: &str) -> (Labels, Labels) {
    let doc: Value = serde_json::from_str(json).unwrap_or_default();
    let map = |v: &Value| -> Labels {
        v.as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect()
    };
    (
        map(&doc["metadata"]["labels"]),
        map(&doc["metadata"]["annotations"]),
    )
}
