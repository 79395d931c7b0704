//! `flatnet-cni` against hostile input and a damaged store: each test is one defect a campaign
//! found (stale prevResult, paths read from the store, unreadable entries, a full filesystem,
//! the node's own netns, a pod CIDR holding a node address, a second interface, a panic).
//! Each asserts the clear refusal and that nothing else changed.

mod common;

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use common::plugin::{
    add, assert_clean, conf, conf_cidrs, env, host_veths, pod_ip, pod_ips, reservations, with_prev,
};
use common::{cni, exchange, exchange6, node_ns, wait_until, TempDir, TestNs};
use serde_json::{json, Value};

fn store(dir: &TempDir) -> PathBuf {
    dir.path().join("ipam/flatnet")
}

fn gc(node: &TestNs, conf: &Value, valid: Value) -> common::CniOut {
    let mut c = conf.clone();
    c["cni.dev/valid-attachments"] = valid;
    cni(node, &[("CNI_COMMAND", "GC")], &c.to_string())
}

fn status(node: &TestNs, conf: &Value) -> common::CniOut {
    cni(node, &[("CNI_COMMAND", "STATUS")], &conf.to_string())
}

fn quarantined(dir: &TempDir) -> usize {
    fs::read_dir(store(dir).join("quarantine")).map_or(0, |d| d.count())
}

/// A repeated DEL whose prevResult names an address that has since gone to another pod
/// frees nothing and removes no route: the new owner stays reachable and CHECK passes.
#[test]
fn repeated_del_with_a_stale_prev_result_leaves_the_new_owner_alone() {
    let node = node_ns("node");
    let (a, b) = (TestNs::new("pa"), TestNs::new("pb"));
    let dir = TempDir::new("ipam");
    // A /30 has one pod address, so B is sure to get A's.
    let conf = conf("1.1.0", "10.244.20.0/30", &dir);
    let ra = add(&node, &a, "ctr-a", &conf).expect_ok().json;
    let del_a = || {
        cni(
            &node,
            &env("DEL", "ctr-a", &a.path(), "eth0"),
            &with_prev(&conf, &ra),
        )
        .expect_ok()
    };
    del_a();
    let rb = add(&node, &b, "ctr-b", &conf).expect_ok().json;
    assert_eq!(pod_ip(&ra), pod_ip(&rb));
    del_a();
    let ip = pod_ip(&rb);
    assert!(
        node.ip(&["route"]).contains(&format!("{ip} dev ")),
        "{}",
        node.ip(&["route"])
    );
    assert_eq!(reservations(&dir), 1);
    cni(
        &node,
        &env("CHECK", "ctr-b", &b.path(), "eth0"),
        &with_prev(&conf, &rb),
    )
    .expect_ok();
    assert_eq!(
        exchange(&node, &b, ip, 7101),
        "10.244.20.1".parse::<Ipv4Addr>().unwrap()
    );
}

/// An `ips/` entry whose owner line walks out of the store never makes GC touch a file
/// outside it; the entry is set aside and its address freed.
#[test]
fn gc_never_follows_a_path_read_from_the_store() {
    let node = node_ns("node");
    let dir = TempDir::new("ipam");
    let conf = conf("1.1.0", "10.244.21.0/24", &dir);
    let pod = TestNs::new("pod");
    add(&node, &pod, "live", &conf).expect_ok();
    // What the old code deleted: attachments/<containerID>:<ifname>, with the ID read from
    // the entry.
    let victim = dir.path().join("victim:x");
    fs::write(&victim, "keep me").unwrap();
    let depth = store(&dir).join("attachments").components().count();
    let up = "../".repeat(depth);
    let line = format!("{up}{} x\n", dir.path().join("victim").display());
    fs::write(store(&dir).join("ips/10.244.21.9"), line).unwrap();

    gc(
        &node,
        &conf,
        json!([{"containerID": "live", "ifname": "eth0"}]),
    )
    .expect_ok();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep me");
    assert!(!store(&dir).join("ips/10.244.21.9").exists());
    assert_eq!(quarantined(&dir), 1);
    assert_eq!(reservations(&dir), 1, "the live pod keeps its address");
}

