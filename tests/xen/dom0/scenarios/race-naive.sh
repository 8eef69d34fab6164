# Scenario 3, baseline: the race against a naive script that records
# physical-device and exits (what Xen's stock script does). Measures how often
# blkback ends up serving the adversary's image.
#   race-naive.sh [attempts (default 10)]
# shellcheck shell=bash
# shellcheck source=../race.sh
source /xentest/race.sh
race_run "$NAIVE_SCRIPT" "${1:-10}"
xt_expect_eq "every attempt accounted for" "$((RACE_RIGHT + RACE_WRONG + RACE_FAILED))" "${1:-10}"
xt_check "no loop device left behind" wait_for 10 no_loops_at_all
