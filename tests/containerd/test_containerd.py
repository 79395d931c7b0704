"""flatnet under the real containerd (Debian's 1.6, CRI v1), driven over CRI as kubelet drives it.

  1. one node: RunPodSandbox gives the pod an IP from flatnet's pod CIDR, on its eth0;
     StopPodSandbox's DEL releases it; RemovePodSandbox's second DEL (empty CNI_NETNS, no
     prevResult) succeeds; nothing is left (veth, route, reservation, netns, cache, shim).
  2. one node: ten sandboxes started at once get ten distinct IPs, all released after.
  3. one node: with the conflist at cniVersion 1.1.0, containerd 1.6 reports the network ready
     but fails RunPodSandbox (its libcni cannot read a 1.1.0 result); the plugin's ADD is undone
     by containerd's DEL and nothing is left.
  4. two nodes of an emulated cluster (`flatnet up --nodes 2`), a containerd in each node's
     namespace with the agent's conflist: a busybox container on each node fetches from the
     other's by pod IP, and each server reports the peer address it saw: the client's pod IP.
  5. the same in a dual-stack cluster (`--ip-family dual`): RunPodSandbox gives each pod an
     address of each family (CRI reports one as the pod's IP and the other as an additional
     IP; containerd 1.6 puts IPv4 first whatever the result's order, so only their presence
     is asserted), the pods reach each other by IPv6 and by IPv4 with no NAT, and
     StopPodSandbox's DEL releases both addresses.

Run as root by run.sh (which installs what this needs). Prints progress; exits non-zero on any
failure; leaves nothing behind, also on failure or Ctrl-C.
"""

import argparse
import concurrent.futures
import ipaddress
import json
import os
import signal
import sys
import time
import traceback

import harness as h
import images

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SINGLE_POD_CIDR = "10.250.0.0/24"
TWO_NODE_CLUSTER_CIDR = "10.251.0.0/16"
DUAL_CLUSTER_CIDRS = "10.252.0.0/16,fd00:10:252::/56"


class Ctx:
    def __init__(self, args):
        self.args = args
        self.flatnet = os.path.join(args.target_dir, "flatnet")
        self.flatnet_cni = os.path.join(args.target_dir, "flatnet-cni")
        self.run = None
        self.instances = []  # every Containerd started, for the cleanup
        self.netns = []  # namespaces made by hand
        self.clusters = []  # emulated clusters
        self.pause_tar = None
        self.busybox_tar = None


# ---------------------------------------------------------------------------------------------
# scenarios 1 to 3: one node


def setup_single_node(ctx):
    """A node namespace of our own with a containerd in it, flatnet's conflist in its conf dir and
    the tap in front of flatnet-cni."""
    run = ctx.run
    node = f"{run.prefix}-node"
    h.netns_add(node)
    ctx.netns.append(node)
    conf_dir = run.path("single", "net.d")
    data_dir = run.path("single", "ipam")
    os.makedirs(conf_dir)
    conflist = {
        "cniVersion": "1.0.0",
        "name": "flatnet",
        "plugins": [
            {
                "type": "flatnet-cni",
                "podCIDR": SINGLE_POD_CIDR,
                "dataDir": data_dir,
                "logFile": run.path("single", "flatnet-cni.log"),
            }
        ],
    }
    # A conflist that sorts after ours must be ignored: CRI uses the first by name.
    with open(os.path.join(conf_dir, "10-flatnet.conflist"), "w") as f:
        json.dump(conflist, f)
    decoy = dict(conflist, name="decoy", plugins=[{"type": "does-not-exist"}])
    with open(os.path.join(conf_dir, "20-decoy.conflist"), "w") as f:
        json.dump(decoy, f)
    tap_log = run.path("single", "cni-calls.log")
    bin_dir = run.path("single", "bin")
    h.prepare_bin_dir(bin_dir, ctx.flatnet_cni, tap_log=tap_log)
    ctd = h.Containerd(run, "single", node, conf_dir, bin_dir, env={"FLATNET_LOG": "debug"})
    ctx.instances.append(ctd)
    ctd.start(images.PAUSE_IMAGE)
    nets = ctd.cni_networks()
    h.check(nets == [("cni-loopback", "lo"), ("flatnet", "eth0")], f"CRI loaded {nets}")
    h.log(f"  CRI loaded {nets} (the first conflist by name; 20-decoy ignored)")
    ctd.import_image(ctx.pause_tar)
    h.check(ctd.image_present(images.PAUSE_IMAGE), "the pause image is not visible to CRI")
    ctd.conflist = conflist
    return ctd, node, data_dir, tap_log


