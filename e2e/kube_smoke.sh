#!/usr/bin/env bash
# Smoke test of scripts/kube (issue 12): a real Kubernetes on this machine works
# the way the kmosix chart will need it.
#   - every node Ready
#   - one pod pinned to each node (nodeSelector, so the scheduler places it) runs,
#     gets an address of its node's pod subnet, and pods reach each other across
#     nodes, the host reaches a pod, and a pod reaches another through a Service's
#     ClusterIP (kube-proxy); kubectl exec, logs and port-forward work
#   - a pod reaches the API server in-cluster (https://10.96.0.1 with its
#     ServiceAccount token: SelfSubjectReview names system:serviceaccount:<ns>:default)
#   - cluster DNS: a Service by its short name, a StatefulSet pod by its stable name
#     through a headless Service, kubernetes.default from a hostNetwork pod
#   - storage: the StatefulSet's claim (default StorageClass) gets a local volume on
#     its pod's node, and the volume goes away with the claim
#   - a Deployment of 2 replicas becomes Available (scheduler + controller-manager)
#   - helm lint --strict, install --wait and uninstall of a tiny chart
#   - a DaemonSet pod with hostNetwork + hostPID + privileged, mounting the node's
#     /run/containerd, /var/lib/kubelet, /run/kmosix and /var/lib/kmosix, runs on every
#     node and sees ITS node's containerd socket (same inode as the host-side file of
#     that node), its node's address, and the node's containerd process (hostPID); a tmpfs it
#     mounts under /run/kmosix (mountPropagation Bidirectional) reaches its node's
#     mount namespace and not the host's; its cgroups are rooted at its node's
#     (/kube-smoke made in the pod is /kube-node<i>/kube-smoke on the host);
#     `kubectl logs` and `kubectl exec` work (API server -> kubelet)
#
# Usage (as root): e2e/kube_smoke.sh [--keep]
#   Uses the cluster of `scripts/kube up` when one is up (and leaves it up);
#   otherwise brings one up with 2 nodes and takes it down at the end
#   (--keep: leave it up). Exit 0 when everything held; non-zero with a
#   "kube_smoke: FAIL: ..." line naming what did not.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
kube=$repo/scripts/kube
keep=0
[ "${1:-}" = --keep ] && keep=1
NS=kube-smoke
IMAGE=kmosix.local/kube-busybox:1
T0=$SECONDS
passed=0

say() { printf 'kube_smoke: %s\n' "$*" >&2; }
fail() {
  say "FAIL: $*"
  if [ -n "${KUBECONFIG:-}" ]; then
    kubectl get pods -A -o wide >&2 2>&1 || true
    kubectl get events -n "$NS" --sort-by=.lastTimestamp 2>/dev/null | tail -n 20 >&2 || true
  fi
  say "$passed passed, 1 failed"
  exit 1
}
ok() { passed=$((passed + 1)); say "ok: $*"; }

[ "$(id -u)" = 0 ] || { say "FAIL: must run as root"; exit 1; }
we_started=0
if ! "$kube" status >/dev/null 2>&1; then
  if [ -f "${KMX_KUBE_STATE:-/run/kmosix-kube}/kube.env" ]; then
    fail "scripts/kube is up but unhealthy: $("$kube" status 2>&1 | tail -n 5)"
  fi
  say "bringing up a 2-node cluster (scripts/kube up --nodes 2)"
  t=$SECONDS
  "$kube" up --nodes 2 || { "$kube" down >/dev/null 2>&1; fail "scripts/kube up --nodes 2 failed"; }
  say "up took $((SECONDS - t)) s"
  we_started=1
fi
cleanup() {
  if [ -n "${KUBECONFIG:-}" ]; then
    kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  fi
  if [ $we_started = 1 ] && [ $keep = 0 ]; then "$kube" down >/dev/null 2>&1 || say "warning: scripts/kube down failed"; fi
}
trap cleanup EXIT
eval "$("$kube" env)" || fail "scripts/kube env failed"
command -v kubectl >/dev/null || fail "kubectl not on PATH after scripts/kube env"
[ "$(command -v kubectl)" = "$KMX_KUBE_BIN_DIR/kubectl" ] || fail "kubectl on PATH is $(command -v kubectl), not the kube-tools one"
command -v helm >/dev/null || fail "helm not on PATH after scripts/kube env"
ok "env: kubectl and helm ($(helm version --template '{{.Version}}')) from $KMX_KUBE_BIN_DIR"
[ "$KMX_KUBE_NODES" -ge 2 ] || fail "needs at least 2 nodes, the cluster has $KMX_KUBE_NODES"

