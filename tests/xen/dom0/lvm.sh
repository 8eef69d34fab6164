# LVM on a loop-backed physical volume, for the lvm-* scenarios (sourced).
#
# dom0 has Debian's lvm2 and dm-mod but no udev: libdevmapper creates the
# /dev/mapper nodes and the /dev/VG/LV links itself (DM_DISABLE_UDEV, and
# lvm told not to wait for udev), and dmeventd is never started (no
# monitoring). The volume group lives on a sparse image in dom0's tmpfs,
# bound to a loop device the scenario creates; lvm_down removes everything
# again, and xt_cleanup does it for a scenario that ended early.
# shellcheck shell=bash
# shellcheck source=lib.sh
source /xentest/lib.sh

LVM_VG=xtvg
LVM_PV_IMG=/tmp/lvm-pv.img
export DM_DISABLE_UDEV=1

lvm_configure() {
    mkdir -p /etc/lvm /run/lock/lvm /run/lvm
    cat >/etc/lvm/lvmlocal.conf <<'EOF'
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    use_devicesfile = 0
}
global {
    use_lvmpolld = 0
}
backup {
    backup = 0
    archive = 0
}
EOF
}

# Runs an lvm command, its output as evidence; its status is the command's.
lvm_run() {
    local out rc
    out=$("$@" 2>&1)
    rc=$?
    [ -n "$out" ] && printf '%s\n' "$out" | while IFS= read -r l; do xt_evidence "$1: $l"; done
    return $rc
}

# lvm_up <MiB>: a volume group $LVM_VG with 1 MiB extents on a fresh loop
# device; sets LVM_PV (the loop device).
lvm_up() {
    lvm_configure
    rm -f "$LVM_PV_IMG"
    truncate -s "$1M" "$LVM_PV_IMG"
    LVM_PV=$(losetup -f --show "$LVM_PV_IMG") || return 1
    echo "$LVM_PV" >"$XT_STATE/lvm-pv"
    lvm_run pvcreate -q -y "$LVM_PV" && lvm_run vgcreate -q -s 1M "$LVM_VG" "$LVM_PV"
}

# The device number (maj:min, decimal) and diskseq of a block device path.
dev_of() {
    local hex
    hex=$(stat -L -c '%t:%T' "$1" 2>/dev/null) || return 1
    echo "$((16#${hex%:*})):$((16#${hex#*:}))"
}
diskseq_of() { cat "/sys/dev/block/$(dev_of "$1")/diskseq" 2>/dev/null; }

# tag_device <device> <tag> [sector]: writes "XENTEST-IMAGE <tag>" at the
# sector (default 0), bypassing the page cache.
tag_device() {
    printf 'XENTEST-IMAGE %s\n' "$2" |
        dd of="$1" bs=512 seek="${3:-0}" conv=sync,fsync oflag=direct status=none
}

# dm devices in the kernel (dmsetup's table names), one per line.
dm_names() { dmsetup ls 2>/dev/null | awk '$1 != "No" { print $1 }'; }

# Removes the volume group, the physical volume and its loop device; checks
# that nothing of them is left.
lvm_down() {
    local pv
    pv=$(cat "$XT_STATE/lvm-pv" 2>/dev/null)
    lvm_run vgchange -q -an "$LVM_VG"
    lvm_run lvremove -q -f "$LVM_VG"
    lvm_run vgremove -q -f "$LVM_VG"
    [ -n "$pv" ] && lvm_run pvremove -q -f "$pv"
    [ -n "$pv" ] && losetup -d "$pv"
    xt_expect_eq "no device-mapper device left" "$(dm_names | tr '\n' ' ')" ""
    xt_check "no loop device left for the physical volume" wait_for 10 no_loops_of "$LVM_PV_IMG"
    rm -f "$LVM_PV_IMG" "$XT_STATE/lvm-pv"
    xt_check "no /dev/$LVM_VG left" test ! -e "/dev/$LVM_VG"
}
