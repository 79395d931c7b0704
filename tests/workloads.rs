//! Probes, Deployments and the cluster's controller, through the built `flatnet` binary:
//! kubelet's probes (exec, tcpSocket, httpGet; liveness, readiness, startup) and
//! kube-controller-manager's Deployments (spread, replacement, scale, rolling update, a
//! controller killed mid-rollout), and seed 003's claim with `examples/workloads/`.
//!
//! Clusters are slow to make, so each test keeps one cluster for the claims that fit it, in
//! the order a user would try them. Probes run every second here (the minimum).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::cluster::{eventually, TestCluster};
use common::TempDir;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(40);

/// `flatnet apply -f -` with `yaml`; returns stdout, asserting success.
fn apply(c: &TestCluster, yaml: &str) -> String {
    c.apply_ok(yaml)
}

fn pods(c: &TestCluster) -> Vec<Value> {
    serde_json::from_str::<Value>(&c.ok(&["get", "pods", "-o", "record"]))
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn pod(c: &TestCluster, name: &str) -> Value {
    pods(c)
        .into_iter()
        .find(|p| p["name"] == name)
        .unwrap_or(Value::Null)
}

/// The pod's Ready condition.
fn ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn restarts(p: &Value) -> u64 {
    p["status"]["containers"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0)
}

/// The READY column of `get pods` for `name`.
fn ready_column(c: &TestCluster, name: &str) -> String {
    c.ok(&["get", "pods", name])
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string()
}

fn touch(path: &std::path::Path) {
    std::fs::write(path, b"").unwrap();
}

/// A one-container pod: `command` (JSON list), probes as YAML lines under the container.
fn probe_pod(name: &str, command: &str, probes: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  \
         terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    command: {command}\n\
         {probes}"
    )
}

/// Serves HTTP on 8080: 200 while `ok` exists, else 500; logs each request's source address
/// and User-Agent.
fn http_server(ok: &std::path::Path) -> String {
    let script = format!(
        "import http.server, os, socketserver, signal, sys\n\
         signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20 def do_GET(self):\n\
         \x20   print(self.client_address[0], self.headers.get('User-Agent'), flush=True)\n\
         \x20   self.send_response(200 if os.path.exists({ok:?}) else 500)\n\
         \x20   self.end_headers()\n\
         \x20 def log_message(self, *a): pass\n\
         socketserver.TCPServer.allow_reuse_address = True\n\
         socketserver.TCPServer(('', 8080), H).serve_forever()\n",
        ok = ok.display().to_string()
    );
    serde_json::to_string(&["python3", "-c", &script]).unwrap()
}

