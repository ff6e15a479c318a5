//! Steps 5 and 6: find the result links the command made on HOST, `nix copy` their closures
//! into the local store over the same connection, and recreate the links here as real
//! indirect GC roots (what `nix build` itself makes), at the place the user asked for.

use crate::exec::{self, Cmd, quote};
use crate::mapping::Plan;
use crate::problem::Problem;
use crate::remote::RemoteEnv;
use crate::ssh::{Connection, ssh_failure};
use crate::transfer::When;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// A result link to recreate here: `local` → `target` (a store path built on HOST).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub local: PathBuf,
    pub target: String,
}

/// The links nix made in the run's `links/<i>/` directories on HOST (found by
/// `remote::inspect`), each paired with where it goes here.
pub fn links(plan: &Plan, found: &[(String, String)]) -> Vec<Link> {
    let store_dir = crate::mapping::local_store_dir();
    let mut links = Vec::new();
    for (name, target) in found {
        let Some((index, base)) = name.split_once('/') else {
            continue;
        };
        let Some(spec) = index.parse::<usize>().ok().and_then(|i| plan.links.get(i)) else {
            continue;
        };
        // HOST reports names and targets: only what nix itself makes is taken, so a name
        // can never place a link elsewhere (`result/../../x`) nor point outside the store.
        let Some(suffix) = base.strip_prefix("result") else {
            continue;
        };
        let suffix_ok = suffix.is_empty()
            || suffix.strip_prefix('-').is_some_and(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b))
            });
        let target_ok =
            crate::mapping::store_path_of(Path::new(target), &store_dir).as_ref() == Some(target);
        if !suffix_ok || !target_ok {
            continue;
        }
        let mut local = spec.local_base.clone().into_os_string();
        local.push(suffix);
        links.push(Link {
            local: PathBuf::from(local),
            target: target.clone(),
        });
    }
    links.sort_by(|a, b| a.local.cmp(&b.local));
    links
}

/// Step 6: copies the closures of every link's target from HOST and makes the local links.
pub fn fetch(conn: &Connection, env: &RemoteEnv, links: &[Link]) -> Result<()> {
    if links.is_empty() {
        return Ok(());
    }
    let host = &conn.transport.label;
    // Refuse before copying anything: a real file or directory where a link should go is
    // the user's data, never replaced.
    for l in links {
        if let Ok(m) = std::fs::symlink_metadata(&l.local) {
            if !m.file_type().is_symlink() {
                return Err(not_a_link(host, &l.local, "").into());
            }
        }
    }
    let targets: Vec<&str> = links.iter().map(|l| l.target.as_str()).collect();
    copy_closures(conn, env, &targets, "copying results")?;
    for l in links {
        add_root(&l.target, &l.local)
            .map_err(|e| crate::problem::place(e, host, "creating result links"))?;
        exec::debug(format_args!("{} -> {}", l.local.display(), l.target));
    }
    Ok(())
}

