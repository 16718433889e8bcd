//! One rule: as written in a bundle (`RuleConfig`), and compiled (`Rule`).

use std::collections::HashSet;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::pattern::{Captures, Glob, HostPattern, PathTemplate};
use super::registry::{self, RegistryAction};
use super::PolicyInput;
use crate::token::VerifiedToken;

/// Whether a matching rule allows or denies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    #[default]
    Allow,
    Deny,
}

impl Effect {
    /// The verdict of a rule with this effect.
    pub fn verdict(self) -> crate::decision::Verdict {
        match self {
            Effect::Allow => crate::decision::Verdict::Allow,
            Effect::Deny => crate::decision::Verdict::Deny,
        }
    }
}

/// Enforce a rule, or only evaluate and report it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Enforce,
    DryRun,
}

/// A point in time: unix seconds, or an RFC 3339 string such as `2026-12-31T23:59:59Z`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum Timestamp {
    Unix(u64),
    Rfc3339(String),
}

/// A time that is not RFC 3339.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 time such as 2026-12-31T23:59:59Z")]
pub struct InvalidTime(pub String);

/// Why a rule does not compile: the field (relative to the rule) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleError {
    /// Such as `paths[0]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl Timestamp {
    /// Unix seconds.
    pub fn to_unix(&self) -> Result<u64, InvalidTime> {
        match self {
            Timestamp::Unix(t) => Ok(*t),
            Timestamp::Rfc3339(s) => parse_rfc3339(s),
        }
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`.
fn parse_rfc3339(s: &str) -> Result<u64, InvalidTime> {
    let err = || InvalidTime(s.to_owned());
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, InvalidTime> {
        let part = s.get(from..from + len).ok_or_else(err)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(err());
        }
        part.parse::<i64>().map_err(|_| err())
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return Err(err());
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(err());
    }
    let mut rest = s.get(19..).ok_or_else(err)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = frac.get(digits..).ok_or_else(err)?;
    }
    let offset = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]
            if [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()) =>
        {
            let digit = |c: &u8| i64::from(c - b'0');
            let minutes = (digit(h1) * 10 + digit(h2)) * 60 + digit(m1) * 10 + digit(m2);
            if *sign == b'-' {
                -minutes * 60
            } else {
                minutes * 60
            }
        }
        _ => return Err(err()),
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(secs).map_err(|_| err())
}

/// A path pattern as written: `{"exact": ...}`, `{"prefix": ...}` or `{"template": ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum PathConfig {
    /// The path equals this string.
    Exact(String),
    /// Segment-aware prefix: `/v2/dev` matches `/v2/dev` and `/v2/dev/...`, not `/v2/devil`.
    Prefix(String),
    /// Segments with captures: `/v2/{repo:**}/manifests/{ref}`; `*` is one segment, `**` any.
    Template(String),
}

/// Registry actions on repositories (OCI distribution API).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `pull`, `push`, `delete`, `promote`.
    pub actions: Vec<RegistryAction>,
    /// Repository globs (`dev/**`, `team/*`); `*` stays within one path segment, and `name/**`
    /// covers `name` itself too.
    pub repositories: Vec<String>,
}

/// A condition on a claim, a header or a path capture: the subject (`claim`, `header` or
/// `capture`) and one test.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    /// A claim of the verified token; dotted paths reach nested claims (`kubernetes.io.namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// A request header (lower-case name). A header a condition reads must not arrive twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A named capture of the rule's path template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
    /// Equal to this value. In capture conditions, `${claim.NAME}`, `${sub}` and `${peer}` are
    /// replaced by the caller's values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    /// Equal to one of these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    /// A string matching this glob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    /// A string starting with this text (interpolated like `equals`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_with: Option<String>,
    /// An array containing this value (or a space-separated string containing this word).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<Value>,
    /// Present (`true`) or absent (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
}