/// Each probe kind passing and failing, as kubelet would judge them: a failed liveness probe
/// restarts the container (counted), readiness flips READY and the Ready condition both ways,
/// a startup probe holds back liveness and readiness until it succeeds, and tcpSocket and
/// httpGet probes come from the node's network namespace.
#[test]
fn probes_restart_on_liveness_flip_readiness_and_wait_for_startup() {
    let c = TestCluster::up("probes", &["--nodes", "1"]);
    let dir = TempDir::new("probe-files");
    let f = |n: &str| dir.path().join(n);
    for name in ["a-alive", "a-ready", "b-ok"] {
        touch(&f(name));
    }
    let test_e = |n: &str| format!("[test, -e, {:?}]", f(n).display().to_string());
    // exec probes, both kinds, on a pause container.
    let exe = common::workspace_bin("flatnet").display().to_string();
    let pause = format!("[{exe:?}, pause]");
    let out = apply(
        &c,
        &probe_pod(
            "exec-probes",
            &pause,
            &format!(
                "    livenessProbe: {{exec: {{command: {}}}, periodSeconds: 1, failureThreshold: 2}}\n    \
                 readinessProbe: {{exec: {{command: {}}}, periodSeconds: 1, failureThreshold: 1}}\n",
                test_e("a-alive"),
                test_e("a-ready")
            ),
        ),
    );
    assert!(out.contains("pod/exec-probes created"), "{out}");
    // httpGet readiness and tcpSocket liveness, on a server.
    apply(
        &c,
        &probe_pod(
            "http-probes",
            &http_server(&f("b-ok")),
            "    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1, failureThreshold: 1}\n    \
             livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1, initialDelaySeconds: 3}\n",
        ),
    );
    // A tcpSocket liveness probe to a port nobody listens on.
    apply(
        &c,
        &probe_pod(
            "tcp-dead",
            &pause,
            "    livenessProbe: {tcpSocket: {port: 9}, periodSeconds: 1, failureThreshold: 1}\n",
        ),
    );
    // A startup probe that holds back a readiness probe that would pass and a liveness probe
    // that would fail at once.
    apply(
        &c,
        &probe_pod(
            "slow-start",
            &pause,
            &format!(
                "    startupProbe: {{exec: {{command: {}}}, periodSeconds: 1, failureThreshold: 1000}}\n    \
                 readinessProbe: {{exec: {{command: [\"true\"]}}, periodSeconds: 1}}\n    \
                 livenessProbe: {{exec: {{command: [\"false\"]}}, periodSeconds: 1, failureThreshold: 1}}\n",
                test_e("d-started")
            ),
        ),
    );

    // Passing: Ready, READY 1/1, no restarts.
    for name in ["exec-probes", "http-probes"] {
        eventually(&format!("{name} ready"), WAIT, || ready(&pod(&c, name)));
        assert_eq!(ready_column(&c, name), "1/1");
    }
    let describe = c.ok(&["describe", "pod", "http-probes"]);
    assert!(
        describe.contains("Readiness:     http-get http://:8080/healthz delay=0s timeout=1s period=1s #success=1 #failure=1"),
        "{describe}"
    );
    assert!(describe.contains("Ready           True"), "{describe}");

    // The httpGet probe came from the node (the pod's gateway, 10.244.1.1, is the node's
    // address on the pod's veth), as kubelet's: not from inside the pod.
    let log = c.ok(&["logs", "http-probes"]);
    assert!(
        log.lines().any(|l| l == "10.244.1.1 kube-probe/1.33"),
        "{log}"
    );

    // Readiness failing, both kinds: NotReady, READY 0/1, the Ready condition False; the
    // container keeps running (readiness never restarts).
    std::fs::remove_file(f("a-ready")).unwrap();
    std::fs::remove_file(f("b-ok")).unwrap();
    for name in ["exec-probes", "http-probes"] {
        eventually(&format!("{name} not ready"), WAIT, || {
            !ready(&pod(&c, name))
        });
        assert_eq!(ready_column(&c, name), "0/1");
        let p = pod(&c, name);
        assert_eq!(p["status"]["phase"], "Running");
        assert_eq!(restarts(&p), 0, "readiness does not restart: {p}");
    }
    let describe = c.ok(&["describe", "pod", "exec-probes"]);
    assert!(describe.contains("Ready           False"), "{describe}");
    // And back.
    touch(&f("a-ready"));
    touch(&f("b-ok"));
    for name in ["exec-probes", "http-probes"] {
        eventually(&format!("{name} ready again"), WAIT, || {
            ready(&pod(&c, name))
        });
    }
    // The tcpSocket liveness probe of a live server passes: no restart.
    assert_eq!(restarts(&pod(&c, "http-probes")), 0);

    // Liveness failing: exec (its file gone) and tcpSocket (nothing listening) restart the
    // container, and RESTARTS counts it.
    std::fs::remove_file(f("a-alive")).unwrap();
    eventually("exec liveness restarts", WAIT, || {
        restarts(&pod(&c, "exec-probes")) >= 1
    });
    touch(&f("a-alive"));
    eventually("tcpSocket liveness restarts", WAIT, || {
        restarts(&pod(&c, "tcp-dead")) >= 1
    });
    let table = c.ok(&["get", "pods", "exec-probes"]);
    let restarts_col = table
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap();
    assert_ne!(restarts_col, "0", "{table}");

    // Startup gates both: not ready (though its readiness probe would pass) and not restarted
    // (though its liveness probe would fail at once) until the startup probe succeeds.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        let p = pod(&c, "slow-start");
        assert!(!ready(&p), "ready before its startup probe passed: {p}");
        assert_eq!(restarts(&p), 0, "liveness ran before startup passed: {p}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        pod(&c, "slow-start")["status"]["containers"][0]["started"],
        false
    );
    touch(&f("d-started"));
    // Now both run: the liveness probe (`false`) restarts it.
    eventually("liveness runs once started", WAIT, || {
        restarts(&pod(&c, "slow-start")) >= 1
    });
}

