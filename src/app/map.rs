//! A map of Fly's regions with the Machines alive now: an equirectangular projection drawn in
//! SVG, one dot per region, lit where Machines run, ringed where the visitor is. Each region
//! is a control too: pressed (pointer, Enter or Space), the launch goes there.

use super::{fixed, protocol::AliveMachine};
use crate::fly::REGIONS;
use leptos::prelude::*;

/// Longitude/latitude to the map's 360 x 170 viewBox.
fn project(lat: f64, lon: f64) -> (f64, f64) {
    (lon + 180.0, 85.0 - lat.clamp(-85.0, 85.0))
}

/// `km` rounded to a hundred and written with thousands separators: "16,600 km".
fn rounded_km(km: f64) -> String {
    let hundreds = ((km / 100.0).round() as u64) * 100;
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

/// What a region's control says: where the launch would go, and how far that is.
pub fn launch_label(region: &crate::fly::Region, edge: Option<crate::fly::RegionCode>) -> String {
    let from = edge
        .and_then(|e| crate::fly::distance_km(e, crate::fly::RegionCode::parse(region.code).ok()?));
    match from {
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
    cap: u32,
    /// No launch can start now (one runs, or Fly is out of reach).
    disabled: Signal<bool>,
    /// Starts a launch in the region pressed.
    pick: Callback<crate::fly::RegionCode>,
) -> impl IntoView {
    let count = move |code: &'static str| {
        alive.with(|a| a.iter().filter(|m| m.region.as_str() == code).count())
    };
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
                {(1..6).map(|i| view! { <line class="grid" x1="0" x2="360" y1={i * 30 - 5} y2={i * 30 - 5}/> }).collect_view()}
                {(1..12).map(|i| view! { <line class="grid" y1="0" y2="170" x1={i * 30} x2={i * 30}/> }).collect_view()}
                {REGIONS
                    .iter()
                    .map(|r| {
                        let (x, y) = project(r.lat, r.lon);
                        let label_y = fixed(y - 6.0, 1);
                        let (x, y) = (fixed(x, 1), fixed(y, 1));
                        let is_edge = edge.is_some_and(|e| e.as_str() == r.code);
                        let code = r.code;
                        let target = crate::fly::RegionCode::parse(code).ok();
                        let press = move || {
                            if let (false, Some(region)) = (disabled.get_untracked(), target) {
                                pick.run(region);
                            }
                        };
                        view! {
                            <g
                                class=move || match (count(code) > 0, is_edge) {
                                    (true, true) => "region alive edge",
                                    (true, false) => "region alive",
                                    (false, true) => "region edge",
                                    (false, false) => "region",
                                }
                                data-region=code
                                role="button"
                                tabindex="0"
                                aria-label=launch_label(r, edge)
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
                                {is_edge.then(|| view! { <circle class="ring" cx=x.clone() cy=y r="7"/> })}
                                <text x=x y=label_y>{move || match count(code) {
                                    0 => code.to_owned(),
                                    n => format!("{code} {n}"),
                                }}</text>
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
                {move || {
                    let codes = unknown();
                    (!codes.is_empty()).then(|| format!(", also in {}", codes.join(", ")))
                }}
            </figcaption>
        </figure>
    }
}
