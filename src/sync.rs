//! Steps 3 and 7, with rsync: send each source to its mirror on HOST (exactly what nix would
//! see here), and afterwards bring back what the command changed there, never overwriting a
//! local edit made meanwhile.
//!
//! For a git work tree, "what nix sees" is the tracked files with their uncommitted changes,
//! plus `.git` so that `self.rev` and dirtiness match: untracked and ignored files (build
//! output, secrets) never leave this machine. rsync gets an exact filter list (NUL-separated,
//! wildcards escaped, so any file name works) and `--delete-excluded`, so the mirror holds
//! that set and nothing else; files deleted here disappear there.

use crate::contain::{self, Dir, Refusal};
use crate::exec::{self, Cmd, quote};
use crate::mapping::{Plan, SourceKind, Word};
use crate::problem::{Problem, place};
use crate::remote::{After, RemoteEnv};
use crate::ssh::{Connection, ssh_failure};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A file's identity as far as "did it change?" goes: what git's index compares, to the
/// nanosecond, so an edit in the same second is still seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
    ino: u64,
    mode: u32,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::symlink_metadata(path).ok()?;
    Some(Stamp {
        size: m.len(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
        ctime: m.ctime(),
        ctime_nsec: m.ctime_nsec(),
        ino: m.ino(),
        mode: m.mode(),
    })
}

/// What one source looked like when it was sent: relative path → stamp.
#[derive(Clone, Debug, Default)]
pub struct Upload {
    files: BTreeMap<PathBuf, Stamp>,
}

/// rsync's options shared by every transfer: recursive, links, permissions, times, and
/// times compared to the nanosecond (`--modify-window=-1`, rsync ≥ 3.1.3): by default rsync
/// compares whole seconds, and a same-size edit within the same second would be skipped,
/// leaving a mirror that is not what nix sees here. `--no-inc-recursive`: with incremental
/// recursion the sender sends each directory's list as the receiver asks for it, a round
/// trip per batch; one list up front took W2's sync (5000 files in 50 directories, 40 ms
/// round trips) from 0.93 s to 0.50 s, and a source tree's list is small enough to hold.
fn rsync(conn: &Connection, env: &RemoteEnv) -> Cmd {
    // Compressed where it wins (see `transfer`), by the algorithm both rsyncs choose.
    let compress = match crate::transfer::settings().compress {
        crate::transfer::When::Never => false,
        crate::transfer::When::Always => true,
        crate::transfer::When::Auto => {
            crate::transfer::rsyncs_negotiate(crate::rsync::here(), &env.rsync_version)
                && crate::transfer::compress(|| conn.round_trip())
        }
    };
    Cmd::new("rsync")
        .die_with_edict()
        .args(["-rlpt", "--modify-window=-1", "--no-inc-recursive", "-e"])
        .arg(conn.rsync_shell())
        .arg(format!(
            "--rsync-path={}",
            env.rsync.as_deref().unwrap_or("rsync")
        ))
        .args(compress.then_some("--compress"))
}

fn run_rsync(conn: &Connection, cmd: &Cmd, step: &str) -> Result<std::process::Output> {
    // A Ctrl-C during a question before it (the link's round trip) must stop it here.
    if crate::signals::any() {
        anyhow::bail!("{}: {step}: interrupted", conn.transport.label);
    }
    let out = if crate::progress::terminal() && !exec::quiet() {
        rsync_showing_progress(cmd, &format!("{}: {step}", conn.transport.label))?
    } else {
        cmd.output()?
    };
    run_rsync_checked(conn, cmd, step, out)
}

/// Runs `cmd` with a status line (see `progress`) from its `--info=progress2` lines; the
/// output as if it had run plainly (those lines left out).
fn rsync_showing_progress(cmd: &Cmd, what: &str) -> Result<std::process::Output> {
    use std::io::Read as _;
    let mut child = cmd.clone().arg("--info=progress2").spawn(|c| {
        c.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
    })?;
    let stderr = child.stderr.take().map(exec::drain);
    let status = crate::progress::Status::start(what);
    let mut stdout = Vec::new();
    if let Some(out) = child.stdout.take() {
        // Its progress comes as lines ended by \r; everything else (the stats) is kept.
        let mut line = Vec::new();
        for byte in std::io::BufReader::new(out).bytes().map_while(Result::ok) {
            if byte != b'\r' && byte != b'\n' {
                line.push(byte);
                continue;
            }
            match crate::progress::rsync_progress(&String::from_utf8_lossy(&line)) {
                Some((done, total, files)) => {
                    status.show_with(done, total, &format!("{files} files"));
                }
                None => {
                    stdout.extend_from_slice(&line);
                    stdout.push(b'\n');
                }
            }
            line.clear();
        }
        stdout.extend_from_slice(&line);
    }
    drop(status);
    let exit = child.wait()?;
    Ok(std::process::Output {
        status: exit,
        stdout,
        stderr: stderr.and_then(|t| t.join().ok()).unwrap_or_default(),
    })
}

/// rsync's exit as edict's error: host, step, what rsync said and a fix.
fn run_rsync_checked(
    conn: &Connection,
    cmd: &Cmd,
    step: &str,
    out: std::process::Output,
) -> Result<std::process::Output> {
    let host = &conn.transport.label;
    let code = out.status.code();
    // 24: a file vanished while rsync read the tree (an editor's temp file): not an error.
    if out.status.success() || code == Some(24) {
        return Ok(out);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if code == Some(255)
        || stderr.contains("connection unexpectedly closed") && stderr.contains("ssh")
    {
        return Err(ssh_failure(host, step, &stderr));
    }
    let said = exec::stderr_tail(&out);
    if crate::ssh::is_chatty(&stderr) {
        return Err(crate::ssh::chatty_shell(host, step)
            .said("rsync", said)
            .into());
    }
    let fix = if stderr.contains("No space left on device")
        || stderr.contains("Disk quota exceeded")
    {
        format!(
            "free space on {host} (`nix-collect-garbage -d` there, or `edict gc {host}` for edict's mirrors)"
        )
    } else if stderr.contains("command not found") || code == Some(127) {
        format!("install rsync on {host}")
    } else if stderr.contains("Permission denied") {
        "check the permissions of the files named above".to_string()
    } else {
        format!("run the rsync command with -v to see more: {}", cmd.line())
    };
    Err(
        Problem::new(host, step, format!("rsync failed ({})", out.status), fix)
            .said("rsync", said)
            .into(),
    )
}

/// A source as it is before the run: what would go (the stamps step 7 compares with), and a
/// fingerprint of it, for HOST to tell whether its mirror already holds exactly that.
#[derive(Clone, Debug)]
pub struct Survey {
    pub fingerprint: String,
    upload: Upload,
    /// A plain directory's subdirectories and their modes (with `upload`'s files, all that
    /// went into the fingerprint): to tell what changed here since (see [`restamp`]).
    dirs: BTreeMap<PathBuf, u32>,
}

/// [`Survey`]s of the plan's sources, by index; `None` where a source must go through
/// rsync anyway: one whose sending has something to say (a file git does not track that
/// the command needs), or whose lock is rewritten for an older nix there.
pub fn survey(plan: &Plan) -> Vec<Option<Survey>> {
    (0..plan.sources.len())
        .map(|i| survey_one(plan, i))
        .collect()
}

fn survey_one(plan: &Plan, i: usize) -> Option<Survey> {
    use sha2::Digest as _;
    let src = &plan.sources[i];
    if plan.relative_locks.iter().any(|(s, _)| *s == i) {
        return None;
    }
    let mut h = sha2::Sha256::new();
    h.update(b"edict-source-1\0");
    let mut upload = Upload::default();
    let mut dirs = BTreeMap::new();
    match src.kind {
        SourceKind::Git => {
            let tracked = sent_files(plan, i).ok()?;
            if untracked_flake_nix(plan, i, &tracked).is_some()
                || untracked_named_file(plan, i, &tracked).is_some()
            {
                return None;
            }
            // The mirror is the tracked files and `.git`, whatever the rules that make it
            // (untracked entries are left out either way): a new `result` link, build
            // output or an empty directory here changes nothing there.
            let with_git_dir = src.root.join(".git").is_dir();
            h.update(b"git\0");
            h.update([u8::from(with_git_dir), u8::from(tracked.nested)]);
            for f in &tracked.files {
                let s = stamp(&src.root.join(f));
                fingerprint_entry(&mut h, &src.root.join(f), f, s.as_ref());
                if let Some(s) = s {
                    upload.files.insert(f.clone(), s);
                }
            }
            if with_git_dir {
                fingerprint_tree(&mut h, &src.root.join(".git"), Path::new(".git"), None);
            }
        }
        SourceKind::Dir => {
            h.update(b"dir\0");
            let seen = Seen {
                files: &mut upload.files,
                dirs: &mut dirs,
            };
            fingerprint_tree(&mut h, &src.root, Path::new(""), Some(seen));
        }
        SourceKind::File => {
            h.update(b"file\0");
            let s = stamp(&src.root)?;
            fingerprint_entry(&mut h, &src.root, Path::new(""), Some(&s));
        }
    }
    Some(Survey {
        fingerprint: h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        upload,
        dirs,
    })
}

/// Where [`fingerprint_tree`] records what it stamped.
struct Seen<'a> {
    files: &'a mut BTreeMap<PathBuf, Stamp>,
    dirs: &'a mut BTreeMap<PathBuf, u32>,
}

