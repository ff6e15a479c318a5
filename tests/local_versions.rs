//! edict with a local Nix of another version: edict runs inside a Debian 13 (Nix 2.26) and a
//! Debian sid (Nix 2.34) root as the client, with that root's nix, ssh, rsync and git and
//! its own store, against remotes of Nix 2.8, 2.26 and 2.34.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use lab::{Client, Flavour, Lab, describe};
use std::path::Path;

/// Runs `f` for every local × remote pair: local 2.26 and 2.34, remote 2.8, 2.26 and 2.34.
fn matrix(f: impl Fn(&Lab, &Client, &str)) {
    let lab = Lab::every();
    for local in [Flavour::Trixie, Flavour::Sid] {
        let client = lab.client(local);
        // Really the other Nix, with its own store.
        let version = client
            .command(&lab, lab.dir(), "nix")
            .arg("--version")
            .output()
            .unwrap();
        let version = String::from_utf8_lossy(&version.stdout);
        assert!(
            version.contains(&format!("nix (Nix) {}.", local.nix_version())),
            "{local:?}: {version}"
        );
        for remote in Flavour::ALL {
            f(&lab, &client, lab::default_name(remote));
        }
    }
}

fn workdir(lab: &Lab, client: &Client, what: &str, host: &str) -> std::path::PathBuf {
    lab.workdir(&format!("{what}-{}-{host}", client.flavour.nix_version()))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `edict HOST nix build .#default` from the client in `dir`, which must succeed; returns
/// edict's output and the content of the `./result` it made in the client's store.
fn build_there(
    lab: &Lab,
    client: &Client,
    dir: &Path,
    host: &str,
) -> (std::process::Output, String) {
    let out = client
        .edict(lab, dir)
        .args([host, "nix", "build", ".#default"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{host}: {}", describe(&out));
    let target = std::fs::read_link(dir.join("result")).unwrap();
    let built = read(&client.store_path(&target));
    (out, built)
}

/// A git flake in `dir` with a relative `path:./sub` input: its default package holds
/// `sub-TAG`, read from the input (and `.#v` is that string).
fn relative_flake(dir: &Path, tag: &str) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(
        dir.join("sub/flake.nix"),
        format!("{{ outputs = {{ self }}: {{ v = \"sub-{tag}\"; }}; }}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("flake.nix"),
        format!("{{ inputs.sub.url = \"path:./sub\"; outputs = {{ self, sub }}: {{ v = sub.v; packages.x86_64-linux.default = derivation {{ name = \"rel-{tag}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo ${{sub.v}} > $out\" ]; }}; }}; }}\n"),
    )
    .unwrap();
    lab::git_init(dir);
}

#[test]
fn build_results_are_gc_roots_in_the_local_store() {
    matrix(|lab, client, host| {
        let dir = workdir(lab, client, "build", host);
        lab::write_rich_flake(&dir, &lab::unique_tag());
        lab::git_init(&dir);
        let out = client
            .edict(lab, &dir)
            .args([host, "nix", "build", ".#default"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{host}: {}", describe(&out));
        let target = std::fs::read_link(dir.join("result")).unwrap();
        let target_s = target.display().to_string();
        assert!(
            client.valid(lab, &target_s),
            "{host}: {target_s} not in the local store"
        );
        assert!(
            !lab::locally_valid(&target_s),
            "the client's store is its own"
        );
        assert_eq!(
            read(&client.store_path(&target).join("greeting")),
            "hello\n"
        );
        let roots = client
            .command(lab, &dir, "nix-store")
            .args(["--query", "--roots", &target_s])
            .output()
            .unwrap();
        let roots = String::from_utf8_lossy(&roots.stdout);
        assert!(
            roots.contains(&dir.join("result").display().to_string()),
            "{host}: ./result is not a GC root: {roots}"
        );
    });
}

#[test]
fn run_passes_arguments_output_and_exit_codes() {
    matrix(|lab, client, host| {
        let dir = workdir(lab, client, "run", host);
        lab::write_rich_flake(&dir, &lab::unique_tag());
        let out = client
            .edict(lab, &dir)
            .args([host, "nix", "run", ".#args", "--", "a b", "it's", "$HOME"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{host}: {}", describe(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "<a b>\n<it's>\n<$HOME>\n"
        );
        let out = client
            .edict(lab, &dir)
            .args([host, "nix", "run", ".#exit", "--", "7"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(7), "{host}: {}", describe(&out));
    });
}

#[test]
fn changed_files_come_back() {
    matrix(|lab, client, host| {
        let dir = workdir(lab, client, "back", host);
        lab::write_rich_flake(&dir, &lab::unique_tag());
        std::fs::write(dir.join("version.txt"), "1\n").unwrap();
        std::fs::write(dir.join("obsolete.txt"), "old\n").unwrap();
        lab::git_init(&dir);
        let out = client
            .edict(lab, &dir)
            .args([host, "nix", "run", ".#bump"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{host}: {}", describe(&out));
        assert_eq!(read(&dir.join("version.txt")), "2\n");
        assert_eq!(read(&dir.join("created.txt")), "new\n");
        assert!(!dir.join("obsolete.txt").exists());
    });
}

/// An input at an absolute local path, locked by the local nix: sent and passed as an
/// override, so every remote evaluates the input that is here.
#[test]
fn an_absolute_local_input_is_sent() {
    matrix(|lab, client, host| {
        let tag = lab::unique_tag();
        let dep = workdir(lab, client, "absdep", host);
        std::fs::write(
            dep.join("flake.nix"),
            format!("{{ outputs = {{ self }}: {{ v = \"dep-{tag}\"; }}; }}\n"),
        )
        .unwrap();
        let dir = workdir(lab, client, "abs", host);
        std::fs::write(
            dir.join("flake.nix"),
            format!(
                "{{\n  inputs.dep.url = \"path:{}\";\n  outputs = {{ self, dep }}: {{\n    packages.x86_64-linux.default = derivation {{ name = \"abs-{tag}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo ${{dep.v}} > $out\" ]; }};\n  }};\n}}\n",
                dep.display()
            ),
        )
        .unwrap();
        let out = client
            .command(lab, &dir, "nix")
            .args(["flake", "lock"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{host}: {}", describe(&out));
        let (_, built) = build_there(lab, client, &dir, host);
        assert_eq!(built, format!("dep-{tag}\n"));
    });
}

/// A lock made by the local nix that pins a git input at an old rev and a path input at an
/// old narHash: every remote evaluates exactly those, as the local nix does.
#[test]
fn pinned_local_inputs_are_the_ones_the_lock_pins() {
    matrix(|lab, client, host| {
        let tag = lab::unique_tag();
        let top = lab::pinned_inputs_flake(&workdir(lab, client, "pin", host), &tag);
        let out = client
            .command(lab, &top, "nix")
            .args(["flake", "lock"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{host}: {}", describe(&out));
        lab::move_pinned_inputs(&top);
        let want = format!("a-{tag}-v1 b-{tag}-v1");
        let here = client
            .command(lab, &top, "nix")
            .args(["eval", "--raw", ".#v"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&here.stdout),
            want,
            "{}",
            describe(&here)
        );
        let out = client
            .edict(lab, &top)
            .args([host, "nix", "eval", "--raw", ".#v"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{host}: {}", describe(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{host}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("lock file"),
            "{host}: {}",
            describe(&out)
        );
    });
}

/// A relative `path:./sub` input, locked on HOST (`nix flake lock` there): the lock that
/// comes back is one the local nix reads.
#[test]
fn a_lock_made_there_is_one_the_local_nix_reads() {
    matrix(|lab, client, host| {
        let dir = workdir(lab, client, "rel", host);
        relative_flake(&dir, &lab::unique_tag());
        let out = client
            .edict(lab, &dir)
            .args([host, "nix", "flake", "lock"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{host}: {}", describe(&out));
        // Marked intent-to-add, as nix marks a lock it writes in a git tree.
        assert_eq!(
            lab::git(&dir, &["status", "--porcelain", "flake.lock"]),
            " A flake.lock\n",
            "{host}"
        );
        let out = client
            .command(lab, &dir, "nix")
            .args(["eval", "--raw", ".#v"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{host}: {}", describe(&out));
    });
}

/// The same with this machine's Nix 2.8 and a 2.8 remote: the new lock is intent-to-add
/// here, as nix here leaves it, so the next run sends it.
#[test]
fn a_new_lock_from_there_is_intent_to_add_here() {
    let lab = Lab::every();
    let dir = lab.workdir("ita");
    relative_flake(&dir, &lab::unique_tag());
    let out = lab
        .edict(&dir)
        .args(["nix28", "nix", "flake", "lock"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        lab::git(&dir, &["status", "--porcelain", "flake.lock"]),
        " A flake.lock\n"
    );
    let files = lab::git(&dir, &["ls-files"]);
    assert!(files.lines().any(|f| f == "flake.lock"), "{files}");
}

/// A relative `path:./sub` input locked by the local nix (2.26 and later lock it without a
/// narHash, which Nix 2.8 refuses): every remote builds with it, and the local lock stays.
#[test]
fn a_lock_made_here_is_one_every_remote_reads() {
    matrix(|lab, client, host| {
        let tag = lab::unique_tag();
        let dir = workdir(lab, client, "relhere", host);
        relative_flake(&dir, &tag);
        let out = client
            .command(lab, &dir, "nix")
            .args(["flake", "lock"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        lab::git(&dir, &["add", "flake.lock"]);
        let lock = read(&dir.join("flake.lock"));
        let (out, built) = build_there(lab, client, &dir, host);
        assert_eq!(built, format!("sub-{tag}\n"));
        // The local lock stays the local nix's, whatever HOST's nix would have written.
        assert_eq!(
            read(&dir.join("flake.lock")),
            lock,
            "{host}: {}",
            describe(&out)
        );
    });
}

/// A file changed both here (while the command ran) and there: the local edit stays, HOST's
/// version goes beside it, exit 1.
#[test]
fn a_conflict_keeps_the_local_edit() {
    matrix(|lab, client, host| {
        let dir = workdir(lab, client, "conflict", host);
        lab::write_rich_flake(&dir, &lab::unique_tag());
        std::fs::write(dir.join("version.txt"), "1\n").unwrap();
        lab::git_init(&dir);
        let gate = format!("/root/gate-{}-{host}", client.flavour.nix_version());
        let child = client
            .edict(lab, &dir)
            .args([host, "nix", "run", ".#gate", "--", &gate])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        lab::wait_for(&lab.host(host).local_path(&format!("{gate}.started")));
        std::fs::write(dir.join("version.txt"), "local edit\n").unwrap();
        std::fs::write(lab.host(host).local_path(&gate), "go").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{host}: {}", describe(&out));
        assert_eq!(read(&dir.join("version.txt")), "local edit\n");
        assert_eq!(read(&dir.join(format!("version.txt.edict-{host}"))), "11\n");
    });
}

/// An ordinary local user of a multi-user install (the store behind a nix-daemon that
/// trusts only root): the copy back is refused, and edict names why and the nix.conf lines
/// that fix it, whatever the two versions.
#[test]
fn an_untrusted_local_user_is_told_what_fixes_the_copy() {
    matrix(|lab, client, host| {
        let dir = workdir(lab, client, "untrusted", host);
        lab::write_rich_flake(&dir, &lab::unique_tag());
        lab::git_init(&dir);
        let bin = assert_cmd::cargo::cargo_bin("edict");
        let out = client
            .command_as(lab, "edict-untrusted", &dir, &bin.display().to_string())
            .args([host, "nix", "build", ".#default"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{host}: {}", describe(&out));
        lab::assert_mentions(
            &String::from_utf8_lossy(&out.stderr),
            &[
                &format!("{host}: copying results"),
                "this machine's Nix store refused the paths built on",
                "trusted-users = root edict-untrusted",
            ],
        );
        assert!(!dir.join("result").exists());
    });
}

/// The local nix is 2.8 (this machine), HOST's 2.26 or 2.34: HOST rewrites a lock with a
/// relative `path:./sub` input into the Nix 2.26 form, which Nix 2.8 refuses. A build never
/// brings that rewrite back (the local lock stays, and still works here); `nix flake
/// update` there brings HOST's lock back beside the local one, as a conflict, and says why.
#[test]
fn a_newer_hosts_lock_never_replaces_one_the_local_nix_reads() {
    let lab = Lab::every();
    for remote in [Flavour::Trixie, Flavour::Sid] {
        let host = lab::default_name(remote);
        let tag = lab::unique_tag();
        let dir = lab.workdir(&format!("skew-{host}"));
        relative_flake(&dir, &tag);
        lab.lock_here(&dir);
        lab::git(&dir, &["add", "flake.lock"]);
        let lock = read(&dir.join("flake.lock"));

        let out = lab
            .edict(&dir)
            .args([host, "nix", "build", ".#default"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{host}: {}", describe(&out));
        assert_eq!(
            read(&dir.join("flake.lock")),
            lock,
            "{host}: {}",
            describe(&out)
        );
        let local = lab
            .command("nix")
            .args(["eval", "--raw", ".#packages.x86_64-linux.default.name"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            local.status.success(),
            "{host}: the local nix no longer reads the lock: {}",
            describe(&local)
        );

        let out = lab
            .edict(&dir)
            .args([host, "nix", "flake", "update"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{host}: {}", describe(&out));
        assert_eq!(read(&dir.join("flake.lock")), lock);
        let theirs = read(&dir.join(format!("flake.lock.edict-{host}")));
        assert!(theirs.contains("\"parent\""), "{host}: {theirs}");
        lab::assert_mentions(
            &String::from_utf8_lossy(&out.stderr),
            &[
                "in the Nix 2.26 form, which the nix here",
                "cannot read: yours stays",
            ],
        );
    }
}

/// Completion hands the words after `nix` to the local nix (`NIX_GET_COMPLETIONS`), whose
/// protocol is the same in 2.26 and 2.34 as in 2.8 (tests/completions.rs): `.#` completes
/// from the flake here, evaluated by that nix.
#[test]
fn completion_asks_the_local_nix_of_each_version() {
    let lab = Lab::new();
    for local in [Flavour::Trixie, Flavour::Sid] {
        let client = lab.client(local);
        let dir = workdir(&lab, &client, "complete", "h");
        lab::write_rich_flake(&dir, &lab::unique_tag());
        let out = client
            .edict(&lab, &dir)
            .args([
                "--get-completions",
                "4",
                "edict",
                "h",
                "nix",
                "build",
                ".#def",
            ])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.starts_with("attrs\n") && said.lines().any(|l| l.starts_with(".#default")),
            "{local:?}: {}",
            describe(&out)
        );
        let out = client
            .edict(&lab, &dir)
            .args(["--get-completions", "3", "edict", "h", "nix", "fla"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.lines().any(|l| l.starts_with("flake")),
            "{local:?}: {said}"
        );
    }
}
