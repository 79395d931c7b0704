//! kubectl's habits, part 3, through the built `flatnet` binary: `get -o json|yaml` as the API
//! server's v1/Pod, v1/Node and v1/List.

mod common;

use std::time::Duration;

use common::cluster::{eventually, TestCluster};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::List;

const WAIT: Duration = Duration::from_secs(20);

const WEB: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: main
    image: busybox
    command: [sleep, '1000']
";

fn running(c: &TestCluster, pod: &str) -> bool {
    let out = c.flatnet(&["get", "pods", pod, "-o", "json"]);
    serde_json::from_slice::<Pod>(&out.stdout)
        .ok()
        .and_then(|p| p.status?.phase)
        .is_some_and(|phase| phase == "Running")
}

/// One pod is a v1/Pod, several a v1/List; both read as k8s-openapi's types, with the pod's
/// address, node, labels and the containers' status as kubelet fills them; nodes likewise.
#[test]
fn get_json_is_the_api_servers_shape() {
    let c = TestCluster::up("v1", &["--nodes", "2"]);
    let out = c.apply_stdin(WEB, &[]);
    assert!(out.status.success(), "{out:?}");
    c.ok(&["run", "--sandbox-only", "bare", "--node", "node-2"]);
    eventually("web runs", WAIT, || running(&c, "web"));

    let records: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "pods", "-o", "record"])).unwrap();
    let ip_of = |name: &str| {
        records
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["ips"][0]
            .as_str()
            .unwrap()
            .to_string()
    };

    let web: Pod = serde_json::from_str(&c.ok(&["get", "pods", "web", "-o", "json"])).unwrap();
    assert_eq!(web.metadata.name.as_deref(), Some("web"));
    assert_eq!(web.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(web.metadata.labels.as_ref().unwrap()["app"], "web");
    let spec = web.spec.as_ref().unwrap();
    assert_eq!(spec.containers[0].name, "main");
    let node = spec.node_name.clone().unwrap();
    let status = web.status.as_ref().unwrap();
    assert_eq!(status.pod_ip.as_deref(), Some(ip_of("web").as_str()));
    assert_eq!(status.pod_ips.as_ref().unwrap()[0].ip, ip_of("web"));
    assert!(status.host_ip.is_some(), "{status:?}");
    let cs = &status.container_statuses.as_ref().unwrap()[0];
    assert_eq!(cs.name, "main");
    assert_eq!(cs.restart_count, 0);
    assert!(cs.state.as_ref().unwrap().running.is_some(), "{cs:?}");
    let conditions = status.conditions.as_ref().unwrap();
    for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(conditions.iter().any(|c| c.type_ == kind), "{kind}");
    }

    let yaml = c.ok(&["get", "pods", "web", "-o", "yaml"]);
    let from_yaml: Pod = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(from_yaml.status.unwrap().pod_ip, status.pod_ip);

    let text = c.ok(&["get", "pods", "-o", "json"]);
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (raw["apiVersion"].as_str(), raw["kind"].as_str()),
        (Some("v1"), Some("List"))
    );
    let list: List<Pod> = serde_json::from_value(pod_list(raw)).unwrap();
    assert_eq!(list.items.len(), 2);
    let bare = list
        .items
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("bare"))
        .unwrap();
    assert_eq!(
        bare.spec.as_ref().unwrap().node_name.as_deref(),
        Some("node-2")
    );
    let bare_status = bare.status.as_ref().unwrap();
    assert_eq!(bare_status.phase.as_deref(), Some("Running"));
    assert_eq!(bare_status.pod_ip.as_deref(), Some(ip_of("bare").as_str()));

    let one: Node = serde_json::from_str(&c.ok(&["get", "nodes", &node, "-o", "json"])).unwrap();
    assert_eq!(one.metadata.name.as_deref(), Some(node.as_str()));
    let node_status = one.status.unwrap();
    let internal: Vec<_> = node_status
        .addresses
        .unwrap()
        .into_iter()
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address)
        .collect();
    assert_eq!(status.host_ip.as_ref(), internal.first());
    let cidr = one.spec.unwrap().pod_cidr.unwrap();
    assert!(cidr.ends_with("/24"), "{cidr}");
    let ready = node_status.conditions.unwrap();
    assert_eq!(
        (ready[0].type_.as_str(), ready[0].status.as_str()),
        ("Ready", "True")
    );
    let nodes: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "nodes", "-o", "json"])).unwrap();
    assert_eq!(nodes["items"].as_array().unwrap().len(), 2);
}

/// k8s-openapi's List<Pod> is a PodList: the same document, with the kind it expects.
fn pod_list(mut raw: serde_json::Value) -> serde_json::Value {
    raw["kind"] = "PodList".into();
    raw
}

