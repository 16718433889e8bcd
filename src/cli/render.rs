//! Rendering deployable Envoy configuration from a bundle (native only).

use std::fmt::Write as _;

/// Where `make wasm` writes the module that ships (relative to the repository root).
pub const MODULE_PATH: &str = "target/meshward.wasm";

/// Where the rendered Envoy listens and finds the module.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// Listener for client traffic, with meshward in front of the backend.
    pub listen_port: u16,
    /// A stand-in backend inside the same Envoy (answers 200 and echoes the identity it received).
    pub backend_port: u16,
    /// Envoy's admin interface (readiness, stats).
    pub admin_port: u16,
    /// Path of `meshward.wasm` as Envoy will see it.
    pub wasm_path: String,
    /// Further clusters (name, port on 127.0.0.1), e.g. for a remote JWKS server.
    pub clusters: Vec<(String, u16)>,
    /// The real service (host, port) allowed requests go to; `None` renders the stand-in backend
    /// on `backend_port` instead.
    pub upstream: Option<(String, u16)>,
    /// An access log on stdout with each request's audit record.
    pub access_log: bool,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            listen_port: 8080,
            backend_port: 8081,
            admin_port: 9901,
            wasm_path: MODULE_PATH.into(),
            clusters: Vec::new(),
            upstream: None,
            access_log: true,
        }
    }
}

/// One cluster of a single endpoint: STATIC for an IP address, STRICT_DNS for a name.
fn cluster(name: &str, host: &str, port: u16) -> String {
    let kind = if host.parse::<std::net::IpAddr>().is_ok() { "STATIC" } else { "STRICT_DNS" };
    format!(
        r#"  - name: {name}
    type: {kind}
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {host}, port_value: {port} }}
"#
    )
}

/// The stand-in for the protected service: answers every request and echoes the identity headers
/// meshward forwarded.
fn stand_in_backend(port: u16) -> String {
    format!(
        r#"  # Stand-in for the protected service: answers every request and echoes the identity headers
  # meshward forwarded, so you can see what the upstream receives.
  - name: backend
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: backend
          route_config:
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response:
                  status: 200
                  body: {{ inline_string: "backend: request accepted\n" }}
                response_headers_to_add:
                - header: {{ key: x-backend-saw-subject, value: "%REQ(x-meshward-subject)%" }}
                - header: {{ key: x-backend-saw-issuer, value: "%REQ(x-meshward-issuer)%" }}
                - header: {{ key: x-backend-saw-authorization, value: "%REQ(authorization)%" }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

/// The JSON access log that `replay`, `diff`, `access` and `tighten` read (see
/// `cli::accesslog`): one object per request, meshward's audit record as the `meshward` string.
const ACCESS_LOG: &str = r#"          # JSON access log that `meshward replay|diff|access|tighten` read. `meshward` is the audit
          # record (filter state `wasm.meshward_audit`): null unless the bundle sets
          # `settings.audit_filter_state` and the decision was audited.
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format:
                json_format:
                  time: "%START_TIME%"
                  method: "%REQ(:METHOD)%"
                  authority: "%REQ(:AUTHORITY)%"
                  path: "%REQ(:PATH)%"
                  response_code: "%RESPONSE_CODE%"
                  request_id: "%REQ(X-REQUEST-ID)%"
                  peer: "%DOWNSTREAM_PEER_URI_SAN%"
                  meshward: "%FILTER_STATE(wasm.meshward_audit:PLAIN)%"
"#;

/// A complete Envoy bootstrap: meshward on the ingress listener in front of the upstream (or a
/// stand-in backend), admin on loopback. `bundle_json` is the plugin configuration, embedded as
/// Envoy's `configuration` string.
pub fn envoy_bootstrap(bundle_json: &str, o: &EnvoyOptions) -> String {
    let (route, listeners, mut clusters) = match &o.upstream {
        // Large blob uploads and downloads (registries) outlast Envoy's default 15 s route timeout.
        Some((host, port)) => {
            ("{ cluster: upstream, timeout: 60s }", String::new(), cluster("upstream", host, *port))
        }
        None => (
            "{ cluster: backend }",
            stand_in_backend(o.backend_port),
            cluster("backend", "127.0.0.1", o.backend_port),
        ),
    };
    for (name, port) in &o.clusters {
        clusters.push_str(&cluster(name, "127.0.0.1", *port));
    }
    let access_log = if o.access_log { ACCESS_LOG } else { "" };
    let meshward = meshward_http_filter(bundle_json, &o.wasm_path);
    format!(
        r#"# Envoy with meshward in front of {what}, listening on 127.0.0.1.
# Rendered by `meshward render envoy`; run from the repository root so the module path resolves.
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
# meshward's counters carry their labels in the name; these extractors make them Prometheus labels:
# meshward_decisions_total{{outcome="deny",reason="token_expired"}}.
stats_config:
  stats_tags:
  - tag_name: outcome
    regex: '^wasmcustom\.meshward\.(?:decisions|key_fetches)_total(\.outcome\.([a-z]+))'
  - tag_name: reason
    regex: '^wasmcustom\.meshward\.decisions_total\.outcome\.[a-z]+(\.reason\.([a-z_]+))$'
  - tag_name: issuer
    regex: '^wasmcustom\.meshward\.key_set_age_seconds(\.issuer\.([A-Za-z0-9_-]+))$'
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listen} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
{access_log}          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {route}
          http_filters:
{meshward}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{listeners}  clusters:
{clusters}"#,
        what = if o.upstream.is_some() { "the upstream" } else { "a stand-in backend" },
        admin = o.admin_port,
        listen = o.listen_port,
    )
}

/// meshward as an entry of an HTTP connection manager's `http_filters` (YAML, indented for
/// `envoy_bootstrap`'s listener): the module at `wasm_path`, `bundle_json` as its configuration.
pub fn meshward_http_filter(bundle_json: &str, wasm_path: &str) -> String {
    let mut config = String::new();
    for line in bundle_json.trim_end().lines() {
        // Block scalar lines are indented below `value: |`.
        let _ = writeln!(config, "                    {line}");
    }
    format!(
        r#"          - name: meshward
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: meshward
                root_id: meshward
                # Deny requests if the VM fails; never let traffic through unchecked.
                failure_policy: FAIL_CLOSED
                vm_config:
                  vm_id: meshward
                  runtime: envoy.wasm.runtime.v8
                  code:
                    local:
                      filename: {wasm_path}
                # The policy bundle (JSON), exactly as `meshward check` validates it.
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: |
{config}"#
    )
}
