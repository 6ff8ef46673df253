//! The page a visitor sees on their own Machine, and the server functions behind it.
//!
//! The server drives the Machine's timeline (see `server::lifecycle`); the page follows it over
//! one WebSocket server function that also measures the round trip every second, and opens it
//! again when a network blip closes it. Everything the
//! page shows after the end ("This Machine is no more", the way back) is already in the hydrated
//! page: it needs nothing from a Machine that no longer exists.

#[cfg(feature = "ssr")]
use super::error::reply;
use super::{
    error::AppError,
    protocol::{
        BootTimeline, ClientMessage, MachineInfo, PhaseView, RouteTotals, RouteView, ServerMessage,
    },
    routing_panel::{self, RoutingPanel},
    useless_machine::UselessMachine,
};
use leptos::either::Either;
use leptos::prelude::*;
use leptos::server_fn::{
    codec::{Postcard, PostcardEncoding},
    BoxedStream, Websocket,
};

#[server(endpoint = "machine", input = Postcard, output = Postcard)]
pub async fn about_machine() -> Result<MachineInfo, AppError> {
    use crate::server::{ephemeral::current, request_headers};
    reply(
        async {
            let machine = current()?;
            let edge = request_headers()
                .await?
                .get("fly-region")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| crate::fly::RegionCode::parse(v).ok());
            Ok(machine.info(edge))
        }
        .await,
    )
}

#[server(endpoint = "switch-off", input = Postcard, output = Postcard)]
pub async fn switch_off() -> Result<(), AppError> {
    reply(crate::server::ephemeral::current().map(|m| m.switch_off()))
}

#[server(protocol = Websocket<PostcardEncoding, PostcardEncoding>, endpoint = "channel")]
pub async fn machine_channel(
    input: BoxedStream<ClientMessage, AppError>,
) -> Result<BoxedStream<ServerMessage, AppError>, AppError> {
    reply(crate::server::ephemeral::current().map(|m| m.channel(input)))
}

#[component]
pub fn MachinePage() -> impl IntoView {
    let info = Resource::new(|| (), |_| about_machine());
    view! {
        <Suspense fallback=|| view! { <p>"Reaching your Machine…"</p> }>
            {move || Suspend::new(async move {
                match info.await {
                    Ok(info) => {
                        let data = super::island_data::encode(&info);
                        provide_context(info);
                        view! { <div class="machine" data-machine=data><MachineView/></div> }.into_any()
                    }
                    Err(error) => view! {
                        <h1>"Your Fly Machine"</h1>
                        <p role="alert">{error.to_string()}</p>
                    }
                    .into_any(),
                }
            })}
        </Suspense>
    }
}

