//! flake.nix and the hand-written flake.lock: no network reaches nixpkgs here, so check what
//! can be checked offline with a real nix: flake.nix parses, its inputs and outputs agree,
//! and flake.lock is a valid version-7 lock whose root inputs are exactly flake.nix's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn nix_eval_json(expr: &str) -> Value {
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "-E", expr])
        .output()
        .expect("running nix-instantiate (apt-get install nix-bin)");
    assert!(
        out.status.success(),
        "{expr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn flake_nix_parses() {
    let out = Command::new("nix-instantiate")
        .arg("--parse")
        .arg(root().join("flake.nix"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn flake_lock_matches_flake_nix() {
    let flake = root().join("flake.nix");
    let inputs = nix_eval_json(&format!("(import {}).inputs", flake.display()));
    let inputs = inputs.as_object().unwrap();
    let names: BTreeSet<&str> = inputs.keys().map(String::as_str).collect();
    assert!(names.contains("nixpkgs"));

    // Every input is an argument of `outputs`, next to `self`.
    let args = nix_eval_json(&format!(
        "builtins.functionArgs (import {}).outputs",
        flake.display()
    ));
    let args: BTreeSet<&str> = args
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = names.clone();
    expected.insert("self");
    assert_eq!(args, expected);

    let lock: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("flake.lock")).unwrap()).unwrap();
    assert_eq!(lock["version"], 7);
    let root_node = lock["root"].as_str().unwrap();
    let root_inputs = lock["nodes"][root_node]["inputs"].as_object().unwrap();
    let locked_names: BTreeSet<&str> = root_inputs.keys().map(String::as_str).collect();
    assert_eq!(
        locked_names, names,
        "flake.lock's root inputs must be flake.nix's inputs"
    );

    for (name, node) in root_inputs {
        let node = &lock["nodes"][node.as_str().unwrap()];
        let (locked, original) = (&node["locked"], &node["original"]);
        assert_eq!(locked["type"], "github", "{name}");
        let rev = locked["rev"].as_str().unwrap();
        assert!(
            rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}: rev {rev}"
        );
        assert!(
            locked["narHash"].as_str().unwrap().starts_with("sha256-"),
            "{name}"
        );
        assert!(locked["lastModified"].as_u64().unwrap() > 0, "{name}");
        // The lock's `original` is the url flake.nix asks for.
        let url = inputs[name]["url"].as_str().unwrap();
        let from_lock = format!(
            "github:{}/{}/{}",
            original["owner"].as_str().unwrap(),
            original["repo"].as_str().unwrap(),
            original["ref"].as_str().unwrap()
        );
        assert_eq!(url, from_lock, "{name}");
        assert_eq!(locked["owner"], original["owner"]);
        assert_eq!(locked["repo"], original["repo"]);
    }
}
