//! The lab: real remote Nix hosts on this machine, for edict's integration tests.
//!
//! A host is a real OpenSSH sshd listening on 127.0.0.1 (a free port) inside its own mount
//! namespace, where `/nix`, `/etc/nix` and root's home are private bind mounts. So a host has
//! its own Nix store and settings while sharing this machine's kernel. Two flavours:
//!
//! * [`Flavour::Bookworm`]: this machine's own root (Debian 12, Nix 2.8);
//! * [`Flavour::Trixie`]: a Debian 13 root (Nix 2.26) and [`Flavour::Sid`]: a Debian sid root
//!   (Nix 2.34), each built once by `debian-root.sh`, cached outside the work tree and shared
//!   by every host of its flavour through its own overlayfs.
//!
//! The client side is an ssh config file with one lower-case alias per host, a client key and
//! a known_hosts file holding each host's real key: commands reach a host exactly as a user
//! reaches a remote machine, with `ssh -F CONFIG alias` (and `NIX_SSHOPTS="-F CONFIG"` for nix).
//!
//! Hosts are children of the process that starts them: dropping the [`Lab`] stops them by pid,
//! and if the process dies first the kernel stops them (PR_SET_PDEATHSIG).
#![allow(dead_code)] // each test crate uses a different part of the lab

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Which root a host runs in, and so which Nix it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// This machine's root: Debian 12, Nix 2.8.
    Bookworm,
    /// The cached Debian 13 root: Nix 2.26.
    Trixie,
    /// The cached Debian sid root: Nix 2.34, today's Nix.
    Sid,
}

impl Flavour {
    pub const ALL: [Flavour; 3] = [Flavour::Bookworm, Flavour::Trixie, Flavour::Sid];

    /// The `x.y` of the Nix this flavour ships.
    pub fn nix_version(self) -> &'static str {
        match self {
            Flavour::Bookworm => "2.8",
            Flavour::Trixie => "2.26",
            Flavour::Sid => "2.34",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Flavour::Bookworm => "Debian 12, Nix 2.8",
            Flavour::Trixie => "Debian 13, Nix 2.26",
            Flavour::Sid => "Debian sid, Nix 2.34",
        }
    }

    /// The Debian suite of its cached root; `None` for this machine's own root.
    pub fn suite(self) -> Option<&'static str> {
        match self {
            Flavour::Bookworm => None,
            Flavour::Trixie => Some("trixie"),
            Flavour::Sid => Some("sid"),
        }
    }
}

/// How one host is set up. Start from [`HostSpec::new`] and change what a test needs; every
/// knob is a real difference in the host, never a fake answer.
#[derive(Clone, Debug)]
pub struct HostSpec {
    pub name: String,
    pub flavour: Flavour,
    /// `experimental-features = nix-command flakes` in the host's nix.conf.
    pub flakes: bool,
    /// Whether `nix` is on the non-interactive PATH; when false it is only in
    /// `/nix/var/nix/profiles/default/bin`, as on a multi-user install reached over ssh.
    pub nix_on_path: bool,
    /// Whether nix is installed at all (when false, edict must say so).
    pub nix: bool,
    /// Whether rsync is installed.
    pub rsync: bool,
    /// A script that is the host's `rsync` instead (an openrsync look-alike).
    pub rsync_script: Option<String>,
    /// Whether flock(1) is installed (a nix-darwin host has none).
    pub flock: bool,
    /// Whether git is installed (Nix ≥ 2.20 reads git flakes with libgit2, without it).
    pub git: bool,
    /// Give root's home a tmpfs of this many KiB (a disk that fills up).
    pub home_kib: Option<u32>,
    /// Log in as this unprivileged user, with a nix-daemon owning the store (a multi-user
    /// install, as most remote machines have); `None`: root on a single-user store.
    pub user: Option<String>,
    /// A line the login shell prints for every session (in ~/.bashrc), which breaks the
    /// rsync and nix protocols.
    pub banner: Option<String>,
    /// root's login shell (/etc/passwd is replaced in the host's mount namespace, or in its
    /// overlay), e.g. `/usr/bin/fish`, which reads quotes differently from sh.
    pub login_shell: Option<String>,
    /// Extra lines for the host's nix.conf.
    pub extra_nix_conf: String,
    /// Put the host behind a constrained link (its own network namespace) instead of
    /// 127.0.0.1: for the benchmarks.
    pub link: Option<Link>,
    /// sshd's MaxSessions: sessions one connection may carry at once.
    pub max_sessions: u32,
}

/// A network link to a host: a veth pair into the host's own network namespace, shaped with
/// `tc tbf` both ways; latency comes from `proxy`, an ssh ProxyCommand (netem is not in
/// this kernel, so a userspace delay line holds each chunk for the one-way delay).
#[derive(Clone, Debug)]
pub struct Link {
    pub rate_mbit: u32,
    /// `PROGRAM ARGS…`; ssh appends `%h %p`.
    pub proxy: Option<String>,
}

impl HostSpec {
    /// A healthy host: flakes on, nix on PATH. `name` becomes the ssh alias, so it must be
    /// lower case (ssh lower-cases host names before matching).
    pub fn new(name: &str, flavour: Flavour) -> Self {
        assert_eq!(
            name,
            name.to_lowercase(),
            "lab host aliases must be lower case"
        );
        HostSpec {
            name: name.to_string(),
            flavour,
            flakes: true,
            nix_on_path: true,
            nix: true,
            rsync: true,
            rsync_script: None,
            flock: true,
            git: true,
            home_kib: None,
            user: None,
            banner: None,
            login_shell: None,
            extra_nix_conf: String::new(),
            link: None,
            max_sessions: 64,
        }
    }

    /// A host behind an 8 Mbit/s link: a few MB take seconds each way, time for a
    /// test to interrupt edict mid-transfer.
    pub fn slow(name: &str, flavour: Flavour) -> Self {
        HostSpec::new(name, flavour).link(Link {
            rate_mbit: 8,
            proxy: None,
        })
    }

    pub fn flakes(mut self, on: bool) -> Self {
        self.flakes = on;
        self
    }

    pub fn nix_on_path(mut self, on: bool) -> Self {
        self.nix_on_path = on;
        self
    }

    /// No nix anywhere on the host.
    pub fn without_nix(mut self) -> Self {
        self.nix = false;
        self.nix_on_path = false;
        self
    }

    pub fn without_rsync(mut self) -> Self {
        self.rsync = false;
        self
    }

    /// `script` as the host's rsync (in place of the real one).
    pub fn rsync_script(mut self, script: &str) -> Self {
        self.rsync_script = Some(script.to_string());
        self
    }

    /// No flock(1) on the host, as on macOS.
    pub fn without_flock(mut self) -> Self {
        self.flock = false;
        self
    }

    pub fn without_git(mut self) -> Self {
        self.git = false;
        self
    }

    /// A multi-user host reached as `user` (lower case, created here if needed).
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_string());
        self
    }

    pub fn login_shell(mut self, shell: &str) -> Self {
        assert!(self.user.is_none(), "a login shell is set for root only");
        self.login_shell = Some(shell.to_string());
        self
    }

    pub fn banner(mut self, text: &str) -> Self {
        self.banner = Some(text.to_string());
        self
    }

    pub fn home_kib(mut self, kib: u32) -> Self {
        self.home_kib = Some(kib);
        self
    }

    pub fn link(mut self, link: Link) -> Self {
        self.link = Some(link);
        self
    }

    pub fn nix_conf(mut self, lines: &str) -> Self {
        self.extra_nix_conf.push_str(lines);
        self.extra_nix_conf.push('\n');
        self
    }
}