def assert_attached(ctd, node, data_dir, sid, ip, cidr):
    """The pod's IP is on its eth0, the node routes it through a flat* veth, the store holds it."""
    h.check(ipaddress.ip_address(ip) in ipaddress.ip_network(cidr), f"{ip} is not in {cidr}")
    netns_path = ctd.sandbox_netns_path(sid)
    addrs = h.ip_json("-4", "addr", "show", "dev", "eth0", netns_path=netns_path)
    on_eth0 = [f"{a['local']}/{a['prefixlen']}" for x in addrs for a in x.get("addr_info", [])]
    h.check(f"{ip}/32" in on_eth0, f"{ip}/32 is not on the pod's eth0: {on_eth0}")
    routes = h.pod_routes(node)
    h.check(ip in routes, f"node {node} has no route to {ip} through a flat* veth: {routes}")
    h.check(routes[ip] in h.host_veths(node), f"the route's device {routes[ip]} does not exist")
    h.check(ip in h.reservations(data_dir), f"{ip} is not reserved in {data_dir}")
    return netns_path


def sandbox_ips(ctd, sid):
    """Every address CRI reports for the sandbox: its IP, then the additional ones."""
    network = ctd.sandbox_status(sid)[0].network
    return [network.ip] + [a.ip for a in network.additional_ips]


def assert_attached_dual(ctd, node, data_dir, sid, ips, cidrs):
    """One address per family, each in its pod CIDR, on the pod's eth0 (usable: no DAD left to
    wait for), routed by the node through the pod's flat* veth and reserved in the store."""
    h.check(len(ips) == 2, f"CRI reports {ips}, not one address per family")
    by_family = {ipaddress.ip_address(ip).version: ip for ip in ips}
    h.check(sorted(by_family) == [4, 6], f"CRI reports {ips}, not one IPv4 and one IPv6")
    netns_path = ctd.sandbox_netns_path(sid)
    for version, ip in sorted(by_family.items()):
        cidr = cidrs[version]
        h.check(ipaddress.ip_address(ip) in ipaddress.ip_network(cidr), f"{ip} is not in {cidr}")
        family, host = ("-4", 32) if version == 4 else ("-6", 128)
        addrs = h.ip_json(family, "addr", "show", "dev", "eth0", netns_path=netns_path)
        infos = [a for x in addrs for a in x.get("addr_info", [])]
        on_eth0 = [f"{a['local']}/{a['prefixlen']}" for a in infos]
        h.check(f"{ip}/{host}" in on_eth0, f"{ip}/{host} is not on the pod's eth0: {on_eth0}")
        h.check(
            not any(a.get("tentative") for a in infos), f"a tentative address on eth0: {infos}"
        )
        routes = h.pod_routes(node, family)
        h.check(ip in routes, f"node {node} has no route to {ip} through a flat* veth: {routes}")
        h.check(ip in h.reservations(data_dir), f"{ip} is not reserved in {data_dir}")
    return by_family


def assert_released(ctd, node, data_dir, ip, netns_path):
    h.check(ip not in h.reservations(data_dir), f"{ip} is still reserved in {data_dir}")
    routes = h.pod_routes(node)
    h.check(ip not in routes, f"node {node} still routes {ip}: {routes}")
    h.check(not os.path.exists(netns_path), f"the pod's netns {netns_path} is still there")


