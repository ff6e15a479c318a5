//! The lab itself: on each flavour of host, the round trip edict automates, done by hand
//! (ssh, rsync a flake, build with the host's nix, `nix copy` the closure back), plus the
//! host variants later tests rely on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use lab::{Flavour, HostSpec, Lab, describe};
use std::path::Path;

#[test]
fn hosts_start_quickly_and_report_their_nix() {
    lab::debian_roots(); // build the cached root, if needed, outside the timing
    for flavour in Flavour::ALL {
        let mut lab = Lab::new();
        let t = std::time::Instant::now();
        lab.start(HostSpec::new("h", flavour));
        let took = t.elapsed();
        let version = lab.ssh_ok("h", "nix --version");
        assert!(
            version.contains(&format!("nix (Nix) {}.", flavour.nix_version())),
            "{flavour:?}: {version}"
        );
        // Not an assertion on speed (timings are the benchmark's business); shown for humans.
        eprintln!("{flavour:?} host started in {took:?}: {}", version.trim());
    }
}

fn local_path_valid(lab: &Lab, path: &str) -> bool {
    lab.command("nix-store")
        .args(["--check-validity", path])
        .output()
        .unwrap()
        .status
        .success()
}

/// ssh in, rsync a flake, build it there, copy the closure back; check it was absent locally
/// before and is valid after, and that the host's store is really separate.
fn round_trip(flavour: Flavour, store_scheme: &str) {
    let lab = Lab::every();
    let host = lab::default_name(flavour);
    let tag = lab::unique_tag();
    let src = tempfile::tempdir().unwrap();
    lab::write_flake(src.path(), &tag);

    let rsync = lab
        .command("rsync")
        .args(["-a", "--delete", "-e"])
        .arg(format!("ssh {}", lab.ssh_opts()))
        .arg(format!("{}/", src.path().display()))
        .arg(format!("{host}:/root/src/"))
        .output()
        .unwrap();
    assert!(
        rsync.status.success(),
        "rsync to {host}: {}",
        describe(&rsync)
    );
    assert!(lab.host(host).local_path("/root/src/flake.nix").exists());

    let out = lab.ssh_ok(
        host,
        "nix build /root/src#default --no-link && nix path-info /root/src#default",
    );
    let out = out.trim().to_string();
    assert!(
        out.starts_with("/nix/store/") && out.ends_with(&format!("-edict-top-{tag}")),
        "{out}"
    );
    // Built in the host's private store, not in this machine's.
    assert!(lab.host(host).local_path(&out).join("greeting").exists());
    assert!(
        !local_path_valid(&lab, &out),
        "{out} must not be in the local store yet"
    );
    assert!(!Path::new(&out).exists());

    let copy = lab
        .command("nix")
        .args(["copy", "--no-check-sigs", "--from"])
        .arg(format!("{store_scheme}://{host}"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        copy.status.success(),
        "nix copy from {host}: {}",
        describe(&copy)
    );

    let closure = lab
        .command("nix")
        .args(["path-info", "--recursive", &out])
        .output()
        .unwrap();
    assert!(closure.status.success(), "{}", describe(&closure));
    let closure = String::from_utf8(closure.stdout).unwrap();
    let paths: Vec<&str> = closure.lines().collect();
    assert_eq!(paths.len(), 2, "closure of {out}: {closure}");
    for p in &paths {
        assert!(local_path_valid(&lab, p), "{p} not valid locally");
    }
    let dep = std::fs::read_to_string(Path::new(&out).join("dep")).unwrap();
    let dep = dep.trim();
    assert!(
        paths.contains(&dep),
        "runtime reference {dep} missing from {paths:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dep).unwrap(),
        format!("dep {tag}\n")
    );
}

#[test]
fn round_trip_on_nix_2_8_over_ssh() {
    round_trip(Flavour::Bookworm, "ssh");
}

#[test]
fn round_trip_on_nix_2_26_over_ssh_ng() {
    round_trip(Flavour::Trixie, "ssh-ng");
}

#[test]
fn round_trip_on_nix_2_34_over_ssh_ng() {
    round_trip(Flavour::Sid, "ssh-ng");
}

#[test]
fn host_with_hidden_nix_and_flakes_off() {
    for flavour in Flavour::ALL {
        let mut lab = Lab::new();
        lab.start(
            HostSpec::new("odd", flavour)
                .nix_on_path(false)
                .flakes(false),
        );
        let which = lab.ssh("odd", "command -v nix");
        assert!(
            !which.status.success(),
            "{flavour:?}: nix must be off PATH: {}",
            describe(&which)
        );
        let nix = "/nix/var/nix/profiles/default/bin/nix";
        let v = lab.ssh_ok("odd", &format!("{nix} --version"));
        assert!(v.contains(flavour.nix_version()), "{v}");

        let src = lab.host("odd").local_path("/root/src");
        lab::write_flake(&src, &lab::unique_tag());
        let off = lab.ssh("odd", &format!("{nix} build /root/src --no-link"));
        assert!(
            !off.status.success(),
            "flakes must be disabled: {}",
            describe(&off)
        );
        let err = String::from_utf8_lossy(&off.stderr);
        assert!(err.contains("experimental"), "{flavour:?}: {err}");
        lab.ssh_ok(
            "odd",
            &format!(
                "{nix} --extra-experimental-features 'nix-command flakes' build /root/src --no-link"
            ),
        );
    }
}

#[test]
fn dropping_the_lab_stops_every_sshd() {
    let lab = Lab::every();
    let pids: Vec<u32> = lab.hosts().iter().map(|h| h.pid()).collect();
    for pid in &pids {
        assert!(Path::new(&format!("/proc/{pid}")).exists());
    }
    drop(lab);
    for pid in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "sshd {pid} left behind"
        );
    }
}

