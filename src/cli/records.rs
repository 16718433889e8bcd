//! Recorded requests, as `replay`, `diff`, `explain` and `access` read them, and how each is decided
//! by the core.
//!
//! Two kinds of JSON lines are accepted, mixed freely:
//!
//! - **request records**: `time`, `method`, `authority`, `path`, `headers` (which may carry
//!   `authorization`), optional `peer`, and optional expectations (`expect`, `expect_reason`,
//!   `expect_rule`). They are decided by [`Engine::authorize`] as of `time`: the token is verified
//!   as it was then.
//! - **the plugin's audit records** (`"type": "decision"`): the identity was verified when the
//!   request was made, so the policy is evaluated on the recorded identity with
//!   [`Policy::evaluate`](crate::policy::Policy::evaluate). Audit records carry neither claims nor
//!   headers nor the token's issue time; a decision that depends on them is flagged.
//!
//! Lines of an Envoy log that embed an audit record are read too, and so are the lines of the
//! JSON access log `render envoy` configures (see [`super::accesslog`]); other lines are skipped
//! and counted.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decision::{Decision, Reason, Verdict};
use crate::engine::RecordedIdentity;
use crate::policy::{Mismatch, PolicyInput, Timestamp};
use crate::request::HttpRequest;
use crate::request::RequestTarget;
use crate::token::VerifiedToken;

use super::bundle::Bundle;
use super::Failure;

/// Longest line read (a request record with a large token is a few KiB).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// A header value: one, or a list for a header sent several times.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum HeaderValue {
    One(String),
    Many(Vec<String>),
}

/// A recorded request, with what the test author expects.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRecord {
    /// Optional label shown with the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When the request was made: unix seconds (or RFC 3339). Tokens are verified as of then.
    pub time: Timestamp,
    /// `:method`.
    pub method: String,
    /// `:authority` (host and optional port).
    pub authority: String,
    /// `:path`, with query.
    pub path: String,
    /// Request headers; a list value is a header sent several times.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValue>,
    /// The mTLS peer identity (the client certificate's URI SAN), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The expected decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Verdict>,
    /// The expected reason code (`allowed`, `policy_no_matching_rule`, `token_expired` ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_reason: Option<Reason>,
    /// The expected deciding rule id (or `default-deny`, or `-` when no rule decided).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_rule: Option<String>,
}

/// The fields of the plugin's decision audit record that replay reads (others are ignored, so
/// records from newer plugins still replay).
#[derive(Clone, Debug, Deserialize)]
pub struct AuditLine {
    pub time: u64,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub bundle: Option<String>,
    pub decision: Verdict,
    pub reason: Reason,
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub break_glass: bool,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub token_id: Option<String>,
    #[serde(default)]
    pub token_expires_at: Option<u64>,
    #[serde(default)]
    pub peer: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
}

/// One recorded request of either kind.
#[derive(Clone, Debug)]
pub enum Record {
    Request(RequestRecord),
    Audit(AuditLine),
}

/// What a line holds.
pub enum Line {
    Record(Box<Record>),
    /// Not a decision record (blank, another record type, a log line): skipped.
    Skip,
}

/// Parses one line.
pub fn parse_line(text: &str) -> Result<Line, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Line::Skip);
    }
    let json = if trimmed.starts_with('{') {
        trimmed
    } else {
        // An Envoy log line carrying an audit record after its log prefix.
        match trimmed.find("{\"type\":\"decision\"") {
            Some(at) => trimmed.get(at..).unwrap_or_default(),
            None => return Ok(Line::Skip),
        }
    };
    // Fast path for the plugin's own records, which lead with their type: one parse, no Value.
    if json.starts_with("{\"type\":\"decision\"") {
        if let Ok(audit) = serde_json::from_str::<AuditLine>(json) {
            return Ok(Line::Record(Box::new(Record::Audit(audit))));
        }
    }
    let value: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    parse_value(value)
}

/// Interprets a parsed JSON object as a record.
pub fn parse_value(value: Value) -> Result<Line, String> {
    match value.get("type") {
        Some(Value::String(t)) if t == "decision" => {
            let audit: AuditLine =
                serde_json::from_value(value).map_err(|e| format!("not a decision record: {e}"))?;
            Ok(Line::Record(Box::new(Record::Audit(audit))))
        }
        Some(_) => Ok(Line::Skip),
        None if super::accesslog::is_access_log(&value) => super::accesslog::parse(value),
        None => {
            let request: RequestRecord =
                serde_json::from_value(value).map_err(|e| format!("not a request record: {e}"))?;
            Ok(Line::Record(Box::new(Record::Request(request))))
        }
    }
}

