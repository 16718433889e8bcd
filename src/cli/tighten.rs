//! `meshward tighten BUNDLE RECORDINGS...`: the least-privilege bundle that still allows every
//! recorded allowed request.
//!
//! Every record is decided by the bundle (through [`Bundle::decide`], the engine's own decision);
//! each allowed request is credited to the rule that allowed it, with what it used: subject, peer,
//! host, method, path, and for registry rules the actions and repositories. The proposal then
//! only ever removes: unused allow rules go (or get an `expires_at`), unused list entries go, and
//! wildcards are narrowed to what was used while keeping them readable (a handful of exact values,
//! or a deeper `prefix/**`, never a list of hundreds). Deny rules, dry-run rules, break-glass rules
//! and `--keep` rules are left as written. Before anything is printed, the proposal is proven: every
//! recording is decided again under both bundles, and no allowed request may turn into a deny (a
//! rule whose narrowing would break one is restored as written and the proof is run again).
//!
//! Memory is bounded: per rule and dimension at most [`MAX_DISTINCT`] distinct values are kept;
//! beyond that the dimension is left as written.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::bundle::{self, Bundle, Syntax};
use super::progress::Progress;
use super::records::{self, Input, ReadStats, Record, Source};
use super::{json_document, parse_time, rfc3339, Failure, Format};
use crate::policy::registry::{routes, RegistryAction, BASE};
use crate::policy::{Effect, Glob, HostPattern, Mode, PathConfig, PathTemplate, RuleConfig};

/// Distinct values remembered per rule and dimension; more and the dimension is not narrowed.
pub const MAX_DISTINCT: usize = 1000;

/// A wildcard used by at most this many distinct values becomes those values; more, and it
/// becomes a deeper `prefix/**` template (or stays), so the result stays readable.
pub const READABLE_FLOOR: usize = 4;

/// Proof rounds: each restores the rules whose narrowing broke a recorded request.
const MAX_ROUNDS: usize = 3;

/// Requests that broke the proof, listed at most.
const MAX_LISTED: usize = 10;

/// `meshward tighten` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example (the registry bundle and its corpus):
  meshward tighten policies/registry.json tests/corpus/registry.jsonl --out registry.tight.json
narrows pull-workloads from subjects spiffe://example.internal/** and repositories ** to
spiffe://example.internal/apps/web on prod/web and team/a/b (and the other rules likewise), keeps
break-glass-delete and the deny rule prod-is-immutable, and proves it: 12 allowed before, 12 still
allowed, 0 allow -> deny. CI gate: --fail-on-unused.

Deny, dry-run and break-glass rules are kept as written (narrowing a deny rule would broaden \
access). Records can be request records, the plugin's audit records or the JSON access log of \
`meshward render envoy`, mixed. Exit codes: 0 proposal proven; 1 the proof failed, or --fail-on-unused \
and the bundle has a grant no recorded request needs; 2 bad usage or unreadable input.")]
pub struct TightenArgs {
    /// The bundle to tighten (JSON; YAML when named .yaml or .yml). The proposal keeps its syntax.
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// Recordings (JSON lines; read twice: to propose, then to prove).
    #[arg(value_name = "RECORDINGS", required = true)]
    pub files: Vec<PathBuf>,
    /// Write the proposed bundle here (`-`: standard output, the report then goes to stderr).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Only records at or after this time (unix seconds or RFC 3339) count.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Leave this rule as written (rare but needed access); repeatable.
    #[arg(long = "keep", value_name = "RULE")]
    pub keep: Vec<String>,
    /// Give unused rules this `expires_at` (unix seconds or RFC 3339) instead of removing them.
    #[arg(long, value_name = "TIME")]
    pub expire_unused: Option<String>,
    /// Exit 1 when the bundle has a grant no recorded request needs: an unused rule or an unused
    /// entry of a rule (a subject, host, method, path, action or repository). A CI gate against
    /// pull requests that add access nothing uses; narrowable wildcards alone do not fail it.
    #[arg(long)]
    pub fail_on_unused: bool,
    /// Skip and count lines that are not valid records, instead of stopping at the first one.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Never show the progress bar (it is shown only on a terminal, for large inputs).
    #[arg(long)]
    pub no_progress: bool,
    /// `text` or `json`.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// Distinct values seen, up to [`MAX_DISTINCT`].
#[derive(Debug, Default)]
struct Seen {
    values: BTreeSet<String>,
    overflow: bool,
}

impl Seen {
    fn add(&mut self, value: &str) {
        if self.values.contains(value) {
            return;
        }
        if self.values.len() < MAX_DISTINCT {
            self.values.insert(value.to_owned());
        } else {
            self.overflow = true;
        }
    }
}

/// What one rule's allowed requests used.
#[derive(Debug, Default)]
struct Usage {
    requests: u64,
    subjects: Seen,
    peers: Seen,
    hosts: Seen,
    methods: Seen,
    paths: Seen,
    /// Registry actions used (at most four).
    actions: Vec<RegistryAction>,
    repositories: Seen,
}

/// The registry routes, compiled once.
struct Routes(Vec<(RegistryAction, &'static [&'static str], PathTemplate)>);

