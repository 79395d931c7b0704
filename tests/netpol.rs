//! NetworkPolicy through the CLI, modelled on Kubernetes' own e2e suite for it: namespaces x,
//! y and z, pods a, b and c in each (a on node-1, b on node-2, c on node-3), each serving TCP
//! and UDP on ports 80 and 81 (named `serve-80-tcp` …). Each case applies its policies, then
//! probes the whole matrix — every pod to every other pod, TCP and UDP, 80 and 81 — from
//! inside the pods' namespaces, and compares it with the case's truth table. Enforcement is
//! asynchronous (the agents learn of a change by watching the registry), so each matrix is
//! probed until it matches, for a bounded time.
//!
//! The cases share one cluster per test (building nine pods on three nodes is most of the
//! cost); each removes its policies before the next.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use flatnet::netns::{self, NetNs};
use serde_json::Value;

/// How long a matrix may take to match after a change.
const CONVERGE: Duration = Duration::from_secs(20);
/// How long a probe waits for an answer: dropped packets look like this.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

const SERVER: &str = r#"
import socket, threading
def tcp(p):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p)); s.listen(128)
    while True:
        c, _ = s.accept(); c.close()
def udp(p):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", p))
    while True:
        d, a = s.recvfrom(64); s.sendto(d, a)
for p in (80, 81):
    for f in (tcp, udp):
        threading.Thread(target=f, args=(p,), daemon=True).start()
threading.Event().wait()
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    Tcp,
    Udp,
}

/// The probes of every pair.
const PROBES: [(Proto, u16); 4] = [
    (Proto::Tcp, 80),
    (Proto::Tcp, 81),
    (Proto::Udp, 80),
    (Proto::Udp, 81),
];

/// A pod of the model: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct P {
    ns: &'static str,
    pod: &'static str,
}

impl std::fmt::Display for P {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ns, self.pod)
    }
}

fn model() -> Vec<P> {
    let mut v = Vec::new();
    for ns in ["x", "y", "z"] {
        for pod in ["a", "b", "c"] {
            v.push(P { ns, pod });
        }
    }
    v
}

/// The manifest of the model: the namespaces (labelled ns=NAME) and the pods (labelled
/// pod=NAME), each on its node.
fn model_yaml() -> String {
    let mut s = String::new();
    for ns in ["x", "y", "z"] {
        s += &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n---\n");
    }
    let script = serde_json::to_string(SERVER).unwrap();
    for p in model() {
        let node = match p.pod {
            "a" => "node-1",
            "b" => "node-2",
            _ => "node-3",
        };
        s += &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {}, labels: {{pod: {}}}}}\n\
             spec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
             - name: serve\n    command: [python3, -u, -c, {script}]\n    ports:\n\
             \x20   - {{name: serve-80-tcp, containerPort: 80, protocol: TCP}}\n\
             \x20   - {{name: serve-81-tcp, containerPort: 81, protocol: TCP}}\n\
             \x20   - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}\n\
             \x20   - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}\n---\n",
            p.pod, p.ns, p.pod
        );
    }
    s
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `flatnet apply -f -` with `yaml`; returns stdout, asserting success.
fn apply(c: &TestCluster, yaml: &str) -> String {
    c.apply_ok(yaml)
}

/// A cluster of three nodes with the model's namespaces and pods, all serving.
struct Model {
    c: TestCluster,
    /// Each pod's namespace handle and IP.
    pods: BTreeMap<P, (NetNs, Ipv4Addr)>,
}

impl Model {
    fn up(tag: &str) -> Model {
        let c = TestCluster::up(tag, &["--nodes", "3"]);
        apply(&c, &model_yaml());
        let all: Vec<Value> =
            serde_json::from_str(&c.ok(&["get", "pods", "-A", "-o", "record"])).unwrap();
        let mut pods = BTreeMap::new();
        for p in model() {
            let v = all
                .iter()
                .find(|v| v["namespace"] == p.ns && v["name"] == p.pod)
                .unwrap_or_else(|| panic!("{p} listed"));
            let ip: Ipv4Addr = v["ip"].as_str().unwrap().parse().unwrap();
            let ns = NetNs::open(netns::named_path(
                &c.netns(&format!("pod-{}_{}", p.ns, p.pod)),
            ))
            .unwrap();
            pods.insert(p, (ns, ip));
        }
        let m = Model { c, pods };
        // Every server answers before any policy exists.
        m.expect("no policies (every server up)", |_, _, _, _| true);
        m
    }

