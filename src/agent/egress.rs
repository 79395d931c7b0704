//! Egress masquerade: traffic from this node's pods to anything outside the cluster leaves
//! with the node's address, so that the outside world can answer. Pod-to-pod and
//! pod-to-node traffic is never rewritten: those destinations are exempted first.
//!
//! The rules live in an nftables table of flatnet's own, `ip flatnet`, replaced whole in one
//! `nft -f` transaction (so there is never a moment with half the rules). The table carries a
//! hash of its content in its comment: a pass compares it with what it wants and touches
//! nothing when they agree, and a table deleted by hand is put back at the next pass.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;

use ipnetwork::Ipv4Network;

use crate::netns::NetNs;

/// The table's family and name.
pub const TABLE: &str = "ip flatnet";

/// The table for a node whose pods are `pod_cidr`, in a cluster of `cluster_cidr`, whose
/// nodes have the addresses `node_ips`.
pub fn render(pod_cidr: Ipv4Network, cluster_cidr: Ipv4Network, node_ips: &[Ipv4Addr]) -> String {
    let mut ips: Vec<String> = node_ips.iter().map(ToString::to_string).collect();
    ips.sort();
    ips.dedup();
    let elements = if ips.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", ips.join(", "))
    };
    let body = format!(
        "  set nodes {{ type ipv4_addr;{elements} }}\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   ip saddr {pod_cidr} ip daddr {cluster_cidr} return\n\
         \x20   ip saddr {pod_cidr} ip daddr @nodes return\n\
         \x20   ip saddr {pod_cidr} masquerade\n\
         \x20 }}\n"
    );
    let hash = crate::stable_hash::fnv1a(body.bytes());
    // Creating the table first makes the delete valid when it does not exist yet; the whole
    // file is one transaction.
    format!(
        "table {TABLE} {{}}\ndelete table {TABLE}\ntable {TABLE} {{\n  comment \"{}\"\n{body}}}\n",
        marker(hash)
    )
}

fn marker(hash: u64) -> String {
    format!("flatnet egress {hash:016x}")
}

/// Puts the table in place (in `ns`, else the caller's namespace) unless it is already
/// exactly `script`'s. Returns whether it wrote.
pub fn ensure(script: &str, ns: Option<&NetNs>) -> Result<bool, String> {
    let wanted = script
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("comment \"")?
                .strip_suffix('"')
                .map(str::to_string)
        })
        .expect("render puts a comment in");
    let current = nft(&["list", "table", "ip", "flatnet"], None, ns).unwrap_or_default();
    if current.contains(&wanted) {
        return Ok(false);
    }
    nft(&["-f", "-"], Some(script), ns)?;
    Ok(true)
}

/// Deletes the table; absent is fine.
pub fn remove(ns: Option<&NetNs>) -> Result<(), String> {
    let script = format!("table {TABLE} {{}}\ndelete table {TABLE}\n");
    nft(&["-f", "-"], Some(&script), ns).map(|_| ())
}

/// Runs `nft args…` with `stdin`; its stdout, or its stderr as the error.
fn nft(args: &[&str], stdin: Option<&str>, ns: Option<&NetNs>) -> Result<String, String> {
    let mut child = crate::netns::command(Path::new("nft"), &[], ns)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run nft (package nftables): {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("write to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("run nft: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exempts_the_cluster_and_the_nodes_then_masquerades() {
        let s = render(
            "10.244.1.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
            &["172.18.0.3".parse().unwrap(), "172.18.0.2".parse().unwrap()],
        );
        let return_cluster = s.find("ip daddr 10.244.0.0/16 return").unwrap();
        let return_nodes = s.find("ip daddr @nodes return").unwrap();
        let masq = s.find("ip saddr 10.244.1.0/24 masquerade").unwrap();
        assert!(return_cluster < masq && return_nodes < masq, "{s}");
        assert!(s.contains("elements = { 172.18.0.2, 172.18.0.3 }"), "{s}");
        assert!(
            s.starts_with("table ip flatnet {}\ndelete table ip flatnet\n"),
            "{s}"
        );
    }

    #[test]
    fn the_comment_changes_with_the_content_only() {
        let a = render(
            "10.244.1.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
            &[],
        );
        let b = render(
            "10.244.1.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
            &[],
        );
        let c = render(
            "10.244.1.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
            &["172.18.0.9".parse().unwrap()],
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(
            !a.contains("elements"),
            "an empty set has no elements clause: {a}"
        );
    }
}
