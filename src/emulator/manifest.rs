//! `v1/Pod` and `v1/Namespace` manifests: parsed into the real Kubernetes types (k8s-openapi),
//! checked, and turned into what the emulator runs. Typed deserialization silently drops what it does not know
//! (a misspelled `comand` is just absent), so the raw document is also walked against the
//! fields the emulator supports, and everything else is reported by its path.

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::labels::{self, Labels};
use super::names;

/// The annotation in which kubectl keeps the configuration it applied last.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What a container runs and sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    pub name: String,
    /// Informational: containers are host processes.
    pub image: String,
    /// `command` followed by `args`.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub ports: Vec<PortSpec>,
    pub mounts: Vec<MountSpec>,
    /// As written in the manifest; shown, not enforced.
    pub resources: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
}

/// A container probe as kubelet runs it, with the API's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub action: ProbeAction,
    pub initial_delay_seconds: u32,
    pub period_seconds: u32,
    pub timeout_seconds: u32,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// The probe's own grace period for a kill it causes, over the pod's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<u64>,
}

/// What a probe does. `host` empty means the pod's IP, as kubelet does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ProbeAction {
    Exec {
        command: Vec<String>,
    },
    TcpSocket {
        host: Option<String>,
        port: u16,
    },
    HttpGet {
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
}

impl ProbeAction {
    /// `exec [cmd]`, `tcp-socket :8080`, `http-get http://:8080/healthz`, as kubectl
    /// describe writes them.
    pub fn describe(&self) -> String {
        match self {
            ProbeAction::Exec { command } => format!("exec {command:?}"),
            ProbeAction::TcpSocket { host, port } => {
                format!("tcp-socket {}:{port}", host.as_deref().unwrap_or(""))
            }
            ProbeAction::HttpGet {
                host, port, path, ..
            } => format!(
                "http-get http://{}:{port}{path}",
                host.as_deref().unwrap_or("")
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    pub name: Option<String>,
    pub container_port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountSpec {
    pub volume: String,
    pub mount_path: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// Whether a container that exited with `code` is started again.
    pub fn restarts(self, code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// A pod as the emulator runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub hostname: String,
    pub restart_policy: RestartPolicy,
    pub share_process_namespace: bool,
    pub termination_grace_period_seconds: u64,
    /// The pod's emptyDir volumes, by name.
    pub volumes: Vec<String>,
    pub containers: Vec<ContainerSpec>,
}

/// One document of a manifest.
#[derive(Debug, Clone)]
pub enum Object {
    Pod(Manifest),
    Namespace(NamespaceManifest),
    Deployment(super::workloads::DeploymentManifest),
    NetworkPolicy(super::netpol::PolicyManifest),
    Service(super::services::ServiceManifest),
}

impl Object {
    /// `pod/NAME`, `namespace/NAME`, as kubectl names objects.
    pub fn kind_name(&self) -> String {
        match self {
            Object::Pod(m) => format!("pod/{}", m.name),
            Object::Namespace(n) => format!("namespace/{}", n.name),
            Object::Deployment(d) => format!("deployment.apps/{}", d.name),
            Object::NetworkPolicy(p) => format!("networkpolicy.networking.k8s.io/{}", p.name),
            Object::Service(s) => format!("service/{}", s.name),
        }
    }
}

/// A `v1/Namespace` document.
#[derive(Debug, Clone)]
pub struct NamespaceManifest {
    pub name: String,
    pub labels: Labels,
    pub annotations: Labels,
    /// The document as written, for the last-applied annotation.
    pub raw: Value,
}

/// One pod document of a manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: String,
    /// `metadata.namespace`, if the document says.
    pub namespace: Option<String>,
    pub labels: Labels,
    /// Without kubectl's last-applied annotation, which apply manages.
    pub annotations: Labels,
    /// The document as written, for the last-applied annotation.
    pub raw: Value,
    /// `spec.nodeName`: the node asked for, if any.
    pub node: Option<String>,
    pub spec: PodSpec,
    /// Fields present in the document that the emulator does not act on, by path.
    pub warnings: Vec<String>,
}

/// Parses every document of `text` (YAML or JSON). Any error fails the whole file, so that
/// nothing of it is created; the error names the document and the field path.
pub fn parse(text: &str) -> Result<Vec<Object>, String> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let at = |e: String| format!("document {}: {e}", i + 1);
        let raw = Value::deserialize(doc).map_err(|e| at(e.to_string()))?;
        if raw.is_null() {
            continue;
        }
        out.push(parse_value(raw).map_err(at)?);
    }
    if out.is_empty() {
        return Err(
            "no Pod, Namespace, Deployment, Service or NetworkPolicy in the manifest".into(),
        );
    }
    Ok(out)
}

/// Refuses two documents for one object; `namespace` is where pods that name none go.
pub fn check_unique(objects: &[Object], namespace: &str) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for o in objects {
        let key = match o {
            Object::Pod(m) => format!(
                "pod {:?} in namespace {:?}",
                m.name,
                m.namespace.as_deref().unwrap_or(namespace)
            ),
            Object::Namespace(n) => format!("namespace {:?}", n.name),
            Object::Deployment(d) => format!(
                "deployment {:?} in namespace {:?}",
                d.name,
                d.namespace.as_deref().unwrap_or(namespace)
            ),
            Object::NetworkPolicy(p) => format!(
                "networkpolicy {:?} in namespace {:?}",
                p.name,
                p.namespace.as_deref().unwrap_or(namespace)
            ),
            Object::Service(s) => format!(
                "service {:?} in namespace {:?}",
                s.name,
                s.namespace.as_deref().unwrap_or(namespace)
            ),
        };
        if !seen.insert(key.clone()) {
            return Err(format!("{key} appears twice in the manifests"));
        }
    }
    Ok(())
}

/// One document, already read as JSON.
pub fn parse_value(raw: Value) -> Result<Object, String> {
    let kind = raw["kind"].as_str().unwrap_or_default();
    let api = raw["apiVersion"].as_str().unwrap_or_default();
    match (api, kind) {
        ("v1", "Pod") => parse_pod(raw).map(Object::Pod),
        ("v1", "Namespace") => parse_namespace(raw).map(Object::Namespace),
        ("apps/v1", "Deployment") => {
            super::workloads::parse_deployment(raw).map(Object::Deployment)
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            super::netpol::parse(raw).map(Object::NetworkPolicy)
        }
        ("v1", "Service") => super::services::parse(raw).map(Object::Service),
        _ => Err(format!(
            "apiVersion {api:?}, kind {kind:?}: only v1/Pod, v1/Namespace, v1/Service, \
             apps/v1/Deployment and networking.k8s.io/v1/NetworkPolicy are supported"
        )),
    }
}

pub(crate) fn typed<T: serde::de::DeserializeOwned>(raw: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })
}

