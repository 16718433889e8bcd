//! Access rules and their evaluation: which identity may call which host, method and path, under
//! which conditions.
//!
//! Semantics: among the rules that are active and match, a deny rule wins over any allow rule;
//! otherwise the first matching allow rule (in bundle order) allows; when nothing matches, the
//! request is denied (default deny). Rules in `dry-run` mode are evaluated too, but only reported.
//!
//! Rules are compiled once into an index (host -> method -> literal path prefix), so a decision
//! looks only at the rules that could match the request, however many the bundle has.

pub mod pattern;
pub mod registry;
mod rule;

use std::collections::HashSet;

// The index is built from the bundle only; requests just look names up, so a fast hash is safe.
use foldhash::HashMap;

pub use pattern::{Glob, HostPattern, PathTemplate};
use rule::Found;
pub use rule::{
    ConditionConfig, Effect, Mode, PathConfig, RegistryConfig, Route, Rule, RuleConfig, Timestamp,
};

use crate::decision::{Decision, Reason};
use crate::request::RequestTarget;
use crate::token::VerifiedToken;

/// Everything policy looks at for one request.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInput<'a> {
    /// The checked request.
    pub target: &'a RequestTarget,
    /// All request headers (lower-case names), for header conditions.
    pub headers: &'a [(&'a str, &'a str)],
    /// The verified token, if one was presented.
    pub token: Option<&'a VerifiedToken>,
    /// The mTLS peer's identity (URI SAN / SPIFFE ID), if the connection had one.
    pub peer: Option<&'a str>,
    /// Unix seconds.
    pub now: u64,
}

/// The result of evaluating a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    /// The decision of the enforced rules.
    pub decision: Decision,
    /// The decision with dry-run rules included, when it differs from the enforced one.
    pub dry_run: Option<Decision>,
}

/// Why one rule did or did not match a request (for `explain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleTrace {
    /// The rule.
    pub rule_id: String,
    /// `None` when the rule matched; otherwise the first reason it did not.
    pub mismatch: Option<String>,
}

/// A compiled set of rules with default deny.
#[derive(Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    index: Index,
    /// Header names some condition reads: such a header arriving twice denies the request.
    condition_headers: HashSet<String>,
}

impl Policy {
    /// Compiles rules, in bundle order.
    pub fn new(rules: Vec<Rule>) -> Self {
        let mut index = Index::default();
        let mut condition_headers = HashSet::new();
        for (r, rule) in rules.iter().enumerate() {
            condition_headers.extend(rule.header_names().map(str::to_owned));
            for (route_id, route) in rule.routes().iter().enumerate() {
                let entry = Entry { rule: r as u32, route: route_id as u16 };
                for host in rule.hosts() {
                    index.add(host, route.methods.as_deref(), route.path.literal_prefix(), entry);
                }
            }
        }
        Policy { rules, index, condition_headers }
    }

    /// Whether any rule reads the mTLS peer identity (so the filter fetches it only then).
    pub fn uses_peers(&self) -> bool {
        self.rules.iter().any(Rule::uses_peers)
    }

    /// The rules, in bundle order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Decides a request.
    pub fn evaluate(&self, input: &PolicyInput<'_>) -> Evaluation {
        if let Some(reason) = self.repeated_condition_header(input.headers) {
            return Evaluation { decision: Decision::deny(reason), dry_run: None };
        }
        let mut candidates =
            self.index.candidates(&input.target.host, &input.target.method, &input.target.path);
        // Bundle order decides which allow rule is reported; each (rule, route) once.
        candidates.sort_unstable();
        candidates.dedup();

        let mut enforced = Verdict::default();
        let mut with_dry_run = Verdict::default();
        let mut last_rule = None;
        for Entry { rule: r, route } in candidates {
            if last_rule == Some(r) {
                continue; // another route of a rule that already matched
            }
            let Some(rule) = self.rules.get(r as usize) else { continue };
            if rule.check_route(route as usize, input, Found::Indexed).is_err() {
                continue;
            }
            last_rule = Some(r);
            with_dry_run.note(r, rule);
            if rule.mode == Mode::Enforce {
                enforced.note(r, rule);
            }
        }
        let decision = enforced.decision(&self.rules);
        // The same deciding rules make the same decision: only build the shadow one when they differ.
        let dry_run = if with_dry_run == enforced {
            None
        } else {
            Some(with_dry_run.decision(&self.rules)).filter(|shadow| *shadow != decision)
        };
        Evaluation { decision, dry_run }
    }

    /// Checks every rule against the request, in bundle order, saying why each did not match.
    pub fn explain(&self, input: &PolicyInput<'_>) -> Vec<RuleTrace> {
        self.rules
            .iter()
            .map(|rule| RuleTrace { rule_id: rule.id.clone(), mismatch: rule.check(input).err() })
            .collect()
    }

