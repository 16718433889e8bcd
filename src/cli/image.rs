//! The plugin as an OCI image, the form Istio's `WasmPlugin` pulls with `url: oci://...` (native only).
//!
//! Istio's image fetcher accepts the two variants of the Wasm image specification: "compat", whose
//! last layer is a standard `application/vnd.oci.image.layer.v1.tar+gzip` layer holding
//! `plugin.wasm`, and "oci", whose layers use custom media types
//! (`application/vnd.module.wasm.content.layer.v1+wasm`) and which Istio only accepts with exactly
//! two layers (the module and a runtime-config layer). We write the compat variant with a single
//! layer: it is an ordinary image to every registry and client (docker-registry, skopeo, crane,
//! docker), it is the variant Istio tries first, and the module travels compressed.
//!
//! The image is written as an OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/`), which `skopeo copy oci:DIR:TAG docker://REGISTRY/REPO:TAG` pushes unchanged,
//! so the manifest digest printed here is the digest to pin in the `WasmPlugin`. The output is
//! reproducible: the same module always gives the same digest (no timestamps, fixed file metadata).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Media type of the image's single layer (a gzip-compressed tar holding `plugin.wasm`).
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of the image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the image configuration.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The file name Istio looks for in the layer.
pub const MODULE_FILE: &str = "plugin.wasm";
/// The manifest annotation that marks the compat variant of the Wasm image specification.
pub const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";

/// The first eight bytes of a core WebAssembly module (magic and version 1). Components and other
/// files are refused: proxy-wasm hosts load core modules only.
const WASM_HEADER: &[u8; 8] = b"\0asm\x01\0\0\0";

/// What went wrong building an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}: {source} (`make wasm` builds the module)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "{0} is not a WebAssembly module (expected a core module, version 1, such as {module})",
        module = crate::cli::render::MODULE_PATH
    )]
    NotWasm(PathBuf),
    #[error("refusing to write into {0}: it exists and is not an OCI image layout")]
    NotALayout(PathBuf),
    #[error(
        "invalid tag {0:?}: use 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
    )]
    Tag(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot build the layer: {0}")]
    Layer(std::io::Error),
}

/// A blob's address and size, as the OCI descriptors name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: usize,
}

impl Blob {
    fn of(bytes: &[u8]) -> Self {
        Blob { digest: format!("sha256:{}", crate::audit::sha256_hex(bytes)), size: bytes.len() }
    }
}

/// The image that was written.
#[derive(Clone, Debug)]
pub struct Image {
    /// The layout directory.
    pub dir: PathBuf,
    /// The tag (`org.opencontainers.image.ref.name`), as in `oci:DIR:TAG`.
    pub tag: String,
    /// The manifest: its digest is what a `WasmPlugin` pins (`oci://REPO@sha256:...`).
    pub manifest: Blob,
    /// The single layer (gzip-compressed tar).
    pub layer: Blob,
    /// Size of the module inside the layer.
    pub module_size: usize,
}

impl Image {
    /// A short report for the command line; the last line is `digest: sha256:...`.
    pub fn summary(&self) -> String {
        format!(
            "wrote {dir}: OCI image layout, tag {tag} (Istio Wasm image, compat variant)\n\
             layer: {LAYER_MEDIA_TYPE}, {MODULE_FILE} {module} bytes, {layer} bytes compressed, {layer_digest}\n\
             digest: {digest}\n",
            dir = self.dir.display(),
            tag = self.tag,
            module = self.module_size,
            layer = self.layer.size,
            layer_digest = self.layer.digest,
            digest = self.manifest.digest,
        )
    }
}

