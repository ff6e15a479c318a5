//! Steps on HOST around the sync: find nix and rsync there (even off the non-interactive
//! PATH), make the cache and run directories, lock the mirrors for the whole run (step 3's
//! precondition), and run the nix command itself (step 4) with its exit code kept.
//!
//! The lock is held by one ssh session that stays open for the run: when edict closes its
//! end (or dies), the session ends, the locks are released and the run's scratch directory on
//! HOST is removed, so nothing is left behind however edict stops. Meanwhile that session is
//! a shell reading from edict: step 5 runs in it, without opening another session.

use crate::exec::{self, quote};
use crate::mapping::{Plan, RemoteDirs};
use crate::nixargs::Program;
use crate::problem::{Kind, Problem};
use crate::scripts::{self, one_line};
use crate::signals::Signals;
use crate::ssh::{Connection, Tty, ssh_failure};
use anyhow::{Result, bail};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

/// Where nix looks for itself in a non-interactive login, after PATH: a multi-user install's
/// default profile, a single-user profile, NixOS, and home-manager/NixOS per-user profiles.
pub const NIX_PLACES: &str = "/nix/var/nix/profiles/default/bin:$HOME/.nix-profile/bin:/run/current-system/sw/bin:/etc/profiles/per-user/$USER/bin";

/// A shell line that runs `script` in sh with `words` as its positional parameters; the
/// words are shell words already (quoted with [`quote`], or expansions such as `"$c"`).
pub fn call(script: &str, words: &[&str]) -> String {
    let mut line = format!("sh -c {} sh", quote(&one_line(script)));
    for w in words {
        line.push(' ');
        line.push_str(w);
    }
    line
}

/// The flags that make any nix ≥ 2.4 accept flake commands, whatever its nix.conf says.
pub const FLAKE_FLAGS: [&str; 2] = ["--extra-experimental-features", "nix-command flakes"];

/// What the probe found on HOST.
#[derive(Clone, Debug)]
pub struct RemoteEnv {
    pub nix: String,
    pub nix_version: String,
    pub rsync: Option<String>,
    /// Its `--version` line.
    pub rsync_version: String,
    pub dirs: RemoteDirs,
    /// The login shell there (`$SHELL` of the ssh session).
    pub shell: String,
    /// The mirrors (by name) that hold exactly what their source is now: nothing is sent.
    pub unchanged: std::collections::BTreeSet<String>,
}

impl RemoteEnv {
    /// Whether HOST's nix reads a relative `path:` input locked without a narHash (the form
    /// Nix 2.26 introduced, with a `parent`): CppNix 2.26 and later. Older Nix and Lix refuse
    /// such a lock ("lockfile contains mutable lock").
    pub fn reads_relative_locks(&self) -> bool {
        crate::mapping::reads_relative_locks(&self.nix_version)
    }

    /// `nix-store` beside `nix`: what `nix copy --from ssh://` runs on HOST.
    pub fn nix_store(&self) -> String {
        sibling(&self.nix, "nix-store")
    }
}

/// A program in the same directory as `path` (`/x/bin/nix` → `/x/bin/nix-store`).
pub fn sibling(path: &str, program: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{program}"),
        None => program.to_string(),
    }
}

/// The session holding the mirror locks; dropping it releases them and cleans up HOST.
pub struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// What the session's shell prints after each script edict gives it. Never the output of
/// a script: those print NUL-separated names, all of them starting with `./`, a digit or `/`.
const END: &[u8] = b"\0EDICT-END\0";

/// The line the session's shell reads for [`Session::ask`].
fn ask_line(script: &str, words: &[&str]) -> String {
    let text = quote(&one_line(script));
    let mut all = vec!["\"$r\"", &text];
    all.extend_from_slice(words);
    format!("{}\n", call(scripts::ASK, &all))
}

impl Session {
    /// The link's round trip: a script asked of the session's shell and its answer (no new
    /// session, no login shell reading its rc files: one round trip and a `sh` there).
    pub fn round_trip(&mut self, conn: &Connection) -> Result<Duration> {
        let start = Instant::now();
        self.ask(conn, "measuring the link", "true", &[])?;
        Ok(start.elapsed())
    }

    /// Runs `script` with `words` (shell words, as for [`call`]; `"$r"` is the run dir) in
    /// the session's shell on HOST, stdin closed (see `scripts/ask.sh`), and returns its
    /// stdout.
    pub fn ask(
        &mut self,
        conn: &Connection,
        step: &str,
        script: &str,
        words: &[&str],
    ) -> Result<Vec<u8>> {
        use std::io::Write as _;
        let lost = || conn.lost(step, "the ssh session holding the run was lost");
        let stdin = self.stdin.as_mut().ok_or_else(lost)?;
        let line = ask_line(script, words);
        let place = format!(
            "{}: the session holding the run, in its run dir $r",
            conn.transport.label
        );
        exec::trace(&place, line.trim_end(), scripts::shown);
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|_| lost())?;
        let mut out = Vec::new();
        while !out.ends_with(END) {
            if self.stdout.read_until(0, &mut out).unwrap_or(0) == 0 {
                return Err(lost().into());
            }
        }
        out.truncate(out.len() - END.len());
        Ok(out)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.stdin.take()); // EOF: the remote side removes the run dir and unlocks
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Probes HOST, prepares its directories and takes the locks of every mirror the plan uses.
/// One round trip; waits (with a message) while another edict run holds a lock.
///
/// `fingerprints` are (source index, its fingerprint now, see `sync::survey`): the mirrors
/// still as sent from a source with that fingerprint come back in [`RemoteEnv::unchanged`].
pub fn prepare(
    conn: &Connection,
    plan: &Plan,
    run_id: &str,
    fingerprints: &[(usize, String)],
    signals: &Signals,
) -> Result<(RemoteEnv, Session)> {
    let host = &conn.transport.label;
    let script = prepare_script(plan, run_id, fingerprints);
    let (fields, session) = match lock(conn, &script, signals) {
        Err(e) if e.is::<Stale>() => {
            conn.renew()?;
            lock(conn, &script, signals)?
        }
        other => other?,
    };
    let mut env = env_from(host, &fields, run_id)?;
    exec::debug(format_args!(
        "{host}: {} at {}, rsync at {}, cache {}",
        env.nix_version,
        env.nix,
        env.rsync.as_deref().unwrap_or("(none)"),
        env.dirs.mirrors
    ));
    if !plan.sources.is_empty() {
        let version = fields.get("rsyncv").cloned().unwrap_or_default();
        let (path, version) = choose_rsync(host, env.rsync.take(), &version, || other_rsync(conn))
            .map_err(|p| anyhow::Error::new(*p))?;
        exec::debug(format_args!("{host}: {path}: {}", version.trim()));
        env.rsync = Some(path);
        env.rsync_version = version;
    }
    Ok((env, session))
}

/// A kept connection that did not carry the first word of the probe in time (see `keep`).
#[derive(Debug)]
struct Stale;

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the kept connection did not answer")
    }
}

impl std::error::Error for Stale {}

