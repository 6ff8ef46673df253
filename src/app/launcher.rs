//! The launcher's pages: the button that gets a visitor their own Machine, the launch's live
//! progress, the live map of Machines, and the "gone" page.

#[cfg(feature = "ssr")]
use super::error::reply;
use super::{
    error::AppError,
    map::RegionMap,
    protocol::{
        AliveMachine, FlyReach, Handover, LaunchEnd, LaunchProgress, LaunchTicket, LauncherInfo,
        MapView,
    },
    Explainer,
};
use leptos::prelude::*;
use leptos::server_fn::{
    codec::{Postcard, PostcardEncoding},
    BoxedStream, Websocket,
};

#[server(endpoint = "launcher", input = Postcard, output = Postcard)]
pub async fn about_launcher() -> Result<LauncherInfo, AppError> {
    use crate::server::{launcher::current, request_headers};
    reply(async { Ok(current()?.info(&request_headers().await?)) }.await)
}

/// Starts a launch in `region` (a code from the map), or in the region nearest the visitor.
#[server(endpoint = "launch", input = Postcard, output = Postcard)]
pub async fn start_launch(region: Option<String>) -> Result<LaunchTicket, AppError> {
    use crate::server::{launcher::current, request_headers};
    reply(
        async {
            current()?
                .begin_launch(&request_headers().await?, region.as_deref())
                .await
        }
        .await,
    )
}

#[server(protocol = Websocket<PostcardEncoding, PostcardEncoding>, endpoint = "launch-progress")]
pub async fn watch_launch(
    input: BoxedStream<String, AppError>,
) -> Result<BoxedStream<LaunchProgress, AppError>, AppError> {
    use crate::server::{launcher::current, request_headers};
    reply(
        async {
            let headers = request_headers().await?;
            Ok(current()?.watch_launch(headers, input))
        }
        .await,
    )
}

/// Answers when the launch ends: the page asks as soon as the launch is accepted, so the
/// hand-over leaves the moment the Machine serves (see `Launcher::take_handover`).
#[server(endpoint = "handover", input = Postcard, output = Postcard)]
pub async fn take_handover(launch: String) -> Result<LaunchEnd, AppError> {
    use crate::server::{launcher::current, request_headers};
    reply(
        async {
            current()?
                .take_handover(&launch, &request_headers().await?)
                .await
        }
        .await,
    )
}

#[server(protocol = Websocket<PostcardEncoding, PostcardEncoding>, endpoint = "machines")]
pub async fn watch_machines(
    input: BoxedStream<(), AppError>,
) -> Result<BoxedStream<MapView, AppError>, AppError> {
    reply(crate::server::launcher::current().map(|l| l.watch_machines(input)))
}

/// The launcher's home page: the frame, rendered on the server, around the [`LaunchPanel`] island.
#[component]
pub fn LauncherPage() -> impl IntoView {
    let info = Resource::new(|| (), |_| about_launcher());
    view! {
        <h1>"flyby"</h1>
        <p class="lede">
            "Push the button and a brand-new Fly Machine starts in the region nearest to you. "
            "It is yours alone for a minute, then it switches itself off and is gone for good."
        </p>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                let info = info.await.ok();
                let data = super::island_data::encode(&info);
                provide_context(info);
                view! { <div class="launch-panel" data-launcher=data><LaunchPanel/></div> }
            })}
        </Suspense>
    }
}