impl Routes {
    fn new() -> Self {
        let mut all = Vec::new();
        for action in
            [RegistryAction::Pull, RegistryAction::Push, RegistryAction::Delete, RegistryAction::Promote]
        {
            for (methods, template) in routes(action) {
                if let Ok(t) = PathTemplate::template(template) {
                    all.push((action, *methods, t));
                }
            }
        }
        Routes(all)
    }

    /// The actions of `granted` that serve this request, and the repository it names.
    fn used(
        &self,
        granted: &[RegistryAction],
        method: &str,
        path: &str,
    ) -> (Vec<RegistryAction>, Option<String>) {
        let mut actions = Vec::new();
        let mut repository = None;
        for (action, methods, template) in &self.0 {
            if !granted.contains(action) || !methods.contains(&method) {
                continue;
            }
            if let Some(captures) = template.matches(path) {
                if !actions.contains(action) {
                    actions.push(*action);
                }
                if let Some((_, repo)) = captures.iter().find(|(name, _)| *name == "repo") {
                    repository = Some((*repo).to_owned());
                }
            }
        }
        (actions, repository)
    }
}

/// Credits an allowed request to its rule.
fn credit(usage: &mut Usage, rule: &RuleConfig, replayed: &records::Replayed, routes: &Routes) {
    usage.requests += 1;
    if let Some(identity) = &replayed.identity {
        usage.subjects.add(&identity.subject);
    }
    if let Some(peer) = &replayed.peer {
        usage.peers.add(peer);
    }
    let Some(target) = &replayed.target else { return };
    usage.hosts.add(&target.host);
    usage.methods.add(&target.method);
    usage.paths.add(&target.path);
    if let Some(registry) = &rule.registry {
        if target.path != BASE {
            let (actions, repository) = routes.used(&registry.actions, &target.method, &target.path);
            for a in actions {
                if !usage.actions.contains(&a) {
                    usage.actions.push(a);
                }
            }
            if let Some(repo) = repository {
                usage.repositories.add(&repo);
            }
        }
    }
}

/// `a/b/c` -> `a/b`: everything before the last `/`.
fn parent(value: &str) -> &str {
    value.rfind('/').and_then(|at| value.get(..at)).unwrap_or("")
}

/// The longest common run of whole `/`-segments of the values' parents.
fn common_parent<'a>(values: impl Iterator<Item = &'a String>) -> String {
    let mut common: Option<Vec<&str>> = None;
    for v in values {
        let segments: Vec<&str> = parent(v).split('/').collect();
        common = Some(match common {
            None => segments,
            Some(c) => c.iter().zip(&segments).take_while(|(a, b)| a == b).map(|(a, _)| *a).collect(),
        });
    }
    common.map(|c| c.join("/")).unwrap_or_default()
}

/// How a list's entries match the values used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entries {
    /// Subject, peer and repository globs.
    Globs,
    /// Host patterns (`name`, `*.domain`, `*`).
    Hosts,
}

/// Whether a used value falls under a written entry.
type Matcher = Box<dyn Fn(&str) -> bool>;

/// A matcher for one written entry; `None` when it is kept as written (a host pattern with a
/// port, matched against a port records may not carry, or an entry that does not compile).
fn matcher(kind: Entries, written: &str) -> Option<Matcher> {
    match kind {
        Entries::Globs => Glob::new(written).ok().map(|g| Box::new(move |v: &str| g.matches(v)) as _),
        Entries::Hosts if written.contains(':') => None,
        Entries::Hosts => {
            HostPattern::parse(written).ok().map(|p| Box::new(move |v: &str| p.matches(v, None)) as _)
        }
    }
}

