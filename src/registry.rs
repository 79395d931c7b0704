//! The emulator's node registry: the cluster's list of nodes, as the agent reads it. One JSON
//! file per node in one directory, each replaced atomically, so a reader watching the directory
//! sees whole records only. (In a real cluster the Kubernetes API plays this role.)
//!
//! What NetworkPolicy needs lives beside them, the same way, in one subdirectory per kind
//! ([`Kind`]): `pods/<namespace>_<name>.json`, `namespaces/<name>.json`,
//! `policies/<namespace>_<name>.json` (a networking.k8s.io/v1 NetworkPolicy document).

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnetwork::{IpNetwork, Ipv4Network};
use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;

/// One node: what every other node needs to route to its pods. This is the agent's view, the
/// same whether it comes from the emulator's registry or from a Kubernetes Node; the emulator's
/// own record of a node (its namespace, its agent process) is `emulator::state::NodeSpec`,
/// which the agent never sees.
///
/// Families follow Kubernetes: `pod_cidrs` is `Node.spec.podCIDRs` (at most one per family, in
/// the node's order; the first is the primary), `node_ips` the Node's `InternalIP` addresses.
/// Whether a record keeps to that is for the agent to judge ([`crate::agent::validate`]), not
/// for the parser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    #[serde(rename = "nodeIPs")]
    pub node_ips: Vec<IpAddr>,
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<IpNetwork>,
    /// When the node joined, in seconds since the epoch (`metadata.creationTimestamp`): of two
    /// records claiming one range, the older keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
    /// Each node IP with the prefix length of its link (`172.18.1.2/16`, as `ip addr` shows
    /// it), at most one per family; absent means unknown. Peers read it to decide direct or
    /// tunnel the same way this node does (see `agent::overlay`).
    #[serde(
        default,
        rename = "nodeNetworks",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub node_networks: Vec<IpNetwork>,
}

impl NodeRecord {
    /// A single-stack IPv4 node, as most tests and the emulator's default cluster have.
    pub fn v4(name: &str, node_ip: Ipv4Addr, pod_cidr: Ipv4Network) -> NodeRecord {
        NodeRecord {
            name: name.to_string(),
            node_ips: vec![node_ip.into()],
            pod_cidrs: vec![pod_cidr.into()],
            created: None,
            node_networks: Vec::new(),
        }
    }

    /// The node's address of the family of `of`.
    pub fn node_ip(&self, of: IpNetwork) -> Option<IpAddr> {
        self.node_ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == of.is_ipv4())
    }

    /// The node's IPv4 pod CIDR, if it has one.
    pub fn pod_cidr_v4(&self) -> Option<Ipv4Network> {
        self.pod_cidrs.iter().find_map(|c| match c {
            IpNetwork::V4(v4) => Some(*v4),
            IpNetwork::V6(_) => None,
        })
    }
}

/// A registry directory.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    pub fn new(dir: impl Into<PathBuf>) -> Registry {
        Registry { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Adds or replaces a node.
    pub fn put(&self, node: &NodeRecord) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(node).map_err(io::Error::other)?;
        write_atomic(&self.path(&node.name), &json)
    }

    /// Removes a node; absent is fine.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every record, sorted by key (the file name without `.json`), each as read: a record,
    /// or why it cannot be one. Files that are not records (editor droppings, temp files
    /// starting with '.') are not listed; a `.json` file that does not parse is, as unreadable,
    /// so the agent can tell it from a node that left.
    pub fn list(&self) -> io::Result<Vec<Listed>> {
        Ok(read_records::<NodeRecord>(&self.dir)?
            .into_iter()
            .map(|(key, record)| Listed { key, record })
            .collect())
    }
}

/// A kind of object the registry holds besides node records, each in its own subdirectory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pods,
    Namespaces,
    Policies,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Pods, Kind::Namespaces, Kind::Policies];

    pub fn dir_name(self) -> &'static str {
        match self {
            Kind::Pods => "pods",
            Kind::Namespaces => "namespaces",
            Kind::Policies => "policies",
        }
    }
}

/// The key of a namespaced object in the registry: `_` is in no Kubernetes name, so two
/// namespaces' objects of one name never meet.
pub fn namespaced_key(namespace: &str, name: &str) -> String {
    format!("{namespace}_{name}")
}

impl Registry {
    /// The subdirectory of `kind`.
    pub fn kind_dir(&self, kind: Kind) -> PathBuf {
        self.dir.join(kind.dir_name())
    }

