//! The pages' shared helpers, rule by rule.

use super::fixed;

#[test]
fn fixed_writes_what_float_formatting_would() {
    for (value, places, expected) in [
        (0.0, 1, "0.0"),
        (12.345, 1, "12.3"),
        (12.35, 2, "12.35"),
        (0.05, 1, "0.1"),
        (9.96, 1, "10.0"),
        (1.0, 2, "1.00"),
        (0.007, 2, "0.01"),
        (3.4, 0, "3"),
        (-0.24, 1, "-0.2"),
        (-0.04, 1, "0.0"),
        (359.9, 1, "359.9"),
        (1234.5678, 3, "1234.568"),
    ] {
        assert_eq!(
            fixed(value, places),
            expected,
            "{value} with {places} places"
        );
    }
}

#[test]
fn a_launch_that_waits_again_and_again_keeps_one_waiting_row_with_its_count_and_time() {
    use super::protocol::{LaunchProgress, Step};
    let wait = Step::WaitingForSlot {
        waits: 1,
        waited_ms: 0,
    };
    let mut progress = LaunchProgress::default();
    progress.record(Step::Requested, 0);
    for at_ms in [10, 1_010, 2_510, 4_010] {
        progress.record(wait.clone(), at_ms);
    }
    progress.record(Step::Started, 5_000);
    let labels: Vec<String> = progress.steps.iter().map(|s| s.step.label()).collect();
    assert_eq!(
        labels,
        ["Requested", "Waiting for a slot (4 tries, 4 s)", "Started"]
    );
    // The row keeps when the waiting began.
    assert_eq!(progress.steps[1].at_ms, 10);
    // A wait after another step is a new row.
    progress.record(wait, 6_000);
    assert_eq!(progress.steps.len(), 4);
    assert_eq!(progress.steps[3].step.label(), "Waiting for a slot");
}

#[test]
fn live_channels_reconnect_after_a_growing_jittered_bounded_pause() {
    use super::reconnect_delay;
    use std::time::Duration;
    let ms = |failures, jitter| reconnect_delay(failures, jitter).as_millis();
    assert_eq!(ms(1, 1.0), 500);
    assert_eq!(ms(1, 0.0), 250, "jitter halves at most");
    assert_eq!(ms(2, 1.0), 1_000);
    assert_eq!(ms(3, 1.0), 2_000);
    // Bounded however long the outage, and never zero.
    for failures in [6, 7, 30, u32::MAX] {
        assert_eq!(
            reconnect_delay(failures, 1.0),
            Duration::from_millis(15_000)
        );
        assert!(reconnect_delay(failures, 0.0) >= Duration::from_millis(7_500));
    }
    assert_eq!(ms(0, 1.0), 500);
    assert_eq!(ms(1, 7.0), 500, "jitter clamped");
}

#[test]
fn a_regions_control_says_where_the_launch_goes_and_how_far_it_is() {
    use crate::fly::REGIONS;
    let region = |code: &str| REGIONS.iter().find(|r| r.code == code).unwrap();
    assert_eq!(
        super::map::launch_label(region("syd"), Some(16_649)),
        "Launch in Sydney \u{2014} 16,600 km from you"
    );
    assert_eq!(
        super::map::launch_label(region("syd"), Some(16_650)),
        "Launch in Sydney \u{2014} 16,700 km from you"
    );
    assert_eq!(
        super::map::launch_label(region("ams"), Some(0)),
        "Launch in Amsterdam \u{2014} 0 km from you"
    );
    // An edge flyby does not know: no distance to give.
    assert_eq!(
        super::map::launch_label(region("syd"), None),
        "Launch in Sydney"
    );
}

#[test]
fn a_boot_timeline_goes_through_the_hand_over_and_nothing_else_does() {
    use super::protocol::{BootStep, BootTimeline, Step, StepView};
    use crate::fly::RegionCode;
    let ams = RegionCode::parse("ams").unwrap();
    let steps = [
        (Step::Requested, 3),
        (Step::Warm { region: ams }, 612),
        (Step::Serving, 640),
        (Step::SendingYou, 640),
    ]
    .map(|(step, at_ms)| StepView { step, at_ms });
    let timeline = BootTimeline::of_launch(&steps, 655);
    assert_eq!(timeline.encode(), "q3.w612.v640.h655");
    assert_eq!(BootTimeline::parse(&timeline.encode()), Some(timeline));
    assert_eq!(
        BootTimeline::parse("c10.b20").unwrap().0,
        [(BootStep::Created, 10), (BootStep::FirstByte, 20)]
    );
    // Anything but what `encode` writes is no timeline: unknown steps, signs, empty times,
    // huge numbers, markup, too many steps.
    let too_many = vec!["q1"; BootTimeline::MAX + 1].join(".");
    for bad in [
        "",
        "x1",
        "q",
        "q-1",
        "q1..c2",
        "q1.c2.",
        "q99999999999",
        "q1<script>",
        "Q1",
        "q 1",
        &too_many,
    ] {
        assert_eq!(BootTimeline::parse(bad), None, "{bad:?}");
    }
}
