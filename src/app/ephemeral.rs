//! The page a visitor sees on their own Machine.

use super::Explainer;
use leptos::prelude::*;

#[component]
pub fn MachinePage() -> impl IntoView {
    view! {
        <h1>"Your own Fly Machine"</h1>
        <p class="lede">"This Machine was started for you alone."</p>
        <Explainer>
            <p>
                "Nobody else can reach this Machine: your browser holds a secret that only this "
                "Machine can check, and every other request is refused."
            </p>
        </Explainer>
    }
}
