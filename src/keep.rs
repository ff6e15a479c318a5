//! Kept connections: a run's ssh master stays up for a while after the run
//! (`--keep-connection`, ten minutes by default), so that the next run to the same host skips
//! the login, the costliest part of an edit-and-build loop over a long link.
//!
//! The masters live in a directory that only this user can enter (`$XDG_RUNTIME_DIR/edict`,
//! else `$TMPDIR/edict-UID` or `/tmp/edict-UID`): a control socket is a logged-in shell on
//! HOST, and a socket someone else placed would send edict's sources to their host. The
//! directory must be this user's, mode 0700, not a symlink; otherwise nothing is kept.
//!
//! A socket is named after what decides where and how ssh connects (`ssh -G`'s answer and
//! edict's options), so a changed ssh config or key means a new master, never a reused one.
//! Whether a kept master still reaches HOST is checked on every reuse (see
//! `remote::prepare`): a master whose link died (a suspended laptop, a new network) would
//! otherwise leave every session through it waiting (nix#8329, nix#14132 are the same hazard
//! in nix's own use of masters). `edict forget` closes them.

use crate::exec;
use sha2::Digest as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a master stays after its last run, when nothing else is said.
pub const DEFAULT: Duration = Duration::from_secs(600);

/// How long a kept master has to answer before it counts as dead: a round trip and a
/// login shell's start are far below this on any link a user would build over.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// A duration on the command line: `600`, `30s`, `10m`, `1h`; `0` or `off`: no kept master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct For(pub Duration);

impl std::str::FromStr for For {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if matches!(s, "off" | "no" | "never") {
            return Ok(For(Duration::ZERO));
        }
        let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((i, _)) => s.split_at(i),
            None => (s, "s"),
        };
        let factor = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => 0,
        };
        digits
            .parse::<u64>()
            .ok()
            .filter(|_| factor > 0)
            .and_then(|n| n.checked_mul(factor))
            .map(|secs| For(Duration::from_secs(secs)))
            .ok_or_else(|| {
                format!("`{s}` is not a duration: write seconds, or a number with s, m or h (`10m`), or `off`")
            })
    }
}

impl std::fmt::Display for For {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.as_secs();
        match secs {
            0 => write!(f, "off"),
            s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

/// Where one host's kept master lives: its socket and the files beside it.
#[derive(Clone, Debug)]
pub struct Place {
    dir: PathBuf,
    key: String,
}

impl Place {
    pub fn socket(&self) -> PathBuf {
        self.dir.join(&self.key)
    }

    /// The master's stderr (`ssh -E`), emptied at each reuse: what it said about this run.
    pub fn log(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.key))
    }

    /// The link's round trip as measured through this master, in milliseconds.
    fn round_trip_file(&self) -> PathBuf {
        self.dir.join(format!("{}.rtt", self.key))
    }

    /// The host as the run that started it named it, for `edict forget`.
    fn label_file(&self) -> PathBuf {
        self.dir.join(format!("{}.host", self.key))
    }

    /// Taken while a run checks, starts or replaces the master, so that two runs starting
    /// together log in once.
    fn lock_file(&self) -> PathBuf {
        self.dir.join(format!("{}.lock", self.key))
    }

