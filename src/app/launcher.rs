//! The launcher's home page: the button that gets a visitor their own Machine.

use super::Explainer;
use leptos::prelude::*;

#[component]
pub fn LauncherPage() -> impl IntoView {
    view! {
        <h1>"flyby"</h1>
        <p class="lede">
            "Push the button and a brand-new Fly Machine starts in the region nearest to you. "
            "It is yours alone for a minute, then it switches itself off and is gone for good."
        </p>
        <button type="button" class="launch" disabled=true>
            "Launch my Machine"
        </button>
        <Explainer>
            <p>
                "The launcher calls the Fly Machines API to create a Machine from this very image. "
                "When it really serves, your browser is sent to it. Every request you make from then "
                "on reaches that one Machine: when Fly's proxy delivers one to another Machine, that "
                "Machine answers with a " <code>"fly-replay"</code> " header and the proxy delivers it again."
            </p>
        </Explainer>
    }
}

/// Where a visitor lands when their Machine has vanished under them.
#[component]
pub fn GonePage() -> impl IntoView {
    view! {
        <h1>"Your Machine is gone"</h1>
        <p class="lede">
            "The Fly Machine you were looking for has switched itself off and was destroyed, "
            "as every flyby Machine does. Launch a new one whenever you like."
        </p>
        <p><a href="/">"Back to the start"</a></p>
    }
}
