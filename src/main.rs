//! edict: run any nix command on a remote host as if it ran here.
//!
//! `main` is the pipeline: classify the nix arguments (1), map local sources to mirrors on
//! HOST (2), sync them up (3), run the command (4), find (5) and copy back (6) its results,
//! and bring back what it changed (7). Each step is a module; they pass plain data.

mod cli;
mod complete;
mod contain;
mod doctor;
mod dryrun;
mod exec;
mod fanout;
mod flakeref;
mod identity;
mod judge;
mod keep;
mod manpage;
mod mapping;
mod nixargs;
mod pinned;
mod pool;
mod problem;
mod progress;
mod remote;
mod results;
mod rsync;
mod scripts;
mod select;
mod signals;
mod ssh;
mod sshconfig;
mod sync;
mod transfer;

use crate::problem::Problem;
use anyhow::Result;
use std::process::ExitCode;

fn main() -> ExitCode {
    // The completion scripts ask with the words on the line (nix's protocol).
    let args: Vec<String> = std::env::args_os()
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    if args.get(1).map(String::as_str) == Some(complete::OPTION) {
        let index = args.get(2).cloned().unwrap_or_default();
        return complete::main(&index, args.into_iter().skip(3).collect());
    }
    let cli = cli::Cli::from_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    exec::set_verbosity(cli.verbose, cli.quiet);
    transfer::set(transfer::Settings {
        substitute: cli.substitute(),
        compress: cli.compress,
        keep: cli.keep_connection.0,
    });
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => ExitCode::from(ssh::report(&e)),
    }
}

fn run(cli: &cli::Cli) -> Result<u8> {
    let signals = signals::Signals::install()?;
    match &cli.sub {
        cli::Sub::Machines(args) => return machines(cli, args),
        cli::Sub::Doctor(args) => return doctor(cli, args),
        cli::Sub::Gc(args) => return gc(cli, args),
        cli::Sub::Forget(args) => return forget(cli, args),
        cli::Sub::Man => {
            use std::io::Write as _;
            std::io::stdout().write_all(&manpage::page())?;
            return Ok(0);
        }
        cli::Sub::Completions { shell } => {
            print!("{}", complete::script(*shell));
            return Ok(0);
        }
        cli::Sub::Run(_) => {}
    }
    let (hosts, program, words) = cli.hosts_and_words()?;

    // 1. Classify: which words are flake refs, local files, result links.
    let args = match program {
        nixargs::Program::Nix => nixargs::classify(&words),
        legacy => nixargs::classify_legacy(legacy, &words),
    };

    // 2. Map every local source to its mirror on HOST and rewrite the command.
    let cwd = std::env::current_dir().map_err(|e| {
        Problem::new(
            cli.label(),
            "reading the command",
            format!("the current directory is not accessible ({e})"),
            "cd to a directory that exists and that you can read",
        )
    })?;
    let machine_id = identity::machine_id();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let local = mapping::Local {
        cwd: &cwd,
        machine_id: &machine_id,
        env: &env,
        declared_inputs: &declared_inputs,
    };
    let plan = mapping::plan(&args, &local, cli.sync_mode())
        .map_err(|e| problem::place(e, cli.label(), "mapping local sources"))?;
    // Where it runs, as far as that is known without connecting: what --dry-run checks.
    let target = resolve(cli, hosts, &args)?;
    if cli.dry_run {
        print!("{}", dryrun::describe(&plan, cli.label(), cli.no_link));
        return Ok(0);
    }
    for note in plan.notes_for(cli.label()) {
        exec::info(note);
    }
    let links_back = !cli.no_link && !plan.links.is_empty();
    if links_back || !plan.sources.is_empty() {
        exec::step("checking this machine");
    }
    if links_back {
        results::check_local(cli.label(), &plan)?;
    }
    if !plan.sources.is_empty() {
        rsync::check_here(cli.label())?;
    }
    pinned::make_valid_here(cli.label(), &plan)?;

    // Which host(s): as written, or chosen from the builder pool.
    match target {
        Target::One(transport) => {
            exec::step(format_args!("{}: connecting", transport.label));
            let conn = ssh::Connection::open(transport)?;
            pipeline(conn, &plan, cli, &signals, &remote::Io::Through)
        }
        Target::Auto(pool, needs) => {
            exec::step("choosing a machine of the pool");
            let conn = select::choose(&pool, &needs, &ssh::Transport::ssh_opts_from_env())?;
            pipeline(conn, &plan, cli, &signals, &remote::Io::Through)
        }
        Target::Many(transports) => {
            fanout::run(transports, &args, &local, cli, &signals, &pipeline)
        }
    }
}

/// Where a run goes, resolved without connecting anywhere.
enum Target {
    One(ssh::Transport),
    /// The best machine of the pool that can take the job, once probed.
    Auto(Vec<pool::Machine>, select::Needs),
    Many(Vec<ssh::Transport>),
}

