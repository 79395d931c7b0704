"""A private containerd driven over CRI, as kubelet drives it, and everything needed to leave
the machine as it was: every name made here carries the run's prefix `fctd<pid>-`, and a
later run sweeps what a run whose process is gone left behind.

Nothing here touches the machine's own network namespace: each containerd runs inside a
network namespace the test made (a "node"), so the pods' host-side veths and routes land
there, and the only traffic is between namespaces the test made.
"""

import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import uuid

import grpc
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc as cri_grpc

HERE = os.path.dirname(os.path.abspath(__file__))
TMP_ROOT = "/tmp"
PREFIX_RE = re.compile(r"^fctd(\d+)-")
# Where containerd 1.6 puts its shims' sockets whatever its config says.
SHIM_SOCKET_DIR = "/run/containerd/s"
# libcni's result cache; containerd's CRI does not make it configurable.
LIBCNI_CACHE = "/var/lib/cni"
LOOPBACK = "/usr/lib/cni/loopback"
# Made by containerd and libcni whatever the config says; children first.
MACHINE_DIRS = [
    SHIM_SOCKET_DIR,
    os.path.dirname(SHIM_SOCKET_DIR),
    os.path.join(LIBCNI_CACHE, "results"),
    LIBCNI_CACHE,
]
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def sh(*cmd, check=True, capture=True, timeout=60, **kw):
    """Runs a command; returns its stdout as text."""
    r = subprocess.run(list(cmd), capture_output=capture, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise Failure(
            f"{' '.join(cmd)}: exit {r.returncode}\n{r.stdout or ''}{r.stderr or ''}".rstrip()
        )
    return r.stdout if capture else ""


def describe(e):
    """A one-line account of an exception; a gRPC error as its status code and details."""
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return f"gRPC {e.code().name}: {e.details()}"
    return str(e)


def wait_for(what, fn, timeout=30.0, interval=0.1):
    """Polls `fn` until it returns a true value, which it returns."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise Failure(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# processes, mounts, cgroups


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def start_time(pid):
    """The process's start time in clock ticks since boot (field 22 of stat), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def kill_pid(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def processes_matching(needle):
    """PIDs whose command line contains `needle` (never this process)."""
    me = os.getpid()
    return [p for p in all_pids() if p != me and needle in cmdline(p)]


def processes_in_cgroup(fragment):
    """PIDs in a cgroup whose path contains `fragment`, in any hierarchy."""
    pids = []
    for p in all_pids():
        try:
            with open(f"/proc/{p}/cgroup") as f:
                if fragment in f.read():
                    pids.append(p)
        except OSError:
            pass
    return pids


def mounts_under(path):
    """Mount points at or below `path`, deepest first."""
    path = path.rstrip("/")
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == path or point.startswith(path + "/"):
                points.append(point)
    return sorted(set(points), key=lambda p: -p.count("/"))


def unmount_all(path):
    for _ in range(5):
        points = mounts_under(path)
        if not points:
            return
        for point in points:
            subprocess.run(["umount", "-l", point], capture_output=True)
    left = mounts_under(path)
    if left:
        raise Failure(f"still mounted under {path}: {left}")


def cgroup_dirs(name):
    """The directories of cgroup `/name` in every mounted hierarchy (v1 and v2)."""
    dirs = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2"):
                d = os.path.join(fields[4], name)
                if os.path.isdir(d):
                    dirs.append(d)
    return dirs


def remove_cgroup_tree(d):
    """rmdir a cgroup and its children, deepest first (a cgroup dir holds only pseudo-files)."""
    for root, subdirs, _ in sorted(os.walk(d), key=lambda t: -t[0].count("/")):
        for sub in subdirs:
            try:
                os.rmdir(os.path.join(root, sub))
            except OSError:
                pass
    try:
        os.rmdir(d)
    except OSError:
        pass


def remove_cgroups(name):
    for _ in range(20):
        dirs = cgroup_dirs(name)
        if not dirs:
            return
        for d in dirs:
            remove_cgroup_tree(d)
        time.sleep(0.1)
    raise Failure(f"cgroups left: {cgroup_dirs(name)}")


def shim_socket(address, namespace, sandbox_id):
    """Where containerd 1.6 puts the shim socket of a sandbox: /run/containerd/s/ + the sha256
    of address/namespace/id (runtime/v2/shim/util_unix.go, SocketAddress)."""
    digest = hashlib.sha256(f"{address}/{namespace}/{sandbox_id}".encode()).hexdigest()
    return os.path.join(SHIM_SOCKET_DIR, digest)


def libcni_cache_entries(marker):
    """libcni cache files whose content names `marker` (our pods' namespace is in CNI_ARGS)."""
    found = []
    for path in glob.glob(os.path.join(LIBCNI_CACHE, "results", "*")):
        try:
            with open(path, errors="replace") as f:
                if marker in f.read():
                    found.append(path)
        except OSError:
            pass
    return found


# ---------------------------------------------------------------------------------------------
# network namespaces


def netns_add(name):
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")


def netns_exists(name):
    return os.path.exists(f"/run/netns/{name}")


def netns_delete(name):
    if netns_exists(name):
        for p in processes_in_netns(f"/run/netns/{name}"):
            kill_pid(p)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def processes_in_netns(path):
    try:
        target = os.stat(path)
    except OSError:
        return []
    pids = []
    for p in all_pids():
        try:
            st = os.stat(f"/proc/{p}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            pids.append(p)
    return pids


def ip_json(*args, netns=None, netns_path=None):
    cmd = ["ip", "-j"]
    if netns:
        cmd += ["-n", netns]
    cmd += list(args)
    if netns_path:
        cmd = ["nsenter", f"--net={netns_path}", "--"] + cmd
    out = sh(*cmd)
    return json.loads(out) if out.strip() else []


def host_veths(netns):
    return [
        l["ifname"] for l in ip_json("link", "show", netns=netns) if l["ifname"].startswith("flat")
    ]


def pod_routes(netns, family="-4"):
    """Routes of the node to single pods (/32 or /128 through a flat* veth), as {ip: dev}; for
    IPv6 without the kernel's own routes on those veths (link-local, the gateway address)."""
    return {
        r["dst"]: r.get("dev")
        for r in ip_json(family, "route", "show", netns=netns)
        if r.get("dev", "").startswith("flat") and r.get("protocol") != "kernel"
    }


def reservations(data_dir, network="flatnet"):
    d = os.path.join(data_dir, network, "ips")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def attachments(data_dir, network="flatnet"):
    d = os.path.join(data_dir, network, "attachments")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


# ---------------------------------------------------------------------------------------------
# the run: a unique directory, and the sweep of dead runs' leftovers


class Run:
    """This run's prefix `fctd<pid>-<6 hex digits>` (a valid cluster name and netns name part)
    and its directory /tmp/<prefix>, which records what a sweep needs if this process dies."""

    def __init__(self):
        while True:
            self.prefix = f"fctd{os.getpid()}-{secrets.token_hex(3)}"
            self.dir = os.path.join(TMP_ROOT, self.prefix)
            try:
                os.mkdir(self.dir, 0o755)
                break
            except FileExistsError:
                continue
        # The owner's start time: a later run tells a dead owner from a reused PID.
        with open(os.path.join(self.dir, "owner"), "w") as f:
            f.write(f"{os.getpid()} {start_time(os.getpid())}\n")
        # Directories containerd makes outside its config's reach, if they are not there yet:
        # removed at the end when empty.
        made = [d for d in MACHINE_DIRS if not os.path.exists(d)]
        with open(os.path.join(self.dir, "made-dirs"), "w") as f:
            f.write("".join(d + "\n" for d in made))

    def path(self, *parts):
        return os.path.join(self.dir, *parts)


def owner_alive(run_dir):
    m = PREFIX_RE.match(os.path.basename(run_dir))
    if not m:
        return False
    pid = int(m.group(1))
    try:
        with open(os.path.join(run_dir, "owner")) as f:
            opid, ostart = f.read().split()
        return int(opid) == pid and str(start_time(pid)) == ostart
    except (OSError, ValueError):
        return pid_alive(pid) and "test_containerd" in cmdline(pid)


def run_prefix_of(name):
    """The run prefix in a path's base name or a namespace name, or None."""
    m = re.match(r"^(?:flatnet-)?(fctd\d+-[0-9a-f]{6})(?:-|$)", name)
    return m.group(1) if m else None


def sweep_stale(flatnet):
    """Removes what runs whose process is gone left: processes, mounts, cgroups, namespaces,
    emulated clusters, libcni cache entries, directories."""
    prefixes = set()
    for d in glob.glob(os.path.join(TMP_ROOT, "fctd*-*")):
        if os.path.isdir(d) and run_prefix_of(os.path.basename(d)) == os.path.basename(d):
            prefixes.add(os.path.basename(d))
    if os.path.isdir("/run/netns"):
        prefixes.update(p for p in map(run_prefix_of, os.listdir("/run/netns")) if p)
    for prefix in sorted(prefixes):
        run_dir = os.path.join(TMP_ROOT, prefix)
        if os.path.isdir(run_dir):
            if owner_alive(run_dir):
                continue
        elif pid_alive(int(PREFIX_RE.match(prefix).group(1))):
            continue  # a namespace of a live run that has no directory yet, or not any more
        log(f"sweeping the leftovers of a dead run: {prefix}")
        for e in cleanup_prefix(prefix, run_dir, flatnet):
            log(f"  sweep: {e}")


def cleanup_prefix(prefix, run_dir, flatnet):
    """Everything a run with `prefix` may have made; goes on past failures."""
    errors = []

    def attempt(what, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - cleanup goes on
            errors.append(f"{what}: {e}")

    # containerd (its --config names the run dir) and shims (their -address does).
    for p in processes_matching(run_dir + "/"):
        kill_pid(p)
    # Containers: every process in the run's cgroups.
    for p in processes_in_cgroup(f"/{prefix}/"):
        kill_pid(p)
    time.sleep(0.2)
    # Emulated clusters of the run: their names are <prefix>-<something>.
    state = os.path.join(run_dir, "flatnet")
    clusters = set(os.listdir(state)) if os.path.isdir(state) else set()
    if os.path.isdir("/run/netns"):
        for name in os.listdir("/run/netns"):
            m = re.match(
                rf"^flatnet-({re.escape(prefix)}-[a-z0-9]+)-(?:node-\d+|underlay|pod-.*)$", name
            )
            if m:
                clusters.add(m.group(1))
    for c in sorted(clusters):
        attempt(
            f"flatnet down {c}",
            lambda c=c: sh(flatnet, "down", "--name", c, "--state-dir", state, timeout=60),
        )
    if os.path.isdir("/run/netns"):
        for name in os.listdir("/run/netns"):
            if name.startswith(prefix + "-"):
                attempt(f"delete netns {name}", lambda n=name: netns_delete(n))
    for path in libcni_cache_entries(prefix):
        attempt(f"remove {path}", lambda p=path: os.remove(p))
    # Shim sockets whose shim is gone: their names are hashes, so only those a run recorded.
    try:
        with open(os.path.join(run_dir, "shim-sockets")) as f:
            for sock in f.read().split():
                if os.path.exists(sock):
                    attempt(f"remove {sock}", lambda s=sock: os.remove(s))
    except OSError:
        pass
    attempt("unmount", lambda: unmount_all(run_dir))
    attempt("cgroups", lambda: remove_cgroups(prefix))
    try:
        with open(os.path.join(run_dir, "made-dirs")) as f:
            made = f.read().split()
    except OSError:
        made = []
    for d in made:
        try:
            os.rmdir(d)  # only if empty: another containerd may be using it
        except OSError:
            pass
    if os.path.isdir(run_dir) and not mounts_under(run_dir):
        attempt(f"remove {run_dir}", lambda: shutil.rmtree(run_dir))
    return errors


# ---------------------------------------------------------------------------------------------
# containerd


class Containerd:
    """One containerd with a private config, started inside network namespace `netns`."""

    def __init__(self, run, name, netns, conf_dir, bin_dir, log_level="info", env=None):
        self.run = run
        self.name = name
        self.netns = netns
        self.dir = run.path(name)
        self.conf_dir = conf_dir
        self.bin_dir = bin_dir
        self.address = os.path.join(self.dir, "containerd.sock")
        self.config = os.path.join(self.dir, "config.toml")
        self.log_path = os.path.join(self.dir, "containerd.log")
        self.log_level = log_level
        self.extra_env = env or {}
        self.proc = None
        self.channel = None
        self.sandboxes = set()  # every sandbox ID this instance made, for the cleanup
        # The pods' Kubernetes namespace: it reaches CNI_ARGS, so libcni's cache files of this
        # run can be found by it.
        self.pod_namespace = f"{run.prefix}-{name}"
        self.cgroup_parent = f"/{run.prefix}/{name}"

    def start(self, pause_image):
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(HERE, "config.toml.in")) as f:
            text = f.read()
        for key, value in {
            "DIR": self.dir,
            "PAUSE_IMAGE": pause_image,
            "CNI_BIN_DIR": self.bin_dir,
            "CNI_CONF_DIR": self.conf_dir,
            "LOG_LEVEL": self.log_level,
        }.items():
            text = text.replace(f"@{key}@", value)
        with open(self.config, "w") as f:
            f.write(text)
        # A clean environment from /: the plugins and shims inherit containerd's.
        env = {"PATH": CLEAN_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
        env.update(self.extra_env)
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{self.netns}",
                "--",
                "/usr/bin/containerd",
                "--config",
                self.config,
            ],
            cwd="/",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logf.close()
        log(
            f"{self.name}: containerd pid {self.proc.pid} in netns {self.netns}, socket {self.address}"
        )
        wait_for(f"{self.name}'s socket", lambda: os.path.exists(self.address) or self._died(), 30)
        self.channel = grpc.insecure_channel(f"unix://{self.address}")
        self.runtime = cri_grpc.RuntimeServiceStub(self.channel)
        self.images = cri_grpc.ImageServiceStub(self.channel)

        def ready():
            self._died()
            try:
                st = self.runtime.Status(cri.StatusRequest(), timeout=5)
            except grpc.RpcError:
                return False
            conds = {c.type: c.status for c in st.status.conditions}
            return conds.get("RuntimeReady") and conds.get("NetworkReady")

        wait_for(f"{self.name}: CRI RuntimeReady and NetworkReady", ready, 60, 0.2)
        v = self.runtime.Version(cri.VersionRequest(version="v1"), timeout=5)
        log(
            f"{self.name}: {v.runtime_name} {v.runtime_version}, CRI {v.runtime_api_version}: ready"
        )

    def _died(self):
        if self.proc and self.proc.poll() is not None:
            raise Failure(
                f"{self.name}: containerd exited with {self.proc.returncode}\n{self.log_tail()}"
            )
        return False

    def log_tail(self, n=15):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def cni_networks(self, versions=False):
        """The networks CRI loaded from conf_dir (Status, verbose): [(name, ifname)], or
        [(name, ifname, cniVersion)]."""
        st = self.runtime.Status(cri.StatusRequest(verbose=True), timeout=10)
        cfg = json.loads(st.info["cniconfig"])
        nets = [
            (n["Config"]["Name"], n["IFName"], n["Config"]["CNIVersion"]) for n in cfg["Networks"]
        ]
        return nets if versions else [n[:2] for n in nets]

    def import_image(self, tarball):
        sh(
            "ctr",
            "--address",
            self.address,
            "--namespace",
            "k8s.io",
            "images",
            "import",
            "--snapshotter",
            "overlayfs",
            tarball,
            timeout=120,
        )

    def image_present(self, ref):
        r = self.images.ImageStatus(
            cri.ImageStatusRequest(image=cri.ImageSpec(image=ref)), timeout=10
        )
        return r.image.id != ""

    # -- CRI, as kubelet calls it --------------------------------------------------------------

    def sandbox_config(self, name):
        return cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(
                name=name, uid=str(uuid.uuid4()), namespace=self.pod_namespace, attempt=0
            ),
            hostname=name,
            log_directory=os.path.join(self.dir, "pods", name),
            labels={"app": name},
            linux=cri.LinuxPodSandboxConfig(
                cgroup_parent=self.cgroup_parent,
                security_context=cri.LinuxSandboxSecurityContext(
                    namespace_options=cri.NamespaceOption(
                        network=cri.POD, pid=cri.CONTAINER, ipc=cri.POD
                    )
                ),
            ),
        )

    def run_sandbox(self, name):
        config = self.sandbox_config(name)
        os.makedirs(config.log_directory, exist_ok=True)
        r = self.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=120)
        self.sandboxes.add(r.pod_sandbox_id)
        self._record_shim_socket(r.pod_sandbox_id)
        return r.pod_sandbox_id, config

    def _record_shim_socket(self, sandbox_id):
        with open(os.path.join(self.run.dir, "shim-sockets"), "a") as f:
            f.write(shim_socket(self.address, "k8s.io", sandbox_id) + "\n")

    def sandbox_status(self, sandbox_id):
        r = self.runtime.PodSandboxStatus(
            cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True), timeout=30
        )
        info = json.loads(r.info["info"]) if "info" in r.info else {}
        return r.status, info

    def sandbox_netns_path(self, sandbox_id):
        _, info = self.sandbox_status(sandbox_id)
        for ns in info["runtimeSpec"]["linux"]["namespaces"]:
            if ns["type"] == "network":
                return ns["path"]
        raise Failure(f"sandbox {sandbox_id} has no network namespace path")

    def stop_sandbox(self, sandbox_id):
        self.runtime.StopPodSandbox(
            cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=120
        )

    def remove_sandbox(self, sandbox_id):
        self.runtime.RemovePodSandbox(
            cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=120
        )

    def sandbox_ids(self):
        r = self.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=30)
        return [s.id for s in r.items]

    def create_container(self, sandbox_id, sandbox_config, name, image, command, args=()):
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=name, attempt=0),
            image=cri.ImageSpec(image=image),
            command=list(command),
            args=list(args),
            log_path=f"{name}.log",
            linux=cri.LinuxContainerConfig(
                security_context=cri.LinuxContainerSecurityContext(
                    namespace_options=cri.NamespaceOption(
                        network=cri.POD, pid=cri.CONTAINER, ipc=cri.POD
                    )
                )
            ),
        )
        r = self.runtime.CreateContainer(
            cri.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config
            ),
            timeout=120,
        )
        self.runtime.StartContainer(
            cri.StartContainerRequest(container_id=r.container_id), timeout=120
        )
        return r.container_id, os.path.join(sandbox_config.log_directory, f"{name}.log")

    def container_state(self, container_id):
        r = self.runtime.ContainerStatus(
            cri.ContainerStatusRequest(container_id=container_id), timeout=30
        )
        return r.status

    def exec_sync(self, container_id, cmd, timeout=15):
        r = self.runtime.ExecSync(
            cri.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout),
            timeout=timeout + 15,
        )
        return r.exit_code, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")

    # -- teardown --------------------------------------------------------------------------------

    def remove_all_sandboxes(self):
        """Stops and removes every sandbox this containerd has, as kubelet would on drain; goes
        on past failures and returns them."""
        errors = []
        for sid in self.sandbox_ids():
            for verb, call in (("stop", self.stop_sandbox), ("remove", self.remove_sandbox)):
                try:
                    call(sid)
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.NOT_FOUND:
                        errors.append(f"{self.name}: {verb} sandbox {sid[:12]}: {describe(e)}")
                        break
        return errors

    def stop(self):
        """Stops containerd by its PID, then whatever it started that is still there: shims
        (their -address is this instance's socket) and container processes (in its cgroups).
        Then unmounts what it mounted and removes its cgroups."""
        errors = []
        if self.channel is not None:
            try:
                if self.proc and self.proc.poll() is None:
                    errors += self.remove_all_sandboxes()
            except Exception as e:  # noqa: BLE001
                errors.append(f"{self.name}: removing sandboxes: {describe(e)}")
            self.channel.close()
            self.channel = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                errors.append(f"{self.name}: containerd ignored SIGTERM for 15s; killed")
                self.proc.kill()
                self.proc.wait(10)
        shims = processes_matching(f"-address {self.address} ")
        if shims:
            errors.append(f"{self.name}: shims left running, killed: {shims}")
            for p in shims:
                kill_pid(p)
        left = processes_in_cgroup(self.cgroup_parent + "/")
        if left:
            errors.append(f"{self.name}: container processes left, killed: {left}")
            for p in left:
                kill_pid(p)
        time.sleep(0.1)
        for sid in self.sandboxes:
            sock = shim_socket(self.address, "k8s.io", sid)
            if os.path.exists(sock):
                errors.append(f"{self.name}: shim socket left: {sock}")
                os.remove(sock)
        try:
            unmount_all(self.dir)
        except Failure as e:
            errors.append(str(e))
        try:
            remove_cgroups(self.cgroup_parent.lstrip("/"))
        except Failure as e:
            errors.append(str(e))
        for path in libcni_cache_entries(self.pod_namespace):
            errors.append(f"{self.name}: libcni cache entry left: {path}")
            os.remove(path)
        return errors


