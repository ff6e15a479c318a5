//! `edict man`: the manual page, from the same clap definition as `--help` (clap_mangen),
//! with the sections a man page reader looks for that `--help` has no room for: what is
//! sent, what comes back, the exit status, the environment.

use clap::CommandFactory as _;

/// The sections after the options, in roff: each a title and paragraphs.
const SECTIONS: &[(&str, &[&str])] = &[
    (
        "COMMANDS",
        &[
            "In place of HOST: \\fBedict machines\\fR shows the builder pool and the machine \\fBauto\\fR would choose; \\fBedict doctor\\fR [HOST...] says why a host will not work for edict (or for Nix's own remote builds) and how to fix it; \\fBedict gc\\fR [HOST...] removes edict's mirrors on hosts; \\fBedict forget\\fR [HOST...] closes the connections runs kept open (\\fB--keep-connection\\fR); \\fBedict man\\fR prints this page; \\fBedict completions\\fR bash|zsh|fish prints the TAB completion script for that shell (after \\fBedict HOST nix\\fR, nix itself completes). A host with one of these names is reached as \\fBssh://doctor\\fR or \\fBuser@doctor\\fR.",
        ],
    ),
    (
        "WHAT IS SENT",
        &[
            "Every local flake the command names (\\fB.#pkg\\fR, \\fB./sub#x\\fR, \\fB/abs/path\\fR, \\fBpath:\\fR, \\fBgit+file:\\fR) goes to a mirror on HOST (\\fI~/.cache/edict/mirrors\\fR), by rsync, only what changed. For a git flake that is what nix reads here: the tracked files with their uncommitted changes, never untracked or ignored ones. Remote flake references (\\fBnixpkgs#hello\\fR, \\fBgithub:o/r\\fR) are fetched by HOST.",
            "Inputs a flake.lock pins go as the store paths it locks, so HOST evaluates what this machine would. edict refuses to send a home, a temporary directory or /.",
        ],
    ),
    (
        "WHAT COMES BACK",
        &[
            "The links \\fBnix build\\fR makes (\\fBresult\\fR, \\fB-o NAME\\fR), as indirect GC roots here, after \\fBnix copy\\fR brought their closures; over a long link, paths your binary caches have come from them (\\fB--substitute\\fR). When the current directory is inside one of the flakes (or with \\fB--sync\\fR), what the command changed there (\\fBflake.lock\\fR after \\fBnix flake update\\fR, files a \\fBnix run\\fR wrote); a file you changed meanwhile stays, and HOST's version is written beside it as \\fIFILE.edict-HOST\\fR. Nothing is written outside the working tree.",
        ],
    ),
    (
        "EXIT STATUS",
        &[
            "The remote command's exit code; 255 when ssh itself fails; 1 for edict's own errors and for sync-back conflicts; 130 when interrupted at a step other than the command itself. Every error names the host, the step and a fix.",
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            "\\fBNIX_SSHOPTS\\fR: extra ssh options for every step (split on spaces, as nix does). \\fBEDICT_SSH_OPTS\\fR: used instead when set. \\fBEDICT_KEEP_CONNECTION\\fR: the default of \\fB--keep-connection\\fR (\\fBoff\\fR: never kept). \\fBXDG_RUNTIME_DIR\\fR, \\fBTMPDIR\\fR: where kept connections live. \\fBNIXPKGS_ALLOW_*\\fR: passed to the remote command. \\fBNO_COLOR\\fR, \\fBCLICOLOR_FORCE\\fR: colours of a fan-out's host names.",
        ],
    ),
    (
        "SEE ALSO",
        &[
            "\\fBnix\\fR(1), \\fBnix-build\\fR(1), \\fBssh\\fR(1), \\fBrsync\\fR(1), \\fBnix.conf\\fR(5)",
        ],
    ),
];

/// The page, in roff.
pub fn page() -> Vec<u8> {
    let mut out = Vec::new();
    let cmd = crate::cli::Cli::command().name("edict");
    // clap_mangen's own sections, but not its list of subcommands, which points at pages
    // (edict-doctor(1), …) that do not exist: COMMANDS below says what each one does.
    // Writing to a Vec cannot fail.
    let man = clap_mangen::Man::new(cmd);
    let _ = man.render_title(&mut out);
    let _ = man.render_name_section(&mut out);
    let _ = man.render_synopsis_section(&mut out);
    let _ = man.render_description_section(&mut out);
    let _ = man.render_options_section(&mut out);
    let _ = man.render_version_section(&mut out);
    // The examples of --help, each on its line as there (clap_mangen would fill them into
    // a paragraph under "EXTRA"); the environment has its own section below.
    out.extend_from_slice(b".SH EXAMPLES\n.nf\n");
    let examples = crate::cli::EXAMPLES
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .lines()
        .skip(1);
    for line in examples {
        let line = line.replace('\\', "\\e").replace('-', "\\-");
        out.extend_from_slice(format!("{line}\n").as_bytes());
    }
    out.extend_from_slice(b".fi\n");
    for (title, paragraphs) in SECTIONS {
        out.extend_from_slice(format!(".SH \"{title}\"\n").as_bytes());
        for p in *paragraphs {
            out.extend_from_slice(format!("{p}\n.PP\n").as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_the_options_and_the_sections() {
        let page = String::from_utf8(page()).unwrap();
        for needle in [
            ".TH edict 1",
            "\\-\\-dry\\-run",
            "\\-\\-substitute",
            "\\-\\-no\\-substitute",
            ".SH \"EXIT STATUS\"",
            ".SH \"WHAT COMES BACK\"",
            ".SH EXAMPLES\n.nf\n  edict builder nix build .#default ",
            "NIX_SSHOPTS",
        ] {
            assert!(page.contains(needle), "the page lacks {needle}");
        }
        assert!(
            !page.contains("edict\\-doctor") && !page.contains("edict-doctor"),
            "a reference to a page that does not exist"
        );
        // No line starts with a character roff would read as a request by mistake.
        for line in page.lines() {
            assert!(!line.starts_with('\''), "{line}");
        }
    }
}
