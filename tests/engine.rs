//! Engine behaviour across requests: the verified-token cache and revocation lists, and verified
//! tokens shared between the VMs of one Envoy (src/shared.rs), with engines standing for VMs over
//! one in-memory shared data: one verification per token per process, and a shared entry never
//! trusted more than a local cache hit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use meshward::cli::dev::{jwks, SigningKey, TokenSpec};
use meshward::token::shared::{SharedStore, SharedTokens};
use meshward::token::Algorithm;
use meshward::{BundleConfig, Engine, HttpRequest, Reason, RecordedIdentity};
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000;

fn engine(key: &SigningKey, extra: serde_json::Value) -> Engine {
    let mut bundle = json!({
        "name": "t",
        "issuers": [{"name": "i", "issuer": "https://i.test", "audiences": ["api"],
                     "algorithms": ["EdDSA"], "jwks": jwks(&[key])}],
        "rules": [{"id": "r", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}],
                   "subjects": ["spiffe://t/*"]}],
    });
    for (k, v) in extra.as_object().unwrap() {
        bundle[k] = v.clone();
    }
    BundleConfig::from_json(bundle.to_string().as_bytes()).unwrap().compile().unwrap().0
}

fn token(key: &SigningKey, sub: &str, jti: Option<&str>, ttl: u64) -> String {
    let mut spec = TokenSpec::new("https://i.test", sub, "api", NOW, ttl);
    spec.token_id = jti.map(String::from);
    format!("Bearer {}", key.sign(&spec).unwrap())
}

fn decide(engine: &Engine, auth: &str, now: u64) -> Reason {
    let request = HttpRequest {
        method: Some("GET"),
        authority: Some("h"),
        path: Some("/x"),
        authorization: vec![auth],
        ..Default::default()
    };
    engine.authorize(&request, now).decision.reason
}

#[test]
fn a_token_is_verified_once_then_served_from_the_cache() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let engine = engine(&key, json!({}));
    let auth = token(&key, "spiffe://t/a", None, 300);
    for _ in 0..5 {
        assert_eq!(decide(&engine, &auth, NOW), Reason::Allowed);
    }
    let stats = engine.cache_stats();
    assert_eq!((stats.misses, stats.hits), (1, 4));
}

#[test]
fn a_cached_token_is_not_used_after_it_expires() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let engine = engine(&key, json!({}));
    let auth = token(&key, "spiffe://t/a", None, 60);
    assert_eq!(decide(&engine, &auth, NOW), Reason::Allowed);
    // Past exp but within the default 30 s skew: verified again, still accepted.
    assert_eq!(decide(&engine, &auth, NOW + 80), Reason::Allowed);
    assert_eq!(decide(&engine, &auth, NOW + 91), Reason::TokenExpired);
    assert_eq!(decide(&engine, &auth, NOW + 10), Reason::Allowed, "cached again on re-verification");
}

#[test]
fn revoked_token_ids_and_subjects_are_rejected_even_when_cached() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let engine =
        engine(&key, json!({"revoked": {"token_ids": ["leaked-1"], "subjects": ["spiffe://t/gone"]}}));
    let leaked = token(&key, "spiffe://t/a", Some("leaked-1"), 300);
    let gone = token(&key, "spiffe://t/gone", None, 300);
    let fine = token(&key, "spiffe://t/a", Some("ok-1"), 300);
    for _ in 0..2 {
        assert_eq!(decide(&engine, &leaked, NOW), Reason::TokenRevoked);
        assert_eq!(decide(&engine, &gone, NOW), Reason::TokenRevoked);
        assert_eq!(decide(&engine, &fine, NOW), Reason::Allowed);
    }
    assert_eq!(engine.cache_stats().hits, 3, "the second round was served from the cache");
    assert_eq!(Reason::TokenRevoked.http_status(), 401);
}

