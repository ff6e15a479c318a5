//! Step 1: classify the words of a nix command line, so that only real flake references
//! (installables, `--inputs-from REF`, `--override-input NAME REF`, …) and local file paths
//! are synced and rewritten, and a flag's value or a program's argument never is.
//!
//! The grammar follows nix's own parser (libutil `Args::parseCmdline`): flags may appear
//! anywhere before `--`; `-abc` is `-a -b -c`; every nix.conf setting is also a flag
//! (`--cores N`, `--sandbox` / `--no-sandbox`, `--extra-substituters X`). The flag tables
//! below were read off Nix 2.8 and 2.26 (`nix … --help`, `nix show-config --json`).

/// What one word of the command line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A subcommand word: `build`, `flake`, `update`.
    Command,
    /// A flag name.
    Flag,
    /// A flag's value that names nothing on this machine (`--option NAME VALUE`).
    Value,
    /// A flake reference or installable (`.#pkg`, `nixpkgs#hello`, `/nix/store/…`).
    FlakeRef,
    /// The value of `-o/--out-link`: a local path where a result link should appear.
    OutLink,
    /// A local file nix reads: `-f/--file`, `--reference-lock-file`, nix-build's files.
    InputFile,
    /// A search path entry (`-I nixpkgs=./np`, `-I ./dir`): a local directory or file after
    /// an optional `NAME=`, or a URL.
    SearchPath,
    /// A local file nix writes: `--output-lock-file`.
    OutputFile,
    /// A word for the program nix runs (`nix run .#app ARGS`, `-c CMD ARGS`).
    ProgramArg,
    /// An input name (`nix flake update nixpkgs` on nix ≥ 2.19, `--update-input`).
    InputName,
    /// `--`.
    Separator,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arg {
    pub text: String,
    pub role: Role,
    /// A positional word (an installable), not a flag's value.
    pub positional: bool,
}

/// The program edict runs on HOST: `nix`, or one of the legacy commands that build and
/// enter shells from Nix expressions (many users still build `default.nix` with them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Nix,
    NixBuild,
    NixShell,
}

impl Program {
    pub fn name(self) -> &'static str {
        match self {
            Program::Nix => "nix",
            Program::NixBuild => "nix-build",
            Program::NixShell => "nix-shell",
        }
    }
}

/// A classified command line (the words after the program's name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NixArgs {
    pub program: Program,
    pub args: Vec<Arg>,
}

impl NixArgs {
    /// The subcommand path, e.g. `["flake", "update"]`.
    pub fn subcommand(&self) -> Vec<&str> {
        self.args
            .iter()
            .filter(|a| a.role == Role::Command)
            .map(|a| a.text.as_str())
            .collect()
    }

    pub fn has_flag(&self, names: &[&str]) -> bool {
        self.args
            .iter()
            .any(|a| a.role == Role::Flag && names.contains(&a.text.as_str()))
    }

    /// Whether the command line overrides `input` (`--override-input INPUT REF`).
    pub fn overrides(&self, input: &str) -> bool {
        self.args.windows(2).any(|w| {
            w[0].role == Role::Flag && w[0].text == "--override-input" && w[1].text == input
        })
    }

    /// Whether nix will use the flake in the current directory without being told: the
    /// commands whose installable defaults to `.`, given none and no `--file`/`--expr`.
    pub fn implicit_cwd_flake(&self) -> bool {
        let sub = self.subcommand();
        let defaults_to_dot = matches!(
            sub.as_slice(),
            ["build"] | ["run"] | ["develop"] | ["fmt"] | ["print-dev-env"] | ["eval"] | ["repl"]
        ) || (sub.first() == Some(&"flake")
            && !matches!(
                sub.get(1),
                Some(&"init") | Some(&"new") | Some(&"clone") | Some(&"prefetch")
            ));
        let positional_ref = self
            .args
            .iter()
            .any(|a| a.role == Role::FlakeRef && a.positional);
        defaults_to_dot && !positional_ref && !self.has_flag(&["-f", "--file", "--expr", "--flake"])
    }
}

/// How a command treats its positional words.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Positionals {
    /// Every positional is an installable (`nix build A B`).
    Installables,
    /// The first is an installable, the rest belong to the program (`nix run A ARGS`).
    FirstThenProgram,
    /// The first is a flake, the rest are plain values (`nix search REF REGEX`).
    FirstThenValues,
    /// Local-looking words are flakes (old nix), others input names (nix ≥ 2.19).
    FlakeUpdate,
    /// No flakes among them (`nix flake init`, `nix registry add …`).
    Values,
    /// All of them go to a program (`nix fmt FILES`).
    Program,
}

