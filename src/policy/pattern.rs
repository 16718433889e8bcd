//! Patterns used by rules: hosts, identity globs and path templates with named captures.

/// A host pattern: exact (case-insensitive), `*.suffix` (one or more labels), or `*` (any host).
/// An exact host may name a port (`registry.internal:5000`); then only requests whose authority
/// names that port match. Without a port, the request's port does not matter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Any,
    Exact(String),
    ExactPort(String, u16),
    /// The suffix including its leading dot, e.g. `.example.com`.
    Suffix(String),
}

impl HostPattern {
    /// Parses a pattern as written in a rule. A port is part of the pattern only if given.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let lower = pattern.trim_end_matches('.').to_ascii_lowercase();
        if lower == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(suffix) = lower.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(format!("invalid wildcard host {pattern:?}"));
            }
            return Ok(HostPattern::Suffix(format!(".{suffix}")));
        }
        if lower.is_empty() || lower.contains('*') || lower.contains('/') {
            return Err(format!("invalid host {pattern:?}: use an exact name, `*.domain` or `*`"));
        }
        match crate::request::split_authority(&lower) {
            Ok((host, None)) => Ok(HostPattern::Exact(host)),
            Ok((host, Some(port))) => Ok(HostPattern::ExactPort(host, port)),
            Err(_) => Err(format!("invalid host {pattern:?}")),
        }
    }

    /// Whether a normalized host (lower case, no port, no trailing dot) and port match.
    pub fn matches(&self, host: &str, port: Option<u16>) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == host,
            HostPattern::ExactPort(h, p) => h == host && port == Some(*p),
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum GlobToken {
    Byte(u8),
    /// `*`: any run of characters except `/`.
    Star,
    /// `**`: any run of characters.
    DoubleStar,
}

/// A glob over identities, repositories and values: `*` matches within one path segment (no `/`),
/// `**` matches anything, everything else is literal. `spiffe://prod.example/ns/ci/**` matches every
/// workload under that path; `spiffe://prod.example/ns/*/sa/builder` one level only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    source: String,
    tokens: Vec<GlobToken>,
}

impl Glob {
    /// Compiles a pattern.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty pattern".into());
        }
        let bytes = pattern.as_bytes();
        let mut tokens = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b == b'*' {
                if bytes.get(i + 1) == Some(&b'*') {
                    tokens.push(GlobToken::DoubleStar);
                    i += 2;
                    while bytes.get(i) == Some(&b'*') {
                        i += 1;
                    }
                } else {
                    tokens.push(GlobToken::Star);
                    i += 1;
                }
            } else {
                tokens.push(GlobToken::Byte(b));
                i += 1;
            }
        }
        Ok(Glob { source: pattern.to_owned(), tokens })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The literal text before the first wildcard.
    pub fn literal_prefix(&self) -> String {
        let bytes: Vec<u8> = self
            .tokens
            .iter()
            .map_while(|t| match t {
                GlobToken::Byte(b) => Some(*b),
                _ => None,
            })
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Whether `text` matches. Runs in O(len(text) x len(pattern)) whatever the input: the set of
    /// pattern positions reachable after each byte is tracked, with no backtracking.
    pub fn matches(&self, text: &str) -> bool {
        // Fast path for the common shape: no wildcard at all.
        if self.tokens.iter().all(|t| matches!(t, GlobToken::Byte(_))) {
            return self.source == text;
        }
        let n = self.tokens.len();
        let mut states = vec![false; n + 1];
        let mut next = vec![false; n + 1];
        set(&mut states, 0);
        close(&self.tokens, &mut states);
        for &c in text.as_bytes() {
            next.iter_mut().for_each(|s| *s = false);
            let mut any = false;
            for (i, token) in self.tokens.iter().enumerate() {
                if !states.get(i).copied().unwrap_or(false) {
                    continue;
                }
                let to = match token {
                    GlobToken::Byte(b) if *b == c => i + 1,
                    GlobToken::Star if c != b'/' => i,
                    GlobToken::DoubleStar => i,
                    _ => continue,
                };
                set(&mut next, to);
                any = true;
            }
            if !any {
                return false;
            }
            std::mem::swap(&mut states, &mut next);
            close(&self.tokens, &mut states);
        }
        states.get(n).copied().unwrap_or(false)
    }
}

