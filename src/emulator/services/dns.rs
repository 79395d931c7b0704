//! CoreDNS's part: the records of `cluster.local`, computed by the controller from the
//! Services, their endpoints and the pods (`dns.json` in the cluster's state dir), and the
//! server the cluster DNS pod runs (`flatnet dns`), which answers from them over UDP and TCP
//! on port 53, as CoreDNS's `kubernetes` plugin does:
//!
//! - `svc.ns.svc.cluster.local`: A, the ClusterIP; for a headless Service, the address of
//!   every ready endpoint;
//! - `host.svc.ns.svc.cluster.local` for each ready endpoint of a headless Service: the pod's
//!   `hostname` when its `subdomain` is the Service, else its address with dashes;
//! - `_port._proto.svc.ns.svc.cluster.local`: SRV for each named port (to the Service's name,
//!   or to each endpoint's for a headless one), with the targets' A records as additional;
//! - `a-b-c-d.ns.pod.cluster.local`: A, every pod's address.
//!
//! Any other name in `cluster.local` is NXDOMAIN (a name above one that exists, such as
//! `ns.svc.cluster.local`, has no records but exists); names outside it are REFUSED: there is
//! no upstream resolver to forward to on a machine without internet, and forwarding to the
//! machine's would let pods reach past the emulator. The server re-reads the records when the
//! file changes, so answers follow the endpoints. There are no AAAA records: Services are IPv4.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::endpoints::Endpoint;
use super::Svc;
use crate::emulator::state::{ClusterDir, PodRecord};

/// The cluster's domain, kubelet's and CoreDNS's default.
pub const DOMAIN: &str = "cluster.local";
/// CoreDNS's default TTL for the kubernetes plugin.
const TTL: u32 = 30;

/// One record of a name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Record {
    A {
        ip: Ipv4Addr,
    },
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
}

/// Every name of the zone and its records; names are lower case, without the final dot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zone {
    pub names: BTreeMap<String, Vec<Record>>,
}

impl Zone {
    fn add(&mut self, name: String, r: Record) {
        let list = self.names.entry(name).or_default();
        if !list.contains(&r) {
            list.push(r);
        }
    }

    /// The zone for `services` (each with its endpoints) and `pods`.
    pub fn build(services: &[(Svc, Vec<Endpoint>)], pods: &[PodRecord]) -> Zone {
        let mut z = Zone::default();
        for (svc, eps) in services {
            let base = format!("{}.{}.svc.{DOMAIN}", svc.name, svc.namespace);
            let ready: Vec<&Endpoint> = eps.iter().filter(|e| e.ready).collect();
            match svc.cluster_ip {
                Some(ip) => {
                    z.add(base.clone(), Record::A { ip });
                    for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
                        z.add(
                            format!("_{}._{}.{base}", p.name, p.protocol.nft()),
                            Record::Srv {
                                priority: 0,
                                weight: 100,
                                port: p.port,
                                target: base.clone(),
                            },
                        );
                    }
                }
                None => {
                    z.names.entry(base.clone()).or_default();
                    for e in &ready {
                        let host = e
                            .hostname
                            .clone()
                            .unwrap_or_else(|| e.ip.to_string().replace('.', "-"));
                        let name = format!("{host}.{base}");
                        z.add(base.clone(), Record::A { ip: e.ip });
                        z.add(name.clone(), Record::A { ip: e.ip });
                        let weight = u16::try_from(100 / ready.len()).unwrap_or(100).max(1);
                        for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
                            if let Some(port) = e.port(&p.name, p.protocol) {
                                z.add(
                                    format!("_{}._{}.{base}", p.name, p.protocol.nft()),
                                    Record::Srv {
                                        priority: 0,
                                        weight,
                                        port,
                                        target: name.clone(),
                                    },
                                );
                            }
                        }
                    }
                }
            }
        }
        for p in pods {
            if let Some(ip) = p.ipv4() {
                let name = format!(
                    "{}.{}.pod.{DOMAIN}",
                    ip.to_string().replace('.', "-"),
                    p.namespace
                );
                z.add(name, Record::A { ip });
            }
        }
        z
    }

    /// The records of `name`; None when it does not exist (NXDOMAIN).
    fn lookup(&self, name: &str) -> Option<&[Record]> {
        if let Some(r) = self.names.get(name) {
            return Some(r);
        }
        // A name above an existing one exists, with no records of its own.
        let dotted = format!(".{name}");
        let above = name == DOMAIN || self.names.keys().any(|k| k.ends_with(&dotted));
        above.then_some(&[][..])
    }
}

