//! The one place where edict starts programs (ssh, rsync, git, nix): builds the argv as data,
//! prints it at `-v` as a line a user can paste into a shell, and runs it. Every word that
//! crosses to a remote shell goes through [`quote`].

use anyhow::{Context, Result};
use std::ffi::{OsStr, OsString};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};

static VERBOSITY: AtomicU8 = AtomicU8::new(0);
static QUIET: AtomicU8 = AtomicU8::new(0);

static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

pub fn set_verbosity(verbose: u8, quiet: bool) {
    START.get_or_init(std::time::Instant::now);
    VERBOSITY.store(verbose, Ordering::Relaxed);
    QUIET.store(u8::from(quiet), Ordering::Relaxed);
}

pub fn verbosity() -> u8 {
    VERBOSITY.load(Ordering::Relaxed)
}

/// Whether `-q` was given.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed) != 0
}

/// Reads `pipe` to its end on a thread of its own (so that a child filling another pipe
/// never waits on this one): join it for the bytes.
pub fn drain(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// A progress or result line for the user, on stderr (stdout is the nix command's), unless -q.
pub fn info(msg: impl std::fmt::Display) {
    if QUIET.load(Ordering::Relaxed) == 0 {
        crate::progress::suspend(|| eprintln!("edict: {msg}"));
    }
}

/// A command edict gives a shell that is already running (the session holding a run's
/// locks on HOST), from `-v` on, as `+ [WHERE] LINE`: every command edict has run is shown.
/// As for a [`Cmd`], `-v` shows it as `shown` gives it (scripts named), `-vv` whole.
pub fn trace(place: &str, line: &str, shown: impl FnOnce(&str) -> String) {
    match verbosity() {
        0 => {}
        1 => crate::progress::suspend(|| eprintln!("+ [{place}] {}", shown(line))),
        _ => crate::progress::suspend(|| eprintln!("+ [{place}] {line}")),
    }
}

/// A step's headline, from `-v` on (at `-vv` with the time since the start, as [`debug`]):
/// the commands `-v` prints come under the step they belong to.
pub fn step(msg: impl std::fmt::Display) {
    match verbosity() {
        0 => {}
        1 => crate::progress::suspend(|| eprintln!("edict: {msg}")),
        _ => debug(msg),
    }
}

/// A line shown only at `-vv`, with the time since edict started: where a run's time goes.
pub fn debug(msg: impl std::fmt::Display) {
    if verbosity() >= 2 {
        let t = START.get().map_or(0.0, |s| s.elapsed().as_secs_f64());
        crate::progress::suspend(|| eprintln!("edict: [{t:.3}s] {msg}"));
    }
}

/// A name from elsewhere (a file name HOST reported) as it may be printed to a terminal:
/// control characters escaped (`\n`, `\u{1b}`), so a name can neither break a line nor
/// send escape sequences; everything else as it is.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Quotes one word for a POSIX shell: any string, including spaces, quotes, `$()`, `;`,
/// newlines and the empty string, comes out as exactly one word with the same bytes.
///
/// Backslashes go outside the quotes, as `\\`: the login shell on HOST reads ssh's command
/// line first, and fish (unlike sh, bash, zsh) takes `\\` and `\'` inside single quotes as
/// escapes. `\\` unquoted means one backslash to all of them.
pub fn quote(word: &str) -> String {
    let escape = |w: &str| shell_escape::unix::escape(w.into()).into_owned();
    if !word.contains('\\') {
        return escape(word);
    }
    word.split('\\')
        .map(|piece| {
            if piece.is_empty() {
                String::new()
            } else {
                escape(piece)
            }
        })
        .collect::<Vec<_>>()
        .join("\\\\")
}

/// Quotes every word and joins them with spaces: a command line for a POSIX shell.
pub fn quote_words<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A program to run, with its arguments and environment, kept as data until it runs.
#[derive(Clone, Debug)]
pub struct Cmd {
    program: String,
    /// Byte for byte: a path that is not UTF-8 reaches the program as it is.
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    /// Variables the process does not get from edict's environment.
    env_removed: Vec<String>,
    /// RLIMIT_FSIZE for the process: no file it writes grows past this many bytes.
    max_file_size: Option<u64>,
    /// SIGTERM to the process when edict dies (Linux).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    die_with_edict: bool,
    /// How `-v` shows the last argument (a remote command with edict's scripts named);
    /// `-vv` shows the command as it is.
    last_shown: Option<String>,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_removed: Vec::new(),
            max_file_size: None,
            die_with_edict: false,
            last_shown: None,
        }
    }

    /// `-v` shows the last argument as `text`, unquoted, when it differs from it (see
    /// `scripts::shown`); `-vv` shows it as it is.
    pub fn show_last_as(mut self, text: String) -> Self {
        self.last_shown = Some(text);
        self
    }

    /// The process gets SIGTERM when edict dies, even by SIGKILL (Linux; elsewhere it runs
    /// to its end): an rsync must not go on writing after the run is gone.
    pub fn die_with_edict(mut self) -> Self {
        self.die_with_edict = true;
        self
    }

    /// The kernel stops every file the process writes at `bytes` (it gets EFBIG): a bound
    /// that holds whatever the other end of a transfer announces or sends.
    pub fn max_file_size(mut self, bytes: u64) -> Self {
        self.max_file_size = Some(bytes);
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The process runs without `key` (the user's agent, for a check of what root sees).
    pub fn env_remove(mut self, key: impl Into<String>) -> Self {
        self.env_removed.push(key.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The argv, for tests and messages (a word that is not UTF-8 shown with U+FFFD).
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect()
    }

    /// The command as one line a user can paste into a shell, environment first (a
    /// variable it runs without as `env -u NAME`).
    pub fn line(&self) -> String {
        let unset = if self.env_removed.is_empty() {
            String::new()
        } else {
            let names = self.env_removed.iter().map(|k| format!("-u {k} "));
            format!("env {}", names.collect::<String>())
        };
        let env = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={} ", quote(v)))
            .collect::<String>();
        format!("{unset}{env}{}", quote_words(&self.argv()))
    }

    /// The line `-v` prints: [`Cmd::line`], but with the last argument as
    /// [`Cmd::show_last_as`] gave it (so that must be the last argument added).
    pub fn shown_line(&self) -> String {
        match &self.last_shown {
            Some(last) if verbosity() < 2 => {
                let mut cmd = self.clone();
                cmd.args.pop();
                cmd.last_shown = None;
                format!("{} {last}", cmd.line())
            }
            _ => self.line(),
        }
    }

    fn log(&self) {
        if verbosity() >= 1 {
            crate::progress::suspend(|| eprintln!("+ {}", self.shown_line()));
        }
    }

    /// The std Command, with edict's environment changes applied.
    fn command(&self) -> Command {
        let mut cmd = Command::new(OsStr::new(&self.program));
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for k in &self.env_removed {
            cmd.env_remove(k);
        }
        #[cfg(target_os = "linux")]
        if self.die_with_edict {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: prctl is a single system call, safe between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    rustix::process::set_parent_process_death_signal(Some(
                        rustix::process::Signal::TERM,
                    ))
                    .map_err(std::io::Error::from)
                });
            }
        }
        if let Some(bytes) = self.max_file_size {
            use std::os::unix::process::CommandExt as _;
            let limit = rustix::process::Rlimit {
                current: Some(bytes),
                maximum: Some(bytes),
            };
            // SAFETY: setrlimit is a single system call, safe between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    rustix::process::setrlimit(rustix::process::Resource::Fsize, limit)
                        .map_err(std::io::Error::from)
                });
            }
        }
        cmd
    }

    /// Runs it with stdin closed, capturing stdout and stderr.
    pub fn output(&self) -> Result<Output> {
        self.log();
        self.command()
            .stdin(Stdio::null())
            .output()
            .with_context(|| {
                format!(
                    "could not start `{}`: is {} installed and on PATH?",
                    self.line(),
                    self.program
                )
            })
    }

    /// Runs it (stdin closed) and requires success: an error names the command line, its
    /// exit status and the end of its stderr; `Ok` has its output.
    pub fn run_checked(&self) -> Result<Output> {
        let out = self.output()?;
        if !out.status.success() {
            anyhow::bail!(
                "`{}` failed ({}): {}",
                self.line(),
                out.status,
                stderr_tail(&out)
            );
        }
        Ok(out)
    }

    /// Runs it with no input or output of its own and says whether it succeeded (a check:
    /// not starting at all is a no).
    pub fn succeeds(&self) -> bool {
        self.log();
        self.command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts it with the given stdio; the caller waits.
    pub fn spawn(&self, configure: impl FnOnce(&mut Command)) -> Result<Child> {
        self.log();
        let mut cmd = self.command();
        configure(&mut cmd);
        cmd.spawn().with_context(|| {
            format!(
                "could not start `{}`: is {} installed and on PATH?",
                self.line(),
                self.program
            )
        })
    }
}

