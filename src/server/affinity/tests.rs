//! The decision table, rule by rule for both roles, then properties over arbitrary input.

use super::*;
use crate::server::ownership::OwnerSecret;
use proptest::prelude::*;
use ReplayKind::{Cacheable, Guarded};

const ME: &str = "0123456789abcd";
const OTHER: &str = "fedcba98765432";

fn id(s: &str) -> MachineId {
    MachineId::parse(s).unwrap()
}

fn facts<'a>(method: &'a Method, path: &'a str, cookies: Option<&'a str>) -> RequestFacts<'a> {
    RequestFacts {
        method,
        path,
        query: None,
        cookies,
        replay_src: None,
        replay_failed: None,
        home: None,
    }
}

fn launcher(me: Option<&str>) -> Here {
    Here {
        role: Role::Launcher,
        id: me.map(id),
        owner: None,
    }
}

struct Ephemeral {
    here: Here,
    secret: OwnerSecret,
}

fn ephemeral() -> Ephemeral {
    let secret = OwnerSecret::mint();
    Ephemeral {
        here: Here {
            role: Role::Ephemeral,
            id: Some(id(ME)),
            owner: Some(secret.hash()),
        },
        secret,
    }
}

const GET: &Method = &Method::GET;
const POST: &Method = &Method::POST;

// --- both roles ---

#[test]
fn health_always_passes_on_both_roles_whatever_the_cookies() {
    let e = ephemeral();
    let garbage = "flyby_owner=zz; flyby_launch=zz";
    for here in [&launcher(Some(ME)), &launcher(None), &e.here] {
        for cookies in [None, Some(garbage)] {
            let mut f = facts(GET, "/health", cookies);
            f.replay_src = Some("instance=fedcba98765432");
            assert_eq!(decide(&f, here), Decision::Pass, "{here:?}");
        }
    }
}

#[test]
fn only_the_exact_health_path_passes() {
    let e = ephemeral();
    for path in ["/health/", "/healthz", "/Health", "/health%20", "//health"] {
        assert_eq!(
            decide(&facts(GET, path, None), &e.here),
            Decision::Refuse(Refusal::NoMachine),
            "{path}"
        );
    }
}

// --- launcher ---

#[test]
fn launcher_serves_a_visitor_without_a_launch_pin() {
    assert_eq!(
        decide(&facts(GET, "/", None), &launcher(Some(ME))),
        Decision::Serve
    );
    assert_eq!(
        decide(&facts(GET, "/", Some("other=1")), &launcher(Some(ME))),
        Decision::Serve
    );
}

#[test]
fn launcher_serves_a_launch_pinned_to_itself() {
    let c = format!("flyby_launch={ME}");
    assert_eq!(
        decide(&facts(GET, "/api/launch", Some(&c)), &launcher(Some(ME))),
        Decision::Serve
    );
}

#[test]
fn launcher_replays_a_launch_pinned_to_another_launcher() {
    let c = format!("a=b; flyby_launch={OTHER}");
    assert_eq!(
        decide(
            &facts(GET, "/pkg/flyby.wasm", Some(&c)),
            &launcher(Some(ME))
        ),
        Decision::Replay(id(OTHER), Guarded)
    );
}

#[test]
fn launcher_unpins_when_the_pinned_launcher_is_gone_or_already_replayed() {
    let c = format!("flyby_launch={OTHER}");
    let mut failed = facts(GET, "/", Some(&c));
    failed.replay_failed = Some("instance=fedcba98765432;reason=no_candidate");
    assert_eq!(
        decide(&failed, &launcher(Some(ME))),
        Decision::ServeAndUnpin
    );
    let mut replayed = facts(GET, "/", Some(&c));
    replayed.replay_src = Some("instance=aaaaaaaaaaaaaa;region=ams;t=1");
    assert_eq!(
        decide(&replayed, &launcher(Some(ME))),
        Decision::ServeAndUnpin
    );
}

#[test]
fn launcher_outside_fly_ignores_and_clears_pins() {
    let c = format!("flyby_launch={OTHER}");
    assert_eq!(
        decide(&facts(GET, "/", Some(&c)), &launcher(None)),
        Decision::ServeAndUnpin
    );
    assert_eq!(
        decide(&facts(GET, "/", None), &launcher(None)),
        Decision::Serve
    );
}