#[test]
fn the_cache_can_be_disabled() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let engine = engine(&key, json!({"settings": {"token_cache_entries": 0}}));
    let auth = token(&key, "spiffe://t/a", None, 300);
    assert_eq!(decide(&engine, &auth, NOW), Reason::Allowed);
    assert_eq!(decide(&engine, &auth, NOW), Reason::Allowed);
    assert_eq!(engine.cache_stats().hits, 0);
}

#[test]
fn upstream_headers_carry_the_identity_and_replace_client_copies() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let settings = json!({"settings": {
        "claim_headers": {"x-team": "team", "x-namespace": "kubernetes.io.namespace", "x-missing": "nope"},
        "remove_token": true,
    }});
    let engine = engine(&key, settings);
    let mut spec = TokenSpec::new("https://i.test", "spiffe://t/a", "api", NOW, 300);
    spec.claims.insert("team".into(), json!("payments"));
    spec.claims.insert("kubernetes.io".into(), json!({"namespace": "ci"}));
    let auth = format!("Bearer {}", key.sign(&spec).unwrap());
    let request = HttpRequest {
        method: Some("GET"),
        authority: Some("h"),
        path: Some("/x"),
        authorization: vec![&auth],
        ..Default::default()
    };
    let outcome = engine.authorize(&request, NOW);
    assert!(outcome.decision.allowed);
    let headers = engine.upstream_headers(outcome.identity.as_deref());
    let value = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
    assert_eq!(value("x-meshward-subject"), Some(Some("spiffe://t/a".into())));
    assert_eq!(value("x-meshward-issuer"), Some(Some("i".into())));
    assert_eq!(value("x-team"), Some(Some("payments".into())));
    assert_eq!(value("x-namespace"), Some(Some("ci".into())));
    // A configured header whose claim is absent is still listed, so a client copy is removed.
    assert_eq!(value("x-missing"), Some(None));
    assert_eq!(value("authorization"), Some(None), "the token is removed when remove_token is set");
}

#[test]
fn header_settings_that_would_clash_are_refused() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let jwks = jwks(&[&key]);
    for (settings, field) in [
        (json!({"claim_headers": {"authorization": "sub"}}), "settings.claim_headers.authorization"),
        (
            json!({"claim_headers": {"x-meshward-subject": "sub"}}),
            "settings.claim_headers.x-meshward-subject",
        ),
        (json!({"claim_headers": {"X-Upper": "sub"}}), "settings.claim_headers.X-Upper"),
        (json!({"identity_header": ":path"}), "settings.identity_header"),
    ] {
        let bundle = json!({"name": "t", "settings": settings, "rules": [],
            "issuers": [{"name": "i", "issuer": "https://i.test", "audiences": ["api"], "algorithms": ["EdDSA"], "jwks": jwks}]});
        let err = BundleConfig::from_json(bundle.to_string().as_bytes()).unwrap().compile().err().unwrap();
        assert_eq!(err.field, field);
    }
}

