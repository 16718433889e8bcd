//! `meshward render istio`: the Istio WasmPlugin manifests, as YAML a cluster would read, the
//! checked-in examples under `envoy/istio/`, and the pluginConfig Istio hands the plugin, loaded
//! in a real Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use meshward::cli::istio::{wasm_plugin, WasmPluginOptions};
use meshward::cli::render::meshward_http_filter;
use meshward::BundleConfig;
use serde_json::{json, Value};
use support::Envoy;

const IMAGE: &str = "images.example.internal/platform/meshward";
const DIGEST: &str = "sha256:5907775a9dfe25f6b7a0a7a6420049125ac977ea0e242eee0b1a51a432508c4a";

/// The examples under envoy/istio/, each re-rendered by the command in its header.
const EXAMPLES: &[&str] = &[
    "ingress-gateway.yaml",
    "mesh-wide.yaml",
    "registry-dry-run.yaml",
    "registry-enforce.yaml",
    "registry-traffic-extension.yaml",
    "registry-waypoint.yaml",
];
/// The examples under envoy/envoy-gateway/.
const ENVOY_GATEWAY_EXAMPLES: &[&str] = &["edge-gateway.yaml", "registry-route.yaml"];

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn example_bundle() -> String {
    std::fs::read_to_string(repo("policies/registry.json")).unwrap()
}

/// The bundle as the pluginConfig carries it: without the editors' `$schema` reference.
fn example_value() -> Value {
    let mut bundle: Value = serde_json::from_str(&example_bundle()).unwrap();
    bundle.as_object_mut().unwrap().remove("$schema");
    bundle
}

fn options(namespace: &str, selector: &[(&str, &str)], dry_run: bool) -> WasmPluginOptions {
    WasmPluginOptions {
        bundle_path: "policies/registry.json".into(),
        name: "meshward".into(),
        namespace: namespace.into(),
        selector: selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        image: IMAGE.into(),
        digest: DIGEST.into(),
        dry_run,
        pull_secret: None,
        gateway: false,
        target_refs: Vec::new(),
        kind: meshward::cli::istio::ExtensionKind::WasmPlugin,
    }
}

/// Renders and parses the manifest as YAML.
fn render(bundle: &str, o: &WasmPluginOptions) -> (String, Value) {
    let yaml = wasm_plugin(bundle, o).unwrap();
    let parsed: Value = serde_norway::from_str(&yaml).unwrap_or_else(|e| panic!("not YAML ({e}):\n{yaml}"));
    (yaml, parsed)
}

fn meshward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshward")).current_dir(repo("")).args(args).output().unwrap()
}

/// The fields every rendered WasmPlugin carries, whatever its scope.
fn assert_common(m: &Value, bundle: &Value) {
    assert_eq!(m["apiVersion"], "extensions.istio.io/v1alpha1");
    assert_eq!(m["kind"], "WasmPlugin");
    assert_eq!(m["metadata"]["name"], "meshward");
    let spec = &m["spec"];
    assert_eq!(spec["url"], format!("oci://{IMAGE}@{DIGEST}").as_str(), "pinned by digest");
    assert_eq!(spec["phase"], "AUTHN");
    assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
    assert_eq!(spec["pluginName"], "meshward");
    assert_eq!(spec["match"], json!([{"mode": "SERVER"}]));
    assert_eq!(&spec["pluginConfig"], bundle, "the bundle is the pluginConfig, as a JSON object");
    assert!(spec["pluginConfig"].get("$schema").is_none(), "editor hints stay out of the cluster");
    // What Istio delivers (the pluginConfig as JSON) is a bundle the plugin accepts.
    let delivered = serde_json::to_vec(&spec["pluginConfig"]).unwrap();
    BundleConfig::from_json(&delivered).and_then(BundleConfig::compile).unwrap();
}

#[test]
fn a_mesh_wide_plugin_lives_in_the_root_namespace_without_a_selector() {
    let mut bundle = example_value();
    bundle["$schema"] = json!("./meshward.schema.json");
    let (yaml, m) = render(&bundle.to_string(), &options("istio-system", &[], false));
    assert_common(&m, &example_value());
    assert_eq!(m["metadata"]["namespace"], "istio-system");
    assert!(m["spec"].get("selector").is_none(), "no selector: every workload\n{yaml}");
    assert!(yaml.contains("# Applies to: every workload in the mesh"), "{yaml}");
    assert!(yaml.contains("# Mode: enforce"), "{yaml}");
}

