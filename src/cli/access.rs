//! `meshward access BUNDLE`: the effective access. For each identity pattern the rules name (and
//! each identity seen in recordings), which rules apply: hosts, methods, paths, registry actions,
//! conditions, and until when.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;

use serde_json::{json, Value};

use super::bundle::Bundle;
use super::lint::{globs_cover, names_cover};
use super::progress::Progress;
use super::records::{self, Input, Record};
use super::{html, json_document, now, parse_time, rfc3339, Failure};
use crate::policy::{ConditionConfig, Effect, Glob, Mode, PathConfig, RuleConfig};

/// Distinct identities taken from recordings, at most.
const MAX_IDENTITIES: usize = 10_000;

/// `meshward access` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "Deny rules override allow rules, and anything no rule allows is denied. Identity \
patterns come from the rules' subjects and peers; --recordings adds the identities seen in request or audit \
records, and --subject asks about one identity.")]
pub struct AccessArgs {
    /// The bundle (JSON; YAML when named .yaml or .yml).
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// Record files (request or audit records) whose identities to list too; repeatable.
    #[arg(long = "recordings", value_name = "FILE", num_args = 1..)]
    pub recordings: Vec<PathBuf>,
    /// Show only what this subject (e.g. a SPIFFE ID) can reach.
    #[arg(long)]
    pub subject: Option<String>,
    /// With --subject: the issuer (name in the bundle) that vouches for it.
    #[arg(long, requires = "subject")]
    pub issuer: Option<String>,
    /// Judge time-bound rules as of this time (unix seconds or RFC 3339; default now).
    #[arg(long, value_name = "TIME")]
    pub now: Option<String>,
    /// `text`, `json`, or `html`: one self-contained page (identities down, hosts and actions
    /// across; with --recordings, grants no recorded request used are marked).
    #[arg(long, value_enum, default_value_t)]
    pub format: AccessFormat,
}

/// How `access` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessFormat {
    /// Aligned text for people.
    #[default]
    Text,
    /// JSON for programs.
    Json,
    /// One self-contained HTML page.
    Html,
}

/// A grant as the HTML page's cells: one per host and action.
fn html_cells(g: &Grant<'_>, kind: &str, now: u64) -> Vec<html::Cell> {
    let r = g.rule;
    let actions: Vec<(String, String)> = match &r.registry {
        Some(reg) => reg
            .actions
            .iter()
            .map(|a| (format!("registry {}", super::tighten::action_name(a)), reg.repositories.join(", ")))
            .collect(),
        None => vec![(what(r), String::new())],
    };
    let mut flags = Vec::new();
    if r.mode == Some(Mode::DryRun) {
        flags.push("dry-run");
    }
    if r.break_glass {
        flags.push("break-glass");
    }
    let mut conds = conditions(r, kind);
    if let Some(via) = &g.via {
        conds.push(format!("via {via}"));
    }
    r.hosts
        .iter()
        .flat_map(|host| {
            actions.iter().map(|(action, scope)| html::Cell {
                host: host.clone(),
                action: action.clone(),
                rule: r.id.clone(),
                effect: if r.effect == Effect::Allow { "allow" } else { "deny" },
                scope: scope.clone(),
                conditions: conds.clone(),
                window: window(r, now).0,
                flags: flags.clone(),
            })
        })
        .collect()
}

/// An identity pattern as rules name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pattern {
    /// `subject` or `peer`.
    kind: &'static str,
    /// The glob, or `**` for "any verified subject".
    glob: String,
    /// The issuers the naming rule accepts (empty: any).
    issuers: Vec<String>,
}

/// One rule as it applies to an identity.
struct Grant<'a> {
    rule: &'a RuleConfig,
    /// The pattern through which it applies, when broader than the identity's own.
    via: Option<String>,
}

