#!/usr/bin/env bash
# charts/kmosix against a real kube-apiserver (a scratch one: the caller's, see
# chart_cluster_test.cc):
#   dry_run.sh BIN_DIR KUBECONFIG
# BIN_DIR holds kubectl; helm is $HELM, else BIN_DIR/helm, else PATH.
#   1. a real `helm install --no-hooks` (no kubelet runs anything here), then
#      `helm upgrade` with a changed value (the generated tokens are kept,
#      the DaemonSet carries the value) and `helm uninstall` (every object of
#      the release is gone except the CRDs, which are kept);
#   2. every values combination of combos.sh, hooks included, through a
#      server-side dry run (`kubectl apply --dry-run=server`), after the
#      kmosix.io CRDs and stand-ins for the ServiceMonitor and cert-manager
#      CRDs (testdata/third-party-crds.yaml) are in place.
# Exits 0 when all hold; prints each surprise and exits 1 otherwise (2: usage,
# no helm, unreachable server).
set -uo pipefail
if [ $# -ne 2 ] || [ ! -x "$1/kubectl" ] || [ ! -r "$2" ]; then
  echo "usage: $0 BIN_DIR KUBECONFIG" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
chart=$root/charts/kmosix
# shellcheck source=tests/charts/combos.sh
. "$here/combos.sh"
bin=$1 kubeconfig=$2
helm=${HELM:-}
[ -n "$helm" ] || { [ -x "$bin/helm" ] && helm=$bin/helm; }
[ -n "$helm" ] || helm=$(command -v helm || true)
if [ -z "$helm" ]; then
  echo "FAIL: helm not found (HELM, $bin/helm or PATH): build it with scripts/kube-tools" >&2
  exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
kc() { "$bin/kubectl" --kubeconfig "$kubeconfig" --request-timeout=60s --cache-dir "$tmp/cache" "$@"; }
h() { "$helm" --kubeconfig "$kubeconfig" "$@"; }
failures=0
out=""
fail() {
  failures=$((failures + 1))
  printf 'FAIL: %s\n' "$1" >&2
  [ -n "${2:-}" ] && printf '%s\n' "$2" | head -40 | sed 's/^/    | /' >&2
}
ok() { printf 'ok: %s\n' "$1"; }
run() { out=$("$@" 2>&1); }
canI() { out=$(kc auth can-i "$@" 2>/dev/null); } # stdout only: "yes" or "no"

if ! run kc version; then
  echo "dry_run.sh: cannot reach the API server:" >&2
  printf '%s\n' "$out" >&2
  exit 2
fi
ok "server: $(grep -i '^server' <<<"$out" | head -1)"
ok "helm: $("$helm" version --short 2>&1)"

# --- 1. install, upgrade, uninstall (no hooks: no kubelet runs Jobs here) ---
ns=kmosix-install
token() { kc -n "$ns" get secret kmosix-tokens -o 'jsonpath={.data.admin-token}' 2>/dev/null | base64 -d; }
if run h install kmosix "$chart" -n "$ns" --create-namespace --no-hooks; then
  ok "helm install --no-hooks"
else
  fail "helm install --no-hooks" "$out"
fi
for obj in deployment/kmosix-controller daemonset/kmosix-agent statefulset/kmosix-etcd service/kmosix-controller \
  service/kmosix-etcd service/kmosix-etcd-client secret/kmosix-tokens cronjob/kmosix-pki-refresh \
  serviceaccount/kmosix-controller serviceaccount/kmosix-agent poddisruptionbudget/kmosix-controller; do
  if run kc -n "$ns" get "$obj"; then ok "installed: $obj"; else fail "installed: $obj" "$out"; fi
done
for obj in crd/migratableworkloads.kmosix.io crd/migrations.kmosix.io crd/migrationpolicies.kmosix.io \
  clusterrole/kmosix-controller clusterrolebinding/kmosix-controller; do
  if run kc get "$obj"; then ok "installed: $obj"; else fail "installed: $obj" "$out"; fi
done
t1=$(token)
[ ${#t1} -eq 48 ] && ok "a 48-character admin token was generated" || fail "generated admin token has ${#t1} characters"
if canI patch migratableworkloads/status --as "system:serviceaccount:$ns:kmosix-controller" -A &&
  [ "$out" = yes ]; then
  ok "the controller's ServiceAccount may write MigratableWorkload status"
else
  fail "the controller's ServiceAccount may not write MigratableWorkload status" "$out"
fi
if canI list secrets --as "system:serviceaccount:$ns:kmosix-controller" -n "$ns"; [ "$out" = no ]; then
  ok "the controller's ServiceAccount may not read Secrets"
else
  fail "the controller's ServiceAccount may read Secrets ($out)"
fi
if canI list nodes --as "system:serviceaccount:$ns:kmosix-agent"; [ "$out" = no ]; then
  ok "the agent's ServiceAccount has no Kubernetes API rights"
else
  fail "the agent's ServiceAccount can list nodes ($out)"
fi
if run h upgrade kmosix "$chart" -n "$ns" --no-hooks --set agent.logLevel=debug; then
  ok "helm upgrade --set agent.logLevel=debug"
else
  fail "helm upgrade" "$out"
fi
if run h upgrade kmosix "$chart" -n "$ns" --no-hooks --set etcd.embedded.replicas=3; then
  fail "helm upgrade to 3 etcd members was accepted (the chart does not add members)"
elif grep -q "etcd.embedded.replicas cannot change after install" <<<"$out"; then
  ok "helm upgrade refuses a different number of etcd members"
else
  fail "helm upgrade to 3 etcd members: refused without saying why" "$out"
fi
t2=$(token)
if [ -n "$t1" ] && [ "$t1" = "$t2" ]; then ok "helm upgrade keeps the generated tokens"; else fail "helm upgrade changed the generated admin token"; fi
if run kc -n "$ns" get daemonset kmosix-agent -o 'jsonpath={.spec.template.spec.containers[0].args}' &&
  grep -q -- '--log-level=debug' <<<"$out"; then
  ok "the upgrade's value reached the agent DaemonSet"
else
  fail "the upgrade's value is not in the agent DaemonSet" "$out"
fi
if run h uninstall kmosix -n "$ns" --no-hooks --wait=false; then ok "helm uninstall"; else fail "helm uninstall" "$out"; fi
for obj in deployment/kmosix-controller daemonset/kmosix-agent statefulset/kmosix-etcd secret/kmosix-tokens \
  cronjob/kmosix-pki-refresh service/kmosix-controller; do
  if run kc -n "$ns" get "$obj" --ignore-not-found -o name && [ -z "$out" ]; then
    ok "uninstalled: $obj"
  else
    fail "left after uninstall: $obj" "$out"
  fi
done
for obj in clusterrole/kmosix-controller clusterrolebinding/kmosix-controller; do
  if run kc get "$obj" --ignore-not-found -o name && [ -z "$out" ]; then ok "uninstalled: $obj"; else fail "left after uninstall: $obj" "$out"; fi
done
for c in migratableworkloads migrations migrationpolicies; do
  if run kc get "crd/$c.kmosix.io" -o name; then ok "kept after uninstall: crd/$c.kmosix.io"; else fail "CRD $c.kmosix.io deleted by uninstall" "$out"; fi
done

# --- 2. every combination, server-side dry run --------------------------------
if run kc apply -f "$here/testdata/third-party-crds.yaml" &&
  run kc wait --for=condition=Established --timeout=60s -f "$here/testdata/third-party-crds.yaml"; then
  ok "stand-in CRDs for ServiceMonitor and cert-manager"
else
  fail "stand-in CRDs" "$out"
fi
run kc create namespace kmosix
for name in "${COMBO_NAMES[@]}"; do
  # shellcheck disable=SC2046
  if ! run "$helm" template kmosix "$chart" --namespace kmosix $(combo_args "$name"); then
    fail "renders: $name" "$out"
    continue
  fi
  printf '%s\n' "$out" >"$tmp/$name.yaml"
  n=$(grep -c '^kind: ' "$tmp/$name.yaml")
  if run kc apply --dry-run=server -n kmosix -f "$tmp/$name.yaml"; then
    ok "server-side dry run: $name ($n objects)"
  else
    fail "server-side dry run: $name" "$out"
  fi
done

if run kc api-resources --api-group=certificates.k8s.io -o name && grep -q podcertificaterequests <<<"$out"; then
  echo "note: this API server serves podcertificaterequests.certificates.k8s.io (per-node agent certificates, see the chart README)"
fi

if [ "$failures" -gt 0 ]; then
  echo "dry_run.sh: $failures check(s) FAILED" >&2
  exit 1
fi
echo "dry_run.sh: all checks passed"
