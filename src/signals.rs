//! Ctrl-C, SIGTERM and SIGHUP: edict catches them instead of dying, so that it can stop the
//! command on HOST (which would otherwise keep running) and clean up on both sides.

use anyhow::Result;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Signals {
    caught: Arc<AtomicBool>,
}

/// Set by the same signals, for steps that are not handed the [`Signals`] (a copy that
/// must not start again after a Ctrl-C).
static ANY: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// Whether a signal came, process-wide (false before [`Signals::install`]).
pub fn any() -> bool {
    ANY.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

impl Signals {
    pub fn install() -> Result<Self> {
        let caught = Arc::new(AtomicBool::new(false));
        let any = ANY.get_or_init(|| Arc::new(AtomicBool::new(false)));
        for sig in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            signal_hook::flag::register(sig, Arc::clone(&caught))?;
            signal_hook::flag::register(sig, Arc::clone(any))?;
        }
        Ok(Signals { caught })
    }

    pub fn caught(&self) -> bool {
        self.caught.load(Ordering::Relaxed)
    }
}

/// A step cut short by Ctrl-C (or SIGTERM, SIGHUP). A terminal sends SIGINT to rsync, ssh and
/// `nix copy` as well, and what they say as they die is the interruption, not an error to
/// explain: edict exits 130 and names the step.
#[derive(Debug)]
pub struct Interrupted {
    pub host: String,
    pub step: &'static str,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: interrupted while {}", self.host, self.step)
    }
}

impl std::error::Error for Interrupted {}

impl Signals {
    /// `r`, unless a signal came while it ran: then the interruption, whatever the step said.
    pub fn step<T>(&self, host: &str, step: &'static str, r: Result<T>) -> Result<T> {
        match r {
            Err(_) if self.caught() => Err(Interrupted {
                host: host.to_string(),
                step,
            }
            .into()),
            r => r,
        }
    }
}
