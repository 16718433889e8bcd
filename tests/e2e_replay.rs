//! End-to-end: each example bundle's corpus, with tokens minted now, sent through a real Envoy
//! running the plugin with that bundle. The plugin and `meshward replay` must agree on every
//! decision, reason and rule; and replaying the plugin's own audit records reproduces what it
//! decided. (These connections are plain HTTP: a record's mTLS `peer` is dropped on both sides.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::Envoy;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn meshward(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshward")).args(args).current_dir(repo()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn plugin_and_cli_agree_on_the_registry_corpus() {
    agree("policies/registry.json", "tests/corpus/registry.cases.jsonl");
}

#[test]
fn plugin_and_cli_agree_on_the_payments_corpus() {
    agree("policies/payments-api.json", "tests/corpus/payments-api.cases.jsonl");
}

fn agree(bundle_path: &str, cases: &str) {
    let dir = support::scratch_dir();
    // Envoy decides with its own clock: the corpus is moved to now, and its tokens minted for now.
    let (code, corpus, err) =
        meshward(&["dev", "corpus", "--demo", "demo-2026-1", "--at", "now", "--no-expect", cases]);
    assert_eq!(code, 0, "{err}");
    let mut records = json_lines(&corpus);
    for r in &mut records {
        r.as_object_mut().unwrap().remove("peer");
    }
    let corpus_path = dir.join("corpus.jsonl");
    std::fs::write(&corpus_path, records.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();

    let (code, replayed, err) =
        meshward(&["replay", "-p", bundle_path, "--format", "json", corpus_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let mut cli = json_lines(&replayed);
    let summary = cli.pop().unwrap();
    assert_eq!(summary["records"], records.len());
    // Both kinds of decision occur, so agreement is not trivial.
    assert!(
        summary["allowed"].as_u64().unwrap() >= 5 && summary["denied"].as_u64().unwrap() >= 5,
        "{summary}"
    );

    let bundle = std::fs::read_to_string(repo().join(bundle_path)).unwrap();
    let envoy = Envoy::start(&bundle);
    for (record, expected) in records.iter().zip(&cli) {
        let mut headers: Vec<(String, String)> =
            vec![("Host".into(), record["authority"].as_str().unwrap().into())];
        for (name, value) in record["headers"].as_object().unwrap() {
            match value {
                Value::String(v) => headers.push((name.clone(), v.clone())),
                Value::Array(vs) => {
                    headers.extend(vs.iter().map(|v| (name.clone(), v.as_str().unwrap().to_owned())))
                }
                other => panic!("header {name}: {other}"),
            }
        }
        let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let method = record["method"].as_str().unwrap();
        let path = record["path"].as_str().unwrap();
        let response = envoy.request(method, path, &refs);
        let what = format!("{} ({method} {path})", record["name"]);
        assert_eq!(u64::from(response.status), expected["status"].as_u64().unwrap(), "{what}: {response:?}");
        if expected["decision"] == "deny" {
            assert_eq!(response.json()["reason"], expected["reason"], "{what}");
        } else {
            // Let through, with the verified identity forwarded upstream.
            assert_eq!(
                response.header("x-backend-saw-subject"),
                expected["subject"].as_str(),
                "{what}: {response:?}"
            );
        }
    }

    // The plugin's audit trail: one record per request, deciding rule included.
    let log = envoy.wait_for_log(|l| {
        l.lines().filter(|x| x.contains("][wasm]") && x.contains("{\"type\":\"decision\"")).count()
            >= records.len()
    });
    let audit = envoy.audit_records();
    assert_eq!(audit.len(), records.len(), "{log}");
    for ((a, expected), record) in audit.iter().zip(&cli).zip(&records) {
        for field in ["decision", "reason", "rule"] {
            assert_eq!(a[field], expected[field], "{}: {field}", record["name"]);
        }
    }

    // Replaying the plugin's own audit records with the same bundle reproduces its decisions.
    let audit_path = dir.join("audit.jsonl");
    let audit_text: String = audit.iter().map(|a| format!("{a}\n")).collect();
    std::fs::write(&audit_path, audit_text).unwrap();
    let (code, out, err) = meshward(&[
        "replay",
        "-p",
        bundle_path,
        "--expect-recorded",
        "--quiet",
        audit_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("expectations: {} checked", records.len())), "{out}");
    assert!(out.contains(" 0 failed"), "{out}");
}
