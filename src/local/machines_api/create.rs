//! `POST /v1/apps/{app}/machines`: a create body validated the way Fly validates it (image,
//! region, name, guest, restart policy, stop config), the Machine given its place on the
//! network, recorded, and handed to its runner. The launchers booted at start come through
//! here too.

use super::*;
use json::machine_json;

/// The create body (`CreateMachineRequest`). `lease_ttl`, `lsvd` and
/// `skip_service_registration` are accepted and ignored locally.
#[derive(Debug, Deserialize)]
pub(super) struct CreateRequest {
    name: Option<String>,
    region: Option<String>,
    config: Option<Map<String, Value>>,
    skip_launch: Option<bool>,
    #[allow(dead_code)]
    skip_service_registration: Option<bool>,
    #[allow(dead_code)]
    lease_ttl: Option<u64>,
    #[allow(dead_code)]
    lsvd: Option<bool>,
}

pub(super) async fn create(
    State(platform): State<Arc<Platform>>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let record = create_machine(&platform, &app, &body).await?;
    Ok(Json(machine_json(&record)))
}

/// Creates a Machine from a create body, as `POST /v1/apps/{app}/machines` does (the launchers
/// booted at start come through here too). Answers with the Machine as it is created, in state
/// `created`; its runner then boots it unless `skip_launch`.
pub async fn create_machine(
    platform: &Arc<Platform>,
    app: &str,
    body: &[u8],
) -> Result<MachineRecord, ApiError> {
    create_machine_with_secrets(platform, app, body, &[]).await
}

/// [`create_machine`], with `secrets` added to the process's environment but kept out of the
/// config the API shows, as Fly does with app secrets.
pub async fn create_machine_with_secrets(
    platform: &Arc<Platform>,
    app: &str,
    body: &[u8],
    secrets: &[(String, String)],
) -> Result<MachineRecord, ApiError> {
    if !platform.registry.app_exists(app) {
        return Err(ApiError::AppNotFound);
    }
    let request: CreateRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?;
    let mut config = request.config.ok_or_else(image_required)?;
    let typed: MachineConfig = serde_json::from_value(Value::Object(config.clone()))
        .map_err(|e| ApiError::BadRequest(format!("invalid config: {e}")))?;
    let image = typed
        .image
        .clone()
        .filter(|i| !i.trim().is_empty())
        .ok_or_else(image_required)?;
    let program = resolve_program(platform, &image)?;
    validate_config(&typed)?;
    let region = resolve_region(platform, request.region.as_deref())?;
    if platform.faults.region_full(region.as_str()) {
        return Err(ApiError::NoCapacity);
    }
    if platform.supervisor.is_closed() {
        return Err(SupervisorError::ShuttingDown.into());
    }
    // Fly fills in the guest it chose; a config without one gets the smallest Machine.
    config
        .entry("guest")
        .or_insert_with(|| json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}));
    let config = Value::Object(config);
    let internal_ports: Vec<u16> = typed
        .services
        .iter()
        .flatten()
        .filter_map(|s| u16::try_from(s.internal_port?).ok())
        .collect();
    let net = platform
        .network
        .machine(&internal_ports)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot set up the Machine's network: {e}")))?;
    let now = SystemTime::now();
    let mut record = MachineRecord {
        id: fresh_machine_id(platform),
        name: String::new(),
        app: app.to_owned(),
        region,
        state: MachineState::Created,
        instance_id: new_ulid(),
        addrs: net.addrs,
        config,
        spec: typed.clone(),
        created_at: now,
        updated_at: now,
        events: vec![MachineEvent::new("launch", MachineState::Created, "user")],
        pid: None,
        routable_from: None,
    };
    insert_named(
        platform,
        &mut record,
        request.name.filter(|n| !n.is_empty()),
    )?;

    let guest = if platform.faults.take_never_start(&record.name) {
        GuestKind::NeverStart
    } else if platform.faults.take_never_serve(&record.name) {
        GuestKind::NeverServe
    } else if platform.faults.take_impostor(&record.name) {
        GuestKind::Impostor
    } else {
        GuestKind::Process
    };
    let mut spec = LaunchSpec::new(&record, &typed, program, guest, net);
    spec.add_secrets(secrets);
    if let Err(e) = platform.supervisor.launch(
        platform,
        &record,
        spec,
        request.skip_launch.unwrap_or(false),
    ) {
        platform.registry.update(app, record.id, |m| {
            m.state = MachineState::Destroyed;
        });
        return Err(e.into());
    }
    tracing::info!(app, machine = %record.id, name = %record.name, region = %record.region, image, "Machine created");
    Ok(record)
}

