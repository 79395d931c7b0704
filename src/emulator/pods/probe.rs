//! Running one probe, as kubelet does: `exec` inside the container's namespaces, `tcpSocket`
//! and `httpGet` from the node's network namespace (kubelet runs in the node's, not the pod's,
//! so a probe crosses the node-to-pod path the pod network provides), to the pod's IP unless
//! the probe names a host. Each is bounded by the probe's timeout.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::emulator::manifest::{Probe, ProbeAction};
use crate::netns::NetNs;

/// Where a probe goes.
pub struct Target<'a> {
    /// The node's network namespace, opened when the supervisor started.
    pub node_netns: Option<&'a NetNs>,
    pub pod_ip: Option<IpAddr>,
    /// The container's process, whose namespaces an exec probe joins.
    pub pid: u32,
    pub env: &'a [(String, String)],
    pub workdir: &'a str,
}

/// Ok on success; otherwise what failed, as kubelet's event message says it.
pub fn run(probe: &Probe, t: &Target) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.into());
    match &probe.action {
        ProbeAction::Exec { command } => {
            match super::enter::exec_quiet(t.pid, command, t.env, t.workdir, timeout) {
                Ok(Some(0)) => Ok(()),
                Ok(Some(code)) => Err(format!("command {command:?} exited with {code}")),
                Ok(None) => Err(format!("command {command:?} timed out after {timeout:?}")),
                Err(e) => Err(format!("command {command:?}: {e}")),
            }
        }
        ProbeAction::TcpSocket { host, port } => {
            let addr = address(host.as_deref(), t.pod_ip, *port)?;
            in_node(t, move || {
                TcpStream::connect_timeout(&addr, timeout)
                    .map(drop)
                    .map_err(|e| format!("dial tcp {addr}: {e}"))
            })
        }
        ProbeAction::HttpGet {
            host,
            port,
            path,
            headers,
        } => {
            let addr = address(host.as_deref(), t.pod_ip, *port)?;
            let (path, headers) = (path.clone(), headers.clone());
            in_node(t, move || http_get(addr, &path, &headers, timeout))
        }
    }
}

fn address(host: Option<&str>, pod_ip: Option<IpAddr>, port: u16) -> Result<SocketAddr, String> {
    let ip: IpAddr = match host {
        // Names would need the node's resolver; kubelet's probes take addresses in practice.
        Some(h) => h
            .parse()
            .map_err(|_| format!("host {h:?}: only an IP address is supported"))?,
        None => pod_ip.ok_or("the pod has no IP")?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// Runs `f` on a thread inside the node's network namespace (its sockets stay there).
fn in_node(t: &Target, f: impl FnOnce() -> Result<(), String> + Send) -> Result<(), String> {
    let ns = t
        .node_netns
        .ok_or("the node's network namespace is not known")?;
    ns.run(f)
        .map_err(|e| format!("enter the node's network namespace: {e}"))?
}

/// GET `path`; a status from 200 to 399 is success, as kubelet counts it (a redirect is not
/// followed).
fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("Get \"http://{addr}{path}\": timed out after {timeout:?}"))
    };
    let err = |e: std::io::Error| format!("Get \"http://{addr}{path}\": {e}");
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(err)?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\n\
         Connection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.set_write_timeout(Some(left()?)).map_err(err)?;
    s.write_all(req.as_bytes()).map_err(err)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        s.set_read_timeout(Some(left()?)).map_err(err)?;
        match s.read(&mut buf).map_err(err)? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"http://{addr}{path}\": not an HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}
