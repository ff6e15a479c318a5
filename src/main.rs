//! edict: run any nix command on a remote host as if it ran here.
use clap::Parser;

/// Run any nix command on a remote host as if it ran here.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The remote host (any ssh destination).
    host: Option<String>,
}

fn main() {
    let _cli = Cli::parse();
}
