//! End-to-end: the signature checks Envoy's `verify_signature` (BoringSSL) does for meshward give,
//! for every token of the differential corpus, the answer of the pure-Rust path computed natively.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/signature_cases.rs"]
mod cases;
mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use meshward::BundleConfig;
use support::Envoy;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn envoy_host_signatures_answer_every_token_as_the_pure_rust_path_does() {
    let bundle = cases::bundle().to_string();
    let envoy = Envoy::start(&bundle);
    let loads = envoy.log_records("policy_load");
    assert!(!loads.is_empty(), "no policy_load record:\n{}", envoy.log());
    for load in &loads {
        assert_eq!(load["signature_backend"], "host", "{load}\n{}", envoy.log());
    }

    let (pure, _) = BundleConfig::from_json(bundle.as_bytes()).unwrap().compile().unwrap();
    let issued = now();
    let cases = cases::cases(issued);
    let mut mismatches = Vec::new();
    for case in &cases {
        let expected = pure.issuers().verify(&case.token, now());
        let auth = format!("Bearer {}", case.token);
        let r = envoy.request("GET", "/x", &[("Host", cases::HOST), ("Authorization", auth.as_str())]);
        let got = if r.status == 200 {
            "allowed".to_string()
        } else {
            r.json()["reason"].as_str().unwrap_or("?").to_string()
        };
        let want = match &expected {
            Ok(_) => "allowed".to_string(),
            Err(reason) => reason.code().to_string(),
        };
        if got != want {
            mismatches.push(format!("{}: Envoy {got} ({}), pure Rust {want}", case.name, r.status));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} tokens differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    // Not all trivially allowed or refused: the corpus has both.
    let allowed = cases.iter().filter(|c| pure.issuers().verify(&c.token, now()).is_ok()).count();
    assert!(allowed >= 7 && allowed < cases.len() / 2, "{allowed} of {} allowed", cases.len());
}
