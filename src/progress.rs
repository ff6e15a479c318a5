//! One live status line on stderr while results cross the link: what, how many paths and
//! bytes of how many, the rate and the time left; one per host when several copy at once.
//! Only when stderr is a terminal (and edict is not quiet: the caller's choice); erased
//! when done, so a run without a terminal prints exactly what it did before. Whatever else
//! edict prints meanwhile goes above the lines ([`suspend`]), never through them.
//!
//! `nix copy` prints no progress without a terminal, so edict asks it for its log as JSON
//! (`--log-format internal-json`) and reads the copy's progress from that: [`NixLog`].

use std::collections::HashMap;
use std::io::IsTerminal as _;

/// Whether status lines can be shown: stderr is a terminal that can redraw a line (not
/// `TERM=dumb`, as an editor's shell buffer is).
pub fn terminal() -> bool {
    std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// The status lines of every host, drawn together.
static LINES: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();

/// Runs `print` (which writes to the terminal) with the status lines out of its way.
pub fn suspend<R>(print: impl FnOnce() -> R) -> R {
    match LINES.get() {
        Some(lines) => lines.suspend(print),
        None => print(),
    }
}

/// A status line, hidden when stderr is not a [`terminal`].
pub struct Status {
    bar: indicatif::ProgressBar,
}

impl Status {
    /// A line that starts with `what` (`builder: copying results`).
    pub fn start(what: &str) -> Self {
        let bar = if terminal() {
            LINES
                .get_or_init(indicatif::MultiProgress::new)
                .add(indicatif::ProgressBar::new(0))
        } else {
            indicatif::ProgressBar::hidden()
        };
        // {binary_bytes} etc. are indicatif's; the paths go in {msg}.
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix}: {binary_bytes} of {binary_total_bytes}, {msg}{binary_bytes_per_sec}, {eta} left",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(what.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Status { bar }
    }

    /// Shows `done` of `total` bytes and `paths_done` of `paths` paths.
    pub fn show(&self, done: u64, total: u64, paths_done: usize, paths: usize) {
        self.show_with(done, total, &format!("{paths_done}/{paths} paths"));
    }

    /// Shows `done` of `total` bytes, and `detail` after them.
    pub fn show_with(&self, done: u64, total: u64, detail: &str) {
        self.bar.set_length(total.max(done));
        self.bar.set_position(done);
        self.bar.set_message(format!("{detail}, "));
    }
}

impl Drop for Status {
    fn drop(&mut self) {
        // Erased, leaving the screen as it was.
        self.bar.finish_and_clear();
        if let Some(lines) = LINES.get() {
            lines.remove(&self.bar);
        }
    }
}

/// What nix's JSON log says about a copy, and everything else it said, as text.
#[derive(Debug, Default)]
pub struct NixLog {
    /// Each path being copied: the path, bytes done (when nix says: CppNix 2.8 does not).
    copying: HashMap<u64, (String, u64)>,
    /// The paths whose copy ended.
    pub finished: Vec<String>,
    /// What nix said (its messages, and lines that were not its JSON), as its text log
    /// would say it: for error messages.
    pub text: String,
}

/// nix's activity and result types (libutil/logging.hh).
const ACT_COPY_PATH: u64 = 100;
const RES_PROGRESS: u64 = 105;

impl NixLog {
    /// Reads one line of nix's stderr.
    pub fn feed(&mut self, line: &str) {
        let Some(json) = line.strip_prefix("@nix ") else {
            self.text.push_str(line);
            self.text.push('\n');
            return;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
            return;
        };
        let num = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
        let field = |i: usize| v.get("fields").and_then(|f| f.get(i));
        let id = num("id").unwrap_or(0);
        match v.get("action").and_then(serde_json::Value::as_str) {
            Some("msg") => {
                if let Some(msg) = v.get("msg").and_then(serde_json::Value::as_str) {
                    self.text.push_str(&without_ansi(msg));
                    self.text.push('\n');
                }
            }
            Some("start") if num("type") == Some(ACT_COPY_PATH) => {
                let path = field(0).and_then(serde_json::Value::as_str).unwrap_or("");
                self.copying.insert(id, (path.to_string(), 0));
            }
            Some("stop") => {
                if let Some((path, _)) = self.copying.remove(&id) {
                    self.finished.push(path);
                }
            }
            Some("result") if num("type") == Some(RES_PROGRESS) => {
                if let (Some(p), Some(done)) = (
                    self.copying.get_mut(&id),
                    field(0).and_then(serde_json::Value::as_u64),
                ) {
                    p.1 = done;
                }
            }
            _ => {}
        }
    }

