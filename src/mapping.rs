//! Step 2: map every local source the command names (flakes, `-f` files, `-o` links, local
//! path inputs of flake.lock) to a stable place on HOST, and rewrite the command line to use
//! it. The result is a [`Plan`]: plain data that the later steps follow.
//!
//! A mirror lives at `~/.cache/edict/mirrors/NAME` on HOST, where NAME is made of safe
//! characters only and keyed by this machine and the absolute local path, so repeated runs
//! reuse it (rsync then sends only the delta) and a path with spaces, quotes or `$` still
//! becomes a clean path that nix on HOST accepts.

use crate::flakeref::{self, FlakeRef, LocalKind, LocalRef};
use crate::nixargs::{NixArgs, Program, Role};
use crate::problem::Problem;
use anyhow::{Context, Result};
use std::path::{Component, Path, PathBuf};

/// What nix would read from a local source, which decides how it is synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourceKind {
    /// A git work tree: the tracked files (with uncommitted changes) and `.git`.
    Git,
    /// A plain directory, whole.
    Dir,
    /// One file (`file:` refs): the mirror is a directory holding it.
    File,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// Canonical local path: the work tree's root, the directory, or the file.
    pub root: PathBuf,
    pub kind: SourceKind,
    /// The mirror's directory name on HOST.
    pub name: String,
    /// Bring back what the command changed in the mirror (step 7).
    pub sync_back: bool,
}

impl Source {
    /// For `File` sources, the file's name inside its mirror directory.
    pub fn file_name(&self) -> String {
        safe_name(
            &self
                .root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )
    }
}

/// One word of the remote nix command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Word {
    Lit(String),
    /// A local flake ref, pointed at its mirror (`rel` is the flake's path in the source).
    Ref {
        local: LocalRef,
        src: usize,
        rel: String,
    },
    /// A plain path inside a mirror, after `prefix` (`nixpkgs=` of `-I nixpkgs=PATH`).
    Path {
        prefix: String,
        src: usize,
        rel: String,
    },
    /// A path inside this run's scratch directory on HOST.
    Run(String),
}

/// Where the command runs on HOST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteCwd {
    /// Inside a mirror: the local cwd is inside that source, so relative paths keep working.
    Mirror { src: usize, rel: String },
    /// The run's scratch directory: the local cwd is in no source (stateless use).
    Run,
}

/// A result link the command may create: nix makes `links/<i>/result[-*]` on HOST, edict
/// recreates each at `local_base[-*]` here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSpec {
    pub local_base: PathBuf,
}

/// The remote directories a plan is rendered against.
#[derive(Clone, Debug)]
pub struct RemoteDirs {
    pub mirrors: String,
    pub run: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// What runs on HOST: `nix`, `nix-build` or `nix-shell`.
    pub program: Program,
    pub sources: Vec<Source>,
    pub words: Vec<Word>,
    pub cwd: RemoteCwd,
    pub links: Vec<LinkSpec>,
    /// Every local flake the command names: (source, the flake's directory in it).
    pub flakes: Vec<(usize, String)>,
    /// Variables the remote command gets from here (see [`forwarded_env`]).
    pub env: Vec<(String, String)>,
    /// Warnings for the user about what edict could not carry over.
    pub notes: Vec<String>,
    /// Warnings that hold only when HOST does not have the path (a shared file system may
    /// give it the same one): checked there before they are said.
    pub unseen: Vec<(String, PathBuf)>,
    /// Files the command writes (`--output-lock-file`), by index in the run's `outputs/`
    /// dir on HOST: where each goes here.
    pub outputs: Vec<PathBuf>,
    /// flake.lock files (source, path in it) that lock a relative `path:` input the way
    /// Nix ≥ 2.26 does, which older Nix cannot read (see [`lock_for_old_nix`]).
    pub relative_locks: Vec<(usize, String)>,
    /// The command is `nix flake lock/update`: the lock file it writes is its result.
    pub writes_lock: bool,
    /// Local inputs flake.lock pins by content, which HOST gets as store paths.
    pub pinned: Vec<Pinned>,
    /// Store paths the command names as files or search paths (`-I nixpkgs=/nix/store/…`,
    /// `nix-build /nix/store/….drv`): HOST gets them (and their closures) from here.
    pub store_paths: Vec<String>,
    /// The command's stdout is nix's own text (`nix flake metadata/show/…`), not a
    /// program's output or a store path list.
    pub stdout_is_nix: bool,
}

/// A local input (outside every synced source) that flake.lock pins by its `narHash`. Nix
/// here evaluates the store path that hash names whenever the store has it, whatever the
/// input's tree holds now (a newer commit, an edit): HOST gets that same store path, and
/// the lock stays as it is (an override would make nix there warn and re-lock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pinned {
    /// The input's path in the lock (`a/b` for input `b` of input `a`).
    pub input: String,
    /// The store path the lock's narHash names.
    pub store_path: String,
    /// The lock's attributes for it (JSON, its path made absolute): what `fetchTree` fetches
    /// again when this machine's store no longer has the path (collected since the last
    /// evaluation).
    pub locked: String,
}

/// What the user asked for on edict's own command line that changes the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Sync back when the cwd is inside a source.
    Auto,
    /// `--sync`: sync back every source.
    Force,
    /// `--no-sync`.
    Off,
}

/// Everything about this machine that mapping depends on, passed in so tests can vary it.
pub struct Local<'a> {
    pub cwd: &'a Path,
    pub machine_id: &'a str,
    /// This process's environment (name, value).
    pub env: &'a [(String, String)],
    /// The inputs a flake.nix declares (top-level names), as nix here reads them; `None`
    /// when that cannot be told (no nix here).
    pub declared_inputs: &'a (dyn Fn(&Path) -> Option<Vec<String>> + Sync),
}

/// Step 2: the plan for a classified command line, in named stages: every word (local refs,
/// files, links), what the command reads without naming it, its result link, the local
/// inputs its locks record, then where it runs, what comes back and what is said.
pub fn plan(args: &NixArgs, local: &Local, sync: SyncMode) -> Result<Plan> {
    let mut p = Plan {
        program: args.program,
        sources: Vec::new(),
        words: Vec::new(),
        cwd: RemoteCwd::Run,
        links: Vec::new(),
        flakes: Vec::new(),
        env: forwarded_env(local.env),
        notes: Vec::new(),
        unseen: Vec::new(),
        outputs: Vec::new(),
        relative_locks: Vec::new(),
        writes_lock: false,
        pinned: Vec::new(),
        store_paths: Vec::new(),
        stdout_is_nix: args.program == Program::Nix && args.subcommand().first() == Some(&"flake"),
    };
    map_words(&mut p, args, local)?;
    implicit_sources(&mut p, args, local)?;
    result_link(&mut p, args, local);
    lock_inputs(&mut p, args, local)?;
    place(&mut p, args, local, sync);
    Ok(p)
}

/// Just past the subcommand words: where edict inserts flags of its own.
fn cmd_end(args: &NixArgs) -> usize {
    args.args
        .iter()
        .rposition(|a| a.role == Role::Command)
        .map_or(0, |i| i + 1)
}

