# Issue 14: the handoff race on real device-mapper. `lvremove` then
# `lvcreate` hands the freed dm minor to the new volume (the lowest free
# minor), so a published device number can come to name another tenant's
# volume before blkback opens it.
#
# The victim volume (tagged VICTIM) and the adversary's (EVIL, created on
# other extents without zeroing, so its own old content is what it shows)
# take turns on minor 0 of device-mapper's major. Each attempt attaches the
# victim to dom0 with `xl block-attach`; as soon as the block script has
# looked the victim up, the adversary removes it and creates its own volume,
# which takes the freed minor. Three parts:
#
#  1. stock blkback, dom0/window-block (looks up, waits a window, publishes
#     the number and exits — a toolstack that learned the number earlier):
#     every attempt where the swap landed inside the window serves EVIL.
#  2. the patched blkback, the same script also publishing the diskseq it
#     looked up: the same swaps are refused (19 creating vbd structure),
#     never served.
#  3. the patched blkback, block-diskseq: it holds the volume open from its
#     lookup until blkback's `opened` = 1, so the adversary's lvremove fails
#     (in use) and the victim is served.
#
#   lvm-race.sh [attempts per part (default 3)] [window seconds (default 5)]
# shellcheck shell=bash
# shellcheck source=../blkback.sh
source /xentest/blkback.sh
# shellcheck source=../lvm.sh
source /xentest/lvm.sh

attempts=${1:-3}
window=${2:-5}
WINDOW_SCRIPT=/xentest/window-block
VDEV=xvdb
DEVID=$(vdev_devid $VDEV)
BE=$(backend_dir 0 "$DEVID")
ERR=$(error_node 0 "$DEVID")
LOG=$XT_STATE/window.log
ADV=$XT_STATE/lvm-adversary.log

lvm_up 64 || {
    xt_fail_check "volume group on a loop device"
    exit 1
}
# The extents each volume lives on: victim 0-3, evil 16-19. Evil's content
# is written once, then the volume removed: re-created without zeroing on
# the same extents, it shows that content again.
lvm_run lvcreate -q -y -Zn -Wn -n evil -L 4M "$LVM_VG" "$LVM_PV:16-19"
tag_device "/dev/$LVM_VG/evil" EVIL
lvm_run lvremove -q -f "$LVM_VG/evil"
lvm_run lvcreate -q -y -Zn -Wn -n victim -L 4M "$LVM_VG" "$LVM_PV:0-3"
tag_device "/dev/$LVM_VG/victim" VICTIM
xt_evidence_cmd "lvs" lvs -o lv_name,lv_kernel_major,lv_kernel_minor,seg_pe_ranges "$LVM_VG"

# The victim back on its extents (and minor) for the next attempt.
victim_back() {
    [ -e "/dev/$LVM_VG/evil" ] && lvm_run lvremove -q -f "$LVM_VG/evil"
    [ -e "/dev/$LVM_VG/victim" ] || lvm_run lvcreate -q -y -Zn -Wn -n victim -L 4M "$LVM_VG" "$LVM_PV:0-3"
    [ "$(read_tag "/dev/$LVM_VG/victim")" = "XENTEST-IMAGE VICTIM" ]
}

# The adversary: once the script has looked the victim up (its log line, or
# for block-diskseq the published record), lvremove + lvcreate. Logs
# "swapped <ms> <maj:min hex>" or "refused <ms> <lvremove's message>".
adversary() {
    local trigger=$1 out t
    if [ "$trigger" = looked-up ]; then
        wait_for 60 grep -q '^looked-up' "$LOG" || return
    else
        wait_for 60 xenstore-exists "$BE/physical-device" || return
    fi
    if out=$(lvremove -q -f "$LVM_VG/victim" 2>&1); then
        lvcreate -q -y -Zn -Wn -n evil -L 4M "$LVM_VG" "$LVM_PV:16-19" >/dev/null 2>&1
        t=$(ms_now)
        echo "swapped $t $(stat -L -c '%t:%T' "/dev/$LVM_VG/evil" 2>/dev/null)" >"$ADV"
    else
        echo "refused $(ms_now) $(echo "$out" | tr '\n' ' ')" >"$ADV"
    fi
}