fn condition_text(kind: &str, c: &ConditionConfig) -> String {
    let subject = c.claim.as_deref().or(c.header.as_deref()).or(c.capture.as_deref()).unwrap_or("?");
    let test = if let Some(v) = &c.equals {
        format!("= {v}")
    } else if let Some(v) = &c.one_of {
        format!("one of {}", Value::from(v.clone()))
    } else if let Some(g) = &c.glob {
        format!("matches {g}")
    } else if let Some(s) = &c.starts_with {
        format!("starts with {s}")
    } else if let Some(v) = &c.contains {
        format!("contains {v}")
    } else if let Some(e) = c.exists {
        if e {
            "present".into()
        } else {
            "absent".into()
        }
    } else {
        "?".into()
    };
    format!("{kind} {subject} {test}")
}

/// What a rule covers: `pull on dev/**`, or methods and paths.
fn what(rule: &RuleConfig) -> String {
    if let Some(reg) = &rule.registry {
        let actions: Vec<String> = reg
            .actions
            .iter()
            .map(|a| {
                serde_json::to_value(a).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
            })
            .collect();
        return format!("registry {} on {}", actions.join("+"), reg.repositories.join(", "));
    }
    let methods =
        if rule.methods.iter().any(|m| m == "*") { "any method".to_string() } else { rule.methods.join(",") };
    let paths: Vec<String> = rule
        .paths
        .iter()
        .map(|p| match p {
            PathConfig::Exact(p) => p.clone(),
            PathConfig::Prefix(p) => format!("{}/**", p.trim_end_matches('/')),
            PathConfig::Template(p) => p.clone(),
        })
        .collect();
    format!("{methods} {}", paths.join(", "))
}

fn conditions(rule: &RuleConfig, kind: &str) -> Vec<String> {
    let mut out = Vec::new();
    if kind != "peer" && !rule.peers.is_empty() {
        out.push(format!("mTLS peer {}", rule.peers.join(" or ")));
    }
    if !rule.profiles.is_empty() {
        out.push(format!("profile {}", rule.profiles.join(" or ")));
    }
    out.extend(rule.claims.iter().map(|c| condition_text("claim", c)));
    if !rule.scopes.is_empty() {
        out.push(format!("scopes {}", rule.scopes.join(" ")));
    }
    if let Some(age) = rule.max_token_age_seconds {
        out.push(format!("token at most {age} s old"));
    }
    out.extend(rule.headers.iter().map(|c| condition_text("header", c)));
    out.extend(rule.conditions.iter().map(|c| condition_text("capture", c)));
    out
}

/// `until ...`, `no end date`, `EXPIRED ...`, with `from ...` when it starts later.
fn window(rule: &RuleConfig, now: u64) -> (String, bool) {
    let nb = rule.not_before.as_ref().and_then(|t| t.to_unix().ok());
    let exp = rule.expires_at.as_ref().and_then(|t| t.to_unix().ok());
    let mut text = match exp {
        Some(e) if e < now => format!("EXPIRED {}", rfc3339(e)),
        Some(e) => format!("until {}", rfc3339(e)),
        None => "no end date".into(),
    };
    if let Some(nb) = nb.filter(|nb| *nb > now) {
        text = format!("from {} {text}", rfc3339(nb));
    }
    let active = exp.is_none_or(|e| e >= now) && nb.is_none_or(|nb| nb <= now);
    (text, active)
}

