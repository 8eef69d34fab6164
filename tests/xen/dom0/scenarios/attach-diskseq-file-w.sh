# Scenario: dom0 self-attach with the block-diskseq, access rw, file target.
# shellcheck shell=bash
# shellcheck source=../attach.sh
source /xentest/attach.sh
attach_roundtrip "$DISKSEQ_SCRIPT" rw file xvdc
