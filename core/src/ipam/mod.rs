//! The pod-IP store: which addresses of the node's pod CIDRs belong to which attachment
//! (container ID + interface name). A dual-stack attachment holds one address per family,
//! reserved together (both or none) and released together.
//!
//! Layout of a store directory (one per network name):
//! ```text
//! version                    store format, "1"
//! lock                       flock()ed by whoever changes the store (cross-process)
//! last-reserved              where the round-robin search of the IPv4 pool resumes
//! last-reserved6             the same for the IPv6 pool
//! ips/<ip>                   "<containerID> <ifname>": the reservation itself (IPv6 addresses
//!                            in their canonical text form, e.g. ips/fd00:10:244:1::2)
//! attachments/<cid>:<ifname> "<ip>\n" per address, in podCIDRs order: the index that makes
//!                            release by owner O(1)
//! tmp/                       files being written; a crash may leave some, which GC removes
//! quarantine/                entries that could not be read, set aside (and logged) by GC or
//!                            DEL so that the rest of the store keeps serving
//! ```
//! Every file appears whole or not at all (written aside under a name no other process uses,
//! fsynced, then linked or renamed into place), and `ips/<ip>` is claimed with link(), which
//! fails if it exists, so an address is never handed out twice even by a store a crash left
//! half-updated. The index entry is written before the claim, so whatever step a crash hits,
//! the runtime's DEL (which has only the container ID and ifname) finds what to release.
//! Nothing scans a directory on the ADD/DEL path, so their cost does not grow with the number
//! of reservations. Everything read is checked: an owner line is a valid container ID and
//! ifname or it is not used, links are not followed, and no path is built from file content.

mod pool;
mod store;

pub use pool::{FamilyPool, Pool, Pool6};
pub use store::{Holder, Locked, Store, FORMAT_VERSION};

use std::net::IpAddr;
use std::path::PathBuf;

use crate::cni::config::Attachment;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("timed out waiting for the IPAM store lock {0}")]
    LockTimeout(PathBuf),
    #[error("no free address left in {0}")]
    Exhausted(ipnetwork::IpNetwork),
    #[error("container {} already has {ip} on {}", .owner.container_id, .owner.ifname)]
    AlreadyReserved { owner: Attachment, ip: IpAddr },
    #[error(
        "IPAM store {dir} has format version {found}; this flatnet reads version {FORMAT_VERSION}"
    )]
    UnsupportedFormat { dir: PathBuf, found: String },
}

pub type Result<T> = std::result::Result<T, Error>;
