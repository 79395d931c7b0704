//! How the emulator names what it creates. Every namespace is `flatnet-<cluster>-<what>`, so a
//! cluster's namespaces can be found from the name alone, after a crash that lost the state dir.

use super::{Error, Result};

const NETNS_PREFIX: &str = "flatnet-";

/// Words a cluster name may not contain (between dashes): they end the cluster part of a
/// namespace name, so allowing them would let cluster `a`'s patterns match cluster `a-pod`'s
/// namespaces, and `down` of one would delete the other's.
const RESERVED_WORDS: [&str; 3] = ["pod", "node", "underlay"];

/// A cluster name: a DNS label of at most 40 bytes without the reserved words.
pub fn validate_cluster(name: &str) -> Result<()> {
    if !is_dns_label(name, 40) {
        return Err(Error::Invalid(format!(
            "invalid cluster name {name:?}: use at most 40 lowercase letters, digits and '-', \
             starting and ending with a letter or digit"
        )));
    }
    if let Some(w) = name.split('-').find(|w| RESERVED_WORDS.contains(w)) {
        return Err(Error::Invalid(format!(
            "invalid cluster name {name:?}: the word {w:?} is reserved"
        )));
    }
    Ok(())
}

/// A pod name: a DNS label, as Kubernetes requires.
pub fn validate_pod(name: &str) -> Result<()> {
    if is_dns_label(name, 63) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid pod name {name:?}: use at most 63 lowercase letters, digits and '-', \
             starting and ending with a letter or digit"
        )))
    }
}

/// A namespace name: a DNS label, as Kubernetes requires.
pub fn validate_namespace(name: &str) -> Result<()> {
    if is_dns_label(name, 63) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid namespace name {name:?}: use at most 63 lowercase letters, digits and '-', \
             starting and ending with a letter or digit"
        )))
    }
}

fn is_dns_label(s: &str, max: usize) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(ok_char)
        && s.ends_with(ok_char)
        && s.chars().all(|c| ok_char(c) || c == '-')
}

/// Node `index` (from 1) is called `node-<index>`.
pub fn node_name(index: u32) -> String {
    format!("node-{index}")
}

/// The index in a node name made by [`node_name`].
pub fn node_index(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("node-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|i| *i > 0)
}

pub fn underlay_netns(cluster: &str) -> String {
    format!("{NETNS_PREFIX}{cluster}-underlay")
}

pub fn node_netns(cluster: &str, node: &str) -> String {
    format!("{NETNS_PREFIX}{cluster}-{node}")
}

/// `flatnet-<cluster>-pod-<namespace>_<pod>`: `_` is in neither name, so pods of the same name
/// in two namespaces never share a network namespace.
pub fn pod_netns(cluster: &str, namespace: &str, pod: &str) -> String {
    format!("{NETNS_PREFIX}{cluster}-pod-{namespace}_{pod}")
}

/// Whether the namespace `netns` is one the emulator makes for `cluster`.
pub fn is_cluster_netns(cluster: &str, netns: &str) -> bool {
    let Some(rest) = netns
        .strip_prefix(NETNS_PREFIX)
        .and_then(|r| r.strip_prefix(cluster))
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    rest == "underlay"
        || node_index(rest).is_some()
        || rest.strip_prefix("pod-").is_some_and(|p| {
            // Older flatnets named a pod's namespace without its Kubernetes namespace.
            let (ns, pod) = p.split_once('_').unwrap_or(("default", p));
            validate_namespace(ns).is_ok() && validate_pod(pod).is_ok()
        })
}

/// The node a namespace of `cluster` belongs to, if it is a node's.
pub fn netns_node(cluster: &str, netns: &str) -> Option<String> {
    let rest = netns
        .strip_prefix(NETNS_PREFIX)?
        .strip_prefix(cluster)?
        .strip_prefix('-')?;
    node_index(rest).map(|_| rest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names() {
        for ok in ["default", "fnt123-4", "a", "a-b2"] {
            validate_cluster(ok).unwrap();
        }
        for bad in [
            "",
            "A",
            "-a",
            "a-",
            "a_b",
            "a-pod",
            "node-x",
            "x-underlay-y",
            &"a".repeat(41),
        ] {
            assert!(validate_cluster(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_clusters_namespaces_never_match_anothers() {
        let a = [
            underlay_netns("a"),
            node_netns("a", "node-1"),
            pod_netns("a", "default", "web"),
            "flatnet-a-pod-web".into(),
        ];
        let ab = [
            underlay_netns("a-b"),
            node_netns("a-b", "node-1"),
            pod_netns("a-b", "kube-system", "web"),
        ];
        for n in &a {
            assert!(is_cluster_netns("a", n), "{n}");
            assert!(!is_cluster_netns("a-b", n), "{n}");
        }
        for n in &ab {
            assert!(is_cluster_netns("a-b", n), "{n}");
            assert!(!is_cluster_netns("a", n), "{n}");
        }
        assert!(!is_cluster_netns("a", "flatnet-a-node-1x"));
        assert!(!is_cluster_netns("a", "flatnet-ab-underlay"));
        assert_eq!(
            netns_node("a", &node_netns("a", "node-12")).as_deref(),
            Some("node-12")
        );
        assert_eq!(netns_node("a", &pod_netns("a", "x", "node-1")), None);
        assert_ne!(pod_netns("a", "x", "web"), pod_netns("a", "y", "web"));
        assert!(!is_cluster_netns("a", "flatnet-a-pod-x_y_z"));
    }

    #[test]
    fn node_names_round_trip() {
        assert_eq!(node_index(&node_name(7)), Some(7));
        assert_eq!(node_index("node-0"), None);
        assert_eq!(node_index("node-+1"), None);
    }
}
