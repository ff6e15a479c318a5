//! Several hosts at once (`edict a,b nix …`, `edict all nix …`): the same command on each,
//! in parallel, with one sync per host, every output line behind the host's name (coloured
//! on a terminal), results that don't collide (`result-HOST…`), and a summary table.
//!
//! Bringing back changed files from several hosts would race on the same local files, so
//! it is off unless `--sync=HOST` names the one host whose changes come back.

use crate::cli::Cli;
use crate::mapping::{self, Local, SyncMode};
use crate::nixargs::NixArgs;
use crate::problem::Problem;
use crate::remote::Io;
use crate::signals::Signals;
use crate::ssh::{Connection, Transport};
use anyhow::Result;
use std::time::{Duration, Instant};

struct Outcome {
    host: String,
    result: Result<u8>,
    took: Duration,
}

/// Steps 3–7 for one host (main's pipeline), given to the fan-out so that it need not
/// reach back into main.
pub type Pipeline =
    dyn Fn(crate::ssh::Connection, &mapping::Plan, &Cli, &Signals, &Io) -> Result<u8> + Sync;

/// The one host of the run whose changes come back (`--sync=HOST`), checked: with several
/// hosts, a bare `--sync` is ambiguous and a HOST must be one of them.
pub fn sync_host(cli: &Cli, transports: &[Transport]) -> Result<Option<String>> {
    let sync_host = match &cli.sync {
        Some(Some(h)) => Some(h.clone()),
        Some(None) => {
            let hosts: Vec<String> = transports.iter().map(|t| t.label.clone()).collect();
            return Err(Problem::new(
                &hosts.join(","),
                "bringing changes back",
                "several hosts would each bring back their changes to the same files",
                format!(
                    "name the one host whose changes come back: --sync=HOST (one of {})",
                    hosts.join(", ")
                ),
            )
            .into());
        }
        None => None,
    };
    if let Some(h) = &sync_host {
        if !transports.iter().any(|t| &t.label == h) {
            let hosts: Vec<String> = transports.iter().map(|t| t.label.clone()).collect();
            return Err(Problem::new(
                h,
                "bringing changes back",
                format!(
                    "--sync={h} names no host of this run ({})",
                    hosts.join(", ")
                ),
                format!(
                    "name one of them: --sync={}",
                    hosts.first().map_or("HOST", String::as_str)
                ),
            )
            .into());
        }
    }
    Ok(sync_host)
}

/// Whether to colour what goes to `stream`: a terminal, unless NO_COLOR says no; anything
/// when CLICOLOR_FORCE says yes (anstream's reading of both conventions).
fn wants_colour<S: anstream::stream::RawStream>(stream: &S) -> bool {
    anstream::AutoStream::choice(stream) != anstream::ColorChoice::Never
}

/// The prefix of host `i`'s lines, its label padded to `width`, in one of six colours.
fn prefix(host: &str, i: usize, width: usize, colour: bool) -> String {
    if colour {
        use anstyle::AnsiColor::{Blue, Cyan, Green, Magenta, Red, Yellow};
        let colour = [Red, Green, Yellow, Blue, Magenta, Cyan][i % 6];
        let style = anstyle::Style::new().fg_color(Some(anstyle::Color::Ansi(colour)));
        format!("{style}{host:<width$}{style:#} | ")
    } else {
        format!("{host:<width$} | ")
    }
}

pub fn run(
    transports: Vec<Transport>,
    args: &NixArgs,
    local: &Local,
    cli: &Cli,
    signals: &Signals,
    pipeline: &Pipeline,
) -> Result<u8> {
    let sync_host = sync_host(cli, &transports)?;
    // Colours per stream: stdout may be a pipe while stderr is a terminal; NO_COLOR and
    // CLICOLOR_FORCE say otherwise.
    let colour_out = wants_colour(&std::io::stdout());
    let colour_err = wants_colour(&std::io::stderr());
    let width = transports
        .iter()
        .map(|t| t.label.chars().count())
        .max()
        .unwrap_or(0);

    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = transports
            .into_iter()
            .enumerate()
            .map(|(i, transport)| {
                let sync_host = sync_host.clone();
                let label = transport.label.clone();
                let started = Instant::now();
                let handle = scope.spawn(move || {
                    let host = transport.label.clone();
                    let io = Io::Prefixed {
                        out: prefix(&host, i, width, colour_out),
                        err: prefix(&host, i, width, colour_err),
                    };
                    let start = Instant::now();
                    let result = (|| {
                        let mode = if sync_host.as_deref() == Some(host.as_str()) {
                            SyncMode::Force
                        } else {
                            SyncMode::Off
                        };
                        let mut plan = mapping::plan(args, local, mode).map_err(|e| {
                            crate::problem::place(e, &host, "mapping local sources")
                        })?;
                        // Files the command writes for the user come from the host whose
                        // changes come back, like them (the last host would win otherwise).
                        if mode == SyncMode::Off {
                            plan.outputs.clear();
                        }
                        // result → result-HOST, result-dev → result-HOST-dev: no collisions.
                        let suffix = format!("-{}", mapping::safe_name(&host));
                        for link in &mut plan.links {
                            let mut base = link.local_base.clone().into_os_string();
                            base.push(&suffix);
                            link.local_base = base.into();
                        }
                        let conn = Connection::open(transport)?;
                        pipeline(conn, &plan, cli, signals, &io)
                    })();
                    Outcome {
                        host,
                        result,
                        took: start.elapsed(),
                    }
                });
                (label, started, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(host, started, h)| {
                h.join().unwrap_or_else(|p| Outcome {
                    result: Err(Problem::new(
                        &host,
                        "running",
                        crate::exec::panic_text(p.as_ref()),
                        "report it, with the output of `edict -vv …`",
                    )
                    .into()),
                    host,
                    took: started.elapsed(),
                })
            })
            .collect()
    });

    let mut code = 0;
    // At least as wide as its title: two-letter host names would misalign it.
    let width = width.max("HOST".len());
    let mut table = format!("{:<width$}  EXIT   TIME\n", "HOST");
    for o in &outcomes {
        let (this, exit) = match &o.result {
            Ok(c) => (*c, c.to_string()),
            Err(e) => {
                let c = crate::ssh::report(e);
                (c, format!("{c}!"))
            }
        };
        if code == 0 {
            code = this;
        }
        table.push_str(&format!(
            "{:<width$}  {exit:<5}  {:.1}s\n",
            o.host,
            o.took.as_secs_f64()
        ));
    }
    // For a single host the table repeats what its output said, unless it failed or -v.
    if outcomes.len() > 1 || code != 0 || crate::exec::verbosity() > 0 {
        for line in table.lines() {
            crate::exec::info(line);
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_line_up_and_colour_only_when_asked() {
        assert_eq!(prefix("a", 0, 3, false), "a   | ");
        assert_eq!(prefix("abc", 1, 3, false), "abc | ");
        let coloured = prefix("a", 1, 3, true);
        assert_eq!(coloured, "\x1b[32ma  \x1b[0m | ");
        assert_ne!(prefix("a", 0, 3, true), coloured, "one colour per host");
        assert_eq!(
            prefix("a", 6, 3, true),
            prefix("a", 0, 3, true),
            "six colours, then again"
        );
    }
}
