//! End-to-end: mTLS workload identity. A client-side Envoy originates TLS with X.509 workload
//! certificates (SPIFFE URI SANs) to a server-side Envoy that requires and validates client
//! certificates and runs meshward, as two sidecars would. Rules on the peer identity alone and on
//! peer and token; tokens bound to the client certificate (RFC 8705 `cnf.x5t#S256`). The CA and the
//! certificates are generated here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use meshward::cli::dev::{jwks, SigningKey, TokenSpec};
use meshward::token::Algorithm;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, Ia5String, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::{json, Value};
use support::{free_port, wasm_module, Envoy, Response};

const BUILDER: &str = "spiffe://mesh.test/ns/ci/sa/builder";
const OTHER: &str = "spiffe://mesh.test/ns/web/sa/frontend";
const SERVER_NAME: &str = "server.mesh.test";
const AUDIENCE: &str = "api.mesh.test";

/// A certificate authority for the test mesh.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

/// A certificate with its private key, as PEM, and its DER.
struct Identity {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca { cert: params.self_signed(&key).unwrap(), key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A workload certificate as Istio issues them: the SPIFFE ID as the only URI SAN (and a DNS
    /// name for the server), usable for client and server authentication.
    fn issue(&self, spiffe_id: &str, dns: Option<&str>) -> Identity {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(spiffe_id).unwrap())];
        if let Some(dns) = dns {
            params.subject_alt_names.push(SanType::DnsName(Ia5String::try_from(dns).unwrap()));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Identity { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }
}

impl Identity {
    /// The RFC 8705 thumbprint: base64url SHA-256 of the certificate's DER.
    fn thumbprint(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hmac_sha256::Hash::hash(&self.der))
    }

    fn sha256_hex(&self) -> String {
        hmac_sha256::Hash::hash(&self.der).iter().map(|b| format!("{b:02x}")).collect()
    }

    fn tls_certificate(&self) -> Value {
        json!({"certificate_chain": {"inline_string": self.cert_pem}, "private_key": {"inline_string": self.key_pem}})
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn admin(port: u16) -> Value {
    json!({"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}})
}

fn address(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

/// An HTTP connection manager; `filters` go before the router. Connections close at once after a
/// `Connection: close` response (the test client reads to EOF).
fn http_connection_manager(
    stat_prefix: &str,
    filters: Vec<Value>,
    route: Value,
    access_log: Option<&str>,
) -> Value {
    let mut http_filters = filters;
    http_filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "delayed_close_timeout": "0s",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
        "http_filters": http_filters,
    });
    if let Some(format) = access_log {
        hcm["access_log"] = json!([{"name": "envoy.access_loggers.stdout", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"text_format_source": {"inline_string": format}}}}]);
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm})
}

/// The server-side proxy: a TLS listener that requires a client certificate from `ca`, meshward with
/// `bundle`, and a direct response standing in for the workload (it echoes the forwarded subject).
fn server_bootstrap(ca: &Ca, server: &Identity, bundle: &Value, listen: u16, admin_port: u16) -> String {
    let meshward = json!({"name": "meshward", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
    "config": {
        "name": "meshward",
        "root_id": "meshward",
        "failure_policy": "FAIL_CLOSED",
        "vm_config": {"vm_id": "meshward", "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": wasm_module().display().to_string()}}},
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": bundle.to_string()},
    }}});
    let route = json!({"match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": "backend: request accepted\n"}},
        "response_headers_to_add": [{"header": {"key": "x-backend-saw-subject", "value": "%REQ(x-meshward-subject)%"}}]});
    // The attributes meshward reads for the peer (the same ones its proxy-wasm properties return).
    let access_log = "uri_san_peer_certificate=%CEL(connection.uri_san_peer_certificate)% \
        sha256_peer_certificate_digest=%CEL(connection.sha256_peer_certificate_digest)%\n";
    json!({
        "admin": admin(admin_port),
        "static_resources": {"listeners": [{
            "name": "mtls",
            "address": address(listen),
            "filter_chains": [{
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "tls_certificates": [server.tls_certificate()],
                        "validation_context": {"trusted_ca": {"inline_string": ca.pem()}},
                    },
                }},
                "filters": [http_connection_manager("server", vec![meshward], route, Some(access_log))],
            }],
        }]},
    })
    .to_string()
}

