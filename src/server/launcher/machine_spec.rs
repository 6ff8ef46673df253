//! The whole config of every Machine the launcher creates in the visitors' app, from code, as a
//! pure function of its inputs: the visitor's Machine (its owner's hash, its lifetimes, one
//! http service with the session replay cache on the owner cookie, a `/health` check,
//! `auto_destroy`, restart `no`) and, from it, the concierge's. No clock and no randomness here:
//! the caller passes the time and the secret.

use super::{concierge::CONCIERGE_ROLE, MACHINE_PORT, METADATA_ROLE};
use crate::{
    fly::MachineId,
    role::Role,
    server::{
        affinity::{HEALTH_PATH, OWNER_COOKIE},
        config::Timings,
        fly_api::{
            Autostop, Check, FlyDuration, Guest, HttpOptions, MachineConfig, Port, ReplayCacheKind,
            ReplayCacheRule, Restart, RestartPolicy, Service,
        },
        ownership::OwnerHash,
        readiness::ReadinessKey,
    },
};
use std::{collections::BTreeMap, time::Duration};

/// What every Machine of this launcher is made of, the same for all its launches.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// The visitors' Machines' lifetimes: TTL, claim window, show.
    pub timings: Timings,
    /// Passed on so that their logs look like the launcher's.
    pub log_format: &'static str,
    /// The site folder, the same path in the same image.
    pub site_root: String,
    /// This launcher Machine, in the metadata of what it creates; `None` outside Fly.
    pub launcher: Option<MachineId>,
}

/// What one visitor's Machine is for.
#[derive(Debug, Clone, Copy)]
pub struct VisitorMachine<'a> {
    pub image: &'a str,
    /// The launch, in the Machine's metadata.
    pub launch: &'a str,
    /// The owner's secret's hash: all the Machine knows of it.
    pub owner: &'a OwnerHash,
    /// What the Machine answers the readiness probe with (`server::readiness`).
    pub readiness: &'a ReadinessKey,
    /// The launcher's origin, the way back.
    pub origin: &'a str,
    /// Seconds since the epoch: the reaper's clock.
    pub launched_at: u64,
}

