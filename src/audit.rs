//! Audit records: one JSON line per decision. Never contains the token itself.

use serde::Serialize;

use crate::engine::{HttpRequest, Outcome};

/// One decision, as written to the audit trail.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    /// Record type, always `decision`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Unix seconds when the decision was made.
    pub time: u64,
    /// The bundle that decided.
    pub bundle: &'a str,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Stable reason code.
    pub reason: &'static str,
    /// Deciding rule id, `default-deny`, or `-`.
    pub rule: &'a str,
    /// Verified subject, if any.
    pub subject: Option<&'a str>,
    /// Issuer name, if the token verified.
    pub issuer: Option<&'a str>,
    /// `jti`, if the token verified and carried one.
    pub token_id: Option<&'a str>,
    /// Token expiry, if the token verified.
    pub token_expires_at: Option<u64>,
    /// Request method.
    pub method: Option<&'a str>,
    /// Request host, normalized (as sent when the request was rejected as malformed).
    pub host: Option<&'a str>,
    /// Request path without query (as sent, with query, when the request was rejected).
    pub path: Option<&'a str>,
    /// `x-request-id`, if present.
    pub request_id: Option<&'a str>,
}

impl<'a> AuditRecord<'a> {
    /// Builds the record for an outcome.
    pub fn new(
        bundle: &'a str,
        request: &HttpRequest<'a>,
        outcome: &'a Outcome,
        time: u64,
        request_id: Option<&'a str>,
    ) -> Self {
        let identity = outcome.identity.as_ref();
        let target = outcome.target.as_ref();
        AuditRecord {
            kind: "decision",
            time,
            bundle,
            decision: if outcome.decision.allowed { "allow" } else { "deny" },
            reason: outcome.decision.reason.code(),
            rule: outcome.decision.rule_label(),
            subject: identity.map(|i| i.subject.as_str()),
            issuer: identity.map(|i| i.issuer_name.as_str()),
            token_id: identity.and_then(|i| i.token_id.as_deref()),
            token_expires_at: identity.map(|i| i.expires_at),
            method: target.map(|t| t.method.as_str()).or(request.method),
            host: target.map(|t| t.host.as_str()).or(request.authority),
            path: target.map(|t| t.path.as_str()).or(request.path),
            request_id,
        }
    }

    /// The record as one JSON line.
    pub fn to_json(&self) -> String {
        // Serializing these plain fields cannot fail; fall back to a minimal record regardless.
        serde_json::to_string(self)
            .unwrap_or_else(|_| format!("{{\"type\":\"decision\",\"reason\":\"{}\"}}", self.reason))
    }
}

/// The record written on every configuration load, accepted or refused.
#[derive(Debug, Serialize)]
pub struct LoadRecord<'a> {
    /// `policy_load` or `policy_refused`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Unix seconds.
    pub time: u64,
    /// SHA-256 of the configuration bytes, hex: identifies exactly what was loaded.
    pub sha256: String,
    /// Bundle name and version, when the bundle was accepted.
    pub bundle: Option<&'a str>,
    pub version: Option<&'a str>,
    /// Counts, when accepted.
    pub rules: Option<usize>,
    pub issuers: Option<usize>,
    /// Why it was refused.
    pub error: Option<String>,
}

impl<'a> LoadRecord<'a> {
    /// The record of an accepted or refused configuration.
    pub fn new(config: &[u8], result: Result<&'a crate::Engine, &crate::ConfigError>, time: u64) -> Self {
        let sha256 = hmac_sha256::Hash::hash(config).iter().map(|b| format!("{b:02x}")).collect();
        match result {
            Ok(engine) => LoadRecord {
                kind: "policy_load",
                time,
                sha256,
                bundle: Some(&engine.name),
                version: Some(&engine.version),
                rules: Some(engine.policy().rules().len()),
                issuers: Some(engine.issuers().iter().count()),
                error: None,
            },
            Err(e) => LoadRecord {
                kind: "policy_refused",
                time,
                sha256,
                bundle: None,
                version: None,
                rules: None,
                issuers: None,
                error: Some(e.to_string()),
            },
        }
    }

    /// The record as one JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| format!("{{\"type\":\"{}\"}}", self.kind))
    }
}