/// Copies the closures of store paths from HOST into this machine's store (none when all
/// are here already); `step` names the step in errors.
pub fn copy_closures(conn: &Connection, env: &RemoteEnv, paths: &[&str], step: &str) -> Result<()> {
    let host = &conn.transport.label;
    let mut targets: Vec<&str> = paths.to_vec();
    targets.sort_unstable();
    targets.dedup();
    // Already here (a rebuild of something unchanged): no need for a remote session at all.
    let all_valid = Cmd::new("nix-store")
        .arg("--check-validity")
        .args(targets.iter().copied())
        .succeeds();
    if all_valid || targets.is_empty() {
        exec::debug(format_args!(
            "{host}: {step}: already in the local store, nothing to copy"
        ));
        return Ok(());
    }
    // The paths of the closure missing here, with their sizes: for the status line, and
    // with substitutes every one is named, as nix asks the receiving store to substitute
    // only the paths it is given, not their references.
    let showing = crate::progress::terminal() && !exec::quiet();
    let settings = crate::transfer::settings();
    let missing =
        if settings.substitute != When::Never || showing || settings.compress != When::Never {
            missing_here(closure_there(conn, env, &targets))
        } else {
            Vec::new()
        };
    // Every missing path named, the targets always (a listing cut short must not leave
    // them behind); past MAX_NAMED paths the command line would be too long for the OS:
    // then the targets only, and nix finds the rest (without substitutes for it).
    let wanted: Vec<&str> = if missing.is_empty() || !substitutes(conn) || missing.len() > MAX_NAMED
    {
        if missing.len() > MAX_NAMED {
            exec::debug(format_args!(
                "{host}: {} paths to copy: naming only the results, so references come from {host}",
                missing.len()
            ));
        }
        targets.clone()
    } else {
        let mut w: Vec<&str> = missing.iter().map(|(p, _)| p.as_str()).collect();
        for t in &targets {
            if !w.contains(t) {
                w.push(t);
            }
        }
        w
    };
    let plain = copy_command(conn, &env.nix_store(), "--from", &wanted);
    // A big copy over a long link gets a connection of its own, compressed (see `transfer`).
    let bytes: u64 = missing.iter().fold(0u64, |a, (_, s)| a.saturating_add(*s));
    let compressed = conn.compressed_allowed()
        && match settings.compress {
            When::Always => true,
            When::Never => false,
            When::Auto => {
                bytes >= crate::transfer::BIG_COPY
                    && crate::transfer::compress(|| conn.round_trip())
            }
        };
    // A Ctrl-C during the questions above ended them quietly: the copy must not start.
    if crate::signals::any() {
        anyhow::bail!("{host}: {step}: interrupted");
    }
    let copy = if compressed {
        plain
            .clone()
            .env("NIX_SSHOPTS", conn.compressed_nix_sshopts())
    } else {
        plain.clone()
    };
    // One import at a time into the local store: several hosts of a fan-out often bring
    // the same paths, and Nix 2.8's ssh import breaks its protocol when a path becomes
    // valid while it waits for the lock ("not an absolute path: 'nix-archive-1'").
    static IMPORT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let out = {
        let _one_at_a_time = IMPORT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let run = |copy: &Cmd| {
            if showing && !missing.is_empty() {
                copy_showing_progress(copy, &format!("{host}: {step}"), &missing)
            } else {
                copy.output()
            }
        };
        let mut out = run(&copy)?;
        // The compressed connection is a login of its own, which may need what only the
        // shared one had (a password, a prompt): when that login fails, and only then (not
        // after a Ctrl-C, not when nix itself failed), the copy goes through the shared one.
        if compressed
            && !out.status.success()
            && !crate::signals::any()
            && connection_failed(&String::from_utf8_lossy(&out.stderr))
        {
            exec::debug(format_args!(
                "{host}: the compressed connection failed ({}); copying over the shared one",
                exec::stderr_tail(&out).lines().last().unwrap_or("")
            ));
            conn.compressed_login_failed();
            out = run(&plain)?;
        }
        // Another process may have imported the same path meanwhile: a second try finds it
        // valid and copies only what is still missing.
        if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("nix-archive-1") {
            run(&plain)?
        } else {
            out
        }
    };
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = exec::stderr_tail(&out);
    if lacks_signature(&stderr) {
        return Err(Problem::new(
            host,
            step,
            format!("this machine's Nix store refused the paths built on {host}: they are not signed by a key it trusts, and your user may not import unsigned paths"),
            unsigned_fix(host),
        )
        .said("nix", said)
        .into());
    }
    if stderr.contains("daemon-socket") && stderr.contains("Permission denied") {
        return Err(Problem::new(
            host,
            step,
            "your user may not talk to this machine's nix-daemon",
            daemon_group_fix(),
        )
        .said("nix", said)
        .into());
    }
    if crate::ssh::is_chatty(&stderr) {
        return Err(crate::ssh::chatty_shell(host, step)
            .said("nix", said)
            .into());
    }
    if crate::ssh::said_by_ssh(&stderr) {
        return Err(ssh_failure(host, step, &stderr));
    }
    Err(Problem::new(
        host,
        step,
        format!("`{}` failed", shortened(&plain.line())),
        "run it by hand with -v to see more",
    )
    .said("nix", said)
    .into())
}

/// A real file or directory where a result link should go: the user's data, never replaced.
fn not_a_link(host: &str, path: &std::path::Path, when: &str) -> Problem {
    Problem::new(
        host,
        "creating result links",
        format!(
            "{} exists and is not a symlink, so edict will not replace it{when}",
            path.display()
        ),
        "move it away, or pass -o/--out-link to choose another name",
    )
}

