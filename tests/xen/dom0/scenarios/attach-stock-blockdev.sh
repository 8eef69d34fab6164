# Scenario: dom0 self-attach with the stock Xen `block` script, access rw, blockdev target.
# shellcheck shell=bash
# shellcheck source=../attach.sh
source /xentest/attach.sh
attach_roundtrip "$STOCK_SCRIPT" rw blockdev xvdd
