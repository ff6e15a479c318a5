//! Builder pools against real lab hosts: reading the pool, `auto` picking a host (and
//! falling back), `edict machines` explaining the choice, pinned keys, fan-out over several
//! hosts, and a remote that is itself the head of a build farm.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use lab::{Flavour, HostSpec, Lab, describe};
use std::process::Output;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A TOML pool over the lab's hosts (reached through their ssh aliases).
fn toml_pool(entries: &[(&str, &str, &str)]) -> String {
    let mut s = String::from("version = 1\n");
    for (name, uri, extra) in entries {
        s.push_str(&format!("[machines.{name}]\nuri = \"{uri}\"\n{extra}\n"));
    }
    s
}

#[test]
fn auto_picks_the_fastest_and_falls_back_when_it_is_down() {
    let mut lab = Lab::every();
    let pool = lab.dir().join("machines.toml");
    std::fs::write(
        &pool,
        toml_pool(&[
            ("slow", "ssh://nix28", "speed-factor = 1.0"),
            ("fast", "ssh://nix226", "speed-factor = 4.0"),
            ("arm", "ssh://nix234", "system-types = [\"aarch64-linux\"]"),
            (
                "off",
                "ssh://nix226",
                "speed-factor = 100.0\nenable = false",
            ),
        ]),
    )
    .unwrap();
    let builders = format!("@{}", pool.display());
    let dir = lab.workdir("auto");
    let tag = lab::unique_tag();
    lab::write_rich_flake(&dir, &tag);

    let out = lab
        .edict(&dir)
        .args(["--builders", &builders, "auto", "nix", "build", ".#default"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stderr(&out).contains("auto: fast"), "{}", describe(&out));
    assert!(
        lab.host("nix226")
            .local_path(
                &std::fs::read_link(dir.join("result"))
                    .unwrap()
                    .display()
                    .to_string()
            )
            .exists(),
        "built on the fast one"
    );

    // `edict machines` explains it.
    let out = lab
        .edict(&dir)
        .args(["--builders", &builders, "machines"])
        .output()
        .unwrap();
    let table = stdout(&out);
    for needle in [
        "fast",
        "chosen",
        "slower",
        "does not build for x86_64-linux",
        "disabled",
    ] {
        assert!(table.contains(needle), "expected `{needle}` in:\n{table}");
    }
    let out = lab
        .edict(&dir)
        .args([
            "--builders",
            &builders,
            "machines",
            "--json",
            "--system",
            "aarch64-linux",
        ])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["chosen"], "arm", "{json:#}");

    // A disabled machine is not run on even when named; the doctor still checks it.
    let out = lab
        .edict(&dir)
        .args(["--builders", &builders, "off", "nix", "build", ".#dep"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    lab::assert_mentions(
        &stderr(&out),
        &[
            "off: choosing hosts",
            "disabled in the builder pool",
            "fix:",
        ],
    );
    let out = lab
        .edict(&dir)
        .args(["--builders", &builders, "doctor", "--json", "off"])
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("\"host\": \"off\""),
        "{}",
        describe(&out)
    );

    // The fast one goes down: auto falls back to the next.
    lab.stop("nix226");
    let out = lab
        .edict(&dir)
        .args(["--builders", &builders, "nix", "build", ".#dep"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stderr(&out).contains("auto: slow"), "{}", describe(&out));
    let out = lab
        .edict(&dir)
        .args(["--builders", &builders, "machines"])
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("unreachable: fast: connecting: nothing accepts ssh connections"),
        "{}",
        describe(&out)
    );
}

#[test]
fn no_eligible_machine_lists_every_reason() {
    let lab = Lab::new();
    let dir = lab.workdir("none");
    lab::write_rich_flake(&dir, "none");
    let builders = "ssh://a aarch64-linux ; ssh://b x86_64-linux - 1 1 kvm ; ssh://c x86_64-linux - 1 1 - benchmark";
    let out = lab
        .edict(&dir)
        .args([
            "--builders",
            builders,
            "--required-features",
            "big-parallel",
            "nix",
            "build",
            ".#default",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = stderr(&out);
    lab::assert_mentions(
        &err,
        &[
            "no machine can take a job for x86_64-linux with features big-parallel",
            "a: not eligible: does not build for x86_64-linux",
            "b: not eligible: lacks required feature(s) big-parallel",
            "fix:",
        ],
    );
    // A bad pool file names file, line and field.
    let bad = lab.dir().join("bad-machines");
    std::fs::write(&bad, "ok x86_64-linux\nbad x86_64-linux - many\n").unwrap();
    let out = lab
        .edict(&dir)
        .args(["--builders", &format!("@{}", bad.display()), "machines"])
        .output()
        .unwrap();
    lab::assert_mentions(
        &stderr(&out),
        &[&format!("{}:2", bad.display()), "`jobs`", "many"],
    );
}

#[test]
fn pool_machines_use_their_key_and_pinned_host_key() {
    let lab = Lab::every();
    let dir = lab.workdir("pinned");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    for flavour in Flavour::ALL {
        let host = lab.host(lab::default_name(flavour));
        // No ssh config at all: everything comes from the pool entry.
        let key = lab::host_public_key(host);
        let b64 = |s: &str| {
            let out = std::process::Command::new("base64")
                .arg("-w0")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            out.stdin.as_ref().unwrap().write_all(s.as_bytes()).unwrap();
            String::from_utf8(out.wait_with_output().unwrap().stdout).unwrap()
        };
        let line = format!(
            "ssh://root@127.0.0.1?port={} x86_64-linux {} 1 1 - - {}",
            host.port,
            lab.client_key().display(),
            b64(&key)
        );
        let out = lab
            .edict(&dir)
            .args([
                "--builders",
                &line,
                "auto",
                "nix",
                "build",
                ".#dep",
                "-o",
                "pinned",
            ])
            .env("EDICT_SSH_OPTS", "-F /dev/null")
            .output()
            .unwrap();
        assert!(out.status.success(), "{flavour:?}: {}", describe(&out));
        // The same machine with another host key pinned: refused.
        let wrong =
            lab::host_public_key(lab.host(lab::default_name(if flavour == Flavour::Bookworm {
                Flavour::Trixie
            } else {
                Flavour::Bookworm
            })));
        let line = format!(
            "ssh://root@127.0.0.1?port={} x86_64-linux {} 1 1 - - {}",
            host.port,
            lab.client_key().display(),
            b64(&wrong)
        );
        let out = lab
            .edict(&dir)
            .args(["--builders", &line, "auto", "nix", "build", ".#dep"])
            .env("EDICT_SSH_OPTS", "-F /dev/null")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("host key is not the one the machines file pins")
                && err.contains("put the new key in the machines file")
                && !err.contains("edict-hostkey"),
            "{}",
            describe(&out)
        );
    }
}

#[test]
fn the_pool_comes_from_nix_builders_setting() {
    let lab = Lab::every();
    let dir = lab.workdir("setting");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    let pool = lab.dir().join("machines");
    std::fs::write(&pool, "ssh://nix226 x86_64-linux - 2 3\n").unwrap();
    let config = format!("{}builders = @{}\n", lab::CLIENT_NIX_CONFIG, pool.display());
    let out = lab
        .edict(&dir)
        .args(["machines", "--json"])
        .env("NIX_CONFIG", &config)
        .output()
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", describe(&out)));
    assert_eq!(json["chosen"], "nix226");
    assert_eq!(json["machines"][0]["jobs"], 2);
    assert_eq!(
        json["machines"][0]["origin"],
        format!("{}:1", pool.display())
    );
}

#[test]
fn fan_out_over_three_hosts_with_one_failing() {
    let mut lab = Lab::every();
    lab.start(HostSpec::new("broken", Flavour::Bookworm).without_nix());
    let dir = lab.workdir("fan");
    let tag = lab::unique_tag();
    lab::write_rich_flake(&dir, &tag);
    let out = lab
        .edict(&dir)
        .args(["nix28,nix226,nix234,broken", "nix", "build", ".#default"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = stderr(&out);
    lab::assert_mentions(
        &err,
        &[
            "HOST",
            "EXIT",
            "TIME",
            "nix28 ",
            "nix226 ",
            "nix234 ",
            "broken",
            "broken: finding nix",
        ],
    );
    // Results don't collide.
    for host in ["nix28", "nix226", "nix234"] {
        let link = std::fs::read_link(dir.join(format!("result-{host}"))).unwrap();
        assert!(
            link.display()
                .to_string()
                .ends_with(&format!("edict-top-{tag}"))
        );
    }
    assert!(!dir.join("result").exists() && !dir.join("result-broken").exists());
    // Output lines carry their host.
    let out = lab
        .edict(&dir)
        .args(["nix28,nix226,nix234", "nix", "run", ".#args", "--", "x y"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert!(
        text.contains("nix28  | <x y>")
            && text.contains("nix226 | <x y>")
            && text.contains("nix234 | <x y>"),
        "{text}"
    );
    // Colours only when asked on a pipe (CLICOLOR_FORCE), one per host; in a terminal by
    // default, unless NO_COLOR.
    let out = lab
        .edict(&dir)
        .env("CLICOLOR_FORCE", "1")
        .args(["nix28,nix226", "nix", "run", ".#args", "--", "x"])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("\x1b[31mnix28 \x1b[0m | <x>")
            && text.contains("\x1b[32mnix226\x1b[0m | <x>"),
        "{text:?}"
    );
    let edict = assert_cmd::cargo::cargo_bin("edict");
    let line = format!("{} nix28,nix226 nix run .#args -- x", edict.display());
    for (no_color, coloured) in [(false, true), (true, false)] {
        let mut cmd = lab.command("script");
        cmd.args(["-qec", &line, "/dev/null"]).current_dir(&dir);
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.stdin(std::process::Stdio::piped()).output().unwrap();
        let text = stdout(&out);
        assert!(text.contains("<x>"), "{}", describe(&out));
        assert_eq!(
            text.contains("\x1b[31mnix28"),
            coloured,
            "NO_COLOR={no_color}: {text:?}"
        );
    }
}

#[test]
fn several_hosts_bring_back_changes_only_from_the_one_named() {
    let lab = Lab::every();
    let dir = lab.workdir("fansync");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    std::fs::write(dir.join("version.txt"), "1\n").unwrap();
    let out = lab
        .edict(&dir)
        .args(["nix28,nix226", "nix", "run", ".#bump"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        std::fs::read_to_string(dir.join("version.txt")).unwrap(),
        "1\n",
        "no host's changes by default"
    );
    let out = lab
        .edict(&dir)
        .args(["--sync", "nix28,nix226", "nix", "run", ".#bump"])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && stderr(&out).contains("--sync=HOST"),
        "{}",
        describe(&out)
    );
    let out = lab
        .edict(&dir)
        .args([
            "--sync=nix234",
            "nix28,nix226,nix234",
            "nix",
            "run",
            ".#bump",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        std::fs::read_to_string(dir.join("version.txt")).unwrap(),
        "2\n"
    );
    // `all`: every eligible pool machine.
    let builders = "ssh://nix28 x86_64-linux ; ssh://nix226 x86_64-linux ; ssh://nix234 x86_64-linux ; ssh://nowhere aarch64-linux";
    let out = lab
        .edict(&dir)
        .args(["--builders", builders, "all", "nix", "build", ".#dep"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    for host in ["nix28", "nix226", "nix234"] {
        assert!(dir.join(format!("result-{host}")).exists(), "{host}");
    }
}

#[test]
fn a_remote_that_heads_a_build_farm() {
    // An old head with a newer builder, and today's head with an old builder.
    for (head, builder) in [
        (Flavour::Bookworm, Flavour::Trixie),
        (Flavour::Sid, Flavour::Bookworm),
    ] {
        a_farm(head, builder);
    }
}

fn a_farm(head: Flavour, builder: Flavour) {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("farmb", builder));
    let conf = lab.farm_head_conf("farmb");
    lab.start(HostSpec::new("farma", head).nix_conf(&conf));
    lab.wire_farm("farma", "farmb");
    let dir = lab.workdir("farm");
    let tag = lab::unique_tag();
    lab::write_rich_flake(&dir, &tag);
    let out = lab
        .edict(&dir)
        .args(["farma", "nix", "build", ".#default", "-L"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let target = std::fs::read_link(dir.join("result"))
        .unwrap()
        .display()
        .to_string();
    assert!(target.ends_with(&format!("edict-top-{tag}")));
    assert!(lab::locally_valid(&target));
    // Built on the builder (max-jobs = 0 on the head), copied to the head, then here.
    assert!(
        lab.host("farmb").local_path(&target).exists(),
        "the builder built it"
    );
    assert!(
        lab.host("farma").local_path(&target).exists(),
        "the head has it"
    );
}

/// The summary table stays aligned with host names shorter than its title.
#[test]
fn the_summary_table_aligns_short_host_names() {
    let mut lab = Lab::new();
    lab.start(HostSpec::new("ha", Flavour::Bookworm));
    lab.start(HostSpec::new("hb", Flavour::Sid));
    let dir = lab.workdir("short");
    lab::write_rich_flake(&dir, &lab::unique_tag());
    let out = lab
        .edict(&dir)
        .args(["ha,hb", "nix", "build", ".#dep"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    let header = err
        .lines()
        .find(|l| l.contains("HOST") && l.contains("EXIT"))
        .unwrap();
    let column = header.find("EXIT").unwrap();
    for host in ["ha", "hb"] {
        let row = err
            .lines()
            .find(|l| l.contains(&format!("{host}  ")) && l.trim_end().ends_with('s'))
            .unwrap_or_else(|| panic!("no row for {host}: {err}"));
        assert_eq!(row.find('0'), Some(column), "{header}\n{row}");
    }
}
