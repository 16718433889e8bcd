//! `meshward diff --synthesize OLD NEW`: the changes that recorded traffic never exercised.
//!
//! Requests and identities are synthesized from both bundles' own rules: for every rule, a
//! matching request for each entry of its lists (each subject, host, method, path, action and
//! repository), and requests just outside each bound: another method, a sibling path, another
//! repository, another host, a subject of another trust domain, a time outside the rule's window,
//! and a token missing each claim the rule requires. Each is decided under both bundles by the
//! engine's own steps ([`Engine::authorize_verified`](crate::Engine::authorize_verified), on the
//! synthesized identity, as replay does for audit records), and the differences are grouped by
//! (old decision -> new decision) with one concrete example each.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::bundle::Bundle;
use super::diff::DiffArgs;
use super::{json_line, now, rfc3339, Failure, Format};
use crate::decision::Decision;
use crate::decision::Verdict;
use crate::policy::registry::routes;
use crate::policy::{ConditionConfig, PathConfig, RuleConfig};
use crate::request::HttpRequest;
use crate::token::VerifiedToken;

/// One synthesized request and its caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// What it tests (`matching pull-workloads`, `other method for push-dev-builders` ...).
    pub why: String,
    pub method: String,
    pub host: String,
    pub path: String,
    /// The token's issuer (bundle name) and subject; none: no token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The token's claims.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub claims: Map<String, Value>,
    /// Request headers (lower-case names).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Unix seconds.
    pub time: u64,
}

/// A concrete text matching a glob: `*` -> `x`, `**` -> `x/y`.
fn sample_glob(glob: &str) -> String {
    glob.replace("**", "x/y").replace('*', "x")
}

/// A host matching a host pattern.
fn sample_host(pattern: &str) -> String {
    let host = pattern.split(':').next().unwrap_or(pattern);
    match host {
        "*" => "any.example.test".into(),
        h => h.replace('*', "x"),
    }
}

