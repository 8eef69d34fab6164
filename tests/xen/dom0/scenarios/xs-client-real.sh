# Scenario 5 (client side): our xenstore client (`diskseq xs`) against the
# real C xenstored, over its Unix socket and over the kernel's xenbus device
# (/dev/xen/xenbus, the way a driver domain without the socket talks), each
# result cross-checked with Debian's C clients on the same daemon.
# shellcheck shell=bash
# shellcheck source=../lib.sh
source /xentest/lib.sh

# XENSTORED_PATH picks the transport the way libxenstore does: a socket is
# connected to, anything else (the xenbus device) is opened.
for transport in /run/xenstored/socket /dev/xen/xenbus; do
    # Bounded: a client that hangs on a transport is a failed check, not a
    # scenario timeout.
    xs() { XENSTORED_PATH=$transport timeout 10 diskseq xs "$@"; }
    cxs() { XENSTORED_PATH=$transport timeout 10 "$@"; }
    t="[$transport]"
    base=/xentest-client
    xenstore-rm "$base" 2>/dev/null

    xt_check "$t control: the C client works over this transport" cxs xenstore-write "$base/control" 1
    xt_expect_eq "$t plain read of a node the C client wrote" "$(xs read "$base/control" 2>&1)" 1
    start=$(ms_now)
    out=$(xs write "$base/a" 1 "$base/b/c" 2 2>&1)
    rc=$?
    xt_evidence "$t write of two nodes: exit $rc after $(($(ms_now) - start)) ms: $out"
    xt_expect_eq "$t write (one transaction, parents created)" "$rc" 0
    out=$(xs write "$base/m1" 1 "$base/m2" 2 "$base/m3/x" 3 "$base/m4" 4 2>&1)
    rc=$?
    xt_evidence "$t write of four nodes: exit $rc: $out"
    xt_expect_eq "$t write of four nodes in one transaction" "$rc" 0
    xt_expect_eq "$t C client reads all four" \
        "$(xenstore-read "$base/m1" "$base/m2" "$base/m3/x" "$base/m4" | tr '\n' ' ')" "1 2 3 4 "
    # --socket names the transport as XENSTORED_PATH does: a socket or the
    # device.
    out=$(env -u XENSTORED_PATH timeout 10 diskseq xs --socket "$transport" read "$base/a" "$base/b/c" 2>&1)
    xt_evidence "$t --socket $transport read of two nodes: exit $?: $(tr '\n' ' ' <<<"$out")"
    xt_expect_eq "$t --socket $transport works like XENSTORED_PATH" "$(tr '\n' ' ' <<<"$out")" "1 2 "
    out=$(xs write "$base/single" 1 2>&1)
    xt_evidence "$t write of one node: exit $? $out"
    xt_expect_eq "$t C client reads what ours wrote" "$(xenstore-read "$base/a") $(xenstore-read "$base/b/c")" "1 2"
    xt_check "$t the parent exists" xenstore-exists "$base/b"

    xenstore-write "$base/tab" "$(printf 'x\ty')" "$base/empty" ""
    xt_expect_eq "$t raw read gives the bytes, as xenstore-read -R" "$(xs read -R "$base/tab" | od -An -c | tr -s ' ')" \
        "$(xenstore-read -R "$base/tab" | od -An -c | tr -s ' ')"
    xt_expect_eq "$t read of an empty value" "$(xs read "$base/empty")" ""
    xt_expect_eq "$t ls matches xenstore-ls -f" "$(xs ls "$base")" "$(xenstore-ls -f "$base")"
    xt_expect_eq "$t reading several paths in one transaction" "$(xs read "$base/a" "$base/b/c" | tr '\n' ' ')" "1 2 "

    out=$(xs read "$base/missing" 2>&1)
    rc=$?
    xt_evidence "$t read of a missing node: exit $rc: $out"
    xt_check "$t read of a missing node fails" test "$rc" != 0
    xt_check "$t and names the node" grep -q "$base/missing" <<<"$out"

    xt_check "$t rm" xs rm "$base/b"
    xt_check "$t C client sees it gone" bash -c "! xenstore-exists $base/b"

    # Watch: ours collects 3 events while the C client makes two changes.
    XENSTORED_PATH=$transport timeout 20 diskseq xs watch -n 3 "$base/w" >"$XT_STATE/watch.out" 2>&1 &
    watcher=$!
    sleep 0.5
    xenstore-write "$base/w/x" 1
    xenstore-rm "$base/w"
    wait_for 10 bash -c "! kill -0 $watcher 2>/dev/null"
    xt_expect_eq "$t watch events (initial, write below, removal)" "$(tr '\n' ' ' <"$XT_STATE/watch.out")" \
        "$base/w $base/w/x $base/w "
    kill "$watcher" 2>/dev/null
    xenstore-rm "$base"
done
