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
/// builds `top`, which needs it. Over a long link (a 40 ms round trip), back here `dep`
/// carries the cache's signature (it came from the cache) and `top` none (it came from
/// HOST, which signs nothing). From a near host `dep` comes from HOST (`auto`), unless
/// `--substitute always`; with `--no-substitute`, from HOST over the long link too.
#[test]
fn results_come_from_this_machine_s_cache_when_it_has_them() {
    for flavour in Flavour::ALL {
        let mut lab = Lab::new();
        lab.start(HostSpec::new("builder", flavour));
        lab.start(HostSpec::new("far", flavour).link(lab::Link {
            rate_mbit: 1000,
            proxy: Some(delay_line(20)),
        }));
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
        for (args, from_cache) in [
            (&["far"][..], true),
            (&["builder"][..], false),
            (&["--substitute", "always", "builder"][..], true),
            (&["--no-substitute", "far"][..], false),
        ] {
            let out = user
                .edict_with(&dir, &conf)
                .args(args)
                .args(["nix", "build", ".#default"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{flavour:?} {args:?}: {}",
                describe(&out)
            );
            let top = std::fs::read_link(dir.join("result"))
                .unwrap()
                .display()
                .to_string();
            assert!(lab::locally_valid(&dep));
            assert_eq!(
                signatures(&dep).starts_with("cache-1:"),
                from_cache,
                "{flavour:?} {args:?}: dep's signatures: {}",
                signatures(&dep)
            );
            assert_eq!(signatures(&top), "", "{flavour:?}: top came from HOST");
            std::fs::remove_file(dir.join("result")).unwrap();
            forget(&[&top, &dep]);
        }
    }
}

/// A shell word for `s` (single quotes).
fn shell_word(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// In a real terminal (tmux), a sync and a copy-back that take seconds each show one
/// status line — what, files or paths, bytes of how many — while they run, and leave a
/// clean screen.
#[test]
fn long_transfers_show_a_status_line_in_a_terminal() {
    let mut lab = Lab::new();
    lab.start(HostSpec::slow("slow", Flavour::Bookworm));
    let tag = lab::unique_tag();
    let dir = lab.workdir("status");
    // 4 MB that do not compress: seconds over the 8 Mbit/s link.
    std::fs::write(
        dir.join("flake.nix"),
        format!(
            r#"{{ outputs = {{ self }}: {{ packages.x86_64-linux.default = derivation {{ name = "big-{tag}"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "/usr/bin/head -c 4000000 /dev/urandom > $out" ]; }}; }}; }}"#
        ),
    )
    .unwrap();
    // 3 MB to send first.
    let mut blob = vec![0u8; 3_000_000];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in blob.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(dir.join("blob"), blob).unwrap();
    let mut seen = None;
    let mut lines: Vec<String> = Vec::new();
    let mut synced = None;
    let screen = in_tmux(&lab, &dir, "slow nix build .#default", |screen| {
        if let Some(l) = screen
            .lines()
            .find(|l| l.contains("slow: syncing ") && l.contains(" files"))
        {
            synced.get_or_insert_with(|| l.to_string());
        }
        if let Some(l) = screen
            .lines()
            .find(|l| l.contains("slow: copying results") && l.contains("paths"))
        {
            seen.get_or_insert_with(|| l.to_string());
            if lines.last().map(String::as_str) != Some(l.trim_end()) {
                lines.push(l.trim_end().to_string());
            }
        }
    });
    assert!(screen.contains("EDICT-DONE 0"), "{screen}");
    let seen = seen.unwrap_or_else(|| panic!("no status line was seen; at the end:\n{screen}"));
    assert!(
        seen.contains(" of 3.8") && seen.contains("/1 paths"),
        "{seen}"
    );
    // It moved while the path came: some bytes of it, before all of them.
    assert!(
        lines
            .iter()
            .any(|l| !l.contains(": 0 B of") && l.contains("0/1 paths")),
        "{lines:#?}"
    );
    let synced = synced.unwrap_or_else(|| panic!("no sync status line; at the end:\n{screen}"));
    assert!(synced.contains(" of "), "{synced}");
    assert!(
        !screen.contains("copying results") && !screen.contains("syncing"),
        "a status line stayed:\n{screen}"
    );
    assert!(dir.join("result").exists());
}

/// `--compress always` compresses both ways (rsync negotiates zstd; the copy back gets a
/// connection of its own with ssh's compression) and the run works; `auto` leaves a fast
/// link alone (the lab's: a few ms); `never` never compresses.
#[test]
fn compression_where_asked_and_not_on_a_fast_link() {
    for flavour in Flavour::ALL {
        let mut lab = Lab::new();
        lab.start(HostSpec::new("h", flavour));
        for (when, compressed) in [("always", true), ("auto", false), ("never", false)] {
            let dir = lab.workdir(&format!("compress-{when}"));
            lab::write_rich_flake(&dir, &lab::unique_tag());
            let out = lab
                .edict(&dir)
                .args(["-v", "--compress", when, "h", "nix", "build", ".#default"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{flavour:?} {when}: {}",
                describe(&out)
            );
            let err = String::from_utf8_lossy(&out.stderr);
            let rsync = err.lines().find(|l| l.starts_with("+ rsync -r")).unwrap();
            let copy = err
                .lines()
                .find(|l| l.contains(" copy ") && l.contains("--from"))
                .unwrap();
            assert_eq!(rsync.contains(" --compress"), compressed, "{when}: {rsync}");
            assert_eq!(copy.contains(" -C "), compressed, "{when}: {copy}");
            // Only one copy: the compressed one worked (a key login, as the lab's).
            let copies = err
                .lines()
                .filter(|l| l.contains(" copy ") && l.contains("--from"))
                .count();
            assert_eq!(copies, 1, "{when}: {err}");
            assert!(dir.join("result").exists());
        }
    }
}

/// The compressed copy is a login of its own. Where that login fails but the shared
/// connection is up (here: a ProxyCommand that lets only the first connection through,
/// as a one-time password or a hardware key's single touch would), the copy goes through
/// the shared connection, once, and the run succeeds.
#[test]
fn a_compressed_copy_whose_login_fails_goes_through_the_shared_connection() {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("once", Flavour::Bookworm));
    let port = lab.host("once").port;
    let proxy = lab.dir().join("first-only.sh");
    std::fs::write(
        &proxy,
        format!(
            "#!/bin/sh\n\
             # Lets the first connection through to the host, refuses every later one.\n\
             mkdir \"$0.used\" 2>/dev/null || exit 1\n\
             exec bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; cat <&3 & exec cat >&3'\n"
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&proxy).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&proxy, perms).unwrap();
    let dir = lab.workdir("once");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    let out = lab
        .edict(&dir)
        .env(
            "EDICT_SSH_OPTS",
            format!("{} -o ProxyCommand={}", lab.ssh_opts(), proxy.display()),
        )
        .args([
            "-vv",
            "--compress",
            "always",
            "once",
            "nix",
            "build",
            ".#default",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the compressed connection failed"), "{err}");
    let copies: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("+ ") && l.contains(" copy ") && l.contains("--from"))
        .collect();
    assert_eq!(copies.len(), 2, "{copies:#?}");
    assert!(copies[0].contains(" -C ") && !copies[1].contains(" -C "));
    assert!(dir.join("result").exists());
}

/// Runs `edict ARGS` (a shell line's words) in `dir` inside tmux, a real 200x30 terminal, with
/// the lab's environment; `watch` reads the screen every 100 ms until the run ends (or two
/// minutes pass). The last screen, which ends with `EDICT-DONE` and edict's exit code.
fn in_tmux(lab: &Lab, dir: &std::path::Path, args: &str, mut watch: impl FnMut(&str)) -> String {
    let cmd = lab.edict(dir);
    let mut line = String::from("env");
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            line.push_str(&format!(
                " {}={}",
                k.to_string_lossy(),
                shell_word(&v.to_string_lossy())
            ));
        }
    }
    line.push_str(&format!(
        " {} {args}; echo EDICT-DONE $?; sleep 60",
        shell_word(&cmd.get_program().to_string_lossy())
    ));
    let socket = format!("edict-{}", lab::unique_tag());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .unwrap()
    };
    let out = tmux(&[
        "new-session",
        "-d",
        "-x",
        "200",
        "-y",
        "30",
        "-c",
        &dir.display().to_string(),
        &line,
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let screen = loop {
        let screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p"]).stdout).into_owned();
        watch(&screen);
        if screen.contains("EDICT-DONE") || std::time::Instant::now() > deadline {
            break screen;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    tmux(&["kill-server"]);
    screen
}

/// A fan-out in a terminal shows a status line for each host's copy, behind the host's name
/// (the copies into the local store take turns: see `results::copy_closures`), and a clean
/// screen after.
#[test]
fn a_fan_out_shows_a_status_line_per_host() {
    let mut lab = Lab::new();
    lab.start(HostSpec::slow("slow1", Flavour::Bookworm));
    lab.start(HostSpec::slow("slow2", Flavour::Trixie));
    let tag = lab::unique_tag();
    let dir = lab.workdir("fan-status");
    // A path of its own on each host (their nix versions differ), so both copy at once.
    std::fs::write(
        dir.join("flake.nix"),
        format!(
            r#"{{ outputs = {{ self }}: {{ packages.x86_64-linux.default = derivation {{ name = "fan-${{builtins.nixVersion}}-{tag}"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "/usr/bin/head -c 4000000 /dev/urandom > $out" ]; }}; }}; }}"#
        ),
    )
    .unwrap();
    let mut seen: Vec<&str> = Vec::new();
    let screen = in_tmux(&lab, &dir, "slow1,slow2 nix build .#default", |screen| {
        for h in ["slow1", "slow2"] {
            let copying = screen
                .lines()
                .any(|l| l.contains(&format!("{h}: copying results")) && l.contains("paths"));
            if copying && !seen.contains(&h) {
                seen.push(h);
            }
        }
    });
    assert!(screen.contains("EDICT-DONE 0"), "{screen}");
    seen.sort_unstable();
    assert_eq!(seen, ["slow1", "slow2"], "at the end:\n{screen}");
    assert!(
        !screen.contains("copying results"),
        "a status line stayed:\n{screen}"
    );
    assert!(dir.join("result-slow1").exists() && dir.join("result-slow2").exists());
}

/// `edict ARGS` in `dir`, which must succeed; its stderr.
fn edict_ok(lab: &Lab, dir: &std::path::Path, args: &[&str]) -> String {
    let out = lab.edict(dir).args(args).output().unwrap();
    assert!(out.status.success(), "edict {args:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The connection a run keeps serves the next run to the same host (no second login), in
/// a directory only this user can enter; `edict forget` closes it, `--keep-connection 0`
/// and `EDICT_KEEP_CONNECTION=0` keep none.
#[test]
fn the_next_run_reuses_the_kept_connection_until_it_is_forgotten() {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("warm", Flavour::Trixie));
    let dir = lab.workdir("warm");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    let build = ["warm", "nix", "build", ".#default"];
    let logins = |lab: &Lab| lab.logins("warm");

    let before = logins(&lab);
    edict_ok(&lab, &dir, &build);
    assert_eq!(logins(&lab) - before, 1);
    let kept = lab.runtime_dir().join("edict");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kept).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "{}", kept.display());
    let sockets = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&kept)
            .unwrap()
            .flatten()
            .filter(|e| std::os::unix::fs::FileTypeExt::is_socket(&e.file_type().unwrap()))
            .map(|e| e.path())
            .collect()
    };
    assert_eq!(sockets().len(), 1);

    let before = logins(&lab);
    let said = edict_ok(&lab, &dir, &["-vv", "warm", "nix", "build", ".#default"]);
    assert_eq!(
        logins(&lab) - before,
        0,
        "the second run logged in again:\n{said}"
    );
    assert!(said.contains("reusing the connection kept"), "{said}");
    assert!(
        !said.contains("measuring the link") && !said.contains("round trip is"),
        "the round trip measured through this connection is known:\n{said}"
    );
    assert!(dir.join("result").exists());

    let out = lab.edict(&dir).args(["forget", "warm"]).output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "warm: closed the kept connection\n"
    );
    assert!(sockets().is_empty());
    let out = lab.edict(&dir).arg("forget").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "no kept connection to close\n"
    );

    // Not kept: every run logs in, and leaves no master behind.
    let before = logins(&lab);
    edict_ok(
        &lab,
        &dir,
        &[
            "--keep-connection",
            "0",
            "warm",
            "nix",
            "build",
            ".#default",
        ],
    );
    let out = lab
        .edict(&dir)
        .env("EDICT_KEEP_CONNECTION", "off")
        .args(build)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(logins(&lab) - before, 2);
    assert!(sockets().is_empty());

    // Kept again, then forgotten with every other one.
    edict_ok(&lab, &dir, &build);
    let out = lab.edict(&dir).arg("forget").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "warm: closed the kept connection\n"
    );
}