    fn ip(&self, ns: &'static str, pod: &'static str) -> Ipv4Addr {
        self.pods[&P { ns, pod }].1
    }

    /// Probes every pair of distinct pods on every probe at once.
    fn matrix(&self) -> BTreeMap<(P, P, Proto, u16), bool> {
        let mut cells = Vec::new();
        for s in self.pods.keys() {
            for d in self.pods.keys().filter(|d| *d != s) {
                for (proto, port) in PROBES {
                    cells.push((s.clone(), d.clone(), proto, port));
                }
            }
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = cells
                .iter()
                .map(|(s, d, proto, port)| {
                    let (ns, _) = &self.pods[s];
                    let to = SocketAddr::from((self.pods[d].1, *port));
                    let proto = *proto;
                    scope.spawn(move || ns.run(move || reach(proto, to)).unwrap_or(false))
                })
                .collect();
            cells
                .iter()
                .cloned()
                .zip(handles.into_iter().map(|h| h.join().unwrap()))
                .collect()
        })
    }

    /// Probes until the matrix is the truth table `want` (source, destination, protocol,
    /// port), or fails with the cells that differ.
    fn expect(&self, case: &str, want: impl Fn(&P, &P, Proto, u16) -> bool) {
        let start = Instant::now();
        loop {
            let got = self.matrix();
            let wrong: Vec<String> = got
                .iter()
                .filter(|((s, d, proto, port), ok)| want(s, d, *proto, *port) != **ok)
                .map(|((s, d, proto, port), ok)| {
                    format!(
                        "{s} -> {d} {proto:?}/{port}: {} (want {})",
                        word(*ok),
                        word(!*ok)
                    )
                })
                .collect();
            if wrong.is_empty() {
                return;
            }
            if start.elapsed() > CONVERGE {
                let tables: String = ["node-1", "node-2", "node-3"]
                    .iter()
                    .map(|n| {
                        let out = Command::new("ip")
                            .args([
                                "netns",
                                "exec",
                                &self.c.netns(n),
                                "nft",
                                "list",
                                "table",
                                "inet",
                                "flatnet",
                            ])
                            .output()
                            .unwrap();
                        format!("--- {n}\n{}", stdout(&out))
                    })
                    .collect();
                panic!(
                    "case {case:?}: {} of {} cells wrong after {CONVERGE:?}:\n{}\n{tables}",
                    wrong.len(),
                    got.len(),
                    wrong.join("\n")
                );
            }
        }
    }

    /// Applies `yaml`, checks the matrix against `want`, deletes what it applied.
    fn case(&self, name: &str, yaml: &str, want: impl Fn(&P, &P, Proto, u16) -> bool) {
        apply(&self.c, yaml);
        self.expect(name, want);
        self.delete_all();
    }

    fn delete_all(&self) {
        for ns in ["x", "y", "z"] {
            self.c.ok(&["delete", "netpol", "--all", "-n", ns]);
        }
    }
}

fn word(ok: bool) -> &'static str {
    if ok {
        "reached"
    } else {
        "denied"
    }
}

/// Whether a new connection (TCP) or an echoed datagram (UDP) gets through to `to`.
fn reach(proto: Proto, to: SocketAddr) -> bool {
    match proto {
        Proto::Tcp => TcpStream::connect_timeout(&to, PROBE_TIMEOUT).is_ok(),
        Proto::Udp => {
            let Ok(s) = UdpSocket::bind(("0.0.0.0", 0)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(PROBE_TIMEOUT / 3));
            let mut buf = [0u8; 16];
            // Three tries: a datagram may be lost to a neighbour entry still resolving.
            (0..3).any(|_| {
                s.send_to(b"probe", to).is_ok()
                    && s.recv_from(&mut buf)
                        .is_ok_and(|(n, from)| n == 5 && from == to)
            })
        }
    }
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n"
    )
}

