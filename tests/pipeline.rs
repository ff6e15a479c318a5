//! The edict pipeline end to end: the real binary against real lab hosts (sshd, rsync,
//! separate nix stores), each scenario on a Nix 2.8 and a Nix 2.26 remote.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use lab::{Flavour, HostSpec, Lab, describe, locally_valid};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running edict")
}

fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?}: {}", describe(&out));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn read_link(p: &Path) -> String {
    std::fs::read_link(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .display()
        .to_string()
}

/// Waits (up to a minute) until a remote app has written `path`; returns its content.
fn wait_for_file(path: &Path) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return text.trim().to_string();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the remote app never wrote {}",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs `cmd` (a `lab.edict(dir)`, adjusted by the caller) as `HOST nix run .#sleeper --
/// /root/NAME.pid`, stderr piped, and waits until the sleeper runs there; returns edict and
/// the sleeper's pid (the hosts share this machine's pid namespace).
fn start_sleeper(
    lab: &Lab,
    host: &str,
    cmd: &mut Command,
    name: &str,
) -> (std::process::Child, String) {
    let pidfile = format!("/root/{name}.pid");
    let child = cmd
        .args([host, "nix", "run", ".#sleeper", "--", &pidfile])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, wait_for_file(&lab.host(host).local_path(&pidfile)))
}

/// Waits (up to 15 s) until process `pid` (of a lab host: same pid namespace) is gone.
fn wait_gone(pid: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the remote command {pid} kept running"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Runs `f` once per flavour, each with its own host in one lab.
fn each_host(f: impl Fn(&Lab, &str, Flavour)) {
    let lab = Lab::every();
    for flavour in Flavour::ALL {
        f(&lab, lab::default_name(flavour), flavour);
    }
}

#[test]
fn build_copies_the_closure_back_as_gc_roots() {
    each_host(|lab, host, flavour| {
        let tag = lab::unique_tag();
        let dir = lab.workdir(&format!("build-{host}"));
        lab::write_rich_flake(&dir, &tag);
        ok(lab.edict(&dir).args([host, "nix", "build", ".#default"]));
        let target = read_link(&dir.join("result"));
        assert!(target.ends_with(&format!("-edict-top-{tag}")), "{target}");
        assert!(locally_valid(&target));
        let dep = std::fs::read_to_string(Path::new(&target).join("dep")).unwrap();
        assert!(
            locally_valid(dep.trim()),
            "the runtime dependency came along"
        );
        // A real indirect GC root, as `nix build` makes.
        let roots = Command::new("nix-store")
            .args(["--query", "--roots", &target])
            .output()
            .unwrap();
        assert!(
            stdout(&roots).contains(&dir.join("result").display().to_string()),
            "{}",
            describe(&roots)
        );
        // The link was made in the run's scratch dir there: the mirror holds no GC root of
        // HOST's. (A plain directory's mirror gets the link as it is here, a symlink nix
        // reads as part of the flake, after the run: see `sync::restamp`.)
        let mirror = lab.mirror_of(host, &format!("build-{host}"));
        assert_eq!(
            std::fs::read_link(mirror.join("result")).ok(),
            std::fs::read_link(dir.join("result")).ok()
        );
        let auto = lab.host(host).local_path("/nix/var/nix/gcroots/auto");
        for root in std::fs::read_dir(&auto).into_iter().flatten().flatten() {
            let to = std::fs::read_link(root.path()).unwrap_or_default();
            assert!(
                !to.to_string_lossy().contains("/.cache/edict/mirrors/"),
                "a GC root on {host} in a mirror: {}",
                to.display()
            );
        }

        // Several outputs: result and result-dev, as nix names them. (`^*` came in Nix 2.9;
        // 2.8 builds only `out` of such an attribute.)
        let (multi, second) = if flavour == Flavour::Bookworm {
            (".#multi", "")
        } else {
            (".#multi^*", "-dev")
        };
        ok(lab.edict(&dir).args([host, "nix", "build", multi]));
        assert_eq!(
            std::fs::read_to_string(dir.join("result")).unwrap(),
            "out\n"
        );
        // -o NAME: the links appear under that name.
        ok(lab
            .edict(&dir)
            .args([host, "nix", "build", multi, "-o", "my out"]));
        assert_eq!(
            std::fs::read_to_string(dir.join("my out")).unwrap(),
            "out\n"
        );
        if !second.is_empty() {
            assert_eq!(
                std::fs::read_to_string(dir.join("result-dev")).unwrap(),
                "dev\n"
            );
            assert_eq!(
                std::fs::read_to_string(dir.join("my out-dev")).unwrap(),
                "dev\n"
            );
        }
    });
}

#[test]
fn git_flake_sends_exactly_what_nix_sees() {
    each_host(|lab, host, _| {
        let tag = lab::unique_tag();
        let name = format!("git-{host}");
        let dir = lab.workdir(&name);
        lab::write_rich_flake(&dir, &tag);
        std::fs::write(dir.join(".gitignore"), "target/\n").unwrap();
        std::fs::write(dir.join("tracked.txt"), "committed\n").unwrap();
        std::fs::write(dir.join("doomed.txt"), "to be deleted\n").unwrap();
        std::fs::create_dir_all(dir.join("odd dir")).unwrap();
        std::fs::write(dir.join("odd dir/it's [a] *file*"), "hostile name\n").unwrap();
        lab::git_init(&dir);
        let head = lab::git(&dir, &["rev-parse", "HEAD"]).trim().to_string();

        // Clean tree: self.rev on HOST is the local HEAD, so .git came along intact.
        ok(lab.edict(&dir).args([host, "nix", "build", ".#default"]));
        let rev = std::fs::read_to_string(dir.join("result/rev")).unwrap();
        assert_eq!(rev.trim(), head);

        // A committed change: HOST keeps its own index, with its own file stats for the
        // changed and the unchanged files, so git and nix there need not hash every file
        // again: each entry's inode is the mirror file's, not this machine's.
        std::fs::write(dir.join("tracked.txt"), "committed again\n").unwrap();
        lab::git(&dir, &["commit", "-qam", "two"]);
        ok(lab.edict(&dir).args([host, "nix", "build", ".#default"]));
        let mirror = lab.mirror_of(host, &name);
        let ino = |index_of: &Path, file: &str| {
            let debug = lab::git(index_of, &["ls-files", "--debug", file]);
            debug
                .split_whitespace()
                .skip_while(|w| *w != "ino:")
                .nth(1)
                .unwrap_or_else(|| panic!("no ino in {debug}"))
                .to_string()
        };
        use std::os::unix::fs::MetadataExt;
        for file in ["flake.nix", "tracked.txt"] {
            let there = std::fs::metadata(mirror.join(file))
                .unwrap()
                .ino()
                .to_string();
            assert_eq!(ino(&mirror, file), there, "{file}");
            assert_ne!(ino(&dir, file), there, "{file}");
        }
        assert_eq!(
            lab::git(&mirror, &["status", "--porcelain", "--untracked-files=no"]),
            "",
            "the mirror is as clean as the work tree here"
        );

        // Dirty tree: uncommitted changes go, untracked and ignored files never do.
        std::fs::write(dir.join("tracked.txt"), "uncommitted\n").unwrap();
        std::fs::write(dir.join("secret.txt"), "untracked secret\n").unwrap();
        std::fs::create_dir_all(dir.join("target")).unwrap();
        std::fs::write(dir.join("target/big"), "ignored\n").unwrap();
        std::fs::remove_file(dir.join("doomed.txt")).unwrap();
        ok(lab.edict(&dir).args([host, "nix", "build", ".#default"]));
        assert_eq!(
            std::fs::read_to_string(dir.join("result/rev")).unwrap(),
            "dirty\n"
        );
        assert_eq!(
            std::fs::read_to_string(mirror.join("tracked.txt")).unwrap(),
            "uncommitted\n"
        );
        assert_eq!(
            std::fs::read_to_string(mirror.join("odd dir/it's [a] *file*")).unwrap(),
            "hostile name\n"
        );
        assert!(mirror.join(".git/HEAD").exists());
        assert!(
            !mirror.join("secret.txt").exists(),
            "untracked files must stay here"
        );
        assert!(
            !mirror.join("target").exists(),
            "ignored files must stay here"
        );
        assert!(
            !mirror.join("doomed.txt").exists(),
            "files deleted here disappear there"
        );

        // Staged and intent-to-add files are tracked; names that are wildcards, not UTF-8 or
        // inside an untracked repository are not. The exclude list is used here (few
        // untracked entries); with many untracked files the include list is, same result.
        std::fs::write(dir.join("staged.txt"), "staged\n").unwrap();
        std::fs::write(dir.join("ita.txt"), "intent to add\n").unwrap();
        lab::git(&dir, &["add", "staged.txt"]);
        lab::git(&dir, &["add", "-N", "ita.txt"]);
        std::fs::write(dir.join("*"), "star\n").unwrap();
        std::fs::write(dir.join(std::ffi::OsStr::from_bytes(b"s\xffcret")), "x\n").unwrap();
        std::fs::create_dir_all(dir.join("nested/.git")).unwrap();
        std::fs::write(dir.join("nested/inner.txt"), "nested\n").unwrap();
        for many_untracked in [false, true] {
            if many_untracked {
                std::fs::create_dir_all(dir.join("junk")).unwrap();
                for i in 0..40 {
                    std::fs::write(dir.join(format!("junk-{i}.tmp")), "junk\n").unwrap();
                }
                // Untracked files alone change nothing HOST has: a tracked edit makes
                // this run send (with the other list).
                std::fs::write(dir.join("staged.txt"), "staged, edited\n").unwrap();
            }
            let out = ok(lab
                .edict(&dir)
                .args(["-vv", host, "nix", "build", ".#default"]));
            let mode = if many_untracked {
                "the tracked ones included"
            } else {
                "the untracked ones excluded"
            };
            assert!(stderr(&out).contains(mode), "{}", stderr(&out));
            let mut there: Vec<String> = std::fs::read_dir(&mirror)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".git")
                .collect();
            there.sort();
            let mut tracked: Vec<String> = lab::git(&dir, &["ls-files"])
                .lines()
                .map(|l| l.split('/').next().unwrap().trim_matches('"').to_string())
                .filter(|n| n != "doomed.txt")
                .collect();
            tracked.sort();
            tracked.dedup();
            assert_eq!(there, tracked, "the mirror holds exactly the tracked files");
            assert!(
                there.contains(&"staged.txt".to_string()) && there.contains(&"ita.txt".to_string())
            );
        }
    });
}

