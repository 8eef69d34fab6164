# Issue 14: a partition is named completely, and a rewritten table refused.
#
# A partition reports its whole disk's diskseq, and re-reading a rewritten
# table keeps the disk (same diskseq) and gives partition 1, at the same
# device number, other sectors. The record names the partition by number,
# start and size as well ("diskseq-partition" = "<partno>:<start>:<sectors>",
# lower-case hex), and the patched blkback (kernel/patches/0002) compares
# them on the partition it opened.
#
# On a loop device with partition scanning (losetup -P): partition 1 at
# sector 2048 (tag OLD there), tag NEW at sector 34816. Records are published
# with dom0/given-block as block-diskseq publishes them:
#  1. the right record (dom0 self-attach): Connected, /dev/xvdb reads OLD;
#  2. by hand (no frontend, as kernel-differential): the right record is
#     accepted; the whole disk, another partition number, start or size are
#     refused with ENODEV; every malformed form with EINVAL;
#  3. the table rewritten (partition 1 now at 34816, other size) while the
#     record is pending: same device number, same diskseq; the stale record
#     is refused (19, nothing readable); the same record without the
#     partition node — what a diskseq-only check sees — is served and reads
#     NEW: the wrong sectors; the fresh record is served and reads NEW;
#  4. block-diskseq publishes diskseq-partition for /dev/loopNp1 and for the
#     pinned name /dev/disk/by-diskseq/<N>-part1 (resolved without udev),
#     and blkback serves both; once disk <N> is gone (the image bound again:
#     a new diskseq), <N> and <N>-part1 are refused with hotplug-error.
# shellcheck shell=bash
# shellcheck source=../blkback.sh
source /xentest/blkback.sh

