//! edict's own command line: options, HOST, then the nix command (or the `.#app` shorthand).

use crate::mapping::SyncMode;
use crate::nixargs::Program;
use crate::problem::Problem;
use anyhow::Result;
use clap::Parser;

/// The HOST that asks edict to choose one from the pool.
pub const AUTO: &str = "auto";

pub const EXAMPLES: &str = "\
Examples:
  edict builder nix build .#default          build here-and-there: result link appears here
  edict me@box nix run .#app -- --flag 'a b' run an app there, with arguments
  edict builder .#app --flag                 shorthand for `nix run .#app -- --flag`
  edict builder nix flake update             update flake.lock there; it comes back here
  edict builder nix develop -c make          run a command in the dev shell there
  edict ssh://me@box:2222 nix build ../lib#x another port, a flake elsewhere (stateless)
  edict --dry-run builder nix build .#x      show the plan, touch nothing
  edict nix build .#x                        no HOST: the best machine of the builder pool
  edict big,small nix flake check            on several hosts at once
  edict machines                             the pool, and which machine auto would choose
  edict doctor builder                       why builder won't work, and how to fix it
  edict gc builder                           remove edict's mirrors on builder
  edict forget builder                       close the connection runs keep open to builder
  edict man > edict.1                        the manual page
  eval \"$(edict completions bash)\"           TAB completion (bash, zsh, fish), nix's included

Environment:
  NIX_SSHOPTS            extra ssh options for every step (split on spaces, as nix does)
  EDICT_SSH_OPTS         used instead of NIX_SSHOPTS when set
  EDICT_KEEP_CONNECTION  the default of --keep-connection (off: never kept)";

/// Run any nix command on a remote host as if it ran here.
///
/// edict sends your local flakes to HOST (only what nix would see, only what changed), runs
/// the nix command there over your own ssh, copies the results back into your store as real
/// GC roots, and brings back what the command changed in your working directory.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    long_about,
    after_help = EXAMPLES,
    override_usage = USAGE,
    subcommand_value_name = "HOST",
    subcommand_help_heading = "Commands (in HOST's place; a host of that name is ssh://NAME)",
    disable_help_subcommand = true,
    subcommand_required = true
)]
pub struct Cli {
    /// Bring back what the command changed in every local flake, even outside the cwd; with
    /// several hosts, name the one whose changes come back (--sync=HOST).
    #[arg(long, value_name = "HOST", num_args = 0..=1, require_equals = true, conflicts_with = "no_sync")]
    pub sync: Option<Option<String>>,
    /// Never bring back changes (by default they come back when the cwd is inside a flake).
    #[arg(long)]
    pub no_sync: bool,
    /// Don't copy results back or create result links.
    #[arg(long)]
    pub no_link: bool,
    /// When the paths of the results that this machine's binary caches have come from them
    /// rather than over the ssh link: `auto` when a command there and back takes 30 ms or
    /// more (over a LAN, HOST is as near as a cache), `always`, or `never` (needs this
    /// machine's nix-daemon, as every multi-user install has).
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = crate::transfer::When::Auto, conflicts_with = "no_substitute")]
    pub substitute: crate::transfer::When,
    /// `--substitute never`.
    #[arg(long)]
    pub no_substitute: bool,
    /// When what crosses the link is compressed: `auto` when a command there and back takes
    /// 30 ms or more (rsync with zstd or lz4 when both sides have rsync 3.2; a copy back of
    /// 16 MiB or more over a compressed ssh connection of its own), `always`, or `never`.
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = crate::transfer::When::Auto)]
    pub compress: crate::transfer::When,
    /// How long the ssh connection stays open after the run, for the next run to the same
    /// host to skip the login (`30s`, `10m`, `1h`; `0` or `off`: closed with the run);
    /// `edict forget` closes kept connections.
    #[arg(long, value_name = "DURATION", env = "EDICT_KEEP_CONNECTION", default_value_t = crate::keep::For(crate::keep::DEFAULT))]
    pub keep_connection: crate::keep::For,
    /// The largest file that sync-back brings back (bytes, or with K, M, G: powers of
    /// 1024); a larger one stays on HOST and is reported.
    #[arg(long, value_name = "SIZE", default_value = "100M")]
    pub max_sync_size: Size,
    /// Print each command edict runs (-v), and more detail (-vv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Print only errors (the nix command's own output is untouched).
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print what would be synced where, the remote command and what would come back.
    #[arg(long)]
    pub dry_run: bool,
    /// The builder pool, in nix's `builders` syntax (machines, `;`, `@FILE`, Lix TOML);
    /// default: the local nix's `builders` setting, then /etc/nix/machines.
    #[arg(long, value_name = "SPEC")]
    pub builders: Option<String>,
    /// Features the job needs from a pool machine (comma-separated), as
    /// `requiredSystemFeatures` would: `--required-features kvm,big-parallel`.
    #[arg(long, value_name = "LIST")]
    pub required_features: Option<String>,
    /// HOST and the command, or one of edict's own commands.
    #[command(subcommand)]
    pub sub: Sub,
    /// The remote host as written (see [`Sub::Run`]); the command's name for edict's own.
    #[arg(skip)]
    pub host: String,
    /// The words after HOST.
    #[arg(skip)]
    pub command: Vec<String>,
}

