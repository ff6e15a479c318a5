//! Shell completion. `edict completions SHELL` prints a small script for bash, zsh or fish.
//! On TAB the script runs `edict --get-completions INDEX edict WORD…` (every word on the
//! line, INDEX the one under the cursor, cut at the cursor) and edict answers in nix's own
//! completion protocol (nix's `NIX_GET_COMPLETIONS`, but an option rather than a variable:
//! an edict older than the script refuses it, where it would ignore a variable and run
//! the command on the line). The answer is a
//! line `normal`, `filenames` or `attrs`, then one `word<TAB>description` line per
//! candidate. So the three scripts stay thin, edict's command line is known in one place
//! (clap's definition), and after `edict HOST nix` the answer is nix's own
//! (`NIX_GET_COMPLETIONS`): subcommands, flags and `.#attr`, evaluated here as nix would.

use crate::cli::{Cli, Shell, host_left_out, looks_installable};
use clap::CommandFactory as _;

/// The option the scripts give first, with the index of the word to complete and the words
/// on the line (hidden: not for people).
pub const OPTION: &str = "--get-completions";

/// The script that `edict completions SHELL` prints.
pub fn script(shell: Shell) -> &'static str {
    match shell {
        Shell::Bash => include_str!("completions/edict.bash"),
        Shell::Zsh => include_str!("completions/_edict"),
        Shell::Fish => include_str!("completions/edict.fish"),
    }
}

/// How the shell treats the candidates: as words, as file names (and it adds the files it
/// finds), or as attribute paths (no space after one, the user may go on with `.`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Normal,
    Filenames,
    Attrs,
}

/// Where the word under the cursor stands in edict's command line.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// An option of edict's, or of its command `sub`.
    Option {
        sub: Option<String>,
    },
    /// The value of `option`; `before` is the part of the word before the value
    /// (`--sync=`), which every candidate keeps.
    Value {
        option: String,
        before: String,
    },
    /// HOST's place: a host, one of edict's commands, or `nix` with HOST left out.
    Host,
    /// A host that `doctor`, `gc` or `forget` acts on; `typed`: the ones already there.
    HostArgument {
        sub: String,
        typed: Vec<String>,
    },
    /// Right after HOST: the program (`nix`, `nix-build`, `nix-shell`).
    Program,
    /// nix's own command line: `words[at]` is `nix`, the cursor is at `words[at + index]`.
    Nix {
        at: usize,
        index: usize,
    },
    /// The installable of the shorthand `edict HOST .#app`: what `nix run` would complete.
    Installable,
    /// Arguments that are files, as far as edict knows (nix-build's, the app's).
    Files,
    Nothing,
}

/// The position of the word under the cursor, and the `--builders` the line gives (for
/// the pool's machine names).
#[derive(Debug, PartialEq, Eq)]
struct Located {
    place: Place,
    builders: Option<String>,
}

/// Answers the script: the index, and the words on the line (the first is edict itself).
/// Prints the answer; completion never fails loudly.
pub fn main(index: &str, words: Vec<String>) -> std::process::ExitCode {
    use std::io::Write as _;
    let mut words = words;
    let index = index
        .trim()
        .parse::<usize>()
        .map_or(words.len(), |i| i.min(words.len()));
    // The word under the cursor may be past the last one given: it is empty.
    if index == words.len() {
        words.push(String::new());
    }
    let answer = answer(&words, index);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&answer);
    let _ = out.flush();
    std::process::ExitCode::SUCCESS
}

