#!/usr/bin/env bash
# Validates flatnet's install offline: every manifest under deploy/ (recursively) against the
# Kubernetes JSON schemas of several Kubernetes versions, strictly (unknown fields rejected),
# with PyPI's kubernetes-validate, which ships the schemas; plus the references the schemas
# cannot see, the agent's agreed command line, and the kind configs in examples/ (not Kubernetes
# resources: checked by hand). Then a self-check: deliberately broken copies in a temp dir must
# each be rejected, for the expected reason.
#
# kind itself cannot run here (no Docker engine); this is what is tested of the install instead.
# Run as root from anywhere; needs python3 with pip (python3 -m pip; else python3-venv, which
# is installed when missing).
# Network: only PyPI, at install time. The validation itself runs in a fresh network namespace
# that has no interfaces up, so it cannot reach anything.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The schema package, pinned (its schemas are the test's reference), and the Kubernetes
# versions to validate against: 1.31 up to the newest this release of the package ships.
KV_VERSION=1.37.0
K8S_VERSIONS=(1.31 1.32 1.33 1.34 1.35 1.36 1.37)
DEPLOY=deploy
# In this order: the break cases of check.py name them by position (ipv4 first, dual second).
KIND_CONFIGS=(examples/kind-config.yaml examples/kind-config-dual.yaml examples/kind-config-ipv6.yaml)
CHECK=tests/deploy/check.py
FLATNET_BIN=target/debug/flatnet

start=$SECONDS
fail() {
    echo "validate.sh: $*" >&2
    exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
py=$tmp/venv/bin/python
echo "==> installing kubernetes-validate==$KV_VERSION from PyPI into a venv in $tmp"
# A venv without a pip of its own, filled by the machine's pip (--python: pip >= 22.3), is the
# quickest; else a venv with its own pip, which Debian's python3 makes only with python3-venv.
python3 -m venv --without-pip "$tmp/venv"
if python3 -m pip --python "$py" --version >/dev/null 2>&1; then
    python3 -m pip --python "$py" install --quiet "kubernetes-validate==$KV_VERSION"
else
    if ! python3 -c 'import ensurepip' 2>/dev/null && command -v apt-get >/dev/null &&
        [[ $(id -u) -eq 0 ]]; then
        echo "installing: python3-venv"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    rm -rf "$tmp/venv"
    python3 -m venv "$tmp/venv" || fail "python3 cannot make a venv with pip: install python3-venv"
    "$py" -m pip install --quiet "kubernetes-validate==$KV_VERSION"
fi

# Offline from here on: a new network namespace has only a loopback, and it is down.
if unshare --net true 2>/dev/null; then
    offline=(unshare --net)
    echo "==> validating offline: in a new network namespace with no network"
else
    offline=()
    echo "==> validating (could not unshare a network namespace: run as root to prove offline)"
fi
versions=()
for v in "${K8S_VERSIONS[@]}"; do
    versions+=(-k "$v")
done
bin=()
if [[ -x $FLATNET_BIN ]]; then
    bin=(--flatnet-bin "$FLATNET_BIN")
else
    echo "    ($FLATNET_BIN not built: the manifests' flags are not compared with its --help)"
fi
check() {
    "${offline[@]}" "$py" "$CHECK" "$@"
}
kind_args=()
for k in "${KIND_CONFIGS[@]}"; do
    kind_args+=(--kind-config "$k")
done

check validate --deploy "$DEPLOY" "${kind_args[@]}" "${versions[@]}" "${bin[@]}" ||
    fail "the install does not validate (see FAIL lines above)"

# The same schemas through the tool's own command line, --strict: it must agree. (check.py uses
# the tool's library, because the command line only warns, exit 0, about a kind it has no
# schema for; so any WARN line counts as a failure here.)
mapfile -t manifests < <(find "$DEPLOY" -type f \( -name '*.yaml' -o -name '*.yml' -o -name '*.json' \) |
    sort)
cli() {
    "${offline[@]}" "$tmp/venv/bin/kubernetes-validate" --strict --quiet -k "${K8S_VERSIONS[-1]}" \
        "$@" 2>&1
}
if ! out=$(cli "${manifests[@]}") || [[ -n $out ]]; then
    echo "$out" >&2
    fail "kubernetes-validate --strict rejected or warned about the manifests"
fi
echo "ok   kubernetes-validate --strict -k ${K8S_VERSIONS[-1]} ${manifests[*]}: passed, no warnings"

# Against the newest schemas only: each broken copy must be rejected, and each reason is
# version-independent (one version keeps the self-check at a few seconds).
echo "==> self-check: broken copies must be rejected, each for its reason"
n=0
for name in $("$py" "$CHECK" breaks); do
    out=$tmp/break-$name
    info=$(check break "$name" --deploy "$DEPLOY" "${kind_args[@]}" --out "$out") ||
        fail "self-check $name: could not make the broken copy"
    what=${info%%$'\t'*}
    expect=${info#*$'\t'}
    broken_kind=()
    for i in "${!KIND_CONFIGS[@]}"; do
        broken_kind+=(--kind-config "$out/kind/$i-$(basename "${KIND_CONFIGS[$i]}")")
    done
    if got=$(check validate --deploy "$out/deploy" "${broken_kind[@]}" \
        -k "${K8S_VERSIONS[-1]}" 2>&1); then
        echo "$got" >&2
        fail "self-check $name ($what): the broken copy passed validation"
    fi
    if ! grep -qF -- "$expect" <<<"$got"; then
        echo "$got" >&2
        fail "self-check $name ($what): rejected, but without the expected \"$expect\""
    fi
    echo "ok   rejected: $what: $(grep -F -m1 -- "$expect" <<<"$got")"
    n=$((n + 1))
done
((n > 0)) || fail "self-check ran no case"
# And the tool's own command line rejects a misspelt field under --strict, exiting non-zero.
mapfile -t broken < <(find "$tmp/break-misspelt-field/deploy" -type f -name '*.yaml' | sort)
if out=$(cli "${broken[@]}"); then
    echo "$out" >&2
    fail "self-check: kubernetes-validate --strict passed a misspelt field"
fi
grep -q "'hostNetwrok' was unexpected" <<<"$out" ||
    fail "self-check: kubernetes-validate --strict failed, but not on the misspelt field: $out"
echo "ok   rejected by kubernetes-validate --strict itself: $(grep -m1 "hostNetwrok" <<<"$out")"
n=$((n + 1))

echo "deploy validation passed: Kubernetes ${K8S_VERSIONS[0]}-${K8S_VERSIONS[-1]} schemas (strict)," \
    "$n broken copies rejected, $((SECONDS - start)) s"
