//! `meshward tighten` as a user runs it on the example bundles and their corpora: the proposal,
//! the per-rule report, the proof, and the CI gate (`--fail-on-unused`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

const REGISTRY: &str = "policies/registry.json";
const CORPUS: &str = "tests/corpus/registry.jsonl";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn meshward(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_meshward"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshward-tighten-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn registry() -> Value {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(REGISTRY)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn rule<'a>(bundle: &'a Value, id: &str) -> &'a Value {
    bundle["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no rule {id}"))
}

#[test]
fn tighten_narrows_the_registry_bundle_to_its_corpus_and_proves_it() {
    let dir = scratch("registry");
    let out = dir.join("registry.tight.json");
    let r = meshward(&["tighten", REGISTRY, CORPUS, "--out", out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    for line in [
        "rule pull-workloads (platform-team): 5 allowed requests; NARROWED",
        "  subjects: spiffe://example.internal/** -> spiffe://example.internal/apps/web",
        "  repositories: dev/** -> dev/manifests, dev/web",
        "rule break-glass-delete (security-team): 1 allowed requests; kept: break-glass: kept by default",
        "rule prod-is-immutable (security-team): 0 allowed requests; kept: deny rule",
        "before: 6 rules, 24 entries (11 wildcards); after: 6 rules, 26 entries (4 wildcards)",
        "proof: replayed 36 records under both bundles: 12 allowed before, 12 still allowed, 0 allow -> deny, 0 deny -> allow",
    ] {
        assert!(r.stdout.contains(line), "missing {line:?} in\n{}", r.stdout);
    }
    // The proposal keeps every rule's id, owner and description, in the input's order, and only
    // narrows: the break-glass and deny rules are as written.
    let before = registry();
    let after: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let ids = |b: &Value| b["rules"].as_array().unwrap().iter().map(|r| r["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&before), ids(&after));
    for r in before["rules"].as_array().unwrap() {
        let id = r["id"].as_str().unwrap();
        assert_eq!(rule(&after, id)["owner"], r["owner"]);
        assert_eq!(rule(&after, id)["description"], r["description"]);
    }
    assert_eq!(rule(&after, "break-glass-delete"), rule(&before, "break-glass-delete"));
    assert_eq!(rule(&after, "prod-is-immutable"), rule(&before, "prod-is-immutable"));
    assert_eq!(rule(&after, "pull-workloads")["subjects"], json!(["spiffe://example.internal/apps/web"]));
    assert_eq!(rule(&after, "pull-workloads")["registry"]["repositories"], json!(["prod/web", "team/a/b"]));
    assert_eq!(after["issuers"], before["issuers"]);

    // Independently of tighten's own proof: diff over the same corpus sees no allow turn into a
    // deny, and the proposal is a valid bundle.
    let d = meshward(&["diff", "--format", "json", REGISTRY, out.to_str().unwrap(), CORPUS]);
    assert_eq!(d.code, 0, "{}{}", d.stdout, d.stderr);
    let summary: Value = serde_json::from_str(d.stdout.lines().last().unwrap()).unwrap();
    assert_eq!((summary["allow_to_deny"].clone(), summary["deny_to_allow"].clone()), (json!(0), json!(0)));
    assert_eq!(meshward(&["check", out.to_str().unwrap()]).code, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_added_grant_nothing_uses_fails_the_ci_gate_unless_kept() {
    let dir = scratch("gate");
    // The registry bundle as it is passes: every rule and entry is used by the corpus.
    let r = meshward(&["tighten", "--fail-on-unused", REGISTRY, CORPUS]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // A pull request adds a rule nobody uses, and a repository to a used rule.
    let mut bundle = registry();
    let rules = bundle["rules"].as_array_mut().unwrap();
    rules.push(json!({"id": "pull-legacy", "owner": "platform-team", "hosts": ["registry.example.internal"],
        "registry": {"actions": ["pull"], "repositories": ["legacy/**"]},
        "subjects": ["spiffe://example.internal/legacy/*"], "issuers": ["workloads"]}));
    rules[1]["registry"]["repositories"] = json!(["dev/**", "staging/**"]);
    let pr = dir.join("pr.json");
    std::fs::write(&pr, serde_json::to_string_pretty(&bundle).unwrap()).unwrap();
    let r = meshward(&["tighten", "--fail-on-unused", pr.to_str().unwrap(), CORPUS]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("rule pull-legacy (platform-team): 0 allowed requests; REMOVED"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("  UNUSED: repository staging/**"), "{}", r.stdout);
    assert!(r.stderr.contains("has 2 grants no recorded request needs"), "{}", r.stderr);

    // --keep exempts the rule; the unused repository still fails the gate.
    let r = meshward(&["tighten", "--fail-on-unused", "--keep", "pull-legacy", pr.to_str().unwrap(), CORPUS]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("rule pull-legacy (platform-team): 0 allowed requests; kept: --keep"),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("has 1 grants"), "{}", r.stderr);

    // --expire-unused gives the unused rule an end date instead of removing it.
    let out = dir.join("expiring.json");
    let r = meshward(&[
        "tighten",
        "--expire-unused",
        "2027-02-01T00:00:00Z",
        pr.to_str().unwrap(),
        CORPUS,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let proposal: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(rule(&proposal, "pull-legacy")["expires_at"], "2027-02-01T00:00:00Z");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn yaml_stays_yaml_and_json_output_reports_the_same() {
    let dir = scratch("yaml");
    let yaml = dir.join("registry.yaml");
    std::fs::write(&yaml, serde_norway::to_string(&registry()).unwrap()).unwrap();
    let r = meshward(&["tighten", "--format", "json", yaml.to_str().unwrap(), CORPUS, "--out", "-"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // The proposal on stdout is YAML; the report moved to stderr.
    assert!(r.stdout.starts_with("$schema:"), "{}", r.stdout);
    let proposal: Value = serde_norway::from_str(&r.stdout).unwrap();
    assert_eq!(
        rule(&proposal, "push-dev-builders")["subjects"],
        json!(["spiffe://example.internal/ci/builder/web"])
    );
    let report: Value = serde_json::from_str(&r.stderr).unwrap();
    assert_eq!(report["proof"]["proven"], true);
    assert_eq!(report["proof"]["allow_to_deny"], 0);
    assert_eq!(report["before"], json!({"rules": 6, "entries": 24, "wildcards": 11}));
    assert_eq!(report["after"], json!({"rules": 6, "entries": 26, "wildcards": 4}));
    let fates: Vec<(String, String)> = report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["rule"].as_str().unwrap().to_owned(), r["fate"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(fates[4], ("break-glass-delete".to_string(), "kept".to_string()));
    assert_eq!(fates[0], ("pull-workloads".to_string(), "narrowed".to_string()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn since_limits_the_window_and_stdin_is_refused() {
    // After the corpus's time nothing is used: every plain rule goes, break-glass and deny stay.
    let r = meshward(&["tighten", "--since", "2030-01-01T00:00:00Z", REGISTRY, CORPUS]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("over 0 records (since 2030-01-01T00:00:00Z)"), "{}", r.stdout);
    assert!(
        r.stdout.contains("rule pull-workloads (platform-team): 0 allowed requests; REMOVED"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("after: 2 rules"), "{}", r.stdout);
    let r = meshward(&["tighten", REGISTRY, "-"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("reads its recordings twice"), "{}", r.stderr);
    let r = meshward(&["tighten", "--keep", "no-such-rule", REGISTRY, CORPUS]);
    assert_eq!(r.code, 2);
}

#[test]
fn payments_templates_stay_templates_and_wildcard_methods_narrow() {
    let dir = scratch("payments");
    let out = dir.join("payments.json");
    let r = meshward(&[
        "tighten",
        "policies/payments-api.json",
        "tests/corpus/payments-api.jsonl",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("  methods: * -> PATCH"), "{}", r.stdout);
    assert!(r.stdout.contains("  paths: /admin/** -> /admin/limits"), "{}", r.stdout);
    assert!(
        r.stdout.contains("rule orders-v2-preview (payments-team): 0 allowed requests; kept: dry-run rule"),
        "{}",
        r.stdout
    );
    let proposal: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(
        rule(&proposal, "shop-reads-orders")["paths"],
        json!([{"template": "/v1/orders/{order}"}, {"exact": "/v1/orders"}])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn diff_synthesize_finds_a_change_the_recordings_never_exercise() {
    let dir = scratch("synthesize");
    // The builders may now also push to staging/: no recorded request touches it.
    let mut bundle = registry();
    bundle["rules"][1]["registry"]["repositories"] = json!(["dev/**", "staging/**"]);
    let new = dir.join("new.json");
    std::fs::write(&new, bundle.to_string()).unwrap();
    let recorded = meshward(&["diff", "--exit-code", REGISTRY, new.to_str().unwrap(), CORPUS]);
    assert_eq!(recorded.code, 0, "{}", recorded.stdout);
    let r = meshward(&["diff", "--synthesize", "--exit-code", REGISTRY, new.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("deny (policy_no_matching_rule) -> allow by push-dev-builders: 1 request"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("e.g. PUT registry.example.internal/v2/staging/x/y/manifests/1.0 as spiffe://example.internal/ci/builder/x (workloads)"),
        "{}",
        r.stdout
    );
    let j = meshward(&["diff", "--synthesize", "--format", "json", REGISTRY, new.to_str().unwrap()]);
    let first: Value = serde_json::from_str(j.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["example"]["path"], "/v2/staging/x/y/manifests/1.0");
    // The same bundle twice: nothing differs, on either example bundle.
    for b in [REGISTRY, "policies/payments-api.json"] {
        let same = meshward(&["diff", "--synthesize", "--exit-code", b, b]);
        assert_eq!(same.code, 0, "{}", same.stdout);
        assert!(same.stdout.contains(": 0 decided differently"), "{}", same.stdout);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rule_used_only_for_version_checks_keeps_its_repositories() {
    let dir = scratch("base");
    // Only the registry version check (`GET /v2/`), which any registry rule allows.
    let corpus = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(CORPUS)).unwrap();
    let base: Vec<&str> = corpus.lines().filter(|l| l.contains("\"path\":\"/v2/\"")).collect();
    assert!(!base.is_empty());
    let file = dir.join("base.jsonl");
    std::fs::write(&file, base.join("\n") + "\n").unwrap();
    let r = meshward(&[
        "tighten",
        "--fail-on-unused",
        "--keep",
        "push-dev-builders",
        "--keep",
        "promote-release-bot",
        "--keep",
        "partner-acme-pull",
        REGISTRY,
        file.to_str().unwrap(),
    ]);
    assert!(r.stdout.contains("rule pull-workloads (platform-team): "), "{}", r.stdout);
    assert!(!r.stdout.contains("UNUSED: repository **"), "{}", r.stdout);
    assert!(!r.stdout.contains("repositories: ** ->"), "{}", r.stdout);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}
