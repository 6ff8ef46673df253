//! The show: a useless machine, a box whose own hand comes out to switch it off. Drawn in SVG,
//! animated in CSS (`style/main.css`, `.useless`), still for visitors who prefer reduced motion.

use leptos::prelude::*;

/// The switch on top of the box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchState {
    On,
    /// The lid opens, the hand flips the switch, the hand goes back in.
    Flipping,
    Off,
}

impl SwitchState {
    fn as_str(self) -> &'static str {
        match self {
            SwitchState::On => "on",
            SwitchState::Flipping => "flipping",
            SwitchState::Off => "off",
        }
    }

    fn status(self) -> &'static str {
        match self {
            SwitchState::On => "The Machine is on.",
            SwitchState::Flipping => "A hand comes out of the box and switches the Machine off.",
            SwitchState::Off => "The Machine switched itself off.",
        }
    }
}

#[component]
pub fn UselessMachine(#[prop(into)] state: Signal<SwitchState>) -> impl IntoView {
    view! {
        <figure class="useless" data-state=move || state.get().as_str()>
            <svg viewBox="0 0 220 170" role="img" aria-labelledby="useless-title">
                <title id="useless-title">"A box with a switch on top, and a hand inside it"</title>
                <g class="hand">
                    <rect class="arm" x="92" y="70" width="16" height="50" rx="6"/>
                    <circle class="fist" cx="100" cy="68" r="13"/>
                    <rect class="finger" x="104" y="52" width="24" height="9" rx="4"/>
                </g>
                <rect class="body" x="30" y="80" width="160" height="76" rx="10"/>
                <rect class="lid" x="30" y="70" width="100" height="12" rx="4"/>
                <rect class="base" x="140" y="66" width="40" height="16" rx="4"/>
                <g class="lever">
                    <rect x="157" y="34" width="6" height="36" rx="3"/>
                    <circle cx="160" cy="34" r="7"/>
                </g>
                <circle class="led" cx="55" cy="118" r="7"/>
            </svg>
            <figcaption class="visually-hidden" aria-live="polite">{move || state.get().status()}</figcaption>
        </figure>
    }
}
