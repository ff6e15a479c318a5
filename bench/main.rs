//! The benchmark: edict against Nix's own remote builds over a slow link, side by side.
//!
//! `bench/run [--rate-mbit 50] [--rtt-ms 40] [--runs 3] [--scale 1.0] [--workloads w1,w2,w3,w4]
//! [--remote trixie|sid|bookworm]`
//!
//! Each run starts a fresh remote host (a lab host in its own network namespace, behind a
//! veth shaped with `tc tbf`; latency from a delay line used as the ssh ProxyCommand, which
//! is this same program with `--delay-line`) and a fresh local store (the client commands
//! run in a mount namespace over an empty /nix). It measures wall time, bytes on the link
//! (veth counters) and ssh logins (the host's sshd log), and writes BENCHMARKS.md and
//! bench/results.json (bench/chart.py draws bench/results.png from it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/lab/mod.rs"]
mod lab;

use lab::{Flavour, HostSpec, Lab, Link};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Args {
    rate_mbit: u32,
    rtt_ms: u32,
    runs: usize,
    scale: f64,
    workloads: Vec<String>,
    methods: Vec<String>,
    edict: PathBuf,
    out: PathBuf,
    /// The remote's flavour (its Nix): trixie (2.26) unless `--remote bookworm|sid`.
    remote: Flavour,
}

fn parse_args() -> Args {
    let mut a = Args {
        rate_mbit: 50,
        rtt_ms: 40,
        runs: 3,
        scale: 1.0,
        workloads: ["w1", "w2", "w3", "w4"].map(String::from).to_vec(),
        methods: ["a", "b", "c", "d"].map(String::from).to_vec(),
        edict: PathBuf::from("target/release/edict"),
        out: PathBuf::from("BENCHMARKS.md"),
        remote: Flavour::Trixie,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--rate-mbit" => a.rate_mbit = val().parse().unwrap(),
            "--rtt-ms" => a.rtt_ms = val().parse().unwrap(),
            "--runs" => a.runs = val().parse().unwrap(),
            "--scale" => a.scale = val().parse().unwrap(),
            "--workloads" => a.workloads = val().split(',').map(String::from).collect(),
            "--methods" => a.methods = val().split(',').map(String::from).collect(),
            "--edict" => a.edict = PathBuf::from(val()),
            "--remote" => {
                a.remote = match val().as_str() {
                    "bookworm" => Flavour::Bookworm,
                    "trixie" => Flavour::Trixie,
                    "sid" => Flavour::Sid,
                    other => panic!("--remote {other}: bookworm, trixie or sid"),
                }
            }
            "--out" => a.out = PathBuf::from(val()),
            other => panic!("unknown option {other}"),
        }
    }
    a.edict = std::fs::canonicalize(&a.edict).expect("build edict first: cargo build --release");
    a
}

/// The delay line: relays stdin/stdout to HOST:PORT, holding every chunk for DELAY_MS in
/// each direction (ssh's ProxyCommand; the host's link is shaped for bandwidth by tbf).
fn delay_line(host: &str, port: &str, delay_ms: u64) {
    let sock = std::net::TcpStream::connect((host, port.parse::<u16>().unwrap())).unwrap();
    sock.set_nodelay(true).unwrap();
    let delay = Duration::from_millis(delay_ms);
    let pump = |mut from: Box<dyn Read + Send>, mut to: Box<dyn Write + Send>| {
        let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
        std::thread::spawn(move || {
            for (due, chunk) in rx {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if to.write_all(&chunk).and_then(|_| to.flush()).is_err() {
                    break;
                }
            }
            drop(reader);
        })
    };
    let up = pump(
        Box::new(std::io::stdin()),
        Box::new(sock.try_clone().unwrap()),
    );
    let sock2 = sock.try_clone().unwrap();
    let down = pump(Box::new(sock), Box::new(std::io::stdout()));
    up.join().ok();
    let _ = sock2.shutdown(std::net::Shutdown::Write);
    down.join().ok();
}