/// The first minutes of every flake: `git init`, `git add flake.nix`, build, with nothing
/// committed yet (no HEAD). Nix builds that here (a dirty tree); so must HOST.
#[test]
fn a_new_repo_with_nothing_committed_builds() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("fresh-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        std::fs::write(dir.join("notes.txt"), "not added\n").unwrap();
        lab::git(&dir, &["init", "-q", "-b", "main"]);
        lab::git(&dir, &["add", "flake.nix"]);
        ok(lab.edict(&dir).args([host, "nix", "build", ".#default"]));
        assert!(dir.join("result/greeting").exists());
        let mirror = lab.mirror_of(host, &format!("fresh-{host}"));
        assert!(
            !mirror.join("notes.txt").exists(),
            "an untracked file was sent"
        );
    });
}

/// `?submodules=1`: the submodule's tracked files (and its `.git` file) go too, never its
/// untracked ones; without it nix leaves the submodule out, here and there alike.
#[test]
fn submodules_go_when_the_ref_asks_for_them() {
    each_host(|lab, host, _| {
        let base = lab.workdir(&format!("subm-{host}"));
        let inner = base.join("inner");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::write(inner.join("data.txt"), "from the submodule\n").unwrap();
        lab::git_init(&inner);
        let top = base.join("top");
        std::fs::create_dir_all(&top).unwrap();
        std::fs::write(
            top.join("flake.nix"),
            r#"{
  outputs = { self }: {
    packages.x86_64-linux.default = derivation {
      name = "subm"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "read -r l < ${./sub/data.txt}; echo \"$l\" > $out" ];
    };
  };
}
"#,
        )
        .unwrap();
        lab::git_init(&top);
        let inner_path = inner.display().to_string();
        lab::git(
            &top,
            &[
                "-c",
                "protocol.file.allow=always",
                "submodule",
                "add",
                "-q",
                &inner_path,
                "sub",
            ],
        );
        lab::git(&top, &["commit", "-qm", "sub"]);
        std::fs::write(top.join("sub/untracked.txt"), "stays here\n").unwrap();
        std::fs::write(top.join("sub/data.txt"), "edited, not committed\n").unwrap();

        ok(lab
            .edict(&top)
            .args([host, "nix", "build", ".?submodules=1#default"]));
        let out = std::fs::read_to_string(top.join("result")).unwrap();
        assert_eq!(out, "edited, not committed\n");
        let mirror = lab.mirror_of(host, "top");
        assert!(mirror.join("sub/.git").is_file());
        assert!(
            !mirror.join("sub/untracked.txt").exists(),
            "an untracked file was sent"
        );

        // Without `?submodules=1` the submodule is not part of the flake: nix fails the
        // same way it would here, and the mirror drops the submodule again.
        let out = run(lab.edict(&top).args([host, "nix", "build", ".#default"]));
        assert!(!out.status.success(), "{}", describe(&out));
        assert!(!mirror.join("sub/data.txt").exists());
    });
}

/// `NIXPKGS_ALLOW_UNFREE=1 … --impure`: nixpkgs' switches reach the evaluation there as
/// they would here; without `--impure` nix ignores them, there as here.
#[test]
fn nixpkgs_switches_reach_an_impure_evaluation() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("impure-{host}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("flake.nix"),
            r#"{
  outputs = { self }: {
    packages.x86_64-linux.default = derivation {
      name = "env"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "echo '<${builtins.getEnv "NIXPKGS_ALLOW_UNFREE"}>' > $out" ];
    };
  };
}
"#,
        )
        .unwrap();
        let build = |impure: bool| {
            let mut cmd = lab.edict(&dir);
            cmd.env("NIXPKGS_ALLOW_UNFREE", "1")
                .args([host, "nix", "build", ".#default"]);
            if impure {
                cmd.arg("--impure");
            }
            ok(&mut cmd);
            std::fs::read_to_string(dir.join("result")).unwrap()
        };
        assert_eq!(build(true), "<1>\n");
        assert_eq!(build(false), "<>\n");
    });
}

/// Without git on HOST, the index sent is used as is (Nix 2.26 and later read the
/// repository with libgit2; Nix 2.8 needs git): self.rev and dirtiness still match this
/// machine's.
#[test]
fn a_host_without_git_sees_the_same_tree() {
    for flavour in [Flavour::Trixie, Flavour::Sid] {
        a_host_without_git_on(flavour);
    }
}

