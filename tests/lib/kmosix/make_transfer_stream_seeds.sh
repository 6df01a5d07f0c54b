#!/bin/sh
# Seeds for the transfer stream fuzz target from a real CRIU dump:
#   tests/lib/kmosix/make_transfer_stream_seeds.sh <transfer_stream_fuzz_regress> <out-dir>
# Needs root, criu >= 4 and a C compiler. Dumps a tiny process (64 KiB of
# memory, a pipe with data, an open file), makes a real overlayfs upperdir (a
# copied-up file, a whiteout, an opaque directory, a symlink, a fifo) and
# encodes both, with CRIU's log as the log section, into
# <out-dir>/dump-{sized,open}[-undigested] (transfer_stream_fuzz.cc,
# FromDump). Fold them into the corpus with the fuzzer's -merge=1 or copy
# them in.
set -eu
regress=$1
out=$2
criu=${CRIU:-criu}
work=$(mktemp -d /tmp/kmx-stream-seeds-XXXXXX)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  umount "$work/merged" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/tiny.c" <<'C'
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char** argv) {
  size_t n = 64 * 1024;
  char* p = malloc(n);
  for (size_t i = 0; i < n; i++) p[i] = (char)(i * 7);
  int fds[2];
  if (argc < 2 || pipe(fds) != 0 || write(fds[1], "hi", 2) != 2) return 1;
  int f = open(argv[1], O_RDWR | O_CREAT, 0600);
  if (f < 0 || write(f, "data\n", 5) != 5) return 1;
  if (write(1, "ready\n", 6) != 6) return 1;
  for (;;) pause();
}
C
${CC:-cc} -O1 -o "$work/tiny" "$work/tiny.c"
mkfifo "$work/ready"
setsid "$work/tiny" "$work/data.txt" </dev/null >"$work/ready" 2>/dev/null &
pid=$!
read -r _ <"$work/ready"  # the process is set up; dump it
mkdir "$work/images"
"$criu" dump -t "$pid" -D "$work/images" -o dump.log -v2 --shell-job
pid=

mkdir "$work/lower" "$work/upper" "$work/ovl-work" "$work/merged"
mkdir -p "$work/lower/etc" "$work/lower/var/cache"
echo "127.0.0.1 localhost" >"$work/lower/etc/hosts"
echo gone >"$work/lower/etc/gone"
echo old >"$work/lower/var/cache/old"
mount -t overlay overlay \
  -o "lowerdir=$work/lower,upperdir=$work/upper,workdir=$work/ovl-work" "$work/merged"
echo "10.0.0.1 peer" >>"$work/merged/etc/hosts"  # copy-up
rm "$work/merged/etc/gone"                        # whiteout
rm -r "$work/merged/var/cache"                    # opaque on re-creation
mkdir "$work/merged/var/cache"
echo new >"$work/merged/var/cache/new"
ln -s ../etc/hosts "$work/merged/var/hosts"
mkfifo "$work/merged/var/fifo"
umount "$work/merged"

"$regress" --from-dump "$work/images" "$work/upper" "$work/images/dump.log" "$out"
