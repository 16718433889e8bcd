//! Where a request's token comes from: a header (with an optional scheme such as `Bearer`), a query
//! parameter or a cookie, in a configured order. A request that carries two different tokens, or
//! one source twice, is refused: which one would the upstream believe?

use serde::{Deserialize, Serialize};

use crate::decision::Reason;
use crate::request::HttpRequest;
use crate::token::scheme_token;

/// One place to look for the token, as configured: exactly one of `header`, `query`, `cookie`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenSourceConfig {
    /// A request header (lower-case name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// With `header`: the authentication scheme before the token (`Bearer`); none means the whole
    /// value is the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// A query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// The default: `Authorization: Bearer <token>`.
pub fn default_sources() -> Vec<TokenSourceConfig> {
    vec![TokenSourceConfig {
        header: Some("authorization".into()),
        scheme: Some("Bearer".into()),
        query: None,
        cookie: None,
    }]
}

/// A checked token source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Header { name: String, scheme: Option<String> },
    Query(String),
    Cookie(String),
}

/// Why a configured token source is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenSourceError {
    /// The header is not named in lower case (header maps reach the plugin lower-cased).
    #[error("header {0:?} must be a lower-case header name")]
    HeaderName(String),
    /// The scheme is empty or more than one word.
    #[error("scheme must be one word, such as Bearer")]
    Scheme,
    /// Not exactly one place to look, or an unusable query or cookie name.
    #[error("name exactly one of `header` (optionally with `scheme`), `query` or `cookie`")]
    Shape,
}

impl TokenSource {
    /// Checks a configured source.
    pub fn compile(cfg: &TokenSourceConfig) -> Result<Self, TokenSourceError> {
        let named = |n: &String| !n.is_empty() && !n.contains(['=', ';', '&', ' ']);
        match (&cfg.header, &cfg.query, &cfg.cookie, &cfg.scheme) {
            (Some(h), None, None, scheme) => {
                if h.is_empty()
                    || !h.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                {
                    return Err(TokenSourceError::HeaderName(h.clone()));
                }
                if scheme.as_ref().is_some_and(|s| s.is_empty() || s.contains([' ', ','])) {
                    return Err(TokenSourceError::Scheme);
                }
                Ok(TokenSource::Header { name: h.clone(), scheme: scheme.clone() })
            }
            (None, Some(q), None, None) if named(q) => Ok(TokenSource::Query(q.clone())),
            (None, None, Some(c), None) if named(c) => Ok(TokenSource::Cookie(c.clone())),
            _ => Err(TokenSourceError::Shape),
        }
    }

    /// The token this source holds, `None` when it holds none.
    fn find<'r>(&self, request: &HttpRequest<'r>) -> Result<Option<&'r str>, Reason> {
        let found = match self {
            // Authorization values are collected once per request: read them in place.
            TokenSource::Header { name, scheme } if name == "authorization" => {
                scheme_token(&request.authorization, scheme.as_deref())
            }
            TokenSource::Header { name, scheme } => {
                let values: Vec<&str> =
                    request.headers.iter().filter(|(h, _)| h == name).map(|(_, v)| *v).collect();
                scheme_token(&values, scheme.as_deref())
            }
            TokenSource::Query(name) => {
                let query = request.path.and_then(|p| p.split_once('?')).map_or("", |(_, q)| q);
                single(
                    query
                        .split('&')
                        .filter_map(|pair| pair.split_once('='))
                        .filter(|(k, _)| k == name)
                        .map(|(_, v)| v),
                )
            }
            TokenSource::Cookie(name) => single(
                request
                    .headers
                    .iter()
                    .filter(|(h, _)| *h == "cookie")
                    .flat_map(|(_, v)| v.split(';'))
                    .filter_map(|c| c.trim().split_once('='))
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v),
            ),
        };
        match found {
            Ok(token) => Ok(Some(token)),
            Err(Reason::TokenMissing) => Ok(None),
            Err(reason) => Err(reason),
        }
    }
}

/// The one value, or missing / multiple; empty counts as missing.
fn single<'r>(mut values: impl Iterator<Item = &'r str>) -> Result<&'r str, Reason> {
    match (values.next(), values.next()) {
        (None, _) => Err(Reason::TokenMissing),
        (Some(_), Some(_)) => Err(Reason::TokenMultiple),
        (Some(""), None) => Err(Reason::TokenMissing),
        (Some(v), None) if v.contains([' ', '%', '+']) => Err(Reason::TokenMalformed),
        (Some(v), None) => Ok(v),
    }
}

/// The request's token across all sources: `Ok(None)` when there is none, `TokenMultiple` when
/// two sources hold different tokens.
#[cfg_attr(feature = "measure", inline(never))]
pub fn find_token<'r>(sources: &[TokenSource], request: &HttpRequest<'r>) -> Result<Option<&'r str>, Reason> {
    let mut found: Option<&'r str> = None;
    for source in sources {
        if let Some(token) = source.find(request)? {
            match found {
                Some(previous) if previous != token => return Err(Reason::TokenMultiple),
                _ => found = Some(token),
            }
        }
    }
    Ok(found)
}
