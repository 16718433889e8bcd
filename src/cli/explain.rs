//! `meshward explain`: one request's decision, and every rule considered with why it matched or not.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use serde_json::{json, Value};

use super::bundle::Bundle;
use super::records::{
    self, decision_json, Basis, Check, HeaderValue, Input, Line, Record, Replayed, RequestRecord,
};
use super::{json_document, now, parse_time, rfc3339, Failure, Format};
use crate::decision::{Reason, Verdict};
use crate::policy::{Effect, Mismatch, Mode, PolicyInput, Timestamp};

/// `meshward explain` arguments.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Give the request with flags (--method, --url or --authority and --path, --token, -H, \
--peer, --time), or as a record with --record: a request record or an audit record, JSON; the first record of \
the file, or the one on --line N."
)]
pub struct ExplainArgs {
    /// The bundle to decide with (JSON; YAML when named .yaml or .yml).
    #[arg(long, short = 'p', value_name = "BUNDLE")]
    pub policy: PathBuf,
    /// Read the request from a file of records (`-`: standard input).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["url", "authority", "path", "token", "headers", "peer", "time"])]
    pub record: Option<PathBuf>,
    /// With --record: the line of the record to explain (default: the first record).
    #[arg(long, value_name = "N", requires = "record")]
    pub line: Option<u64>,
    /// Request method.
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,
    /// The request URL, e.g. `https://registry.example.internal/v2/` (instead of --authority and --path).
    #[arg(long, conflicts_with_all = ["authority", "path"])]
    pub url: Option<String>,
    /// `:authority` (host and optional port).
    #[arg(long, alias = "host")]
    pub authority: Option<String>,
    /// `:path`, with query.
    #[arg(long)]
    pub path: Option<String>,
    /// A bearer token (sent as `Authorization: Bearer TOKEN`).
    #[arg(long)]
    pub token: Option<String>,
    /// A request header, `NAME: VALUE`; repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The mTLS peer identity (URI SAN).
    #[arg(long)]
    pub peer: Option<String>,
    /// When the request is made: unix seconds or RFC 3339 (default: now). Tokens are verified as of then.
    #[arg(long)]
    pub time: Option<String>,
    /// Exit with 1 unless the decision is this.
    #[arg(long, value_enum)]
    pub expect: Option<Verdict>,
    /// `text` or `json`.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// Builds the request record the flags describe.
fn record_from_flags(args: &ExplainArgs) -> Result<Record, Failure> {
    let (authority, path) = match (&args.url, &args.authority, &args.path) {
        (Some(url), _, _) => {
            let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
            let (authority, path) = rest
                .find('/')
                .map_or((rest, "/"), |at| (rest.get(..at).unwrap_or(rest), rest.get(at..).unwrap_or("/")));
            (authority.to_owned(), path.to_owned())
        }
        (None, Some(a), Some(p)) => (a.clone(), p.clone()),
        _ => {
            return Err(Failure::usage(
                "give the request: --url URL, or --authority HOST and --path PATH (or --record FILE)",
            ))
        }
    };
    let mut headers: BTreeMap<String, HeaderValue> = BTreeMap::new();
    let mut add = |name: String, value: String| match headers.remove(&name) {
        None => {
            headers.insert(name, HeaderValue::One(value));
        }
        Some(HeaderValue::One(first)) => {
            headers.insert(name, HeaderValue::Many(vec![first, value]));
        }
        Some(HeaderValue::Many(mut all)) => {
            all.push(value);
            headers.insert(name, HeaderValue::Many(all));
        }
    };
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| Failure::usage(format!("--header {h:?}: expected NAME: VALUE")))?;
        add(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    if let Some(token) = &args.token {
        add("authorization".into(), format!("Bearer {token}"));
    }
    let time = match &args.time {
        Some(t) => parse_time(t).map_err(|e| Failure::usage(format!("--time: {e}")))?,
        None => now(),
    };
    Ok(Record::Request(RequestRecord {
        name: None,
        time: Timestamp::Unix(time),
        method: args.method.clone(),
        authority,
        path,
        headers,
        peer: args.peer.clone(),
        expect: args.expect,
        expect_reason: None,
        expect_rule: None,
    }))
}

/// Reads the first record of a file, or the one on `line`.
fn record_from_file(path: &std::path::Path, line: Option<u64>) -> Result<Record, Failure> {
    let mut input = Input::open(path)?;
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        let consumed = input
            .next_line(&mut buf)
            .map_err(|e| Failure::usage(format!("{}:{}: {e}", input.label, n + 1)))?;
        if consumed == 0 {
            let which = line.map_or("no record".to_string(), |l| format!("no line {l}"));
            return Err(Failure::usage(format!("{}: {which}", input.label)));
        }
        n += 1;
        if line.is_some_and(|l| l != n) {
            continue;
        }
        let text = std::str::from_utf8(&buf)
            .map_err(|_| Failure::usage(format!("{}:{n}: not UTF-8", input.label)))?;
        match records::parse_line(text).map_err(|e| Failure::usage(format!("{}:{n}: {e}", input.label)))? {
            Line::Record(record) => return Ok(*record),
            Line::Skip if line.is_some() => {
                return Err(Failure::usage(format!("{}:{n}: not a request or audit record", input.label)))
            }
            Line::Skip => {}
        }
    }
}

