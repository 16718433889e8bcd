//! Reading claims of a verified token by name, including nested ones.
//!
//! A dotted path walks into objects. Claim names may contain dots themselves (Kubernetes puts its
//! details under `kubernetes.io`), so at each level the longest name that exists wins:
//! `kubernetes.io.namespace` is `claims["kubernetes.io"]["namespace"]`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::token::VerifiedToken;

/// The claims of a verified token, by name, with their JSON types: sorted by name in one boxed
/// slice. A cache holds thousands of tokens, and a token's few claims in a B-tree node took more
/// than twice the room; a name is found by binary search, as fast for a handful of claims.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Claims(Box<[(Box<str>, Value)]>);

impl Claims {
    /// The claim named `name` (top level only; see [`VerifiedToken::claim`] for dotted paths).
    pub fn get(&self, name: &str) -> Option<&Value> {
        let found = self.0.binary_search_by(|(key, _)| (**key).cmp(name)).ok()?;
        self.0.get(found).map(|(_, value)| value)
    }

    /// Whether there is a claim named `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The claims in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(key, value)| (&**key, value))
    }

    /// How many claims there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Map<String, Value>> for Claims {
    fn from(map: Map<String, Value>) -> Self {
        // A `Map` iterates in name order (serde_json without `preserve_order`); sorted again
        // anyway, so lookups never depend on that feature.
        let mut claims: Vec<(Box<str>, Value)> =
            map.into_iter().map(|(k, v)| (k.into_boxed_str(), v)).collect();
        claims.sort_by(|(a, _), (b, _)| a.cmp(b));
        Claims(claims.into_boxed_slice())
    }
}

impl Serialize for Claims {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Map::deserialize(deserializer).map(Claims::from)
    }
}

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
        if let Some(v) = lookup_claims(&self.claims, path) {
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

/// [`lookup`] at the top level, in a token's [`Claims`].
fn lookup_claims<'a>(claims: &'a Claims, path: &str) -> Option<&'a Value> {
    lookup_with(|name| claims.get(name), path)
}

/// Finds `path` in a claims object, preferring the longest dotted name at each level.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    lookup_with(|name| claims.get(name), path)
}

/// Finds `path` through `get` (the top level's members), then inside objects, preferring the
/// longest dotted name at each level.
fn lookup_with<'a>(get: impl Fn(&str) -> Option<&'a Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = get(path) {
        return Some(v);
    }
    // Split points from the right, so the longest existing name is tried first.
    for (at, _) in path.rmatch_indices('.') {
        let (name, rest) = (path.get(..at)?, path.get(at + 1..)?);
        if let Some(Value::Object(inner)) = get(name) {
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
            claims: json!({"groups": ["a", "b"], "n": 3, "o": {"k": true}})
                .as_object()
                .unwrap()
                .clone()
                .into(),
        };
        assert_eq!(token.claim_text("groups").as_deref(), Some("a,b"));
        assert_eq!(token.claim_text("n").as_deref(), Some("3"));
        assert_eq!(token.claim_text("o").as_deref(), Some(r#"{"k":true}"#));
        assert_eq!(token.claim_text("sub").as_deref(), Some("s"));
        assert_eq!(token.claim_text("jti").as_deref(), Some("j"));
        assert_eq!(token.claim_text("iat"), None);
    }
}
