//! TAB completion in real shells (#17), with the scripts exactly as `edict completions SHELL`
//! prints them: bash and zsh typed into through a real terminal (zsh's zpty; readline and
//! zle do the completing), fish through `complete -C`. Against a flake in a temp dir, an ssh
//! config with an Include, a pool from the local nix's `builders`, and this machine's nix
//! answering for `nix` (its `NIX_GET_COMPLETIONS`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use std::path::PathBuf;
use std::process::Command;

/// A user's world: HOME with an ssh config, a flake to stand in, edict on PATH.
struct World {
    _dir: tempfile::TempDir,
    home: PathBuf,
    flake: PathBuf,
    path: String,
    log: PathBuf,
}

/// How README loads fish's completion.
const FISH_LOAD: &str = "edict completions fish | source";

const BASH_COMPLETION: &str = "/usr/share/bash-completion/bash_completion";

const FLAKE: &str = r#"{
  outputs = { self }:
    let
      mk = system: name: derivation { inherit name system; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
      each = f: { x86_64-linux = f "x86_64-linux"; aarch64-linux = f "aarch64-linux"; };
    in {
      packages = each (s: { default = mk s "d"; hello = mk s "hello"; });
      apps = each (s: { greet = { type = "app"; program = "/bin/sh"; }; });
    };
}
"#;

fn world() -> World {
    for program in ["zsh", "fish", "bash", "nix"] {
        assert!(
            which::which(program).is_ok(),
            "{program} is not installed: run tests/lab/install.sh (see tests/lab/packages)"
        );
    }
    assert!(
        std::path::Path::new(BASH_COMPLETION).exists(),
        "bash-completion is not installed: run tests/lab/install.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".ssh/conf.d")).unwrap();
    std::fs::write(
        home.join(".ssh/config"),
        "Host builder\n  HostName 10.1.1.1\nHost *.lan !bad\nInclude conf.d/*.conf\n",
    )
    .unwrap();
    std::fs::write(home.join(".ssh/conf.d/more.conf"), "Host other\n").unwrap();
    std::fs::write(home.join("only_config"), "Host lonely\n").unwrap();
    let flake = dir.path().join("flake");
    std::fs::create_dir(&flake).unwrap();
    std::fs::write(flake.join("flake.nix"), FLAKE).unwrap();
    std::fs::write(flake.join("sp ace.nix"), "{}").unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_edict"));
    // edict as `~/bin/edict` too.
    std::fs::create_dir(home.join("bin")).unwrap();
    std::os::unix::fs::symlink(&bin, home.join("bin/edict")).unwrap();
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap()
    );
    let log = dir.path().join("log");
    World {
        _dir: dir,
        home,
        flake,
        path,
        log,
    }
}

