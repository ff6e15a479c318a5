//! What a Mac brings to either end, made on Linux: macOS's rsync (openrsync, or rsync
//! 2.6.9) here or on HOST, and a nix-darwin builder without flock(1). Each against real
//! hosts of Nix 2.8, 2.26 and 2.34.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use lab::{Flavour, HostSpec, Lab, describe};
use std::os::unix::process::CommandExt as _;
use std::process::{Output, Stdio};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn stderr(out: &Output) -> String {
    text(&out.stderr)
}

/// The files of a mirror on `host`, as paths here (none when it was never filled).
fn mirror_files(lab: &Lab, host: &str, base: &str) -> Vec<String> {
    lab.mirrors(host)
        .into_iter()
        .filter(|m| {
            m.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{base}-")))
        })
        .flat_map(|m| std::fs::read_dir(m).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// An rsync here that edict cannot use (macOS's openrsync, or its old rsync 2.6.9, first
/// on PATH) is named with the fix before anything is sent, not as rsync's option error
/// after connecting.
#[test]
fn an_rsync_here_that_cannot_is_named_before_connecting() {
    let lab = Lab::every();
    let dir = lab.workdir("mac-rsync-here");
    lab::write_flake(&dir, &lab::unique_tag());
    for (name, script) in [
        ("openrsync", lab::OPENRSYNC.to_string()),
        (
            "rsync-2.6.9",
            "#!/bin/sh\necho 'rsync  version 2.6.9  protocol version 29'\nexit 0".to_string(),
        ),
    ] {
        let bin = lab.workdir(&format!("bin-{name}"));
        std::fs::write(bin.join("rsync"), script).unwrap();
        std::fs::set_permissions(
            bin.join("rsync"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        for host in ["nix28", "nix226", "nix234"] {
            let before = lab.logins(host);
            let out = lab
                .edict(&dir)
                .env("PATH", &path)
                .args([host, "nix", "build", ".#default"])
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1), "{name}: {}", describe(&out));
            lab::assert_mentions(
                &stderr(&out),
                &[
                    &format!("{host}: syncing sources: the rsync on this machine"),
                    "cannot be used",
                    "fix: install rsync ≥ 3.1.3 here",
                    "nixpkgs#rsync",
                ],
            );
            assert_eq!(lab.logins(host), before, "{name}: it connected to {host}");
        }
    }
}

/// The same on HOST (a Mac builder's /usr/bin/rsync): said after the probe, before a byte
/// is sent; `edict doctor` says the same.
#[test]
fn an_rsync_there_that_cannot_is_named_before_sending() {
    let mut lab = Lab::new();
    for flavour in Flavour::ALL {
        let host = format!("orsync{}", flavour.nix_version().replace('.', ""));
        lab.start(HostSpec::new(&host, flavour).rsync_script(lab::OPENRSYNC));
        let dir = lab.workdir(&host);
        lab::write_flake(&dir, &lab::unique_tag());
        let out = lab
            .edict(&dir)
            .args([&host, "nix", "build", ".#default"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{host}: {}", describe(&out));
        lab::assert_mentions(
            &stderr(&out),
            &[
                &format!("{host}: syncing sources: the rsync there (/usr/bin/rsync: openrsync"),
                "openrsync lacks options edict uses",
                &format!("fix: install rsync ≥ 3.1.3 on {host}"),
            ],
        );
        assert!(
            mirror_files(&lab, &host, &host).is_empty(),
            "{host}: something was sent"
        );
        let out = lab
            .edict(lab.dir())
            .args(["doctor", &host])
            .output()
            .unwrap();
        lab::assert_mentions(&text(&out.stdout), &["FAIL rsync", "openrsync"]);
        // The fix it gives: a current rsync in a Nix profile (off the non-interactive PATH,
        // behind /usr/bin's openrsync). edict finds and uses that one.
        let root = match flavour.suite() {
            Some(suite) => lab::debian_root(suite),
            None => std::path::PathBuf::from("/"),
        };
        let profile = lab
            .host(&host)
            .local_path("/nix/var/nix/profiles/default/bin");
        std::fs::create_dir_all(&profile).unwrap();
        std::fs::copy(root.join("usr/bin/rsync"), profile.join("rsync")).unwrap();
        let out = lab
            .edict(&dir)
            .args([&host, "nix", "build", ".#default"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{host}: {}", describe(&out));
        assert!(dir.join("result").exists());
        // The doctor judges as a run chooses.
        let out = lab
            .edict(lab.dir())
            .args(["doctor", "--json", &host])
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rsync = json[0]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "rsync")
            .unwrap();
        assert_eq!(rsync["status"], "ok", "{rsync}");
        assert!(
            rsync["detail"]
                .as_str()
                .unwrap()
                .contains("/nix/var/nix/profiles/default/bin/rsync"),
            "{rsync}"
        );
    }
}

/// A builder without flock(1) (macOS): runs on one source still take turns, through lock
/// directories: a second run waits (and says so) while the first runs, then succeeds; a
/// Ctrl-C while waiting ends that run at once and leaves the first alone; a lock whose
/// holder was killed with -9 does not block the next run.
#[test]
fn a_host_without_flock_still_takes_turns() {
    let mut lab = Lab::new();
    for flavour in Flavour::ALL {
        let host = format!("noflock{}", flavour.nix_version().replace('.', ""));
        lab.start(HostSpec::new(&host, flavour).without_flock());
        assert!(
            !text(&lab.ssh(&host, "command -v flock || echo none").stdout).contains("/flock"),
            "{host} has flock"
        );
        takes_turns(&lab, &host);
    }
}

fn takes_turns(lab: &Lab, host: &str) {
    let dir = lab.workdir(&format!("turns-{host}"));
    lab::write_rich_flake(&dir, &lab::unique_tag());
    lab::runs_take_turns(lab, host, &dir, || {
        // A run that waits, then is interrupted: it ends at once; the first goes on.
        let mut waiting = lab
            .edict(&dir)
            .args([host, "nix", "build", ".#dep"])
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut log = lab::StderrLog::of(&mut waiting);
        log.until("waiting for it to finish");
        unsafe { libc::killpg(waiting.id() as i32, libc::SIGINT) };
        let err = log.rest();
        assert_eq!(waiting.wait().unwrap().code(), Some(130), "{host}: {err}");
    });
    // No lock left behind once both are done.
    let locks: Vec<_> = std::fs::read_dir(lab.host(host).local_path("/root/.cache/edict/mirrors"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".lockd"))
        .collect();
    assert!(locks.is_empty(), "{host}: {locks:?}");

    // A holder killed with -9 (its lock directory stays): the next run takes it over.
    let pidfile = format!("/root/sleeper-{host}.pid");
    let mut killed = lab
        .edict(&dir)
        .args([host, "nix", "run", ".#sleeper", "--", &pidfile])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lab::wait_for(&lab.host(host).local_path(&pidfile));
    let lock = lab
        .mirrors(host)
        .into_iter()
        .find(|m| m.to_string_lossy().ends_with(".lockd"))
        .expect("a lock directory while it runs");
    let holder = std::fs::read_to_string(lock.join("pid")).unwrap();
    let sleeper = std::fs::read_to_string(lab.host(host).local_path(&pidfile)).unwrap();
    unsafe {
        libc::kill(holder.trim().parse().unwrap(), libc::SIGKILL);
        libc::kill(sleeper.trim().parse().unwrap(), libc::SIGKILL);
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    // (Bounded: a lock nobody releases would hold the run forever.)
    let mut next = lab
        .edict(&dir)
        .args([host, "nix", "build", ".#dep"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = next.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            next.kill().unwrap();
            panic!("{host}: the lock of a holder killed with -9 held the next run");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{host}");
    assert!(!lock.exists(), "{host}: the dead holder's lock is gone");
    // `edict gc` removes mirrors under the same locks.
    let out = lab.edict(&dir).args(["gc", host]).output().unwrap();
    assert!(out.status.success(), "{host}: {}", describe(&out));
    assert!(
        text(&out.stdout).contains("removed 1 mirror"),
        "{host}: {}",
        describe(&out)
    );
    assert!(
        lab.mirrors(host).is_empty(),
        "{host}: {:?}",
        lab.mirrors(host)
    );
}
