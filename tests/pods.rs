//! Pods as Kubernetes defines them, through the built `flatnet` binary: every example under
//! examples/pods/ is applied and its claim checked, and the lifecycle (restart policies,
//! back-off, grace periods, start errors) and bad manifests are exercised. Containers are real
//! processes in real namespaces; `exec` and /proc are the witnesses.
//!
//! One test per claim: a failure names its claim and hides no other. The examples share one
//! cluster (see [`examples`]); every other test has a cluster of its own, which costs about a
//! tenth of a second.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Once, OnceLock};
use std::time::Duration;

use common::cluster::{eventually, TestCluster};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/pods")
        .join(name)
        .display()
        .to_string()
}

fn apply(c: &TestCluster, file: &str) -> String {
    c.ok(&["apply", "-f", file, "--restart-backoff", "0.2"])
}

fn pod(c: &TestCluster, name: &str) -> Value {
    let all: Value = serde_json::from_str(&c.ok(&["get", "pods", "-o", "record"])).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

fn container(c: &TestCluster, pod_name: &str, container: &str) -> Value {
    let p = pod(c, pod_name);
    p["status"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["name"] == container)
        .cloned()
        .unwrap_or(Value::Null)
}

fn wait_running(c: &TestCluster, pod_name: &str) {
    eventually(
        &format!("{pod_name} has all containers running"),
        WAIT,
        || {
            let p = pod(c, pod_name);
            let cs = p["status"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            !cs.is_empty() && cs.iter().all(|x| x["state"] == "running")
        },
    );
}

fn exec(c: &TestCluster, pod: &str, container: &str, cmd: &[&str]) -> (bool, String) {
    let mut args = vec!["exec", pod, "-c", container, "--"];
    args.extend_from_slice(cmd);
    let out = c.flatnet(&args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn logs(c: &TestCluster, pod: &str, container: &str) -> String {
    c.ok(&["logs", pod, "-c", container])
}

fn ip(c: &TestCluster, pod_name: &str) -> String {
    pod(c, pod_name)["ip"].as_str().unwrap().to_string()
}

const CONNECT: &str =
    "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)";

/// Every example, in the order of its claim.
const EXAMPLES: &[&str] = &[
    "01-two-containers-one-ip.yaml",
    "02-localhost.yaml",
    "03-port-clash.yaml",
    "04-hostname.yaml",
    "05-shared-ipc.yaml",
    "06-sidecar-logs.yaml",
    "07-cross-node.yaml",
    "08-run-to-completion.yaml",
];

/// The cluster the examples run on, shared by the tests of their claims: made by the first of
/// them with every example applied at once, so that the pods' start-up waits (a Python server
/// waits ten seconds for DNS before it listens) overlap instead of adding up. The tests only
/// read it (get, logs, exec), so one that fails leaves it as the others need it; a OnceLock
/// has no lock to poison, and a set-up that fails is retried by the next test with a new
/// cluster (the failed one is brought down as it unwinds). Statics are never dropped: the
/// cluster is brought down when the test process exits, whatever the tests did.
static EXAMPLES_CLUSTER: OnceLock<TestCluster> = OnceLock::new();

fn examples() -> &'static TestCluster {
    EXAMPLES_CLUSTER.get_or_init(|| {
        static AT_EXIT: Once = Once::new();
        extern "C" fn down() {
            if let Some(c) = EXAMPLES_CLUSTER.get() {
                c.teardown();
            }
        }
        AT_EXIT.call_once(|| {
            // SAFETY: registers a plain function; it only runs `flatnet down` and removes
            // the cluster's state dir, which is fine while the process exits.
            let rc = unsafe { libc::atexit(down) };
            assert_eq!(rc, 0, "atexit");
        });
        let c = TestCluster::up("examples", &["--nodes", "2"]);
        for f in EXAMPLES {
            apply(&c, &example(f));
        }
        c
    })
}

/// A cluster with `yaml` applied.
fn with_yaml(tag: &str, yaml: &str) -> TestCluster {
    let c = TestCluster::up(tag, &["--nodes", "1"]);
    let out = c.apply_stdin(yaml, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c
}

/// Claim 1: two containers, one IP: each sees the pod's address on its eth0.
#[test]
fn two_containers_share_one_ip() {
    let c = examples();
    wait_running(c, "one-ip");
    let pod_ip = ip(c, "one-ip");
    for name in ["a", "b"] {
        eventually("the container printed its address", WAIT, || {
            logs(c, "one-ip", name).contains(&format!("inet {pod_ip}/32"))
        });
    }
    let yaml = c.ok(&["get", "pods", "one-ip", "-o", "yaml"]);
    assert!(
        yaml.contains("name: one-ip") && yaml.contains("phase: Running"),
        "{yaml}"
    );
}

/// Claim 2: localhost between siblings, also to a server bound to 127.0.0.1 only; another
/// pod reaches it neither on its own localhost nor on the pod IP.
#[test]
fn siblings_share_localhost_and_other_pods_do_not() {
    let c = examples();
    wait_running(c, "localhost");
    wait_running(c, "one-ip");
    let server_ip = ip(c, "localhost");
    eventually("the sibling reaches 127.0.0.1:8080", WAIT, || {
        exec(
            c,
            "localhost",
            "client",
            &["python3", "-c", CONNECT, "127.0.0.1", "8080"],
        )
        .0
    });
    let (ok, _) = exec(
        c,
        "one-ip",
        "a",
        &["python3", "-c", CONNECT, "127.0.0.1", "8080"],
    );
    assert!(!ok, "another pod's localhost is its own");
    let (ok, _) = exec(
        c,
        "one-ip",
        "a",
        &["python3", "-c", CONNECT, &server_ip, "8080"],
    );
    assert!(!ok, "a server on 127.0.0.1 is not reachable on the pod IP");
}

/// Claim 3: a port clash: the second container fails with EADDRINUSE, in its log and its
/// state; `get -o wide` shows the containerPorts and `describe` the state.
#[test]
fn a_port_clash_fails_the_second_container() {
    let c = examples();
    eventually("the second container has failed", WAIT, || {
        container(c, "port-clash", "second")["state"] == "terminated"
    });
    let second = container(c, "port-clash", "second");
    assert_eq!(second["exitCode"], 1, "{second}");
    assert!(logs(c, "port-clash", "second").contains("Address already in use"));
    assert_eq!(container(c, "port-clash", "first")["state"], "running");

    let wide = c.ok(&["get", "pods", "-o", "wide"]);
    assert!(wide.contains("8080/TCP"), "{wide}");
    let described = c.ok(&["describe", "pod", "port-clash"]);
    for want in [
        "Ports:         8080/TCP",
        "Terminated: Error, exit code 1",
        "Restart Count: 0",
    ] {
        assert!(described.contains(want), "{want:?} not in {described}");
    }
}

/// Claim 4: one hostname for the whole pod.
#[test]
fn one_hostname_for_the_pod() {
    let c = examples();
    wait_running(c, "hostname");
    for name in ["a", "b"] {
        let (ok, out) = exec(c, "hostname", name, &["hostname"]);
        assert!(ok && out.trim() == "web-frontend", "{out}");
        eventually("the container printed its hostname", WAIT, || {
            logs(c, "hostname", name).contains("web-frontend")
        });
    }
}

/// Claim 5: shared IPC: SysV and POSIX shared memory made by one container, seen by its
/// sibling and by no other pod, and not on the machine.
#[test]
fn ipc_is_shared_within_the_pod_only() {
    let c = examples();
    wait_running(c, "shared-ipc");
    wait_running(c, "one-ip");
    eventually("maker created its segment", WAIT, || {
        exec(c, "shared-ipc", "reader", &["ipcs", "-m"])
            .1
            .contains("4096")
    });
    let (ok, out) = exec(c, "shared-ipc", "reader", &["cat", "/dev/shm/greeting"]);
    assert!(ok && out.contains("hello from maker"), "{out}");
    let (_, out) = exec(c, "one-ip", "a", &["ipcs", "-m"]);
    assert!(!out.contains("4096"), "{out}");
    let (ok, _) = exec(c, "one-ip", "a", &["cat", "/dev/shm/greeting"]);
    assert!(!ok);
    assert!(
        !Path::new("/dev/shm/greeting").exists(),
        "the machine's /dev/shm is untouched"
    );
}

/// Claim 6: a sidecar reads the app's log over an emptyDir; the machine's /srv is untouched.
#[test]
fn a_sidecar_reads_the_app_log_over_an_empty_dir() {
    let c = examples();
    eventually("the collector shows the app's lines", WAIT, || {
        logs(c, "sidecar-logs", "collector").contains("request 3 served")
    });
    assert!(!Path::new("/srv/app.log").exists());
}

/// `logs -f` keeps printing what the container writes: more lines than the log held when it
/// started.
#[test]
fn logs_follow_prints_new_lines() {
    let c = examples();
    eventually("the collector has written", WAIT, || {
        !logs(c, "sidecar-logs", "collector").is_empty()
    });
    let held = logs(c, "sidecar-logs", "collector").lines().count();
    let mut follow = Command::new(common::workspace_bin("flatnet"))
        .args(["--name", &c.name, "--state-dir"])
        .arg(c.state.path())
        .args(["logs", "sidecar-logs", "-c", "collector", "-f"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(follow.stdout.take().unwrap());
    let followed = std::io::BufRead::lines(out).take(held + 3).count();
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(followed, held + 3, "logs -f ended early");
}

/// Claim 7: across nodes by pod IP; the server's access log names the client's pod IP.
#[test]
fn pods_on_two_nodes_talk_by_pod_ip() {
    let c = examples();
    wait_running(c, "server");
    wait_running(c, "client");
    assert_ne!(pod(c, "server")["node"], pod(c, "client")["node"]);
    let (server, client) = (ip(c, "server"), ip(c, "client"));
    let get = format!("import urllib.request as u; u.urlopen('http://{server}:8080/', timeout=3)");
    eventually("the client reaches the server", WAIT, || {
        exec(c, "client", "shell", &["python3", "-c", &get]).0
    });
    let log = logs(c, "server", "http");
    assert!(log.contains(&format!("{client} - - ")), "{log}");
}

/// Claim 8: run to completion: Succeeded, and Failed with the exit code.
#[test]
fn run_to_completion_succeeds_or_fails_with_the_exit_code() {
    let c = examples();
    eventually("the jobs finish", WAIT, || {
        pod(c, "job-ok")["status"]["phase"] == "Succeeded"
            && pod(c, "job-fail")["status"]["phase"] == "Failed"
    });
    assert_eq!(container(c, "job-fail", "work")["exitCode"], 3);
    assert!(logs(c, "job-ok", "work").contains("done"));
    let table = c.ok(&["get", "pods"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("job-ok") && l.contains("Completed")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("job-fail") && l.contains("Error")),
        "{table}"
    );
}

/// Always: restarted again and again, with back-off in between.
#[test]
fn restart_policy_always_restarts_a_crashing_container() {
    let c = with_yaml(
        "always",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: crashy}
spec:
  containers:
  - {name: boom, command: [sh, -c, "echo boom; exit 1"]}
"#,
    );
    eventually("crashy restarts", WAIT, || {
        container(&c, "crashy", "boom")["restartCount"].as_u64() >= Some(2)
    });
    assert_eq!(pod(&c, "crashy")["status"]["phase"], "Running");
    // Each instance's output on its own, as kubelet keeps it: the previous one's is whole.
    let previous = c.ok(&["logs", "crashy", "-c", "boom", "--previous"]);
    assert_eq!(previous, "boom\n");
    assert!(logs(&c, "crashy", "boom").matches("boom").count() <= 1);
}

/// OnFailure: restarted until it succeeds, then Succeeded.
#[test]
fn restart_policy_on_failure_restarts_until_success() {
    let c = with_yaml(
        "onfailure",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: retry-then-ok}
spec:
  restartPolicy: OnFailure
  containers:
  - name: flaky
    # Fails the first time, succeeds the second: the emptyDir survives the restart.
    command: [sh, -c, "if [ -e /srv/tried ]; then echo ok; else touch /srv/tried; exit 2; fi"]
    volumeMounts: [{name: scratch, mountPath: /srv}]
  volumes: [{name: scratch, emptyDir: {}}]
"#,
    );
    eventually("retry-then-ok succeeds", WAIT, || {
        pod(&c, "retry-then-ok")["status"]["phase"] == "Succeeded"
    });
    assert_eq!(container(&c, "retry-then-ok", "flaky")["restartCount"], 1);
}

/// A command that does not exist: the state says why; Never, so Failed.
#[test]
fn a_missing_command_is_a_start_error() {
    let c = with_yaml(
        "starterror",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: no-such-command}
spec:
  restartPolicy: Never
  containers:
  - {name: c, command: [definitely-not-a-command-here]}
"#,
    );
    eventually("no-such-command fails", WAIT, || {
        pod(&c, "no-such-command")["status"]["phase"] == "Failed"
    });
    let st = container(&c, "no-such-command", "c");
    assert_eq!(st["reason"], "StartError", "{st}");
    assert!(
        st["message"].as_str().unwrap().contains("not found"),
        "{st}"
    );
}

/// A shared PID namespace: the infra process is PID 1, siblings see each other, and one
/// container exiting leaves the other running.
#[test]
fn a_shared_pid_namespace_has_the_infra_process_as_pid_1() {
    let c = with_yaml(
        "sharedpid",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: shared-pid}
spec:
  shareProcessNamespace: true
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - {name: stays, command: [sleep, infinity]}
  - {name: leaves, command: [sh, -c, "sleep 0.5; exit 0"]}
"#,
    );
    eventually("leaves has exited", WAIT, || {
        container(&c, "shared-pid", "leaves")["state"] == "terminated"
    });
    assert_eq!(container(&c, "shared-pid", "stays")["state"], "running");
    let (ok, out) = exec(&c, "shared-pid", "stays", &["cat", "/proc/1/cmdline"]);
    assert!(
        ok && out.contains("flatnet"),
        "PID 1 is the infra process: {out:?}"
    );
    let (_, ps) = exec(&c, "shared-pid", "stays", &["ps", "-e", "-o", "comm="]);
    assert!(ps.contains("sleep"), "{ps}");
}

const STUBBORN: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, command: [sleep, infinity]}
"#;

/// Without sharing, a container is PID 1 of its own namespace.
#[test]
fn a_container_is_pid_1_of_its_own_pid_namespace() {
    let c = with_yaml("ownpid", STUBBORN);
    wait_running(&c, "stubborn");
    let (_, out) = exec(&c, "stubborn", "c", &["cat", "/proc/1/cmdline"]);
    assert!(out.starts_with("sleep"), "{out:?}");
}

/// A PID 1 that ignores SIGTERM is killed after the grace period; delete removes it all.
#[test]
fn delete_kills_a_pid_1_that_ignores_sigterm_and_removes_the_pod() {
    let c = with_yaml("grace", STUBBORN);
    wait_running(&c, "stubborn");
    let pid = container(&c, "stubborn", "c")["pid"].as_u64().unwrap();
    let sup = pod(&c, "stubborn")["supervisor"]["pid"].as_u64().unwrap();
    c.ok(&["delete", "pod", "stubborn"]);
    for p in [pid, sup] {
        assert!(!alive(p), "process {p} survived the delete");
    }
    assert!(!c.namespaces().contains(&c.netns("pod-default_stubborn")));
    assert!(!c.state_dir().join("pods/default/stubborn").exists());
}

/// Running (not a zombie).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn bad_manifests_are_refused_and_create_nothing() {
    let c = TestCluster::up("badpods", &["--nodes", "1"]);
    let pod =
        |spec: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n{spec}");
    let cases = [
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p\n".to_string(), "document 1"),
        (
            pod("  containers:\n  - name: c\n    command: [x]\n    volumeMounts: [{name: v, mountPath: /srv}]\n"),
            "spec.containers[0].volumeMounts[0].name",
        ),
        (pod("  nodeName: node-9\n  containers: [{name: c, command: [x]}]\n"), "node-9"),
        (pod("  containers: [{name: c, command: [x], ports: [{containerPort: http}]}]\n"), "spec.containers[0].ports[0].containerPort"),
    ];
    for (yaml, expect) in &cases {
        let out = c.apply_stdin(yaml, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{yaml}");
        assert!(err.contains(expect), "{expect:?} not in {err}");
    }
    // A good document followed by a bad one: neither is created.
    let two = format!(
        "{}---\n{}",
        pod("  containers: [{name: c, command: [sleep, '1']}]\n")
            .replace("name: p}", "name: good}"),
        pod("  containers: [{name: c}]\n")
    );
    assert!(!c.apply_stdin(&two, &[]).status.success());
    assert_eq!(c.ok(&["get", "pods"]), "", "no pod");
    assert_eq!(
        c.namespaces().len(),
        2,
        "underlay and node: no pod namespace"
    );

    // Unsupported and misspelled fields are warnings naming their path; the pod runs.
    let out = c.apply_stdin(
        &pod("  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    comand: [oops]\n    command: [sleep, infinity]\n    securityContext: {privileged: true}\n"),
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("spec.containers[0].comand"), "{err}");
    assert!(err.contains("spec.containers[0].securityContext"), "{err}");
    // The same name with another command: a change apply may not make in place.
    let again = c.apply_stdin(&pod("  containers: [{name: c, command: [x]}]\n"), &[]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(
        err.contains("spec.containers[0].command: Forbidden: pod updates may not change"),
        "{err}"
    );

    // down leaves nothing, containers included.
    wait_running(&c, "p");
    let pid = container(&c, "p", "c")["pid"].as_u64().unwrap();
    c.ok(&["down"]);
    assert!(!alive(pid));
    assert!(c.namespaces().is_empty());
}

#[test]
fn down_stops_containers_even_when_the_state_is_lost() {
    let c = TestCluster::up("lostpods", &["--nodes", "1"]);
    apply(&c, &example("01-two-containers-one-ip.yaml"));
    wait_running(&c, "one-ip");
    let pids: Vec<u64> = ["a", "b"]
        .iter()
        .map(|n| container(&c, "one-ip", n)["pid"].as_u64().unwrap())
        .chain(pod(&c, "one-ip")["supervisor"]["pid"].as_u64())
        .collect();
    eventually("the state dir is gone", WAIT, || {
        std::fs::remove_dir_all(c.state_dir()).is_ok()
    });
    c.ok(&["down"]);
    for p in pids {
        assert!(!alive(p), "process {p} survived");
    }
    assert!(c.namespaces().is_empty());
}