    /// Holds the lock until dropped; says so when another run holds it (its login may be
    /// waiting for a password or a touch).
    pub fn lock(&self, label: &str) -> std::io::Result<Lock> {
        use rustix::fs::{FlockOperation, flock};
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.lock_file())?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            exec::info(format_args!(
                "{label}: another edict run is connecting to it; waiting to share its connection"
            ));
            flock(&file, FlockOperation::LockExclusive)?;
        }
        Ok(Lock { _file: file })
    }

    /// The round trip a run measured through this master, if one did.
    pub fn round_trip(&self) -> Option<Duration> {
        let ms: u64 = std::fs::read_to_string(self.round_trip_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(Duration::from_millis(ms))
    }

    pub fn remember_round_trip(&self, took: Duration) {
        let _ = std::fs::write(self.round_trip_file(), took.as_millis().to_string());
    }

    /// A new master is starting: what the last one left is forgotten, its host named.
    pub fn starting(&self, label: &str) {
        let _ = std::fs::remove_file(self.socket());
        let _ = std::fs::remove_file(self.round_trip_file());
        let _ = std::fs::write(self.log(), "");
        let _ = std::fs::write(self.label_file(), label);
    }

    /// A reused master's log starts empty, so a lost connection is told with this run's words.
    pub fn reusing(&self) {
        let _ = std::fs::write(self.log(), "");
    }

    /// Removes the files of a master that is gone.
    pub fn clear(&self) {
        for f in [
            self.socket(),
            self.log(),
            self.round_trip_file(),
            self.label_file(),
        ] {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// A held [`Place::lock`].
pub struct Lock {
    _file: std::fs::File,
}

/// The place for a master to the host that `ssh -G` describes as `config`, reached with
/// `identity` (the options edict passes, with what varies per run left out); `Err` says why
/// no master can be kept.
pub fn place(config: &str, identity: &str) -> Result<Place, String> {
    let place = Place {
        dir: private_dir()?,
        key: key(config, identity),
    };
    // ssh binds the socket under a name 17 characters longer first; macOS holds 104.
    if place.socket().as_os_str().len() + 17 > 103 {
        return Err(format!(
            "{} is too long a path for ssh's control socket",
            place.socket().display()
        ));
    }
    Ok(place)
}

/// The kept masters there are, as (place, the host their run named).
pub fn all() -> Result<Vec<(Place, String)>, String> {
    let dir = private_dir()?;
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(key) = name.strip_suffix(".host") {
            let place = Place {
                dir: dir.clone(),
                key: key.to_string(),
            };
            let label = std::fs::read_to_string(e.path()).unwrap_or_default();
            out.push((place, label));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// 16 hex digits of the hash of what decides the connection.
fn key(config: &str, identity: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"edict-kept-1\0");
    h.update(config.as_bytes());
    h.update(b"\0");
    h.update(identity.as_bytes());
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The directory for kept masters, made if needed, and checked to be this user's alone.
fn private_dir() -> Result<PathBuf, String> {
    let dir = candidate(
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        &short_tmp(),
        rustix::process::geteuid().as_raw(),
    );
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("{} cannot be made: {e}", dir.display())),
    }
    check_private(&dir, rustix::process::geteuid().as_raw())?;
    Ok(dir)
}

/// `$XDG_RUNTIME_DIR/edict` when that directory is this user's and private (the login's
/// own, on systemd machines; not another user's that `sudo` or `runuser` passed on) and its
/// path is one ssh and nix can take; else `edict-UID` in the short temp.
fn candidate(runtime: Option<PathBuf>, tmp: &Path, uid: u32) -> PathBuf {
    match runtime {
        Some(r) if plain_path(&r) && check_private(&r, uid).is_ok() => r.join("edict"),
        _ => tmp.join(format!("edict-{uid}")),
    }
}

/// `$TMPDIR` when a control socket may live below it (see [`plain_path`]), else `/tmp`.
pub fn short_tmp() -> PathBuf {
    match std::env::var_os("TMPDIR").map(PathBuf::from) {
        Some(t) if plain_path(&t) => t,
        _ => PathBuf::from("/tmp"),
    }
}

/// Whether a directory can hold control sockets: absolute, short enough for sun_path with
/// a name below it, and of characters that survive NIX_SSHOPTS and `-o ControlPath=`.
pub fn plain_path(p: &Path) -> bool {
    p.is_absolute()
        && p.as_os_str().len() <= 60
        && p.to_str().is_some_and(|s| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-+@%,:=".contains(c))
        })
}

/// Refuses a directory that is a symlink, someone else's, or open to others.
fn check_private(dir: &Path, uid: u32) -> Result<(), String> {
    let m = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if m.file_type().is_symlink() || !m.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if m.uid() != uid {
        return Err(format!(
            "{} belongs to another user (uid {})",
            dir.display(),
            m.uid()
        ));
    }
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is open to other users (mode {:o})",
            dir.display(),
            m.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn durations_read_as_users_write_them() {
        let d = |s: &str| s.parse::<For>().map(|f| f.0.as_secs());
        assert_eq!(d("600"), Ok(600));
        assert_eq!(d("30s"), Ok(30));
        assert_eq!(d("10m"), Ok(600));
        assert_eq!(d("2h"), Ok(7200));
        assert_eq!(d("0"), Ok(0));
        assert_eq!(d("off"), Ok(0));
        for bad in ["", "m", "10x", "-1", "1.5m", "10 m"] {
            assert!(d(bad).is_err(), "{bad:?} was read");
        }
        assert_eq!(For(DEFAULT).to_string(), "10m");
        assert_eq!(For(Duration::from_secs(90)).to_string(), "90s");
        assert_eq!(For(Duration::ZERO).to_string(), "off");
    }

    #[test]
    fn the_key_changes_with_the_config_and_the_options_only() {
        let a = key("hostname 10.0.0.1\nport 22\n", "-F cfg");
        assert_eq!(a.len(), 16);
        assert_eq!(a, key("hostname 10.0.0.1\nport 22\n", "-F cfg"));
        assert_ne!(a, key("hostname 10.0.0.2\nport 22\n", "-F cfg"));
        assert_ne!(a, key("hostname 10.0.0.1\nport 22\n", "-F cfg -i key"));
    }

    #[test]
    fn the_runtime_dir_is_used_only_when_it_is_ours_private_and_plain() {
        let tmp = Path::new("/tmp");
        let uid = rustix::process::geteuid().as_raw();
        let here = tempfile::tempdir().unwrap();
        std::fs::set_permissions(here.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            candidate(Some(here.path().to_path_buf()), tmp, uid),
            here.path().join("edict")
        );
        assert_eq!(
            candidate(Some(here.path().to_path_buf()), tmp, uid + 1),
            tmp.join(format!("edict-{}", uid + 1)),
            "another user's runtime dir"
        );
        assert_eq!(
            candidate(Some(here.path().join("gone")), tmp, 1000),
            Path::new("/tmp/edict-1000")
        );
        assert_eq!(candidate(None, tmp, 0), Path::new("/tmp/edict-0"));
        assert_eq!(
            candidate(Some(PathBuf::from("/run/user/a b")), tmp, 7),
            Path::new("/tmp/edict-7")
        );
    }

    #[test]
    fn only_a_private_directory_of_this_user_holds_masters() {
        let uid = rustix::process::geteuid().as_raw();
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(check_private(&d, uid), Ok(()));
        assert!(
            check_private(&d, uid + 1)
                .unwrap_err()
                .contains("another user")
        );
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(
            check_private(&d, uid)
                .unwrap_err()
                .contains("open to other")
        );
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(
            check_private(&link, uid)
                .unwrap_err()
                .contains("not a directory")
        );
    }
}