fn is(p: &P, ns: &str, pod: &str) -> bool {
    p.ns == ns && p.pod == pod
}

/// Ingress cases: default deny, selectors (pod, namespace, both in one peer, two peers),
/// ipBlock with except, a named port, an endPort range, two policies in union, UDP.
#[test]
fn ingress_policies_match_the_e2e_truth_tables() {
    let m = Model::up("npin");

    m.case(
        "default-deny ingress",
        &policy("x", "deny", "  podSelector: {}"),
        |_, d, _, _| d.ns != "x",
    );
    m.case(
        "allow from same-namespace pods by label",
        &policy(
            "x",
            "a-from-b",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
        ),
        |s, d, _, _| !is(d, "x", "a") || is(s, "x", "b"),
    );
    m.case(
        "allow from a namespace by label",
        &policy(
            "x",
            "a-from-y",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
        ),
        |s, d, _, _| !is(d, "x", "a") || s.ns == "y",
    );
    m.case(
        "pod and namespace selector in one peer (AND)",
        &policy(
            "x",
            "a-from-y-b",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}",
        ),
        |s, d, _, _| !is(d, "x", "a") || is(s, "y", "b"),
    );
    m.case(
        "two peers (OR)",
        &policy(
            "x",
            "a-from-y-or-b",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n    - podSelector: {matchLabels: {pod: b}}",
        ),
        |s, d, _, _| !is(d, "x", "a") || s.ns == "y" || is(s, "x", "b"),
    );
    let zc = m.ip("z", "c");
    m.case(
        "ipBlock with except",
        &policy(
            "x",
            "a-from-block",
            &format!("  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{zc}/32]}}}}]}}]"),
        ),
        |s, d, _, _| !is(d, "x", "a") || !is(s, "z", "c"),
    );
    m.case(
        "named port",
        &policy(
            "x",
            "a-81",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: serve-81-tcp}]}]",
        ),
        |_, d, proto, port| !is(d, "x", "a") || (proto == Proto::Tcp && port == 81),
    );
    m.case(
        "endPort range",
        &policy(
            "x",
            "a-81-90",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 81, endPort: 90, protocol: TCP}]}]",
        ),
        |_, d, proto, port| !is(d, "x", "a") || (proto == Proto::Tcp && port == 81),
    );
    m.case(
        "two policies in union",
        &(policy(
            "x",
            "a-from-b",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
        ) + &policy(
            "x",
            "a-from-y-c-81",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: c}}}], ports: [{port: 81}]}]",
        )),
        |s, d, proto, port| {
            !is(d, "x", "a") || is(s, "x", "b") || (is(s, "y", "c") && proto == Proto::Tcp && port == 81)
        },
    );
    m.case(
        "UDP",
        &policy(
            "x",
            "a-udp-80",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{protocol: UDP, port: 80}]}]",
        ),
        |_, d, proto, port| !is(d, "x", "a") || (proto == Proto::Udp && port == 80),
    );
}

