//! Data safety of sync-back, against real lab hosts on Nix 2.8 and 2.26: what a command on
//! HOST does to its mirror can never make edict write outside the local tree, replace a file
//! it should not, plant setuid files or fill the local disk; a file that cannot come back is
//! named, and the rest still comes back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use lab::{Flavour, Lab, describe};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

fn each_host(f: impl Fn(&Lab, &str, Flavour)) {
    let lab = Lab::every();
    for flavour in Flavour::ALL {
        f(&lab, lab::default_name(flavour), flavour);
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A git flake (the rich lab flake plus `files`, committed) in a fresh workdir.
fn flake(lab: &Lab, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = lab.workdir(name);
    lab::write_rich_flake(&dir, &lab::unique_tag());
    for (f, text) in files {
        let p = dir.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    lab::git_init(&dir);
    dir
}

/// `edict HOST nix run .#shell -- SCRIPT` in `dir`.
fn shell(lab: &Lab, host: &str, dir: &Path, extra: &[&str], script: &str) -> Output {
    lab.edict(dir)
        .args(extra)
        .args([host, "nix", "run", ".#shell", "--", script])
        .output()
        .unwrap()
}

/// Starts `edict HOST nix run .#shell` whose script waits at a gate before running `after`;
/// returns edict and the gate (as a local path: write it to let the script go on).
fn gated(
    lab: &Lab,
    host: &str,
    dir: &Path,
    name: &str,
    after: &str,
) -> (std::process::Child, PathBuf) {
    let gate = format!("/root/gate-{name}-{host}");
    let script = format!(
        "echo started > {gate}.started; i=0; while [ ! -e {gate} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; {after}"
    );
    let child = lab
        .edict(dir)
        .args([host, "nix", "run", ".#shell", "--", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lab::wait_for(&lab.host(host).local_path(&format!("{gate}.started")));
    (child, lab.host(host).local_path(&gate))
}

/// Finding 1: sync-back never writes through a symlink here, whichever way it points and
/// whenever it appeared; what it refuses is named, exit 1, the rest comes back.
#[test]
fn sync_back_never_writes_through_a_symlink() {
    each_host(|lab, host, _| {
        // A tracked relative symlink to a directory outside the tree, which HOST's command
        // replaces with a real directory holding a new file.
        let shared = lab.workdir(&format!("shared-docs-{host}"));
        let dir = lab.workdir(&format!("links-{host}"));
        lab::write_rich_flake(&dir, &lab::unique_tag());
        symlink(format!("../shared-docs-{host}"), dir.join("docs")).unwrap();
        // A tracked symlink to a file outside, which HOST replaces with a file.
        let outside_file = lab.workdir(&format!("outside-{host}")).join("target.txt");
        std::fs::write(&outside_file, "outside\n").unwrap();
        symlink(&outside_file, dir.join("link.txt")).unwrap();
        lab::git_init(&dir);

        let out = shell(
            lab,
            host,
            &dir,
            &[],
            "rm docs && mkdir docs && echo new > docs/new.md; rm link.txt && echo host > link.txt; echo ok > ok.txt",
        );
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(
            !shared.join("new.md").exists(),
            "wrote through the docs symlink: {}",
            describe(&out)
        );
        lab::assert_mentions(
            &stderr(&out),
            &["not brought back", "docs/new.md", "never writes through"],
        );
        // The link itself is replaced by HOST's file; its target is untouched.
        assert_eq!(read(&outside_file), "outside\n");
        assert!(!dir.join("link.txt").is_symlink());
        assert_eq!(read(&dir.join("link.txt")), "host\n");
        assert_eq!(read(&dir.join("ok.txt")), "ok\n");

        // A directory replaced here by a symlink (absolute, to a directory elsewhere) while
        // the command regenerates a file in it there.
        let dir = flake(
            lab,
            &format!("late-link-{host}"),
            &[("conf/app.conf", "v1\n")],
        );
        let elsewhere = lab.workdir(&format!("elsewhere-{host}"));
        std::fs::write(elsewhere.join("app.conf"), "precious\n").unwrap();
        let (child, gate) = gated(lab, host, &dir, "conf", "echo v2 > conf/app.conf");
        std::fs::rename(dir.join("conf"), lab.workdir(&format!("moved-conf-{host}"))).unwrap();
        symlink(&elsewhere, dir.join("conf")).unwrap();
        std::fs::write(&gate, "go").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert_eq!(read(&elsewhere.join("app.conf")), "precious\n");
        lab::assert_mentions(&stderr(&out), &["not brought back", "conf/app.conf"]);
    });
}

/// Finding 4: a conflict copy never replaces a file: the second conflict on the same file
/// gets a new name, and the first copy (perhaps hand-merged by now) stays as it is.
#[test]
fn conflict_copies_never_replace_a_file() {
    each_host(|lab, host, _| {
        let dir = flake(lab, &format!("copies-{host}"), &[("version.txt", "1\n")]);
        for (round, edit) in [(1, "first local edit\n"), (2, "second local edit\n")] {
            let (child, gate) = gated(
                lab,
                host,
                &dir,
                &format!("copy{round}"),
                &format!("echo host {round} > version.txt"),
            );
            std::fs::write(dir.join("version.txt"), edit).unwrap();
            std::fs::write(&gate, "go").unwrap();
            let out = child.wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
            assert_eq!(read(&dir.join("version.txt")), edit);
            if round == 1 {
                let first = dir.join(format!("version.txt.edict-{host}"));
                assert_eq!(read(&first), "host 1\n");
                std::fs::write(&first, "my hand merge\n").unwrap();
            }
        }
        assert_eq!(
            read(&dir.join(format!("version.txt.edict-{host}"))),
            "my hand merge\n"
        );
        assert_eq!(
            read(&dir.join(format!("version.txt.edict-{host}-2"))),
            "host 2\n"
        );
    });
}

/// Findings 6, 7 and 9: nothing comes back setuid, setgid or writable by others; a file over --max-sync-size
/// (a sparse 1 GiB file, 0 bytes on HOST's disk) stays there and is named; a file whose
/// directory is a file here is named; everything else still comes back, no staging
/// directory stays in the tree, and HOST's cache is private (finding 11).
#[test]
fn what_comes_back_is_bounded_and_every_refusal_is_named() {
    each_host(|lab, host, _| {
        let dir = flake(lab, &format!("bounds-{host}"), &[]);
        // Untracked here (never sent): HOST makes a directory of that name.
        std::fs::write(dir.join("z"), "a local file\n").unwrap();
        let out = shell(
            lab,
            host,
            &dir,
            &[],
            "echo '#!/bin/sh' > suid.sh; chmod 6777 suid.sh; \
             truncate -s 1G sparse.bin; mkdir z && echo x > z/x; echo ok > ok.txt",
        );
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let mode = std::fs::metadata(dir.join("suid.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o7777,
            0o755,
            "setuid, setgid and go-w must be stripped: {mode:o}"
        );
        assert!(!dir.join("sparse.bin").exists(), "{}", describe(&out));
        assert_eq!(read(&dir.join("z")), "a local file\n");
        assert_eq!(read(&dir.join("ok.txt")), "ok\n");
        let staging_left = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".edict-sync-"));
        assert!(!staging_left, "a staging directory was left in the tree");
        // edict's cache on HOST (mirrors, with .git/config) is for its user only.
        let cache = lab.host(host).local_path("/root/.cache/edict");
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", cache.display());
        let err = stderr(&out);
        lab::assert_mentions(
            &err,
            &[
                &format!("not brought back from {host}"),
                "sparse.bin",
                "--max-sync-size",
                "z/x",
                "not a directory",
            ],
        );
        // Raised, the bound lets a big file come back.
        let out = shell(
            lab,
            host,
            &dir,
            &["--max-sync-size", "2M"],
            "head -c 1500000 /dev/zero > big.bin",
        );
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(
            std::fs::metadata(dir.join("big.bin")).unwrap().len(),
            1_500_000
        );
        let out = shell(
            lab,
            host,
            &dir,
            &["--max-sync-size", "1M"],
            "echo more >> big.bin",
        );
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert_eq!(
            std::fs::metadata(dir.join("big.bin")).unwrap().len(),
            1_500_000
        );
    });
}

/// Finding 11: SIGTERM (or a Ctrl-C sent to edict's pid alone) while HOST's files are on
/// their way: none of them is placed, no staging directory stays, and edict exits 130
/// naming the step, as README says.
#[test]
fn a_signal_during_sync_back_places_nothing_and_exits_130() {
    for flavour in Flavour::ALL {
        a_signal_during_sync_back_on(flavour);
    }
}

fn a_signal_during_sync_back_on(flavour: Flavour) {
    let mut lab = Lab::new();
    // 3 MB at 8 Mbit/s: three seconds of pull to interrupt.
    lab.start(lab::HostSpec::slow("slowback", flavour));
    let dir = flake(&lab, "slowback", &[]);
    let mut child = lab
        .edict(&dir)
        .args([
            "-vv",
            "slowback",
            "nix",
            "run",
            ".#shell",
            "--",
            "echo ok > ok.txt; head -c 3000000 /dev/urandom > big.bin",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = lab::StderrLog::of(&mut child);
    log.until("syncing back");
    std::thread::sleep(std::time::Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let err = log.rest();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    lab::assert_mentions(&err, &["slowback: interrupted while syncing back"]);
    assert!(!err.contains("edict: error"), "{err}");
    assert!(
        !dir.join("ok.txt").exists() && !dir.join("big.bin").exists(),
        "{err}"
    );
    let staging_left = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(".edict-sync-"));
    assert!(!staging_left, "{err}");
}

/// Finding 2: a directory that nix would not read as a flake (no flake.nix in it or above
/// it), such as a home directory with its ~/.ssh, is never sent: edict stops before it
/// connects, with the fix; an empty `nix repl` there sends nothing and works.
#[test]
fn a_directory_without_flake_nix_is_never_sent() {
    let mut lab = Lab::new();
    lab.start(lab::HostSpec::new("nix28", Flavour::Bookworm));
    let home = lab.workdir("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/id_ed25519"), "secret key\n").unwrap();
    for line in [
        &["nix", "build"][..],
        &["nix", "develop", "-c", "true"],
        &["nix", "run", ".#x"],
    ] {
        let out = lab.edict(&home).arg("nix28").args(line).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{line:?}: {}", describe(&out));
        lab::assert_mentions(
            &stderr(&out),
            &["nix28", "holds no flake.nix", "nothing was sent", "fix:"],
        );
    }
    let out = lab
        .edict(&home)
        .args(["nix28", "nix", "repl"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        lab.mirrors("nix28").is_empty(),
        "{:?}",
        lab.mirrors("nix28")
    );
}

/// Finding 3: a local path in flake.lock that flake.nix does not declare (a cloned repo's
/// lock is someone else's words) is never sent; the declared one still is.
#[test]
fn lock_inputs_flake_nix_does_not_declare_are_never_sent() {
    each_host(|lab, host, _| {
        let tag = lab::unique_tag();
        let dep = lab.workdir(&format!("dep-{host}"));
        std::fs::write(
            dep.join("flake.nix"),
            format!("{{ outputs = {{ self }}: {{ v = \"dep-{tag}\"; }}; }}\n"),
        )
        .unwrap();
        let secret = lab.workdir(&format!("secret-{host}"));
        std::fs::write(secret.join("id_ed25519"), "secret\n").unwrap();
        let dir = lab.workdir(&format!("declared-{host}"));
        std::fs::write(
            dir.join("flake.nix"),
            format!(
                "{{\n  inputs.dep.url = \"path:{}\";\n  outputs = {{ self, dep }}: {{\n    packages.x86_64-linux.default = derivation {{ name = \"declared-{tag}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo ${{dep.v}} > $out\" ]; }};\n  }};\n}}\n",
                dep.display()
            ),
        )
        .unwrap();
        lab.lock_here(&dir);
        // Someone else's lock: an extra node for a local directory flake.nix never names.
        let mut lock: serde_json::Value =
            serde_json::from_str(&read(&dir.join("flake.lock"))).unwrap();
        lock["nodes"]["stray"] = serde_json::json!({
            "locked": {"type": "path", "path": secret.display().to_string(), "lastModified": 1, "narHash": "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="},
            "original": {"type": "path", "path": secret.display().to_string()}
        });
        lock["nodes"]["root"]["inputs"]["stray"] = serde_json::json!("stray");
        std::fs::write(dir.join("flake.lock"), lock.to_string()).unwrap();

        let out = lab
            .edict(&dir)
            .args([host, "nix", "build", ".#default"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        assert!(read(&dir.join("result")).contains(&format!("dep-{tag}")));
        let mirrors: Vec<String> = lab
            .mirrors(host)
            .iter()
            .map(|m| m.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        // (The declared one reached HOST as the store path its lock pins: the result
        // holds its value.)
        assert!(
            !mirrors.iter().any(|m| m.starts_with("secret-")),
            "an undeclared lock input was sent: {mirrors:?}"
        );
    });
}

/// Finding 2, file options: `-f FILE` outside git sends its directory (an expression
/// imports its neighbours) unless that is a home: then the file alone, with a note, never
/// `~/.ssh`; `--output-lock-file` writes there and fetches the file here, never sending
/// its directory.
#[test]
fn file_options_never_send_a_home_and_output_files_come_back_alone() {
    each_host(|lab, host, flavour| {
        let tag = lab::unique_tag();
        let expr = |text: &str| {
            format!(
                "derivation {{ name = \"file-{tag}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo ${{{text}}} > $out\" ]; }}\n"
            )
        };
        // A project directory: its neighbours go.
        let dir = lab.workdir(&format!("project-{host}"));
        std::fs::write(dir.join("expr.nix"), expr("import ./lib.nix")).unwrap();
        std::fs::write(dir.join("lib.nix"), "\"from-lib\"\n").unwrap();
        let out = lab
            .edict(&dir)
            .args([host, "nix", "build", "-f", "./expr.nix"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(read(&dir.join("result")), "from-lib\n");
        // A file in a home: it goes alone.
        let home = lab.workdir(&format!("home-{host}"));
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::write(home.join(".ssh/id_ed25519"), "secret\n").unwrap();
        std::fs::write(home.join("expr.nix"), expr("\"alone\"")).unwrap();
        let out = lab
            .edict(&home)
            .env("HOME", &home)
            .args([host, "nix", "build", "-f", "./expr.nix"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(read(&home.join("result")), "alone\n");
        lab::assert_mentions(&stderr(&out), &["sending only"]);
        let sent: Vec<PathBuf> = lab.mirrors(host);
        assert!(!sent.iter().any(|m| m.join(".ssh").exists()), "{sent:?}");

        // A flake with a relative path input, locked into a file elsewhere.
        let flake = lab.workdir(&format!("outlock-{host}"));
        std::fs::create_dir_all(flake.join("sub")).unwrap();
        std::fs::write(
            flake.join("sub/flake.nix"),
            "{ outputs = { self }: { v = 1; }; }\n",
        )
        .unwrap();
        std::fs::write(
            flake.join("flake.nix"),
            "{ inputs.sub.url = \"path:./sub\"; outputs = { self, sub }: { v = sub.v; }; }\n",
        )
        .unwrap();
        let elsewhere = lab.workdir(&format!("locks-{host}"));
        std::fs::write(elsewhere.join("private.txt"), "private\n").unwrap();
        let target = elsewhere.join("x.lock");
        let out = lab
            .edict(&flake)
            .args([host, "nix", "flake", "lock", "--output-lock-file"])
            .arg(&target)
            .output()
            .unwrap();
        if flavour == Flavour::Bookworm {
            // Nix 2.8 has no --output-lock-file: its own refusal passes through, nothing here.
            assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
            lab::assert_mentions(&stderr(&out), &["--output-lock-file"]);
            assert!(!target.exists());
            return;
        }
        assert!(out.status.success(), "{}", describe(&out));
        let lock: serde_json::Value = serde_json::from_str(&read(&target)).unwrap();
        assert!(lock["nodes"]["sub"].is_object(), "{lock}");
        assert!(
            !flake.join("flake.lock").exists(),
            "only the asked-for file is written"
        );
        let sent = lab.mirrors(host);
        assert!(
            !sent.iter().any(|m| m.join("private.txt").exists()),
            "{sent:?}"
        );
    });
}

/// Finding 5: a command that runs `git stash` on HOST reverts the files there; the local
/// uncommitted work is never reverted nor deleted here: each such file is a conflict (yours
/// kept, HOST's committed version beside it), named, exit 1.
#[test]
fn git_stash_there_never_takes_uncommitted_work_here() {
    each_host(|lab, host, _| {
        let dir = flake(lab, &format!("stash-{host}"), &[("notes.txt", "v1\n")]);
        std::fs::write(dir.join("notes.txt"), "my work\n").unwrap();
        std::fs::write(dir.join("new.txt"), "new work\n").unwrap();
        lab::git(&dir, &["add", "new.txt"]);
        let out = shell(
            lab,
            host,
            &dir,
            &[],
            "git -c user.name=r -c user.email=r@example.org stash -q && echo stashed",
        );
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("stashed"),
            "{}",
            describe(&out)
        );
        assert_eq!(read(&dir.join("notes.txt")), "my work\n");
        assert_eq!(read(&dir.join("new.txt")), "new work\n");
        assert_eq!(read(&dir.join(format!("notes.txt.edict-{host}"))), "v1\n");
        lab::assert_mentions(
            &stderr(&out),
            &["notes.txt went back to what git has recorded", "new.txt"],
        );
        // The next run sends the work again, as it is here.
        let out = shell(lab, host, &dir, &[], "cat notes.txt new.txt");
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "my work\nnew work\n");
    });
}

/// Finding 8: names that are not UTF-8 travel byte for byte both ways: a tracked one is
/// sent (also when the include list is used), one made on HOST comes back, next to the rest.
#[test]
fn names_that_are_not_utf8_go_and_come_back() {
    use std::os::unix::ffi::OsStrExt as _;
    each_host(|lab, host, _| {
        let dir = flake(lab, &format!("bytes-{host}"), &[]);
        let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
        std::fs::write(dir.join(latin1), "tracked latin-1\n").unwrap();
        lab::git(&dir, &["add", "-A"]);
        lab::git(&dir, &["commit", "-qm", "latin-1"]);
        // Many untracked files: edict sends an include list of the tracked ones.
        for i in 0..40 {
            std::fs::write(dir.join(format!("junk{i}")), "x").unwrap();
        }
        let out = shell(
            lab,
            host,
            &dir,
            &["-vv"],
            "cat caf*.txt; printf 'made there\\n' > \"$(printf 'n\\377u.txt')\"; echo ok > ok.txt",
        );
        assert!(out.status.success(), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("tracked latin-1"),
            "{}",
            describe(&out)
        );
        assert!(
            stderr(&out).contains("the tracked ones included"),
            "{}",
            describe(&out)
        );
        let made = dir.join(std::ffi::OsStr::from_bytes(b"n\xffu.txt"));
        assert_eq!(read(&made), "made there\n", "{}", describe(&out));
        assert_eq!(read(&dir.join("ok.txt")), "ok\n");
    });
}

/// Finding 10: untracked files made while edict syncs (an editor's backups, a build's
/// output) were not on the exclude list taken just before; they never stay on HOST: edict
/// sees them and syncs again with the exact list of tracked files. The moment is made
/// certain by an `rsync` first on PATH that writes a new secret file into the tree just
/// before it runs the real rsync.
#[test]
fn files_made_while_syncing_never_stay_on_host() {
    let mut lab = Lab::new();
    lab.start(lab::HostSpec::new("nix28", Flavour::Bookworm));
    let files: Vec<(String, &str)> = (0..20).map(|i| (format!("src/f{i}.txt"), "x\n")).collect();
    let files: Vec<(&str, &str)> = files.iter().map(|(f, t)| (f.as_str(), *t)).collect();
    let dir = flake(&lab, "race", &files);
    let bin = lab.workdir("race-bin");
    let real = which::which("rsync").unwrap();
    std::fs::write(
        bin.join("rsync"),
        format!(
            "#!/bin/sh\necho secret > {}/secret-$$.tmp\nexec {} \"$@\"\n",
            dir.display(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("rsync"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = lab
        .edict(&dir)
        .env("PATH", path)
        .args(["nix28", "nix", "build", ".#default"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let mirror = lab.mirror_of("nix28", "race");
    let leaked: Vec<_> = std::fs::read_dir(&mirror)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("secret-"))
        .map(|e| e.file_name())
        .collect();
    assert!(leaked.is_empty(), "left on HOST: {leaked:?}");
    lab::assert_mentions(&stderr(&out), &["appeared while syncing"]);
}

/// Finding 11, expiry: `edict gc HOST` removes edict's mirrors there and says what it freed,
/// but never one that a running command holds.
#[test]
fn gc_removes_mirrors_but_not_one_in_use() {
    let mut lab = Lab::new();
    lab.start(lab::HostSpec::new("nix28", Flavour::Bookworm));
    let idle = flake(&lab, "idle", &[]);
    let out = lab
        .edict(&idle)
        .args(["nix28", "nix", "build", ".#default"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let busy = flake(&lab, "busy", &[]);
    let (child, gate) = gated(&lab, "nix28", &busy, "gc", "echo done > done.txt");
    let out = lab.edict(&idle).args(["gc", "nix28"]).output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("nix28: removed 1 mirror"),
        "{}",
        describe(&out)
    );
    let left: Vec<String> = lab
        .mirrors("nix28")
        .iter()
        .map(|m| m.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with("busy-"), "{left:?}");
    std::fs::write(&gate, "go").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(read(&busy.join("done.txt")), "done\n");
}

/// Finding 11: edict killed with SIGKILL while HOST's files are on their way leaves no
/// staging file in the tree (staging is in the cache, on the same mount) and no rsync
/// running on; the next run works.
#[test]
fn sigkill_during_sync_back_leaves_nothing_in_the_tree() {
    for flavour in Flavour::ALL {
        sigkill_during_sync_back_on(flavour);
    }
}

fn sigkill_during_sync_back_on(flavour: Flavour) {
    let mut lab = Lab::new();
    lab.start(lab::HostSpec::slow("slowkill", flavour));
    let dir = flake(&lab, "slowkill", &[]);
    let cache = lab.workdir("cache-slowkill");
    let mut child = lab
        .edict(&dir)
        .env("XDG_CACHE_HOME", &cache)
        .args([
            "-vv",
            "slowkill",
            "nix",
            "run",
            ".#shell",
            "--",
            "head -c 3000000 /dev/urandom > big.bin",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = lab::StderrLog::of(&mut child);
    log.until("syncing back");
    std::thread::sleep(std::time::Duration::from_millis(700));
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = log.rest();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let in_tree: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(".edict-sync-") || n == "big.bin")
        .collect();
    assert!(in_tree.is_empty(), "left in the tree: {in_tree:?}");
    let staging = cache.join("edict/staging").display().to_string();
    let rsyncs: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("rsync") && c.contains(&staging))
        .collect();
    assert!(rsyncs.is_empty(), "still running: {rsyncs:?}");
    let out = shell(&lab, "slowkill", &dir, &[], "echo again > again.txt");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(read(&dir.join("again.txt")), "again\n");
}

/// Finding 12: a file the command rewrote on HOST with its size and mtime kept (here with
/// --no-sync, so nothing comes back) does not survive in the mirror: the next run sends
/// the local file again, whatever rsync's quick check would say.
#[test]
fn a_mirror_file_rewritten_with_the_same_size_and_mtime_is_sent_again() {
    each_host(|lab, host, _| {
        let dir = flake(lab, &format!("quick-{host}"), &[("tracked.txt", "good\n")]);
        let out = shell(
            lab,
            host,
            &dir,
            &["--no-sync"],
            "t=$(stat -c %y tracked.txt); printf 'evil\\n' > tracked.txt; touch -d \"$t\" tracked.txt",
        );
        assert!(out.status.success(), "{}", describe(&out));
        let out = shell(lab, host, &dir, &[], "cat tracked.txt");
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "good\n");
    });
}

/// Finding 12: a `'` in TMPDIR (where edict would put its control socket, which ssh's -o
/// and rsync's -e read with quotes) makes no difference: the socket goes to /tmp instead.
#[test]
fn a_quote_in_tmpdir_changes_nothing() {
    let mut lab = Lab::new();
    lab.start(lab::HostSpec::new("nix28", Flavour::Bookworm));
    let tmp = lab.workdir("it's");
    let dir = flake(&lab, "quoted-tmp", &[]);
    let out = lab
        .edict(&dir)
        .env("TMPDIR", &tmp)
        .args(["nix28", "nix", "build", ".#default"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(dir.join("result/greeting").exists());
}

/// Finding 12, git filters, decided: edict sends the working tree's bytes and the
/// repository's own .git/config, and leaves the filters (git-lfs, git-crypt) to git on HOST,
/// as here. Nix 2.8 runs git there, so it needs the filter's program there: without it,
/// git's own message names it (nix fails, its exit code passes through); Nix 2.26 reads the
/// tree through libgit2 without it. Where it builds, it reads the same bytes and evaluates
/// the same derivation as nix here.
#[test]
fn git_filters_run_on_host_as_here() {
    each_host(|lab, host, flavour| {
        let tag = lab::unique_tag();
        let dir = lab.workdir(&format!("filter-{host}"));
        std::fs::write(
            dir.join("flake.nix"),
            format!("{{ outputs = {{ self }}: {{ packages.x86_64-linux.default = derivation {{ name = \"filter-{tag}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo ${{builtins.readFile ./data.dat}} > $out\" ]; }}; }}; }}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("data.dat"), "committed").unwrap();
        // *.dat goes through a required clean filter that exists here (in root's home) but
        // not yet on HOST (whose /root is its own).
        let filter = format!("/root/edict-lab-filter-{tag}");
        std::fs::write(&filter, "#!/bin/sh\nexec cat\n").unwrap();
        std::fs::set_permissions(&filter, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join(".gitattributes"), "*.dat filter=here\n").unwrap();
        lab::git(&dir, &["init", "-q", "-b", "main"]);
        lab::git(&dir, &["config", "filter.here.clean", &filter]);
        lab::git(&dir, &["config", "filter.here.required", "true"]);
        lab::git(&dir, &["add", "-A"]);
        lab::git(&dir, &["commit", "-qm", "init"]);
        std::fs::write(dir.join("data.dat"), "edited-here").unwrap();
        let local = lab
            .command("nix")
            .args(["eval", "--raw", ".#default.outPath"])
            .current_dir(&dir)
            .output()
            .unwrap();
        let build = || {
            lab.edict(&dir)
                .args([host, "nix", "build", ".#default"])
                .output()
                .unwrap()
        };
        let mut out = build();
        if flavour == Flavour::Bookworm {
            // Nix 2.8 runs git, so the filter, there: git's message names it.
            assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
            lab::assert_mentions(&stderr(&out), &[&filter, "clean filter"]);
            // The program installed there: it works.
            let there = lab.host(host).local_path(&filter);
            std::fs::copy(&filter, &there).unwrap();
            out = build();
        }
        // Either way: the same bytes, the same derivation as nix here.
        let _ = std::fs::remove_file(&filter);
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(read(&dir.join("result")), "edited-here\n");
        assert!(local.status.success(), "{}", describe(&local));
        assert_eq!(
            std::fs::read_link(dir.join("result")).unwrap(),
            PathBuf::from(String::from_utf8_lossy(&local.stdout).into_owned())
        );
    });
}

/// A symlink the command makes comes back only when it stays inside the tree: one to an
/// absolute path or above the tree's root is named and stays on HOST (a later write here,
/// such as nix writing flake.lock, would go through it).
#[test]
fn symlinks_out_of_the_tree_never_come_back() {
    each_host(|lab, host, _| {
        let dir = flake(
            lab,
            &format!("links-back-{host}"),
            &[("sub/ok.txt", "ok\n")],
        );
        let out = shell(
            lab,
            host,
            &dir,
            &[],
            "ln -s /etc/passwd abs; ln -s ../../outside up; ln -s sub/ok.txt fine; cd sub && ln -s ../flake.nix back",
        );
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(dir.join("fine").is_symlink() && dir.join("sub/back").is_symlink());
        assert!(!dir.join("abs").is_symlink() && !dir.join("up").is_symlink());
        lab::assert_mentions(
            &stderr(&out),
            &["abs: it is a symlink to /etc/passwd", "up: it is a symlink"],
        );
    });
}

/// Symlinks into the store that a command there made: a store path that is itself a link
/// out of the store, a tracked file turned into a store link, and any store link under
/// `--no-link` stay on HOST, each named with why; nothing here is replaced or imported for
/// them. (A `result` a nested build made comes back: see fidelity.rs.)
#[test]
fn store_links_that_would_lead_out_of_the_tree_stay_there() {
    each_host(|lab, host, _| {
        let tag = lab::unique_tag();
        let dir = flake(lab, &format!("storelinks-{host}"), &[("README", "mine\n")]);
        let evil = format!(
            "derivation {{ name = \"evil-{tag}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"/bin/ln -s /etc/hostname $out\" ]; }}"
        );
        let script = format!(
            "nix build --expr '{evil}' -o evil && nix build .#default -o top && rm README && ln -s \"$(readlink top)\" README"
        );
        let out = shell(lab, host, &dir, &[], &script);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{host}: {}", describe(&out));
        // A store path that is a link to /etc/hostname: not brought back.
        assert!(!dir.join("evil").exists() && std::fs::symlink_metadata(dir.join("evil")).is_err());
        lab::assert_mentions(&err, &["evil", "leads out of the store"]);
        // A tracked file is never replaced by a link into the store.
        assert_eq!(read(&dir.join("README")), "mine\n");
        lab::assert_mentions(&err, &["README", "a file of that name is here"]);
        // A nested build's own link still comes back.
        assert!(std::fs::read_link(dir.join("top")).is_ok(), "{err}");

        // --no-link: no results here, so no store link either.
        let dir = flake(lab, &format!("storelinks-nolink-{host}"), &[]);
        let out = shell(lab, host, &dir, &["--no-link"], "nix build .#default");
        assert_eq!(out.status.code(), Some(1), "{host}: {}", describe(&out));
        assert!(std::fs::symlink_metadata(dir.join("result")).is_err());
        lab::assert_mentions(
            &stderr(&out),
            &["result", "--no-link asks for no results here"],
        );
    });
}