/// Writes the bench flake (plain derivations, no nixpkgs) into `dir`.
fn write_flake(dir: &Path, scale: f64) {
    let chain = 30;
    let blob = ((10u64 << 20) as f64 * scale) as u64;
    let wide = ((500.0 * scale) as u64).max(10);
    let big = ((500u64 << 20) as f64 * scale) as u64;
    let (cached, fresh) = (big / 10 * 9, big / 10);
    let flake = format!(
        r#"{{
  outputs = {{ self }}:
    let
      system = "x86_64-linux";
      drv = name: script: derivation {{ inherit name system; builder = "/bin/sh"; args = [ "-c" script ]; }};
      # W1: a deep chain; every step writes an incompressible {blob}-byte intermediate, the
      # final output is small and refers to none of them.
      step = n: drv "w1-step-${{toString n}}" ''
        /bin/mkdir $out
        /bin/head -c {blob} /dev/urandom > $out/blob
        ${{if n > 1 then "echo ${{step (n - 1)}} > /dev/null" else ""}}
      '';
      w1 = drv "w1" "echo ${{step {chain}}} > /dev/null; echo done > $out";
      # W2: the source itself is big; the output is a small summary of it.
      w2 = drv "w2" "/bin/ls -lR ${{self}}/data | /usr/bin/wc -l > $out";
      # W3: many tiny derivations under one attribute.
      leaf = i: drv "w3-leaf-${{toString i}}" "echo ${{toString i}} > $out";
      w3 = drv "w3" "echo ${{builtins.concatStringsSep " " (builtins.genList leaf {wide})}} > /dev/null; echo done > $out";
      # W4: something small, already built on the host when timed.
      w4 = drv "w4" "echo noop > $out";
      # W5: a real text source (W5's `text/`), first run to a fresh host; a small output.
      w5 = drv "w5" "/usr/bin/find ${{self}}/text -type f | /usr/bin/wc -l > $out";
      # W6: a big final closure of compressible binaries (the host's own programs and
      # libraries, concatenated), copied back.
      w6 = drv "w6" "/bin/mkdir $out; /usr/bin/find /usr/lib /usr/bin -type f -print0 | /usr/bin/xargs -0 /bin/cat 2>/dev/null | /usr/bin/head -c {big} > $out/blob";
      # W7: as W6, but 90 % of the closure (w7-cached) is on a binary cache this machine
      # reaches faster than the host (see `one_run`); 10 % is new, built there.
      w7-cached = drv "w7-cached" "/usr/bin/find /usr/lib /usr/bin -type f -print0 | /usr/bin/xargs -0 /bin/cat 2>/dev/null | /usr/bin/head -c {cached} > $out";
      w7 = drv "w7" "/bin/mkdir $out; /bin/ln -s ${{w7-cached}} $out/cached; /usr/bin/find /usr/lib /usr/bin -type f -print0 | /usr/bin/xargs -0 /bin/cat 2>/dev/null | /usr/bin/tail -c {fresh} > $out/new";
    in {{ packages.${{system}} = {{ inherit w1 w2 w3 w4 w5 w6 w7 w7-cached; }}; }};
}}
"#
    );
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("flake.nix"), flake).unwrap();
}

/// W2's source: about 200 MB in about 5000 incompressible files (scaled), in a git repo.
fn write_big_source(dir: &Path, scale: f64) {
    let files = ((5000.0 * scale) as usize).max(10);
    let size = 40 << 10;
    let data = dir.join("data");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..files {
        let sub = data.join(format!("d{:03}", i / 100));
        std::fs::create_dir_all(&sub).unwrap();
        let bytes: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(sub.join(format!("f{i:05}.bin")), bytes).unwrap();
    }
    lab::git_init(dir);
}

