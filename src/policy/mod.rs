//! Access rules and their evaluation: which identity may call which host, method and path, under
//! which conditions.
//!
//! Semantics: among the rules that are active and match, a deny rule wins over any allow rule;
//! otherwise the first matching allow rule (in bundle order) allows; when nothing matches, the
//! request is denied (default deny). Rules in `dry-run` mode are evaluated too, but only reported.
//!
//! Rules are compiled once into an index (host -> method -> literal path prefix -> one more
//! literal segment, fixed from the end or anywhere after the prefix), so a decision looks only at
//! the rules that could match the request, however many the bundle has. A request without a token
//! looks only at the rules that need none; templates shared by several rules are matched once.

#![forbid(unsafe_code)]

pub mod pattern;
pub mod registry;
mod rule;

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

// The index is built from the bundle only; requests just look names up, so a fast hash is safe.
use foldhash::HashMap;

pub use pattern::{Glob, HostPattern, PathTemplate, Segment};
use rule::Found;
pub use rule::{
    ConditionConfig, Effect, InvalidTime, Mismatch, Mode, PathConfig, RegistryConfig, Route, RouteParts,
    Rule, RuleConfig, RuleError, Timestamp, MAX_ROUTES,
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
    pub mismatch: Option<Mismatch>,
}

/// A compiled set of rules with default deny.
#[derive(Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    index: Index,
    /// The rules that can match without a token (on the mTLS peer alone): a request without a
    /// token is looked up here, so it costs nothing when no rule is for tokenless callers.
    tokenless: Index,
    /// Header names some condition reads: such a header arriving twice denies the request.
    condition_headers: HashSet<String>,
    /// A rule or route could not be numbered for the index: every request is denied.
    unnumbered: bool,
    /// The candidate list of the last evaluation, kept for its capacity: no allocation per request.
    scratch: RefCell<Vec<Entry>>,
}

impl Policy {
    /// Compiles rules, in bundle order.
    pub fn new(rules: Vec<Rule>) -> Self {
        // One filing per (route, host, method): sized once, as a vector grown by doubling would
        // hold up to twice the room, and both buffers while it grows (megabytes at 10,000 rules,
        // at the peak of configuration).
        let count = rules
            .iter()
            .flat_map(|rule| rule.routes().iter().map(move |route| (rule.hosts().len(), route)))
            .map(|(hosts, route)| hosts.saturating_mul(route.methods.as_ref().map_or(1, |m| m.len())))
            .fold(0usize, usize::saturating_add);
        let mut filings = Vec::with_capacity(count);
        let mut tokenless_filings = Vec::new();
        let mut unnumbered = false;
        let mut templates: HashMap<&PathTemplate, u32> = HashMap::default();
        let mut anchor_counts: HashMap<Anchor<'_>, usize> = HashMap::default();
        for route in rules.iter().flat_map(Rule::routes) {
            for anchor in Anchor::options(&route.path) {
                *anchor_counts.entry(anchor).or_insert(0) += 1;
            }
        }
        let mut condition_headers = HashSet::new();
        for (r, rule) in rules.iter().enumerate() {
            condition_headers.extend(rule.header_names().map(str::to_owned));
            // Rules and routes are numbered in 32 bits, never cut short: a rule has at most
            // MAX_ROUTES routes (`Rule::compile`), and more than 2^32 rules cannot fit in memory;
            // were it to happen, the policy denies everything rather than lose a rule.
            let (Ok(rule_no), Ok(routes)) = (u32::try_from(r), u32::try_from(rule.routes().len())) else {
                unnumbered = true;
                continue;
            };
            for (route_id, route) in (0..routes).zip(rule.routes()) {
                let Ok(next) = u32::try_from(templates.len()) else {
                    unnumbered = true;
                    continue;
                };
                let template = *templates.entry(&route.path).or_insert(next);
                let entry = Entry { rule: rule_no, route: route_id, template };
                // One copy per route, shared by its filings (one per host and method).
                let prefix: Rc<[&str]> = route.path.literal_prefix().collect();
                let anchor = Anchor::rarest(&Anchor::options(&route.path), &anchor_counts);
                let methods: Vec<Option<&str>> = match &route.methods {
                    None => vec![None],
                    Some(list) => list.iter().map(|m| Some(m.as_str())).collect(),
                };
                for host in rule.hosts() {
                    for &method in &methods {
                        let filing = Filing { host, method, prefix: prefix.clone(), anchor, entry };
                        if !rule.needs_token() {
                            tokenless_filings.push(filing.clone());
                        }
                        filings.push(filing);
                    }
                }
            }
        }
        let index = Index::build(filings);
        let tokenless = Index::build(tokenless_filings);
        Policy { rules, index, tokenless, condition_headers, unnumbered, scratch: RefCell::default() }
    }

