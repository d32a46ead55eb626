#!/usr/bin/env bash
# Builds the test guest into DIR (default ~/.cache/keel/guest): Debian's kernel
# (linux-image-amd64, unpacked, not installed) and a busybox initramfs whose init prints a
# marker on the serial console, lists its disks, powers off on the ACPI power button and
# serves HTTP on port 8080. Idempotent and safe to run concurrently (flock).
#
# Kernel command line switches the init understands:
#   keel.marker=TEXT   printed as "KEEL-GUEST up marker=TEXT"
#   keel.serve=no      do not serve port 8080 (a guest that never becomes ready)
#   keel.net=dhcp      configure eth0 by DHCP (a VPC network) instead of QEMU's user network;
#                      prints "KEEL-GUEST ip ADDRESS"
#   keel.ping=ADDRESS  ping ADDRESS every second, printing "KEEL-GUEST ping ADDRESS ok|fail"
#   keel.data=TEXT     write the file "marker" holding TEXT to the disk whose serial is "data"
#                      (a tar archive on the raw disk) unless it holds one already
#   keel.clobber=TEXT  write it even if it does
# With a disk "data", every boot prints "KEEL-GUEST data file=TEXT" (or "file=none").
set -euo pipefail
dir="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/keel/guest}"
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
# Bump when the guest changes: a cached older guest is rebuilt.
version=6
[ -s "$dir/vmlinuz" ] && [ -s "$dir/initrd.img" ] && [ "$(cat "$dir/version" 2>/dev/null)" = "$version" ] && exit 0

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
# The versioned package the meta package points at.
image="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
[ -n "$image" ] || { echo "build.sh: cannot resolve linux-image-amd64" >&2; exit 1; }
apt-get download "$image" >/dev/null 2>&1 || { apt-get update -qq && apt-get download "$image"; }
dpkg-deb -x ./*.deb x
modules="$(echo x/lib/modules/*/kernel)"

root="$work/root"
mkdir -p "$root"/{bin,proc,sys,dev,tmp,www,var/log,lib/modules,etc/acpi/PWRF,usr/share/udhcpc}
cat > "$root/usr/share/udhcpc/default.script" <<'SCRIPT'
#!/bin/sh
# busybox udhcpc's hook: apply the lease.
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    echo "KEEL-GUEST ip $ip"
    ;;
esac
SCRIPT
chmod +x "$root/usr/share/udhcpc/default.script"
cp /bin/busybox "$root/bin/busybox"
for applet in sh mount insmod ip echo cat httpd acpid poweroff sleep ls hostname udhcpc ping tar sync; do
  ln -s busybox "$root/bin/$applet"
done
for m in net/core/failover drivers/net/net_failover drivers/virtio/virtio_ring \
         drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci drivers/net/virtio_net \
         drivers/block/virtio_blk drivers/acpi/button drivers/input/evdev; do
  cp "$modules/$m.ko" "$root/lib/modules/"
done
cat > "$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in failover net_failover virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev \
         virtio_pci virtio_net virtio_blk button evdev; do
  insmod /lib/modules/$m.ko 2>/dev/null
done
marker=
serve=yes
net=user
target=
keep=
clobber=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    keel.marker=*) marker="${arg#keel.marker=}" ;;
    keel.serve=*) serve="${arg#keel.serve=}" ;;
    keel.net=*) net="${arg#keel.net=}" ;;
    keel.ping=*) target="${arg#keel.ping=}" ;;
    keel.data=*) keep="${arg#keel.data=}" ;;
    keel.clobber=*) clobber="${arg#keel.clobber=}" ;;
  esac
done
echo "KEEL-GUEST up marker=$marker"
for d in /sys/block/vd*; do
  [ -e "$d" ] && echo "KEEL-GUEST disk $(cat $d/serial 2>/dev/null) sectors=$(cat $d/size)"
done
data=
for d in /sys/block/vd*; do
  [ -e "$d" ] && [ "$(cat $d/serial 2>/dev/null)" = data ] && data="/dev/${d##*/}"
done
if [ -n "$data" ]; then
  have="$(tar -xOf "$data" marker 2>/dev/null)"
  text="${clobber:-}"
  [ -z "$text" ] && [ -z "$have" ] && text="$keep"
  if [ -n "$text" ]; then
    (cd /tmp && echo "$text" > marker && tar -cf "$data" marker) && sync && have="$text" \
      && echo "KEEL-GUEST data wrote $text"
  fi
  echo "KEEL-GUEST data file=${have:-none}"
fi
printf '#!/bin/sh\necho "KEEL-GUEST power button: powering off"\npoweroff -f\n' > /etc/acpi/PWRF/00000080
chmod +x /etc/acpi/PWRF/00000080
# acpid logs to /var/log/acpid.log; in the foreground so that it dies with init.
acpid -f -c /etc/acpi &
ip link set lo up
if ip link set eth0 up 2>/dev/null; then
  if [ "$net" = dhcp ]; then
    udhcpc -i eth0 -n -q -t 120 -T 1 -s /usr/share/udhcpc/default.script || echo "KEEL-GUEST dhcp failed"
  else
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
  fi
fi
if [ -n "$target" ]; then
  (while true; do
     if ping -c 1 -W 1 "$target" >/dev/null 2>&1; then echo "KEEL-GUEST ping $target ok"; else echo "KEEL-GUEST ping $target fail"; fi
     sleep 1
   done) &
fi
echo "guest $marker" > /www/index.html
if [ "$serve" = yes ]; then
  httpd -p 8080 -h /www && echo "KEEL-GUEST serving 8080"
fi
while true; do sleep 3600; done
INIT
chmod +x "$root/init"
# An uncompressed newc archive: the kernel takes it as is.
(cd "$root" && find . | cpio -o -H newc --quiet) > "$work/initrd.img"
cp x/boot/vmlinuz-* "$work/vmlinuz"
mv "$work/initrd.img" "$dir/initrd.img.tmp" && mv "$work/vmlinuz" "$dir/vmlinuz.tmp"
mv "$dir/vmlinuz.tmp" "$dir/vmlinuz" && mv "$dir/initrd.img.tmp" "$dir/initrd.img"
echo "$version" > "$dir/version"
echo "build.sh: the test guest is in $dir"
