//! Test-only fault injection: with the `fault-injection` feature, the script
//! SIGKILLs itself at the named step when `BLOCK_DISKSEQ_FAULT=<step>`, so
//! tests can prove that a script killed anywhere (as libxl does after 40 s)
//! leaks no loop device and leaves no partial record. With
//! `BLOCK_DISKSEQ_FAULT=stop:<step>` it SIGSTOPs itself there instead, so a
//! test can change xenstore at exactly that point and SIGCONT it. Without
//! the feature every call compiles to nothing.
//!
//! Steps, in the order `add` reaches them: `after-read`, `after-open`,
//! `after-attach`, `before-publish`, `after-publish`, `in-wait`; `remove`
//! has `after-detach`.

/// The variable naming the step to die at.
pub const ENV_FAULT: &str = "BLOCK_DISKSEQ_FAULT";

/// Every step a fault can be injected at.
pub const STEPS: &[&str] = &[
    "after-read",
    "after-open",
    "after-attach",
    "before-publish",
    "after-publish",
    "in-wait",
    "after-detach",
];

/// Dies by SIGKILL, or stops until SIGCONT, here if the environment asks
/// for it (feature-gated).
#[inline]
pub fn point(step: &'static str) {
    debug_assert!(STEPS.contains(&step), "unknown fault step {step}");
    #[cfg(feature = "fault-injection")]
    if let Some(fault) = std::env::var_os(ENV_FAULT) {
        use rustix::process::{getpid, kill_process, Signal};
        if fault == step {
            // SIGKILL cannot be caught: nothing after this line runs,
            // exactly like libxl's timeout kill.
            let _ = kill_process(getpid(), Signal::KILL);
            // kill(2) on ourselves delivers before returning; never reached.
            std::process::abort();
        }
        if fault.to_str().and_then(|f| f.strip_prefix("stop:")) == Some(step) {
            // Delivered before kill(2) returns: the script resumes here.
            let _ = kill_process(getpid(), Signal::STOP);
        }
    }
}
