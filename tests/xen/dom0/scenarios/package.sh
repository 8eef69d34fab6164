# Scenario: the Debian package as dom0 has it (installed by /init with
# dpkg -i), and `diskseq doctor` on a real Xen host: with Debian's stock
# xen-blkback the verdict is "degraded" (exit 4); with the patched module
# (/xentest/modules/xen-blkback.ko, when the harness built it) "safe" (0).
# shellcheck shell=bash
# shellcheck source=../lib.sh
source /xentest/lib.sh

xt_expect_eq "dpkg has the package" "$(dpkg-query -W -f '${Status}' diskseq 2>&1)" "install ok installed"
xt_evidence "package: $(dpkg-query -W -f '${Package} ${Version} ${Architecture}' diskseq)"
xt_check "libxl finds the script: /etc/xen/scripts/block-diskseq --version" \
    /etc/xen/scripts/block-diskseq --version
xt_expect_eq "the scenarios' script is the packaged one" "$(readlink -f "$DISKSEQ_SCRIPT")" /usr/sbin/block-diskseq

# Runs doctor; leaves its exit status in $doctor_rc and the report as evidence.
doctor() {
    local label=$1
    diskseq doctor >"$XT_STATE/doctor-$label.txt" 2>&1
    doctor_rc=$?
    xt_evidence_cmd "doctor ($label)" cat "$XT_STATE/doctor-$label.txt"
}

doctor stock
xt_expect_eq "doctor with Debian's xen-blkback: exit status (4 = degraded)" "$doctor_rc" 4
xt_check "doctor names the stock blkback" grep -q "Debian's stock module" "$XT_STATE/doctor-stock.txt"
xt_check "doctor finds xenstore" grep -q '^\[ok  \] xenstore' "$XT_STATE/doctor-stock.txt"

if [ -f /xentest/modules/xen-blkback.ko ]; then
    rmmod xen_blkback && insmod /xentest/modules/xen-blkback.ko
    doctor patched
    xt_expect_eq "doctor with the patched xen-blkback: exit status (0 = safe)" "$doctor_rc" 0
    rmmod xen_blkback && modprobe xen-blkback
else
    xt_say "no patched xen-blkback in this harness build: doctor's 'safe' case not run"
fi