/// The live part of the page: an island, the only part of it the browser hydrates. Not in
/// the launcher's bundle, whose pages never show it.
#[cfg_attr(not(feature = "launcher-bundle"), island)]
#[cfg_attr(feature = "launcher-bundle", component)]
fn MachineView() -> impl IntoView {
    // The page always writes it; a page without it shows a Machine without a name.
    let info = super::island_data::read::<MachineInfo>("machine").unwrap_or_default();
    let phase = RwSignal::new(info.phase);
    let rtt_ms = RwSignal::new(None::<f64>);
    // The channel closed without the Machine saying it ended, and the page is finding out why.
    let reconnecting = RwSignal::new(false);
    // The Machine was found gone without having said it ended: it crashed or vanished.
    let lost = RwSignal::new(false);
    let seconds_left = RwSignal::new(match info.phase {
        PhaseView::Showing { seconds_left } => Some(seconds_left),
        _ => None,
    });
    let ended = Memo::new(move |_| matches!(phase.get(), PhaseView::Ended { .. }) || lost.get());
    // The routing panel's rows and counts, as the live channel brings them; the summary line
    // a screen reader hears, refreshed by the page's one-second tick.
    let routes = RwSignal::new(Vec::<RouteView>::new());
    let totals = RwSignal::new(RouteTotals::default());
    let here = info.region.clone();
    let summary = move || routing_panel::summary(&routes.read(), totals.get(), here.as_deref());
    let announced = RwSignal::new(summary());
    // When the page learnt that its Machine was gone (the receipt says it).
    let ended_at = RwSignal::new(String::new());
    // The launch's timeline, from the click to this page's first byte, for the receipt.
    let boot = RwSignal::new(None::<BootTimeline>);
    #[cfg(feature = "hydrate")]
    boot.set(live::boot_timeline(info.boot.as_deref()));

    #[cfg(feature = "hydrate")]
    live::connect(live::Live {
        phase,
        rtt_ms,
        seconds_left,
        reconnecting,
        lost,
        routes,
        totals,
        refresh_summary: Box::new({
            let summary = summary.clone();
            move || {
                let line = summary();
                if announced.with_untracked(|a| *a != line) {
                    announced.set(line);
                }
            }
        }),
    });
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        if ended.get() && ended_at.get_untracked().is_empty() {
            ended_at.set(String::from(web_sys::js_sys::Date::new_0().to_iso_string()));
        }
    });
    let hydrated = super::mark_hydrated_after_render();

    let switching = Action::new_local(|_: &()| async {
        #[cfg(feature = "hydrate")]
        {
            use leptos::server_fn::ServerFn;
            let _: Result<(), AppError> =
                crate::app::wire::call(SwitchOff::PATH, SwitchOff {}).await;
        }
    });
    // Once: `pending()` makes a new memo on every call.
    let switching_off = switching.pending();
    let switch_state = Signal::derive(move || match phase.get() {
        _ if lost.get() => super::useless_machine::SwitchState::Off,
        PhaseView::AwaitingOwner | PhaseView::Showing { .. } => {
            super::useless_machine::SwitchState::On
        }
        PhaseView::SwitchingOff { .. } => super::useless_machine::SwitchState::Flipping,
        PhaseView::Ended { .. } => super::useless_machine::SwitchState::Off,
    });

    let where_text: String = match (&info.city, &info.region) {
        (Some(city), Some(code)) if city != code => format!(" in {city} ({code})"),
        (Some(city), _) => format!(" in {city}"),
        _ => String::new(),
    };
    let distance = match (info.distance_km, &info.edge_city) {
        (Some(km), Some(edge)) => Some(format!("{km} km from your edge region, {edge}.")),
        (None, Some(edge)) => Some(format!("Your edge region is {edge}.")),
        _ => None,
    };
    // At the end the switch-off button goes away; if it had the focus, the focus goes to the
    // news that replaced it rather than back to the top of the page.
    let no_more = NodeRef::<leptos::html::H2>::new();
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        if let (true, Some(heading)) = (ended.get(), no_more.get()) {
            let lost = document()
                .active_element()
                .is_none_or(|e| e.tag_name().eq_ignore_ascii_case("body"));
            if lost {
                let _ = heading.focus();
            }
        }
    });
    let launcher = info.launcher_url.clone().unwrap_or_default();
    let back = format!("{launcher}/");

    view! {
        <h1>"This is Fly Machine " <code class="machine-id">{info.id.clone()}</code> {where_text.clone()}</h1>
        {distance.map(|d| view! { <p class="distance">{d}</p> })}
        <UselessMachine state=switch_state/>
        // An `Either`, not a `<Show>`: Show's type-erased views cost the bundle ~10 KB.
        {move || {
            if ended.get() {
                let (id, place, back) = (info.id.clone(), where_text.clone(), back.clone());
                Either::Left(view! {
                    <section class="no-more" aria-live="polite">
                        <h2 node_ref=no_more tabindex="-1">"This Machine is no more"</h2>
                        <p>
                            {move || if lost.get() {
                                "It stopped unexpectedly and was destroyed: your Machine is gone."
                            } else {
                                "It switched itself off and was destroyed, for good."
                            }}
                        </p>
                        <p><a href=back class="back">"Back to the launcher"</a></p>
                        <h3>"Its receipt"</h3>
                        <pre class="receipt" tabindex="0" aria-label="The receipt of your Machine's life">
                            {
                                            move || {
                                    routing_panel::receipt(
                                        &id,
                                        &place,
                                        boot.read().as_ref(),
                                        totals.get(),
                                        &routes.read(),
                                        &ended_at.get(),
                                    )
                                }
                            }
                        </pre>
                    </section>
                })
            } else {
                Either::Right(
                    view! {
                        <dl class="vitals">
                            <dt>"Round trip to this Machine"</dt>
                            <dd class="rtt" aria-live="off">
                                {move || match rtt_ms.get() {
                                    _ if reconnecting.get() => "reconnecting…".to_owned(),
                                    Some(ms) => format!("{} ms", super::fixed(ms, 1)),
                                    None => "measuring…".to_owned(),
                                }}
                            </dd>
                            <dt>"Switches itself off in"</dt>
                            <dd class="countdown">
                                {move || match (phase.get(), seconds_left.get()) {
                                    (PhaseView::SwitchingOff { .. }, _) => "now".to_owned(),
                                    (_, Some(s)) => format!("{s} s"),
                                    _ => "…".to_owned(),
                                }}
                            </dd>
                        </dl>
                        <p class="link-state" role="status">
                            {move || {
                                if reconnecting.get() {
                                    "Lost touch with your Machine for a moment: reconnecting…"
                                } else {
                                    ""
                                }
                            }}
                        </p>
                        <button
                            type="button"
                            class="switch-off"
                            disabled=move || {
                                !hydrated.get()
                                    || !matches!(phase.get(), PhaseView::Showing { .. })
                                    || switching_off.get()
                            }
                            on:click=move |_| {
                                switching.dispatch(());
                            }
                        >
                            "Switch it off now"
                        </button>
                    }
                )
            }
        }}
        <RoutingPanel rows=routes announced/>
    }
}