#[test]
fn deny_responses_follow_rfc_6750_and_can_hide_the_reason() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let shown = engine(&key, json!({}));
    let r = shown.deny_response(Reason::TokenExpired, Some("req-1"));
    assert_eq!(r.status, 401);
    let challenge = r.headers.iter().find(|(k, _)| k == "www-authenticate").unwrap().1.clone();
    assert_eq!(
        challenge,
        r#"Bearer realm="meshward", error="invalid_token", error_description="token_expired""#
    );
    assert_eq!(r.body, r#"{"reason":"token_expired","request_id":"req-1"}"#);
    let missing = shown.deny_response(Reason::TokenMissing, None);
    assert!(missing
        .headers
        .iter()
        .any(|(k, v)| k == "www-authenticate" && v == r#"Bearer realm="meshward""#));
    let forbidden = shown.deny_response(Reason::PolicyNoMatch, None);
    assert_eq!(forbidden.status, 403);
    assert!(!forbidden.headers.iter().any(|(k, _)| k == "www-authenticate"));

    let hidden = engine(&key, json!({"settings": {"hide_deny_reason": true, "realm": "payments"}}));
    let r = hidden.deny_response(Reason::TokenExpired, Some("req-2"));
    let challenge = r.headers.iter().find(|(k, _)| k == "www-authenticate").unwrap().1.clone();
    assert_eq!(challenge, r#"Bearer realm="payments", error="invalid_token""#);
    assert_eq!(r.body, r#"{"reason":"denied","request_id":"req-2"}"#);
}

#[test]
fn plain_allows_are_sampled_everything_else_is_always_audited() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let engine = engine(&key, json!({"settings": {"audit_allow_sample_rate": 0.25}}));
    let auth = token(&key, "spiffe://t/a", None, 300);
    let outcome = |method: &'static str, auth: &str| {
        let request = HttpRequest {
            method: Some(method),
            authority: Some("h"),
            path: Some("/x"),
            authorization: vec![auth],
            ..Default::default()
        };
        engine.authorize(&request, NOW)
    };
    let kept = (0..100).filter(|_| engine.should_audit(&outcome("GET", &auth))).count();
    assert_eq!(kept, 25);
    let denied = (0..10).filter(|_| engine.should_audit(&outcome("GET", "Bearer x"))).count();
    assert_eq!(denied, 10);
    let zero = engine_with_sample_rate(&key, 0.0);
    assert_eq!((0..10).filter(|_| zero.should_audit(&zero.authorize(&get(&auth), NOW))).count(), 0);
    // Writes are always audited, even at rate 0 (the rule here allows only GET: a denial).
    let put = HttpRequest { method: Some("PUT"), ..get(&auth) };
    assert!(zero.should_audit(&zero.authorize(&put, NOW)));
}

fn engine_with_sample_rate(key: &SigningKey, rate: f64) -> Engine {
    engine(key, json!({"settings": {"audit_allow_sample_rate": rate}}))
}

fn get(auth: &str) -> HttpRequest<'_> {
    HttpRequest {
        method: Some("GET"),
        authority: Some("h"),
        path: Some("/x"),
        authorization: vec![auth],
        ..Default::default()
    }
}

#[test]
fn claim_values_that_are_not_safe_header_values_are_not_forwarded() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let engine = engine(&key, json!({"settings": {"claim_headers": {"x-team": "team"}}}));
    let mut spec = TokenSpec::new("https://i.test", "spiffe://t/a", "api", NOW, 300);
    spec.claims.insert("team".into(), json!("payments\r\nx-admin: true"));
    let auth = format!("Bearer {}", key.sign(&spec).unwrap());
    let outcome = engine.authorize(&get(&auth), NOW);
    assert!(outcome.decision.allowed);
    let headers = engine.upstream_headers(outcome.identity.as_deref());
    assert!(headers.contains(&("x-team", None)), "{headers:?}");
}