DEVID=$(vdev_devid xvdb)
BE=$(backend_dir 0 "$DEVID")
ERR=$(error_node 0 "$DEVID")
img=/tmp/partition-rewrite.img
rm -f "$img"
truncate -s 64M "$img"
printf 'XENTEST-IMAGE OLD\n' | dd of="$img" bs=512 seek=2048 conv=notrunc status=none
printf 'XENTEST-IMAGE NEW\n' | dd of="$img" bs=512 seek=34816 conv=notrunc status=none
loop=$(losetup -f --show -P "$img") || exit 1
name=${loop#/dev/}
printf 'label: dos\nstart=2048, size=32768, type=83\n' | sfdisk -q "$loop" >"$XT_STATE/sfdisk.out" 2>&1
xt_evidence_cmd "sfdisk" cat "$XT_STATE/sfdisk.out"
xt_check "partition 1 of $loop appeared" wait_for 10 test -b "/dev/${name}p1"
part_dir=/sys/block/$name/${name}p1

# The record block-diskseq publishes for partition 1 now: physical-device
# (hex), the disk's diskseq (hex), "<partno>:<start>:<sectors>" (hex).
record_now() {
    local dev
    dev=$(cat "$part_dir/dev")
    printf '%x:%x %x %x:%x:%x\n' "${dev%:*}" "${dev#*:}" "$(cat "/sys/block/$name/diskseq")" \
        "$(cat "$part_dir/partition")" "$(cat "$part_dir/start")" "$(cat "$part_dir/size")"
}
read -r pdev seq prec < <(record_now)
disk_pdev=$(stat -L -c '%t:%T' "$loop")
xt_evidence "partition 1: ${name}p1 = $pdev, disk $loop = $disk_pdev diskseq $seq, partition record $prec"
xt_expect_eq "the record for partition 1 at 2048 of 32768 sectors" "$prec" "1:800:8000"

blkback_use patched

# given <label> <partition record or "-"> <physical-device>: a dom0
# self-attach of a record; prints the published physical-device, the state,
# the error node and the read.
given() {
    local label=$1 prec=$2 dev=$3 envs state seen=
    # (Not in the `local` above: its words expand before it assigns.)
    envs=(XT_GIVEN_DEV="$dev" XT_GIVEN_DISKSEQ="$seq")
    [ "$prec" = - ] || envs+=(XT_GIVEN_PARTITION="$prec")
    env "${envs[@]}" xl block-attach 0 "format=raw, vdev=xvdb, access=r, script=$GIVEN_SCRIPT, target=$loop" \
        >"$XT_STATE/given.out" 2>&1
    wait_for "$XT_WAIT" decided "$BE"
    state=$(xs_read "$BE/state")
    [ "$state" = 4 ] && wait_for "$XT_WAIT" test -b /dev/xvdb && seen=$(read_tag /dev/xvdb)
    echo "dev=$(xs_read "$BE/physical-device") state=$state error=$(xs_read "$ERR") read=$seen"
    xt_evidence "[$label] record $dev diskseq $seq partition '$prec': state $state, error '$(xs_read "$ERR")', read '$seen', diskseq-partition node '$(xs_read "$BE/diskseq-partition")'" >&2
    xl block-detach 0 xvdb >/dev/null 2>&1 || xl block-detach -f 0 xvdb >/dev/null 2>&1
    wait_for "$XT_WAIT" xs_absent "$BE"
    xenstore-rm "/local/domain/0/error/backend/vbd/0/$DEVID" 2>/dev/null
}

# 1. The right record, served.
xt_expect_eq "[right] served, reads partition 1's first sector" \
    "$(given right "$prec" "$pdev")" "dev=$pdev state=4 error= read=XENTEST-IMAGE OLD"

# 2. By hand: blkback for a made-up frontend domain 5, no frontend (the
#    record is accepted when `opened` turns 1, refused at Closing).
settled() { xs_equals "$1/opened" 1 || xs_equals "$1/state" 5; }
by_hand() {
    local dev=$1 part=$2 be=/local/domain/0/backend/vbd/5/$DEVID fe=/local/domain/5/device/vbd/$DEVID
    local err=/local/domain/0/error/backend/vbd/5/$DEVID nodes
    xenstore-write "$fe/backend" "$be" "$fe/backend-id" 0 "$fe/state" 1 \
        "$fe/virtual-device" "$DEVID" "$fe/device-type" disk \
        "$be/frontend" "$fe" "$be/frontend-id" 5 \
        "$be/online" 1 "$be/removable" 0 "$be/bootable" 1 "$be/state" 1 \
        "$be/dev" xvdb "$be/type" phy "$be/mode" r "$be/device-type" disk \
        "$be/params" "$loop" "$be/specification" xen
    wait_for "$XT_WAIT" xs_equals "$be/state" 2
    nodes=("$be/physical-device" "$dev" "$be/diskseq" "$seq")
    [ "$part" = - ] || nodes+=("$be/diskseq-partition" "$part")
    xenstore-write "${nodes[@]}" "$be/hotplug-status" connected
    wait_for "$XT_WAIT" settled "$be"
    sleep 0.3
    echo "state=$(xs_read "$be/state") opened=$(xs_read "$be/opened") error=$(xs_read "$err/error")"
    xenstore-rm "$be" 2>/dev/null
    xenstore-rm "$fe" 2>/dev/null
    xenstore-rm "$err" 2>/dev/null
    wait_for "$XT_WAIT" test ! -e "/sys/bus/xen-backend/devices/vbd-5-$DEVID"
}
hand_cases=0 hand_ok=0
while read -r label dev part want; do
    [ -n "$label" ] || continue
    dev=${dev/DISK/$disk_pdev}
    dev=${dev/PART/$pdev}
    [ "$part" = "''" ] && part=
    want=${want//_/ }
    case $want in
    ok) want="state=2 opened=1 error=" ;;
    *) want="state=5 opened=0 error=$want" ;;
    esac
    got=$(by_hand "$dev" "$part")
    hand_cases=$((hand_cases + 1))
    [ "$got" = "$want" ] && hand_ok=$((hand_ok + 1))
    xt_expect_eq "[by hand: $label] physical-device $dev diskseq-partition '$part'" "$got" "$want"