impl World {
    /// A shell command in the flake's directory, as this user.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.flake)
            .env("HOME", &self.home)
            .env("PATH", &self.path)
            .env("XDG_RUNTIME_DIR", self.home.join("run"))
            .env(
                "NIX_CONFIG",
                format!(
                    "{}builders = ssh://poolbox x86_64-linux\n",
                    lab::CLIENT_NIX_CONFIG
                ),
            )
            .env("TERM", "xterm")
            .env_remove("NIX_SSHOPTS")
            .env_remove("EDICT_SSH_OPTS")
            .env_remove("EDICT_GET_COMPLETIONS");
        cmd
    }

    /// fish with edict's completion loaded as README says, running `script`.
    fn in_fish(&self, script: &str) -> Command {
        let mut cmd = self.command("fish");
        cmd.args(["--no-config", "-c", &format!("{FISH_LOAD}; {script}")]);
        cmd
    }

    /// What fish offers for `line` (the words, without descriptions).
    fn fish(&self, line: &str) -> Vec<String> {
        let out = self
            .in_fish("complete -C $argv[1]")
            .arg(line)
            .output()
            .unwrap();
        assert!(out.status.success(), "fish: {out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    }

    /// Types `keys` into an interactive `shell` set up by `init`, through a terminal zsh's
    /// zpty makes; the shell writes its line to the log at C-x b. The line then, and every
    /// candidate edict's zsh function handed to compadd (zsh only).
    fn typed(&self, shell: &str, init: &str, keys: &str) -> (String, Vec<String>) {
        let _ = std::fs::remove_file(&self.log);
        let driver = r#"
zmodload zsh/zpty
zpty s "$1"
zpty -w s "$2"
zpty -w s 'echo RE""ADY'
zpty -r s out '*READY*'
zpty -w -n s "$3"$'\t\x18b'
for i in {1..600}; do
  [[ -f $4 ]] && grep -q '^LINE<' $4 && break
  sleep 0.05
done
zpty -d s
"#;
        let out = self
            .command("timeout")
            .args(["60", "zsh", "-f", "-c", driver, "driver", shell, init, keys])
            .arg(&self.log)
            .output()
            .unwrap();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let line = log
            .lines()
            .find_map(|l| l.strip_prefix("LINE<")?.strip_suffix('>'))
            .unwrap_or_else(|| panic!("{shell} never showed its line for {keys:?}: {out:?}\n{log}"))
            .to_string();
        let offered = log
            .lines()
            .filter_map(|l| l.strip_prefix("OFFERED "))
            .map(str::to_string)
            .collect();
        (line, offered)
    }

    /// Interactive bash, with or without the bash-completion package loaded first.
    fn bash(&self, keys: &str, bash_completion: bool) -> String {
        let log = self.log.display();
        let mut init = String::new();
        if bash_completion {
            init.push_str(&format!("source {BASH_COMPLETION}; "));
        }
        // As README says: eval works in every bash (`source <(…)` not in 3.2).
        init.push_str(&format!(
            "eval \"$(edict completions bash)\"; bind -x '\"\\C-xb\": printf \"LINE<%s>\\n\" \"$READLINE_LINE\" >> {log}'"
        ));
        self.typed("bash --norc --noprofile -i", &init, keys).0
    }

    /// Interactive zsh with compinit, the function from $fpath (as a package installs it) or
    /// sourced after compinit (as README says for a cargo install).
    fn zsh(&self, keys: &str, from_fpath: bool) -> (String, Vec<String>) {
        let log = self.log.display();
        let fpath = self.home.join("zfunctions");
        std::fs::create_dir_all(&fpath).unwrap();
        let out = self
            .command("edict")
            .args(["completions", "zsh"])
            .output()
            .unwrap();
        std::fs::write(fpath.join("_edict"), out.stdout).unwrap();
        let load = if from_fpath {
            format!(
                "fpath=({} $fpath); autoload -Uz compinit; compinit -u -D",
                fpath.display()
            )
        } else {
            "autoload -Uz compinit; compinit -u -D; source <(edict completions zsh)".to_string()
        };
        // compadd is watched, not replaced: every candidate is logged, then zsh's own
        // compadd gets them.
        let init = format!(
            "{load}; compadd() {{ local a; local -i arrays=0; for a in \"$@\"; do if [[ $a == -a ]]; then arrays=1; elif (( arrays )) && [[ $a != -* ]]; then print -rl -- \"${{(@)${{(@P)a}}/#/OFFERED }}\" >> {log}; fi; done; builtin compadd \"$@\" }}; line() {{ print -r -- \"LINE<$BUFFER>\" >> {log} }}; zle -N line; bindkey '^Xb' line"
        );
        self.typed("zsh -f -i", &init, keys)
    }
}

fn has(offered: &[String], words: &[&str]) -> bool {
    words.iter().all(|w| offered.iter().any(|o| o == w))
}

#[test]
fn host_candidates_come_from_ssh_config_includes_and_the_pool() {
    let w = world();
    let fish = w.fish("edict ");
    let expected = [
        "auto",
        "all",
        "machines",
        "doctor",
        "gc",
        "forget",
        "man",
        "completions",
        "builder",
        "other",
        "poolbox",
    ];
    assert!(has(&fish, &expected), "{fish:?}");
    assert!(
        !fish.iter().any(|o| o.contains('*') || o.contains("bad")),
        "{fish:?}"
    );
    let (_, zsh) = w.zsh("edict ", true);
    assert!(has(&zsh, &expected), "{zsh:?}");
    assert_eq!(w.bash("edict oth", false), "edict other ");
    assert_eq!(w.bash("edict poo", true), "edict poolbox ");
    // After a comma: the next host of a list; after a user, the host.
    assert_eq!(w.fish("edict builder,oth"), ["builder,other"]);
    assert_eq!(w.bash("edict me@oth", false), "edict me@other ");
    assert_eq!(
        w.bash("edict builder,me@oth", true),
        "edict builder,me@other "
    );
    assert_eq!(w.zsh("edict me@oth", true).0, "edict me@other ");
    // `-F FILE` in the ssh options is the only config, as for ssh.
    let out = w
        .in_fish("complete -C 'edict '")
        .env(
            "NIX_SSHOPTS",
            format!("-F {}", w.home.join("only_config").display()),
        )
        .output()
        .unwrap();
    let out = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.contains("lonely\t") && !out.contains("builder\t"),
        "{out}"
    );
}

