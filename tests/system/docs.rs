//! The docs' tables of what a user sets, against the code that reads it: README's variables
//! against `config::VARIABLES`, the flyby-local manual's flags against its command line. A
//! variable or a flag added, renamed or given another default without its line fails here.
#![cfg(feature = "ssr")]

use clap::CommandFactory;
use flyby::{local::Args, server::config::VARIABLES};
use std::path::Path;

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of the first table under `heading`: its cells, trimmed, header and rule left out.
fn table_under(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let section = doc
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no heading {heading:?}"))
        .1;
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|row| {
            // `\|` is a pipe inside a cell.
            let row = row.replace("\\|", "\u{1}");
            row.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().replace('\u{1}', "|"))
                .collect()
        })
        .collect()
}

/// The first code span of a cell: `` `NAME` `` -> `NAME`.
fn code(cell: &str) -> &str {
    cell.split('`').nth(1).unwrap_or(cell)
}

#[test]
fn readmes_variables_are_flybys_in_its_order_with_its_defaults() {
    let rows = table_under(&read("README.md"), "## Configuration");
    let names: Vec<&str> = rows.iter().map(|r| code(&r[0])).collect();
    let known: Vec<&str> = VARIABLES.iter().map(|v| v.name).collect();
    assert_eq!(
        names, known,
        "README's table of variables, against config::VARIABLES"
    );
    for (row, variable) in rows.iter().zip(VARIABLES) {
        let shown = &row[1];
        match variable.default {
            None => assert!(shown.starts_with("required"), "{}: {shown}", variable.name),
            Some("") => assert!(
                ["unset", "derived"].contains(&shown.as_str()) || shown.starts_with("required for"),
                "{}: {shown}",
                variable.name
            ),
            Some(default) => assert_eq!(shown, &format!("`{default}`"), "{}", variable.name),
        }
    }
}

#[test]
fn the_manuals_flags_are_flyby_locals_in_its_order_with_its_defaults() {
    let rows = table_under(&read("docs/local-platform.md"), "## Flags");
    let command = Args::command();
    let flags: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|a| a.get_long().is_some() && !["help", "version"].contains(&a.get_long().unwrap()))
        .collect();
    let documented: Vec<String> = rows
        .iter()
        .map(|r| code(&r[0]).split_whitespace().next().unwrap().to_owned())
        .collect();
    let known: Vec<String> = flags
        .iter()
        .map(|a| format!("--{}", a.get_long().unwrap()))
        .collect();
    assert_eq!(
        documented, known,
        "the manual's table of flags, against flyby-local's"
    );
    for (row, flag) in rows.iter().zip(&flags) {
        for default in flag.get_default_values() {
            let default = default.to_string_lossy();
            // The token's default is a placeholder of the manual's own words.
            if flag.get_long() == Some("api-token") {
                continue;
            }
            assert!(
                row[1].contains(default.as_ref()),
                "--{}: the manual says {:?}, the default is {default}",
                flag.get_long().unwrap(),
                row[1]
            );
        }
    }
}