done <<EOF
right PART 1:800:8000 ok
absent PART - ok
whole-disk DISK 1:800:8000 19_creating_vbd_structure
other-number PART 2:800:8000 19_creating_vbd_structure
other-start PART 1:801:8000 19_creating_vbd_structure
other-size PART 1:800:7fff 19_creating_vbd_structure
leading-zero PART 01:800:8000 22_invalid_diskseq-partition
partno-zero PART 0:800:8000 22_invalid_diskseq-partition
upper-case PART 1:800:8A00 22_invalid_diskseq-partition
0x PART 1:0x800:8000 22_invalid_diskseq-partition
two-fields PART 1:800 22_invalid_diskseq-partition
four-fields PART 1:800:8000:1 22_invalid_diskseq-partition
empty-field PART 1::8000 22_invalid_diskseq-partition
trailing-colon PART 1:800:8000: 22_invalid_diskseq-partition
17-digits PART 1:800:10000000000000000 22_invalid_diskseq-partition
underscore PART 1:800:8000_ 22_invalid_diskseq-partition
empty PART '' 22_invalid_diskseq-partition
EOF
xt_figure by_hand_cases "$hand_cases"
xt_figure by_hand_as_specified "$hand_ok"

# 3. The table rewritten under the pending record.
printf 'label: dos\nstart=34816, size=16384, type=83\n' | sfdisk -q "$loop" >"$XT_STATE/sfdisk.out" 2>&1
blockdev --rereadpt "$loop" 2>/dev/null
xt_evidence_cmd "sfdisk (rewrite)" cat "$XT_STATE/sfdisk.out"
wait_for 10 grep -qx 34816 "$part_dir/start"
read -r pdev2 seq2 prec2 < <(record_now)
xt_evidence "after the rewrite: ${name}p1 = $pdev2, disk diskseq $seq2, partition record $prec2"
xt_expect_eq "the rewrite kept partition 1's device number" "$pdev2" "$pdev"
xt_expect_eq "the rewrite kept the disk's diskseq (what the disk's diskseq alone cannot tell)" "$seq2" "$seq"
xt_expect_eq "partition 1 is now at 34816 of 16384 sectors" "$prec2" "1:8800:4000"

stale=$(given stale "$prec" "$pdev")
xt_check "[stale] partition 1's record refused with ENODEV, nothing readable (got $stale)" \
    bash -c "[[ '$stale' == 'dev=$pdev state='[56]' error=19 creating vbd structure'* && '$stale' == *'read=' ]]"
xt_check "[stale] refused by the partition check (kernel log)" \
    bash -c "dmesg --notime | tail -3 | grep -q 'is partition 1 at 8800 of 4000 sectors, expected 1:800:8000'"
legacy=$(given stale-without-partition - "$pdev")
xt_expect_eq "[stale, no diskseq-partition] served, and reads the wrong sectors (what the partition check prevents)" \
    "$legacy" "dev=$pdev state=4 error= read=XENTEST-IMAGE NEW"
xt_expect_eq "[fresh] the new record is served and reads the new partition" \
    "$(given fresh "$prec2" "$pdev2")" "dev=$pdev state=4 error= read=XENTEST-IMAGE NEW"
xt_evidence_cmd "dom0 kernel" bash -c "dmesg --notime | grep 'xen_vbd_create' | tail -6"

