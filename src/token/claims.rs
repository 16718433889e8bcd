//! Reading claims of a verified token by name, including nested ones.
//!
//! A dotted path walks into objects. Claim names may contain dots themselves (Kubernetes puts its
//! details under `kubernetes.io`), so at each level the longest name that exists wins:
//! `kubernetes.io.namespace` is `claims["kubernetes.io"]["namespace"]`.

use serde_json::{Map, Value};

use crate::token::VerifiedToken;

impl VerifiedToken {
    /// The claim at `path`, if present, with its JSON type. Every claim of the token is reachable,
    /// registered ones (`sub`, `iss`, `jti`, `aud`, `exp`, `nbf`, `iat`, `nonce`) included.
    pub fn claim(&self, path: &str) -> Option<Value> {
        self.claim_ref(path).map(std::borrow::Cow::into_owned)
    }

    /// The claim at `path`, borrowed where it can be (policy conditions read claims this way).
    pub fn claim_ref(&self, path: &str) -> Option<std::borrow::Cow<'_, Value>> {
        use std::borrow::Cow::{Borrowed, Owned};
        // `sub`, `iss` and `jti` live in typed fields only, so the token keeps each claim once.
        match path {
            "sub" => return Some(Owned(Value::from(self.subject.as_str()))),
            "iss" => return Some(Owned(Value::from(self.issuer.as_str()))),
            "jti" => return self.token_id.as_deref().map(|j| Owned(Value::from(j))),
            _ => {}
        }
        if let Some(v) = lookup(&self.claims, path) {
            return Some(Borrowed(v));
        }
        // An identity rebuilt from an audit record (replay) knows its times but has no claims map.
        match path {
            "exp" => self.expires_at.map(|t| Owned(Value::from(t))),
            "iat" => self.issued_at.map(|t| Owned(Value::from(t))),
            _ => None,
        }
    }

    /// The claim at `path` as header text: strings as they are, numbers and booleans printed,
    /// arrays of strings comma-joined, anything else as compact JSON.
    pub fn claim_text(&self, path: &str) -> Option<String> {
        Some(match self.claim(path)? {
            Value::String(s) => s,
            Value::Array(items) if items.iter().all(Value::is_string) => {
                items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")
            }
            Value::Null => return None,
            other => other.to_string(),
        })
    }
}

/// Finds `path` in a claims object, preferring the longest dotted name at each level.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    // Split points from the right, so the longest existing name is tried first.
    for (at, _) in path.rmatch_indices('.') {
        let (name, rest) = (path.get(..at)?, path.get(at + 1..)?);
        if let Some(Value::Object(inner)) = claims.get(name) {
            if let Some(v) = lookup(inner, rest) {
                return Some(v);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_dotted_names_are_found() {
        let claims = json!({
            "kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "builder"}},
            "a": {"b": {"c": 1}},
            "scope": "read write",
        });
        let claims = claims.as_object().unwrap();
        assert_eq!(lookup(claims, "kubernetes.io.namespace"), Some(&json!("ci")));
        assert_eq!(lookup(claims, "kubernetes.io.serviceaccount.name"), Some(&json!("builder")));
        assert_eq!(lookup(claims, "a.b.c"), Some(&json!(1)));
        assert_eq!(lookup(claims, "scope"), Some(&json!("read write")));
        assert_eq!(lookup(claims, "a.x"), None);
        assert_eq!(lookup(claims, "missing"), None);
        assert_eq!(lookup(claims, "."), None);
    }

    #[test]
    fn claims_render_as_header_text() {
        let token = VerifiedToken {
            issuer_name: "i".into(),
            issuer: "https://i".into(),
            subject: "s".into(),
            token_id: Some("j".into()),
            expires_at: Some(10),
            profile: "oidc",
            issued_at: None,
            claims: json!({"groups": ["a", "b"], "n": 3, "o": {"k": true}}).as_object().unwrap().clone(),
        };
        assert_eq!(token.claim_text("groups").as_deref(), Some("a,b"));
        assert_eq!(token.claim_text("n").as_deref(), Some("3"));
        assert_eq!(token.claim_text("o").as_deref(), Some(r#"{"k":true}"#));
        assert_eq!(token.claim_text("sub").as_deref(), Some("s"));
        assert_eq!(token.claim_text("jti").as_deref(), Some("j"));
        assert_eq!(token.claim_text("iat"), None);
    }
}