/// Labels and annotations of `metadata`, checked as the API server does.
pub(crate) fn meta_maps(meta: &ObjectMeta) -> Result<(Labels, Labels), String> {
    let l: Labels = meta
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels::validate(&l).map_err(|e| format!("metadata.labels: {e}"))?;
    let mut a: Labels = meta
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    for k in a.keys() {
        labels::validate_key(k).map_err(|e| format!("metadata.annotations: {e}"))?;
    }
    a.remove(LAST_APPLIED);
    Ok((l, a))
}

fn parse_namespace(raw: Value) -> Result<NamespaceManifest, String> {
    let ns: Namespace = typed(&raw)?;
    let name = ns.metadata.name.clone().ok_or("metadata.name: required")?;
    names::validate_namespace(&name).map_err(|e| format!("metadata.name: {e}"))?;
    let (labels, annotations) = meta_maps(&ns.metadata)?;
    Ok(NamespaceManifest {
        name,
        labels,
        annotations,
        raw,
    })
}

fn parse_pod(raw: Value) -> Result<Manifest, String> {
    let pod: Pod = typed(&raw)?;
    let mut warnings = Vec::new();
    unsupported("", &raw, POD, &mut warnings);

    let name = pod.metadata.name.clone().ok_or("metadata.name: required")?;
    names::validate_pod(&name).map_err(|e| format!("metadata.name: {e}"))?;
    if let Some(ns) = &pod.metadata.namespace {
        names::validate_namespace(ns).map_err(|e| format!("metadata.namespace: {e}"))?;
    }
    let (labels, annotations) = meta_maps(&pod.metadata)?;
    let spec = pod.spec.as_ref().ok_or("spec: required")?;
    super::pods::dns_files::check(spec)?;
    if spec.containers.is_empty() {
        return Err("spec.containers: at least one container is required".into());
    }

    let mut volumes = Vec::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if v.empty_dir.is_none() {
            return Err(format!(
                "spec.volumes[{i}] ({}): only emptyDir volumes are supported",
                v.name
            ));
        }
        if volumes.contains(&v.name) {
            return Err(format!(
                "spec.volumes[{i}].name: {:?} is used twice",
                v.name
            ));
        }
        volumes.push(v.name.clone());
    }

    let mut containers = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let c = container(c, &volumes).map_err(|e| format!("spec.containers[{i}].{e}"))?;
        if containers.iter().any(|o: &ContainerSpec| o.name == c.name) {
            return Err(format!(
                "spec.containers[{i}].name: {:?} is used twice",
                c.name
            ));
        }
        containers.push(c);
    }

    let restart_policy = match spec.restart_policy.as_deref() {
        None | Some("Always") => RestartPolicy::Always,
        Some("OnFailure") => RestartPolicy::OnFailure,
        Some("Never") => RestartPolicy::Never,
        Some(other) => {
            return Err(format!(
                "spec.restartPolicy: {other:?} is not Always, OnFailure or Never"
            ))
        }
    };
    let hostname = spec.hostname.clone().unwrap_or_else(|| name.clone());
    names::validate_pod(&hostname).map_err(|e| format!("spec.hostname: {e}"))?;
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    let grace = u64::try_from(grace)
        .map_err(|_| "spec.terminationGracePeriodSeconds: must not be negative".to_string())?;
    Ok(Manifest {
        name,
        namespace: pod.metadata.namespace.clone(),
        labels,
        annotations,
        node: spec.node_name.clone(),
        spec: PodSpec {
            hostname,
            restart_policy,
            share_process_namespace: spec.share_process_namespace.unwrap_or(false),
            termination_grace_period_seconds: grace,
            volumes,
            containers,
        },
        warnings,
        raw,
    })
}

