//! A trusted issuer compiled from configuration: its keys (inline and remote), profile and limits.

use super::*;

/// Whether an issuer's tokens are bound to the client certificate of the connection (RFC 8705
/// `cnf.x5t#S256`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum CertificateBinding {
    /// Not checked.
    #[default]
    Off,
    /// A bound token must come over a connection with that certificate; unbound tokens are fine.
    IfPresent,
    /// Every token must be bound, and come over a connection with that certificate.
    Required,
}

/// How an issuer is configured (see `config::IssuerConfig` for the documented fields).
pub struct IssuerSpec {
    pub name: String,
    pub issuer: String,
    pub profile: Profile,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub jwks: Vec<Value>,
    pub hmac_secret: Option<Vec<u8>>,
    pub clock_skew_seconds: u64,
    pub require_expiry: bool,
    pub max_lifetime_seconds: Option<u64>,
    pub max_age_seconds: Option<u64>,
    pub certificate_binding: CertificateBinding,
    pub remote_jwks: Option<RemoteJwksConfig>,
    /// The `iss` URL again, for OIDC discovery.
    pub issuer_url: String,
}

/// A trusted token issuer, compiled from configuration.
pub struct Issuer {
    /// Short name used by rules and audit records.
    pub name: String,
    /// The exact `iss` value.
    pub issuer: String,
    /// The rules its tokens follow.
    pub profile: Profile,
    pub(super) audiences: HashSet<String>,
    pub(super) algorithms: Vec<Algorithm>,
    pub(super) keys: Vec<VerifyKey>,
    pub(super) clock_skew_seconds: u64,
    pub(super) require_expiry: bool,
    pub(super) max_lifetime_seconds: Option<u64>,
    pub(super) max_age_seconds: Option<u64>,
    /// Whether tokens must match the connection's client certificate.
    pub certificate_binding: CertificateBinding,
    /// Keys fetched from the issuer's JWKS URI, and the fetch state.
    pub(super) remote: Option<RefCell<(RemoteKeys, Vec<VerifyKey>)>>,
    /// Bumped whenever a different remote key set is installed: cached verifications made with an
    /// older set are redone.
    pub(super) generation: std::cell::Cell<u64>,
    /// The installed remote key set, as fetched, to tell a changed set from a refresh.
    pub(super) installed_jwks: RefCell<Vec<Value>>,
    /// SHA-256 of the installed remote key set (zero before any): unlike `generation`, the same in
    /// every VM that installed the same set, so tokens shared between VMs can name their key set.
    pub(super) key_set_fingerprint: std::cell::Cell<[u8; 32]>,
}

impl Issuer {
    /// Builds an issuer. Returns it and, per skipped key, its index in `jwks` and why it is
    /// skipped; fails when no key is usable.
    pub fn new(spec: IssuerSpec) -> Result<(Self, Vec<(usize, String)>), String> {
        let mut keys = Vec::new();
        let mut warnings = Vec::new();
        let asymmetric: Vec<Algorithm> = spec.algorithms.iter().copied().filter(|a| !a.is_hmac()).collect();
        for (i, jwk) in spec.jwks.iter().enumerate() {
            match keys_from_jwk(jwk, &asymmetric, spec.profile.key_uses()) {
                Ok(found) => keys.extend(found),
                Err(e) => warnings.push((i, e)),
            }
        }
        if let Some(secret) = &spec.hmac_secret {
            for alg in spec.algorithms.iter().copied().filter(|a| a.is_hmac()) {
                let key = match alg {
                    Algorithm::HS256 => PublicKey::HS256(HS256Key::from_bytes(secret)),
                    Algorithm::HS384 => PublicKey::HS384(HS384Key::from_bytes(secret)),
                    _ => PublicKey::HS512(HS512Key::from_bytes(secret)),
                };
                keys.push(VerifyKey::new(None, alg, key));
            }
        }
        if keys.is_empty() && spec.remote_jwks.is_none() {
            let mut msg = "no usable key for the allowed algorithms".to_string();
            if let Some((i, e)) = warnings.first() {
                msg = format!("{msg} (jwks.keys[{i}] skipped: {e})");
            }
            return Err(msg);
        }
        let issuer = Issuer {
            name: spec.name,
            issuer: spec.issuer,
            profile: spec.profile,
            audiences: spec.audiences.into_iter().collect(),
            algorithms: spec.algorithms,
            keys,
            clock_skew_seconds: spec.clock_skew_seconds,
            require_expiry: spec.require_expiry,
            max_lifetime_seconds: spec.max_lifetime_seconds,
            max_age_seconds: spec.max_age_seconds,
            certificate_binding: spec.certificate_binding,
            remote: spec
                .remote_jwks
                .map(|config| RefCell::new((RemoteKeys::new(config, &spec.issuer_url), Vec::new()))),
            generation: std::cell::Cell::new(0),
            installed_jwks: RefCell::new(Vec::new()),
            key_set_fingerprint: std::cell::Cell::new([0; 32]),
        };
        Ok((issuer, warnings))
    }

    /// How many verification keys (key x algorithm) the issuer holds, inline and remote.
    pub fn key_count(&self) -> usize {
        self.keys.len() + self.remote.as_ref().map_or(0, |r| r.borrow().1.len())
    }

    /// Whether the issuer's keys come (also) from a remote key set.
    pub fn has_remote_keys(&self) -> bool {
        self.remote.is_some()
    }