/// An rsync that answers as macOS's openrsync does and, like it, rejects options edict
/// needs (`--from0`, `--files-from`, `--modify-window`, `--info`).
pub const OPENRSYNC: &str = r#"#!/bin/sh
case "$1" in --version) echo "openrsync: protocol version 29"; echo "rsync version 2.6.9 compatible"; exit 0;; esac
for a in "$@"; do
  case "$a" in --from0|--files-from*|--modify-window*|--info*) echo "openrsync: unrecognized option '$a'" >&2; exit 1;; esac
done
echo "openrsync: this look-alike does not copy" >&2
exit 1"#;

/// A running host.
pub struct Host {
    pub spec: HostSpec,
    /// Where its sshd listens: 127.0.0.1, or its namespace's address behind a link.
    pub addr: Ipv4Addr,
    pub port: u16,
    /// The network namespace and this side's veth, for a host behind a link.
    pub netns: Option<(String, String)>,
    /// The host's private state: `nix/`, `etc-nix/`, `home/`, `ssh/` (and `upper/` for trixie).
    pub dir: PathBuf,
    sshd: Child,
}

impl Host {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The pid of its sshd (the listener; each login is a process below it).
    pub fn sshd_pid(&self) -> u32 {
        self.sshd.id()
    }

    /// Where a path as the host sees it lives on this machine, for tests that look at the
    /// remote's files directly: `/nix/...`, `/root/...` and `/etc/nix/...` are the host's
    /// private dirs; anything else on a trixie host is in its overlay's upper dir (files it
    /// wrote), on a bookworm host it is shared with this machine.
    pub fn local_path(&self, remote: &str) -> PathBuf {
        let user_home = self.spec.user.as_ref().map(|u| format!("/home/{u}"));
        let mut map = vec![("/nix", "nix"), ("/root", "home"), ("/etc/nix", "etc-nix")];
        if let Some(h) = &user_home {
            map.push((h.as_str(), "userhome"));
        }
        for (prefix, sub) in map {
            if let Some(rest) = remote.strip_prefix(prefix) {
                if rest.is_empty() || rest.starts_with('/') {
                    return self.dir.join(sub).join(rest.trim_start_matches('/'));
                }
            }
        }
        match self.spec.flavour {
            Flavour::Trixie | Flavour::Sid => {
                self.dir.join("upper").join(remote.trim_start_matches('/'))
            }
            Flavour::Bookworm => PathBuf::from(remote),
        }
    }

    /// The login user's home as the host sees it.
    pub fn home(&self) -> String {
        match &self.spec.user {
            Some(u) => format!("/home/{u}"),
            None => "/root".to_string(),
        }
    }

    /// The pid of the host's sshd (while it runs).
    pub fn pid(&self) -> u32 {
        self.sshd.id()
    }

