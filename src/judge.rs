//! What `edict doctor` says about a host, from what it found there: the pure half of the
//! doctor. `doctor.rs` gathers the [`Facts`] (connections, commands, a build, a copy);
//! every verdict, detail and fix is decided here, and table-tested from recorded facts. To
//! change what the doctor says about X, change X's function below.

use crate::pool::Machine;
use crate::remote::NIX_PLACES;
use std::collections::BTreeMap;
use std::net::SocketAddr;

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

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
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

/// What a check that was never reached says.
pub const NOT_REACHED: &str = "not reached";

/// A verdict: status, detail, fix.
type Verdict = (Status, String, Option<String>);

/// Everything the doctor found about one host: what each verdict rests on. A stage the
/// doctor did not reach (an earlier one made it pointless) is `None`.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub host: String,
    /// The host as ssh is given it (an alias of the user's ssh config, or a name).
    pub alias: String,
    /// Its machines-file entry, when it came from the pool.
    pub machine: Option<Machine>,
    /// `ssh -G HOST`, or why it failed.
    pub ssh_config: Option<Result<SshConfig, String>>,
    /// The first address the host name resolves to (`Ok(None)`: none); `None` when ssh
    /// goes through a proxy, which resolves it instead.
    pub address: Option<Result<Option<SocketAddr>, String>>,
    /// A TCP connection to that address.
    pub tcp: Option<Result<(), String>>,
    /// The keys the host presents and the ones this machine knows for it.
    pub host_keys: Option<HostKeys>,
    /// A non-interactive key login running `sh -c 'true<newline>true'`, or why ssh could
    /// not run.
    pub login: Option<Result<Login, String>>,
    /// Opening edict's connection (a ControlMaster), or why it failed.
    pub connection: Option<Result<(), String>>,
    /// What `scripts/doctor.sh` found there, or why it could not run.
    pub remote: Option<Result<Remote, String>>,
    /// The nix and rsync here (their `--version` lines).
    pub local_nix: String,
    pub local_rsync: Option<String>,
    /// `nix store info|ping` from here over ssh:// and ssh-ng://.
    pub store: Option<Store>,
    /// Copying the path built there to this machine's store.
    pub trust: Option<Copy>,
    /// A login as root without the user's agent or config, as Nix's daemon would make it;
    /// `Err`: it could not be tried.
    pub daemon: Option<Result<Login, String>>,
    /// Whether the doctor runs as root (the daemon check needs it).
    pub root: bool,
}

/// What `ssh -G` says ssh will use.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SshConfig {
    pub user: String,
    pub hostname: String,
    pub port: u16,
    /// ProxyJump or ProxyCommand, when set.
    pub proxy: Option<String>,
    /// The identity files that exist here.
    pub identities: Vec<String>,
    /// The name the host's key is looked up under in known_hosts (see [`known_hosts_name`]).
    pub host_key_alias: Option<String>,
    /// UserKnownHostsFile and GlobalKnownHostsFile, `~` expanded.
    pub known_hosts_files: Vec<String>,
}