/// How a user gets to talk to this machine's nix-daemon.
fn daemon_group_fix() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "YOUR-USER".into());
    format!(
        "add your user to the group that owns /nix/var/nix/daemon-socket (on Debian: `sudo usermod -aG nix-users {user}`), then log in again"
    )
}

/// Runs `copy` with a status line (see `progress`) for `missing` (path, size): nix's log
/// as JSON, read as it comes; the output as if it had run plainly (its messages as text).
fn copy_showing_progress(
    copy: &Cmd,
    what: &str,
    missing: &[(String, u64)],
) -> Result<std::process::Output> {
    use std::io::BufRead as _;
    use std::sync::{Arc, Mutex};
    let mut child = copy
        .clone()
        .args(["--log-format", "internal-json"])
        .spawn(|c| {
            c.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
        })?;
    let stdout = child.stdout.take().map(exec::drain);
    let log = Arc::new(Mutex::new(crate::progress::NixLog::default()));
    let reader = child.stderr.take().map(|err| {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err)
                .split(b'\n')
                .map_while(Result::ok)
            {
                if let Ok(mut log) = log.lock() {
                    log.feed(&String::from_utf8_lossy(&line));
                }
            }
        })
    });
    let sizes: std::collections::HashMap<&str, u64> =
        missing.iter().map(|(p, s)| (p.as_str(), *s)).collect();
    let total: u64 = sizes.values().fold(0u64, |a, s| a.saturating_add(*s));
    let status = crate::progress::Status::start(what);
    let pid = child.id();
    let start = crate::progress::bytes_read(pid).unwrap_or(0);
    let exit = loop {
        if let Some(exit) = child.try_wait()? {
            break exit;
        }
        // What nix says is done, or what it has read from the link, whichever is more.
        let read = crate::progress::bytes_read(pid).map_or(0, |r| r.saturating_sub(start));
        if let Ok(log) = log.lock() {
            let finished: u64 = log
                .finished
                .iter()
                .filter_map(|p| sizes.get(p.as_str()))
                .fold(0u64, |a, s| a.saturating_add(*s));
            let done = finished
                .saturating_add(log.running_bytes())
                .max(read.min(total));
            status.show(done, total, log.finished.len(), missing.len());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    drop(status);
    if let Some(r) = reader {
        let _ = r.join();
    }
    let text = log.lock().map(|l| l.text.clone()).unwrap_or_default();
    Ok(std::process::Output {
        status: exit,
        stdout: stdout.and_then(|t| t.join().ok()).unwrap_or_default(),
        stderr: text.into_bytes(),
    })
}

/// Whether a `nix copy` failed because its ssh connection did (its login, its link), not
/// because of the store: ssh's own words, or nix's for a connection that never came up.
fn connection_failed(stderr: &str) -> bool {
    crate::ssh::said_by_ssh(stderr)
        || stderr.contains("failed to start SSH connection")
        || stderr.contains("kex_exchange_identification")
        || stderr.contains("Connection closed by")
}

/// The most paths a `nix copy` is given by name: each is about 90 bytes of its command
/// line, which the OS bounds (2 MB on Linux, 1 MB on macOS, with the environment).
const MAX_NAMED: usize = 8000;

/// A command line for a message: at most 400 characters, the rest said in a count.
fn shortened(line: &str) -> String {
    match line.char_indices().nth(400) {
        Some((cut, _)) => format!("{} … ({} more characters)", &line[..cut], line.len() - cut),
        None => line.to_string(),
    }
}

/// The closure of `paths` on HOST with the size of each (`scripts/closure.sh`); just
/// `paths`, of size 0, when it cannot be had (the copy then finds the rest itself). Only
/// lines that are store paths, and nothing inside one, are taken: HOST says what they are.
fn closure_there(conn: &Connection, env: &RemoteEnv, paths: &[&str]) -> Vec<(String, u64)> {
    let store_dir = crate::mapping::local_store_dir();
    let mut words = vec![quote(&env.nix_store())];
    words.extend(paths.iter().map(|p| quote(p)));
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let script = crate::remote::call(crate::scripts::CLOSURE, &words);
    let found: Vec<(String, u64)> = conn
        .ssh(crate::ssh::Tty::No, &script)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once('\t'))
                .filter(|(p, _)| {
                    crate::mapping::store_path_of(Path::new(p), &store_dir).as_deref() == Some(*p)
                })
                .map(|(p, s)| (p.to_string(), s.trim().parse().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    if found.is_empty() {
        return paths.iter().map(|p| (p.to_string(), 0)).collect();
    }
    found
}

/// Those of `paths` that this machine's store does not have, in their order.
fn missing_here(paths: Vec<(String, u64)>) -> Vec<(String, u64)> {
    let out = Cmd::new("nix-store")
        .args(["--check-validity", "--print-invalid"])
        .args(paths.iter().map(|(p, _)| p.as_str()))
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let invalid: std::collections::HashSet<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            paths
                .into_iter()
                .filter(|(p, _)| invalid.contains(p))
                .collect()
        }
        _ => paths,
    }
}