/// One access rule as written in a bundle.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique id, reported in every decision the rule makes.
    pub id: String,
    /// What the rule is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Who answers for the rule.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// `allow` (default) or `deny`; deny wins over allow.
    #[serde(default)]
    pub effect: Effect,
    /// `enforce`, or `dry-run` to evaluate and report the rule without acting on it. Defaults to
    /// the bundle's mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Emergency access: every decision by this rule is audited at high severity.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// The rule is inactive before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// The rule is inactive after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Hosts: exact names, `*.domain` or `*`, each optionally with `:port` (then only that port);
    /// case-insensitive.
    pub hosts: Vec<String>,
    /// HTTP methods, exact and case-sensitive (`GET`, `PUT` ...), or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Paths the methods apply to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathConfig>,
    /// Registry actions instead of `methods` and `paths`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryConfig>,
    /// Conditions on request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ConditionConfig>,
    /// Issuer names the token must come from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<String>,
    /// Token profiles the token must have (`jwt-svid`, `kubernetes`, `access-token`, `oidc`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// Subject (`sub`, e.g. a SPIFFE ID) globs; one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// Conditions on token claims; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<ConditionConfig>,
    /// Scopes the token must all carry (`scope` string or `scp` array).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// mTLS peer identity globs (the peer certificate's URI SAN); one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// The token must have been issued (`iat`) at most this many seconds ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_age_seconds: Option<u64>,
    /// Conditions tying path captures to the caller (`{"capture": "repo", "starts_with":
    /// "${claim.kubernetes.io.namespace}/"}`); all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<ConditionConfig>,
}

/// Text with `${...}` references to the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Claim(String),
    Subject,
    Peer,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Interpolated(Vec<Part>);

impl Interpolated {
    fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Text(rest.get(..start).unwrap_or_default().to_owned()));
            }
            let after = rest.get(start + 2..).unwrap_or_default();
            let end = after.find('}').ok_or_else(|| format!("unclosed `${{` in {text:?}"))?;
            let name = after.get(..end).unwrap_or_default();
            parts.push(match name {
                "sub" => Part::Subject,
                "peer" => Part::Peer,
                _ => match name.strip_prefix("claim.") {
                    Some(claim) if !claim.is_empty() => Part::Claim(claim.to_owned()),
                    _ => {
                        return Err(format!(
                            "unknown reference `${{{name}}}` (use ${{sub}}, ${{peer}} or ${{claim.NAME}})"
                        ))
                    }
                },
            });
            rest = after.get(end + 1..).unwrap_or_default();
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Interpolated(parts))
    }

    fn is_literal(&self) -> bool {
        self.0.iter().all(|p| matches!(p, Part::Text(_)))
    }

    fn render(&self, token: Option<&VerifiedToken>, peer: Option<&str>) -> Option<String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Subject => out.push_str(&token?.subject),
                Part::Peer => out.push_str(peer?),
                Part::Claim(c) => match token?.claim(c)? {
                    Value::String(s) => out.push_str(&s),
                    Value::Number(n) => out.push_str(&n.to_string()),
                    _ => return None,
                },
            }
        }
        Some(out)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Test {
    Equals(Value),
    EqualsText(Interpolated),
    OneOf(Vec<Value>),
    Glob(Glob),
    StartsWith(Interpolated),
    Contains(Value),
    Exists(bool),
}

impl Test {
    fn compile(c: &ConditionConfig, interpolate: bool) -> Result<Self, String> {
        let mut tests = Vec::new();
        if let Some(v) = &c.equals {
            tests.push(match v {
                Value::String(s) if interpolate => {
                    let text = Interpolated::parse(s)?;
                    if text.is_literal() {
                        Test::Equals(v.clone())
                    } else {
                        Test::EqualsText(text)
                    }
                }
                _ => Test::Equals(v.clone()),
            });
        }
        if let Some(v) = &c.one_of {
            tests.push(Test::OneOf(v.clone()));
        }
        if let Some(g) = &c.glob {
            tests.push(Test::Glob(Glob::new(g)?));
        }
        if let Some(s) = &c.starts_with {
            let text =
                if interpolate { Interpolated::parse(s)? } else { Interpolated(vec![Part::Text(s.clone())]) };
            tests.push(Test::StartsWith(text));
        }
        if let Some(v) = &c.contains {
            tests.push(Test::Contains(v.clone()));
        }
        if let Some(e) = c.exists {
            tests.push(Test::Exists(e));
        }
        match tests.len() {
            1 => Ok(tests.remove(0)),
            0 => Err("needs one test: equals, one_of, glob, starts_with, contains or exists".into()),
            _ => Err("has more than one test; write one condition per test".into()),
        }
    }

    fn uses_peer(&self) -> bool {
        let refers = |t: &Interpolated| t.0.contains(&Part::Peer);
        match self {
            Test::EqualsText(t) | Test::StartsWith(t) => refers(t),
            _ => false,
        }
    }

    /// Like [`Test::holds`] for a text value (a header or a capture), without building a JSON value
    /// for the common tests.
    fn holds_text(&self, value: Option<&str>, token: Option<&VerifiedToken>, peer: Option<&str>) -> bool {
        match (self, value) {
            (Test::Exists(want), v) => v.is_some() == *want,
            (_, None) => false,
            (Test::Equals(Value::String(want)), Some(s)) => want == s,
            (Test::Glob(g), Some(s)) => g.matches(s),
            (Test::OneOf(list), Some(s)) => list.iter().any(|v| v.as_str() == Some(s)),
            (_, Some(s)) => self.holds(Some(&Value::from(s)), token, peer),
        }
    }

