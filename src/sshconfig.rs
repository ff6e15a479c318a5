//! The user's ssh config, as far as edict reads it: the `Host` names (for completion and
//! for "did you mean") and the `-F FILE` edict's ssh options give. ssh itself decides how
//! to connect (`ssh -G`); nothing here does.

use std::path::{Path, PathBuf};

/// The ssh options for every step: EDICT_SSH_OPTS, else NIX_SSHOPTS (split on blanks, as
/// nix does).
pub fn ssh_opts_from_env() -> String {
    std::env::var("EDICT_SSH_OPTS")
        .or_else(|_| std::env::var("NIX_SSHOPTS"))
        .unwrap_or_default()
}

/// The `-F FILE` of the ssh options: the one ssh config ssh then reads.
pub fn config_option() -> Option<String> {
    let opts = ssh_opts_from_env();
    let mut words = opts.split_whitespace();
    while let Some(w) = words.next() {
        match w.strip_prefix("-F") {
            Some("") => return words.next().map(str::to_string),
            Some(f) => return Some(f.to_string()),
            None => {}
        }
    }
    None
}

/// Where the ssh config that edict's ssh reads is, for a fix: the `-F` file, else the
/// user's.
pub fn config_file() -> String {
    config_option().unwrap_or_else(|| "~/.ssh/config".to_string())
}

/// Every plain `Host` name of the configs ssh reads here.
pub fn hosts() -> Vec<SshHost> {
    ssh_hosts(&ssh_configs())
}

/// The one host name of the ssh config within two edits of `name` (a typo), if exactly
/// one is nearest.
pub fn did_you_mean(name: &str) -> Option<String> {
    let mut best: Vec<(usize, String)> = hosts()
        .into_iter()
        .map(|h| (distance(name, &h.name), h.name))
        .filter(|(d, n)| *d > 0 && *d <= 2 && *d < n.chars().count().max(2))
        .collect();
    best.sort();
    match best.as_slice() {
        [(d, n), rest @ ..] if rest.first().is_none_or(|(d2, _)| d2 > d) => Some(n.clone()),
        _ => None,
    }
}

/// Levenshtein distance, by characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// A host named in an ssh config.
#[derive(Debug, PartialEq, Eq)]
pub struct SshHost {
    pub name: String,
    pub hostname: Option<String>,
}

/// The ssh config files to read, each with the directory its relative `Include`s are in:
/// `-F FILE` from edict's ssh options alone (as ssh does), else the user's and the system's.
fn ssh_configs() -> Vec<(PathBuf, PathBuf)> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let user_dir = home.join(".ssh");
    if let Some(file) = config_option() {
        return vec![(expand_tilde(&file, &home), user_dir)];
    }
    vec![
        (user_dir.join("config"), user_dir),
        (
            PathBuf::from("/etc/ssh/ssh_config"),
            PathBuf::from("/etc/ssh"),
        ),
    ]
}

fn expand_tilde(path: &str, home: &Path) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => home.join(rest),
        None if path == "~" => home.to_path_buf(),
        None => PathBuf::from(path),
    }
}

/// The plain names of `Host` lines (no `*`, `?` or `!` patterns), following `Include`s as
/// ssh does (relative to the directory given with each file, globs expanded, 16 deep).
fn ssh_hosts(files: &[(PathBuf, PathBuf)]) -> Vec<SshHost> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let mut out = Vec::new();
    for (file, dir) in files {
        read_ssh_config(file, dir, &home, 0, &mut out);
    }
    out
}

fn read_ssh_config(file: &Path, dir: &Path, home: &Path, depth: u32, out: &mut Vec<SshHost>) {
    if depth > 16 {
        return;
    }
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    // The hosts of the block being read, by index in `out`.
    let mut block: Vec<usize> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let split = line
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(line.len());
        let (keyword, rest) = line.split_at(split);
        let rest = rest.trim_start();
        let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
        match keyword.to_ascii_lowercase().as_str() {
            "host" => {
                block.clear();
                for name in ssh_words(rest) {
                    // No pattern, and nothing ssh could not take as a destination.
                    let plain = !name.is_empty()
                        && !name.contains(['*', '?', '!', '%'])
                        && !name.contains(char::is_whitespace);
                    if !plain {
                        continue;
                    }
                    match out.iter().position(|h| h.name == name) {
                        Some(i) => block.push(i),
                        None => {
                            block.push(out.len());
                            out.push(SshHost {
                                name,
                                hostname: None,
                            });
                        }
                    }
                }
            }
            "match" => block.clear(),
            "hostname" => {
                if let Some(value) = ssh_words(rest).into_iter().next() {
                    for &i in &block {
                        out[i].hostname.get_or_insert_with(|| value.clone());
                    }
                }
            }
            "include" => {
                for pattern in ssh_words(rest) {
                    let path = expand_tilde(&pattern, home);
                    let path = if path.is_absolute() {
                        path
                    } else {
                        dir.join(path)
                    };
                    let Ok(paths) = glob::glob(&path.to_string_lossy()) else {
                        continue;
                    };
                    for p in paths.flatten() {
                        read_ssh_config(&p, dir, home, depth + 1, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// An ssh config line's arguments: split at blanks, `"…"` kept whole.
fn ssh_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_config_hosts_with_includes_and_without_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("conf.d")).unwrap();
        std::fs::write(
            d.join("config"),
            "# a comment\nHost builder \"big box\" *.lan !bad\n  HostName 10.0.0.5\nHost=eq\nInclude conf.d/*.conf\nMatch host x\n  HostName nope\nHost builder\n  HostName later\ninclude missing.conf\n",
        )
        .unwrap();
        std::fs::write(d.join("conf.d/a.conf"), "host a1 a?\n").unwrap();
        std::fs::write(d.join("conf.d/b.conf"), "Host b1\nInclude ../config\n").unwrap();
        std::fs::write(d.join("conf.d/c.txt"), "Host notincluded\n").unwrap();
        let hosts = ssh_hosts(&[(d.join("config"), d.to_path_buf())]);
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        // The include of ../config loops; 16 deep it stops, each name once.
        assert_eq!(names, ["builder", "eq", "a1", "b1"]);
        assert_eq!(hosts[0].hostname.as_deref(), Some("10.0.0.5"));
        assert_eq!(hosts[1].hostname, None);
    }

    #[test]
    fn ssh_words_keep_quotes_whole() {
        assert_eq!(ssh_words(" a  \"b c\" d"), ["a", "b c", "d"]);
        assert_eq!(ssh_words(""), Vec::<String>::new());
    }

    #[test]
    fn typos_are_near() {
        assert_eq!(distance("nix82", "nix28"), 2);
        assert_eq!(distance("buidler", "builder"), 2);
        assert_eq!(distance("a", "a"), 0);
        assert_eq!(distance("", "ab"), 2);
    }
}
