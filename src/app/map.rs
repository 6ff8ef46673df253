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

/// How a region looks: its classes, its label's text and what its control says. One function
/// for the server's page and for the browser's updates, so the two always agree.
struct RegionLook {
    class: &'static str,
    text: String,
    label: String,
    /// The visitor's edge: the dot is ringed.
    edge: bool,
    /// The visitor's own Machine runs here: the dot is marked.
    yours: bool,
}

impl RegionLook {
    /// Region `code` as the live map has it: the Machines alive, the region of the visitor's
    /// own (`mine`), their edge.
    fn now(
        code: &str,
        base_label: &str,
        alive: &[AliveMachine],
        mine: Option<crate::fly::RegionCode>,
        edge: Option<crate::fly::RegionCode>,
    ) -> Self {
        let here = alive.iter().filter(|m| m.region.as_str() == code).count();
        let is =
            |region: Option<crate::fly::RegionCode>| region.is_some_and(|r| r.as_str() == code);
        RegionLook::of(code, base_label, here, is(edge), is(mine))
    }

    fn of(code: &str, base_label: &str, alive: usize, edge: bool, yours: bool) -> Self {
        let class = match (alive > 0, edge, yours) {
            (false, false, false) => "region",
            (true, false, false) => "region alive",
            (false, true, false) => "region edge",
            (true, true, false) => "region alive edge",
            (false, false, true) => "region yours",
            (true, false, true) => "region alive yours",
            (false, true, true) => "region edge yours",
            (true, true, true) => "region alive edge yours",
        };
        let mut text = match alive {
            0 => code.to_owned(),
            n => format!("{code} {n}"),
        };
        if yours {
            text.push_str(" (yours)");
        }
        let label = if yours {
            format!("Your Machine runs here. {base_label}")
        } else {
            base_label.to_owned()
        };
        RegionLook {
            class,
            text,
            label,
            edge,
            yours,
        }
    }
}

/// The map. Its eighteen regions are plain markup, written as they stand when the page is
/// rendered; in the browser one effect updates them in place as the live map changes, and one
/// listener on the map takes every region's presses. A reactive view per region cost the
/// server a quarter of the launcher page's render and the browser as many views to hydrate.
#[component]
pub fn RegionMap(
    /// The live map: the Machines alive, read in place (a signal, not a memo: a memo's read
    /// checks its sources each time).
    alive: ReadSignal<Vec<AliveMachine>>,
    edge: Option<crate::fly::RegionCode>,
    /// From the edge to each region, in the order of `REGIONS` (empty when unknown).
    distances_km: Vec<u32>,
    /// The visitor's own Machine, as their browser remembers it.
    yours: ReadSignal<Option<MachineId>>,
    cap: u32,
    /// No launch can start now (one runs, or Fly is out of reach).
    disabled: Signal<bool>,
    /// Starts a launch in the region pressed.
    pick: Callback<crate::fly::RegionCode>,
) -> impl IntoView {
    // Where the visitor's Machine runs, when it is among those alive.
    let yours_in = move || {
        let id = yours.get()?;
        alive.with(|a| a.iter().find(|m| m.id == id).map(|m| m.region))
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
    let labels: Vec<String> = REGIONS
        .iter()
        .enumerate()
        .map(|(i, r)| launch_label(r, distances_km.get(i).copied()))
        .collect();
    let regions = {
        let (mine, off) = (untrack(yours_in), disabled.get_untracked());
        alive.with_untracked(|a| {
            REGIONS
                .iter()
                .zip(&labels)
                .enumerate()
                .map(|(i, (r, label))| {
                    let (x, y, label_y) = points()[i].clone();
                    let code = r.code;
                    let look = RegionLook::now(code, label, a, mine, edge);
                    view! {
                        <g
                            class=look.class
                            data-region=code
                            role="button"
                            tabindex="0"
                            aria-label=look.label
                            aria-disabled=if off { "true" } else { "false" }
                        >
                            <circle cx=x.clone() cy=y.clone() r="3"/>
                            {look.edge.then(|| view! { <circle class="ring" cx=x.clone() cy=y.clone() r="7"/> })}
                            {look.yours.then(|| yours_mark(&x, &y))}
                            <text x=x y=label_y>{look.text}</text>
                        </g>
                    }
                })
                .collect_view()
        })
    };
    let figure = NodeRef::<leptos::html::Figure>::new();
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        let mine = yours_in();
        let off = disabled.get();
        if let Some(figure) = figure.get() {
            alive.with(|a| live::update(&figure, a, mine, off, &labels, edge));
        }
    });
    // Every region's presses, at the map: the region is the pressed element's `data-region`.
    let press = move |target: Option<leptos::web_sys::EventTarget>| {
        #[cfg(feature = "hydrate")]
        if let (false, Some(region)) = (disabled.get_untracked(), live::region_of(target)) {
            pick.run(region);
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = (target, pick);
    };
    view! {
        <figure class="region-map" node_ref=figure>
            <svg
                viewBox="0 0 360 170"
                role="group"
                aria-labelledby="map-title"
                on:click=move |e| press(e.target())
                on:keydown=move |e| {
                    if e.key() == "Enter" || e.key() == " " {
                        e.prevent_default();
                        press(e.target());
                    }
                }
            >
                <title id="map-title">"Fly regions, lit where flyby Machines are running now; press one to launch there"</title>
                <rect class="sea" x="0" y="0" width="360" height="170" rx="6"/>
                <image class="land" href=LAND_OUTLINE x="0" y="0" width="360" height="170" aria-hidden="true"/>
                {regions}
            </svg>
            <figcaption>
                {move || {
                    let n = alive.with(Vec::len);
                    format!("{n} of {cap} Machines alive now")
                }}
                {move || yours_in().map(|r| format!(", yours in {}", r.city()))}
                {move || {
                    let codes = unknown();
                    (!codes.is_empty()).then(|| format!(", also in {}", codes.join(", ")))
                }}
            </figcaption>
        </figure>
    }
}

