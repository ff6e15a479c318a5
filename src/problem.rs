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

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.host, self.step, self.what)?;
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
}