fn positionals(sub: &[String]) -> Positionals {
    let words: Vec<&str> = sub.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["run", ..] => Positionals::FirstThenProgram,
        ["search", ..] | ["develop", ..] => Positionals::FirstThenValues,
        ["fmt", ..] => Positionals::Program,
        ["flake", "update", ..] => Positionals::FlakeUpdate,
        ["flake", "init" | "new", ..] => Positionals::Values,
        ["flake", _, ..] => Positionals::FirstThenValues,
        [
            "registry" | "hash" | "key" | "nar" | "config" | "show-config" | "doctor"
            | "upgrade-nix" | "daemon" | "help" | "help-stores",
            ..,
        ] => Positionals::Values,
        ["profile", "install" | "add", ..] => Positionals::Installables,
        ["profile", ..] => Positionals::Values,
        [
            "store",
            "ls" | "cat" | "dump-path" | "ping" | "info" | "gc" | "optimise" | "prefetch-file",
            ..,
        ] => Positionals::Values,
        _ => Positionals::Installables,
    }
}

/// Commands with a second word (`nix flake update`).
const GROUPS: &[&str] = &[
    "flake",
    "profile",
    "registry",
    "store",
    "derivation",
    "nar",
    "hash",
    "key",
    "realisation",
    "config",
];

/// Flags that take two words.
const TWO: &[(&str, [Role; 2])] = &[
    ("--option", [Role::Value, Role::Value]),
    ("--arg", [Role::Value, Role::Value]),
    ("--argstr", [Role::Value, Role::Value]),
    ("--arg-from-file", [Role::Value, Role::InputFile]),
    ("--override-input", [Role::InputName, Role::FlakeRef]),
    ("--override-flake", [Role::Value, Role::FlakeRef]),
    ("--redirect", [Role::FlakeRef, Role::Value]),
    ("--set-env-var", [Role::Value, Role::Value]),
    ("-s", [Role::Value, Role::Value]),
];

/// Flags that take one word, with the word's role.
const ONE: &[(&str, Role)] = &[
    ("--out-link", Role::OutLink),
    ("-o", Role::OutLink),
    ("--file", Role::InputFile),
    ("-f", Role::InputFile),
    ("--reference-lock-file", Role::InputFile),
    ("--output-lock-file", Role::OutputFile),
    ("--inputs-from", Role::FlakeRef),
    ("--flake", Role::FlakeRef),
    ("--template", Role::FlakeRef),
    ("-t", Role::FlakeRef),
    ("--update-input", Role::InputName),
    ("--expr", Role::Value),
    ("--include", Role::SearchPath),
    ("-I", Role::SearchPath),
    ("--eval-store", Role::Value),
    ("--log-format", Role::Value),
    ("--profile", Role::Value),
    ("--keep-env-var", Role::Value),
    ("--keep", Role::Value),
    ("-k", Role::Value),
    ("--unset-env-var", Role::Value),
    ("--unset", Role::Value),
    ("-u", Role::Value),
    ("--arg-from-stdin", Role::Value),
    ("--apply", Role::Value),
    ("--write-to", Role::Value),
    ("--phase", Role::Value),
    ("--priority", Role::Value),
    ("--to", Role::Value),
    ("--from", Role::Value),
    ("--dest", Role::Value),
    ("--level", Role::Value),
    ("--max-jobs", Role::Value),
    ("-j", Role::Value),
    ("--cores", Role::Value),
    ("--builders", Role::Value),
    ("--store", Role::Value),
    ("--system", Role::Value),
    ("--outputs", Role::Value),
    ("--format", Role::Value),
    ("--type", Role::Value),
    ("--hash-algo", Role::Value),
    ("--base", Role::Value),
    ("--name", Role::Value),
    ("--reference", Role::Value),
];

