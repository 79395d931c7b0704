//! The emulator: a kind-like cluster on one Linux box, built from network namespaces, so that
//! pod networking can be seen and tested without a real cluster.
//!
//! An underlay namespace holds a bridge (the "switch" between machines); each node is a
//! namespace plugged into it by a veth, runs its own `flatnet agent`, and gets pods through
//! `flatnet-cni` exactly as a container runtime would call it. Nothing is ever created in the
//! machine's own namespace, and everything is named after the cluster so that it can be found
//! and removed again even when the state dir is lost.

pub mod check;
pub mod cluster;
pub mod controller;
pub mod interrupt;
pub mod manifest;
pub mod names;
pub mod picture;
pub mod pod_status;
pub mod pods;
pub mod probe;
pub mod process;
pub mod sandbox;
pub mod state;
pub mod table;
pub mod trace;

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
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
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
    move |source| Error::Io {
        op: op.into(),
        source,
    }
}