/// `-o name`, the jsonpath forms people use, and `--no-headers`.
#[test]
fn name_jsonpath_and_no_headers() {
    let c = TestCluster::up("jsonpath", &["--nodes", "2"]);
    c.ok(&["run", "--sandbox-only", "a", "--node", "node-1"]);
    c.ok(&["run", "--sandbox-only", "b", "--node", "node-2"]);
    let records: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "pods", "-o", "record"])).unwrap();
    let ip = |i: usize| records[i]["ips"][0].as_str().unwrap().to_string();
    let (a, b) = (ip(0), ip(1));

    assert_eq!(c.ok(&["get", "pods", "-o", "name"]), "pod/a\npod/b\n");
    assert_eq!(c.ok(&["get", "pods", "b", "-o", "name"]), "pod/b\n");
    assert_eq!(
        c.ok(&["get", "nodes", "-o", "name"]),
        "node/node-1\nnode/node-2\n"
    );
    let jp = |template: &str, extra: &[&str]| {
        let arg = format!("jsonpath={template}");
        let mut args = vec!["get", "pods"];
        args.extend_from_slice(extra);
        args.extend(["-o", &arg]);
        c.ok(&args)
    };
    assert_eq!(jp("{.status.podIP}", &["a"]), a);
    assert_eq!(jp("{.items[*].metadata.name}", &[]), "a b");
    assert_eq!(jp("{.items[1].spec.nodeName}", &[]), "node-2");
    assert_eq!(
        jp(
            r#"{range .items[*]}{.metadata.name}{"\t"}{.status.podIPs[0].ip}{"\n"}{end}"#,
            &[]
        ),
        format!("a\t{a}\nb\t{b}\n")
    );
    let out = c.flatnet(&["get", "pods", "-o", "jsonpath={range .items[*]}"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without {end}"));

    let table = c.ok(&["get", "pods"]);
    let bare = c.ok(&["get", "pods", "--no-headers"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(bare.lines().count(), 2, "{bare}");
    assert!(bare.starts_with('a') && table.ends_with(&bare), "{bare}");
    let wide = c.ok(&["get", "nodes", "-o", "wide", "--no-headers"]);
    assert!(
        wide.starts_with("node-1") && wide.lines().count() == 2,
        "{wide}"
    );
}

/// A `get pods -w` that is killed when the test ends, also on a panic.
struct Watch(std::process::Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `-w` prints the table, then a row as the pod goes Running and when it is deleted.
#[test]
fn watch_sees_a_pod_run_and_go() {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};
    let c = TestCluster::up("watch", &["--nodes", "1"]);
    let mut child = std::process::Command::new(common::workspace_bin("flatnet"))
        .args(["--name", &c.name, "--state-dir"])
        .arg(c.state.path())
        .args(["get", "pods", "-w", "--output-watch-events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let watch = Watch(child);
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
        {
            sink.lock().unwrap().push(line);
        }
    });
    let seen = |f: &dyn Fn(&str) -> bool| lines.lock().unwrap().iter().any(|l| f(l));
    eventually("the header", WAIT, || seen(&|l| l.starts_with("EVENT")));

    assert!(c.apply_stdin(WEB, &[]).status.success());
    eventually("web Running in the watch", WAIT, || {
        seen(&|l| l.contains("web") && l.contains("Running"))
    });
    c.ok(&["delete", "pod", "web", "--grace-period", "1"]);
    eventually("web deleted in the watch", WAIT, || {
        seen(&|l| l.starts_with("DELETED") && l.contains("web"))
    });
    drop(watch);
    let lines = lines.lock().unwrap().clone();
    let web: Vec<&String> = lines.iter().filter(|l| l.contains("web")).collect();
    assert!(web[0].starts_with("ADDED"), "{lines:#?}");
    let running = web.iter().position(|l| l.contains("Running")).unwrap();
    let deleted = web.iter().position(|l| l.starts_with("DELETED")).unwrap();
    assert!(running < deleted, "{lines:#?}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("EVENT")).count(), 1);
}

const CRASH: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: crash
spec:
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'exit 3']
";

/// `describe pod` lists the pod's events in order: scheduled, the sandbox with its IP, the
/// container started, exited with its code, backed off; `describe node` the node's parts.
#[test]
fn describe_events_and_node() {
    let c = TestCluster::up("events", &["--nodes", "1"]);
    assert!(c.apply_stdin(CRASH, &[]).status.success());
    let describe = || c.ok(&["describe", "pod", "crash"]);
    eventually("a back-off", WAIT, || describe().contains("BackOff"));
    let text = describe();
    let records: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "pods", "-o", "record"])).unwrap();
    let ip = records[0]["ips"][0].as_str().unwrap().to_string();
    let events = &text[text.find("Events:").expect("an Events section")..];
    let order = [
        "Successfully assigned default/crash to node-1",
        &format!("Pod sandbox created with IP {ip}"),
        "Started container main",
        "Container main exited with code 3",
        "Back-off restarting failed container main",
    ];
    let mut at = 0;
    for want in order {
        let found = events[at..]
            .find(want)
            .unwrap_or_else(|| panic!("{want}:\n{events}"));
        at += found + want.len();
    }
    assert!(
        events.contains("Warning") && events.contains("default-scheduler"),
        "{events}"
    );

    let node = c.ok(&["describe", "node", "node-1"]);
    for want in [
        "Name:          node-1",
        "InternalIP:",
        "PodCIDRs:      10.244.",
        "Agent:         running (pid",
        "crash",
    ] {
        assert!(node.contains(want), "{want}:\n{node}");
    }
    let out = c.flatnet(&["describe", "node", "node-9"]);
    assert!(!out.status.success());
}

/// `check` at 100 pods stays within 100 columns: a line per pod instead of the matrix.
#[test]
fn check_fits_100_columns_at_100_pods() {
    let c = TestCluster::up("wide", &["--nodes", "3"]);
    for i in 0..100 {
        let node = format!("node-{}", i % 3 + 1);
        c.ok(&[
            "run",
            "--sandbox-only",
            &format!("p{i:03}"),
            "--node",
            &node,
        ]);
    }
    let text = c.ok(&["check"]);
    let widest = text.lines().map(|l| l.chars().count()).max().unwrap();
    assert!(widest <= 100, "{widest} columns:\n{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with('p')).count(),
        100,
        "{text}"
    );
    assert!(
        text.contains("9900 of 9900 exchanges") && text.contains("no NAT"),
        "{text}"
    );
}
