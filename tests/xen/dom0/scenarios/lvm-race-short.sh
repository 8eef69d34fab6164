# lvm-race with more attempts and a shorter window (the plan passes 6 and
# 3 s): the stock figure against a window closer to the time the
# adversary's lvremove + lvcreate takes (2.0-4.1 s after the lookup in
# these boots), measured against the same window on the patched blkback.
# Where the swap no longer fits the window, the stock rate drops below 1
# and the patched part serves the victim instead of refusing.
# shellcheck shell=bash
# shellcheck source=lvm-race.sh
source /xentest/scenarios/lvm-race.sh "$@"
