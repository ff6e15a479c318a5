//! `edict doctor [HOST…]`: says exactly why a remote host won't work for edict (or for Nix's
//! own remote builds), and how to fix it. Every check is a real probe — a connection, a
//! command, a build, a copy — never a guess from configuration.
//!
//! Hosts are checked in parallel; within a host the checks run in order, and one that
//! can't run because an earlier one failed is `skipped`.

use crate::exec::{self, Cmd, quote};
use crate::pool::Machine;
use crate::remote::{NIX_PLACES, sibling};
use crate::ssh::{self, Connection, Transport, Tty};
use anyhow::Result;
use std::collections::BTreeMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skipped,
    Warn,
    Fail,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skipped => "skipped",
        })
    }
}

/// Every check the doctor makes, in the order it makes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckId {
    Resolve,
    Tcp,
    SshConfig,
    HostKey,
    Login,
    QuietShell,
    NixPath,
    NixVersion,
    Build,
    Store,
    Rsync,
    System,
    Trust,
    Daemon,
}

impl CheckId {
    /// The name in JSON and in the detailed lines (`host-key`).
    pub fn name(self) -> &'static str {
        CHECKS
            .iter()
            .find(|(id, _, _)| *id == self)
            .map_or("", |(_, name, _)| name)
    }
}

impl std::fmt::Display for CheckId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    pub id: CheckId,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// For warn/FAIL: the file to edit and the line to put there, or the command to run.
    pub fix: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub host: String,
    pub checks: Vec<Check>,
}

/// The checks, in order: id, name, and the column title of the table.
pub const CHECKS: &[(CheckId, &str, &str)] = &[
    (CheckId::Resolve, "resolve", "name"),
    (CheckId::Tcp, "tcp", "port"),
    (CheckId::SshConfig, "ssh-config", "ssh -G"),
    (CheckId::HostKey, "host-key", "host key"),
    (CheckId::Login, "login", "login"),
    (CheckId::QuietShell, "quiet-shell", "quiet shell"),
    (CheckId::NixPath, "nix-path", "nix on PATH"),
    (CheckId::NixVersion, "nix-version", "nix"),
    (CheckId::Build, "build", "build"),
    (CheckId::Store, "store", "store URI"),
    (CheckId::Rsync, "rsync", "rsync"),
    (CheckId::System, "system", "system"),
    (CheckId::Trust, "trust", "trust"),
    (CheckId::Daemon, "daemon", "as daemon"),
];

struct Run {
    host: String,
    checks: BTreeMap<CheckId, Check>,
}

impl Run {
    fn set(&mut self, id: CheckId, status: Status, detail: impl Into<String>, fix: Option<String>) {
        self.checks.insert(
            id,
            Check {
                id,
                status,
                detail: detail.into(),
                fix,
            },
        );
    }
    fn ok(&mut self, id: CheckId, detail: impl Into<String>) {
        self.set(id, Status::Ok, detail, None);
    }
    fn warn(&mut self, id: CheckId, detail: impl Into<String>, fix: impl Into<String>) {
        self.set(id, Status::Warn, detail, Some(fix.into()));
    }
    fn fail(&mut self, id: CheckId, detail: impl Into<String>, fix: impl Into<String>) {
        self.set(id, Status::Fail, detail, Some(fix.into()));
    }
    /// A FAIL from one of edict's own error messages (`what…\n  fix: …`): the detail on one
    /// line, and its fix, or `fallback` if it has none.
    /// A FAIL from an edict error: a [`Problem`]'s step, what and words on one line, and its
    /// fix; any other error as text, with `fallback` for the fix.
    fn fail_problem(&mut self, id: CheckId, e: &anyhow::Error, fallback: String) {
        match crate::problem::Problem::of(e) {
            Some(p) => {
                let mut detail = format!("{}: {}", p.step, p.what);
                if let Some((who, said)) = &p.said {
                    detail.push_str(&format!(
                        " / {who} said: {}",
                        said.lines().collect::<Vec<_>>().join(" / ")
                    ));
                }
                self.fail(id, detail, p.fix.clone());
            }
            None => self.fail(id, format!("{e:#}"), fallback),
        }
    }
    fn fail_with(&mut self, id: CheckId, message: &str, fallback: String) {
        let (what, fix) = message
            .split_once("\n  fix: ")
            .map_or((message, fallback), |(a, b)| (a, b.to_string()));
        // One line in the table: ssh's lines kept apart.
        let what: Vec<&str> = what
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        self.fail(id, what.join(" / "), fix);
    }
    fn skip_rest(&mut self, why: &str) {
        for &(id, _, _) in CHECKS {
            self.checks.entry(id).or_insert_with(|| Check {
                id,
                status: Status::Skipped,
                detail: why.to_string(),
                fix: None,
            });
        }
    }
    fn report(mut self) -> Report {
        self.skip_rest("not reached");
        Report {
            host: self.host,
            checks: CHECKS
                .iter()
                .filter_map(|(id, _, _)| self.checks.remove(id))
                .collect(),
        }
    }
}