#[test]
fn tokens_from_header_query_and_cookie_and_never_two_different_ones() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let sources = json!({"settings": {"token_sources": [
        {"header": "authorization", "scheme": "Bearer"},
        {"header": "x-workload-token"},
        {"query": "access_token"},
        {"cookie": "session"},
    ]}});
    let engine = engine(&key, sources);
    let a = token(&key, "spiffe://t/a", Some("a"), 300);
    let b = token(&key, "spiffe://t/b", Some("b"), 300);
    let (a_raw, b_raw) = (a.trim_start_matches("Bearer "), b.trim_start_matches("Bearer "));
    let decide = |auth: Vec<&str>, path: &str, headers: Vec<(&str, &str)>| {
        let request = HttpRequest {
            method: Some("GET"),
            authority: Some("h"),
            path: Some(path),
            authorization: auth,
            headers,
            peer: None,
            peer_certificate_sha256: None,
        };
        engine.authorize(&request, NOW).decision.reason
    };
    let query_a = format!("/x?page=2&access_token={a_raw}");
    let cookie_a = format!("theme=dark; session={a_raw}");
    let cookie_b = format!("session={b_raw}");
    assert_eq!(decide(vec![&a], "/x", vec![]), Reason::Allowed);
    assert_eq!(decide(vec![], &query_a, vec![]), Reason::Allowed);
    assert_eq!(decide(vec![], "/x", vec![("cookie", &cookie_a)]), Reason::Allowed);
    assert_eq!(decide(vec![], "/x", vec![("x-workload-token", a_raw)]), Reason::Allowed);
    // The same token in two places is one token.
    assert_eq!(decide(vec![&a], &query_a, vec![("cookie", &cookie_a)]), Reason::Allowed);
    // Two different tokens: refused, whatever the places.
    assert_eq!(decide(vec![&a], "/x", vec![("cookie", &cookie_b)]), Reason::TokenMultiple);
    assert_eq!(decide(vec![&b], &query_a, vec![]), Reason::TokenMultiple);
    assert_eq!(
        decide(vec![], "/x", vec![("x-workload-token", a_raw), ("x-workload-token", a_raw)]),
        Reason::TokenMultiple
    );
    assert_eq!(decide(vec![], &format!("{query_a}&access_token={a_raw}"), vec![]), Reason::TokenMultiple);
    assert_eq!(
        decide(vec![], "/x", vec![("cookie", &cookie_a), ("cookie", &cookie_b)]),
        Reason::TokenMultiple
    );
    assert_eq!(decide(vec![], "/x?access_token=", vec![]), Reason::TokenMissing);
    assert_eq!(decide(vec![], "/x", vec![]), Reason::TokenMissing);

    // The default looks only at Authorization: a query token is ignored.
    let default = self::engine(&key, json!({}));
    let request =
        HttpRequest { method: Some("GET"), authority: Some("h"), path: Some(&query_a), ..Default::default() };
    assert_eq!(default.authorize(&request, NOW).decision.reason, Reason::TokenMissing);

    let jwks = jwks(&[&key]);
    for source in [
        json!({"header": "authorization", "query": "t"}),
        json!({"header": "X-Token"}),
        json!({"query": "t", "scheme": "Bearer"}),
        json!({"cookie": ""}),
        json!({}),
    ] {
        let bundle = json!({"name": "t", "rules": [], "settings": {"token_sources": [source]},
            "issuers": [{"name": "i", "issuer": "https://i.test", "audiences": ["api"], "algorithms": ["EdDSA"], "jwks": jwks}]});
        let err = BundleConfig::from_json(bundle.to_string().as_bytes()).unwrap().compile().err().unwrap();
        assert_eq!(err.field, "settings.token_sources[0]", "{source}");
    }
}