def scenario_one_pod(ctx, single):
    ctd, node, data_dir, tap_log = single
    h.log("RunPodSandbox")
    sid, _ = ctd.run_sandbox("solo")
    status, info = ctd.sandbox_status(sid)
    ip = status.network.ip
    h.log(f"sandbox {sid[:12]}: {h.cri.PodSandboxState.Name(status.state)}, ip {ip}")
    h.check(status.state == h.cri.SANDBOX_READY, f"sandbox state {status.state}")
    netns_path = assert_attached(ctd, node, data_dir, sid, ip, SINGLE_POD_CIDR)
    # The pod is reachable from its node through the veth (traffic stays in our namespaces).
    h.sh("ip", "netns", "exec", node, "ping", "-c", "1", "-W", "2", ip)
    routes = h.ip_json("-4", "route", "show", netns_path=netns_path)
    h.check(
        any(r["dst"] == "default" and r.get("gateway") == "10.250.0.1" for r in routes),
        f"the pod has no default route via 10.250.0.1: {routes}",
    )
    lo = h.ip_json("link", "show", "lo", netns_path=netns_path)
    h.check("UP" in lo[0]["flags"], "the pod's lo is not up (loopback plugin)")
    h.check(h.attachments(data_dir) == [f"{sid}:eth0"], f"attachments: {h.attachments(data_dir)}")
    calls = [c for c in h.read_tap(tap_log) if c["id"] == sid]
    h.check(
        [(c["cmd"], c["netns"], c["rc"]) for c in calls] == [("ADD", netns_path, "0")],
        f"CNI calls so far: {calls}",
    )
    # The plugin ran with containerd's clean environment: PATH is ours, with only the private
    # opt dir's bin/ that containerd's opt plugin prepends.
    path = calls[0]["path"].split(":")
    allowed = [os.path.join(ctd.dir, "opt", "bin")] + h.CLEAN_PATH.split(":")
    h.check(set(path) <= set(allowed), f"the plugin's PATH is {':'.join(path)}")
    veth = h.pod_routes(node)[ip]
    # What the leak checks below look for is there now: the pod's shim and pause process.
    h.check(h.processes_matching(f"-address {ctd.address} "), "no shim found by its -address")
    h.check(h.processes_in_cgroup(ctd.cgroup_parent + "/"), f"no process in {ctd.cgroup_parent}")
    h.check(
        os.path.exists(h.shim_socket(ctd.address, "k8s.io", sid)), "no shim socket where expected"
    )
    cache = h.libcni_cache_entries(ctd.pod_namespace)
    h.log(
        f"  {ip}/32 on eth0 in {netns_path}; node route via {veth}; reserved; libcni cache {len(cache)} files"
    )
    h.log(f"  the plugin's PATH: {':'.join(path)}")

    h.log("StopPodSandbox")
    ctd.stop_sandbox(sid)
    assert_released(ctd, node, data_dir, ip, netns_path)
    # DEL retires the host veth; the kernel deletes it with the pod's netns, asynchronously.
    h.wait_for(f"host veth {veth} to go", lambda: veth not in h.host_veths(node), 10)
    status, _ = ctd.sandbox_status(sid)
    h.check(status.state == h.cri.SANDBOX_NOTREADY, f"sandbox state after stop: {status.state}")
    calls = [c for c in h.read_tap(tap_log) if c["id"] == sid]
    h.check(
        [(c["cmd"], c["netns"], c["prev"], c["rc"]) for c in calls[1:]]
        == [("DEL", netns_path, "yes", "0")],
        f"CNI calls after stop: {calls}",
    )
    h.log(f"  DEL (netns {netns_path}, prevResult) released {ip}; veth, route, netns gone")

    h.log("RemovePodSandbox")
    ctd.remove_sandbox(sid)
    calls = [c for c in h.read_tap(tap_log) if c["id"] == sid]
    h.check(
        [(c["cmd"], c["netns"], c["prev"], c["rc"]) for c in calls[2:]] == [("DEL", "", "no", "0")],
        f"CNI calls after remove: {calls}",
    )
    h.check(sid not in ctd.sandbox_ids(), "the sandbox is still listed")
    h.log("  second DEL (empty CNI_NETNS, no prevResult) succeeded")
    assert_nothing_left(ctd, node, data_dir, [sid])