    /// Whether any rule reads the mTLS peer identity (so the filter fetches it only then).
    pub fn uses_peers(&self) -> bool {
        self.rules.iter().any(Rule::uses_peers)
    }

    /// The rules, in bundle order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Decides a request (whose headers passed [`Policy::repeated_condition_header`]).
    pub fn evaluate(&self, input: &PolicyInput<'_>) -> Evaluation {
        if self.unnumbered {
            return Evaluation { decision: Decision::deny(Reason::InternalError), dry_run: None };
        }
        // Without a token only tokenless rules can match (the others would each fail on it).
        let index = if input.token.is_some() { &self.index } else { &self.tokenless };
        // The path's segments, on the stack for all but the deepest paths.
        let path = &input.target.path;
        let rest = path.strip_prefix('/').unwrap_or(path);
        let mut inline = [""; INLINE_SEGMENTS];
        let mut count = 0;
        let mut split = pattern::path_segments(rest);
        for (slot, segment) in inline.iter_mut().zip(split.by_ref()) {
            *slot = segment;
            count += 1;
        }
        let spilled: Vec<&str>;
        let segments: &[&str] = if count == INLINE_SEGMENTS && split.next().is_some() {
            spilled = pattern::path_segments(rest).collect();
            &spilled
        } else {
            inline.get(..count).unwrap_or_default()
        };
        // The scratch list is only busy if evaluate were re-entered: then a fresh one does.
        let mut fresh = Vec::new();
        let mut scratch = self.scratch.try_borrow_mut().ok();
        let candidates = scratch.as_deref_mut().unwrap_or(&mut fresh);
        candidates.clear();
        index.candidates(&input.target.host, &input.target.method, segments, candidates);
        // Bundle order decides which allow rule is reported; each (rule, route) once.
        candidates.sort_unstable();
        candidates.dedup();

        let mut enforced = Verdict::default();
        let mut with_dry_run = Verdict::default();
        let mut last_rule = None;
        // Rules share templates (every registry rule has the same few): each is matched once. A
        // request meets a few templates: a list searched in order costs less than hashing.
        let mut matches: Vec<(u32, Option<pattern::Captures<'_>>)> = Vec::new();
        let no_captures = pattern::Captures::new();
        for &Entry { rule: r, route, template } in candidates.iter() {
            if last_rule == Some(r) {
                continue; // another route of a rule that already matched
            }
            let Some(rule) = self.rules.get(r as usize) else { continue };
            // Candidates come in bundle order and each verdict keeps its first rule of an effect:
            // a rule whose slots are taken in both verdicts cannot change the decision.
            if with_dry_run.has(rule.effect) && (rule.mode == Mode::DryRun || enforced.has(rule.effect)) {
                continue;
            }
            let Some(path) = rule.routes().get(route as usize).map(|r| &r.path) else { continue };
            // The index walked the literal segments of the path and found the anchor segment:
            // for a prefix, or a prefix then `**/<segment>/**`, that is the match.
            let matched = if path.is_prefix() || path.is_prefix_then_segment() {
                Some(&no_captures)
            } else {
                let at = match matches.iter().position(|(t, _)| *t == template) {
                    Some(at) => at,
                    None => {
                        matches.push((template, path.matches(&input.target.path)));
                        matches.len() - 1
                    }
                };
                matches.get(at).and_then(|(_, captures)| captures.as_ref())
            };
            if rule.check_matched(route as usize, input, Found::Indexed, matched).is_err() {
                continue;
            }
            last_rule = Some(r);
            with_dry_run.note(r, rule);
            if rule.mode == Mode::Enforce {
                enforced.note(r, rule);
            }
            if enforced.deny.is_some() {
                // A deny decides both verdicts (`with_dry_run` noted it too, or an earlier one).
                break;
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

    /// A request check the policy defines: a header some condition reads must arrive at most once
    /// (which copy an upstream reads is unknown).
    #[cfg_attr(feature = "measure", inline(never))]
    pub fn repeated_condition_header(&self, headers: &[(&str, &str)]) -> Option<Reason> {
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
    fn has(&self, effect: Effect) -> bool {
        match effect {
            Effect::Allow => self.allow.is_some(),
            Effect::Deny => self.deny.is_some(),
        }
    }

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

/// Path segments kept on the stack while the index is searched (deeper paths take a vector).
const INLINE_SEGMENTS: usize = 16;

/// A (rule, route) pair in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    rule: u32,
    route: u32,
    /// The route's template, numbered so that equal templates have equal numbers.
    template: u32,
}

/// Host -> method -> path trie. What it hands out for a request is exactly the (rule, route)
/// pairs whose host name (port aside), method and literal leading path segments match it; the
/// evaluation relies on that and does not check them again.
///
/// Built once from every filing sorted, so each node's children arrive in order and are stored as
/// a sorted vector of exactly their size: a 10,000-rule bundle's index stays a few MiB (a hash map
/// per trie node took about twice the memory of the rules themselves).
#[derive(Debug, Default)]
struct Index {
    exact: HashMap<Box<str>, MethodIndex>,
    /// Keyed by the suffix with its leading dot (`.example.com`).
    suffix: HashMap<Box<str>, MethodIndex>,
    /// The lengths of `suffix`'s keys (255 for any longer), as a bit set: a request's host has
    /// several suffixes, and most have a length no key has, so need no lookup.
    suffix_lengths: [u64; 4],
    any: MethodIndex,
}

#[derive(Debug, Default)]
struct MethodIndex {
    /// Sorted by method.
    by_method: Vec<(Box<str>, PathTrie)>,
    any: PathTrie,
}

/// Rules filed under the literal leading segments of their path templates, and at each node
/// under one more literal segment of the template, when it has one (its anchor).
#[derive(Debug, Default)]
struct PathTrie {
    /// Routes with no literal segment after this node's.
    here: Box<[Entry]>,
    /// Routes with a literal segment at a fixed distance from the end of the path (after the
    /// last `**`): sorted by (distance, segment). `/v2/{repo:**}/manifests/{ref}` is filed
    /// under (2, `manifests`).
    from_end: Box<[(FromEnd, Entries)]>,
    /// The distinct distances of `from_end`.
    distances: Box<[usize]>,
    /// Routes with a literal segment somewhere after this node's (between two `**`): sorted by
    /// segment. `/**/x/**` is filed under `x`.
    inner: Box<[(Box<str>, Entries)]>,
    /// Sorted by segment.
    children: Box<[(Box<str>, PathTrie)]>,
}

/// The (rule, route) pairs under one key.
type Entries = Box<[Entry]>;

/// A literal segment and its distance from the end of the path.
type FromEnd = (usize, Box<str>);

/// Where one (rule, route) is filed: under a host, a method (`None`: any), a path prefix and an
/// anchor.
#[derive(Clone)]
struct Filing<'r> {
    host: &'r HostPattern,
    method: Option<&'r str>,
    prefix: Rc<[&'r str]>,
    anchor: Anchor<'r>,
    entry: Entry,
}

/// A literal segment after a template's literal prefix that every path it matches has.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Anchor<'r> {
    None,
    /// The segment this far from the end (1: the last segment).
    FromEnd(usize, &'r str),
    /// Some segment after the prefix.
    Inner(&'r str),
}

impl<'r> Anchor<'r> {
    /// Every anchor a template could be filed under: its literal segments after the prefix, at
    /// their distance from the end when that is fixed, else anywhere.
    fn options(template: &'r PathTemplate) -> Vec<Self> {
        let literal = |s: &'r Segment| match s {
            Segment::Literal(l) if !l.is_empty() => Some(l.as_str()),
            _ => None,
        };
        let segments = template.segments();
        let prefix = template.literal_prefix().count();
        let rest = segments.get(prefix..).unwrap_or_default();
        // After the last `**` the template has a fixed length: a literal there sits at a fixed
        // distance from the end of any path it matches.
        let last_many = rest.iter().rposition(|s| matches!(s, Segment::Many(_)));
        let (before, tail) = rest.split_at(last_many.map_or(0, |i| i + 1).min(rest.len()));
        let from_end =
            tail.iter().rev().enumerate().filter_map(|(k, s)| Some(Anchor::FromEnd(k + 1, literal(s)?)));
        from_end.chain(before.iter().filter_map(literal).map(Anchor::Inner)).collect()
    }

    /// The option the fewest routes share (`counts`: how many routes have each option), so that
    /// a literal common to many templates (`/v2/.../manifests/...`) does not gather them all.
    fn rarest(options: &[Self], counts: &HashMap<Self, usize>) -> Self {
        let cost = |a: &Self| (counts.get(a).copied().unwrap_or(0), matches!(a, Anchor::Inner(_)));
        options.iter().copied().min_by_key(cost).unwrap_or(Anchor::None)
    }
}

/// The host tables of the index.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HostTable {
    Exact,
    Suffix,
    Any,
}

/// Which host table a filing goes to, and under which key.
fn host_key(host: &HostPattern) -> (HostTable, &str) {
    match host {
        HostPattern::Exact(h) | HostPattern::ExactPort(h, _) => (HostTable::Exact, h),
        HostPattern::Suffix(s) | HostPattern::SuffixPort(s, _) => (HostTable::Suffix, s),
        HostPattern::Any => (HostTable::Any, ""),
    }
}

/// Finds `key` in a slice sorted by key.
fn find<'a, V>(sorted: &'a [(Box<str>, V)], key: &str) -> Option<&'a V> {
    let at = sorted.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
    sorted.get(at).map(|(_, v)| v)
}

/// The bit of a suffix length in [`Index::suffix_lengths`].
fn length_bit(len: usize) -> (usize, u64) {
    let len = len.min(255);
    (len / 64, 1u64 << (len % 64))
}

impl Index {
    fn build(mut filings: Vec<Filing<'_>>) -> Self {
        filings.sort_unstable_by(|a, b| {
            (host_key(a.host), a.method, &a.prefix).cmp(&(host_key(b.host), b.method, &b.prefix))
        });
        let mut index = Index::default();
        for group in filings.chunk_by(|a, b| host_key(a.host) == host_key(b.host)) {
            let Some(first) = group.first() else { continue };
            let methods = MethodIndex::build(group);
            match host_key(first.host) {
                (HostTable::Exact, h) => {
                    index.exact.insert(h.into(), methods);
                }
                (HostTable::Suffix, s) => {
                    let (word, bit) = length_bit(s.len());
                    if let Some(w) = index.suffix_lengths.get_mut(word) {
                        *w |= bit;
                    }
                    index.suffix.insert(s.into(), methods);
                }
                (HostTable::Any, _) => index.any = methods,
            }
        }
        index.exact.shrink_to_fit();
        index.suffix.shrink_to_fit();
        index
    }

    /// Adds to `out` the routes filed for a request (its path given as its segments).
    fn candidates(&self, host: &str, method: &str, segments: &[&str], out: &mut Vec<Entry>) {
        let mut visit = |m: &MethodIndex| {
            if let Some(trie) = find(&m.by_method, method) {
                trie.collect(segments, out);
            }
            m.any.collect(segments, out);
        };
        if let Some(m) = self.exact.get(host) {
            visit(m);
        }
        if !self.suffix.is_empty() {
            // `*.example.com` covers names below `example.com`, never `.example.com` itself.
            for (at, _) in host.match_indices('.').filter(|&(at, _)| at > 0) {
                let (word, bit) = length_bit(host.len() - at);
                if self.suffix_lengths.get(word).is_some_and(|w| w & bit == 0) {
                    continue;
                }
                if let Some(m) = host.get(at..).and_then(|suffix| self.suffix.get(suffix)) {
                    visit(m);
                }
            }
        }
        visit(&self.any);
    }
}

impl MethodIndex {
    /// From the filings of one host, sorted by method (any method first) and prefix.
    fn build(filings: &[Filing<'_>]) -> Self {
        let mut index = MethodIndex::default();
        for group in filings.chunk_by(|a, b| a.method == b.method) {
            let trie = PathTrie::build(group, 0);
            match group.first().and_then(|f| f.method) {
                Some(method) => index.by_method.push((method.into(), trie)),
                None => index.any = trie,
            }
        }
        index.by_method.shrink_to_fit();
        index
    }
}

impl PathTrie {
    /// From filings sorted by prefix whose prefixes agree on their first `depth` segments (a
    /// prefix sorts before its extensions, so the filings of this node come first).
    fn build(filings: &[Filing<'_>], depth: usize) -> Self {
        let here_count = filings.iter().take_while(|f| f.prefix.len() == depth).count();
        let (here, below) = filings.split_at(here_count);
        let children = below
            .chunk_by(|a, b| a.prefix.get(depth) == b.prefix.get(depth))
            .filter_map(|group| {
                let segment = group.first()?.prefix.get(depth)?;
                Some(((*segment).into(), PathTrie::build(group, depth + 1)))
            })
            .collect();
        let mut anchored: Vec<(Anchor<'_>, Entry)> = here.iter().map(|f| (f.anchor, f.entry)).collect();
        anchored.sort_unstable();
        let mut node = PathTrie { children, ..PathTrie::default() };
        let (mut plain, mut from_end, mut inner) = (Vec::new(), Vec::new(), Vec::new());
        for group in anchored.chunk_by(|a, b| a.0 == b.0) {
            let entries: Entries = group.iter().map(|(_, e)| *e).collect();
            match group.first().map(|g| g.0) {
                Some(Anchor::FromEnd(k, l)) => from_end.push(((k, l.into()), entries)),
                Some(Anchor::Inner(l)) => inner.push((l.into(), entries)),
                _ => plain.extend_from_slice(&entries),
            }
        }
        let mut distances: Vec<usize> = from_end.iter().map(|((k, _), _)| *k).collect();
        distances.dedup();
        node.here = plain.into();
        node.from_end = from_end.into();
        node.distances = distances.into();
        node.inner = inner.into();
        node
    }

    /// The routes filed for a path, given as its segments (without the leading `/`).
    fn collect(&self, segments: &[&str], out: &mut Vec<Entry>) {
        let mut node = self;
        node.collect_here(segments, 0, out);
        for (depth, segment) in segments.iter().enumerate() {
            match find(&node.children, segment) {
                Some(child) => {
                    node = child;
                    node.collect_here(segments, depth + 1, out);
                }
                None => break,
            }
        }
    }

    /// The routes of this node (at `depth` segments) whose anchor the path has.
    fn collect_here(&self, segments: &[&str], depth: usize, out: &mut Vec<Entry>) {
        out.extend_from_slice(&self.here);
        let n = segments.len();
        for &k in self.distances.iter() {
            // The anchor must lie after this node's segments, like the rest of the template.
            let Some(at) = n.checked_sub(k).filter(|&at| at >= depth) else { continue };
            let Some(segment) = segments.get(at) else { continue };
            let key = (k, *segment);
            let found = self.from_end.binary_search_by(|((d, l), _)| (*d, &**l).cmp(&key));
            if let Some((_, entries)) = found.ok().and_then(|i| self.from_end.get(i)) {
                out.extend_from_slice(entries);
            }
        }
        if !self.inner.is_empty() {
            for segment in segments.get(depth..).unwrap_or_default() {
                if let Some(entries) = find(&self.inner, segment) {
                    out.extend_from_slice(entries);
                }
            }
        }
    }
}
