//! The container runtime's network half, as containerd's CRI plugin does it: a pod sandbox is
//! a network namespace, attached by running the node's conflist through libcni-style
//! invocation ([`crate::cni::invoke`]) with the plugin processes inside the node's namespace,
//! and detached by DEL with the conflist and result cached at ADD.

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::events::Event;
use super::names;
use super::state::{now, remove_tree, result_ips, ClusterDir, ClusterSpec, PodRecord};
use super::{io_err, Error, Result};
use crate::cni::invoke::{ConfList, InvokeError, Runtime, RuntimeConf};
use crate::netns::{self, NetNs};

/// The pod's interface name, as kubelet asks for it.
pub const POD_IFNAME: &str = "eth0";

/// The conflist a runtime would load from `conf_dir`: the lexically first `.conflist`, as
/// libcni picks it. None until the agent has written one (the network is not ready).
pub fn conflist_path(conf_dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "conflist"))
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Where plugins are looked up: the cluster's own dirs (`up --cni-bin-dir`) first, then
/// beside the `flatnet` executable (a build or an install puts `flatnet-cni` there), the usual
/// CNI bin dirs, and last the dirs of PATH.
pub fn bin_dirs(first: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = first.to_vec();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    dirs.extend(["/opt/cni/bin", "/usr/lib/cni"].map(PathBuf::from));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path).filter(|d| d.is_absolute()));
    }
    dirs
}

/// The node that gets a new pod when none is asked for: the one with the fewest pods, the
/// lowest index on a tie.
pub fn schedule(spec: &ClusterSpec, pods: &[PodRecord]) -> Result<String> {
    spec.nodes
        .iter()
        .min_by_key(|n| (pods.iter().filter(|p| p.node == n.name).count(), n.index))
        .map(|n| n.name.clone())
        .ok_or_else(|| Error::Invalid(format!("cluster {:?} has no nodes", spec.name)))
}

/// Creates the sandbox of pod `name` in `namespace` on `node` and attaches it to the network.
/// The record is saved before the ADD, so that a crash in between still leaves something
/// `down` can DEL; if the ADD fails, the sandbox is removed again and the plugin's error
/// returned.
pub fn create_sandbox(
    dir: &ClusterDir,
    spec: &ClusterSpec,
    namespace: &str,
    name: &str,
    node: &str,
) -> Result<PodRecord> {
    names::validate_pod(name)?;
    names::validate_namespace(namespace)?;
    if dir.pod(namespace, name)?.is_some() {
        return Err(Error::Invalid(format!(
            "pods {name:?} already exists in namespace {namespace:?}"
        )));
    }
    let node_spec = spec.node(node).ok_or_else(|| {
        Error::Invalid(format!("node {node:?} is not in cluster {:?}", spec.name))
    })?;
    let conf_dir = dir.conf_dir(node);
    let conf_path = conflist_path(&conf_dir).ok_or_else(|| {
        Error::Invalid(format!(
            "the network of {node} is not ready: no conflist in {}",
            conf_dir.display()
        ))
    })?;
    let conflist_bytes =
        std::fs::read(&conf_path).map_err(io_err(format!("read {}", conf_path.display())))?;
    let conflist: Value = serde_json::from_slice(&conflist_bytes).map_err(|e| {
        Error::Cni(InvokeError::Conflist(format!(
            "{}: {e}",
            conf_path.display()
        )))
    })?;
    let list = ConfList::from_value(&conflist)?;

    let netns_name = names::pod_netns(&spec.name, namespace, name);
    let mut pod = PodRecord {
        name: name.to_string(),
        namespace: namespace.to_string(),
        labels: Default::default(),
        annotations: Default::default(),
        node: node.to_string(),
        container_id: container_id()?,
        netns: netns_name.clone(),
        ips: Vec::new(),
        conflist,
        result: None,
        created: now(),
        manifest: None,
        spec: None,
        supervisor: None,
    };
    dir.save_pod(&pod)?;
    let attached = (|| {
        netns::create_named(&netns_name).map_err(io_err(format!("create netns {netns_name}")))?;
        let rt = runtime(dir, &node_spec.netns)?;
        // CRI sets the new namespace's loopback up with the `loopback` plugin, before the
        // pod network; pods rely on 127.0.0.1 working.
        let lo = RuntimeConf {
            ifname: "lo".into(),
            ..runtime_conf(&pod, true)
        };
        rt.add(&loopback(), &lo)?;
        let result = rt.add(&list, &runtime_conf(&pod, true))?;
        Ok::<_, Error>(result)
    })();
    match attached {
        Ok(result) => {
            pod.ips = pod_ips(&result);
            pod.result = Some(result);
            dir.save_pod(&pod)?;
            let ips: Vec<String> = pod.ips.iter().map(|ip| ip.to_string()).collect();
            crate::emulator::events::record(
                &dir.pod_dir(&pod.namespace, &pod.name),
                &[
                    Event::normal(
                        "Scheduled",
                        format!(
                            "Successfully assigned {}/{} to {node}",
                            pod.namespace, pod.name
                        ),
                    ),
                    Event::normal(
                        "SandboxCreated",
                        format!("Pod sandbox created with IP {}", ips.join(", ")),
                    ),
                ],
            );
            Ok(pod)
        }
        Err(e) => {
            // Runtime::add leaves the undo to the runtime, as libcni does: DEL, then the rest.
            // A plugin that was not found never ran, so its DEL (which cannot be found
            // either) has nothing to undo: the sandbox goes all the same.
            let undone = match (remove_sandbox(dir, &pod), &e) {
                (
                    Err(Error::Cni(InvokeError::NotFound(missing, _))),
                    Error::Cni(InvokeError::NotFound(never_ran, _)),
                ) if missing == *never_ran => forget_sandbox(dir, &pod),
                (r, _) => r,
            };
            match undone {
                Ok(()) => Err(e),
                Err(u) => Err(Error::Invalid(format!(
                    "{e}; undoing it failed too, `flatnet delete pod {name} -n {namespace}` \
                     retries: {u}"
                ))),
            }
        }
    }
}