/// Everything on the launcher's page that moves: the live map, the button, the launch's
/// progress and the hand-over. `info` is `None` when the launcher could not describe itself;
/// the button still works then. Not in the Machines' bundle, whose pages never show it.
#[cfg_attr(not(feature = "machine-bundle"), island)]
#[cfg_attr(feature = "machine-bundle", component)]
fn LaunchPanel() -> impl IntoView {
    let info = super::island_data::read::<Option<LauncherInfo>>("launcher").flatten();
    // The live map's two parts, each a signal of its own: the map reads the Machines many
    // times a render, the button whether Fly answers.
    let alive = RwSignal::new(Vec::<AliveMachine>::new());
    let fly = RwSignal::new(MapView::default().fly);
    let progress = RwSignal::new(None::<LaunchProgress>);
    let handover = RwSignal::new(None::<Handover>);
    let elapsed_ms = RwSignal::new(0u64);
    let error = RwSignal::new(None::<AppError>);
    // The Machine this browser was last handed: only its owner's page knows it, so the map
    // marks it for them while the server says nothing of whose any Machine is.
    let yours = RwSignal::new(None::<crate::fly::MachineId>);
    let running = Memo::new(move |_| {
        progress.with(|p| p.as_ref().is_some_and(|p| p.outcome.is_none()))
            || handover.with(Option::is_some)
    });

    #[cfg(feature = "hydrate")]
    live::follow_map(alive, fly);
    // After hydration: the server rendered the map without it.
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| yours.set(live::remembered_machine()));
    let hydrated = super::mark_hydrated_after_render();

    let form = NodeRef::<leptos::html::Form>::new();
    let secret_field = NodeRef::<leptos::html::Input>::new();
    let boot_field = NodeRef::<leptos::html::Input>::new();
    let launch = Action::new_local(move |region: &Option<crate::fly::RegionCode>| {
        let region = region.map(|r| r.to_string());
        #[cfg(feature = "hydrate")]
        let clicked = live::now_ms();
        // The launch's request leaves before anything of the page moves: the server starts
        // the launch while the page draws its progress (the click's critical path).
        let begun = begin(region);
        async move {
            error.set(None);
            handover.set(None);
            progress.set(Some(LaunchProgress::default()));
            #[cfg(feature = "hydrate")]
            let clock = live::start_clock(elapsed_ms);
            // Off to the Machine the moment the hand-over arrives, before anything else of the
            // page moves: what it would show is never seen (and costs the visitor its time).
            #[cfg(feature = "hydrate")]
            let go = move |h: &Handover, steps: &[super::protocol::StepView]| {
                let posted = (live::now_ms() - clicked).max(0.0) as u32;
                let boot = super::protocol::BootTimeline::of_launch(steps, posted).encode();
                live::hand_over(form, [secret_field, boot_field], h, &boot);
            };
            #[cfg(not(feature = "hydrate"))]
            let go = |_: &Handover, _: &[super::protocol::StepView]| {};
            let outcome = match begun.await {
                Ok(ticket) => run(ticket, progress, go).await,
                Err(e) => Err(e),
            };
            #[cfg(feature = "hydrate")]
            drop(clock);
            match outcome {
                Ok(h) => {
                    #[cfg(feature = "hydrate")]
                    live::remember_machine(h.machine);
                    yours.set(Some(h.machine));
                    handover.set(Some(h));
                }
                Err(e) => {
                    progress.update(|p| {
                        if let Some(p) = p {
                            p.outcome = Some(Err(e.clone()));
                        }
                    });
                    error.set(Some(e));
                }
            }
        }
    });
    // Whether the progress section is there: once, from the first launch on.
    let shown = Memo::new(move |_| progress.with(Option::is_some));
    // Memos, made once: every region of the map reads them, and `pending()` makes a new
    // memo on every call (57 of them a render, a quarter of the page's server time).
    let launching = launch.pending();
    let cannot_launch = Memo::new(move |_| {
        !hydrated.get() || running.get() || launching.get() || fly.get() != FlyReach::Reachable
    });

    let map = info.map(|info| {
        let edge = info
            .edge_region
            .map_or_else(|| "unknown".to_owned(), |r| r.city().to_owned());
        view! {
            <p class="edge">"Your edge region is " <strong>{edge}</strong> "."</p>
            <RegionMap
                alive=alive.read_only()
                edge=info.edge_region
                distances_km=info.distances_km
                yours=yours.read_only()
                cap=info.cap
                disabled=cannot_launch.into()
                pick=Callback::new(move |region| {
                    launch.dispatch(Some(region));
                })
            />
        }
    });

    // The button first, then the map, whose regions are controls too: the keyboard reaches
    // the main action before the eighteen regions.
    view! {
        <button
            type="button"
            class="launch"
            disabled=move || cannot_launch.get()
            on:click=move |_| {
                launch.dispatch(None);
            }
        >
            "Launch my Machine"
        </button>
        {map}
        // An `Option`, not a `<Show>`: Show's type-erased views cost the bundle ~10 KB.
        {move || shown.get().then(|| view! {
            <section class="progress" aria-live="polite" aria-label="Launch progress">
                // A timer is not announced on every tick (role=timer is not live by itself).
                <p class="timer" role="timer" aria-live="off">
                    {move || format!("{} s", super::fixed(elapsed_ms.get() as f64 / 1000.0, 1))}
                </p>
                // At most six steps: redrawn whole on each change (a keyed <For> would add its
                // diffing to the WASM bundle for nothing).
                <ol class="steps">
                    {move || {
                        progress
                            .get()
                            .map(|p| p.steps)
                            .unwrap_or_default()
                            .into_iter()
                            .map(|s| {
                                view! {
                                    <li class="step">
                                        <span class="label">{s.step.label()}</span>
                                        <span class="at">{format!("{} s", super::fixed(s.at_ms as f64 / 1000.0, 2))}</span>
                                    </li>
                                }
                            })
                            .collect_view()
                    }}
                </ol>
                {move || {
                    progress
                        .with(|p| p.as_ref()?.route.as_ref().map(super::routing_panel::launch_route))
                        .map(|line| view! { <p class="launch-route">{line}</p> })
                }}
            </section>
        })}
        {move || {
            let state = match fly.get() {
                FlyReach::Reachable => return None,
                FlyReach::Unreachable { for_secs } => format!(
                    "Can't reach Fly right now: launches are paused until it answers again. The map is {for_secs} s old."
                ),
                FlyReach::TokenRefused => {
                    "This launcher can't create Machines: Fly refuses its credentials. Its operator has been told.".to_owned()
                }
            };
            Some(view! { <p class="fly-state" role="status">{state}</p> })
        }}
        {move || error.get().map(|e| view! { <p class="error" role="alert">{e.to_string()}</p> })}
        // Filled in and submitted by the page when the hand-over arrives (`live::hand_over`).
        <form node_ref=form method="post" class="handover">
            <input node_ref=secret_field type="hidden" name="secret"/>
            <input node_ref=boot_field type="hidden" name="boot"/>
        </form>
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

/// Starts a launch (the button, or a region of the map): its request leaves now.
fn begin(
    region: Option<String>,
) -> impl std::future::Future<Output = Result<LaunchTicket, AppError>> {
    #[cfg(feature = "hydrate")]
    {
        use leptos::server_fn::ServerFn;
        super::wire::call(StartLaunch::PATH, StartLaunch { region })
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = region;
        std::future::ready(Err(AppError::Internal))
    }
}

/// Follows a launch to its end and takes the hand-over. Both at once: the live channel shows
/// the steps, and the hand-over, asked for now, answers the moment the Machine serves, without
/// waiting for the channel's handshake or its last message (BENCHMARKS.md, row 7). A
/// hand-over request cut on its way is made again: the launcher answers its visitor as often
/// as they ask.
async fn run(
    ticket: LaunchTicket,
    progress: RwSignal<Option<LaunchProgress>>,
    go: impl FnOnce(&Handover, &[super::protocol::StepView]),
) -> Result<Handover, AppError> {
    #[cfg(feature = "hydrate")]
    {
        use super::protocol::{Step, StepView};
        use super::wire::call;
        use futures::future::{select, Either};
        use leptos::server_fn::ServerFn;
        let mut follow = Some(Box::pin(live::follow_launch(ticket.id.clone(), progress)));
        let mut cuts = 0;
        let end = loop {
            let asked = Box::pin(call::<_, LaunchEnd>(
                TakeHandover::PATH,
                TakeHandover {
                    launch: ticket.id.clone(),
                },
            ));
            let answer = match follow.take() {
                Some(following) => match select(following, asked).await {
                    Either::Left((_, asked)) => asked.await,
                    Either::Right((answer, following)) => {
                        follow = Some(following);
                        answer
                    }
                },
                None => asked.await,
            };
            match answer {
                // The request was cut on its way (a proxy's idle timeout on the slowest
                // launch): the launcher answers its visitor again, at once if the launch ended.
                Err(AppError::Unreachable) if cuts < 2 => cuts += 1,
                answer => break answer,
            }
        }?;
        // Closes the live channel.
        drop(follow);
        let (steps, route, handover) = match end {
            LaunchEnd::HandedOver {
                steps,
                route,
                handover,
            } => (steps, route, handover),
            LaunchEnd::Failed(e) => return Err(e),
        };
        go(&handover, &steps);
        progress.update(|p| {
            if let Some(p) = p {
                let at_ms = steps.last().map(|s| s.at_ms).unwrap_or_default();
                p.steps = steps;
                p.route = route;
                p.steps.push(StepView {
                    step: Step::SendingYou,
                    at_ms,
                });
            }
        });
        Ok(handover)
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = (ticket, progress, go);
        Err(AppError::Internal)
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

/// The browser side of the launcher's live channels.
#[cfg(feature = "hydrate")]
mod live {
    use super::*;
    use crate::app::wire::Channel;
    use futures::StreamExt;
    use leptos::server_fn::ServerFn;
    use std::time::Duration;

    pub fn now_ms() -> f64 {
        window().performance().map(|p| p.now()).unwrap_or_default()
    }

    /// Keeps `map` in step with the launcher's view; when the channel drops (a network blip,
    /// a launcher restarted), connects again after a jittered, growing pause.
    pub fn follow_map(alive: RwSignal<Vec<AliveMachine>>, fly: RwSignal<FlyReach>) {
        leptos::task::spawn_local(async move {
            let mut failures = 0;
            loop {
                if let Some((channel, mut snapshots)) =
                    Channel::open::<MapView>(WatchMachines::PATH)
                {
                    // The channel's one message to the launcher: "watching".
                    channel.send(&());
                    while let Some(Ok(view)) = snapshots.next().await {
                        failures = 0;
                        alive.set(view.machines);
                        fly.set(view.fly);
                    }
                }
                failures += 1;
                let jitter = (now_ms() / 7.0).fract();
                super::super::pause(super::super::reconnect_delay(failures, jitter)).await;
            }
        });
    }

    /// Sends the browser to its Machine: the hand-over form gets its target, the secret and the
    /// launch's timeline (for the receipt), and is submitted.
    pub fn hand_over(
        form: NodeRef<leptos::html::Form>,
        [secret, timeline]: [NodeRef<leptos::html::Input>; 2],
        handover: &Handover,
        boot: &str,
    ) {
        if let (Some(form), Some(secret), Some(timeline)) = (
            form.get_untracked(),
            secret.get_untracked(),
            timeline.get_untracked(),
        ) {
            form.set_action(&handover.claim_url);
            secret.set_value(&handover.secret);
            timeline.set_value(boot);
            let _ = form.submit();
        }
    }

    /// Where the page keeps the Machine it was handed. Not a secret (a Machine id is in its
    /// URL); the owner secret never leaves the hand-over's form.
    const YOURS_KEY: &str = "flyby-machine";

    pub fn remember_machine(machine: crate::fly::MachineId) {
        if let Ok(Some(storage)) = window().local_storage() {
            let _ = storage.set_item(YOURS_KEY, machine.as_str());
        }
    }

    pub fn remembered_machine() -> Option<crate::fly::MachineId> {
        let storage = window().local_storage().ok()??;
        crate::fly::MachineId::parse(&storage.get_item(YOURS_KEY).ok()??).ok()
    }

    /// Counts up `elapsed_ms` until the returned guard is dropped.
    pub fn start_clock(elapsed_ms: RwSignal<u64>) -> impl Drop {
        let start = now_ms();
        elapsed_ms.set(0);
        struct Clock(Option<IntervalHandle>);
        impl Drop for Clock {
            fn drop(&mut self) {
                if let Some(h) = self.0.take() {
                    h.clear();
                }
            }
        }
        Clock(
            set_interval_with_handle(
                move || elapsed_ms.set((now_ms() - start).max(0.0) as u64),
                Duration::from_millis(100),
            )
            .ok(),
        )
    }

    /// Streams a launch's progress into `progress` until it ends or the channel fails (the
    /// page learns the outcome from the hand-over, not from here).
    pub async fn follow_launch(id: String, progress: RwSignal<Option<LaunchProgress>>) {
        let Some((channel, mut updates)) = Channel::open::<LaunchProgress>(WatchLaunch::PATH)
        else {
            return;
        };
        channel.send(&id);
        while let Some(Ok(p)) = updates.next().await {
            let done = p.outcome.is_some();
            progress.set(Some(p));
            if done {
                break;
            }
        }
    }
}