#[test]
fn cached_tokens_follow_the_remote_key_set() {
    let k1 = SigningKey::generate(Algorithm::EdDSA, "k1").unwrap();
    let k2 = SigningKey::generate(Algorithm::EdDSA, "k2").unwrap();
    let bundle = json!({
        "name": "t",
        "issuers": [{"name": "idp", "issuer": "https://idp.test", "audiences": ["api"], "algorithms": ["EdDSA"],
                     "remote_jwks": {"cluster": "keys", "jwks_path": "/jwks", "refresh_seconds": 60, "max_stale_seconds": 120}}],
        "rules": [{"id": "r", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]}],
    });
    let (engine, _) = BundleConfig::from_json(bundle.to_string().as_bytes()).unwrap().compile().unwrap();
    let t1 =
        format!("Bearer {}", k1.sign(&TokenSpec::new("https://idp.test", "svc", "api", NOW, 3600)).unwrap());
    assert_eq!(decide(&engine, &t1, NOW), Reason::KeysUnavailable, "no keys yet: fail closed");

    let fetch = engine.due_key_fetches(NOW);
    assert_eq!(fetch.len(), 1);
    assert_eq!((fetch[0].cluster.as_str(), fetch[0].path.as_str()), ("keys", "/jwks"));
    let set1 = jwks(&[&k1]).to_string();
    let outcome = engine.key_fetch_completed("idp", "/jwks", Some(200), Some(set1.as_bytes()), NOW);
    assert_eq!(outcome.label(), "installed");
    assert_eq!(decide(&engine, &t1, NOW), Reason::Allowed);
    assert_eq!(decide(&engine, &t1, NOW + 1), Reason::Allowed);
    assert_eq!(engine.cache_stats().hits, 1);

    // The same set again changes nothing; a set without k1 invalidates what k1 verified.
    assert_eq!(engine.due_key_fetches(NOW + 61).len(), 1);
    engine.key_fetch_completed("idp", "/jwks", Some(200), Some(set1.as_bytes()), NOW + 61);
    assert_eq!(decide(&engine, &t1, NOW + 62), Reason::Allowed);
    assert_eq!(engine.cache_stats().hits, 2);
    assert_eq!(engine.due_key_fetches(NOW + 122).len(), 1);
    let set2 = jwks(&[&k2]).to_string();
    engine.key_fetch_completed("idp", "/jwks", Some(200), Some(set2.as_bytes()), NOW + 122);
    assert_eq!(
        decide(&engine, &t1, NOW + 123),
        Reason::TokenKeyUnknown,
        "rotated out: verified again, and refused"
    );

    // Refreshes fail from here on; past max_stale_seconds the issuer has no keys at all.
    assert_eq!(engine.due_key_fetches(NOW + 190).len(), 1);
    assert_eq!(engine.key_fetch_completed("idp", "/jwks", Some(500), None, NOW + 190).label(), "failed");
    let t2 = format!(
        "Bearer {}",
        k2.sign(&TokenSpec::new("https://idp.test", "svc", "api", NOW + 100, 3600)).unwrap()
    );
    assert_eq!(decide(&engine, &t2, NOW + 200), Reason::Allowed, "stale but within max_stale_seconds");
    assert_eq!(
        decide(&engine, &t2, NOW + 243),
        Reason::KeysUnavailable,
        "cache hit, but the keys are too stale"
    );
    assert_eq!(Reason::KeysUnavailable.http_status(), 503);
}

