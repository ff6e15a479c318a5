//! Step 1 (types): a flake reference as nix parses it, local or remote.
//!
//! Nix's rule (libflake `parseFlakeRef`): a string with a URL scheme is a URL; one that
//! matches the flake-id grammar (`nixpkgs`, `nixpkgs/nixos-24.05`) is a registry name;
//! anything else is a path. Local refs are the ones that name this machine's file system:
//! paths, `path:`, `git+file:`, `file:`/`tarball+file:`/`file+file:`. Everything else
//! (`github:`, `https:`, registry names, …) means the same thing on the remote.

/// How a local ref names its source, which decides how it is synced and rewritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalKind {
    /// `.`, `./x`, `/abs`: nix uses git semantics when the path is inside a work tree.
    PathLike,
    /// `path:…`: always the whole directory, even inside a git work tree.
    Path,
    /// `git+file:…`: a git repository.
    GitFile,
    /// `file:`, `tarball+file:`, `file+file:`: a single local file (often an archive).
    File,
}

/// A ref that names something on this machine, split so the path can be replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalRef {
    pub kind: LocalKind,
    /// The scheme as written, with its `:` and any `//` (`"git+file://"`), or "" for paths.
    pub scheme: String,
    /// The path, percent-decoded for URLs; relative paths are relative to the cwd.
    pub path: String,
    /// Everything from `?` up to `#`, including the `?`, as written.
    pub query: String,
    /// Everything from `#` on, including the `#`, as written.
    pub fragment: String,
}

/// A path or value for a URL that nix percent-decodes (a store URL's query, a flake ref),
/// so one with `&`, `#`, `%`, `?` or spaces arrives whole.
pub fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl LocalRef {
    /// The same ref pointing at `path` instead (the remote mirror), keeping scheme, query
    /// and fragment. `path` must be an absolute path made of URL-safe characters.
    pub fn with_path(&self, path: &str) -> String {
        let scheme = match self.kind {
            LocalKind::PathLike => "",
            // Always emit the `//` form with an absolute path: valid for every nix version.
            LocalKind::GitFile => "git+file://",
            LocalKind::Path => "path:",
            LocalKind::File => self.scheme.trim_end_matches("//"),
        };
        let scheme = if self.kind == LocalKind::File && !scheme.is_empty() {
            format!("{scheme}//")
        } else {
            scheme.to_string()
        };
        format!("{scheme}{path}{}{}", self.query, self.fragment)
    }

    /// The `dir=` query parameter (a flake in a subdirectory of the source), if any.
    pub fn dir_param(&self) -> Option<String> {
        self.param("dir")
    }

    /// Whether the ref asks nix for the git submodules too (`?submodules=1`).
    pub fn wants_submodules(&self) -> bool {
        matches!(self.param("submodules").as_deref(), Some("1" | "true"))
    }

    fn param(&self, name: &str) -> Option<String> {
        self.query
            .trim_start_matches('?')
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(percent_decode)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlakeRef {
    Local(LocalRef),
    /// Means the same on the remote: registry names, `github:`, `https:`, store paths, ….
    Remote,
}

/// Parses a flake reference (or installable: `REF#attr`, `REF#attr^out`).
pub fn parse(s: &str) -> FlakeRef {
    // A store path (`/nix/store/…-x`, `/nix/store/…drv^out`) is an installable, not a flake;
    // it names the remote's store when run there.
    if s.starts_with("/nix/store/") {
        return FlakeRef::Remote;
    }
    let (before_frag, fragment) = split_at_char(s, '#');
    if let Some(scheme_end) = url_scheme_len(before_frag) {
        let scheme = &before_frag[..scheme_end]; // without ':'
        let rest = &before_frag[scheme_end + 1..];
        let kind = match scheme {
            "path" => LocalKind::Path,
            "git+file" => LocalKind::GitFile,
            "file" | "tarball+file" | "file+file" => LocalKind::File,
            _ => return FlakeRef::Remote,
        };
        let (rest, query) = split_at_char(rest, '?');
        // `scheme:///abs` and `scheme:/abs` are absolute; `scheme:./rel` (and `path:rel`) are
        // relative to the cwd. An authority other than empty or localhost is not local.
        let (written_scheme, path) = if let Some(after) = rest.strip_prefix("//") {
            let slash = after.find('/').unwrap_or(after.len());
            let authority = &after[..slash];
            if !(authority.is_empty() || authority == "localhost") {
                return FlakeRef::Remote;
            }
            (format!("{scheme}://"), &after[slash..])
        } else {
            (format!("{scheme}:"), rest)
        };
        return FlakeRef::Local(LocalRef {
            kind,
            scheme: written_scheme,
            path: percent_decode(path),
            query: query.to_string(),
            fragment: fragment.to_string(),
        });
    }
    if is_flake_id_ref(before_frag) {
        return FlakeRef::Remote;
    }
    // A path. Nix reads `?query` on paths too (`.?dir=sub`).
    let (path, query) = split_at_char(before_frag, '?');
    FlakeRef::Local(LocalRef {
        kind: LocalKind::PathLike,
        scheme: String::new(),
        path: path.to_string(),
        query: query.to_string(),
        fragment: fragment.to_string(),
    })
}

/// Splits at the first `c`, keeping `c` at the start of the second part.
fn split_at_char(s: &str, c: char) -> (&str, &str) {
    match s.find(c) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Length of a URL scheme (`[a-z][a-z0-9+.-]*`) followed by `:`, if `s` starts with one.
fn url_scheme_len(s: &str) -> Option<usize> {
    let colon = s.find(':')?;
    let scheme = &s[..colon];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_lowercase()
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c)))
    .then_some(colon)
}

