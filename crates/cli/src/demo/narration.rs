//! The demo's narration: the words for each [`Event`] the scenario reports,
//! numbered in six steps. The facts come from `xen_sim::demo`; what a reader
//! is told about them is decided here, next to the rest of the CLI's text.

use std::io::Write;

use vbd::schema::XenbusState;
use xen_sim::demo::{Contender, Event, GUEST_A, GUEST_RACE, LEGACY_BACKEND, MARKER_A, MARKER_B};

use crate::vbd_cmd::describe_detach;

/// How many numbered steps the narration has.
pub const STEPS: usize = 6;

/// Prints one event: a step header (`[n/6] …`) where a step begins, and
/// indented detail lines.
pub fn narrate(out: &mut impl Write, event: &Event<'_>) -> std::io::Result<()> {
    let step = |out: &mut dyn Write, n: usize, title: &str| writeln!(out, "[{n}/{STEPS}] {title}");
    let detail = |out: &mut dyn Write, text: &str| writeln!(out, "      {text}");
    match event {
        Event::Staged { xenstored } => {
            step(out, 1, "start xenstored, the backends and two guests' frontends (no Xen needed)")?;
            detail(out, &format!("xenstored (ours) on {}", xenstored.display()))?;
            detail(out, "backend in dom0: blkback's xenstore protocol with the diskseq check")?;
            detail(out, &format!("backend in domain {LEGACY_BACKEND}: the same without the check (stock blkback), for comparison"))?;
            detail(out, &format!("frontend models for guests {GUEST_A} and {GUEST_RACE}, each on its own domain socket"))
        }
        Event::ImagesWritten { a, b } => {
            step(out, 2, "create two small disk images with different contents")?;
            detail(out, &format!("{}: \"{MARKER_A}\"", a.display()))?;
            detail(out, &format!("{}: \"{MARKER_B}\"", b.display()))
        }
        Event::Attaching { vdev, script } => step(
            out,
            3,
            &format!(
                "attach A.img to guest {GUEST_A} as {vdev} (toolstack + {} as a child process)",
                script.display()
            ),
        ),
        Event::Published(attach) => detail(
            out,
            &format!(
                "the script published physical-device {} and diskseq {} in one transaction; exit status 0",
                dev_both(attach.physical_device_node.as_deref().unwrap_or("?")),
                seq_both(attach.diskseq_node.as_deref().unwrap_or("?"))
            ),
        ),
        Event::Attached(proof) => {
            detail(out, &format!("backend: Connected; guest {GUEST_A} sees {} sectors, read-write", proof.guest_sectors))?;
            detail(
                out,
                &format!(
                    "backend holds {} = {} diskseq {}, bound to {} — reading through its fd: \"{}\"",
                    proof.held.path,
                    proof.held.dev,
                    proof.held.diskseq,
                    proof.backing_file.as_deref().unwrap_or("?"),
                    proof.first_bytes
                ),
            )
        }
        Event::RaceBegins(Contender::Checked) => {
            step(out, 4, "the race, against the backend with the diskseq check")?;
            detail(out, &format!("guest {GUEST_RACE} asks for A.img as xvda; the record is published as Xen's stock"))?;
            detail(out, "`block` script leaves it: a loop device that nothing holds afterwards.")?;
            detail(out, "A pause point in the backend, between reading the record and opening the device,")?;
            detail(out, "detaches that loop device and binds B.img on the same minor.")
        }
        Event::RaceBegins(Contender::Legacy) => step(
            out,
            5,
            &format!("the same race, against a backend without the check (backend domain {LEGACY_BACKEND})"),
        ),
        Event::RacePublished(instance) => detail(
            out,
            &format!(
                "published physical-device {}, diskseq {}: {}, bound to A.img",
                dev_both(&instance.id.dev().to_xenstore()),
                seq_both(&instance.id.seq.to_xenstore()),
                instance.path
            ),
        ),
        Event::RaceSwapped { published, swapped_in } => detail(
            out,
            &format!(
                "in the window: {} detached, B.img bound on the same minor: {} diskseq {}",
                published.path, swapped_in.dev, swapped_in.diskseq
            ),
        ),
        Event::RaceEnded(race) if race.checked => match &race.error_node {
            Some(error) => {
                detail(out, &format!("REFUSED, error node: \"{error}\""))?;
                let states: Vec<String> = race
                    .states_seen
                    .iter()
                    .map(|&s| format!("{} {s}", state_name(s)))
                    .collect();
                detail(
                    out,
                    &format!(
                        "states the backend wrote: {} (Closed once the guest closed); it holds nothing",
                        states.join(" -> ")
                    ),
                )
            }
            None => detail(out, "NOT refused: the check failed to catch the swap"),
        },
        Event::RaceEnded(race) => match &race.served {
            Some(bytes) if race.connected => detail(
                out,
                &format!(
                    "connected guest {GUEST_RACE}'s xvdb to {} — reading it gives \"{bytes}\": the wrong disk",
                    race.swapped_in.dev
                ),
            ),
            _ => detail(out, "the legacy backend did not serve the swapped disk"),
        },
        Event::Detaching => step(
            out,
            6,
            "detach everything (libxl's removal: online=0, Closing, wait Closed, script remove, rm)",
        ),
        Event::Detached { guest, vdev, report } => {
            detail(out, &format!("guest {guest} {vdev}: {}", describe_detach(report)))
        }
        Event::Swept { loops_left, loops_on_host } => {
            if loops_left.is_empty() {
                detail(out, "loop devices bound to A.img or B.img: none")?;
            } else {
                detail(out, &format!("STILL BOUND: {}", loops_left.join(", ")))?;
            }
            detail(
                out,
                &match loops_on_host {
                    0 => "losetup -a equivalent: (empty)".to_owned(),
                    n => format!("losetup -a equivalent: {n} device(s), none of them the demo's"),
                },
            )
        }
    }
}

/// `8d2 (= 2258)`: the xenstore form, and the decimal the kernel and the
/// error messages use.
fn seq_both(hex: &str) -> String {
    match u64::from_str_radix(hex, 16) {
        Ok(n) => format!("{hex} (= {n})"),
        Err(_) => hex.to_owned(),
    }
}

/// `7:a (= 7:10)`: `physical-device` as xenstore has it (hex), and the
/// decimal `maj:min` the kernel and sysfs use, when they differ.
fn dev_both(hex: &str) -> String {
    match diskseq::DevNum::parse_xenstore(hex) {
        Ok(dev) if dev.to_string() != hex => format!("{hex} (= {dev})"),
        _ => hex.to_owned(),
    }
}

fn state_name(state: u32) -> String {
    XenbusState::from_u32(state).map_or_else(|| "?".into(), |s| format!("{s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_are_shown_where_they_differ() {
        assert_eq!(seq_both("8d2"), "8d2 (= 2258)");
        assert_eq!(dev_both("7:a"), "7:a (= 7:10)");
        assert_eq!(dev_both("7:0"), "7:0");
        assert_eq!(state_name(5), "Closing");
    }
}
