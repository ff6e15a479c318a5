//! How bytes cross the link, set once from the command line: whether the receiving store
//! may take paths from its own binary caches first (`--no-substitute`), and whether rsync
//! and `nix copy` compress (`--compress`).
//!
//! Compression is ssh's own, on the one connection edict opens (rsync and `nix copy` both
//! go through it; a `nix copy` through a shared connection cannot ask for it itself). It
//! costs CPU and wins only where the link is slower than the compressor: over a LAN
//! (1 Gbit/s) zlib is the bottleneck. `auto` therefore compresses only over a link whose
//! round trip is long (a WAN, a VPN, a laptop's uplink), measured with a TCP connection to
//! the host's ssh port before logging in; a host reached through a proxy is not measured,
//! and not compressed unless asked.

use std::sync::OnceLock;
use std::time::Duration;

/// When to compress what crosses the link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Compress {
    /// Over a link whose round trip is [`LONG_ROUND_TRIP`] or more.
    #[default]
    Auto,
    Always,
    Never,
}

/// A round trip from which `auto` compresses: far beyond a LAN's (under 1 ms) or a lab's,
/// the kind of link whose rate is below what zstd (and ssh's zlib) compress per second.
pub const LONG_ROUND_TRIP: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub substitute: bool,
    pub compress: Compress,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Sets them, once, from the command line.
pub fn set(settings: Settings) {
    let _ = SETTINGS.set(settings);
}

/// What was set (substitutes on, compression `auto`, when nothing was).
pub fn settings() -> Settings {
    SETTINGS.get().copied().unwrap_or(Settings {
        substitute: true,
        compress: Compress::Auto,
    })
}

/// Whether to compress over a link whose round trip `round_trip` gives (asked only for
/// `auto`).
pub fn compress(round_trip: impl FnOnce() -> Duration) -> bool {
    match settings().compress {
        Compress::Always => true,
        Compress::Never => false,
        Compress::Auto => round_trip() >= LONG_ROUND_TRIP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_compresses_over_long_round_trips_only() {
        // Unset: auto.
        assert!(!compress(|| Duration::from_millis(1)));
        assert!(compress(|| Duration::from_millis(40)));
        assert!(compress(|| LONG_ROUND_TRIP));
    }
}
