#!/usr/bin/env bash
# scripts/cluster's node-loss tools, checked on a stand-in node: the script is
# sourced (its functions only) with a state dir of its own, its node
# namespaces renamed kmxt-node<i> and node index 97 (cgroups
# /kmosix-node97), so no real cluster's bridge, namespaces, cgroups or
# /run/kmosix-cluster is touched; it may run while a cluster is up.
#
#   kill-node 97    every process of the node dies at once: its "agent" and
#                   "containerd" (recorded pids), a "shim" (a process naming
#                   the node's containerd socket), anything else in its netns,
#                   and its workloads (processes in /kmosix-node97's cgroups,
#                   one of them frozen, as a fenced or migrating one would be);
#                   processes outside the node live on; its cgroups are left
#                   empty and thawed
#   partition 97 etcd | 98 | controllers   nft drop rules in the node's netns
#                   for etcd's client port, node 98's address and the
#                   controllers' ports, both directions
#   heal 97         the rules are gone
#
# Needs root, ip, nsenter, nft, python3 and the cgroup v1 freezer; otherwise it says
# KMOSIX-TEST-SKIPPED and why (ctest reports it as skipped). Exit 0: every
# check held; 1: at least one failed (each failure printed).
set -u
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

skip() {
  echo "KMOSIX-TEST-SKIPPED: $*"
  exit 0
}
[ "$(id -u)" = 0 ] || skip "not root (network namespaces and cgroups need it)"
for c in ip nsenter nft setsid python3; do command -v "$c" >/dev/null || skip "$c not on PATH"; done
[ -d /sys/fs/cgroup/freezer ] || skip "no cgroup v1 freezer at /sys/fs/cgroup/freezer"

tmp=$(mktemp -d /tmp/kmx-cluster-node-loss.XXXXXX) || exit 1
export KMOSIX_CLUSTER_DIR=$tmp/state KMOSIX_CLUSTER_DATA=$tmp/data KMOSIX_CLUSTER_SUBNET=10.79.0
# shellcheck source=../../scripts/cluster
. "$repo/scripts/cluster" || {
  echo "cannot source scripts/cluster"
  exit 1
}
set +o pipefail
NS_PREFIX=kmxt-node
N=97
ns=$NS_PREFIX$N
cg=kmosix-node$N

failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}
pass() { echo "ok: $*"; }

