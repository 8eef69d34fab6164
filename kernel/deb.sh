#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Builds xen-blkback-diskseq-dkms_<version>_all.deb: the patched blkback
# source under /usr/src/xen-blkback-diskseq-<version>/ with its dkms.conf,
# which DKMS builds and installs for each installed 6.1 kernel (and for each
# one installed later), as Debian admins install out-of-tree modules.
#
#   kernel/deb.sh [ABI]   # the patched source comes from kernel/build.sh ABI
#
# The package version is our patch's version, then the Debian kernel version
# whose source it carries. Prints the .deb path on stdout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${KERNEL_OUT:-$here/out}
# Our version of the patch: bump when kernel/patches changes.
PATCH_VERSION=2

"$here/build.sh" "$@" >/dev/null
kernel_version=$(awk '$1 == "version" { print $2 }' "$out/build-info")
version=$PATCH_VERSION+deb${kernel_version//-/.}
name=xen-blkback-diskseq

pkg=$out/deb
rm -rf "$pkg"
src=$pkg/usr/src/$name-$version
mkdir -p "$src" "$pkg/DEBIAN" "$pkg/usr/share/doc/$name-dkms"
cp "$out"/tree/drivers/block/xen-blkback/{Makefile,*.c,*.h} "$src/"
sed "s/@VERSION@/$version/" "$here/dkms/dkms.conf.in" >"$src/dkms.conf"
for script in postinst prerm; do
    sed "s/@VERSION@/$version/" "$here/dkms/$script" >"$pkg/DEBIAN/$script"
    chmod 0755 "$pkg/DEBIAN/$script"
done
# The source is Linux's (the Debian kernel source package's copyright
# applies: GPL-2.0, xenbus.c GPL-2.0-or-later); the patch and the packaging
# are GPL-2.0 (kernel/LICENSE).
{
    echo "Source: drivers/block/xen-blkback/ of Debian's linux-source-6.1 $kernel_version,"
    echo "with the patches in this directory applied."
    echo "Copyright: the Linux kernel's authors; see the headers of each file."
    echo "License: GPL-2.0 (xenbus.c: GPL-2.0-or-later); /usr/share/common-licenses/GPL-2"
    echo
    cat "$here/LICENSE"
} >"$pkg/usr/share/doc/$name-dkms/copyright"
cp "$here"/patches/*.patch "$pkg/usr/share/doc/$name-dkms/"
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: $name-dkms
Version: $version
Architecture: all
Section: kernel
Priority: optional
Depends: dkms (>= 3)
Maintainer: diskseq project <diskseq@localhost>
Description: xen-blkback that refuses a disk whose sequence number differs (DKMS)
 Linux 6.1's Xen block backend with the diskseq check: when the toolstack
 publishes the disk's sequence number in the "diskseq" node next to
 "physical-device", blkback serves the disk only if the disk it opened has
 that number, and announces the open in the "opened" node. Built by DKMS
 for each installed 6.1 kernel; replaces the stock module from its next load.
CONTROL
deb=$out/${name}-dkms_${version}_all.deb
dpkg-deb --root-owner-group --build "$pkg" "$deb" >/dev/null
echo "$deb"