fn a_host_without_git_on(flavour: Flavour) {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("nogit", flavour).without_git());
    assert!(!lab.ssh("nogit", "command -v git").status.success());
    let dir = lab.workdir("nogit");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    lab::git_init(&dir);
    let head = lab::git(&dir, &["rev-parse", "HEAD"]);
    ok(lab.edict(&dir).args(["nogit", "nix", "build", ".#default"]));
    assert_eq!(
        std::fs::read_to_string(dir.join("result/rev"))
            .unwrap()
            .trim(),
        head.trim()
    );
    let mirror = lab.mirror_of("nogit", "nogit");
    assert_eq!(
        std::fs::read(mirror.join(".git/index")).unwrap(),
        std::fs::read(dir.join(".git/index")).unwrap()
    );
    std::fs::write(
        dir.join("flake.nix"),
        std::fs::read_to_string(dir.join("flake.nix")).unwrap() + "\n",
    )
    .unwrap();
    ok(lab.edict(&dir).args(["nogit", "nix", "build", ".#default"]));
    assert_eq!(
        std::fs::read_to_string(dir.join("result/rev")).unwrap(),
        "dirty\n"
    );
}

#[test]
fn run_passes_arguments_output_and_exit_codes() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("run-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        let hostile = [
            "a b",
            "it's",
            "\"dq\"",
            "$(touch /tmp/pwned)",
            "semi;colon",
            "new\nline",
            "",
            "*",
            "--flag",
        ];
        let out = ok(lab
            .edict(&dir)
            .args([host, "nix", "run", ".#args", "--"])
            .args(hostile));
        let expected: String = hostile.iter().map(|a| format!("<{a}>\n")).collect();
        assert_eq!(stdout(&out), expected);
        // The shorthand `edict HOST .#app ARGS` is `nix run .#app -- ARGS`.
        let out = ok(lab.edict(&dir).args([host, ".#args", "-x", "y z"]));
        assert_eq!(stdout(&out), "<-x>\n<y z>\n");
        // The remote exit code is edict's, and both streams pass through.
        let out = run(lab
            .edict(&dir)
            .args([host, "nix", "run", ".#exit", "--", "7"]));
        assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
        assert_eq!(stdout(&out), "exiting with 7\n");
        assert!(stderr(&out).contains("to stderr"));
        // A failing nix command (no such attribute) keeps nix's own exit code and message.
        let out = run(lab.edict(&dir).args([host, "nix", "build", ".#nope"]));
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(stderr(&out).contains("nope"), "{}", describe(&out));
    });
}

#[test]
fn flake_lock_update_and_check_bring_back_the_lock_file() {
    each_host(|lab, host, flavour| {
        let dir = lab.workdir(&format!("lock-{host}"));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(
            dir.join("sub/flake.nix"),
            "{ outputs = { self }: { value = 42; }; }\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("flake.nix"),
            "{\n  inputs.sub.url = \"path:./sub\";\n  outputs = { self, sub }: { packages.x86_64-linux.default = derivation { name = \"v\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo ${toString sub.value} > $out\" ]; }; };\n}\n",
        )
        .unwrap();
        if flavour != Flavour::Bookworm {
            // Nix 2.26 and later lock `path:./sub` in a form this machine's Nix 2.8 cannot
            // read: the lock comes back beside, not as flake.lock (see local_versions.rs).
            let out = run(lab.edict(&dir).args([host, "nix", "flake", "lock"]));
            assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
            assert!(!dir.join("flake.lock").exists());
            let theirs = std::fs::read_to_string(dir.join(format!("flake.lock.edict-{host}")));
            assert!(theirs.unwrap().contains("\"sub\""), "{}", describe(&out));
            assert!(
                stderr(&out).contains("it is not put in your tree"),
                "{}",
                describe(&out)
            );
            return;
        }
        let out = ok(lab.edict(&dir).args([host, "nix", "flake", "lock"]));
        let lock: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("flake.lock")).unwrap())
                .unwrap();
        assert_eq!(
            lock["nodes"]["root"]["inputs"]["sub"],
            "sub",
            "{}",
            describe(&out)
        );
        assert!(stderr(&out).contains("brought back"), "{}", describe(&out));

        std::fs::remove_file(dir.join("flake.lock")).unwrap();
        ok(lab.edict(&dir).args([host, "nix", "flake", "update"]));
        assert!(
            dir.join("flake.lock").exists(),
            "flake update's lock file came back"
        );

        ok(lab.edict(&dir).args([host, "nix", "flake", "check"]));

        // From elsewhere the lock file stays there, unless --sync asks for it.
        std::fs::remove_file(dir.join("flake.lock")).unwrap();
        let elsewhere = lab.workdir(&format!("lock-elsewhere-{host}"));
        let flake = dir.display().to_string();
        let out = ok(lab
            .edict(&elsewhere)
            .args([host, "nix", "flake", "lock", &flake]));
        assert!(!dir.join("flake.lock").exists());
        lab::assert_mentions(
            &stderr(&out),
            &[
                &format!("the lock file this writes stays on {host}"),
                "add --sync",
            ],
        );
        ok(lab
            .edict(&elsewhere)
            .args(["--sync", host, "nix", "flake", "lock", &flake]));
        assert!(
            dir.join("flake.lock").exists(),
            "--sync brings the lock file back"
        );

        let out = run(lab
            .edict(&dir)
            .args([host, "nix", "flake", "check", "./no-such-dir"]));
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("does not exist"),
            "{}",
            describe(&out)
        );
    });
}

#[test]
fn develop_and_shell_run_commands_there() {
    each_host(|lab, host, _| {
        let tag = lab::unique_tag();
        let dir = lab.workdir(&format!("dev-{host}"));
        lab::write_rich_flake(&dir, &tag);
        let out = ok(lab.edict(&dir).args([
            host,
            "nix",
            "develop",
            "-c",
            "sh",
            "-c",
            "echo \"$EDICT_DEV\" \"$0\"",
            "a b",
        ]));
        assert_eq!(stdout(&out), format!("dev-{tag} a b\n"));
        let out = ok(lab
            .edict(&dir)
            .args([host, "nix", "shell", ".#tool", "-c", "args", "x", "./y"]));
        assert_eq!(stdout(&out), "<x>\n<./y>\n");
    });
}

#[test]
fn subdirectory_flakes_and_stateless_use() {
    each_host(|lab, host, _| {
        let tag = lab::unique_tag();
        let repo = lab.workdir(&format!("repo-{host}"));
        lab::write_rich_flake(&repo.join("sub"), &tag);
        std::fs::write(repo.join("README"), "top\n").unwrap();
        lab::git_init(&repo);

        // From the repo root: the whole work tree is mirrored, the link lands here.
        ok(lab
            .edict(&repo)
            .args([host, "nix", "build", "./sub#default"]));
        assert!(read_link(&repo.join("result")).ends_with(&format!("edict-top-{tag}")));
        // From inside the subdirectory: `.` is the flake, the link lands in the subdir.
        ok(lab.edict(&repo.join("sub")).args([host, "nix", "build"]));
        assert!(repo.join("sub/result").exists());
        assert_eq!(
            lab.mirrors(host)
                .iter()
                .filter(|m| m.to_string_lossy().contains(&format!("repo-{host}-")))
                .count(),
            1
        );

        // From elsewhere: stateless. Links are relative to the cwd; nothing comes back.
        let elsewhere = lab.workdir(&format!("elsewhere-{host}"));
        let flake = format!("{}#default", repo.join("sub").display());
        ok(lab
            .edict(&elsewhere)
            .args([host, "nix", "build", &flake, "-o", "out"]));
        assert!(read_link(&elsewhere.join("out")).ends_with(&format!("edict-top-{tag}")));
        let bump = format!("{}#bump", repo.join("sub").display());
        ok(lab.edict(&elsewhere).args([host, "nix", "run", &bump]));
        assert!(!elsewhere.join("version.txt").exists());
        assert!(!repo.join("sub/version.txt").exists());
    });
}

