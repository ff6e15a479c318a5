//! The connection to HOST: the user's own ssh (config, agent, known_hosts all apply), with one
//! ControlMaster connection opened first and reused by every step — the remote commands,
//! rsync (`-e`), and `nix copy` (through `NIX_SSHOPTS`) — and kept for the next run (see `keep`)
//! or closed when edict exits.

use crate::exec::{self, Cmd};
use crate::problem::{Kind, Problem};
use anyhow::{Result, bail};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// An ssh destination as the user wrote it: `host`, `user@host`, an alias from their ssh
/// config, or `ssh://[user@]host[:port]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl Destination {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| -> Result<Self> {
            bail!(
                "`{s}` is not an ssh destination: {why}; use host, user@host, an alias from your ssh config, or ssh://user@host:port"
            )
        };
        if s.is_empty() {
            return bad("it is empty");
        }
        if s.starts_with('-') {
            return bad("it starts with `-` (edict's own options go before HOST)");
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("it contains white space");
        }
        let (rest, url) = match s
            .strip_prefix("ssh://")
            .or_else(|| s.strip_prefix("ssh-ng://"))
        {
            Some(rest) => (rest.trim_end_matches('/'), true),
            None => (s, false),
        };
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
            Some(_) => return bad("the user before `@` is empty"),
            None => (None, rest),
        };
        let (host, port) = if url {
            if let Some(v6) = hostport.strip_prefix('[') {
                match v6.split_once(']') {
                    Some((h, "")) => (h.to_string(), None),
                    Some((h, p)) => match p.strip_prefix(':').and_then(|p| p.parse().ok()) {
                        Some(port) => (h.to_string(), Some(port)),
                        None => return bad("the port is not a number"),
                    },
                    None => return bad("an IPv6 address lacks its `]`"),
                }
            } else {
                match hostport.split_once(':') {
                    Some((h, p)) => match p.parse() {
                        Ok(port) => (h.to_string(), Some(port)),
                        Err(_) => return bad("the port is not a number"),
                    },
                    None => (hostport.to_string(), None),
                }
            }
        } else {
            if hostport.contains('/') {
                return bad("it contains `/`");
            }
            if hostport.contains(':') && !hostport.contains("::") {
                return bad("a port needs the ssh:// form (ssh://host:2222)");
            }
            (hostport.to_string(), None)
        };
        if host.is_empty() {
            return bad("the host name is empty");
        }
        Ok(Destination { user, host, port })
    }

    /// `user@host` or `host`: what ssh and rsync take (the port goes in `-p`).
    pub fn target(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }
}

/// How to reach the host: the destination plus the user's ssh options.
#[derive(Clone, Debug)]
pub struct Transport {
    pub dest: Destination,
    /// The host as the user wrote it, for messages.
    pub label: String,
    /// From `EDICT_SSH_OPTS` if set, else `NIX_SSHOPTS`, split on white space as nix does,
    /// plus what a pool machine adds (its key, its pinned host key).
    user_opts: Vec<String>,
    /// Files the options point at (a pinned known_hosts), kept for the transport's life,
    /// and the key pinned there.
    _files: Option<(std::sync::Arc<tempfile::TempDir>, String)>,
}

impl Transport {
    pub fn new(label: &str, dest: Destination, ssh_opts: &str) -> Self {
        let mut user_opts: Vec<String> = ssh_opts.split_whitespace().map(str::to_string).collect();
        if let Some(port) = dest.port {
            user_opts.extend(["-p".to_string(), port.to_string()]);
        }
        Transport {
            dest,
            label: label.to_string(),
            user_opts,
            _files: None,
        }
    }

    /// The options as they decide the connection, the same from run to run: a pinned
    /// known_hosts is in a new temporary file each time, so the key it holds stands for it.
    pub fn identity(&self) -> String {
        let port = self.dest.port.map(|p| p.to_string()).unwrap_or_default();
        self.stable(format!(
            "{}\n{port}\n{}",
            self.dest.target(),
            self.user_opts.join("\n")
        ))
    }

    /// `ssh -G`'s answer for this destination with these options: the configuration ssh
    /// will use (empty when ssh cannot say), as [`Transport::identity`] gives the options.
    pub fn config(&self) -> String {
        let said = Cmd::new("ssh")
            .args(self.user_opts.clone())
            .args(["-G", "--"])
            .arg(self.dest.target())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        self.stable(said)
    }

    fn stable(&self, text: String) -> String {
        match &self._files {
            Some((dir, key)) => {
                text.replace(&dir.path().display().to_string(), &format!("pinned:{key}"))
            }
            None => text,
        }
    }

