//! `cargo run --example lab`: start throwaway remote Nix hosts on this machine and print how
//! to point edict (or plain ssh and nix) at them. Needs root (mount namespaces), openssh-server,
//! rsync and nix-bin; `--flavour trixie` also debootstraps a Debian 13 root once (a minute or two).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/lab/mod.rs"]
mod lab;

use clap::{Parser, ValueEnum};
use lab::{Flavour, HostSpec, Lab};

#[derive(Parser)]
#[command(about = "Start throwaway remote Nix hosts for trying edict; Ctrl-C stops them")]
struct Args {
    /// Which host(s) to start.
    #[arg(long, value_enum, default_value = "both")]
    flavour: Which,
    /// Leave flakes disabled in the hosts' nix.conf.
    #[arg(long)]
    no_flakes: bool,
    /// Put nix only in /nix/var/nix/profiles/default/bin, off the non-interactive PATH.
    #[arg(long)]
    hidden_nix: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    /// Debian 12 with Nix 2.8 (this machine's root).
    Bookworm,
    /// Debian 13 with Nix 2.26 (a cached debootstrap root).
    Trixie,
    Both,
}

fn main() {
    let args = Args::parse();
    let flavours: &[Flavour] = match args.flavour {
        Which::Bookworm => &[Flavour::Bookworm],
        Which::Trixie => &[Flavour::Trixie],
        Which::Both => &Flavour::ALL,
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
         \n  edict {first} nix build .#default      # build there, result link here\
         \n  edict {first} nix flake metadata .\
         \n\nOr by hand:\
         \n  ssh $NIX_SSHOPTS {first} nix --version\
         \n  nix store ping --store ssh://{first}\
         \n\nThe hosts' stores are private: {dir}/hosts/NAME/nix. Ctrl-C stops everything.",
        opts = lab.ssh_opts(),
        demo = demo.display(),
        dir = lab.dir().display(),
    );

    wait_for_stop_signal();
    eprintln!("stopping the lab");
    drop(lab);
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