    fn repeated_condition_header(&self, headers: &[(&str, &str)]) -> Option<Reason> {
        if self.condition_headers.is_empty() {
            return None;
        }
        let mut seen = HashSet::new();
        for (name, _) in headers {
            if self.condition_headers.contains(*name) && !seen.insert(*name) {
                return Some(Reason::RequestHeaderRepeated);
            }
        }
        None
    }
}

/// The first matching allow and deny rules seen.
#[derive(Default, PartialEq, Eq)]
struct Verdict {
    allow: Option<u32>,
    deny: Option<u32>,
}

impl Verdict {
    fn note(&mut self, r: u32, rule: &Rule) {
        let slot = match rule.effect {
            Effect::Allow => &mut self.allow,
            Effect::Deny => &mut self.deny,
        };
        slot.get_or_insert(r);
    }

    fn decision(&self, rules: &[Rule]) -> Decision {
        let rule = |r: u32| rules.get(r as usize);
        match (self.deny.and_then(rule), self.allow.and_then(rule)) {
            (Some(deny), _) => {
                Decision::deny_by(Reason::PolicyDenied, &deny.id).with_break_glass(deny.break_glass)
            }
            (None, Some(allow)) => Decision::allow(&allow.id).with_break_glass(allow.break_glass),
            (None, None) => Decision::deny(Reason::PolicyNoMatch),
        }
    }
}

/// A (rule, route) pair in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    rule: u32,
    route: u16,
}

/// Host -> method -> path trie. What it hands out for a request is exactly the (rule, route)
/// pairs whose host name (port aside), method and literal leading path segments match it; the
/// evaluation relies on that and does not check them again.
#[derive(Debug, Default)]
struct Index {
    exact: HashMap<String, MethodIndex>,
    /// Keyed by the suffix with its leading dot (`.example.com`).
    suffix: HashMap<String, MethodIndex>,
    any: MethodIndex,
}

#[derive(Debug, Default)]
struct MethodIndex {
    by_method: HashMap<String, PathTrie>,
    any: PathTrie,
}

/// Rules filed under the literal leading segments of their path templates.
#[derive(Debug, Default)]
struct PathTrie {
    here: Vec<Entry>,
    children: HashMap<String, PathTrie>,
}

impl Index {
    fn add<'s>(
        &mut self,
        host: &HostPattern,
        methods: Option<&[String]>,
        prefix: impl Iterator<Item = &'s str> + Clone,
        entry: Entry,
    ) {
        let by_host = match host {
            HostPattern::Any => &mut self.any,
            HostPattern::Exact(h) | HostPattern::ExactPort(h, _) => self.exact.entry(h.clone()).or_default(),
            HostPattern::Suffix(s) => self.suffix.entry(s.clone()).or_default(),
        };
        let tries: Vec<&mut PathTrie> = match methods {
            None => vec![&mut by_host.any],
            Some(list) => {
                let mut tries = Vec::new();
                // Split borrows: one trie per listed method.
                for m in list {
                    by_host.by_method.entry(m.clone()).or_default();
                }
                for (m, trie) in by_host.by_method.iter_mut() {
                    if list.contains(m) {
                        tries.push(trie);
                    }
                }
                tries
            }
        };
        for trie in tries {
            let mut node = trie;
            for segment in prefix.clone() {
                node = node.children.entry(segment.to_owned()).or_default();
            }
            node.here.push(entry);
        }
    }

    fn candidates(&self, host: &str, method: &str, path: &str) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut visit = |m: &MethodIndex| {
            if let Some(trie) = m.by_method.get(method) {
                trie.collect(path, &mut out);
            }
            m.any.collect(path, &mut out);
        };
        if let Some(m) = self.exact.get(host) {
            visit(m);
        }
        if !self.suffix.is_empty() {
            // `*.example.com` covers names below `example.com`, never `.example.com` itself.
            for (at, _) in host.match_indices('.').filter(|&(at, _)| at > 0) {
                if let Some(m) = host.get(at..).and_then(|suffix| self.suffix.get(suffix)) {
                    visit(m);
                }
            }
        }
        visit(&self.any);
        out
    }
}

impl PathTrie {
    fn collect(&self, path: &str, out: &mut Vec<Entry>) {
        let mut node = self;
        out.extend_from_slice(&node.here);
        for segment in pattern::path_segments(path.strip_prefix('/').unwrap_or(path)) {
            match node.children.get(segment) {
                Some(child) => {
                    node = child;
                    out.extend_from_slice(&node.here);
                }
                None => break,
            }
        }
    }
}
