# block-diskseq failing on a real host leaves nothing behind. Two failures:
#  1. the handoff proof never comes: the script is told to wait for the
#     `opened` node (which stock blkback never writes) for 2 s — libxl passes
#     its environment to hotplug scripts — so it gives up, reports the error
#     and exits 1;
#  2. the target does not exist.
# Either way `xl block-attach` must fail. libxl does not undo a failed
# block-attach by itself (the backend dir stays, and in case 1 blkback has
# already opened the published device); `xl block-detach` must then leave
# nothing: no backend, no loop device (the script's loop device is autoclear:
# it disappears when blkback lets go).
# shellcheck shell=bash
# shellcheck source=../lib.sh
source /xentest/lib.sh

img=/tmp/failure-cleanup.img
make_image "$img" 16 failure
be=$(backend_dir 0 "$(vdev_devid xvdb)")

attach_expect_failure() {
    local what=$1 target=$2 rc
    shift 2
    : >/var/log/xen/xen-hotplug.log
    : >"$XT_STATE/fail-detach.out"
    env "$@" xl block-attach 0 "format=raw, vdev=xvdb, access=rw, script=$DISKSEQ_SCRIPT, target=$target" \
        >"$XT_STATE/fail.out" 2>&1
    rc=$?
    xt_evidence_cmd "$what: xl block-attach" cat "$XT_STATE/fail.out"
    xt_evidence_cmd "$what: hotplug log" cat /var/log/xen/xen-hotplug.log
    xt_check "$what: xl block-attach fails" test "$rc" != 0
    xt_evidence "$what: after the failure: backend state '$(xs_read "$be/state")', hotplug-status '$(xs_read "$be/hotplug-status")', loops: $(losetup -a | tr '\n' ' ')"
    if xenstore-exists "$be" 2>/dev/null; then
        xl block-detach 0 xvdb >"$XT_STATE/fail-detach.out" 2>&1 || xl block-detach -f 0 xvdb >>"$XT_STATE/fail-detach.out" 2>&1
        xt_evidence_cmd "$what: xl block-detach" cat "$XT_STATE/fail-detach.out"
    fi
    xt_check "$what: the backend dir is gone" wait_for "$XT_WAIT" xs_absent "$be"
    xt_check "$what: no loop device left for the image" wait_for 10 no_loops_of "$img"
    xt_check "$what: no loop device at all" wait_for 10 bash -c '[ -z "$(losetup -a)" ]'
}

attach_expect_failure "handoff timeout" "$img" BLOCK_DISKSEQ_HANDOFF=opened BLOCK_DISKSEQ_TIMEOUT=2
xt_check "handoff timeout: the script says what it waited for" \
    grep -q 'opened' /var/log/xen/xen-hotplug.log "$XT_STATE/fail.out"
attach_expect_failure "missing target" /tmp/no-such-image.img
xt_check "missing target: the error names the path" \
    grep -q '/tmp/no-such-image.img' /var/log/xen/xen-hotplug.log "$XT_STATE/fail.out" "$XT_STATE/fail-detach.out"
