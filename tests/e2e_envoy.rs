//! End-to-end: the release module in a real Envoy, enforcing a test policy over HTTP on loopback.
//! Keys and tokens are generated here, for RS256, ES256 and EdDSA.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use meshward::cli::dev::{jwks, SigningKey, TokenSpec};
use meshward::token::Algorithm;
use serde_json::json;
use support::{Envoy, Response, Started};

const AUDIENCE: &str = "api.test";
const HOST: &str = "api.test";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

struct Issuers {
    rsa: SigningKey,
    ec: SigningKey,
    ed: SigningKey,
}

impl Issuers {
    fn generate() -> Self {
        Issuers {
            rsa: SigningKey::generate(Algorithm::RS256, "rsa-1").unwrap(),
            ec: SigningKey::generate(Algorithm::ES256, "ec-1").unwrap(),
            ed: SigningKey::generate(Algorithm::EdDSA, "ed-1").unwrap(),
        }
    }

    fn all(&self) -> [(&str, &SigningKey); 3] {
        [
            ("https://rsa.issuer.test", &self.rsa),
            ("https://ec.issuer.test", &self.ec),
            ("https://ed.issuer.test", &self.ed),
        ]
    }

    fn bundle(&self) -> String {
        let issuers: Vec<_> = self
            .all()
            .iter()
            .map(|(iss, key)| {
                json!({
                    "name": iss.trim_start_matches("https://"),
                    "issuer": iss,
                    "audiences": [AUDIENCE],
                    "algorithms": [key.algorithm().name()],
                    "jwks": jwks(&[key]),
                })
            })
            .collect();
        json!({
            "name": "e2e",
            "version": "test",
            "issuers": issuers,
            "settings": {"remove_token": true},
            "rules": [
                {"id": "read", "hosts": [HOST], "methods": ["GET", "HEAD"],
                 "paths": [{"prefix": "/read"}], "subjects": ["spiffe://test/*"]},
                {"id": "write", "hosts": [HOST], "methods": ["PUT"],
                 "paths": [{"prefix": "/write"}], "subjects": ["spiffe://test/writer"]},
            ],
        })
        .to_string()
    }
}

fn token(key: &SigningKey, iss: &str, sub: &str, edit: impl FnOnce(&mut TokenSpec)) -> String {
    let mut spec = TokenSpec::new(iss, sub, AUDIENCE, now(), 300);
    edit(&mut spec);
    key.sign(&spec).unwrap()
}

fn get(envoy: &Envoy, method: &str, path: &str, bearer: Option<&str>) -> Response {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Host", HOST), ("x-meshward-subject", "spiffe://test/forged-by-client")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    envoy.request(method, path, &headers)
}

fn assert_denied(r: &Response, status: u16, reason: &str, case: &str) {
    assert_eq!(r.status, status, "{case}: {r:?}");
    assert_eq!(r.json()["reason"], reason, "{case}: {r:?}");
    assert!(r.json()["request_id"].is_string(), "{case}: request id in body: {r:?}");
    if status == 401 {
        let challenge = r.header("www-authenticate").unwrap_or_else(|| panic!("{case}: no challenge"));
        assert!(challenge.starts_with("Bearer realm=\"meshward\""), "{case}: {challenge}");
        if reason != "token_missing" {
            assert!(challenge.contains("error=\"invalid_token\""), "{case}: {challenge}");
        }
    }
}

