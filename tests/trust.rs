//! The local store's trust rules, as a user without root meets them: a path built on a
//! remote host is unsigned, so the local nix-daemon refuses it unless the user is trusted.
//! edict must say which side refused and give the exact nix.conf fix — and that fix works.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use lab::{Flavour, HostSpec, Lab, LocalDaemon, describe};

#[test]
fn untrusted_user_gets_the_fix_and_the_fix_works() {
    for flavour in Flavour::ALL {
        untrusted_user_on(flavour);
    }
}

fn untrusted_user_on(flavour: Flavour) {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("builder", flavour));
    let user = lab.local_user("edict-untrusted");
    let tag = lab::unique_tag();
    let dir = user.workdir("trust");
    lab::write_rich_flake(&dir, &tag);

    {
        let _daemon = LocalDaemon::start("root");
        let out = user
            .edict(&dir)
            .args(["builder", "nix", "build", ".#default"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        lab::assert_mentions(
            &err,
            &[
                "builder: copying results",
                "lacks a valid signature",
                "trusted-users = root edict-untrusted",
                "secret-key-files = /etc/nix/key.private",
                "restart its daemon",
                "extra-trusted-public-keys",
                "store sign",
            ],
        );
        assert!(!dir.join("result").exists());
    }
    // The fix from the message: trust the user.
    let _daemon = LocalDaemon::start("root edict-untrusted");
    let out = user
        .edict(&dir)
        .args(["builder", "nix", "build", ".#default"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let target = std::fs::read_link(dir.join("result")).unwrap();
    assert!(
        target
            .display()
            .to_string()
            .ends_with(&format!("edict-top-{tag}"))
    );
    assert!(lab::locally_valid(&target.display().to_string()));
}

/// The other fix of that message: HOST signs what it builds (`secret-key-files` in its
/// nix.conf), and this machine's daemon trusts its public key; the user stays untrusted.
#[test]
fn the_signing_fix_works_too() {
    for flavour in Flavour::ALL {
        let key = tempfile::tempdir().unwrap();
        let secret = key.path().join("key.private");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "nix --extra-experimental-features nix-command key generate-secret --key-name builder-1 > {0} && nix --extra-experimental-features nix-command key convert-secret-to-public < {0}",
                secret.display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut lab = Lab::new();
        let host = lab.start(
            HostSpec::new("builder", flavour).nix_conf("secret-key-files = /etc/nix/key.private"),
        );
        std::fs::copy(&secret, host.local_path("/etc/nix/key.private")).unwrap();
        let user = lab.local_user("edict-untrusted");
        let dir = user.workdir("signed");
        let tag = lab::unique_tag();
        lab::write_rich_flake(&dir, &tag);
        let _daemon =
            LocalDaemon::start_with("root", &format!("extra-trusted-public-keys = {public}"));
        let out = user
            .edict(&dir)
            .args(["builder", "nix", "build", ".#default"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{flavour:?}: {}", describe(&out));
        let target = std::fs::read_link(dir.join("result")).unwrap();
        assert!(lab::locally_valid(&target.display().to_string()));
    }
}

/// A local store edict cannot reach (the nix-daemon here is down, as for an ordinary user
/// whose daemon stopped) is found before anything is sent: no remote build is wasted, and
/// the fix is to start the daemon, not to "run it by hand".
#[test]
fn a_local_daemon_that_is_down_is_found_before_sending() {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("builder", Flavour::Bookworm));
    let user = lab.local_user("edict-untrusted");
    let dir = user.workdir("nodaemon");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    // No daemon: the user's nix has no store it may use.
    let _none = lab::NoDaemon::hold();
    let out = user
        .edict(&dir)
        .args(["builder", "nix", "build", ".#default"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    lab::assert_mentions(
        &String::from_utf8_lossy(&out.stderr),
        &[
            "builder: checking this machine's nix store before sending anything",
            "start this machine's nix-daemon",
        ],
    );
    assert!(lab.mirrors("builder").is_empty(), "nothing was sent");
}