    /// Bytes of the paths being copied that nix said it has copied.
    pub fn running_bytes(&self) -> u64 {
        self.copying.values().map(|(_, d)| d).sum()
    }
}

/// What one line of `rsync --info=progress2` says: bytes sent so far, the whole it expects
/// (from its percentage), and files transferred (`xfr#N`):
/// `      1,238,099  47%  235.20kB/s    0:00:05 (xfr#3, to-chk=12/20)`.
pub fn rsync_progress(line: &str) -> Option<(u64, u64, u64)> {
    let mut words = line.split_whitespace();
    let bytes: u64 = words.next()?.replace(',', "").parse().ok()?;
    let percent: u64 = words.next()?.strip_suffix('%')?.parse().ok()?;
    let files = line
        .split_once("xfr#")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let total = bytes.saturating_mul(100).checked_div(percent).unwrap_or(0);
    Some((bytes, total.max(bytes), files))
}

/// How many bytes process `pid` has read so far (Linux's /proc/PID/io `rchar`): `nix copy`
/// reads each path from ssh's pipe, so this moves with the copy even when nix says nothing.
pub fn bytes_read(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|n| n.trim().parse().ok())
}

/// `text` without terminal escape sequences (nix colours its messages).
fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters, then one final byte in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of two paths as nix logs it: which paths are done, the bytes nix reports
    /// (newer nix), and its messages as its text log would say them.
    #[test]
    fn a_copy_s_progress_from_nix_s_json_log() {
        let mut log = NixLog::default();
        for line in [
            "warning: the group 'nixbld' specified in 'build-users-group' does not exist",
            r#"@nix {"action":"start","id":7,"level":3,"text":"copying 2 paths","type":103}"#,
            r#"@nix {"action":"start","fields":["/nix/store/a-x","ssh://b","local"],"id":8,"level":3,"text":"copying path","type":100}"#,
            r#"@nix {"action":"result","fields":[500,1000,0,0],"id":8,"type":105}"#,
        ] {
            log.feed(line);
        }
        assert_eq!(log.running_bytes(), 500);
        assert!(log.finished.is_empty());
        for line in [
            r#"@nix {"action":"stop","id":8}"#,
            r#"@nix {"action":"start","fields":["/nix/store/b-y","ssh://b","local"],"id":9,"level":3,"text":"copying path","type":100}"#,
            "@nix {\"action\":\"msg\",\"level\":0,\"msg\":\"\\u001b[31;1merror:\\u001b[0m path lacks a signature by a trusted key\"}",
            "@nix not json",
        ] {
            log.feed(line);
        }
        assert_eq!(log.finished, ["/nix/store/a-x"]);
        assert_eq!(log.running_bytes(), 0);
        assert_eq!(
            log.text,
            "warning: the group 'nixbld' specified in 'build-users-group' does not exist\nerror: path lacks a signature by a trusted key\n"
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_s_reads_are_counted() {
        let before = bytes_read(std::process::id()).unwrap();
        let _ = std::fs::read("/proc/self/exe").unwrap();
        assert!(bytes_read(std::process::id()).unwrap() > before);
    }

    #[test]
    fn rsync_s_progress_lines() {
        assert_eq!(
            rsync_progress("      1,238,099  47%  235.20kB/s    0:00:05 (xfr#3, to-chk=12/20)"),
            Some((1_238_099, 2_634_253, 3))
        );
        assert_eq!(
            rsync_progress("              0   0%    0.00kB/s    0:00:00"),
            Some((0, 0, 0))
        );
        assert_eq!(rsync_progress("Number of files: 5"), None);
        assert_eq!(rsync_progress(""), None);
    }

    #[test]
    fn escape_sequences_are_left_out() {
        assert_eq!(
            without_ansi("\u{1b}[31;1merror:\u{1b}[0m \u{1b}[35;1mx\u{1b}[0m"),
            "error: x"
        );
        assert_eq!(without_ansi("plain ✓"), "plain ✓");
    }
}
