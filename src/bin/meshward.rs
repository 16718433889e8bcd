//! `meshward`: the clap front end of the CLI. Check and lint bundles, replay recorded traffic,
//! explain one decision, diff two bundles over recordings, show the effective access, render Envoy
//! configuration, and mint development keys, tokens and test corpora. The work is in
//! `meshward::cli`, on the same core as the plugin.
//!
//! Exit codes: 0 success, 1 a check or expectation failed, 2 bad usage or unreadable input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use meshward::cli::dev::{jwks, SigningKey, TokenSpec};
use meshward::cli::render::{envoy_bootstrap, EnvoyOptions, MODULE_PATH};
use meshward::cli::{self, access, bundle, check, corpus, diff, explain, replay, tighten};
use meshward::token::Algorithm;

#[derive(Parser)]
#[command(
    name = "meshward",
    version,
    about = "Workload-token and method-level access policy for Envoy and Istio"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate bundles (schema, references, keys, compiles) and lint them.
    Check(check::CheckArgs),
    /// Replay recorded requests (request records or the plugin's audit records) against a bundle.
    Replay(replay::ReplayArgs),
    /// Explain one request's decision: every rule considered, and why it matched or not.
    Explain(explain::ExplainArgs),
    /// Replay recordings under two bundles and list every request whose decision or rule changes.
    Diff(diff::DiffArgs),
    /// Show the effective access: what each identity can reach, and until when.
    Access(access::AccessArgs),
    /// Propose the least-privilege bundle that still allows every recorded allowed request.
    Tighten(tighten::TightenArgs),
    /// Render deployable configuration from a bundle.
    Render {
        #[command(subcommand)]
        target: RenderTarget,
    },
    /// Print the bundle's JSON Schema (for editors; policies/meshward.schema.json).
    Schema,
    /// Development helpers (NOT FOR PRODUCTION): keys, JWKS and test tokens.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
    /// Package the module as an OCI image layout for Istio's WasmPlugin (one tar+gzip layer
    /// holding plugin.wasm); prints the manifest digest to pin.
    Image {
        /// The module (`make wasm` builds it).
        #[arg(long, default_value = MODULE_PATH)]
        wasm: PathBuf,
        /// The layout directory to write (replaced if it already holds an image layout).
        #[arg(long)]
        out: PathBuf,
        /// The tag, as in `skopeo copy oci:DIR:TAG ...`.
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        tag: String,
    },
}

#[derive(Subcommand)]
enum RenderTarget {
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
        #[arg(long, default_value = meshward::cli::istio::ROOT_NAMESPACE)]
        namespace: String,
        /// Limit to workloads with this label (LABEL=VALUE; repeatable).
        #[arg(long = "selector", value_name = "LABEL=VALUE")]
        selectors: Vec<String>,
        /// The WasmPlugin's name.
        #[arg(long, default_value = meshward::cli::istio::DEFAULT_NAME)]
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
        #[arg(long, default_value = meshward::cli::istio::DEFAULT_NAME)]
        name: String,
        /// Deploy in dry-run mode: decisions are audited, no request is denied.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum IstioKind {
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
            _ => Err(Failure(2, meshward::cli::istio::IstioError::TargetRef(a.clone()).to_string())),
        })
        .collect()
}

#[derive(Clone, Copy, ValueEnum)]
enum KeyAlg {
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
    #[value(name = "EdDSA")]
    EdDsa,
    #[value(name = "PS256")]
    Ps256,
    #[value(name = "ES384")]
    Es384,
}