/// The whole answer, in nix's protocol.
fn answer(words: &[String], index: usize) -> Vec<u8> {
    let cur = words.get(index).map(String::as_str).unwrap_or("");
    let located = locate(words, index);
    let (kind, items) = match located.place {
        Place::Nix { at, index } => return ask_nix(&words[at + 1..], index),
        Place::Installable => {
            // The shorthand is `nix run INSTALLABLE`.
            let line = ["run".to_string(), cur.to_string()];
            return ask_nix(&line, 2);
        }
        Place::Option { sub } => (Kind::Normal, options(sub.as_deref(), cur == "-")),
        Place::Value { option, before } => {
            let value = cur.strip_prefix(before.as_str()).unwrap_or(cur);
            let (kind, items) = values(&option, value, located.builders.as_deref());
            let items = items
                .into_iter()
                .map(|(w, d)| (format!("{before}{w}"), d))
                .collect();
            (kind, items)
        }
        Place::Host => (Kind::Normal, host_place(cur, located.builders.as_deref())),
        Place::HostArgument { sub, typed } => {
            let mut items = hosts(located.builders.as_deref());
            items.retain(|(h, _)| !typed.contains(h));
            if sub == "forget" {
                if let Ok(kept) = crate::keep::all() {
                    let kept = kept.into_iter().map(|(_, label)| label);
                    items.splice(0..0, kept.map(|l| (l, "a kept connection".to_string())));
                }
            }
            (Kind::Normal, items)
        }
        Place::Program => (Kind::Normal, programs()),
        Place::Files => (Kind::Filenames, Vec::new()),
        Place::Nothing => (Kind::Normal, Vec::new()),
    };
    render(kind, cur, items)
}

/// The protocol's text: the kind, then the candidates that start with `cur`, each once.
fn render(kind: Kind, cur: &str, items: Vec<(String, String)>) -> Vec<u8> {
    let mut out = String::from(match kind {
        Kind::Normal => "normal\n",
        Kind::Filenames => "filenames\n",
        Kind::Attrs => "attrs\n",
    });
    let mut seen = std::collections::BTreeSet::new();
    for (word, description) in items {
        if !word.starts_with(cur) || !seen.insert(word.clone()) {
            continue;
        }
        // One line per candidate: no tab or newline inside; descriptions kept short.
        let word = word.replace(['\t', '\n'], " ");
        let description = short_description(&description);
        out.push_str(&format!("{word}\t{description}\n"));
    }
    out.into_bytes()
}

/// The gist of a help text: up to its first `:`, `;`, `,` or ` (`, on one line.
fn gist(help: &str) -> String {
    let end = [":", ";", ",", " (", ". "]
        .iter()
        .filter_map(|s| help.find(s))
        .min()
        .unwrap_or(help.len());
    short_description(&help[..end])
}

/// A description's first sentence, on one line, at most 80 characters.
fn short_description(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let first = match text.find(". ") {
        Some(i) => &text[..i],
        None => text.trim_end_matches('.'),
    };
    if first.chars().count() > 80 {
        let cut: String = first.chars().take(79).collect();
        format!("{cut}…")
    } else {
        first.to_string()
    }
}

/// Reads edict's line up to the cursor (pure: unit-tested).
fn locate(words: &[String], index: usize) -> Located {
    let cmd = Cli::command();
    let cur = words.get(index).map(String::as_str).unwrap_or("");
    let mut builders = None;
    // edict's options, before HOST.
    let mut i = 1;
    while i < index {
        let word = &words[i];
        if !word.starts_with('-') || word == "-" {
            break;
        }
        let (name, inline) = match word.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (word.as_str(), None),
        };
        let separate_value = inline.is_none() && takes_separate_value(&cmd, name);
        let value = if separate_value {
            words.get(i + 1).map(String::as_str)
        } else {
            inline
        };
        if name == "--builders" {
            builders = value.map(str::to_string);
        }
        if separate_value && i + 1 == index {
            return Located {
                place: Place::Value {
                    option: name.to_string(),
                    before: String::new(),
                },
                builders,
            };
        }
        i += if separate_value { 2 } else { 1 };
    }
    let with = |place| Located {
        place,
        builders: builders.clone(),
    };
    if i >= index {
        if cur.starts_with('-') {
            if let Some((name, _)) = cur.split_once('=') {
                return with(Place::Value {
                    option: name.to_string(),
                    before: format!("{name}="),
                });
            }
            return with(Place::Option { sub: None });
        }
        if looks_installable(cur) {
            return with(Place::Installable);
        }
        return with(Place::Host);
    }
    let host = words[i].as_str();
    if let Some(sub) = cmd.find_subcommand(host) {
        return with(sub_place(
            sub,
            &words[i + 1..=index.min(words.len() - 1)],
            cur,
        ));
    }
    // With HOST left out the program is where HOST would be.
    let program_at = if host_left_out(host) { i } else { i + 1 };
    if index == program_at {
        if looks_installable(cur) {
            return with(Place::Installable);
        }
        return with(Place::Program);
    }
    let program = words.get(program_at).map(String::as_str).unwrap_or("");
    let place = match program {
        "nix" => Place::Nix {
            at: program_at,
            index: index - program_at,
        },
        "nix-build" | "nix-shell" => Place::Files,
        p if crate::cli::refused_legacy(p) => Place::Nothing,
        // The shorthand: INSTALLABLE, then the app's own arguments.
        _ => Place::Files,
    };
    with(place)
}

