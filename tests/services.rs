//! Services and the cluster DNS through the built `flatnet` binary: kube-proxy's part (ClusterIP
//! load balancing by DNAT at the client's node, the client's address kept, hairpin
//! masqueraded, an empty Service rejecting at once, NodePort with both traffic policies) and
//! CoreDNS's (A and SRV records, headless Services, NXDOMAIN and REFUSED, answers following
//! the endpoints), each container's resolv.conf and hosts, and NetworkPolicy judging Service
//! traffic by its endpoint; with the manifests of `examples/services/`.
//!
//! The clients are pods running python3 with the container's own resolver: what they resolve
//! goes through their /etc/resolv.conf to the DNS pod behind the kube-dns Service.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use common::cluster::{eventually, TestCluster};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn example(name: &str) -> String {
    let path = format!("{}/examples/services/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The example client pod, on `node`, named `name`.
fn client(name: &str, node: &str) -> String {
    example("02-client.yaml")
        .replace("name: client", &format!("name: {name}"))
        .replace("spec:\n", &format!("spec:\n  nodeName: {node}\n"))
}

/// GETs `url` `n` times (a new connection each); each answer's line, or `ERR <exception>`.
const GET: &str = r#"
import json, sys, urllib.request as u
out = []
for _ in range(int(sys.argv[2])):
    try:
        out.append(u.urlopen(sys.argv[1], timeout=3).read().decode().strip())
    except Exception as e:
        out.append("ERR " + type(e).__name__)
print(json.dumps(out))
"#;

/// One DNS query (name, type) to the cluster DNS over UDP: the rcode and the answers.
const DIG: &str = r#"
import json, socket, struct, sys
name, qtype = sys.argv[1], int(sys.argv[2])
msg = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
for l in name.split("."):
    msg += bytes([len(l)]) + l.encode()
msg += b"\0" + struct.pack(">HH", qtype, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(msg, ("10.96.0.10", 53))
r = s.recv(4096)
def name_at(i):
    labels = []
    while True:
        l = r[i]
        if l >= 0xC0:
            return ".".join(labels + [name_at(((l & 0x3F) << 8) | r[i + 1])[0]]), i + 2
        if l == 0:
            return ".".join(labels), i + 1
        labels.append(r[i + 1:i + 1 + l].decode())
        i += l + 1
i = name_at(12)[1] + 4
out = []
for _ in range(struct.unpack(">H", r[6:8])[0]):
    i = name_at(i)[1]
    t, _, _, ln = struct.unpack(">HHIH", r[i:i + 10])
    i += 10
    d = r[i:i + ln]
    if t == 33:
        out.append("%d %d %d %s" % (*struct.unpack(">HHH", d[:6]), name_at(i + 6)[0]))
    elif t == 1:
        out.append(socket.inet_ntoa(d))
    i += ln
print(json.dumps({"rcode": r[3] & 15, "answers": sorted(out)}))
"#;

/// Connects to (host, port): `connected`, or the exception's name.
const CONNECT: &str = r#"
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    print("connected")
except Exception as e:
    print(type(e).__name__)
"#;

fn py(c: &TestCluster, pod: &str, script: &str, args: &[&str]) -> String {
    let mut all = vec!["exec", pod, "--", "python3", "-c", script];
    all.extend_from_slice(args);
    c.ok(&all).trim().to_string()
}

fn get(c: &TestCluster, pod: &str, url: &str, n: usize) -> Vec<String> {
    serde_json::from_str(&py(c, pod, GET, &[url, &n.to_string()])).expect("answers")
}

fn dig(c: &TestCluster, pod: &str, name: &str, qtype: u16) -> (u64, Vec<String>) {
    let v: Value = serde_json::from_str(&py(c, pod, DIG, &[name, &qtype.to_string()])).unwrap();
    let answers = v["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    (v["rcode"].as_u64().unwrap(), answers)
}

fn records(c: &TestCluster) -> Vec<Value> {
    serde_json::from_str::<Value>(&c.ok(&["get", "pods", "-A", "-o", "record"]))
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Pod name → (IP, node), of the pods whose name starts with `prefix`.
fn pods_named(c: &TestCluster, prefix: &str) -> BTreeMap<String, (String, String)> {
    records(c)
        .into_iter()
        .filter(|p| p["name"].as_str().unwrap().starts_with(prefix))
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                (
                    p["ips"][0].as_str().unwrap_or_default().to_string(),
                    p["node"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// The endpoints of Service `svc` in `default`: address → ready.
fn endpoints(c: &TestCluster, svc: &str) -> BTreeMap<String, bool> {
    let slices: Value =
        serde_json::from_str(&c.ok(&["get", "endpointslices", "-o", "json"])).unwrap();
    slices
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == svc)
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["addresses"][0].as_str().unwrap().to_string(),
                e["conditions"]["ready"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn ready_endpoints(c: &TestCluster, svc: &str) -> BTreeSet<String> {
    endpoints(c, svc)
        .into_iter()
        .filter(|(_, r)| *r)
        .map(|(a, _)| a)
        .collect()
}

/// Waits until `web` has `n` ready endpoints and the client resolves it.
fn wait_web(c: &TestCluster, client: &str, n: usize) {
    eventually("web's endpoints ready", WAIT, || {
        ready_endpoints(c, "web").len() == n
    });
    eventually("the cluster DNS answering", WAIT, || {
        get(c, client, "http://web", 1)[0].starts_with("web-")
    });
}

/// Seeds 002 and 004 with examples/services/01-web.yaml: a Deployment of 3 behind a ClusterIP
/// Service, reached by name and by ClusterIP from a client pod, balanced, the client's own
/// address seen by every backend; readiness and deletion followed by the endpoints with no
/// request failing once the replacement is ready; hairpin masqueraded; an empty Service
/// rejecting at once; NetworkPolicy judging Service traffic by the endpoint.
#[test]
fn clusterip_balances_keeps_the_client_ip_and_follows_the_pods() {
    let c = TestCluster::up("svc", &["--nodes", "3"]);
    let out = c.apply_ok(&example("01-web.yaml"));
    assert!(out.contains("service/web created"), "{out}");
    c.apply_ok(&client("client", "node-1"));
    wait_web(&c, "client", 3);
    let client_ip = pods_named(&c, "client")["client"].0.clone();

    // kube-dns and its pod came with the first Service.
    let svcs = c.ok(&["get", "services", "-A"]);
    assert!(
        svcs.contains("kube-dns") && svcs.contains("10.96.0.10"),
        "{svcs}"
    );
    let svc: Value = serde_json::from_str(&c.ok(&["get", "svc", "web", "-o", "json"])).unwrap();
    let cluster_ip = svc[0]["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(cluster_ip.starts_with("10.96."), "{cluster_ip}");

    // By name and by ClusterIP; 300 requests, each backend at least 20 %, each seeing the
    // client's pod IP; at least two backends are on other nodes than the client.
    let web = pods_named(&c, "web-");
    assert!(
        web.values().filter(|(_, n)| n != "node-1").count() >= 2,
        "{web:?}"
    );
    let mut by_pod: BTreeMap<String, usize> = BTreeMap::new();
    for answer in get(&c, "client", "http://web", 300) {
        let (pod, seen) = answer.split_once(' ').unwrap_or_else(|| panic!("{answer}"));
        assert_eq!(seen, client_ip, "the backend {pod} saw {seen}");
        *by_pod.entry(pod.to_string()).or_default() += 1;
    }
    assert_eq!(by_pod.len(), 3, "{by_pod:?}");
    assert!(by_pod.values().all(|n| *n >= 60), "{by_pod:?}");
    let by_ip = get(&c, "client", &format!("http://{cluster_ip}"), 5);
    assert!(by_ip.iter().all(|a| a.ends_with(&client_ip)), "{by_ip:?}");

    // A readiness failure takes the pod out of the endpoints, and back.
    let (victim, (victim_ip, _)) = web.iter().next().unwrap();
    py(
        &c,
        victim,
        "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/unready')",
        &[],
    );
    eventually("the unready pod out of the endpoints", WAIT, || {
        endpoints(&c, "web").get(victim_ip) == Some(&false)
    });
    let answers = get(&c, "client", "http://web", 30);
    assert!(
        answers
            .iter()
            .all(|a| a.starts_with("web-") && !a.starts_with(victim.as_str())),
        "{answers:?}"
    );
    py(
        &c,
        victim,
        "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/ready')",
        &[],
    );
    eventually("the pod back in the endpoints", WAIT, || {
        endpoints(&c, "web").get(victim_ip) == Some(&true)
    });

    // A deleted backend is replaced with a new IP; once it is ready, no request fails.
    c.ok(&["delete", "pod", victim]);
    eventually("a replacement ready", WAIT, || {
        let ready = ready_endpoints(&c, "web");
        ready.len() == 3 && !ready.contains(victim_ip)
    });
    let now = pods_named(&c, "web-");
    let (new_pod, _) = now.iter().find(|(n, _)| !web.contains_key(*n)).unwrap();
    let answers = get(&c, "client", "http://web", 100);
    assert!(
        answers.iter().all(|a| a.starts_with("web-")),
        "a request failed: {answers:?}"
    );
    assert!(answers.iter().any(|a| a.starts_with(new_pod.as_str())));

    // Hairpin: a backend reaching its own Service lands on itself sometimes, masqueraded.
    let (me, (my_ip, _)) = now.iter().next().unwrap();
    let answers = get(&c, me, "http://web", 40);
    let mine: Vec<&String> = answers
        .iter()
        .filter(|a| a.starts_with(me.as_str()))
        .collect();
    assert!(!mine.is_empty(), "{answers:?}");
    assert!(
        mine.iter().all(|a| !a.ends_with(my_ip.as_str())),
        "{mine:?}"
    );
    assert!(answers.iter().all(|a| a.starts_with("web-")), "{answers:?}");

    // sessionAffinity: ClientIP keeps the client on one replica.
    c.apply_ok(&example("06-sticky.yaml"));
    eventually("the sticky Service answering", WAIT, || {
        get(&c, "client", "http://web-sticky", 1)[0].starts_with("web-")
    });
    let answers = get(&c, "client", "http://web-sticky", 20);
    let backends: BTreeSet<&str> = answers.iter().filter_map(|a| a.split(' ').next()).collect();
    assert_eq!(backends.len(), 1, "{answers:?}");

    // No ready endpoint: refused at once (ICMP from the client's node), not a timeout.
    c.apply_ok(&example("05-no-endpoints.yaml"));
    eventually("the empty Service resolving", WAIT, || {
        dig(&c, "client", "nobody.default.svc.cluster.local", 1)
            .1
            .len()
            == 1
    });
    assert_eq!(
        py(&c, "client", CONNECT, &["nobody", "80"]),
        "ConnectionRefusedError"
    );

    // NetworkPolicy sees the endpoint: only role=friend may reach app=web, through the
    // Service too.
    c.apply_ok(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-friends}\n\
         spec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  \
         - from: [{podSelector: {matchLabels: {role: friend}}}]\n    ports: [{port: http}]\n",
    );
    eventually("the policy denying the client", WAIT, || {
        py(&c, "client", CONNECT, &["web", "80"]) == "TimeoutError"
    });
    c.ok(&["label", "pod", "client", "role=friend"]);
    eventually("the policy admitting the client", WAIT, || {
        py(&c, "client", CONNECT, &["web", "80"]) == "connected"
    });

    // Every node has the proxy's own table, apart from the agent's.
    for node in ["node-1", "node-2", "node-3"] {
        let t = c.nft(node, &["list", "table", "ip", "flatnet-proxy"]);
        assert!(
            t.contains(&format!("{cluster_ip} . tcp . 80")),
            "{node}: {t}"
        );
    }
}

/// examples/services/03-headless.yaml and 04-nodeport.yaml: a headless Service's records (the
/// pods' own addresses, a name per pod, SRV for the named port) following its endpoints;
/// NXDOMAIN and REFUSED; kubelet's resolv.conf and hosts in the containers (the machine's
/// untouched); NodePort from a host outside the cluster with both traffic policies.
#[test]
fn headless_srv_nodeport_and_the_files_kubelet_writes() {
    let c = TestCluster::up("svcdns", &["--nodes", "3"]);
    let machine_resolv = std::fs::read("/etc/resolv.conf").unwrap();
    c.apply_ok(&example("01-web.yaml"));
    c.apply_ok(&client("client", "node-1"));
    c.apply_ok(&example("03-headless.yaml"));
    wait_web(&c, "client", 3);
    eventually("db's endpoints ready", WAIT, || {
        ready_endpoints(&c, "db").len() == 2
    });
    let db = pods_named(&c, "db-");
    let mut db_ips: Vec<String> = db.values().map(|(ip, _)| ip.clone()).collect();
    db_ips.sort();

    // Headless: the name is the pods' addresses; each pod has its own name; SRV per pod.
    let (rcode, a) = dig(&c, "client", "db.default.svc.cluster.local", 1);
    assert_eq!((rcode, a.clone()), (0, db_ips.clone()));
    let (_, srv) = dig(&c, "client", "_pg._tcp.db.default.svc.cluster.local", 33);
    assert_eq!(
        srv,
        vec![
            "0 50 5432 db-0.db.default.svc.cluster.local",
            "0 50 5432 db-1.db.default.svc.cluster.local"
        ]
    );
    assert_eq!(
        py(
            &c,
            "client",
            "import socket; print(socket.create_connection(('db-1.db', 5432)).recv(9).decode())",
            &[]
        ),
        "db-1"
    );
    let (_, srv) = dig(&c, "client", "_http._tcp.web.default.svc.cluster.local", 33);
    assert_eq!(srv, vec!["0 100 80 web.default.svc.cluster.local"]);
    assert_eq!(
        dig(&c, "client", "nope.default.svc.cluster.local", 1).0,
        3,
        "NXDOMAIN"
    );
    assert_eq!(dig(&c, "client", "example.com", 1).0, 5, "REFUSED");

    // Answers follow the endpoints.
    c.ok(&["delete", "pod", "db-1"]);
    eventually("db-1 gone from the SRV records", WAIT, || {
        dig(&c, "client", "_pg._tcp.db.default.svc.cluster.local", 33).1
            == vec!["0 100 5432 db-0.db.default.svc.cluster.local"]
    });

    // The files kubelet writes, in the containers only.
    assert_eq!(
        c.ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"]),
        "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local \
         cluster.local\noptions ndots:5\n"
    );
    let hosts = c.ok(&["exec", "db-0", "--", "cat", "/etc/hosts"]);
    assert!(
        hosts.contains(&format!(
            "{}\tdb-0.db.default.svc.cluster.local\tdb-0\n",
            db["db-0"].0
        )),
        "{hosts}"
    );
    c.apply_ok(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: own-dns}\nspec:\n  dnsPolicy: None\n  \
         dnsConfig: {nameservers: [192.0.2.53], searches: [example.test], options: [{name: ndots, value: \"2\"}]}\n  \
         containers:\n  - {name: c, image: busybox, command: [sleep, inf]}\n",
    );
    // As with kubectl, apply returns before the container runs; exec needs it running.
    let mut resolv = String::new();
    eventually("own-dns running", WAIT, || {
        let out = c.flatnet(&["exec", "own-dns", "--", "cat", "/etc/resolv.conf"]);
        resolv = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
    });
    assert_eq!(
        resolv,
        "nameserver 192.0.2.53\nsearch example.test\noptions ndots:2\n"
    );
    assert_eq!(std::fs::read("/etc/resolv.conf").unwrap(), machine_resolv);

    // NodePort from a host on the nodes' network. Two replicas, so one node has none.
    c.ok(&["scale", "deployment", "web", "--replicas", "2"]);
    eventually("two replicas", WAIT, || {
        ready_endpoints(&c, "web").len() == 2
    });
    c.apply_ok(&example("04-nodeport.yaml"));
    let outside = c.outside_host();
    let web = pods_named(&c, "web-");
    let nodes: BTreeMap<&str, &str> = [
        ("node-1", "172.18.0.2"),
        ("node-2", "172.18.0.3"),
        ("node-3", "172.18.0.4"),
    ]
    .into();
    let from_outside = |ip: &str, port: u16, n: usize| -> Vec<String> {
        let out = outside.sh(&[
            "python3",
            "-c",
            GET,
            &format!("http://{ip}:{port}"),
            &n.to_string(),
        ]);
        serde_json::from_str(out.trim()).unwrap()
    };
    eventually("the node ports open", WAIT, || {
        from_outside("172.18.0.2", 30080, 1)[0].starts_with("web-")
    });
    for (node, ip) in &nodes {
        // Cluster: every node answers, from any replica, and the replica sees the node's
        // side (masqueraded), never the outside host.
        let answers = from_outside(ip, 30080, 20);
        assert!(
            answers.iter().all(|a| a.starts_with("web-")),
            "{node}: {answers:?}"
        );
        assert!(
            answers.iter().all(|a| !a.ends_with("172.18.255.254")),
            "{answers:?}"
        );
        // Local: only a node's own replica answers, seeing the outside host; a node without
        // one drops.
        let local: Vec<&String> = web
            .iter()
            .filter(|(_, (_, n))| n == node)
            .map(|(p, _)| p)
            .collect();
        let answers = from_outside(ip, 30081, 6);
        if local.is_empty() {
            assert!(
                answers.iter().all(|a| a.starts_with("ERR")),
                "{node}: {answers:?}"
            );
        } else {
            for a in &answers {
                let (pod, seen) = a.split_once(' ').unwrap_or_else(|| panic!("{node}: {a}"));
                assert!(local.iter().any(|l| *l == pod), "{node}: {a}");
                assert_eq!(seen, "172.18.255.254");
            }
        }
    }
    assert!(
        web.values()
            .map(|(_, n)| n.as_str())
            .collect::<BTreeSet<_>>()
            .len()
            < 3
    );
}

/// Two backends (one per node) behind a Service with a TCP and a UDP port, the same as a
/// NodePort Service, one Service with no pod, and a client: all sleeping busybox containers,
/// since `flatnet trace` brings its own listeners.
const TRACED: &str = "\
apiVersion: v1\nkind: Pod\nmetadata: {name: be-1, labels: {app: be}}\nspec:\n  nodeName: node-1\n  \
containers: [{name: c, image: busybox, command: [sleep, inf]}]\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: be-2, labels: {app: be}}\nspec:\n  nodeName: node-2\n  \
containers: [{name: c, image: busybox, command: [sleep, inf]}]\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec:\n  nodeName: node-1\n  \
containers: [{name: c, image: busybox, command: [sleep, inf]}]\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: be}\nspec:\n  selector: {app: be}\n  ports:\n  \
- {name: web, port: 80, targetPort: 8080}\n  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: be-np}\nspec:\n  type: NodePort\n  selector: {app: be}\n  \
ports: [{port: 80, targetPort: 8080, nodePort: 30090}]\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: nobody}\nspec:\n  selector: {app: nobody}\n  \
ports: [{port: 80, targetPort: 8080}]\n";

/// `flatnet trace -o json`: the trace and whether it exited 0.
fn trace_json(c: &TestCluster, args: &[&str]) -> (Value, bool) {
    let mut all = vec!["trace"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = c.flatnet(&all);
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "trace {args:?}: {e}:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out.status.success())
}

/// The hop with kube-proxy's DNAT.
fn dnat_hop(t: &Value) -> &Value {
    t["hops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h.get("service").is_some())
        .unwrap_or_else(|| panic!("no DNAT hop: {t:#}"))
}

/// `flatnet trace` through a Service: at the client's node a DNAT hop names the Service and
/// port, the ready endpoints, and the one the probe's connection went to (from conntrack);
/// the walk then reaches that endpoint pod. By every name of the Service, TCP and UDP,
/// hairpin masqueraded, a NodePort, and a Service with no endpoint named as the drop.
#[test]
fn trace_shows_the_service_dnat_hop() {
    let c = TestCluster::up("svctrace", &["--nodes", "2"]);
    c.apply_ok(TRACED);
    eventually("be's endpoints ready", WAIT, || {
        ready_endpoints(&c, "be").len() == 2
    });
    let pods = pods_named(&c, "");
    let backends: BTreeMap<String, String> = ["be-1", "be-2"]
        .iter()
        .map(|p| (pods[*p].0.clone(), p.to_string()))
        .collect();
    let client_ip = pods["client"].0.clone();
    let svc: Value = serde_json::from_str(&c.ok(&["get", "svc", "be", "-o", "json"])).unwrap();
    let cluster_ip = svc[0]["spec"]["clusterIP"].as_str().unwrap().to_string();
    // The controller writes the proxy's tables on its own pass.
    eventually("the proxy programmed", WAIT, || {
        c.nft("node-1", &["list", "table", "ip", "flatnet-proxy"])
            .contains(&format!("{cluster_ip} . tcp . 80"))
    });

    let mut chosen = BTreeSet::new();
    for _ in 0..12 {
        let (t, ok) = trace_json(&c, &["client", "svc/be"]);
        assert!(ok, "{t:#}");
        assert_eq!(t["dst"], "svc/be");
        assert_eq!(t["dstIP"], cluster_ip.as_str());
        let hop = dnat_hop(&t);
        assert_eq!(hop["at"], "node/node-1", "at the client's node: {t:#}");
        let s = &hop["service"];
        assert_eq!(s["service"], "default/be");
        assert_eq!(s["port"], "web 80/TCP");
        assert_eq!(s["matched"], format!("ClusterIP {cluster_ip}:80"));
        let candidates: BTreeSet<&str> = s["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["ip"].as_str().unwrap())
            .collect();
        assert_eq!(
            candidates,
            backends.keys().map(String::as_str).collect::<BTreeSet<_>>()
        );
        let to = s["chosen"]["ip"].as_str().unwrap();
        assert!(candidates.contains(to), "{s:#}");
        assert_eq!(s["chosen"]["port"], 8080);
        assert!(
            s["chosenBy"].as_str().unwrap().contains("conntrack"),
            "{s:#}"
        );
        // The walk reaches that endpoint, and the probe's receiver there saw the client.
        let last = t["hops"].as_array().unwrap().last().unwrap();
        assert_eq!(last["at"], format!("pod/{}", backends[to]), "{t:#}");
        assert_eq!(last["delivered"], true);
        assert_eq!(last["probeSeen"], true, "{t:#}");
        assert_eq!(t["probe"]["seenSource"], client_ip.as_str(), "{t:#}");
        assert!(hop.get("nat").is_none(), "{hop:#}");
        chosen.insert(backends[to].clone());
        if chosen.len() == 2 {
            break;
        }
    }
    // Both endpoints were taken by some probe: the hop follows the probe, not a fixed pick.
    assert_eq!(chosen.len(), 2, "{chosen:?}");

    // The text names the hop; the other names of the Service, and UDP.
    let text = c.ok(&["trace", "client", "svc/default/be"]);
    assert!(
        text.contains("dnat   service default/be port web 80/TCP: ClusterIP"),
        "{text}"
    );
    assert!(text.contains("of     2 ready: "), "{text}");
    let svg = c.ok(&["trace", "client", "svc/be", "-o", "svg"]);
    assert!(svg.contains("<svg") && svg.contains("svc/be"), "{svg}");
    for name in [
        cluster_ip.as_str(),
        "be.default.svc",
        "be.default.svc.cluster.local",
    ] {
        let (t, ok) = trace_json(&c, &["client", name]);
        assert!(ok, "{name}: {t:#}");
        assert_eq!(dnat_hop(&t)["service"]["service"], "default/be");
    }
    let (t, ok) = trace_json(&c, &["client", "svc/be", "--proto", "udp"]);
    assert!(ok, "{t:#}");
    let s = &dnat_hop(&t)["service"];
    assert_eq!(s["port"], "dns 53/UDP");
    assert_eq!(s["chosen"]["port"], 5353);
    assert!(
        s["chosenBy"].as_str().unwrap().contains("conntrack"),
        "{s:#}"
    );
    assert_eq!(t["probe"]["seenSource"], client_ip.as_str(), "{t:#}");

    // Hairpin: be-1 to its own Service lands on itself some of the time, masqueraded to its
    // node's gateway address.
    let be1 = pods["be-1"].0.clone();
    let mut hairpin = None;
    for _ in 0..20 {
        let (t, ok) = trace_json(&c, &["be-1", "svc/be"]);
        assert!(ok, "{t:#}");
        if dnat_hop(&t)["service"]["chosen"]["ip"] == be1.as_str() {
            hairpin = Some(t);
            break;
        }
    }
    let t = hairpin.expect("be-1 never landed on itself in 20 probes");
    let hop = dnat_hop(&t);
    let nat = hop["nat"].as_str().unwrap_or_else(|| panic!("{hop:#}"));
    assert!(
        nat.contains("hairpin") && nat.contains(&format!("masquerade {be1} -> ")),
        "{nat}"
    );
    let seen = t["probe"]["seenSource"].as_str().unwrap();
    assert_ne!(seen, be1, "{t:#}");
    assert!(nat.contains(&format!("-> {seen} ")), "{nat} vs {seen}");
    assert_eq!(
        t["hops"].as_array().unwrap().last().unwrap()["at"],
        "pod/be-1"
    );

    // From a node: its own connections to a ClusterIP are DNATed on its output hook and
    // masqueraded (they do not come from a pod's address).
    let (t, ok) = trace_json(&c, &["node/node-2", "svc/be"]);
    assert!(ok, "{t:#}");
    let hop = dnat_hop(&t);
    assert_eq!(hop["at"], "node/node-2", "{t:#}");
    assert!(
        hop["service"]["chosenBy"]
            .as_str()
            .unwrap()
            .contains("conntrack"),
        "{hop:#}"
    );
    assert!(
        hop["nat"].as_str().unwrap().contains("not a pod's address"),
        "{hop:#}"
    );

    // A NodePort, addressed to node-2 from the client: DNAT there, masqueraded.
    let (t, ok) = trace_json(&c, &["client", "node/node-2", "--port", "30090"]);
    assert!(ok, "{t:#}");
    let hop = dnat_hop(&t);
    assert_eq!(hop["at"], "node/node-2", "{t:#}");
    assert_eq!(hop["service"]["matched"], "NodePort 172.18.0.3:30090");
    assert!(
        hop["nat"].as_str().unwrap().contains("masquerade"),
        "{hop:#}"
    );

    // No ready endpoint: the drop names it, and the probe is refused at once.
    let (t, ok) = trace_json(&c, &["client", "svc/nobody"]);
    assert!(!ok, "{t:#}");
    assert_eq!(t["fault"]["reason"], "no-endpoints", "{t:#}");
    assert_eq!(
        t["hops"][t["fault"]["hop"].as_u64().unwrap() as usize]["at"],
        "node/node-1"
    );
    assert!(
        t["probe"]["detail"].as_str().unwrap().contains("refused"),
        "{t:#}"
    );
    let out = c.flatnet(&["trace", "client", "svc/nobody"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("!!     no ready endpoints: rejected"),
        "{text}"
    );
    assert!(text.contains("of     0 ready: none"), "{text}");

    // The hop is checked against the node's live table: a node port taken out of node-2's by
    // hand (the controller rewrites a table only when what it should hold changes) is named.
    let flushed = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.netns("node-2"),
            "nft",
            "flush",
            "map",
            "ip",
        ])
        .args(["flatnet-proxy", "service-nodeports"])
        .status()
        .unwrap();
    assert!(flushed.success());
    let (t, ok) = trace_json(&c, &["client", "node/node-2", "--port", "30090"]);
    assert!(!ok, "{t:#}");
    assert_eq!(t["fault"]["reason"], "proxy-table", "{t:#}");
    assert!(
        t["fault"]["detail"]
            .as_str()
            .unwrap()
            .contains("has no element `tcp . 30090 :`"),
        "{t:#}"
    );
}
