#!/usr/bin/env bash
# The chart's certificate and etcd-auth Job (charts/kmosix/files/kmosix-pki.sh)
# against a real kube-apiserver and a real etcd (the one on PATH, started here
# with the certificates the Job made):
#   pki_test.sh BIN_DIR KUBECONFIG
# BIN_DIR holds kubectl (the Job's kubectl); the script runs under busybox sh
# when busybox is installed (as in the tools image), else dash/sh.
# Checks: `certs` makes the CA and every identity with the subjects and SANs
# kmosix needs (O=kmosix:controllers, O=kmosix:nodes with CN = node name and
# the node's address, etcd's serving names, etcd's root); a second run keeps
# them all; a node that joins gets its certificate and nobody else is
# reissued; `etcd-auth` on that etcd: a node writes its own node key, not
# another node's key, no workload or migration record until the controller
# (role root too) grants it one, nothing outside the prefix;
# the controller writes the prefix; a second run changes nothing; a node that
# left loses its etcd user (its certificate is refused); `cleanup` removes
# the Secrets.
set -uo pipefail
if [ $# -ne 2 ] || [ ! -x "$1/kubectl" ] || [ ! -r "$2" ]; then
  echo "usage: $0 BIN_DIR KUBECONFIG" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/../.." && pwd)
script=$root/charts/kmosix/files/kmosix-pki.sh
for c in etcd etcdctl openssl; do
  command -v "$c" >/dev/null || { echo "KMOSIX-TEST-SKIPPED: $c not on PATH" >&2; exit 0; }
done
shell=sh
if command -v busybox >/dev/null; then shell="busybox sh"; fi
tmp=$(mktemp -d)
etcd_pid=""
cleanup() {
  [ -n "$etcd_pid" ] && kill "$etcd_pid" 2>/dev/null && wait "$etcd_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
export PATH="$1:$PATH" KUBECONFIG=$2 HOME=$tmp
kc() { kubectl --request-timeout=30s "$@"; }
ns=kmosix-pki-$$
failures=0
out=""
fail() {
  failures=$((failures + 1))
  printf 'FAIL: %s\n' "$1" >&2
  [ -n "${2:-}" ] && printf '%s\n' "$2" | head -30 | sed 's/^/    | /' >&2
}
ok() { printf 'ok: %s\n' "$1"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
eport=$(free_port)
export NAMESPACE=$ns RELEASE=kmosix DAYS=365 RENEW_DAYS=30 NODE_SELECTOR=kmosix-pki-test=$$ EXTRA_NODES=""
export SECRET_LABELS=app.kubernetes.io/instance=kmosix,app.kubernetes.io/name=kmosix
export CA_SECRET=kmosix-ca CA_KEY_SECRET=kmosix-ca-key CONTROLLER_SECRET=kmosix-controller-tls ETCD_SECRET=kmosix-etcd-tls
export ETCD_ROOT_SECRET=kmosix-etcd-root AGENT_SECRET=kmosix-agent-tls
export CONTROLLER_DNS="kmosix-controller kmosix-controller.$ns.svc localhost"
export ETCD_DNS="*.kmosix-etcd.$ns.svc localhost" ETCD_PREFIX=/kmosix/
export ETCD_ENDPOINTS=https://127.0.0.1:$eport ETCD_ROOT_DIR=$tmp/root ETCD_CA_FILE=$tmp/etcd/ca.crt
pki() { out=$($shell "$script" "$@" 2>&1); }
get() { kc -n "$ns" get secret "$1" -o "go-template={{index .data \"$2\" | base64decode}}"; }
node() { # NAME IP: a Node object with the test's label and an InternalIP
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata: {name: $1, labels: {kmosix-pki-test: "$$"}}
status: {addresses: [{type: InternalIP, address: $2}, {type: Hostname, address: $1}]}
EOF
}
subject() { openssl x509 -noout -subject -nameopt compat 2>/dev/null | sed 's/^subject=//'; }
sans() { openssl x509 -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr -d ' '; }

kc create namespace "$ns" >/dev/null || { echo "cannot create namespace $ns" >&2; exit 2; }
node pkitest-a-$$ 10.9.0.11 && node pkitest-b-$$ 10.9.0.12 || { echo "cannot create Node objects" >&2; exit 2; }
a=pkitest-a-$$ b=pkitest-b-$$ c=pkitest-c-$$

# --- certs ----------------------------------------------------------------------
if pki certs; then ok "certs: first run"; else fail "certs: first run" "$out"; fi
got=$(get kmosix-controller-tls tls.crt | subject)
[ "$got" = "/O=kmosix:controllers/CN=kmosix-controller" ] && ok "controller subject $got" || fail "controller subject: $got"
got=$(get kmosix-controller-tls tls.crt | sans)
[ "$got" = "DNS:kmosix-controller,DNS:kmosix-controller.$ns.svc,DNS:localhost,IPAddress:127.0.0.1" ] &&
  ok "controller SANs" || fail "controller SANs: $got"
got=$(get kmosix-agent-tls "$a.crt" | subject)
[ "$got" = "/O=kmosix:nodes/CN=$a" ] && ok "node certificate subject $got" || fail "node certificate subject: $got"
got=$(get kmosix-agent-tls "$a.crt" | sans)
[ "$got" = "DNS:$a,IPAddress:10.9.0.11" ] && ok "node certificate SANs $got" || fail "node certificate SANs: $got"
got=$(get kmosix-etcd-root tls.crt | subject)
[ "$got" = "/O=kmosix/CN=root" ] && ok "etcd root subject" || fail "etcd root subject: $got"
for s in kmosix-controller-tls kmosix-etcd-tls kmosix-etcd-root; do
  get kmosix-ca ca.crt >"$tmp/ca.crt"
  if get "$s" tls.crt | openssl verify -CAfile "$tmp/ca.crt" >/dev/null 2>&1; then ok "$s chains to the CA"; else fail "$s does not chain to the CA"; fi
done
if get kmosix-agent-tls "$b.crt" | openssl verify -CAfile "$tmp/ca.crt" >/dev/null 2>&1; then ok "$b's certificate chains to the CA"; else fail "$b's certificate does not chain to the CA"; fi
got=$(kc -n "$ns" get secret kmosix-ca -o 'go-template={{range $k, $v := .data}}{{$k}} {{end}}')
[ "$got" = "ca.crt " ] && ok "the CA Secret the daemons mount holds only ca.crt" || fail "the CA Secret the daemons mount holds: $got"
[ -n "$(get kmosix-ca-key ca.key)" ] && ok "the CA key is in kmosix-ca-key" || fail "no ca.key in kmosix-ca-key"
got=$(kc -n "$ns" get secret kmosix-ca -o 'jsonpath={.metadata.labels.kmosix\.io/generated-by}')
[ "$got" = kmosix-pki ] && ok "Secrets labelled kmosix.io/generated-by=kmosix-pki" || fail "label: $got"
ann=$(kc -n "$ns" get secret kmosix-ca -o 'jsonpath={.metadata.annotations}')
grep -q last-applied <<<"$ann" && fail "a last-applied annotation copies the CA key into an annotation" || ok "no last-applied annotation (server-side apply)"
before=$(get kmosix-agent-tls "$a.crt" | openssl x509 -noout -serial)
if pki certs && ! grep -q issued <<<"$out"; then ok "certs: a second run issues nothing"; else fail "certs: the second run issued" "$out"; fi
node "$c" 10.9.0.13
if pki certs && grep -q "issued /O=kmosix:nodes/CN=$c" <<<"$out" && [ "$(grep -c issued <<<"$out")" = 1 ]; then
  ok "certs: a node that joined gets its certificate, nobody else is reissued"
else
  fail "certs: after a node joined" "$out"
fi
[ "$(get kmosix-agent-tls "$a.crt" | openssl x509 -noout -serial)" = "$before" ] && ok "$a's certificate kept" || fail "$a's certificate changed"

# --- etcd-auth on a real etcd with the Job's certificates ----------------------------
mkdir -p "$tmp/etcd" "$tmp/root" "$tmp/n"
(umask 077
  get kmosix-etcd-tls tls.crt >"$tmp/etcd/tls.crt"; get kmosix-etcd-tls tls.key >"$tmp/etcd/tls.key"
  get kmosix-ca ca.crt >"$tmp/etcd/ca.crt"
  get kmosix-etcd-root tls.crt >"$tmp/root/tls.crt"; get kmosix-etcd-root tls.key >"$tmp/root/tls.key"
  for n in "$a" "$b" "$c"; do get kmosix-agent-tls "$n.crt" >"$tmp/n/$n.crt"; get kmosix-agent-tls "$n.key" >"$tmp/n/$n.key"; done
  get kmosix-controller-tls tls.crt >"$tmp/n/controller.crt"; get kmosix-controller-tls tls.key >"$tmp/n/controller.key")
etcd --data-dir "$tmp/etcd/data" --listen-client-urls "$ETCD_ENDPOINTS" --advertise-client-urls "$ETCD_ENDPOINTS" \
  --listen-peer-urls "http://127.0.0.1:$(free_port)" --cert-file "$tmp/etcd/tls.crt" --key-file "$tmp/etcd/tls.key" \
  --trusted-ca-file "$tmp/etcd/ca.crt" --client-cert-auth >"$tmp/etcd.log" 2>&1 &
etcd_pid=$!
as() { # WHO etcdctl-args...: etcdctl with WHO's certificate (a node name or controller)
  local who=$1; shift
  ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" --cacert "$tmp/etcd/ca.crt" --cert "$tmp/n/$who.crt" \
    --key "$tmp/n/$who.key" --command-timeout=10s "$@" 2>&1
}
if pki etcd-auth; then ok "etcd-auth: first run (etcd from the Job's etcd certificate)"; else fail "etcd-auth: first run" "$out$(tail -5 "$tmp/etcd.log")"; fi
can() { if out=$(as "$@") && grep -q '^OK$' <<<"$out"; then return 0; fi; return 1; }
can "$a" put /kmosix/nodes/"$a" x && ok "$a writes its node key" || fail "$a cannot write its node key" "$out"
can "$a" put /kmosix/nodes/"$b" x && fail "$a WROTE $b's node key" || ok "$a cannot write $b's node key ($(tail -1 <<<"$out"))"
can "$a" put /kmosix/workloads/w1 x && fail "$a WROTE workloads/ without a grant" || ok "$a cannot write workloads/ ungranted"
can "$a" put /kmosix/migrations/m1 x && fail "$a WROTE migrations/ without a grant" || ok "$a cannot write migrations/ ungranted"
# the controller (role root too) grants a node one record, as its leader does
out=$(as controller role grant-permission "kmosix-node-$a" readwrite /kmosix/workloads/w1) && ok "the controller grants $a a record" || fail "the controller cannot grant a record" "$out"
can "$a" put /kmosix/workloads/w1 x && ok "$a writes its granted record" || fail "$a cannot write its granted record" "$out"
can "$a" put /kmosix/workloads/w2 x && fail "$a WROTE a record not granted" || ok "$a cannot write another record"
can "$a" put /kmosix/leader x && fail "$a WROTE the leader key" || ok "$a cannot write the leader key"
can "$a" put /elsewhere x && fail "$a WROTE outside the prefix" || ok "$a cannot write outside the prefix"
can controller put /kmosix/leader x && ok "the controller writes the prefix" || fail "the controller cannot write the prefix" "$out"
# (the controller has role root too: etcd lets only root change roles, so it
# reaches outside the prefix; the chart's etcd holds nothing else)
if pki etcd-auth; then ok "etcd-auth: a second run"; else fail "etcd-auth: second run" "$out"; fi
can "$a" put /kmosix/nodes/"$a" y && ok "$a still writes its node key" || fail "$a lost its rights on the second run" "$out"
kc delete node "$c" >/dev/null
if pki etcd-auth && grep -q "node $c is gone" <<<"$out"; then ok "etcd-auth: a node that left is removed"; else fail "etcd-auth: after a node left" "$out"; fi
can "$c" put /kmosix/nodes/"$c" x && fail "$c, gone, still WROTE its node key" || ok "$c, gone, is refused ($(tail -1 <<<"$out"))"

# --- cleanup --------------------------------------------------------------------------
if pki cleanup && [ -z "$(kc -n "$ns" get secrets -l kmosix.io/generated-by=kmosix-pki -o name)" ]; then
  ok "cleanup removes the Secrets"
else
  fail "cleanup" "$out"
fi
kc delete node "$a" "$b" --ignore-not-found >/dev/null
kc delete namespace "$ns" --wait=false >/dev/null

if [ "$failures" -gt 0 ]; then
  echo "pki_test.sh: $failures check(s) FAILED" >&2
  exit 1
fi
echo "pki_test.sh: all checks passed (shell: $shell)"
