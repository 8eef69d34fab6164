# Scenario 2 with the stock Xen \`block\` script: a PV guest with two disks.
# shellcheck shell=bash
# shellcheck source=../guest.sh
source /xentest/guest.sh
guest_two_disks "$STOCK_SCRIPT"
