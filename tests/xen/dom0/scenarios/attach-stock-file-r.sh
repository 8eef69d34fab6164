# Scenario: dom0 self-attach with the stock Xen `block` script, access r, file target.
# shellcheck shell=bash
# shellcheck source=../attach.sh
source /xentest/attach.sh
attach_roundtrip "$STOCK_SCRIPT" r file xvdb
