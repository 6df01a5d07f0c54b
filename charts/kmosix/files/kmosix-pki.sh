#!/bin/sh
# kmosix-pki.sh STEP...: the chart's certificate and etcd-auth Job (tools image:
# busybox sh, openssl, kubectl, etcdctl). Steps:
#   certs      (certificates.source=generate) the cluster's CA and every
#              identity signed by it, into Secrets of $NAMESPACE: kept while
#              they verify against the CA, name what they should and are
#              valid for more than $RENEW_DAYS days; (re)issued otherwise.
#                $CA_KEY_SECRET      ca.crt ca.key   O=kmosix, 10 years; never
#                                    rotated here (delete it to rotate all);
#                                    read by this Job only, mounted by no pod
#                                    (a kubelet may read the Secrets its pods
#                                    mount: no node ever sees the CA's key)
#                $CA_SECRET          ca.crt only, what the daemons mount
#                $CONTROLLER_SECRET  O=kmosix:controllers/CN=kmosix-controller,
#                                    SAN $CONTROLLER_DNS, server+client
#                $ETCD_SECRET        etcd serving and peer, SAN $ETCD_DNS
#                                    (only when $ETCD_SECRET is set)
#                $ETCD_ROOT_SECRET   CN=root (etcd's root user), client
#                $NODE_ISSUER_SECRET (agents with pod certificates) a CA
#                                    under the CA, pathlen 0, that the
#                                    controllers sign agent certificates with
#                $AGENT_SECRET       (otherwise) <node>.crt/<node>.key for every node:
#                                    O=kmosix:nodes/CN=<node>, SAN DNS:<node>
#                                    and the node's addresses, server+client
#   etcd-auth  etcd's users and roles (as root, $ETCD_ROOT_SECRET mounted at
#              /etc/kmosix/etcd-root), then `auth enable`:
#                root               role root
#                kmosix-controller  readwrite on $ETCD_PREFIX, and role root
#                                   (the leading controller grants each node
#                                   the workload and migration records it may
#                                   write: --etcd-node-grants, issue 11)
#                <node>             role kmosix-node-<node>: read $ETCD_PREFIX,
#                                   readwrite ${ETCD_PREFIX}nodes/<node> (that
#                                   key); the controller adds and removes
#                                   single-key grants of workloads/<w> and
#                                   migrations/<id>
#              node users of nodes that are gone are deleted.
#   cleanup    deletes the Secrets this Job made (helm uninstall).
# Nodes: those matching $NODE_SELECTOR (the agents' nodeSelector) plus
# $EXTRA_NODES (space-separated names).
# Every Secret it writes carries the labels $SECRET_LABELS (k=v,k=v) and
# kmosix.io/generated-by=kmosix-pki. Exit 0 when every step succeeded.
set -eu
umask 077
log() { echo "kmosix-pki: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

DAYS=${DAYS:-365}
RENEW_DAYS=${RENEW_DAYS:-30}
NS=${NAMESPACE:?NAMESPACE}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
k() { kubectl -n "$NS" "$@"; }

# secret_get NAME KEY: the decoded value of KEY in Secret NAME ("" if none).
secret_get() {
  k get secret "$1" -o "go-template={{index .data \"$2\" | base64decode}}" 2>/dev/null || true
}
secret_exists() { k get secret "$1" >/dev/null 2>&1; }

# secret_write NAME TYPE DIR: Secret NAME (TYPE) holding every file of DIR,
# server-side applied (no last-applied annotation with the keys in it).
secret_write() {
  name=$1 type=$2 dir=$3
  set -- create secret generic "$name" --type="$type" --dry-run=client -o yaml
  for f in "$dir"/*; do if [ -f "$f" ]; then set -- "$@" "--from-file=$(basename "$f")=$f"; fi; done
  labels="kmosix.io/generated-by=kmosix-pki${SECRET_LABELS:+,$SECRET_LABELS}"
  k "$@" | k label --local -f - --overwrite -o yaml $(echo "$labels" | tr ',' ' ') |
    k apply --server-side --force-conflicts --field-manager=kmosix-pki -f - >/dev/null ||
    die "cannot write Secret $name"
  log "wrote Secret $name"
}

# cert_ok CRT KEY SPEC OLDSPEC: CRT chains to the CA, is valid for RENEW_DAYS
# more days, KEY is its key and it was issued for SPEC.
cert_ok() {
  [ -s "$1" ] && [ -s "$2" ] && [ "$3" = "$4" ] || return 1
  openssl verify -CAfile "$work/ca.crt" "$1" >/dev/null 2>&1 || return 1
  openssl x509 -in "$1" -noout -checkend $((RENEW_DAYS * 86400)) >/dev/null 2>&1 || return 1
  [ "$(openssl x509 -in "$1" -noout -pubkey 2>/dev/null)" = "$(openssl pkey -in "$2" -pubout 2>/dev/null)" ]
}

# issue OUT SUBJECT EKU SAN: OUT.crt/OUT.key (EC P-256) signed by the CA.
# EKU "ca": a CA under it that signs leaf certificates only (pathlen 0).
issue() {
  out=$1 subj=$2 eku=$3 san=$4
  if [ "$eku" = ca ]; then
    printf '%s\n' "basicConstraints=critical,CA:TRUE,pathlen:0" "keyUsage=critical,keyCertSign,cRLSign" \
      "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" >"$out.ext"
  else
    {
      echo "basicConstraints=CA:FALSE"
      echo "keyUsage=critical,digitalSignature,keyEncipherment"
      echo "extendedKeyUsage=$eku"
      [ -n "$san" ] && echo "subjectAltName=$san"
    } >"$out.ext"
  fi
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$out.key" -out "$out.csr" -subj "$subj" >/dev/null 2>&1 &&
    openssl x509 -req -in "$out.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -days "$DAYS" -extfile "$out.ext" \
      -out "$out.crt" >/dev/null 2>&1 || die "openssl cannot issue $subj"
  rm -f "$out.csr" "$out.ext"
  log "issued $subj${san:+ ($san)}"
}

# san_of "a b" "c": DNS:a,DNS:b,IP:c (IPs as IP:, names as DNS:).
san_of() {
  s=""
  for n in $1; do s="$s${s:+,}DNS:$n"; done
  for ip in $2; do s="$s${s:+,}IP:$ip"; done
  echo "$s"
}

# tls_secret NAME SUBJECT EKU SAN: a kubernetes.io/tls Secret (tls.crt,
# tls.key, ca.crt, tls.spec), kept when still good.
tls_secret() {
  name=$1 subj=$2 eku=$3 san=$4 d="$work/$1"
  mkdir -p "$d"
  spec="$subj|$eku|$san"
  secret_get "$name" tls.crt >"$d/tls.crt"
  secret_get "$name" tls.key >"$d/tls.key"
  if cert_ok "$d/tls.crt" "$d/tls.key" "$spec" "$(secret_get "$name" tls.spec)"; then
    log "Secret $name is current"
    return 0
  fi
  issue "$d/tls" "$subj" "$eku" "$san"
  cp "$work/ca.crt" "$d/ca.crt"
  printf '%s' "$spec" >"$d/tls.spec"
  secret_write "$name" kubernetes.io/tls "$d"
}

# nodes: "name ips dnsnames" lines of the agents' nodes (and EXTRA_NODES).
nodes() {
  k get nodes ${NODE_SELECTOR:+-l "$NODE_SELECTOR"} -o go-template='{{range .items}}{{.metadata.name}};{{range .status.addresses}}{{if or (eq .type "InternalIP") (eq .type "ExternalIP")}}{{.address}} {{end}}{{end}};{{range .status.addresses}}{{if eq .type "Hostname"}}{{.address}} {{end}}{{end}}{{"\n"}}{{end}}' ||
    die "cannot list nodes${NODE_SELECTOR:+ ($NODE_SELECTOR)}"
  for n in ${EXTRA_NODES:-}; do echo "$n;;"; done
}

# reserved NODE: true (and a warning) for a node named like an etcd or
# controller identity: its certificate's CN would be that identity.
reserved() {
  case $1 in
    root | kmosix-controller | controller[0-9]*)
      log "WARNING: node $1 has a reserved name (an etcd or controller identity): no certificate, no etcd user; rename it"
      return 0
      ;;
  esac
  return 1
}

step_certs() {
  # The CA: made once, kept; its certificate published apart from its key.
  secret_get "$CA_KEY_SECRET" ca.crt >"$work/ca.crt"
  secret_get "$CA_KEY_SECRET" ca.key >"$work/ca.key"
  if [ -s "$work/ca.crt" ] && [ -s "$work/ca.key" ]; then
    openssl x509 -in "$work/ca.crt" -noout -checkend $((DAYS * 86400)) >/dev/null 2>&1 ||
      log "WARNING: the CA in Secret $CA_KEY_SECRET expires within $DAYS days; delete the Secrets labelled kmosix.io/generated-by=kmosix-pki and rerun to rotate everything"
    log "Secret $CA_KEY_SECRET (the CA) is current"
  else
    secret_exists "$CA_KEY_SECRET" && die "Secret $CA_KEY_SECRET exists without ca.crt and ca.key; not replacing it"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$work/ca.key" -out "$work/ca.crt" -days 3650 \
      -subj "/O=kmosix/CN=kmosix CA ${RELEASE:-kmosix}.$NS" >/dev/null 2>&1 || die "openssl cannot make the CA"
    mkdir -p "$work/ca-key" && cp "$work/ca.crt" "$work/ca.key" "$work/ca-key/"
    secret_write "$CA_KEY_SECRET" Opaque "$work/ca-key"
  fi
  if [ "$(secret_get "$CA_SECRET" ca.crt)" = "$(cat "$work/ca.crt")" ]; then
    log "Secret $CA_SECRET (the CA's certificate) is current"
  else
    mkdir -p "$work/ca" && cp "$work/ca.crt" "$work/ca/"
    secret_write "$CA_SECRET" Opaque "$work/ca"
  fi

  tls_secret "$CONTROLLER_SECRET" "/O=kmosix:controllers/CN=kmosix-controller" serverAuth,clientAuth \
    "$(san_of "$CONTROLLER_DNS" "127.0.0.1")"
  if [ -n "${ETCD_SECRET:-}" ]; then
    tls_secret "$ETCD_SECRET" "/O=kmosix/CN=kmosix-etcd" serverAuth,clientAuth \
      "$(san_of "$ETCD_DNS" "127.0.0.1")"
  fi
  tls_secret "$ETCD_ROOT_SECRET" "/O=kmosix/CN=root" clientAuth ""

  if [ -n "${NODE_ISSUER_SECRET:-}" ]; then
    # Agents get pod certificates from the controllers (signer
    # kmosix.io/node), signed with this CA: nothing per node here.
    tls_secret "$NODE_ISSUER_SECRET" "/O=kmosix/CN=kmosix node issuer ${RELEASE:-kmosix}.$NS" ca ""
    return 0
  fi
  # One certificate per node, all in one Secret (see the chart README).
  d="$work/agents"
  mkdir -p "$d"
  changed=0 count=0
  nodes >"$work/nodes"
  while IFS=';' read -r node ips names; do
    [ -n "$node" ] || continue
    reserved "$node" && continue
    [ -f "$d/$node.crt" ] && continue # listed twice (EXTRA_NODES)
    count=$((count + 1))
    others=""
    for n in $names; do [ "$n" = "$node" ] || others="$others $n"; done
    san=$(san_of "$node$others" "$ips")
    spec="/O=kmosix:nodes/CN=$node|serverAuth,clientAuth|$san"
    secret_get "$AGENT_SECRET" "$node.crt" >"$d/$node.crt"
    secret_get "$AGENT_SECRET" "$node.key" >"$d/$node.key"
    if cert_ok "$d/$node.crt" "$d/$node.key" "$spec" "$(secret_get "$AGENT_SECRET" "$node.spec")"; then
      printf '%s' "$spec" >"$d/$node.spec"
      continue
    fi
    issue "$d/$node" "/O=kmosix:nodes/CN=$node" serverAuth,clientAuth "$san"
    printf '%s' "$spec" >"$d/$node.spec"
    changed=1
  done <"$work/nodes"
  # Nodes gone since the last run drop out of the Secret.
  old=$(k get secret "$AGENT_SECRET" -o go-template='{{range $k, $v := .data}}{{$k}} {{end}}' 2>/dev/null || true)
  for key in $old; do [ -f "$d/$key" ] || changed=1; done
  [ "$count" -gt 0 ] || log "WARNING: no node matches '${NODE_SELECTOR:-}' and no extra nodes: no agent certificates"
  if [ "$changed" = 1 ] || ! secret_exists "$AGENT_SECRET"; then
    secret_write "$AGENT_SECRET" Opaque "$d"
  else
    log "Secret $AGENT_SECRET is current ($count nodes)"
  fi
}

step_etcd_auth() {
  r=${ETCD_ROOT_DIR:-/etc/kmosix/etcd-root}
  [ -s "$r/tls.crt" ] || die "no etcd root certificate in $r (Secret ${ETCD_ROOT_SECRET:-?} mounted?)"
  e() { ETCDCTL_API=3 etcdctl --endpoints="$ETCD_ENDPOINTS" --cacert="${ETCD_CA_FILE:-/etc/kmosix/etcd-ca/ca.crt}" \
    --cert="$r/tls.crt" --key="$r/tls.key" --command-timeout=15s "$@"; }
  i=0
  until e endpoint health >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -le 150 ] || die "etcd at $ETCD_ENDPOINTS not healthy after 5 minutes"
    [ $((i % 15)) = 1 ] && log "waiting for etcd at $ETCD_ENDPOINTS"
    sleep 2
  done
  users=$(e user list) || die "etcdctl user list failed"
  roles=$(e role list) || die "etcdctl role list failed"
  has() { echo "$1" | grep -qx "$2"; }
  user() { has "$users" "$1" || e user add "$1" --no-password >/dev/null || die "user add $1"; }
  role() { has "$roles" "$1" || e role add "$1" >/dev/null || die "role add $1"; }
  user root
  role root
  e user grant-role root root >/dev/null || die "grant root"
  role kmosix-controller
  e role grant-permission kmosix-controller readwrite --prefix=true "$ETCD_PREFIX" >/dev/null || die "grant kmosix-controller"
  user kmosix-controller
  e user grant-role kmosix-controller kmosix-controller >/dev/null || die "grant-role kmosix-controller"
  # and role root: etcd lets only root administer roles, and the leading
  # controller grants and revokes the nodes' record keys (--etcd-node-grants)
  e user grant-role kmosix-controller root >/dev/null || die "grant-role kmosix-controller root"
  want=""
  nodes >"$work/nodes"
  while IFS=';' read -r node _ _; do
    [ -n "$node" ] || continue
    reserved "$node" && continue
    case " $want " in *" $node "*) continue ;; esac # listed twice (EXTRA_NODES)
    want="$want $node"
    role "kmosix-node-$node"
    e role grant-permission "kmosix-node-$node" read --prefix=true "$ETCD_PREFIX" >/dev/null &&
      e role grant-permission "kmosix-node-$node" readwrite "${ETCD_PREFIX}nodes/$node" >/dev/null ||
      die "grant kmosix-node-$node"
    # the prefix-wide writes of earlier chart versions: the controller now
    # grants single records (absent: etcdctl fails, nothing to do)
    e role revoke-permission "kmosix-node-$node" --prefix=true "${ETCD_PREFIX}workloads/" >/dev/null 2>&1 || true
    e role revoke-permission "kmosix-node-$node" --prefix=true "${ETCD_PREFIX}migrations/" >/dev/null 2>&1 || true
    user "$node"
    e user grant-role "$node" "kmosix-node-$node" >/dev/null || die "grant-role $node"
  done <"$work/nodes"
  for rl in $roles; do
    case $rl in kmosix-node-*) ;; *) continue ;; esac
    node=${rl#kmosix-node-}
    case " $want " in *" $node "*) continue ;; esac
    e user delete "$node" >/dev/null 2>&1 || true
    e role delete "$rl" >/dev/null || die "role delete $rl"
    log "node $node is gone: deleted its etcd user and role"
  done
  e auth enable >/dev/null || die "auth enable"
  log "etcd auth enabled: root, kmosix-controller (readwrite $ETCD_PREFIX), nodes:${want:- none}"
}

step_cleanup() {
  sel="kmosix.io/generated-by=kmosix-pki${SECRET_LABELS:+,$SECRET_LABELS}"
  k delete secret -l "$sel" --ignore-not-found || die "cannot delete the Secrets ($sel)"
}

[ $# -gt 0 ] || die "usage: $0 certs|etcd-auth|cleanup..."
for step in "$@"; do
  case $step in
    certs) step_certs ;;
    etcd-auth) step_etcd_auth ;;
    cleanup) step_cleanup ;;
    *) die "unknown step $step" ;;
  esac
done
log "done: $*"
