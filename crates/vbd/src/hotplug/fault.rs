//! Test-only fault injection: with the `fault-injection` feature, the script
//! SIGKILLs itself at the named step when `BLOCK_DISKSEQ_FAULT=<step>`, so
//! tests can prove that a script killed anywhere (as libxl does after 40 s)
//! leaks no loop device and leaves no partial record. Without the feature
//! every call compiles to nothing.
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

/// Dies by SIGKILL here if the environment asks for it (feature-gated).
#[inline]
pub fn point(step: &'static str) {
    debug_assert!(STEPS.contains(&step), "unknown fault step {step}");
    #[cfg(feature = "fault-injection")]
    if std::env::var_os(ENV_FAULT).is_some_and(|v| v == step) {
        // SIGKILL cannot be caught: nothing after this line runs, exactly
        // like libxl's timeout kill.
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // kill(2) on ourselves delivers before returning; never reached.
        std::process::abort();
    }
}