/// Entries that cannot be read — bytes that are not UTF-8, a directory, an empty file, a
/// name that is not an address, a symbolic link — never block the node: STATUS stays green,
/// the affected pod's DEL succeeds, GC repairs what a live attachment's index names and sets
/// the rest aside, and every address comes back into use.
#[test]
fn unreadable_entries_are_set_aside_and_the_rest_keeps_serving() {
    let node = node_ns("node");
    let dir = TempDir::new("ipam");
    let conf = conf("1.1.0", "10.244.22.0/24", &dir);
    let pods: Vec<TestNs> = (0..3).map(|i| TestNs::new(&format!("p{i}"))).collect();
    let results: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| add(&node, p, &format!("c{i}"), &conf).expect_ok().json)
        .collect();
    let ips = store(&dir).join("ips");
    let entry = |r: &Value| ips.join(pod_ip(r).to_string());
    // c0's entry: not UTF-8. c1's: a directory. c2's: intact.
    fs::write(entry(&results[0]), b"\xff\xfe c0 eth0\n").unwrap();
    fs::remove_file(entry(&results[1])).unwrap();
    fs::create_dir(entry(&results[1])).unwrap();
    // Leftovers nobody claims: an empty entry, a link out of the store, a name that is no
    // address (not even UTF-8), and an index entry that is a directory.
    fs::write(ips.join("10.244.22.200"), "").unwrap();
    std::os::unix::fs::symlink(dir.path(), ips.join("10.244.22.201")).unwrap();
    fs::write(ips.join(std::ffi::OsStr::from_bytes(b"junk\xff")), "x").unwrap();
    fs::create_dir(store(&dir).join("attachments/ghost:eth0")).unwrap();

    status(&node, &conf).expect_ok();
    // c0's DEL: its index names the unreadable entry, so it is c0's to release.
    cni(
        &node,
        &env("DEL", "c0", &pods[0].path(), "eth0"),
        &conf.to_string(),
    )
    .expect_ok();
    assert!(!entry(&results[0]).exists());
    // GC with c1 and c2 alive: c1's entry is rebuilt from its index, the rest set aside.
    gc(
        &node,
        &conf,
        json!([{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2", "ifname": "eth0"}]),
    )
    .expect_ok();
    assert_eq!(fs::read_to_string(entry(&results[1])).unwrap(), "c1 eth0\n");
    for i in [1, 2] {
        cni(
            &node,
            &env("CHECK", &format!("c{i}"), &pods[i].path(), "eth0"),
            &with_prev(&conf, &results[i]),
        )
        .expect_ok();
    }
    let mut left: Vec<String> = fs::read_dir(&ips)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut want = vec![
        pod_ip(&results[1]).to_string(),
        pod_ip(&results[2]).to_string(),
    ];
    want.sort();
    assert_eq!(left, want);
    assert!(dir.path().is_dir(), "the link's target was not touched");
    // c0's entry, c1's directory (replaced by the repaired entry), the empty one, the link,
    // the junk name and the index directory.
    assert_eq!(quarantined(&dir), 6);
    status(&node, &conf).expect_ok();
    let again = TestNs::new("again");
    add(&node, &again, "again", &conf).expect_ok();
}

/// A small tmpfs mounted for one test, unmounted on drop (lazily, so a busy mount still goes).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let source = common::unique("tmpfs");
        common::run_ok(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                &source,
                at.to_str().unwrap(),
            ],
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l", self.0.to_str().unwrap()])
            .status();
    }
}

/// Mounts a harness tmpfs whose test process is gone left behind (SIGKILL skips guards).
fn sweep_stale_mounts() {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    for line in mounts.lines() {
        let mut f = line.split(' ');
        let (Some(source), Some(target)) = (f.next(), f.next()) else {
            continue;
        };
        if common::owner_pid(source).is_some_and(|p| !common::pid_alive(p)) {
            let _ = std::process::Command::new("umount")
                .args(["-l", target])
                .status();
        }
    }
}

