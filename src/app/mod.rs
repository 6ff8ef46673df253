//! The UI, shared by the server (which renders it to HTML) and the browser (which hydrates it).
//!
//! One component tree serves both roles; each server mounts only its role's routes, and writes
//! its role on `<body data-role>` for styles and tests.
//!
//! The pages are Leptos islands: the server renders the whole page, and the browser hydrates
//! only the `#[island]` components (the launcher's panel, the visitor's Machine view). The router,
//! the static pages and the page frames never reach the WASM bundle, which is what keeps it
//! small enough for a visitor waiting on a cold Machine (BENCHMARKS.md, row 6).

pub mod ephemeral;
mod error;
pub mod island_data;
pub mod launcher;
pub mod map;
pub mod protocol;
pub mod routing_panel;
mod useless_machine;
#[cfg(feature = "hydrate")]
mod wire;

pub use error::AppError;

#[cfg(feature = "ssr")]
use crate::role::Role;
use leptos::prelude::*;
use leptos_meta::{provide_meta_context, Title};
use leptos_router::{
    components::{Route, Router, Routes},
    path, SsrMode,
};

/// What every page's `<head>` carries of one build's bundle (the hashed names when the build
/// has them), made once when the server starts: no page render reads a file.
#[cfg(feature = "ssr")]
#[derive(Debug, Clone)]
pub struct BundleLinks {
    /// The stylesheet itself, inline: a linked one would hold the page's first paint, and every
    /// parser-inserted script after it (Leptos writes two at the end of the body), until one
    /// more response came through the proxy; it is 1.4 KB compressed.
    pub style: std::sync::Arc<str>,
    /// The stylesheet's CSP source (`'sha256-…'`), for every page's policy.
    pub style_hash: std::sync::Arc<str>,
    /// The JS glue's URL, preloaded: the HTML parser's preload scanner asks for it (and for
    /// the WASM) as soon as the `<head>` arrives, before the first script of a new renderer
    /// can run (the loader's fetches then take the preloaded responses).
    pub js: std::sync::Arc<str>,
    /// The WASM's URL, preloaded (see `js`).
    pub wasm: std::sync::Arc<str>,
    /// The island loader's script, with the JS glue's and the WASM's URLs in it.
    pub loader: std::sync::Arc<str>,
    /// The loader's CSP source (`'sha256-…'`), for every page's policy.
    pub loader_hash: std::sync::Arc<str>,
}

#[cfg(feature = "ssr")]
impl BundleLinks {
    pub fn new(style: &str, js: &str, wasm: &str) -> Self {
        let loader = format!(
            "{}({js:?}, {wasm:?});",
            include_str!("island_loader.js").trim_end()
        );
        BundleLinks {
            style: style.into(),
            style_hash: crate::server::page_policy::inline_hash(style).into(),
            js: js.into(),
            wasm: wasm.into(),
            loader_hash: crate::server::page_policy::inline_hash(&loader).into(),
            loader: loader.into(),
        }
    }
}

/// The whole HTML document, rendered on the server only.
#[cfg(feature = "ssr")]
pub fn shell(options: LeptosOptions, role: Role, bundle: BundleLinks) -> impl IntoView {
    use leptos::hydration::AutoReload;
    use leptos_meta::MetaTags;
    // The page's own policy: its nonce allows the scripts Leptos streams with it.
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        let nonce = leptos::nonce::use_nonce();
        response.insert_header(
            http::header::CONTENT_SECURITY_POLICY,
            crate::server::page_policy::content_security_policy(
                &bundle.loader_hash,
                &bundle.style_hash,
                nonce.as_deref(),
            ),
        );
    }
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <link rel="icon" href="/favicon.ico"/>
                <AutoReload options/>
                <link rel="modulepreload" href=bundle.js/>
                // `crossorigin` as the loader's `fetch` asks (cors, same-origin credentials),
                // else the preloaded response would not be used.
                <link rel="preload" href=bundle.wasm r#as="fetch" r#type="application/wasm" crossorigin=""/>
                <IslandLoader script=bundle.loader/>
                <style>{bundle.style}</style>
                <MetaTags/>
            </head>
            <body data-role=role.as_str()>
                <App/>
            </body>
        </html>
    }
}

/// flyby's island loader (`island_loader.js`), in place of Leptos's `HydrationScripts`, whose
/// script (leptos 0.8 `src/hydration/island_script.js`, MIT) waits for the browser to be idle
/// before it even imports the bundle. A visitor whose Machine just started is waiting for this
/// page: here the WASM is fetched, compiled and instantiated while the page is still being
/// parsed (the script runs in `<head>`), and the islands hydrate at DOMContentLoaded. The walk
/// over the islands is Leptos's. First of all, a page that answers a hand-over (`POST
/// /m/<id>/claim`) takes its own address (`history.replaceState`): its history entry becomes a
/// `GET` of the page, so a reload never posts the hand-over again. The script carries no
/// comments: it is in every page.
#[cfg(feature = "ssr")]
#[component]
fn IslandLoader(script: std::sync::Arc<str>) -> impl IntoView {
    // As `HydrationScripts` does in islands mode: only islands are hydrated, so the rest of the
    // page is rendered without hydration markers.
    if let Some(context) = Owner::current_shared_context() {
        context.set_is_hydrating(false);
    }
    view! { <script>{script}</script> }
}

