//! Deterministic crashes: `flatnet-cni` is killed (SIGKILL) at every step of ADD and of DEL in
//! turn — after the index entry, after the claim, mid-write of each store file, after the veth,
//! after each address and route — and the runtime's next call follows as containerd 1.6 makes
//! it (after a failed ADD: one DEL with the netns and no prevResult; after a failed DEL: DEL
//! again). For every step: nothing reserved, no link, no route, and no duplicate afterwards.
//!
//! Random kills of concurrent ADDs come on top. `FLATNET_SOAK_ROUNDS=N` repeats each test N
//! times (scripts/soak.sh).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Output;

use common::plugin::{
    add, conf_cidrs, env, host_veths, pod_ips, reservations, retired, spawn_add, SWEEP_BOUND,
};
use common::{cni, node_ns, plugin_bin, wait_until, TempDir, TestNs};
use flatnet::crashpoint::{
    ADD_POINTS, DEL_POINTS, DUAL_ADD_POINTS, DUAL_DEL_POINTS, ENV, SWEEP_POINTS,
};
use serde_json::Value;

/// Runs the plugin with `point` armed and returns how it ended.
fn run_armed(node: &TestNs, vars: &[(&str, &str)], stdin: &str, point: &str) -> Output {
    let mut e: Vec<(&str, String)> = vars.iter().map(|(k, v)| (*k, v.to_string())).collect();
    e.push((ENV, point.to_string()));
    flatnet::cni::invoke::exec(&plugin_bin(), &e, stdin.as_bytes(), Some(&node.ns()))
        .expect("exec flatnet-cni")
}

fn killed(out: &Output) -> bool {
    out.status.signal() == Some(libc::SIGKILL)
}

/// Nothing of `id` is left: no reservation or index entry, no host veth, no pod interface,
/// no route of the plugin's in the node.
fn assert_nothing_left(node: &TestNs, pod: &TestNs, dir: &TempDir, step: &str) {
    assert_eq!(reservations(dir), 0, "{step}: a reservation leaked");
    let index = dir.path().join("ipam/flatnet/attachments");
    assert_eq!(
        std::fs::read_dir(&index).map_or(0, |d| d.count()),
        0,
        "{step}: an index entry leaked"
    );
    assert!(host_veths(node).is_empty(), "{step}: {:?}", node.links());
    assert_eq!(pod.links(), ["lo"], "{step}: the pod kept an interface");
    let routes = node.ip(&["route", "show", "proto", "102"]);
    assert!(routes.trim().is_empty(), "{step}: routes left: {routes}");
    let routes = node.ip(&["-6", "route", "show", "proto", "102"]);
    assert!(
        routes.trim().is_empty(),
        "{step}: IPv6 routes left: {routes}"
    );
}

/// After the crash and the runtime's cleanup, the same container can be added again and a
/// second pod gets a different address: the store is whole.
fn assert_store_whole(node: &TestNs, pod: &TestNs, dir: &TempDir, conf: &Value, step: &str) {
    let other = TestNs::new("other");
    let a = add(node, pod, "ctr", conf).expect_ok().json;
    let b = add(node, &other, "other", conf).expect_ok().json;
    let (a, b) = (pod_ips(&a), pod_ips(&b));
    assert!(
        a.iter().all(|ip| !b.contains(ip)),
        "{step}: a duplicate address: {a:?} {b:?}"
    );
    for (id, p) in [("ctr", pod), ("other", &other)] {
        cni(node, &env("DEL", id, &p.path(), "eth0"), &conf.to_string()).expect_ok();
    }
    assert_nothing_left(node, pod, dir, step);
}