#[test]
fn no_link_and_output_flags_pass_through() {
    each_host(|lab, host, flavour| {
        let tag = lab::unique_tag();
        let dir = lab.workdir(&format!("nolink-{host}"));
        lab::write_rich_flake(&dir, &tag);
        // edict's --no-link: built there, nothing copied here.
        ok(lab
            .edict(&dir)
            .args(["--no-link", host, "nix", "build", ".#dep"]));
        assert!(!dir.join("result").exists());
        let json = ok(lab
            .edict(&dir)
            .args([host, "nix", "build", ".#dep", "--no-link", "--json"]));
        let v: serde_json::Value =
            serde_json::from_str(&stdout(&json)).expect("--json output is nix's, untouched");
        let path = v[0]["outputs"]["out"].as_str().unwrap().to_string();
        assert!(path.ends_with(&format!("edict-dep-{tag}")));
        assert!(!dir.join("result").exists());
        assert!(!locally_valid(&path), "nix's --no-link: nothing copied");
        if flavour == Flavour::Trixie {
            // --print-out-paths exists from Nix 2.9 on.
            let out =
                ok(lab
                    .edict(&dir)
                    .args([host, "nix", "build", ".#dep", "--print-out-paths"]));
            assert_eq!(stdout(&out), format!("{path}\n"));
            assert!(locally_valid(&path));
        }
    });
}

#[test]
fn local_inputs_are_synced_overridden_or_pinned() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("ovr-{host}"));
        let dep = lab.workdir(&format!("dep-{host}"));
        std::fs::write(
            dep.join("flake.nix"),
            "{ outputs = { self }: { value = \"from-dep\"; }; }\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("flake.nix"),
            "{\n  inputs.dep.url = \"path:/nonexistent/edict-dep\";\n  outputs = { self, dep }: { packages.x86_64-linux.default = derivation { name = \"o\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo ${dep.value} > $out\" ]; }; };\n}\n",
        )
        .unwrap();
        let dep_arg = format!("../dep-{host}");
        ok(lab.edict(&dir).args([
            host,
            "nix",
            "build",
            ".#default",
            "--override-input",
            "dep",
            &dep_arg,
        ]));
        assert_eq!(
            std::fs::read_to_string(dir.join("result")).unwrap(),
            "from-dep\n"
        );

        // A path input recorded in flake.lock (outside the flake) arrives as the store path
        // the lock pins.
        let lib = lab.workdir(&format!("lib-{host}"));
        std::fs::write(
            lib.join("flake.nix"),
            "{ outputs = { self }: { value = \"from-lib\"; }; }\n",
        )
        .unwrap();
        let flake2 = lab.workdir(&format!("locked-{host}"));
        std::fs::write(
            flake2.join("flake.nix"),
            format!(
                "{{\n  inputs.lib.url = \"path:{}\";\n  outputs = {{ self, lib }}: {{ packages.x86_64-linux.default = derivation {{ name = \"l\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo ${{lib.value}} > $out\" ]; }}; }};\n}}\n",
                lib.display()
            ),
        )
        .unwrap();
        lab.lock_here(&flake2);
        ok(lab.edict(&flake2).args([host, "nix", "build"]));
        assert_eq!(
            std::fs::read_to_string(flake2.join("result")).unwrap(),
            "from-lib\n"
        );
    });
}

#[test]
fn sync_back_brings_new_changed_and_deleted_files() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("back-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        std::fs::write(dir.join("version.txt"), "1\n").unwrap();
        std::fs::write(dir.join("obsolete.txt"), "old\n").unwrap();
        std::fs::write(dir.join("untracked-here.txt"), "mine\n").unwrap();
        lab::git_init(&dir);
        std::fs::write(dir.join("untracked-here.txt"), "still mine\n").unwrap();
        lab::git(&dir, &["rm", "-q", "--cached", "untracked-here.txt"]);

        let out = ok(lab.edict(&dir).args([host, "nix", "run", ".#bump"]));
        assert_eq!(
            std::fs::read_to_string(dir.join("version.txt")).unwrap(),
            "2\n",
            "{}",
            describe(&out)
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("created.txt")).unwrap(),
            "new\n"
        );
        assert!(
            !dir.join("obsolete.txt").exists(),
            "deleted there, deleted here"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("untracked-here.txt")).unwrap(),
            "still mine\n"
        );
        let err = stderr(&out);
        assert!(
            err.contains("version.txt") && err.contains("created.txt"),
            "{err}"
        );

        // --no-sync: nothing comes back.
        ok(lab
            .edict(&dir)
            .args(["--no-sync", host, "nix", "run", ".#bump"]));
        assert_eq!(
            std::fs::read_to_string(dir.join("version.txt")).unwrap(),
            "2\n"
        );
    });
}

#[test]
fn sync_back_never_overwrites_a_local_edit() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("conflict-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        std::fs::write(dir.join("version.txt"), "1\n").unwrap();
        lab::git_init(&dir);
        let gate = format!("/root/gate-{host}");
        let gate_here = lab.host(host).local_path(&gate);
        let started = lab.host(host).local_path(&format!("{gate}.started"));
        let child = lab
            .edict(&dir)
            .args([host, "nix", "run", ".#gate", "--", &gate])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_file(&started);
        // A local edit while the command runs there, which also changes the file.
        std::fs::write(dir.join("version.txt"), "local edit\n").unwrap();
        std::fs::write(&gate_here, "go").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "a conflict exits non-zero: {}",
            describe(&out)
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("version.txt")).unwrap(),
            "local edit\n"
        );
        let copy = dir.join(format!("version.txt.edict-{host}"));
        assert_eq!(
            std::fs::read_to_string(&copy).unwrap(),
            "11\n",
            "{}",
            describe(&out)
        );
        let err = stderr(&out);
        assert!(
            err.contains("conflict") && err.contains("version.txt"),
            "{err}"
        );
    });
}

#[test]
fn concurrent_runs_on_one_flake_both_succeed() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("conc-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        // The second run must wait for the first (same mirror) and then succeed.
        lab::runs_take_turns(lab, host, &dir, || {});
    });
}

#[test]
fn hidden_nix_and_flakes_disabled() {
    let mut lab = Lab::new();
    for flavour in Flavour::ALL {
        let name = format!("odd{}", flavour.nix_version().replace('.', ""));
        lab.start(
            HostSpec::new(&name, flavour)
                .nix_on_path(false)
                .flakes(false),
        );
        let dir = lab.workdir(&name);
        let tag = lab::unique_tag();
        lab::write_rich_flake(&dir, &tag);
        ok(lab.edict(&dir).args([&name, "nix", "build", ".#default"]));
        assert!(read_link(&dir.join("result")).ends_with(&format!("edict-top-{tag}")));
    }
}