impl Record {
    /// The recorded time (unix seconds).
    pub fn time(&self) -> Result<u64, String> {
        match self {
            Record::Request(r) => r.time.to_unix().map_err(|e| format!("time: {e}")),
            Record::Audit(a) => Ok(a.time),
        }
    }

    /// `request` or `audit`.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Request(_) => "request",
            Record::Audit(_) => "audit",
        }
    }

    /// The record's label, if it has one.
    pub fn name(&self) -> Option<&str> {
        match self {
            Record::Request(r) => r.name.as_deref(),
            Record::Audit(a) => a.request_id.as_deref(),
        }
    }

    /// The stated expectation: a request record's `expect*` fields, or (when `recorded` is set) an
    /// audit record's own decision.
    pub fn expectation(&self, recorded: bool) -> Option<Expectation> {
        match self {
            Record::Request(r)
                if r.expect.is_some() || r.expect_reason.is_some() || r.expect_rule.is_some() =>
            {
                Some(Expectation { decision: r.expect, reason: r.expect_reason, rule: r.expect_rule.clone() })
            }
            Record::Audit(a) if recorded => {
                Some(Expectation { decision: Some(a.decision), reason: Some(a.reason), rule: a.rule.clone() })
            }
            _ => None,
        }
    }

    /// The recorded decision of an audit record.
    pub fn recorded(&self) -> Option<Decision> {
        match self {
            Record::Audit(a) => Some(recorded_decision(a)),
            Record::Request(_) => None,
        }
    }
}

fn recorded_decision(a: &AuditLine) -> Decision {
    let rule_id = a.rule.as_deref().filter(|r| *r != "-" && *r != "default-deny").map(str::to_owned);
    Decision { allowed: a.decision == Verdict::Allow, reason: a.reason, rule_id, break_glass: a.break_glass }
}

/// What a test author expects of a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Expectation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// How an expectation fared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// No expectation.
    None,
    Pass,
    /// Not met: what differs.
    Fail(String),
    /// Not met, but the replayed decision depends on data the audit record does not carry.
    Unknown(String),
}

impl Expectation {
    /// Compares with a replayed decision.
    pub fn check(&self, replayed: &Replayed) -> Check {
        let d = &replayed.decision;
        let mut wrong = Vec::new();
        if let Some(want) = self.decision {
            if want != Verdict::of(d) {
                wrong.push(format!("decision {} (got {})", want.word(), d.verdict().word()));
            }
        }
        if let Some(want) = self.reason {
            if want != d.reason {
                wrong.push(format!("reason {want} (got {})", d.reason.code()));
            }
        }
        if let Some(want) = &self.rule {
            if want != d.rule_label() {
                wrong.push(format!("rule {want} (got {})", d.rule_label()));
            }
        }
        match (wrong.is_empty(), replayed.unrecorded.is_empty()) {
            (true, _) => Check::Pass,
            (false, true) => Check::Fail(format!("expected {}", wrong.join(", "))),
            (false, false) => Check::Unknown(format!(
                "expected {}; the decision depends on data audit records do not carry ({})",
                wrong.join(", "),
                replayed.unrecorded.join(", ")
            )),
        }
    }
}

/// What the identity behind a replayed decision rests on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// A request record: its token was verified by this bundle (or it had none).
    Request,
    /// An audit record: the policy was evaluated on the recorded identity.
    RecordedIdentity,
    /// An audit record decided before policy (a token or request problem): the recorded decision
    /// stands, since the token is not recorded.
    RecordedDecision,
}

/// A record decided by a bundle.
#[derive(Clone, Debug)]
pub struct Replayed {
    /// The decision.
    pub decision: Decision,
    /// The decision with dry-run rules included, when it differs.
    pub dry_run: Option<Decision>,
    /// The checked request (host normalized, path without query), unless it was rejected.
    pub target: Option<RequestTarget>,
    /// The verified (or recorded) identity.
    pub identity: Option<Rc<VerifiedToken>>,
    /// The mTLS peer identity.
    pub peer: Option<String>,
    /// The request's headers (request records only), lower-case names.
    pub headers: Vec<(String, String)>,
    /// The time it was decided at.
    pub time: u64,
    /// What the decision rests on.
    pub basis: Basis,
    /// Rules whose outcome depends on data an audit record does not carry (claims, headers, the
    /// token's issue time, the port): the replayed decision may differ from what the plugin would
    /// decide.
    pub unrecorded: Vec<String>,
}

