//! The configuration as istiod delivers it: not the bundle's bytes, but its `pluginConfig` Struct
//! re-marshaled by `protomarshal.ToJSON` (istio/istio `pilot/pkg/model/extensions.go`), which is
//! golang/protobuf v1.5.4's `jsonpb.Marshaler` without indent: compact, map keys sorted at every
//! level (`marshalValue`), strings through Go's `json.Marshal` (`<`, `>`, `&`, U+2028 and U+2029
//! escaped as `\u003c`...), and every number a Struct `number_value`, a float64 written by
//! `json.Marshal` (`strconv` 'f' format with shortest digits from 1e-6 to 1e21, 'e' outside).
//! The plugin must accept that form, and the policy digest must be the same for the file
//! (`meshward check`), for Envoy's byte-for-byte delivery and for istiod's form.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::path::Path;
use std::process::Command;

use meshward::audit::policy_digest;
use meshward::BundleConfig;
use serde_json::{json, Value};
use support::Envoy;

/// A Go string as `encoding/json` writes it (HTML-safe escaping, as jsonpb uses it).
fn go_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A float64 as Go's `encoding/json` writes it.
fn go_number(f: f64) -> String {
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        // 'e' with Go's cleanup: e-07 becomes e-7; a positive exponent keeps its sign.
        let text = format!("{f:e}");
        let (mantissa, exponent) = text.split_once('e').unwrap();
        let sign = if exponent.starts_with('-') { "-" } else { "+" };
        return format!("{mantissa}e{sign}{}", exponent.trim_start_matches('-'));
    }
    // Rust's Display is shortest round-trip digits without exponent: Go's 'f' with precision -1.
    format!("{f}")
}

/// `protomarshal.ToJSON` of the Struct a `pluginConfig` becomes.
fn istiod_form(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => go_number(n.as_f64().unwrap()),
        Value::String(s) => go_string(s),
        Value::Array(items) => format!("[{}]", items.iter().map(istiod_form).collect::<Vec<_>>().join(",")),
        Value::Object(members) => {
            let mut keys: Vec<&String> = members.keys().collect();
            keys.sort();
            let fields: Vec<String> =
                keys.iter().map(|k| format!("{}:{}", go_string(k), istiod_form(&members[*k]))).collect();
            format!("{{{}}}", fields.join(","))
        }
    }
}

/// What istiod hands the plugin for `bundle`: the rendered WasmPlugin's pluginConfig, re-marshaled.
fn delivered_by_istiod(bundle: &Value) -> String {
    let options = meshward::cli::istio::WasmPluginOptions {
        bundle_path: "bundle.json".into(),
        name: "meshward".into(),
        namespace: "istio-system".into(),
        selector: Vec::new(),
        image: "images.example.internal/meshward".into(),
        digest: format!("sha256:{}", "0".repeat(64)),
        dry_run: false,
        pull_secret: None,
        gateway: false,
        target_refs: Vec::new(),
        kind: meshward::cli::istio::ExtensionKind::WasmPlugin,
    };
    let yaml = meshward::cli::istio::wasm_plugin(&bundle.to_string(), &options).unwrap();
    let manifest: Value = serde_norway::from_str(&yaml).unwrap();
    istiod_form(&manifest["spec"]["pluginConfig"])
}

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The example bundle with what istiod rewrites: HTML characters in strings, a unix time and a
/// cache size, a fraction.
fn bundle() -> Value {
    let mut b: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("policies/registry.json")).unwrap()).unwrap();
    b["rules"][0]["description"] = json!("pulls <any> repository & tag\u{2028}(see runbook)");
    b["rules"][0]["expires_at"] = json!(1_796_060_000u64);
    b["settings"] = json!({"token_cache_entries": 10000, "audit_allow_sample_rate": 0.25});
    b
}

/// `meshward check --format json`'s digest of a bundle file.
fn check_digest(path: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_meshward"))
        .args(["check", "--format", "json", path.to_str().unwrap()])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    report["bundles"][0]["sha256"].as_str().unwrap_or_else(|| panic!("no digest: {report}")).to_owned()
}

