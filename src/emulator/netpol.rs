//! NetworkPolicy in the emulator: `apply` keeps networking.k8s.io/v1 NetworkPolicy documents
//! in the state dir (`networkpolicies/<namespace>/<name>.json`), and every command that
//! changes pods, namespaces, labels or policies publishes what the agents need into the
//! registry beside the node records (see [`crate::registry::Kind`]): each pod's addresses,
//! labels, node and named ports, each namespace's labels, each policy. The agents enforce
//! them; the emulator only stores and hands out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::Value;

use super::cluster::Cluster;
use super::documents;
use super::manifest::LAST_APPLIED;
use super::objects::Outcome;
use super::state::{ClusterDir, NamespaceRecord, PodRecord};
use super::{io_err, names, Result};
use crate::agent::policy::model::{NamedPort, Protocol};
use crate::agent::policy::{NamespaceInfo, PodInfo, Policy};
use crate::registry::{namespaced_key, Kind, Registry};

/// A NetworkPolicy document of a manifest, checked as the API server validates it.
#[derive(Debug, Clone)]
pub struct PolicyManifest {
    pub name: String,
    /// `metadata.namespace`, if the document says.
    pub namespace: Option<String>,
    /// The document as written.
    pub raw: Value,
}

/// Reads and checks one NetworkPolicy document.
pub fn parse(raw: Value) -> std::result::Result<PolicyManifest, String> {
    let np: NetworkPolicy = serde_path_to_error::deserialize(&raw).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })?;
    let name = np.metadata.name.clone().ok_or("metadata.name: required")?;
    if let Some(ns) = &np.metadata.namespace {
        names::validate_namespace(ns).map_err(|e| format!("metadata.namespace: {e}"))?;
    }
    let mut checked = np.clone();
    checked
        .metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    Policy::from_k8s(&checked)?;
    Ok(PolicyManifest {
        name,
        namespace: np.metadata.namespace,
        raw,
    })
}

fn policies_dir(dir: &ClusterDir) -> PathBuf {
    dir.path().join("networkpolicies")
}

fn policy_path(dir: &ClusterDir, ns: &str, name: &str) -> PathBuf {
    policies_dir(dir).join(ns).join(format!("{name}.json"))
}

impl Cluster {
    /// Creates or updates the policy `m` in `ns`; `last_applied` is kubectl's annotation.
    pub(crate) fn apply_policy(
        &self,
        m: &PolicyManifest,
        ns: &str,
        last_applied: String,
    ) -> Result<Outcome> {
        let live = self.policy(ns, &m.name)?;
        let mut doc = m.raw.clone();
        let meta = &mut doc["metadata"];
        meta["namespace"] = ns.into();
        meta["annotations"][LAST_APPLIED] = last_applied.into();
        meta["creationTimestamp"] = documents::created(live.as_ref()).into();
        documents::store(&policy_path(self.dir(), ns, &m.name), live.as_ref(), &doc)
    }

    /// One stored policy document.
    pub fn policy(&self, ns: &str, name: &str) -> Result<Option<Value>> {
        documents::read(&policy_path(self.dir(), ns, name))
    }

    /// Every stored policy document, sorted by namespace and name.
    pub fn policies(&self) -> Result<Vec<Value>> {
        Ok(documents::read_all(
            &policies_dir(self.dir()),
            "NetworkPolicy",
            |_| Ok(()),
        ))
    }

    /// Deletes policies of `ns` by name; returns those not found. The agents learn at once.
    pub fn delete_policies(&self, ns: &str, list: &[String]) -> Result<Vec<String>> {
        let _lock = self.dir().lock()?;
        self.spec()?;
        let mut missing = Vec::new();
        for name in list {
            let path = policy_path(self.dir(), ns, name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(name.clone()),
                Err(e) => return Err(io_err(format!("remove {}", path.display()))(e)),
            }
        }
        publish_policies(self.dir(), list.iter().map(|n| (ns, n.as_str())))?;
        Ok(missing)
    }

    /// Removes every policy of namespace `ns` (the namespace is going).
    pub(crate) fn remove_namespace_policies(&self, ns: &str) -> Result<()> {
        super::state::remove_tree(&policies_dir(self.dir()).join(ns))
    }

    /// The policies in force as the agents see them: the registry's records, judged as an
    /// agent judges them.
    pub fn policy_view(&self) -> Result<crate::agent::policy::View> {
        let reg = Registry::new(self.dir().registry());
        let objects = crate::agent::policy::Objects::from_registry(&reg)
            .map_err(io_err(format!("read {}", reg.dir().display())))?;
        Ok(crate::agent::policy::Judge::default().judge(&objects).0)
    }