/// The root component, rendered on the server only (islands: the browser hydrates the islands
/// alone). The server mounts only its role's routes (see `server::router`).
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Title text="flyby: a Fly Machine of your own"/>
        <Router>
            <main>
                <Routes fallback=|| view! { <NotFound/> }>
                    // Async: the whole page is rendered before it is sent (its data is local
                    // and quick), so it reads complete without JavaScript too.
                    <Route path=path!("/") view=launcher::LauncherPage ssr=SsrMode::Async/>
                    <Route path=path!("/gone") view=launcher::GonePage/>
                    <Route path=path!("/m/:id") view=ephemeral::MachinePage ssr=SsrMode::Async/>
                </Routes>
            </main>
        </Router>
    }
}

#[component]
fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(http::StatusCode::NOT_FOUND);
    }
    view! {
        <h1>"Nothing here"</h1>
        <p><a href="/">"Back to the start"</a></p>
    }
}

/// How long a page waits before it connects a live channel again after `failures` failures in
/// a row: doubling from half a second to at most 15 s, times 0.5 to 1 by `jitter` (0 to 1), so
/// that the pages a blip cut together do not all come back at the same moment.
pub fn reconnect_delay(failures: u32, jitter: f64) -> std::time::Duration {
    let ceiling_ms = (500u64 << failures.saturating_sub(1).min(5)).min(15_000);
    let factor = 0.5 + 0.5 * jitter.clamp(0.0, 1.0);
    std::time::Duration::from_millis((ceiling_ms as f64 * factor) as u64)
}

/// A pause in the browser, on its timer.
#[cfg(feature = "hydrate")]
pub async fn pause(duration: std::time::Duration) {
    let (done, paused) = futures::channel::oneshot::channel::<()>();
    set_timeout(
        move || {
            let _ = done.send(());
        },
        duration,
    );
    let _ = paused.await;
}

/// `value` written with `places` decimals (rounded half up), by integer arithmetic: the WASM
/// bundle then carries none of Rust's float formatting, a sizeable part of it.
pub fn fixed(value: f64, places: u32) -> String {
    let scale = 10u64.pow(places);
    let scaled = (value.abs() * scale as f64 + 0.5).floor() as u64;
    let sign = if value < 0.0 && scaled != 0 { "-" } else { "" };
    let (whole, fraction) = (scaled / scale, scaled % scale);
    match places {
        0 => format!("{sign}{whole}"),
        _ => format!("{sign}{whole}.{fraction:0width$}", width = places as usize),
    }
}

/// Marks `<body data-hydrated>`, so that tests (and anyone curious) can tell a page whose
/// interactive parts run from server-rendered HTML. Each island calls it once it is hydrated; a
/// page without an island gets it from the bundle's entry point.
pub fn mark_hydrated() {
    if let Some(body) = document().body() {
        let _ = body.set_attribute("data-hydrated", "");
    }
}

/// Runs [`mark_hydrated`] once the calling island's first render is in place, and says so:
/// false in the server's HTML and until then, true after. A button that only the island's code
/// makes work is disabled while it is false, so that a press before hydration (a visitor far
/// from the Machine sees its page a good while before its code runs) is visibly not taken
/// rather than silently lost.
fn mark_hydrated_after_render() -> ReadSignal<bool> {
    let (hydrated, set_hydrated) = signal(false);
    Effect::new(move |_| {
        mark_hydrated();
        set_hydrated.set(true);
    });
    hydrated
}

/// A disclosure that explains what happens behind the page, and the simplest proof that a page
/// is interactive. Its body is rendered once and hidden, not built on demand: a `<Show>` would
/// bring type-erased views into the bundle.
#[component]
fn Explainer<C: IntoView + 'static>(children: TypedChildren<C>) -> impl IntoView {
    let (open, set_open) = signal(false);
    view! {
        <section class="explainer">
            <button
                type="button"
                class="link-button"
                aria-expanded=move || open.get().to_string()
                aria-controls="explainer-body"
                on:click=move |_| set_open.update(|o| *o = !*o)
            >
                {move || if open.get() { "Hide how it works" } else { "How does this work?" }}
            </button>
            <div id="explainer-body" class="explainer-body" hidden=move || !open.get()>
                {children.into_inner()()}
            </div>
        </section>
    }
}

#[cfg(test)]
mod tests;