#[test]
fn a_per_workload_plugin_selects_its_workloads_in_their_namespace() {
    let bundle = example_bundle();
    let (yaml, m) = render(&bundle, &options("registry", &[("app", "registry"), ("tier", "true")], false));
    assert_common(&m, &example_value());
    assert_eq!(m["metadata"]["namespace"], "registry");
    // "true" stays a string label value (quoted), as Kubernetes requires.
    assert_eq!(m["spec"]["selector"], json!({"matchLabels": {"app": "registry", "tier": "true"}}));
    assert!(yaml.contains("      tier: \"true\"\n"), "{yaml}");
    assert!(
        yaml.contains("# Applies to: the workloads labelled app=registry,tier=true in namespace registry")
    );
}

#[test]
fn dry_run_sets_the_bundle_mode_and_nothing_else() {
    let bundle = example_bundle();
    let (yaml, m) = render(&bundle, &options("registry", &[("app", "registry")], true));
    let mut expected = example_value();
    expected["mode"] = json!("dry-run");
    assert_common(&m, &expected);
    assert!(yaml.contains("# Mode: dry-run (every decision is computed and audited, no request is denied)"));

    // A bundle that already says dry-run stays dry-run without the flag.
    let (_, again) = render(&expected.to_string(), &options("registry", &[("app", "registry")], false));
    assert_eq!(again["spec"]["pluginConfig"]["mode"], "dry-run");
}

#[test]
fn strings_that_yaml_1_1_would_misread_are_quoted() {
    // Kubernetes tooling reads YAML 1.1, where yes/on/y are booleans and 0123 is a number.
    let mut bundle = example_value();
    bundle["version"] = json!("0123");
    bundle["rules"][0]["owner"] = json!("yes");
    bundle["rules"][0]["description"] = json!("on: call # not a comment\nsecond line");
    bundle["rules"][1]["owner"] = json!("Off");
    let (yaml, m) = render(&bundle.to_string(), &options("istio-system", &[], false));
    assert_common(&m, &bundle);
    for line in [
        "  version: \"0123\"",
        "  owner: \"yes\"",
        "  owner: \"Off\"",
        "description: \"on: call # not a comment\\nsecond line\"",
        // JWK coordinate `y` is a YAML 1.1 boolean as a key, too.
        "  \"y\": \"5IkYog6JYGPqsw4ED8Vhi5_9XcqLIr_rC9Qg20lNsKk\"",
    ] {
        assert!(yaml.contains(line), "missing {line:?} in\n{yaml}");
    }
}