/// One rule's part in the decision.
struct Considered {
    id: String,
    effect: Effect,
    mode: Mode,
    break_glass: bool,
    why_not: Option<Mismatch>,
}

/// Runs `meshward explain`.
pub fn run(args: &ExplainArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let mut bundle = Bundle::load(&args.policy)?;
    let mut record = match &args.record {
        Some(path) => record_from_file(path, args.line)?,
        None => record_from_flags(args)?,
    };
    if let (Some(want), Record::Request(r)) = (args.expect, &mut record) {
        r.expect = Some(want);
    }
    let replayed = bundle.decide(&record).map_err(Failure::usage)?;
    let (stage, rules) = consider(&bundle, &replayed);
    let explanation = explanation(&bundle, &replayed, stage, &rules);
    match args.format {
        Format::Text => text(out, &bundle, &record, &replayed, &explanation, &rules)?,
        Format::Json => {
            let rules_json: Vec<Value> = rules
                .iter()
                .map(|c| {
                    json!({
                        "rule": c.id,
                        "effect": c.effect.verdict().word(),
                        "mode": if c.mode == Mode::Enforce { "enforce" } else { "dry-run" },
                        "break_glass": c.break_glass,
                        "matched": c.why_not.is_none(),
                        "why_not": c.why_not.as_ref().map(ToString::to_string),
                    })
                })
                .collect();
            let source = records::Source { file: "-".into(), line: 0 };
            let mut request = super::replay::result_json(&source, &record, &replayed);
            if let Value::Object(map) = &mut request {
                for k in [
                    "type",
                    "source",
                    "decision",
                    "reason",
                    "rule",
                    "status",
                    "break_glass",
                    "dry_run",
                    "recorded",
                    "unrecorded",
                ] {
                    map.remove(k);
                }
            }
            json_document(
                out,
                &json!({
                    "policy": bundle.path.display().to_string(),
                    "bundle": bundle.engine.name,
                    "version": bundle.engine.version,
                    "request": request,
                    "identity": replayed.identity.as_ref().map(|i| json!({
                        "subject": i.subject, "issuer": i.issuer_name, "profile": i.profile,
                        "token_id": i.token_id, "expires_at": i.expires_at, "issued_at": i.issued_at,
                    })),
                    "decision": decision_json(&replayed.decision),
                    "dry_run": replayed.dry_run.as_ref().map(decision_json),
                    "stage": stage,
                    "explanation": explanation,
                    "rules": rules_json,
                    "unrecorded": replayed.unrecorded,
                }),
            )?;
        }
    }
    out.flush()?;
    if let Some(expectation) = record.expectation(false) {
        if let Check::Fail(m) | Check::Unknown(m) = expectation.check(&replayed) {
            return Err(Failure::failed(m));
        }
    }
    Ok(())
}

/// Where the request was decided, and (when policy decided) every rule's part.
fn consider(bundle: &Bundle, r: &Replayed) -> (&'static str, Vec<Considered>) {
    let Some(target) = &r.target else { return ("request", Vec::new()) };
    let reason = r.decision.reason;
    let token_refused = reason.is_token_problem() && reason != Reason::TokenMissing;
    if r.basis == Basis::RecordedDecision {
        return ("recorded", Vec::new());
    }
    if token_refused {
        return ("token", Vec::new());
    }
    let headers: Vec<(&str, &str)> = r.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let input = PolicyInput {
        target,
        headers: &headers,
        token: r.identity.as_deref(),
        peer: r.peer.as_deref(),
        now: r.time,
    };
    let traces = bundle.engine.policy().explain(&input);
    let rules = traces
        .into_iter()
        .zip(bundle.engine.policy().rules())
        .map(|(trace, rule)| Considered {
            id: trace.rule_id,
            effect: rule.effect,
            mode: rule.mode,
            break_glass: rule.break_glass,
            why_not: trace.mismatch,
        })
        .collect();
    ("policy", rules)
}