    /// Adds or replaces an object of `kind` under `key`, as JSON.
    pub fn put_object<T: Serialize>(&self, kind: Kind, key: &str, value: &T) -> io::Result<()> {
        let dir = self.kind_dir(kind);
        std::fs::create_dir_all(&dir)?;
        let json = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
        let path = dir.join(format!("{key}.json"));
        // Unchanged records are not rewritten: every write wakes every agent.
        if std::fs::read(&path).is_ok_and(|old| old == json) {
            return Ok(());
        }
        write_atomic(&path, &json)
    }

    /// Removes an object; absent is fine.
    pub fn remove_object(&self, kind: Kind, key: &str) -> io::Result<()> {
        match std::fs::remove_file(self.kind_dir(kind).join(format!("{key}.json"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every object of `kind`, sorted by key, each as read (or why it is unreadable).
    pub fn objects<T: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
    ) -> io::Result<Vec<(String, Result<T, String>)>> {
        read_records(&self.kind_dir(kind))
    }

    /// One object of `kind`: None when there is none under `key` (or `key` names no record:
    /// empty, a temp file's name, or a path), else as read.
    pub fn object<T: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        key: &str,
    ) -> Option<Result<T, String>> {
        if !is_key(key) || key.contains('/') {
            return None;
        }
        match std::fs::read(self.kind_dir(kind).join(format!("{key}.json"))) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            read => Some(
                read.map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())),
            ),
        }
    }

    /// The keys of `kind`'s objects, unread, sorted.
    pub fn object_keys(&self, kind: Kind) -> io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(self.kind_dir(kind)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut keys = Vec::new();
        for entry in entries {
            if let Some(key) = record_key(&entry?.file_name()) {
                keys.push(key.to_string());
            }
        }
        keys.sort();
        Ok(keys)
    }
}

/// The key of a record file's name: the name without `.json`, unless it is a temp file
/// (starting with '.') or has no name left.
pub fn record_key(file_name: &std::ffi::OsStr) -> Option<&str> {
    file_name
        .to_str()
        .and_then(|n| n.strip_suffix(".json"))
        .filter(|k| is_key(k))
}

fn is_key(k: &str) -> bool {
    !k.is_empty() && !k.starts_with('.')
}

/// The `.json` files of `dir` (not a temp file, starting with '.'), sorted by key (the name
/// without `.json`), each as read: a `T`, or why it cannot be one. An absent directory holds
/// nothing.
fn read_records<T: serde::de::DeserializeOwned>(
    dir: &Path,
) -> io::Result<Vec<(String, Result<T, String>)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(key) = path.file_name().and_then(record_key) else {
            continue;
        };
        let value = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<T>(&b).map_err(|e| e.to_string()));
        out.push((key.to_string(), value));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// One entry of a node list as a source read it: the key it is stored under (the registry's
/// file name, the Kubernetes Node's name) and the record, or why it is not a valid one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub record: Result<NodeRecord, String>,
}

impl Listed {
    pub fn valid(record: NodeRecord) -> Listed {
        Listed {
            key: record.name.clone(),
            record: Ok(record),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_list_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let reg = Registry::new(&dir);
        let n = NodeRecord {
            name: "node-1".into(),
            node_ips: vec![
                "172.18.0.2".parse().unwrap(),
                "fc00:f853:ccd:e793::2".parse().unwrap(),
            ],
            pod_cidrs: vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd00:10:244:1::/64".parse().unwrap(),
            ],
            created: Some(1_800_000_000),
            node_networks: vec!["172.18.0.2/16".parse().unwrap()],
        };
        reg.put(&n).unwrap();
        std::fs::write(dir.join(".node-2.json.tmp.1"), "{").unwrap();
        std::fs::write(dir.join("notes.txt"), "{").unwrap();
        assert_eq!(reg.list().unwrap(), vec![Listed::valid(n)]);
        std::fs::write(dir.join("node-3.json"), "{").unwrap();
        let listed = reg.list().unwrap();
        assert_eq!(listed[1].key, "node-3");
        assert!(listed[1].record.is_err(), "{listed:?}");
        std::fs::remove_file(dir.join("node-3.json")).unwrap();
        std::fs::remove_file(dir.join("notes.txt")).unwrap();
        reg.remove("node-1").unwrap();
        reg.remove("node-1").unwrap();
        assert!(reg.list().unwrap().is_empty());
    }
}