/// Removes a pod's sandbox without CNI DEL: its namespace, directory and record. Only for
/// when nothing the plugins made can outlive it (its node goes too, or they never ran).
pub fn forget_sandbox(dir: &ClusterDir, pod: &PodRecord) -> Result<()> {
    if netns::named_path(&pod.netns).exists() {
        netns::delete_named(&pod.netns).map_err(io_err(format!("delete netns {}", pod.netns)))?;
    }
    remove_tree(dir.pod_dir(&pod.namespace, &pod.name).path())?;
    dir.remove_pod(&pod.namespace, &pod.name)
}

/// Detaches the pod (CNI DEL with the cached conflist and result), then removes its
/// namespace, record and directory; its containers must be stopped first. A failed
/// DEL is returned before anything else goes, so that the IP stays reserved while its route
/// may still exist, and the caller can retry, as kubelet does.
pub fn remove_sandbox(dir: &ClusterDir, pod: &PodRecord) -> Result<()> {
    let list = ConfList::from_value(&pod.conflist)?;
    let path = netns::named_path(&pod.netns);
    // containerd's second DEL, after the sandbox's netns is gone, has an empty CNI_NETNS.
    let conf = runtime_conf(pod, path.exists());
    let node_ns = names::node_netns(dir.name(), &pod.node);
    match runtime(dir, &node_ns) {
        Ok(rt) => rt.del(&list, &conf, pod.result.as_ref())?,
        // Without its node there is no host side left to clean: the node's namespace took
        // the host veth and route with it, and its IPAM store goes with the node's state.
        Err(_) if !netns::named_path(&node_ns).exists() => {}
        Err(e) => return Err(e),
    }
    if path.exists() {
        netns::delete_named(&pod.netns).map_err(io_err(format!("delete netns {}", pod.netns)))?;
    }
    remove_tree(dir.pod_dir(&pod.namespace, &pod.name).path())?;
    dir.remove_pod(&pod.namespace, &pod.name)
}

fn runtime(dir: &ClusterDir, node_netns: &str) -> Result<Runtime> {
    let ns = NetNs::open(netns::named_path(node_netns))
        .map_err(io_err(format!("open netns {node_netns}")))?;
    // A cluster whose spec is lost still has its plugins in the usual places.
    let first = dir
        .load()
        .ok()
        .flatten()
        .map(|s| s.cni_bin_dirs)
        .unwrap_or_default();
    Ok(Runtime {
        bin_dirs: bin_dirs(&first),
        node_netns: Some(Arc::new(ns)),
    })
}

