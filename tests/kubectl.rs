//! kubectl's habits in the emulator, through the built `flatnet` binary: namespaces, labels
//! and selectors, declarative apply, delete (several names, -l, -f going on past what is
//! missing, grace periods, --force), and `run` making a one-container pod.
//!
//! Each test has a cluster of its own and is about one thing; where several claims need the
//! same pods they share the test, in the order a user would try them.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::Duration;

use common::cluster::{eventually, TestCluster};
use common::TempDir;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The pods of `get pods -o json` with `args` (e.g. `-A`, `-l SEL`).
fn pods(c: &TestCluster, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["get", "pods", "-o", "record"];
    all.extend_from_slice(args);
    serde_json::from_str::<Value>(&c.ok(&all))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn names(pods: &[Value]) -> BTreeSet<String> {
    pods.iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

fn pod(c: &TestCluster, ns: &str, name: &str) -> Value {
    pods(c, &["-n", ns])
        .into_iter()
        .find(|p| p["name"] == name)
        .unwrap_or(Value::Null)
}

fn wait_running(c: &TestCluster, ns: &str, name: &str) {
    eventually(&format!("{ns}/{name} running"), WAIT, || {
        let cs = pod(c, ns, name)["status"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        !cs.is_empty() && cs.iter().all(|x| x["state"] == "running")
    });
}

fn container_pid(c: &TestCluster, ns: &str, name: &str) -> u64 {
    wait_running(c, ns, name);
    pod(c, ns, name)["status"]["containers"][0]["pid"]
        .as_u64()
        .unwrap()
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// A `flatnet-cni` that records each call's CNI_ARGS, then execs the built plugin: the
/// witness of what the runtime told the plugin.
fn tap_plugin(dir: &TempDir) -> std::path::PathBuf {
    let log = dir.path().join("calls.log");
    let tap = dir.path().join("flatnet-cni");
    std::fs::write(
        &tap,
        format!(
            "#!/bin/sh\necho \"$CNI_COMMAND $CNI_ARGS\" >> {}\nexec {} \"$@\"\n",
            log.display(),
            common::plugin_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&tap, std::fs::Permissions::from_mode(0o755)).unwrap();
    log
}

const TWO_NAMESPACES: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x}
spec:
  nodeName: node-1
  containers: [{name: c, command: [python3, -m, http.server, '8080']}]
";

/// The same pod name in two namespaces: both run, with their own IPs, network namespaces and
/// host veths, reach each other, and the plugin is told each one's namespace; deleting one
/// leaves the other; a namespace that does not exist is refused; deleting a namespace deletes
/// its pods.
#[test]
fn two_namespaces_hold_pods_of_the_same_name() {
    let bin = TempDir::new("tapbin");
    let calls = tap_plugin(&bin);
    let c = TestCluster::up(
        "nsweb",
        &[
            "--nodes",
            "2",
            "--cni-bin-dir",
            &bin.path().display().to_string(),
        ],
    );
    let out = c.apply_stdin(TWO_NAMESPACES, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout(&out);
    assert!(lines.contains("namespace/x created"), "{lines}");
    assert!(lines.contains("namespace/y created"), "{lines}");
    assert!(lines.contains("pod/web created on node-1"), "{lines}");
    let ns_table = c.ok(&["get", "namespaces", "--show-labels"]);
    for want in [
        "default",
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "kubernetes.io/metadata.name=x,team=a",
        "kubernetes.io/metadata.name=y",
    ] {
        assert!(ns_table.contains(want), "{want} not in\n{ns_table}");
    }
    c.ok(&[
        "run",
        "web",
        "-n",
        "y",
        "--node",
        "node-2",
        "--",
        "python3",
        "-m",
        "http.server",
        "8080",
    ]);
    wait_running(&c, "x", "web");
    wait_running(&c, "y", "web");

    let all = pods(&c, &["-A"]);
    assert_eq!(all.len(), 2);
    let (x, y) = (&all[0], &all[1]);
    assert_eq!(
        (x["namespace"].as_str(), y["namespace"].as_str()),
        (Some("x"), Some("y"))
    );
    assert_ne!(x["ip"], y["ip"]);
    assert_ne!(x["netns"], y["netns"]);
    assert_ne!(x["containerID"], y["containerID"]);
    for p in [x, y] {
        assert!(c
            .namespaces()
            .contains(&p["netns"].as_str().unwrap().to_string()));
    }
    let wide = c.ok(&["get", "pods", "-A", "-o", "wide"]);
    let veths: BTreeSet<&str> = wide
        .lines()
        .skip(1)
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("flat") && w.len() == 15)
        })
        .collect();
    assert_eq!(veths.len(), 2, "{wide}");
    let log = std::fs::read_to_string(&calls).unwrap();
    assert!(
        log.contains("K8S_POD_NAMESPACE=x;K8S_POD_NAME=web"),
        "{log}"
    );
    assert!(
        log.contains("K8S_POD_NAMESPACE=y;K8S_POD_NAME=web"),
        "{log}"
    );

    // They reach each other by pod IP, both ways: check names each NAMESPACE/NAME.
    let check = c.ok(&["check"]);
    assert!(
        check.contains("x/web") && check.contains("y/web"),
        "{check}"
    );
    assert!(check.contains("2 of 2 exchanges"), "{check}");
    let y_ip = y["ip"].as_str().unwrap();
    let get = format!(
        "import urllib.request; print(urllib.request.urlopen('http://{y_ip}:8080/').status)"
    );
    // Running is not listening yet: the server may still be starting.
    eventually("x/web fetches from y/web's server", WAIT, || {
        let out = c.flatnet(&["exec", "web", "-n", "x", "--", "python3", "-c", &get]);
        out.status.success() && stdout(&out).trim() == "200"
    });

    // A namespace that does not exist.
    let out = c.flatnet(&["run", "z", "-n", "nope"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("namespaces \"nope\" not found"),
        "{}",
        stderr(&out)
    );

    // Deleting x's web leaves y's.
    c.ok(&["delete", "pod", "web", "-n", "x", "--grace-period", "1"]);
    assert!(!c
        .namespaces()
        .contains(&x["netns"].as_str().unwrap().to_string()));
    assert_eq!(
        names(&pods(&c, &["-A"])),
        BTreeSet::from(["web".to_string()])
    );
    assert_eq!(pod(&c, "y", "web")["ip"], y["ip"]);
    wait_running(&c, "y", "web");

    // Deleting namespace y deletes its pod; default cannot be deleted.
    let out = c.ok(&["delete", "namespace", "y", "--grace-period", "1"]);
    assert!(out.contains("namespace \"y\" deleted"), "{out}");
    assert!(pods(&c, &["-A"]).is_empty());
    assert!(!c
        .namespaces()
        .contains(&y["netns"].as_str().unwrap().to_string()));
    assert!(!c.ok(&["get", "ns"]).contains("\ny "));
    let out = c.flatnet(&["delete", "ns", "default"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("may not be deleted"),
        "{}",
        stderr(&out)
    );
}

/// Every selector form of `get -l` and `delete -l`, label columns, and label validation.
#[test]
fn selectors_pick_pods_by_label() {
    let c = TestCluster::up("selectors", &["--nodes", "1"]);
    for (name, labels) in [
        ("a", "app=web,tier=front"),
        ("b", "app=web,tier=back"),
        ("c", "app=db"),
        ("d", "other=1"),
    ] {
        c.ok(&["run", name, "--labels", labels]);
    }
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    for (sel, want) in [
        ("app=web", set(&["a", "b"])),
        ("app==web", set(&["a", "b"])),
        ("app!=web", set(&["c", "d"])),
        ("tier in (front, back)", set(&["a", "b"])),
        ("app notin (web)", set(&["c", "d"])),
        ("tier", set(&["a", "b"])),
        ("!tier", set(&["c", "d"])),
        ("app=web,tier!=front", set(&["b"])),
        ("app in (db),!tier", set(&["c"])),
        ("", set(&["a", "b", "c", "d"])),
    ] {
        assert_eq!(names(&pods(&c, &["-l", sel])), want, "-l {sel:?}");
    }
    let table = c.ok(&["get", "pods", "-L", "app,tier", "--show-labels"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header[header.len() - 3..],
        ["APP", "TIER", "LABELS"],
        "{table}"
    );
    let a = table.lines().find(|l| l.starts_with("a ")).unwrap();
    assert!(a.ends_with("web   front   app=web,tier=front"), "{a:?}");

    for bad in ["app in (web", "=web", "app=web,", "App_/x"] {
        let out = c.flatnet(&["get", "pods", "-l", bad]);
        assert!(!out.status.success(), "-l {bad:?} was accepted");
        assert!(stderr(&out).contains("selector"), "{}", stderr(&out));
    }
    let out = c.flatnet(&["run", "e", "--labels", "app=-bad"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("label value"), "{}", stderr(&out));
    let out = c.flatnet(&["label", "pod", "a", &format!("{}=x", "k".repeat(64))]);
    assert!(!out.status.success());

    let out = c.ok(&["delete", "pods", "-l", "tier"]);
    assert!(
        out.contains("pod \"a\" deleted") && out.contains("pod \"b\" deleted"),
        "{out}"
    );
    assert_eq!(names(&pods(&c, &[])), set(&["c", "d"]));
    c.ok(&["delete", "pods", "--all"]);
    assert!(pods(&c, &[]).is_empty());
}

const WEB: &str = "
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web, tier: front}
  annotations: {note: first}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{name: c, image: busybox, command: [sleep, infinity]}]
";

fn labels_of(c: &TestCluster, name: &str) -> Value {
    pod(c, "default", name)["labels"].clone()
}

/// Apply as kubectl's client-side apply: created, unchanged, configured by a three-way merge
/// (a label added by `label` survives), the last applied configuration kept in kubectl's
/// annotation, an immutable field refused unless --force.
#[test]
fn apply_twice_is_unchanged_and_merges_labels_three_ways() {
    let c = TestCluster::up("apply3", &["--nodes", "1"]);
    let out = c.apply_stdin(WEB, &[]);
    assert!(
        stdout(&out).starts_with("pod/web created"),
        "{}",
        stderr(&out)
    );
    let ip = pod(&c, "default", "web")["ip"].clone();
    let out = c.apply_stdin(WEB, &[]);
    assert_eq!(stdout(&out), "pod/web unchanged\n", "{}", stderr(&out));

    // Labels by hand: kubectl's --overwrite rule.
    assert_eq!(
        c.ok(&["label", "pod", "web", "added=by-hand"]),
        "pod/web labeled\n"
    );
    let out = c.flatnet(&["label", "pod", "web", "app=other"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("'app' already has a value (web), and --overwrite is false"),
        "{}",
        stderr(&out)
    );
    let out = c.apply_stdin(WEB, &[]);
    assert_eq!(stdout(&out), "pod/web unchanged\n", "{}", stderr(&out));

    // A changed label: configured; the hand-made label stays.
    let changed = WEB.replace("tier: front", "tier: back");
    let out = c.apply_stdin(&changed, &[]);
    assert_eq!(stdout(&out), "pod/web configured\n", "{}", stderr(&out));
    assert_eq!(
        labels_of(&c, "web"),
        serde_json::json!({"app": "web", "tier": "back", "added": "by-hand"})
    );
    // A label removed from the file is removed; an annotation likewise.
    let dropped = changed
        .replace(", tier: back", "")
        .replace("annotations: {note: first}", "annotations: {other: x}");
    let out = c.apply_stdin(&dropped, &[]);
    assert_eq!(stdout(&out), "pod/web configured\n", "{}", stderr(&out));
    let p = pod(&c, "default", "web");
    assert_eq!(
        p["labels"],
        serde_json::json!({"app": "web", "added": "by-hand"})
    );
    assert_eq!(p["annotations"]["other"], "x");
    assert!(p["annotations"].get("note").is_none(), "{p}");
    assert_eq!(p["ip"], ip, "configured in place: the same sandbox");
    let yaml = c.ok(&["get", "pods", "web", "-o", "yaml"]);
    assert!(
        yaml.contains("kubectl.kubernetes.io/last-applied-configuration"),
        "{yaml}"
    );

    // An immutable field: refused, naming it, and nothing changes; --force replaces the pod.
    let image = dropped.replace("image: busybox", "image: nginx");
    let pid = container_pid(&c, "default", "web");
    let out = c.apply_stdin(&image, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "The Pod \"web\" is invalid: spec.containers[0].image: Forbidden: pod updates may \
             not change fields"
        ),
        "{}",
        stderr(&out)
    );
    assert!(alive(pid));
    let out = c.apply_stdin(&image, &["--force"]);
    assert_eq!(stdout(&out), "pod/web configured\n", "{}", stderr(&out));
    assert!(!alive(pid), "the old container was replaced");
    assert_ne!(container_pid(&c, "default", "web"), pid);
}

/// `-f` repeats and takes directories (*.yaml, *.yml, *.json; subdirectories with -R); every
/// document is checked before anything is created.
#[test]
fn apply_takes_directories_and_checks_everything_first() {
    let c = TestCluster::up("applydir", &["--nodes", "1"]);
    let dir = TempDir::new("manifests");
    let doc = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec: {{containers: [{{name: c, command: [sleep, infinity]}}]}}\n"
        )
    };
    std::fs::write(dir.path().join("a.yaml"), doc("a")).unwrap();
    std::fs::write(dir.path().join("b.yml"), doc("b")).unwrap();
    std::fs::write(
        dir.path().join("c.json"),
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"c"},"spec":{"containers":[{"name":"c","command":["sleep","infinity"]}]}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/d.yaml"), doc("d")).unwrap();
    let other = TempDir::new("more");
    std::fs::write(other.path().join("e.yaml"), doc("e")).unwrap();
    std::fs::write(
        other.path().join("bad.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: f}\nspec: {containers: [{name: c}]}\n",
    )
    .unwrap();
    let d = dir.path().display().to_string();
    let o = other.path().display().to_string();

    // A bad document in the second -f: nothing of the first is created.
    let out = c.flatnet(&["apply", "-f", &d, "-f", &o]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("spec.containers[0].command"),
        "{}",
        stderr(&out)
    );
    assert!(pods(&c, &[]).is_empty());

    std::fs::remove_file(other.path().join("bad.yaml")).unwrap();
    c.ok(&["apply", "-f", &d, "-f", &o]);
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(names(&pods(&c, &[])), set(&["a", "b", "c", "e"]));
    let out = c.ok(&["apply", "-R", "-f", &d]);
    assert_eq!(
        out.lines().filter(|l| l.ends_with("unchanged")).count(),
        3,
        "{out}"
    );
    assert!(out.contains("pod/d created"), "{out}");
}

const THREE: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a}
spec: {containers: [{name: c, command: [sleep, infinity]}], terminationGracePeriodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec: {containers: [{name: c, command: [sleep, infinity]}], terminationGracePeriodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: c}
spec: {containers: [{name: c, command: [sleep, infinity]}], terminationGracePeriodSeconds: 1}
";

/// `delete -f` deletes everything it can, reports what is missing as kubectl does, and exits 1
/// at the end; --ignore-not-found makes that fine. Several names at once likewise.
#[test]
fn delete_f_goes_on_past_a_missing_pod() {
    let c = TestCluster::up("delf", &["--nodes", "1"]);
    let dir = TempDir::new("delf-files");
    let file = dir.path().join("three.yaml");
    std::fs::write(&file, THREE).unwrap();
    let f = file.display().to_string();
    c.ok(&["apply", "-f", &f]);
    c.ok(&["delete", "pod", "b"]);
    let out = c.flatnet(&["delete", "-f", &f]);
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "pod \"a\" deleted\npod \"c\" deleted\n");
    assert!(
        stderr(&out).contains("Error from server (NotFound): pods \"b\" not found"),
        "{}",
        stderr(&out)
    );
    assert!(pods(&c, &[]).is_empty());

    c.ok(&["apply", "-f", &f]);
    c.ok(&["delete", "pod", "a"]);
    let out = c.ok(&["delete", "-f", &f, "--ignore-not-found"]);
    assert_eq!(out, "pod \"b\" deleted\npod \"c\" deleted\n");
    c.ok(&["apply", "-f", &f]);
    let out = c.flatnet(&["delete", "pod", "a", "nope", "c"]);
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "pod \"a\" deleted\npod \"c\" deleted\n");
    assert_eq!(names(&pods(&c, &[])), BTreeSet::from(["b".to_string()]));
}

/// A container that notes when SIGTERM comes (and otherwise ignores it) in `file`.
fn stubborn(name: &str, file: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    command: [python3, -c, \"import signal,time; signal.signal(signal.SIGTERM, lambda *a: open('{file}', 'a').write(repr(time.time()) + '\\\\n')); time.sleep(1000)\"]\n"
    )
}

/// --grace-period shortens the wait for a PID 1 that ignores SIGTERM (and the wait says what it
/// waits for); --force --grace-period=0 kills at once with kubectl's warning; pods stop in
/// parallel: SIGTERM reaches both before either's grace period ends.
#[test]
fn delete_grace_period_and_force() {
    let c = TestCluster::up("grace", &["--nodes", "1"]);
    let dir = TempDir::new("grace-marks");
    let mark = |n: &str| dir.path().join(n).display().to_string();
    let yaml = [
        stubborn("s1", &mark("s1")),
        stubborn("s2", &mark("s2")),
        stubborn("s3", &mark("s3")),
    ]
    .join("---\n");
    let out = c.apply_stdin(&yaml, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pids: Vec<u64> = ["s1", "s2", "s3"]
        .iter()
        .map(|n| container_pid(&c, "default", n))
        .collect();
    // The handler is installed once python runs its first line; wait for its sleep.
    std::thread::sleep(Duration::from_millis(500));

    // Two at once, 3 s each: both get SIGTERM within that time of each other.
    let started = std::time::Instant::now();
    let out = c.flatnet(&["delete", "pod", "s1", "s2", "--grace-period=3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("waiting for the containers to exit after SIGTERM")
            && stderr(&out).contains("pod/default/s1 (SIGKILL after 3s)"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "not the default 30 s"
    );
    let when = |n: &str| -> f64 {
        std::fs::read_to_string(mark(n))
            .unwrap_or_else(|e| panic!("{n} got no SIGTERM: {e}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(
        (when("s1") - when("s2")).abs() < 3.0,
        "stopped one after the other"
    );
    assert!(!alive(pids[0]) && !alive(pids[1]));

    let out = c.flatnet(&["delete", "pod", "s3", "--force", "--grace-period=0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Warning: Immediate deletion does not wait for confirmation"),
        "{}",
        stderr(&out)
    );
    assert!(!alive(pids[2]));
    assert!(
        !std::path::Path::new(&mark("s3")).exists(),
        "SIGKILL at once: no SIGTERM first"
    );
}

/// `run` as kubectl: one container named like the pod, label run=NAME, the words after `--`
/// are args (or with --command the command), `exec` works; with no words it runs `flatnet
/// pause`; --sandbox-only keeps the bare sandbox.
#[test]
fn run_makes_a_one_container_pod_and_exec_enters_it() {
    let c = TestCluster::up("runlike", &["--nodes", "1"]);
    c.ok(&[
        "run", "sleeper", "--image", "busybox", "--", "sleep", "1000",
    ]);
    wait_running(&c, "default", "sleeper");
    let p = pod(&c, "default", "sleeper");
    assert_eq!(p["labels"], serde_json::json!({"run": "sleeper"}));
    assert_eq!(p["spec"]["containers"][0]["name"], "sleeper");
    assert_eq!(p["spec"]["containers"][0]["image"], "busybox");
    assert_eq!(
        p["manifest"]["spec"]["containers"][0]["args"],
        serde_json::json!(["sleep", "1000"])
    );
    let cmdline = c.ok(&["exec", "sleeper", "--", "cat", "/proc/1/cmdline"]);
    assert_eq!(cmdline, "sleep\x001000\x00");
    let host = c.ok(&["exec", "sleeper", "--", "hostname"]);
    assert_eq!(host.trim(), "sleeper");

    c.ok(&[
        "run",
        "cmd",
        "--labels",
        "app=x",
        "--command",
        "--",
        "sh",
        "-c",
        "echo hi; exec sleep 1000",
    ]);
    wait_running(&c, "default", "cmd");
    let p = pod(&c, "default", "cmd");
    assert_eq!(p["labels"], serde_json::json!({"app": "x"}));
    assert_eq!(p["manifest"]["spec"]["containers"][0]["command"][0], "sh");
    eventually("cmd's log", WAIT, || c.ok(&["logs", "cmd"]) == "hi\n");

    c.ok(&["run", "plain"]);
    wait_running(&c, "default", "plain");
    let cmdline = c.ok(&["exec", "plain", "--", "cat", "/proc/1/cmdline"]);
    assert!(cmdline.ends_with("flatnet\x00pause\x00"), "{cmdline:?}");
    // pause exits on SIGTERM, so the 30 s grace period is not waited out.
    let started = std::time::Instant::now();
    let out = c.flatnet(&["delete", "pod", "plain"]);
    assert!(out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{}",
        stderr(&out)
    );

    let out = c.ok(&["run", "box", "--sandbox-only"]);
    assert!(out.contains("pod/box created"), "{out}");
    assert!(c
        .ok(&["describe", "pod", "box"])
        .contains("Containers:    none"));
    let out = c.flatnet(&["exec", "box", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("has no containers"),
        "{}",
        stderr(&out)
    );
    let out = c.flatnet(&["run", "bad", "--command"]);
    assert!(!out.status.success());
}

/// The README's tour: examples/kubectl/shop.yaml applies, applies again unchanged, and its
/// selectors pick what the tour says.
#[test]
fn the_tour_example_applies_and_selects() {
    let c = TestCluster::up("tour", &["--nodes", "2"]);
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/kubectl/shop.yaml")
        .display()
        .to_string();
    let out = c.ok(&["apply", "-f", &file]);
    assert!(
        out.starts_with("namespace/shop created\npod/web created"),
        "{out}"
    );
    let out = c.ok(&["apply", "-f", &file]);
    assert_eq!(
        out,
        "namespace/shop unchanged\npod/web unchanged\npod/db unchanged\n"
    );
    let picked = pods(&c, &["-n", "shop", "-l", "tier in (front,back),app!=db"]);
    assert_eq!(names(&picked), BTreeSet::from(["web".to_string()]));
    assert!(c
        .ok(&["get", "ns", "--show-labels"])
        .contains("kubernetes.io/metadata.name=shop,team=payments"));
    let out = c.ok(&["delete", "ns", "shop", "--grace-period", "1"]);
    assert_eq!(out, "namespace \"shop\" deleted\n");
    assert!(pods(&c, &["-A"]).is_empty());
}

/// A state dir from a flatnet before namespaces is not read: commands say so, and `down`
/// removes it.
#[test]
fn an_old_state_dir_is_refused_clearly_and_down_removes_it() {
    let c = TestCluster {
        name: common::unique("old"),
        state: TempDir::new("old-state"),
    };
    std::fs::create_dir_all(c.state_dir().join("pods")).unwrap();
    std::fs::write(
        c.state_dir().join("cluster.json"),
        r#"{"name":"x","clusterCIDR":"10.244.0.0/16","nodeMask":24,"underlay":"172.18.0.0/16","created":1,"nodes":[]}"#,
    )
    .unwrap();
    std::fs::write(c.state_dir().join("pods/web.json"), "{}").unwrap();
    let out = c.flatnet(&["get", "pods"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("was made by another version of flatnet")
            && stderr(&out).contains("flatnet down"),
        "{}",
        stderr(&out)
    );
    c.ok(&["down"]);
    assert!(!c.state_dir().exists());
}
