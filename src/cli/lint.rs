//! Lints of a bundle that compiled: rules that can never decide, very broad write access, external
//! access without an end date, issuers without a token lifetime limit, rules without an owner.
//!
//! Every "A covers B" judgement here is conservative: a rule is reported as shadowed or unreachable
//! only when it provably can never decide; when unsure, nothing is reported.

use std::collections::HashSet;

use serde::Serialize;

use crate::config::BundleConfig;
use crate::policy::pattern::Segment;
use crate::policy::registry::RegistryAction;
use crate::policy::{Effect, Glob, HostPattern, Mode, Policy, Route, Rule, RuleConfig};

/// The lints `meshward check` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Lint {
    /// An earlier rule of the same effect matches every request this one matches: it never decides.
    Shadowed,
    /// The rule can never decide: a deny rule covers it, it has expired, or no trusted issuer can
    /// produce the identities it names.
    Unreachable,
    /// An allow rule grants write methods to very many identities, or on every host, path or
    /// repository.
    BroadWrite,
    /// An allow rule for identities outside the organisation's trust domains has no `expires_at`.
    ExternalWithoutExpiry,
    /// An issuer sets no `max_lifetime_seconds`: the tokens it signs may live for years.
    IssuerWithoutLifetime,
    /// A rule has no `owner`.
    RuleWithoutOwner,
    /// A key was skipped while compiling (unusable, private members, wrong `use` ...).
    SkippedKey,
}

impl Lint {
    /// The lint's name as written on the command line and in output.
    pub fn name(self) -> &'static str {
        match self {
            Lint::Shadowed => "shadowed",
            Lint::Unreachable => "unreachable",
            Lint::BroadWrite => "broad-write",
            Lint::ExternalWithoutExpiry => "external-without-expiry",
            Lint::IssuerWithoutLifetime => "issuer-without-lifetime",
            Lint::RuleWithoutOwner => "rule-without-owner",
            Lint::SkippedKey => "skipped-key",
        }
    }
}

/// One lint finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Which lint.
    pub lint: Lint,
    /// Where: `rules[2] (push-dev)` or `issuers[0] (workloads)`.
    pub at: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// What the lints need to know about the organisation.
pub struct LintOptions<'a> {
    /// The time to judge expiry by (unix seconds).
    pub now: u64,
    /// Trust domains that count as internal, beyond those inferred from the bundle.
    pub internal_domains: &'a [String],
}

/// One rule, as written and as compiled.
struct View<'a> {
    index: usize,
    cfg: &'a RuleConfig,
    rule: &'a Rule,
    subjects: Vec<Glob>,
    peers: Vec<Glob>,
    repositories: Vec<Glob>,
}

impl View<'_> {
    fn at(&self) -> String {
        format!("rules[{}] ({})", self.index, self.cfg.id)
    }

    fn needs_token(&self) -> bool {
        self.rule.needs_token()
    }
}

fn globs(list: &[String]) -> Vec<Glob> {
    list.iter().filter_map(|s| Glob::new(s).ok()).collect()
}

/// Runs every lint on a bundle that compiled into `policy`.
pub fn lint(config: &BundleConfig, policy: &Policy, options: &LintOptions<'_>) -> Vec<Finding> {
    let views: Vec<View<'_>> = config
        .rules
        .iter()
        .zip(policy.rules())
        .enumerate()
        .map(|(index, (cfg, rule))| View {
            index,
            cfg,
            rule,
            subjects: globs(&cfg.subjects),
            peers: globs(&cfg.peers),
            repositories: cfg.registry.as_ref().map(|r| globs(&r.repositories)).unwrap_or_default(),
        })
        .collect();
    let mut findings = Vec::new();
    for (i, issuer) in config.issuers.iter().enumerate() {
        if issuer.max_lifetime_seconds.is_none() {
            findings.push(Finding {
                lint: Lint::IssuerWithoutLifetime,
                at: format!("issuers[{i}] ({})", issuer.name),
                message:
                    "no max_lifetime_seconds: a leaked token stays valid as long as its issuer made it; \
                          set a limit such as 3600"
                        .into(),
            });
        }
    }
    let internal = internal_domains(config, options.internal_domains);
    for v in &views {
        if v.cfg.owner.trim().is_empty() {
            findings.push(Finding {
                lint: Lint::RuleWithoutOwner,
                at: v.at(),
                message: "no owner: say who answers for this rule".into(),
            });
        }
        if let Some(f) = unreachable(v, &views, config, options.now) {
            findings.push(f);
        } else if let Some(f) = shadowed(v, &views) {
            findings.push(f);
        }
        if let Some(f) = broad_write(v) {
            findings.push(f);
        }
        if let Some(f) = external_without_expiry(v, config, &internal) {
            findings.push(f);
        }
    }
    findings
}

