//! The life of a visitor's Machine, from start to exit: wait for the owner, show, switch itself
//! off, end. The Machine exits with status 0 at the end, so `auto_destroy` removes it.
//!
//! [`next`] is the whole timeline as a pure function of (phase, event, now); [`Lifecycle`]
//! runs it on a tokio task and publishes each phase on a watch channel, which the page's live
//! channel, the claim handler and `main`'s shutdown all follow.

pub use crate::app::protocol::EndReason;
use std::time::Duration;
use tokio::{sync::watch, time::Instant};

/// How long the hand takes to flip the switch on the owner's page. The Machine waits this long
/// between "switching off" and the end, so the owner sees the whole show.
pub const SWITCH_OFF_ANIMATION: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    AwaitingOwner,
    Showing { ends_at: Instant },
    SwitchingOff { reason: EndReason, done_at: Instant },
    Ended(EndReason),
}

/// What can happen to a Machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The owner proved ownership (first or later hand-over).
    Claimed,
    /// The owner asked the Machine to switch itself off now.
    SwitchOff,
    /// The platform asked the process to stop.
    Terminate,
    /// The current phase's deadline passed.
    Deadline,
}

/// The fixed points of one Machine's life.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    pub born: Instant,
    pub ttl: Duration,
    pub claim_window: Duration,
    pub show: Duration,
}

impl Timeline {
    fn death(&self) -> Instant {
        self.born + self.ttl
    }

    /// The latest the show may end so that the switch-off still fits in the lifetime.
    fn last_show_end(&self) -> Instant {
        self.death()
            .checked_sub(SWITCH_OFF_ANIMATION)
            .unwrap_or(self.born)
            .max(self.born)
    }

    /// When the current phase ends by itself, if it does.
    pub fn deadline(&self, phase: Phase) -> Option<Instant> {
        match phase {
            Phase::AwaitingOwner => Some((self.born + self.claim_window).min(self.death())),
            Phase::Showing { ends_at } => Some(ends_at),
            Phase::SwitchingOff { done_at, .. } => Some(done_at),
            Phase::Ended(_) => None,
        }
    }
}

/// The timeline: the phase after `event` happened at `now`.
pub fn next(phase: Phase, event: Event, now: Instant, t: &Timeline) -> Phase {
    let switching_off = |reason| Phase::SwitchingOff {
        reason,
        done_at: now + SWITCH_OFF_ANIMATION,
    };
    match (phase, event) {
        (Phase::Ended(reason), _) => Phase::Ended(reason),
        (_, Event::Terminate) => Phase::Ended(EndReason::Stopped),
        (Phase::AwaitingOwner, Event::Claimed) => Phase::Showing {
            ends_at: (now + t.show).min(t.last_show_end()),
        },
        (Phase::AwaitingOwner, Event::SwitchOff) => switching_off(EndReason::SwitchedOff),
        (Phase::AwaitingOwner, Event::Deadline) => {
            let reason = if now >= t.death() {
                EndReason::TtlExpired
            } else {
                EndReason::NoClaim
            };
            Phase::Ended(reason)
        }
        (Phase::Showing { .. }, Event::Claimed) => phase,
        (Phase::Showing { .. }, Event::SwitchOff) => switching_off(EndReason::SwitchedOff),
        (Phase::Showing { ends_at }, Event::Deadline) => {
            if ends_at >= t.last_show_end() {
                switching_off(EndReason::TtlExpired)
            } else {
                switching_off(EndReason::ShowOver)
            }
        }
        (Phase::SwitchingOff { reason, .. }, Event::Deadline) => Phase::Ended(reason),
        (Phase::SwitchingOff { .. }, Event::Claimed | Event::SwitchOff) => phase,
    }
}

/// A running timeline.
#[derive(Clone)]
pub struct Lifecycle {
    timeline: Timeline,
    phase: watch::Sender<Phase>,
}

impl Lifecycle {
    /// Starts the timeline now; must be called within a tokio runtime.
    pub fn start(ttl: Duration, claim_window: Duration, show: Duration) -> Self {
        let timeline = Timeline {
            born: Instant::now(),
            ttl,
            claim_window,
            show,
        };
        let (phase, mut changes) = watch::channel(Phase::AwaitingOwner);
        let lifecycle = Lifecycle { timeline, phase };
        let runner = lifecycle.clone();
        tokio::spawn(async move {
            loop {
                let current = *changes.borrow_and_update();
                let Some(deadline) = runner.timeline.deadline(current) else {
                    break;
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => runner.apply(Event::Deadline),
                    changed = changes.changed() => if changed.is_err() { break },
                }
            }
        });
        lifecycle
    }