def assert_nothing_left(ctd, node, data_dir, sids):
    h.check(h.reservations(data_dir) == [], f"reservations left: {h.reservations(data_dir)}")
    h.check(h.attachments(data_dir) == [], f"attachments left: {h.attachments(data_dir)}")
    h.wait_for(f"no host veth left in {node}", lambda: h.host_veths(node) == [], 10)
    h.check(h.pod_routes(node) == {}, f"pod routes left: {h.pod_routes(node)}")
    netns_dir = os.path.join(ctd.dir, "state", "io.containerd.grpc.v1.cri", "netns")
    left = os.listdir(netns_dir) if os.path.isdir(netns_dir) else []
    h.check(left == [], f"sandbox netns files left: {left}")
    mounts = [m for m in h.mounts_under(ctd.dir) if any(s in m for s in sids)]
    h.check(mounts == [], f"mounts left: {mounts}")
    cache = h.libcni_cache_entries(ctd.pod_namespace)
    h.check(cache == [], f"libcni cache entries left: {cache}")
    socks = [h.shim_socket(ctd.address, "k8s.io", s) for s in sids]
    h.wait_for("the shims to exit", lambda: not any(os.path.exists(s) for s in socks), 10)
    h.wait_for(
        "the shims' processes to exit",
        lambda: not h.processes_matching(f"-address {ctd.address} "),
        10,
    )
    h.check(not h.processes_in_cgroup(ctd.cgroup_parent + "/"), "container processes left")
    h.log("  nothing left: no reservation, veth, route, netns, mount, libcni cache, shim, process")


def scenario_ten_at_once(ctx, single):
    ctd, node, data_dir, tap_log = single
    n = 10
    h.log(f"RunPodSandbox x{n}, concurrently")
    t = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        started = list(pool.map(lambda i: ctd.run_sandbox(f"many-{i}")[0], range(n)))
    h.log(f"  {n} sandboxes ready in {time.monotonic() - t:.1f}s")
    ips = {sid: ctd.sandbox_status(sid)[0].network.ip for sid in started}
    h.check(len(set(ips.values())) == n, f"IPs are not distinct: {sorted(ips.values())}")
    for sid, ip in ips.items():
        assert_attached(ctd, node, data_dir, sid, ip, SINGLE_POD_CIDR)
    h.check(sorted(h.reservations(data_dir)) == sorted(ips.values()), "store and CRI disagree")
    h.check(len(h.host_veths(node)) == n, f"host veths: {h.host_veths(node)}")
    h.log(f"  {n} distinct IPs: {' '.join(sorted(ips.values(), key=ipaddress.ip_address))}")
    # Every pod reaches every other through the node (traffic between our namespaces only).
    first = started[0]
    path = ctd.sandbox_netns_path(first)
    for sid, ip in ips.items():
        if sid != first:
            h.sh("nsenter", f"--net={path}", "--", "ping", "-c", "1", "-W", "2", ip)
    h.log(f"  pod {ips[first]} pings the other {n - 1}")

    h.log(f"StopPodSandbox + RemovePodSandbox x{n}, concurrently")

    def stop_remove(sid):
        ctd.stop_sandbox(sid)
        ctd.remove_sandbox(sid)

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        list(pool.map(stop_remove, started))
    for sid in started:
        calls = [(c["cmd"], c["rc"]) for c in h.read_tap(tap_log) if c["id"] == sid]
        h.check(calls == [("ADD", "0"), ("DEL", "0"), ("DEL", "0")], f"{sid[:12]}: {calls}")
    assert_nothing_left(ctd, node, data_dir, started)


