//! Access rules and their evaluation: which identity may call which host, method and path.
//!
//! Semantics: a deny rule that matches wins over any allow rule; otherwise the first matching allow
//! rule allows; when nothing matches, the request is denied (default deny).

use crate::decision::{Decision, Reason};
use crate::request::RequestTarget;
use crate::token::VerifiedToken;

/// Whether a matching rule allows or denies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    #[default]
    Allow,
    Deny,
}

/// A host pattern: exact (case-insensitive), `*.suffix` (one or more labels), or `*` (any host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    Exact(String),
    /// The suffix including its leading dot, e.g. `.example.com`.
    Suffix(String),
}

impl HostPattern {
    /// Parses a pattern as written in a rule.
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
        Ok(HostPattern::Exact(lower))
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// A path pattern. Paths are case-sensitive.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum PathPattern {
    /// The path equals this string.
    Exact(String),
    /// Segment-aware prefix: `/v2/dev` matches `/v2/dev` and `/v2/dev/...`, not `/v2/devil`.
    Prefix(String),
}

impl PathPattern {
    /// Checks that the pattern is one a request path could match.
    pub fn validate(&self) -> Result<(), String> {
        let p = match self {
            PathPattern::Exact(p) | PathPattern::Prefix(p) => p,
        };
        if !p.starts_with('/') {
            return Err(format!("path {p:?} must start with `/`"));
        }
        if crate::request::check_path(p).map_or(true, |checked| checked != p) {
            return Err(format!("path {p:?} can never match: requests like it are rejected"));
        }
        Ok(())
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(p) => match path.strip_prefix(p.as_str()) {
                Some(rest) => p.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
                None => false,
            },
        }
    }
}

/// A glob over identities: `*` matches any run of characters (including `/`), everything else is
/// literal. `spiffe://prod.example/ns/ci/*` matches every workload under that path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    /// Wraps a pattern.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty subject pattern".into());
        }
        Ok(Glob(pattern.to_owned()))
    }

    /// Whether `text` matches, in linear time (classic two-pointer wildcard matching).
    pub fn matches(&self, text: &str) -> bool {
        let (p, t) = (self.0.as_bytes(), text.as_bytes());
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match (p.get(pi), t.get(ti)) {
                (Some(b'*'), _) => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                (Some(a), Some(b)) if a == b => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p.get(pi..).is_some_and(|rest| rest.iter().all(|&b| b == b'*'))
    }
}

/// Methods a rule covers: a list of exact (case-sensitive) method names, or any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Methods {
    Any,
    List(Vec<String>),
}

impl Methods {
    fn matches(&self, method: &str) -> bool {
        match self {
            Methods::Any => true,
            Methods::List(list) => list.iter().any(|m| m == method),
        }
    }
}

/// One compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Unique id, reported in every decision the rule makes.
    pub id: String,
    /// Allow or deny.
    pub effect: Effect,
    /// Hosts the rule covers.
    pub hosts: Vec<HostPattern>,
    /// Methods the rule covers.
    pub methods: Methods,
    /// Paths the rule covers.
    pub paths: Vec<PathPattern>,
    /// Identities (`sub`) the rule covers.
    pub subjects: Vec<Glob>,
    /// Issuer names the rule is limited to; empty means any configured issuer.
    pub issuers: Vec<String>,
}

impl Rule {
    /// Whether the rule covers this request made with this identity.
    pub fn matches(&self, request: &RequestTarget, identity: &VerifiedToken) -> bool {
        self.hosts.iter().any(|h| h.matches(&request.host))
            && self.methods.matches(&request.method)
            && self.paths.iter().any(|p| p.matches(&request.path))
            && (self.issuers.is_empty() || self.issuers.contains(&identity.issuer_name))
            && self.subjects.iter().any(|s| s.matches(&identity.subject))
    }
}

/// An ordered set of rules with default deny.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// Wraps compiled rules, in configuration order.
    pub fn new(rules: Vec<Rule>) -> Self {
        Policy { rules }
    }

    /// The rules, in configuration order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Decides a request made with a verified identity.
    pub fn evaluate(&self, request: &RequestTarget, identity: &VerifiedToken) -> Decision {
        let mut allow: Option<&Rule> = None;
        for rule in &self.rules {
            if !rule.matches(request, identity) {
                continue;
            }
            match rule.effect {
                Effect::Deny => return Decision::deny_by(Reason::PolicyDenied, &rule.id),
                Effect::Allow => {
                    allow.get_or_insert(rule);
                }
            }
        }
        match allow {
            Some(rule) => Decision::allow(&rule.id),
            None => Decision::deny(Reason::PolicyNoMatch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_shell_stars() {
        let g = Glob::new("spiffe://prod.example/ns/ci/*").unwrap();
        assert!(g.matches("spiffe://prod.example/ns/ci/sa/builder"));
        assert!(!g.matches("spiffe://prod.example/ns/cd/sa/builder"));
        assert!(Glob::new("a*b*c").unwrap().matches("aXXbYYc"));
        assert!(!Glob::new("a*b*c").unwrap().matches("aXXbYY"));
        assert!(Glob::new("exact").unwrap().matches("exact"));
        assert!(!Glob::new("exact").unwrap().matches("exactly"));
    }

    #[test]
    fn prefixes_respect_segments() {
        let p = PathPattern::Prefix("/v2/dev".into());
        assert!(p.matches("/v2/dev"));
        assert!(p.matches("/v2/dev/app/manifests/1"));
        assert!(!p.matches("/v2/devil/app"));
        assert!(PathPattern::Prefix("/v2/".into()).matches("/v2/x"));
    }

    #[test]
    fn host_patterns() {
        let wild = HostPattern::parse("*.Example.com").unwrap();
        assert!(wild.matches("api.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(HostPattern::parse("a*b").is_err());
        assert_eq!(HostPattern::parse("API.x.").unwrap(), HostPattern::Exact("api.x".into()));
    }

    #[test]
    fn path_patterns_that_cannot_match_are_refused() {
        assert!(PathPattern::Prefix("/a/../b".into()).validate().is_err());
        assert!(PathPattern::Exact("no-slash".into()).validate().is_err());
        assert!(PathPattern::Exact("/ok?q".into()).validate().is_err());
    }
}