/// Settings that take a value, each also a flag (`--NAME V`, and `--extra-NAME V`).
const VALUE_SETTINGS: &[&str] = &[
    "access-tokens",
    "allowed-impure-host-deps",
    "allowed-uris",
    "allowed-users",
    "bash-prompt",
    "bash-prompt-prefix",
    "bash-prompt-suffix",
    "binary-cache-public-keys",
    "binary-caches",
    "binary-caches-parallel-connections",
    "build-chroot-dirs",
    "build-cores",
    "build-dir",
    "build-hook",
    "build-max-jobs",
    "build-max-log-size",
    "build-max-silent-time",
    "build-poll-interval",
    "build-repeat",
    "build-sandbox-paths",
    "build-timeout",
    "build-users-group",
    "builders",
    "commit-lock-file-summary",
    "commit-lockfile-summary",
    "connect-timeout",
    "cores",
    "diff-hook",
    "download-attempts",
    "download-buffer-size",
    "download-speed",
    "eval-system",
    "experimental-features",
    "extra-platforms",
    "flake-registry",
    "gc-reserved-space",
    "hashed-mirrors",
    "http-connections",
    "id-count",
    "ignored-acls",
    "impure-env",
    "log-lines",
    "max-build-log-size",
    "max-call-depth",
    "max-free",
    "max-jobs",
    "max-silent-time",
    "max-substitution-jobs",
    "min-free",
    "min-free-check-interval",
    "nar-buffer-size",
    "narinfo-cache-negative-ttl",
    "narinfo-cache-positive-ttl",
    "netrc-file",
    "nix-path",
    "plugin-files",
    "post-build-hook",
    "pre-build-hook",
    "repeat",
    "sandbox-build-dir",
    "sandbox-dev-shm-size",
    "sandbox-paths",
    "secret-key-files",
    "ssl-cert-file",
    "stalled-download-timeout",
    "start-id",
    "store",
    "substituters",
    "substitution-max-jobs",
    "system",
    "system-features",
    "tarball-ttl",
    "timeout",
    "trusted-binary-caches",
    "trusted-public-keys",
    "trusted-substituters",
    "trusted-users",
    "upgrade-nix-store-path-url",
    "user-agent-suffix",
    "warn-large-path-threshold",
];

/// Flags that end flag parsing and hand every following word to a program.
const REST: &[&str] = &["--command", "-c"];

/// How many words follow `flag` and their roles; `None` for a flag taking the rest.
/// Unknown flags take no value, as boolean settings and most nix flags do.
fn arity(flag: &str, sub: &[String]) -> Option<(usize, [Role; 2])> {
    if REST.contains(&flag) {
        return None;
    }
    // `-t` is `--template` only for `nix flake init/new`; elsewhere nix has no `-t`.
    if flag == "-t" && !matches!(sub.get(1).map(String::as_str), Some("init" | "new")) {
        return Some((0, [Role::Value; 2]));
    }
    if let Some((_, roles)) = TWO.iter().find(|(f, _)| *f == flag) {
        return Some((2, *roles));
    }
    if let Some((_, role)) = ONE.iter().find(|(f, _)| *f == flag) {
        return Some((1, [*role, Role::Value]));
    }
    setting_arity(flag)
}

/// A nix.conf setting given as a flag (`--cores 4`, `--extra-substituters X`, `--sandbox`).
fn setting_arity(flag: &str) -> Option<(usize, [Role; 2])> {
    if let Some(name) = flag.strip_prefix("--") {
        let name = name.strip_prefix("extra-").unwrap_or(name);
        if VALUE_SETTINGS.contains(&name) {
            return Some((1, [Role::Value; 2]));
        }
    }
    Some((0, [Role::Value; 2]))
}

/// What a command's grammar says about its words, for [`scan`].
trait Grammar {
    /// How many words follow `flag` and their roles; `None` for a flag taking the rest.
    fn arity(&self, flag: &str) -> Option<(usize, [Role; 2])>;
    /// A flag was seen (some change what the positionals mean).
    fn flag(&mut self, _flag: &str) {}
    /// The role of the next positional word, and whether it is an installable-like
    /// positional (false for a subcommand word).
    fn positional(&mut self, word: &str) -> (Role, bool);
}

/// The grammar of `nix SUBCOMMAND…`.
#[derive(Default)]
struct Nix {
    sub: Vec<String>,
    sub_done: bool,
    count: usize,
}

impl Grammar for Nix {
    fn arity(&self, flag: &str) -> Option<(usize, [Role; 2])> {
        arity(flag, &self.sub)
    }