/// One entry into a source's fingerprint: its path and every stamp field (absent: `-`); a
/// symlink by its target alone, which is all that rsync and nix read of it (a `result`
/// link made again to the same path changes nothing).
fn fingerprint_entry(h: &mut sha2::Sha256, path: &Path, rel: &Path, s: Option<&Stamp>) {
    use sha2::Digest as _;
    h.update(rel.as_os_str().as_bytes());
    h.update(b"\0");
    match s {
        Some(s) if s.mode & 0o170000 == 0o120000 => {
            h.update(b"l ");
            h.update(
                std::fs::read_link(path)
                    .unwrap_or_default()
                    .as_os_str()
                    .as_bytes(),
            );
            h.update(b"\n");
        }
        Some(s) => h.update(
            format!(
                "{} {} {}.{} {}.{} {}\n",
                s.mode, s.size, s.mtime, s.mtime_nsec, s.ctime, s.ctime_nsec, s.ino
            )
            .as_bytes(),
        ),
        None => h.update(b"-\n"),
    }
}

/// Every entry under `dir` (not following links), in name order: a directory by its path
/// and mode (its times move with what is in it, which is in the fingerprint anyway), the
/// rest by their stamps; both recorded in `seen` too when given (files as [`walk`] stamps
/// them). Leaves out edict's own staging, as the upload does.
fn fingerprint_tree(h: &mut sha2::Sha256, dir: &Path, prefix: &Path, mut seen: Option<Seen>) {
    use sha2::Digest as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        h.update(b"unreadable\0");
        return;
    };
    let mut names: Vec<std::ffi::OsString> = entries.flatten().map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        if prefix.as_os_str().is_empty() && name.as_bytes().starts_with(b".edict-sync-") {
            continue;
        }
        let path = dir.join(&name);
        let rel = prefix.join(&name);
        let s = stamp(&path);
        match &s {
            Some(s) if s.mode & 0o170000 == 0o040000 => {
                h.update(rel.as_os_str().as_bytes());
                h.update(format!("\0d {}\n", s.mode).as_bytes());
                let inner = seen.as_mut().map(|v| {
                    v.dirs.insert(rel.clone(), s.mode);
                    Seen {
                        files: &mut *v.files,
                        dirs: &mut *v.dirs,
                    }
                });
                fingerprint_tree(h, &path, &rel, inner);
            }
            _ => {
                fingerprint_entry(h, &path, &rel, s.as_ref());
                if let (Some(v), Some(s)) = (seen.as_mut(), s) {
                    v.files.insert(rel, s);
                }
            }
        }
    }
}

/// After the results came back: a plain directory that got result links (`links`) and
/// nothing else since its survey gets the same links in its mirror, and a stamp that says
/// so (see `scripts/restamp.sh`). nix reads such a directory whole, links included, so
/// without this the next run would send them; one round trip now saves rsync's then.
pub fn restamp(
    session: &mut crate::remote::Session,
    conn: &Connection,
    env: &RemoteEnv,
    plan: &Plan,
    surveys: &[Option<Survey>],
    links: &[crate::results::Link],
) -> Result<()> {
    for (i, src) in plan.sources.iter().enumerate() {
        let Some(Some(before)) = surveys.get(i) else {
            continue;
        };
        if src.kind != SourceKind::Dir {
            continue;
        }
        // The links made here, as they are now (one a later step replaced is left out).
        let made: Vec<(PathBuf, String)> = links
            .iter()
            .filter(|l| {
                std::fs::read_link(&l.local)
                    .is_ok_and(|t| t.as_os_str().as_bytes() == l.target.as_bytes())
            })
            .filter_map(|l| {
                Some((
                    l.local.strip_prefix(&src.root).ok()?.to_path_buf(),
                    l.target.clone(),
                ))
            })
            .collect();
        if made.is_empty() {
            continue;
        }
        // The same links as before (a rebuild of the same path): the mirror has them.
        let Some(now) = survey_one(plan, i).filter(|s| s.fingerprint != before.fingerprint) else {
            continue;
        };
        let is_link = |p: &PathBuf| made.iter().any(|(m, _)| m == p);
        let others = |files: &BTreeMap<PathBuf, Stamp>| -> Vec<(PathBuf, Stamp)> {
            files
                .iter()
                .filter(|(p, _)| !is_link(p))
                .map(|(p, s)| (p.clone(), s.clone()))
                .collect()
        };
        if now.dirs != before.dirs || others(&now.upload.files) != others(&before.upload.files) {
            exec::debug(format_args!(
                "{}: changed here during the run; the next run sends it",
                src.root.display()
            ));
            continue;
        }
        let names: Vec<(String, String)> = made
            .iter()
            .map(|(p, t)| (p.to_string_lossy().into_owned(), t.clone()))
            .collect();
        let words = crate::remote::restamp_words(
            env,
            plan,
            i,
            (&before.fingerprint, &now.fingerprint),
            &names,
        );
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        session.ask(conn, "syncing back", crate::scripts::RESTAMP, &words)?;
        exec::debug(format_args!(
            "{}: its result links went to {}'s mirror too",
            src.root.display(),
            conn.transport.label
        ));
    }
    Ok(())
}

