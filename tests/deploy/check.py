#!/usr/bin/env python3
"""Offline checks of flatnet's install: run by tests/deploy/validate.sh in a venv that has
PyPI's kubernetes-validate (which ships the Kubernetes JSON schemas; nothing is fetched).

  check.py validate --deploy DIR --kind-config FILE... -k VERSION... [--flatnet-bin PATH]
      Every *.yaml/*.yml/*.json under DIR (recursively) is split into its documents and each
      is validated against the schemas of every VERSION, strictly (unknown fields rejected). A
      kind or apiVersion without a schema is an error here (the tool's CLI only warns). Then
      what the schemas cannot see: references inside the manifests (selector, volumes,
      service account, RBAC), the agent's agreed command line and probes, the kind configs
      (--kind-config repeats: ipv4, dual, ipv6), and that the agent's cluster CIDRs hold every
      config's podSubnet. With --flatnet-bin, every flag the
      manifests pass to `flatnet agent` must be one that binary's `agent --help` lists.
      Exit 0 when all passed, 1 otherwise; each problem is printed.

  check.py breaks
      The names of the self-check's deliberate breakages, one a line.

  check.py break NAME --deploy DIR --kind-config FILE... --out OUT
      Writes a copy of DIR to OUT/deploy and of each FILE to OUT/kind/<i>-<name> with the
      breakage NAME applied, and prints the text that `validate` must report for it.
"""

import argparse
import ipaddress
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
NAMESPACE = "kube-system"

# The agent's command line in Kubernetes mode, as agreed with the agent's implementation;
# CLUSTER_CIDR stands for the cluster CIDRs, one per family, that every kind config's podSubnet
# must be drawn from (one DaemonSet serves ipv4, ipv6 and dual clusters).
AGENT_COMMAND = [
    "/usr/local/bin/flatnet",
    "agent",
    "--kubernetes",
    "--conf-dir",
    "/etc/cni/net.d",
    "--data-dir",
    "/run/flatnet/ipam",
    "--cluster-cidr",
    "CLUSTER_CIDR",
    "--health-addr",
    "0.0.0.0:9099",
]
UNINSTALL_COMMAND = [
    "/usr/local/bin/flatnet",
    "agent",
    "--uninstall",
    "--conf-dir",
    "/etc/cni/net.d",
]
HEALTH_PORT = 9099
# hostPath -> where the flatnet DaemonSet must mount it (container, mountPath).
HOST_PATHS = {
    "/etc/cni/net.d": ("agent", "/etc/cni/net.d"),
    "/run/flatnet": ("agent", "/run/flatnet"),
    "/opt/cni/bin": ("install-cni", None),
}

# kind's v1alpha4 Cluster (kind decodes its config strictly: an unknown key is an error).
KIND_TOP_KEYS = {
    "kind",
    "apiVersion",
    "name",
    "nodes",
    "networking",
    "featureGates",
    "runtimeConfig",
    "kubeadmConfigPatches",
    "kubeadmConfigPatchesJSON6902",
    "containerdConfigPatches",
    "containerdConfigPatchesJSON6902",
}
KIND_NETWORKING_KEYS = {
    "ipFamily",
    "apiServerPort",
    "apiServerAddress",
    "podSubnet",
    "serviceSubnet",
    "disableDefaultCNI",
    "kubeProxyMode",
    "dnsSearch",
}
KIND_NODE_KEYS = {
    "role",
    "image",
    "labels",
    "extraMounts",
    "extraPortMappings",
    "kubeadmConfigPatches",
    "kubeadmConfigPatchesJSON6902",
}


class Report:
    def __init__(self):
        self.errors = []

    def error(self, where, msg):
        self.errors.append(f"{where}: {msg}")
        print(f"FAIL {where}: {msg}")

    def check(self, cond, where, msg):
        if not cond:
            self.error(where, msg)
        return cond


def manifest_files(deploy):
    files = sorted(
        p for p in Path(deploy).rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES
    )
    return files


def load_documents(path, rep):
    """The non-empty documents of a YAML (or JSON) file, or None if it does not parse."""
    try:
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as e:
        rep.error(str(path), f"not valid YAML: {' '.join(str(e).split())}")
        return None


