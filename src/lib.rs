//! meshward: workload-token verification and method-level access policy for Envoy and Istio.
//!
//! The core (`token`, `policy`, `request`, `engine`, `decision`, `audit`, `config`) has no
//! proxy-wasm dependency: it builds natively for the CLI, tests and benches, and for
//! `wasm32-wasip1`. The proxy-wasm glue lives in `filter` and is compiled only for wasm32.

pub mod audit;
pub mod cache;
pub mod claims;
pub mod config;
pub mod decision;
pub mod engine;
pub mod policy;
pub mod profile;
pub mod remote;
pub mod request;
pub mod shared;
pub mod source;
pub mod token;

#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
#[cfg(not(target_arch = "wasm32"))]
pub mod dev;
#[cfg(not(target_arch = "wasm32"))]
pub mod image;
#[cfg(not(target_arch = "wasm32"))]
pub mod istio;
#[cfg(not(target_arch = "wasm32"))]
pub mod render;

// The proxy_wasm::main! entry point is an exported (`no_mangle`) function. Only in the plugin's
// target (wasm32-wasip1): the core alone builds for wasm32-unknown-unknown, where tests/wasm runs
// the corpus in Node.js without a proxy host.
#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
#[allow(unsafe_code)]
mod filter;

pub use config::{BundleConfig, ConfigError};
pub use decision::{Decision, Reason};
pub use engine::{Engine, HttpRequest, Outcome};
pub use token::VerifiedToken;
