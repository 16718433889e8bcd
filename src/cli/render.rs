//! Rendering deployable Envoy configuration from a bundle (native only).

use std::fmt::Write as _;
use std::path::PathBuf;

use super::Failure;

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

// The `meshward render` command.

/// `meshward render`: what to render.
#[derive(clap::Subcommand)]
pub enum RenderTarget {
    /// A complete Envoy bootstrap (meshward in front of a demo backend) on stdout.
    Envoy {
        /// The bundle to embed (JSON; YAML when named .yaml or .yml, converted to JSON).
        bundle: PathBuf,
        #[arg(long, default_value_t = 8080)]
        listen_port: u16,
        #[arg(long, default_value_t = 8081)]
        backend_port: u16,
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// Path of meshward.wasm as Envoy sees it.
        #[arg(long, default_value = MODULE_PATH)]
        wasm: String,
        /// Route allowed requests to this service (HOST:PORT) instead of the stand-in backend.
        #[arg(long, value_name = "HOST:PORT", value_parser = parse_upstream)]
        upstream: Option<(String, u16)>,
        /// Leave out the access log (the audit records stay in Envoy's log).
        #[arg(long)]
        no_access_log: bool,
    },
    /// An Istio WasmPlugin or TrafficExtension (extensions.istio.io/v1alpha1) carrying the bundle, on stdout.
    Istio {
        /// The bundle to deploy.
        bundle: PathBuf,
        /// The image repository, without tag or digest: REGISTRY[:PORT]/REPOSITORY.
        #[arg(long)]
        image: String,
        /// The image's manifest digest (sha256:...), as `meshward image` prints it.
        #[arg(long)]
        digest: String,
        /// The WasmPlugin's namespace; the root namespace (default) without --selector is mesh-wide.
        #[arg(long, default_value = crate::cli::istio::ROOT_NAMESPACE)]
        namespace: String,
        /// Limit to workloads with this label (LABEL=VALUE; repeatable).
        #[arg(long = "selector", value_name = "LABEL=VALUE")]
        selectors: Vec<String>,
        /// The WasmPlugin's name.
        #[arg(long, default_value = crate::cli::istio::DEFAULT_NAME)]
        name: String,
        /// A Kubernetes secret (in the same namespace) to pull the image with.
        #[arg(long)]
        pull_secret: Option<String>,
        /// Deploy in dry-run mode: decisions are audited, no request is denied.
        #[arg(long)]
        dry_run: bool,
        /// The selected workloads are ingress/egress gateways (match CLIENT listeners, not SERVER).
        #[arg(long)]
        gateway: bool,
        /// Attach to a resource instead of selecting workloads (repeatable): Gateway/NAME (an
        /// ingress or waypoint Gateway), Service/NAME (through its waypoint), GatewayClass/NAME,
        /// ServiceEntry/NAME. Waypoints apply only plugins attached this way.
        #[arg(long = "target-ref", value_name = "KIND/NAME")]
        target_refs: Vec<String>,
        /// WasmPlugin (every supported release) or TrafficExtension (Istio 1.30 and later).
        #[arg(long, value_enum, default_value_t = IstioKind::WasmPlugin)]
        kind: IstioKind,
    },
    /// An Envoy Gateway EnvoyExtensionPolicy (gateway.envoyproxy.io/v1alpha1), on stdout.
    EnvoyGateway {
        /// The bundle to deploy.
        bundle: PathBuf,
        /// The Gateway or HTTPRoute to attach to (repeatable): Gateway/NAME or HTTPRoute/NAME.
        #[arg(long = "target-ref", value_name = "KIND/NAME", required = true)]
        target_refs: Vec<String>,
        /// The image repository, without tag or digest (with --digest).
        #[arg(long, requires = "digest", conflicts_with = "url")]
        image: Option<String>,
        /// The image's manifest digest (sha256:...), as `meshward image` prints it.
        #[arg(long, requires = "image")]
        digest: Option<String>,
        /// An http(s) URL of meshward.wasm (with --sha256).
        #[arg(long, requires = "sha256", required_unless_present = "image")]
        url: Option<String>,
        /// The SHA-256 of meshward.wasm, 64 hex digits (`sha256sum target/meshward.wasm`).
        #[arg(long, requires = "url")]
        sha256: Option<String>,
        /// The policy's namespace: that of the Gateway or HTTPRoute.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// The policy's name.
        #[arg(long, default_value = crate::cli::istio::DEFAULT_NAME)]
        name: String,
        /// Deploy in dry-run mode: decisions are audited, no request is denied.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The Istio resource kind to render.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum IstioKind {
    #[value(name = "WasmPlugin")]
    WasmPlugin,
    #[value(name = "TrafficExtension")]
    TrafficExtension,
}

/// KIND/NAME arguments as pairs.
fn target_refs(args: Vec<String>) -> Result<Vec<(String, String)>, Failure> {
    args.into_iter()
        .map(|a| match a.split_once('/') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {
                Ok((kind.to_owned(), name.to_owned()))
            }
            _ => Err(Failure::usage(crate::cli::istio::IstioError::TargetRef(a.clone()).to_string())),
        })
        .collect()
}

