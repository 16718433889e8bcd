//! Compiling a checked bundle ([`BundleConfig`]) into an [`Engine`]: the bundle's fields are the
//! configuration's (`crate::config`); what they become at run time is the engine's.

use crate::config::{BundleConfig, CompileWarning, ConfigError};
use crate::engine::Engine;
use crate::policy::{Policy, RouteParts, Rule};
use crate::token::profile::{valid_trust_domain, Profile};
use crate::token::{Algorithm, Issuer, IssuerSpec, Issuers};
use std::collections::HashSet;

impl BundleConfig {
    /// Checks and compiles the bundle. Returns the engine and warnings (such as skipped keys).
    pub fn compile(self) -> Result<(Engine, Vec<CompileWarning>), ConfigError> {
        let mut warnings = Vec::new();
        if self.name.trim().is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        let s = &self.settings;
        let named_headers = [
            ("identity_header".to_string(), &s.identity_header),
            ("issuer_header".to_string(), &s.issuer_header),
        ];
        let claim_headers = s.claim_headers.keys().map(|h| (format!("claim_headers.{h}"), h));
        let mut seen = HashSet::new();
        for (field, value) in named_headers.into_iter().chain(claim_headers) {
            if !is_header_name(value) || value == "authorization" || value == "host" {
                return Err(ConfigError::new(
                    format!("settings.{field}"),
                    format!("{value:?} is not a lower-case HTTP header name meshward may set"),
                ));
            }
            if !seen.insert(value.as_str()) {
                return Err(ConfigError::new(
                    format!("settings.{field}"),
                    format!("header {value:?} is set twice"),
                ));
            }
        }
        if let Some((header, _)) = s.claim_headers.iter().find(|(_, claim)| claim.is_empty()) {
            return Err(ConfigError::new(format!("settings.claim_headers.{header}"), "names no claim"));
        }
        if !(256..=65536).contains(&s.max_token_bytes) {
            return Err(ConfigError::new("settings.max_token_bytes", "must be between 256 and 65536"));
        }
        if s.token_sources.is_empty() {
            return Err(ConfigError::new("settings.token_sources", "at least one source is required"));
        }
        let mut token_sources = Vec::new();
        for (i, source) in s.token_sources.iter().enumerate() {
            token_sources.push(
                crate::token::source::TokenSource::compile(source)
                    .map_err(|e| ConfigError::new(format!("settings.token_sources[{i}]"), e.to_string()))?,
            );
        }
        if !(0.0..=1.0).contains(&s.audit_allow_sample_rate) {
            return Err(ConfigError::new("settings.audit_allow_sample_rate", "must be between 0.0 and 1.0"));
        }
        if s.token_cache_entries > 1_000_000 {
            return Err(ConfigError::new("settings.token_cache_entries", "must be at most 1000000"));
        }
        if s.realm.contains(['"', '\\']) || s.realm.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "settings.realm",
                "must not contain quotes, backslashes or controls",
            ));
        }

        if self.issuers.is_empty() {
            return Err(ConfigError::new("issuers", "at least one issuer is required"));
        }
        let mut issuers = Vec::new();
        let mut names = HashSet::new();
        let mut iss_values = HashSet::new();
        for (i, cfg) in self.issuers.into_iter().enumerate() {
            let at = |f: &str| format!("issuers[{i}].{f}");
            if cfg.name.is_empty() || !names.insert(cfg.name.clone()) {
                return Err(ConfigError::new(at("name"), "must be non-empty and unique"));
            }
            if cfg.issuer.is_empty() || !iss_values.insert(cfg.issuer.clone()) {
                return Err(ConfigError::new(at("issuer"), "must be non-empty and unique"));
            }
            if cfg.audiences.is_empty() || cfg.audiences.iter().any(String::is_empty) {
                return Err(ConfigError::new(at("audiences"), "at least one non-empty audience is required"));
            }
            if cfg.algorithms.is_empty() {
                return Err(ConfigError::new(at("algorithms"), "at least one algorithm is required"));
            }
            let profile = match (cfg.profile.as_str(), &cfg.trust_domain) {
                ("oidc", None) => Profile::Oidc,
                ("kubernetes", None) => Profile::Kubernetes,
                ("access-token", None) => Profile::AccessToken,
                ("jwt-svid", Some(td)) if valid_trust_domain(td) => {
                    Profile::JwtSvid { trust_domain: td.clone() }
                }
                ("jwt-svid", Some(td)) => {
                    return Err(ConfigError::new(
                        at("trust_domain"),
                        format!("{td:?} is not a SPIFFE trust domain name"),
                    ))
                }
                ("jwt-svid", None) => {
                    return Err(ConfigError::new(
                        at("trust_domain"),
                        "a jwt-svid issuer needs its trust domain",
                    ))
                }
                (p, Some(_)) if Profile::NAMES.contains(&p) => {
                    return Err(ConfigError::new(
                        at("trust_domain"),
                        "only a jwt-svid issuer has a trust domain",
                    ))
                }
                (p, _) => {
                    return Err(ConfigError::new(
                        at("profile"),
                        format!("unknown profile {p:?} (oidc, jwt-svid, kubernetes, access-token)"),
                    ))
                }
            };
            let mut algorithms = Vec::new();
            for (j, name) in cfg.algorithms.iter().enumerate() {
                let field = format!("issuers[{i}].algorithms[{j}]");
                let alg = Algorithm::from_name(name).ok_or_else(|| {
                    ConfigError::new(
                        &field,
                        format!("unsupported algorithm {name:?} (RS256/384/512, PS256/384/512, ES256, ES384, ES512, EdDSA)"),
                    )
                })?;
                if alg.is_hmac() && cfg.hmac_secret.is_none() {
                    return Err(ConfigError::new(
                        field,
                        format!(
                            "{name} needs the issuer's `hmac_secret`: HMAC is only used by explicit opt-in"
                        ),
                    ));
                }
                if !profile.allows(alg) {
                    return Err(ConfigError::new(
                        field,
                        format!("{name} is not allowed for {} tokens", profile.name()),
                    ));
                }
                algorithms.push(alg);
            }
            let hmac_secret = match &cfg.hmac_secret {
                None => None,
                Some(text) => {
                    use base64::Engine as _;
                    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(text.trim_end_matches('='))
                        .map_err(|_| ConfigError::new(at("hmac_secret"), "must be base64url"))?;
                    if secret.len() < 32 {
                        return Err(ConfigError::new(at("hmac_secret"), "must be at least 32 bytes"));
                    }
                    if !algorithms.iter().any(|a| a.is_hmac()) {
                        return Err(ConfigError::new(
                            at("hmac_secret"),
                            "is set but no HS256/384/512 algorithm is allowed",
                        ));
                    }
                    Some(secret)
                }
            };
            if cfg.clock_skew_seconds > 300 {
                return Err(ConfigError::new(at("clock_skew_seconds"), "must be at most 300"));
            }
            if !cfg.require_expiry && matches!(profile, Profile::JwtSvid { .. }) {
                return Err(ConfigError::new(at("require_expiry"), "JWT-SVIDs always carry exp"));
            }
            for (field, value) in
                [("max_lifetime_seconds", cfg.max_lifetime_seconds), ("max_age_seconds", cfg.max_age_seconds)]
            {
                if value == Some(0) {
                    return Err(ConfigError::new(at(field), "must be positive"));
                }
            }
            if let Some(remote) = &cfg.remote_jwks {
                remote.validate(&cfg.issuer).map_err(|(field, message)| {
                    ConfigError::new(at(&format!("remote_jwks.{field}")), message)
                })?;
            }
            let (issuer, skipped) = Issuer::new(IssuerSpec {
                name: cfg.name,
                issuer_url: cfg.issuer.clone(),
                remote_jwks: cfg.remote_jwks,
                issuer: cfg.issuer,
                profile,
                audiences: cfg.audiences,
                algorithms,
                jwks: cfg.jwks.keys,
                hmac_secret,
                clock_skew_seconds: cfg.clock_skew_seconds,
                require_expiry: cfg.require_expiry,
                max_lifetime_seconds: cfg.max_lifetime_seconds,
                max_age_seconds: cfg.max_age_seconds,
                certificate_binding: cfg.certificate_binding,
            })
            .map_err(|e| ConfigError::new(at("jwks"), e))?;
            warnings.extend(skipped.into_iter().map(|(key, error)| CompileWarning::SkippedKey {
                issuer: i,
                key,
                error,
            }));
            issuers.push(issuer);
        }

        // Sized once: a Vec grown by doubling holds up to twice the rules' room (both the old and the
        // new buffer while it grows), and 10,000 rules are megabytes.
        let mut rules = Vec::with_capacity(self.rules.len());
        // The first rule with an id an earlier rule has, found on borrowed ids before compiling
        // (rather than a copy of every id held while the rules compile); reported in its turn.
        let reused_id = {
            let mut ids = HashSet::with_capacity(self.rules.len());
            self.rules.iter().position(|cfg| !ids.insert(cfg.id.as_str()))
        };
        let mut parts = RouteParts::default();
        for (i, cfg) in self.rules.into_iter().enumerate() {
            if reused_id == Some(i) {
                return Err(ConfigError::new(
                    format!("rules[{i}].id"),
                    format!("{:?} is used twice", cfg.id),
                ));
            }
            let rule = Rule::compile_sharing(cfg, &names, self.mode, &mut parts)
                .map_err(|err| ConfigError::new(format!("rules[{i}].{}", err.field), err.message))?;
            rules.push(rule);
        }
        let issuers = Issuers::new(issuers, self.settings.max_token_bytes);
        let engine = Engine::new(
            (self.name, self.version, self.mode),
            token_sources,
            issuers,
            Policy::new(rules),
            self.revoked,
            self.settings,
        );
        Ok((engine, warnings))
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(':')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
