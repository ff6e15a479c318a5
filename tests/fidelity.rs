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
        lab.lock_here(&top);
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
    lab.lock_here(&top);
    lab::git(&top, &["add", "flake.lock"]);
    let pinned = local_nix(&lab, &top, &["flake", "archive", "--json", "--dry-run"]);
    let pinned: serde_json::Value = serde_json::from_slice(&pinned.stdout).unwrap();
    let paths: Vec<String> = ["a", "b"]
        .iter()
        .map(|i| pinned["inputs"][i]["path"].as_str().unwrap().to_string())
        .collect();
    let b = top.parent().unwrap().join("b/flake.nix");
    let locked_mtime = std::fs::metadata(&b).unwrap().modified().unwrap();
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

    // `b` back as it was locked (content and time: nix checks its lastModified too):
    // both are fetched again here (`a` by its rev), then sent.
    let was = std::fs::read_to_string(&b)
        .unwrap()
        .replace("-v2\"", "-v1\"");
    std::fs::write(&b, was).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&b)
        .unwrap()
        .set_modified(locked_mtime)
        .unwrap();
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
        lab.lock_here(&top);
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

/// A `default.nix` project: `x` reads `./lib.nix`, `y` is plain; `shell.nix` sets
/// GREETING. The tag makes the paths new to every store.
fn legacy_project(dir: &Path, tag: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let drv = |name: &str, script: &str| {
        format!(
            "derivation {{ name = \"{name}-{tag}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"{script}\" ]; }}"
        )
    };
    std::fs::write(
        dir.join("default.nix"),
        format!(
            "let lib = import ./lib.nix; in {{\n  x = {};\n  y = {};\n}}\n",
            drv("legacy-x", "echo ${lib.v} > $out"),
            drv("legacy-y", "echo y > $out")
        ),
    )
    .unwrap();
    std::fs::write(dir.join("lib.nix"), "{ v = \"committed\"; }\n").unwrap();
    std::fs::write(
        dir.join("shell.nix"),
        format!("derivation {{ name = \"legacy-shell-{tag}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo > $out\" ]; GREETING = \"hello-{tag}\"; }}\n"),
    )
    .unwrap();
}

/// `nix-build` in a git project: the expression and what it imports are sent (an
/// uncommitted edit included), it runs there, and `result`, `result-2` come back as GC
/// roots — the same store paths nix-build here makes.
#[test]
fn nix_build_builds_there_and_links_here() {
    each_host(|lab, host| {
        let tag = lab::unique_tag();
        let dir = lab.workdir(&format!("legacy-{host}"));
        legacy_project(&dir, &tag);
        lab::git_init(&dir);
        std::fs::write(dir.join("lib.nix"), "{ v = \"edited\"; }\n").unwrap();

        let out = run(lab
            .edict(&dir)
            .args([host, "nix-build", "-A", "x", "-A", "y"]));
        assert!(out.status.success(), "{host}: {}", describe(&out));
        let x = std::fs::read_link(dir.join("result")).unwrap();
        let y = std::fs::read_link(dir.join("result-2")).unwrap();
        assert_eq!(std::fs::read_to_string(&x).unwrap(), "edited\n");
        assert_eq!(std::fs::read_to_string(&y).unwrap(), "y\n");
        // nix-build's own stdout: the paths, now valid here.
        assert_eq!(
            text(&out.stdout),
            format!("{}\n{}\n", x.display(), y.display())
        );
        let roots = text(&run(lab.command("nix-store").args(["--gc", "--print-roots"])).stdout);
        assert!(
            roots.contains(&format!(
                "{} -> {}",
                dir.join("result").display(),
                x.display()
            )),
            "{roots}"
        );
        // What nix-build here makes of the same expression.
        let here = run(lab
            .command("nix-build")
            .args(["-A", "x", "--no-out-link"])
            .current_dir(&dir));
        assert_eq!(
            text(&here.stdout).trim(),
            x.display().to_string(),
            "{}",
            describe(&here)
        );

        // A file elsewhere with `-o`, and a search path entry that is a local directory.
        let other = lab.workdir(&format!("legacy-other-{host}"));
        std::fs::write(other.join("v.nix"), format!("\"via-search-path-{tag}\"\n")).unwrap();
        std::fs::write(
            other.join("top.nix"),
            format!("derivation {{ name = \"legacy-top-{tag}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo ${{import <here/v.nix>}} > $out\" ]; }}\n"),
        )
        .unwrap();
        let other_arg = format!("../legacy-other-{host}/top.nix");
        let search = format!("here=../legacy-other-{host}");
        let out =
            run(lab
                .edict(&dir)
                .args([host, "nix-build", &other_arg, "-o", "top", "-I", &search]));
        assert!(out.status.success(), "{host}: {}", describe(&out));
        assert_eq!(
            std::fs::read_to_string(dir.join("top")).unwrap(),
            format!("via-search-path-{tag}\n")
        );
        // A search path entry in this store (which HOST lacks): copied there, so nix
        // there reads it instead of ignoring the entry.
        let added = run(lab.command("nix-store").arg("--add").arg(&other));
        assert!(added.status.success(), "{}", describe(&added));
        let in_store = text(&added.stdout).trim().to_string();
        let search = format!("here={in_store}");
        let out =
            run(lab
                .edict(&dir)
                .args([host, "nix-build", &other_arg, "-o", "top2", "-I", &search]));
        assert!(out.status.success(), "{host}: {}", describe(&out));
        assert_eq!(
            std::fs::read_to_string(dir.join("top2")).unwrap(),
            format!("via-search-path-{tag}\n")
        );
    });
}

