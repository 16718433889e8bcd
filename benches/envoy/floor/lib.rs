//! The "floor" filter of the Envoy load benchmark: the least any token filter must do per request,
//! with no crypto and no policy. It reads the token, method, path and authority, looks the token up
//! in a map, sets one identity header and counts one metric.
//!
//! Two ways to read the request, chosen by the plugin configuration, so that the benchmark can
//! measure which the ABI makes cheaper: `map` copies the whole header map in one host call, anything
//! else (the default) reads the four headers with one host call each.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Per VM: how to read headers, the token map, the metric id.
#[derive(Default)]
struct State {
    whole_map: Cell<bool>,
    identities: std::cell::RefCell<HashMap<String, Rc<str>>>,
    metric: Cell<Option<u32>>,
}

#[derive(Default)]
struct Root {
    state: Rc<State>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.state.whole_map.set(config == b"map");
        self.state.metric.set(hostcalls::define_metric(MetricType::Counter, "floor.requests_total").ok());
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor { state: self.state.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Floor {
    state: Rc<State>,
}

impl Context for Floor {}

impl Floor {
    /// Looks the token up (a miss stores a fixed identity: no verification in the floor), sets
    /// the identity header and counts the request.
    fn admit(&self, token: &str, method: &str, path: &str, authority: &str) -> Action {
        std::hint::black_box((method, path, authority));
        let identity = {
            let mut identities = self.state.identities.borrow_mut();
            match identities.get(token) {
                Some(identity) => identity.clone(),
                None => {
                    let identity: Rc<str> = Rc::from("spiffe://floor/identity");
                    identities.insert(token.to_owned(), identity.clone());
                    identity
                }
            }
        };
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-floor-identity", Some(&identity));
        if let Some(id) = self.state.metric.get() {
            let _ = hostcalls::increment_metric(id, 1);
        }
        Action::Continue
    }
}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.state.whole_map.get() {
            let headers = self.get_http_request_headers();
            let find = |name: &str| headers.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str());
            let token = find("authorization");
            return self.admit(
                token.strip_prefix("Bearer ").unwrap_or(token),
                find(":method"),
                find(":path"),
                find(":authority"),
            );
        }
        let token = self.get_http_request_header("authorization").unwrap_or_default();
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let authority = self.get_http_request_header(":authority").unwrap_or_default();
        self.admit(token.strip_prefix("Bearer ").unwrap_or(&token), &method, &path, &authority)
    }
}