fn set(states: &mut [bool], i: usize) {
    if let Some(s) = states.get_mut(i) {
        *s = true;
    }
}

/// Wildcards also match the empty string: a state on a wildcard reaches the next position.
fn close(tokens: &[GlobToken], states: &mut [bool]) {
    for (i, token) in tokens.iter().enumerate() {
        if states.get(i).copied().unwrap_or(false) && matches!(token, GlobToken::Star | GlobToken::DoubleStar)
        {
            set(states, i + 1);
        }
    }
}

/// One segment of a path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{name}` or `*`: exactly one non-empty segment.
    One(Option<String>),
    /// `{name:**}` (one or more segments) or `**` (zero or more).
    Many(Option<String>),
}

/// A path pattern compiled to segments: `/v2/{repo:**}/manifests/{ref}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
}

/// Named captures of a matched path: (name, value) in template order.
pub type Captures<'p> = Vec<(&'p str, &'p str)>;

impl PathTemplate {
    /// An exact path.
    pub fn exact(path: &str) -> Result<Self, String> {
        check_literal_path(path)?;
        let segments = path.split('/').skip(1).map(|s| Segment::Literal(s.to_owned())).collect();
        Ok(PathTemplate { segments })
    }

    /// A segment-aware prefix: `/v2/dev` matches `/v2/dev` and `/v2/dev/...`, not `/v2/devil`;
    /// `/v2/` matches everything below `/v2/`.
    pub fn prefix(path: &str) -> Result<Self, String> {
        check_literal_path(path)?;
        let mut segments: Vec<Segment> =
            path.trim_end_matches('/').split('/').skip(1).map(|s| Segment::Literal(s.to_owned())).collect();
        // The prefix itself, and anything below it.
        segments.push(Segment::Many(None));
        Ok(PathTemplate { segments })
    }

    /// A template: literal segments, `{name}` / `*` for one segment, `{name:**}` for one or more,
    /// `**` for zero or more.
    pub fn template(path: &str) -> Result<Self, String> {
        if !path.starts_with('/') {
            return Err(format!("path {path:?} must start with `/`"));
        }
        let mut segments = Vec::new();
        let mut names = std::collections::HashSet::new();
        for raw in path.split('/').skip(1) {
            let segment = if raw == "*" {
                Segment::One(None)
            } else if raw == "**" {
                Segment::Many(None)
            } else if let Some(inner) = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                let (name, many) = match inner.split_once(':') {
                    Some((name, "**")) => (name, true),
                    Some((_, kind)) => {
                        return Err(format!("unknown capture kind {kind:?} in {path:?} (only `**`)"))
                    }
                    None => (inner, false),
                };
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(format!("invalid capture name {name:?} in {path:?}"));
                }
                if !names.insert(name.to_owned()) {
                    return Err(format!("capture {name:?} appears twice in {path:?}"));
                }
                if many {
                    Segment::Many(Some(name.to_owned()))
                } else {
                    Segment::One(Some(name.to_owned()))
                }
            } else {
                if raw.contains(['{', '}', '*']) {
                    return Err(format!("segment {raw:?} of {path:?} mixes text and wildcards"));
                }
                check_literal_path(&format!("/{raw}"))?;
                Segment::Literal(raw.to_owned())
            };
            segments.push(segment);
        }
        Ok(PathTemplate { segments })
    }

    /// The literal segments before the first wildcard: the key under which the index files it.
    pub fn literal_prefix(&self) -> impl Iterator<Item = &str> + Clone {
        self.segments.iter().map_while(|s| match s {
            Segment::Literal(l) => Some(l.as_str()),
            _ => None,
        })
    }

    /// The names this template captures.
    pub fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::One(Some(n)) | Segment::Many(Some(n)) => Some(n.as_str()),
            _ => None,
        })
    }

    /// Matches a checked request path; returns the named captures.
    pub fn matches<'p>(&'p self, path: &'p str) -> Option<Captures<'p>> {
        let rest = path.strip_prefix('/')?;
        let mut captures = Vec::new();
        if match_segments(&self.segments, rest, &mut captures) {
            Some(captures)
        } else {
            None
        }
    }
}

