//! The main job, end to end: `xen_sim::demo::run` as a library, and the
//! `diskseq demo --json` command line built from it.

use std::process::Command;

use crate::support::workspace_binary;
use testbed::require_root;
use xen_sim::demo::{Contender, DemoOptions, Event};

#[test]
fn the_demo_shows_the_refusal_and_the_wrong_disk_and_leaves_nothing() {
    if !require_root("the_demo_shows_the_refusal_and_the_wrong_disk_and_leaves_nothing") {
        return;
    }
    let options = DemoOptions {
        script: Some(workspace_binary("block-diskseq")),
    };
    // The events, in order, as their kinds (the CLI numbers its steps by
    // them), and whether the checked race's end reported the refusal.
    let mut kinds = Vec::new();
    let mut refusal_reported = false;
    let report = xen_sim::demo::run(&options, &mut |event| {
        if let Event::RaceEnded(race) = &event {
            refusal_reported |= race.checked && race.error_node.is_some();
        }
        kinds.push(match event {
            Event::Staged { .. } => "staged",
            Event::ImagesWritten { .. } => "images",
            Event::Attaching { .. } => "attaching",
            Event::Published(_) => "published",
            Event::Attached(_) => "attached",
            Event::RaceBegins(Contender::Checked) => "race checked",
            Event::RaceBegins(Contender::Legacy) => "race legacy",
            Event::RacePublished(_) => "race published",
            Event::RaceSwapped { .. } => "race swapped",
            Event::RaceEnded(_) => "race ended",
            Event::Detaching => "detaching",
            Event::Detached { .. } => "detached",
            Event::Swept { .. } => "swept",
        });
    })
    .expect("demo runs");
    assert!(report.ok, "{report:#?}");
    let race = ["race published", "race swapped", "race ended"];
    let mut expected = vec!["staged", "images", "attaching", "published", "attached"];
    expected.push("race checked");
    expected.extend(race);
    expected.push("race legacy");
    expected.extend(race);
    expected.extend(["detaching", "detached", "detached", "detached", "swept"]);
    assert_eq!(kinds, expected);

    // Step 3: the backend holds image A, by inode, and reads it.
    assert!(report.attach.backing_is_image_a);
    assert!(report.attach.first_bytes.starts_with("image A"));
    let published = report.attach.attach.diskseq.expect("diskseq published");
    assert_eq!(published, report.attach.held.diskseq);
    let node = report.attach.attach.diskseq_node.as_deref().unwrap();
    assert_eq!(u64::from_str_radix(node, 16).unwrap(), published);
    // JSON numbers are decimal: the summary's diskseq is a number.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["attach"]["attach"]["diskseq"], published);
    assert_eq!(json["attach"]["held"]["diskseq"], published);

    // Step 4: same minor, another instance, refused with ENODEV.
    let race = &report.race_checked;
    assert_eq!(race.published.dev, race.swapped_in.dev);
    assert!(race.swapped_in.diskseq > race.published.diskseq);
    assert!(race
        .error_node
        .as_deref()
        .unwrap()
        .starts_with("19 creating vbd structure"));
    assert!(race.states_seen.contains(&5), "{:?}", race.states_seen);
    assert!(!race.connected && race.served.is_none());

    // Step 5: without the check the guest is served image B.
    let legacy = &report.race_legacy;
    assert_eq!(legacy.published.dev, legacy.swapped_in.dev);
    assert!(legacy.connected && legacy.error_node.is_none());
    assert!(legacy.served.as_deref().unwrap().starts_with("image B"));

    // Step 6: nothing of the demo's is left.
    assert!(report.loops_left.is_empty());
    assert!(refusal_reported);
    assert!(!report.hotplug_log.is_empty(), "script output captured");
}

#[test]
fn diskseq_demo_json_is_a_machine_summary() {
    if !require_root("diskseq_demo_json_is_a_machine_summary") {
        return;
    }
    let output = Command::new(workspace_binary("diskseq"))
        .args(["demo", "--json"])
        .output()
        .expect("run diskseq demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout).expect("stdout is one JSON document");
    assert_eq!(json["ok"], true);
    assert_eq!(json["race_checked"]["connected"], false);
    assert!(json["race_checked"]["error_node"]
        .as_str()
        .unwrap()
        .starts_with("19 "));
    assert_eq!(json["race_legacy"]["connected"], true);
    assert_eq!(json["loops_left"].as_array().unwrap().len(), 0);

    // And the human form, with the verdict last.
    let output = Command::new(workspace_binary("diskseq"))
        .arg("demo")
        .output()
        .expect("run diskseq demo");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("[6/6]") && text.contains("REFUSED"), "{text}");
    assert!(
        text.trim_end().lines().rev().any(|l| l.starts_with("OK:")),
        "{text}"
    );
}
