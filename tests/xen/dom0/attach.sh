# dom0 self-attach through a block script, checked end to end (sourced by the
# attach-* scenarios).
# shellcheck shell=bash
# shellcheck source=lib.sh
source /xentest/lib.sh

# attach_roundtrip <script> <access r|rw> <target-kind file|blockdev> <vdev>
#
# Attaches a fresh tagged image to dom0 itself with `xl block-attach 0`, waits
# for blkback and blkfront to connect, reads the disk back through /dev/xvdX,
# writes through it when writable, detaches, and checks what is left behind.
attach_roundtrip() {
    local script=$1 access=$2 kind=$3 vdev=$4
    local devid img tag target own_loop='' be vbd t0 rc token
    devid=$(vdev_devid "$vdev")
    be=$(backend_dir 0 "$devid")
    vbd=vbd-0-$devid
    img=/tmp/$XT_SCENARIO.img
    tag="$XT_SCENARIO-$RANDOM$RANDOM"
    make_image "$img" 64 "$tag"
    target=$img
    if [ "$kind" = blockdev ]; then
        own_loop=$(losetup -f --show "$img") || {
            xt_fail_check "test's own loop device for $img"
            return
        }
        target=$own_loop
        xt_evidence "block-device target $own_loop (bound by the test to $img)"
    fi

    : >/var/log/xen/xen-hotplug.log
    t0=$(ms_now)
    xl block-attach 0 "format=raw, vdev=$vdev, access=$access, script=$script, target=$target" \
        >"$XT_STATE/attach.out" 2>&1
    rc=$?
    xt_evidence "xl block-attach exit=$rc in $(($(ms_now) - t0)) ms"
    xt_evidence_cmd "xl block-attach" cat "$XT_STATE/attach.out"
    xt_expect_eq "xl block-attach exit status" "$rc" 0

    xt_check "backend $be reaches Connected (4)" wait_for "$XT_WAIT" xs_equals "$be/state" 4
    xt_check "dom0 blkfront shows /dev/$vdev" wait_for "$XT_WAIT" test -b "/dev/$vdev"
    xt_evidence "attach to Connected+blkfront in $(($(ms_now) - t0)) ms"
    dump_backend "$be"
    dump_vbd_sysfs "$vbd"
    xt_evidence_cmd "losetup" losetup -a
    xt_evidence_cmd "hotplug log" cat /var/log/xen/xen-hotplug.log

    local pdev sysfs_pdev
    pdev=$(xs_read "$be/physical-device")
    sysfs_pdev=$(cat "/sys/bus/xen-backend/devices/$vbd/physical_device" 2>/dev/null)
    xt_expect_eq "blkback opened the device the script named (sysfs physical_device)" "$sysfs_pdev" "$pdev"
    xt_expect_eq "reading /dev/$vdev in dom0 gives the image's content" "$(read_tag "/dev/$vdev")" "XENTEST-IMAGE $tag"
    if [ "$kind" = file ]; then
        local loop
        loop=$(loops_of "$img")
        xt_check "a loop device serves $img" test -n "$loop"
        xt_expect_eq "the loop device is the one in physical-device" \
            "$(stat -L -c '%t:%T' "$loop" 2>/dev/null)" "$pdev"
    fi
    if [ "$access" = r ]; then
        xt_expect_eq "/dev/$vdev is read-only" "$(cat "/sys/block/$vdev/ro")" 1
        xt_check "writing to read-only /dev/$vdev fails" \
            bash -c "! echo x | dd of=/dev/$vdev bs=512 seek=4096 oflag=direct conv=fsync status=none 2>/dev/null"
    else
        token="written-through-$vdev-$RANDOM"
        xt_check "writing to /dev/$vdev succeeds" \
            bash -c "printf '%-512s' '$token' | dd of=/dev/$vdev bs=512 seek=2048 oflag=direct conv=fsync status=none"
    fi
    if [ "$script" = "$DISKSEQ_SCRIPT" ]; then
        diskseq_node_checks "$be" "$pdev" "$kind"
    fi

    t0=$(ms_now)
    xl block-detach 0 "$vdev" >"$XT_STATE/detach.out" 2>&1
    rc=$?
    xt_evidence "xl block-detach exit=$rc in $(($(ms_now) - t0)) ms"
    xt_evidence_cmd "xl block-detach" cat "$XT_STATE/detach.out"
    xt_expect_eq "xl block-detach exit status" "$rc" 0
    xt_check "backend dir $be removed" wait_for "$XT_WAIT" xs_absent "$be"
    xt_check "/dev/$vdev gone" wait_for 10 test ! -e "/dev/$vdev"
    if [ "$kind" = file ]; then
        xt_check "no loop device left for $img" wait_for 10 no_loops_of "$img"
    else
        xt_expect_eq "the script left the caller's own $own_loop alone" "$(loops_of "$img")" "$own_loop"
        losetup -d "$own_loop"
    fi
    if [ -n "${token:-}" ]; then
        xt_expect_eq "the write through /dev/$vdev landed in $img" \
            "$(dd if="$img" bs=512 skip=2048 count=1 status=none | tr -d ' \0')" "$token"
    fi
    xt_evidence_cmd "losetup after detach" losetup -a
    return 0
}