/// The client-side proxy: one plain-HTTP listener per client (port, certificate or none), each
/// forwarding over TLS to the server with that client certificate, verifying the server's.
fn client_bootstrap(
    ca: &Ca,
    clients: &[(u16, Option<&Identity>)],
    server_port: u16,
    admin_port: u16,
) -> String {
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    for (i, (port, identity)) in clients.iter().enumerate() {
        let cluster = format!("server-as-client-{i}");
        let route = json!({"match": {"prefix": "/"}, "route": {"cluster": cluster}});
        listeners.push(json!({
            "name": format!("client-{i}"),
            "address": address(*port),
            "filter_chains": [{"filters": [http_connection_manager(&format!("client_{i}"), vec![], route, None)]}],
        }));
        let mut common = json!({"validation_context": {
            "trusted_ca": {"inline_string": ca.pem()},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": SERVER_NAME}}],
        }});
        if let Some(identity) = identity {
            common["tls_certificates"] = json!([identity.tls_certificate()]);
        }
        clusters.push(json!({
            "name": cluster,
            "type": "STATIC",
            "connect_timeout": "2s",
            "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(server_port)}}]}]},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": SERVER_NAME,
                "common_tls_context": common,
            }},
        }));
    }
    json!({"admin": admin(admin_port), "static_resources": {"listeners": listeners, "clusters": clusters}})
        .to_string()
}

/// Two issuers of workload tokens: `ci` checks certificate binding when a token is bound,
/// `ci-strict` requires every token to be bound.
struct Issuers {
    ci: SigningKey,
    strict: SigningKey,
}

impl Issuers {
    fn token(key: &SigningKey, iss: &str, sub: &str, bound_to: Option<&Identity>) -> String {
        let mut spec = TokenSpec::new(iss, sub, AUDIENCE, now(), 600);
        if let Some(identity) = bound_to {
            spec.claims.insert("cnf".into(), json!({"x5t#S256": identity.thumbprint()}));
        }
        key.sign(&spec).unwrap()
    }

    fn ci(&self, sub: &str, bound_to: Option<&Identity>) -> String {
        Self::token(&self.ci, "https://ci.mesh.test", sub, bound_to)
    }

    fn strict(&self, sub: &str, bound_to: Option<&Identity>) -> String {
        Self::token(&self.strict, "https://strict.mesh.test", sub, bound_to)
    }

    fn bundle(&self) -> Value {
        let issuer = |name: &str, iss: &str, key: &SigningKey, binding: &str| {
            json!({"name": name, "issuer": iss, "audiences": [AUDIENCE], "algorithms": ["EdDSA"],
                "jwks": jwks(&[key]), "certificate_binding": binding})
        };
        json!({
            "name": "mtls-e2e",
            "issuers": [
                issuer("ci", "https://ci.mesh.test", &self.ci, "if-present"),
                issuer("ci-strict", "https://strict.mesh.test", &self.strict, "required"),
            ],
            "rules": [
                {"id": "builder-by-peer", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/peer/"}],
                 "peers": [BUILDER]},
                {"id": "builder-by-peer-and-token", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/both/"}],
                 "peers": [BUILDER], "subjects": [BUILDER]},
                {"id": "any-token", "hosts": ["*"], "methods": ["GET"], "paths": [{"prefix": "/token/"}],
                 "subjects": ["spiffe://mesh.test/**"]},
            ],
        })
    }
}

/// The mesh: a server proxy and a client proxy with a listener per client identity.
struct Mesh {
    server: Envoy,
    client: Envoy,
    builder: Identity,
    other: Identity,
    ports: Ports,
}

struct Ports {
    builder: u16,
    builder_rotated: u16,
    other: u16,
    no_certificate: u16,
    foreign_ca: u16,
}