    fn holds(&self, value: Option<&Value>, token: Option<&VerifiedToken>, peer: Option<&str>) -> bool {
        match (self, value) {
            (Test::Exists(want), v) => v.is_some() == *want,
            (_, None) => false,
            (Test::Equals(want), Some(v)) => v == want,
            (Test::EqualsText(t), Some(Value::String(s))) => t.render(token, peer).is_some_and(|w| w == *s),
            (Test::OneOf(list), Some(v)) => list.contains(v),
            (Test::Glob(g), Some(Value::String(s))) => g.matches(s),
            (Test::StartsWith(t), Some(Value::String(s))) => {
                t.render(token, peer).is_some_and(|w| s.starts_with(&w))
            }
            (Test::Contains(want), Some(Value::Array(items))) => items.contains(want),
            (Test::Contains(Value::String(word)), Some(Value::String(s))) => s.split(' ').any(|w| w == word),
            _ => false,
        }
    }
}

/// The most routes (paths) one rule may have: the index numbers them in 32 bits, and a bigger
/// rule is better written as several.
pub const MAX_ROUTES: usize = 1_000_000;

/// The most `**` / `{name:**}` segments in one path template.
pub const MAX_DOUBLE_STARS: usize = 2;

/// The most segments in one path pattern (requests have at most
/// [`MAX_SEGMENTS`](crate::request::MAX_SEGMENTS)).
pub const MAX_PATTERN_SEGMENTS: usize = 32;

/// Methods a route covers: a list, or any (`None`).
#[derive(Clone, Debug)]
pub struct Route {
    /// Exact method names; `None` for any method. Shared by every route with the same list.
    pub methods: Option<Rc<[String]>>,
    /// The path pattern. Shared by every route with an equal one.
    pub path: Rc<PathTemplate>,
}

/// The method lists and path templates of the rules compiled so far, so that equal ones are
/// kept once: the rules of a large bundle repeat a few of each (10,000 rules have 13,000 routes),
/// and a copy per route was megabytes. Only needed while a bundle compiles.
#[derive(Debug, Default)]
pub struct RouteParts {
    methods: HashSet<Rc<[String]>>,
    paths: HashSet<Rc<PathTemplate>>,
}

impl RouteParts {
    fn methods(&mut self, list: Vec<String>) -> Rc<[String]> {
        if let Some(shared) = self.methods.get(list.as_slice()) {
            return shared.clone();
        }
        let shared: Rc<[String]> = list.into();
        self.methods.insert(shared.clone());
        shared
    }

    fn path(&mut self, path: PathTemplate) -> Rc<PathTemplate> {
        if let Some(shared) = self.paths.get(&path) {
            return shared.clone();
        }
        let shared = Rc::new(path);
        self.paths.insert(shared.clone());
        shared
    }
}

/// One compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Unique id.
    pub id: String,
    /// Who answers for it.
    pub owner: String,
    /// Why it exists.
    pub description: String,
    /// Allow or deny.
    pub effect: Effect,
    /// Enforced, or only reported.
    pub mode: Mode,
    /// Emergency access, audited at high severity.
    pub break_glass: bool,
    /// Active from (unix seconds).
    pub not_before: Option<u64>,
    /// Active until (unix seconds).
    pub expires_at: Option<u64>,
    // Boxed slices rather than vectors: exactly their size, and a word less each (a bundle holds
    // thousands of rules, in one vector whose single allocation must find room at configuration).
    hosts: Box<[HostPattern]>,
    routes: Box<[Route]>,
    repositories: Box<[Glob]>,
    headers: Box<[(String, Test)]>,
    issuers: Box<[String]>,
    profiles: Box<[String]>,
    subjects: Box<[Glob]>,
    claims: Box<[(String, Test)]>,
    scopes: Box<[String]>,
    peers: Box<[Glob]>,
    max_token_age: Option<u64>,
    captures: Box<[(String, Test)]>,
    needs_token: bool,
    /// Whether a host pattern names a port (which the index does not look at).
    host_ports: bool,
    /// A registry allow rule's `GET`/`HEAD /v2/` route: granted whatever the capture conditions
    /// say (it captures no repository for them to test).
    version_check: Option<usize>,
}