/// Where the cursor is among the words after one of edict's commands (`words` ends with the
/// word under the cursor).
fn sub_place(sub: &clap::Command, words: &[String], cur: &str) -> Place {
    let name = sub.get_name().to_string();
    let before_cursor = &words[..words.len().saturating_sub(1)];
    if let Some(previous) = before_cursor.last() {
        if previous.starts_with("--")
            && !previous.contains('=')
            && takes_separate_value(sub, previous)
        {
            return Place::Value {
                option: format!("{name} {previous}"),
                before: String::new(),
            };
        }
    }
    if cur.starts_with('-') {
        if let Some((option, _)) = cur.split_once('=') {
            return Place::Value {
                option: format!("{name} {option}"),
                before: format!("{option}="),
            };
        }
        return Place::Option { sub: Some(name) };
    }
    match name.as_str() {
        "doctor" | "gc" | "forget" => Place::HostArgument {
            sub: name,
            typed: before_cursor
                .iter()
                .filter(|w| !w.starts_with('-'))
                .cloned()
                .collect(),
        },
        // Its one argument, SHELL: by its id, as an option is by its name.
        "completions" if before_cursor.is_empty() => Place::Value {
            option: "completions shell".to_string(),
            before: String::new(),
        },
        _ => Place::Nothing,
    }
}

/// Whether `--name` (or `-n`) of `cmd` takes its value as the next word.
fn takes_separate_value(cmd: &clap::Command, name: &str) -> bool {
    find_arg(cmd, name).is_some_and(|a| a.get_action().takes_values() && !a.is_require_equals_set())
}

fn find_arg<'a>(cmd: &'a clap::Command, name: &str) -> Option<&'a clap::Arg> {
    if let Some(long) = name.strip_prefix("--") {
        cmd.get_arguments().find(|a| a.get_long() == Some(long))
    } else {
        let short = name.strip_prefix('-')?.chars().next()?;
        cmd.get_arguments().find(|a| a.get_short() == Some(short))
    }
}

/// Long options of edict (or of its command `sub`), with their help.
/// With `short`, the one-letter forms too (`-v`, for a lone `-`).
fn options(sub: Option<&str>, short: bool) -> Vec<(String, String)> {
    // Built, so that clap's own --help and --version are among the arguments.
    let mut cmd = Cli::command();
    cmd.build();
    let cmd = match sub {
        Some(name) => match cmd.find_subcommand(name) {
            Some(s) => s,
            None => return Vec::new(),
        },
        None => &cmd,
    };
    let mut items = Vec::new();
    for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let help = a
            .get_help()
            .map(|h| gist(&h.to_string()))
            .unwrap_or_default();
        if let Some(c) = a.get_short().filter(|_| short) {
            items.push((format!("-{c}"), help.clone()));
        }
        if let Some(long) = a.get_long() {
            items.push((format!("--{long}"), help));
        }
    }
    items
}

