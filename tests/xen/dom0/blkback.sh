# Which xen-blkback serves dom0's disks, and the helpers of the kernel-*
# scenarios (sourced). The dom0 image carries Debian's stock module (loaded
# at boot by /init) and our patched build in /xentest/modules
# (kernel/build.sh, shipped by tests/xen/run); a scenario swaps them while
# no vbd exists, and puts stock back when it ends, so the scenarios after it
# test stock blkback as before.
# shellcheck shell=bash
# shellcheck source=lib.sh
source /xentest/lib.sh

PATCHED_KO=/xentest/modules/xen-blkback.ko
GIVEN_SCRIPT=/xentest/given-block

# The variant loaded now: "patched", "stock" or "none". Debian's kernel
# records no srcversion for its modules, so the loaded one is told apart by
# its taint: ours is out of tree ("O") and unsigned ("E"), Debian's neither.
blkback_loaded() {
    local taint
    taint=$(cat /sys/module/xen_blkback/taint 2>/dev/null) || {
        echo none
        return
    }
    case $taint in
    *O*) echo patched ;;
    *) echo stock ;;
    esac
}

no_vbd() { [ -z "$(ls /sys/bus/xen-backend/devices 2>/dev/null | grep '^vbd-')" ]; }

# blkback_use patched|stock: unloads the current module (only possible while
# no vbd exists) and loads the other one; a check records the outcome.
blkback_use() {
    local want=$1
    [ "$(blkback_loaded)" = "$want" ] && return 0
    xt_check "no vbd exists before swapping blkback" wait_for "$XT_WAIT" no_vbd
    rmmod xen_blkback 2>&1 | while IFS= read -r l; do xt_evidence "rmmod: $l"; done
    if [ "$want" = patched ]; then
        insmod "$PATCHED_KO" 2>&1 | while IFS= read -r l; do xt_evidence "insmod: $l"; done
    else
        modprobe xen-blkback 2>&1 | while IFS= read -r l; do xt_evidence "modprobe: $l"; done
    fi
    xt_expect_eq "xen-blkback variant loaded" "$(blkback_loaded)" "$want"
    xt_evidence "kernel taint now: $(cat /proc/sys/kernel/tainted); module taint: $(cat /sys/module/xen_blkback/taint 2>/dev/null)"
}

# The error node of a dom0 backend (xenbus_dev_fatal's convention).
error_node() { echo "/local/domain/0/error/backend/vbd/$1/$2/error"; }

# True once a backend decided: Connected (4), or refused: Closing (5), or
# Closed (6) once a real frontend (dom0's blkfront) answered the Closing.
decided() {
    case $(xenstore-read "$1/state" 2>/dev/null) in 4 | 5 | 6) return 0 ;; esac
    return 1
}