/// Checklist 48: bad keys inside a JWK Set (private members, a small RSA modulus, a point that is
/// not on the curve, an unknown key type) are skipped, and the good key is used: inline and remote.
#[test]
fn bad_keys_in_a_key_set_are_skipped_and_the_good_ones_used() {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let good = SigningKey::generate(Algorithm::ES256, "good").unwrap();
    let mut private = good.public_jwk();
    private["kid"] = json!("private");
    private["d"] = json!(b64(&[7u8; 32]));
    let small_rsa = json!({"kty": "RSA", "kid": "small", "n": b64(&[0xc5u8; 128]), "e": "AQAB"});
    let off_curve =
        json!({"kty": "EC", "crv": "P-256", "kid": "off", "x": b64(&[1u8; 32]), "y": b64(&[2u8; 32])});
    let unknown = json!({"kty": "XYZ", "kid": "odd"});
    let keys = json!([private, small_rsa, off_curve, unknown, good.public_jwk()]);
    let t =
        format!("Bearer {}", good.sign(&TokenSpec::new("https://i.test", "svc", "api", NOW, 300)).unwrap());

    let inline = json!({"name": "t", "rules": [{"id": "r", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]}],
        "issuers": [{"name": "i", "issuer": "https://i.test", "audiences": ["api"], "algorithms": ["ES256", "RS256"], "jwks": {"keys": keys}}]});
    let (engine, warnings) =
        BundleConfig::from_json(inline.to_string().as_bytes()).unwrap().compile().unwrap();
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    for (i, why) in [(0, "private"), (1, "2048"), (2, "EC point"), (3, "unsupported key type")] {
        let meshward::CompileWarning::SkippedKey { issuer, key, error } = &warnings[i];
        assert_eq!((*issuer, *key), (0, i), "{}", warnings[i]);
        assert!(error.contains(why), "{i}: {}", warnings[i]);
    }
    assert_eq!(decide(&engine, &t, NOW), Reason::Allowed);

    let remote = json!({"name": "t", "rules": [{"id": "r", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]}],
        "issuers": [{"name": "i", "issuer": "https://i.test", "audiences": ["api"], "algorithms": ["ES256", "RS256"],
                     "remote_jwks": {"cluster": "keys", "jwks_path": "/jwks"}}]});
    let (engine, _) = BundleConfig::from_json(remote.to_string().as_bytes()).unwrap().compile().unwrap();
    assert_eq!(engine.due_key_fetches(NOW).len(), 1);
    let body = json!({"keys": keys}).to_string();
    match engine.key_fetch_completed("i", "/jwks", Some(200), Some(body.as_bytes()), NOW) {
        meshward::token::remote::FetchOutcome::Installed { keys, skipped } => {
            assert_eq!((keys, skipped.len()), (1, 4))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(decide(&engine, &t, NOW), Reason::Allowed);
}

/// A recorded identity (an audit record's) takes the same steps as a token: request checks,
/// revocation, policy, and "send a token" when there is none and no rule matched.
#[test]
fn a_recorded_identity_is_decided_by_the_same_steps() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let engine = engine(&key, json!({"revoked": {"subjects": ["spiffe://t/gone"], "token_ids": ["jti-1"]}}));
    let decide = |path: &str, issuer: &str, subject: Option<&str>, token_id: Option<&str>| {
        let request = HttpRequest::recorded(Some("GET"), Some("h"), Some(path), &[], None);
        let identity =
            subject.map(|subject| RecordedIdentity { issuer, subject, token_id, expires_at: None });
        let outcome = engine.authorize_identity(&request, identity, NOW);
        (outcome.decision.reason, outcome.identity.map(|t| t.subject.clone()))
    };
    let a = Some("spiffe://t/a");
    assert_eq!(decide("/x", "i", a, None), (Reason::Allowed, Some("spiffe://t/a".into())));
    assert_eq!(decide("/x", "i", Some("other"), None).0, Reason::PolicyNoMatch);
    assert_eq!(decide("/x", "i", Some("spiffe://t/gone"), None).0, Reason::TokenRevoked);
    assert_eq!(decide("/x", "i", a, Some("jti-1")).0, Reason::TokenRevoked);
    assert_eq!(decide("/x", "retired", a, None), (Reason::TokenIssuerUnknown, None));
    assert_eq!(decide("/x", "i", None, None), (Reason::TokenMissing, None));
    assert_eq!(decide("/a/../x", "i", a, None), (Reason::RequestPathRejected, None));
}

#[test]
fn a_recorded_request_takes_its_token_from_the_authorization_headers() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let engine = engine(&key, json!({}));
    let auth = token(&key, "spiffe://t/a", None, 300);
    let headers =
        vec![("accept".to_string(), "*/*".to_string()), ("authorization".to_string(), auth.clone())];
    let request = HttpRequest::recorded(Some("GET"), Some("h"), Some("/x"), &headers, None);
    assert_eq!(request.authorization, vec![auth.as_str()]);
    assert_eq!(engine.authorize(&request, NOW).decision.reason, Reason::Allowed);
    // Sent twice, as a recording lists it: refused as the plugin refuses it.
    let twice = vec![("authorization".to_string(), auth.clone()), ("authorization".to_string(), auth)];
    let request = HttpRequest::recorded(Some("GET"), Some("h"), Some("/x"), &twice, None);
    assert_eq!(engine.authorize(&request, NOW).decision.reason, Reason::TokenMultiple);
}