/// Candidates for the value of `option` (`--compress`, or `doctor --json` style
/// `SUB --option` for a command's own), given what is typed of it.
fn values(option: &str, value: &str, builders: Option<&str>) -> (Kind, Vec<(String, String)>) {
    let cmd = Cli::command();
    let (cmd, name) = match option.split_once(' ') {
        Some((sub, name)) => match cmd.find_subcommand(sub) {
            Some(s) => (s.clone(), name),
            None => return (Kind::Normal, Vec::new()),
        },
        None => (cmd, option),
    };
    match name {
        "--sync" => return (Kind::Normal, hosts(builders)),
        "--builders" => return at_files(value),
        "--keep-connection" => {
            let items = [
                ("off", "close the connection with the run"),
                ("30s", ""),
                ("10m", "the default"),
                ("1h", ""),
            ];
            let items = items.iter().map(|(w, d)| (w.to_string(), d.to_string()));
            return (Kind::Normal, items.collect());
        }
        "--required-features" => return (Kind::Normal, features(value, builders)),
        "--system" => {
            let mut systems: std::collections::BTreeSet<String> = [
                "x86_64-linux",
                "aarch64-linux",
                "x86_64-darwin",
                "aarch64-darwin",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            for m in pool(builders) {
                systems.extend(m.system_types);
            }
            let items = systems.into_iter().map(|s| (s, String::new()));
            return (Kind::Normal, items.collect());
        }
        _ => {}
    }
    let positional = || cmd.get_arguments().find(|a| a.get_id() == name);
    let Some(arg) = find_arg(&cmd, name).or_else(positional) else {
        return (Kind::Normal, Vec::new());
    };
    let items = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| {
            let help = v.get_help().map(|h| h.to_string()).unwrap_or_default();
            (v.get_name().to_string(), help)
        })
        .collect();
    (Kind::Normal, items)
}

/// `--builders @FILE`: files, written after `@`.
fn at_files(value: &str) -> (Kind, Vec<(String, String)>) {
    let Some(path) = value.strip_prefix('@').or(value.is_empty().then_some("")) else {
        return (Kind::Normal, Vec::new());
    };
    let (dir, stem) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    let listing = if dir.is_empty() { "." } else { dir };
    let mut items = Vec::new();
    if let Ok(entries) = std::fs::read_dir(listing) {
        for e in entries.flatten() {
            // A name that is not UTF-8 cannot be written back exactly: left out.
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if !name.starts_with(stem) || (name.starts_with('.') && !stem.starts_with('.')) {
                continue;
            }
            let slash = if e.path().is_dir() { "/" } else { "" };
            items.push((format!("@{dir}{name}{slash}"), String::new()));
        }
    }
    items.sort();
    // A directory needs no space after it, so the user can go on into it.
    (Kind::Attrs, items)
}

/// `--required-features a,b,<TAB>`: the features the pool's machines have, and the ones
/// nixpkgs uses, after what is typed.
fn features(value: &str, builders: Option<&str>) -> Vec<(String, String)> {
    let before = match value.rfind(',') {
        Some(i) => &value[..=i],
        None => "",
    };
    let mut names: std::collections::BTreeSet<String> =
        ["kvm", "big-parallel", "nixos-test", "benchmark"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    for m in pool(builders) {
        names.extend(m.supported_features);
        names.extend(m.mandatory_features);
    }
    names
        .into_iter()
        .map(|n| (format!("{before}{n}"), String::new()))
        .collect()
}

/// Right after HOST.
fn programs() -> Vec<(String, String)> {
    [
        ("nix", "a nix command: edict HOST nix build .#x"),
        ("nix-build", "the legacy nix-build"),
        ("nix-shell", "the legacy nix-shell"),
    ]
    .iter()
    .map(|(w, d)| (w.to_string(), d.to_string()))
    .collect()
}

/// HOST's place: edict's words, its commands, then every host this user can name. After a
/// comma (`big,sm`) or a user (`me@b`), hosts only, keeping what comes before.
fn host_place(cur: &str, builders: Option<&str>) -> Vec<(String, String)> {
    let scheme = ["ssh://", "ssh-ng://"]
        .iter()
        .find(|s| cur.starts_with(**s));
    if let Some(i) = cur.rfind([',', '@']).or(scheme.map(|s| s.len() - 1)) {
        let before = &cur[..=i];
        // A host already in the list is not offered again.
        let listed: Vec<&str> = before.split(',').map(crate::ssh::alias_of).collect();
        return hosts(builders)
            .into_iter()
            .filter(|(w, _)| !listed.contains(&w.as_str()) || before.ends_with('@'))
            .map(|(w, d)| (format!("{before}{w}"), d))
            .collect();
    }
    let mut items = vec![
        (
            crate::cli::AUTO.to_string(),
            "the pool's best machine for the job".to_string(),
        ),
        (
            "all".to_string(),
            "every machine of the pool at once".to_string(),
        ),
    ];
    let cmd = Cli::command();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let about = sub.get_about().map(|a| gist(&a.to_string()));
        items.push((sub.get_name().to_string(), about.unwrap_or_default()));
    }
    items.push((
        "nix".to_string(),
        "HOST left out: the pool's best machine".to_string(),
    ));
    items.extend(hosts(builders));
    items
}

