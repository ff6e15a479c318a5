//! The containment rule of step 7, in one place: sync-back creates, replaces and deletes
//! files only beneath the flake's root, never through a symlink or over something that is
//! not a directory on the way. Every write opens the path one component at a time from the
//! root's directory handle (`openat` with `O_NOFOLLOW | O_DIRECTORY`) and acts on the last
//! component relative to its parent's handle, so a symlink here — tracked (`docs ->
//! ../shared-docs`), or put in place of a directory while the command ran — can never take
//! a write outside the tree. A conflict copy never replaces anything (`linkat` refuses an
//! existing name).

use rustix::fs::{AtFlags, Mode, OFlags};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

/// A directory whose insides are written to only through [`Dir`]'s methods.
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// Why a path was not written.
#[derive(Debug)]
pub enum Refusal {
    /// A component on the way is a symlink here, or not a directory: writing there would
    /// leave the tree (or replace what the user has).
    Escapes {
        through: PathBuf,
    },
    /// The name itself is not one sync-back writes (see [`plain_name`]).
    NotPlain(&'static str),
    /// The name of a conflict copy is taken.
    Exists,
    Io(std::io::Error),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Escapes { through } => write!(
                f,
                "{} is a symlink or not a directory here, and edict never writes through one",
                through.display()
            ),
            Refusal::Exists => write!(f, "the name is taken"),
            Refusal::NotPlain(why) => write!(f, "{why}"),
            Refusal::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<rustix::io::Errno> for Refusal {
    fn from(e: rustix::io::Errno) -> Self {
        Refusal::Io(e.into())
    }
}

impl Dir {
    /// Opens `path` itself (the user named it; a symlink to it is theirs to have made).
    pub fn open(path: &Path) -> std::io::Result<Dir> {
        let fd = rustix::fs::open(path, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory that holds `rel`, opened without following any symlink, and the last
    /// component's name. Missing directories are made (0755, under the umask) when `create`.
    fn parent<'a>(&self, rel: &'a Path, create: bool) -> Result<(OwnedFd, &'a OsStr), Refusal> {
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => parts.push(n),
                Component::CurDir => {}
                // Never produced by edict's own lists; refused rather than resolved.
                _ => {
                    return Err(Refusal::Escapes {
                        through: rel.to_path_buf(),
                    });
                }
            }
        }
        let Some((name, dirs)) = parts.split_last() else {
            return Err(Refusal::Escapes {
                through: rel.to_path_buf(),
            });
        };
        let mut fd = rustix::io::dup(&self.fd)?;
        let mut walked = PathBuf::new();
        for d in dirs {
            walked.push(d);
            let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            fd = match rustix::fs::openat(&fd, *d, flags, Mode::empty()) {
                Ok(next) => next,
                Err(rustix::io::Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&fd, *d, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    rustix::fs::openat(&fd, *d, flags, Mode::empty())
                        .map_err(|e| self.escape_or(e, &walked))?
                }
                Err(e) => return Err(self.escape_or(e, &walked)),
            };
        }
        Ok((fd, name))
    }

    /// `O_NOFOLLOW` on a symlink fails with ELOOP, `O_DIRECTORY` on a file with ENOTDIR.
    fn escape_or(&self, e: rustix::io::Errno, walked: &Path) -> Refusal {
        if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
            Refusal::Escapes {
                through: self.path.join(walked),
            }
        } else {
            e.into()
        }
    }

