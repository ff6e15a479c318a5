//! The scripts edict sends to HOST, as files in `src/scripts/` (shellchecked by the test
//! suite): each takes its data as positional parameters, never as text spliced into it,
//! and is sent as one line. `-v` shows each by its name ([`shown`]); `-vv` whole.

use crate::exec::quote;

pub const STOP: &str = include_str!("scripts/stop.sh");
pub const EXPIRE: &str = include_str!("scripts/expire.sh");
pub const FIND_RSYNC: &str = include_str!("scripts/find_rsync.sh");
pub const MISSING: &str = include_str!("scripts/missing.sh");
pub const ADOPT_INDEX: &str = include_str!("scripts/adopt_index.sh");
pub const SNAPSHOT: &str = include_str!("scripts/snapshot.sh");
pub const INSPECT: &str = include_str!("scripts/inspect.sh");
pub const PREPARE: &str = include_str!("scripts/prepare.sh");
pub const HOLD: &str = include_str!("scripts/hold.sh");
pub const ASK: &str = include_str!("scripts/ask.sh");
pub const RUN: &str = include_str!("scripts/run.sh");
pub const DOCTOR: &str = include_str!("scripts/doctor.sh");
pub const CLOSURE: &str = include_str!("scripts/closure.sh");
pub const FINGERPRINT: &str = include_str!("scripts/fingerprint.sh");
pub const UNCHANGED: &str = include_str!("scripts/unchanged.sh");
pub const STAMP: &str = include_str!("scripts/stamp.sh");
pub const RESTAMP: &str = include_str!("scripts/restamp.sh");

/// Every one of them, by its file's name.
pub const NAMED: [(&str, &str); 17] = [
    ("stop.sh", STOP),
    ("expire.sh", EXPIRE),
    ("find_rsync.sh", FIND_RSYNC),
    ("missing.sh", MISSING),
    ("adopt_index.sh", ADOPT_INDEX),
    ("snapshot.sh", SNAPSHOT),
    ("inspect.sh", INSPECT),
    ("prepare.sh", PREPARE),
    ("hold.sh", HOLD),
    ("ask.sh", ASK),
    ("run.sh", RUN),
    ("doctor.sh", DOCTOR),
    ("closure.sh", CLOSURE),
    ("fingerprint.sh", FINGERPRINT),
    ("unchanged.sh", UNCHANGED),
    ("stamp.sh", STAMP),
    ("restamp.sh", RESTAMP),
];

/// A script as the one line it is sent as: comments and blank lines left out, lines joined
/// by a space (so `-vv` prints each command edict runs on one line, pasteable). The
/// scripts end every command with `;` unless the next line continues it.
pub fn one_line(script: &str) -> String {
    script
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A shell line with each of edict's scripts in it, as sent (quoted), replaced by its name
/// in braces (`sh -c {prepare.sh} sh ARG…`): what `-v` prints, to be read, not pasted (a
/// pasted `{prepare.sh}` is a command not found, nothing worse).
pub fn shown(line: &str) -> String {
    let mut line = line.to_string();
    // A script in a word that is itself quoted (a line the holder runs) first: inside
    // single quotes each of its quotes is `'\''`.
    for depth in [2, 1] {
        for (name, body) in NAMED {
            let mut sent = quote(&one_line(body));
            if depth == 2 {
                sent = sent.replace('\'', "'\\''");
            }
            line = replace_words(&line, &sent, &format!("{{{name}}}"));
        }
    }
    line
}

/// `line` with each occurrence of `from` that is a whole word (after the start or a blank,
/// before the end, a blank or `;`) replaced by `to`: a user's word that holds a script's
/// text within it stays as it is.
fn replace_words(line: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut done = 0;
    for (at, _) in line.match_indices(from) {
        let end = at + from.len();
        let whole = (at == 0 || line[..at].ends_with(' '))
            && (end == line.len() || line[end..].starts_with([' ', ';']));
        if whole {
            out.push_str(&line[done..at]);
            out.push_str(to);
            done = end;
        }
    }
    out.push_str(&line[done..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_shown_by_name() {
        let line = format!(
            "sh -c {} sh {} 'a b'; true",
            quote(&one_line(PREPARE)),
            quote(&one_line(HOLD))
        );
        assert_eq!(shown(&line), "sh -c {prepare.sh} sh {hold.sh} 'a b'; true");
        // A line in a word: `'sh -c '\''…'\'' sh'`.
        let inner = format!("sh -c {} sh \"$X\"", quote(&one_line(UNCHANGED)));
        let line = format!("sh -c {} sh {}", quote(&one_line(PREPARE)), quote(&inner));
        assert_eq!(
            shown(&line),
            "sh -c {prepare.sh} sh 'sh -c {unchanged.sh} sh \"$X\"'"
        );
        assert_eq!(shown("echo hi"), "echo hi");
        // Inside a word of the user's, a script's text is not a script.
        let body = quote(&one_line(STOP));
        let line = format!("nix run .#x -- x{body}y {body}");
        assert_eq!(shown(&line), format!("nix run .#x -- x{body}y {{stop.sh}}"));
    }
}