    fn stop(&mut self) {
        // The sshd is our direct child (exec'd through unshare, sh and chroot), so its pid is
        // the child's pid: kill exactly it, never by name. Its sessions first: a connection
        // a run kept open (edict's --keep-connection) ends with them, as when a real host
        // goes down, rather than outliving the lab.
        for pid in descendants(self.sshd.id()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        if let Some((ns, _)) = self.netns.take() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }

    /// Bytes that crossed the host's link so far (both directions), from the veth counters.
    pub fn link_bytes(&self) -> u64 {
        let Some((_, veth)) = &self.netns else {
            return 0;
        };
        ["rx_bytes", "tx_bytes"]
            .iter()
            .map(|f| {
                std::fs::read_to_string(format!("/sys/class/net/{veth}/statistics/{f}"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// A set of hosts plus the client-side ssh files that reach them.
pub struct Lab {
    dir: tempfile::TempDir,
    hosts: Vec<Host>,
}

/// The packages the lab needs, each with a program that shows it is installed.
const PACKAGES: &str = include_str!("packages");

/// The packages of `tests/lab/packages` whose program this machine lacks.
pub fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(char::is_whitespace))
        .filter(|(_, program)| {
            let program = program.trim();
            if program.starts_with('/') {
                !Path::new(program).exists()
            } else {
                which::which(program).is_err()
            }
        })
        .map(|(package, _)| package)
        .collect()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// What keeps the lab from starting hosts here, and the command that fixes it; `None` when
/// nothing does.
pub fn not_ready() -> Option<String> {
    let missing = missing_packages();
    if is_root() && missing.is_empty() {
        return None;
    }
    let install = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/install.sh");
    let mut msg = String::from("edict's lab cannot start its test hosts on this machine:\n");
    if !is_root() {
        msg.push_str("  - it is not root (each host is an sshd in its own mount namespace, with a private /nix)\n");
    }
    if !missing.is_empty() {
        writeln!(msg, "  - missing Debian packages: {}", missing.join(" ")).expect("formatting");
    }
    write!(
        msg,
        "  fix: as root, run {} (it installs what is missing and builds the cached Debian roots), then run the tests as root\n  \
         The tests that need neither root nor the lab: cargo test --bins --test cli\n",
        install.display()
    )
    .expect("formatting");
    Some(msg)
}

/// Ends this test process with one message, instead of a panic in every test, when the lab
/// cannot start here. Written to the real stderr: the test harness captures `eprintln!`.
pub fn require() {
    static CHECKED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    CHECKED.get_or_init(|| {
        if let Some(msg) = not_ready() {
            let _ =
                std::io::Write::write_all(&mut std::io::stderr(), format!("\n{msg}\n").as_bytes());
            std::process::exit(1);
        }
    });
}

/// Every process below `pid` (children, theirs, …), from /proc: sshd's sessions.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|p| {
                    let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
                    // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
                    let after = &stat[stat.rfind(')')? + 1..];
                    let ppid = after.split_whitespace().nth(1)?.parse().ok()?;
                    Some((p, ppid))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for (child, _) in parents.iter().filter(|(_, pp)| *pp == p) {
            out.push(*child);
            todo.push(*child);
        }
    }
    out
}

/// Where labs and their files go: `$TMPDIR` (the bench points it at a tmpfs of its own), or
/// /tmp when it is unset or too long: ssh control sockets under it must fit in sun_path
/// (108 bytes).
pub fn scratch() -> PathBuf {
    match std::env::var_os("TMPDIR").map(PathBuf::from) {
        Some(t) if t.is_absolute() && t.as_os_str().len() <= 24 => t,
        _ => PathBuf::from("/tmp"),
    }
}

impl Lab {
    pub fn new() -> Self {
        require();
        let dir = tempfile::Builder::new()
            .prefix("edict-lab-")
            .tempdir_in(scratch())
            .expect("creating the lab directory");
        let lab = Lab {
            dir,
            hosts: Vec::new(),
        };
        run_ok(
            Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "edict-lab-client",
                    "-f",
                ])
                .arg(lab.client_key()),
        );
        std::fs::write(lab.ssh_config(), "").expect("writing ssh_config");
        std::fs::write(lab.known_hosts(), "").expect("writing known_hosts");
        std::fs::create_dir(lab.runtime_dir()).expect("creating the runtime dir");
        std::fs::set_permissions(lab.runtime_dir(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod the runtime dir");
        lab
    }

    /// A lab with one healthy host of each flavour, named `nix28`, `nix226` and `nix234`.
    pub fn every() -> Self {
        let mut lab = Lab::new();
        for flavour in Flavour::ALL {
            lab.start(HostSpec::new(default_name(flavour), flavour));
        }
        lab
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `XDG_RUNTIME_DIR` of the lab's edict runs as root: where the connections they keep
    /// open live (edict's `keep`), one lab's apart from another's.
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir().join("run")
    }

    pub fn ssh_config(&self) -> PathBuf {
        self.dir().join("ssh_config")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir().join("known_hosts")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir().join("client_key")
    }

    /// The value for `NIX_SSHOPTS` (read by nix and by edict) that makes ssh use the lab's
    /// config; the lab's paths contain no spaces, so no quoting is needed.
    pub fn ssh_opts(&self) -> String {
        format!("-F {}", self.ssh_config().display())
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.spec.name == name)
            .unwrap_or_else(|| panic!("no lab host named {name}"))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Starts a host and adds it to the ssh config and known_hosts; returns once its sshd
    /// accepts connections.
    pub fn start(&mut self, spec: HostSpec) -> &Host {
        assert!(
            self.hosts.iter().all(|h| h.spec.name != spec.name),
            "lab host {} started twice",
            spec.name
        );
        let dir = self.dir().join("hosts").join(&spec.name);
        let ssh_dir = dir.join("ssh");
        for sub in ["nix", "etc-nix", "home", "userhome", "ssh"] {
            std::fs::create_dir_all(dir.join(sub)).expect("creating host dirs");
        }
        if let Some(user) = &spec.user {
            if spec.flavour == Flavour::Bookworm {
                ensure_machine_user(user);
            }
        }
        if let Some(banner) = &spec.banner {
            let home = if spec.user.is_some() {
                "userhome"
            } else {
                "home"
            };
            std::fs::write(dir.join(home).join(".bashrc"), format!("echo {banner}\n"))
                .expect("writing .bashrc");
        }
        // sshd refuses a home or key dir writable by others only with StrictModes, which is
        // off, but keep root's home as a real home would be.
        std::fs::set_permissions(dir.join("home"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod home");

        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C"])
                .arg(format!("edict-lab-{}", spec.name))
                .arg("-f")
                .arg(ssh_dir.join("host_key")),
        );
        let client_pub =
            std::fs::read_to_string(self.dir().join("client_key.pub")).expect("reading client key");
        std::fs::write(ssh_dir.join("authorized_keys"), client_pub)
            .expect("writing authorized_keys");
        std::fs::write(dir.join("etc-nix/nix.conf"), nix_conf(&spec)).expect("writing nix.conf");
        std::fs::write(
            dir.join("etc-nix/registry.json"),
            r#"{"flakes":[],"version":2}"#,
        )
        .expect("writing registry");

        let chroot_root = spec.flavour.suite().map(debian_root);
        if !spec.nix_on_path && spec.nix {
            hide_nix(&dir, chroot_root.as_deref());
        }

        let mut last_err = String::new();
        let netns = spec.link.as_ref().map(|link| make_link(&spec.name, link));
        let addr = netns.as_ref().map_or(Ipv4Addr::LOCALHOST, |n| n.2);
        for _attempt in 0..5 {
            let port = free_port();
            match start_sshd(
                &spec,
                &dir,
                addr,
                port,
                netns.as_ref().map(|n| n.0.as_str()),
                chroot_root.as_deref(),
            ) {
                Ok(sshd) => {
                    self.register_client_side(&spec, addr, port, &ssh_dir);
                    let netns = netns.map(|(ns, veth, _)| (ns, veth));
                    self.hosts.push(Host {
                        spec,
                        addr,
                        port,
                        netns,
                        dir,
                        sshd,
                    });
                    return self.hosts.last().expect("just pushed");
                }
                // Another process may have taken the port between our probe and sshd's bind.
                Err(e) => last_err = e,
            }
        }
        panic!("lab host {} did not start: {last_err}", spec.name);
    }

    fn register_client_side(&self, spec: &HostSpec, addr: Ipv4Addr, port: u16, ssh_dir: &Path) {
        let (name, user) = (&spec.name, spec.user.as_deref().unwrap_or("root"));
        let proxy = match spec.link.as_ref().and_then(|l| l.proxy.as_deref()) {
            Some(p) => format!("  ProxyCommand {p} %h %p\n"),
            None => String::new(),
        };
        let mut cfg = std::fs::read_to_string(self.ssh_config()).expect("reading ssh_config");
        write!(
            cfg,
            "Host {name}\n  HostName {addr}\n  Port {port}\n  User {user}\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  GlobalKnownHostsFile /dev/null\n{proxy}\n",
            key = self.client_key().display(),
            kh = self.known_hosts().display(),
        )
        .expect("formatting");
        std::fs::write(self.ssh_config(), cfg).expect("writing ssh_config");
        let pubkey =
            std::fs::read_to_string(ssh_dir.join("host_key.pub")).expect("reading host key");
        let mut fields = pubkey.split_whitespace();
        let (kind, key) = (
            fields.next().expect("key type"),
            fields.next().expect("key"),
        );
        let mut kh = std::fs::read_to_string(self.known_hosts()).expect("reading known_hosts");
        writeln!(kh, "[{addr}]:{port} {kind} {key}").expect("formatting");
        std::fs::write(self.known_hosts(), kh).expect("writing known_hosts");
    }

    /// A command with the lab's client environment: ssh and nix find the hosts through
    /// `NIX_SSHOPTS`, and the local nix works offline.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        // A developer's own settings of edict (README suggests EDICT_KEEP_CONNECTION=off in
        // a profile) are not the tests': a test that wants one sets it.
        cmd.env_remove("EDICT_KEEP_CONNECTION")
            .env_remove("EDICT_SSH_OPTS");
        cmd.env("NIX_SSHOPTS", self.ssh_opts());
        cmd.env("NIX_CONFIG", CLIENT_NIX_CONFIG);
        cmd.env("XDG_RUNTIME_DIR", self.runtime_dir());
        cmd
    }

    /// `ssh -F CONFIG HOST -- SCRIPT`: runs a shell script on a host.
    pub fn ssh(&self, host: &str, script: &str) -> Output {
        self.command("ssh")
            .arg("-F")
            .arg(self.ssh_config())
            .arg(host)
            .arg("--")
            .arg(script)
            .stdin(Stdio::null())
            .output()
            .expect("running ssh")
    }

    /// Like [`Lab::ssh`] but fails the test unless the script succeeds; returns its stdout.
    pub fn ssh_ok(&self, host: &str, script: &str) -> String {
        let out = self.ssh(host, script);
        assert!(
            out.status.success(),
            "on lab host {host}: `{script}` failed: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            host.stop();
        }
    }
}

pub fn default_name(flavour: Flavour) -> &'static str {
    match flavour {
        Flavour::Bookworm => "nix28",
        Flavour::Trixie => "nix226",
        Flavour::Sid => "nix234",
    }
}

/// Settings for the local (client) nix in tests: offline and with flakes, whatever the
/// machine's own nix.conf says.
pub const CLIENT_NIX_CONFIG: &str = "experimental-features = nix-command flakes\nsubstituters =\nsandbox = false\nbuild-users-group =\nflake-registry = /dev/null\n";

fn nix_conf(spec: &HostSpec) -> String {
    let mut conf = String::from(
        "# written by edict's lab\n\
         # no network but package registries: never wait on cache.nixos.org\n\
         substituters =\n\
         # Debian's nix has no working sandbox here, and root builds without nixbld users\n\
         sandbox = false\n\
         build-users-group =\n\
         flake-registry = /etc/nix/registry.json\n",
    );
    if spec.flakes {
        conf.push_str("experimental-features = nix-command flakes\n");
    }
    if !spec.nix_on_path {
        // Debian's nix runs its build hook from /usr/libexec -> /usr/bin/nix, which a hidden
        // nix removes; a profile install finds the hook beside its own binary, as here.
        conf.push_str("build-hook = /nix/var/nix/profiles/default/libexec/nix/build-remote\n");
    }
    conf.push_str(&spec.extra_nix_conf);
    conf
}

/// Moves `nix*` off the non-interactive PATH: the host gets its own copy of the nix binary in
/// `/nix/var/nix/profiles/default/bin`, and `/usr/bin/nix*` are removed from its view of
/// `/usr/bin` (see `start_sshd`).
fn hide_nix(dir: &Path, chroot_root: Option<&Path>) {
    let bin = dir.join("nix/var/nix/profiles/default/bin");
    std::fs::create_dir_all(&bin).expect("creating profile bin");
    let source = match chroot_root {
        Some(root) => root.join("usr/bin/nix"),
        None => PathBuf::from("/usr/bin/nix"),
    };
    std::fs::copy(&source, bin.join("nix")).expect("copying nix into the profile");
    for tool in NIX_TOOLS {
        std::os::unix::fs::symlink("nix", bin.join(tool)).expect("linking nix tools");
    }
    let libexec = dir.join("nix/var/nix/profiles/default/libexec/nix");
    std::fs::create_dir_all(&libexec).expect("creating profile libexec");
    std::os::unix::fs::symlink("../../bin/nix", libexec.join("build-remote"))
        .expect("linking build hook");
}

const NIX_TOOLS: [&str; 11] = [
    "nix-build",
    "nix-channel",
    "nix-collect-garbage",
    "nix-copy-closure",
    "nix-daemon",
    "nix-env",
    "nix-hash",
    "nix-instantiate",
    "nix-prefetch-url",
    "nix-shell",
    "nix-store",
];

fn sshd_config(spec: &HostSpec, addr: Ipv4Addr, port: u16, ssh_dir_seen_by_host: &str) -> String {
    let max_sessions = spec.max_sessions;
    let d = ssh_dir_seen_by_host;
    format!(
        "Port {port}\n\
         ListenAddress {addr}\n\
         HostKey {d}/host_key\n\
         AuthorizedKeysFile {d}/authorized_keys\n\
         PidFile {d}/sshd.pid\n\
         UsePAM no\n\
         StrictModes no\n\
         PermitRootLogin prohibit-password\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         # edict multiplexes steps over one connection, and tests run many at once\n\
         MaxSessions {max_sessions}\n\
         MaxStartups 64:30:128\n\
         Subsystem sftp internal-sftp\n\
         LogLevel VERBOSE\n"
    )
}

/// SIGTERM to the process when the test process dies, even by SIGKILL: no sshd or daemon
/// outlives a test. (The lab runs on Linux only; elsewhere it compiles, without this.)
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Starts sshd in a private mount namespace and waits until it accepts connections.
fn start_sshd(
    spec: &HostSpec,
    dir: &Path,
    addr: Ipv4Addr,
    port: u16,
    netns: Option<&str>,
    chroot_root: Option<&Path>,
) -> Result<Child, String> {
    let d = dir.display().to_string();
    let mut hide = String::new();
    if !spec.nix_on_path {
        hide.push_str("rm -f $B/nix $B/nix-*\n");
    }
    if !spec.rsync {
        hide.push_str("rm -f $B/rsync\n");
    }
    if let Some(script) = &spec.rsync_script {
        hide.push_str(&format!(
            "rm -f $B/rsync\ncat > $B/rsync <<'EDICT_LAB_EOF'\n{script}\nEDICT_LAB_EOF\nchmod 755 $B/rsync\n"
        ));
    }
    if !spec.flock {
        hide.push_str("rm -f $B/flock\n");
    }
    if !spec.git {
        hide.push_str("rm -f $B/git\n");
    }
    // A multi-user host: the login user's private home, and a nix-daemon owning the store
    // (it dies with sshd through the parent-death signal). Ready once its socket exists.
    let wait_socket = |m: &str| {
        format!(
            "i=0; while [ ! -S {m}/nix/var/nix/daemon-socket/socket ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n"
        )
    };
    let (multi_bookworm, multi_chroot) = match &spec.user {
        None => (String::new(), String::new()),
        Some(u) => (
            format!(
                "mount --bind $D/userhome /home/{u}\nchown {u}: /home/{u}\n\
                 setpriv --pdeathsig TERM nix-daemon </dev/null >$D/daemon.log 2>&1 &\n{}",
                wait_socket("")
            ),
            format!(
                "chroot $M sh -c 'id {u} >/dev/null 2>&1 || useradd -m -s /bin/bash {u}; usermod -p \"*\" {u}'\n\
                 mount --bind $D/userhome $M/home/{u}\nchroot $M chown {u}: /home/{u}\n\
                 chroot $M setpriv --pdeathsig TERM nix-daemon </dev/null >$D/daemon.log 2>&1 &\n{}",
                wait_socket("$M")
            ),
        ),
    };
    let home_mount = match spec.home_kib {
        Some(kib) => format!("mount -t tmpfs -o size={kib}k,mode=0700 tmpfs $D/home\n"),
        None => String::new(),
    };
    let (script, ssh_dir_seen_by_host) = match chroot_root {
        None => {
            // Bookworm: this machine's root with private /nix, /etc/nix and /root. Hiding nix
            // puts an overlay over /usr/bin so the machine's own /usr/bin is untouched.
            let hide = if hide.is_empty() {
                String::new()
            } else {
                for sub in ["usrbin-upper", "usrbin-work"] {
                    std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
                }
                format!(
                    "mount -t overlay overlay -o lowerdir=/usr/bin,upperdir=$D/usrbin-upper,workdir=$D/usrbin-work /usr/bin\nB=/usr/bin\n{hide}"
                )
            };
            let passwd = match &spec.login_shell {
                Some(shell) => {
                    let text = passwd_with_root_shell(Path::new("/etc/passwd"), shell)?;
                    std::fs::write(dir.join("passwd"), text).map_err(|e| e.to_string())?;
                    "mount --bind $D/passwd /etc/passwd\n"
                }
                None => "",
            };
            // A fresh Debian 12 has neither /nix nor /etc/nix (nix-bin creates neither):
            // every directory mounted on is made first.
            let script = format!(
                "set -e\nD={d}\n{home_mount}{passwd}\
                 mkdir -p /nix /etc/nix /root /run/sshd\n\
                 mount --bind $D/nix /nix\n\
                 mount --bind $D/etc-nix /etc/nix\n\
                 mount --bind $D/home /root\n\
                 {hide}{multi_bookworm}\
                 exec /usr/sbin/sshd -D -E $D/ssh/sshd.log -f $D/ssh/sshd_config\n"
            );
            (script, format!("{d}/ssh"))
        }
        Some(root) => {
            // Trixie: a chroot into an overlay of the shared cached root; /nix, /etc/nix,
            // /root and the ssh files are private binds. /dev must be rbind-mounted (devpts):
            // Nix 2.26 opens a pseudoterminal for every build.
            if let Some(shell) = &spec.login_shell {
                std::fs::create_dir_all(dir.join("upper/etc")).map_err(|e| e.to_string())?;
                let text = passwd_with_root_shell(&root.join("etc/passwd"), shell)?;
                std::fs::write(dir.join("upper/etc/passwd"), text).map_err(|e| e.to_string())?;
            }
            for sub in [
                "upper/nix",
                "upper/etc/nix",
                "upper/etc/edict-lab",
                "upper/root",
                "work",
                "merged",
            ] {
                std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
            }
            let script = format!(
                "set -e\nD={d}\nM=$D/merged\n{home_mount}\
                 mount -t overlay overlay -o lowerdir={root},upperdir=$D/upper,workdir=$D/work $M\n\
                 mount --bind $D/nix $M/nix\n\
                 mount --bind $D/etc-nix $M/etc/nix\n\
                 mount --bind $D/home $M/root\n\
                 mount --bind $D/ssh $M/etc/edict-lab\n\
                 mkdir -p $M/proc $M/dev $M/run/sshd\n\
                 mount -t proc proc $M/proc\n\
                 mount --rbind /dev $M/dev\n\
                 B=$M/usr/bin\n{hide}{multi_chroot}\
                 exec chroot $M /usr/sbin/sshd -D -E /etc/edict-lab/sshd.log -f /etc/edict-lab/sshd_config\n",
                root = root.display()
            );
            (script, "/etc/edict-lab".to_string())
        }
    };
    std::fs::write(
        dir.join("ssh/sshd_config"),
        sshd_config(spec, addr, port, &ssh_dir_seen_by_host),
    )
    .map_err(|e| e.to_string())?;

    let mut cmd = match netns {
        // `ip netns exec` enters the namespace and execs, so the pid stays sshd's.
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "unshare"]);
            c
        }
        None => Command::new("unshare"),
    };
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Own process group: a Ctrl-C meant for the test runner reaches sshd only through
        // the parent-death signal, after the runner is gone.
        .process_group(0);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| format!("spawning unshare: {e}"))?;

    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = SocketAddrV4::new(addr, port);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = stderr.read_to_string(&mut err);
            }
            let log = std::fs::read_to_string(dir.join("ssh/sshd.log")).unwrap_or_default();
            return Err(format!("sshd exited with {status}: {err}{log}"));
        }
        if TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("sshd did not listen on port {port} within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The passwd file at `path` with root's login shell set to `shell`.
fn passwd_with_root_shell(path: &Path, shell: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    Ok(text
        .lines()
        .map(|l| match l.rsplit_once(':') {
            Some((head, _)) if l.starts_with("root:") => format!("{head}:{shell}\n"),
            _ => format!("{l}\n"),
        })
        .collect())
}

/// An unprivileged user on this machine (the bookworm hosts share its /etc/passwd), whose
/// account is usable for key logins (`*`, not the locked `!`: sshd without PAM refuses those).
fn ensure_machine_user(user: &str) {
    if !Command::new("id")
        .arg(user)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        run_ok(Command::new("useradd").args(["--create-home", "--shell", "/bin/bash", user]));
    }
    run_ok(Command::new("usermod").args(["-p", "*", user]));
}