const USAGE: &str = "edict [OPTIONS] HOST nix SUBCOMMAND [ARGS...]
       edict [OPTIONS] HOST INSTALLABLE [ARGS...]
       edict [OPTIONS] HOST nix-build|nix-shell [ARGS...]
       edict [OPTIONS] machines|doctor|gc|forget|man|completions [ARGS...]";

/// What comes in HOST's place: edict's own commands, or a host and the command to run there.
#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    Machines(MachinesArgs),
    Doctor(DoctorArgs),
    Gc(GcArgs),
    Forget(ForgetArgs),
    /// Print the manual page (roff): `edict man > edict.1`
    Man,
    /// Print the completion script for a shell: `eval "$(edict completions bash)"`
    ///
    /// One line in your shell's startup file: `eval "$(edict completions bash)"` in
    /// ~/.bashrc, `source <(edict completions zsh)` after compinit in ~/.zshrc, `edict
    /// completions fish | source` in ~/.config/fish/config.fish. It completes hosts (your
    /// ssh config's and the pool's), edict's options, and after `edict HOST nix` whatever
    /// nix would.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// HOST (host, user@host, an ssh alias, ssh://user@host:port, a pool machine, `auto`,
    /// `all`, `h1,h2`; left out: `auto`), then `nix SUBCOMMAND ARGS…` or
    /// `INSTALLABLE ARGS…`.
    #[command(external_subcommand)]
    Run(Vec<String>),
}

/// A shell `edict completions` writes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Cli {
    /// Parses edict's command line (the program's name first).
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut cli = Cli::try_parse_from(args)?;
        // `edict help` and `edict help doctor`, as git and clap's own tools have them (a
        // host named help is ssh://help): the help, not a run on a host `help`.
        if let Sub::Run(words) = &cli.sub {
            if words.first().map(String::as_str) == Some("help") && words.len() <= 2 {
                let mut again = vec!["edict".to_string()];
                let command = <Cli as clap::CommandFactory>::command();
                if let Some(sub) = words
                    .get(1)
                    .filter(|w| command.find_subcommand(w).is_some())
                {
                    again.push(sub.clone());
                }
                again.push("--help".to_string());
                // --help always ends the parse with the help (an Err that prints it).
                Cli::try_parse_from(again)?;
            }
        }
        if let Sub::Run(words) = &cli.sub {
            cli.host = words.first().cloned().unwrap_or_default();
            cli.command = words.iter().skip(1).cloned().collect();
        }
        Ok(cli)
    }
}

/// A size in bytes, written `1000`, `512K`, `100M` or `2G` (powers of 1024, as rsync reads them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl std::str::FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (digits, shift) = match s.strip_suffix(['K', 'k']) {
            Some(d) => (d, 10),
            None => match s.strip_suffix(['M', 'm']) {
                Some(d) => (d, 20),
                None => match s.strip_suffix(['G', 'g']) {
                    Some(d) => (d, 30),
                    None => (s, 0),
                },
            },
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .map(Size)
            .ok_or_else(|| format!("`{s}` is not a size: write bytes, or a number with K, M or G"))
    }
}

