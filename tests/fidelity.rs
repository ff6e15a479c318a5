//! What edict does is what nix here would do: the same inputs evaluated (a lock's pinned
//! local inputs), the same commands (`nix-build`, `nix-shell`), the same results (every
//! store link that comes back is valid here and a GC root). Each against real remotes of
//! Nix 2.8, 2.26 and 2.34, with this machine's Nix 2.8 as the local side; the other local
//! versions are in local_versions.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use lab::{Flavour, HostSpec, Lab, describe};
use std::path::Path;
use std::process::{Command, Output};

fn each_host(f: impl Fn(&Lab, &str)) {
    let lab = Lab::every();
    for flavour in Flavour::ALL {
        f(&lab, lab::default_name(flavour));
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `nix ARGS` here, in `dir`.
fn local_nix(lab: &Lab, dir: &Path, args: &[&str]) -> Output {
    run(lab.command("nix").args(args).current_dir(dir))
}

/// A lock that pins a git input at an old rev and a path input at an old narHash: nix here
/// evaluates those, whatever the inputs hold now, and so does edict's run on HOST — with the
/// lock left as it is and no warning about modifying it.
#[test]
fn pinned_local_inputs_are_the_ones_the_lock_pins() {
    each_host(|lab, host| {
        let tag = lab::unique_tag();
        let top = lab::pinned_inputs_flake(&lab.workdir(&format!("pin-{host}")), &tag);
        let out = local_nix(lab, &top, &["flake", "lock"]);
        assert!(out.status.success(), "{}", describe(&out));
        lab::git(&top, &["add", "flake.lock"]);
        let lock = std::fs::read(top.join("flake.lock")).unwrap();
        lab::move_pinned_inputs(&top);
        let want = format!("a-{tag}-v1 b-{tag}-v1");

        let here = local_nix(lab, &top, &["eval", "--raw", ".#v"]);
        assert_eq!(text(&here.stdout), want, "{}", describe(&here));

        let out = run(lab.edict(&top).args([host, "nix", "eval", "--raw", ".#v"]));
        assert!(out.status.success(), "{host}: {}", describe(&out));
        assert_eq!(text(&out.stdout), want, "{host}");
        let err = text(&out.stderr);
        assert!(
            !err.contains("lock file") && !err.contains("Updated input"),
            "{host}: nix there saw a changed lock: {err}"
        );
        let out = run(lab.edict(&top).args([host, "nix", "build"]));
        assert!(out.status.success(), "{host}: {}", describe(&out));
        assert_eq!(
            std::fs::read_to_string(top.join("result")).unwrap(),
            format!("{want}\n")
        );
        assert_eq!(std::fs::read(top.join("flake.lock")).unwrap(), lock);
        // The inputs' current trees were never sent.
        let mirrors = lab.mirrors(host);
        assert!(
            !mirrors.iter().any(|m| {
                let name = m.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with("a-") || name.starts_with("b-")
            }),
            "{host}: {mirrors:?}"
        );
    });
}

/// After a garbage collection here the pinned store paths are gone; nix here fetches a git
/// input again by its locked rev, and refuses a path input whose tree no longer has the
/// locked hash. edict does the same, before sending anything, and works again once the
/// tree is back.
#[test]
fn a_pinned_input_this_store_lost_is_fetched_again_or_refused() {
    let lab = Lab::every();
    let host = "nix226";
    let tag = lab::unique_tag();
    let top = lab::pinned_inputs_flake(&lab.workdir("pin-gc"), &tag);
    let out = local_nix(&lab, &top, &["flake", "lock"]);
    assert!(out.status.success(), "{}", describe(&out));
    lab::git(&top, &["add", "flake.lock"]);
    let pinned = local_nix(&lab, &top, &["flake", "archive", "--json", "--dry-run"]);
    let pinned: serde_json::Value = serde_json::from_slice(&pinned.stdout).unwrap();
    let paths: Vec<String> = ["a", "b"]
        .iter()
        .map(|i| pinned["inputs"][i]["path"].as_str().unwrap().to_string())
        .collect();
    lab::move_pinned_inputs(&top);
    let gc = |paths: &[String]| {
        let out = run(lab.command("nix-store").arg("--delete").args(paths));
        assert!(out.status.success(), "{}", describe(&out));
        assert!(paths.iter().all(|p| !lab::locally_valid(p)));
    };
    gc(&paths);

    // `b` changed since it was locked: nix here refuses, and so does edict.
    let here = local_nix(&lab, &top, &["eval", "--raw", ".#v"]);
    assert!(!here.status.success());
    assert!(text(&here.stderr).contains("NAR hash mismatch"));
    let out = run(lab.edict(&top).args([host, "nix", "eval", "--raw", ".#v"]));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    lab::assert_mentions(
        &text(&out.stderr),
        &[
            "nix226: preparing locked inputs",
            "input `b`",
            "NAR hash mismatch",
            "fix: re-lock it",
        ],
    );
    assert!(
        !lab.mirrors(host)
            .iter()
            .any(|m| m.to_string_lossy().contains("/top-")),
        "nothing was sent"
    );

    // `b` back as it was locked: both are fetched again here (`a` by its rev), then sent.
    let b = top.parent().unwrap().join("b/flake.nix");
    let was = std::fs::read_to_string(&b)
        .unwrap()
        .replace("-v2\"", "-v1\"");
    std::fs::write(&b, was).unwrap();
    let out = run(lab.edict(&top).args([host, "nix", "eval", "--raw", ".#v"]));
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(text(&out.stdout), format!("a-{tag}-v1 b-{tag}-v1"));
    assert!(paths.iter().all(|p| lab::locally_valid(p)));
}

/// A HOST user whose nix-daemon does not trust them still gets the pinned inputs: they are
/// content-addressed, which a daemon takes from anyone.
#[test]
fn pinned_inputs_reach_an_untrusted_user() {
    let mut lab = Lab::new();
    for flavour in Flavour::ALL {
        let host = format!("pu{}", flavour.nix_version().replace('.', ""));
        lab.start(HostSpec::new(&host, flavour).user("edict-remote"));
        let tag = lab::unique_tag();
        let top = lab::pinned_inputs_flake(&lab.workdir(&host), &tag);
        let out = local_nix(&lab, &top, &["flake", "lock"]);
        assert!(out.status.success(), "{}", describe(&out));
        lab::move_pinned_inputs(&top);
        let out = run(lab.edict(&top).args([&host, "nix", "eval", "--raw", ".#v"]));
        assert!(out.status.success(), "{host}: {}", describe(&out));
        assert_eq!(
            text(&out.stdout),
            format!("a-{tag}-v1 b-{tag}-v1"),
            "{host}"
        );
    }
}