/// Where the controller writes the zone.
pub fn zone_path(dir: &ClusterDir) -> PathBuf {
    dir.path().join("dns.json")
}

/// Writes `zone` if it differs from the stored one.
pub fn store(dir: &ClusterDir, zone: &Zone) -> std::io::Result<()> {
    let path = zone_path(dir);
    let json = serde_json::to_vec_pretty(zone).expect("zone serializes");
    if std::fs::read(&path).ok().as_deref() == Some(json.as_slice()) {
        return Ok(());
    }
    crate::fsutil::write_atomic(&path, &json)
}

const TYPE_A: u16 = 1;
const TYPE_SRV: u16 = 33;
const TYPE_ANY: u16 = 255;
const NOERROR: u8 = 0;
const FORMERR: u8 = 1;
const NXDOMAIN: u8 = 3;
const NOTIMP: u8 = 4;
const REFUSED: u8 = 5;

/// The answer to the DNS message `q`, or None for what deserves no answer (a response, or
/// too short to have an ID).
pub fn answer(zone: &Zone, q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 {
        return None;
    }
    let opcode = (q[2] >> 3) & 0x0f;
    let rd = q[2] & 0x01;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&q[..2]);
    let reply = |out: &mut Vec<u8>, aa: bool, rcode: u8, qd: u16, an: u16, ar: u16| {
        out.truncate(2);
        out.push(0x80 | (opcode << 3) | if aa { 0x04 } else { 0 } | rd);
        out.push(rcode);
        for n in [qd, an, 0, ar] {
            out.extend_from_slice(&n.to_be_bytes());
        }
    };
    let qdcount = u16::from_be_bytes([q[4], q[5]]);
    if opcode != 0 {
        reply(&mut out, false, NOTIMP, 0, 0, 0);
        return Some(out);
    }
    let Some((name, end)) = (qdcount == 1).then(|| read_name(q, 12)).flatten() else {
        reply(&mut out, false, FORMERR, 0, 0, 0);
        return Some(out);
    };
    if q.len() < end + 4 {
        reply(&mut out, false, FORMERR, 0, 0, 0);
        return Some(out);
    }
    let qtype = u16::from_be_bytes([q[end], q[end + 1]]);
    let question = &q[12..end + 4];
    let name = name.to_ascii_lowercase();
    let in_zone = name == DOMAIN || name.ends_with(&format!(".{DOMAIN}"));
    if !in_zone {
        reply(&mut out, false, REFUSED, 1, 0, 0);
        out.extend_from_slice(question);
        return Some(out);
    }
    let Some(records) = zone.lookup(&name) else {
        reply(&mut out, true, NXDOMAIN, 1, 0, 0);
        out.extend_from_slice(question);
        return Some(out);
    };
    let mut answers = Vec::new();
    let mut additional = Vec::new();
    let mut an = 0u16;
    let mut ar = 0u16;
    for r in records {
        match r {
            Record::A { ip } if qtype == TYPE_A || qtype == TYPE_ANY => {
                rr(&mut answers, None, TYPE_A, &ip.octets());
                an += 1;
            }
            Record::Srv {
                priority,
                weight,
                port,
                target,
            } if qtype == TYPE_SRV || qtype == TYPE_ANY => {
                let mut data = Vec::new();
                for n in [*priority, *weight, *port] {
                    data.extend_from_slice(&n.to_be_bytes());
                }
                write_name(&mut data, target);
                rr(&mut answers, None, TYPE_SRV, &data);
                an += 1;
                for t in zone.names.get(target).into_iter().flatten() {
                    if let Record::A { ip } = t {
                        rr(&mut additional, Some(target), TYPE_A, &ip.octets());
                        ar += 1;
                    }
                }
            }
            _ => {}
        }
    }
    reply(&mut out, true, NOERROR, 1, an, ar);
    out.extend_from_slice(question);
    out.extend_from_slice(&answers);
    out.extend_from_slice(&additional);
    Some(out)
}

/// A resource record of class IN; its owner is the question's name (a pointer to offset 12)
/// unless `owner` is given.
fn rr(out: &mut Vec<u8>, owner: Option<&str>, rtype: u16, data: &[u8]) {
    match owner {
        Some(n) => write_name(out, n),
        None => out.extend_from_slice(&[0xc0, 12]),
    }
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&TTL.to_be_bytes());
    out.extend_from_slice(&u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(data);
}

fn write_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(u8::try_from(label.len()).unwrap_or(63).min(63));
        out.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    out.push(0);
}