    fn positional(&mut self, word: &str) -> (Role, bool) {
        // First the subcommand path, then per-command meaning.
        if !self.sub_done {
            self.sub.push(word.to_string());
            let is_group = self.sub.len() == 1 && GROUPS.contains(&self.sub[0].as_str());
            self.sub_done = !is_group;
            return (Role::Command, false);
        }
        let first = self.count == 0;
        self.count += 1;
        let role = match positionals(&self.sub) {
            Positionals::Installables => Role::FlakeRef,
            Positionals::FirstThenProgram if first => Role::FlakeRef,
            // Nix still parses its flags after the installable (hence `nix run X -- --flag`).
            Positionals::FirstThenProgram => Role::ProgramArg,
            Positionals::FirstThenValues if first => Role::FlakeRef,
            Positionals::FirstThenValues | Positionals::Values => Role::Value,
            Positionals::Program => Role::ProgramArg,
            Positionals::FlakeUpdate => {
                if matches!(
                    crate::flakeref::parse(word),
                    crate::flakeref::FlakeRef::Local(_)
                ) {
                    Role::FlakeRef
                } else {
                    Role::InputName
                }
            }
        };
        (role, true)
    }
}

/// The grammar of `nix-build` and `nix-shell` (nix's src/nix-build/nix-build.cc, one
/// program for both, plus the common and evaluation flags every legacy command takes).
struct Legacy {
    program: Program,
    /// `-E`/`--expr`, or nix-shell's `-p`/`--packages`: positionals are expressions or
    /// package names, not files.
    values: bool,
}

impl Grammar for Legacy {
    fn arity(&self, flag: &str) -> Option<(usize, [Role; 2])> {
        let v = [Role::Value; 2];
        Some(match flag {
            "--arg" | "--argstr" | "--option" | "--override-flake" => (2, v),
            "--arg-from-file" => (2, [Role::Value, Role::InputFile]),
            "--arg-from-stdin" => (1, v),
            "-o" | "--out-link" => (1, [Role::OutLink, Role::Value]),
            "-I" | "--include" => (1, [Role::SearchPath, Role::Value]),
            // A shell command line (`--run 'make -j4'`): one word, never a path to rewrite.
            "-A" | "--attr" | "--add-root" | "--drv-link" | "--run" | "--command" | "--exclude"
            | "--keep" | "-j" | "--max-jobs" | "--cores" | "--timeout" | "--max-silent-time"
            | "--store" | "--eval-store" | "--log-format" => (1, v),
            _ => return setting_arity(flag),
        })
    }

    fn flag(&mut self, flag: &str) {
        let packages = self.program == Program::NixShell && matches!(flag, "-p" | "--packages");
        if matches!(flag, "-E" | "--expr") || packages {
            self.values = true;
        }
    }

    fn positional(&mut self, _word: &str) -> (Role, bool) {
        // A file or directory with an expression (the mapping tells local ones from
        // `<nixpkgs>` and URLs), unless -E/-p made them expressions or names.
        (
            if self.values {
                Role::Value
            } else {
                Role::InputFile
            },
            true,
        )
    }
}

/// Classifies the words after `nix`.
pub fn classify(words: &[String]) -> NixArgs {
    NixArgs {
        program: Program::Nix,
        args: scan(words, &mut Nix::default()),
    }
}

/// Classifies the words after `nix-build` or `nix-shell`.
pub fn classify_legacy(program: Program, words: &[String]) -> NixArgs {
    NixArgs {
        program,
        args: scan(
            words,
            &mut Legacy {
                program,
                values: false,
            },
        ),
    }
}

