//! Patterns used by rules: hosts, identity globs and path templates with named captures.

/// A host pattern: exact (case-insensitive), `*.suffix` (one or more labels), or `*` (any host).
/// An exact or suffix host may name a port (`registry.internal:5000`, `*.example.com:443`); then
/// only requests whose authority names that port match. Without a port, the request's port does
/// not matter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Any,
    Exact(String),
    ExactPort(String, u16),
    /// The suffix including its leading dot, e.g. `.example.com`.
    Suffix(String),
    /// A suffix and a port (`*.example.com:443`).
    SuffixPort(String, u16),
}

impl HostPattern {
    /// Parses a pattern as written in a rule. A port is part of the pattern only if given.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let lower = pattern.trim_end_matches('.').to_ascii_lowercase();
        if lower == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(suffix) = lower.strip_prefix("*.") {
            let invalid = || format!("invalid wildcard host {pattern:?}");
            if suffix.contains('*') || suffix.starts_with(['.', ':']) {
                return Err(invalid());
            }
            // The domain is split and checked as an authority would be, so that its key is the
            // name alone, as requests are looked up (the port apart).
            return match crate::request::split_authority(suffix) {
                Ok((domain, None)) => Ok(HostPattern::Suffix(format!(".{domain}"))),
                Ok((domain, Some(port))) => Ok(HostPattern::SuffixPort(format!(".{domain}"), port)),
                Err(_) => Err(invalid()),
            };
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
            HostPattern::SuffixPort(s, p) => {
                host.len() > s.len() && host.ends_with(s.as_str()) && port == Some(*p)
            }
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
    source: Box<str>,
    shape: Shape,
    /// The lengths of the literal text before the first and after the last wildcard (both ends of
    /// `source`): most mismatches stop there. Lengths, not copies: a bundle holds many globs.
    prefix_len: usize,
    suffix_len: usize,
    /// The general matcher's tokens; empty for the common shapes, which never run it.
    tokens: Box<[GlobToken]>,
}

/// The common shapes, matched without running the general matcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Literal,
    /// `**` alone.
    Any,
    /// `prefix**`.
    PrefixAny,
    /// `prefix*`.
    PrefixSegment,
    General,
}

impl Glob {
    /// Compiles a pattern.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty pattern".into());
        }
        let tokens = tokenize(pattern);
        let literal = |t: &GlobToken| match t {
            GlobToken::Byte(b) => Some(*b),
            _ => None,
        };
        let prefix: Vec<u8> = tokens.iter().map_while(literal).collect();
        let mut suffix: Vec<u8> = tokens.iter().rev().map_while(literal).collect();
        suffix.reverse();
        let wildcards: Vec<&GlobToken> = tokens.iter().filter(|t| !matches!(t, GlobToken::Byte(_))).collect();
        let shape = match (wildcards.as_slice(), suffix.is_empty()) {
            ([], _) => Shape::Literal,
            ([GlobToken::DoubleStar], true) if prefix.is_empty() => Shape::Any,
            ([GlobToken::DoubleStar], true) => Shape::PrefixAny,
            ([GlobToken::Star], true) => Shape::PrefixSegment,
            _ => Shape::General,
        };
        // Literal tokens are the pattern's own bytes, so both runs are its ends.
        let splits = || format!("pattern {pattern:?} splits a character");
        pattern.get(..prefix.len()).ok_or_else(splits)?;
        pattern.get(pattern.len() - suffix.len()..).ok_or_else(splits)?;
        let tokens = if shape == Shape::General { tokens.into_boxed_slice() } else { Box::default() };
        Ok(Glob { source: pattern.into(), shape, prefix_len: prefix.len(), suffix_len: suffix.len(), tokens })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The literal text before the first wildcard.
    pub fn literal_prefix(&self) -> String {
        self.prefix().to_owned()
    }

    fn prefix(&self) -> &str {
        self.source.get(..self.prefix_len).unwrap_or_default()
    }

    fn suffix(&self) -> &str {
        self.source.get(self.source.len().saturating_sub(self.suffix_len)..).unwrap_or_default()
    }

    /// Whether `text` matches. Never worse than O(len(text) x len(pattern)), with no allocation
    /// for patterns of up to 127 tokens; the common shapes cost a prefix comparison.
    pub fn matches(&self, text: &str) -> bool {
        match self.shape {
            Shape::Literal => *self.source == *text,
            Shape::Any => true,
            Shape::PrefixAny => text.starts_with(self.prefix()),
            Shape::PrefixSegment => text.strip_prefix(self.prefix()).is_some_and(|rest| !rest.contains('/')),
            Shape::General => {
                text.len() >= self.prefix_len + self.suffix_len
                    && text.starts_with(self.prefix())
                    && text.ends_with(self.suffix())
                    && self.run(text.as_bytes())
            }
        }
    }

    /// The general matcher: the set of pattern positions reachable after each byte, as a bitset.
    fn run(&self, text: &[u8]) -> bool {
        // Only the general shape keeps its tokens (the others never need them here).
        let tokenized;
        let tokens: &[GlobToken] = if self.tokens.is_empty() {
            tokenized = tokenize(&self.source);
            &tokenized
        } else {
            &self.tokens
        };
        let n = tokens.len();
        if n >= 128 {
            return run_large(tokens, text);
        }
        let wild: u128 = tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| !matches!(t, GlobToken::Byte(_)))
            .fold(0, |m, (i, _)| m | (1u128 << i));
        // A state on a wildcard also reaches the next position (the wildcard matches nothing).
        let close = |mut states: u128| {
            for i in 0..n {
                if states & (1 << i) != 0 && wild & (1 << i) != 0 {
                    states |= 1 << (i + 1);
                }
            }
            states
        };
        let mut states = close(1);
        for &c in text {
            let mut next = 0u128;
            for (i, token) in tokens.iter().enumerate() {
                if states & (1 << i) == 0 {
                    continue;
                }
                match token {
                    GlobToken::Byte(b) if *b == c => next |= 1 << (i + 1),
                    GlobToken::Star if c != b'/' => next |= 1 << i,
                    GlobToken::DoubleStar => next |= 1 << i,
                    _ => {}
                }
            }
            if next == 0 {
                return false;
            }
            states = close(next);
        }
        states & (1 << n) != 0
    }
}

