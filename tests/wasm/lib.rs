//! Decides the example corpus (`tests/corpus/registry.jsonl`) with the example bundle, using only
//! the core: the same checks `meshward replay` makes natively, here compiled to wasm.

use meshward::{BundleConfig, Engine, HttpRequest};
use serde_json::Value;

/// The example bundles and their corpora, built in.
pub const EXAMPLES: [(&str, &str); 2] = [
    (include_str!("../../policies/registry.json"), include_str!("../corpus/registry.jsonl")),
    (include_str!("../../policies/payments-api.json"), include_str!("../corpus/payments-api.jsonl")),
];

fn engine(bundle: &str) -> Result<Engine, String> {
    BundleConfig::from_json(bundle.as_bytes())
        .and_then(BundleConfig::compile)
        .map(|(e, _)| e)
        .map_err(|e| e.to_string())
}

/// Decides every record as of its time; returns how many there were, or the first disagreement
/// with a record's expectations.
pub fn decide_corpus(bundle: &str, corpus: &str) -> Result<usize, String> {
    let mut engine = engine(bundle)?;
    let mut latest = 0;
    let mut count = 0;
    for (i, line) in corpus.lines().enumerate() {
        let record: Value = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        let text = |k: &str| record.get(k).and_then(Value::as_str);
        let time = record.get("time").and_then(Value::as_u64).ok_or(format!("line {}: no time", i + 1))?;
        // As `meshward replay`: a fresh engine (empty token cache) when time goes back.
        if time < latest {
            engine = self::engine(bundle)?;
        }
        latest = latest.max(time);
        let mut headers: Vec<(String, String)> = Vec::new();
        if let Some(Value::Object(map)) = record.get("headers") {
            for (name, value) in map {
                match value {
                    Value::String(v) => headers.push((name.to_ascii_lowercase(), v.clone())),
                    Value::Array(vs) => headers.extend(
                        vs.iter()
                            .filter_map(Value::as_str)
                            .map(|v| (name.to_ascii_lowercase(), v.to_owned())),
                    ),
                    _ => return Err(format!("line {}: header {name} is not text", i + 1)),
                }
            }
        }
        let request =
            HttpRequest::recorded(text("method"), text("authority"), text("path"), &headers, text("peer"));
        let d = engine.authorize(&request, time).decision;
        let got = [d.verdict().word(), d.reason.code(), d.rule_label()];
        for (field, got) in ["expect", "expect_reason", "expect_rule"].into_iter().zip(got) {
            if let Some(want) = text(field) {
                if want != got {
                    return Err(format!(
                        "line {} ({}): {field} {want}, got {got}",
                        i + 1,
                        text("name").unwrap_or("")
                    ));
                }
            }
        }
        count += 1;
    }
    Ok(count)
}
