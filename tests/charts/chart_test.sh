#!/usr/bin/env bash
# Tests of charts/kmosix without a cluster (ctest: LABEL unit):
#   chart_test.sh lint     helm lint --strict, with the default values and with
#                          every combination of switches that renders differently
#   chart_test.sh render   each combination renders, with what it promises
#                          (CRDs kept or absent, etcd members, external etcd,
#                          certificate sources, ServiceMonitor, the agent's pod)
#   chart_test.sh schema   bad values are refused by values.schema.json with a
#                          message naming the value; README.md names every value
#   chart_test.sh drift    scripts/render-deploy --check: files/crds/ is crd/ and
#                          deploy/kmosix/ is the chart's rendering
#   chart_test.sh flags AGENT CONTROLLER
#                          every --flag the chart passes to kmosix-agent and
#                          kmosix-controller (all combinations) is in their --help
# Needs helm: $HELM, else `scripts/kube-tools --print`/helm, else PATH. Without
# it the test FAILS (build it: scripts/kube-tools).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
chart=$root/charts/kmosix
# shellcheck source=tests/charts/combos.sh
. "$root/tests/charts/combos.sh"

helm=${HELM:-}
if [ -z "$helm" ]; then
  tools=$("$root/scripts/kube-tools" --print)
  if [ -x "$tools/helm" ]; then helm=$tools/helm; else helm=$(command -v helm || true); fi
fi
if [ -z "$helm" ] || ! [ -x "$helm" ]; then
  echo "FAIL: helm not found: set HELM, or build it with scripts/kube-tools (into $("$root/scripts/kube-tools" --print))," >&2
  echo "      or: GOBIN=/some/dir go install helm.sh/helm/v4/cmd/helm@v4.3.2 and HELM=/some/dir/helm" >&2
  exit 1
fi
export HELM=$helm

failures=0
out=""
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() {
  failures=$((failures + 1))
  printf 'FAIL: %s\n' "$1" >&2
  [ -n "${2:-}" ] && printf '%s\n' "$2" | head -40 | sed 's/^/    | /' >&2
}
ok() { printf 'ok: %s\n' "$1"; }

# render NAME ARGS...: helm template into $tmp/NAME.yaml; 0 if it rendered.
render() {
  local name=$1; shift
  "$helm" template kmosix "$chart" --namespace kmosix "$@" >"$tmp/$name.yaml" 2>"$tmp/$name.err"
}
# section NAME TEMPLATE: the objects of templates/TEMPLATE in $tmp/NAME.yaml,
# into $tmp/NAME.TEMPLATE; prints that path.
section() {
  awk -v src="# Source: kmosix/templates/$2" '/^# Source: /{on = ($0 == src)} on' "$tmp/$1.yaml" >"$tmp/$1.$2"
  echo "$tmp/$1.$2"
}
# count FILE REGEX: lines of FILE matching REGEX.
count() { grep -cE -- "$2" "$1" || true; }
# expect_count WHAT FILE REGEX N
expect_count() {
  local n; n=$(count "$2" "$3")
  if [ "$n" = "$4" ]; then ok "$1"; else fail "$1: /$3/ matched $n lines, want $4 (in $(basename "$2"))"; fi
}

cmd_lint() {
  if out=$("$helm" lint --strict "$chart" 2>&1); then ok "helm lint --strict (defaults)"; else fail "helm lint --strict (defaults)" "$out"; fi
  local name
  for name in "${COMBO_NAMES[@]}"; do
    # shellcheck disable=SC2086
    if out=$("$helm" lint --strict "$chart" --namespace kmosix $(combo_args "$name") 2>&1); then
      ok "helm lint --strict ($name)"
    else
      fail "helm lint --strict ($name)" "$out"
    fi
  done
}