#[test]
fn launcher_refuses_and_clears_a_malformed_pin() {
    for bad in ["abc;app=evil", "FEDCBA98765432", "fedcba9876543", "x"] {
        let c = format!("flyby_launch={bad}");
        assert_eq!(
            decide(&facts(GET, "/", Some(&c)), &launcher(Some(ME))),
            Decision::Refuse(Refusal::InvalidId { unpin: true }),
            "{bad}"
        );
    }
}

#[test]
fn launcher_ignores_the_machine_path_and_owner_cookie_of_the_other_app() {
    let c = format!("flyby_owner={OTHER}.secret");
    assert_eq!(
        decide(
            &facts(GET, &format!("/m/{OTHER}"), Some(&c)),
            &launcher(Some(ME))
        ),
        Decision::Serve
    );
}

#[test]
fn a_launch_starts_on_the_visitors_home_launcher_whatever_the_pin() {
    let me = launcher(Some(ME));
    let pinned_here = format!("{LAUNCH_COOKIE}={ME}");
    let pinned_there = format!("{LAUNCH_COOKIE}={OTHER}");
    for cookies in [
        None,
        Some(pinned_here.as_str()),
        Some(pinned_there.as_str()),
    ] {
        let start = |home: Option<&str>| RequestFacts {
            home: home.map(id),
            ..facts(POST, LAUNCH_PATH, cookies)
        };
        // Elsewhere: replayed home, even when the visitor's pin names this launcher (a pin is
        // the visitor's to forge: it must not buy them another launcher's budget).
        assert_eq!(
            decide(&start(Some(OTHER)), &me),
            Decision::Replay(id(OTHER), Guarded),
            "{cookies:?}"
        );
        // At home: served, even when the pin names another launcher.
        assert_eq!(
            decide(&start(Some(ME)), &me),
            Decision::Serve,
            "{cookies:?}"
        );
        // Already replayed once (the launchers' lists disagree), or home is unreachable:
        // served here, never replayed again.
        let replayed = RequestFacts {
            replay_src: Some("instance=x"),
            ..start(Some(OTHER))
        };
        assert_eq!(decide(&replayed, &me), Decision::Serve);
        let failed = RequestFacts {
            replay_failed: Some("reason=timeout"),
            ..start(Some(OTHER))
        };
        assert_eq!(decide(&failed, &me), Decision::Serve);
    }
    // Launchers unknown (or outside Fly): the pin rules as before.
    assert_eq!(
        decide(&facts(POST, LAUNCH_PATH, Some(&pinned_there)), &me),
        Decision::Replay(id(OTHER), Guarded)
    );
    let outside = RequestFacts {
        home: Some(id(OTHER)),
        ..facts(POST, LAUNCH_PATH, None)
    };
    assert_eq!(decide(&outside, &launcher(None)), Decision::Serve);
    // Only the start of a launch goes home: its progress and hand-over follow the pin.
    let progress = RequestFacts {
        home: Some(id(OTHER)),
        ..facts(POST, "/api/handover", Some(&pinned_here))
    };
    assert_eq!(decide(&progress, &me), Decision::Serve);
}

#[test]
fn every_launcher_agrees_on_a_visitors_home_and_one_joining_moves_only_whom_it_wins() {
    let launchers: Vec<MachineId> = ["0000000000000a", "0000000000000b", "0000000000000c"]
        .map(id)
        .to_vec();
    let visitors: Vec<String> = (0..300)
        .map(|i| format!("203.0.{}.{}", i / 250, i % 250))
        .collect();
    let mut reversed = launchers.clone();
    reversed.reverse();
    let mut counts = std::collections::HashMap::new();
    for v in &visitors {
        let home = home_launcher(v, &launchers).unwrap();
        assert_eq!(
            home_launcher(v, &reversed),
            Some(home),
            "the order of the list does not matter"
        );
        *counts.entry(home).or_insert(0) += 1;
    }
    // Spread over all three (100 each on average).
    assert!(counts.values().all(|&n| n > 60), "{counts:?}");
    let mut four = launchers.clone();
    four.push(id("0000000000000d"));
    for v in &visitors {
        let (before, after) = (
            home_launcher(v, &launchers).unwrap(),
            home_launcher(v, &four).unwrap(),
        );
        assert!(
            after == before || after == id("0000000000000d"),
            "{v} moved from {before} to {after}"
        );
    }
    assert_eq!(home_launcher("203.0.113.1", &[]), None);
}

