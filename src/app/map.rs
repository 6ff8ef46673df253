//! A map of Fly's regions with the Machines alive now: an equirectangular projection drawn in
//! SVG over the land (so a visitor recognises where a dot is), one dot per region, lit where
//! Machines run, ringed where the visitor is, flagged where the visitor's own Machine runs.
//! Each region is a control too: pressed (pointer, Enter or Space), the launch goes there.

use super::{fixed, protocol::AliveMachine};
use crate::fly::{MachineId, REGIONS};
use leptos::prelude::*;

/// The land outline, a static file the browser caches (`scripts/land-outline` makes it from
/// Natural Earth's public-domain 1:110m land), in this map's projection. Fetched, not inlined:
/// the map is drawn by the WASM too, which would then carry the path.
pub const LAND_OUTLINE: &str = "/land-110m.svg";

/// Longitude/latitude to the map's 360 x 170 viewBox.
fn project(lat: f64, lon: f64) -> (f64, f64) {
    (lon + 180.0, 85.0 - lat.clamp(-85.0, 85.0))
}

/// Where each region of [`REGIONS`] sits on the map, in that order: its dot's `x` and `y` and
/// its label's `y`, written once per process (every page draws the same map, and writing
/// them per render was half of drawing it).
fn points() -> &'static [(String, String, String)] {
    static POINTS: std::sync::OnceLock<Vec<(String, String, String)>> = std::sync::OnceLock::new();
    POINTS.get_or_init(|| {
        REGIONS
            .iter()
            .map(|r| {
                let (x, y) = project(r.lat, r.lon);
                (fixed(x, 1), fixed(y, 1), fixed(y - 6.0, 1))
            })
            .collect()
    })
}

/// `km` rounded to a hundred and written with thousands separators: "16,600 km".
fn rounded_km(km: u32) -> String {
    let hundreds = (km + 50) / 100 * 100;
    let digits = hundreds.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    format!("{out} km")
}

/// What a region's control says: where the launch would go, and how far that is from the
/// visitor's edge (`km`, when known).
pub fn launch_label(region: &crate::fly::Region, km: Option<u32>) -> String {
    match km {
        Some(km) => format!(
            "Launch in {} \u{2014} {} from you",
            region.city,
            rounded_km(km)
        ),
        None => format!("Launch in {}", region.city),
    }
}

#[component]
pub fn RegionMap(
    alive: Signal<Vec<AliveMachine>>,
    edge: Option<crate::fly::RegionCode>,
    /// From the edge to each region, in the order of `REGIONS` (empty when unknown).
    distances_km: Vec<u32>,
    /// The visitor's own Machine, as their browser remembers it.
    yours: Signal<Option<MachineId>>,
    cap: u32,
    /// No launch can start now (one runs, or Fly is out of reach).
    disabled: Signal<bool>,
    /// Starts a launch in the region pressed.
    pick: Callback<crate::fly::RegionCode>,
) -> impl IntoView {
    let count = move |code: &'static str| {
        alive.with(|a| a.iter().filter(|m| m.region.as_str() == code).count())
    };
    // Where the visitor's Machine runs, when it is among those alive.
    let yours_in = Memo::new(move |_| {
        let id = yours.get()?;
        alive.with(|a| a.iter().find(|m| m.id == id).map(|m| m.region))
    });
    // Machines in regions flyby does not know still count, and are listed by code.
    let unknown = move || {
        alive.with(|a| {
            // In the order the launcher lists them (no sort: it would only add to the bundle).
            let mut codes: Vec<String> = Vec::new();
            for m in a
                .iter()
                .filter(|m| !REGIONS.iter().any(|r| r.code == m.region.as_str()))
            {
                let code = m.region.to_string();
                if !codes.contains(&code) {
                    codes.push(code);
                }
            }
            codes
        })
    };
    view! {
        <figure class="region-map">
            <svg viewBox="0 0 360 170" role="group" aria-labelledby="map-title">
                <title id="map-title">"Fly regions, lit where flyby Machines are running now; press one to launch there"</title>
                <rect class="sea" x="0" y="0" width="360" height="170" rx="6"/>
                <image class="land" href=LAND_OUTLINE x="0" y="0" width="360" height="170" aria-hidden="true"/>
                {REGIONS
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let (x, y, label_y) = points()[i].clone();
                        let is_edge = edge.is_some_and(|e| e.as_str() == r.code);
                        let code = r.code;
                        let target = crate::fly::RegionCode::parse(code).ok();
                        let is_yours = move || yours_in.get().is_some_and(|y| y.as_str() == code);
                        let press = move || {
                            if let (false, Some(region)) = (disabled.get_untracked(), target) {
                                pick.run(region);
                            }
                        };
                        view! {
                            <g
                                class=move || {
                                    let mut class = String::from("region");
                                    for (on, name) in [(count(code) > 0, " alive"), (is_edge, " edge"), (is_yours(), " yours")] {
                                        if on {
                                            class.push_str(name);
                                        }
                                    }
                                    class
                                }
                                data-region=code
                                role="button"
                                tabindex="0"
                                aria-label={
                                    let label = launch_label(r, distances_km.get(i).copied());
                                    move || if is_yours() { format!("Your Machine runs here. {label}") } else { label.clone() }
                                }
                                aria-disabled=move || disabled.get().to_string()
                                on:click=move |_| press()
                                on:keydown=move |e| {
                                    if e.key() == "Enter" || e.key() == " " {
                                        e.prevent_default();
                                        press();
                                    }
                                }
                            >
                                <circle cx=x.clone() cy=y.clone() r="3"/>
                                {is_edge.then(|| view! { <circle class="ring" cx=x.clone() cy=y.clone() r="7"/> })}
                                {
                                    let (x, y) = (x.clone(), y.clone());
                                    move || is_yours().then(|| view! { <rect class="yours-mark" x=x.clone() y=y.clone() width="5" height="5" transform=format!("rotate(45 {x} {y}) translate(-2.5 -2.5)")/> })
                                }
                                <text x=x y=label_y>{move || match count(code) {
                                    0 => code.to_owned(),
                                    n => format!("{code} {n}"),
                                }}{move || is_yours().then_some(" (yours)")}</text>
                            </g>
                        }
                    })
                    .collect_view()}
            </svg>
            <figcaption>
                {move || {
                    let n = alive.with(Vec::len);
                    format!("{n} of {cap} Machines alive now")
                }}
                {move || yours_in.get().map(|r| format!(", yours in {}", r.city()))}
                {move || {
                    let codes = unknown();
                    (!codes.is_empty()).then(|| format!(", also in {}", codes.join(", ")))
                }}
            </figcaption>
        </figure>
    }
}