    /// Whether `rel`'s parents are real directories of this tree (the file itself may be
    /// anything, or absent).
    pub fn reachable(&self, rel: &Path) -> Result<(), Refusal> {
        match self.parent(rel, false) {
            Ok(_) => Ok(()),
            // A missing parent is no escape: the file is simply not there.
            Err(Refusal::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Moves `from`'s `rel_from` to `rel` here, replacing what is there (the entry itself,
    /// never what a symlink there points to).
    pub fn replace(&self, from: &Dir, rel_from: &Path, rel: &Path) -> Result<(), Refusal> {
        let (src_dir, src_name) = from.parent(rel_from, false)?;
        let (dst_dir, dst_name) = self.parent(rel, true)?;
        rustix::fs::renameat(&src_dir, src_name, &dst_dir, dst_name)?;
        Ok(())
    }

    /// Moves `from`'s `rel_from` to `rel` here only if nothing has that name.
    pub fn place_new(&self, from: &Dir, rel_from: &Path, rel: &Path) -> Result<(), Refusal> {
        let (src_dir, src_name) = from.parent(rel_from, false)?;
        let (dst_dir, dst_name) = self.parent(rel, true)?;
        match rustix::fs::linkat(&src_dir, src_name, &dst_dir, dst_name, AtFlags::empty()) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => return Err(Refusal::Exists),
            Err(e) => return Err(e.into()),
        }
        rustix::fs::unlinkat(&src_dir, src_name, AtFlags::empty())?;
        Ok(())
    }

    /// Removes the file or symlink `rel` (never a directory, never through a symlink).
    pub fn remove(&self, rel: &Path) -> Result<(), Refusal> {
        let (dir, name) = self.parent(rel, false)?;
        rustix::fs::unlinkat(&dir, name, AtFlags::empty())?;
        Ok(())
    }
}

/// Whether a name HOST reported is a plain path of a tree: relative, no empty, `.` or `..`
/// component (rsync's --relative would read `a/./b` as `b`), nothing in `.git` (a hook would
/// run here) and none of edict's own staging names, whatever HOST claims.
pub fn plain_name(name: &Path) -> Result<(), Refusal> {
    let bytes = name.as_os_str().as_encoded_bytes();
    let mut parts = bytes.split(|b| *b == b'/');
    if !parts
        .clone()
        .all(|c| !c.is_empty() && c != b"." && c != b"..")
    {
        return Err(Refusal::NotPlain("it is not a plain relative path"));
    }
    if parts.any(|c| c.eq_ignore_ascii_case(b".git") || c.starts_with(b".edict-sync-")) {
        return Err(Refusal::NotPlain(
            "edict never brings back .git or its own staging files",
        ));
    }
    Ok(())
}

/// Whether a symlink at `name` (a plain path of a tree) pointing to `target` leads to a
/// place inside the tree: relative, and never above the tree's root on the way.
pub fn stays_inside(name: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = name.components().count().saturating_sub(1);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            _ => return false,
        }
    }
    true
}

/// A scratch directory of edict's own here (control socket, index copy, staging), readable
/// by this user only, whatever the umask: `prefix` + random, in `parent` or `$TMPDIR`.
pub fn private_tempdir(prefix: &str, parent: Option<&Path>) -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut b = tempfile::Builder::new();
    b.prefix(prefix)
        .permissions(std::fs::Permissions::from_mode(0o700));
    match parent {
        Some(p) => b.tempdir_in(p),
        None => b.tempdir(),
    }
}

/// Where sync-back stages what comes from HOST: outside the tree, so that nothing of it
/// stays there if edict is killed (`$XDG_CACHE_HOME/edict/staging`, or `~/.cache/…`), when
/// that is on the same mount as the tree (files land there with a rename); otherwise in the
/// tree itself. Stagings left by killed runs in the cache are removed after a day.
pub fn staging_dir(root: &Path) -> std::io::Result<tempfile::TempDir> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .map(|c| c.join("edict/staging"));
    if let Some(cache) = cache {
        if std::fs::create_dir_all(&cache).is_ok() && same_mount(&cache, root) {
            remove_stale(&cache);
            if let Ok(d) = private_tempdir(".edict-sync-", Some(&cache)) {
                return Ok(d);
            }
        }
    }
    private_tempdir(".edict-sync-", Some(root))
}

/// Whether a rename from `a` into `b` works: the same mount (Linux: its mount id, as a bind
/// mount of one file system is another mount) and the same device.
fn same_mount(a: &Path, b: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        let id = |p: &Path| {
            rustix::fs::statx(
                rustix::fs::CWD,
                p,
                AtFlags::empty(),
                rustix::fs::StatxFlags::MNT_ID,
            )
            .ok()
            .filter(|s| s.stx_mask & rustix::fs::StatxFlags::MNT_ID.bits() != 0)
            .map(|s| s.stx_mnt_id)
        };
        if id(a).is_none() || id(a) != id(b) {
            return false;
        }
    }
    // And the same device: a btrfs subvolume shares its parent's mount but not its st_dev,
    // and a rename across it fails too.
    use std::os::unix::fs::MetadataExt as _;
    matches!(
        (std::fs::metadata(a), std::fs::metadata(b)),
        (Ok(x), Ok(y)) if x.dev() == y.dev()
    )
}

