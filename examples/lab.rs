//! `cargo run --example lab`: start throwaway remote Nix hosts on this machine and print how
//! to point edict (or plain ssh and nix) at them; `-- --demo` builds a demo flake on one of
//! them with edict, shows `./result` here, and stops. Needs root (mount namespaces) on
//! Debian 12: what is missing is installed first by `tests/lab/install.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/lab/mod.rs"]
mod lab;

use clap::{Parser, ValueEnum};
use lab::{Flavour, HostSpec, Lab};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

#[derive(Parser)]
#[command(about = "Start throwaway remote Nix hosts for trying edict; Ctrl-C stops them")]
struct Args {
    /// Which host(s) to start (default: both; with --demo, bookworm).
    #[arg(long, value_enum)]
    flavour: Option<Which>,
    /// Leave flakes disabled in the hosts' nix.conf.
    #[arg(long)]
    no_flakes: bool,
    /// Put nix only in /nix/var/nix/profiles/default/bin, off the non-interactive PATH.
    #[arg(long)]
    hidden_nix: bool,
    /// Build a demo flake on the first host with edict, show ./result here, then stop.
    #[arg(long)]
    demo: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    /// Debian 12 with Nix 2.8 (this machine's root).
    Bookworm,
    /// Debian 13 with Nix 2.26 (a cached debootstrap root).
    Trixie,
    /// Debian sid with Nix 2.34 (a cached debootstrap root).
    Sid,
    /// Bookworm and trixie.
    Both,
    /// All three.
    All,
}

fn main() -> ExitCode {
    let args = Args::parse();
    set_up();
    let edict = edict_binary();
    let which = args.flavour.unwrap_or(if args.demo {
        Which::Bookworm
    } else {
        Which::Both
    });
    let flavours: &[Flavour] = match which {
        Which::Bookworm => &[Flavour::Bookworm],
        Which::Trixie => &[Flavour::Trixie],
        Which::Sid => &[Flavour::Sid],
        Which::Both => &[Flavour::Bookworm, Flavour::Trixie],
        Which::All => &Flavour::ALL,
    };
    let mut lab = Lab::new();
    for &flavour in flavours {
        let spec = HostSpec::new(lab::default_name(flavour), flavour)
            .flakes(!args.no_flakes)
            .nix_on_path(!args.hidden_nix);
        lab.start(spec);
    }
    let demo = lab.dir().join("demo");
    lab::write_flake(&demo, &lab::unique_tag());
    let first = lab.hosts()[0].name().to_string();
    if args.demo {
        return run_demo(&lab, &edict, &demo, &first);
    }

    println!("The lab is up in {}:", lab.dir().display());
    for host in lab.hosts() {
        println!(
            "  {:<8} 127.0.0.1:{}  {}",
            host.name(),
            host.port,
            host.spec.flavour.describe()
        );
    }
    println!(
        "\nIn another shell:\n\
         \n  export NIX_SSHOPTS='{opts}'\
         \n  cd {demo}\
         \n  {edict} {first} nix build .#default      # build there, result link here\
         \n  {edict} {first} nix flake metadata .\
         \n\nOr by hand:\
         \n  ssh $NIX_SSHOPTS {first} nix --version\
         \n  nix store ping --store ssh://{first}\
         \n\nThe hosts' stores are private: {dir}/hosts/NAME/nix. Ctrl-C stops everything.",
        opts = lab.ssh_opts(),
        demo = demo.display(),
        edict = edict.display(),
        dir = lab.dir().display(),
    );

    wait_for_stop_signal();
    eprintln!("stopping the lab");
    drop(lab);
    ExitCode::SUCCESS
}

/// Installs what the lab lacks (as root on Debian, with the same script as CI), or stops
/// with the command that would.
fn set_up() {
    let missing = lab::missing_packages();
    if lab::is_root() && !missing.is_empty() {
        eprintln!("lab: installing {} first", missing.join(" "));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/install.sh");
        let ok = Command::new(&script)
            .arg("--no-roots")
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("lab: {} failed (its messages are above)", script.display());
            std::process::exit(1);
        }
    }
    lab::require();
}

/// The edict binary beside this example (`target/<profile>/edict`), built first when this
/// runs under cargo, so the demo never runs a stale one.
fn edict_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the example's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the example lives in target/<profile>/examples");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "--bin", "edict"]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let ok = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("lab: building edict failed (cargo's messages are above)");
            std::process::exit(1);
        }
    }
    let edict = profile_dir.join("edict");
    if !edict.exists() {
        eprintln!(
            "lab: {} is not built: run `cargo build` first",
            edict.display()
        );
        std::process::exit(1);
    }
    edict
}

/// Shows edict at work: each command printed, then run as a user would in the demo flake.
fn run_demo(lab: &Lab, edict: &Path, demo: &Path, host: &str) -> ExitCode {
    let flavour = lab.host(host).spec.flavour.describe();
    println!("A throwaway remote host `{host}` ({flavour}) is up, with its own /nix store.");
    println!("A demo flake is in {}.\n", demo.display());
    let steps: [(&str, Vec<&str>); 3] = [
        (
            "edict",
            vec![host, "nix", "build", ".#default", "--print-build-logs"],
        ),
        ("ls", vec!["-l", "result"]),
        ("cat", vec!["result/greeting"]),
    ];
    for (program, argv) in steps {
        println!("$ {program} {}", argv.join(" "));
        let path = if program == "edict" {
            edict.display().to_string()
        } else {
            program.to_string()
        };
        let status = lab
            .command(&path)
            .args(&argv)
            .current_dir(demo)
            .status()
            .expect("running a demo step");
        if !status.success() {
            eprintln!("lab: the demo step `{program}` failed ({status})");
            return ExitCode::FAILURE;
        }
    }
    let target = std::fs::read_link(demo.join("result")).expect("the result link");
    let valid = lab::locally_valid(&target.display().to_string());
    println!(
        "\nBuilt on {host}, copied into this machine's store ({}), and ./result is a GC root here.",
        if valid {
            "valid here"
        } else {
            "NOT valid here"
        }
    );
    println!("`cargo run --example lab` keeps hosts up for you to try more.");
    if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Blocks until SIGINT, SIGTERM or SIGHUP, so that the lab is dropped (hosts stopped, files
/// removed) instead of the process dying with it still on disk.
fn wait_for_stop_signal() {
    // SAFETY: plain libc signal-set calls on a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
}