/// The host's shared data, in memory: every clone sees the same map, as VMs do.
#[derive(Clone, Default)]
struct MemoryStore(Rc<RefCell<HashMap<String, Vec<u8>>>>);

impl SharedStore for MemoryStore {
    fn get_versioned(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        (self.0.borrow().get(key).cloned(), None)
    }
    fn set_versioned(&self, key: &str, value: &[u8], _version: Option<u32>) -> bool {
        self.0.borrow_mut().insert(key.to_owned(), value.to_vec());
        true
    }
}

impl MemoryStore {
    /// Rewrites every shared token entry (not the cache key) with `change`.
    fn tamper(&self, change: impl Fn(&mut Value)) {
        for (name, bytes) in self.0.borrow_mut().iter_mut() {
            if name.contains("/token/") {
                let mut entry: Value = serde_json::from_slice(bytes).unwrap();
                change(&mut entry);
                *bytes = serde_json::to_vec(&entry).unwrap();
            }
        }
    }
}

/// One VM: an engine of the bundle (with `extra` top-level fields, and a 600 s age limit) sharing
/// `store` in `slots` slots.
fn vm(key: &SigningKey, store: &MemoryStore, slots: usize, extra: Value) -> Engine {
    let mut extra = extra;
    extra["issuers"] = json!([{"name": "i", "issuer": "https://i.test", "audiences": ["api"],
                               "algorithms": ["EdDSA"], "jwks": jwks(&[key]), "max_age_seconds": 600}]);
    let mut engine = engine(key, extra);
    // One namespace for all, as for VMs of the same bundle.
    engine.share_tokens(SharedTokens::new(Box::new(store.clone()), "digest", slots));
    engine
}

#[test]
fn k_distinct_tokens_cost_k_verifications_across_vms() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let store = MemoryStore::default();
    let vms = [vm(&key, &store, 100, json!({})), vm(&key, &store, 100, json!({}))];
    let tokens: Vec<String> = (0..5).map(|i| token(&key, &format!("spiffe://t/w{i}"), None, 300)).collect();
    for round in 0..3 {
        for (i, auth) in tokens.iter().enumerate() {
            // Alternate the VM that sees a token first.
            let order = if (i + round) % 2 == 0 { [0, 1] } else { [1, 0] };
            for n in order {
                assert_eq!(decide(&vms[n], auth, NOW), Reason::Allowed);
            }
        }
    }
    let verified: u64 = vms.iter().map(Engine::take_verifications).sum();
    assert_eq!(verified, 5, "one verification per token for the whole process");
    // Every request of the second VM to see a token was a cache hit (shared, then local).
    let hits: u64 = vms.iter().map(|e| e.cache_stats().hits).sum();
    assert_eq!(hits, 5 * 2 * 3 - 5 - 5, "the first sight in each VM is a local miss");
}

#[test]
fn a_shared_hit_still_checks_revocation_and_age() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let store = MemoryStore::default();
    let a = vm(&key, &store, 100, json!({}));
    let b = vm(&key, &store, 100, json!({"revoked": {"subjects": ["spiffe://t/gone"]}}));
    let gone = token(&key, "spiffe://t/gone", None, 3600);
    let fine = token(&key, "spiffe://t/fine", None, 3600);
    assert_eq!(decide(&a, &gone, NOW), Reason::Allowed);
    assert_eq!(decide(&a, &fine, NOW), Reason::Allowed);
    assert_eq!(decide(&b, &gone, NOW), Reason::TokenRevoked, "revocation is checked on a shared hit");
    // max_age_seconds 600: the token issued at NOW is too old at NOW + 601, shared or not.
    assert_eq!(decide(&b, &fine, NOW + 601), Reason::TokenTooOld);
    assert_eq!(b.take_verifications(), 0, "both answers came from the shared entries");
}

