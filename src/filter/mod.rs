//! The proxy-wasm glue: Envoy callbacks in, decisions out. All host calls live here.
//!
//! The root context parses and compiles the configuration once (`on_configure`); each HTTP context
//! shares the compiled [`Engine`] and authorizes its request in `on_http_request_headers`. Host
//! results are never unwrapped: a failing host call denies the request (fail closed).

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use crate::audit::{AuditRecord, LoadRecord};
use crate::config::BundleConfig;
use crate::decision::{Decision, Reason};
use crate::engine::{Engine, HttpRequest, Outcome};

mod metrics;
use metrics::Metrics;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { engine: None, metrics: None }) });
}}

/// The mTLS peer's identity: the first URI SAN of its certificate (a SPIFFE ID under Istio).
fn peer_identity() -> Option<String> {
    property(&["connection", "uri_san_peer_certificate"])
}

/// A non-empty string property of the stream or connection.
fn property(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok()??;
    String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

/// The host's clock, in unix seconds.
fn now_secs() -> Option<u64> {
    hostcalls::get_current_time().ok()?.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

fn log(level: LogLevel, message: &str) {
    // Logging is best effort; there is nothing better to do if the host refuses it.
    let _ = hostcalls::log(level, message);
}

/// The plugin instance: owns the compiled configuration.
struct Root {
    engine: Option<Rc<Engine>>,
    metrics: Option<Rc<Metrics>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => Vec::new(),
            Err(status) => {
                log(LogLevel::Error, &format!("configuration refused: cannot read it ({status:?})"));
                return false;
            }
        };
        let now = now_secs().unwrap_or(0);
        match BundleConfig::from_json(&bytes).and_then(BundleConfig::compile) {
            Ok((engine, warnings)) => {
                log(LogLevel::Info, &LoadRecord::new(&bytes, Ok(&engine), now).to_json());
                for warning in &warnings {
                    log(LogLevel::Warn, warning);
                }
                log(
                    LogLevel::Info,
                    &format!(
                        "configuration loaded: bundle {:?} version {:?}, {} issuers, {} rules",
                        engine.name,
                        engine.version,
                        engine.issuers().iter().count(),
                        engine.policy().rules().len()
                    ),
                );
                self.engine = Some(Rc::new(engine));
                if self.metrics.is_none() {
                    self.metrics = Some(Rc::new(Metrics::define()));
                }
                true
            }
            Err(e) => {
                // Returning false makes Envoy reject this configuration (and keep a previous one).
                log(LogLevel::Error, &format!("configuration refused: {e}"));
                log(LogLevel::Error, &LoadRecord::new(&bytes, Err(&e), now).to_json());
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request { engine: self.engine.clone(), metrics: self.metrics.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream.
struct Request {
    engine: Option<Rc<Engine>>,
    metrics: Option<Rc<Metrics>>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(engine) = self.engine.clone() else {
            // No configuration: Envoy should not have created us, but fail closed if it did.
            return send_deny(None, Reason::InternalError, None);
        };
        let headers = match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
            Ok(h) => h,
            Err(_) => return send_deny(Some(&engine), Reason::InternalError, None),
        };
        let Some(now) = now_secs() else {
            return send_deny(Some(&engine), Reason::InternalError, None);
        };

        let peer = if engine.policy().uses_peers() { peer_identity() } else { None };
        let peer_certificate = if engine.uses_certificate_binding() {
            property(&["connection", "sha256_peer_certificate_digest"])
        } else {
            None
        };
        let mut request = HttpRequest {
            peer: peer.as_deref(),
            peer_certificate_sha256: peer_certificate.as_deref(),
            ..HttpRequest::default()
        };
        let mut request_id = None;
        for (name, value) in &headers {
            // A header we read that is not UTF-8 cannot be a valid value for it: leave it unset
            // (a missing token or path then denies).
            let value = std::str::from_utf8(value).ok();
            match name.as_str() {
                ":method" => request.method = value,
                ":authority" => request.authority = value,
                ":path" => request.path = value,
                "authorization" => request.authorization.push(value.unwrap_or("\u{0}")),
                "x-request-id" => request_id = value,
                _ => {}
            }
            // Non-UTF-8 values count as present (a repeated header still denies) but never equal.
            request.headers.push((name.as_str(), value.unwrap_or("\u{fffd}")));
        }
        let outcome = engine.authorize(&request, now);
        if engine.should_audit(&outcome) {
            let record = AuditRecord::new(&engine.name, &request, &outcome, now, request_id).to_json();
            log(LogLevel::Info, &record);
            // Also as filter state (`wasm.meshward_audit`), for access-log formats.
            let _ = hostcalls::set_property(vec!["meshward_audit"], Some(record.as_bytes()));
        }
        if let Some(metrics) = &self.metrics {
            metrics.record(&outcome);
        }

        if !outcome.lets_through() {
            return send_deny(Some(&engine), outcome.decision.reason, request_id);
        }
        match forward_identity(&engine, &outcome) {
            Ok(()) => Action::Continue,
            Err(_) => send_deny(Some(&engine), Reason::InternalError, request_id),
        }
    }
}

/// Replaces any client-supplied identity headers with the verified identity (and removes the token
/// if configured).
fn forward_identity(engine: &Engine, outcome: &Outcome) -> Result<(), proxy_wasm::types::Status> {
    for (name, value) in engine.upstream_headers(outcome.identity.as_deref()) {
        // set_map_value replaces every copy; None removes them all.
        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value.as_deref())?;
    }
    Ok(())
}

fn send_deny(engine: Option<&Engine>, reason: Reason, request_id: Option<&str>) -> Action {
    let (status, headers, body) = match engine {
        Some(engine) => {
            let r = engine.deny_response(reason, request_id);
            (r.status, r.headers, r.body)
        }
        None => (500, Vec::new(), format!("{{\"reason\":\"{}\"}}", Decision::deny(reason).reason.code())),
    };
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if hostcalls::send_http_response(status, headers, Some(body.as_bytes())).is_err() {
        // The local reply failed: reset the stream rather than let the request through.
        let _ = hostcalls::reset_http_request();
    }
    Action::Pause
}