/// Makes `link` → `target` (a valid store path) here an indirect GC root, as `nix build`
/// makes its links: the symlink, and nix's record of it.
pub fn add_root(target: &str, link: &std::path::Path) -> Result<()> {
    Cmd::new("nix-store")
        .args(["--realise", target, "--add-root"])
        .arg(link)
        .run_checked()
        .map_err(|e| {
            Problem::new(
                "",
                "",
                format!("creating the result link {}: {e:#}", link.display()),
                format!("check that you can write to {} and that this machine's nix store works (`nix store ping`)", link.parent().unwrap_or(link).display()),
            )
        })?;
    Ok(())
}

/// `nix copy` of `paths` between HOST and this machine's store (`direction` is `--from`
/// HOST or `--to` HOST), through the shared connection; `nix_store` is HOST's nix-store (it
/// may be off the PATH there).
pub fn copy_command(conn: &Connection, nix_store: &str, direction: &str, paths: &[&str]) -> Cmd {
    let store = format!(
        "ssh://{}?remote-program={}",
        conn.transport.dest.target(),
        crate::flakeref::percent_encode(nix_store)
    );
    Cmd::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--no-check-sigs",
            direction,
            &store,
        ])
        // The store that receives first fetches what its own substituters have, and only
        // the rest crosses the link: a nix-daemon here does that (a store opened directly,
        // as root's may be, ignores the flag), and so does `nix-store --serve` there.
        // CppNix before 2.2x tells its daemon `builders-use-substitutes` instead of the flag.
        .args(if substitutes(conn) {
            &[
                "--substitute-on-destination",
                "--option",
                "builders-use-substitutes",
                "true",
            ][..]
        } else {
            &[][..]
        })
        .args(paths.iter().copied())
        .env("NIX_SSHOPTS", conn.nix_sshopts())
}

/// Whether copies over `conn` let the receiving store use its substituters (see `transfer`).
fn substitutes(conn: &Connection) -> bool {
    crate::transfer::substitute(|| conn.round_trip())
}

/// How to make this machine's store take paths built on `host`: trust the user, or have
/// `host` sign. Both are daemon settings, read from /etc/nix/nix.conf when it starts.
pub fn unsigned_fix(host: &str) -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "YOUR-USER".into());
    format!(
        "either let your user import them: add `trusted-users = root {user}` to /etc/nix/nix.conf here and restart the daemon here (`sudo systemctl restart nix-daemon`);\n       or have {host} sign what it builds: on {host}, `sudo sh -c 'nix --extra-experimental-features nix-command key generate-secret --key-name {host}-1 > /etc/nix/key.private'`, add `secret-key-files = /etc/nix/key.private` to /etc/nix/nix.conf there (the daemon's settings, not ~/.config/nix) and restart its daemon (`sudo systemctl restart nix-daemon`); paths it built before are unsigned: sign them there with `sudo nix --extra-experimental-features nix-command store sign -k /etc/nix/key.private -r PATH`;\n       then here, add its public key (`sudo nix --extra-experimental-features nix-command key convert-secret-to-public < /etc/nix/key.private` on {host}) to `extra-trusted-public-keys = …` in /etc/nix/nix.conf and restart the daemon here"
    )
}

/// Whether nix's error is the importing store refusing unsigned paths: Nix 2.8 says
/// "lacks a valid signature", Nix 2.26 and later "lacks a signature by a trusted key".
pub fn lacks_signature(stderr: &str) -> bool {
    stderr.contains("lacks a valid signature")
        || stderr.contains("lacks a signature by a trusted key")
}

