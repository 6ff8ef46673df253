//! The vocabulary's rules, field by field and form by form, and the chain's policy.

use super::*;

#[test]
fn the_next_step_of_a_replay_follows_flys_rules_in_their_order() {
    let ok = ChainFacts {
        from_fallback: false,
        replays: 0,
        body_replayable: true,
        app_exists: true,
    };
    assert_eq!(next_step(ok), NextStep::Replay);
    assert_eq!(
        next_step(ChainFacts {
            replays: MAX_CHAIN - 1,
            ..ok
        }),
        NextStep::Replay
    );
    assert_eq!(
        next_step(ChainFacts {
            replays: MAX_CHAIN,
            ..ok
        }),
        NextStep::Limit
    );
    assert_eq!(
        next_step(ChainFacts {
            body_replayable: false,
            ..ok
        }),
        NextStep::TooLarge
    );
    assert_eq!(
        next_step(ChainFacts {
            app_exists: false,
            ..ok
        }),
        NextStep::NoSuchApp
    );
    // A fallback's answer may not replay at all, whatever else holds.
    let all_wrong = ChainFacts {
        from_fallback: true,
        replays: MAX_CHAIN,
        body_replayable: false,
        app_exists: false,
    };
    assert_eq!(next_step(all_wrong), NextStep::FallbackReplayed);
    // Then the limit before the body, and the body before the app.
    assert_eq!(
        next_step(ChainFacts {
            from_fallback: false,
            ..all_wrong
        }),
        NextStep::Limit
    );
    assert_eq!(
        next_step(ChainFacts {
            from_fallback: false,
            replays: 0,
            ..all_wrong
        }),
        NextStep::TooLarge
    );
}

const A: &str = "0123456789abcd";
const B: &str = "fedcba98765432";

fn id(s: &str) -> MachineId {
    MachineId::parse(s).unwrap()
}

fn code(s: &str) -> RegionChoice {
    RegionChoice::Code(RegionCode::parse(s).unwrap())
}

#[test]
fn every_header_field_parses() {
    let r = parse_header(&format!(
        "instance={A}; region=\"syd,any\";app=other-app;elsewhere=true;state=abc;timeout=800ms;fallback=prefer_self"
    ))
    .unwrap();
    assert_eq!(r.instance, Some(id(A)));
    assert_eq!(
        r.regions,
        vec![code("syd"), RegionChoice::Alias(RegionAlias::Any)]
    );
    assert_eq!(r.app.as_deref(), Some("other-app"));
    assert!(r.elsewhere);
    assert_eq!(r.state.as_deref(), Some("abc"));
    assert_eq!(r.timeout, Some(Duration::from_millis(800)));
    assert_eq!(r.fallback, Some(Fallback::PreferSelf));
    assert!(!regions_are_hard(&r.regions));

    let r = parse_header(&format!("prefer_instance={B};fallback=force_self;")).unwrap();
    assert_eq!(r.prefer_instance, Some(id(B)));
    assert_eq!(r.fallback, Some(Fallback::ForceSelf));
    assert!(regions_are_hard(
        &parse_header("region=syd").unwrap().regions
    ));
    assert_eq!(
        parse_header("region=\"iad,us,eu\"").unwrap().regions,
        vec![
            code("iad"),
            RegionChoice::Alias(RegionAlias::Us),
            RegionChoice::Alias(RegionAlias::Eu)
        ]
    );
    assert_eq!(
        parse_header("state=\"a;b \\\"c\\\"\"")
            .unwrap()
            .state
            .as_deref(),
        Some("a;b \"c\"")
    );
}