# part <label> <variant> <script> <trigger> [env...]: sets P_RIGHT, P_WRONG,
# P_REFUSED, P_OTHER, P_SWAPPED (swaps that landed before the publish and
# took the published minor), P_SWAP_WRONG (those served EVIL), P_SWAP_REFUSED,
# P_IN_USE (the adversary's lvremove failed: the volume was held open),
# P_GONE (blkback found no device: removed, the new one not yet created —
# "2 creating vbd structure", nothing served).
part() {
    local label=$1 variant=$2 script=$3 trigger=$4 i state seen err adv pub swapped
    shift 4
    blkback_use "$variant"
    P_RIGHT=0 P_WRONG=0 P_REFUSED=0 P_OTHER=0 P_SWAPPED=0 P_SWAP_WRONG=0 P_SWAP_REFUSED=0 P_IN_USE=0 P_GONE=0
    for ((i = 1; i <= attempts; i++)); do
        xt_check "[$label $i] the victim is back on its extents" victim_back
        : >"$LOG"
        : >"$ADV"
        adversary "$trigger" &
        local adv_pid=$!
        env XT_WINDOW_LOG="$LOG" XT_WINDOW_S="$window" "$@" \
            xl block-attach 0 "format=raw, vdev=$VDEV, access=r, script=$script, target=/dev/$LVM_VG/victim" \
            >"$XT_STATE/lr.out" 2>&1
        wait_for "$XT_WAIT" decided "$BE"
        wait "$adv_pid"
        state=$(xs_read "$BE/state")
        seen=
        [ "$state" = 4 ] && wait_for 10 test -b /dev/$VDEV && seen=$(read_tag /dev/$VDEV)
        err=$(xs_read "$ERR")
        adv=$(cat "$ADV")
        pub=$(xs_read "$BE/physical-device")
        # The swap counts when it finished before the publish and the new
        # volume took the published number.
        swapped=0
        if [ "${adv%% *}" = swapped ]; then
            local t_swap t_pub
            t_swap=$(echo "$adv" | cut -d' ' -f2)
            t_pub=$(awk '$1 == "published" { print $2 }' "$LOG")
            if [ "$(echo "$adv" | cut -d' ' -f3)" = "$pub" ] &&
                { [ -z "$t_pub" ] || [ "$t_swap" -le "$t_pub" ]; }; then
                swapped=1
                P_SWAPPED=$((P_SWAPPED + 1))
            fi
        fi
        [[ "$adv" == refused*"in use"* ]] && P_IN_USE=$((P_IN_USE + 1))
        case "$state/$seen" in
        "4/XENTEST-IMAGE VICTIM") P_RIGHT=$((P_RIGHT + 1)) ;;
        "4/XENTEST-IMAGE EVIL")
            P_WRONG=$((P_WRONG + 1))
            [ $swapped = 1 ] && P_SWAP_WRONG=$((P_SWAP_WRONG + 1))
            ;;
        5/* | 6/*)
            if [[ "$err" == "19 creating vbd structure"* ]]; then
                P_REFUSED=$((P_REFUSED + 1))
                [ $swapped = 1 ] && P_SWAP_REFUSED=$((P_SWAP_REFUSED + 1))
            elif [[ "$err" == "2 creating vbd structure"* ]]; then
                P_GONE=$((P_GONE + 1))
            else
                P_OTHER=$((P_OTHER + 1))
            fi
            ;;
        *) P_OTHER=$((P_OTHER + 1)) ;;
        esac
        xt_evidence "[$label $i] state $state, read '$seen', error '$err', record $pub diskseq $(xs_read "$BE/diskseq"), adversary: $adv, script: $(tr '\n' ' ' <"$LOG")"
        [ "$state" = 4 ] || xt_evidence_cmd "[$label $i] xl" cat "$XT_STATE/lr.out"
        xl block-detach 0 $VDEV >/dev/null 2>&1 || xl block-detach -f 0 $VDEV >/dev/null 2>&1
        wait_for "$XT_WAIT" xs_absent "$BE"
        xenstore-rm "/local/domain/0/error/backend/vbd/0/$DEVID" 2>/dev/null
    done
    xt_evidence "[$label] $attempts attempts: right $P_RIGHT, wrong $P_WRONG, refused $P_REFUSED, no device $P_GONE, other $P_OTHER; swaps in the window $P_SWAPPED (served $P_SWAP_WRONG, refused $P_SWAP_REFUSED)"
}

# 1. Stock blkback, the number alone.
part stock stock "$WINDOW_SCRIPT" looked-up
xt_figure stock_attempts "$attempts"
xt_figure stock_swaps_in_window "$P_SWAPPED"
xt_figure stock_wrong_disk "$P_WRONG"
xt_figure stock_right_disk "$P_RIGHT"
xt_figure stock_no_device "$P_GONE"
xt_check "[stock] the race happened: at least one swap landed in the window" test "$P_SWAPPED" -ge 1
xt_expect_eq "[stock] every swap in the window served the adversary's volume" "$P_SWAP_WRONG" "$P_SWAPPED"

# 2. The patched blkback, the number and the diskseq learned at lookup.
part patched patched "$WINDOW_SCRIPT" looked-up XT_WINDOW_DISKSEQ=1
xt_figure patched_attempts "$attempts"
xt_figure patched_swaps_in_window "$P_SWAPPED"
xt_figure patched_wrong_disk "$P_WRONG"
xt_figure patched_refused "$P_REFUSED"
xt_figure patched_right_disk "$P_RIGHT"
xt_figure patched_no_device "$P_GONE"
xt_expect_eq "[patched] the adversary's volume was never served" "$P_WRONG" 0
xt_check "[patched] the race happened: at least one swap landed in the window" test "$P_SWAPPED" -ge 1
xt_expect_eq "[patched] every swap in the window refused with ENODEV" "$P_SWAP_REFUSED" "$P_SWAPPED"
xt_expect_eq "[patched] every attempt served the victim, or was refused, or found no device" \
    "$((P_RIGHT + P_REFUSED + P_GONE))" "$attempts"

# 3. The patched blkback, block-diskseq (the adversary strikes at the publish).
: >"$LOG"
part block-diskseq patched "$DISKSEQ_SCRIPT" published
xt_figure diskseq_attempts "$attempts"
xt_figure diskseq_wrong_disk "$P_WRONG"
xt_figure diskseq_right_disk "$P_RIGHT"
xt_figure diskseq_refused "$P_REFUSED"
xt_figure diskseq_adversary_lvremove_in_use "$P_IN_USE"
# The script holds the volume from its lookup until blkback's opened = 1,
# and blkback from then on: the adversary never gets to remove it.
xt_expect_eq "[block-diskseq] every lvremove of the adversary failed: volume in use" "$P_IN_USE" "$attempts"
xt_expect_eq "[block-diskseq] the adversary's volume was never served" "$P_WRONG" 0
xt_expect_eq "[block-diskseq] every attempt served the victim or was refused" "$((P_RIGHT + P_REFUSED))" "$attempts"

blkback_use stock
victim_back >/dev/null
lvm_down