cmd_render() {
  local name f
  for name in "${COMBO_NAMES[@]}"; do
    # shellcheck disable=SC2086
    if render "$name" $(combo_args "$name"); then ok "renders: $name"; else fail "renders: $name" "$(cat "$tmp/$name.err")"; fi
  done
  f=$tmp/default.yaml
  # CRDs: templates, kept on uninstall, from files/crds (= crd/)
  expect_count "default: 3 CRDs" "$f" '^kind: CustomResourceDefinition$' 3
  expect_count "default: the CRDs are kept on uninstall" "$f" '^    helm.sh/resource-policy: keep$' 3
  for c in migratableworkloads migrations migrationpolicies; do
    expect_count "default: CRD $c.kmosix.io" "$f" "^  name: $c.kmosix.io$" 1
  done
  expect_count "crds-off: no CRD" "$tmp/crds-off.yaml" '^kind: CustomResourceDefinition$' 0
  expect_count "crds-not-kept: CRDs without resource-policy keep" "$tmp/crds-not-kept.yaml" 'helm.sh/resource-policy' 0
  # controller
  expect_count "default: a controller Deployment" "$f" '^kind: Deployment$' 1
  expect_count "default: 2 controller replicas" "$f" '^  replicas: 2$' 1
  expect_count "default: a PodDisruptionBudget for the controllers" "$f" '^kind: PodDisruptionBudget$' 1
  expect_count "default: /readyz readiness probe" "$f" 'path: /readyz' 1
  expect_count "default: /healthz liveness probes (controller, agent)" "$f" 'path: /healthz' 4
  expect_count "default: controller from the in-cluster service account" "$f" '^            - --kube-in-cluster$' 1
  expect_count "default: tokens Secret generated" "$f" '^  tokens.csv: ' 1
  expect_count "default: controller image tag = appVersion" "$f" "image: kmosix.local/kmosix-controller:$(sed -n 's/^appVersion: "\(.*\)"/\1/p' "$chart/Chart.yaml")$" 1
  expect_count "default: controller read-only root filesystem, non-root" "$(section default controller.yaml)" \
    'readOnlyRootFilesystem: true|runAsNonRoot: true' 3
  expect_count "default: a ServiceAccount for each component" "$(section default serviceaccounts.yaml)" \
    '^  name: kmosix-(controller|agent)$' 2
  expect_count "default: the controllers' ClusterRole reads nodes, writes status" "$(section default rbac.yaml)" \
    '^      - (migratableworkloads/status|migratableworkloads/finalizers)$|^    resources: \[nodes\]$' 3
  expect_count "default: the controllers' ClusterRole has no Secrets, no wildcard" "$(section default rbac.yaml)" \
    'secrets|"\*"|\[\*\]' 0
  # agent
  expect_count "default: an agent DaemonSet" "$f" '^kind: DaemonSet$' 1
  expect_count "default: agent privileged" "$f" 'privileged: true' 1
  expect_count "default: agent hostPID" "$f" '^      hostPID: true$' 1
  expect_count "default: agent node name from spec.nodeName" "$f" 'fieldPath: spec.nodeName' 1
  expect_count "default: agent --node from it" "$f" '- --node=\$\(NODE_NAME\)$' 1
  # agent identity: pod certificates from the controllers' node signer
  expect_count "default: agent identity is a pod certificate of kmosix.io/node" "$(section default agent.yaml)" \
    '^              - podCertificate:$|^                  signerName: kmosix.io/node$|^                  keyType: ECDSAP256$|^                  credentialBundlePath: tls.pem$' 4
  expect_count "default: agent serves and reaches etcd with it" "$f" '--(tls|etcd)-(cert|key)=/etc/kmosix/identity/tls.pem$' 4
  expect_count "default: no Secret of node keys" "$f" 'kmosix-agent-tls|/etc/kmosix/nodes' 0
  expect_count "default: the controllers sign for the agents of this namespace" "$(section default controller.yaml)" \
    '--node-signer-(cert|key)=/etc/kmosix/node-issuer/tls\.(crt|key)$|--node-signer-namespace=kmosix$|--node-signer-service-account=kmosix-agent$' 4
  expect_count "default: the controllers may sign for kmosix.io/node only" "$(section default rbac.yaml)" \
    '^    resourceNames: \[kmosix.io/node\]$|^    resources: \[podcertificaterequests/status\]$' 2
  expect_count "default: the controllers read pods of their namespace only" "$(section default rbac.yaml)" \
    '^kind: Role$|^    resources: \[pods\]$' 2
  expect_count "default: the pki Jobs know the node issuer" "$f" 'value: "kmosix-node-issuer"\}$' 4
  expect_count "agent-secrets: agent certificate named after the node" "$tmp/agent-secrets.yaml" '--tls-cert=/etc/kmosix/nodes/\$\(NODE_NAME\)\.crt' 1
  expect_count "agent-secrets: no signer" "$tmp/agent-secrets.yaml" 'node-signer|podCertificate|podcertificaterequests' 0
  expect_count "default: agent rolls one node at a time" "$(section default agent.yaml)" '^      maxUnavailable: 1$' 1
  expect_count "default: no pod mounts the CA key's Secret" "$f" '^ *(secretName|name): kmosix-ca-key$' 0
  expect_count "default: only the pki Jobs know the CA key's Secret" "$f" 'value: kmosix-ca-key\}$' 4
  expect_count "default: agent mounts the node's containerd" "$f" 'path: /run/containerd$' 1
  expect_count "default: agent has no Kubernetes API token" "$f" 'automountServiceAccountToken: false' 3
  # etcd
  expect_count "default: one etcd StatefulSet" "$f" '^kind: StatefulSet$' 1
  expect_count "default: 1 etcd member" "$f" '--initial-cluster=kmosix-etcd-0=https://[^,]*$' 1
  expect_count "default: etcd requires client certificates" "$f" '- --client-cert-auth$' 1
  expect_count "etcd-3: 3 members" "$tmp/etcd-3.yaml" '--initial-cluster=kmosix-etcd-0=https://[^,]*,kmosix-etcd-1=https://[^,]*,kmosix-etcd-2=https://[^,]*$' 1
  expect_count "etcd-3: an etcd PodDisruptionBudget" "$tmp/etcd-3.yaml" '^kind: PodDisruptionBudget$' 2
  expect_count "etcd-3: controllers and agents get the 3 endpoints" "$tmp/etcd-3.yaml" '--etcd=https://kmosix-etcd-0\.[^,]*,https://kmosix-etcd-1\.[^,]*,https://kmosix-etcd-2\.' 2
  expect_count "etcd-external: no StatefulSet" "$tmp/etcd-external.yaml" '^kind: StatefulSet$' 0
  expect_count "etcd-external: the given endpoints" "$tmp/etcd-external.yaml" '--etcd=https://etcd-a.example:2379,https://etcd-b.example:2379$' 2
  expect_count "etcd-external: no etcd-auth Job" "$tmp/etcd-external.yaml" 'name: kmosix-etcd-auth$' 0
  # a hook Job with its ServiceAccount, ClusterRole and binding (+ Role and binding for Secrets)
  expect_count "default: etcd-auth Job after install and upgrade" "$f" 'helm.sh/hook: post-install,post-upgrade' 4
  # certificates
  expect_count "default: the certificates Job before install and upgrade" "$f" 'helm.sh/hook: pre-install,pre-upgrade' 6
  expect_count "default: the generated Secrets are removed at uninstall" "$f" 'helm.sh/hook: pre-delete' 6
  expect_count "default: the refresh CronJob" "$f" '^kind: CronJob$' 1
  expect_count "certmanager: no certificates Job" "$tmp/certmanager.yaml" 'helm.sh/hook: pre-install' 0
  # the CA, the controllers, etcd, etcd's root and the node issuer
  expect_count "certmanager: Certificates with organizations" "$tmp/certmanager.yaml" '^kind: Certificate$' 5
  expect_count "certmanager: a node issuer CA, no node certificates" "$tmp/certmanager.yaml" \
    '^  name: kmosix-node-issuer$|^  commonName: node[12]$' 1
  expect_count "certmanager: the controllers' organization" "$tmp/certmanager.yaml" 'organizations: \["kmosix:controllers"\]' 1
  expect_count "certmanager: self-signed root and CA Issuer" "$tmp/certmanager.yaml" '^kind: Issuer$' 2
  # the CA, the controllers, etcd, etcd's root, node1 and node2
  expect_count "certmanager-agent-secrets: Certificates" "$tmp/certmanager-agent-secrets.yaml" '^kind: Certificate$' 6
  expect_count "certmanager-agent-secrets: node certificates for the listed nodes" "$tmp/certmanager-agent-secrets.yaml" '^  commonName: node[12]$' 2
  expect_count "certmanager-agent-secrets: the nodes' organization" "$tmp/certmanager-agent-secrets.yaml" 'organizations: \["kmosix:nodes"\]' 2
  # the controllers, etcd and the node issuer (etcd auth off: no root)
  expect_count "certmanager-issuer: the given ClusterIssuer" "$tmp/certmanager-issuer.yaml" '^    kind: ClusterIssuer$' 3
  expect_count "certmanager-issuer: no Issuer of its own" "$tmp/certmanager-issuer.yaml" '^kind: Issuer$' 0
  expect_count "existing: no certificates Job" "$tmp/existing.yaml" 'helm.sh/hook: pre-install' 0
  expect_count "existing: the given controller Secret" "$tmp/existing.yaml" 'name: my-controller-tls$' 1
  expect_count "existing: the given node issuer Secret" "$tmp/existing.yaml" 'secretName: my-node-issuer$' 1
  expect_count "existing-agent-secrets: the given agents Secret" "$tmp/existing-agent-secrets.yaml" 'secretName: my-agent-tls$' 1
  expect_count "existing: the given tokens, none generated" "$tmp/existing.yaml" '^  tokens.csv: ' 0
  # CRIU
  expect_count "default: no CRIU installer, no --criu-path" "$f" 'criu-install|--criu-path' 0
  expect_count "criu-install: the init container writes hostDir only" "$tmp/criu-install.yaml" \
    '^              dst=/host/opt/kmosix/criu$|^            path: /opt/kmosix$|^              mountPath: /host/opt/kmosix$' 3
  expect_count "criu-install: the agent runs the installed criu" "$tmp/criu-install.yaml" '- --criu-path=/opt/kmosix/criu/criu$' 1
  # metrics
  expect_count "default: no ServiceMonitor" "$f" '^kind: ServiceMonitor$' 0
  expect_count "servicemonitor: a ServiceMonitor" "$tmp/servicemonitor.yaml" '^kind: ServiceMonitor$' 1
  # a user's value reaches the pods
  expect_count "tuned: agent tolerations" "$tmp/tuned.yaml" 'key: dedicated' 1
  expect_count "tuned: priorityClassName" "$tmp/tuned.yaml" 'priorityClassName: system-node-critical' 1
  # NOTES.txt: how to reach the API and read the token
  if out=$("$helm" install kmosix "$chart" --namespace kmosix --dry-run=client 2>&1) &&
    grep -qF "port-forward svc/kmosix-controller 7800:7800" <<<"$out" &&
    grep -qF "get secret kmosix-tokens -o jsonpath='{.data.admin-token}'" <<<"$out" &&
    grep -qF "get secret kmosix-ca -o jsonpath='{.data.ca\.crt}'" <<<"$out"; then
    ok "NOTES.txt: port-forward, the CA and the admin token"
  else
    fail "NOTES.txt does not say how to reach the API and read the token" "$(sed -n '/^NOTES:/,$p' <<<"$out")"
  fi
  # an unset required value is named
  if render missing-endpoints --set etcd.mode=external --set etcd.external.caSecret=x; then
    fail "etcd.mode=external without endpoints renders"
  elif grep -q "etcd.external.endpoints" "$tmp/missing-endpoints.err"; then
    ok "etcd.mode=external without endpoints is refused, naming etcd.external.endpoints"
  else
    fail "etcd.mode=external without endpoints: refused without naming the value" "$(cat "$tmp/missing-endpoints.err")"
  fi
}

