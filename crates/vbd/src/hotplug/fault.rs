//! Test-only fault injection: with the `fault-injection` feature, the script
//! SIGKILLs itself at the named step when `BLOCK_DISKSEQ_FAULT=<step>`, so
//! tests can prove that a script killed anywhere (as libxl does after 40 s)
//! leaks no loop device and leaves no partial record. With
//! `BLOCK_DISKSEQ_FAULT=pause:<step>` it waits there instead, on the FIFO
//! named by `BLOCK_DISKSEQ_FAULT_FIFO`: its open for reading returns once
//! the test opens the FIFO for writing (so the test knows the script is at
//! that step), and the script goes on when the test closes it, having
//! changed xenstore at exactly that point. (A SIGSTOP to itself would not
//! do: kill(2) stops the thread group through whichever thread takes the
//! signal, and the calling thread may run on meanwhile.) Without the
//! feature every call compiles to nothing.
//!
//! Steps, in the order `add` reaches them: `after-read`, `after-open`,
//! `after-attach`, `before-publish`, `after-publish`, `in-wait`; `remove`
//! has `after-withdraw`.

/// The variable naming the step to die (or pause) at.
pub const ENV_FAULT: &str = "BLOCK_DISKSEQ_FAULT";
/// The FIFO a `pause:<step>` fault waits on.
pub const ENV_FAULT_FIFO: &str = "BLOCK_DISKSEQ_FAULT_FIFO";

/// Every step a fault can be injected at.
pub const STEPS: &[&str] = &[
    "after-read",
    "after-open",
    "after-attach",
    "before-publish",
    "after-publish",
    "in-wait",
    "after-withdraw",
];

/// Dies by SIGKILL, or pauses, here if the environment asks for it
/// (feature-gated).
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
        if fault.to_str().and_then(|f| f.strip_prefix("pause:")) == Some(step) {
            let fifo = std::env::var_os(ENV_FAULT_FIFO).expect("BLOCK_DISKSEQ_FAULT_FIFO");
            let mut paused = std::fs::File::open(fifo).expect("the pause FIFO");
            let _ = std::io::Read::read_to_end(&mut paused, &mut Vec::new());
        }
    }
}