/// `nix-shell --run` in the project: shell.nix is read there, the command runs in the
/// project's mirror, what it writes comes back, and its exit code is edict's.
#[test]
fn nix_shell_runs_there_and_brings_back_what_it_wrote() {
    each_host(|lab, host| {
        let tag = lab::unique_tag();
        let dir = lab.workdir(&format!("legacy-shell-{host}"));
        legacy_project(&dir, &tag);
        lab::git_init(&dir);
        let out = run(lab.edict(&dir).args([
            host,
            "nix-shell",
            "--run",
            "echo $GREETING > greeting.txt; exit 3",
        ]));
        assert_eq!(out.status.code(), Some(3), "{host}: {}", describe(&out));
        assert_eq!(
            std::fs::read_to_string(dir.join("greeting.txt")).unwrap(),
            format!("hello-{tag}\n")
        );
        assert!(!dir.join("result").exists());
        // A shell.nix git does not track: refused with the fix, never a fall back to
        // default.nix there (nix-shell here would read the untracked file).
        lab::git(&dir, &["rm", "-q", "--cached", "shell.nix"]);
        let out = run(lab.edict(&dir).args([host, "nix-shell", "--run", "true"]));
        assert_eq!(out.status.code(), Some(1), "{host}: {}", describe(&out));
        lab::assert_mentions(
            &text(&out.stderr),
            &["shell.nix is not tracked by git", "add shell.nix"],
        );
        // `-p` in a work tree: `--run`'s relative path is the project's, there too.
        lab::git(&dir, &["add", "shell.nix"]);
        std::fs::write(dir.join("t.sh"), "#!/bin/sh\necho from-t-sh\n").unwrap();
        std::fs::set_permissions(
            dir.join("t.sh"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        lab::git(&dir, &["add", "t.sh"]);
        let out = run(lab.edict(&dir).args([
            host,
            "nix-shell",
            "-E",
            "import ./shell.nix",
            "--run",
            "./t.sh",
        ]));
        assert!(out.status.success(), "{host}: {}", describe(&out));
        assert!(
            text(&out.stdout).contains("from-t-sh"),
            "{host}: {}",
            describe(&out)
        );
    });
}

/// Legacy commands that act on a store, a profile or channels are refused before any
/// connection, with what to run instead; nix-build without a default.nix says so.
#[test]
fn other_legacy_commands_are_refused_before_connecting() {
    let lab = Lab::every();
    let dir = lab.workdir("legacy-refused");
    for (line, says) in [
        (vec!["nix28", "nix-env", "-iA", "hello"], "nix-env"),
        (vec!["nix28", "nix-store", "--gc"], "nix-store"),
        (vec!["nix28", "nix-build"], "nix-build reads default.nix"),
    ] {
        let before = lab.logins("nix28");
        let out = run(lab.edict(&dir).args(&line));
        assert_eq!(out.status.code(), Some(1), "{line:?}: {}", describe(&out));
        lab::assert_mentions(&text(&out.stderr), &[says, "fix:"]);
        assert_eq!(lab.logins("nix28"), before, "{line:?} connected");
    }
}

/// A `result` that a command made there by running nix itself (`nix develop -c nix build`,
/// an app that builds) comes back like nix build's own: its closure in this store and the
/// link a GC root, never dangling. A link into a store path comes back with its closure.
#[test]
fn store_links_a_nested_build_made_come_back_with_their_closures() {
    each_host(|lab, host| {
        let tag = lab::unique_tag();
        let dir = lab.workdir(&format!("nested-{host}"));
        lab::write_rich_flake(&dir, &tag);
        lab::git_init(&dir);
        let out = run(lab.edict(&dir).args([
            host,
            "nix",
            "run",
            ".#shell",
            "--",
            "nix build .#default && ln -s \"$(readlink result)/greeting\" greeting",
        ]));
        assert!(out.status.success(), "{host}: {}", describe(&out));
        let target = std::fs::read_link(dir.join("result")).unwrap();
        let target = target.to_str().unwrap();
        assert!(target.ends_with(&format!("-edict-top-{tag}")), "{target}");
        assert!(lab::locally_valid(target), "{host}: {target} dangles");
        let dep = std::fs::read_to_string(Path::new(target).join("dep")).unwrap();
        assert!(lab::locally_valid(dep.trim()), "the closure came along");
        let roots = text(
            &run(lab
                .command("nix-store")
                .args(["--query", "--roots", target]))
            .stdout,
        );
        assert!(
            roots.contains(&dir.join("result").display().to_string()),
            "{host}: not a GC root: {roots}"
        );
        // Into a store path: it comes back, and what it leads to is here.
        assert_eq!(
            std::fs::read_to_string(dir.join("greeting")).unwrap(),
            "hello\n"
        );
        lab::assert_mentions(&text(&out.stderr), &["greeting", "not a GC root here"]);
    });
}

/// nix's messages and `nix flake metadata` name the flake nix read: edict maps HOST's
/// mirror paths back to the local ones when the output passes through it (no terminal).
#[test]
fn nix_output_names_the_local_flake_not_the_mirror() {
    each_host(|lab, host| {
        let dir = lab.workdir(&format!("meta-{host}"));
        lab::write_flake(&dir, &lab::unique_tag());
        lab::git_init(&dir);
        std::fs::write(dir.join("notes.txt"), "dirty\n").unwrap();
        lab::git(&dir, &["add", "notes.txt"]);
        let out = run(lab
            .edict(&dir)
            .args([host, "nix", "flake", "metadata", "--json"]));
        assert!(out.status.success(), "{host}: {}", describe(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            json["resolvedUrl"],
            format!("git+file://{}", dir.display()),
            "{host}"
        );
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("Git tree '{}' is dirty", dir.display())),
            "{host}: {err}"
        );
        assert!(!err.contains(".cache/edict/mirrors"), "{host}: {err}");
    });
}

/// `nix flake update` with a local input outside the flake: the warning that HOST cannot
/// see it comes only from a host that really cannot (nix28 shares this machine's files).
#[test]
fn the_cannot_see_warning_comes_only_from_a_host_that_cannot() {
    let lab = Lab::every();
    for (host, warns) in [("nix28", false), ("nix226", true)] {
        let dep = lab.workdir(&format!("unseen-dep-{host}"));
        std::fs::write(
            dep.join("flake.nix"),
            "{ outputs = { self }: { v = 1; }; }\n",
        )
        .unwrap();
        let dir = lab.workdir(&format!("unseen-{host}"));
        std::fs::write(
            dir.join("flake.nix"),
            format!(
                "{{ inputs.dep.url = \"path:{}\"; outputs = {{ self, dep }}: {{ }}; }}\n",
                dep.display()
            ),
        )
        .unwrap();
        lab.lock_here(&dir);
        let out = run(lab.edict(&dir).args([host, "nix", "flake", "update"]));
        let err = text(&out.stderr);
        assert_eq!(
            err.contains(&format!("which {host} cannot see")),
            warns,
            "{host}: {err}"
        );
        // Where HOST sees the path, the update works there as here.
        if !warns {
            assert!(out.status.success(), "{host}: {}", describe(&out));
        }
    }
}