/// Each word of the command line, mapped: local flake refs and files to their mirrors,
/// result links and written files to the run's scratch dir, store paths to send.
fn map_words(p: &mut Plan, args: &NixArgs, local: &Local) -> Result<()> {
    for (at, arg) in args.args.iter().enumerate() {
        // A store path here as a file or search path: HOST may not have it (nix there would
        // ignore a missing search path entry and use its own nixpkgs), so it is copied there.
        if matches!(arg.role, Role::InputFile | Role::SearchPath) {
            if let Some(path) = local_store_path(&arg.text, local) {
                if !p.store_paths.contains(&path) {
                    p.store_paths.push(path);
                }
                p.words.push(Word::Lit(arg.text.clone()));
                continue;
            }
        }
        let word = match arg.role {
            Role::FlakeRef => match flakeref::parse(&arg.text) {
                FlakeRef::Remote => Word::Lit(arg.text.clone()),
                FlakeRef::Local(lref) => {
                    // An installable must be a flake; an input (`--override-input x ./dir`)
                    // may be a plain directory (`flake = false`), as nix allows.
                    if lref.kind == LocalKind::PathLike && arg.positional {
                        let path = absolute(local.cwd, Path::new(&lref.path));
                        require_flake_nix(&path, lref.dir_param().as_deref())?;
                    }
                    let (src, rel) = add_ref_source(p, &lref, local)?;
                    let mut dir = rel.clone();
                    if let Some(d) = lref.dir_param() {
                        dir = join_rel(&dir, &d);
                    }
                    p.flakes.push((src, dir));
                    Word::Ref {
                        local: lref,
                        src,
                        rel,
                    }
                }
            },
            Role::OutLink => {
                let i = p.links.len();
                p.links.push(LinkSpec {
                    local_base: absolute(local.cwd, Path::new(&arg.text)),
                });
                Word::Run(format!("links/{i}/result"))
            }
            Role::InputFile if is_local_file_arg(&arg.text) => {
                let path = absolute(local.cwd, Path::new(&arg.text));
                // `-f` names an expression, which may import its neighbours; the others
                // (`--arg-from-file`, `--reference-lock-file`) name one file.
                // (`nix-build FILE`'s positional file is an expression too.)
                let flag = at.checked_sub(1).map(|i| args.args[i].text.as_str());
                let expression = arg.positional || matches!(flag, Some("-f" | "--file"));
                let (src, rel) = add_file_source(p, &path, expression, local)?;
                Word::Path {
                    prefix: String::new(),
                    src,
                    rel,
                }
            }
            // `-I nixpkgs=./np`: the directory (or its git tree) goes, the name stays.
            Role::SearchPath => match search_path_entry(&arg.text) {
                Some((prefix, path)) if !path.is_empty() => {
                    let path = absolute(local.cwd, Path::new(path));
                    let (src, rel) = add_file_source(p, &path, true, local)?;
                    Word::Path {
                        prefix: prefix.to_string(),
                        src,
                        rel,
                    }
                }
                _ => Word::Lit(arg.text.clone()),
            },
            // A file nix writes (`--output-lock-file`): written in the run's scratch dir on
            // HOST and fetched to its place here afterwards; its directory is never sent.
            Role::OutputFile if is_local_file_arg(&arg.text) => {
                let i = p.outputs.len();
                p.outputs.push(absolute(local.cwd, Path::new(&arg.text)));
                Word::Run(format!("outputs/{i}"))
            }
            _ => Word::Lit(arg.text.clone()),
        };
        p.words.push(word);
    }

    Ok(())
}

/// What the command reads without naming it: the cwd's flake, nix-build's default.nix, the
/// work tree around -E's relative paths.
fn implicit_sources(p: &mut Plan, args: &NixArgs, local: &Local) -> Result<()> {
    // `nix repl` without a flake is an empty repl: nothing to send when there is none.
    let found = || require_flake_nix(local.cwd, None);
    let wanted = args.implicit_cwd_flake()
        && match args.subcommand().as_slice() {
            ["repl"] => found().is_ok(),
            _ => {
                found()?;
                true
            }
        };
    if wanted {
        let (src, rel) = add_dir_source(p, local.cwd, true, local, ".").with_context(|| {
            format!(
                "the command uses the flake in the current directory {}",
                local.cwd.display()
            )
        })?;
        p.flakes.push((src, rel));
    }

    // With -E (or nix-shell's -p) the words are expressions or names, but what they (or
    // `--run`) name relative to the cwd is here: the cwd's work tree goes, and the command
    // runs in its mirror. Outside one, nothing is sent (a plain directory could be $HOME).
    let expressions = args.has_flag(&["-E", "--expr"])
        || (args.program == Program::NixShell && args.has_flag(&["-p", "--packages"]));
    if args.program != Program::Nix && expressions {
        if git_work_tree(local.cwd).is_some() {
            add_dir_source(p, local.cwd, true, local, ".")?;
        } else {
            p.notes.push(format!(
                "{} is in no git work tree, so nothing of it is sent: relative paths in the expression or command resolve in a scratch directory on {{host}}",
                local.cwd.display()
            ));
        }
    }
    // nix-build and nix-shell read ./default.nix (nix-shell: ./shell.nix first) when
    // given no file and no -E/-p.
    if args.program != Program::Nix && !args.args.iter().any(|a| a.positional) && !expressions {
        let candidates: &[&str] = match args.program {
            Program::NixShell => &["shell.nix", "default.nix"],
            _ => &["default.nix"],
        };
        let Some(file) = candidates
            .iter()
            .map(|c| local.cwd.join(c))
            .find(|f| f.exists())
        else {
            let name = args.program.name();
            return Err(Problem::new(
                "",
                "",
                format!(
                    "{name} reads {} in the current directory {} when given no file, and there is none",
                    candidates.join(" or "),
                    local.cwd.display()
                ),
                format!("name the expression (`{name} ./path/to/file.nix`), or run it where the file is"),
            )
            .into());
        };
        // Named on HOST's command line: nix there reads the very file chosen here (an
        // untracked shell.nix is refused before sending, never replaced by default.nix).
        let (src, rel) = add_file_source(p, &file, true, local)?;
        p.words.push(Word::Path {
            prefix: String::new(),
            src,
            rel,
        });
    }

    Ok(())
}

fn result_link(p: &mut Plan, args: &NixArgs, local: &Local) {
    let sub_refs = args.subcommand();
    let cmd_end = cmd_end(args);
    // `nix build` and `nix-build` make `./result` unless told otherwise; edict has it made
    // in the run's scratch dir on HOST instead, so the mirror stays clean, and recreates it
    // here.
    let makes_result = match args.program {
        Program::Nix => sub_refs == ["build"] && !args.has_flag(&["--no-link"]),
        Program::NixBuild => !args.has_flag(&["--no-out-link", "--no-link"]),
        Program::NixShell => false,
    };
    if makes_result && p.links.is_empty() {
        p.words.insert(cmd_end, Word::Run("links/0/result".into()));
        p.words.insert(cmd_end, Word::Lit("--out-link".into()));
        p.links.push(LinkSpec {
            local_base: local.cwd.join("result"),
        });
    }
}

/// The local inputs the flakes' locks record: pinned ones go as store paths, others are
/// synced and overridden, and for `nix flake update/lock` said.
fn lock_inputs(p: &mut Plan, args: &NixArgs, local: &Local) -> Result<()> {
    let sub_refs = args.subcommand();
    let cmd_end = cmd_end(args);
    // Local path inputs recorded in flake.lock would name paths HOST does not have.
    let updating = matches!(sub_refs.as_slice(), ["flake", "update" | "lock", ..]);
    p.writes_lock = updating;
    for (src, dir) in p.flakes.clone() {
        let lock = join_rel(&dir, "flake.lock");
        let text = std::fs::read_to_string(p.sources[src].root.join(&lock)).unwrap_or_default();
        if lock_for_old_nix(&text).is_some() && !p.relative_locks.contains(&(src, lock.clone())) {
            p.relative_locks.push((src, lock));
        }
    }
    let mut overrides = Vec::new();
    for (src, dir) in p.flakes.clone() {
        let lock = p.sources[src].root.join(&dir).join("flake.lock");
        let found = local_inputs(&lock, &store_dir(local.env))?;
        // A lock may name inputs its flake.nix no longer declares (a cloned repo's lock is
        // someone else's words): nix ignores those ("Removed input"), and edict sends only
        // what nix would read. Asked of nix only when the lock names a local path.
        let declared = if found.is_empty() {
            None
        } else {
            (local.declared_inputs)(&p.sources[src].root.join(&dir).join("flake.nix"))
        };
        for found in found {
            let (input, path) = (found.input, found.path);
            let top = input.split('/').next().unwrap_or_default();
            if declared
                .as_ref()
                .is_some_and(|d| !d.iter().any(|n| n == top))
            {
                continue;
            }
            if p.sources
                .iter()
                .any(|s| s.kind != SourceKind::File && path.starts_with(&s.root))
            {
                continue; // inside a synced source: the relative layout holds on HOST
            }
            if updating {
                p.unseen.push((
                    format!(
                        "input `{input}` of {} is the local path {}, which {{host}} cannot see; `nix flake update/lock` there will fail for it",
                        lock.display(),
                        path.display()
                    ),
                    path.clone(),
                ));
                continue;
            }
            if let Some((store_path, locked)) = found.pin {
                if !args.overrides(&input) && !p.pinned.iter().any(|x| x.store_path == store_path) {
                    p.pinned.push(Pinned {
                        input,
                        store_path,
                        locked,
                    });
                }
                continue;
            }
            if !found.exists {
                continue; // gone here and not pinned: let nix there report it as nix here would
            }
            let kind = found.kind;
            let lref = LocalRef {
                kind: if kind == SourceKind::Git {
                    LocalKind::GitFile
                } else {
                    LocalKind::Path
                },
                scheme: String::new(),
                path: path.to_string_lossy().into_owned(),
                query: String::new(),
                fragment: String::new(),
            };
            let (s, rel) = add_ref_source(p, &lref, local)?;
            overrides.push((
                input,
                Word::Ref {
                    local: lref,
                    src: s,
                    rel,
                },
            ));
        }
    }
    if !overrides.is_empty() {
        let at = cmd_end;
        for (input, word) in overrides.into_iter().rev() {
            p.words.insert(at, word);
            p.words.insert(at, Word::Lit(input));
            p.words.insert(at, Word::Lit("--override-input".into()));
        }
    }

    Ok(())
}