    /// Writes what the agents need for NetworkPolicy into the registry (pods, namespaces,
    /// policies), and removes what is no longer there: the whole of it, every record read.
    /// Commands publish only what they changed ([`publish_pods`] and its siblings); this is
    /// for those that change too much to list, and the controller's periodic repair (a
    /// command killed between its change and its publish leaves the registry behind until
    /// then). Called under the cluster lock; unchanged records are not rewritten.
    pub fn publish(&self) -> Result<()> {
        let reg = Registry::new(self.dir().registry());
        let pods: BTreeMap<String, PodInfo> = self
            .dir()
            .pods()?
            .iter()
            .filter_map(|p| Some((namespaced_key(&p.namespace, &p.name), pod_info(p)?)))
            .collect();
        let namespaces: BTreeMap<String, NamespaceInfo> = self
            .dir()
            .namespaces()?
            .into_iter()
            .map(|n| (n.name.clone(), namespace_info(n)))
            .collect();
        let policies: BTreeMap<String, Value> = self
            .policies()?
            .into_iter()
            .map(|v| {
                let ns = v["metadata"]["namespace"].as_str().unwrap_or_default();
                let name = v["metadata"]["name"].as_str().unwrap_or_default();
                (namespaced_key(ns, name), policy_object(v))
            })
            .collect();
        sync(&reg, Kind::Pods, &pods)?;
        sync(&reg, Kind::Namespaces, &namespaces)?;
        sync(&reg, Kind::Policies, &policies)
    }
}

/// Publishes the pods `(namespace, name)` as they are stored now: each one stored with an
/// address is written, any other removed. A command that made, relabelled or deleted pods
/// names them here, so that publishing costs what it changed, not what the cluster holds.
pub(crate) fn publish_pods<'a>(
    dir: &ClusterDir,
    pods: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<()> {
    let reg = Registry::new(dir.registry());
    for (ns, name) in pods {
        let info = dir.pod(ns, name)?.as_ref().and_then(pod_info);
        put_or_remove(&reg, Kind::Pods, &namespaced_key(ns, name), info.as_ref())?;
    }
    Ok(())
}

/// Publishes the namespaces `names` as they are stored now (removed if gone).
pub(crate) fn publish_namespaces<'a>(
    dir: &ClusterDir,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    let reg = Registry::new(dir.registry());
    for name in names {
        let info = dir.namespace(name)?.map(namespace_info);
        put_or_remove(&reg, Kind::Namespaces, name, info.as_ref())?;
    }
    Ok(())
}

/// Publishes the policies `(namespace, name)` as they are stored now (removed if gone).
pub(crate) fn publish_policies<'a>(
    dir: &ClusterDir,
    policies: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<()> {
    let reg = Registry::new(dir.registry());
    for (ns, name) in policies {
        let doc = documents::read(&policy_path(dir, ns, name))?.map(policy_object);
        put_or_remove(
            &reg,
            Kind::Policies,
            &namespaced_key(ns, name),
            doc.as_ref(),
        )?;
    }
    Ok(())
}

/// A pod as policies see it; None before the network gave it an address.
fn pod_info(p: &PodRecord) -> Option<PodInfo> {
    if p.ips.is_empty() {
        return None;
    }
    let ports = p
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| &c.ports)
        .filter_map(|port| {
            Some(NamedPort {
                name: port.name.clone()?,
                port: port.container_port,
                protocol: Protocol::parse(&port.protocol).ok()?,
            })
        })
        .collect();
    Some(PodInfo {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        labels: p.labels.clone(),
        ips: p.ips.clone(),
        node: p.node.clone(),
        ports,
    })
}

fn namespace_info(n: NamespaceRecord) -> NamespaceInfo {
    NamespaceInfo {
        name: n.name,
        labels: n.labels,
    }
}

/// A stored policy as the agents get it: without kubectl's bookkeeping.
fn policy_object(mut v: Value) -> Value {
    if let Some(a) = v["metadata"]["annotations"].as_object_mut() {
        a.remove(LAST_APPLIED);
    }
    v
}

fn put_or_remove<T: serde::Serialize>(
    reg: &Registry,
    kind: Kind,
    key: &str,
    value: Option<&T>,
) -> Result<()> {
    let op = || format!("publish {}", reg.kind_dir(kind).join(key).display());
    match value {
        Some(v) => reg.put_object(kind, key, v).map_err(io_err(op())),
        None => reg.remove_object(kind, key).map_err(io_err(op())),
    }
}

