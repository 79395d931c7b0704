//! Workloads: `apps/v1` Deployments and the ReplicaSets they make, as the API server keeps
//! them. This module holds the objects (parsed, checked, stored in the state dir); the
//! cluster's controller acts on them (`controller::deployments`).
//!
//! ```text
//! <cluster>/deployments/<ns>/<name>.json   what was applied (and scaled)
//! <cluster>/replicasets/<ns>/<name>.json   one per pod template of a Deployment
//! ```
//!
//! A Deployment's ReplicaSet is named `<deployment>-<hash of the pod template>`, and its pods
//! `<replicaset>-<5 random characters>`, from Kubernetes' alphabet without vowels. A pod
//! names the ReplicaSet that owns it in `metadata.ownerReferences` of its document.

pub mod apply;
pub mod rollout;

use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::labels::{self, Labels, Requirement, Selector};
use super::manifest::{self, Manifest, Object};
use super::state::{ClusterDir, PodRecord};
use super::{io_err, names, Error, Result};
use crate::fsutil::write_atomic;

/// The label Kubernetes puts on a ReplicaSet's pods: the hash of their template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Kubernetes' alphabet for generated names: no vowels, no look-alikes.
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `maxSurge` or `maxUnavailable`: a number of pods, or a percentage of `replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum IntOrPercent {
    Int(u32),
    Percent(u32),
}

impl IntOrPercent {
    /// The number of pods for `replicas`: a percentage rounded up or down, as Kubernetes
    /// rounds maxSurge (up) and maxUnavailable (down).
    pub fn resolve(&self, replicas: u32, round_up: bool) -> u32 {
        match self {
            IntOrPercent::Int(n) => *n,
            IntOrPercent::Percent(p) => {
                let x = u64::from(*p) * u64::from(replicas);
                let n = if round_up { x.div_ceil(100) } else { x / 100 };
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }

    fn parse(field: &str, v: Option<&IntOrString>) -> std::result::Result<IntOrPercent, String> {
        match v {
            None => Ok(IntOrPercent::Percent(25)),
            Some(IntOrString::Int(n)) => u32::try_from(*n)
                .map(IntOrPercent::Int)
                .map_err(|_| format!("{field}: must not be negative")),
            Some(IntOrString::String(s)) => s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .map(IntOrPercent::Percent)
                .ok_or_else(|| format!("{field}: {s:?} is not a number or a percentage")),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            IntOrPercent::Int(n) => n.to_string(),
            IntOrPercent::Percent(p) => format!("{p}%"),
        }
    }
}

/// How a Deployment replaces pods when its template changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Strategy {
    RollingUpdate {
        max_surge: IntOrPercent,
        max_unavailable: IntOrPercent,
    },
    Recreate,
}

/// An `apps/v1` Deployment, as applied (and scaled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub annotations: Labels,
    pub created: u64,
    pub replicas: u32,
    /// `spec.selector` as written (matchLabels, matchExpressions).
    pub selector: Value,
    /// `spec.template`: the pod template's metadata and spec.
    pub template: Value,
    pub strategy: Strategy,
    pub revision_history_limit: u32,
    /// The first restart back-off of its pods' containers (`apply --restart-backoff`).
    pub restart_backoff_ms: u64,
}

/// A ReplicaSet: `replicas` pods of one template, owned by a Deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSetRecord {
    pub name: String,
    pub namespace: String,
    /// The Deployment that owns it.
    pub owner: String,
    /// The template's labels and the pod-template-hash label.
    pub labels: Labels,
    pub created: u64,
    /// The Deployment's revision that made it (or made it current again).
    pub revision: u64,
    pub replicas: u32,
    /// The template its pods are made from, with the pod-template-hash label.
    pub template: Value,
    pub restart_backoff_ms: u64,
    /// Pods whose creation has begun and not yet finished: written before the sandbox is
    /// made, so that a controller killed half-way finds (and finishes or removes) them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub creating: Vec<String>,
}

/// A `apps/v1` Deployment document, checked.
#[derive(Debug, Clone)]
pub struct DeploymentManifest {
    pub name: String,
    pub namespace: Option<String>,
    pub labels: Labels,
    pub annotations: Labels,
    /// None when the document leaves it out: apply then keeps the live value (1 at creation).
    pub replicas: Option<u32>,
    pub selector: Value,
    pub template: Value,
    pub strategy: Strategy,
    pub revision_history_limit: u32,
    pub raw: Value,
    /// Fields present that the emulator does not act on, by path.
    pub warnings: Vec<String>,
}

/// Parses an `apps/v1` Deployment: the API server's checks (a selector that matches the
/// template's labels, restartPolicy Always), and the template checked as a pod is.
pub fn parse_deployment(raw: Value) -> std::result::Result<DeploymentManifest, String> {
    let d: Deployment = manifest::typed(&raw)?;
    let name = d.metadata.name.clone().ok_or("metadata.name: required")?;
    names::validate_pod(&name).map_err(|e| format!("metadata.name: {e}"))?;
    if let Some(ns) = &d.metadata.namespace {
        names::validate_namespace(ns).map_err(|e| format!("metadata.namespace: {e}"))?;
    }
    let (labels, annotations) = manifest::meta_maps(&d.metadata)?;
    let spec = d.spec.as_ref().ok_or("spec: required")?;
    let replicas = spec
        .replicas
        .map(|r| u32::try_from(r).map_err(|_| "spec.replicas: must not be negative".to_string()))
        .transpose()?;
    let selector_value = raw["spec"]["selector"].clone();
    let selector = selector_of(&selector_value).map_err(|e| format!("spec.selector: {e}"))?;
    if selector.0.is_empty() {
        return Err("spec.selector: empty selector is invalid for deployment".into());
    }
    let template = raw["spec"]["template"].clone();
    let pod = template_manifest(&template, &name, "default", None)
        .map_err(|e| format!("spec.template.{e}"))?;
    if !selector.matches(&pod.labels) {
        return Err(
            "spec.template.metadata.labels: Invalid value: `selector` does not match template \
             `labels`"
                .into(),
        );
    }
    if pod.spec.restart_policy != manifest::RestartPolicy::Always {
        return Err(
            "spec.template.spec.restartPolicy: Unsupported value: only \"Always\" is supported"
                .into(),
        );
    }
    let strategy = match spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) {
        None | Some("RollingUpdate") => {
            let ru = spec
                .strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref());
            let max_surge = IntOrPercent::parse(
                "spec.strategy.rollingUpdate.maxSurge",
                ru.and_then(|r| r.max_surge.as_ref()),
            )?;
            let max_unavailable = IntOrPercent::parse(
                "spec.strategy.rollingUpdate.maxUnavailable",
                ru.and_then(|r| r.max_unavailable.as_ref()),
            )?;
            if max_surge.resolve(100, true) == 0 && max_unavailable.resolve(100, false) == 0 {
                return Err(
                    "spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when maxSurge is 0"
                        .into(),
                );
            }
            Strategy::RollingUpdate {
                max_surge,
                max_unavailable,
            }
        }
        Some("Recreate") => {
            if spec
                .strategy
                .as_ref()
                .is_some_and(|s| s.rolling_update.is_some())
            {
                return Err(
                    "spec.strategy.rollingUpdate: may not be specified when strategy `type` is \
                     'Recreate'"
                        .into(),
                );
            }
            Strategy::Recreate
        }
        Some(other) => {
            return Err(format!(
                "spec.strategy.type: {other:?} is not RollingUpdate or Recreate"
            ))
        }
    };
    let revision_history_limit = spec.revision_history_limit.map_or(Ok(10), |r| {
        u32::try_from(r).map_err(|_| "spec.revisionHistoryLimit: must not be negative")
    })?;
    let mut warnings = Vec::new();
    manifest::unsupported("", &raw, DEPLOYMENT, &mut warnings);
    warnings.extend(pod.warnings.iter().map(|w| format!("spec.template.{w}")));
    Ok(DeploymentManifest {
        name,
        namespace: d.metadata.namespace.clone(),
        labels,
        annotations,
        replicas,
        selector: selector_value,
        template,
        strategy,
        revision_history_limit,
        raw,
        warnings,
    })
}

use manifest::Shape::{Any, Leaf, Obj};

const DEPLOYMENT: &[(&str, manifest::Shape)] = &[
    ("apiVersion", Leaf),
    ("kind", Leaf),
    ("metadata", Obj(DEPLOYMENT_METADATA)),
    ("spec", Obj(DEPLOYMENT_SPEC)),
    ("status", Any),
];
const DEPLOYMENT_METADATA: &[(&str, manifest::Shape)] = &[
    ("name", Leaf),
    ("namespace", Leaf),
    ("labels", Any),
    ("annotations", Any),
];
/// The template is checked as a pod (its warnings carry its path).
const DEPLOYMENT_SPEC: &[(&str, manifest::Shape)] = &[
    ("replicas", Leaf),
    ("selector", Any),
    ("template", Any),
    ("strategy", Any),
    ("revisionHistoryLimit", Leaf),
];

/// `spec.selector` (matchLabels and matchExpressions) as a selector.
pub fn selector_of(v: &Value) -> std::result::Result<Selector, String> {
    let mut reqs = Vec::new();
    for (k, val) in v["matchLabels"].as_object().into_iter().flatten() {
        let val = val
            .as_str()
            .ok_or(format!("matchLabels.{k}: not a string"))?;
        labels::validate_key(k).map_err(|e| format!("matchLabels: {e}"))?;
        labels::validate_value(val).map_err(|e| format!("matchLabels: {e}"))?;
        reqs.push(Requirement::In(k.clone(), vec![val.to_string()]));
    }
    for (i, e) in v["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = |m: &str| format!("matchExpressions[{i}]: {m}");
        let key = e["key"]
            .as_str()
            .ok_or_else(|| at("key: required"))?
            .to_string();
        labels::validate_key(&key).map_err(|m| at(&m))?;
        let values: Vec<String> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| at("values: strings"))
            })
            .collect::<std::result::Result<_, _>>()?;
        let op = e["operator"].as_str().unwrap_or_default();
        let with_values = matches!(op, "In" | "NotIn");
        if with_values == values.is_empty() {
            return Err(at(&format!(
                "values: {} for operator {op:?}",
                if with_values {
                    "required"
                } else {
                    "must be empty"
                }
            )));
        }
        reqs.push(match op {
            "In" => Requirement::In(key, values),
            "NotIn" => Requirement::NotIn(key, values),
            "Exists" => Requirement::Exists(key),
            "DoesNotExist" => Requirement::DoesNotExist(key),
            _ => {
                return Err(at(&format!(
                    "operator: {op:?} is not In, NotIn, Exists or DoesNotExist"
                )))
            }
        });
    }
    Ok(Selector(reqs))
}

/// The pod a template makes: named `name` in `namespace`, owned by ReplicaSet `owner`.
pub fn template_manifest(
    template: &Value,
    name: &str,
    namespace: &str,
    owner: Option<&str>,
) -> std::result::Result<Manifest, String> {
    let mut metadata = json!({"name": name, "namespace": namespace});
    for key in ["labels", "annotations"] {
        if let Some(v) = template["metadata"].get(key) {
            metadata[key] = v.clone();
        }
    }
    if let Some(rs) = owner {
        metadata["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
            "controller": true, "blockOwnerDeletion": true,
        }]);
    }
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": template.get("spec").cloned().unwrap_or(Value::Null),
    });
    match manifest::parse_value(doc)? {
        Object::Pod(m) => Ok(m),
        _ => unreachable!("a Pod document parses as a pod"),
    }
}

/// The ReplicaSet that owns a pod, from `metadata.ownerReferences` of its document.
pub fn owner_of(pod: &PodRecord) -> Option<&str> {
    pod.manifest.as_ref()?["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["kind"] == "ReplicaSet" && o["controller"] == true)?["name"]
        .as_str()
}

/// The hash of a pod template, as the pod-template-hash label and the ReplicaSet's name
/// carry it: FNV-1a of the template's JSON (serde_json sorts object keys, so equal templates
/// hash equally), written in Kubernetes' alphabet.
pub fn template_hash(template: &Value) -> String {
    let mut t = template.clone();
    if let Some(l) = t["metadata"]["labels"].as_object_mut() {
        l.remove(POD_TEMPLATE_HASH);
    }
    let h = crate::stable_hash::fnv1a(t.to_string().bytes()) as u32;
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// Five random characters of Kubernetes' alphabet: a generated name's suffix.
pub fn random_suffix() -> Result<String> {
    let mut b = [0u8; 5];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io_err("read /dev/urandom"))?;
    Ok(b.iter()
        .map(|x| ALPHANUMS[usize::from(*x) % ALPHANUMS.len()] as char)
        .collect())
}

/// A Deployment's status as `get deployments` shows it, from its ReplicaSets and pods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    /// Its pods.
    pub replicas: u32,
    /// Its pods of the current template.
    pub updated_replicas: u32,
    pub ready_replicas: u32,
    /// Ready (the emulator has no minReadySeconds).
    pub available_replicas: u32,
    /// The ReplicaSet of the current template, once made.
    pub new_replica_set: Option<String>,
    /// The revision of the current template.
    pub revision: u64,
}

impl DeploymentRecord {
    /// The name of the ReplicaSet for the current template.
    pub fn new_replicaset_name(&self) -> String {
        format!("{}-{}", self.name, template_hash(&self.template))
    }

    pub fn status(
        &self,
        dir: &ClusterDir,
        sets: &[ReplicaSetRecord],
        pods: &[PodRecord],
    ) -> DeploymentStatus {
        let new = self.new_replicaset_name();
        let mut st = DeploymentStatus::default();
        for rs in sets
            .iter()
            .filter(|r| r.namespace == self.namespace && r.owner == self.name)
        {
            if rs.name == new {
                st.new_replica_set = Some(rs.name.clone());
                st.revision = rs.revision;
            }
            for p in pods
                .iter()
                .filter(|p| p.namespace == rs.namespace && owner_of(p) == Some(rs.name.as_str()))
            {
                st.replicas += 1;
                let ready = dir
                    .pod_dir(&p.namespace, &p.name)
                    .status()
                    .is_some_and(|s| s.is_ready());
                if rs.name == new {
                    st.updated_replicas += 1;
                }
                if ready {
                    st.ready_replicas += 1;
                    st.available_replicas += 1;
                }
            }
        }
        st
    }
}

/// Where workloads are kept in a cluster's state dir.
fn kind_dir(dir: &ClusterDir, kind: &str) -> PathBuf {
    dir.path().join(kind)
}

fn record_path(dir: &ClusterDir, kind: &str, ns: &str, name: &str) -> PathBuf {
    kind_dir(dir, kind).join(ns).join(format!("{name}.json"))
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| Error::Io {
            op: format!("parse {}", path.display()),
            cause: io::Error::other(e),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
    }
}

fn write<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(v).expect("records serialize");
    json.push(b'\n');
    write_atomic(path, &json).map_err(io_err(format!("write {}", path.display())))
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_err(format!("remove {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

/// Every record of `kind` in every namespace, sorted by namespace and name; a file that does
/// not parse is skipped (and so is a temp file of a write in progress).
fn list<T: serde::de::DeserializeOwned>(dir: &ClusterDir, kind: &str) -> Result<Vec<T>> {
    let top = kind_dir(dir, kind);
    let mut out = Vec::new();
    let Ok(namespaces) = std::fs::read_dir(&top) else {
        return Ok(out);
    };
    let mut paths = Vec::new();
    for ns in namespaces.flatten() {
        if !ns.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for f in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let p = f.path();
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") && !name.starts_with('.') {
                paths.push(p);
            }
        }
    }
    paths.sort();
    for p in paths {
        if let Ok(Some(r)) = read(&p) {
            out.push(r);
        }
    }
    Ok(out)
}

/// The workloads of one cluster, on disk.
pub struct Store<'a>(pub &'a ClusterDir);

impl Store<'_> {
    pub fn deployment(&self, ns: &str, name: &str) -> Result<Option<DeploymentRecord>> {
        read(&record_path(self.0, "deployments", ns, name))
    }

    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>> {
        list(self.0, "deployments")
    }

    pub fn save_deployment(&self, d: &DeploymentRecord) -> Result<()> {
        write(
            &record_path(self.0, "deployments", &d.namespace, &d.name),
            d,
        )
    }

    pub fn remove_deployment(&self, ns: &str, name: &str) -> Result<()> {
        remove(&record_path(self.0, "deployments", ns, name))
    }

    pub fn replicasets(&self) -> Result<Vec<ReplicaSetRecord>> {
        list(self.0, "replicasets")
    }

    pub fn save_replicaset(&self, r: &ReplicaSetRecord) -> Result<()> {
        write(
            &record_path(self.0, "replicasets", &r.namespace, &r.name),
            r,
        )
    }

    pub fn remove_replicaset(&self, ns: &str, name: &str) -> Result<()> {
        remove(&record_path(self.0, "replicasets", ns, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: python:3, command: [python3, -m, http.server, "8080"]}
"#;

    fn parse(yaml: &str) -> std::result::Result<DeploymentManifest, String> {
        let v: Value = serde_norway::from_str(yaml).unwrap();
        parse_deployment(v)
    }

    #[test]
    fn a_deployment_parses_with_kubernetes_defaults() {
        let d = parse(WEB).unwrap();
        assert_eq!(d.replicas, Some(3));
        assert_eq!(
            d.strategy,
            Strategy::RollingUpdate {
                max_surge: IntOrPercent::Percent(25),
                max_unavailable: IntOrPercent::Percent(25)
            }
        );
        assert_eq!(d.revision_history_limit, 10);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        let h = template_hash(&d.template);
        assert!(h.bytes().all(|b| ALPHANUMS.contains(&b)) && !h.is_empty());
        let mut t = d.template.clone();
        t["metadata"]["labels"][POD_TEMPLATE_HASH] = h.clone().into();
        assert_eq!(
            template_hash(&t),
            h,
            "the hash label does not change the hash"
        );
        t["spec"]["containers"][0]["image"] = "python:3.12".into();
        assert_ne!(template_hash(&t), h);
    }

    #[test]
    fn the_api_servers_checks_are_made() {
        let e = parse(&WEB.replace("{matchLabels: {app: web}}", "{matchLabels: {app: db}}"))
            .unwrap_err();
        assert!(e.contains("does not match template"), "{e}");
        let e = parse(&WEB.replace("    spec:\n", "    spec:\n      restartPolicy: Never\n"))
            .unwrap_err();
        assert!(e.contains("restartPolicy"), "{e}");
        let e = parse(&WEB.replace("replicas: 3", "replicas: -1")).unwrap_err();
        assert!(e.contains("spec.replicas"), "{e}");
        let e = parse(&WEB.replace("command:", "comand:")).unwrap_err();
        assert!(
            e.contains("spec.template.spec.containers[0].command"),
            "{e}"
        );
    }

    #[test]
    fn percentages_round_as_kubernetes_rounds_them() {
        let p = IntOrPercent::Percent(25);
        assert_eq!((p.resolve(3, true), p.resolve(3, false)), (1, 0));
        assert_eq!((p.resolve(4, true), p.resolve(4, false)), (1, 1));
        assert_eq!((p.resolve(10, true), p.resolve(10, false)), (3, 2));
        assert_eq!(IntOrPercent::Int(2).resolve(10, false), 2);
    }
}
