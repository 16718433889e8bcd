//! The plugin configuration (a policy bundle) as JSON, and its compilation into an [`Engine`].
//!
//! This is what Envoy's `configuration` and Istio's `pluginConfig` deliver. Unknown fields are errors,
//! and every error names the field it concerns, so a refused configuration says what to fix.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::policy::{Mode, RuleConfig};

/// Why a configuration was refused: the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Where, as a path such as `issuers[0].audiences`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { field: field.into(), message: message.into() }
    }
}

/// Something a bundle compiles despite, reported to the operator (the plugin logs it, `check`
/// shows it as a lint finding).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileWarning {
    /// A key of an issuer's inline key set is unusable and skipped (the others are used).
    #[error("issuers[{issuer}].jwks.keys[{key}] skipped: {error}")]
    SkippedKey {
        /// The issuer's index in `issuers`.
        issuer: usize,
        /// The key's index in the issuer's `jwks.keys`.
        key: usize,
        /// Why the key is unusable.
        error: String,
    },
}

impl CompileWarning {
    /// The field the warning concerns, as a path such as `issuers[0].jwks.keys[1]`.
    pub fn field(&self) -> String {
        match self {
            CompileWarning::SkippedKey { issuer, key, .. } => format!("issuers[{issuer}].jwks.keys[{key}]"),
        }
    }

    /// What is wrong with the field.
    pub fn message(&self) -> String {
        match self {
            CompileWarning::SkippedKey { error, .. } => format!("key skipped: {error}"),
        }
    }
}

/// A policy bundle: issuers to trust, rules to enforce, and plugin settings.
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    /// The JSON Schema the file follows (for editors); ignored.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The bundle's name, reported in load records and audit lines.
    pub name: String,
    /// A version label (for example a Git revision).
    #[serde(default)]
    pub version: String,
    /// Trusted issuers.
    pub issuers: Vec<IssuerConfig>,
    /// `enforce` (default), or `dry-run`: every decision is computed and audited, and every request
    /// is let through. Rules may set their own mode.
    #[serde(default)]
    pub mode: Mode,
    /// Access rules; anything they do not allow is denied.
    pub rules: Vec<RuleConfig>,
    /// Revoked tokens and subjects: rejected from the next configuration on, cached or not.
    #[serde(default)]
    pub revoked: Revoked,
    /// Plugin settings.
    #[serde(default)]
    pub settings: Settings,
}

/// Deny-lists that take effect as soon as a configuration carrying them is loaded.
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Revoked {
    /// Revoked token ids (`jti`).
    pub token_ids: Vec<String>,
    /// Revoked subjects (`sub`), exact.
    pub subjects: Vec<String>,
}

/// A trusted token issuer.
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Short name, used by rules (`issuers`) and in audit records.
    pub name: String,
    /// The exact `iss` claim value.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one of them.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms (RS256/384/512, PS256/384/512, ES256, ES384, ES512, EdDSA; HS256/384/512
    /// only together with `hmac_secret`).
    pub algorithms: Vec<String>,
    /// `oidc` (default), `jwt-svid`, `kubernetes` or `access-token`: the rules its tokens follow.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// For `jwt-svid`: the SPIFFE trust domain every subject must belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// The issuer's public keys as a JWK Set (`{"keys": [...]}`).
    #[serde(default)]
    pub jwks: JwkSet,
    /// Fetch the issuer's keys (JWKS URI or OIDC discovery) through an Envoy cluster, refreshed
    /// periodically; used together with any inline `jwks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_jwks: Option<crate::token::remote::RemoteJwksConfig>,
    /// Opt-in to HMAC: the shared secret, base64url (at least 32 bytes). Never needed otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret: Option<String>,
    /// Tolerated clock difference for `exp`, `nbf` and `iat`, in seconds (at most 300).
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
    /// Refuse tokens without `exp` (default true; `jwt-svid` always requires it).
    #[serde(default = "default_true")]
    pub require_expiry: bool,
    /// Refuse tokens whose lifetime (`exp - iat`) is longer than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime_seconds: Option<u64>,
    /// Refuse tokens issued (`iat`) longer ago than this, on every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u64>,
    /// Client-certificate binding of tokens (RFC 8705 `cnf.x5t#S256`): `off` (default),
    /// `if-present` (bound tokens must match the mTLS peer certificate) or `required`.
    #[serde(default)]
    pub certificate_binding: crate::token::CertificateBinding,
}

fn default_profile() -> String {
    "oidc".into()
}

fn default_true() -> bool {
    true
}