/// Narrows a list to what was used: an entry nothing matched goes; a wildcard matched by at most
/// [`READABLE_FLOOR`] values becomes them; a `prefix**` glob matched by more becomes a deeper
/// `parent/**` when all of them share one. Only ever a subset of what was written.
fn narrow_entries(kind: Entries, entries: &[String], seen: &Seen, unused: &mut Vec<String>) -> Vec<String> {
    if seen.overflow {
        return entries.to_vec();
    }
    let mut out: Vec<String> = Vec::new();
    let push = |v: String, out: &mut Vec<String>| {
        if !out.contains(&v) {
            out.push(v);
        }
    };
    for written in entries {
        let Some(matches) = matcher(kind, written) else {
            push(written.clone(), &mut out);
            continue;
        };
        let matched: Vec<&String> = seen.values.iter().filter(|v| matches(v)).collect();
        if matched.is_empty() {
            unused.push(written.clone());
            continue;
        }
        if !written.contains('*') {
            push(written.clone(), &mut out);
        } else if matched.len() <= READABLE_FLOOR {
            for v in matched {
                push(v.clone(), &mut out);
            }
        } else {
            let prefix = Glob::new(written).map(|g| g.literal_prefix()).unwrap_or_default();
            let is_prefix_any = kind == Entries::Globs && written.strip_prefix(prefix.as_str()) == Some("**");
            let deeper = common_parent(matched.iter().copied());
            let candidate = format!("{deeper}/**");
            if is_prefix_any && candidate.starts_with(&prefix) && candidate.len() > written.len() {
                push(candidate, &mut out);
            } else {
                push(written.clone(), &mut out);
            }
        }
    }
    out
}

fn narrow_globs(globs: &[String], seen: &Seen, unused: &mut Vec<String>) -> Vec<String> {
    narrow_entries(Entries::Globs, globs, seen, unused)
}

fn narrow_hosts(hosts: &[String], seen: &Seen, unused: &mut Vec<String>) -> Vec<String> {
    narrow_entries(Entries::Hosts, hosts, seen, unused)
}

/// Paths: unused entries go; a prefix used by a few paths becomes them, by more a deeper prefix.
/// A used template stays: its captures stand for data (an order id), and conditions may read them.
fn narrow_paths(paths: &[PathConfig], seen: &Seen, unused: &mut Vec<String>) -> Vec<PathConfig> {
    if seen.overflow {
        return paths.to_vec();
    }
    let mut out: Vec<PathConfig> = Vec::new();
    for written in paths {
        let compiled = match written {
            PathConfig::Exact(p) => PathTemplate::exact(p),
            PathConfig::Prefix(p) => PathTemplate::prefix(p),
            PathConfig::Template(p) => PathTemplate::template(p),
        };
        let Ok(template) = compiled else {
            out.push(written.clone());
            continue;
        };
        let matched: Vec<&String> = seen.values.iter().filter(|p| template.matches(p).is_some()).collect();
        if matched.is_empty() {
            unused.push(path_text(written));
            continue;
        }
        let mut add = |p: PathConfig| {
            if !out.contains(&p) {
                out.push(p);
            }
        };
        match written {
            PathConfig::Exact(_) | PathConfig::Template(_) => add(written.clone()),
            _ if matched.len() <= READABLE_FLOOR => {
                for p in matched {
                    add(PathConfig::Exact(p.clone()));
                }
            }
            PathConfig::Prefix(prefix) => {
                let deeper = common_parent(matched.iter().copied());
                let base = prefix.trim_end_matches('/');
                if deeper.len() > base.len() && deeper.starts_with(base) {
                    add(PathConfig::Prefix(deeper));
                } else {
                    add(written.clone());
                }
            }
        }
    }
    out
}

/// What happens to a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// Left as written, and why.
    Kept(&'static str),
    /// No recorded request used it: removed.
    Removed,
    /// No recorded request used it: it now expires.
    Expires(u64),
    /// Used: narrowed to what was used (the changes), or unchanged when nothing narrows.
    Narrowed(Narrowing),
    /// Its narrowing broke a recorded request in the proof: restored as written.
    Restored,
}

/// One rule in the report.
struct RuleReport {
    id: String,
    owner: String,
    requests: u64,
    used: Vec<String>,
    fate: Fate,
}

/// A rule's grants, for before/after: (entries of its lists, of which wildcards).
fn grants(rule: &RuleConfig) -> (usize, usize) {
    let mut entries: Vec<String> = Vec::new();
    entries.extend(rule.subjects.iter().cloned());
    entries.extend(rule.peers.iter().cloned());
    entries.extend(rule.hosts.iter().cloned());
    entries.extend(rule.methods.iter().cloned());
    entries.extend(rule.paths.iter().map(|p| match p {
        PathConfig::Exact(p) => p.clone(),
        other => format!("*{}", path_text(other)),
    }));
    if let Some(r) = &rule.registry {
        entries.extend(r.actions.iter().map(action_name));
        entries.extend(r.repositories.iter().cloned());
    }
    (entries.len(), entries.iter().filter(|e| e.contains('*')).count())
}

