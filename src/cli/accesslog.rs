//! Envoy access-log lines as records.
//!
//! `meshward render envoy` configures a JSON access log (`json_format`): one object per request
//! with `time`, `method`, `authority`, `path`, `response_code`, `request_id`, `peer` (the
//! downstream certificate's URI SAN) and `meshward`, the plugin's audit record for the request as a
//! string (filter state `wasm.meshward_audit`, set when the bundle has
//! `settings.audit_filter_state` and the decision was audited). Such a line is read as its audit
//! record: the policy is evaluated on the recorded identity.
//!
//! An access log never carries the token, so a line without the audit record cannot be re-derived:
//! whether the request had a token, and whose, is unknown. Those lines are counted and reported,
//! never guessed at. Istio's default access log (`TEXT`, mesh config `accessLogFormat` unset)
//! has method, path, authority, response code and request id but no caller identity at all
//! (neither the token, nor the peer's URI SAN, nor meshward's verified subject), so its lines
//! are counted the same way.

use serde_json::Value;

use super::records::{self, Line, Record};

/// Why a recognised log line cannot be decided again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Underivable {
    /// A JSON access-log line whose `meshward` field is empty (`null` or `-`).
    NoDecisionRecord,
    /// A line of Istio's default text access log.
    IstioText,
}

impl Underivable {
    /// What the user is told about such lines.
    pub fn why(self) -> &'static str {
        match self {
            Underivable::NoDecisionRecord => {
                "access-log lines without meshward's audit record (set settings.audit_filter_state; \
                 sampled-out allowed reads have none): an access log has no token, so the identity \
                 and the decision cannot be re-derived"
            }
            Underivable::IstioText => {
                "Istio default-format access-log lines: the format has no caller identity (no token, \
                 no peer URI SAN, no meshward subject), so no decision can be re-derived; use the \
                 JSON format of `meshward render envoy` or the plugin's audit records"
            }
        }
    }
}

/// Whether a JSON object is an Envoy access-log line (rather than a request or audit record).
pub fn is_access_log(value: &Value) -> bool {
    value.get("type").is_none() && value.get("response_code").is_some()
}

/// Whether a line's text is a JSON access-log line (a cheap check on text already parsed).
pub fn is_access_log_text(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with('{') && !t.starts_with("{\"type\"") && t.contains("\"response_code\"")
}

/// Reads an access-log line: its embedded audit record, or a skip when it has none (see
/// [`classify_skipped`]).
pub fn parse(value: Value) -> Result<Line, String> {
    let embedded = match value.get("meshward") {
        Some(Value::String(s)) if s.trim_start().starts_with('{') => records::parse_line(s)?,
        Some(Value::Object(_)) => match value.get("meshward").cloned() {
            Some(object) => records::parse_value(object)?,
            None => Line::Skip,
        },
        _ => return Ok(Line::Skip),
    };
    match embedded {
        Line::Record(record) if matches!(*record, Record::Audit(_)) => Ok(Line::Record(record)),
        _ => Err("access log: the `meshward` field is not a meshward audit record".into()),
    }
}

/// Why a line that was skipped (not a record) is a request whose decision cannot be re-derived,
/// if it is one.
pub fn classify_skipped(text: &str) -> Option<Underivable> {
    if is_access_log_text(text) {
        return Some(Underivable::NoDecisionRecord);
    }
    if is_istio_text(text) {
        return Some(Underivable::IstioText);
    }
    None
}

/// A line of Istio's default text format: `[START_TIME] "METHOD PATH PROTOCOL" CODE ...`.
fn is_istio_text(text: &str) -> bool {
    let Some(rest) = text.strip_prefix('[') else { return false };
    let Some((_, after)) = rest.split_once("] \"") else { return false };
    let Some((request, tail)) = after.split_once('"') else { return false };
    let mut parts = request.split(' ');
    let method_ok = parts.next().is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()));
    let protocol_ok = parts.nth(1).is_some_and(|p| p.starts_with("HTTP/"));
    let code_ok = tail.trim_start().split(' ').next().is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit()));
    method_ok && protocol_ok && code_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISTIO: &str = r#"[2026-11-30T20:00:11.308Z] "GET /v2/prod/web/manifests/1.0 HTTP/1.1" 200 - via_upstream - "-" 0 12 3 2 "-" "curl/8.5.0" "776e1f40" "registry.example.internal" "10.0.0.7:5000" inbound|5000|| 127.0.0.6:40000 10.0.0.7:5000 10.0.0.9:51234 outbound_.5000_._.registry.default.svc.cluster.local default"#;

    #[test]
    fn istio_default_lines_are_recognised_and_other_text_is_not() {
        assert_eq!(classify_skipped(ISTIO), Some(Underivable::IstioText));
        assert_eq!(classify_skipped("[2026-11-30 20:00:06.939][27386][warning][main] x"), None);
        assert_eq!(classify_skipped("hello"), None);
    }

    #[test]
    fn access_log_without_a_record_is_underivable() {
        let line = r#"{"authority":"a","meshward":null,"method":"GET","path":"/","response_code":401}"#;
        let value: Value = serde_json::from_str(line).unwrap_or_default();
        assert!(is_access_log(&value));
        assert!(matches!(parse(value), Ok(Line::Skip)));
        assert_eq!(classify_skipped(line), Some(Underivable::NoDecisionRecord));
    }
}