// Undocumented: Fly's exact answer to a config without an image; the docs only say it is the
// one required field.
pub(super) fn image_required() -> ApiError {
    ApiError::Unprocessable("config.image is required".to_owned())
}

/// The executable an image maps to; it must exist now, so a typo fails the create instead of
/// the Machine.
pub(super) fn resolve_program(
    platform: &Platform,
    image: &str,
) -> Result<std::path::PathBuf, ApiError> {
    let program = platform.image_program(image).ok_or_else(|| {
        ApiError::Unprocessable(format!(
            "image {image:?} is not mapped to a local executable: start flyby-local with \
             --image {image}=/path/to/executable"
        ))
    })?;
    if !program.is_file() {
        return Err(ApiError::Unprocessable(format!(
            "image {image:?} maps to {}, which is not a file (build it, or map the image with \
             --image {image}=/path/to/executable)",
            program.display()
        )));
    }
    Ok(program.to_owned())
}

pub(super) fn validate_config(config: &MachineConfig) -> Result<(), ApiError> {
    for (i, service) in config.services.iter().flatten().enumerate() {
        if !matches!(service.internal_port, Some(1..=65535)) {
            return Err(ApiError::Unprocessable(format!(
                "services[{i}].internal_port must be between 1 and 65535"
            )));
        }
    }
    if RestartPolicy::from_config(config.restart.as_ref()).is_none() {
        return Err(ApiError::Unprocessable(
            "invalid restart.policy: expected \"no\", \"always\" or \"on-failure\"".to_owned(),
        ));
    }
    if let Some(memory) = config.guest.as_ref().and_then(|g| g.memory_mb) {
        if memory == 0 || !memory.is_multiple_of(256) {
            return Err(ApiError::Unprocessable(format!(
                "invalid guest.memory_mb {memory}: memory must be a multiple of 256 MB"
            )));
        }
    }
    if let Some(stop) = &config.stop_config {
        if stop.signal.as_ref().is_some_and(|s| s.resolve().is_none()) {
            return Err(ApiError::Unprocessable(
                "invalid stop_config.signal".to_owned(),
            ));
        }
        if stop.timeout.as_ref().is_some_and(|t| t.resolve().is_none()) {
            return Err(ApiError::Unprocessable(
                "invalid stop_config.timeout".to_owned(),
            ));
        }
    }
    Ok(())
}

/// The create's region, or the edge region (Fly: "the region nearest you") when absent.
pub(super) fn resolve_region(
    platform: &Platform,
    region: Option<&str>,
) -> Result<RegionCode, ApiError> {
    let Some(code) = region.filter(|r| !r.is_empty()) else {
        return Ok(platform.args.edge_region);
    };
    RegionCode::parse(code)
        .ok()
        .filter(|r| r.region().is_some())
        .ok_or_else(|| ApiError::Unprocessable(format!("invalid region {code:?}")))
}

/// 14 random lowercase hex characters, unused on this platform.
pub(super) fn fresh_machine_id(platform: &Platform) -> MachineId {
    loop {
        let hex = format!("{:014x}", rand::random::<u64>() & 0x00ff_ffff_ffff_ffff);
        let id = MachineId::parse(&hex).expect("14 lowercase hex characters");
        if platform.registry.find(id).is_none() {
            return id;
        }
    }
}

/// Inserts the Machine under its requested name (refused if taken), or under a generated one.
pub(super) fn insert_named(
    platform: &Platform,
    record: &mut MachineRecord,
    requested: Option<String>,
) -> Result<(), ApiError> {
    if let Some(name) = requested {
        record.name = name;
        return Ok(platform.registry.insert_new(record.clone())?);
    }
    loop {
        record.name = generated_name();
        match platform.registry.insert_new(record.clone()) {
            Err(NameTaken { .. }) => continue,
            Ok(()) => return Ok(()),
        }
    }
}

/// A name like Fly generates them: `adjective-noun-1234`.
pub(super) fn generated_name() -> String {
    const ADJECTIVES: &[&str] = &[
        "aged", "bold", "calm", "damp", "eager", "fancy", "gentle", "hidden", "icy", "jolly",
        "keen", "lively", "misty", "noisy", "old", "proud", "quiet", "rough", "silent", "tiny",
        "summer", "winter", "young", "wild",
    ];
    const NOUNS: &[&str] = &[
        "wind", "thunder", "river", "sun", "moon", "forest", "glade", "field", "flower", "leaf",
        "lake", "meadow", "night", "dawn", "sea", "snow", "star", "brook", "cloud", "rain",
    ];
    let pick = |words: &[&'static str]| words[rand::random_range(0..words.len())];
    format!(
        "{}-{}-{}",
        pick(ADJECTIVES),
        pick(NOUNS),
        rand::random_range(1000..10_000)
    )
}