/// Where the command runs, which sources come back, and what acts on HOST, said.
fn place(p: &mut Plan, args: &NixArgs, local: &Local, sync: SyncMode) {
    let sub_refs = args.subcommand();
    let updating = p.writes_lock; // set by lock_inputs
    // Where the command runs, and which sources come back.
    if let Some((src, rel)) = p
        .sources
        .iter()
        .enumerate()
        .filter(|(_, s)| s.kind != SourceKind::File && local.cwd.starts_with(&s.root))
        .max_by_key(|(_, s)| s.root.as_os_str().len())
        .map(|(i, s)| (i, rel_path(&s.root, local.cwd)))
    {
        p.cwd = RemoteCwd::Mirror { src, rel };
        if sync == SyncMode::Auto {
            p.sources[src].sync_back = true;
        }
    }
    // What acts on HOST rather than here, said before it runs.
    if sub_refs.first() == Some(&"profile") {
        p.notes
            .push("`nix profile` changes {host}'s profile, not this machine's".into());
    }
    if args.has_flag(&["--keep-failed", "-K"]) {
        p.notes
            .push("failed builds are kept on {host} (nix names the directory there)".into());
    }
    match sync {
        SyncMode::Force => p
            .sources
            .iter_mut()
            .filter(|s| s.kind != SourceKind::File)
            .for_each(|s| s.sync_back = true),
        SyncMode::Off => p.sources.iter_mut().for_each(|s| s.sync_back = false),
        SyncMode::Auto => {}
    }
    if updating && sync == SyncMode::Auto && !p.sources.iter().any(|s| s.sync_back) {
        p.notes.push(
            "the lock file this writes stays on {host}: you are not inside the flake, so nothing comes back; add --sync to bring it back".into(),
        );
    }
}

fn add_ref_source(p: &mut Plan, lref: &LocalRef, local: &Local) -> Result<(usize, String)> {
    let path = absolute(local.cwd, Path::new(&lref.path));
    match lref.kind {
        LocalKind::PathLike => add_dir_source(p, &path, true, local, &lref.path),
        LocalKind::Path => add_dir_source(p, &path, false, local, &lref.path),
        LocalKind::GitFile => {
            let (src, rel) = add_dir_source(p, &path, true, local, &lref.path)?;
            if p.sources[src].kind != SourceKind::Git {
                return Err(Problem::new(
                    "",
                    "",
                    format!(
                        "the local flake `git+file:{}` is not inside a git work tree (no .git found above it)",
                        lref.path
                    ),
                    format!("use path:{} for a plain directory", lref.path),
                )
                .into());
            }
            Ok((src, rel))
        }
        LocalKind::File => {
            let canon = canonical(&path, &lref.path)?;
            if !canon.is_file() {
                return Err(Problem::new(
                    "",
                    "",
                    format!("the local flake `{}` is not a file", lref.path),
                    "name the file, or use path: for a directory",
                )
                .into());
            }
            Ok((add_source(p, canon, SourceKind::File, local), String::new()))
        }
    }
}

/// Fails, before anything is sent, unless nix here would find a flake for a path-like ref
/// to `dir`: its flake.nix (in the `?dir=` subdirectory when given) or, searching up as nix
/// does, one in a directory above, up to a git work tree's top. Otherwise edict would send
/// a whole directory nix never reads (in `~`, that is `~/.ssh`).
fn require_flake_nix(dir: &Path, sub: Option<&str>) -> Result<()> {
    // Searching up is about real parents: `repo/../home` is not inside repo.
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Ok(()); // not there: the next step says so
    };
    if !dir.is_dir() {
        return Ok(());
    }
    let found = match sub {
        Some(sub) => dir.join(sub).join("flake.nix").is_file(),
        None => dir
            .ancestors()
            .find(|a| a.join("flake.nix").is_file() || a.join(".git").exists())
            .is_some_and(|a| a.join("flake.nix").is_file()),
    };
    if found {
        return Ok(());
    }
    let at = match sub {
        Some(sub) => dir.join(sub),
        None => dir,
    };
    Err(Problem::new(
        "",
        "",
        format!(
            "{} holds no flake.nix, nor does a directory above it{}, so nix here would refuse it too (\"could not find a flake.nix file\"); nothing was sent",
            at.display(),
            if sub.is_some() {
                ""
            } else {
                " (up to a git work tree's top)"
            }
        ),
        "run edict inside your flake, or name the flake by its path in the command (`/path/to/flake#pkg`)",
    )
    .into())
}

/// A directory source for `dir`: the git work tree around it when `git_aware`, else `dir`.
fn add_dir_source(
    p: &mut Plan,
    dir: &Path,
    git_aware: bool,
    local: &Local,
    as_written: &str,
) -> Result<(usize, String)> {
    let canon = canonical(dir, as_written)?;
    if !canon.is_dir() {
        return Err(Problem::new(
            "",
            "",
            format!(
                "the local flake {} is not a directory (a flake is a directory with a flake.nix)",
                canon.display()
            ),
            "name the directory that holds flake.nix",
        )
        .into());
    }
    let git_root = if git_aware {
        git_work_tree(&canon)
    } else {
        None
    };
    let (root, kind) = match git_root {
        Some(root) => (root, SourceKind::Git),
        None => {
            refuse_broad(&canon, local)?;
            (canon.clone(), SourceKind::Dir)
        }
    };
    let rel = rel_path(&root, &canon);
    Ok((add_source(p, root, kind, local), rel))
}

/// A source for a local input file argument (`-f`, `--arg-from-file`, lock files): inside
/// a git work tree, its tracked files (what the user versions, never untracked secrets);
/// elsewhere, for an `expression` (`-f`) its directory, as it may import its neighbours,
/// unless that is a home or temp directory: then the file alone, and a note says so; for
/// the others the file alone. A directory the user names goes, never a home or temp one.
fn add_file_source(
    p: &mut Plan,
    path: &Path,
    expression: bool,
    local: &Local,
) -> Result<(usize, String)> {
    let is_file = path.is_file();
    let dir = if is_file {
        path.parent().unwrap_or(Path::new("/"))
    } else {
        path
    };
    let as_written = path.to_string_lossy();
    let canon_dir = canonical(dir, &as_written)?;
    let file_name = path.file_name().filter(|_| is_file);
    let in_dir = |(src, rel): (usize, String)| match file_name {
        Some(f) => (src, join_rel(&rel, &f.to_string_lossy())),
        None => (src, rel),
    };
    if git_work_tree(&canon_dir).is_some() {
        return add_dir_source(p, dir, true, local, &as_written).map(in_dir);
    }
    if !is_file {
        return add_dir_source(p, path, false, local, &as_written);
    }
    if expression {
        match refuse_broad(&canon_dir, local) {
            Ok(()) => return add_dir_source(p, dir, false, local, &as_written).map(in_dir),
            Err(_) => p.notes.push(format!(
                "sending only {}: its directory {} holds far more than nix reads (a home or temp directory), so an expression it imports from there is not on HOST; put it in a directory of its own",
                path.display(),
                canon_dir.display()
            )),
        }
    }
    let canon = canonical(path, &as_written)?;
    Ok((add_source(p, canon, SourceKind::File, local), String::new()))
}

/// Refuses a directory source that holds far more than nix reads: `/`, a home directory
/// (or a directory above one), a system temp directory. Sending it would ship `~/.ssh` or
/// other users' files to HOST.
fn refuse_broad(dir: &Path, local: &Local) -> Result<()> {
    let home = local
        .env
        .iter()
        .find(|(k, _)| k == "HOME")
        .map(|(_, v)| PathBuf::from(v))
        .and_then(|h| std::fs::canonicalize(h).ok());
    let tmpdir = local
        .env
        .iter()
        .find(|(k, _)| k == "TMPDIR")
        .and_then(|(_, v)| std::fs::canonicalize(v).ok());
    let broad = dir == Path::new("/")
        || home.as_deref().is_some_and(|h| h.starts_with(dir))
        || [Path::new("/tmp"), Path::new("/var/tmp")].contains(&dir)
        || tmpdir.as_deref() == Some(dir);
    if broad {
        return Err(Problem::new(
            "",
            "",
            format!(
                "edict will not send {}: it holds far more than nix reads here (a home, a temp directory or /), such as ~/.ssh",
                dir.display()
            ),
            "put the flake or expression in a directory of its own, or a git repository (only its tracked files are sent), or name the file itself (`-f ./dir/default.nix`)",
        )
        .into());
    }
    Ok(())
}

