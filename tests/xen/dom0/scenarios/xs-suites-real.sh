# Scenario 5 (the suites): our xenstore test suites — the client's
# (crates/xenstore/tests/it/client_daemon.rs, module client_daemon of the
# test binary xenstore_it) and the daemon's model-based sequences
# (crates/xenstored/tests/it/model.rs, module model of xenstored_it) — run
# as the built test binaries, each filtered to its suite's module, against
# the real C xenstored of this dom0 (over its socket and over
# /dev/xen/xenbus) and against ours started here on its own socket. Both suites' guest_ tests run against the C
# daemon with a real PV guest's connection: the guest runs the suite binary
# as a relay agent on its own /dev/xen/xenbus (tests/xen/guest/relay-init),
# and the suite in dom0 reaches it as XENSTORE_TEST_GUESTS=<domid>=relay.
# Every selected test must pass against each daemon; the per-suite counts
# are figures. One positional filter selects the suite (libtest runs a test
# matching any of several filters, so the guest runs use one filter,
# `<suite>::guest_`).
#
# Arguments: [model sequences per run] (PROPTEST_CASES, default 100).
# shellcheck shell=bash
# shellcheck source=../lib.sh
source /xentest/lib.sh

CASES=${1:-100}
# Bound on one suite binary's run, so that a hang is reported with its
# evidence inside the scenario's budget.
SUITE_TIMEOUT=150
# A failing model sequence is shrunk at most this many steps, so that its
# report (the step and the transaction's state) arrives within that bound.
BIN=/xentest/bin
REAL=/run/xenstored/socket
XENBUS=/dev/xen/xenbus
OURS_DIR=/run/xs-suites
OURS=$OURS_DIR/socket
# The guest domain our daemon simulates (a socket whose connections are that
# unprivileged domain), so the guest tests run against ours here too.
OURS_GUEST=5
# Where every test keeps its nodes (crates/testbed/src/daemon_under_test.rs).
TEST_ROOT=/local/domain/0/diskseq-test

# Tests that re-execute the binary to serve our daemon in another process:
# the cargo suite's own check of the external mode, not a differential.
SELF_TESTS=(--skip separate_daemon_process --skip suite_against_a_separate_daemon_process
    --skip model_against_a_separate_daemon_process --skip relay_agent_process)
# Left out of the dom0-only runs against the C daemon, by name: guest_ tests
# need a guest domain's connection (they run below, through the relay
# guest); no_hypervisor_ tests introduce a domain that does not exist,
# which a daemon with a hypervisor refuses.
C_ONLY_SKIPS=(--skip guest_ --skip no_hypervisor_)

mkdir -p "$OURS_DIR"
diskseq xenstored --socket "$OURS" --domain-socket "$OURS_GUEST=$OURS_DIR/guest" \
    --pid-file "$OURS_DIR/pid" >"$XT_STATE/xs-suites-ours.log" 2>&1 &
xt_check "our xenstored accepts connections" wait_for 10 test -S "$OURS"

# [GUESTS=<domid>=<endpoint>] [THREADS=<n>] [SUITE_CASES=<n>] run_suite <label> <binary> <endpoint> <kind> [test filter arguments...]
# Runs the selected tests of one suite binary against one daemon; the check
# passes only when every selected test ran and passed. Our daemon's guest
# is its simulated guest socket unless GUESTS says otherwise.
run_suite() {
    local label=$1 bin=$BIN/$2 endpoint=$3 kind=$4 listed summary passed failed rc start secs guests=${GUESTS:-}
    shift 4
    if [ "$kind" = diskseq ] && [ -z "$guests" ]; then
        guests="$OURS_GUEST=$OURS_DIR/guest"
    fi
    listed=$("$bin" --list "$@" 2>/dev/null | grep -c ': test$')
    start=$(ms_now)
    XENSTORE_TEST_DAEMON=$endpoint XENSTORE_TEST_DAEMON_KIND=$kind XENSTORE_TEST_GUESTS=$guests \
        PROPTEST_CASES=${SUITE_CASES:-$CASES} PROPTEST_MAX_SHRINK_ITERS=${XS_SHRINK_ITERS:-32} RUST_BACKTRACE=0 timeout "$SUITE_TIMEOUT" "$bin" --test-threads="${THREADS:-2}" "$@" \
        >"$XT_STATE/$label.out" 2>&1
    rc=$?
    secs=$(awk -v ms=$(($(ms_now) - start)) 'BEGIN { printf "%.1f", ms / 1000 }')
    summary=$(grep -a '^test result:' "$XT_STATE/$label.out" | tail -1)
    passed=$(sed -n 's/.* \([0-9]*\) passed.*/\1/p' <<<"$summary")
    failed=$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' <<<"$summary")
    xt_evidence "$label: $endpoint ($kind): exit $rc after $secs s: ${summary:-no summary}"
    xt_evidence_cmd "$label" grep -a -E '^test .* (ok|FAILED)$' "$XT_STATE/$label.out"
    if [ "$rc" != 0 ]; then
        xt_evidence_cmd "$label failure" grep -a -E -A6 'panicked at|running for over' "$XT_STATE/$label.out"
        [ -n "$summary" ] || xt_evidence_cmd "$label output" tail -n 20 "$XT_STATE/$label.out"
    fi
    xt_figure "${label}_tests" "${passed:-0}/$listed"
    xt_figure "${label}_seconds" "$secs"
    xt_check "$label: all $listed selected tests pass against $endpoint (${passed:-0} passed, ${failed:-?} failed)" \
        all_ran_and_passed "$rc" "${passed:-0}" "$listed"
}

