# lvm-race with a window shorter than the adversary's swap takes at its
# fastest plus the script's own publishing time (the plan passes more
# attempts and a shorter window): some swaps land in the window, some do
# not, so the stock figure is a rate below 1, measured against the same
# window on the patched blkback.
# shellcheck shell=bash
# shellcheck source=lvm-race.sh
source /xentest/scenarios/lvm-race.sh "$@"
