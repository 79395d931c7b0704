//! The node's CNI network configuration. Its appearance is the signal a container runtime
//! takes for "the network is ready", so the agent writes it only once the node's routes are in
//! place, and rewrites it only when its content changes (every rewrite is an event for the
//! runtime's watcher).

use std::io;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::fsutil::write_atomic;

/// The file name: runtimes load the lexically first conflist, and `10-` is the usual rank of a
/// primary network.
pub const FILE_NAME: &str = "10-flatnet.conflist";

/// The conflist's path in `conf_dir`.
pub fn path(conf_dir: &Path) -> PathBuf {
    conf_dir.join(FILE_NAME)
}

// Structs rather than `json!`: serde_json's map sorts keys, and the file should read in the
// order people write it (type first).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfList<'a> {
    cni_version: &'static str,
    name: &'static str,
    plugins: [Plugin<'a>; 1],
}

#[derive(Serialize)]
struct Plugin<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "podCIDRs")]
    pod_cidrs: Vec<IpNetwork>,
    #[serde(rename = "dataDir")]
    data_dir: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(rename = "logFile", skip_serializing_if = "Option::is_none")]
    log_file: Option<&'a str>,
}

/// The conflist for a node whose pods take addresses from `pod_cidrs` (its
/// `Node.spec.podCIDRs`: one per family, the primary first). `data_dir` is a string, not a
/// path, because the plugin reads it from JSON, which cannot carry a non-UTF-8 path. Host bits
/// are dropped: the plugin rejects a CIDR that has them.
pub fn render(
    pod_cidrs: &[IpNetwork],
    data_dir: &str,
    mtu: Option<u32>,
    log_file: Option<&str>,
) -> String {
    let conf = ConfList {
        cni_version: "1.0.0",
        name: "flatnet",
        plugins: [Plugin {
            kind: "flatnet-cni",
            pod_cidrs: pod_cidrs.iter().map(|c| network(*c)).collect(),
            data_dir,
            mtu,
            log_file,
        }],
    };
    serde_json::to_string(&conf).expect("a conflist of strings and numbers serializes")
}

/// `cidr` with its host bits cleared.
pub(crate) fn network(cidr: IpNetwork) -> IpNetwork {
    IpNetwork::new(cidr.network(), cidr.prefix()).expect("same prefix length is valid")
}

/// Writes `content` to the conflist unless it already holds exactly that. Returns whether it
/// wrote.
pub fn ensure(conf_dir: &Path, content: &str) -> io::Result<bool> {
    let path = path(conf_dir);
    match std::fs::read(&path) {
        Ok(old) if old == content.as_bytes() => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    write_atomic(&path, content.as_bytes())?;
    Ok(true)
}

/// Removes the conflist; absent is fine.
pub fn remove(conf_dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(path(conf_dir)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_exactly() {
        let cidr = ["10.244.1.0/24".parse().unwrap()];
        assert_eq!(
            render(&cidr, "/var/lib/flatnet", None, None),
            r#"{"cniVersion":"1.0.0","name":"flatnet","plugins":[{"type":"flatnet-cni","podCIDRs":["10.244.1.0/24"],"dataDir":"/var/lib/flatnet"}]}"#
        );
        assert_eq!(
            render(&cidr, "/d", Some(1450), Some("/l.log")),
            r#"{"cniVersion":"1.0.0","name":"flatnet","plugins":[{"type":"flatnet-cni","podCIDRs":["10.244.1.0/24"],"dataDir":"/d","mtu":1450,"logFile":"/l.log"}]}"#
        );
        let dual = [
            "fd00:10:244:1::/64".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
        ];
        assert!(render(&dual, "/d", None, None)
            .contains(r#""podCIDRs":["fd00:10:244:1::/64","10.244.1.0/24"]"#));
    }

    #[test]
    fn host_bits_are_dropped() {
        let s = render(
            &[
                "10.244.1.7/24".parse().unwrap(),
                "fd00:10:244:1::7/64".parse().unwrap(),
            ],
            "/d",
            None,
            None,
        );
        assert!(
            s.contains(r#""podCIDRs":["10.244.1.0/24","fd00:10:244:1::/64"]"#),
            "{s}"
        );
    }

    #[test]
    fn the_plugin_accepts_it() {
        let s = render(
            &["10.244.1.0/24".parse().unwrap()],
            "/var/lib/flatnet",
            Some(1400),
            Some("/var/log/flatnet-cni.log"),
        );
        let list = crate::cni::invoke::ConfList::parse(s.as_bytes()).unwrap();
        assert_eq!(list.plugins[0]["type"], "flatnet-cni");
        // What the runtime hands the plugin: its object with the list's name and version.
        let mut stdin = list.plugins[0].clone();
        stdin.insert("name".into(), list.name.into());
        stdin.insert("cniVersion".into(), list.cni_version.into());
        let conf = crate::cni::config::NetConf::from_map(&stdin).unwrap();
        assert_eq!(conf.pod_cidr, "10.244.1.0/24".parse().unwrap());
        assert_eq!(conf.data_dir, std::path::Path::new("/var/lib/flatnet"));
        assert_eq!(conf.mtu, Some(1400));
        assert_eq!(
            conf.log_file,
            std::path::Path::new("/var/log/flatnet-cni.log")
        );
    }

    /// The conflist shipped in examples/ is what the README tells users to install.
    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../examples/10-flatnet.conflist");
        let list = crate::cni::invoke::ConfList::parse(text.as_bytes()).unwrap();
        assert_eq!(list.cni_version, "1.0.0");
        let mut stdin = list.plugins[0].clone();
        stdin.insert("name".into(), list.name.into());
        stdin.insert("cniVersion".into(), list.cni_version.into());
        let conf = crate::cni::config::NetConf::from_map(&stdin).unwrap();
        assert_eq!(conf.pod_cidr, "10.244.1.0/24".parse().unwrap());
        assert_eq!(conf.mtu, Some(1500));
    }

    #[test]
    fn ensure_writes_only_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net.d");
        assert!(ensure(&dir, "a").unwrap());
        assert!(!ensure(&dir, "a").unwrap());
        assert!(ensure(&dir, "b").unwrap());
        assert_eq!(std::fs::read_to_string(path(&dir)).unwrap(), "b");
        remove(&dir).unwrap();
        remove(&dir).unwrap();
        assert!(!path(&dir).exists());
    }
}
