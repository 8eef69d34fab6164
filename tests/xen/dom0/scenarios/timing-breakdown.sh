# Issue 10's script-only add, taken apart in the real dom0: where the time of
# one `block-diskseq add` (and `remove`) goes, next to the floor of any
# process start here. Figures only (no claim is checked beyond the cycles
# working); docs/real-xen.md ("Issue 10 on real Xen") reads them.
#
#   1. Process start floors, each through the same `cmd & wait` as the
#      timing wrapper (bash fork + exec + run + exit), medians of <reps>:
#      a static musl program that does nothing (/xentest/bin/empty),
#      /bin/true (glibc, dynamic), `block-diskseq --version` (our binary's
#      start-up without any work), and the same for each variant binary.
#   2. Script-only add/remove of the packaged binary and of each variant
#      (/xentest/variants/<name>/block-diskseq, from XENTEST_VARIANTS on the
#      host: other build flags of the same source), interleaved, through the
#      timing scenario's wrapper: the figure comparable to `timing`.
#   3. The packaged binary's add/remove under /xentest/bin/rusage (CPU time,
#      page faults, context switches of the script alone), under
#      `strace -f -tt -T` (where the wall time goes, syscall by syscall) and
#      `strace -c -f` (time per syscall kind), and with XENSTORED_PATH set to
#      /dev/xen/xenbus instead of the daemon's unix socket.
#   timing-breakdown.sh [cycles (default 3)] [reps (default 10)]
# shellcheck shell=bash
# shellcheck source=../lib.sh
source /xentest/lib.sh

cycles=${1:-3}
reps=${2:-10}
vdev=xvdb
be=$(backend_dir 0 "$(vdev_devid $vdev)")
img=/tmp/breakdown.img
make_image "$img" 64 breakdown
rm -f "$XT_STATE/kill-delay"
hotplug_log=/var/log/xen/xen-hotplug.log

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "NaN"; else if (NR % 2) print v[(NR + 1) / 2]; else print int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