#[test]
fn one_ssh_connection_per_run_and_nothing_left_behind() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("conn-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        let tmp = lab.workdir(&format!("tmp-{host}"));
        let before = lab.logins(host);
        ok(lab
            .edict(&dir)
            .args([host, "nix", "build", ".#default"])
            .env("TMPDIR", &tmp));
        assert_eq!(
            lab.logins(host) - before,
            1,
            "every step must share one ssh connection"
        );
        // A failing run leaves nothing either: no local temp files, no remote run dir.
        let out = run(lab
            .edict(&dir)
            .args([host, "nix", "build", ".#nope"])
            .env("TMPDIR", &tmp));
        assert!(!out.status.success());
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "temp files left in {}",
            tmp.display()
        );
        // The ControlMaster is gone too (its socket lived under TMPDIR).
        let masters = Command::new("pgrep")
            .args(["-f", &format!("ControlPath={}", tmp.display())])
            .output()
            .unwrap();
        assert!(
            stdout(&masters).trim().is_empty(),
            "an ssh master outlived edict"
        );
        let runs = lab.host(host).local_path("/root/.cache/edict/runs");
        // The session ends just after edict exits: give it a moment.
        for _ in 0..100 {
            if std::fs::read_dir(&runs).unwrap().count() == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(
            std::fs::read_dir(&runs).unwrap().count(),
            0,
            "run dirs left on {host}"
        );
        assert!(
            !std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".edict-sync"))
        );
    });
}

/// Ctrl-C during the command, sent to edict alone (`kill -INT`) and, as a terminal does, to
/// its whole process group (then our ssh, having no tty, dies of it first).
#[test]
fn ctrl_c_stops_the_remote_command() {
    use std::os::unix::process::CommandExt as _;
    each_host(|lab, host, _| {
        for group in [false, true] {
            let dir = lab.workdir(&format!("intr-{host}-{group}"));
            lab::write_rich_flake(&dir, &lab::unique_tag());
            let (child, pid) = start_sleeper(
                lab,
                host,
                lab.edict(&dir).process_group(0),
                &format!("sleeper-{host}-{group}"),
            );
            // The host shares this machine's pid namespace, so its processes are visible here.
            assert!(Path::new(&format!("/proc/{pid}")).exists());
            let mut child = child;
            if group {
                unsafe { libc::killpg(child.id() as i32, libc::SIGINT) };
            } else {
                unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            }
            // Within 15 s both the remote command and edict must be gone (nothing keeps running).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    panic!(
                        "edict did not stop within 15 s of SIGINT (remote pid {pid} alive: {})",
                        Path::new(&format!("/proc/{pid}")).exists()
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            };
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert_eq!(status.code(), Some(130), "{err}");
            assert!(err.contains("interrupting"), "{err}");
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "the remote command {pid} kept running after Ctrl-C (to the group: {group}): {err}"
            );
        }
    });
}

#[test]
fn a_one_byte_edit_sends_about_the_delta() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("delta-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        // 8 MiB of incompressible data.
        let mut data = vec![0u8; 8 << 20];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(dir.join("big.bin"), &data).unwrap();
        let sent = |out: &Output| -> u64 {
            let err = stderr(out);
            let line = err
                .lines()
                .find(|l| l.contains("syncing") && l.contains("bytes sent"))
                .unwrap_or_else(|| panic!("no sync stats: {err}"));
            let n = line
                .split(" bytes sent")
                .next()
                .unwrap()
                .rsplit(' ')
                .next()
                .unwrap();
            n.parse().unwrap()
        };
        let first = ok(lab
            .edict(&dir)
            .args(["-vv", "--no-link", host, "nix", "build", ".#dep"]));
        assert!(sent(&first) > 8 << 20, "{}", stderr(&first));
        data[4 << 20] ^= 0xff;
        std::fs::write(dir.join("big.bin"), &data).unwrap();
        let second = ok(lab
            .edict(&dir)
            .args(["-vv", "--no-link", host, "nix", "build", ".#dep"]));
        assert!(
            sent(&second) < 256 << 10,
            "a 1-byte edit sent {} bytes",
            sent(&second)
        );
    });
}

#[test]
fn hostile_local_paths_work() {
    each_host(|lab, host, _| {
        let tag = lab::unique_tag();
        let dir = lab.workdir(&format!("my flake 'q' $x ;{host}"));
        lab::write_rich_flake(&dir, &tag);
        ok(lab.edict(&dir).args([host, "nix", "build", ".#default"]));
        assert!(read_link(&dir.join("result")).ends_with(&format!("edict-top-{tag}")));
        let parent = dir.parent().unwrap();
        let rel = format!("./{}#dep", dir.file_name().unwrap().to_string_lossy());
        ok(lab
            .edict(parent)
            .args([host, "nix", "build", &rel, "-o", "dep link"]));
        assert!(parent.join("dep link").exists());
    });
}

#[test]
fn dry_run_prints_the_plan_without_connecting() {
    let lab = Lab::new();
    let dir = lab.workdir("dry");
    lab::write_rich_flake(&dir, "dry");
    let out = ok(lab.edict(&dir).args([
        "--dry-run",
        "no-such-host.invalid",
        "nix",
        "build",
        ".#default",
        "-L",
    ]));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "sync up:   {} (directory) -> no-such-host.invalid:~/.cache/edict/mirrors/dry-",
            dir.display()
        )),
        "{text}"
    );
    assert!(text.contains("command:   nix --extra-experimental-features 'nix-command flakes' build --out-link ~/.cache/edict/runs/RUN/links/0/result ~/.cache/edict/mirrors/dry-"), "{text}");
    assert!(
        text.contains(&format!("results:   {}/result[-*]", dir.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("sync back: {}", dir.display())),
        "{text}"
    );
    // nixpkgs' switches go along, and the plan shows them.
    let out = ok(lab.edict(&dir).env("NIXPKGS_ALLOW_UNFREE", "1").args([
        "--dry-run",
        "no-such-host.invalid",
        "nix",
        "build",
    ]));
    let text = stdout(&out);
    assert!(
        text.contains("command:   env NIXPKGS_ALLOW_UNFREE=1 nix --extra-experimental-features"),
        "{text}"
    );
}

#[test]
fn every_destination_form_and_edict_ssh_opts() {
    let lab = Lab::every();
    for flavour in Flavour::ALL {
        let host = lab::default_name(flavour);
        let port = lab.host(host).port;
        let dir = lab.workdir(&format!("dest-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        ok(lab
            .edict(&dir)
            .args([&format!("root@{host}"), "nix", "build", ".#dep"]));
        // A URL with a port and no alias: everything comes from EDICT_SSH_OPTS, which wins
        // over a NIX_SSHOPTS that would not work.
        let opts = format!(
            "-F /dev/null -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={}",
            lab.client_key().display(),
            lab.known_hosts().display()
        );
        let url = format!("ssh://root@127.0.0.1:{port}");
        ok(lab
            .edict(&dir)
            .args([&url, "nix", "build", ".#dep", "-o", "via-url"])
            .env("EDICT_SSH_OPTS", &opts)
            .env("NIX_SSHOPTS", "-F /nonexistent"));
        assert!(dir.join("via-url").exists());
    }
}

#[test]
fn verbose_lines_paste_and_quiet_is_quiet() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("verbose-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        let out = ok(lab
            .edict(&dir)
            .args(["-vv", host, "nix", "run", ".#args", "--", "it's", "a b"]));
        assert_eq!(stdout(&out), "<it's>\n<a b>\n");
        // The line for the remote command (at -vv, with its scripts whole), pasted into a
        // shell, does the same on its own.
        let err = stderr(&out);
        let line = err
            .lines()
            .find(|l| l.starts_with("+ ssh ") && l.contains("trap true") && l.contains("#args"))
            .unwrap();
        let line = line.strip_prefix("+ ").unwrap();
        let pasted = lab
            .command("sh")
            .arg("-c")
            .arg(line)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert_eq!(
            stdout(&pasted),
            "<it's>\n<a b>\n",
            "pasted `{line}`: {}",
            describe(&pasted)
        );
        // -q: nix's output only, no edict chatter even when files come back.
        let out = ok(lab.edict(&dir).args(["-q", host, "nix", "run", ".#bump"]));
        assert!(dir.join("version.txt").exists());
        assert!(!stderr(&out).contains("edict:"), "{}", describe(&out));
    });
}

