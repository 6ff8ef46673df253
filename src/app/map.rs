//! A map of Fly's regions with the Machines alive now: an equirectangular projection drawn in
//! SVG, one dot per region, lit where Machines run, ringed where the visitor is.

use super::{fixed, protocol::AliveMachine};
use crate::fly::REGIONS;
use leptos::prelude::*;

/// Longitude/latitude to the map's 360 x 170 viewBox.
fn project(lat: f64, lon: f64) -> (f64, f64) {
    (lon + 180.0, 85.0 - lat.clamp(-85.0, 85.0))
}

#[component]
pub fn RegionMap(
    alive: Signal<Vec<AliveMachine>>,
    edge: Option<crate::fly::RegionCode>,
    cap: u32,
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
            <svg viewBox="0 0 360 170" role="img" aria-labelledby="map-title">
                <title id="map-title">"Fly regions, lit where flyby Machines are running now"</title>
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
                        view! {
                            <g
                                class=move || match (count(code) > 0, is_edge) {
                                    (true, true) => "region alive edge",
                                    (true, false) => "region alive",
                                    (false, true) => "region edge",
                                    (false, false) => "region",
                                }
                                data-region=code
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