/// `edict machines`: the pool and the choice `auto` would make.
#[derive(Parser, Debug)]
#[command(
    about = "Show the builder pool, which machine `auto` would choose for these needs, and why not the others"
)]
pub struct MachinesArgs {
    /// The system the job is for (default: this machine's).
    #[arg(long)]
    pub system: Option<String>,
    /// Features the job needs (comma-separated).
    #[arg(long, value_name = "LIST")]
    pub required_features: Option<String>,
    /// Print the same as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `edict doctor [HOST…]`: why a host won't work, and how to fix it.
#[derive(Parser, Debug)]
#[command(
    about = "Check remote hosts (default: every machine of the pool) and say how to fix each problem"
)]
pub struct DoctorArgs {
    /// The hosts to check (ssh destinations or pool machine names); none: the whole pool.
    pub hosts: Vec<String>,
    /// Show every check's finding (-v) and each command's output (-vv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Print the same as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `edict gc [HOST…] [--older-than DAYS]`: remove edict's mirrors on hosts.
#[derive(Parser, Debug)]
#[command(
    about = "Remove edict's mirrors on hosts (default: every machine of the pool); runs remove mirrors unused for 30 days by themselves"
)]
pub struct GcArgs {
    /// The hosts (ssh destinations or pool machine names); none: the whole pool.
    pub hosts: Vec<String>,
    /// Only mirrors unused for more than this many days (default: every mirror not in use).
    #[arg(long, value_name = "DAYS")]
    pub older_than: Option<u32>,
}

/// `edict forget [HOST…]`: close kept connections.
#[derive(Parser, Debug)]
#[command(
    about = "Close the ssh connections that runs kept open (see --keep-connection) to these hosts, or all of them"
)]
pub struct ForgetArgs {
    /// The hosts (ssh destinations or pool machine names); none: every kept connection.
    pub hosts: Vec<String>,
}

/// nix subcommands, to catch `edict HOST build …` (a forgotten `nix`).
const NIX_COMMANDS: &[&str] = &[
    "build",
    "run",
    "develop",
    "shell",
    "flake",
    "eval",
    "profile",
    "store",
    "copy",
    "log",
    "search",
    "path-info",
    "repl",
    "fmt",
    "bundle",
    "print-dev-env",
    "why-depends",
];

/// The other legacy commands: each acts on a store, a profile or a channel, which on HOST
/// would be HOST's, not this machine's. (what it does there, what to run instead)
const LEGACY_REFUSED: &[(&str, &str, &str)] = &[
    (
        "nix-env",
        "would change HOST's profile, not yours here",
        "to build there and get the result here: `edict {host} nix-build …` or `edict {host} nix build …`; to change HOST's own profile: `ssh {host} nix-env …`",
    ),
    (
        "nix-instantiate",
        "would write derivations into HOST's store and print paths this machine does not have",
        "to evaluate there with your files sent: `edict {host} nix eval -f FILE ATTR` (or `--expr`); to build: `edict {host} nix-build …`",
    ),
    (
        "nix-store",
        "would act on HOST's store, not this machine's",
        "run it where the store is: `ssh {host} nix-store …`, or here; to build there and get the result here: `edict {host} nix-build …`",
    ),
    (
        "nix-collect-garbage",
        "would collect HOST's store",
        "run it on HOST (`ssh {host} nix-collect-garbage`); `edict gc {host}` removes edict's own copies there",
    ),
    (
        "nix-channel",
        "would change HOST's channels",
        "run it on HOST: `ssh {host} nix-channel …`",
    ),
    (
        "nix-copy-closure",
        "copies between stores itself",
        "run it here: `nix-copy-closure --from {host} PATH`",
    ),
    ("nix-hash", "hashes files, which are here", "run it here"),
    (
        "nix-prefetch-url",
        "would fetch into HOST's store",
        "run it here, or on HOST with ssh",
    ),
    (
        "nix-daemon",
        "is HOST's service",
        "manage it on HOST (`ssh {host} sudo systemctl restart nix-daemon`)",
    ),
];

/// Whether `word`, in HOST's place, means HOST was left out: it is the program (`nix`, …)
/// or the shorthand's installable (`.#app`), and the pool chooses the host.
pub fn host_left_out(word: &str) -> bool {
    matches!(word, "nix" | "nix-build" | "nix-shell")
        || refused_legacy(word)
        || looks_installable(word)
}