/// The first field where two documents' `spec`s differ, as a path (`spec.containers[0].image`);
/// both are read as the v1/Pod type first, so that only fields a Pod has count.
pub fn spec_change(old: &Value, new: &Value) -> Option<String> {
    let spec = |v: &Value| {
        serde_json::from_value::<Pod>(v.clone())
            .ok()
            .and_then(|p| serde_json::to_value(p.spec).ok())
            .unwrap_or(Value::Null)
    };
    first_difference("spec", &spec(old), &spec(new))
}

fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                first_difference(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(&format!("{path}[{i}]"), a, b)),
        _ if a == b => None,
        _ => Some(path.to_string()),
    }
}

/// One container; errors are paths relative to the container.
fn container(c: &Container, volumes: &[String]) -> Result<ContainerSpec, String> {
    names::validate_pod(&c.name).map_err(|e| format!("name: {e}"))?;
    let argv: Vec<String> = c
        .command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .cloned()
        .collect();
    if argv.is_empty() {
        return Err("command: required: images are not pulled, so the command is what runs".into());
    }
    let mut env = Vec::new();
    for (j, e) in c.env.iter().flatten().enumerate() {
        if e.value_from.is_some() {
            return Err(format!("env[{j}].valueFrom: not supported; give a value"));
        }
        env.push((e.name.clone(), e.value.clone().unwrap_or_default()));
    }
    let mut ports = Vec::new();
    for (j, p) in c.ports.iter().flatten().enumerate() {
        let port = u16::try_from(p.container_port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                format!(
                    "ports[{j}].containerPort: {} is not a port",
                    p.container_port
                )
            })?;
        ports.push(PortSpec {
            name: p.name.clone(),
            container_port: port,
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
        });
    }
    let mut mounts = Vec::new();
    for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
        if !volumes.contains(&m.name) {
            return Err(format!(
                "volumeMounts[{j}].name: no volume named {:?} in spec.volumes",
                m.name
            ));
        }
        mount_path_ok(&m.mount_path).map_err(|e| format!("volumeMounts[{j}].mountPath: {e}"))?;
        mounts.push(MountSpec {
            volume: m.name.clone(),
            mount_path: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false),
        });
    }
    if let Some(w) = &c.working_dir {
        if !Path::new(w).is_absolute() {
            return Err(format!("workingDir: {w:?} is not an absolute path"));
        }
    }
    let probe = |field: &str, p: &Option<k8s_openapi::api::core::v1::Probe>, one: bool| {
        p.as_ref()
            .map(|p| self::probe(p, &ports, one))
            .transpose()
            .map_err(|e| format!("{field}.{e}"))
    };
    let liveness_probe = probe("livenessProbe", &c.liveness_probe, true)?;
    let readiness_probe = probe("readinessProbe", &c.readiness_probe, false)?;
    let startup_probe = probe("startupProbe", &c.startup_probe, true)?;
    Ok(ContainerSpec {
        liveness_probe,
        readiness_probe,
        startup_probe,
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        argv,
        env,
        working_dir: c.working_dir.clone(),
        ports,
        mounts,
        resources: c
            .resources
            .as_ref()
            .and_then(|r| serde_json::to_value(r).ok())
            .filter(|v| v.as_object().is_some_and(|o| !o.is_empty())),
    })
}