/// A kept connection whose other end stopped answering (here: HOST's session processes
/// frozen, as a link that died while a laptop slept) is given a few seconds, then replaced
/// by a new login, and the run goes on.
#[test]
fn a_kept_connection_that_stopped_answering_is_replaced() {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("frozen", Flavour::Bookworm));
    let dir = lab.workdir("frozen");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    let build = ["frozen", "nix", "build", ".#default"];
    edict_ok(&lab, &dir, &build);
    let sessions = lab::descendants(lab.host("frozen").sshd_pid());
    assert!(
        !sessions.is_empty(),
        "the kept connection's processes on the host"
    );
    let signal = |sig: &str| {
        for pid in &sessions {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    };
    signal("-STOP");
    let before = lab.logins("frozen");
    let out = lab.edict(&dir).args(build).output().unwrap();
    signal("-CONT");
    assert!(out.status.success(), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("frozen: the kept connection did not answer within 5 s; connecting again"),
        "{said}"
    );
    assert_eq!(lab.logins("frozen") - before, 1);
    assert!(dir.join("result").exists());
}

/// Without a usable XDG_RUNTIME_DIR the connections are kept in `$TMPDIR/edict-UID`, made
/// private; one that others can enter is not used (a socket there could be anyone's), and
/// the run says so and goes on with a connection of its own.
#[test]
fn connections_are_kept_only_in_a_private_directory() {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("tmpdir", Flavour::Bookworm));
    let dir = lab.workdir("tmpdir");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    let tmp = lab.workdir("tmp");
    let run = || {
        lab.edict(&dir)
            .env_remove("XDG_RUNTIME_DIR")
            .env("TMPDIR", &tmp)
            .args(["tmpdir", "nix", "build", ".#default"])
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", describe(&out));
    let kept = tmp.join(format!("edict-{}", unsafe { libc::geteuid() }));
    let meta = std::fs::metadata(&kept).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o700
    );
    let before = lab.logins("tmpdir");
    assert!(run().status.success());
    assert_eq!(lab.logins("tmpdir") - before, 0);

    let out = lab
        .edict(&dir)
        .env_remove("XDG_RUNTIME_DIR")
        .env("TMPDIR", &tmp)
        .arg("forget")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    std::fs::set_permissions(
        &kept,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    let before = lab.logins("tmpdir");
    let out = run();
    assert!(out.status.success(), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("the connection is not kept after this run")
            && said.contains("is open to other users (mode 755)"),
        "{said}"
    );
    assert!(run().status.success());
    assert_eq!(lab.logins("tmpdir") - before, 2);
}

