//! The clusters of a state dir (`get clusters`, as `kind get clusters`), and errors that name
//! the valid choices when a command names a cluster or a node that does not exist.

use std::path::Path;

use anyhow::{bail, Result};

use flatnet::emulator::{Cluster, StateRoot};

/// The names of the clusters whose state is in `root`, sorted.
pub fn list(root: &Path) -> Vec<String> {
    let state = StateRoot::new(root);
    let mut names: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| flatnet::emulator::names::validate_cluster(n).is_ok())
        .filter(|n| matches!(state.cluster(n).load(), Ok(Some(_))))
        .collect();
    names.sort();
    names
}

/// `get clusters`: one name a line; kind's note on stderr when there are none.
pub fn print(root: &Path) {
    let names = list(root);
    if names.is_empty() {
        eprintln!("No flatnet clusters found.");
    }
    for n in names {
        println!("{n}");
    }
}

/// `e` with the clusters that do exist, when it says a cluster does not.
pub fn with_choices(e: anyhow::Error, root: &Path) -> anyhow::Error {
    let missing = e.chain().find_map(|c| match c.downcast_ref() {
        Some(flatnet::emulator::Error::NoCluster(name)) => Some(name.clone()),
        _ => None,
    });
    let Some(name) = missing else {
        return e;
    };
    let names = list(root);
    if names.is_empty() {
        anyhow::anyhow!(
            "cluster {name:?} does not exist, and there are no clusters (flatnet up makes one)"
        )
    } else {
        anyhow::anyhow!(
            "cluster {name:?} does not exist; the clusters are: {} (pick one with --name)",
            names.join(", ")
        )
    }
}

/// An error naming the nodes that exist, unless `node` is one of them.
pub fn known_node(cluster: &Cluster, node: &str) -> Result<()> {
    let spec = cluster.spec()?;
    if spec.node(node).is_none() {
        let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
        bail!(
            "node {node:?} is not in cluster {:?}; its nodes are: {}",
            cluster.name(),
            names.join(", ")
        );
    }
    Ok(())
}
