# Scenario 2: a PV guest booted with two disks through a block script, one
# read-only and one writable (sourced by the guest-* scenarios). The guest
# (tests/xen/guest/init) reports what each disk holds and writes a token to
# the writable one; then dom0 destroys it, which must free both devices.
# shellcheck shell=bash
# shellcheck source=lib.sh
source /xentest/lib.sh

# disk_reads <console> <dev> <ro>: the guest's three reads of <dev>'s first
# line (tests/xen/guest/init), one per line, from the last report of it.
disk_reads() {
    grep -a "GUEST-DISK $2 ro=$3 " "$1" | tail -1 | sed -n 's/.* reads=\[\([^]]*\)\].*/\1/p' | tr '|' '\n'
}

# guest_sees_own <console> <dev> <ro> <tag>: the guest read <dev>'s own
# content and never anything else. An empty read (zeros) is counted, not
# failed: under QEMU TCG a domU read returns zeros now and then, with either
# block script, while reads before and after show the disk's own content
# (docs/real-xen.md, "Platform faults"). A read of another image's content —
# the failure this scenario exists to catch — fails the check.
guest_sees_own() {
    local console=$1 dev=$2 ro=$3 tag=$4 read own=0 empty=0 other=0
    while IFS= read -r read; do
        case "$read" in
        "XENTEST-IMAGE $tag") own=$((own + 1)) ;;
        "") empty=$((empty + 1)) ;;
        *) other=$((other + 1)) ;;
        esac
    done < <(disk_reads "$console" "$dev" "$ro")
    xt_figure "${dev}_empty_reads" "$empty"
    [ "$other" = 0 ] && [ "$own" -ge 1 ]
}

# guest_two_disks <script>
guest_two_disks() {
    local script=$1 name=xt-guest domid token tag_a tag_b img_a=/tmp/guest-a.img img_b=/tmp/guest-b.img
    local console=/var/log/xen/console/guest-$name.log be_a be_b t0
    token="token-$RANDOM$RANDOM"
    tag_a="guest-a-$RANDOM"
    tag_b="guest-b-$RANDOM"
    # A repeat in the same boot starts from nothing: no old image content,
    # no console lines of an earlier guest of the same name.
    rm -f "$img_a" "$img_b" "$console"
    make_image "$img_a" 32 "$tag_a"
    make_image "$img_b" 32 "$tag_b"
    cat >"$XT_STATE/guest.cfg" <<EOF
name = "$name"
type = "pv"
kernel = "/xentest/vmlinuz"
ramdisk = "/xentest/guest.cpio.gz"
extra = "console=hvc0 rdinit=/init loglevel=4 xentest_write=xvdb xentest_token=$token"
memory = 256
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
disk = [ 'format=raw, vdev=xvda, access=r, script=$script, target=$img_a',
         'format=raw, vdev=xvdb, access=rw, script=$script, target=$img_b' ]
EOF
    t0=$(ms_now)
    xl_create_guest "xl create" "$XT_STATE/guest.cfg"
    xt_evidence "xl create returned after $(($(ms_now) - t0)) ms"
    domid=$(xl domid "$name" 2>/dev/null)
    xt_check "the guest is running" test -n "$domid"
    be_a=$(backend_dir "$domid" 51712)
    be_b=$(backend_dir "$domid" 51728)
    xt_check "the guest reported back (GUEST-DONE on its console)" wait_for 150 grep -q GUEST-DONE "$console"
    xt_evidence "guest done after $(($(ms_now) - t0)) ms"
    xt_evidence_cmd "guest console" cat "$console"
    xt_evidence_cmd "dom0 kernel" bash -c "dmesg --notime | grep -iE 'blkback|blkif|loop|vbd|i/o error' | tail -20"
    dump_backend "$be_a"
    dump_backend "$be_b"
    dump_vbd_sysfs "vbd-$domid-51712"
    dump_vbd_sysfs "vbd-$domid-51728"
    xt_evidence_cmd "losetup" losetup -a
    xt_expect_eq "backend of xvda Connected" "$(xs_read "$be_a/state")" 4
    xt_expect_eq "backend of xvdb Connected" "$(xs_read "$be_b/state")" 4
    xt_check "the guest sees xvda read-only with its own content" \
        guest_sees_own "$console" xvda 1 "$tag_a"
    xt_check "the guest sees xvdb writable with its own content" \
        guest_sees_own "$console" xvdb 0 "$tag_b"
    xt_check "the guest's write to xvdb succeeded" grep -qF "GUEST-WRITE xvdb ok" "$console"
    if [ "$script" = "$DISKSEQ_SCRIPT" ]; then
        local be
        for be in "$be_a" "$be_b"; do
            local pdev seq
            pdev=$(xs_read "$be/physical-device")
            seq=$(cat "/sys/dev/block/$((16#${pdev%:*})):$((16#${pdev#*:}))/diskseq" 2>/dev/null)
            xt_expect_eq "$be: diskseq node equals the served disk's" "$(xs_read "$be/diskseq")" "$(printf '%x' "${seq:-0}")"
        done
    fi

    xl destroy "$name"
    xt_expect_eq "xl destroy exit status" "$?" 0
    xt_check "both backend dirs removed" wait_for "$XT_WAIT" bash -c "! xenstore-exists $be_a && ! xenstore-exists $be_b"
    xt_check "no loop device left for the read-only image" wait_for 10 no_loops_of "$img_a"
    xt_check "no loop device left for the writable image" wait_for 10 no_loops_of "$img_b"
    xt_expect_eq "the guest's write landed in the writable image" \
        "$(dd if="$img_b" bs=1M skip=1 count=1 status=none | head -1 | tr -d '\0')" "GUEST-WROTE $token"
    xt_expect_eq "the read-only image is unchanged" "$(read_tag "$img_a")" "XENTEST-IMAGE $tag_a"
    xt_evidence_cmd "losetup after destroy" losetup -a
    return 0
}