/// `.#app`, `./sub#x`, `/abs/flake`, `nixpkgs#hello`: an installable, not a host.
pub fn looks_installable(word: &str) -> bool {
    word.starts_with('.') || word.starts_with('/') || word.contains('#')
}

/// Whether edict refuses to run `program` on a host (`nix-env`, `nix-store`, …).
pub fn refused_legacy(program: &str) -> bool {
    LEGACY_REFUSED.iter().any(|(n, _, _)| *n == program)
}

/// Where the command runs, from HOST as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hosts {
    One(String),
    /// The best machine of the pool.
    Auto,
    /// `all` or `h1,h2,…`.
    Many(String),
}

impl Cli {
    /// `--substitute`, or `never` for `--no-substitute`.
    pub fn substitute(&self) -> crate::transfer::When {
        if self.no_substitute {
            crate::transfer::When::Never
        } else {
            self.substitute
        }
    }

    fn host_left_out(&self) -> bool {
        host_left_out(&self.host)
    }

    /// HOST as messages name it: `auto` when it was left out (not `nix`).
    pub fn label(&self) -> &str {
        if self.host_left_out() {
            AUTO
        } else {
            &self.host
        }
    }

    pub fn sync_mode(&self) -> SyncMode {
        match (&self.sync, self.no_sync) {
            (Some(_), _) => SyncMode::Force,
            (_, true) => SyncMode::Off,
            _ => SyncMode::Auto,
        }
    }

    /// Where to run, the program, and the words to give it (after its name). HOST may be
    /// left out: `edict nix build …`, `edict nix-build` and `edict .#app` choose from the pool.
    pub fn hosts_and_words(&self) -> Result<(Hosts, Program, Vec<String>)> {
        let host = self.host.as_str();
        if self.host_left_out() {
            let mut command = vec![host.to_string()];
            command.extend(self.command.iter().cloned());
            let (program, words) = self.words(&command)?;
            return Ok((Hosts::Auto, program, words));
        }
        let hosts = match host {
            AUTO => Hosts::Auto,
            "all" => Hosts::Many(host.to_string()),
            h if h.contains(',') => Hosts::Many(h.to_string()),
            h => Hosts::One(h.to_string()),
        };
        let (program, words) = self.words(&self.command)?;
        Ok((hosts, program, words))
    }

    /// The words to give nix (after `nix`).
    #[cfg(test)]
    pub fn nix_words(&self) -> Result<Vec<String>> {
        self.words(&self.command).map(|(_, w)| w)
    }

    /// The command line cannot be read as one edict runs.
    fn unreadable(&self, what: impl Into<String>, fix: impl Into<String>) -> anyhow::Error {
        Problem::new(self.label(), "reading the command", what, fix).into()
    }

    fn words(&self, command: &[String]) -> Result<(Program, Vec<String>)> {
        let (first, rest) = match command.split_first() {
            Some(x) => x,
            None => {
                return Err(self.unreadable(
                    "no command given",
                    format!("`edict {} nix build .#default`", self.label()),
                ));
            }
        };
        if first == "nix" {
            if rest.is_empty() {
                return Err(self.unreadable(
                    "`nix` needs a subcommand",
                    format!("`edict {} nix build .#default`", self.label()),
                ));
            }
            return Ok((Program::Nix, rest.to_vec()));
        }
        match first.as_str() {
            "nix-build" => return Ok((Program::NixBuild, rest.to_vec())),
            "nix-shell" => return Ok((Program::NixShell, rest.to_vec())),
            _ => {}
        }
        if let Some((name, what, fix)) = LEGACY_REFUSED.iter().find(|(n, _, _)| n == first) {
            let host = if self.host == *name {
                "HOST"
            } else {
                &self.host
            };
            return Err(Problem::new(
                host,
                "reading the command",
                format!("edict runs nix, nix-build and nix-shell on a remote host; `{name}` there {what}"),
                fix.replace("{host}", host),
            )
            .into());
        }
        if NIX_COMMANDS.contains(&first.as_str()) {
            return Err(self.unreadable(
                format!("`{first}` looks like a nix subcommand"),
                format!("`edict {} nix {}`", self.host, self.command.join(" ")),
            ));
        }
        if first.starts_with('-') {
            return Err(self.unreadable(
                format!("`{first}` comes after HOST, so it is not an edict option"),
                format!(
                    "put edict's options before HOST, or write `edict {} nix …`",
                    self.host
                ),
            ));
        }
        // The shorthand: an installable and its program's arguments.
        let mut words = vec!["run".to_string(), first.clone()];
        if !rest.is_empty() {
            words.push("--".into());
            words.extend(rest.iter().cloned());
        }
        Ok((Program::Nix, words))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::from_args(std::iter::once("edict").chain(args.iter().copied()))
    }