def prepare_bin_dir(path, flatnet_cni, tap_log=None):
    """A CNI bin dir: a copy of flatnet-cni and of Debian's loopback. With `tap_log`, flatnet-cni
    is a tap that records each call (verb, container, netns, prevResult or not, exit code) and
    runs the real plugin, copied beside it as flatnet-cni.real, with the same environment and
    stdin."""
    os.makedirs(path, exist_ok=True)
    shutil.copy2(LOOPBACK, os.path.join(path, "loopback"))
    if tap_log is None:
        shutil.copy2(flatnet_cni, os.path.join(path, "flatnet-cni"))
        return
    shutil.copy2(flatnet_cni, os.path.join(path, "flatnet-cni.real"))
    with open(os.path.join(HERE, "cni-tap.sh")) as f:
        script = f.read().replace("@LOG@", tap_log)
    tap = os.path.join(path, "flatnet-cni")
    with open(tap, "w") as f:
        f.write(script)
    os.chmod(tap, 0o755)


def read_tap(tap_log):
    """The tap's records: dicts with cmd, id, netns, ifname, prev, rc."""
    calls = []
    if os.path.exists(tap_log):
        with open(tap_log) as f:
            for line in f:
                calls.append(dict(kv.split("=", 1) for kv in line.split()))
    return calls
