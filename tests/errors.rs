//! Bad input and broken hosts: every error names the host, the step and a fix, exits with
//! the right code, and loses nothing. Real hosts, really broken.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use lab::{Flavour, HostSpec, Lab, describe};
use std::process::{Command, Output};

/// `edict HOST nix build .#default` on a fresh flake fails with `code`, saying `needles`,
/// the host and a fix, and makes no result link.
fn fails(lab: &Lab, host: &str, code: i32, needles: &[&str]) -> Output {
    let dir = lab.workdir(&format!("err-{host}-{}", lab::unique_tag()));
    lab::write_rich_flake(&dir, &lab::unique_tag());
    let out = fails_with(
        lab.edict(&dir).args([host, "nix", "build", ".#default"]),
        code,
        needles,
    );
    lab::assert_mentions(&String::from_utf8_lossy(&out.stderr), &[host, "fix:"]);
    assert!(!dir.join("result").exists());
    out
}

/// Runs `cmd` (edict with its arguments), which must fail with `code`, saying `needles`.
fn fails_with(cmd: &mut Command, code: i32, needles: &[&str]) -> Output {
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(code), "{}", describe(&out));
    lab::assert_mentions(&String::from_utf8_lossy(&out.stderr), needles);
    out
}

/// Nothing reached `host`: the mirrors its probe made are empty.
fn nothing_sent(lab: &Lab, host: &str) {
    for m in lab.mirrors(host) {
        let sent: Vec<_> = std::fs::read_dir(&m).unwrap().flatten().collect();
        assert!(
            sent.is_empty(),
            "nothing was sent, but {m:?} holds {sent:?}"
        );
    }
}

#[test]
fn unknown_host() {
    let lab = Lab::new();
    fails(
        &lab,
        "no-such-host.invalid",
        255,
        &["connecting", "cannot resolve"],
    );
}

/// A misspelt alias: the fix names the near one of the ssh config edict's ssh reads (the
/// lab's, by `-F`), and the alias ssh would match (no `user@`).
#[test]
fn misspelt_host() {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("builder", Flavour::Bookworm));
    fails(
        &lab,
        "root@buidler",
        255,
        &[
            "cannot resolve the host name `root@buidler`",
            "did you mean `builder`",
            "ssh_config",
            "`Host buidler`",
        ],
    );
}

#[test]
fn host_down() {
    for flavour in Flavour::ALL {
        let mut lab = Lab::new();
        lab.start(HostSpec::new("down", flavour));
        lab.stop("down");
        fails(&lab, "down", 255, &["nothing accepts ssh connections"]);
    }
}

#[test]
fn refused_key() {
    // On each flavour: OpenSSH 9.2, 10.0 and 10.6 word their refusals their own way.
    for flavour in Flavour::ALL {
        let mut lab = Lab::new();
        lab.start(HostSpec::new("nokey", flavour));
        std::fs::write(lab.host("nokey").dir.join("ssh/authorized_keys"), "").unwrap();
        fails(
            &lab,
            "nokey",
            255,
            &["refused the login", "authorized_keys"],
        );
    }
}

#[test]
fn host_key_changed_or_unknown() {
    for flavour in Flavour::ALL {
        host_key_changed_or_unknown_on(flavour);
    }
}

fn host_key_changed_or_unknown_on(flavour: Flavour) {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("changed", flavour));
    let port = lab.host("changed").port;
    // Another key where the real one should be: what a reinstall (or an attacker) looks like.
    let other = lab.dir().join("other_key");
    let kg = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(kg.status.success());
    let key = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let key: Vec<&str> = key.split_whitespace().take(2).collect();
    std::fs::write(
        lab.known_hosts(),
        format!("[127.0.0.1]:{port} {} {}\n", key[0], key[1]),
    )
    .unwrap();
    // The removal ssh itself names: the config's known_hosts file and the `[addr]:port`
    // entry, not the alias (`ssh-keygen -R changed` would find nothing).
    let remove = format!(
        "`ssh-keygen -f \"{}\" -R \"[127.0.0.1]:{port}\"`",
        lab.known_hosts().display()
    );
    fails(&lab, "changed", 255, &["does not match", &remove]);
    // No key at all, and no terminal to ask on.
    std::fs::write(lab.known_hosts(), "").unwrap();
    fails(&lab, "changed", 255, &["not in your known_hosts"]);
}

#[test]
fn nix_missing_there() {
    let mut lab = Lab::new();
    for flavour in Flavour::ALL {
        let name = format!("nonix{}", flavour.nix_version().replace('.', ""));
        lab.start(HostSpec::new(&name, flavour).without_nix());
        fails(
            &lab,
            &name,
            1,
            &[
                "finding nix",
                "there is no `nix`",
                "/nix/var/nix/profiles/default/bin",
            ],
        );
    }
}

#[test]
fn rsync_missing_there() {
    let mut lab = Lab::new();
    for flavour in Flavour::ALL {
        let name = format!("norsync{}", flavour.nix_version().replace('.', ""));
        lab.start(HostSpec::new(&name, flavour).without_rsync());
        fails(&lab, &name, 1, &["rsync is not installed", "install rsync"]);
    }
}

#[test]
fn disk_full_there() {
    for flavour in Flavour::ALL {
        disk_full_on(flavour);
    }
}

fn disk_full_on(flavour: Flavour) {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("full", flavour).home_kib(512));
    let dir = lab.workdir("full");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    std::fs::write(dir.join("big.bin"), vec![7u8; 2 << 20]).unwrap();
    fails_with(
        lab.edict(&dir).args(["full", "nix", "build", ".#default"]),
        1,
        &[
            "full",
            "syncing",
            "No space left on device",
            "fix: free space on full",
        ],
    );
    assert!(dir.join("big.bin").exists(), "nothing local is lost");
}