/// Step 3: sends every source to its mirror; returns what was sent, for step 7. A mirror
/// that HOST found still as sent from a source that has not changed since (see `survey`)
/// is sent nothing.
pub fn upload(
    conn: &Connection,
    env: &RemoteEnv,
    plan: &Plan,
    surveys: &[Option<Survey>],
) -> Result<Vec<Upload>> {
    let mut uploads = Vec::new();
    for (i, src) in plan.sources.iter().enumerate() {
        if let Some(Some(survey)) = surveys.get(i).filter(|_| env.unchanged.contains(&src.name)) {
            exec::debug(format_args!(
                "{}: unchanged since it was sent to {}; nothing to send",
                src.root.display(),
                conn.transport.label
            ));
            uploads.push(survey.upload.clone());
            continue;
        }
        let dest = format!(
            "{}:{}/",
            conn.transport.dest.target(),
            plan.mirror(i, &env.dirs)
        );
        let step = &format!("syncing {}", src.root.display());
        let host = &conn.transport.label;
        let mut upload = Upload::default();
        let tmp = tempfile::NamedTempFile::new()?;
        // Lives until rsync has run.
        let mut index = None;
        let mut race = None;
        let cmd = match src.kind {
            SourceKind::Git => {
                let tracked = sent_files(plan, i).map_err(|e| place(e, host, step))?;
                if let Some(f) = untracked_flake_nix(plan, i, &tracked) {
                    return Err(Problem::new(
                        host,
                        step,
                        format!("{f} is not tracked by git, and nix (here as on {host}) reads only the files git tracks"),
                        format!(
                            "git -C {} add {}",
                            quote(&src.root.display().to_string()),
                            quote(&f)
                        ),
                    )
                    .into());
                }
                if let Some(f) = untracked_named_file(plan, i, &tracked) {
                    return Err(Problem::new(
                        host,
                        step,
                        format!("{f} is not tracked by git, and edict sends only the files git tracks from a work tree (never your untracked ones), so {host} would not have it"),
                        format!(
                            "git -C {} add {} (or `git add -N` to send it without staging its content)",
                            quote(&src.root.display().to_string()),
                            quote(&f)
                        ),
                    )
                    .into());
                }
                let dot_git = src.root.join(".git");
                let with_git_dir = dot_git.is_dir();
                if !with_git_dir {
                    exec::info(format_args!(
                        "{} is a linked git worktree or submodule: its .git is not sent, so nix on {host} sees the tracked files as a plain directory (no self.rev)",
                        src.root.display()
                    ));
                }
                for f in &tracked.files {
                    if let Some(s) = stamp(&src.root.join(f)) {
                        upload.files.insert(f.clone(), s);
                    }
                }
                let untracked = untracked(&src.root).map_err(|e| place(e, host, step))?;
                let rules = git_rules(&tracked, &untracked, with_git_dir);
                exec::debug(format_args!(
                    "{host}: {}: {} tracked files, {} rules ({})",
                    src.root.display(),
                    tracked.files.len(),
                    rules.count(),
                    if rules.exclude {
                        "the untracked ones excluded"
                    } else {
                        "the tracked ones included"
                    }
                ));
                tmp.as_file().write_all(&rules.list)?;
                // The index goes as .git/edict-index, and HOST keeps its own .git/index (see
                // `adopt_index_script`): one with HOST's file stats, so git and nix there need
                // not re-read every file to know the tree is clean.
                if with_git_dir {
                    index = IndexCopy::new(&dot_git.join("index")).map_err(|e| {
                        Problem::new(
                            host,
                            step,
                            format!("copying the git index to send it: {e:#}"),
                            "check that .git/index is readable and that the temporary directory ($TMPDIR or /tmp) has space",
                        )
                    })?;
                }
                let cmd = git_rsync(
                    conn,
                    env,
                    &rules,
                    tmp.path(),
                    &src.root,
                    index.as_ref(),
                    &dest,
                );
                if rules.exclude {
                    race = Some((tracked, untracked, with_git_dir));
                }
                cmd
            }
            SourceKind::Dir => {
                walk(&src.root, Path::new(""), &mut upload.files);
                rsync(conn, env)
                    .args(["--delete", "--exclude=/.edict-sync-*", "--stats"])
                    .arg(format!("{}/", src.root.display()))
                    .arg(&dest)
            }
            SourceKind::File => rsync(conn, env)
                .arg("--stats")
                .arg(&src.root)
                .arg(format!("{dest}{}", src.file_name())),
        };
        let out = run_rsync(conn, &cmd, step)?;
        // The exclude list was taken before rsync read the tree: a file made in between
        // (an editor's backup, a build's output) was not on it and went. If the tree has new
        // untracked entries now, sync again with the exact include list, which removes them
        // from the mirror; what was sent is said.
        if let Some((tracked, before, with_git_dir)) = race {
            let now = untracked(&src.root).map_err(|e| place(e, host, step))?;
            // Also one that came and went meanwhile (an editor's swap file): rsync names
            // what it sent, and a name git does not track means the tree moved under it.
            let mut new: Vec<&Vec<u8>> = now.iter().filter(|u| !before.contains(u)).collect();
            let strays = sent_untracked(&out.stdout, &tracked);
            new.extend(strays.iter());
            if !new.is_empty() {
                exec::info(format_args!(
                    "{}: {} untracked entr{} appeared while syncing ({}…): syncing again with the list of tracked files, which removes {} from {host}",
                    src.root.display(),
                    new.len(),
                    if new.len() == 1 { "y" } else { "ies" },
                    exec::printable(&String::from_utf8_lossy(new[0])),
                    if new.len() == 1 { "it" } else { "them" }
                ));
                let rules = git_rules_included(&tracked, with_git_dir);
                let list = tempfile::NamedTempFile::new()?;
                list.as_file().write_all(&rules.list)?;
                let again = git_rsync(
                    conn,
                    env,
                    &rules,
                    list.path(),
                    &src.root,
                    index.as_ref(),
                    &dest,
                );
                run_rsync(conn, &again, step)?;
            }
        }
        drop(index);
        exec::debug(format_args!(
            "{host}: {step}: {}",
            stats_summary(&String::from_utf8_lossy(&out.stdout))
        ));
        // A lock that HOST's older nix cannot read goes there without its new-style nodes.
        if !env.reads_relative_locks() {
            for (_, lock) in plan.relative_locks.iter().filter(|(s, _)| *s == i) {
                let Some(text) = std::fs::read_to_string(src.root.join(lock))
                    .ok()
                    .and_then(|t| crate::mapping::lock_for_old_nix(&t))
                else {
                    continue;
                };
                exec::info(format_args!(
                    "{} locks a relative path: input the way Nix 2.26 and later do, which {} on {host} cannot read: {host} gets it without those inputs and locks them itself{}",
                    src.root.join(lock).display(),
                    env.nix_version,
                    if plan.writes_lock {
                        ""
                    } else {
                        "; your flake.lock stays as it is"
                    }
                ));
                let copy = tempfile::NamedTempFile::new()?;
                std::fs::write(copy.path(), text)?;
                let send = rsync(conn, env)
                    .arg(copy.path())
                    .arg(format!("{dest}{lock}"));
                run_rsync(conn, &send, step)?;
            }
        }
        uploads.push(upload);
    }
    Ok(uploads)
}

/// What rsync says it sent (`--out-format`, see [`git_rsync`]) outside `.git` that git does
/// not track: names as rsync printed them (it escapes odd bytes, which then count too).
fn sent_untracked(stdout: &[u8], tracked: &Tracked) -> Vec<Vec<u8>> {
    let tracked: BTreeSet<&[u8]> = tracked
        .files
        .iter()
        .map(|f| f.as_os_str().as_bytes())
        .collect();
    stdout
        .split(|b| *b == b'\n')
        .filter_map(|l| l.strip_prefix(SENT))
        .filter(|n| !n.ends_with(b"/") && !n.starts_with(b".git/") && *n != b".git")
        .filter(|n| !tracked.contains(n))
        .map(<[u8]>::to_vec)
        .collect()
}

/// The prefix of rsync's line for each file it sends (`--out-format`).
const SENT: &[u8] = b"EDICT-SENT ";

/// The rsync of a git source: `rules` (from `list`), the index copy beside, `--delete`.
fn git_rsync(
    conn: &Connection,
    env: &RemoteEnv,
    rules: &Rules,
    list: &Path,
    root: &Path,
    index: Option<&IndexCopy>,
    dest: &str,
) -> Cmd {
    let mut cmd = rsync(conn, env).args(["--delete", "--delete-excluded", "--from0"]);
    if index.is_some() {
        cmd = cmd.args(["--filter=-s /.git/index", "--filter=P /.git/index"]);
    }
    cmd = if rules.exclude {
        // The exclude list is as old as the tree it was taken from: rsync names what it
        // sends, for `upload` to see an untracked file that went anyway.
        cmd.arg(format!("--exclude-from={}", list.display()))
            .arg(format!("--out-format={}%n", String::from_utf8_lossy(SENT)))
    } else {
        cmd.arg(format!("--include-from={}", list.display()))
            .arg("--exclude=*")
    };
    cmd = cmd.arg("--stats").arg(format!("{}/", root.display()));
    if let Some(index) = index {
        cmd = cmd.arg(format!("{}/", index.dir.path().display()));
    }
    cmd.arg(dest)
}

/// rsync's `--stats` as one line: files sent and bytes on the wire.
pub fn stats_summary(stats: &str) -> String {
    let field = |name: &str| {
        stats.lines().find_map(|l| l.strip_prefix(name)).map(|v| {
            v.split_whitespace()
                .next()
                .unwrap_or("0")
                .chars()
                .filter(char::is_ascii_digit)
                .collect::<String>()
        })
    };
    format!(
        "{} files transferred, {} bytes sent, {} bytes received",
        field("Number of regular files transferred: ").unwrap_or_default(),
        field("Total bytes sent: ").unwrap_or_default(),
        field("Total bytes received: ").unwrap_or_default()
    )
}

/// What git tracks in a work tree: the files that exist (a file deleted but not yet
/// `git rm`ed is not sent) and the submodules, which nix leaves out unless asked.
#[derive(Clone, Debug, Default)]
pub struct Tracked {
    /// Relative paths, byte for byte as git lists them (a name need not be UTF-8).
    pub files: Vec<PathBuf>,
    pub submodules: Vec<PathBuf>,
    /// `files` holds the submodules' tracked files too (see [`with_submodules`]).
    pub nested: bool,
}

/// What goes of git source `src`: its tracked files, and its submodules' when a ref asks.
pub fn sent_files(plan: &Plan, src: usize) -> Result<Tracked> {
    let root = &plan.sources[src].root;
    let mut tracked = tracked_files(root)?;
    if wants_submodules(plan, src) {
        with_submodules(root, &mut tracked)?;
    }
    Ok(tracked)
}

