//! Audit records: one JSON line per decision, and one per configuration load. Never the token.
//!
//! The decision record's fields are a stable, documented schema (README, "Audit records").

#![forbid(unsafe_code)]

use serde::Serialize;

use crate::engine::Outcome;
use crate::policy::Mode;
use crate::request::HttpRequest;

/// The decision that dry-run rules would have made, when it differs from the enforced one.
#[derive(Debug, Serialize)]
pub struct DryRunRecord<'a> {
    pub decision: &'static str,
    pub reason: &'static str,
    pub rule: &'a str,
}

/// One decision, as written to the audit trail.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    /// Record type, always `decision`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Unix seconds when the decision was made.
    pub time: u64,
    /// `x-request-id`, if present.
    pub request_id: Option<&'a str>,
    /// The bundle that decided.
    pub bundle: &'a str,
    /// `enforce`, or `dry-run` when the bundle only reports (the request went upstream anyway).
    pub mode: &'static str,
    /// `allow` or `deny`: the decision of the enforced rules.
    pub decision: &'static str,
    /// Stable reason code.
    pub reason: &'static str,
    /// Deciding rule id, `default-deny`, or `-`.
    pub rule: &'a str,
    /// `info`, `warning` (denials, dry-run disagreements) or `high` (break-glass).
    pub severity: &'static str,
    /// The deciding rule is a break-glass rule.
    pub break_glass: bool,
    /// What dry-run rules would have decided, when that differs.
    pub dry_run: Option<DryRunRecord<'a>>,
    /// Verified subject (SPIFFE ID, service account, user ...), if a token verified.
    pub subject: Option<&'a str>,
    /// Issuer name, if a token verified.
    pub issuer: Option<&'a str>,
    /// The issuer's profile (`oidc`, `jwt-svid`, `kubernetes`, `access-token`), if a token verified.
    pub profile: Option<&'static str>,
    /// `jti`, if the token verified and carried one.
    pub token_id: Option<&'a str>,
    /// Token expiry (unix seconds), if a token verified.
    pub token_expires_at: Option<u64>,
    /// The mTLS peer identity, if the policy reads it and the connection had one.
    pub peer: Option<&'a str>,
    /// Request method.
    pub method: Option<&'a str>,
    /// Request host, normalized (as sent when the request was rejected as malformed).
    pub host: Option<&'a str>,
    /// Request path without query (as sent, with query, when the request was rejected).
    pub path: Option<&'a str>,
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
        let identity = outcome.identity.as_deref();
        let target = outcome.target.as_ref();
        let decision = &outcome.decision;
        let dry_run = outcome.dry_run.as_ref().map(|d| DryRunRecord {
            decision: d.verdict().word(),
            reason: d.reason.code(),
            rule: d.rule_label(),
        });
        let severity = if decision.break_glass {
            "high"
        } else if !decision.allowed || dry_run.is_some() {
            "warning"
        } else {
            "info"
        };
        AuditRecord {
            kind: "decision",
            time,
            request_id,
            bundle,
            mode: match outcome.mode {
                Mode::Enforce => "enforce",
                Mode::DryRun => "dry-run",
            },
            decision: decision.verdict().word(),
            reason: decision.reason.code(),
            rule: decision.rule_label(),
            severity,
            break_glass: decision.break_glass,
            dry_run,
            subject: identity.map(|i| i.subject.as_str()),
            issuer: identity.map(|i| i.issuer_name.as_str()),
            token_id: identity.and_then(|i| i.token_id.as_deref()),
            token_expires_at: identity.and_then(|i| i.expires_at),
            profile: identity.map(|i| i.profile),
            peer: request.peer,
            method: target.map(|t| t.method.as_str()).or(request.method),
            host: target.map(|t| t.host.as_str()).or(request.authority),
            path: target.map(|t| t.path.as_str()).or(request.path),
        }
    }

    /// The record as one JSON line: what `serde_json` writes for it (a test holds them equal),
    /// written directly. Through serde_json this took about 12,000 instructions per allowed request,
    /// most in its per-byte escaping; here a string with nothing to escape is copied whole (README,
    /// "Per-request cost of the hot path", audit record).
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(512);
        out.push_str("{\"type\":");
        json_str(&mut out, self.kind);
        out.push_str(",\"time\":");
        json_u64(&mut out, Some(self.time));
        out.push_str(",\"request_id\":");
        json_opt_str(&mut out, self.request_id);
        out.push_str(",\"bundle\":");
        json_str(&mut out, self.bundle);
        out.push_str(",\"mode\":");
        json_str(&mut out, self.mode);
        out.push_str(",\"decision\":");
        json_str(&mut out, self.decision);
        out.push_str(",\"reason\":");
        json_str(&mut out, self.reason);
        out.push_str(",\"rule\":");
        json_str(&mut out, self.rule);
        out.push_str(",\"severity\":");
        json_str(&mut out, self.severity);
        out.push_str(if self.break_glass { ",\"break_glass\":true" } else { ",\"break_glass\":false" });
        out.push_str(",\"dry_run\":");
        match &self.dry_run {
            None => out.push_str("null"),
            Some(d) => {
                out.push_str("{\"decision\":");
                json_str(&mut out, d.decision);
                out.push_str(",\"reason\":");
                json_str(&mut out, d.reason);
                out.push_str(",\"rule\":");
                json_str(&mut out, d.rule);
                out.push('}');
            }
        }
        out.push_str(",\"subject\":");
        json_opt_str(&mut out, self.subject);
        out.push_str(",\"issuer\":");
        json_opt_str(&mut out, self.issuer);
        out.push_str(",\"profile\":");
        json_opt_str(&mut out, self.profile);
        out.push_str(",\"token_id\":");
        json_opt_str(&mut out, self.token_id);
        out.push_str(",\"token_expires_at\":");
        json_u64(&mut out, self.token_expires_at);
        out.push_str(",\"peer\":");
        json_opt_str(&mut out, self.peer);
        out.push_str(",\"method\":");
        json_opt_str(&mut out, self.method);
        out.push_str(",\"host\":");
        json_opt_str(&mut out, self.host);
        out.push_str(",\"path\":");
        json_opt_str(&mut out, self.path);
        out.push('}');
        out
    }
}