#[test]
fn envoy_enforces_the_policy() {
    let keys = Issuers::generate();
    let bundle = keys.bundle();
    let envoy = Envoy::start(&bundle);

    // The load is audited with the policy digest of what Envoy delivered (YAML adds a newline,
    // which the canonical form ignores). Envoy configures each VM (main thread, worker): every
    // load names the same digest.
    let load = envoy.log_records("policy_load");
    assert!(!load.is_empty(), "no policy_load record:\n{}", envoy.log());
    let digest = meshward::audit::policy_digest(bundle.as_bytes());
    for record in &load {
        assert_eq!(record["sha256"], digest);
        assert_eq!(
            (record["bundle"].as_str(), record["rules"].as_u64(), record["issuers"].as_u64()),
            (Some("e2e"), Some(2), Some(3))
        );
        // What configuring cost: wasm memory comes in 64 KiB pages.
        let memory = record["memory_bytes"].as_u64().unwrap_or(0);
        assert!(memory > 0 && memory % 65_536 == 0, "{record}");
        assert!(record["configure_ms"].is_u64(), "{record}");
    }
    // The memory gauge shows the largest VM: at least what any load reported.
    let largest = load.iter().filter_map(|r| r["memory_bytes"].as_u64()).max().unwrap_or(0);
    assert!(
        envoy.prometheus_value("meshward_vm_memory_bytes{}") >= largest,
        "{}",
        envoy.admin("/stats/prometheus")
    );

    // Allowed, for each algorithm: the backend sees the verified identity, not the client's copy.
    for (iss, key) in keys.all() {
        let t = token(key, iss, "spiffe://test/reader", |_| {});
        let r = get(&envoy, "GET", "/read/items?page=2", Some(&t));
        assert_eq!(r.status, 200, "{iss}: {r:?}\n{}", envoy.log());
        assert_eq!(r.body, "backend: request accepted\n");
        assert_eq!(r.header("x-backend-saw-subject"), Some("spiffe://test/reader"), "{iss}");
        assert_eq!(r.header("x-backend-saw-issuer"), Some(iss.trim_start_matches("https://")));
        assert_eq!(r.header("x-backend-saw-authorization"), None, "remove_token: the token stays here");
    }
    let (ec_iss, ec) = keys.all()[1];
    let writer = token(ec, ec_iss, "spiffe://test/writer", |_| {});
    assert_eq!(get(&envoy, "PUT", "/write/a", Some(&writer)).status, 200);

    // Denied by policy: a valid token, but no rule lets a reader write.
    let reader = token(ec, ec_iss, "spiffe://test/reader", |_| {});
    assert_denied(
        &get(&envoy, "PUT", "/write/a", Some(&reader)),
        403,
        "policy_no_matching_rule",
        "reader writes",
    );
    assert_denied(&get(&envoy, "DELETE", "/read/a", Some(&reader)), 403, "policy_no_matching_rule", "method");

    // Token problems: 401 with an RFC 6750 challenge.
    assert_denied(&get(&envoy, "GET", "/read/a", None), 401, "token_missing", "no token");
    for (iss, key) in keys.all() {
        let expired = token(key, iss, "spiffe://test/reader", |s| {
            s.issued_at = Some(now() - 7200);
            s.expires_at = Some(now() - 3600);
        });
        assert_denied(&get(&envoy, "GET", "/read/a", Some(&expired)), 401, "token_expired", iss);
    }
    let wrong_issuer = token(ec, "https://other.issuer.test", "spiffe://test/reader", |_| {});
    assert_denied(&get(&envoy, "GET", "/read/a", Some(&wrong_issuer)), 401, "token_issuer_unknown", "iss");
    let wrong_audience =
        token(ec, ec_iss, "spiffe://test/reader", |s| s.audiences = vec!["other.test".into()]);
    assert_denied(
        &get(&envoy, "GET", "/read/a", Some(&wrong_audience)),
        401,
        "token_audience_invalid",
        "aud",
    );
    let no_exp = token(ec, ec_iss, "spiffe://test/reader", |s| s.expires_at = None);
    assert_denied(&get(&envoy, "GET", "/read/a", Some(&no_exp)), 401, "token_expiry_missing", "exp");

    // Signed by an impostor key that claims the issuer's kid.
    let impostor = SigningKey::generate(Algorithm::ES256, "ec-1").unwrap();
    let forged = token(&impostor, ec_iss, "spiffe://test/writer", |_| {});
    assert_denied(&get(&envoy, "PUT", "/write/a", Some(&forged)), 401, "token_signature_invalid", "bad sig");

    // A reader's token whose payload was edited to claim the writer's identity.
    for (iss, key) in keys.all() {
        let t = token(key, iss, "spiffe://test/reader", |_| {});
        let parts: Vec<&str> = t.split('.').collect();
        let payload =
            base64_url(&String::from_utf8(base64_url_decode(parts[1])).unwrap().replace("reader", "writer"));
        let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
        assert_denied(&get(&envoy, "PUT", "/write/a", Some(&tampered)), 401, "token_signature_invalid", iss);
    }

    // Ambiguous paths are refused before anything else (Envoy's default: no normalization).
    assert_denied(
        &get(&envoy, "GET", "/read/../write/a", Some(&writer)),
        400,
        "request_path_rejected",
        "dots",
    );
    assert_denied(
        &get(&envoy, "GET", "/read%2F..%2Fwrite", Some(&writer)),
        400,
        "request_path_rejected",
        "%2F",
    );

    // Every decision was audited, and no audit line contains a token.
    let log = envoy.log();
    assert!(!log.contains(&writer) && !log.contains(&reader), "a token leaked into the log");
    let records = envoy.audit_records();
    // `audit_filter_state` is off by default: the access log has no copy of the records.
    let access_lines = |log: &str| -> Vec<serde_json::Value> {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("response_code").is_some())
            .collect()
    };
    let log = envoy.wait_for_log(|log| !access_lines(log).is_empty());
    let access = access_lines(&log);
    assert!(!access.is_empty() && access.iter().all(|l| l["meshward"].is_null()), "{log}");
    let allows = records.iter().filter(|r| r["decision"] == "allow").count();
    assert_eq!(allows, 4, "{records:#?}");
    let write = records.iter().find(|r| r["rule"] == "write").expect("audit record of the write");
    assert_eq!(write["subject"], "spiffe://test/writer");
    assert_eq!(write["method"], "PUT");
    assert_eq!(write["host"], HOST);
    assert_eq!(write["path"], "/write/a");
    assert!(records.iter().any(|r| r["reason"] == "token_signature_invalid" && r["subject"].is_null()));

    // The metrics account for every audited decision, by outcome and reason.
    let mut by_reason = std::collections::BTreeMap::<(String, String), u64>::new();
    for r in &records {
        let key = (r["decision"].as_str().unwrap().to_string(), r["reason"].as_str().unwrap().to_string());
        *by_reason.entry(key).or_default() += 1;
    }
    envoy.settle_counters(records.len() as u64);
    for ((outcome, reason), count) in &by_reason {
        let series = format!("meshward_decisions_total{{outcome=\"{outcome}\",reason=\"{reason}\"}}");
        assert_eq!(envoy.prometheus_value(&series), *count, "{series}");
    }
    let hits = envoy.prometheus_value("meshward_token_cache_hits_total{}");
    let misses = envoy.prometheus_value("meshward_token_cache_misses_total{}");
    let looked_up = records
        .iter()
        .filter(|r| !["token_missing", "request_path_rejected"].contains(&r["reason"].as_str().unwrap()))
        .count();
    assert_eq!(hits + misses, looked_up as u64, "every token lookup is counted as a hit or a miss");
    assert!(hits >= 1, "the writer's token was reused and must have hit the cache");
}