fn check_literal_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with `/`"));
    }
    match crate::request::check_path(path) {
        Ok(checked) if checked == path => Ok(()),
        _ => Err(format!("path {path:?} can never match: requests like it are rejected")),
    }
}

/// Matches `segments` against `rest` (the path after a `/`), pushing captures; backtracks only
/// over `Many` segments, whose count per template is small and fixed by configuration.
fn match_segments<'p>(segments: &'p [Segment], rest: &'p str, captures: &mut Captures<'p>) -> bool {
    let Some((first, tail)) = segments.split_first() else {
        return false;
    };
    let (head, after) = match rest.split_once('/') {
        Some((h, a)) => (h, Some(a)),
        None => (rest, None),
    };
    match first {
        Segment::Literal(l) => {
            l == head
                && match (tail.is_empty(), after) {
                    (true, None) => true,
                    (true, Some(_)) => false,
                    (false, Some(a)) => match_segments(tail, a, captures),
                    (false, None) => tail.iter().all(|s| matches!(s, Segment::Many(None))),
                }
        }
        Segment::One(name) => {
            if head.is_empty() {
                return false;
            }
            let mark = captures.len();
            if let Some(n) = name {
                captures.push((n.as_str(), head));
            }
            let ok = match (tail.is_empty(), after) {
                (true, None) => true,
                (true, Some(_)) => false,
                (false, Some(a)) => match_segments(tail, a, captures),
                (false, None) => tail.iter().all(|s| matches!(s, Segment::Many(None))),
            };
            if !ok {
                captures.truncate(mark);
            }
            ok
        }
        Segment::Many(name) => {
            // Try every split point: the Many takes rest[..end], the tail matches the remainder.
            let named = name.is_some();
            if tail.is_empty() {
                if named && (rest.is_empty() || rest.split('/').any(str::is_empty)) {
                    return false;
                }
                if let Some(n) = name {
                    captures.push((n.as_str(), rest));
                }
                return true;
            }
            // Zero segments (anonymous only): the tail matches `rest` itself.
            if !named && match_segments(tail, rest, captures) {
                return true;
            }
            for (end, _) in rest.match_indices('/') {
                let (Some(taken), Some(remainder)) = (rest.get(..end), rest.get(end + 1..)) else {
                    continue;
                };
                if named && taken.split('/').any(str::is_empty) {
                    continue;
                }
                let mark = captures.len();
                if let Some(n) = name {
                    captures.push((n.as_str(), taken));
                }
                if match_segments(tail, remainder, captures) {
                    return true;
                }
                captures.truncate(mark);
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_treat_one_and_two_stars_differently() {
        let one = Glob::new("spiffe://prod.example/ns/*/sa/builder").unwrap();
        assert!(one.matches("spiffe://prod.example/ns/ci/sa/builder"));
        assert!(!one.matches("spiffe://prod.example/ns/a/b/sa/builder"));
        let many = Glob::new("spiffe://prod.example/ns/ci/**").unwrap();
        assert!(many.matches("spiffe://prod.example/ns/ci/sa/builder"));
        assert!(!many.matches("spiffe://prod.example/ns/cd/sa/builder"));
        assert!(Glob::new("a*b*c").unwrap().matches("aXXbYYc"));
        assert!(!Glob::new("a*b*c").unwrap().matches("aXXbYY"));
        assert!(Glob::new("exact").unwrap().matches("exact"));
        assert!(!Glob::new("exact").unwrap().matches("exactly"));
        assert!(Glob::new("*@example.com").unwrap().matches("ann@example.com"));
        assert!(Glob::new("**").unwrap().matches(""));
        assert_eq!(Glob::new("dev/**").unwrap().literal_prefix(), "dev/");
    }

    #[test]
    fn globs_stay_linear_on_hostile_input() {
        let g = Glob::new("*a*a*a*a*a*a*a*a*b").unwrap();
        assert!(!g.matches(&"a".repeat(8000)));
    }

    #[test]
    fn host_patterns() {
        let wild = HostPattern::parse("*.Example.com").unwrap();
        assert!(wild.matches("api.example.com", None));
        assert!(wild.matches("a.b.example.com", Some(8443)));
        assert!(!wild.matches("example.com", None));
        assert!(HostPattern::parse("a*b").is_err());
        assert_eq!(HostPattern::parse("API.x.").unwrap(), HostPattern::Exact("api.x".into()));
        let port = HostPattern::parse("registry.internal:5000").unwrap();
        assert_eq!(port, HostPattern::ExactPort("registry.internal".into(), 5000));
        assert!(port.matches("registry.internal", Some(5000)));
        assert!(!port.matches("registry.internal", Some(443)));
        assert!(!port.matches("registry.internal", None));
        assert!(HostPattern::parse("h:port").is_err());
    }

    #[test]
    fn prefixes_respect_segments() {
        let p = PathTemplate::prefix("/v2/dev").unwrap();
        assert!(p.matches("/v2/dev").is_some());
        assert!(p.matches("/v2/dev/app/manifests/1").is_some());
        assert!(p.matches("/v2/devil/app").is_none());
        let slash = PathTemplate::prefix("/v2/").unwrap();
        assert!(slash.matches("/v2/").is_some());
        assert!(slash.matches("/v2/x/y").is_some());
        assert!(slash.matches("/v3/").is_none());
        assert!(PathTemplate::prefix("/").unwrap().matches("/anything/at/all").is_some());
    }

    #[test]
    fn exact_paths() {
        let p = PathTemplate::exact("/v2/").unwrap();
        assert!(p.matches("/v2/").is_some());
        assert!(p.matches("/v2").is_none());
        assert!(p.matches("/v2/x").is_none());
        assert!(PathTemplate::exact("/a/../b").is_err());
        assert!(PathTemplate::exact("no-slash").is_err());
        assert!(PathTemplate::exact("/ok?q").is_err());
    }

    #[test]
    fn templates_capture_segments() {
        let t = PathTemplate::template("/v2/{repo:**}/manifests/{ref}").unwrap();
        assert_eq!(t.matches("/v2/team/app/manifests/1.0"), Some(vec![("repo", "team/app"), ("ref", "1.0")]));
        assert_eq!(
            t.matches("/v2/app/manifests/sha256:ab"),
            Some(vec![("repo", "app"), ("ref", "sha256:ab")])
        );
        assert_eq!(t.matches("/v2/manifests/1.0"), None, "{{repo:**}} needs at least one segment");
        assert_eq!(t.matches("/v2/app/manifests/"), None, "{{ref}} needs a non-empty segment");
        assert_eq!(t.matches("/v2/app/blobs/x"), None);
        // The last `manifests` wins when a repository is itself called manifests.
        assert_eq!(
            t.matches("/v2/a/manifests/b/manifests/c"),
            Some(vec![("repo", "a/manifests/b"), ("ref", "c")])
        );
        let any = PathTemplate::template("/api/**/status").unwrap();
        assert!(any.matches("/api/status").is_some());
        assert!(any.matches("/api/a/b/status").is_some());
        assert!(PathTemplate::template("/a/{x}/{x}").is_err());
        assert!(PathTemplate::template("/a/b{x}").is_err());
        assert!(PathTemplate::template("/a/{x:*}").is_err());
        assert_eq!(t.capture_names().collect::<Vec<_>>(), ["repo", "ref"]);
        assert_eq!(t.literal_prefix().collect::<Vec<_>>(), ["v2"]);
    }
}
