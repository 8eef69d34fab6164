# Issue 14: LVM logical volumes through block-diskseq on real device-mapper.
#
# A volume group on a loop-backed physical volume, two tagged logical
# volumes. Each is attached with block-diskseq as a `phy` block device: to
# dom0 by /dev/VG/LV (read-only) and by /dev/mapper/VG-LV (read-write, a
# write through blkfront must land in the volume), then to a PV guest (one
# volume read-only, the other writable). Checked each time: blkback serves
# the volume named (sysfs physical_device = the record = the LV's device
# number, the diskseq node = the LV's dm disk's diskseq), the reader sees the
# volume's own tag, and detach leaves the volume as it was and nothing else
# (no loop device, no backend). A /dev/mapper path whose node belongs to
# another dm device is refused by the script's dm name check.
# shellcheck shell=bash
# shellcheck source=../lvm.sh
source /xentest/lvm.sh

lvm_up 64 || {
    xt_fail_check "volume group on a loop device"
    exit 1
}
lvm_run lvcreate -q -y -n disk-a -L 8M "$LVM_VG"
lvm_run lvcreate -q -y -n disk-b -L 8M "$LVM_VG"
# dm names double each "-" inside the VG and LV names: xtvg-disk--a.
map_a=$(cat "/sys/dev/block/$(dev_of "/dev/$LVM_VG/disk-a")/dm/name" 2>/dev/null)
map_b=$(cat "/sys/dev/block/$(dev_of "/dev/$LVM_VG/disk-b")/dm/name" 2>/dev/null)
xt_expect_eq "dm names of the LVs (each - doubled)" "$map_a $map_b" "$LVM_VG-disk--a $LVM_VG-disk--b"
xt_check "LVs /dev/$LVM_VG/disk-a and /dev/mapper/$map_b exist" \
    test -b "/dev/$LVM_VG/disk-a" -a -b "/dev/mapper/$map_b"
tag_a=lvm-a-$RANDOM$RANDOM
tag_b=lvm-b-$RANDOM$RANDOM
tag_device "/dev/$LVM_VG/disk-a" "$tag_a"
tag_device "/dev/$LVM_VG/disk-b" "$tag_b"
xt_evidence_cmd "lvs" lvs -o lv_name,lv_size,lv_kernel_major,lv_kernel_minor,seg_pe_ranges "$LVM_VG"
xt_evidence_cmd "dmsetup" dmsetup ls
for lv in disk-a disk-b; do
    xt_evidence "$lv: $(dev_of "/dev/$LVM_VG/$lv"), diskseq $(diskseq_of "/dev/$LVM_VG/$lv"), dm name $(cat "/sys/dev/block/$(dev_of "/dev/$LVM_VG/$lv")/dm/name")"
done