impl Rule {
    /// Compiles a rule. `issuer_names` are the bundle's issuers; `default_mode` the bundle's mode.
    pub fn compile(
        cfg: RuleConfig,
        issuer_names: &HashSet<String>,
        default_mode: Mode,
    ) -> Result<Self, RuleError> {
        Self::compile_sharing(cfg, issuer_names, default_mode, &mut RouteParts::default())
    }

    /// [`Rule::compile`], sharing method lists and path templates with the bundle's other rules
    /// through `parts`.
    pub fn compile_sharing(
        cfg: RuleConfig,
        issuer_names: &HashSet<String>,
        default_mode: Mode,
        parts: &mut RouteParts,
    ) -> Result<Self, RuleError> {
        let e = |field: &str, message: String| RuleError { field: field.to_owned(), message };
        if cfg.id.is_empty() {
            return Err(e("id", "must not be empty".into()));
        }
        if cfg.hosts.is_empty() {
            return Err(e("hosts", "must not be empty (a rule that matches nothing is a mistake)".into()));
        }
        let hosts = cfg
            .hosts
            .iter()
            .enumerate()
            .map(|(j, h)| HostPattern::parse(h).map_err(|m| e(&format!("hosts[{j}]"), m)))
            .collect::<Result<Vec<_>, _>>()?;

        let mut routes = Vec::new();
        let mut repositories = Vec::new();
        let mut version_check = None;
        match &cfg.registry {
            Some(reg) => {
                if !cfg.methods.is_empty() || !cfg.paths.is_empty() {
                    return Err(e(
                        "registry",
                        "a registry rule has no `methods` or `paths` of its own".into(),
                    ));
                }
                if reg.actions.is_empty() {
                    return Err(e("registry.actions", "must not be empty".into()));
                }
                if reg.repositories.is_empty() {
                    return Err(e("registry.repositories", "must not be empty (use \"**\" for all)".into()));
                }
                for (j, r) in reg.repositories.iter().enumerate() {
                    let at = || format!("registry.repositories[{j}]");
                    repositories.push(Glob::new(r).map_err(|m| e(&at(), m))?);
                    // `prod/**` is the repository `prod` and everything below it (as a path
                    // prefix covers itself): a deny on `prod/**` must not miss `prod`.
                    if let Some(parent) = r.strip_suffix("/**").filter(|p| !p.is_empty()) {
                        repositories.push(Glob::new(parent).map_err(|m| e(&at(), m))?);
                    }
                }
                // Clients check the API version first; an allow rule grants it. A deny rule is about
                // its actions' routes only, never the version check.
                if cfg.effect == Effect::Allow {
                    version_check = Some(routes.len());
                    routes.push(Route {
                        methods: Some(parts.methods(vec!["GET".into(), "HEAD".into()])),
                        path: parts.path(PathTemplate::exact(registry::BASE).map_err(|m| e("registry", m))?),
                    });
                }
                let mut seen = HashSet::new();
                for action in &reg.actions {
                    for (methods, template) in registry::routes(*action) {
                        if !seen.insert((*methods, *template)) {
                            continue;
                        }
                        routes.push(Route {
                            methods: Some(parts.methods(methods.iter().map(|m| (*m).to_owned()).collect())),
                            path: parts.path(PathTemplate::template(template).map_err(|m| e("registry", m))?),
                        });
                    }
                }
            }
            None => {
                if cfg.methods.is_empty() {
                    return Err(e("methods", "must not be empty (or use `registry`)".into()));
                }
                if cfg.paths.is_empty() {
                    return Err(e("paths", "must not be empty (or use `registry`)".into()));
                }
                let methods = if cfg.methods.iter().any(|m| m == "*") {
                    None
                } else {
                    for (j, m) in cfg.methods.iter().enumerate() {
                        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                            return Err(e(
                                &format!("methods[{j}]"),
                                format!("{m:?} is not an upper-case method name"),
                            ));
                        }
                    }
                    Some(parts.methods(cfg.methods.clone()))
                };
                for (j, p) in cfg.paths.iter().enumerate() {
                    let path = match p {
                        PathConfig::Exact(p) => PathTemplate::exact(p),
                        PathConfig::Prefix(p) => PathTemplate::prefix(p),
                        PathConfig::Template(p) => PathTemplate::template(p),
                    }
                    .map_err(|m| e(&format!("paths[{j}]"), m))?;
                    routes.push(Route { methods: methods.clone(), path: parts.path(path) });
                }
            }
        }