# Checks what block-diskseq must leave in xenstore beyond the stock contract.
diskseq_node_checks() {
    local be=$1 pdev=$2 kind=$3 node kernel_seq major minor
    node=$(xs_read "$be/diskseq")
    xt_check "diskseq node is lower-case hex, no 0x, no leading zero" \
        bash -c "[[ '$node' =~ ^[1-9a-f][0-9a-f]{0,15}$ ]]"
    major=$((16#${pdev%:*}))
    minor=$((16#${pdev#*:}))
    kernel_seq=$(cat "/sys/dev/block/$major:$minor/diskseq" 2>/dev/null)
    xt_evidence "diskseq node $node; kernel diskseq of $major:$minor = $kernel_seq"
    xt_expect_eq "diskseq node equals the served disk's diskseq" "$node" "$(printf '%x' "${kernel_seq:-0}")"
    xt_expect_eq "physical-device-path names the served device" \
        "$(stat -L -c '%t:%T' "$(xs_read "$be/physical-device-path")" 2>/dev/null)" "$pdev"
    # A block device given by the user is published as is: no loop device of
    # the script's to label or detach.
    [ "$kind" = file ] || return 0
    # The script logs to the hotplug log (or to stderr, which xl passes on).
    # Stock blkback writes no `opened`, so the handoff is the persistent one:
    # no wait for the backend at all, the device stays bound until `remove`.
    local logs=(/var/log/xen/xen-hotplug.log "$XT_STATE/attach.out") loop
    xt_check "the script's log says the device stays attached until remove (stock blkback: persistent handoff)" \
        grep -q "vbd/0/${be##*/}: .* add: .* stays attached until remove" "${logs[@]}"
    xt_check "the script's log shows no wait for the backend" \
        bash -c "! grep -q 'holding the device until\\|backend holds the device after' ${logs[*]}"
    loop=$(xs_read "$be/physical-device-path")
    xt_expect_eq "the loop device is persistent (autoclear off) while attached" \
        "$(losetup -n -l -O AUTOCLEAR "$loop" 2>/dev/null | tr -d ' ')" 0
    # The label lives in lo_file_name, which losetup never shows (it prints
    # sysfs backing_file): `diskseq loop gc --dry-run` lists the devices that
    # carry the script's label with the backend it names, and its verdict.
    xt_evidence_cmd "diskseq loop gc --dry-run" diskseq loop gc --dry-run
    xt_check "$loop carries the label of backend vbd/0/${be##*/}, judged in use" \
        bash -c "diskseq loop gc --dry-run | grep -E '^$loop +$((16#${pdev%:*})):$((16#${pdev#*:})) .*vbd/0/${be##*/} +in use'"
    return 0
}