/// Whether a ref to source `src` asks nix for the submodules (`?submodules=1`).
fn wants_submodules(plan: &Plan, src: usize) -> bool {
    plan.words.iter().any(
        |w| matches!(w, Word::Ref { local, src: s, .. } if *s == src && local.wants_submodules()),
    )
}

/// Adds the tracked files of every checked-out submodule, at any depth, and each one's
/// `.git` file (it points into the superproject's `.git/modules`, which is sent): what nix
/// reads with `?submodules=1`. A submodule that is not checked out stays out, as for nix.
fn with_submodules(root: &Path, tracked: &mut Tracked) -> Result<()> {
    for sub in std::mem::take(&mut tracked.submodules) {
        let dir = root.join(&sub);
        if !dir.join(".git").exists() {
            continue;
        }
        let mut inner = tracked_files(&dir)?;
        with_submodules(&dir, &mut inner)?;
        tracked
            .files
            .extend(inner.files.iter().map(|f| sub.join(f)));
        if dir.join(".git").is_file() {
            tracked.files.push(sub.join(".git"));
        }
    }
    tracked.files.sort();
    tracked.nested = true;
    Ok(())
}

fn tracked_files(root: &Path) -> Result<Tracked> {
    let out = git_ls_files(root, &["-s"])?;
    let mut files = BTreeSet::new();
    let mut submodules = Vec::new();
    for entry in out.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let Some(tab) = entry.iter().position(|b| *b == b'\t') else {
            continue;
        };
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&entry[tab + 1..]));
        if entry.starts_with(b"160000") {
            submodules.push(path); // a gitlink
        } else if std::fs::symlink_metadata(root.join(&path)).is_ok() {
            files.insert(path);
        }
    }
    Ok(Tracked {
        files: files.into_iter().collect(),
        submodules,
        nested: false,
    })
}

/// The first `flake.nix` of a flake in source `src` that exists but that git does not track.
/// Nix would refuse it here too; on HOST, where it is not sent, nix's error would name the
/// mirror and miss the fix.
/// The same for an expression file the command names in that source (`nix-build FILE`,
/// `-f FILE`, nix-shell's `shell.nix`): nix here would read it, but edict sends a work
/// tree's tracked files only.
fn untracked_named_file(plan: &Plan, src: usize, tracked: &Tracked) -> Option<String> {
    let root = &plan.sources[src].root;
    plan.words
        .iter()
        .filter_map(|w| match w {
            crate::mapping::Word::Path { src: s, rel, .. } if *s == src => Some(rel),
            _ => None,
        })
        .filter_map(|rel| git_relative(rel))
        .find(|f| root.join(f).is_file() && tracked.files.binary_search(&PathBuf::from(f)).is_err())
}

/// `rel` (a path inside a work tree) as git names it: `a/b/c`, whatever `./` or `//` it was
/// written with; `None` for `..` or an absolute path, which is not inside the work tree.
fn git_relative(rel: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            std::path::Component::Normal(n) => parts.push(n.to_str()?),
            std::path::Component::CurDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

fn untracked_flake_nix(plan: &Plan, src: usize, tracked: &Tracked) -> Option<String> {
    let root = &plan.sources[src].root;
    plan.flakes
        .iter()
        .filter(|(s, _)| *s == src)
        .filter_map(|(_, dir)| {
            // As git names it: `a/b/flake.nix`, whatever `./` or `//` the ref was written with.
            let mut parts = Vec::new();
            for c in Path::new(dir).components() {
                match c {
                    std::path::Component::Normal(n) => parts.push(n.to_str()?),
                    std::path::Component::CurDir => {}
                    _ => return None, // `..` or absolute: not a path inside the work tree
                }
            }
            parts.push("flake.nix");
            Some(parts.join("/"))
        })
        .find(|f| root.join(f).is_file() && tracked.files.binary_search(&PathBuf::from(f)).is_err())
}

/// Everything in the work tree git does not track, ignored or not, a wholly untracked
/// directory as one `dir/` entry. Raw bytes: a name that is not UTF-8 must still match.
fn untracked(root: &Path) -> Result<Vec<Vec<u8>>> {
    let out = git_ls_files(root, &["--others", "--directory"])?;
    Ok(out
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// A staging directory for what comes back could not be made in `place`.
fn staging_problem(host: &str, step: &str, e: &std::io::Error, place: &str) -> Problem {
    Problem::new(
        host,
        step,
        format!("creating a staging directory: {e}"),
        format!("check that you can write to {place}"),
    )
}

fn git_ls_files(root: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let dir = root.display().to_string();
    let Ok(out) = Cmd::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z"])
        .args(args.iter().copied())
        .output()
    else {
        return Err(Problem::new(
            "",
            "",
            format!("{dir} is a git work tree, and edict lists its files with git, as nix does, but git is not installed here"),
            "install git on this machine",
        )
        .into());
    };
    if !out.status.success() {
        let said = exec::stderr_tail(&out);
        // Git refuses a repository another user owns (since 2.35.2); nix here would too.
        let fix = if said.contains("dubious ownership") {
            format!(
                "if you trust it: git config --global --add safe.directory {}",
                quote(&dir)
            )
        } else {
            format!("run `git -C {} status` to see what git says", quote(&dir))
        };
        return Err(
            Problem::new("", "", format!("git ls-files failed in {dir}"), fix)
                .said("git", said)
                .into(),
        );
    }
    Ok(out.stdout)
}

/// rsync filter rules that send exactly the tracked files (plus `.git`), NUL-separated.
struct Rules {
    list: Vec<u8>,
    /// `list` excludes what is not tracked (everything else goes); otherwise it includes
    /// what is tracked and the caller adds `--exclude=*`.
    exclude: bool,
}

impl Rules {
    fn count(&self) -> usize {
        self.list.iter().filter(|b| **b == 0).count()
    }
}

/// rsync tries every rule on every file, so a list as long as the tree costs time that
/// grows with its square (19 s for 40 000 files). Whichever list is shorter is used: usually
/// the untracked entries (`result`, `target/`), else the tracked files and their parents.
fn git_rules(tracked: &Tracked, untracked: &[Vec<u8>], with_git_dir: bool) -> Rules {
    rules_for(tracked, untracked, with_git_dir, false)
}

/// The include list alone: exact whatever appears in the tree meanwhile.
fn git_rules_included(tracked: &Tracked, with_git_dir: bool) -> Rules {
    rules_for(tracked, &[], with_git_dir, true)
}

fn rules_for(
    tracked: &Tracked,
    untracked: &[Vec<u8>],
    with_git_dir: bool,
    force_include: bool,
) -> Rules {
    // Every directory above a tracked file, as bytes (`a`, `a/b` for `a/b/c`).
    let mut dirs = BTreeSet::new();
    for f in &tracked.files {
        let f = f.as_os_str().as_bytes();
        for (i, _) in f.iter().enumerate().filter(|(_, b)| **b == b'/') {
            dirs.insert(&f[..i]);
        }
    }
    let excludes = untracked.len() + tracked.submodules.len() + usize::from(!with_git_dir);
    let includes = dirs.len() + tracked.files.len() + usize::from(with_git_dir);
    let mut list = Vec::new();
    let mut rule = |r: &[u8]| {
        list.push(b'/');
        list.extend_from_slice(&escape_pattern(r));
        list.push(0);
    };
    // Untracked files inside submodules are not in `untracked`: only an include list is exact.
    if excludes <= includes && !tracked.nested && !force_include {
        for u in untracked {
            rule(u);
        }
        for s in &tracked.submodules {
            rule(&[s.as_os_str().as_bytes(), b"/"].concat());
        }
        if !with_git_dir {
            rule(b".git");
        }
        return Rules {
            list,
            exclude: true,
        };
    }
    for d in dirs {
        rule(&[d, b"/"].concat());
    }
    for f in &tracked.files {
        rule(f.as_os_str().as_bytes());
    }
    if with_git_dir {
        list.extend_from_slice(b"/.git/***\0");
    }
    Rules {
        list,
        exclude: false,
    }
}

/// A copy of the local `.git/index` as `<dir>/.git/edict-index`, with its mtime, so that an
/// unchanged index is not sent again: rsync's second source, merged into the mirror.
struct IndexCopy {
    dir: tempfile::TempDir,
}

impl IndexCopy {
    fn new(index: &Path) -> Result<Option<Self>> {
        let Ok(meta) = std::fs::metadata(index) else {
            return Ok(None); // a new repository with nothing added yet
        };
        let dir = crate::contain::private_tempdir("edict-index-", None)?;
        std::fs::create_dir(dir.path().join(".git"))?;
        let copy = dir.path().join(".git/edict-index");
        std::fs::copy(index, &copy).with_context(|| format!("copying {}", index.display()))?;
        std::fs::File::options()
            .write(true)
            .open(&copy)?
            .set_modified(meta.modified()?)?;
        Ok(Some(Self { dir }))
    }
}

/// rsync treats `*?[` as wildcards, and then `\` as their escape; a name without them is
/// matched literally, backslashes included.
fn escape_pattern(name: &[u8]) -> Vec<u8> {
    if !name.iter().any(|b| b"*?[".contains(b)) {
        return name.to_vec();
    }
    name.iter().fold(Vec::new(), |mut s, &c| {
        if b"*?[\\".contains(&c) {
            s.push(b'\\');
        }
        s.push(c);
        s
    })
}

/// Stamps every file and symlink under `dir` (not following links), keyed by the path
/// below `prefix`, byte for byte.
fn walk(dir: &Path, prefix: &Path, out: &mut BTreeMap<PathBuf, Stamp>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if prefix.as_os_str().is_empty() && name.as_bytes().starts_with(b".edict-sync-") {
            continue;
        }
        let rel = prefix.join(&name);
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&e.path(), &rel, out),
            Ok(_) => {
                if let Some(s) = stamp(&e.path()) {
                    out.insert(rel, s);
                }
            }
            Err(_) => {}
        }
    }
}

