# The patched xen-blkback's diskseq check, case by case, on a real host.
#
# One loop device, bound by this test for the whole scenario, is attached to
# dom0 itself with `xl block-attach` through /xentest/given-block, which
# publishes its device number and a chosen `diskseq` value (or none). Each
# case checks what blkback made of it: the state it reached, the `opened`
# node before the publish and after, the error node, and whether dom0's
# blkfront can read anything. A refused record shows as Closing (5), or
# Closed (6) once dom0's blkfront answered it. The same cases run on stock
# blkback at the end, which ignores `diskseq`: the evidence that the refusals are the
# patch's doing.
# shellcheck shell=bash
# shellcheck source=../blkback.sh
source /xentest/blkback.sh

DEVID=$(vdev_devid xvdb)
BE=$(backend_dir 0 "$DEVID")
ERR=$(error_node 0 "$DEVID")
img=/tmp/kernel-check.img
make_image "$img" 32 kernel-check
loop=$(losetup -f --show -r "$img") || exit 1
seq=$(cat "/sys/block/${loop#/dev/}/diskseq")
hex=$(printf '%x' "$seq")
xt_evidence "device under test: $loop ($(stat -L -c '%t:%T' "$loop"), diskseq $seq = 0x$hex) bound to $img"

refused=0 served=0