# refused WHAT NEEDLE ARGS...: rendering with ARGS fails, naming NEEDLE.
refused() {
  local what=$1 needle=$2; shift 2
  if render refused "$@"; then
    fail "$what: ACCEPTED ($*)"
  elif grep -qF -- "$needle" "$tmp/refused.err"; then
    ok "refused: $what ($(grep -m1 -F -- "$needle" "$tmp/refused.err" | cut -c1-160))"
  else
    fail "$what: refused without naming \"$needle\"" "$(cat "$tmp/refused.err")"
  fi
}

cmd_schema() {
  refused "controller.replicas -1" "replicas" --set controller.replicas=-1
  refused "controller.replicas 0" "replicas" --set controller.replicas=0
  refused "an unknown top-level key" "contorller" --set contorller.replicas=2
  refused "an unknown nested key" "replica" --set controller.replica=2
  refused "controller.replicas a string" "replicas" --set-string controller.replicas=two
  refused "agent.port 70000" "port" --set agent.port=70000
  refused "etcd.embedded.replicas 2 (no quorum gain)" "replicas" --set etcd.embedded.replicas=2
  refused "etcd.mode bogus" "mode" --set etcd.mode=bogus
  refused "certificates.source bogus" "source" --set certificates.source=vault
  refused "crds.install a string" "install" --set-string crds.install=yes
  refused "controller.image.pullPolicy bogus" "pullPolicy" --set controller.image.pullPolicy=Sometimes
  refused "controller.image.digest not sha256" "digest" --set controller.image.digest=md5:abc
  refused "agent.workloadNetwork.cidr bogus" "cidr" --set agent.workloadNetwork.cidr=10.0.0.0
  refused "etcd.external.endpoints http://" "endpoints" --set etcd.mode=external \
    --set 'etcd.external.endpoints={http://etcd:2379}' --set etcd.external.caSecret=ca
  refused "agent.stateDir relative" "stateDir" --set agent.stateDir=var/lib/kmosix
  refused "controller.balancer.stability 0.5 (--set-json)" "stability" --set-json controller.balancer.stability=0.5
  refused "controller.balancer.stability 0.5 (--set: a string)" "stability" --set controller.balancer.stability=0.5
  refused "controller.balancer.stability 11" "stability" --set controller.balancer.stability=11
  refused "an unknown key in tolerations" "tolerations" --set 'agent.tolerations[0].keyy=x'
  refused "existingSecret source without the Secrets" "existingSecret" --set certificates.source=existingSecret
  if out=$(python3 "$root/tests/charts/readme_keys.py" "$chart/values.schema.json" "$chart/README.md" 2>&1); then
    ok "$out"
  else
    fail "charts/kmosix/README.md does not describe every value" "$out"
  fi
}

