# Shared helpers for the host side of the real-Xen harness (sourced, not run).
# shellcheck shell=bash
# shellcheck disable=SC2034 # variables here are used by the files that source this one

XEN_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_DIR=$(cd "$XEN_DIR/../.." && pwd)
CACHE_DIR=${XENTEST_CACHE:-$XEN_DIR/cache}
WORK_DIR=${XENTEST_WORK:-$XEN_DIR/work}

# The dom0 modules the scenarios need (and their dependencies, resolved by
# modprobe): the Xen device drivers, blkback to serve disks, blkfront so dom0
# can attach its own disks, loop for file targets, dm-mod for LVM volumes
# (issue 14's lvm-* scenarios).
DOM0_MODULES=(xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs loop dm-mod xen-blkback xen-blkfront)
GUEST_MODULES=(xen-blkfront)

# Packages inside the dom0 root, beyond debootstrap's minbase: lvm2 for the
# LVM volumes and fdisk for sfdisk (partition tables) of issue 14's
# lvm-* and partition-* scenarios.
DOM0_PACKAGES=xen-utils-4.17,xenstore-utils,kmod,util-linux,procps,lvm2,fdisk

log() { printf 'xentest: %s\n' "$*" >&2; }
die() {
    printf 'xentest: FATAL: %s\n' "$*" >&2
    exit 1
}

# The Debian mirror apt is configured with: debootstrap must use the same one
# (the machine reaches no other).
debian_mirror() {
    apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(IDENTIFIER)' |
        awk '$2 == "bookworm" && $3 == "Packages" { print $1; exit }'
}

# Seconds since the epoch with milliseconds, for phase timings.
now_ms() { date +%s%3N; }
