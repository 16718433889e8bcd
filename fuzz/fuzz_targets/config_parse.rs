//! Arbitrary bytes as a policy bundle: `BundleConfig::from_json`, then `compile`, then a few
//! requests through the compiled engine.
//!
//! Seed it with the example bundle for depth: `cargo fuzz run config_parse fuzz/corpus/config_parse
//! policies` (libFuzzer reads every listed directory, and writes new inputs to the first).
//!
//! Properties: a parsed bundle serializes to JSON that parses again; a compiled engine honours the
//! settings bounds `compile` enforces; without a token and without an mTLS peer, or with a malformed
//! token, nothing is allowed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshward::{BundleConfig, HttpRequest, Reason};

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(bundle) = BundleConfig::from_json(data) else { return };

    let json = serde_json::to_vec(&bundle).expect("a parsed bundle serializes");
    if let Err(e) = BundleConfig::from_json(&json) {
        panic!("re-serialized bundle does not parse: {e}\n{}", String::from_utf8_lossy(&json));
    }

    let Ok((engine, _warnings)) = bundle.compile() else { return };
    let s = engine.settings();
    assert!((256..=65536).contains(&s.max_token_bytes));
    assert!((0.0..=1.0).contains(&s.audit_allow_sample_rate));
    assert!(s.token_cache_entries <= 1_000_000);
    assert!(engine.issuers().iter().all(|i| i.key_count() > 0), "issuer without keys compiled");

    let paths = ["/", "/v2/", "/v2/dev/app/manifests/1.0", "/admin/x?y=1"];
    for (i, path) in paths.into_iter().enumerate() {
        let method = ["GET", "PUT", "POST", "DELETE"][i];
        let mut request = HttpRequest {
            method: Some(method),
            authority: Some("registry.example.internal"),
            path: Some(path),
            ..Default::default()
        };
        let anonymous = engine.authorize(&request, NOW);
        assert!(!anonymous.decision.allowed, "allowed without token or peer: {method} {path}");
        assert_eq!(anonymous.identity, None);

        request.authorization = vec!["Bearer not.a.jwt"];
        let garbage = engine.authorize(&request, NOW);
        assert!(!garbage.decision.allowed, "malformed token allowed: {method} {path}");
        assert_eq!(garbage.decision.reason, Reason::TokenMalformed);

        // With a peer, peer rules may allow: only exercise that path.
        request.authorization.clear();
        request.peer = Some("spiffe://example.internal/ns/ci/sa/builder");
        let with_peer = engine.authorize(&request, NOW);
        let _ = engine.should_audit(&with_peer);
        let _ = engine.deny_response(with_peer.decision.reason, None);
        let _ = engine.upstream_headers(with_peer.identity.as_deref());
    }
});