/// HOST as a destination (its syntax, a pool machine's key and host key), the pool
/// `auto` chooses from and that some machine of it can take the job, the hosts of a
/// fan-out and the one `--sync=HOST` names: everything that can fail before connecting.
fn resolve(cli: &cli::Cli, hosts: cli::Hosts, args: &nixargs::NixArgs) -> Result<Target> {
    let ssh_opts = ssh::Transport::ssh_opts_from_env();
    Ok(match hosts {
        cli::Hosts::One(host) => {
            let pool = match &cli.builders {
                Some(_) => pool::load_or_explain(cli.builders.as_deref())?.0,
                None => Vec::new(),
            };
            Target::One(select::transport(&host, &pool, &ssh_opts)?)
        }
        cli::Hosts::Auto => {
            let (pool, local_nix) = pool::load_or_explain(cli.builders.as_deref())?;
            let needs = select::needs(args, cli.required_features.as_deref(), &local_nix.system);
            select::can_choose(&pool, &needs)?;
            Target::Auto(pool, needs)
        }
        cli::Hosts::Many(spec) => {
            let (pool, local_nix) = pool::load_or_explain(cli.builders.as_deref())?;
            let needs = select::needs(args, cli.required_features.as_deref(), &local_nix.system);
            let transports = select::many(&spec, &pool, &needs, &ssh_opts)?;
            fanout::sync_host(cli, &transports)?;
            Target::Many(transports)
        }
    })
}

/// Steps 3–7 on one open connection.
fn pipeline(
    conn: ssh::Connection,
    plan: &mapping::Plan,
    cli: &cli::Cli,
    signals: &signals::Signals,
    io: &remote::Io,
) -> Result<u8> {
    let host = conn.transport.label.clone();
    exec::step(format_args!("{host}: preparing"));
    // What each source is now: HOST sends back which mirrors already hold exactly that.
    let surveys = sync::survey(plan);
    let fingerprints: Vec<(usize, String)> = surveys
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, s.as_ref()?.fingerprint.clone())))
        .collect();
    let (env, mut session) = signals.step(
        &host,
        "preparing",
        remote::prepare(&conn, plan, &run_id(), &fingerprints, signals),
    )?;

    // How long the link is, for `--compress auto` and `--substitute auto` (see `transfer`):
    // asked in the session edict already holds, when something may cross, unless an
    // earlier run through the same kept connection measured it.
    if transfer::decides_by_round_trip()
        && (!plan.sources.is_empty() || !plan.links.is_empty())
        && !conn.round_trip_known()
    {
        conn.know_round_trip(signals.step(&host, "preparing", session.round_trip(&conn))?);
    }

    // 3. Sync up.
    // Warnings about local paths HOST cannot see, unless it can.
    if !plan.unseen.is_empty() {
        let paths: Vec<&std::path::Path> = plan.unseen.iter().map(|(_, p)| p.as_path()).collect();
        for ((note, _), missing) in plan.unseen.iter().zip(remote::missing_there(&conn, &paths)) {
            if missing {
                exec::info(note.replace("{host}", &host));
            }
        }
    }
    exec::step(format_args!("{host}: prepared; syncing"));
    signals.step(&host, "syncing", pinned::send(&conn, &env, plan))?;
    let uploads = signals.step(&host, "syncing", sync::upload(&conn, &env, plan, &surveys))?;
    if signals.caught() {
        return Err(signals::Interrupted {
            host,
            step: "syncing",
        }
        .into());
    }

    // 4. Run, with our streams and exit code.
    exec::step(format_args!("{host}: synced; running"));
    let code = match remote::run(&conn, &env, plan, &fingerprints, io, signals)? {
        remote::Outcome::Exited(code) => code,
        remote::Outcome::Interrupted => return Ok(130),
    };

    // 5. Find what the command made there: result links, changed files.
    exec::step(format_args!(
        "{host}: the command exited with {code}; inspecting"
    ));
    let after = signals.step(
        &host,
        "inspecting",
        remote::inspect(&mut session, &conn, &env, plan, !cli.no_link),
    )?;

    // 6. Results back, as GC roots. Even after a failure: `--keep-going` builds some.
    let links = results::links(plan, &after.links);
    if !links.is_empty() {
        exec::step(format_args!("{host}: fetching results"));
    }
    signals.step(
        &host,
        "fetching results",
        results::fetch(&conn, &env, &links),
    )?;
    // A signal that reached edict alone (SIGTERM, a Ctrl-C to its pid) while `nix copy`
    // finished anyway: stop here, as after any other step, rather than sync back.
    if signals.caught() {
        return Err(signals::Interrupted {
            host,
            step: "fetching results",
        }
        .into());
    }

    // The files the command wrote for the user (`--output-lock-file`), whatever --no-sync.
    let outputs = signals.step(
        &host,
        "fetching results",
        sync::fetch_outputs(&conn, &env, plan, cli.max_sync_size.0, signals),
    )?;
    report(&outputs, &host);

    // 7. Bring back what the command changed, without overwriting local edits.
    exec::step(format_args!("{host}: syncing back"));
    let changes = signals.step(
        &host,
        "syncing back",
        sync::back(
            &conn,
            &env,
            plan,
            &uploads,
            &after,
            sync::Bounds {
                max_size: cli.max_sync_size.0,
                no_link: cli.no_link,
            },
            signals,
        ),
    )?;
    let conflicts = report(&changes, &host);

    // A plain directory holds the result links just made, which nix reads: they go to its
    // mirror now, so that the next run need not send them (only an optimisation).
    if let Err(e) = sync::restamp(&mut session, &conn, &env, plan, &surveys, &links) {
        exec::debug(format_args!(
            "{host}: the result links stay here only: {e:#}"
        ));
    }

    drop(session);
    drop(conn);
    exec::step(format_args!("{host}: done"));
    Ok(match (code, conflicts) {
        (0, true) => 1,
        (code, _) => u8::try_from(code).unwrap_or(1),
    })
}