#[test]
fn a_terminal_only_when_all_three_streams_are_terminals() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("tty-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        let out = ok(lab.edict(&dir).args([host, "nix", "run", ".#tty"]));
        assert_eq!(stdout(&out), "notty\n");
        // Under a pseudo-terminal (util-linux `script`), the remote side gets one too.
        let edict = assert_cmd::cargo::cargo_bin("edict");
        let cmd = format!("{} {host} nix run .#tty", edict.display());
        let out = ok(lab
            .command("script")
            .args(["-qec", &cmd, "/dev/null"])
            .current_dir(&dir)
            .stdin(Stdio::piped()));
        assert!(
            stdout(&out).contains("tty") && !stdout(&out).contains("notty"),
            "{}",
            describe(&out)
        );
        // ssh's "Shared connection to … closed." is not printed after it.
        assert!(
            !stdout(&out).contains("Shared connection"),
            "{}",
            describe(&out)
        );
        // `2>file` in a terminal: nix's messages go to the file, as they would here (no
        // terminal there, which would carry them with stdout).
        let err = lab.dir().join(format!("tty-{host}.err"));
        let cmd = format!(
            "{} {host} nix run .#shell -- 'echo to-stdout; echo to-stderr >&2' 2>{}",
            edict.display(),
            err.display()
        );
        let out = ok(lab
            .command("script")
            .args(["-qec", &cmd, "/dev/null"])
            .current_dir(&dir)
            .stdin(Stdio::piped()));
        assert!(stdout(&out).contains("to-stdout"), "{}", describe(&out));
        assert!(!stdout(&out).contains("to-stderr"), "{}", describe(&out));
        assert!(std::fs::read_to_string(&err).unwrap().contains("to-stderr"));
    });
}

/// Ctrl-C in a terminal while the command runs reaches the command there, as it would
/// here; edict exits with the command's own code: 130 for a program that dies of it, 1 for
/// nix (which exits 1 when interrupted, here too).
#[test]
fn ctrl_c_in_a_terminal_is_the_commands_own() {
    each_host(|lab, host, _| {
        let tag = lab::unique_tag();
        let dir = lab.workdir(&format!("ttyc-{host}"));
        lab::write_rich_flake(&dir, &tag);
        let edict = assert_cmd::cargo::cargo_bin("edict");
        let slow = format!(
            "derivation {{ name = \"slow-{tag}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo slow-started; /bin/sleep 300\" ]; }}"
        );
        for (line, started, want) in [
            (
                format!("{} {host} nix run .#sleeper -- pid", edict.display()),
                "sleeper",
                130,
            ),
            (
                format!(
                    "{} {host} nix build -L --expr {}",
                    edict.display(),
                    shell_quote(&slow)
                ),
                "slow-started",
                1,
            ),
        ] {
            let mut child = lab
                .command("script")
                .args(["-qefc", &line, "/dev/null"])
                .current_dir(&dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            if started == "sleeper" {
                let name = format!("ttyc-{host}-");
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                let mirror = loop {
                    let found = lab.mirrors(host).into_iter().find(|m| {
                        m.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with(&name))
                    });
                    if let Some(m) = found {
                        break m;
                    }
                    assert!(std::time::Instant::now() < deadline, "no mirror");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                };
                lab::wait_for(&mirror.join("pid"));
            } else {
                let mut seen = String::new();
                let mut out = child.stdout.take().unwrap();
                while !seen.contains(started) {
                    let mut buf = [0u8; 4096];
                    let n = std::io::Read::read(&mut out, &mut buf).unwrap();
                    assert!(n > 0, "{line}: ended before it started: {seen}");
                    seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                child.stdout = Some(out);
            }
            // Ctrl-C, and again every 2 s as a user would (one can land while nix is still
            // setting up the build); bounded, so a lost one fails instead of waiting out
            // the build.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let status = loop {
                let _ = std::io::Write::write_all(&mut stdin, b"\x03");
                let tick = std::time::Instant::now() + std::time::Duration::from_secs(2);
                let done = loop {
                    if let Some(s) = child.try_wait().unwrap() {
                        break Some(s);
                    }
                    if std::time::Instant::now() > tick {
                        break None;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                };
                if let Some(s) = done {
                    break s;
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("{line}: Ctrl-C did not end it");
                }
            };
            let out = child.wait_with_output().unwrap();
            assert_eq!(status.code(), Some(want), "{line}: {}", describe(&out));
        }
    });
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn a_remote_exit_255_is_not_an_ssh_failure() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("e255-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        let out = run(lab
            .edict(&dir)
            .args([host, "nix", "run", ".#exit", "--", "255"]));
        assert_eq!(out.status.code(), Some(255));
        assert!(
            !stderr(&out).contains("connection was lost"),
            "{}",
            describe(&out)
        );
    });
}

#[test]
fn a_commit_there_comes_back_as_uncommitted_changes() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("commit-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        std::fs::write(dir.join("tracked.txt"), "original\n").unwrap();
        lab::git_init(&dir);
        let head = || lab::git(&dir, &["rev-parse", "HEAD"]);
        let before = head();
        let out = ok(lab.edict(&dir).args([host, "nix", "run", ".#commit"]));
        assert_eq!(
            std::fs::read_to_string(dir.join("tracked.txt")).unwrap(),
            "committed there\n"
        );
        assert_eq!(head(), before, "local .git is never changed by edict");
        assert!(
            stderr(&out).contains("changed git state"),
            "{}",
            describe(&out)
        );
        // The next run sends the local .git again: the remote commit is gone there.
        ok(lab.edict(&dir).args([host, "nix", "build", ".#dep"]));
        let mirror = lab.mirror_of(host, &format!("commit-{host}"));
        assert_eq!(lab::git(&mirror, &["rev-parse", "HEAD"]), before);
    });
}

#[test]
fn after_kill_9_the_next_run_just_works() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("kill9-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        let (mut child, remote_pid) =
            start_sleeper(lab, host, &mut lab.edict(&dir), &format!("kill9-{host}"));
        child.kill().unwrap(); // SIGKILL: no cleanup of its own
        child.wait().unwrap();
        // Its lock session ended with it, and HOST stopped the command.
        wait_gone(&remote_pid);
        // The lock went with the lock session (the next run may see it for the moment the
        // cleanup takes, and then goes on).
        ok(lab.edict(&dir).args([host, "nix", "build", ".#default"]));
        assert!(dir.join("result/greeting").exists());
    });
}