        // Bounded work per request: matching a template costs its segments times the path's
        // (several `**`) or the path's length (at most one).
        for (j, route) in routes.iter().enumerate() {
            let at = || if cfg.registry.is_some() { "registry".to_owned() } else { format!("paths[{j}]") };
            if route.path.many_count() > MAX_DOUBLE_STARS {
                return Err(e(&at(), format!("a path has at most {MAX_DOUBLE_STARS} `**` segments")));
            }
            if route.path.segments().len() > MAX_PATTERN_SEGMENTS {
                return Err(e(&at(), format!("a path has at most {MAX_PATTERN_SEGMENTS} segments")));
            }
        }
        if routes.len() > MAX_ROUTES {
            return Err(e("paths", format!("{} paths; a rule has at most {MAX_ROUTES}", routes.len())));
        }
        let capture_names: HashSet<&str> = routes.iter().flat_map(|r| r.path.capture_names()).collect();
        let conditions = |list: &[ConditionConfig],
                          field: &str,
                          kind: &str|
         -> Result<Vec<(String, Test)>, RuleError> {
            let mut out = Vec::new();
            for (j, c) in list.iter().enumerate() {
                let at = format!("{field}[{j}]");
                let subject = match kind {
                    "claim" if c.header.is_none() && c.capture.is_none() => c.claim.clone(),
                    "header" if c.claim.is_none() && c.capture.is_none() => c.header.clone(),
                    "capture" if c.claim.is_none() && c.header.is_none() => c.capture.clone(),
                    _ => None,
                };
                let Some(subject) = subject.filter(|s| !s.is_empty()) else {
                    return Err(e(&at, format!("each entry names one `{kind}` (and nothing else to test)")));
                };
                if kind == "header" && subject.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(e(&at, format!("header {subject:?} must be written in lower case")));
                }
                if kind == "capture" && !capture_names.contains(subject.as_str()) {
                    return Err(e(&at, format!("no path template of this rule captures {subject:?}")));
                }
                out.push((subject, Test::compile(c, kind == "capture").map_err(|m| e(&at, m))?));
            }
            Ok(out)
        };
        let headers = conditions(&cfg.headers, "headers", "header")?;
        let claims = conditions(&cfg.claims, "claims", "claim")?;
        let captures = conditions(&cfg.conditions, "conditions", "capture")?;
        // A deny must fire if any split of the path satisfies its conditions, but captures bind one
        // split only: rather than search every split, such a rule is refused (an allow rule is
        // fine, as it allows only on the split it checked).
        if cfg.effect == Effect::Deny {
            for (j, (name, _)) in captures.iter().enumerate() {
                let ambiguous = routes
                    .iter()
                    .any(|r| r.path.splits_ambiguously() && r.path.capture_names().any(|n| n == name));
                if ambiguous {
                    return Err(e(
                        &format!("conditions[{j}]"),
                        format!(
                            "a deny rule cannot test capture {name:?} of a template with more than one `**`: \
                             the path may split between them in several ways"
                        ),
                    ));
                }
            }
        }

        for (j, name) in cfg.issuers.iter().enumerate() {
            if !issuer_names.contains(name) {
                return Err(e(&format!("issuers[{j}]"), format!("no issuer is named {name:?}")));
            }
        }
        let globs = |list: &[String], field: &str| {
            list.iter()
                .enumerate()
                .map(|(j, s)| Glob::new(s).map_err(|m| e(&format!("{field}[{j}]"), m)))
                .collect::<Result<Vec<_>, _>>()
        };
        let subjects = globs(&cfg.subjects, "subjects")?;
        let peers = globs(&cfg.peers, "peers")?;
        for (j, profile) in cfg.profiles.iter().enumerate() {
            if !crate::token::profile::Profile::NAMES.contains(&profile.as_str()) {
                return Err(e(&format!("profiles[{j}]"), format!("unknown profile {profile:?}")));
            }
        }
        let needs_token = !cfg.issuers.is_empty()
            || !cfg.profiles.is_empty()
            || !subjects.is_empty()
            || !claims.is_empty()
            || !cfg.scopes.is_empty()
            || cfg.max_token_age_seconds.is_some();
        if !needs_token && peers.is_empty() {
            return Err(e(
                "subjects",
                "a rule must say who it is for: subjects, issuers, claims, scopes or peers (subjects: [\"**\"] for any verified token)".into(),
            ));
        }
        let time = |t: &Option<Timestamp>, field: &str| {
            t.as_ref().map(Timestamp::to_unix).transpose().map_err(|m| e(field, m.to_string()))
        };
        let not_before = time(&cfg.not_before, "not_before")?;
        let expires_at = time(&cfg.expires_at, "expires_at")?;
        if let (Some(nb), Some(exp)) = (not_before, expires_at) {
            if nb >= exp {
                return Err(e("expires_at", "must be after not_before".into()));
            }
        }
        let host_ports =
            hosts.iter().any(|h| matches!(h, HostPattern::ExactPort(..) | HostPattern::SuffixPort(..)));
        // Parsed and built vectors carry spare capacity (a one-element Vec holds four): boxed, they
        // shed it (in place, cheaply), and a large bundle's rules take a quarter less memory.
        let rule = Rule {
            id: cfg.id,
            owner: cfg.owner,
            description: cfg.description,
            effect: cfg.effect,
            mode: cfg.mode.unwrap_or(default_mode),
            break_glass: cfg.break_glass,
            not_before,
            expires_at,
            hosts: hosts.into_boxed_slice(),
            routes: routes.into_boxed_slice(),
            repositories: repositories.into_boxed_slice(),
            headers: headers.into_boxed_slice(),
            issuers: cfg.issuers.into_boxed_slice(),
            profiles: cfg.profiles.into_boxed_slice(),
            subjects: subjects.into_boxed_slice(),
            claims: claims.into_boxed_slice(),
            scopes: cfg.scopes.into_boxed_slice(),
            peers: peers.into_boxed_slice(),
            max_token_age: cfg.max_token_age_seconds,
            captures: captures.into_boxed_slice(),
            needs_token,
            host_ports,
            version_check,
        };
        Ok(rule)
    }

    /// The host patterns the rule covers.
    pub fn hosts(&self) -> &[HostPattern] {
        &self.hosts
    }

    /// The (methods, path) routes the rule covers; a registry rule's are its actions' routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub(super) fn header_names(&self) -> impl Iterator<Item = &str> {
        self.headers.iter().map(|(h, _)| h.as_str())
    }

    /// Whether the rule reads the mTLS peer identity.
    pub fn uses_peers(&self) -> bool {
        !self.peers.is_empty() || self.captures.iter().any(|(_, t)| t.uses_peer())
    }

    /// Whether the rule can only match a request that carries a verified token.
    pub fn needs_token(&self) -> bool {
        self.needs_token
    }

    /// Whether the rule matches, trying every route; the first reason it does not, otherwise.
    pub fn check(&self, input: &PolicyInput<'_>) -> Result<(), Mismatch> {
        // Report the route that got furthest: past host, method and path, its reason tells most.
        let mut best: Option<Miss> = None;
        for route in 0..self.routes.len() {
            match self.check_route(route, input, Found::Scan) {
                Ok(()) => return Ok(()),
                Err(miss) => {
                    if best.is_none_or(|b| miss.depth() > b.depth()) {
                        best = Some(miss);
                    }
                }
            }
        }
        Err(best.map_or(Mismatch::NoRoute, |miss| self.describe(miss, input)))
    }

    /// Whether the rule matches through one route. On the request path: no allocation, the
    /// reason is a small value that `explain` turns into text. `found` says whether the index
    /// handed out the route, which then needs no second look at what the index matched.
    pub(super) fn check_route(
        &self,
        route: usize,
        input: &PolicyInput<'_>,
        found: Found,
    ) -> Result<(), Miss> {
        let path = &input.target.path;
        let matched = self.routes.get(route).and_then(|r| r.path.matches(path));
        self.check_matched(route, input, found, matched.as_ref())
    }

    /// Like [`check_route`](Self::check_route), given what the route's template matched of the
    /// path (`None`: nothing), so that routes with the same template share one match.
    pub(super) fn check_matched(
        &self,
        route: usize,
        input: &PolicyInput<'_>,
        found: Found,
        matched: Option<&Captures<'_>>,
    ) -> Result<(), Miss> {
        let version_check = self.version_check == Some(route);
        let route = self.routes.get(route).ok_or(Miss::Route)?;
        let target = input.target;
        let indexed = found == Found::Indexed;
        // The index files the rule by host name and method: the port (if a pattern has one) is
        // checked here.
        if (!indexed || self.host_ports) && !self.hosts.iter().any(|h| h.matches(&target.host, target.port)) {
            return Err(Miss::Host);
        }
        if let Some(methods) = route.methods.as_ref().filter(|_| !indexed) {
            if !methods.contains(&target.method) {
                return Err(Miss::Method);
            }
        }
        let captures = matched.ok_or(Miss::Path)?;
        // Routes that name a repository must name a covered one; the `/v2/` version check has none.
        if let Some(repo) = capture(captures, "repo") {
            if !self.repositories.is_empty() && !self.repositories.iter().any(|g| g.matches(repo)) {
                return Err(Miss::Repository);
            }
        }
        if self.not_before.is_some_and(|nb| input.now < nb) {
            return Err(Miss::NotYetActive);
        }
        if self.expires_at.is_some_and(|exp| input.now > exp) {
            return Err(Miss::Expired);
        }
        for (n, (name, test)) in self.headers.iter().enumerate() {
            let value = input.headers.iter().find(|(h, _)| h == name).map(|(_, v)| *v);
            if !test.holds_text(value, input.token, input.peer) {
                return Err(Miss::Header(n));
            }
        }
        if !self.peers.is_empty() {
            let peer = input.peer.ok_or(Miss::NoPeer)?;
            if !self.peers.iter().any(|g| g.matches(peer)) {
                return Err(Miss::Peer);
            }
        }
        if self.needs_token {
            let token = input.token.ok_or(Miss::NoToken)?;
            self.check_token(token, input.now)?;
        }
        for (n, (name, test)) in self.captures.iter().enumerate().filter(|_| !version_check) {
            if !test.holds_text(capture(captures, name), input.token, input.peer) {
                return Err(Miss::Capture(n));
            }
        }
        Ok(())
    }

    fn check_token(&self, token: &VerifiedToken, now: u64) -> Result<(), Miss> {
        if !self.issuers.is_empty() && !self.issuers.contains(&token.issuer_name) {
            return Err(Miss::Issuer);
        }
        if !self.profiles.is_empty() && !self.profiles.iter().any(|p| p == token.profile) {
            return Err(Miss::Profile);
        }
        if !self.subjects.is_empty() && !self.subjects.iter().any(|g| g.matches(&token.subject)) {
            return Err(Miss::Subject);
        }
        for (n, (claim, test)) in self.claims.iter().enumerate() {
            if !test.holds(token.claim_ref(claim).as_deref(), Some(token), None) {
                return Err(Miss::Claim(n));
            }
        }
        if let Some(n) = self.scopes.iter().position(|s| !token.has_scope(s)) {
            return Err(Miss::Scope(n));
        }
        if let Some(max_age) = self.max_token_age {
            let iat = token.issued_at.ok_or(Miss::TokenAge)?;
            if now.saturating_sub(iat) > max_age {
                return Err(Miss::TokenAge);
            }
        }
        Ok(())
    }

    /// The reason a rule did not match, with what did not match.
    fn describe(&self, miss: Miss, input: &PolicyInput<'_>) -> Mismatch {
        let target = input.target;
        let token = input.token;
        let named = |list: &[(String, Test)], n: usize| {
            list.get(n).map_or_else(String::new, |(name, _)| name.clone())
        };
        match miss {
            Miss::Route => Mismatch::NoRoute,
            Miss::Host => Mismatch::Host { host: target.host.clone() },
            Miss::Method => Mismatch::Method { method: target.method.clone() },
            Miss::Path => Mismatch::Path { path: target.path.clone() },
            Miss::Repository => Mismatch::Repository,
            Miss::NotYetActive => Mismatch::NotYetActive,
            Miss::Expired => Mismatch::Expired,
            Miss::Header(n) => Mismatch::Header { header: named(&self.headers, n) },
            Miss::NoPeer => Mismatch::NoPeer,
            Miss::Peer => Mismatch::Peer { peer: input.peer.unwrap_or_default().to_owned() },
            Miss::NoToken => Mismatch::NoToken,
            Miss::Issuer => {
                Mismatch::Issuer { issuer: token.map_or_else(String::new, |t| t.issuer_name.clone()) }
            }
            Miss::Profile => Mismatch::Profile { profile: token.map_or("", |t| t.profile) },
            Miss::Subject => {
                Mismatch::Subject { subject: token.map_or_else(String::new, |t| t.subject.clone()) }
            }
            Miss::Claim(n) => Mismatch::Claim { claim: named(&self.claims, n) },
            Miss::Scope(n) => Mismatch::Scope { scope: self.scopes.get(n).cloned().unwrap_or_default() },
            Miss::TokenAge => Mismatch::TokenAge { max_seconds: self.max_token_age.unwrap_or_default() },
            Miss::Capture(n) => Mismatch::Capture { capture: named(&self.captures, n) },
        }
    }
}