# lv_attach <label> <target> <access> <lv> <tag>: dom0 self-attach, read,
# (write when rw), detach.
lv_attach() {
    local label=$1 target=$2 access=$3 lv=$4 tag=$5 devid be vbd pdev rc token=
    devid=$(vdev_devid xvdb)
    be=$(backend_dir 0 "$devid")
    vbd=vbd-0-$devid
    : >/var/log/xen/xen-hotplug.log
    xl block-attach 0 "format=raw, vdev=xvdb, access=$access, script=$DISKSEQ_SCRIPT, target=$target" \
        >"$XT_STATE/attach.out" 2>&1
    rc=$?
    xt_evidence_cmd "[$label] xl block-attach" cat "$XT_STATE/attach.out"
    xt_expect_eq "[$label] xl block-attach exit status" "$rc" 0
    xt_check "[$label] backend Connected (4)" wait_for "$XT_WAIT" xs_equals "$be/state" 4
    xt_check "[$label] dom0 blkfront shows /dev/xvdb" wait_for "$XT_WAIT" test -b /dev/xvdb
    dump_backend "$be"
    xt_evidence_cmd "[$label] hotplug log" cat /var/log/xen/xen-hotplug.log
    pdev=$(xs_read "$be/physical-device")
    xt_expect_eq "[$label] physical-device is the LV's device number" \
        "$pdev" "$(stat -L -c '%t:%T' "/dev/$LVM_VG/$lv")"
    xt_expect_eq "[$label] blkback opened it (sysfs physical_device)" \
        "$(cat "/sys/bus/xen-backend/devices/$vbd/physical_device" 2>/dev/null)" "$pdev"
    xt_expect_eq "[$label] diskseq node is the LV's dm disk's diskseq" \
        "$(xs_read "$be/diskseq")" "$(printf '%x' "$(diskseq_of "/dev/$LVM_VG/$lv")")"
    xt_check "[$label] no diskseq-partition node (an LV is a whole disk)" xs_absent "$be/diskseq-partition"
    xt_expect_eq "[$label] /dev/xvdb reads the LV's tag" "$(read_tag /dev/xvdb)" "XENTEST-IMAGE $tag"
    if [ "$access" = rw ]; then
        token=lvm-written-$RANDOM$RANDOM
        xt_check "[$label] writing through /dev/xvdb succeeds" \
            bash -c "printf '%-512s' '$token' | dd of=/dev/xvdb bs=512 seek=2048 oflag=direct conv=fsync status=none"
    else
        xt_expect_eq "[$label] /dev/xvdb is read-only" "$(cat /sys/block/xvdb/ro)" 1
    fi
    xt_check "[$label] the script created no loop device (only the PV's)" \
        test "$(losetup -n -O NAME | wc -l)" = 1
    xl block-detach 0 xvdb >"$XT_STATE/detach.out" 2>&1
    rc=$?
    xt_expect_eq "[$label] xl block-detach exit status" "$rc" 0
    xt_check "[$label] backend removed" wait_for "$XT_WAIT" xs_absent "$be"
    xt_check "[$label] /dev/xvdb gone" wait_for 10 test ! -e /dev/xvdb
    xt_check "[$label] the LV is still there, unopened" \
        bash -c "[ \"\$(dmsetup info -c --noheadings -o open \$(cat /sys/dev/block/$(dev_of "/dev/$LVM_VG/$lv")/dm/name) | tr -d ' ')\" = 0 ]"
    if [ -n "$token" ]; then
        xt_expect_eq "[$label] the write landed in the LV" \
            "$(dd if="/dev/$LVM_VG/$lv" bs=512 skip=2048 count=1 iflag=direct status=none | tr -d ' \0')" "$token"
    fi
}

lv_attach "/dev/VG/LV, r" "/dev/$LVM_VG/disk-a" r disk-a "$tag_a"
lv_attach "/dev/mapper/VG-LV, rw" "/dev/mapper/$map_b" rw disk-b "$tag_b"

# A /dev/mapper name whose node is another dm device's: refused by the
# script (dm name check on the opened device), nothing left after detach.
fake=$(dev_of "/dev/$LVM_VG/disk-a")
mknod "/dev/mapper/$LVM_VG-fake" b "${fake%:*}" "${fake#*:}"
be=$(backend_dir 0 "$(vdev_devid xvdb)")
xl block-attach 0 "format=raw, vdev=xvdb, access=r, script=$DISKSEQ_SCRIPT, target=/dev/mapper/$LVM_VG-fake" \
    >"$XT_STATE/attach.out" 2>&1
rc=$?
xt_evidence_cmd "[mapper name mismatch] xl block-attach" cat "$XT_STATE/attach.out"
xt_check "[mapper name mismatch] xl block-attach fails" test "$rc" != 0
xt_evidence "[mapper name mismatch] hotplug-error: $(xs_read "$be/hotplug-error")"
xt_check "[mapper name mismatch] the script names the dm device it found" \
    grep -q "is dm device \"$map_a\", not \"$LVM_VG-fake\"" "$XT_STATE/attach.out" /var/log/xen/xen-hotplug.log