impl Replayed {
    /// `METHOD host/path`, as checked (or as recorded when the request was rejected).
    pub fn request_line(&self, record: &Record) -> String {
        match (&self.target, record) {
            (Some(t), _) => format!("{} {}{}", t.method, t.host, t.path),
            (None, Record::Request(r)) => format!("{} {}{}", r.method, r.authority, r.path),
            (None, Record::Audit(a)) => format!(
                "{} {}{}",
                a.method.as_deref().unwrap_or("-"),
                a.host.as_deref().unwrap_or(""),
                a.path.as_deref().unwrap_or("")
            ),
        }
    }

    /// Who made the request: the verified subject, the mTLS peer, or `-`.
    pub fn who(&self) -> String {
        match (&self.identity, &self.peer) {
            (Some(i), _) => i.subject.clone(),
            (None, Some(p)) => format!("peer {p}"),
            (None, None) => "-".into(),
        }
    }
}

/// Which rules read data that audit records do not carry.
fn reads_unrecorded(rule: &crate::policy::RuleConfig) -> bool {
    let refers_to_claims = |v: Option<&str>| v.is_some_and(|s| s.contains("${claim."));
    let claim_refs = rule.conditions.iter().any(|c| {
        refers_to_claims(c.equals.as_ref().and_then(Value::as_str))
            || refers_to_claims(c.starts_with.as_deref())
    });
    !rule.claims.is_empty()
        || !rule.scopes.is_empty()
        || !rule.headers.is_empty()
        || rule.max_token_age_seconds.is_some()
        || claim_refs
        || rule.hosts.iter().any(|h| h.contains(':'))
}

/// Whether a rule's failure to match concerns what an audit record carries (the request, the rule's
/// activity, the identity and the peer), so that the data it lacks cannot change the outcome.
fn decided_by_recorded_data(why: &Mismatch) -> bool {
    match why {
        Mismatch::NoRoute
        | Mismatch::Host { .. }
        | Mismatch::Method { .. }
        | Mismatch::Path { .. }
        | Mismatch::Repository
        | Mismatch::NotYetActive
        | Mismatch::Expired
        | Mismatch::NoPeer
        | Mismatch::Peer { .. }
        | Mismatch::NoToken
        | Mismatch::Issuer { .. }
        | Mismatch::Profile { .. }
        | Mismatch::Subject { .. } => true,
        Mismatch::Header { .. }
        | Mismatch::Claim { .. }
        | Mismatch::Scope { .. }
        | Mismatch::TokenAge { .. }
        | Mismatch::Capture { .. } => false,
    }
}

impl Bundle {
    /// Decides a record as the plugin would have, as of its time.
    pub fn decide(&mut self, record: &Record) -> Result<Replayed, String> {
        let time = record.time()?;
        match record {
            Record::Request(r) => Ok(self.decide_request(r, time)),
            Record::Audit(a) => Ok(self.decide_audit(a)),
        }
    }

    fn decide_request(&mut self, r: &RequestRecord, time: u64) -> Replayed {
        // The plugin's clock only moves forward; a cached token must not be reused at an earlier
        // time (it might not have been valid yet), so going back in time starts a fresh engine.
        if time < self.latest_time {
            self.reload();
        }
        self.latest_time = self.latest_time.max(time);
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .flat_map(|(name, value)| {
                let name = name.to_ascii_lowercase();
                let values = match value {
                    HeaderValue::One(v) => vec![v.clone()],
                    HeaderValue::Many(vs) => vs.clone(),
                };
                values.into_iter().map(move |v| (name.clone(), v))
            })
            .collect();
        let request = HttpRequest::recorded(
            Some(&r.method),
            Some(&r.authority),
            Some(&r.path),
            &headers,
            r.peer.as_deref(),
        );
        let outcome = self.engine.authorize(&request, time);
        Replayed {
            decision: outcome.decision,
            dry_run: outcome.dry_run,
            target: outcome.target,
            identity: outcome.identity,
            peer: r.peer.clone(),
            headers,
            time,
            basis: Basis::Request,
            unrecorded: Vec::new(),
        }
    }

