//! End-to-end: after a scripted burst of allowed, denied, dry-run and break-glass requests, the audit
//! trail, the access log and the Prometheus metrics of a real Envoy account for every request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use meshward::cli::dev::{jwks, SigningKey, TokenSpec};
use meshward::token::Algorithm;
use serde_json::json;
use support::Envoy;

#[test]
fn audit_trail_access_log_and_metrics_account_for_every_request() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k1").unwrap();
    let bundle = json!({
        "name": "audit-e2e",
        "version": "7",
        "issuers": [{"name": "mesh", "issuer": "https://mesh.test", "audiences": ["api"], "algorithms": ["EdDSA"], "jwks": jwks(&[&key])}],
        "settings": {"audit_allow_sample_rate": 0.5, "audit_filter_state": true},
        "rules": [
            {"id": "read", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["spiffe://t/**"]},
            {"id": "write", "hosts": ["*"], "methods": ["PUT"], "paths": [{"prefix": "/data"}], "subjects": ["spiffe://t/writer"]},
            {"id": "future-lockdown", "mode": "dry-run", "effect": "deny", "hosts": ["*"], "methods": ["GET"],
             "paths": [{"prefix": "/beta"}], "subjects": ["**"]},
            {"id": "emergency-delete", "break_glass": true, "hosts": ["*"], "methods": ["DELETE"], "paths": [{"prefix": "/data"}],
             "subjects": ["spiffe://t/oncall"], "claims": [{"claim": "ticket", "glob": "INC-*"}]},
        ],
    });
    let envoy = Envoy::start(&bundle.to_string());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let token = |sub: &str, jti: &str, claims: serde_json::Value| {
        let mut spec = TokenSpec::new("https://mesh.test", sub, "api", now, 300);
        spec.token_id = Some(jti.into());
        spec.claims = claims.as_object().unwrap().clone();
        format!("Bearer {}", key.sign(&spec).unwrap())
    };
    let reader = token("spiffe://t/reader", "r-1", json!({}));
    let writer = token("spiffe://t/writer", "w-1", json!({}));
    let oncall = token("spiffe://t/oncall", "o-1", json!({"ticket": "INC-1"}));

    // The burst: (method, path, token, expected status).
    let mut burst: Vec<(&str, String, Option<&str>, u16)> = Vec::new();
    for i in 0..10 {
        burst.push(("GET", format!("/items/{i}"), Some(&reader), 200)); // plain allowed reads: sampled
    }
    for i in 0..3 {
        burst.push(("PUT", format!("/data/{i}"), Some(&writer), 200)); // writes: always audited
    }
    burst.push(("PUT", "/data/x".into(), Some(&reader), 403));
    burst.push(("GET", "/items".into(), None, 401));
    burst.push(("GET", "/items".into(), Some("Bearer a.b.c"), 401));
    burst.push(("GET", "/items/../admin".into(), Some(&reader), 400));
    burst.push(("GET", "/beta/1".into(), Some(&reader), 200)); // dry-run rule would deny
    burst.push(("GET", "/beta/2".into(), Some(&reader), 200));
    burst.push(("DELETE", "/data/0".into(), Some(&oncall), 200)); // break-glass
    for (method, path, auth, status) in &burst {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        let r = envoy.request(method, path, &headers);
        assert_eq!(r.status, *status, "{method} {path}: {r:?}");
    }

    // Audit: everything but half of the ten plain reads, each with the schema's fields.
    let records = envoy.audit_records();
    let reads = records.iter().filter(|r| r["rule"] == "read" && r["dry_run"].is_null()).count();
    let sampled: Vec<_> = records
        .iter()
        .filter(|r| r["rule"] == "read")
        .map(|r| (r["path"].clone(), r["dry_run"].clone()))
        .collect();
    assert_eq!(reads, 5, "allow_sample_rate 0.5 keeps exactly half of the plain reads: {sampled:?}");
    assert_eq!(records.len(), 5 + 3 + 4 + 2 + 1, "{records:#?}");
    for r in &records {
        for field in [
            "time",
            "request_id",
            "bundle",
            "mode",
            "decision",
            "reason",
            "rule",
            "severity",
            "break_glass",
            "method",
            "host",
            "path",
        ] {
            assert!(!r[field].is_null(), "{field} missing in {r}");
        }
        assert_eq!(r["bundle"], "audit-e2e");
        assert_eq!(r["mode"], "enforce");
    }
    let writes: Vec<_> = records.iter().filter(|r| r["rule"] == "write").collect();
    assert_eq!(writes.len(), 3);
    assert!(writes
        .iter()
        .all(|r| r["subject"] == "spiffe://t/writer" && r["token_id"] == "w-1" && r["severity"] == "info"));
    let glass: Vec<_> = records.iter().filter(|r| r["break_glass"] == true).collect();
    assert_eq!(glass.len(), 1);
    assert_eq!(
        (&glass[0]["rule"], &glass[0]["severity"], &glass[0]["subject"]),
        (&json!("emergency-delete"), &json!("high"), &json!("spiffe://t/oncall"))
    );
    let shadow: Vec<_> = records.iter().filter(|r| !r["dry_run"].is_null()).collect();
    assert_eq!(shadow.len(), 2);
    for r in shadow {
        assert_eq!((&r["decision"], &r["severity"]), (&json!("allow"), &json!("warning")));
        assert_eq!(
            r["dry_run"],
            json!({"decision": "deny", "reason": "policy_denied", "rule": "future-lockdown"})
        );
    }
    let denials = records.iter().filter(|r| r["decision"] == "deny").count();
    assert_eq!(denials, 4);

    // Access log (JSON): one line per request; sampled-out decisions have no record (null), the
    // rest the audit record as a string.
    // Envoy flushes access logs on an interval; wait for all of them.
    let access_lines = |log: &str| -> Vec<serde_json::Value> {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("response_code").is_some())
            .collect()
    };
    let log = envoy.wait_for_log(|log| access_lines(log).len() >= burst.len());
    let access = access_lines(&log);
    assert_eq!(access.len(), burst.len(), "{log}");
    let embedded: Vec<serde_json::Value> = access
        .iter()
        .filter_map(|l| l["meshward"].as_str())
        .map(|s| serde_json::from_str(s).expect("the meshward field is the audit record"))
        .collect();
    assert_eq!(embedded.len(), records.len());
    assert!(embedded.iter().all(|r| r["type"] == "decision"));
    assert!(access.iter().any(|l| l["method"] == "DELETE"
        && l["path"] == "/data/0"
        && l["response_code"] == 200
        && l["meshward"].as_str().is_some_and(|m| m.contains("\"break_glass\":true"))));

    // `meshward replay` reads that access log as it is: every line with a record decides as
    // recorded; the sampled-out ones are reported as not re-derivable.
    let dir = std::env::temp_dir().join(format!("meshward-e2e-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle_path = dir.join("bundle.json");
    std::fs::write(&bundle_path, bundle.to_string()).unwrap();
    let log_path = dir.join("access.log");
    let lines: Vec<String> = access.iter().map(|v| v.to_string()).collect();
    std::fs::write(&log_path, lines.join("\n") + "\n").unwrap();
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_meshward"))
        .arg("replay")
        .arg("--expect-recorded")
        .arg("--policy")
        .arg(&bundle_path)
        .arg(&log_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&replay.stdout);
    // The break-glass rule reads a claim the record does not carry: its expectation is "unknown",
    // which is not a failure.
    assert_eq!(replay.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&replay.stderr));
    assert!(
        stdout.contains(&format!("access-log lines: {} decided from their audit record", records.len())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("not re-derived: {} access-log lines without", burst.len() - records.len())),
        "{stdout}"
    );
    // `meshward tighten` proposes from the same access log and proves the proposal on it.
    let tight = dir.join("tight.json");
    let tighten = std::process::Command::new(env!("CARGO_BIN_EXE_meshward"))
        .arg("tighten")
        .arg(&bundle_path)
        .arg(&log_path)
        .arg("--out")
        .arg(&tight)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&tighten.stdout);
    assert_eq!(tighten.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&tighten.stderr));
    assert!(stdout.contains(", 0 allow -> deny, 0 deny -> allow"), "{stdout}");
    // The writer's rule is narrowed to the writer, and the dry-run and break-glass rules are kept.
    let proposal: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tight).unwrap()).unwrap();
    let rule = |id: &str| proposal["rules"].as_array().unwrap().iter().find(|r| r["id"] == id).cloned();
    assert_eq!(rule("write").unwrap()["subjects"], json!(["spiffe://t/writer"]));
    assert_eq!(rule("future-lockdown").unwrap(), bundle["rules"][2]);
    assert_eq!(rule("emergency-delete").unwrap(), bundle["rules"][3]);
    let _ = std::fs::remove_dir_all(&dir);

    // Metrics count every decision, sampled or not.
    let mut expected = BTreeMap::new();
    for (_, path, auth, status) in &burst {
        let key = match (status, auth) {
            (200, _) => ("allow", "allowed"),
            (403, _) => ("deny", "policy_no_matching_rule"),
            (401, None) => ("deny", "token_missing"),
            (401, Some(_)) => ("deny", "token_malformed"),
            (400, _) => ("deny", "request_path_rejected"),
            _ => panic!("unexpected {path}"),
        };
        *expected.entry(key).or_insert(0u64) += 1;
    }
    envoy.settle_counters(burst.len() as u64);
    for ((outcome, reason), count) in expected {
        let series = format!("meshward_decisions_total{{outcome=\"{outcome}\",reason=\"{reason}\"}}");
        assert_eq!(envoy.prometheus_value(&series), count, "{series}");
    }
    assert_eq!(envoy.prometheus_value("meshward_dry_run_disagreements_total{}"), 2);
    assert_eq!(envoy.prometheus_value("meshward_break_glass_total{}"), 1);
    // The reader's token is looked up 13 times (the ambiguous path is rejected before any token
    // work), the writer's 3 times, the on-call's once: one miss each, the rest hits; plus one miss
    // for the malformed token.
    assert_eq!(envoy.prometheus_value("meshward_token_cache_misses_total{}"), 4);
    assert_eq!(envoy.prometheus_value("meshward_token_cache_hits_total{}"), 12 + 2);
}