fn scan(words: &[String], grammar: &mut dyn Grammar) -> Vec<Arg> {
    let mut args: Vec<Arg> = Vec::with_capacity(words.len());
    let mut flags_done = false;
    let mut rest_to_program = false;
    let mut queue: std::collections::VecDeque<String> = words.iter().cloned().collect();

    let push = |args: &mut Vec<Arg>, text: String, role: Role| {
        args.push(Arg {
            text,
            role,
            positional: false,
        })
    };

    while let Some(word) = queue.pop_front() {
        if rest_to_program {
            push(&mut args, word, Role::ProgramArg);
            continue;
        }
        if !flags_done && word == "--" {
            flags_done = true;
            push(&mut args, word, Role::Separator);
            continue;
        }
        if !flags_done && word.starts_with('-') && word.len() > 1 {
            // `-abc` is `-a -b -c`, and `-j4` is `-j 4`: nix expands a cluster of letters,
            // and the rest from the first other character is the next word (libutil's
            // `Args::parseCmdline`). The letters stay one word here, that rest another.
            let cluster = !word.starts_with("--")
                && word.len() > 2
                && word[1..].starts_with(|c: char| c.is_ascii_alphabetic());
            let (word, flags) = if cluster {
                let end = word[1..]
                    .find(|c: char| !c.is_ascii_alphabetic())
                    .map_or(word.len(), |i| i + 1);
                if end < word.len() {
                    queue.push_front(word[end..].to_string());
                }
                let letters = word[..end].to_string();
                let flags = letters[1..].chars().map(|c| format!("-{c}")).collect();
                (letters, flags)
            } else {
                (word.clone(), vec![word])
            };
            // A cluster is one word on the command line; its values follow it.
            let mut roles = Vec::new();
            for f in &flags {
                grammar.flag(f);
                match grammar.arity(f) {
                    None => {
                        rest_to_program = true;
                        break;
                    }
                    Some((n, r)) => roles.extend(r.into_iter().take(n)),
                }
            }
            push(&mut args, word, Role::Flag);
            for role in roles {
                if let Some(v) = queue.pop_front() {
                    push(&mut args, v, role);
                }
            }
            continue;
        }
        let (role, positional) = grammar.positional(&word);
        args.push(Arg {
            text: word,
            role,
            positional,
        });
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::*;

    fn legacy_roles(program: Program, line: &str) -> Vec<(String, Role)> {
        classify_legacy(program, &split(line))
            .args
            .into_iter()
            .map(|a| (a.text, a.role))
            .collect()
    }

    #[test]
    fn legacy_commands_name_files_links_and_search_paths() {
        let r = legacy_roles(
            Program::NixBuild,
            "./release.nix -A pkgs.x --arg a ./v --argstr b ./w -o out -I np=./np -KQ <nixpkgs> -j 4 --cores 2 --no-sandbox --option sandbox false",
        );
        let of = |w: &str| r.iter().find(|(t, _)| t == w).map(|(_, role)| *role);
        assert_eq!(of("./release.nix"), Some(InputFile));
        assert_eq!(of("pkgs.x"), Some(Value));
        assert_eq!(of("./v"), Some(Value));
        assert_eq!(of("./w"), Some(Value));
        assert_eq!(of("out"), Some(OutLink));
        assert_eq!(of("np=./np"), Some(SearchPath));
        assert_eq!(of("-KQ"), Some(Flag));
        assert_eq!(of("<nixpkgs>"), Some(InputFile)); // the mapping leaves it alone
        assert_eq!(of("4"), Some(Value));
        assert_eq!(of("false"), Some(Value));
        // -E makes positionals expressions; -p (nix-shell) package names.
        let r = legacy_roles(Program::NixBuild, "-E 'import ./x.nix {}'");
        assert_eq!(r[1], ("import ./x.nix {}".into(), Value));
        let r = legacy_roles(Program::NixShell, "-p hello --run 'make ./x'");
        assert_eq!(r[1], ("hello".into(), Value));
        assert_eq!(r[3], ("make ./x".into(), Value));
        let r = legacy_roles(
            Program::NixBuild,
            "-j4 ./release.nix --arg-from-file x ./x.txt",
        );
        assert_eq!(r[1], ("4".into(), Value));
        assert_eq!(r[2], ("./release.nix".into(), InputFile));
        assert_eq!(r[5], ("./x.txt".into(), InputFile));
        // nix-build has no -p: there a positional stays a file.
        let r = legacy_roles(Program::NixBuild, "-p ./x.nix");
        assert_eq!(r[1], ("./x.nix".into(), InputFile));
    }

    fn roles(line: &str) -> Vec<(String, Role)> {
        let words = split(line);
        classify(&words)
            .args
            .into_iter()
            .map(|a| (a.text, a.role))
            .collect()
    }

    /// Splits a test line on spaces; `'…'` groups words with spaces.
    fn split(line: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        let mut any = false;
        for c in line.chars() {
            match c {
                '\'' => {
                    quoted = !quoted;
                    any = true;
                }
                ' ' if !quoted => {
                    if any {
                        out.push(std::mem::take(&mut cur));
                    }
                    any = false;
                }
                c => {
                    cur.push(c);
                    any = true;
                }
            }
        }
        if any {
            out.push(cur);
        }
        out
    }

    fn refs(line: &str) -> Vec<String> {
        roles(line)
            .into_iter()
            .filter(|(_, r)| *r == FlakeRef)
            .map(|(t, _)| t)
            .collect()
    }

    /// 40+ real command lines: which words are flake references.
    #[test]
    fn finds_flake_refs_in_real_command_lines() {
        let table: &[(&str, &[&str])] = &[
            ("build", &[]),
            ("build .", &["."]),
            ("build .#hello", &[".#hello"]),
            ("build .#a .#b nixpkgs#c", &[".#a", ".#b", "nixpkgs#c"]),
            ("build -L .#x", &[".#x"]),
            ("build -L -v .#x --show-trace", &[".#x"]),
            ("build .#x -o out", &[".#x"]),
            ("build -o ./my-result .#x", &[".#x"]),
            ("build --out-link /tmp/r .#x", &[".#x"]),
            ("build --no-link --print-out-paths .#x", &[".#x"]),
            ("build --json .#x", &[".#x"]),
            ("build --option substituters '' .#x", &[".#x"]),
            ("build --option system-features 'kvm big' .#x", &[".#x"]),
            (
                "build --arg foo ./not-a-ref -f ./default.nix attr",
                &["attr"],
            ),
            ("build --argstr name ./x .#y", &[".#y"]),
            ("build --expr '(import ./x {})' --impure", &[]),
            ("build -f . hello", &["hello"]),
            (
                "build --file ./release.nix build.x86_64-linux",
                &["build.x86_64-linux"],
            ),
            ("build -I nixpkgs=./np .#x", &[".#x"]),
            (
                "build --override-input nixpkgs ../nixpkgs .#x",
                &["../nixpkgs", ".#x"],
            ),
            (
                "build --override-input dep/sub path:/src/sub .#x",
                &["path:/src/sub", ".#x"],
            ),
            (
                "build --inputs-from . nixpkgs#hello",
                &[".", "nixpkgs#hello"],
            ),
            ("build --override-flake nixpkgs ./np .#x", &["./np", ".#x"]),
            ("build --reference-lock-file ./old.lock .#x", &[".#x"]),
            ("build --output-lock-file ./new.lock .#x", &[".#x"]),
            ("build --eval-store auto --store ssh-ng://h .#x", &[".#x"]),
            ("build --log-format bar-with-logs .#x", &[".#x"]),
            ("build -j 4 --cores 2 .#x", &[".#x"]),
            (
                "build --max-jobs 0 --builders 'ssh://b x86_64-linux' .#x",
                &[".#x"],
            ),
            ("build --extra-substituters https://c .#x", &[".#x"]),
            ("build --system aarch64-linux .#x", &[".#x"]),
            ("build --no-sandbox --keep-going --fallback .#x", &[".#x"]),
            ("build --profile ./p .#x", &[".#x"]),
            ("build --rebuild --dry-run .#x", &[".#x"]),
            ("build -Lo out .#x", &[".#x"]),
            ("build '.#pkg^out,dev'", &[".#pkg^out,dev"]),
            (
                "build /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x.drv^*",
                &["/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x.drv^*"],
            ),
            ("build -- .#x", &[".#x"]),
            ("--option cores 2 build .#x", &[".#x"]),
            (
                "--extra-experimental-features 'nix-command flakes' build .#x",
                &[".#x"],
            ),
            ("run .#app", &[".#app"]),
            ("run .#app -- --flag ./file", &[".#app"]),
            ("run .#app ./file 'a b'", &[".#app"]),
            ("run nixpkgs#hello -- -g hi", &["nixpkgs#hello"]),
            ("run -- .#app ./x", &[".#app"]),
            ("run", &[]),
            (
                "shell .#a nixpkgs#b -c ./script.sh ./arg",
                &[".#a", "nixpkgs#b"],
            ),
            ("shell .#a --command sh -c 'echo .#b'", &[".#a"]),
            ("develop -c make -C ./sub", &[]),
            ("develop .#dev --command bash -c ./build.sh", &[".#dev"]),
            ("develop ./sub#shell -i -k HOME -c true", &["./sub#shell"]),
            ("develop --unset PATH -s FOO ./bar .#x -c true", &[".#x"]),
            ("flake update", &[]),
            ("flake update nixpkgs", &[]),
            ("flake update --flake ./sub nixpkgs", &["./sub"]),
            ("flake update ./sub", &["./sub"]),
            ("flake lock --update-input nixpkgs", &[]),
            ("flake lock ./sub --update-input nixpkgs", &["./sub"]),
            ("flake check", &[]),
            ("flake check ./sub --no-build", &["./sub"]),
            ("flake show --json .", &["."]),
            (
                "flake metadata git+file:///srv/r?dir=x",
                &["git+file:///srv/r?dir=x"],
            ),
            ("flake init -t ./templates#rust", &["./templates#rust"]),
            ("flake init", &[]),
            ("search nixpkgs .", &["nixpkgs"]),
            ("eval .#x --apply 'x: x' --json", &[".#x"]),
            ("eval --expr '1 + 1'", &[]),
            ("fmt ./a.nix ./b.nix", &[]),
            ("path-info -r .#x", &[".#x"]),
            ("why-depends .#a .#b", &[".#a", ".#b"]),
            ("print-dev-env .#x", &[".#x"]),
            ("registry add nixpkgs ./np", &[]),
            ("profile install .#x", &[".#x"]),
            ("copy --to ssh://h .#x", &[".#x"]),
        ];
        for (line, expected) in table {
            let got = refs(line);
            assert_eq!(&got, expected, "`nix {line}`");
        }
        assert!(table.len() >= 40);
    }

    #[test]
    fn flag_values_and_program_words_keep_their_roles() {
        assert_eq!(
            roles("build -o out --option a b .#x"),
            vec![
                ("build".into(), Command),
                ("-o".into(), Flag),
                ("out".into(), OutLink),
                ("--option".into(), Flag),
                ("a".into(), Value),
                ("b".into(), Value),
                (".#x".into(), FlakeRef)
            ]
        );
        assert_eq!(
            roles("run .#app -L x -- --y ./z"),
            vec![
                ("run".into(), Command),
                (".#app".into(), FlakeRef),
                ("-L".into(), Flag),
                ("x".into(), ProgramArg),
                ("--".into(), Separator),
                ("--y".into(), ProgramArg),
                ("./z".into(), ProgramArg)
            ]
        );
        let r = roles("build -Lo out .#x");
        assert_eq!(r[1], ("-Lo".into(), Flag));
        assert_eq!(r[2], ("out".into(), OutLink));
        // `-j4` is `-j 4` (and `-Lo./out` is `-L -o ./out`): the installable after it is
        // still one.
        let r = roles("build -j4 .#x");
        assert_eq!(
            r[1..],
            [
                ("-j".into(), Flag),
                ("4".into(), Value),
                (".#x".into(), FlakeRef)
            ]
        );
        let r = roles("build -Lo./out .#x");
        assert_eq!(r[1..3], [("-Lo".into(), Flag), ("./out".into(), OutLink)]);
        assert_eq!(r[3], (".#x".into(), FlakeRef));
        // Not a cluster: a dash and a digit (a value nix reads as a word of its own).
        assert_eq!(roles("eval -1")[1].0, "-1");
        let r = roles("build -f ./d.nix --reference-lock-file a.lock --output-lock-file b.lock");
        assert_eq!(r[2].1, InputFile);
        assert_eq!(r[4].1, InputFile);
        assert_eq!(r[6].1, OutputFile);
        let r = roles("flake update nixpkgs");
        assert_eq!(r[2], ("nixpkgs".into(), InputName));
        let r = roles("build --override-input a/b ./c");
        assert_eq!((r[2].1, r[3].1), (InputName, FlakeRef));
    }

    #[test]
    fn subcommands() {
        assert_eq!(
            classify(&split("flake update --flake .")).subcommand(),
            vec!["flake", "update"]
        );
        assert_eq!(classify(&split("-v build .")).subcommand(), vec!["build"]);
        assert_eq!(
            classify(&split("--option cores 2 develop")).subcommand(),
            vec!["develop"]
        );
    }

    #[test]
    fn implicit_cwd_flake() {
        let yes = [
            "build",
            "build -L",
            "run",
            "develop -c true",
            "flake update",
            "flake lock",
            "flake check",
            "flake show",
            "eval --json",
            "build -o out",
        ];
        let no = [
            "build .#x",
            "build nixpkgs#x",
            "build -f . x",
            "build --expr 1",
            "shell nixpkgs#x",
            "flake init -t x",
            "flake update --flake ./sub",
            "flake show ./sub",
            "run .#a",
            "build --inputs-from . nixpkgs#x",
        ];
        for l in yes {
            assert!(classify(&split(l)).implicit_cwd_flake(), "{l}");
        }
        for l in no {
            assert!(!classify(&split(l)).implicit_cwd_flake(), "{l}");
        }
    }
}