/// Every host this user names: the `Host` entries of their ssh config and the pool's
/// machines.
fn hosts(builders: Option<&str>) -> Vec<(String, String)> {
    let mut items: Vec<(String, String)> = crate::sshconfig::hosts()
        .into_iter()
        .map(|h| {
            let description = match h.hostname {
                Some(name) => format!("ssh config: {name}"),
                None => "ssh config".to_string(),
            };
            (h.name, description)
        })
        .collect();
    for m in pool(builders) {
        let systems = m.system_types.iter().cloned().collect::<Vec<_>>().join(" ");
        items.push((m.name, format!("pool: {systems}")));
    }
    items
}

/// The pool's machines, or none when it cannot be read (completion stays quiet).
fn pool(builders: Option<&str>) -> Vec<crate::pool::Machine> {
    crate::pool::load_or_explain(builders)
        .map(|(machines, _)| machines)
        .unwrap_or_default()
}

/// nix's own answer for `nix WORDS…` with the cursor at `index` (1: the word after `nix`),
/// passed through as it is; a bare `normal` when nix cannot answer. With flakes on, as edict
/// runs nix on HOST whatever nix.conf says here.
fn ask_nix(words: &[String], index: usize) -> Vec<u8> {
    let flags = crate::remote::FLAKE_FLAGS;
    let out = crate::exec::Cmd::new("nix")
        .env("NIX_GET_COMPLETIONS", (index + flags.len()).to_string())
        .args(flags)
        .args(words.iter().map(String::as_str))
        .output();
    match out {
        Ok(out)
            if [&b"normal"[..], b"filenames", b"attrs"]
                .iter()
                .any(|k| out.stdout.starts_with(k)) =>
        {
            out.stdout
        }
        _ => b"normal\n".to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: &str) -> Place {
        let mut words: Vec<String> = line.split(' ').map(str::to_string).collect();
        let index = words.len() - 1;
        if words[index] == "_" {
            words[index] = String::new();
        }
        locate(&words, index).place
    }

    #[test]
    fn each_place_on_the_line() {
        assert_eq!(at("edict _"), Place::Host);
        assert_eq!(at("edict bui"), Place::Host);
        assert_eq!(at("edict -v --compress never bui"), Place::Host);
        assert_eq!(at("edict --sy"), Place::Option { sub: None });
        let value = |o: &str, b: &str| Place::Value {
            option: o.to_string(),
            before: b.to_string(),
        };
        assert_eq!(at("edict --compress _"), value("--compress", ""));
        assert_eq!(at("edict --sync=b"), value("--sync", "--sync="));
        // --sync takes no separate value: the next word is HOST.
        assert_eq!(at("edict --sync b"), Place::Host);
        assert_eq!(
            at("edict --builders @m b nix _"),
            Place::Nix { at: 4, index: 1 }
        );
        assert_eq!(at("edict b _"), Place::Program);
        assert_eq!(at("edict b .#"), Place::Installable);
        assert_eq!(at("edict .#"), Place::Installable);
        assert_eq!(at("edict b nix bu"), Place::Nix { at: 2, index: 1 });
        assert_eq!(at("edict b nix build .#"), Place::Nix { at: 2, index: 2 });
        // HOST left out.
        assert_eq!(at("edict nix build .#"), Place::Nix { at: 1, index: 2 });
        assert_eq!(at("edict b nix-build _"), Place::Files);
        assert_eq!(at("edict b .#app --flag _"), Place::Files);
        assert_eq!(at("edict b nix-env _"), Place::Nothing);
        assert_eq!(at("edict nix-env _"), Place::Nothing);
        // edict's commands.
        assert_eq!(
            at("edict doctor _"),
            Place::HostArgument {
                sub: "doctor".into(),
                typed: Vec::new()
            }
        );
        assert_eq!(
            at("edict doctor --j"),
            Place::Option {
                sub: Some("doctor".into())
            }
        );
        assert_eq!(at("edict gc --older-than _"), value("gc --older-than", ""));
        assert_eq!(
            at("edict machines --system _"),
            value("machines --system", "")
        );
        assert_eq!(at("edict completions _"), value("completions shell", ""));
        assert_eq!(at("edict completions bash _"), Place::Nothing);
        assert_eq!(at("edict machines _"), Place::Nothing);
    }

    #[test]
    fn the_builders_on_the_line_are_the_pool() {
        let words: Vec<String> = ["edict", "--builders=@m", "_"].map(String::from).to_vec();
        assert_eq!(locate(&words, 2).builders.as_deref(), Some("@m"));
        let words: Vec<String> = ["edict", "--builders", "ssh://a", ""]
            .map(String::from)
            .to_vec();
        assert_eq!(locate(&words, 3).builders.as_deref(), Some("ssh://a"));
    }

    fn text(answer: Vec<u8>) -> String {
        String::from_utf8(answer).unwrap()
    }

    #[test]
    fn answers_in_nix_protocol_filtered_by_what_is_typed() {
        let words: Vec<String> = ["edict", "--com"].map(String::from).to_vec();
        let out = text(answer(&words, 1));
        assert_eq!(out.lines().next(), Some("normal"));
        assert!(
            out.contains("--compress\tWhen what crosses the link is compressed\n"),
            "{out}"
        );
        assert!(!out.contains("--sync"), "{out}");
        let words: Vec<String> = ["edict", "--compress", "a"].map(String::from).to_vec();
        let out = text(answer(&words, 2));
        assert!(
            out.contains("\nalways\t") && out.contains("\nauto\t"),
            "{out}"
        );
        assert!(!out.contains("never"), "{out}");
        let words: Vec<String> = ["edict", "completions", ""].map(String::from).to_vec();
        assert_eq!(text(answer(&words, 2)), "normal\nbash\t\nzsh\t\nfish\t\n");
        let words: Vec<String> = ["edict", "doctor", "--"].map(String::from).to_vec();
        let out = text(answer(&words, 2));
        assert!(
            out.contains("--json\t") && out.contains("--verbose\t"),
            "{out}"
        );
    }

    #[test]
    fn hosts_after_a_comma_a_user_or_a_scheme_keep_what_comes_before() {
        let pool = Some("ssh://box x86_64-linux");
        let words = |cur: &str| -> Vec<String> {
            host_place(cur, pool).into_iter().map(|(w, _)| w).collect()
        };
        assert!(words("a,").contains(&"a,box".to_string()));
        assert!(words("me@").contains(&"me@box".to_string()));
        assert!(words("ssh://").contains(&"ssh://box".to_string()));
        assert!(words("ssh://me@").contains(&"ssh://me@box".to_string()));
        assert!(!words("a,").contains(&"a,auto".to_string()));
        assert!(!words("box,").contains(&"box,box".to_string()));
        assert!(words("box,me@").contains(&"box,me@box".to_string()));
        assert!(words("").contains(&"auto".to_string()));
    }

    #[test]
    fn descriptions_are_one_short_line() {
        assert_eq!(gist("Show the pool, which machine (x)"), "Show the pool");
        assert_eq!(gist("Print it (roff): `x`"), "Print it");
        assert_eq!(
            short_description("Print the same\n as JSON."),
            "Print the same as JSON"
        );
        assert_eq!(short_description("First. Second."), "First");
        assert_eq!(short_description(&"x".repeat(100)).chars().count(), 80);
    }
}