fn grant_json(g: &Grant<'_>, kind: &str, now: u64) -> Value {
    let r = g.rule;
    let (until, active) = window(r, now);
    let routes: Vec<Value> = r
        .registry
        .iter()
        .flat_map(|reg| reg.actions.iter())
        .flat_map(|a| crate::policy::registry::routes(*a).iter())
        .map(|(methods, path)| json!({"methods": methods, "path": path}))
        .collect();
    json!({
        "rule": r.id,
        "effect": r.effect.verdict().word(),
        "owner": r.owner,
        "via": g.via,
        "hosts": r.hosts,
        "methods": if r.registry.is_some() { Value::Null } else { json!(r.methods) },
        "paths": r.paths,
        "registry": r.registry,
        "registry_routes": if routes.is_empty() { Value::Null } else { Value::from(routes) },
        "conditions": conditions(r, kind),
        "issuers": r.issuers,
        "not_before": r.not_before.as_ref().and_then(|t| t.to_unix().ok()),
        "expires_at": r.expires_at.as_ref().and_then(|t| t.to_unix().ok()),
        "window": until,
        "active": active,
        "mode": if r.mode == Some(Mode::DryRun) { "dry-run" } else { "enforce" },
        "break_glass": r.break_glass,
    })
}

fn grant_text(out: &mut dyn Write, g: &Grant<'_>, kind: &str, now: u64, width: usize) -> Result<(), Failure> {
    let r = g.rule;
    let effect = r.effect.verdict().word();
    let (until, _) = window(r, now);
    let mut line = format!("  {effect:<5}  {:<width$}  {}  {}  {until}", r.id, r.hosts.join(","), what(r));
    let conds = conditions(r, kind);
    if !conds.is_empty() {
        line.push_str(&format!("  when {}", conds.join(" and ")));
    }
    if r.mode == Some(Mode::DryRun) {
        line.push_str("  [dry-run]");
    }
    if r.break_glass {
        line.push_str("  [break-glass]");
    }
    if let Some(via) = &g.via {
        line.push_str(&format!("  (via {via})"));
    }
    writeln!(out, "{line}")?;
    Ok(())
}

fn any_glob() -> Vec<Glob> {
    Glob::new("**").into_iter().collect()
}

/// The rules that apply to every identity matching the pattern.
fn grants_for_pattern<'a>(bundle: &Bundle, rules: &'a [RuleConfig], p: &Pattern) -> Vec<Grant<'a>> {
    let own = Glob::new(&p.glob).into_iter().collect::<Vec<_>>();
    // The profiles of the issuers the pattern's identities come from (any, when not limited).
    let profiles: Vec<&str> = bundle
        .config
        .issuers
        .iter()
        .filter(|i| p.issuers.is_empty() || p.issuers.contains(&i.name))
        .map(|i| i.profile.as_str())
        .collect();
    rules
        .iter()
        .filter(|r| names_cover(&r.issuers, &p.issuers))
        .filter(|r| r.profiles.is_empty() || profiles.iter().any(|p| r.profiles.iter().any(|rp| rp == p)))
        .filter_map(|r| {
            let list = if p.kind == "peer" { &r.peers } else { &r.subjects };
            let needs_token = !r.subjects.is_empty() || r.peers.is_empty();
            let applies = match p.kind {
                "peer" => !r.peers.is_empty() && globs_cover(&globs(list), &own),
                _ => needs_token && globs_cover(&globs(list), &own),
            };
            let via = match list.as_slice() {
                [] if p.glob == "**" => None,
                [] => Some("any verified subject".to_string()),
                l if l.contains(&p.glob) => None,
                l => Some(l.join(" or ")),
            };
            applies.then_some(Grant { rule: r, via })
        })
        .collect()
}

/// The rules whose identity part matches one concrete subject.
fn grants_for_identity<'a>(
    bundle: &Bundle,
    rules: &'a [RuleConfig],
    issuer: Option<&str>,
    subject: &str,
) -> Vec<Grant<'a>> {
    let profile =
        issuer.and_then(|i| bundle.config.issuers.iter().find(|c| c.name == i)).map(|c| c.profile.clone());
    rules
        .iter()
        .filter(|r| !r.subjects.is_empty() || r.peers.is_empty())
        .filter(|r| r.issuers.is_empty() || issuer.is_some_and(|i| r.issuers.iter().any(|x| x == i)))
        .filter(|r| r.profiles.is_empty() || profile.as_ref().is_some_and(|p| r.profiles.contains(p)))
        .filter(|r| r.subjects.is_empty() || globs(&r.subjects).iter().any(|g| g.matches(subject)))
        .map(|r| Grant {
            rule: r,
            via: if r.subjects.is_empty() {
                Some("any verified subject".into())
            } else {
                Some(r.subjects.join(" or "))
            },
        })
        .collect()
}