// ---- coverage: does rule A match every request rule B matches? ----

fn host_covers(a: &HostPattern, b: &HostPattern) -> bool {
    match (a, b) {
        (HostPattern::Any, _) => true,
        (HostPattern::Suffix(s), HostPattern::Exact(h) | HostPattern::ExactPort(h, _)) => {
            h.len() > s.len() && h.ends_with(s.as_str())
        }
        (HostPattern::Suffix(s), HostPattern::Suffix(t)) => t.ends_with(s.as_str()),
        (HostPattern::Exact(h), HostPattern::Exact(g) | HostPattern::ExactPort(g, _)) => h == g,
        (HostPattern::ExactPort(h, p), HostPattern::ExactPort(g, q)) => h == g && p == q,
        _ => false,
    }
}

/// A segment that always stands for at least one non-empty segment.
fn solid(s: &Segment) -> bool {
    match s {
        Segment::Literal(l) => !l.is_empty(),
        Segment::One(_) | Segment::Many(Some(_)) => true,
        Segment::Many(None) => false,
    }
}

/// Whether path template `a` matches every path template `b` matches.
fn path_covers(a: &[Segment], b: &[Segment]) -> bool {
    let Some((head, rest)) = a.split_first() else { return b.is_empty() };
    match head {
        // Zero or more segments: skip it, or let it take b's first segment(s).
        Segment::Many(None) => {
            path_covers(rest, b) || b.split_first().is_some_and(|(_, bt)| path_covers(a, bt))
        }
        // One or more non-empty segments.
        Segment::Many(Some(_)) => match b.split_first() {
            Some((bh, bt)) if solid(bh) => path_covers(rest, bt) || more_solid(rest, bt),
            _ => false,
        },
        Segment::One(_) => match b.split_first() {
            Some((bh @ (Segment::Literal(_) | Segment::One(_)), bt)) if solid(bh) => path_covers(rest, bt),
            _ => false,
        },
        Segment::Literal(l) => match b.split_first() {
            Some((Segment::Literal(m), bt)) if l == m => path_covers(rest, bt),
            _ => false,
        },
    }
}

/// After a named `**` took one segment of b, it may take more non-empty ones.
fn more_solid(rest: &[Segment], b: &[Segment]) -> bool {
    b.split_first().is_some_and(|(bh, bt)| solid(bh) && (path_covers(rest, bt) || more_solid(rest, bt)))
}

fn route_covers(a: &Route, b: &Route) -> bool {
    let methods = match (&a.methods, &b.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(am), Some(bm)) => bm.iter().all(|m| am.contains(m)),
    };
    methods && path_covers(a.path.segments(), b.path.segments())
}

/// Whether glob `a` matches every string glob `b` matches.
fn glob_covers(a: &Glob, b: &Glob) -> bool {
    let (a, b) = (a.as_str(), b.as_str());
    if a == b || a.bytes().all(|c| c == b'*') && a.len() >= 2 {
        return true;
    }
    if !b.contains('*') {
        return Glob::new(a).is_ok_and(|g| g.matches(b));
    }
    // `prefix**` covers anything that starts with the prefix.
    match a.strip_suffix("**") {
        Some(prefix) if !prefix.contains('*') => b.starts_with(prefix),
        _ => false,
    }
}

/// Every glob of b is covered by a glob of a; an empty list means "anything".
pub(crate) fn globs_cover(a: &[Glob], b: &[Glob]) -> bool {
    if a.is_empty() {
        return true;
    }
    if b.is_empty() {
        return a.iter().any(|g| g.as_str().bytes().all(|c| c == b'*') && g.as_str().len() >= 2);
    }
    b.iter().all(|gb| a.iter().any(|ga| glob_covers(ga, gb)))
}

pub(crate) fn names_cover(a: &[String], b: &[String]) -> bool {
    a.is_empty() || (!b.is_empty() && b.iter().all(|n| a.contains(n)))
}

fn subset<T: PartialEq>(a: &[T], b: &[T]) -> bool {
    a.iter().all(|x| b.contains(x))
}

