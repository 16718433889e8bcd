#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Peer vectors: tokens and keys from the test suites of google/jwt_verify_lib (`test/*.cc`) and of
//! Envoy's `jwt_authn` filter (`test/extensions/filters/http/jwt_authn/test_common.h`), used as data.
//! Their tokens are old (some expired long ago), so every check runs at a fixed `now`.
//!
//! Rule: we never accept what they reject. Where they accept and we refuse, the difference is
//! deliberate and listed here (and in docs/configuration.md, "Interop"):
//!
//! | they accept | we | why |
//! |---|---|---|
//! | a token without `exp` (Envoy's default `require_expiration: false`) | `token_expiry_missing` unless the issuer sets `require_expiry: false` | short-lived workload credentials; a token valid forever is opt-in |
//! | a token without `aud` when the provider lists no audiences | every issuer lists `audiences`; a token without `aud` is `token_audience_invalid` | a token minted for another service must not be replayable here |
//! | a token without `iss` (jwt_verify_lib parses it) | `token_issuer_unknown` | the issuer, and so the keys, are chosen by `iss` |
//! | fractional `nbf`/`iat` with the fraction dropped | rounded up for the not-before checks | never valid before the instant the token names |
//! | `nbf`/`exp`/`iat` beyond the year 10000 (parsed, then judged by time) | `token_claim_invalid` | absurd values are refused before any time arithmetic |
//! | a JWK Set with a trailing comma (Envoy's `PublicKey`) | the bundle does not parse | configuration is strict JSON |

use meshward::cli::dev::SigningKey;
use meshward::token::Algorithm;
use meshward::{BundleConfig, Engine, Reason};
use serde_json::{json, Value};

/// A fixed `now` (2027-01-15) between the vectors' `iat` and Envoy's `exp` of 2001001001.
const NOW: u64 = 1_800_000_000;

/// An engine with one issuer (`issuer` fields as given) and a rule for any verified token.
fn issuer_engine(issuer: Value) -> (Engine, Vec<String>) {
    let bundle = json!({
        "name": "peer-vectors",
        "issuers": [issuer],
        "rules": [{"id": "any", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]}],
    });
    let (engine, warnings) =
        BundleConfig::from_json(bundle.to_string().as_bytes()).unwrap().compile().unwrap();
    (engine, warnings.iter().map(ToString::to_string).collect())
}

/// Every single-bit change of the decoded signature.
fn signature_bit_flips(token: &str) -> Vec<String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
    (0..bytes.len() * 8)
        .map(|bit| {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(flipped))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// google/jwt_verify_lib test/verify_jwk_ec_test.cc
// ---------------------------------------------------------------------------------------------

const VL_ISS: &str = "628645741881-noabiu23f5a8m8ovd8ucv698lj78vv0l@developer.gserviceaccount.com";
const VL_AUD: &str = "http://myservice.com/myapi";

/// verify_jwk_ec_test.cc `PublicKeyJwkEC`: two P-256 keys (kids `abc`, `xyz`, the same point), a P-384
/// key and a P-521 key.
fn vl_ec_jwks() -> Vec<Value> {
    let p256 = |kid: &str| {
        json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": kid,
               "x": "EB54wykhS7YJFD6RYJNnwbWEz3cI7CF5bCDTXlrwI5k",
               "y": "92bCBTvMFQ8lKbS2MbgjT3YfmYo6HnPEE2tsAqWUJw8"})
    };
    vec![
        p256("abc"),
        p256("xyz"),
        json!({"kty": "EC", "crv": "P-384", "alg": "ES384", "kid": "es384",
               "x": "yY8DWcyWlrr93FTrscI5Ydz2NC7emfoKYHJLX2dr3cSgfw0GuxAkuQ5nBMJmVV5g",
               "y": "An5wVxEfksDOa_zvSHHGkeYJUfl8y11wYkOlFjBt9pOCw5-RlfZgPOa3pbmUquxZ"}),
        json!({"kty": "EC", "crv": "P-521", "alg": "ES512", "kid": "es512",
               "x": "Abijiex7rz7t-_Zj_E6Oo0OXe9C_-MCSD-OWio15ATQGjH9WpbWjN62ZqrrU_nwJiqqwx6ZsYKhUc_J3PRaMbdVC",
               "y": "FxaljCIuoVEA7PJIaDPJ5ePXtZ0hkinT1B_bQ91mShCiR_43Whsn1P7Gz30WEnLuJs1SGVz1oT4lIRUYni2OfIk"}),
    ]
}

/// Their tokens carry no `exp`: the issuer opts out of requiring it, as their verifier does not.
fn vl_ec_engine(keys: Vec<Value>) -> (Engine, Vec<String>) {
    issuer_engine(
        json!({"name": "vl", "issuer": VL_ISS, "audiences": [VL_AUD], "algorithms": ["ES256", "ES384", "ES512"],
                  "require_expiry": false, "jwks": {"keys": keys}}),
    )
}

#[test]
fn jwt_verify_lib_ec_vectors() {
    let (engine, warnings) = vl_ec_engine(vl_ec_jwks());
    assert!(warnings.is_empty(), "{warnings:?}");
    let verify = |t: &str| engine.issuers().verify(t, NOW);
    // KidOK, KidES384OK, KidES512OK, NoKidOK: accepted, as there.
    for token in [VL_JWT_TEXT_EC, VL_JWT_ES384_TEXT, VL_JWT_ES512_TEXT, VL_JWT_TEXT_EC_NO_KID] {
        let v = verify(token).unwrap();
        assert_eq!((v.subject.as_str(), v.issuer.as_str()), (VL_ISS, VL_ISS));
        assert_eq!(v.claim("aud"), Some(json!(VL_AUD)));
        // ... and bit flips of their signatures (every third bit) are refused, as there (fuzzJwtSignature).
        for flipped in signature_bit_flips(token).into_iter().step_by(3) {
            assert_eq!(verify(&flipped).unwrap_err(), Reason::TokenSignatureInvalid);
        }
    }
    // NonExistKidFail: refused there (JwksKidAlgMismatch), refused here.
    assert_eq!(verify(VL_JWT_TEXT_WITH_NON_EXIST_KID_EC).unwrap_err(), Reason::TokenKeyUnknown);
    // The ES512 token is refused where ES512 is not allowed, and its key then gives no key at all.
    let (es256_only, warnings) = issuer_engine(json!({"name": "vl", "issuer": VL_ISS, "audiences": [VL_AUD],
        "algorithms": ["ES256"], "require_expiry": false, "jwks": {"keys": vl_ec_jwks()}}));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        es256_only.issuers().verify(VL_JWT_ES512_TEXT, NOW).unwrap_err(),
        Reason::TokenAlgorithmNotAllowed
    );
    assert_eq!(es256_only.issuers().verify(VL_JWT_TEXT_EC, NOW).unwrap().subject, VL_ISS);
}

