//! Builder pools: the machines Nix and Lix already know about (`builders`, /etc/nix/machines),
//! read in both formats with Lix's semantics, so edict can choose a host instead of being
//! told one.
//!
//! Formats (Lix manual, "Remote Builds"):
//! - legacy: one machine per line or `;`-separated, `#` comments, fields in order
//!   `uri system-types ssh-key jobs speed-factor supported-features mandatory-features
//!   base64-host-key`, `-` for a default, lists comma-separated, `@FILE` includes (a
//!   missing file is skipped);
//! - TOML: `version = 1`, `[machines.NAME]` with the same fields by name (the host key as
//!   text, not base64) plus `enable`; unknown keys are errors; disabled machines dropped.
//!
//! Detection as in Lix: TOML first; if that fails and the text has a `"` (which TOML needs
//! and the legacy format never has), the TOML error stands; otherwise legacy.

use crate::problem::Problem;
use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    /// The TOML table name; in the legacy format the URI without scheme and parameters.
    pub name: String,
    pub uri: String,
    pub system_types: BTreeSet<String>,
    pub ssh_key: Option<String>,
    pub jobs: u32,
    pub speed_factor: f32,
    pub supported_features: BTreeSet<String>,
    pub mandatory_features: BTreeSet<String>,
    /// An OpenSSH public key line (`ssh-ed25519 AAAA…`), decoded when the source had base64.
    pub host_key: Option<String>,
    /// Where it was defined: `/etc/nix/machines:3`, `--builders`, `machines.toml [machines.x]`.
    pub origin: String,
    /// `enable = false` in TOML: never used, but listed by `edict machines`.
    pub enabled: bool,
}

/// Why a machine can't take a job (or was not chosen), in words for `edict machines`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    Disabled,
    UnsupportedSystem(String),
    MissingFeatures(Vec<String>),
    MandatoryNotRequested(Vec<String>),
    NotSsh,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Disabled => write!(f, "is disabled (enable = false)"),
            Rejection::UnsupportedSystem(s) => write!(f, "does not build for {s}"),
            Rejection::MissingFeatures(v) => {
                write!(f, "lacks required feature(s) {}", v.join(", "))
            }
            Rejection::MandatoryNotRequested(v) => {
                write!(
                    f,
                    "only takes jobs that require {} (pass --required-features)",
                    v.join(", ")
                )
            }
            Rejection::NotSsh => {
                write!(f, "is not an ssh machine (edict needs ssh:// or ssh-ng://)")
            }
        }
    }
}

impl Machine {
    /// Lix's eligibility: system supported (or `builtin`), every required feature supported
    /// or mandatory, every mandatory feature required.
    pub fn rejection(&self, system: &str, required: &BTreeSet<String>) -> Option<Rejection> {
        if !self.enabled {
            return Some(Rejection::Disabled);
        }
        if self.destination().is_err() {
            return Some(Rejection::NotSsh);
        }
        if system != "builtin" && !self.system_types.contains(system) {
            return Some(Rejection::UnsupportedSystem(system.to_string()));
        }
        let missing: Vec<String> = required
            .iter()
            .filter(|f| {
                !self.supported_features.contains(*f) && !self.mandatory_features.contains(*f)
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Some(Rejection::MissingFeatures(missing));
        }
        let unrequested: Vec<String> = self
            .mandatory_features
            .difference(required)
            .cloned()
            .collect();
        if !unrequested.is_empty() {
            return Some(Rejection::MandatoryNotRequested(unrequested));
        }
        None
    }

    /// How to reach it: its destination, with its key and pinned host key.
    pub fn transport(&self, ssh_opts: &str) -> Result<crate::ssh::Transport> {
        crate::ssh::Transport::new(&self.name, self.destination()?, ssh_opts)
            .with_machine_keys(self.key(), self.host_key.as_deref())
    }

    /// The ssh destination in the URI: `ssh://user@host`, `ssh-ng://host?port=22`, `host`.
    pub fn destination(&self) -> Result<crate::ssh::Destination> {
        let uri = &self.uri;
        let (rest, query) = match uri.split_once('?') {
            Some((r, q)) => (r, q),
            None => (uri.as_str(), ""),
        };
        let rest = match rest.split_once("://") {
            Some(("ssh" | "ssh-ng", r)) => r,
            Some(_) => bail!("`{uri}` is not an ssh store URI"),
            None if rest.contains('/') || ["auto", "daemon", "local"].contains(&rest) => {
                bail!("`{uri}` is not an ssh store URI")
            }
            None => rest,
        };
        let mut dest = crate::ssh::Destination::parse(&format!("ssh://{rest}"))?;
        for kv in query.split('&') {
            if let Some(p) = kv.strip_prefix("port=") {
                dest.port = Some(
                    p.parse()
                        .map_err(|_| anyhow!("`{uri}`: port `{p}` is not a number"))?,
                );
            }
        }
        Ok(dest)
    }

    /// The ssh key: the machine's field, or the URI's `?ssh-key=`.
    pub fn key(&self) -> Option<String> {
        self.ssh_key.clone().or_else(|| {
            self.uri.split_once('?').and_then(|(_, q)| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("ssh-key=").map(str::to_string))
            })
        })
    }
}