/// Runs the probe-and-lock script (see [`prepare_script`]) and reads its findings until
/// the mirrors are locked: the `EDICT-key value` fields, and the session that holds the
/// locks. A failure before that is explained (ssh's, a full disk, a csh login shell).
fn lock(
    conn: &Connection,
    script: &str,
    signals: &Signals,
) -> Result<(std::collections::HashMap<String, String>, Session)> {
    let host = &conn.transport.label;
    // Its own process group: Ctrl-C at a terminal must not end this session, whose end
    // makes HOST remove the run dir (and the pid that `interrupt` needs) while the command
    // may still run there. edict ends the session itself.
    let mut child = conn.ssh(Tty::No, script).spawn(|c| {
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
    })?;
    let stdin = child.stdin.take();
    let stdout = BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| bug(host, "ssh's stdout was not piped"))?,
    );
    // The lines are read on a thread so that Ctrl-C can end a wait for another run's lock:
    // killing our ssh would not do it (a mux client hands its pipes to the master, which
    // keeps them open while HOST waits). The thread hands the reader back once locked.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut stdout = stdout;
        let mut line = String::new();
        while matches!(stdout.read_line(&mut line), Ok(n) if n > 0) {
            let l = line.trim_end_matches('\n').to_string();
            let last = l == "EDICT-locked";
            if tx.send(l).is_err() || last {
                break;
            }
            line.clear();
        }
        stdout
    });

    let mut fields = std::collections::HashMap::new();
    let mut locked = false;
    let mut waited = false;
    // A kept master must show it still reaches HOST: any line from there will do.
    let started = Instant::now();
    let mut heard = !conn.reused();
    loop {
        let line = match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                heard = true;
                line
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if signals.caught() => {
                let _ = child.kill();
                bail!("{host}: preparing the run: interrupted");
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                if !heard && started.elapsed() > crate::keep::ANSWER_WITHIN =>
            {
                // The reader stays blocked until the master goes (`Connection::renew`).
                let _ = child.kill();
                let _ = child.wait();
                return Err(Stale.into());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        // Anything else is stray output of the login shell (rc files), which edict ignores.
        let Some(rest) = line.strip_prefix("EDICT-") else {
            continue;
        };
        let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
        match key {
            "waiting" => {
                waited = true;
                exec::info(format_args!(
                    "{host}: another edict run is using the same source there; waiting for it to finish"
                ));
            }
            "locked" => {
                locked = true;
                break;
            }
            _ => {
                fields.insert(key.to_string(), value.to_string());
            }
        }
    }
    let stdout = reader
        .join()
        .map_err(|p| bug(host, &crate::exec::panic_text(p.as_ref())))?;
    if !locked {
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let status = child.wait()?;
        if status.code() == Some(255) {
            return Err(ssh_failure(host, "preparing the run", &stderr));
        }
        let step = "preparing the run";
        if let Some(err) = fields.get("error") {
            return Err(Problem::new(
                host,
                &format!(
                    "preparing {}",
                    fields
                        .get("cache")
                        .map_or("the cache directory", |s| s.as_str())
                ),
                err.clone(),
                "check free space and permissions there (`df -h ~; ls -ld ~/.cache`)",
            )
            .into());
        }
        return Err(Problem::new(
            host,
            step,
            format!("the remote shell stopped early ({status})"),
            format!(
                "run `ssh {host} sh -c true` to see what the login does, or `edict doctor {host}`"
            ),
        )
        .said("the shell", stderr)
        .into());
    }
    if waited {
        exec::info(format_args!("{host}: the other run finished; going on"));
        // What the sources were before the wait is not what they are now: all are sent.
        fields.remove("same");
    }
    // Keep draining stderr so a chatty rc file can't block the holder on a full pipe.
    if let Some(mut e) = child.stderr.take() {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut e, &mut std::io::sink());
        });
    }
    let session = Session {
        child,
        stdin,
        stdout,
    };
    Ok((fields, session))
}

/// A step of preparing the run failed in a way edict did not expect (a bug).
fn bug(host: &str, what: &str) -> Problem {
    Problem::new(
        host,
        "preparing the run",
        what,
        "report it, with the output of `edict -vv …`",
    )
}

/// What the probe found, as the remote environment of the run.
fn env_from(
    host: &str,
    fields: &std::collections::HashMap<String, String>,
    run_id: &str,
) -> Result<RemoteEnv> {
    let get = |k: &str| fields.get(k).cloned().filter(|v| !v.is_empty());
    let nix = get("nix").ok_or_else(|| {
        Problem::new(
            host,
            "finding nix",
            format!(
                "there is no `nix` there (looked on the PATH of a non-interactive login and in {})",
                NIX_PLACES.replace(':', ", ")
            ),
            format!("install Nix on {host}, or make it reachable from `ssh {host} nix --version`"),
        )
    })?;
    let cache = get("cache").ok_or_else(|| {
        Problem::new(
            host,
            "preparing the run",
            "the probe there did not report edict's cache directory",
            format!("check that `ssh {host} sh -c 'echo $HOME'` prints a home directory"),
        )
    })?;
    Ok(RemoteEnv {
        unchanged: get("same")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        shell: get("shell").unwrap_or_default(),
        rsync_version: get("rsyncv").unwrap_or_default(),
        nix_version: get("version").unwrap_or_default(),
        nix,
        rsync: get("rsync"),
        dirs: RemoteDirs {
            mirrors: format!("{cache}/mirrors"),
            run: format!("{cache}/runs/{run_id}"),
        },
    })
}

/// The rsync to use there: the one on the PATH (`on_path`, whose `--version` begins with
/// `version`) when edict can use it; else, as a Mac builder's openrsync or 2.6.9 may sit
/// before a good one in a Nix profile or Homebrew's directory, the first usable one of
/// `others` (asked only then: one more round trip); else an error naming the one found.
/// The chosen one's path and `--version` line.
pub fn choose_rsync(
    host: &str,
    on_path: Option<String>,
    version: &str,
    others: impl FnOnce() -> Vec<(String, String)>,
) -> Result<(String, String), Box<Problem>> {
    if let Some(path) = on_path
        .as_ref()
        .filter(|_| crate::rsync::unfit(version).is_none())
    {
        return Ok((path.clone(), version.to_string()));
    }
    let found = others();
    if let Some(chosen) = found.iter().find(|(_, v)| crate::rsync::unfit(v).is_none()) {
        exec::debug(format_args!("{host}: using the rsync at {}", chosen.0));
        return Ok(chosen.clone());
    }
    let problem = |what: String| {
        Box::new(Problem {
            host: host.to_string(),
            step: "syncing sources".into(),
            what,
            said: None,
            fix: crate::rsync::fix(Some(host)),
            kind: Kind::Edict,
        })
    };
    let (what, line) = match on_path {
        Some(path) => (path, version.trim().to_string()),
        None => match found.first() {
            Some((p, v)) => (p.clone(), v.trim().to_string()),
            None => return Err(problem("rsync is not installed there".into())),
        },
    };
    Err(problem(format!(
        "the rsync there ({what}: {line}) cannot be used: {}",
        crate::rsync::unfit(&line).unwrap_or_default()
    )))
}

/// A shell line (with its `; `) that adopts the sent index in `mirror` (see
/// `scripts/adopt_index.sh`).
fn adopt_index_script(mirror: &str) -> String {
    format!("{}; ", call(scripts::ADOPT_INDEX, &[&quote(mirror)]))
}

