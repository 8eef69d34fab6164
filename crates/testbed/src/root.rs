//! Whether a test may use loop devices: the one root check of the suite.

use std::path::Path;

/// True when the test may use loop devices (root, and `/dev/loop-control`
/// exists). Not root: the test skips, saying why — unless the suite demands
/// everything (`DISKSEQ_REQUIRE_ALL=1`, as `scripts/test` sets), where a skip
/// is a failure.
#[track_caller]
pub fn require_root(test: &str) -> bool {
    if !rustix::process::geteuid().is_root() {
        let require_all = std::env::var_os("DISKSEQ_REQUIRE_ALL").is_some_and(|v| v == "1");
        assert!(
            !require_all,
            "{test}: needs root for loop devices, and DISKSEQ_REQUIRE_ALL=1 forbids skipping"
        );
        eprintln!("skipping {test}: needs root for loop devices");
        return false;
    }
    assert!(
        Path::new("/dev/loop-control").exists(),
        "{test}: running as root but /dev/loop-control is missing"
    );
    true
}