/// Each `meshward render TARGET policies/registry.json ARGS` exits 2 with `message` and no manifest.
fn assert_usage_errors(target: &str, cases: &[(&[&str], &str)]) {
    for (args, message) in cases {
        let mut all = vec!["render", target, "policies/registry.json"];
        all.extend_from_slice(args);
        let out = meshward(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: expected {message:?} in {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: no manifest on a refusal");
    }
}

#[test]
fn the_cli_refuses_references_that_do_not_pin_the_module() {
    let cases: &[(&[&str], &str)] = &[
        (&["--image", "images.example.internal/meshward:1.0", "--digest", DIGEST], "without a tag"),
        (&["--image", "oci://images.example.internal/meshward", "--digest", DIGEST], "without a scheme"),
        (&["--image", IMAGE, "--digest", "sha256:abc"], "invalid digest \"sha256:abc\""),
        (&["--image", IMAGE, "--digest", "latest"], "invalid digest \"latest\""),
        (&["--image", IMAGE, "--digest", DIGEST, "--selector", "app"], "invalid selector \"app\""),
        (
            &["--image", IMAGE, "--digest", DIGEST, "--namespace", "Registry"],
            "invalid namespace \"Registry\"",
        ),
        (
            &[
                "--image",
                IMAGE,
                "--digest",
                DIGEST,
                "--selector",
                "app=registry",
                "--target-ref",
                "Service/registry",
            ],
            "--selector and --target-ref exclude each other",
        ),
        (&["--image", IMAGE, "--digest", DIGEST, "--target-ref", "Pod/registry"], "invalid target reference"),
        (
            &["--image", IMAGE, "--digest", DIGEST, "--gateway", "--target-ref", "Gateway/edge"],
            "--gateway selects gateway pods",
        ),
    ];
    assert_usage_errors("istio", cases);

    // Envoy Gateway: a Gateway or HTTPRoute, and a pinned module.
    let eg: &[(&[&str], &str)] = &[
        (
            &["--target-ref", "Service/registry", "--image", IMAGE, "--digest", DIGEST],
            "a Gateway or an HTTPRoute",
        ),
        (&["--target-ref", "Gateway/edge", "--image", IMAGE, "--digest", "sha256:abc"], "invalid digest"),
        (
            &["--target-ref", "Gateway/edge", "--url", "ftp://x/m.wasm", "--sha256", &DIGEST[7..]],
            "http:// or https://",
        ),
    ];
    assert_usage_errors("envoy-gateway", eg);

    // A bundle the plugin would refuse is not rendered either.
    let dir = support::scratch_dir();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, example_bundle().replace("\"pull\"", "\"pul\"")).unwrap();
    let out = meshward(&["render", "istio", bad.to_str().unwrap(), "--image", IMAGE, "--digest", DIGEST]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
}

/// Each example in `dir` is exactly what the command in its header renders.
fn assert_examples_rendered(dir: &str, examples: &[&str]) -> Vec<Value> {
    let dir = repo(dir);
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    found.sort();
    assert_eq!(found, examples, "{} holds the examples", dir.display());
    let mut manifests = Vec::new();
    for name in examples {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let command = text
            .lines()
            .find_map(|l| l.strip_prefix("# Rendered by: meshward "))
            .unwrap_or_else(|| panic!("{name}: no `# Rendered by:` line"));
        let out = meshward(&command.split(' ').collect::<Vec<_>>());
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            text,
            "{}/{name} is not what `meshward {command}` renders: re-render it (`make istio-examples`)",
            dir.display()
        );
        manifests.push(serde_norway::from_str(&text).unwrap());
    }
    manifests
}

#[test]
fn checked_in_examples_are_the_renderers_output() {
    let manifests = assert_examples_rendered("envoy/istio", EXAMPLES);
    let scopes: Vec<_> = manifests
        .iter()
        .map(|m| (m["metadata"]["namespace"].clone(), m["spec"]["selector"].clone()))
        .collect();
    let kinds: Vec<_> = manifests.iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"TrafficExtension") && kinds.contains(&"WasmPlugin"), "{kinds:?}");
    assert!(manifests.iter().any(|m| m["spec"]["match"] == json!([{"mode": "CLIENT"}])), "a gateway example");
    assert!(
        manifests.iter().any(|m| m["spec"]["targetRefs"] == json!([{"group": "", "kind": "Service", "name": "registry"}])),
        "a waypoint example"
    );
    let policies = assert_examples_rendered("envoy/envoy-gateway", ENVOY_GATEWAY_EXAMPLES);
    let code_types: Vec<_> = policies.iter().map(|m| m["spec"]["wasm"][0]["code"]["type"].clone()).collect();
    assert_eq!(code_types, [json!("HTTP"), json!("Image")]);
    assert!(scopes.contains(&(json!("istio-system"), Value::Null)), "a mesh-wide example: {scopes:?}");
    assert!(
        scopes.contains(&(json!("registry"), json!({"matchLabels": {"app": "registry"}}))),
        "a per-workload example: {scopes:?}"
    );
}

/// The pluginConfig of a checked-in example, as Istio hands it to the plugin: compact JSON.
fn delivered_config(example: &str) -> String {
    let text = std::fs::read_to_string(repo("envoy/istio").join(example)).unwrap();
    let m: Value = serde_norway::from_str(&text).unwrap();
    serde_json::to_string(&m["spec"]["pluginConfig"]).unwrap()
}