/// What step 7 did for one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Brought back from HOST (new or changed there, unchanged here).
    Taken(PathBuf),
    /// Deleted here because the command deleted it there.
    Deleted(PathBuf),
    /// Changed in both places: the local file stays, HOST's version is at `remote_copy`
    /// (None when HOST deleted it).
    Conflict {
        path: PathBuf,
        remote_copy: Option<PathBuf>,
    },
    /// Changed on HOST but not brought back, and why: a symlink here on its way (see
    /// `contain`), over `--max-sync-size`, or it could not be copied or placed. HOST's
    /// version stays in the mirror there; counted as a conflict.
    Refused { path: PathBuf, why: String },
    /// The command changed `.git` on HOST (a commit): not brought back.
    GitState,
}

/// What to do with one file, from three facts: its stamp when sent, its stamp here now,
/// and whether the command changed it there (`None`: it deleted it).
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Take,
    Delete,
    Conflict,
    Skip,
}

fn decide(sent: Option<&Stamp>, now: Option<&Stamp>, there: Option<bool>) -> Decision {
    let unchanged_here = sent == now; // both None: absent then and now
    match there {
        Some(false) => Decision::Skip, // HOST didn't touch it: whatever is here stands
        Some(true) if unchanged_here => Decision::Take,
        Some(true) => Decision::Conflict,
        // Deleted there. Only files that were sent and are untouched here follow; a file
        // HOST never had (untracked, ignored build output) is not HOST's business.
        None => match (sent, unchanged_here) {
            (Some(_), true) => Decision::Delete,
            (Some(_), false) => Decision::Conflict,
            (None, _) => Decision::Skip,
        },
    }
}

/// What the user allows sync-back to bring.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// `--max-sync-size`: no file larger comes back.
    pub max_size: u64,
    /// `--no-link`: no results here, so no symlink into the store comes back either.
    pub no_link: bool,
}

/// Step 7: for every source marked for sync-back, brings back what the command changed on
/// HOST (`after` says what), each file within `bounds`, none after a signal.
/// Returns what it did, conflicts and refusals included; the caller reports them and exits
/// non-zero. One file that cannot come back never stops the others.
pub fn back(
    conn: &Connection,
    env: &RemoteEnv,
    plan: &Plan,
    uploads: &[Upload],
    after: &After,
    bounds: Bounds,
    signals: &crate::signals::Signals,
) -> Result<Vec<Change>> {
    let Bounds { max_size, no_link } = bounds;
    let host = &conn.transport.label;
    let mut changes = Vec::new();
    let mut seen = BTreeSet::new();
    // The local nix's version, asked only if a flake.lock comes back.
    let local_nix = std::cell::OnceCell::new();
    for tree in &after.trees {
        // HOST's listing names the source: only one marked for sync-back, once, is taken
        // (never a lock input's directory, a --no-sync tree or another host's).
        let Some(src) = plan
            .sources
            .get(tree.src)
            .filter(|s| s.sync_back && s.kind != SourceKind::File)
        else {
            continue;
        };
        if !seen.insert(tree.src) {
            continue;
        }
        let sent = &uploads[tree.src].files;
        let step = format!("bringing back changes to {}", src.root.display());
        let here = Dir::open(&src.root).map_err(|e| {
            Problem::new(
                host,
                &step,
                format!("opening {}: {e:#}", src.root.display()),
                "check that the directory is still there and readable; the changes stay on the host until the next run",
            )
        })?;
        let refuse = |name: &Path, why: String| Change::Refused {
            path: src.root.join(name),
            why,
        };
        let mut take = Vec::new();
        let mut conflicts = Vec::new();
        let mut deletes = Vec::new();
        let deleted = tree.deleted.iter();
        let touched = tree
            .changed
            .iter()
            .map(|f| (f, Some(true)))
            .chain(deleted.map(|f| (f, None)));
        // HOST's older nix rewrites a lock edict adapted for it (see `upload`): only
        // `nix flake lock/update` brings that back; a build leaves the local lock as it is.
        let adapted: Vec<&str> = if env.reads_relative_locks() || plan.writes_lock {
            Vec::new()
        } else {
            plan.relative_locks
                .iter()
                .filter(|(s, _)| *s == tree.src)
                .map(|(_, l)| l.as_str())
                .collect()
        };
        for (name, there) in touched {
            if adapted.iter().any(|l| Path::new(l) == name.as_path()) {
                continue;
            }
            // The listing comes from HOST: a name must be a plain path of the tree, outside
            // `.git`, and reached here without a symlink; else it is neither read nor written.
            if let Err(why) = contain::plain_name(name).and_then(|()| here.reachable(name)) {
                changes.push(refuse(name, why.to_string()));
                continue;
            }
            match decide(sent.get(name), stamp(&src.root.join(name)).as_ref(), there) {
                Decision::Take => take.push(name.clone()),
                Decision::Conflict if there.is_some() => conflicts.push(name.clone()),
                Decision::Conflict => changes.push(Change::Conflict {
                    path: src.root.join(name),
                    remote_copy: None,
                }),
                Decision::Delete => deletes.push(name.clone()),
                Decision::Skip => {}
            }
        }
        if tree.git_changed {
            changes.push(Change::GitState);
        }
        // What git has recorded, for telling a revert there from an edit (read once).
        let git = match src.kind {
            SourceKind::Git if !take.is_empty() || !deletes.is_empty() => {
                Some(Recorded::read(&src.root))
            }
            _ => None,
        };
        if !take.is_empty() || !conflicts.is_empty() {
            let staging = contain::staging_dir(&src.root).map_err(|e| {
                staging_problem(
                    host,
                    &step,
                    &e,
                    &format!("{} (or ~/.cache/edict)", src.root.display()),
                )
            })?;
            let staged = Dir::open(staging.path()).map_err(|e| {
                Problem::new(
                    host,
                    &step,
                    format!("opening the staging directory: {e:#}"),
                    format!("check that you can write to {}", src.root.display()),
                )
            })?;
            let names: Vec<PathBuf> = take.iter().chain(&conflicts).cloned().collect();
            let mirror = plan.mirror(tree.src, &env.dirs);
            let mut pulled = pull(conn, env, &mirror, &names, staging.path(), max_size, &step)?;
            pulled.copy_store_links(conn, env, &names, &src.root, no_link, &step);
            // Stopped (Ctrl-C, SIGTERM) while HOST's files were on their way: place none of
            // them; the staging directory goes with this error.
            if signals.caught() {
                return Err(crate::signals::Interrupted {
                    host: host.clone(),
                    step: "syncing back",
                }
                .into());
            }
            let mut new_locks = Vec::new();
            for name in take {
                let dest = src.root.join(&name);
                if let Err(why) = pulled.check(&name, host, max_size) {
                    changes.push(refuse(&name, why));
                // Re-check: the file may have been edited here while it was on its way.
                } else if stamp(&dest).as_ref() != sent.get(&name) {
                    conflicts.push(name);
                } else if name.file_name() == Some(std::ffi::OsStr::new("flake.lock"))
                    && unreadable_here(&staging.path().join(&name), &local_nix)
                {
                    // HOST's newer nix wrote the lock in a form the nix here cannot read: a
                    // build's rewrite stays there; a lock asked for comes back beside yours.
                    exec::info(format_args!(
                        "{host}'s nix ({}) wrote {} with relative path inputs in the Nix 2.26 form, which the nix here ({}) cannot read: {}{}",
                        env.nix_version,
                        exec::printable(&dest.to_string_lossy()),
                        local_nix.get_or_init(local_nix_version),
                        if dest.exists() {
                            "yours stays"
                        } else {
                            "it is not put in your tree"
                        },
                        if plan.writes_lock {
                            format!(
                                ", {host}'s goes beside it (use it once Nix here is 2.26 or later)"
                            )
                        } else {
                            String::new()
                        }
                    ));
                    if plan.writes_lock {
                        conflicts.push(name);
                    }
                } else if git
                    .as_ref()
                    .is_some_and(|g| g.reverted(&name, &staging.path().join(&name), &dest))
                {
                    // A command that reverts a file there (git stash, checkout, reset) never
                    // takes the uncommitted work here.
                    exec::info(format_args!(
                        "{} went back to what git has recorded on {host} (git stash, checkout or reset there?): your uncommitted changes stay",
                        exec::printable(&dest.to_string_lossy())
                    ));
                    conflicts.push(name);
                } else {
                    changes.push(match here.replace(&staged, &name, &name) {
                        Ok(()) => {
                            pulled.root_store_link(&name, &dest);
                            if src.kind == SourceKind::Git
                                && sent.get(&name).is_none()
                                && name.file_name() == Some(std::ffi::OsStr::new("flake.lock"))
                            {
                                new_locks.push(name.to_string_lossy().into_owned());
                            }
                            Change::Taken(dest)
                        }
                        Err(why) => refuse(&name, why.to_string()),
                    });
                }
            }
            // A new lock file is marked intent-to-add, as nix does when it writes one here:
            // the next run sends it, and `git status` shows it as nix would leave it.
            if !new_locks.is_empty() {
                let add = Cmd::new("git")
                    .arg("-C")
                    .arg(&src.root)
                    .args(["add", "--intent-to-add", "--"])
                    .args(new_locks.iter().cloned());
                if !add.succeeds() {
                    exec::info(format_args!(
                        "could not mark the new lock file(s) for git here; fix: {}",
                        add.line()
                    ));
                }
            }
            for name in conflicts {
                if let Err(why) = pulled.check(&name, host, max_size) {
                    changes.push(refuse(&name, why));
                    continue;
                }
                let placed = place_copy(&here, &staged, &name, host);
                if let Ok(copy) = &placed {
                    pulled.root_store_link(&name, copy);
                }
                changes.push(match placed {
                    Ok(copy) => Change::Conflict {
                        path: src.root.join(&name),
                        remote_copy: Some(copy),
                    },
                    Err(why) => refuse(&name, why.to_string()),
                });
            }
        }
        for name in deletes {
            let dest = src.root.join(&name);
            // A deletion there never takes uncommitted work here: only a file whose content
            // git has at HEAD follows it.
            if git.as_ref().is_some_and(|g| g.uncommitted(&name, &dest)) {
                changes.push(Change::Conflict {
                    path: dest,
                    remote_copy: None,
                });
                continue;
            }
            if stamp(&dest).as_ref() == sent.get(&name) {
                changes.push(match here.remove(&name) {
                    Ok(()) => Change::Deleted(dest),
                    Err(why) => refuse(&name, format!("removing it here failed: {why}")),
                });
            }
        }
    }
    Ok(changes)
}

