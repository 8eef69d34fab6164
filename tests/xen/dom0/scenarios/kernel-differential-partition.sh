# kernel-differential with issue 14's partition records: partition 1 of a
# loop device with a partition table, `diskseq-partition` right, absent,
# without `diskseq`, on the whole disk, another number, start or size, and
# malformed; the patched blkback (patch 0002) against `diskseq backend`.
# shellcheck shell=bash
# shellcheck source=kernel-differential.sh
source /xentest/scenarios/kernel-differential.sh partition