def name_of(doc):
    md = doc.get("metadata") or {}
    ns = md.get("namespace")
    return f"{doc.get('kind')} {ns + '/' if ns else ''}{md.get('name')}"


def schema_validate(doc, where, versions, rep):
    import kubernetes_validate as kv
    from kubernetes_validate.utils import VersionNotSupportedError

    ok = True
    for v in versions:
        try:
            kv.validate(doc, v, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            rep.error(where, f"Kubernetes {e.version} schema (strict): at {path}: {e.message}")
            ok = False
        except kv.SchemaNotFoundError as e:
            rep.error(
                where,
                f"no schema for kind {e.kind!r} with apiVersion {e.api_version!r} "
                f"in Kubernetes {e.version}: a misspelt kind or apiVersion?",
            )
            ok = False
        except VersionNotSupportedError as e:
            rep.error(where, f"kubernetes-validate has no schemas for Kubernetes {e.version}")
            ok = False
        except Exception as e:  # a malformed document (no apiVersion, ...)
            rep.error(where, f"could not be validated: {type(e).__name__}: {e}")
            ok = False
    return ok


def containers(pod_spec):
    return (pod_spec.get("initContainers") or []) + (pod_spec.get("containers") or [])


def find_container(pod_spec, name):
    return next((c for c in containers(pod_spec) if c.get("name") == name), None)


def check_workload(doc, where, by_kind, rep):
    """References inside a workload that the API server checks but the schemas cannot."""
    spec = doc.get("spec") or {}
    tmpl = spec.get("template") or {}
    labels = (tmpl.get("metadata") or {}).get("labels") or {}
    match = (spec.get("selector") or {}).get("matchLabels") or {}
    rep.check(
        match and all(labels.get(k) == v for k, v in match.items()),
        where,
        f"selector.matchLabels {match} must be non-empty and match the template's labels {labels}",
    )
    pod = tmpl.get("spec") or {}
    volumes = [v.get("name") for v in pod.get("volumes") or []]
    rep.check(len(volumes) == len(set(volumes)), where, f"duplicate volume names: {volumes}")
    names = [c.get("name") for c in containers(pod)]
    rep.check(len(names) == len(set(names)), where, f"duplicate container names: {names}")
    for c in containers(pod):
        for m in c.get("volumeMounts") or []:
            rep.check(
                m.get("name") in volumes,
                where,
                f"container {c.get('name')}: volumeMount {m.get('name')!r} names no volume (volumes: {volumes})",
            )
        rep.check(
            bool((c.get("resources") or {}).get("requests")),
            where,
            f"container {c.get('name')}: no resource requests",
        )
        rep.check(
            c.get("imagePullPolicy") == "IfNotPresent",
            where,
            f"container {c.get('name')}: imagePullPolicy must be IfNotPresent (the image is loaded into kind, not pulled)",
        )
    sa = pod.get("serviceAccountName")
    if sa is not None:
        rep.check(
            ("ServiceAccount", doc["metadata"].get("namespace"), sa) in by_kind,
            where,
            f"serviceAccountName {sa!r} is not a ServiceAccount of these manifests",
        )
    rep.check(
        pod.get("hostNetwork") is True, where, "hostNetwork must be true (the node's own routes)"
    )
    rep.check(
        pod.get("priorityClassName") == "system-node-critical",
        where,
        "priorityClassName must be system-node-critical",
    )
    rep.check(
        {"operator": "Exists"} in (pod.get("tolerations") or []),
        where,
        "tolerations must include {operator: Exists} (tolerate everything)",
    )
    for c in containers(pod):
        sc = c.get("securityContext") or {}
        rep.check(
            sc.get("privileged") is not True,
            where,
            f"container {c.get('name')}: privileged is not needed",
        )
    return pod


def check_flatnet(docs, cluster_cidr, rep):
    """The install itself: RBAC, the DaemonSet's agreed command line, probes, mounts."""
    by = {
        (
            d.get("kind"),
            (d.get("metadata") or {}).get("namespace"),
            (d.get("metadata") or {}).get("name"),
        ): d
        for d, _ in docs
    }
    for kind, ns in (
        ("ServiceAccount", NAMESPACE),
        ("ClusterRole", None),
        ("ClusterRoleBinding", None),
        ("DaemonSet", NAMESPACE),
    ):
        rep.check(
            (kind, ns, "flatnet") in by, "deploy", f"missing {kind} {ns + '/' if ns else ''}flatnet"
        )
    role = by.get(("ClusterRole", None, "flatnet"))
    if role:
        rules = role.get("rules") or []
        # The node list, and what NetworkPolicy needs: read only.
        for group, resource in (
            ("", "nodes"),
            ("", "pods"),
            ("", "namespaces"),
            ("networking.k8s.io", "networkpolicies"),
        ):
            matching = [
                r
                for r in rules
                if group in (r.get("apiGroups") or []) and resource in (r.get("resources") or [])
            ]
            verbs = {v for r in matching for v in r.get("verbs") or []}
            rep.check(
                verbs == {"get", "list", "watch"},
                "ClusterRole flatnet",
                f"needs {resource} get/list/watch and nothing more, has {sorted(verbs)}",
            )
        # Each agent annotates its own Node (flatnet.io/node-network) through the status
        # subresource, which cannot change a Node's spec: patch there, nothing more.
        verbs = {
            v
            for r in rules
            if "" in (r.get("apiGroups") or []) and "nodes/status" in (r.get("resources") or [])
            for v in r.get("verbs") or []
        }
        rep.check(
            verbs == {"patch"},
            "ClusterRole flatnet",
            f"needs nodes/status patch and nothing more, has {sorted(verbs)}",
        )
    binding = by.get(("ClusterRoleBinding", None, "flatnet"))
    if binding:
        ref = binding.get("roleRef") or {}
        rep.check(
            ref.get("kind") == "ClusterRole" and ref.get("name") == "flatnet",
            "ClusterRoleBinding flatnet",
            f"roleRef must be ClusterRole flatnet, is {ref}",
        )
        rep.check(
            {"kind": "ServiceAccount", "name": "flatnet", "namespace": NAMESPACE}
            in (binding.get("subjects") or []),
            "ClusterRoleBinding flatnet",
            "subjects must include ServiceAccount kube-system/flatnet",
        )

    ds = by.get(("DaemonSet", NAMESPACE, "flatnet"))
    if not ds:
        return
    where = "DaemonSet kube-system/flatnet"
    spec = ds.get("spec") or {}
    rep.check(
        (spec.get("updateStrategy") or {}).get("type") == "RollingUpdate",
        where,
        "updateStrategy.type must be RollingUpdate",
    )
    pod = (spec.get("template") or {}).get("spec") or {}
    rep.check(
        pod.get("serviceAccountName") == "flatnet", where, "serviceAccountName must be flatnet"
    )
    agent = find_container(pod, "agent")
    if not rep.check(
        agent is not None and agent in (pod.get("containers") or []),
        where,
        "no container named agent",
    ):
        return
    got = (agent.get("command") or []) + (agent.get("args") or [])
    given = got[got.index("--cluster-cidr") + 1] if "--cluster-cidr" in got[:-1] else None
    want = [given if a == "CLUSTER_CIDR" and given else a for a in AGENT_COMMAND]
    rep.check(got == want, where, f"agent command must be exactly {want}, is {got}")
    cidrs = parse_cidrs(given) if given else None
    rep.check(
        cidrs is not None
        and len(cidrs) == 2
        and {c.version for c in cidrs} == {4, 6},
        where,
        f"agent --cluster-cidr {given} must be one IPv4 and one IPv6 network (comma-separated), "
        "so that one DaemonSet serves kind's ipv4, ipv6 and dual clusters",
    )
    for path, subnets in cluster_cidr.items():
        for sub in subnets or []:
            rep.check(
                cidrs is not None and sub in cidrs,
                where,
                f"agent --cluster-cidr {given} must hold {path}'s podSubnet {sub}",
            )
    env = {e.get("name"): e for e in agent.get("env") or []}
    node = ((env.get("NODE_NAME") or {}).get("valueFrom") or {}).get("fieldRef") or {}
    rep.check(
        node.get("fieldPath") == "spec.nodeName",
        where,
        "NODE_NAME must come from fieldRef spec.nodeName",
    )
    caps = set(((agent.get("securityContext") or {}).get("capabilities") or {}).get("add") or [])
    rep.check(
        {"NET_ADMIN", "NET_RAW"} <= caps,
        where,
        f"agent needs capabilities NET_ADMIN and NET_RAW, adds {sorted(caps)}",
    )
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = (agent.get(probe) or {}).get("httpGet") or {}
        rep.check(
            get.get("path") == path and get.get("port") == HEALTH_PORT,
            where,
            f"{probe} must be httpGet {path} on port {HEALTH_PORT}, is {get}",
        )
    vols = {v.get("name"): (v.get("hostPath") or {}).get("path") for v in pod.get("volumes") or []}
    for host, (cname, mount_path) in HOST_PATHS.items():
        c = find_container(pod, cname)
        mounts = {m.get("name"): m.get("mountPath") for m in (c or {}).get("volumeMounts") or []}
        ok = any(
            vols.get(n) == host and (mount_path is None or p == mount_path)
            for n, p in mounts.items()
        )
        rep.check(
            ok,
            where,
            f"container {cname} must mount hostPath {host}"
            + (f" at {mount_path}" if mount_path else ""),
        )
    inst = find_container(pod, "install-cni")
    if rep.check(
        inst is not None and inst in (pod.get("initContainers") or []),
        where,
        "no init container install-cni",
    ):
        script = " ".join(inst.get("command") or []) + " " + " ".join(inst.get("args") or [])
        rep.check(
            "cp /usr/local/bin/flatnet-cni" in script and "mv -f" in script,
            where,
            "install-cni must copy flatnet-cni under a temporary name and mv it into place",
        )

    un = by.get(("DaemonSet", NAMESPACE, "flatnet-uninstall"))
    if un:
        c = find_container(
            (un.get("spec") or {}).get("template", {}).get("spec") or {}, "uninstall"
        )
        got = ((c or {}).get("command") or []) + ((c or {}).get("args") or [])
        rep.check(
            got == UNINSTALL_COMMAND,
            "DaemonSet kube-system/flatnet-uninstall",
            f"uninstall command must be exactly {UNINSTALL_COMMAND}, is {got}",
        )


def check_flags(docs, flatnet_bin, rep):
    """Every --flag given to `flatnet agent` in the manifests exists in the built binary."""
    try:
        out = subprocess.run(
            [flatnet_bin, "agent", "--help"], capture_output=True, text=True, timeout=30
        )
    except OSError as e:
        rep.error(flatnet_bin, f"cannot run: {e}")
        return
    if not rep.check(
        out.returncode == 0, flatnet_bin, f"`agent --help` failed: {out.stderr.strip()}"
    ):
        return
    known = {w.rstrip(",") for w in out.stdout.split() if w.startswith("--")}
    errors = len(rep.errors)
    used = set()
    for doc, _ in docs:
        pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
        for c in containers(pod):
            cmd = (c.get("command") or []) + (c.get("args") or [])
            if cmd[:2] == ["/usr/local/bin/flatnet", "agent"]:
                used |= {a.split("=")[0] for a in cmd if a.startswith("--")}
    for flag in sorted(used):
        rep.check(
            flag in known, "flags", f"`flatnet agent {flag}` is not in {flatnet_bin} agent --help"
        )
    if used and len(rep.errors) == errors:
        print(f"ok   flags {' '.join(sorted(used))}: all listed by {flatnet_bin} agent --help")


def parse_cidrs(text):
    """A comma-separated list of networks without host bits; None if any is not one."""
    try:
        return [ipaddress.ip_network(c.strip(), strict=True) for c in str(text).split(",")]
    except ValueError:
        return None


# kind's networking.ipFamily (default ipv4) -> the families its podSubnet must hold, in order.
KIND_FAMILIES = {"ipv4": [4], "ipv6": [6], "dual": [4, 6]}


def check_kind_config(path, rep):
    """kind's Cluster config: not a Kubernetes resource, so checked by hand. Returns the
    podSubnet's networks."""
    where = str(path)
    errors = len(rep.errors)
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        rep.error(where, f"cannot read: {' '.join(str(e).split())}")
        return None
    if not rep.check(isinstance(cfg, dict), where, "not a mapping"):
        return None
    rep.check(
        cfg.get("apiVersion") == "kind.x-k8s.io/v1alpha4",
        where,
        f"apiVersion must be kind.x-k8s.io/v1alpha4, is {cfg.get('apiVersion')!r}",
    )
    rep.check(cfg.get("kind") == "Cluster", where, f"kind must be Cluster, is {cfg.get('kind')!r}")
    extra = set(cfg) - KIND_TOP_KEYS
    rep.check(not extra, where, f"unknown top-level keys (kind rejects them): {sorted(extra)}")
    net = cfg.get("networking")
    subnet = None
    if rep.check(isinstance(net, dict), where, "networking must be a mapping"):
        extra = set(net) - KIND_NETWORKING_KEYS
        rep.check(not extra, where, f"unknown networking keys (kind rejects them): {sorted(extra)}")
        rep.check(
            net.get("disableDefaultCNI") is True,
            where,
            f"networking.disableDefaultCNI must be true (no kindnet), is {net.get('disableDefaultCNI')!r}",
        )
        family = net.get("ipFamily", "ipv4")
        want = KIND_FAMILIES.get(family)
        rep.check(
            want is not None,
            where,
            f"networking.ipFamily must be one of {sorted(KIND_FAMILIES)}, is {family!r}",
        )
        subnet = parse_cidrs(net.get("podSubnet"))
        if want is not None and (subnet is None or [c.version for c in subnet] != want):
            rep.error(
                where,
                f"networking.podSubnet must be {' and '.join(f'an IPv{v}' for v in want)} CIDR "
                f"without host bits (ipFamily {family}), is {net.get('podSubnet')!r}",
            )
            subnet = None
    nodes = cfg.get("nodes")
    if rep.check(isinstance(nodes, list), where, "nodes must be a list"):
        for i, n in enumerate(nodes):
            if rep.check(isinstance(n, dict), where, f"nodes[{i}] must be a mapping"):
                extra = set(n) - KIND_NODE_KEYS
                rep.check(
                    not extra,
                    where,
                    f"nodes[{i}]: unknown keys (kind rejects them): {sorted(extra)}",
                )
        roles = sorted(str(n.get("role")) for n in nodes if isinstance(n, dict))
        rep.check(
            roles == ["control-plane", "worker", "worker"],
            where,
            f"nodes must be one control-plane and two workers, are {roles}",
        )
    if len(rep.errors) == errors:
        print(
            f"ok   {where}: kind {cfg['apiVersion']} Cluster, disableDefaultCNI, "
            f"ipFamily {net.get('ipFamily', 'ipv4')}, podSubnet {','.join(map(str, subnet))}, "
            f"nodes {', '.join(n['role'] for n in nodes)}"
        )
    return subnet


def cmd_validate(args):
    rep = Report()
    files = manifest_files(args.deploy)
    rep.check(bool(files), args.deploy, "no manifests found")
    docs = []
    for path in files:
        loaded = load_documents(path, rep)
        for doc in loaded or []:
            where = f"{path}: {name_of(doc) if isinstance(doc, dict) else repr(doc)[:40]}"
            if not rep.check(
                isinstance(doc, dict)
                and doc.get("apiVersion")
                and doc.get("kind")
                and (doc.get("metadata") or {}).get("name"),
                where,
                "not a Kubernetes object (apiVersion, kind, metadata.name)",
            ):
                continue
            docs.append((doc, where))
            errors = len(rep.errors)
            schema_validate(doc, where, args.k8s_versions, rep)
            ns = doc["metadata"].get("namespace")
            rep.check(
                doc["kind"] != "Namespace",
                where,
                "flatnet installs into kube-system: no Namespace objects",
            )
            if doc["kind"] in ("ServiceAccount", "DaemonSet", "Deployment", "Job", "ConfigMap"):
                rep.check(ns == NAMESPACE, where, f"namespace must be {NAMESPACE}, is {ns!r}")
            if len(rep.errors) == errors:
                print(f"ok   {where}: schemas {', '.join(args.k8s_versions)} (strict)")

    keys = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d, _ in docs}
    for doc, where in docs:
        if doc["kind"] == "DaemonSet":
            errors = len(rep.errors)
            check_workload(doc, where, keys, rep)
            if len(rep.errors) == errors:
                print(
                    f"ok   {where}: selector, volumes, service account, hostNetwork, priority, tolerations"
                )

    subnets = {path: check_kind_config(path, rep) for path in args.kind_config}
    errors = len(rep.errors)
    check_flatnet(docs, subnets, rep)
    if len(rep.errors) == errors:
        print(
            "ok   install: RBAC nodes get/list/watch, nodes/status patch; agent command as agreed, its --cluster-cidr "
            "holding every kind config's podSubnet; NODE_NAME; NET_ADMIN+NET_RAW; probes /readyz "
            f"and /healthz on {HEALTH_PORT}; hostPath mounts; atomic plugin install"
        )
    if args.flatnet_bin:
        check_flags(docs, args.flatnet_bin, rep)

    n = len(docs)
    if rep.errors:
        print(
            f"{len(rep.errors)} problem(s) in {len(files)} manifest file(s) and "
            f"{', '.join(args.kind_config)}"
        )
        return 1
    print(
        f"validated {n} object(s) in {len(files)} file(s) under {args.deploy}/ and "
        f"{', '.join(args.kind_config)}"
    )
    return 0