// --- ephemeral ---

#[test]
fn ephemeral_serves_its_owner_on_every_kind_of_path() {
    let e = ephemeral();
    let c = format!("flyby_owner={ME}.{}", e.secret.expose());
    for path in [
        &format!("/m/{ME}") as &str,
        "/",
        "/api/rtt",
        "/pkg/flyby.wasm",
        "/favicon.ico",
    ] {
        assert_eq!(
            decide(&facts(GET, path, Some(&c)), &e.here),
            Decision::Serve,
            "{path}"
        );
    }
}

#[test]
fn ephemeral_refuses_a_wrong_or_missing_secret_with_403() {
    let e = ephemeral();
    let forged = format!("flyby_owner={ME}.{}", OwnerSecret::mint().expose());
    let empty = format!("flyby_owner={ME}.");
    let page = format!("/m/{ME}");
    for cookies in [
        None,
        Some(forged.as_str()),
        Some(empty.as_str()),
        Some("unrelated=1"),
    ] {
        assert_eq!(
            decide(&facts(GET, &page, cookies), &e.here),
            Decision::Refuse(Refusal::NotOwner),
            "{cookies:?}"
        );
    }
}

#[test]
fn ephemeral_refuses_the_secret_of_another_machine_presented_for_this_one() {
    let e = ephemeral();
    // The right secret, but pinned to another Machine: the path names this one.
    let c = format!("flyby_owner={OTHER}.{}", e.secret.expose());
    assert_eq!(
        decide(&facts(GET, &format!("/m/{ME}"), Some(&c)), &e.here),
        Decision::Refuse(Refusal::NotOwner)
    );
}

#[test]
fn ephemeral_lets_only_the_claim_post_through_without_a_cookie() {
    let e = ephemeral();
    let claim = format!("/m/{ME}/claim");
    assert_eq!(decide(&facts(POST, &claim, None), &e.here), Decision::Serve);
    assert_eq!(
        decide(&facts(GET, &claim, None), &e.here),
        Decision::Refuse(Refusal::NotOwner)
    );
    let not_claim = format!("/m/{ME}/claim/x");
    assert_eq!(
        decide(&facts(POST, &not_claim, None), &e.here),
        Decision::Refuse(Refusal::NotOwner)
    );
}

#[test]
fn ephemeral_replays_requests_for_another_machine_by_path_or_cookie() {
    let e = ephemeral();
    let other_page = format!("/m/{OTHER}");
    assert_eq!(
        decide(&facts(GET, &other_page, None), &e.here),
        Decision::Replay(id(OTHER), Guarded)
    );
    let claim = format!("/m/{OTHER}/claim");
    assert_eq!(
        decide(&facts(POST, &claim, None), &e.here),
        Decision::Replay(id(OTHER), Guarded)
    );
    let c = format!("flyby_owner={OTHER}.whatever");
    assert_eq!(
        decide(&facts(GET, "/api/rtt", Some(&c)), &e.here),
        Decision::Replay(id(OTHER), Guarded)
    );
}

