//! Issuer profiles (jwt-svid, kubernetes, access-token), short-lived credential limits and HMAC opt-in
//! (security checklist items 21, 24, 25, 28 and 10 from the configuration side).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use meshward::cli::dev::{jwks, SigningKey, TokenSpec};
use meshward::token::Algorithm;
use meshward::{BundleConfig, Engine, HttpRequest, Reason};
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000;

fn compile(issuer: Value) -> Result<Engine, meshward::ConfigError> {
    let bundle = json!({
        "name": "t",
        "issuers": [issuer],
        "rules": [{"id": "any", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]}],
    });
    BundleConfig::from_json(bundle.to_string().as_bytes())?.compile().map(|(e, _)| e)
}

fn decide(engine: &Engine, token: &str, now: u64) -> Reason {
    let auth = format!("Bearer {token}");
    let request = HttpRequest {
        method: Some("GET"),
        authority: Some("h"),
        path: Some("/"),
        authorization: vec![&auth],
        ..Default::default()
    };
    engine.authorize(&request, now).decision.reason
}

fn spec(iss: &str, sub: &str) -> TokenSpec {
    TokenSpec::new(iss, sub, "api", NOW, 300)
}

#[test]
fn jwt_svid_subjects_types_keys_and_algorithms() {
    let key = SigningKey::generate(Algorithm::ES256, "svid-1").unwrap();
    let mut jwk = key.public_jwk();
    jwk["use"] = json!("jwt-svid");
    let x509 = {
        let mut k = SigningKey::generate(Algorithm::ES256, "x509-1").unwrap().public_jwk();
        k["use"] = json!("x509-svid");
        k
    };
    let issuer = json!({"name": "spire", "issuer": "https://spire.test", "profile": "jwt-svid", "trust_domain": "prod.test",
        "audiences": ["api"], "algorithms": ["ES256"], "jwks": {"keys": [jwk, x509]}});
    let (engine, warnings) = BundleConfig::from_json(
        json!({"name": "t", "issuers": [issuer.clone()], "rules": [
            {"id": "svid", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}], "profiles": ["jwt-svid"], "subjects": ["spiffe://prod.test/**"]}]})
        .to_string()
        .as_bytes(),
    )
    .unwrap()
    .compile()
    .unwrap();
    assert_eq!(warnings.len(), 1, "the x509-svid key is skipped: {warnings:?}");

    let sign = |sub: &str, typ: Option<&str>| {
        let mut s = spec("https://spire.test", sub);
        s.typ = typ.map(String::from);
        key.sign(&s).unwrap()
    };
    assert_eq!(decide(&engine, &sign("spiffe://prod.test/ns/ci/sa/builder", None), NOW), Reason::Allowed);
    assert_eq!(
        decide(&engine, &sign("spiffe://prod.test/ns/ci/sa/builder", Some("JOSE")), NOW),
        Reason::Allowed
    );
    assert_eq!(
        decide(&engine, &sign("spiffe://prod.test/ns/ci/sa/builder", Some("at+jwt")), NOW),
        Reason::TokenTypeInvalid
    );
    for bad in [
        "spiffe://other.test/ns/ci",
        "spiffe://prod.test",
        "spiffe://prod.test/a//b",
        "builder",
        "spiffe://PROD.test/x",
    ] {
        assert_eq!(decide(&engine, &sign(bad, None), NOW), Reason::TokenSubjectInvalid, "{bad}");
    }
    // A key published for X.509-SVIDs never verifies a JWT-SVID.
    let x509_key = SigningKey::generate(Algorithm::ES256, "x509-1").unwrap();
    let t = x509_key.sign(&spec("https://spire.test", "spiffe://prod.test/x")).unwrap();
    assert_eq!(decide(&engine, &t, NOW), Reason::TokenKeyUnknown);

    // Configuration: trust domain required and valid, RS/PS/ES only, exp always required.
    let mut bad = issuer.clone();
    bad.as_object_mut().unwrap().remove("trust_domain");
    assert_eq!(compile(bad).err().unwrap().field, "issuers[0].trust_domain");
    let mut bad = issuer.clone();
    bad["trust_domain"] = json!("Prod.Test");
    assert_eq!(compile(bad).err().unwrap().field, "issuers[0].trust_domain");
    let mut bad = issuer.clone();
    bad["algorithms"] = json!(["EdDSA"]);
    assert_eq!(compile(bad).err().unwrap().field, "issuers[0].algorithms[0]");
    let mut bad = issuer;
    bad["require_expiry"] = json!(false);
    assert_eq!(compile(bad).err().unwrap().field, "issuers[0].require_expiry");
}

