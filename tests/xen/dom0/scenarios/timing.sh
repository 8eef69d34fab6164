# Scenario 4, second half: whole `xl block-attach` / `xl block-detach` cycles
# of a file target, Xen's stock `block` script against block-diskseq, in the
# same boot, alternating so that background load hits both alike. Each script
# runs under a wrapper (make_script_wrapper) that times the script alone, its
# `add` and its `remove`, from fork to exit: the issue's figure. The wrapper's
# own bash start (before its clock starts) is in both whole-cycle columns.
# Other builds of block-diskseq in /xentest/variants/<name>/block-diskseq
# (tests/xen/run's XENTEST_VARIANTS, e.g. the previous commit's: a
# before/after in one boot) take their turns too, with figures of their own.
#   timing.sh [cycles per script (default 5)] [access (default rw)]
# shellcheck shell=bash
# shellcheck source=../lib.sh
source /xentest/lib.sh

cycles=${1:-5}
access=${2:-rw}
vdev=xvdb
be=$(backend_dir 0 "$(vdev_devid $vdev)")
img=/tmp/timing.img
make_image "$img" 64 timing

make_script_wrapper "$STOCK_SCRIPT" "$XT_STATE/timed-stock"
make_script_wrapper "$DISKSEQ_SCRIPT" "$XT_STATE/timed-diskseq"
variants=()
for bin in /xentest/variants/*/block-diskseq; do
    [ -x "$bin" ] || continue
    name=variant-$(basename "$(dirname "$bin")")
    variants+=("$name")
    make_script_wrapper "$bin" "$XT_STATE/timed-$name"
done
rm -f "$XT_STATE/kill-delay"

# The duration in ms of the last run of <command> in the wrapper's log; for
# `add`, only if it exited 0 (libxl ignores remove's status, and so do we).
script_ms() {
    awk -v c="$1" '$1 == c { ms = ($5 == 0 || c == "remove") ? int(($4 - $3) * 1000 + 0.5) : "" } END { print ms }' \
        "$XT_STATE/script-runs"
}

# One cycle: prints "<attach ms> <detach ms> <script add ms> <script remove
# ms>" or nothing on failure.
cycle() {
    local script=$1 t0 attach detach add remove
    : >"$XT_STATE/script-runs"
    t0=$(ms_now)
    xl block-attach 0 "format=raw, vdev=$vdev, access=$access, script=$script, target=$img" \
        >"$XT_STATE/timing.out" 2>&1 || return 1
    attach=$(($(ms_now) - t0))
    wait_for "$XT_WAIT" xs_equals "$be/state" 4 || return 1
    wait_for "$XT_WAIT" test -b /dev/$vdev || return 1
    [ "$(read_tag /dev/$vdev)" = "XENTEST-IMAGE timing" ] || return 1
    t0=$(ms_now)
    xl block-detach 0 $vdev >>"$XT_STATE/timing.out" 2>&1 || return 1
    detach=$(($(ms_now) - t0))
    wait_for "$XT_WAIT" xs_absent "$be" || return 1
    wait_for 10 no_loops_of "$img" || return 1
    add=$(script_ms add)
    remove=$(script_ms remove)
    [ -n "$add" ] && [ -n "$remove" ] || return 1
    echo "$attach $detach $add $remove"
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "NaN"; else if (NR % 2) print v[(NR + 1) / 2]; else print int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

declare -A ok=([stock]=0 [diskseq]=0)
: >"$XT_STATE/timing-stock" && : >"$XT_STATE/timing-diskseq"
for name in "${variants[@]}"; do
    ok[$name]=0
    : >"$XT_STATE/timing-$name"
done
for ((i = 1; i <= cycles; i++)); do
    for which in stock diskseq "${variants[@]}"; do
        if result=$(cycle "$XT_STATE/timed-$which"); then
            ok[$which]=$((ok[$which] + 1))
            echo "$result" >>"$XT_STATE/timing-$which"
            read -r r_att r_det r_add r_rem <<<"$result"
            xt_evidence "cycle $i $which: attach $r_att ms, detach $r_det ms; script add $r_add ms, remove $r_rem ms"
        else
            xt_evidence "cycle $i $which failed"
            xt_evidence_cmd "xl" cat "$XT_STATE/timing.out"
            xt_cleanup
        fi
    done
done

for which in stock diskseq "${variants[@]}"; do
    xt_expect_eq "$which: all $cycles cycles attached, read the image and detached cleanly" "${ok[$which]}" "$cycles"
    xt_figure "${which}_attach_median_ms" "$(cut -d' ' -f1 "$XT_STATE/timing-$which" | median)"
    xt_figure "${which}_detach_median_ms" "$(cut -d' ' -f2 "$XT_STATE/timing-$which" | median)"
    xt_figure "${which}_script_add_median_ms" "$(cut -d' ' -f3 "$XT_STATE/timing-$which" | median)"
    xt_figure "${which}_script_remove_median_ms" "$(cut -d' ' -f4 "$XT_STATE/timing-$which" | median)"
done
s_att=$(cut -d' ' -f1 "$XT_STATE/timing-stock" | median)
d_att=$(cut -d' ' -f1 "$XT_STATE/timing-diskseq" | median)
s_det=$(cut -d' ' -f2 "$XT_STATE/timing-stock" | median)
d_det=$(cut -d' ' -f2 "$XT_STATE/timing-diskseq" | median)
if [ "${ok[stock]}" -gt 0 ] && [ "${ok[diskseq]}" -gt 0 ]; then
    xt_figure attach_ratio_stock_over_diskseq "$(awk -v a="$s_att" -v b="$d_att" 'BEGIN { printf "%.2f", a / b }')"
    xt_figure detach_ratio_stock_over_diskseq "$(awk -v a="$s_det" -v b="$d_det" 'BEGIN { printf "%.2f", a / b }')"
    s_add=$(cut -d' ' -f3 "$XT_STATE/timing-stock" | median)
    d_add=$(cut -d' ' -f3 "$XT_STATE/timing-diskseq" | median)
    s_rem=$(cut -d' ' -f4 "$XT_STATE/timing-stock" | median)
    d_rem=$(cut -d' ' -f4 "$XT_STATE/timing-diskseq" | median)
    xt_figure script_add_ratio_stock_over_diskseq "$(awk -v a="$s_add" -v b="$d_add" 'BEGIN { printf "%.1f", a / (b > 0 ? b : 1) }')"
    xt_figure script_remove_ratio_stock_over_diskseq "$(awk -v a="$s_rem" -v b="$d_rem" 'BEGIN { printf "%.1f", a / (b > 0 ? b : 1) }')"
    # Issue 10's target, in this boot: block-diskseq's add at most 1/37 of
    # the stock script's (86 ms against 3210 ms in the issue's reference
    # boot; TCG on a shared host swings absolute times several-fold between
    # boots, so the same-boot ratio is the target, and the 86 ms a figure
    # apart). Figures, compared in docs/real-xen.md.
    xt_figure script_add_target_met "$(awk -v a="$s_add" -v b="$d_add" 'BEGIN { print (b * 37 <= a) ? "yes" : "no" }')"
    xt_figure script_add_under_86ms "$(awk -v b="$d_add" 'BEGIN { print (b <= 86) ? "yes" : "no" }')"
fi
if [ "${ok[stock]}" -gt 0 ]; then
    s_add=$(cut -d' ' -f3 "$XT_STATE/timing-stock" | median)
    s_rem=$(cut -d' ' -f4 "$XT_STATE/timing-stock" | median)
    for name in "${variants[@]}"; do
        [ "${ok[$name]}" -gt 0 ] || continue
        v_add=$(cut -d' ' -f3 "$XT_STATE/timing-$name" | median)
        v_rem=$(cut -d' ' -f4 "$XT_STATE/timing-$name" | median)
        xt_figure "${name}_script_add_ratio_stock_over_it" "$(awk -v a="$s_add" -v b="$v_add" 'BEGIN { printf "%.1f", a / (b > 0 ? b : 1) }')"
        xt_figure "${name}_script_remove_ratio_stock_over_it" "$(awk -v a="$s_rem" -v b="$v_rem" 'BEGIN { printf "%.1f", a / (b > 0 ? b : 1) }')"
    done
fi
xt_figure access "$access"
xt_figure cycles_per_script "$cycles"
