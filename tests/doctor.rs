//! `edict doctor` against real broken hosts: each shows the right FAIL or warn with a fix,
//! and a healthy host shows all ok.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use lab::{Flavour, HostSpec, Lab, LocalDaemon, describe};
use serde_json::Value;
use std::process::Output;

/// Runs `edict doctor --json HOSTS` and returns (exit code, host → check → (status, fix)).
fn doctor(out: Output) -> (i32, Value) {
    let json: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", describe(&out)));
    (out.status.code().unwrap(), json)
}

fn status<'a>(json: &'a Value, host: &str, check: &str) -> (&'a str, &'a Value) {
    let report = json
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == host)
        .unwrap_or_else(|| panic!("no report for {host}: {json:#}"));
    let c = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == check)
        .unwrap();
    (c["status"].as_str().unwrap(), c)
}

fn base64(s: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

#[test]
fn a_healthy_host_is_all_ok_and_a_newer_nix_is_told_about_lock_files() {
    let lab = Lab::every();
    // As a machines-file entry with its own key and pinned host key, so that even the
    // root/daemon view needs no ssh config.
    let mut builders = String::new();
    for flavour in Flavour::ALL {
        let host = lab.host(lab::default_name(flavour));
        builders.push_str(&format!(
            "ssh://root@127.0.0.1?port={} x86_64-linux {} 1 1 - - {}\n",
            host.port,
            lab.client_key().display(),
            base64(&lab::host_public_key(host))
        ));
    }
    let file = lab.dir().join("machines");
    std::fs::write(&file, builders).unwrap();
    let out = lab
        .edict(lab.dir())
        .args([
            "--builders",
            &format!("@{}", file.display()),
            "doctor",
            "--json",
        ])
        .env("EDICT_SSH_OPTS", "-F /dev/null")
        .output()
        .unwrap();
    let (code, json) = doctor(out);
    assert_eq!(
        json.as_array().unwrap().len(),
        Flavour::ALL.len(),
        "{json:#}"
    );
    for report in json.as_array().unwrap() {
        for c in report["checks"].as_array().unwrap() {
            let detail = c["detail"].as_str().unwrap_or_default();
            if c["id"] == "nix-version" && !detail.starts_with("nix (Nix) 2.8.") {
                // A newer nix than this machine's 2.8: healthy, and the lock-format skew is
                // said, with what edict does about it.
                assert_eq!(c["status"], "warn", "{c:#}");
                assert!(
                    detail.contains("in the Nix 2.26 form, which the nix here"),
                    "{c:#}"
                );
                assert!(
                    c["fix"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("2.26 or later on both"),
                    "{c:#}"
                );
                continue;
            }
            assert_eq!(c["status"], "ok", "{}: {c:#}", report["host"]);
        }
    }
    assert_eq!(code, 0);
}

#[test]
fn broken_hosts_show_the_right_failure_and_fix() {
    for flavour in Flavour::ALL {
        broken_hosts_on(flavour);
    }
}

fn broken_hosts_on(flavour: Flavour) {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("healthy", flavour));
    lab.start(HostSpec::new("rekeyed", flavour));
    lab.start(HostSpec::new("down", flavour));
    lab.start(HostSpec::new("hidden", flavour).nix_on_path(false));
    lab.start(HostSpec::new("norsync", flavour).without_rsync());
    lab.start(HostSpec::new("chatty", flavour).banner("Welcome to the farm"));
    lab.start(HostSpec::new("tcsh", flavour).login_shell("/usr/bin/tcsh"));
    lab.start(HostSpec::new("noflakes", flavour).flakes(false));
    lab.stop("down");
    // rekeyed: known_hosts holds another key for it.
    let port = lab.host("rekeyed").port;
    let other = lab::host_public_key(lab.host("healthy"));
    let kh = std::fs::read_to_string(lab.known_hosts()).unwrap();
    let kh: String = kh
        .lines()
        .map(|l| {
            if l.starts_with(&format!("[127.0.0.1]:{port} ")) {
                format!("[127.0.0.1]:{port} {other}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(lab.known_hosts(), kh).unwrap();

    let hosts = [
        "healthy", "rekeyed", "down", "hidden", "norsync", "chatty", "noflakes", "tcsh",
    ];
    let out = lab
        .edict(lab.dir())
        .args(["doctor", "--json"])
        .args(hosts)
        .output()
        .unwrap();
    let (code, json) = doctor(out);
    assert_eq!(code, 1, "any FAIL exits non-zero");
    for check in [
        "resolve",
        "tcp",
        "host-key",
        "login",
        "quiet-shell",
        "nix-path",
        "nix-version",
        "build",
        "store",
        "rsync",
        "system",
        "trust",
    ] {
        // A newer nix than this machine's is healthy; the lock-format note makes it a warn.
        let want = if check == "nix-version" && flavour != Flavour::Bookworm {
            "warn"
        } else {
            "ok"
        };
        assert_eq!(
            status(&json, "healthy", check).0,
            want,
            "healthy {check}: {json:#}"
        );
    }
    let expect = |host: &str, check: &str, want: &str, fix_has: &str| {
        let (st, c) = status(&json, host, check);
        assert_eq!(st, want, "{host} {check}: {c:#}");
        let fix = c["fix"].as_str().unwrap_or("");
        assert!(
            fix.contains(fix_has),
            "{host} {check}: fix `{fix}` lacks `{fix_has}`"
        );
    };
    expect(
        "rekeyed",
        "host-key",
        "fail",
        &format!("ssh-keygen -R '[127.0.0.1]:{port}'"),
    );
    expect(
        "rekeyed",
        "login",
        "fail",
        &format!("-R \"[127.0.0.1]:{port}\""),
    );
    // Nix's daemon connects as root with root's ssh config, which knows none of the lab's
    // aliases: the fix names the real address, port and the entry root's config needs.
    let healthy = lab.host("healthy").port;
    expect(
        "healthy",
        "daemon",
        "warn",
        &format!(
            "add `Host healthy` with `HostName 127.0.0.1` and `Port {healthy}` to /root/.ssh/config"
        ),
    );
    expect(
        "healthy",
        "daemon",
        "warn",
        &format!("`ssh-keyscan -p {healthy} 127.0.0.1 | sudo tee -a /root/.ssh/known_hosts`"),
    );
    // A shell that greets in every session: its banner is not taken for the version.
    assert!(
        status(&json, "chatty", "nix-version").1["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("nix (Nix) {}", flavour.nix_version())),
        "{json:#}"
    );
    expect("down", "tcp", "fail", "start sshd");
    assert_eq!(status(&json, "down", "login").0, "skipped");
    expect(
        "hidden",
        "nix-path",
        "warn",
        "remote-program=/nix/var/nix/profiles/default/bin/nix-store",
    );
    expect("hidden", "store", "warn", "remote-program=");
    assert_eq!(status(&json, "hidden", "build").0, "ok");
    expect(
        "norsync",
        "rsync",
        "fail",
        "install rsync ≥ 3.1.3 on norsync",
    );
    expect("chatty", "quiet-shell", "fail", "[[ $- == *i* ]] || return");
    expect(
        "noflakes",
        "nix-version",
        "warn",
        "experimental-features = nix-command flakes",
    );
    // tcsh runs edict's commands (escaped for it): nothing to fix, and the rest is checked.
    assert_eq!(status(&json, "tcsh", "quiet-shell").0, "ok");
    assert_eq!(status(&json, "tcsh", "login").0, "ok");
    assert_eq!(status(&json, "tcsh", "build").0, "ok");
    assert_eq!(status(&json, "tcsh", "rsync").0, "ok");
    assert!(
        status(&json, "chatty", "quiet-shell").1["detail"]
            .as_str()
            .unwrap()
            .contains("Welcome to the farm")
    );
    expect(
        "noflakes",
        "nix-version",
        "warn",
        "experimental-features = nix-command flakes",
    );

    // The table form, with a fix line per problem.
    let out = lab
        .edict(lab.dir())
        .args(["doctor", "down", "chatty"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    lab::assert_mentions(
        &text,
        &[
            "HOST",
            "quiet shell",
            "FAIL tcp",
            "FAIL quiet-shell",
            "fix: start sshd",
        ],
    );
}

#[test]
fn an_untrusted_local_user_is_told_the_exact_fix() {
    let mut lab = Lab::new();
    let hosts: Vec<String> = Flavour::ALL
        .iter()
        .map(|f| format!("trusty{}", f.nix_version().replace('.', "")))
        .collect();
    for (host, flavour) in hosts.iter().zip(Flavour::ALL) {
        lab.start(HostSpec::new(host, flavour));
    }
    let user = lab.local_user("edict-untrusted");
    let dir = user.workdir("doctor");
    let _daemon = LocalDaemon::start("root");
    let out = user
        .edict(&dir)
        .args(["doctor", "--json"])
        .args(&hosts)
        .output()
        .unwrap();
    let (code, json) = doctor(out);
    assert_eq!(code, 1);
    for host in &hosts {
        let (st, c) = status(&json, host, "trust");
        assert_eq!(st, "fail", "{host}: {c:#}");
        assert!(
            c["fix"]
                .as_str()
                .unwrap()
                .contains("trusted-users = root edict-untrusted"),
            "{host}: {c:#}"
        );
        assert_eq!(status(&json, host, "build").0, "ok", "{host}");
    }
}