#[test]
fn rollout_dry_run_reports_what_enforce_then_denies() {
    let request = |envoy: &Envoy| {
        envoy.request("GET", "/v2/prod/web/manifests/1.0", &[("Host", "registry.example.internal")])
    };

    // Step 1, dry-run: the request without a token goes through; the audit trail says it would not.
    let envoy = Envoy::start(&delivered_config("registry-dry-run.yaml"));
    let response = request(&envoy);
    assert_eq!(response.status, 200, "dry-run lets the request through: {response:?}");
    let log = envoy.wait_for_log(|log| log.contains("token_missing"));
    // The record meshward logged (the last one on its line: the access log shares the file and a
    // line of it can precede meshward's on the same line).
    let record: Value = log
        .lines()
        .filter(|line| line.contains("][wasm]"))
        .filter_map(|line| line.rfind(r#"{"type":"decision""#).map(|at| &line[at..]))
        .map(|json| serde_json::from_str(json).unwrap())
        .next_back()
        .unwrap_or_else(|| panic!("no audit record:\n{log}"));
    assert_eq!(record["mode"], "dry-run", "{record}");
    assert_eq!(record["reason"], "token_missing", "{record}");
    assert_eq!(record["decision"], "deny", "what enforce will do: {record}");
    drop(envoy);

    // Step 2, enforce: the same request is denied.
    let envoy = Envoy::start(&delivered_config("registry-enforce.yaml"));
    let response = request(&envoy);
    assert_eq!(response.status, 401, "{response:?}");
    assert_eq!(response.json()["reason"], "token_missing");
}

/// Envoy with the HTTP connection manager settings Istio derives from `meshConfig.pathNormalization`
/// (`hcm` lines), meshward with `bundle`, and a route that answers 200 with the path it received.
fn normalizing_envoy(bundle_json: &str, hcm: &str) -> Envoy {
    let (listen, admin) = (support::free_port(), support::free_port());
    let meshward = meshward_http_filter(bundle_json, &support::wasm_module().display().to_string());
    let bootstrap = format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: inbound
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listen} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          # The test client closes after each response; do not wait a second for it.
          delayed_close_timeout: 0s
{hcm}
          route_config:
            virtual_hosts:
            - name: upstream
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200 }}
                response_headers_to_add:
                - header: {{ key: x-upstream-path, value: "%REQ(:PATH)%" }}
          http_filters:
{meshward}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    );
    Envoy::start_yaml(&bootstrap, listen, admin)
}

#[test]
fn with_istio_path_normalization_meshward_authorizes_the_path_the_upstream_receives() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let spec = meshward::cli::dev::TokenSpec::new(
        "https://issuer.example.internal",
        "spiffe://example.internal/ci/builder/web",
        "registry.example.internal",
        now,
        300,
    );
    let builder =
        format!("Bearer {}", meshward::cli::dev::SigningKey::demo("demo-2026-1").sign(&spec).unwrap());
    let put = |envoy: &Envoy, path: &str| {
        envoy.request("PUT", path, &[("Host", "registry.example.internal"), ("Authorization", &builder)])
    };
    let bundle = delivered_config("registry-enforce.yaml");

    // MERGE_SLASHES: Istio sets normalize_path and merge_slashes, and keeps escaped slashes.
    let merge_slashes = "          normalize_path: true\n          merge_slashes: true\n          \
                         path_with_escaped_slashes_action: KEEP_UNCHANGED";
    let envoy = normalizing_envoy(&bundle, merge_slashes);
    let r = put(&envoy, "/v2/dev//web/./manifests/1.0");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-upstream-path"), Some("/v2/dev/web/manifests/1.0"), "one path for both");
    let r = put(&envoy, "/v2/dev/../prod/web/manifests/1.0");
    assert_eq!((r.status, r.json()["reason"].as_str()), (403, Some("policy_no_matching_rule")), "{r:?}");
    // Escaped slashes pass Envoy unchanged; meshward refuses them.
    let r = put(&envoy, "/v2/dev%2F..%2Fprod/web/manifests/1.0");
    assert_eq!((r.status, r.json()["reason"].as_str()), (400, Some("request_path_rejected")), "{r:?}");
    drop(envoy);

    // The EnvoyFilter of the guide: Envoy itself rejects escaped slashes, before any filter.
    let envoy = normalizing_envoy(&bundle, &merge_slashes.replace("KEEP_UNCHANGED", "REJECT_REQUEST"));
    let r = put(&envoy, "/v2/dev%2F..%2Fprod/web/manifests/1.0");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(envoy.audit_records().is_empty(), "meshward never saw it");
    drop(envoy);

    // DECODE_AND_MERGE_SLASHES: %2F is decoded, then the path normalized: still no way into prod/.
    let envoy = normalizing_envoy(&bundle, &merge_slashes.replace("KEEP_UNCHANGED", "UNESCAPE_AND_FORWARD"));
    let r = put(&envoy, "/v2/dev%2F..%2Fprod/web/manifests/1.0");
    assert_eq!((r.status, r.json()["reason"].as_str()), (403, Some("policy_no_matching_rule")), "{r:?}");
    let r = put(&envoy, "/v2/dev%2Fweb/manifests/1.0");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-upstream-path"), Some("/v2/dev/web/manifests/1.0"));
}
