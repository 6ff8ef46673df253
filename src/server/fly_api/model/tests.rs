//! The model against Fly's documented answers and OpenAPI schema.

use super::*;
use crate::server::launcher::machine_spec::tests::create_request;
use serde_json::json;

/// The fields a visitor's Machine leaves unset, set on it, serialise as Fly spells them
/// (what it sets is checked whole in `launcher::machine_spec`).
#[test]
fn the_fields_the_launcher_leaves_unset_serialise_as_fly_spells_them() {
    let mut request = create_request();
    request.config.services[0].concurrency = Some(Concurrency {
        kind: "requests".into(),
        soft_limit: Some(50),
        hard_limit: Some(100),
    });
    request.config.services[0].min_machines_running = Some(1);
    request.config.stop_config = Some(StopConfig {
        signal: Some("SIGTERM".into()),
        timeout: Some(Duration::from_secs(5).into()),
    });
    let body = serde_json::to_value(&request).unwrap();
    assert_eq!(
        body["config"]["services"][0]["concurrency"],
        json!({"type": "requests", "soft_limit": 50, "hard_limit": 100})
    );
    assert_eq!(body["config"]["services"][0]["min_machines_running"], 1);
    assert_eq!(
        body["config"]["stop_config"],
        json!({"signal": "SIGTERM", "timeout": "5s"})
    );
    assert_eq!(
        serde_json::from_value::<CreateMachineRequest>(body).unwrap(),
        request
    );
}

#[test]
fn nones_and_empties_are_left_out() {
    let body = serde_json::to_value(CreateMachineRequest {
        config: MachineConfig {
            image: "nginx".into(),
            ..MachineConfig::default()
        },
        ..CreateMachineRequest::default()
    })
    .unwrap();
    assert_eq!(body, json!({"config": {"image": "nginx"}}));
}

#[test]
fn the_create_body_round_trips() {
    let request = create_request();
    let json = serde_json::to_string(&request).unwrap();
    assert_eq!(
        serde_json::from_str::<CreateMachineRequest>(&json).unwrap(),
        request
    );
}

/// The create answer of Fly's docs (machines-resource, "Create a Machine").
const DOCS_CREATE_RESPONSE: &str = r#"{
  "id": "1857156b526dd8",
  "name": "aged-thunder-7371",
  "state": "created",
  "region": "ord",
  "image_ref": {
    "registry": "registry-1.docker.io",
    "repository": "library/ubuntu",
    "tag": "latest",
    "digest": "sha256:c9cf959fd83770dfdefd8fb42cfef0761432af36a764c077aed54bbc5bb25368",
    "labels": {"org.opencontainers.image.ref.name": "ubuntu"}
  },
  "instance_id": "01HEPA330HZ37A78TK080NAK1M",
  "private_ip": "fdaa:ff:ff:a7b:195:e229:8038:2",
  "created_at": "2023-11-08T01:52:30Z",
  "updated_at": "2023-11-08T01:52:30Z",
  "config": {
    "init": {"exec": ["/bin/sleep", "inf"]},
    "image": "registry-1.docker.io/library/ubuntu:latest",
    "auto_destroy": true,
    "restart": {"policy": "always"},
    "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
    "dns": {}
  },
  "events": [
    {"type": "launch", "status": "created", "source": "user", "timestamp": 1699408350300}
  ]
}"#;

#[test]
fn a_machine_from_the_fly_docs_deserializes() {
    let m: Machine = serde_json::from_str(DOCS_CREATE_RESPONSE).unwrap();
    assert_eq!(m.id.as_str(), "1857156b526dd8");
    assert_eq!(m.name, "aged-thunder-7371");
    assert_eq!(m.state, MachineState::Created);
    assert_eq!(m.region.as_str(), "ord");
    assert_eq!(m.instance_id, "01HEPA330HZ37A78TK080NAK1M");
    assert_eq!(m.private_ip, "fdaa:ff:ff:a7b:195:e229:8038:2");
    assert_eq!(
        m.created_at,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_699_408_350))
    );
    assert_eq!(m.events[0].kind, "launch");
    assert_eq!(m.events[0].timestamp, 1_699_408_350_300);
    let config = m.typed_config().unwrap();
    assert!(config.auto_destroy);
    assert_eq!(config.restart.unwrap().policy, RestartPolicy::Always);
    assert_eq!(config.guest.unwrap().memory_mb, 256);
    assert!(m.metadata().is_empty());
}