#[test]
fn kubernetes_service_account_tokens() {
    let key = SigningKey::generate(Algorithm::RS256, "k8s").unwrap();
    let engine = compile(
        json!({"name": "cluster", "issuer": "https://kubernetes.default.svc", "profile": "kubernetes",
        "audiences": ["api"], "algorithms": ["RS256"], "jwks": jwks(&[&key])}),
    )
    .unwrap();
    let token = |sub: &str, k8s: Option<Value>| {
        let mut s = spec("https://kubernetes.default.svc", sub);
        if let Some(k) = k8s {
            s.claims.insert("kubernetes.io".into(), k);
        }
        key.sign(&s).unwrap()
    };
    let claim = json!({"namespace": "ci", "serviceaccount": {"name": "builder", "uid": "u-1"}});
    assert_eq!(
        decide(&engine, &token("system:serviceaccount:ci:builder", Some(claim.clone())), NOW),
        Reason::Allowed
    );
    assert_eq!(decide(&engine, &token("system:serviceaccount:ci:builder", None), NOW), Reason::Allowed);
    assert_eq!(
        decide(&engine, &token("system:serviceaccount:prod:builder", Some(claim.clone())), NOW),
        Reason::TokenSubjectInvalid
    );
    assert_eq!(
        decide(&engine, &token("system:serviceaccount:ci:deployer", Some(claim)), NOW),
        Reason::TokenSubjectInvalid
    );
    assert_eq!(decide(&engine, &token("ci/builder", None), NOW), Reason::TokenSubjectInvalid);
}

#[test]
fn access_tokens_need_their_type_and_claims() {
    let key = SigningKey::generate(Algorithm::EdDSA, "as-1").unwrap();
    let engine = compile(json!({"name": "as", "issuer": "https://as.test", "profile": "access-token",
        "audiences": ["api"], "algorithms": ["EdDSA"], "jwks": jwks(&[&key])}))
    .unwrap();
    let token = |typ: Option<&str>, client: Option<&str>, jti: Option<&str>| {
        let mut s = spec("https://as.test", "user-7");
        s.typ = typ.map(String::from);
        s.token_id = jti.map(String::from);
        if let Some(c) = client {
            s.claims.insert("client_id".into(), json!(c));
        }
        s.claims.insert("scope".into(), json!("read write"));
        key.sign(&s).unwrap()
    };
    assert_eq!(decide(&engine, &token(Some("at+jwt"), Some("cli"), Some("j1")), NOW), Reason::Allowed);
    assert_eq!(
        decide(&engine, &token(Some("application/at+jwt"), Some("cli"), Some("j1")), NOW),
        Reason::Allowed
    );
    assert_eq!(decide(&engine, &token(None, Some("cli"), Some("j1")), NOW), Reason::TokenTypeInvalid);
    assert_eq!(decide(&engine, &token(Some("JWT"), Some("cli"), Some("j1")), NOW), Reason::TokenTypeInvalid);
    assert_eq!(decide(&engine, &token(Some("at+jwt"), None, Some("j1")), NOW), Reason::TokenClaimInvalid);
    assert_eq!(decide(&engine, &token(Some("at+jwt"), Some("cli"), None), NOW), Reason::TokenClaimInvalid);
}

#[test]
fn lifetime_and_age_limits() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let engine = compile(
        json!({"name": "ci", "issuer": "https://ci.test", "audiences": ["api"], "algorithms": ["EdDSA"],
        "jwks": jwks(&[&key]), "max_lifetime_seconds": 600, "max_age_seconds": 300}),
    )
    .unwrap();
    let token = |iat: Option<u64>, exp: u64| {
        let mut s = spec("https://ci.test", "svc");
        s.issued_at = iat;
        s.expires_at = Some(exp);
        key.sign(&s).unwrap()
    };
    assert_eq!(decide(&engine, &token(Some(NOW), NOW + 600), NOW), Reason::Allowed);
    assert_eq!(decide(&engine, &token(Some(NOW), NOW + 601), NOW), Reason::TokenLifetimeTooLong);
    assert_eq!(decide(&engine, &token(None, NOW + 60), NOW), Reason::TokenClaimInvalid, "limits need iat");
    assert_eq!(decide(&engine, &token(Some(NOW - 301), NOW + 200), NOW), Reason::TokenTooOld);
    // The age limit holds on cache hits too: valid at first, too old five minutes later.
    let t = token(Some(NOW), NOW + 600);
    assert_eq!(decide(&engine, &t, NOW + 10), Reason::Allowed);
    assert_eq!(decide(&engine, &t, NOW + 301), Reason::TokenTooOld);
    assert_eq!(engine.cache_stats().hits, 1);
}