/// A JSON number, or `null`.
fn json_u64(out: &mut String, value: Option<u64>) {
    use std::fmt::Write;
    match value {
        // Writing to a String cannot fail.
        Some(n) => drop(write!(out, "{n}")),
        None => out.push_str("null"),
    }
}

/// A JSON string, or `null`.
fn json_opt_str(out: &mut String, value: Option<&str>) {
    match value {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
}

/// A JSON string escaped as serde_json escapes it: `"` and `\`, the short forms of backspace, tab,
/// newline, form feed and carriage return, `\u00xx` (lower-case hex) for the other controls;
/// everything else as it is.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    if !crate::scan::contains_any(s.as_bytes(), *b"\"\\", 0x20) {
        // The common case: nothing to escape.
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (at, byte) in s.bytes().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0c => "\\f",
            b'\r' => "\\r",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Every byte escaped here is ASCII, so `start..at` falls on character boundaries.
        out.push_str(s.get(start..at).unwrap_or_default());
        if escaped.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX.get(usize::from(byte >> 4)).copied().unwrap_or(b'0')));
            out.push(char::from(HEX.get(usize::from(byte & 0xf)).copied().unwrap_or(b'0')));
        } else {
            out.push_str(escaped);
        }
        start = at + 1;
    }
    out.push_str(s.get(start..).unwrap_or_default());
    out.push('"');
}

/// The record written on every configuration load, accepted or refused.
#[derive(Debug, Serialize)]
pub struct LoadRecord<'a> {
    /// `policy_load` or `policy_refused`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Unix seconds.
    pub time: u64,
    /// The policy digest ([`policy_digest`]): the same for the bundle file (`meshward check`),
    /// the configuration Envoy delivers and the one istiod re-marshals.
    pub sha256: String,
    /// Bundle name, when the bundle was accepted.
    pub bundle: Option<&'a str>,
    /// Bundle version, when accepted.
    pub version: Option<&'a str>,
    /// Rule count, when accepted.
    pub rules: Option<usize>,
    /// Issuer count, when accepted.
    pub issuers: Option<usize>,
    /// Why it was refused.
    pub error: Option<String>,
    /// Milliseconds spent parsing and compiling the bundle (host clock), when measured.
    pub configure_ms: Option<u64>,
    /// The VM's linear memory after configuring, in bytes, when known.
    pub memory_bytes: Option<u64>,
    /// Where RSA PKCS#1 v1.5 and ECDSA signatures are checked: `host` (Envoy's BoringSSL, through
    /// `verify_signature`) or `wasm` (pure Rust); only in the plugin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_backend: Option<&'static str>,
}