/// Parses a `builders` value (or a machines file's text), expanding `@FILE` includes.
/// `origin` names where `text` came from, for error messages.
pub fn parse(text: &str, origin: &str, local_system: &str) -> Result<Vec<Machine>> {
    // A whole value of `@FILE` may be a TOML file (as Lix reads it).
    let (content, origin) = match text.trim().strip_prefix('@') {
        Some(file) if !text.trim().contains(['\n', ';']) => {
            match std::fs::read_to_string(file.trim()) {
                Ok(c) => (c, file.trim().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(anyhow!("reading the machines file {}: {e}", file.trim())),
            }
        }
        _ => (text.to_string(), origin.to_string()),
    };
    if content.trim().is_empty() {
        return Ok(Vec::new());
    }
    match parse_toml(&content, &origin, local_system) {
        Ok(machines) => Ok(machines),
        Err(TomlError::Invalid(e)) => Err(e),
        Err(TomlError::Syntax(e)) => {
            if content.contains('"') {
                return Err(e);
            }
            // Neither format: say both, as Lix does.
            let machines = parse_legacy(&content, &origin, local_system, 0)
                .map_err(|legacy| anyhow!("{legacy:#}\n  (and as TOML: {e:#})"))?;
            // `machines.x = {…}` without quotes parses as legacy rubbish: the TOML error is
            // what the user needs to see.
            if machines.iter().any(|m| m.system_types.contains("=")) {
                return Err(e);
            }
            Ok(machines)
        }
    }
}

enum TomlError {
    /// Not TOML (or not our schema): maybe the legacy format.
    Syntax(anyhow::Error),
    /// TOML of our schema with bad values: certainly meant as TOML.
    Invalid(anyhow::Error),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    version: Option<u32>,
    machines: BTreeMap<String, TomlMachine>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct TomlMachine {
    uri: Option<String>,
    system_types: Option<BTreeSet<String>>,
    ssh_key: Option<String>,
    jobs: Option<i64>,
    speed_factor: Option<f64>,
    supported_features: Option<BTreeSet<String>>,
    mandatory_features: Option<BTreeSet<String>>,
    ssh_public_host_key: Option<String>,
    #[serde(alias = "enabled")]
    enable: Option<bool>,
}

fn parse_toml(
    content: &str,
    origin: &str,
    local_system: &str,
) -> std::result::Result<Vec<Machine>, TomlError> {
    let file: TomlFile = toml::from_str(content)
        .map_err(|e| TomlError::Syntax(anyhow!("{origin}: not a valid TOML machines file: {e}")))?;
    let version = file.version.unwrap_or(1);
    if version != 1 {
        return Err(TomlError::Invalid(anyhow!(
            "{origin}: machines file version {version} is not supported (only version = 1)"
        )));
    }
    let mut out = Vec::new();
    for (name, m) in file.machines {
        let at = format!("{origin} [machines.{name}]");
        let invalid =
            |field: &str, why: &str| TomlError::Invalid(anyhow!("{at}: field `{field}` {why}"));
        let uri = m
            .uri
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| invalid("uri", "must be present and non-empty"))?;
        let jobs = match m.jobs {
            None => 1,
            Some(j) if j > 0 && j <= i64::from(u32::MAX) => j as u32,
            Some(j) => {
                return Err(invalid(
                    "jobs",
                    &format!("must be a positive whole number, not {j}"),
                ));
            }
        };
        let speed = m.speed_factor.unwrap_or(1.0);
        if speed < 0.0 || !speed.is_finite() {
            return Err(invalid(
                "speed-factor",
                &format!("must be >= 0, not {speed}"),
            ));
        }
        out.push(Machine {
            name,
            uri,
            system_types: m
                .system_types
                .unwrap_or_else(|| BTreeSet::from([local_system.to_string()])),
            ssh_key: m.ssh_key.filter(|k| !k.is_empty()),
            jobs,
            speed_factor: if speed == 0.0 { 1.0 } else { speed as f32 },
            supported_features: m.supported_features.unwrap_or_default(),
            mandatory_features: m.mandatory_features.unwrap_or_default(),
            host_key: m
                .ssh_public_host_key
                .filter(|k| !k.trim().is_empty())
                .map(|k| k.trim().to_string()),
            origin: at,
            enabled: m.enable != Some(false),
        });
    }
    Ok(out)
}

/// The legacy format; `depth` guards against `@FILE` include loops.
fn parse_legacy(
    content: &str,
    origin: &str,
    local_system: &str,
    depth: u32,
) -> Result<Vec<Machine>> {
    if depth > 16 {
        bail!("{origin}: too many nested @FILE includes (a loop?)");
    }
    let mut out = Vec::new();
    for (i, line) in content.split('\n').enumerate() {
        let at = format!("{origin}:{}", i + 1);
        for entry in line.split(';') {
            let entry = entry.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            if let Some(file) = entry.strip_prefix('@') {
                let file = file.trim();
                match std::fs::read_to_string(file) {
                    Ok(text) => out.extend(parse_legacy(&text, file, local_system, depth + 1)?),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => bail!("{at}: reading the included machines file {file}: {e}"),
                }
                continue;
            }
            out.push(parse_legacy_line(entry, &at, local_system)?);
        }
    }
    Ok(out)
}

fn parse_legacy_line(line: &str, at: &str, local_system: &str) -> Result<Machine> {
    const FIELDS: [&str; 8] = [
        "uri",
        "system-types",
        "ssh-key",
        "jobs",
        "speed-factor",
        "supported-features",
        "mandatory-features",
        "ssh-public-host-key",
    ];
    let tokens: Vec<&str> = line.split([' ', '\t']).filter(|t| !t.is_empty()).collect();
    if tokens.len() > FIELDS.len() {
        bail!(
            "{at}: {} fields, but a machine line has at most 8 ({}): `{line}`",
            tokens.len(),
            FIELDS.join(" ")
        );
    }
    let field = |i: usize| tokens.get(i).copied().filter(|t| *t != "-");
    let list = |i: usize| {
        field(i).map(|t| {
            t.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<BTreeSet<_>>()
        })
    };
    let bad =
        |i: usize, why: &str| anyhow!("{at}: field {} (`{}`) {why}: `{line}`", i + 1, FIELDS[i]);
    let uri = field(0).ok_or_else(|| bad(0, "is required"))?.to_string();
    let jobs = match field(3) {
        None => 1,
        Some(t) => match t.parse::<u32>() {
            Ok(j) if j > 0 => j,
            _ => {
                return Err(bad(
                    3,
                    &format!("must be a positive whole number, not `{t}`"),
                ));
            }
        },
    };
    let speed = match field(4) {
        None => 1.0,
        Some(t) => match t.parse::<f32>() {
            Ok(s) if s >= 0.0 && s.is_finite() => s,
            _ => return Err(bad(4, &format!("must be a number >= 0, not `{t}`"))),
        },
    };
    let host_key = match field(7) {
        None => None,
        Some(b64) => {
            let raw = base64_decode(b64).ok_or_else(|| bad(7, "is not valid base64 (make it with `base64 -w0 /etc/ssh/ssh_host_ed25519_key.pub`)"))?;
            Some(String::from_utf8_lossy(&raw).trim().to_string())
        }
    };
    // Named as a user would say it: the destination without scheme or store parameters.
    let name = uri
        .split_once("://")
        .map_or(uri.as_str(), |(_, r)| r)
        .split('?')
        .next()
        .unwrap_or(&uri)
        .to_string();
    Ok(Machine {
        name,
        uri,
        system_types: list(1).unwrap_or_else(|| BTreeSet::from([local_system.to_string()])),
        ssh_key: field(2).map(str::to_string),
        jobs,
        speed_factor: if speed == 0.0 { 1.0 } else { speed },
        supported_features: list(5).unwrap_or_default(),
        mandatory_features: list(6).unwrap_or_default(),
        host_key,
        origin: at.to_string(),
        enabled: true,
    })
}

/// Standard base64 (with or without padding); None when it isn't.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=');
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (bits < 6 && !out.is_empty()).then_some(out)
}

