# Scenario 3: the handoff race on real, unpatched blkback (sourced by the
# race-* scenarios).
#
# An adversary in dom0 loops: every loop device bound to the victim image is
# detached and the evil image bound to the same minor. Meanwhile the disk is
# attached to dom0 again and again through the script under test, and dom0
# reads what blkback actually serves. A script that publishes a device number
# and lets go (the naive one, like Xen's stock script) can hand blkback the
# evil image. So can block-diskseq on stock blkback since issue 10: its loop
# device is persistent and nothing holds it open until blkback does, so an
# adversary with root that detaches devices it does not own wins the window
# between the publish and blkback's open. Only a backend that checks diskseq
# (the patched blkback) refuses the rebound minor. Against a kill rather than
# an active detacher, see kill-race.
# shellcheck shell=bash
# shellcheck disable=SC2034 # variables here are used by the files that source this one
# shellcheck source=lib.sh
source /xentest/lib.sh

RACE_VICTIM=/tmp/race-victim.img
RACE_EVIL=/tmp/race-evil.img
RACE_STOP=$XT_STATE/race-stop
RACE_TALLY=$XT_STATE/race-adversary

# Detaches every loop bound to the victim and binds the evil image in its
# place; counts the detaches asked for and the rebinds that took (those the
# script or blkback did not pin). The sweep reads sysfs with bash builtins and
# naps on a fifo, so it forks only when it strikes and leaves the emulated
# CPUs to the attach it races with.
adversary() {
    local f dev back detached=0 rebound=0 nap
    mkfifo "$XT_STATE/race-nap"
    exec {nap}<>"$XT_STATE/race-nap"
    while [ ! -e "$RACE_STOP" ]; do
        for f in /sys/block/loop*/loop/backing_file; do
            read -r back 2>/dev/null <"$f" || continue
            [ "$back" = "$RACE_VICTIM" ] || continue
            dev=${f#/sys/block/}
            dev=/dev/${dev%%/*}
            losetup -d "$dev" 2>/dev/null && detached=$((detached + 1))
            if losetup "$dev" "$RACE_EVIL" 2>/dev/null; then
                rebound=$((rebound + 1))
                echo "$(ms_now) $dev state=$(xs_read "$RACE_BACKEND/state")" >>"$RACE_TALLY.log"
            fi
            echo "$detached $rebound" >"$RACE_TALLY"
        done
        read -r -t 0.01 -u "$nap" _
    done
}

# race_run <script> <attempts>
race_run() {
    local script=$1 attempts=$2 vdev=xvdb be i seen right=0 wrong=0 failed=0
    be=$(backend_dir 0 "$(vdev_devid $vdev)")
    RACE_BACKEND=$be
    : >"$RACE_TALLY.log"
    make_image "$RACE_VICTIM" 16 VICTIM
    make_image "$RACE_EVIL" 16 EVIL
    rm -f "$RACE_STOP"
    echo "0 0" >"$RACE_TALLY"
    adversary &
    local adversary_pid=$!

    local t0
    for ((i = 1; i <= attempts; i++)); do
        t0=$(ms_now)
        seen=
        local attached=-1 connected=-1
        if xl block-attach 0 "format=raw, vdev=$vdev, access=r, script=$script, target=$RACE_VICTIM" \
            >"$XT_STATE/race.out" 2>&1; then
            attached=$(($(ms_now) - t0))
            if wait_for "$XT_WAIT" xs_equals "$be/state" 4 && wait_for "$XT_WAIT" test -b /dev/$vdev; then
                connected=$(($(ms_now) - t0))
                seen=$(read_tag /dev/$vdev)
            fi
        fi
        xt_evidence "attempt $i: read done at clock $(ms_now) ms"
        case "$seen" in
        "XENTEST-IMAGE VICTIM")
            right=$((right + 1))
            xt_evidence "attempt $i: right disk"
            ;;
        "XENTEST-IMAGE EVIL")
            wrong=$((wrong + 1))
            xt_evidence "attempt $i: WRONG DISK: blkback serves $(cat /sys/bus/xen-backend/devices/vbd-0-${be##*/}/physical_device 2>/dev/null) = $(losetup -a | grep evil | tr '\n' ' ')"
            ;;
        *)
            failed=$((failed + 1))
            xt_evidence "attempt $i: no disk connected (state $(xs_read "$be/state"), hotplug-status $(xs_read "$be/hotplug-status"), error $(xs_read "/local/domain/0/error/backend/vbd/0/${be##*/}/error"))"
            xt_evidence_cmd "xl" cat "$XT_STATE/race.out"
            xt_evidence_cmd dmesg bash -c 'dmesg --notime | tail -5'
            ;;
        esac
        t0=$(ms_now)
        xl block-detach 0 $vdev >/dev/null 2>&1 || xl block-detach -f 0 $vdev >/dev/null 2>&1
        wait_for "$XT_WAIT" xs_absent "$be"
        xt_evidence "attempt $i: xl block-attach returned at $attached ms, connected at $connected ms, detached in $(($(ms_now) - t0)) ms (clock $(ms_now))"
        # Evil bindings no backend holds any more.
        for dev in $(loops_of "$RACE_EVIL"); do losetup -d "$dev" 2>/dev/null; done
    done

    touch "$RACE_STOP"
    wait "$adversary_pid"
    read -r detached rebound <"$RACE_TALLY"
    # When each rebind took, with the backend state then: a rebind after the
    # detach (state 6 or no backend) cannot reach the disk that was given.
    xt_evidence_cmd "adversary rebind (clock ms, loop, backend state)" cat "$RACE_TALLY.log"
    xt_figure attempts "$attempts"
    xt_figure right_disk "$right"
    xt_figure wrong_disk "$wrong"
    xt_figure no_disk "$failed"
    xt_figure adversary_detaches "$detached"
    xt_figure adversary_rebinds "$rebound"
    xt_check "the adversary was active (detached a victim loop device at least once)" test "$detached" -gt 0
    RACE_RIGHT=$right RACE_WRONG=$wrong RACE_FAILED=$failed
    return 0
}

no_loops_at_all() { [ -z "$(losetup -a)" ]; }