/// Egress cases, and changes: default-deny egress, egress to one port only, an ingress-only
/// policy with egress rules present (egress stays open), a policy updated in place, a pod and
/// a namespace relabelled into and out of a policy.
#[test]
fn egress_updates_and_relabels_match_the_e2e_truth_tables() {
    let m = Model::up("npeg");

    m.case(
        "default-deny egress",
        &policy(
            "x",
            "deny-out",
            "  podSelector: {}\n  policyTypes: [Egress]",
        ),
        |s, _, _, _| s.ns != "x",
    );
    m.case(
        "egress to one port only",
        &policy(
            "x",
            "a-out-80",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: 80, protocol: TCP}]}]",
        ),
        |s, _, proto, port| !is(s, "x", "a") || (proto == Proto::Tcp && port == 80),
    );
    m.case(
        "ingress-only policy with egress rules present",
        &policy(
            "x",
            "a-in-only",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]\n  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]",
        ),
        |_, d, _, _| !is(d, "x", "a"),
    );

    // A policy updated in place: from x/b, then from x/c.
    let from = |pod: &str| {
        policy(
            "x",
            "a-from",
            &format!("  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: {pod}}}}}}}]}}]"),
        )
    };
    assert!(apply(&m.c, &from("b")).contains("a-from created"));
    m.expect("updated in place: before", |s, d, _, _| {
        !is(d, "x", "a") || is(s, "x", "b")
    });
    assert!(apply(&m.c, &from("c")).contains("a-from configured"));
    m.expect("updated in place: after", |s, d, _, _| {
        !is(d, "x", "a") || is(s, "x", "c")
    });
    m.delete_all();

    // Relabelled into and out of a policy: a pod, then a namespace.
    apply(
        &m.c,
        &policy(
            "x",
            "a-from-clients",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {role: client}}\n    - namespaceSelector: {matchLabels: {team: blue}}",
        ),
    );
    m.expect("relabel: nobody is a client", |_, d, _, _| !is(d, "x", "a"));
    m.c.ok(&["label", "pod", "c", "-n", "x", "role=client"]);
    m.expect("relabel: x/c labelled in", |s, d, _, _| {
        !is(d, "x", "a") || is(s, "x", "c")
    });
    m.c.ok(&["label", "ns", "z", "team=blue"]);
    m.expect("relabel: namespace z labelled in", |s, d, _, _| {
        !is(d, "x", "a") || is(s, "x", "c") || s.ns == "z"
    });
    m.c.ok(&["label", "pod", "c", "-n", "x", "role-"]);
    m.c.ok(&["label", "ns", "z", "team-"]);
    m.expect("relabel: both labelled out", |_, d, _, _| !is(d, "x", "a"));
    m.delete_all();
    m.expect("all policies deleted", |_, _, _, _| true);
}

/// `flatnet exec POD -- python3 …`: whether POD opens a TCP connection to `ip`:8080.
fn exec_reaches(c: &TestCluster, pod: &str, ip: &str) -> bool {
    let code = "import socket, sys; socket.create_connection((sys.argv[1], 8080), timeout=2)";
    c.flatnet(&["exec", pod, "--", "python3", "-c", code, ip])
        .status
        .success()
}