/// Where the pool comes from, first match wins: edict's `--builders`, then the local nix's
/// `builders` setting, then /etc/nix/machines.
pub fn load(
    cli_builders: Option<&str>,
    local: &LocalNix,
    machines_file: &Path,
) -> Result<Vec<Machine>> {
    let fix = |e: anyhow::Error| {
        anyhow::Error::from(Problem::new(
            "",
            "",
            format!("{e:#}"),
            "correct that entry (a line is `URI SYSTEMS SSH-KEY MAX-JOBS SPEED-FACTOR FEATURES MANDATORY-FEATURES HOST-KEY`, `-` for a default; Lix also reads TOML), or name the machines to use with --builders",
        ))
    };
    if let Some(spec) = cli_builders {
        return parse(spec, "--builders", &local.system).map_err(fix);
    }
    if let Some(builders) = local.builders.as_deref().filter(|b| !b.trim().is_empty()) {
        return parse(builders, "nix's builders setting", &local.system).map_err(fix);
    }
    match std::fs::read_to_string(machines_file) {
        Ok(text) => parse(&text, &machines_file.display().to_string(), &local.system).map_err(fix),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Problem::new(
            "",
            "",
            format!("reading {}: {e}", machines_file.display()),
            format!(
                "make it readable (`ls -l {}`), or name the machines to use with --builders",
                machines_file.display()
            ),
        )
        .into()),
    }
}