/// Nix's flake-id form: `id`, `id/ref`, `id/ref/rev` (registry lookups), where the id is
/// `[a-zA-Z][a-zA-Z0-9_-]*` and refs are git ref names.
fn is_flake_id_ref(s: &str) -> bool {
    let s = s.split('?').next().unwrap_or(s);
    let mut parts = s.split('/');
    let Some(id) = parts.next() else { return false };
    let mut id_chars = id.chars();
    let id_ok = id_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && id_chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let rest: Vec<&str> = parts.collect();
    id_ok
        && rest.len() <= 2
        && rest.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
        })
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_url_values_are_percent_encoded() {
        assert_eq!(
            percent_encode("/nix/var/nix/profiles/default/bin/nix-store"),
            "/nix/var/nix/profiles/default/bin/nix-store"
        );
        assert_eq!(
            percent_encode("/opt/my nix&co/#1%/nix-store"),
            "/opt/my%20nix%26co/%231%25/nix-store"
        );
    }

    fn local(s: &str) -> LocalRef {
        match parse(s) {
            FlakeRef::Local(l) => l,
            FlakeRef::Remote => panic!("{s} parsed as remote"),
        }
    }

    #[test]
    fn remote_refs() {
        for s in [
            "nixpkgs",
            "nixpkgs#hello",
            "nixpkgs/nixos-24.05#hello",
            "nixpkgs/nixos-24.05/0123456789abcdef0123456789abcdef01234567",
            "flake:nixpkgs",
            "github:NixOS/nixpkgs",
            "github:NixOS/nixpkgs/nixos-24.05#hello",
            "gitlab:o/r",
            "sourcehut:~o/r",
            "git+https://example.org/r.git?ref=main",
            "git+ssh://git@example.org/r",
            "https://example.org/x.tar.gz",
            "tarball+https://example.org/x.tar.gz",
            "hg+https://example.org/r",
            "git+file://otherhost/srv/r",
            "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello",
            "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello.drv^out",
            "self#x",
        ] {
            assert_eq!(parse(s), FlakeRef::Remote, "{s}");
        }
    }

    #[test]
    fn local_path_like_refs() {
        let cases = [
            (".", ".", "", ""),
            (".#pkg", ".", "", "#pkg"),
            ("./sub#x", "./sub", "", "#x"),
            ("../up#x.y", "../up", "", "#x.y"),
            ("..", "..", "", ""),
            ("/abs/path", "/abs/path", "", ""),
            (
                "/abs/path#packages.x86_64-linux.default",
                "/abs/path",
                "",
                "#packages.x86_64-linux.default",
            ),
            (".?dir=sub#x", ".", "?dir=sub", "#x"),
            ("./my dir#x", "./my dir", "", "#x"),
            (".#pkg^out,dev", ".", "", "#pkg^out,dev"),
            ("./a'b$c", "./a'b$c", "", ""),
            ("_private", "_private", "", ""),
        ];
        for (s, path, query, frag) in cases {
            let l = local(s);
            assert_eq!(l.kind, LocalKind::PathLike, "{s}");
            assert_eq!(
                (l.path.as_str(), l.query.as_str(), l.fragment.as_str()),
                (path, query, frag),
                "{s}"
            );
        }
    }

    #[test]
    fn local_url_refs() {
        let l = local("path:/abs/p?narHash=sha256-x#a");
        assert_eq!(
            (
                l.kind.clone(),
                l.path.as_str(),
                l.query.as_str(),
                l.fragment.as_str()
            ),
            (LocalKind::Path, "/abs/p", "?narHash=sha256-x", "#a")
        );
        let l = local("path:./rel");
        assert_eq!(
            (l.kind.clone(), l.path.as_str()),
            (LocalKind::Path, "./rel")
        );
        let l = local("git+file:///home/me/r?ref=main&dir=sub#x");
        assert_eq!(
            (l.kind.clone(), l.path.as_str(), l.query.as_str()),
            (LocalKind::GitFile, "/home/me/r", "?ref=main&dir=sub")
        );
        assert_eq!(l.dir_param().as_deref(), Some("sub"));
        assert!(!l.wants_submodules());
        assert!(local(".?submodules=1#x").wants_submodules());
        assert!(local("git+file:///r?dir=a&submodules=true").wants_submodules());
        assert!(!local(".?submodules=0&dirx=1").wants_submodules());
        assert_eq!(local(".?dirx=1").dir_param(), None);
        let l = local("git+file:/home/me/r");
        assert_eq!(
            (l.kind.clone(), l.path.as_str()),
            (LocalKind::GitFile, "/home/me/r")
        );
        let l = local("git+file://localhost/home/me/r");
        assert_eq!(l.path, "/home/me/r");
        let l = local("git+file:///home/me/my%20repo");
        assert_eq!(l.path, "/home/me/my repo");
        let l = local("file:///tmp/src.tar.gz");
        assert_eq!(
            (l.kind.clone(), l.path.as_str()),
            (LocalKind::File, "/tmp/src.tar.gz")
        );
        let l = local("tarball+file:///tmp/src.tar.gz");
        assert_eq!(l.kind, LocalKind::File);
    }

    #[test]
    fn rewriting_keeps_query_and_fragment() {
        let m = "/home/r/.cache/edict/mirrors/x-1";
        assert_eq!(local(".#pkg").with_path(m), format!("{m}#pkg"));
        assert_eq!(
            local(".?dir=sub#pkg").with_path(m),
            format!("{m}?dir=sub#pkg")
        );
        assert_eq!(local("path:./x#a").with_path(m), format!("path:{m}#a"));
        assert_eq!(
            local("git+file:/r?ref=main&dir=d#a").with_path(m),
            format!("git+file://{m}?ref=main&dir=d#a")
        );
        assert_eq!(
            local("file:///tmp/a.tar.gz#x").with_path(m),
            format!("file://{m}#x")
        );
        assert_eq!(
            local("tarball+file:/tmp/a.tar.gz").with_path(m),
            format!("tarball+file://{m}")
        );
    }

    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
