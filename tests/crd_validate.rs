//! Every manifest meshward renders (Istio WasmPlugin and TrafficExtension, Envoy Gateway
//! EnvoyExtensionPolicy) validated against the upstream CRD's `openAPIV3Schema`, copied unchanged
//! under tests/crds/: types, required fields, enums, one-of and any-of branches, unknown fields,
//! lengths, patterns, and the CEL rules (`x-kubernetes-validations`) the manifests reach, each
//! written here from its rule text. A CEL rule this file does not know fails the test, so a new
//! upstream rule cannot pass unchecked. Deliberately broken manifests must fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use meshward::cli::istio::{wasm_plugin, ExtensionKind, WasmPluginOptions};
use meshward::cli::render::{envoy_gateway_policy, EnvoyGatewayOptions, WasmCode};
use serde_json::{json, Value};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The schema for a manifest's apiVersion and kind.
fn schema_for(manifest: &Value) -> Value {
    let file = match (manifest["apiVersion"].as_str(), manifest["kind"].as_str()) {
        (Some("extensions.istio.io/v1alpha1"), Some("WasmPlugin")) => "istio-wasmplugin.yaml",
        (Some("extensions.istio.io/v1alpha1"), Some("TrafficExtension")) => "istio-trafficextension.yaml",
        (Some("gateway.envoyproxy.io/v1alpha1"), Some("EnvoyExtensionPolicy")) => {
            "envoy-gateway-envoyextensionpolicy.yaml"
        }
        other => panic!("no CRD for {other:?}"),
    };
    serde_norway::from_str(&std::fs::read_to_string(repo("tests/crds").join(file)).unwrap()).unwrap()
}

/// The CEL rules of the CRDs, by their text (whitespace collapsed), as Rust predicates on `self`.
fn cel(rule: &str, this: &Value) -> Result<bool, String> {
    let has = |field: &str| this.get(field).is_some();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let url_scheme_ok = |allowed: &[&str]| {
        // isURL(self) ? scheme in allowed : isURL("http://" + self): a scheme is what precedes "://".
        let s = text(this);
        match s.split_once("://") {
            Some((scheme, rest)) => allowed.contains(&scheme) && !rest.is_empty(),
            None => !s.is_empty() && !s.contains(' '),
        }
    };
    let kinds = ["Gateway", "ListenerSet", "HTTPRoute", "GRPCRoute", "UDPRoute", "TCPRoute", "TLSRoute"];
    let refs = || this["targetRefs"].as_array().cloned().unwrap_or_default();
    Ok(match rule {
        // Istio
        "(has(self.selector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1" => {
            u8::from(has("selector")) + u8::from(has("targetRefs")) <= 1
        }
        "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1" => {
            u8::from(has("selector")) + u8::from(has("targetRef")) + u8::from(has("targetRefs")) <= 1
        }
        "has(self.wasm) != has(self.lua)" => has("wasm") != has("lua"),
        "self.all(key, !key.contains(\"*\"))" => this.as_object().unwrap().keys().all(|k| !k.contains('*')),
        "self.all(key, key.size() != 0)" => this.as_object().unwrap().keys().all(|k| !k.is_empty()),
        "!self.contains(\"*\")" => !text(this).contains('*'),
        "self.size() == 0" => text(this).is_empty(),
        "isURL(self) ? (url(self).getScheme() in [\"\", \"http\", \"https\", \"oci\", \"file\"]) : (isURL(\"http://\" + self) && url(\"http://\" + self).getScheme() in [\"\", \"http\", \"https\", \"oci\", \"file\"])"
        | "isURL(self) ? (url(self).getScheme() in [\"\", \"http\", \"https\", \"file\", \"oci\"]) : (isURL(\"http://\" + self) && url(\"http://\" + self).getScheme() in [\"\", \"http\", \"https\", \"file\", \"oci\"])" => {
            url_scheme_ok(&["http", "https", "oci", "file"])
        }
        "(has(self.valueFrom) ? self.valueFrom : \"\") != \"HOST\" || !has(self.value)" => {
            this["valueFrom"] != "HOST" || !has("value")
        }
        // Envoy Gateway
        "(has(self.targetRef) && !has(self.targetRefs)) || (!has(self.targetRef) && has(self.targetRefs)) || (has(self.targetSelectors) && self.targetSelectors.size() > 0)" => {
            (has("targetRef") != has("targetRefs"))
                || this["targetSelectors"].as_array().is_some_and(|s| !s.is_empty())
        }
        "has(self.targetRef) ? self.targetRef.group == 'gateway.networking.k8s.io' : true" => {
            !has("targetRef") || this["targetRef"]["group"] == "gateway.networking.k8s.io"
        }
        "has(self.targetRef) ? self.targetRef.kind in ['Gateway', 'ListenerSet', 'HTTPRoute', 'GRPCRoute', 'UDPRoute', 'TCPRoute', 'TLSRoute'] : true" => {
            !has("targetRef") || kinds.contains(&text(&this["targetRef"]["kind"]).as_str())
        }
        "has(self.targetRefs) ? self.targetRefs.all(ref, ref.group == 'gateway.networking.k8s.io') : true" => {
            refs().iter().all(|r| r["group"] == "gateway.networking.k8s.io")
        }
        "has(self.targetRefs) ? self.targetRefs.all(ref, ref.kind in ['Gateway', 'ListenerSet', 'HTTPRoute', 'GRPCRoute', 'UDPRoute', 'TCPRoute', 'TLSRoute']) : true" => {
            refs().iter().all(|r| kinds.contains(&text(&r["kind"]).as_str()))
        }
        "!has(self.mergeType) || ((!has(self.targetRef) || self.targetRef.kind in ['HTTPRoute', 'GRPCRoute', 'UDPRoute', 'TCPRoute', 'TLSRoute']) && (!has(self.targetRefs) || self.targetRefs.all(ref, ref.kind in ['HTTPRoute', 'GRPCRoute', 'UDPRoute', 'TCPRoute', 'TLSRoute'])) && (!has(self.targetSelectors) || self.targetSelectors.all(sel, sel.kind in ['HTTPRoute', 'GRPCRoute', 'UDPRoute', 'TCPRoute', 'TLSRoute'])))" => {
            let routes = ["HTTPRoute", "GRPCRoute", "UDPRoute", "TCPRoute", "TLSRoute"];
            let route = |r: &Value| routes.contains(&text(&r["kind"]).as_str());
            let selectors = this["targetSelectors"].as_array().cloned().unwrap_or_default();
            !has("mergeType")
                || ((!has("targetRef") || route(&this["targetRef"]))
                    && refs().iter().all(route)
                    && selectors.iter().all(route))
        }
        "self.type == 'HTTP' ? has(self.http) : !has(self.http)" => (this["type"] == "HTTP") == has("http"),
        "self.type == 'Image' ? has(self.image) : !has(self.image)" => (this["type"] == "Image") == has("image"),
        "self.kind == 'Secret'" => this["kind"] == "Secret",
        other => return Err(format!("CEL rule not implemented by this test: {other}")),
    })
}