    /// What a pool machine adds: its ssh key and, when the machines file pins one, its host
    /// key (in a private known_hosts under an alias, so the port and host name don't
    /// matter), on top of the user's ssh config and options.
    pub fn with_machine_keys(
        mut self,
        key: Option<String>,
        host_key: Option<&str>,
    ) -> anyhow::Result<Self> {
        if let Some(key) = key {
            self.user_opts.extend(["-i".to_string(), key]);
        }
        if let Some(host_key) = host_key {
            let dir = crate::contain::private_tempdir("edict-hostkey-", None)?;
            let file = dir.path().join("known_hosts");
            std::fs::write(&file, format!("{PINNED_ALIAS} {host_key}\n"))?;
            self.user_opts.extend([
                "-o".to_string(),
                format!("UserKnownHostsFile={}", file.display()),
                "-o".to_string(),
                format!("HostKeyAlias={PINNED_ALIAS}"),
                "-o".to_string(),
                "StrictHostKeyChecking=yes".to_string(),
            ]);
            self._files = Some((std::sync::Arc::new(dir), host_key.to_string()));
        }
        Ok(self)
    }

    /// The ssh options for this host (the user's, plus the machine's key and host key).
    pub fn opts(&self) -> &[String] {
        &self.user_opts
    }

    /// Bounded, prompt-free connections: for probing many machines at once.
    pub fn probing(mut self) -> Self {
        self.user_opts
            .extend(["-o", "BatchMode=yes", "-o", "ConnectTimeout=5"].map(str::to_string));
        self
    }

    /// The ssh options edict and nix would use, from the environment.
    pub fn ssh_opts_from_env() -> String {
        crate::sshconfig::ssh_opts_from_env()
    }
}

/// An open ControlMaster connection; every step runs through it.
pub struct Connection {
    pub transport: Transport,
    socket: PathBuf,
    log: PathBuf,
    /// `ssh -G`'s answer (see [`Transport::config`]).
    config: String,
    /// Where the master is kept after the run (see `keep`); `None`: it ends with the run.
    kept: Option<crate::keep::Place>,
    /// The pid of a master that was there before this run, while it is not known to still
    /// reach HOST (the pid tells it from one another run put in its place).
    reused: std::sync::Mutex<Option<String>>,
    /// The link's round trip, once measured (see [`Connection::round_trip`]).
    round_trip: std::sync::OnceLock<std::time::Duration>,
    /// A compressed connection of its own could not log in (see
    /// [`Connection::compressed_nix_sshopts`]): not tried again.
    compressed_failed: std::sync::atomic::AtomicBool,
    // Holds the socket's directory of a master that ends with the run; removed after the
    // master has exited (field order).
    _dir: Option<tempfile::TempDir>,
}

/// Whether to give the remote command a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tty {
    Yes,
    No,
}

impl Tty {
    /// A terminal only when stdin, stdout and stderr all are one here. A remote terminal
    /// carries the command's stderr with its stdout, so `2>file` here would not get nix's
    /// messages: a redirected stream means no terminal there, as for a script.
    pub fn detect() -> Self {
        if std::io::stdin().is_terminal()
            && std::io::stdout().is_terminal()
            && std::io::stderr().is_terminal()
        {
            Tty::Yes
        } else {
            Tty::No
        }
    }
}

impl Connection {
    /// Opens the master connection (this is where a password or host-key prompt appears),
    /// or reuses the one a run kept (see `keep`) when `--keep-connection` allows.
    pub fn open(transport: Transport) -> Result<Self> {
        let keep = crate::transfer::settings().keep;
        let config = transport.config();
        // Without ssh's answer the connection cannot be told from another: not kept.
        if !keep.is_zero() && config.lines().any(|l| l.starts_with("hostname ")) {
            match crate::keep::place(&config, &transport.identity()) {
                Ok(place) => return Self::open_kept(transport, config, place, keep),
                Err(why) => exec::info(format_args!(
                    "{}: the connection is not kept after this run: {why}",
                    transport.label
                )),
            }
        }
        Self::open_for_run(transport, config)
    }

    /// A master of this run only (the doctor's: it checks the login itself).
    pub fn open_for_run(transport: Transport, config: String) -> Result<Self> {
        let dir = socket_dir()?;
        let socket = dir.path().join("ssh");
        let log = socket.with_file_name("master.log");
        let conn = Self::new(transport, config, (socket, log), None, Some(dir));
        // If edict dies without closing it, the master exits when idle.
        conn.start_master(std::time::Duration::from_secs(15))?;
        Ok(conn)
    }

