# Helpers for the scenarios running inside the test dom0 (sourced).
#
# Output protocol, parsed on the host by tests/xen/lib/report.sh; every marker
# line starts with "XENTEST ":
#   XENTEST BEGIN <scenario>
#   XENTEST EVIDENCE <scenario> <text>      what was observed (nodes, sysfs, output)
#   XENTEST CHECK-OK|CHECK-FAIL <scenario> <what was checked>
#   XENTEST FIGURE <scenario> <name>=<value>
#   XENTEST PASS|FAIL <scenario> <seconds> s [reason]
# shellcheck shell=bash
# shellcheck disable=SC2034 # variables here are used by the files that source this one

XT_STATE=/run/xentest
mkdir -p "$XT_STATE"
XT_SCENARIO=${XT_SCENARIO:-dom0}
# Installed by /init from this tree's .deb, where libxl looks for scripts.
DISKSEQ_SCRIPT=/etc/xen/scripts/block-diskseq
STOCK_SCRIPT=/etc/xen/scripts/block
NAIVE_SCRIPT=/xentest/naive-block
# Seconds to wait for a state change. Generous: under TCG on a busy 2-core
# host, one blkback connect has been seen to take over 15 s.
XT_WAIT=${XT_WAIT:-30}

xt_say() { echo "XENTEST NOTE $*"; }
xt_evidence() { echo "XENTEST EVIDENCE $XT_SCENARIO $*"; }
xt_figure() { echo "XENTEST FIGURE $XT_SCENARIO $1=$2"; }

# Evidence from a command's output, one marker line per output line.
xt_evidence_cmd() {
    local label=$1 line
    shift
    "$@" 2>&1 | while IFS= read -r line; do xt_evidence "$label: $line"; done
}

xt_fail_check() {
    echo "XENTEST CHECK-FAIL $XT_SCENARIO $*"
    echo "$*" >>"$XT_STATE/$XT_SCENARIO.failed"
}

# xt_check <description> <command...>: the command's status decides.
xt_check() {
    local what=$1
    shift
    if "$@"; then
        echo "XENTEST CHECK-OK $XT_SCENARIO $what"
    else
        xt_fail_check "$what"
    fi
}

# xt_expect_eq <description> <actual> <expected>
xt_expect_eq() {
    if [ "$2" = "$3" ]; then
        echo "XENTEST CHECK-OK $XT_SCENARIO $1 (= '$3')"
    else
        xt_fail_check "$1: got '$2', expected '$3'"
    fi
}

ms_now() { echo $(($(date +%s%N) / 1000000)); }

# wait_for <timeout-seconds> <command...>: polls every 50 ms.
wait_for() {
    local deadline=$(($(ms_now) + $1 * 1000))
    shift
    until "$@"; do
        [ "$(ms_now)" -lt "$deadline" ] || return 1
        sleep 0.05
    done
}