#[test]
fn envoy_refuses_a_bad_configuration() {
    let keys = Issuers::generate();
    let mut bundle: serde_json::Value = serde_json::from_str(&keys.bundle()).unwrap();
    bundle["rules"][1]["methods"] = json!(["put"]);
    match Envoy::try_start(&bundle.to_string()) {
        Started::Ready(envoy) => panic!("Envoy accepted a bad configuration:\n{}", envoy.log()),
        Started::Exited(code, log) => {
            assert_ne!(code, Some(0));
            assert!(
                log.contains(
                    "configuration refused: rules[1].methods[0]: \"put\" is not an upper-case method name"
                ),
                "{log}"
            );
            assert!(
                log.contains(r#""type":"policy_refused""#) && log.contains(r#""error":"rules[1].methods[0]"#),
                "{log}"
            );
        }
    }

    bundle["rules"][1]["methods"] = json!(["PUT"]);
    bundle["rules"][1]["subject"] = json!("typo");
    match Envoy::try_start(&bundle.to_string()) {
        Started::Ready(envoy) => panic!("Envoy accepted an unknown field:\n{}", envoy.log()),
        Started::Exited(_, log) => {
            assert!(log.contains("configuration refused: rules[1].subject: unknown field `subject`"), "{log}")
        }
    }
}

fn base64_url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn base64_url_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).unwrap()
}