    fn open_kept(
        transport: Transport,
        config: String,
        place: crate::keep::Place,
        keep: std::time::Duration,
    ) -> Result<Self> {
        // A directory where flock does not work (some network file systems): no keeping.
        let _lock = match place.lock(&transport.label) {
            Ok(lock) => lock,
            Err(e) => {
                exec::info(format_args!(
                    "{}: the connection is not kept after this run: locking {}: {e}",
                    transport.label,
                    place.socket().display()
                ));
                return Self::open_for_run(transport, config);
            }
        };
        let files = (place.socket(), place.log());
        let conn = Self::new(transport, config, files, Some(place.clone()), None);
        let label = &conn.transport.label;
        if let Some(pid) = conn.socket.exists().then(|| conn.master_pid()).flatten() {
            exec::debug(format_args!(
                "{label}: reusing the connection kept by an earlier run ({})",
                conn.socket.display()
            ));
            place.reusing();
            conn.set_reused(Some(pid));
            if let Some(took) = place.round_trip() {
                let _ = conn.round_trip.set(took);
            }
            return Ok(conn);
        }
        place.starting(label);
        conn.start_master(keep)?;
        Ok(conn)
    }

    /// A connection whose master is (to be) on `socket`, logging to `log`; kept in `kept`, or
    /// in the temporary `dir` for this run only.
    fn new(
        transport: Transport,
        config: String,
        (socket, log): (PathBuf, PathBuf),
        kept: Option<crate::keep::Place>,
        dir: Option<tempfile::TempDir>,
    ) -> Self {
        Connection {
            transport,
            socket,
            log,
            config,
            kept,
            reused: std::sync::Mutex::new(None),
            round_trip: std::sync::OnceLock::new(),
            compressed_failed: std::sync::atomic::AtomicBool::new(false),
            _dir: dir,
        }
    }

    /// Starts the master on `self.socket`, staying `persist` after its last session.
    fn start_master(&self, persist: std::time::Duration) -> Result<()> {
        // -f: return once authenticated (prompts happen first, on the terminal), then run
        // in a session of its own, out of reach of a Ctrl-C meant for edict. -E: once in
        // the background the master's stderr is /dev/null, and its last words (why the
        // connection died) belong in edict's error.
        let cmd = Cmd::new("ssh")
            .args(self.transport.user_opts.clone())
            .args(self.keepalive())
            .args(["-o", "ControlMaster=yes", "-o"])
            .arg(format!("ControlPath={}", self.socket.display()))
            .arg("-E")
            .arg(&self.log)
            .arg("-o")
            .arg(format!("ControlPersist={}", persist.as_secs().max(1)))
            // Forwardings in the user's config are not edict's business, nor should a kept
            // master hold their ports after the run.
            .args(["-o", "RemoteCommand=none", "-o", "ClearAllForwardings=yes"])
            .args(["-f", "-N", "--"])
            .arg(self.transport.dest.target());
        let log_file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let status = cmd
            .spawn(|c| {
                c.stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(log_file);
            })?
            .wait()?;
        if !status.success() {
            let stderr = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(place) = &self.kept {
                place.clear();
            }
            return Err(ssh_failure(&self.transport.label, "connecting", &stderr));
        }
        Ok(())
    }

    /// Whether this run reuses a master that an earlier run kept, not yet shown to reach
    /// HOST (see [`Connection::renew`]).
    pub fn reused(&self) -> bool {
        self.reused_pid().is_some()
    }