/// What kubelet and containerd tell the plugins about a pod.
fn runtime_conf(pod: &PodRecord, with_netns: bool) -> RuntimeConf {
    RuntimeConf {
        container_id: pod.container_id.clone(),
        netns: if with_netns {
            netns::named_path(&pod.netns).display().to_string()
        } else {
            String::new()
        },
        ifname: POD_IFNAME.into(),
        args: [
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", &pod.namespace),
            ("K8S_POD_NAME", &pod.name),
            ("K8S_POD_INFRA_CONTAINER_ID", &pod.container_id),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        runtime_config: Default::default(),
    }
}

/// The pod's addresses in an ADD result: every one of `ips`, in the result's order, as CRI
/// keeps them (it reports the first as the pod's IP and the rest as additional IPs).
pub fn pod_ips(result: &Value) -> Vec<IpAddr> {
    result_ips(result)
}

/// The network CRI gives every sandbox's `lo`, as containerd 1.6 writes it.
fn loopback() -> ConfList {
    ConfList {
        cni_version: "0.3.1".into(),
        name: "cni-loopback".into(),
        plugins: vec![[("type".to_string(), Value::from("loopback"))]
            .into_iter()
            .collect()],
    }
}

/// A new container ID: 64 random hex digits, as containerd makes them.
fn container_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_err("read /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::state::NodeSpec;

    fn node(name: &str, index: u32) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            index,
            node_ip: "172.18.0.2".parse().unwrap(),
            node_ip_v6: None,
            pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
            pod_cidr_v6: None,
            netns: String::new(),
            agent: None,
            created: 0,
            agent_restarts: 0,
            agent_restart_at: None,
        }
    }

    #[test]
    fn schedules_to_the_least_loaded_node() {
        let spec = ClusterSpec {
            name: "c".into(),
            state_version: crate::emulator::state::STATE_VERSION,
            ip_family: Default::default(),
            cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
            node_mask: 24,
            cluster_cidr_v6: None,
            node_mask_v6: 64,
            underlay: "172.18.0.0/16".parse().unwrap(),
            underlay_v6: None,
            created: 0,
            agent_resync_ms: 1000,
            agent_restart_backoff_ms: 1000,
            cni_bin_dirs: Vec::new(),
            controller: None,
            building: None,
            service_cidr: crate::emulator::state::default_service_cidr(),
            overlay: Default::default(),
            nodes: vec![node("node-1", 1), node("node-2", 2), node("node-3", 3)],
        };
        assert_eq!(schedule(&spec, &[]).unwrap(), "node-1");
        let pods = [
            PodRecord::fixture("a", "node-1"),
            PodRecord::fixture("b", "node-3"),
        ];
        assert_eq!(schedule(&spec, &pods).unwrap(), "node-2");
    }

    #[test]
    fn reads_every_pod_ip_of_every_result_version() {
        let v1: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","ips":[{"address":"10.244.1.2/32","gateway":"10.244.1.1"}]}"#,
        )
        .unwrap();
        assert_eq!(pod_ips(&v1), ["10.244.1.2".parse::<IpAddr>().unwrap()]);
        let v03: Value = serde_json::from_str(
            r#"{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.244.1.3/32"}]}"#,
        )
        .unwrap();
        assert_eq!(pod_ips(&v03), ["10.244.1.3".parse::<IpAddr>().unwrap()]);
        assert!(pod_ips(&Value::Null).is_empty());
        // Dual-stack, in the result's order, whichever family comes first.
        let dual: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","ips":[{"address":"fd00:10:244:1::2/128"},
               {"address":"10.244.1.2/32"}]}"#,
        )
        .unwrap();
        let ips = pod_ips(&dual);
        assert_eq!(ips.len(), 2);
        assert_eq!(ips[0], "fd00:10:244:1::2".parse::<IpAddr>().unwrap());
        assert_eq!(ips[1], "10.244.1.2".parse::<IpAddr>().unwrap());
        // A record written before records kept every address reads them from its result.
        let mut old = PodRecord::fixture("old", "node-1");
        old.result = Some(dual);
        let json = serde_json::to_value(&old).unwrap();
        let mut json = json.as_object().unwrap().clone();
        json.remove("ips");
        json.insert("ip".into(), "10.244.1.2".into());
        let dir = tempfile::tempdir().unwrap();
        let cluster = crate::emulator::state::StateRoot::new(dir.path()).cluster("c");
        std::fs::create_dir_all(cluster.path().join("pods/default")).unwrap();
        std::fs::write(
            cluster.path().join("pods/default/old.json"),
            serde_json::to_vec(&json).unwrap(),
        )
        .unwrap();
        assert_eq!(cluster.pod("default", "old").unwrap().unwrap().ips, ips);
    }

    #[test]
    fn container_ids_are_64_hex_digits() {
        let id = container_id().unwrap();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, container_id().unwrap());
    }
}