# ---- self-check: deliberate breakages -------------------------------------------------------


def _docs_of(out_deploy):
    return {p: list(yaml.safe_load_all(p.read_text())) for p in manifest_files(out_deploy)}


def _edit(out_deploy, kind, name, fn):
    """Applies fn to the document kind/name in the copied deploy dir and rewrites its file."""
    for path, docs in _docs_of(out_deploy).items():
        for d in docs:
            if (
                isinstance(d, dict)
                and d.get("kind") == kind
                and (d.get("metadata") or {}).get("name") == name
            ):
                fn(d)
                path.write_text(
                    yaml.safe_dump_all([x for x in docs if x is not None], sort_keys=False)
                )
                return
    raise SystemExit(f"break: no {kind} {name} in {out_deploy}")


def _pod(d):
    return d["spec"]["template"]["spec"]


def _agent(d):
    return next(c for c in _pod(d)["containers"] if c["name"] == "agent")


def _edit_kind(path, fn):
    cfg = yaml.safe_load(path.read_text())
    fn(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _set(d, keys, value):
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value


# name -> (what it breaks, the text validate must print, function(out_deploy, kind_config_copy))
BREAKS = {
    "misspelt-field": (
        "a misspelt field in the DaemonSet's pod spec (strict schema)",
        "'hostNetwrok' was unexpected",
        lambda dep, kc: _edit(
            dep, "DaemonSet", "flatnet", lambda d: _pod(d).update(hostNetwrok=True)
        ),
    ),
    "misspelt-nested-field": (
        "a misspelt field deep in a container (strict schema)",
        "'initialDelaySecond' was unexpected",
        lambda dep, kc: _edit(
            dep,
            "DaemonSet",
            "flatnet",
            lambda d: _agent(d)["livenessProbe"].update(initialDelaySecond=5),
        ),
    ),
    "wrong-type": (
        "a string where the schema wants a boolean",
        "'yes' is not of type 'boolean'",
        lambda dep, kc: _edit(
            dep, "DaemonSet", "flatnet", lambda d: _pod(d).update(hostNetwork="yes")
        ),
    ),
    "missing-required": (
        "the DaemonSet without its required selector",
        "'selector' is a required property",
        lambda dep, kc: _edit(dep, "DaemonSet", "flatnet", lambda d: d["spec"].pop("selector")),
    ),
    "unknown-kind": (
        "a misspelt kind, which has no schema (the tool's CLI would only warn)",
        "no schema for kind 'DaemonSte'",
        lambda dep, kc: _edit(dep, "DaemonSet", "flatnet", lambda d: d.update(kind="DaemonSte")),
    ),
    "wrong-api-version": (
        "a DaemonSet at an apiVersion that no longer exists",
        "no schema for kind 'DaemonSet' with apiVersion 'extensions/v1beta1'",
        lambda dep, kc: _edit(
            dep, "DaemonSet", "flatnet", lambda d: d.update(apiVersion="extensions/v1beta1")
        ),
    ),
    "bad-yaml": (
        "a manifest that is not YAML at all",
        "not valid YAML",
        lambda dep, kc: (dep / "flatnet.yaml").write_text(
            (dep / "flatnet.yaml").read_text() + "\n  : [unclosed\n"
        ),
    ),
    "subdirectory": (
        "an error in deploy/uninstall/ (subdirectories are validated too)",
        "'securityContxt' was unexpected",
        lambda dep, kc: _edit(
            dep,
            "DaemonSet",
            "flatnet-uninstall",
            lambda d: _pod(d)["initContainers"][0].update(securityContxt={}),
        ),
    ),
    "dangling-volume-mount": (
        "a volumeMount naming no volume (the API server rejects it; the schema cannot see it)",
        "volumeMount 'cni-confs' names no volume",
        lambda dep, kc: _edit(
            dep,
            "DaemonSet",
            "flatnet",
            lambda d: _agent(d)["volumeMounts"][0].update(name="cni-confs"),
        ),
    ),
    "agent-command": (
        "the agent's command line drifting from the agreed one",
        "agent command must be exactly",
        lambda dep, kc: _edit(
            dep, "DaemonSet", "flatnet", lambda d: _agent(d)["command"].remove("--kubernetes")
        ),
    ),
    "kind-default-cni": (
        "the kind config with kindnet left on",
        "networking.disableDefaultCNI must be true",
        lambda dep, kc: _edit_kind(
            kc[0], lambda c: _set(c, ["networking", "disableDefaultCNI"], False)
        ),
    ),
    "kind-cidr-mismatch": (
        "the kind config's podSubnet outside the agent's --cluster-cidr",
        "'s podSubnet 10.245.0.0/16",
        lambda dep, kc: _edit_kind(
            kc[0], lambda c: _set(c, ["networking", "podSubnet"], "10.245.0.0/16")
        ),
    ),
    "kind-dual-cidr-mismatch": (
        "the dual-stack kind config's IPv6 podSubnet outside the agent's --cluster-cidr",
        "'s podSubnet fd00:10:245::/56",
        lambda dep, kc: _edit_kind(
            kc[1],
            lambda c: _set(c, ["networking", "podSubnet"], "10.244.0.0/16,fd00:10:245::/56"),
        ),
    ),
    "kind-dual-one-family": (
        "a dual-stack kind config with an IPv4 podSubnet only",
        "networking.podSubnet must be an IPv4 and an IPv6 CIDR",
        lambda dep, kc: _edit_kind(
            kc[1], lambda c: _set(c, ["networking", "podSubnet"], "10.244.0.0/16")
        ),
    ),
    "agent-one-family": (
        "the agent's --cluster-cidr with the IPv4 network only (no IPv6 cluster could run)",
        "must be one IPv4 and one IPv6 network",
        lambda dep, kc: _edit(
            dep,
            "DaemonSet",
            "flatnet",
            lambda d: _agent(d)["command"].__setitem__(
                _agent(d)["command"].index("--cluster-cidr") + 1, "10.244.0.0/16"
            ),
        ),
    ),
    "kind-api-version": (
        "the kind config at a wrong apiVersion",
        "apiVersion must be kind.x-k8s.io/v1alpha4",
        lambda dep, kc: _edit_kind(
            kc[0], lambda c: c.update(apiVersion="kind.x-k8s.io/v1alpha3")
        ),
    ),
}


def cmd_break(args):
    what, expect, fn = BREAKS[args.name]
    out = Path(args.out)
    dep = out / "deploy"
    (out / "kind").mkdir(parents=True)
    kcs = [out / "kind" / f"{i}-{Path(k).name}" for i, k in enumerate(args.kind_config)]
    shutil.copytree(args.deploy, dep)
    for src, kc in zip(args.kind_config, kcs):
        shutil.copyfile(src, kc)
    fn(dep, kcs)
    print(f"{what}\t{expect}")
    return 0


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate")
    v.add_argument("--deploy", required=True)
    v.add_argument("--kind-config", action="append", required=True)
    v.add_argument("-k", "--k8s-version", dest="k8s_versions", action="append", required=True)
    v.add_argument("--flatnet-bin")
    sub.add_parser("breaks")
    b = sub.add_parser("break")
    b.add_argument("name", choices=sorted(BREAKS))
    b.add_argument("--deploy", required=True)
    b.add_argument("--kind-config", action="append", required=True)
    b.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.cmd == "validate":
        return cmd_validate(args)
    if args.cmd == "breaks":
        print("\n".join(BREAKS))
        return 0
    return cmd_break(args)


if __name__ == "__main__":
    sys.exit(main())
