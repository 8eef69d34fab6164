# Differential: the same records fed to the patched xen-blkback and to our
# userspace model of it (`diskseq backend`), which must behave alike.
#
# Both are driven the same way, by hand, in the same real xenstored: the
# toolstack's nodes written in one transaction as libxl writes them (state
# Initialising), a wait for InitWait, then the record (physical-device, and
# a diskseq value or none) in one transaction, as a block script writes it.
# blkback serves a made-up frontend domain 5 (dom0's backend tree), the
# model serves domain 6 as backend domain 7. No frontend ever connects (a
# domain that does not exist cannot share a ring): a record is accepted when
# `opened` turns 1, refused when the backend switches to Closing. Compared
# per case: the state then, `opened` before the record and after, the
# error node's errno, and the kernel's message must start the model's (which
# may add detail). The connected half (Connected, the nodes of the connect)
# is compared by backend-vs-blkback and read through by kernel-check.
#
#   kernel-differential.sh [partition]
# With `partition` (scenario kernel-differential-partition), the cases are
# issue 14's partition records instead: partition 1 of a loop device with a
# partition table, and the `diskseq-partition` node (patch 0002).
# shellcheck shell=bash
# shellcheck source=../blkback.sh
source /xentest/blkback.sh

DEVID=$(vdev_devid xvdb)
mode=${1:-diskseq}
img=/tmp/kernel-differential.img
make_image "$img" 32 differential
if [ "$mode" = partition ]; then
    # Partition 1 at 2048, 8192 sectors: its record is 1:800:2000.
    printf 'label: dos\nstart=2048, size=8192, type=83\n' | sfdisk -q "$img" >/dev/null 2>&1
    loop=$(losetup -f --show -r -P "$img") || exit 1
    wait_for 10 test -b "${loop}p1"
    disk=$(stat -L -c '%t:%T' "$loop")
    pdev=$(stat -L -c '%t:%T' "${loop}p1")
    xt_evidence "partition 1: ${loop}p1 ($pdev), start $(cat "/sys/block/${loop#/dev/}/${loop#/dev/}p1/start"), size $(cat "/sys/block/${loop#/dev/}/${loop#/dev/}p1/size")"
else
    loop=$(losetup -f --show -r "$img") || exit 1
    pdev=$(stat -L -c '%t:%T' "$loop")
fi
hex=$(printf '%x' "$(cat "/sys/block/${loop#/dev/}/diskseq")")
xt_evidence "device: $loop ($pdev, diskseq $hex)"
# A device number no driver serves (major 240 is for local experiments).
NODEV=f0:0

settled() { xs_equals "$1/opened" 1 || xs_equals "$1/state" 5; }

# drive <backend domid> <frontend domid> <dev> [diskseq]: prints
# "state=<s> opened=<before>,<after> error=<error node>".
drive() {
    local bd=$1 fd=$2 dev=$3 be fe err before
    shift 3
    be=/local/domain/$bd/backend/vbd/$fd/$DEVID
    fe=/local/domain/$fd/device/vbd/$DEVID
    err=/local/domain/$bd/error/backend/vbd/$fd/$DEVID
    xenstore-write "$fe/backend" "$be" "$fe/backend-id" "$bd" "$fe/state" 1 \
        "$fe/virtual-device" "$DEVID" "$fe/device-type" disk \
        "$be/frontend" "$fe" "$be/frontend-id" "$fd" \
        "$be/online" 1 "$be/removable" 0 "$be/bootable" 1 "$be/state" 1 \
        "$be/dev" xvdb "$be/type" phy "$be/mode" r "$be/device-type" disk \
        "$be/params" "$loop" "$be/discard-enable" 1 "$be/specification" xen
    wait_for "$XT_WAIT" xs_equals "$be/state" 2
    before=$(xs_read "$be/opened" || echo '<absent>')
    local nodes=("$be/physical-device" "$dev")
    [ $# -gt 0 ] && nodes+=("$be/diskseq" "$1")
    # The partition cases' node (DRIVE_PARTITION unset: none).
    [ -n "${DRIVE_PARTITION+set}" ] && nodes+=("$be/diskseq-partition" "$DRIVE_PARTITION")
    xenstore-write "${nodes[@]}" "$be/hotplug-status" connected
    wait_for "$XT_WAIT" settled "$be"
    # Anything written after the decision would show here.
    sleep 0.3
    echo "state=$(xs_read "$be/state") opened=$before,$(xs_read "$be/opened" || echo '<absent>') error=$(xs_read "$err/error")"
    xenstore-rm "$be" 2>/dev/null
    xenstore-rm "$fe" 2>/dev/null
    xenstore-rm "$err" 2>/dev/null
    # blkback unregisters the device when its dir goes; the next case reuses the path.
    if [ "$bd" = 0 ]; then
        wait_for "$XT_WAIT" test ! -e "/sys/bus/xen-backend/devices/vbd-$fd-$DEVID"
    fi
    return 0
}
kernel_run() { drive 0 5 "$@"; }
model_run() { drive 7 6 "$@"; }

# compare <label> <expected> <dev> [diskseq]: both runs, the kernel's
# against what the patch specifies ("ok": accepted, or the error node's
# "<errno> <message>"), then the model's against the kernel's, field by field.
differences=0
compare() {
    local label=$1 want=$2 k m
    shift 2
    # The two backends serve different domains: drive both at once.
    kernel_run "$@" >"$XT_STATE/diff-kernel" &
    local kernel_pid=$!
    model_run "$@" >"$XT_STATE/diff-model"
    # Only this job: the model's daemon runs in the background too.
    wait "$kernel_pid"
    k=$(cat "$XT_STATE/diff-kernel")
    m=$(cat "$XT_STATE/diff-model")
    if [ "$want" = ok ]; then
        xt_expect_eq "[$label] blkback accepts it" "$k" "state=2 opened=0,1 error="
    else
        xt_expect_eq "[$label] blkback refuses it" "$k" "state=5 opened=0,0 error=$want"
    fi
    xt_evidence "[$label] kernel: $k"
    xt_evidence "[$label] model:  $m"
    local ks=${k%% opened=*} ms=${m%% opened=*}
    local ko=${k#* opened=} mo=${m#* opened=}
    ko=${ko%% error=*} mo=${mo%% error=*}
    local ke=${k#* error=} me=${m#* error=}
    xt_expect_eq "[$label] state: model as blkback" "$ms" "$ks"
    xt_expect_eq "[$label] opened before,after: model as blkback" "$mo" "$ko"
    xt_expect_eq "[$label] error errno: model as blkback" "${me%% *}" "${ke%% *}"
    xt_check "[$label] error message: blkback's '${ke#* }' starts the model's '${me#* }'" \
        test "${me#"$ke"}" != "$me" -o -z "$ke$me"
    [ "$ks $ko ${ke%% *}" = "$ms $mo ${me%% *}" ] || differences=$((differences + 1))
}

blkback_use patched
xenstore-rm /local/domain/7 /local/domain/5 /local/domain/6 2>/dev/null
diskseq backend --domid 7 >"$XT_STATE/model.log" 2>&1 &
model_pid=$!
cases=0
if [ "$mode" = partition ]; then
    # <label> <dev> <diskseq or -> <diskseq-partition or -> <expected>
    while read -r label dev seq part want; do
        [ -n "$label" ] || continue
        dev=${dev/DISK/$disk}
        dev=${dev/PART/$pdev}
        want=${want//_/ }
        [ "$part" = "''" ] && part=
        cases=$((cases + 1))
        if [ "$part" = - ]; then unset DRIVE_PARTITION; else DRIVE_PARTITION=$part; fi
        case $seq in
        -) compare "$label" "$want" "$dev" </dev/null ;;
        *) compare "$label" "$want" "$dev" "${seq//HEX/$hex}" </dev/null ;;
        esac
    done <<EOF
part-right PART HEX 1:800:2000 ok
part-absent PART HEX - ok
part-without-diskseq PART - 1:800:2000 ok
part-whole-disk DISK HEX 1:800:2000 19_creating_vbd_structure
part-other-number PART HEX 2:800:2000 19_creating_vbd_structure
part-other-start PART HEX 1:801:2000 19_creating_vbd_structure
part-other-size PART HEX 1:800:1fff 19_creating_vbd_structure
part-number-above-u32 PART HEX 100000000:800:2000 19_creating_vbd_structure
part-leading-zero PART HEX 01:800:2000 22_invalid_diskseq-partition
part-number-zero PART HEX 0:800:2000 22_invalid_diskseq-partition
part-upper-case PART HEX 1:800:2A00 22_invalid_diskseq-partition
part-two-fields PART HEX 1:800 22_invalid_diskseq-partition
part-empty PART HEX '' 22_invalid_diskseq-partition
EOF
    unset DRIVE_PARTITION
fi
while [ "$mode" != partition ] && read -r label dev seq want; do
    [ -n "$label" ] || continue
    dev=${dev/NODEV/$NODEV}
    dev=${dev/DEV/$pdev}
    want=${want//_/ }
    cases=$((cases + 1))
    case $seq in
    -) compare "$label" "$want" "$dev" </dev/null ;;
    "''") compare "$label" "$want" "$dev" "" </dev/null ;;
    *) compare "$label" "$want" "$dev" "${seq//HEX/$hex}" </dev/null ;;
    esac
done <<EOF
right DEV HEX ok
absent DEV - ok
no-device-no-diskseq NODEV - 2_creating_vbd_structure
wrong DEV 1HEX 19_creating_vbd_structure
upper DEV ABC 22_invalid_diskseq
0x DEV 0xHEX 34_diskseq_must_not_start_with_0
leading-zero DEV 0HEX 34_diskseq_must_not_start_with_0
zero DEV 0 34_diskseq_must_not_start_with_0
17-digits DEV 10000000000000000 34_diskseq_too_long
empty DEV '' 22_diskseq_must_not_be_empty
non-hex DEV 1g 22_invalid_diskseq
EOF
kill "$model_pid" 2>/dev/null
wait "$model_pid" 2>/dev/null
xt_evidence_cmd "model log" tail -20 "$XT_STATE/model.log"
xt_figure cases "$cases"
xt_figure differences "$differences"
xenstore-rm /local/domain/7 /local/domain/5 /local/domain/6 2>/dev/null
losetup -d "$loop"
blkback_use stock