/// The last lines of a program's stderr, for error messages.
pub fn stderr_tail(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(12);
    lines[start..].join("\n")
}

/// An exit status as a shell would report it: the code, or 128 + signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// What a thread that panicked said, for the error that reports it: a panic in one host's
/// thread is that host's failure, said, never a host that silently disappears.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    let said = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("edict failed internally (a bug: {said})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicked_thread_is_said() {
        let p = std::thread::spawn(|| {
            let v: Vec<u8> = Vec::new();
            v[3]
        })
        .join()
        .unwrap_err();
        let said = panic_text(p.as_ref());
        assert!(
            said.contains("a bug") && said.contains("index out of bounds"),
            "{said}"
        );
        let p = std::thread::spawn(|| std::panic::panic_any(7u8))
            .join()
            .unwrap_err();
        assert!(panic_text(p.as_ref()).contains("no message"));
    }

    #[test]
    fn printable_names_carry_no_control_characters() {
        assert_eq!(printable("plain name é.txt"), "plain name é.txt");
        assert_eq!(printable("a\nb"), "a\\nb");
        assert_eq!(printable("\u{1b}[2Jx"), "\\u{1b}[2Jx");
        assert!(!printable("\u{7}\r\t\u{9b}").chars().any(char::is_control));
    }

    #[test]
    fn a_file_size_limit_holds_for_what_the_process_writes() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        let out = Cmd::new("sh")
            .args(["-c", "head -c 5000 /dev/zero > \"$0\""])
            .arg(f.display().to_string())
            .max_file_size(1000)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 1000);
        // Without it, the same command writes it all.
        let out = Cmd::new("sh")
            .args(["-c", "head -c 5000 /dev/zero > \"$0\""])
            .arg(f.display().to_string())
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 5000);
    }

    pub const HOSTILE: &[&str] = &[
        "",
        " ",
        "plain",
        "two words",
        "it's",
        "\"double\"",
        "$(touch /tmp/pwned)",
        "`id`",
        "a;b",
        "a&&b|c",
        "line\nbreak",
        "tab\there",
        "back\\slash",
        "*glob?[x]",
        "~user",
        "-n",
        "--",
        "$HOME",
        "!bang",
        "a!b\n!c",
        "#hash",
        "emoji ✓",
        "'",
        "''",
        "\\'",
        "x\\\\y",
        "trailing\\",
        "\\",
    ];

    /// Round trip through a real /bin/sh: every hostile word arrives as exactly itself.
    #[test]
    fn quote_round_trips_through_sh() {
        let script = format!(
            "for a in {}; do printf '%s\\0' \"$a\"; done",
            quote_words(HOSTILE)
        );
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(out.status.success());
        let got: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .filter(|_| true)
            .map(|w| String::from_utf8(w.to_vec()).unwrap())
            .collect();
        let mut expected: Vec<String> = HOSTILE.iter().map(|s| s.to_string()).collect();
        expected.push(String::new()); // after the last NUL
        assert_eq!(got, expected);
    }

    /// Quoting twice (a script inside `sh -c` inside ssh's command line) also round-trips.
    #[test]
    fn nested_quoting_round_trips() {
        let inner = format!("printf '%s\\0' {}", quote_words(HOSTILE));
        let outer = quote_words(&["sh", "-c", &inner]);
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(&outer)
            .output()
            .unwrap();
        let got: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
        assert_eq!(got.len(), HOSTILE.len() + 1);
        for (g, e) in got.iter().zip(HOSTILE) {
            assert_eq!(*g, e.as_bytes());
        }
    }

    /// What fish would read differently never appears: no backslash inside single quotes.
    #[test]
    fn no_backslash_inside_single_quotes() {
        for w in HOSTILE {
            let q = quote(w);
            let (mut quoted, mut chars) = (false, q.chars());
            while let Some(c) = chars.next() {
                match c {
                    '\'' => quoted = !quoted,
                    '\\' if quoted => panic!("{w:?} quoted as {q}"),
                    // A line break only inside quotes: csh needs a backslash before each
                    // (see `ssh::Connection::ssh_as`), and gets it only there.
                    '\n' if !quoted => panic!("{w:?} quoted as {q}"),
                    // And `!` only outside, escaped: csh reads it even inside quotes.
                    '!' if quoted => panic!("{w:?} quoted as {q}"),
                    '\\' => _ = chars.next(), // an escape outside quotes
                    _ => {}
                }
            }
        }
        assert_eq!(quote("a\\b c"), "a\\\\'b c'");
    }

    #[test]
    fn line_is_pasteable() {
        let c = Cmd::new("nix")
            .args(["copy", "--from", "ssh://h", "/nix/store/x y"])
            .env("NIX_SSHOPTS", "-F /a b");
        assert_eq!(
            c.line(),
            "NIX_SSHOPTS='-F /a b' nix copy --from 'ssh://h' '/nix/store/x y'"
        );
        assert_eq!(
            c.argv(),
            vec!["nix", "copy", "--from", "ssh://h", "/nix/store/x y"]
        );
        // A variable it runs without, as a pasted line would.
        let c = Cmd::new("ssh").arg("h").env_remove("SSH_AUTH_SOCK");
        assert_eq!(c.line(), "env -u SSH_AUTH_SOCK ssh h");
        // -v shows the last argument as given; -vv (and the line itself) as it is.
        let c = Cmd::new("ssh")
            .args(["h", "sh -c 'x y'"])
            .show_last_as("'{x.sh}'".into());
        set_verbosity(1, false);
        assert_eq!(c.shown_line(), "ssh h '{x.sh}'");
        set_verbosity(2, false);
        assert_eq!(c.shown_line(), "ssh h 'sh -c '\\''x y'\\'''");
        set_verbosity(0, false);
        assert_eq!(c.argv(), ["ssh", "h", "sh -c 'x y'"]);
    }
}