/// Why a rule did not match a request (what `explain` shows), with what did not match. Displayed
/// as a short lower-case phrase.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// The rule has no route (cannot happen for a compiled rule).
    #[error("no route")]
    NoRoute,
    /// None of the rule's hosts covers the request's.
    #[error("host {host:?} is not covered")]
    Host { host: String },
    /// None of the rule's routes covers the method.
    #[error("method {method} is not covered")]
    Method { method: String },
    /// None of the rule's paths covers the request's.
    #[error("path {path} is not covered")]
    Path { path: String },
    /// The registry repository in the path is not one of the rule's.
    #[error("repository is not covered")]
    Repository,
    /// The rule's `not_before` is still ahead.
    #[error("not active yet (not_before)")]
    NotYetActive,
    /// The rule's `expires_at` has passed.
    #[error("expired (expires_at)")]
    Expired,
    /// A header condition does not hold.
    #[error("header {header} does not satisfy its condition")]
    Header { header: String },
    /// The rule names peers and the connection had no mTLS identity.
    #[error("no mTLS peer identity")]
    NoPeer,
    /// The mTLS peer is not one of the rule's.
    #[error("peer {peer:?} is not covered")]
    Peer { peer: String },
    /// The rule needs a token and the request had none.
    #[error("no verified token")]
    NoToken,
    /// The token's issuer is not one of the rule's.
    #[error("issuer {issuer} is not covered")]
    Issuer { issuer: String },
    /// The token's profile is not one of the rule's.
    #[error("profile {profile} is not covered")]
    Profile { profile: &'static str },
    /// The token's subject is not one of the rule's.
    #[error("subject {subject:?} is not covered")]
    Subject { subject: String },
    /// A claim condition does not hold.
    #[error("claim {claim} does not satisfy its condition")]
    Claim { claim: String },
    /// The token lacks a scope the rule requires.
    #[error("scope {scope:?} is missing")]
    Scope { scope: String },
    /// The token is older than the rule's `max_token_age_seconds` (or has no `iat`).
    #[error("token is older than {max_seconds} s (or has no iat)")]
    TokenAge { max_seconds: u64 },
    /// A path capture condition does not hold.
    #[error("capture {capture} does not satisfy its condition")]
    Capture { capture: String },
}