/// `ssh -G HOST`: the settings ssh will really use (config, aliases, defaults).
fn ssh_g(transport: &Transport) -> Result<BTreeMap<String, Vec<String>>> {
    let out = Cmd::new("ssh")
        .args(transport.opts().iter().cloned())
        .args(["-G", "--"])
        .arg(transport.dest.target())
        .output()?;
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.split_once(' ') {
            map.entry(k.to_lowercase()).or_default().push(v.to_string());
        }
    }
    if map.is_empty() {
        anyhow::bail!("ssh -G printed nothing: {}", exec::stderr_tail(&out));
    }
    Ok(map)
}

fn first<'a>(g: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    g.get(key)
        .and_then(|v| v.first())
        .map(String::as_str)
        .unwrap_or("")
}

/// Checks one host. `machine` is its pool entry, if it came from the pool.
pub fn check(transport: Transport, machine: Option<&Machine>) -> Report {
    let mut r = Run {
        host: transport.label.clone(),
        checks: BTreeMap::new(),
    };
    // A check that panics (a bug) is said on the first check not yet made; the ones made
    // before it keep their results.
    let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        checks(&mut r, &transport, machine)
    }));
    if let Err(p) = made {
        if let Some(&(id, _, _)) = CHECKS.iter().find(|(id, _, _)| !r.checks.contains_key(id)) {
            r.fail(
                id,
                crate::exec::panic_text(p.as_ref()),
                "report it, with the output of `edict doctor -v HOST`",
            );
        }
    }
    r.report()
}