/// Kubernetes' structural validation of `v` at `path`; every violation is pushed to `errors`.
fn validate(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    let mut fail = |what: String| errors.push(format!("{path}: {what}"));
    if let Some(kind) = schema["type"].as_str() {
        let ok = match kind {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            _ => false,
        };
        if !ok {
            fail(format!("expected {kind}, found {v}"));
            return;
        }
    }
    if let Some(values) = schema["enum"].as_array() {
        if !values.contains(v) {
            fail(format!("{v} is not one of {values:?}"));
        }
    }
    if let Some(s) = v.as_str() {
        let n = s.chars().count() as u64;
        if schema["maxLength"].as_u64().is_some_and(|m| n > m)
            || schema["minLength"].as_u64().is_some_and(|m| n < m)
        {
            fail(format!("length {n} out of bounds"));
        }
        if let Some(p) = schema["pattern"].as_str() {
            if !regex::Regex::new(p).unwrap().is_match(s) {
                fail(format!("{s:?} does not match {p}"));
            }
        }
    }
    if let Some(n) = v.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|m| n < m)
            || schema["maximum"].as_f64().is_some_and(|m| n > m)
        {
            fail(format!("{n} out of range"));
        }
    }
    if let Some(not) = schema.get("not") {
        let mut e = Vec::new();
        validate(not, v, path, &mut e);
        if e.is_empty() {
            errors.push(format!("{path}: matches the excluded {not}"));
        }
    }
    for branch in schema["allOf"].as_array().into_iter().flatten() {
        validate(branch, v, path, errors);
    }
    let passing = |branches: &Value| {
        branches.as_array().map(|b| {
            b.iter()
                .filter(|branch| {
                    let mut e = Vec::new();
                    validate(branch, v, path, &mut e);
                    e.is_empty()
                })
                .count()
        })
    };
    if passing(&schema["oneOf"]).is_some_and(|n| n != 1) {
        errors.push(format!("{path}: not exactly one of {}", schema["oneOf"]));
    }
    if passing(&schema["anyOf"]) == Some(0) {
        errors.push(format!("{path}: none of {}", schema["anyOf"]));
    }
    if let Some(object) = v.as_object() {
        for field in schema["required"].as_array().into_iter().flatten() {
            if !object.contains_key(field.as_str().unwrap()) {
                errors.push(format!("{path}: required field {field} missing"));
            }
        }
        if schema["maxProperties"].as_u64().is_some_and(|m| object.len() as u64 > m) {
            errors.push(format!("{path}: too many properties"));
        }
        let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
        for (key, value) in object {
            let at = format!("{path}.{key}");
            if let Some(property) = schema["properties"].get(key) {
                validate(property, value, &at, errors);
            } else if schema["additionalProperties"].is_object() {
                validate(&schema["additionalProperties"], value, &at, errors);
            } else if schema.get("properties").is_some()
                && !preserve
                && !(path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&key.as_str()))
            {
                // A schema with properties knows its fields (a one-of branch of `required` only
                // does not); the API server checks apiVersion, kind and metadata itself.
                errors.push(format!("{at}: unknown field"));
            }
        }
    }
    if let Some(items) = v.as_array() {
        if schema["maxItems"].as_u64().is_some_and(|m| items.len() as u64 > m)
            || schema["minItems"].as_u64().is_some_and(|m| (items.len() as u64) < m)
        {
            errors.push(format!("{path}: item count out of bounds"));
        }
        for (i, item) in items.iter().enumerate() {
            validate(&schema["items"], item, &format!("{path}[{i}]"), errors);
        }
    }
    for rule in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
        let text = rule["rule"].as_str().unwrap().split_whitespace().collect::<Vec<_>>().join(" ");
        match cel(&text, v) {
            Ok(true) => {}
            Ok(false) => errors.push(format!("{path}: {}", rule["message"].as_str().unwrap_or(&text))),
            Err(e) => errors.push(format!("{path}: {e}")),
        }
    }
}