/// One probe, checked as the API server checks it and with its defaults (period 10 s, timeout
/// 1 s, success threshold 1, failure threshold 3); errors are paths relative to the probe.
/// `one_success`: liveness and startup probes must have a success threshold of 1.
fn probe(
    p: &k8s_openapi::api::core::v1::Probe,
    ports: &[PortSpec],
    one_success: bool,
) -> Result<Probe, String> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let port = |field: &str, v: &IntOrString| -> Result<u16, String> {
        match v {
            IntOrString::Int(n) => u16::try_from(*n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{field}.port: {n} is not a port")),
            IntOrString::String(name) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("{field}.port: no container port named {name:?}")),
        }
    };
    let mut actions = Vec::new();
    if let Some(e) = &p.exec {
        let command = e.command.clone().unwrap_or_default();
        if command.is_empty() {
            return Err("exec.command: required".into());
        }
        actions.push(ProbeAction::Exec { command });
    }
    if let Some(t) = &p.tcp_socket {
        actions.push(ProbeAction::TcpSocket {
            host: t.host.clone().filter(|h| !h.is_empty()),
            port: port("tcpSocket", &t.port)?,
        });
    }
    if let Some(h) = &p.http_get {
        if h.scheme.as_deref().is_some_and(|s| s != "HTTP") {
            return Err("httpGet.scheme: only HTTP is supported".into());
        }
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("httpGet.path: {path:?} is not an absolute path"));
        }
        actions.push(ProbeAction::HttpGet {
            host: h.host.clone().filter(|h| !h.is_empty()),
            port: port("httpGet", &h.port)?,
            path,
            headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        });
    }
    if p.grpc.is_some() {
        return Err("grpc: not supported; use exec, tcpSocket or httpGet".into());
    }
    let action = match actions.len() {
        1 => actions.remove(0),
        0 => return Err("exec, tcpSocket or httpGet: one is required".into()),
        _ => return Err("exec, tcpSocket, httpGet: only one may be given".into()),
    };
    let field = |name: &str, v: Option<i32>, default: u32, min: u32| -> Result<u32, String> {
        let v = v.map_or(Ok(default), |v| {
            u32::try_from(v).map_err(|_| format!("{name}: must not be negative"))
        })?;
        if v < min {
            return Err(format!("{name}: must be at least {min}"));
        }
        Ok(v)
    };
    let success_threshold = field("successThreshold", p.success_threshold, 1, 1)?;
    if one_success && success_threshold != 1 {
        return Err("successThreshold: must be 1".into());
    }
    Ok(Probe {
        action,
        initial_delay_seconds: field("initialDelaySeconds", p.initial_delay_seconds, 0, 0)?,
        period_seconds: field("periodSeconds", p.period_seconds, 10, 1)?,
        timeout_seconds: field("timeoutSeconds", p.timeout_seconds, 1, 1)?,
        success_threshold,
        failure_threshold: field("failureThreshold", p.failure_threshold, 3, 1)?,
        termination_grace_period_seconds: p
            .termination_grace_period_seconds
            .map(|g| {
                u64::try_from(g)
                    .ok()
                    .filter(|g| *g > 0)
                    .ok_or("terminationGracePeriodSeconds: must be positive")
            })
            .transpose()?,
    })
}

