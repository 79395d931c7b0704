//! The emulator: a kind-like cluster on one Linux box, built from network namespaces, so that
//! pod networking can be seen and tested without a real cluster.
//!
//! An underlay namespace holds a bridge (the "switch" between machines); each node is a
//! namespace plugged into it by a veth, runs its own `flatnet agent`, and gets pods through
//! `flatnet-cni` exactly as a container runtime would call it. Nothing is ever created in the
//! machine's own namespace, and everything is named after the cluster so that it can be found
//! and removed again even when the state dir is lost.
//!
//! Sync and async, once: what talks to the kernel over rtnetlink (building and tearing down
//! nodes, reading routes, tracing) is async, because rtnetlink is; the CLI runs each command on
//! one current-thread runtime, its only `block_on`. What execs and waits — sandboxes (the CNI
//! plugins, as CRI runs them), pods (their supervisors), the state files — is plain blocking
//! code with no runtime of its own; async code calls it inline, which is sound because a
//! command does one thing at a time and no netlink request is in flight meanwhile. No code
//! enters a namespace on a runtime thread: netlink sockets are created inside the namespace
//! they work on (see `netlink::Netlink::in_netns`).

pub mod check;
pub mod cluster;
pub mod controller;
pub mod documents;
pub mod events;
pub mod interrupt;
pub mod labels;
pub mod manifest;
pub mod names;
pub mod netpol;
pub mod objects;
pub mod picture;
pub mod pod_status;
pub mod pods;
pub mod process;
pub mod sandbox;
pub mod services;
pub mod state;
pub mod table;
pub mod trace;
pub mod workloads;

use std::io;

pub use cluster::{Cluster, UpOptions};
pub use state::StateRoot;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request cannot be carried out as asked (bad name, unknown node, taken name, …).
    #[error("{0}")]
    Invalid(String),
    #[error("cluster {0:?} does not exist")]
    NoCluster(String),
    #[error("{op}: {cause}")]
    Io { op: String, cause: io::Error },
    #[error(transparent)]
    Netlink(#[from] crate::netlink::Error),
    #[error(transparent)]
    Cni(#[from] crate::cni::invoke::InvokeError),
    #[error("interrupted")]
    Interrupted,
}

pub type Result<T> = std::result::Result<T, Error>;

/// Wraps an `io::Error` with what was being done.
pub(crate) fn io_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    move |cause| Error::Io {
        op: op.into(),
        cause,
    }
}