/// The rsyncs HOST has outside its non-interactive PATH (Nix profiles, Homebrew), each with
/// the first line of its `--version`.
pub fn other_rsync(conn: &Connection) -> Vec<(String, String)> {
    // Each place a double-quoted word: `$HOME` and `$USER` expand there.
    let dirs: Vec<String> = NIX_PLACES
        .split(':')
        .chain(["/opt/homebrew/bin", "/usr/local/bin"])
        .map(|d| format!("\"{d}\""))
        .collect();
    let words: Vec<&str> = dirs.iter().map(String::as_str).collect();
    let script = call(scripts::FIND_RSYNC, &words);
    conn.ssh(Tty::No, &script)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_once('\t'))
                .map(|(p, v)| (p.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Mirrors on HOST that no run used for this many days are removed by the next run there.
pub const MIRROR_DAYS: u32 = 30;

/// edict's cache directory on HOST, as a shell word that expands there.
pub const CACHE_WORD: &str = "\"${XDG_CACHE_HOME:-$HOME/.cache}/edict\"";

/// [`NIX_PLACES`] as a shell word that expands there (`$HOME`, `$USER`).
pub fn places_word() -> String {
    format!("\"{NIX_PLACES}\"")
}

/// The words that remove the mirrors unused for more than `days` days (all when `None`)
/// and held by no run (see `scripts/expire.sh`): the places where flock may be (on
/// nix-darwin: runs and `edict gc` must see the same one, or they would lock differently),
/// the cache, the minutes.
fn expire_words(days: Option<u32>) -> [String; 3] {
    let minutes = days.map_or(String::new(), |d| (u64::from(d) * 1440).to_string());
    [places_word(), CACHE_WORD.to_string(), quote(&minutes)]
}

/// `edict gc`'s script: [`expire_words`] for `days`.
pub fn expire_script(days: Option<u32>) -> String {
    let words = expire_words(days);
    call(
        scripts::EXPIRE,
        &words.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

/// The probe-and-lock line (see `scripts/prepare.sh`): prints `EDICT-key value` lines,
/// then holds the locks while it reads edict's scripts (see `scripts/hold.sh`).
fn prepare_script(plan: &Plan, run_id: &str, fingerprints: &[(usize, String)]) -> String {
    let mirror_names: Vec<&str> = plan.sources.iter().map(|s| s.name.as_str()).collect();
    let checks: Vec<(String, String, String)> = fingerprints
        .iter()
        .map(|(i, f)| {
            let kind = mirror_kind(plan, *i).to_string();
            (plan.sources[*i].name.clone(), kind, f.clone())
        })
        .collect();
    prepare_line(&mirror_names, run_id, &checks)
}

fn prepare_line(
    mirror_names: &[&str],
    run_id: &str,
    checks: &[(String, String, String)],
) -> String {
    let [places, cache, minutes] = expire_words(Some(MIRROR_DAYS));
    // Always in the same order, so two runs that share two mirrors never hold one each.
    let mut names: Vec<String> = mirror_names.iter().map(|n| quote(n)).collect();
    names.sort();
    names.dedup();
    let mut words = vec![
        places,
        cache,
        quote(run_id),
        minutes,
        quote(&one_line(scripts::EXPIRE)),
        quote(&one_line(scripts::HOLD)),
        quote(&one_line(scripts::STOP)),
        quote(&unchanged_line(checks)),
        quote(&one_line(scripts::FINGERPRINT)),
    ];
    words.extend(names);
    call(
        scripts::PREPARE,
        &words.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

/// The line the holder evaluates once locked (`$c` is the cache there, and the fingerprint
/// script is in `EDICT_FINGERPRINT`, from prepare.sh's ninth parameter, so that the line
/// holds no script inside a script; see `scripts/unchanged.sh`); empty when there is
/// nothing to check. `checks` are (mirror
/// name, `git` for a git mirror, the source's fingerprint).
fn unchanged_line(checks: &[(String, String, String)]) -> String {
    if checks.is_empty() {
        return String::new();
    }
    let mut words = vec!["\"$EDICT_FINGERPRINT\"".to_string(), "\"$c\"".to_string()];
    for (name, kind, fingerprint) in checks {
        words.push(quote(name));
        words.push(quote(kind));
        words.push(quote(fingerprint));
    }
    call(
        scripts::UNCHANGED,
        &words.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

/// The remote command's words: nix (flakes on) or nix-build/nix-shell beside it, the
/// rewritten arguments.
pub fn command_words(env: &RemoteEnv, plan: &Plan) -> Vec<String> {
    program_words(plan, &env.nix)
        .into_iter()
        .chain(plan.render_words(&env.dirs))
        .collect()
}

/// The words before the arguments: forwarded variables, the program (`nix` is HOST's nix,
/// the legacy commands are found beside it), and for nix the flags that turn flakes on.
pub fn program_words(plan: &Plan, nix: &str) -> Vec<String> {
    let mut words = plan.env_words();
    match plan.program {
        Program::Nix => {
            words.push(nix.to_string());
            words.extend(FLAKE_FLAGS.iter().map(|s| s.to_string()));
        }
        legacy => words.push(sibling(nix, legacy.name())),
    }
    words
}

/// The line that runs the command (see `scripts/run.sh`), after adopting the sent git
/// indexes, stamping the mirrors as sent (`stamps`: source index, fingerprint of what was
/// sent; see `scripts/stamp.sh`) and taking the snapshot; `exec`, so that the pid it
/// records is the session's own shell, as a Ctrl-C at a terminal there would see it.
fn run_script(env: &RemoteEnv, plan: &Plan, stamps: &[(usize, String)]) -> String {
    let index: String = (0..plan.sources.len())
        .filter(|&i| plan.sources[i].kind == crate::mapping::SourceKind::Git)
        .map(|i| adopt_index_script(&plan.mirror(i, &env.dirs)))
        .collect();
    let stamps = stamp_script(env, plan, stamps);
    let mut words = vec![quote(&env.dirs.run), quote(&plan.render_cwd(&env.dirs))];
    words.extend(command_words(env, plan).iter().map(|w| quote(w)));
    format!(
        "{index}{stamps}{snapshot}exec {}",
        call(
            scripts::RUN,
            &words.iter().map(String::as_str).collect::<Vec<_>>()
        ),
        snapshot = snapshot_script(&env.dirs.run, &sync_back_mirrors(env, plan)),
    )
}

/// A shell line (with its `; `) that records what each mirror was made from (see
/// `scripts/stamp.sh`), for the next run to send nothing to a mirror still as sent.
fn stamp_script(env: &RemoteEnv, plan: &Plan, stamps: &[(usize, String)]) -> String {
    if stamps.is_empty() {
        return String::new();
    }
    let mut words = vec![quote(&one_line(scripts::FINGERPRINT))];
    for (i, fingerprint) in stamps {
        let mirror = plan.mirror(*i, &env.dirs);
        words.push(quote(&mirror));
        words.push(quote(mirror_kind(plan, *i)));
        words.push(quote(fingerprint));
        words.push(quote(&format!("{mirror}.stamp")));
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    format!("{}; ", call(scripts::STAMP, &words))
}

/// The words of `scripts/restamp.sh` that put the result links `links` (relative to source
/// `src`'s root, each with its target) in its mirror and stamp it as made from a source
/// whose fingerprint is now `now`, if it is still as stamped from `was`.
pub fn restamp_words(
    env: &RemoteEnv,
    plan: &Plan,
    src: usize,
    (was, now): (&str, &str),
    links: &[(String, String)],
) -> Vec<String> {
    let mirror = plan.mirror(src, &env.dirs);
    let mut words = vec![
        quote(&one_line(scripts::FINGERPRINT)),
        quote(&mirror),
        quote(mirror_kind(plan, src)),
        quote(&format!("{mirror}.stamp")),
        quote(was),
        quote(now),
    ];
    for (name, target) in links {
        words.push(quote(name));
        words.push(quote(target));
    }
    words
}

/// `git` for a git mirror (whose own index the fingerprint leaves out), else `dir`.
fn mirror_kind(plan: &Plan, src: usize) -> &'static str {
    match plan.sources[src].kind {
        crate::mapping::SourceKind::Git => "git",
        _ => "dir",
    }
}

/// The mirrors whose changes come back: (source index, mirror path).
fn sync_back_mirrors(env: &RemoteEnv, plan: &Plan) -> Vec<(usize, String)> {
    (0..plan.sources.len())
        .filter(|&i| {
            plan.sources[i].sync_back && plan.sources[i].kind != crate::mapping::SourceKind::File
        })
        .map(|i| (i, plan.mirror(i, &env.dirs)))
        .collect()
}

/// A shell line (with its `; `) that lists each mirror's files before the command runs
/// (see `scripts/snapshot.sh`).
fn snapshot_script(run: &str, mirrors: &[(usize, String)]) -> String {
    if mirrors.is_empty() {
        return String::new();
    }
    let words = mirror_words(mirrors);
    let mut all = vec![quote(run)];
    all.extend(words);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    format!("{}; ", call(scripts::SNAPSHOT, &all))
}

/// `INDEX MIRROR` pairs as shell words, for snapshot.sh and inspect.sh.
fn mirror_words(mirrors: &[(usize, String)]) -> Vec<String> {
    mirrors
        .iter()
        .flat_map(|(i, m)| [i.to_string(), quote(m)])
        .collect()
}

/// What the command left on HOST, found in one round trip after it ran (step 5).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct After {
    /// Links in the run's `links/` dir: (`<i>/result…`, store path).
    pub links: Vec<(String, String)>,
    /// Per source to bring back (by index): the mirror's files now, and which of them the
    /// command created or changed.
    pub trees: Vec<Tree>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub src: usize,
    /// Files that were there when the command started and are gone now (relative paths,
    /// byte for byte as HOST named them).
    pub deleted: std::collections::BTreeSet<PathBuf>,
    /// Those with a ctime after the command started: written, created, renamed, chmodded.
    pub changed: std::collections::BTreeSet<PathBuf>,
    /// The command moved HEAD or a branch (committed) there.
    pub git_changed: bool,
}

/// Step 5: lists the result links and, for each source coming back, what changed in its
/// mirror. ctime, not rsync's size-and-mtime check: a same-size rewrite within the second
/// of the upload is still seen.
pub fn inspect(
    session: &mut Session,
    conn: &Connection,
    env: &RemoteEnv,
    plan: &Plan,
    want_links: bool,
) -> Result<After> {
    let mirrors = sync_back_mirrors(env, plan);
    if mirrors.is_empty() && (!want_links || plan.links.is_empty()) {
        return Ok(After::default());
    }
    let words = inspect_words(want_links, &mirrors);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let out = session.ask(
        conn,
        "finding what the command made",
        scripts::INSPECT,
        &words,
    )?;
    Ok(parse_after(&out))
}

/// The words of `scripts/inspect.sh`, which prints NUL-separated records `L name target`,
/// and per mirror `S index files… C changed… G git-changes… E`. It runs in the session's
/// shell, where `$r` is the run dir (a path five times is 200 bytes on the link).
fn inspect_words(want_links: bool, mirrors: &[(usize, String)]) -> Vec<String> {
    let mut all = vec![
        "\"$r\"".to_string(),
        if want_links { "1" } else { "0" }.to_string(),
    ];
    all.extend(mirror_words(mirrors));
    all
}

fn parse_after(out: &[u8]) -> After {
    // Names stay bytes: a file name HOST made need not be UTF-8, and must come back as is.
    let mut it = out.split(|b| *b == 0).peekable();
    let text = |w: &[u8]| String::from_utf8_lossy(w).into_owned();
    let rel = |p: &[u8]| {
        let p = p.strip_prefix(b"./").unwrap_or(p);
        PathBuf::from(std::ffi::OsStr::from_bytes(p))
    };
    let mut after = After::default();
    while let Some(tag) = it.next() {
        match tag {
            b"L" => {
                if let (Some(name), Some(target)) = (it.next(), it.next()) {
                    after.links.push((text(name), text(target)));
                }
            }
            b"S" => {
                let mut tree = Tree {
                    src: it
                        .next()
                        .and_then(|i| text(i).parse().ok())
                        .unwrap_or(usize::MAX),
                    ..Tree::default()
                };
                for w in it.by_ref() {
                    if w == b"C" {
                        break;
                    }
                    tree.deleted.insert(rel(w));
                }
                for w in it.by_ref() {
                    if w == b"G" {
                        break;
                    }
                    tree.changed.insert(rel(w));
                }
                for w in it.by_ref() {
                    if w == b"E" {
                        break;
                    }
                    tree.git_changed = true;
                }
                after.trees.push(tree);
            }
            _ => {}
        }
    }
    after
}

/// Where the remote command's streams go.
#[derive(Clone, Debug)]
pub enum Io {
    /// Straight through, with a terminal when ours is one (one host).
    Through,
    /// Each line prefixed with the host's label (several hosts at once; no stdin, no tty):
    /// one prefix for stdout, one for stderr (coloured or not, as each stream is).
    Prefixed { out: String, err: String },
}

/// HOST's mirror paths → the local paths they stand for, in what nix prints: its
/// messages name the flake it read (`warning: Git tree '/home/u/.cache/edict/mirrors/
/// proj-1f2e…' is dirty`, `flake metadata`'s URLs), which here would be `~/src/proj`.
#[derive(Clone, Debug, Default)]
pub struct PathMap {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl PathMap {
    pub fn new(plan: &Plan, env: &RemoteEnv) -> Self {
        use std::os::unix::ffi::OsStrExt as _;
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = plan
            .sources
            .iter()
            .enumerate()
            .map(|(i, src)| {
                // A single file's mirror is a directory holding it: that is its directory.
                let here = match src.kind {
                    crate::mapping::SourceKind::File => src.root.parent().unwrap_or(&src.root),
                    _ => &src.root,
                };
                (
                    plan.mirror(i, &env.dirs).into_bytes(),
                    here.as_os_str().as_bytes().to_vec(),
                )
            })
            .collect();
        // The longest first, so that no mirror's path is taken for a shorter one's.
        pairs.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        PathMap { pairs }
    }

    /// Whether every local path it puts in is made of characters that need no escaping
    /// in a URL or a JSON string.
    pub fn fits_urls_and_json(&self) -> bool {
        self.pairs.iter().all(|(_, to)| {
            to.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-+~@,:=".contains(b))
        })
    }

    /// Rewrites `input`, which follows `carry` (the undecided tail of the last call), and
    /// returns what can be written now; a tail that may begin a mirror path waits in
    /// `carry` for the next bytes (or [`PathMap::finish`]), anything else goes at once.
    pub fn feed(&self, carry: &mut Vec<u8>, input: &[u8]) -> Vec<u8> {
        carry.extend_from_slice(input);
        let buf = std::mem::take(carry);
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        while i < buf.len() {
            let rest = &buf[i..];
            if let Some((from, to)) = self.pairs.iter().find(|(f, _)| rest.starts_with(f)) {
                out.extend_from_slice(to);
                i += from.len();
                continue;
            }
            if self.pairs.iter().any(|(f, _)| f.starts_with(rest)) {
                carry.extend_from_slice(rest);
                return out;
            }
            out.push(buf[i]);
            i += 1;
        }
        out
    }

    /// The end of the stream: what was held back, as it is.
    pub fn finish(carry: &mut Vec<u8>) -> Vec<u8> {
        std::mem::take(carry)
    }
}

/// Copies `from` to our stdout or stderr with mirror paths mapped back: as it comes when
/// `prefix` is None, else line by line, each line behind `prefix` (several hosts at once).
fn copy_output(
    from: impl Read + Send + 'static,
    prefix: Option<String>,
    to_stderr: bool,
    map: PathMap,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::Write;
        // Above any status line of another host (see `progress`), never through it.
        let write = |bytes: &[u8]| {
            crate::progress::suspend(|| {
                let mut out: Box<dyn Write> = if to_stderr {
                    Box::new(std::io::stderr().lock())
                } else {
                    Box::new(std::io::stdout().lock())
                };
                let _ = out.write_all(bytes);
                let _ = out.flush();
            });
        };
        let mut reader = BufReader::new(from);
        let mut carry = Vec::new();
        let Some(prefix) = prefix else {
            // As it comes; what waits in case it begins a mirror path (a prompt ending in
            // `/`) goes after 50 ms without more.
            let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let pump = std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            });
            loop {
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(chunk) => write(&map.feed(&mut carry, &chunk)),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if !carry.is_empty() {
                            write(&PathMap::finish(&mut carry));
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            let _ = pump.join();
            write(&PathMap::finish(&mut carry));
            return;
        };
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    let mut text = prefix.as_bytes().to_vec();
                    text.extend(map.feed(&mut carry, &line));
                    text.extend(PathMap::finish(&mut carry));
                    write(&text);
                }
            }
        }
    })
}

/// Which of `paths` (local paths) HOST does not have: a warning that it cannot see one
/// is said only then (a shared file system, or the same path there, makes it wrong).
pub fn missing_there(conn: &Connection, paths: &[&std::path::Path]) -> Vec<bool> {
    let words: Vec<String> = paths.iter().map(|p| quote(&p.to_string_lossy())).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let script = call(scripts::MISSING, &words);
    let said = conn
        .ssh(Tty::No, &script)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let answers: Vec<&str> = said
        .lines()
        .filter(|l| matches!(*l, "here" | "missing"))
        .collect();
    // Unsure (a failed session): the warning stays.
    (0..paths.len())
        .map(|i| answers.get(i) != Some(&"here"))
        .collect()
}

/// How the remote command ended.
pub enum Outcome {
    Exited(i32),
    Interrupted,
}

/// Step 4: runs the nix command on HOST with our stdin, stdout and stderr, and returns its
/// exit code. On SIGINT/SIGTERM/SIGHUP here, the command there is interrupted too.
pub fn run(
    conn: &Connection,
    env: &RemoteEnv,
    plan: &Plan,
    stamps: &[(usize, String)],
    io: &Io,
    signals: &Signals,
) -> Result<Outcome> {
    let host = &conn.transport.label;
    let mut copiers = Vec::new();
    let map = PathMap::new(plan, env);
    // Without a terminal there, what nix prints passes through edict, which maps mirror
    // paths back: always on stderr (nix's messages), on stdout only for `nix flake …`
    // (metadata, show), whose output is nix's own; a program's output is never touched.
    let flake_output = plan.stdout_is_nix;
    let tty = match io {
        Io::Through => Tty::detect(),
        Io::Prefixed { .. } => Tty::No,
    };
    let (prefix, prefix_err) = match io {
        Io::Through => (None, None),
        Io::Prefixed { out, err } => (Some(out.clone()), Some(err.clone())),
    };
    // At -v, the command as it runs there comes alone, before the line that runs it.
    exec::step(format_args!(
        "{host}: cd {} && {}",
        quote(&plan.render_cwd(&env.dirs)),
        exec::quote_words(&command_words(env, plan))
    ));
    // The user's words may hold what csh reads even inside quotes (see `ssh_as`).
    let mut child = conn
        .ssh_as(tty, &run_script(env, plan, stamps), &env.shell)
        .spawn(|c| {
            if prefix.is_some() {
                c.stdin(Stdio::null()).stdout(Stdio::piped());
            } else if tty == Tty::No && flake_output {
                c.stdout(Stdio::piped());
            }
            if tty == Tty::No {
                c.stderr(Stdio::piped());
            }
        })?;
    if let Some(out) = child.stdout.take() {
        // nix's own stdout may be JSON or URLs: a local path goes in only where it reads the
        // same there (no quote, space or `%` to escape).
        let stdout_map = if flake_output && map.fits_urls_and_json() {
            map.clone()
        } else {
            PathMap::default()
        };
        copiers.push(copy_output(out, prefix.clone(), false, stdout_map));
    }
    if let Some(err) = child.stderr.take() {
        copiers.push(copy_output(err, prefix_err, true, map));
    }
    let mut interrupted = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if !interrupted && signals.caught() {
            interrupted = true;
            exec::info(format_args!("{host}: interrupting the command there"));
            interrupt(conn, env);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Ctrl-C from a terminal also reaches our ssh (without a tty it dies of it before the
    // loop sees the flag): the command there must still be stopped.
    if !interrupted && signals.caught() {
        exec::info(format_args!("{host}: interrupting the command there"));
        interrupt(conn, env);
    }
    // Only now: the master holds our pipes until the command there has ended.
    for c in copiers {
        let _ = c.join();
    }
    if signals.caught() {
        return Ok(Outcome::Interrupted);
    }
    let code = exec::exit_code(status);
    if code == 255 && !conn.alive() {
        bail!(conn.lost(
            "running the command",
            &format!("the ssh connection was lost while the command ran ({host} stops the command once its sshd sees the connection gone)")
        ));
    }
    Ok(Outcome::Exited(code))
}

/// Stops the remote command: SIGINT to its process group (as a terminal's Ctrl-C would),
/// then SIGKILL if it is still there after 5 s. (No `kill --`: dash rejects it.)
fn interrupt(conn: &Connection, env: &RemoteEnv) {
    let _ = conn.ssh(Tty::No, &stop_script(&pid_file(env))).output();
}

/// The run's pid file on HOST, quoted: the run shell writes it, [`stop_script`] reads it.
/// (The lock session's shell, where the run dir is `$1`, names it `"$1/pid"`.)
fn pid_file(env: &RemoteEnv) -> String {
    quote(&format!("{}/pid", env.dirs.run))
}

/// A shell line that stops the command whose pid is in `pidfile` (a shell word), if the
/// file is there (see `scripts/stop.sh`).
fn stop_script(pidfile: &str) -> String {
    call(scripts::STOP, &[pidfile])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_s_fields_make_the_environment() {
        let fields: std::collections::HashMap<String, String> = [
            ("nix", "/nix/var/nix/profiles/default/bin/nix"),
            ("version", "nix (Nix) 2.26.3"),
            ("rsync", ""),
            ("cache", "/home/u/.cache/edict"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let env = env_from("h", &fields, "r1").unwrap();
        assert_eq!(
            env.nix_store(),
            "/nix/var/nix/profiles/default/bin/nix-store"
        );
        assert!(env.reads_relative_locks());
        assert_eq!(env.rsync, None, "an empty field is nothing");
        assert_eq!(env.dirs.run, "/home/u/.cache/edict/runs/r1");
        let mut no_nix = fields.clone();
        no_nix.remove("nix");
        let err = format!("{:#}", env_from("h", &no_nix, "r1").unwrap_err());
        assert!(
            err.contains("h: finding nix") && err.contains("fix: install Nix on h"),
            "{err}"
        );
    }

    #[test]
    fn rsync_is_the_path_s_when_usable_else_the_first_usable_elsewhere() {
        let good = "rsync  version 3.2.7  protocol version 31";
        let open = "openrsync: protocol version 29";
        let asked = std::cell::Cell::new(0);
        let others = |list: Vec<(&str, &str)>| {
            asked.set(asked.get() + 1);
            list.into_iter()
                .map(|(p, v)| (p.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        // Usable on the PATH: no second look.
        let got = choose_rsync("h", Some("/usr/bin/rsync".into()), good, || others(vec![]));
        assert_eq!(got.unwrap(), ("/usr/bin/rsync".into(), good.into()));
        assert_eq!(asked.get(), 0);
        // openrsync first, a good one in a Nix profile.
        let got = choose_rsync("h", Some("/usr/bin/rsync".into()), open, || {
            others(vec![
                ("/opt/homebrew/bin/rsync", open),
                ("/nix/var/nix/profiles/default/bin/rsync", good),
            ])
        });
        assert_eq!(
            got.unwrap(),
            (
                "/nix/var/nix/profiles/default/bin/rsync".into(),
                good.into()
            )
        );
        // Nothing usable anywhere: the one on the PATH is named.
        let err = choose_rsync("h", Some("/usr/bin/rsync".into()), open, || others(vec![]));
        let err = format!("{:#}", err.unwrap_err());
        assert!(
            err.contains("the rsync there (/usr/bin/rsync: openrsync"),
            "{err}"
        );
        // None at all.
        let err = format!(
            "{:#}",
            choose_rsync("h", None, "", || others(vec![])).unwrap_err()
        );
        assert!(err.contains("rsync is not installed there"), "{err}");
    }

    /// Joined into one line, a script means what its lines mean: every code line ends a
    /// command (`;`) or continues it (`then`, `do`, `else`, `{`, `(`, `&&`, `||`, `|`), the
    /// last one excepted, and none holds a comment (it would swallow the rest of the line).
    #[test]
    fn every_script_joins_into_the_commands_its_lines_are() {
        for (_, script) in scripts::NAMED {
            let code: Vec<&str> = script
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect();
            for (i, l) in code.iter().enumerate() {
                assert!(!l.contains(" #"), "a comment in code: {l}");
                let ends = [";", "then", "do", "else", "{", "(", "&&", "||", "|"];
                assert!(
                    i + 1 == code.len() || ends.iter().any(|e| l.ends_with(e)),
                    "this line would run into the next one: {l}"
                );
            }
        }
    }

    /// Every script, as the one line it is sent as, is still valid sh (dash and bash as sh).
    #[test]
    fn every_script_is_sh_on_one_line() {
        for (_, script) in scripts::NAMED {
            // A continued line would join as `\ `, an escaped space.
            assert!(!script.lines().any(|l| l.trim_end().ends_with('\\')));
            let line = one_line(script);
            assert!(!line.contains('\n'));
            for sh in [
                &["/bin/sh", "-n", "-c"][..],
                &["/bin/bash", "--posix", "-n", "-c"][..],
            ] {
                let out = std::process::Command::new(sh[0])
                    .args(&sh[1..])
                    .arg(&line)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{sh:?}: {line}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    /// Runs `cmd`, which must succeed (its stderr in the message); its stdout.
    fn stdout_of(cmd: &mut std::process::Command) -> String {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a script from `src/scripts`, as it is sent, under /bin/sh with `args`; its stdout.
    fn run_script_file(script: &str, args: &[&str]) -> String {
        stdout_of(
            std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(one_line(script))
                .arg("sh")
                .args(args),
        )
    }

    /// The mirror's fingerprint moves with every write, chmod, rename, new or removed entry
    /// (an empty directory too, swapped symlink targets, a stale index.lock), and not with
    /// a git mirror's own index or a directory's times; it is nothing when a directory
    /// cannot be read.
    #[test]
    fn a_mirror_s_fingerprint_moves_with_what_nix_could_see() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path().join("m");
        std::fs::create_dir_all(m.join(".git/refs")).unwrap();
        std::fs::write(m.join("a"), "1").unwrap();
        std::fs::write(m.join(".git/index"), "i").unwrap();
        let m_str = m.to_str().unwrap();
        let fp = || run_script_file(scripts::FINGERPRINT, &[m_str, "git"]);
        let first = fp();
        assert_eq!(first.trim().len(), 64, "{first:?}");
        assert_eq!(fp(), first, "the same tree, the same fingerprint");
        let moved = |what: &str, before: &str| {
            let now = fp();
            assert_ne!(now, before, "{what} did not move it");
            now
        };
        std::fs::write(m.join(".git/index"), "HOST's own").unwrap();
        assert_eq!(fp(), first, "HOST's git index is its own");
        assert_ne!(
            run_script_file(scripts::FINGERPRINT, &[m_str, "dir"]),
            first,
            "a plain directory's .git/index is part of it"
        );
        std::fs::write(m.join(".git/index.lock"), "").unwrap();
        moved("a stale index.lock", &first);
        std::fs::remove_file(m.join(".git/index.lock")).unwrap();
        assert_eq!(fp(), first);
        let now = moved("a same-size rewrite", &{
            std::fs::write(m.join("a"), "2").unwrap();
            first.clone()
        });
        std::fs::create_dir(m.join("empty")).unwrap();
        let now = moved("an empty directory", &now);
        std::process::Command::new("chmod")
            .args(["+x", m.join("a").to_str().unwrap()])
            .status()
            .unwrap();
        let now = moved("a chmod", &now);
        std::fs::rename(m.join("a"), m.join("b")).unwrap();
        let now = moved("a rename", &now);
        std::os::unix::fs::symlink("b", m.join("l")).unwrap();
        let now = moved("a symlink", &now);
        std::fs::write(m.join(".git/refs/x"), "r").unwrap();
        let now = moved("a ref in .git", &now);
        std::os::unix::fs::symlink("x", m.join("l2")).unwrap();
        let now = moved("another symlink", &now);
        // The two links swap targets.
        std::fs::remove_file(m.join("l")).unwrap();
        std::fs::remove_file(m.join("l2")).unwrap();
        std::os::unix::fs::symlink("x", m.join("l")).unwrap();
        std::os::unix::fs::symlink("b", m.join("l2")).unwrap();
        moved("swapped symlink targets", &now);
        assert_eq!(
            run_script_file(scripts::FINGERPRINT, &["/nonexistent", "git"]),
            ""
        );
        if rustix::process::geteuid().as_raw() != 0 {
            std::fs::create_dir(m.join("locked")).unwrap();
            std::fs::set_permissions(
                m.join("locked"),
                std::os::unix::fs::PermissionsExt::from_mode(0o000),
            )
            .unwrap();
            assert_eq!(fp(), "", "an unreadable directory");
        }
    }

    /// stamp.sh records what a mirror was made from; unchanged.sh names it while the source
    /// and the mirror are both as they were, and not after either moved.
    #[test]
    fn a_mirror_is_unchanged_while_it_and_its_source_are_as_stamped() {
        let t = tempfile::tempdir().unwrap();
        let c = t.path();
        let m = c.join("mirrors/src-1");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("f"), "x").unwrap();
        let c_str = c.to_str().unwrap();
        let fp = one_line(scripts::FINGERPRINT);
        let stamp = |local: &str| {
            run_script_file(
                scripts::STAMP,
                &[
                    &fp,
                    m.to_str().unwrap(),
                    "dir",
                    local,
                    &format!("{}.stamp", m.display()),
                ],
            )
        };
        let same = |local: &str| {
            run_script_file(
                scripts::UNCHANGED,
                &[&fp, c_str, "src-1", "dir", local, "other-2", "git", "L"],
            )
        };
        assert_eq!(same("L1"), "", "never stamped");
        stamp("L1");
        assert_eq!(same("L1"), "EDICT-same src-1\n");
        assert_eq!(same("L2"), "", "the source changed here");
        std::fs::write(m.join("f"), "y").unwrap();
        assert_eq!(same("L1"), "", "the mirror changed there");
        stamp("L1");
        assert_eq!(same("L1"), "EDICT-same src-1\n");
        // The line the holder evaluates, with `$c` and EDICT_FINGERPRINT set as they are
        // there.
        let line = unchanged_line(&[("src-1".into(), "dir".into(), "L1".into())]);
        let out = stdout_of(
            std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("c={}; {line}", quote(c_str)))
                .env("EDICT_FINGERPRINT", &fp),
        );
        assert_eq!(out, "EDICT-same src-1\n");
        assert_eq!(unchanged_line(&[]), "");
    }

    /// restamp.sh puts the links in a mirror still as stamped and stamps it anew; a mirror
    /// that moved meanwhile, or a stamp from another source, gets nothing.
    #[test]
    fn restamp_links_only_a_mirror_still_as_stamped() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path().join("m");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("f"), "x").unwrap();
        let (m_str, s) = (m.to_str().unwrap(), format!("{}.stamp", m.display()));
        let fp = one_line(scripts::FINGERPRINT);
        run_script_file(scripts::STAMP, &[&fp, m_str, "dir", "L1", &s]);
        let restamp = |was: &str, now: &str| {
            run_script_file(
                scripts::RESTAMP,
                &[&fp, m_str, "dir", &s, was, now, "result", "/nix/store/x-y"],
            )
        };
        restamp("L0", "L2");
        assert!(
            std::fs::read_link(m.join("result")).is_err(),
            "another source's stamp"
        );
        assert!(std::fs::read_to_string(&s).unwrap().starts_with("L1 "));
        restamp("L1", "L2");
        assert_eq!(
            std::fs::read_link(m.join("result")).unwrap(),
            std::path::Path::new("/nix/store/x-y")
        );
        let mirror_now = run_script_file(scripts::FINGERPRINT, &[m_str, "dir"]);
        assert_eq!(
            std::fs::read_to_string(&s).unwrap(),
            format!("L2 {mirror_now}")
        );
        // The mirror moved after its stamp: nothing.
        std::fs::write(m.join("f"), "changed").unwrap();
        std::fs::remove_file(m.join("result")).unwrap();
        restamp("L2", "L3");
        assert!(std::fs::read_link(m.join("result")).is_err());
        assert!(std::fs::read_to_string(&s).unwrap().starts_with("L2 "));
    }

    #[test]
    fn stop_interrupts_the_command_s_group_and_ignores_a_gone_one() {
        use std::os::unix::process::CommandExt as _;
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("pid");
        let child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg("echo $$ > \"$1\"; sleep 30; echo survived")
            .arg("sh")
            .arg(&pidfile)
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        while !std::fs::read_to_string(&pidfile).is_ok_and(|t| t.ends_with('\n')) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        run_script_file(scripts::STOP, &[pidfile.to_str().unwrap()]);
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        assert!(!String::from_utf8_lossy(&out.stdout).contains("survived"));
        // No pid file (the command ended): nothing to do.
        run_script_file(scripts::STOP, &[d.path().join("none").to_str().unwrap()]);
    }

    #[test]
    fn find_rsync_lists_each_place_with_its_version() {
        let d = tempfile::tempdir().unwrap();
        let with = d.path().join("with rsync");
        std::fs::create_dir_all(&with).unwrap();
        std::fs::write(
            with.join("rsync"),
            "#!/bin/sh\necho 'rsync  version 3.2.7  protocol version 31'\n",
        )
        .unwrap();
        std::fs::set_permissions(
            with.join("rsync"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let out = run_script_file(
            scripts::FIND_RSYNC,
            &[
                d.path().join("empty").to_str().unwrap(),
                with.to_str().unwrap(),
            ],
        );
        assert_eq!(
            out,
            format!(
                "{}/rsync\trsync  version 3.2.7  protocol version 31\n",
                with.display()
            )
        );
    }

    #[test]
    fn missing_says_for_each_path_in_order() {
        let d = tempfile::tempdir().unwrap();
        let out = run_script_file(
            scripts::MISSING,
            &[
                d.path().join("no").to_str().unwrap(),
                d.path().to_str().unwrap(),
                "a b",
            ],
        );
        assert_eq!(out, "missing\nhere\nmissing\n");
    }

    #[test]
    fn adopt_index_takes_the_sent_index_and_keeps_the_tree_clean() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("m x");
        std::fs::create_dir_all(&repo).unwrap();
        let git = |args: &[&str]| {
            stdout_of(
                std::process::Command::new("git")
                    .arg("-C")
                    .arg(&repo)
                    .args(["-c", "user.name=t", "-c", "user.email=t@e"])
                    .args(args),
            )
        };
        git(&["init", "-q"]);
        std::fs::write(repo.join("a"), "a\n").unwrap();
        git(&["add", "a"]);
        git(&["commit", "-qm", "a"]);
        std::fs::write(repo.join("b"), "b\n").unwrap();
        git(&["add", "b"]);
        // What arrives: the sent index beside HOST's own, which lacks `b`.
        std::fs::copy(repo.join(".git/index"), repo.join(".git/edict-index")).unwrap();
        git(&["rm", "-q", "--cached", "b"]);
        run_script_file(scripts::ADOPT_INDEX, &[repo.to_str().unwrap()]);
        assert_eq!(git(&["diff", "--cached", "--name-only"]), "b\n");
        assert!(
            repo.join(".git/edict-index").exists(),
            "the sent copy stays as sent"
        );
        // Not a mirror with a sent index: nothing happens.
        run_script_file(scripts::ADOPT_INDEX, &[d.path().to_str().unwrap()]);
    }

    /// The real scripts under /bin/sh: the snapshot before the command, then the inspection
    /// sees links, deletions, and exactly the files touched after the start marker,
    /// including a same-size rewrite in the same second.
    #[test]
    fn inspect_script_finds_links_deletions_and_changes() {
        let d = tempfile::tempdir().unwrap();
        let (run, m0, m1) = (
            d.path().join("run"),
            d.path().join("m0"),
            d.path().join("my mirror"),
        );
        for dir in [
            run.join("links/0"),
            m0.join("sub"),
            m0.join(".git/refs/heads"),
            m1.clone(),
        ] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(m0.join("same.txt"), "1").unwrap();
        std::fs::write(m0.join("sub/old.txt"), "x").unwrap();
        std::fs::write(m0.join("sub/doomed file"), "d").unwrap();
        std::fs::write(m0.join(".git/HEAD"), "ref").unwrap();
        std::fs::write(m1.join("f"), "y").unwrap();
        let mirrors = vec![
            (0, m0.display().to_string()),
            (10, m1.display().to_string()),
        ];
        // As in the session's shell: the run dir in $r.
        let sh = |script: &str| {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(script)
                .env("r", &run)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        sh(&snapshot_script(&run.display().to_string(), &mirrors));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(run.join("start"), "").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(m0.join("same.txt"), "2").unwrap();
        std::fs::write(m0.join("sub/new file"), "n").unwrap();
        std::fs::remove_file(m0.join("sub/doomed file")).unwrap();
        std::os::unix::fs::symlink("/nix/store/abc-x", run.join("links/0/result")).unwrap();
        let words = inspect_words(true, &mirrors);
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let after = parse_after(&sh(&call(scripts::INSPECT, &words)));
        assert_eq!(
            after.links,
            vec![("0/result".to_string(), "/nix/store/abc-x".to_string())]
        );
        assert_eq!((after.trees[0].src, after.trees[1].src), (0, 10));
        let names = |set: &std::collections::BTreeSet<PathBuf>| -> Vec<String> {
            set.iter().map(|p| p.display().to_string()).collect()
        };
        assert_eq!(names(&after.trees[0].deleted), vec!["sub/doomed file"]);
        assert_eq!(
            names(&after.trees[0].changed),
            vec!["same.txt", "sub/new file"]
        );
        assert!(!after.trees[0].git_changed);
        assert!(after.trees[1].changed.is_empty() && after.trees[1].deleted.is_empty());
    }

    #[test]
    fn which_nix_reads_relative_locks() {
        let env = |v: &str| RemoteEnv {
            nix: "nix".into(),
            shell: "/bin/sh".into(),
            rsync_version: String::new(),
            nix_version: v.into(),
            rsync: None,
            dirs: RemoteDirs {
                mirrors: String::new(),
                run: String::new(),
            },
            unchanged: Default::default(),
        };
        for (v, reads) in [
            ("nix (Nix) 2.8.0", false),
            ("nix (Nix) 2.25.5", false),
            ("nix (Nix) 2.26.3", true),
            ("nix (Nix) 2.34.8", true),
            ("nix (Nix) 3.0.0", true),
            ("nix (Lix, like Nix) 2.93.3", false),
            ("", false),
        ] {
            assert_eq!(env(v).reads_relative_locks(), reads, "{v}");
        }
    }

    #[test]
    fn mirror_paths_in_nix_output_map_back_however_the_bytes_arrive() {
        let map = PathMap {
            pairs: vec![
                (
                    b"/h/.cache/edict/mirrors/proj-0123".to_vec(),
                    b"/src/proj".to_vec(),
                ),
                (
                    b"/h/.cache/edict/mirrors/lib-4567".to_vec(),
                    b"/src/my lib".to_vec(),
                ),
            ],
        };
        let text = b"warning: Git tree '/h/.cache/edict/mirrors/proj-0123' is dirty\n\
            git+file:///h/.cache/edict/mirrors/lib-4567?dir=x /h/.cache/other /h/.cache/edict/mirrors/proj-0123";
        let want = b"warning: Git tree '/src/proj' is dirty\n\
            git+file:///src/my lib?dir=x /h/.cache/other /src/proj";
        // Whole, and in pieces of every size: a path split between reads still maps.
        for size in 1..text.len() {
            let mut carry = Vec::new();
            let mut out = Vec::new();
            for chunk in text.chunks(size) {
                out.extend(map.feed(&mut carry, chunk));
            }
            out.extend(PathMap::finish(&mut carry));
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "{size}"
            );
        }
        // A local path with a space would need escaping in JSON or a URL: nix's stdout is
        // then left as it is.
        assert!(!map.fits_urls_and_json());
        // What is not a mirror path goes at once (a prompt without a newline).
        let mut carry = Vec::new();
        assert_eq!(map.feed(&mut carry, b"name? "), b"name? ");
        assert_eq!(map.feed(&mut carry, b"/h/.ca"), b"");
        assert_eq!(PathMap::finish(&mut carry), b"/h/.ca");
    }

    #[test]
    fn expiry_removes_old_unlocked_mirrors_only() {
        let top = tempfile::tempdir().unwrap();
        // A cache path with a space, and a sibling that a split word would name.
        let xdg = top.path().join("x y");
        let d = xdg.join("edict");
        std::fs::create_dir_all(top.path().join("x/mirrors")).unwrap();
        let m = d.join("mirrors");
        for name in ["old-1", "new-2", "busy-3"] {
            std::fs::create_dir_all(m.join(name).join("src")).unwrap();
            std::fs::write(m.join(name).join("src/f"), "x").unwrap();
        }
        let sh = |script: String| {
            stdout_of(
                std::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(script)
                    .env("XDG_CACHE_HOME", &xdg),
            )
        };
        sh(format!(
            "touch -d '40 days ago' {0}/old-1 {0}/busy-3",
            quote(&m.display().to_string())
        ));
        // A run holds busy-3.
        let mut holder = std::process::Command::new("flock")
            .arg(m.join("busy-3.lock"))
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let out = sh(expire_script(Some(30)));
        assert!(out.starts_with("EDICT-gone old-1 "), "{out}");
        assert!(!m.join("old-1").exists() && m.join("new-2").exists());
        assert!(m.join("busy-3").exists(), "a locked mirror stays");
        let out = sh(expire_script(None));
        assert!(out.contains("EDICT-gone new-2 "), "{out}");
        assert!(!m.join("new-2").exists() && m.join("busy-3").exists());
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert!(top.path().join("x/mirrors").exists());
        assert!(m.join("busy-3.lock").exists(), "lock files stay");
    }

    #[test]
    fn after_parses_links_and_trees() {
        let out = b"L\x000/result\x00/nix/store/a-x\x00S\x002\x00./a\x00./d/b c\x00C\x00./d/b c\x00./n\xffu\x00G\x00.git/refs/heads/main\x00E\x00S\x003\x00C\x00G\x00E\x00";
        let after = parse_after(out);
        assert_eq!(
            after.links,
            vec![("0/result".to_string(), "/nix/store/a-x".to_string())]
        );
        assert_eq!(after.trees.len(), 2);
        assert_eq!(after.trees[0].src, 2);
        assert_eq!(
            after.trees[0].deleted.iter().cloned().collect::<Vec<_>>(),
            vec![PathBuf::from("a"), PathBuf::from("d/b c")]
        );
        // A name that is not UTF-8 keeps its bytes.
        assert_eq!(
            after.trees[0].changed.iter().cloned().collect::<Vec<_>>(),
            vec![
                PathBuf::from("d/b c"),
                PathBuf::from(std::ffi::OsStr::from_bytes(b"n\xffu"))
            ]
        );
        assert!(after.trees[0].git_changed);
        assert!(after.trees[1].deleted.is_empty() && !after.trees[1].git_changed);
    }

    /// The holder's shell answers each script with its output and END, also when the run
    /// dir cannot be written; `exit` and `cd` in a script do not end or move the holder.
    #[test]
    fn the_holder_answers_scripts_in_order() {
        let run = tempfile::tempdir().unwrap();
        for r in [run.path().to_str().unwrap(), "/nonexistent/run"] {
            let mut child = std::process::Command::new("/bin/sh")
                .env("r", r)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            {
                use std::io::Write as _;
                let mut stdin = child.stdin.take().unwrap();
                for (script, words) in [
                    ("cd /; printf 'a\\0b%s' \"$1\"; exit 3", &["'\\0c d'"][..]),
                    ("pwd; cat", &[]),
                ] {
                    stdin.write_all(ask_line(script, words).as_bytes()).unwrap();
                }
            }
            let out = child.wait_with_output().unwrap();
            let pwd = std::env::current_dir().unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("a\0b\\0c d\0EDICT-END\0{}\n\0EDICT-END\0", pwd.display()),
                "r={r}"
            );
        }
    }

    /// The probe script is valid sh and, with no flock, prints the fields and waits.
    #[test]
    fn prepare_script_runs_in_sh() {
        let home = tempfile::tempdir().unwrap();
        let script = prepare_line(&["a-1", "b c"], "r1", &[]);
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .env("HOME", home.path())
            .env_remove("XDG_CACHE_HOME")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cache = home.path().join(".cache/edict");
        assert!(
            text.contains(&format!("EDICT-cache {}", cache.display())),
            "{text}"
        );
        assert!(text.contains("EDICT-locked"), "{text}");
        assert!(cache.join("mirrors/a-1").is_dir());
        assert!(cache.join("mirrors/b c").is_dir());
        // stdin was /dev/null: the holder ended at once and removed the run dir.
        assert!(!cache.join("runs/r1").exists());
    }

    /// The lock without flock (macOS), in dash and in bash as sh (macOS's /bin/sh): a
    /// second run waits until the first's holder ends, then locks; a lock whose holder is
    /// dead is taken over at once; none is left behind.
    #[test]
    fn without_flock_runs_take_turns_in_every_sh() {
        use std::io::{BufRead as _, BufReader};
        // A PATH with the tools the scripts use, and no flock.
        let bin = tempfile::tempdir().unwrap();
        for tool in [
            "sh", "mkdir", "cat", "find", "sleep", "rm", "rmdir", "touch", "chmod", "du", "cut",
            "head", "ps", "tr", "sed", "xargs",
        ] {
            let real = which::which(tool).unwrap();
            std::os::unix::fs::symlink(real, bin.path().join(tool)).unwrap();
        }
        for shell in [vec!["/bin/sh"], vec!["/bin/bash", "--posix"]] {
            let home = tempfile::tempdir().unwrap();
            let start = |run: &str| {
                std::process::Command::new(shell[0])
                    .args(&shell[1..])
                    .arg("-c")
                    .arg(prepare_line(&["m-1", "a-0"], run, &[]))
                    .env("HOME", home.path())
                    .env("PATH", bin.path())
                    .env_remove("XDG_CACHE_HOME")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            };
            let lines = |child: &mut std::process::Child| {
                let out = child.stdout.take().unwrap();
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    for l in BufReader::new(out).lines().map_while(Result::ok) {
                        let _ = tx.send(l);
                    }
                });
                rx
            };
            let wait_line = |rx: &std::sync::mpsc::Receiver<String>, want: &str| loop {
                let l = rx
                    .recv_timeout(std::time::Duration::from_secs(20))
                    .unwrap_or_else(|_| panic!("{shell:?}: no `{want}`"));
                if l == want {
                    break;
                }
            };
            let mut first = start("r1");
            let first_out = lines(&mut first);
            wait_line(&first_out, "EDICT-locked");
            let mut second = start("r2");
            let second_out = lines(&mut second);
            wait_line(&second_out, "EDICT-waiting");
            drop(first.stdin.take()); // the first run ends: its holder releases
            first.wait().unwrap();
            wait_line(&second_out, "EDICT-locked");
            drop(second.stdin.take());
            second.wait().unwrap();
            let mirrors = home.path().join(".cache/edict/mirrors");
            let left: Vec<_> = std::fs::read_dir(&mirrors)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().contains("lockd"))
                .collect();
            assert!(left.is_empty(), "{shell:?}: {left:?}");
            // A holder that died without releasing (its pid is gone): taken over.
            let dead = std::process::Command::new("true").spawn().unwrap();
            let pid = dead.id();
            let mut dead = dead;
            dead.wait().unwrap();
            std::fs::create_dir(mirrors.join("a-0.lockd")).unwrap();
            std::fs::write(mirrors.join("a-0.lockd/pid"), format!("{pid}\n")).unwrap();
            let mut third = start("r3");
            let third_out = lines(&mut third);
            wait_line(&third_out, "EDICT-locked");
            drop(third.stdin.take());
            third.wait().unwrap();
        }
    }

    /// With flock, the holder holds the lock of every mirror (names with spaces too) until
    /// edict closes its end, then releases them and removes the run dir.
    #[test]
    fn the_holder_keeps_every_flock_until_its_input_ends() {
        use std::io::{BufRead as _, Write as _};
        let home = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(prepare_line(&["b c", "a-1"], "r1", &[]))
            .env("HOME", home.path())
            .env_remove("XDG_CACHE_HOME")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while line.trim_end() != "EDICT-locked" {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "no EDICT-locked");
        }
        let cache = home.path().join(".cache/edict");
        let free = |name: &str| {
            std::process::Command::new("flock")
                .arg("-n")
                .arg(cache.join("mirrors").join(name))
                .arg("true")
                .status()
                .unwrap()
                .success()
        };
        assert!(!free("a-1.lock") && !free("b c.lock"));
        // The holder's shell answers with the run dir in $r.
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(ask_line("printf %s \"$1\"", &["\"$r\""]).as_bytes())
            .unwrap();
        stdin.flush().unwrap();
        let mut said = Vec::new();
        while !said.ends_with(END) {
            assert!(out.read_until(0, &mut said).unwrap() > 0);
        }
        assert_eq!(
            said,
            [cache.join("runs/r1").as_os_str().as_bytes(), END].concat()
        );
        drop(stdin);
        assert!(child.wait().unwrap().success());
        assert!(free("a-1.lock") && free("b c.lock"));
        assert!(!cache.join("runs/r1").exists());
    }

    /// The run script runs the words from the working directory (made when missing), keeps
    /// its pid file only while they run, marks the start, and passes their exit code on,
    /// also through a Ctrl-C that it survives.
    #[test]
    fn the_run_script_passes_the_exit_code_on() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let cwd = d.path().join("a b/new");
        let go = |words: &[&str]| {
            let mut c = std::process::Command::new("/bin/sh");
            // Its own group, as the ssh session's: `kill 0` reaches only that.
            c.process_group(0)
                .arg("-c")
                .arg(one_line(scripts::RUN))
                .arg("sh")
                .arg(&run)
                .arg(&cwd)
                .args(words);
            c.output().unwrap()
        };
        let out = go(&["sh", "-c", "pwd; test -f ../../run/pid && exit 7", "x"]);
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            cwd.display().to_string()
        );
        assert!(run.join("start").exists() && !run.join("pid").exists());
        // A Ctrl-C to the whole group: the command dies of it, the script says 130.
        let out = go(&["sh", "-c", "kill -INT 0; sleep 5"]);
        assert_eq!(out.status.code(), Some(130));
        // A working directory that cannot be made: 127, nothing run.
        std::fs::write(d.path().join("file"), "").unwrap();
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(one_line(scripts::RUN))
            .arg("sh")
            .arg(&run)
            .arg(d.path().join("file/sub"))
            .args(["touch", "ran"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(127));
    }
}