/// A mount point must already be a directory on the machine: containers share the machine's
/// filesystem (each in a private mount namespace), and a pod never creates anything in it.
fn mount_path_ok(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!("{path:?} is not a clean absolute path"));
    }
    if ["/", "/proc", "/dev", "/dev/shm", "/sys"].contains(&path.trim_end_matches('/'))
        || path == "/"
    {
        return Err(format!("{path:?} is reserved"));
    }
    if !p.is_dir() {
        return Err(format!(
            "{path:?} does not exist on this machine; containers share its filesystem, so \
             mount volumes on an existing directory (e.g. /srv or /mnt)"
        ));
    }
    Ok(())
}

/// The fields the emulator acts on; `Any` takes a subtree whole.
pub(crate) enum Shape {
    Leaf,
    Any,
    Obj(&'static [(&'static str, Shape)]),
    List(&'static [(&'static str, Shape)]),
}

use Shape::{Any, Leaf, List, Obj};

const POD: &[(&str, Shape)] = &[
    ("apiVersion", Leaf),
    ("kind", Leaf),
    ("metadata", Obj(METADATA)),
    ("spec", Obj(SPEC)),
    ("status", Any),
];
const METADATA: &[(&str, Shape)] = &[
    ("name", Leaf),
    ("namespace", Leaf),
    ("labels", Any),
    ("annotations", Any),
    // Set by the ReplicaSet controller on the pods it makes.
    ("ownerReferences", Any),
];
const SPEC: &[(&str, Shape)] = &[
    ("containers", List(CONTAINER)),
    ("volumes", List(VOLUME)),
    ("restartPolicy", Leaf),
    ("hostname", Leaf),
    ("shareProcessNamespace", Leaf),
    ("terminationGracePeriodSeconds", Leaf),
    ("nodeName", Leaf),
    // Written into each container's /etc/resolv.conf and /etc/hosts (pods::dns_files).
    ("subdomain", Leaf),
    ("dnsPolicy", Leaf),
    ("dnsConfig", Any),
    ("hostAliases", Any),
];
const CONTAINER: &[(&str, Shape)] = &[
    ("name", Leaf),
    ("image", Leaf),
    ("imagePullPolicy", Leaf),
    ("command", Any),
    ("args", Any),
    ("env", List(ENV)),
    ("workingDir", Leaf),
    ("ports", List(PORT)),
    ("volumeMounts", List(MOUNT)),
    ("resources", Any),
    ("livenessProbe", Obj(PROBE)),
    ("readinessProbe", Obj(PROBE)),
    ("startupProbe", Obj(PROBE)),
];
const PROBE: &[(&str, Shape)] = &[
    ("exec", Any),
    ("tcpSocket", Any),
    ("httpGet", Any),
    ("initialDelaySeconds", Leaf),
    ("periodSeconds", Leaf),
    ("timeoutSeconds", Leaf),
    ("successThreshold", Leaf),
    ("failureThreshold", Leaf),
    ("terminationGracePeriodSeconds", Leaf),
];
const ENV: &[(&str, Shape)] = &[("name", Leaf), ("value", Leaf), ("valueFrom", Any)];
const PORT: &[(&str, Shape)] = &[("name", Leaf), ("containerPort", Leaf), ("protocol", Leaf)];
const MOUNT: &[(&str, Shape)] = &[("name", Leaf), ("mountPath", Leaf), ("readOnly", Leaf)];
const VOLUME: &[(&str, Shape)] = &[("name", Leaf), ("emptyDir", Any)];