# --- nodes Ready -------------------------------------------------------------
kubectl wait --for=condition=Ready node --all --timeout=60s >/dev/null || fail "not every node is Ready"
ok "nodes Ready: $(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}={.status.nodeInfo.kubeletVersion} {end}')"

# --- the test image ----------------------------------------------------------
work=$(mktemp -d)
trap 'cleanup; rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/rootfs/tmp" "$work/rootfs/www"
cp "$(command -v busybox)" "$work/rootfs/bin/busybox" || fail "no busybox (apt-get install busybox-static)"
for a in $(busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$work/rootfs/bin/$a"; done
"$repo/scripts/build-image" --rootfs "$work/rootfs" --name "$IMAGE" --out "$work/busybox.tar" \
  --cmd '["/bin/sh"]' >/dev/null || fail "scripts/build-image failed"
"$kube" import "$work/busybox.tar" 2>&1 | sed 's/^/  /' >&2
[ "${PIPESTATUS[0]}" = 0 ] || fail "scripts/kube import failed"
ok "image $IMAGE imported on every node"

kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=60s >/dev/null 2>&1
kubectl create namespace "$NS" >/dev/null || fail "cannot create namespace $NS"
for ((i = 0; i < 300; i++)); do
  kubectl -n "$NS" get serviceaccount default >/dev/null 2>&1 && break
  sleep 0.1
done

# --- a pod pinned to each node -------------------------------------------------
pod_yaml() { # name node
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: $NS, labels: {app: pinned, node: $2}}
spec:
  nodeSelector: {kubernetes.io/hostname: $2}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: $IMAGE
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "echo $2 > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{containerPort: 8080}]
EOF
}
for ((i = 1; i <= 2; i++)); do
  n=KMX_KUBE_NODE${i}_NAME
  pod_yaml "pinned$i" "${!n}" | kubectl apply -f - >/dev/null || fail "cannot create pod pinned$i"
done
kubectl -n "$NS" wait --for=condition=Ready pod/pinned1 pod/pinned2 --timeout=90s >/dev/null ||
  fail "the pinned pods did not become Ready"
for ((i = 1; i <= 2; i++)); do
  n=KMX_KUBE_NODE${i}_NAME; p=KMX_KUBE_NODE${i}_PODS
  on=$(kubectl -n "$NS" get pod "pinned$i" -o jsonpath='{.spec.nodeName}')
  ip=$(kubectl -n "$NS" get pod "pinned$i" -o jsonpath='{.status.podIP}')
  [ "$on" = "${!n}" ] || fail "pinned$i runs on '$on', not ${!n}"
  [ "${ip%.*}" = "${!p%.*}" ] || fail "pinned$i has address $ip, not in ${!n}'s pod subnet ${!p}"
  eval "IP$i=$ip"
done
ok "pinned1 on $KMX_KUBE_NODE1_NAME ($IP1), pinned2 on $KMX_KUBE_NODE2_NAME ($IP2)"

# busybox-static's wget segfaults (static glibc): plain HTTP/1.0 over nc instead
pod_get() { # pod ip port -> the response body's last line
  kubectl -n "$NS" exec "$1" -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 $2 $3 | tail -n 1"
}
got=$(pod_get pinned1 "$IP2" 8080 2>&1) || fail "pod on node 1 cannot reach the pod on node 2 ($IP2:8080): $got"
[ "$got" = "$KMX_KUBE_NODE2_NAME" ] || fail "pinned1 -> pinned2 answered '$got'"
got=$(pod_get pinned2 "$IP1" 8080 2>&1) || fail "pod on node 2 cannot reach the pod on node 1 ($IP1:8080): $got"
[ "$got" = "$KMX_KUBE_NODE1_NAME" ] || fail "pinned2 -> pinned1 answered '$got'"
got=$(curl -sS -m 5 "http://$IP1:8080/" 2>&1) || fail "the host cannot reach pinned1 ($IP1:8080): $got"
[ "$got" = "$KMX_KUBE_NODE1_NAME" ] || fail "host -> pinned1 answered '$got'"
ok "pod-to-pod across nodes (both ways) and host-to-pod; kubectl exec works"