/// A path matching a path entry.
fn sample_path(p: &PathConfig) -> String {
    match p {
        PathConfig::Exact(p) => p.clone(),
        PathConfig::Prefix(p) => format!("{}/x", p.trim_end_matches('/')),
        PathConfig::Template(t) => t
            .split('/')
            .map(|seg| match seg {
                "**" => "x/y".to_string(),
                "*" => "x".to_string(),
                s if s.starts_with('{') && s.contains(":**") => "x/y".to_string(),
                s if s.starts_with('{') => "x".to_string(),
                s => s.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/"),
    }
}

/// A path just beside a path entry: its last literal segment renamed.
fn sibling_path(p: &PathConfig) -> String {
    match p {
        PathConfig::Exact(p) => format!("{}-other", p.trim_end_matches('/')),
        PathConfig::Prefix(p) => format!("{}-other/x", p.trim_end_matches('/')),
        PathConfig::Template(_) => {
            let sample = sample_path(p);
            match sample.split_once('/').map(|(_, rest)| rest) {
                Some(rest) => match rest.split_once('/') {
                    Some((first, tail)) => format!("/{first}-other/{tail}"),
                    None => format!("/{rest}-other"),
                },
                None => format!("{sample}-other"),
            }
        }
    }
}

/// Text satisfying a condition, if one can be made.
fn satisfying(c: &ConditionConfig) -> Option<Value> {
    if let Some(v) = &c.equals {
        return Some(v.clone());
    }
    if let Some(v) = c.one_of.as_ref().and_then(|vs| vs.first()) {
        return Some(v.clone());
    }
    if let Some(g) = &c.glob {
        return Some(Value::from(sample_glob(g)));
    }
    if let Some(s) = &c.starts_with {
        return Some(Value::from(format!("{s}x")));
    }
    if let Some(v) = &c.contains {
        return Some(json!([v]));
    }
    match c.exists {
        Some(true) => Some(Value::from("x")),
        _ => None,
    }
}

const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"];

/// The probes of one rule.
fn probes_of(rule: &RuleConfig, bundle: &Bundle, at: u64) -> Vec<Probe> {
    let issuer =
        rule.issuers.first().cloned().or_else(|| bundle.config.issuers.first().map(|i| i.name.clone()));
    // Inside the rule's window.
    let nb = rule.not_before.as_ref().and_then(|t| t.to_unix().ok());
    let exp = rule.expires_at.as_ref().and_then(|t| t.to_unix().ok());
    let mut time = at;
    if let Some(e) = exp.filter(|e| *e < time) {
        time = e.saturating_sub(1);
    }
    if let Some(n) = nb.filter(|n| *n > time) {
        time = n;
    }
    let mut claims = Map::new();
    for c in &rule.claims {
        if let (Some(name), Some(v)) = (&c.claim, satisfying(c)) {
            claims.insert(name.clone(), v);
        }
    }
    if !rule.scopes.is_empty() {
        claims.insert("scope".into(), Value::from(rule.scopes.join(" ")));
    }
    let headers: Vec<(String, String)> = rule
        .headers
        .iter()
        .filter_map(|c| {
            let v = satisfying(c)?;
            Some((c.header.clone()?, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        })
        .collect();
    let id = &rule.id;
    // (method, path) pairs, and the (action, repository) behind each for registry rules.
    let mut requests: Vec<(String, String, String)> = Vec::new();
    let mut outside: Vec<(String, String, String)> = Vec::new();
    match &rule.registry {
        Some(reg) => {
            for action in &reg.actions {
                for repo in &reg.repositories {
                    let repo_sample = sample_glob(repo);
                    // The route's most telling method: PUT for push, HEAD for pull, DELETE for delete.
                    if let Some((methods, template)) = routes(*action).first() {
                        let path = template.replace("{repo:**}", &repo_sample).replace("{reference}", "1.0");
                        if let Some(m) = methods.last() {
                            requests.push((
                                format!("matching {id} ({} on {repo})", super::tighten::action_name(action)),
                                (*m).into(),
                                path,
                            ));
                        }
                        let other_repo = format!("other-{}", repo_sample);
                        let path = template.replace("{repo:**}", &other_repo).replace("{reference}", "1.0");
                        if let Some(m) = methods.last() {
                            outside.push((format!("other repository for {id}"), (*m).into(), path));
                        }
                    }
                }
            }
        }
        None => {
            for m in &rule.methods {
                for p in &rule.paths {
                    let method = if m == "*" { "GET".to_string() } else { m.clone() };
                    requests.push((format!("matching {id}"), method.clone(), sample_path(p)));
                    outside.push((format!("sibling path for {id}"), method, sibling_path(p)));
                }
            }
            if !rule.methods.iter().any(|m| m == "*") {
                if let (Some(other), Some(p)) =
                    (METHODS.iter().find(|m| !rule.methods.iter().any(|x| x == *m)), rule.paths.first())
                {
                    outside.push((format!("other method for {id}"), (*other).into(), sample_path(p)));
                }
            }
        }
    }
    let subjects: Vec<Option<String>> = if rule.subjects.is_empty() {
        if rule.peers.is_empty() {
            vec![Some("spiffe://example.test/any".into())]
        } else {
            vec![None]
        }
    } else {
        rule.subjects.iter().map(|s| Some(sample_glob(s))).collect()
    };
    let peer = rule.peers.first().map(|p| sample_glob(p));
    let hosts: Vec<String> = rule.hosts.iter().map(|h| sample_host(h)).collect();
    let base_host = hosts.first().cloned().unwrap_or_else(|| "any.example.test".into());
    let base_subject = subjects.first().cloned().flatten();
    let probe = |why: String, method: &str, host: &str, path: &str, subject: Option<String>| Probe {
        why,
        method: method.to_owned(),
        host: host.to_owned(),
        path: path.to_owned(),
        issuer: subject.as_ref().and(issuer.clone()),
        subject,
        claims: claims.clone(),
        headers: headers.clone(),
        peer: peer.clone(),
        time,
    };
    let mut out = Vec::new();
    let Some((_, base_method, base_path)) = requests.first().cloned() else { return out };
    for (why, method, path) in requests.iter().chain(&outside) {
        out.push(probe(why.clone(), method, &base_host, path, base_subject.clone()));
    }
    for (host, written) in hosts.iter().zip(&rule.hosts).skip(1) {
        out.push(probe(
            format!("matching {id} (host {written})"),
            &base_method,
            host,
            &base_path,
            base_subject.clone(),
        ));
    }
    out.push(probe(
        format!("other host for {id}"),
        &base_method,
        "other.example.test",
        &base_path,
        base_subject.clone(),
    ));
    for (subject, written) in subjects.iter().zip(&rule.subjects).skip(1) {
        out.push(probe(
            format!("matching {id} (subject {written})"),
            &base_method,
            &base_host,
            &base_path,
            subject.clone(),
        ));
    }
    if let Some(s) = &base_subject {
        let other = match s.strip_prefix("spiffe://").and_then(|r| r.split_once('/')) {
            Some((domain, rest)) => format!("spiffe://other-{domain}/{rest}"),
            None => format!("other-{s}"),
        };
        out.push(probe(
            format!("other trust domain for {id}"),
            &base_method,
            &base_host,
            &base_path,
            Some(other),
        ));
        out.push(probe(format!("no token for {id}"), &base_method, &base_host, &base_path, None));
    }
    if let Some(p) = &peer {
        let mut no_peer = probe(
            format!("no mTLS peer for {id}"),
            &base_method,
            &base_host,
            &base_path,
            base_subject.clone(),
        );
        no_peer.peer = None;
        out.push(no_peer);
        let mut other =
            probe(format!("other peer for {id}"), &base_method, &base_host, &base_path, base_subject.clone());
        other.peer = Some(format!("{p}-other"));
        out.push(other);
    }
    if let Some(e) = exp {
        let mut late =
            probe(format!("after {id} expires"), &base_method, &base_host, &base_path, base_subject.clone());
        late.time = e.saturating_add(1);
        out.push(late);
    }
    if let Some(n) = nb {
        let mut early =
            probe(format!("before {id} starts"), &base_method, &base_host, &base_path, base_subject.clone());
        early.time = n.saturating_sub(1);
        out.push(early);
    }
    for name in claims.keys() {
        let mut missing = probe(
            format!("claim {name} missing for {id}"),
            &base_method,
            &base_host,
            &base_path,
            base_subject.clone(),
        );
        missing.claims.remove(name);
        out.push(missing);
    }
    out
}

/// Every probe of both bundles, without repeats.
pub fn probes(old: &Bundle, new: &Bundle, at: u64) -> Vec<Probe> {
    let mut all: Vec<Probe> = Vec::new();
    for bundle in [old, new] {
        for rule in &bundle.config.rules {
            for p in probes_of(rule, bundle, at) {
                let same = |q: &Probe| {
                    (
                        &q.method, &q.host, &q.path, &q.subject, &q.issuer, &q.claims, &q.headers, &q.peer,
                        q.time,
                    ) == (
                        &p.method, &p.host, &p.path, &p.subject, &p.issuer, &p.claims, &p.headers, &p.peer,
                        p.time,
                    )
                };
                if !all.iter().any(same) {
                    all.push(p);
                }
            }
        }
    }
    all
}

/// Decides a probe through the bundle's engine (the plugin's steps), on the synthesized identity.
pub fn decide(bundle: &Bundle, probe: &Probe) -> Decision {
    let token = match (&probe.subject, &probe.issuer) {
        (Some(subject), Some(name)) => {
            let Some(issuer) = bundle.engine.issuers().get(name) else {
                return Decision::deny(crate::decision::Reason::TokenIssuerUnknown);
            };
            Some(VerifiedToken {
                issuer_name: name.clone(),
                profile: issuer.profile.name(),
                issuer: issuer.issuer.clone(),
                subject: subject.clone(),
                token_id: None,
                expires_at: Some(probe.time.saturating_add(300)),
                issued_at: Some(probe.time),
                claims: probe.claims.clone().into(),
            })
        }
        _ => None,
    };
    let request = HttpRequest::recorded(
        Some(&probe.method),
        Some(&probe.host),
        Some(&probe.path),
        &probe.headers,
        probe.peer.as_deref(),
    );
    bundle.engine.authorize_verified(&request, token, probe.time).decision
}

/// `allow by RULE`, `deny by RULE`, `deny (no rule)`.
fn side(d: &Decision) -> String {
    match (d.allowed, d.rule_id.as_deref()) {
        (true, Some(r)) => format!("allow by {r}"),
        (false, Some(r)) => format!("deny by {r}"),
        (_, None) => format!("{} ({})", Verdict::of(d).word(), d.reason.code()),
    }
}

/// A group of probes decided differently: (old, new) -> (count, first example).
pub type Differences = BTreeMap<(String, String), (u64, Probe)>;

/// Decides every probe under both bundles; the differences, grouped.
pub fn compare(old: &Bundle, new: &Bundle, at: u64) -> (usize, Differences) {
    let all = probes(old, new, at);
    let mut groups = Differences::new();
    for p in &all {
        let (a, b) = (decide(old, p), decide(new, p));
        if a.allowed != b.allowed || a.rule_id != b.rule_id {
            let entry = groups.entry((side(&a), side(&b))).or_insert((0, p.clone()));
            entry.0 += 1;
        }
    }
    (all.len(), groups)
}

/// Runs `meshward diff --synthesize OLD NEW`.
pub fn run(args: &DiffArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let old = Bundle::load(&args.old)?;
    let new = Bundle::load(&args.new)?;
    let at = now();
    let (count, groups) = compare(&old, &new, at);
    let changed: u64 = groups.values().map(|(n, _)| n).sum();
    match args.format {
        Format::Text => {
            writeln!(out, "old: {}", old.label())?;
            writeln!(out, "new: {}", new.label())?;
            writeln!(
                out,
                "synthesized {count} requests from both bundles' rules: {changed} decided differently"
            )?;
            for ((a, b), (n, p)) in &groups {
                writeln!(out)?;
                writeln!(out, "{a} -> {b}: {n} request{}", if *n == 1 { "" } else { "s" })?;
                let who = match (&p.subject, &p.peer) {
                    (Some(s), _) => format!("{s} ({})", p.issuer.as_deref().unwrap_or("-")),
                    (None, Some(peer)) => format!("peer {peer}"),
                    (None, None) => "no token".into(),
                };
                writeln!(
                    out,
                    "  e.g. {} {}{} as {who} at {}  [{}]",
                    p.method,
                    p.host,
                    p.path,
                    rfc3339(p.time),
                    p.why
                )?;
            }
        }
        Format::Json => {
            for ((a, b), (n, p)) in &groups {
                json_line(out, &json!({"type": "difference", "old": a, "new": b, "count": n, "example": p}))?;
            }
            json_line(
                out,
                &json!({"type": "summary", "synthesized": count, "changed": changed, "groups": groups.len()}),
            )?;
        }
    }
    out.flush()?;
    if args.exit_code && changed > 0 {
        return Err(Failure::failed(format!(
            "{changed} of {count} synthesized requests are decided differently"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::dev::{jwks, SigningKey};
    use crate::config::BundleConfig;
    use crate::token::Algorithm;

    /// A small deterministic generator (xorshift), so failures reproduce from the seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
        }
    }

    /// A random HTTP rule; rule `i` has its own subjects, so rules do not shadow each other.
    fn random_rule(rng: &mut Rng, i: usize) -> Value {
        let methods: Vec<&str> = METHODS.iter().copied().filter(|_| rng.below(3) == 0).collect();
        let methods = if methods.is_empty() { vec!["GET"] } else { methods };
        let path = match rng.below(3) {
            0 => json!({"exact": format!("/r{i}/item")}),
            1 => json!({"prefix": format!("/r{i}/data")}),
            _ => json!({"template": format!("/r{i}/{{id}}/files/**")}),
        };
        let subject = if rng.below(2) == 0 {
            format!("spiffe://d.test/r{i}/*")
        } else {
            format!("spiffe://d.test/r{i}/app")
        };
        let mut rule = json!({"id": format!("r{i}"), "hosts": [format!("h{}.test", rng.below(2))],
            "methods": methods, "paths": [path], "subjects": [subject], "issuers": ["mesh"]});
        if rng.below(4) == 0 {
            rule["claims"] = json!([{"claim": "team", "equals": format!("t{i}")}]);
        }
        if rng.below(4) == 0 {
            rule["expires_at"] = json!(4_000_000_000u64);
        }
        rule
    }

    /// One edit of one rule that changes what it grants.
    fn edit(rng: &mut Rng, rule: &mut Value) -> Option<&'static str> {
        let kind = rng.below(7);
        match kind {
            0 => {
                let listed = rule["methods"].as_array()?.clone();
                let m = METHODS.iter().find(|m| !listed.iter().any(|x| x == **m));
                rule["methods"].as_array_mut()?.push(json!(m?));
                Some("method added")
            }
            1 if rule["methods"].as_array()?.len() > 1 => {
                rule["methods"].as_array_mut()?.pop();
                Some("method removed")
            }
            2 => {
                rule["paths"] = json!([{"exact": "/elsewhere"}]);
                Some("path changed")
            }
            3 => {
                rule["subjects"] = json!(["spiffe://d.test/someone-else"]);
                Some("subject changed")
            }
            4 => {
                rule["expires_at"] = json!(1_000_000_000u64);
                Some("expired")
            }
            5 => {
                rule["claims"] = json!([{"claim": "level", "equals": "high"}]);
                Some("claim required")
            }
            _ => {
                rule["effect"] = json!("deny");
                Some("made a deny rule")
            }
        }
    }

    fn compile(bundle: &Value) -> Bundle {
        let config: BundleConfig =
            serde_json::from_value(bundle.clone()).unwrap_or_else(|e| panic!("{e}: {bundle}"));
        Bundle::compile(std::path::Path::new("random.json"), config)
            .unwrap_or_else(|e| panic!("{e}: {bundle}"))
    }

    #[test]
    fn every_single_rule_edit_is_reported_and_every_example_really_differs() {
        let key = SigningKey::generate(Algorithm::EdDSA, "k1").unwrap_or_else(|e| panic!("{e}"));
        let at = 1_800_000_000;
        let mut reported = 0;
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let n = 1 + rng.below(4);
            let rules: Vec<Value> = (0..n).map(|i| random_rule(&mut rng, i)).collect();
            let old = json!({"name": "random", "version": "1",
                "issuers": [{"name": "mesh", "issuer": "https://mesh.test", "audiences": ["api"],
                             "algorithms": ["EdDSA"], "jwks": jwks(&[&key])}],
                "rules": rules});
            let mut new = old.clone();
            let which = rng.below(n);
            let what = new["rules"].get_mut(which).and_then(|r| edit(&mut rng, r));
            let what = match what {
                Some(w) => w,
                None => continue,
            };
            let (old_b, new_b) = (compile(&old), compile(&new));
            let (_, groups) = compare(&old_b, &new_b, at);
            assert!(
                !groups.is_empty(),
                "seed {seed}: rule r{which} {what} is not reported\nold {old}\nnew {new}"
            );
            for ((a, b), (_, example)) in &groups {
                let (da, db) = (decide(&old_b, example), decide(&new_b, example));
                assert_eq!((&side(&da), &side(&db)), (a, b), "seed {seed}: {example:?}");
                assert!(da.allowed != db.allowed || da.rule_id != db.rule_id, "seed {seed}: {example:?}");
            }
            // An unchanged bundle has no differences.
            assert!(compare(&old_b, &compile(&old), at).1.is_empty(), "seed {seed}");
            reported += 1;
        }
        assert!(reported > 250, "{reported} edits tried");
    }
}
