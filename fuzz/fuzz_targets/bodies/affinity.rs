//! The affinity decision on arbitrary requests, for both roles: it never panics, never replays
//! a request that already came through a replay, never replays to this Machine, and on the
//! ephemeral app never serves a request that neither claims nor presents the owner's secret.
//!
//! The body of the fuzz target, shared with `tests/system/fuzz_corpus.rs`, which replays the committed
//! corpus through it on every `cargo test`.

use flyby::{
    fly::MachineId,
    role::Role,
    server::{
        affinity::{decide, layer::replay_header, Decision, Here, RequestFacts},
        ownership::OwnerSecret,
    },
};

const ME: &str = "0123456789abcd";

pub fn run(data: &[u8]) {
    // Fields separated by 0xff (never in valid UTF-8): flags, path, cookies, src, failed, query.
    let mut fields = data.split(|b| *b == 0xff);
    let flags = fields.next().and_then(|f| f.first().copied()).unwrap_or(0);
    let text = |f: Option<&[u8]>| f.map(|f| String::from_utf8_lossy(f).into_owned());
    let path = text(fields.next()).unwrap_or_default();
    let cookies = text(fields.next());
    let replay_src = text(fields.next()).filter(|_| flags & 4 != 0);
    let replay_failed = text(fields.next()).filter(|_| flags & 8 != 0);
    let query = text(fields.next());
    let method = if flags & 1 != 0 {
        http::Method::POST
    } else {
        http::Method::GET
    };
    let secret = OwnerSecret::parse(&"5".repeat(64)).unwrap();
    let me = MachineId::parse(ME).unwrap();
    let here = if flags & 2 != 0 {
        Here {
            role: Role::Ephemeral,
            id: Some(me),
            owner: Some(secret.hash()),
        }
    } else {
        Here {
            role: Role::Launcher,
            id: (flags & 16 == 0).then_some(me),
            owner: None,
        }
    };
    let request = RequestFacts {
        method: &method,
        path: &path,
        query: query.as_deref(),
        cookies: cookies.as_deref(),
        replay_src: replay_src.as_deref(),
        replay_failed: replay_failed.as_deref(),
        // Flag 32: the visitor's home launcher is another; 64: this one.
        home: match (flags & 32 != 0, flags & 64 != 0) {
            (true, _) => MachineId::parse("fedcba98765432").ok(),
            (false, true) => Some(me),
            (false, false) => None,
        },
    };
    match decide(&request, &here) {
        Decision::Replay(target, kind) => {
            assert!(
                replay_src.is_none() && replay_failed.is_none(),
                "replayed twice"
            );
            assert_ne!(Some(target), here.id, "replayed to itself");
            let header = replay_header(target, kind);
            assert!(header.bytes().all(|b| b.is_ascii_graphic()), "{header:?}");
            let instance = format!("instance={target}");
            assert!(
                header == instance || header.starts_with(&format!("{instance};")),
                "{header:?}"
            );
        }
        Decision::RetryClaim(target, attempt) => {
            assert!(
                replay_failed.is_some() && method == http::Method::POST,
                "retried a claim that did not fail"
            );
            assert!(
                attempt < flyby::server::affinity::CLAIM_ATTEMPTS,
                "retried without end"
            );
            assert_ne!(Some(target), here.id, "retried to itself");
        }
        Decision::Pass => assert_eq!(path, "/health"),
        Decision::Serve if here.role == Role::Ephemeral => {
            let claim = method == http::Method::POST && path == format!("/m/{ME}/claim");
            let owner = cookies
                .as_deref()
                .is_some_and(|c| c.contains(&format!("{ME}.{}", secret.expose())));
            assert!(claim || owner, "served a stranger");
        }
        _ => {}
    }
}
