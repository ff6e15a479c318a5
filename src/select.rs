//! Choosing the host(s) from HOST as written: a plain ssh destination, a pool machine's name,
//! `auto` (the best pool machine for this job), `all` (every eligible one), or `a,b,c`.
//!
//! `auto` goes further than Nix's own scheduler: it probes the eligible machines in
//! parallel (reachability and current load, over the same ssh connection the run then
//! reuses), prefers the fastest taking load into account, falls back past unreachable
//! machines, and can explain every decision (`edict machines`).

use crate::nixargs::{NixArgs, Role};
use crate::pool::{self, Machine, Rejection};
use crate::problem::Problem;
use crate::ssh::{self, Connection, Transport};
use anyhow::Result;
use std::collections::BTreeSet;

/// What the job needs from a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needs {
    pub system: String,
    pub features: BTreeSet<String>,
}

impl std::fmt::Display for Needs {
    /// `x86_64-linux`, or `x86_64-linux with features kvm,big-parallel`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.system)?;
        if !self.features.is_empty() {
            write!(
                f,
                " with features {}",
                self.features.iter().cloned().collect::<Vec<_>>().join(",")
            )?;
        }
        Ok(())
    }
}

/// The system: `--system S` or `--option system S`, else the one in an attribute path
/// (`packages.aarch64-linux.foo`), else this machine's.
pub fn needs(args: &NixArgs, required_features: Option<&str>, local_system: &str) -> Needs {
    let words: Vec<(&str, Role)> = args
        .args
        .iter()
        .map(|a| (a.text.as_str(), a.role))
        .collect();
    let mut system = None;
    for (i, (w, role)) in words.iter().enumerate() {
        if *role != Role::Flag {
            continue;
        }
        match *w {
            "--system" | "--eval-system" if system.is_none() => {
                system = words.get(i + 1).map(|x| x.0.to_string())
            }
            "--option" if words.get(i + 1).map(|x| x.0) == Some("system") => {
                system = words.get(i + 2).map(|x| x.0.to_string())
            }
            _ => {}
        }
    }
    let system = system
        .or_else(|| {
            args.args
                .iter()
                .filter(|a| a.role == Role::FlakeRef)
                .find_map(|a| pool::system_in_attr_path(&a.text))
        })
        .unwrap_or_else(|| local_system.to_string());
    Needs {
        system,
        features: required_features.map(pool::features).unwrap_or_default(),
    }
}

/// One machine after probing.
pub struct Probed {
    pub machine: Machine,
    pub verdict: Verdict,
    pub conn: Option<Connection>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Rejected(Rejection),
    /// Not reachable: what went wrong (one line), and its fix.
    Unreachable(String, Option<String>),
    /// Reachable: its 1-minute load average and its score (speed / (1 + load / jobs)).
    Up {
        load: f64,
        score: f64,
    },
}

impl Verdict {
    pub fn score(&self) -> Option<f64> {
        match self {
            Verdict::Up { score, .. } => Some(*score),
            _ => None,
        }
    }
}

/// Probes every eligible machine in parallel and ranks them, best first; ineligible ones
/// keep their reason and are not contacted.
pub fn probe(machines: &[Machine], needs: &Needs, ssh_opts: &str) -> Vec<Probed> {
    let handles: Vec<_> = machines
        .iter()
        .cloned()
        .map(|machine| {
            let needs = needs.clone();
            let ssh_opts = ssh_opts.to_string();
            let kept = machine.clone();
            let handle = std::thread::spawn(move || {
                if let Some(r) = machine.rejection(&needs.system, &needs.features) {
                    return Probed {
                        machine,
                        verdict: Verdict::Rejected(r),
                        conn: None,
                    };
                }
                match connect_and_load(&machine, &ssh_opts) {
                    Ok((conn, load)) => {
                        let score = f64::from(machine.speed_factor)
                            / (1.0 + load / f64::from(machine.jobs.max(1)));
                        Probed {
                            machine,
                            verdict: Verdict::Up { load, score },
                            conn: Some(conn),
                        }
                    }
                    Err(e) => {
                        let fix = crate::problem::Problem::of(&e).map(|p| p.fix.clone());
                        let e = format!("{e:#}");
                        let first = e.lines().next().unwrap_or("").to_string();
                        let fix = fix.or_else(|| {
                            e.lines()
                                .find_map(|l| l.trim().strip_prefix("fix: "))
                                .map(str::to_string)
                        });
                        Probed {
                            machine,
                            verdict: Verdict::Unreachable(first, fix),
                            conn: None,
                        }
                    }
                }
            });
            (kept, handle)
        })
        .collect();
    let mut probed: Vec<Probed> = handles
        .into_iter()
        .map(|(machine, h)| {
            h.join().unwrap_or_else(|p| Probed {
                machine,
                verdict: Verdict::Unreachable(
                    crate::exec::panic_text(p.as_ref()),
                    Some("report it, with the output of `edict -vv machines`".into()),
                ),
                conn: None,
            })
        })
        .collect();
    probed.sort_by(|a, b| {
        b.verdict
            .score()
            .unwrap_or(-1.0)
            .total_cmp(&a.verdict.score().unwrap_or(-1.0))
            .then_with(|| a.machine.name.cmp(&b.machine.name))
    });
    probed
}

