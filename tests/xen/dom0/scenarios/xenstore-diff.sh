# Scenario 5 (first part): differential xenstore. The same sequence of
# operations, through Debian's C clients (xenstore-utils, libxenstore), runs
# against the real C xenstored of this dom0 and against ours (`diskseq
# xenstored`, started here on its own socket); replies, error messages, exit
# statuses, permissions and watch events must be identical.
# Operations stay below /xentest-diff, so the daemons' other content (the real
# one holds the whole host) does not matter.
# shellcheck shell=bash
# shellcheck source=../lib.sh
source /xentest/lib.sh

REAL=/run/xenstored/socket
OURS=/run/ours/socket
mkdir -p /run/ours
diskseq xenstored --socket "$OURS" --pid-file /run/ours/pid >"$XT_STATE/ours.log" 2>&1 &
ours_pid=$!
xt_check "our xenstored accepts connections" wait_for 10 test -S "$OURS"

# One operation per line; `W` lines start a watcher collecting N events.
OPS=$(
    cat <<'EOF'
xenstore-write /xentest-diff/a 1
xenstore-read /xentest-diff/a
xenstore-read /xentest-diff/missing
xenstore-exists /xentest-diff/a
xenstore-exists /xentest-diff/missing
xenstore-write /xentest-diff/b/c/d deep
xenstore-list /xentest-diff
xenstore-list /xentest-diff/b
xenstore-ls -f /xentest-diff
xenstore-write /xentest-diff/z 26 /xentest-diff/m 13 /xentest-diff/e 5
xenstore-list /xentest-diff
xenstore-write /xentest-diff/empty ""
xenstore-read /xentest-diff/empty
xenstore-write /xentest-diff/tab "$(printf 'x\ty')"
xenstore-ls /xentest-diff
xenstore-read /xentest-diff/b
xenstore-rm /xentest-diff/b/c
xenstore-ls -f /xentest-diff/b
xenstore-rm /xentest-diff/missing
xenstore-rm /xentest-diff/missing/child
xenstore-read /xentest-diff//a
xenstore-read /xentest-diff/a/
xenstore-read '/xentest-diff/a b'
xenstore-read xentest-diff-relative
xenstore-write "/xentest-diff/$(printf 'p%.0s' {1..3100})" long
xenstore-write /xentest-diff/p 1
xenstore-chmod /xentest-diff/p n0 r5 w7
xenstore-ls -p /xentest-diff/p
xenstore-chmod /xentest-diff/p b3
xenstore-ls -p /xentest-diff/p
xenstore-chmod /xentest-diff/p q1
xenstore-chmod /xentest-diff/missing r1
xenstore-write /xentest-diff/p/child inherits
xenstore-ls -p /xentest-diff/p
W 4 /xentest-diff/w
xenstore-write /xentest-diff/w/x 1
xenstore-write /xentest-diff/w/x 2
xenstore-rm /xentest-diff/w
W 2 /xentest-diff/w2/child
xenstore-write /xentest-diff/w2/child/leaf 1
xenstore-rm /xentest-diff/w2
xenstore-write /xentest-diff/big "$(head -c 4096 /dev/zero | tr '\0' v)"
xenstore-write /xentest-diff/bigger "$(head -c 4097 /dev/zero | tr '\0' v)"
xenstore-write /xentest-diff/r/s/t 1
xenstore-chmod -r /xentest-diff/r n0 r4
xenstore-ls -p /xentest-diff/r
W 1 @releaseDomain
W 1 @introduceDomain
xenstore-rm /xentest-diff
xenstore-exists /xentest-diff
EOF
)

# A seeded random sequence over a small tree, so that operations collide:
# writes (creating parents), reads, lists, removals, existence checks.
random_ops() {
    local i op path
    local paths=(/xentest-diff/r /xentest-diff/r/a /xentest-diff/r/a/b /xentest-diff/r/c /xentest-diff/r/a/d /xentest-diff/r/e/f)
    RANDOM=${1:-4242}
    for ((i = 0; i < ${2:-60}; i++)); do
        path=${paths[RANDOM % ${#paths[@]}]}
        op=$((RANDOM % 6))
        case $op in
        0 | 1) echo "xenstore-write $path v$RANDOM" ;;
        2) echo "xenstore-read $path" ;;
        3) echo "xenstore-list $path" ;;
        4) echo "xenstore-rm $path" ;;
        5) echo "xenstore-exists $path" ;;
        esac
    done
    echo "xenstore-ls -f /xentest-diff/r"
    echo "xenstore-rm /xentest-diff/r"
}
OPS=$(printf '%s\n%s' "$(random_ops 4242 60)" "$OPS")

# run_ops <socket> <transcript>: one "<op> => exit <n>: <output>" record per
# operation; watcher output is appended when the watcher ends.
run_ops() {
    local socket=$1 out=$2 line watchers=()
    : >"$out"
    while IFS= read -r line; do
        if [[ "$line" == W\ * ]]; then
            read -r _ n path <<<"$line"
            XENSTORED_PATH=$socket timeout 20 xenstore-watch -n "$n" "$path" >"$out.watch-$n-${path//\//_}" 2>&1 &
            watchers+=("$!:$out.watch-$n-${path//\//_}:$line")
            sleep 0.5 # let the watch register and fire its initial event
            continue
        fi
        local text rc
        text=$(XENSTORED_PATH=$socket bash -c "$line" 2>&1)
        rc=$?
        printf '%s => exit %d: %s\n' "${line:0:80}" "$rc" "$(printf '%s' "$text" | tr '\n' '|')" >>"$out"
    done <<<"$OPS"
    local w pid file what
    for w in "${watchers[@]}"; do
        pid=${w%%:*}
        file=${w#*:}
        what=${file#*:}
        file=${file%%:*}
        wait "$pid"
        printf '%s => exit %d: %s\n' "$what" "$?" "$(tr '\n' '|' <"$file")" >>"$out"
    done
}

xenstore-rm /xentest-diff 2>/dev/null
run_ops "$REAL" "$XT_STATE/xs-real"
run_ops "$OURS" "$XT_STATE/xs-ours"
kill "$ours_pid" 2>/dev/null
wait "$ours_pid" 2>/dev/null

xt_evidence_cmd "C xenstored" cat "$XT_STATE/xs-real"
ops=0
while IFS= read -r real_line && IFS= read -r ours_line <&3; do
    ops=$((ops + 1))
    if [ "$real_line" = "$ours_line" ]; then
        echo "XENTEST CHECK-OK $XT_SCENARIO same as C xenstored: ${real_line:0:160}"
    else
        xt_fail_check "differs from C xenstored: C: ${real_line:0:200} | ours: ${ours_line:0:200}"
    fi
done <"$XT_STATE/xs-real" 3<"$XT_STATE/xs-ours"
xt_expect_eq "both transcripts have one record per operation" \
    "$(wc -l <"$XT_STATE/xs-ours")" "$(wc -l <"$XT_STATE/xs-real")"
xt_figure operations_compared "$ops"
xt_evidence_cmd "our xenstored log" tail -20 "$XT_STATE/ours.log"