# all_ran_and_passed <exit status> <passed> <listed>
all_ran_and_passed() { [ "$1" = 0 ] && [ "$2" = "$3" ] && [ "$3" -gt 0 ]; }

xt_evidence "left out of the dom0-only runs against the C daemon:$(
    "$BIN/xenstore_it" --list client_daemon:: "${SELF_TESTS[@]}" 2>/dev/null | grep -E '^client_daemon::(guest_|no_hypervisor_)' | sed 's/: test$//' | tr '\n' ' '
) (guest_: run through the relay guest; no_hypervisor_: introduces a domain that does not exist)"

run_suite client-c-socket xenstore_it "$REAL" xen client_daemon:: "${SELF_TESTS[@]}" "${C_ONLY_SKIPS[@]}"
# own_connection_ tests reset the whole connection: over the device that is
# the dom0 kernel's, with blkback's watches on it.
run_suite client-c-xenbus xenstore_it "$XENBUS" xen client_daemon:: "${SELF_TESTS[@]}" "${C_ONLY_SKIPS[@]}" --skip own_connection_
run_suite client-ours xenstore_it "$OURS" diskseq client_daemon:: "${SELF_TESTS[@]}"
run_suite model-c-socket xenstored_it "$REAL" xen model:: "${SELF_TESTS[@]}" "${C_ONLY_SKIPS[@]}"
# The model's breadth is the socket run's; over the device and against ours
# (which every `cargo test` runs with 200 sequences) a fifth of the
# sequences check the transport and the separate process.
SUITE_CASES=$((CASES / 5 + 1)) run_suite model-c-xenbus xenstored_it "$XENBUS" xen model:: "${SELF_TESTS[@]}" "${C_ONLY_SKIPS[@]}"
SUITE_CASES=$((CASES / 5 + 1)) run_suite model-ours xenstored_it "$OURS" diskseq model:: "${SELF_TESTS[@]}"

# The guest_ tests against the C daemon, with a real PV guest's connection.
relay_name=xs-relay
# One uncompressed stream: the domain builder gunzips a PV ramdisk itself
# and would stop after the first of two concatenated gzip members; the
# kernel unpacks concatenated cpio archives.
gunzip -c /xentest/guest.cpio.gz /xentest/guest-suite.cpio.gz >"$XT_STATE/relay-guest.cpio"
cat >"$XT_STATE/relay-guest.cfg" <<EOF
name = "$relay_name"
type = "pv"
kernel = "/xentest/vmlinuz"
ramdisk = "$XT_STATE/relay-guest.cpio"
extra = "console=hvc0 rdinit=/relay-init loglevel=4"
memory = 256
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
EOF
# A second boot of the guest if its agent never gets ready: under TCG a
# guest's user space now and then dies of heap corruption before the agent
# starts (seen as "malloc(): corrupted top size" on its console, the
# platform fault of docs/real-xen.md); the first console is kept as
# evidence and the retry counted.
for try in 1 2; do
    start=$(ms_now)
    xl_create_guest "xl create of the relay guest (boot $try)" "$XT_STATE/relay-guest.cfg"
    domid=$(xl domid "$relay_name" 2>/dev/null)
    ready=/local/domain/${domid:-none}/data/xs-relay/ready
    wait_for 150 xenstore-exists "$ready" && break
    xt_evidence_cmd "relay guest console, boot $try (agent never ready)" \
        tail -n 15 "/var/log/xen/console/guest-$relay_name.log"
    xt_figure relay_guest_failed_boots "$try"
    xl destroy "$relay_name" 2>/dev/null
done
if xenstore-exists "$ready" 2>/dev/null; then
    xt_figure relay_guest_ready_seconds "$(awk -v ms=$(($(ms_now) - start)) 'BEGIN { printf "%.1f", ms / 1000 }')"
    # One test at a time: relayed connections take turns anyway.
    GUESTS="$domid=relay" THREADS=1 run_suite client-c-guest xenstore_it "$REAL" xen "${SELF_TESTS[@]}" client_daemon::guest_
    # The daemon's guest_ tests: the quota re-check at commit and the
    # transaction-nodes quota (XSA-326), through the same relay.
    GUESTS="$domid=relay" THREADS=1 run_suite model-c-guest xenstored_it "$REAL" xen "${SELF_TESTS[@]}" model::guest_
else
    xt_fail_check "the relay agent in guest ${domid:-?} never wrote $ready"
fi
xt_evidence_cmd "relay guest console" tail -n 15 "/var/log/xen/console/guest-$relay_name.log"
xl destroy "$relay_name" 2>/dev/null
rm -f "$XT_STATE/relay-guest.cpio"

# Every test removed its own nodes, on both daemons.
for socket in "$REAL" "$OURS"; do
    left=$(XENSTORED_PATH=$socket xenstore-list "$TEST_ROOT" 2>/dev/null | tr '\n' ' ')
    xt_expect_eq "no test nodes left behind in $socket" "$left" ""
    XENSTORED_PATH=$socket xenstore-rm "$TEST_ROOT" 2>/dev/null
done

kill "$(cat "$OURS_DIR/pid")" 2>/dev/null
xt_evidence_cmd "our xenstored log" tail -5 "$XT_STATE/xs-suites-ours.log"