#[test]
fn invalid_headers_are_refused() {
    for bad in [
        "",
        "  ",
        ";",
        "instance",
        "instance=nope",
        &format!("instance={}", A.to_uppercase()),
        "region=syd,any",
        "region=\"syd,zz1\"",
        "region=\"syd",
        "region=\"syd\"x",
        "elsewhere=yes",
        "timeout=soon",
        "timeout=0s",
        "fallback=self",
        "app=Other",
        "app=",
        "colour=blue",
        "=x",
        &format!("instance={A};instance={B}"),
        &format!("instance={A};prefer_instance={B}"),
        "state=a\u{1}b",
        "st\"ate=x",
    ] {
        assert!(parse_header(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn the_json_form_carries_transform_and_cache() {
    let r = parse_json(
        format!(
            r#"{{"instance":"{A}","region":"iad,us","elsewhere":true,
                "transform":{{"path":"/x?y=1","delete_headers":["cookie"],
                             "set_headers":[{{"name":"x-h","value":"v"}}]}},
                "cache":{{"prefix":"/m/*","ttl":60,"allow_bypass":true}}}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.instance, Some(id(A)));
    assert_eq!(r.regions.len(), 2);
    assert!(r.elsewhere);
    let t = r.transform.unwrap();
    assert_eq!(t.path.unwrap().as_str(), "/x?y=1");
    assert_eq!(t.delete_headers, vec![HeaderName::from_static("cookie")]);
    assert_eq!(t.set_headers[0].0, "x-h");
    assert_eq!(
        r.cache,
        Some(CacheDirective::Set {
            pattern: CachePattern {
                host: None,
                prefix: "/m".into()
            },
            ttl: Duration::from_secs(60),
            allow_bypass: true
        })
    );
    let r = parse_json(br#"{"app":"origin","cache":{"invalidate":true}}"#).unwrap();
    assert_eq!(r.cache, Some(CacheDirective::Invalidate));
    assert_eq!(
        parse_json(br#"{"region":["syd","any"]}"#)
            .unwrap()
            .regions
            .len(),
        2
    );
}

#[test]
fn invalid_json_is_refused() {
    for bad in [
        &b"not json"[..],
        b"{}",
        b"{\"instance\":\"x\"}",
        b"{\"colour\":\"blue\"}",
        b"{\"transform\":{\"path\":\"no-slash\"}}",
        b"{\"transform\":{\"set_headers\":[{\"name\":\"fly-replay-src\",\"value\":\"x\"}]}}",
        b"{\"transform\":{\"delete_headers\":[\"host\"]}}",
        b"{\"transform\":{\"set_headers\":[{\"name\":\"x\",\"value\":\"a\\nb\"}]}}",
        b"{\"app\":\"a\",\"cache\":{\"prefix\":\"/x/*\",\"ttl\":5}}",
        b"{\"app\":\"a\",\"cache\":{\"ttl\":50}}",
        b"{\"elsewhere\":\"yes\"}",
    ] {
        assert!(
            parse_json(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn cache_headers_parse_with_their_minimum_ttl() {
    assert_eq!(parse_cache_headers(None, Some("60"), None), Ok(None));
    assert_eq!(
        parse_cache_headers(Some("invalidate"), None, None),
        Ok(Some(CacheDirective::Invalidate))
    );
    assert_eq!(
        parse_cache_headers(Some("Example.com/m/b/*"), Some("10"), Some("yes")),
        Ok(Some(CacheDirective::Set {
            pattern: CachePattern {
                host: Some("example.com".into()),
                prefix: "/m/b".into()
            },
            ttl: Duration::from_secs(10),
            allow_bypass: true
        }))
    );
    assert!(parse_cache_headers(Some("/m/*"), Some("9"), None).is_err());
    assert!(parse_cache_headers(Some("/m/*"), None, None).is_err());
    assert!(parse_cache_headers(Some("example.com:80/m/*"), Some("60"), None).is_err());
    assert!(parse_cache_headers(Some("m"), Some("60"), None).is_err());
    assert!(parse_cache_headers(Some("/m/*/x"), Some("60"), None).is_err());
}

#[test]
fn cache_patterns_match_segment_wise() {
    let p = CachePattern::parse("/m/abc/*").unwrap();
    assert!(p.matches("x.localhost", "/m/abc"));
    assert!(p.matches("x.localhost", "/m/abc/"));
    assert!(p.matches("x.localhost", "/m/abc/d/e"));
    assert!(!p.matches("x.localhost", "/m/abcd"));
    assert!(!p.matches("x.localhost", "/m"));
    let all = CachePattern::parse("/*").unwrap();
    assert!(all.matches("h", "/") && all.matches("h", "/anything"));
    let hosted = CachePattern::parse("a.localhost/x").unwrap();
    assert!(hosted.matches("a.localhost", "/x/y"));
    assert!(!hosted.matches("b.localhost", "/x/y"));
    assert!(path_has_prefix("/api/x", "/api/"));
}

#[test]
fn replay_src_has_fly_format_and_round_trips() {
    let src = ReplaySrc {
        instance: id(A),
        region: RegionCode::parse("ams").unwrap(),
        t_micros: 1_700_000_000_123_456,
        state: None,
    };
    assert_eq!(
        src.to_header(),
        format!("instance={A};region=ams;t=1700000000123456")
    );
    assert_eq!(ReplaySrc::parse(&src.to_header()), Ok(src.clone()));
    let with_state = ReplaySrc {
        state: Some("abc".into()),
        ..src.clone()
    };
    assert!(with_state.to_header().ends_with(";state=abc"));
    let odd = ReplaySrc {
        state: Some("a;b=\"c\"".into()),
        ..src
    };
    assert_eq!(ReplaySrc::parse(&odd.to_header()), Ok(odd));
    assert!(ReplaySrc::parse("instance=x;region=ams;t=1").is_err());
    assert!(ReplaySrc::parse(&format!("instance={A};t=1")).is_err());
}

#[test]
fn replay_failed_has_fly_order_and_round_trips() {
    let failed = ReplayFailed {
        instance: Some(id(B)),
        app: "flyby-machines".into(),
        region: Some("syd,any".into()),
        replay_source: id(A),
        reason: FailReason::Timeout,
        elapsed_ms: 800,
    };
    assert_eq!(
        failed.to_header(),
        format!(
            "instance={B};app=flyby-machines;region=\"syd,any\";replay_source={A};reason=timeout;elapsed_ms=800"
        )
    );
    assert_eq!(ReplayFailed::parse(&failed.to_header()), Ok(failed));
    let bare = ReplayFailed {
        instance: None,
        app: "a".into(),
        region: None,
        replay_source: id(A),
        reason: FailReason::NoCandidate,
        elapsed_ms: 0,
    };
    assert_eq!(
        bare.to_header(),
        format!("app=a;replay_source={A};reason=no_candidate;elapsed_ms=0")
    );
    assert_eq!(ReplayFailed::parse(&bare.to_header()), Ok(bare));
}

#[test]
fn aliases_cover_their_areas() {
    let r = |s| RegionCode::parse(s).unwrap();
    assert!(RegionAlias::Eu.contains(r("ams")));
    assert!(!RegionAlias::Eu.contains(r("iad")));
    assert!(RegionAlias::Us.contains(r("iad")) && !RegionAlias::Us.contains(r("yyz")));
    assert!(RegionAlias::Na.contains(r("yyz")));
    assert!(RegionAlias::Apac.contains(r("syd")));
    assert!(RegionAlias::Sa.contains(r("gru")));
    assert!(RegionAlias::Any.contains(r("jnb")));
    for region in crate::fly::REGIONS {
        let n = [
            RegionAlias::Na,
            RegionAlias::Sa,
            RegionAlias::Eu,
            RegionAlias::Apac,
        ]
        .iter()
        .filter(|a| a.contains(region.code()))
        .count();
        // Every current region is in exactly one continent alias, except Johannesburg.
        assert_eq!(n, usize::from(region.code != "jnb"), "{}", region.code);
    }
}
