//! The variables' parsing: every default, every bad value named in one line.

use super::*;
use std::collections::HashMap;

const HASH: &str = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|name| map.get(name).cloned())
}

fn launcher(extra: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
    let mut vars = vec![("FLYBY_ROLE", "launcher"), ("FLY_API_TOKEN", "t0ken")];
    vars.extend_from_slice(extra);
    config(&vars)
}

#[test]
fn a_launcher_needs_its_role_and_a_token() {
    let c = launcher(&[]).unwrap();
    assert_eq!(c.role, Role::Launcher);
    assert_eq!(c.site_addr, "127.0.0.1:3000".parse().unwrap());
    assert_eq!(c.log_format, LogFormat::Human);
    assert_eq!(&*c.leptos.output_name, "flyby");
    assert_eq!(c.fly.machine_id, None);
    assert_eq!(c.ephemeral_app, "flyby-machines");
    assert_eq!(c.timings.ttl, Duration::from_secs(120));
    let RoleConfig::Launcher(l) = c.role_config else {
        panic!("launcher")
    };
    assert!(!format!("{:?}", l.api_token).contains("t0ken"));
    assert_eq!(l.machines_api, "http://_api.internal:4280");
    assert_eq!(l.max_machines, 8);
    let err = config(&[("FLYBY_ROLE", "launcher")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "FLY_API_TOKEN is not set: expected a Fly API token"
    );
}

#[test]
fn missing_role_names_the_variable() {
    let err = config(&[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "FLYBY_ROLE is not set: expected `launcher`, `ephemeral` or `concierge`"
    );
}

#[test]
fn unknown_role_is_invalid() {
    let err = config(&[("FLYBY_ROLE", "admin")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "FLYBY_ROLE is invalid (\"admin\"): expected `launcher`, `ephemeral` or `concierge`"
    );
}

#[test]
fn ephemeral_role_requires_a_machine_id_and_an_owner_hash() {
    let err = config(&[("FLYBY_ROLE", "ephemeral"), ("FLYBY_OWNER_HASH", HASH)]).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Missing {
                name: "FLY_MACHINE_ID",
                ..
            }
        ),
        "{err}"
    );
    let err = config(&[
        ("FLYBY_ROLE", "ephemeral"),
        ("FLY_MACHINE_ID", "0123456789abcd"),
    ])
    .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Missing {
                name: "FLYBY_OWNER_HASH",
                ..
            }
        ),
        "{err}"
    );
    let c = config(&[
        ("FLYBY_ROLE", "ephemeral"),
        ("FLY_MACHINE_ID", "0123456789abcd"),
        ("FLYBY_OWNER_HASH", HASH),
        ("FLYBY_LAUNCHER_URL", "http://flyby.localhost:3000/"),
    ])
    .unwrap();
    assert_eq!(c.fly.machine_id.unwrap().as_str(), "0123456789abcd");
    let RoleConfig::Ephemeral(e) = c.role_config else {
        panic!("ephemeral")
    };
    assert_eq!(e.owner_hash.map(|h| h.to_hex()).as_deref(), Some(HASH));
    assert_eq!(
        e.launcher_url.as_deref(),
        Some("http://flyby.localhost:3000")
    );
    // A Machine of the warm pool has no owner yet, only the key that arms it.
    let c = config(&[
        ("FLYBY_ROLE", "ephemeral"),
        ("FLY_MACHINE_ID", "0123456789abcd"),
        ("FLYBY_READINESS_KEY", HASH),
    ])
    .unwrap();
    let RoleConfig::Ephemeral(e) = c.role_config else {
        panic!("ephemeral")
    };
    assert_eq!((e.owner_hash, e.readiness_key.is_some()), (None, true));
}

#[test]
fn bad_values_are_refused_by_name() {
    for (name, value) in [
        ("LEPTOS_SITE_ADDR", "localhost"),
        ("FLYBY_LOG_FORMAT", "yaml"),
        ("FLY_MACHINE_ID", "0123456789ABCD"),
        ("FLY_MACHINE_ID", "0123456789abc"),
        ("FLY_REGION", "Amsterdam"),
        ("FLY_APP_NAME", "Fly App"),
        ("LEPTOS_SITE_PKG_DIR", "../etc"),
        ("FLYBY_TTL_SECS", "5"),
        ("FLYBY_TTL_SECS", "two minutes"),
        ("FLYBY_MAX_MACHINES", "0"),
        ("FLYBY_MACHINES_API", "ftp://example.com"),
        ("FLYBY_MACHINES_API", "http://"),
        ("FLYBY_EPHEMERAL_ORIGIN", "http://a b"),
        ("FLYBY_METRICS_PORT", "70000"),
    ] {
        match launcher(&[(name, value)]).unwrap_err() {
            ConfigError::Invalid { name: got, .. } => assert_eq!(got, name),
            other => panic!("{name}={value}: {other}"),
        }
    }
}

#[test]
fn every_error_is_one_line() {
    let err = launcher(&[("FLY_REGION", "a\nb")]).unwrap_err();
    assert!(!err.to_string().contains('\n'), "{err}");
}

#[test]
fn secrets_are_never_echoed() {
    assert!(!format!("{:?}", launcher(&[]).unwrap()).contains("t0ken"));
    let hidden = ConfigError::Invalid {
        name: "FLY_API_TOKEN",
        shown: "<hidden>".into(),
        expected: "",
    };
    assert!(!hidden.to_string().contains("t0ken"));
    assert!(spec("FLY_API_TOKEN").secret);
}

#[test]
fn help_lists_every_variable_with_its_default() {
    let help = Help.to_string();
    for v in VARIABLES {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(v.name))
            .unwrap();
        match v.default {
            None => assert!(line.contains("required"), "{line}"),
            Some("") => assert!(line.contains("unset"), "{line}"),
            Some(d) => assert!(line.contains(&format!("default {d}")), "{line}"),
        }
    }
}
