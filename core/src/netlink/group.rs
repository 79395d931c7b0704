//! Deleting a whole device group in one request, on a blocking socket.
//!
//! Deleting a link makes the caller wait for RCU grace periods (`unregister_netdevice_many`,
//! then `netdev_run_todo`'s `rcu_barrier`): ~20 ms on an idle VM, whatever the number of links
//! deleted by the one request. So DEL retires a host veth into [`RETIRED`] (down, its routes
//! flushed) and whoever sweeps deletes the whole group at once, off the runtime's clock. The
//! request is prepared up front and sent without allocating, so that a freshly forked child (the
//! plugin's deferred sweeper) can send it, and so can a plain thread of the agent.

use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket};

/// The device group of retired host veths: "flat" in ASCII. `ip link show group 1718378868`
/// lists them; nothing else on a node is expected to use this number.
pub const RETIRED: u32 = 0x666c_6174;

/// A ready `RTM_DELLINK` for every link of one group, bound to the namespace of the thread
/// that made it.
pub struct GroupDelete {
    socket: Socket,
    request: Vec<u8>,
}

impl GroupDelete {
    /// A socket in the calling thread's namespace and the request for `group`.
    pub fn new(group: u32) -> io::Result<GroupDelete> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Group(group));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelLink(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        req.finalize();
        let mut request = vec![0; req.buffer_len()];
        req.serialize(&mut request);
        Ok(GroupDelete {
            socket: Socket::new(NETLINK_ROUTE)?,
            request,
        })
    }

    /// The socket's descriptor, for a forked child that keeps it across a close of the rest.
    pub fn fd(&self) -> i32 {
        self.socket.as_raw_fd()
    }

    /// Deletes every link of the group; `Ok(false)` when it had none. Blocks for the kernel's
    /// grace periods when it deletes something. Allocates nothing.
    pub fn run(&self) -> io::Result<bool> {
        let fd = self.socket.as_raw_fd();
        super::raw::send(fd, &self.request)?;
        let mut buf = [0u8; 4096];
        loop {
            let n = super::raw::recv(fd, &mut buf)?;
            // nlmsghdr (len u32, type u16, flags u16, seq u32, pid u32), then nlmsgerr's error.
            if n < 20 {
                return Err(io::Error::other("short netlink answer"));
            }
            let kind = u16::from_ne_bytes([buf[4], buf[5]]);
            if kind != libc::NLMSG_ERROR as u16 {
                continue; // not our answer (no other message is expected on this socket)
            }
            let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            return match -err {
                0 => Ok(true),
                libc::ENODEV => Ok(false),
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
    }
}
