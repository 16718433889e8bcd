//! meshward: workload-token verification and method-level access policy for Envoy and Istio.
//!
//! The core (`token`, `policy`, `request`, `engine`, `decision`, `audit`, `config`) has no
//! proxy-wasm dependency: it builds natively for the CLI, tests and benches, and for
//! `wasm32-wasip1`. The proxy-wasm glue lives in `filter` and is compiled only for wasm32.

pub mod audit;
pub mod config;
pub mod decision;
pub mod engine;
pub mod policy;
pub mod request;
mod scan;
pub mod token;

#[cfg(not(target_arch = "wasm32"))]
pub mod cli;

// Only in the plugin's target (wasm32-wasip1): the core alone builds for wasm32-unknown-unknown,
// where tests/wasm runs the corpus in Node.js without a proxy host. Its SDK entry point
// (`filter/entry.rs`) is the one module that allows unsafe code (see there).
#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
#[path = "filter/entry.rs"]
mod entry;
#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod filter;

pub use config::{BundleConfig, CompileWarning, ConfigError};
pub use decision::{Decision, Reason};
pub use engine::{Engine, Outcome, RecordedIdentity};
pub use request::HttpRequest;
pub use token::VerifiedToken;