#[test]
fn only_static_files_get_a_replay_fly_may_cache() {
    let e = ephemeral();
    let c = format!("flyby_owner={OTHER}.whatever");
    let kind = |method: &Method, path: &str| match decide(&facts(method, path, Some(&c)), &e.here) {
        Decision::Replay(target, kind) => {
            assert_eq!(target, id(OTHER));
            kind
        }
        other => panic!("{method} {path}: {other:?}"),
    };
    // The bundle and the site's other files: the page survives losing one.
    assert_eq!(kind(GET, "/pkg/flyby.wasm"), Cacheable);
    assert_eq!(kind(&Method::HEAD, "/pkg/flyby.js"), Cacheable);
    assert_eq!(kind(GET, "/favicon.ico"), Cacheable);
    // Pages, server functions and the live channel must hear that their Machine is gone.
    assert_eq!(kind(GET, &format!("/m/{OTHER}")), Guarded);
    assert_eq!(kind(GET, "/api/channel"), Guarded);
    assert_eq!(kind(POST, "/api/switch-off"), Guarded);
    assert_eq!(kind(POST, "/pkg/flyby.wasm"), Guarded);
    // And the header says so: only a guarded replay carries what Fly's cache refuses.
    let guarded = layer::replay_header(id(OTHER), Guarded);
    assert!(guarded.contains(";timeout=") && guarded.contains(";fallback=prefer_self"));
    assert_eq!(
        layer::replay_header(id(OTHER), Cacheable),
        format!("instance={OTHER}")
    );
}

#[test]
fn ephemeral_path_wins_over_cookie() {
    let e = ephemeral();
    let c = format!("flyby_owner={ME}.{}", e.secret.expose());
    assert_eq!(
        decide(&facts(GET, &format!("/m/{OTHER}/x"), Some(&c)), &e.here),
        Decision::Replay(id(OTHER), Guarded)
    );
}

#[test]
fn ephemeral_never_replays_twice() {
    let e = ephemeral();
    let mut f = facts(GET, "/", None);
    let c = format!("flyby_owner={OTHER}.s");
    f.cookies = Some(&c);
    f.replay_src = Some("instance=aaaaaaaaaaaaaa;region=ams;t=1");
    assert_eq!(decide(&f, &e.here), Decision::Refuse(Refusal::Misdirected));
}

#[test]
fn ephemeral_answers_gone_when_the_replay_failed() {
    let e = ephemeral();
    let c = format!("flyby_owner={OTHER}.s");
    let mut f = facts(GET, "/", Some(&c));
    f.replay_failed = Some("instance=fedcba98765432;reason=no_candidate;elapsed_ms=3");
    assert_eq!(decide(&f, &e.here), Decision::Gone(id(OTHER)));
    // Both headers at once: the failure wins (the proxy came back to us).
    f.replay_src = Some("instance=aaaaaaaaaaaaaa;region=ams;t=1");
    assert_eq!(decide(&f, &e.here), Decision::Gone(id(OTHER)));
}

#[test]
fn a_hand_over_that_was_not_delivered_is_made_again_a_few_times_then_gone() {
    let e = ephemeral();
    let claim = format!("/m/{OTHER}/claim");
    let failed = "instance=fedcba98765432;reason=no_candidate;elapsed_ms=3";
    let attempt = |query: Option<&str>| {
        let mut f = facts(POST, &claim, None);
        f.replay_failed = Some(failed);
        f.query = query;
        decide(&f, &e.here)
    };
    assert_eq!(attempt(None), Decision::RetryClaim(id(OTHER), 1));
    assert_eq!(
        attempt(Some("attempt=1")),
        Decision::RetryClaim(id(OTHER), 2)
    );
    assert_eq!(
        attempt(Some("x=y&attempt=2")),
        Decision::RetryClaim(id(OTHER), 3)
    );
    let last = format!("attempt={}", CLAIM_ATTEMPTS - 1);
    assert_eq!(attempt(Some(&last)), Decision::Gone(id(OTHER)));
    for odd in ["attempt=99", "attempt=-1", "attempt=x", "attempt=300"] {
        assert_eq!(attempt(Some(odd)), Decision::Gone(id(OTHER)), "{odd}");
    }
    // Only the hand-over: a failed page, call or claim of another Machine is gone at once.
    let mut page = facts(GET, &claim, None);
    page.replay_failed = Some(failed);
    assert_eq!(decide(&page, &e.here), Decision::Gone(id(OTHER)));
    let elsewhere = format!("/m/{OTHER}/claim/x");
    let mut f = facts(POST, &elsewhere, None);
    f.replay_failed = Some(failed);
    assert_eq!(decide(&f, &e.here), Decision::Gone(id(OTHER)));
    // And a claim that was not replayed is replayed, whatever its query says.
    let mut fresh = facts(POST, &claim, None);
    fresh.query = Some("attempt=2");
    assert_eq!(
        decide(&fresh, &e.here),
        Decision::Replay(id(OTHER), Guarded)
    );
}