fn add_source(p: &mut Plan, root: PathBuf, kind: SourceKind, local: &Local) -> usize {
    if let Some(i) = p
        .sources
        .iter()
        .position(|s| s.root == root && s.kind == kind)
    {
        return i;
    }
    let name = mirror_name(&root, kind, local.machine_id);
    p.sources.push(Source {
        root,
        kind,
        name,
        sync_back: false,
    });
    p.sources.len() - 1
}

/// The store path a file or search path argument names (after any `NAME=`), when it is in
/// this machine's store.
fn local_store_path(word: &str, local: &Local) -> Option<String> {
    let path = match word.split_once('=') {
        Some((name, path)) if !name.contains('/') => path,
        _ => word,
    };
    store_path_of(Path::new(path), &store_dir(local.env)).filter(|p| Path::new(p).exists())
}

/// A search path entry split into its `NAME=` prefix (or "") and path; `None` for a URL
/// or `channel:`/`flake:` entry, which mean the same on HOST.
fn search_path_entry(entry: &str) -> Option<(&str, &str)> {
    let (prefix, path) = match entry.split_once('=') {
        // A name has no `/` (`nixpkgs=…`, `nixos-config=…`); a path with `=` is a path.
        Some((name, path)) if !name.contains('/') => (&entry[..=name.len()], path),
        _ => ("", entry),
    };
    is_local_file_arg(path).then_some((prefix, path))
}

/// `-f`/lock-file values that name local files (not `<nixpkgs>`, URLs or store paths).
fn is_local_file_arg(s: &str) -> bool {
    !(s.starts_with('<')
        || s.starts_with("/nix/store/")
        || s.contains("://")
        || s.starts_with("channel:")
        || s.starts_with("flake:"))
}

/// The stable mirror directory name: readable base name + hash of (machine, kind, path).
/// nixpkgs' switches (`NIXPKGS_ALLOW_UNFREE=1` and its siblings): read with `--impure`,
/// they must mean there what they mean here. Other variables (PATH, HOME, NIX_PATH) name
/// this machine's things, so they stay.
fn forwarded_env(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix("NIXPKGS_ALLOW_").is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
        })
        .cloned()
        .collect();
    out.sort();
    out
}

pub fn mirror_name(root: &Path, kind: SourceKind, machine_id: &str) -> String {
    let base = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    let kind = match kind {
        SourceKind::Git => "git",
        SourceKind::Dir => "dir",
        SourceKind::File => "file",
    };
    let mut key = Vec::new();
    key.extend_from_slice(machine_id.as_bytes());
    key.push(0);
    key.extend_from_slice(kind.as_bytes());
    key.push(0);
    key.extend_from_slice(root.as_os_str().as_encoded_bytes());
    let base: String = safe_name(&base).chars().take(40).collect();
    format!("{base}-{:016x}", fnv1a64(&key))
}

/// Keeps `[A-Za-z0-9._-]`, replaces the rest with `_`, never starts with `.` or `-`.
pub fn safe_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with('.') || out.starts_with('-') {
        out.insert(0, '_');
    }
    out
}

/// FNV-1a: a stable 64-bit hash, enough to keep mirrors of different paths apart.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

fn canonical(path: &Path, as_written: &str) -> Result<PathBuf> {
    std::fs::canonicalize(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Problem::new(
            "",
            "",
            format!("`{as_written}` does not exist here (no {})", path.display()),
            "check the path; a flake from a registry is written without `./` (e.g. nixpkgs#hello)",
        )
        .into(),
        _ => Problem::new(
            "",
            "",
            format!(
                "`{as_written}` can't be read here ({}: {e})",
                path.display()
            ),
            "check its permissions",
        )
        .into(),
    })
}

/// The root of the git work tree containing `dir` (a `.git` directory or file), if any.
pub fn git_work_tree(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|d| d.join(".git").exists())
        .map(Path::to_path_buf)
}

