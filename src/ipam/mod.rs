//! The pod-IP store: which address of the node's pod CIDR belongs to which attachment
//! (container ID + interface name).
//!
//! Layout of a store directory (one per network name):
//! ```text
//! version                    store format, "1"
//! lock                       flock()ed by whoever changes the store (cross-process)
//! last-reserved              where the round-robin search resumes
//! ips/<ip>                   "<containerID> <ifname>": the reservation itself
//! attachments/<cid>:<ifname> "<ip>": the index that makes release by owner O(1)
//! tmp/                       files being written; a crash may leave some, which GC removes
//! ```
//! Every file appears whole or not at all (written aside, fsynced, then linked or renamed into
//! place), and `ips/<ip>` is claimed with link(), which fails if it exists, so an address is
//! never handed out twice even by a store a crash left half-updated. Nothing scans a directory on
//! the ADD/DEL path, so their cost does not grow with the number of reservations.

mod pool;
mod store;

pub use pool::Pool;
pub use store::{Locked, Store, FORMAT_VERSION};

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Who holds a reservation.
pub use crate::cni::config::Attachment;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out waiting for the IPAM store lock {0}")]
    LockTimeout(PathBuf),
    #[error("no free address left in {0}")]
    Exhausted(ipnetwork::Ipv4Network),
    #[error("container {} already has {ip} on {}", .owner.container_id, .owner.ifname)]
    AlreadyReserved { owner: Attachment, ip: Ipv4Addr },
    #[error(
        "IPAM store {dir} has format version {found}; this flatnet reads version {FORMAT_VERSION}"
    )]
    UnsupportedFormat { dir: PathBuf, found: String },
}

pub type Result<T> = std::result::Result<T, Error>;
