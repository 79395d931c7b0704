//! Calling `flatnet-cni` from a test as a runtime does, and reading what it left: the config,
//! the environment, results, reservations in the store, host veths, routes.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::{json, Value};

use super::{cni, wait_until, CniOut, TempDir, TestNs};

pub const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A network config for `version` with its store in `dir`.
pub fn conf(version: &str, cidr: &str, dir: &TempDir) -> Value {
    json!({
        "cniVersion": version,
        "name": "flatnet",
        "type": "flatnet-cni",
        "podCIDR": cidr,
        "dataDir": dir.path().join("ipam"),
        "logFile": dir.path().join("flatnet-cni.log"),
    })
}

/// A network config with `podCIDRs` (one per family, in this order) instead of `podCIDR`.
pub fn conf_cidrs(version: &str, cidrs: &[&str], dir: &TempDir) -> Value {
    let mut c = conf(version, cidrs[0], dir);
    c.as_object_mut().unwrap().remove("podCIDR");
    c["podCIDRs"] = json!(cidrs);
    c
}

pub fn with_prev(conf: &Value, prev: &Value) -> String {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c.to_string()
}

pub fn env<'a>(
    cmd: &'a str,
    id: &'a str,
    netns: &'a str,
    ifname: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_PATH", "/usr/lib/cni"),
    ]
}

pub fn add(node: &TestNs, pod: &TestNs, id: &str, conf: &Value) -> CniOut {
    cni(
        node,
        &env("ADD", id, &pod.path(), "eth0"),
        &conf.to_string(),
    )
}

/// Starts an ADD as [`add`] does, without waiting: for tests that kill it part-way.
pub fn spawn_add(
    node: &TestNs,
    pod: &TestNs,
    id: &str,
    conf: &Value,
    stdout: std::process::Stdio,
) -> std::process::Child {
    use std::io::Write;
    let path = pod.path();
    let e: Vec<(&str, String)> = env("ADD", id, &path, "eth0")
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    let mut child = flatnet::netns::command(&super::plugin_bin(), &e, Some(&node.ns()))
        .stdin(std::process::Stdio::piped())
        .stdout(stdout)
        .spawn()
        .expect("spawn flatnet-cni");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(conf.to_string().as_bytes())
        .expect("write the config");
    child
}

pub fn pod_ip(result: &Value) -> Ipv4Addr {
    let addr = result["ips"][0]["address"]
        .as_str()
        .expect("ips[0].address");
    addr.split('/').next().unwrap().parse().unwrap()
}

/// Every address of a result, in its order.
pub fn pod_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|c| {
            let addr = c["address"].as_str().expect("ips[].address");
            addr.split('/').next().unwrap().parse().unwrap()
        })
        .collect()
}

/// Reservations in the store (one file per reserved address).
pub fn reservations(dir: &TempDir) -> usize {
    std::fs::read_dir(dir.path().join("ipam/flatnet/ips")).map_or(0, |d| d.count())
}

/// The device group DEL retires host veths into (`flatnet::netlink::RETIRED`), as `ip` takes it.
pub const RETIRED_GROUP: &str = "1718378868";

/// Host veths that DEL retired and nobody has deleted yet.
pub fn retired(node: &TestNs) -> Vec<String> {
    node.ip(&["-o", "link", "show", "group", RETIRED_GROUP])
        .lines()
        .filter_map(|l| Some(l.split(": ").nth(1)?.split('@').next()?.to_string()))
        .collect()
}

/// How long a retired link may outlive its DEL with no agent: the plugin's sweeper waits
/// 250 ms and then deletes (tens of ms on an idle machine, more on a loaded one).
pub const SWEEP_BOUND: Duration = Duration::from_secs(5);

/// Host veths of flatnet in the node, once the retired ones are gone: the plugin's own sweeper
/// deletes them after every DEL, so a test that DELs sees them go within [`SWEEP_BOUND`] (and
/// fails here if one stays).
pub fn host_veths(node: &TestNs) -> Vec<String> {
    assert!(
        wait_until(SWEEP_BOUND, || retired(node).is_empty()),
        "retired host veths stayed: {:?}",
        retired(node)
    );
    node.links()
        .into_iter()
        .filter(|l| l.starts_with("flat"))
        .collect()
}

/// Nothing left behind by a refused call: no reservation, no host veth, no route, no pod link.
pub fn assert_clean(node: &TestNs, pod: &TestNs, dir: &TempDir, pod_links: &[&str]) {
    assert_eq!(reservations(dir), 0, "a reservation leaked");
    assert!(
        host_veths(node).is_empty(),
        "a host veth leaked: {:?}",
        node.links()
    );
    assert!(
        !node.ip(&["route"]).contains("10.244."),
        "{}",
        node.ip(&["route"])
    );
    let v6 = node.ip(&["-6", "route", "show", "proto", "102"]);
    assert!(v6.trim().is_empty(), "IPv6 routes leaked: {v6}");
    let mut links = pod.links();
    links.sort();
    let mut want: Vec<String> = pod_links.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(links, want);
}