/// A network namespace for host `name`, joined to this one by a veth pair shaped to
/// `link.rate_mbit` both ways. Returns (namespace, this side's veth, the host's address).
fn make_link(name: &str, link: &Link) -> (String, String, Ipv4Addr) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n =
        (std::process::id() + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) % 250 + 1;
    let ns = format!("edict-lab-{}-{n}", std::process::id());
    let (va, vb) = (format!("elab{n}a"), format!("elab{n}b"));
    let host_addr = Ipv4Addr::new(10, 213, n as u8, 2);
    let _ = name;
    // (A veth of the same name may be left by a run that was killed: it is replaced.)
    // tbf needs a burst of at least rate/HZ; 64 KiB covers every rate used here.
    let tbf = format!(
        "root tbf rate {}mbit burst 64kb latency 200ms",
        link.rate_mbit
    );
    let script = format!(
        "set -e\n\
         ip netns add {ns}\n\
         ip link del {va} 2>/dev/null || true\n\
         ip link add {va} type veth peer name {vb}\n\
         ip link set {vb} netns {ns}\n\
         ip addr add 10.213.{n}.1/30 dev {va}\n\
         ip link set {va} up\n\
         ip netns exec {ns} ip addr add {host_addr}/30 dev {vb}\n\
         ip netns exec {ns} ip link set {vb} up\n\
         ip netns exec {ns} ip link set lo up\n\
         tc qdisc add dev {va} {tbf}\n\
         ip netns exec {ns} tc qdisc add dev {vb} {tbf}\n"
    );
    run_ok(Command::new("sh").arg("-c").arg(&script));
    (ns, va, host_addr)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding a free port");
    listener.local_addr().expect("local addr").port()
}

