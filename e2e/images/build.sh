#!/bin/sh
# Builds the pod tests' OCI images offline from Debian's busybox-static, into the image
# layout OUT with two tags: `busybox` (busybox's applets, CMD sh) and `pause` (the pods'
# sandbox image: the same layer, ENTRYPOINT sleep infinity).
# usage: build.sh OUT
set -eu
OUT=$1
BB=${BUSYBOX:-/usr/bin/busybox}   # must be static (busybox-static)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/keel-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
rm -rf "$OUT"
umoci init --layout "$OUT"
umoci new --image "$OUT:busybox"
umoci unpack --image "$OUT:busybox" "$WORK/bundle"
R="$WORK/bundle/rootfs"
mkdir -p "$R/bin" "$R/sbin" "$R/usr/bin" "$R/usr/sbin" "$R/etc" "$R/root" "$R/tmp" "$R/var/www" \
  "$R/proc" "$R/sys" "$R/dev"
chmod 1777 "$R/tmp"
install -m 0755 "$BB" "$R/bin/busybox"
# One link per applet at its usual path (bin/sh, usr/bin/wget, sbin/ip, ...): `busybox
# --install -s` would point them at the host's path of busybox.
"$BB" --list-full | while read -r p; do
  [ "$p" = bin/busybox ] && continue
  ln -sf /bin/busybox "$R/$p"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"
umoci repack --image "$OUT:busybox" "$WORK/bundle"
umoci config --image "$OUT:busybox" --architecture amd64 --os linux \
  --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin --config.workingdir / --config.cmd sh
umoci config --image "$OUT:busybox" --tag pause --clear config.cmd \
  --config.entrypoint /bin/sleep --config.entrypoint infinity
umoci gc --layout "$OUT"