#[test]
fn the_go_marshaler_form_is_what_istiod_writes() {
    // The exact bytes jsonpb writes for these values (sorted keys, HTML escapes, float64 numbers).
    let value = json!({"z": 10000, "a": "<&>", "t": 1_796_060_000u64, "f": 0.25, "big": 18_446_744_073_709_551_615u64,
                       "tiny": 0.000_000_1, "huge": 1e21, "n": [true, null]});
    assert_eq!(
        istiod_form(&value),
        r#"{"a":"\u003c\u0026\u003e","big":18446744073709552000,"f":0.25,"huge":1e+21,"n":[true,null],"t":1796060000,"tiny":1e-7,"z":10000}"#
    );
}

#[test]
fn the_plugin_accepts_the_istiod_form_with_the_same_digest_as_the_file() {
    let bundle = bundle();
    let file_text = serde_json::to_string_pretty(&bundle).unwrap();
    let delivered = delivered_by_istiod(&bundle);
    assert!(!delivered.contains("$schema"), "the renderer leaves the editors' reference out");
    assert_ne!(file_text, delivered);
    assert!(delivered.contains(r"\u003cany\u003e repository \u0026 tag\u2028"), "{delivered}");

    // Loads, with the values the bundle wrote.
    let (engine, _) = BundleConfig::from_json(delivered.as_bytes()).and_then(BundleConfig::compile).unwrap();
    let rule = &engine.policy().rules()[0];
    assert_eq!(rule.expires_at, Some(1_796_060_000));
    assert_eq!(rule.description, "pulls <any> repository & tag\u{2028}(see runbook)");

    // One digest: the file as `meshward check` reads it, Envoy's bytes, istiod's form.
    let dir = support::scratch_dir();
    let path = dir.join("bundle.json");
    std::fs::write(&path, &file_text).unwrap();
    let checked = check_digest(&path);
    assert_eq!(checked.len(), 64, "{checked}");
    assert_eq!(policy_digest(file_text.as_bytes()), checked);
    assert_eq!(policy_digest(format!("{file_text}\n").as_bytes()), checked);
    assert_eq!(policy_digest(delivered.as_bytes()), checked);

    // ... and any change of a value is a change of digest.
    let mut changed = bundle.clone();
    changed["rules"][0]["expires_at"] = json!(1_796_060_001u64);
    assert_ne!(policy_digest(delivered_by_istiod(&changed).as_bytes()), checked);
    changed = bundle.clone();
    changed["rules"][0]["description"] = json!("pulls <any> repository & tag");
    assert_ne!(policy_digest(changed.to_string().as_bytes()), checked);
}

#[test]
fn integral_numbers_written_as_floats_are_accepted_and_fractions_are_not() {
    let text = serde_json::to_string(&bundle()).unwrap();
    let as_floats = text.replace("1796060000", "1.79606e9").replace(":10000", ":10000.0");
    assert_ne!(as_floats, text);
    let (engine, _) = BundleConfig::from_json(as_floats.as_bytes()).and_then(BundleConfig::compile).unwrap();
    assert_eq!(engine.policy().rules()[0].expires_at, Some(1_796_060_000));
    assert_eq!(policy_digest(as_floats.as_bytes()), policy_digest(text.as_bytes()));

    let fraction = text.replace("1796060000", "1796060000.5");
    let e = BundleConfig::from_json(fraction.as_bytes()).unwrap_err();
    assert_eq!(e.field, "rules[0].expires_at", "{e}");
}

#[test]
fn envoy_reports_the_check_digest_for_the_file_and_for_the_istiod_form() {
    let bundle = bundle();
    let file_text = serde_json::to_string_pretty(&bundle).unwrap();
    let path = support::scratch_dir().join("bundle.json");
    std::fs::write(&path, &file_text).unwrap();
    let checked = check_digest(&path);

    for (form, config) in [("file", file_text.clone()), ("istiod", delivered_by_istiod(&bundle))] {
        let envoy = Envoy::start(&config);
        let loads = envoy.log_records("policy_load");
        assert!(!loads.is_empty(), "{form}: no policy_load record:\n{}", envoy.log());
        for record in &loads {
            assert_eq!(record["sha256"], checked.as_str(), "{form}: {record}");
            assert_eq!(record["bundle"], "registry-example", "{form}: {record}");
        }
        assert!(envoy.log_records("policy_refused").is_empty(), "{form}:\n{}", envoy.log());
    }
}