/// W5's source: about 150 MB of real text (this machine's docs, headers and Perl and
/// Python sources: what a source tree is made of), scaled, in a git repo.
fn write_text_source(dir: &Path, scale: f64) {
    let want = ((150u64 << 20) as f64 * scale) as u64;
    let text = dir.join("text");
    let mut have = 0u64;
    // Taken from the end: headers first. Compressed files (docs' .gz) are not source.
    let mut stack: Vec<PathBuf> = [
        "/usr/share/doc",
        "/usr/share/perl",
        "/usr/lib/python3",
        "/usr/include",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    let compressed = |p: &Path| {
        p.extension().is_some_and(|e| {
            ["gz", "xz", "bz2", "zst", "zip", "png", "jpg", "pdf", "pyc"]
                .contains(&e.to_string_lossy().as_ref())
        })
    };
    while let Some(d) = stack.pop() {
        if have >= want {
            break;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() && have < want && !compressed(&e.path()) {
                let rel = e.path().strip_prefix("/").unwrap().to_path_buf();
                let to = text.join(rel);
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                if std::fs::copy(e.path(), &to).is_ok() {
                    have += meta.len();
                }
            }
        }
    }
    assert!(
        have > want / 2,
        "only {have} bytes of text found on this machine"
    );
    lab::git_init(dir);
}

struct Ctx<'a> {
    lab: &'a Lab,
    local_nix: PathBuf,
    flake: PathBuf,
    edict: PathBuf,
    /// W7's binary cache (a `file://` one), which the local store substitutes from.
    cache: PathBuf,
}

impl Ctx<'_> {
    /// A command run with a fresh local store: in a mount namespace over `local_nix`.
    fn sh(&self, script: &str) -> (bool, String) {
        let out = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                // (a fresh Debian 12 has no /nix to mount on)
                "mkdir -p /nix && mount --bind \"$0\" /nix && cd \"$1\" && exec sh -c \"$2\"",
            ])
            .arg(&self.local_nix)
            .arg(&self.flake)
            .arg(script)
            .env("NIX_SSHOPTS", self.lab.ssh_opts())
            // W7's cache: every store here may substitute from it (unsigned, as a local
            // cache often is), and the local nix-daemon of `with_daemon` reads the same.
            .env(
                "NIX_CONFIG",
                format!(
                    "{}substituters = file://{}\nrequire-sigs = false\ntrusted-users = root\n",
                    lab::CLIENT_NIX_CONFIG,
                    self.cache.display()
                ),
            )
            .env("CACHE", &self.cache)
            .env("EDICT", &self.edict)
            .env("CFG", self.lab.ssh_config())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

/// `script` with the local store behind a nix-daemon (in the same private /nix), as on a
/// multi-user install: what substitutes on the way back need.
fn with_daemon(script: &str) -> String {
    format!(
        "nix-daemon >/dev/null 2>&1 & d=$!; i=0; while [ ! -S /nix/var/nix/daemon-socket/socket ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done; export NIX_REMOTE=daemon; ( {script} ); rc=$?; kill $d; wait $d 2>/dev/null; exit $rc"
    )
}

/// The command line of method `m` for attribute `attr`.
fn method(m: &str, attr: &str) -> String {
    match m {
        // (a) edict.
        // (`EDICT_BENCH_TIMELINE=1`: -vv, and its step times are printed after each run.)
        "a" => match std::env::var_os("EDICT_BENCH_TIMELINE") {
            Some(_) => format!("\"$EDICT\" -vv bench nix build .#{attr}"),
            None => format!("\"$EDICT\" -q bench nix build .#{attr}"),
        },
        // (b) Nix's own remote builds: evaluated here, every derivation built there.
        "b" => {
            format!("nix build --builders 'ssh://bench x86_64-linux - 2 1' --max-jobs 0 .#{attr}")
        }
        // (c) evaluate here, store there, then copy the result back.
        "c" => format!(
            "nix build --eval-store auto --store ssh-ng://bench .#{attr} && out=$(nix eval --raw .#{attr}.outPath) && nix copy --no-check-sigs --from ssh-ng://bench \"$out\""
        ),
        // (d) the floor by hand: one shared connection, rsync, one remote build, one copy.
        "d" => format!(
            "S=${{TMPDIR:-/tmp}}/edict-bench-floor-$$; ssh -F \"$CFG\" -o ControlMaster=yes -o ControlPath=$S -o ControlPersist=30 -fN bench && \
             rsync -a --delete -e \"ssh -F $CFG -o ControlPath=$S\" ./ bench:/root/bench-src/ && \
             out=$(ssh -F \"$CFG\" -o ControlPath=$S bench 'nix build /root/bench-src#{attr} --no-link && nix path-info /root/bench-src#{attr}') && \
             NIX_SSHOPTS=\"-F $CFG -o ControlPath=$S\" nix copy --no-check-sigs --from ssh://bench \"$out\" && \
             nix-store --realise \"$out\" --add-root result >/dev/null; rc=$?; ssh -F \"$CFG\" -o ControlPath=$S -O exit bench 2>/dev/null; exit $rc"
        ),
        // (e) the floor with the best hand-tuned flags: rsync -z, ssh's compression on the
        // shared connection (a `?compress=true` copy through it could not ask for its own),
        // and `--substitute-on-destination`.
        "e" => format!(
            "S=${{TMPDIR:-/tmp}}/edict-bench-floor-$$; ssh -F \"$CFG\" -C -o ControlMaster=yes -o ControlPath=$S -o ControlPersist=30 -fN bench && \
             rsync -az --delete -e \"ssh -F $CFG -o ControlPath=$S\" ./ bench:/root/bench-src/ && \
             out=$(ssh -F \"$CFG\" -o ControlPath=$S bench 'nix build /root/bench-src#{attr} --no-link && nix path-info /root/bench-src#{attr}') && \
             NIX_SSHOPTS=\"-F $CFG -o ControlPath=$S\" nix copy --no-check-sigs --substitute-on-destination --from ssh://bench \"$out\" && \
             nix-store --realise \"$out\" --add-root result >/dev/null; rc=$?; ssh -F \"$CFG\" -o ControlPath=$S -O exit bench 2>/dev/null; exit $rc"
        ),
        _ => panic!("unknown method {m}"),
    }
}