fn rounds() -> usize {
    std::env::var("FLATNET_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

#[test]
fn a_crash_at_any_step_of_add_is_undone_by_the_runtimes_del() {
    crash_every_add_step(ADD_POINTS, &["10.244.30.0/24"]);
}

/// The same for a dual-stack ADD, at every step of each family: whichever family a crash
/// leaves half-made, the runtime's one DEL releases both.
#[test]
fn a_crash_at_any_step_of_a_dual_stack_add_is_undone_by_the_runtimes_del() {
    crash_every_add_step(DUAL_ADD_POINTS, &["10.244.33.0/24", "fd00:10:244:33::/64"]);
}

#[test]
fn a_crash_at_any_step_of_del_is_finished_by_the_next_del() {
    crash_every_del_step(DEL_POINTS, &["10.244.31.0/24"]);
}

#[test]
fn a_crash_at_any_step_of_a_dual_stack_del_is_finished_by_the_next_del() {
    crash_every_del_step(DUAL_DEL_POINTS, &["fd00:10:244:34::/64", "10.244.34.0/24"]);
}

/// The sweeper a DEL forks, killed at each of its steps (the DEL itself succeeds): the link
/// it was to delete, or the note that it did, stays for the next plugin call — an ADD of
/// another pod, which forks a sweeper of its own — and GC deletes on its own, before it returns.
#[test]
fn a_crash_of_the_deferred_sweeper_is_finished_by_the_next_call_or_gc() {
    let node = node_ns("node");
    let mut report = Vec::new();
    for _ in 0..rounds() {
        for &point in SWEEP_POINTS {
            for next in ["ADD", "GC"] {
                let dir = TempDir::new("ipam");
                let (pod, other) = (TestNs::new("pod"), TestNs::new("other"));
                let conf = conf_cidrs("1.0.0", &["10.244.35.0/24"], &dir);
                add(&node, &pod, "ctr", &conf).expect_ok();
                let out = run_armed(
                    &node,
                    &env("DEL", "ctr", &pod.path(), "eth0"),
                    &conf.to_string(),
                    point,
                );
                assert!(out.status.success(), "{point}: DEL failed: {out:?}");
                let notes = dir.path().join("ipam/flatnet/retired");
                let noted = || {
                    std::fs::read_dir(&notes).map_or(0, |d| {
                        d.filter(|e| {
                            e.as_ref()
                                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("flat"))
                        })
                        .count()
                    })
                };
                // The killed sweeper is gone for good: after its delay, nothing more happens.
                std::thread::sleep(std::time::Duration::from_millis(600));
                assert_eq!(noted(), 1, "{point}: the note went with the sweeper");
                if point == "sweep:started" {
                    assert_eq!(retired(&node).len(), 1, "{point}");
                }
                assert_eq!(reservations(&dir), 0, "{point}");
                if next == "ADD" {
                    add(&node, &other, "other", &conf).expect_ok();
                    assert!(
                        wait_until(SWEEP_BOUND, || retired(&node).is_empty() && noted() == 0),
                        "{point}: the next ADD did not sweep: {:?}",
                        retired(&node)
                    );
                    cni(
                        &node,
                        &env("DEL", "other", &other.path(), "eth0"),
                        &conf.to_string(),
                    )
                    .expect_ok();
                } else {
                    let mut gc = conf.clone();
                    gc["cniVersion"] = "1.1.0".into();
                    gc["cni.dev/valid-attachments"] = serde_json::json!([]);
                    cni(&node, &[("CNI_COMMAND", "GC")], &gc.to_string()).expect_ok();
                    assert!(retired(&node).is_empty(), "{point}: GC left a retired link");
                }
                assert_nothing_left(&node, &pod, &dir, point);
                report.push(format!(
                    "  sweeper killed at {point:<14} then {next}: cleaned"
                ));
            }
        }
    }
    println!("{}", report.join("\n"));
}

fn crash_every_add_step(points: &[&str], cidrs: &[&str]) {
    let node = node_ns("node");
    let mut report = Vec::new();
    for round in 0..rounds() {
        for &point in points {
            // A fresh store each time, so that even its creation is a step.
            let dir = TempDir::new("ipam");
            let pod = TestNs::new("pod");
            let conf = conf_cidrs("1.0.0", cidrs, &dir);
            let out = run_armed(
                &node,
                &env("ADD", "ctr", &pod.path(), "eth0"),
                &conf.to_string(),
                point,
            );
            assert!(
                killed(&out),
                "ADD was not killed at {point}: {:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stdout)
            );
            cni(
                &node,
                &env("DEL", "ctr", &pod.path(), "eth0"),
                &conf.to_string(),
            )
            .expect_ok();
            assert_nothing_left(&node, &pod, &dir, point);
            assert_store_whole(&node, &pod, &dir, &conf, point);
            if round == 0 {
                report.push(format!("  ADD {point:<26} killed, cleaned"));
            }
        }
    }
    println!(
        "{} ADD crash points ({cidrs:?}), each hit {} time(s):\n{}",
        points.len(),
        rounds(),
        report.join("\n")
    );
}

fn crash_every_del_step(points: &[&str], cidrs: &[&str]) {
    let node = node_ns("node");
    let mut report = Vec::new();
    for round in 0..rounds() {
        for &point in points {
            let dir = TempDir::new("ipam");
            let pod = TestNs::new("pod");
            let conf = conf_cidrs("1.0.0", cidrs, &dir);
            let result = add(&node, &pod, "ctr", &conf).expect_ok().json;
            let path = pod.path();
            let del = env("DEL", "ctr", &path, "eth0");
            let with_prev = common::plugin::with_prev(&conf, &result);
            let out = run_armed(&node, &del, &with_prev, point);
            assert!(
                killed(&out),
                "DEL was not killed at {point}: {:?}",
                out.status
            );
            // containerd retries with the same prevResult; then RemovePodSandbox's DEL has
            // neither netns nor prevResult.
            cni(&node, &del, &with_prev).expect_ok();
            cni(&node, &env("DEL", "ctr", "", "eth0"), &conf.to_string()).expect_ok();
            assert_nothing_left(&node, &pod, &dir, point);
            assert_store_whole(&node, &pod, &dir, &conf, point);
            if round == 0 {
                report.push(format!("  DEL {point:<26} killed, cleaned"));
            }
        }
    }
    println!(
        "{} DEL crash points ({cidrs:?}), each hit {} time(s):\n{}",
        points.len(),
        rounds(),
        report.join("\n")
    );
}

/// A small xorshift: random enough to pick kill instants, seeded and printed so that a
/// failure can be replayed (`FLATNET_SOAK_SEED`).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("FLATNET_SOAK_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        println!("seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// On top of the deterministic points: concurrent ADDs, some SIGKILLed at random instants,
/// each followed by the runtime's DEL (netns, no prevResult for a killed one; its result for
/// one that finished). Afterwards nothing is reserved and nothing is left in the node.
#[test]
fn random_kills_followed_by_the_runtimes_del_leave_nothing() {
    random_kills(&["10.244.32.0/24"]);
}

#[test]
fn random_kills_of_dual_stack_adds_leave_nothing() {
    random_kills(&["10.244.35.0/24", "fd00:10:244:35::/64"]);
}

fn random_kills(cidrs: &[&str]) {
    const PODS: usize = 16;
    let node = node_ns("node");
    let mut rng = Rng::new();
    for _ in 0..rounds() {
        let dir = TempDir::new("ipam");
        let conf = conf_cidrs("1.0.0", cidrs, &dir);
        let pods: Vec<TestNs> = (0..PODS).map(|i| TestNs::new(&format!("p{i}"))).collect();
        let mut children = Vec::new();
        for (i, p) in pods.iter().enumerate() {
            let stdout = std::process::Stdio::piped();
            children.push(spawn_add(&node, p, &format!("r{i}"), &conf, stdout));
        }
        for child in &mut children {
            if rng.below(2) == 0 {
                std::thread::sleep(std::time::Duration::from_micros(rng.below(8_000)));
                let _ = child.kill();
            }
        }
        for (i, child) in children.into_iter().enumerate() {
            let out = child.wait_with_output().unwrap();
            let id = format!("r{i}");
            let stdin = if out.status.success() {
                let result: Value = serde_json::from_slice(&out.stdout).unwrap();
                common::plugin::with_prev(&conf, &result)
            } else {
                conf.to_string()
            };
            cni(&node, &env("DEL", &id, &pods[i].path(), "eth0"), &stdin).expect_ok();
        }
        assert_eq!(reservations(&dir), 0, "a reservation leaked");
        assert!(host_veths(&node).is_empty(), "{:?}", node.links());
        let routes = node.ip(&["route", "show", "proto", "102"]);
        assert!(routes.trim().is_empty(), "routes left: {routes}");
        let routes = node.ip(&["-6", "route", "show", "proto", "102"]);
        assert!(routes.trim().is_empty(), "IPv6 routes left: {routes}");
        for p in &pods {
            assert_eq!(p.links(), ["lo"]);
        }
    }
}
