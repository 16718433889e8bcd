//! Envoy access logs as `meshward` input: the JSON access log `render envoy` configures (each line
//! carrying meshward's audit record as a string), mixed with request records, and Istio's default
//! text format, which carries no identity and is reported as not re-derivable.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

fn meshward(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshward"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// One line of the access log `render envoy` configures, as Envoy writes it.
fn access_line(method: &str, path: &str, code: u16, audit: Option<Value>) -> String {
    json!({
        "authority": "registry.example.internal",
        "meshward": audit.map(|a| a.to_string()),
        "method": method,
        "path": path,
        "peer": null,
        "request_id": "r-1",
        "response_code": code,
        "time": "2027-01-15T08:00:00.000Z",
    })
    .to_string()
}

fn audit(method: &str, path: &str, decision: &str, reason: &str, rule: &str, subject: &str) -> Value {
    json!({"type": "decision", "time": 1_800_000_000u64, "request_id": "r-1", "bundle": "registry-example",
        "mode": "enforce", "decision": decision, "reason": reason, "rule": rule, "break_glass": false,
        "subject": subject, "issuer": "workloads", "token_id": null, "token_expires_at": 1_800_000_300u64,
        "peer": null, "method": method, "host": "registry.example.internal", "path": path})
}

const ISTIO_LINE: &str = r#"[2027-01-15T08:00:00.000Z] "GET /v2/prod/web/manifests/1.0 HTTP/1.1" 200 - via_upstream - "-" 0 12 3 2 "-" "curl/8.5.0" "r-2" "registry.example.internal" "10.0.0.7:5000" inbound|5000|| 127.0.0.6:40000 10.0.0.7:5000 10.0.0.9:51234 outbound_.5000_._.registry.default.svc.cluster.local default"#;

fn mixed_log(dir: &Path) -> String {
    let corpus =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/registry.jsonl"))
            .unwrap();
    let first_request = corpus.lines().next().unwrap();
    let lines = [
        first_request.to_string(),
        access_line(
            "GET",
            "/v2/prod/web/manifests/1.0",
            200,
            Some(audit(
                "GET",
                "/v2/prod/web/manifests/1.0",
                "allow",
                "allowed",
                "pull-workloads",
                "spiffe://example.internal/apps/web",
            )),
        ),
        access_line(
            "PUT",
            "/v2/prod/web/manifests/1.0",
            403,
            Some(audit(
                "PUT",
                "/v2/prod/web/manifests/1.0",
                "deny",
                "policy_no_matching_rule",
                "default-deny",
                "spiffe://example.internal/apps/web",
            )),
        ),
        access_line("GET", "/v2/dev/web/tags/list", 200, None),
        ISTIO_LINE.to_string(),
    ];
    let path = dir.join("mixed.log");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path.display().to_string()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("meshward-accesslog-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn replay_reads_access_log_lines_mixed_with_request_records_and_says_what_it_cannot_rederive() {
    let dir = scratch("replay");
    let log = mixed_log(&dir);
    let (code, stdout, stderr) =
        meshward(&["replay", "--expect-recorded", "--policy", "policies/registry.json", &log]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("replayed 3 records (1 request records, 2 audit records)"), "{stdout}");
    assert!(stdout.contains("audit records: 2 decided as recorded, 0 differently"), "{stdout}");
    assert!(stdout.contains("access-log lines: 2 decided from their audit record"), "{stdout}");
    assert!(
        stdout.contains("not re-derived: 1 access-log lines without meshward's audit record"),
        "{stdout}"
    );
    assert!(stdout.contains("not re-derived: 1 Istio default-format access-log lines"), "{stdout}");

    let (code, stdout, _) =
        meshward(&["replay", "--format", "json", "--policy", "policies/registry.json", &log]);
    assert_eq!(code, 0);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["access_log_records"], 2);
    assert_eq!(summary["not_rederived"], json!({"access_log_without_decision": 1, "istio_text_lines": 1}));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bundle_change_shows_on_access_log_decisions_in_diff() {
    let dir = scratch("diff");
    let log = mixed_log(&dir);
    // Without pull-workloads, the recorded pull by apps/web is denied.
    let mut bundle: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/registry.json"))
            .unwrap(),
    )
    .unwrap();
    bundle["rules"].as_array_mut().unwrap().retain(|r| r["id"] != "pull-workloads");
    let new = dir.join("new.json");
    std::fs::write(&new, bundle.to_string()).unwrap();
    let (code, stdout, stderr) =
        meshward(&["diff", "--exit-code", "policies/registry.json", new.to_str().unwrap(), &log]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("mixed.log:2  GET registry.example.internal/v2/prod/web/manifests/1.0"),
        "{stdout}"
    );
    assert!(stdout.contains("not re-derived: 1 Istio default-format"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tighten_reads_access_logs_and_warns_about_requests_it_cannot_see() {
    let dir = scratch("tighten");
    let log = mixed_log(&dir);
    let out = dir.join("tight.json");
    let (code, stdout, stderr) =
        meshward(&["tighten", "policies/registry.json", &log, "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("not re-derived: 1 access-log lines without meshward's audit record"),
        "{stdout}"
    );
    assert!(stdout.contains("CAUTION: the proposal does not account for those requests"), "{stdout}");
    // The access log's allowed pull (apps/web on prod/web) and the request record's version check
    // are what pull-workloads still grants.
    assert!(stdout.contains("rule pull-workloads (platform-team): 2 allowed requests; NARROWED"), "{stdout}");
    assert!(stdout.contains("  repositories: ** -> prod/web"), "{stdout}");
    assert!(stdout.contains("0 allow -> deny, 0 deny -> allow"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