/// `edict machines [--system S] [--required-features …] [--json]`: the pool, and for these
/// needs which machine `auto` would choose and why each other one was not chosen.
fn machines(cli: &cli::Cli, args: &cli::MachinesArgs) -> Result<u8> {
    let (pool, local_nix) = pool::load_or_explain(cli.builders.as_deref())?;
    let features = args
        .required_features
        .as_deref()
        .or(cli.required_features.as_deref());
    let needs = select::Needs {
        system: args.system.clone().unwrap_or(local_nix.system),
        features: features.map(pool::features).unwrap_or_default(),
    };
    let probed = select::probe(&pool, &needs, &ssh::Transport::ssh_opts_from_env());
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&select::to_json(&probed, &needs))?
        );
    } else if pool.is_empty() {
        println!(
            "the builder pool is empty (no --builders, no `builders` in nix.conf, no /etc/nix/machines)"
        );
    } else {
        print!("{}", select::to_table(&probed, &needs));
    }
    Ok(u8::from(
        !probed.iter().any(|p| p.verdict.score().is_some()),
    ))
}

/// `edict doctor [HOST…]`: every check on every host, a table, one fix per problem; exits 1
/// when any host has a FAIL.
fn doctor(cli: &cli::Cli, args: &cli::DoctorArgs) -> Result<u8> {
    exec::set_verbosity(cli.verbose.max(args.verbose), cli.quiet);
    let (pool, _) = pool::load_or_explain(cli.builders.as_deref())?;
    let ssh_opts = ssh::Transport::ssh_opts_from_env();
    let targets: Vec<(ssh::Transport, Option<pool::Machine>)> = if args.hosts.is_empty() {
        if pool.is_empty() {
            return Err(Problem::new(
                "",
                "doctor",
                "no hosts given and the builder pool is empty",
                "`edict doctor HOST…`, or pass --builders / set `builders` in nix.conf / fill /etc/nix/machines",
            )
            .into());
        }
        pool.iter()
            .filter(|m| m.enabled)
            .map(|m| Ok((m.transport(&ssh_opts)?, Some(m.clone()))))
            .collect::<Result<_>>()?
    } else {
        args.hosts
            .iter()
            .map(|h| {
                Ok((
                    select::any_transport(h, &pool, &ssh_opts)?,
                    pool.iter().find(|m| &m.name == h).cloned(),
                ))
            })
            .collect::<Result<_>>()?
    };
    let reports = doctor::run(targets);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", doctor::render(&reports));
    }
    Ok(u8::from(reports.iter().any(|r| {
        r.checks.iter().any(|c| c.status == doctor::Status::Fail)
    })))
}

