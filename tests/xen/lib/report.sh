#!/usr/bin/env bash
# Turns the serial log of one boot into per-scenario verdicts.
#
#   report.sh <plan> <serial-log> <report-file> <qemu-exit-status>
#
# A scenario passes only if dom0 printed `XENTEST PASS <name>`, at least one
# CHECK-OK and no CHECK-FAIL for it: a scenario that checked nothing, or whose
# verdict never reached the console (hang, crash, timeout), fails. Writes every
# marker line, grouped by scenario, to the report file; prints the summary and
# the evidence of failed scenarios. Exit status 1 if anything failed.
set -uo pipefail
plan=$1 serial=$2 report=$3 qemu_rc=$4

# The serial stream mixes Xen's and dom0's output; markers may share a line
# with a stray message, so match them anywhere in a line.
markers=$(grep -a -o 'XENTEST .*' "$serial" | tr -d '\r')
passed=0
failed=0
: >"$report"

{
    echo "# real-Xen harness report ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo "# host: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "$markers" | grep -E '^XENTEST (NOTE|ALL-DONE)'
} >>"$report"

while read -r name _budget; do
    own=$(echo "$markers" | awk -v n="$name" '$3 == n')
    verdict=$(echo "$own" | awk '$2 == "PASS" || $2 == "FAIL"' | tail -1)
    oks=$(echo "$own" | grep -c '^XENTEST CHECK-OK ')
    fails=$(echo "$own" | grep -c '^XENTEST CHECK-FAIL ')
    status=FAIL
    why=
    if [ -z "$verdict" ]; then
        why="no verdict on the console (boot ended or hung first; QEMU exit $qemu_rc)"
    elif [ "${verdict#XENTEST PASS}" = "$verdict" ]; then
        why=${verdict#XENTEST FAIL "$name" }
    elif [ "$oks" = 0 ]; then
        why="no check ran"
    elif [ "$fails" != 0 ]; then
        why="$fails check(s) failed"
    else
        status=PASS
    fi
    {
        echo
        echo "== $status $name ${why:+($why)}"
        echo "$own"
    } >>"$report"
    if [ "$status" = PASS ]; then
        passed=$((passed + 1))
        echo "xentest: PASS $name ($oks checks, ${verdict#XENTEST PASS "$name" })"
    else
        failed=$((failed + 1))
        echo "xentest: FAIL $name: $why"
        # The failed checks first, then the evidence (the report has it all).
        echo "$own" | grep '^XENTEST CHECK-FAIL' | sed 's/^/    /'
        echo "$own" | grep '^XENTEST EVIDENCE' | sed 's/^/    /' | head -200
    fi
    echo "$own" | grep '^XENTEST FIGURE ' | sed 's/^XENTEST FIGURE /    figure: /'
done <"$plan"

if ! echo "$markers" | grep -q '^XENTEST ALL-DONE'; then
    echo "xentest: dom0 never finished its plan; last 40 lines of $serial:"
    tail -40 "$serial" | sed 's/^/    /'
fi
echo "xentest: report with all evidence: $report"
echo "xentest: $passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