# kcase <label> <expected: "served" or "<errno> <message prefix>"> [diskseq]
# Without a diskseq argument the record has no diskseq node.
kcase() {
    local label=$1 want=$2 given t0 envs state err opened_before
    shift 2
    envs=("XT_GIVEN_LOG=$XT_STATE/given.log")
    if [ $# -gt 0 ]; then
        envs+=("XT_GIVEN_DISKSEQ=$1")
        given="'$1'"
    else
        given="<absent>"
    fi
    : >"$XT_STATE/given.log"
    t0=$(ms_now)
    env "${envs[@]}" xl block-attach 0 "format=raw, vdev=xvdb, access=r, script=$GIVEN_SCRIPT, target=$loop" \
        >"$XT_STATE/kcase.out" 2>&1
    wait_for "$XT_WAIT" decided "$BE"
    state=$(xs_read "$BE/state")
    xt_evidence "[$label] diskseq $given: state $state after $(($(ms_now) - t0)) ms"
    opened_before=$(sed -n 's/^opened-before-publish=//p' "$XT_STATE/given.log")
    xt_expect_eq "[$label] opened at publish time (written at probe)" "$opened_before" 0
    if [ "$want" = served ]; then
        xt_expect_eq "[$label] diskseq $given: backend Connected" "$state" 4
        xt_expect_eq "[$label] opened after the open" "$(xs_read "$BE/opened")" 1
        xt_check "[$label] dom0 blkfront shows /dev/xvdb" wait_for "$XT_WAIT" test -b /dev/xvdb
        xt_expect_eq "[$label] /dev/xvdb reads the image" "$(read_tag /dev/xvdb)" "XENTEST-IMAGE kernel-check"
        xt_check "[$label] no error node" xs_absent "$ERR"
        [ "$state" = 4 ] && served=$((served + 1))
    else
        err=$(xs_read "$ERR")
        xt_evidence "[$label] error node: '$err'"
        # xenbus_dev_fatal switches to Closing; dom0's blkfront then closes
        # too, and blkback follows it to Closed.
        xt_check "[$label] diskseq $given: backend Closing or Closed (got $state)" test "$state" = 5 -o "$state" = 6
        xt_check "[$label] error node starts with '$want'" test "${err#"$want"}" != "$err"
        xt_expect_eq "[$label] opened stays 0" "$(xs_read "$BE/opened")" 0
        xt_check "[$label] blkback holds no device (no sysfs physical_device)" \
            test ! -e "/sys/bus/xen-backend/devices/vbd-0-$DEVID/physical_device"
        xt_check "[$label] nothing readable: no /dev/xvdb" test ! -b /dev/xvdb
        [ "$state" = 5 ] || [ "$state" = 6 ] && refused=$((refused + 1))
    fi
    xl block-detach 0 xvdb >/dev/null 2>&1 || xl block-detach -f 0 xvdb >/dev/null 2>&1
    xt_check "[$label] detached" wait_for "$XT_WAIT" xs_absent "$BE"
    xenstore-rm "/local/domain/0/error/backend/vbd/0/$DEVID" 2>/dev/null
}

blkback_use patched
kcase right served "$hex"
kcase absent served
kcase wrong "19 creating vbd structure" "$(printf '%x' $((seq + 1)))"
kcase upper "22 invalid diskseq" ABC
# Every other malformed form: kernel-differential (by hand, no frontend).
xt_evidence_cmd "dom0 kernel" bash -c "dmesg --notime | grep -i 'xen_vbd_create\|blkback' | tail -5"
xt_figure patched_served "$served"
xt_figure patched_refused "$refused"

# block-diskseq on the patched module hands off by `opened` with a
# delete-on-close (autoclear) loop device: once attached, only blkback holds
# it, and it disappears when blkback lets go.
file=/tmp/kernel-check-file.img
make_image "$file" 32 kernel-check-file
: >/var/log/xen/xen-hotplug.log
xl block-attach 0 "format=raw, vdev=xvdb, access=r, script=$DISKSEQ_SCRIPT, target=$file" >/dev/null 2>&1
xt_check "[block-diskseq] Connected" wait_for "$XT_WAIT" xs_equals "$BE/state" 4
xt_expect_eq "[block-diskseq] opened" "$(xs_read "$BE/opened")" 1
fl=$(loops_of "$file")
xt_evidence "[block-diskseq] $fl serves $file; diskseq node $(xs_read "$BE/diskseq"), device's $(printf '%x' "$(cat "/sys/block/${fl#/dev/}/diskseq" 2>/dev/null)")"
xt_expect_eq "[block-diskseq] the loop device is delete-on-close (autoclear)" \
    "$(cat "/sys/block/${fl#/dev/}/loop/autoclear" 2>/dev/null)" 1
xt_check "[block-diskseq] the script holds nothing (no block-diskseq process)" bash -c '! pgrep -x block-diskseq'
wait_for "$XT_WAIT" test -b /dev/xvdb
xt_expect_eq "[block-diskseq] /dev/xvdb reads the file" "$(read_tag /dev/xvdb)" "XENTEST-IMAGE kernel-check-file"
xt_evidence_cmd "[block-diskseq] hotplug log" cat /var/log/xen/xen-hotplug.log
xl block-detach 0 xvdb >/dev/null 2>&1
xt_check "[block-diskseq] detached" wait_for "$XT_WAIT" xs_absent "$BE"
xt_check "[block-diskseq] the loop device went with blkback's hold" wait_for 10 no_loops_of "$file"

# Stock blkback: no opened node, diskseq never read, the wrong one served.
blkback_use stock
: >"$XT_STATE/given.log"
XT_GIVEN_LOG=$XT_STATE/given.log XT_GIVEN_DISKSEQ=$(printf '%x' $((seq + 1))) \
    xl block-attach 0 "format=raw, vdev=xvdb, access=r, script=$GIVEN_SCRIPT, target=$loop" >/dev/null 2>&1
xt_check "[stock] wrong diskseq: served anyway (Connected)" wait_for "$XT_WAIT" xs_equals "$BE/state" 4
xt_expect_eq "[stock] no opened node at publish time" "$(sed -n 's/^opened-before-publish=//p' "$XT_STATE/given.log")" "<absent>"
xt_check "[stock] no opened node" xs_absent "$BE/opened"
xl block-detach 0 xvdb >/dev/null 2>&1 || xl block-detach -f 0 xvdb >/dev/null 2>&1
xt_check "[stock] detached" wait_for "$XT_WAIT" xs_absent "$BE"
losetup -d "$loop"