/// `edict gc [HOST…] [--older-than DAYS]`: removes edict's mirrors on each host (those a
/// run holds stay), says what went and how much space it freed.
fn gc(cli: &cli::Cli, args: &cli::GcArgs) -> Result<u8> {
    let (pool, _) = pool::load_or_explain(cli.builders.as_deref())?;
    let ssh_opts = ssh::Transport::ssh_opts_from_env();
    let hosts: Vec<String> = if args.hosts.is_empty() {
        pool.iter()
            .filter(|m| m.enabled)
            .map(|m| m.name.clone())
            .collect()
    } else {
        args.hosts.clone()
    };
    if hosts.is_empty() {
        return Err(Problem::new(
            "",
            "gc",
            "no hosts given and the builder pool is empty",
            "`edict gc HOST…`",
        )
        .into());
    }
    for host in &hosts {
        let conn = ssh::Connection::open(select::any_transport(host, &pool, &ssh_opts)?)?;
        let script = remote::expire_script(args.older_than);
        let out = conn.ssh(ssh::Tty::No, &script).output()?;
        if !out.status.success() {
            return Err(ssh::ssh_failure(
                host,
                "removing mirrors",
                &String::from_utf8_lossy(&out.stderr),
            ));
        }
        let gone: Vec<(String, u64)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("EDICT-gone "))
            .filter_map(|l| l.split_once(' '))
            .map(|(name, kb)| (name.to_string(), kb.parse().unwrap_or(0)))
            .collect();
        for (name, kb) in &gone {
            exec::info(format_args!("{host}: removed mirror {name} ({kb} KiB)"));
        }
        let total: u64 = gone.iter().map(|(_, kb)| kb).sum();
        println!(
            "{host}: removed {} mirror{}, {:.1} MiB freed",
            gone.len(),
            if gone.len() == 1 { "" } else { "s" },
            total as f64 / 1024.0
        );
    }
    Ok(0)
}

/// `edict forget [HOST…]`: closes the connections runs kept (see `keep`) to these hosts, or
/// all of them; the next run to each logs in anew.
fn forget(cli: &cli::Cli, args: &cli::ForgetArgs) -> Result<u8> {
    let places = if args.hosts.is_empty() {
        keep::all()
    } else {
        let (pool, _) = pool::load_or_explain(cli.builders.as_deref())?;
        let ssh_opts = ssh::Transport::ssh_opts_from_env();
        args.hosts
            .iter()
            .map(|h| {
                let t = select::any_transport(h, &pool, &ssh_opts)?;
                Ok(keep::place(&t.config(), &t.identity()).map(|p| (p, h.clone())))
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .collect()
    };
    let places = places.map_err(|why| {
        Problem::new(
            "",
            "forgetting kept connections",
            why,
            "remove that path if it is not yours: edict keeps no connection there, so there is none to close",
        )
    })?;
    let mut closed = 0;
    for (place, label) in &places {
        if ssh::close_kept(&place.socket()) {
            println!("{label}: closed the kept connection");
            closed += 1;
        }
        place.clear();
    }
    if closed == 0 {
        println!("no kept connection to close");
    }
    Ok(0)
}

/// Tells the user what step 7 did; returns whether there were conflicts.
fn report(changes: &[sync::Change], host: &str) -> bool {
    let mut conflicts = false;
    for c in changes {
        match c {
            sync::Change::Taken(p) => exec::info(format_args!(
                "brought back from {host}: {}",
                exec::printable(&p.to_string_lossy())
            )),
            sync::Change::Deleted(p) => exec::info(format_args!(
                "deleted, as on {host}: {}",
                exec::printable(&p.to_string_lossy())
            )),
            sync::Change::Conflict { path, remote_copy } => {
                conflicts = true;
                match remote_copy {
                    Some(copy) if std::fs::symlink_metadata(path).is_err() => eprintln!(
                        "edict: conflict: {} was not brought back from {host}; {host}'s version is in {}",
                        exec::printable(&path.to_string_lossy()),
                        exec::printable(&copy.to_string_lossy())
                    ),
                    Some(copy) => eprintln!(
                        "edict: conflict: {} changed here and on {host}; kept yours, {host}'s version is in {}",
                        exec::printable(&path.to_string_lossy()),
                        exec::printable(&copy.to_string_lossy())
                    ),
                    None => eprintln!(
                        "edict: conflict: {} changed here but was deleted on {host}; kept yours",
                        exec::printable(&path.to_string_lossy())
                    ),
                }
            }
            sync::Change::Refused { path, why } => {
                conflicts = true;
                eprintln!(
                    "edict: not brought back from {host}: {}: {}; {host}'s version stays in its mirror there",
                    exec::printable(&path.to_string_lossy()),
                    exec::printable(why)
                );
            }
            sync::Change::GitState => exec::info(format_args!(
                "the command changed git state on {host} (a commit or branch); edict does not bring back .git: the changed files came back uncommitted, commit them here"
            )),
        }
    }
    conflicts
}

/// The input names a flake.nix declares, read by the local nix as it reads them (flake.nix
/// is a plain Nix expression; only its `inputs` attribute names are forced). `None` when
/// nix cannot tell (not installed, or the file does not evaluate: nix will say so).
fn declared_inputs(flake_nix: &std::path::Path) -> Option<Vec<String>> {
    let out = exec::Cmd::new("nix-instantiate")
        .args([
            "--eval",
            "--json",
            "--strict",
            "-E",
            "{ f }: builtins.attrNames ((import (/. + f)).inputs or {})",
            "--argstr",
            "f",
        ])
        .arg(flake_nix)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    serde_json::from_slice(&out.stdout).ok()
}

/// A name for this run's scratch directory on HOST.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:x}", std::process::id())
}