/// What must hold here for results to come back, checked before anything is sent (a
/// remote build is minutes lost when the copy then fails): nix is installed, this machine's
/// store answers (a daemon that is down, a socket the user may not use), and no result
/// link's place is taken by a real file or directory.
pub fn check_local(host: &str, plan: &Plan) -> Result<()> {
    let step = "checking this machine's nix store before sending anything";
    if which::which("nix").is_err() {
        return Err(Problem::new(
            host,
            step,
            "nix is not installed on this machine (or not on PATH), so results built remotely can't be copied here",
            "install Nix here, or pass --no-link to run without retrieving results",
        )
        .into());
    }
    // Asking the store for a path it cannot have opens it, through the daemon if there is
    // one, in a few milliseconds: "not valid" is the healthy answer.
    if let Ok(out) = Cmd::new("nix-store")
        .args([
            "--query",
            "--hash",
            "/nix/store/00000000000000000000000000000000-edict-probe",
        ])
        .output()
    {
        let said = String::from_utf8_lossy(&out.stderr);
        if said.contains("cannot connect to socket") || said.contains("Permission denied") {
            let fix = if said.contains("Permission denied") {
                daemon_group_fix()
            } else {
                "start this machine's nix-daemon (`sudo systemctl start nix-daemon`), or run as the store's owner".to_string()
            };
            return Err(Problem::new(
                host,
                step,
                format!("nix here cannot reach it, so results built on {host} could not come back"),
                format!("{fix} (or pass --no-link)"),
            )
            .said("nix", exec::stderr_tail(&out))
            .into());
        }
    }
    for l in &plan.links {
        if let Ok(m) = std::fs::symlink_metadata(&l.local_base) {
            if !m.file_type().is_symlink() {
                return Err(
                    not_a_link(host, &l.local_base, " (checked before sending anything)").into(),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{LinkSpec, RemoteCwd};

    #[test]
    fn both_nix_wordings_of_an_unsigned_path_are_recognised() {
        assert!(lacks_signature(
            "error: cannot add path '/nix/store/x' because it lacks a valid signature"
        ));
        assert!(lacks_signature(
            "error: cannot add path '/nix/store/x' because it lacks a signature by a trusted key"
        ));
        assert!(!lacks_signature("error: cannot connect to socket"));
    }

    #[test]
    fn links_map_to_their_local_bases() {
        let plan = Plan {
            program: crate::nixargs::Program::Nix,
            sources: vec![],
            words: vec![],
            cwd: RemoteCwd::Run,
            links: vec![
                LinkSpec {
                    local_base: "/w/result".into(),
                },
                LinkSpec {
                    local_base: "/tmp/my out".into(),
                },
            ],
            flakes: vec![],
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
        let found: Vec<(String, String)> = [
            ("0/result", "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x"),
            (
                "0/result-dev",
                "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-x-dev",
            ),
            ("1/result", "/nix/store/cccccccccccccccccccccccccccccccc-y"),
            (
                "1/result-1",
                "/nix/store/dddddddddddddddddddddddddddddddd-z",
            ),
            ("0/other", "/nix/store/e"),
            ("0/result-bad", "/etc/passwd"),
            ("7/result", "/nix/store/f"),
            // What a hostile HOST could report: never a link outside its base, never a
            // target outside the store.
            (
                "0/result/../../x",
                "/nix/store/gggggggggggggggggggggggggggggggg-x",
            ),
            (
                "0/result-../x",
                "/nix/store/gggggggggggggggggggggggggggggggg-x",
            ),
            (
                "0/result-a/b",
                "/nix/store/gggggggggggggggggggggggggggggggg-x",
            ),
            ("0/result-x", "/nix/store/../../etc/passwd"),
            ("0/result-y", "/nix/store/.."),
            ("0/result-z", "/nix/store/h/../../etc"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let links = links(&plan, &found);
        let got: Vec<(String, &str)> = links
            .iter()
            .map(|l| (l.local.display().to_string(), l.target.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "/tmp/my out".to_string(),
                    "/nix/store/cccccccccccccccccccccccccccccccc-y"
                ),
                (
                    "/tmp/my out-1".to_string(),
                    "/nix/store/dddddddddddddddddddddddddddddddd-z"
                ),
                (
                    "/w/result".to_string(),
                    "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x"
                ),
                (
                    "/w/result-dev".to_string(),
                    "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-x-dev"
                ),
            ]
        );
    }
}