/// Brings back the files the command wrote for the user (`--output-lock-file`) from the
/// run's scratch dir on HOST to where they were asked for here, bounded and checked like
/// sync-back, and renamed into place (a symlink there is replaced, never followed). A file
/// the command did not write (it failed) is left alone here.
pub fn fetch_outputs(
    conn: &Connection,
    env: &RemoteEnv,
    plan: &Plan,
    max_size: u64,
    signals: &crate::signals::Signals,
) -> Result<Vec<Change>> {
    let host = &conn.transport.label;
    let mut changes = Vec::new();
    for (i, local) in plan.outputs.iter().enumerate() {
        let step = format!("fetching {}", local.display());
        let Some(parent) = local.parent() else {
            continue;
        };
        let staging = contain::staging_dir(parent)
            .map_err(|e| staging_problem(host, &step, &e, &parent.display().to_string()))?;
        let name = PathBuf::from(i.to_string());
        let outputs = format!("{}/outputs", env.dirs.run);
        let pulled = pull(
            conn,
            env,
            &outputs,
            std::slice::from_ref(&name),
            staging.path(),
            max_size,
            &step,
        )?;
        if signals.caught() {
            return Err(crate::signals::Interrupted {
                host: host.clone(),
                step: "fetching results",
            }
            .into());
        }
        let staged = staging.path().join(&name);
        if std::fs::symlink_metadata(&staged).is_err() && pulled.out.status.code() == Some(23) {
            exec::debug(format_args!(
                "{host}: the command wrote no {}",
                local.display()
            ));
            continue;
        }
        let regular = std::fs::symlink_metadata(&staged).is_ok_and(|m| m.file_type().is_file());
        changes.push(match pulled.check(&name, host, max_size) {
            Err(why) => Change::Refused {
                path: local.clone(),
                why,
            },
            Ok(()) if !regular => Change::Refused {
                path: local.clone(),
                why: format!("it is not a plain file on {host}"),
            },
            Ok(()) => match std::fs::rename(&staged, local) {
                Ok(()) => Change::Taken(local.clone()),
                Err(e) => Change::Refused {
                    path: local.clone(),
                    why: format!("moving it into place failed: {e}"),
                },
            },
        });
    }
    Ok(changes)
}

