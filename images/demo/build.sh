#!/usr/bin/env bash
# Builds the demo workload image as an OCI image-layout tarball.
#   images/demo/build.sh OUT.tar        (e.g. build/images/demo.tar)
# Image: kmosix.local/demo:latest, rootfs = /bin/busybox (busybox-static) with
# applet symlinks, /bin/kmosix-demo (gcc -static -O2), /tmp, /etc/{passwd,group}.
# Default command: /bin/kmosix-demo --mem 16 --status /tmp/status
# Incremental: does nothing when OUT.tar is newer than every source
# (this script, kmosix-demo.c, scripts/build-image, /usr/bin/busybox).
# Env: CC (default gcc), FORCE=1 to rebuild anyway.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -eq 1 ] || { echo "usage: $0 OUT.tar" >&2; exit 2; }
out=$1
case $out in /*) ;; *) out=$PWD/$out ;; esac
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || busybox=/usr/bin/busybox
[ -x "$busybox" ] || { echo "build.sh: busybox-static not found (apt-get install busybox-static)" >&2; exit 1; }
if ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked' && ldd "$busybox" >/dev/null 2>&1; then
  echo "build.sh: $busybox is dynamically linked; install busybox-static" >&2; exit 1
fi

sources=("$here/build.sh" "$here/kmosix-demo.c" "$root/scripts/build-image" "$busybox")
if [ -z "${FORCE:-}" ] && [ -f "$out" ]; then
  newer=0
  for s in "${sources[@]}"; do [ "$s" -nt "$out" ] && newer=1; done
  if [ $newer = 0 ]; then echo "build.sh: $out is up to date"; exit 0; fi
fi

mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$(dirname "$out")/.demo-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs"/{bin,tmp,etc,proc,sys,dev,run,var/tmp}
chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"

${CC:-gcc} -static -O2 -Wall -o "$rootfs/bin/kmosix-demo" "$here/kmosix-demo.c"
strip "$rootfs/bin/kmosix-demo" 2>/dev/null || true
cp "$busybox" "$rootfs/bin/busybox"
for a in sh ash cat ls echo sleep ps kill mkdir rm cp mv touch grep sed awk head tail wc \
         date env id stat sync true false test [ printf du df mount umount hostname ip \
         ping wget nc vi tee sort uniq cut tr find xargs dd md5sum sha256sum seq uname \
         which top free; do
  ln -sf busybox "$rootfs/bin/$a"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"

python3 "$root/scripts/build-image" \
  --rootfs "$rootfs" \
  --name kmosix.local/demo:latest \
  --cmd '["/bin/kmosix-demo","--mem","16","--status","/tmp/status"]' \
  --label org.opencontainers.image.title=kmosix-demo \
  --out "$out"
