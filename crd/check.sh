#!/usr/bin/env bash
# Proves the kmosix.io CRDs behave on a real kube-apiserver:
#   crd/check.sh BIN_DIR KUBECONFIG
# BIN_DIR holds kubectl (the one built by scripts/kube-tools; the server's
# version); KUBECONFIG reaches a cluster-admin. Meant for a scratch API server
# (a test's private one): it applies crd/*.yaml (create or update), works in a
# namespace of its own (deleted at the end) and creates, then deletes, the
# cluster-scoped MigrationPolicy of crd/examples/policy.yaml.
#
# Checks, in order: the CRDs apply and become Established; every example in
# crd/examples/ applies; every object in crd/examples/invalid/ is refused with
# the message its "# expect:" line names; defaults; image, command, env and a
# Migration's spec, restartPolicy and checkpointIntervalSeconds are immutable
# while pinned, nodeName and migratable change;
# the status subresource (spec writes ignore status, status writes keep spec
# and generation, an unknown phase is refused); printer columns, short names,
# categories kmosix and all, field selectors, kubectl explain.
# Exits 0 when all hold; otherwise prints each surprise and exits 1 (2 on bad
# usage or an unreachable server).
set -uo pipefail

if [ $# -ne 2 ] || [ ! -x "$1/kubectl" ] || [ ! -r "$2" ]; then
  echo "usage: $0 BIN_DIR KUBECONFIG   (BIN_DIR/kubectl must exist, KUBECONFIG be readable)" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
k() { "$1/kubectl" --kubeconfig "$2" --request-timeout=30s "${@:3}"; }
bin=$1 kubeconfig=$2
kc() { k "$bin" "$kubeconfig" "$@"; }
ns=kmosix-crd-check-$$
failures=0
out=""

say() { printf '%s\n' "$*"; }
fail() {
  failures=$((failures + 1))
  printf 'FAIL: %s\n' "$1" >&2
  [ -n "${2:-}" ] && printf '%s\n' "$2" | sed 's/^/    | /' >&2
}
# run CMD...: runs kubectl, keeps its combined output in $out, returns its status.
run() { out=$(kc "$@" 2>&1); }
# ok WHAT CMD...: the kubectl command must succeed.
ok() {
  local what=$1; shift
  if run "$@"; then say "ok: $what"; else fail "$what: kubectl $* failed" "$out"; fi
}
# refused WHAT EXPECT CMD...: the command must fail and its output contain EXPECT.
refused() {
  local what=$1 expect=$2; shift 2
  if run "$@"; then
    fail "$what: the API server ACCEPTED it (kubectl $*)" "$out"
  elif ! grep -qF -- "$expect" <<<"$out"; then
    fail "$what: refused, but without \"$expect\"" "$out"
  else
    say "ok: refused: $what"
  fi
}
# equals WHAT WANT CMD...: the command's output must be exactly WANT.
equals() {
  local what=$1 want=$2; shift 2
  if ! run "$@"; then
    fail "$what: kubectl $* failed" "$out"
  elif [ "$out" != "$want" ]; then
    fail "$what: got \"$out\", want \"$want\""
  else
    say "ok: $what"
  fi
}
# contains WHAT NEEDLE CMD...: the command must succeed and print NEEDLE.
contains() {
  local what=$1 needle=$2; shift 2
  if ! run "$@"; then
    fail "$what: kubectl $* failed" "$out"
  elif ! grep -qE -- "$needle" <<<"$out"; then
    fail "$what: no match for /$needle/ in the output of kubectl $*" "$out"
  else
    say "ok: $what"
  fi
}

cleanup() {
  # Objects first: without kube-controller-manager (a bare test API server)
  # nothing empties a deleted namespace, which then stays Terminating.
  kc delete -n "$ns" migratableworkloads.kmosix.io,migrations.kmosix.io --all --wait=false >/dev/null 2>&1
  kc delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1
  kc delete -f "$here/examples/policy.yaml" --ignore-not-found >/dev/null 2>&1
}
trap cleanup EXIT

if ! run version; then
  echo "check.sh: cannot reach the API server with $kubeconfig:" >&2
  printf '%s\n' "$out" >&2
  exit 2
fi
say "kubectl and server: $(tr '\n' ' ' <<<"$out")"

# --- the CRDs ---------------------------------------------------------------
crds=(migratableworkloads.kmosix.io migrations.kmosix.io migrationpolicies.kmosix.io)
if ! run apply -f "$here/kmosix.io_migratableworkloads.yaml" -f "$here/kmosix.io_migrations.yaml" \
  -f "$here/kmosix.io_migrationpolicies.yaml"; then
  fail "the CRDs do not apply" "$out"
  exit 1
fi
say "ok: CRDs applied"
if ! run wait --for=condition=Established --timeout=60s "${crds[@]/#/crd/}"; then
  fail "the CRDs did not become Established" "$out"
  exit 1
fi
say "ok: CRDs Established"
for c in "${crds[@]}"; do
  equals "$c has no NonStructuralSchema condition" "" \
    get crd "$c" -o 'jsonpath={.status.conditions[?(@.type=="NonStructuralSchema")].message}'
done
# Discovery catches up with a new CRD a moment after Established; wait for
# it (bounded) so the short names and categories below resolve.
for _ in $(seq 1 60); do
  run get mw,mig,mpol -A >/dev/null && break
  sleep 1
done
ok "discovery knows mw, mig and mpol" get mw,mig,mpol -A
ok "namespace $ns" create namespace "$ns"

# --- valid examples ------------------------------------------------------------
for f in "$here"/examples/*.yaml; do
  ok "applies: examples/$(basename "$f")" apply -n "$ns" -f "$f"
done

for f in "$here"/examples/*.yaml; do
  contains "re-applying examples/$(basename "$f") changes nothing" ' unchanged$' apply -n "$ns" -f "$f"
  ok "server-side apply (dry run) of examples/$(basename "$f")" \
    apply -n "$ns" --server-side --force-conflicts --dry-run=server -f "$f"
done

# --- invalid examples: each refused, with its message --------------------------
shopt -s nullglob
invalid=("$here"/examples/invalid/*.yaml)
[ ${#invalid[@]} -gt 0 ] || fail "no files in crd/examples/invalid"
for f in "${invalid[@]}"; do
  expect=$(sed -n 's/^# expect: //p' "$f" | head -1)
  if [ -z "$expect" ]; then
    fail "examples/invalid/$(basename "$f") has no '# expect: MESSAGE' line"
    continue
  fi
  refused "examples/invalid/$(basename "$f")" "$expect" apply -n "$ns" -f "$f"
done

# --- defaults ------------------------------------------------------------------
equals "spec.migratable defaults to true" "true" get mw counter -n "$ns" -o 'jsonpath={.spec.migratable}'
equals "spec.pinned defaults to false" "false" get mw counter -n "$ns" -o 'jsonpath={.spec.pinned}'
equals "spec.restartPolicy defaults to Never" "Never" get mw counter -n "$ns" -o 'jsonpath={.spec.restartPolicy}'

# --- immutability --------------------------------------------------------------
mw=(-n "$ns" mw counter)
refused "changing spec.image" "spec.image is immutable" \
  patch "${mw[@]}" --type merge -p '{"spec":{"image":"kmosix.local/other:latest"}}'
refused "changing spec.command" "spec.command is immutable" \
  patch "${mw[@]}" --type merge -p '{"spec":{"command":["/bin/kmosix-demo","--mem","128"]}}'
refused "removing spec.command" "spec.command is immutable" \
  patch "${mw[@]}" --type json -p '[{"op":"remove","path":"/spec/command"}]'
refused "adding to spec.env" "spec.env is immutable" \
  patch "${mw[@]}" --type json -p '[{"op":"add","path":"/spec/env/-","value":{"name":"X","value":"1"}}]'
refused "changing an env value" "spec.env is immutable" \
  patch "${mw[@]}" --type json -p '[{"op":"replace","path":"/spec/env/0/value","value":"250"}]'
refused "removing spec.env" "spec.env is immutable" \
  patch "${mw[@]}" --type json -p '[{"op":"remove","path":"/spec/env"}]'
refused "changing spec.restartPolicy" "spec.restartPolicy is immutable" \
  patch "${mw[@]}" --type merge -p '{"spec":{"restartPolicy":"FromImage"}}'
ok "restartPolicy FromCheckpoint with checkpointIntervalSeconds at creation" create -n "$ns" -f - <<'EOF'
apiVersion: kmosix.io/v1alpha1
kind: MigratableWorkload
metadata: {name: checkpointed}
spec:
  image: kmosix.local/demo:latest
  restartPolicy: FromCheckpoint
  checkpointIntervalSeconds: 60
EOF
refused "changing spec.checkpointIntervalSeconds" "spec.checkpointIntervalSeconds is immutable" \
  patch -n "$ns" mw checkpointed --type merge -p '{"spec":{"checkpointIntervalSeconds":30}}'
ok "pinning a created workload without nodeName (pins it where it runs)" \
  patch "${mw[@]}" --type merge -p '{"spec":{"pinned":true}}'
ok "changing spec.nodeName" patch "${mw[@]}" --type merge -p '{"spec":{"nodeName":"node2"}}'
ok "unpinning and setting migratable=false" \
  patch "${mw[@]}" --type merge -p '{"spec":{"pinned":false,"migratable":false}}'
ok "changing spec.resources" patch "${mw[@]}" --type merge -p '{"spec":{"resources":{"cpu":"1"}}}'
ok "pinned with nodeName at creation" create -n "$ns" -f - <<'EOF'
apiVersion: kmosix.io/v1alpha1
kind: MigratableWorkload
metadata: {name: pinned-here}
spec:
  image: kmosix.local/demo:latest
  nodeName: node1
  pinned: true
  env: [{name: A, value: "1"}, {name: B, value: "2"}]
EOF
ok "reordering spec.env (a list map: the same set)" patch -n "$ns" mw pinned-here --type merge \
  -p '{"spec":{"env":[{"name":"B","value":"2"},{"name":"A","value":"1"}]}}'
ok "removing nodeName of a pinned workload after creation" patch -n "$ns" mw pinned-here --type json \
  -p '[{"op":"remove","path":"/spec/nodeName"}]'
equals "spec.image unchanged after the refused writes" "kmosix.local/demo:latest" \
  get "${mw[@]}" -o 'jsonpath={.spec.image}'
refused "changing a Migration's targetNode" "spec is immutable" \
  patch -n "$ns" mig counter-to-node2 --type merge -p '{"spec":{"targetNode":"node3"}}'
refused "removing a Migration's targetNode" "spec is immutable" \
  patch -n "$ns" mig counter-to-node2 --type json -p '[{"op":"remove","path":"/spec/targetNode"}]'
ok "changing a MigrationPolicy" patch mpol counters --type merge -p '{"spec":{"stabilityFactor":2}}'

# --- status subresource --------------------------------------------------------
gen=$(kc get "${mw[@]}" -o 'jsonpath={.metadata.generation}')
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
mw_status='{"status":{"observedGeneration":'"$gen"',"phase":"Running","node":"node2","epoch":3,
  "migrations":1,"restarts":2,"workload":"'"$ns"'.counter","startTime":"'"$now"'","message":"",
  "conditions":[{"type":"Accepted","status":"True","reason":"Valid","message":"",
                 "lastTransitionTime":"'"$now"'","observedGeneration":'"$gen"'},
                {"type":"Running","status":"True","reason":"Started","message":"pid 42",
                 "lastTransitionTime":"'"$now"'","observedGeneration":'"$gen"'}]}}'
ok "status write through the status subresource" \
  patch "${mw[@]}" --subresource=status --type merge -p "$mw_status"
equals "a status write keeps metadata.generation" "$gen" get "${mw[@]}" -o 'jsonpath={.metadata.generation}'
equals "status.restarts is kept (in the schema, not pruned)" "2" \
  get "${mw[@]}" -o 'jsonpath={.status.restarts}'
refused "a negative status.restarts" "status.restarts" \
  patch "${mw[@]}" --subresource=status --type merge -p '{"status":{"restarts":-1}}'
ok "a spec write carrying status" patch "${mw[@]}" --type merge -p '{"status":{"phase":"Failed"}}'
equals "a write to the main resource leaves status alone" "Running" \
  get "${mw[@]}" -o 'jsonpath={.status.phase}'
refused "an unknown status.phase" 'Unsupported value: "Sleeping"' \
  patch "${mw[@]}" --subresource=status --type merge -p '{"status":{"phase":"Sleeping"}}'
refused "a condition without reason" "reason: Required value" \
  patch "${mw[@]}" --subresource=status --type merge \
  -p '{"status":{"conditions":[{"type":"Placed","status":"True","message":"","lastTransitionTime":"'"$now"'"}]}}'
mig_status='{"status":{"observedGeneration":1,"phase":"Succeeded","id":"m-0001","sourceNode":"node1",
  "targetNode":"node2","reason":"requested by user","downtimeSeconds":0.412,"bytes":71303168,
  "startTime":"'"$now"'","completionTime":"'"$now"'",
  "fault":{"kind":"TargetUnreachable","phase":"Committing","node":"node2","message":"commit: reset"},
  "resolution":{"outcome":"Committed","decidedBy":"Target"},
  "conditions":[{"type":"Succeeded","status":"True","reason":"Succeeded","message":"",
                 "lastTransitionTime":"'"$now"'","observedGeneration":1}]}}'
ok "Migration status write" patch -n "$ns" mig counter-to-node2 --subresource=status --type merge -p "$mig_status"
refused "a Migration phase outside the REST phases" 'Unsupported value: "Done"' \
  patch -n "$ns" mig counter-to-node2 --subresource=status --type merge -p '{"status":{"phase":"Done"}}'
refused "a Migration fault kind outside the model's" 'Unsupported value: "Gremlins"' \
  patch -n "$ns" mig counter-to-node2 --subresource=status --type merge \
  -p '{"status":{"fault":{"kind":"Gremlins","phase":"Committing"}}}'
refused "a Migration outcome outside the model's" 'Unsupported value: "Vanished"' \
  patch -n "$ns" mig counter-to-node2 --subresource=status --type merge \
  -p '{"status":{"resolution":{"outcome":"Vanished","decidedBy":"Target"}}}'
ok "MigrationPolicy status write" patch mpol counters --subresource=status --type merge \
  -p '{"status":{"observedGeneration":2,"matchedWorkloads":1}}'

# --- printer columns, names, categories, selectors, explain -------------------
contains "kubectl get mw columns" '^NAME +NODE +PHASE +MOVES +AGE$' get -n "$ns" mw
contains "kubectl get mw row" '^counter +node2 +Running +1 ' get -n "$ns" mw
contains "kubectl get mw -o wide columns" '^NAME +NODE +PHASE +MOVES +PINNED +EPOCH +WORKLOAD +AGE$' \
  get -n "$ns" mw -o wide
contains "kubectl get mig columns" '^NAME +WORKLOAD +SOURCE +TARGET +PHASE +DOWNTIME +AGE$' get -n "$ns" mig
contains "kubectl get mig row" '^counter-to-node2 +counter +node1 +node2 +Succeeded +0\.412 ' get -n "$ns" mig
contains "kubectl get mig -o wide shows who asked" '^counter-to-node2 .* user +requested by user ' \
  get -n "$ns" mig -o wide
contains "kubectl get mig -o wide shows the fault and the outcome" \
  '^counter-to-node2 .* TargetUnreachable +Committed +user ' get -n "$ns" mig -o wide
contains "kubectl get mpol columns" '^counters +true +1 ' get mpol
contains "short names and full names agree" 'migratableworkload.kmosix.io/counter' \
  get -n "$ns" migratableworkloads.kmosix.io -o name
contains "category kmosix lists MigratableWorkloads" 'migratableworkload.kmosix.io/counter' get -n "$ns" kmosix -o name
contains "category kmosix lists Migrations" 'migration.kmosix.io/counter-to-node2' get -n "$ns" kmosix -o name
contains "category kmosix lists MigrationPolicies" 'migrationpolicy.kmosix.io/counters' get -n "$ns" kmosix -o name
contains "category all lists MigratableWorkloads and Migrations" \
  'migration.kmosix.io/counter-to-node2' get -n "$ns" all -o name
contains "field selector spec.workload on Migrations" 'counter-to-node2' \
  get -n "$ns" mig --field-selector spec.workload=counter -o name
equals "field selector status.node on MigratableWorkloads (no match)" "" \
  get -n "$ns" mw --field-selector status.node=node9 -o name
contains "field selector status.node on MigratableWorkloads" 'counter' \
  get -n "$ns" mw --field-selector status.node=node2 -o name
contains "kubectl explain mw.spec" 'image.*<string> -required-' explain mw.spec
contains "kubectl explain mw.spec.image describes it" 'Required; immutable' explain mw.spec.image
contains "kubectl explain mig.status.phase" 'commit point' explain mig.status.phase
contains "kubectl explain mpol.spec" 'stabilityFactor' explain mpol.spec

# --- delete --------------------------------------------------------------------
ok "delete the examples" delete -n "$ns" -f "$here/examples/counter.yaml" -f "$here/examples/migration.yaml"
ok "delete pinned-here" delete -n "$ns" mw pinned-here
ok "delete checkpointed" delete -n "$ns" mw checkpointed
equals "nothing left in $ns (no invalid object slipped in)" "" get -n "$ns" mw,mig -o name

if [ "$failures" -gt 0 ]; then
  echo "check.sh: $failures check(s) FAILED" >&2
  exit 1
fi
echo "check.sh: all checks passed"
