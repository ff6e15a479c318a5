//! Ctrl-C, SIGTERM and SIGHUP: edict catches them instead of dying, so that it can stop the
//! command on HOST (which would otherwise keep running) and clean up on both sides.

use anyhow::Result;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Signals {
    caught: Arc<AtomicBool>,
}

impl Signals {
    pub fn install() -> Result<Self> {
        let caught = Arc::new(AtomicBool::new(false));
        for sig in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            signal_hook::flag::register(sig, Arc::clone(&caught))?;
        }
        Ok(Signals { caught })
    }

    pub fn caught(&self) -> bool {
        self.caught.load(Ordering::Relaxed)
    }
}
