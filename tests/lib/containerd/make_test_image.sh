#!/bin/sh
# Builds the containerd adapter's test image as an OCI image-layout tarball:
# a rootfs holding only the statically linked /bin/busybox and its applet
# symlinks, default command = a counter loop (prints "tick N" every 100 ms and
# writes N to /counter in the container's rootfs).
#
# Usage: make_test_image.sh OUT.tar IMAGE_NAME
# Needs: /bin/busybox (busybox-static), python3, scripts/build-image.
set -eu
out=$1
name=$2
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
builder="$repo/scripts/build-image"
busybox=${BUSYBOX:-/bin/busybox}

[ -x "$builder" ] || { echo "make_test_image: $builder missing" >&2; exit 3; }
[ -x "$busybox" ] || { echo "make_test_image: $busybox missing (apt install busybox-static)" >&2; exit 3; }
if ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
  # Without `file`, fall back to ldd's verdict.
  if ldd "$busybox" >/dev/null 2>&1; then
    echo "make_test_image: $busybox is not statically linked" >&2; exit 3
  fi
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/rootfs
mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/proc" "$root/sys" "$root/dev" "$root/run"
cp "$busybox" "$root/bin/busybox"
for a in sh sleep cat echo ls mkdir rm touch date seq true false ps kill grep wc head tail; do
  ln -s busybox "$root/bin/$a"
done
chmod 1777 "$root/tmp"
echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"

loop='i=0; while true; do i=$((i+1)); echo "tick $i"; echo "$i" > /counter; sleep 0.1; done'
python3 "$builder" --rootfs "$root" --name "$name" --out "$out" \
  --cmd "$(python3 -c 'import json,sys; print(json.dumps(["/bin/sh","-c",sys.argv[1]]))' "$loop")" \
  --env PATH=/bin --workdir /
