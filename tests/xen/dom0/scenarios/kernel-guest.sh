# A PV guest with two disks through block-diskseq on the patched
# xen-blkback: the check passes for the right disks (the guest reads each
# disk's own content and writes to the writable one), and the autoclear
# loop devices disappear with the guest (tests/xen/dom0/guest.sh).
# shellcheck shell=bash
# shellcheck source=../blkback.sh
source /xentest/blkback.sh
# shellcheck source=../guest.sh
source /xentest/guest.sh
blkback_use patched
guest_two_disks "$DISKSEQ_SCRIPT"
blkback_use stock
