# Scenario 6: our backend model against real xen-blkback, for the same device.
#
# One loop device (bound by this test for the whole scenario) is served twice
# in each mode (w with discard, r without): first by real blkback through
# `xl block-attach 0` with block-diskseq, then by `diskseq backend` — our
# model — serving a made-up backend domain 7 in the same real xenstored, with
# the toolstack's and the script's nodes written as libxl and block-diskseq
# wrote them for blkback, and the frontend's handshake played by hand. Every
# node a backend writes must match; the `opened` node is the one deliberate
# difference (the diskseq patches' blkback writes it, stock blkback does not).
# shellcheck shell=bash
# shellcheck source=../lib.sh
source /xentest/lib.sh

MODEL_DOM=7
GUEST_DOM=5
DEVID=$(vdev_devid xvdb)
# Nodes the backends themselves write (probe, connect); the rest are the
# toolstack's, the script's or the frontend's.
BACKEND_NODES="feature-max-indirect-segments multi-queue-max-queues max-ring-page-order
feature-flush-cache feature-barrier feature-persistent feature-discard discard-granularity
discard-alignment discard-secure sectors info sector-size physical-sector-size state opened"
DELIBERATE="opened"

img=/tmp/backend-vs-blkback.img
make_image "$img" 96 compare
loop=$(losetup -f --show "$img") || exit 1
pdev=$(stat -L -c '%t:%T' "$loop")
seq=$(cat "/sys/block/${loop#/dev/}/diskseq")
xt_evidence "device under comparison: $loop ($pdev, diskseq $seq) bound to $img"

# Snapshot of a backend dir's backend-written nodes: "name=value" lines.
snapshot() {
    local dir=$1 name
    for name in $BACKEND_NODES; do
        if xenstore-exists "$dir/$name" 2>/dev/null; then
            echo "$name=$(xs_read "$dir/$name")"
        fi
    done
}

compare_mode() {
    local access=$1 mode real_be model_be fe toolstack_nodes
    mode=${access/rw/w}
    real_be=$(backend_dir 0 "$DEVID")
    model_be=/local/domain/$MODEL_DOM/backend/vbd/$GUEST_DOM/$DEVID
    fe=/local/domain/$GUEST_DOM/device/vbd/$DEVID

    # 1. Real blkback.
    xl block-attach 0 "format=raw, vdev=xvdb, access=$access, script=$DISKSEQ_SCRIPT, target=$loop" \
        >"$XT_STATE/cmp-attach.out" 2>&1
    xt_check "[$access] real: blkback Connected" wait_for "$XT_WAIT" xs_equals "$real_be/state" 4
    snapshot "$real_be" >"$XT_STATE/real-$access"
    xt_evidence_cmd "[$access] real blkback" cat "$XT_STATE/real-$access"
    toolstack_nodes=$(xenstore-ls -f "$real_be")
    xl block-detach 0 xvdb >/dev/null 2>&1
    xt_check "[$access] real: detached" wait_for "$XT_WAIT" xs_absent "$real_be"

    # 2. Our model, on the same device, with the same inputs.
    xenstore-rm "/local/domain/$MODEL_DOM" "/local/domain/$GUEST_DOM" 2>/dev/null
    xenstore-write "$fe/backend" "$model_be" "$fe/backend-id" "$MODEL_DOM" "$fe/state" 1 \
        "$fe/virtual-device" "$DEVID" "$fe/device-type" disk
    xenstore-write "$model_be/frontend" "$fe" "$model_be/frontend-id" "$GUEST_DOM" \
        "$model_be/online" 1 "$model_be/removable" 0 "$model_be/bootable" 1 "$model_be/state" 1 \
        "$model_be/dev" xvdb "$model_be/type" phy "$model_be/mode" "$mode" \
        "$model_be/device-type" disk "$model_be/params" "$loop" \
        "$model_be/discard-enable" "$(echo "$toolstack_nodes" | sed -n 's/.*\/discard-enable = "\(.*\)"/\1/p')" \
        "$model_be/specification" xen
    diskseq backend --domid "$MODEL_DOM" >"$XT_STATE/model-$access.log" 2>&1 &
    local model_pid=$!
    xt_check "[$access] model: InitWait" wait_for "$XT_WAIT" xs_equals "$model_be/state" 2
    xenstore-write "$model_be/physical-device" "$pdev" "$model_be/physical-device-path" "$loop" \
        "$model_be/diskseq" "$(printf '%x' "$seq")" "$model_be/hotplug-status" connected
    xt_check "[$access] model: opened the device" wait_for "$XT_WAIT" xs_equals "$model_be/opened" 1
    xenstore-write "$fe/ring-ref" 8 "$fe/event-channel" 9 "$fe/protocol" x86_64-abi "$fe/state" 3
    xt_check "[$access] model: Connected" wait_for "$XT_WAIT" xs_equals "$model_be/state" 4
    snapshot "$model_be" >"$XT_STATE/model-$access"
    xt_evidence_cmd "[$access] our model" cat "$XT_STATE/model-$access"
    xenstore-write "$model_be/online" 0 "$model_be/state" 5 "$fe/state" 6
    xt_check "[$access] model: Closed" wait_for "$XT_WAIT" xs_equals "$model_be/state" 6
    kill "$model_pid" 2>/dev/null
    wait "$model_pid" 2>/dev/null
    xt_evidence_cmd "[$access] model log" cat "$XT_STATE/model-$access.log"
    xenstore-rm "/local/domain/$MODEL_DOM" "/local/domain/$GUEST_DOM" 2>/dev/null

    # 3. Node by node.
    local name real model
    for name in $BACKEND_NODES; do
        real=$(sed -n "s/^$name=//p" "$XT_STATE/real-$access")
        model=$(sed -n "s/^$name=//p" "$XT_STATE/model-$access")
        if [[ " $DELIBERATE " == *" $name "* ]]; then
            xt_evidence "[$access] $name: blkback '${real:-<absent>}', model '${model:-<absent>}' (deliberate: diskseq patch node)"
            continue
        fi
        xt_expect_eq "[$access] $name: model as blkback" "${model:-<absent>}" "${real:-<absent>}"
    done
}

compare_mode rw
compare_mode r
losetup -d "$loop"