/// The diamond around a region's dot that marks the visitor's own Machine.
fn yours_mark(x: &str, y: &str) -> impl IntoView {
    view! {
        <rect
            class="yours-mark"
            x=x.to_owned()
            y=y.to_owned()
            width="5"
            height="5"
            transform=yours_mark_transform(x, y)
        />
    }
}

fn yours_mark_transform(x: &str, y: &str) -> String {
    format!("rotate(45 {x} {y}) translate(-2.5 -2.5)")
}

#[cfg(feature = "hydrate")]
mod live {
    use super::{AliveMachine, RegionLook, REGIONS};
    use crate::fly::RegionCode;
    use wasm_bindgen::JsCast;
    use web_sys::{Element, EventTarget, HtmlElement};

    /// The region whose control holds the pressed element.
    pub fn region_of(target: Option<EventTarget>) -> Option<RegionCode> {
        let element = target?.dyn_into::<Element>().ok()?;
        let code = element
            .closest("[data-region]")
            .ok()??
            .get_attribute("data-region")?;
        RegionCode::parse(&code).ok()
    }

    /// Brings each region's markup to the live map's state.
    pub fn update(
        figure: &HtmlElement,
        alive: &[AliveMachine],
        mine: Option<RegionCode>,
        off: bool,
        labels: &[String],
        edge: Option<RegionCode>,
    ) {
        for ((region, label), point) in REGIONS.iter().zip(labels).zip(super::points()) {
            let code = region.code;
            let Ok(Some(g)) = figure.query_selector(&format!("[data-region={code}]")) else {
                continue;
            };
            let look = RegionLook::now(code, label, alive, mine, edge);
            let _ = g.set_attribute("class", look.class);
            let _ = g.set_attribute("aria-label", &look.label);
            let _ = g.set_attribute("aria-disabled", if off { "true" } else { "false" });
            if let Ok(Some(text)) = g.query_selector("text") {
                text.set_text_content(Some(&look.text));
            }
            let mark = g.query_selector(".yours-mark").ok().flatten();
            match (look.yours, mark) {
                (false, Some(mark)) => mark.remove(),
                (true, None) => add_mark(&g, &point.0, &point.1),
                _ => {}
            }
        }
    }

    fn add_mark(g: &Element, x: &str, y: &str) {
        let Some(document) = web_sys::window().and_then(|w| w.document()) else {
            return;
        };
        let Ok(mark) = document.create_element_ns(Some("http://www.w3.org/2000/svg"), "rect")
        else {
            return;
        };
        for (name, value) in [
            ("class", "yours-mark"),
            ("x", x),
            ("y", y),
            ("width", "5"),
            ("height", "5"),
            ("transform", &super::yours_mark_transform(x, y)),
        ] {
            let _ = mark.set_attribute(name, value);
        }
        // Where the server would have written it: after the dots, before the label.
        let text = g.query_selector("text").ok().flatten();
        let _ = g.insert_before(&mark, text.as_ref().map(|t| t.as_ref()));
    }
}

#[cfg(test)]
mod tests {
    use super::RegionLook;

    #[test]
    fn a_region_looks_as_what_is_there_and_whose_it_is() {
        let base = "Launch in Sydney \u{2014} 16,600 km from you";
        let quiet = RegionLook::of("syd", base, 0, false, false);
        assert_eq!(
            (quiet.class, quiet.text.as_str(), quiet.label.as_str()),
            ("region", "syd", base)
        );
        let busy = RegionLook::of("syd", base, 2, true, false);
        assert_eq!(
            (busy.class, busy.text.as_str()),
            ("region alive edge", "syd 2")
        );
        let mine = RegionLook::of("syd", base, 1, false, true);
        assert_eq!(
            (mine.class, mine.text.as_str(), mine.label.as_str()),
            (
                "region alive yours",
                "syd 1 (yours)",
                "Your Machine runs here. Launch in Sydney \u{2014} 16,600 km from you"
            )
        );
        // Every combination names each of its states once, in one order.
        for alive in [0, 1] {
            for edge in [false, true] {
                for yours in [false, true] {
                    let class = RegionLook::of("ams", "", alive, edge, yours).class;
                    let expected: Vec<&str> = [
                        ("region", true),
                        ("alive", alive > 0),
                        ("edge", edge),
                        ("yours", yours),
                    ]
                    .into_iter()
                    .filter_map(|(name, on)| on.then_some(name))
                    .collect();
                    assert_eq!(class, expected.join(" "));
                }
            }
        }
    }
}
