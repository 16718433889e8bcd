//! Reading policy bundles from files: JSON, or YAML (`.yaml` / `.yml`) parsed into the same
//! [`BundleConfig`], so both are held to one schema and compiled by the same code as the plugin.

use std::path::{Path, PathBuf};

use crate::config::{BundleConfig, ConfigError};
use crate::engine::Engine;

use super::Failure;

/// The syntax of a bundle file, from its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    Json,
    Yaml,
}

impl Syntax {
    /// `.yaml` and `.yml` are YAML; everything else is JSON.
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("yaml" | "yml") => Syntax::Yaml,
            _ => Syntax::Json,
        }
    }
}

/// Reads a file, or says it cannot (exit 2).
pub fn read_text(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))
}

/// Parses bundle text in the given syntax; errors name the field (and, for YAML, the line).
pub fn parse(text: &str, syntax: Syntax) -> Result<BundleConfig, ConfigError> {
    match syntax {
        Syntax::Json => BundleConfig::from_json(text.as_bytes()).map_err(|mut e| {
            // A YAML bundle in a .json file fails on its first byte: say what would work.
            if !text.trim_start().starts_with('{') {
                e.message.push_str(" (YAML bundles need a .yaml or .yml file name)");
            }
            e
        }),
        Syntax::Yaml => {
            let de = serde_norway::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let field = e.path().to_string();
                let field = if field == "." { "configuration".to_string() } else { field };
                ConfigError { field, message: e.into_inner().to_string() }
            })
        }
    }
}

/// The bundle as the plugin's configuration: JSON text. A JSON file is passed on as written; a
/// YAML file is converted (after it parsed as a bundle).
pub fn plugin_json(path: &Path) -> Result<String, Failure> {
    let text = read_text(path)?;
    let syntax = Syntax::of(path);
    parse(&text, syntax).map_err(|e| Failure::failed(format!("{}: {e}", path.display())))?;
    match syntax {
        Syntax::Json => Ok(text),
        Syntax::Yaml => {
            let value: serde_json::Value = serde_norway::from_str(&text)
                .map_err(|e| Failure::failed(format!("{}: {e}", path.display())))?;
            serde_json::to_string_pretty(&value).map_err(|e| Failure::failed(e.to_string()))
        }
    }
}

/// A compiled bundle with its configuration, ready to decide recorded requests.
pub struct Bundle {
    /// Where it was read from.
    pub path: PathBuf,
    /// The configuration as parsed (kept to rebuild the engine and for lints and `access`).
    pub config: BundleConfig,
    /// The compiled engine: the same as the plugin's.
    pub engine: Engine,
    /// Compile warnings (skipped keys).
    pub warnings: Vec<crate::config::CompileWarning>,
    /// The latest request time decided so far (see `decide`).
    pub(crate) latest_time: u64,
}

impl Bundle {
    /// Reads, parses and compiles a bundle; any problem is an unusable input (exit 2).
    pub fn load(path: &Path) -> Result<Self, Failure> {
        let text = read_text(path)?;
        let config = parse(&text, Syntax::of(path))
            .map_err(|e| Failure::usage(format!("{} is not a valid bundle: {e}", path.display())))?;
        Self::compile(path, config)
            .map_err(|e| Failure::usage(format!("{} is not a valid bundle: {e}", path.display())))
    }

    /// Compiles a parsed configuration.
    pub fn compile(path: &Path, config: BundleConfig) -> Result<Self, ConfigError> {
        let (engine, warnings) = config.clone().compile()?;
        Ok(Bundle { path: path.to_owned(), config, engine, warnings, latest_time: 0 })
    }

    /// A fresh engine (empty verified-token cache), as after a configuration load.
    pub fn reload(&mut self) {
        if let Ok((engine, _)) = self.config.clone().compile() {
            self.engine = engine;
        }
    }

    /// `"name" version "v"` for headings.
    pub fn label(&self) -> String {
        format!("{} ({:?} version {:?})", self.path.display(), self.engine.name, self.engine.version)
    }
}