/// A pattern's tokens: bytes, and runs of `*` as one `*` or `**`.
fn tokenize(pattern: &str) -> Vec<GlobToken> {
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
    tokens
}

/// The same matcher for very long patterns.
fn run_large(tokens: &[GlobToken], text: &[u8]) -> bool {
    let n = tokens.len();
    let mut states = vec![false; n + 1];
    let mut next = vec![false; n + 1];
    set(&mut states, 0);
    close(tokens, &mut states);
    for &c in text {
        next.iter_mut().for_each(|s| *s = false);
        let mut any = false;
        for (i, token) in tokens.iter().enumerate() {
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
        close(tokens, &mut states);
    }
    states.get(n).copied().unwrap_or(false)
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    Literal(String),
    /// `{name}` or `*`: exactly one non-empty segment.
    One(Option<String>),
    /// `{name:**}` (one or more segments) or `**` (zero or more).
    Many(Option<String>),
}

/// A path pattern compiled to segments: `/v2/{repo:**}/manifests/{ref}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PathTemplate {
    segments: Vec<Segment>,
    /// Where the `Many` segments are: with at most one, matching is a walk from both ends.
    many: ManyAt,
    /// Literal segments then `**`: any path that starts with the literals matches.
    prefix_only: bool,
}

/// The position of a template's `Many` segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ManyAt {
    None,
    One(usize),
    /// Two or more: matching needs the dynamic program.
    Several,
}

/// Named captures of a matched path: (name, value) in template order.
pub type Captures<'p> = Vec<(&'p str, &'p str)>;

impl PathTemplate {
    fn from_segments(segments: Vec<Segment>) -> Self {
        let mut at =
            segments.iter().enumerate().filter(|(_, s)| matches!(s, Segment::Many(_))).map(|(i, _)| i);
        let many = match (at.next(), at.next()) {
            (None, _) => ManyAt::None,
            (Some(i), None) => ManyAt::One(i),
            (Some(_), Some(_)) => ManyAt::Several,
        };
        let prefix_only = matches!(segments.split_last(), Some((Segment::Many(None), literals))
            if literals.iter().all(|s| matches!(s, Segment::Literal(_))));
        PathTemplate { segments, many, prefix_only }
    }

    /// An exact path.
    pub fn exact(path: &str) -> Result<Self, String> {
        let path = literal_path(path)?;
        let segments = path.split('/').skip(1).map(|s| Segment::Literal(s.to_owned())).collect();
        Ok(PathTemplate::from_segments(segments))
    }