/// The cached root of a Debian `suite` (trixie, sid), built by `debian-root.sh` if it is
/// not there yet. Fails loudly: a lab that cannot start must never look like a passing test.
pub fn debian_root(suite: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/debian-root.sh");
    let out = Command::new(&script)
        .arg(suite)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("running tests/lab/debian-root.sh");
    assert!(
        out.status.success(),
        "the lab's Debian {suite} root could not be built: {} (run tests/lab/debian-root.sh {suite} by hand to see why)",
        describe(&out)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Every cached root the lab's flavours need, built now if missing (outside any timing).
pub fn debian_roots() {
    for f in Flavour::ALL {
        if let Some(suite) = f.suite() {
            debian_root(suite);
        }
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", describe(&out));
}

/// A child's stderr, read line by line while the test acts on what it says.
pub struct StderrLog {
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
    pub text: String,
}

impl StderrLog {
    /// Takes the stderr of `child` (spawned with `Stdio::piped()`).
    pub fn of(child: &mut Child) -> Self {
        let stderr = child.stderr.take().expect("stderr is piped");
        StderrLog {
            lines: std::io::BufRead::lines(std::io::BufReader::new(stderr)),
            text: String::new(),
        }
    }

    /// Reads up to and including the first line that contains `needle` (or to the end).
    pub fn until(&mut self, needle: &str) {
        for line in self.lines.by_ref() {
            let line = line.expect("reading stderr");
            self.text.push_str(&line);
            self.text.push('\n');
            if line.contains(needle) {
                break;
            }
        }
    }

    /// Reads the rest, to the end of the stream; returns everything read.
    pub fn rest(mut self) -> String {
        self.until("\0never\0");
        self.text
    }
}

/// Waits (up to a minute) until `path` exists: a remote command's sign that it reached a
/// point the test acts on. (Lab hosts write to paths this machine can see.)
pub fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Lab {
    /// `nix flake lock` with this machine's nix in `dir`, which must succeed: the lock a
    /// test then hands to edict.
    pub fn lock_here(&self, dir: &Path) {
        let out = self
            .command("nix")
            .args(["flake", "lock"])
            .current_dir(dir)
            .output()
            .expect("running nix");
        assert!(
            out.status.success(),
            "nix flake lock here: {}",
            describe(&out)
        );
    }
}

/// Two runs on the rich flake in `dir` take turns on `host`: its `gate` app runs first and
/// is held at a gate there; `while_held` runs meanwhile (a test's own run that waits);
/// then a `nix build .#dep` waits, says so, and succeeds once the gate opens, as does the
/// first (which bumps version.txt to 10).
pub fn runs_take_turns(lab: &Lab, host: &str, dir: &Path, while_held: impl FnOnce()) {
    let name = dir.file_name().expect("a workdir").to_string_lossy();
    let gate = format!("/root/gate-{name}");
    let first = lab
        .edict(dir)
        .args([host, "nix", "run", ".#gate", "--", &gate])
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting edict");
    wait_for(&lab.host(host).local_path(&format!("{gate}.started")));
    while_held();
    let second = lab
        .edict(dir)
        .args([host, "nix", "build", ".#dep"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting edict");
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(lab.host(host).local_path(&gate), "go").expect("opening the gate");
    let first = first.wait_with_output().expect("the first run");
    let second = second.wait_with_output().expect("the second run");
    assert!(first.status.success(), "{host}: {}", describe(&first));
    assert!(second.status.success(), "{host}: {}", describe(&second));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("waiting"),
        "{host}: {}",
        describe(&second)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("version.txt")).expect("version.txt"),
        "10\n"
    );
    assert!(dir.join("result").exists());
}

/// Asserts that `text` (an error message) mentions every one of `needles`.
pub fn assert_mentions(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "expected `{n}` in: {text}");
    }
}

/// Exit status plus both streams, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes a flake with no inputs (no nixpkgs can be fetched here) whose default package is
/// a two-path closure: `edict-top-TAG` refers to `edict-dep-TAG`. A fresh `tag` makes paths
/// that no store has yet.
pub fn write_flake(dir: &Path, tag: &str) {
    std::fs::create_dir_all(dir).expect("creating flake dir");
    std::fs::write(dir.join("flake.nix"), flake_nix(tag)).expect("writing flake.nix");
}

pub fn flake_nix(tag: &str) -> String {
    format!(
        r#"{{
  description = "edict lab flake {tag}";
  outputs = {{ self }}:
    let
      system = "x86_64-linux";
      dep = derivation {{
        name = "edict-dep-{tag}";
        inherit system;
        builder = "/bin/sh";
        args = [ "-c" "echo dep {tag} > $out" ];
      }};
      top = derivation {{
        name = "edict-top-{tag}";
        inherit system;
        builder = "/bin/sh";
        args = [ "-c" "/bin/mkdir $out; echo ${{dep}} > $out/dep; echo hello > $out/greeting" ];
      }};
    in {{
      packages.${{system}} = {{
        default = top;
        inherit dep;
      }};
    }};
}}
"#
    )
}

