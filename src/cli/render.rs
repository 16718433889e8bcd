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

/// Where Envoy Gateway fetches the module from.
#[derive(Clone, Debug)]
pub enum WasmCode {
    /// An OCI image `REGISTRY/REPOSITORY`, pinned by its manifest digest (`sha256:<64 hex>`).
    Image { image: String, digest: String },
    /// An HTTP(S) URL, verified by the module's SHA-256 (64 hex).
    Http { url: String, sha256: String },
}

/// An Envoy Gateway `EnvoyExtensionPolicy` (gateway.envoyproxy.io/v1alpha1).
#[derive(Clone, Debug)]
pub struct EnvoyGatewayOptions {
    /// How the bundle was named on the command line (shown in the header comment).
    pub bundle_path: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`: that of the Gateway or HTTPRoute.
    pub namespace: String,
    /// `targetRefs` as (kind, name): `Gateway` or `HTTPRoute`, in the policy's namespace.
    pub target_refs: Vec<(String, String)>,
    /// The module.
    pub code: WasmCode,
    /// Set the bundle's `mode` to `dry-run`.
    pub dry_run: bool,
}

/// Renders the `EnvoyExtensionPolicy` manifest for `bundle_json` (a bundle that passed `check`):
/// meshward on the requests of the targeted Gateways or HTTPRoutes, the bundle as `config`.
pub fn envoy_gateway_policy(
    bundle_json: &str,
    o: &EnvoyGatewayOptions,
) -> Result<String, crate::cli::istio::IstioError> {
    use crate::cli::istio::{self, IstioError};
    istio::dns_subdomain("name", &o.name)?;
    istio::dns_label("namespace", &o.namespace)?;
    if o.target_refs.is_empty() {
        return Err(IstioError::Conflict("give at least one --target-ref Gateway/NAME or HTTPRoute/NAME"));
    }
    for (kind, name) in &o.target_refs {
        if kind != "Gateway" && kind != "HTTPRoute" {
            return Err(IstioError::Conflict("an EnvoyExtensionPolicy targets a Gateway or an HTTPRoute"));
        }
        istio::dns_subdomain("target name", name)?;
    }
    let hex64 =
        |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let config = istio::plugin_config(bundle_json, o.dry_run)?;
    let mut command = format!("meshward render envoy-gateway {}", o.bundle_path.replace(['\n', '\r'], " "));
    let code = match &o.code {
        WasmCode::Image { image, digest } => {
            istio::validate_image(image)?;
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if !hex64(hex) {
                return Err(IstioError::Digest(digest.clone()));
            }
            let _ = write!(command, " --image {image} --digest {digest}");
            format!(
                "      # The module's OCI image, pinned by its manifest digest (built by `meshward image`).\n\
                 \x20     type: Image\n      image:\n        url: {image}@{digest}\n        sha256: {hex}\n"
            )
        }
        WasmCode::Http { url, sha256 } => {
            if !hex64(sha256) {
                return Err(IstioError::Digest(sha256.clone()));
            }
            if !url.starts_with("https://") && !url.starts_with("http://") {
                return Err(IstioError::Image(
                    url.clone(),
                    "give an http:// or https:// URL of meshward.wasm",
                ));
            }
            let _ = write!(command, " --url {url} --sha256 {sha256}");
            format!(
                "      # The module file, verified by its SHA-256.\n\
                 \x20     type: HTTP\n      http:\n        url: {}\n        sha256: {sha256}\n",
                serde_json::Value::from(url.as_str())
            )
        }
    };
    for (kind, name) in &o.target_refs {
        let _ = write!(command, " --target-ref {kind}/{name}");
    }
    if o.namespace != "default" {
        let _ = write!(command, " --namespace {}", o.namespace);
    }
    if o.name != istio::DEFAULT_NAME {
        let _ = write!(command, " --name {}", o.name);
    }
    if o.dry_run {
        command.push_str(" --dry-run");
    }
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# meshward as an Envoy Gateway EnvoyExtensionPolicy: bundle {:?} version {:?}.",
        config.text("name").unwrap_or_default(),
        config.text("version").unwrap_or_default()
    );
    let _ = writeln!(y, "# Rendered by: {command}");
    let _ = writeln!(y, "# Mode: {}.", config.text("mode").unwrap_or_else(|| "enforce".into()));
    let _ = write!(
        y,
        "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyExtensionPolicy\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  # The requests of these resources (in the policy's namespace).\n  targetRefs:\n",
        o.name, o.namespace
    );
    for (kind, name) in &o.target_refs {
        let _ = writeln!(y, "  - group: gateway.networking.k8s.io\n    kind: {kind}\n    name: {name}");
    }
    y.push_str("  wasm:\n  - name: meshward\n    rootID: meshward\n    code:\n");
    y.push_str(&code);
    y.push_str(
        "    # A module that cannot be fetched or loaded fails the targeted routes (Envoy Gateway answers\n\
         \x20   # them with an error): never unchecked traffic.\n\
         \x20   failOpen: false\n\
         \x20   # The policy bundle, as `meshward check` validates it; Envoy Gateway passes it as JSON.\n\
         \x20   config:\n",
    );
    config.write(&mut y, 6);
    let parsed: serde_json::Value =
        serde_norway::from_str(&y).map_err(|e| IstioError::RoundTrip(e.to_string()))?;
    if parsed.pointer("/spec/wasm/0/config") != Some(&config.to_value()) {
        return Err(IstioError::RoundTrip("config differs from the bundle".into()));
    }
    Ok(y)
}