#[test]
fn nix_subcommands_complete_as_for_nix() {
    let w = world();
    let fish = w.fish("edict builder nix bu");
    assert!(has(&fish, &["build", "bundle"]), "{fish:?}");
    let (line, zsh) = w.zsh("edict builder nix bu", false);
    assert!(has(&zsh, &["build", "bundle"]), "{zsh:?}");
    assert_eq!(line, "edict builder nix bu");
    assert_eq!(
        w.bash("edict builder nix bui", false),
        "edict builder nix build "
    );
    // nix's flags, after edict's own options.
    let fish = w.fish("edict -v --compress never builder nix build --rebu");
    assert_eq!(fish, ["--rebuild"]);
}

#[test]
fn flake_attributes_come_from_the_local_flake() {
    let w = world();
    // `nix build .#`: the packages (the app is not buildable).
    let fish = w.fish("edict builder nix build .#");
    assert!(has(&fish, &[".#default", ".#hello"]), "{fish:?}");
    assert!(!fish.iter().any(|o| o == ".#greet"), "{fish:?}");
    let (_, zsh) = w.zsh("edict builder nix build .#", true);
    assert!(has(&zsh, &[".#default", ".#hello"]), "{zsh:?}");
    // An attribute path takes no space after it.
    assert_eq!(
        w.bash("edict builder nix build .#hel", true),
        "edict builder nix build .#hello"
    );
    // The shorthand `edict HOST .#app` is `nix run`: apps and packages.
    let fish = w.fish("edict builder .#");
    assert!(has(&fish, &[".#greet", ".#hello"]), "{fish:?}");
    assert_eq!(w.bash("edict builder .#gr", false), "edict builder .#greet");
    let (line, _) = w.zsh("edict builder .#gr", false);
    assert_eq!(line, "edict builder .\\#greet");
    // HOST left out: the pool chooses; the rest completes the same.
    assert_eq!(w.fish("edict nix build .#hel"), [".#hello"]);
    // With flakes off in nix.conf here too: edict turns them on there, and here to ask.
    let out = w
        .command("edict")
        .env("NIX_CONFIG", "flake-registry = /dev/null\nsubstituters =\n")
        .args([
            "--get-completions",
            "4",
            "edict",
            "builder",
            "nix",
            "build",
            ".#hel",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "attrs\n.#hello\t\n");
}

#[test]
fn edicts_own_options_and_their_values() {
    let w = world();
    assert!(has(
        &w.fish("edict --"),
        &["--sync", "--builders", "--keep-connection"]
    ));
    let fish = w.fish("edict --compress a");
    assert!(
        has(&fish, &["always", "auto"]) && fish.len() == 2,
        "{fish:?}"
    );
    // `--sync=HOST`: bash splits the word at `=`; with bash-completion or without, it
    // completes the host after it.
    assert_eq!(w.bash("edict --sync=bui", true), "edict --sync=builder ");
    assert_eq!(w.bash("edict --sync=bui", false), "edict --sync=builder ");
    assert_eq!(w.zsh("edict --sync=bui", true).0, "edict --sync=builder ");
    assert_eq!(w.fish("edict --sync=bui"), ["--sync=builder"]);
    // `--builders @FILE`.
    assert_eq!(w.fish("edict --builders @fla"), ["@flake.nix"]);
    assert_eq!(
        w.bash("edict --builders @fla", false),
        "edict --builders @flake.nix"
    );
    // A command's own options, and its hosts.
    assert_eq!(w.fish("edict doctor --js"), ["--json"]);
    assert!(has(&w.fish("edict doctor "), &["builder", "poolbox"]));
    // A host already named is not offered again.
    assert!(
        !w.fish("edict doctor builder ")
            .contains(&"builder".to_string())
    );
    assert!(
        !w.fish("edict builder,")
            .contains(&"builder,builder".to_string())
    );
    // A lone `-`: the short options too.
    assert!(has(&w.fish("edict -"), &["-v", "-q", "--verbose"]));
    assert_eq!(
        w.bash("edict completions z", false),
        "edict completions zsh "
    );
    assert_eq!(
        w.fish("edict machines --system aarch64-d"),
        ["aarch64-darwin"]
    );
    // nix-build takes files.
    assert_eq!(
        w.bash("edict builder nix-build fla", false),
        "edict builder nix-build flake.nix "
    );
}

#[test]
fn the_scripts_register_for_edict() {
    let w = world();
    let out = w
        .command("bash")
        .args([
            "--norc",
            "-c",
            "eval \"$(edict completions bash)\" && complete -p edict",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "complete -F _edict edict\n"
    );
    let out = w.in_fish("complete -c edict").output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("__edict_complete"),
        "{out:?}"
    );
    let out = w
        .command("edict")
        .args(["completions", "zsh"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("#compdef edict\n"));
    let out = w
        .command("edict")
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bash, zsh, fish"),
        "{out:?}"
    );
}

#[test]
fn awkward_words_the_cursor_and_where_edict_is() {
    let w = world();
    let files = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let flake_before = files(&w.flake);
    // A candidate with a blank is one word on the line.
    assert_eq!(
        w.bash("edict --builders @sp", false),
        "edict --builders @sp\\ ace.nix"
    );
    assert_eq!(w.fish("edict --builders @sp"), ["@sp ace.nix"]);
    assert_eq!(
        w.zsh("edict --builders @sp", true).0,
        "edict --builders @sp\\ ace.nix"
    );
    // The word under the cursor counts up to the cursor: `bu| nix` and `bu|XX nix`
    // complete `bu`.
    for bc in [false, true] {
        assert_eq!(
            w.bash("edict bu nix\x02\x02\x02\x02", bc),
            "edict builder nix"
        );
        let inside = "edict buXX nix\x02\x02\x02\x02\x02\x02";
        assert_eq!(w.bash(inside, bc), "edict builderXX nix");
    }
    // A word opened with a quote completes as the same word unquoted.
    assert!(has(&w.fish("edict builder nix build '.#hel"), &[".#hello"]));
    assert!(has(&w.fish("edict builder nix-build 'sp"), &["sp ace.nix"]));
    let (line, _) = w.zsh("edict builder nix build '.#hel", true);
    assert!(
        line.starts_with("edict builder nix build '.#hello"),
        "{line}"
    );
    // edict typed as `~/bin/edict`.
    assert_eq!(w.bash("~/bin/edict oth", false), "~/bin/edict other ");
    assert_eq!(w.zsh("~/bin/edict oth", true).0, "~/bin/edict other ");
    let out = w
        .in_fish("complete -c '~/bin/edict' -w edict; complete -C '~/bin/edict oth'")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("other\t"),
        "{out:?}"
    );
    // The protocol itself: quiet on stderr, and nothing here written by a TAB.
    for words in [
        &["2", "edict", "--compress", ""][..],
        &["1", "edict", ""],
        &["3", "edict", "builder", "nix", "bu"],
        &["4", "edict", "builder", "nix", "build", ".#"],
    ] {
        let out = w
            .command("edict")
            .arg("--get-completions")
            .args(words)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{words:?}: {out:?}"
        );
    }
    let out = w
        .command("edict")
        .args(["--get-completions", "2", "edict", "--compress", "n"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "normal\nnever\tOn no run\n"
    );
    assert_eq!(files(&w.flake), flake_before);
    // No edict state made (nix, asked, keeps its own caches, as it does for plain nix).
    for dir in ["run/edict", ".cache/edict"] {
        assert!(!w.home.join(dir).exists(), "{dir}");
    }
}