/// A tag no earlier run used, so built paths are new to every store.
pub fn unique_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

impl Lab {
    /// The real edict binary with the lab's client environment, run in `cwd`.
    pub fn edict(&self, cwd: &Path) -> Command {
        let mut cmd = self.command(
            assert_cmd::cargo::cargo_bin("edict")
                .to_str()
                .expect("utf-8 path"),
        );
        cmd.current_dir(cwd).stdin(Stdio::null());
        cmd
    }

    /// The mirror directories edict made on a host, as paths on this machine.
    pub fn mirrors(&self, host: &str) -> Vec<PathBuf> {
        let dir = self.host(host).local_path("/root/.cache/edict/mirrors");
        let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The one mirror of a local directory named `base`.
    pub fn mirror_of(&self, host: &str, base: &str) -> PathBuf {
        let found: Vec<PathBuf> = self
            .mirrors(host)
            .into_iter()
            .filter(|m| {
                m.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{base}-")))
            })
            .collect();
        assert_eq!(found.len(), 1, "mirrors of {base} on {host}: {found:?}");
        found.into_iter().next().expect("one")
    }

    /// Stops one host (its port then refuses connections); the others keep running.
    pub fn stop(&mut self, name: &str) {
        let host = self
            .hosts
            .iter_mut()
            .find(|h| h.spec.name == name)
            .expect("no such lab host");
        host.stop();
    }

    /// How many ssh logins a host has accepted so far (from its sshd log).
    pub fn logins(&self, host: &str) -> usize {
        let log =
            std::fs::read_to_string(self.host(host).dir.join("ssh/sshd.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("Accepted publickey"))
            .count()
    }
}

/// A flake for the pipeline tests (no inputs, no nixpkgs): packages with closures and
/// several outputs, apps that show their arguments, exit with a given code, change files in
/// the cwd or wait, a tool with a `bin/`, and a dev shell.
pub fn write_rich_flake(dir: &Path, tag: &str) {
    std::fs::create_dir_all(dir).expect("creating flake dir");
    std::fs::write(dir.join("flake.nix"), RICH_FLAKE.replace("TAG", tag))
        .expect("writing flake.nix");
}

const RICH_FLAKE: &str = r#"{
  description = "edict lab flake TAG";
  outputs = { self }:
    let
      system = "x86_64-linux";
      bin = name: text: derivation {
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" "/bin/mkdir -p $out/bin && /bin/cp ${builtins.toFile name text} $out/bin/${name} && /bin/chmod +x $out/bin/${name}" ];
      };
      dep = derivation { name = "edict-dep-TAG"; inherit system; builder = "/bin/sh"; args = [ "-c" "echo dep TAG > $out" ]; };
      top = derivation {
        name = "edict-top-TAG"; inherit system; builder = "/bin/sh";
        args = [ "-c" "/bin/mkdir $out; echo ${dep} > $out/dep; echo hello > $out/greeting; echo ${self.rev or "dirty"} > $out/rev" ];
      };
      multi = derivation {
        name = "edict-multi-TAG"; inherit system; outputs = [ "out" "dev" ]; builder = "/bin/sh";
        args = [ "-c" "echo out > $out; echo dev > $dev" ];
      };
      args = bin "args" ''
        #!/bin/sh
        for a in "$@"; do printf '<%s>\n' "$a"; done
      '';
      exit = bin "exit" ''
        #!/bin/sh
        echo "exiting with $1"
        echo "to stderr" >&2
        exit "$1"
      '';
      bump = bin "bump" ''
        #!/bin/sh
        n=$(cat version.txt 2>/dev/null || echo 0)
        echo $((n + 1)) > version.txt
        echo new > created.txt
        rm -f obsolete.txt
      '';
      # Waits for the test: writes "started" beside $1, then waits until $1 exists.
      gate = bin "gate" ''
        #!/bin/sh
        echo started > "$1.started"
        i=0
        while [ ! -e "$1" ] && [ $i -lt 600 ]; do /bin/sleep 0.05; i=$((i + 1)); done
        n=$(cat version.txt 2>/dev/null || echo 0)
        echo $((n + 10)) > version.txt
      '';
      tty = bin "tty" ''
        #!/bin/sh
        if [ -t 0 ] && [ -t 1 ]; then echo tty; else echo notty; fi
      '';
      commit = bin "commit" ''
        #!/bin/sh
        echo committed there > tracked.txt
        git -c user.name=remote -c user.email=r@example.org commit -qam "remote commit"
      '';
      sleeper = bin "sleeper" ''
        #!/bin/sh
        echo $$ > "$1"
        exec /bin/sleep 300
      '';
      # Runs its first argument as a shell script in the cwd: what a test's command does there.
      shell = bin "shell" ''
        #!/bin/sh
        eval "$1"
      '';
      app = drv: name: { type = "app"; program = "${drv}/bin/${name}"; };
    in {
      packages.${system} = { default = top; inherit dep multi; tool = args; };
      apps.${system} = {
        default = app args "args";
        args = app args "args";
        exit = app exit "exit";
        bump = app bump "bump";
        gate = app gate "gate";
        sleeper = app sleeper "sleeper";
        tty = app tty "tty";
        commit = app commit "commit";
        shell = app shell "shell";
      };
      devShells.${system}.default = derivation {
        name = "edict-shell"; inherit system; builder = "/bin/bash"; outputs = [ "out" ];
        args = [ "-c" "echo > $out" ];
        EDICT_DEV = "dev-TAG";
      };
    };
}
"#;

/// `git init` + commit of everything in `dir` (with a lab identity).
pub fn git_init(dir: &Path) {
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "init"]);
}

/// Runs git in `dir` (committing as "lab") and returns its stdout; git failing fails the test.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=lab", "-c", "user.email=lab@example.org"])
        .args(args)
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three directories in `base`: `a` (a git repo) and `b` (a plain directory), each a flake
/// whose `v` is `a-TAG-v1` / `b-TAG-v1`, and `top`, a git flake with both as inputs by
/// absolute path: its `.#v` and the content of its default package are "a-TAG-v1
/// b-TAG-v1" once locked. Returns `top`; lock it with the local nix, then
/// [`move_pinned_inputs`].
pub fn pinned_inputs_flake(base: &Path, tag: &str) -> PathBuf {
    let (a, b, top) = (base.join("a"), base.join("b"), base.join("top"));
    for (dir, name) in [(&a, "a"), (&b, "b")] {
        std::fs::create_dir_all(dir).expect("creating an input");
        std::fs::write(
            dir.join("flake.nix"),
            format!("{{ outputs = {{ self }}: {{ v = \"{name}-{tag}-v1\"; }}; }}\n"),
        )
        .expect("writing an input");
    }
    git_init(&a);
    std::fs::create_dir_all(&top).expect("creating the flake");
    std::fs::write(
        top.join("flake.nix"),
        format!(
            "{{\n  inputs.a.url = \"git+file://{}\";\n  inputs.b.url = \"path:{}\";\n  outputs = {{ self, a, b }}: {{\n    v = \"${{a.v}} ${{b.v}}\";\n    packages.x86_64-linux.default = derivation {{ name = \"pinned-{tag}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo ${{a.v}} ${{b.v}} > $out\" ]; }};\n  }};\n}}\n",
            a.display(),
            b.display()
        ),
    )
    .expect("writing flake.nix");
    git_init(&top);
    top
}

