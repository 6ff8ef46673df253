//! flyby: push a button, get a Fly Machine of your own, for a minute.
//!
//! One crate, two targets. The browser target (`hydrate`) is only the UI in [`app`]; the server
//! target (`ssr`) adds everything that touches the network or the operating system.
//!
//! Module map:
//! - [`app`]: Leptos components and server functions, compiled for both targets. The page a
//!   visitor sees on the launcher and on their own Machine.
//! - [`fly`]: Fly's vocabulary (Machine ids, region codes, the region table), validated on
//!   parse; both targets.
//! - [`role`]: which of the three roles (launcher, ephemeral, concierge) a process plays; both
//!   targets.
//! - [`server`] (ssr): the `flyby` server. [`server::config`] reads the environment once,
//!   [`server::Application`] builds the Axum router for the role and serves it.
//! - [`local`] (ssr): `flyby-local`, the stand-in for fly-proxy and the Machines API that lets
//!   the very same `flyby` binary run on a laptop and in CI.
//!
//! The `hydrate` entry point below is what the WASM bundle calls when a page loads.
//!
//! Conventions: a module with rooms of its own is a directory with a `mod.rs` (never `foo.rs`
//! beside `foo/`); unit tests sit in the file of the code they test, in a `#[cfg(test)] mod
//! tests`, except a directory module's own, which are its `tests.rs`; each file says first,
//! in `//!`, why it exists.

// The Machine page's view type, island and all, is deeper than rustc's default of 128 when its
// layout is computed for the server's render.
#![recursion_limit = "256"]

pub mod app;
pub mod fly;
pub mod role;

#[cfg(feature = "ssr")]
pub mod local;
#[cfg(feature = "ssr")]
pub mod server;

/// Entry point of the WASM bundle. The pages are islands: the HTML the server rendered stays as
/// it is, and the island loader (`app/island_loader.js`) hydrates each `<leptos-island>` after
/// this returns (see [`app`]). A page without an island is complete as soon as the bundle runs.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    // Panic messages in the console are for development: in a release bundle the hook would
    // keep all of the panic formatting alive.
    #[cfg(debug_assertions)]
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_islands();
    let page = leptos::prelude::document();
    if page
        .query_selector("leptos-island")
        .ok()
        .flatten()
        .is_none()
    {
        app::mark_hydrated();
    }
}
