//! OCI distribution presets: registry actions mapped onto the distribution API routes
//! (<https://github.com/opencontainers/distribution-spec/blob/main/spec.md#endpoints>).
//!
//! Every route captures the repository name as `{repo}`; a rule's `repositories` globs then decide
//! which repositories the actions cover.

/// An action a registry rule can grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum RegistryAction {
    /// Read manifests, blobs, tags and referrers.
    Pull,
    /// Upload blobs and put manifests (and check what already exists).
    Push,
    /// Delete manifests, blobs and uploads.
    Delete,
    /// Copy a release into the covered repositories: the same routes as `push` (a copy checks
    /// what exists before it writes), meant for rules that also demand a fresh token
    /// (`max_token_age_seconds`) and a release identity.
    Promote,
}

/// The routes of one action: (methods, path template).
pub fn routes(action: RegistryAction) -> &'static [(&'static [&'static str], &'static str)] {
    const MANIFEST: &str = "/v2/{repo:**}/manifests/{reference}";
    const BLOB: &str = "/v2/{repo:**}/blobs/{digest}";
    const UPLOADS: &str = "/v2/{repo:**}/blobs/uploads/";
    const UPLOAD: &str = "/v2/{repo:**}/blobs/uploads/{session}";
    const TAGS: &str = "/v2/{repo:**}/tags/list";
    const REFERRERS: &str = "/v2/{repo:**}/referrers/{digest}";
    const WRITE: &[(&[&str], &str)] = &[
        (&["GET", "HEAD", "PUT"], MANIFEST),
        (&["HEAD"], BLOB),
        (&["POST"], UPLOADS),
        (&["GET", "PATCH", "PUT"], UPLOAD),
    ];
    match action {
        RegistryAction::Pull => {
            &[(&["GET", "HEAD"], MANIFEST), (&["GET", "HEAD"], BLOB), (&["GET"], TAGS), (&["GET"], REFERRERS)]
        }
        RegistryAction::Push | RegistryAction::Promote => WRITE,
        RegistryAction::Delete => &[(&["DELETE"], MANIFEST), (&["DELETE"], BLOB), (&["DELETE"], UPLOAD)],
    }
}

/// The API version check every client makes first; any registry rule allows it.
pub const BASE: &str = "/v2/";
