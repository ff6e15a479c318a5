//! How bytes cross the link, set once from the command line: whether the receiving store
//! may take paths from its own binary caches first (`--substitute`), and whether rsync
//! and `nix copy` compress (`--compress`).
//!
//! Both pay only over a slow link. Substitutes bring from a binary cache what would
//! otherwise cross the link: over a WAN that wins (W7: 0.29× the floor), over a LAN, where
//! HOST is as near as any cache and the cache's archives must be unpacked, it loses (W7 at
//! 1 Gbit/s: 2× slower). `auto` therefore substitutes, as it compresses, only over a link
//! whose round trip is long.
//!
//! Compression costs CPU and wins only where the link is slower than the compressor: over
//! a LAN (1 Gbit/s) ssh's zlib is the bottleneck. `auto` therefore compresses only over a
//! link whose round trip is long (a WAN, a VPN, a laptop's uplink), measured on the open
//! connection. rsync compresses itself (zstd or lz4, which both rsyncs negotiate from
//! 3.2); `nix copy` cannot through the shared connection, so a big copy gets a connection
//! of its own with ssh's compression (key logins only; else the shared one, uncompressed).

use std::sync::OnceLock;
use std::time::Duration;

/// When to compress what crosses the link, or to substitute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum When {
    /// When a command there and back takes 30 ms or more (a link beyond a LAN's).
    #[default]
    Auto,
    /// On every run.
    Always,
    /// On no run.
    Never,
}

/// A round trip (a command run there and its answer) from which `auto` compresses: far
/// beyond a LAN's or a lab's (a few ms, most of it ssh starting), the kind of link whose
/// rate is below what zstd and ssh's zlib compress per second.
pub const LONG_ROUND_TRIP: Duration = Duration::from_millis(30);

/// The least a `nix copy` must bring for a compressed connection of its own to pay for
/// its login.
pub const BIG_COPY: u64 = 16 << 20;

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub substitute: When,
    pub compress: When,
    /// How long the ssh master stays after the run (`--keep-connection`; see `keep`).
    pub keep: Duration,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Sets them, once, from the command line.
pub fn set(settings: Settings) {
    let _ = SETTINGS.set(settings);
}

/// What was set (substitutes on, compression `auto`, when nothing was).
pub fn settings() -> Settings {
    SETTINGS.get().copied().unwrap_or(Settings {
        substitute: When::Auto,
        compress: When::Auto,
        keep: crate::keep::DEFAULT,
    })
}

/// Whether to compress over a link whose round trip `round_trip` gives (asked only for
/// `auto`).
pub fn compress(round_trip: impl FnOnce() -> Duration) -> bool {
    decide(settings().compress, round_trip)
}

/// Whether the receiving store substitutes, over a link whose round trip `round_trip` gives
/// (asked only for `auto`).
pub fn substitute(round_trip: impl FnOnce() -> Duration) -> bool {
    decide(settings().substitute, round_trip)
}

/// Whether a run needs the link's round trip to decide (either setting is `auto`).
pub fn decides_by_round_trip() -> bool {
    let s = settings();
    s.compress == When::Auto || s.substitute == When::Auto
}

fn decide(when: When, round_trip: impl FnOnce() -> Duration) -> bool {
    match when {
        When::Always => true,
        When::Never => false,
        When::Auto => round_trip() >= LONG_ROUND_TRIP,
    }
}

/// Whether both rsyncs (their `--version` lines) negotiate a compression of their own:
/// from 3.2.0 they pick the best both have (zstd, lz4); before, only zlib, slow enough to
/// lose on all but slow links.
pub fn rsyncs_negotiate(here: &str, there: &str) -> bool {
    [here, there].iter().all(|line| {
        crate::rsync::numbers(&crate::rsync::version(line)).as_slice() >= [3, 2].as_slice()
            && !line.contains("openrsync")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsync_compression_needs_3_2_on_both_sides() {
        let v = |n: &str| format!("rsync  version {n}  protocol version 31");
        assert!(rsyncs_negotiate(&v("3.2.7"), &v("3.4.1")));
        assert!(rsyncs_negotiate(&v("v3.2.3"), &v("3.2.0")));
        assert!(!rsyncs_negotiate(&v("3.1.3"), &v("3.2.7")));
        assert!(!rsyncs_negotiate(&v("3.2.7"), &v("3.1.3")));
        assert!(!rsyncs_negotiate(
            &v("3.2.7"),
            "openrsync: protocol version 29"
        ));
        assert!(!rsyncs_negotiate(&v("3.2.7"), ""));
    }

    #[test]
    fn auto_compresses_over_long_round_trips_only() {
        // Unset: auto.
        assert!(!compress(|| Duration::from_millis(1)));
        assert!(compress(|| Duration::from_millis(40)));
        assert!(compress(|| LONG_ROUND_TRIP));
        assert!(!substitute(|| Duration::from_millis(1)));
        assert!(substitute(|| Duration::from_millis(40)));
        assert!(decides_by_round_trip());
    }
}
