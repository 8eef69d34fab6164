# Scenario 3: the race against block-diskseq. Every read must show the disk
# that was given: wrong must be 0.
#   race-diskseq.sh [attempts (default 10)]
# shellcheck shell=bash
# shellcheck source=../race.sh
source /xentest/race.sh
race_run "$DISKSEQ_SCRIPT" "${1:-10}"
xt_expect_eq "attempts where blkback served another image" "$RACE_WRONG" 0
xt_check "at least one attempt connected the right disk" test "$RACE_RIGHT" -gt 0
# The adversary may take the minor back only once the backend let go of it.
xt_check "every adversary rebind came after the backend closed (state 5, 6 or gone)" \
    bash -c "! grep -Ev 'state=(5|6)?\$' '$RACE_TALLY.log'"
xt_check "no loop device left behind" wait_for 10 no_loops_at_all