/// PubkeyNoAlgOK and PubkeyNoKidOK: keys without `alg` serve the algorithm of their curve; keys
/// without `kid` serve a token naming a kid (issue 11, item 9).
#[test]
fn jwt_verify_lib_keys_without_alg_or_kid() {
    let strip = |member: &str| {
        let mut keys = vl_ec_jwks();
        for key in &mut keys {
            key.as_object_mut().unwrap().remove(member);
        }
        keys
    };
    let (no_alg, _) = vl_ec_engine(strip("alg"));
    assert_eq!(no_alg.issuers().verify(VL_JWT_TEXT_EC, NOW).unwrap().subject, VL_ISS);
    assert_eq!(no_alg.issuers().verify(VL_JWT_ES384_TEXT, NOW).unwrap().subject, VL_ISS);
    let (no_kid, _) = vl_ec_engine(strip("kid"));
    for token in [VL_JWT_TEXT_EC, VL_JWT_TEXT_WITH_NON_EXIST_KID_EC, VL_JWT_ES384_TEXT] {
        assert_eq!(no_kid.issuers().verify(token, NOW).unwrap().subject, VL_ISS);
    }
    // Without kids, a bad signature is still refused; as no key carries the kid the token names,
    // the reason is `token_key_unknown` (docs/configuration.md, Keys).
    for flipped in signature_bit_flips(VL_JWT_TEXT_EC).into_iter().step_by(7) {
        assert_eq!(no_kid.issuers().verify(&flipped, NOW).unwrap_err(), Reason::TokenKeyUnknown);
    }
}

// ---------------------------------------------------------------------------------------------
// google/jwt_verify_lib test/jwt_test.cc: what it refuses to parse
// ---------------------------------------------------------------------------------------------