/// A flake whose package is the first line of `value.txt`, in `dir` (not a git repository).
fn write_value_flake(dir: &std::path::Path, tag: &str, value: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("flake.nix"),
        format!(
            r#"{{
  outputs = {{ self }}: {{
    packages.x86_64-linux.default = derivation {{
      name = "warm-{tag}";
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" "read v < ${{./value.txt}}; echo \"$v\" > $out" ];
    }};
  }};
}}
"#
        ),
    )
    .unwrap();
    std::fs::write(dir.join("value.txt"), format!("{value}\n")).unwrap();
}

/// Whether a `-vv` run sent its source with rsync, or found HOST's mirror unchanged.
fn sent(said: &str) -> bool {
    let rsync = said.lines().any(|l| l.starts_with("+ rsync -rlpt"));
    let skipped = said.contains("nothing to send");
    assert_ne!(rsync, skipped, "either sent or not:\n{said}");
    rsync
}

/// A run sends nothing for a source that has not changed here since it was sent, while
/// HOST's mirror of it is still as sent; any change on either side (a same-size edit in the
/// same second, a new empty directory, a file touched in the mirror there) sends it again,
/// and the result is always built from what is here.
#[test]
fn an_unchanged_source_is_not_sent_again() {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("same", Flavour::Trixie));
    let tag = lab::unique_tag();
    for kind in ["git", "dir"] {
        let dir = lab.workdir(&format!("same-{kind}"));
        write_value_flake(&dir, &format!("{kind}-{tag}"), "one");
        if kind == "git" {
            lab::git(&dir, &["init", "-q"]);
            lab::git(&dir, &["add", "."]);
            lab::git(&dir, &["commit", "-qm", "first"]);
        }
        let build = |dir: &std::path::Path| {
            let said = edict_ok(&lab, dir, &["-vv", "same", "nix", "build", ".#default"]);
            let value = std::fs::read_to_string(dir.join("result")).unwrap();
            (sent(&said), value.trim().to_string())
        };
        // nix reads a plain directory whole: the `result` link a run makes or moves in it
        // is part of the source, and goes to the mirror at the end of that run (git
        // leaves it untracked).
        let mirror = || {
            lab.mirrors("same")
                .into_iter()
                .find(|m| {
                    m.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .contains(&format!("same-{kind}"))
                })
                .unwrap()
        };
        let linked_there = || std::fs::read_link(mirror().join("result")).ok();
        let linked_here = || std::fs::read_link(dir.join("result")).ok();
        assert_eq!(build(&dir), (true, "one".into()), "{kind}: first run");
        if kind == "dir" {
            assert_eq!(linked_there(), linked_here());
        }
        assert_eq!(
            build(&dir),
            (false, "one".into()),
            "{kind}: nothing changed"
        );

        // Same size, most likely the same second as the last send.
        std::fs::write(dir.join("value.txt"), "two\n").unwrap();
        assert_eq!(build(&dir), (true, "two".into()), "{kind}: edited here");
        if kind == "dir" {
            assert_eq!(linked_there(), linked_here());
        }
        assert_eq!(build(&dir), (false, "two".into()), "{kind}: edited once");

        // nix sees a new empty directory in a plain directory, not in a git work tree.
        std::fs::create_dir(dir.join("empty")).unwrap();
        assert_eq!(
            build(&dir).0,
            kind == "dir",
            "{kind}: a new empty directory"
        );
        std::fs::remove_dir(dir.join("empty")).unwrap();
        assert_eq!(build(&dir).0, kind == "dir", "{kind}: the directory gone");
        if kind == "git" {
            std::fs::write(dir.join("new.txt"), "untracked\n").unwrap();
            assert!(!build(&dir).0, "an untracked file is never sent");
            lab::git(&dir, &["add", "new.txt"]);
            assert!(build(&dir).0, "a newly tracked file");
        }

        // Someone changes the mirror there: it is made as here again.
        std::fs::write(mirror().join("value.txt"), "bad\n").unwrap();
        assert_eq!(build(&dir), (true, "two".into()), "{kind}: changed there");
        assert_eq!(build(&dir), (false, "two".into()), "{kind}: as sent again");
    }
}

