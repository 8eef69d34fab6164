# Scenario: dom0 self-attach with the stock Xen `block` script, access rw, file target.
# shellcheck shell=bash
# shellcheck source=../attach.sh
source /xentest/attach.sh
attach_roundtrip "$STOCK_SCRIPT" rw file xvdc