/// Whether a tag is valid in the OCI distribution grammar (`[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`).
pub fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    first_ok && tag.len() <= 128 && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The layer: a tar holding only `plugin.wasm` (mode 0644, owner 0, time 0), gzip-compressed.
/// Returns the compressed layer and the uncompressed tar's digest (the config's `diff_id`).
fn layer(module: &[u8]) -> Result<(Vec<u8>, Blob), std::io::Error> {
    let mut header = tar::Header::new_ustar();
    header.set_path(MODULE_FILE)?;
    header.set_size(module.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut archive = tar::Builder::new(Vec::new());
    archive.append(&header, module)?;
    let tar = archive.into_inner()?;
    // GzEncoder writes a header without a name and with mtime 0, so equal modules give equal layers.
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gzip.write_all(&tar)?;
    Ok((gzip.finish()?, Blob::of(&tar)))
}

fn to_json(value: &Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Prepares `dir` for a new layout: creates it, or empties it if it already holds an image layout
/// (and nothing else). Anything else is refused, so a mistyped `--out` cannot delete files.
fn prepare(dir: &Path) -> Result<(), ImageError> {
    let write_err = |source| ImageError::Write { path: dir.to_path_buf(), source };
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut names = Vec::new();
            for entry in entries {
                names.push(entry.map_err(write_err)?.file_name());
            }
            let is_layout = names.iter().any(|n| n == "oci-layout")
                && names.iter().all(|n| n == "oci-layout" || n == "index.json" || n == "blobs");
            if !names.is_empty() && !is_layout {
                return Err(ImageError::NotALayout(dir.to_path_buf()));
            }
            for name in names {
                let path = dir.join(name);
                let removed =
                    if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                removed.map_err(|source| ImageError::Write { path, source })?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir).map_err(write_err),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            Err(ImageError::NotALayout(dir.to_path_buf()))
        }
        Err(source) => Err(ImageError::Write { path: dir.to_path_buf(), source }),
    }
}

fn write(path: PathBuf, bytes: &[u8]) -> Result<(), ImageError> {
    std::fs::write(&path, bytes).map_err(|source| ImageError::Write { path, source })
}

/// Builds the image of the module at `wasm` into the OCI image layout directory `out`, tagged `tag`.
pub fn build(wasm: &Path, out: &Path, tag: &str) -> Result<Image, ImageError> {
    if !valid_tag(tag) {
        return Err(ImageError::Tag(tag.to_owned()));
    }
    let module =
        std::fs::read(wasm).map_err(|source| ImageError::Read { path: wasm.to_path_buf(), source })?;
    if !module.starts_with(WASM_HEADER) {
        return Err(ImageError::NotWasm(wasm.to_path_buf()));
    }

    let (layer_bytes, diff_id) = layer(&module).map_err(ImageError::Layer)?;
    let layer = Blob::of(&layer_bytes);
    // The platform of a wasm32-wasip1 module, in Go's GOARCH/GOOS spelling as the OCI spec asks.
    let config_bytes = to_json(&json!({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [diff_id.digest] },
    }));
    let config = Blob::of(&config_bytes);
    let manifest_bytes = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": config.digest, "size": config.size },
        "layers": [{ "mediaType": LAYER_MEDIA_TYPE, "digest": layer.digest, "size": layer.size }],
        "annotations": {
            VARIANT_ANNOTATION: "compat",
            "org.opencontainers.image.title": "meshward",
        },
    }));
    let manifest = Blob::of(&manifest_bytes);
    let index_bytes = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": manifest.digest,
            "size": manifest.size,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    }));

    prepare(out)?;
    let blobs = out.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(|source| ImageError::Write { path: blobs.clone(), source })?;
    for (blob, bytes) in [(&layer, &layer_bytes), (&config, &config_bytes), (&manifest, &manifest_bytes)] {
        let hex = blob.digest.trim_start_matches("sha256:");
        write(blobs.join(hex), bytes)?;
    }
    write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    // The index last: a layout with an index is complete.
    write(out.join("index.json"), &index_bytes)?;

    Ok(Image { dir: out.to_path_buf(), tag: tag.to_owned(), manifest, layer, module_size: module.len() })
}