/// The uncompressed name at `at` (a question's), and where it ends.
fn read_name(q: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = q.get(at..at + len)?;
        if !label.iter().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += len;
    }
    Some((labels.join("."), at))
}

/// The zone as last read, re-read when its file changes.
struct Records {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
    zone: Zone,
}

impl Records {
    fn current(&mut self) -> &Zone {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp != self.stamp {
            match std::fs::read(&self.path).map(|b| serde_json::from_slice::<Zone>(&b)) {
                Ok(Ok(z)) => {
                    self.zone = z;
                    self.stamp = stamp;
                }
                // A damaged file: the last good zone stays; the next change is read again.
                Ok(Err(e)) => tracing::warn!("{}: {e}", self.path.display()),
                Err(e) => tracing::warn!("{}: {e}", self.path.display()),
            }
        }
        &self.zone
    }
}

extern "C" fn exit_now(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

/// The cluster DNS server: answers on port 53 (UDP, and TCP in a thread of its own) from the
/// zone of the cluster in `cluster_dir`, until SIGTERM.
pub fn serve(cluster_dir: &Path) -> std::io::Result<()> {
    // It is PID 1 of its container: without a handler SIGTERM would be ignored.
    // SAFETY: installs a handler that only calls _exit.
    unsafe {
        libc::signal(libc::SIGTERM, exit_now as *const () as usize);
        libc::signal(libc::SIGINT, exit_now as *const () as usize);
    }
    let path = cluster_dir.join("dns.json");
    let udp = UdpSocket::bind(("0.0.0.0", 53))?;
    let tcp = TcpListener::bind(("0.0.0.0", 53))?;
    eprintln!(
        "serving {DOMAIN} on port 53 (UDP and TCP) from {}",
        path.display()
    );
    let tcp_path = path.clone();
    std::thread::spawn(move || {
        let mut records = Records {
            path: tcp_path,
            stamp: None,
            zone: Zone::default(),
        };
        for conn in tcp.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut conn = conn;
            loop {
                let mut len = [0u8; 2];
                if conn.read_exact(&mut len).is_err() {
                    break;
                }
                let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if conn.read_exact(&mut q).is_err() {
                    break;
                }
                let Some(a) = answer(records.current(), &q) else {
                    break;
                };
                let n = u16::try_from(a.len()).unwrap_or(u16::MAX).to_be_bytes();
                if conn
                    .write_all(&n)
                    .and_then(|()| conn.write_all(&a))
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    let mut records = Records {
        path,
        stamp: None,
        zone: Zone::default(),
    };
    let mut buf = [0u8; 1500];
    loop {
        let (n, from) = udp.recv_from(&mut buf)?;
        if let Some(mut a) = answer(records.current(), &buf[..n]) {
            if a.len() > 512 {
                // Too long for plain UDP: truncated, the client asks again over TCP.
                a[2] |= 0x02;
                a.truncate(12);
                a[6..12].fill(0);
            }
            let _ = udp.send_to(&a, from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        write_name(&mut q, name);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    fn zone() -> Zone {
        let mut z = Zone::default();
        z.add(
            "web.default.svc.cluster.local".into(),
            Record::A {
                ip: "10.96.0.11".parse().unwrap(),
            },
        );
        z
    }

    #[test]
    fn answers_refuses_and_denies_as_coredns() {
        let z = zone();
        let a = answer(&z, &query("Web.default.svc.cluster.local", TYPE_A)).unwrap();
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(a[3] & 0x0f, NOERROR);
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1);
        assert_eq!(&a[a.len() - 4..], &[10, 96, 0, 11]);
        let a = answer(&z, &query("web.default.svc.cluster.local", 28)).unwrap();
        assert_eq!(
            (a[3] & 0x0f, a[7]),
            (NOERROR, 0),
            "no AAAA: no data, not NXDOMAIN"
        );
        let a = answer(&z, &query("default.svc.cluster.local", TYPE_A)).unwrap();
        assert_eq!(a[3] & 0x0f, NOERROR, "a name above one that exists");
        let a = answer(&z, &query("nope.default.svc.cluster.local", TYPE_A)).unwrap();
        assert_eq!(a[3] & 0x0f, NXDOMAIN);
        let a = answer(&z, &query("example.com", TYPE_A)).unwrap();
        assert_eq!(a[3] & 0x0f, REFUSED);
        assert!(answer(&z, &[0; 5]).is_none());
        let mut bad = query("x.cluster.local", TYPE_A);
        bad.truncate(16);
        assert_eq!(answer(&z, &bad).unwrap()[3] & 0x0f, FORMERR);
    }
}
