//! Step 3, for inputs flake.lock pins: a local input outside the synced sources whose lock
//! entry has a narHash is evaluated by nix here from the store path that hash names,
//! whatever the input's tree holds now (a newer commit, an uncommitted edit). HOST gets
//! that same store path with `nix copy`, so both evaluate the same inputs and the lock
//! stays untouched (see [`crate::mapping::Pinned`]).

use crate::exec::{self, Cmd};
use crate::mapping::{Pinned, Plan};
use crate::problem::Problem;
use crate::remote::RemoteEnv;
use crate::ssh::Connection;
use anyhow::Result;

/// Makes every pinned store path valid in this machine's store, as nix here would on its
/// next evaluation: a path collected since then is fetched again by its locked ref (the
/// git rev, or the path checked against its narHash). Runs before anything is sent.
pub fn make_valid_here(host: &str, plan: &Plan) -> Result<()> {
    if plan.pinned.is_empty() {
        return Ok(());
    }
    let out = Cmd::new("nix-store")
        .args(["--check-validity", "--print-invalid"])
        .args(plan.pinned.iter().map(|p| p.store_path.as_str()))
        .run_checked()
        .map_err(|e| {
            Problem::new(
                host,
                "preparing locked inputs",
                format!("{e:#}"),
                "check that this machine's nix store works (`nix store ping`)",
            )
        })?;
    let invalid = String::from_utf8_lossy(&out.stdout).into_owned();
    for pin in plan
        .pinned
        .iter()
        .filter(|p| invalid.lines().any(|l| l == p.store_path))
    {
        fetch_here(host, pin)?;
    }
    Ok(())
}

fn fetch_here(host: &str, pin: &Pinned) -> Result<()> {
    exec::debug(format_args!(
        "input {}: {} is not in this store; fetching {}",
        pin.input, pin.store_path, pin.locked
    ));
    // `fetchTree` of the lock's attributes is how nix fetches a locked input, the narHash
    // checked; no substituters, which never have a local tree (and may be unreachable).
    let fetch = Cmd::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command flakes",
            "eval",
            "--impure",
            "--raw",
            "--option",
            "substituters",
            "",
            "--expr",
            "(builtins.fetchTree (builtins.fromJSON (builtins.getEnv \"EDICT_LOCKED\"))).outPath",
        ])
        .env("EDICT_LOCKED", &pin.locked);
    let out = fetch.output()?;
    let fix = format!(
        "re-lock it (`nix flake lock --update-input {0}`, or `nix flake update {0}` on Nix ≥ 2.19); nix here needs that too",
        pin.input
    );
    let step = "preparing locked inputs";
    if !out.status.success() {
        return Err(Problem::new(
            host,
            step,
            format!(
                "input `{}` is locked to {}, which this machine's store no longer has, and nix here cannot fetch it again",
                pin.input, pin.store_path
            ),
            fix,
        )
        .said("nix", exec::stderr_tail(&out))
        .into());
    }
    let got = String::from_utf8_lossy(&out.stdout);
    if got != pin.store_path {
        return Err(Problem::new(
            host,
            step,
            format!(
                "input `{}` is locked to {}, but fetching it gives {got}",
                pin.input, pin.store_path
            ),
            fix,
        )
        .into());
    }
    Ok(())
}

/// Copies the pinned store paths to HOST (nix skips those it already has). They are
/// content-addressed, so HOST's store takes them even from a user it does not trust.
/// The store paths the command names (`-I nixpkgs=/nix/store/…`) go the same way.
pub fn send(conn: &Connection, env: &RemoteEnv, plan: &Plan) -> Result<()> {
    if plan.pinned.is_empty() && plan.store_paths.is_empty() {
        return Ok(());
    }
    let host = &conn.transport.label;
    let paths: Vec<&str> = plan
        .pinned
        .iter()
        .map(|p| p.store_path.as_str())
        .chain(plan.store_paths.iter().map(String::as_str))
        .collect();
    let copy = crate::results::copy_command(conn, &env.nix_store(), "--to", &paths);
    let out = copy.output()?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if crate::ssh::said_by_ssh(&stderr) {
        return Err(crate::ssh::ssh_failure(
            host,
            "sending locked inputs",
            &stderr,
        ));
    }
    let what: Vec<&str> = plan
        .pinned
        .iter()
        .map(|p| p.input.as_str())
        .chain(plan.store_paths.iter().map(String::as_str))
        .collect();
    Err(Problem::new(
        host,
        &format!(
            "sending locked inputs and store paths ({})",
            what.join(", ")
        ),
        format!("`{}` failed", copy.line()),
        format!("check that {host}'s nix store accepts paths from you (`edict doctor {host}`)"),
    )
    .said("nix", exec::stderr_tail(&out))
    .into())
}