/// The browser side of the live channel: pings every second, follows the phase, counts down.
/// A channel that closes without the Machine having said it ended is a blip until shown
/// otherwise: the page asks the Machine (`about_machine`) after a jittered, growing pause and
/// opens the channel again; only the Machine's own timeline, or the 410 of a Machine found
/// gone, ends the page.
#[cfg(feature = "hydrate")]
mod live {
    use super::*;
    use crate::app::wire::{call, Channel};
    use futures::StreamExt;
    use leptos::server_fn::ServerFn;
    use std::{cell::RefCell, rc::Rc, time::Duration};

    fn now_ms() -> f64 {
        window().performance().map(|p| p.now()).unwrap_or_default()
    }

    /// The signals the live channel drives.
    pub struct Live {
        pub phase: RwSignal<PhaseView>,
        pub rtt_ms: RwSignal<Option<f64>>,
        pub seconds_left: RwSignal<Option<u64>>,
        pub reconnecting: RwSignal<bool>,
        pub lost: RwSignal<bool>,
        pub routes: RwSignal<Vec<RouteView>>,
        pub totals: RwSignal<RouteTotals>,
        /// Called on each tick: brings the routing panel's spoken summary up to date.
        pub refresh_summary: Box<dyn Fn()>,
    }

    /// The launch's timeline that the hand-over carried to the Machine ([`BootTimeline`]), with
    /// this page's first byte after the hand-over.
    pub fn boot_timeline(text: Option<&str>) -> Option<BootTimeline> {
        use crate::app::protocol::BootStep;
        let mut timeline = BootTimeline::parse(text?)?;
        let handed_over = timeline
            .0
            .iter()
            .find(|(step, _)| *step == BootStep::HandedOver)?
            .1;
        // The page's navigation began with the hand-over's form submission.
        let timing = window().performance()?.timing();
        let first_byte = (timing.response_start() - timing.navigation_start()).max(0.0) as u32;
        if timeline.0.len() < BootTimeline::MAX {
            timeline
                .0
                .push((BootStep::FirstByte, handed_over.saturating_add(first_byte)));
        }
        Some(timeline)
    }

