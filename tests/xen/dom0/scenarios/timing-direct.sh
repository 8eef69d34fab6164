# block-diskseq's own `add` and `remove`, run directly in the real dom0 many
# times without libxl, so that builds can be compared with enough runs to
# tell a difference from this platform's noise (an `xl block-attach` cycle
# takes seconds, one script run a few hundred ms). Each run gets a fresh
# backend directory with the nodes the script reads (as libxl writes them:
# params, mode, frontend-id, state), no backend driver (blkback does not
# probe a directory libxl did not create through the frontend), so the
# loop device is attached persistent and `remove` detaches it. The packaged
# binary, each /xentest/variants/<name>/block-diskseq and a static program
# that does nothing (the floor) take turns run by run (each turn starting
# with the next build: in boots 3 and 4, with a fixed order, the build in
# second place was the fastest each time), each timed like the
# `timing` wrapper (`cmd & wait`, bash's $EPOCHREALTIME). Figures: medians,
# and for each variant the share of runs where the packaged build was
# faster in the same turn.
#   timing-direct.sh [runs (default 30)]
# shellcheck shell=bash
# shellcheck source=../lib.sh
source /xentest/lib.sh

runs=${1:-30}
img=/tmp/direct.img
make_image "$img" 64 direct
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "NaN"; else if (NR % 2) print v[(NR + 1) / 2]; else print int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

# µs of one `"$@" & wait`, timed like the script wrapper; empty on failure.
run_us() {
    local s e rc
    s=${EPOCHREALTIME/./}
    "$@" >>"$XT_STATE/direct.out" 2>&1 &
    wait $!
    rc=$?
    e=${EPOCHREALTIME/./}
    [ "$rc" = 0 ] && echo $((10#$e - 10#$s))
}

names=(packaged)
declare -A bin=([packaged]=/usr/sbin/block-diskseq)
for b in /xentest/variants/*/block-diskseq; do
    [ -x "$b" ] || continue
    name=$(basename "$(dirname "$b")")
    names+=("$name")
    bin[$name]=$b
done
for name in "${names[@]}" floor; do
    : >"$XT_STATE/direct-add-$name"
    : >"$XT_STATE/direct-remove-$name"
done
: >"$XT_STATE/direct.out"
fe=100
failed=0
count=${#names[@]}
for ((i = 1; i <= runs; i++)); do
    # Each turn starts with the next build: a place in the turn (first
    # after the floor run, say) must not favour one build.
    for ((k = 0; k < count; k++)); do
        name=${names[$(((i + k) % count))]}
        fe=$((fe + 1))
        rel=backend/vbd/$fe/51712
        be=/local/domain/0/$rel
        xenstore-write "$be/params" "$img" "$be/mode" w "$be/frontend-id" "$fe" "$be/state" 2 ||
            { failed=$((failed + 1)); continue; }
        if t=$(XENBUS_PATH=$rel run_us "${bin[$name]}" add) && [ -n "$t" ] &&
            [ -n "$(xs_read "$be/physical-device")" ]; then
            echo "$t" >>"$XT_STATE/direct-add-$name"
        else
            failed=$((failed + 1))
        fi
        if t=$(XENBUS_PATH=$rel run_us "${bin[$name]}" remove) && [ -n "$t" ]; then
            echo "$t" >>"$XT_STATE/direct-remove-$name"
        else
            failed=$((failed + 1))
        fi
        xenstore-rm "/local/domain/0/backend/vbd/$fe"
    done
    t=$(run_us /xentest/bin/empty) && echo "$t" >>"$XT_STATE/direct-add-floor"
done
xt_expect_eq "every direct add and remove succeeded" "$failed" 0
xt_check "no loop device left on the image" no_loops_of "$img"
[ "$failed" = 0 ] || xt_evidence_cmd "output" tail -20 "$XT_STATE/direct.out"
xt_evidence_cmd "last log lines" tail -6 /var/log/xen/xen-hotplug.log
for name in "${names[@]}"; do
    xt_evidence "add µs, $name: $(tr '\n' ' ' <"$XT_STATE/direct-add-$name")"
    xt_figure "${name}_add_median_us" "$(median <"$XT_STATE/direct-add-$name")"
    xt_figure "${name}_remove_median_us" "$(median <"$XT_STATE/direct-remove-$name")"
done
xt_evidence "start µs, empty static program: $(tr '\n' ' ' <"$XT_STATE/direct-add-floor")"
xt_figure floor_empty_static_median_us "$(median <"$XT_STATE/direct-add-floor")"
# Paired by turn (the files are in turn order): how often the packaged
# build's add beat each variant's.
for name in "${names[@]:1}"; do
    xt_figure "packaged_add_faster_than_${name}_in_turns" "$(paste -d' ' "$XT_STATE/direct-add-packaged" "$XT_STATE/direct-add-$name" |
        awk 'NF == 2 { n++; if ($1 < $2) w++ } END { printf "%d of %d", w, n }')"
done
xt_figure runs "$runs"
