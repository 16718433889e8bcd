//! Bearer tokens into one engine: `bearer_token`, `Issuers::verify` and `Engine::authorize`.
//!
//! Input: `[mode, selector, body...]`. `selector % 8` picks the request, `selector / 8 % 5` the
//! issuer whose key signs (modes 3 and 4). The mode decides how `body` becomes the `Authorization`
//! value, from raw bytes up to tokens signed with the engine's own keys, so that the JSON parsers,
//! the claim checks, the profiles and the policy all see fuzzed data behind a valid signature:
//!
//! * 0 `body` is the whole `Authorization` value;
//! * 1 `Bearer <body>`;
//! * 2 `body` = header 0xFF payload 0xFF signature, each base64url-encoded, unsigned;
//! * 3, 6 `body` = header 0xFF payload, JSON text as given, signed (EdDSA, or HS256 for `hs`);
//! * 4, 7 `body` = a JSON object merged over the issuer's valid claims (anything else: the
//!   subject), with the issuer's usual header, signed;
//! * 5 `body` = subject 0xFF jti 0xFF audience 0xFF claims JSON, a JWT-SVID signed with ES256
//!   (one mode in eight only: P-256 signing and verification cost ~10 ms an input under ASan).
//!
//! (mode is taken modulo 8.)
//!
//! Properties: a token that does not verify is never allowed, and `authorize` reports exactly what
//! `verify` says; a verified token has a subject without control characters, is not expired beyond
//! the clock skew, and fits its issuer's profile.

#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use meshward::cli::dev::{jwks, SigningKey, TokenSpec};
use meshward::token::{bearer_token, Algorithm, VerifiedToken};
use meshward::{BundleConfig, Engine, HttpRequest};
use serde_json::{json, Map, Value};

const NOW: u64 = 1_800_000_000;
const HMAC_SECRET: &[u8; 33] = b"meshward fuzz hmac secret 32bytes";

/// The issuers of the fixture: name, `iss`, clock skew.
const ISSUERS: [(&str, &str, u64); 5] = [
    ("ed", "https://ed.fuzz.test", 30),
    ("kube", "https://kube.fuzz.test", 0),
    ("at", "https://at.fuzz.test", 30),
    ("hs", "https://hs.fuzz.test", 30),
    ("es", "https://es.fuzz.test", 60),
];

struct Fixture {
    ed: SigningKey,
    es: SigningKey,
    engine: Engine,
}

impl Fixture {
    fn new() -> Self {
        let ed = SigningKey::generate(Algorithm::EdDSA, "ed-1").expect("EdDSA key");
        let es = SigningKey::generate(Algorithm::ES256, "es-1").expect("ES256 key");
        let mut svid_jwks = jwks(&[&es]);
        svid_jwks["keys"][0]["use"] = json!("jwt-svid");
        let iss = |i: usize| ISSUERS[i].1;
        let bundle = json!({
            "name": "fuzz",
            "version": "1",
            "issuers": [
                {"name": "ed", "issuer": iss(0), "audiences": ["api"], "algorithms": ["EdDSA"],
                 "jwks": jwks(&[&ed]), "max_lifetime_seconds": 3600},
                {"name": "kube", "issuer": iss(1), "profile": "kubernetes", "audiences": ["api"],
                 "algorithms": ["EdDSA"], "jwks": jwks(&[&ed]), "clock_skew_seconds": 0,
                 "require_expiry": false, "max_age_seconds": 600},
                {"name": "at", "issuer": iss(2), "profile": "access-token", "audiences": ["api"],
                 "algorithms": ["EdDSA"], "jwks": jwks(&[&ed])},
                {"name": "hs", "issuer": iss(3), "audiences": ["api"], "algorithms": ["HS256"],
                 "hmac_secret": URL_SAFE_NO_PAD.encode(HMAC_SECRET)},
                {"name": "es", "issuer": iss(4), "profile": "jwt-svid", "trust_domain": "fuzz",
                 "audiences": ["api", "other"], "algorithms": ["ES256"], "jwks": svid_jwks,
                 "clock_skew_seconds": 60},
            ],
            "rules": [
                {"id": "read", "hosts": ["*"], "methods": ["GET", "HEAD"], "paths": [{"prefix": "/"}],
                 "subjects": ["spiffe://fuzz/**"]},
                {"id": "write", "hosts": ["api.test"], "methods": ["PUT"],
                 "paths": [{"template": "/v1/{ns}/items/{id}"}], "issuers": ["ed", "hs", "es"],
                 "claims": [{"claim": "role", "equals": "writer"}],
                 "conditions": [{"capture": "ns", "equals": "${claim.ns}"}]},
                {"id": "submit", "hosts": ["*.test"], "methods": ["POST"], "paths": [{"exact": "/submit"}],
                 "scopes": ["submit"], "max_token_age_seconds": 600},
                {"id": "k8s", "hosts": ["*"], "methods": ["GET", "DELETE"], "paths": [{"prefix": "/k8s"}],
                 "issuers": ["kube"], "claims": [{"claim": "kubernetes.io.namespace", "equals": "team"}]},
                {"id": "no-admin", "effect": "deny", "hosts": ["*"], "methods": ["*"],
                 "paths": [{"prefix": "/admin"}], "subjects": ["**"]},
            ],
            "revoked": {"token_ids": ["revoked-1"], "subjects": ["spiffe://fuzz/revoked"]},
            "settings": {"claim_headers": {"x-ns": "ns", "x-groups": "groups"}, "token_cache_entries": 1000},
        });
        let (engine, warnings) = BundleConfig::from_json(bundle.to_string().as_bytes())
            .expect("fixture bundle parses")
            .compile()
            .expect("fixture bundle compiles");
        assert!(warnings.is_empty(), "{warnings:?}");
        Fixture { ed, es, engine }
    }

