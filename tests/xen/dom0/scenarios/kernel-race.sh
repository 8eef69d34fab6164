# The killed-script race and the stale record, on the patched xen-blkback.
#
# 1. Killed script: block-diskseq is SIGKILLed the moment its record
#    (physical-device, diskseq) is published (/xentest/killed-block), so
#    nothing holds its autoclear loop device but blkback, if blkback got
#    there first. An adversary waits for the same publish and binds its own
#    image to the published minor as soon as the kernel lets it. blkback then
#    opens either the victim (served, right disk) or whatever now has that
#    number (refused: its sequence number differs). Never the adversary's.
#    On a live host blkback opens within milliseconds of the publish, so
#    the victim is what it finds: this part counts, it cannot force a loss.
# 2. Stale record, deterministic: a naive script publishes the number and
#    the diskseq of a loop device that was freed and rebound to the
#    adversary's image before blkback reads the record (a toolstack that
#    wrote its numbers long ago). Refused on the patched module; stock
#    blkback, given the same record, serves the adversary's image.
#   kernel-race.sh [killed-script attempts (default 3)]
# shellcheck shell=bash
# shellcheck source=../blkback.sh
source /xentest/blkback.sh

attempts=${1:-3}
VDEV=xvdb
DEVID=$(vdev_devid $VDEV)
BE=$(backend_dir 0 "$DEVID")
ERR=$(error_node 0 "$DEVID")
victim=/tmp/kernel-race-victim.img
evil=/tmp/kernel-race-evil.img
make_image "$victim" 16 VICTIM
make_image "$evil" 16 EVIL

# Binds the evil image to the minor the record names, retrying while the
# victim still holds it, until the backend has decided (Connected/Closing).
adversary() {
    local pdev loop
    timeout 30 xenstore-watch -n 2 "$BE/physical-device" >/dev/null
    pdev=$(xs_read "$BE/physical-device") || return
    loop=/dev/loop$((16#${pdev#*:}))
    while :; do
        if losetup -r "$loop" "$evil" 2>/dev/null; then
            echo "rebound $loop at state $(xs_read "$BE/state")"
            return
        fi
        case $(xs_read "$BE/state") in 4 | 5 | 6 | "") return ;; esac
        sleep 0.01
    done
}

blkback_use patched
right=0 wrong=0 refused=0 other=0 rebinds=0
for ((i = 1; i <= attempts; i++)); do
    adversary >"$XT_STATE/adversary.out" 2>&1 &
    adv=$!
    xl block-attach 0 "format=raw, vdev=$VDEV, access=r, script=/xentest/killed-block, target=$victim" \
        >"$XT_STATE/kr.out" 2>&1
    wait_for "$XT_WAIT" decided "$BE"
    wait "$adv"
    grep -q rebound "$XT_STATE/adversary.out" && rebinds=$((rebinds + 1))
    state=$(xs_read "$BE/state")
    seen=
    [ "$state" = 4 ] && wait_for 10 test -b /dev/$VDEV && seen=$(read_tag /dev/$VDEV)
    case "$state/$seen" in
    "4/XENTEST-IMAGE VICTIM") right=$((right + 1)) ;;
    "4/XENTEST-IMAGE EVIL") wrong=$((wrong + 1)) ;;
    5/* | 6/*) [[ "$(xs_read "$ERR")" == "19 creating vbd structure"* ]] && refused=$((refused + 1)) || other=$((other + 1)) ;;
    *) other=$((other + 1)) ;;
    esac
    xt_evidence "attempt $i: state $state, read '$seen', error '$(xs_read "$ERR")', adversary: $(tr '\n' ' ' <"$XT_STATE/adversary.out"), diskseq node $(xs_read "$BE/diskseq")"
    xl block-detach 0 $VDEV >/dev/null 2>&1 || xl block-detach -f 0 $VDEV >/dev/null 2>&1
    wait_for "$XT_WAIT" xs_absent "$BE"
    xenstore-rm "/local/domain/0/error/backend/vbd/0/$DEVID" 2>/dev/null
    for l in $(loops_of "$evil"); do losetup -d "$l"; done
done
xt_figure killed_attempts "$attempts"
xt_figure killed_right_disk "$right"
xt_figure killed_refused "$refused"
xt_figure killed_wrong_disk "$wrong"
xt_figure killed_other "$other"
xt_figure killed_adversary_rebinds "$rebinds"
xt_expect_eq "killed script: attempts where blkback served the adversary's image" "$wrong" 0
xt_expect_eq "killed script: every attempt served the victim or was refused with ENODEV" \
    "$((right + refused))" "$attempts"
xt_check "no loop device left for the victim" wait_for 10 no_loops_of "$victim"

# 2. The stale record: victim bound, numbers noted, freed, evil on the minor.
stale_record() {
    local loop pdev seq
    loop=$(losetup -f --show -r "$victim") || return 1
    pdev=$(stat -L -c '%t:%T' "$loop")
    seq=$(printf '%x' "$(cat "/sys/block/${loop#/dev/}/diskseq")")
    losetup -d "$loop"
    losetup -r "$loop" "$evil" || return 1
    xt_evidence "stale record: $pdev diskseq $seq named the victim; now $loop is $(losetup -n -O BACK-FILE "$loop") with diskseq $(printf '%x' "$(cat "/sys/block/${loop#/dev/}/diskseq")")" >&2
    echo "$loop $pdev $seq"
}
read -r loop pdev seq < <(stale_record)
XT_GIVEN_DEV=$pdev XT_GIVEN_DISKSEQ=$seq xl block-attach 0 \
    "format=raw, vdev=$VDEV, access=r, script=$GIVEN_SCRIPT, target=$loop" >/dev/null 2>&1
xt_check "[patched] stale record: backend refused it (Closing, then Closed)" \
    wait_for "$XT_WAIT" bash -c "s=\$(xenstore-read $BE/state); [ \"\$s\" = 5 ] || [ \"\$s\" = 6 ]"
xt_evidence "[patched] stale record: error node '$(xs_read "$ERR")'"
xt_check "[patched] stale record: refused with ENODEV" bash -c "[[ \"\$(xenstore-read $ERR)\" == '19 creating vbd structure'* ]]"
xt_check "[patched] stale record: nothing readable" test ! -b /dev/$VDEV
xl block-detach 0 $VDEV >/dev/null 2>&1 || xl block-detach -f 0 $VDEV >/dev/null 2>&1
xt_check "[patched] detached" wait_for "$XT_WAIT" xs_absent "$BE"
xenstore-rm "/local/domain/0/error/backend/vbd/0/$DEVID" 2>/dev/null

blkback_use stock
XT_GIVEN_DEV=$pdev XT_GIVEN_DISKSEQ=$seq xl block-attach 0 \
    "format=raw, vdev=$VDEV, access=r, script=$GIVEN_SCRIPT, target=$loop" >/dev/null 2>&1
xt_check "[stock] stale record: Connected" wait_for "$XT_WAIT" xs_equals "$BE/state" 4
wait_for "$XT_WAIT" test -b /dev/$VDEV
xt_expect_eq "[stock] stale record: serves the adversary's image (what the patch prevents)" \
    "$(read_tag /dev/$VDEV)" "XENTEST-IMAGE EVIL"
xl block-detach 0 $VDEV >/dev/null 2>&1 || xl block-detach -f 0 $VDEV >/dev/null 2>&1
xt_check "[stock] detached" wait_for "$XT_WAIT" xs_absent "$BE"
losetup -d "$loop"