/// Whether rule a matches every request rule b matches (conservatively).
fn covers(a: &View<'_>, b: &View<'_>) -> bool {
    let (ac, bc) = (a.cfg, b.cfg);
    let hosts = b.rule.hosts().iter().all(|hb| a.rule.hosts().iter().any(|ha| host_covers(ha, hb)));
    let routes = b.rule.routes().iter().all(|rb| a.rule.routes().iter().any(|ra| route_covers(ra, rb)));
    let repositories = a.repositories.is_empty()
        || (!b.repositories.is_empty()
            && b.repositories.iter().all(|gb| a.repositories.iter().any(|ga| glob_covers(ga, gb))));
    let window =
        ac.not_before.is_none() || (a.rule.not_before <= b.rule.not_before && b.rule.not_before.is_some());
    let window = window
        && (ac.expires_at.is_none()
            || (b.rule.expires_at.is_some() && a.rule.expires_at >= b.rule.expires_at));
    let token_rule_covers_tokenless = !a.needs_token() || b.needs_token();
    let identity = token_rule_covers_tokenless
        && names_cover(&ac.issuers, &bc.issuers)
        && names_cover(&ac.profiles, &bc.profiles)
        && (!a.needs_token() || globs_cover(&a.subjects, &b.subjects))
        && globs_cover(&a.peers, &b.peers)
        && (a.peers.is_empty() || !b.peers.is_empty())
        && subset(&ac.claims, &bc.claims)
        && subset(&ac.scopes, &bc.scopes)
        && subset(&ac.headers, &bc.headers)
        && (ac.conditions.is_empty()
            || (subset(&ac.conditions, &bc.conditions)
                && ac.paths == bc.paths
                && ac.registry == bc.registry))
        && match (ac.max_token_age_seconds, bc.max_token_age_seconds) {
            (None, _) => true,
            (Some(a), Some(b)) => a >= b,
            (Some(_), None) => false,
        };
    hosts && routes && repositories && window && identity
}

/// `a` takes part in the decisions `b` takes part in: an enforced rule, or both dry-run.
fn in_force_for(a: &View<'_>, b: &View<'_>) -> bool {
    a.rule.mode == Mode::Enforce || b.rule.mode == Mode::DryRun
}

fn shadowed(b: &View<'_>, views: &[View<'_>]) -> Option<Finding> {
    let earlier = views
        .iter()
        .take(b.index)
        .find(|a| a.rule.effect == b.rule.effect && in_force_for(a, b) && covers(a, b))?;
    let message = match b.rule.effect {
        Effect::Allow => format!(
            "never decides: the earlier allow rule {} matches every request it matches (the first \
             matching allow rule decides); remove it or narrow {}",
            earlier.cfg.id, earlier.cfg.id
        ),
        Effect::Deny => format!(
            "never decides: the earlier deny rule {} matches every request it matches",
            earlier.cfg.id
        ),
    };
    Some(Finding { lint: Lint::Shadowed, at: b.at(), message })
}

fn unreachable(b: &View<'_>, views: &[View<'_>], config: &BundleConfig, now: u64) -> Option<Finding> {
    let found = |message: String| Some(Finding { lint: Lint::Unreachable, at: b.at(), message });
    if let Some(exp) = b.rule.expires_at.filter(|exp| *exp < now) {
        return found(format!("expired on {}: it matches nothing any more; remove it", super::rfc3339(exp)));
    }
    if b.rule.effect == Effect::Allow {
        if let Some(deny) = views.iter().find(|d| {
            d.index != b.index && d.rule.effect == Effect::Deny && in_force_for(d, b) && covers(d, b)
        }) {
            return found(format!(
                "can never allow: deny rule {} matches every request it matches, and deny overrides allow",
                deny.cfg.id
            ));
        }
    }
    if !b.needs_token() {
        return None;
    }
    // The issuers whose tokens the rule accepts.
    let issuers: Vec<_> = config
        .issuers
        .iter()
        .filter(|i| b.cfg.issuers.is_empty() || b.cfg.issuers.contains(&i.name))
        .collect();
    if !b.cfg.profiles.is_empty() && !issuers.iter().any(|i| b.cfg.profiles.contains(&i.profile)) {
        return found(format!(
            "no issuer it accepts has profile {}: no token can match",
            b.cfg.profiles.join(" or ")
        ));
    }
    // Subjects a jwt-svid issuer can never sign (another trust domain) or a Kubernetes issuer
    // can never sign (not a service account).
    if !b.subjects.is_empty() && !issuers.is_empty() {
        let possible = |g: &Glob| {
            let prefix = g.literal_prefix();
            issuers.iter().any(|i| match (i.profile.as_str(), &i.trust_domain) {
                ("jwt-svid", Some(td)) => {
                    let own = format!("spiffe://{td}/");
                    own.starts_with(&prefix) || prefix.starts_with(&own)
                }
                ("kubernetes", _) => {
                    let sa = "system:serviceaccount:";
                    sa.starts_with(prefix.as_str()) || prefix.starts_with(sa)
                }
                _ => true,
            })
        };
        if !b.subjects.iter().any(possible) {
            return found(
                "no issuer it accepts can sign its subjects (wrong SPIFFE trust domain, or not a \
                 Kubernetes service account): no token can match"
                    .into(),
            );
        }
    }
    None
}