/// A run that finds the kept connection full (sshd's MaxSessions, here 2, reached by
/// another run still going) still works: for a session the master cannot open, ssh logs in
/// on its own (ssh's words say so), and the run that holds the master goes on.
#[test]
fn a_run_that_finds_the_kept_connection_full_still_works() {
    let mut lab = Lab::new();
    let mut spec = HostSpec::new("full", Flavour::Trixie);
    spec.max_sessions = 2;
    lab.start(spec);
    let dir = lab.workdir("full");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    edict_ok(&lab, &dir, &["full", "nix", "build", ".#default"]);
    let pidfile = "/root/full-sleeper.pid";
    let mut sleeper = lab
        .edict(&dir)
        .args(["full", "nix", "run", ".#sleeper", "--", pidfile])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !lab.host("full").local_path(pidfile).exists() {
        assert!(
            started.elapsed().as_secs() < 60,
            "the sleeper never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Another flake: the sleeper's run holds this one's mirror.
    let other = lab.workdir("full-other");
    lab::write_rich_flake(&other, &lab::unique_tag());
    let before = lab.logins("full");
    let out = lab
        .edict(&other)
        .args(["full", "nix", "build", ".#default"])
        .output()
        .unwrap();
    let sleeping = sleeper.try_wait().unwrap().is_none();
    let _ = Command::new("kill").arg(sleeper.id().to_string()).status();
    let _ = sleeper.wait();
    assert!(out.status.success(), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("Session open refused by peer"), "{said}");
    assert!(lab.logins("full") - before >= 1, "{said}");
    assert!(other.join("result").exists());
    assert!(sleeping, "the run holding the master was disturbed");
}

/// The benchmark's delay line (`examples/bench --delay-line MS`), built by `cargo test`
/// beside this test: a real ssh ProxyCommand that holds every chunk for MS milliseconds
/// each way.
fn delay_line(one_way_ms: u64) -> String {
    let exe = std::env::current_exe().unwrap();
    let bench = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/bench");
    assert!(
        bench.exists(),
        "{} is missing: run the whole suite (`cargo test`), which builds the examples",
        bench.display()
    );
    format!("{} --delay-line {one_way_ms}", bench.display())
}

/// `--compress auto` (the default) decides by the link: over a 40 ms round trip it
/// measures it (once per kept connection) and rsync compresses; a copy back this small
/// (under 16 MiB) is not worth a second login for ssh's compression. The lab's near hosts
/// get neither (see `compression_where_asked_and_not_on_a_fast_link`).
#[test]
fn auto_compresses_over_a_long_link() {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("far", Flavour::Bookworm).link(lab::Link {
        rate_mbit: 1000,
        proxy: Some(delay_line(20)),
    }));
    let dir = lab.workdir("far");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    let said = edict_ok(&lab, &dir, &["-vv", "far", "nix", "build", ".#default"]);
    let ms: u64 = said
        .lines()
        .find_map(|l| l.split("the link's round trip is ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no round trip measured:\n{said}"));
    assert!(ms >= 40, "{ms} ms over a 40 ms link");
    let rsync = said.lines().find(|l| l.starts_with("+ rsync -r")).unwrap();
    assert!(rsync.contains(" --compress"), "{rsync}");
    let copy = said
        .lines()
        .find(|l| l.contains(" copy ") && l.contains("--from"))
        .unwrap();
    assert!(!copy.contains(" -C "), "{copy}");
    assert!(dir.join("result").exists());

    // The next run through the kept connection knows the link without asking again.
    std::fs::write(dir.join("touched"), "x").unwrap();
    let said = edict_ok(&lab, &dir, &["-vv", "far", "nix", "build", ".#default"]);
    assert!(!said.contains("the link's round trip is"), "{said}");
    let rsync = said.lines().find(|l| l.starts_with("+ rsync -r")).unwrap();
    assert!(rsync.contains(" --compress"), "{rsync}");
}