    fn decide_audit(&self, a: &AuditLine) -> Replayed {
        let recorded = recorded_decision(a);
        let request = HttpRequest::recorded(
            a.method.as_deref(),
            a.host.as_deref(),
            a.path.as_deref(),
            &[],
            a.peer.as_deref(),
        );
        let identity = match (&a.subject, recorded.reason) {
            // Decided after verification, by what this replay can re-evaluate.
            (
                Some(subject),
                Reason::Allowed | Reason::PolicyNoMatch | Reason::PolicyDenied | Reason::TokenRevoked,
            ) => Some(RecordedIdentity {
                issuer: a.issuer.as_deref().unwrap_or_default(),
                subject,
                token_id: a.token_id.as_deref(),
                expires_at: a.token_expires_at,
            }),
            // No token: only peer rules could have decided.
            (None, Reason::Allowed | Reason::PolicyNoMatch | Reason::PolicyDenied | Reason::TokenMissing) => {
                None
            }
            // A token or request problem decided before policy: it stands (the token is not
            // recorded), unless the request itself is refused now.
            _ => {
                let (decision, target) = match self.engine.check_request(&request) {
                    Ok(target) => (recorded, Some(target)),
                    Err(reason) => (Decision::deny(reason), None),
                };
                return Replayed {
                    decision,
                    dry_run: None,
                    target,
                    identity: None,
                    peer: a.peer.clone(),
                    headers: Vec::new(),
                    time: a.time,
                    basis: Basis::RecordedDecision,
                    unrecorded: Vec::new(),
                };
            }
        };
        let outcome = self.engine.authorize_identity(&request, identity, a.time);
        // Only a decision of the policy can depend on what the record lacks (not a refused request,
        // an issuer no longer trusted or a revoked identity).
        let by_policy = matches!(
            outcome.decision.reason,
            Reason::Allowed | Reason::PolicyNoMatch | Reason::PolicyDenied | Reason::TokenMissing
        );
        let unrecorded = match &outcome.target {
            Some(target) if by_policy => self.unrecorded_rules(&PolicyInput {
                target,
                headers: &[],
                token: outcome.identity.as_deref(),
                peer: a.peer.as_deref(),
                now: a.time,
            }),
            _ => Vec::new(),
        };
        let basis = if outcome.target.is_some() { Basis::RecordedIdentity } else { Basis::RecordedDecision };
        Replayed {
            decision: outcome.decision,
            dry_run: outcome.dry_run,
            target: outcome.target,
            identity: outcome.identity,
            peer: a.peer.clone(),
            headers: Vec::new(),
            time: a.time,
            basis,
            unrecorded,
        }
    }

    /// The rules that read claims, headers, the token's age or the port, and that got far enough
    /// on this request for that data to matter.
    fn unrecorded_rules(&self, input: &PolicyInput<'_>) -> Vec<String> {
        self.config
            .rules
            .iter()
            .zip(self.engine.policy().rules())
            .filter(|(cfg, _)| reads_unrecorded(cfg))
            .filter(|(_, rule)| match rule.check(input) {
                Ok(()) => true,
                Err(why) => !decided_by_recorded_data(&why),
            })
            .map(|(cfg, _)| cfg.id.clone())
            .collect()
    }
}

/// Where a record came from: `file:line`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub file: String,
    pub line: u64,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One input file (or `-` for standard input), read line by line.
pub struct Input {
    /// As shown in results.
    pub label: String,
    /// Size in bytes, when known (for the progress bar).
    pub size: Option<u64>,
    reader: Box<dyn BufRead>,
}

impl Input {
    /// Opens a file, or standard input for `-`.
    pub fn open(path: &Path) -> Result<Self, Failure> {
        if path == Path::new("-") {
            return Ok(Input {
                label: "-".into(),
                size: None,
                reader: Box::new(BufReader::new(std::io::stdin())),
            });
        }
        let file = std::fs::File::open(path)
            .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
        let size = file.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
        Ok(Input {
            label: path.display().to_string(),
            size,
            reader: Box::new(BufReader::with_capacity(256 * 1024, file)),
        })
    }

    /// Opens every input first, so a missing file is reported before any work.
    pub fn open_all(paths: &[PathBuf]) -> Result<Vec<Self>, Failure> {
        if paths.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
            return Err(Failure::usage("standard input (`-`) can be given once"));
        }
        paths.iter().map(|p| Input::open(p)).collect()
    }

    /// Reads the next line into `buf` (without its newline); `Ok(0)` at the end. Returns the bytes
    /// consumed.
    pub(crate) fn next_line(&mut self, buf: &mut Vec<u8>) -> Result<usize, String> {
        buf.clear();
        let limit = MAX_LINE_BYTES as u64 + 1;
        let n =
            (&mut self.reader).take(limit).read_until(b'\n', buf).map_err(|e| format!("cannot read: {e}"))?;
        if buf.len() > MAX_LINE_BYTES {
            return Err(format!("line longer than {MAX_LINE_BYTES} bytes"));
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        Ok(n)
    }
}