/// examples/netpol: seed 004's claim. A server bound on 0.0.0.0 is reachable from every
/// other pod; the policy isolates it and admits the labelled client only, on its named port;
/// `check` reports the denied cells as expected; deleting the policy opens the server again.
#[test]
fn example_a_policy_isolates_a_server_bound_on_all_addresses_but_for_one_client() {
    let c = TestCluster::up("npex", &["--nodes", "2"]);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/netpol");
    let first = dir.join("01-server-and-clients.yaml");
    let second = dir.join("02-admit-one-client.yaml");
    c.ok(&["apply", "-f", first.to_str().unwrap()]);
    let pods: Vec<Value> = serde_json::from_str(&c.ok(&["get", "pods", "-o", "record"])).unwrap();
    let ip = pods
        .iter()
        .find(|p| p["name"] == "server")
        .and_then(|p| p["ip"].as_str())
        .unwrap()
        .to_string();
    common::cluster::eventually("the server answers both pods", CONVERGE, || {
        exec_reaches(&c, "other", &ip) && exec_reaches(&c, "client", &ip)
    });

    let out = c.ok(&["apply", "-f", second.to_str().unwrap()]);
    assert!(
        out.contains("networkpolicy.networking.k8s.io/server-admits-client created"),
        "{out}"
    );
    common::cluster::eventually("other is cut off", CONVERGE, || {
        !exec_reaches(&c, "other", &ip)
    });
    assert!(
        exec_reaches(&c, "client", &ip),
        "the labelled client still gets in"
    );

    let listed = c.ok(&["get", "netpol"]);
    assert!(
        listed.contains("server-admits-client   app=server"),
        "{listed}"
    );
    let described = c.ok(&["describe", "networkpolicy", "server-admits-client"]);
    for want in [
        "PodSelector:     app=server",
        "To Port: http/TCP",
        "PodSelector: role=client",
        "Not affecting Egress traffic",
        "Policy Types: Ingress",
    ] {
        assert!(described.contains(want), "{want:?} not in\n{described}");
    }
    // check: every cell into the server is denied as expected (its listener is not on the
    // admitted port), and nothing fails.
    let check = c.ok(&["check"]);
    assert!(
        check.contains("2 exchanges denied as expected by NetworkPolicy")
            && check.contains("client -> server: isolated by default/server-admits-client")
            && check.contains("other -> server: isolated by default/server-admits-client"),
        "{check}"
    );
    // The drop names the policy where the packet died: the rule's comment and counter.
    let table = c.nft("node-1", &["list", "table", "inet", "flatnet"]);
    assert!(
        table.contains(
            "comment \"default/server ingress isolated by default/server-admits-client\""
        ),
        "{table}"
    );

    // trace names it too: the probe dies at node-1, on that rule's counter.
    let trace = c.flatnet(&["trace", "other", "server", "--port", "8080"]);
    let text = stdout(&trace);
    assert!(!trace.status.success(), "{text}");
    assert!(
        text.contains("isolated by default/server-admits-client"),
        "{text}"
    );

    let out = c.ok(&["delete", "-f", second.to_str().unwrap()]);
    assert!(out.contains("\"server-admits-client\" deleted"), "{out}");
    common::cluster::eventually("other gets in again", CONVERGE, || {
        exec_reaches(&c, "other", &ip)
    });
    assert!(c.ok(&["get", "netpol", "-o", "json"]).trim() == "[]");
}

/// Pods a Deployment makes (and makes again on a scale) are isolated like any other: the
/// controller publishes them to the agents as it makes them.
#[test]
fn a_policy_isolates_the_pods_a_deployment_makes() {
    let c = TestCluster::up("npdeploy", &["--nodes", "2"]);
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/workloads/web.yaml");
    c.ok(&["apply", "-f", web.to_str().unwrap()]);
    c.ok(&["run", "client", "--", "sleep", "infinity"]);
    let web_ips = |n: usize| -> Vec<String> {
        let pods: Vec<Value> =
            serde_json::from_str(&c.ok(&["get", "pods", "-l", "app=web", "-o", "record"])).unwrap();
        let ips: Vec<String> = pods
            .iter()
            .filter_map(|p| p["ip"].as_str().map(str::to_string))
            .collect();
        if ips.len() == n {
            ips
        } else {
            Vec::new()
        }
    };
    let mut ips = Vec::new();
    common::cluster::eventually("3 web pods with addresses", CONVERGE, || {
        ips = web_ips(3);
        !ips.is_empty()
    });
    common::cluster::eventually("the client reaches every web pod", CONVERGE, || {
        ips.iter().all(|ip| exec_reaches(&c, "client", ip))
    });
    apply(
        &c,
        &policy(
            "default",
            "web-admits-nobody",
            "  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n",
        ),
    );
    common::cluster::eventually("every web pod is isolated", CONVERGE, || {
        ips.iter().all(|ip| !exec_reaches(&c, "client", ip))
    });
    c.ok(&["scale", "deployment", "web", "--replicas", "4"]);
    let mut all = Vec::new();
    common::cluster::eventually("a fourth web pod", CONVERGE, || {
        all = web_ips(4);
        !all.is_empty()
    });
    let new: Vec<&String> = all.iter().filter(|ip| !ips.contains(ip)).collect();
    assert_eq!(new.len(), 1, "{all:?} vs {ips:?}");
    // Ready means it serves (its readiness probe comes from the node, which policy admits):
    // unreachable from here on is the policy's doing.
    common::cluster::eventually("4 web pods Ready", CONVERGE, || {
        c.ok(&["get", "pods", "-l", "app=web"])
            .lines()
            .filter(|l| l.contains(" 1/1 "))
            .count()
            == 4
    });
    common::cluster::eventually("the new pod is isolated too", CONVERGE, || {
        !exec_reaches(&c, "client", new[0])
    });
}