#[test]
fn ephemeral_refuses_requests_that_name_no_machine() {
    let e = ephemeral();
    for path in [
        "/",
        "/favicon.ico",
        "/pkg/flyby.js",
        "/api/rtt",
        "/m",
        "/mm/0123456789abcd",
    ] {
        assert_eq!(
            decide(&facts(GET, path, None), &e.here),
            Decision::Refuse(Refusal::NoMachine),
            "{path}"
        );
    }
}

#[test]
fn ephemeral_refuses_malformed_ids_with_400() {
    let e = ephemeral();
    for path in [
        "/m/",
        "/m/abc;app=evil",
        "/m/0123456789ABCD",
        "/m/0123456789abc",
        "/m/0123456789abcde",
        "/m/%0d%0a",
        "/m/0123456789abc%C3%A9",
    ] {
        assert_eq!(
            decide(&facts(GET, path, None), &e.here),
            Decision::Refuse(Refusal::InvalidId { unpin: false }),
            "{path}"
        );
    }
    for cookie in [
        "flyby_owner=abc",
        "flyby_owner=abc;app=evil.s",
        "flyby_owner=0123456789ABCD.s",
        "flyby_owner=.s",
    ] {
        assert_eq!(
            decide(&facts(GET, "/", Some(cookie)), &e.here),
            Decision::Refuse(Refusal::InvalidId { unpin: true }),
            "{cookie}"
        );
    }
}

#[test]
fn ephemeral_without_an_owner_hash_serves_nobody() {
    let here = Here {
        role: Role::Ephemeral,
        id: Some(id(ME)),
        owner: None,
    };
    let c = format!("flyby_owner={ME}.{}", OwnerSecret::mint().expose());
    assert_eq!(
        decide(&facts(GET, "/", Some(&c)), &here),
        Decision::Refuse(Refusal::NotOwner)
    );
}

#[test]
fn the_first_of_duplicate_cookies_counts() {
    let e = ephemeral();
    let c = format!(
        "flyby_owner={ME}.{}; flyby_owner={OTHER}.x",
        e.secret.expose()
    );
    assert_eq!(decide(&facts(GET, "/", Some(&c)), &e.here), Decision::Serve);
}

#[test]
fn paths_for_the_hand_over_and_the_page() {
    assert_eq!(claim_path(id(ME)), "/m/0123456789abcd/claim");
    assert_eq!(machine_page_path(id(ME)), "/m/0123456789abcd");
}

// --- concierge ---

#[test]
fn the_concierge_replays_for_every_machine_and_serves_nobody() {
    let here = Here {
        role: Role::Concierge,
        id: Some(id(ME)),
        owner: None,
    };
    let c = format!("flyby_owner={OTHER}.s");
    assert_eq!(
        decide(&facts(GET, "/", Some(&c)), &here),
        Decision::Replay(id(OTHER), Cacheable)
    );
    let other_page = format!("/m/{OTHER}");
    let mut failed = facts(GET, &other_page, None);
    failed.replay_failed = Some("instance=fedcba98765432;reason=no_candidate");
    assert_eq!(decide(&failed, &here), Decision::Gone(id(OTHER)));
    let mine = format!("flyby_owner={ME}.{}", OwnerSecret::mint().expose());
    assert_eq!(
        decide(&facts(GET, &format!("/m/{ME}"), Some(&mine)), &here),
        Decision::Refuse(Refusal::NotOwner)
    );
    assert_eq!(
        decide(&facts(POST, &format!("/m/{ME}/claim"), None), &here),
        Decision::Refuse(Refusal::NotOwner)
    );
    assert_eq!(decide(&facts(GET, "/health", None), &here), Decision::Pass);
    assert_eq!(
        decide(&facts(GET, "/", None), &here),
        Decision::Refuse(Refusal::NoMachine)
    );
}

// --- properties ---