/// The name ssh looks a host's key up under: its HostKeyAlias, else the host name, with
/// the port when it is not 22 (`[10.0.0.5]:2222`).
pub fn known_hosts_name(cfg: &SshConfig) -> String {
    match &cfg.host_key_alias {
        Some(alias) => alias.clone(),
        None if cfg.port == 22 => cfg.hostname.clone(),
        None => format!("[{}]:{}", cfg.hostname, cfg.port),
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostKeys {
    /// What `ssh-keyscan` got: (type, key).
    pub presented: Vec<(String, String)>,
    /// The known_hosts files ssh reads, and the entries for the host in those that exist:
    /// (file, type, key).
    pub files: Vec<String>,
    pub known: Vec<(String, String, String)>,
}

/// How an ssh command ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Login {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// What `scripts/doctor.sh` printed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Remote {
    /// `command -v nix` on the PATH of a non-interactive login (empty: none).
    pub path_nix: String,
    /// The nix found there or in [`NIX_PLACES`] (empty: none).
    pub nix: String,
    /// Its `--version` line, and its `experimental-features` and `extra-platforms`.
    pub version: String,
    pub features: String,
    pub extra_platforms: String,
    /// `builtins.currentSystem` there.
    pub system: String,
    /// The expression of the trivial build, and how that build ended: its exit code and
    /// the last line it printed (the store path when it worked).
    pub build_expr: String,
    pub build: Option<(i32, String)>,
    /// The rsync on the PATH (with the Nix profiles after it), and its `--version` line.
    pub rsync: String,
    pub rsync_version: String,
    /// The rsyncs elsewhere (path, version line); asked only when that one cannot be used.
    pub other_rsync: Vec<(String, String)>,
}

impl Remote {
    /// The store path the trivial build made, if it worked.
    pub fn built(&self) -> Option<&str> {
        match &self.build {
            Some((0, last)) if last.starts_with('/') => Some(last),
            _ => None,
        }
    }
}

/// Whether a run would look past the rsync on HOST's PATH (see `remote::choose_rsync`).
pub fn wants_other_rsync(path: &str, version: &str) -> bool {
    path.is_empty() || crate::rsync::unfit(version).is_some()
}

/// `nix store info` (`ping` before Nix 2.19) against each URI scheme.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Store {
    /// `info` or `ping`.
    pub sub: String,
    /// ssh-dest as Nix's URIs write it.
    pub target: String,
    pub pings: Vec<Ping>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ping {
    pub uri: String,
    /// `Err`: the last lines nix printed.
    pub result: Result<(), String>,
    /// When that failed: the same URI with `?remote-program=` the nix found there, and
    /// whether that worked.
    pub with_program: Option<(String, bool)>,
}

/// `nix copy --from` of the built path.
#[derive(Clone, Debug, PartialEq)]
pub enum Copy {
    Done,
    /// The command line, and what nix printed.
    Failed {
        line: String,
        stderr: String,
    },
    /// It could not run (no nix here).
    NotRun(String),
}

/// The checks as they stand while judging; [`Run::report`] puts them in order.
struct Run {
    host: String,
    checks: BTreeMap<CheckId, Check>,
}

impl Run {
    fn new(host: &str) -> Self {
        Run {
            host: host.to_string(),
            checks: BTreeMap::new(),
        }
    }
    fn set(&mut self, id: CheckId, (status, detail, fix): Verdict) {
        self.checks.insert(
            id,
            Check {
                id,
                status,
                detail,
                fix,
            },
        );
    }
    fn ok(&mut self, id: CheckId, detail: impl Into<String>) {
        self.set(id, (Status::Ok, detail.into(), None));
    }
    fn skip(&mut self, id: CheckId, why: &str) {
        self.set(id, (Status::Skipped, why.into(), None));
    }
    fn fail(&mut self, id: CheckId, detail: impl Into<String>, fix: impl Into<String>) {
        self.set(id, (Status::Fail, detail.into(), Some(fix.into())));
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
        self.skip_rest(NOT_REACHED);
        Report {
            host: self.host,
            checks: CHECKS
                .iter()
                .filter_map(|(id, _, _)| self.checks.remove(id))
                .collect(),
        }
    }
}

/// A failure whose detail is one of edict's errors: one line in the table (its lines
/// joined with ` / `), its fix when it has one, else `fallback`.
fn from_error(message: &str, fallback: String) -> Verdict {
    let (what, fix) = message
        .split_once("\n  fix: ")
        .map_or((message, fallback), |(a, b)| (a, b.to_string()));
    let what: Vec<&str> = what
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    (Status::Fail, what.join(" / "), Some(fix))
}

/// The verdict on every check, in order, from what was found.
pub fn judge(facts: &Facts) -> Report {
    let mut r = Run::new(&facts.host);
    judge_into(&mut r, facts);
    r.report()
}

/// The checks in order into `r`; it stops where the facts stop (the rest: not reached).
fn judge_into(r: &mut Run, f: &Facts) {
    let host = f.host.as_str();
    let cfg = match &f.ssh_config {
        None => return,
        Some(Err(e)) => {
            r.fail(
                CheckId::SshConfig,
                e.clone(),
                format!("check your ssh config for {host}: `ssh -G {host}`"),
            );
            return;
        }
        Some(Ok(cfg)) => cfg,
    };
    r.set(CheckId::SshConfig, ssh_config(cfg));
    if cfg.proxy.is_some() {
        r.skip(CheckId::Resolve, "reached through a proxy");
        r.skip(CheckId::Tcp, "reached through a proxy");
        r.skip(
            CheckId::HostKey,
            "through a proxy: checked by the login below",
        );
    } else {
        let Some(address) = &f.address else { return };
        let verdict = resolve(host, cfg, address);
        let resolved = verdict.0 == Status::Ok;
        r.set(CheckId::Resolve, verdict);
        if !resolved {
            return;
        }
        let Some(tcp) = &f.tcp else { return };
        let verdict = tcp_verdict(host, address, tcp);
        let connected = verdict.0 == Status::Ok;
        r.set(CheckId::Tcp, verdict);
        if !connected {
            return;
        }
        let Some(keys) = &f.host_keys else { return };
        r.set(
            CheckId::HostKey,
            host_key(host, cfg, keys, f.machine.as_ref()),
        );
    }

    let login = match &f.login {
        None => return,
        Some(Err(e)) => {
            r.fail(CheckId::Login, e.clone(), "install OpenSSH's client (ssh)");
            return;
        }
        Some(Ok(login)) => login,
    };
    let csh = crate::ssh::refused_by_csh(&login.stderr);
    if !login.success && !csh {
        r.set(
            CheckId::Login,
            login_failure(host, "logging in", &login.stderr),
        );
        return;
    }
    r.ok(CheckId::Login, "key login without a prompt works");
    let printed = crate::ssh::without_csh_refusal(&format!("{}{}", login.stdout, login.stderr));
    let mut verdict = quiet_shell(host, &printed);
    if csh && verdict.0 == Status::Ok {
        verdict.1 = "prints nothing (csh or tcsh: edict puts a backslash before each `!` and line break it sends, as they need)".into();
    }
    r.set(CheckId::QuietShell, verdict);

    match &f.connection {
        None => return,
        Some(Err(e)) => {
            r.fail(
                CheckId::NixPath,
                e.clone(),
                format!("run `ssh -v {host} true`"),
            );
            return;
        }
        Some(Ok(())) => {}
    }
    let remote = match &f.remote {
        None => return,
        Some(Err(e)) => {
            r.set(
                CheckId::NixPath,
                from_error(e, format!("run `ssh -v {host} true`")),
            );
            return;
        }
        Some(Ok(remote)) => remote,
    };
    let verdict = nix_path(host, remote);
    let found = verdict.0 != Status::Fail;
    r.set(CheckId::NixPath, verdict);
    if !found {
        r.skip_rest("needs nix on the host");
        return;
    }
    r.set(
        CheckId::NixVersion,
        nix_version(host, &f.local_nix, &remote.version, &remote.features),
    );
    r.set(CheckId::Build, build(host, remote));
    if let Some(store) = &f.store {
        r.set(CheckId::Store, store_uri(host, store));
    }
    r.set(
        CheckId::Rsync,
        rsync(
            host,
            f.local_rsync.as_deref(),
            &remote.rsync,
            &remote.rsync_version,
            &remote.other_rsync,
        ),
    );
    r.set(
        CheckId::System,
        system(
            host,
            &remote.system,
            &remote.extra_platforms,
            f.machine.as_ref(),
        ),
    );
    match &f.trust {
        Some(copy) => r.set(CheckId::Trust, trust(host, copy)),
        None if remote.built().is_none() => r.skip(CheckId::Trust, "needs a built path"),
        None => {}
    }
    if !f.root {
        r.skip(
            CheckId::Daemon,
            "run as root to check what nix-daemon needs for --builders",
        );
    } else if let Some(daemon) = &f.daemon {
        r.set(CheckId::Daemon, daemon_view(host, &f.alias, cfg, daemon));
    }
}

fn ssh_config(cfg: &SshConfig) -> Verdict {
    let via = cfg
        .proxy
        .as_ref()
        .map(|p| format!(" via {p}"))
        .unwrap_or_default();
    let identity = if cfg.identities.is_empty() {
        "from the agent".to_string()
    } else {
        cfg.identities.join(", ")
    };
    (
        Status::Ok,
        format!(
            "user {}, {}:{}{via}, identity {identity}",
            cfg.user, cfg.hostname, cfg.port
        ),
        None,
    )
}

fn resolve(host: &str, cfg: &SshConfig, address: &Result<Option<SocketAddr>, String>) -> Verdict {
    let name = &cfg.hostname;
    match address {
        Ok(Some(addr)) => (Status::Ok, format!("{name} is {}", addr.ip()), None),
        Ok(None) => (
            Status::Fail,
            format!("{name} has no address"),
            Some(format!(
                "check the name, or set `HostName` for {} in {}",
                crate::ssh::alias_of(host),
                crate::sshconfig::config_file()
            )),
        ),
        Err(e) => (
            Status::Fail,
            format!("{name}: {e}"),
            Some(format!(
                "check the spelling, or add `Host {}` with a `HostName` to {}",
                crate::ssh::alias_of(host),
                crate::sshconfig::config_file()
            )),
        ),
    }
}

fn tcp_verdict(
    host: &str,
    address: &Result<Option<SocketAddr>, String>,
    tcp: &Result<(), String>,
) -> Verdict {
    let addr = match address {
        Ok(Some(a)) => a.to_string(),
        _ => String::new(),
    };
    match tcp {
        Ok(()) => (Status::Ok, format!("{addr} accepts connections"), None),
        Err(e) => (
            Status::Fail,
            format!("{addr}: {e}"),
            Some(format!(
                "start sshd on {host} or check the port (`ssh -G {host} | grep ^port`) and any firewall"
            )),
        ),
    }
}

/// The host key it presents, against the key its machines-file entry pins, else against
/// every known_hosts file ssh reads.
fn host_key(host: &str, cfg: &SshConfig, keys: &HostKeys, machine: Option<&Machine>) -> Verdict {
    let (hostname, port) = (&cfg.hostname, cfg.port);
    if keys.presented.is_empty() {
        return (
            Status::Warn,
            "ssh-keyscan got no keys".into(),
            Some(
                "install ssh-keyscan (OpenSSH) here; the login check below still tests the key"
                    .into(),
            ),
        );
    }
    if let Some((m, pinned)) = machine.and_then(|m| m.host_key.as_ref().map(|k| (m, k))) {
        let f: Vec<&str> = pinned.split_whitespace().collect();
        let ok = f.len() >= 2 && keys.presented.iter().any(|(t, k)| t == f[0] && k == f[1]);
        if ok {
            return (
                Status::Ok,
                format!("{} matches the machines file's ssh-public-host-key", f[0]),
                None,
            );
        }
        let types: Vec<&str> = keys.presented.iter().map(|p| p.0.as_str()).collect();
        return (
            Status::Fail,
            format!(
                "{host} presents {}, not the key pinned in the machines file ({})",
                types.join(", "),
                m.origin
            ),
            Some(format!(
                "if {host} was reinstalled, put its new key there: `base64 -w0 < /etc/ssh/ssh_host_ed25519_key.pub` on {host} (legacy format), or the key text (TOML)"
            )),
        );
    }
    let name = known_hosts_name(cfg);
    let presented = |t: &str, k: &str, same: bool| {
        keys.presented
            .iter()
            .any(|(pt, pk)| pt == t && (pk == k) == same)
    };
    let mismatched = keys.known.iter().find(|(_, t, k)| presented(t, k, false));
    let matching = keys.known.iter().find(|(_, t, k)| presented(t, k, true));
    if let Some((file, t, _)) = mismatched {
        return (
            Status::Fail,
            format!("{host} presents a different {t} key than {file} knows"),
            Some(format!(
                "if {host} was reinstalled, check its new fingerprint (`ssh-keyscan -p {port} {hostname} | ssh-keygen -lf -`), then `ssh-keygen -R '{name}' -f {file}` and connect once; otherwise someone may be intercepting the connection"
            )),
        );
    }
    if let Some((file, t, _)) = matching {
        return (Status::Ok, format!("{t} known in {file}"), None);
    }
    (
        Status::Fail,
        format!(
            "no known_hosts file knows {name} ({})",
            keys.files.join(", ")
        ),
        Some(format!(
            "check the fingerprint (`ssh-keyscan -p {port} {hostname} | ssh-keygen -lf -`), then `ssh-keyscan -p {port} {hostname} >> ~/.ssh/known_hosts`"
        )),
    )
}

/// A failed ssh login, as edict's own ssh errors say it (see `ssh::ssh_failure`).
fn login_failure(host: &str, step: &str, stderr: &str) -> Verdict {
    let err = crate::ssh::ssh_failure(host, step, stderr);
    match crate::problem::Problem::of(&err) {
        Some(p) => {
            let mut detail = format!("{}: {}", p.step, p.what);
            if let Some((who, said)) = &p.said {
                detail.push_str(&format!(
                    " / {who} said: {}",
                    said.lines().collect::<Vec<_>>().join(" / ")
                ));
            }
            (Status::Fail, detail, Some(p.fix.clone()))
        }
        None => from_error(&format!("{err:#}"), format!("run `ssh -v {host} true`")),
    }
}

/// The quiet-shell check from what a non-interactive login printed (`ssh HOST true`).
fn quiet_shell(host: &str, printed: &str) -> Verdict {
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
            "on {host}, make the shell rc files (~/.bashrc, ~/.zshenv, ~/.cshrc, /etc/bash.bashrc, /etc/profile.d) print only in interactive shells: start ~/.bashrc with `[[ $- == *i* ]] || return`; Nix's and rsync's protocols break on any output"
        )),
    )
}

