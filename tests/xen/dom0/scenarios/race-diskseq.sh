# Scenario 3 against block-diskseq on stock blkback: a rate, not a verdict.
# The adversary detaches devices it does not own (root can); on stock
# blkback block-diskseq attaches its loop device persistent and holds no fd
# (issue 10), so nothing defers that detach before blkback's open, and the
# wrong-disk count is reported as a figure. That is the documented trade-off
# of issue 10: only the kernel's diskseq check defends against such a
# process. The assertion wrong = 0 is kill-race's (a killed script, an
# adversary waiting for a freed minor).
#   race-diskseq.sh [attempts (default 10)]
# shellcheck shell=bash
# shellcheck source=../race.sh
source /xentest/race.sh
race_run "$DISKSEQ_SCRIPT" "${1:-10}"
xt_expect_eq "every attempt accounted for" "$((RACE_RIGHT + RACE_WRONG + RACE_FAILED))" "${1:-10}"
xt_check "no loop device left behind" wait_for 10 no_loops_at_all
