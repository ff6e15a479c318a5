//! `edict doctor [HOST…]`: says exactly why a remote host won't work for edict (or for Nix's
//! own remote builds), and how to fix it. Every check is a real probe — a connection, a
//! command, a build, a copy — never a guess from configuration.
//!
//! This module is the probe: it gathers the facts ([`judge::Facts`]), in order, stopping
//! where an earlier failure makes the rest pointless. What the doctor says about them is
//! decided in `judge.rs`. Hosts are checked in parallel.

use crate::exec::{self, Cmd, quote};
pub use crate::judge::Status;
use crate::judge::{
    self, CHECKS, Check, Copy, Facts, HostKeys, Login, Ping, Remote, Report, SshConfig, Store,
};
use crate::pool::Machine;
use crate::remote::{self, sibling};
use crate::ssh::{Connection, Transport, Tty};
use std::collections::BTreeMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Checks one host. `machine` is its pool entry, if it came from the pool.
pub fn check(transport: Transport, machine: Option<&Machine>) -> Report {
    let mut facts = Facts {
        host: transport.label.clone(),
        alias: transport.dest.host.clone(),
        machine: machine.cloned(),
        ..Facts::default()
    };
    // A probe that panics (a bug) is said on the first check not reached.
    let probed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        probe(&mut facts, &transport)
    }));
    let report = judge::judge(&facts);
    match probed {
        Ok(()) => report,
        Err(p) => judge::with_panic(report, exec::panic_text(p.as_ref())),
    }
}

/// Gathers the facts about one host into `f`, in the order of the checks; it stops where
/// the judge would (a failure that makes the rest meaningless).
fn probe(f: &mut Facts, transport: &Transport) {
    // What ssh will use (first: the real host name and port come from here).
    f.ssh_config = Some(ssh_g(transport));
    let Some(Ok(cfg)) = f.ssh_config.clone() else {
        return;
    };
    // Name, port and host key, directly, unless ssh goes through a proxy.
    if cfg.proxy.is_none() {
        let address = (cfg.hostname.as_str(), cfg.port)
            .to_socket_addrs()
            .map(|mut a| a.next())
            .map_err(|e| e.to_string());
        f.address = Some(address.clone());
        let Ok(Some(addr)) = address else { return };
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map(drop)
            .map_err(|e| e.to_string());
        f.tcp = Some(tcp.clone());
        if tcp.is_err() {
            return;
        }
        f.host_keys = Some(host_keys(&cfg));
    }

    // A non-interactive login (BatchMode: a password prompt would hang Nix's builds),
    // running a two-line script, which csh and tcsh refuse.
    let login = login(
        Cmd::new("ssh")
            .args(transport.opts().iter().cloned())
            .args(["-o", "BatchMode=yes", "-T", "--"])
            .arg(transport.dest.target())
            .arg(exec::quote_words(&["sh", "-c", "true\ntrue"])),
    );
    f.login = Some(login.clone());
    let Ok(login) = login else { return };
    if !login.success && !crate::ssh::refused_by_csh(&login.stderr) {
        return;
    }

    let conn = match Connection::open_for_run(transport.clone(), transport.config()) {
        Ok(c) => c,
        Err(e) => {
            f.connection = Some(Err(format!("{e:#}")));
            return;
        }
    };
    f.connection = Some(Ok(()));
    f.remote = Some(remote_facts(&conn));
    let Some(Ok(remote)) = f.remote.clone() else {
        return;
    };
    if remote.nix.is_empty() {
        return;
    }
    f.local_nix = crate::sync::local_nix_version();
    f.local_rsync = Cmd::new("rsync").arg("--version").output().ok().map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    });
    f.store = Some(store(&conn, &f.local_nix, &remote.nix));
    if let Some(path) = remote.built() {
        let copy = crate::results::copy_command(
            &conn,
            &sibling(&remote.nix, "nix-store"),
            "--from",
            &[path],
        );
        let line = copy.line();
        f.trust = Some(match copy.output() {
            Ok(out) if out.status.success() => Copy::Done,
            Ok(out) => Copy::Failed {
                line,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            },
            Err(e) => Copy::NotRun(format!("{e:#}")),
        });
    }
    f.root = Cmd::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if f.root {
        f.daemon = Some(daemon_login(&conn, f.machine.as_ref()));
    }
}