impl Mesh {
    fn start(bundle: &Value) -> Mesh {
        let ca = Ca::new("meshward test mesh CA");
        let server_identity = ca.issue("spiffe://mesh.test/ns/api/sa/server", Some(SERVER_NAME));
        let builder = ca.issue(BUILDER, None);
        // Same workload, another certificate (rotated, or another holder of the identity).
        let builder_rotated = ca.issue(BUILDER, None);
        let other = ca.issue(OTHER, None);
        let impostor = Ca::new("not the mesh CA").issue(BUILDER, None);

        let (server_port, server_admin) = (free_port(), free_port());
        let server = Envoy::start_yaml(
            &server_bootstrap(&ca, &server_identity, bundle, server_port, server_admin),
            server_port,
            server_admin,
        );
        let ports = Ports {
            builder: free_port(),
            builder_rotated: free_port(),
            other: free_port(),
            no_certificate: free_port(),
            foreign_ca: free_port(),
        };
        let clients = [
            (ports.builder, Some(&builder)),
            (ports.builder_rotated, Some(&builder_rotated)),
            (ports.other, Some(&other)),
            (ports.no_certificate, None),
            (ports.foreign_ca, Some(&impostor)),
        ];
        let client_admin = free_port();
        let client = Envoy::start_yaml(
            &client_bootstrap(&ca, &clients, server_port, client_admin),
            ports.builder,
            client_admin,
        );
        Mesh { server, client, builder, other, ports }
    }

    /// A GET through the client proxy's listener on `port`, with an optional bearer token.
    fn get(&self, port: u16, path: &str, token: Option<&str>) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Host", "api.mesh.test")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        support::http(port, "GET", path, &headers)
            .unwrap_or_else(|e| panic!("GET {path} via port {port}: {e}\nclient:\n{}", self.client.log()))
    }
}

fn assert_allowed(r: &Response, subject: Option<&str>, case: &str) {
    assert_eq!(r.status, 200, "{case}: {r:?}");
    assert_eq!(r.body, "backend: request accepted\n", "{case}");
    assert_eq!(r.header("x-backend-saw-subject").filter(|s| !s.is_empty()), subject, "{case}");
}

fn assert_denied(r: &Response, status: u16, reason: &str, case: &str) {
    assert_eq!(r.status, status, "{case}: {r:?}");
    assert_eq!(r.json()["reason"], reason, "{case}: {r:?}");
    if status == 401 && reason != "token_missing" {
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(challenge.contains(&format!("error_description=\"{reason}\"")), "{case}: {challenge}");
    }
}

#[test]
fn rules_on_the_peer_identity_alone_and_with_a_token() {
    let issuers = Issuers {
        ci: SigningKey::generate(Algorithm::EdDSA, "ci-1").unwrap(),
        strict: SigningKey::generate(Algorithm::EdDSA, "strict-1").unwrap(),
    };
    let mesh = Mesh::start(&issuers.bundle());
    let p = &mesh.ports;
    let builder_token = issuers.ci(BUILDER, None);
    let other_token = issuers.ci(OTHER, None);

    // The peer alone: the builder's certificate is enough; another workload's is not.
    assert_allowed(&mesh.get(p.builder, "/peer/a", None), None, "builder peer, no token");
    assert_allowed(&mesh.get(p.builder_rotated, "/peer/a", None), None, "builder's other certificate");
    assert_denied(&mesh.get(p.other, "/peer/a", None), 401, "token_missing", "wrong peer, no token");
    // A token does not stand in for the peer.
    assert_denied(
        &mesh.get(p.other, "/peer/a", Some(&builder_token)),
        403,
        "policy_no_matching_rule",
        "wrong peer",
    );

    // Peer and token together.
    assert_allowed(&mesh.get(p.builder, "/both/a", Some(&builder_token)), Some(BUILDER), "peer and token");
    assert_denied(&mesh.get(p.builder, "/both/a", None), 401, "token_missing", "peer without token");
    assert_denied(
        &mesh.get(p.builder, "/both/a", Some(&other_token)),
        403,
        "policy_no_matching_rule",
        "right peer, another workload's token",
    );
    assert_denied(
        &mesh.get(p.other, "/both/a", Some(&builder_token)),
        403,
        "policy_no_matching_rule",
        "the builder's token from another peer",
    );

    // No certificate, or one from another CA claiming the builder's identity: the server proxy
    // refuses the TLS handshake, so the request never reaches meshward.
    for (port, case) in [(p.no_certificate, "no client certificate"), (p.foreign_ca, "foreign CA")] {
        let r = mesh.get(port, "/peer/a", None);
        assert_eq!(r.status, 503, "{case}: {r:?}");
        assert!(!r.body.contains("backend"), "{case}: {r:?}");
    }

    // The audit records name the peer of each decision.
    let records = mesh.server.audit_records();
    let peer_allow =
        records.iter().find(|r| r["rule"] == "builder-by-peer").expect("peer-only allow audited");
    assert_eq!((peer_allow["peer"].as_str(), peer_allow["subject"].as_str()), (Some(BUILDER), None));
    assert!(records.iter().any(|r| r["peer"] == OTHER && r["reason"] == "token_missing"), "{records:#?}");
    let both = records.iter().find(|r| r["rule"] == "builder-by-peer-and-token").expect("peer+token allow");
    assert_eq!((both["peer"].as_str(), both["subject"].as_str()), (Some(BUILDER), Some(BUILDER)));
    assert_eq!(records.len(), 8, "one record per request that reached meshward: {records:#?}");
    // The server proxy counted the two refused handshakes.
    let server = mesh.server.admin("/stats");
    for counter in ["ssl.fail_verify_no_cert: 1", "ssl.fail_verify_error: 1"] {
        assert!(server.lines().any(|l| l.ends_with(counter)), "{counter}:\n{server}");
    }
}

