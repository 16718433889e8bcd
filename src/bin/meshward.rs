//! `meshward`: the clap front end of the CLI. Check and lint bundles, replay recorded traffic,
//! explain one decision, diff two bundles over recordings, show the effective access, render Envoy
//! configuration, and mint development keys, tokens and test corpora. The work is in
//! `meshward::cli`, on the same core as the plugin.
//!
//! Exit codes: 0 success, 1 a check or expectation failed, 2 bad usage or unreadable input.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meshward::cli::dev::DevCommand;
use meshward::cli::render::{RenderTarget, MODULE_PATH};
use meshward::cli::{access, check, dev, diff, explain, render, replay, tighten, Failure};

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

fn main() -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = run(Cli::parse(), &mut out);
    let result = result.and_then(|()| out.flush().map_err(Failure::from));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
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
        Command::Render { target } => render::run(target, out),
        Command::Dev { command } => dev::run(command, out),
        Command::Schema => {
            write!(out, "{}", meshward::config::json_schema())?;
            Ok(())
        }
        Command::Image { wasm, out: dir, tag } => {
            let image =
                meshward::cli::image::build(&wasm, &dir, &tag).map_err(|e| Failure::usage(e.to_string()))?;
            write!(out, "{}", image.summary())?;
            Ok(())
        }
    }
}