/// `ssh -G HOST`: the settings ssh will really use (config, aliases, defaults).
fn ssh_g(transport: &Transport) -> Result<SshConfig, String> {
    let out = Cmd::new("ssh")
        .args(transport.opts().iter().cloned())
        .args(["-G", "--"])
        .arg(transport.dest.target())
        .output()
        .map_err(|e| format!("{e:#}"))?;
    let mut g: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.split_once(' ') {
            g.entry(k.to_lowercase()).or_default().push(v.to_string());
        }
    }
    if g.is_empty() {
        return Err(format!(
            "ssh -G printed nothing: {}",
            exec::stderr_tail(&out)
        ));
    }
    let first = |key: &str| {
        g.get(key)
            .and_then(|v| v.first())
            .cloned()
            .filter(|v| !v.is_empty() && v != "none")
    };
    let expand_home = |p: &str| match (p.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => p.to_string(),
    };
    let all = |key: &str| -> Vec<String> {
        g.get(key)
            .into_iter()
            .flatten()
            .flat_map(|v| v.split_whitespace().map(expand_home).collect::<Vec<_>>())
            .collect()
    };
    Ok(SshConfig {
        user: first("user").unwrap_or_default(),
        hostname: first("hostname").unwrap_or_default(),
        port: first("port").and_then(|p| p.parse().ok()).unwrap_or(22),
        proxy: first("proxyjump").or_else(|| first("proxycommand")),
        // One path per IdentityFile line (it may hold a space), shown as written.
        identities: g
            .get("identityfile")
            .into_iter()
            .flatten()
            .filter(|f| std::path::Path::new(&expand_home(f)).exists())
            .cloned()
            .collect(),
        host_key_alias: first("hostkeyalias"),
        known_hosts_files: [all("userknownhostsfile"), all("globalknownhostsfile")].concat(),
    })
}

/// The keys the host presents (`ssh-keyscan`), and what each known_hosts file that exists
/// holds for it (`ssh-keygen -F`).
fn host_keys(cfg: &SshConfig) -> HostKeys {
    let fields = |text: &[u8], first: usize| -> Vec<Vec<String>> {
        String::from_utf8_lossy(text)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                l.split_whitespace()
                    .skip(first)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter(|f| f.len() >= 2)
            .collect()
    };
    let presented = Cmd::new("ssh-keyscan")
        .args(["-T", "3", "-p", &cfg.port.to_string(), &cfg.hostname])
        .output()
        .map(|o| fields(&o.stdout, 1))
        .unwrap_or_default()
        .into_iter()
        .map(|f| (f[0].clone(), f[1].clone()))
        .collect();
    let name = judge::known_hosts_name(cfg);
    let files: Vec<String> = cfg
        .known_hosts_files
        .iter()
        .filter(|f| std::path::Path::new(f).exists())
        .cloned()
        .collect();
    let mut known = Vec::new();
    for file in &files {
        if let Ok(out) = Cmd::new("ssh-keygen")
            .args(["-F", &name, "-f", file])
            .output()
        {
            for f in fields(&out.stdout, 1) {
                known.push((file.clone(), f[0].clone(), f[1].clone()));
            }
        }
    }
    HostKeys {
        presented,
        files: cfg.known_hosts_files.clone(),
        known,
    }
}