/// SHA-256 of bytes, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hmac_sha256::Hash::hash(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The policy digest: SHA-256 (hex) of the configuration's canonical JSON form, so that a bundle
/// reads the same whether Envoy delivers it byte for byte or istiod re-marshals it (keys sorted,
/// `<>&` escaped, every number through a float64; `pilot/pkg/model/extensions.go`). Bytes that are
/// not JSON are digested as they are.
pub fn policy_digest(config: &[u8]) -> String {
    // Streamed into the hash: no parsed tree and no canonical copy of a 2 MB bundle in the VM's
    // memory (a `serde_json::Value` of 10,000 rules took the VM from 20 to 38 MiB at load).
    let mut hash = hmac_sha256::Hash::new();
    let streamed = std::str::from_utf8(config)
        .ok()
        .and_then(|text| write_canonical(&mut |part: &str| hash.update(part.as_bytes()), text.trim(), true));
    match streamed {
        Some(()) => hash.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        None => sha256_hex(config),
    }
}

/// The canonical form: no whitespace; object keys sorted by their UTF-8 bytes (as istiod sorts
/// them; a repeated key keeps its last value); strings with JSON's minimal escapes; every number as
/// the float64 the mesh carries it as, in shortest round-trip decimal without exponent
/// (`1796060000`, `0.25`). The top-level `$schema` is left out: it only points editors at a schema,
/// and the Istio renderer drops it. `None` when `json` is not JSON.
pub fn canonical_json(json: &str) -> Option<String> {
    let mut out = String::new();
    write_canonical(&mut |part: &str| out.push_str(part), json.trim(), true)?;
    Some(out)
}

/// Writes one JSON value (its exact text, as `RawValue` keeps it) in canonical form, level by level:
/// only the keys of one object at a time are held.
fn write_canonical(out: &mut dyn FnMut(&str), json: &str, top: bool) -> Option<()> {
    use serde_json::value::RawValue;
    match json.as_bytes().first()? {
        b'{' => {
            let members: std::collections::BTreeMap<String, &RawValue> = serde_json::from_str(json).ok()?;
            out("{");
            let kept = members.iter().filter(|(k, _)| !(top && k.as_str() == "$schema"));
            for (i, (key, value)) in kept.enumerate() {
                if i > 0 {
                    out(",");
                }
                out(&serde_json::to_string(key).ok()?);
                out(":");
                write_canonical(out, value.get(), false)?;
            }
            out("}");
        }
        b'[' => {
            let items: Vec<&RawValue> = serde_json::from_str(json).ok()?;
            out("[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out(",");
                }
                write_canonical(out, item.get(), false)?;
            }
            out("]");
        }
        b'"' => out(&serde_json::to_string(&serde_json::from_str::<String>(json).ok()?).ok()?),
        b't' | b'f' | b'n' => out(&serde_json::from_str::<serde_json::Value>(json).ok()?.to_string()),
        _ => {
            let n: serde_json::Number = serde_json::from_str(json).ok()?;
            match n.as_f64() {
                // `+ 0.0` turns -0 into 0, as JSON has one zero.
                Some(f) if f.is_finite() => out(&format!("{}", f + 0.0)),
                _ => out(&n.to_string()),
            }
        }
    }
    Some(())
}

impl<'a> LoadRecord<'a> {
    /// The record of an accepted or refused configuration.
    pub fn new(config: &[u8], result: Result<&'a crate::Engine, &crate::ConfigError>, time: u64) -> Self {
        Self::with_digest(policy_digest(config), result, time)
    }