/// SCTP matched on the wire: this kernel has no SCTP sockets, so the client sends crafted INIT
/// chunks (with their CRC32c) from a raw socket and the server, on another node, watches for
/// them on a raw socket of its own. With no policy both ports arrive; a policy admitting
/// SCTP 9000 only lets 9000 in and not 9001; the same policy turned to TCP 9000 lets no SCTP
/// in, not even to 9000.
#[test]
fn sctp_ports_are_matched_on_the_wire() {
    use common::sctp;
    use std::sync::atomic::{AtomicU32, Ordering};

    // The CRC catalogue's check value of CRC-32/ISCSI (Castagnoli).
    assert_eq!(sctp::crc32c(b"123456789"), 0xE306_9283);
    let c = TestCluster::up("npsctp", &["--nodes", "2"]);
    apply(
        &c,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: server, labels: {app: server}}\nspec:\n  \
         nodeName: node-2\n  containers: [{name: c, image: busybox, command: [sleep, inf]}]\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec:\n  nodeName: node-1\n  \
         containers: [{name: c, image: busybox, command: [sleep, inf]}]\n",
    );
    let pods: Vec<Value> = serde_json::from_str(&c.ok(&["get", "pods", "-o", "record"])).unwrap();
    let server_ip: Ipv4Addr = pods
        .iter()
        .find(|p| p["name"] == "server")
        .and_then(|p| p["ip"].as_str())
        .unwrap()
        .parse()
        .unwrap();
    let open = |pod: &str| NetNs::open(netns::named_path(&c.netns(&format!("pod-default_{pod}"))));
    let (client_ns, server_ns) = (open("client").unwrap(), open("server").unwrap());
    let tx = client_ns.run(sctp::raw_socket).unwrap().unwrap();
    let rx = server_ns.run(sctp::raw_socket).unwrap().unwrap();
    // Each INIT has its own source port and initiate tag, so that neither conntrack nor the
    // receiver can take one for another.
    let seq = AtomicU32::new(1);
    let arrives = |dport: u16| {
        let n = seq.fetch_add(1, Ordering::Relaxed);
        let tag = 0x5c70_0000 | n;
        let packet = sctp::init(40_000 + n as u16, dport, tag);
        sctp::send(&tx, server_ip, &packet).unwrap();
        sctp::received(&rx, dport, tag, Duration::from_millis(800))
    };
    // The first INIT may wait for neighbour resolution on the way: a few tries.
    let arrives_soon = |dport: u16| (0..3).any(|_| arrives(dport));

    assert!(arrives_soon(9000), "no policy: SCTP 9000 arrives");
    assert!(arrives_soon(9001), "no policy: SCTP 9001 arrives");

    let admit = |proto: &str| {
        policy(
            "default",
            "server-sctp",
            &format!(
                "  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  \
                 - ports: [{{protocol: {proto}, port: 9000}}]"
            ),
        )
    };
    apply(&c, &admit("SCTP"));
    common::cluster::eventually("SCTP 9001 denied", CONVERGE, || !arrives(9001));
    assert!(arrives_soon(9000), "SCTP 9000 is admitted");
    assert!(!arrives(9001), "SCTP 9001 stays denied");
    let table = c.nft("node-2", &["list", "table", "inet", "flatnet"]);
    assert!(table.contains("sctp dport 9000"), "{table}");

    // TCP 9000 is not SCTP 9000.
    apply(&c, &admit("TCP"));
    common::cluster::eventually("SCTP 9000 denied under a TCP rule", CONVERGE, || {
        !arrives(9000)
    });
    assert!(!arrives(9000) && !arrives(9001));
    let table = c.nft("node-2", &["list", "table", "inet", "flatnet"]);
    assert!(
        table.contains("tcp dport 9000") && !table.contains("sctp dport"),
        "{table}"
    );
}
