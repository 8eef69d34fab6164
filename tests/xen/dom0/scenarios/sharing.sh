# The sharing rule on a real host: a file may be used read-only by many
# domains but read-write by one. With a file already attached read-write to
# dom0, `xl create` of a guest that wants it read-write too must fail with
# block-diskseq; both read-only must work. Xen's stock script is run the same
# way and its answer reported (its file check matches losetup's decimal
# device number against hex, so it lets the second writer in).
# shellcheck shell=bash
# shellcheck source=../lib.sh
source /xentest/lib.sh

img=/tmp/sharing.img
make_image "$img" 16 sharing
be0=$(backend_dir 0 "$(vdev_devid xvdb)")

# second_user <script> <dom0 access> <guest access>: prints accepted/refused.
second_user() {
    local script=$1 first=$2 second=$3 name=xt-share rc
    xl block-attach 0 "format=raw, vdev=xvdb, access=$first, script=$script, target=$img" \
        >"$XT_STATE/share-attach.out" 2>&1 || {
        xt_fail_check "dom0 attach ($first) with $script"
        xt_evidence_cmd "xl block-attach" cat "$XT_STATE/share-attach.out"
        return
    }
    wait_for "$XT_WAIT" xs_equals "$be0/state" 4
    cat >"$XT_STATE/share.cfg" <<EOF
name = "$name"
type = "pv"
kernel = "/xentest/vmlinuz"
ramdisk = "/xentest/guest.cpio.gz"
extra = "console=hvc0 rdinit=/init loglevel=4"
memory = 128
on_poweroff = "destroy"
disk = [ 'format=raw, vdev=xvda, access=$second, script=$script, target=$img' ]
EOF
    xl create "$XT_STATE/share.cfg" >"$XT_STATE/share-create.out" 2>&1
    rc=$?
    xt_evidence_cmd "xl create ($script, dom0 $first, guest $second)" cat "$XT_STATE/share-create.out"
    if [ "$rc" = 0 ] && xl domid "$name" >/dev/null 2>&1; then
        echo accepted >"$XT_STATE/share-verdict"
        xl destroy "$name" >/dev/null 2>&1
    else
        echo refused >"$XT_STATE/share-verdict"
    fi
    wait_for "$XT_WAIT" bash -c "! xl domid $name >/dev/null 2>&1"
    xl block-detach 0 xvdb >/dev/null 2>&1
    wait_for "$XT_WAIT" xs_absent "$be0"
    xt_check "no loop device left for $img ($script, $first+$second)" wait_for 10 no_loops_of "$img"
}

second_user "$DISKSEQ_SCRIPT" rw rw
xt_expect_eq "block-diskseq refuses a second writer in another domain" "$(cat "$XT_STATE/share-verdict")" refused
second_user "$DISKSEQ_SCRIPT" r r
xt_expect_eq "block-diskseq lets two domains read the same file" "$(cat "$XT_STATE/share-verdict")" accepted
second_user "$STOCK_SCRIPT" rw rw
xt_figure stock_second_writer "$(cat "$XT_STATE/share-verdict")"
xt_evidence "Xen's stock block script, second writer in another domain: $(cat "$XT_STATE/share-verdict")"