#[derive(Clone, Debug, serde::Serialize)]
struct Sample {
    secs: f64,
    bytes: u64,
    logins: usize,
}

fn one_run(args: &Args, workload: &str, m: &str, flake: &Path) -> Result<Sample, String> {
    let mut lab = Lab::new();
    let exe = std::env::current_exe().unwrap();
    let proxy =
        (args.rtt_ms > 0).then(|| format!("{} --delay-line {}", exe.display(), args.rtt_ms / 2));
    lab.start(HostSpec::new("bench", args.remote).link(Link {
        rate_mbit: args.rate_mbit,
        proxy,
    }));
    let local = tempfile::Builder::new()
        .prefix("edict-bench-local-")
        .tempdir_in(lab::scratch())
        .unwrap();
    let cache = tempfile::Builder::new()
        .prefix("edict-bench-cache-")
        .tempdir_in(lab::scratch())
        .unwrap();
    let ctx = Ctx {
        lab: &lab,
        local_nix: local.path().to_path_buf(),
        flake: flake.to_path_buf(),
        edict: args.edict.clone(),
        cache: cache.path().to_path_buf(),
    };
    // W4g is W4 from a git work tree.
    let attr = if workload == "w4g" { "w4" } else { workload };
    // Untimed first step: W2 builds once (then one file changes), W4 builds once.
    match workload {
        "w2" => {
            let (ok, log) = ctx.sh(&method(m, attr));
            if !ok {
                return Err(format!("warm-up: {log}"));
            }
            let f = flake.join("data/d000/f00000.bin");
            let mut bytes = std::fs::read(&f).unwrap();
            bytes[0] ^= 0xff;
            std::fs::write(&f, bytes).unwrap();
            lab::git(flake, &["commit", "-qam", "one change"]);
        }
        "w4" | "w4g" => {
            let (ok, log) = ctx.sh(&method(m, attr));
            if !ok {
                return Err(format!("warm-up: {log}"));
            }
        }
        // W7: w7-cached is built here, put on the cache, and forgotten by this store.
        "w7" => {
            let (ok, log) = ctx.sh(
                "nix build --no-link .#w7-cached && p=$(nix eval --raw .#w7-cached.outPath) && nix copy --to \"file://$CACHE\" \"$p\" && nix-store --delete \"$p\" >/dev/null",
            );
            if !ok {
                return Err(format!("filling the cache: {log}"));
            }
        }
        _ => {}
    }
    // Written-back data of the set-up (W2's 200 MB source) must not land in a timed run.
    Command::new("sync").status().unwrap();
    let (bytes0, logins0) = (lab.host("bench").link_bytes(), lab.logins("bench"));
    let start = Instant::now();
    let (ok, log) = if workload == "w7" {
        ctx.sh(&with_daemon(&method(m, attr)))
    } else {
        ctx.sh(&method(m, attr))
    };
    let secs = start.elapsed().as_secs_f64();
    if m == "a" && std::env::var_os("EDICT_BENCH_TIMELINE").is_some() {
        for l in log.lines().filter(|l| l.starts_with("edict: [")) {
            eprintln!("  {l}");
        }
    }
    let sample = Sample {
        secs,
        bytes: lab.host("bench").link_bytes() - bytes0,
        logins: lab.logins("bench") - logins0,
    };
    // Let the local store go: it may hold read-only store paths.
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("u+w")
        .arg(local.path())
        .status();
    if ok { Ok(sample) } else { Err(log) }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--delay-line") {
        delay_line(&argv[3], &argv[4], argv[2].parse().unwrap());
        return;
    }
    let args = parse_args();
    let names = BTreeMap::from([
        ("a", "(a) edict"),
        ("b", "(b) nix --builders"),
        ("c", "(c) --store ssh-ng + copy"),
        ("d", "(d) floor: rsync+ssh+copy"),
        ("e", "(e) floor, compressed"),
    ]);
    let mut results: BTreeMap<String, BTreeMap<String, Result<Vec<Sample>, String>>> =
        BTreeMap::new();
    for w in &args.workloads {
        for m in &args.methods {
            let mut samples = Vec::new();
            let mut failure = None;
            for run in 0..args.runs {
                // W2 changes its source: every method and run starts from the same repo.
                let work = tempfile::Builder::new()
                    .prefix("edict-bench-src-")
                    .tempdir_in(lab::scratch())
                    .unwrap();
                let flake = work.path().join("src");
                write_flake(&flake, args.scale);
                if w == "w2" {
                    write_big_source(&flake, args.scale);
                }
                if w == "w5" {
                    write_text_source(&flake, args.scale);
                }
                if w == "w4g" {
                    lab::git(&flake, &["init", "-q"]);
                    lab::git(&flake, &["add", "."]);
                    lab::git(&flake, &["commit", "-qm", "w4"]);
                }
                match one_run(&args, w, m, &flake) {
                    Ok(s) => {
                        eprintln!(
                            "{w} {} run {}: {:.2}s, {} bytes, {} ssh logins",
                            names[m.as_str()],
                            run + 1,
                            s.secs,
                            s.bytes,
                            s.logins
                        );
                        samples.push(s);
                    }
                    Err(e) => {
                        eprintln!(
                            "{w} {} run {}: FAILED\n{}",
                            names[m.as_str()],
                            run + 1,
                            e.lines()
                                .rev()
                                .take(6)
                                .collect::<Vec<_>>()
                                .into_iter()
                                .rev()
                                .collect::<Vec<_>>()
                                .join("\n")
                        );
                        failure = Some(e);
                        break;
                    }
                }
            }
            let entry = match failure {
                Some(e) => Err(e
                    .lines()
                    .rev()
                    .find(|l| l.contains("error"))
                    .unwrap_or("failed")
                    .to_string()),
                None => Ok(samples),
            };
            results
                .entry(w.clone())
                .or_default()
                .insert(m.clone(), entry);
        }
    }
    write_report(&args, &names, &results);
}