cleanup() {
  local c
  for c in /sys/fs/cgroup/freezer/$cg; do
    [ -d "$c" ] && find "$c" -name freezer.state | while read -r f; do echo THAWED >"$f"; done
  done
  for p in "${all[@]}" "${bystander:-}" "${client:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null; done
  sleep 0.2
  for c in /sys/fs/cgroup/*/$cg; do [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null; done
  ip netns del "$ns" 2>/dev/null
  rm -rf "$tmp"
}
all=()
trap cleanup EXIT

[ -e "/run/netns/$ns" ] && skip "netns $ns exists (another run of this test?)"
for c in /sys/fs/cgroup/*/$cg; do [ -d "$c" ] && skip "cgroup $c exists (another run of this test?)"; done
mkdir -p "$STATE/node$N" "$DATA/logs"
cat >"$STATE/cluster.env" <<EOF
NODES=98
BASE_PORT=7700
SUBNET=$SUBNET
DATA=$DATA
HAS_ETCD=1
ETCD_PORT=2399
CONTROLLERS=2
CONTROLLER_PORT=7890
EOF
ip netns add "$ns" || {
  echo "cannot create netns $ns"
  exit 1
}
ip -n "$ns" link set lo up

# The node's processes: "agent" and "containerd" in its netns (recorded), a
# "shim" naming its containerd socket, another process in its netns.
sock=$(node_sock $N)
spawn_in_ns() { # file -> starts a sleeper in the node's netns, records it
  setsid nsenter --net="/run/netns/$ns" -- sleep 1000 </dev/null >/dev/null 2>&1 &
  record_pid "$1" $!
  echo $!
}
agent=$(spawn_in_ns "$STATE/node$N/agent.pid")
ctd=$(spawn_in_ns "$STATE/node$N/containerd.pid")
# (a shim's comm is containerd-shim...: python3 under that name)
# (the interpreter itself: a pyenv shim would dispatch on the name)
ln -s "$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')" "$tmp/containerd-shim-runc-v2"
"$tmp/containerd-shim-runc-v2" -c 'import time; time.sleep(1000)' -address "$sock" </dev/null >/dev/null 2>&1 &
shim=$!
# a client of the node's containerd (ctr -a <sock>, a test's sampler) is no part of the node
python3 -c 'import time; time.sleep(1000)' ctr -a "$sock" </dev/null >/dev/null 2>&1 &
client=$!
setsid nsenter --net="/run/netns/$ns" -- sleep 1000 </dev/null >/dev/null 2>&1 &
other=$!
# Workloads: processes in the node's cgroups; w2 frozen (paused).
wl=()
for w in w1 w2; do
  for h in freezer memory; do mkdir -p "/sys/fs/cgroup/$h/$cg/$w"; done
  sleep 1000 </dev/null >/dev/null 2>&1 &
  p=$!
  for h in freezer memory; do echo "$p" >"/sys/fs/cgroup/$h/$cg/$w/cgroup.procs"; done
  wl+=("$p")
done
echo FROZEN >"/sys/fs/cgroup/freezer/$cg/w2/freezer.state"
sleep 1000 </dev/null >/dev/null 2>&1 &
bystander=$!
all=("$agent" "$ctd" "$shim" "$other" "${wl[@]}")
sleep 0.3

dead() { ! kill -0 "$1" 2>/dev/null || [ "$(proc_state "$1")" = Z ]; }
for p in "${all[@]}"; do dead "$p" && fail "process $p died before kill-node"; done

# --- kill-node -------------------------------------------------------------------
out=$( (cmd_kill_node $N) 2>&1) || fail "kill-node $N failed: $out"
names=(agent containerd shim "other process in the netns" "workload w1" "workload w2 (frozen)")
for i in "${!all[@]}"; do
  dead "${all[$i]}" && pass "kill-node: ${names[$i]} (${all[$i]}) is dead" ||
    fail "kill-node: ${names[$i]} (${all[$i]}) still runs"
done
dead "$bystander" && fail "kill-node killed a process outside the node" || pass "a process outside the node lives"
dead "$client" && fail "kill-node killed a client of the node's containerd" || pass "a client of the node's containerd lives"
left=$(find /sys/fs/cgroup/*/$cg -name cgroup.procs -exec cat {} + 2>/dev/null)
[ -z "$left" ] && pass "the node's cgroups are empty" || fail "processes left in the node's cgroups: $left"
frozen=$(grep -l FROZEN $(find "/sys/fs/cgroup/freezer/$cg" -name freezer.state) 2>/dev/null)
[ -z "$frozen" ] && pass "the node's freezer cgroups are thawed" || fail "still frozen: $frozen"
(cmd_kill_node $N) >/dev/null 2>&1 && pass "kill-node of a dead node succeeds" || fail "kill-node of a dead node failed"

# --- partition / heal ------------------------------------------------------------
rules() { nsenter --net="/run/netns/$ns" -- nft list table inet kmx_partition 2>/dev/null; }
has_rule() { # chain text
  rules | awk -v c="$1" '/chain /{ch=$2} ch==c' | grep -qF -- "$2"
}
out=$( (cmd_partition $N etcd) 2>&1) || fail "partition $N etcd failed: $out"
has_rule output "ip daddr $SUBNET.1 tcp dport 2399 drop" && has_rule input "ip saddr $SUBNET.1 tcp sport 2399 drop" &&
  pass "partition etcd: both directions of etcd's client port dropped" || fail "partition etcd rules: $(rules)"
out=$( (cmd_partition $N 98) 2>&1) || fail "partition $N 98 failed: $out"
for c in input output forward; do
  has_rule "$c" "ip daddr $SUBNET.108 drop" && has_rule "$c" "ip saddr $SUBNET.108 drop" ||
    fail "partition 98: $c lacks node98's drops: $(rules)"
done
has_rule output "ip daddr $SUBNET.1 tcp dport 2399 drop" && pass "partitions add up (etcd's rules kept)" ||
  fail "partition 98 dropped the etcd rules"
out=$( (cmd_partition $N controllers) 2>&1) || fail "partition $N controllers failed: $out"
has_rule output "tcp dport { 7890, 7891 } drop" && has_rule input "tcp sport { 7890, 7891 } drop" &&
  pass "partition controllers: both controllers' ports dropped" || fail "partition controllers rules: $(rules)"
(cmd_partition $N $N) >/dev/null 2>&1 && fail "partition from itself accepted" || pass "partition from itself refused"
(cmd_partition $N bogus) >/dev/null 2>&1 && fail "partition from 'bogus' accepted" || pass "partition from 'bogus' refused"
out=$( (cmd_heal $N) 2>&1) || fail "heal $N failed: $out"
[ -z "$(rules)" ] && pass "heal removes the rules" || fail "rules left after heal: $(rules)"
(cmd_heal $N) >/dev/null 2>&1 && pass "heal of a healed node succeeds" || fail "heal of a healed node failed"

if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks held"