/// `--upstream HOST:PORT` (an IPv6 address in brackets), parsed like a request's authority.
fn parse_upstream(text: &str) -> Result<(String, u16), String> {
    match crate::request::split_authority(text) {
        Ok((host, Some(port))) if port > 0 => {
            Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
        }
        _ => Err(format!("expected HOST:PORT, such as 127.0.0.1:5000, not {text:?}")),
    }
}

/// Runs `meshward render TARGET`: the bundle must compile, as the plugin would refuse it otherwise.
pub fn run(target: RenderTarget, out: &mut dyn std::io::Write) -> Result<(), Failure> {
    match target {
        RenderTarget::Envoy {
            bundle,
            listen_port,
            backend_port,
            admin_port,
            wasm,
            upstream,
            no_access_log,
        } => {
            let json = super::bundle::plugin_json(&bundle)?;
            // Valid syntax is not enough: the bundle must compile, as the plugin would refuse it.
            super::bundle::Bundle::load(&bundle).map_err(|e| Failure::failed(e.message))?;
            let options = EnvoyOptions {
                listen_port,
                backend_port,
                admin_port,
                wasm_path: wasm,
                upstream,
                access_log: !no_access_log,
                ..Default::default()
            };
            write!(out, "{}", envoy_bootstrap(&json, &options))?;
            Ok(())
        }
        RenderTarget::Istio {
            bundle,
            image,
            digest,
            namespace,
            selectors,
            name,
            pull_secret,
            dry_run,
            gateway,
            target_refs: refs,
            kind,
        } => {
            let json = super::bundle::plugin_json(&bundle)?;
            super::bundle::Bundle::load(&bundle).map_err(|e| Failure::failed(e.message))?;
            let mut selector = Vec::new();
            for s in selectors {
                let (label, value) = s.split_once('=').ok_or_else(|| {
                    Failure::usage(crate::cli::istio::IstioError::Selector(s.clone()).to_string())
                })?;
                selector.push((label.to_owned(), value.to_owned()));
            }
            let options = crate::cli::istio::WasmPluginOptions {
                bundle_path: bundle.display().to_string(),
                name,
                namespace,
                selector,
                image,
                digest,
                dry_run,
                pull_secret,
                gateway,
                target_refs: target_refs(refs)?,
                kind: match kind {
                    IstioKind::WasmPlugin => crate::cli::istio::ExtensionKind::WasmPlugin,
                    IstioKind::TrafficExtension => crate::cli::istio::ExtensionKind::TrafficExtension,
                },
            };
            let manifest =
                crate::cli::istio::wasm_plugin(&json, &options).map_err(|e| Failure::usage(e.to_string()))?;
            write!(out, "{manifest}")?;
            Ok(())
        }
        RenderTarget::EnvoyGateway {
            bundle,
            target_refs: refs,
            image,
            digest,
            url,
            sha256,
            namespace,
            name,
            dry_run,
        } => {
            let json = super::bundle::plugin_json(&bundle)?;
            super::bundle::Bundle::load(&bundle).map_err(|e| Failure::failed(e.message))?;
            let code = match (image, digest, url, sha256) {
                (Some(image), Some(digest), _, _) => WasmCode::Image { image, digest },
                (_, _, Some(url), Some(sha256)) => WasmCode::Http { url, sha256 },
                _ => return Err(Failure::usage("give --image and --digest, or --url and --sha256")),
            };
            let options = EnvoyGatewayOptions {
                bundle_path: bundle.display().to_string(),
                name,
                namespace,
                target_refs: target_refs(refs)?,
                code,
                dry_run,
            };
            let manifest =
                envoy_gateway_policy(&json, &options).map_err(|e| Failure::usage(e.to_string()))?;
            write!(out, "{manifest}")?;
            Ok(())
        }
    }
}