/// Pods of a Deployment: name, node, IP, template hash, readiness.
#[derive(Debug, Clone)]
struct Replica {
    name: String,
    node: String,
    ip: String,
    hash: String,
    ready: bool,
}

fn replicas(c: &TestCluster, deployment: &str) -> Vec<Replica> {
    pods(c)
        .into_iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{deployment}-"))
        })
        .map(|p| Replica {
            name: p["name"].as_str().unwrap().to_string(),
            node: p["node"].as_str().unwrap().to_string(),
            ip: p["ip"].as_str().unwrap_or_default().to_string(),
            hash: p["labels"]["pod-template-hash"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            ready: ready(&p),
        })
        .collect()
}

fn all_ready(c: &TestCluster, deployment: &str, n: usize) -> bool {
    let r = replicas(c, deployment);
    r.len() == n && r.iter().all(|p| p.ready)
}

/// The `get deployments` row of `name`: READY, UP-TO-DATE, AVAILABLE.
fn deployment_row(c: &TestCluster, name: &str) -> Vec<String> {
    c.ok(&["get", "deployments", name])
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(3)
        .map(str::to_string)
        .collect()
}

/// An HTTP GET from pod `client` to `ip:8080`: the body, or None.
fn fetch(c: &TestCluster, client: &str, ip: &str) -> Option<String> {
    let code = format!(
        "import urllib.request; print(urllib.request.urlopen('http://{ip}:8080/', timeout=3).read().decode().strip())"
    );
    let out = c.flatnet(&["exec", client, "--", "python3", "-c", &code]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn controller_pid(c: &TestCluster) -> Option<u32> {
    let spec: Value =
        serde_json::from_slice(&std::fs::read(c.state_dir().join("cluster.json")).ok()?).ok()?;
    spec["controller"]["pid"].as_u64().map(|p| p as u32)
}

/// The example web Deployment, with `env` added to its container (a template change).
fn web_with_env(value: &str) -> String {
    let yaml = std::fs::read_to_string(example()).unwrap();
    yaml.replace(
        "      - name: web\n        image: python:3\n",
        &format!(
            "      - name: web\n        image: python:3\n        env: [{{name: VERSION, value: {value:?}}}]\n"
        ),
    )
}

fn example() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/workloads/web.yaml")
}

/// Seed 003 with `examples/workloads/web.yaml`, then everything a Deployment does on the same
/// cluster: 3 replicas spread over 3 nodes and named as Kubernetes names them; a replica dies
/// (deleted) and the others still serve, while a replacement comes with a new name and IP;
/// scale up and down; a template change rolls with no replica unready beyond maxUnavailable
/// (0 of 3 at 25 %) and at most maxSurge (1) extra; a controller SIGKILLed again and again
/// mid-rollout, then restarted, finishes with exactly `replicas` pods; Recreate replaces all
/// pods with no overlap; deleting the Deployment takes everything it made along.
#[test]
fn deployment_spreads_replaces_scales_rolls_and_survives_its_controller() {
    let c = TestCluster::up("deploy", &["--nodes", "3"]);
    let example = example();
    let out = c.ok(&[
        "apply",
        "-f",
        example.to_str().unwrap(),
        "--restart-backoff",
        "0.2",
    ]);
    assert_eq!(out.trim(), "deployment.apps/web created");
    let again = c.ok(&[
        "apply",
        "-f",
        example.to_str().unwrap(),
        "--restart-backoff",
        "0.2",
    ]);
    assert_eq!(again.trim(), "deployment.apps/web unchanged");
    eventually("3 replicas ready", WAIT, || all_ready(&c, "web", 3));
    assert_eq!(deployment_row(&c, "web"), ["3/3", "3", "3"]);
    let first = replicas(&c, "web");
    // Named web-<hash>-<suffix>, the hash that of the ReplicaSet, spread one per node.
    let rs_list = c.ok(&["get", "rs"]);
    for r in &first {
        let rest = r.name.strip_prefix("web-").unwrap();
        let (hash, suffix) = rest.split_once('-').unwrap();
        assert_eq!(hash, r.hash);
        assert_eq!(suffix.len(), 5, "{}", r.name);
        assert!(
            rs_list.contains(&format!("web-{hash}   3         3         3")),
            "{rs_list}"
        );
    }
    let nodes: BTreeSet<&str> = first.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(nodes.len(), 3, "one replica per node: {first:?}");

    // Seed 003: a replica dies; the others still serve, before any replacement is ready.
    c.ok(&["run", "client", "--", "sleep", "inf"]);
    let victim = &first[0];
    c.ok(&["delete", "pod", &victim.name]);
    for r in &first[1..] {
        assert_eq!(
            fetch(&c, "client", &r.ip).as_deref(),
            Some(r.name.as_str()),
            "replica {} still serves",
            r.name
        );
    }
    assert_eq!(
        fetch(&c, "client", &victim.ip),
        None,
        "the deleted one does not"
    );
    // A replacement: a new pod, with a new name and a new IP.
    eventually("a replacement ready", WAIT, || all_ready(&c, "web", 3));
    let now = replicas(&c, "web");
    let new: Vec<&Replica> = now
        .iter()
        .filter(|r| !first.iter().any(|f| f.name == r.name))
        .collect();
    assert_eq!(new.len(), 1, "{now:?}");
    assert_ne!(new[0].ip, victim.ip, "a new IP");
    assert_eq!(
        fetch(&c, "client", &new[0].ip).as_deref(),
        Some(new[0].name.as_str())
    );
    assert_eq!(
        new[0].node, victim.node,
        "back on the node that lost a replica"
    );

    // A failing container restarts inside its pod: same pod, same IP, its restart counted;
    // the ReplicaSet makes no new pod.
    let crash = replicas(&c, "web")[0].clone();
    let pid = pod(&c, &crash.name)["status"]["containers"][0]["pid"]
        .as_u64()
        .unwrap();
    // SAFETY: kill(2) on the container process this cluster's status names.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    eventually("the container restarted", WAIT, || {
        let p = pod(&c, &crash.name);
        restarts(&p) >= 1 && ready(&p)
    });
    let after = replicas(&c, "web");
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(
        after
            .iter()
            .any(|r| r.name == crash.name && r.ip == crash.ip),
        "{after:?}"
    );

    // Scale up and down.
    assert_eq!(
        c.ok(&["scale", "deployment", "web", "--replicas", "5"])
            .trim(),
        "deployment.apps/web scaled"
    );
    eventually("5 replicas", WAIT, || all_ready(&c, "web", 5));
    c.ok(&["scale", "deploy", "web", "--replicas", "2"]);
    eventually("2 replicas", WAIT, || replicas(&c, "web").len() == 2);
    c.ok(&["scale", "deploy", "web", "--replicas", "3"]);
    eventually("3 replicas again", WAIT, || all_ready(&c, "web", 3));

    // A template change rolls: never fewer than 3 ready (maxUnavailable 0), never more than
    // 4 pods (maxSurge 1), until all 3 are of the new template.
    let old_hash = replicas(&c, "web")[0].hash.clone();
    assert_eq!(
        apply(&c, &web_with_env("2")).trim(),
        "deployment.apps/web configured"
    );
    let start = Instant::now();
    let mut seen_new = false;
    loop {
        let r = replicas(&c, "web");
        let ready_count = r.iter().filter(|p| p.ready).count();
        assert!(ready_count >= 3, "below maxUnavailable: {r:?}");
        assert!(r.len() <= 4, "above maxSurge: {r:?}");
        seen_new |= r.iter().any(|p| p.hash != old_hash);
        if seen_new && r.len() == 3 && r.iter().all(|p| p.ready && p.hash != old_hash) {
            break;
        }
        assert!(start.elapsed() < WAIT * 2, "rollout stuck: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let describe = c.ok(&["describe", "deployment", "web"]);
    assert!(
        describe.contains(
            "Replicas:               3 desired | 3 updated | 3 total | 3 available | 0 unavailable"
        ),
        "{describe}"
    );
    assert!(
        describe.contains("RollingUpdateStrategy:  25% max unavailable, 25% max surge"),
        "{describe}"
    );
    assert!(
        describe.contains("deployment.kubernetes.io/revision=2"),
        "{describe}"
    );

    // The controller killed (SIGKILL) again and again mid-rollout, each time started again
    // by the next command, as after a crash; then it finishes the rollout.
    let rolled_hash = replicas(&c, "web")[0].hash.clone();
    apply(&c, &web_with_env("3"));
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(250 + 150 * (round % 3)));
        let pid = controller_pid(&c).expect("a controller");
        // SAFETY: kill(2) on a pid this cluster's state names as its controller.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        eventually("the controller gone", WAIT, || {
            !common::pid_alive(pid) || zombie(pid)
        });
        // Any command that changes the cluster starts it again.
        c.ok(&["scale", "deployment", "web", "--replicas", "3"]);
    }
    eventually("the rollout finished", WAIT * 2, || {
        let r = replicas(&c, "web");
        r.len() == 3
            && r.iter()
                .all(|p| p.ready && p.hash != rolled_hash && p.hash != old_hash)
    });
    // Exactly 3, and it stays so: nothing lost, nothing made twice, no sandbox left over.
    std::thread::sleep(Duration::from_secs(2));
    let r = replicas(&c, "web");
    assert_eq!(r.len(), 3, "{r:?}");
    let pod_netns: Vec<String> = c
        .namespaces()
        .into_iter()
        .filter(|n| n.contains("-pod-default_web-"))
        .collect();
    assert_eq!(pod_netns.len(), 3, "{pod_netns:?}");
    let hashes: BTreeMap<String, usize> = r.iter().fold(BTreeMap::new(), |mut m, p| {
        *m.entry(p.hash.clone()).or_default() += 1;
        m
    });
    assert_eq!(hashes.len(), 1, "{hashes:?}");

    // Recreate: every old pod goes before any new one comes.
    let last_hash = r[0].hash.clone();
    let recreate = web_with_env("4").replace(
        "  replicas: 3\n",
        "  replicas: 3\n  strategy: {type: Recreate}\n",
    );
    apply(&c, &recreate);
    let start = Instant::now();
    loop {
        let r = replicas(&c, "web");
        let old = r.iter().filter(|p| p.hash == last_hash).count();
        assert!(old == 0 || old == r.len(), "old and new together: {r:?}");
        if r.len() == 3 && r.iter().all(|p| p.ready && p.hash != last_hash) {
            break;
        }
        assert!(start.elapsed() < WAIT * 2, "recreate stuck: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Deleting the Deployment takes its ReplicaSets and pods along.
    assert_eq!(
        c.ok(&["delete", "deployment", "web"]).trim(),
        "deployment.apps \"web\" deleted"
    );
    eventually("its pods gone", WAIT, || replicas(&c, "web").is_empty());
    eventually("its replicasets gone", WAIT, || {
        c.flatnet(&["get", "rs"]).stdout.is_empty()
    });
}

/// A process that has exited but not been reaped yet.
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}