/// `nix --version` here ("" when it cannot be run).
pub fn local_nix_version() -> String {
    Cmd::new("nix")
        .arg("--version")
        .output()
        .map(|o| crate::mapping::version_line(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default()
}

/// Whether the lock file at `staged` (from HOST) locks relative inputs in the Nix 2.26 form
/// while the nix here cannot read that form.
fn unreadable_here(staged: &Path, local_nix: &std::cell::OnceCell<String>) -> bool {
    std::fs::read_to_string(staged)
        .ok()
        .and_then(|t| crate::mapping::lock_for_old_nix(&t))
        .is_some()
        && !crate::mapping::reads_relative_locks(local_nix.get_or_init(local_nix_version))
}

/// What [`pull`] brought: rsync's output and the names it skipped for their size.
struct Pulled {
    staging: PathBuf,
    out: std::process::Output,
    too_large: BTreeSet<PathBuf>,
    /// Symlinks into the store whose closures are now in this machine's store, by name,
    /// with the store path each leads to.
    in_store: BTreeMap<PathBuf, String>,
    /// Symlinks into the store whose closures could not be copied, with why.
    not_in_store: BTreeMap<PathBuf, String>,
}

/// Pulls `names` (relative to `from` on HOST) into `staging`: each one file, never a whole
/// tree; nothing setuid, setgid or writable by others; none over `max_size` (rsync skips
/// what HOST's rsync announces as larger, and the kernel stops a file that grows past it
/// whatever was announced). rsync's "some files were not transferred" (23) and a file I/O
/// error here (11) are not errors of the whole step: each missing file is named later.
fn pull(
    conn: &Connection,
    env: &RemoteEnv,
    from: &str,
    names: &[PathBuf],
    staging: &Path,
    max_size: u64,
    step: &str,
) -> Result<Pulled> {
    let mut list = tempfile::NamedTempFile::new()?;
    for name in names {
        list.write_all(name.as_os_str().as_bytes())?;
        list.write_all(&[0])?;
    }
    list.flush()?;
    // --ignore-times: a same-size rewrite in the same second is still a change.
    let cmd = rsync(conn, env)
        .args([
            "--ignore-times",
            "--no-recursive",
            "--chmod=ug-s,go-w",
            "--info=skip1",
            &format!("--max-size={max_size}"),
            "--from0",
            &format!("--files-from={}", list.path().display()),
        ])
        .arg(format!("{}:{from}/", conn.transport.dest.target()))
        .arg(format!("{}/", staging.display()))
        .max_file_size(max_size.saturating_add(1));
    let out = cmd.output()?;
    let out = if matches!(out.status.code(), Some(11 | 23)) {
        out
    } else {
        run_rsync_checked(conn, &cmd, step, out)?
    };
    let too_large = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(" is over max-size"))
        .map(PathBuf::from)
        .collect();
    Ok(Pulled {
        staging: staging.to_path_buf(),
        out,
        too_large,
        in_store: BTreeMap::new(),
        not_in_store: BTreeMap::new(),
    })
}

impl Pulled {
    /// Symlinks among `names` that lead into the store (a `result` a nested `nix build`
    /// made, say): their closures are copied from HOST, so that each comes back as a GC root
    /// like nix build's own links, never dangling; those that cannot be copied stay there.
    fn copy_store_links(
        &mut self,
        conn: &Connection,
        env: &RemoteEnv,
        names: &[PathBuf],
        here: &Path,
        no_link: bool,
        step: &str,
    ) {
        let store_dir = crate::mapping::local_store_dir();
        for name in names {
            let Some(target) = std::fs::read_link(self.staging.join(name)).ok() else {
                continue;
            };
            let Some(path) = crate::mapping::store_path_of(&target, &store_dir) else {
                continue;
            };
            let refuse = |why: &str| {
                (
                    name.clone(),
                    format!(
                        "it is a symlink into the store ({}) on {}, and {why}",
                        target.display(),
                        conn.transport.label
                    ),
                )
            };
            // Only where there is no file here (a new name, or a link already): a link
            // that replaced a file there leads out of the tree, which a later write here
            // would follow.
            if std::fs::symlink_metadata(here.join(name)).is_ok_and(|m| !m.file_type().is_symlink())
            {
                let (n, why) = refuse(
                    "a file of that name is here, which edict does not replace with a link out of the tree",
                );
                self.not_in_store.insert(n, why);
                continue;
            }
            if no_link {
                let (n, why) = refuse("--no-link asks for no results here");
                self.not_in_store.insert(n, why);
                continue;
            }
            // One at a time: one link that cannot come does not keep the others away.
            if let Err(e) = crate::results::copy_closures(conn, env, &[&path], step) {
                let (n, why) = refuse(&format!("its target could not be copied here: {e:#}"));
                self.not_in_store.insert(n, why);
                continue;
            }
            // A store path may itself be a link (to ~/.bashrc, say): what the link leads to
            // here, followed all the way, must be in the store.
            let inside =
                std::fs::canonicalize(&target).is_ok_and(|real| real.starts_with(&store_dir));
            if !inside {
                let (n, why) = refuse("it leads out of the store from there");
                self.not_in_store.insert(n, why);
                continue;
            }
            self.in_store.insert(name.clone(), path);
        }
    }

    /// Makes a store symlink placed at `dest` a GC root here, as `nix build` makes its
    /// links (saying so when it cannot); other names are left alone.
    fn root_store_link(&self, name: &Path, dest: &Path) {
        let Some(path) = self.in_store.get(name) else {
            return;
        };
        // Into a store path, not its top: nix roots only a link to the path itself, so
        // the link stays as it was made, and the closure is here until a GC.
        if std::fs::read_link(dest).ok().as_deref() != Some(Path::new(path)) {
            exec::info(format_args!(
                "{} leads inside {path}, which is now in this store but not a GC root here",
                exec::printable(&dest.to_string_lossy())
            ));
            return;
        }
        if let Err(e) = crate::results::add_root(path, dest) {
            let why = crate::problem::Problem::of(&e)
                .map_or_else(|| format!("{e:#}"), |p| p.what.clone());
            exec::info(format_args!(
                "{} leads to {path}, which is now in this store, but it could not be made a GC root: {why}",
                exec::printable(&dest.to_string_lossy())
            ));
        }
    }

    /// Whether `name` came and may be placed: a regular file, a symlink that stays in the
    /// tree (relative, never above its root), or one into the store whose closure is here;
    /// else why not.
    fn check(&self, name: &Path, host: &str, max_size: u64) -> Result<(), String> {
        let staged = self.staging.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&staged) else {
            // rsync escapes odd characters in its skip message, so a name it skipped for
            // its size may not be found there; a file absent after a clean exit was skipped.
            return Err(
                if self.too_large.contains(name) || self.out.status.success() {
                    format!(
                        "it is over --max-sync-size ({max_size} bytes) on {host}; raise the bound to bring it back"
                    )
                } else {
                    format!(
                        "rsync could not copy it from {host}: {}",
                        exec::stderr_tail(&self.out).replace('\n', "; ")
                    )
                },
            );
        };
        if meta.file_type().is_file() {
            return Ok(());
        }
        if !meta.file_type().is_symlink() {
            return Err(format!(
                "it is not a file on {host} (sync-back brings back files and symlinks only)"
            ));
        }
        let target = std::fs::read_link(&staged).unwrap_or_default();
        if let Some(why) = self.not_in_store.get(name) {
            return Err(why.clone());
        }
        if self.in_store.contains_key(name) || contain::stays_inside(name, &target) {
            Ok(())
        } else {
            Err(format!(
                "it is a symlink to {} on {host}, which leads out of the tree",
                target.display()
            ))
        }
    }
}

/// What git has recorded in a work tree: blob ids at HEAD and in the index, by path, byte
/// for byte; read once per tree. Blob ids are computed here the way git computes them for
/// raw content (no filters), so every name works and nothing depends on a command line.
struct Recorded {
    head: BTreeMap<PathBuf, String>,
    index: BTreeMap<PathBuf, String>,
}

impl Recorded {
    fn read(root: &Path) -> Self {
        let list = |args: &[&str]| -> BTreeMap<PathBuf, String> {
            let Ok(o) = Cmd::new("git")
                .arg("-C")
                .arg(root)
                .args(args.iter().copied())
                .output()
            else {
                return BTreeMap::new();
            };
            // `MODE TYPE ID\tPATH` (ls-tree) or `MODE ID STAGE\tPATH` (ls-files).
            o.stdout
                .split(|b| *b == 0)
                .filter_map(|entry| {
                    let tab = entry.iter().position(|b| *b == b'\t')?;
                    let meta = String::from_utf8_lossy(&entry[..tab]);
                    let id = meta.split(' ').find(|w| w.len() >= 40)?.to_string();
                    Some((
                        PathBuf::from(std::ffi::OsStr::from_bytes(&entry[tab + 1..])),
                        id,
                    ))
                })
                .collect()
        };
        Recorded {
            head: list(&["ls-tree", "-r", "-z", "HEAD"]),
            index: list(&["ls-files", "-s", "-z"]),
        }
    }

    /// Whether HOST's version (`there`) of tracked file `name` is what git recorded (HEAD or
    /// index) while the file here (`here`) differs from it: the command reverted it there.
    /// A version that cannot be read counts as a revert: unknown is never taken.
    fn reverted(&self, name: &Path, there: &Path, here: &Path) -> bool {
        let recorded: Vec<&String> = [self.head.get(name), self.index.get(name)]
            .into_iter()
            .flatten()
            .collect();
        let Some(first) = recorded.first() else {
            return false; // not tracked: nothing of git's to go back to
        };
        match (blob_id(there, first.len()), blob_id(here, first.len())) {
            (Some(t), Some(h)) => recorded.contains(&&t) && t != h,
            _ => true,
        }
    }

    /// Whether the file here holds something HEAD does not (or cannot be read).
    fn uncommitted(&self, name: &Path, here: &Path) -> bool {
        match self.head.get(name) {
            Some(id) => blob_id(here, id.len()).as_ref() != Some(id),
            None => true,
        }
    }
}

/// Git's blob id of a file's raw content (a symlink: its target), SHA-1 or, for a
/// repository with 64-digit ids, SHA-256; `None` when it cannot be read.
fn blob_id(path: &Path, id_len: usize) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let data = if meta.file_type().is_symlink() {
        std::fs::read_link(path).ok()?.into_os_string().into_vec()
    } else if meta.file_type().is_file() {
        std::fs::read(path).ok()?
    } else {
        return None;
    };
    let header = format!("blob {}\0", data.len());
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    Some(if id_len == 64 {
        use sha2::Digest as _;
        hex(&sha2::Sha256::new()
            .chain_update(header)
            .chain_update(&data)
            .finalize())
    } else {
        use sha1::Digest as _;
        hex(&sha1::Sha1::new()
            .chain_update(header)
            .chain_update(&data)
            .finalize())
    })
}