/// `path` relative to `root` as a `/`-separated string ("" for the root itself).
fn rel_path(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .map(|r| {
            r.components()
                .filter_map(|c| match c {
                    Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default()
}

fn join_rel(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

/// The version line of `nix --version`'s output (`nix (Nix) 2.8.0`, `nix (Lix) 2.91.1`): a
/// shell that prints a banner in every session puts its text before it.
pub fn version_line(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("nix (") || l.starts_with("nix "))
        .or(lines.last())
        .copied()
        .unwrap_or_default()
        .to_string()
}

/// Whether a nix whose `nix --version` says `version` reads a relative `path:` input locked
/// without a narHash (the form Nix 2.26 introduced, with a `parent`): CppNix 2.26 and later.
/// Older Nix and Lix refuse such a lock ("lockfile contains mutable lock").
pub fn reads_relative_locks(version: &str) -> bool {
    if !version.contains("(Nix)") {
        return false; // Lix, or a version edict cannot read: assume the old form
    }
    let mut nums = version
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .trim()
        .split('.')
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    (major, minor) >= (2, 26)
}

/// The lock file for a Nix older than 2.26 (or Lix), when `text` locks a relative `path:`
/// input the Nix ≥ 2.26 way (no narHash): the same lock without those nodes, so that the
/// old nix locks them itself (the directory is in the sent tree) and keeps every other
/// input as locked here. `None` when there is nothing to change.
pub fn lock_for_old_nix(text: &str) -> Option<String> {
    let mut json: serde_json::Value = serde_json::from_str(text).ok()?;
    let nodes = json.get_mut("nodes")?.as_object_mut()?;
    let relative: Vec<String> = nodes
        .iter()
        .filter(|(_, n)| {
            let l = &n["locked"];
            l["type"] == "path"
                && l["narHash"].is_null()
                && l["path"].as_str().is_some_and(|p| !p.starts_with('/'))
        })
        .map(|(k, _)| k.clone())
        .collect();
    if relative.is_empty() {
        return None;
    }
    for k in &relative {
        nodes.remove(k);
    }
    for node in nodes.values_mut() {
        if let Some(inputs) = node.get_mut("inputs").and_then(|i| i.as_object_mut()) {
            inputs.retain(|_, target| {
                target
                    .as_str()
                    .is_none_or(|t| !relative.iter().any(|k| k == t))
            });
        }
    }
    serde_json::to_string_pretty(&json).ok()
}

/// A local input a flake.lock records.
struct LockedLocal {
    /// Its path in the lock, like `a/b`.
    input: String,
    /// Where it is here: canonical when it exists, else as the lock names it.
    path: PathBuf,
    exists: bool,
    kind: SourceKind,
    /// (store path, flake ref) when the lock pins its content by narHash.
    pin: Option<(String, String)>,
}

/// The local inputs a flake.lock records.
fn local_inputs(lock: &Path, store_dir: &str) -> Result<Vec<LockedLocal>> {
    let text = match std::fs::read_to_string(lock) {
        Ok(t) => t,
        Err(_) => return Ok(Vec::new()),
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Problem::new(
            "",
            "",
            format!("{} is not valid JSON ({e})", lock.display()),
            "fix or delete it (nix will re-lock)",
        )
    })?;
    let flake_dir = lock.parent().unwrap_or(Path::new("/"));
    let nodes = &json["nodes"];
    let mut out = Vec::new();
    let mut stack: Vec<(String, String)> = Vec::new(); // (input path, node key)
    if let Some(root) = json["root"].as_str() {
        push_inputs(&mut stack, "", &nodes[root]);
    }
    let mut seen = std::collections::HashSet::new();
    while let Some((input, key)) = stack.pop() {
        if !seen.insert(key.clone()) {
            continue;
        }
        let node = &nodes[&key];
        let locked = &node["locked"];
        let local = match locked["type"].as_str() {
            Some("path") => locked["path"]
                .as_str()
                .map(|p| (p.to_string(), SourceKind::Dir)),
            Some("git") => locked["url"]
                .as_str()
                .and_then(|u| {
                    u.strip_prefix("file://")
                        .or_else(|| u.strip_prefix("file:"))
                })
                .map(|p| (crate::flakeref::percent_decode(p), SourceKind::Git)),
            _ => None,
        };
        let Some((path, kind)) = local else {
            push_inputs(&mut stack, &input, node);
            continue;
        };
        let abs = absolute(flake_dir, Path::new(&path));
        let (path, exists) = match std::fs::canonicalize(&abs) {
            Ok(p) => (p, true),
            Err(_) => (abs, false),
        };
        let pin = locked["narHash"]
            .as_str()
            .and_then(|h| source_store_path(store_dir, h))
            .map(|store_path| {
                // The lock's own attributes, what nix fetches: a `path` made absolute (a git
                // `url` already is), without `dir`, which names a flake inside the tree
                // rather than the tree (fetchTree refuses it).
                let mut attrs = locked.clone();
                if kind != SourceKind::Git {
                    attrs["path"] = path.to_string_lossy().into_owned().into();
                }
                if let Some(o) = attrs.as_object_mut() {
                    o.remove("dir");
                }
                (store_path, attrs.to_string())
            });
        out.push(LockedLocal {
            input,
            path,
            exists,
            kind,
            pin,
        });
    }
    out.sort_by(|a, b| a.input.cmp(&b.input));
    Ok(out)
}

/// This machine's store directory: what store paths are named under, here and on HOST
/// (`nix copy` needs both to agree).
pub fn store_dir(env: &[(String, String)]) -> String {
    env.iter()
        .find(|(k, _)| k == "NIX_STORE_DIR")
        .map(|(_, v)| v.trim_end_matches('/').to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "/nix/store".into())
}

/// This process's store directory (see [`store_dir`]).
pub fn local_store_dir() -> String {
    store_dir(&std::env::vars().collect::<Vec<_>>())
}

/// The store path of a locked input's tree: nix adds a fetched tree as a content-addressed
/// path named `source`, so its path follows from the narHash alone (libstore
/// `makeFixedOutputPath`, recursive sha256). `None` for a hash that is not SRI sha256.
pub fn source_store_path(store_dir: &str, nar_hash: &str) -> Option<String> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = base64::engine::general_purpose::STANDARD
        .decode(nar_hash.strip_prefix("sha256-")?)
        .ok()
        .filter(|d| d.len() == 32)?;
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let fingerprint = format!("source:sha256:{hex}:{store_dir}:source");
    let full = sha2::Sha256::digest(fingerprint.as_bytes());
    let mut short = [0u8; 20];
    for (i, b) in full.iter().enumerate() {
        short[i % 20] ^= b;
    }
    Some(format!("{store_dir}/{}-source", nix_base32(&short)))
}

/// The store path a symlink `target` leads into (`/nix/store/…-x` of
/// `/nix/store/…-x/bin/y`), when it is one: an absolute path whose first name under the
/// store dir is a plain store path name and whose rest never climbs.
pub fn store_path_of(target: &Path, store_dir: &str) -> Option<String> {
    let rest = target.strip_prefix(store_dir).ok()?;
    let mut parts = rest.components();
    let name = match parts.next()? {
        std::path::Component::Normal(n) => n.to_str()?,
        _ => return None,
    };
    let plain = name.len() > 33
        && name.as_bytes()[32] == b'-'
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
        && !name.starts_with('.');
    (plain && parts.all(|c| matches!(c, std::path::Component::Normal(_))))
        .then(|| format!("{store_dir}/{name}"))
}

/// Nix's base-32 (libutil `printHash32`): its own alphabet, least significant bits first.
fn nix_base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let len = (bytes.len() * 8 - 1) / 5 + 1;
    (0..len)
        .rev()
        .map(|n| {
            let b = n * 5;
            let (i, j) = (b / 8, b % 8);
            let low = bytes[i] >> j;
            let high = bytes
                .get(i + 1)
                .map_or(0, |next| (u16::from(*next) << (8 - j)) as u8);
            ALPHABET[usize::from((low | high) & 0x1f)] as char
        })
        .collect()
}

fn push_inputs(stack: &mut Vec<(String, String)>, prefix: &str, node: &serde_json::Value) {
    if let Some(inputs) = node["inputs"].as_object() {
        for (name, target) in inputs {
            // Arrays are `follows` of other inputs: not separate sources.
            if let Some(key) = target.as_str() {
                stack.push((join_rel(prefix, name), key.to_string()));
            }
        }
    }
}

impl Plan {
    /// The notes for the user, naming the host(s) the command runs on.
    pub fn notes_for(&self, host: &str) -> Vec<String> {
        self.notes
            .iter()
            .map(|n| n.replace("{host}", host))
            .collect()
    }

    /// The mirror directory of source `src` on HOST.
    pub fn mirror(&self, src: usize, dirs: &RemoteDirs) -> String {
        format!("{}/{}", dirs.mirrors, self.sources[src].name)
    }

    fn in_mirror(&self, src: usize, rel: &str, dirs: &RemoteDirs) -> String {
        let m = self.mirror(src, dirs);
        let m = if self.sources[src].kind == SourceKind::File {
            format!("{m}/{}", self.sources[src].file_name())
        } else {
            m
        };
        if rel.is_empty() {
            m
        } else {
            format!("{m}/{rel}")
        }
    }

    /// `env NAME=VALUE…` before the command, for the variables it gets from here; or nothing.
    pub fn env_words(&self) -> Vec<String> {
        if self.env.is_empty() {
            return Vec::new();
        }
        std::iter::once("env".to_string())
            .chain(self.env.iter().map(|(k, v)| format!("{k}={v}")))
            .collect()
    }

    /// The remote nix arguments with every mirror and scratch path filled in.
    pub fn render_words(&self, dirs: &RemoteDirs) -> Vec<String> {
        self.words
            .iter()
            .map(|w| match w {
                Word::Lit(t) => t.clone(),
                Word::Ref { local, src, rel } => local.with_path(&self.in_mirror(*src, rel, dirs)),
                Word::Path { prefix, src, rel } => {
                    format!("{prefix}{}", self.in_mirror(*src, rel, dirs))
                }
                Word::Run(rel) => format!("{}/{rel}", dirs.run),
            })
            .collect()
    }

    pub fn render_cwd(&self, dirs: &RemoteDirs) -> String {
        match &self.cwd {
            RemoteCwd::Mirror { src, rel } => self.in_mirror(*src, rel, dirs),
            RemoteCwd::Run => dirs.run.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nixargs::classify;

    struct Fixture {
        dir: tempfile::TempDir,
        /// What "nix here" says flake.nix declares (None: it cannot tell).
        declared: Option<Vec<String>>,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            std::fs::create_dir_all(root.join("repo/.git")).unwrap();
            std::fs::create_dir_all(root.join("repo/sub")).unwrap();
            std::fs::create_dir_all(root.join("plain dir $x")).unwrap();
            std::fs::create_dir_all(root.join("elsewhere")).unwrap();
            std::fs::write(root.join("repo/default.nix"), "{}").unwrap();
            for flake in ["repo", "plain dir $x", "elsewhere"] {
                std::fs::write(root.join(flake).join("flake.nix"), "{}").unwrap();
            }
            std::fs::write(root.join("src.tar.gz"), "").unwrap();
            Fixture {
                dir,
                declared: None,
            }
        }
        fn root(&self) -> PathBuf {
            std::fs::canonicalize(self.dir.path()).unwrap()
        }
        fn plan(&self, cwd: &str, line: &[&str], sync: SyncMode) -> Result<Plan> {
            let words: Vec<String> = line.iter().map(|s| s.to_string()).collect();
            self.plan_of(cwd, &classify(&words), sync)
        }
        fn legacy(&self, cwd: &str, program: Program, line: &[&str]) -> Result<Plan> {
            let words: Vec<String> = line.iter().map(|s| s.to_string()).collect();
            let args = crate::nixargs::classify_legacy(program, &words);
            self.plan_of(cwd, &args, SyncMode::Auto)
        }
        fn plan_of(&self, cwd: &str, args: &NixArgs, sync: SyncMode) -> Result<Plan> {
            let cwd = self.root().join(cwd);
            plan(
                args,
                &Local {
                    cwd: &cwd,
                    machine_id: "m1",
                    env: &[],
                    declared_inputs: &|_| self.declared.clone(),
                },
                sync,
            )
        }
    }

    #[test]
    fn only_nixpkgs_switches_are_forwarded() {
        let env: Vec<(String, String)> = [
            ("PATH", "/usr/bin"),
            ("NIXPKGS_ALLOW_UNFREE", "1"),
            ("NIXPKGS_CONFIG", "/home/me/config.nix"),
            ("NIXPKGS_ALLOW_INSECURE", "1"),
            ("NIXPKGS_ALLOW_", "x"),
            ("NIXPKGS_ALLOW_odd", "1"),
            ("NIX_PATH", "nixpkgs=/home/me/nixpkgs"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec();
        let fwd = forwarded_env(&env);
        assert_eq!(
            fwd,
            [
                ("NIXPKGS_ALLOW_INSECURE", "1"),
                ("NIXPKGS_ALLOW_UNFREE", "1")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec()
        );
    }

    fn dirs() -> RemoteDirs {
        RemoteDirs {
            mirrors: "/h/.cache/edict/mirrors".into(),
            run: "/h/.cache/edict/runs/r1".into(),
        }
    }

    #[test]
    fn a_directory_nix_would_not_read_as_a_flake_is_never_sent() {
        let f = Fixture::new();
        std::fs::create_dir_all(f.root().join("home/.ssh")).unwrap();
        for line in [
            &["build"][..],
            &["build", ".#x"],
            &["develop"],
            &["flake", "update"],
        ] {
            let e = f.plan("home", line, SyncMode::Auto).unwrap_err();
            let e = format!("{e:#}");
            assert!(
                e.contains("holds no flake.nix") && e.contains("nothing was sent"),
                "{line:?}: {e}"
            );
        }
        let e = f
            .plan("repo", &["build", "../home#x"], SyncMode::Auto)
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("home holds no flake.nix"),
            "{e:#}"
        );
        // `?dir=` names where the flake.nix must be.
        assert!(
            f.plan("repo", &["build", ".?dir=sub#x"], SyncMode::Auto)
                .is_err()
        );
        // nix searches up: a subdirectory of a flake is the flake.
        let p = f.plan("repo/sub", &["build"], SyncMode::Auto).unwrap();
        assert_eq!(p.sources[0].root, f.root().join("repo"));
        // An input may be a plain directory (`flake = false`), as nix allows.
        std::fs::create_dir_all(f.root().join("data")).unwrap();
        let p = f
            .plan(
                "repo",
                &["build", ".#x", "--override-input", "data", "../data"],
                SyncMode::Auto,
            )
            .unwrap();
        assert!(p.sources.iter().any(|s| s.root == f.root().join("data")));
        // An empty `nix repl` needs no flake, and gets nothing sent.
        let p = f.plan("home", &["repl"], SyncMode::Auto).unwrap();
        assert!(p.sources.is_empty());
    }

    #[test]
    fn build_in_a_git_subdirectory_maps_the_work_tree() {
        let f = Fixture::new();
        let p = f
            .plan("repo/sub", &["build", ".#pkg"], SyncMode::Auto)
            .unwrap();
        assert_eq!(p.sources.len(), 1);
        assert_eq!(p.sources[0].root, f.root().join("repo"));
        assert_eq!(p.sources[0].kind, SourceKind::Git);
        assert!(
            p.sources[0].sync_back,
            "cwd is inside the work tree: stateful"
        );
        let m = format!("/h/.cache/edict/mirrors/{}", p.sources[0].name);
        assert_eq!(
            p.render_words(&dirs()),
            vec![
                "build".to_string(),
                "--out-link".into(),
                "/h/.cache/edict/runs/r1/links/0/result".into(),
                format!("{m}/sub#pkg")
            ]
        );
        assert_eq!(p.render_cwd(&dirs()), format!("{m}/sub"));
        assert_eq!(
            p.links,
            vec![LinkSpec {
                local_base: f.root().join("repo/sub/result")
            }]
        );
    }

    #[test]
    fn stateless_use_from_another_directory() {
        let f = Fixture::new();
        let p = f
            .plan(
                "elsewhere",
                &["build", "../repo#x", "-o", "out"],
                SyncMode::Auto,
            )
            .unwrap();
        assert!(!p.sources[0].sync_back);
        assert_eq!(p.cwd, RemoteCwd::Run);
        assert_eq!(
            p.links,
            vec![LinkSpec {
                local_base: f.root().join("elsewhere/out")
            }]
        );
        let w = p.render_words(&dirs());
        assert_eq!(w[2..], ["-o", "/h/.cache/edict/runs/r1/links/0/result"]);
        // --sync forces it; --no-sync turns it off even inside.
        assert!(
            f.plan("elsewhere", &["build", "../repo#x"], SyncMode::Force)
                .unwrap()
                .sources[0]
                .sync_back
        );
        assert!(
            !f.plan("repo", &["build", ".#x"], SyncMode::Off)
                .unwrap()
                .sources[0]
                .sync_back
        );
    }

    #[test]
    fn hostile_local_paths_become_safe_remote_names() {
        let f = Fixture::new();
        let p = f
            .plan("", &["build", "./plain dir $x#a"], SyncMode::Auto)
            .unwrap();
        let name = &p.sources[0].name;
        assert!(name.starts_with("plain_dir__x-"), "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        );
        assert_eq!(p.sources[0].kind, SourceKind::Dir);
        assert!(p.render_words(&dirs())[3].ends_with(&format!("{name}#a")));
    }

    #[test]
    fn mirror_names_are_stable_and_distinct() {
        let a = mirror_name(Path::new("/p/proj"), SourceKind::Git, "m1");
        assert_eq!(a, mirror_name(Path::new("/p/proj"), SourceKind::Git, "m1"));
        assert_ne!(a, mirror_name(Path::new("/q/proj"), SourceKind::Git, "m1"));
        assert_ne!(a, mirror_name(Path::new("/p/proj"), SourceKind::Git, "m2"));
        assert_ne!(a, mirror_name(Path::new("/p/proj"), SourceKind::Dir, "m1"));
        assert_eq!(
            mirror_name(Path::new("/"), SourceKind::Dir, "m")
                .split('-')
                .next(),
            Some("root")
        );
        assert_eq!(safe_name(".hidden"), "_.hidden");
        assert_eq!(safe_name("-rf"), "_-rf");
    }

    #[test]
    fn path_and_git_file_refs_and_subdirs() {
        let f = Fixture::new();
        // path: is the directory itself, even inside a work tree.
        let p = f
            .plan("", &["build", "path:./repo/sub#x"], SyncMode::Auto)
            .unwrap();
        assert_eq!(
            (p.sources[0].kind, p.sources[0].root.clone()),
            (SourceKind::Dir, f.root().join("repo/sub"))
        );
        assert!(p.render_words(&dirs())[3].starts_with("path:/h/.cache/edict/mirrors/sub-"));
        let gf = format!("git+file://{}?dir=sub#x", f.root().join("repo").display());
        let p = f.plan("", &["build", &gf], SyncMode::Auto).unwrap();
        assert_eq!(p.sources[0].kind, SourceKind::Git);
        let w = &p.render_words(&dirs())[3];
        assert!(
            w.starts_with("git+file:///h/.cache/edict/mirrors/repo-") && w.ends_with("?dir=sub#x"),
            "{w}"
        );
        let err = f
            .plan(
                "",
                &[
                    "build",
                    &format!("git+file://{}", f.root().join("elsewhere").display()),
                ],
                SyncMode::Auto,
            )
            .unwrap_err();
        assert!(format!("{err:#}").contains("not inside a git work tree"));
        let p = f
            .plan("", &["build", "file:./src.tar.gz"], SyncMode::Auto)
            .unwrap();
        assert_eq!(p.sources[0].kind, SourceKind::File);
        assert!(p.render_words(&dirs())[3].ends_with("/src.tar.gz"));
    }

    #[test]
    fn remote_refs_and_values_are_untouched() {
        let f = Fixture::new();
        let line = ["run", "nixpkgs#hello", "--", "./x", "$(y)"];
        let p = f.plan("elsewhere", &line, SyncMode::Auto).unwrap();
        assert!(p.sources.is_empty());
        assert!(p.links.is_empty());
        assert_eq!(p.render_words(&dirs()), line.to_vec());
    }

    #[test]
    fn implicit_flake_override_input_and_files() {
        let f = Fixture::new();
        let p = f
            .plan("repo", &["flake", "update"], SyncMode::Auto)
            .unwrap();
        assert_eq!(p.sources.len(), 1);
        assert!(p.sources[0].sync_back);
        assert_eq!(p.render_words(&dirs()), vec!["flake", "update"]);
        let p = f
            .plan(
                "repo",
                &["build", "--override-input", "dep", "../elsewhere", ".#x"],
                SyncMode::Auto,
            )
            .unwrap();
        assert_eq!(p.sources.len(), 2);
        let w = p.render_words(&dirs());
        assert_eq!(w[4], "dep");
        assert!(w[5].starts_with("/h/.cache/edict/mirrors/elsewhere-"));
        let p = f
            .plan(
                "repo",
                &["build", "-f", "./default.nix", "hello", "--no-link"],
                SyncMode::Auto,
            )
            .unwrap();
        assert!(p.links.is_empty());
        let w = p.render_words(&dirs());
        assert!(
            w[2].ends_with("/default.nix") && w[2].starts_with("/h/.cache/edict/mirrors/repo-"),
            "{w:?}"
        );
        let err = f
            .plan("repo", &["build", "./missing#x"], SyncMode::Auto)
            .unwrap_err();
        assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
    }

    #[test]
    fn nix_build_and_nix_shell_send_their_expressions_and_make_result_links() {
        let f = Fixture::new();
        let build = Program::NixBuild;
        // No file: ./default.nix, in its git tree; run in its mirror; ./result comes back.
        std::fs::write(f.root().join("repo/sub/default.nix"), "{}").unwrap();
        let p = f.legacy("repo/sub", build, &["-A", "x"]).unwrap();
        assert_eq!(p.program, build);
        assert_eq!(p.sources.len(), 1);
        assert_eq!(p.sources[0].kind, SourceKind::Git);
        assert!(p.sources[0].sync_back);
        let repo = f.root().join("repo");
        assert_eq!(
            p.links,
            [LinkSpec {
                local_base: repo.join("sub/result")
            }]
        );
        let w = p.render_words(&dirs());
        assert_eq!(
            w[..4],
            [
                "--out-link",
                "/h/.cache/edict/runs/r1/links/0/result",
                "-A",
                "x"
            ]
        );
        // The file nix-build chose here, named there.
        assert!(
            w[4].starts_with("/h/.cache/edict/mirrors/repo-") && w[4].ends_with("/sub/default.nix"),
            "{w:?}"
        );
        assert!(p.render_cwd(&dirs()).ends_with("/sub"));
        // A file elsewhere, -o, -I with a local path and with a URL; `--arg`'s values stay.
        let p = f
            .legacy(
                "repo",
                build,
                &[
                    "../plain dir $x/flake.nix",
                    "-o",
                    "out",
                    "-I",
                    "np=../elsewhere",
                    "-I",
                    "nixpkgs=https://example.org/x.tar.gz",
                    "--arg",
                    "a",
                    "./not-a-file",
                ],
            )
            .unwrap();
        let w = p.render_words(&dirs());
        assert!(
            w[0].starts_with("/h/.cache/edict/mirrors/plain_dir__x-")
                && w[0].ends_with("/flake.nix"),
            "{w:?}"
        );
        assert_eq!(w[1..3], ["-o", "/h/.cache/edict/runs/r1/links/0/result"]);
        assert!(
            w[4].starts_with("np=/h/.cache/edict/mirrors/elsewhere-"),
            "{w:?}"
        );
        assert_eq!(
            w[5..],
            [
                "-I",
                "nixpkgs=https://example.org/x.tar.gz",
                "--arg",
                "a",
                "./not-a-file"
            ]
        );
        assert_eq!(
            p.links,
            [LinkSpec {
                local_base: repo.join("out")
            }]
        );
        // -E: the positionals are expressions; nothing is sent, no default.nix needed.
        let p = f
            .legacy(
                "elsewhere",
                build,
                &["-E", "import ./x.nix", "--no-out-link"],
            )
            .unwrap();
        assert!(p.sources.is_empty() && p.links.is_empty());
        assert_eq!(
            p.render_words(&dirs()),
            ["-E", "import ./x.nix", "--no-out-link"]
        );
        // nix-shell: shell.nix before default.nix, no result link, `--run`'s line untouched.
        std::fs::write(f.root().join("repo/shell.nix"), "{}").unwrap();
        let p = f
            .legacy(
                "repo",
                Program::NixShell,
                &["--run", "./build.sh --out ./x"],
            )
            .unwrap();
        assert!(p.links.is_empty());
        let w = p.render_words(&dirs());
        assert_eq!(w[..2], ["--run", "./build.sh --out ./x"]);
        assert!(w[2].ends_with("/shell.nix"), "{w:?}");
        // -p: package names, not files.
        let p = f
            .legacy("elsewhere", Program::NixShell, &["-p", "hello", "git"])
            .unwrap();
        assert!(p.sources.is_empty());
        assert!(
            p.notes[0].contains("is in no git work tree"),
            "{:?}",
            p.notes
        );
        // Inside a work tree, what `--run ./test.sh` or `import ./.` names is sent, and the
        // command runs in its mirror.
        let p = f
            .legacy(
                "repo/sub",
                Program::NixShell,
                &["-p", "hello", "--run", "./t.sh"],
            )
            .unwrap();
        assert_eq!(p.sources.len(), 1);
        assert!(p.sources[0].sync_back);
        assert!(p.render_cwd(&dirs()).ends_with("/sub"));
        assert_eq!(p.render_words(&dirs()), ["-p", "hello", "--run", "./t.sh"]);
        // No file where nix would look: said before anything is sent.
        let err = f.legacy("elsewhere", build, &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("nix-build reads default.nix in the current directory"),
            "{err:#}"
        );
    }

    #[test]
    fn flake_lock_path_inputs_outside_are_pinned_or_overridden() {
        let f = Fixture::new();
        let lib = f.root().join("elsewhere");
        let git = f.root().join("gone repo");
        let lock = serde_json::json!({
            "nodes": {
                "lib": {"locked": {"type": "path", "path": lib.to_string_lossy(), "lastModified": 1, "narHash": "sha256-c+N+jhB55JVsGuaUZzpnh9kMu29aZEryBO7HpSDN+HI="}, "original": {"type": "path", "path": lib.to_string_lossy()}},
                "rep": {"locked": {"type": "git", "url": format!("file://{}", git.display()), "rev": "a3e7314881398b1022548dbd51db494538dfabee", "ref": "master", "dir": "sub", "revCount": 1, "lastModified": 1, "narHash": "sha256-FzPcjjJ2mDj77oZxqIOPat7IQ+7CEOL2Fp6ciHQRLdY="}},
                "loose": {"locked": {"type": "path", "path": lib.to_string_lossy()}},
                "inner": {"locked": {"type": "path", "path": "./sub"}, "original": {"type": "path", "path": "./sub"}},
                "np": {"locked": {"type": "github", "owner": "o", "repo": "r", "rev": "x"}},
                "root": {"inputs": {"lib": "lib", "rep": "rep", "loose": "loose", "inner": "inner", "np": "np", "alias": ["lib"]}}
            },
            "root": "root", "version": 7
        });
        std::fs::write(f.root().join("repo/flake.lock"), lock.to_string()).unwrap();
        let p = f.plan("repo", &["build", ".#x"], SyncMode::Auto).unwrap();
        // Pinned by narHash: HOST gets the store path, whether or not the tree is still
        // here (the git repo is gone); the lock is left alone.
        let pins: Vec<(&str, &str)> = p
            .pinned
            .iter()
            .map(|x| (x.input.as_str(), x.store_path.as_str()))
            .collect();
        assert_eq!(
            pins,
            [
                ("lib", "/nix/store/x3majs0p416rwz92ygvc4c4z2gpy867w-source"),
                ("rep", "/nix/store/52sabl4i1zjn7497z4ryf591rhjkbrss-source"),
            ]
        );
        let locked: serde_json::Value = serde_json::from_str(&p.pinned[1].locked).unwrap();
        assert_eq!(locked["url"], format!("file://{}", git.display()));
        assert_eq!(locked["rev"], "a3e7314881398b1022548dbd51db494538dfabee");
        assert!(
            locked.get("dir").is_none(),
            "fetchTree refuses `dir`: {locked}"
        );
        // Not pinned (no narHash): synced and overridden, as before.
        assert_eq!(p.sources.len(), 2, "{:?}", p.sources);
        let w = p.render_words(&dirs());
        assert_eq!(&w[1..3], ["--override-input", "loose"]);
        assert!(
            w[3].starts_with("path:/h/.cache/edict/mirrors/elsewhere-"),
            "{w:?}"
        );
        assert!(!p.sources[1].sync_back);
        // The user's own override wins over the lock.
        let p = f
            .plan(
                "repo",
                &["build", ".#x", "--override-input", "lib", "github:o/r"],
                SyncMode::Auto,
            )
            .unwrap();
        assert_eq!(p.pinned.len(), 1);
        // Updating the lock file can't use overrides (they imply --no-write-lock-file).
        let p = f
            .plan("repo", &["flake", "update"], SyncMode::Auto)
            .unwrap();
        assert_eq!(p.sources.len(), 1);
        assert!(p.pinned.is_empty());
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        assert_eq!(p.unseen.len(), 3, "{:?}", p.unseen);
        assert_eq!(p.unseen[0].1, lib);
    }

    #[test]
    fn the_version_is_found_after_a_banner() {
        assert_eq!(version_line("nix (Nix) 2.8.0\n"), "nix (Nix) 2.8.0");
        assert_eq!(
            version_line("Welcome to hubble\nTuesday\nnix (Lix) 2.91.1\n"),
            "nix (Lix) 2.91.1"
        );
        assert_eq!(version_line("something else\n"), "something else");
        assert_eq!(version_line(""), "");
    }

    #[test]
    fn store_paths_are_what_a_link_leads_into() {
        let p = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12";
        let of = |t: &str| store_path_of(Path::new(t), "/nix/store");
        assert_eq!(of(p).as_deref(), Some(p));
        assert_eq!(of(&format!("{p}/bin/hello")).as_deref(), Some(p));
        for bad in [
            "/nix/store",
            "/nix/store/..",
            "/nix/store/short-x",
            "/etc/passwd",
            "nix/store/0123456789abcdfghijklmnpqrsvwxyz-x",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x/../../etc",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-a b",
        ] {
            assert_eq!(of(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_locked_tree_has_the_store_path_nix_gives_it() {
        // Values from `nix-store --print-fixed-path --recursive sha256 HASH source`.
        assert_eq!(
            source_store_path(
                "/nix/store",
                "sha256-FzPcjjJ2mDj77oZxqIOPat7IQ+7CEOL2Fp6ciHQRLdY="
            )
            .as_deref(),
            Some("/nix/store/52sabl4i1zjn7497z4ryf591rhjkbrss-source")
        );
        assert_eq!(
            source_store_path(
                "/gnu/store",
                "sha256-FzPcjjJ2mDj77oZxqIOPat7IQ+7CEOL2Fp6ciHQRLdY="
            )
            .as_deref(),
            Some("/gnu/store/dygmsrs3m44qy4xmj1002vmxxmr5907z-source")
        );
        assert_eq!(source_store_path("/nix/store", "sha256-short"), None);
        assert_eq!(source_store_path("/nix/store", "sha512-x"), None);
        let env = [("NIX_STORE_DIR".to_string(), "/gnu/store/".to_string())];
        assert_eq!(store_dir(&env), "/gnu/store");
        assert_eq!(store_dir(&[]), "/nix/store");
    }

    #[test]
    fn input_files_send_the_file_or_its_git_tree_never_a_home_or_tmp() {
        let f = Fixture::new();
        std::fs::write(f.root().join("elsewhere/expr.nix"), "1").unwrap();
        std::fs::write(f.root().join("elsewhere/x.lock"), "{}").unwrap();
        // `-f` outside git: its directory (an expression imports its neighbours).
        let p = f
            .plan(
                "repo",
                &["build", "-f", "../elsewhere/expr.nix", "x"],
                SyncMode::Auto,
            )
            .unwrap();
        assert!(
            p.sources
                .iter()
                .any(|s| s.root == f.root().join("elsewhere") && s.kind == SourceKind::Dir)
        );
        let w = p.render_words(&dirs());
        assert!(w.iter().any(|w| w.ends_with("/expr.nix")), "{w:?}");
        // A lock file: the file alone.
        let p = f
            .plan(
                "repo",
                &[
                    "build",
                    "--reference-lock-file",
                    "../elsewhere/x.lock",
                    ".#x",
                ],
                SyncMode::Auto,
            )
            .unwrap();
        let file = p
            .sources
            .iter()
            .find(|s| s.kind == SourceKind::File)
            .unwrap();
        assert_eq!(file.root, f.root().join("elsewhere/x.lock"));
        assert!(
            p.sources
                .iter()
                .all(|s| s.root != f.root().join("elsewhere"))
        );
        // Inside a git work tree: the tree (tracked files), the file's path in it.
        std::fs::write(f.root().join("repo/sub/e.nix"), "1").unwrap();
        let p = f
            .plan(
                "elsewhere",
                &["build", "-f", "../repo/sub/e.nix"],
                SyncMode::Auto,
            )
            .unwrap();
        assert!(
            p.sources
                .iter()
                .any(|s| s.root == f.root().join("repo") && s.kind == SourceKind::Git)
        );
        // In a home: `-f ~/default.nix` sends the file alone, with a note; `-f ~` (or a
        // directory above a home) is refused.
        let home = f.root().join("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::write(home.join("default.nix"), "1").unwrap();
        let env = [("HOME".to_string(), home.display().to_string())];
        let plan_in = |cwd: &Path, line: &[&str]| {
            let words: Vec<String> = line.iter().map(|w| w.to_string()).collect();
            plan(
                &classify(&words),
                &Local {
                    cwd,
                    machine_id: "m1",
                    env: &env,
                    declared_inputs: &|_| None,
                },
                SyncMode::Auto,
            )
        };
        let p = plan_in(&home, &["build", "-f", "./default.nix"]).unwrap();
        assert_eq!(p.sources.len(), 1);
        assert_eq!(p.sources[0].kind, SourceKind::File);
        assert!(
            p.notes.iter().any(|n| n.contains("sending only")),
            "{:?}",
            p.notes
        );
        for cwd in [home.clone(), f.root()] {
            let e = plan_in(&cwd, &["build", "-f", "."]).unwrap_err();
            assert!(format!("{e:#}").contains("will not send"), "{e:#}");
        }
    }

    #[test]
    fn an_output_file_is_written_in_the_run_dir_and_its_directory_never_sent() {
        let f = Fixture::new();
        let p = f
            .plan(
                "repo",
                &["flake", "lock", "--output-lock-file", "/tmp/x.lock"],
                SyncMode::Auto,
            )
            .unwrap();
        assert_eq!(p.outputs, [PathBuf::from("/tmp/x.lock")]);
        assert!(p.sources.iter().all(|s| s.root != Path::new("/tmp")));
        let w = p.render_words(&dirs());
        assert!(
            w.contains(&"/h/.cache/edict/runs/r1/outputs/0".to_string()),
            "{w:?}"
        );
    }

    #[test]
    fn what_acts_on_host_is_said_with_its_name() {
        let f = Fixture::new();
        let notes =
            |cwd: &str, line: &[&str]| f.plan(cwd, line, SyncMode::Auto).unwrap().notes_for("box");
        let has = |notes: &[String], text: &str| notes.iter().any(|n| n.contains(text));
        assert!(has(
            &notes("repo", &["profile", "install", ".#x"]),
            "changes box's profile"
        ));
        assert!(has(
            &notes("repo", &["build", "--keep-failed", ".#x"]),
            "failed builds are kept on box"
        ));
        // A lock written for a flake the cwd is not in stays there, and that is said.
        let away = notes("repo", &["flake", "update", "../elsewhere"]);
        assert!(
            has(&away, "stays on box") && has(&away, "--sync"),
            "{away:?}"
        );
        assert!(notes("repo", &["flake", "update"]).is_empty());
        assert!(
            notes("repo", &["build", ".#x"])
                .iter()
                .all(|n| !n.contains("{host}"))
        );
    }

    #[test]
    fn locks_for_old_nix_lose_only_the_new_style_relative_nodes() {
        let lock = serde_json::json!({
            "nodes": {
                "sub": {"locked": {"type": "path", "path": "./sub", "parent": []}, "original": {"type": "path", "path": "./sub"}},
                "old": {"locked": {"type": "path", "path": "./old", "narHash": "sha256-x", "lastModified": 1}},
                "abs": {"locked": {"type": "path", "path": "/abs"}},
                "np": {"locked": {"type": "github", "owner": "o", "repo": "r", "rev": "x"}, "inputs": {"sub": "sub"}},
                "root": {"inputs": {"sub": "sub", "old": "old", "abs": "abs", "np": "np", "alias": ["np", "sub"]}}
            },
            "root": "root", "version": 7
        });
        let fixed: serde_json::Value =
            serde_json::from_str(&lock_for_old_nix(&lock.to_string()).unwrap()).unwrap();
        let nodes = fixed["nodes"].as_object().unwrap();
        assert!(!nodes.contains_key("sub"));
        for kept in ["old", "abs", "np", "root"] {
            assert!(nodes.contains_key(kept), "{kept}");
        }
        let root: Vec<&String> = nodes["root"]["inputs"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(root, ["abs", "alias", "np", "old"]);
        assert!(nodes["np"]["inputs"].as_object().unwrap().is_empty());
        // Nothing to change, or not a lock: None.
        assert_eq!(lock_for_old_nix(&fixed.to_string()), None);
        assert_eq!(lock_for_old_nix("not json"), None);
    }

    #[test]
    fn lock_inputs_that_flake_nix_does_not_declare_are_never_sent() {
        let mut f = Fixture::new();
        let (lib, stray) = (f.root().join("elsewhere"), f.root().join("plain dir $x"));
        let node =
            |p: &Path| serde_json::json!({"locked": {"type": "path", "path": p.to_string_lossy()}});
        let lock = serde_json::json!({
            "nodes": {
                "lib": node(&lib),
                "stray": node(&stray),
                "root": {"inputs": {"lib": "lib", "stray": "stray"}}
            },
            "root": "root", "version": 7
        });
        std::fs::write(f.root().join("repo/flake.lock"), lock.to_string()).unwrap();
        f.declared = Some(vec!["lib".into(), "nixpkgs".into()]);
        let p = f.plan("repo", &["build", ".#x"], SyncMode::Auto).unwrap();
        let roots: Vec<&Path> = p.sources.iter().map(|s| s.root.as_path()).collect();
        assert_eq!(roots, [f.root().join("repo").as_path(), lib.as_path()]);
        // When nix here cannot tell, every local input of the lock goes, as before.
        f.declared = None;
        let p = f.plan("repo", &["build", ".#x"], SyncMode::Auto).unwrap();
        assert_eq!(p.sources.len(), 3);
    }
}