/// How a rule came to be checked against a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// Every rule, in turn (`explain`): everything is checked.
    Scan,
    /// Handed out by the index for the request's host, method and path: the host name, the method
    /// and the literal leading path segments are known to match.
    Indexed,
}

/// Why a rule did not match a request: cheap to return on the request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Miss {
    Route,
    Host,
    Method,
    Path,
    Repository,
    NotYetActive,
    Expired,
    Header(usize),
    NoPeer,
    Peer,
    NoToken,
    Issuer,
    Profile,
    Subject,
    Claim(usize),
    Scope(usize),
    TokenAge,
    Capture(usize),
}

impl Miss {
    /// How far into the rule the request got (to report the most telling route in `explain`).
    fn depth(self) -> u8 {
        match self {
            Miss::Route | Miss::Host => 0,
            Miss::Method => 1,
            Miss::Path => 2,
            _ => 3,
        }
    }
}

fn capture<'p>(captures: &[(&str, &'p str)], name: &str) -> Option<&'p str> {
    captures.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

impl VerifiedToken {
    /// Whether the token carries this scope (in `scope` or `scp`).
    pub fn has_scope(&self, scope: &str) -> bool {
        match self.scope_claim() {
            Some(Value::String(s)) => s.split(' ').any(|g| g == scope),
            Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(scope)),
            _ => false,
        }
    }

    /// The token's scopes: the space-separated `scope` claim (RFC 8693 / 9068) or the `scp` array.
    pub fn scopes(&self) -> Vec<&str> {
        match self.scope_claim() {
            Some(Value::String(s)) => s.split(' ').filter(|s| !s.is_empty()).collect(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// The claim that holds the scopes: a `scope` string wins; only without one is `scp` looked up
    /// (a list, or a space-separated string).
    fn scope_claim(&self) -> Option<&Value> {
        match self.claims.get("scope") {
            scope @ Some(Value::String(_)) => scope,
            _ => self.claims.get("scp"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2026-12-31T23:59:59Z"), Ok(1_798_761_599));
        assert_eq!(parse_rfc3339("2026-12-31T23:59:59.5+01:00"), Ok(1_798_757_999));
        assert_eq!(parse_rfc3339("2000-02-29T12:00:00-00:30"), Ok(951_827_400));
        for bad in
            ["2026-13-01T00:00:00Z", "2026-12-31", "2026-12-31T23:59:59", "x", "2026-12-31T23:59:59+0100"]
        {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interpolation() {
        let t = Interpolated::parse("${claim.kubernetes.io.namespace}/").unwrap();
        assert_eq!(t.0, vec![Part::Claim("kubernetes.io.namespace".into()), Part::Text("/".into())]);
        assert!(Interpolated::parse("${nope}").is_err());
        assert!(Interpolated::parse("${sub").is_err());
        assert!(Interpolated::parse("plain").unwrap().is_literal());
    }
}
