//! The "no-op wasm filter" of the Envoy load benchmark: reads the `authorization` request header
//! (one host call, as any token-checking filter must make) and continues.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_context_id, _root_context_id| -> Box<dyn HttpContext> { Box::new(Noop) });
}}

struct Noop;

impl Context for Noop {}

impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Read, and keep it from being optimized away; the value itself is not needed.
        std::hint::black_box(self.get_http_request_header("authorization"));
        Action::Continue
    }
}
