#!/usr/bin/env bash
# scripts/cluster's etcd identities and roles, checked against a real etcd:
# the script is sourced (its functions only) with a state dir of its own and
# SUBNET 127.0.0, so etcd listens on 127.0.0.1 and nothing of the local
# cluster (bridge, namespaces, 10.77.0.x, /run/kmosix-cluster) is touched; it
# may run while a cluster is up.
#
#   etcd_prefix_norm             adds the slashes, refuses what is not a prefix
#   make_pki NODES CONTROLLERS   one certificate per controller replica
#                                (CN=controller<j>, O=kmosix:controllers),
#                                kept while valid, remade when missing
#   setup_etcd_auth              with a custom prefix P (not /kmosix/):
#     users root, controller1, controller2, node1, node2, no shared one;
#     each controller reads and writes P (the leader key) and holds etcd's
#     root role (it grants the nodes their records; root reaches outside P);
#     node1 reads P, writes P/nodes/node1 (not node2's key, nor node10's),
#     no workload or migration record until granted exactly that key (then
#     that key only, not node2), not P/leader, not /kmosix/ at all.
#
# Needs etcd, etcdctl, openssl, curl, python3 on PATH; otherwise it says
# KMOSIX-TEST-SKIPPED and why (ctest reports it as skipped). Exit 0: every
# check held; 1: at least one failed (each failure printed).
set -u
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

for c in etcd etcdctl openssl curl python3 setsid; do
  if ! command -v "$c" >/dev/null; then
    echo "KMOSIX-TEST-SKIPPED: $c not on PATH (scripts/cluster's etcd auth cannot be checked)"
    exit 0
  fi
done

tmp=$(mktemp -d /tmp/kmx-cluster-etcd-auth.XXXXXX) || exit 1
prefix=/kmx-test/custom/
export KMOSIX_CLUSTER_DIR=$tmp/state KMOSIX_CLUSTER_DATA=$tmp/data KMOSIX_CLUSTER_SUBNET=127.0.0
export KMOSIX_CLUSTER_ETCD_PREFIX=$prefix
# shellcheck source=../../scripts/cluster
. "$repo/scripts/cluster" || { echo "cannot source scripts/cluster"; exit 1; }
set +o pipefail