/// A JWK Set (RFC 7517 section 5).
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct JwkSet {
    /// The keys; each is checked on its own, and an unusable one is skipped with a warning.
    pub keys: Vec<Value>,
}

/// Plugin settings.
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Upstream header that carries the verified subject; a client-supplied copy is always removed.
    pub identity_header: String,
    /// Upstream header that carries the verified issuer name; a client-supplied copy is removed.
    pub issuer_header: String,
    /// The `realm` of `WWW-Authenticate` challenges.
    pub realm: String,
    /// Tokens longer than this many bytes are rejected before any decoding.
    pub max_token_bytes: usize,
    /// How many verified tokens to keep so their signatures are checked once (0 disables).
    pub token_cache_entries: usize,
    /// Further upstream headers, each set to a claim of the verified token (dotted path for nested
    /// claims, e.g. `kubernetes.io.namespace`). Client-supplied copies are always removed.
    pub claim_headers: std::collections::BTreeMap<String, String>,
    /// Remove the `Authorization` header before the request goes upstream.
    pub remove_token: bool,
    /// Where to look for the token, in order (default `Authorization: Bearer`).
    pub token_sources: Vec<crate::token::source::TokenSourceConfig>,
    /// Share of allowed reads (GET, HEAD, OPTIONS) to audit, 0.0 to 1.0; denials, writes,
    /// dry-run disagreements and break-glass decisions are always audited.
    pub audit_allow_sample_rate: f64,
    /// Also set each audit record as filter state `wasm.meshward_audit`, for access logs that print
    /// `%FILTER_STATE(wasm.meshward_audit:PLAIN)%`. Off by default: it is most of the audit's cost
    /// per request (the record is in Envoy's log either way).
    pub audit_filter_state: bool,
    /// Leave the reason code out of deny bodies and challenges (it stays in the audit record).
    pub hide_deny_reason: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            identity_header: "x-meshward-subject".into(),
            issuer_header: "x-meshward-issuer".into(),
            realm: "meshward".into(),
            max_token_bytes: 8192,
            token_cache_entries: 10_000,
            claim_headers: Default::default(),
            remove_token: false,
            token_sources: crate::token::source::default_sources(),
            audit_allow_sample_rate: 1.0,
            audit_filter_state: false,
            hide_deny_reason: false,
        }
    }
}

/// The JSON with every integral float in u64's range rewritten as an integer, or `None` when
/// there is none (or it is not JSON).
fn integral_floats_as_integers(json: &[u8]) -> Option<Vec<u8>> {
    fn rewrite(value: &mut serde_json::Value) -> bool {
        use serde_json::Value;
        match value {
            Value::Number(n) => match n.as_f64().filter(|_| n.is_f64()) {
                // 2^64 is exact as a float64; below it every integral float64 fits a u64.
                Some(f) if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) => {
                    let text = format!("{f}");
                    match text.parse::<u64>() {
                        Ok(integer) => {
                            *value = Value::from(integer);
                            true
                        }
                        Err(_) => false,
                    }
                }
                _ => false,
            },
            // `|` rather than `any`: every member is rewritten, not only up to the first.
            Value::Array(items) => items.iter_mut().map(rewrite).fold(false, |a, b| a | b),
            Value::Object(members) => members.values_mut().map(rewrite).fold(false, |a, b| a | b),
            _ => false,
        }
    }
    let mut value: serde_json::Value = serde_json::from_slice(json).ok()?;
    if !rewrite(&mut value) {
        return None;
    }
    serde_json::to_vec(&value).ok()
}

fn default_clock_skew() -> u64 {
    30
}

impl BundleConfig {
    /// Parses a bundle from JSON, naming the field of any error. Integral numbers written as
    /// floats (`1.79606e9`, `10000.0`: what JSON tools that carry every number as a float64 may
    /// write) are accepted where an integer is expected.
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        Self::from_exact_json(json).or_else(|e| match integral_floats_as_integers(json) {
            Some(rewritten) => Self::from_exact_json(&rewritten).map_err(|_| e),
            None => Err(e),
        })
    }

    fn from_exact_json(json: &[u8]) -> Result<Self, ConfigError> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let bundle = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { "configuration".to_string() } else { field };
            ConfigError::new(field, e.into_inner().to_string())
        })?;
        de.end().map_err(|e| ConfigError::new("configuration", e.to_string()))?;
        Ok(bundle)
    }
}

/// The JSON Schema of a bundle, for editors (generated from the same types the plugin parses).
#[cfg(not(target_arch = "wasm32"))]
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(BundleConfig);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}