#[derive(Subcommand)]
enum DevCommand {
    /// Turn test cases into request records with freshly minted tokens (JSON lines on stdout).
    Corpus(corpus::CorpusArgs),
    /// Generate a signing key (private; written as a JSON key file).
    Keygen {
        #[arg(long, value_enum, default_value = "ES256")]
        alg: KeyAlg,
        #[arg(long)]
        kid: String,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the JWK Set (public keys) of key files, or of the public demo key.
    Jwks {
        /// Key files written by `dev keygen`.
        keys: Vec<PathBuf>,
        /// Include the well-known demo key with this kid.
        #[arg(long)]
        demo: Option<String>,
    },
    /// Mint a signed test token on stdout.
    Token {
        /// Key file written by `dev keygen`.
        #[arg(long, conflicts_with = "demo", required_unless_present = "demo")]
        key: Option<PathBuf>,
        /// Sign with the well-known demo key with this kid.
        #[arg(long)]
        demo: Option<String>,
        #[arg(long)]
        iss: String,
        #[arg(long)]
        sub: String,
        #[arg(long)]
        aud: Vec<String>,
        /// Lifetime in seconds (negative: already expired).
        #[arg(long, default_value_t = 300, allow_hyphen_values = true)]
        ttl: i64,
        #[arg(long)]
        jti: Option<String>,
        /// Issue time (unix seconds); default now.
        #[arg(long)]
        now: Option<u64>,
        /// Backdate the token: issued this many seconds before now (the lifetime still counts from now).
        #[arg(long, default_value_t = 0)]
        age: u64,
        /// Extra claim NAME=VALUE; VALUE is JSON if it parses as JSON, else a string. Repeatable.
        #[arg(long = "claim", value_name = "NAME=VALUE")]
        claims: Vec<String>,
    },
}

/// A failure with its exit code.
struct Failure(u8, String);

impl From<cli::Failure> for Failure {
    fn from(f: cli::Failure) -> Self {
        Failure(f.code, f.message)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        cli::Failure::from(e).into()
    }
}

/// `--upstream HOST:PORT` (an IPv6 address in brackets), parsed like a request's authority.
fn parse_upstream(text: &str) -> Result<(String, u16), String> {
    match meshward::request::split_authority(text) {
        Ok((host, Some(port))) if port > 0 => {
            Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
        }
        _ => Err(format!("expected HOST:PORT, such as 127.0.0.1:5000, not {text:?}")),
    }
}

fn unreadable(path: &Path, e: impl std::fmt::Display) -> Failure {
    Failure(2, format!("cannot read {}: {e}", path.display()))
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| unreadable(path, e))
}

fn main() -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = run(Cli::parse(), &mut out);
    let result = result.and_then(|()| out.flush().map_err(Failure::from));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            // Output already written stays visible before the error.
            let _ = out.flush();
            // An empty message: the reader of our output went away (a closed pipe).
            if !message.is_empty() {
                eprintln!("meshward: {message}");
            }
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli, out: &mut dyn Write) -> Result<(), Failure> {
    match cli.command {
        Command::Check(args) => Ok(check::run(&args, out)?),
        Command::Replay(args) => Ok(replay::run(&args, out)?),
        Command::Explain(args) => Ok(explain::run(&args, out)?),
        Command::Diff(args) => Ok(diff::run(&args, out)?),
        Command::Access(args) => Ok(access::run(&args, out)?),
        Command::Tighten(args) => Ok(tighten::run(&args, out)?),
        Command::Render {
            target:
                RenderTarget::Envoy {
                    bundle,
                    listen_port,
                    backend_port,
                    admin_port,
                    wasm,
                    upstream,
                    no_access_log,
                },
        } => {
            let json = bundle::plugin_json(&bundle)?;
            // Valid syntax is not enough: the bundle must compile, as the plugin would refuse it.
            bundle::Bundle::load(&bundle).map_err(|e| Failure(1, e.message))?;
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
        Command::Dev { command } => dev(command, out),
        Command::Schema => {
            write!(out, "{}", meshward::config::json_schema())?;
            Ok(())
        }
        Command::Render {
            target:
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
                },
        } => {
            let json = bundle::plugin_json(&bundle)?;
            bundle::Bundle::load(&bundle).map_err(|e| Failure(1, e.message))?;
            let mut selector = Vec::new();
            for s in selectors {
                let (label, value) = s.split_once('=').ok_or_else(|| {
                    Failure(2, meshward::cli::istio::IstioError::Selector(s.clone()).to_string())
                })?;
                selector.push((label.to_owned(), value.to_owned()));
            }
            let options = meshward::cli::istio::WasmPluginOptions {
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
                    IstioKind::WasmPlugin => meshward::cli::istio::ExtensionKind::WasmPlugin,
                    IstioKind::TrafficExtension => meshward::cli::istio::ExtensionKind::TrafficExtension,
                },
            };
            let manifest =
                meshward::cli::istio::wasm_plugin(&json, &options).map_err(|e| Failure(2, e.to_string()))?;
            write!(out, "{manifest}")?;
            Ok(())
        }
        Command::Render {
            target:
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
                },
        } => {
            let json = bundle::plugin_json(&bundle)?;
            bundle::Bundle::load(&bundle).map_err(|e| Failure(1, e.message))?;
            let code = match (image, digest, url, sha256) {
                (Some(image), Some(digest), _, _) => meshward::cli::render::WasmCode::Image { image, digest },
                (_, _, Some(url), Some(sha256)) => meshward::cli::render::WasmCode::Http { url, sha256 },
                _ => return Err(Failure(2, "give --image and --digest, or --url and --sha256".into())),
            };
            let options = meshward::cli::render::EnvoyGatewayOptions {
                bundle_path: bundle.display().to_string(),
                name,
                namespace,
                target_refs: target_refs(refs)?,
                code,
                dry_run,
            };
            let manifest = meshward::cli::render::envoy_gateway_policy(&json, &options)
                .map_err(|e| Failure(2, e.to_string()))?;
            write!(out, "{manifest}")?;
            Ok(())
        }
        Command::Image { wasm, out: dir, tag } => {
            let image =
                meshward::cli::image::build(&wasm, &dir, &tag).map_err(|e| Failure(2, e.to_string()))?;
            write!(out, "{}", image.summary())?;
            Ok(())
        }
    }
}

