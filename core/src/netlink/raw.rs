//! The two system calls of a netlink exchange on a blocking socket, for what speaks netlink
//! without rtnetlink: the group delete (sent from a freshly forked child, so nothing here
//! allocates) and nfnetlink's questions to netfilter.

use std::io;
use std::os::fd::RawFd;

/// Sends `req` to the kernel on the netlink socket `fd`.
pub fn send(fd: RawFd, req: &[u8]) -> io::Result<()> {
    // SAFETY: a send of the caller's buffer, of its own length; the kernel is the destination
    // of an unconnected netlink socket's send.
    if unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one datagram into `buf`, again if a signal interrupts the wait; its length.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: a receive into the caller's buffer, of its own length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
