//! Pods and nodes as the API server returns them: `get -o json|yaml` prints v1/Pod and
//! v1/Node objects (k8s-openapi's types, so that what reads kubectl's output reads ours), with
//! the status kubelet would fill in from what the supervisor and the agent report.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Node, NodeAddress, NodeCondition, NodeSpec as V1NodeSpec, NodeStatus,
    Pod, PodCondition, PodIP, PodSpec as V1PodSpec, PodStatus as V1PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::Value;

use flatnet::emulator::pod_status::{self, PodStatus};
use flatnet::emulator::state::{NodeSpec, PodRecord};
use flatnet::emulator::Cluster;

fn time(secs: u64) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).ok()?)
        .ok()
        .map(Time)
}

fn map(labels: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!labels.is_empty()).then(|| labels.clone())
}

/// A `kind: List` of `items`, as `kubectl get -o json` prints several objects.
pub fn list(items: Vec<Value>) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": { "resourceVersion": "" },
        "items": items,
    })
}

/// The pod: its metadata, the spec it was made from (none for a bare sandbox) bound to its
/// node, and its status.
pub fn pod(cluster: &Cluster, p: &PodRecord, node: Option<&NodeSpec>) -> Pod {
    // The document the pod was made from (its spec, its owner references), with what the
    // record holds as the truth since: labels and annotations changed by label and apply.
    let made_from = p
        .manifest
        .as_ref()
        .and_then(|m| serde_json::from_value::<Pod>(m.clone()).ok())
        .unwrap_or_default();
    let mut spec = made_from.spec.unwrap_or_default();
    spec.node_name = Some(p.node.clone());
    let status = cluster.dir().pod_dir(&p.namespace, &p.name).status();
    Pod {
        metadata: ObjectMeta {
            name: Some(p.name.clone()),
            namespace: Some(p.namespace.clone()),
            uid: Some(p.container_id.clone()),
            labels: map(&p.labels),
            annotations: map(&p.annotations),
            creation_timestamp: time(p.created),
            ..made_from.metadata
        },
        status: Some(pod_status(p, status.as_ref(), node, &spec)),
        spec: Some(spec),
    }
}

fn pod_status(
    p: &PodRecord,
    st: Option<&PodStatus>,
    node: Option<&NodeSpec>,
    spec: &V1PodSpec,
) -> V1PodStatus {
    let attached = p.result.is_some();
    let phase = match st {
        Some(st) => format!("{:?}", st.phase),
        // A bare sandbox runs once attached; a pod whose supervisor has not reported yet is
        // pending.
        None if attached && p.spec.is_none() => "Running".into(),
        None => "Pending".into(),
    };
    let ready = match st {
        Some(st) => st.is_ready(),
        None => attached && p.spec.is_none(),
    };
    let condition = |kind: &str, status: bool, at: u64| PodCondition {
        type_: kind.into(),
        status: if status { "True" } else { "False" }.into(),
        last_transition_time: time(at),
        ..Default::default()
    };
    let mut conditions = vec![
        condition("PodScheduled", true, p.created),
        condition("Initialized", true, p.created),
    ];
    match st.map(|s| &s.conditions) {
        Some(set) if !set.is_empty() => conditions.extend(
            set.iter()
                .map(|c| condition(&c.kind, c.status == "True", c.last_transition_time)),
        ),
        _ => {
            conditions.push(condition("ContainersReady", ready, p.created));
            conditions.push(condition("Ready", ready, p.created));
        }
    }
    let host_ips = node.map(|n| n.node_ips()).unwrap_or_default();
    V1PodStatus {
        phase: Some(phase),
        pod_ip: p.ips.first().map(|ip| ip.to_string()),
        pod_ips: Some(
            p.ips
                .iter()
                .map(|ip| PodIP { ip: ip.to_string() })
                .collect(),
        ),
        host_ip: host_ips.first().map(|ip| ip.to_string()),
        host_ips: Some(
            host_ips
                .iter()
                .map(|ip| HostIP { ip: ip.to_string() })
                .collect(),
        ),
        start_time: time(p.created),
        conditions: Some(conditions),
        container_statuses: st.map(|st| {
            st.containers
                .iter()
                .map(|c| container_status(c, spec))
                .collect()
        }),
        ..Default::default()
    }
}

fn container_status(c: &pod_status::ContainerStatus, spec: &V1PodSpec) -> ContainerStatus {
    let state = match &c.state {
        pod_status::ContainerState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: (!message.is_empty()).then(|| message.clone()),
            }),
            ..Default::default()
        },
        pod_status::ContainerState::Running { started_at, .. } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: time(*started_at),
            }),
            ..Default::default()
        },
        pod_status::ContainerState::Terminated {
            exit_code,
            reason,
            message,
            finished_at,
        } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                reason: Some(reason.clone()),
                message: (!message.is_empty()).then(|| message.clone()),
                finished_at: time(*finished_at),
                ..Default::default()
            }),
            ..Default::default()
        },
    };
    // The supervisor keeps the last exit code only, not when or why beyond it.
    let last_state = c.last_exit_code.map(|code| ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: code,
            reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    ContainerStatus {
        name: c.name.clone(),
        image: spec
            .containers
            .iter()
            .find(|s| s.name == c.name)
            .and_then(|s| s.image.clone())
            .unwrap_or_default(),
        ready: c.ready,
        started: Some(c.started),
        restart_count: i32::try_from(c.restart_count).unwrap_or(i32::MAX),
        state: Some(state),
        last_state: Some(last_state.unwrap_or_default()),
        ..Default::default()
    }
}

/// What the node's agent reports, for its Ready condition.
pub struct NodeHealth {
    pub ready: bool,
    pub problem: Option<String>,
}

/// The node: its pod CIDRs, its addresses on the underlay and its Ready condition.
pub fn node(n: &NodeSpec, health: &NodeHealth) -> Node {
    let cidrs: Vec<String> = n.pod_cidrs().iter().map(|c| c.to_string()).collect();
    let mut addresses: Vec<NodeAddress> = match n.node_ips() {
        ips if ips.is_empty() => vec![n.node_ip.into()],
        ips => ips,
    }
    .into_iter()
    .map(|ip| NodeAddress {
        type_: "InternalIP".into(),
        address: ip.to_string(),
    })
    .collect();
    addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: n.name.clone(),
    });
    let (reason, message) = match (&health.problem, health.ready) {
        (_, true) => (
            "KubeletReady",
            "the agent runs and the network is configured".into(),
        ),
        (Some(p), false) => ("AgentProblem", p.clone()),
        (None, false) => (
            "AgentNotReady",
            "the agent is not running or the network config is missing".into(),
        ),
    };
    Node {
        metadata: ObjectMeta {
            name: Some(n.name.clone()),
            creation_timestamp: time(n.created),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".into(), n.name.clone()),
                ("kubernetes.io/os".into(), "linux".into()),
            ])),
            ..Default::default()
        },
        spec: Some(V1NodeSpec {
            pod_cidr: cidrs.first().cloned(),
            pod_cidrs: Some(cidrs),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(addresses),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if health.ready { "True" } else { "False" }.into(),
                reason: Some(reason.into()),
                message: Some(message),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}