#[test]
fn missing_expiry_can_be_allowed_per_issuer() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let issuer = json!({"name": "legacy", "issuer": "https://legacy.test", "audiences": ["api"], "algorithms": ["EdDSA"], "jwks": jwks(&[&key])});
    let mut no_exp = spec("https://legacy.test", "svc");
    no_exp.expires_at = None;
    let t = key.sign(&no_exp).unwrap();
    assert_eq!(decide(&compile(issuer.clone()).unwrap(), &t, NOW), Reason::TokenExpiryMissing);
    let mut lenient = issuer;
    lenient["require_expiry"] = json!(false);
    assert_eq!(decide(&compile(lenient).unwrap(), &t, NOW), Reason::Allowed);
}

#[test]
fn hmac_only_by_explicit_opt_in() {
    use jwt_simple::prelude::*;
    let secret = [7u8; 32];
    let secret_b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    };
    let base =
        json!({"name": "h", "issuer": "https://h.test", "audiences": ["api"], "algorithms": ["HS256"]});
    assert_eq!(
        compile(base.clone()).err().unwrap().field,
        "issuers[0].algorithms[0]",
        "HS256 without a secret"
    );
    let mut with_secret = base.clone();
    with_secret["hmac_secret"] = json!(secret_b64);
    let engine = compile(with_secret).unwrap();
    let claims = JWTClaims {
        issued_at: Some(UnixTimeStamp::from_secs(NOW)),
        expires_at: Some(UnixTimeStamp::from_secs(NOW + 60)),
        invalid_before: None,
        issuer: Some("https://h.test".into()),
        subject: Some("svc".into()),
        audiences: Some(Audiences::AsString("api".into())),
        jwt_id: None,
        nonce: None,
        custom: NoCustomClaims {},
    };
    let good = HS256Key::from_bytes(&secret).authenticate(claims.clone()).unwrap();
    assert_eq!(decide(&engine, &good, NOW), Reason::Allowed);
    let wrong = HS256Key::from_bytes(&[8u8; 32]).authenticate(claims).unwrap();
    assert_eq!(decide(&engine, &wrong, NOW), Reason::TokenSignatureInvalid);

    let mut short = base.clone();
    short["hmac_secret"] = json!("c2hvcnQ");
    assert_eq!(compile(short).err().unwrap().field, "issuers[0].hmac_secret");
    let mut unused = base;
    unused["algorithms"] = json!(["EdDSA"]);
    unused["hmac_secret"] = json!(secret_b64);
    assert_eq!(compile(unused).err().unwrap().field, "issuers[0].hmac_secret");
}

#[test]
fn certificate_bound_tokens() {
    use base64::Engine as _;
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let cert_digest = [0xab_u8; 32];
    let cert_hex: String = cert_digest.iter().map(|b| format!("{b:02x}")).collect();
    let other_hex = "cd".repeat(32);
    let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cert_digest);
    let issuer = |binding: &str| {
        compile(
            json!({"name": "ci", "issuer": "https://ci.test", "audiences": ["api"], "algorithms": ["EdDSA"],
            "jwks": jwks(&[&key]), "certificate_binding": binding}),
        )
        .unwrap()
    };
    let bound = {
        let mut s = spec("https://ci.test", "svc");
        s.claims.insert("cnf".into(), json!({"x5t#S256": thumbprint}));
        format!("Bearer {}", key.sign(&s).unwrap())
    };
    let unbound = format!("Bearer {}", key.sign(&spec("https://ci.test", "svc")).unwrap());
    let decide = |engine: &Engine, auth: &str, cert: Option<&str>| {
        let request = HttpRequest {
            method: Some("GET"),
            authority: Some("h"),
            path: Some("/"),
            authorization: vec![auth],
            peer_certificate_sha256: cert,
            ..Default::default()
        };
        engine.authorize(&request, NOW).decision.reason
    };
    let if_present = issuer("if-present");
    assert_eq!(decide(&if_present, &bound, Some(&cert_hex)), Reason::Allowed);
    assert_eq!(decide(&if_present, &bound, Some(&other_hex)), Reason::TokenCertificateMismatch);
    assert_eq!(decide(&if_present, &bound, None), Reason::TokenCertificateMismatch);
    assert_eq!(decide(&if_present, &unbound, None), Reason::Allowed);
    // Checked per request: a cached bound token presented over another connection is refused.
    assert_eq!(decide(&if_present, &bound, Some(&cert_hex)), Reason::Allowed);
    assert_eq!(decide(&if_present, &bound, Some(&other_hex)), Reason::TokenCertificateMismatch);
    let required = issuer("required");
    assert_eq!(decide(&required, &unbound, Some(&cert_hex)), Reason::TokenCertificateMismatch);
    assert_eq!(decide(&required, &bound, Some(&cert_hex)), Reason::Allowed);
    let off = issuer("off");
    assert_eq!(decide(&off, &bound, None), Reason::Allowed);
    assert!(!off.uses_certificate_binding() && required.uses_certificate_binding());
}