/// The update answer of Fly's docs: nulls, an empty policy, no `updated_at`.
#[test]
fn nulls_empty_strings_and_missing_fields_are_tolerated() {
    let m: Machine = serde_json::from_value(json!({
        "id": "73d8d46dbee589",
        "name": "lingering-moon-48",
        "state": "starting",
        "region": "cdg",
        "instance_id": "01G3SHPYE8XZ58GD4XRRF9CCKC",
        "private_ip": "fdaa:0:3ec2:a7b:5adc:6068:5b85:2",
        "config": {
            "env": null,
            "init": {"exec": null, "entrypoint": null, "cmd": null, "tty": false},
            "image": "flyio/fastify-functions",
            "metadata": null,
            "restart": {"policy": ""},
            "guest": {"cpu_kind": "", "cpus": 2, "memory_mb": 512}
        },
        "created_at": "2022-05-23T22:48:21Z",
        "events": null,
        "a_field_fly_adds_tomorrow": {"x": [1, 2]}
    }))
    .unwrap();
    assert_eq!(m.updated_at, None);
    assert!(m.events.is_empty());
    let config = m.typed_config().unwrap();
    assert!(config.env.is_empty());
    assert_eq!(
        config.restart.unwrap().policy,
        RestartPolicy::Other(String::new())
    );
}

#[test]
fn an_unknown_state_is_kept_not_rejected() {
    let m: Machine = serde_json::from_value(json!({
        "id": "0123456789abcd", "state": "hibernating", "region": "ams"
    }))
    .unwrap();
    assert_eq!(m.state, MachineState::Other("hibernating".into()));
    assert_eq!(m.state.to_string(), "hibernating");
    assert!(m.state.is_alive());
    for s in [
        "created",
        "started",
        "stopped",
        "suspended",
        "destroyed",
        "failed",
    ] {
        assert_eq!(MachineState::parse(s).as_str(), s);
    }
}

#[test]
fn metadata_reads_string_values_only() {
    let m: Machine = serde_json::from_value(json!({
        "id": "0123456789abcd", "state": "started", "region": "ams",
        "config": {"metadata": {"flyby": "ephemeral", "n": 3}}
    }))
    .unwrap();
    assert_eq!(
        m.metadata(),
        BTreeMap::from([("flyby".to_owned(), "ephemeral".to_owned())])
    );
}

#[test]
fn autostop_reads_booleans_and_strings() {
    for (json, want) in [
        (json!(false), Autostop::Off),
        (json!(true), Autostop::Stop),
        (json!("off"), Autostop::Off),
        (json!("stop"), Autostop::Stop),
        (json!("suspend"), Autostop::Suspend),
    ] {
        assert_eq!(serde_json::from_value::<Autostop>(json).unwrap(), want);
    }
    assert!(serde_json::from_value::<Autostop>(json!("sometimes")).is_err());
    assert_eq!(
        serde_json::to_value(Autostop::Suspend).unwrap(),
        json!("suspend")
    );
}

#[test]
fn durations_are_go_strings() {
    for (d, s) in [
        (Duration::from_secs(10), "10s"),
        (Duration::ZERO, "0s"),
        (Duration::from_millis(1500), "1500ms"),
        (Duration::from_nanos(1_000_001), "1000001ns"),
    ] {
        assert_eq!(serde_json::to_value(FlyDuration(d)).unwrap(), json!(s));
        assert_eq!(
            serde_json::from_value::<FlyDuration>(json!(s)).unwrap(),
            FlyDuration(d)
        );
    }
    assert_eq!(
        serde_json::from_value::<FlyDuration>(json!("1m30s")).unwrap(),
        FlyDuration(Duration::from_secs(90))
    );
    assert_eq!(
        serde_json::from_value::<FlyDuration>(json!(2_000_000_000u64)).unwrap(),
        FlyDuration(Duration::from_secs(2))
    );
}