fn any_here() -> impl Strategy<Value = (Here, OwnerSecret)> {
    (any::<bool>(), any::<bool>()).prop_map(|(ephemeral, with_id)| {
        let secret = OwnerSecret::parse(&"5".repeat(64)).unwrap();
        let here = if ephemeral {
            Here {
                role: Role::Ephemeral,
                id: with_id.then(|| id(ME)),
                owner: Some(secret.hash()),
            }
        } else {
            Here {
                role: Role::Launcher,
                id: with_id.then(|| id(ME)),
                owner: None,
            }
        };
        (here, secret)
    })
}

/// Strings that often look like what the decision parses, and sometimes like attacks.
fn tricky() -> impl Strategy<Value = String> {
    prop_oneof![
        ".*",
        Just(ME.to_owned()),
        Just(OTHER.to_owned()),
        "[0-9a-fA-F]{13,15}",
        "[0-9a-f]{14}[;=,\" \r\n].*",
        Just(format!("{OTHER};app=evil")),
    ]
}

fn any_path() -> impl Strategy<Value = String> {
    prop_oneof![
        ".*",
        tricky().prop_map(|s| format!("/m/{s}")),
        tricky().prop_map(|s| format!("/m/{s}/claim")),
        Just("/health".to_owned()),
        Just("/".to_owned()),
        Just(LAUNCH_PATH.to_owned()),
    ]
}

fn any_cookies(secret: &OwnerSecret) -> impl Strategy<Value = Option<String>> {
    let good = secret.expose().to_owned();
    prop_oneof![
        Just(None),
        ".*".prop_map(Some),
        (tricky(), prop_oneof![Just(good.clone()), ".*"])
            .prop_map(|(i, s)| Some(format!("flyby_owner={i}.{s}"))),
        tricky().prop_map(|i| Some(format!("flyby_launch={i}"))),
        (tricky(), tricky()).prop_map(|(a, b)| Some(format!(
            "flyby_launch={a}; flyby_owner={b}.{}",
            "5".repeat(64)
        ))),
    ]
}

fn any_machine_and_cookies() -> impl Strategy<Value = (Here, OwnerSecret, Option<String>)> {
    any_here().prop_flat_map(|(here, secret)| {
        let cookies = any_cookies(&secret);
        (Just(here), Just(secret), cookies)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn never_panics_and_never_replays_twice_or_to_an_invalid_id(
        (here, secret, cookies) in any_machine_and_cookies(),
        post in any::<bool>(),
        path in any_path(),
        replay_src in proptest::option::of(".*"),
        replay_failed in proptest::option::of(".*"),
        query in proptest::option::of(prop_oneof![".*", (0u8..=9).prop_map(|n| format!("attempt={n}"))]),
        home in proptest::option::of(prop_oneof![Just(id(ME)), Just(id(OTHER))]),
    ) {
        let method = if post { Method::POST } else { Method::GET };
        let request = RequestFacts {
            method: &method,
            path: &path,
            query: query.as_deref(),
            cookies: cookies.as_deref(),
            replay_src: replay_src.as_deref(),
            replay_failed: replay_failed.as_deref(),
            home,
        };
        let decision = decide(&request, &here);
        if let Decision::Replay(target, _) = decision {
            // A replay names a valid id (the type guarantees it) that is not this Machine,
            // and never a request that already came through a replay.
            prop_assert!(replay_src.is_none(), "replayed twice: {request:?}");
            prop_assert!(replay_failed.is_none());
            prop_assert_ne!(Some(target), here.id);
            prop_assert!(MachineId::parse(target.as_str()).is_ok());
        }
        if let Decision::RetryClaim(target, attempt) = decision {
            // Only a hand-over that came back undelivered, a bounded number of times.
            prop_assert!(post && replay_failed.is_some(), "{request:?}");
            prop_assert!(attempt < CLAIM_ATTEMPTS);
            prop_assert_ne!(Some(target), here.id);
        }
        prop_assert_eq!(decision == Decision::Pass, path == HEALTH_PATH);
        if here.role == Role::Ephemeral && decision == Decision::Serve {
            // Served only to the owner, or to the claim handler which checks the secret itself.
            let claim = post && path == format!("/m/{ME}/claim");
            let owner = cookies
                .as_deref()
                .is_some_and(|c| c.contains(&format!("{ME}.{}", secret.expose())));
            prop_assert!(claim || owner, "served a stranger: {request:?}");
        }
    }
}