/// The network goes away mid-run (here: edict's ssh master connection dies, as it does when
/// the link drops and ssh gives up): edict says so with host, step and a fix, exits 255 as ssh
/// does, leaves the local tree alone, the host stops the command, and the next run works.
#[test]
fn a_connection_lost_mid_run_is_reported_and_the_next_run_works() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("lost-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        let listing = || {
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            (
                names,
                std::fs::read_to_string(dir.join("flake.nix")).unwrap(),
            )
        };
        let before = listing();
        let (child, remote_pid) =
            start_sleeper(lab, host, &mut lab.edict(&dir), &format!("lost-{host}"));
        // This run's master: the one ssh with ControlMaster=yes, this lab's ssh config and
        // this host (those of earlier hosts' runs are kept too).
        let config = lab.ssh_config().display().to_string();
        let masters: Vec<i32> = pids()
            .into_iter()
            .filter(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let words: Vec<String> = cmd
                    .split(|b| *b == 0)
                    .filter(|w| !w.is_empty())
                    .map(|w| String::from_utf8_lossy(w).into_owned())
                    .collect();
                words.iter().any(|w| w == "ControlMaster=yes")
                    && words.iter().any(|w| w.contains(&config))
                    && words.last().map(String::as_str) == Some(host)
            })
            .collect();
        assert_eq!(masters.len(), 1, "one master for this run: {masters:?}");
        unsafe { libc::kill(masters[0], libc::SIGKILL) };
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(255), "{err}");
        lab::assert_mentions(
            &err,
            &[host, "lost", &format!("fix: check the network to {host}")],
        );
        assert_eq!(listing(), before, "nothing local changed");
        // The connection's end ended the lock session there, which stopped the command.
        wait_gone(&remote_pid);
        ok(lab.edict(&dir).args([host, "nix", "build", ".#default"]));
        assert!(dir.join("result/greeting").exists());
    });
}

/// The link goes silent mid-run (the host's sshd stops answering, as when a laptop changes
/// networks): with keepalives from the user's ssh options, edict's master gives up, and edict
/// says so with ssh's own words, host, step and fix, instead of waiting forever.
#[test]
fn a_silent_link_ends_the_run_with_ssh_s_words() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("silent-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        let (child, remote_pid) = start_sleeper(
            lab,
            host,
            lab.edict(&dir).env(
                "EDICT_SSH_OPTS",
                format!(
                    "{} -o ServerAliveInterval=1 -o ServerAliveCountMax=2",
                    lab.ssh_opts()
                ),
            ),
            &format!("silent-{host}"),
        );
        // Freeze every sshd serving a connection on this host (not the listener itself).
        let sessions = sshd_sessions(lab.host(host).pid() as i32);
        assert!(!sessions.is_empty());
        for pid in &sessions {
            unsafe { libc::kill(*pid, libc::SIGSTOP) };
        }
        let out = child.wait_with_output().unwrap();
        for pid in &sessions {
            unsafe { libc::kill(*pid, libc::SIGCONT) };
        }
        // Back, HOST's sshd finds the connection gone; the lock session's end stops the command.
        wait_gone(&remote_pid);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(255), "{err}");
        lab::assert_mentions(
            &err,
            &[
                &format!("{host}: running the command: the ssh connection was lost"),
                "ssh said: Timeout, server",
                "not responding",
                "fix: check the network",
            ],
        );
    });
}

/// Every process of this machine (the lab hosts' too: they share its pid namespace).
fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// The processes below the sshd listener `listener` whose name starts with sshd: one or two
/// per connection (`sshd: root@notty`, OpenSSH ≥ 9.8's `sshd-session`).
fn sshd_sessions(listener: i32) -> Vec<i32> {
    let parent = |pid: i32| -> Option<(i32, String)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        Some((rest.split(' ').nth(1)?.parse().ok()?, name.to_string()))
    };
    pids()
        .into_iter()
        .filter(|&pid| {
            let Some((mut up, name)) = parent(pid) else {
                return false;
            };
            while up > 1 {
                if up == listener {
                    return name.starts_with("sshd");
                }
                up = parent(up).map_or(0, |p| p.0);
            }
            false
        })
        .collect()
}

/// root's login shell is fish, which reads ssh's command line with its own quoting rules
/// (`\\` and `\'` inside single quotes are escapes there): builds, arguments with
/// backslashes and quotes, and sync-back all work as with sh.
#[test]
fn a_fish_login_shell_changes_nothing() {
    for flavour in Flavour::ALL {
        a_fish_login_shell_on(flavour);
    }
}

fn a_fish_login_shell_on(flavour: Flavour) {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("fish", flavour).login_shell("/usr/bin/fish"));
    let shell = lab.ssh_ok("fish", "echo fish $FISH_VERSION");
    assert!(shell.trim().len() > "fish ".len(), "not fish: {shell:?}");
    let dir = lab.workdir("fish");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    std::fs::write(dir.join("version.txt"), "1\n").unwrap();
    ok(lab.edict(&dir).args(["fish", "nix", "build", ".#default"]));
    assert!(dir.join("result/greeting").exists());
    let args = [
        "a\\b",
        "x\\\\y",
        "it's",
        "\\'",
        "trailing\\",
        "$HOME",
        "(echo hi)",
    ];
    let out = ok(lab
        .edict(&dir)
        .args(["fish", "nix", "run", ".#args", "--"])
        .args(args));
    let expected: String = args.iter().map(|a| format!("<{a}>\n")).collect();
    assert_eq!(stdout(&out), expected);
    ok(lab.edict(&dir).args(["fish", "nix", "run", ".#bump"]));
    assert_eq!(
        std::fs::read_to_string(dir.join("version.txt")).unwrap(),
        "2\n"
    );
}

/// Ctrl-C while the source is still on its way (a terminal sends SIGINT to rsync too, so
/// rsync dies first): edict reports an interruption with 130, not an rsync failure to debug,
/// and the next run sends the source whole.
#[test]
fn ctrl_c_while_syncing_is_an_interruption_not_an_error() {
    for flavour in Flavour::ALL {
        ctrl_c_while_syncing_on(flavour);
    }
}

fn ctrl_c_while_syncing_on(flavour: Flavour) {
    use std::os::unix::process::CommandExt as _;
    let mut lab = Lab::new();
    // 4 MB at 8 Mbit/s: four seconds of rsync to interrupt.
    lab.start(HostSpec::slow("slow", flavour));
    let dir = lab.workdir("slow");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    let noise: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("big.bin"), &noise).unwrap();
    let mut child = lab
        .edict(&dir)
        .args(["-vv", "slow", "nix", "build", ".#default"])
        .stderr(Stdio::piped())
        .process_group(0) // its own group, as a terminal's foreground job is
        .spawn()
        .unwrap();
    let mut log = lab::StderrLog::of(&mut child);
    log.until("prepared; syncing");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    unsafe { libc::killpg(child.id() as i32, libc::SIGINT) };
    let err = log.rest();
    let status = child.wait().unwrap();
    assert!(
        !err.contains("synced; running"),
        "the sync was not interrupted: {err}"
    );
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(!err.contains("edict: error"), "{err}");
    assert!(!dir.join("result").exists());
    let out = ok(lab.edict(&dir).args(["slow", "nix", "build", ".#default"]));
    assert!(dir.join("result/greeting").exists(), "{}", describe(&out));
    let mirror = lab.mirror_of("slow", "slow");
    assert_eq!(std::fs::read(mirror.join("big.bin")).unwrap(), noise);
}