fn globs(list: &[String]) -> Vec<Glob> {
    if list.is_empty() {
        return any_glob();
    }
    list.iter().filter_map(|s| Glob::new(s).ok()).collect()
}

/// Requests seen per (issuer name, subject).
type Seen = BTreeMap<(String, String), u64>;

/// Collects the identities of recordings; `true` when there were more than [`MAX_IDENTITIES`].
fn seen_identities(bundle: &mut Bundle, files: &[PathBuf]) -> Result<(Seen, bool), Failure> {
    let mut seen = Seen::new();
    let mut truncated = false;
    if files.is_empty() {
        return Ok((seen, truncated));
    }
    let inputs = Input::open_all(files)?;
    records::for_each_record(inputs, false, &Progress::hidden(), |source, record| {
        let identity = match &record {
            Record::Audit(a) => a.subject.clone().map(|s| (a.issuer.clone().unwrap_or_default(), s)),
            Record::Request(_) => {
                let r = records::decide(bundle, source, &record)?;
                r.identity.map(|i| (i.issuer_name.clone(), i.subject.clone()))
            }
        };
        if let Some(key) = identity {
            if seen.len() < MAX_IDENTITIES || seen.contains_key(&key) {
                *seen.entry(key).or_default() += 1;
            } else {
                truncated = true;
            }
        }
        Ok(())
    })?;
    Ok((seen, truncated))
}

