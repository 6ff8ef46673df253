//! A Machine as Fly's API shows it: the JSON of `api.Machine`, with the image reference split
//! the way Docker reads it and times in RFC 3339.

use super::*;

/// A Machine as Fly's API shows it.
pub fn machine_json(machine: &MachineRecord) -> Value {
    json!({
        "id": machine.id,
        "name": machine.name,
        "state": machine.state.as_str(),
        "region": machine.region,
        "image_ref": image_ref(machine.image()),
        "instance_id": machine.instance_id,
        // Fly: the Machine's 6PN IPv6 address; so here, but with --network shared.
        "private_ip": machine.addrs.private.to_string(),
        "config": machine.config,
        "events": machine.events,
        "created_at": rfc3339(machine.created_at),
        "updated_at": rfc3339(machine.updated_at),
        "host_status": "ok",
    })
}

pub(super) fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// `image_ref` as Fly splits an image reference: registry, repository, tag, digest.
pub(super) fn image_ref(image: &str) -> Value {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let (name, tag) = match name.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (name, "latest"),
    };
    let (registry, repository) = match name.split_once('/') {
        Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
            (first.to_owned(), path.to_owned())
        }
        Some(_) => ("registry-1.docker.io".to_owned(), name.to_owned()),
        None => ("registry-1.docker.io".to_owned(), format!("library/{name}")),
    };
    let mut image_ref = json!({
        "registry": registry,
        "repository": repository,
        "tag": tag,
        "labels": {},
    });
    if let Some(digest) = digest {
        image_ref["digest"] = json!(digest);
    }
    image_ref
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs_split_like_docker() {
        assert_eq!(
            image_ref("registry.fly.io/flyby:local"),
            json!({"registry": "registry.fly.io", "repository": "flyby", "tag": "local", "labels": {}})
        );
        assert_eq!(image_ref("ubuntu")["repository"], "library/ubuntu");
        assert_eq!(image_ref("ubuntu")["tag"], "latest");
        assert_eq!(image_ref("flyio/app:1")["registry"], "registry-1.docker.io");
        assert_eq!(
            image_ref("localhost:5000/app@sha256:abc")["digest"],
            "sha256:abc"
        );
    }
}