# flags AGENT CONTROLLER: every --flag the chart gives kmosix-agent and
# kmosix-controller, in every combination, is one the binary knows (--help).
cmd_flags() {
  local agent=${1:-} controller=${2:-} name bin comp flags known flag
  if ! [ -x "$agent" ] || ! [ -x "$controller" ]; then
    fail "flags: usage: chart_test.sh flags KMOSIX_AGENT KMOSIX_CONTROLLER (built binaries)"
    return
  fi
  for comp in agent controller; do
    bin=$agent; [ "$comp" = controller ] && bin=$controller
    known=$("$bin" --help 2>&1 | grep -oE -- '--[a-z][a-z0-9-]*' | sort -u)
    for name in "${COMBO_NAMES[@]}"; do
      # shellcheck disable=SC2046
      render "flags-$name" $(combo_args "$name") || { fail "renders: $name"; continue; }
      flags=$(awk -v src="# Source: kmosix/templates/$comp.yaml" '/^# Source: /{on = ($0 == src)} on' \
        "$tmp/flags-$name.yaml" | sed -n 's/^ *- "\{0,1\}\(--[a-z][a-z0-9-]*\).*/\1/p' | sort -u)
      [ -n "$flags" ] || { fail "$name: no flags found for kmosix-$comp"; continue; }
      for flag in $flags; do
        grep -qx -- "$flag" <<<"$known" || fail "$name: kmosix-$comp does not know $flag ($bin --help)"
      done
    done
    ok "every flag the chart gives kmosix-$comp is in its --help ($(wc -w <<<"$known") flags known)"
  done
}

cmd_drift() {
  if out=$("$root/scripts/render-deploy" --check 2>&1); then
    ok "$out"
  else
    fail "deploy/ or the chart's CRDs drifted (scripts/render-deploy)" "$out"
  fi
}

case "${1:-}" in
  lint) cmd_lint ;;
  render) cmd_render ;;
  schema) cmd_schema ;;
  drift) cmd_drift ;;
  flags) cmd_flags "${2:-}" "${3:-}" ;;
  *) echo "usage: $0 lint|render|schema|drift|flags AGENT CONTROLLER" >&2; exit 2 ;;
esac
if [ "$failures" -gt 0 ]; then
  echo "chart_test.sh $1: $failures check(s) FAILED (helm: $helm)" >&2
  exit 1
fi
echo "chart_test.sh $1: all checks passed (helm: $helm)"