/// What the local nix says about itself.
#[derive(Clone, Debug, Default)]
pub struct LocalNix {
    pub system: String,
    pub builders: Option<String>,
}

impl LocalNix {
    /// Asks the local nix (`nix config show` on new versions, `nix show-config` on old);
    /// without a local nix, the system comes from `uname`.
    pub fn ask() -> Self {
        for sub in [
            &["config", "show", "--json"][..],
            &["show-config", "--json"][..],
        ] {
            let out = crate::exec::Cmd::new("nix")
                .args(["--extra-experimental-features", "nix-command"])
                .args(sub.iter().copied())
                .output();
            if let Ok(out) = out {
                if out.status.success() {
                    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                        let value = |k: &str| json[k]["value"].as_str().map(str::to_string);
                        return LocalNix {
                            system: value("system").unwrap_or_else(uname_system),
                            builders: value("builders"),
                        };
                    }
                }
            }
        }
        LocalNix {
            system: uname_system(),
            builders: None,
        }
    }
}

fn uname_system() -> String {
    let arch = std::env::consts::ARCH;
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        os => os,
    };
    format!("{arch}-{os}")
}

/// The system an attribute path names (`packages.aarch64-linux.hello`), if any.
pub fn system_in_attr_path(installable: &str) -> Option<String> {
    const KERNELS: &[&str] = &[
        "linux", "darwin", "freebsd", "netbsd", "openbsd", "windows", "none", "wasi", "cygwin",
        "redox", "genode", "solaris", "illumos",
    ];
    let attr = installable.split_once('#')?.1;
    attr.split('.')
        .find(|part| {
            part.split_once('-').is_some_and(|(arch, kernel)| {
                !arch.is_empty()
                    && arch.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && KERNELS.contains(&kernel)
            })
        })
        .map(str::to_string)
}

