//! What keeps edict fast with real closures, checked for what it does (timings live in
//! bench/): paths of the results that this machine's binary cache has come from that
//! cache, not over the ssh link; `--no-substitute` brings everything from HOST.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use lab::{Flavour, HostSpec, Lab, LocalDaemon, describe};
use std::process::Command;

/// `nix path-info --sigs PATH`: the signatures this machine's store holds for it.
fn signatures(path: &str) -> String {
    let out = Command::new("nix")
        .env("NIX_CONFIG", lab::CLIENT_NIX_CONFIG)
        .args(["--extra-experimental-features", "nix-command", "path-info"])
        .args(["--sigs", path])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .split_once('\t')
        .map(|(_, s)| s.trim().to_string())
        .unwrap_or_default()
}

/// Removes `paths` from this machine's store (nothing else may hold them).
fn forget(paths: &[&str]) {
    let out = Command::new("nix-store")
        .env("NIX_CONFIG", lab::CLIENT_NIX_CONFIG)
        .arg("--delete")
        .args(paths)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
}

/// Runs `sh -c script`, which must succeed; its stdout.
fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .env("NIX_CONFIG", lab::CLIENT_NIX_CONFIG)
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The flake's `dep` is on a signed binary cache that this machine's nix-daemon uses; HOST
/// builds `top`, which needs it. Back here, `dep` carries the cache's signature (it came
/// from the cache) and `top` none (it came from HOST, which signs nothing). With
/// `--no-substitute`, `dep` comes from HOST too.
#[test]
fn results_come_from_this_machine_s_cache_when_it_has_them() {
    for flavour in Flavour::ALL {
        let mut lab = Lab::new();
        lab.start(HostSpec::new("builder", flavour));
        let user = lab.local_user("edict-subst");
        let tag = lab::unique_tag();
        let dir = user.workdir("subst");
        lab::write_rich_flake(&dir, &tag);

        // The cache: `dep`, built here, signed, copied to a file:// cache, then forgotten.
        let cache = tempfile::tempdir().unwrap();
        let key = cache.path().join("key.private");
        let public = sh(&format!(
            "nix --extra-experimental-features nix-command key generate-secret --key-name cache-1 > {0} && nix --extra-experimental-features nix-command key convert-secret-to-public < {0}",
            key.display()
        ));
        let dep = sh(&format!(
            "nix --extra-experimental-features 'nix-command flakes' build --no-link {0}#dep && nix --extra-experimental-features 'nix-command flakes' eval --raw {0}#dep.outPath",
            dir.display()
        ));
        let url = format!("file://{}/cache", cache.path().display());
        sh(&format!(
            "nix --extra-experimental-features nix-command store sign -k {} {dep} && nix --extra-experimental-features nix-command copy --to {url} {dep}",
            key.display()
        ));
        forget(&[&dep]);
        assert!(!lab::locally_valid(&dep));

        // The daemon and the user's nix read the same settings, as from /etc/nix/nix.conf
        // (a trusted user's nix passes its own substituters on to the daemon).
        let conf = format!("substituters = {url}\ntrusted-public-keys = {public}\n");
        let _daemon = LocalDaemon::start_with("root edict-subst", &conf);
        let out = user
            .edict_with(&dir, &conf)
            .args(["builder", "nix", "build", ".#default"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{flavour:?}: {}", describe(&out));
        let top = std::fs::read_link(dir.join("result"))
            .unwrap()
            .display()
            .to_string();
        assert!(lab::locally_valid(&dep));
        assert!(
            signatures(&dep).starts_with("cache-1:"),
            "{flavour:?}: dep came over ssh: {}",
            signatures(&dep)
        );
        assert_eq!(signatures(&top), "", "{flavour:?}: top came from HOST");

        // Forced the other way: everything from HOST.
        std::fs::remove_file(dir.join("result")).unwrap();
        forget(&[&top, &dep]);
        let out = user
            .edict_with(&dir, &conf)
            .args(["--no-substitute", "builder", "nix", "build", ".#default"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{flavour:?}: {}", describe(&out));
        assert!(lab::locally_valid(&dep));
        assert_eq!(signatures(&dep), "", "{flavour:?}: dep came from HOST");
        std::fs::remove_file(dir.join("result")).unwrap();
        forget(&[&top, &dep]);
    }
}