def write_conflist(ctd, conflist):
    """Replaces the conflist (atomically, as the agent does) and waits for CRI to reload it."""
    path = os.path.join(ctd.conf_dir, "10-flatnet.conflist")
    with open(path + ".tmp", "w") as f:
        json.dump(conflist, f)
    os.rename(path + ".tmp", path)
    want = ("flatnet", "eth0", conflist["cniVersion"])
    h.wait_for(f"CRI to load the conflist at {want[2]}", lambda: want in ctd.cni_networks(True), 15)


def scenario_failed_add(ctx, single):
    """containerd 1.6 loads a conflist at 1.1.0 (and reports NetworkReady) but its libcni cannot
    parse a 1.1.0 result: ADD succeeds in the plugin, RunPodSandbox fails, and containerd's
    cleanup DEL must leave nothing behind."""
    ctd, node, data_dir, tap_log = single
    write_conflist(ctd, dict(ctd.conflist, cniVersion="1.1.0"))
    try:
        h.log("RunPodSandbox with the conflist at cniVersion 1.1.0")
        try:
            sid, _ = ctd.run_sandbox("too-new")
        except h.grpc.RpcError as e:
            detail = e.details()
        else:
            raise h.Failure(f"RunPodSandbox succeeded with a 1.1.0 conflist: {sid}")
        h.check("unsupported CNI result version" in detail, f"unexpected error: {detail}")
        h.log(f"  refused as expected: {detail.split(': ', 1)[-1]}")
        ids = {c["id"] for c in h.read_tap(tap_log)} - ctd.sandboxes
        h.check(len(ids) == 1, f"expected calls for one new sandbox, got {ids}")
        sid = ids.pop()
        ctd.sandboxes.add(sid)
        mine = [(c["cmd"], c["rc"]) for c in h.read_tap(tap_log) if c["id"] == sid]
        h.check(mine == [("ADD", "0"), ("DEL", "0")], f"CNI calls: {mine}")
        h.check(ctd.sandbox_ids() == [], f"sandboxes listed: {ctd.sandbox_ids()}")
        h.log("  the plugin's ADD succeeded, containerd's cleanup DEL succeeded")
        assert_nothing_left(ctd, node, data_dir, [sid])
    finally:
        write_conflist(ctd, ctd.conflist)


# ---------------------------------------------------------------------------------------------
# scenario 4: two nodes


def scenario_two_nodes(ctx):
    two_nodes(ctx, dual=False)


def scenario_two_nodes_dual(ctx):
    two_nodes(ctx, dual=True)


def peer_of(line):
    """The address in the CGI's `peer=…` line: busybox httpd writes an IPv6 peer in brackets,
    and an IPv4 peer of an IPv6 socket as ::ffff:a.b.c.d."""
    seen = line.split("=", 1)[-1].strip().strip("[]")
    return seen[len("::ffff:") :] if seen.startswith("::ffff:") and "." in seen else seen