fn violations(manifest: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    validate(&schema_for(manifest), manifest, "", &mut errors);
    errors
}

fn assert_valid(yaml: &str) -> Value {
    let manifest: Value = serde_norway::from_str(yaml).unwrap();
    let errors = violations(&manifest);
    assert!(errors.is_empty(), "{errors:#?}\n{yaml}");
    manifest
}

fn bundle() -> String {
    std::fs::read_to_string(repo("policies/registry.json")).unwrap()
}

const DIGEST: &str = "sha256:5907775a9dfe25f6b7a0a7a6420049125ac977ea0e242eee0b1a51a432508c4a";

fn istio(kind: ExtensionKind, selector: &[(&str, &str)], refs: &[(&str, &str)], gateway: bool) -> String {
    let o = WasmPluginOptions {
        bundle_path: "policies/registry.json".into(),
        name: "meshward".into(),
        namespace: "registry".into(),
        selector: selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        image: "images.example.internal/meshward".into(),
        digest: DIGEST.into(),
        dry_run: false,
        pull_secret: Some("pull".into()),
        gateway,
        target_refs: refs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        kind,
    };
    wasm_plugin(&bundle(), &o).unwrap()
}

fn envoy_gateway(refs: &[(&str, &str)], code: WasmCode) -> String {
    let o = EnvoyGatewayOptions {
        bundle_path: "policies/registry.json".into(),
        name: "meshward".into(),
        namespace: "registry".into(),
        target_refs: refs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        code,
        dry_run: true,
    };
    envoy_gateway_policy(&bundle(), &o).unwrap()
}

fn image() -> WasmCode {
    WasmCode::Image { image: "images.example.internal/meshward".into(), digest: DIGEST.into() }
}

#[test]
fn every_istio_target_validates_as_both_kinds() {
    for kind in [ExtensionKind::WasmPlugin, ExtensionKind::TrafficExtension] {
        let targets = [
            istio(kind, &[("app", "registry")], &[], false),
            istio(kind, &[], &[], false),
            istio(kind, &[("istio", "ingressgateway")], &[], true),
            istio(kind, &[], &[("Service", "registry")], false),
            istio(kind, &[], &[("Gateway", "waypoint"), ("ServiceEntry", "mirror")], false),
        ];
        for yaml in targets {
            let m = assert_valid(&yaml);
            assert_eq!(m["kind"], kind.name());
        }
    }
}

#[test]
fn every_envoy_gateway_target_validates() {
    let http = WasmCode::Http {
        url: "https://downloads.example.internal/meshward.wasm".into(),
        sha256: "ab".repeat(32),
    };
    for yaml in [
        envoy_gateway(&[("Gateway", "edge")], image()),
        envoy_gateway(&[("HTTPRoute", "registry"), ("HTTPRoute", "other")], http),
    ] {
        let m = assert_valid(&yaml);
        let wasm = &m["spec"]["wasm"][0];
        assert_eq!(wasm["failOpen"], false);
        assert!(wasm["config"].is_object(), "config as a mapping");
    }
}