fn connect_and_load(machine: &Machine, ssh_opts: &str) -> Result<(Connection, f64)> {
    let conn = Connection::open(machine.transport(ssh_opts)?.probing())?;
    // Linux, then the BSDs and macOS (`{ 1.23 1.10 1.05 }`).
    let out = conn
        .ssh(
            ssh::Tty::No,
            "cat /proc/loadavg 2>/dev/null || sysctl -n vm.loadavg",
        )
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let load = text
        .split_whitespace()
        .find_map(|w| w.parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok((conn, load))
}

/// Why each machine was or was not chosen, in words; the first `Up` one is the choice.
pub fn explain(probed: &[Probed]) -> Vec<(String, String)> {
    let chosen = probed.iter().find(|p| p.verdict.score().is_some());
    probed
        .iter()
        .map(|p| {
            let why = match (&p.verdict, chosen) {
                (Verdict::Rejected(r), _) => format!("not eligible: {r}"),
                (Verdict::Unreachable(e, _), _) => format!("unreachable: {e}"),
                (Verdict::Up { load, .. }, Some(c)) if std::ptr::eq(p, c) => {
                    format!(
                        "chosen: speed {}, load {load:.2} for {} job(s)",
                        p.machine.speed_factor, p.machine.jobs
                    )
                }
                (Verdict::Up { load, score }, Some(c)) => {
                    let best = c.verdict.score().unwrap_or(0.0);
                    if p.machine.speed_factor < c.machine.speed_factor {
                        format!(
                            "slower: speed {} < {} (score {score:.2} < {best:.2})",
                            p.machine.speed_factor, c.machine.speed_factor
                        )
                    } else {
                        format!(
                            "busier: load {load:.2} for {} job(s) (score {score:.2} < {best:.2})",
                            p.machine.jobs
                        )
                    }
                }
                (Verdict::Up { .. }, None) => String::new(),
            };
            (p.machine.name.clone(), why)
        })
        .collect()
}

/// What `auto` can know without connecting: the pool is not empty, and some machine of it
/// can take the job (system, features, enabled).
pub fn can_choose(machines: &[Machine], needs: &Needs) -> Result<()> {
    if machines.is_empty() {
        return Err(Problem::new(
            crate::cli::AUTO,
            "choosing a host",
            "the builder pool is empty",
            "pass --builders 'ssh://HOST SYSTEM …' or @FILE, set `builders` in nix.conf, or list machines in /etc/nix/machines",
        )
        .into());
    }
    let rejected: Vec<String> = machines
        .iter()
        .filter_map(|m| {
            m.rejection(&needs.system, &needs.features)
                .map(|r| format!("\n  {}: not eligible: {r}", m.name))
        })
        .collect();
    if rejected.len() == machines.len() {
        return Err(no_machine(needs, &rejected.concat()));
    }
    Ok(())
}

/// No machine of the pool can take the job: each one's reason in `list`.
fn no_machine(needs: &Needs, list: &str) -> anyhow::Error {
    Problem::new(
        crate::cli::AUTO,
        "choosing a host",
        format!("no machine can take a job for {needs}:{list}"),
        format!(
            "add a machine for {} to the pool, or change --system/--required-features",
            needs.system
        ),
    )
    .into()
}

/// `auto`: the best reachable eligible machine, with its open connection.
pub fn choose(machines: &[Machine], needs: &Needs, ssh_opts: &str) -> Result<Connection> {
    can_choose(machines, needs)?;
    let mut probed = probe(machines, needs, ssh_opts);
    let reasons = explain(&probed);
    let Some(best) = probed.iter_mut().find(|p| p.verdict.score().is_some()) else {
        // Each unreachable machine's own fix (a changed host key, a refused login) is
        // the one that helps.
        let list: String = reasons
            .iter()
            .zip(&probed)
            .map(|((n, why), p)| match &p.verdict {
                Verdict::Unreachable(_, Some(fix)) => format!("\n  {n}: {why}\n    fix: {fix}"),
                _ => format!("\n  {n}: {why}"),
            })
            .collect();
        return Err(no_machine(needs, &list));
    };
    let why = reasons
        .iter()
        .find(|(n, _)| *n == best.machine.name)
        .map(|(_, w)| w.clone())
        .unwrap_or_default();
    crate::exec::info(format_args!("auto: {} ({why})", best.machine.name));
    for (name, why) in reasons.iter().filter(|(n, _)| *n != best.machine.name) {
        crate::exec::debug(format_args!("auto: not {name}: {why}"));
    }
    best.conn.take().ok_or_else(|| {
        Problem::new(
            &best.machine.name,
            "choosing a host",
            "the chosen machine's connection vanished",
            "report it, with the output of `edict -vv …`",
        )
        .into()
    })
}

/// The transports for `all` (every eligible machine) or a comma list (pool names or ssh
/// destinations).
pub fn many(spec: &str, pool: &[Machine], needs: &Needs, ssh_opts: &str) -> Result<Vec<Transport>> {
    if spec == "all" {
        let eligible: Vec<&Machine> = pool
            .iter()
            .filter(|m| m.rejection(&needs.system, &needs.features).is_none())
            .collect();
        if eligible.is_empty() {
            let list: String = pool
                .iter()
                .map(|m| {
                    format!(
                        "\n  {}: {}",
                        m.name,
                        m.rejection(&needs.system, &needs.features)
                            .map(|r| r.to_string())
                            .unwrap_or_default()
                    )
                })
                .collect();
            return Err(Problem::new(
                spec,
                "choosing hosts",
                format!(
                    "no machine in the pool can take a job for {}:{list}",
                    needs.system
                ),
                format!(
                    "add a machine for {} to the pool, or change --system/--required-features",
                    needs.system
                ),
            )
            .into());
        }
        return eligible
            .into_iter()
            .map(|m| m.transport(ssh_opts))
            .collect();
    }
    spec.split(',')
        .filter(|h| !h.is_empty())
        .map(|h| transport(h, pool, ssh_opts))
        .collect()
}

/// One HOST: a pool machine of that name (its key and host key apply), else a destination.
/// A machine the pool disables is not run on, even when named.
pub fn transport(host: &str, pool: &[Machine], ssh_opts: &str) -> Result<Transport> {
    if pool.iter().any(|m| m.name == host && !m.enabled) {
        return Err(Problem::new(
            host,
            "choosing hosts",
            format!("{host} is disabled in the builder pool (`enable = false`)"),
            "enable it in the machines file, or name another host",
        )
        .into());
    }
    any_transport(host, pool, ssh_opts)
}

/// Like [`transport`], a disabled pool machine included: for `edict doctor` and `edict gc`,
/// which look at a machine without running a job there.
pub fn any_transport(host: &str, pool: &[Machine], ssh_opts: &str) -> Result<Transport> {
    match pool.iter().find(|m| m.name == host) {
        Some(m) => m.transport(ssh_opts),
        None => Ok(Transport::new(
            host,
            ssh::Destination::parse(host)?,
            ssh_opts,
        )),
    }
}

/// `edict machines --json`: the pool with every verdict.
pub fn to_json(probed: &[Probed], needs: &Needs) -> serde_json::Value {
    let reasons = explain(probed);
    let chosen = probed
        .iter()
        .find(|p| p.verdict.score().is_some())
        .map(|p| p.machine.name.clone());
    serde_json::json!({
        "system": needs.system,
        "required_features": needs.features,
        "chosen": chosen,
        "machines": probed.iter().zip(&reasons).map(|(p, (_, why))| {
            let m = &p.machine;
            let (reachable, load) = match &p.verdict {
                Verdict::Up { load, .. } => (Some(true), Some(*load)),
                Verdict::Unreachable(..) => (Some(false), None),
                Verdict::Rejected(_) => (None, None),
            };
            serde_json::json!({
                "name": m.name,
                "uri": m.uri,
                "system_types": m.system_types,
                "jobs": m.jobs,
                "speed_factor": m.speed_factor,
                "supported_features": m.supported_features,
                "mandatory_features": m.mandatory_features,
                "enabled": m.enabled,
                "origin": m.origin,
                "eligible": !matches!(p.verdict, Verdict::Rejected(_)),
                "reachable": reachable,
                "load": load,
                "chosen": Some(&m.name) == chosen.as_ref(),
                "why": why,
            })
        }).collect::<Vec<_>>(),
    })
}

/// `edict machines`: the same as a table.
pub fn to_table(probed: &[Probed], needs: &Needs) -> String {
    let reasons = explain(probed);
    let mut rows =
        vec![["MACHINE", "SYSTEMS", "JOBS", "SPEED", "FEATURES", "VERDICT"].map(str::to_string)];
    for (p, (_, why)) in probed.iter().zip(&reasons) {
        let m = &p.machine;
        let mut features: Vec<String> = m.supported_features.iter().cloned().collect();
        features.extend(m.mandatory_features.iter().map(|f| format!("{f}!")));
        rows.push([
            m.name.clone(),
            m.system_types.iter().cloned().collect::<Vec<_>>().join(","),
            m.jobs.to_string(),
            m.speed_factor.to_string(),
            if features.is_empty() {
                "-".into()
            } else {
                features.join(",")
            },
            why.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = format!("for {needs} (features marked ! are mandatory):\n");
    for r in rows {
        for c in 0..5 {
            out.push_str(&format!("{:<w$}  ", r[c], w = widths[c]));
        }
        out.push_str(&r[5]);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nixargs::classify;

    fn words(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn needs_from_the_command_line() {
        let n = |line: &str| needs(&classify(&words(line)), None, "x86_64-linux").system;
        assert_eq!(n("build .#x"), "x86_64-linux");
        assert_eq!(n("build .#packages.aarch64-linux.x"), "aarch64-linux");
        assert_eq!(n("build --system aarch64-darwin .#x"), "aarch64-darwin");
        assert_eq!(
            n("build --option system riscv64-linux .#x"),
            "riscv64-linux"
        );
        assert_eq!(
            n("build --option cores 4 .#checks.x86_64-darwin.t"),
            "x86_64-darwin"
        );
        let f = needs(
            &classify(&words("build .#x")),
            Some("kvm, big-parallel"),
            "x86_64-linux",
        )
        .features;
        assert_eq!(f, pool::features("kvm,big-parallel"));
    }

    fn machine(name: &str, speed: f32, jobs: u32) -> Machine {
        pool::parse(
            &format!("ssh://{name} x86_64-linux - {jobs} {speed}"),
            "t",
            "x86_64-linux",
        )
        .unwrap()
        .remove(0)
    }

    #[test]
    fn explanations_say_slower_busier_unreachable_and_ineligible() {
        let p = |m: Machine, verdict: Verdict| Probed {
            machine: m,
            verdict,
            conn: None,
        };
        let probed = vec![
            p(
                machine("fast", 4.0, 4),
                Verdict::Up {
                    load: 1.0,
                    score: 3.2,
                },
            ),
            p(
                machine("slow", 1.0, 4),
                Verdict::Up {
                    load: 0.0,
                    score: 1.0,
                },
            ),
            p(
                machine("busy", 4.0, 1),
                Verdict::Up {
                    load: 3.0,
                    score: 1.0,
                },
            ),
            p(
                machine("down", 8.0, 8),
                Verdict::Unreachable(
                    "down: connecting: nothing accepts ssh connections on down.".into(),
                    None,
                ),
            ),
            p(
                machine("arm", 1.0, 1),
                Verdict::Rejected(Rejection::UnsupportedSystem("x86_64-linux".into())),
            ),
        ];
        let why: Vec<String> = explain(&probed).into_iter().map(|(_, w)| w).collect();
        assert!(why[0].starts_with("chosen"), "{why:?}");
        assert!(why[1].starts_with("slower"), "{why:?}");
        assert!(why[2].starts_with("busier"), "{why:?}");
        assert!(why[3].starts_with("unreachable"), "{why:?}");
        assert!(
            why[4].starts_with("not eligible: does not build for x86_64-linux"),
            "{why:?}"
        );
        let json = to_json(
            &probed,
            &Needs {
                system: "x86_64-linux".into(),
                features: BTreeSet::new(),
            },
        );
        assert_eq!(json["chosen"], "fast");
        assert_eq!(json["machines"][3]["reachable"], false);
        assert!(
            to_table(
                &probed,
                &Needs {
                    system: "x86_64-linux".into(),
                    features: BTreeSet::new()
                }
            )
            .contains("busier")
        );
    }
}