/// A full filesystem: STATUS says 50 (not 0), ADD fails with 5 and leaves no temp file, no
/// link and no reservation; with room again, both work.
#[test]
fn a_full_filesystem_fails_status_and_add_cleanly() {
    sweep_stale_mounts();
    let node = node_ns("node");
    let dir = TempDir::new("ipam");
    let conf = conf("1.1.0", "10.244.23.0/24", &dir);
    let mnt = Tmpfs::mount(&dir.path().join("ipam"), "256k");
    status(&node, &conf).expect_ok();
    let fill = mnt.0.join("fill");
    let _ = fs::write(&fill, vec![0u8; 512 * 1024]);
    assert!(fs::metadata(&fill).is_ok());

    assert_eq!(status(&node, &conf).err_code(), 50);
    let pod = TestNs::new("pod");
    let out = add(&node, &pod, "ctr", &conf);
    assert_eq!(out.err_code(), 5, "{}", out.stdout);
    assert_clean(&node, &pod, &dir, &["lo"]);
    assert_eq!(
        fs::read_dir(store(&dir).join("tmp")).unwrap().count(),
        0,
        "no temp file left"
    );
    assert_eq!(
        fs::read_dir(store(&dir).join("attachments"))
            .unwrap()
            .count(),
        0
    );

    fs::remove_file(&fill).unwrap();
    status(&node, &conf).expect_ok();
    add(&node, &pod, "ctr", &conf).expect_ok();
    cni(
        &node,
        &env("DEL", "ctr", &pod.path(), "eth0"),
        &conf.to_string(),
    )
    .expect_ok();
}

/// CNI_NETNS naming the node's own namespace is refused with 4, by inode, whatever the path;
/// no default route or anything else appears in the node.
#[test]
fn the_nodes_own_netns_is_not_a_pod() {
    let node = node_ns("node");
    let dir = TempDir::new("ipam");
    let conf = conf("1.0.0", "10.244.24.0/24", &dir);
    let routes_before = node.ip(&["route"]);
    let links_before = node.links();
    for path in ["/proc/self/ns/net".to_string(), node.path()] {
        let out = cni(&node, &env("ADD", "ctr", &path, "eth0"), &conf.to_string());
        assert_eq!(out.err_code(), 4, "{path}: {}", out.stdout);
        assert!(
            out.json["msg"].as_str().unwrap().contains("node"),
            "{}",
            out.stdout
        );
    }
    assert_eq!(node.ip(&["route"]), routes_before);
    assert_eq!(node.links(), links_before);
    assert_eq!(reservations(&dir), 0);
}

/// A pod CIDR that holds one of the node's own addresses would hand it to a pod: error 7,
/// naming the address and its link, and nothing made. The gateway on host veths is fine.
#[test]
fn a_pod_cidr_holding_a_node_address_is_refused() {
    let node = node_ns("node");
    let pod = TestNs::new("pod");
    let dir = TempDir::new("ipam");
    let conf = conf("1.0.0", "10.244.25.0/24", &dir);
    // (This kernel has no dummy links; a veth pair serves.)
    node.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    node.ip(&["addr", "add", "10.244.25.77/24", "dev", "up0"]);
    let out = add(&node, &pod, "ctr", &conf);
    assert_eq!(out.err_code(), 7, "{}", out.stdout);
    let msg = out.json["msg"].as_str().unwrap();
    assert!(msg.contains("10.244.25.77") && msg.contains("up0"), "{msg}");
    assert_eq!(reservations(&dir), 0);
    assert!(host_veths(&node).is_empty());
    assert_eq!(pod.links(), ["lo"]);
    node.ip(&["link", "del", "up0"]);
    add(&node, &pod, "ctr", &conf).expect_ok();
}

