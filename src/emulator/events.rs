//! A pod's events, as `kubectl describe` lists them: a few lines of JSON in the pod's
//! directory (`events.jsonl`), appended by whoever saw the change (the sandbox's ADD, the
//! supervisor), and kept to the last ones as the API server ages events out.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::pod_status::{ContainerState, PodStatus};
use super::state::{now, PodDir};

/// At most this many; past it, the older half goes.
const KEEP: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the epoch.
    pub at: u64,
    /// Normal or Warning.
    #[serde(rename = "type")]
    pub kind: String,
    pub reason: String,
    pub message: String,
}

impl Event {
    pub fn normal(reason: &str, message: String) -> Event {
        Event {
            at: now(),
            kind: "Normal".into(),
            reason: reason.into(),
            message,
        }
    }

    pub fn warning(reason: &str, message: String) -> Event {
        Event {
            kind: "Warning".into(),
            ..Event::normal(reason, message)
        }
    }
}

fn path(dir: &PodDir) -> std::path::PathBuf {
    dir.path().join("events.jsonl")
}

/// Appends `events`; a failure to record is not the pod's failure, so it is only logged.
pub fn record(dir: &PodDir, events: &[Event]) {
    if events.is_empty() {
        return;
    }
    if let Err(e) = append(&path(dir), events) {
        eprintln!("recording the pod's events: {e}");
    }
}

fn append(path: &Path, events: &[Event]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut all = read_path(path);
    if all.len() + events.len() > KEEP {
        all.drain(..all.len().min(KEEP / 2));
        all.extend_from_slice(events);
        let mut text = Vec::new();
        for e in &all {
            serde_json::to_writer(&mut text, e)?;
            text.push(b'\n');
        }
        return crate::fsutil::write_atomic(path, &text);
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut text = Vec::new();
    for e in events {
        serde_json::to_writer(&mut text, e)?;
        text.push(b'\n');
    }
    file.write_all(&text)
}

fn read_path(path: &Path) -> Vec<Event> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The pod's events, oldest first; lines that do not parse are skipped.
pub fn read(dir: &PodDir) -> Vec<Event> {
    read_path(&path(dir))
}

/// What changed between two statuses the supervisor saved, as kubelet's events say it.
pub fn between(old: &PodStatus, new: &PodStatus) -> Vec<Event> {
    let mut events = Vec::new();
    for (c, was) in new.containers.iter().zip(&old.containers) {
        if c.state == was.state {
            continue;
        }
        let name = &c.name;
        match &c.state {
            ContainerState::Running { .. } => events.push(Event::normal(
                "Started",
                format!("Started container {name}"),
            )),
            ContainerState::Terminated {
                exit_code, reason, ..
            } => events.push(exited(name, *exit_code, reason)),
            ContainerState::Waiting { reason, .. } if reason == "CrashLoopBackOff" => {
                // The exit and the back-off come in one step of the supervisor: the exit is
                // seen only as the last exit code.
                if let (Some(code), false) = (
                    c.last_exit_code,
                    matches!(was.state, ContainerState::Terminated { .. }),
                ) {
                    let reason = if code == 0 { "Completed" } else { "Error" };
                    events.push(exited(name, code, reason));
                }
                events.push(Event::warning(
                    "BackOff",
                    format!("Back-off restarting failed container {name}"),
                ));
            }
            ContainerState::Waiting { .. } => {}
        }
    }
    events
}

fn exited(name: &str, code: i32, reason: &str) -> Event {
    let message = format!("Container {name} exited with code {code}");
    if code == 0 {
        Event::normal(reason, message)
    } else {
        Event::warning(reason, message)
    }
}