/// The checks for one host, in order, into `r`; they stop at the first one that makes the
/// rest meaningless.
fn checks(r: &mut Run, transport: &Transport, machine: Option<&Machine>) {
    let host = transport.label.clone();

    // 2. What ssh will use (first: the real host name and port come from here).
    let g = match ssh_g(transport) {
        Ok(g) => g,
        Err(e) => {
            r.fail(
                CheckId::SshConfig,
                format!("{e:#}"),
                format!("check your ssh config for {host}: `ssh -G {host}`"),
            );
            return;
        }
    };
    let hostname = first(&g, "hostname").to_string();
    let port: u16 = first(&g, "port").parse().unwrap_or(22);
    let proxy = [first(&g, "proxyjump"), first(&g, "proxycommand")]
        .into_iter()
        .find(|p| !p.is_empty() && *p != "none")
        .map(str::to_string);
    let identities: Vec<String> = g.get("identityfile").cloned().unwrap_or_default();
    let existing: Vec<&String> = identities
        .iter()
        .filter(|f| std::path::Path::new(&expand_home(f)).exists())
        .collect();
    r.ok(
        CheckId::SshConfig,
        format!(
            "user {}, {hostname}:{port}{}, identity {}",
            first(&g, "user"),
            proxy
                .as_ref()
                .map(|p| format!(" via {p}"))
                .unwrap_or_default(),
            if existing.is_empty() {
                "from the agent".to_string()
            } else {
                existing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
    );

    // 1. Name and port (directly, unless ssh goes through a proxy).
    if proxy.is_some() {
        r.set(
            CheckId::Resolve,
            Status::Skipped,
            "reached through a proxy",
            None,
        );
        r.set(
            CheckId::Tcp,
            Status::Skipped,
            "reached through a proxy",
            None,
        );
    } else {
        match (hostname.as_str(), port).to_socket_addrs() {
            Ok(mut addrs) => match addrs.next() {
                Some(addr) => {
                    r.ok(CheckId::Resolve, format!("{hostname} is {}", addr.ip()));
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                        Ok(_) => r.ok(CheckId::Tcp, format!("{addr} accepts connections")),
                        Err(e) => {
                            r.fail(CheckId::Tcp, format!("{addr}: {e}"), format!("start sshd on {host} or check the port (`ssh -G {host} | grep ^port`) and any firewall"));
                            return;
                        }
                    }
                }
                None => {
                    r.fail(
                        CheckId::Resolve,
                        format!("{hostname} has no address"),
                        format!("check the name, or set `HostName` for {host} in ~/.ssh/config"),
                    );
                    return;
                }
            },
            Err(e) => {
                r.fail(CheckId::Resolve, format!("{hostname}: {e}"), format!("check the spelling, or add `Host {host}` with a `HostName` to ~/.ssh/config"));
                return;
            }
        }
    }

    // 3. Host key: what the host presents against every place that may know it.
    host_key(r, transport, &g, &hostname, port, proxy.is_some(), machine);

    // 4. A non-interactive login (BatchMode: a password prompt would hang Nix's builds),
    // running a two-line script quoted as edict's are, which csh and tcsh refuse.
    let login = Cmd::new("ssh")
        .args(transport.opts().iter().cloned())
        .args(["-o", "BatchMode=yes", "-T", "--"])
        .arg(transport.dest.target())
        .arg(crate::exec::quote_words(&["sh", "-c", "true\ntrue"]))
        .output();
    let login = match login {
        Ok(out) => out,
        Err(e) => {
            r.fail(
                CheckId::Login,
                format!("{e:#}"),
                "install OpenSSH's client (ssh)",
            );
            return;
        }
    };
    let csh = ssh::csh_shell(&host, &String::from_utf8_lossy(&login.stderr));
    if !login.status.success() && csh.is_none() {
        let err = ssh::ssh_failure(&host, "logging in", &String::from_utf8_lossy(&login.stderr));
        r.fail_problem(CheckId::Login, &err, format!("run `ssh -v {host} true`"));
        return;
    }
    r.ok(CheckId::Login, "key login without a prompt works");
    if let Some(explained) = csh {
        r.fail_with(CheckId::QuietShell, &explained, String::new());
        return;
    }

    // 5. The shell must print nothing in non-interactive sessions.
    let noise = [&login.stdout[..], &login.stderr[..]].concat();
    let (status, detail, fix) = judge_quiet_shell(&host, &String::from_utf8_lossy(&noise));
    r.set(CheckId::QuietShell, status, detail, fix);

    let conn = match Connection::open(transport.clone()) {
        Ok(c) => c,
        Err(e) => {
            r.fail(
                CheckId::NixPath,
                format!("{e:#}"),
                format!("run `ssh -v {host} true`"),
            );
            return;
        }
    };
    remote_checks(r, &conn, machine, (&hostname, port));
}

fn expand_home(p: &str) -> String {
    match (p.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => p.to_string(),
    }
}

fn host_key(
    r: &mut Run,
    transport: &Transport,
    g: &BTreeMap<String, Vec<String>>,
    hostname: &str,
    port: u16,
    proxied: bool,
    machine: Option<&Machine>,
) {
    let host = transport.label.clone();
    if proxied {
        r.set(
            CheckId::HostKey,
            Status::Skipped,
            "through a proxy: checked by the login below",
            None,
        );
        return;
    }
    let scan = Cmd::new("ssh-keyscan")
        .args(["-T", "3", "-p", &port.to_string(), hostname])
        .output();
    let presented: Vec<(String, String)> = match &scan {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3).then(|| (f[1].to_string(), f[2].to_string()))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    if presented.is_empty() {
        r.warn(
            CheckId::HostKey,
            "ssh-keyscan got no keys",
            "install ssh-keyscan (OpenSSH) here; the login check below still tests the key",
        );
        return;
    }
    if let Some(pinned) = machine.and_then(|m| m.host_key.clone()) {
        let f: Vec<&str> = pinned.split_whitespace().collect();
        let ok = f.len() >= 2 && presented.iter().any(|(t, k)| t == f[0] && k == f[1]);
        if ok {
            r.ok(
                CheckId::HostKey,
                format!("{} matches the machines file's ssh-public-host-key", f[0]),
            );
        } else {
            r.fail(
                CheckId::HostKey,
                format!("{host} presents {}, not the key pinned in the machines file ({})", presented.iter().map(|p| p.0.clone()).collect::<Vec<_>>().join(", "), machine.map(|m| m.origin.clone()).unwrap_or_default()),
                format!("if {host} was reinstalled, put its new key there: `base64 -w0 < /etc/ssh/ssh_host_ed25519_key.pub` on {host} (legacy format), or the key text (TOML)"),
            );
        }
        return;
    }
    let alias = first(g, "hostkeyalias");
    let name = if !alias.is_empty() && alias != "none" {
        alias.to_string()
    } else if port == 22 {
        hostname.to_string()
    } else {
        format!("[{hostname}]:{port}")
    };
    let mut files: Vec<String> = Vec::new();
    for key in ["userknownhostsfile", "globalknownhostsfile"] {
        for v in g.get(key).into_iter().flatten() {
            files.extend(v.split_whitespace().map(expand_home));
        }
    }
    let mut known: Vec<(String, String, String)> = Vec::new(); // (file, type, key)
    for file in files.iter().filter(|f| std::path::Path::new(f).exists()) {
        if let Ok(out) = Cmd::new("ssh-keygen")
            .args(["-F", &name, "-f", file])
            .output()
        {
            for l in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with('#'))
            {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() >= 3 {
                    known.push((file.clone(), f[1].to_string(), f[2].to_string()));
                }
            }
        }
    }
    let matching: Vec<&(String, String, String)> = known
        .iter()
        .filter(|(_, t, k)| presented.iter().any(|(pt, pk)| pt == t && pk == k))
        .collect();
    let mismatched: Vec<&(String, String, String)> = known
        .iter()
        .filter(|(_, t, k)| presented.iter().any(|(pt, pk)| pt == t && pk != k))
        .collect();
    if !mismatched.is_empty() {
        r.fail(
            CheckId::HostKey,
            format!("{host} presents a different {} key than {} knows", mismatched[0].1, mismatched[0].0),
            format!("if {host} was reinstalled, check its new fingerprint (`ssh-keyscan -p {port} {hostname} | ssh-keygen -lf -`), then `ssh-keygen -R '{name}' -f {}` and connect once; otherwise someone may be intercepting the connection", mismatched[0].0),
        );
    } else if let Some((file, t, _)) = matching.first() {
        r.ok(CheckId::HostKey, format!("{t} known in {file}"));
    } else {
        r.fail(
            CheckId::HostKey,
            format!("no known_hosts file knows {name} ({})", files.join(", ")),
            format!("check the fingerprint (`ssh-keyscan -p {port} {hostname} | ssh-keygen -lf -`), then `ssh-keyscan -p {port} {hostname} >> ~/.ssh/known_hosts`"),
        );
    }
}

