//! "How your requests got here": the owner's view of what the affinity layer did for them.
//! Every request of their page reached a Machine fly-proxy chose, and most were replayed to
//! theirs; the Machine records each (`server::affinity::routes`) and its live channel brings
//! the rows here. Secondary to the show: a closed `<details>` below it, a plain table inside,
//! and one summary line that a screen reader hears at most once a second. Also the receipt
//! the page keeps once the Machine is gone.

use super::protocol::{Arrival, BootTimeline, LaunchRoute, RouteTotals, RouteView};
use leptos::prelude::*;

/// The summary line: "7 of 9 requests were replayed from ord to syd; the replay cache
/// answered 2".
pub fn summary(rows: &[RouteView], totals: RouteTotals, here: Option<&str>) -> String {
    if totals.served == 0 {
        return "No request recorded yet.".to_owned();
    }
    let plural = |n: u32, one: &str, many: &str| {
        if n == 1 {
            format!("{n} {one}")
        } else {
            format!("{n} {many}")
        }
    };
    if totals.replayed == 0 && totals.cache_hits == 0 {
        return format!(
            "{} came straight to this Machine.",
            plural(totals.served, "request", "requests")
        );
    }
    // The regions replays came from, most frequent first (a handful: picked out one by one,
    // which costs the bundle less than a sort).
    let mut counts: Vec<(&str, u32)> = Vec::new();
    for row in rows {
        if let Arrival::Replayed { region, .. } = &row.arrival {
            match counts.iter_mut().find(|(r, _)| r == region) {
                Some((_, n)) => *n += 1,
                None => counts.push((region, 1)),
            }
        }
    }
    let mut from = String::new();
    while let Some(most) =
        (0..counts.len()).reduce(|a, b| if counts[b].1 > counts[a].1 { b } else { a })
    {
        if !from.is_empty() {
            from.push_str(", ");
        }
        from.push_str(counts.remove(most).0);
    }
    let mut line = format!(
        "{} of {} ",
        totals.replayed,
        plural(totals.served, "request", "requests")
    );
    line.push_str(if totals.replayed == 1 {
        "was replayed"
    } else {
        "were replayed"
    });
    if !from.is_empty() {
        line.push_str(" from ");
        line.push_str(&from);
    }
    if let Some(here) = here {
        line.push_str(" to ");
        line.push_str(here);
    }
    if totals.cache_hits > 0 {
        line.push_str("; the replay cache answered ");
        line.push_str(&totals.cache_hits.to_string());
    }
    line
}

/// Which launcher ran a launch and how each of the page's calls reached it, in one line:
/// "Run by launcher Machine 0123456789abcd in Amsterdam (ams). Its calls: start — direct;
/// progress — replayed from … in ord".
pub fn launch_route(route: &LaunchRoute) -> String {
    let mut line = format!("Run by launcher Machine {}", route.launcher);
    if let Some(region) = route.region {
        line.push_str(&format!(" in {} ({region})", region.city()));
    }
    line.push('.');
    for (i, (call, arrival)) in route.calls.iter().enumerate() {
        line.push_str(if i == 0 { " Its calls: " } else { "; " });
        line.push_str(call.label());
        line.push_str(" — ");
        line.push_str(&arrived(arrival));
    }
    line
}

/// How a row arrived, in words.
fn arrived(arrival: &Arrival) -> String {
    match arrival {
        Arrival::Direct => "direct".to_owned(),
        Arrival::Replayed {
            machine,
            region,
            after_ms,
        } => match after_ms {
            Some(ms) => format!("replayed from {machine} in {region}, {ms} ms in the replay"),
            None => format!("replayed from {machine} in {region}"),
        },
        Arrival::ReplayCache => "replay cache hit".to_owned(),
    }
}

fn arrival_class(arrival: &Arrival) -> &'static str {
    match arrival {
        Arrival::Direct => "direct",
        Arrival::Replayed { .. } => "replayed",
        Arrival::ReplayCache => "cache-hit",
    }
}

/// The panel. `announced` is the summary line as a screen reader should hear it (the page
/// updates it at most once a second); the table follows `rows` as they come.
#[component]
pub fn RoutingPanel(rows: RwSignal<Vec<RouteView>>, announced: RwSignal<String>) -> impl IntoView {
    view! {
        <details class="routes">
            <summary>"How your requests got here"</summary>
            <p class="routes-summary" role="status" aria-live="polite">{move || announced.get()}</p>
            // Scrolls sideways on a phone: a focusable region, so a keyboard can scroll it.
            <div class="routes-scroll" tabindex="0" role="region" aria-label="Your requests">
                <table>
                    <caption class="visually-hidden">"Your requests, in the order they reached this Machine"</caption>
                    <thead>
                        <tr>
                            <th scope="col">"#"</th>
                            <th scope="col">"Request"</th>
                            <th scope="col">"How it got here"</th>
                            <th scope="col">"Answered in"</th>
                        </tr>
                    </thead>
                    // At most 64 rows, redrawn whole when one comes (a keyed <For> would add
                    // its diffing to the bundle).
                    <tbody>
                        {move || {
                            rows.read()
                                .iter()
                                .map(|row| {
                                    view! {
                                        <tr class=arrival_class(&row.arrival)>
                                            <td>{row.seq}</td>
                                            <td>{row.what.label()} " " <code>{row.path.clone()}</code></td>
                                            <td class="arrival">{arrived(&row.arrival)}</td>
                                            <td>{format!("{} ms", super::fixed(f64::from(row.answer_tenths_ms) / 10.0, 1))}</td>
                                        </tr>
                                    }
                                })
                                .collect_view()
                        }}
                    </tbody>
                </table>
            </div>
        </details>
    }
}