/// Appends the path of every field of `value` that `fields` does not list.
pub(crate) fn unsupported(
    path: &str,
    value: &Value,
    fields: &[(&str, Shape)],
    out: &mut Vec<String>,
) {
    let Some(obj) = value.as_object() else {
        return;
    };
    for (key, v) in obj {
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match fields.iter().find(|(k, _)| k == key).map(|(_, s)| s) {
            None => out.push(here),
            Some(Leaf | Any) => {}
            Some(Obj(sub)) => unsupported(&here, v, sub, out),
            Some(List(sub)) => {
                for (i, item) in v.as_array().into_iter().flatten().enumerate() {
                    unsupported(&format!("{here}[{i}]"), item, sub, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  restartPolicy: OnFailure
  volumes:
  - name: logs
    emptyDir: {}
  containers:
  - name: app
    image: python:3
    command: ["python3", "-m", "http.server"]
    args: ["8080"]
    env:
    - {name: GREETING, value: hi}
    ports:
    - containerPort: 8080
    volumeMounts:
    - {name: logs, mountPath: /srv}
    livenessProbe:
      httpGet: {path: /, port: 8080}
  - name: side
    image: busybox
    comand: ["sleep"]
    command: ["sleep", "inf"]
---
apiVersion: v1
kind: Pod
metadata: {name: other}
spec:
  hostname: custom
  nodeName: node-2
  containers:
  - {name: c, command: [sleep, "1"]}
"#;

    #[test]
    fn parses_documents_and_reports_what_it_ignores() {
        let m: Vec<Manifest> = parse(TWO)
            .unwrap()
            .into_iter()
            .map(|o| match o {
                Object::Pod(m) => m,
                _ => panic!("only pods here"),
            })
            .collect();
        assert_eq!(m.len(), 2);
        let web = &m[0];
        assert_eq!(web.spec.hostname, "web");
        assert_eq!(web.spec.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(
            web.spec.containers[0].argv,
            ["python3", "-m", "http.server", "8080"]
        );
        assert_eq!(
            web.spec.containers[0].env,
            [("GREETING".into(), "hi".into())]
        );
        assert_eq!(web.spec.containers[0].ports[0].container_port, 8080);
        assert_eq!(web.spec.containers[0].mounts[0].mount_path, "/srv");
        assert_eq!(web.warnings, ["spec.containers[1].comand"]);
        let live = web.spec.containers[0].liveness_probe.as_ref().unwrap();
        assert_eq!(
            live.action,
            ProbeAction::HttpGet {
                host: None,
                port: 8080,
                path: "/".into(),
                headers: vec![]
            }
        );
        assert_eq!(
            (live.period_seconds, live.timeout_seconds),
            (10, 1),
            "kubelet's defaults"
        );
        assert_eq!((live.success_threshold, live.failure_threshold), (1, 3));
        assert_eq!(m[1].spec.hostname, "custom");
        assert_eq!(m[1].node.as_deref(), Some("node-2"));
        assert_eq!(m[1].spec.termination_grace_period_seconds, 30);
        assert_eq!(m[1].spec.restart_policy, RestartPolicy::Always);
    }

    fn err(yaml: &str) -> String {
        parse(yaml).unwrap_err()
    }

    #[test]
    fn errors_name_the_field() {
        let pod =
            |spec: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n{spec}");
        let e = err(&pod(
            "  containers:\n  - name: c\n    command: [x]\n    ports: [{containerPort: eighty}]\n",
        ));
        assert!(
            e.starts_with("document 1: spec.containers[0].ports[0].containerPort: "),
            "{e}"
        );
        let e = err(&pod("  containers:\n  - name: c\n    command: [x]\n    volumeMounts: [{name: v, mountPath: /srv}]\n"));
        assert!(
            e.contains("spec.containers[0].volumeMounts[0].name: no volume named \"v\""),
            "{e}"
        );
        let e = err(&pod("  containers:\n  - name: c\n"));
        assert!(e.contains("spec.containers[0].command: required"), "{e}");
        let e = err(&pod(
            "  restartPolicy: Sometimes\n  containers:\n  - {name: c, command: [x]}\n",
        ));
        assert!(e.contains("spec.restartPolicy"), "{e}");
        let e = err(&pod("  volumes: [{name: v, emptyDir: {}}]\n  containers:\n  - name: c\n    command: [x]\n    volumeMounts: [{name: v, mountPath: /no/such/dir}]\n"));
        assert!(
            e.contains("volumeMounts[0].mountPath: \"/no/such/dir\" does not exist"),
            "{e}"
        );
        let e = err("apiVersion: batch/v1\nkind: Job\n");
        assert!(
            e.contains("only v1/Pod, v1/Namespace, v1/Service, apps/v1/Deployment and"),
            "{e}"
        );
        let e = err("apiVersion: v1\nkind: Pod\nmetadata: {name: p\n");
        assert!(e.starts_with("document 1: "), "{e}");
        let e = err("apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec: {containers: [{name: c, command: [x]}]}\n");
        assert!(e.contains("metadata.name"), "{e}");
        let twice = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, command: [x]}]}\n";
        let both = parse(&format!("{twice}---\n{twice}")).unwrap();
        assert!(check_unique(&both, "default")
            .unwrap_err()
            .contains("appears twice"));
        let e = err("apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {a: -x}}\nspec: {containers: [{name: c, command: [x]}]}\n");
        assert!(e.contains("metadata.labels: a: "), "{e}");
        let e = err("apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad}\n");
        assert!(e.contains("metadata.name: invalid namespace name"), "{e}");
    }

    #[test]
    fn probes_are_checked_as_the_api_server_checks_them() {
        let with = |probe: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: c\n    \
                 command: [x]\n    ports: [{{name: http, containerPort: 8080}}]\n    {probe}\n"
            )
        };
        let Object::Pod(m) = parse(&with(
            "readinessProbe: {httpGet: {port: http, path: /ready}, periodSeconds: 2, successThreshold: 2}",
        ))
        .unwrap()
        .remove(0) else {
            panic!()
        };
        let r = m.spec.containers[0].readiness_probe.as_ref().unwrap();
        assert_eq!(
            (r.period_seconds, r.success_threshold, r.failure_threshold),
            (2, 2, 3)
        );
        assert!(matches!(r.action, ProbeAction::HttpGet { port: 8080, .. }));
        for (probe, want) in [
            (
                "livenessProbe: {tcpSocket: {port: web}}",
                "livenessProbe.tcpSocket.port: no container port named \"web\"",
            ),
            (
                "livenessProbe: {exec: {command: [x]}, successThreshold: 2}",
                "livenessProbe.successThreshold: must be 1",
            ),
            (
                "startupProbe: {grpc: {port: 8080}}",
                "startupProbe.grpc: not supported",
            ),
            (
                "readinessProbe: {periodSeconds: 1}",
                "readinessProbe.exec, tcpSocket or httpGet: one is required",
            ),
            (
                "readinessProbe: {exec: {command: [x]}, tcpSocket: {port: 1}}",
                "only one may be given",
            ),
            (
                "readinessProbe: {exec: {command: [x]}, periodSeconds: 0}",
                "readinessProbe.periodSeconds: must be at least 1",
            ),
            (
                "readinessProbe: {httpGet: {port: 80, scheme: HTTPS}}",
                "httpGet.scheme: only HTTP",
            ),
        ] {
            let e = err(&with(probe));
            assert!(e.contains(want), "{probe}: {e}");
        }
    }

    #[test]
    fn namespaces_and_metadata_are_read() {
        let objs = parse(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: a}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: x\n  labels: {app: web}\n  \
             annotations: {note: hi, kubectl.kubernetes.io/last-applied-configuration: old}\n\
             spec: {containers: [{name: c, image: a, command: [x]}]}\n",
        )
        .unwrap();
        let Object::Namespace(ns) = &objs[0] else {
            panic!()
        };
        assert_eq!(ns.labels["team"], "a");
        let Object::Pod(p) = &objs[1] else { panic!() };
        assert_eq!(p.namespace.as_deref(), Some("x"));
        assert_eq!(p.labels["app"], "web");
        assert_eq!(p.annotations.keys().collect::<Vec<_>>(), ["note"]);
        let mut changed = p.raw.clone();
        changed["spec"]["containers"][0]["image"] = "b".into();
        assert_eq!(
            spec_change(&p.raw, &changed).as_deref(),
            Some("spec.containers[0].image")
        );
        changed["spec"]["containers"][0]["image"] = "a".into();
        changed["metadata"]["labels"]["app"] = "db".into();
        assert_eq!(spec_change(&p.raw, &changed), None);
    }
}