    pub fn connect(live: Live) {
        let Live {
            phase,
            rtt_ms,
            seconds_left,
            reconnecting,
            lost,
            routes,
            totals,
            refresh_summary,
        } = live;
        // The open channel, if one is open.
        let sender: Rc<RefCell<Option<Channel>>> = Rc::default();
        // Pings in flight (sequence number, when sent): a handful at most, so a list.
        let sent: Rc<RefCell<Vec<(u32, f64)>>> = Rc::default();
        let countdown_to = Rc::new(RefCell::new(None::<f64>));
        let seq = Rc::new(std::cell::Cell::new(0u32));
        let ping = {
            let (sender, sent, seq) = (sender.clone(), sent.clone(), seq.clone());
            move || {
                if let Some(channel) = sender.borrow().as_ref() {
                    seq.set(seq.get().wrapping_add(1));
                    sent.borrow_mut().push((seq.get(), now_ms()));
                    channel.send(&ClientMessage::Ping { seq: seq.get() });
                }
            }
        };

        let ticker = {
            let (ping, countdown_to) = (ping.clone(), countdown_to.clone());
            set_interval_with_handle(
                move || {
                    ping();
                    refresh_summary();
                    if let Some(at) = *countdown_to.borrow() {
                        let left = ((at - now_ms()) / 1000.0).ceil().max(0.0) as u64;
                        seconds_left.set(Some(left));
                    }
                },
                Duration::from_secs(1),
            )
            .ok()
        };

        leptos::task::spawn_local(async move {
            let mut failures = 0;
            'channel: loop {
                sent.borrow_mut().clear();
                let opened = Channel::open::<ServerMessage>(MachineChannel::PATH);
                if let Some((channel, mut messages)) = opened {
                    *sender.borrow_mut() = Some(channel);
                    // The first ping goes out at once, so the round trip shows without waiting.
                    ping();
                    while let Some(Ok(message)) = messages.next().await {
                        failures = 0;
                        reconnecting.set(false);
                        match message {
                            ServerMessage::Pong { seq } => {
                                let mut sent = sent.borrow_mut();
                                if let Some(i) = sent.iter().position(|(s, _)| *s == seq) {
                                    let (_, at) = sent.swap_remove(i);
                                    rtt_ms.set(Some(now_ms() - at));
                                }
                                // Pongs come in order: a ping older than this one lost its pong.
                                sent.retain(|(s, _)| s.wrapping_sub(seq) < 1 << 31);
                            }
                            ServerMessage::Routes {
                                fresh,
                                rows,
                                totals: counts,
                            } => {
                                routes.update(|kept| {
                                    if fresh {
                                        kept.clear();
                                    }
                                    kept.extend(rows);
                                });
                                totals.set(counts);
                            }
                            ServerMessage::Phase(p) => {
                                if let PhaseView::Showing { seconds_left: s } = p {
                                    *countdown_to.borrow_mut() = Some(now_ms() + s as f64 * 1000.0);
                                    seconds_left.set(Some(s));
                                }
                                let ended = matches!(p, PhaseView::Ended { .. });
                                phase.set(p);
                                // Stop reading at the announced end: the close that follows
                                // would only be logged as an error by the WebSocket client.
                                if ended {
                                    break 'channel;
                                }
                            }
                        }
                    }
                }
                *sender.borrow_mut() = None;
                // A close right after "switching off" is the end the Machine announced.
                if let PhaseView::SwitchingOff { reason } = phase.get_untracked() {
                    phase.set(PhaseView::Ended { reason });
                    break;
                }
                reconnecting.set(true);
                // Until the Machine answers again, nothing is known of it.
                loop {
                    failures += 1;
                    let jitter = (now_ms() / 7.0).fract();
                    crate::app::pause(crate::app::reconnect_delay(failures, jitter)).await;
                    match call::<_, MachineInfo>(AboutMachine::PATH, AboutMachine {}).await {
                        Ok(info) if matches!(info.phase, PhaseView::Ended { .. }) => {
                            phase.set(info.phase);
                            break 'channel;
                        }
                        Ok(_) => continue 'channel,
                        Err(AppError::MachineGone) => {
                            lost.set(true);
                            break 'channel;
                        }
                        Err(_) => {}
                    }
                }
            }
            reconnecting.set(false);
            *sender.borrow_mut() = None;
            if let Some(ticker) = ticker {
                ticker.clear();
            }
        });
    }
}