#[test]
fn a_login_shell_that_prints_text() {
    let mut lab = Lab::new();
    for flavour in Flavour::ALL {
        let name = format!("chatty{}", flavour.nix_version().replace('.', ""));
        lab.start(HostSpec::new(&name, flavour).banner("Welcome to the build farm"));
        fails(
            &lab,
            &name,
            1,
            &["syncing", "prints text", ".bashrc", "is your shell clean"],
        );
    }
}

/// The classic first-flake slip: flake.nix written but never `git add`ed. Nix reads only
/// tracked files (so it would fail here too); edict says which file and how to fix it before
/// sending anything, for the flake at the root, in a subdirectory, and named by `?dir=`, then
/// builds once the file is added (not committed).
#[test]
fn a_flake_git_does_not_track() {
    for flavour in Flavour::ALL {
        a_flake_git_does_not_track_on(flavour);
    }
}

fn a_flake_git_does_not_track_on(flavour: Flavour) {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("untracked", flavour));
    let dir = lab.workdir("untracked");
    std::fs::write(dir.join("README"), "hello\n").unwrap();
    lab::git_init(&dir);
    lab::write_flake(&dir, &lab::unique_tag());
    lab::write_flake(&dir.join("sub"), &lab::unique_tag());
    let url = format!("git+file://{}?dir=sub#default", dir.display());
    for (cwd, installable, file) in [
        (dir.clone(), ".#default", "flake.nix"),
        (dir.clone(), "./sub#default", "sub/flake.nix"),
        (dir.join("sub"), ".#default", "sub/flake.nix"),
        (dir.join("sub"), url.as_str(), "sub/flake.nix"),
    ] {
        fails_with(
            lab.edict(&cwd)
                .args(["untracked", "nix", "build", installable]),
            1,
            &[
                "untracked: syncing",
                &format!("{file} is not tracked by git"),
                "fix: git -C",
                &format!("add {file}"),
            ],
        );
        nothing_sent(&lab, "untracked");
    }
    // `git init` and nothing added yet: no index at all.
    let fresh = lab.workdir("untracked-fresh");
    lab::write_flake(&fresh, &lab::unique_tag());
    lab::git(&fresh, &["init", "-q"]);
    fails_with(
        lab.edict(&fresh).args(["untracked", "nix", "build"]),
        1,
        &["flake.nix is not tracked by git", "add flake.nix"],
    );
    lab::git(&dir, &["add", "flake.nix", "sub/flake.nix"]);
    let out = lab
        .edict(&dir)
        .args(["untracked", "nix", "build", "./sub#default"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(dir.join("result").exists());
}

/// A csh or tcsh login shell: edict sends each command as one line, with a backslash
/// before every `!` (their history) and line break in the user's words, so a build works
/// and an expression with both reaches nix there byte for byte.
#[test]
fn a_csh_login_shell_gets_every_word_as_written() {
    for flavour in Flavour::ALL {
        let mut lab = Lab::new();
        lab.start(HostSpec::new("tcsh", flavour).login_shell("/usr/bin/tcsh"));
        let dir = lab.workdir("csh");
        lab::write_rich_flake(&dir, &lab::unique_tag());
        let out = lab
            .edict(&dir)
            .args(["tcsh", "nix", "build", ".#default"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{flavour:?}: {}", describe(&out));
        assert!(dir.join("result").exists());
        let expr = "''x!y\nback\\!slash !! 'q' \"d\" $HOME''";
        let out = lab
            .edict(&dir)
            .args(["tcsh", "nix", "eval", "--raw", "--expr", expr])
            .output()
            .unwrap();
        assert!(out.status.success(), "{flavour:?}: {}", describe(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "x!y\nback\\!slash !! 'q' \"d\" $HOME",
            "{flavour:?}"
        );
    }
}

/// A repository another user owns: git (and nix) here refuse it since git 2.35.2. edict
/// says so with host, step and the `safe.directory` line, and sends nothing.
#[test]
fn a_repository_owned_by_someone_else() {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("owner", Flavour::Bookworm));
    let dir = lab.workdir("owner");
    lab::write_flake(&dir, &lab::unique_tag());
    lab::git_init(&dir);
    let chown = std::process::Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(chown.success());
    fails_with(
        lab.edict(&dir)
            .env("HOME", lab.dir()) // no safe.directory from the real ~/.gitconfig
            .args(["owner", "nix", "build", ".#default"]),
        1,
        &[
            "owner: syncing",
            "dubious ownership",
            "fix: if you trust it: git config --global --add safe.directory",
        ],
    );
    nothing_sent(&lab, "owner");
}

/// A real file or directory where the result link goes is the user's: edict says so before
/// sending anything (not after a remote build and copy).
#[test]
fn a_result_that_is_not_a_link_is_found_before_sending() {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("taken", Flavour::Bookworm));
    let dir = lab.workdir("taken");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    std::fs::create_dir_all(dir.join("result")).unwrap();
    std::fs::write(dir.join("result/mine.txt"), "mine\n").unwrap();
    fails_with(
        lab.edict(&dir).args(["taken", "nix", "build", ".#default"]),
        1,
        &[
            "exists and is not a symlink",
            "checked before sending anything",
            "fix: move it away",
        ],
    );
    assert!(lab.mirrors("taken").is_empty(), "nothing was sent");
    assert_eq!(
        std::fs::read_to_string(dir.join("result/mine.txt")).unwrap(),
        "mine\n"
    );
}
