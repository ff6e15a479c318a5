//! edict's remote scripts (`src/scripts/*.sh`) are POSIX sh: each parses under dash and
//! under bash as sh (macOS's /bin/sh), and shellcheck finds nothing in them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lab;

use std::path::PathBuf;
use std::process::Command;

fn scripts() -> Vec<PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/scripts");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    found.sort();
    assert!(!found.is_empty());
    found
}

#[test]
fn every_script_parses_in_every_sh() {
    for script in scripts() {
        for sh in [&["/bin/sh", "-n"][..], &["/bin/bash", "--posix", "-n"][..]] {
            let out = Command::new(sh[0])
                .args(&sh[1..])
                .arg(&script)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{} in {sh:?}: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn shellcheck_finds_nothing() {
    lab::require();
    // The remote scripts as sh; the bash completion script as bash (zsh's and fish's run in
    // tests/completions.rs).
    let bash = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/completions/edict.bash"
    ));
    for (shell, files) in [("sh", scripts()), ("bash", vec![bash])] {
        let out = Command::new("shellcheck")
            .arg(format!("--shell={shell}"))
            .arg("--severity=style")
            .args(files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