/// Bytes as a reader compares them: KB for control traffic, MB for payloads.
fn size(bytes: f64) -> String {
    if bytes >= 1e6 {
        format!("{:.1} MB", bytes / 1e6)
    } else {
        format!("{:.1} KB", bytes / 1e3)
    }
}

fn write_report(
    args: &Args,
    names: &BTreeMap<&str, &str>,
    results: &BTreeMap<String, BTreeMap<String, Result<Vec<Sample>, String>>>,
) {
    let nix_local = Command::new("nix")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let titles = BTreeMap::from([
        (
            "w1",
            "W1 deep chain: 30 derivations with 10 MB intermediates, small final output",
        ),
        (
            "w2",
            "W2 big source: ~200 MB in ~5000 files, rebuild after a one-file change",
        ),
        ("w3", "W3 wide: 500 tiny derivations under one attribute"),
        ("w4", "W4 no-op: an attribute already built on the host"),
        (
            "w4g",
            "W4g no-op from a git work tree: W4, the flake committed in git",
        ),
        (
            "w5",
            "W5 cold source: ~150 MB of real text (docs, headers, scripts), first run to a fresh host",
        ),
        (
            "w6",
            "W6 big closure: ~500 MB of compressible binaries built there, copied back",
        ),
        (
            "w7",
            "W7 cached closure: as W6, with 90 % of it on a binary cache this machine reaches faster (local store behind a nix-daemon)",
        ),
    ]);
    let mut md = String::new();
    md.push_str("# Benchmarks\n\nGenerated by `bench/run`");
    md.push_str(&format!(
        " with `--rate-mbit {} --rtt-ms {} --runs {} --scale {}`.\n\n",
        args.rate_mbit, args.rtt_ms, args.runs, args.scale
    ));
    md.push_str(&format!(
        "- Machine: {} cores, {cpu}; Debian 12 client ({nix_local}), remote: lab host ({remote}) in its own network namespace.\n\
         - Link: veth shaped with `tc tbf` to {} Mbit/s each way; {} ms round trip added by a delay line in the ssh path (ProxyCommand).\n\
         - Storage: sources, both stores and the host's files on a tmpfs (see bench/run): the link is measured, not this VM's disk.\n\
         - Every run: a fresh remote store and a fresh local store. Sizes are the issue's times `--scale` (30 steps of {} MB; {} files of 40 KB; {} leaves).\n\
         - Time: median (min–max) of the runs; vs (b), vs (d): that median over (b)'s or (d)'s, so below 1× is faster. Bytes: both directions on the veth. Logins: ssh connections the host accepted.\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        args.rate_mbit,
        args.rtt_ms,
        (10.0 * args.scale * 10.0).round() / 10.0,
        ((5000.0 * args.scale) as usize).max(10),
        ((500.0 * args.scale) as usize).max(10),
        remote = args.remote.describe(),
    ));
    let mut json = serde_json::Map::new();
    for (w, by_method) in results {
        md.push_str(&format!("## {}\n\n| method | time (s) | vs (b) | vs (d) | bytes on the link | ssh logins |\n|---|---|---|---|---|---|\n", titles.get(w.as_str()).unwrap_or(&w.as_str())));
        let med = |m: &str| {
            by_method
                .get(m)
                .and_then(|r| r.as_ref().ok())
                .map(|s| median(&mut s.iter().map(|x| x.secs).collect::<Vec<_>>()))
        };
        let (base_b, base_d) = (med("b"), med("d"));
        let mut wj = serde_json::Map::new();
        for (m, r) in by_method {
            match r {
                Ok(samples) => {
                    let mut t: Vec<f64> = samples.iter().map(|s| s.secs).collect();
                    let tm = median(&mut t);
                    let (min, max) = (t[0], t[t.len() - 1]);
                    let bytes =
                        median(&mut samples.iter().map(|s| s.bytes as f64).collect::<Vec<_>>());
                    let logins =
                        median(&mut samples.iter().map(|s| s.logins as f64).collect::<Vec<_>>());
                    let ratio = |b: Option<f64>| {
                        b.map(|b| format!("{:.2}×", tm / b))
                            .unwrap_or_else(|| "–".into())
                    };
                    md.push_str(&format!(
                        "| {} | {tm:.2} ({min:.2}–{max:.2}) | {} | {} | {} | {logins:.0} |\n",
                        names[m.as_str()],
                        ratio(base_b),
                        ratio(base_d),
                        size(bytes)
                    ));
                    wj.insert(m.clone(), serde_json::json!({ "median": tm, "min": min, "max": max, "bytes": bytes, "logins": logins }));
                }
                Err(e) => {
                    md.push_str(&format!(
                        "| {} | failed: {} | | | | |\n",
                        names[m.as_str()],
                        e.replace('|', "/")
                    ));
                    wj.insert(m.clone(), serde_json::json!({ "error": e }));
                }
            }
        }
        md.push('\n');
        json.insert(w.clone(), serde_json::Value::Object(wj));
    }
    std::fs::write(&args.out, md).unwrap();
    std::fs::write("bench/results.json", serde_json::to_string_pretty(&serde_json::json!({ "rate_mbit": args.rate_mbit, "rtt_ms": args.rtt_ms, "scale": args.scale, "runs": args.runs, "results": json })).unwrap()).unwrap();
    eprintln!("wrote {} and bench/results.json", args.out.display());
}