    /// Applies an event now, notifying followers if the phase changed.
    pub fn apply(&self, event: Event) {
        let now = Instant::now();
        self.phase.send_if_modified(|phase| {
            let after = next(*phase, event, now, &self.timeline);
            let changed = after != *phase;
            if changed {
                tracing::info!(?event, phase = ?after, "lifecycle");
            }
            *phase = after;
            changed
        });
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Time left until the Machine's maximum lifetime: the owner cookie lives exactly this long.
    pub fn remaining(&self) -> Duration {
        self.timeline
            .death()
            .saturating_duration_since(Instant::now())
    }

    /// Time until the phase ends by itself, if it does.
    pub fn until_deadline(&self, phase: Phase) -> Option<Duration> {
        self.timeline
            .deadline(phase)
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Completes when the Machine has ended, with the reason.
    pub async fn ended(&self) -> EndReason {
        let mut changes = self.subscribe();
        loop {
            if let Phase::Ended(reason) = *changes.borrow_and_update() {
                return reason;
            }
            if changes.changed().await.is_err() {
                return EndReason::Stopped;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn timeline() -> Timeline {
        Timeline {
            born: Instant::now(),
            ttl: S(120),
            claim_window: S(60),
            show: S(30),
        }
    }

    #[test]
    fn an_unclaimed_machine_ends_when_the_claim_window_closes() {
        let t = timeline();
        assert_eq!(t.deadline(Phase::AwaitingOwner), Some(t.born + S(60)));
        assert_eq!(
            next(Phase::AwaitingOwner, Event::Deadline, t.born + S(60), &t),
            Phase::Ended(EndReason::NoClaim)
        );
    }

    #[test]
    fn a_claim_window_longer_than_the_ttl_ends_at_the_ttl() {
        let t = Timeline {
            claim_window: S(500),
            ..timeline()
        };
        assert_eq!(t.deadline(Phase::AwaitingOwner), Some(t.born + S(120)));
        assert_eq!(
            next(Phase::AwaitingOwner, Event::Deadline, t.born + S(120), &t),
            Phase::Ended(EndReason::TtlExpired)
        );
    }

    #[test]
    fn the_show_runs_then_the_machine_switches_itself_off_then_ends() {
        let t = timeline();
        let claimed = next(Phase::AwaitingOwner, Event::Claimed, t.born + S(5), &t);
        assert_eq!(
            claimed,
            Phase::Showing {
                ends_at: t.born + S(35)
            }
        );
        // A second arrival (reload, second tab) changes nothing.
        assert_eq!(next(claimed, Event::Claimed, t.born + S(6), &t), claimed);
        let off = next(claimed, Event::Deadline, t.born + S(35), &t);
        assert_eq!(
            off,
            Phase::SwitchingOff {
                reason: EndReason::ShowOver,
                done_at: t.born + S(35) + SWITCH_OFF_ANIMATION
            }
        );
        assert_eq!(
            next(off, Event::Deadline, t.born + S(38), &t),
            Phase::Ended(EndReason::ShowOver)
        );
    }

    #[test]
    fn the_show_is_cut_short_by_the_ttl() {
        let t = timeline();
        let claimed = next(Phase::AwaitingOwner, Event::Claimed, t.born + S(100), &t);
        assert_eq!(
            claimed,
            Phase::Showing {
                ends_at: t.born + S(117)
            }
        );
        let off = next(claimed, Event::Deadline, t.born + S(117), &t);
        assert!(
            matches!(off, Phase::SwitchingOff { reason: EndReason::TtlExpired, done_at } if done_at == t.born + S(120))
        );
    }

    #[test]
    fn the_owner_can_switch_it_off_at_once() {
        let t = timeline();
        let claimed = next(Phase::AwaitingOwner, Event::Claimed, t.born, &t);
        let off = next(claimed, Event::SwitchOff, t.born + S(2), &t);
        assert_eq!(
            off,
            Phase::SwitchingOff {
                reason: EndReason::SwitchedOff,
                done_at: t.born + S(5)
            }
        );
        // Pressing again does not restart the animation.
        assert_eq!(next(off, Event::SwitchOff, t.born + S(3), &t), off);
    }

    #[test]
    fn a_stop_signal_ends_any_phase_at_once_and_the_end_is_final() {
        let t = timeline();
        for phase in [
            Phase::AwaitingOwner,
            Phase::Showing {
                ends_at: t.born + S(30),
            },
            Phase::SwitchingOff {
                reason: EndReason::ShowOver,
                done_at: t.born + S(33),
            },
        ] {
            assert_eq!(
                next(phase, Event::Terminate, t.born, &t),
                Phase::Ended(EndReason::Stopped)
            );
        }
        for event in [
            Event::Claimed,
            Event::SwitchOff,
            Event::Terminate,
            Event::Deadline,
        ] {
            let ended = Phase::Ended(EndReason::NoClaim);
            assert_eq!(next(ended, event, t.born, &t), ended);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_running_timeline_ends_an_unclaimed_machine() {
        let lifecycle = Lifecycle::start(S(120), S(60), S(30));
        let started = Instant::now();
        assert_eq!(lifecycle.ended().await, EndReason::NoClaim);
        assert_eq!(started.elapsed().as_secs(), 60);
    }

    #[tokio::test(start_paused = true)]
    async fn the_running_timeline_follows_a_claim_to_the_end_of_the_show() {
        let lifecycle = Lifecycle::start(S(120), S(60), S(30));
        lifecycle.apply(Event::Claimed);
        let started = Instant::now();
        assert_eq!(lifecycle.ended().await, EndReason::ShowOver);
        assert_eq!(started.elapsed(), S(30) + SWITCH_OFF_ANIMATION);
    }
}