/// Checks 6–13, over the open connection.
fn remote_checks(r: &mut Run, conn: &Connection, machine: Option<&Machine>, addr: (&str, u16)) {
    let host = conn.transport.label.clone();
    // What a script prints, after whatever the login shell printed first (a banner, which
    // the quiet-shell check reports): a marker line separates them.
    const BEGIN: &str = "EDICT-DOCTOR-BEGIN\n";
    let sh = |script: &str| -> (bool, String, String) {
        match conn
            .ssh(
                Tty::No,
                &format!("printf '{}\\n'; {script}", BEGIN.trim_end()),
            )
            .output()
        {
            Ok(out) => {
                if exec::verbosity() >= 2 {
                    eprintln!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                let stdout = String::from_utf8_lossy(&out.stdout);
                let stdout = stdout
                    .split_once(BEGIN)
                    .map_or(&*stdout, |(_, after)| after);
                (
                    out.status.success(),
                    stdout.trim().to_string(),
                    exec::stderr_tail(&out),
                )
            }
            Err(e) => (false, String::new(), format!("{e:#}")),
        }
    };

    // 6. nix from a non-interactive shell, or only in a profile.
    let (on_path, path_nix, _) = sh("command -v nix");
    let nix = if on_path && !path_nix.is_empty() {
        r.ok(CheckId::NixPath, path_nix.clone());
        path_nix
    } else {
        let (found, profile_nix, _) = sh(&format!("PATH={NIX_PLACES}; command -v nix"));
        if found && !profile_nix.is_empty() {
            let dir = profile_nix.trim_end_matches("/nix").to_string();
            r.warn(
                CheckId::NixPath,
                format!("only in {dir} (edict copes; Nix's own remote builds and `nix copy` to {host} don't)"),
                format!("on {host}, put {dir} on the PATH of non-interactive shells (e.g. in ~/.bashrc before any interactive-only guard, or `SetEnv PATH=…` in sshd_config), or use the store URI `ssh://{host}?remote-program={dir}/nix-store` (`ssh-ng://…?remote-program={dir}/nix-daemon`)"),
            );
            profile_nix
        } else {
            r.fail(
                CheckId::NixPath,
                format!(
                    "no nix on {host} (looked on PATH and in {})",
                    NIX_PLACES.replace(':', ", ")
                ),
                format!(
                    "install Nix on {host}: `sh <(curl -L https://nixos.org/nix/install) --daemon`"
                ),
            );
            r.skip_rest("needs nix on the host");
            return;
        }
    };
    let nix_q = quote(&nix);
    let nix_store = sibling(&nix, "nix-store");

    // 7. Version and experimental features.
    let (_, version, _) = sh(&format!("{nix_q} --version"));
    let version = crate::mapping::version_line(&version);
    // Its settings, once (`show-config`, or `config show` where that was dropped).
    let (_, config, _) = sh(&format!(
        "{nix_q} --extra-experimental-features nix-command show-config 2>/dev/null || {nix_q} --extra-experimental-features nix-command config show"
    ));
    let setting = |name: &str| {
        config
            .lines()
            .find_map(|l| {
                l.split_once('=')
                    .filter(|(k, _)| k.trim() == name)
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let features = setting("experimental-features");
    let local = crate::sync::local_nix_version();
    let (status, detail, fix) = judge_nix_version(&host, &local, &version, &features);
    r.set(CheckId::NixVersion, status, detail, fix);

    // 8. The store can build: a tiny derivation no store has, without substitutes.
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
    let (built, out_path, build_err) = sh(&format!(
        "{} --no-out-link --option substitute false -E {}",
        quote(&sibling(&nix, "nix-build")),
        quote(&expr)
    ));
    let out_path = out_path.lines().last().unwrap_or("").to_string();
    if built && out_path.starts_with('/') {
        r.ok(CheckId::Build, format!("built {out_path}"));
    } else {
        r.fail(CheckId::Build, format!("a trivial build failed: {}", build_err.lines().last().unwrap_or("")), format!("run `nix-build -E '{expr}'` on {host} and fix what it says (disk space, nix-daemon, build users, sandbox)"));
    }

    // 9. The store URI nix itself would use, from this machine.
    store_uri(r, conn, &nix);

    // 10. rsync on both sides: here, and there the one a run would use (on the PATH, or in
    // a Nix profile or Homebrew's directory when that one cannot be used).
    let local_rsync = Cmd::new("rsync").arg("--version").output().ok().map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    });
    // Its path and `--version` line, in one round trip.
    let (_, found, _) = sh(&format!(
        "PATH=\"$PATH:{NIX_PLACES}\"; command -v rsync || echo; rsync --version 2>/dev/null | head -n 1"
    ));
    let mut found = found.lines();
    let path_rsync = found.next().unwrap_or_default().trim().to_string();
    let remote_rsync = found.next().unwrap_or_default().to_string();
    let on_path = (!path_rsync.is_empty()).then_some(path_rsync);
    let (status, detail, fix) = judge_rsync(
        &host,
        local_rsync.as_deref(),
        on_path,
        &remote_rsync,
        || crate::remote::other_rsync(conn),
    );
    r.set(CheckId::Rsync, status, detail, fix);

    // 11. The host's system against the machines file.
    let (_, system, _) = sh(&format!(
        "{nix_q} --extra-experimental-features nix-command eval --impure --raw --expr builtins.currentSystem"
    ));
    let (status, detail, fix) = judge_system(&host, &system, &setting("extra-platforms"), machine);
    r.set(CheckId::System, status, detail, fix);

    // 12. Trust: import that path here, for real.
    if built && out_path.starts_with('/') {
        let copy = crate::results::copy_command(conn, &nix_store, "--from", &[&out_path]);
        let line = copy.line();
        match copy.output() {
            Ok(out) if out.status.success() => {
                r.ok(CheckId::Trust, "a path built there imports here")
            }
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                if crate::results::lacks_signature(&err) {
                    r.fail(
                        CheckId::Trust,
                        "this machine's store refuses unsigned paths from your user",
                        crate::results::unsigned_fix(&host),
                    );
                } else {
                    r.fail(
                        CheckId::Trust,
                        format!(
                            "nix copy failed: {}",
                            exec::stderr_tail(&out).lines().last().unwrap_or("")
                        ),
                        format!("run `{line}` to see why"),
                    );
                }
            }
            Err(e) => r.fail(CheckId::Trust, format!("{e:#}"), "install nix here"),
        }
    } else {
        r.set(CheckId::Trust, Status::Skipped, "needs a built path", None);
    }

    // 13. As root: what Nix's daemon needs to use this host in `builders`.
    daemon_view(r, conn, machine, addr);
}

/// The quiet-shell check from what a non-interactive login printed (`ssh HOST true`).
fn judge_quiet_shell(host: &str, printed: &str) -> (Status, String, Option<String>) {
    let printed = printed.trim();
    if printed.is_empty() {
        return (Status::Ok, "prints nothing".into(), None);
    }
    (
        Status::Fail,
        format!(
            "`ssh {host} true` prints: {}",
            printed.lines().take(3).collect::<Vec<_>>().join(" / ")
        ),
        Some(format!(
            "on {host}, make the shell rc files (~/.bashrc, ~/.zshenv, /etc/bash.bashrc, /etc/profile.d) print only in interactive shells: start ~/.bashrc with `[[ $- == *i* ]] || return`; Nix's and rsync's protocols break on any output"
        )),
    )
}

/// The system check from what was found: HOST's `builtins.currentSystem` and its
/// `extra-platforms`, against what its machines-file entry (if any) claims.
fn judge_system(
    host: &str,
    system: &str,
    extra_platforms: &str,
    machine: Option<&Machine>,
) -> (Status, String, Option<String>) {
    let mut systems: Vec<String> = std::iter::once(system.to_string())
        .chain(extra_platforms.split_whitespace().map(str::to_string))
        .filter(|s| !s.is_empty())
        .collect();
    systems.dedup();
    let Some(m) = machine else {
        return (Status::Ok, systems.join(", "), None);
    };
    let claimed: Vec<&str> = m
        .system_types
        .iter()
        .filter(|s| !systems.contains(s))
        .map(String::as_str)
        .collect();
    if claimed.is_empty() {
        return (
            Status::Ok,
            format!("{} (as the machines file says)", systems.join(", ")),
            None,
        );
    }
    (
        Status::Fail,
        format!(
            "{host} builds for {}, but {} claims {}",
            systems.join(", "),
            m.origin,
            claimed.join(", ")
        ),
        Some(format!(
            "fix the system-types of {} in {}, or add `extra-platforms = …` (with binfmt/emulation) in {host}'s nix.conf",
            m.name, m.origin
        )),
    )
}

/// The nix-version check from what was found: the nix here and there (`nix --version`)
/// and HOST's `experimental-features`. Flakes off is a warning (edict passes the flags);
/// so is a lock-format skew: Nix 2.26 locks relative `path:` inputs in a form older Nix
/// and Lix refuse.
fn judge_nix_version(
    host: &str,
    local: &str,
    version: &str,
    features: &str,
) -> (Status, String, Option<String>) {
    let skew = match (
        crate::mapping::reads_relative_locks(local),
        crate::mapping::reads_relative_locks(version),
    ) {
        (false, true) => Some(format!(
            "; it writes relative path: inputs of flake.lock in the Nix 2.26 form, which the nix here ({local}) cannot read: edict keeps your lock on builds there and brings {host}'s back beside it after `nix flake lock/update`"
        )),
        (true, false) => Some(format!(
            "; the nix here ({local}) writes relative path: inputs of flake.lock in the Nix 2.26 form, which it cannot read: edict sends it a lock without them, and it locks them itself"
        )),
        _ => None,
    };
    let skew_fix = "for one lock format on both sides, use Nix 2.26 or later on both machines (or older on both)";
    if features.contains("flakes") && features.contains("nix-command") {
        match skew {
            None => (Status::Ok, format!("{version}, flakes on"), None),
            Some(skew) => (
                Status::Warn,
                format!("{version}, flakes on{skew}"),
                Some(skew_fix.to_string()),
            ),
        }
    } else {
        (
            Status::Warn,
            format!(
                "{version}, flakes off (edict passes --extra-experimental-features){}",
                skew.as_deref().unwrap_or_default()
            ),
            Some(format!(
                "to turn them on for everything on {host}: add `experimental-features = nix-command flakes` to /etc/nix/nix.conf there (and restart nix-daemon)"
            )),
        )
    }
}

/// The rsync check from what was found: the rsync here (`rsync --version`'s first line),
/// the one on HOST's PATH and its version line, and (asked only when that one cannot be
/// used) the others HOST has; the same choice a run makes.
fn judge_rsync(
    host: &str,
    local: Option<&str>,
    on_path: Option<String>,
    version: &str,
    others: impl FnOnce() -> Vec<(String, String)>,
) -> (Status, String, Option<String>) {
    use crate::rsync::{fix, unfit, version as rsync_version};
    let Some(local) = local else {
        return (Status::Fail, "no rsync here".into(), Some(fix(None)));
    };
    if let Some(why) = unfit(local) {
        return (
            Status::Fail,
            format!("here: {local}: {why}"),
            Some(fix(None)),
        );
    }
    match crate::remote::choose_rsync(host, on_path.clone(), version, others) {
        Ok(path) => {
            let there = if on_path.as_deref() == Some(path.as_str()) {
                rsync_version(version)
            } else {
                format!("at {path} (the one on the PATH cannot be used)")
            };
            (
                Status::Ok,
                format!("here {}, there {there}", rsync_version(local)),
                None,
            )
        }
        Err(p) => (Status::Fail, p.what, Some(p.fix)),
    }
}

fn store_uri(r: &mut Run, conn: &Connection, nix: &str) {
    let host = conn.transport.label.clone();
    let local = Cmd::new("nix")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let v: Vec<u32> = local
        .split_whitespace()
        .last()
        .unwrap_or("")
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    // `nix store ping` became `nix store info` in 2.19.
    let sub = if v.as_slice() >= [2, 19].as_slice() {
        "info"
    } else {
        "ping"
    };
    let ping = |uri: &str| {
        Cmd::new("nix")
            .args([
                "--extra-experimental-features",
                "nix-command",
                "store",
                sub,
                "--store",
                uri,
            ])
            .env("NIX_SSHOPTS", conn.nix_sshopts())
            .output()
            .map(|o| (o.status.success(), exec::stderr_tail(&o)))
            .unwrap_or((false, "no nix here".to_string()))
    };
    // Both protocols, as Nix would use them: ssh:// runs nix-store, ssh-ng:// nix-daemon.
    let mut works = Vec::new();
    let mut needs_program = Vec::new();
    let mut broken = Vec::new();
    for (scheme, program) in [("ssh", "nix-store"), ("ssh-ng", "nix-daemon")] {
        let uri = format!("{scheme}://{}", conn.transport.dest.target());
        let (ok, err) = ping(&uri);
        if ok {
            works.push(uri);
            continue;
        }
        let with_program = format!("{uri}?remote-program={}", sibling(nix, program));
        if ping(&with_program).0 {
            needs_program.push(with_program);
        } else {
            broken.push(format!("{uri}: {}", err.lines().last().unwrap_or("")));
        }
    }
    if broken.len() == 2 {
        r.fail(
            CheckId::Store,
            broken.join("; "),
            format!(
                "run `nix store {sub} --store ssh://{} -v` to see why",
                conn.transport.dest.target()
            ),
        );
    } else if !needs_program.is_empty() {
        r.warn(
            CheckId::Store,
            format!(
                "works only as {} (nix is not on {host}'s PATH)",
                needs_program.join(" and ")
            ),
            format!(
                "use `{}` in builders/--store, or put nix on the non-interactive PATH on {host}",
                needs_program[0]
            ),
        );
    } else if !broken.is_empty() {
        r.warn(
            CheckId::Store,
            format!("{} works; {}", works.join(", "), broken.join("; ")),
            "use the URI scheme that works in builders/--store".to_string(),
        );
    } else {
        r.ok(
            CheckId::Store,
            format!("nix store {sub} works with {}", works.join(" and ")),
        );
    }
}

/// `addr`: the host name and port the user's ssh config resolves HOST to.
fn daemon_view(r: &mut Run, conn: &Connection, machine: Option<&Machine>, addr: (&str, u16)) {
    let root = Cmd::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        r.set(
            CheckId::Daemon,
            Status::Skipped,
            "run as root to check what nix-daemon needs for --builders",
            None,
        );
        return;
    }
    let host = conn.transport.label.clone();
    // The daemon connects as root with root's ssh config and only what the machines file
    // says (key, pinned host key): not the user's NIX_SSHOPTS or agent.
    let transport = match machine {
        Some(m) => m.transport(""),
        None => Ok(Transport::new(&host, conn.transport.dest.clone(), "")),
    };
    let out = transport.and_then(|t| {
        Cmd::new("ssh")
            .args(t.opts().iter().cloned())
            .args(["-o", "BatchMode=yes", "-T", "--", &t.dest.target(), "true"])
            .env_remove("SSH_AUTH_SOCK")
            .output()
    });
    match out {
        Ok(out) if out.status.success() => {
            r.ok(CheckId::Daemon, "root reaches it as Nix's daemon would")
        }
        Ok(out) => {
            let err = format!(
                "{:#}",
                ssh::ssh_failure(&host, "as root", &String::from_utf8_lossy(&out.stderr))
            );
            let what = err.lines().next().unwrap_or("").to_string();
            // edict itself works; Nix's own remote builds (`builders`) would not.
            r.warn(
                CheckId::Daemon,
                format!("{what} (edict works, Nix's own remote builds would not)"),
                {
                    let (hostname, port) = addr;
                    let alias = &conn.transport.dest.host;
                    // ssh-keyscan and root's ssh know nothing of the user's aliases.
                    let config = if alias != hostname || port != 22 {
                        format!("add `Host {alias}` with `HostName {hostname}` and `Port {port}` to /root/.ssh/config (your ssh config has them, root's does not), ")
                    } else {
                        String::new()
                    };
                    format!("Nix's daemon connects as root with root's ssh config: {config}give root the host key (`ssh-keyscan -p {port} {hostname} | sudo tee -a /root/.ssh/known_hosts`) and a key {host} accepts (the ssh-key field of its machines entry, readable by root)")
                },
            );
        }
        Err(e) => r.fail(CheckId::Daemon, format!("{e:#}"), "install ssh"),
    }
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

/// Runs the checks for every host in parallel.
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
                let mut r = Run {
                    host,
                    checks: BTreeMap::new(),
                };
                r.fail(
                    CheckId::SshConfig,
                    crate::exec::panic_text(p.as_ref()),
                    "report it, with the output of `edict doctor -v HOST`",
                );
                r.report()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_check_and_the_fixes() {
        let mut run = Run {
            host: "h".into(),
            checks: BTreeMap::new(),
        };
        run.ok(CheckId::Resolve, "h is 127.0.0.1");
        run.fail(CheckId::Tcp, "refused", "start sshd");
        let report = run.report();
        assert_eq!(report.checks.len(), CHECKS.len());
        assert_eq!(report.checks[2].status, Status::Skipped);
        let text = render(&[report]);
        assert!(
            text.contains("FAIL") && text.contains("fix: start sshd"),
            "{text}"
        );
    }

    #[test]
    fn the_rsync_verdicts_from_recorded_findings() {
        let good = "rsync  version 3.2.7  protocol version 31";
        let open = "openrsync: protocol version 29";
        #[allow(clippy::type_complexity)]
        // a table: here, PATH's rsync, its version, others, verdict, words
        let cases: Vec<(
            Option<&str>,
            Option<&str>,
            &str,
            Vec<(&str, &str)>,
            Status,
            &str,
        )> = vec![
            (
                None,
                Some("/usr/bin/rsync"),
                good,
                vec![],
                Status::Fail,
                "no rsync here",
            ),
            (
                Some(open),
                Some("/usr/bin/rsync"),
                good,
                vec![],
                Status::Fail,
                "here: openrsync",
            ),
            (
                Some(good),
                Some("/usr/bin/rsync"),
                good,
                vec![],
                Status::Ok,
                "here 3.2.7, there 3.2.7",
            ),
            (
                Some(good),
                None,
                "",
                vec![],
                Status::Fail,
                "rsync is not installed there",
            ),
            (
                Some(good),
                Some("/usr/bin/rsync"),
                open,
                vec![],
                Status::Fail,
                "the rsync there (/usr/bin/rsync: openrsync",
            ),
            (
                Some(good),
                Some("/usr/bin/rsync"),
                open,
                vec![("/nix/var/nix/profiles/default/bin/rsync", good)],
                Status::Ok,
                "at /nix/var/nix/profiles/default/bin/rsync",
            ),
        ];
        for (local, path, version, others, status, says) in cases {
            let others: Vec<(String, String)> = others
                .iter()
                .map(|(p, v)| (p.to_string(), v.to_string()))
                .collect();
            let (got, detail, fix) =
                judge_rsync("h", local, path.map(str::to_string), version, || others);
            assert_eq!(got, status, "{detail}");
            assert!(detail.contains(says), "{detail} lacks {says}");
            assert_eq!(fix.is_some(), status == Status::Fail);
        }
    }

    #[test]
    fn the_nix_version_verdicts_from_recorded_findings() {
        let on = "nix-command flakes";
        let (n28, n226, lix) = (
            "nix (Nix) 2.8.0",
            "nix (Nix) 2.26.3",
            "nix (Lix, like Nix) 2.93.3",
        );
        for (local, there, features, status, says, fix) in [
            (n28, n28, on, Status::Ok, "nix (Nix) 2.8.0, flakes on", None),
            (
                n28,
                n28,
                "",
                Status::Warn,
                "flakes off",
                Some("experimental-features = nix-command flakes"),
            ),
            (
                n28,
                n226,
                on,
                Status::Warn,
                "which the nix here (nix (Nix) 2.8.0) cannot read",
                Some("Nix 2.26 or later on both"),
            ),
            (
                n226,
                lix,
                on,
                Status::Warn,
                "edict sends it a lock without them",
                Some("Nix 2.26 or later on both"),
            ),
            (n226, n226, on, Status::Ok, "2.26.3, flakes on", None),
        ] {
            let (got, detail, got_fix) = judge_nix_version("h", local, there, features);
            assert_eq!(got, status, "{detail}");
            assert!(detail.contains(says), "{detail} lacks {says}");
            match fix {
                None => assert!(got_fix.is_none()),
                Some(f) => assert!(got_fix.unwrap().contains(f)),
            }
        }
    }

    #[test]
    fn the_quiet_shell_and_system_verdicts_from_recorded_findings() {
        assert_eq!(judge_quiet_shell("h", "\n").0, Status::Ok);
        let (st, detail, fix) = judge_quiet_shell("h", "Welcome\nto\nthe\nfarm\n");
        assert_eq!(st, Status::Fail);
        assert_eq!(detail, "`ssh h true` prints: Welcome / to / the");
        assert!(fix.unwrap().contains("[[ $- == *i* ]] || return"));

        assert_eq!(
            judge_system("h", "x86_64-linux", "", None),
            (Status::Ok, "x86_64-linux".to_string(), None)
        );
        let machine = |types: &[&str]| {
            let line = format!("ssh://h {} - 1 1", types.join(","));
            crate::pool::parse(&line, "/etc/nix/machines", "x86_64-linux")
                .unwrap()
                .remove(0)
        };
        let m = machine(&["x86_64-linux", "i686-linux"]);
        assert_eq!(
            judge_system("h", "x86_64-linux", "i686-linux", Some(&m)).0,
            Status::Ok
        );
        let (st, detail, fix) = judge_system("h", "x86_64-linux", "", Some(&m));
        assert_eq!(st, Status::Fail);
        assert!(detail.contains("claims i686-linux"), "{detail}");
        assert!(fix.unwrap().contains("extra-platforms"));
    }

    #[test]
    fn check_ids_keep_their_names_in_order() {
        let names: Vec<&str> = CHECKS.iter().map(|(id, _, _)| id.name()).collect();
        assert_eq!(names[..4], ["resolve", "tcp", "ssh-config", "host-key"]);
        // The JSON names are the same words.
        for (id, name, _) in CHECKS {
            assert_eq!(serde_json::to_value(id).unwrap(), *name);
        }
        // In the order of the enum, and every one listed once.
        let ids: Vec<CheckId> = CHECKS.iter().map(|(id, _, _)| *id).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ids, sorted);
    }
}