def two_nodes(ctx, dual):
    run = ctx.run
    cluster = f"{run.prefix}-{'ds' if dual else '2n'}"
    state = run.path("flatnet")
    family_args = ["--ip-family", "dual"] if dual else []
    cidrs = DUAL_CLUSTER_CIDRS if dual else TWO_NODE_CLUSTER_CIDR
    h.log(f"flatnet up --nodes 2 --name {cluster} {' '.join(family_args)}")
    ctx.clusters.append(cluster)
    h.sh(
        ctx.flatnet,
        "up",
        "--nodes",
        "2",
        "--name",
        cluster,
        "--state-dir",
        state,
        "--cluster-cidr",
        cidrs,
        *family_args,
        timeout=90,
    )
    with open(os.path.join(state, cluster, "cluster.json")) as f:
        spec = json.load(f)
    nodes = {n["name"]: n for n in spec["nodes"]}
    pods = {}
    for node in ("node-1", "node-2"):
        n = nodes[node]
        conf_dir = os.path.join(state, cluster, "nodes", node, "net.d")
        conflist = json.load(open(os.path.join(conf_dir, "10-flatnet.conflist")))
        h.check(conflist["cniVersion"] == "1.0.0", f"{node}: conflist at {conflist['cniVersion']}")
        bin_dir = run.path(node, "bin")
        h.prepare_bin_dir(bin_dir, ctx.flatnet_cni)
        ctd = h.Containerd(run, node, n["netns"], conf_dir, bin_dir)
        ctx.instances.append(ctd)
        ctd.start(images.PAUSE_IMAGE)
        nets = ctd.cni_networks()
        h.check(nets == [("cni-loopback", "lo"), ("flatnet", "eth0")], f"{node}: CRI loaded {nets}")
        for tar in (ctx.pause_tar, ctx.busybox_tar):
            ctd.import_image(tar)
        h.check(ctd.image_present(images.BUSYBOX_IMAGE), f"{node}: busybox image not visible")
        sid, config = ctd.run_sandbox(f"web-{node}")
        data_dir = conflist["plugins"][0]["dataDir"]
        if dual:
            ips = sandbox_ips(ctd, sid)
            by_family = assert_attached_dual(
                ctd, n["netns"], data_dir, sid, ips, {4: n["podCIDR"], 6: n["podCIDRv6"]}
            )
            ip, ip6 = by_family[4], by_family[6]
            h.log(f"  {node}: CRI reports the pod's IP {ips[0]} and additional IP {ips[1]}")
        else:
            ip, ip6 = ctd.sandbox_status(sid)[0].network.ip, None
            assert_attached(ctd, n["netns"], data_dir, sid, ip, n["podCIDR"])
        # The server: busybox httpd, whose CGI script prints the TCP peer's address; in a
        # dual-stack pod on an IPv6 socket (`-p 8080`), which takes both families.
        listen = "8080" if dual else "0.0.0.0:8080"
        cid, log_path = ctd.create_container(
            sid,
            config,
            "httpd",
            images.BUSYBOX_IMAGE,
            ["httpd", "-f", "-vv", "-p", listen, "-h", "/www"],
        )
        pods[node] = dict(
            ctd=ctd, sid=sid, ip=ip, ip6=ip6, cid=cid, log=log_path, data_dir=data_dir
        )
        cidr_text = f"{n['podCIDR']},{n['podCIDRv6']}" if dual else n["podCIDR"]
        addrs = f"{ip},{ip6}" if dual else ip
        h.log(
            f"  {node} ({n['netns']}): pod {addrs} in {cidr_text}, busybox httpd container {cid[:12]}"
        )
    for node, p in pods.items():
        st = p["ctd"].container_state(p["cid"])
        h.check(st.state == h.cri.CONTAINER_RUNNING, f"{node}: httpd container state {st.state}")

    # Each node routes the other's pod CIDR to the other node (flatnet agent, host-gw), in
    # each family via the other's node IP of that family.
    families = [("-4", "podCIDR", "nodeIP", "ip")]
    if dual:
        families.append(("-6", "podCIDRv6", "nodeIPv6", "ip6"))
    for a, b in (("node-1", "node-2"), ("node-2", "node-1")):
        for family, cidr_key, ip_key, _ in families:
            routes = h.ip_json(family, "route", "show", netns=nodes[a]["netns"])
            want, via = nodes[b][cidr_key], nodes[b][ip_key]
            h.check(
                any(r["dst"] == want and r.get("gateway") == via for r in routes),
                f"{a} has no route {want} via {via}: {routes}",
            )

    for a, b in (("node-1", "node-2"), ("node-2", "node-1")):
        src, dst = pods[a], pods[b]
        # IPv6 first in a dual-stack cluster: that is the family this case is about.
        for _, _, _, key in reversed(families):
            src_ip, dst_ip = src[key], dst[key]
            host = f"[{dst_ip}]" if ":" in dst_ip else dst_ip
            # An HTTP request by nc (Debian's busybox-static wget crashes in getuid's NSS lookup).
            url = f"http://{host}:8080/cgi-bin/peer"
            request = f"printf 'GET /cgi-bin/peer HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {dst_ip} 8080"
            for attempt in range(10):  # the server may not be listening yet right after start
                rc, out, err = src["ctd"].exec_sync(src["cid"], ["sh", "-c", request])
                if rc == 0 and " 200 " in out:
                    break
                time.sleep(0.5)
            h.check(rc == 0 and " 200 " in out, f"{a} -> {url}: exit {rc}: {out}{err}")
            seen = peer_of(out.strip().splitlines()[-1])
            h.check(seen == src_ip, f"{b} saw {seen!r}, not {a}'s pod IP {src_ip}")

            # The server's own log says the same (busybox httpd -vv logs each peer).
            def logged():
                try:
                    return src_ip in open(dst["log"]).read()
                except OSError:
                    return False

            h.wait_for(f"{b}'s httpd log to name {src_ip}", logged, 5)
            h.log(f"  {a} pod {src_ip} -> {b} pod {dst_ip}: {b} saw {seen} (no NAT)")

    h.log("removing the pods")
    for node, p in pods.items():
        ctd = p["ctd"]
        ctd.stop_sandbox(p["sid"])
        # StopPodSandbox's DEL released every address of the pod.
        left = h.reservations(p["data_dir"])
        h.check(left == [], f"{node}: reservations left after StopPodSandbox: {left}")
        h.check(h.attachments(p["data_dir"]) == [], f"{node}: attachments left")
        h.wait_for(
            f"{node}: no host veth left", lambda: h.host_veths(nodes[node]["netns"]) == [], 10
        )
        for family, *_ in families:
            left = h.pod_routes(nodes[node]["netns"], family)
            h.check(left == {}, f"{node}: pod routes left: {left}")
        ctd.remove_sandbox(p["sid"])
    for node, p in pods.items():
        errors = p["ctd"].stop()
        ctx.instances.remove(p["ctd"])
        h.check(errors == [], f"{node}: stopping containerd: {errors}")
    h.log(f"flatnet down --name {cluster}")
    h.sh(ctx.flatnet, "down", "--name", cluster, "--state-dir", state, timeout=60)
    ctx.clusters.remove(cluster)
    left = (
        [n for n in os.listdir("/run/netns") if cluster in n] if os.path.isdir("/run/netns") else []
    )
    h.check(left == [], f"namespaces left after flatnet down: {left}")