/// How an ssh command ended, or why it could not run.
fn login(cmd: Cmd) -> Result<Login, String> {
    cmd.output()
        .map(|out| Login {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
        .map_err(|e| format!("{e:#}"))
}

/// Runs `scripts/doctor.sh` there (one round trip) and reads what it found; the other
/// rsyncs only when a run would look for them.
fn remote_facts(conn: &Connection) -> Result<Remote, String> {
    let tag = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let expr = format!(
        "derivation {{ name = \"edict-doctor-{tag}\"; system = builtins.currentSystem; builder = \"/bin/sh\"; args = [ \"-c\" \"echo ok > $out\" ]; }}"
    );
    let script = remote::call(
        crate::scripts::DOCTOR,
        &[&remote::places_word(), &quote(&expr)],
    );
    let out = conn
        .ssh(Tty::No, &script)
        .output()
        .map_err(|e| format!("{e:#}"))?;
    if exec::verbosity() >= 2 {
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if out.status.code() == Some(255) {
        let host = &conn.transport.label;
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{:#}",
            crate::ssh::ssh_failure(host, "asking what is there", &stderr)
        ));
    }
    let mut remote = parse_remote(&String::from_utf8_lossy(&out.stdout));
    remote.build_expr = expr;
    if judge::wants_other_rsync(&remote.rsync, &remote.rsync_version) {
        remote.other_rsync = remote::other_rsync(conn);
    }
    Ok(remote)
}

/// What doctor.sh printed after its marker, as [`Remote`] facts.
fn parse_remote(stdout: &str) -> Remote {
    let after = stdout
        .split_once("EDICT-DOCTOR-BEGIN\n")
        .map_or(stdout, |(_, after)| after);
    let mut r = Remote::default();
    for line in after.lines() {
        let Some((key, value)) = line.strip_prefix("EDICT-").and_then(|l| l.split_once(' ')) else {
            continue;
        };
        let value = value.trim().to_string();
        match key {
            "path-nix" => r.path_nix = value,
            "nix" => r.nix = value,
            "version" => r.version = value,
            "system" => r.system = value,
            "rsync" => r.rsync = value,
            "rsyncv" => r.rsync_version = value,
            "build" => {
                let (code, last) = value.split_once(' ').unwrap_or((&value, ""));
                r.build = Some((code.parse().unwrap_or(-1), last.trim().to_string()));
            }
            "setting" => {
                if let Some((k, v)) = value.split_once('=') {
                    match k.trim() {
                        "experimental-features" => r.features = v.trim().to_string(),
                        "extra-platforms" => r.extra_platforms = v.trim().to_string(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    r
}

/// `nix store info` (`ping` before Nix 2.19) from here, over ssh:// (nix-store there) and
/// ssh-ng:// (nix-daemon), each again with `?remote-program=` when it fails.
fn store(conn: &Connection, local_nix: &str, nix: &str) -> Store {
    let v: Vec<u32> = local_nix
        .split_whitespace()
        .last()
        .unwrap_or("")
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    let sub = if v.as_slice() >= [2, 19].as_slice() {
        "info"
    } else {
        "ping"
    };
    let ping = |uri: &str| -> Result<(), String> {
        let out = Cmd::new("nix")
            .args(["--extra-experimental-features", "nix-command", "store", sub])
            .args(["--store", uri])
            .env("NIX_SSHOPTS", conn.nix_sshopts())
            .output()
            .map_err(|_| "no nix here".to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(exec::stderr_tail(&out))
        }
    };
    let target = conn.transport.dest.target();
    let pings = [("ssh", "nix-store"), ("ssh-ng", "nix-daemon")]
        .into_iter()
        .map(|(scheme, program)| {
            let uri = format!("{scheme}://{target}");
            let result = ping(&uri);
            let with_program = result.is_err().then(|| {
                let with = format!("{uri}?remote-program={}", sibling(nix, program));
                let works = ping(&with).is_ok();
                (with, works)
            });
            Ping {
                uri,
                result,
                with_program,
            }
        })
        .collect();
    Store {
        sub: sub.to_string(),
        target,
        pings,
    }
}

/// A login as root as Nix's daemon makes it: root's ssh config and only what the machines
/// file says (key, pinned host key), not the user's NIX_SSHOPTS or agent.
fn daemon_login(conn: &Connection, machine: Option<&Machine>) -> Result<Login, String> {
    let transport = match machine {
        Some(m) => m.transport(""),
        None => Ok(Transport::new(
            &conn.transport.label,
            conn.transport.dest.clone(),
            "",
        )),
    }
    .map_err(|e| format!("{e:#}"))?;
    login(
        Cmd::new("ssh")
            .args(transport.opts().iter().cloned())
            .args([
                "-o",
                "BatchMode=yes",
                "-T",
                "--",
                &transport.dest.target(),
                "true",
            ])
            .env_remove("SSH_AUTH_SOCK"),
    )
}

/// The table: one row per host, one column per check; then one fix per problem.
pub fn render(reports: &[Report]) -> String {
    let width = reports
        .iter()
        .map(|r| r.host.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let cols: Vec<usize> = CHECKS
        .iter()
        .map(|(_, _, title)| title.chars().count().max(7))
        .collect();
    let mut out = format!("{:<width$}", "HOST");
    for ((_, _, title), w) in CHECKS.iter().zip(&cols) {
        out.push_str(&format!("  {title:<w$}"));
    }
    out.push('\n');
    for r in reports {
        out.push_str(&format!("{:<width$}", r.host));
        for (c, w) in r.checks.iter().zip(&cols) {
            out.push_str(&format!("  {:<w$}", c.status.to_string()));
        }
        out.push('\n');
    }
    for r in reports {
        let problems: Vec<&Check> = r
            .checks
            .iter()
            .filter(|c| matches!(c.status, Status::Fail | Status::Warn))
            .collect();
        if problems.is_empty() {
            continue;
        }
        out.push_str(&format!("\n{}:\n", r.host));
        for c in problems {
            out.push_str(&format!("  {} {}: {}\n", c.status, c.id, c.detail));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("    fix: {fix}\n"));
            }
        }
    }
    if exec::verbosity() >= 1 {
        for r in reports {
            out.push_str(&format!("\n{} (all checks):\n", r.host));
            for c in &r.checks {
                out.push_str(&format!(
                    "  {:<7} {:<12} {}\n",
                    c.status.to_string(),
                    c.id,
                    c.detail
                ));
            }
        }
    }
    out
}

/// Runs the checks for every host in parallel; a host whose thread fails is that host's
/// failure, reported.
pub fn run(targets: Vec<(Transport, Option<Machine>)>) -> Vec<Report> {
    let handles: Vec<_> = targets
        .into_iter()
        .map(|(t, m)| {
            let host = t.label.clone();
            (host, std::thread::spawn(move || check(t, m.as_ref())))
        })
        .collect();
    handles
        .into_iter()
        .map(|(host, h)| {
            h.join().unwrap_or_else(|p| {
                let nothing = judge::judge(&Facts {
                    host,
                    ..Facts::default()
                });
                judge::with_panic(nothing, exec::panic_text(p.as_ref()))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_check_and_the_fixes() {
        let report = judge::judge(&Facts {
            host: "h".into(),
            ssh_config: Some(Err("ssh -G printed nothing".into())),
            ..Facts::default()
        });
        assert_eq!(report.checks.len(), CHECKS.len());
        assert_eq!(report.checks[0].status, Status::Skipped);
        let text = render(&[report]);
        assert!(
            text.contains("FAIL") && text.contains("fix: check your ssh config for h"),
            "{text}"
        );
    }

    /// doctor.sh's lines, after whatever the login shell printed, as facts.
    #[test]
    fn the_remote_script_s_lines_make_the_facts() {
        let out = "Welcome\nEDICT-DOCTOR-BEGIN\nEDICT-path-nix \nEDICT-nix /nix/var/nix/profiles/default/bin/nix\nEDICT-version nix (Nix) 2.26.3\nEDICT-setting experimental-features = flakes nix-command\nEDICT-setting extra-platforms = i686-linux\nEDICT-system x86_64-linux\nEDICT-build 0 /nix/store/a-x\nEDICT-rsync /usr/bin/rsync\nEDICT-rsyncv rsync  version 3.2.7  protocol version 31\n";
        let r = parse_remote(out);
        assert_eq!(r.path_nix, "");
        assert_eq!(r.nix, "/nix/var/nix/profiles/default/bin/nix");
        assert_eq!(r.version, "nix (Nix) 2.26.3");
        assert_eq!(r.features, "flakes nix-command");
        assert_eq!(r.extra_platforms, "i686-linux");
        assert_eq!(r.system, "x86_64-linux");
        assert_eq!(r.built(), Some("/nix/store/a-x"));
        assert_eq!(r.rsync, "/usr/bin/rsync");
        assert!(r.rsync_version.starts_with("rsync  version 3.2.7"));
        let failed = parse_remote("EDICT-DOCTOR-BEGIN\nEDICT-build 1 error: no space left\n");
        assert_eq!(failed.build, Some((1, "error: no space left".into())));
        assert_eq!(failed.built(), None);
    }

    /// The script itself, run here under sh: it finds this machine's nix (when there is
    /// one) and rsync, and says so in lines [`parse_remote`] reads.
    #[test]
    fn the_remote_script_runs_in_sh() {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(crate::scripts::one_line(crate::scripts::DOCTOR))
            .args(["sh", "/nonexistent", "1"])
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap();
        let r = parse_remote(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(r.rsync, "/usr/bin/rsync");
        assert_eq!(
            r.nix.is_empty(),
            !std::path::Path::new("/usr/bin/nix").exists()
        );
        if !r.nix.is_empty() {
            assert!(r.version.starts_with("nix (Nix)"), "{r:?}");
            // `1` is no derivation: the build fails, and says why.
            assert!(
                matches!(&r.build, Some((c, l)) if *c != 0 && !l.is_empty()),
                "{r:?}"
            );
        }
    }
}
