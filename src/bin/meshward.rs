//! `meshward`: check policy bundles, render Envoy configuration, and mint development keys and tokens.
//!
//! Exit codes: 0 success, 1 a check failed, 2 bad usage or unreadable input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use meshward::dev::{jwks, SigningKey, TokenSpec};
use meshward::render::{envoy_bootstrap, EnvoyOptions};
use meshward::token::Algorithm;
use meshward::BundleConfig;

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
    /// Validate policy bundles: schema, references, keys, and that they compile.
    Check {
        /// Bundle files (JSON).
        #[arg(required = true)]
        bundles: Vec<PathBuf>,
    },
    /// Render deployable configuration from a bundle.
    Render {
        #[command(subcommand)]
        target: RenderTarget,
    },
    /// Development helpers (NOT FOR PRODUCTION): keys, JWKS and test tokens.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
}

#[derive(Subcommand)]
enum RenderTarget {
    /// A complete Envoy bootstrap (meshward in front of a demo backend) on stdout.
    Envoy {
        /// The bundle to embed.
        bundle: PathBuf,
        #[arg(long, default_value_t = 8080)]
        listen_port: u16,
        #[arg(long, default_value_t = 8081)]
        backend_port: u16,
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// Path of meshward.wasm as Envoy sees it.
        #[arg(long, default_value = "target/wasm32-wasip1/release/meshward.wasm")]
        wasm: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum KeyAlg {
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
    #[value(name = "EdDSA")]
    EdDsa,
}

#[derive(Subcommand)]
enum DevCommand {
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

fn unreadable(path: &Path, e: impl std::fmt::Display) -> Failure {
    Failure(2, format!("cannot read {}: {e}", path.display()))
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| unreadable(path, e))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("meshward: {message}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Check { bundles } => check(&bundles),
        Command::Render {
            target: RenderTarget::Envoy { bundle, listen_port, backend_port, admin_port, wasm },
        } => {
            let text = read(&bundle)?;
            BundleConfig::from_json(text.as_bytes())
                .and_then(BundleConfig::compile)
                .map_err(|e| Failure(1, format!("{}: {e}", bundle.display())))?;
            let options =
                EnvoyOptions { listen_port, backend_port, admin_port, wasm_path: wasm, clusters: Vec::new() };
            print!("{}", envoy_bootstrap(&text, &options));
            Ok(())
        }
        Command::Dev { command } => dev(command),
    }
}

fn check(bundles: &[PathBuf]) -> Result<(), Failure> {
    let mut failed = 0;
    for path in bundles {
        let text = read(path)?;
        match BundleConfig::from_json(text.as_bytes()).and_then(BundleConfig::compile) {
            Ok((engine, warnings)) => {
                println!(
                    "ok: {}: bundle {:?} version {:?}: {} issuers, {} rules",
                    path.display(),
                    engine.name,
                    engine.version,
                    engine.issuers().iter().count(),
                    engine.policy().rules().len()
                );
                for w in warnings {
                    println!("warning: {}: {w}", path.display());
                }
            }
            Err(e) => {
                println!("error: {}: {e}", path.display());
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(Failure(1, format!("{failed} of {} bundles failed the check", bundles.len())));
    }
    Ok(())
}

fn load_key(path: &Path) -> Result<SigningKey, Failure> {
    SigningKey::from_file(&read(path)?).map_err(|e| unreadable(path, e))
}

fn dev(command: DevCommand) -> Result<(), Failure> {
    let fail = |e: meshward::dev::DevError| Failure(2, e.to_string());
    match command {
        DevCommand::Keygen { alg, kid, out } => {
            let alg = match alg {
                KeyAlg::Rs256 => Algorithm::RS256,
                KeyAlg::Es256 => Algorithm::ES256,
                KeyAlg::EdDsa => Algorithm::EdDSA,
            };
            let file = SigningKey::generate(alg, &kid).and_then(|k| k.to_file()).map_err(fail)?;
            match out {
                Some(path) => std::fs::write(&path, file + "\n")
                    .map_err(|e| Failure(2, format!("cannot write {}: {e}", path.display())))?,
                None => println!("{file}"),
            }
        }
        DevCommand::Jwks { keys, demo } => {
            let mut loaded = keys.iter().map(|p| load_key(p)).collect::<Result<Vec<_>, _>>()?;
            loaded.extend(demo.map(|kid| SigningKey::demo(&kid)));
            let refs: Vec<&SigningKey> = loaded.iter().collect();
            println!("{}", jwks(&refs));
        }
        DevCommand::Token { key, demo, iss, sub, aud, ttl, jti, now, age, claims } => {
            let key = match (key, demo) {
                (Some(path), _) => load_key(&path)?,
                (None, Some(kid)) => SigningKey::demo(&kid),
                (None, None) => return Err(Failure(2, "give --key FILE or --demo KID".into())),
            };
            let now = now
                .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
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
            println!("{}", key.sign(&spec).map_err(fail)?);
        }
    }
    Ok(())
}