fn sum_grants<'a>(rules: impl Iterator<Item = &'a RuleConfig>) -> (usize, usize) {
    rules.map(grants).fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

fn summary(seen: &Seen, what: &str) -> Option<String> {
    if seen.values.is_empty() {
        return None;
    }
    let shown: Vec<&str> = seen.values.iter().take(READABLE_FLOOR).map(String::as_str).collect();
    let more = seen.values.len().saturating_sub(shown.len());
    let more = match (more, seen.overflow) {
        (_, true) => format!(" and more than {} others", MAX_DISTINCT - shown.len()),
        (0, false) => String::new(),
        (n, false) => format!(" and {n} more"),
    };
    Some(format!("{what} {}{more}", shown.join(", ")))
}

fn path_text(p: &PathConfig) -> String {
    match p {
        PathConfig::Exact(p) => p.clone(),
        PathConfig::Prefix(p) => format!("{}/**", p.trim_end_matches('/')),
        PathConfig::Template(p) => p.clone(),
    }
}

/// `pull`, `push`, `delete`, `promote`: an action as bundles spell it.
pub(crate) fn action_name(a: &RegistryAction) -> String {
    serde_json::to_value(a).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// What narrowing one used rule changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Narrowing {
    /// `what: old -> new`.
    changes: Vec<String>,
    /// Entries no recorded request used (`subject spiffe://...`).
    unused: Vec<String>,
}

/// Narrows one used rule.
fn narrow(rule: &mut RuleConfig, usage: &Usage) -> Narrowing {
    let mut changes = Vec::new();
    let mut unused = Vec::new();
    let mut gone = Vec::new();
    let mut note = |what: &str, old: Vec<String>, new: Vec<String>, gone: &mut Vec<String>| {
        // `subjects` -> `subject`, `repositories` -> `repository`.
        let one = what
            .strip_suffix("ies")
            .map_or_else(|| what.trim_end_matches('s').to_owned(), |w| format!("{w}y"));
        let dropped: Vec<String> = gone.drain(..).map(|e| format!("{one} {e}")).collect();
        // Nothing attributable (e.g. only `/v2/` version checks for a registry rule): leave the
        // list as written rather than empty it, and call none of it unused.
        if old != new && !new.is_empty() {
            unused.extend(dropped);
            changes.push(format!("{what}: {} -> {}", old.join(", "), new.join(", ")));
            Some(new)
        } else {
            None
        }
    };
    let new = narrow_globs(&rule.subjects, &usage.subjects, &mut gone);
    if let Some(new) = note("subjects", rule.subjects.clone(), new, &mut gone) {
        rule.subjects = new;
    }
    let new = narrow_globs(&rule.peers, &usage.peers, &mut gone);
    if let Some(new) = note("peers", rule.peers.clone(), new, &mut gone) {
        rule.peers = new;
    }
    let new = narrow_hosts(&rule.hosts, &usage.hosts, &mut gone);
    if let Some(new) = note("hosts", rule.hosts.clone(), new, &mut gone) {
        rule.hosts = new;
    }
    if !rule.methods.is_empty() && !usage.methods.overflow {
        let new: Vec<String> = if rule.methods.iter().any(|m| m == "*") {
            usage.methods.values.iter().cloned().collect()
        } else {
            rule.methods.iter().filter(|m| usage.methods.values.contains(*m)).cloned().collect()
        };
        gone.extend(rule.methods.iter().filter(|m| *m != "*" && !new.contains(m)).cloned());
        if let Some(new) = note("methods", rule.methods.clone(), new, &mut gone) {
            rule.methods = new;
        }
    }
    if !rule.paths.is_empty() {
        let new = narrow_paths(&rule.paths, &usage.paths, &mut gone);
        let text = |ps: &[PathConfig]| ps.iter().map(path_text).collect::<Vec<_>>();
        if note("paths", text(&rule.paths), text(&new), &mut gone).is_some() {
            rule.paths = new;
        }
    }
    if let Some(registry) = &mut rule.registry {
        let used: Vec<RegistryAction> =
            registry.actions.iter().filter(|a| usage.actions.contains(*a)).copied().collect();
        let names = |xs: &[RegistryAction]| xs.iter().map(action_name).collect::<Vec<_>>();
        gone.extend(registry.actions.iter().filter(|a| !used.contains(*a)).map(action_name));
        if note("actions", names(&registry.actions), names(&used), &mut gone).is_some() {
            registry.actions = used;
        }
        let new = narrow_globs(&registry.repositories, &usage.repositories, &mut gone);
        if let Some(new) = note("repositories", registry.repositories.clone(), new, &mut gone) {
            registry.repositories = new;
        }
    }
    Narrowing { changes, unused }
}

/// A recorded request the proposal would deny.
struct Broken {
    source: Source,
    request: String,
    rule: String,
}

/// The proof: every recording decided under both bundles.
#[derive(Default)]
struct Proof {
    records: u64,
    allowed_before: u64,
    still_allowed: u64,
    allow_to_deny: u64,
    deny_to_allow: u64,
    broken: Vec<Broken>,
    broken_rules: BTreeSet<String>,
}

fn in_window(record: &Record, since: Option<u64>) -> Result<bool, String> {
    Ok(since.is_none_or(|s| record.time().is_ok_and(|t| t >= s)))
}

fn open(files: &[PathBuf]) -> Result<Vec<Input>, Failure> {
    if files.iter().any(|f| f.as_os_str() == "-") {
        return Err(Failure::usage(
            "tighten reads its recordings twice (to propose, then to prove): give files, not `-`",
        ));
    }
    Input::open_all(files)
}

fn prove(
    args: &TightenArgs,
    old: &mut Bundle,
    new: &mut Bundle,
    since: Option<u64>,
) -> Result<Proof, Failure> {
    let mut proof = Proof::default();
    let inputs = open(&args.files)?;
    let total = inputs.iter().map(|i| i.size).sum::<Option<u64>>();
    let progress = Progress::new(total, !args.no_progress, false);
    records::for_each_record(inputs, args.skip_invalid, &progress, |source, record| {
        if !in_window(&record, since).map_err(Failure::usage)? {
            return Ok(());
        }
        proof.records += 1;
        let before = records::decide(old, source, &record)?;
        let after = records::decide(new, source, &record)?;
        match (before.decision.allowed, after.decision.allowed) {
            (true, true) => {
                proof.allowed_before += 1;
                proof.still_allowed += 1;
            }
            (true, false) => {
                proof.allowed_before += 1;
                proof.allow_to_deny += 1;
                let rule = before.decision.rule_label().to_owned();
                proof.broken_rules.insert(rule.clone());
                if proof.broken.len() < MAX_LISTED {
                    proof.broken.push(Broken {
                        source: source.clone(),
                        request: before.request_line(&record),
                        rule,
                    });
                }
            }
            (false, true) => proof.deny_to_allow += 1,
            (false, false) => {}
        }
        Ok(())
    })?;
    Ok(proof)
}

/// The proposed document: the input's rules replaced by the proposal's, everything else as
/// written. A YAML value keeps the order of keys, so the proposal reads like its input.
fn proposed_document(
    original: &serde_norway::Value,
    rules: &[(usize, Option<RuleConfig>)],
) -> Result<serde_norway::Value, Failure> {
    use serde_norway::Value as Yaml;
    let mut doc = original.clone();
    let Some(Yaml::Sequence(written)) = doc.get_mut("rules") else {
        return Err(Failure::usage("the bundle has no rules array"));
    };
    let mut out = Vec::new();
    for (index, rule) in rules {
        let Some(rule) = rule else { continue };
        let mut value = written.get(*index).cloned().unwrap_or(Yaml::Null);
        // Through JSON: YAML would write enums (`{"exact": ...}`) as tags (`!exact`).
        let proposed = serde_json::to_value(rule)
            .map_err(|e| e.to_string())
            .and_then(|v| serde_norway::to_value(v).map_err(|e| e.to_string()))
            .map_err(Failure::usage)?;
        // Keep the rule's own fields and their order; replace only what the proposal changes.
        if let (Yaml::Mapping(map), Yaml::Mapping(new)) = (&mut value, &proposed) {
            for key in ["subjects", "peers", "hosts", "methods", "paths", "registry", "expires_at"] {
                match new.get(key) {
                    Some(v) => {
                        map.insert(Yaml::String(key.to_owned()), v.clone());
                    }
                    None => {
                        map.remove(key);
                    }
                }
            }
        }
        out.push(value);
    }
    *written = out;
    Ok(doc)
}

/// Runs `meshward tighten`.
pub fn run(args: &TightenArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let mut old = Bundle::load(&args.bundle)?;
    let syntax = Syntax::of(&args.bundle);
    let text = bundle::read_text(&args.bundle)?;
    // JSON is read as YAML too: one value type that keeps the order of keys.
    let original: serde_norway::Value = serde_norway::from_str(&text)
        .map_err(|e| Failure::usage(format!("{}: {e}", args.bundle.display())))?;
    let since = args
        .since
        .as_deref()
        .map(parse_time)
        .transpose()
        .map_err(|e| Failure::usage(format!("--since: {e}")))?;
    let expire = args
        .expire_unused
        .as_deref()
        .map(parse_time)
        .transpose()
        .map_err(|e| Failure::usage(format!("--expire-unused: {e}")))?;
    for id in &args.keep {
        if !old.config.rules.iter().any(|r| &r.id == id) {
            return Err(Failure::usage(format!("--keep {id}: no such rule in {}", args.bundle.display())));
        }
    }

    // Pass 1: what each rule's allowed requests used.
    let routes = Routes::new();
    let mut usage: BTreeMap<String, Usage> = BTreeMap::new();
    let inputs = open(&args.files)?;
    let total = inputs.iter().map(|i| i.size).sum::<Option<u64>>();
    let progress = Progress::new(total, !args.no_progress, false);
    let mut in_window_records = 0u64;
    let stats: ReadStats =
        records::for_each_record(inputs, args.skip_invalid, &progress, |source, record| {
            if !in_window(&record, since).map_err(Failure::usage)? {
                return Ok(());
            }
            in_window_records += 1;
            let replayed = records::decide(&mut old, source, &record)?;
            if !replayed.decision.allowed {
                return Ok(());
            }
            let Some(id) = replayed.decision.rule_id.as_deref() else { return Ok(()) };
            if let Some(rule) = old.config.rules.iter().find(|r| r.id == id) {
                credit(usage.entry(id.to_owned()).or_default(), rule, &replayed, &routes);
            }
            Ok(())
        })?;
    if stats.records == 0 {
        return Err(Failure::usage("no request or audit records in the input"));
    }

    // The proposal, proven; rules whose narrowing broke a recorded request are restored.
    let mut restored: BTreeSet<String> = BTreeSet::new();
    let mut round = 0;
    let (reports, proposal, proof) = loop {
        round += 1;
        let mut reports = Vec::new();
        let mut rules = Vec::new();
        for (index, rule) in old.config.rules.iter().enumerate() {
            let used = usage.get(&rule.id);
            let requests = used.map_or(0, |u| u.requests);
            let fate = if rule.effect == Effect::Deny {
                Fate::Kept("deny rule: narrowing it would broaden access")
            } else if rule.mode == Some(Mode::DryRun) {
                Fate::Kept("dry-run rule: it decides nothing")
            } else if rule.break_glass {
                Fate::Kept("break-glass: kept by default (rare but needed)")
            } else if args.keep.contains(&rule.id) {
                Fate::Kept("--keep")
            } else if restored.contains(&rule.id) {
                Fate::Restored
            } else if requests == 0 {
                expire.map_or(Fate::Removed, Fate::Expires)
            } else {
                Fate::Narrowed(Narrowing::default())
            };
            let mut proposed = rule.clone();
            let fate = match fate {
                Fate::Narrowed(_) => {
                    Fate::Narrowed(used.map(|u| narrow(&mut proposed, u)).unwrap_or_default())
                }
                Fate::Expires(at) => {
                    // Never later than it already expires.
                    let current = rule.expires_at.as_ref().and_then(|t| t.to_unix().ok());
                    let at = current.map_or(at, |c| c.min(at));
                    proposed.expires_at = Some(crate::policy::Timestamp::Rfc3339(rfc3339(at)));
                    Fate::Expires(at)
                }
                other => other,
            };
            let keep = fate != Fate::Removed;
            let mut used_text = Vec::new();
            if let Some(u) = used {
                used_text.extend(summary(&u.subjects, "subjects"));
                used_text.extend(summary(&u.peers, "peers"));
                used_text.extend(summary(&u.hosts, "hosts"));
                if rule.registry.is_some() {
                    if !u.actions.is_empty() {
                        used_text.push(format!(
                            "actions {}",
                            u.actions.iter().map(action_name).collect::<Vec<_>>().join(", ")
                        ));
                    }
                    used_text.extend(summary(&u.repositories, "repositories"));
                } else {
                    used_text.extend(summary(&u.methods, "methods"));
                    used_text.extend(summary(&u.paths, "paths"));
                }
            }
            reports.push(RuleReport {
                id: rule.id.clone(),
                owner: rule.owner.clone(),
                requests,
                used: used_text,
                fate,
            });
            rules.push((index, keep.then_some(proposed)));
        }
        let document = proposed_document(&original, &rules)?;
        let config = serde_json::to_value(&document)
            .and_then(serde_json::from_value)
            .map_err(|e| Failure::usage(format!("the proposal is not a valid bundle: {e}")))?;
        let mut new = Bundle::compile(&args.bundle, config)
            .map_err(|e| Failure::usage(format!("the proposal does not compile: {e}")))?;
        let mut fresh_old = Bundle::load(&args.bundle)?;
        let proof = prove(args, &mut fresh_old, &mut new, since)?;
        // A pipe reads empty the second time; a growing log reads longer: either way the proof
        // would not be about the records the proposal came from.
        if proof.records != in_window_records {
            return Err(Failure::usage(format!(
                "the recordings changed between reads ({in_window_records} records, then {}): give regular files",
                proof.records
            )));
        }
        let newly: Vec<String> = proof.broken_rules.difference(&restored).cloned().collect();
        if proof.allow_to_deny == 0 || newly.is_empty() || round >= MAX_ROUNDS {
            break (reports, document, proof);
        }
        restored.extend(newly);
    };

    let before_rules = old.config.rules.len();
    let before_grants = sum_grants(old.config.rules.iter());
    let after: Vec<RuleConfig> = proposal
        .get("rules")
        .and_then(|r| serde_json::to_value(r).ok())
        .and_then(|r| serde_json::from_value(r).ok())
        .unwrap_or_default();
    let after_grants = sum_grants(after.iter());
    // Grants nothing recorded needs: unused rules and unused entries (narrowed wildcards are not).
    let unused_grants: usize = reports
        .iter()
        .map(|r| match &r.fate {
            Fate::Removed | Fate::Expires(_) => 1,
            Fate::Narrowed(n) => n.unused.len(),
            _ => 0,
        })
        .sum();

    let rendered = match syntax {
        Syntax::Json => serde_json::to_string_pretty(&proposal).map(|s| s + "\n").map_err(|e| e.to_string()),
        Syntax::Yaml => serde_norway::to_string(&proposal).map_err(|e| e.to_string()),
    }
    .map_err(|e| Failure::usage(format!("cannot write the proposal: {e}")))?;
    let proven = proof.allow_to_deny == 0 && proof.deny_to_allow == 0;
    let mut written = None;
    let mut stdout_bundle = false;
    if proven {
        match &args.out {
            Some(p) if p.as_os_str() == "-" => stdout_bundle = true,
            Some(p) => {
                std::fs::write(p, &rendered)
                    .map_err(|e| Failure::usage(format!("cannot write {}: {e}", p.display())))?;
                written = Some(p.display().to_string());
            }
            None => {}
        }
    }

    let mut stderr = std::io::stderr();
    let report_out: &mut dyn Write = if stdout_bundle { &mut stderr } else { out };
    match args.format {
        Format::Text => report_text(
            report_out,
            &args.bundle,
            &stats,
            in_window_records,
            since,
            &reports,
            (before_rules, before_grants, after.len(), after_grants),
            &proof,
            written.as_deref(),
        )?,
        Format::Json => {
            let rules: Vec<Value> = reports
                .iter()
                .map(|r| {
                    let (fate, detail) = match &r.fate {
                        Fate::Kept(why) => ("kept", json!(why)),
                        Fate::Removed => ("removed", Value::Null),
                        Fate::Expires(at) => ("expires", json!(rfc3339(*at))),
                        Fate::Narrowed(n) if n.changes.is_empty() => ("unchanged", Value::Null),
                        Fate::Narrowed(n) => ("narrowed", json!({"changes": n.changes, "unused": n.unused})),
                        Fate::Restored => ("restored", json!("its narrowing denied a recorded request")),
                    };
                    json!({"rule": r.id, "owner": r.owner, "requests": r.requests, "used": r.used, "fate": fate, "detail": detail})
                })
                .collect();
            json_document(
                report_out,
                &json!({
                    "type": "tighten",
                    "bundle": args.bundle.display().to_string(),
                    "records": in_window_records,
                    "since": since.map(rfc3339),
                    "before": {"rules": before_rules, "entries": before_grants.0, "wildcards": before_grants.1},
                    "after": {"rules": after.len(), "entries": after_grants.0, "wildcards": after_grants.1},
                    "unused_grants": unused_grants,
                    "rules": rules,
                    "proof": {
                        "records": proof.records,
                        "allowed_before": proof.allowed_before,
                        "still_allowed": proof.still_allowed,
                        "allow_to_deny": proof.allow_to_deny,
                        "deny_to_allow": proof.deny_to_allow,
                        "proven": proven,
                    },
                    "not_rederived": {"access_log_without_decision": stats.access_log_without_decision, "istio_text_lines": stats.istio_text_lines},
                    "written": written,
                }),
            )?;
        }
    }
    report_out.flush()?;
    if stdout_bundle {
        out.write_all(rendered.as_bytes())?;
    }
    if !proven {
        return Err(Failure::failed(format!(
            "the proposal failed its proof: {} allowed requests would be denied, {} denied would be allowed",
            proof.allow_to_deny, proof.deny_to_allow
        )));
    }
    if args.fail_on_unused && unused_grants > 0 {
        return Err(Failure::failed(format!(
            "{} has {unused_grants} grants no recorded request needs (unused rules or entries; see the report)",
            args.bundle.display()
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn report_text(
    out: &mut dyn Write,
    path: &Path,
    stats: &ReadStats,
    records: u64,
    since: Option<u64>,
    reports: &[RuleReport],
    (before_rules, before, after_rules, after): (usize, (usize, usize), usize, (usize, usize)),
    proof: &Proof,
    written: Option<&str>,
) -> Result<(), Failure> {
    let window = since.map_or("all records".to_string(), |s| format!("since {}", rfc3339(s)));
    writeln!(out, "tighten {} over {records} records ({window})", path.display())?;
    for note in stats.underivable_notes() {
        writeln!(out, "{note}")?;
    }
    if stats.access_log_without_decision + stats.istio_text_lines > 0 {
        writeln!(
            out,
            "CAUTION: the proposal does not account for those requests; grants only they used would be dropped \
             (audit every request: settings.audit_allow_sample_rate 1.0 and audit_filter_state)"
        )?;
    }
    for r in reports {
        writeln!(out)?;
        let owner = if r.owner.is_empty() { String::new() } else { format!(" ({})", r.owner) };
        let fate = match &r.fate {
            Fate::Kept(why) => format!("kept: {why}"),
            Fate::Removed => "REMOVED: no recorded request used it".into(),
            Fate::Expires(at) => format!("EXPIRES {}: no recorded request used it", rfc3339(*at)),
            Fate::Narrowed(n) if n.changes.is_empty() => "unchanged: everything it grants was used".into(),
            Fate::Narrowed(_) => "NARROWED".into(),
            Fate::Restored => {
                "kept: narrowing it denied a recorded request (claims or headers not in the record)".into()
            }
        };
        writeln!(out, "rule {}{owner}: {} allowed requests; {fate}", r.id, r.requests)?;
        if !r.used.is_empty() {
            writeln!(out, "  used: {}", r.used.join("; "))?;
        }
        if let Fate::Narrowed(n) = &r.fate {
            if !n.unused.is_empty() {
                writeln!(out, "  UNUSED: {}", n.unused.join("; "))?;
            }
            for c in &n.changes {
                writeln!(out, "  {c}")?;
            }
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "before: {before_rules} rules, {} entries ({} wildcards); after: {after_rules} rules, {} entries ({} wildcards)",
        before.0, before.1, after.0, after.1
    )?;
    writeln!(
        out,
        "proof: replayed {} records under both bundles: {} allowed before, {} still allowed, {} allow -> deny, {} deny -> allow",
        proof.records, proof.allowed_before, proof.still_allowed, proof.allow_to_deny, proof.deny_to_allow
    )?;
    for b in &proof.broken {
        writeln!(out, "  {}  {}  (was allowed by {})", b.source, b.request, b.rule)?;
    }
    match written {
        Some(p) => writeln!(out, "proposal written to {p}")?,
        None => writeln!(out, "(--out FILE writes the proposal)")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(values: &[&str]) -> Seen {
        let mut s = Seen::default();
        for v in values {
            s.add(v);
        }
        s
    }

    #[test]
    fn a_wildcard_used_by_few_values_becomes_them_and_by_many_a_deeper_template() {
        let globs = vec!["spiffe://d/**".to_string(), "spiffe://other/*".to_string()];
        assert_eq!(
            narrow_globs(&globs, &seen(&["spiffe://d/apps/web"]), &mut Vec::new()),
            vec!["spiffe://d/apps/web"]
        );
        let many = seen(&[
            "spiffe://d/apps/a",
            "spiffe://d/apps/b",
            "spiffe://d/apps/c",
            "spiffe://d/apps/d",
            "spiffe://d/apps/e",
        ]);
        assert_eq!(narrow_globs(&globs, &many, &mut Vec::new()), vec!["spiffe://d/apps/**"]);
        // A single-segment wildcard is not a prefix template: it stays.
        let one = vec!["spiffe://d/*".to_string()];
        let flat = seen(&["spiffe://d/a", "spiffe://d/b", "spiffe://d/c", "spiffe://d/e", "spiffe://d/f"]);
        assert_eq!(narrow_globs(&one, &flat, &mut Vec::new()), one);
    }

    #[test]
    fn nothing_is_narrowed_past_what_was_remembered() {
        let mut s = Seen::default();
        for i in 0..=MAX_DISTINCT {
            s.add(&format!("spiffe://d/{i}"));
        }
        assert!(s.overflow);
        let globs = vec!["spiffe://d/**".to_string()];
        assert_eq!(narrow_globs(&globs, &s, &mut Vec::new()), globs);
    }

    #[test]
    fn prefixes_narrow_to_exact_paths_or_a_deeper_prefix() {
        let paths = vec![PathConfig::Prefix("/api".into()), PathConfig::Exact("/health".into())];
        assert_eq!(
            narrow_paths(&paths, &seen(&["/api/v1/x"]), &mut Vec::new()),
            vec![PathConfig::Exact("/api/v1/x".into())]
        );
        let mut unused = Vec::new();
        let many = seen(&["/api/v1/a", "/api/v1/b", "/api/v1/c", "/api/v1/d/e", "/api/v1/f"]);
        assert_eq!(narrow_paths(&paths, &many, &mut unused), vec![PathConfig::Prefix("/api/v1".into())]);
        assert_eq!(unused, vec!["/health".to_string()]);
    }
}