#[test]
fn checked_in_examples_validate() {
    let mut count = 0;
    for dir in ["envoy/istio", "envoy/envoy-gateway"] {
        for entry in std::fs::read_dir(repo(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                assert_valid(&std::fs::read_to_string(&path).unwrap());
                count += 1;
            }
        }
    }
    assert!(count >= 8, "{count} examples");
}

/// Applies `edit` to the manifest and expects a violation naming `expected`.
fn assert_broken(yaml: &str, expected: &str, edit: impl FnOnce(&mut Value)) {
    let mut m: Value = serde_norway::from_str(yaml).unwrap();
    edit(&mut m);
    let errors = violations(&m);
    assert!(errors.iter().any(|e| e.contains(expected)), "expected {expected:?} in {errors:#?}");
}

#[test]
fn broken_istio_manifests_fail() {
    let plugin = istio(ExtensionKind::WasmPlugin, &[("app", "registry")], &[], false);
    assert_broken(&plugin, "required field \"url\"", |m| {
        m["spec"].as_object_mut().unwrap().remove("url");
    });
    assert_broken(&plugin, "is not one of", |m| m["spec"]["failStrategy"] = json!("FAIL_CLOSED"));
    assert_broken(&plugin, "expected string", |m| m["spec"]["phase"] = json!(1));
    assert_broken(&plugin, ".spec.pluginConfg: unknown field", |m| m["spec"]["pluginConfg"] = json!({}));
    assert_broken(&plugin, "only one of targetRefs or selector", |m| {
        m["spec"]["targetRefs"] = json!([{"kind": "Gateway", "name": "edge"}]);
    });
    assert_broken(&plugin, "url must have schema", |m| m["spec"]["url"] = json!("ftp://images/meshward"));
    assert_broken(&plugin, "is not one of", |m| m["spec"]["match"][0]["mode"] = json!("INBOUND"));
    assert_broken(&plugin, "wildcard not allowed", |m| {
        m["spec"]["selector"]["matchLabels"]["app"] = json!("*")
    });

    let extension = istio(ExtensionKind::TrafficExtension, &[], &[("Service", "registry")], false);
    assert_broken(&extension, "cross namespace", |m| {
        m["spec"]["targetRefs"][0]["namespace"] = json!("other")
    });
    assert_broken(&extension, "required field \"kind\"", |m| {
        m["spec"]["targetRefs"][0].as_object_mut().unwrap().remove("kind");
    });
    assert_broken(&extension, "not exactly one of", |m| m["spec"]["lua"] = json!({"inlineCode": "x"}));
    assert_broken(&extension, ".spec.wasm.failStrategy", |m| {
        m["spec"]["wasm"]["failStrategy"] = json!(false)
    });
    assert_broken(&extension, ".spec.url: unknown field", |m| m["spec"]["url"] = json!("oci://x/y"));
}

#[test]
fn broken_envoy_gateway_manifests_fail() {
    let policy = envoy_gateway(&[("Gateway", "edge")], image());
    assert_broken(&policy, "If type is Image", |m| {
        m["spec"]["wasm"][0]["code"].as_object_mut().unwrap().remove("image");
    });
    assert_broken(&policy, "If type is HTTP", |m| m["spec"]["wasm"][0]["code"]["type"] = json!("HTTP"));
    assert_broken(&policy, "is not one of", |m| m["spec"]["wasm"][0]["code"]["type"] = json!("OCI"));
    assert_broken(&policy, "required field \"code\"", |m| {
        m["spec"]["wasm"][0].as_object_mut().unwrap().remove("code");
    });
    assert_broken(&policy, "expected boolean", |m| m["spec"]["wasm"][0]["failOpen"] = json!("false"));
    assert_broken(&policy, "gateway.networking.k8s.io", |m| {
        m["spec"]["targetRefs"][0]["group"] = json!("core")
    });
    assert_broken(&policy, "targetRefs[*].kind of Gateway", |m| {
        m["spec"]["targetRefs"][0]["kind"] = json!("Service");
    });
    assert_broken(&policy, "either targetRef or targetRefs must be used", |m| {
        m["spec"].as_object_mut().unwrap().remove("targetRefs");
    });
    assert_broken(&policy, ".spec.wasm[0].rootId: unknown field", |m| {
        m["spec"]["wasm"][0]["rootId"] = json!("x")
    });
}
