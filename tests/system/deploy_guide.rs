//! README's "Deploy to Fly.io", walked from top to bottom against the recipe (`make
//! deploy-check`): its shell blocks, read as the commands a reader would type, must do each step
//! Fly needs, in an order that works, and the one step that edits a file of this repository
//! (fly.toml) is run, on a copy, to show that it does what it says.
#![cfg(feature = "ssr")]

use flyby::server::config::Config;
use std::{path::Path, process::Command};
use toml::Value as Toml;

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The commands of the shell blocks of README's deploy section, one per entry: continuation
/// lines joined, comments and blank lines left out.
fn guide_commands() -> Vec<String> {
    let readme = read("README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Deploy to Fly.io"))
        .expect("README has a \"Deploy to Fly.io\" section");
    let mut commands = Vec::new();
    let mut in_shell = false;
    let mut pending = String::new();
    for line in section.lines() {
        if line.starts_with("```") {
            in_shell = line == "```sh";
            continue;
        }
        if !in_shell {
            continue;
        }
        let code = match line.find(" #") {
            Some(at) if !line[..at].contains('\'') => &line[..at],
            _ => line,
        };
        let code = code.trim();
        if code.is_empty() || code.starts_with('#') {
            continue;
        }
        match code.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(code);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    assert!(pending.is_empty(), "a continuation line ends the guide");
    commands
}

/// The position of the first command that starts with `prefix` and contains every `part`.
fn step(commands: &[String], prefix: &str, parts: &[&str]) -> usize {
    commands
        .iter()
        .position(|c| c.starts_with(prefix) && parts.iter().all(|p| c.contains(p)))
        .unwrap_or_else(|| {
            panic!(
                "the guide must say `{prefix} … {}`; its commands:\n{}",
                parts.join(" … "),
                commands.join("\n")
            )
        })
}

#[test]
fn the_deploy_guide_does_each_step_fly_needs_in_an_order_that_works() {
    let c = guide_commands();
    let check = step(&c, "make deploy-check", &[]);
    let login = step(&c, "fly auth login", &[]);
    let launcher_app = step(&c, "fly apps create \"$LAUNCHER\"", &["--org \"$ORG\""]);
    let machines_app = step(&c, "fly apps create \"$MACHINES\"", &["--org \"$ORG\""]);
    // Apps whose services come from Machine configs get no public address by themselves.
    let v6 = step(&c, "fly ips allocate-v6", &["-a \"$MACHINES\""]);
    let v4 = step(&c, "fly ips allocate-v4", &["--shared", "-a \"$MACHINES\""]);
    let token = step(
        &c,
        "fly secrets set",
        &[
            "-a \"$LAUNCHER\"",
            "FLY_API_TOKEN=",
            "fly tokens create deploy -a \"$MACHINES\"",
        ],
    );
    let names = step(&c, "sed -i", &["fly.toml"]);
    let deploy = step(&c, "fly deploy", &[]);
    let health = step(&c, "curl", &["https://$LAUNCHER.fly.dev/health"]);
    let first_launch = step(&c, "fly machine list", &["-a \"$MACHINES\""]);
    for (before, after, why) in [
        (check, login, "check the recipe before touching Fly"),
        (login, launcher_app, "log in first"),
        (machines_app, v6, "an app gets addresses once it exists"),
        (machines_app, v4, "an app gets addresses once it exists"),
        (machines_app, token, "the token is for the Machines app"),
        (token, deploy, "the launcher needs its token when it starts"),
        (names, deploy, "the deploy reads fly.toml"),
        (
            v6,
            deploy,
            "the first launch hands the visitor to https://$MACHINES.fly.dev",
        ),
        (
            deploy,
            health,
            "there is nothing to check before the deploy",
        ),
        (
            health,
            first_launch,
            "the first launch comes after the launcher serves",
        ),
    ] {
        assert!(
            before < after,
            "{why}: `{}` before `{}`",
            c[before],
            c[after]
        );
    }
    assert!(launcher_app < deploy);
    // A deploy-time variable lasts one deploy: the next plain `fly deploy` loses it.
    let deploy = &c[deploy];
    assert!(
        !deploy.contains(" -e ") && !deploy.contains("--env"),
        "`{deploy}`: set the app names in fly.toml, not on the deploy command"
    );
}

/// Step 5, run as the guide says on a copy of fly.toml: the app names change, nothing else, and
/// flyby accepts the result.
#[test]
fn the_guides_edit_of_fly_toml_puts_your_app_names_in_it_and_changes_nothing_else() {
    let c = guide_commands();
    let edit = &c[step(&c, "sed -i", &["fly.toml"])];
    let dir = std::env::temp_dir().join(format!("flyby-guide-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let original = read("fly.toml");
    std::fs::write(dir.join("fly.toml"), &original).unwrap();
    let status = Command::new("bash")
        .args(["-euo", "pipefail", "-c", edit])
        .current_dir(&dir)
        .env("LAUNCHER", "flyby-guide-test")
        .env("MACHINES", "flyby-guide-test-machines")
        .status()
        .expect("bash runs");
    assert!(status.success(), "`{edit}` failed");
    let edited: Toml = std::fs::read_to_string(dir.join("fly.toml"))
        .unwrap()
        .parse()
        .expect("still TOML");
    std::fs::remove_dir_all(&dir).unwrap();
    let mut expected: Toml = original.parse().unwrap();
    assert_ne!(expected["app"].as_str(), Some("flyby-guide-test"));
    expected["app"] = Toml::String("flyby-guide-test".into());
    expected["env"]["FLYBY_EPHEMERAL_APP"] = Toml::String("flyby-guide-test-machines".into());
    assert_eq!(edited, expected, "only the two names change");
    // And the launcher starts with it, naming the reader's Machines app.
    let env = edited["env"].as_table().unwrap().clone();
    let config = Config::from_lookup(|name| match name {
        "FLY_API_TOKEN" => Some("t".into()),
        "FLY_APP_NAME" => edited["app"].as_str().map(str::to_owned),
        _ => env.get(name).and_then(Toml::as_str).map(str::to_owned),
    })
    .unwrap_or_else(|e| panic!("flyby refuses the edited fly.toml: {e}"));
    assert_eq!(config.ephemeral_app, "flyby-guide-test-machines");
}