#[test]
fn multi_user_hosts_build_through_their_daemon() {
    let mut lab = Lab::new();
    for flavour in Flavour::ALL {
        let name = format!("mu{}", flavour.nix_version().replace('.', ""));
        lab.start(HostSpec::new(&name, flavour).user("edict-remote"));
        let who = lab.ssh_ok(&name, "id -un; echo $HOME");
        assert_eq!(who, "edict-remote\n/home/edict-remote\n");
        let src = lab.host(&name).local_path("/home/edict-remote/src");
        lab::write_flake(&src, &lab::unique_tag());
        std::process::Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&src)
            .status()
            .unwrap();
        let out = lab.ssh_ok(&name, "nix build ~/src --no-link && nix path-info ~/src && nix store ping 2>&1 || nix ping-store 2>&1");
        assert!(out.contains("/nix/store/"), "{flavour:?}: {out}");
        assert!(
            out.contains("daemon"),
            "{flavour:?}: the store must be the daemon's: {out}"
        );
    }
}

/// README's first command, `cargo run --example lab -- --demo`, on a machine as fresh as
/// Debian 12 leaves it: this machine's root seen through an overlay in which `/nix` and
/// `/etc/nix` do not exist (nix-bin creates neither), entered with pivot_root so that nix,
/// which re-enters its mount namespace before it runs ssh, stays inside. The demo must make
/// what its hosts mount on, build on a host with edict and leave a valid `./result` here.
#[test]
fn the_demo_runs_on_a_machine_without_nix_directories() {
    lab::require();
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().unwrap().parent().unwrap();
    let example = target.join("examples/lab");
    assert!(
        example.exists() && target.join("edict").exists(),
        "{} and edict are built by `cargo test`; with a filter, `cargo build --examples --bins` first",
        example.display()
    );
    let scratch = tempfile::Builder::new()
        .prefix("edict-fresh-")
        .tempdir_in("/var/tmp")
        .unwrap();
    // Whiteouts (character devices 0/0 in the upper dir) hide /nix and /etc/nix.
    let script = r#"set -e
T=$1; EXAMPLE=$2
mount -t tmpfs tmpfs "$T"
mkdir -p "$T/upper/etc" "$T/work" "$T/root"
mknod "$T/upper/nix" c 0 0
mknod "$T/upper/etc/nix" c 0 0
mount -t overlay overlay -o "lowerdir=/,upperdir=$T/upper,workdir=$T/work" "$T/root"
R=$T/root
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount --rbind /sys "$R/sys"
mount -t tmpfs tmpfs "$R/tmp"
mount -t tmpfs tmpfs "$R/run"
mkdir -p "$R/.oldroot"
cd "$R"
pivot_root . .oldroot
exec chroot . sh -c 'umount -l /.oldroot && rmdir /.oldroot
  for d in /nix /etc/nix; do if [ -e $d ]; then echo "$d exists: the overlay did not hide it" >&2; exit 99; fi; done
  cd / && exec "$0" --demo' "$EXAMPLE"
"#;
    let out = std::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(scratch.path())
        .arg(&example)
        .env_remove("CARGO") // use the edict binary cargo test built, build nothing
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the demo failed: {}", describe(&out));
    lab::assert_mentions(
        &stdout,
        &[
            "$ edict nix28 nix build .#default",
            "result -> /nix/store/",
            "hello",
            "copied into this machine's store (valid here)",
        ],
    );
}

/// `cargo test` as a user who is not root: the first lab test ends the test process with one
/// message that says what is missing, the command that fixes it and the tests that need no
/// root, instead of a panic per test. (A copy of this very test binary, run as `nobody`.)
#[test]
fn without_root_the_lab_tests_stop_with_one_clear_message() {
    lab::require();
    let dir = tempfile::Builder::new()
        .prefix("edict-noroot-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let copy = dir.path().join("lab_hosts");
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    for p in [dir.path(), copy.as_path()] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&copy)
        .args(["--test-threads", "4", "round_trip"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        stderr.matches("cannot start its test hosts").count(),
        1,
        "{}",
        describe(&out)
    );
    lab::assert_mentions(
        &stderr,
        &[
            "it is not root",
            "tests/lab/install.sh",
            "cargo test --bins --test cli",
        ],
    );
    assert!(!stderr.contains("panicked"), "{}", describe(&out));
}