/// A node address added after the node's first pod is checked when IPAM reserves it (one
/// route lookup, not the whole address list at every ADD): the ADD that would hand it out
/// gets 7 naming it and its link, and leaves nothing behind.
#[test]
fn a_node_address_added_after_the_first_pod_is_never_handed_out() {
    let node = node_ns("node");
    let first = TestNs::new("pod1");
    let second = TestNs::new("pod2");
    let dir = TempDir::new("ipam");
    let conf = conf("1.0.0", "10.244.27.0/24", &dir);
    let ip = add(&node, &first, "ctr1", &conf).expect_ok().json["ips"][0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    // The next address the allocator would hand out, now the node's.
    let next: std::net::Ipv4Addr = ip.trim_end_matches("/32").parse().unwrap();
    let next = std::net::Ipv4Addr::from(u32::from(next) + 1);
    node.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    node.ip(&["addr", "add", &format!("{next}/24"), "dev", "up0"]);
    let out = add(&node, &second, "ctr2", &conf);
    assert_eq!(out.err_code(), 7, "{}", out.stdout);
    let msg = out.json["msg"].as_str().unwrap();
    assert!(
        msg.contains(&next.to_string()) && msg.contains("up0"),
        "{msg}"
    );
    assert_eq!(reservations(&dir), 1);
    assert_eq!(host_veths(&node).len(), 1);
    assert_eq!(second.links(), ["lo"]);
    // The runtime's retry is given the address after it.
    let again = add(&node, &second, "ctr2", &conf).expect_ok().json;
    assert_ne!(
        again["ips"][0]["address"].as_str().unwrap(),
        format!("{next}/32")
    );
    node.ip(&["link", "del", "up0"]);
}

/// A second interface of the network in one pod (it would need a second default route) is
/// refused up front with 101, naming the interface that has the default route; the first
/// attachment is untouched.
#[test]
fn a_second_interface_in_one_pod_is_refused_up_front() {
    let node = node_ns("node");
    let pod = TestNs::new("pod");
    let dir = TempDir::new("ipam");
    let conf = conf("1.1.0", "10.244.26.0/24", &dir);
    let first = add(&node, &pod, "ctr", &conf).expect_ok().json;
    let out = cni(
        &node,
        &env("ADD", "ctr", &pod.path(), "eth1"),
        &conf.to_string(),
    );
    assert_eq!(out.err_code(), 101, "{}", out.stdout);
    assert!(
        out.json["msg"].as_str().unwrap().contains("dev eth0"),
        "{}",
        out.stdout
    );
    assert_eq!(reservations(&dir), 1);
    assert_eq!(host_veths(&node).len(), 1);
    let mut links = pod.links();
    links.sort();
    assert_eq!(links, ["eth0", "lo"]);
    cni(
        &node,
        &env("CHECK", "ctr", &pod.path(), "eth0"),
        &with_prev(&conf, &first),
    )
    .expect_ok();
}

/// A panic still answers with the spec's error JSON (code 999) and a non-zero exit; the
/// runtime's DEL then removes what the ADD made.
#[test]
fn a_panic_prints_the_error_json() {
    let node = node_ns("node");
    let pod = TestNs::new("pod");
    let dir = TempDir::new("ipam");
    let conf = conf("1.0.0", "10.244.27.0/24", &dir);
    let path = pod.path();
    let mut e = env("ADD", "ctr", &path, "eth0");
    e.push((flatnet::crashpoint::ENV, "add:veth:panic"));
    let out = cni(&node, &e, &conf.to_string());
    assert_eq!(out.err_code(), 999, "{}", out.stdout);
    assert_eq!(out.json["cniVersion"], "1.0.0");
    assert!(
        out.json["details"].as_str().unwrap().contains("add:veth"),
        "{}",
        out.stdout
    );
    cni(
        &node,
        &env("DEL", "ctr", &pod.path(), "eth0"),
        &conf.to_string(),
    )
    .expect_ok();
    assert_clean(&node, &pod, &dir, &["lo"]);
}

fn v6_of(ips: &[IpAddr]) -> Ipv6Addr {
    match ips.iter().find(|i| i.is_ipv6()) {
        Some(IpAddr::V6(ip)) => *ip,
        _ => panic!("no IPv6 address in {ips:?}"),
    }
}

/// The stale-prevResult case for IPv6, dual-stack: A's IPv6 address has gone to C (a /126
/// has two pod addresses, so the search wraps onto it) when A's DEL is repeated with A's old
/// prevResult. Nothing of C's is freed or unrouted, and C stays reachable over IPv6.
#[test]
fn a_stale_prev_result_naming_another_pods_ipv6_address_frees_nothing() {
    let node = node_ns("node");
    let (a, b, c) = (TestNs::new("pa"), TestNs::new("pb"), TestNs::new("pc"));
    let dir = TempDir::new("ipam");
    let conf = conf_cidrs("1.1.0", &["10.244.40.0/24", "fd00:10:244:40::/126"], &dir);
    let ra = add(&node, &a, "ctr-a", &conf).expect_ok().json;
    let del_a = || {
        cni(
            &node,
            &env("DEL", "ctr-a", &a.path(), "eth0"),
            &with_prev(&conf, &ra),
        )
        .expect_ok()
    };
    del_a();
    add(&node, &b, "ctr-b", &conf).expect_ok();
    let rc = add(&node, &c, "ctr-c", &conf).expect_ok().json;
    let c6 = v6_of(&pod_ips(&rc));
    assert_eq!(v6_of(&pod_ips(&ra)), c6, "C got A's old IPv6 address");
    del_a();
    assert_eq!(reservations(&dir), 4, "B's and C's addresses are all held");
    let routes = node.ip(&["-6", "route"]);
    assert!(routes.contains(&format!("{c6} dev ")), "{routes}");
    cni(
        &node,
        &env("CHECK", "ctr-c", &c.path(), "eth0"),
        &with_prev(&conf, &rc),
    )
    .expect_ok();
    assert_eq!(
        exchange6(&node, &c, c6, 7401),
        "fd00:10:244:40::1".parse::<Ipv6Addr>().unwrap()
    );
}

/// Both or none: when the second family fails after the veth exists (the node's route to the
/// pod's IPv6 address is taken by a route someone else made), the first family's address,
/// the veth and everything on it go too, and the foreign route stays.
#[test]
fn a_dual_stack_add_failing_on_the_second_family_undoes_the_first() {
    let node = node_ns("node");
    let pod = TestNs::new("pod");
    let dir = TempDir::new("ipam");
    // The first address the IPv6 pool hands out is network + 2.
    node.ip(&[
        "-6",
        "route",
        "add",
        "fd00:10:244:41::2/128",
        "dev",
        "lo",
        "proto",
        "static",
    ]);
    let conf = conf_cidrs("1.0.0", &["10.244.41.0/24", "fd00:10:244:41::/64"], &dir);
    let out = add(&node, &pod, "ctr", &conf);
    assert_eq!(out.err_code(), 102, "{}", out.stdout);
    assert_eq!(reservations(&dir), 0, "both reservations were released");
    assert!(wait_until(std::time::Duration::from_secs(10), || pod
        .links()
        == ["lo"]));
    assert_clean(&node, &pod, &dir, &["lo"]);
    assert!(
        !node.ip(&["route"]).contains("10.244.41."),
        "no IPv4 route left"
    );
    let routes = node.ip(&["-6", "route"]);
    assert!(
        routes.contains("fd00:10:244:41::2 dev lo proto static"),
        "{routes}"
    );
    node.ip(&["-6", "route", "del", "fd00:10:244:41::2/128"]);
    add(&node, &pod, "ctr", &conf).expect_ok();
}

/// A full IPv6 pool fails a dual-stack ADD with 100 naming it, reserving nothing in the IPv4
/// pool that has room; STATUS says which pool is full. A /64 beside it reports honestly.
#[test]
fn a_full_ipv6_pool_reserves_nothing_and_status_names_it() {
    let node = node_ns("node");
    let dir = TempDir::new("ipam");
    let conf = conf_cidrs("1.1.0", &["10.244.42.0/24", "fd00:10:244:42::/126"], &dir);
    let pods: Vec<TestNs> = (0..3).map(|i| TestNs::new(&format!("p{i}"))).collect();
    status(&node, &conf).expect_ok();
    for (i, p) in pods.iter().take(2).enumerate() {
        add(&node, p, &format!("c{i}"), &conf).expect_ok();
    }
    let out = add(&node, &pods[2], "c2", &conf);
    assert_eq!(out.err_code(), 100, "{}", out.stdout);
    assert!(
        out.stdout.contains("fd00:10:244:42::/126"),
        "{}",
        out.stdout
    );
    assert_eq!(reservations(&dir), 4);
    assert_eq!(pods[2].links(), ["lo"]);
    let st = status(&node, &conf);
    assert_eq!(st.err_code(), 50);
    assert!(
        st.stdout.contains("fd00:10:244:42::/126") && st.stdout.contains("2 of 2"),
        "{}",
        st.stdout
    );

    // A /64 holds 2^64 - 2 pods: STATUS counts what is held, never the pool.
    let dir64 = TempDir::new("ipam64");
    let conf64 = conf_cidrs("1.1.0", &["fd00:10:244:43::/64", "10.244.43.0/24"], &dir64);
    add(&node, &pods[2], "c64", &conf64).expect_ok();
    status(&node, &conf64).expect_ok();
}

/// GC covers both families: an attachment the runtime no longer knows loses both addresses,
/// its veth and its routes; a live one keeps all of it.
#[test]
fn gc_collects_both_families_of_a_dual_stack_attachment() {
    let node = node_ns("node");
    let (a, b) = (TestNs::new("pa"), TestNs::new("pb"));
    let dir = TempDir::new("ipam");
    let conf = conf_cidrs("1.1.0", &["fd00:10:244:44::/64", "10.244.44.0/24"], &dir);
    let ra = add(&node, &a, "gone", &conf).expect_ok().json;
    let rb = add(&node, &b, "live", &conf).expect_ok().json;
    assert_eq!(reservations(&dir), 4);
    gc(
        &node,
        &conf,
        json!([{"containerID": "live", "ifname": "eth0"}]),
    )
    .expect_ok();
    assert_eq!(reservations(&dir), 2);
    let (v4, v6) = (node.ip(&["route"]), node.ip(&["-6", "route"]));
    for ip in pod_ips(&ra) {
        assert!(!v4.contains(&ip.to_string()) && !v6.contains(&ip.to_string()));
    }
    assert_eq!(host_veths(&node).len(), 1);
    cni(
        &node,
        &env("CHECK", "live", &b.path(), "eth0"),
        &with_prev(&conf, &rb),
    )
    .expect_ok();
}

/// A pod CIDR that holds one of the node's own IPv6 addresses is refused, naming the address.
#[test]
fn an_ipv6_pod_cidr_holding_a_node_address_is_refused() {
    let node = node_ns("node");
    let pod = TestNs::new("pod");
    let dir = TempDir::new("ipam");
    node.ip(&["link", "set", "lo", "up"]);
    node.ip(&["-6", "addr", "add", "fd00:10:244:45::9/128", "dev", "lo"]);
    let conf = conf_cidrs("1.1.0", &["10.244.45.0/24", "fd00:10:244:45::/64"], &dir);
    let out = add(&node, &pod, "ctr", &conf);
    assert_eq!(out.err_code(), 7, "{}", out.stdout);
    assert!(out.stdout.contains("fd00:10:244:45::9"), "{}", out.stdout);
    assert_clean(&node, &pod, &dir, &["lo"]);
}

/// An IPv6-only pod is one interface too: a second ADD into it, on another ifname, meets its
/// IPv6 default route and is refused before anything is reserved.
#[test]
fn a_second_interface_in_an_ipv6_pod_is_refused_up_front() {
    let node = node_ns("node");
    let pod = TestNs::new("pod");
    let dir = TempDir::new("ipam");
    let conf = conf_cidrs("1.1.0", &["fd00:10:244:46::/64"], &dir);
    let first = add(&node, &pod, "ctr", &conf).expect_ok().json;
    let out = cni(
        &node,
        &env("ADD", "ctr", &pod.path(), "eth1"),
        &conf.to_string(),
    );
    assert_eq!(out.err_code(), 101, "{}", out.stdout);
    assert!(out.stdout.contains("dev eth0"), "{}", out.stdout);
    assert_eq!(reservations(&dir), 1);
    assert_eq!(host_veths(&node).len(), 1);
    cni(
        &node,
        &env("CHECK", "ctr", &pod.path(), "eth0"),
        &with_prev(&conf, &first),
    )
    .expect_ok();
}
