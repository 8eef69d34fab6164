# Scenario: dom0 self-attach with the block-diskseq, access r, file target.
# shellcheck shell=bash
# shellcheck source=../attach.sh
source /xentest/attach.sh
attach_roundtrip "$DISKSEQ_SCRIPT" r file xvdb