# kubectl port-forward (what the chart's NOTES.txt tells a user to run)
pfport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
kubectl -n "$NS" port-forward pod/pinned2 "$pfport:8080" >"$work/pf.log" 2>&1 &
pfpid=$!
got=""
for ((i = 0; i < 50; i++)); do
  got=$(curl -sS -m 2 "http://127.0.0.1:$pfport/" 2>/dev/null) && break
  sleep 0.2
done
kill "$pfpid" 2>/dev/null; wait "$pfpid" 2>/dev/null
[ "$got" = "$KMX_KUBE_NODE2_NAME" ] || fail "kubectl port-forward pod/pinned2 $pfport:8080 answered '$got': $(cat "$work/pf.log")"
ok "kubectl port-forward to pinned2 works"

# a Service in front of pinned2, reached by ClusterIP from node 1 (kube-proxy)
kubectl apply -f - >/dev/null <<EOF || fail "cannot create the Service"
apiVersion: v1
kind: Service
metadata: {name: web2, namespace: $NS}
spec:
  selector: {app: pinned, node: $KMX_KUBE_NODE2_NAME}
  ports: [{port: 80, targetPort: 8080}]
EOF
cip=$(kubectl -n "$NS" get service web2 -o jsonpath='{.spec.clusterIP}')
got=""
for ((i = 0; i < 30; i++)); do
  got=$(pod_get pinned1 "$cip" 80 2>&1) && [ "$got" = "$KMX_KUBE_NODE2_NAME" ] && break
  sleep 1
done
[ "$got" = "$KMX_KUBE_NODE2_NAME" ] || fail "Service web2 ($cip:80) not reachable from pinned1: '$got'"
ok "Service ClusterIP $cip reaches pinned2 from node 1 (kube-proxy)"

