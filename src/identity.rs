//! This machine's identity, part of every mirror's name on HOST: two machines that sync the
//! same path to one host must not share a mirror there (each run would send everything
//! again, and each would take the other's files for changes made on HOST).

/// Where an identity can come from, in the order they are tried.
struct Sources {
    /// Linux: systemd's and dbus's machine id files (their content, trimmed).
    files: Vec<Option<String>>,
    /// macOS: the platform UUID (gethostuuid(2)), which /etc/machine-id stands for there.
    platform_uuid: Option<String>,
    /// Everywhere (the last resort): the host name, uname(2)'s nodename.
    hostname: Option<String>,
}

/// The identity of this machine: stable across runs and reboots, distinct between
/// machines (on Linux, the same one edict has always used, so existing mirrors stay).
pub fn machine_id() -> String {
    choose(Sources {
        files: ["/etc/machine-id", "/var/lib/dbus/machine-id"]
            .iter()
            .map(|f| std::fs::read_to_string(f).ok())
            .collect(),
        platform_uuid: platform_uuid(),
        hostname: Some(
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
        ),
    })
}

fn choose(sources: Sources) -> String {
    sources
        .files
        .into_iter()
        .chain([sources.platform_uuid, sources.hostname])
        .flatten()
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-machine".to_string())
}

#[cfg(target_os = "macos")]
fn platform_uuid() -> Option<String> {
    let mut id = [0u8; 16];
    let wait = libc::timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    // SAFETY: `id` is the 16-byte uuid_t that gethostuuid fills; `wait` outlives the call.
    let rc = unsafe { libc::gethostuuid(id.as_mut_ptr(), &wait) };
    (rc == 0 && id != [0; 16]).then(|| id.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(not(target_os = "macos"))]
fn platform_uuid() -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_source_that_says_something_wins() {
        let id = |files: &[Option<&str>], uuid: Option<&str>, host: Option<&str>| {
            choose(Sources {
                files: files.iter().map(|f| f.map(str::to_string)).collect(),
                platform_uuid: uuid.map(str::to_string),
                hostname: host.map(str::to_string),
            })
        };
        // Linux: /etc/machine-id, else dbus's.
        assert_eq!(id(&[Some("abc\n"), Some("def")], None, Some("box")), "abc");
        assert_eq!(id(&[Some("  \n"), Some("def\n")], None, Some("box")), "def");
        // macOS: no machine-id files; the platform UUID, not the host name (which a
        // laptop changes with the network it joins).
        assert_eq!(id(&[None, None], Some("1a2b"), Some("mac.local")), "1a2b");
        // Elsewhere: the host name; nothing at all is still a name.
        assert_eq!(id(&[None, None], None, Some("bsd-box")), "bsd-box");
        assert_eq!(id(&[None, None], None, None), "unknown-machine");
        assert_eq!(id(&[None], None, Some("")), "unknown-machine");
    }

    #[test]
    fn this_machine_has_one() {
        let id = machine_id();
        assert_ne!(id, "unknown-machine");
        assert_eq!(id, machine_id(), "stable");
    }
}
