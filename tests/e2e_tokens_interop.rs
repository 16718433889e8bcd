//! Issue 11, token half, through a real Envoy: every claim reachable by policy (`aud`, `nbf`,
//! `nonce`), NumericDates with a fraction, a JWK without `kid` serving a token that names one, and
//! ES512 (P-521), which the plugin checks through Envoy's verify_signature (BoringSSL).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::ES256KeyPair;
use meshward::cli::dev::{jwks, SigningKey, TokenSpec};
use meshward::token::Algorithm;
use serde_json::{json, Value};
use support::{Envoy, Response};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn claims_fractional_times_and_kidless_keys_through_envoy() {
    let ed = SigningKey::generate(Algorithm::EdDSA, "ed-1").unwrap();
    let SigningKey::ES256(ec) = SigningKey::generate(Algorithm::ES256, "unused").unwrap() else {
        unreachable!()
    };
    // The ES256 key is published without `kid`.
    let mut ec_jwk = SigningKey::ES256(ES256KeyPair::from_bytes(&ec.to_bytes()).unwrap()).public_jwk();
    ec_jwk.as_object_mut().unwrap().remove("kid");
    // A P-521 key for ES512.
    let p521_key = p521::ecdsa::SigningKey::from_slice(&[[0u8].as_slice(), &[0x33; 65]].concat()).unwrap();
    let point = p521_key.verifying_key().to_sec1_bytes();
    let p521_jwk = json!({"kty": "EC", "crv": "P-521", "alg": "ES512", "kid": "p521-1",
                          "x": URL_SAFE_NO_PAD.encode(&point[1..67]), "y": URL_SAFE_NO_PAD.encode(&point[67..])});
    let bundle = json!({
        "name": "tokens-interop",
        "issuers": [
            {"name": "ed", "issuer": "https://ed.test", "audiences": ["api"], "algorithms": ["EdDSA"],
             "jwks": jwks(&[&ed]), "clock_skew_seconds": 0},
            {"name": "ec", "issuer": "https://ec.test", "audiences": ["api"], "algorithms": ["ES256"],
             "jwks": {"keys": [ec_jwk]}},
            {"name": "p521", "issuer": "https://p521.test", "audiences": ["api"], "algorithms": ["ES512"],
             "jwks": {"keys": [p521_jwk]}},
        ],
        "rules": [
            {"id": "no-legacy", "effect": "deny", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}],
             "claims": [{"claim": "aud", "contains": "legacy"}]},
            {"id": "nbf-required", "hosts": ["*"], "methods": ["GET"], "paths": [{"template": "/nbf/{n}"}],
             "claims": [{"claim": "nbf", "exists": true}],
             "conditions": [{"capture": "n", "equals": "${claim.nonce}"}]},
            {"id": "read", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/read"}], "subjects": ["**"]},
        ],
    });
    let envoy = Envoy::start(&bundle.to_string());
    let t = now();
    let get = |path: &str, token: &str| {
        envoy.request("GET", path, &[("Authorization", &format!("Bearer {token}"))])
    };
    let expect = |r: Response, status: u16, reason: &str, case: &str| {
        assert_eq!(r.status, status, "{case}: {r:?}");
        assert_eq!(r.json()["reason"], reason, "{case}: {r:?}");
    };
    // An Ed25519 token with the given claims on top of valid ones.
    let ed_token = |extra: Value| {
        let mut claims =
            json!({"iss": "https://ed.test", "sub": "svc", "aud": "api", "iat": t, "exp": t + 300});
        claims.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap());
        ed.sign_raw(r#"{"alg":"EdDSA","kid":"ed-1"}"#, &claims.to_string()).unwrap()
    };
    assert_eq!(get("/read/x", &ed_token(json!({}))).status, 200, "baseline");

    // Item 4: a deny rule on `aud` fires; a rule requiring `nbf` matches, `${claim.nonce}` renders.
    let legacy = ed_token(json!({"aud": ["api", "legacy"]}));
    expect(get("/read/x", &legacy), 403, "policy_denied", "aud contains legacy");
    expect(get("/read/x", &legacy), 403, "policy_denied", "aud contains legacy (cached)");
    let with_nbf = ed_token(json!({"nbf": t - 60, "nonce": "n42"}));
    assert_eq!(get("/nbf/n42", &with_nbf).status, 200, "nbf present, nonce equal");
    expect(get("/nbf/n43", &with_nbf), 403, "policy_no_matching_rule", "nonce differs");
    expect(get("/nbf/n42", &ed_token(json!({"nonce": "n42"}))), 403, "policy_no_matching_rule", "no nbf");

    // Item 9a: NumericDates with a fraction.
    assert_eq!(get("/read/x", &ed_token(json!({"exp": t as f64 + 300.5}))).status, 200, "fractional exp");
    expect(
        get("/read/x", &ed_token(json!({"exp": t as f64 - 9.5}))),
        401,
        "token_expired",
        "expired, fractional",
    );
    assert_eq!(get("/read/x", &ed_token(json!({"nbf": t as f64 - 60.5}))).status, 200, "fractional nbf");
    expect(
        get("/read/x", &ed_token(json!({"nbf": t as f64 + 120.5}))),
        401,
        "token_not_yet_valid",
        "future nbf, fractional",
    );

    // Item 9b: the kid-less ES256 key serves a token naming a kid; an unknown key still does not.
    let ec_token = |key: &ES256KeyPair, kid: &str| {
        let key = SigningKey::ES256(ES256KeyPair::from_bytes(&key.to_bytes()).unwrap().with_key_id(kid));
        key.sign(&TokenSpec::new("https://ec.test", "svc", "api", t, 300)).unwrap()
    };
    assert_eq!(get("/read/x", &ec_token(&ec, "rotated-7")).status, 200, "kid-less key, token with kid");
    let stranger = ES256KeyPair::generate();
    expect(get("/read/x", &ec_token(&stranger, "rotated-7")), 401, "token_key_unknown", "untrusted key");

    // Item 9c: ES512 verifies (by the host: p521 stays out of the module); a flipped bit does not.
    let claims = json!({"iss": "https://p521.test", "sub": "svc", "aud": "api", "iat": t, "exp": t + 300});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES512","kid":"p521-1"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature: p521::ecdsa::Signature = p521::ecdsa::signature::Signer::sign(&p521_key, input.as_bytes());
    let good = signature.to_bytes().to_vec();
    let mut flipped = good.clone();
    flipped[40] ^= 1;
    let with = |sig: &[u8]| format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig));
    assert_eq!(get("/read/x", &with(&good)).status, 200, "ES512");
    expect(get("/read/x", &with(&flipped)), 401, "token_signature_invalid", "ES512, flipped bit");
}