pub fn features(list: &str) -> BTreeSet<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Reads the pool (for `edict machines` and `edict auto`), with context for errors.
pub fn load_or_explain(cli_builders: Option<&str>) -> Result<(Vec<Machine>, LocalNix)> {
    let local = LocalNix::ask();
    let machines = load(cli_builders, &local, Path::new("/etc/nix/machines"))
        .context("reading the builder pool")?;
    Ok((machines, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS: &str = "x86_64-linux";

    fn names(ms: &[Machine]) -> Vec<&str> {
        ms.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn a_malformed_pool_names_the_place_and_a_fix() {
        let local = LocalNix {
            system: SYS.into(),
            builders: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("machines");
        std::fs::write(&file, "ssh://a x86_64-linux - many\n").unwrap();
        let e = format!("{:#}", load(None, &local, &file).unwrap_err());
        assert!(e.contains(&format!("{}:1", file.display())), "{e}");
        assert!(e.contains("MAX-JOBS") && e.contains("\n  fix: "), "{e}");
        let e = format!(
            "{:#}",
            load(Some("ssh://b x86_64-linux - 1 zero"), &local, &file).unwrap_err()
        );
        assert!(e.contains("--builders") && e.contains("\n  fix: "), "{e}");
    }

    /// The Lix manual's TOML example.
    #[test]
    fn toml_from_the_lix_manual() {
        let text = r#"version = 1

[machines.andesite]
uri = "ssh://lix@andesite.lix.systems" # toml also allows for comments
system-types = ["i686-linux"]
jobs = 8
speed-factor = 1.0
supported-features = ["kvm"]
ssh-key = "/home/deepslate/.ssh/id_ed25519"

[machines.diorite]
uri = "ssh://lix@diorite.lix.systems"
system-types = ["i686-linux"]
jobs = 8
speed-factor = 2.0
ssh-key = "/home/deepslate/.ssh/id_ed25519"

[machines.granite]
uri = "ssh://lix@granite.lix.systems"
system-types = ["i686-linux"]
jobs = 1
speed-factor = 2.0
supported-features = ["kvm", "benchmark"]
ssh-key = "/home/deepslate/.ssh/id_ed25519"

[machines.legacy]
uri = "ssh://nix@nix-15-11.nixos.org"
enable = false
"#;
        let ms = parse(text, "machines.toml", SYS).unwrap();
        assert_eq!(names(&ms), vec!["andesite", "diorite", "granite", "legacy"]);
        assert!(
            !ms[3].enabled,
            "enable = false: kept only to be listed as disabled"
        );
        assert_eq!(
            ms[3].rejection("x86_64-linux", &BTreeSet::new()),
            Some(Rejection::Disabled)
        );
        let a = &ms[0];
        assert_eq!(a.uri, "ssh://lix@andesite.lix.systems");
        assert_eq!(a.jobs, 8);
        assert_eq!(
            a.ssh_key.as_deref(),
            Some("/home/deepslate/.ssh/id_ed25519")
        );
        assert_eq!(a.supported_features, features("kvm"));
        assert_eq!(ms[1].speed_factor, 2.0);
        let d = a.destination().unwrap();
        assert_eq!(
            (d.user.as_deref(), d.host.as_str()),
            (Some("lix"), "andesite.lix.systems")
        );
        // The ad-hoc CLI form, without a version.
        let ms = parse(
            r#"machines.andesite = {uri = "ssh://lix@andesite.lix.systems", jobs = 8}"#,
            "--builders",
            SYS,
        )
        .unwrap();
        assert_eq!(
            (ms[0].jobs, ms[0].system_types.clone()),
            (8, BTreeSet::from([SYS.to_string()]))
        );
    }

    /// The Lix manual's legacy example, with defaults, `-`, `;` and comments.
    #[test]
    fn legacy_from_the_lix_manual() {
        let text = "lix@andesite.lix.systems    i686-linux      /home/deepslate/.ssh/id_ed25519        8 1 kvm\n\
                    lix@diorite.lix.systems     i686-linux      /home/deepslate/.ssh/id_ed25519        8 2\n\
                    lix@granite.lix.systems     i686-linux      /home/deepslate/.ssh/id_ed25519        1 2 kvm benchmark\n";
        let ms = parse(text, "/etc/nix/machines", SYS).unwrap();
        assert_eq!(ms.len(), 3);
        assert_eq!(ms[2].supported_features, features("kvm"));
        assert_eq!(ms[2].mandatory_features, features("benchmark"));
        assert_eq!(ms[1].speed_factor, 2.0);
        assert_eq!(ms[0].origin, "/etc/nix/machines:1");
        let ms = parse("ssh://mac x86_64-darwin ; ssh://beastie x86_64-freebsd # two\n# only a comment\nbox - - - - - - -", "--builders", SYS).unwrap();
        assert_eq!(names(&ms), vec!["mac", "beastie", "box"]);
        assert_eq!(ms[0].uri, "ssh://mac");
        assert_eq!(ms[2].system_types, BTreeSet::from([SYS.to_string()]));
        assert_eq!(
            (ms[2].jobs, ms[2].speed_factor, ms[2].ssh_key.clone()),
            (1, 1.0, None)
        );
        assert_eq!(
            parse("a i686-linux,x86_64-linux - 2 0", "x", SYS).unwrap()[0]
                .system_types
                .len(),
            2
        );
        assert_eq!(
            parse("a - - 2 0", "x", SYS).unwrap()[0].speed_factor,
            1.0,
            "0 means the default"
        );
        // The base64 host key becomes an OpenSSH key line.
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEKEYEXAMPLEKEYEXAMPLEKEYEXAMPLEKE root@b";
        let b64 = "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSUVYQU1QTEVLRVlFWEFNUExFS0VZRVhBTVBMRUtFWUVYQU1QTEVLRSByb290QGI=";
        assert_eq!(
            parse(&format!("b x86_64-linux - 1 1 - - {b64}"), "x", SYS).unwrap()[0]
                .host_key
                .as_deref(),
            Some(key)
        );
    }

    #[test]
    fn includes_and_detection() {
        let d = tempfile::tempdir().unwrap();
        let inc = d.path().join("inc");
        std::fs::write(&inc, "inner x86_64-linux\n").unwrap();
        let text = format!(
            "outer aarch64-linux\n@{}\n@/nonexistent/machines\n",
            inc.display()
        );
        let ms = parse(&text, "main", SYS).unwrap();
        assert_eq!(names(&ms), vec!["outer", "inner"]);
        assert_eq!(ms[1].origin, format!("{}:1", inc.display()));
        // `@FILE` as the whole value may be TOML.
        let toml = d.path().join("m.toml");
        std::fs::write(&toml, "version = 1\n[machines.t]\nuri = \"ssh://t\"\n").unwrap();
        assert_eq!(
            names(&parse(&format!("@{}", toml.display()), "--builders", SYS).unwrap()),
            vec!["t"]
        );
        assert!(
            parse("@/nonexistent/file", "--builders", SYS)
                .unwrap()
                .is_empty()
        );
        assert!(parse("", "x", SYS).unwrap().is_empty());
        assert!(parse("# nothing\n\n", "x", SYS).unwrap().is_empty());
    }

    #[test]
    fn malformed_input_names_source_line_machine_and_field() {
        let cases: &[(&str, &[&str])] = &[
            (
                "a x86_64-linux - zero",
                &["m:1", "field 4 (`jobs`)", "zero"],
            ),
            ("a x86_64-linux - 0", &["m:1", "`jobs`", "positive"]),
            (
                "ok\na x86_64-linux - 1 -2",
                &["m:2", "`speed-factor`", ">= 0"],
            ),
            (
                "a x86_64-linux - 1 1 - - not*base64",
                &["m:1", "ssh-public-host-key", "base64"],
            ),
            ("a b c 1 1 e f g h", &["m:1", "at most 8"]),
            (
                "version = 1\n[machines.x]\njobs = 2\n",
                &["m [machines.x]", "`uri`", "must be present"],
            ),
            (
                "version = 1\n[machines.x]\nuri = \"ssh://x\"\njobs = -1\n",
                &["[machines.x]", "`jobs`"],
            ),
            (
                "version = 1\n[machines.x]\nuri = \"ssh://x\"\nspeed-factor = -1.0\n",
                &["[machines.x]", "`speed-factor`"],
            ),
            (
                "version = 1\n[machines.x]\nuri = \"ssh://x\"\ncolour = \"red\"\n",
                &["m: not a valid TOML", "colour"],
            ),
            (
                "version = 2\n[machines.x]\nuri = \"ssh://x\"\n",
                &["version 2"],
            ),
            (
                "[machines.x]\nuri = \"ssh://x\n",
                &["not a valid TOML", "line 2"],
            ),
            ("machines.x = {uri = ssh://x}", &["not a valid TOML"]),
        ];
        for (text, needles) in cases {
            let err = format!("{:#}", parse(text, "m", SYS).unwrap_err());
            for n in *needles {
                assert!(err.contains(n), "{text:?}: expected `{n}` in: {err}");
            }
        }
    }

    /// First match wins: --builders, then nix's `builders`, then the machines file.
    #[test]
    fn sources_in_order() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("machines");
        std::fs::write(&file, "from-file x86_64-linux\n").unwrap();
        let with = |b: Option<&str>| LocalNix {
            system: SYS.into(),
            builders: b.map(str::to_string),
        };
        let n = |ms: Vec<Machine>| ms.into_iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(
            n(load(Some("from-cli"), &with(Some("from-nix")), &file).unwrap()),
            vec!["from-cli"]
        );
        assert_eq!(
            n(load(None, &with(Some("from-nix")), &file).unwrap()),
            vec!["from-nix"]
        );
        assert_eq!(
            n(load(None, &with(Some("")), &file).unwrap()),
            vec!["from-file"]
        );
        assert_eq!(
            n(load(None, &with(None), &file).unwrap()),
            vec!["from-file"]
        );
        assert!(
            load(None, &with(None), &d.path().join("none"))
                .unwrap()
                .is_empty()
        );
        let err = format!("{:#}", load(None, &with(None), d.path()).unwrap_err());
        assert!(err.contains(&d.path().display().to_string()), "{err}");
    }

    #[test]
    fn eligibility_follows_lix() {
        let m = |sys: &str, sup: &str, mand: &str| Machine {
            name: "m".into(),
            uri: "ssh://m".into(),
            system_types: features(sys),
            ssh_key: None,
            jobs: 1,
            speed_factor: 1.0,
            supported_features: features(sup),
            mandatory_features: features(mand),
            host_key: None,
            origin: "t".into(),
            enabled: true,
        };
        let none = BTreeSet::new();
        assert_eq!(
            m("x86_64-linux", "", "").rejection("x86_64-linux", &none),
            None
        );
        assert_eq!(m("x86_64-linux", "", "").rejection("builtin", &none), None);
        assert!(matches!(
            m("x86_64-linux", "", "").rejection("aarch64-linux", &none),
            Some(Rejection::UnsupportedSystem(_))
        ));
        assert!(
            matches!(m("x86_64-linux", "kvm", "").rejection("x86_64-linux", &features("kvm,big")), Some(Rejection::MissingFeatures(v)) if v == vec!["big"])
        );
        assert_eq!(
            m("x86_64-linux", "kvm", "big").rejection("x86_64-linux", &features("kvm,big")),
            None
        );
        assert!(matches!(
            m("x86_64-linux", "", "benchmark").rejection("x86_64-linux", &none),
            Some(Rejection::MandatoryNotRequested(_))
        ));
        let mut local = m("x86_64-linux", "", "");
        local.uri = "local?root=/tmp/x".into();
        assert_eq!(
            local.rejection("x86_64-linux", &none),
            Some(Rejection::NotSsh)
        );
    }

    #[test]
    fn destinations_and_keys_from_uris() {
        let m = |uri: &str| Machine {
            name: uri.into(),
            uri: uri.into(),
            system_types: BTreeSet::new(),
            ssh_key: None,
            jobs: 1,
            speed_factor: 1.0,
            supported_features: BTreeSet::new(),
            mandatory_features: BTreeSet::new(),
            host_key: None,
            origin: "t".into(),
            enabled: true,
        };
        let d = m("ssh://nix@mac?port=1337").destination().unwrap();
        assert_eq!(
            (d.user.as_deref(), d.host.as_str(), d.port),
            (Some("nix"), "mac", Some(1337))
        );
        let d = m("ssh-ng://b:2222").destination().unwrap();
        assert_eq!((d.host.as_str(), d.port), ("b", Some(2222)));
        assert_eq!(m("root@box").destination().unwrap().host, "box");
        assert_eq!(
            m("ssh://b?ssh-key=/k&compress=true").key().as_deref(),
            Some("/k")
        );
        for bad in [
            "local",
            "daemon",
            "/tmp/store",
            "https://cache.example.org",
            "ssh://b?port=x",
        ] {
            assert!(m(bad).destination().is_err(), "{bad}");
        }
    }

    #[test]
    fn systems_in_attribute_paths() {
        assert_eq!(
            system_in_attr_path(".#packages.aarch64-linux.hello").as_deref(),
            Some("aarch64-linux")
        );
        assert_eq!(
            system_in_attr_path("./x#checks.x86_64-darwin.fmt").as_deref(),
            Some("x86_64-darwin")
        );
        assert_eq!(system_in_attr_path(".#hello"), None);
        assert_eq!(system_in_attr_path(".#my-pkg"), None);
        assert_eq!(system_in_attr_path("nixpkgs"), None);
    }
}