    /// Signs header and payload text as given with the key of issuer `issuer`.
    fn sign_raw(&self, issuer: usize, header: &str, payload: &str) -> Option<String> {
        if ISSUERS[issuer].0 == "hs" {
            let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
            let mac = hmac_sha256::HMAC::mac(input.as_bytes(), HMAC_SECRET);
            return Some(format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac)));
        }
        self.ed.sign_raw(header, payload).ok()
    }
}

thread_local! {
    // Engine is neither Send nor Sync (token cache in a RefCell); libFuzzer runs on one thread.
    static FIXTURE: Fixture = Fixture::new();
}

const REQUESTS: [(&str, &str, &str); 8] = [
    ("GET", "api.test", "/v1/x"),
    ("PUT", "api.test", "/v1/team/items/7"),
    ("POST", "svc.test:8443", "/submit?x=1"),
    ("GET", "api.test", "/admin/users"),
    ("GET", "api.test", "/k8s/pods"),
    ("DELETE", "k8s.test", "/k8s/pods/x"),
    ("HEAD", "API.test.", "/v1/team/items/7"),
    ("OPTIONS", "api.test", "/"),
];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Valid header and claims for a token of issuer `i`.
fn base_token(i: usize) -> (&'static str, Map<String, Value>) {
    let (name, iss, _) = ISSUERS[i];
    let (header, claims) = match name {
        "kube" => (
            r#"{"alg":"EdDSA","kid":"ed-1"}"#,
            json!({"iss": iss, "sub": "system:serviceaccount:team:app", "aud": ["api"], "iat": NOW - 10,
                   "kubernetes.io": {"namespace": "team", "serviceaccount": {"name": "app"}}}),
        ),
        "at" => (
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":"ed-1"}"#,
            json!({"iss": iss, "sub": "spiffe://fuzz/ns/team/sa/app", "aud": "api", "iat": NOW - 10,
                   "exp": NOW + 300, "jti": "at-1", "client_id": "cli", "scope": "submit read"}),
        ),
        "hs" => (
            r#"{"alg":"HS256","typ":"JWT"}"#,
            json!({"iss": iss, "sub": "spiffe://fuzz/ns/team/sa/app", "aud": "api", "iat": NOW - 10,
                   "exp": NOW + 300, "ns": "team", "role": "writer"}),
        ),
        _ => (
            r#"{"alg":"EdDSA","typ":"JWT","kid":"ed-1"}"#,
            json!({"iss": ISSUERS[0].1, "sub": "spiffe://fuzz/ns/team/sa/app", "aud": "api",
                   "iat": NOW - 10, "exp": NOW + 300, "ns": "team", "role": "writer",
                   "scope": "submit read", "groups": ["a", "b"]}),
        ),
    };
    match claims {
        Value::Object(map) => (header, map),
        _ => unreachable!(),
    }
}

/// The `Authorization` value for the input, or `None` when the input is not usable in its mode.
fn authorization(fx: &Fixture, mode: u8, issuer: usize, body: &[u8]) -> Option<String> {
    let mut parts = body.split(|&b| b == 0xff);
    // Only the EdDSA and HMAC issuers sign raw text; `es` falls back to `ed`.
    let issuer = if ISSUERS[issuer].0 == "es" { 0 } else { issuer };
    Some(match mode % 8 {
        0 => text(body),
        1 => format!("Bearer {}", text(body)),
        2 => {
            let (h, p, s) = (parts.next()?, parts.next()?, parts.next().unwrap_or(b"sig"));
            let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
            format!("Bearer {}.{}.{}", b64(h), b64(p), b64(s))
        }
        3 | 6 => {
            let (h, p) = (parts.next()?, parts.next()?);
            format!("Bearer {}", fx.sign_raw(issuer, &text(h), &text(p))?)
        }
        4 | 7 => {
            let (header, mut claims) = base_token(issuer);
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(extra)) => claims.extend(extra),
                _ => {
                    claims.insert("sub".into(), Value::String(text(body)));
                }
            }
            format!("Bearer {}", fx.sign_raw(issuer, header, &Value::Object(claims).to_string())?)
        }
        5 => {
            let subject = text(parts.next()?);
            let jti = parts.next().map(text);
            let audience = parts.next().map_or_else(|| "api".to_string(), text);
            let mut spec = TokenSpec::new(ISSUERS[4].1, &subject, &audience, NOW - 5, 120);
            spec.token_id = jti;
            if let Some(Ok(Value::Object(extra))) = parts.next().map(serde_json::from_slice::<Value>) {
                spec.claims = extra;
            }
            format!("Bearer {}", fx.es.sign(&spec).ok()?)
        }
        _ => unreachable!(),
    })
}