# in-cluster API access: the pod reaches the API server through the kubernetes
# Service (KUBERNETES_SERVICE_HOST, kube-proxy) -- Go's TLS server answers a plain
# HTTP request with "Client sent an HTTP request to an HTTPS server" -- and the
# token the kubelet mounted in it authenticates it as its ServiceAccount.
svc=$(kubectl -n "$NS" exec pinned1 -- sh -c 'echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT' 2>&1)
got=$(kubectl -n "$NS" exec pinned1 -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 ${svc%:*} ${svc#*:}" 2>&1)
grep -q "HTTPS server" <<<"$got" || fail "pinned1 cannot reach the API server at $svc (kubernetes Service): '$got'"
token=$(kubectl -n "$NS" exec pinned1 -- cat /var/run/secrets/kubernetes.io/serviceaccount/token 2>&1) ||
  fail "pinned1 has no ServiceAccount token: $token"
who=$(curl -sS -m 10 --cacert "$KMX_KUBE_CA" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d '{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}' \
  "$KMX_KUBE_APISERVER/apis/authentication.k8s.io/v1/selfsubjectreviews" 2>&1)
grep -q "system:serviceaccount:$NS:default" <<<"$who" || fail "SelfSubjectReview with pinned1's token answered: $who"
ok "in-cluster API: pinned1 reaches https://$svc (kubernetes Service); its mounted token is system:serviceaccount:$NS:default"

# --- cluster DNS ---------------------------------------------------------------
# a Service by its short name (search domains), and a StatefulSet pod by its
# stable name through a headless Service
ns_addr() { # pod name -> the first address nslookup gives for name (empty if none)
  kubectl -n "$NS" exec "$1" -- nslookup -type=a "$2" 2>/dev/null |
    awk '/^Name:/ {n = 1} n && /^Address:/ {print $2; exit}'
}
got=$(ns_addr pinned1 web2)
[ "$got" = "$cip" ] || fail "pinned1: DNS name web2 resolves to '$got', not the Service's ClusterIP $cip"
kubectl apply -f - >/dev/null <<EOF || fail "cannot create the StatefulSet"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: $NS}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {app: db}
  ports: [{port: 2379}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: $NS}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: db
        image: $IMAGE
        imagePullPolicy: IfNotPresent
        command: ["/bin/sh", "-c", "echo \$HOSTNAME > /data/marker; trap 'exit 0' TERM; while :; do sleep 1; done"]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
EOF
kubectl -n "$NS" rollout status statefulset/db --timeout=90s >/dev/null || fail "StatefulSet db not ready"
dbip=$(kubectl -n "$NS" get pod db-0 -o jsonpath='{.status.podIP}')
got=""
for ((i = 0; i < 20; i++)); do
  got=$(ns_addr pinned1 "db-0.db.$NS.svc.cluster.local")
  [ "$got" = "$dbip" ] && break
  sleep 0.5
done
[ "$got" = "$dbip" ] || fail "db-0.db.$NS.svc.cluster.local resolves to '$got', not db-0's address $dbip"
ok "cluster DNS: web2 -> $cip (search domains), db-0.db.$NS.svc.cluster.local -> $dbip (headless, StatefulSet)"

# the StatefulSet's claim (default StorageClass) got a local volume on db-0's node
dbnode=$(kubectl -n "$NS" get pod db-0 -o jsonpath='{.spec.nodeName}')
pv=$(kubectl -n "$NS" get pvc data-db-0 -o jsonpath='{.spec.volumeName}')
[ -n "$pv" ] || fail "PVC data-db-0 is not bound: $(kubectl -n "$NS" get pvc data-db-0 2>&1)"
pvnode=$(kubectl get pv "$pv" -o jsonpath='{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}')
[ "$pvnode" = "$dbnode" ] || fail "volume $pv is pinned to '$pvnode', db-0 runs on $dbnode"
pvpath=$(kubectl get pv "$pv" -o jsonpath='{.spec.local.path}')
[ "$pvpath" = "$KMX_KUBE_DATA_DIR/node${dbnode##*[!0-9]}/volumes/$pv" ] || fail "volume $pv at unexpected path $pvpath"
[ "$(cat "$pvpath/marker" 2>/dev/null)" = db-0 ] || fail "db-0's /data/marker is not in $pvpath"
ok "storage: PVC data-db-0 (default StorageClass) bound to $pv on $dbnode; db-0's file is in $pvpath"

# --- a Deployment of 2 replicas ----------------------------------------------
kubectl apply -f - >/dev/null <<EOF || fail "cannot create the Deployment"
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleepers, namespace: $NS}
spec:
  replicas: 2
  selector: {matchLabels: {app: sleepers}}
  template:
    metadata: {labels: {app: sleepers}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: sleep
        image: $IMAGE
        imagePullPolicy: IfNotPresent
        command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
EOF
kubectl -n "$NS" rollout status deployment/sleepers --timeout=90s >/dev/null ||
  fail "Deployment sleepers did not become available"
avail=$(kubectl -n "$NS" get deployment sleepers -o jsonpath='{.status.availableReplicas}')
[ "$avail" = 2 ] || fail "Deployment sleepers has $avail available replicas, not 2"
ok "Deployment sleepers: 2/2 available on $(kubectl -n "$NS" get pods -l app=sleepers -o jsonpath='{range .items[*]}{.spec.nodeName} {end}')"

# --- helm install --wait / uninstall of a tiny chart --------------------------
mkdir -p "$work/chart/templates"
cat >"$work/chart/Chart.yaml" <<EOF
apiVersion: v2
name: kube-smoke
version: 0.1.0
appVersion: "1"
EOF
printf 'image: %s\nreplicas: 2\n' "$IMAGE" >"$work/chart/values.yaml"
cat >"$work/chart/templates/deployment.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: {{ .Release.Name }}-sleep}
spec:
  replicas: {{ .Values.replicas }}
  selector: {matchLabels: {app: {{ .Release.Name }}-sleep}}
  template:
    metadata: {labels: {app: {{ .Release.Name }}-sleep}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: sleep
        image: {{ .Values.image }}
        imagePullPolicy: IfNotPresent
        command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
EOF
out=$(helm lint --strict "$work/chart" 2>&1) || fail "helm lint --strict: $out"
out=$(helm install smoke "$work/chart" -n "$NS" --wait --timeout 90s 2>&1) || fail "helm install --wait: $out"
avail=$(kubectl -n "$NS" get deployment smoke-sleep -o jsonpath='{.status.availableReplicas}')
[ "$avail" = 2 ] || fail "helm release smoke: deployment smoke-sleep has '$avail' available replicas after --wait"
out=$(helm uninstall smoke -n "$NS" --wait --timeout 60s 2>&1) || fail "helm uninstall: $out"
kubectl -n "$NS" get deployment smoke-sleep >/dev/null 2>&1 && fail "helm uninstall left deployment smoke-sleep"
ok "helm $(helm version --template '{{.Version}}'): lint --strict, install --wait (2/2 available), uninstall"

# --- a node-agent-like DaemonSet ----------------------------------------------
kubectl apply -f - >/dev/null <<EOF || fail "cannot create the DaemonSet"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agentlike, namespace: $NS}
spec:
  selector: {matchLabels: {app: agentlike}}
  template:
    metadata: {labels: {app: agentlike}}
    spec:
      hostNetwork: true
      dnsPolicy: ClusterFirstWithHostNet
      hostPID: true
      terminationGracePeriodSeconds: 1
      containers:
      - name: probe
        image: $IMAGE
        imagePullPolicy: Never
        securityContext: {privileged: true}
        env:
        - name: NODE_NAME
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
        command:
        - /bin/sh
        - -c
        - |
          s=/run/containerd/containerd.sock
          [ -S \$s ] && echo "socket-inode \$(stat -c %i \$s)" || echo "socket-missing"
          for d in /var/lib/kubelet/pods /var/lib/containerd /run/kmosix /var/lib/kmosix; do
            [ -d \$d ] && echo "dir \$d" || echo "missing \$d"
          done
          echo "node \$NODE_NAME"
          m=/run/kmosix/kube-smoke-\$NODE_NAME
          mkdir -p \$m && mount -t tmpfs kube-smoke \$m && echo "mounted \$m" || echo "mount-failed \$m"
          echo "containerd-pids \$(pidof containerd | tr ' ' ,)"
          echo "cgroup-self \$(grep -m1 ':pids:' /proc/self/cgroup)"
          mkdir -p /sys/fs/cgroup/pids/kube-smoke && echo "cgroup-made"
          trap 'exit 0' TERM; while :; do sleep 1; done
        volumeMounts:
        - {name: run-containerd, mountPath: /run/containerd}
        - {name: var-lib-containerd, mountPath: /var/lib/containerd}
        - {name: var-lib-kubelet, mountPath: /var/lib/kubelet}
        - {name: run-kmosix, mountPath: /run/kmosix, mountPropagation: Bidirectional}
        - {name: var-lib-kmosix, mountPath: /var/lib/kmosix}
        - {name: cgroup, mountPath: /sys/fs/cgroup}
      volumes:
      - {name: run-containerd, hostPath: {path: /run/containerd, type: Directory}}
      - {name: var-lib-containerd, hostPath: {path: /var/lib/containerd, type: Directory}}
      - {name: var-lib-kubelet, hostPath: {path: /var/lib/kubelet, type: Directory}}
      - {name: run-kmosix, hostPath: {path: /run/kmosix, type: DirectoryOrCreate}}
      - {name: var-lib-kmosix, hostPath: {path: /var/lib/kmosix, type: DirectoryOrCreate}}
      - {name: cgroup, hostPath: {path: /sys/fs/cgroup, type: Directory}}
EOF
for ((i = 0; i < 900; i++)); do
  ready=$(kubectl -n "$NS" get daemonset agentlike -o jsonpath='{.status.numberReady}/{.status.desiredNumberScheduled}' 2>/dev/null)
  [ "$ready" = "$KMX_KUBE_NODES/$KMX_KUBE_NODES" ] && break
  sleep 0.1
done
[ "$ready" = "$KMX_KUBE_NODES/$KMX_KUBE_NODES" ] || fail "DaemonSet agentlike: $ready pods ready"
state=$KMX_KUBE_STATE_DIR
for pod in $(kubectl -n "$NS" get pods -l app=agentlike -o jsonpath='{.items[*].metadata.name}'); do
  node=$(kubectl -n "$NS" get pod "$pod" -o jsonpath='{.spec.nodeName}')
  podip=$(kubectl -n "$NS" get pod "$pod" -o jsonpath='{.status.podIP}')
  idx=${node##*[!0-9]}
  sock=KMX_KUBE_NODE${idx}_SOCK; addr=KMX_KUBE_NODE${idx}_ADDR
  out=""
  for ((i = 0; i < 50; i++)); do
    out=$(kubectl -n "$NS" logs "$pod" 2>&1) && grep -q '^containerd-pids' <<<"$out" && break
    sleep 0.2
  done
  grep -q '^containerd-pids' <<<"$out" || fail "kubectl logs $pod: $out"
  want=$(stat -c %i "${!sock}") || fail "no host-side socket ${!sock} for $node"
  grep -qx "socket-inode $want" <<<"$out" ||
    fail "$pod on $node does not see its node's containerd socket (host ${!sock} inode $want): $out"
  grep -q '^missing' <<<"$out" && fail "$pod on $node misses node paths: $(grep '^missing' <<<"$out")"
  [ "$podip" = "${!addr}" ] || fail "$pod (hostNetwork) has address $podip, not $node's ${!addr}"
  grep -qx "node $node" <<<"$out" || fail "$pod: downward-API node name wrong: $out"
  got=$(ns_addr "$pod" kubernetes.default.svc.cluster.local)
  [ "$got" = 10.96.0.1 ] || fail "$pod (hostNetwork, ClusterFirstWithHostNet): kubernetes.default.svc.cluster.local resolves to '$got'"
  cpid=$(read -r p _ <"$state/node$idx-containerd.pid" && echo "$p")
  grep -q "^containerd-pids.*\b$cpid\b" <<<"$out" || fail "$pod (hostPID) does not see $node's containerd pid $cpid: $out"
  # Bidirectional propagation: the pod's tmpfs reaches its node, not the host
  m=/run/kmosix/kube-smoke-$node
  grep -qx "mounted $m" <<<"$out" || fail "$pod could not mount a tmpfs on $m: $out"
  mntns=KMX_KUBE_NODE${idx}_MNTNS
  nsenter --mount="${!mntns}" -- grep -q " $m " /proc/self/mountinfo ||
    fail "$pod's tmpfs on $m (mountPropagation Bidirectional) did not reach $node's mount namespace"
  grep -q " $m " /proc/self/mountinfo && fail "$pod's tmpfs on $m leaked into the host's mount namespace"
  nsenter --mount="${!mntns}" -- sh -c "umount $m; rmdir $m" 2>/dev/null
  # the node's cgroup root is its own: the pod's cgroup reads relative to it, and
  # /kube-smoke made from inside is /kube-node<i>/kube-smoke on the host
  cg=KMX_KUBE_NODE${idx}_CGROUP
  grep -q '^cgroup-self [0-9]*:pids:/kubepods/' <<<"$out" ||
    fail "$pod's own cgroup is not under its node's /kubepods: $(grep '^cgroup-self' <<<"$out")"
  grep -qx cgroup-made <<<"$out" || fail "$pod could not make /sys/fs/cgroup/pids/kube-smoke: $out"
  [ -d "/sys/fs/cgroup/pids${!cg}/kube-smoke" ] ||
    fail "$pod's cgroup /kube-smoke is not /sys/fs/cgroup/pids${!cg}/kube-smoke on the host"
  rmdir "/sys/fs/cgroup/pids${!cg}/kube-smoke"
  [ -d /sys/fs/cgroup/pids/kube-smoke ] && fail "a cgroup /kube-smoke appeared at the host's cgroup root"
  ok "$pod on $node: hostNetwork $podip, hostPID sees containerd $cpid, /run/containerd/containerd.sock is $node's (inode $want), cgroup root ${!cg}, Bidirectional mount stays in the node"
done

# a released volume is deleted with its folder (reclaimPolicy Delete)
kubectl -n "$NS" delete statefulset db --wait=true --timeout=60s >/dev/null 2>&1
kubectl -n "$NS" delete pvc data-db-0 --wait=true --timeout=60s >/dev/null 2>&1 || fail "cannot delete PVC data-db-0"
for ((i = 0; i < 150; i++)); do
  kubectl get pv "$pv" >/dev/null 2>&1 || break
  sleep 0.2
done
kubectl get pv "$pv" >/dev/null 2>&1 && fail "volume $pv still exists 30 s after its claim was deleted"
[ -e "$pvpath" ] && fail "volume $pv's folder $pvpath is still there"
ok "storage: released volume $pv deleted with its folder"

say "$passed passed, 0 failed ($((SECONDS - T0)) s)"