    fn reused_pid(&self) -> Option<String> {
        self.reused.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn set_reused(&self, pid: Option<String>) {
        if let Ok(mut r) = self.reused.lock() {
            *r = pid;
        }
    }

    /// A kept master did not answer in time: it goes, and a new one logs in on its socket.
    pub fn renew(&self) -> Result<()> {
        let label = &self.transport.label;
        exec::info(format_args!(
            "{label}: the kept connection did not answer within {} s; connecting again",
            crate::keep::ANSWER_WITHIN.as_secs()
        ));
        let Some(place) = &self.kept else {
            return Ok(());
        };
        let _lock = place.lock(label).map_err(|e| {
            Problem::new(
                label,
                "connecting",
                format!("locking {}: {e}", place.socket().display()),
                "run with --keep-connection=0",
            )
        })?;
        // Another run that found it dead too may have replaced it already: that one is used.
        // Else it stops taking new sessions (other runs' go on) and a new one takes its place.
        let now = self.master_pid();
        let timed_out = self.reused_pid();
        self.set_reused(None);
        if now.is_some() && now != timed_out {
            return Ok(());
        }
        self.control("stop");
        place.starting(label);
        self.start_master(crate::transfer::settings().keep)
    }

    /// `ssh -O OP` to the master (`check`, `stop`), given a few seconds: a master that
    /// cannot answer its own socket counts as gone.
    fn control(&self, op: &str) -> bool {
        self.control_said(op).is_some()
    }

    /// [`Connection::control`], with what ssh said when it worked (`-O check` names the
    /// master's pid).
    fn control_said(&self, op: &str) -> Option<String> {
        let cmd = Cmd::new("ssh")
            .args(self.client_opts())
            .args(["-O", op, "--"])
            .arg(self.transport.dest.target());
        let log = tempfile::tempfile().ok()?;
        let mut child = cmd
            .spawn(|c| {
                c.stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(
                        log.try_clone()
                            .map_or_else(|_| std::process::Stdio::null(), Into::into),
                    );
            })
            .ok()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => {
                    use std::io::{Read as _, Seek as _};
                    let mut log = log;
                    let mut said = String::new();
                    let _ = log.rewind().and_then(|()| log.read_to_string(&mut said));
                    return Some(said);
                }
                Ok(Some(_)) => return None,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// The kept master's pid, as `ssh -O check` says it.
    fn master_pid(&self) -> Option<String> {
        let said = self.control_said("check")?;
        let pid = said.split("pid=").nth(1)?.split(')').next()?;
        Some(pid.to_string())
    }

    /// Keepalives for the master unless the user's ssh config sets them: without, a link
    /// that drops silently (a suspended laptop, a Wi-Fi change) leaves edict waiting for
    /// hours; with them, the master gives up after about a minute and edict says so. A
    /// command-line `-o` would override the user's own setting, hence `ssh -G` first.
    fn keepalive(&self) -> Vec<String> {
        if sets_keepalive(&self.config) {
            return Vec::new();
        }
        [
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
        ]
        .map(str::to_string)
        .to_vec()
    }

    /// The connection, or a session on it, went away in the middle of `step`: the error,
    /// with what the master said (its stderr goes to a log, not the terminal).
    pub fn lost(&self, step: &str, what: &str) -> Problem {
        let host = &self.transport.label;
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        // The last words: earlier lines are from connecting (e.g. "Permanently added").
        let lines: Vec<&str> = log
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let said = lines[lines.len().saturating_sub(3)..].join("\n");
        Problem {
            host: host.clone(),
            step: step.to_string(),
            what: what.to_string(),
            said: (!said.is_empty()).then(|| ("ssh".to_string(), said)),
            fix: format!("check the network to {host}; run `ssh -v {host} true` to see why"),
            kind: Kind::Connection,
        }
    }

    /// ssh options for every client of the master.
    fn client_opts(&self) -> Vec<String> {
        let mut opts = self.transport.user_opts.clone();
        opts.extend([
            "-o".to_string(),
            format!("ControlPath={}", self.socket.display()),
            "-o".to_string(),
            "ControlMaster=no".to_string(),
            // A RemoteCommand in the user's config would replace edict's commands.
            "-o".to_string(),
            "RemoteCommand=none".to_string(),
        ]);
        opts
    }

    /// `ssh … HOST -- sh -c SCRIPT`: the script runs in a POSIX shell whatever the login
    /// shell is; every word in it must already be quoted with [`exec::quote`].
    pub fn ssh(&self, tty: Tty, script: &str) -> Cmd {
        self.ssh_as(tty, script, "")
    }

    /// [`Connection::ssh`] for a host whose login shell is `shell` (its `$SHELL`; empty when
    /// not known yet). csh and tcsh end a command at a line break even inside single
    /// quotes, unless a backslash comes before it (which they remove). [`exec::quote`]
    /// puts a line break only inside single quotes, and `!` (csh's history) only outside,
    /// as `\!`; edict's own scripts hold no line break; a user's words may.
    pub fn ssh_as(&self, tty: Tty, script: &str, shell: &str) -> Cmd {
        let line = exec::quote_words(&["sh", "-c", script]);
        let line = if is_csh(shell) {
            line.replace('\n', "\\\n")
        } else {
            line
        };
        Cmd::new("ssh")
            .args(self.client_opts())
            .arg(if tty == Tty::Yes { "-t" } else { "-T" })
            // With a terminal, ssh ends every session with "Shared connection to … closed.",
            // an INFO message: nix here prints nothing of the kind.
            .args(if tty == Tty::Yes {
                vec!["-o", "LogLevel=ERROR"]
            } else {
                Vec::new()
            })
            .arg("--")
            .arg(self.transport.dest.target())
            .arg(line)
            // Quoted, so that what runs there (`a || b`, `x; y`) reads as one remote line.
            // The last argument: nothing may be added after it.
            .show_last_as(exec::quote(&crate::scripts::shown(script)))
    }

    /// The remote shell for `rsync -e`: rsync splits it on spaces and honours quotes.
    pub fn rsync_shell(&self) -> String {
        rsync_shell_words(
            &std::iter::once("ssh".to_string())
                .chain(self.client_opts())
                .collect::<Vec<_>>(),
        )
    }

    /// `NIX_SSHOPTS` for a local nix talking to HOST through the master. Nix splits it on
    /// white space, so the socket path must have none (see `socket_dir`).
    pub fn nix_sshopts(&self) -> String {
        self.client_opts().join(" ")
    }

    /// `NIX_SSHOPTS` for a connection of its own with ssh's compression: a copy through the
    /// shared one cannot ask for it. Never a prompt (`BatchMode`): where the login needs one,
    /// this connection fails and the copy goes through the shared one.
    pub fn compressed_nix_sshopts(&self) -> String {
        let mut opts = self.transport.user_opts.clone();
        // As the shared one: a link that drops is noticed, not waited on for ever.
        opts.extend(self.keepalive());
        opts.extend(
            [
                "-C",
                "-o",
                "ConnectTimeout=15",
                "-o",
                "BatchMode=yes",
                "-o",
                "ControlMaster=no",
                "-o",
                "ControlPath=none",
                "-o",
                "RemoteCommand=none",
            ]
            .map(String::from),
        );
        opts.join(" ")
    }

    /// The round trip measured elsewhere (in the run's own session), for
    /// [`Connection::round_trip`] to answer with.
    pub fn know_round_trip(&self, took: std::time::Duration) {
        if self.round_trip.set(took).is_ok() {
            if let Some(place) = &self.kept {
                place.remember_round_trip(took);
            }
            exec::debug(format_args!(
                "{}: the link's round trip is {} ms",
                self.transport.label,
                took.as_millis()
            ));
        }
    }

    /// Whether a compressed connection of its own may be tried (none failed to log in).
    pub fn compressed_allowed(&self) -> bool {
        !self
            .compressed_failed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A compressed connection of its own failed to log in: copies use the shared one.
    pub fn compressed_login_failed(&self) {
        self.compressed_failed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The link's round trip, as the run measured it in its own session
    /// ([`Connection::know_round_trip`], before anything crosses) or an earlier run through
    /// the same kept master did; zero, a near host, when it was not measured.
    pub fn round_trip(&self) -> std::time::Duration {
        self.round_trip.get().copied().unwrap_or_default()
    }

    /// Whether [`Connection::round_trip`] has a measurement to answer with.
    pub fn round_trip_known(&self) -> bool {
        self.round_trip.get().is_some()
    }

    /// Whether the master is still up (to tell a remote exit code 255 from a dead link).
    pub fn alive(&self) -> bool {
        Cmd::new("ssh")
            .args(self.client_opts())
            .args(["-O", "check", "--"])
            .arg(self.transport.dest.target())
            .succeeds()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // A kept master stays for the next run (its ControlPersist ends it when idle).
        if self.kept.is_some() {
            return;
        }
        // Closing is best effort: a master already gone is closed.
        let _ = Cmd::new("ssh")
            .args(self.client_opts())
            .args(["-O", "exit", "--"])
            .arg(self.transport.dest.target())
            .succeeds();
    }
}

/// Asks the kept master on `socket` to exit (see `keep`); whether one was there. No ssh
/// config is read: the socket alone names the master.
pub fn close_kept(socket: &Path) -> bool {
    socket.exists()
        && Cmd::new("ssh")
            .args(["-F", "/dev/null", "-o"])
            .arg(format!("ControlPath={}", socket.display()))
            .args(["-O", "exit", "--", "edict-kept"])
            .succeeds()
}

/// A private directory for the control socket: short (sun_path holds 108 bytes) and made of
/// plain characters (NIX_SSHOPTS is split on white space, and ssh's `-o ControlPath=` reads
/// quotes and backslashes), so $TMPDIR only when it qualifies.
fn socket_dir() -> Result<tempfile::TempDir> {
    Ok(crate::contain::private_tempdir(
        "edict-",
        Some(&crate::keep::short_tmp()),
    )?)
}

/// Whether `ssh -G` output has keepalives on (`serveraliveinterval` above 0).
fn sets_keepalive(config: &str) -> bool {
    config.lines().any(|l| {
        l.strip_prefix("serveraliveinterval ")
            .is_some_and(|v| v.trim() != "0")
    })
}

/// Words as rsync's `-e` reads them: rsync splits the option on white space itself and
/// honours quotes, in its own grammar (a doubled quote inside quotes is the quote), which is
/// not a shell's: hence this one function besides `exec::quote`.
pub fn rsync_shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_=,./:@%+-".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The exit code for an edict error: 130 when interrupted, 255 when ssh itself failed (as
/// ssh exits), else 1.
pub fn exit_code_for(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<crate::signals::Interrupted>()) {
        130
    } else if let Some(p) = Problem::of(e) {
        p.exit_code()
    } else {
        1
    }
}

/// Prints an error the way edict reports them (an interruption is not called an error) and
/// returns its exit code.
pub fn report(e: &anyhow::Error) -> u8 {
    let code = exit_code_for(e);
    if code == 130 {
        eprintln!("edict: {e:#}");
    } else {
        eprintln!("edict: error: {e:#}");
    }
    code
}

/// The name a machine's pinned host key goes by in edict's private known_hosts.
const PINNED_ALIAS: &str = "edict-pinned";

/// Whether a failed command's stderr is ssh's own (the connection, not the program behind
/// it): ssh's errors start with `ssh:` or name a host key or the login; nix's mention `ssh://`.
pub fn said_by_ssh(stderr: &str) -> bool {
    stderr.lines().any(|l| {
        l.starts_with("ssh:")
            || l.contains("Host key verification failed")
            || l.contains("Permission denied (")
    })
}

/// The lines of ssh's host-key warning that say nothing about this case (its banner, its
/// advice, the file of a pinned key): left out of what edict quotes.
const HOST_KEY_BOILERPLATE: &[&str] = &[
    "IT IS POSSIBLE THAT SOMEONE",
    "Someone could be eavesdropping",
    "It is also possible that a host key",
    "Please contact your system administrator",
    "Add correct host key in",
    "Offending ",
    "remove with:",
    "ssh-keygen -f ",
];

/// Whether `line` is exactly ssh's own advice `ssh-keygen -f "FILE" -R "ENTRY"` (either
/// quotes), with nothing a shell would read as more than those words: a remote program's
/// output can reach the text edict reads here, and a fix line is something users paste.
fn is_removal_command(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("ssh-keygen -f ") else {
        return false;
    };
    let Some(q) = rest.chars().next().filter(|c| matches!(c, '"' | '\'')) else {
        return false;
    };
    let parts: Vec<&str> = rest.split(q).collect();
    // ["", FILE, " -R ", ENTRY, ""]
    let [empty, file, middle, entry, end] = parts.as_slice() else {
        return false;
    };
    let plain = |s: &str, extra: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-+~@ ".contains(c) || extra.contains(c))
    };
    empty.is_empty()
        && *middle == " -R "
        && end.is_empty()
        && plain(file, "")
        && plain(entry, ":[]")
        && !entry.contains(' ')
}

/// Turns ssh's stderr into an error that says what went wrong with which host, at which
/// step, and what to do about it.
/// The name a `Host` line of an ssh config would match for a destination as written:
/// without `ssh://`, `user@` or `:port` (ssh matches `Host` against the host name alone).
pub fn alias_of(destination: &str) -> &str {
    let d = destination
        .strip_prefix("ssh://")
        .or_else(|| destination.strip_prefix("ssh-ng://"))
        .unwrap_or(destination);
    let d = d.rsplit_once('@').map_or(d, |(_, h)| h);
    match d.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => d,
    }
}

pub fn ssh_failure(host: &str, step: &str, stderr: &str) -> anyhow::Error {
    let said = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('@'))
        .filter(|l| !HOST_KEY_BOILERPLATE.iter().any(|b| l.contains(b)))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n");
    let has = |s: &str| stderr.contains(s);
    // ssh names the exact known_hosts file and entry it checked (`[10.0.0.5]:2222` for an
    // alias with a port, in the config's UserKnownHostsFile): its own removal command.
    let remove = stderr
        .lines()
        .map(str::trim)
        .find(|l| is_removal_command(l));
    let (what, fix) = if has("Could not resolve hostname") || has("Name or service not known") {
        (
            format!("ssh cannot resolve the host name `{host}`"),
            match crate::sshconfig::did_you_mean(alias_of(host)) {
                Some(near) => format!(
                    "did you mean `{near}` (a host of {})? Else add a `Host {}` entry with a `HostName` there",
                    crate::sshconfig::config_file(),
                    alias_of(host)
                ),
                None => format!(
                    "check the spelling, or add a `Host {}` entry with a `HostName` to {}",
                    alias_of(host),
                    crate::sshconfig::config_file()
                ),
            },
        )
    } else if (has("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || has("Host key for") && has("has changed"))
        && has(PINNED_ALIAS)
    {
        (
            format!(
                "{host}'s host key is not the one the machines file pins for it (ssh-public-host-key)"
            ),
            format!(
                "if {host} was reinstalled, check its new key's fingerprint (above) and put the new key in the machines file (`base64 -w0 < /etc/ssh/ssh_host_ed25519_key.pub` on {host}); otherwise someone may be intercepting the connection"
            ),
        )
    } else if has("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || has("Host key for") && has("has changed")
    {
        let remove = match remove {
            Some(cmd) => {
                format!("remove the old key with `{cmd}` (the file and entry ssh checked)")
            }
            None => format!(
                "remove the old key from the known_hosts file that `ssh -G {host} | grep knownhostsfile` names"
            ),
        };
        (
            format!("{host}'s host key does not match the one in your known_hosts"),
            format!(
                "if {host} was reinstalled, check its new key's fingerprint (above), {remove}, then connect once to accept the new one; otherwise someone may be intercepting the connection"
            ),
        )
    } else if has("Host key verification failed")
        || has("No ED25519 host key is known")
        || has("host key is not known")
    {
        (
            format!("{host}'s host key is not in your known_hosts"),
            format!("run `ssh {host}` once, check the fingerprint and accept the key"),
        )
    } else if has("Permission denied") || has("Too many authentication failures") {
        (
            format!("{host} refused the login"),
            format!(
                "put your public key in ~/.ssh/authorized_keys of the remote user (`ssh-copy-id {host}`), or load the right key into your agent (`ssh-add`), or set IdentityFile for {host} in your ssh config"
            ),
        )
    } else if has("Connection refused") {
        (
            format!("nothing accepts ssh connections on {host}"),
            format!("start sshd on {host}, or check the port (`ssh -G {host} | grep ^port`)"),
        )
    } else if has("timed out") || has("No route to host") || has("Network is unreachable") {
        (
            format!("{host} is unreachable"),
            format!(
                "check that {host} is up and that your network (VPN, ProxyJump) reaches it: `ssh -v {host} true`"
            ),
        )
    } else {
        (
            format!("ssh to {host} failed"),
            format!("run `ssh -v {host} true` to see why"),
        )
    };
    anyhow::Error::new(Problem {
        host: host.to_string(),
        step: step.to_string(),
        what: format!("{what}."),
        said: Some(("ssh".into(), said)),
        fix,
        kind: Kind::Connection,
    })
}

/// What csh and tcsh say when a quoted word runs over a line break without a backslash:
/// how the doctor, which sends one on purpose, tells such a login shell.
pub fn refused_by_csh(stderr: &str) -> bool {
    stderr.contains(CSH_SAYS)
}

const CSH_SAYS: &str = "Unmatched '''.";

/// What a command printed, without csh's refusal of a line break (see [`refused_by_csh`]).
pub fn without_csh_refusal(printed: &str) -> String {
    printed
        .lines()
        .filter(|l| !l.contains(CSH_SAYS))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether a login shell (a path, as `$SHELL`) is csh or tcsh.
pub fn is_csh(shell: &str) -> bool {
    matches!(shell.rsplit('/').next(), Some("csh" | "tcsh"))
}

/// Whether a remote protocol (rsync's, nix's) failed the way it does when the login shell
/// printed text.
pub fn is_chatty(stderr: &str) -> bool {
    stderr.contains("is your shell clean")
        || stderr.contains("protocol version mismatch")
        || stderr.contains("protocol mismatch")
        || stderr.contains("unexpected end of file")
        || stderr.contains("invalid message from remote")
}

/// The problem when a remote protocol failed at `step` because the login shell printed
/// text (see [`is_chatty`]).
pub fn chatty_shell(host: &str, step: &str) -> Problem {
    Problem::new(
        host,
        step,
        format!(
            "the login shell on {host} prints text in non-interactive sessions, which breaks rsync and nix's protocol"
        ),
        format!(
            "on {host}, make your shell rc files (~/.bashrc, ~/.zshenv, /etc/bash.bashrc) print only for interactive shells, e.g. start ~/.bashrc with `[[ $- == *i* ]] || return`; `ssh {host} true | od -c` must print nothing"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alias_a_host_line_would_match() {
        assert_eq!(alias_of("nix82"), "nix82");
        assert_eq!(alias_of("root@nix82"), "nix82");
        assert_eq!(alias_of("ssh://root@nix82:2222"), "nix82");
        assert_eq!(alias_of("ssh-ng://box"), "box");
    }

    /// What rsync itself makes of `-e`: a stand-in ssh records the words it was given.
    #[test]
    fn rsync_reads_the_shell_words_back_as_they_were() {
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("fake ssh");
        let said = d.path().join("said");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{}'\nexit 1\n",
                said.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let words: Vec<String> = [
            fake.to_str().unwrap(),
            "-F",
            "/home/o'brien/ssh config",
            "-o",
            "ControlPath=/tmp/x y/%C",
            "it's",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let _ = std::process::Command::new("rsync")
            .arg("-e")
            .arg(rsync_shell_words(&words))
            .args(["/etc/hostname", "h:/tmp/x"])
            .output()
            .unwrap();
        let got = std::fs::read_to_string(&said).unwrap();
        let got: Vec<&str> = got.lines().collect();
        assert_eq!(got[..words.len() - 1], words[1..], "{got:?}");
        assert_eq!(got[words.len() - 1], "h", "the host follows: {got:?}");
    }

    #[test]
    fn keepalives_are_left_to_a_config_that_sets_them() {
        let g = |v: &str| format!("user root\nserveraliveinterval {v}\nserveralivecountmax 3\n");
        assert!(!sets_keepalive(&g("0")), "ssh's default: off");
        assert!(sets_keepalive(&g("30")));
        assert!(!sets_keepalive(""), "no ssh -G output: edict's default");
    }

    fn d(user: Option<&str>, host: &str, port: Option<u16>) -> Destination {
        Destination {
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn csh_is_told_by_its_path() {
        for (shell, csh) in [
            ("/bin/csh", true),
            ("/usr/bin/tcsh", true),
            ("tcsh", true),
            ("/bin/sh", false),
            ("/usr/bin/fish", false),
            ("/opt/tcsh-6/bin/zsh", false),
            ("", false),
        ] {
            assert_eq!(is_csh(shell), csh, "{shell}");
        }
    }

    #[test]
    fn destinations() {
        let ok = [
            ("builder", d(None, "builder", None)),
            ("me@builder", d(Some("me"), "builder", None)),
            (
                "me@builder.example.org",
                d(Some("me"), "builder.example.org", None),
            ),
            ("ssh://builder", d(None, "builder", None)),
            (
                "ssh://me@builder:2222",
                d(Some("me"), "builder", Some(2222)),
            ),
            (
                "ssh-ng://me@builder:2222/",
                d(Some("me"), "builder", Some(2222)),
            ),
            ("ssh://[::1]:22", d(None, "::1", Some(22))),
            ("ssh://root@[fe80::1]", d(Some("root"), "fe80::1", None)),
            ("10.0.0.2", d(None, "10.0.0.2", None)),
            ("::1", d(None, "::1", None)),
            ("a@b@c", d(Some("a@b"), "c", None)),
        ];
        for (s, want) in ok {
            assert_eq!(Destination::parse(s).unwrap(), want, "{s}");
        }
        for bad in [
            "",
            "-oProxyCommand=x",
            "two words",
            "host:22",
            "ssh://h:port",
            "@host",
            "ssh://",
            "a/b",
            "h\nx",
        ] {
            assert!(
                Destination::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert_eq!(d(Some("me"), "h", Some(1)).target(), "me@h");
    }

    #[test]
    fn ssh_failures_name_host_step_and_fix() {
        let cases = [
            (
                "ssh: Could not resolve hostname nope: Name or service not known",
                "cannot resolve",
            ),
            (
                "root@127.0.0.1: Permission denied (publickey).",
                "refused the login",
            ),
            (
                "@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.",
                "does not match",
            ),
            (
                "No ED25519 host key is known for [127.0.0.1]:2 and you have requested strict checking.\nHost key verification failed.",
                "not in your known_hosts",
            ),
            (
                "ssh: connect to host 127.0.0.1 port 1: Connection refused",
                "nothing accepts",
            ),
            (
                "ssh: connect to host 10.1.1.1 port 22: Connection timed out",
                "unreachable",
            ),
            (
                "kex_exchange_identification: read: Connection reset by peer",
                "ssh to h failed",
            ),
        ];
        // A changed key: ssh's own removal command (the real file and entry), its
        // boilerplate left out; a pinned key's fix is the machines file, not a temp file.
        let changed = "@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nIT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\nThe fingerprint for the ED25519 key sent by the remote host is\nSHA256:abc.\nAdd correct host key in /k/known_hosts to get rid of this message.\nOffending ED25519 key in /k/known_hosts:3\n  remove with:\n  ssh-keygen -f \"/k/known_hosts\" -R \"[127.0.0.1]:2201\"\nHost key for [127.0.0.1]:2201 has changed and you have requested strict checking.\nHost key verification failed.";
        let msg = format!("{}", ssh_failure("ha", "connecting", changed));
        assert!(
            msg.contains(
                "remove the old key with `ssh-keygen -f \"/k/known_hosts\" -R \"[127.0.0.1]:2201\"`"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("SHA256:abc") && !msg.contains("NASTY"),
            "{msg}"
        );
        // Only ssh's exact advice is repeated: anything more could be a remote program's
        // words, and users paste fix lines.
        for bad in [
            "ssh-keygen -f \"/k/known_hosts\" -R \"[127.0.0.1]:2201\"; curl x|sh",
            "ssh-keygen -f \"/k/$(id)\" -R \"h\"",
            "ssh-keygen -f \"/k\" -R \"h\" -D x",
        ] {
            let msg = format!(
                "{}",
                ssh_failure(
                    "ha",
                    "connecting",
                    &changed.replace(
                        "ssh-keygen -f \"/k/known_hosts\" -R \"[127.0.0.1]:2201\"",
                        bad
                    )
                )
            );
            assert!(
                !msg.contains("curl") && !msg.contains("$(id)") && !msg.contains("-D x"),
                "{msg}"
            );
        }
        assert!(is_removal_command(
            "ssh-keygen -f '/home/me/.ssh/known_hosts' -R 'box.example.org'"
        ));
        let pinned = changed
            .replace("/k/known_hosts", "/tmp/edict-hostkey-x/known_hosts")
            .replace("[127.0.0.1]:2201", PINNED_ALIAS);
        let msg = format!("{}", ssh_failure("ha", "connecting", &pinned));
        assert!(msg.contains("the machines file pins"), "{msg}");
        assert!(!msg.contains("edict-hostkey"), "{msg}");
        for (stderr, want) in cases {
            let msg = format!("{}", ssh_failure("h", "connecting", stderr));
            assert!(msg.starts_with("h: connecting: "), "{msg}");
            assert!(msg.contains(want), "{stderr} -> {msg}");
            assert!(msg.contains("fix: "), "{msg}");
        }
    }
}