fn check_verified(v: &VerifiedToken) {
    let no_controls = |s: &str| !s.chars().any(char::is_control);
    assert!(!v.subject.is_empty(), "verified token without subject");
    assert!(no_controls(&v.subject), "verified subject with control characters: {:?}", v.subject);
    assert!(v.token_id.as_deref().is_none_or(no_controls), "verified jti with controls: {:?}", v.token_id);
    let Some(&(name, iss, skew)) = ISSUERS.iter().find(|(name, _, _)| *name == v.issuer_name) else {
        panic!("verified token from unknown issuer {:?}", v.issuer_name);
    };
    assert_eq!(v.issuer, iss, "issuer name and iss disagree");
    match v.expires_at {
        Some(exp) => assert!(exp + skew >= NOW, "expired token verified: exp {exp}"),
        None => assert_eq!(name, "kube", "token without exp verified for {name}"),
    }
    match name {
        "kube" => {
            assert!(v.subject.starts_with("system:serviceaccount:"), "kubernetes subject {:?}", v.subject);
            let iat = v.issued_at.expect("max_age_seconds needs iat");
            assert!(NOW.saturating_sub(iat) <= 600, "token older than max_age_seconds: iat {iat}");
        }
        "es" => assert!(v.subject.starts_with("spiffe://fuzz/"), "JWT-SVID subject {:?}", v.subject),
        "at" => assert!(v.token_id.is_some() && v.issued_at.is_some(), "access token without jti/iat"),
        "ed" => {
            let (iat, exp) =
                (v.issued_at.expect("max_lifetime_seconds needs iat"), v.expires_at.unwrap_or(0));
            assert!(exp.saturating_sub(iat) <= 3600, "lifetime above max_lifetime_seconds");
        }
        _ => {}
    }
}

fn check(fx: &Fixture, data: &[u8]) {
    let [mode, selector, body @ ..] = data else { return };
    let issuer = usize::from(*selector / 8) % ISSUERS.len();
    let Some(auth) = authorization(fx, *mode, issuer, body) else { return };
    let engine = &fx.engine;

    let (method, authority, path) = REQUESTS[usize::from(*selector) % REQUESTS.len()];
    let req = HttpRequest {
        method: Some(method),
        authority: Some(authority),
        path: Some(path),
        authorization: vec![auth.as_str()],
        headers: vec![("x-request-id", "fuzz")],
        // No mTLS peer: every fixture rule needs a token.
        ..Default::default()
    };
    let outcome = engine.authorize(&req, NOW);
    assert!(outcome.target.is_some(), "fixed requests are well-formed");

    match bearer_token(&[auth.as_str()]) {
        Ok(token) => {
            let verified = engine.issuers().verify(token, NOW);
            match &verified {
                Ok(v) => {
                    check_verified(v);
                    let identity = outcome.identity.as_deref().expect("verified token but no identity");
                    assert_eq!(identity, v, "authorize's identity differs from verify's");
                }
                Err(reason) => {
                    assert!(
                        !outcome.decision.allowed,
                        "token that failed verification ({reason:?}) was allowed"
                    );
                    assert!(outcome.identity.is_none(), "identity for a token that failed verification");
                    assert_eq!(outcome.decision.reason, *reason, "authorize and verify disagree");
                }
            }
        }
        Err(_) => {
            // Every fixture rule needs a token, and there is no peer: nothing may be allowed.
            assert!(!outcome.decision.allowed, "allowed without a token: {auth:?}");
            assert!(outcome.identity.is_none());
        }
    }

    // The rest of the request path: upstream headers, deny replies and audit sampling.
    if outcome.decision.allowed {
        let identity = outcome.identity.as_deref().expect("allowed without identity");
        for (name, value) in engine.upstream_headers(Some(identity)) {
            if let Some(value) = value {
                assert!(!value.chars().any(char::is_control), "upstream header {name} = {value:?}");
            }
        }
    } else {
        let reply = engine.deny_response(outcome.decision.reason, Some("fuzz"));
        assert!((400..600).contains(&reply.status), "deny status {}", reply.status);
    }
    let _ = engine.should_audit(&outcome);
}

fuzz_target!(|data: &[u8]| {
    FIXTURE.with(|fx| check(fx, data));
});
