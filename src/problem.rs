//! What edict reports when a run cannot go on: which host, at which step, what went wrong,
//! what the tool that failed said, and the fix. Its `Display` is the one format every
//! error has (`HOST: STEP: WHAT` / `  ssh said: …` / `  fix: …`); its kind gives the exit
//! code; the doctor reads its fields rather than parsing that text.

/// Which kind of failure, for the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// edict could not do a step (1).
    Edict,
    /// ssh itself failed or the connection went away (255, as ssh exits).
    Connection,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub host: String,
    pub step: String,
    pub what: String,
    /// Who said what, in their words (`ssh`, and its last lines).
    pub said: Option<(String, String)>,
    pub fix: String,
    pub kind: Kind,
}

impl Problem {
    /// A step edict could not do (exit code 1). A problem met before any host is known
    /// (reading the arguments, mapping sources, reading the machines file) has an empty
    /// host and step until [`place`] gives it the ones it was met in.
    pub fn new(host: &str, step: &str, what: impl Into<String>, fix: impl Into<String>) -> Self {
        Problem {
            host: host.to_string(),
            step: step.to_string(),
            what: what.into(),
            said: None,
            fix: fix.into(),
            kind: Kind::Edict,
        }
    }

    /// What the tool that failed said (`nix`, `rsync`, `git`), in its words.
    pub fn said(mut self, who: &str, text: impl Into<String>) -> Self {
        let text: String = text.into();
        let text = text.trim();
        if !text.is_empty() {
            self.said = Some((who.to_string(), text.to_string()));
        }
        self
    }

    pub fn exit_code(&self) -> u8 {
        match self.kind {
            Kind::Edict => 1,
            Kind::Connection => 255,
        }
    }

    /// The problem an error is, if it is one (anywhere in its chain).
    pub fn of(e: &anyhow::Error) -> Option<&Problem> {
        e.chain().find_map(|c| c.downcast_ref::<Problem>())
    }
}

/// `e` as met at `step` on `host`: a problem without a host gets them; any other error
/// is said after them.
pub fn place(e: anyhow::Error, host: &str, step: &str) -> anyhow::Error {
    // What was said around the problem on the way up (`with_context`) stays, before it.
    let around: Vec<String> = e
        .chain()
        .take_while(|c| !c.is::<Problem>())
        .map(|c| c.to_string())
        .collect();
    match e.downcast::<Problem>() {
        Ok(mut p) => {
            if p.host.is_empty() {
                p.host = host.to_string();
                p.step = step.to_string();
            }
            if !around.is_empty() {
                p.what = format!("{}: {}", around.join(": "), p.what);
            }
            p.into()
        }
        Err(e) => e.context(format!("{host}: {step}")),
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in [&self.host, &self.step] {
            if !part.is_empty() {
                write!(f, "{part}: ")?;
            }
        }
        write!(f, "{}", self.what)?;
        if let Some((who, said)) = &self.said {
            write!(f, "\n  {who} said: {}", said.replace('\n', "\n  "))?;
        }
        write!(f, "\n  fix: {}", self.fix)
    }
}

impl std::error::Error for Problem {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_as_every_edict_error_does() {
        let p = Problem {
            host: "b".into(),
            step: "connecting".into(),
            what: "b is unreachable.".into(),
            said: Some(("ssh".into(), "one\ntwo".into())),
            fix: "check the network".into(),
            kind: Kind::Connection,
        };
        assert_eq!(
            p.to_string(),
            "b: connecting: b is unreachable.\n  ssh said: one\n  two\n  fix: check the network"
        );
        assert_eq!(p.exit_code(), 255);
        let e = anyhow::Error::new(p.clone()).context("outer");
        assert_eq!(Problem::of(&e), Some(&p));
    }

    /// A problem met before the host was known gets it where it is placed; other errors
    /// are said after the host and step, as context.
    #[test]
    fn placing_gives_a_problem_its_host_and_step() {
        let p = Problem::new("", "", "`./x` does not exist here", "check the path")
            .said("nix", "  error: no such file\n");
        assert_eq!(
            p.to_string(),
            "`./x` does not exist here\n  nix said: error: no such file\n  fix: check the path"
        );
        let placed = place(p.into(), "b", "mapping local sources");
        assert_eq!(
            placed.to_string(),
            "b: mapping local sources: `./x` does not exist here\n  nix said: error: no such file\n  fix: check the path"
        );
        assert_eq!(Problem::of(&placed).unwrap().host, "b");
        let other = place(anyhow::anyhow!("disk full"), "b", "syncing");
        assert_eq!(format!("{other:#}"), "b: syncing: disk full");
        // One that has its host keeps it.
        let own = place(Problem::new("a", "x", "w", "f").into(), "b", "y");
        assert_eq!(own.to_string(), "a: x: w\n  fix: f");
        // What was said around it on the way up stays.
        let around = anyhow::Error::from(Problem::new("", "", "`./x` does not exist", "f"))
            .context("the command uses the flake in .");
        let placed = place(around, "b", "mapping");
        assert_eq!(
            placed.to_string(),
            "b: mapping: the command uses the flake in .: `./x` does not exist\n  fix: f"
        );
    }
}