#[test]
fn tokens_bound_to_the_client_certificate() {
    let issuers = Issuers {
        ci: SigningKey::generate(Algorithm::EdDSA, "ci-1").unwrap(),
        strict: SigningKey::generate(Algorithm::EdDSA, "strict-1").unwrap(),
    };
    let mesh = Mesh::start(&issuers.bundle());
    let p = &mesh.ports;

    // A token bound to the builder's certificate, over that certificate. Envoy exposes the
    // certificate's SHA-256 as lower-case hex, which meshward compares with the base64url thumbprint.
    let bound = issuers.ci(BUILDER, Some(&mesh.builder));
    assert_allowed(&mesh.get(p.builder, "/token/a", Some(&bound)), Some(BUILDER), "bound, right certificate");
    let attributes = format!(
        "uri_san_peer_certificate={BUILDER} sha256_peer_certificate_digest={}",
        mesh.builder.sha256_hex()
    );
    let log = mesh.server.wait_for_log(|l| l.contains(&attributes));
    assert!(log.contains(&attributes), "the peer attributes Envoy exposes:\n{log}");
    assert_allowed(&mesh.get(p.builder, "/both/a", Some(&bound)), Some(BUILDER), "bound, peer rule");

    // The same token over another certificate, even one for the same identity, is refused.
    for (port, case) in [(p.builder_rotated, "same identity, other certificate"), (p.other, "other workload")]
    {
        let r = mesh.get(port, "/token/a", Some(&bound));
        assert_denied(&r, 401, "token_certificate_mismatch", case);
    }
    // ... and the token cache does not remember the binding as satisfied.
    assert_allowed(
        &mesh.get(p.builder, "/token/a", Some(&bound)),
        Some(BUILDER),
        "bound, right certificate again",
    );

    // `if-present`: an unbound token is fine over any certificate.
    let unbound = issuers.ci(BUILDER, None);
    assert_allowed(
        &mesh.get(p.builder_rotated, "/token/a", Some(&unbound)),
        Some(BUILDER),
        "if-present, unbound",
    );

    // `required`: an unbound token is refused; a bound one works only over its certificate.
    let strict_unbound = issuers.strict(BUILDER, None);
    let r = mesh.get(p.builder, "/token/a", Some(&strict_unbound));
    assert_denied(&r, 401, "token_certificate_mismatch", "required, unbound");
    let strict_bound = issuers.strict(OTHER, Some(&mesh.other));
    assert_allowed(&mesh.get(p.other, "/token/a", Some(&strict_bound)), Some(OTHER), "required, bound");
    let r = mesh.get(p.builder, "/token/a", Some(&strict_bound));
    assert_denied(&r, 401, "token_certificate_mismatch", "required, bound to another certificate");

    let records = mesh.server.audit_records();
    let mismatches: Vec<_> = records.iter().filter(|r| r["reason"] == "token_certificate_mismatch").collect();
    assert_eq!(mismatches.len(), 4, "{records:#?}");
    assert!(mismatches.iter().all(|r| r["decision"] == "deny" && r["peer"].is_string()), "{mismatches:#?}");
    mesh.server.settle_counters(records.len() as u64);
    let counter = mesh
        .server
        .stat("wasmcustom.meshward.decisions_total.outcome.deny.reason.token_certificate_mismatch");
    assert_eq!(counter.as_deref(), Some("4"), "the decision counter");
}
