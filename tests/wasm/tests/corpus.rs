//! The example corpora in wasm: `cargo test --target wasm32-unknown-unknown` with
//! wasm-bindgen-test-runner (Node.js), and natively with plain `cargo test`.

use wasm_bindgen_test::wasm_bindgen_test;

#[wasm_bindgen_test]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn the_example_corpus_decides_as_expected() {
    for (i, (bundle, corpus)) in meshward_wasm_corpus::EXAMPLES.into_iter().enumerate() {
        match meshward_wasm_corpus::decide_corpus(bundle, corpus) {
            Ok(n) => assert!(n >= 15, "example {i}: only {n} records"),
            Err(e) => panic!("example {i}: {e}"),
        }
    }
}