/// Ctrl-C while waiting for another run's lock on the same flake ends the wait at once
/// (130, "interrupted while preparing"); the other run is untouched.
#[test]
fn ctrl_c_while_waiting_for_the_lock() {
    let lab = Lab::every();
    for flavour in Flavour::ALL {
        ctrl_c_while_waiting_on(&lab, lab::default_name(flavour));
    }
}

fn ctrl_c_while_waiting_on(lab: &Lab, host: &str) {
    use std::os::unix::process::CommandExt as _;
    let dir = lab.workdir(&format!("lockwait-{host}"));
    lab::write_rich_flake(&dir, &lab::unique_tag());
    let (mut first, remote_pid) = start_sleeper(lab, host, &mut lab.edict(&dir), "lockwait");
    let mut second = lab
        .edict(&dir)
        .args([host, "nix", "build", ".#default"])
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut log = lab::StderrLog::of(&mut second);
    log.until("waiting for it to finish");
    assert!(log.text.contains("waiting"), "{}", log.text);
    let sent = std::time::Instant::now();
    unsafe { libc::killpg(second.id() as i32, libc::SIGINT) };
    let err = log.rest();
    let status = second.wait().unwrap();
    assert!(sent.elapsed() < std::time::Duration::from_secs(5), "{err}");
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted while preparing"), "{err}");
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run was disturbed"
    );
    assert!(Path::new(&format!("/proc/{remote_pid}")).exists());
    unsafe { libc::kill(remote_pid.parse().unwrap(), libc::SIGKILL) };
    first.wait().unwrap();
}

#[test]
fn multi_user_hosts_reached_as_an_ordinary_user() {
    let mut lab = Lab::new();
    for flavour in Flavour::ALL {
        let host = format!("mu{}", flavour.nix_version().replace('.', ""));
        lab.start(HostSpec::new(&host, flavour).user("edict-remote"));
        let tag = lab::unique_tag();
        let dir = lab.workdir(&host);
        lab::write_rich_flake(&dir, &tag);
        std::fs::write(dir.join("version.txt"), "1\n").unwrap();
        ok(lab
            .edict(&dir)
            .args([host.as_str(), "nix", "build", ".#default"]));
        assert!(read_link(&dir.join("result")).ends_with(&format!("edict-top-{tag}")));
        ok(lab
            .edict(&dir)
            .args([host.as_str(), "nix", "run", ".#bump"]));
        assert_eq!(
            std::fs::read_to_string(dir.join("version.txt")).unwrap(),
            "2\n"
        );
        // The mirror is in that user's cache, not root's.
        assert!(
            lab.host(&host)
                .local_path("/home/edict-remote/.cache/edict/mirrors")
                .is_dir()
        );
    }
}

/// From a subdirectory that git does not track (an empty `build/`, an ignored `target/`),
/// nix here searches upward for the flake; so does edict's command there, in that same
/// directory of the mirror.
#[test]
fn from_an_untracked_subdirectory_the_flake_above_is_used() {
    each_host(|lab, host, _| {
        let dir = lab.workdir(&format!("untracked-sub-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        lab::git_init(&dir);
        let build = dir.join("build");
        std::fs::create_dir_all(&build).unwrap();
        let out = ok(lab.edict(&build).args([host, "nix", "build"]));
        assert!(build.join("result/greeting").exists(), "{}", describe(&out));
        let out = ok(lab
            .edict(&build)
            .args([host, "nix", "run", ".#args", "--", "x"]));
        assert_eq!(stdout(&out), "<x>\n");
    });
}

/// `-v` reads as the run goes (#17): a headline per step, in order, and the nix command as
/// it runs on HOST (`cd MIRROR && nix …`) alone, before the ssh line that runs it.
#[test]
fn verbose_shows_each_step_and_the_command_alone_first() {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("v", Flavour::Trixie));
    let dir = lab.workdir("verbose");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    let out = ok(lab.edict(&dir).args([
        "-v",
        "--compress",
        "never",
        "--substitute",
        "never",
        "v",
        "nix",
        "build",
        ".#default",
    ]));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    let at = |what: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("no line starting {what:?}:\n{err}"))
    };
    let steps = [
        "edict: v: preparing",
        "edict: v: prepared; syncing",
        "edict: v: synced; running",
        "edict: v: cd ",
        "edict: v: the command exited with 0; inspecting",
        "edict: v: fetching results",
        "edict: v: syncing back",
        "edict: v: done",
    ];
    let places: Vec<usize> = steps.iter().map(|s| at(s)).collect();
    assert!(places.windows(2).all(|w| w[0] < w[1]), "{places:?}:\n{err}");
    let command = lines[at("edict: v: cd ")];
    assert!(
        command.contains(" && ")
            && command.contains("nix-command flakes' build ")
            && command.ends_with("#default'"),
        "{command}"
    );
    // The ssh line that runs it comes right after.
    assert!(
        lines[at("edict: v: cd ") + 1].starts_with("+ ssh "),
        "{err}"
    );
    // The whole of -v, with what differs from run to run made constant, is as recorded:
    // every process edict starts (the ssh master, the checks, the scripts given to the
    // session holding the run), each script by its name. (Compression and substitutes are
    // fixed above: `auto` decides by the link's round trip, which a busy machine can
    // stretch past 30 ms.)
    let snapshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/verbose-run.txt");
    let now = normalise(&err, lab.dir());
    if std::env::var_os("EDICT_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&snapshot, &now).unwrap();
    }
    let recorded = std::fs::read_to_string(&snapshot).unwrap();
    assert!(
        now == recorded,
        "-v differs from {} (EDICT_UPDATE_SNAPSHOTS=1 cargo test --test pipeline verbose records it anew):\n--- now\n{now}--- recorded\n{recorded}",
        snapshot.display()
    );
    assert!(
        !now.contains("echo EDICT-alive"),
        "a script body at -v:\n{now}"
    );
    // -vv prints the scripts whole, as lines that can be pasted.
    let out = ok(lab
        .edict(&dir)
        .args(["-vv", "v", "nix", "build", ".#default"]));
    let err = stderr(&out);
    assert!(
        err.contains("echo EDICT-alive") && !err.contains("{prepare.sh}"),
        "{err}"
    );
}

/// `-v` output with what changes from run to run made constant: the lab's directory, store
/// hashes, hex digests and run ids, numbers (ports, pids, times); only edict's own lines
/// (nix's output varies with its version).
fn normalise(text: &str, lab_dir: &Path) -> String {
    let text = text.replace(&lab_dir.display().to_string(), "LAB");
    let mut out = String::new();
    for line in text.lines() {
        if !(line.starts_with("+ ") || line.starts_with("edict: ")) {
            continue;
        }
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let rest: String = chars[i..].iter().collect();
            if rest.starts_with("/nix/store/") && chars.len() >= i + 43 {
                out.push_str("/nix/store/HASH");
                i += 43;
                continue;
            }
            let run = chars[i..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
                .count();
            let digits = chars[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            // Any number: a pid of three digits too.
            let word_start = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
            if word_start && run >= 12 {
                out.push('#');
                i += run;
            } else if word_start && digits >= 1 {
                out.push('N');
                i += digits;
            } else {
                out.push(chars[i]);
                i += 1;
            }
        }
        out.push('\n');
    }
    out
}