/// Puts HOST's version of a conflicting file beside the local one, as `NAME.edict-HOST`, or
/// `NAME.edict-HOST-2`, `-3`… when that name is taken: never over an existing file (an
/// earlier conflict's copy, a hand merge).
fn place_copy(here: &Dir, staged: &Dir, rel: &Path, host: &str) -> Result<PathBuf, Refusal> {
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = format!("{name}.edict-{}", crate::mapping::safe_name(host));
    for n in 1..=100 {
        let copy = match n {
            1 => rel.with_file_name(&base),
            n => rel.with_file_name(format!("{base}-{n}")),
        };
        match here.place_new(staged, rel, &copy) {
            Ok(()) => return Ok(here.path().join(copy)),
            Err(Refusal::Exists) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Refusal::Exists)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untracked_flake_nix_is_found_however_its_directory_is_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub/deep")).unwrap();
        for f in ["flake.nix", "sub/flake.nix", "sub/deep/flake.nix"] {
            std::fs::write(dir.path().join(f), "{}").unwrap();
        }
        let plan = |flakes: &[&str]| Plan {
            program: crate::nixargs::Program::Nix,
            sources: vec![crate::mapping::Source {
                root: dir.path().to_path_buf(),
                kind: SourceKind::Git,
                name: "m".into(),
                sync_back: false,
            }],
            words: vec![],
            cwd: crate::mapping::RemoteCwd::Run,
            links: vec![],
            flakes: flakes.iter().map(|d| (0, d.to_string())).collect(),
            env: vec![],
            notes: vec![],
            unseen: vec![],
            outputs: vec![],
            relative_locks: vec![],
            writes_lock: false,
            pinned: Vec::new(),
            store_paths: Vec::new(),
            stdout_is_nix: false,
        };
        let tracked = Tracked {
            files: vec!["flake.nix".into(), "sub/deep/flake.nix".into()],
            submodules: vec![],
            nested: false,
        };
        let found = |flakes: &[&str]| untracked_flake_nix(&plan(flakes), 0, &tracked);
        assert_eq!(found(&["", ".", "sub/deep", "./sub//deep/"]), None);
        assert_eq!(found(&["", "./sub/"]).as_deref(), Some("sub/flake.nix"));
        assert_eq!(found(&["sub"]).as_deref(), Some("sub/flake.nix"));
        // Not a directory of this work tree, or no flake.nix at all: nix will say.
        assert_eq!(found(&["../sub", "/abs", "nowhere"]), None);
    }

    fn rules_of(r: &Rules) -> Vec<&str> {
        r.list
            .split(|b| *b == 0)
            .filter(|r| !r.is_empty())
            .map(|r| std::str::from_utf8(r).unwrap())
            .collect()
    }

    #[test]
    fn the_shorter_rule_list_wins_and_wildcards_are_escaped() {
        let tracked = Tracked {
            files: vec![
                "a*b".into(),
                "sub/deep/[x]".into(),
                "back\\slash".into(),
                "flake.nix".into(),
            ],
            submodules: vec!["vendor/lib".into()],
            nested: false,
        };
        // Few untracked entries: exclude them (and the submodule), send the rest.
        let few = vec![b"result".to_vec(), b"target/".to_vec(), b"*".to_vec()];
        let r = git_rules(&tracked, &few, true);
        assert!(r.exclude);
        assert_eq!(r.count(), 4);
        assert_eq!(
            rules_of(&r),
            vec!["/result", "/target/", "/\\*", "/vendor/lib/"]
        );
        // Without a .git directory, the .git file stays here too.
        let r = git_rules(&tracked, &few, false);
        assert_eq!(rules_of(&r).last(), Some(&"/.git"));
        // Many untracked entries: include the tracked files and their parents instead.
        let many: Vec<Vec<u8>> = (0..20).map(|i| format!("junk{i}").into_bytes()).collect();
        let r = git_rules(&tracked, &many, true);
        assert!(!r.exclude);
        assert_eq!(
            rules_of(&r),
            vec![
                "/sub/",
                "/sub/deep/",
                "/a\\*b",
                "/sub/deep/\\[x]",
                "/back\\slash",
                "/flake.nix",
                "/.git/***"
            ]
        );
    }

    #[test]
    fn with_submodules_only_an_include_list_is_exact() {
        // An untracked file inside a submodule is not in the superproject's list of
        // untracked ones, so excluding could send it: include the tracked files instead.
        let tracked = Tracked {
            files: vec!["flake.nix".into(), "sub/.git".into(), "sub/data".into()],
            submodules: vec![],
            nested: true,
        };
        let r = git_rules(&tracked, &[], true);
        assert!(!r.exclude);
        assert_eq!(
            rules_of(&r),
            vec!["/sub/", "/flake.nix", "/sub/.git", "/sub/data", "/.git/***"]
        );
    }

    #[test]
    fn names_that_are_not_utf8_are_excluded_byte_for_byte() {
        let r = git_rules(&Tracked::default(), &[b"s\xffcret?".to_vec()], true);
        assert_eq!(r.list, b"/s\xffcret\\?\0".to_vec());
        // And included so, with their directories, when the include list is shorter.
        let tracked = Tracked {
            files: vec![PathBuf::from(std::ffi::OsStr::from_bytes(b"d\xff/f\xfe"))],
            ..Tracked::default()
        };
        let many: Vec<Vec<u8>> = (0..5).map(|i| format!("junk{i}").into_bytes()).collect();
        let r = git_rules(&tracked, &many, true);
        assert!(!r.exclude);
        assert_eq!(r.list, b"/d\xff/\0/d\xff/f\xfe\0/.git/***\0".to_vec());
    }

    fn st(size: u64, mtime: i64) -> Stamp {
        Stamp {
            size,
            mtime,
            mtime_nsec: 0,
            ctime: mtime,
            ctime_nsec: 0,
            ino: 1,
            mode: 0o100644,
        }
    }

    #[test]
    fn decisions_never_overwrite_local_edits() {
        let sent = st(10, 1000);
        let edited = st(11, 2000);
        // Changed there, untouched here: take.
        assert_eq!(decide(Some(&sent), Some(&sent), Some(true)), Decision::Take);
        // New there, absent here: take.
        assert_eq!(decide(None, None, Some(true)), Decision::Take);
        // Edited here, untouched there: the local edit stands, no conflict.
        assert_eq!(
            decide(Some(&sent), Some(&edited), Some(false)),
            Decision::Skip
        );
        // Edited in both places: conflict.
        assert_eq!(
            decide(Some(&sent), Some(&edited), Some(true)),
            Decision::Conflict
        );
        // New there where an unsent local file (untracked) exists: conflict.
        assert_eq!(decide(None, Some(&edited), Some(true)), Decision::Conflict);
        // Deleted here, changed there: conflict (the deletion is kept, the copy put beside).
        assert_eq!(decide(Some(&sent), None, Some(true)), Decision::Conflict);
        // Deleted there: follow only for untouched sent files.
        assert_eq!(decide(Some(&sent), Some(&sent), None), Decision::Delete);
        assert_eq!(decide(Some(&sent), Some(&edited), None), Decision::Conflict);
        assert_eq!(decide(None, Some(&edited), None), Decision::Skip);
    }

    #[test]
    fn blob_ids_are_git_s() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, "hello\n").unwrap();
        assert_eq!(
            blob_id(&f, 40).as_deref(),
            Some("ce013625030ba8dba906f756967f9e9ca394464a")
        );
        assert_eq!(
            blob_id(&f, 64).as_deref(),
            Some("2cf8d83d9ee29543b34a87727421fdecb7e3f3a183d337639025de576db9ebb4")
        );
        // A symlink is its target's text, as git stores it; a directory or nothing: unknown.
        std::os::unix::fs::symlink("../target", d.path().join("l")).unwrap();
        assert_eq!(
            blob_id(&d.path().join("l"), 40).as_deref(),
            Some("78bc33729bacb569b76aaef40fec807af2ec1274")
        );
        assert_eq!(blob_id(d.path(), 40), None);
        assert_eq!(blob_id(&d.path().join("missing"), 40), None);
    }

    #[test]
    fn an_untracked_file_rsync_sent_is_seen() {
        let tracked = Tracked {
            files: vec![PathBuf::from("a"), PathBuf::from("d/b")],
            ..Default::default()
        };
        let out = b"EDICT-SENT a\nEDICT-SENT d/\nEDICT-SENT d/b\nEDICT-SENT .git/HEAD\nEDICT-SENT .swp\nNumber of files: 3\n";
        assert_eq!(sent_untracked(out, &tracked), vec![b".swp".to_vec()]);
        assert!(sent_untracked(b"EDICT-SENT a\n", &tracked).is_empty());
    }

    #[test]
    fn stats_summary_reads_rsync_numbers() {
        let stats = "Number of files: 5\nNumber of regular files transferred: 1\nTotal bytes sent: 1,234\nTotal bytes received: 56\n";
        assert_eq!(
            stats_summary(stats),
            "1 files transferred, 1234 bytes sent, 56 bytes received"
        );
    }
}