#[test]
fn jwt_verify_lib_parse_failures_are_refused() {
    // Their issuers, trusted here with Envoy's RS256 key, so that the refusals are about the tokens.
    let issuer = |iss: &str| {
        json!({"name": iss.replace([':', '/', '.'], "-"), "issuer": iss, "audiences": ["aud1"],
               "algorithms": ["RS256"], "jwks": {"keys": [envoy_key(None)]}})
    };
    let bundle = json!({
        "name": "peer-vectors",
        "issuers": [issuer("https://example.com"), issuer("test_issuer")],
        "rules": [{"id": "any", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["**"]}],
    });
    let (engine, _) = BundleConfig::from_json(bundle.to_string().as_bytes()).unwrap().compile().unwrap();
    // Ours, token by token (their status in the vector table).
    let ours = [
        ("TestParseHeaderBadBase64", Reason::TokenMalformed),
        ("TestParseHeaderBadJson", Reason::TokenMalformed),
        ("TestParseHeaderAbsentAlg", Reason::TokenMalformed),
        ("TestParseHeaderAlgIsNotString", Reason::TokenMalformed),
        ("TestParseHeaderInvalidAlg", Reason::TokenAlgorithmNotAllowed),
        ("TestParseHeaderBadFormatKid", Reason::TokenMalformed),
        ("TestParsePayloadBadBase64", Reason::TokenMalformed),
        ("TestParsePayloadBadJson", Reason::TokenMalformed),
        ("TestParsePayloadIssNotString", Reason::TokenClaimInvalid),
        ("TestParsePayloadSubNotString", Reason::TokenClaimInvalid),
        ("TestParsePayloadIatNotInteger", Reason::TokenClaimInvalid),
        // Their out-of-range vectors have no `iss` at all: refused for that first here.
        ("TestParsePayloadIatNotPositive", Reason::TokenIssuerUnknown),
        ("TestParsePayloadIatTooBig", Reason::TokenIssuerUnknown),
        ("TestParsePayloadNbfNotInteger", Reason::TokenClaimInvalid),
        ("TestParsePayloadNbfNotPositive", Reason::TokenIssuerUnknown),
        ("TestParsePayloadNbfTooBig", Reason::TokenIssuerUnknown),
        ("TestParsePayloadExpNotInteger", Reason::TokenClaimInvalid),
        ("TestParsePayloadExpNotPositive", Reason::TokenIssuerUnknown),
        ("TestParsePayloadExpTooBig", Reason::TokenIssuerUnknown),
        ("TestParsePayloadJtiNotString", Reason::TokenClaimInvalid),
        ("TestParsePayloadAudInteger", Reason::TokenClaimInvalid),
        ("TestParsePayloadAudIntegerList", Reason::TokenClaimInvalid),
        ("InvalidSignature", Reason::TokenMalformed),
    ];
    assert_eq!(ours.len(), VL_PARSE_FAILURES.len());
    for ((name, _theirs, token), (our_name, reason)) in VL_PARSE_FAILURES.iter().zip(ours) {
        assert_eq!(*name, our_name);
        assert_eq!(engine.issuers().verify(token, NOW).unwrap_err(), reason, "{name}");
    }
    // Their out-of-range times, with an `iss` of ours, are refused for the times themselves.
    let ed = SigningKey::generate(Algorithm::EdDSA, "ed-1").unwrap();
    let (ed_engine, _) = vl_ec_engine_with_ed(&ed);
    for (name, value) in [
        ("iat", json!(-12345)),
        ("nbf", json!(-12345)),
        ("exp", json!(-12345)),
        ("iat", json!(2.001e206)),
        ("nbf", json!(2.001e206)),
        ("exp", json!(2.001e206)),
    ] {
        let payload =
            json!({"iss": VL_ISS, "sub": "1234567890", "aud": VL_AUD, "exp": NOW + 60, name: value});
        let token = ed.sign_raw(r#"{"alg":"EdDSA","kid":"ed-1"}"#, &payload.to_string()).unwrap();
        assert_eq!(
            ed_engine.issuers().verify(&token, NOW).unwrap_err(),
            Reason::TokenClaimInvalid,
            "{name}: {value}"
        );
    }
}

/// An issuer named as jwt_verify_lib's, holding one Ed25519 key of ours (to sign their payloads).
fn vl_ec_engine_with_ed(ed: &SigningKey) -> (Engine, Vec<String>) {
    vl_engine_with_ed(ed, 30)
}

fn vl_engine_with_ed(ed: &SigningKey, skew: u64) -> (Engine, Vec<String>) {
    issuer_engine(json!({"name": "vl", "issuer": VL_ISS, "audiences": [VL_AUD], "algorithms": ["EdDSA"],
                  "clock_skew_seconds": skew, "jwks": {"keys": [ed.public_jwk()]}}))
}

// ---------------------------------------------------------------------------------------------
// google/jwt_verify_lib test/jwt_time_test.cc and jwt_test.cc TestParsePayloadIatDecimalsDrop
// ---------------------------------------------------------------------------------------------

/// Their `exp` and `nbf` (jwt_time_test.cc `ExpTime`, `NbfTime`), on a token of ours: the same
/// decisions at the same instants, with their default skew (60 s) and a custom one (10 s).
#[test]
fn jwt_verify_lib_time_vectors() {
    const EXP: u64 = 1_605_052_800;
    const NBF: u64 = 1_605_050_800;
    let ed = SigningKey::generate(Algorithm::EdDSA, "ed-1").unwrap();
    let payload = json!({"iss": VL_ISS, "sub": "test@example.com", "aud": VL_AUD, "exp": EXP, "nbf": NBF});
    let token = ed.sign_raw(r#"{"alg":"EdDSA","kid":"ed-1"}"#, &payload.to_string()).unwrap();
    for (skew, margin) in [(60, 10), (10, 1)] {
        let (engine, _) = vl_engine_with_ed(&ed, skew);
        let at = |now: u64| engine.issuers().verify(&token, now).map(|v| v.subject);
        assert_eq!(at(EXP + skew - margin), Ok("test@example.com".into()), "skew {skew}");
        assert_eq!(at(EXP + skew + margin), Err(Reason::TokenExpired), "skew {skew}");
        assert_eq!(at(NBF - skew + margin), Ok("test@example.com".into()), "skew {skew}");
        assert_eq!(at(NBF - skew - margin), Err(Reason::TokenNotYetValid), "skew {skew}");
    }
    // TestParsePayloadIatDecimalsDrop: `iat` 1234.5678 is accepted and counts as 1234 for ages; the
    // claim keeps its value.
    let (engine, _) = vl_engine_with_ed(&ed, 60);
    let payload =
        json!({"iss": VL_ISS, "sub": "1234567890", "aud": VL_AUD, "exp": NOW + 60, "iat": 1234.5678});
    let token = ed.sign_raw(r#"{"alg":"EdDSA","kid":"ed-1"}"#, &payload.to_string()).unwrap();
    let v = engine.issuers().verify(&token, NOW).unwrap();
    assert_eq!(v.issued_at, Some(1234));
    assert_eq!(v.claim("iat"), Some(json!(1234.5678)));
    // Deliberate strictness: a fractional `nbf` is rounded up, where they drop the fraction.
    let payload =
        json!({"iss": VL_ISS, "sub": "s", "aud": VL_AUD, "exp": NOW + 600, "nbf": (NOW + 60) as f64 + 0.5});
    let token = ed.sign_raw(r#"{"alg":"EdDSA","kid":"ed-1"}"#, &payload.to_string()).unwrap();
    assert_eq!(engine.issuers().verify(&token, NOW), Err(Reason::TokenNotYetValid));
    assert_eq!(engine.issuers().verify(&token, NOW + 1).map(|v| v.subject), Ok("s".into()));
}

// ---------------------------------------------------------------------------------------------
// Envoy test/extensions/filters/http/jwt_authn/test_common.h
// ---------------------------------------------------------------------------------------------

/// An RS256 key of test_common.h `PublicKey`: with a kid (modulus `ENVOY_N1`), or the kid-less one.
fn envoy_key(kid: Option<&str>) -> Value {
    match kid {
        Some(kid) => {
            json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": ENVOY_N1, "e": "AQAB"})
        }
        None => json!({"kty": "RSA", "alg": "RS256", "use": "sig", "n": ENVOY_N3, "e": "AQAB"}),
    }
}

/// test_common.h `ExampleConfig`'s provider (issuer and audiences) with the keys of `PublicKey`: two
/// RS256 keys with kids and one without (their JSON has a trailing comma, so it is rebuilt here).
fn envoy_engine(edit: impl FnOnce(&mut Value)) -> Engine {
    let mut issuer = json!({
        "name": "example_provider", "issuer": "https://example.com",
        "audiences": ["example_service", "http://example_service1", "https://example_service2/"],
        "algorithms": ["RS256"],
        "jwks": {"keys": [envoy_key(Some("62a93512c9ee4c7f8067b5a216dade2763d32a47")),
                          envoy_key(Some("b3319a147514df7ee5e4bcdee51350cc890cc89e")), envoy_key(None)]},
    });
    edit(&mut issuer);
    issuer_engine(issuer).0
}

#[test]
fn envoy_jwt_authn_vectors() {
    let engine = envoy_engine(|_| {});
    let verify = |t: &str| engine.issuers().verify(t, NOW);
    // Accepted there, accepted here, with every claim reachable with its JSON type.
    let good = verify(ENVOY_GOOD_TOKEN).unwrap();
    assert_eq!(good.subject, "test@example.com");
    assert_eq!(good.expires_at, Some(2_001_001_001));
    assert_eq!(good.claim("aud"), Some(json!("example_service")));
    let spaces = verify(ENVOY_GOOD_TOKEN_WITH_SPACES).unwrap();
    assert_eq!(spaces.claim("scope"), Some(json!("read write")));
    assert_eq!(spaces.scopes(), ["read", "write"]);
    assert_eq!(spaces.claim("test_string"), Some(json!("test_value")));
    assert_eq!(spaces.claim("test_num"), Some(json!(1337)));
    let nested = verify(ENVOY_NESTED_GOOD_TOKEN).unwrap();
    assert_eq!(nested.claim("nested.key-1"), Some(json!("value1")));
    assert_eq!(nested.claim("nested.nested-2.key-3"), Some(json!(true)));
    assert_eq!(nested.claim("nested.nested-2.key-4"), Some(json!(9999)));
    assert_eq!(nested.claim("nested.nested-2.key-5"), Some(json!(["str1", "str2"])));
    assert_eq!(nested.claim_text("nested.nested-2.key-4").as_deref(), Some("9999"));
    assert_eq!(nested.claim("nested.wrong.claim"), None);
    // Every bit flip of a good signature is refused.
    for flipped in signature_bit_flips(ENVOY_GOOD_TOKEN).into_iter().step_by(5) {
        assert_eq!(verify(&flipped).unwrap_err(), Reason::TokenSignatureInvalid);
    }

    // Refused there, refused here.
    assert_eq!(verify(ENVOY_EXPIRED_TOKEN).unwrap_err(), Reason::TokenExpired);
    assert_eq!(verify(ENVOY_INVALID_AUD_TOKEN).unwrap_err(), Reason::TokenAudienceInvalid);
    assert_eq!(verify(ENVOY_OTHER_GOOD_TOKEN).unwrap_err(), Reason::TokenIssuerUnknown);
    // Signed by a key not in the set (no kid in its header): no key verifies it.
    assert_eq!(verify(ENVOY_NON_EXIST_KID_TOKEN).unwrap_err(), Reason::TokenSignatureInvalid);
    // `nbf` 2^63-1: not yet valid there; absurd (beyond the year 10000) here.
    assert_eq!(verify(ENVOY_NOT_YET_VALID_TOKEN).unwrap_err(), Reason::TokenClaimInvalid);
    // At its own `exp` it verifies, and past `exp` plus the 30 s skew it is expired.
    assert_eq!(
        engine.issuers().verify(ENVOY_EXPIRED_TOKEN, 1_205_005_587).map(|v| v.subject),
        Ok("test@example.com".into())
    );
    assert_eq!(
        engine.issuers().verify(ENVOY_EXPIRED_TOKEN, 1_205_005_587 + 31).unwrap_err(),
        Reason::TokenExpired
    );
}

/// `NonExpiringToken` (`iat` 1533175942, no `exp`, no `aud`): Envoy accepts such a token with its
/// default `require_expiration: false` and a provider without audiences. Its signature is by a key
/// outside `PublicKey`, so its claims are replayed here on a token of ours: both refusals are
/// deliberate (table above), and `require_expiry: false` lifts only the first.
#[test]
fn envoy_non_expiring_token_is_refused_deliberately() {
    let envoy = envoy_engine(|_| {});
    assert_eq!(
        envoy.issuers().verify(ENVOY_NON_EXPIRING_TOKEN, NOW).unwrap_err(),
        Reason::TokenSignatureInvalid
    );
    let ed = SigningKey::generate(Algorithm::EdDSA, "ed-1").unwrap();
    let sign = |payload: Value| ed.sign_raw(r#"{"alg":"EdDSA","kid":"ed-1"}"#, &payload.to_string()).unwrap();
    let (strict, _) = vl_engine_with_ed(&ed, 30);
    let no_exp =
        sign(json!({"iss": VL_ISS, "sub": "test@example.com", "iat": 1_533_175_942u64, "aud": VL_AUD}));
    let no_exp_no_aud = sign(json!({"iss": VL_ISS, "sub": "test@example.com", "iat": 1_533_175_942u64}));
    assert_eq!(strict.issuers().verify(&no_exp, NOW).unwrap_err(), Reason::TokenExpiryMissing);
    assert_eq!(strict.issuers().verify(&no_exp_no_aud, NOW).unwrap_err(), Reason::TokenAudienceInvalid);
    let (lenient, _) =
        issuer_engine(json!({"name": "vl", "issuer": VL_ISS, "audiences": [VL_AUD], "algorithms": ["EdDSA"],
                      "require_expiry": false, "jwks": {"keys": [ed.public_jwk()]}}));
    assert_eq!(lenient.issuers().verify(&no_exp, NOW).unwrap().subject, "test@example.com");
    assert_eq!(lenient.issuers().verify(&no_exp_no_aud, NOW).unwrap_err(), Reason::TokenAudienceInvalid);
}

/// A token naming a kid that only the kid-less key of `PublicKey` fits is verified by that key only
/// if it signed it: Envoy's key without kid is not a wildcard for a forged signature.
#[test]
fn envoy_kidless_key_is_no_wildcard() {
    let engine = envoy_engine(|i| i["jwks"]["keys"] = json!([envoy_key(None)]));
    // GoodToken (no kid) is signed by a key with a kid: the kid-less key does not verify it.
    assert_eq!(engine.issuers().verify(ENVOY_GOOD_TOKEN, NOW).unwrap_err(), Reason::TokenSignatureInvalid);
    let with_kid = envoy_engine(|i| {
        i["jwks"]["keys"] = json!([envoy_key(Some("62a93512c9ee4c7f8067b5a216dade2763d32a47"))])
    });
    assert_eq!(with_kid.issuers().verify(ENVOY_GOOD_TOKEN, NOW).unwrap().subject, "test@example.com");
}

/// ES256, kid `abc` (verify_jwk_ec_test.cc `JwtTextEC`, same as `JwtES256Text`).
const VL_JWT_TEXT_EC: &str = concat!(
    "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImFiYyJ9.eyJpc3MiOiI2Mjg2NDU3NDE4ODEtbm9hYml1M",
    "jNmNWE4bThvdmQ4dWN2Njk4bGo3OHZ2MGxAZGV2ZWxvcGVyLmdzZXJ2aWNlYWNjb3VudC5jb20iLCJzdWIiOiI2Mjg",
    "2NDU3NDE4ODEtbm9hYml1MjNmNWE4bThvdmQ4dWN2Njk4bGo3OHZ2MGxAZGV2ZWxvcGVyLmdzZXJ2aWNlYWNjb3Vud",
    "C5jb20iLCJhdWQiOiJodHRwOi8vbXlzZXJ2aWNlLmNvbS9teWFwaSJ9.T2KAwChqgo2ZSXyLh3IcMBQNSeRZRe5Z-M",
    "UDl-s-F99XGoyutqA6lq8bKZ6vmjZAlpVG8AGRZW9JGp9lq3cbEw"
);

/// ES384, kid `es384`.
const VL_JWT_ES384_TEXT: &str = concat!(
    "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6ImVzMzg0In0.eyJpc3MiOiI2Mjg2NDU3NDE4ODEtbm9hYm",
    "l1MjNmNWE4bThvdmQ4dWN2Njk4bGo3OHZ2MGxAZGV2ZWxvcGVyLmdzZXJ2aWNlYWNjb3VudC5jb20iLCJzdWIiOiI2",
    "Mjg2NDU3NDE4ODEtbm9hYml1MjNmNWE4bThvdmQ4dWN2Njk4bGo3OHZ2MGxAZGV2ZWxvcGVyLmdzZXJ2aWNlYWNjb3",
    "VudC5jb20iLCJhdWQiOiJodHRwOi8vbXlzZXJ2aWNlLmNvbS9teWFwaSJ9.aKFxrqV4_rg1Zf2DamTU0D76hOq9-FY",
    "u-LNmpGPthjJKv31mOZ4tJ40x2FVVJx5d8lntg3bsy1IN0z9C7MD_k10Y7Gea1YB7Jyi-DR68U5krJzzwKmD9ap1J7",
    "tb2UrzT"
);

/// ES512, kid `es512`.
const VL_JWT_ES512_TEXT: &str = concat!(
    "eyJhbGciOiJFUzUxMiIsInR5cCI6IkpXVCIsImtpZCI6ImVzNTEyIn0.eyJpc3MiOiI2Mjg2NDU3NDE4ODEtbm9hYm",
    "l1MjNmNWE4bThvdmQ4dWN2Njk4bGo3OHZ2MGxAZGV2ZWxvcGVyLmdzZXJ2aWNlYWNjb3VudC5jb20iLCJzdWIiOiI2",
    "Mjg2NDU3NDE4ODEtbm9hYml1MjNmNWE4bThvdmQ4dWN2Njk4bGo3OHZ2MGxAZGV2ZWxvcGVyLmdzZXJ2aWNlYWNjb3",
    "VudC5jb20iLCJhdWQiOiJodHRwOi8vbXlzZXJ2aWNlLmNvbS9teWFwaSJ9.ATSReP9zpba6PRJZmlIEA78Ft-FZS1m",
    "_SpFLqfiNQNexaDaTmmVrIqD9X-krPxk0c8KSBeMlU-QLOsbh37coamruAPKoAODYWA-QKUN2a_xem8WrudKVXWsmQ",
    "lZDOJA0lQWI-YGMEPrDr17mljMhZwSGbVVST9l-nZiMXyMK0z8hR9Mn"
);

/// ES256, kid `abcdef` (no such key).
const VL_JWT_TEXT_WITH_NON_EXIST_KID_EC: &str = concat!(
    "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImFiY2RlZiJ9.eyJpc3MiOiI2Mjg2NDU3NDE4ODEtbm9hY",
    "ml1MjNmNWE4bThvdmQ4dWN2Njk4bGo3OHZ2MGxAZGV2ZWxvcGVyLmdzZXJ2aWNlYWNjb3VudC5jb20iLCJzdWIiOiI",
    "2Mjg2NDU3NDE4ODEtbm9hYml1MjNmNWE4bThvdmQ4dWN2Njk4bGo3OHZ2MGxAZGV2ZWxvcGVyLmdzZXJ2aWNlYWNjb",
    "3VudC5jb20iLCJhdWQiOiJodHRwOi8vbXlzZXJ2aWNlLmNvbS9teWFwaSJ9.rWSoOV5j7HxHc4yVgZEZYUSgY7AUar",
    "G3HxdfPON1mw6II_pNUsc8_sVf7Yv2-jeVhmf8BtR99wnOwEDhVYrVpQ"
);

/// ES256 without kid.
const VL_JWT_TEXT_EC_NO_KID: &str = concat!(
    "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiI2Mjg2NDU3NDE4ODEtbm9hYml1MjNmNWE4bThvdmQ4d",
    "WN2Njk4bGo3OHZ2MGxAZGV2ZWxvcGVyLmdzZXJ2aWNlYWNjb3VudC5jb20iLCJzdWIiOiI2Mjg2NDU3NDE4ODEtbm9",
    "hYml1MjNmNWE4bThvdmQ4dWN2Njk4bGo3OHZ2MGxAZGV2ZWxvcGVyLmdzZXJ2aWNlYWNjb3VudC5jb20iLCJhdWQiO",
    "iJodHRwOi8vbXlzZXJ2aWNlLmNvbS9teWFwaSJ9.zlFcET8FiOYcKe30A7qOD4TIBvtb9zIVhDcM8pievKs1Te-UOB",
    "cklQxhwXMnRSSEBY4P0pfZqWJT_V5IVrKrdQ"
);

/// test_common.h `GoodToken`.
const ENVOY_GOOD_TOKEN: &str = concat!(
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIiwic3ViIjoidGVzd",
    "EBleGFtcGxlLmNvbSIsImV4cCI6MjAwMTAwMTAwMSwiYXVkIjoiZXhhbXBsZV9zZXJ2aWNlIn0.cuui_Syud76B0tq",
    "vjESE8IZbX7vzG6xA-MDaof1qEFNIoCFT_YQPkseLSUSR2Od3TJcNKk-dKjvUEL1JW3kGnyC1dBx4f3-XxroyL23Ub",
    "R2eS8TuxO9ZcNCGkjfvH5O4mDb6cVkFHRDEolGhA7XwNiuVgkGJ5Wkrvshih6nqKXcPNaRx9lOaRWg2PkE6ySNoyju",
    "7rNfunXYtVxPuUIkl0KMq3WXWRb_cb8a_ZEprqSZUzi_ZzzYzqBNVhIJujcNWij7JRra2sXXiSAfKjtxHQoxrX8n4V",
    "1ySWJ3_1TH_cJcdfS_RKP7YgXRWC0L16PNF5K7iqRqmjKALNe83ZFnFIw"
);

/// test_common.h `GoodTokenWithSpaces`.
const ENVOY_GOOD_TOKEN_WITH_SPACES: &str = concat!(
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIiwic3ViIjoidGVzd",
    "EBleGFtcGxlLmNvbSIsImV4cCI6MjAwMTAwMTAwMSwiYXVkIjoiZXhhbXBsZV9zZXJ2aWNlIiwic2NvcGUiOiJyZWF",
    "kIHdyaXRlIiwidGVzdF9zdHJpbmciOiJ0ZXN0X3ZhbHVlIiwidGVzdF9udW0iOjEzMzd9.cKTwWSJgS0TZ3Ajc9QrA",
    "A50Me7j1zVv9YzDT_2UE5jlCs5vWkdWjUb2r7MYaqximXj3affDZdDsUxMaqqR7lWT2EbxOoEceBkCMmakgSs8tjZ2",
    "10w0YTU0OyhrrxsyxUpspPeRzPIHQTUdN7zU_KkMcUU1yDSlnJxqlYXyTL9E-DhTnLwoOdgFGiQs-md_QJfdOFgXQq",
    "U71EZ-Ofxen8EFl10wbzHubMHGLJqVfFzK-iuVr2P0OZ0ymWvPGwQdlVMojHx3P0Yb8MRbhdW04hCJq-_fTE1RNb6j",
    "a1JBFQbyGcQTtWVSdkHZ_C8syd8s-aK4C8_VhwNEDviOVrHPbztw"
);

/// test_common.h `NonExpiringToken`.
const ENVOY_NON_EXPIRING_TOKEN: &str = concat!(
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIiwic3ViIjoidGVzd",
    "EBleGFtcGxlLmNvbSIsImlhdCI6MTUzMzE3NTk0Mn0.OSh-AcY9dCUibXiIZzPlTdEsYH8xP3QkCJDesO3LVu4ndgT",
    "rxDnNuR3I4_oV4tjtirmLZD3sx96wmLiIhOyqj3nipIdf_aQWcmET0XoRqGixOKse5FlHyU_VC1Jj9AlMvSz9zyCvK",
    "xMyP0CeA-bhI_Qs-I9vBPK8pd-EUOespUqWMQwNdtrOdXLcvF8EA5BV5G2qRGzCU0QJaW0DpyjYF7ZCswRGorc2oMt",
    "5duXSp3-L1b9dDrnLwroxUrmQIZz9qvfwdDR-guyYSjKVQu5NJAyysd8XKNzmHqJ2fYhRjc5s7l5nIWTDyBXSdPKQ8",
    "cBnfFKoxaRhmMBjdEn9RB7r6A"
);

/// test_common.h `ExpiredToken`.
const ENVOY_EXPIRED_TOKEN: &str = concat!(
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIiwic3ViIjoidGVzd",
    "EBleGFtcGxlLmNvbSIsImV4cCI6MTIwNTAwNTU4NywiYXVkIjoiZXhhbXBsZV9zZXJ2aWNlIn0.izDa6aHNgbsbeRz",
    "ucE0baXIP7SXOrgopYQALLFAsKq_N0GvOyqpAZA9nwCAhqCkeKWcL-9gbQe3XJa0KN3FPa2NbW4ChenIjmf2QYXOuO",
    "QaDu9QRTdHEY2Y4mRy6DiTZAsBHWGA71_cLX-rzTSO_8aC8eIqdHo898oJw3E8ISKdryYjayb9X3wtF6KLgNomoD9_",
    "nqtOkliuLElD8grO0qHKI1xQurGZNaoeyiV1AdwgX_5n3SmQTacVN0WcSgk6YJRZG6VE8PjxZP9bEameBmbSB0810g",
    "iKRpdTU1-RJtjq6aCSTD4CYXtW38T5uko4V-S4zifK3BXeituUTebkgoA"
);

/// test_common.h `NotYetValidToken`.
const ENVOY_NOT_YET_VALID_TOKEN: &str = concat!(
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIiwic3ViIjoidGVzd",
    "EBleGFtcGxlLmNvbSIsImF1ZCI6ImV4YW1wbGVfc2VydmljZSIsIm5iZiI6OTIyMzM3MjAzNjg1NDc3NTgwN30K.iz",
    "Da6aHNgbsbeRzucE0baXIP7SXOrgopYQALLFAsKq_N0GvOyqpAZA9nwCAhqCkeKWcL-9gbQe3XJa0KN3FPa2NbW4Ch",
    "enIjmf2QYXOuOQaDu9QRTdHEY2Y4mRy6DiTZAsBHWGA71_cLX-rzTSO_8aC8eIqdHo898oJw3E8ISKdryYjayb9X3w",
    "tF6KLgNomoD9_nqtOkliuLElD8grO0qHKI1xQurGZNaoeyiV1AdwgX_5n3SmQTacVN0WcSgk6YJRZG6VE8PjxZP9bE",
    "ameBmbSB0810giKRpdTU1-RJtjq6aCSTD4CYXtW38T5uko4V-S4zifK3BXeituUTebkgoA"
);

/// test_common.h `InvalidAudToken`.
const ENVOY_INVALID_AUD_TOKEN: &str = concat!(
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIiwic3ViIjoidGVzd",
    "EBleGFtcGxlLmNvbSIsImV4cCI6MjAwMTAwMTAwMSwiYXVkIjoiaW52YWxpZF9zZXJ2aWNlIn0.B9HuVXpRDVYIvAp",
    "fNQmE_l5fEMPEiPdi-sdKbTione8I_UsnYHccKZVegaF6f2uyWhAvaTPgaMosyDlJD6skadEcmZD0V4TzsYKv7eP5F",
    "Qga26hZ1Kra7n9hAq4oFfH0J8aZLOvDV3tAgCNRXlh9h7QiBPeDNQlwztqEcsyp1lHI3jdUhsn3InIn-vathdx4PWQ",
    "WLVb-74vwsP-END-MGlOfu_TY5OZUeY-GBE4Wr06aOSU2XQjuNr6y2WJGMYFsKKWfF01kHSuyc9hjnq5UI19WrOM8s",
    "7LFP4w2iKWFIPUGmPy3aM0TiF2oFOuuMxdPR3HNdSG7EWWRwoXv7n__jA"
);

/// test_common.h `NonExistKidToken`.
const ENVOY_NON_EXIST_KID_TOKEN: &str = concat!(
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIiwic3ViIjoidGVzd",
    "EBleGFtcGxlLmNvbSIsImF1ZCI6ImV4YW1wbGVfc2VydmljZSIsImV4cCI6MjAwMTAwMTAwMX0.n45uWZfIBZwCIPi",
    "L0K8Ca3tmm-ZlsDrC79_vXCspPwk5oxdSn983tuC9GfVWKXWUMHe11DsB02b19Ow-fmoEzooTFn65Ml7G34nW07amy",
    "M6lETiMhNzyiunctplOr6xKKJHmzTUhfTirvDeG-q9n24-8lH7GP8GgHvDlgSM9OY7TGp81bRcnZBmxim_UzHoYO3_",
    "c8OP4ZX3xG5PfihVk5G0g6wcHrO70w0_64JgkKRCrLHMJSrhIgp9NHel_CNOnL0AjQKe9IGblJrMuouqYYS0zEWwmO",
    "VUWUSxQkoLpldQUVefcfjQeGjz8IlvktRa77FYexfP590ACPyXrivtsxg"
);

/// test_common.h `OtherGoodToken`.
const ENVOY_OTHER_GOOD_TOKEN: &str = concat!(
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL290aGVyLmNvbSIsInN1YiI6InRlc3RAb",
    "3RoZXIuY29tIiwiYXVkIjoib3RoZXJfc2VydmljZSIsImV4cCI6MjAwMTAwMTAwMX0.R0GR2rnRTg_gWzDvuO-BXVM",
    "mw3-vyBspV_kUQ4zvIdO-_1icaWzbioPTPEyoViWuErNYxaZ5YFBoD6Zk_hIe1YWoSJr9QRwxWA4CWcasJdBXPq2mM",
    "ETt8VjAiXE_aIrJOLIlP786GLjVgTsnvhaDUJyU7xUdoi9HRjEBYcdjNPvxJutoby8MypAkwdGxjl4H4Z01gomgWyU",
    "DRRy47OKI_buwXk5M6d-drRvLcvlT5gB4adOIOlmhm8xtXgYpvqrXfmMJCHbP9no7JATFaTEAkmA3OOxDsaOju4BFg",
    "MtRZtDM8p12QQG0rFl_FE-2FqYX9qA4q41HJ4vxTSxgObeLGA"
);

/// test_common.h `NestedGoodToken`.
const ENVOY_NESTED_GOOD_TOKEN: &str = concat!(
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIiwic3ViIjoidGVzd",
    "EBleGFtcGxlLmNvbSIsImF1ZCI6ImV4YW1wbGVfc2VydmljZSIsImV4cCI6MjAwMTAwMTAwMSwibmVzdGVkIjp7Imt",
    "leS0xIjoidmFsdWUxIiwibmVzdGVkLTIiOnsia2V5LTIiOiJ2YWx1ZTIiLCJrZXktMyI6dHJ1ZSwia2V5LTQiOjk5O",
    "TksImtleS01IjpbInN0cjEiLCJzdHIyIl19fX0.uCXNQUSualacToI0gyXz5NStad2aNBfZHiLB5mTddy-uV8Dxsa8",
    "U81NwDHGlvNksmMTodBwIeEYJ0ISkl03kKN_VepiEpNNWJNpgOcdTqAE9-aGip-kGWZAavJS6r3fystUGIjXyI9EKN",
    "EqeUFCihpiII-MTbcqdaSzwdbJPeGQzHyensPG6BfDjdv39b_gdO_eH1azaVwi4HnChoJcsGrBjsH6-IyJVR6Ux_43",
    "fo3Wbs0SB82hLpiWPsucO7l4CyII5d5jPQbAM9ajcvAmh7FprIsf35acOT2bQ8dmrSD9KSjsYomkF_OAci-osyRzYO",
    "gkGHIDGDyjj87xaPPuzIw"
);

/// Modulus of the two RS256 keys with kids in test_common.h `PublicKey`.
const ENVOY_N1: &str = concat!(
    "up97uqrF9MWOPaPkwSaBeuAPLOr9FKcaWGdVEGzQ4f3Zq5WKVZowx9TCBxmImNJ1qmUi13pB8otwM_l5lfY1AFBMxV",
    "bQCUXntLovhDaiSvYp4wGDjFzQiYA-pUq8h6MUZBnhleYrkU7XlCBwNVyN8qNMkpLA7KFZYz-486GnV2NIJJx_4BGa",
    "3HdKwQGxi2tjuQsQvao5W4xmSVaaEWopBwMy2QmlhSFQuPUpTaywTqUcUq_6SfAHhZ4IDa_FxEd2c2z8gFGtfst9cY",
    "3lRYf-c_ZdboY3mqN9Su3-j3z5r2SHWlhB_LNAjyWlBGsvbGPlTqDziYQwZN4aGsqVKQb9Vw"
);

/// Modulus of the RS256 key without kid in test_common.h `PublicKey`.
const ENVOY_N3: &str = concat!(
    "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbw",
    "KfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-4",
    "0RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UW",
    "VRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw"
);

/// jwt_test.cc: tokens jwt_verify_lib refuses to parse, with its status.
const VL_PARSE_FAILURES: &[(&str, &str, &str)] = &[
    ("TestParseHeaderBadBase64", "JwtHeaderParseErrorBadBase64", "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsIHRoaXMgaXMgYSBpbnZhbGlkIGpzb259+.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIiwic3ViIjoidGVzdEBleGFtcGxlLmNvbSIsImV4cCI6MTUwMTI4MTA1OH0.VGVzdFNpZ25hdHVyZQ"),
    ("TestParseHeaderBadJson", "JwtHeaderParseErrorBadJson", "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsIHRoaXMgaXMgYSBpbnZhbGlkIGpzb259.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIiwic3ViIjoidGVzdEBleGFtcGxlLmNvbSIsImV4cCI6MTUwMTI4MTA1OH0.VGVzdFNpZ25hdHVyZQ"),
    ("TestParseHeaderAbsentAlg", "JwtHeaderBadAlg", "eyJ0eXAiOiJKV1QifQ.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIiwic3ViIjoidGVzdEBleGFtcGxlLmNvbSIsImV4cCI6MTUwMTI4MTA1OH0.VGVzdFNpZ25hdHVyZQ"),
    ("TestParseHeaderAlgIsNotString", "JwtHeaderBadAlg", "eyJhbGciOjI1NiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIiwic3ViIjoidGVzdEBleGFtcGxlLmNvbSIsImV4cCI6MTUwMTI4MTA1OH0.VGVzdFNpZ25hdHVyZQ"),
    ("TestParseHeaderInvalidAlg", "JwtHeaderNotImplementedAlg", "eyJhbGciOiJJbnZhbGlkQWxnIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIiwic3ViIjoidGVzdEBleGFtcGxlLmNvbSIsImV4cCI6MTUwMTI4MTA1OH0.VGVzdFNpZ25hdHVyZQ"),
    ("TestParseHeaderBadFormatKid", "JwtHeaderBadKid", "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6MX0.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIiwic3ViIjoidGVzdEBleGFtcGxlLmNvbSIsImV4cCI6MTUwMTI4MTA1OH0.VGVzdFNpZ25hdHVyZQ"),
    ("TestParsePayloadBadBase64", "JwtPayloadParseErrorBadBase64", "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.dGhpcyBpcyBub3QgYSBqc29u+.VGVzdFNpZ25hdHVyZQ"),
    ("TestParsePayloadBadJson", "JwtPayloadParseErrorBadJson", "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.dGhpcyBpcyBub3QgYSBqc29u.VGVzdFNpZ25hdHVyZQ"),
    ("TestParsePayloadIssNotString", "JwtPayloadParseErrorIssNotString", "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyAiaXNzIjogdHJ1ZSwgICAgInN1YiI6ICJ0ZXN0X3N1YmplY3QiLCAgImV4cCI6ICAxMjM0NTY3ODkgfQ.VGVzdFNpZ25hdHVyZQ"),
    ("TestParsePayloadSubNotString", "JwtPayloadParseErrorSubNotString", "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyAiaXNzIjoidGVzdF9pc3N1ZXIiLCAic3ViIjogMTIzNDU2LCAgImV4cCI6IDEyMzQ1Njc4OSB9.VGVzdFNpZ25hdHVyZQ"),
    ("TestParsePayloadIatNotInteger", "JwtPayloadParseErrorIatNotInteger", "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyAiaXNzIjoidGVzdF9pc3N1ZXIiLCAic3ViIjogInRlc3Rfc3ViamVjdCIsICJpYXQiOiAiMTIzNDU2Nzg5IiB9.VGVzdFNpZ25hdHVyZQ"),
    ("TestParsePayloadIatNotPositive", "JwtPayloadParseErrorIatOutOfRange", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjotMTIzNDV9.J0q58VUq4Vx71aVlH0gRCtNfmQrQ1Cw2dFVZ6WqDbBw"),
    ("TestParsePayloadIatTooBig", "JwtPayloadParseErrorIatOutOfRange", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoyLjAwMWUrMjA2fQ.Sdnjb4zh6VnxtTJGlBRTBIQsQYDDxdd8qDI7B5FNdEQ"),
    ("TestParsePayloadNbfNotInteger", "JwtPayloadParseErrorNbfNotInteger", "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyAiaXNzIjoidGVzdF9pc3N1ZXIiLCAic3ViIjogInRlc3Rfc3ViamVjdCIsICJuYmYiOiAiMTIzNDU2Nzg5IiB9.VGVzdFNpZ25hdHVyZQ"),
    ("TestParsePayloadNbfNotPositive", "JwtPayloadParseErrorNbfOutOfRange", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwibmJmIjotMTIzNDV9.rlnrK7unNEaaghPFhNQnDp1GRbCU0rGORO2yDf5YIZk"),
    ("TestParsePayloadNbfTooBig", "JwtPayloadParseErrorNbfOutOfRange", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwibmJmIjoyLjAwMWUrMjA2fQ.K9TSv9vMhzE1Je3DPJDcaztYp6kjULZt7RScHDMxTZw"),
    ("TestParsePayloadExpNotInteger", "JwtPayloadParseErrorExpNotInteger", "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyAiaXNzIjoidGVzdF9pc3N1ZXIiLCAic3ViIjogInRlc3Rfc3ViamVjdCIsICJleHAiOiAiMTIzNDU2Nzg5IiB9.VGVzdFNpZ25hdHVyZQ"),
    ("TestParsePayloadExpNotPositive", "JwtPayloadParseErrorExpOutOfRange", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiZXhwIjotMTIzNDV9.BCgzT_CEurIxa0MxbS9seJ62lgfJT54P7AQpUkp65GE"),
    ("TestParsePayloadExpTooBig", "JwtPayloadParseErrorExpOutOfRange", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiZXhwIjoyLjAwMWUrMjA2fQ._mvA4ErN4W07mRzop3jBlZmmrywafvZpbfHZ1QKoplU"),
    ("TestParsePayloadJtiNotString", "JwtPayloadParseErrorJtiNotString", "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyAiaXNzIjoidGVzdF9pc3N1ZXIiLCAic3ViIjogInRlc3Rfc3ViamVjdCIsICJqdGkiOiAxMjM0NTY3fQ.VGVzdFNpZ25hdHVyZQ"),
    ("TestParsePayloadAudInteger", "JwtPayloadParseErrorAudNotString", "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyAiaXNzIjoidGVzdF9pc3N1ZXIiLCAic3ViIjogInRlc3Rfc3ViamVjdCIsICJhdWQiOiAxMjM0NTY3fQ.VGVzdFNpZ25hdHVyZQ"),
    ("TestParsePayloadAudIntegerList", "JwtPayloadParseErrorAudNotString", "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyAiaXNzIjoidGVzdF9pc3N1ZXIiLCAic3ViIjogInRlc3Rfc3ViamVjdCIsICJhdWQiOiBbMSwyXX0.VGVzdFNpZ25hdHVyZQ"),
    ("InvalidSignature", "JwtSignatureParseErrorBadBase64", "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImFmMDZjMTlmOGU1YjMzMTUyMTZkZjAxMGZkMmI5YTkzYmFjMTM1YzgifQ.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIiwiaWF0IjoxNTE3ODc1MDU5LCJhdWQiOlsiYXVkMSIsImF1ZDIiXSwiZXhwIjoxNTE3ODc4NjU5LCJzdWIiOiJodHRwczovL2V4YW1wbGUuY29tIn0.invalid-signature"),
];
