//! `--dry-run`: the plan in words — what is synced where, the remote command, what comes
//! back — without connecting to HOST. Remote paths are shown under `~/.cache/edict`.

use crate::mapping::{Plan, RemoteDirs, SourceKind};
use crate::sync;
use std::fmt::Write as _;

/// A word for display: bare when it is made of characters a shell leaves alone.
fn show(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./~#^-".contains(c))
    {
        word.to_string()
    } else {
        crate::exec::quote(word)
    }
}

pub fn describe(plan: &Plan, host: &str, no_link: bool) -> String {
    let dirs = RemoteDirs {
        mirrors: "~/.cache/edict/mirrors".into(),
        run: "~/.cache/edict/runs/RUN".into(),
    };
    let mut s = format!("edict --dry-run: the plan for {host} (nothing is sent)\n");
    for (i, src) in plan.sources.iter().enumerate() {
        let what = match src.kind {
            SourceKind::Git => match sync::sent_files(plan, i) {
                Ok(t) => format!("git work tree: {} tracked files and .git", t.files.len()),
                Err(e) => format!("git work tree ({e:#})"),
            },
            SourceKind::Dir => "directory".to_string(),
            SourceKind::File => "file".to_string(),
        };
        let _ = writeln!(
            s,
            "sync up:   {} ({what}) -> {host}:{}",
            src.root.display(),
            plan.mirror(i, &dirs)
        );
    }
    for pin in &plan.pinned {
        let _ = writeln!(
            s,
            "sync up:   input {} as flake.lock pins it: {} -> {host} (nix copy)",
            pin.input, pin.store_path
        );
    }
    for path in &plan.store_paths {
        let _ = writeln!(
            s,
            "sync up:   {path} -> {host} (nix copy, with its closure)"
        );
    }
    if plan.sources.is_empty() && plan.pinned.is_empty() && plan.store_paths.is_empty() {
        s.push_str("sync up:   nothing (no local flakes or files in the command)\n");
    }
    let _ = writeln!(s, "run in:    {}", plan.render_cwd(&dirs));
    let words: Vec<String> = crate::remote::program_words(plan, "nix")
        .into_iter()
        .chain(plan.render_words(&dirs))
        .collect();
    let _ = writeln!(
        s,
        "command:   {}",
        words.iter().map(|w| show(w)).collect::<Vec<_>>().join(" ")
    );
    if plan.links.is_empty() || no_link {
        s.push_str("results:   none copied back\n");
    } else {
        for l in &plan.links {
            let _ = writeln!(
                s,
                "results:   {}[-*] <- nix copy from {host}, as GC roots",
                l.local_base.display()
            );
        }
    }
    for o in &plan.outputs {
        let _ = writeln!(
            s,
            "output:    {} <- written there, fetched here",
            o.display()
        );
    }
    let back: Vec<String> = plan
        .sources
        .iter()
        .filter(|s| s.sync_back && s.kind != SourceKind::File)
        .map(|s| s.root.display().to_string())
        .collect();
    if back.is_empty() {
        s.push_str("sync back: nothing\n");
    } else {
        for root in back {
            let _ = writeln!(
                s,
                "sync back: {root} (files the command creates, changes or deletes there; local edits are kept)"
            );
        }
    }
    for n in plan.notes_for(host) {
        let _ = writeln!(s, "note:      {n}");
    }
    for (n, path) in &plan.unseen {
        let _ = writeln!(
            s,
            "note:      {} (if {host} has no {})",
            n.replace("{host}", host),
            path.display()
        );
    }
    s
}
