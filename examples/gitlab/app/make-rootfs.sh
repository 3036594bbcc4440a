#!/bin/sh
# Writes rootfs.tar next to this script: a static busybox root filesystem, the base this example's Dockerfile ADDs so
# it builds where nothing can be pulled. Needs busybox-static (apt-get install -y busybox-static). Byte-for-byte
# reproducible (fixed mtimes, owners and order), so its ADD step has the same cache key on every machine.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || { echo "make-rootfs.sh: busybox not found: apt-get install -y busybox-static" >&2; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
mkdir -p "$root/bin" "$root/etc" "$root/root" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/work"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$here/rootfs.tar" .
echo "wrote $here/rootfs.tar"