/// nix on the PATH of a non-interactive login; only in a profile is a warning (edict
/// looks there, Nix's own remote builds do not); nowhere is a failure.
fn nix_path(host: &str, remote: &Remote) -> Verdict {
    if !remote.path_nix.is_empty() {
        return (Status::Ok, remote.path_nix.clone(), None);
    }
    if !remote.nix.is_empty() {
        let dir = remote.nix.trim_end_matches("/nix");
        return (
            Status::Warn,
            format!(
                "only in {dir} (edict copes; Nix's own remote builds and `nix copy` to {host} don't)"
            ),
            Some(format!(
                "on {host}, put {dir} on the PATH of non-interactive shells (e.g. in ~/.bashrc before any interactive-only guard, or `SetEnv PATH=…` in sshd_config), or use the store URI `ssh://{host}?remote-program={dir}/nix-store` (`ssh-ng://…?remote-program={dir}/nix-daemon`)"
            )),
        );
    }
    (
        Status::Fail,
        format!(
            "no nix on {host} (looked on PATH and in {})",
            NIX_PLACES.replace(':', ", ")
        ),
        Some(format!(
            "install Nix on {host}: `sh <(curl -L https://nixos.org/nix/install) --daemon`"
        )),
    )
}

/// The nix-version check from what was found: the nix here and there (`nix --version`)
/// and HOST's `experimental-features`. Flakes off is a warning (edict passes the flags);
/// so is a lock-format skew: Nix 2.26 locks relative `path:` inputs in a form older Nix
/// and Lix refuse.
fn nix_version(host: &str, local: &str, version: &str, features: &str) -> Verdict {
    let version = crate::mapping::version_line(version);
    let skew = match (
        crate::mapping::reads_relative_locks(local),
        crate::mapping::reads_relative_locks(&version),
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

/// The trivial build: its store path, or the last line of why not.
fn build(host: &str, remote: &Remote) -> Verdict {
    if let Some(path) = remote.built() {
        return (Status::Ok, format!("built {path}"), None);
    }
    let last = remote.build.as_ref().map_or("", |(_, l)| l.as_str());
    (
        Status::Fail,
        format!("a trivial build failed: {last}"),
        Some(format!(
            "run `nix-build -E '{}'` on {host} and fix what it says (disk space, nix-daemon, build users, sandbox)",
            remote.build_expr
        )),
    )
}

/// The store URIs nix itself would use from this machine: both working is ok; one
/// working, or working only with `?remote-program=`, is a warning; none a failure.
fn store_uri(host: &str, store: &Store) -> Verdict {
    let mut works = Vec::new();
    let mut needs_program = Vec::new();
    let mut broken = Vec::new();
    for ping in &store.pings {
        match (&ping.result, &ping.with_program) {
            (Ok(()), _) => works.push(ping.uri.clone()),
            (Err(_), Some((uri, true))) => needs_program.push(uri.clone()),
            (Err(e), _) => broken.push(format!("{}: {}", ping.uri, e.lines().last().unwrap_or(""))),
        }
    }
    if works.is_empty() && needs_program.is_empty() {
        return (
            Status::Fail,
            broken.join("; "),
            Some(format!(
                "run `nix store {} --store ssh://{} -v` to see why",
                store.sub, store.target
            )),
        );
    }
    if !needs_program.is_empty() {
        return (
            Status::Warn,
            format!(
                "works only as {} (nix is not on {host}'s PATH)",
                needs_program.join(" and ")
            ),
            Some(format!(
                "use `{}` in builders/--store, or put nix on the non-interactive PATH on {host}",
                needs_program[0]
            )),
        );
    }
    if !broken.is_empty() {
        return (
            Status::Warn,
            format!("{} works; {}", works.join(", "), broken.join("; ")),
            Some("use the URI scheme that works in builders/--store".to_string()),
        );
    }
    (
        Status::Ok,
        format!("nix store {} works with {}", store.sub, works.join(" and ")),
        None,
    )
}

/// The rsync check from what was found: the rsync here (`rsync --version`'s first line),
/// the one on HOST's PATH and its version line, and the others HOST has; the same choice a
/// run makes.
fn rsync(
    host: &str,
    local: Option<&str>,
    path: &str,
    version: &str,
    others: &[(String, String)],
) -> Verdict {
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
    let on_path = (!path.is_empty()).then(|| path.to_string());
    match crate::remote::choose_rsync(host, on_path, version, || others.to_vec()) {
        Ok((chosen, _)) => {
            let there = if chosen == path {
                rsync_version(version)
            } else {
                format!("at {chosen} (the one on the PATH cannot be used)")
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

/// The system check from what was found: HOST's `builtins.currentSystem` and its
/// `extra-platforms`, against what its machines-file entry (if any) claims.
fn system(host: &str, system: &str, extra_platforms: &str, machine: Option<&Machine>) -> Verdict {
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

/// Whether this machine's store takes a path built there.
fn trust(host: &str, copy: &Copy) -> Verdict {
    match copy {
        Copy::Done => (Status::Ok, "a path built there imports here".into(), None),
        Copy::Failed { stderr, .. } if crate::results::lacks_signature(stderr) => (
            Status::Fail,
            "this machine's store refuses unsigned paths from your user".into(),
            Some(crate::results::unsigned_fix(host)),
        ),
        Copy::Failed { line, stderr } => (
            Status::Fail,
            format!(
                "nix copy failed: {}",
                stderr.trim().lines().last().unwrap_or("")
            ),
            Some(format!("run `{line}` to see why")),
        ),
        Copy::NotRun(e) => (Status::Fail, e.clone(), Some("install nix here".into())),
    }
}

/// Root's login as Nix's daemon makes it. Failing is a warning: edict works, Nix's own
/// remote builds (`builders`) would not.
fn daemon_view(
    host: &str,
    alias: &str,
    cfg: &SshConfig,
    daemon: &Result<Login, String>,
) -> Verdict {
    let login = match daemon {
        Ok(l) if l.success => {
            return (
                Status::Ok,
                "root reaches it as Nix's daemon would".into(),
                None,
            );
        }
        Ok(l) => l,
        Err(e) => return (Status::Fail, e.clone(), Some("install ssh".into())),
    };
    let err = format!(
        "{:#}",
        crate::ssh::ssh_failure(host, "as root", &login.stderr)
    );
    let what = err.lines().next().unwrap_or("");
    let (hostname, port) = (&cfg.hostname, cfg.port);
    // ssh-keyscan and root's ssh know nothing of the user's aliases.
    let config = if alias != hostname || port != 22 {
        format!(
            "add `Host {alias}` with `HostName {hostname}` and `Port {port}` to /root/.ssh/config (your ssh config has them, root's does not), "
        )
    } else {
        String::new()
    };
    (
        Status::Warn,
        format!("{what} (edict works, Nix's own remote builds would not)"),
        Some(format!(
            "Nix's daemon connects as root with root's ssh config: {config}give root the host key (`ssh-keyscan -p {port} {hostname} | sudo tee -a /root/.ssh/known_hosts`) and a key {host} accepts (the ssh-key field of its machines entry, readable by root)"
        )),
    )
}

/// A check that panicked (a bug) is said on the first check not reached; the ones made
/// before it keep their verdicts.
pub fn with_panic(mut report: Report, text: String) -> Report {
    if let Some(c) = report
        .checks
        .iter_mut()
        .find(|c| c.status == Status::Skipped && c.detail == NOT_REACHED)
    {
        c.status = Status::Fail;
        c.detail = text;
        c.fix = Some("report it, with the output of `edict doctor -v HOST`".into());
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A healthy host's facts, as a lab host on port 2222 gives them.
    fn healthy() -> Facts {
        let cfg = SshConfig {
            user: "u".into(),
            hostname: "127.0.0.1".into(),
            port: 2222,
            proxy: None,
            identities: vec!["/k/id".into()],
            host_key_alias: None,
            known_hosts_files: vec!["/k/known_hosts".into()],
        };
        let remote = Remote {
            path_nix: "/usr/bin/nix".into(),
            nix: "/usr/bin/nix".into(),
            version: "nix (Nix) 2.8.0".into(),
            features: "nix-command flakes".into(),
            system: "x86_64-linux".into(),
            build_expr: "derivation { }".into(),
            build: Some((0, "/nix/store/a-edict-doctor".into())),
            rsync: "/usr/bin/rsync".into(),
            rsync_version: "rsync  version 3.2.7  protocol version 31".into(),
            ..Remote::default()
        };
        let ping = |uri: &str| Ping {
            uri: uri.into(),
            result: Ok(()),
            with_program: None,
        };
        Facts {
            host: "h".into(),
            alias: "h".into(),
            machine: None,
            ssh_config: Some(Ok(cfg)),
            address: Some(Ok(Some("127.0.0.1:2222".parse().unwrap()))),
            tcp: Some(Ok(())),
            host_keys: Some(HostKeys {
                presented: vec![("ssh-ed25519".into(), "AAAA".into())],
                files: vec!["/k/known_hosts".into()],
                known: vec![("/k/known_hosts".into(), "ssh-ed25519".into(), "AAAA".into())],
            }),
            login: Some(Ok(Login {
                success: true,
                ..Login::default()
            })),
            connection: Some(Ok(())),
            remote: Some(Ok(remote)),
            local_nix: "nix (Nix) 2.8.0".into(),
            local_rsync: Some("rsync  version 3.2.7  protocol version 31".into()),
            store: Some(Store {
                sub: "ping".into(),
                target: "h".into(),
                pings: vec![ping("ssh://h"), ping("ssh-ng://h")],
            }),
            trust: Some(Copy::Done),
            daemon: Some(Ok(Login {
                success: true,
                ..Login::default()
            })),
            root: true,
        }
    }

    fn remote(f: &mut Facts) -> &mut Remote {
        f.remote.as_mut().unwrap().as_mut().unwrap()
    }

    fn check(report: &Report, id: CheckId) -> &Check {
        report.checks.iter().find(|c| c.id == id).unwrap()
    }

    /// Each row: a change to a healthy host's facts, the check, its status, words in its
    /// detail, words in its fix ("" for none), and the status of the check after it.
    #[test]
    fn every_verdict_from_recorded_facts() {
        type Change = fn(&mut Facts);
        const OPEN_RSYNC: &str = "openrsync: protocol version 29";
        #[allow(clippy::type_complexity)]
        let rows: Vec<(&str, Change, CheckId, Status, &str, &str)> = vec![
            (
                "healthy",
                |_| {},
                CheckId::Daemon,
                Status::Ok,
                "as Nix's daemon would",
                "",
            ),
            (
                "ssh -G fails",
                |f| f.ssh_config = Some(Err("ssh -G printed nothing".into())),
                CheckId::SshConfig,
                Status::Fail,
                "printed nothing",
                "`ssh -G h`",
            ),
            (
                "proxied",
                |f| {
                    if let Some(Ok(c)) = &mut f.ssh_config {
                        c.proxy = Some("jump".into())
                    }
                    f.address = None;
                    f.tcp = None;
                    f.host_keys = None;
                },
                CheckId::HostKey,
                Status::Skipped,
                "through a proxy",
                "",
            ),
            (
                "proxied config",
                |f| {
                    if let Some(Ok(c)) = &mut f.ssh_config {
                        c.proxy = Some("jump".into())
                    }
                },
                CheckId::SshConfig,
                Status::Ok,
                "127.0.0.1:2222 via jump, identity /k/id",
                "",
            ),
            (
                "no such name",
                |f| f.address = Some(Err("failed to lookup address".into())),
                CheckId::Resolve,
                Status::Fail,
                "127.0.0.1: failed to lookup",
                "add `Host h` with a `HostName`",
            ),
            (
                "no address",
                |f| f.address = Some(Ok(None)),
                CheckId::Resolve,
                Status::Fail,
                "has no address",
                "set `HostName` for h",
            ),
            (
                "port closed",
                |f| f.tcp = Some(Err("Connection refused".into())),
                CheckId::Tcp,
                Status::Fail,
                "127.0.0.1:2222: Connection refused",
                "start sshd on h",
            ),
            (
                "no keys scanned",
                |f| f.host_keys.as_mut().unwrap().presented.clear(),
                CheckId::HostKey,
                Status::Warn,
                "got no keys",
                "install ssh-keyscan",
            ),
            (
                "key changed",
                |f| f.host_keys.as_mut().unwrap().known[0].2 = "BBBB".into(),
                CheckId::HostKey,
                Status::Fail,
                "presents a different ssh-ed25519 key than /k/known_hosts knows",
                "ssh-keygen -R '[127.0.0.1]:2222' -f /k/known_hosts",
            ),
            (
                "key unknown",
                |f| f.host_keys.as_mut().unwrap().known.clear(),
                CheckId::HostKey,
                Status::Fail,
                "no known_hosts file knows [127.0.0.1]:2222 (/k/known_hosts)",
                "ssh-keyscan -p 2222 127.0.0.1 >> ~/.ssh/known_hosts",
            ),
            (
                "pinned key matches",
                |f| {
                    let mut m = machine(&["x86_64-linux"]);
                    m.host_key = Some("ssh-ed25519 AAAA".into());
                    f.machine = Some(m);
                },
                CheckId::HostKey,
                Status::Ok,
                "matches the machines file's",
                "",
            ),
            (
                "pinned key differs",
                |f| {
                    let mut m = machine(&["x86_64-linux"]);
                    m.host_key = Some("ssh-ed25519 CCCC".into());
                    f.machine = Some(m);
                },
                CheckId::HostKey,
                Status::Fail,
                "not the key pinned in the machines file (/etc/nix/machines:1)",
                "base64 -w0",
            ),
            (
                "no ssh here",
                |f| f.login = Some(Err("ssh: not found".into())),
                CheckId::Login,
                Status::Fail,
                "ssh: not found",
                "install OpenSSH",
            ),
            (
                "key refused",
                |f| {
                    f.login = Some(Ok(Login {
                        success: false,
                        stdout: String::new(),
                        stderr: "u@127.0.0.1: Permission denied (publickey).".into(),
                    }))
                },
                CheckId::Login,
                Status::Fail,
                "Permission denied",
                "ssh-copy-id",
            ),
            (
                "csh",
                |f| {
                    f.login = Some(Ok(Login {
                        success: false,
                        stdout: String::new(),
                        stderr: "Unmatched '''.".into(),
                    }))
                },
                CheckId::QuietShell,
                Status::Ok,
                "prints nothing (csh or tcsh",
                "",
            ),
            (
                "csh that prints",
                |f| {
                    f.login = Some(Ok(Login {
                        success: false,
                        stdout: "Hello from .cshrc\n".into(),
                        stderr: "Unmatched '''.\n".into(),
                    }))
                },
                CheckId::QuietShell,
                Status::Fail,
                "prints: Hello from .cshrc",
                "[[ $- == *i* ]] || return",
            ),
            (
                "csh logs in",
                |f| {
                    f.login = Some(Ok(Login {
                        success: false,
                        stdout: String::new(),
                        stderr: "Unmatched '''.".into(),
                    }))
                },
                CheckId::Login,
                Status::Ok,
                "without a prompt",
                "",
            ),
            (
                "banner",
                |f| {
                    f.login = Some(Ok(Login {
                        success: true,
                        stdout: "Welcome\n".into(),
                        stderr: String::new(),
                    }))
                },
                CheckId::QuietShell,
                Status::Fail,
                "prints: Welcome",
                "[[ $- == *i* ]] || return",
            ),
            (
                "no master",
                |f| f.connection = Some(Err("ssh: connect failed".into())),
                CheckId::NixPath,
                Status::Fail,
                "connect failed",
                "ssh -v h true",
            ),
            (
                "script lost",
                |f| {
                    f.remote = Some(Err(
                        "h: asking: the connection was lost\n  fix: check the network".into(),
                    ))
                },
                CheckId::NixPath,
                Status::Fail,
                "h: asking: the connection was lost",
                "check the network",
            ),
            (
                "nix in a profile",
                |f| remote(f).path_nix.clear(),
                CheckId::NixPath,
                Status::Warn,
                "only in /usr/bin",
                "remote-program=/usr/bin/nix-store",
            ),
            (
                "no nix",
                |f| {
                    remote(f).path_nix.clear();
                    remote(f).nix.clear();
                },
                CheckId::NixPath,
                Status::Fail,
                "no nix on h",
                "install Nix on h",
            ),
            (
                "no nix skips",
                |f| {
                    remote(f).path_nix.clear();
                    remote(f).nix.clear();
                },
                CheckId::Rsync,
                Status::Skipped,
                "needs nix on the host",
                "",
            ),
            (
                "flakes off",
                |f| remote(f).features.clear(),
                CheckId::NixVersion,
                Status::Warn,
                "flakes off",
                "experimental-features = nix-command flakes",
            ),
            (
                "lock skew",
                |f| remote(f).version = "nix (Nix) 2.26.3".into(),
                CheckId::NixVersion,
                Status::Warn,
                "which the nix here (nix (Nix) 2.8.0) cannot read",
                "Nix 2.26 or later on both",
            ),
            (
                "lock skew, other way",
                |f| {
                    f.local_nix = "nix (Nix) 2.26.3".into();
                    remote(f).version = "nix (Lix, like Nix) 2.93.3".into();
                },
                CheckId::NixVersion,
                Status::Warn,
                "edict sends it a lock without them",
                "Nix 2.26 or later on both",
            ),
            (
                "same new nix",
                |f| {
                    f.local_nix = "nix (Nix) 2.26.3".into();
                    remote(f).version = "nix (Nix) 2.26.3".into();
                },
                CheckId::NixVersion,
                Status::Ok,
                "2.26.3, flakes on",
                "",
            ),
            (
                "build fails",
                |f| {
                    remote(f).build = Some((1, "error: cannot connect to daemon".into()));
                    f.trust = None;
                },
                CheckId::Build,
                Status::Fail,
                "a trivial build failed: error: cannot connect",
                "nix-build -E 'derivation { }'",
            ),
            (
                "build fails: trust skipped",
                |f| {
                    remote(f).build = Some((1, "error: x".into()));
                    f.trust = None;
                },
                CheckId::Trust,
                Status::Skipped,
                "needs a built path",
                "",
            ),
            (
                "ssh-ng only",
                |f| {
                    f.store.as_mut().unwrap().pings[0].result =
                        Err("error: protocol mismatch".into())
                },
                CheckId::Store,
                Status::Warn,
                "ssh-ng://h works; ssh://h: error: protocol mismatch",
                "scheme that works",
            ),
            (
                "store needs remote-program",
                |f| {
                    for p in &mut f.store.as_mut().unwrap().pings {
                        p.result = Err("nix-store: not found".into());
                        p.with_program =
                            Some((format!("{}?remote-program=/x/nix-store", p.uri), true));
                    }
                },
                CheckId::Store,
                Status::Warn,
                "works only as ssh://h?remote-program=/x/nix-store",
                "in builders/--store",
            ),
            (
                "store broken",
                |f| {
                    for p in &mut f.store.as_mut().unwrap().pings {
                        p.result = Err("error: cannot connect".into());
                        p.with_program = Some((String::new(), false));
                    }
                },
                CheckId::Store,
                Status::Fail,
                "ssh://h: error: cannot connect; ssh-ng://h: error: cannot connect",
                "nix store ping --store ssh://h -v",
            ),
            (
                "no rsync here",
                |f| f.local_rsync = None,
                CheckId::Rsync,
                Status::Fail,
                "no rsync here",
                "rsync",
            ),
            (
                "openrsync here",
                |f| f.local_rsync = Some(OPEN_RSYNC.into()),
                CheckId::Rsync,
                Status::Fail,
                "here: openrsync",
                "rsync",
            ),
            (
                "no rsync there",
                |f| {
                    remote(f).rsync.clear();
                    remote(f).rsync_version.clear();
                },
                CheckId::Rsync,
                Status::Fail,
                "rsync is not installed there",
                "rsync",
            ),
            (
                "openrsync there",
                |f| remote(f).rsync_version = OPEN_RSYNC.into(),
                CheckId::Rsync,
                Status::Fail,
                "the rsync there (/usr/bin/rsync: openrsync",
                "rsync",
            ),
            (
                "a good one elsewhere",
                |f| {
                    remote(f).rsync_version = OPEN_RSYNC.into();
                    remote(f).other_rsync = vec![(
                        "/opt/homebrew/bin/rsync".into(),
                        "rsync  version 3.4.1  protocol version 32".into(),
                    )];
                },
                CheckId::Rsync,
                Status::Ok,
                "here 3.2.7, there at /opt/homebrew/bin/rsync",
                "",
            ),
            (
                "healthy rsync",
                |_| {},
                CheckId::Rsync,
                Status::Ok,
                "here 3.2.7, there 3.2.7",
                "",
            ),
            (
                "system as claimed",
                |f| {
                    f.machine = Some(machine(&["x86_64-linux", "i686-linux"]));
                    remote(f).extra_platforms = "i686-linux".into();
                },
                CheckId::System,
                Status::Ok,
                "x86_64-linux, i686-linux (as the machines file says)",
                "",
            ),
            (
                "system claimed wrongly",
                |f| f.machine = Some(machine(&["x86_64-linux", "aarch64-linux"])),
                CheckId::System,
                Status::Fail,
                "h builds for x86_64-linux, but /etc/nix/machines:1 claims aarch64-linux",
                "extra-platforms",
            ),
            (
                "unsigned",
                |f| {
                    f.trust = Some(Copy::Failed {
                        line: "nix copy".into(),
                        stderr: "error: path '/nix/store/a' lacks a signature by a trusted key"
                            .into(),
                    })
                },
                CheckId::Trust,
                Status::Fail,
                "refuses unsigned paths",
                "trusted-users = root",
            ),
            (
                "copy fails",
                |f| {
                    f.trust = Some(Copy::Failed {
                        line: "nix copy --from ssh://h /nix/store/a".into(),
                        stderr: "error: disk full\n".into(),
                    })
                },
                CheckId::Trust,
                Status::Fail,
                "nix copy failed: error: disk full",
                "run `nix copy --from ssh://h /nix/store/a`",
            ),
            (
                "not root",
                |f| {
                    f.root = false;
                    f.daemon = None;
                },
                CheckId::Daemon,
                Status::Skipped,
                "run as root",
                "",
            ),
            (
                "root lacks the key",
                |f| {
                    f.alias = "lab".into();
                    f.daemon = Some(Ok(Login {
                        success: false,
                        stdout: String::new(),
                        stderr: "Host key verification failed.".into(),
                    }));
                },
                CheckId::Daemon,
                Status::Warn,
                "(edict works, Nix's own remote builds would not)",
                "add `Host lab` with `HostName 127.0.0.1` and `Port 2222` to /root/.ssh/config",
            ),
        ];
        for (name, change, id, status, detail, fix) in rows {
            let mut facts = healthy();
            change(&mut facts);
            let report = judge(&facts);
            let c = check(&report, id);
            assert_eq!(c.status, status, "{name}: {c:?}");
            assert!(
                c.detail.contains(detail),
                "{name}: {:?} lacks {detail:?}",
                c.detail
            );
            match (fix, &c.fix) {
                ("", None) => {}
                ("", Some(f)) => panic!("{name}: a fix where none belongs: {f}"),
                (want, got) => assert!(
                    got.as_deref().unwrap_or("").contains(want),
                    "{name}: {got:?} lacks {want:?}"
                ),
            }
        }
    }

    fn machine(types: &[&str]) -> Machine {
        let line = format!("ssh://h {} - 1 1", types.join(","));
        crate::pool::parse(&line, "/etc/nix/machines", "x86_64-linux")
            .unwrap()
            .remove(0)
    }

    /// A healthy host is ok throughout; a failure stops the checks that need it, which say
    /// so; a panic is said on the first check not reached.
    #[test]
    fn a_failure_stops_what_depends_on_it() {
        let report = judge(&healthy());
        assert!(
            report.checks.iter().all(|c| c.status == Status::Ok),
            "{report:?}"
        );
        assert_eq!(report.checks.len(), CHECKS.len());
        let mut facts = healthy();
        facts.tcp = Some(Err("refused".into()));
        let report = judge(&facts);
        // Resolve, tcp (failed) and ssh-config were judged; the rest was not reached.
        assert_eq!(check(&report, CheckId::Tcp).status, Status::Fail);
        assert!(
            report.checks[3..]
                .iter()
                .all(|c| c.status == Status::Skipped && c.detail == NOT_REACHED),
            "{report:?}"
        );
        assert_eq!(check(&report, CheckId::Login).detail, NOT_REACHED);
        let report = with_panic(report, "boom".into());
        assert_eq!(check(&report, CheckId::HostKey).status, Status::Fail);
        assert_eq!(check(&report, CheckId::HostKey).detail, "boom");
        assert_eq!(check(&report, CheckId::Login).detail, NOT_REACHED);
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