xt_check "[mapper name mismatch] no physical-device published" xs_absent "$be/physical-device"
xl block-detach 0 xvdb >/dev/null 2>&1
xt_check "[mapper name mismatch] nothing left after detach" wait_for "$XT_WAIT" xs_absent "$be"
rm -f "/dev/mapper/$LVM_VG-fake"

# A PV guest with the two volumes: xvda read-only by /dev/VG/LV, xvdb
# writable by /dev/mapper/VG-LV. The guest's init writes its token at 1 MiB
# of xvdb.
name=xt-lvm-guest
console=/var/log/xen/console/guest-$name.log
rm -f "$console"
token=lvm-guest-$RANDOM$RANDOM
cat >"$XT_STATE/lvm-guest.cfg" <<EOF
name = "$name"
type = "pv"
kernel = "/xentest/vmlinuz"
ramdisk = "/xentest/guest.cpio.gz"
extra = "console=hvc0 rdinit=/init loglevel=4 xentest_write=xvdb xentest_token=$token"
memory = 256
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
disk = [ 'format=raw, vdev=xvda, access=r, script=$DISKSEQ_SCRIPT, target=/dev/$LVM_VG/disk-a',
         'format=raw, vdev=xvdb, access=rw, script=$DISKSEQ_SCRIPT, target=/dev/mapper/$map_b' ]
EOF
xl_create_guest "[guest] xl create" "$XT_STATE/lvm-guest.cfg"
domid=$(xl domid "$name" 2>/dev/null)
xt_check "[guest] running" test -n "$domid"
xt_check "[guest] reported back (GUEST-DONE)" wait_for 150 grep -q GUEST-DONE "$console"
xt_evidence_cmd "[guest] console" cat "$console"
# guest_sees_own's rule (guest.sh): each disk's own tag at least once,
# never another's; an empty read is a platform fault, counted.
# shellcheck source=../guest.sh
source /xentest/guest.sh
xt_check "[guest] xvda (r, /dev/VG/LV) shows disk-a's tag" guest_sees_own "$console" xvda 1 "$tag_a"
xt_check "[guest] xvdb (rw, /dev/mapper/VG-LV) shows disk-b's tag" guest_sees_own "$console" xvdb 0 "$tag_b"
xt_check "[guest] its write succeeded" grep -qF "GUEST-WRITE xvdb ok" "$console"
for v in 51712:disk-a 51728:disk-b; do
    be=$(backend_dir "$domid" "${v%%:*}")
    lv=${v#*:}
    dump_backend "$be"
    xt_expect_eq "[guest] $lv: backend Connected" "$(xs_read "$be/state")" 4
    xt_expect_eq "[guest] $lv: physical-device" "$(xs_read "$be/physical-device")" "$(stat -L -c '%t:%T' "/dev/$LVM_VG/$lv")"
    xt_expect_eq "[guest] $lv: diskseq node" "$(xs_read "$be/diskseq")" "$(printf '%x' "$(diskseq_of "/dev/$LVM_VG/$lv")")"
done
xl destroy "$name"
xt_check "[guest] both backends removed" wait_for "$XT_WAIT" \
    bash -c "! xenstore-exists $(backend_dir "$domid" 51712) && ! xenstore-exists $(backend_dir "$domid" 51728)"
xt_check "[guest] both LVs closed again" \
    bash -c "[ \"\$(dmsetup info -c --noheadings -o open $map_a $map_b | tr -d ' ' | tr '\n' ,)\" = 0,0, ]"
xt_expect_eq "[guest] its write landed in disk-b at 1 MiB" \
    "$(dd if="/dev/$LVM_VG/disk-b" bs=1M skip=1 count=1 iflag=direct status=none | head -1 | tr -d '\0')" "GUEST-WROTE $token"
xt_expect_eq "[guest] disk-a unchanged" "$(read_tag "/dev/$LVM_VG/disk-a")" "XENTEST-IMAGE $tag_a"

lvm_down