/// Moves the inputs of [`pinned_inputs_flake`] past what its lock pins: a new commit and
/// an uncommitted edit in `a`, an edit in `b`.
pub fn move_pinned_inputs(top: &Path) {
    let base = top.parent().expect("the flake's parent");
    let bump = |file: &Path, to: &str| {
        let text = std::fs::read_to_string(file).expect("reading an input");
        std::fs::write(file, text.replace("-v1\"", &format!("-{to}\""))).expect("bumping");
    };
    bump(&base.join("a/flake.nix"), "v2");
    git(&base.join("a"), &["commit", "-q", "-am", "v2"]);
    std::fs::write(
        base.join("a/flake.nix"),
        std::fs::read_to_string(base.join("a/flake.nix"))
            .expect("reading")
            .replace("-v2\"", "-v3\""),
    )
    .expect("editing");
    bump(&base.join("b/flake.nix"), "v2");
}

/// Whether a store path is valid in this machine's store.
pub fn locally_valid(path: &str) -> bool {
    Command::new("nix-store")
        .args(["--check-validity", path])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Lab {
    /// A fresh directory for a test's local files, inside the lab (removed with it).
    pub fn workdir(&self, name: &str) -> PathBuf {
        let dir = self.dir().join("work").join(name);
        std::fs::create_dir_all(&dir).expect("creating workdir");
        dir
    }
}

/// A nix-daemon on this machine's own store, for tests of what an unprivileged local user
/// may import. Root keeps using the store directly (its state dir is writable), so other
/// tests are unaffected; a user without write access goes through this daemon.
pub struct LocalDaemon {
    child: Child,
    _lock: std::fs::File,
}

/// The right to this machine's daemon socket: one daemon (or none) at a time.
fn daemon_lock() -> std::fs::File {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/edict-lab-daemon.lock")
        .expect("opening the daemon lock");
    // SAFETY: flock on an fd we own.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(rc, 0, "locking the daemon lock");
    lock
}

/// While held, no lab daemon runs on this machine's store: a test of a daemon that is down.
pub struct NoDaemon {
    _lock: std::fs::File,
}

impl NoDaemon {
    pub fn hold() -> Self {
        NoDaemon {
            _lock: daemon_lock(),
        }
    }
}

impl LocalDaemon {
    pub fn start(trusted_users: &str) -> Self {
        Self::start_with(trusted_users, "")
    }

    /// The same with more nix.conf lines for the daemon (`extra-trusted-public-keys = …`).
    pub fn start_with(trusted_users: &str, extra_conf: &str) -> Self {
        // One daemon at a time on this machine's socket.
        let lock = daemon_lock();
        let config = format!("{CLIENT_NIX_CONFIG}trusted-users = {trusted_users}\n{extra_conf}\n");
        let mut cmd = Command::new("nix-daemon");
        cmd.env("NIX_CONFIG", config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .expect("starting nix-daemon (apt-get install nix-bin)");
        let socket = Path::new("/nix/var/nix/daemon-socket/socket");
        let deadline = Instant::now() + Duration::from_secs(10);
        // Ready when a client can talk to it (the socket file may be a stale one at first).
        while !(socket.exists()
            && Command::new("nix-store")
                .args([
                    "--store",
                    "daemon",
                    "-q",
                    "--hash",
                    "/nix/store/00000000000000000000000000000000-x",
                ])
                .stderr(Stdio::piped())
                .output()
                .is_ok_and(|o| !String::from_utf8_lossy(&o.stderr).contains("cannot connect")))
        {
            assert!(Instant::now() < deadline, "nix-daemon did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        LocalDaemon { child, _lock: lock }
    }
}

impl Drop for LocalDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An unprivileged local user (created once) with their own copy of the lab's client ssh
/// files, so they reach the lab hosts exactly as root does.
pub struct LocalUser {
    pub name: String,
    pub home: PathBuf,
    pub ssh_opts: String,
}

impl Lab {
    pub fn local_user(&self, name: &str) -> LocalUser {
        if !Command::new("id")
            .arg(name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            run_ok(Command::new("useradd").args(["--create-home", "--shell", "/bin/sh", name]));
        }
        // Debian lets only the nix-users group reach the daemon socket, as for a real user.
        if Command::new("getent")
            .args(["group", "nix-users"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            run_ok(Command::new("usermod").args(["-aG", "nix-users", name]));
        }
        let home = PathBuf::from(format!("/home/{name}"));
        let dir = home.join(format!(".edict-lab-{}", unique_tag()));
        std::fs::create_dir_all(&dir).expect("creating the user's lab dir");
        std::fs::copy(self.client_key(), dir.join("key")).expect("copying the client key");
        std::fs::copy(self.known_hosts(), dir.join("known_hosts")).expect("copying known_hosts");
        let cfg = std::fs::read_to_string(self.ssh_config())
            .expect("reading ssh_config")
            .replace(
                &self.client_key().display().to_string(),
                &dir.join("key").display().to_string(),
            )
            .replace(
                &self.known_hosts().display().to_string(),
                &dir.join("known_hosts").display().to_string(),
            );
        std::fs::write(dir.join("ssh_config"), cfg).expect("writing the user's ssh_config");
        run_ok(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{name}:"))
                .arg(&dir),
        );
        LocalUser {
            name: name.to_string(),
            home,
            ssh_opts: format!("-F {}", dir.join("ssh_config").display()),
        }
    }
}

impl LocalUser {
    /// A fresh directory the user owns.
    pub fn workdir(&self, name: &str) -> PathBuf {
        let dir = self.home.join(format!("work-{name}-{}", unique_tag()));
        std::fs::create_dir_all(&dir).expect("creating the user's workdir");
        run_ok(
            Command::new("chown")
                .arg(format!("{}:", self.name))
                .arg(&dir),
        );
        dir
    }

    /// The real edict binary, run as this user in `cwd` (files there must be theirs).
    pub fn edict(&self, cwd: &Path) -> Command {
        self.edict_with(cwd, "")
    }

    /// [`LocalUser::edict`] with more nix.conf lines for the user's nix (as the user's
    /// nix reads /etc/nix/nix.conf too: the same substituters as the daemon's).
    pub fn edict_with(&self, cwd: &Path, extra_conf: &str) -> Command {
        run_ok(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{}:", self.name))
                .arg(cwd),
        );
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", &self.name, "--", "env"])
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("USER={}", self.name))
            .arg(format!("NIX_SSHOPTS={}", self.ssh_opts))
            .arg(format!("NIX_CONFIG={CLIENT_NIX_CONFIG}{extra_conf}"))
            .arg(assert_cmd::cargo::cargo_bin("edict"))
            .current_dir(cwd)
            .stdin(Stdio::null());
        cmd
    }
}

impl Lab {
    /// Makes `head` the head of a build farm: its nix builds nothing itself (`max-jobs = 0`)
    /// and sends every derivation to `builder` through Nix's own remote builds, as root
    /// there reaches it with its own ssh config (alias `builder`), key and known_hosts.
    /// Returns the nix.conf lines to start `head` with; call after `builder` is up.
    pub fn farm_head_conf(&self, builder: &str) -> String {
        let port = self.host(builder).port;
        format!(
            "builders = ssh://root@farm-builder x86_64-linux - 4 1\nmax-jobs = 0\n# the builder is at 127.0.0.1:{port}\n"
        )
    }

    /// After `head` started: give its root the ssh files to reach `builder`.
    pub fn wire_farm(&self, head: &str, builder: &str) {
        let ssh = self.host(head).local_path("/root/.ssh");
        std::fs::create_dir_all(&ssh).expect("creating ~/.ssh on the head");
        std::fs::copy(self.client_key(), ssh.join("id_farm")).expect("copying the key");
        let port = self.host(builder).port;
        let key = std::fs::read_to_string(self.host(builder).dir.join("ssh/host_key.pub"))
            .expect("builder key");
        let key: Vec<&str> = key.split_whitespace().take(2).collect();
        std::fs::write(
            ssh.join("known_hosts"),
            format!("[127.0.0.1]:{port} {} {}\n", key[0], key[1]),
        )
        .expect("known_hosts");
        std::fs::write(
            ssh.join("config"),
            format!("Host farm-builder\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile /root/.ssh/id_farm\n  IdentitiesOnly yes\n"),
        )
        .expect("ssh config");
    }
}

/// The machine line for a lab host in the legacy format, optionally pinning its host key.
pub fn host_public_key(host: &Host) -> String {
    let key = std::fs::read_to_string(host.dir.join("ssh/host_key.pub")).expect("host key");
    key.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// A local side of another Nix: edict runs inside a cached Debian root (trixie: Nix 2.26,
/// sid: Nix 2.34) as the client, with that root's nix, ssh, rsync and git and its own
/// `/nix` store; the lab's directory (ssh config, keys, workdirs) and edict's binary are
/// bound in at the same paths, so a test finds the results where it wrote its flake. The
/// root is entered with pivot_root, as nix re-enters its mount namespace before it runs ssh.
pub struct Client {
    pub flavour: Flavour,
    root: PathBuf,
    dir: PathBuf,
}

impl Lab {
    /// The client side of `flavour` (not bookworm: that is this machine itself).
    pub fn client(&self, flavour: Flavour) -> Client {
        let suite = flavour
            .suite()
            .expect("a client of another Debian than this machine's");
        let root = debian_root(suite);
        let dir = self.dir().join("clients").join(suite);
        for sub in ["upper", "work", "merged", "nix"] {
            std::fs::create_dir_all(dir.join(sub)).expect("creating client dirs");
        }
        Client { flavour, root, dir }
    }
}

impl Client {
    /// `program args…` as root inside the client root, in `cwd` (a path under the lab's
    /// directory), with the lab's client environment.
    pub fn command(&self, lab: &Lab, cwd: &Path, program: &str) -> Command {
        const THEN: &str = r#"exec chroot . /bin/sh -c 'umount -l /.oldroot; rmdir /.oldroot; cd "$0" && exec "$@"' "$cwd" "$@"
"#;
        self.command_with(lab, cwd, program, THEN)
    }

    /// Like [`Client::command`], but run by `user`, an unprivileged user of the client root
    /// (made on first use, in `nix-users`), through a nix-daemon that owns the client's store
    /// and trusts only root: a local multi-user install. The user gets their own copy of the
    /// lab's client ssh files.
    pub fn command_as(&self, lab: &Lab, user: &str, cwd: &Path, program: &str) -> Command {
        const THEN_AS: &str = r#"exec chroot . /bin/sh -c '
umount -l /.oldroot; rmdir /.oldroot
set -e
u=$AS_USER lab=$1 cwd=$2; shift 2
id "$u" >/dev/null 2>&1 || useradd -m -s /bin/sh "$u"
if getent group nix-users >/dev/null; then usermod -aG nix-users "$u"; fi
mkdir -p /nix/var/nix/daemon-socket
# The daemon of the last command may still be going, its socket still there: ready
# means a client gets an answer from this one. (No single quotes in this script.)
rm -f /nix/var/nix/daemon-socket/socket
setpriv --pdeathsig TERM nix-daemon </dev/null >/dev/null 2>&1 &
i=0
while [ $i -lt 400 ]; do
  said=$(nix-store --store daemon -q --hash /nix/store/00000000000000000000000000000000-x 2>&1) || true
  case $said in *"cannot connect"*|*"onnection refused"*|*"No such file"*) sleep 0.05; i=$((i+1));; *) break;; esac
done
d=/home/$u/.lab; mkdir -p "$d"
cp "$lab/client_key" "$lab/known_hosts" "$d/"
sed -e "s|$lab/client_key|$d/client_key|" -e "s|$lab/known_hosts|$d/known_hosts|" "$lab/ssh_config" > "$d/ssh_config"
chown -R "$u:" "/home/$u" "$cwd"
cd "$cwd"
exec runuser -u "$u" -- env HOME="/home/$u" USER="$u" NIX_SSHOPTS="-F $d/ssh_config" "$@"
' sh "$lab" "$cwd" "$@"
"#;
        let mut cmd = self.command_with(lab, cwd, program, THEN_AS);
        cmd.env("AS_USER", user);
        cmd
    }

    /// Enters the client root (overlay, private /nix, the lab and edict's directory bound
    /// in, pivot_root), then runs `then`, a script that chroots and runs the command.
    fn command_with(&self, lab: &Lab, cwd: &Path, program: &str, then: &str) -> Command {
        const ENTER: &str = r#"set -e
root=$1 upper=$2 work=$3 m=$4 store=$5 lab=$6 bin=$7 cwd=$8; shift 8
mount -t overlay overlay -o "lowerdir=$root,upperdir=$upper,workdir=$work" "$m"
mkdir -p "$m/nix" "$m$lab" "$m$bin" "$m/proc" "$m/dev" "$m/run/sshd"
mount --bind "$store" "$m/nix"
mount --bind "$lab" "$m$lab"
mount --bind "$bin" "$m$bin"
mount -t proc proc "$m/proc"
mount --rbind /dev "$m/dev"
cd "$m"
mkdir -p .oldroot
pivot_root . .oldroot
"#;
        let enter = format!("{ENTER}{then}");
        let bin = assert_cmd::cargo::cargo_bin("edict");
        let bin_dir = bin.parent().expect("edict's directory").to_path_buf();
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &enter,
            "sh",
        ])
        .arg(&self.root)
        .arg(self.dir.join("upper"))
        .arg(self.dir.join("work"))
        .arg(self.dir.join("merged"))
        .arg(self.dir.join("nix"))
        .arg(lab.dir())
        .arg(&bin_dir)
        .arg(cwd)
        .arg(program)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .env("USER", "root")
        .env("NIX_SSHOPTS", lab.ssh_opts())
        .env("NIX_CONFIG", CLIENT_NIX_CONFIG)
        .stdin(Stdio::null());
        cmd
    }

    /// The real edict binary, run inside the client root in `cwd`.
    pub fn edict(&self, lab: &Lab, cwd: &Path) -> Command {
        let bin = assert_cmd::cargo::cargo_bin("edict");
        self.command(lab, cwd, &bin.display().to_string())
    }

    /// Whether a store path is valid in the client's own store.
    pub fn valid(&self, lab: &Lab, path: &str) -> bool {
        self.command(lab, lab.dir(), "nix-store")
            .args(["--check-validity", path])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Where a path of the client's store lives on this machine.
    pub fn store_path(&self, path: &Path) -> PathBuf {
        let rest = path.strip_prefix("/nix").expect("a /nix path");
        self.dir.join("nix").join(rest)
    }
}