/// Counts of what was read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReadStats {
    /// Records handed on.
    pub records: u64,
    /// Request records among them.
    pub request_records: u64,
    /// Audit records among them.
    pub audit_records: u64,
    /// Lines that were not records (blank lines, other log lines).
    pub skipped_lines: u64,
    /// Invalid lines skipped with `--skip-invalid`.
    pub invalid_lines: u64,
    /// JSON access-log lines read as their embedded audit record (counted in `audit_records` too).
    pub access_log_records: u64,
    /// JSON access-log lines without an audit record: their decision cannot be re-derived.
    pub access_log_without_decision: u64,
    /// Lines of Istio's default access log: no identity, their decision cannot be re-derived.
    pub istio_text_lines: u64,
}

impl ReadStats {
    /// What the user is told about log lines whose decisions cannot be re-derived.
    pub fn underivable_notes(&self) -> Vec<String> {
        use super::accesslog::Underivable;
        [
            (self.access_log_without_decision, Underivable::NoDecisionRecord),
            (self.istio_text_lines, Underivable::IstioText),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, why)| format!("not re-derived: {n} {}", why.why()))
        .collect()
    }
}

/// Reads records from every input, in order, calling `each` for each; a bounded amount of memory is
/// used whatever the input size. An invalid line stops the run (exit 2) unless `skip_invalid`.
pub fn for_each_record(
    inputs: Vec<Input>,
    skip_invalid: bool,
    progress: &super::progress::Progress,
    mut each: impl FnMut(&Source, Record) -> Result<(), Failure>,
) -> Result<ReadStats, Failure> {
    let mut stats = ReadStats::default();
    let mut buf = Vec::with_capacity(8192);
    for mut input in inputs {
        let mut line_no = 0u64;
        loop {
            let source = Source { file: input.label.clone(), line: line_no + 1 };
            let consumed = input.next_line(&mut buf).map_err(|e| Failure::usage(format!("{source}: {e}")))?;
            if consumed == 0 {
                break;
            }
            line_no += 1;
            progress.advance(consumed as u64, stats.records);
            let parsed = std::str::from_utf8(&buf).map_err(|_| "not UTF-8".to_string()).and_then(parse_line);
            match parsed {
                Ok(Line::Skip) => {
                    stats.skipped_lines += 1;
                    let text = std::str::from_utf8(&buf).unwrap_or_default();
                    match super::accesslog::classify_skipped(text) {
                        Some(super::accesslog::Underivable::NoDecisionRecord) => {
                            stats.access_log_without_decision += 1
                        }
                        Some(super::accesslog::Underivable::IstioText) => stats.istio_text_lines += 1,
                        None => {}
                    }
                }
                Ok(Line::Record(record)) => {
                    stats.records += 1;
                    if super::accesslog::is_access_log_text(std::str::from_utf8(&buf).unwrap_or_default()) {
                        stats.access_log_records += 1;
                    }
                    match *record {
                        Record::Request(_) => stats.request_records += 1,
                        Record::Audit(_) => stats.audit_records += 1,
                    }
                    each(&source, *record)?;
                }
                Err(_) if skip_invalid => stats.invalid_lines += 1,
                Err(e) => {
                    return Err(Failure::usage(format!(
                        "{source}: {e} (use --skip-invalid to skip such lines)"
                    )))
                }
            }
        }
    }
    progress.finish();
    Ok(stats)
}

/// Decides a record, turning a bad record time into an input error.
pub fn decide(bundle: &mut Bundle, source: &Source, record: &Record) -> Result<Replayed, Failure> {
    bundle.decide(record).map_err(|e| Failure::usage(format!("{source}: {e}")))
}

/// A decision as JSON: `{decision, reason, rule, status, break_glass}`.
pub fn decision_json(d: &Decision) -> Value {
    serde_json::json!({
        "decision": d.verdict().word(),
        "reason": d.reason.code(),
        "rule": d.rule_label(),
        "status": if d.allowed { 200 } else { d.reason.http_status() },
        "break_glass": d.break_glass,
    })
}