/// The record of the Machine's life the page keeps after it is gone, to copy: where it ran,
/// its launch from the click to its page's first byte (when the launcher's page handed the
/// timeline over), what it served and when it ended.
pub fn receipt(
    id: &str,
    place: &str,
    boot: Option<&BootTimeline>,
    totals: RouteTotals,
    rows: &[RouteView],
    ended_at: &str,
) -> String {
    let mut boot_lines = String::new();
    if let Some(boot) = boot.filter(|b| !b.0.is_empty()) {
        boot_lines.push_str("From the click:\n");
        for (step, ms) in &boot.0 {
            boot_lines.push_str(&format!(
                "  {} s  {}\n",
                super::fixed(f64::from(*ms) / 1000.0, 3),
                step.label()
            ));
        }
    }
    let first_answer = rows
        .iter()
        .find(|r| r.seq == 1)
        .map(|r| r.answer_tenths_ms)
        .map(|t| format!("{} ms", super::fixed(f64::from(t) / 10.0, 1)))
        .unwrap_or_else(|| "-".to_owned());
    format!(
        "Fly Machine {id}{place}\n{boot_lines}Requests served: {} ({} replayed, {} by the \
         replay cache)\nIts first answer took: {first_answer}\nDestroyed: {ended_at}\n",
        totals.served, totals.replayed, totals.cache_hits
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::protocol::RequestKind;

    fn row(seq: u32, arrival: Arrival) -> RouteView {
        RouteView {
            seq,
            what: RequestKind::File,
            path: "/x".into(),
            arrival,
            answer_tenths_ms: 15,
        }
    }

    fn replayed(region: &str) -> Arrival {
        Arrival::Replayed {
            machine: "0123456789abcd".into(),
            region: region.into(),
            after_ms: Some(3),
        }
    }

    #[test]
    fn the_summary_counts_replays_by_region_and_the_cache() {
        let mut rows: Vec<RouteView> = (1..=7).map(|i| row(i, replayed("ord"))).collect();
        rows.push(row(8, Arrival::ReplayCache));
        rows.push(row(9, Arrival::ReplayCache));
        let totals = RouteTotals {
            served: 9,
            replayed: 7,
            cache_hits: 2,
        };
        assert_eq!(
            summary(&rows, totals, Some("syd")),
            "7 of 9 requests were replayed from ord to syd; the replay cache answered 2"
        );
        let direct = [row(1, Arrival::Direct), row(2, Arrival::Direct)];
        let totals = RouteTotals {
            served: 2,
            replayed: 0,
            cache_hits: 0,
        };
        assert_eq!(
            summary(&direct, totals, Some("syd")),
            "2 requests came straight to this Machine."
        );
        assert_eq!(
            summary(&[], RouteTotals::default(), None),
            "No request recorded yet."
        );
        let one = [
            row(1, replayed("ams")),
            row(2, replayed("ord")),
            row(3, replayed("ord")),
        ];
        let totals = RouteTotals {
            served: 3,
            replayed: 3,
            cache_hits: 0,
        };
        assert_eq!(
            summary(&one, totals, None),
            "3 of 3 requests were replayed from ord, ams"
        );
    }

    #[test]
    fn a_launch_route_names_its_launcher_and_how_each_call_reached_it() {
        use crate::app::protocol::LaunchCall;
        use crate::fly::{MachineId, RegionCode};
        let mut route = LaunchRoute {
            launcher: MachineId::parse("0123456789abcd").unwrap(),
            region: Some(RegionCode::parse("ams").unwrap()),
            calls: vec![
                (LaunchCall::Start, Arrival::Direct),
                (LaunchCall::Progress, replayed("ord")),
                (LaunchCall::Handover, Arrival::ReplayCache),
            ],
        };
        assert_eq!(
            launch_route(&route),
            "Run by launcher Machine 0123456789abcd in Amsterdam (ams). Its calls: start — \
             direct; progress — replayed from 0123456789abcd in ord, 3 ms in the replay; \
             hand-over — replay cache hit"
        );
        route.region = None;
        route.calls.clear();
        assert_eq!(
            launch_route(&route),
            "Run by launcher Machine 0123456789abcd."
        );
    }

    #[test]
    fn the_receipt_names_the_machine_its_requests_and_its_end() {
        let rows = [row(1, replayed("ord")), row(2, Arrival::ReplayCache)];
        let totals = RouteTotals {
            served: 2,
            replayed: 1,
            cache_hits: 1,
        };
        let boot = BootTimeline::parse("q0.c1234.s1900.v1950.h1971.b2004").unwrap();
        let text = receipt(
            "0123456789abcd",
            " in Sydney (syd)",
            Some(&boot),
            totals,
            &rows,
            "2026-12-04T10:00:00Z",
        );
        assert!(text.starts_with(
            "Fly Machine 0123456789abcd in Sydney (syd)\nFrom the click:\n  0.000 s  launch \
             requested\n  1.234 s  Machine created\n  1.900 s  Machine started\n  1.950 s  \
             Machine serving\n  1.971 s  hand-over posted\n  2.004 s  its page's first byte\n"
        ));
        assert!(text.contains("Requests served: 2 (1 replayed, 1 by the replay cache)"));
        assert!(text.contains("Its first answer took: 1.5 ms"));
        assert!(text.contains("Destroyed: 2026-12-04T10:00:00Z"));
        let without = receipt("0123456789abcd", "", None, totals, &rows, "-");
        assert!(without.starts_with("Fly Machine 0123456789abcd\nRequests served: 2"));
    }
}