# The xenstore device id of a vdev name xvd<letter>: 202 << 8 | index << 4.
vdev_devid() {
    local letter=${1#xvd}
    local index=$(($(printf '%d' "'$letter") - 97))
    echo $((202 * 256 + index * 16))
}

backend_dir() { echo "/local/domain/0/backend/vbd/$1/$2"; }
xs_read() { xenstore-read "$1" 2>/dev/null; }
xs_equals() { [ "$(xs_read "$1")" = "$2" ]; }
xs_absent() { ! xenstore-exists "$1" 2>/dev/null; }

# make_image <path> <MiB> <tag>: a sparse image whose first line is its tag.
make_image() {
    truncate -s "$2M" "$1"
    printf 'XENTEST-IMAGE %s\n' "$3" | dd of="$1" conv=notrunc status=none
}

# The tag at the start of an image or device (what a reader sees first).
# Devices are read with O_DIRECT so the page cache cannot answer for them
# (tmpfs files do not take O_DIRECT).
read_tag() {
    local direct=
    [ -b "$1" ] && direct=iflag=direct
    dd if="$1" bs=4096 count=1 $direct status=none 2>/dev/null | head -1 | tr -cd 'A-Za-z0-9 _.:-'
}

# Loop devices bound to a backing file.
loops_of() { losetup -n -O NAME -j "$1" 2>/dev/null; }
no_loops_of() { [ -z "$(loops_of "$1")" ]; }

# xl_create_guest <label> <config>: `xl create <config>`, its output kept as
# evidence. A non-zero exit is a failed check, except xl's own process
# dying of heap corruption after it created the domain — the platform fault
# of docs/real-xen.md ("Platform faults"), seen as "died due to fatal
# signal" with glibc's "malloc()"/"corrupted"/"free()" message: that is
# counted (figure xl_create_platform_faults), not a verdict, and the
# caller's own checks of the guest (running, its disks, what it reports)
# decide. Returns 0 unless the create failed otherwise.
xl_create_guest() {
    local label=$1 cfg=$2 out=$XT_STATE/xl-create.out status
    xl create "$cfg" >"$out" 2>&1
    status=$?
    xt_evidence_cmd "$label" cat "$out"
    if [ "$status" -ne 0 ] && grep -q "died due to fatal signal" "$out" &&
        grep -qiE "malloc\(\)|corrupted|free\(\)" "$out"; then
        xt_figure xl_create_platform_faults 1
        xt_evidence "$label exited $status: xl's own process died of heap corruption (platform fault)"
        return 0
    fi
    xt_expect_eq "$label exit status" "$status" 0
    [ "$status" -eq 0 ]
}

# make_script_wrapper <real script> <wrapper path>: writes a hotplug script
# that runs <real script> as its child and appends one line per run to
# $XT_STATE/script-runs: "<command> <XENBUS_PATH> <start> <end> <status>"
# (times in seconds with microseconds, from bash's $EPOCHREALTIME: no fork,
# so the interval is the real script's fork, exec and run, nothing of the
# wrapper's own start). With a delay in $XT_STATE/kill-delay (microseconds),
# an `add` is SIGKILLed that long after the wrapper's clock started (status
# 137): the kill-race scenario. The killer is forked before the script, so
# its own start overlaps the script's (on a loaded TCG host either takes
# seconds), naps with `read -t` on a fifo for what is left of the delay (no
# exec of sleep), then kills the pid the wrapper left in a file. libxl sees
# the wrapper's status as the script's.
make_script_wrapper() {
    [ -p "$XT_STATE/wrapper-nap" ] || mkfifo "$XT_STATE/wrapper-nap"
    cat >"$2" <<WRAPPER
#!/bin/bash
start=\$EPOCHREALTIME
pidfile=$XT_STATE/wrapper-child.\$\$
: >"\$pidfile"
killer= delay=
read -r delay 2>/dev/null <"$XT_STATE/kill-delay"
if [ "\$1" = add ] && [ -n "\$delay" ]; then
    # Detached from libxl's descriptors: libxl must not wait for the killer.
    (
        s=\${start/./} now=\${EPOCHREALTIME/./}
        left=\$((10#\$s + delay - 10#\$now))
        if [ "\$left" -gt 0 ]; then
            printf -v nap '%d.%06d' \$((left / 1000000)) \$((left % 1000000))
            read -r -t "\$nap" _ <>"$XT_STATE/wrapper-nap"
        fi
        pid=
        until [ -n "\$pid" ]; do
            read -r pid <"\$pidfile" || read -r -t 0.01 _ <>"$XT_STATE/wrapper-nap"
        done
        kill -KILL "\$pid"
    ) </dev/null >/dev/null 2>&1 &
    killer=\$!
fi
"$1" "\$@" &
child=\$!
echo "\$child" >"\$pidfile"
wait "\$child"
rc=\$?
end=\$EPOCHREALTIME
[ -n "\$killer" ] && kill "\$killer" 2>/dev/null
rm -f "\$pidfile"
echo "\$1 \${XENBUS_PATH:-} \$start \$end \$rc" >>"$XT_STATE/script-runs"
exit \$rc
WRAPPER
    chmod 0755 "$2"
}

dump_backend() {
    xt_evidence_cmd "xenstore" xenstore-ls -f "$1"
}

dump_vbd_sysfs() {
    local dir=/sys/bus/xen-backend/devices/$1 attr
    for attr in physical_device mode; do
        if [ -e "$dir/$attr" ]; then
            xt_evidence "sysfs $1/$attr = $(cat "$dir/$attr")"
        else
            xt_evidence "sysfs $1/$attr absent"
        fi
    done
}

# Undoes whatever a scenario left behind so the next one starts clean:
# guest domains, dom0 self-attached disks, loop devices.
xt_cleanup() {
    local dom vdev
    for dom in $(xl list 2>/dev/null | awk 'NR > 2 { print $1 }'); do
        xl destroy "$dom" >/dev/null 2>&1
    done
    for vdev in $(xenstore-list /local/domain/0/backend/vbd/0 2>/dev/null); do
        xl block-detach 0 "$vdev" >/dev/null 2>&1
    done
    # An lvm-* scenario that ended early: its volume group holds the loop
    # device under it.
    if [ -n "$(dmsetup ls 2>/dev/null | grep -v '^No devices')" ]; then
        DM_DISABLE_UDEV=1 vgremove -q -f xtvg >/dev/null 2>&1
        DM_DISABLE_UDEV=1 dmsetup remove_all >/dev/null 2>&1
        rm -f /tmp/lvm-pv.img
        echo "XENTEST NOTE cleanup after $XT_SCENARIO: device-mapper devices removed"
    fi
    losetup -D >/dev/null 2>&1
    # A kernel-* scenario that ended early may have left the patched
    # blkback loaded: the next scenario expects Debian's.
    # (Ours is the out-of-tree one: "O" in its taint.)
    if grep -q O /sys/module/xen_blkback/taint 2>/dev/null; then
        # Their hand-made backends (made-up frontend domains) hold it too.
        for dom in $(xenstore-list /local/domain/0/backend/vbd 2>/dev/null); do
            [ "$dom" = 0 ] || xenstore-rm "/local/domain/0/backend/vbd/$dom" "/local/domain/0/error/backend/vbd/$dom"
        done
        wait_for 30 bash -c '! ls /sys/bus/xen-backend/devices | grep -q "^vbd-"'
        rmmod xen_blkback && modprobe xen-blkback
        echo "XENTEST NOTE cleanup after $XT_SCENARIO: stock xen-blkback reloaded"
    fi
}

# Runs one scenario file under a time budget and prints its verdict.
xt_run_scenario() {
    local name=$1 budget=${2:-120} start rc reason=
    shift 2
    start=$(ms_now)
    echo "XENTEST BEGIN $name"
    rm -f "$XT_STATE/$name.failed"
    XT_SCENARIO=$name timeout -k 5 "$budget" bash /xentest/scenarios/"$name".sh "$@" </dev/null
    rc=$?
    # Checks decide; an exit status only counts when no check failed (a
    # scenario that died half-way without a failed check still fails).
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        reason="timed out after $budget s"
    elif [ -s "$XT_STATE/$name.failed" ]; then
        reason="$(wc -l <"$XT_STATE/$name.failed") check(s) failed"
    elif [ "$rc" != 0 ]; then
        reason="scenario exited $rc"
    fi
    local secs
    secs=$(awk -v ms=$(($(ms_now) - start)) 'BEGIN { printf "%.1f", ms / 1000 }')
    if [ -z "$reason" ]; then
        echo "XENTEST PASS $name $secs s"
    else
        echo "XENTEST FAIL $name $secs s $reason"
    fi
    XT_SCENARIO=$name xt_cleanup
}
