//! The `flyby` binary as `scripts/ordered-cc` links it: the functions a visitor's Machine runs
//! (`scripts/machine-code.order`) gathered in one stretch of its code, which is what keeps a
//! Machine's resident memory within its budget (BENCHMARKS.md, row 5). A link that silently
//! fell back to the compiler's layout (another linker, a renamed binary, a list that no longer
//! matches anything) would cost every Machine 1.4 MB idle, 2.8 MB after its owner's journey, and
//! pass every other test.
#![cfg(all(feature = "ssr", target_os = "linux", target_arch = "x86_64"))]

use std::{
    collections::HashSet,
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Each name's key as `scripts/ordered-cc` makes it (the one definition of a key).
fn keys(names: &[String]) -> Vec<String> {
    let mut filter = Command::new(root().join("scripts/ordered-cc"))
        .arg("--key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("scripts/ordered-cc runs");
    let mut stdin = filter.stdin.take().unwrap();
    let input = names.join("\n") + "\n";
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = filter.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The binary's functions: address, size, name.
fn functions(binary: &str) -> Vec<(u64, u64, String)> {
    let output = Command::new("nm")
        .args(["--defined-only", "--print-size", binary])
        .output()
        .expect("nm (binutils) runs");
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            // Symbols without a size (some of assembly's) have three fields: not functions
            // this test weighs.
            let [address, size, kind, name] =
                <[&str; 4]>::try_from(line.split_whitespace().collect::<Vec<_>>()).ok()?;
            matches!(kind, "t" | "T" | "W" | "w").then(|| {
                (
                    u64::from_str_radix(address, 16).unwrap(),
                    u64::from_str_radix(size, 16).unwrap(),
                    name.to_owned(),
                )
            })
        })
        .collect()
}

#[test]
fn keys_drop_what_a_rebuild_changes_and_nothing_else() {
    let names = [
        "_ZN5tokio7runtime4park5clone17h52bb7bf74aa93a4cE.llvm.14719170973338261088",
        "_ZN5tokio7runtime4park5clone17h0123456789abcdefE",
        "_RNvNtCsjrHSEGnQ3l9_3std2io5stdin",
        "_RNvNtCsAbC123xyz_3std2io5stdin",
        "_ZN5tokio7runtime4park6unpark17h52bb7bf74aa93a4cE",
        "ring_core_0_17_14__sha256_block_data_order_hw",
    ]
    .map(str::to_owned);
    let keys = keys(&names);
    assert_eq!(keys[0], keys[1], "a legacy name's hash and LLVM's suffix");
    assert_eq!(keys[2], keys[3], "a v0 name's crate disambiguator");
    assert_ne!(keys[0], keys[4], "another function keeps its own key");
    assert_eq!(keys[5], names[5], "a C or assembly name is its own key");
}

#[test]
fn a_machines_functions_are_linked_together() {
    let list: HashSet<String> = std::fs::read_to_string(root().join("scripts/machine-code.order"))
        .expect("scripts/machine-code.order")
        .lines()
        .map(str::to_owned)
        .collect();
    let functions = functions(env!("CARGO_BIN_EXE_flyby"));
    let names: Vec<String> = functions.iter().map(|(_, _, n)| n.clone()).collect();
    let keys = keys(&names);
    let listed: Vec<&(u64, u64, String)> = functions
        .iter()
        .zip(&keys)
        .filter(|(_, key)| list.contains(*key))
        .map(|(f, _)| f)
        .collect();
    let found: HashSet<&String> = keys.iter().filter(|k| list.contains(*k)).collect();
    assert!(
        found.len() * 10 >= list.len() * 8,
        "only {} of the {} functions listed are in the binary: run scripts/code-order",
        found.len(),
        list.len()
    );
    // The stretch from the first listed function to the end of the last is nearly all listed
    // functions (what else is in it: padding, and the other functions of an assembly section).
    let start = listed.iter().map(|f| f.0).min().unwrap();
    let end = listed.iter().map(|f| f.0 + f.1).max().unwrap();
    let listed_bytes: u64 = listed.iter().map(|f| f.1).sum();
    let code_bytes: u64 = functions.iter().map(|f| f.1).sum();
    assert!(
        listed_bytes * 10 >= (end - start) * 8,
        "the listed functions ({listed_bytes} bytes) are spread over {} bytes of {code_bytes}: \
         the binary was not linked by scripts/ordered-cc with lld",
        end - start
    );
}
