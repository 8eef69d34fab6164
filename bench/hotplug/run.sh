#!/usr/bin/env bash
# Benchmarks block-diskseq against Xen's stock bash `block` hotplug script:
# whole-process add/remove latency and 1/8/32 concurrent adds, same machine,
# same xenstored (ours, in-process; the stock script's xenstore-* tools reach
# it through XENSTORED_PATH), same run. Needs root. Prints a markdown table.
#
#   bench/hotplug/run.sh            # 30 sequential runs per script
#   HOTPLUG_BENCH_RUNS=100 bench/hotplug/run.sh
#   HOTPLUG_BENCH_BASELINE=<git revision> bench/hotplug/run.sh
#                                   # also that revision's build, in turns
#
# The stock script comes from Debian's xen-utils-common. Its scripts are
# unpacked into a cache dir rather than installed: the package depends on
# udev, and this machine's tests assume a host without udev.
set -euo pipefail
cd "$(dirname "$0")/../.."

cache=${HOTPLUG_BENCH_CACHE:-$PWD/target/bench-hotplug}
stock_dir=$cache/xen-utils-common
mkdir -p "$cache"

need=()
command -v xenstore-read >/dev/null 2>&1 || need+=(xenstore-utils)
command -v losetup >/dev/null 2>&1 || need+=(mount)
command -v flock >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -x "$stock_dir/etc/xen/scripts/block" ]; then
    (cd "$cache" && rm -f xen-utils-common_*.deb && apt-get download xen-utils-common >/dev/null 2>&1) || {
        apt-get update -qq && (cd "$cache" && apt-get download xen-utils-common >/dev/null)
    }
    rm -rf "$stock_dir"
    dpkg-deb -x "$cache"/xen-utils-common_*.deb "$stock_dir"
fi

# The stock scripts send their stderr to /var/log/xen/xen-hotplug.log and
# fail without that directory; block-diskseq logs there too when it exists,
# so both pay for the same log.
created_log_dir=
if [ ! -d /var/log/xen ]; then
    mkdir -p /var/log/xen
    created_log_dir=1
fi
cleanup() {
    if [ -n "$created_log_dir" ]; then rm -rf /var/log/xen; fi
}
trap cleanup EXIT

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
# The script is measured as it should be installed: a static binary, built
# for musl (docs/install-xen.md). Measured on this machine: a static-pie
# glibc binary spends 0.36-0.55 ms of CPU just starting (the dynamic one
# twice that), a third of it in glibc's CPUID-based cache probing, and
# every CPUID is a VM exit; the musl one starts in 0.12 ms, and 32 of them
# at once take 8 ms instead of 19-26 (docs/benchmarks/hotplug.md). Without
# rustup's musl target (offline), the glibc static-pie build is measured
# instead and the bench says so.
musl=x86_64-unknown-linux-musl
if rustup target list --installed 2>/dev/null | grep -qx "$musl" ||
    rustup target add "$musl" >/dev/null 2>&1; then
    # Built as scripts/package builds it (not position-independent).
    cargo rustc --release --locked -p diskseq-cli --bin block-diskseq --target "$musl" \
        -- -C relocation-model=static
    export BLOCK_DISKSEQ_BIN=$CARGO_TARGET_DIR/$musl/release/block-diskseq
    echo "block-diskseq: static, musl ($musl)"
else
    # The flag goes to the final crate only (`cargo rustc`): as RUSTFLAGS it
    # would also reach the proc-macro crates, which cannot be built static.
    cargo rustc --release --locked -p diskseq-cli --bin block-diskseq -- -C target-feature=+crt-static
    export BLOCK_DISKSEQ_BIN=$CARGO_TARGET_DIR/release/block-diskseq
    echo "block-diskseq: static-pie, glibc (rustup's $musl target is not available)"
fi
export STOCK_BLOCK_SCRIPT=$stock_dir/etc/xen/scripts/block

# A before/after comparison in one run: the baseline revision's source
# (git archive: no worktree registered) built the same way (musl) with its
# own target directory, measured in turns with this one.
if [ -n "${HOTPLUG_BENCH_BASELINE:-}" ]; then
    base_tree=$cache/baseline-tree
    rm -rf "$base_tree"
    mkdir -p "$base_tree"
    git archive "$HOTPLUG_BENCH_BASELINE" | tar -x -C "$base_tree"
    (cd "$base_tree" && CARGO_TARGET_DIR=$cache/baseline-target \
        cargo rustc --release --locked -p diskseq-cli --bin block-diskseq --target "$musl" \
            -- -C relocation-model=static)
    export BLOCK_DISKSEQ_BASELINE_BIN=$cache/baseline-target/$musl/release/block-diskseq
    echo "baseline: block-diskseq of $(git rev-parse --short "$HOTPLUG_BENCH_BASELINE")"
fi

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
cargo bench --locked -p vbd --bench hotplug