/// Runs `meshward access`.
pub fn run(args: &AccessArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let mut bundle = Bundle::load(&args.bundle)?;
    let now = match &args.now {
        Some(t) => parse_time(t).map_err(|e| Failure::usage(format!("--now: {e}")))?,
        None => now(),
    };
    if let Some(issuer) = &args.issuer {
        if !bundle.config.issuers.iter().any(|i| &i.name == issuer) {
            return Err(Failure::usage(format!("--issuer: the bundle has no issuer named {issuer:?}")));
        }
    }
    let (mut seen, truncated) = seen_identities(&mut bundle, &args.recordings)?;
    if let Some(subject) = &args.subject {
        seen.retain(|(_, s), _| s == subject);
        let issuer = args.issuer.clone().unwrap_or_default();
        if !seen.keys().any(|(i, _)| args.issuer.is_none() || *i == issuer) {
            seen.insert((issuer, subject.clone()), 0);
        }
        if let Some(want) = &args.issuer {
            seen.retain(|(i, _), _| i == want);
        }
    }
    let rules = bundle.config.rules.clone();
    // Identity patterns, in the order the rules name them.
    let mut patterns: Vec<Pattern> = Vec::new();
    if args.subject.is_none() {
        let mut known = BTreeSet::new();
        for r in &rules {
            let mut issuers = r.issuers.clone();
            issuers.sort();
            let mut add = |kind: &'static str, glob: &str| {
                let p = Pattern { kind, glob: glob.to_owned(), issuers: issuers.clone() };
                if known.insert(p.clone()) {
                    patterns.push(p);
                }
            };
            if r.subjects.is_empty() && r.peers.is_empty() {
                add("subject", "**");
            }
            r.subjects.iter().for_each(|s| add("subject", s));
            r.peers.iter().for_each(|s| add("peer", s));
        }
    }
    let width = rules.iter().map(|r| r.id.len()).max().unwrap_or(0);
    let heading = |p: &Pattern| {
        let issuers = if p.issuers.is_empty() {
            "any issuer".to_string()
        } else {
            format!("issuer {}", p.issuers.join(" or "))
        };
        match (p.kind, p.glob.as_str()) {
            ("peer", g) => format!("mTLS peer {g}"),
            (_, "**") => format!("any verified subject ({issuers})"),
            (_, g) => format!("{g} ({issuers})"),
        }
    };
    match args.format {
        AccessFormat::Html => {
            let mut rows: Vec<html::Row> = patterns
                .iter()
                .map(|p| html::Row {
                    identity: heading(p),
                    cells: grants_for_pattern(&bundle, &rules, p)
                        .iter()
                        .flat_map(|g| html_cells(g, p.kind, now))
                        .collect(),
                })
                .collect();
            for ((issuer, subject), count) in &seen {
                let grants = grants_for_identity(
                    &bundle,
                    &rules,
                    Some(issuer).filter(|i| !i.is_empty()).map(String::as_str),
                    subject,
                );
                let seen_text =
                    if *count > 0 { format!(" (seen in {count} requests)") } else { String::new() };
                rows.push(html::Row {
                    identity: format!("{subject}{seen_text}"),
                    cells: grants.iter().flat_map(|g| html_cells(g, "subject", now)).collect(),
                });
            }
            let usage = if args.recordings.is_empty() {
                None
            } else {
                Some(html::rule_usage(&mut bundle, &args.recordings)?)
            };
            html::page(out, &bundle, now, &rows, usage.as_ref())?;
        }
        AccessFormat::Text => {
            writeln!(out, "access granted by {}, as of {}", bundle.label(), rfc3339(now))?;
            writeln!(
                out,
                "A matching deny rule overrides every allow rule; anything no rule allows is denied."
            )?;
            for p in &patterns {
                writeln!(out)?;
                writeln!(out, "{}", heading(p))?;
                for g in grants_for_pattern(&bundle, &rules, p) {
                    grant_text(out, &g, p.kind, now, width)?;
                }
            }
            for ((issuer, subject), count) in &seen {
                writeln!(out)?;
                let grants = grants_for_identity(
                    &bundle,
                    &rules,
                    Some(issuer).filter(|i| !i.is_empty()).map(String::as_str),
                    subject,
                );
                let issuer_text = if issuer.is_empty() {
                    "issuer not given".to_string()
                } else {
                    format!("issuer {issuer}")
                };
                let seen_text =
                    if *count > 0 { format!(", seen in {count} requests") } else { String::new() };
                writeln!(out, "{subject} ({issuer_text}{seen_text})")?;
                if grants.is_empty() {
                    writeln!(out, "  no rule applies: every request is denied")?;
                }
                for g in grants {
                    grant_text(out, &g, "subject", now, width)?;
                }
            }
            if truncated {
                writeln!(out, "\n(only the first {MAX_IDENTITIES} identities of the recordings are listed)")?;
            }
        }
        AccessFormat::Json => {
            let patterns_json: Vec<Value> = patterns
                .iter()
                .map(|p| {
                    json!({
                        "identity": {"kind": p.kind, "pattern": p.glob, "issuers": p.issuers},
                        "grants": grants_for_pattern(&bundle, &rules, p).iter().map(|g| grant_json(g, p.kind, now)).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let identities_json: Vec<Value> = seen
                .iter()
                .map(|((issuer, subject), count)| {
                    let grants = grants_for_identity(
                        &bundle,
                        &rules,
                        Some(issuer).filter(|i| !i.is_empty()).map(String::as_str),
                        subject,
                    );
                    json!({
                        "subject": subject,
                        "issuer": if issuer.is_empty() { Value::Null } else { Value::from(issuer.clone()) },
                        "seen": count,
                        "grants": grants.iter().map(|g| grant_json(g, "subject", now)).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json_document(
                out,
                &json!({
                    "bundle": bundle.engine.name,
                    "version": bundle.engine.version,
                    "as_of": now,
                    "patterns": patterns_json,
                    "identities": identities_json,
                    "identities_truncated": truncated,
                }),
            )?;
        }
    }
    out.flush()?;
    Ok(())
}