    /// edict's own commands are real subcommands with their own help and options; anything
    /// else in HOST's place is a host, and a host of such a name is reached as ssh://NAME.
    #[test]
    fn own_commands_are_subcommands_and_everything_else_a_host() {
        let e = parse(&["doctor", "--help"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        let help = e.to_string();
        assert!(
            help.contains("Usage: edict doctor") && help.contains("--json"),
            "{help}"
        );
        assert!(
            !help.contains("--keep-connection"),
            "the top-level help: {help}"
        );
        let top = parse(&["--help"]).unwrap_err().to_string();
        // `edict help [COMMAND]` is the help, not a host.
        assert_eq!(parse(&["help"]).unwrap_err().to_string(), top);
        let doctor = parse(&["help", "doctor"]).unwrap_err().to_string();
        assert!(doctor.contains("Usage: edict doctor"), "{doctor}");
        assert_eq!(
            parse(&["ssh://help", "nix", "build"]).unwrap().host,
            "ssh://help"
        );
        for name in ["machines", "doctor", "gc", "forget", "man", "completions"] {
            assert!(
                top.contains(&format!("\n  {name} ")),
                "--help lacks {name}:\n{top}"
            );
        }
        match parse(&["-v", "doctor", "-v", "--json", "a", "b"])
            .unwrap()
            .sub
        {
            Sub::Doctor(d) => {
                assert_eq!(d.hosts, ["a", "b"]);
                assert!(d.json && d.verbose == 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(parse(&["gc", "--older-than", "7"]).unwrap().sub, Sub::Gc(g) if g.older_than == Some(7))
        );
        assert!(parse(&["gc", "--older-than", "soon"]).is_err());
        assert!(matches!(parse(&["man"]).unwrap().sub, Sub::Man));
        let cli = parse(&["ssh://doctor", "nix", "build"]).unwrap();
        assert_eq!(
            (cli.host.as_str(), cli.command.as_slice()),
            (
                "ssh://doctor",
                &["nix".to_string(), "build".to_string()][..]
            )
        );
        // Words after HOST are never edict's, even when they look like its options.
        let cli = parse(&["--no-link", "h", "nix", "build", "--help", "-v"]).unwrap();
        assert!(cli.no_link && cli.verbose == 0);
        assert_eq!(cli.command, ["nix", "build", "--help", "-v"]);
    }

    #[test]
    fn sizes_read_as_rsync_reads_them() {
        let size = |s: &str| s.parse::<Size>().map(|s| s.0);
        assert_eq!(size("1000"), Ok(1000));
        assert_eq!(size("512K"), Ok(512 << 10));
        assert_eq!(size("100M"), Ok(100 << 20));
        assert_eq!(size("2g"), Ok(2 << 30));
        for bad in ["", "M", "1.5M", "-1", "10T", "99999999999G"] {
            assert!(size(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse(&["h", "nix", "build"]).unwrap().max_sync_size,
            Size(100 << 20)
        );
        assert_eq!(
            parse(&["--max-sync-size", "1G", "h", "nix", "build"])
                .unwrap()
                .max_sync_size,
            Size(1 << 30)
        );
    }

    #[test]
    fn everything_after_host_goes_to_nix() {
        let cli = parse(&[
            "-v",
            "--no-link",
            "h",
            "nix",
            "build",
            "-v",
            "--no-link",
            ".#x",
        ])
        .unwrap();
        assert_eq!(
            (cli.verbose, cli.no_link, cli.host.as_str()),
            (1, true, "h")
        );
        assert_eq!(
            cli.nix_words().unwrap(),
            vec!["build", "-v", "--no-link", ".#x"]
        );
        let cli = parse(&["-vv", "--sync", "h", "nix", "flake", "update"]).unwrap();
        assert_eq!((cli.verbose, cli.sync_mode()), (2, SyncMode::Force));
        let cli = parse(&["--sync=h2", "h1,h2", "nix", "flake", "update"]).unwrap();
        assert_eq!(cli.sync, Some(Some("h2".to_string())));
        assert_eq!(
            parse(&["--no-sync", "h", "nix", "run"])
                .unwrap()
                .sync_mode(),
            SyncMode::Off
        );
    }

    #[test]
    fn hosts_from_host_as_written() {
        let h = |args: &[&str]| parse(args).unwrap().hosts_and_words().unwrap();
        assert_eq!(
            h(&["b", "nix", "build"]),
            (
                Hosts::One("b".into()),
                Program::Nix,
                vec!["build".to_string()]
            )
        );
        assert_eq!(h(&["auto", "nix", "build"]).0, Hosts::Auto);
        assert_eq!(h(&["all", "nix", "build"]).0, Hosts::Many("all".into()));
        assert_eq!(h(&["a,b", "nix", "build"]).0, Hosts::Many("a,b".into()));
        assert_eq!(
            h(&["nix", "build", ".#x"]),
            (
                Hosts::Auto,
                Program::Nix,
                vec!["build".to_string(), ".#x".into()]
            )
        );
        assert_eq!(
            h(&[".#app", "x"]),
            (
                Hosts::Auto,
                Program::Nix,
                vec!["run".to_string(), ".#app".into(), "--".into(), "x".into()]
            )
        );
        // The legacy commands that build and enter shells, with or without HOST.
        assert_eq!(
            h(&["b", "nix-build", "-A", "x"]),
            (
                Hosts::One("b".into()),
                Program::NixBuild,
                vec!["-A".to_string(), "x".into()]
            )
        );
        assert_eq!(
            h(&["nix-shell", "--run", "make"]),
            (
                Hosts::Auto,
                Program::NixShell,
                vec!["--run".to_string(), "make".into()]
            )
        );
    }

    #[test]
    fn legacy_commands_that_act_on_a_store_or_profile_are_refused_with_what_to_run() {
        for (line, says) in [
            (
                &["b", "nix-env", "-iA", "hello"][..],
                "`edict b nix-build …`",
            ),
            (&["nix-env", "-i"][..], "`edict HOST nix-build …`"),
            (
                &["b", "nix-store", "-r", "/nix/store/x"][..],
                "`ssh b nix-store …`",
            ),
            (
                &["b", "nix-instantiate", "x.nix"][..],
                "`edict b nix eval -f FILE ATTR`",
            ),
            (&["b", "nix-collect-garbage"][..], "`edict gc b`"),
        ] {
            let e = parse(line).unwrap().hosts_and_words().unwrap_err();
            let e = format!("{e:#}");
            assert!(e.contains("edict runs nix, nix-build and nix-shell"), "{e}");
            assert!(e.contains(says), "{line:?}: {e}");
        }
    }

    #[test]
    fn shorthand_is_nix_run() {
        let cli = parse(&["h", ".#app", "--flag", "a b"]).unwrap();
        assert_eq!(
            cli.nix_words().unwrap(),
            vec!["run", ".#app", "--", "--flag", "a b"]
        );
        assert_eq!(
            parse(&["h", ".#app"]).unwrap().nix_words().unwrap(),
            vec!["run", ".#app"]
        );
    }

    #[test]
    fn mistakes_get_clear_errors() {
        assert!(
            parse(&["h"]).unwrap().hosts_and_words().is_err(),
            "no command after HOST"
        );
        assert!(parse(&["--sync", "--no-sync", "h", "nix", "run"]).is_err());
        let e = parse(&["h", "build", ".#x"])
            .unwrap()
            .nix_words()
            .unwrap_err();
        assert!(
            format!("{e}").contains("nix subcommand\n  fix: `edict h nix build .#x`"),
            "{e}"
        );
        assert!(parse(&["h", "nix"]).unwrap().nix_words().is_err());
    }
}