fn sync<T: serde::Serialize>(reg: &Registry, kind: Kind, want: &BTreeMap<String, T>) -> Result<()> {
    let dir = reg.kind_dir(kind);
    let op = || format!("publish {}", dir.display());
    for (key, value) in want {
        reg.put_object(kind, key, value).map_err(io_err(op()))?;
    }
    // Only the names: what is not wanted goes unread.
    for key in reg.object_keys(kind).map_err(io_err(op()))? {
        if !want.contains_key(&key) {
            reg.remove_object(kind, &key).map_err(io_err(op()))?;
        }
    }
    Ok(())
}

/// Seconds since the epoch as RFC 3339 (UTC), as the API server writes timestamps.
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, labels: &[(&str, &str)], ip: Option<&str>) -> PodRecord {
        PodRecord {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ips: ip.iter().map(|ip| ip.parse().unwrap()).collect(),
            ..PodRecord::fixture(name, "node-1")
        }
    }

    fn published(reg: &Registry) -> BTreeMap<String, PodInfo> {
        reg.objects::<PodInfo>(Kind::Pods)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.unwrap()))
            .collect()
    }

    /// A command publishes only the pods it names, each as stored now: a new one appears,
    /// a relabelled one changes, a deleted one (or one without an address yet) goes, and
    /// pods it does not name are left as they were until the next full publish.
    #[test]
    fn publishing_named_pods_writes_them_as_stored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = super::super::state::StateRoot::new(tmp.path()).cluster("c");
        let reg = Registry::new(dir.registry());
        dir.save_pod(&pod("a", &[("app", "web")], Some("10.244.1.2")))
            .unwrap();
        dir.save_pod(&pod("b", &[], None)).unwrap();
        publish_pods(&dir, [("default", "a"), ("default", "b")]).unwrap();
        let got = published(&reg);
        assert_eq!(got.keys().collect::<Vec<_>>(), ["default_a"]);
        assert_eq!(got["default_a"].labels["app"], "web");

        dir.save_pod(&pod("a", &[("app", "db")], Some("10.244.1.2")))
            .unwrap();
        dir.save_pod(&pod("b", &[], Some("10.244.1.3"))).unwrap();
        publish_pods(&dir, [("default", "a")]).unwrap();
        let got = published(&reg);
        assert_eq!(got["default_a"].labels["app"], "db");
        assert!(!got.contains_key("default_b"), "b was not named: {got:?}");
        publish_pods(&dir, [("default", "b")]).unwrap();
        assert!(published(&reg).contains_key("default_b"));

        dir.remove_pod("default", "a").unwrap();
        publish_pods(&dir, [("default", "a")]).unwrap();
        assert_eq!(published(&reg).keys().collect::<Vec<_>>(), ["default_b"]);
    }

    /// What a command killed before its publish left behind, the full publish repairs: a
    /// stale pod goes, a missing one comes, an unchanged record is not rewritten.
    #[test]
    fn a_full_publish_repairs_what_a_command_left_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = super::super::state::StateRoot::new(tmp.path()).cluster("c");
        let reg = Registry::new(dir.registry());
        dir.save_pod(&pod("a", &[], Some("10.244.1.2"))).unwrap();
        dir.save_pod(&pod("b", &[], Some("10.244.1.3"))).unwrap();
        publish_pods(&dir, [("default", "a"), ("default", "b")]).unwrap();
        let a_path = reg.kind_dir(Kind::Pods).join("default_a.json");
        let written = std::fs::metadata(&a_path).unwrap().modified().unwrap();
        // Killed between these: b's record gone, c's made, neither published.
        dir.remove_pod("default", "b").unwrap();
        dir.save_pod(&pod("c", &[], Some("10.244.1.4"))).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let cluster = Cluster::new(&super::super::state::StateRoot::new(tmp.path()), "c").unwrap();
        cluster.publish().unwrap();
        assert_eq!(
            published(&reg).keys().collect::<Vec<_>>(),
            ["default_a", "default_c"]
        );
        assert_eq!(
            std::fs::metadata(&a_path).unwrap().modified().unwrap(),
            written
        );
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn documents_are_checked_as_the_api_server_does() {
        let doc = |spec: &str| -> Value {
            serde_norway::from_str(&format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p}}\nspec: {spec}\n"
            ))
            .unwrap()
        };
        assert!(parse(doc("{podSelector: {}}")).is_ok());
        let e = parse(doc(
            "{podSelector: {}, ingress: [{ports: [{port: 80, endPort: 70}]}]}",
        ))
        .unwrap_err();
        assert!(e.contains("spec.ingress[0].ports[0]: endPort"), "{e}");
        let e = parse(doc(
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]}]}",
        ))
        .unwrap_err();
        assert!(e.contains("except[0]"), "{e}");
        let e = parse(doc("{podSelector: {}, egress: [{to: [{}]}]}")).unwrap_err();
        assert!(e.contains("spec.egress[0].peers[0]"), "{e}");
    }
}