impl MachineSpec {
    /// What every Machine of the visitors' app needs to run `flyby` in `role`.
    pub fn server_env(&self, role: Role, origin: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("FLYBY_ROLE".to_owned(), role.as_str().to_owned()),
            ("FLYBY_LAUNCHER_URL".to_owned(), origin.to_owned()),
            ("FLYBY_LOG_FORMAT".to_owned(), self.log_format.to_owned()),
            // Every address: fly-proxy delivers to the Machine's IPv4 address, and the launcher
            // probes it over the 6PN, at its IPv6 one (`server::listen`).
            (
                "LEPTOS_SITE_ADDR".to_owned(),
                format!("[::]:{MACHINE_PORT}"),
            ),
            ("LEPTOS_SITE_ROOT".to_owned(), self.site_root.clone()),
        ])
    }

    /// The whole config of a visitor's Machine.
    pub fn visitor(&self, m: VisitorMachine<'_>) -> MachineConfig {
        let t = self.timings;
        let mut env = self.server_env(Role::Ephemeral, m.origin);
        env.extend([
            ("FLYBY_OWNER_HASH".to_owned(), m.owner.to_hex()),
            (
                "FLYBY_READINESS_KEY".to_owned(),
                m.readiness.expose().to_owned(),
            ),
            ("FLYBY_TTL_SECS".to_owned(), t.ttl.as_secs().to_string()),
            (
                "FLYBY_CLAIM_SECS".to_owned(),
                t.claim_window.as_secs().to_string(),
            ),
            ("FLYBY_SHOW_SECS".to_owned(), t.show.as_secs().to_string()),
        ]);
        let metadata = BTreeMap::from([
            (METADATA_ROLE.0.to_owned(), METADATA_ROLE.1.to_owned()),
            ("flyby_launch".to_owned(), m.launch.to_owned()),
            ("flyby_launched_at".to_owned(), m.launched_at.to_string()),
            (
                "flyby_launcher".to_owned(),
                self.launcher.map(|l| l.to_string()).unwrap_or_default(),
            ),
        ]);
        // Fly may route a visitor's later requests straight to their Machine, keyed on the
        // owner cookie, for as long as the Machine may live.
        let http_options = Some(HttpOptions {
            replay_cache: vec![ReplayCacheRule {
                path_prefix: "/".into(),
                ttl_seconds: t.ttl.as_secs() as u32,
                kind: ReplayCacheKind::Cookie,
                name: OWNER_COOKIE.into(),
            }],
        });
        MachineConfig {
            image: m.image.to_owned(),
            env,
            guest: Some(Guest {
                cpu_kind: "shared".into(),
                cpus: 1,
                memory_mb: 256,
            }),
            auto_destroy: true,
            restart: Some(Restart {
                policy: RestartPolicy::No,
                max_retries: None,
            }),
            services: vec![Service {
                protocol: "tcp".into(),
                internal_port: MACHINE_PORT,
                autostart: Some(false),
                autostop: Some(Autostop::Off),
                ports: vec![
                    Port {
                        port: Some(80),
                        handlers: vec!["http".into()],
                        force_https: true,
                        http_options: http_options.clone(),
                    },
                    Port {
                        port: Some(443),
                        handlers: vec!["tls".into(), "http".into()],
                        force_https: false,
                        http_options,
                    },
                ],
                ..Service::default()
            }],
            checks: BTreeMap::from([(
                "health".to_owned(),
                Check {
                    kind: "http".into(),
                    port: Some(MACHINE_PORT),
                    interval: Some(FlyDuration(Duration::from_secs(5))),
                    timeout: Some(FlyDuration(Duration::from_secs(2))),
                    grace_period: Some(FlyDuration(Duration::from_secs(1))),
                    method: Some("GET".into()),
                    path: Some(HEALTH_PATH.into()),
                },
            )]),
            metadata,
            stop_config: None,
        }
    }

    /// A warm pool Machine's whole config (`launcher::pool`): a visitor's Machine with no owner
    /// yet, only the key its launcher arms it with, and marked as the pool's.
    pub fn pooled(&self, image: &str, key: &ReadinessKey, origin: &str) -> MachineConfig {
        let nobody = OwnerHash::parse(&"0".repeat(64)).expect("64 hex digits");
        let mut config = self.visitor(VisitorMachine {
            image,
            launch: "",
            owner: &nobody,
            readiness: key,
            origin,
            launched_at: 0,
        });
        config.env.remove("FLYBY_OWNER_HASH");
        config.metadata.remove("flyby_launch");
        config.metadata.remove("flyby_launched_at");
        config
            .metadata
            .insert(super::pool::POOL_METADATA.to_owned(), "warm".to_owned());
        config
    }

    /// The concierge's whole config: the same image and service as a visitor's Machine, session
    /// replay cache included (its replays fill it too), but no owner and no end, always
    /// running, restarted on failure.
    pub fn concierge(&self, image: &str, origin: &str) -> MachineConfig {
        let nobody = OwnerHash::parse(&"0".repeat(64)).expect("64 hex digits");
        let mut config = self.visitor(VisitorMachine {
            image,
            launch: "",
            owner: &nobody,
            // Replaced with the concierge's own env below.
            readiness: &ReadinessKey::mint(),
            origin,
            launched_at: 0,
        });
        config.env = self.server_env(Role::Concierge, origin);
        config.metadata =
            BTreeMap::from([(CONCIERGE_ROLE.0.to_owned(), CONCIERGE_ROLE.1.to_owned())]);
        config.auto_destroy = false;
        config.restart = Some(Restart {
            policy: RestartPolicy::OnFailure,
            max_retries: None,
        });
        for service in &mut config.services {
            service.autostart = Some(false);
            service.autostop = Some(Autostop::Off);
        }
        config
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        fly::RegionCode,
        server::fly_api::{
            model::tests::{create_machine_schema, schema_errors},
            CreateMachineRequest,
        },
    };
    use serde_json::json;

    pub(crate) fn spec() -> MachineSpec {
        MachineSpec {
            timings: Timings {
                ttl: Duration::from_secs(120),
                claim_window: Duration::from_secs(60),
                show: Duration::from_secs(30),
            },
            log_format: "json",
            site_root: "/app/site".into(),
            launcher: Some(MachineId::parse("0123456789abcd").unwrap()),
        }
    }

    /// The create body a launch sends: a visitor's Machine in a slot, in the visitor's region.
    pub(crate) fn create_request() -> CreateMachineRequest {
        let owner = OwnerHash::parse(&"ab".repeat(32)).unwrap();
        CreateMachineRequest {
            name: Some("flyby-slot-3".into()),
            region: Some(RegionCode::parse("ams").unwrap()),
            config: spec().visitor(VisitorMachine {
                image: "registry.fly.io/flyby:deployment-01J9Z",
                launch: "5d41402abc4b2a76b9719d911017c592",
                owner: &owner,
                readiness: &ReadinessKey::parse(&"cd".repeat(32)).unwrap(),
                origin: "https://flyby.fly.dev",
                launched_at: 1_767_225_600,
            }),
            ..CreateMachineRequest::default()
        }
    }

    #[test]
    fn a_visitors_machine_is_exactly_this_config() {
        let body = serde_json::to_value(create_request()).unwrap();
        let replay_cache = json!({"replay_cache": [
            {"path_prefix": "/", "ttl_seconds": 120, "type": "cookie", "name": "flyby_owner"}
        ]});
        assert_eq!(
            body,
            json!({
                "name": "flyby-slot-3",
                "region": "ams",
                "config": {
                    "image": "registry.fly.io/flyby:deployment-01J9Z",
                    "env": {
                        "FLYBY_CLAIM_SECS": "60",
                        "FLYBY_LAUNCHER_URL": "https://flyby.fly.dev",
                        "FLYBY_LOG_FORMAT": "json",
                        "FLYBY_OWNER_HASH": "ab".repeat(32),
                        "FLYBY_READINESS_KEY": "cd".repeat(32),
                        "FLYBY_ROLE": "ephemeral",
                        "FLYBY_SHOW_SECS": "30",
                        "FLYBY_TTL_SECS": "120",
                        "LEPTOS_SITE_ADDR": "[::]:8080",
                        "LEPTOS_SITE_ROOT": "/app/site"
                    },
                    "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
                    "auto_destroy": true,
                    "restart": {"policy": "no"},
                    "services": [{
                        "protocol": "tcp",
                        "internal_port": 8080,
                        "autostart": false,
                        "autostop": false,
                        "ports": [
                            {"port": 80, "handlers": ["http"], "force_https": true,
                             "http_options": replay_cache},
                            {"port": 443, "handlers": ["tls", "http"],
                             "http_options": replay_cache}
                        ]
                    }],
                    "checks": {"health": {
                        "type": "http", "port": 8080, "interval": "5s", "timeout": "2s",
                        "grace_period": "1s", "method": "GET", "path": "/health"
                    }},
                    "metadata": {
                        "flyby": "ephemeral",
                        "flyby_launch": "5d41402abc4b2a76b9719d911017c592",
                        "flyby_launched_at": "1767225600",
                        "flyby_launcher": "0123456789abcd"
                    }
                }
            })
        );
    }

    #[test]
    fn the_create_bodies_validate_against_flys_openapi() {
        let visitor = serde_json::to_value(create_request()).unwrap();
        let concierge = serde_json::to_value(CreateMachineRequest {
            name: Some("flyby-concierge-0123456789".into()),
            config: spec().concierge("registry.fly.io/flyby:x", "https://flyby.fly.dev"),
            ..CreateMachineRequest::default()
        })
        .unwrap();
        for body in [&visitor, &concierge] {
            for strict in [false, true] {
                let errors = schema_errors(&create_machine_schema(strict), body);
                assert!(errors.is_empty(), "strict={strict}: {errors:#?}\n{body:#}");
            }
        }
        // And the check can fail on this very body.
        let mut broken = visitor;
        broken["config"]["restart"]["policy"] = json!("sometimes");
        assert!(!schema_errors(&create_machine_schema(false), &broken).is_empty());
    }

    #[test]
    fn the_concierge_belongs_to_nobody_never_ends_and_always_runs() {
        let config = spec().concierge("img", "https://flyby.fly.dev");
        assert_eq!(config.env["FLYBY_ROLE"], "concierge");
        assert!(!config.env.contains_key("FLYBY_OWNER_HASH"));
        assert!(!config.auto_destroy);
        assert_eq!(config.restart.unwrap().policy, RestartPolicy::OnFailure);
        assert_eq!(config.services[0].autostop, Some(Autostop::Off));
        assert_eq!(config.metadata["flyby"], "concierge");
    }
}
