//! What edict needs of rsync, on either side: its version, judged once for the pipeline and
//! the doctor.

use crate::exec::Cmd;
use crate::problem::{Kind, Problem};
use anyhow::Result;

/// Why the rsync whose `rsync --version` begins with `line` cannot do what edict asks of
/// it, or `None` when it can. edict needs rsync ≥ 3.1.3: `--modify-window=-1` (times to
/// the nanosecond), `--from0 --files-from`, `--info`; openrsync (macOS's /usr/bin/rsync
/// since 15.4) and rsync 2.6.9 (older macOS) lack them and fail on the options, or worse,
/// ignore the time precision.
pub fn unfit(line: &str) -> Option<String> {
    if line.contains("openrsync") {
        return Some(
            "openrsync lacks options edict uses (--from0, --files-from, --modify-window=-1)".into(),
        );
    }
    // `3.2.7`, `v3.2.3` (Arch's), `3.4.1dev`: the leading digits of each part.
    let said = version(line);
    let v = numbers(&said);
    let old = matches!(v.as_slice(), [a, b, c, ..] if (*a, *b, *c) < (3, 1, 3))
        || matches!(v.as_slice(), [a, b] if (*a, *b) < (3, 2));
    old.then(|| {
        format!(
            "rsync {said} is older than 3.1.3, which edict needs (--modify-window=-1 compares times to the nanosecond)"
        )
    })
}

/// The numbers of a version, the leading digits of each part (`3.2.7` → [3, 2, 7],
/// `v3.2.3` → [3, 2, 3], `3.4.1dev` → [3, 4, 1]).
pub fn numbers(version: &str) -> Vec<u32> {
    version
        .trim_start_matches('v')
        .split('.')
        .map_while(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// The version in `rsync --version`'s first line (`rsync  version 3.2.7  protocol …`).
pub fn version(line: &str) -> String {
    line.split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .unwrap_or(line)
        .to_string()
}

/// How to get an rsync edict can use: here (`host` None) or on `host`.
pub fn fix(host: Option<&str>) -> String {
    match host {
        None => "install rsync ≥ 3.1.3 here and put it first on PATH (`nix profile install nixpkgs#rsync`, or `brew install rsync` on a Mac); the edict package from its flake brings its own".into(),
        Some(h) => format!(
            "install rsync ≥ 3.1.3 on {h}: `nix profile install nixpkgs#rsync`, `brew install rsync` or `apt-get install rsync` (edict looks on the PATH of a non-interactive login, then in the Nix profiles and Homebrew's directories)"
        ),
    }
}

/// This machine's rsync's `--version` line, once [`check_here`] found it usable.
static HERE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// This machine's rsync's `--version` line (empty before [`check_here`]).
pub fn here() -> &'static str {
    HERE.get().map_or("", String::as_str)
}

/// Checks this machine's rsync before anything is sent (the copy a Mac has cannot be used).
pub fn check_here(host: &str) -> Result<()> {
    let problem = |what: String| Problem {
        host: host.to_string(),
        step: "syncing sources".into(),
        what,
        said: None,
        fix: fix(None),
        kind: Kind::Edict,
    };
    let out = Cmd::new("rsync")
        .arg("--version")
        .output()
        .map_err(|_| problem("there is no rsync on this machine".into()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or_default();
    if let Some(why) = unfit(line) {
        return Err(problem(format!(
            "the rsync on this machine ({}) cannot be used: {why}",
            line.trim()
        ))
        .into());
    }
    let _ = HERE.set(line.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsync_versions() {
        assert_eq!(
            version("rsync  version 3.2.7  protocol version 31"),
            "3.2.7"
        );
        assert!(unfit("rsync  version 3.2.7  protocol version 31").is_none());
        assert!(unfit("rsync  version 3.1.3  protocol version 31").is_none());
        assert!(unfit("rsync  version 3.1.2  protocol version 31").is_some());
        assert!(unfit("rsync  version v3.2.3  protocol version 31").is_none());
        assert!(unfit("rsync  version 3.4.1dev  protocol version 32").is_none());
        // What a Mac has: rsync 2.6.9, or openrsync.
        assert!(unfit("rsync  version 2.6.9  protocol version 29").is_some());
        assert!(unfit("openrsync: protocol version 29").is_some());
    }
}
