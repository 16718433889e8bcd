//! Rendering an Istio `WasmPlugin` or `TrafficExtension` (extensions.istio.io/v1alpha1) from a
//! bundle (native only).
//!
//! The manifest pins the module by digest (`oci://REPOSITORY@sha256:...`, the image `meshward
//! image` builds), inserts meshward in Istio's `AUTHN` phase (before Istio's JWT and RBAC
//! filters; after CUSTOM/ext_authz), fails closed (`failStrategy: FAIL_CLOSE`), and carries the
//! bundle as `pluginConfig`, which istiod hands to the plugin as JSON. It reaches sidecars'
//! inbound traffic (`selector` and `match: mode: SERVER`), gateways (`mode: CLIENT`), or the
//! Gateways, waypoints and Services named by `targetRefs`.
//!
//! The YAML is written by hand so that it reads like a reviewed file: comments say what each
//! setting does, the bundle keeps its own key order, and every string that YAML 1.1 (which
//! Kubernetes tooling speaks) could read as something else is double-quoted. Before it is
//! returned, the manifest is parsed back and must carry exactly the bundle.

use std::fmt::Write as _;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// Istio's default root namespace: a `WasmPlugin` there without a selector applies mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";
/// The default `metadata.name`.
pub const DEFAULT_NAME: &str = "meshward";