# 4. block-diskseq itself (the patched blkback still loaded): for a
#    partition it publishes diskseq-partition, which blkback checks; a
#    pinned name /dev/disk/by-diskseq/<N>-part<P> (no udev in this dom0:
#    resolved by the script) is served; once disk <N> is gone, its pinned
#    names are refused with hotplug-error, though a new disk has its number.
# ds_attach <label> <target>: prints "rc=<xl status> dev=<physical-device>
# part=<diskseq-partition> state=<state> read=<tag>", then detaches.
ds_attach() {
    local label=$1 target=$2 rc state seen=
    : >/var/log/xen/xen-hotplug.log
    xl block-attach 0 "format=raw, vdev=xvdb, access=r, script=$DISKSEQ_SCRIPT, target=$target" \
        >"$XT_STATE/ds.out" 2>&1
    rc=$?
    [ "$rc" = 0 ] && wait_for "$XT_WAIT" decided "$BE"
    state=$(xs_read "$BE/state")
    [ "$state" = 4 ] && wait_for "$XT_WAIT" test -b /dev/xvdb && seen=$(read_tag /dev/xvdb)
    echo "rc=$rc dev=$(xs_read "$BE/physical-device") part=$(xs_read "$BE/diskseq-partition") state=$state read=$seen"
    xt_evidence_cmd "[$label] xl block-attach" cat "$XT_STATE/ds.out" >&2
    xt_evidence_cmd "[$label] hotplug log" cat /var/log/xen/xen-hotplug.log >&2
    xt_evidence "[$label] hotplug-error: $(xs_read "$BE/hotplug-error")" >&2
    xl block-detach 0 xvdb >/dev/null 2>&1 || xl block-detach -f 0 xvdb >/dev/null 2>&1
    wait_for "$XT_WAIT" xs_absent "$BE"
    xenstore-rm "/local/domain/0/error/backend/vbd/0/$DEVID" 2>/dev/null
}
seq_dec=$(cat "/sys/block/$name/diskseq")
xt_expect_eq "[block-diskseq, /dev/${name}p1] served with the partition's record, which blkback checked" \
    "$(ds_attach partition-path "/dev/${name}p1")" "rc=0 dev=$pdev part=$prec2 state=4 read=XENTEST-IMAGE NEW"
pinned=/dev/disk/by-diskseq/$seq_dec-part1
xt_check "[pinned] no udev here: $pinned is not a link" test ! -e "$pinned"
xt_expect_eq "[block-diskseq, $pinned] served, partition 1 of disk $seq_dec" \
    "$(ds_attach pinned "$pinned")" "rc=0 dev=$pdev part=$prec2 state=4 read=XENTEST-IMAGE NEW"
xt_check "[pinned] the script left the caller's loop device alone" test "$(loops_of "$img")" = "$loop"
# Disk <N> goes; the image is bound again, on the same minor, as a new disk.
losetup -d "$loop"
wait_for 10 no_loops_of "$img"
loop2=$(losetup -f --show -P "$img")
wait_for 10 test -b "/dev/${loop2#/dev/}p1"
xt_evidence "disk $seq_dec gone; the image is now $loop2 ($(stat -L -c '%t:%T' "$loop2")), diskseq $(cat "/sys/block/${loop2#/dev/}/diskseq"), partition 1 $(cat "/sys/block/${loop2#/dev/}/${loop2#/dev/}p1/dev")"
for stale_target in "/dev/disk/by-diskseq/$seq_dec" "$pinned"; do
    got=$(ds_attach stale-pinned "$stale_target")
    xt_check "[stale pinned $stale_target] xl block-attach fails, nothing published (got $got)" \
        bash -c "[[ '$got' == 'rc='[1-9]*' dev= part= '* ]]"
    xt_check "[stale pinned $stale_target] the script says no disk has diskseq $seq_dec" \
        grep -q "no disk has diskseq $seq_dec" "$XT_STATE/ds.out" /var/log/xen/xen-hotplug.log
    xt_check "[stale pinned $stale_target] nothing left after detach" xs_absent "$BE"
done
loop=$loop2

blkback_use stock
losetup -d "$loop"
xt_check "no loop device left" wait_for 10 no_loops_of "$img"
rm -f "$img"