    /// The same, given the configuration's [`policy_digest`] (so the configuration itself need not
    /// be kept until the record is written).
    pub fn with_digest(
        sha256: String,
        result: Result<&'a crate::Engine, &crate::ConfigError>,
        time: u64,
    ) -> Self {
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
                configure_ms: None,
                memory_bytes: None,
                signature_backend: None,
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
                configure_ms: None,
                memory_bytes: None,
                signature_backend: None,
            },
        }
    }

    /// Adds what configuring cost: the time it took and the memory it left the VM with.
    pub fn with_cost(self, configure_ms: Option<u64>, memory_bytes: Option<u64>) -> Self {
        LoadRecord { configure_ms, memory_bytes, ..self }
    }

    /// Adds where signatures are checked (`host` or `wasm`).
    pub fn with_signature_backend(self, backend: &'static str) -> Self {
        LoadRecord { signature_backend: Some(backend), ..self }
    }

    /// The record as one JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| format!("{{\"type\":\"{}\"}}", self.kind))
    }
}

/// The record written for every remote key fetch.
#[derive(Debug, Serialize)]
pub struct KeyFetchRecord<'a> {
    /// Always `key_fetch`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Unix seconds.
    pub time: u64,
    /// The bundle.
    pub bundle: &'a str,
    /// The issuer's configured name.
    pub issuer: &'a str,
    /// The path fetched (discovery document or JWK Set).
    pub path: &'a str,
    /// `installed`, `discovered` or `failed`.
    pub outcome: &'static str,
    /// How many keys are in use, the `jwks_uri` found, or why the fetch failed.
    pub detail: String,
}

impl<'a> KeyFetchRecord<'a> {
    /// The record of one fetch.
    pub fn new(
        bundle: &'a str,
        issuer: &'a str,
        path: &'a str,
        outcome: &crate::token::remote::FetchOutcome,
        time: u64,
    ) -> Self {
        use crate::token::remote::FetchOutcome;
        let detail = match outcome {
            FetchOutcome::Installed { keys, skipped } if skipped.is_empty() => format!("{keys} keys in use"),
            FetchOutcome::Installed { keys, skipped } => {
                format!("{keys} keys in use; {}", skipped.join("; "))
            }
            FetchOutcome::Discovered { jwks_path } => format!("jwks_uri path {jwks_path}"),
            FetchOutcome::Failed(why) => why.clone(),
        };
        KeyFetchRecord { kind: "key_fetch", time, bundle, issuer, path, outcome: outcome.label(), detail }
    }

    /// The record as one JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{\"type\":\"key_fetch\"}".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::{AuditRecord, DryRunRecord};

    /// Strings that need every kind of escaping, and none.
    fn strings() -> Vec<String> {
        let mut all: Vec<String> = (0u8..0x20).map(|b| format!("a{}b", char::from(b))).collect();
        all.extend(
            [
                "",
                "plain",
                "\"",
                "\\",
                "\\\"",
                "quote\"and\\slash",
                "é ü 日本 🔒",
                "\u{7f}\u{80}\u{2028}",
                "x\ny\r\tz",
            ]
            .map(String::from),
        );
        all.push((0u8..0x80).map(char::from).collect());
        all
    }

    #[test]
    fn the_written_json_is_what_serde_json_writes() {
        let strings = strings();
        let pick = |i: usize| strings.get(i % strings.len()).map_or("", String::as_str);
        for i in 0..strings.len() * 3 {
            let some = |k: usize| (i % (k + 2) != 0).then(|| pick(i + k));
            let record = AuditRecord {
                kind: "decision",
                time: (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                request_id: some(1),
                bundle: pick(i + 2),
                mode: if i % 2 == 0 { "enforce" } else { "dry-run" },
                decision: "allow",
                reason: "allowed",
                rule: pick(i + 3),
                severity: "info",
                break_glass: i % 3 == 0,
                dry_run: (i % 4 == 0).then(|| DryRunRecord {
                    decision: "deny",
                    reason: "policy_denied",
                    rule: pick(i + 4),
                }),
                subject: some(5),
                issuer: some(6),
                profile: (i % 5 != 0).then_some("oidc"),
                token_id: some(7),
                token_expires_at: (i % 3 != 1).then_some(u64::MAX - i as u64),
                peer: some(8),
                method: some(9),
                host: some(10),
                path: some(11),
            };
            let expected = serde_json::to_string(&record).unwrap_or_default();
            assert!(!expected.is_empty());
            assert_eq!(record.to_json(), expected);
        }
    }
}
