#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Builds xen-blkback.ko with the diskseq check for one Debian 6.1 kernel ABI.
#
#   kernel/build.sh [ABI]      # e.g. 6.1.0-57-amd64; default: the kernel
#                              # Debian's linux-image-amd64 depends on (the
#                              # one the real-Xen harness boots as dom0)
#
# Fetches with apt Debian's linux-headers-ABI (installed: kbuild needs its
# host tools at their packaged paths) and linux-source-6.1 of the same
# version as that kernel (downloaded, never installed), extracts only
# drivers/block/xen-blkback/ and checkpatch, applies kernel/patches/*.patch,
# runs checkpatch --strict on them and builds the module.
#
# Environment: KERNEL_CACHE (default kernel/cache) keeps the downloaded .deb
# and the extracted pristine source; KERNEL_OUT (default kernel/out) gets
# xen-blkback.ko, the patched source tree (what the DKMS package ships) and
# build-info. Runs as root (apt-get install). Prints KERNEL_OUT on stdout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${KERNEL_CACHE:-$here/cache}
out=${KERNEL_OUT:-$here/out}
log() { printf 'kernel/build: %s\n' "$*" >&2; }
die() {
    printf 'kernel/build: FATAL: %s\n' "$*" >&2
    exit 1
}

# 1. The ABI, resolved as tests/xen/lib/build-root.sh resolves the dom0
#    kernel (it moves with Debian's security updates: never hard-coded).
apt-cache show linux-image-amd64 >/dev/null 2>&1 || apt-get update -qq
abi=${1:-$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { sub("linux-image-", "", $2); print $2; exit }')}
[ -n "$abi" ] || die "cannot resolve the kernel ABI of linux-image-amd64"
# The source package version of that kernel: linux-source-6.1 of the same
# version is the tree it was built from.
version=$(apt-cache show "linux-image-$abi" | awk '/^Version:/ { print $2; exit }')
[ -n "$version" ] || die "no package linux-image-$abi in apt's lists"
log "ABI $abi, Debian kernel $version"

# 2. Headers (the build system and the kernel's Module.symvers).
headers=/usr/src/linux-headers-$abi
if [ ! -f "$headers/Module.symvers" ]; then
    log "installing linux-headers-$abi"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "linux-headers-$abi" >/dev/null
fi

# 3. Only blkback's directory and checkpatch of the source (~140 MB .deb,
#    whose .tar.xz takes ~20 s to scan), cached per version.
src=$cache/linux-source-$version
if [ ! -f "$src/complete" ]; then
    mkdir -p "$cache/debs"
    deb=$cache/debs/linux-source-6.1_${version}_all.deb
    if [ ! -f "$deb" ]; then
        log "downloading linux-source-6.1=$version"
        (cd "$cache/debs" && apt-get download -q "linux-source-6.1=$version" >/dev/null)
    fi
    rm -rf "$src"
    mkdir -p "$src"
    log "extracting drivers/block/xen-blkback and checkpatch"
    dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/src/linux-source-6.1.tar.xz |
        tar -xJ -C "$src" --strip-components=1 \
            linux-source-6.1/drivers/block/xen-blkback \
            linux-source-6.1/scripts/checkpatch.pl \
            linux-source-6.1/scripts/spelling.txt \
            linux-source-6.1/scripts/const_structs.checkpatch
    touch "$src/complete"
fi

# 4. Patch a copy of the pristine directory.
rm -rf "$out"
mkdir -p "$out/tree/drivers/block"
cp -r "$src/drivers/block/xen-blkback" "$out/tree/drivers/block/"
for patch in "$here"/patches/*.patch; do
    log "applying $(basename "$patch")"
    patch -s --batch -p1 -d "$out/tree" <"$patch"
    # --no-tree: only part of the tree is here; the checks are the same.
    perl "$src/scripts/checkpatch.pl" --strict --no-tree --no-summary --quiet "$patch" ||
        die "checkpatch --strict reports problems in $(basename "$patch")"
done

# 5. Build against the headers (same compiler Debian built the kernel with:
#    the host is Debian 12 too). Warnings are errors: the patch adds none.
log "building xen-blkback.ko"
cp -r "$out/tree/drivers/block/xen-blkback" "$out/src"
make -s -C "$headers" M="$out/src" CONFIG_XEN_BLKDEV_BACKEND=m KCFLAGS=-Werror modules >&2
cp "$out/src/xen-blkback.ko" "$out/xen-blkback.ko"
vermagic=$(strings "$out/xen-blkback.ko" | sed -n 's/^vermagic=//p')
case $vermagic in
"$abi "*) ;;
*) die "vermagic '$vermagic' is not for $abi" ;;
esac
printf 'abi %s\nversion %s\nvermagic %s\npatches %s\n' "$abi" "$version" "$vermagic" \
    "$(cd "$here/patches" && sha256sum ./*.patch | sha256sum | cut -c1-16)" >"$out/build-info"
log "built $out/xen-blkback.ko ($vermagic)"
echo "$out"