#[test]
fn a_shared_entry_is_not_used_after_the_token_expires() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let store = MemoryStore::default();
    let (a, b) = (vm(&key, &store, 100, json!({})), vm(&key, &store, 100, json!({})));
    let auth = token(&key, "spiffe://t/a", None, 60);
    assert_eq!(decide(&a, &auth, NOW), Reason::Allowed);
    // Past exp (NOW + 60) but within the 30 s clock skew: verified again, not taken from the entry.
    assert_eq!(decide(&b, &auth, NOW + 61), Reason::Allowed);
    assert_eq!(b.take_verifications(), 1);
    assert_eq!(decide(&b, &auth, NOW + 91), Reason::TokenExpired);
}

#[test]
fn a_slot_taken_by_another_token_is_a_miss() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let store = MemoryStore::default();
    // One slot: every token overwrites the previous one's entry.
    let (a, b) = (vm(&key, &store, 1, json!({})), vm(&key, &store, 1, json!({})));
    let first = token(&key, "spiffe://t/first", None, 300);
    let second = token(&key, "spiffe://t/second", None, 300);
    assert_eq!(decide(&a, &first, NOW), Reason::Allowed);
    assert_eq!(decide(&a, &second, NOW), Reason::Allowed);
    let request = HttpRequest {
        method: Some("GET"),
        authority: Some("h"),
        path: Some("/x"),
        authorization: vec![&first],
        ..Default::default()
    };
    let outcome = b.authorize(&request, NOW);
    assert_eq!(outcome.identity.unwrap().subject, "spiffe://t/first", "never the slot's other token");
    assert_eq!(b.take_verifications(), 1);
    assert_eq!(store.0.borrow().keys().filter(|k| k.contains("/token/")).count(), 1, "bounded by the slots");
}

#[test]
fn a_tampered_or_foreign_entry_is_verified_again() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    type Change = fn(&mut Value);
    let changes: [(&str, Change); 5] = [
        ("another key set", |e| e["keys"] = json!("00".repeat(31) + "01")),
        ("another issuer name", |e| e["issuer_name"] = json!("other")),
        ("another iss", |e| e["issuer"] = json!("https://evil.test")),
        ("usable past exp", |e| e["until"] = json!(e["expires_at"].as_u64().unwrap() + 1)),
        ("another cache key", |e| e["key"] = json!("00".repeat(16))),
    ];
    for (what, change) in changes {
        let store = MemoryStore::default();
        let (a, b) = (vm(&key, &store, 100, json!({})), vm(&key, &store, 100, json!({})));
        let auth = token(&key, "spiffe://t/a", None, 300);
        assert_eq!(decide(&a, &auth, NOW), Reason::Allowed);
        store.tamper(change);
        assert_eq!(decide(&b, &auth, NOW), Reason::Allowed, "{what}");
        assert_eq!(b.take_verifications(), 1, "{what}: the entry is not used");
    }
    // Untampered, the same entry is used: the checks above are what refused it.
    let store = MemoryStore::default();
    let (a, b) = (vm(&key, &store, 100, json!({})), vm(&key, &store, 100, json!({})));
    let auth = token(&key, "spiffe://t/a", None, 300);
    assert_eq!(decide(&a, &auth, NOW), Reason::Allowed);
    assert_eq!(decide(&b, &auth, NOW), Reason::Allowed);
    assert_eq!(b.take_verifications(), 0);
}

#[test]
fn without_the_cache_nothing_is_shared() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let store = MemoryStore::default();
    let off = json!({"settings": {"token_cache_entries": 0}});
    let (a, b) = (vm(&key, &store, 100, off.clone()), vm(&key, &store, 100, off));
    let auth = token(&key, "spiffe://t/a", None, 300);
    assert_eq!(decide(&a, &auth, NOW), Reason::Allowed);
    assert_eq!(decide(&b, &auth, NOW), Reason::Allowed);
    assert_eq!(a.take_verifications() + b.take_verifications(), 2);
    assert!(store.0.borrow().is_empty());
}
