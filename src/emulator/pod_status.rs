//! What the supervisor reports about a pod: its phase and each container's state and restart
//! count, in the shape of Kubernetes' PodStatus. Written by the supervisor (atomically, after
//! every change), read by `get`, `describe`, `exec` and `logs`.

use serde::{Deserialize, Serialize};

use super::manifest::{PodSpec, RestartPolicy};
use crate::emulator::process::ProcessId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "state"
)]
pub enum ContainerState {
    Waiting {
        /// ContainerCreating before the first start, CrashLoopBackOff between restarts.
        reason: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        message: String,
    },
    Running {
        /// In the supervisor's PID namespace (the machine's).
        pid: u32,
        started_at: u64,
    },
    Terminated {
        exit_code: i32,
        /// Completed (0), Error (non-zero), StartError (it never ran: the message says why).
        reason: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        message: String,
        finished_at: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    #[serde(flatten)]
    pub state: ContainerState,
    pub restart_count: u32,
    /// The last termination, once the container has been restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_code: Option<i32>,
    /// Running, started, and its readiness probe (if any) passing.
    #[serde(default)]
    pub ready: bool,
    /// Running and its startup probe (if any) passed.
    #[serde(default)]
    pub started: bool,
}

impl ContainerStatus {
    pub fn is_running(&self) -> bool {
        matches!(self.state, ContainerState::Running { .. })
    }

    /// The reason kubectl shows in STATUS for a container that is not running.
    pub fn reason(&self) -> Option<&str> {
        match &self.state {
            ContainerState::Waiting { reason, .. } | ContainerState::Terminated { reason, .. } => {
                Some(reason)
            }
            ContainerState::Running { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub phase: Phase,
    pub supervisor: Option<ProcessId>,
    pub containers: Vec<ContainerStatus>,
    /// ContainersReady and Ready, as kubelet reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<PodCondition>,
}

/// A pod condition: `type` is ContainersReady or Ready, `status` "True" or "False".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCondition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    /// Seconds since the epoch of the last change of `status`.
    pub last_transition_time: u64,
}

impl PodStatus {
    /// Before anything started.
    pub fn new(spec: &PodSpec) -> PodStatus {
        PodStatus {
            phase: Phase::Pending,
            supervisor: None,
            containers: spec
                .containers
                .iter()
                .map(|c| ContainerStatus {
                    name: c.name.clone(),
                    state: ContainerState::Waiting {
                        reason: "ContainerCreating".into(),
                        message: String::new(),
                    },
                    restart_count: 0,
                    last_exit_code: None,
                    ready: false,
                    started: false,
                })
                .collect(),
            conditions: Vec::new(),
        }
    }

    /// Whether every container is ready, so the pod is (its Ready condition).
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Running && self.containers.iter().all(|c| c.ready)
    }

    /// Sets the Ready and ContainersReady conditions from the containers, keeping the time of
    /// the last transition of each.
    pub fn compute_conditions(&mut self, now: u64) {
        let status = if self.is_ready() { "True" } else { "False" };
        for kind in ["ContainersReady", "Ready"] {
            match self.conditions.iter_mut().find(|c| c.kind == kind) {
                Some(c) if c.status == status => {}
                Some(c) => {
                    c.status = status.into();
                    c.last_transition_time = now;
                }
                None => self.conditions.push(PodCondition {
                    kind: kind.into(),
                    status: status.into(),
                    last_transition_time: now,
                }),
            }
        }
    }

    /// The status of condition `kind`, if set.
    pub fn condition(&self, kind: &str) -> Option<bool> {
        self.conditions
            .iter()
            .find(|c| c.kind == kind)
            .map(|c| c.status == "True")
    }

    /// The phase as Kubernetes defines it from the containers' states and the restart policy.
    pub fn compute_phase(&mut self, policy: RestartPolicy) {
        let creating = self.containers.iter().any(|c| {
            matches!(&c.state, ContainerState::Waiting { reason, .. } if reason == "ContainerCreating")
        });
        let live = self.containers.iter().any(|c| match &c.state {
            ContainerState::Running { .. } | ContainerState::Waiting { .. } => true,
            ContainerState::Terminated { exit_code, .. } => policy.restarts(*exit_code),
        });
        self.phase = if creating {
            Phase::Pending
        } else if live {
            Phase::Running
        } else if self
            .containers
            .iter()
            .all(|c| matches!(c.state, ContainerState::Terminated { exit_code: 0, .. }))
        {
            Phase::Succeeded
        } else {
            Phase::Failed
        };
    }

    pub fn container(&self, name: &str) -> Option<&ContainerStatus> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// What kubectl prints in STATUS: the phase, or the reason of a container that is not
    /// running while the pod is (CrashLoopBackOff, Error, StartError).
    pub fn display(&self) -> String {
        if self.phase == Phase::Running {
            if let Some(r) = self.containers.iter().find_map(|c| c.reason()) {
                return r.to_string();
            }
        }
        if self.phase == Phase::Succeeded {
            return "Completed".into();
        }
        if self.phase == Phase::Failed {
            if let Some(r) = self
                .containers
                .iter()
                .find_map(|c| c.reason().filter(|r| *r != "Completed"))
            {
                return r.to_string();
            }
        }
        format!("{:?}", self.phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminated(code: i32) -> ContainerState {
        ContainerState::Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: String::new(),
            finished_at: 0,
        }
    }

    fn pod(states: Vec<ContainerState>) -> PodStatus {
        PodStatus {
            phase: Phase::Pending,
            supervisor: None,
            containers: states
                .into_iter()
                .enumerate()
                .map(|(i, state)| ContainerStatus {
                    name: format!("c{i}"),
                    state,
                    restart_count: 0,
                    last_exit_code: None,
                    ready: false,
                    started: false,
                })
                .collect(),
            conditions: Vec::new(),
        }
    }

    #[test]
    fn phases_follow_the_restart_policy() {
        let run = ContainerState::Running {
            pid: 1,
            started_at: 0,
        };
        let cases = [
            (
                vec![terminated(0), terminated(0)],
                RestartPolicy::Never,
                Phase::Succeeded,
            ),
            (
                vec![terminated(0), terminated(1)],
                RestartPolicy::Never,
                Phase::Failed,
            ),
            (
                vec![terminated(0), terminated(1)],
                RestartPolicy::OnFailure,
                Phase::Running,
            ),
            (
                vec![terminated(0)],
                RestartPolicy::OnFailure,
                Phase::Succeeded,
            ),
            (vec![terminated(0)], RestartPolicy::Always, Phase::Running),
            (
                vec![run.clone(), terminated(1)],
                RestartPolicy::Never,
                Phase::Running,
            ),
        ];
        for (states, policy, want) in cases {
            let mut p = pod(states.clone());
            p.compute_phase(policy);
            assert_eq!(p.phase, want, "{states:?} {policy:?}");
        }
        let mut p = pod(vec![run, terminated(1)]);
        p.compute_phase(RestartPolicy::Never);
        assert_eq!(p.display(), "Error");
    }
}