fn explanation(bundle: &Bundle, r: &Replayed, stage: &str, rules: &[Considered]) -> String {
    let d = &r.decision;
    let matched = |effect: Effect| -> Vec<&str> {
        rules
            .iter()
            .filter(|c| c.why_not.is_none() && c.effect == effect && c.mode == Mode::Enforce)
            .map(|c| c.id.as_str())
            .collect()
    };
    let mut text = match stage {
        "request" => format!("the request was refused before any token or rule was looked at ({})", d.reason.code()),
        "recorded" => format!(
            "the audit record shows a decision made before policy ({}); without the token it stands as recorded",
            d.reason.code()
        ),
        "token" if d.reason == Reason::TokenRevoked => "the token's id or subject is on the bundle's revocation list".into(),
        "token" => format!("the token was refused ({}), so no rule was consulted", d.reason.code()),
        _ => match d.reason {
            Reason::Allowed => {
                let others: Vec<&str> = matched(Effect::Allow).into_iter().filter(|id| Some(*id) != d.rule_id.as_deref()).collect();
                let mut t = format!("allow rule {} matches and no deny rule does", d.rule_label());
                if !others.is_empty() {
                    t.push_str(&format!(" (it is the first matching allow rule; {} also match)", others.join(", ")));
                }
                t
            }
            Reason::PolicyDenied => {
                let allows = matched(Effect::Allow);
                let mut t = format!("deny rule {} matches, and a matching deny rule overrides every allow rule", d.rule_label());
                if !allows.is_empty() {
                    t.push_str(&format!(" (allow rules that also match: {})", allows.join(", ")));
                }
                t
            }
            Reason::PolicyNoMatch => "no rule matches, so the default deny applies".into(),
            Reason::TokenMissing => "no token was presented, and no rule for the mTLS peer allows the request".into(),
            Reason::RequestHeaderRepeated => "a header that a rule condition reads arrived more than once".into(),
            other => format!("denied: {}", other.code()),
        },
    };
    if let Some(dry) = &r.dry_run {
        text.push_str(&format!(
            "; with dry-run rules the decision would be {} {} by {}",
            dry.verdict().word(),
            dry.reason.code(),
            dry.rule_label()
        ));
    }
    if bundle.engine.mode == Mode::DryRun {
        text.push_str("; the bundle is in dry-run mode, so the request goes upstream anyway");
    }
    if !r.unrecorded.is_empty() {
        text.push_str(&format!(
            "; audit records carry no claims, headers or token age, and {} read{} them: the plugin may have decided otherwise",
            r.unrecorded.join(", "),
            if r.unrecorded.len() == 1 { "s" } else { "" }
        ));
    }
    text
}

fn text(
    out: &mut dyn Write,
    bundle: &Bundle,
    record: &Record,
    r: &Replayed,
    explanation: &str,
    rules: &[Considered],
) -> Result<(), Failure> {
    let d = &r.decision;
    writeln!(out, "policy:    {}", bundle.label())?;
    let mut request = format!("{} at {} ({})", r.request_line(record), rfc3339(r.time), r.time);
    if let Some(peer) = &r.peer {
        request.push_str(&format!(", mTLS peer {peer}"));
    }
    writeln!(out, "request:   {request}")?;
    match (&r.identity, record) {
        (Some(i), _) => {
            let mut line = format!("{}, issuer {} ({})", i.subject, i.issuer_name, i.profile);
            if let Some(exp) = i.expires_at {
                line.push_str(&format!(", token expires {}", rfc3339(exp)));
            }
            if let Some(iat) = i.issued_at {
                line.push_str(&format!(", issued {}", rfc3339(iat)));
            }
            if r.basis == Basis::RecordedIdentity {
                line.push_str(" (from the audit record; claims not recorded)");
            }
            writeln!(out, "identity:  {line}")?;
        }
        (None, _) => writeln!(out, "identity:  none verified")?,
    }
    let status = if d.allowed { 200 } else { d.reason.http_status() };
    let bg = if d.break_glass { " [break-glass: audited at high severity]" } else { "" };
    writeln!(
        out,
        "decision:  {} {status} {} by {}{bg}",
        d.verdict().word(),
        d.reason.code(),
        d.rule_label()
    )?;
    writeln!(out, "why:       {explanation}")?;
    if !rules.is_empty() {
        writeln!(out)?;
        writeln!(out, "rules, in bundle order (a matching deny rule overrides every allow rule):")?;
        let width = rules.iter().map(|c| c.id.len()).max().unwrap_or(0);
        for c in rules {
            let effect = c.effect.verdict().word();
            let mut notes = Vec::new();
            if c.mode == Mode::DryRun {
                notes.push("dry-run");
            }
            if c.break_glass {
                notes.push("break-glass");
            }
            let notes = if notes.is_empty() { String::new() } else { format!("[{}] ", notes.join(", ")) };
            let (mark, why) = match &c.why_not {
                None => ("MATCH", "matches".to_string()),
                Some(why) => ("-", why.to_string()),
            };
            writeln!(out, "  {mark:<5} {:<width$}  {effect:<5}  {notes}{why}", c.id)?;
        }
    }
    Ok(())
}