/// Removes stagings older than a day in `dir` (left by runs that were killed).
fn remove_stale(dir: &Path) {
    let day = std::time::Duration::from_secs(24 * 3600);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > day));
        if old && e.file_name().to_string_lossy().starts_with(".edict-sync-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, Dir, Dir) {
        let d = tempfile::tempdir().unwrap();
        for sub in ["tree/real", "outside", "staging/conf"] {
            std::fs::create_dir_all(d.path().join(sub)).unwrap();
        }
        std::fs::write(d.path().join("staging/conf/app.conf"), "from host").unwrap();
        let tree = Dir::open(&d.path().join("tree")).unwrap();
        let staging = Dir::open(&d.path().join("staging")).unwrap();
        (d, tree, staging)
    }

    #[test]
    fn a_symlinked_parent_is_never_written_through() {
        for target in ["../outside", "ABS"] {
            let (d, tree, staging) = setup();
            let outside = d.path().join("outside");
            let target = if target == "ABS" {
                outside.clone()
            } else {
                PathBuf::from(target)
            };
            symlink(&target, d.path().join("tree/conf")).unwrap();
            std::fs::write(outside.join("app.conf"), "mine").unwrap();
            let rel = Path::new("conf/app.conf");
            assert!(matches!(tree.reachable(rel), Err(Refusal::Escapes { .. })));
            let e = tree.replace(&staging, rel, rel).unwrap_err();
            assert!(matches!(e, Refusal::Escapes { ref through } if through.ends_with("conf")));
            assert!(e.to_string().contains("never writes through"));
            assert!(matches!(
                tree.place_new(&staging, rel, Path::new("conf/new")),
                Err(Refusal::Escapes { .. })
            ));
            assert!(matches!(tree.remove(rel), Err(Refusal::Escapes { .. })));
            assert_eq!(
                std::fs::read_to_string(outside.join("app.conf")).unwrap(),
                "mine"
            );
            assert!(!outside.join("new").exists());
        }
    }

    #[test]
    fn a_file_in_place_of_a_directory_is_refused() {
        let (d, tree, staging) = setup();
        std::fs::write(d.path().join("tree/conf"), "a file").unwrap();
        let rel = Path::new("conf/app.conf");
        assert!(matches!(
            tree.replace(&staging, rel, rel),
            Err(Refusal::Escapes { .. })
        ));
    }

    #[test]
    fn missing_directories_are_made_and_files_replaced() {
        let (d, tree, staging) = setup();
        let rel = Path::new("conf/app.conf");
        assert!(tree.reachable(rel).is_ok());
        tree.replace(&staging, rel, rel).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("tree/conf/app.conf")).unwrap(),
            "from host"
        );
        tree.remove(rel).unwrap();
        assert!(!d.path().join("tree/conf/app.conf").exists());
    }

    #[test]
    fn a_symlink_at_the_end_is_replaced_itself_not_its_target() {
        let (d, tree, staging) = setup();
        std::fs::create_dir_all(d.path().join("tree/conf")).unwrap();
        std::fs::write(d.path().join("outside/t"), "mine").unwrap();
        symlink("../../outside/t", d.path().join("tree/conf/app.conf")).unwrap();
        let rel = Path::new("conf/app.conf");
        tree.replace(&staging, rel, rel).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("outside/t")).unwrap(),
            "mine"
        );
        assert!(!d.path().join("tree/conf/app.conf").is_symlink());
    }

    #[test]
    fn place_new_never_replaces() {
        let (d, tree, staging) = setup();
        std::fs::write(d.path().join("tree/real/x"), "hand merge").unwrap();
        let rel = Path::new("conf/app.conf");
        assert!(matches!(
            tree.place_new(&staging, rel, Path::new("real/x")),
            Err(Refusal::Exists)
        ));
        assert_eq!(
            std::fs::read_to_string(d.path().join("tree/real/x")).unwrap(),
            "hand merge"
        );
        tree.place_new(&staging, rel, Path::new("real/y")).unwrap();
        assert!(!d.path().join("staging/conf/app.conf").exists());
    }

    #[test]
    fn plain_names_only() {
        for ok in ["a", "a/b.txt", "dir/.gitignore", "x.git", "n\u{ff}"] {
            assert!(plain_name(Path::new(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/x",
            "a//b",
            "a/./b",
            "./a",
            "a/..",
            "../a",
            ".git/hooks/pre-commit",
            "sub/.GIT/config",
            ".edict-sync-x/f",
            "a/",
        ] {
            assert!(plain_name(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn symlinks_that_stay_inside_the_tree() {
        let inside = |name: &str, target: &str| stays_inside(Path::new(name), Path::new(target));
        assert!(inside("a", "b"));
        assert!(inside("d/a", "../b"));
        assert!(inside("d/e/a", "../../b/c"));
        assert!(inside("d/a", "./x/../y"));
        assert!(!inside("a", "../b"));
        assert!(!inside("d/a", "../../b"));
        assert!(!inside("a", "/nix/store/x-y"));
        assert!(!inside("d/a", "x/../../../b"));
    }

    #[test]
    fn scratch_directories_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let parent = tempfile::tempdir().unwrap();
        let d = private_tempdir("x-", Some(parent.path())).unwrap();
        let mode = std::fs::metadata(d.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn dot_dot_and_absolute_names_are_refused() {
        let (_d, tree, staging) = setup();
        for bad in ["../outside/x", "/etc/passwd", "", "real/../../x"] {
            assert!(
                matches!(
                    tree.replace(&staging, Path::new("conf/app.conf"), Path::new(bad)),
                    Err(Refusal::Escapes { .. })
                ),
                "{bad}"
            );
        }
    }
}