cleanup() {
  local pid
  if pid=$(recorded_alive "$STATE/etcd.pid"); then kill_wait "$pid" 5; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

# --- etcd_prefix_norm --------------------------------------------------------
[ "$(etcd_prefix_norm kmx)" = /kmx/ ] && pass "kmx -> /kmx/" || fail "etcd_prefix_norm kmx: '$(etcd_prefix_norm kmx)'"
[ "$(etcd_prefix_norm /a/b)" = /a/b/ ] && pass "/a/b -> /a/b/" || fail "etcd_prefix_norm /a/b"
[ "$(etcd_prefix_norm /kmosix/)" = /kmosix/ ] && pass "/kmosix/ kept" || fail "etcd_prefix_norm /kmosix/"
for bad in / "" "/a b/" "/a//b/" '/$x/' "/a*/"; do
  if etcd_prefix_norm "$bad" >/dev/null; then fail "etcd_prefix_norm accepted '$bad'"; else pass "refused '$bad'"; fi
done

# --- the certificates ----------------------------------------------------------
mkdir -p "$STATE" "$DATA/logs"
make_pki 2 2 2>/dev/null
d=$STATE/pki
subject() { openssl x509 -in "$1" -noout -subject -nameopt compat 2>/dev/null | sed 's/^subject=//'; }
fingerprint() { openssl x509 -in "$1" -noout -fingerprint -sha256 2>/dev/null; }
for j in 1 2; do
  got=$(subject "$d/controller$j.crt")
  [ "$got" = "/O=kmosix:controllers/CN=controller$j" ] && pass "controller$j: $got" ||
    fail "controller$j's subject is '$got'"
  cert_ok "$d/controller$j.crt" "$d/controller$j.key" "$SUBNET.1" serverAuth,clientAuth &&
    pass "controller$j: the CA's, serverAuth+clientAuth, SAN $SUBNET.1" || fail "controller$j's certificate is not usable"
done
[ -e "$d/controller.crt" ] && fail "a shared pki/controller.crt was made"
[ "$(openssl pkey -in "$d/controller1.key" -pubout 2>/dev/null)" != "$(openssl pkey -in "$d/controller2.key" -pubout 2>/dev/null)" ] &&
  pass "controller1 and controller2 have different keys" || fail "controller1 and controller2 share a key"
f1=$(fingerprint "$d/controller1.crt")
f2=$(fingerprint "$d/controller2.crt")
make_pki 2 2 2>/dev/null
[ "$(fingerprint "$d/controller1.crt")" = "$f1" ] && [ "$(fingerprint "$d/controller2.crt")" = "$f2" ] &&
  pass "make_pki again keeps valid controller certificates" || fail "make_pki remade a valid controller certificate"
rm -f "$d/controller2.key"
controller_cert 2 2>/dev/null
[ "$(fingerprint "$d/controller1.crt")" = "$f1" ] && pass "controller_cert 2 left controller1 alone" ||
  fail "controller_cert 2 changed controller1"
[ "$(fingerprint "$d/controller2.crt")" != "$f2" ] &&
  cert_ok "$d/controller2.crt" "$d/controller2.key" "$SUBNET.1" serverAuth,clientAuth &&
  subject_is "$d/controller2.crt" "/O=kmosix:controllers/CN=controller2" &&
  pass "controller_cert 2 remade its missing key's certificate" || fail "controller2 was not remade"

# --- etcd with the script's users and roles, under a custom prefix -----------
ETCD_TLS=1
ETCD_PORT=$(free_port) && ETCD_PEER_PORT=$(free_port) || { echo "no free port"; exit 1; }
while [ "$ETCD_PEER_PORT" = "$ETCD_PORT" ]; do ETCD_PEER_PORT=$(free_port); done
ETCD_BIN=$(command -v etcd)
[ "$ETCD_PREFIX" = "$prefix" ] || fail "KMOSIX_CLUSTER_ETCD_PREFIX was not taken: $ETCD_PREFIX"
if ! spawn_etcd 30; then
  echo "etcd did not start:"; tail -n 30 "$DATA/logs/etcd.log"; exit 1
fi
if ! setup_etcd_auth 2 2; then
  echo "setup_etcd_auth failed:"; cat "$DATA/logs/etcd-auth.log"; exit 1
fi

users=$(etcdctl_root user list 2>&1 | sort | tr '\n' ' ')
[ "$users" = "controller1 controller2 node1 node2 root " ] && pass "etcd users: $users" || fail "etcd users: $users"
etcdctl_root user get controller2 2>&1 | grep -q "kmosix-controller" && pass "controller2 has role kmosix-controller" ||
  fail "controller2 lacks role kmosix-controller: $(etcdctl_root user get controller2 2>&1)"
etcdctl_root user get controller1 2>&1 | grep -qw "root" && pass "controller1 has role root (it grants the nodes)" ||
  fail "controller1 lacks role root: $(etcdctl_root user get controller1 2>&1)"

# as NAME ARGS...: etcdctl as identity NAME (pki/NAME.{crt,key}).
as() {
  local who=$1
  shift
  ETCDCTL_API=3 etcdctl --endpoints "$(etcd_url)" --cacert "$d/ca.crt" --cert "$d/$who.crt" \
    --key "$d/$who.key" --command-timeout 5s "$@" 2>&1
}
# allowed NAME WHAT ARGS...: etcdctl as NAME succeeds.
allowed() {
  local who=$1 what=$2 out
  shift 2
  if out=$(as "$who" "$@"); then pass "$who may $what"; else fail "$who may not $what: $out"; fi
}
# denied NAME WHAT ARGS...: etcdctl as NAME fails with permission denied.
denied() {
  local who=$1 what=$2 out
  shift 2
  if out=$(as "$who" "$@"); then
    fail "$who could $what"
  elif grep -q "permission denied" <<<"$out"; then
    pass "$who may not $what"
  else
    fail "$who could not $what, but not for lack of permission: $out"
  fi
}

P=$prefix
allowed controller1 "write ${P}leader" put "${P}leader" controller1
allowed controller2 "write ${P}leader" put "${P}leader" controller2
allowed controller2 "write ${P}members/node1" put "${P}members/node1" '{}'
allowed controller1 "read $P" get --prefix "$P"
allowed controller1 "delete ${P}members/node1" del "${P}members/node1"
# What the leading controller does for a node (controller/grants.h): as
# controller1 itself, with its own certificate.
allowed controller1 "grant node1 ${P}workloads/w" role grant-permission node1 readwrite "${P}workloads/w"

allowed node1 "read $P" get --prefix "$P"
allowed node1 "write its own ${P}nodes/node1" put "${P}nodes/node1" '{}'
allowed node1 "write ${P}workloads/w (granted)" put "${P}workloads/w" '{}'
denied node2 "write ${P}workloads/w (granted to node1 only)" put "${P}workloads/w" '{}'
denied node1 "write ${P}workloads/w2 (not granted)" put "${P}workloads/w2" '{}'
denied node1 "write ${P}workloads/w-longer (a grant is that key exactly)" put "${P}workloads/w-longer" '{}'
denied node1 "write ${P}migrations/m (not granted)" put "${P}migrations/m" '{}'
allowed controller2 "revoke node1's ${P}workloads/w" role revoke-permission node1 "${P}workloads/w"
denied node1 "write ${P}workloads/w (revoked)" put "${P}workloads/w" '{}'
denied node1 "write node2's ${P}nodes/node2" put "${P}nodes/node2" '{}'
denied node1 "write ${P}nodes/node10 (its key exactly, not a prefix)" put "${P}nodes/node10" '{}'
denied node1 "write the leader key ${P}leader" put "${P}leader" node1
denied node1 "write ${P}members/node1" put "${P}members/node1" '{}'
denied node1 "write /kmosix/nodes/node1 (outside the prefix)" put /kmosix/nodes/node1 '{}'
denied node1 "read /kmosix/" get --prefix /kmosix/
denied node2 "write node1's ${P}nodes/node1" put "${P}nodes/node1" '{}'

if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed (etcd auth log: kept below)"
  cat "$DATA/logs/etcd-auth.log"
  exit 1
fi
echo "all checks held"