/// Where and how the plugin is deployed.
#[derive(Clone, Debug)]
pub struct WasmPluginOptions {
    /// How the bundle was named on the command line (shown in the header comment).
    pub bundle_path: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`: the root namespace for a mesh-wide plugin.
    pub namespace: String,
    /// `selector.matchLabels`, in order; empty selects every workload of the namespace (or of the
    /// mesh, in the root namespace).
    pub selector: Vec<(String, String)>,
    /// The image repository without tag or digest, e.g. `registry.example.internal/meshward`.
    pub image: String,
    /// The manifest digest, `sha256:<64 hex>`.
    pub digest: String,
    /// Set the bundle's `mode` to `dry-run`: decisions are audited, nothing is denied.
    pub dry_run: bool,
    /// `imagePullSecret`: a Kubernetes secret in the plugin's namespace.
    pub pull_secret: Option<String>,
    /// The selected workloads are gateways: their listeners are `CLIENT` (outbound), not `SERVER`.
    pub gateway: bool,
    /// `targetRefs` as (kind, name): Gateway, GatewayClass, Service (waypoints) or ServiceEntry.
    /// Waypoints apply only plugins attached this way. Excludes `selector`.
    pub target_refs: Vec<(String, String)>,
    /// The resource to write.
    pub kind: ExtensionKind,
}

/// The Istio resource carrying the plugin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExtensionKind {
    /// `WasmPlugin`: every supported Istio release (failStrategy since 1.19).
    #[default]
    WasmPlugin,
    /// `TrafficExtension`: Istio 1.30 and later, which translate every WasmPlugin into one.
    TrafficExtension,
}

impl ExtensionKind {
    /// The `kind:` of the manifest.
    pub fn name(self) -> &'static str {
        match self {
            ExtensionKind::WasmPlugin => "WasmPlugin",
            ExtensionKind::TrafficExtension => "TrafficExtension",
        }
    }
}

/// The group of a `targetRefs` kind Istio accepts (istio/api `PolicyTargetReference`).
fn target_group(kind: &str) -> Option<&'static str> {
    match kind {
        "Gateway" | "GatewayClass" => Some("gateway.networking.k8s.io"),
        "Service" => Some(""),
        "ServiceEntry" => Some("networking.istio.io"),
        _ => None,
    }
}

/// A reason the manifest cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum IstioError {
    #[error(
        "invalid digest {0:?}: expected sha256: and 64 lower-case hex digits, as `meshward image` prints"
    )]
    Digest(String),
    #[error("invalid image {0:?}: {1}")]
    Image(String, &'static str),
    #[error("invalid {what} {value:?}: {rule}")]
    Name { what: &'static str, value: String, rule: &'static str },
    #[error("invalid selector {0:?}: expected LABEL=VALUE, e.g. app=registry")]
    Selector(String),
    #[error("invalid target reference {0:?}: expected KIND/NAME with KIND one of Gateway, GatewayClass, Service, ServiceEntry")]
    TargetRef(String),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("the bundle is not a JSON object: {0}")]
    Bundle(String),
    #[error(
        "internal error: the rendered manifest does not carry the bundle exactly ({0}); please report it"
    )]
    RoundTrip(String),
}

/// The bundle as a plugin configuration mapping: without `$schema` (it points editors at the
/// JSON Schema next to the file; it means nothing in a cluster), in dry-run mode if asked.
pub(crate) fn plugin_config(bundle_json: &str, dry_run: bool) -> Result<ConfigMapping, IstioError> {
    let config: Node = serde_json::from_str(bundle_json).map_err(|e| IstioError::Bundle(e.to_string()))?;
    let Node::Object(mut entries) = config else {
        return Err(IstioError::Bundle("it is not an object".into()));
    };
    entries.retain(|(key, _)| key != "$schema");
    if dry_run {
        set_mode_dry_run(&mut entries);
    }
    Ok(ConfigMapping(entries))
}

/// A bundle as a YAML block mapping, in its own key order.
pub(crate) struct ConfigMapping(Vec<(String, Node)>);

impl ConfigMapping {
    /// A top-level string member (`name`, `version`, `mode`).
    pub(crate) fn text(&self, key: &str) -> Option<String> {
        self.0.iter().find(|(k, _)| k == key).and_then(|(_, v)| match v {
            Node::String(s) => Some(s.clone()),
            _ => None,
        })
    }

    /// Appends the mapping to `y` at `indent`.
    pub(crate) fn write(&self, y: &mut String, indent: usize) {
        write_mapping(y, &self.0, indent, false);
    }

    /// The mapping as JSON, to check what a rendered manifest carries.
    pub(crate) fn to_value(&self) -> Value {
        Node::Object(self.0.clone()).to_value()
    }
}

/// Renders the `WasmPlugin` (or `TrafficExtension`) manifest for `bundle_json` (a bundle that
/// already passed `check`).
pub fn wasm_plugin(bundle_json: &str, o: &WasmPluginOptions) -> Result<String, IstioError> {
    validate(o)?;
    let config = plugin_config(bundle_json, o.dry_run)?;
    let text_of = |key: &str| config.text(key);
    let (bundle_name, version) =
        (text_of("name").unwrap_or_default(), text_of("version").unwrap_or_default());
    let mode = text_of("mode").unwrap_or_else(|| "enforce".into());
    let url = format!("oci://{}@{}", o.image, o.digest);

    let mut y = String::new();
    let kind = o.kind.name();
    let _ = writeln!(y, "# meshward as an Istio {kind}: bundle {bundle_name:?} version {version:?}.");
    let _ = writeln!(y, "# Rendered by: {}", command_line(o));
    let _ = writeln!(y, "# Applies to: {}.", scope(o));
    let _ = writeln!(
        y,
        "# Mode: {mode}{}.",
        if mode == "dry-run" {
            " (every decision is computed and audited, no request is denied)"
        } else {
            " (requests the policy does not allow are denied)"
        }
    );
    let _ = write!(y, "apiVersion: extensions.istio.io/v1alpha1\nkind: {kind}\nmetadata:\n");
    let _ = writeln!(y, "  name: {}", scalar(&o.name));
    let _ = writeln!(y, "  namespace: {}", scalar(&o.namespace));
    y.push_str("spec:\n");
    if !o.selector.is_empty() {
        y.push_str("  selector:\n    matchLabels:\n");
        for (label, value) in &o.selector {
            let _ = writeln!(y, "      {}: {}", scalar(label), scalar(value));
        }
    }
    if !o.target_refs.is_empty() {
        y.push_str(
            "  # Attached to these resources (the only way a waypoint applies a plugin).\n  targetRefs:\n",
        );
        for (kind, name) in &o.target_refs {
            let group = target_group(kind).unwrap_or_default();
            let _ = writeln!(y, "  - group: {}\n    kind: {kind}\n    name: {}", scalar(group), scalar(name));
        }
    }
    // Where meshward sits and what it reaches: the same in both resources.
    y.push_str(
        "  # In Istio's AUTHN phase: before Istio's JWT authentication and RBAC (ALLOW/DENY)\n\
         \x20 # filters, after a CUSTOM (ext_authz) policy's filter.\n\
         \x20 phase: AUTHN\n",
    );
    if o.target_refs.is_empty() {
        let mode = if o.gateway { "CLIENT" } else { "SERVER" };
        let _ = writeln!(
            y,
            "  # {}\n  match:\n  - mode: {mode}",
            if o.gateway {
                "A gateway's listeners are CLIENT (outbound) listeners: the requests it forwards."
            } else {
                "Requests to the selected workloads (their sidecars' inbound traffic), not their own calls."
            }
        );
    }
    let (wasm, at) = match o.kind {
        ExtensionKind::WasmPlugin => ("  ", "/spec"),
        ExtensionKind::TrafficExtension => {
            y.push_str("  wasm:\n");
            ("    ", "/spec/wasm")
        }
    };
    let _ = writeln!(y, "{wasm}# The module, pinned by the digest of its image (built by `meshward image`).");
    let _ = writeln!(y, "{wasm}url: {}", scalar(&url));
    let _ = writeln!(y, "{wasm}imagePullPolicy: IfNotPresent");
    if let Some(secret) = &o.pull_secret {
        let _ = writeln!(y, "{wasm}imagePullSecret: {}", scalar(secret));
    }
    let _ = writeln!(y, "{wasm}pluginName: meshward");
    let _ = writeln!(
        y,
        "{wasm}# A module that cannot be fetched or started denies every request: never unchecked traffic.\n\
         {wasm}failStrategy: FAIL_CLOSE"
    );
    let _ = writeln!(
        y,
        "{wasm}# The policy bundle, as `meshward check` validates it; istiod passes it to the plugin as JSON.\n\
         {wasm}pluginConfig:"
    );
    config.write(&mut y, wasm.len() + 2);

    // The manifest must parse as YAML and deliver exactly the bundle and the pinned module.
    let parsed: Value = serde_norway::from_str(&y).map_err(|e| IstioError::RoundTrip(e.to_string()))?;
    if parsed.pointer(&format!("{at}/pluginConfig")) != Some(&config.to_value()) {
        return Err(IstioError::RoundTrip("pluginConfig differs from the bundle".into()));
    }
    if parsed.pointer(&format!("{at}/url")).and_then(Value::as_str) != Some(url.as_str()) {
        return Err(IstioError::RoundTrip("url differs".into()));
    }
    Ok(y)
}

fn set_mode_dry_run(entries: &mut Vec<(String, Node)>) {
    let dry_run = Node::String("dry-run".into());
    if let Some((_, value)) = entries.iter_mut().find(|(k, _)| k == "mode") {
        *value = dry_run;
    } else {
        // Next to the name and version, where a reader looks first.
        let at = entries.iter().position(|(k, _)| k != "name" && k != "version").unwrap_or(entries.len());
        entries.insert(at, ("mode".into(), dry_run));
    }
}

/// The command that renders the same manifest (for the header, and for re-rendering examples).
fn command_line(o: &WasmPluginOptions) -> String {
    let bundle = o.bundle_path.replace(['\n', '\r'], " ");
    let mut c = format!("meshward render istio {bundle} --image {} --digest {}", o.image, o.digest);
    if o.namespace != ROOT_NAMESPACE {
        let _ = write!(c, " --namespace {}", o.namespace);
    }
    for (label, value) in &o.selector {
        let _ = write!(c, " --selector {label}={value}");
    }
    if o.name != DEFAULT_NAME {
        let _ = write!(c, " --name {}", o.name);
    }
    if let Some(secret) = &o.pull_secret {
        let _ = write!(c, " --pull-secret {secret}");
    }
    if o.gateway {
        c.push_str(" --gateway");
    }
    for (kind, name) in &o.target_refs {
        let _ = write!(c, " --target-ref {kind}/{name}");
    }
    if o.kind != ExtensionKind::WasmPlugin {
        let _ = write!(c, " --kind {}", o.kind.name());
    }
    if o.dry_run {
        c.push_str(" --dry-run");
    }
    c
}

fn scope(o: &WasmPluginOptions) -> String {
    if !o.target_refs.is_empty() {
        let refs = o.target_refs.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
        let via = if o.target_refs.iter().any(|(k, _)| k == "Service") {
            " (a Service's requests through its waypoint)"
        } else {
            ""
        };
        return format!("the requests of {refs} in namespace {}{via}", o.namespace);
    }
    let what = if o.gateway { "gateway" } else { "workload" };
    let scope = scope_of(o).replace("workload", what);
    if o.gateway {
        format!("{scope} (the requests they forward)")
    } else {
        format!("{scope} (their sidecars' inbound requests)")
    }
}

fn scope_of(o: &WasmPluginOptions) -> String {
    let labels = o.selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    match (o.namespace == ROOT_NAMESPACE, o.selector.is_empty()) {
        (true, true) => format!(
            "every workload in the mesh (no selector, in {ROOT_NAMESPACE}, Istio's default root namespace)"
        ),
        (true, false) => format!("the workloads labelled {labels} in every namespace"),
        (false, true) => format!("every workload in namespace {}", o.namespace),
        (false, false) => format!("the workloads labelled {labels} in namespace {}", o.namespace),
    }
}

fn validate(o: &WasmPluginOptions) -> Result<(), IstioError> {
    let hex = o.digest.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(IstioError::Digest(o.digest.clone()));
    }
    validate_image(&o.image)?;
    dns_label("namespace", &o.namespace)?;
    dns_subdomain("name", &o.name)?;
    if let Some(secret) = &o.pull_secret {
        dns_subdomain("pull secret", secret)?;
    }
    if !o.selector.is_empty() && !o.target_refs.is_empty() {
        return Err(IstioError::Conflict(
            "--selector and --target-ref exclude each other (Istio allows one of them)",
        ));
    }
    if o.gateway && !o.target_refs.is_empty() {
        return Err(IstioError::Conflict(
            "--gateway selects gateway pods by label; with --target-ref the Gateway itself is named",
        ));
    }
    for (kind, name) in &o.target_refs {
        if target_group(kind).is_none() {
            return Err(IstioError::TargetRef(format!("{kind}/{name}")));
        }
        if kind == "GatewayClass" && o.namespace != ROOT_NAMESPACE {
            return Err(IstioError::Conflict(
                "a GatewayClass is referenced from the root namespace (istio-system)",
            ));
        }
        dns_subdomain("target name", name)?;
    }
    for (label, value) in &o.selector {
        let (prefix, name) = label.rsplit_once('/').map_or((None, label.as_str()), |(p, n)| (Some(p), n));
        if let Some(prefix) = prefix {
            dns_subdomain("label prefix", prefix)?;
        }
        label_value("label name", name, false)?;
        label_value("label value", value, true)?;
    }
    Ok(())
}

pub(crate) fn validate_image(image: &str) -> Result<(), IstioError> {
    let err = |why| Err(IstioError::Image(image.to_owned(), why));
    if image.contains("://") {
        return err("give REGISTRY/REPOSITORY without a scheme (the url gets oci://)");
    }
    if image.contains('@') {
        return err("give the repository without a digest; --digest pins it");
    }
    let Some((registry, path)) = image.split_once('/') else {
        return err("give REGISTRY/REPOSITORY, e.g. registry.example.internal/meshward");
    };
    if path.contains(':') {
        return err("give the repository without a tag; --digest pins the image");
    }
    let registry_ok = !registry.is_empty()
        && registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    let path_ok = path.split('/').all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    });
    if !registry_ok || !path_ok {
        return err("expected REGISTRY[:PORT]/REPOSITORY with a lower-case repository path");
    }
    Ok(())
}

pub(crate) fn dns_label(what: &'static str, value: &str) -> Result<(), IstioError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        return Ok(());
    }
    Err(IstioError::Name {
        what,
        value: value.to_owned(),
        rule: "use at most 63 lower-case letters, digits or '-'",
    })
}

pub(crate) fn dns_subdomain(what: &'static str, value: &str) -> Result<(), IstioError> {
    if value.len() <= 253 && value.split('.').all(|part| dns_label(what, part).is_ok()) {
        return Ok(());
    }
    Err(IstioError::Name {
        what,
        value: value.to_owned(),
        rule: "use lower-case DNS labels separated by '.', at most 253 characters",
    })
}

fn label_value(what: &'static str, value: &str, may_be_empty: bool) -> Result<(), IstioError> {
    let edge_ok = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    let ok = (may_be_empty || !value.is_empty())
        && value.len() <= 63
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && edge_ok(value.chars().next())
        && edge_ok(value.chars().last());
    if ok {
        return Ok(());
    }
    Err(IstioError::Name {
        what,
        value: value.to_owned(),
        rule: "use at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
    })
}

/// A JSON value that keeps the order of object members, so the manifest reads like the bundle.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    fn to_value(&self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Number(n) => Value::Number(n.clone()),
            Node::String(s) => Value::String(s.clone()),
            Node::Array(items) => Value::Array(items.iter().map(Node::to_value).collect()),
            Node::Object(entries) => {
                Value::Object(entries.iter().map(|(k, v)| (k.clone(), v.to_value())).collect())
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Node, E> {
                Ok(Node::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Node, E> {
                Ok(Node::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Node, E> {
                Ok(Node::Number(n.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Node, E> {
                Number::from_f64(n).map(Node::Number).ok_or_else(|| E::custom("not a finite number"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Node, E> {
                Ok(Node::String(s.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries: Vec<(String, Node)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Node>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format!("duplicate member {key:?}")));
                    }
                    entries.push((key, value));
                }
                Ok(Node::Object(entries))
            }
        }
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// A string as a YAML scalar: plain when no YAML 1.1 or 1.2 reader can take it for anything but
/// that string, double-quoted (JSON escapes, which YAML shares) otherwise.
fn scalar(s: &str) -> String {
    const WORDS: &[&str] = &["y", "n", "yes", "no", "on", "off", "true", "false", "null"];
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '/')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
        && !WORDS.contains(&s.to_ascii_lowercase().as_str());
    if plain {
        s.to_owned()
    } else {
        Value::String(s.to_owned()).to_string()
    }
}

/// A leaf as a YAML scalar, or `None` for a non-empty collection.
fn leaf(node: &Node) -> Option<String> {
    match node {
        Node::Null => Some("null".into()),
        Node::Bool(b) => Some(b.to_string()),
        Node::Number(n) => Some(n.to_string()),
        Node::String(s) => Some(scalar(s)),
        Node::Array(items) if items.is_empty() => Some("[]".into()),
        Node::Object(entries) if entries.is_empty() => Some("{}".into()),
        Node::Array(_) | Node::Object(_) => None,
    }
}

/// Block mapping at `indent`; `inline_first`: the first key goes on the current line (after `- `).
fn write_mapping(y: &mut String, entries: &[(String, Node)], indent: usize, inline_first: bool) {
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 || !inline_first {
            y.push_str(&" ".repeat(indent));
        }
        y.push_str(&scalar(key));
        y.push(':');
        match (leaf(value), value) {
            (Some(text), _) => {
                let _ = writeln!(y, " {text}");
            }
            (None, Node::Object(inner)) => {
                y.push('\n');
                write_mapping(y, inner, indent + 2, false);
            }
            (None, Node::Array(items)) => {
                y.push('\n');
                write_sequence(y, items, indent);
            }
            (None, _) => y.push('\n'),
        }
    }
}

/// Block sequence whose dashes sit at `indent` (the Kubernetes style: level with the parent key).
fn write_sequence(y: &mut String, items: &[Node], indent: usize) {
    for item in items {
        y.push_str(&" ".repeat(indent));
        y.push_str("- ");
        match (leaf(item), item) {
            (Some(text), _) => {
                let _ = writeln!(y, "{text}");
            }
            (None, Node::Object(entries)) => write_mapping(y, entries, indent + 2, true),
            (None, Node::Array(inner)) => {
                y.push('\n');
                write_sequence(y, inner, indent + 2);
            }
            (None, _) => y.push('\n'),
        }
    }
}