    /// A segment-aware prefix: `/v2/dev` matches `/v2/dev` and `/v2/dev/...`, not `/v2/devil`;
    /// `/v2/` matches everything below `/v2/`.
    pub fn prefix(path: &str) -> Result<Self, String> {
        let path = literal_path(path)?;
        let mut segments: Vec<Segment> =
            path.trim_end_matches('/').split('/').skip(1).map(|s| Segment::Literal(s.to_owned())).collect();
        // The prefix itself, and anything below it.
        segments.push(Segment::Many(None));
        Ok(PathTemplate::from_segments(segments))
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
                let literal = literal_path(&format!("/{raw}"))?;
                Segment::Literal(literal.get(1..).unwrap_or_default().to_owned())
            };
            segments.push(segment);
        }
        Ok(PathTemplate::from_segments(segments))
    }

    /// The compiled segments, for tools that reason about what a template covers (`meshward check`).
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether the template is a segment-aware prefix: its literal segments, then anything. A
    /// path that starts with [`literal_prefix`](Self::literal_prefix) matches it.
    pub fn is_prefix(&self) -> bool {
        self.prefix_only
    }

    /// The literal segments before the first wildcard: the key under which the index files it.
    pub fn literal_prefix(&self) -> impl Iterator<Item = &str> + Clone {
        self.segments.iter().map_while(|s| match s {
            Segment::Literal(l) => Some(l.as_str()),
            _ => None,
        })
    }

    /// Whether the template is literal segments, `**`, one non-empty literal segment and `**`
    /// (`/api/**/debug/**`): a path matches it when it starts with the literal prefix and has
    /// that segment somewhere after it (which is how the index files it).
    pub fn is_prefix_then_segment(&self) -> bool {
        let prefix = self.literal_prefix().count();
        matches!(self.segments.get(prefix..), Some([Segment::Many(None), Segment::Literal(l), Segment::Many(None)])
            if !l.is_empty())
    }

    /// How many `**` / `{name:**}` segments the template has.
    pub fn many_count(&self) -> usize {
        self.segments.iter().filter(|s| matches!(s, Segment::Many(_))).count()
    }

    /// Whether the template has more than one `**` / `{name:**}`: then a path may split between
    /// them in several ways, and its captures bind the leftmost-shortest split.
    pub fn splits_ambiguously(&self) -> bool {
        self.many == ManyAt::Several
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
        match self.many {
            ManyAt::None => Self::walk(rest, &self.segments, None, &[]),
            ManyAt::One(at) => {
                let (head, tail) = self.segments.split_at(at);
                let (many, tail) = tail.split_first()?;
                let name = match many {
                    Segment::Many(name) => name.as_deref(),
                    _ => return None,
                };
                Self::walk(rest, head, Some(name), tail)
            }
            ManyAt::Several => self.matches_general(rest),
        }
    }

    /// Matches `head`, then (with `many`) any run of segments, then `tail`. `head` and `tail` have
    /// fixed lengths, so there is one way to split the path: no search, no allocation without
    /// captures. `many` is `Some(None)` for `**` (zero or more segments of any text) and
    /// `Some(Some(name))` for `{name:**}` (one or more non-empty segments).
    fn walk<'p>(
        rest: &'p str,
        head: &'p [Segment],
        many: Option<Option<&'p str>>,
        tail: &'p [Segment],
    ) -> Option<Captures<'p>> {
        // How many segments the path has against how many the template takes.
        let count = rest.bytes().filter(|&b| b == b'/').count() + 1;
        let fixed = head.len() + tail.len();
        let fits = match many {
            None => count == fixed,
            Some(None) => count >= fixed,
            Some(Some(_)) => count > fixed,
        };
        if !fits {
            return None;
        }
        let mut captures = Vec::new();
        // Forward over the head; `from` ends at the first segment after it.
        let mut from = 0;
        let mut texts = path_segments(rest);
        for seg in head {
            let text = texts.next()?;
            fixed_segment(seg, text, &mut captures)?;
            from += text.len() + 1;
        }
        // Backward over the tail; `to` ends up at the end of the segment before it.
        let mut tail_captures = Vec::new();
        let mut to = rest.len() + 1;
        let mut texts = path_segments(rest).rev();
        for seg in tail.iter().rev() {
            let text = texts.next()?;
            fixed_segment(seg, text, &mut tail_captures)?;
            to -= text.len() + 1;
        }
        if let Some(Some(name)) = many {
            let run = rest.get(from..to.checked_sub(1)?)?;
            if path_segments(run).any(str::is_empty) {
                return None;
            }
            captures.push((name, run));
        }
        captures.extend(tail_captures.into_iter().rev());
        Some(captures)
    }

    /// The general matcher, for templates with several `Many` segments.
    fn matches_general<'p>(&'p self, rest: &'p str) -> Option<Captures<'p>> {
        // Segments as byte ranges of `rest`; requests are capped at MAX_SEGMENTS (request.rs).
        let mut bounds = Vec::with_capacity(16);
        let mut start = 0;
        for (at, _) in rest.match_indices('/') {
            bounds.push((start, at));
            start = at + 1;
        }
        bounds.push((start, rest.len()));
        let segment = |j: usize| bounds.get(j).and_then(|&(a, b)| rest.get(a..b));
        let (t, n) = (self.segments.len(), bounds.len());

        // ok[i * (n + 1) + j]: template segments i.. match path segments j.. . Filled backwards,
        // so matching costs O(template x path segments) whatever the input: no backtracking.
        let width = n + 1;
        let mut ok = vec![false; (t + 1) * width];
        let at = |i: usize, j: usize| i * width + j;
        if let Some(end) = ok.get_mut(at(t, n)) {
            *end = true;
        }
        for i in (0..t).rev() {
            for j in (0..=n).rev() {
                let next = |i2: usize, j2: usize| ok.get(at(i2, j2)).copied().unwrap_or(false);
                let text = segment(j);
                let value = match self.segments.get(i) {
                    Some(Segment::Literal(l)) => text.is_some_and(|s| s == l) && next(i + 1, j + 1),
                    Some(Segment::One(_)) => text.is_some_and(|s| !s.is_empty()) && next(i + 1, j + 1),
                    // Zero or more segments.
                    Some(Segment::Many(None)) => next(i + 1, j) || (text.is_some() && next(i, j + 1)),
                    // One or more non-empty segments: take this one, then stop or go on.
                    Some(Segment::Many(Some(_))) => {
                        text.is_some_and(|s| !s.is_empty()) && (next(i + 1, j + 1) || next(i, j + 1))
                    }
                    None => false,
                };
                if let Some(cell) = ok.get_mut(at(i, j)) {
                    *cell = value;
                }
            }
        }
        let reach = |i: usize, j: usize| ok.get(at(i, j)).copied().unwrap_or(false);
        if !reach(0, 0) {
            return None;
        }
        // Walk forward along a match, each `Many` taking the fewest segments that still lead to one.
        let mut captures = Vec::new();
        let mut j = 0;
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Literal(_) => j += 1,
                Segment::One(name) => {
                    if let (Some(name), Some(text)) = (name, segment(j)) {
                        captures.push((name.as_str(), text));
                    }
                    j += 1;
                }
                Segment::Many(name) => {
                    let min = if name.is_some() { j + 1 } else { j };
                    let end = (min..=n).find(|&k| {
                        reach(i + 1, k)
                            && (name.is_none() || (j..k).all(|m| segment(m).is_some_and(|s| !s.is_empty())))
                    })?;
                    if let Some(name) = name {
                        let (from, _) = *bounds.get(j)?;
                        let (_, to) = *bounds.get(end.checked_sub(1)?)?;
                        captures.push((name.as_str(), rest.get(from..to)?));
                    }
                    j = end;
                }
            }
        }
        Some(captures)
    }
}