/// Decision records go to Envoy's log at `info`. With the plugin's logger above that (`warning` is
/// Envoy's and Istio's default) they would be dropped, so none is built; lowered to `info` at run
/// time, records appear within a second. The access-log copy (`audit_filter_state`) is written
/// whatever the level.
#[test]
fn decision_records_follow_envoys_log_level_at_run_time() {
    let key = SigningKey::generate(Algorithm::EdDSA, "k1").unwrap();
    let bundle = json!({
        "name": "audit-level",
        "issuers": [{"name": "mesh", "issuer": "https://mesh.test", "audiences": ["api"], "algorithms": ["EdDSA"], "jwks": jwks(&[&key])}],
        "settings": {"audit_filter_state": true},
        "rules": [{"id": "read", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/"}], "subjects": ["spiffe://t/**"]}],
    });
    let envoy = Envoy::start(&bundle.to_string());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let token = format!(
        "Bearer {}",
        key.sign(&TokenSpec::new("https://mesh.test", "spiffe://t/a", "api", now, 300)).unwrap()
    );
    let set_level = |level: &str| {
        let r = support::http(envoy.admin_port, "POST", &format!("/logging?wasm={level}"), &[]).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    };
    let send = |path: &str| {
        let r = envoy.request("GET", path, &[("Authorization", &token)]);
        assert_eq!(r.status, 200, "{path}: {r:?}");
    };
    let logged_paths = || -> Vec<String> {
        envoy.audit_records().iter().filter_map(|r| r["path"].as_str().map(str::to_owned)).collect()
    };

    set_level("warning");
    for i in 0..3 {
        send(&format!("/quiet/{i}"));
    }
    // The access log has a record for each of them ...
    let access_records = |log: &str| -> Vec<String> {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["meshward"].as_str().map(str::to_owned))
            .collect()
    };
    let log = envoy.wait_for_log(|log| access_records(log).len() >= 3);
    let quiet = access_records(&log);
    assert_eq!(quiet.len(), 3, "{log}");
    assert!(quiet.iter().all(|r| r.contains("\"decision\":\"allow\"") && r.contains("/quiet/")), "{quiet:?}");
    // ... and Envoy's log none (the level drops them).
    assert!(logged_paths().is_empty(), "{:?}", logged_paths());

    set_level("info");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for i in 0..3 {
        send(&format!("/loud/{i}"));
    }
    envoy.wait_for_log(|_| logged_paths().len() >= 3);
    assert_eq!(logged_paths(), ["/loud/0", "/loud/1", "/loud/2"]);
}