const READ_METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];

fn broad_write(v: &View<'_>) -> Option<Finding> {
    // Deny rules narrow access; break-glass rules are broad by design and audited at high severity.
    if v.rule.effect != Effect::Allow || v.rule.break_glass {
        return None;
    }
    let writes = |r: &Route| {
        r.methods.as_ref().is_none_or(|ms| ms.iter().any(|m| !READ_METHODS.contains(&m.as_str())))
    };
    let write_routes: Vec<&Route> = v.rule.routes().iter().filter(|r| writes(r)).collect();
    if write_routes.is_empty() {
        return None;
    }
    let mut broad = Vec::new();
    let identity_constrained = !v.cfg.claims.is_empty() || !v.cfg.scopes.is_empty();
    if !identity_constrained {
        if v.subjects.is_empty() && v.peers.is_empty() {
            broad.push("any verified subject".to_string());
        }
        broad.extend(
            v.subjects
                .iter()
                .chain(&v.peers)
                .filter(|g| broad_identity(g))
                .map(|g| format!("identities {}", g.as_str())),
        );
    }
    if v.rule.hosts().contains(&HostPattern::Any) {
        broad.push("every host".into());
    }
    if write_routes.iter().any(|r| matches!(r.path.segments().first(), Some(Segment::Many(_)))) {
        broad.push("every path".into());
    }
    let writes_repos =
        v.cfg.registry.as_ref().is_some_and(|r| r.actions.iter().any(|a| *a != RegistryAction::Pull));
    if writes_repos {
        broad.extend(
            v.repositories
                .iter()
                .filter(|g| g.literal_prefix().is_empty())
                .map(|g| format!("repositories {}", g.as_str())),
        );
    }
    if broad.is_empty() {
        return None;
    }
    Some(Finding {
        lint: Lint::BroadWrite,
        at: v.at(),
        message: format!(
            "grants write access to {}: narrow it, or mark emergency access `break_glass`",
            broad.join(", ")
        ),
    })
}

/// A subject or peer glob that names a whole trust domain or more.
fn broad_identity(g: &Glob) -> bool {
    let prefix = g.literal_prefix();
    if prefix.is_empty() {
        return true;
    }
    if let Some(rest) = prefix.strip_prefix("spiffe://") {
        // Nothing fixed below the trust domain.
        return rest.split_once('/').is_none_or(|(_, path)| path.is_empty());
    }
    if let Some(rest) = prefix.strip_prefix("system:serviceaccount:") {
        return !rest.contains(':');
    }
    false
}

/// Trust domains that count as the organisation's own: given ones, those of jwt-svid issuers, and
/// the hosts the bundle protects together with their parent domains.
fn internal_domains(config: &BundleConfig, given: &[String]) -> HashSet<String> {
    let mut domains: HashSet<String> = given.iter().map(|d| d.to_ascii_lowercase()).collect();
    domains.extend(config.issuers.iter().filter_map(|i| i.trust_domain.clone()));
    for rule in &config.rules {
        for host in &rule.hosts {
            if let Ok(HostPattern::Exact(h) | HostPattern::ExactPort(h, _)) = HostPattern::parse(host) {
                if let Some((_, parent)) = h.split_once('.').filter(|(_, p)| p.contains('.')) {
                    domains.insert(parent.to_owned());
                }
                domains.insert(h);
            }
        }
    }
    domains
}

/// The SPIFFE trust domain a glob names, `Some(None)` when it is a wildcard, `None` when the glob is
/// not a SPIFFE ID.
fn spiffe_domain(g: &Glob) -> Option<Option<String>> {
    let rest = g.as_str().strip_prefix("spiffe://")?;
    let domain = rest.split('/').next().unwrap_or_default();
    Some((!domain.contains('*') && !domain.is_empty()).then(|| domain.to_ascii_lowercase()))
}