/// The `/`-separated segments of a path, as `split('/')` gives them. Faster on short segments:
/// `split('/')` runs `memchr` and `memcmp` for each hit, this scans the characters.
pub(crate) fn path_segments(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split(['/'])
}

/// Matches one literal or single-segment wildcard, noting its capture.
fn fixed_segment<'p>(seg: &'p Segment, text: &'p str, captures: &mut Captures<'p>) -> Option<()> {
    match seg {
        Segment::Literal(l) if l == text => Some(()),
        Segment::One(name) if !text.is_empty() => {
            if let Some(name) = name {
                captures.push((name.as_str(), text));
            }
            Some(())
        }
        _ => None,
    }
}

/// A literal path of a rule, in the normal form requests are compared in
/// ([`normalize_path`](crate::request::normalize_path)).
fn literal_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with `/`"));
    }
    match crate::request::check_path(path) {
        Ok(checked) if checked == path => Ok(crate::request::normalize_path(path)),
        _ => Err(format!("path {path:?} can never match: requests like it are rejected")),
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
        let long = Glob::new(&format!("{}*x", "a*".repeat(100))).unwrap();
        assert!(long.matches(&format!("{}x", "a".repeat(100))));
        assert!(!long.matches(&"a".repeat(3000)));
    }

    #[test]
    fn glob_shapes_agree_with_the_general_matcher() {
        for (pattern, text, expect) in [
            ("spiffe://d/ns/ci/**", "spiffe://d/ns/ci/sa/x", true),
            ("spiffe://d/ns/ci/**", "spiffe://d/ns/cd/sa/x", false),
            ("spiffe://d/ns/ci/*", "spiffe://d/ns/ci/x", true),
            ("spiffe://d/ns/ci/*", "spiffe://d/ns/ci/x/y", false),
            ("**", "", true),
            ("*", "a/b", false),
            ("a*b", "ab", true),
            ("a*b", "a/b", false),
            ("a**b", "a/b", true),
            ("*.example.com", "x.example.com", true),
        ] {
            let g = Glob::new(pattern).unwrap();
            assert_eq!(g.matches(text), expect, "{pattern} ~ {text}");
            assert_eq!(g.run(text.as_bytes()), expect, "general matcher: {pattern} ~ {text}");
        }
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
        let wild_port = HostPattern::parse("*.Other.org.:443").unwrap();
        assert_eq!(wild_port, HostPattern::SuffixPort(".other.org".into(), 443));
        assert!(wild_port.matches("a.other.org", Some(443)));
        assert!(!wild_port.matches("a.other.org", Some(444)));
        assert!(!wild_port.matches("a.other.org", None));
        assert!(!wild_port.matches("other.org", Some(443)));
        for bad in ["*.:443", "*..x", "*.x:", "*.x:1:2", "*.x:port", "*.a*b"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
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

    /// Issue 11 item 5: literals are compared in the normal form of requests.
    #[test]
    fn literals_are_normalized_like_requests() {
        let normal = |p: &str| crate::request::normalize_path(p);
        let exact = PathTemplate::exact("/p%3asetIamPolicy/%3f").unwrap();
        assert!(exact.matches(&normal("/p:setIamPolicy/%3F")).is_some());
        assert!(exact.matches(&normal("/p%3AsetIamPolicy/%3f")).is_some());
        let template = PathTemplate::template("/v1/{name}/a%40b").unwrap();
        assert!(template.matches(&normal("/v1/x/a@b")).is_some());
        let prefix = PathTemplate::prefix("/a%2b").unwrap();
        assert!(prefix.matches(&normal("/a+/x")).is_some());
    }

    #[test]
    fn prefix_then_segment_templates() {
        let shape = |t: &str| PathTemplate::template(t).unwrap().is_prefix_then_segment();
        assert!(shape("/**/x/**") && shape("/api/v1/**/debug/**"));
        for other in ["/**/x", "/**/{x}/**", "/x/**", "/**/x/y/**", "/{a:**}/x/**", "/**/x/{b:**}", "/**//**"]
        {
            assert!(!shape(other), "{other}");
        }
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
    fn templates_stay_fast_on_hostile_paths() {
        let anonymous = PathTemplate::template("/**/**/**/**/**/**/**/**/z").unwrap();
        let path = "/a".repeat(250);
        assert!(anonymous.matches(&path).is_none());
        assert!(anonymous.matches(&format!("{path}/z")).is_some());
        let named = PathTemplate::template("/v2/{repo:**}/manifests/{ref}").unwrap();
        let deep = format!("/v2{}/manifests/1", "/a".repeat(250));
        assert_eq!(named.matches(&deep).map(|c| c[0].1.len()), Some(499));
        assert!(named.matches(&format!("/v2{}", "/a".repeat(250))).is_none());
    }

    /// Every template of up to four segments against every path of up to five: the walk used for
    /// templates with at most one `Many` agrees with the dynamic program, captures included.
    #[test]
    fn walks_agree_with_the_general_matcher() {
        let kinds = [
            Segment::Literal("a".into()),
            Segment::Literal(String::new()),
            Segment::One(None),
            Segment::One(Some("x".into())),
            Segment::Many(None),
            Segment::Many(Some("r".into())),
        ];
        let texts = ["a", "b", ""];
        let mut templates = vec![Vec::new()];
        for len in 1..=4 {
            let mut next = Vec::new();
            for t in templates.iter().filter(|t: &&Vec<Segment>| t.len() == len - 1) {
                for k in &kinds {
                    let mut t = t.clone();
                    t.push(k.clone());
                    next.push(t);
                }
            }
            templates.extend(next);
        }
        let mut paths = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 1..=5 {
            last = last.iter().flat_map(|p| texts.iter().map(move |t| format!("{p}/{t}"))).collect();
            paths.extend(last.iter().cloned());
        }
        let (mut compared, mut matched) = (0, 0);
        for segments in templates {
            let t = PathTemplate::from_segments(segments);
            if t.many == ManyAt::Several {
                continue;
            }
            for path in paths.iter().filter(|p| !p.is_empty()) {
                let walked = t.matches(path);
                assert_eq!(walked, t.matches_general(&path[1..]), "{:?} ~ {path}", t.segments);
                compared += 1;
                matched += usize::from(walked.is_some());
            }
        }
        assert!(compared > 50_000 && matched > 1_000, "{compared} compared, {matched} matched");
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
