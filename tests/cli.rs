//! edict's own command line, run as a user would: help, version, and mistakes that must be
//! caught before anything connects anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use assert_cmd::Command;

fn edict() -> Command {
    let mut cmd = Command::cargo_bin("edict").unwrap();
    cmd.env_remove("NIX_SSHOPTS").env_remove("EDICT_SSH_OPTS");
    cmd
}

#[test]
fn help_and_version() {
    let out = edict()
        .arg("--help")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let help = String::from_utf8(out).unwrap();
    for needle in [
        "HOST",
        "--sync",
        "--no-sync",
        "--no-link",
        "--dry-run",
        "--verbose",
        "--quiet",
        "NIX_SSHOPTS",
        "EDICT_SSH_OPTS",
        "edict builder nix build .#default",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    // Each of edict's own commands has its help (#17).
    for (command, needle) in [
        ("doctor", "--json"),
        ("machines", "--system"),
        ("gc", "--older-than"),
        ("forget", "[HOSTS]..."),
        ("completions", "[possible values: bash, zsh, fish]"),
    ] {
        let out = edict()
            .args([command, "--help"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let help = String::from_utf8(out).unwrap();
        assert!(
            help.contains(&format!("Usage: edict {command}")) && help.contains(needle),
            "{command} --help:\n{help}"
        );
    }
    let out = edict()
        .arg("--version")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("edict {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn mistakes_are_explained_without_connecting() {
    let cases: &[(&[&str], &str)] = &[
        (&["h"], "no command given"),
        (
            &["h", "build", ".#x"],
            "looks like a nix subcommand\n  fix: `edict h nix build .#x`",
        ),
        (&["h", "nix"], "needs a subcommand"),
        (&["-oProxyCommand=x", "nix", "build"], "unexpected argument"),
        (&["ssh://h:port", "nix", "build"], "port is not a number"),
        (
            &["h", "nix", "build", "./does-not-exist#x"],
            "does not exist",
        ),
        (
            &["--sync", "--no-sync", "h", "nix", "build"],
            "cannot be used with",
        ),
        // --dry-run checks what it can without connecting, and fails as the run would.
        (
            &["--dry-run", "bad host", "nix", "build"],
            "is not an ssh destination",
        ),
        (
            &[
                "--dry-run",
                "--builders",
                "ssh://a x86_64-linux - 1 1",
                "--sync=c",
                "a,b",
                "nix",
                "build",
            ],
            "--sync=c names no host of this run (a, b)",
        ),
        (
            &[
                "--dry-run",
                "--builders",
                "ssh://a sparc-linux - 1 1",
                "auto",
                "nix",
                "build",
            ],
            "auto: choosing a host: no machine can take a job for",
        ),
    ];
    // Inside a flake, so that what is checked is the mistake, not a missing flake.nix.
    let flake = tempfile::tempdir().unwrap();
    std::fs::write(flake.path().join("flake.nix"), "{ outputs = _: {}; }").unwrap();
    for (args, needle) in cases {
        let out = edict()
            .args(*args)
            .current_dir(flake.path())
            .assert()
            .failure()
            .get_output()
            .clone();
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(needle), "edict {args:?}: {err}");
    }
}

/// `edict man` prints a page that man renders: the options and the sections a reader
/// looks for.
#[test]
fn the_manual_page_renders() {
    let page = edict()
        .arg("man")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edict.1");
    std::fs::write(&file, page).unwrap();
    let out = std::process::Command::new("man")
        .arg("-l")
        .arg(&file)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man (Debian: man-db, in tests/lab/packages)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "edict - Run any nix command on a remote host",
        "--dry-run",
        "--no-substitute",
        "EXIT STATUS",
        "WHAT IS SENT",
        "WHAT COMES BACK",
        "NIX_SSHOPTS",
        "edict doctor",
    ] {
        assert!(
            text.contains(needle),
            "the rendered page lacks {needle}:\n{text}"
        );
    }
}