fn external_without_expiry(
    v: &View<'_>,
    config: &BundleConfig,
    internal: &HashSet<String>,
) -> Option<Finding> {
    if v.rule.effect != Effect::Allow || v.rule.expires_at.is_some() {
        return None;
    }
    let mut external: Vec<String> = v
        .subjects
        .iter()
        .chain(&v.peers)
        .filter_map(|g| match spiffe_domain(g)? {
            Some(d) if internal.contains(&d) => None,
            Some(d) => Some(format!("trust domain {d}")),
            None => Some(format!("any trust domain ({})", g.as_str())),
        })
        .collect();
    // Issuers outside the organisation's domains, when the subjects say nothing.
    if external.is_empty()
        && v.subjects.iter().all(|g| spiffe_domain(g).is_none())
        && !v.cfg.issuers.is_empty()
    {
        let outside = |iss: &str| {
            let host =
                iss.split_once("://").map_or(iss, |(_, r)| r).split(['/', ':']).next().unwrap_or_default();
            !internal.iter().any(|d| host == d || host.ends_with(&format!(".{d}")))
        };
        let foreign: Vec<_> = config
            .issuers
            .iter()
            .filter(|i| v.cfg.issuers.contains(&i.name))
            .filter(|i| outside(&i.issuer))
            .map(|i| format!("issuer {}", i.name))
            .collect();
        if foreign.len() == v.cfg.issuers.len() {
            external = foreign;
        }
    }
    external.sort();
    external.dedup();
    if external.is_empty() {
        return None;
    }
    Some(Finding {
        lint: Lint::ExternalWithoutExpiry,
        at: v.at(),
        message: format!(
            "allows identities from {} with no expires_at: external access should end on a date \
             (internal domains: {}; add more with --internal-domain)",
            external.join(", "),
            {
                let mut d: Vec<_> = internal.iter().cloned().collect();
                d.sort();
                d.join(", ")
            }
        ),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::policy::PathTemplate;

    fn t(p: &str) -> PathTemplate {
        PathTemplate::template(p).unwrap()
    }

    #[test]
    fn path_coverage() {
        let covers = |a: &PathTemplate, b: &PathTemplate| path_covers(a.segments(), b.segments());
        let prefix = PathTemplate::prefix("/v2/dev").unwrap();
        assert!(covers(&prefix, &PathTemplate::exact("/v2/dev").unwrap()));
        assert!(covers(&prefix, &PathTemplate::exact("/v2/dev/x/y").unwrap()));
        assert!(covers(&prefix, &t("/v2/dev/{repo:**}/manifests/{r}")));
        assert!(!covers(&prefix, &PathTemplate::exact("/v2/devil").unwrap()));
        assert!(!covers(&prefix, &t("/v2/{repo:**}/manifests/{r}")));
        assert!(covers(&PathTemplate::prefix("/").unwrap(), &t("/a/**/b")));
        assert!(covers(&t("/v2/{repo:**}/manifests/{r}"), &t("/v2/dev/{x:**}/manifests/{r}")));
        assert!(covers(
            &t("/v2/{repo:**}/manifests/{r}"),
            &PathTemplate::exact("/v2/a/b/manifests/1").unwrap()
        ));
        assert!(!covers(&t("/v2/{repo:**}/manifests/{r}"), &PathTemplate::exact("/v2/manifests/1").unwrap()));
        assert!(!covers(&t("/a/{x}"), &PathTemplate::prefix("/a").unwrap()));
        assert!(!covers(&PathTemplate::exact("/a").unwrap(), &PathTemplate::prefix("/a").unwrap()));
    }

    #[test]
    fn glob_coverage() {
        let g = |s: &str| Glob::new(s).unwrap();
        assert!(glob_covers(&g("**"), &g("spiffe://x/*")));
        assert!(glob_covers(&g("spiffe://x/**"), &g("spiffe://x/ci/*")));
        assert!(glob_covers(&g("spiffe://x/ci/*"), &g("spiffe://x/ci/builder")));
        assert!(!glob_covers(&g("spiffe://x/ci/*"), &g("spiffe://x/ci/**")));
        assert!(!glob_covers(&g("spiffe://x/**"), &g("spiffe://y/**")));
        assert!(!glob_covers(&g("dev/*"), &g("dev/*/x")));
    }

    #[test]
    fn broad_identities() {
        let g = |s: &str| Glob::new(s).unwrap();
        assert!(broad_identity(&g("**")));
        assert!(broad_identity(&g("spiffe://example.internal/**")));
        assert!(broad_identity(&g("spiffe://*/ci/builder")));
        assert!(!broad_identity(&g("spiffe://example.internal/ci/*")));
        assert!(broad_identity(&g("system:serviceaccount:*")));
        assert!(!broad_identity(&g("system:serviceaccount:ci:*")));
    }
}
