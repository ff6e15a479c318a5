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
                "secret-key-files",
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
