//! rtnetlink operations on a handle bound to one network namespace.
//!
//! The socket is created by a short-lived thread inside the target namespace; a netlink socket
//! stays bound to the namespace it was created in, so the handle can then be driven from any
//! task. The namespace itself is kept open for as long as the handle lives.

mod addr;
mod ethtool;
mod group;
mod link;
mod lookup;
mod neigh;
mod onlink;
pub mod raw;
mod route;
mod vxlan;

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::Arc;

use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};

use crate::netns::NetNs;

pub use group::{GroupDelete, RETIRED};
pub use link::{Link, VethSpec};
pub use lookup::{Counters, Matched, Packet};
pub use neigh::Neighbour;
pub use onlink::NextHop;
pub use route::{Family, Route, Route6, RouteOf};
pub use vxlan::{mac_string, FdbEntry, VxlanInfo, VxlanSpec};

/// Route protocol numbers (rtm_protocol) that mark the routes flatnet owns, so that each owner
/// only ever lists, replaces or deletes its own (see /etc/iproute2/rt_protos).
pub mod protocol {
    /// Host routes to a pod, made by `flatnet-cni`.
    pub const CNI: u8 = 0x66;
    /// Routes to other nodes' pod CIDRs, made by `flatnet agent`.
    pub const AGENT: u8 = 0x67;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: {cause}")]
    Netlink { op: String, cause: rtnetlink::Error },
    #[error("{op}: {cause}")]
    Io { op: String, cause: io::Error },
}

impl Error {
    /// The errno the kernel answered with, if it was a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink {
                cause: rtnetlink::Error::NetlinkError(e),
                ..
            } => Some(e.raw_code().abs()),
            Error::Io { cause, .. } => cause.raw_os_error(),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A netlink handle bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    ns: Option<Arc<NetNs>>,
}

impl Netlink {
    /// A handle on the calling thread's namespace. Must be called inside a tokio runtime.
    pub fn current() -> io::Result<Netlink> {
        Self::from_socket(Socket::new(NETLINK_ROUTE)?, None)
    }

    /// A handle on `ns`. Must be called inside a tokio runtime.
    pub fn in_netns(ns: Arc<NetNs>) -> io::Result<Netlink> {
        let socket = ns.run(|| Socket::new(NETLINK_ROUTE))??;
        Self::from_socket(socket, Some(ns))
    }

    /// The namespace this handle works on, if it was opened on one rather than on the
    /// caller's: helpers that exec tools (nft) run them there too.
    pub fn netns(&self) -> Option<&NetNs> {
        self.ns.as_deref()
    }

    fn from_socket(socket: Socket, ns: Option<Arc<NetNs>>) -> io::Result<Netlink> {
        socket.set_non_blocking(true)?;
        // SAFETY: the fd comes straight from a netlink Socket we own and hand over whole.
        let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(conn);
        Ok(Netlink { handle, ns })
    }
}

fn nl_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    move |cause| Error::Netlink {
        op: op.into(),
        cause,
    }
}