    /// The fetch of the remote key set that is due now, if any.
    pub fn due_fetch(&self, now: u64) -> Option<Fetch> {
        let mut remote = self.remote.as_ref()?.try_borrow_mut().ok()?;
        remote.0.due(&self.name, now)
    }

    /// The largest response body the remote key server may send.
    pub fn max_body_bytes(&self) -> usize {
        self.remote.as_ref().map_or(0, |r| r.borrow().0.config().max_body_bytes)
    }

    /// Handles the response to a fetch of `path` (`status` `None`: no response at all).
    pub fn fetch_completed(
        &self,
        path: &str,
        status: Option<u32>,
        body: Option<&[u8]>,
        now: u64,
    ) -> FetchOutcome {
        let Some(cell) = &self.remote else {
            return FetchOutcome::Failed("issuer has no remote keys".into());
        };
        let Ok(mut remote) = cell.try_borrow_mut() else {
            return FetchOutcome::Failed("busy".into());
        };
        let jwks = match remote.0.response(path, status, body) {
            Ok(Some(jwks)) => jwks,
            Ok(None) => return remote.0.failed("no keys".into()),
            Err(outcome) => return outcome,
        };
        let asymmetric: Vec<Algorithm> = self.algorithms.iter().copied().filter(|a| !a.is_hmac()).collect();
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, jwk) in jwks.iter().enumerate() {
            match keys_from_jwk(jwk, &asymmetric, self.profile.key_uses()) {
                Ok(found) => keys.extend(found),
                Err(e) => skipped.push(format!("keys[{i}] skipped: {e}")),
            }
        }
        if keys.is_empty() {
            // Keep the last good set rather than install one that verifies nothing.
            return remote.0.failed(format!("no usable key in the key set ({})", skipped.join("; ")));
        }
        let count = keys.len();
        remote.1 = keys;
        remote.0.installed(now);
        if let Ok(mut installed) = self.installed_jwks.try_borrow_mut() {
            if *installed != jwks {
                let bytes = serde_json::to_vec(&jwks).unwrap_or_default();
                self.key_set_fingerprint.set(hmac_sha256::Hash::hash(&bytes));
                *installed = jwks;
                self.generation.set(self.generation.get() + 1);
            }
        }
        FetchOutcome::Installed { keys: count, skipped }
    }

    /// The generation of the key set (changes when a different remote set is installed).
    pub fn key_generation(&self) -> u64 {
        self.generation.get()
    }

    /// The fingerprint of the remote key set in use (zero for inline keys only, which the bundle's
    /// digest already pins).
    pub fn key_set_fingerprint(&self) -> [u8; 32] {
        self.key_set_fingerprint.get()
    }

    /// Whether the issuer has keys usable at `now` (inline keys, or a remote set not too stale).
    pub fn keys_usable(&self, now: u64) -> bool {
        !self.keys.is_empty() || self.remote.as_ref().is_some_and(|r| r.borrow().0.usable(now))
    }

    /// Age of the remote key set in use, if one was ever installed.
    pub fn key_set_age(&self, now: u64) -> Option<u64> {
        self.remote.as_ref().and_then(|r| r.borrow().0.age(now))
    }

    /// The refresh period of the issuer's remote key set, if it has one.
    pub fn refresh_seconds(&self) -> Option<u64> {
        self.remote.as_ref().map(|r| r.borrow().0.config().refresh_seconds)
    }

    /// How long requests may wait for this issuer's first remote key set, if it has one.
    pub fn wait_for_keys_ms(&self) -> Option<u64> {
        self.remote.as_ref().map(|r| r.borrow().0.config().wait_for_keys_ms)
    }

    /// Whether requests should wait for this issuer's first remote key set.
    pub fn waiting_for_first_keys(&self, now_ms: u64) -> bool {
        self.remote.as_ref().is_some_and(|r| r.borrow().0.still_waiting_for_first_keys(now_ms))
    }

    /// Checks the token's certificate binding against the connection's client certificate, given as
    /// the hex SHA-256 of its DER (what Envoy reports); on every request, cached or not.
    pub fn check_binding(&self, token: &VerifiedToken, peer_sha256_hex: Option<&str>) -> Result<(), Reason> {
        if self.certificate_binding == CertificateBinding::Off {
            return Ok(());
        }
        let bound = token.claims.get("cnf").and_then(|c| c.get("x5t#S256"));
        let thumbprint = match bound {
            None if self.certificate_binding == CertificateBinding::Required => {
                return Err(Reason::TokenCertificateMismatch)
            }
            None => return Ok(()),
            Some(Value::String(t)) => t,
            Some(_) => return Err(Reason::TokenClaimInvalid),
        };
        let presented = peer_sha256_hex.and_then(hex_to_base64url).ok_or(Reason::TokenCertificateMismatch)?;
        if presented == *thumbprint {
            Ok(())
        } else {
            Err(Reason::TokenCertificateMismatch)
        }
    }

    /// Checks what depends on the current time and must hold on every request, cached or not.
    pub fn check_age(&self, token: &VerifiedToken, now: u64) -> Result<(), Reason> {
        if let Some(max_age) = self.max_age_seconds {
            let iat = token.issued_at.ok_or(Reason::TokenClaimInvalid)?;
            if now.saturating_sub(iat) > max_age {
                return Err(Reason::TokenTooOld);
            }
        }
        Ok(())
    }
}