fn load_key(path: &Path) -> Result<SigningKey, Failure> {
    SigningKey::from_file(&read(path)?).map_err(|e| unreadable(path, e))
}

fn dev(command: DevCommand, out: &mut dyn Write) -> Result<(), Failure> {
    let fail = |e: meshward::cli::dev::DevError| Failure(2, e.to_string());
    match command {
        DevCommand::Corpus(args) => corpus::run(&args, out)?,
        DevCommand::Keygen { alg, kid, out: file_path } => {
            let alg = match alg {
                KeyAlg::Rs256 => Algorithm::RS256,
                KeyAlg::Es256 => Algorithm::ES256,
                KeyAlg::EdDsa => Algorithm::EdDSA,
                KeyAlg::Ps256 => Algorithm::PS256,
                KeyAlg::Es384 => Algorithm::ES384,
            };
            let file = SigningKey::generate(alg, &kid).and_then(|k| k.to_file()).map_err(fail)?;
            match file_path {
                Some(path) => std::fs::write(&path, file + "\n")
                    .map_err(|e| Failure(2, format!("cannot write {}: {e}", path.display())))?,
                None => writeln!(out, "{file}")?,
            }
        }
        DevCommand::Jwks { keys, demo } => {
            let mut loaded = keys.iter().map(|p| load_key(p)).collect::<Result<Vec<_>, _>>()?;
            loaded.extend(demo.map(|kid| SigningKey::demo(&kid)));
            let refs: Vec<&SigningKey> = loaded.iter().collect();
            writeln!(out, "{}", jwks(&refs))?;
        }
        DevCommand::Token { key, demo, iss, sub, aud, ttl, jti, now, age, claims } => {
            let key = match (key, demo) {
                (Some(path), _) => load_key(&path)?,
                (None, Some(kid)) => SigningKey::demo(&kid),
                (None, None) => return Err(Failure(2, "give --key FILE or --demo KID".into())),
            };
            let now = now.unwrap_or_else(meshward::cli::now);
            let mut spec = TokenSpec::new(&iss, &sub, "", now, 0);
            spec.audiences = aud;
            spec.expires_at = Some(now.saturating_add_signed(ttl));
            spec.token_id = jti;
            spec.issued_at = Some(now.saturating_sub(age));
            for claim in claims {
                let (name, value) = claim
                    .split_once('=')
                    .ok_or_else(|| Failure(2, format!("--claim {claim:?}: expected NAME=VALUE")))?;
                let value = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::from(value));
                spec.claims.insert(name.to_owned(), value);
            }
            writeln!(out, "{}", key.sign(&spec).map_err(fail)?)?;
        }
    }
    Ok(())
}