#[test]
fn the_list_filter_is_applied_to_what_comes_back() {
    let machine = |state: &str, region: &str, flyby: &str| -> Machine {
        serde_json::from_value(json!({
            "id": "0123456789abcd", "state": state, "region": region,
            "config": {"metadata": {"flyby": flyby}}
        }))
        .unwrap()
    };
    let filter = ListFilter {
        metadata: vec![("flyby".into(), "ephemeral".into())],
        region: Some(RegionCode::parse("ams").unwrap()),
        include_deleted: false,
    };
    assert!(filter.matches(&machine("started", "ams", "ephemeral")));
    assert!(!filter.matches(&machine("started", "ams", "launcher")));
    assert!(!filter.matches(&machine("started", "lhr", "ephemeral")));
    assert!(!filter.matches(&machine("destroyed", "ams", "ephemeral")));
    let with_deleted = ListFilter {
        include_deleted: true,
        ..filter
    };
    assert!(with_deleted.matches(&machine("destroyed", "ams", "ephemeral")));
}

// --- The create body against Fly's OpenAPI description -----------------------------------

const OPENAPI: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/fly-machines-openapi.yaml"
);

/// The `CreateMachineRequest` schema as a standalone JSON Schema: the OpenAPI components
/// become `$defs` and their `$ref`s are rewritten to match. With `strict`, every object
/// schema also refuses properties it does not declare, which catches a misspelt field (the
/// plain schema allows anything extra).
pub(crate) fn create_machine_schema(strict: bool) -> Value {
    let yaml = std::fs::read_to_string(OPENAPI).expect("tests/data/fly-machines-openapi.yaml");
    let openapi: Value = serde_yaml::from_str(&yaml).expect("valid YAML");
    let mut defs = openapi["components"]["schemas"].clone();
    assert!(defs.get("CreateMachineRequest").is_some());
    if strict {
        // Fields Fly documents elsewhere but this (older) OpenAPI file lacks.
        defs["api.HTTPOptions"]["properties"]["replay_cache"] = json!({
            "type": "array",
            "items": {
                "type": "object",
                "required": ["path_prefix", "ttl_seconds", "type", "name"],
                "additionalProperties": false,
                "properties": {
                    "path_prefix": {"type": "string"},
                    "ttl_seconds": {"type": "integer", "minimum": 10},
                    "type": {"enum": ["cookie", "header"]},
                    "name": {"type": "string"},
                    "allow_bypass": {"type": "boolean"}
                }
            }
        });
        close_objects(&mut defs);
    }
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": "#/$defs/CreateMachineRequest",
        "$defs": defs,
    });
    rewrite_refs(&mut schema);
    schema
}

fn rewrite_refs(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref") {
                if let Some(name) = r.strip_prefix("#/components/schemas/") {
                    *r = format!("#/$defs/{name}");
                }
            }
            map.values_mut().for_each(rewrite_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

fn close_objects(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

pub(crate) fn schema_errors(schema: &Value, body: &Value) -> Vec<String> {
    let validator = jsonschema::validator_for(schema).expect("a valid JSON Schema");
    validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

#[test]
fn the_schema_check_can_fail() {
    // Proof that the schema checks (`launcher::machine_spec`) are not vacuous: wrong types and
    // a misspelt field are caught.
    let mut body = serde_json::to_value(create_request()).unwrap();
    body["config"]["guest"]["memory_mb"] = json!("256");
    assert!(!schema_errors(&create_machine_schema(false), &body).is_empty());
    let mut body = serde_json::to_value(create_request()).unwrap();
    body["config"]["restart"]["policy"] = json!("never");
    assert!(!schema_errors(&create_machine_schema(false), &body).is_empty());
    let mut body = serde_json::to_value(create_request()).unwrap();
    body["config"]["auto_destory"] = json!(true);
    assert!(schema_errors(&create_machine_schema(false), &body).is_empty());
    assert!(!schema_errors(&create_machine_schema(true), &body).is_empty());
}