# µs of one `"$@" & wait`, timed like the script wrapper.
run_us() {
    local s e
    s=${EPOCHREALTIME/./}
    "$@" >/dev/null 2>&1 &
    wait $!
    e=${EPOCHREALTIME/./}
    echo $((10#$e - 10#$s))
}

# floor <figure name> <command...>: median wall (µs) of <reps> runs, and the
# median of the child's own CPU time and page faults through rusage.
floor() {
    local name=$1 i
    shift
    : >"$XT_STATE/floor.wall"
    : >"$XT_STATE/floor.ru"
    for ((i = 0; i < reps; i++)); do
        run_us "$@" >>"$XT_STATE/floor.wall"
        /xentest/bin/rusage "$XT_STATE/floor.ru" "$@" >/dev/null 2>&1
    done
    local wall cpu flt
    wall=$(median <"$XT_STATE/floor.wall")
    cpu=$(awk '{ for (i = 3; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] } print f["user_us"] + f["sys_us"] }' "$XT_STATE/floor.ru" | median)
    flt=$(awk '{ for (i = 3; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] } print f["minflt"] }' "$XT_STATE/floor.ru" | median)
    xt_figure "${name}_start_median_us" "$wall"
    xt_figure "${name}_cpu_median_us" "$cpu"
    xt_figure "${name}_minflt_median" "$flt"
}

# 1. Floors.
floor empty_static /xentest/bin/empty
floor bin_true /bin/true
floor diskseq_version /usr/sbin/block-diskseq --version
variants=()
for bin in /xentest/variants/*/block-diskseq; do
    [ -x "$bin" ] || continue
    name=$(basename "$(dirname "$bin")")
    variants+=("$name")
    floor "variant_${name}_version" "$bin" --version
done
xt_evidence_cmd "packaged binary" ls -l /usr/sbin/block-diskseq
for name in "${variants[@]}"; do
    xt_evidence_cmd "variant $name" ls -l "/xentest/variants/$name/block-diskseq"
done

# 2. Script-only add/remove, interleaved.
script_ms() {
    awk -v c="$1" '$1 == c { ms = ($5 == 0 || c == "remove") ? int(($4 - $3) * 1000 + 0.5) : "" } END { print ms }' \
        "$XT_STATE/script-runs"
}

# One attach/detach cycle with <script>; prints "<add ms> <remove ms>".
cycle() {
    local script=$1
    : >"$XT_STATE/script-runs"
    xl block-attach 0 "format=raw, vdev=$vdev, access=rw, script=$script, target=$img" \
        >"$XT_STATE/breakdown.out" 2>&1 || return 1
    wait_for "$XT_WAIT" xs_equals "$be/state" 4 || return 1
    wait_for "$XT_WAIT" test -b /dev/$vdev || return 1
    xl block-detach 0 $vdev >>"$XT_STATE/breakdown.out" 2>&1 || return 1
    wait_for "$XT_WAIT" xs_absent "$be" || return 1
    wait_for 10 no_loops_of "$img" || return 1
    local add remove
    add=$(script_ms add)
    remove=$(script_ms remove)
    [ -n "$add" ] && [ -n "$remove" ] || return 1
    echo "$add $remove"
}

# The hotplug script body of a wrapper that runs the real binary under
# another program (rusage, strace) or environment.
make_runner() {
    printf '#!/bin/sh\n%s\n' "$2" >"$1"
    chmod 0755 "$1"
}

make_script_wrapper /usr/sbin/block-diskseq "$XT_STATE/bd-packaged"
for name in "${variants[@]}"; do
    make_script_wrapper "/xentest/variants/$name/block-diskseq" "$XT_STATE/bd-$name"
done
ok=0 tried=0
declare -A adds removes
for ((i = 1; i <= cycles; i++)); do
    for name in packaged "${variants[@]}"; do
        tried=$((tried + 1))
        : >"$hotplug_log"
        if result=$(cycle "$XT_STATE/bd-$name"); then
            ok=$((ok + 1))
            read -r r_add r_rem <<<"$result"
            adds[$name]+="$r_add "
            removes[$name]+="$r_rem "
            xt_evidence "cycle $i $name: script add $r_add ms, remove $r_rem ms"
            # The script's own stamps against the wrapper's clock.
            xt_evidence_cmd "cycle $i $name wrapper" cat "$XT_STATE/script-runs"
            xt_evidence_cmd "cycle $i $name log" grep block-diskseq "$hotplug_log"
        else
            xt_evidence "cycle $i $name failed"
            xt_evidence_cmd "xl" cat "$XT_STATE/breakdown.out"
            xt_cleanup
        fi
    done
done
xt_expect_eq "every add/remove cycle worked" "$ok" "$tried"
for name in packaged "${variants[@]}"; do
    xt_figure "${name}_script_add_median_ms" "$(echo "${adds[$name]}" | tr ' ' '\n' | grep . | median)"
    xt_figure "${name}_script_remove_median_ms" "$(echo "${removes[$name]}" | tr ' ' '\n' | grep . | median)"
done

# 3. The packaged binary, instrumented.
ru=$XT_STATE/script.ru
: >"$ru"
make_runner "$XT_STATE/ru-script" "exec /xentest/bin/rusage $ru /usr/sbin/block-diskseq \"\$@\""
make_script_wrapper "$XT_STATE/ru-script" "$XT_STATE/bd-ru"
for ((i = 1; i <= cycles; i++)); do
    cycle "$XT_STATE/bd-ru" >/dev/null || { xt_evidence "rusage cycle $i failed"; xt_cleanup; }
done
xt_evidence_cmd "rusage" cat "$ru"
for cmd in add remove; do
    for field in wall_us user_us sys_us minflt nvcsw nivcsw; do
        xt_figure "rusage_${cmd}_${field}_median" "$(awk -v c="$cmd" -v k="$field" '$2 == c { for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) print kv[2] } }' "$ru" | median)"
    done
done

make_runner "$XT_STATE/xenbus-script" "XENSTORED_PATH=/dev/xen/xenbus exec /usr/sbin/block-diskseq \"\$@\""
make_script_wrapper "$XT_STATE/xenbus-script" "$XT_STATE/bd-xenbus"
xb_add= xb_rem=
for ((i = 1; i <= cycles; i++)); do
    if result=$(cycle "$XT_STATE/bd-xenbus"); then
        read -r r_add r_rem <<<"$result"
        xb_add+="$r_add " xb_rem+="$r_rem "
        xt_evidence "cycle $i via /dev/xen/xenbus (a sh exec more): script add $r_add ms, remove $r_rem ms"
    else
        xt_evidence "xenbus cycle $i failed"
        xt_cleanup
    fi
done
xt_figure xenbus_script_add_median_ms "$(echo "$xb_add" | tr ' ' '\n' | grep . | median)"
xt_figure xenbus_script_remove_median_ms "$(echo "$xb_rem" | tr ' ' '\n' | grep . | median)"
make_runner "$XT_STATE/sh-script" "exec /usr/sbin/block-diskseq \"\$@\""
make_script_wrapper "$XT_STATE/sh-script" "$XT_STATE/bd-sh"
sh_add= sh_rem=
for ((i = 1; i <= cycles; i++)); do
    if result=$(cycle "$XT_STATE/bd-sh"); then
        read -r r_add r_rem <<<"$result"
        sh_add+="$r_add " sh_rem+="$r_rem "
    fi
done
xt_figure sh_exec_script_add_median_ms "$(echo "$sh_add" | tr ' ' '\n' | grep . | median)"
xt_figure sh_exec_script_remove_median_ms "$(echo "$sh_rem" | tr ' ' '\n' | grep . | median)"

if [ -x /xentest/strace/strace ]; then
    strace_cmd="LD_LIBRARY_PATH=/xentest/strace exec /xentest/strace/strace"
    make_runner "$XT_STATE/strace-tt" "$strace_cmd -f -tt -T -o $XT_STATE/strace-tt.\$1 /usr/sbin/block-diskseq \"\$@\""
    make_runner "$XT_STATE/strace-c" "$strace_cmd -f -c -o $XT_STATE/strace-c.\$1 /usr/sbin/block-diskseq \"\$@\""
    for runner in strace-tt strace-c; do
        rm -f "$XT_STATE/$runner".*
        make_script_wrapper "$XT_STATE/$runner" "$XT_STATE/bd-$runner"
        cycle "$XT_STATE/bd-$runner" >/dev/null || { xt_evidence "$runner cycle failed"; xt_cleanup; }
        for cmd in add remove; do
            xt_evidence_cmd "$runner $cmd" cat "$XT_STATE/$runner.$cmd"
        done
    done
else
    xt_evidence "no strace in this dom0 (tests/xen/run copies the host's)"
fi
xt_figure cycles "$cycles"
xt_figure reps "$reps"