# ---------------------------------------------------------------------------------------------


def diagnostics(ctx):
    """The tails of the logs that explain a failure: containerd's, the plugin's, the agents'."""
    for ctd in ctx.instances:
        print(f"--- {ctd.name}: containerd log (tail)\n{ctd.log_tail()}", flush=True)
    for pattern in ("single/cni-calls.log", "single/flatnet-cni.log", "flatnet/*/nodes/*/*.log"):
        for path in sorted(h.glob.glob(ctx.run.path(pattern))):
            with open(path, errors="replace") as f:
                tail = "".join(f.readlines()[-15:])
            print(f"--- {path} (tail)\n{tail}", flush=True)


def teardown(ctx):
    """Everything this run made, in reverse; goes on past failures and returns them."""
    errors = []
    for ctd in reversed(ctx.instances):
        try:
            errors += ctd.stop()
        except Exception as e:  # noqa: BLE001
            errors.append(f"{ctd.name}: {e}")
    ctx.instances.clear()
    state = ctx.run.path("flatnet")
    for c in ctx.clusters:
        try:
            h.sh(ctx.flatnet, "down", "--name", c, "--state-dir", state, timeout=60)
        except Exception as e:  # noqa: BLE001
            errors.append(f"flatnet down {c}: {e}")
    for ns in ctx.netns:
        h.netns_delete(ns)
        if h.netns_exists(ns):
            errors.append(f"netns {ns} could not be deleted")
    errors += h.cleanup_prefix(ctx.run.prefix, ctx.run.dir, ctx.flatnet)
    if os.path.exists(ctx.run.dir):
        errors.append(f"{ctx.run.dir} could not be removed")
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target-dir", default=os.path.join(REPO, "target", "debug"))
    ap.add_argument(
        "--keep-going", action="store_true", help="run every scenario even after a failure"
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="leave what a failure left running, to explore (the next run sweeps it)",
    )
    args = ap.parse_args()
    ctx = Ctx(args)
    for b in (ctx.flatnet, ctx.flatnet_cni):
        if not os.access(b, os.X_OK):
            print(f"{b} is missing: run `cargo build --workspace` first", file=sys.stderr)
            return 2

    def on_signal(sig, _frame):
        raise KeyboardInterrupt(f"signal {sig}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    h.sweep_stale(ctx.flatnet)
    ctx.run = h.Run()
    h.log(
        f"run {ctx.run.prefix}: containerd {h.sh('containerd', '--version').split()[2]}, dir {ctx.run.dir}"
    )
    passed, failed = [], []
    try:
        h.log("building the pause image (gcc -static) and the busybox image (busybox-static)")
        ctx.pause_tar = images.build_pause(ctx.run.dir)
        ctx.busybox_tar = images.build_busybox(ctx.run.dir)
        single = None
        scenarios = [
            (
                "one sandbox: ADD, DEL on stop, second DEL on remove, nothing leaked",
                "single",
                scenario_one_pod,
            ),
            (
                "ten sandboxes at once: ten distinct IPs, all released",
                "single",
                scenario_ten_at_once,
            ),
            (
                "a failed RunPodSandbox (conflist at 1.1.0) leaves nothing behind",
                "single",
                scenario_failed_add,
            ),
            (
                "two nodes, two containerds, flatnet agent: pod to pod by IP, no NAT",
                "two",
                scenario_two_nodes,
            ),
            (
                "dual-stack: both addresses per pod, pod to pod by IPv6 and IPv4, no NAT, "
                "DEL releases both",
                "two",
                scenario_two_nodes_dual,
            ),
        ]
        for title, kind, fn in scenarios:
            if failed and not args.keep_going:
                break
            h.log(f"=== {title}")
            try:
                if kind == "single":
                    if single is None:
                        single = setup_single_node(ctx)
                    fn(ctx, single)
                else:
                    if single is not None:
                        errs = single[0].stop()
                        ctx.instances.remove(single[0])
                        h.check(errs == [], f"stopping the single-node containerd: {errs}")
                        single = None
                    fn(ctx)
                passed.append(title)
                h.log(f"PASS {title}")
            except Exception as e:  # noqa: BLE001
                failed.append(title)
                h.log(f"FAIL {title}: {h.describe(e)}")
                if isinstance(e, h.grpc.RpcError):
                    # Where in the test the call was made is enough.
                    frames = [
                        f for f in traceback.extract_tb(e.__traceback__) if f.filename == __file__
                    ]
                    print("".join(traceback.format_list(frames[-1:])), end="", flush=True)
                elif not isinstance(e, h.Failure):
                    traceback.print_exc()
                diagnostics(ctx)
    except KeyboardInterrupt as e:
        h.log(f"interrupted ({e})")
        failed.append(f"interrupted: {e}")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if args.keep:
            h.log(
                f"--keep: everything is left in place under {ctx.run.dir}; the next run sweeps it"
            )
            errors = []
        else:
            h.log("cleaning up")
            errors = teardown(ctx)
        for e in errors:
            h.log(f"cleanup: {e}")
        if errors:
            failed.append("cleanup")
    h.log(f"containerd: {len(passed)} passed, {len(failed)} failed")
    print(f"{len(passed)} passed, {len(failed)} failed", flush=True)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
