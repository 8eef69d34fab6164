#!/usr/bin/env bash
# Builds the cached pieces of a real Xen host: the hypervisor ELF, the dom0
# kernel, the dom0 root (debootstrap, pruned, with the needed modules) packed
# as a gzip cpio archive, and the PV guest's busybox initramfs.
#
# Everything lands in $CACHE_DIR/<key>/, where <key> hashes this recipe (this
# file, common.sh and the guest init), so a second run reuses it and any change
# to the recipe rebuilds it. Prints the cache directory on stdout.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

key=$(cat "$XEN_DIR/lib/build-root.sh" "$XEN_DIR/lib/common.sh" "$XEN_DIR/guest/init" |
    sha256sum | cut -c1-16)
out=$CACHE_DIR/host-$key
if [ -f "$out/complete" ]; then
    log "cached host pieces: $out"
    echo "$out"
    exit 0
fi

rm -rf "$out"
mkdir -p "$out" "$CACHE_DIR/debs"
scratch=$(mktemp -d "$CACHE_DIR/build.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

mirror=$(debian_mirror)
[ -n "$mirror" ] || die "no bookworm mirror in apt's configuration"

# 1. dom0 root: Debian's own Xen tools and C xenstored.
t0=$(now_ms)
root=$scratch/root
log "debootstrap bookworm from $mirror (packages: $DOM0_PACKAGES)"
debootstrap --variant=minbase --include="$DOM0_PACKAGES" bookworm "$root" "$mirror" \
    >"$scratch/debootstrap.log" 2>&1 || {
    tail -30 "$scratch/debootstrap.log" >&2
    die "debootstrap failed"
}
log "debootstrap took $(($(now_ms) - t0)) ms"

# 2. The hypervisor must match the tools debootstrap installed.
xen_version=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${Version}' xen-utils-4.17)
# apt-get download needs package lists (a fresh machine may have none yet).
apt-cache show linux-image-amd64 >/dev/null 2>&1 || apt-get update -qq
kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[ -n "$kernel_pkg" ] || die "cannot resolve the kernel package of linux-image-amd64"
(cd "$CACHE_DIR/debs" && apt-get download -q "xen-hypervisor-4.17-amd64=$xen_version" "$kernel_pkg" \
    >"$scratch/download.log" 2>&1) || {
    cat "$scratch/download.log" >&2
    die "apt-get download failed"
}
xen_deb=$(ls "$CACHE_DIR"/debs/xen-hypervisor-4.17-amd64_"${xen_version//:/%3a}"_amd64.deb)
kernel_deb=$(ls -t "$CACHE_DIR"/debs/"$kernel_pkg"_*_amd64.deb | head -1)

dpkg-deb -x "$xen_deb" "$scratch/xen"
# QEMU's multiboot loader takes the uncompressed ELF.
gunzip -c "$scratch"/xen/boot/xen-4.17-amd64.gz >"$out/xen"

dpkg-deb -x "$kernel_deb" "$scratch/kernel"
kver=$(basename "$scratch"/kernel/lib/modules/*)
cp "$scratch/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
depmod -b "$scratch/kernel" "$kver"

# Copies the named modules and everything they depend on into a root.
install_modules() {
    local dest=$1
    shift
    local mod file
    for mod in "$@"; do
        modprobe -d "$scratch/kernel" -S "$kver" --show-depends "$mod" |
            awk '$1 == "insmod" { print $2 }'
    done | sort -u | while read -r file; do
        mkdir -p "$dest/$(dirname "${file#"$scratch/kernel"}")"
        cp "$file" "$dest/${file#"$scratch/kernel"}"
    done
    cp "$scratch/kernel/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} \
        "$dest/lib/modules/$kver/"
    depmod -b "$dest" "$kver"
}

# 3. Prune what dom0 never runs, then add the modules.
rm -rf "$root"/usr/share/{doc,man,info,locale,i18n,zoneinfo} "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old "$root"/usr/lib/python3* \
    "$root"/usr/lib/xen-4.17/lib/python* "$root"/usr/share/python3* "$root"/usr/lib/x86_64-linux-gnu/perl* \
    "$root"/usr/lib/x86_64-linux-gnu/gconv "$root"/usr/lib/xen-4.17/boot
install_modules "$root" "${DOM0_MODULES[@]}"
mkdir -p "$root"/var/log/xen "$root"/var/run/xen "$root"/var/lib/xen "$root"/run "$root"/xentest

# The PV guest boots the dom0 kernel with a busybox initramfs; dom0 carries both.
guest=$scratch/guest
mkdir -p "$guest"/{bin,dev,proc,sys,mnt}
cp /bin/busybox "$guest/bin/busybox"
install_modules "$guest" "${GUEST_MODULES[@]}"
install -m 0755 "$XEN_DIR/guest/init" "$guest/init"
(cd "$guest" && find . | cpio -o -H newc --quiet | gzip -1) >"$root/xentest/guest.cpio.gz"
cp "$out/vmlinuz" "$root/xentest/vmlinuz"

(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/dom0-base.cpio.gz"
printf 'xen %s\nkernel %s (%s)\nmirror %s\n' "$xen_version" "$kver" "$(basename "$kernel_deb")" "$mirror" \
    >"$out/versions"
touch "$out/complete"
log "host pieces built in $(($(now_ms) - t0)) ms: $out ($(du -sh "$out/dom0-base.cpio.gz" | cut -f1) dom0 root)"
echo "$out"
